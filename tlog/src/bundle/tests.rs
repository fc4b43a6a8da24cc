//! A 50-entry log with checkpoints at 10, 30 and 50 signed by a hub key and co-signed by a KMS
//! key, and every tamper `coffer audit verify` must catch.

use zeroize::Zeroizing;

use super::*;
use crate::note::NoteSigner;

const ORIGIN: &str = "coffer/dep-1/audit";

struct Log {
    hub: NoteSigner,
    kms: NoteSigner,
    tree: MemoryTree,
    entries: Vec<Vec<u8>>,
    /// Co-signed notes at sizes 10, 30, 50.
    notes: Vec<Vec<u8>>,
}

fn signer(name: &str, seed: u8) -> NoteSigner {
    NoteSigner::ed25519_from_seed(name, Zeroizing::new([seed; 32])).unwrap()
}

fn entry(i: usize) -> Vec<u8> {
    format!("{{\"action\":\"decrypt\",\"n\":{i}}}").into_bytes()
}

/// A note of `checkpoint` signed by the hub, merged with the KMS's co-signature.
fn cosigned(hub: &NoteSigner, kms: Option<&NoteSigner>, checkpoint: &Checkpoint) -> Vec<u8> {
    let mut note = checkpoint.to_note().unwrap();
    note.sign(hub).unwrap();
    if let Some(kms) = kms {
        let mut cosignature = checkpoint.to_note().unwrap();
        cosignature.sign(kms).unwrap();
        note.merge(&cosignature).unwrap();
    }
    note.to_bytes().unwrap()
}

fn log() -> Log {
    let hub = signer(ORIGIN, 1);
    let kms = signer(&format!("{ORIGIN}/kms"), 2);
    let entries: Vec<Vec<u8>> = (0..50).map(entry).collect();
    let mut tree = MemoryTree::new();
    let mut notes = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        tree.append_entry(e);
        if [10, 30, 50].contains(&(i + 1)) {
            let checkpoint = Checkpoint::new(ORIGIN, tree.size(), tree.root()).unwrap();
            notes.push(cosigned(&hub, Some(&kms), &checkpoint));
        }
    }
    Log {
        hub,
        kms,
        tree,
        entries,
        notes,
    }
}

impl Log {
    fn trusted(&self) -> TrustedKeys {
        TrustedKeys::new([self.hub.verifier_key(), self.kms.verifier_key()]).unwrap()
    }

    fn required(&self) -> Vec<VerifierKey> {
        vec![self.hub.verifier_key(), self.kms.verifier_key()]
    }

    fn export(&self) -> LogExport {
        LogExport::new(ORIGIN, self.entries.clone(), &self.notes).unwrap()
    }

    fn verify(&self, export: &LogExport, previous: &[Checkpoint]) -> Result<Report, AuditError> {
        // Every export goes through its JSON form, as the CLI reads it.
        let export = LogExport::parse(&export.to_json().unwrap()).unwrap();
        verify_log(&export, &self.trusted(), &self.required(), previous)
    }

    fn checkpoint(&self, size: u64) -> Checkpoint {
        Checkpoint::new(ORIGIN, size, self.tree.root_at(size).unwrap()).unwrap()
    }

    /// A checkpoint of `size` over a different history, signed by the hub only.
    fn forked_note(&self, size: u64) -> (Checkpoint, Vec<u8>) {
        let mut other = self.entries.clone();
        other[3] = b"rewritten".to_vec();
        let tree = MemoryTree::from_leaf_hashes(other.iter().map(|e| leaf_hash(e)));
        let forked = Checkpoint::new(ORIGIN, size, tree.root_at(size).unwrap()).unwrap();
        let note = cosigned(&self.hub, None, &forked);
        (forked, note)
    }
}

#[test]
fn an_untampered_log_verifies() {
    let log = log();
    let report = log.verify(&log.export(), &[log.checkpoint(20)]).unwrap();
    assert_eq!(report.origin, ORIGIN);
    assert_eq!(report.entries, 50);
    assert_eq!(report.newest.size(), 50);
    assert_eq!(report.newest.root(), &log.tree.root());
    assert_eq!(report.checkpoints, 3);
    assert_eq!(report.beyond_newest, 0);
    assert_eq!(report.previous, 1);
    assert_eq!(
        report.signed_by,
        [
            log.hub.verifier_key().label(),
            log.kms.verifier_key().label()
        ]
    );
}

#[test]
fn entries_appended_after_the_newest_checkpoint_are_reported_not_refused() {
    let log = log();
    let mut export = log.export();
    export.entries.push(entry(50));
    export.entries.push(entry(51));
    let report = log.verify(&export, &[]).unwrap();
    assert_eq!(report.entries, 52);
    assert_eq!(report.newest.size(), 50);
    assert_eq!(report.beyond_newest, 2);
}

#[test]
fn an_altered_entry_is_found_between_the_checkpoints_around_it() {
    let log = log();
    let mut export = log.export();
    export.entries[17] = b"{\"action\":\"nothing to see\"}".to_vec();
    let err = log.verify(&export, &[]).unwrap_err();
    assert_eq!(err.code(), "modified-entry");
    let AuditError::ModifiedEntry {
        size,
        checkpoint_root,
        computed_root,
        matching_prefix,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!((*size, *matching_prefix), (30, 10));
    assert_eq!(checkpoint_root, &hex::encode(log.tree.root_at(30).unwrap()));
    assert_ne!(computed_root, checkpoint_root);
    let message = err.to_string();
    assert!(message.contains("an index in 10..30"), "{message}");
}

#[test]
fn a_deleted_entry_is_refused() {
    let log = log();
    let mut export = log.export();
    export.entries.remove(5);
    let err = log.verify(&export, &[]).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::ModifiedEntry {
                size: 10,
                matching_prefix: 0,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn two_swapped_entries_are_refused() {
    let log = log();
    let mut export = log.export();
    export.entries.swap(41, 42);
    let err = log.verify(&export, &[]).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::ModifiedEntry {
                size: 50,
                matching_prefix: 30,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn an_inserted_entry_is_refused() {
    let log = log();
    let mut export = log.export();
    export.entries.insert(0, b"forged".to_vec());
    let err = log.verify(&export, &[]).unwrap_err();
    assert!(
        matches!(err, AuditError::ModifiedEntry { size: 10, .. }),
        "{err:?}"
    );
}

#[test]
fn two_signed_checkpoints_of_one_size_are_a_fork() {
    let log = log();
    let (_, forked) = log.forked_note(30);
    let mut export = log.export();
    export.checkpoints.push(String::from_utf8(forked).unwrap());
    // Trusting the hub alone, the forked note verifies: the two roots for size 30 are a fork.
    let hub_only = [log.hub.verifier_key()];
    let err = verify_log(&export, &log.trusted(), &hub_only, &[]).unwrap_err();
    assert_eq!(err.code(), "fork");
    let AuditError::Fork {
        size,
        first_root,
        second_root,
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(*size, 30);
    assert_ne!(first_root, second_root);
    // Requiring the KMS's co-signature, the forked note is refused before that.
    let err = log.verify(&export, &[]).unwrap_err();
    assert_eq!(err.code(), "missing-signer", "{err}");
}

#[test]
fn a_previously_trusted_checkpoint_of_another_history_is_a_fork() {
    let log = log();
    for size in [30, 20] {
        let (forked, _) = log.forked_note(size);
        let err = log.verify(&log.export(), &[forked]).unwrap_err();
        assert!(
            matches!(err, AuditError::Fork { size: s, .. } if s == size),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("previously trusted checkpoint #0"),
            "{err}"
        );
    }
}

#[test]
fn a_truncated_log_is_refused() {
    let log = log();
    // The last 30 entries and the checkpoints over them dropped; the verifier saw size 30 before.
    let export = LogExport::new(ORIGIN, log.entries[..20].to_vec(), &log.notes[..1]).unwrap();
    let err = log.verify(&export, &[log.checkpoint(30)]).unwrap_err();
    assert_eq!(
        err,
        AuditError::Truncated {
            what: "previously trusted checkpoint #0 (size 30)".into(),
            expected_at_least: 30,
            got: 20,
        }
    );
    assert!(err.to_string().contains("at least 30 entries, got 20"));
    // A signed checkpoint larger than the entries is truncation too.
    let export = LogExport::new(ORIGIN, log.entries[..20].to_vec(), &log.notes).unwrap();
    let err = log.verify(&export, &[]).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Truncated {
                expected_at_least: 50,
                got: 20,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_checkpoint_without_the_kms_cosignature_is_refused() {
    let log = log();
    let mut notes = log.notes.clone();
    notes[2] = cosigned(&log.hub, None, &log.checkpoint(50));
    let export = LogExport::new(ORIGIN, log.entries.clone(), &notes).unwrap();
    let err = log.verify(&export, &[]).unwrap_err();
    assert_eq!(err.code(), "missing-signer");
    let message = err.to_string();
    assert!(message.contains("checkpoint note #2"), "{message}");
    assert!(message.contains("coffer/dep-1/audit/kms+"), "{message}");
}

#[test]
fn cosignatures_in_separate_notes_are_merged() {
    let log = log();
    let checkpoint = log.checkpoint(50);
    let mut kms_only = checkpoint.to_note().unwrap();
    kms_only.sign(&log.kms).unwrap();
    let notes = vec![
        cosigned(&log.hub, None, &checkpoint),
        kms_only.to_bytes().unwrap(),
    ];
    let export = LogExport::new(ORIGIN, log.entries.clone(), &notes).unwrap();
    let report = log.verify(&export, &[]).unwrap();
    assert_eq!(report.signed_by.len(), 2);
}

#[test]
fn checkpoints_from_untrusted_keys_or_other_logs_are_refused() {
    let log = log();
    let stranger = signer(ORIGIN, 9);
    let mut notes = log.notes.clone();
    notes.push(cosigned(&stranger, None, &log.checkpoint(40)));
    let export = LogExport::new(ORIGIN, log.entries.clone(), &notes).unwrap();
    let err = log.verify(&export, &[]).unwrap_err();
    assert_eq!(err.code(), "checkpoint-signature", "{err}");

    let export = LogExport::new("coffer/dep-2/audit", log.entries.clone(), &log.notes).unwrap();
    let err = log.verify(&export, &[]).unwrap_err();
    assert_eq!(err.code(), "wrong-origin", "{err}");

    let export = LogExport::new(ORIGIN, log.entries.clone(), &[]).unwrap();
    assert_eq!(
        log.verify(&export, &[]).unwrap_err(),
        AuditError::NoCheckpoint { entries: 50 }
    );

    // A signature by a trusted key over altered text.
    let mut notes = log.notes.clone();
    let text = String::from_utf8(notes[0].clone()).unwrap();
    notes[0] = text.replacen("\n10\n", "\n11\n", 1).into_bytes();
    let export = LogExport::new(ORIGIN, log.entries.clone(), &notes).unwrap();
    let err = log.verify(&export, &[]).unwrap_err();
    assert_eq!(err.code(), "checkpoint-signature", "{err}");
}

#[test]
fn malformed_exports_are_refused_with_what_is_wrong() {
    let good = String::from_utf8(log().export().to_json().unwrap()).unwrap();
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "not valid JSON"),
        ("[]".into(), "not valid JSON"),
        (
            good.replace(EXPORT_FORMAT, "coffer-tlog-export/v9"),
            "expected \"coffer-tlog-export/v1\"",
        ),
        (
            good.replacen("\"origin\"", "\"extra\": 1, \"origin\"", 1),
            "unknown field",
        ),
        (good.replacen(ORIGIN, "", 1), "origin"),
        (
            good.replacen("\"entries\": [", "\"entries\": [\"***\",", 1),
            "entry 0: is not canonical standard base64",
        ),
        (
            good.replacen("\"entries\": [", "\"entries\": [7,", 1),
            "not valid JSON",
        ),
    ];
    for (json, want) in cases {
        let err = LogExport::parse(json.as_bytes()).unwrap_err();
        assert!(err.is_malformed(), "{err:?}");
        assert!(err.to_string().contains(want), "got {err}, want {want:?}");
    }
    // Limits are applied while parsing, before anything big is stored.
    let many = format!(
        "{{\"format\":\"{EXPORT_FORMAT}\",\"origin\":\"o\",\"entries\":[{}\"\"],\"checkpoints\":[]}}",
        "\"\",".repeat(MAX_ENTRIES)
    );
    let err = LogExport::parse(many.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("at most 1000000 items"), "{err}");
    let huge = vec![b' '; MAX_EXPORT_LEN + 1];
    assert!(LogExport::parse(&huge)
        .unwrap_err()
        .to_string()
        .contains("more than the"));
    let long_entry = Base64::encode_string(&vec![0u8; MAX_ENTRY_LEN + 1]);
    let json = good.replacen(
        "\"entries\": [",
        &format!("\"entries\": [\"{long_entry}\","),
        1,
    );
    let err = LogExport::parse(json.as_bytes()).unwrap_err();
    assert!(
        err.to_string().contains("more than the 1048576 allowed"),
        "{err}"
    );
}

#[test]
fn parsing_arbitrary_bytes_does_not_panic() {
    let good = log().export().to_json().unwrap();
    let bundle = bundle_of(&log(), &[3, 17], &[0]).to_json().unwrap();
    for json in [good, bundle] {
        for cut in (0..json.len()).step_by(97) {
            let _ = LogExport::parse(&json[..cut]);
            let _ = ProofBundle::parse(&json[..cut]);
            let mut flipped = json.clone();
            flipped[cut] ^= 0x41;
            let _ = LogExport::parse(&flipped);
            let _ = ProofBundle::parse(&flipped);
        }
    }
}

/// A bundle of entries `indices` against the newest checkpoint, with consistency proofs from the
/// notes at `older` (indices into `log.notes`).
fn bundle_of(log: &Log, indices: &[u64], older: &[usize]) -> ProofBundle {
    let entries: Vec<(u64, &[u8])> = indices
        .iter()
        .map(|&i| (i, log.entries[i as usize].as_slice()))
        .collect();
    let older: Vec<&[u8]> = older.iter().map(|&i| log.notes[i].as_slice()).collect();
    let bundle = make_bundle(&log.tree, &log.notes[2], &entries, &older).unwrap();
    ProofBundle::parse(&bundle.to_json().unwrap()).unwrap()
}

#[test]
fn a_bundle_proves_its_entries_and_its_consistency_with_older_checkpoints() {
    let log = log();
    let bundle = bundle_of(&log, &[0, 17, 49], &[0, 1]);
    let report = verify_bundle(
        &bundle,
        &log.trusted(),
        &log.required(),
        &[log.checkpoint(10), log.checkpoint(30), log.checkpoint(50)],
    )
    .unwrap();
    assert_eq!(report.entries, 3);
    assert_eq!(report.newest.size(), 50);
    assert_eq!(report.checkpoints, 3);
    assert_eq!(report.previous, 3);
}

#[test]
fn a_modified_bundle_entry_is_refused() {
    let log = log();
    let mut bundle = bundle_of(&log, &[17], &[]);
    bundle.entries[0].entry = b"{\"action\":\"nothing to see\"}".to_vec();
    let err = verify_bundle(&bundle, &log.trusted(), &log.required(), &[]).unwrap_err();
    assert_eq!(err.code(), "modified-entry");
    assert!(
        matches!(
            err,
            AuditError::EntryNotIncluded {
                index: 17,
                size: 50,
                ..
            }
        ),
        "{err:?}"
    );
    // The right entry claimed at another index.
    let mut bundle = bundle_of(&log, &[17], &[]);
    bundle.entries[0].index = 18;
    let err = verify_bundle(&bundle, &log.trusted(), &log.required(), &[]).unwrap_err();
    assert_eq!(err.code(), "modified-entry", "{err}");
}

#[test]
fn a_bundle_must_prove_consistency_with_what_the_verifier_trusted() {
    let log = log();
    let trusted = log.trusted();
    let required = log.required();
    // No proof from size 30.
    let bundle = bundle_of(&log, &[1], &[0]);
    let err = verify_bundle(&bundle, &trusted, &required, &[log.checkpoint(30)]).unwrap_err();
    assert_eq!(
        err,
        AuditError::Unproven {
            old_size: 30,
            new_size: 50
        }
    );
    // A bundle older than what was trusted.
    let older = make_bundle(&log.tree, &log.notes[1], &[], &[]).unwrap();
    let err = verify_bundle(&older, &trusted, &required, &[log.checkpoint(50)]).unwrap_err();
    assert_eq!(err.code(), "truncated", "{err}");
    // A trusted checkpoint of another history, of the bundle's size or smaller.
    let bundle = bundle_of(&log, &[1], &[1]);
    for size in [50, 30] {
        let (forked, _) = log.forked_note(size);
        let err = verify_bundle(&bundle, &trusted, &required, &[forked]).unwrap_err();
        assert!(
            matches!(err, AuditError::Fork { size: s, .. } if s == size),
            "{err:?}"
        );
    }
    // A consistency proof that does not hold.
    let mut bundle = bundle_of(&log, &[1], &[1]);
    bundle.consistency[0].proof[0][0] ^= 1;
    let err = verify_bundle(&bundle, &trusted, &required, &[]).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Inconsistent {
                old_size: 30,
                new_size: 50,
                ..
            }
        ),
        "{err:?}"
    );
    // old_size disagreeing with its checkpoint.
    let mut bundle = bundle_of(&log, &[1], &[1]);
    bundle.consistency[0].old_size = 29;
    let err = verify_bundle(&bundle, &trusted, &required, &[]).unwrap_err();
    assert_eq!(err.code(), "invalid-proof", "{err}");
    // The bundle's checkpoint without the KMS's co-signature.
    let mut bundle = bundle_of(&log, &[1], &[]);
    bundle.checkpoint = String::from_utf8(cosigned(&log.hub, None, &log.checkpoint(50))).unwrap();
    let err = verify_bundle(&bundle, &trusted, &required, &[]).unwrap_err();
    assert_eq!(err.code(), "missing-signer", "{err}");
}
