//! Sealed state on untrusted storage: a [`redb`] file on the VM's data disk in which every
//! record is AES-256-GCM-sealed under a key only this KMS image can derive.
//!
//! **The sealing key** comes from the platform ([`SealingKey::from_platform`]:
//! `EvidenceProvider::sealing_key(b"coffer-kms state v1")`): on SEV-SNP the firmware's derived
//! key bound to the launch measurement and policy, on sim the simulated equivalent. Another image
//! (another measurement), another policy or another chip derives another key, and the store does
//! not open: [`StoreError::SealedByAnotherKey`].
//!
//! **A record** is `format (1) ‖ nonce (12) ‖ ciphertext ‖ tag (16)` with associated data
//! `"coffer-kms record v1" ‖ table ‖ key ‖ format`: moved to another key or table, altered, or
//! re-labelled with another format, it fails to open ([`StoreError::Tampered`], naming it).
//!
//! **The state record** (`meta/state`) holds the state version, raised by every commit, the
//! [digest](crate::digest) of every other record, and what the rollback anchor keeps in the state
//! ([`VersionAnchor::state_data`]: the witness quorum's instance id and witness sets). Opening
//! checks, in this order: the header's sealing-key id (which key sealed this store), the state
//! record, the version against the [rollback anchor](crate::rollback), then every record opens
//! and the set of records is exactly the committed one (nothing deleted, added, or swapped for
//! an older sealed copy). Only then is the store used. [`Store::verify`] repeats the record checks on demand.
//!
//! **Durability:** every [`Store::commit`] is one redb write transaction with
//! `Durability::Immediate` (data and the new root are fsynced before it returns); a crash leaves
//! the previous or the new state, never a mix. Then the anchor advances, then the caller may
//! acknowledge.
//!
//! **Trusts:** the platform for the sealing key, the anchor for the newest version, and redb for
//! atomicity and durability (not for integrity: a redb file the host rewrote is caught by the
//! checks above). Record *sizes* and *counts* and the table and key names (org ids, key ids) are
//! visible to the host: keys are names, not secrets.

use std::fmt;
use std::path::{Path, PathBuf};

use coffer_evidence::{EvidenceError, EvidenceProvider};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::crypto::{self, AeadFailure, KEY_LEN};
use crate::digest::StateDigest;
use crate::rollback::{self, AnchorError, Verdict, VersionAnchor};

pub mod disk;

use self::disk::{DiskBackend, DiskError, Status};

/// Where a store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A file in a filesystem (tests, tools, hosts).
    File(PathBuf),
    /// A raw block device, the appliance's data disk ([`disk`]): no filesystem.
    Disk(PathBuf),
}

impl Location {
    /// The file or device.
    pub fn path(&self) -> &Path {
        match self {
            Location::File(p) | Location::Disk(p) => p,
        }
    }
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Self {
        Location::File(path.to_owned())
    }
}

impl From<&PathBuf> for Location {
    fn from(path: &PathBuf) -> Self {
        Location::File(path.clone())
    }
}

/// The context of the platform sealing key for the KMS state.
pub const SEALING_CONTEXT: &[u8] = b"coffer-kms state v1";
/// The format byte of every sealed record this version writes.
pub const RECORD_FORMAT: u8 = 1;

const RECORD_AAD_LABEL: &str = "coffer-kms record v1";
const SEALING_KEY_ID_LABEL: &[u8] = b"coffer-kms sealing key id v1\0";

/// The one table that is not sealed: it holds the sealing key's id (a hash, not the key) so a
/// store opened with another key says so instead of reporting tampering. It decides nothing:
/// a forged id only changes which error the refusal carries.
const HEADER: TableDefinition<&str, &[u8]> = TableDefinition::new("header");
const HEADER_SEALING_KEY_ID: &str = "sealing-key-id";
/// The state record's key in [`Table::Meta`]; it is outside the digest it carries.
const STATE_KEY: &str = "state";

/// A table of sealed records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// KMS-wide records: the root key, and the state record.
    Meta,
    /// One record per org: its KEK versions and their status.
    Orgs,
    /// Wrapped KEKs, `org/version`.
    Keks,
    /// Data-key metadata with the wrapped key, `org/key id`.
    Deks,
}

impl Table {
    /// The table called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Every sealed table.
    pub const ALL: [Table; 4] = [Table::Meta, Table::Orgs, Table::Keks, Table::Deks];

    /// Its name in the file (and in the associated data).
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Orgs => "orgs",
            Table::Keks => "keks",
            Table::Deks => "deks",
        }
    }

    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The platform gave no sealing key.
    #[error("the platform gave no sealing key for the KMS state: {0}")]
    SealingKey(#[source] EvidenceError),
    /// The database file could not be used.
    #[error("{path}: {op}: {reason}")]
    Db {
        /// The store file.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// What redb said.
        reason: String,
    },
    /// The store was sealed under another key: another measurement, policy or platform.
    #[error("{path} was sealed by another KMS image or platform (sealing key id {found}, this guest's is {ours}): refusing to open it")]
    SealedByAnotherKey {
        /// The store file.
        path: PathBuf,
        /// The key id in the store's header.
        found: String,
        /// This guest's sealing key id.
        ours: String,
    },
    /// A record does not open under the sealing key with its table, key and format.
    #[error("record {record} is tampered: {reason}")]
    Tampered {
        /// `table/key`.
        record: String,
        /// Why it failed.
        reason: String,
    },
    /// The set of records is not the one committed.
    #[error("{path}: the records are not the set committed at state version {version}: a record was deleted, added, or replaced by an older sealed copy ({records} records found)")]
    DigestMismatch {
        /// The store file.
        path: PathBuf,
        /// The state version whose digest does not match.
        version: u64,
        /// How many records were found.
        records: usize,
    },
    /// The data disk cannot be used.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The store is older than the anchor.
    #[error("{path} was rolled back: state version {state} < anchor {anchor} ({anchor_name}); refusing to serve from it")]
    RolledBack {
        /// The store file.
        path: PathBuf,
        /// The store's state version.
        state: u64,
        /// The anchor's version.
        anchor: u64,
        /// Which anchor.
        anchor_name: String,
    },
    /// No store, but the anchor shows one existed.
    #[error("{path} holds no KMS state, but the anchor ({anchor_name}) is at version {anchor}: the store was deleted or replaced by an empty one (or the KMS crashed inside its very first initialisation); refusing to start afresh")]
    StateMissing {
        /// The store file.
        path: PathBuf,
        /// The anchor's version.
        anchor: u64,
        /// Which anchor.
        anchor_name: String,
    },
    /// The anchor moved past the store on its own.
    #[error("the anchor ({anchor_name}) is at {anchor}, past the state version {state} just committed: another writer uses this anchor")]
    AnchorAhead {
        /// The state version committed.
        state: u64,
        /// The anchor's version.
        anchor: u64,
        /// Which anchor.
        anchor_name: String,
    },
    /// The commit is durable, but the anchor did not take it: it is not acknowledged (the
    /// caller's memory follows the disk all the same, see [`StoreError::is_durable`]).
    #[error("state version {version} is written but not acknowledged: {source}")]
    NotAnchored {
        /// The version written.
        version: u64,
        /// Why the anchor did not take it.
        source: AnchorError,
    },
    /// The anchor failed.
    #[error(transparent)]
    Anchor(#[from] AnchorError),
    /// A record could not be sealed.
    #[error("sealing record {record}: {reason}")]
    Seal {
        /// `table/key`.
        record: String,
        /// Why.
        reason: String,
    },
}

/// Whether a [`Store::commit`] result left the write on disk: `Ok`, or [`StoreError::NotAnchored`]
/// (durable, not acknowledged). Whoever keeps records in memory takes the write in either case,
/// so memory never disagrees with the disk it will be reopened from.
pub fn is_durable(result: &Result<u64, StoreError>) -> bool {
    matches!(result, Ok(_) | Err(StoreError::NotAnchored { .. }))
}

/// The platform key that seals the store.
pub struct SealingKey {
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealingKey(id {}, key [redacted])", self.id_hex())
    }
}

impl SealingKey {
    /// The KMS state key of this guest: `provider.sealing_key(b"coffer-kms state v1")`.
    pub fn from_platform(provider: &dyn EvidenceProvider) -> Result<Self, StoreError> {
        let key = provider
            .sealing_key(SEALING_CONTEXT)
            .map_err(StoreError::SealingKey)?;
        Ok(Self { key })
    }

    /// A public id of the key: the first 16 bytes of SHA-256(label ‖ key). It tells two keys
    /// apart and reveals nothing usable about a 256-bit key.
    pub fn id(&self) -> [u8; 16] {
        let hash = Sha256::new()
            .chain_update(SEALING_KEY_ID_LABEL)
            .chain_update(&self.key[..])
            .finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash[..16]);
        id
    }

    fn id_hex(&self) -> String {
        hex::encode(self.id())
    }

    fn seal(&self, table: &str, key: &str, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let aad = record_aad(table, key, RECORD_FORMAT);
        let body = crypto::seal(&self.key, &aad, plaintext).map_err(|e| StoreError::Seal {
            record: format!("{table}/{key}"),
            reason: format!("{e:?}"),
        })?;
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(RECORD_FORMAT);
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn open(
        &self,
        table: &str,
        key: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let tampered = |reason: String| StoreError::Tampered {
            record: format!("{table}/{key}"),
            reason,
        };
        let Some((&format, body)) = sealed.split_first() else {
            return Err(tampered("empty".into()));
        };
        if format != RECORD_FORMAT {
            return Err(tampered(format!("unknown record format {format}")));
        }
        crypto::open(&self.key, &record_aad(table, key, format), body).map_err(|e| match e {
            AeadFailure::TooShort(n) => tampered(format!("{n} bytes, too short to be sealed")),
            _ => tampered(
                "it does not authenticate under this table, key and format (altered, or moved from another record)"
                    .into(),
            ),
        })
    }
}

fn record_aad(table: &str, key: &str, format: u8) -> Vec<u8> {
    crypto::aad(
        RECORD_AAD_LABEL,
        &[table.as_bytes(), key.as_bytes(), &[format]],
    )
}

/// Writes to commit together.
#[derive(Default)]
pub struct Batch {
    ops: Vec<Op>,
}

enum Op {
    Put {
        table: Table,
        key: String,
        plaintext: Zeroizing<Vec<u8>>,
    },
    Remove {
        table: Table,
        key: String,
    },
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for op in &self.ops {
            match op {
                Op::Put { table, key, .. } => {
                    list.entry(&format_args!("put {}/{key}", table.name()))
                }
                Op::Remove { table, key } => {
                    list.entry(&format_args!("remove {}/{key}", table.name()))
                }
            };
        }
        list.finish()
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `plaintext` (copied into a wiped-on-drop buffer) at `table/key`.
    pub fn put(&mut self, table: Table, key: impl Into<String>, plaintext: &[u8]) -> &mut Self {
        self.ops.push(Op::Put {
            table,
            key: key.into(),
            plaintext: Zeroizing::new(plaintext.to_vec()),
        });
        self
    }

    /// Removes `table/key` (nothing if absent).
    pub fn remove(&mut self, table: Table, key: impl Into<String>) -> &mut Self {
        self.ops.push(Op::Remove {
            table,
            key: key.into(),
        });
        self
    }
}

/// A record's key and its opened plaintext (wiped on drop).
pub type Record = (String, Zeroizing<Vec<u8>>);

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The state version.
    pub version: u64,
    /// Sealed records checked (the state record not counted).
    pub records: usize,
}

/// An open, verified KMS store.
pub struct Store {
    db: Database,
    path: PathBuf,
    sealing: SealingKey,
    anchor: Box<dyn VersionAnchor>,
    version: u64,
    digest: StateDigest,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("anchor", &self.anchor.describe())
            .finish_non_exhaustive()
    }
}

fn db_error(path: &Path, op: &'static str) -> impl Fn(redb::Error) -> StoreError {
    let path = path.to_owned();
    move |e| StoreError::Db {
        path: path.clone(),
        op,
        reason: e.to_string(),
    }
}

fn io_error(path: &Path, op: &'static str) -> impl Fn(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |e| StoreError::Db {
        path: path.clone(),
        op,
        reason: e.to_string(),
    }
}

/// Creates a new store at `path`: only if the anchor never saw one (else the old one was
/// deleted). The file is built under a staging name and renamed into place once its first
/// commit is durable, so a crash during creation never leaves a half-made store at `path`
/// (redb cannot open a file killed inside `Database::create`: the crash test found that).
fn create_file(
    path: &Path,
    sealing: &SealingKey,
    anchor: &mut dyn VersionAnchor,
) -> Result<(), StoreError> {
    let version = first_version(path, anchor)?;
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
        let db =
            Database::create(&staging).map_err(|e| db_error(&staging, "creating")(e.into()))?;
        first_commit(&db, &staging, sealing, version, &anchor.state_data())?;
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
    sealing: &SealingKey,
    anchor: &mut dyn VersionAnchor,
) -> Result<Database, StoreError> {
    let path = disk.path().to_owned();
    let version = first_version(&path, anchor)?;
    disk.begin_create()?;
    let db = Database::builder()
        .create_with_backend(disk.clone())
        .map_err(|e| db_error(&path, "creating")(e.into()))?;
    first_commit(&db, &path, sealing, version, &anchor.state_data())?;
    disk.mark_ready()?;
    Ok(db)
}

/// The version a new store starts at: only if the anchor never saw a store (else the old one
/// was deleted). The anchor is set first and the store starts at its value: a TPM counter's
/// first value is not ours to choose.
fn first_version(path: &Path, anchor: &mut dyn VersionAnchor) -> Result<u64, StoreError> {
    if let Some(version) = anchor.read()? {
        return Err(StoreError::StateMissing {
            path: path.to_owned(),
            anchor: version,
            anchor_name: anchor.describe(),
        });
    }
    Ok(anchor.advance_to(1)?)
}

/// The sealed state record: `version (8, big-endian) ‖ digest ‖ the anchor's data` (the
/// anchor's part is empty for anchors that keep nothing in the state).
fn seal_state(
    sealing: &SealingKey,
    version: u64,
    digest: &StateDigest,
    anchor_data: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let mut plain = version.to_be_bytes().to_vec();
    plain.extend_from_slice(&digest.to_bytes());
    plain.extend_from_slice(anchor_data);
    sealing.seal(Table::Meta.name(), STATE_KEY, &plain)
}

/// The first, durable commit of a new store: its header, its tables and its state record.
fn first_commit(
    db: &Database,
    path: &Path,
    sealing: &SealingKey,
    version: u64,
    anchor_data: &[u8],
) -> Result<(), StoreError> {
    let err = |op| db_error(path, op);
    {
        let state = seal_state(sealing, version, &StateDigest::default(), anchor_data)?;
        let mut txn = db.begin_write().map_err(|e| err("creating")(e.into()))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut header = txn
                .open_table(HEADER)
                .map_err(|e| err("creating the header")(e.into()))?;
            header
                .insert(HEADER_SEALING_KEY_ID, sealing.id().as_slice())
                .map_err(|e| err("writing the header")(e.into()))?;
            for table in Table::ALL {
                let mut t = txn
                    .open_table(table.def())
                    .map_err(|e| err("creating tables")(e.into()))?;
                if table == Table::Meta {
                    t.insert(STATE_KEY, state.as_slice())
                        .map_err(|e| err("writing the state record")(e.into()))?;
                }
            }
        }
        txn.commit().map_err(|e| err("committing")(e.into()))?;
    }
    Ok(())
}

impl Store {
    /// Opens the store at `location`, creating it if there is none (and the anchor agrees that none
    /// ever existed), and verifies it completely before returning (see the module doc).
    pub fn open(
        location: impl Into<Location>,
        sealing: SealingKey,
        mut anchor: Box<dyn VersionAnchor>,
    ) -> Result<Self, StoreError> {
        let location = location.into();
        let path = location.path();
        let db = match &location {
            Location::File(path) => {
                let exists = path.try_exists().map_err(|e| StoreError::Db {
                    path: path.to_owned(),
                    op: "checking for the store",
                    reason: e.to_string(),
                })?;
                if !exists {
                    create_file(path, &sealing, anchor.as_mut())?;
                }
                Database::open(path).map_err(|e| db_error(path, "opening")(e.into()))?
            }
            Location::Disk(path) => match DiskBackend::open(path)? {
                (disk, Status::Empty) => create_on_disk(disk, &sealing, anchor.as_mut())?,
                (disk, Status::Ready) => Database::builder()
                    .create_with_backend(disk)
                    .map_err(|e| db_error(path, "opening")(e.into()))?,
            },
        };
        let found_id = {
            let read = db
                .begin_read()
                .map_err(|e| db_error(path, "reading")(e.into()))?;
            match read.open_table(HEADER) {
                Ok(table) => table
                    .get(HEADER_SEALING_KEY_ID)
                    .map_err(|e| db_error(path, "reading the header")(e.into()))?
                    .map(|v| v.value().to_vec()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(db_error(path, "reading the header")(e.into())),
            }
        };
        // A store only ever appears at `path` complete with its header (see `create_file`).
        let found = found_id.ok_or_else(|| StoreError::Tampered {
            record: format!("header/{HEADER_SEALING_KEY_ID}"),
            reason: "missing".into(),
        })?;
        if found != sealing.id() {
            return Err(StoreError::SealedByAnotherKey {
                path: path.to_owned(),
                found: hex::encode(found),
                ours: sealing.id_hex(),
            });
        }
        let mut store = Self {
            db,
            path: path.to_owned(),
            sealing,
            anchor,
            version: 0,
            digest: StateDigest::default(),
        };
        store.load()?;
        Ok(store)
    }

    fn db_err(&self, op: &'static str) -> impl Fn(redb::Error) -> StoreError + '_ {
        db_error(&self.path, op)
    }

    fn load(&mut self) -> Result<(), StoreError> {
        let state_name = format!("{}/{STATE_KEY}", Table::Meta.name());
        let sealed =
            self.get_sealed(Table::Meta, STATE_KEY)?
                .ok_or_else(|| StoreError::Tampered {
                    record: state_name.clone(),
                    reason: "missing".into(),
                })?;
        let plain = self.sealing.open(Table::Meta.name(), STATE_KEY, &sealed)?;
        let malformed = || StoreError::Tampered {
            record: state_name.clone(),
            reason: "malformed".into(),
        };
        let (version, rest) = plain.split_at_checked(8).ok_or_else(malformed)?;
        let version = u64::from_be_bytes(version.try_into().map_err(|_| malformed())?);
        let (digest, anchor_data) = rest
            .split_at_checked(crate::digest::DIGEST_LEN)
            .ok_or_else(malformed)?;
        let digest = StateDigest::from_bytes(digest).ok_or_else(malformed)?;
        let state_hash: [u8; 32] = Sha256::digest(&sealed).into();

        self.anchor.load_state(version, &state_hash, anchor_data)?;
        let anchored = self.anchor.read()?;
        if let Verdict::RolledBack { state, anchor } = rollback::check(version, anchored) {
            return Err(StoreError::RolledBack {
                path: self.path.clone(),
                state,
                anchor,
                anchor_name: self.anchor.describe(),
            });
        }
        let (records, found) = self.digest_records()?;
        if found != digest {
            return Err(StoreError::DigestMismatch {
                path: self.path.clone(),
                version,
                records,
            });
        }
        self.version = version;
        self.digest = digest;
        // The store may be ahead of the anchor by a write that committed just before a crash.
        self.anchor_to(version, &state_hash)
    }

    fn anchor_to(&mut self, version: u64, state_hash: &[u8; 32]) -> Result<(), StoreError> {
        let anchored = self.anchor.committed(version, state_hash)?;
        if anchored > version {
            return Err(StoreError::AnchorAhead {
                state: version,
                anchor: anchored,
                anchor_name: self.anchor.describe(),
            });
        }
        Ok(())
    }

    /// Opens every sealed record and returns their count and digest.
    fn digest_records(&self) -> Result<(usize, StateDigest), StoreError> {
        let read = self
            .db
            .begin_read()
            .map_err(|e| self.db_err("reading")(e.into()))?;
        let mut digest = StateDigest::default();
        let mut records = 0;
        for table in Table::ALL {
            let t = read
                .open_table(table.def())
                .map_err(|e| self.db_err("opening a table")(e.into()))?;
            for entry in t
                .iter()
                .map_err(|e| self.db_err("listing records")(e.into()))?
            {
                let (key, value) = entry.map_err(|e| self.db_err("reading a record")(e.into()))?;
                let (key, sealed) = (key.value(), value.value());
                if table == Table::Meta && key == STATE_KEY {
                    continue;
                }
                // Opened to prove it authenticates; the plaintext is wiped at once.
                drop(self.sealing.open(table.name(), key, sealed)?);
                digest.add(table.name(), key, sealed);
                records += 1;
            }
        }
        Ok((records, digest))
    }

    /// Checks the store again as opening did: every record opens, and they are exactly the set
    /// committed at the current state version.
    pub fn verify(&self) -> Result<Verified, StoreError> {
        let (records, digest) = self.digest_records()?;
        if digest != self.digest {
            return Err(StoreError::DigestMismatch {
                path: self.path.clone(),
                version: self.version,
                records,
            });
        }
        Ok(Verified {
            version: self.version,
            records,
        })
    }

    /// The state version: how many commits this store has seen (plus the anchor's start).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the store, giving back its sealing key and anchor (to reopen it).
    pub(crate) fn into_parts(self) -> (SealingKey, Box<dyn VersionAnchor>) {
        (self.sealing, self.anchor)
    }

    /// The anchor, as [`VersionAnchor::describe`] says.
    pub fn anchor(&self) -> String {
        self.anchor.describe()
    }

    fn get_sealed(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self
            .db
            .begin_read()
            .map_err(|e| self.db_err("reading")(e.into()))?;
        let t = read
            .open_table(table.def())
            .map_err(|e| self.db_err("opening a table")(e.into()))?;
        let value = t
            .get(key)
            .map_err(|e| self.db_err("reading a record")(e.into()))?
            .map(|v| v.value().to_vec());
        Ok(value)
    }

    /// The plaintext of `table/key`, if present.
    pub fn get(&self, table: Table, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        self.get_sealed(table, key)?
            .map(|sealed| self.sealing.open(table.name(), key, &sealed))
            .transpose()
    }

    /// Every record of `table` whose key starts with `prefix`, opened, in key order.
    pub fn scan(&self, table: Table, prefix: &str) -> Result<Vec<Record>, StoreError> {
        let read = self
            .db
            .begin_read()
            .map_err(|e| self.db_err("reading")(e.into()))?;
        let t = read
            .open_table(table.def())
            .map_err(|e| self.db_err("opening a table")(e.into()))?;
        let mut out = Vec::new();
        for entry in t
            .range(prefix..)
            .map_err(|e| self.db_err("listing records")(e.into()))?
        {
            let (key, value) = entry.map_err(|e| self.db_err("reading a record")(e.into()))?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            if table == Table::Meta && key == STATE_KEY {
                continue;
            }
            out.push((
                key.to_owned(),
                self.sealing.open(table.name(), key, value.value())?,
            ));
        }
        Ok(out)
    }

    /// How many records `table` holds.
    pub fn len(&self, table: Table) -> Result<u64, StoreError> {
        let read = self
            .db
            .begin_read()
            .map_err(|e| self.db_err("reading")(e.into()))?;
        let t = read
            .open_table(table.def())
            .map_err(|e| self.db_err("opening a table")(e.into()))?;
        t.len()
            .map_err(|e| self.db_err("counting records")(e.into()))
    }

    /// Whether the store holds no record but its own state record (just created). Counts only:
    /// the records were checked when the store was opened.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        let mut records = 0;
        for table in Table::ALL {
            records += self.len(table)?;
        }
        Ok(records <= 1)
    }

    /// Commits `batch` and a new state version in one durable transaction, then advances the
    /// anchor. When this returns `Ok`, the write survives a crash and cannot be rolled back
    /// (where an anchor exists): the caller may acknowledge it. Returns the new version.
    pub fn commit(&mut self, batch: Batch) -> Result<u64, StoreError> {
        let version = self
            .version
            .checked_add(1)
            .ok_or_else(|| StoreError::Seal {
                record: "meta/state".into(),
                reason: "the state version would overflow".into(),
            })?;
        let mut digest = self.digest.clone();
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| self.db_err("writing")(e.into()))?;
        txn.set_durability(Durability::Immediate);
        for op in &batch.ops {
            let (table, key) = match op {
                Op::Put { table, key, .. } | Op::Remove { table, key } => (*table, key.as_str()),
            };
            if table == Table::Meta && key == STATE_KEY {
                return Err(StoreError::Seal {
                    record: "meta/state".into(),
                    reason: "reserved for the store's own state record".into(),
                });
            }
            let mut t = txn
                .open_table(table.def())
                .map_err(|e| self.db_err("opening a table")(e.into()))?;
            // The digest loses what the record held in the file (if the host changed it in the
            // meantime, the digest stops matching and the next open says so).
            let old = t
                .get(key)
                .map_err(|e| self.db_err("reading a record")(e.into()))?
                .map(|v| v.value().to_vec());
            if let Some(old) = old {
                digest.remove(table.name(), key, &old);
            }
            match op {
                Op::Put { plaintext, .. } => {
                    let sealed = self.sealing.seal(table.name(), key, plaintext)?;
                    t.insert(key, sealed.as_slice())
                        .map_err(|e| self.db_err("writing a record")(e.into()))?;
                    digest.add(table.name(), key, &sealed);
                }
                Op::Remove { .. } => {
                    t.remove(key)
                        .map_err(|e| self.db_err("removing a record")(e.into()))?;
                }
            }
        }
        let state = seal_state(&self.sealing, version, &digest, &self.anchor.state_data())?;
        let state_hash: [u8; 32] = Sha256::digest(&state).into();
        {
            let mut meta = txn
                .open_table(Table::Meta.def())
                .map_err(|e| self.db_err("opening a table")(e.into()))?;
            meta.insert(STATE_KEY, state.as_slice())
                .map_err(|e| self.db_err("writing the state record")(e.into()))?;
        }
        txn.commit()
            .map_err(|e| self.db_err("committing")(e.into()))?;
        self.version = version;
        self.digest = digest;
        self.anchor_to(version, &state_hash).map_err(|e| match e {
            StoreError::Anchor(source) => StoreError::NotAnchored { version, source },
            other => other,
        })?;
        Ok(version)
    }
}
