//! Whole Azure evidence documents (Trustee az-snp-vtpm JSON), then the HCL report inside and an
//! authenticity verification with a fixed nonce.
#![no_main]

use coffer_vtpm::evidence::parse_trustee_json;
use coffer_vtpm::{verify_azure_vtpm_authenticity, HclReport};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(evidence) = parse_trustee_json(data) {
        if let Ok(hcl) = HclReport::parse(&evidence.hcl_report) {
            let _ = verify_azure_vtpm_authenticity(&hcl, &evidence.quote, b"nonce").to_string();
        }
    }
});
