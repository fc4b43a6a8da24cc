//! Helpers shared by the coffer-kms test files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use coffer_sim::{SimGuest, SimRoot, SimService};

/// Where the simulated secure processor's chain is kept between test binaries and runs.
pub fn sim_root_dir() -> PathBuf {
    std::env::temp_dir().join("coffer-kms-test-sim-root-v1")
}

/// The simulated chain, generated once per machine (RSA-4096 generation takes seconds
/// unoptimised) in a staging directory renamed into place, so concurrent binaries never see a
/// half-written one. Simulation keys are not secrets.
pub fn sim_root() -> Arc<SimRoot> {
    static ROOT: OnceLock<Arc<SimRoot>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = sim_root_dir();
        if let Ok(root) = SimRoot::load(&dir) {
            return Arc::new(root);
        }
        let staging = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let root = SimRoot::generate(&mut rand_core::OsRng).unwrap();
        root.save(&staging.path().join("root")).unwrap();
        let _ = std::fs::rename(staging.path().join("root"), &dir);
        Arc::new(root)
    })
    .clone()
}

/// The measurement of "the kms image" in these tests.
pub const KMS_MEASUREMENT: [u8; 48] = [0x4b; 48];

/// The secure processor of a guest launched with `measurement`.
pub fn platform_measuring(measurement: [u8; 48]) -> SimService {
    SimService::new(
        sim_root(),
        SimGuest {
            measurement,
            host_data: [0; 32],
            policy: 0x30000,
        },
    )
}

/// The secure processor of the kms image.
pub fn platform() -> SimService {
    platform_measuring(KMS_MEASUREMENT)
}

pub mod issuer;
pub mod mesh;
pub mod witnesses;

/// The example binary `name` that `cargo test` builds beside the test binaries.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo test -p coffer-kms` (which builds examples), or `cargo build -p coffer-kms --example {name}`",
        path.display()
    );
    path
}

/// Runs `program` with `args`, kills it with SIGKILL after `delay`, and returns the lines it
/// printed completely (a line the kill cut stated nothing). Panics if it exited by itself.
pub fn run_until_killed(
    program: &std::path::Path,
    args: &[&std::ffi::OsStr],
    delay: std::time::Duration,
    round: usize,
) -> Vec<String> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut reader = std::io::BufReader::new(stdout);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.last() != Some(&b'\n') => break,
                Ok(_) => lines.push(String::from_utf8(line).unwrap()),
            }
        }
        lines
    });
    std::thread::sleep(delay);
    if let Some(status) = child.try_wait().unwrap() {
        panic!(
            "round {round}: {} exited by itself with {status}",
            program.display()
        );
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap()
}

/// An allowed unwrap by alice of acme, as the journal tests record it.
pub fn decision(message: &str) -> coffer_kms::authz::AuditEvent {
    use coffer_kms::authz::{AuditEvent, Operation, Outcome};
    AuditEvent {
        time: 1,
        peer_role: None,
        peer_measurement: None,
        subject: Some("user:alice".into()),
        issuer: None,
        credential_id: None,
        operation: Operation::UnwrapDataKey,
        org: "acme".into(),
        workspace: None,
        key_id: None,
        outcome: Outcome::Allowed,
        reason: None,
        message: message.into(),
    }
}
