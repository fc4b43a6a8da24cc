//! `coffer-kms`: the core of the KMS appliance: the key hierarchy, its state sealed on
//! untrusted storage, the rollback defence, the API over the attested mesh, replicas and
//! recovery. The kms image's `kms-serve` (`kms-appliance/src/serve.rs`) runs it.
//!
//! **Owns:**
//! - [`keys`]: the root key (OS CSPRNG, generated at first start), per-org KEKs with versions
//!   (create, rotate, retire a previous version, destroy every version = crypto-shredding), and
//!   data keys returned in the clear and wrapped (AES-256-GCM, associated data binding org, key
//!   id and KEK version). Key bytes only in zeroizing types; no `Debug` prints them.
//! - [`store`]: the KMS state in a [`redb`] file or on a raw data disk ([`store::disk`]), every
//!   record AES-256-GCM-sealed under the platform sealing key with associated data binding
//!   table, key and format; a state version raised by every durable commit, and a [`digest`] of
//!   the whole record set. Beside the state, outside it: the audit journal's records
//!   ([`store::journal`], flushed every half second and carried over at restart by
//!   [`api::journal`]).
//! - [`Snapshot`] (`Kms::export_snapshot` / `Kms::join`): root key and records handed to a
//!   joining, pinned kms (replica or upgrade); `Kms::export_backup` / `Kms::restore`: the
//!   records sealed under a root-derived key, restored with the officers' root key.
//! - [`rollback`]: the [`VersionAnchor`](rollback::VersionAnchor) checked at open; a TPM NV
//!   counter implementation behind feature `tpm`.
//! - [`Kms`]: the operations, each one durable commit before it returns.
//! - [`checkpoint`]: the audit log's checkpoint co-signer (Ed25519 key derived from the root
//!   key; signs a checkpoint only if consistent with the last it signed, recorded before the
//!   signature is returned).
//! - [`recovery`]: k-of-n recovery of the root key: Shamir shares age-encrypted to recovery
//!   officers, and the restore session of a fresh KMS that checks and combines them.
//!
//! **Trusts:** the platform's sealing key (`EvidenceProvider::sealing_key`, bound to this
//! image's measurement and policy), the OS CSPRNG, the rollback anchor where there is one, and
//! redb for atomic, durable commits. **Not** the disk: everything read from it is checked.
//!
//! **Checks, at every open, before serving:** the store was sealed by this image's key (else
//! [`StoreError::SealedByAnotherKey`]); the state record opens; its version is not below the
//! anchor ([`StoreError::RolledBack`]); every record opens under its own table and key
//! ([`StoreError::Tampered`], naming the record); the records are exactly the set committed
//! ([`StoreError::DigestMismatch`]). On every unwrap: the org is live, the KEK version is not
//! retired, and the wrapped key authenticates with its org, id and version.
//!
//! **How rollback is defended, per platform** (details in [`rollback`]):
//! - *Azure:* a TPM 2.0 NV counter in the vTPM ([`rollback::tpm::TpmNvCounter`], feature `tpm`,
//!   which links the shared libtss2 and so is not in the static musl appliance yet): every commit
//!   raises it, and a store whose version is below it is refused.
//! - *SEV-SNP and sim:* no guest-usable monotonic counter exists. The defence will be a quorum of
//!   KMS replicas holding the latest version, which arrives with the replicas; until then these
//!   platforms run [`rollback::Unanchored`], and **rollback there is not defended**: a host that
//!   kept an old copy of the disk can restart the KMS on it, bringing back retired versions and
//!   destroyed orgs.
//! - Everywhere: a write that committed but crashed before the anchor advanced was never
//!   acknowledged, and may be lost to a rollback.

#![forbid(unsafe_code)]

pub mod api;
pub mod authz;
pub mod checkpoint;
mod crypto;
pub mod digest;
pub mod keys;
mod kms;
pub mod recovery;
pub mod rollback;
pub mod store;

pub use api::{AuditSink, KmsApi, LogAuditSink, MemoryAuditSink};
pub use authz::{Authorizer, AuthzConfig, Decision};
pub use crypto::KEY_LEN;
pub use keys::{DataKey, KeyError, KeyId, OrgId, WrappedDataKey};
pub use kms::replica::Snapshot;
pub use kms::{DataKeyInfo, KekState, KekVersionInfo, Kms, KmsError, OrgKeyInfo, Rewrap};
pub use store::{SealingKey, StoreError};
