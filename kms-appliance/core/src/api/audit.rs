//! Where the API's decisions go: the [`AuditSink`] trait, [`MemoryAuditSink`] for tests and
//! benchmarks, and [`LogAuditSink`] (one JSON line per decision on the console). The appliance
//! records into the [`AuditJournal`](super::AuditJournal), which also logs each line and holds
//! the events until the control plane collects them into its audit log.

use std::sync::Mutex;

use crate::authz::AuditEvent;

/// The sink refused or failed to record an event. The API then refuses the request: a key is
/// released only once its decision is recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit sink: {0}")]
pub struct AuditError(pub String);

/// Records every decision of the API, allowed or denied. Events hold identifiers only (never
/// a token or key material: see [`AuditEvent`]).
pub trait AuditSink: Send + Sync {
    /// Records `event`; an error stops the request it belongs to.
    fn record(&self, event: &AuditEvent) -> Result<(), AuditError>;
}

/// Keeps events in memory, in order.
#[derive(Debug, Default)]
pub struct MemoryAuditSink {
    events: Mutex<Vec<AuditEvent>>,
}

impl MemoryAuditSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// The events recorded so far, oldest first.
    pub fn events(&self) -> Vec<AuditEvent> {
        match self.events.lock() {
            Ok(events) => events.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl AuditSink for MemoryAuditSink {
    fn record(&self, event: &AuditEvent) -> Result<(), AuditError> {
        self.events
            .lock()
            .map_err(|_| AuditError("the in-memory sink's lock is poisoned".into()))?
            .push(event.clone());
        Ok(())
    }
}

/// Writes each event as one JSON line (`audit {...}`) to the log, i.e. the appliance's console.
/// Events hold identifiers only, so the line is safe to show the host.
#[derive(Debug, Default)]
pub struct LogAuditSink;

impl AuditSink for LogAuditSink {
    fn record(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let line = serde_json::to_string(event)
            .map_err(|e| AuditError(format!("cannot encode the event: {e}")))?;
        tracing::info!("audit {line}");
        Ok(())
    }
}
