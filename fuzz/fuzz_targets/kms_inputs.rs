//! What the KMS takes from outside before anything authenticates it: a share posted to a
//! restoring KMS's endpoint (age decryption, then the share envelope), a recovery kit, a replica
//! snapshot, a backup, a witness request (anyone may post one), and the data disk's join and
//! peer hints, on arbitrary bytes.
#![no_main]

use std::sync::{Mutex, OnceLock};

use coffer_kms::recovery::{RecoveryInfo, RecoveryKit, RecoverySession};
use libfuzzer_sys::fuzz_target;

/// One session for the whole run (age identity generation per input would dominate).
fn session() -> &'static Mutex<RecoverySession> {
    static SESSION: OnceLock<Mutex<RecoverySession>> = OnceLock::new();
    SESSION.get_or_init(|| {
        let (_, officer) = coffer_kms::recovery::new_officer_identity();
        let info = RecoveryInfo {
            deployment_id: "fuzz".into(),
            split_id: [1; 16],
            threshold: 1,
            officers: vec![officer],
            commitment: [2; 32],
        };
        Mutex::new(RecoverySession::new(info).expect("a valid session"))
    })
}

/// One witness table for the whole run (it fills up to its cap, which the fuzzer then meets).
fn witnesses() -> &'static coffer_kms::rollback::quorum::WitnessTable {
    static TABLE: OnceLock<coffer_kms::rollback::quorum::WitnessTable> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(mut session) = session().lock() {
        let _ = session.submit(data);
    }
    let _ = RecoveryKit::from_json(data);
    let _ = coffer_kms::Snapshot::from_json(data);
    // The witness route answers whoever calls: it must never panic, whatever the body.
    let _ = witnesses().answer(data);
    // The join and peer hints: the bytes as a data disk from the hint's offset on.
    let _ = coffer_types::parse_join_hint(data);
    let _ = coffer_types::parse_peer_hint(data);
});
