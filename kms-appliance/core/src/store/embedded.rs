//! The embedded backend: a [`redb`] database in a file or on the appliance's raw data disk
//! ([`super::disk`]). One process owns it (redb locks a file; the disk is `flock`ed), so there is
//! no writers' lock to take.
//!
//! The database is shared (an [`Arc`]) with the audit journal's records ([`super::journal`]),
//! which live in a table of their own outside the sealed state; redb runs one write
//! transaction at a time, so a journal flush and a state commit simply take turns.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::disk::{DiskBackend, Status};
use super::{Backend, Change, Location, StoreError, Table, HEADER_SEALING_KEY_ID, STATE_KEY};

/// The one table that is not sealed: it holds the sealing key's id (see [`Backend::header`]).
const HEADER: TableDefinition<&str, &[u8]> = TableDefinition::new("header");

fn def(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table.name())
}

/// A redb database holding the sealed records.
pub(super) struct Embedded {
    db: Arc<Database>,
    name: String,
}

fn db_error(name: &str, op: &'static str) -> impl Fn(redb::Error) -> StoreError {
    let name = name.to_owned();
    move |e| StoreError::Db {
        store: name.clone(),
        op,
        reason: e.to_string(),
    }
}

fn io_error(path: &Path, op: &'static str) -> impl Fn(std::io::Error) -> StoreError {
    let name = path.display().to_string();
    move |e| StoreError::Db {
        store: name.clone(),
        op,
        reason: e.to_string(),
    }
}

/// Opens the database at `location`, creating it with `first` (the sealing key id and the
/// first sealed state record, made only when needed) if there is none.
pub(super) fn open(
    location: &Location,
    first: &mut dyn FnMut() -> Result<(Vec<u8>, Vec<u8>), StoreError>,
) -> Result<Embedded, StoreError> {
    let name = location.describe();
    let db = match location {
        Location::File(path) => {
            let exists = path
                .try_exists()
                .map_err(io_error(path, "checking for the store"))?;
            if !exists {
                create_file(path, first)?;
            }
            Database::open(path).map_err(|e| db_error(&name, "opening")(e.into()))?
        }
        Location::Disk(path) => match DiskBackend::open(path)? {
            (disk, Status::Empty) => create_on_disk(disk, first)?,
            (disk, Status::Ready) => Database::builder()
                .create_with_backend(disk)
                .map_err(|e| db_error(&name, "opening")(e.into()))?,
        },
        #[cfg(feature = "postgres")]
        Location::Postgres(_) => {
            return Err(StoreError::Db {
                store: name,
                op: "opening",
                reason: "not an embedded store".into(),
            })
        }
    };
    Ok(Embedded {
        db: Arc::new(db),
        name,
    })
}

/// Creates a new store at `path`. The file is built under a staging name and renamed into place
/// once its first commit is durable, so a crash during creation never leaves a half-made store
/// at `path` (redb cannot open a file killed inside `Database::create`: the crash test found
/// that).
fn create_file(
    path: &Path,
    first: &mut dyn FnMut() -> Result<(Vec<u8>, Vec<u8>), StoreError>,
) -> Result<(), StoreError> {
    let (id, state) = first()?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = path.with_file_name(format!(".{name}.creating"));
    // Left by a crash during an earlier creation: it never was the store.
    if staging.exists() {
        std::fs::remove_file(&staging)
            .map_err(io_error(&staging, "removing an unfinished store"))?;
    }
    {
        let staging_name = staging.display().to_string();
        let db = Database::create(&staging)
            .map_err(|e| db_error(&staging_name, "creating")(e.into()))?;
        first_commit(&db, &staging_name, &id, &state)?;
    }
    std::fs::rename(&staging, path).map_err(io_error(path, "moving the new store into place"))?;
    // The rename itself must be durable before anything is acknowledged from this store.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(parent, "syncing the store's directory"))?;
    }
    Ok(())
}

/// Creates a new store on a data disk, under the same rule as [`create_file`]: the header says
/// *creating* until the first commit is durable, and only then *ready*.
fn create_on_disk(
    disk: DiskBackend,
    first: &mut dyn FnMut() -> Result<(Vec<u8>, Vec<u8>), StoreError>,
) -> Result<Database, StoreError> {
    let name = disk.path().display().to_string();
    let (id, state) = first()?;
    disk.begin_create()?;
    let db = Database::builder()
        .create_with_backend(disk.clone())
        .map_err(|e| db_error(&name, "creating")(e.into()))?;
    first_commit(&db, &name, &id, &state)?;
    disk.mark_ready()?;
    Ok(db)
}

/// The first, durable commit of a new store: its header, its tables and its state record.
fn first_commit(db: &Database, name: &str, id: &[u8], state: &[u8]) -> Result<(), StoreError> {
    let err = |op| db_error(name, op);
    let mut txn = db.begin_write().map_err(|e| err("creating")(e.into()))?;
    txn.set_durability(Durability::Immediate);
    {
        let mut header = txn
            .open_table(HEADER)
            .map_err(|e| err("creating the header")(e.into()))?;
        header
            .insert(HEADER_SEALING_KEY_ID, id)
            .map_err(|e| err("writing the header")(e.into()))?;
        for table in Table::ALL {
            let mut t = txn
                .open_table(def(table))
                .map_err(|e| err("creating tables")(e.into()))?;
            if table == Table::Meta {
                t.insert(STATE_KEY, state)
                    .map_err(|e| err("writing the state record")(e.into()))?;
            }
        }
    }
    txn.commit().map_err(|e| err("committing")(e.into()))
}

impl Embedded {
    fn err(&self, op: &'static str) -> impl Fn(redb::Error) -> StoreError + '_ {
        db_error(&self.name, op)
    }

    fn read_table<T>(
        &self,
        table: Table,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static str, &'static [u8]>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let read = self
            .db
            .begin_read()
            .map_err(|e| self.err("reading")(e.into()))?;
        let t = read
            .open_table(def(table))
            .map_err(|e| self.err("opening a table")(e.into()))?;
        f(&t)
    }
}

impl Backend for Embedded {
    fn name(&self) -> &str {
        &self.name
    }

    fn journal_db(&self) -> Option<Arc<Database>> {
        Some(self.db.clone())
    }

    fn header(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self
            .db
            .begin_read()
            .map_err(|e| self.err("reading")(e.into()))?;
        match read.open_table(HEADER) {
            Ok(table) => Ok(table
                .get(HEADER_SEALING_KEY_ID)
                .map_err(|e| self.err("reading the header")(e.into()))?
                .map(|v| v.value().to_vec())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.err("reading the header")(e.into())),
        }
    }

    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_table(table, |t| {
            Ok(t.get(key)
                .map_err(|e| self.err("reading a record")(e.into()))?
                .map(|v| v.value().to_vec()))
        })
    }

    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read_table(table, |t| {
            let mut out = Vec::new();
            for entry in t
                .range(prefix..)
                .map_err(|e| self.err("listing records")(e.into()))?
            {
                let (key, value) = entry.map_err(|e| self.err("reading a record")(e.into()))?;
                let key = key.value();
                if !key.starts_with(prefix) {
                    break;
                }
                out.push((key.to_owned(), value.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn len(&self, table: Table) -> Result<u64, StoreError> {
        self.read_table(table, |t| {
            t.len().map_err(|e| self.err("counting records")(e.into()))
        })
    }

    fn write(
        &mut self,
        expected: &[u8],
        changes: &[Change],
        state: &[u8],
        _version: u64,
    ) -> Result<(), StoreError> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| self.err("writing")(e.into()))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut meta = txn
                .open_table(def(Table::Meta))
                .map_err(|e| self.err("opening a table")(e.into()))?;
            let current = meta
                .get(STATE_KEY)
                .map_err(|e| self.err("reading the state record")(e.into()))?
                .map(|v| v.value().to_vec());
            if current.as_deref() != Some(expected) {
                return Err(StoreError::Moved {
                    store: self.name.clone(),
                });
            }
            meta.insert(STATE_KEY, state)
                .map_err(|e| self.err("writing the state record")(e.into()))?;
        }
        for change in changes {
            let mut t = txn
                .open_table(def(change.table))
                .map_err(|e| self.err("opening a table")(e.into()))?;
            match &change.sealed {
                Some(sealed) => {
                    t.insert(change.key.as_str(), sealed.as_slice())
                        .map_err(|e| self.err("writing a record")(e.into()))?;
                }
                None => {
                    t.remove(change.key.as_str())
                        .map_err(|e| self.err("removing a record")(e.into()))?;
                }
            }
        }
        txn.commit().map_err(|e| self.err("committing")(e.into()))
    }
}
