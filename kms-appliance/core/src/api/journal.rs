//! The audit journal: the KMS's decisions, numbered, held until the control plane collects
//! them into its audit log.
//!
//! Every decision the API makes is [recorded](AuditSink::record) here (and on the console)
//! *before* the request runs. The control plane collects with a [`AUDIT_COLLECT_TYP`] token,
//! asking for the events after the last sequence number it has durably appended; asking
//! acknowledges (and drops) everything up to that number, so a control plane that crashes
//! after collecting simply asks again. The journal holds at most its capacity of uncollected
//! events: when full, recording fails and the API refuses the request (a key is never released
//! without its decision being held for the log). A journal lives as long as the `kms-serve`
//! process: its random id changes at every start, so the control plane sees a restart, and the
//! events recorded since its last collection are lost with the process (the control plane
//! records that the journal changed; the console line of each event remains).
//!
//! Two kinds of decision are not journaled (only logged): an *allowed* checkpoint co-signature
//! (the signature in the checkpoint is its record) and an *allowed* collection (collecting is
//! not a key decision). Journaling either would grow the log with every checkpoint or
//! collection and call for the next one forever. Denials of both are journaled.
//!
//! [`AUDIT_COLLECT_TYP`]: crate::authz::AUDIT_COLLECT_TYP

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

use super::audit::{AuditError, AuditSink};
use crate::authz::{AuditEvent, Operation, Outcome};

/// `POST` on the KMS's attestation endpoint: `{"token", "journal", "after", "limit"}` from the
/// control plane; the [`JournalPage`] after `after`.
pub const AUDIT_EVENTS_PATH: &str = "/.well-known/coffer/audit/events";

/// Uncollected events a journal holds by default before the API refuses requests.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The most events one collection returns.
pub const MAX_PAGE: usize = 1000;

/// One journaled event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalEntry {
    /// Its sequence number in this journal (from 1).
    pub seq: u64,
    /// The decision.
    pub event: AuditEvent,
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

#[derive(Debug, Default)]
struct Inner {
    last_seq: u64,
    events: VecDeque<JournalEntry>,
}

/// The journal (see the module docs).
#[derive(Debug)]
pub struct AuditJournal {
    id: String,
    capacity: usize,
    inner: Mutex<Inner>,
}

impl AuditJournal {
    /// An empty journal with a fresh random id, holding at most `capacity` uncollected events.
    pub fn new(capacity: usize) -> Result<Self, AuditError> {
        let mut id = [0u8; 16];
        rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut id)
            .map_err(|e| AuditError(format!("no randomness for the journal id: {e}")))?;
        Ok(Self {
            id: hex::encode(id),
            capacity,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The journal's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Acknowledges every event up to `after` (dropping them) if `journal` names this journal,
    /// and returns up to `limit` (at most [`MAX_PAGE`]) events after it. An `after` counted in
    /// another journal (the one before a restart) acknowledges nothing: the page starts at the
    /// oldest event held.
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
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| AuditError("the journal's lock is poisoned".into()))?;
        while inner.events.front().is_some_and(|e| e.seq <= after) {
            inner.events.pop_front();
        }
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
            let mut inner = self
                .inner
                .lock()
                .map_err(|_| AuditError("the journal's lock is poisoned".into()))?;
            if inner.events.len() >= self.capacity {
                return Err(AuditError(format!(
                    "audit journal full: {} decisions not collected by the control plane; \
                     refusing requests until it collects",
                    inner.events.len()
                )));
            }
            inner.last_seq += 1;
            let seq = inner.last_seq;
            inner.events.push_back(JournalEntry {
                seq,
                event: event.clone(),
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
}
