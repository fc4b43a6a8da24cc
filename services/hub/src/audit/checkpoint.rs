//! The hub's checkpoints of the audit log: C2SP checkpoints (origin, size, root) signed with the
//! hub's audit key ([`crate::keys::HubKeys::audit_signer`]) and stored, one row per size, in
//! `audit_checkpoints` (the KMS's co-signature is added to a row's note later; `cosigned` says
//! whether it has been).
//!
//! **Owns:** signing and storing them ([`latest_checkpoint`], [`checkpoint_now`]: signing a
//! size that was already signed returns the stored note), and the task that signs one whenever
//! the log grew, at most every [`CHECKPOINT_INTERVAL`] ([`spawn_checkpointer`]).
//!
//! **Trusts:** the in-memory tree for the size and root. It holds committed entries only (a
//! transaction's leaves are added after its commit), so a checkpoint never covers an entry the
//! database could still roll back.
//!
//! **Checks:** every stored checkpoint before it is served: it parses as a signed note, verifies
//! with the hub's audit key, names the log's origin and its size, and has the tree's root at that
//! size. A failure is an internal error naming expected vs got (the database, or the hub's key,
//! was changed).

use std::sync::{Arc, Weak};
use std::time::Duration;

use coffer_tlog::merkle::Hash;
use coffer_tlog::note::{Note, TrustedKeys};
use coffer_tlog::Checkpoint;
use sqlx::Row;
use tokio::time::MissedTickBehavior;

use crate::error::{ApiError, ApiResult};
use crate::state::Hub;

/// How often the background task looks for growth of the log and, if it grew, signs a
/// checkpoint: a new entry is covered by a signed checkpoint within about this long.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

/// A signed checkpoint, as stored and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The number of entries it covers.
    pub size: u64,
    /// The root of the tree of those entries.
    pub root: Hash,
    /// The signed note text (the hub's signature, and the KMS's once it co-signed).
    pub note: String,
    /// Whether the KMS co-signed it.
    pub cosigned: bool,
}

/// The signed note of the checkpoint of the log's current size, signing it now if no
/// checkpoint of that size was stored yet.
pub async fn checkpoint_now(hub: &Hub) -> ApiResult<String> {
    Ok(latest_checkpoint(hub).await?.note)
}

/// The checkpoint of the log's current size (size and root read together from the tree of
/// committed entries), signed and stored now if no checkpoint of that size was stored yet.
pub async fn latest_checkpoint(hub: &Hub) -> ApiResult<SignedCheckpoint> {
    let (size, root) = hub.audit.head()?;
    if let Some(stored) = stored_checkpoint(hub, size).await? {
        return Ok(stored);
    }
    let note = sign(hub, size, root)?;
    // Through a Writer like every write (on SQLite, a write outside it would make an open
    // Writer transaction fail with SQLITE_BUSY_SNAPSHOT); no audit entry: the checkpoint is
    // the log's own statement about itself.
    let mut w = hub.writer().await?;
    sqlx::query(
        "INSERT INTO audit_checkpoints (size, note, cosigned, created_at) VALUES ($1, $2, 0, $3) \
         ON CONFLICT (size) DO NOTHING",
    )
    .bind(to_db(size)?)
    .bind(&note)
    .bind(crate::db::now())
    .execute(w.conn())
    .await?;
    w.commit().await?;
    // Another caller may have stored this size first: the stored row is the checkpoint (and,
    // Ed25519 being deterministic, the same note).
    stored_checkpoint(hub, size).await?.ok_or_else(|| {
        ApiError::internal(
            "audit checkpoint",
            format!("the checkpoint of size {size} was stored but cannot be read back"),
        )
    })
}

/// Signs the checkpoint of `size` entries with root `root`; returns the note text.
fn sign(hub: &Hub, size: u64, root: Hash) -> ApiResult<String> {
    let context = "signing an audit checkpoint";
    let checkpoint = Checkpoint::new(hub.audit.origin(), size, root)
        .map_err(|e| ApiError::internal(context, e))?;
    let mut note = checkpoint
        .to_note()
        .map_err(|e| ApiError::internal(context, e))?;
    note.sign(hub.keys.audit_signer())
        .map_err(|e| ApiError::internal(context, e))?;
    let bytes = note
        .to_bytes()
        .map_err(|e| ApiError::internal(context, e))?;
    String::from_utf8(bytes).map_err(|e| ApiError::internal(context, e))
}

/// The stored checkpoint of `size` entries, checked (see the module docs), if one was signed.
pub(super) async fn stored_checkpoint(hub: &Hub, size: u64) -> ApiResult<Option<SignedCheckpoint>> {
    let row = sqlx::query("SELECT note, cosigned FROM audit_checkpoints WHERE size = $1")
        .bind(to_db(size)?)
        .fetch_optional(&hub.db)
        .await?;
    match row {
        None => Ok(None),
        Some(row) => {
            let cosigned: i64 = row.try_get("cosigned")?;
            check_stored(hub, size, row.try_get("note")?, cosigned != 0).map(Some)
        }
    }
}

/// The first stored checkpoint that covers entry `index` and is smaller than `below`, checked.
pub(super) async fn first_covering(
    hub: &Hub,
    index: u64,
    below: u64,
) -> ApiResult<Option<SignedCheckpoint>> {
    let row = sqlx::query(
        "SELECT size, note, cosigned FROM audit_checkpoints WHERE size > $1 AND size < $2 \
         ORDER BY size LIMIT 1",
    )
    .bind(to_db(index)?)
    .bind(to_db(below)?)
    .fetch_optional(&hub.db)
    .await?;
    match row {
        None => Ok(None),
        Some(row) => {
            let size = from_db(row.try_get("size")?)?;
            let cosigned: i64 = row.try_get("cosigned")?;
            check_stored(hub, size, row.try_get("note")?, cosigned != 0).map(Some)
        }
    }
}

/// The notes of the newest `limit` stored checkpoints of at most `size` entries, smallest first
/// (not checked here: whoever downloads them checks them).
pub(super) async fn stored_notes(
    hub: &Hub,
    size: u64,
    limit: usize,
    cosigned_only: bool,
) -> ApiResult<Vec<String>> {
    let limit = i64::try_from(limit).map_err(|e| ApiError::internal("checkpoint limit", e))?;
    let rows = sqlx::query(
        "SELECT note FROM audit_checkpoints WHERE size <= $1 AND cosigned >= $3 \
         ORDER BY size DESC LIMIT $2",
    )
    .bind(to_db(size)?)
    .bind(limit)
    .bind(i64::from(cosigned_only))
    .fetch_all(&hub.db)
    .await?;
    let mut notes = rows
        .iter()
        .map(|r| r.try_get("note"))
        .collect::<Result<Vec<String>, _>>()?;
    notes.reverse();
    Ok(notes)
}

/// Checks a stored checkpoint note said to be of `size` entries (see the module docs).
fn check_stored(hub: &Hub, size: u64, note: String, cosigned: bool) -> ApiResult<SignedCheckpoint> {
    let refused = |why: String| {
        ApiError::internal(
            "audit checkpoint",
            format!("the stored checkpoint of size {size} {why}"),
        )
    };
    let parsed =
        Note::parse(note.as_bytes()).map_err(|e| refused(format!("is not a signed note: {e}")))?;
    let key = hub.keys.audit_signer().verifier_key();
    let trusted =
        TrustedKeys::new([key.clone()]).map_err(|e| refused(format!("cannot be checked: {e}")))?;
    let verified = parsed.verify(&trusted).map_err(|e| {
        refused(format!(
            "does not verify with the hub's audit key {key} (was the hub's key replaced?): {e}"
        ))
    })?;
    let checkpoint = Checkpoint::from_note(&verified)
        .map_err(|e| refused(format!("is not a checkpoint: {e}")))?;
    if checkpoint.origin() != hub.audit.origin() {
        return Err(refused(format!(
            "is for log {:?}, expected {:?}",
            checkpoint.origin(),
            hub.audit.origin()
        )));
    }
    if checkpoint.size() != size {
        return Err(refused(format!("says size {}", checkpoint.size())));
    }
    let root = hub.audit.with_tree(|tree| {
        tree.root_at(size)
            .map_err(|e| refused(format!("is beyond the log: {e}")))
    })?;
    if *checkpoint.root() != root {
        return Err(refused(format!(
            "has root {}, expected {} (the root of the log's first {size} entries)",
            hex::encode(checkpoint.root()),
            hex::encode(root)
        )));
    }
    Ok(SignedCheckpoint {
        size,
        root,
        note,
        cosigned,
    })
}

/// A size or index as the database stores it.
pub(super) fn to_db(n: u64) -> ApiResult<i64> {
    i64::try_from(n).map_err(|_| {
        ApiError::internal(
            "audit index",
            format!("{n} is beyond what the database stores"),
        )
    })
}

/// A size or index as the database stored it.
pub(super) fn from_db(n: i64) -> ApiResult<u64> {
    u64::try_from(n).map_err(|_| ApiError::internal("audit index", format!("negative: {n}")))
}

/// Starts the task that signs a checkpoint whenever the log grew since the last one it saw
/// signed, checking every [`CHECKPOINT_INTERVAL`]. It holds the hub weakly and ends when the
/// hub is dropped; a failure is logged and retried at the next tick. Called outside a tokio
/// runtime, it logs an error and starts nothing.
pub fn spawn_checkpointer(hub: Arc<Hub>) {
    let hub = Arc::downgrade(&hub);
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(run_checkpointer(hub));
        }
        Err(e) => tracing::error!(
            error = %e,
            "cannot start the audit checkpointer outside a tokio runtime; \
             checkpoints are signed only on request"
        ),
    }
}

async fn run_checkpointer(hub: Weak<Hub>) {
    let mut ticks = tokio::time::interval(CHECKPOINT_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The size of the last checkpoint known to be stored (0: none yet, or an empty log).
    let mut signed = 0;
    loop {
        ticks.tick().await;
        let Some(hub) = hub.upgrade() else {
            return;
        };
        if hub.audit.size() <= signed {
            continue;
        }
        match latest_checkpoint(&hub).await {
            Ok(checkpoint) => {
                tracing::debug!(size = checkpoint.size, "audit checkpoint signed");
                signed = checkpoint.size;
                if let Some(link) = &hub.config.kms {
                    cosign_or_log(&hub, link).await;
                }
            }
            Err(e) => tracing::error!(
                error = %e,
                "could not sign an audit checkpoint; retrying in {CHECKPOINT_INTERVAL:?}"
            ),
        }
    }
}

/// Asks the KMS to co-sign the latest checkpoint; a failure is logged and retried at the next
/// growth of the log (a refusal is a security event: logged as an error).
async fn cosign_or_log(hub: &Hub, link: &crate::config::KmsLink) {
    use super::cosign::{cosign_latest, CosignError};
    match cosign_latest(hub, link).await {
        Ok(_) => {}
        Err(e @ CosignError::Refused { .. }) | Err(e @ CosignError::BadSignature { .. }) => {
            tracing::error!(error = %e, "the KMS did not co-sign the audit log")
        }
        Err(e) => tracing::warn!(error = %e, "audit checkpoint not co-signed yet"),
    }
}

/// The size of the largest checkpoint the KMS co-signed (`None`: none yet).
pub(super) async fn last_cosigned_size(hub: &Hub) -> ApiResult<Option<u64>> {
    let size: Option<i64> =
        sqlx::query("SELECT MAX(size) AS s FROM audit_checkpoints WHERE cosigned = 1")
            .fetch_one(&hub.db)
            .await?
            .try_get("s")?;
    Ok(size.and_then(|s| u64::try_from(s).ok()))
}
