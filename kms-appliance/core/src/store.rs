//! Sealed state on untrusted storage: records AES-256-GCM-sealed under a key only this KMS image
//! can derive, kept by a [`Backend`] that is trusted for nothing but keeping bytes: a [`redb`]
//! database on the VM's data disk (or in a file) by default, or a PostgreSQL database shared
//! by the replicas of a deployment ([`postgres`], feature `postgres`).
//!
//! **The sealing key** comes from the platform ([`SealingKey::from_platform`]:
//! `EvidenceProvider::sealing_key(b"coffer-kms state v1")`): on SEV-SNP the firmware's derived
//! key bound to the launch measurement and policy, on sim the simulated equivalent, on Azure a
//! secret sealed in the vTPM to the boot PCRs 4, 9, 11 (`coffer_vtpm_provider::seal`). Another
//! image (another measurement), another policy or another chip derives another key, and the store
//! does not open: [`StoreError::SealedByAnotherKey`]; on Azure another image gets no key at all
//! (the vTPM refuses to unseal: [`StoreError::SealingKey`]).
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
//! **Durability:** every [`Store::commit`] is one backend transaction, durable when it returns
//! (redb: `Durability::Immediate`, data and the new root fsynced; PostgreSQL: COMMIT); a crash
//! leaves the previous or the new state, never a mix. Then the anchor advances, then the caller
//! may acknowledge.
//!
//! **A shared store** (PostgreSQL) is sealed under a key derived from the root key, which every
//! replica holds in its own platform-sealed store ([`crate::Kms::open_shared`]): the platform
//! keys of two chips differ. Replicas write one at a time under the database's writers' lock
//! ([`Store::lock_writers`], held across the commit and the anchor, so witnesses see versions
//! in order), and each write first checks that the state record is still the one this process
//! read ([`StoreError::Moved`]). A replica takes in the others' writes with [`Store::sync`],
//! which checks the new state as an open does and never accepts an older one.
//!
//! **The audit journal** ([`journal`]) keeps its records in the same embedded database, in a
//! table of its own that is *not* part of the state: not in the digest, not counted by the
//! state version, never told to the rollback anchor (a journal flush every half second must
//! not talk to witnesses). Its records are sealed under the same key with their own associated
//! data (journal id and sequence number), so the host cannot forge, alter, reorder or move
//! them; it can delete them or roll the file back, which loses decisions not yet collected.
//! Only embedded stores keep a journal ([`Store::journal`]): a replica of a shared store keeps
//! its journal in its own local store.
//!
//! **Trusts:** the platform for the sealing key (and, for a shared store, the replicas' join
//! for the root key), the anchor for the newest version, and the backend for atomicity and
//! durability (not for integrity: records the host rewrote are caught by the checks above).
//! Record *sizes* and *counts* and the table and key names (org ids, key ids) are visible to the
//! host: keys are names, not secrets.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use coffer_evidence::{EvidenceError, EvidenceProvider};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::crypto::{self, AeadFailure, KEY_LEN};
use crate::digest::StateDigest;
use crate::rollback::{self, AnchorError, Verdict, VersionAnchor};

pub mod disk;
mod embedded;
pub mod journal;
#[cfg(feature = "postgres")]
pub mod postgres;

use self::disk::DiskError;
use self::journal::JournalStore;

/// Where a store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A file in a filesystem (tests, tools, hosts).
    File(PathBuf),
    /// A raw block device, the appliance's data disk ([`disk`]): no filesystem.
    Disk(PathBuf),
    /// A PostgreSQL database shared by the replicas of one deployment ([`postgres`]): the
    /// connection URL.
    #[cfg(feature = "postgres")]
    Postgres(String),
}

impl Location {
    /// The store's name for messages: the path, or the database URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::File(p) | Location::Disk(p) => p.display().to_string(),
            #[cfg(feature = "postgres")]
            Location::Postgres(url) => postgres::redacted(url),
        }
    }

    /// Whether several KMS processes write this store (so a write checks first that no other
    /// replica wrote since: [`StoreError::Moved`]).
    pub fn is_shared(&self) -> bool {
        !matches!(self, Location::File(_) | Location::Disk(_))
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
/// How long opening a shared store waits for the witnesses its state lists.
const SHARED_OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// The format byte of every sealed record this version writes.
pub const RECORD_FORMAT: u8 = 1;

const RECORD_AAD_LABEL: &str = "coffer-kms record v1";
const SEALING_KEY_ID_LABEL: &[u8] = b"coffer-kms sealing key id v1\0";

/// The header's one entry, the sealing key's id (see [`Backend::header`]).
const HEADER_SEALING_KEY_ID: &str = "sealing-key-id";
/// The state record's key in [`Table::Meta`]; it is outside the digest it carries.
const STATE_KEY: &str = "state";

/// A table of sealed records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
}

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The platform gave no sealing key.
    #[error("the platform gave no sealing key for the KMS state: {0}")]
    SealingKey(#[source] EvidenceError),
    /// The database file could not be used.
    #[error("{store}: {op}: {reason}")]
    Db {
        /// The store ([`Location::describe`]).
        store: String,
        /// The operation.
        op: &'static str,
        /// What the database said.
        reason: String,
    },
    /// A shared store's state moved on since this process read it: another replica wrote
    /// without the writers' lock (which [`crate::Kms`] takes around every write). Nothing was
    /// written.
    #[error("{store}: another KMS replica wrote since this one read the state, despite the writers' lock; nothing was written")]
    Moved {
        /// The store.
        store: String,
    },
    /// The store was sealed under another key: another measurement, policy or platform.
    #[error("{store} was sealed by another KMS image or platform (sealing key id {found}, this guest's is {ours}): refusing to open it")]
    SealedByAnotherKey {
        /// The store ([`Location::describe`]).
        store: String,
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
    #[error("{store}: the records are not the set committed at state version {version}: a record was deleted, added, or replaced by an older sealed copy ({records} records found)")]
    DigestMismatch {
        /// The store ([`Location::describe`]).
        store: String,
        /// The state version whose digest does not match.
        version: u64,
        /// How many records were found.
        records: usize,
    },
    /// The data disk cannot be used.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The store is older than the anchor.
    #[error("{store} was rolled back: state version {state} < anchor {anchor} ({anchor_name}); refusing to serve from it")]
    RolledBack {
        /// The store ([`Location::describe`]).
        store: String,
        /// The store's state version.
        state: u64,
        /// The anchor's version.
        anchor: u64,
        /// Which anchor.
        anchor_name: String,
    },
    /// No store, but the anchor shows one existed.
    #[error("{store} holds no KMS state, but the anchor ({anchor_name}) is at version {anchor}: the store was deleted or replaced by an empty one (or the KMS crashed inside its very first initialisation); refusing to start afresh")]
    StateMissing {
        /// The store ([`Location::describe`]).
        store: String,
        /// The anchor's version.
        anchor: u64,
        /// Which anchor.
        anchor_name: String,
    },
    /// A store used before is not there.
    #[error("{store} holds no KMS state, but this KMS used it before: it was deleted, or the URL names another database; refusing to start afresh")]
    Missing {
        /// The store.
        store: String,
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
    /// The store cannot keep the audit journal: only an embedded (redb) store can.
    #[error("{store} cannot keep the KMS audit journal: only an embedded store (a file or a data disk) can; a replica of a shared store keeps its journal in its own local store")]
    NoJournal {
        /// The store ([`Location::describe`]).
        store: String,
    },
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

    /// The key of a store shared by the replicas of one deployment, whose platform keys differ
    /// (each chip derives its own): derived from the root key they share
    /// ([`crate::keys::RootKey::shared_state_key`]).
    pub(crate) fn shared(key: Zeroizing<[u8; KEY_LEN]>) -> Self {
        Self { key }
    }

    /// A second handle on the same key (wiped on drop like the first), for the audit journal,
    /// which seals its records apart from the [`Store`] and outlives its mutex.
    fn duplicate(&self) -> Self {
        Self {
            key: self.key.clone(),
        }
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

/// One record a commit writes (`sealed`) or removes (`None`).
pub(crate) struct Change {
    table: Table,
    key: String,
    sealed: Option<Vec<u8>>,
}

/// Where the sealed records are kept: the embedded database ([`embedded`]) or PostgreSQL
/// ([`postgres`]). A backend stores bytes and makes writes atomic and durable; it checks
/// nothing else. Everything it returns is checked by the [`Store`].
pub(crate) trait Backend: Send {
    /// The store's name for messages.
    fn name(&self) -> &str;

    /// The sealing key's id in the store's one unsealed entry (a hash, not the key), so that a
    /// store opened with another key says so instead of reporting tampering. It decides
    /// nothing: a forged id only changes which error the refusal carries.
    fn header(&self) -> Result<Option<Vec<u8>>, StoreError>;

    /// The embedded database, shared with the audit journal ([`journal`]); `None` for
    /// backends that cannot keep one.
    fn journal_db(&self) -> Option<std::sync::Arc<redb::Database>> {
        None
    }

    /// The sealed record `table/key`.
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every sealed record of `table` whose key starts with `prefix`, in key order.
    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// How many records `table` holds.
    fn len(&self, table: Table) -> Result<u64, StoreError>;

    /// Replaces the state record, which must still be `expected` (else [`StoreError::Moved`],
    /// nothing written), by `state` of state version `version`, with `changes`: all or
    /// nothing, durable when it returns.
    fn write(
        &mut self,
        expected: &[u8],
        changes: &[Change],
        state: &[u8],
        version: u64,
    ) -> Result<(), StoreError>;

    /// Shared backends: the records that commits after state version `version` wrote or
    /// removed, as far as the backend still knows (`None`: it does not keep track, read
    /// everything). Untrusted like the rest: the caller checks the result against the digest.
    fn changes_since(&self, _version: u64) -> Result<Option<Vec<Change>>, StoreError> {
        Ok(None)
    }

    /// Shared backends: waits for the writers' lock of the store, held until
    /// [`Backend::unlock`], so that replicas commit, and tell their witnesses, one at a time.
    fn lock(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Releases [`Backend::lock`].
    fn unlock(&mut self) {}
}

/// Every record's digest [seed](crate::digest::seed), in table and key order.
type Index = BTreeMap<(Table, String), [u8; 32]>;

/// An open, verified KMS store.
pub struct Store {
    backend: Box<dyn Backend>,
    shared: bool,
    sealing: SealingKey,
    anchor: Box<dyn VersionAnchor>,
    version: u64,
    digest: StateDigest,
    /// The sealed state record last opened or written (what a write expects to replace).
    state: Vec<u8>,
    /// Whether this process holds the writers' lock ([`Store::lock_writers`]).
    holding: bool,
    /// A shared store: every record's digest [seed](crate::digest::seed), so that taking in
    /// another replica's writes costs what they changed, not a pass over the whole store.
    index: Index,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("store", &self.backend.name())
            .field("version", &self.version)
            .field("anchor", &self.anchor.describe())
            .finish_non_exhaustive()
    }
}

/// The version a new store starts at: only if the anchor never saw a store (else the old one
/// was deleted). The anchor is set first and the store starts at its value: a TPM counter's
/// first value is not ours to choose.
fn first_version(name: &str, anchor: &mut dyn VersionAnchor) -> Result<u64, StoreError> {
    if let Some(version) = anchor.read()? {
        return Err(StoreError::StateMissing {
            store: name.to_owned(),
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

impl Store {
    /// Opens the store at `location`, creating it if there is none (and the anchor agrees that none
    /// ever existed), and verifies it completely before returning (see the module doc).
    pub fn open(
        location: impl Into<Location>,
        sealing: SealingKey,
        anchor: Box<dyn VersionAnchor>,
    ) -> Result<Self, StoreError> {
        Self::open_with(location.into(), sealing, anchor, true)
    }

    /// As [`Store::open`], but a store that is not there is an error, not a new store: for a
    /// store this process knows it used before ([`StoreError::Missing`]).
    pub fn open_existing(
        location: impl Into<Location>,
        sealing: SealingKey,
        anchor: Box<dyn VersionAnchor>,
    ) -> Result<Self, StoreError> {
        Self::open_with(location.into(), sealing, anchor, false)
    }

    fn open_with(
        location: Location,
        sealing: SealingKey,
        mut anchor: Box<dyn VersionAnchor>,
        create: bool,
    ) -> Result<Self, StoreError> {
        let name = location.describe();
        // Made only for a new store: the header and the first state record.
        let mut first = || -> Result<(Vec<u8>, Vec<u8>), StoreError> {
            if !create {
                return Err(StoreError::Missing {
                    store: name.clone(),
                });
            }
            let version = first_version(&name, anchor.as_mut())?;
            let state = seal_state(
                &sealing,
                version,
                &StateDigest::default(),
                &anchor.state_data(),
            )?;
            Ok((sealing.id().to_vec(), state))
        };
        let backend: Box<dyn Backend> = match &location {
            Location::File(_) | Location::Disk(_) => {
                Box::new(embedded::open(&location, &mut first)?)
            }
            #[cfg(feature = "postgres")]
            Location::Postgres(url) => Box::new(postgres::Postgres::open(url, &mut first)?),
        };
        // A store only ever appears complete with its header (see the backends' creation).
        let found = backend.header()?.ok_or_else(|| StoreError::Tampered {
            record: format!("header/{HEADER_SEALING_KEY_ID}"),
            reason: "missing".into(),
        })?;
        if found != sealing.id() {
            return Err(StoreError::SealedByAnotherKey {
                store: name,
                found: hex::encode(found),
                ours: sealing.id_hex(),
            });
        }
        let mut store = Self {
            backend,
            shared: location.is_shared(),
            sealing,
            anchor,
            version: 0,
            digest: StateDigest::default(),
            state: Vec::new(),
            holding: false,
            index: Index::new(),
        };
        let started = std::time::Instant::now();
        loop {
            // Under the writers' lock: the state record and the records it commits to are
            // read as one writer left them.
            match store.locked(Self::load) {
                // Other replicas re-list their witnesses while this one waits (a restarted
                // replica is a new incarnation): read the state again and retry.
                Err(StoreError::Anchor(AnchorError::Unanswered { reason, .. }))
                    if store.shared && started.elapsed() < SHARED_OPEN_WAIT =>
                {
                    tracing::warn!(%reason, "KMS shared store: waiting for its witnesses");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
                other => return other.map(|()| store),
            }
        }
    }

    /// Runs `op` holding the backend's writers' lock (shared stores; nothing otherwise), unless
    /// the caller holds it already ([`Store::lock_writers`]).
    fn locked<T>(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.holding {
            return op(self);
        }
        self.lock_writers()?;
        let result = op(self);
        self.unlock_writers();
        result
    }

    /// Takes the writers' lock of a shared store until [`Store::unlock_writers`], so that a
    /// caller's checks and its commit see one state: no other replica writes in between.
    pub(crate) fn lock_writers(&mut self) -> Result<(), StoreError> {
        if !self.holding {
            self.backend.lock()?;
            self.holding = true;
        }
        Ok(())
    }

    /// Releases [`Store::lock_writers`].
    pub(crate) fn unlock_writers(&mut self) {
        if std::mem::take(&mut self.holding) {
            self.backend.unlock();
        }
    }

    fn load(&mut self) -> Result<(), StoreError> {
        self.load_with(false)
    }

    /// Reads and checks the state record and the records it commits to. `incremental` (a
    /// shared store's sync): checks only the records changed since the state this process
    /// holds, if the backend can say which, falling back to all of them.
    fn load_with(&mut self, incremental: bool) -> Result<(), StoreError> {
        let state_name = format!("{}/{STATE_KEY}", Table::Meta.name());
        let sealed =
            self.backend
                .get(Table::Meta, STATE_KEY)?
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

        // A running replica never goes back: a shared store older than what it last saw was
        // rolled back under it, whatever the anchor says.
        if version < self.version {
            return Err(StoreError::RolledBack {
                store: self.backend.name().to_owned(),
                state: version,
                anchor: self.version,
                anchor_name: "the state this process last read".into(),
            });
        }
        self.anchor.load_state(version, &state_hash, anchor_data)?;
        // A sync takes in states newer than this process's, which their writers had the
        // witnesses record; asking every listed witness again would stop a replica whenever a
        // peer is down. A state newer than this one but older than a witness's is caught by the
        // survey instead (`Survey::Behind`, then `QuorumHandle::synced`).
        if !incremental {
            let anchored = self.anchor.read()?;
            if let Verdict::RolledBack { state, anchor } = rollback::check(version, anchored) {
                return Err(StoreError::RolledBack {
                    store: self.backend.name().to_owned(),
                    state,
                    anchor,
                    anchor_name: self.anchor.describe(),
                });
            }
        }
        let changed = match incremental {
            true => self.changed_since(&digest)?,
            false => None,
        };
        match changed {
            Some(updates) => {
                for (record, seed) in updates {
                    match seed {
                        Some(seed) => self.index.insert(record, seed),
                        None => self.index.remove(&record),
                    };
                }
            }
            None => {
                let (records, found, index) = self.digest_records()?;
                if found != digest {
                    return Err(StoreError::DigestMismatch {
                        store: self.backend.name().to_owned(),
                        version,
                        records,
                    });
                }
                if self.shared {
                    self.index = index;
                }
            }
        }
        self.version = version;
        self.digest = digest;
        self.state = sealed;
        if self.shared {
            // Not from here: the replica that wrote this state tells the witnesses, in the
            // writers' order. A state one ahead of them (its writer crashed in between) is
            // told with the next write.
            return Ok(());
        }
        // The store may be ahead of the anchor by a write that committed just before a crash.
        self.anchor_to(version, &state_hash)
    }

    /// The changes since this process's state, each record opened, if the backend can list them
    /// and they lead from this process's digest to `digest`; `None` otherwise (read everything).
    #[allow(clippy::type_complexity)]
    fn changed_since(
        &self,
        digest: &StateDigest,
    ) -> Result<Option<Vec<((Table, String), Option<[u8; 32]>)>>, StoreError> {
        let Some(changes) = self.backend.changes_since(self.version)? else {
            return Ok(None);
        };
        let mut found = self.digest.clone();
        let mut updates = Vec::with_capacity(changes.len());
        for change in changes {
            let record = (change.table, change.key);
            if let Some(old) = self.index.get(&record) {
                found.remove_seed(old);
            }
            let seed = match change.sealed {
                Some(sealed) => {
                    // Opened to prove it authenticates; the plaintext is wiped at once.
                    drop(self.sealing.open(record.0.name(), &record.1, &sealed)?);
                    let seed = crate::digest::seed(record.0.name(), &record.1, &sealed);
                    found.add_seed(&seed);
                    Some(seed)
                }
                None => None,
            };
            updates.push((record, seed));
        }
        Ok((found == *digest).then_some(updates))
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

    /// Opens every sealed record and returns their count, digest and seeds.
    fn digest_records(&self) -> Result<(usize, StateDigest, Index), StoreError> {
        let mut digest = StateDigest::default();
        let mut index = Index::new();
        for table in Table::ALL {
            for (key, sealed) in self.backend.scan(table, "")? {
                if table == Table::Meta && key == STATE_KEY {
                    continue;
                }
                // Opened to prove it authenticates; the plaintext is wiped at once.
                drop(self.sealing.open(table.name(), &key, &sealed)?);
                let seed = crate::digest::seed(table.name(), &key, &sealed);
                digest.add_seed(&seed);
                index.insert((table, key), seed);
            }
        }
        Ok((index.len(), digest, index))
    }

    /// Checks the store again as opening did: every record opens, and they are exactly the set
    /// committed at the current state version.
    pub fn verify(&self) -> Result<Verified, StoreError> {
        let (records, digest, _) = self.digest_records()?;
        if digest != self.digest {
            return Err(StoreError::DigestMismatch {
                store: self.backend.name().to_owned(),
                version: self.version,
                records,
            });
        }
        Ok(Verified {
            version: self.version,
            records,
        })
    }

    /// A shared store: if another replica wrote since this process read the state, reads and
    /// checks the new state as an open does (never an older one: [`StoreError::RolledBack`]).
    /// Returns whether it moved. Other stores have no other writer: `false` at once.
    pub fn sync(&mut self) -> Result<bool, StoreError> {
        if !self.shared {
            return Ok(false);
        }
        let current = self.backend.get(Table::Meta, STATE_KEY)?;
        if current.as_deref() == Some(self.state.as_slice()) {
            return Ok(false);
        }
        self.locked(|store| store.load_with(true))?;
        Ok(true)
    }

    /// Whether other KMS replicas write this store too.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// The state version: how many commits this store has seen (plus the anchor's start).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The store's name: its path, or its database URL without the password.
    pub fn name(&self) -> &str {
        self.backend.name()
    }

    /// Closes the store, giving back its sealing key and anchor (to reopen it).
    pub(crate) fn into_parts(self) -> (SealingKey, Box<dyn VersionAnchor>) {
        (self.sealing, self.anchor)
    }

    /// A handle on this store's audit journal records ([`journal`]): the same database and
    /// sealing key, a table outside the state. Only embedded stores keep one
    /// ([`StoreError::NoJournal`]). One journal per process: see [`crate::Kms::journal_store`].
    pub fn journal(&self) -> Result<JournalStore, StoreError> {
        let db = self
            .backend
            .journal_db()
            .ok_or_else(|| StoreError::NoJournal {
                store: self.backend.name().to_owned(),
            })?;
        Ok(JournalStore::new(
            db,
            self.sealing.duplicate(),
            self.backend.name().to_owned(),
        ))
    }

    /// The anchor, as [`VersionAnchor::describe`] says.
    pub fn anchor(&self) -> String {
        self.anchor.describe()
    }

    /// The plaintext of `table/key`, if present.
    pub fn get(&self, table: Table, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let sealed = self.backend.get(table, key)?;
        if self.shared {
            let committed = self.index.get(&(table, key.to_owned()));
            let found = sealed
                .as_ref()
                .map(|sealed| crate::digest::seed(table.name(), key, sealed));
            if committed != found.as_ref() {
                return Err(self.not_committed(&format!("{}/{key}", table.name())));
            }
        }
        sealed
            .map(|sealed| self.sealing.open(table.name(), key, &sealed))
            .transpose()
    }

    /// Every record of `table` whose key starts with `prefix`, opened, in key order.
    pub fn scan(&self, table: Table, prefix: &str) -> Result<Vec<Record>, StoreError> {
        let records: Vec<(String, Vec<u8>)> = self
            .backend
            .scan(table, prefix)?
            .into_iter()
            .filter(|(key, _)| !(table == Table::Meta && key == STATE_KEY))
            .collect();
        if self.shared {
            for (key, sealed) in &records {
                if self.index.get(&(table, key.clone()))
                    != Some(&crate::digest::seed(table.name(), key, sealed))
                {
                    return Err(self.not_committed(&format!("{}/{key}", table.name())));
                }
            }
            // In key order, the prefix's records are one range of the index.
            let committed = self
                .index
                .range((table, prefix.to_owned())..)
                .take_while(|((t, key), _)| *t == table && key.starts_with(prefix))
                .count();
            if committed != records.len() {
                return Err(self.not_committed(&format!("{}/{prefix}*", table.name())));
            }
        }
        records
            .into_iter()
            .map(|(key, sealed)| {
                let plain = self.sealing.open(table.name(), &key, &sealed)?;
                Ok((key, plain))
            })
            .collect()
    }

    /// A shared store's database answered a record, or a set of records, other than the ones
    /// committed at this state version: every read of it is checked, since the server can answer
    /// each query differently.
    fn not_committed(&self, record: &str) -> StoreError {
        StoreError::Tampered {
            record: record.to_owned(),
            reason: format!(
                "the database answered something other than what state version {} committed",
                self.version
            ),
        }
    }

    /// How many records `table` holds.
    pub fn len(&self, table: Table) -> Result<u64, StoreError> {
        self.backend.len(table)
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
    ///
    /// A shared store takes the replicas' writers' lock for the commit and the anchor (unless
    /// the caller holds it) and refuses with [`StoreError::Moved`] (nothing written) if another
    /// replica wrote since this process read the state: the caller's checks were made on an old
    /// state.
    pub fn commit(&mut self, batch: Batch) -> Result<u64, StoreError> {
        self.locked(|store| store.commit_locked(batch))
    }

    fn commit_locked(&mut self, batch: Batch) -> Result<u64, StoreError> {
        let version = self
            .version
            .checked_add(1)
            .ok_or_else(|| StoreError::Seal {
                record: "meta/state".into(),
                reason: "the state version would overflow".into(),
            })?;
        // Whether another replica wrote since, the backend checks inside its transaction.
        let mut digest = self.digest.clone();
        // The last value each record takes in this batch, and what it held before it.
        let mut changes: Vec<Change> = Vec::new();
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
            // The digest loses what the record held (if the host changed it in the meantime,
            // the digest stops matching and the next open says so).
            let old = match changes
                .iter()
                .position(|c| c.table == table && c.key == key)
            {
                Some(i) => changes
                    .remove(i)
                    .sealed
                    .map(|sealed| crate::digest::seed(table.name(), key, &sealed)),
                // A shared store knows what each record held from its index.
                None if self.shared => self.index.get(&(table, key.to_owned())).copied(),
                None => self
                    .backend
                    .get(table, key)?
                    .map(|sealed| crate::digest::seed(table.name(), key, &sealed)),
            };
            if let Some(old) = old {
                digest.remove_seed(&old);
            }
            let sealed = match op {
                Op::Put { plaintext, .. } => {
                    let sealed = self.sealing.seal(table.name(), key, plaintext)?;
                    digest.add(table.name(), key, &sealed);
                    Some(sealed)
                }
                Op::Remove { .. } => None,
            };
            changes.push(Change {
                table,
                key: key.to_owned(),
                sealed,
            });
        }
        let state = seal_state(&self.sealing, version, &digest, &self.anchor.state_data())?;
        let state_hash: [u8; 32] = Sha256::digest(&state).into();
        self.backend.write(&self.state, &changes, &state, version)?;
        if self.shared {
            for change in changes {
                let seed = change
                    .sealed
                    .as_ref()
                    .map(|sealed| crate::digest::seed(change.table.name(), &change.key, sealed));
                let record = (change.table, change.key);
                match seed {
                    Some(seed) => self.index.insert(record, seed),
                    None => self.index.remove(&record),
                };
            }
        }
        self.version = version;
        self.digest = digest;
        self.state = state;
        self.anchor_to(version, &state_hash).map_err(|e| match e {
            StoreError::Anchor(source) => StoreError::NotAnchored { version, source },
            other => other,
        })?;
        Ok(version)
    }
}
