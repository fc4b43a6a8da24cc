//! The KMS state machine: the key hierarchy's operations, each one durable commit of the sealed
//! store before it returns.
//!
//! In memory it keeps the root key (in the clear, wiped on drop), the org records and the
//! wrapped KEKs: unwrapping reads nothing from disk, so a host that rewrites the file under a
//! running KMS cannot change what it unwraps (and the next open catches the rewrite). KEKs are
//! unwrapped per call and dropped (wiped) after it.

use std::collections::BTreeMap;

use coffer_evidence::EvidenceProvider;
use serde::{Deserialize, Serialize};

use crate::keys::{DataKey, Kek, KeyError, KeyId, OrgId, RootKey, WrappedDataKey, WrappedKek};
use crate::rollback::{Unanchored, VersionAnchor};
use crate::store::journal::JournalStore;
use crate::store::{Batch, Location, SealingKey, Store, StoreError, Table, Verified};

const ROOT_KEY: &str = "root";
/// In a replica's own store: its state is in a shared store ([`Kms::open_shared`]), which must
/// therefore exist. The record's presence is what counts; it holds no secret.
const SHARED_MARKER: &str = "shared-store";

/// Why a KMS operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// The store refused (tampered, rolled back, another key, I/O).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key operation failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// No such org.
    #[error("org {org} has no key")]
    UnknownOrg {
        /// The org.
        org: OrgId,
    },
    /// The org already has a key.
    #[error("org {org} already has a key (rotate it instead)")]
    OrgExists {
        /// The org.
        org: OrgId,
    },
    /// The org's key was destroyed: nothing of it can be unwrapped, and the name is not reused.
    #[error(
        "org {org}'s key was destroyed at state version {at}: nothing of this org can be unwrapped"
    )]
    OrgDestroyed {
        /// The org.
        org: OrgId,
        /// The state version of the destruction.
        at: u64,
    },
    /// No such KEK version.
    #[error("org {org} has no KEK version {version}")]
    UnknownKekVersion {
        /// The org.
        org: OrgId,
        /// The version asked for.
        version: u32,
    },
    /// The KEK version was retired: its keys no longer unwrap.
    #[error(
        "KEK version {version} of org {org} was retired: keys wrapped under it no longer unwrap"
    )]
    KekVersionRetired {
        /// The org.
        org: OrgId,
        /// The version.
        version: u32,
    },
    /// The current KEK version cannot be retired.
    #[error("KEK version {version} is org {org}'s current version: rotate before retiring it")]
    RetireCurrent {
        /// The org.
        org: OrgId,
        /// The version.
        version: u32,
    },
    /// A record opened (it is authentic) but does not hold what its place says.
    #[error("record {record}: {reason}")]
    Record {
        /// `table/key`.
        record: String,
        /// What is wrong.
        reason: String,
    },
    /// Splitting or restoring the root key failed.
    #[error(transparent)]
    Recovery(#[from] crate::recovery::RecoveryError),
    /// The audit journal's store was handed out already: a second journal on it would take
    /// the first one's entries for a previous process's and replay them from under it.
    #[error("the audit journal's store was already handed out: one journal per KMS process")]
    JournalTaken,
}

/// The status of one KEK version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KekState {
    /// Wraps new data keys (one per org).
    Current,
    /// Superseded by a rotation: still unwraps the keys it wrapped.
    Previous,
    /// Erased: the keys it wrapped no longer unwrap.
    Retired,
}

/// One KEK version's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekVersionInfo {
    /// The version (1, 2, ...).
    pub version: u32,
    /// Its status.
    pub state: KekState,
    /// The state version of the commit that created it.
    pub created_at: u64,
    /// The state version of the commit that retired it (or destroyed its org).
    pub retired_at: Option<u64>,
}

/// An org's key metadata (also its record in the store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgKeyInfo {
    /// The org.
    pub org: OrgId,
    /// The current KEK version (none once destroyed).
    pub current: Option<u32>,
    /// Every version ever made, oldest first.
    pub versions: Vec<KekVersionInfo>,
    /// The state version of the commit that destroyed the org's key.
    pub destroyed_at: Option<u64>,
}

/// What one [`Kms::rewrap_data_keys`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrap {
    /// The org's current KEK version, which the keys now use.
    pub current_version: u32,
    /// Data-key records re-wrapped by this call.
    pub rewrapped: usize,
    /// Records still under a previous version (beyond the call's limit): call again.
    pub remaining: usize,
    /// Records under a retired version: their KEK is gone, they cannot be re-wrapped.
    pub unrecoverable: usize,
}

/// A data key's metadata, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataKeyInfo {
    /// The wrapped key (its org, id and KEK version).
    pub wrapped: WrappedDataKey,
    /// The state version of the commit that created it.
    pub created_at: u64,
}

fn kek_record_key(org: &OrgId, version: u32) -> String {
    // Zero-padded so the store's key order is version order.
    format!("{org}/{version:010}")
}

fn dek_record_key(org: &OrgId, key_id: &KeyId) -> String {
    format!("{org}/{key_id}")
}

fn to_json<T: Serialize>(record: &str, value: &T) -> Result<Vec<u8>, KmsError> {
    serde_json::to_vec(value).map_err(|e| KmsError::Record {
        record: record.to_owned(),
        reason: format!("cannot encode: {e}"),
    })
}

fn from_json<T: for<'de> Deserialize<'de>>(record: &str, bytes: &[u8]) -> Result<T, KmsError> {
    serde_json::from_slice(bytes).map_err(|e| KmsError::Record {
        record: record.to_owned(),
        reason: format!("not a valid record: {e}"),
    })
}

/// The HKDF info that derives a shared store's sealing key from the root key.
const SHARED_STATE_KEY_INFO: &[u8] = b"coffer-kms shared state v1";

/// The key management service's core: open one per store.
pub struct Kms {
    /// Every record: the only store of a single KMS; the store shared by all replicas of a
    /// replicated deployment ([`Kms::open_shared`]).
    store: Store,
    /// A replicated deployment's own store (its data disk, platform-sealed): the root key only,
    /// from which the shared store's key is derived.
    local: Option<Store>,
    root: RootKey,
    orgs: BTreeMap<OrgId, OrgKeyInfo>,
    keks: BTreeMap<(OrgId, u32), WrappedKek>,
    /// The last audit checkpoint signed, read at open ([`checkpoint_state`]).
    audit_checkpoint: Option<crate::checkpoint::SignedCheckpoint>,
    /// Whether [`Kms::journal_store`] handed out the journal's store.
    journal_taken: bool,
}

impl std::fmt::Debug for Kms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kms")
            .field("store", &self.store)
            .field("local", &self.local.as_ref().map(Store::name))
            .field("orgs", &self.orgs.len())
            .field("root", &self.root)
            .finish()
    }
}

impl Kms {
    /// Opens (or, the first time, initialises) the KMS state at `path`, sealed under this
    /// guest's platform sealing key and checked against `anchor`. Refuses a store that is
    /// tampered, rolled back or sealed by another image.
    pub fn open(
        location: impl Into<Location>,
        platform: &dyn EvidenceProvider,
        anchor: Box<dyn VersionAnchor>,
    ) -> Result<Self, KmsError> {
        Self::open_with_key(location, SealingKey::from_platform(platform)?, anchor)
    }

    /// As [`Kms::open`], with the sealing key already derived.
    pub fn open_with_key(
        location: impl Into<Location>,
        sealing: SealingKey,
        anchor: Box<dyn VersionAnchor>,
    ) -> Result<Self, KmsError> {
        let mut store = Store::open(location, sealing, anchor)?;
        if store.get(Table::Meta, SHARED_MARKER)?.is_some() {
            return Err(KmsError::Record {
                record: format!("meta/{SHARED_MARKER}"),
                reason: "this KMS keeps its state in the deployment's shared store: start it with that store (the manifest's kms.shared_store and `coffer run --kms-store`)".into(),
            });
        }
        let root = match store.get(Table::Meta, ROOT_KEY)? {
            Some(bytes) => RootKey::from_bytes(&bytes)?,
            None => {
                // The store verified: its records are exactly what was committed. No root key
                // means initialisation never committed, so nothing was ever wrapped: start here.
                if store.len(Table::Orgs)? > 0 || store.len(Table::Keks)? > 0 {
                    return Err(KmsError::Record {
                        record: "meta/root".into(),
                        reason: "missing, yet the store holds org keys".into(),
                    });
                }
                let root = RootKey::generate()?;
                let mut batch = Batch::new();
                batch.put(Table::Meta, ROOT_KEY, root.bytes());
                store.commit(batch)?;
                root
            }
        };
        Self::with_stores(store, None, root)
    }

    /// Opens a replica of a replicated deployment: the root key from this replica's own store
    /// at `local` (platform-sealed, as [`Kms::open_with_key`]), everything else from the store
    /// at `shared` that every replica reads and writes (PostgreSQL), sealed under a key derived
    /// from the root key and checked against `anchor`.
    ///
    /// The first replica of a deployment (its own store and the shared one both new) draws the
    /// root key; any other must [join](Kms::join_shared): a root key of its own does not open
    /// the shared store, and it is then not kept.
    pub fn open_shared(
        local: impl Into<Location>,
        sealing: SealingKey,
        shared: Location,
        anchor: Box<dyn VersionAnchor>,
    ) -> Result<Self, KmsError> {
        let own = Self::open_own(local, sealing)?;
        match own.get(Table::Meta, ROOT_KEY)? {
            Some(bytes) => {
                if own.get(Table::Meta, SHARED_MARKER)?.is_none() {
                    return Err(KmsError::Record {
                        record: own.name().to_owned(),
                        reason: "this KMS keeps its state on its own data disk, not in a shared store: start it without one (the manifest's kms.shared_store)".into(),
                    });
                }
                let root = RootKey::from_bytes(&bytes)?;
                let store = Self::open_shared_store(shared, &root, anchor, false)?;
                Self::with_stores(store, Some(own), root)
            }
            None => Self::start_shared(own, shared, anchor, RootKey::generate()?),
        }
    }

    /// A replica's own store. It holds nothing but the root key, which never changes: a host
    /// that puts back an older copy puts back the same key, so it needs no anchor.
    fn open_own(local: impl Into<Location>, sealing: SealingKey) -> Result<Store, KmsError> {
        Ok(Store::open(
            local,
            sealing,
            Box::new(Unanchored::accepting_rollback()),
        )?)
    }

    /// A replica of a replicated deployment restored by the recovery officers: keeps the root
    /// key they restored in its own, empty store at `local` and opens the shared store with it
    /// (the state there, if it survived, is the deployment's state).
    pub fn restore_shared(
        local: impl Into<Location>,
        sealing: SealingKey,
        shared: Location,
        anchor: Box<dyn VersionAnchor>,
        root: &RootKey,
    ) -> Result<Self, KmsError> {
        let own = Self::open_own(local, sealing)?;
        let root = RootKey::from_bytes(root.bytes())?;
        Self::start_shared(own, shared, anchor, root)
    }

    /// Opens (or creates) the shared store under `root`, then keeps `root` in this replica's own,
    /// empty store: a root key that does not open the shared store is never kept.
    fn start_shared(
        mut own: Store,
        shared: Location,
        anchor: Box<dyn VersionAnchor>,
        root: RootKey,
    ) -> Result<Self, KmsError> {
        if !own.is_empty()? {
            return Err(KmsError::Record {
                record: own.name().to_owned(),
                reason: "already holds a KMS state: refusing to write over it".into(),
            });
        }
        let store = Self::open_shared_store(shared, &root, anchor, true)?;
        let mut batch = Batch::new();
        batch.put(Table::Meta, ROOT_KEY, root.bytes());
        batch.put(Table::Meta, SHARED_MARKER, b"1");
        own.commit(batch)?;
        Self::with_stores(store, Some(own), root)
    }

    /// The shared store, sealed under the key derived from `root`; created if `create` (this
    /// replica never used it), else it must be there.
    fn open_shared_store(
        shared: Location,
        root: &RootKey,
        anchor: Box<dyn VersionAnchor>,
        create: bool,
    ) -> Result<Store, KmsError> {
        let sealing = SealingKey::shared(root.derive(SHARED_STATE_KEY_INFO));
        let opened = if create {
            Store::open(shared, sealing, anchor)
        } else {
            Store::open_existing(shared, sealing, anchor)
        };
        opened.map_err(|e| match e {
            StoreError::SealedByAnotherKey { store, .. } => KmsError::Record {
                record: store,
                reason: "the shared store is sealed under another root key: this replica must join the deployment's KMS (a blank data disk and --kms-join), not start one of its own".into(),
            },
            other => other.into(),
        })
    }

    /// Reads the org and KEK records and the last audit checkpoint into memory.
    fn with_stores(store: Store, local: Option<Store>, root: RootKey) -> Result<Self, KmsError> {
        let mut kms = Self {
            store,
            local,
            root,
            orgs: BTreeMap::new(),
            keks: BTreeMap::new(),
            audit_checkpoint: None,
            journal_taken: false,
        };
        // A shared store: read under the writers' lock, on the newest state.
        kms.serialized(Self::load)?;
        Ok(kms)
    }

    fn load(&mut self) -> Result<(), KmsError> {
        let mut orgs = BTreeMap::new();
        for (key, bytes) in self.store.scan(Table::Orgs, "")? {
            let record = format!("orgs/{key}");
            let info: OrgKeyInfo = from_json(&record, &bytes)?;
            if info.org.as_str() != key {
                return Err(KmsError::Record {
                    record,
                    reason: format!("holds org {}", info.org),
                });
            }
            orgs.insert(info.org.clone(), info);
        }
        let mut keks = BTreeMap::new();
        for (key, bytes) in self.store.scan(Table::Keks, "")? {
            let record = format!("keks/{key}");
            let wrapped: WrappedKek = from_json(&record, &bytes)?;
            if kek_record_key(&wrapped.org, wrapped.version) != key {
                return Err(KmsError::Record {
                    record,
                    reason: format!("holds org {} version {}", wrapped.org, wrapped.version),
                });
            }
            keks.insert((wrapped.org.clone(), wrapped.version), wrapped);
        }
        self.audit_checkpoint = checkpoint_state::load(&self.store)?;
        self.orgs = orgs;
        self.keks = keks;
        Ok(())
    }

    /// A replica of a replicated deployment: takes in what other replicas wrote since this one
    /// last read the shared store (checked as at open, never an older state), and returns
    /// whether anything moved. Called before every write and every read of the store, and by
    /// the appliance every second and when a key is not found. A single KMS has nothing to take
    /// in: `false`.
    pub fn sync(&mut self) -> Result<bool, KmsError> {
        if !self.store.is_shared() {
            return Ok(false);
        }
        self.store.lock_writers()?;
        let moved = self.sync_locked();
        self.store.unlock_writers();
        moved
    }

    /// [`Kms::sync`] with the writers' lock held: the store and the records read from it into
    /// memory are of one state.
    fn sync_locked(&mut self) -> Result<bool, KmsError> {
        if !self.store.sync()? {
            return Ok(false);
        }
        self.load()?;
        Ok(true)
    }

    /// The records of this process's audit journal ([`crate::api::AuditJournal::durable`]): in
    /// the one store of a single KMS, in the replica's own local store of a replicated
    /// deployment (journals are per process; the shared store is PostgreSQL, which keeps none).
    /// A separate handle on the embedded database, so the journal's flushes never wait for the
    /// mutex the API keeps around the `Kms`. Handed out once ([`KmsError::JournalTaken`]).
    pub fn journal_store(&mut self) -> Result<JournalStore, KmsError> {
        if self.journal_taken {
            return Err(KmsError::JournalTaken);
        }
        let store = self.local.as_ref().unwrap_or(&self.store).journal()?;
        self.journal_taken = true;
        Ok(store)
    }

    /// Whether other replicas write this KMS's state too ([`Kms::open_shared`]).
    pub fn is_shared(&self) -> bool {
        self.store.is_shared()
    }

    /// Runs `op` (a write, or a read of the store) on the newest state: a replica of a shared
    /// store takes the writers' lock and takes in what others wrote first, so `op`'s checks (the
    /// org exists, the version is current) are made on the state it writes over, and what it
    /// reads is what that state committed (the store checks every read against it).
    fn serialized<T, E: From<KmsError>>(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, E> {
        if !self.store.is_shared() {
            return op(self);
        }
        if let Err(e) = self.store.lock_writers() {
            return Err(KmsError::from(e).into());
        }
        let result = match self.sync_locked() {
            Ok(_) => op(self),
            Err(e) => Err(e.into()),
        };
        self.store.unlock_writers();
        result
    }

    /// The store's state version.
    pub fn state_version(&self) -> u64 {
        self.store.version()
    }

    /// Commits a new state version that changes no record, so that the rollback anchor can
    /// seal what it keeps in the state (the quorum anchor: a new witness set, see
    /// [`crate::rollback::quorum::QuorumHandle::survey`]). Returns the new version.
    pub fn advance_state(&mut self) -> Result<u64, KmsError> {
        self.serialized(|kms| Ok(kms.store.commit(Batch::new())?))
    }

    /// The rollback anchor, as it describes itself (which witnesses, what they hold).
    pub fn anchor(&self) -> String {
        self.store.anchor()
    }

    /// Re-checks the store: every record opens and the set is the one committed.
    pub fn verify(&self) -> Result<Verified, KmsError> {
        Ok(self.store.verify()?)
    }

    /// The org's key metadata.
    pub fn org_key(&self, org: &OrgId) -> Option<&OrgKeyInfo> {
        self.orgs.get(org)
    }

    /// Every org's key metadata, destroyed ones included.
    pub fn org_keys(&self) -> impl Iterator<Item = &OrgKeyInfo> {
        self.orgs.values()
    }

    /// The data keys made for `org` (none once it is destroyed).
    pub fn data_keys(&mut self, org: &OrgId) -> Result<Vec<DataKeyInfo>, KmsError> {
        self.serialized(|kms| {
            kms.store
                .scan(Table::Deks, &format!("{org}/"))?
                .into_iter()
                .map(|(key, bytes)| from_json(&format!("deks/{key}"), &bytes))
                .collect()
        })
    }

    fn live_org(&self, org: &OrgId) -> Result<&OrgKeyInfo, KmsError> {
        let info = self
            .orgs
            .get(org)
            .ok_or_else(|| KmsError::UnknownOrg { org: org.clone() })?;
        if let Some(at) = info.destroyed_at {
            return Err(KmsError::OrgDestroyed {
                org: org.clone(),
                at,
            });
        }
        Ok(info)
    }

    fn kek(&self, org: &OrgId, version: u32) -> Result<Kek, KmsError> {
        let info = self.live_org(org)?;
        let status = info
            .versions
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| KmsError::UnknownKekVersion {
                org: org.clone(),
                version,
            })?;
        if status.state == KekState::Retired {
            return Err(KmsError::KekVersionRetired {
                org: org.clone(),
                version,
            });
        }
        let wrapped = self
            .keks
            .get(&(org.clone(), version))
            .ok_or_else(|| KmsError::Record {
                record: format!("keks/{}", kek_record_key(org, version)),
                reason: "missing for a live version".into(),
            })?;
        Ok(self.root.unwrap_kek(wrapped)?)
    }

    /// Adds a new KEK version wrapped under the root key to `batch` and `info`.
    fn new_version(
        &self,
        info: &mut OrgKeyInfo,
        version: u32,
        batch: &mut Batch,
    ) -> Result<WrappedKek, KmsError> {
        let kek = Kek::generate(info.org.clone(), version)?;
        let wrapped = self.root.wrap_kek(&kek)?;
        let key = kek_record_key(&info.org, version);
        batch.put(
            Table::Keks,
            key.clone(),
            &to_json(&format!("keks/{key}"), &wrapped)?,
        );
        info.versions.push(KekVersionInfo {
            version,
            state: KekState::Current,
            created_at: self.store.version() + 1,
            retired_at: None,
        });
        info.current = Some(version);
        Ok(wrapped)
    }

    /// Commits `batch` with the org record `info`, then takes both into memory.
    fn commit_org(
        &mut self,
        info: OrgKeyInfo,
        mut batch: Batch,
        added: Option<WrappedKek>,
    ) -> Result<(), KmsError> {
        let record = format!("orgs/{}", info.org);
        batch.put(Table::Orgs, info.org.as_str(), &to_json(&record, &info)?);
        let committed = self.store.commit(batch);
        if crate::store::is_durable(&committed) {
            if let Some(wrapped) = added {
                self.keks
                    .insert((wrapped.org.clone(), wrapped.version), wrapped);
            }
            self.orgs.insert(info.org.clone(), info);
        }
        committed?;
        Ok(())
    }

    /// Creates `org`'s KEK (version 1). Durable when it returns.
    pub fn create_org_key(&mut self, org: &OrgId) -> Result<u32, KmsError> {
        self.serialized(|kms| kms.create_org_key_once(org))
    }

    fn create_org_key_once(&mut self, org: &OrgId) -> Result<u32, KmsError> {
        if let Some(info) = self.orgs.get(org) {
            return Err(match info.destroyed_at {
                Some(at) => KmsError::OrgDestroyed {
                    org: org.clone(),
                    at,
                },
                None => KmsError::OrgExists { org: org.clone() },
            });
        }
        let mut info = OrgKeyInfo {
            org: org.clone(),
            current: None,
            versions: Vec::new(),
            destroyed_at: None,
        };
        let mut batch = Batch::new();
        let wrapped = self.new_version(&mut info, 1, &mut batch)?;
        self.commit_org(info, batch, Some(wrapped))?;
        Ok(1)
    }

    /// Rotates `org`'s KEK: a new version wraps new data keys; the old one still unwraps until
    /// retired. Returns the new version. Existing data keys move to it in bulk
    /// ([`Kms::rewrap_data_keys`]) or lazily, as each is unwrapped ([`Kms::unwrap_and_rewrap`]).
    pub fn rotate_org_key(&mut self, org: &OrgId) -> Result<u32, KmsError> {
        self.serialized(|kms| kms.rotate_org_key_once(org))
    }

    fn rotate_org_key_once(&mut self, org: &OrgId) -> Result<u32, KmsError> {
        let mut info = self.live_org(org)?.clone();
        let next = info
            .versions
            .iter()
            .map(|v| v.version)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| KmsError::Record {
                record: format!("orgs/{org}"),
                reason: "KEK version would overflow".into(),
            })?;
        for v in &mut info.versions {
            if v.state == KekState::Current {
                v.state = KekState::Previous;
            }
        }
        let mut batch = Batch::new();
        let wrapped = self.new_version(&mut info, next, &mut batch)?;
        self.commit_org(info, batch, Some(wrapped))?;
        Ok(next)
    }

    /// Retires a previous KEK version: its wrapped KEK is erased from the state, and the data
    /// keys it wrapped no longer unwrap.
    pub fn retire_org_key_version(&mut self, org: &OrgId, version: u32) -> Result<(), KmsError> {
        self.serialized(|kms| kms.retire_org_key_version_once(org, version))
    }

    fn retire_org_key_version_once(&mut self, org: &OrgId, version: u32) -> Result<(), KmsError> {
        let mut info = self.live_org(org)?.clone();
        let at = self.store.version() + 1;
        let status = info
            .versions
            .iter_mut()
            .find(|v| v.version == version)
            .ok_or_else(|| KmsError::UnknownKekVersion {
                org: org.clone(),
                version,
            })?;
        match status.state {
            KekState::Current => {
                return Err(KmsError::RetireCurrent {
                    org: org.clone(),
                    version,
                })
            }
            KekState::Retired => {
                return Err(KmsError::KekVersionRetired {
                    org: org.clone(),
                    version,
                })
            }
            KekState::Previous => {}
        }
        status.state = KekState::Retired;
        status.retired_at = Some(at);
        let mut batch = Batch::new();
        batch.remove(Table::Keks, kek_record_key(org, version));
        self.commit_org(info, batch, None)?;
        self.keks.remove(&(org.clone(), version));
        Ok(())
    }

    /// Destroys `org`'s key (crypto-shredding): every version of its KEK and every data-key
    /// record of the org are erased from the state in one commit, leaving a tombstone so the
    /// name is never reused. Afterwards nothing wrapped for this org unwraps.
    ///
    /// What this does not reach: bytes redb freed but has not yet overwritten in the file, and
    /// copies of the disk made before. Both are sealed, and only this KMS image can open them;
    /// it never reads freed pages and refuses any state older than the anchor. So shredding is
    /// exactly as strong as the rollback defence ([`crate::rollback`]).
    pub fn destroy_org_key(&mut self, org: &OrgId) -> Result<(), KmsError> {
        self.serialized(|kms| kms.destroy_org_key_once(org))
    }

    fn destroy_org_key_once(&mut self, org: &OrgId) -> Result<(), KmsError> {
        let mut info = self.live_org(org)?.clone();
        let at = self.store.version() + 1;
        let mut batch = Batch::new();
        // From the store, not from memory: whatever is there for this org goes.
        for (key, _) in self.store.scan(Table::Keks, &format!("{org}/"))? {
            batch.remove(Table::Keks, key);
        }
        for (key, _) in self.store.scan(Table::Deks, &format!("{org}/"))? {
            batch.remove(Table::Deks, key);
        }
        for v in &mut info.versions {
            if v.state != KekState::Retired {
                v.state = KekState::Retired;
                v.retired_at = Some(at);
            }
        }
        info.current = None;
        info.destroyed_at = Some(at);
        self.commit_org(info, batch, None)?;
        self.keks.retain(|(o, _), _| o != org);
        Ok(())
    }

    /// Generates a data key for `org` under its current KEK. Returns the key in the clear (for
    /// the caller to use and drop) and wrapped (for the caller to keep). Durable when it
    /// returns: the key will unwrap after any crash.
    pub fn generate_data_key(
        &mut self,
        org: &OrgId,
    ) -> Result<(DataKey, WrappedDataKey), KmsError> {
        self.serialized(|kms| kms.generate_data_key_once(org))
    }

    fn generate_data_key_once(
        &mut self,
        org: &OrgId,
    ) -> Result<(DataKey, WrappedDataKey), KmsError> {
        let version = self
            .live_org(org)?
            .current
            .ok_or_else(|| KmsError::UnknownOrg { org: org.clone() })?;
        let kek = self.kek(org, version)?;
        let dek = DataKey::generate()?;
        let wrapped = kek.wrap_data_key(&dek)?;
        let key = dek_record_key(org, dek.id());
        let info = DataKeyInfo {
            wrapped: wrapped.clone(),
            created_at: self.store.version() + 1,
        };
        let mut batch = Batch::new();
        batch.put(
            Table::Deks,
            key.clone(),
            &to_json(&format!("deks/{key}"), &info)?,
        );
        self.store.commit(batch)?;
        Ok((dek, wrapped))
    }

    /// Unwraps a data key: its org must be live, its KEK version neither retired nor unknown,
    /// and its bytes must authenticate under that KEK with its org, id and version.
    pub fn unwrap_data_key(&self, wrapped: &WrappedDataKey) -> Result<DataKey, KmsError> {
        let kek = self.kek(&wrapped.org, wrapped.kek_version)?;
        Ok(kek.unwrap_data_key(wrapped)?)
    }

    /// [`Kms::unwrap_data_key`], and the lazy half of rotation: when `wrapped` is under an
    /// older KEK version than the org's current one, also the same key wrapped under the
    /// current version, for the caller to keep instead (nothing is written here; the KMS's own
    /// record moves with [`Kms::rewrap_data_keys`]).
    pub fn unwrap_and_rewrap(
        &self,
        wrapped: &WrappedDataKey,
    ) -> Result<(DataKey, Option<WrappedDataKey>), KmsError> {
        let key = self.unwrap_data_key(wrapped)?;
        let current = self.live_org(&wrapped.org)?.current;
        let rewrapped = match current {
            Some(version) if version != wrapped.kek_version => {
                Some(self.kek(&wrapped.org, version)?.wrap_data_key(&key)?)
            }
            _ => None,
        };
        Ok((key, rewrapped))
    }

    /// The bulk half of rotation: re-wraps under `org`'s current KEK version up to `limit` of
    /// the data-key records still wrapped under a previous version, in one durable commit, so
    /// the previous versions can be retired once callers have the new wrappings too. Records
    /// under a retired version cannot be re-wrapped (their KEK is gone) and are counted.
    pub fn rewrap_data_keys(&mut self, org: &OrgId, limit: usize) -> Result<Rewrap, KmsError> {
        self.serialized(|kms| kms.rewrap_data_keys_once(org, limit))
    }

    fn rewrap_data_keys_once(&mut self, org: &OrgId, limit: usize) -> Result<Rewrap, KmsError> {
        let current = self
            .live_org(org)?
            .current
            .ok_or_else(|| KmsError::UnknownOrg { org: org.clone() })?;
        let current_kek = self.kek(org, current)?;
        let retired: Vec<u32> = self
            .live_org(org)?
            .versions
            .iter()
            .filter(|v| v.state == KekState::Retired)
            .map(|v| v.version)
            .collect();
        let mut outcome = Rewrap {
            current_version: current,
            ..Rewrap::default()
        };
        let mut batch = Batch::new();
        let mut keks = BTreeMap::new();
        for (key, bytes) in self.store.scan(Table::Deks, &format!("{org}/"))? {
            let record = format!("deks/{key}");
            let mut info: DataKeyInfo = from_json(&record, &bytes)?;
            let version = info.wrapped.kek_version;
            if version == current {
                continue;
            }
            if retired.contains(&version) {
                outcome.unrecoverable += 1;
                continue;
            }
            if outcome.rewrapped >= limit {
                outcome.remaining += 1;
                continue;
            }
            let kek = match keks.entry(version) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(self.kek(org, version)?),
            };
            let dek = kek.unwrap_data_key(&info.wrapped)?;
            info.wrapped = current_kek.wrap_data_key(&dek)?;
            batch.put(Table::Deks, key, &to_json(&record, &info)?);
            outcome.rewrapped += 1;
        }
        if outcome.rewrapped > 0 {
            self.store.commit(batch)?;
        }
        Ok(outcome)
    }
}

mod checkpoint_state;
mod recovery_kit;
pub mod replica;
#[cfg(test)]
pub(crate) mod tests;
