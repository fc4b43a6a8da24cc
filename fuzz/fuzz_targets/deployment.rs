//! Deployment manifest parsing and validation on arbitrary bytes (the guest reads it from a
//! host-written config disk).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(deployment) = coffer_types::Deployment::from_json(data) {
        for role in coffer_types::Role::ALL {
            let _ = deployment.measurements(role);
        }
    }
});
