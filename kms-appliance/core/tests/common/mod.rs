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
