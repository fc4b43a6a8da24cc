//! TCG2 crypto-agile event log: parse and replay every bank.
#![no_main]

use coffer_vtpm::eventlog::EventLog;
use coffer_vtpm::predict::boot_option_retries_in_log;
use coffer_vtpm::tpm::alg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = EventLog::parse(data) {
        for bank in [alg::SHA1, alg::SHA256, alg::SHA384, alg::SHA512] {
            let _ = log.replay(bank);
        }
        let _ = boot_option_retries_in_log(&log);
    }
});
