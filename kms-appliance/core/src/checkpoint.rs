//! The audit log's checkpoint co-signer: the KMS signs a checkpoint of the audit log only when
//! it is provably an extension of the last one it signed.
//!
//! The control plane stores the audit log (a Merkle-tree log of every user action and KMS
//! decision) and signs its checkpoints; the KMS co-signs them. Because the KMS signs a new
//! checkpoint only after checking it against the last one it signed, a verifier that trusts the
//! KMS's key knows that every checkpoint it sees co-signed belongs to one linear history: the
//! control plane cannot show one party a log and another party a fork of it, nor drop or
//! rewrite an entry after a checkpoint covered it.
//!
//! **Owns:** the signing key, Ed25519, derived from the root key with HKDF-SHA256 (no salt, info
//! [`SIGNER_HKDF_INFO`]), so every replica and a recovered KMS sign with the same key; its name
//! is [`signer_key_name`]`(origin)` (the log's origin and `/kms`), so its verifier key says which
//! log it co-signs. The seed lives in a [`Zeroizing`] buffer and is derived afresh for each use.
//! And the rule for signing, [`CheckpointSigner::check`].
//!
//! **Checks, before signing** (each refusal names expected vs got, roots in hex): the text
//! parses as a C2SP checkpoint; its origin is the configured one; it has no extension lines (the
//! KMS vouches only for what it checked: origin, size and root); an empty tree has the empty
//! root; its size is not below the last signed size; at the same size the root is the same; at
//! a bigger size the RFC 9162 consistency proof from the last signed checkpoint verifies. The
//! first checkpoint is signed without a proof (there is nothing to be consistent with).
//!
//! **Trusts:** the caller for the origin (the deployment's, from its measured configuration)
//! and, through [`Kms`](crate::Kms), the sealed store to remember the last signed checkpoint.
//! The KMS records it durably *before* returning a signature, so a crash cannot make it sign two
//! different trees of one size. That memory is exactly as strong as the store's rollback
//! defence ([`crate::rollback`]): on SEV-SNP and sim, until the replica quorum exists, a host
//! that restarts the KMS on an old copy of its disk can make it sign a fork of what it signed
//! since that copy. Likewise, replicas share the key (they share the root key) but each
//! remembers only what it signed itself (a replica that joins copies the record once): until
//! the replicas agree on the last signed checkpoint, a control plane that asks two replicas can
//! get two different trees of one size co-signed.
//!
//! [`signer_report_data`] is what the appliance puts in its evidence's REPORT_DATA to bind the
//! verifier key to the attested KMS.

use std::fmt;

use coffer_tlog::merkle::{empty_root, verify_consistency, Hash};
use coffer_tlog::note::{KeyError as NoteKeyError, Note, NoteError, NoteSigner, VerifierKey};
use coffer_tlog::{Checkpoint, MalformedCheckpoint, ProofError};
use sha2::{Digest as _, Sha256, Sha512};
use zeroize::Zeroizing;

use crate::keys::RootKey;
use crate::store::StoreError;

/// HKDF-SHA256 `info` deriving the checkpoint signer's Ed25519 seed from the root key.
pub const SIGNER_HKDF_INFO: &[u8] = b"coffer-kms audit checkpoint signer v1";

/// The domain label of [`signer_report_data`].
pub const REPORT_DATA_LABEL: &[u8] = b"coffer-kms audit checkpoint signer report data v1";

/// The name of the KMS's co-signing key for the log `origin`: `<origin>/kms`.
pub fn signer_key_name(origin: &str) -> String {
    format!("{origin}/kms")
}

/// The 64 bytes of REPORT_DATA that bind the verifier key `vkey` to evidence asked for with
/// `nonce`: `SHA-512(label ‖ SHA-256(nonce) ‖ SHA-256(vkey))`. Fixed-length hashes of both keep
/// the encoding unambiguous.
pub fn signer_report_data(nonce: &[u8], vkey: &str) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(REPORT_DATA_LABEL);
    h.update(Sha256::digest(nonce));
    h.update(Sha256::digest(vkey.as_bytes()));
    h.finalize().into()
}

/// Why the KMS did not sign a checkpoint, or could not record that it did.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The text is not a C2SP checkpoint.
    #[error(transparent)]
    Malformed(#[from] MalformedCheckpoint),
    /// The origin cannot name a note key.
    #[error("log origin {origin:?} cannot name the KMS's signing key: {reason}")]
    BadOrigin {
        /// The origin configured.
        origin: String,
        /// Why not.
        reason: NoteKeyError,
    },
    /// A checkpoint of another log.
    #[error("checkpoint is for log {got:?}, expected {expected:?}")]
    WrongOrigin {
        /// The configured origin.
        expected: String,
        /// The checkpoint's origin.
        got: String,
    },
    /// Extension lines, which the KMS does not check and so does not sign.
    #[error("checkpoint has {count} extension line(s), expected none: the KMS co-signs only the origin, size and root it checked")]
    ExtensionLines {
        /// How many.
        count: usize,
    },
    /// A checkpoint of the empty tree whose root is not the empty tree's.
    #[error("checkpoint of size 0 has root {got}, expected the empty tree's {expected}")]
    EmptyTreeRoot {
        /// The empty tree's root, hex.
        expected: String,
        /// The checkpoint's root, hex.
        got: String,
    },
    /// Smaller than the last signed: entries would have been dropped.
    #[error("checkpoint of size {got} is smaller than the last signed checkpoint, of size {last} (a truncated log)")]
    Truncated {
        /// The last signed size.
        last: u64,
        /// The checkpoint's size.
        got: u64,
    },
    /// The same size as the last signed, another root: a fork.
    #[error("checkpoint of size {size} has root {got}, expected {expected}, the root of the last signed checkpoint of that size (a fork)")]
    Fork {
        /// The size.
        size: u64,
        /// The last signed root, hex.
        expected: String,
        /// The checkpoint's root, hex.
        got: String,
    },
    /// Bigger than the last signed, but the consistency proof does not show it extends it.
    #[error("checkpoint of size {size} (root {root}) is not proven consistent with the last signed checkpoint of size {last_size} (root {last_root}): {reason}")]
    Inconsistent {
        /// The last signed size.
        last_size: u64,
        /// The last signed root, hex.
        last_root: String,
        /// The checkpoint's size.
        size: u64,
        /// The checkpoint's root, hex.
        root: String,
        /// What the proof check found.
        reason: Box<ProofError>,
    },
    /// The KMS state could not be read or written.
    #[error("the KMS state: {0}")]
    State(Box<crate::KmsError>),
    /// The signing key or its name was refused.
    #[error("audit checkpoint signing key: {0}")]
    Key(#[from] NoteKeyError),
    /// The signed note could not be made.
    #[error("audit checkpoint note: {0}")]
    Note(#[from] NoteError),
    /// Recording the signed checkpoint failed: nothing was signed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The recorded last signed checkpoint does not hold what it should.
    #[error("record {record}: {reason}")]
    Record {
        /// `table/key`.
        record: String,
        /// What is wrong.
        reason: String,
    },
}

/// The Ed25519 seed of the checkpoint signer: HKDF-SHA256(root key, info).
fn derive_seed(root: &RootKey) -> Zeroizing<[u8; 32]> {
    root.derive(SIGNER_HKDF_INFO)
}

/// The checkpoint signer's Ed25519 public key for `root` (the same for every origin).
pub fn signer_public_key(root: &RootKey) -> Result<[u8; 32], CheckpointError> {
    // Any valid name: the public key does not depend on it.
    let signer = NoteSigner::ed25519_from_seed("coffer-kms", derive_seed(root))?;
    Ok(*signer.public_key())
}

/// A checkpoint the KMS signed, and the note it returned (the checkpoint text with the KMS's
/// signature line).
#[derive(Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    checkpoint: Checkpoint,
    note: Vec<u8>,
}

impl fmt::Debug for SignedCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedCheckpoint")
            .field("origin", &self.checkpoint.origin())
            .field("size", &self.checkpoint.size())
            .field("root", &hex::encode(self.checkpoint.root()))
            .finish()
    }
}

impl SignedCheckpoint {
    /// A checkpoint and its signed note, as recorded.
    pub fn new(checkpoint: Checkpoint, note: Vec<u8>) -> Self {
        Self { checkpoint, note }
    }

    /// The checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The signed note: checkpoint text, blank line, the KMS's signature line.
    pub fn note(&self) -> &[u8] {
        &self.note
    }
}

/// Signs audit checkpoints for one log, each only if consistent with the last it signed.
pub struct CheckpointSigner {
    origin: String,
    signer: NoteSigner,
    last: Option<SignedCheckpoint>,
}

impl fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("origin", &self.origin)
            .field("key", &self.signer.verifier_key().label())
            .field("last", &self.last)
            .finish()
    }
}

impl CheckpointSigner {
    /// The signer of log `origin` with the key derived from `root`, which last signed `last`
    /// (`None`: it never signed; the next checkpoint is accepted without proof).
    pub fn new(
        root: &RootKey,
        origin: &str,
        last: Option<SignedCheckpoint>,
    ) -> Result<Self, CheckpointError> {
        let name = signer_key_name(origin);
        let signer = NoteSigner::ed25519_from_seed(&name, derive_seed(root)).map_err(|reason| {
            CheckpointError::BadOrigin {
                origin: origin.to_owned(),
                reason,
            }
        })?;
        if let Some(last) = &last {
            if last.checkpoint.origin() != origin {
                return Err(CheckpointError::WrongOrigin {
                    expected: origin.to_owned(),
                    got: last.checkpoint.origin().to_owned(),
                });
            }
        }
        Ok(Self {
            origin: origin.to_owned(),
            signer,
            last,
        })
    }

    /// The log this signer signs for.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The verifier key of the signing key (C2SP `name+id+key`).
    pub fn verifier_key(&self) -> VerifierKey {
        self.signer.verifier_key()
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        *self.signer.public_key()
    }

    /// The last checkpoint signed.
    pub fn last_signed(&self) -> Option<&SignedCheckpoint> {
        self.last.as_ref()
    }

    /// Whether `new` may be signed after the last signed checkpoint, given `consistency_proof`
    /// from the last signed size to `new`'s (see the module doc).
    pub fn check(
        &self,
        new: &Checkpoint,
        consistency_proof: &[Hash],
    ) -> Result<(), CheckpointError> {
        if new.origin() != self.origin {
            return Err(CheckpointError::WrongOrigin {
                expected: self.origin.clone(),
                got: new.origin().to_owned(),
            });
        }
        if !new.extensions().is_empty() {
            return Err(CheckpointError::ExtensionLines {
                count: new.extensions().len(),
            });
        }
        if new.size() == 0 && *new.root() != empty_root() {
            return Err(CheckpointError::EmptyTreeRoot {
                expected: hex::encode(empty_root()),
                got: hex::encode(new.root()),
            });
        }
        let Some(last) = &self.last else {
            return Ok(());
        };
        let last = &last.checkpoint;
        if new.size() < last.size() {
            return Err(CheckpointError::Truncated {
                last: last.size(),
                got: new.size(),
            });
        }
        if new.size() == last.size() && new.root() != last.root() {
            return Err(CheckpointError::Fork {
                size: new.size(),
                expected: hex::encode(last.root()),
                got: hex::encode(new.root()),
            });
        }
        verify_consistency(
            last.size(),
            new.size(),
            last.root(),
            new.root(),
            consistency_proof,
        )
        .map_err(|reason| CheckpointError::Inconsistent {
            last_size: last.size(),
            last_root: hex::encode(last.root()),
            size: new.size(),
            root: hex::encode(new.root()),
            reason: Box::new(reason),
        })
    }

    /// Signs the checkpoint text `new` if [`check`](Self::check) allows it, and remembers it as
    /// the last signed. Returns the signed note: the text, a blank line and the KMS's signature
    /// line (the control plane merges it with its own signature). Persisting the last signed
    /// checkpoint is the caller's duty: [`Kms::sign_checkpoint`](crate::Kms::sign_checkpoint)
    /// records it durably before returning.
    pub fn sign(
        &mut self,
        new: &[u8],
        consistency_proof: &[Hash],
    ) -> Result<Vec<u8>, CheckpointError> {
        let checkpoint = Checkpoint::parse(new)?;
        self.check(&checkpoint, consistency_proof)?;
        let mut note = Note::new(checkpoint.to_text())?;
        note.sign(&self.signer)?;
        let bytes = note.to_bytes()?;
        self.last = Some(SignedCheckpoint::new(checkpoint, bytes.clone()));
        Ok(bytes)
    }
}

/// Where the KMS appliance takes checkpoint co-signing requests, on its attestation endpoint
/// (server-authenticated TLS; the control plane checks the endpoint's `audit_signer` claim).
/// `POST` JSON `{"token": CHECKPOINT_REQUEST_TYP JWT, "checkpoint": text, "proof": [base64
/// hash, ...]}`; the answer is the checkpoint note signed by the KMS.
pub const COSIGN_PATH: &str = "/.well-known/coffer/audit/checkpoint";

impl From<crate::KmsError> for CheckpointError {
    fn from(e: crate::KmsError) -> Self {
        match e {
            crate::KmsError::Store(e) => Self::Store(e),
            other => Self::State(Box::new(other)),
        }
    }
}
