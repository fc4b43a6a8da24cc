//! k-of-n recovery of the root key: split at initialisation to recovery officers, restored from
//! any k of their shares into a fresh, attested KMS.
//!
//! ```text
//! KMS (first start)      split(root, policy, deployment) -> RecoveryKit (public: no secret)
//!                          share i = Shamir(root)_i in an envelope, age-encrypted to officer i
//! officer i (offline)    reencrypt_share(share i, officer identity, session recipient)
//! fresh KMS              RecoverySession::new(kit.info) -> recipient, bound into its evidence
//!                          submit(re-encrypted share) x k; complete() -> RootKey
//! ```
//!
//! **Owns:** the split (Shamir over GF(256), byte-wise, with [`vsss_rs`]; share *i* is the
//! polynomials evaluated at x = *i*, i = 1..=n in the order the policy names the officers); the
//! share envelope (JSON: format, deployment id, split id, index, threshold, n, officer, root-key
//! commitment, the 32 share bytes in hex) and its age encryption (X25519 recipients, ASCII
//! armor: officers can open it with the `age` or `rage` tools as well); the restoring session's
//! ephemeral age identity; and [`recovery_report_data`], what the restoring KMS puts in its
//! evidence so an officer re-encrypts only to an attested KMS.
//!
//! **The commitment** is `HMAC-SHA256(key = root key, "coffer-kms root commitment v1" ‖
//! len ‖ deployment id)`: it tells the right root from a wrong combination of shares without
//! revealing anything about the root (it is a PRF output under a 256-bit random key).
//!
//! **Threshold 1** is allowed, as the deployment manifest allows it
//! ([`coffer_types::Deployment::validate`]): a manifest that validated must not make the KMS
//! fail at first start. It means **any single officer can restore the root key alone**: with
//! k = 1 the Shamir polynomial is constant, and every share *is* the root key (encrypted to its
//! officer only). Choose k >= 2 unless that is really what is wanted.
//!
//! **Checks, on every share a session receives** (each refusal names expected vs got): it
//! decrypts with the session's identity (else: encrypted to another recipient, or altered); the
//! envelope parses, is of this format and self-consistent; its deployment id, split id,
//! threshold, n and commitment are the expected ones; its index is within 1..=n, names the
//! officer the split gave that index to, and was not submitted before. At completion: at least k
//! shares, and the combined key's commitment is the expected one (a corrupted share cannot pass).
//! An officer's [`reencrypt_share`] checks that the share decrypts with their identity and is
//! theirs (the envelope names their recipient).
//!
//! **Trusts:** the OS CSPRNG; `age` (X25519, ChaCha20-Poly1305) and `vsss-rs` (constant-time
//! GF(256)). And the caller of [`RecoverySession::new`] for the [`RecoveryInfo`]: it decides
//! which root key the session accepts, so it must come from a trusted place (the kit the KMS
//! produced, as the officers know it), not from the host: whoever supplies both the expectation
//! and k shares chooses the root key. The officers' defence is to re-encrypt only to a session
//! whose attested evidence binds its recipient ([`recovery_report_data`]) and whose expected
//! commitment, as that attested KMS reports it ([`SessionStatus`]), is the one their own share
//! carries ([`share_info`]).
//!
//! **Secrets:** share bytes and the combined key live only in [`Zeroizing`] buffers (the
//! decrypted envelope too); the session's identity is an x25519 `StaticSecret`, wiped on drop;
//! no `Debug` here prints a secret. One residue outside our reach: vsss-rs does not wipe its
//! polynomial buffer (the last byte's coefficients) when a split returns.

mod envelope;
mod error;
mod shamir;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age::x25519::{Identity, Recipient};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use zeroize::Zeroizing;

use crate::crypto::{self, KEY_LEN};
use crate::keys::RootKey;
use envelope::{decrypt_with, encrypt_to, open_envelope, open_officer_envelope, seal_envelope};
use shamir::{shamir_combine, shamir_split};

/// An officer's age X25519 identity, as [`parse_officer_identity`] returns it.
pub use age::x25519::Identity as OfficerIdentity;
pub use error::RecoveryError;

/// The most officers a policy may name (as the deployment manifest allows).
pub const MAX_OFFICERS: usize = coffer_types::MAX_RECOVERY_OFFICERS;
/// The format of a share envelope (the plaintext inside the age encryption).
pub const SHARE_FORMAT: &str = "coffer-kms recovery share v1";
/// The format of a [`RecoveryKit`].
pub const KIT_FORMAT: &str = "coffer-kms recovery kit v1";
/// The label of the root key commitment (HMAC-SHA256 message, before the deployment id).
pub const COMMITMENT_LABEL: &str = "coffer-kms root commitment v1";
/// The domain label of [`recovery_report_data`].
pub const REPORT_DATA_LABEL: &[u8] = b"coffer-kms recovery session report data v1";
/// The largest encrypted share accepted (an armored share is about 1 KiB).
pub const MAX_ENCRYPTED_SHARE: usize = 16 * 1024;

/// Who can restore the root key: any `threshold` of the officers. Validated: 1 to
/// [`MAX_OFFICERS`] distinct age X25519 recipients, 1 <= threshold <= n.
#[derive(Debug, Clone)]
pub struct RecoveryPolicy {
    threshold: u8,
    officers: Vec<(String, Recipient)>,
}

impl RecoveryPolicy {
    /// Checks a policy. Threshold 1 is accepted: any one officer can then restore alone.
    pub fn new(threshold: u8, officers: &[String]) -> Result<Self, RecoveryError> {
        let n = officers.len();
        if n == 0 || n > MAX_OFFICERS {
            return Err(RecoveryError::OfficerCount { officers: n });
        }
        if threshold == 0 || usize::from(threshold) > n {
            return Err(RecoveryError::Threshold {
                threshold,
                officers: n,
            });
        }
        let mut parsed: Vec<(String, Recipient)> = Vec::with_capacity(n);
        for (position, text) in officers.iter().enumerate() {
            let recipient = parse_recipient(&format!("recovery officer {}", position + 1), text)?;
            // Compare canonical forms: the same key in other letter case is the same officer.
            let canonical = recipient.to_string();
            if let Some(first) = parsed.iter().position(|(seen, _)| *seen == canonical) {
                return Err(RecoveryError::DuplicateOfficer {
                    officer: canonical,
                    first: first + 1,
                    second: position + 1,
                });
            }
            parsed.push((canonical, recipient));
        }
        Ok(Self {
            threshold,
            officers: parsed,
        })
    }

    /// How many shares restore the root key.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// The officers' recipients, share index i + 1 for position i.
    pub fn officers(&self) -> impl Iterator<Item = &str> {
        self.officers.iter().map(|(text, _)| text.as_str())
    }
}

impl TryFrom<&coffer_types::RecoveryPolicy> for RecoveryPolicy {
    type Error = RecoveryError;
    fn try_from(policy: &coffer_types::RecoveryPolicy) -> Result<Self, RecoveryError> {
        Self::new(policy.threshold, &policy.officers)
    }
}

/// What a split is, without any share: what a restoring session expects. Public.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryInfo {
    /// The deployment whose root key was split.
    pub deployment_id: String,
    /// Random id of this split: shares of two splits never combine.
    #[serde(with = "hex")]
    pub split_id: [u8; 16],
    /// How many shares restore the root key.
    pub threshold: u8,
    /// The officers' recipients; share index i + 1 belongs to `officers[i]`.
    pub officers: Vec<String>,
    /// The root key commitment (see the module doc).
    #[serde(with = "hex")]
    pub commitment: [u8; 32],
}

impl RecoveryInfo {
    /// Checks the info is a valid split description (deployment id, policy).
    pub fn validate(&self) -> Result<(), RecoveryError> {
        check_deployment_id(&self.deployment_id)?;
        RecoveryPolicy::new(self.threshold, &self.officers)?;
        Ok(())
    }

    fn shares(&self) -> u8 {
        // validate() bounds the officers to MAX_OFFICERS (16).
        u8::try_from(self.officers.len()).unwrap_or(u8::MAX)
    }
}

/// One officer's share, age-encrypted to that officer only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptedShare {
    /// The share index (1..=n).
    pub index: u8,
    /// The officer's recipient.
    pub officer: String,
    /// The envelope, age-encrypted to `officer`, ASCII-armored (`age -d -i KEY` opens it).
    pub age: String,
}

/// What the KMS hands out after a split: the [`RecoveryInfo`] and the n encrypted shares. It
/// holds no plaintext secret and may be stored or sent unprotected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryKit {
    /// [`KIT_FORMAT`].
    pub format: String,
    /// The split.
    pub info: RecoveryInfo,
    /// Share i + 1 at position i.
    pub shares: Vec<EncryptedShare>,
}

impl RecoveryKit {
    /// Parses and checks a kit: format, info, one share per officer in index order.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RecoveryError> {
        let kit: Self = serde_json::from_slice(bytes).map_err(|e| RecoveryError::Kit {
            reason: e.to_string(),
        })?;
        if kit.format != KIT_FORMAT {
            return Err(RecoveryError::Kit {
                reason: format!("format is {:?}, expected {KIT_FORMAT:?}", kit.format),
            });
        }
        kit.info.validate()?;
        if kit.shares.len() != kit.info.officers.len() {
            return Err(RecoveryError::Kit {
                reason: format!(
                    "{} shares for {} officers",
                    kit.shares.len(),
                    kit.info.officers.len()
                ),
            });
        }
        for (position, (share, officer)) in kit.shares.iter().zip(&kit.info.officers).enumerate() {
            if usize::from(share.index) != position + 1 || share.officer != *officer {
                return Err(RecoveryError::Kit {
                    reason: format!(
                        "share at position {} is index {} for {}, expected index {} for {officer}",
                        position + 1,
                        share.index,
                        share.officer,
                        position + 1
                    ),
                });
            }
        }
        Ok(kit)
    }

    /// The share for share index `index` (1..=n).
    pub fn share(&self, index: u8) -> Option<&EncryptedShare> {
        self.shares.iter().find(|s| s.index == index)
    }
}

/// What a share envelope says about itself (everything but the share bytes): what an officer
/// checks before re-encrypting, and compares with what the restoring KMS announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShareInfo {
    /// The deployment.
    pub deployment_id: String,
    /// The split.
    #[serde(with = "hex")]
    pub split_id: [u8; 16],
    /// This share's index.
    pub index: u8,
    /// How many shares restore the root key.
    pub threshold: u8,
    /// How many shares the split made (n).
    pub shares: u8,
    /// The officer it was made for.
    pub officer: String,
    /// The root key commitment.
    #[serde(with = "hex")]
    pub commitment: [u8; 32],
}

/// Splits `root` k-of-n to the policy's officers. Each share goes in an envelope naming the
/// deployment, this split and the root key commitment, encrypted to its officer only.
pub fn split(
    root: &RootKey,
    policy: &RecoveryPolicy,
    deployment_id: &str,
) -> Result<RecoveryKit, RecoveryError> {
    check_deployment_id(deployment_id)?;
    let mut split_id = [0u8; 16];
    crypto::random(&mut split_id).map_err(|e| RecoveryError::Rng {
        what: "drawing a split id",
        reason: format!("{e:?}"),
    })?;
    let info = RecoveryInfo {
        deployment_id: deployment_id.to_owned(),
        split_id,
        threshold: policy.threshold,
        officers: policy.officers().map(str::to_owned).collect(),
        commitment: commitment(root.bytes(), deployment_id),
    };
    let n = info.shares();
    let points = shamir_split(root.bytes(), policy.threshold, n)?;
    let mut shares = Vec::with_capacity(points.len());
    for (point, (officer, recipient)) in points.iter().zip(&policy.officers) {
        let (index, y) = match point.split_first() {
            Some((index, y)) if y.len() == KEY_LEN => (*index, y),
            _ => {
                return Err(RecoveryError::Split {
                    reason: format!("a share of {} bytes, expected {}", point.len(), KEY_LEN + 1),
                })
            }
        };
        let envelope = seal_envelope(&info, index, officer, y)?;
        let age = encrypt_to(recipient, &envelope).map_err(|reason| RecoveryError::Encrypt {
            what: format!("share {index} to officer {officer}"),
            reason,
        })?;
        shares.push(EncryptedShare {
            index,
            officer: officer.clone(),
            age,
        });
    }
    Ok(RecoveryKit {
        format: KIT_FORMAT.to_owned(),
        info,
        shares,
    })
}

/// The officer's side, offline: decrypts `encrypted_share` with the officer's identity, checks
/// it is a well-formed share made for this officer, and encrypts it (unchanged) to `to`, the
/// restoring session's recipient. Run it only for a session whose attested evidence binds `to`
/// ([`recovery_report_data`]) and whose expected commitment is the one [`share_info`] shows.
pub fn reencrypt_share(
    encrypted_share: &[u8],
    officer_identity: &OfficerIdentity,
    to: &str,
) -> Result<Vec<u8>, RecoveryError> {
    let to = parse_recipient("the session recipient", to)?;
    let plain = decrypt_with(officer_identity, encrypted_share, "this officer's identity")?;
    open_officer_envelope(&plain, officer_identity)?;
    encrypt_to(&to, &plain)
        .map(String::into_bytes)
        .map_err(|reason| RecoveryError::Encrypt {
            what: format!("the share to the session recipient {to}"),
            reason,
        })
}

/// What an officer's share says about itself, after the same checks as [`reencrypt_share`].
pub fn share_info(
    encrypted_share: &[u8],
    officer_identity: &OfficerIdentity,
) -> Result<ShareInfo, RecoveryError> {
    let plain = decrypt_with(officer_identity, encrypted_share, "this officer's identity")?;
    open_officer_envelope(&plain, officer_identity).map(|(info, _)| info)
}

/// A new officer identity: the text of an age identity file (what `age-keygen` writes, which
/// the age and rage tools read) and its recipient (`age1...`).
pub fn new_officer_identity() -> (Zeroizing<String>, String) {
    let identity = Identity::generate();
    let recipient = identity.to_public().to_string();
    let secret = identity.to_string();
    let mut text = Zeroizing::new(String::with_capacity(256));
    text.push_str("# coffer recovery officer identity (age X25519): keep it offline, private\n");
    text.push_str("# public key: ");
    text.push_str(&recipient);
    text.push('\n');
    text.push_str(secret.expose_secret());
    text.push('\n');
    (text, recipient)
}

/// Reads an age identity file holding exactly one X25519 identity (`AGE-SECRET-KEY-1...`;
/// blank lines and `#` comments are skipped). Errors never quote the file.
pub fn parse_officer_identity(text: &str) -> Result<OfficerIdentity, RecoveryError> {
    let mut keys = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'));
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(RecoveryError::Identity {
            reason: "expected exactly one AGE-SECRET-KEY-1... line".into(),
        });
    };
    Identity::from_str(key).map_err(|reason| RecoveryError::Identity {
        reason: format!("not an age X25519 identity: {reason}"),
    })
}

/// The 64 bytes of REPORT_DATA that bind a restoring session's recipient to evidence asked for
/// with `nonce`: `SHA-512(REPORT_DATA_LABEL ‖ SHA-256(nonce) ‖ SHA-256(recipient))`. Fixed-length
/// hashes keep the encoding unambiguous. An officer re-encrypts to `recipient` only after
/// checking the KMS's evidence carries this value for a nonce of their choosing.
pub fn recovery_report_data(nonce: &[u8], recipient: &str) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(REPORT_DATA_LABEL);
    h.update(Sha256::digest(nonce));
    h.update(Sha256::digest(recipient.as_bytes()));
    h.finalize().into()
}

/// A restore in progress, inside a fresh KMS: an ephemeral age identity that officers
/// re-encrypt their shares to, and the shares received so far. Not serialisable (it holds
/// secrets); [`RecoverySession::status`] is its public view.
pub struct RecoverySession {
    identity: Identity,
    recipient: String,
    expected: RecoveryInfo,
    shares: BTreeMap<u8, Zeroizing<[u8; KEY_LEN]>>,
}

impl fmt::Debug for RecoverySession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoverySession")
            .field("recipient", &self.recipient)
            .field("expected", &self.expected)
            .field("received", &self.shares.keys().collect::<Vec<_>>())
            .field("identity", &"[redacted]")
            .finish()
    }
}

/// The public state of a [`RecoverySession`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionStatus {
    /// The session's recipient: where officers re-encrypt their shares.
    pub recipient: String,
    /// The split the session restores from.
    pub expected: RecoveryInfo,
    /// The share indices received so far.
    pub received: Vec<u8>,
}

impl RecoverySession {
    /// Starts a session expecting shares of the split `expected` describes, with a fresh
    /// ephemeral identity. `expected` must come from a trusted source (see the module doc).
    pub fn new(expected: RecoveryInfo) -> Result<Self, RecoveryError> {
        expected.validate()?;
        let identity = Identity::generate();
        let recipient = identity.to_public().to_string();
        Ok(Self {
            identity,
            recipient,
            expected,
            shares: BTreeMap::new(),
        })
    }

    /// The recipient officers re-encrypt to; the KMS binds it into its evidence with
    /// [`recovery_report_data`].
    pub fn recipient(&self) -> &str {
        &self.recipient
    }

    /// The public state: recipient, expected split, indices received.
    pub fn status(&self) -> SessionStatus {
        SessionStatus {
            recipient: self.recipient.clone(),
            expected: self.expected.clone(),
            received: self.shares.keys().copied().collect(),
        }
    }

    /// Takes a share an officer re-encrypted to [`Self::recipient`], checks it (see the module
    /// doc) and keeps it. Returns its index.
    pub fn submit(&mut self, encrypted_share: &[u8]) -> Result<u8, RecoveryError> {
        let plain = decrypt_with(
            &self.identity,
            encrypted_share,
            "this recovery session's identity",
        )?;
        let (got, share) = open_envelope(&plain)?;
        let e = &self.expected;
        mismatch("deployment id", &e.deployment_id, &got.deployment_id)?;
        mismatch(
            "split id",
            &hex::encode(e.split_id),
            &hex::encode(got.split_id),
        )?;
        mismatch("threshold", &e.threshold, &got.threshold)?;
        mismatch("share count (n)", &e.shares(), &got.shares)?;
        mismatch(
            "root key commitment",
            &hex::encode(e.commitment),
            &hex::encode(got.commitment),
        )?;
        let Some(officer) = e.officers.get(usize::from(got.index).wrapping_sub(1)) else {
            return Err(RecoveryError::IndexOutOfRange {
                index: got.index,
                shares: e.shares(),
            });
        };
        mismatch("officer", officer, &got.officer)?;
        if self.shares.contains_key(&got.index) {
            return Err(RecoveryError::DuplicateIndex { index: got.index });
        }
        self.shares.insert(got.index, share);
        Ok(got.index)
    }

    /// Combines the shares received into the root key, once there are at least k, and checks
    /// it against the expected commitment.
    pub fn complete(self) -> Result<RootKey, RecoveryError> {
        let needed = self.expected.threshold;
        if self.shares.len() < usize::from(needed) {
            return Err(RecoveryError::NotEnoughShares {
                needed,
                got: self.shares.len(),
            });
        }
        let root = shamir_combine(&self.shares)?;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, root.as_ref());
        let message = commitment_message(&self.expected.deployment_id);
        if ring::hmac::verify(&key, &message, &self.expected.commitment).is_err() {
            let indices: Vec<String> = self.shares.keys().map(u8::to_string).collect();
            return Err(RecoveryError::CommitmentMismatch {
                expected: hex::encode(self.expected.commitment),
                count: self.shares.len(),
                indices: indices.join(", "),
            });
        }
        RootKey::from_bytes(root.as_ref()).map_err(|e| RecoveryError::Combine {
            reason: e.to_string(),
        })
    }
}

pub(super) fn mismatch<T: PartialEq + fmt::Display + ?Sized>(
    field: &'static str,
    expected: &T,
    got: &T,
) -> Result<(), RecoveryError> {
    if expected == got {
        return Ok(());
    }
    Err(RecoveryError::Mismatch {
        field,
        expected: expected.to_string(),
        got: got.to_string(),
    })
}

fn check_deployment_id(id: &str) -> Result<(), RecoveryError> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RecoveryError::DeploymentId { got: id.to_owned() })
    }
}

fn parse_recipient(what: &str, text: &str) -> Result<Recipient, RecoveryError> {
    Recipient::from_str(text).map_err(|reason| RecoveryError::Recipient {
        what: what.to_owned(),
        got: text.to_owned(),
        reason: reason.to_owned(),
    })
}

fn commitment_message(deployment_id: &str) -> Vec<u8> {
    crypto::aad(COMMITMENT_LABEL, &[deployment_id.as_bytes()])
}

fn commitment(root: &[u8; KEY_LEN], deployment_id: &str) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, root);
    let tag = ring::hmac::sign(&key, &commitment_message(deployment_id));
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests;

/// Where the KMS appliance serves recovery on its attestation endpoint (server-authenticated
/// TLS), and the endpoint claims a restoring KMS binds into its evidence. Shared by the
/// appliance and `coffer recovery`.
pub mod endpoint {
    /// `GET`: the recovery kit (public).
    pub const KIT_PATH: &str = "/.well-known/coffer/recovery/kit";
    /// `GET`: `{"restoring": bool, "status"?: SessionStatus}`.
    pub const STATUS_PATH: &str = "/.well-known/coffer/recovery";
    /// `POST`: one share re-encrypted to the session recipient.
    pub const SHARE_PATH: &str = "/.well-known/coffer/recovery/share";
    /// `GET` (serving): a fresh backup (records sealed under a root-derived key; see
    /// `Kms::export_backup`). `POST` (restoring): the backup to restore with the root key.
    pub const BACKUP_PATH: &str = "/.well-known/coffer/recovery/backup";
    /// Claim: the restoring session's recipient (age1...).
    pub const RECIPIENT_CLAIM: &str = "recovery_recipient";
    /// Claim: the split the session restores (hex).
    pub const SPLIT_CLAIM: &str = "recovery_split";
    /// Claim: the commitment of the root key it accepts (hex).
    pub const COMMITMENT_CLAIM: &str = "recovery_commitment";
}
