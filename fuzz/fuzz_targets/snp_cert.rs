//! Certificate parsing (DER, PEM, PEM bundles), AMD extensions and keys on arbitrary bytes:
//! errors are fine, panics are bugs.
#![no_main]

use coffer_verify::Certificate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for cert in Certificate::from_pem_bundle(data).into_iter().flatten() {
        let _ = (cert.subject_cn(), cert.issuer_cn(), cert.not_before(), cert.not_after());
        let _ = cert.vek_extensions();
        let _ = cert.p384_public_key();
        let _ = cert.verify_signed_by(&cert);
    }
});
