//! HCL report (vTPM NV 0x01400001): parse, binding checks, claims, AK extraction.
#![no_main]

use coffer_vtpm::HclReport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = HclReport::parse(data) {
        let _ = report.check_binding();
        let _ = report.snp_report();
        if let Ok(claims) = report.claims() {
            let _ = claims.user_data_bytes();
            let _ = claims.ak_jwk();
        }
        let _ = report.ak_public_key();
    }
});
