//! Building one image: verify pinned inputs, build the appliance binary, assemble the initramfs,
//! write the artifacts and their manifest.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use coffer_types::{
    ApplianceConfig, FileDigest, ImageManifest, Role, APPLIANCE_CONFIG_PATH, IMAGE_MANIFEST_FILE,
    IMAGE_MANIFEST_VERSION, MEASUREMENTS_FILE,
};
use flate2::{Compression, GzBuilder};

use crate::cpio::{Archive, Node};
use crate::lock::{sha256_hex, verify_input, InputsLock, VerifiedInput};
use crate::progress::Progress;
use crate::spec::ImageSpec;
use crate::{measure, modules, ImageError};

/// The target every appliance binary is built for: static, no libc on the image.
pub const APPLIANCE_TARGET: &str = "x86_64-unknown-linux-musl";

/// Output file names inside an image directory.
pub mod files {
    /// The kernel.
    pub const KERNEL: &str = "vmlinuz";
    /// The compressed initramfs.
    pub const INITRAMFS: &str = "initramfs.cpio.gz";
    /// The kernel command line, without a trailing newline.
    pub const CMDLINE: &str = "cmdline";
    /// The AmdSev OVMF firmware the image is measured with.
    pub const FIRMWARE: &str = "firmware.fd";
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// Root of the Coffer checkout (holds `image/inputs.lock`).
    pub checkout: PathBuf,
    /// The role to build.
    pub role: Role,
    /// Spec to use instead of `image/specs/<role>.toml`.
    pub spec: Option<PathBuf>,
    /// Where the artifacts go; created if missing.
    pub out_dir: PathBuf,
}

/// Finds the checkout root: `start` or the nearest parent holding `image/inputs.lock`.
pub fn find_checkout(start: &Path) -> Result<PathBuf, ImageError> {
    start
        .ancestors()
        .find(|dir| dir.join("image/inputs.lock").is_file())
        .map(Path::to_path_buf)
        .ok_or_else(|| ImageError::NoCheckout(start.display().to_string()))
}

/// Builds the image; returns its manifest (also written to the output directory).
pub fn build_image(
    request: &BuildRequest,
    progress: &Progress,
) -> Result<ImageManifest, ImageError> {
    let root = &request.checkout;
    progress.step("reading the image spec and lock file");
    let spec_path = request
        .spec
        .clone()
        .unwrap_or_else(|| root.join(format!("image/specs/{}.toml", request.role)));
    let spec = ImageSpec::load(&spec_path)?;
    if spec.role != request.role {
        return Err(ImageError::SpecInvalid {
            path: spec_path.display().to_string(),
            reason: format!("it describes role '{}', not '{}'", spec.role, request.role),
        });
    }
    let lock_path = root.join("image/inputs.lock");
    let lock = InputsLock::load(&lock_path)?;

    progress.step("verifying pinned inputs (kernel, modules, firmware)");
    let hint = lock.kernel_hint();
    let kernel = verify_input(
        root,
        "kernel",
        &lock.kernel.vmlinuz.path,
        &lock.kernel.vmlinuz.sha256,
        &hint,
    )?;
    let firmware = verify_input(
        root,
        "firmware",
        &lock.firmware.path,
        &lock.firmware.sha256,
        "restore it from git: it is vendored with its provenance",
    )?;
    let module_inputs = modules::closure(root, &lock.modules, &spec.modules, &hint)?;

    progress.step(&format!(
        "building {} (static {APPLIANCE_TARGET}, release)",
        spec.package
    ));
    let binary = build_appliance_binary(root, &spec.package)?;

    progress.step("assembling the initramfs");
    let module_dir = format!("lib/modules/{}", lock.kernel.release);
    let module_paths: Vec<String> = module_inputs
        .iter()
        .map(|m| format!("/{module_dir}/{}", module_subpath(&m.path)))
        .collect();
    let config = ApplianceConfig {
        role: spec.role,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        modules: module_paths.clone(),
        network: spec.network.clone(),
        services: spec.services.clone(),
        restart: spec.restart.clone(),
        stop_timeout_ms: spec.stop_timeout_ms,
    };
    let config_json =
        serde_json::to_vec_pretty(&config).map_err(|e| ImageError::io(&spec_path, e.into()))?;
    let mut archive = Archive::new();
    for dir in ["proc", "sys", "dev", "run", "tmp", "etc"] {
        archive.add(dir, Node::Dir(0o755));
    }
    // The kernel opens /dev/console for PID 1's stdio before any file system is mounted.
    archive.add("dev/console", Node::CharDevice(0o600, 5, 1));
    archive.add(APPLIANCE_CONFIG_PATH, Node::File(0o444, config_json));
    let binary_path = format!("bin/{}", spec.package);
    archive.add(&binary_path, Node::File(0o555, binary.bytes.clone()));
    archive.add("init", Node::Symlink(binary_path));
    for (module, path) in module_inputs.iter().zip(&module_paths) {
        archive.add(path, Node::File(0o444, module.bytes.clone()));
    }
    let initramfs = compress(&archive).map_err(|e| ImageError::io(&request.out_dir, e))?;

    progress.step("writing artifacts");
    let out = &request.out_dir;
    std::fs::create_dir_all(out).map_err(|e| ImageError::io(out, e))?;
    // No manifest while artifacts change: a half-written image is never taken for a whole one.
    match std::fs::remove_file(out.join(IMAGE_MANIFEST_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(ImageError::io(&out.join(IMAGE_MANIFEST_FILE), e))
        }
        _ => {}
    }
    let mut outputs = vec![
        write_output(out, "kernel", files::KERNEL, &kernel.bytes)?,
        write_output(out, "initramfs", files::INITRAMFS, &initramfs)?,
        write_output(out, "cmdline", files::CMDLINE, spec.cmdline.as_bytes())?,
        write_output(out, "firmware", files::FIRMWARE, &firmware.bytes)?,
    ];
    progress.step("computing SEV-SNP launch measurements");
    let measurements = measure::measurement_set(
        spec.role,
        env!("CARGO_PKG_VERSION"),
        &spec.snp,
        &measure::LaunchInputs {
            firmware: &firmware.bytes,
            kernel: &kernel.bytes,
            initramfs: &initramfs,
            cmdline: &spec.cmdline,
        },
    )?;
    let mut json =
        serde_json::to_vec_pretty(&measurements).map_err(|e| ImageError::io(out, e.into()))?;
    json.push(b'\n');
    outputs.push(write_output(out, "measurements", MEASUREMENTS_FILE, &json)?);
    let spec_bytes = std::fs::read(&spec_path).map_err(|e| ImageError::io(&spec_path, e))?;
    let lock_bytes = std::fs::read(&lock_path).map_err(|e| ImageError::io(&lock_path, e))?;
    let mut inputs = vec![
        digest("spec", &relative(root, &spec_path), &spec_bytes),
        digest("lock", "image/inputs.lock", &lock_bytes),
        input_digest(&kernel),
        input_digest(&firmware),
        input_digest(&binary),
    ];
    inputs.extend(module_inputs.iter().map(input_digest));
    let manifest = ImageManifest {
        format_version: IMAGE_MANIFEST_VERSION,
        role: spec.role,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        cmdline: spec.cmdline.clone(),
        inputs,
        outputs,
        modules: module_paths,
        ports: spec.ports.clone(),
        health_port: spec.health_port,
        data_disk_mib: spec.data_disk_mib,
    };
    let mut json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| ImageError::io(out, e.into()))?;
    json.push(b'\n');
    write_atomic(&out.join(IMAGE_MANIFEST_FILE), &json)?;
    progress.finish();
    Ok(manifest)
}

/// Path of a module below `lib/modules/<release>/` (the lock stores it below the vendor dir).
fn module_subpath(path: &str) -> &str {
    path.split_once("/modules/")
        .map(|(_, rest)| rest)
        .unwrap_or(path)
}

fn relative(root: &Path, path: &Path) -> String {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let full = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    full.strip_prefix(&root)
        .unwrap_or(&full)
        .display()
        .to_string()
}

/// gzip with a fixed header (no name, mtime 0) at the best level: same bytes every time.
fn compress(archive: &Archive) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::best());
    archive.write_to(&mut encoder)?;
    encoder.flush()?;
    encoder.finish()
}

/// Builds a static appliance binary (cargo package `package` of the checkout at `root`) with
/// cargo, `--locked`, for [`APPLIANCE_TARGET`], with paths that depend on this machine remapped
/// and build times pinned, so that the binary does not depend on where or when it was built.
pub fn build_appliance_binary(root: &Path, package: &str) -> Result<VerifiedInput, ImageError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    // Workspace sources are compiled with checkout-relative paths already; dependencies and
    // generated code are not.
    let rustflags = [
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        format!("--remap-path-prefix={}=/target", target_dir.display()),
    ]
    .join("\u{1f}");
    let output = Command::new(&cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            APPLIANCE_TARGET,
            "-p",
            package,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // C code (mimalloc) embeds __DATE__ and __TIME__; GCC takes them from here instead.
        .env("SOURCE_DATE_EPOCH", "0")
        .env_remove("RUSTFLAGS")
        .output()
        .map_err(|e| ImageError::Cargo {
            package: package.to_owned(),
            status: "could not run cargo".to_owned(),
            stderr_tail: e.to_string(),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        return Err(ImageError::Cargo {
            package: package.to_owned(),
            status: output.status.to_string(),
            stderr_tail: lines[lines.len().saturating_sub(15)..].join("\n"),
        });
    }
    let path = target_dir
        .join(APPLIANCE_TARGET)
        .join("release")
        .join(package);
    let bytes = std::fs::read(&path).map_err(|e| ImageError::io(&path, e))?;
    Ok(VerifiedInput {
        what: format!("binary:{package}"),
        path: format!("{APPLIANCE_TARGET}/release/{package}"),
        sha256: sha256_hex(&bytes),
        bytes,
    })
}

fn write_output(
    dir: &Path,
    name: &str,
    file: &str,
    bytes: &[u8],
) -> Result<FileDigest, ImageError> {
    write_atomic(&dir.join(file), bytes)?;
    Ok(digest(name, file, bytes))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| ImageError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ImageError::io(path, e))
}

fn digest(name: &str, path: &str, bytes: &[u8]) -> FileDigest {
    FileDigest {
        name: name.to_owned(),
        path: path.to_owned(),
        sha256: sha256_hex(bytes),
        size: bytes.len() as u64,
    }
}

fn input_digest(input: &VerifiedInput) -> FileDigest {
    FileDigest {
        name: input.what.clone(),
        path: input.path.clone(),
        sha256: input.sha256.clone(),
        size: input.bytes.len() as u64,
    }
}
