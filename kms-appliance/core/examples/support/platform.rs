//! What the crash-test writers share: their arguments `STORE SIM_DIR MEASUREMENT_HEX` and the
//! simulated secure processor they seal their store with.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use coffer_sim::{SimGuest, SimRoot, SimService};

/// The store argument and the platform of a guest measured `MEASUREMENT_HEX` on the simulated
/// chain in `SIM_DIR`; `name` is the writer's, for the usage message.
pub fn from_args(name: &str) -> anyhow::Result<(String, SimService)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, sim_dir, measurement] = args.as_slice() else {
        bail!("usage: {name} STORE SIM_DIR MEASUREMENT_HEX");
    };
    let measurement: [u8; 48] = hex::decode(measurement)
        .ok()
        .and_then(|m| m.try_into().ok())
        .context("MEASUREMENT_HEX must be 96 hex digits")?;
    let root = SimRoot::load(&PathBuf::from(sim_dir)).context("loading the sim chain")?;
    let platform = SimService::new(
        Arc::new(root),
        SimGuest {
            measurement,
            host_data: [0; 32],
            policy: 0x30000,
        },
    );
    Ok((store.clone(), platform))
}
