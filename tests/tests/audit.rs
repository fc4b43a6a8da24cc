//! `coffer audit verify` as an auditor drives it: a downloaded audit log, checkpoints signed by
//! the control plane and co-signed by the KMS, verified offline; a tampered log, a forked
//! checkpoint and a truncated log are rejected with their reason, and unusable input is exit 2.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use coffer_tests::{run, Outcome};
use coffer_tlog::bundle::{make_bundle, LogExport};
use coffer_tlog::{Checkpoint, MemoryTree, NoteSigner};
use zeroize::Zeroizing;

const ORIGIN: &str = "coffer/dep-cli/audit";

struct Log {
    hub: NoteSigner,
    kms: NoteSigner,
    tree: MemoryTree,
    entries: Vec<Vec<u8>>,
    /// Co-signed checkpoint notes at sizes 10, 30 and 50.
    notes: Vec<Vec<u8>>,
}

fn note(checkpoint: &Checkpoint, signers: &[&NoteSigner]) -> Vec<u8> {
    let mut note = checkpoint.to_note().unwrap();
    for signer in signers {
        note.sign(signer).unwrap();
    }
    note.to_bytes().unwrap()
}

fn log() -> Log {
    let hub = NoteSigner::ed25519_from_seed(ORIGIN, Zeroizing::new([7; 32])).unwrap();
    let kms =
        NoteSigner::ed25519_from_seed(&format!("{ORIGIN}/kms"), Zeroizing::new([8; 32])).unwrap();
    let entries: Vec<Vec<u8>> = (0..50)
        .map(|i| format!("{{\"user\":\"alice\",\"action\":\"decrypt\",\"n\":{i}}}").into_bytes())
        .collect();
    let mut tree = MemoryTree::new();
    let mut notes = Vec::new();
    for e in &entries {
        tree.append_entry(e);
        if [10, 30, 50].contains(&tree.size()) {
            let checkpoint = Checkpoint::new(ORIGIN, tree.size(), tree.root()).unwrap();
            notes.push(note(&checkpoint, &[&hub, &kms]));
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

fn write_export(path: &Path, entries: Vec<Vec<u8>>, notes: &[Vec<u8>]) -> String {
    let export = LogExport::new(ORIGIN, entries, notes).unwrap();
    std::fs::write(path, export.to_json().unwrap()).unwrap();
    path.to_str().unwrap().to_owned()
}

impl Log {
    fn trust_args(&self) -> Vec<String> {
        [&self.hub, &self.kms]
            .iter()
            .flat_map(|s| ["--trust".to_owned(), s.verifier_key().to_string()])
            .collect()
    }

    fn verify(&self, input: &[&str], extra: &[&str]) -> Outcome {
        let trust = self.trust_args();
        let mut args = vec!["audit", "verify"];
        args.extend(input);
        args.extend(trust.iter().map(String::as_str));
        args.extend(extra);
        run(&args)
    }
}

fn assert_rejected(outcome: &Outcome, code: &str, detail: &str) {
    assert_eq!(outcome.code, 1, "{outcome:?}");
    let want = format!("REJECTED ({code}): ");
    assert!(outcome.stdout.starts_with(&want), "{outcome:?}");
    assert!(
        outcome.stdout.contains(detail),
        "want {detail:?}: {outcome:?}"
    );
}

#[test]
fn a_downloaded_log_verifies_and_every_tamper_is_rejected() {
    let log = log();
    let dir = tempfile::tempdir().unwrap();

    let good = write_export(
        &dir.path().join("good.json"),
        log.entries.clone(),
        &log.notes,
    );
    let outcome = log.verify(&["--log", &good], &[]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let root = hex::encode(log.tree.root());
    assert!(
        outcome.stdout.starts_with(&format!(
            "VERIFIED: {ORIGIN} 50 entries, newest checkpoint size 50 root {root} signed by [{}, {}]",
            log.hub.verifier_key().label(),
            log.kms.verifier_key().label()
        )),
        "{outcome:?}"
    );

    // An altered entry.
    let mut altered = log.entries.clone();
    altered[17] = b"{\"user\":\"alice\",\"action\":\"nothing\"}".to_vec();
    let path = write_export(&dir.path().join("altered.json"), altered, &log.notes);
    let outcome = log.verify(&["--log", &path], &[]);
    assert_rejected(&outcome, "modified-entry", "an index in 10..30");
    assert!(
        outcome
            .stdout
            .contains(&hex::encode(log.tree.root_at(30).unwrap())),
        "{outcome:?}"
    );

    // Two entries swapped.
    let mut reordered = log.entries.clone();
    reordered.swap(40, 41);
    let path = write_export(&dir.path().join("reordered.json"), reordered, &log.notes);
    assert_rejected(
        &log.verify(&["--log", &path], &[]),
        "modified-entry",
        "an index in 30..50",
    );

    // A forked checkpoint of size 30, validly signed by the control plane alone: a fork when only
    // its key is required, a missing co-signature when the KMS's is.
    let mut other = log.entries.clone();
    other[3] = b"{\"user\":\"mallory\"}".to_vec();
    let other_tree = MemoryTree::from_leaf_hashes(other.iter().map(|e| coffer_tlog::leaf_hash(e)));
    let forked = Checkpoint::new(ORIGIN, 30, other_tree.root_at(30).unwrap()).unwrap();
    let mut notes = log.notes.clone();
    notes.push(note(&forked, &[&log.hub]));
    let path = write_export(&dir.path().join("forked.json"), log.entries.clone(), &notes);
    assert_rejected(
        &log.verify(&["--log", &path], &["--require", ORIGIN]),
        "fork",
        "fork at size 30",
    );
    assert_rejected(
        &log.verify(&["--log", &path], &[]),
        "missing-signer",
        &format!("not signed by {ORIGIN}/kms+"),
    );

    // A checkpoint the auditor trusted before, of another history: the log forked.
    let previous = dir.path().join("previous-forked.note");
    std::fs::write(&previous, note(&forked, &[&log.hub, &log.kms])).unwrap();
    assert_rejected(
        &log.verify(
            &["--log", &good],
            &["--previous", previous.to_str().unwrap()],
        ),
        "fork",
        "previously trusted checkpoint #0 (size 30)",
    );

    // Truncated: 20 entries and the checkpoint of 10, but the auditor saw size 30 before.
    let previous = dir.path().join("previous-30.note");
    std::fs::write(&previous, &log.notes[1]).unwrap();
    let path = write_export(
        &dir.path().join("truncated.json"),
        log.entries[..20].to_vec(),
        &log.notes[..1],
    );
    assert_rejected(
        &log.verify(
            &["--log", &path],
            &["--previous", previous.to_str().unwrap()],
        ),
        "truncated",
        "at least 30 entries, got 20",
    );
    // The untampered log extends that checkpoint.
    let outcome = log.verify(
        &["--log", &good],
        &["--previous", previous.to_str().unwrap()],
    );
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert!(
        outcome.stdout.contains("1 previously trusted"),
        "{outcome:?}"
    );
}

#[test]
fn a_proof_bundle_verifies_and_a_modified_entry_is_rejected() {
    let log = log();
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<(u64, &[u8])> = [3u64, 42]
        .iter()
        .map(|&i| (i, log.entries[i as usize].as_slice()))
        .collect();
    let mut bundle = make_bundle(&log.tree, &log.notes[2], &entries, &[&log.notes[1]]).unwrap();
    let path = dir.path().join("bundle.json");
    std::fs::write(&path, bundle.to_json().unwrap()).unwrap();
    let previous = dir.path().join("previous-30.note");
    std::fs::write(&previous, &log.notes[1]).unwrap();
    let outcome = log.verify(
        &["--bundle", path.to_str().unwrap()],
        &["--previous", previous.to_str().unwrap()],
    );
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert!(
        outcome.stdout.starts_with(&format!(
            "VERIFIED: {ORIGIN} 2 entries, newest checkpoint size 50"
        )),
        "{outcome:?}"
    );

    bundle.entries[1].entry = b"{\"user\":\"alice\",\"action\":\"nothing\"}".to_vec();
    std::fs::write(&path, bundle.to_json().unwrap()).unwrap();
    assert_rejected(
        &log.verify(&["--bundle", path.to_str().unwrap()], &[]),
        "modified-entry",
        "index 42",
    );
}

#[test]
fn unusable_input_is_exit_2_with_one_error_line() {
    let log = log();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, b"{\"format\": ").unwrap();
    let good = write_export(
        &dir.path().join("good.json"),
        log.entries.clone(),
        &log.notes,
    );
    for (outcome, want) in [
        (
            log.verify(&["--log", missing.to_str().unwrap()], &[]),
            "cannot read",
        ),
        (
            log.verify(&["--log", broken.to_str().unwrap()], &[]),
            "not valid JSON",
        ),
        (
            log.verify(&["--log", &good], &["--require", "nobody"]),
            "--require nobody: no --trust key has that name",
        ),
        (
            run(&["audit", "verify", "--log", &good, "--trust", "hub+00+AAAA"]),
            "--trust",
        ),
    ] {
        assert_eq!(outcome.code, 2, "{outcome:?}");
        assert!(outcome.stdout.is_empty(), "{outcome:?}");
        assert_eq!(outcome.stderr.lines().count(), 1, "{outcome:?}");
        assert!(outcome.stderr.contains(want), "want {want:?}: {outcome:?}");
    }
}
