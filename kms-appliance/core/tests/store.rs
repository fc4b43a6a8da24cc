//! Tampering with the sealed store on disk, and opening it as another image: each is refused
//! with an error that names what failed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use coffer_kms::rollback::MemoryAnchor;
use coffer_kms::store::{SealingKey, Table};
use coffer_kms::{Kms, KmsError, OrgId, StoreError};
use redb::{Database, ReadableTable, TableDefinition};

fn def(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

/// A store with org acme (rotated once) and three data keys; returns their record keys.
fn populated(path: &Path, anchor: &MemoryAnchor) -> Vec<String> {
    let mut kms = Kms::open(path, &common::platform(), Box::new(anchor.clone())).unwrap();
    let acme = OrgId::new("acme").unwrap();
    kms.create_org_key(&acme).unwrap();
    let mut keys = Vec::new();
    for i in 0..3 {
        if i == 2 {
            kms.rotate_org_key(&acme).unwrap();
        }
        let (_, wrapped) = kms.generate_data_key(&acme).unwrap();
        keys.push(format!("acme/{}", wrapped.key_id));
    }
    keys
}

fn raw_get(path: &Path, table: &str, key: &str) -> Vec<u8> {
    let db = Database::open(path).unwrap();
    let read = db.begin_read().unwrap();
    let t = read.open_table(def(table)).unwrap();
    let value = t.get(key).unwrap().unwrap().value().to_vec();
    value
}

fn raw_put(path: &Path, table: &str, key: &str, value: &[u8]) {
    let db = Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(def(table))
        .unwrap()
        .insert(key, value)
        .unwrap();
    txn.commit().unwrap();
}

fn raw_remove(path: &Path, table: &str, key: &str) {
    let db = Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(def(table)).unwrap().remove(key).unwrap();
    txn.commit().unwrap();
}

fn reopen(path: &Path, anchor: &MemoryAnchor) -> Result<Kms, KmsError> {
    Kms::open(path, &common::platform(), Box::new(anchor.clone()))
}

fn tampered(result: Result<Kms, KmsError>) -> (String, String) {
    match result {
        Err(KmsError::Store(e @ StoreError::Tampered { .. })) => {
            let StoreError::Tampered { record, .. } = &e else {
                unreachable!()
            };
            (record.clone(), e.to_string())
        }
        other => panic!("expected a tampered record, got {other:?}"),
    }
}

#[test]
fn an_untouched_store_reopens_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let anchor = MemoryAnchor::new();
    let keys = populated(&path, &anchor);
    let kms = reopen(&path, &anchor).unwrap();
    let verified = kms.verify().unwrap();
    // root, org, 2 KEK versions, 3 data keys.
    assert_eq!(verified.records, 7);
    assert_eq!(keys.len(), 3);
}

#[test]
fn a_record_moved_to_another_key_fails_to_open_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let anchor = MemoryAnchor::new();
    let keys = populated(&path, &anchor);
    let first = raw_get(&path, "deks", &keys[0]);
    raw_put(&path, "deks", &keys[1], &first);
    let (record, message) = tampered(reopen(&path, &anchor));
    assert_eq!(record, format!("deks/{}", keys[1]));
    assert!(
        message.contains("tampered") && message.contains(&keys[1]),
        "{message}"
    );
}

#[test]
fn a_record_moved_to_another_table_fails_to_open_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let anchor = MemoryAnchor::new();
    populated(&path, &anchor);
    // The wrapped KEK record, put under the same key in the data-key table.
    let kek = raw_get(&path, "keks", "acme/0000000001");
    raw_put(&path, "deks", "acme/0000000001", &kek);
    let (record, _) = tampered(reopen(&path, &anchor));
    assert_eq!(record, "deks/acme/0000000001");
}

#[test]
fn an_altered_record_fails_to_open_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let anchor = MemoryAnchor::new();
    populated(&path, &anchor);
    for (table, key, at) in [
        ("orgs", "acme", 30),
        ("meta", "root", 5),
        ("orgs", "acme", 0),
    ] {
        let original = raw_get(&path, table, key);
        let mut altered = original.clone();
        altered[at] ^= 0x01;
        raw_put(&path, table, key, &altered);
        let (record, message) = tampered(reopen(&path, &anchor));
        assert_eq!(record, format!("{table}/{key}"));
        if at == 0 {
            assert!(message.contains("unknown record format"), "{message}");
        }
        raw_put(&path, table, key, &original);
    }
    // Put back, it opens again: the refusals were about those bytes.
    reopen(&path, &anchor).unwrap().verify().unwrap();
}

#[test]
fn a_deleted_record_or_an_older_sealed_copy_of_one_is_detected_by_the_state_digest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let anchor = MemoryAnchor::new();
    let keys = populated(&path, &anchor);

    // Deleted: every remaining record opens, but the set is not the committed one.
    let saved = raw_get(&path, "deks", &keys[0]);
    raw_remove(&path, "deks", &keys[0]);
    let err = reopen(&path, &anchor).unwrap_err();
    assert!(
        matches!(err, KmsError::Store(StoreError::DigestMismatch { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("deleted, added, or replaced"),
        "{err}"
    );
    raw_put(&path, "deks", &keys[0], &saved);

    // An older, authentic copy of the org record (before a rotation) put back in its place.
    let before = raw_get(&path, "orgs", "acme");
    let mut kms = reopen(&path, &anchor).unwrap();
    kms.rotate_org_key(&OrgId::new("acme").unwrap()).unwrap();
    drop(kms);
    raw_put(&path, "orgs", "acme", &before);
    let err = reopen(&path, &anchor).unwrap_err();
    assert!(
        matches!(err, KmsError::Store(StoreError::DigestMismatch { .. })),
        "{err}"
    );
}

#[test]
fn a_missing_state_record_is_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let anchor = MemoryAnchor::new();
    populated(&path, &anchor);
    raw_remove(&path, "meta", "state");
    let (record, _) = tampered(reopen(&path, &anchor));
    assert_eq!(record, "meta/state");
}

#[test]
fn a_store_sealed_by_another_measurement_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let anchor = MemoryAnchor::new();
    populated(&path, &anchor);
    let other_image = common::platform_measuring([0x77; 48]);
    let err = Kms::open(&path, &other_image, Box::new(anchor.clone())).unwrap_err();
    assert!(
        matches!(err, KmsError::Store(StoreError::SealedByAnotherKey { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("sealed by another KMS image"),
        "{err}"
    );

    // Forging the header's key id only changes the message: the records still do not open.
    let other_id = SealingKey::from_platform(&other_image).unwrap().id();
    raw_put(&path, "header", "sealing-key-id", &other_id);
    let (record, _) = tampered(Kms::open(&path, &other_image, Box::new(anchor.clone())));
    assert_eq!(record, "meta/state");

    // The kms image itself (with the header put back) still opens it.
    let ours = SealingKey::from_platform(&common::platform()).unwrap().id();
    raw_put(&path, "header", "sealing-key-id", &ours);
    reopen(&path, &anchor).unwrap();
}

#[test]
fn no_record_in_the_file_holds_a_key_or_org_name_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let anchor = MemoryAnchor::new();
    populated(&path, &anchor);
    let db = Database::open(&path).unwrap();
    let read = db.begin_read().unwrap();
    for table in Table::ALL {
        let t = read.open_table(def(table.name())).unwrap();
        for entry in t.iter().unwrap() {
            let (key, value) = entry.unwrap();
            let value = value.value();
            assert_eq!(
                value[0],
                coffer_kms::store::RECORD_FORMAT,
                "{}",
                key.value()
            );
            // Record plaintexts are JSON naming the org; sealed, no trace of it is left.
            assert!(
                !value.windows(4).any(|w| w == b"acme"),
                "{}/{} holds plaintext",
                table.name(),
                key.value()
            );
        }
    }
}
