//! The hub's shared state, and the one way to change it: a [`Writer`].
//!
//! A `Writer` holds the hub's write lock and one database transaction. A handler makes its
//! changes through it, appends the audit entry that records them ([`Writer::audit`]) and the
//! notifications they cause ([`Writer::notify`]), then commits: the change, its audit entry and
//! its notifications are durable together or not at all. Only after the commit do the audit
//! log's in-memory tree and the live notification streams see them. One writer at a time keeps
//! the audit log's indices dense and in commit order (a control plane's write rate is small;
//! reads do not take the lock). **Every** write goes through a `Writer`, even one that records
//! nothing (webhook delivery bookkeeping, checkpoints): on SQLite, a write committed outside it
//! would make an open `Writer` transaction that already read fail with SQLITE_BUSY_SNAPSHOT.

use std::sync::Arc;

use sqlx::{Any, AnyConnection, AnyPool, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use crate::audit::{AuditLog, AuditRecord};
use crate::auth::oidc::OidcVerifier;
use crate::config::HubConfig;
use crate::error::{ApiError, ApiResult};
use crate::keys::HubKeys;
use crate::notify::{Event, Notifier, Recorded};

/// The hub.
pub struct Hub {
    /// The database.
    pub db: AnyPool,
    /// The configuration it started with.
    pub config: HubConfig,
    /// Its signing keys.
    pub keys: HubKeys,
    /// The audit log.
    pub audit: AuditLog,
    /// Notifications: live streams and webhook deliveries.
    pub notify: Notifier,
    /// OIDC ID token verification.
    pub oidc: OidcVerifier,
    write_lock: Mutex<()>,
    /// This process's exclusive hold on the database.
    _db_lock: crate::db::DbLock,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("issuer", &self.config.issuer)
            .field("audit_size", &self.audit.size())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Opens the database (migrating it; refused if another hub process holds it), the keys
    /// and the audit log.
    pub async fn open(config: HubConfig) -> anyhow::Result<Arc<Self>> {
        let db = crate::db::connect(&config.database_url).await?;
        let db_lock = crate::db::lock_exclusive(&config.database_url, &db).await?;
        let keys =
            HubKeys::load_or_create(&config.state_dir, &config.issuer, &config.audit_origin)?;
        let audit = AuditLog::open(&db, &config.audit_origin).await?;
        let oidc = OidcVerifier::new(&config.oidc)?;
        Ok(Arc::new(Self {
            db,
            config,
            keys,
            audit,
            notify: Notifier::new(),
            oidc,
            write_lock: Mutex::new(()),
            _db_lock: db_lock,
        }))
    }

    /// Starts a write: takes the write lock and opens a transaction.
    pub async fn writer(&self) -> ApiResult<Writer<'_>> {
        let guard = self.write_lock.lock().await;
        let tx = self.db.begin().await?;
        Ok(Writer {
            hub: self,
            _guard: guard,
            tx,
            leaves: Vec::new(),
            recorded: Vec::new(),
        })
    }

    /// Records a refused action in the audit log on its own (the refusal itself changed
    /// nothing). A failure to record is logged, not answered: the caller is refused anyway.
    pub async fn audit_refusal(&self, record: AuditRecord) {
        let result = async {
            let mut w = self.writer().await?;
            w.audit(record).await?;
            w.commit().await
        }
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "could not record a refusal in the audit log");
        }
    }
}

/// One atomic change to the hub's state (see the module docs).
pub struct Writer<'a> {
    hub: &'a Hub,
    _guard: MutexGuard<'a, ()>,
    tx: Transaction<'static, Any>,
    leaves: Vec<coffer_tlog::merkle::Hash>,
    recorded: Vec<Recorded>,
}

impl Writer<'_> {
    /// The transaction's connection, for the change's own queries.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Appends `record` to the audit log, in this transaction. Returns its index.
    pub async fn audit(&mut self, record: AuditRecord) -> ApiResult<u64> {
        let index = self.hub.audit.size() + self.leaves.len() as u64;
        let leaf = self.hub.audit.append(&mut self.tx, index, &record).await?;
        self.leaves.push(leaf);
        Ok(index)
    }

    /// Records `event` for its users' inboxes and its org's webhooks, in this transaction.
    pub async fn notify(&mut self, event: Event) -> ApiResult<()> {
        let recorded = self.hub.notify.record(&mut self.tx, &event).await?;
        self.recorded.push(recorded);
        Ok(())
    }

    /// Commits the change, then shows its audit entries and notifications to readers.
    pub async fn commit(self) -> ApiResult<()> {
        let Self {
            hub,
            _guard,
            tx,
            leaves,
            recorded,
        } = self;
        tx.commit()
            .await
            .map_err(|e| ApiError::internal("commit", e))?;
        hub.audit.committed(leaves);
        hub.notify.published(recorded);
        Ok(())
    }
}
