//! Policy files and RFC 3339 times on arbitrary text: errors are fine, panics are bugs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = coffer_verify::Policy::from_toml(&text);
    let _ = coffer_verify::Timestamp::parse_rfc3339(&text);
});
