//! Replicas and upgrades: a KMS hands its root key and state to another KMS that attested to it.
//!
//! A new KMS VM (a second replica, or the next version of the kms image) starts with a blank
//! data disk and joins an existing KMS over the attested mesh. The existing one answers only a
//! peer the mesh attested as the **kms** role with a measurement pinned in the deployment
//! manifest (an upgrade adds the new image's measurement to the pins first); the API checks the
//! role again before calling [`Kms::export_snapshot`]. The newcomer stores what it received
//! sealed under **its own** platform key ([`Kms::join`]): another measurement derives another
//! sealing key, so nothing on the old disk is readable by the new image directly, and nothing
//! is ever written unsealed.
//!
//! The snapshot is the root key and every record (orgs, wrapped KEKs, data-key metadata), as of
//! the moment of the call; KEKs and data keys stay wrapped under the root key. After the join
//! the two KMS are independent copies: keys created on one afterwards are not on the other
//! (a shared store for live replicas is the PostgreSQL backend's job).

use base64ct::{Base64, Encoding};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::{Kms, KmsError, ROOT_KEY};
use crate::keys::RootKey;
use crate::rollback::VersionAnchor;
use crate::store::{Batch, Location, SealingKey, Store, Table};

/// Everything a joining KMS needs: the root key and every record. Secret (the root key):
/// zeroized on drop, never logged, sent only over an attested session to a pinned kms.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The root key, standard base64.
    root_key: String,
    /// The state version it was taken at (informational: the newcomer starts its own count).
    pub state_version: u64,
    /// Every record but the root key and the store's own state record.
    records: Vec<SnapshotRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotRecord {
    table: String,
    key: String,
    /// The record's plaintext, standard base64 (no key material in the clear: KEKs and data keys
    /// inside are wrapped under the root key).
    value: String,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.root_key.zeroize();
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("root_key", &"[redacted]")
            .field("state_version", &self.state_version)
            .field("records", &self.records.len())
            .finish()
    }
}

impl Snapshot {
    /// How many records it carries.
    pub fn records(&self) -> usize {
        self.records.len()
    }

    /// As JSON, in a buffer allocated once at its exact size (a growing buffer would leave
    /// unwiped copies of the root key behind) and wiped on drop.
    pub fn to_json(&self) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let mut counter = Counter(0);
        serde_json::to_writer(&mut counter, self)
            .map_err(|e| invalid(format!("cannot encode: {e}")))?;
        let mut out = Zeroizing::new(Vec::with_capacity(counter.0));
        serde_json::to_writer(&mut *out, self)
            .map_err(|e| invalid(format!("cannot encode: {e}")))?;
        Ok(out)
    }

    /// Its records as a store batch, each checked for a known table and base64 value.
    fn root(&self) -> Result<RootKey, KmsError> {
        let root = Zeroizing::new(
            Base64::decode_vec(&self.root_key).map_err(|_| invalid("root_key is not base64"))?,
        );
        Ok(RootKey::from_bytes(&root)?)
    }

    fn batch(&self) -> Result<Batch, KmsError> {
        let mut batch = Batch::new();
        for record in &self.records {
            let table = Table::from_name(&record.table)
                .ok_or_else(|| invalid(format!("unknown table {:?}", record.table)))?;
            if table == Table::Meta && record.key == ROOT_KEY {
                return Err(invalid("a second root key among the records"));
            }
            let value = Zeroizing::new(Base64::decode_vec(&record.value).map_err(|_| {
                invalid(format!(
                    "{}/{}: value is not base64",
                    record.table, record.key
                ))
            })?);
            batch.put(table, record.key.clone(), &value);
        }
        Ok(batch)
    }

    /// Parses a snapshot received from the KMS being joined.
    pub fn from_json(bytes: &[u8]) -> Result<Self, KmsError> {
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not a snapshot: {e}")))
    }
}

/// Counts what is written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn invalid(reason: impl Into<String>) -> KmsError {
    KmsError::Record {
        record: "snapshot".into(),
        reason: reason.into(),
    }
}

/// Info of the HKDF that derives the backup key from the root key.
const BACKUP_KEY_INFO: &[u8] = b"coffer-kms backup key v1";
/// Associated data of a backup.
const BACKUP_AAD: &str = "coffer-kms backup v1";

/// The key a backup is sealed under: derived from the root key, so only a KMS holding the root
/// key (a replica, or one restored by the recovery officers) opens it.
fn backup_key(root: &RootKey) -> Zeroizing<[u8; crate::KEY_LEN]> {
    root.derive(BACKUP_KEY_INFO)
}

impl Kms {
    /// Every record but the root key, AES-256-GCM-sealed under a key derived from the root key:
    /// a backup that may be kept anywhere (it is ciphertext; only a KMS with the root key opens
    /// it). With the recovery officers' shares it brings a lost KMS back
    /// ([`Kms::restore`]). A backup is as old as it is: restoring an old one loses what came
    /// after.
    pub fn export_backup(&mut self) -> Result<Vec<u8>, KmsError> {
        let mut snapshot = self.export_snapshot()?;
        // Zeroizing a String wipes its bytes and empties it.
        snapshot.root_key.zeroize();
        let plain = snapshot.to_json()?;
        crate::crypto::seal(&backup_key(&self.root), BACKUP_AAD.as_bytes(), &plain)
            .map_err(|e| invalid(format!("cannot seal the backup: {e:?}")))
    }

    /// The root key and every record, for a KMS joining this one. The caller must have checked
    /// that the receiver is an attested, pinned kms.
    pub fn export_snapshot(&mut self) -> Result<Snapshot, KmsError> {
        self.serialized(|kms| kms.snapshot())
    }

    fn snapshot(&self) -> Result<Snapshot, KmsError> {
        let mut records = Vec::new();
        for table in Table::ALL {
            for (key, value) in self.store.scan(table, "")? {
                if table == Table::Meta && key == ROOT_KEY {
                    continue;
                }
                records.push(SnapshotRecord {
                    table: table.name().to_owned(),
                    key,
                    value: Base64::encode_string(&value),
                });
            }
        }
        Ok(Snapshot {
            root_key: Base64::encode_string(self.root.bytes()),
            state_version: self.state_version(),
            records,
        })
    }

    /// Creates this KMS's state at `location` from `snapshot`, sealed under `sealing`, and
    /// opens it. Refuses a location that already holds a KMS state (nothing stored is
    /// overwritten) and a snapshot that does not open (every record is checked as at any open).
    pub fn join(
        location: impl Into<Location>,
        sealing: SealingKey,
        anchor: Box<dyn VersionAnchor>,
        snapshot: &Snapshot,
    ) -> Result<Self, KmsError> {
        let root = snapshot.root()?;
        let batch = snapshot.batch()?;
        Self::create_with(location.into(), sealing, anchor, &root, batch)
    }

    /// A new replica of a replicated deployment: keeps the root key of `snapshot` in its own,
    /// empty store at `local` and opens the shared store with it ([`Kms::open_shared`]). The
    /// snapshot's records are not needed: they are in the shared store.
    pub fn join_shared(
        local: impl Into<Location>,
        sealing: SealingKey,
        shared: Location,
        anchor: Box<dyn VersionAnchor>,
        snapshot: &Snapshot,
    ) -> Result<Self, KmsError> {
        let root = snapshot.root()?;
        let own = Self::open_own(local, sealing)?;
        Self::start_shared(own, shared, anchor, root)
    }

    /// Creates this KMS's state at `location` around a root key restored from the recovery
    /// officers' shares ([`crate::recovery::RecoverySession`]) and, if given, the records of a
    /// [backup](Kms::export_backup) (which must open under that root key). Refuses a location
    /// that already holds a KMS state.
    pub fn restore(
        location: impl Into<Location>,
        sealing: SealingKey,
        anchor: Box<dyn VersionAnchor>,
        root: &RootKey,
        backup: Option<&[u8]>,
    ) -> Result<Self, KmsError> {
        let mut batch = Batch::new();
        if let Some(backup) = backup {
            let plain = crate::crypto::open(&backup_key(root), BACKUP_AAD.as_bytes(), backup)
                .map_err(|e| {
                    invalid(format!(
                        "the backup does not open under the restored root key ({e:?}): it is of another KMS, or altered"
                    ))
                })?;
            let snapshot = Snapshot::from_json(&plain)?;
            if !snapshot.root_key.is_empty() {
                return Err(invalid("a backup must not carry a root key"));
            }
            batch = snapshot.batch()?;
        }
        Self::create_with(location.into(), sealing, anchor, root, batch)
    }

    /// A new state at `location`: `root` plus `records`, one commit, then opened as at any start.
    fn create_with(
        location: Location,
        sealing: SealingKey,
        anchor: Box<dyn VersionAnchor>,
        root: &RootKey,
        mut records: Batch,
    ) -> Result<Self, KmsError> {
        records.put(Table::Meta, ROOT_KEY, root.bytes());
        let mut store = Store::open(location.clone(), sealing, anchor)?;
        if !store.is_empty()? {
            return Err(KmsError::Record {
                record: location.describe(),
                reason: "already holds a KMS state: refusing to write over it".into(),
            });
        }
        store.commit(records)?;
        let (sealing, anchor) = store.into_parts();
        // Reopened as at any start: every record checked, the org and KEK records parsed.
        Self::open_with_key(location, sealing, anchor)
    }
}
