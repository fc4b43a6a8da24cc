//! The host-written SEV-SNP extended-report certificate table.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = coffer_evidence::snp::parse_cert_table(data);
});
