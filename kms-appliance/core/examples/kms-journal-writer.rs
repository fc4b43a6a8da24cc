//! Test helper for `tests/journal_crash.rs`: opens the KMS store at `STORE` (a file) sealed by
//! the simulated secure processor whose chain is in `SIM_DIR`, starts its durable audit journal
//! (carrying over what earlier processes left), then records decisions forever, flushing every
//! ten and playing the control plane every twenty-five (collecting a page, acknowledging the
//! page before). It prints, each line only once what it states is true:
//!
//! ```text
//! FLUSHED <journal> <seq>   an entry this process recorded is on disk
//! ACKED <journal> <seq>     an entry (named by its original position) is acknowledged in memory
//! DELETED <journal> <seq>   an acknowledged entry's deletion is on disk
//! ```
//!
//! The test kills it with SIGKILL at random points and checks what the next start carries over.
//! Usage: `kms-journal-writer STORE SIM_DIR MEASUREMENT_HEX`.

#[path = "support/platform.rs"]
mod support;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use coffer_kms::api::journal::{JournalEntry, JournalPosition};
use coffer_kms::api::AuditJournal;
use coffer_kms::authz::{AuditEvent, Operation, Outcome};
use coffer_kms::rollback::Unanchored;
use coffer_kms::store::Location;
use coffer_kms::{AuditSink, Kms};

fn main() -> anyhow::Result<()> {
    let (store, platform) = support::from_args("kms-journal-writer")?;
    let store = store.as_str();
    let mut kms = Kms::open(
        Location::File(PathBuf::from(store)),
        &platform,
        Box::new(Unanchored::accepting_rollback()),
    )
    .context("opening the store")?;
    let (journal, replay) = AuditJournal::durable(kms.journal_store()?, 1_000_000)?;
    let id = journal.id().to_owned();
    let origin = |e: &JournalEntry| {
        e.replayed_from.clone().unwrap_or(JournalPosition {
            journal: id.clone(),
            seq: e.seq,
        })
    };
    let mut out = std::io::stdout().lock();
    // Entries up to here are carried over, not recorded by this process.
    let replayed = replay.replayed as u64;
    let mut printed_through = replayed;
    // The control plane's side: the `after` it sends, the page it holds (acknowledged by its
    // next request), and what it acknowledged whose deletion is not yet on disk.
    let mut after = 0;
    let mut page: Vec<(u64, JournalPosition)> = Vec::new();
    let mut acknowledged: Vec<(u64, JournalPosition)> = Vec::new();
    for i in 0u64.. {
        journal.record(&decision(i))?;
        if i % 10 == 9 {
            let flushed = journal.flush()?;
            for seq in printed_through + 1..=flushed.through {
                writeln!(out, "FLUSHED {id} {seq}")?;
            }
            printed_through = printed_through.max(flushed.through);
            let (deleted, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut acknowledged)
                .into_iter()
                .partition(|(seq, _)| *seq <= flushed.deleted_through);
            acknowledged = waiting;
            for (_, p) in deleted {
                writeln!(out, "DELETED {} {}", p.journal, p.seq)?;
            }
        }
        if i % 25 == 24 {
            let next = journal.collect(Some(&id), after, 20)?;
            for (seq, p) in page.drain(..) {
                writeln!(out, "ACKED {} {}", p.journal, p.seq)?;
                acknowledged.push((seq, p));
            }
            page = next.events.iter().map(|e| (e.seq, origin(e))).collect();
            if let Some((seq, _)) = page.last() {
                after = *seq;
            }
        }
        out.flush()?;
    }
    Ok(())
}

fn decision(i: u64) -> AuditEvent {
    AuditEvent {
        time: 1,
        peer_role: None,
        peer_measurement: None,
        subject: Some("job:writer".into()),
        issuer: None,
        credential_id: None,
        operation: Operation::UnwrapDataKey,
        org: "acme".into(),
        workspace: None,
        key_id: None,
        outcome: Outcome::Allowed,
        reason: None,
        message: format!("decision {i}"),
    }
}
