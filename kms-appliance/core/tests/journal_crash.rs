//! The audit journal survives SIGKILL: a process recording decisions (and acknowledging some,
//! as the control plane would) is killed at random points, several times; after each kill, the
//! next start carries over every entry it had flushed and not seen acknowledged, in order, each
//! once, and none whose deletion it had flushed.
//!
//! As for `crash.rs`: SIGKILL loses nothing the kernel already has, so this shows the flush and
//! replay protocol (one transaction each, nothing reported flushed before it is), not power loss.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use coffer_kms::api::journal::{JournalEntry, MAX_PAGE};
use coffer_kms::api::AuditJournal;
use coffer_kms::rollback::Unanchored;
use coffer_kms::Kms;
use rand_core::RngCore;

/// An entry's identity across replays: its original journal and sequence number.
type Origin = (String, u64);

fn origin(entry: &JournalEntry, journal: &str) -> Origin {
    match &entry.replayed_from {
        Some(p) => (p.journal.clone(), p.seq),
        None => (journal.to_owned(), entry.seq),
    }
}

#[test]
fn every_flushed_unacknowledged_entry_is_carried_over_after_sigkill() {
    common::sim_root(); // make sure the chain the writer loads exists
    let writer = common::example("kms-journal-writer");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("kms.redb");
    let measurement = hex::encode(common::KMS_MEASUREMENT);

    // Everything the writers said, over all rounds: flushed entries in the order flushed.
    let mut flushed: Vec<Origin> = Vec::new();
    let mut acked: HashSet<Origin> = HashSet::new();
    let mut deleted: HashSet<Origin> = HashSet::new();
    let mut carried_total = 0;
    for (round, base_ms) in [5u64, 80, 150, 250, 400, 600].into_iter().enumerate() {
        let delay = Duration::from_millis(base_ms + rand_core::OsRng.next_u64() % 80);
        let lines = common::run_until_killed(
            &writer,
            &[
                store.as_os_str(),
                common::sim_root_dir().as_os_str(),
                measurement.as_ref(),
            ],
            delay,
            round,
        );
        for line in &lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [what, journal, seq] = words.as_slice() else {
                panic!("round {round}: unexpected line {line:?}");
            };
            let origin = (journal.to_string(), seq.parse::<u64>().unwrap());
            match *what {
                "FLUSHED" => flushed.push(origin),
                "ACKED" => {
                    acked.insert(origin);
                }
                "DELETED" => {
                    deleted.insert(origin);
                }
                _ => panic!("round {round}: unexpected line {line:?}"),
            }
        }

        // The next start: what it carries over, read without acknowledging anything durably
        // (this journal is dropped unflushed, so the next writer carries the same over again).
        let mut kms = Kms::open(
            &store,
            &common::platform(),
            Box::new(Unanchored::accepting_rollback()),
        )
        .unwrap_or_else(|e| panic!("round {round} (killed after {delay:?}): {e}"));
        let (journal, replay) = AuditJournal::durable(kms.journal_store().unwrap(), 1_000_000)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(
            (replay.tampered, replay.missing),
            (0, 0),
            "round {round}: {replay:?}"
        );
        let mut carried: Vec<Origin> = Vec::new();
        loop {
            let after = carried.len() as u64;
            let page = journal
                .collect(Some(journal.id()), after, MAX_PAGE)
                .unwrap();
            let done = page.events.len() < MAX_PAGE;
            carried.extend(page.events.iter().map(|e| origin(e, journal.id())));
            if done {
                break;
            }
        }
        assert_eq!(carried.len(), replay.replayed);

        let position: HashMap<&Origin, usize> =
            flushed.iter().enumerate().map(|(i, o)| (o, i)).collect();
        let mut seen = HashSet::new();
        let mut last_position = None;
        for o in &carried {
            assert!(seen.insert(o), "round {round}: {o:?} carried over twice");
            assert!(
                !deleted.contains(o),
                "round {round}: {o:?} came back after its deletion was flushed"
            );
            // In the order flushed (an entry flushed just before the kill was not printed).
            if let Some(&p) = position.get(o) {
                assert!(
                    last_position.is_none_or(|l| l < p),
                    "round {round}: {o:?} out of order"
                );
                last_position = Some(p);
            }
        }
        for o in flushed.iter().filter(|o| !acked.contains(*o)) {
            assert!(
                seen.contains(o),
                "round {round} (killed after {delay:?}): flushed entry {o:?} lost"
            );
        }
        eprintln!(
            "round {round}: killed after {delay:?}, {} lines; {} flushed, {} acknowledged, {} deleted so far; {} carried over",
            lines.len(),
            flushed.len(),
            acked.len(),
            deleted.len(),
            carried.len()
        );
        carried_total += carried.len();
    }
    // The test means something only if the writers got far enough to be interrupted mid-loop.
    assert!(
        flushed.len() >= 50,
        "only {} entries flushed",
        flushed.len()
    );
    assert!(!deleted.is_empty(), "no deletion was flushed");
    assert!(carried_total > 0);
}
