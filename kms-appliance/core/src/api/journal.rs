//! The audit journal: the KMS's decisions, numbered, held until the control plane collects
//! them into its audit log, and kept on the KMS's own disk so that a crash loses at most the
//! last [`FLUSH_INTERVAL`] of them.
//!
//! Every decision the API makes is [recorded](AuditSink::record) here (and on the console)
//! *before* the request runs. The control plane collects with a [`AUDIT_COLLECT_TYP`] token,
//! asking for the events after the last sequence number it has durably appended; asking
//! acknowledges (and drops) everything up to that number, so a control plane that crashes
//! after collecting simply asks again. The journal holds at most its capacity of uncollected
//! events: when full, recording fails and the API refuses the request (a key is never released
//! without its decision being held for the log).
//!
//! **Durability ([`AuditJournal::durable`]).** Recording stays an in-memory append under a
//! mutex (no disk write on the request path). A flusher ([`AuditJournal::flusher`], every
//! [`FLUSH_INTERVAL`]) writes the entries recorded since its last run, and deletes those the
//! control plane acknowledged since, in **one** durable transaction of the KMS's own embedded
//! store ([`crate::store::journal`]: a table outside the sealed state, each entry sealed under
//! the store's key with associated data binding the journal id and sequence number). A crash
//! (or SIGKILL, or power loss) therefore loses at most the decisions of the last interval, plus
//! the one flush in flight. If flushing fails, or has not run for [`FLUSH_STALL_LIMIT`],
//! recording fails and the API refuses requests until a flush succeeds: the promise is kept by
//! refusing, not by hoping. In a replicated deployment the journal lives in the replica's own
//! local store ([`crate::Kms::journal_store`]): journals are per process.
//!
//! **Replay at start.** A journal's id is random and new at every start, so the control plane
//! sees a restart. The entries a previous process left uncollected are carried over as the
//! first entries of the new journal, with new sequence numbers, each marked
//! [`replayed_from`](JournalEntry::replayed_from) its *original* journal and sequence number
//! (kept through several restarts), and removed from the old journal in the same durable
//! transaction: a crash during the replay leaves either the old journal or the new one. The
//! control plane may have appended some of them just before the crash without the KMS seeing
//! the acknowledgement; it skips a replayed entry whose original position it already holds.
//!
//! **What the disk cannot do to the journal.** The host cannot forge, alter, reorder or move an
//! entry: each opens only as its own journal's entry at its own sequence number. A record that
//! does not open is **reported, not dropped**: the replay puts a denied
//! [`ReplayJournal`](Operation::ReplayJournal) entry with reason
//! [`JournalEntryTampered`](crate::authz::Reason::JournalEntryTampered) in its place (naming the
//! record), logs it as an error, and removes the bad record only in the transaction that writes
//! that entry; sequence numbers missing inside an old journal's range become one
//! [`JournalEntriesMissing`](crate::authz::Reason::JournalEntriesMissing) entry. The KMS still
//! starts: the keys' state is checked apart and intact, and refusing to start would only add a
//! denial of service the host can cause anyway, while the marker puts the loss in the audit log
//! where people look. What the host *can* do is delete records or roll the file back (the
//! journal is outside the rollback defence): decisions not yet collected are then lost, and
//! only deletions inside a journal's range show. If the journal cannot be read or written at
//! all, the KMS does not start.
//!
//! Two kinds of decision are not journaled (only logged): an *allowed* checkpoint co-signature
//! (the signature in the checkpoint is its record) and an *allowed* collection (collecting is
//! not a key decision). Journaling either would grow the log with every checkpoint or
//! collection and call for the next one forever. Denials of both are journaled.
//!
//! [`AuditJournal::new`] keeps the journal in memory only, for tests and tools without a store:
//! everything not collected is lost with the process.
//!
//! [`AUDIT_COLLECT_TYP`]: crate::authz::AUDIT_COLLECT_TYP

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::audit::{AuditError, AuditSink};
use crate::authz::{AuditEvent, Operation, Outcome, Reason};
use crate::store::journal::{JournalRecord, JournalStore, JournalWrite};

/// `POST` on the KMS's attestation endpoint: `{"token", "journal", "after", "limit"}` from the
/// control plane; the [`JournalPage`] after `after`.
pub const AUDIT_EVENTS_PATH: &str = "/.well-known/coffer/audit/events";

/// Uncollected events a journal holds by default before the API refuses requests.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The most events one collection returns.
pub const MAX_PAGE: usize = 1000;

/// How often the flusher commits a durable journal: the most recent decisions a crash can lose
/// (plus one flush's duration). Each flush is one fsynced transaction, whatever it carries.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// How long recorded entries may wait for a flush before recording is refused (the flusher
/// stopped or is stuck on the disk).
pub const FLUSH_STALL_LIMIT: Duration = Duration::from_secs(5);

/// Where an entry was first recorded: a journal and a sequence number in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalPosition {
    /// The journal's id.
    pub journal: String,
    /// The entry's sequence number in it.
    pub seq: u64,
}

/// One journaled event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalEntry {
    /// Its sequence number in this journal (from 1).
    pub seq: u64,
    /// The decision.
    pub event: AuditEvent,
    /// For an entry a previous process recorded and this one carried over at start: where it
    /// was first recorded (its original journal and sequence number, unchanged by later
    /// replays). Absent for entries recorded by this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_from: Option<JournalPosition>,
}

/// What one collection returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalPage {
    /// The journal's id (changes at every start of the KMS).
    pub journal: String,
    /// Events after the `after` asked for, oldest first, at most the limit.
    pub events: Vec<JournalEntry>,
    /// The sequence number of the last event recorded (0: none yet).
    pub last_seq: u64,
}

/// What [`AuditJournal::durable`] found of previous processes' journals and carried over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// The previous journals found in the store (normally one, or none).
    pub previous: Vec<String>,
    /// Entries carried over into the new journal (markers included).
    pub replayed: usize,
    /// Records that did not authenticate: each became a marker entry.
    pub tampered: usize,
    /// Sequence numbers missing inside previous journals: each gap became a marker entry.
    pub missing: u64,
}

/// What one [`AuditJournal::flush`] made durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Entries written by this flush.
    pub written: usize,
    /// Every entry up to this sequence number is on disk (or was acknowledged first).
    pub through: u64,
    /// Every acknowledged entry up to this sequence number is deleted from the disk.
    pub deleted_through: u64,
}

#[derive(Debug, Default)]
struct Inner {
    last_seq: u64,
    /// Uncollected events, oldest first.
    events: VecDeque<JournalEntry>,
    /// The highest sequence number the control plane acknowledged.
    acknowledged: u64,
    /// Durable journals: the highest sequence number written (or acknowledged before it was).
    flushed: u64,
    /// Durable journals: acknowledged entries are deleted from the disk up to this number.
    deleted: u64,
    /// Durable journals: since when entries past `flushed` wait (`None`: nothing waits).
    waiting_since: Option<Instant>,
    /// Durable journals: why the last flush failed (recording is refused until one succeeds).
    failure: Option<String>,
}

#[derive(Debug)]
struct Durable {
    store: JournalStore,
    /// Held across a whole flush, so flushes never interleave their bookkeeping.
    flushing: Mutex<()>,
}

/// The journal (see the module docs).
#[derive(Debug)]
pub struct AuditJournal {
    id: String,
    capacity: usize,
    inner: Mutex<Inner>,
    durable: Option<Durable>,
}

fn new_id() -> Result<String, AuditError> {
    let mut id = [0u8; 16];
    rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut id)
        .map_err(|e| AuditError(format!("no randomness for the journal id: {e}")))?;
    Ok(hex::encode(id))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The entry that stands for records a replay could not carry over (see the module docs).
fn marker(reason: Reason, message: String) -> AuditEvent {
    AuditEvent {
        time: now_secs(),
        peer_role: None,
        peer_measurement: None,
        subject: None,
        issuer: None,
        credential_id: None,
        operation: Operation::ReplayJournal,
        org: "*".into(),
        workspace: None,
        key_id: None,
        outcome: Outcome::Denied,
        reason: Some(reason),
        message,
    }
}

/// One record of a previous journal, as the replay sees it.
enum Found {
    Entry(Box<JournalEntry>),
    Tampered(String),
}

/// Opens and decodes a record of journal `journal` at `seq`; anything that does not hold an
/// entry of that journal at that number is `Tampered`, with why.
fn decode(record: JournalRecord, seq: u64) -> Found {
    let plaintext = match record.plaintext {
        Ok(plaintext) => plaintext,
        Err(e) => return Found::Tampered(e.to_string()),
    };
    match serde_json::from_slice::<JournalEntry>(&plaintext) {
        Ok(entry) if entry.seq == seq => Found::Entry(Box::new(entry)),
        Ok(entry) => Found::Tampered(format!(
            "record journal/{}: holds sequence number {}, expected {seq}",
            record.key, entry.seq
        )),
        Err(e) => Found::Tampered(format!(
            "record journal/{}: authentic but not a journal entry: {e}",
            record.key
        )),
    }
}

impl AuditJournal {
    /// An in-memory journal with a fresh random id, holding at most `capacity` uncollected
    /// events; everything uncollected is lost with the process (tests and tools without a
    /// store). The KMS appliance uses [`AuditJournal::durable`].
    pub fn new(capacity: usize) -> Result<Self, AuditError> {
        Ok(Self {
            id: new_id()?,
            capacity,
            inner: Mutex::new(Inner::default()),
            durable: None,
        })
    }

    /// A durable journal in `store` ([`crate::Kms::journal_store`]) with a fresh random id,
    /// holding at most `capacity` uncollected events. The entries previous processes left in
    /// the store are carried over first, in one durable transaction (see the module docs);
    /// what was found is returned. Blocking I/O. Fails if the store cannot be read or written:
    /// the KMS must not serve without its journal.
    pub fn durable(store: JournalStore, capacity: usize) -> Result<(Self, Replay), AuditError> {
        let id = new_id()?;
        let records = store
            .read()
            .map_err(|e| AuditError(format!("reading the audit journal: {e}")))?;
        let (events, replay, mut write) = carry_over(&id, records)?;
        for entry in &events {
            let plain = serde_json::to_vec(entry)
                .map_err(|e| AuditError(format!("cannot encode a journal entry: {e}")))?;
            write.put(&id, entry.seq, plain);
        }
        store.commit(write).map_err(|e| {
            AuditError(format!(
                "carrying the previous audit journal over into the new one: {e}"
            ))
        })?;
        let last_seq = events.last().map_or(0, |e| e.seq);
        let journal = Self {
            id,
            capacity,
            inner: Mutex::new(Inner {
                last_seq,
                events: events.into(),
                flushed: last_seq,
                ..Inner::default()
            }),
            durable: Some(Durable {
                store,
                flushing: Mutex::new(()),
            }),
        };
        Ok((journal, replay))
    }

    /// The journal's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the journal is kept on disk ([`AuditJournal::durable`]).
    pub fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, AuditError> {
        self.inner
            .lock()
            .map_err(|_| AuditError("the journal's lock is poisoned".into()))
    }

    /// Acknowledges every event up to `after` (dropping them; a durable journal deletes them
    /// from the disk with its next flush) if `journal` names this journal, and returns up to
    /// `limit` (at most [`MAX_PAGE`]) events after it. An `after` counted in another journal
    /// (the one before a restart) acknowledges nothing: the page starts at the oldest event
    /// held.
    pub fn collect(
        &self,
        journal: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<JournalPage, AuditError> {
        let after = if journal == Some(self.id.as_str()) {
            after
        } else {
            0
        };
        let mut inner = self.lock()?;
        while inner.events.front().is_some_and(|e| e.seq <= after) {
            inner.events.pop_front();
        }
        // Never past what was recorded: a later entry must not be deleted unseen.
        inner.acknowledged = inner.acknowledged.max(after.min(inner.last_seq));
        let events = inner
            .events
            .iter()
            .take(limit.min(MAX_PAGE))
            .cloned()
            .collect();
        Ok(JournalPage {
            journal: self.id.clone(),
            events,
            last_seq: inner.last_seq,
        })
    }

    /// Uncollected events.
    pub fn pending(&self) -> usize {
        self.inner.lock().map(|i| i.events.len()).unwrap_or(0)
    }

    /// Writes the entries recorded since the last flush and deletes those acknowledged since,
    /// in one durable transaction. Blocking I/O (the flusher runs it on the blocking pool);
    /// flushes never overlap. An in-memory journal has nothing to flush. On failure recording
    /// is refused until a flush succeeds.
    pub fn flush(&self) -> Result<Flushed, AuditError> {
        let Some(durable) = &self.durable else {
            return Ok(Flushed::default());
        };
        let _flushing = durable
            .flushing
            .lock()
            .map_err(|_| AuditError("the journal's flush lock is poisoned".into()))?;
        let started = Instant::now();
        let (entries, through, acknowledged, deleted) = {
            let inner = self.lock()?;
            let entries: Vec<JournalEntry> = inner
                .events
                .iter()
                .filter(|e| e.seq > inner.flushed)
                .cloned()
                .collect();
            (entries, inner.last_seq, inner.acknowledged, inner.deleted)
        };
        // Sealing and the fsync happen outside the journal's lock: recording goes on meanwhile.
        let mut write = JournalWrite::new();
        for entry in &entries {
            let plain = serde_json::to_vec(entry)
                .map_err(|e| AuditError(format!("cannot encode a journal entry: {e}")))?;
            write.put(&self.id, entry.seq, plain);
        }
        write.remove_range(&self.id, deleted + 1, acknowledged);
        let result = durable.store.commit(write);
        let mut inner = self.lock()?;
        match result {
            Ok(()) => {
                inner.flushed = inner.flushed.max(through);
                inner.deleted = inner.deleted.max(acknowledged);
                inner.failure = None;
                inner.waiting_since = (inner.last_seq > inner.flushed).then_some(started);
                Ok(Flushed {
                    written: entries.len(),
                    through: inner.flushed,
                    deleted_through: inner.deleted,
                })
            }
            Err(e) => {
                let message = format!("writing the audit journal: {e}");
                inner.failure = Some(message.clone());
                Err(AuditError(message))
            }
        }
    }

    /// The flusher of a durable journal: every `interval` ([`FLUSH_INTERVAL`]) a
    /// [`flush`](AuditJournal::flush) on the blocking pool. Spawn it on the runtime; it ends
    /// when the journal is dropped. Failures are logged (once per run of failures) and retried
    /// at the next tick; meanwhile recording is refused.
    pub fn flusher(
        self: &Arc<Self>,
        interval: Duration,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let journal: Weak<Self> = Arc::downgrade(self);
        async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                ticks.tick().await;
                let Some(journal) = journal.upgrade() else {
                    return;
                };
                match tokio::task::spawn_blocking(move || journal.flush()).await {
                    Ok(Ok(_)) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("audit journal: flushing again; recording resumes");
                        }
                    }
                    Ok(Err(e)) => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::error!(error = %e, "audit journal: flush failed; refusing requests until it succeeds");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "audit journal: flush task failed"),
                }
            }
        }
    }
}

/// The replay (see the module docs): the previous journals' records, in order, as the first
/// entries of journal `id` (with markers for what cannot be carried), and the removal of every
/// old record. Several previous journals (which one process at a time never leaves) are taken
/// oldest first, by the time of their first authentic event.
fn carry_over(
    id: &str,
    records: Vec<JournalRecord>,
) -> Result<(Vec<JournalEntry>, Replay, JournalWrite), AuditError> {
    let mut write = JournalWrite::new();
    let mut journals: BTreeMap<String, Vec<(u64, Found)>> = BTreeMap::new();
    let mut unplaced = Vec::new();
    for record in records {
        write.remove(record.key.clone());
        match record.position.clone() {
            Some((journal, _)) if journal == id => {
                // A fresh random id is never in the store already.
                return Err(AuditError(format!(
                    "the audit journal id {id} is already in the store"
                )));
            }
            Some((journal, seq)) => {
                let found = decode(record, seq);
                journals.entry(journal).or_default().push((seq, found));
            }
            None => unplaced.push(match record.plaintext {
                Err(e) => e.to_string(),
                Ok(_) => format!("record journal/{}: not a journal record key", record.key),
            }),
        }
    }
    let mut order: Vec<(u64, String)> = journals
        .iter()
        .map(|(journal, found)| {
            let first = found.iter().find_map(|(_, f)| match f {
                Found::Entry(e) => Some(e.event.time),
                Found::Tampered(_) => None,
            });
            // Journals with no authentic entry go last.
            (first.unwrap_or(u64::MAX), journal.clone())
        })
        .collect();
    order.sort();
    let mut replay = Replay::default();
    let mut events = Vec::new();
    let mut push = |event: AuditEvent, replayed_from: Option<JournalPosition>| {
        let seq = events.len() as u64 + 1;
        events.push(JournalEntry {
            seq,
            event,
            replayed_from,
        });
    };
    for (_, journal) in order {
        let found = journals.remove(&journal).unwrap_or_default();
        let mut previous: Option<u64> = None;
        for (seq, found) in found {
            if let Some(gap_from) = previous.and_then(|p| p.checked_add(1)) {
                if seq > gap_from {
                    let count = seq - gap_from;
                    tracing::error!(
                        journal = %journal,
                        from = gap_from,
                        through = seq - 1,
                        "audit journal: entries of the previous process are missing on disk (deleted); their decisions are lost"
                    );
                    replay.missing += count;
                    push(
                        marker(
                            Reason::JournalEntriesMissing,
                            format!(
                                "audit journal {journal}: entries {gap_from} to {} ({count}) were missing on disk when the KMS restarted: deleted, their decisions are lost",
                                seq - 1
                            ),
                        ),
                        None,
                    );
                }
            }
            previous = Some(seq);
            match found {
                Found::Entry(entry) => {
                    let origin = entry.replayed_from.unwrap_or(JournalPosition {
                        journal: journal.clone(),
                        seq,
                    });
                    push(entry.event, Some(origin));
                }
                Found::Tampered(reason) => {
                    tracing::error!(journal = %journal, seq, %reason, "audit journal: a record of the previous process is tampered; its decision is lost");
                    replay.tampered += 1;
                    push(
                        marker(
                            Reason::JournalEntryTampered,
                            format!(
                                "audit journal {journal}: entry {seq} was not carried over at restart, its decision is lost: {reason}"
                            ),
                        ),
                        None,
                    );
                }
            }
        }
        replay.previous.push(journal);
    }
    for reason in unplaced {
        tracing::error!(%reason, "audit journal: a record of the previous process is tampered; its decision is lost");
        replay.tampered += 1;
        push(
            marker(
                Reason::JournalEntryTampered,
                format!("audit journal: a record was not carried over at restart, its decision is lost: {reason}"),
            ),
            None,
        );
    }
    replay.replayed = events.len();
    Ok((events, replay, write))
}

/// Whether `event` is journaled (see the module docs).
fn journaled(event: &AuditEvent) -> bool {
    !(event.outcome == Outcome::Allowed
        && matches!(
            event.operation,
            Operation::SignCheckpoint | Operation::CollectAudit
        ))
}

impl AuditSink for AuditJournal {
    fn record(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let line = serde_json::to_string(event)
            .map_err(|e| AuditError(format!("cannot encode the event: {e}")))?;
        if journaled(event) {
            let mut inner = self.lock()?;
            if inner.events.len() >= self.capacity {
                return Err(AuditError(format!(
                    "audit journal full: {} decisions not collected by the control plane; \
                     refusing requests until it collects",
                    inner.events.len()
                )));
            }
            if self.durable.is_some() {
                if let Some(failure) = &inner.failure {
                    return Err(AuditError(format!(
                        "audit journal not durable: {failure}; refusing requests until a flush succeeds"
                    )));
                }
                let waited = inner.waiting_since.map(|since| since.elapsed());
                if let Some(waited) = waited.filter(|w| *w > FLUSH_STALL_LIMIT) {
                    return Err(AuditError(format!(
                        "audit journal not flushed for {waited:?} (limit {FLUSH_STALL_LIMIT:?}): \
                         refusing requests until it is"
                    )));
                }
                if inner.waiting_since.is_none() {
                    inner.waiting_since = Some(Instant::now());
                }
            }
            inner.last_seq += 1;
            let seq = inner.last_seq;
            inner.events.push_back(JournalEntry {
                seq,
                event: event.clone(),
                replayed_from: None,
            });
        }
        tracing::info!("audit {line}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(operation: Operation, outcome: Outcome) -> AuditEvent {
        AuditEvent {
            time: 1,
            peer_role: None,
            peer_measurement: None,
            subject: None,
            issuer: None,
            credential_id: None,
            operation,
            org: "acme".into(),
            workspace: None,
            key_id: None,
            outcome,
            reason: None,
            message: String::new(),
        }
    }

    #[test]
    fn collecting_acknowledges_what_came_before_and_a_full_journal_refuses() {
        let j = AuditJournal::new(3).unwrap();
        for _ in 0..3 {
            j.record(&event(Operation::UnwrapDataKey, Outcome::Allowed))
                .unwrap();
        }
        let err = j
            .record(&event(Operation::UnwrapDataKey, Outcome::Allowed))
            .unwrap_err();
        assert!(err.0.contains("audit journal full"), "{err}");
        let id = j.id().to_owned();
        let page = j.collect(Some(&id), 0, 2).unwrap();
        assert_eq!(
            page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(page.last_seq, 3);
        // Asking again from 0 returns the same: nothing was acknowledged.
        assert_eq!(j.collect(Some(&id), 0, 10).unwrap().events.len(), 3);
        // An `after` of another journal acknowledges nothing.
        assert_eq!(j.collect(Some("other"), 3, 10).unwrap().events.len(), 3);
        assert_eq!(j.collect(None, 3, 10).unwrap().events.len(), 3);
        // Acknowledging 2 frees room.
        let page = j.collect(Some(&id), 2, 10).unwrap();
        assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
        j.record(&event(Operation::UnwrapDataKey, Outcome::Denied))
            .unwrap();
        assert_eq!(j.collect(Some(&id), 3, 10).unwrap().events[0].seq, 4);
        assert_eq!(j.pending(), 1);
    }

    #[test]
    fn allowed_co_signatures_and_collections_are_not_journaled_but_their_denials_are() {
        let j = AuditJournal::new(10).unwrap();
        j.record(&event(Operation::SignCheckpoint, Outcome::Allowed))
            .unwrap();
        j.record(&event(Operation::CollectAudit, Outcome::Allowed))
            .unwrap();
        assert_eq!(j.pending(), 0);
        j.record(&event(Operation::SignCheckpoint, Outcome::Denied))
            .unwrap();
        j.record(&event(Operation::CollectAudit, Outcome::Denied))
            .unwrap();
        assert_eq!(j.pending(), 2);
    }

    #[test]
    fn every_start_is_a_new_journal() {
        assert_ne!(
            AuditJournal::new(1).unwrap().id(),
            AuditJournal::new(1).unwrap().id()
        );
    }

    #[test]
    fn an_acknowledgement_past_the_last_entry_acknowledges_only_what_was_recorded() {
        let j = AuditJournal::new(10).unwrap();
        j.record(&event(Operation::UnwrapDataKey, Outcome::Allowed))
            .unwrap();
        let id = j.id().to_owned();
        j.collect(Some(&id), 99, 10).unwrap();
        assert_eq!(j.lock().unwrap().acknowledged, 1);
    }

    #[test]
    fn entries_are_read_back_without_the_replay_mark_when_they_have_none() {
        let entry = JournalEntry {
            seq: 7,
            event: event(Operation::UnwrapDataKey, Outcome::Allowed),
            replayed_from: None,
        };
        let json = serde_json::to_value(&entry).unwrap();
        assert!(json.get("replayed_from").is_none(), "{json}");
        let back: JournalEntry = serde_json::from_value(json).unwrap();
        assert_eq!(back, entry);
    }

    fn record_for(journal: &str, seq: u64, plain: Result<Vec<u8>, &str>) -> JournalRecord {
        JournalRecord {
            key: crate::store::journal::record_key(journal, seq),
            position: Some((journal.to_owned(), seq)),
            plaintext: plain.map(zeroize::Zeroizing::new).map_err(|reason| {
                crate::store::StoreError::Tampered {
                    record: format!("journal/{journal}/{seq}"),
                    reason: reason.into(),
                }
            }),
        }
    }

    fn stored(seq: u64, message: &str, replayed_from: Option<JournalPosition>) -> Vec<u8> {
        let mut e = event(Operation::UnwrapDataKey, Outcome::Allowed);
        e.message = message.into();
        serde_json::to_vec(&JournalEntry {
            seq,
            event: e,
            replayed_from,
        })
        .unwrap()
    }

    #[test]
    fn a_replay_keeps_the_order_marks_origins_and_stands_in_for_what_it_cannot_carry() {
        let first = JournalPosition {
            journal: "first".into(),
            seq: 3,
        };
        let records = vec![
            record_for("old", 4, Ok(stored(4, "a", Some(first.clone())))),
            record_for("old", 5, Ok(stored(5, "b", None))),
            record_for("old", 6, Err("does not authenticate")),
            // 7 and 8 deleted.
            record_for("old", 9, Ok(stored(9, "c", None))),
            // Authentic, but holding another sequence number than its place.
            record_for("old", 10, Ok(stored(11, "d", None))),
        ];
        let (events, replay, write) = carry_over("new", records).unwrap();
        // (seq, message or reason, original position)
        type Line = (u64, String, Option<(String, u64)>);
        let summary: Vec<Line> = events
            .iter()
            .map(|e| {
                (
                    e.seq,
                    e.event
                        .reason
                        .map_or(e.event.message.clone(), |r| r.to_string()),
                    e.replayed_from.as_ref().map(|p| (p.journal.clone(), p.seq)),
                )
            })
            .collect();
        let origin = |j: &str, s| Some((j.to_owned(), s));
        assert_eq!(
            summary,
            [
                (1, "a".to_owned(), origin("first", 3)),
                (2, "b".to_owned(), origin("old", 5)),
                (3, "journal_entry_tampered".to_owned(), None),
                (4, "journal_entries_missing".to_owned(), None),
                (5, "c".to_owned(), origin("old", 9)),
                (6, "journal_entry_tampered".to_owned(), None),
            ]
        );
        assert!(events[3].event.message.contains("entries 7 to 8 (2)"));
        assert_eq!(events[2].event.operation, Operation::ReplayJournal);
        assert_eq!(events[2].event.outcome, Outcome::Denied);
        assert_eq!(
            replay,
            Replay {
                previous: vec!["old".into()],
                replayed: 6,
                tampered: 2,
                missing: 2,
            }
        );
        // Every old record goes, the tampered ones included (their markers take their place).
        assert_eq!(write.puts(), 0);
        assert!(!write.is_empty());
    }

    #[test]
    fn a_durable_journal_refuses_to_record_when_flushing_fails_or_stalls() {
        let dir = tempfile::tempdir().unwrap();
        let platform = crate::kms::tests::platform();
        let mut kms = crate::Kms::open(
            &dir.path().join("kms.redb"),
            &platform,
            Box::new(crate::rollback::MemoryAnchor::new()),
        )
        .unwrap();
        let (j, _) = AuditJournal::durable(kms.journal_store().unwrap(), 10).unwrap();
        let e = event(Operation::UnwrapDataKey, Outcome::Allowed);
        j.record(&e).unwrap();
        j.lock().unwrap().failure = Some("disk gone".into());
        let err = j.record(&e).unwrap_err();
        assert!(err.0.contains("not durable: disk gone"), "{err}");
        // A successful flush clears the failure.
        assert_eq!(j.flush().unwrap().through, 1);
        j.record(&e).unwrap();
        // Entries waiting longer than the limit: the flusher is not running.
        j.lock().unwrap().waiting_since =
            Instant::now().checked_sub(FLUSH_STALL_LIMIT + Duration::from_secs(1));
        let err = j.record(&e).unwrap_err();
        assert!(err.0.contains("not flushed for"), "{err}");
        assert_eq!(j.flush().unwrap().through, 2);
        j.record(&e).unwrap();
        assert_eq!(j.pending(), 3);
    }
}
