//! Helpers for Coffer's multi-crate tests.
//!
//! Tests drive the real `coffer` binary, as a user would. [`coffer`] builds it once per test
//! process (a no-op when it is fresh). VMs started by a test are owned by a [`Vm`] guard that
//! kills QEMU if the test fails half-way, so no VM outlives its test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use coffer_qemu::VmRecord;
use coffer_types::Role;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The checkout the tests run in.
pub fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the checkout")
        .to_path_buf()
}

/// The cargo target directory of this test run.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| checkout().join("target"))
}

/// A `coffer` command, built from this checkout.
pub fn coffer() -> Command {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let bin = BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(checkout())
            .args(["build", "--quiet", "--locked", "-p", "coffer-cli"])
            .status()
            .expect("run cargo");
        assert!(status.success(), "building coffer failed");
        target_dir().join("debug/coffer")
    });
    let mut command = Command::new(bin);
    command.current_dir(checkout());
    command
}

/// What a finished command said.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `coffer ARGS` to completion.
pub fn run(args: &[&str]) -> Outcome {
    run_command(coffer(), args)
}

/// Runs a prepared `coffer` command with ARGS to completion.
pub fn run_command(mut command: Command, args: &[&str]) -> Outcome {
    let output = command.args(args).output().expect("run coffer");
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Builds `role`'s image (optionally from another spec) into `out`.
pub fn build_image(role: Role, out: &Path, spec: Option<&Path>) {
    let mut args = vec![
        "image".to_owned(),
        "build".to_owned(),
        role.to_string(),
        "--out".to_owned(),
        out.display().to_string(),
    ];
    if let Some(spec) = spec {
        args.extend(["--spec".to_owned(), spec.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = run(&args);
    assert_eq!(outcome.code, 0, "image build failed: {outcome:?}");
}

/// The `measure snp` flags (as `sev-snp-measure` takes them) for a built image directory.
pub fn measure_args(image: &Path, vcpus: u32, vcpu_type: &str, features: &str) -> Vec<String> {
    let file = |name: &str| image.join(name).display().to_string();
    let cmdline = std::fs::read_to_string(image.join("cmdline")).expect("the image's cmdline");
    [
        "--mode",
        "snp",
        "--vcpus",
        &vcpus.to_string(),
        "--vcpu-type",
        vcpu_type,
        "--guest-features",
        features,
        "--ovmf",
        &file("firmware.fd"),
        "--kernel",
        &file("vmlinuz"),
        "--initrd",
        &file("initramfs.cpio.gz"),
        "--append",
        &cmdline,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A VM started by a test; killed on drop if still running.
pub struct Vm {
    /// Its record (ports, serial log, pid).
    pub record: VmRecord,
    /// The state directory it is recorded in (shared by the VMs of one deployment).
    pub state: std::sync::Arc<tempfile::TempDir>,
}

impl Vm {
    /// `coffer run IMAGE --detach` under a fresh state directory; panics with the CLI's output
    /// if it fails.
    pub fn start(image: &Path, name: &str) -> Vm {
        Vm::start_in(
            std::sync::Arc::new(tempfile::tempdir().unwrap()),
            image,
            name,
            &[],
        )
    }

    /// `coffer run IMAGE --detach EXTRA...` under the state directory `state`.
    pub fn start_in(
        state: std::sync::Arc<tempfile::TempDir>,
        image: &Path,
        name: &str,
        extra: &[&str],
    ) -> Vm {
        let outcome = Vm::run_detached(state.path(), image, name, extra);
        assert_eq!(outcome.code, 0, "coffer run failed: {outcome:?}");
        assert!(
            outcome.stdout.contains("healthy: http://127.0.0.1:"),
            "{outcome:?}"
        );
        let record = coffer_qemu::state::load(state.path(), name).expect("VM record");
        Vm { record, state }
    }

    /// `coffer run IMAGE --detach --name NAME EXTRA...` under `state`, whatever its outcome (for
    /// a VM that is expected not to become healthy).
    pub fn run_detached(state: &Path, image: &Path, name: &str, extra: &[&str]) -> Outcome {
        let mut args = vec![
            "--state-dir",
            state.to_str().unwrap(),
            "run",
            image.to_str().unwrap(),
            "--detach",
            "--name",
            name,
        ];
        args.extend_from_slice(extra);
        run(&args)
    }

    /// `coffer stop NAME`.
    pub fn stop(&self) -> Outcome {
        run(&[
            "--state-dir",
            self.state.path().to_str().unwrap(),
            "stop",
            &self.record.name,
        ])
    }

    /// The serial log so far.
    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.record.serial_log).unwrap_or_default())
            .into_owned()
    }

    /// Waits until the serial log contains `needle`, up to `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let started = std::time::Instant::now();
        while started.elapsed() < timeout {
            if self.serial().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// Waits until the serial log contains `needle` at least `count` times, up to `timeout`.
    pub fn wait_for_log_count(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let started = std::time::Instant::now();
        while started.elapsed() < timeout {
            if self.serial().matches(needle).count() >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// One `GET /healthz` from the host.
    pub fn health(&self) -> Result<coffer_types::Health, String> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(coffer_qemu::health::check(
                self.record.health_port,
                Duration::from_secs(5),
            ))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.record.is_running() {
            let _ = kill(Pid::from_raw(self.record.pid), Signal::SIGKILL);
        }
    }
}

/// A TCP port free on the host right now (for a VM's port forward).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A name unique to this test process.
pub fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}
