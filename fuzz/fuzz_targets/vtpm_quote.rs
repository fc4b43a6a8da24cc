//! Quote container (az-cvm-vtpm layout) and the whole verification against a fixed AK.
#![no_main]

use coffer_vtpm::{verify_quote, AkPublicKey, PcrPins, Quote};
use libfuzzer_sys::fuzz_target;

const AK_PEM: &str = include_str!("../../attestation/vtpm/testdata/azure/akpub.pem");

fuzz_target!(|data: &[u8]| {
    let Ok(ak) = AkPublicKey::from_spki_pem(AK_PEM) else {
        return;
    };
    let Ok(pins) = PcrPins::new().pin_zero(11) else {
        return;
    };
    if let Ok(quote) = Quote::parse_az_cvm_vtpm(data) {
        let _ = verify_quote(&ak, &quote, b"challenge", &pins).to_string();
        let _ = quote.pcrs();
    }
});
