//! The audit log: every user action, every refusal and (once the KMS forwards them) every KMS
//! decision, appended as an entry of an RFC 6962/9162 Merkle tree, whose signed checkpoints
//! (C2SP signed notes) let anyone check offline that the log only ever grew.
//!
//! An entry is one JSON object, its bytes exactly as stored and hashed:
//! `{"v":1,"idx":N,"at":SECS,"actor":"user:alice","action":"job.submit","org":"acme",
//! "target":"job-…","outcome":"ok","detail":{…}}`. Leaf `idx` of the tree is
//! `SHA-256(0x00 ‖ entry)`. The database is the store of record; the tree's hashes are kept in
//! memory (32 bytes per entry), rebuilt and re-checked against the stored entries at start-up:
//! a stored entry whose hash does not match, a gap in the indices, or a largest stored
//! checkpoint that the stored entries no longer reach or hash to (entries deleted from the end,
//! or rewritten with their leaf hashes) refuses the start.
//!
//! **Owns:** the entries (table `audit_entries`), the in-memory tree of their leaf hashes, and
//! the hub's signed checkpoints of it (table `audit_checkpoints`: signed on demand by
//! [`checkpoint_now`], and by [`spawn_checkpointer`]'s task every [`CHECKPOINT_INTERVAL`] while
//! the log grows).
//!
//! **Trusts:** the database to keep what it stored (what it does not keep shows: see above at
//! start-up; a stored checkpoint that does not match the tree or the hub's key is refused before
//! it is served), and coffer-tlog for every Merkle computation.
//!
//! **Checks:** who reads what ([`routes`]: deployment administrators everything; auditors,
//! owners and admins of an org the entries of their orgs; every signed-in caller the
//! checkpoints and proofs, which are hashes only) and every index, size and range asked for,
//! answering a 400 that names the numbers.

mod checkpoint;
pub mod cosign;
pub mod kms_journal;
mod routes;

pub use checkpoint::{
    checkpoint_now, latest_checkpoint, spawn_checkpointer, SignedCheckpoint, CHECKPOINT_INTERVAL,
};
pub use routes::{routes, MAX_BUNDLE_INDICES, MAX_ENTRIES_PER_CALL};

use std::sync::RwLock;

use coffer_tlog::merkle::{leaf_hash, Hash, MemoryTree};
use coffer_tlog::note::Note;
use coffer_tlog::Checkpoint;
use serde::Serialize;
use sqlx::{AnyConnection, AnyPool, Row};

use crate::error::{ApiError, ApiResult};

/// Whether the recorded action happened or was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// It happened.
    Ok,
    /// It was refused.
    Denied,
}

/// One action to record.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// Who: `user:<username>`, `service:<name>`, `anonymous`.
    pub actor: String,
    /// What: `org.create`, `job.submit`, `login`, ...
    pub action: String,
    /// The org it concerns, if any.
    pub org: Option<String>,
    /// The object it concerns (a job, dataset or user id), if any.
    pub target: Option<String>,
    /// Whether it happened.
    pub outcome: AuditOutcome,
    /// Anything else worth keeping (never a secret).
    pub detail: serde_json::Value,
}

impl AuditRecord {
    /// An action by `actor` that happened.
    pub fn ok(actor: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            org: None,
            target: None,
            outcome: AuditOutcome::Ok,
            detail: serde_json::Value::Null,
        }
    }

    /// An action by `actor` that was refused.
    pub fn denied(actor: impl Into<String>, action: impl Into<String>, why: &str) -> Self {
        Self {
            outcome: AuditOutcome::Denied,
            detail: serde_json::json!({ "reason": why }),
            ..Self::ok(actor, action)
        }
    }

    /// Names the org.
    pub fn org(mut self, org: impl Into<String>) -> Self {
        self.org = Some(org.into());
        self
    }

    /// Names the target.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Sets the detail.
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

#[derive(Serialize)]
struct EntryBody<'a> {
    v: u32,
    idx: u64,
    at: i64,
    actor: &'a str,
    action: &'a str,
    org: Option<&'a str>,
    target: Option<&'a str>,
    outcome: AuditOutcome,
    detail: &'a serde_json::Value,
}

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditOpenError {
    /// Reading the entries failed.
    #[error("reading the audit log: {0}")]
    Database(#[from] sqlx::Error),
    /// The stored entries are not a dense sequence from 0.
    #[error("audit log entry {expected} is missing (found entry {got} in its place)")]
    Gap {
        /// The index that should come next.
        expected: u64,
        /// The index found.
        got: i64,
    },
    /// A stored entry does not hash to its stored leaf hash: the database was altered.
    #[error("audit log entry {index} was modified: its leaf hash is {got}, the stored hash is {expected}")]
    Modified {
        /// The entry.
        index: u64,
        /// The stored leaf hash.
        expected: String,
        /// The entry's actual leaf hash.
        got: String,
    },
    /// The largest stored checkpoint covers more entries than are stored: entries were deleted
    /// from the end of the log.
    #[error("audit log truncated: a checkpoint of {checkpoint_size} entries was signed, the database holds {entries}")]
    Truncated {
        /// The largest stored checkpoint's size.
        checkpoint_size: u64,
        /// The entries stored.
        entries: u64,
    },
    /// The largest stored checkpoint does not match the stored entries.
    #[error("the stored audit checkpoint of size {size} {reason}")]
    Checkpoint {
        /// The checkpoint's size (as stored in its row).
        size: i64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Checks the largest stored checkpoint against the tree of the stored entries: the entries it
/// covers are all there and hash to its root (its signature is checked when it is served).
/// Deleting entries from the end of the log, which leaves no gap, shows here.
async fn check_latest_checkpoint(
    db: &AnyPool,
    origin: &str,
    tree: &MemoryTree,
) -> Result<(), AuditOpenError> {
    let Some(row) =
        sqlx::query("SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1")
            .fetch_optional(db)
            .await?
    else {
        return Ok(());
    };
    let size: i64 = row.try_get("size")?;
    let note: String = row.try_get("note")?;
    let refused = |reason: String| AuditOpenError::Checkpoint { size, reason };
    let checkpoint = Note::parse(note.as_bytes())
        .map_err(|e| refused(format!("is not a signed note: {e}")))
        .and_then(|n| {
            Checkpoint::parse(n.text().as_bytes())
                .map_err(|e| refused(format!("is not a checkpoint: {e}")))
        })?;
    if u64::try_from(size).ok() != Some(checkpoint.size()) {
        return Err(refused(format!("says size {}", checkpoint.size())));
    }
    if checkpoint.origin() != origin {
        return Err(refused(format!(
            "is for log {:?}, expected {origin:?}",
            checkpoint.origin()
        )));
    }
    if checkpoint.size() > tree.size() {
        return Err(AuditOpenError::Truncated {
            checkpoint_size: checkpoint.size(),
            entries: tree.size(),
        });
    }
    let root = tree
        .root_at(checkpoint.size())
        .map_err(|e| refused(e.to_string()))?;
    if root != *checkpoint.root() {
        return Err(refused(format!(
            "has root {}, the stored entries hash to {}: an entry it covers was modified",
            hex::encode(checkpoint.root()),
            hex::encode(root)
        )));
    }
    Ok(())
}

/// The audit log.
pub struct AuditLog {
    origin: String,
    tree: RwLock<MemoryTree>,
}

impl AuditLog {
    /// Loads the log's entries from `db`, checking each against its leaf hash.
    pub async fn open(db: &AnyPool, origin: &str) -> Result<Self, AuditOpenError> {
        let rows = sqlx::query("SELECT idx, body, leaf_hash FROM audit_entries ORDER BY idx")
            .fetch_all(db)
            .await?;
        let mut tree = MemoryTree::new();
        for (expected, row) in (0u64..).zip(rows) {
            let idx: i64 = row.try_get("idx")?;
            if u64::try_from(idx).ok() != Some(expected) {
                return Err(AuditOpenError::Gap { expected, got: idx });
            }
            let body: String = row.try_get("body")?;
            let stored: String = row.try_get("leaf_hash")?;
            let leaf = leaf_hash(body.as_bytes());
            if hex::encode(leaf) != stored {
                return Err(AuditOpenError::Modified {
                    index: expected,
                    expected: stored,
                    got: hex::encode(leaf),
                });
            }
            tree.append_leaf_hash(leaf);
        }
        check_latest_checkpoint(db, origin, &tree).await?;
        Ok(Self {
            origin: origin.to_owned(),
            tree: RwLock::new(tree),
        })
    }

    /// The log's origin (the first line of its checkpoints).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The number of committed entries.
    pub fn size(&self) -> u64 {
        self.tree.read().map(|t| t.size()).unwrap_or(0)
    }

    /// The number of committed entries and the root of their tree, read together.
    pub fn head(&self) -> ApiResult<(u64, Hash)> {
        self.with_tree(|tree| Ok((tree.size(), tree.root())))
    }

    /// Runs `f` on the tree of committed entries, under its read lock (never held across an
    /// await: `f` is synchronous).
    pub fn with_tree<T>(&self, f: impl FnOnce(&MemoryTree) -> ApiResult<T>) -> ApiResult<T> {
        let tree = self.tree.read().map_err(|_| {
            ApiError::internal("audit tree", "lock poisoned; restart the hub to reload it")
        })?;
        f(&tree)
    }

    /// Writes entry `index` for `record` in the caller's transaction; returns its leaf hash.
    pub(crate) async fn append(
        &self,
        conn: &mut AnyConnection,
        index: u64,
        record: &AuditRecord,
    ) -> ApiResult<Hash> {
        let at = crate::db::now();
        let body = serde_json::to_string(&EntryBody {
            v: 1,
            idx: index,
            at,
            actor: &record.actor,
            action: &record.action,
            org: record.org.as_deref(),
            target: record.target.as_deref(),
            outcome: record.outcome,
            detail: &record.detail,
        })
        .map_err(|e| ApiError::internal("audit entry", e))?;
        let leaf = leaf_hash(body.as_bytes());
        let idx = i64::try_from(index).map_err(|e| ApiError::internal("audit index", e))?;
        sqlx::query("INSERT INTO audit_entries (idx, body, leaf_hash, at) VALUES ($1, $2, $3, $4)")
            .bind(idx)
            .bind(body)
            .bind(hex::encode(leaf))
            .bind(at)
            .execute(conn)
            .await?;
        Ok(leaf)
    }

    /// Adds the leaves of a committed transaction to the tree, in order.
    pub(crate) fn committed(&self, leaves: Vec<Hash>) {
        if leaves.is_empty() {
            return;
        }
        match self.tree.write() {
            Ok(mut tree) => {
                for leaf in leaves {
                    tree.append_leaf_hash(leaf);
                }
            }
            Err(_) => tracing::error!("audit tree lock poisoned; restart the hub to reload it"),
        }
    }
}
