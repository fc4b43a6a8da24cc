//! The shared backend: one PostgreSQL database holds the sealed records of every KMS replica of
//! a deployment, so a key made at one replica unwraps at another and a key destroyed at one is
//! gone at all of them.
//!
//! PostgreSQL is as untrusted as a disk: it is the operator's server, reached without TLS (every
//! record is sealed, so TLS would hide nothing the seal does not; it would only protect the
//! password, which SCRAM authentication never sends). It sees record names, sizes and counts,
//! and the timing of writes. Everything it returns is checked by the [store](super) as for any
//! backend: every record opens under the store key, and the set of records is exactly the one
//! the sealed state record commits to.
//!
//! **Schema:** one table, `coffer_kms_records (tbl, key, sealed)`, created on first use. The
//! header (the sealing key id) is the row `('header', 'sealing-key-id')`.
//!
//! **Writers:** any replica writes. A write takes the database's session-level advisory lock
//! [`WRITERS_LOCK`], checks that the state record is still the one it read (else
//! [`StoreError::Moved`]: the caller reloads and retries), writes everything in one transaction,
//! tells its witnesses, and releases the lock: the witnesses see the versions in the order they
//! were written. A server that breaks the lock can make two writers race; a witness then
//! refuses one of them (stale or forked) and that replica stops: it fails closed.
//!
//! **Durability** is the server's: a transaction is durable when COMMIT returns with the
//! default `synchronous_commit = on` and `fsync = on`. An operator who turns them off risks
//! losing acknowledged writes in a crash, which the witnesses then report as a rollback.
//!
//! The store API is synchronous (it runs on the API's blocking pool), so the backend drives
//! sqlx on a runtime of its own: calling it from an async task would block that task's thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use super::{Backend, Change, StoreError, Table, HEADER_SEALING_KEY_ID, STATE_KEY};

/// The advisory lock key of the writers' lock: a fixed key drawn at random, so that it does not
/// collide with another application's lock in the same database by accident.
pub const WRITERS_LOCK: i64 = 0x3c2d_6b4a_1f0e_5d7b;

const HEADER_TABLE: &str = "header";

/// The records, each with the state version of the commit that wrote it; and the records
/// commits removed (with that version), kept for [`TOMBSTONE_VERSIONS`] versions: what a replica
/// reads to take in the others' writes without reading every record.
const SCHEMA: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS coffer_kms_records (\
     tbl TEXT NOT NULL, key TEXT NOT NULL, sealed BYTEA NOT NULL, \
     version BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (tbl, key))",
    "CREATE INDEX IF NOT EXISTS coffer_kms_records_version ON coffer_kms_records (version)",
    "CREATE TABLE IF NOT EXISTS coffer_kms_removed (\
     tbl TEXT NOT NULL, key TEXT NOT NULL, version BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS coffer_kms_removed_version ON coffer_kms_removed (version)",
];

/// How many state versions removals are remembered for: a replica further behind reads every
/// record instead (its digest check fails on the incomplete list, and it falls back).
pub const TOMBSTONE_VERSIONS: i64 = 100_000;

/// `url` without a password or query parameters (which may carry one), for messages.
pub fn redacted(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let Some((scheme, rest)) = url.split_once("://") else {
        return "postgres://(unparsable URL)".into();
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}/{path}")
}

/// One database operation on a connection.
type Op<'c, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'c>>;

/// A PostgreSQL database holding the sealed records (see the module doc).
pub(super) struct Postgres {
    runtime: tokio::runtime::Runtime,
    url: String,
    name: String,
    /// `None` after the connection failed: the next call connects again.
    connection: Mutex<Option<PgConnection>>,
    locked: bool,
}

impl Postgres {
    /// Connects to `url`, creates the table if needed and, under the writers' lock, the store
    /// (its header and `first` state record) if there is none.
    pub(super) fn open(
        url: &str,
        first: &mut dyn FnMut() -> Result<(Vec<u8>, Vec<u8>), StoreError>,
    ) -> Result<Self, StoreError> {
        let name = redacted(url);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Db {
                store: name.clone(),
                op: "starting the database client",
                reason: e.to_string(),
            })?;
        let mut store = Self {
            runtime,
            url: url.to_owned(),
            name,
            connection: Mutex::new(None),
            locked: false,
        };
        store.lock()?;
        let created = store.create(first);
        store.unlock();
        created?;
        Ok(store)
    }

    fn create(
        &self,
        first: &mut dyn FnMut() -> Result<(Vec<u8>, Vec<u8>), StoreError>,
    ) -> Result<(), StoreError> {
        self.with("creating the table", |c| {
            Box::pin(async move {
                for statement in SCHEMA {
                    sqlx::query(statement).execute(&mut *c).await?;
                }
                Ok(())
            })
        })?;
        if self.header()?.is_some() {
            return Ok(());
        }
        let (id, state) = first()?;
        self.with("creating the store", |c| {
            Box::pin(async move {
                let mut txn = c.begin().await?;
                for (tbl, key, sealed) in [
                    (HEADER_TABLE, HEADER_SEALING_KEY_ID, &id),
                    (Table::Meta.name(), STATE_KEY, &state),
                ] {
                    sqlx::query(
                        "INSERT INTO coffer_kms_records (tbl, key, sealed) VALUES ($1, $2, $3)",
                    )
                    .bind(tbl)
                    .bind(key)
                    .bind(sealed)
                    .execute(&mut *txn)
                    .await?;
                }
                txn.commit().await
            })
        })
    }

    /// Runs `op` on the connection (connecting first if there is none), on this backend's
    /// runtime. A failed connection is dropped, to be made again by the next call.
    fn with<T>(
        &self,
        op: &'static str,
        f: impl for<'c> FnOnce(&'c mut PgConnection) -> Op<'c, T>,
    ) -> Result<T, StoreError> {
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let error = |e: sqlx::Error| StoreError::Db {
            store: self.name.clone(),
            op,
            reason: e.to_string(),
        };
        if slot.is_none() {
            let connection = self
                .runtime
                .block_on(PgConnection::connect(&self.url))
                .map_err(|e| StoreError::Db {
                    store: self.name.clone(),
                    op: "connecting",
                    reason: e.to_string(),
                })?;
            *slot = Some(connection);
        }
        let Some(connection) = slot.as_mut() else {
            return Err(error(sqlx::Error::PoolClosed));
        };
        let result = self.runtime.block_on(f(connection));
        if let Err(e) = &result {
            if matches!(
                e,
                sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_)
            ) {
                *slot = None;
            }
        }
        result.map_err(error)
    }
}

impl Backend for Postgres {
    fn name(&self) -> &str {
        &self.name
    }

    fn header(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.with("reading the header", |c| {
            Box::pin(async move {
                sqlx::query_scalar(
                    "SELECT sealed FROM coffer_kms_records WHERE tbl = $1 AND key = $2",
                )
                .bind(HEADER_TABLE)
                .bind(HEADER_SEALING_KEY_ID)
                .fetch_optional(&mut *c)
                .await
            })
        })
    }

    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_owned();
        self.with("reading a record", |c| {
            Box::pin(async move {
                sqlx::query_scalar(
                    "SELECT sealed FROM coffer_kms_records WHERE tbl = $1 AND key = $2",
                )
                .bind(table.name())
                .bind(key)
                .fetch_optional(&mut *c)
                .await
            })
        })
    }

    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = prefix.to_owned();
        self.with("listing records", |c| {
            Box::pin(async move {
                // COLLATE "C": byte order, as the embedded store lists keys.
                let rows = sqlx::query(
                    "SELECT key, sealed FROM coffer_kms_records \
                     WHERE tbl = $1 AND starts_with(key, $2) ORDER BY key COLLATE \"C\"",
                )
                .bind(table.name())
                .bind(prefix)
                .fetch_all(&mut *c)
                .await?;
                rows.iter()
                    .map(|row| Ok((row.try_get("key")?, row.try_get("sealed")?)))
                    .collect()
            })
        })
    }

    fn len(&self, table: Table) -> Result<u64, StoreError> {
        let count: i64 = self.with("counting records", |c| {
            Box::pin(async move {
                sqlx::query_scalar("SELECT count(*) FROM coffer_kms_records WHERE tbl = $1")
                    .bind(table.name())
                    .fetch_one(&mut *c)
                    .await
            })
        })?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    fn write(
        &mut self,
        expected: &[u8],
        changes: &[Change],
        state: &[u8],
        version: u64,
    ) -> Result<(), StoreError> {
        let version = i64::try_from(version).map_err(|_| StoreError::Db {
            store: self.name.clone(),
            op: "committing",
            reason: format!("state version {version} does not fit a BIGINT"),
        })?;
        let (mut put_tables, mut put_keys, mut put_values) = (Vec::new(), Vec::new(), Vec::new());
        let (mut removed_tables, mut removed_keys) = (Vec::new(), Vec::new());
        for change in changes {
            match &change.sealed {
                Some(sealed) => {
                    put_tables.push(change.table.name());
                    put_keys.push(change.key.clone());
                    put_values.push(sealed.clone());
                }
                None => {
                    removed_tables.push(change.table.name());
                    removed_keys.push(change.key.clone());
                }
            }
        }
        put_tables.push(Table::Meta.name());
        put_keys.push(STATE_KEY.to_owned());
        put_values.push(state.to_vec());
        let expected = expected.to_vec();
        let moved = self.with("committing", |c| {
            Box::pin(async move {
                let mut txn = c.begin().await?;
                let current: Option<Vec<u8>> = sqlx::query_scalar(
                    "SELECT sealed FROM coffer_kms_records WHERE tbl = $1 AND key = $2 FOR UPDATE",
                )
                .bind(Table::Meta.name())
                .bind(STATE_KEY)
                .fetch_optional(&mut *txn)
                .await?;
                if current.as_deref() != Some(expected.as_slice()) {
                    txn.rollback().await?;
                    return Ok(true);
                }
                sqlx::query(
                    "DELETE FROM coffer_kms_records r USING UNNEST($1::text[], $2::text[]) AS d(tbl, key) \
                     WHERE r.tbl = d.tbl AND r.key = d.key",
                )
                .bind(&removed_tables)
                .bind(&removed_keys)
                .execute(&mut *txn)
                .await?;
                sqlx::query(
                    "INSERT INTO coffer_kms_removed (tbl, key, version) \
                     SELECT tbl, key, $3 FROM UNNEST($1::text[], $2::text[]) AS d(tbl, key)",
                )
                .bind(&removed_tables)
                .bind(&removed_keys)
                .bind(version)
                .execute(&mut *txn)
                .await?;
                sqlx::query("DELETE FROM coffer_kms_removed WHERE version < $1")
                    .bind(version.saturating_sub(TOMBSTONE_VERSIONS))
                    .execute(&mut *txn)
                    .await?;
                sqlx::query(
                    "INSERT INTO coffer_kms_records (tbl, key, sealed, version) \
                     SELECT tbl, key, sealed, $4 \
                     FROM UNNEST($1::text[], $2::text[], $3::bytea[]) AS p(tbl, key, sealed) \
                     ON CONFLICT (tbl, key) DO UPDATE SET sealed = EXCLUDED.sealed, version = EXCLUDED.version",
                )
                .bind(put_tables)
                .bind(put_keys)
                .bind(put_values)
                .bind(version)
                .execute(&mut *txn)
                .await?;
                txn.commit().await?;
                Ok(false)
            })
        })?;
        if moved {
            return Err(StoreError::Moved {
                store: self.name.clone(),
            });
        }
        Ok(())
    }

    fn changes_since(&self, version: u64) -> Result<Option<Vec<Change>>, StoreError> {
        let Ok(version) = i64::try_from(version) else {
            return Ok(None);
        };
        let rows = self.with("reading what other replicas wrote", |c| {
            Box::pin(async move {
                // Written since (the state record and the header aside), then removed since and
                // not written again.
                let rows = sqlx::query(
                    "SELECT tbl, key, sealed FROM coffer_kms_records \
                     WHERE version > $1 AND tbl <> $2 AND NOT (tbl = $3 AND key = $4) \
                     UNION ALL \
                     SELECT DISTINCT d.tbl, d.key, NULL::bytea FROM coffer_kms_removed d \
                     WHERE d.version > $1 AND NOT EXISTS \
                     (SELECT 1 FROM coffer_kms_records r WHERE r.tbl = d.tbl AND r.key = d.key)",
                )
                .bind(version)
                .bind(HEADER_TABLE)
                .bind(Table::Meta.name())
                .bind(STATE_KEY)
                .fetch_all(&mut *c)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok((
                            row.try_get::<String, _>("tbl")?,
                            row.try_get::<String, _>("key")?,
                            row.try_get::<Option<Vec<u8>>, _>("sealed")?,
                        ))
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            })
        })?;
        let mut changes = Vec::with_capacity(rows.len());
        for (tbl, key, sealed) in rows {
            // A table this version does not know: read everything (and fail there by name).
            let Some(table) = Table::from_name(&tbl) else {
                return Ok(None);
            };
            changes.push(Change { table, key, sealed });
        }
        Ok(Some(changes))
    }

    fn lock(&mut self) -> Result<(), StoreError> {
        self.with("taking the writers' lock", |c| {
            Box::pin(async move {
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(WRITERS_LOCK)
                    .execute(&mut *c)
                    .await?;
                Ok(())
            })
        })?;
        self.locked = true;
        Ok(())
    }

    fn unlock(&mut self) {
        if !std::mem::take(&mut self.locked) {
            return;
        }
        // A failed unlock leaves the lock to the session: dropping the connection releases it.
        let released = self.with("releasing the writers' lock", |c| {
            Box::pin(async move {
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(WRITERS_LOCK)
                    .execute(&mut *c)
                    .await?;
                Ok(())
            })
        });
        if let Err(e) = released {
            tracing::warn!(error = %e, "KMS store: releasing the writers' lock failed; dropping the connection");
            *self
                .connection
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_named_without_its_password_or_parameters() {
        assert_eq!(
            redacted("postgres://kms:s3cret@10.0.2.2:5432/coffer?password=x&sslmode=disable"),
            "postgres://kms@10.0.2.2:5432/coffer"
        );
        assert_eq!(
            redacted("postgresql://10.0.2.2/coffer"),
            "postgresql://10.0.2.2/coffer"
        );
        assert_eq!(redacted("garbage"), "postgres://(unparsable URL)");
    }
}
