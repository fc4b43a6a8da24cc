//! The lock file `image/inputs.lock`: every input from outside the workspace's own code, pinned
//! by version and sha256.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::ImageError;

/// The lock file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputsLock {
    /// Format version; only 1 exists.
    pub format_version: u32,
    /// The Debian kernel package the kernel and modules come from.
    pub kernel: KernelPin,
    /// The AmdSev OVMF firmware.
    pub firmware: PackagePin,
    /// Kernel modules, by name.
    #[serde(rename = "module")]
    pub modules: Vec<ModulePin>,
}

/// The kernel package.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelPin {
    /// Debian package name.
    pub package: String,
    /// Debian package version.
    pub version: String,
    /// sha256 of the `.deb`.
    pub deb_sha256: String,
    /// Kernel release (`uname -r`), the module directory name.
    pub release: String,
    /// The vendored vmlinuz.
    pub vmlinuz: FilePin,
}

/// A file-valued package input.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagePin {
    /// Package name.
    pub package: String,
    /// Package version.
    pub version: String,
    /// Vendored file, relative to the checkout.
    pub path: String,
    /// Its sha256.
    pub sha256: String,
}

/// A vendored file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePin {
    /// Path relative to the checkout.
    pub path: String,
    /// Its sha256.
    pub sha256: String,
}

/// A vendored kernel module.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModulePin {
    /// Module name as in the file name (`sev-guest`).
    pub name: String,
    /// Path relative to the checkout.
    pub path: String,
    /// Its sha256.
    pub sha256: String,
}

impl InputsLock {
    /// Reads the lock file.
    pub fn load(path: &Path) -> Result<Self, ImageError> {
        let text = std::fs::read_to_string(path).map_err(|e| ImageError::io(path, e))?;
        let lock: InputsLock = toml::from_str(&text).map_err(|e| ImageError::LockSyntax {
            path: path.display().to_string(),
            message: e.message().to_owned(),
        })?;
        if lock.format_version != 1 {
            return Err(ImageError::LockSyntax {
                path: path.display().to_string(),
                message: format!("unsupported format_version {}", lock.format_version),
            });
        }
        Ok(lock)
    }

    /// How to get a missing kernel file back.
    pub fn kernel_hint(&self) -> String {
        format!(
            "run image/vendor-kernel.sh to fetch {} {} from Debian",
            self.kernel.package, self.kernel.version
        )
    }
}

/// A pinned input read and checked.
#[derive(Debug, Clone)]
pub struct VerifiedInput {
    /// What it is.
    pub what: String,
    /// Path relative to the checkout.
    pub path: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its sha256 (equal to the pin).
    pub sha256: String,
}

/// Reads `root/path` and checks it against `expected` (lower-case hex sha256).
pub fn verify_input(
    root: &Path,
    what: &str,
    path: &str,
    expected: &str,
    hint: &str,
) -> Result<VerifiedInput, ImageError> {
    let full = root.join(path);
    let bytes = match std::fs::read(&full) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ImageError::InputMissing {
                what: what.to_owned(),
                path: path.to_owned(),
                hint: hint.to_owned(),
            })
        }
        Err(e) => return Err(ImageError::io(&full, e)),
    };
    let got = sha256_hex(&bytes);
    if !got.eq_ignore_ascii_case(expected) {
        return Err(ImageError::InputMismatch {
            what: what.to_owned(),
            path: path.to_owned(),
            expected: expected.to_owned(),
            got,
        });
    }
    Ok(VerifiedInput {
        what: what.to_owned(),
        path: path.to_owned(),
        bytes,
        sha256: got,
    })
}

/// Lower-case hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tampered_input_names_both_digests() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"tampered").unwrap();
        let expected = sha256_hex(b"original");
        let err = verify_input(dir.path(), "kernel", "f", &expected, "hint")
            .unwrap_err()
            .to_string();
        assert!(err.contains(&expected), "{err}");
        assert!(err.contains(&sha256_hex(b"tampered")), "{err}");
    }

    #[test]
    fn a_missing_input_says_how_to_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = verify_input(dir.path(), "kernel", "nope", "00", "run the script")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "pinned input kernel is missing: nope does not exist (run the script)"
        );
    }

    #[test]
    fn the_committed_lock_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("inputs.lock");
        let lock = InputsLock::load(&path).unwrap();
        assert!(lock.modules.iter().any(|m| m.name == "virtio_net"));
    }
}
