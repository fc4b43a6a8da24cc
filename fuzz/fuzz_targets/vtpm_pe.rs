//! PE images: Authenticode hash, section table, UKI component extraction.
#![no_main]

use coffer_vtpm::pe::{authenticode_sha256, sections};
use coffer_vtpm::predict::UkiComponents;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = authenticode_sha256(data);
    if let Ok(table) = sections(data) {
        for section in &table {
            let _ = section.loaded();
        }
    }
    let _ = UkiComponents::from_uki(data);
});
