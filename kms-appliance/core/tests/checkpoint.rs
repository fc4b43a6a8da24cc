//! The audit checkpoint co-signer: the KMS signs a checkpoint only if it extends the last one
//! it signed, remembers that across restarts, and signs with a key every holder of the same
//! root key derives.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use coffer_kms::checkpoint::{signer_report_data, CheckpointError};
use coffer_kms::rollback::MemoryAnchor;
use coffer_kms::Kms;
use coffer_tlog::note::{open, Note, NoteSigner, TrustedKeys, VerifierKey};
use coffer_tlog::{Checkpoint, Hash, MemoryTree, ProofError};
use zeroize::Zeroizing;

const ORIGIN: &str = "coffer.dep-test/audit";

fn open_kms(path: &Path) -> Kms {
    Kms::open(path, &common::platform(), Box::new(MemoryAnchor::new())).unwrap()
}

/// A log of `n` entries.
fn log(n: u64) -> MemoryTree {
    let mut tree = MemoryTree::new();
    for i in 0..n {
        tree.append_entry(format!("audit event {i}").as_bytes());
    }
    tree
}

fn text(origin: &str, size: u64, root: &Hash) -> Vec<u8> {
    Checkpoint::new(origin, size, *root)
        .unwrap()
        .to_text()
        .into_bytes()
}

/// The checkpoint text of the first `size` entries of `tree`.
fn checkpoint_of(tree: &MemoryTree, size: u64) -> Vec<u8> {
    text(ORIGIN, size, &tree.root_at(size).unwrap())
}

fn trusted(kms: &Kms) -> TrustedKeys {
    let vkey = VerifierKey::parse(&kms.audit_signer_vkey(ORIGIN).unwrap()).unwrap();
    TrustedKeys::new([vkey]).unwrap()
}

/// What the consistency check found, for a checkpoint refused as inconsistent.
fn proof_failure(err: &CheckpointError) -> &ProofError {
    match err {
        CheckpointError::Inconsistent { reason, .. } => reason,
        other => panic!("expected an inconsistency, got {other:?}"),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    kms: Kms,
    tree: MemoryTree,
}

/// A KMS that signed the checkpoint of the first 5 entries of a 12-entry log.
fn signed_at_5() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let mut kms = open_kms(&path);
    let tree = log(12);
    kms.sign_checkpoint(ORIGIN, &checkpoint_of(&tree, 5), &[])
        .unwrap();
    Fixture {
        _dir: dir,
        path,
        kms,
        tree,
    }
}

#[test]
fn the_first_checkpoint_is_signed_without_proof_and_verifies_with_the_kms_vkey() {
    let dir = tempfile::tempdir().unwrap();
    let mut kms = open_kms(&dir.path().join("kms.redb"));
    assert!(kms.last_signed_checkpoint().is_none());
    let tree = log(5);
    let cp = checkpoint_of(&tree, 5);

    let note = kms.sign_checkpoint(ORIGIN, &cp, &[]).unwrap();

    let verified = open(&note, &trusted(&kms)).unwrap();
    assert_eq!(verified.text().as_bytes(), cp.as_slice());
    let checkpoint = Checkpoint::from_note(&verified).unwrap();
    assert_eq!((checkpoint.size(), *checkpoint.root()), (5, tree.root()));
    assert_eq!(
        verified.verified_by()[0].name(),
        format!("{ORIGIN}/kms"),
        "the key is named after the log it co-signs"
    );
    assert_eq!(
        *verified.verified_by()[0].public_key(),
        kms.audit_signer_public_key().unwrap()
    );
    let last = kms.last_signed_checkpoint().unwrap();
    assert_eq!(last.checkpoint(), &checkpoint);
    assert_eq!(last.note(), note.as_slice());
}

#[test]
fn a_grown_tree_with_a_valid_consistency_proof_is_signed() {
    let mut f = signed_at_5();
    let proof = f.tree.consistency_proof(5, 12).unwrap();
    let note = f
        .kms
        .sign_checkpoint(ORIGIN, &checkpoint_of(&f.tree, 12), &proof)
        .unwrap();
    open(&note, &trusted(&f.kms)).unwrap();
    assert_eq!(
        f.kms.last_signed_checkpoint().unwrap().checkpoint().size(),
        12
    );

    // The same checkpoint again (a retry after a lost answer): same size, same root, no proof.
    let again = f
        .kms
        .sign_checkpoint(ORIGIN, &checkpoint_of(&f.tree, 12), &[])
        .unwrap();
    assert_eq!(again, note, "Ed25519 is deterministic: the same note");
}

#[test]
fn a_forked_tree_of_the_same_size_is_refused_naming_both_roots() {
    let mut f = signed_at_5();
    let mut other = log(4);
    other.append_entry(b"a different fifth event");
    let version = f.kms.state_version();

    let err = f
        .kms
        .sign_checkpoint(ORIGIN, &checkpoint_of(&other, 5), &[])
        .unwrap_err();

    let (expected, got) = (
        hex::encode(f.tree.root_at(5).unwrap()),
        hex::encode(other.root()),
    );
    assert!(
        matches!(&err, CheckpointError::Fork { size: 5, expected: e, got: g } if *e == expected && *g == got),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("checkpoint of size 5 has root {got}, expected {expected}, the root of the last signed checkpoint of that size (a fork)")
    );
    assert_eq!(f.kms.state_version(), version, "a refusal commits nothing");
    assert_eq!(
        f.kms.last_signed_checkpoint().unwrap().checkpoint().root(),
        &f.tree.root_at(5).unwrap()
    );
}

#[test]
fn a_forked_bigger_tree_is_refused_even_with_its_own_consistency_proof() {
    let mut f = signed_at_5();
    // A log that rewrote entry 2, then grew: its own proof from 5 leads to its own old root.
    let mut forked = MemoryTree::new();
    for i in 0..12u64 {
        let entry = if i == 2 {
            "rewritten".to_owned()
        } else {
            format!("audit event {i}")
        };
        forked.append_entry(entry.as_bytes());
    }
    let proof = forked.consistency_proof(5, 12).unwrap();
    let err = f
        .kms
        .sign_checkpoint(ORIGIN, &checkpoint_of(&forked, 12), &proof)
        .unwrap_err();
    let old_root = hex::encode(f.tree.root_at(5).unwrap());
    assert!(
        matches!(&err, CheckpointError::Inconsistent { last_size: 5, size: 12, last_root, .. } if *last_root == old_root),
        "{err:?}"
    );
    assert_eq!(
        *proof_failure(&err),
        ProofError::RootMismatch {
            which: "old tree",
            expected: old_root,
            computed: hex::encode(forked.root_at(5).unwrap()),
        }
    );
}

#[test]
fn a_truncated_tree_is_refused() {
    let mut f = signed_at_5();
    let err = f
        .kms
        .sign_checkpoint(ORIGIN, &checkpoint_of(&f.tree, 4), &[])
        .unwrap_err();
    assert!(
        matches!(err, CheckpointError::Truncated { last: 5, got: 4 }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "checkpoint of size 4 is smaller than the last signed checkpoint, of size 5 (a truncated log)"
    );
}

#[test]
fn a_bad_consistency_proof_is_refused_with_what_was_wrong() {
    let mut f = signed_at_5();
    let cp = checkpoint_of(&f.tree, 12);
    let proof = f.tree.consistency_proof(5, 12).unwrap();

    // No proof at all.
    let err = f.kms.sign_checkpoint(ORIGIN, &cp, &[]).unwrap_err();
    assert_eq!(
        *proof_failure(&err),
        ProofError::ConsistencyProofLength {
            old_size: 5,
            new_size: 12,
            expected: proof.len(),
            got: 0
        }
    );
    assert!(err.to_string().contains(&format!(
        "a consistency proof from size 5 to size 12 has {} hashes, got 0",
        proof.len()
    )));

    // One hash altered.
    let mut altered = proof.clone();
    altered[1][0] ^= 1;
    let err = f.kms.sign_checkpoint(ORIGIN, &cp, &altered).unwrap_err();
    assert!(
        matches!(proof_failure(&err), ProofError::RootMismatch { .. }),
        "{err:?}"
    );

    // A proof for other sizes.
    let other = f.tree.consistency_proof(4, 12).unwrap();
    assert!(f.kms.sign_checkpoint(ORIGIN, &cp, &other).is_err());

    // The right proof still works afterwards: refusals changed nothing.
    f.kms.sign_checkpoint(ORIGIN, &cp, &proof).unwrap();
}

#[test]
fn a_checkpoint_of_another_log_is_refused() {
    let mut f = signed_at_5();
    let cp = text("coffer.other/audit", 12, &f.tree.root());
    let proof = f.tree.consistency_proof(5, 12).unwrap();
    let err = f.kms.sign_checkpoint(ORIGIN, &cp, &proof).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("checkpoint is for log \"coffer.other/audit\", expected \"{ORIGIN}\"")
    );
    // Nor can the KMS be told it serves another log once it signed for this one.
    let err = f
        .kms
        .sign_checkpoint("coffer.other/audit", &cp, &proof)
        .unwrap_err();
    assert!(
        matches!(&err, CheckpointError::WrongOrigin { expected, got } if expected == "coffer.other/audit" && got == ORIGIN),
        "{err:?}"
    );
}

#[test]
fn malformed_or_unchecked_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut kms = open_kms(&dir.path().join("kms.redb"));
    let tree = log(3);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not a checkpoint".to_vec(), "does not end with a newline"),
        (
            format!("{ORIGIN}\n3\nAAAA\n").into_bytes(),
            "not the 44 of a base64",
        ),
        (
            [checkpoint_of(&tree, 3), b"timestamp 1700000000\n".to_vec()].concat(),
            "1 extension line(s), expected none",
        ),
        (
            text(ORIGIN, 0, &tree.root()),
            "checkpoint of size 0 has root",
        ),
    ];
    for (cp, want) in cases {
        let err = kms
            .sign_checkpoint(ORIGIN, &cp, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(want),
            "{:?}: got {err:?}",
            String::from_utf8_lossy(&cp)
        );
    }
    let err = kms
        .sign_checkpoint("bad origin", &checkpoint_of(&tree, 3), &[])
        .unwrap_err();
    assert!(matches!(err, CheckpointError::BadOrigin { .. }), "{err:?}");
    assert!(kms.last_signed_checkpoint().is_none());
    // The empty tree, with the empty root, is a valid first checkpoint.
    kms.sign_checkpoint(ORIGIN, &checkpoint_of(&MemoryTree::new(), 0), &[])
        .unwrap();
}

#[test]
fn the_last_signed_checkpoint_survives_reopening_the_store() {
    let f = signed_at_5();
    let (path, tree) = (f.path.clone(), f.tree);
    let note = f.kms.last_signed_checkpoint().unwrap().note().to_vec();
    drop(f.kms);

    let mut kms = open_kms(&path);
    let last = kms.last_signed_checkpoint().expect("recorded");
    assert_eq!(last.checkpoint().size(), 5);
    assert_eq!(last.note(), note.as_slice());
    // Still refuses a fork and a truncation after the restart, still accepts the extension.
    let mut other = log(4);
    other.append_entry(b"forked");
    assert!(matches!(
        kms.sign_checkpoint(ORIGIN, &checkpoint_of(&other, 5), &[]),
        Err(CheckpointError::Fork { .. })
    ));
    assert!(matches!(
        kms.sign_checkpoint(ORIGIN, &checkpoint_of(&tree, 3), &[]),
        Err(CheckpointError::Truncated { last: 5, got: 3 })
    ));
    let proof = tree.consistency_proof(5, 9).unwrap();
    kms.sign_checkpoint(ORIGIN, &checkpoint_of(&tree, 9), &proof)
        .unwrap();
    drop(kms);
    let kms = open_kms(&path);
    assert_eq!(kms.last_signed_checkpoint().unwrap().checkpoint().size(), 9);
    kms.verify().unwrap();
}

#[test]
fn kms_with_the_same_root_key_derive_the_same_signer_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.redb");
    drop(open_kms(&a));
    // A replica (or a recovered KMS) holding the same root key: here, a copy of the store.
    let replica = dir.path().join("replica.redb");
    std::fs::copy(&a, &replica).unwrap();
    let other = dir.path().join("other.redb");

    let (a, replica, other) = (open_kms(&a), open_kms(&replica), open_kms(&other));
    let vkey = a.audit_signer_vkey(ORIGIN).unwrap();
    assert_eq!(replica.audit_signer_vkey(ORIGIN).unwrap(), vkey);
    assert_eq!(
        replica.audit_signer_public_key().unwrap(),
        a.audit_signer_public_key().unwrap()
    );
    assert_ne!(other.audit_signer_vkey(ORIGIN).unwrap(), vkey);
    assert_ne!(
        other.audit_signer_public_key().unwrap(),
        a.audit_signer_public_key().unwrap()
    );
    // The vkey parses, names the log, and carries the public key.
    let parsed = VerifierKey::parse(&vkey).unwrap();
    assert_eq!(parsed.name(), format!("{ORIGIN}/kms"));
    assert_eq!(*parsed.public_key(), a.audit_signer_public_key().unwrap());
    // Another log: the same key under another name.
    let for_other_log =
        VerifierKey::parse(&a.audit_signer_vkey("coffer.x/audit").unwrap()).unwrap();
    assert_eq!(for_other_log.public_key(), parsed.public_key());
    assert_ne!(for_other_log.key_id(), parsed.key_id());
}

#[test]
fn a_checkpoint_cosigned_by_the_log_and_the_kms_verifies_with_both_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut kms = open_kms(&dir.path().join("kms.redb"));
    let tree = log(7);
    let cp = checkpoint_of(&tree, 7);
    // The control plane signs with the log's key (named after the origin, as C2SP says)...
    let log_key = NoteSigner::ed25519_from_seed(ORIGIN, Zeroizing::new([9; 32])).unwrap();
    let mut note = Note::new(String::from_utf8(cp.clone()).unwrap()).unwrap();
    note.sign(&log_key).unwrap();
    // ...and merges the KMS's co-signature.
    let by_kms = Note::parse(&kms.sign_checkpoint(ORIGIN, &cp, &[]).unwrap()).unwrap();
    note.merge(&by_kms).unwrap();

    let kms_key = VerifierKey::parse(&kms.audit_signer_vkey(ORIGIN).unwrap()).unwrap();
    let keys = TrustedKeys::new([log_key.verifier_key(), kms_key.clone()]).unwrap();
    let verified = open(&note.to_bytes().unwrap(), &keys).unwrap();
    verified
        .require(&[&log_key.verifier_key(), &kms_key])
        .unwrap();
}

#[test]
fn signer_report_data_binds_the_nonce_and_the_vkey() {
    let dir = tempfile::tempdir().unwrap();
    let kms = open_kms(&dir.path().join("kms.redb"));
    let vkey = kms.audit_signer_vkey(ORIGIN).unwrap();
    let data = signer_report_data(b"nonce", &vkey);
    assert_eq!(data, signer_report_data(b"nonce", &vkey));
    assert_ne!(data, signer_report_data(b"nonce2", &vkey));
    assert_ne!(
        data,
        signer_report_data(b"nonce", &kms.audit_signer_vkey("coffer.x/audit").unwrap())
    );
    assert_ne!(data, [0; 64]);
}
