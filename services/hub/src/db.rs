//! The database: one portable schema (`migrations/`) on SQLite or PostgreSQL through sqlx's
//! Any driver. Queries use `$1`-style parameters, which both backends accept.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

/// The embedded migrations (applied at start-up, in order, each once).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL names neither SQLite nor PostgreSQL.
    #[error("database URL must start with sqlite:// or postgres:// (got {0:?})")]
    UnsupportedUrl(String),
    /// Connecting failed.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed (the database is left as it was before that migration).
    #[error("cannot migrate the database: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// Another hub process holds the database.
    #[error("another coffer-hub uses this database ({0}); one hub process writes to a database at a time")]
    Locked(String),
    /// Taking the lock failed.
    #[error("cannot lock the database: {0}")]
    Lock(String),
}

/// The hub's exclusive hold on its database, released when dropped (or when the process
/// ends): the write lock, the audit log's indices and its in-memory tree are per process, so
/// a second hub on the same database would make both wrong. SQLite: an `flock` on
/// `<database>.hub-lock`; PostgreSQL: a session advisory lock held on a connection of its own.
pub enum DbLock {
    /// SQLite's lock file.
    Sqlite(nix::fcntl::Flock<std::fs::File>),
    /// PostgreSQL's connection holding the advisory lock (in a mutex only so that the hub is
    /// `Sync`; it is never used again).
    Postgres(std::sync::Mutex<sqlx::AnyConnection>),
    /// An in-memory SQLite database: nobody else can open it.
    Memory,
}

impl std::fmt::Debug for DbLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sqlite(_) => "DbLock::Sqlite",
            Self::Postgres(_) => "DbLock::Postgres",
            Self::Memory => "DbLock::Memory",
        })
    }
}

/// The advisory lock key on PostgreSQL: "cofferhb" in ASCII.
const PG_LOCK_KEY: i64 = 0x636f_6666_6572_6862;

/// Takes the hub's exclusive hold on the database at `url` (see [`DbLock`]).
pub async fn lock_exclusive(url: &str, pool: &AnyPool) -> Result<DbLock, DbError> {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.trim_start_matches("//");
        let path = path.split('?').next().unwrap_or(path);
        if path.is_empty() || path.starts_with(':') {
            return Ok(DbLock::Memory);
        }
        let lock_path = format!("{path}.hub-lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| DbError::Lock(format!("{lock_path}: {e}")))?;
        return match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(DbLock::Sqlite(lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                Err(DbError::Locked(format!("{lock_path} is locked")))
            }
            Err((_, e)) => Err(DbError::Lock(format!("{lock_path}: {e}"))),
        };
    }
    let mut conn = pool.acquire().await.map_err(DbError::Connect)?.detach();
    let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1) AS got")
        .bind(PG_LOCK_KEY)
        .fetch_one(&mut conn)
        .await
        .and_then(|row| sqlx::Row::try_get(&row, "got"))
        .map_err(|e| DbError::Lock(e.to_string()))?;
    if got {
        Ok(DbLock::Postgres(std::sync::Mutex::new(conn)))
    } else {
        Err(DbError::Locked(format!(
            "advisory lock {PG_LOCK_KEY:#x} is held"
        )))
    }
}

/// Connects to `url` and applies the migrations. SQLite files are created if missing and run
/// in WAL mode with full fsync (an acknowledged write survives a power cut).
pub async fn connect(url: &str) -> Result<AnyPool, DbError> {
    sqlx::any::install_default_drivers();
    let sqlite = url.starts_with("sqlite:");
    if !sqlite && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        return Err(DbError::UnsupportedUrl(redact(url)));
    }
    let url = if sqlite && !url.contains("mode=") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}mode=rwc")
    } else {
        url.to_owned()
    };
    let options: AnyConnectOptions = url.parse().map_err(DbError::Connect)?;
    let pool = AnyPoolOptions::new()
        .max_connections(if sqlite { 4 } else { 16 })
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;")
                        .await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(DbError::Connect)?;
    MIGRATOR.run(&pool).await.map_err(DbError::Migrate)?;
    Ok(pool)
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Seconds since the Unix epoch, as the database stores times.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A fresh random id: `prefix` and 16 random bytes in hex.
pub fn new_id(prefix: &str) -> String {
    use rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_repeated_in_messages() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/x"),
            "postgres://***@db:5432/x"
        );
        assert_eq!(redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }

    #[tokio::test]
    async fn other_databases_are_refused_by_name() {
        let err = connect("mysql://h/db").await.err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("database URL must start with sqlite:// or postgres:// (got \"mysql://h/db\")")
        );
    }
}
