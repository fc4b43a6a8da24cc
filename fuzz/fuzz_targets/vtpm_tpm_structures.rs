//! TPM 2.0 structures on their own: TPMS_ATTEST, TPMT_SIGNATURE, TPM2B_ATTEST, SPKI keys.
#![no_main]

use coffer_vtpm::tpm::{unwrap_tpm2b_attest, Attest, Signature};
use coffer_vtpm::AkPublicKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Attest::parse(data);
    let _ = Signature::parse(data);
    let _ = unwrap_tpm2b_attest(data);
    let _ = AkPublicKey::from_spki_der(data);
});
