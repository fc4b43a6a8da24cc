//! The JSON documents a launcher or verifier reads from disk: image manifests, measurement sets,
//! pin files, the baked appliance configuration.
#![no_main]

use coffer_types::{ApplianceConfig, ImageManifest, MeasurementSet, PinFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<ImageManifest>(data);
    let _ = serde_json::from_slice::<MeasurementSet>(data);
    let _ = serde_json::from_slice::<PinFile>(data);
    let _ = serde_json::from_slice::<ApplianceConfig>(data);
});
