//! The audit journal through the API: every decision is journaled before it runs, only the
//! control plane's collection request reads it, and collecting acknowledges what came before.
//! And on disk: what was flushed survives the process and comes back first in the next
//! journal, marked with where it was first recorded; what the host altered is reported there.
//! (`journal_crash.rs` kills a real process.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;

use coffer_kms::api::journal::{JournalEntry, Replay, MAX_PAGE};
use coffer_kms::api::AuditJournal;
use coffer_kms::authz::{Operation, Outcome, Reason, AUDIT_COLLECT_TYP};
use coffer_kms::rollback::{MemoryAnchor, Unanchored};
use coffer_kms::{AuditSink, Kms, KmsApi, KmsError};
use http_body_util::BodyExt;
use hyper::StatusCode;
use serde_json::{json, Value};

use common::issuer::{now, TestIssuer, CP};

fn collect_token(issuer: &TestIssuer, lifetime: u64) -> String {
    let now = now();
    issuer.sign(
        AUDIT_COLLECT_TYP,
        &json!({"iss": CP, "sub": "hub", "aud": "kms", "iat": now, "exp": now + lifetime,
                "jti": format!("ac-{now}-{lifetime}")}),
    )
}

async fn collect(api: &KmsApi, token: &str, after: u64) -> (StatusCode, Value) {
    let journal = api.journal().map(|j| j.id().to_owned());
    let response = api
        .collect_audit(token, journal.as_deref(), after, 100)
        .await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn only_the_control_plane_collects_the_journal_and_collecting_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let kms = Kms::open(
        &dir.path().join("kms.redb"),
        &common::platform(),
        Box::new(MemoryAnchor::new()),
    )
    .unwrap();
    let issuer = TestIssuer::generate("cp-1");
    let journal = Arc::new(AuditJournal::new(1000).unwrap());
    let api = KmsApi::with_journal(kms, issuer.authorizer(), journal.clone());

    // Refused collections: an identity token, a request living too long, another issuer's key.
    // Each refusal is itself journaled.
    let identity = issuer.identity("hub", "acme", "w1", &["admin"]);
    let (status, body) = collect(&api, &identity, 0).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "token_type_mismatch");
    let (status, body) = collect(&api, &collect_token(&issuer, 3600), 0).await;
    assert_eq!(
        body["error"]["code"], "lifetime_too_long",
        "{status} {body}"
    );
    let stranger = TestIssuer::generate("cp-1");
    let (_, body) = collect(&api, &collect_token(&stranger, 60), 0).await;
    assert_eq!(body["error"]["code"], "signature_invalid");
    assert_eq!(journal.pending(), 3);

    // The control plane collects the three refusals, in order; its own collection is not
    // journaled (it would grow the log forever).
    let (status, page) = collect(&api, &collect_token(&issuer, 60), 0).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["journal"], journal.id());
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(page["events"][0]["event"]["operation"], "collect_audit");
    assert_eq!(page["events"][0]["event"]["outcome"], "denied");
    assert_eq!(page["last_seq"], 3);
    // Asking after 3 acknowledges them: the journal is empty, and stays so.
    let (_, page) = collect(&api, &collect_token(&issuer, 60), 3).await;
    assert_eq!(page["events"], json!([]));
    assert_eq!(journal.pending(), 0);
}

fn open(path: &Path) -> Kms {
    Kms::open(
        path,
        &common::platform(),
        Box::new(Unanchored::accepting_rollback()),
    )
    .unwrap()
}

/// A KMS process's start: its store, and its durable journal with what it carried over.
fn start(path: &Path) -> (Kms, AuditJournal, Replay) {
    let mut kms = open(path);
    let (journal, replay) = AuditJournal::durable(kms.journal_store().unwrap(), 1000).unwrap();
    (kms, journal, replay)
}

/// Every entry the journal holds, without acknowledging any (after the first page, each
/// request acknowledges the page before; callers drop the journal unflushed).
fn everything(journal: &AuditJournal) -> Vec<JournalEntry> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, |e: &JournalEntry| e.seq);
        let page = journal
            .collect(Some(journal.id()), after, MAX_PAGE)
            .unwrap();
        let done = page.events.len() < MAX_PAGE;
        all.extend(page.events);
        if done {
            return all;
        }
    }
}

/// `(message or reason, original journal, original seq)` of each entry.
fn summary(entries: &[JournalEntry]) -> Vec<(String, Option<(String, u64)>)> {
    entries
        .iter()
        .map(|e| {
            (
                e.event
                    .reason
                    .map_or_else(|| e.event.message.clone(), |r| r.code().to_owned()),
                e.replayed_from.as_ref().map(|p| (p.journal.clone(), p.seq)),
            )
        })
        .collect()
}

#[test]
fn flushed_entries_outlive_the_process_and_come_back_first_in_the_next_journal_marked_with_their_origin(
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let (kms, a, replay) = start(&path);
    assert_eq!(replay, Replay::default());
    let version = kms.state_version();
    for n in 1..=5 {
        a.record(&common::decision(&format!("a{n}"))).unwrap();
    }
    assert_eq!(a.flush().unwrap().written, 5);
    // The control plane acknowledges 1 and 2; the next flush deletes them from the disk.
    let a_id = a.id().to_owned();
    a.collect(Some(&a_id), 2, 10).unwrap();
    let flushed = a.flush().unwrap();
    assert_eq!((flushed.written, flushed.deleted_through), (0, 2));
    // Recorded after the last flush: lost with the process (the window a crash can lose).
    a.record(&common::decision("a6")).unwrap();
    // The journal is not state: no new version, nothing for the digest to miss.
    assert_eq!(kms.state_version(), version);
    assert_eq!(kms.verify().unwrap().version, version);
    drop((kms, a)); // the crash

    let (kms, b, replay) = start(&path);
    assert_ne!(b.id(), a_id);
    assert_eq!(replay.previous, std::slice::from_ref(&a_id));
    assert_eq!(
        (replay.replayed, replay.tampered, replay.missing),
        (3, 0, 0)
    );
    let from_a = |seq| Some((a_id.clone(), seq));
    let entries = everything(&b);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3],
        "new sequence numbers in the new journal"
    );
    assert_eq!(
        summary(&entries),
        [
            ("a3".to_owned(), from_a(3)),
            ("a4".to_owned(), from_a(4)),
            ("a5".to_owned(), from_a(5)),
        ]
    );
    // Recording goes on after them.
    b.record(&common::decision("b4")).unwrap();
    assert_eq!(b.flush().unwrap().through, 4);
    let b_id = b.id().to_owned();
    drop((kms, b)); // crashes again before anything is collected

    // A second replay keeps each entry's original position.
    let (_kms, c, replay) = start(&path);
    assert_eq!(replay.previous, std::slice::from_ref(&b_id));
    assert_eq!(
        summary(&everything(&c)),
        [
            ("a3".to_owned(), from_a(3)),
            ("a4".to_owned(), from_a(4)),
            ("a5".to_owned(), from_a(5)),
            ("b4".to_owned(), Some((b_id, 4))),
        ]
    );
}

#[test]
fn one_journal_per_process_and_only_on_an_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut kms = open(&dir.path().join("kms.redb"));
    let store = kms.journal_store().unwrap();
    assert!(matches!(kms.journal_store(), Err(KmsError::JournalTaken)));
    // An in-memory journal has nothing to flush and says so.
    let memory = AuditJournal::new(10).unwrap();
    assert!(!memory.is_durable());
    assert_eq!(memory.flush().unwrap().through, 0);
    let (durable, _) = AuditJournal::durable(store, 10).unwrap();
    assert!(durable.is_durable());
}

/// The journal's table in the redb file, for the host's edits.
const JOURNAL_TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("journal");

fn record_key(journal: &str, seq: u64) -> String {
    format!("{journal}/{seq:020}")
}

fn sealed(table: &redb::Table<&str, &[u8]>, key: &str) -> Vec<u8> {
    use redb::ReadableTable;
    table.get(key).unwrap().unwrap().value().to_vec()
}

#[test]
fn records_the_host_altered_moved_or_deleted_are_reported_in_the_next_journal_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let (kms, a, _) = start(&path);
    for n in 1..=7 {
        a.record(&common::decision(&format!("a{n}"))).unwrap();
    }
    a.flush().unwrap();
    let a_id = a.id().to_owned();
    drop((kms, a));

    // The host edits the file: flips a bit of 2, deletes 3, swaps 4 and 5, and adds a record
    // under a key of its own.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(JOURNAL_TABLE).unwrap();
            let mut two = sealed(&t, &record_key(&a_id, 2));
            let last = two.len() - 1;
            two[last] ^= 1;
            let (four, five) = (
                sealed(&t, &record_key(&a_id, 4)),
                sealed(&t, &record_key(&a_id, 5)),
            );
            t.insert(record_key(&a_id, 2).as_str(), two.as_slice())
                .unwrap();
            t.remove(record_key(&a_id, 3).as_str()).unwrap();
            t.insert(record_key(&a_id, 4).as_str(), five.as_slice())
                .unwrap();
            t.insert(record_key(&a_id, 5).as_str(), four.as_slice())
                .unwrap();
            t.insert("forged", [1u8; 64].as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    let (kms, b, replay) = start(&path);
    assert_eq!(
        (replay.replayed, replay.tampered, replay.missing),
        (8, 4, 1),
        "{replay:?}"
    );
    let entries = everything(&b);
    let from_a = |seq| Some((a_id.clone(), seq));
    assert_eq!(
        summary(&entries),
        [
            ("a1".to_owned(), from_a(1)),
            ("journal_entry_tampered".to_owned(), None),
            ("journal_entries_missing".to_owned(), None),
            ("journal_entry_tampered".to_owned(), None),
            ("journal_entry_tampered".to_owned(), None),
            ("a6".to_owned(), from_a(6)),
            ("a7".to_owned(), from_a(7)),
            ("journal_entry_tampered".to_owned(), None),
        ]
    );
    for marker in entries.iter().filter(|e| e.event.reason.is_some()) {
        assert_eq!(marker.event.operation, Operation::ReplayJournal);
        assert_eq!(marker.event.outcome, Outcome::Denied);
    }
    assert_eq!(
        entries[1].event.reason,
        Some(Reason::JournalEntryTampered),
        "{}",
        entries[1].event.message
    );
    assert!(
        entries[1]
            .event
            .message
            .contains(&format!("{a_id}: entry 2"))
            && entries[1].event.message.contains("does not authenticate"),
        "{}",
        entries[1].event.message
    );
    assert!(
        entries[2]
            .event
            .message
            .contains(&format!("{a_id}: entries 3 to 3 (1)")),
        "{}",
        entries[2].event.message
    );
    assert!(
        entries[7].event.message.contains("journal/forged"),
        "{}",
        entries[7].event.message
    );
    let b_id = b.id().to_owned();
    drop((kms, b));

    // The bad records went with the replay; the reports are now entries like any other.
    let (_kms, c, replay) = start(&path);
    assert_eq!((replay.replayed, replay.tampered), (8, 0));
    let entries = everything(&c);
    assert_eq!(
        entries[1]
            .replayed_from
            .as_ref()
            .map(|p| (p.journal.as_str(), p.seq)),
        Some((b_id.as_str(), 2))
    );
    assert_eq!(entries[1].event.reason, Some(Reason::JournalEntryTampered));
}
