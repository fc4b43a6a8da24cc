//! What crosses a boundary as JSON: the simulated secure processor's wire messages (both
//! directions) and evidence documents.
#![no_main]

use coffer_evidence::sim::wire::{Answer, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Request>(data);
    let _ = serde_json::from_slice::<Answer>(data);
    if let Ok(evidence) = serde_json::from_slice::<coffer_evidence::Evidence>(data) {
        let _ = evidence.snp_report();
    }
});
