//! The key hierarchy: one root key, per-org key-encryption keys (KEKs) with versions, and data
//! encryption keys (DEKs) handed out in envelope form.
//!
//! ```text
//! root key (32 bytes, OS CSPRNG, stored only sealed to the platform)
//!   └─ KEK(org, version)  wrapped under the root key,  AAD = "coffer-kms kek v1" ‖ org ‖ version
//!        └─ DEK(key id)   wrapped under that KEK,       AAD = "coffer-kms dek v1" ‖ org ‖ key id ‖ version
//! ```
//!
//! Every wrap is AES-256-GCM with a fresh random 96-bit nonce. The associated data makes a
//! wrapped key valid only in its place: a wrapped DEK relabelled with another org, key id or KEK
//! version fails to unwrap even under the right key bytes, so a caller cannot make the KMS
//! unwrap one org's key in another org's name.
//!
//! Key bytes live in [`Zeroizing`] buffers (wiped on drop) and no type here prints them: their
//! `Debug` shows the org, version and key id only.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, AeadFailure, KEY_LEN};

const KEK_AAD_LABEL: &str = "coffer-kms kek v1";
const DEK_AAD_LABEL: &str = "coffer-kms dek v1";

/// Why a key operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The OS random number generator failed.
    #[error("the OS random number generator failed while generating {what}: {reason}")]
    Rng {
        /// What was being generated.
        what: &'static str,
        /// What the RNG said.
        reason: String,
    },
    /// A wrapped key did not unwrap: wrong key, relabelled (another org, key id or version), or
    /// altered.
    #[error("cannot unwrap {what}: its tag does not verify (wrong key, another org/key id/version, or altered bytes)")]
    Unwrap {
        /// The key that failed, with its binding.
        what: String,
    },
    /// A wrapped key is presented to a KEK of another org or version.
    #[error("{what} is bound to org {wanted_org} KEK version {wanted_version}, not to this KEK (org {org}, version {version})")]
    WrongKek {
        /// The wrapped key.
        what: String,
        /// The org it names.
        wanted_org: String,
        /// The KEK version it names.
        wanted_version: u32,
        /// This KEK's org.
        org: String,
        /// This KEK's version.
        version: u32,
    },
    /// A key of the wrong length.
    #[error("{what} is {got} bytes, not {KEY_LEN}")]
    Length {
        /// The key.
        what: String,
        /// Its length.
        got: usize,
    },
    /// An org id that is not allowed.
    #[error("org id {got:?}: {reason}")]
    OrgId {
        /// The id given.
        got: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A key id that is not 32 lowercase hex digits.
    #[error("key id {got:?} is not 32 lowercase hex digits")]
    KeyId {
        /// The id given.
        got: String,
    },
}

fn unwrap_error(what: String) -> impl FnOnce(AeadFailure) -> KeyError {
    move |_| KeyError::Unwrap { what }
}

fn rng_error(what: &'static str) -> impl FnOnce(AeadFailure) -> KeyError {
    move |e| KeyError::Rng {
        what,
        reason: match e {
            AeadFailure::Rng(reason) => reason,
            other => format!("{other:?}"),
        },
    }
}

/// An org (workspace): the unit that owns a KEK and is shredded as a whole. 1 to 64 characters
/// of `A-Z a-z 0-9 . _ -` (it appears in store keys, where `/` separates fields).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrgId(String);

impl OrgId {
    /// Checks and wraps an org id.
    pub fn new(id: impl Into<String>) -> Result<Self, KeyError> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("empty")
        } else if id.len() > 64 {
            Some("longer than 64 characters")
        } else if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            Some("only A-Z a-z 0-9 . _ - are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(KeyError::OrgId { got: id, reason }),
            None => Ok(Self(id)),
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OrgId {
    type Error = KeyError;
    fn try_from(id: String) -> Result<Self, KeyError> {
        Self::new(id)
    }
}

impl From<OrgId> for String {
    fn from(id: OrgId) -> String {
        id.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A data key's id: 128 random bits as 32 lowercase hex digits, chosen by the KMS.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId(String);

impl KeyId {
    /// A fresh random id.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; 16];
        crypto::random(&mut bytes).map_err(rng_error("a key id"))?;
        Ok(Self(hex::encode(bytes)))
    }

    /// Checks and wraps an id.
    pub fn parse(id: impl Into<String>) -> Result<Self, KeyError> {
        let id = id.into();
        if id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(id))
        } else {
            Err(KeyError::KeyId { got: id })
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KeyId {
    type Error = KeyError;
    fn try_from(id: String) -> Result<Self, KeyError> {
        Self::parse(id)
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> String {
        id.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The root of the hierarchy: it wraps every KEK. Generated once, at the KMS's first start,
/// from the OS CSPRNG; stored only sealed to the platform ([`crate::store`]).
pub struct RootKey {
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey([redacted])")
    }
}

impl RootKey {
    /// A fresh root key from the OS CSPRNG.
    pub fn generate() -> Result<Self, KeyError> {
        Ok(Self {
            key: crypto::random_key().map_err(rng_error("the root key"))?,
        })
    }

    /// A root key from its bytes (as unsealed from the store).
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return Err(KeyError::Length {
                what: "the root key".into(),
                got: bytes.len(),
            });
        }
        key.copy_from_slice(bytes);
        Ok(Self { key })
    }

    /// The key bytes, for sealing into the store only.
    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// A key derived from the root key for one purpose (HKDF-SHA-256, no salt, `info` naming
    /// the purpose): whoever holds the root key (a replica, or a KMS restored by the recovery
    /// officers) derives the same one.
    pub(crate) fn derive(&self, info: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
        let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(None, self.key.as_ref());
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        // 32 bytes is far below HKDF-SHA-256's limit: expand cannot fail.
        let _ = hkdf.expand(info, key.as_mut());
        key
    }

    /// Wraps `kek` under this root key, bound to its org and version.
    pub fn wrap_kek(&self, kek: &Kek) -> Result<WrappedKek, KeyError> {
        let aad = kek_aad(&kek.org, kek.version);
        let sealed = crypto::seal(&self.key, &aad, kek.key.as_ref())
            .map_err(rng_error("a nonce for a KEK wrap"))?;
        Ok(WrappedKek {
            org: kek.org.clone(),
            version: kek.version,
            sealed,
        })
    }

    /// Unwraps a KEK. Fails if it was wrapped under another root key, or for another org or
    /// version than it claims, or was altered.
    pub fn unwrap_kek(&self, wrapped: &WrappedKek) -> Result<Kek, KeyError> {
        let what = || format!("KEK of org {} version {}", wrapped.org, wrapped.version);
        let aad = kek_aad(&wrapped.org, wrapped.version);
        let plain = crypto::open(&self.key, &aad, &wrapped.sealed).map_err(unwrap_error(what()))?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if plain.len() != KEY_LEN {
            return Err(KeyError::Length {
                what: what(),
                got: plain.len(),
            });
        }
        key.copy_from_slice(&plain);
        Ok(Kek {
            org: wrapped.org.clone(),
            version: wrapped.version,
            key,
        })
    }
}

fn kek_aad(org: &OrgId, version: u32) -> Vec<u8> {
    crypto::aad(
        KEK_AAD_LABEL,
        &[org.as_str().as_bytes(), &version.to_be_bytes()],
    )
}

fn dek_aad(org: &OrgId, key_id: &KeyId, version: u32) -> Vec<u8> {
    crypto::aad(
        DEK_AAD_LABEL,
        &[
            org.as_str().as_bytes(),
            key_id.as_str().as_bytes(),
            &version.to_be_bytes(),
        ],
    )
}

/// A KEK wrapped under the root key: what the store keeps. Not secret (it is ciphertext), but
/// the store seals it again anyway.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKek {
    /// The org it belongs to (bound as associated data).
    pub org: OrgId,
    /// Its version (bound as associated data).
    pub version: u32,
    /// `nonce ‖ ciphertext ‖ tag`.
    #[serde(with = "hex")]
    pub sealed: Vec<u8>,
}

impl fmt::Debug for WrappedKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKek")
            .field("org", &self.org)
            .field("version", &self.version)
            .field("sealed_len", &self.sealed.len())
            .finish()
    }
}

/// One version of an org's key-encryption key, in the clear (only ever in KMS memory).
pub struct Kek {
    org: OrgId,
    version: u32,
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("org", &self.org)
            .field("version", &self.version)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Kek {
    /// A fresh KEK for `org` at `version`, from the OS CSPRNG.
    pub fn generate(org: OrgId, version: u32) -> Result<Self, KeyError> {
        Ok(Self {
            org,
            version,
            key: crypto::random_key().map_err(rng_error("a KEK"))?,
        })
    }

    /// The org this KEK belongs to.
    pub fn org(&self) -> &OrgId {
        &self.org
    }

    /// Its version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Wraps `dek` under this KEK, bound to this org, this version and the DEK's id.
    pub fn wrap_data_key(&self, dek: &DataKey) -> Result<WrappedDataKey, KeyError> {
        let aad = dek_aad(&self.org, &dek.id, self.version);
        let ciphertext = crypto::seal(&self.key, &aad, dek.key.as_ref())
            .map_err(rng_error("a nonce for a DEK wrap"))?;
        Ok(WrappedDataKey {
            org: self.org.clone(),
            key_id: dek.id.clone(),
            kek_version: self.version,
            ciphertext,
        })
    }

    /// Unwraps a data key wrapped under this KEK. The binding is checked twice: the labels
    /// must name this KEK (a clear error if not), and the tag must verify over the labels (so
    /// relabelled bytes fail even under the right key).
    pub fn unwrap_data_key(&self, wrapped: &WrappedDataKey) -> Result<DataKey, KeyError> {
        let what = || format!("data key {} of org {}", wrapped.key_id, wrapped.org);
        if wrapped.org != self.org || wrapped.kek_version != self.version {
            return Err(KeyError::WrongKek {
                what: what(),
                wanted_org: wrapped.org.to_string(),
                wanted_version: wrapped.kek_version,
                org: self.org.to_string(),
                version: self.version,
            });
        }
        let aad = dek_aad(&wrapped.org, &wrapped.key_id, wrapped.kek_version);
        let plain =
            crypto::open(&self.key, &aad, &wrapped.ciphertext).map_err(unwrap_error(what()))?;
        DataKey::from_parts(wrapped.key_id.clone(), &plain).map_err(|_| KeyError::Length {
            what: what(),
            got: plain.len(),
        })
    }

    /// A KEK from raw parts (unit tests: to relabel key bytes and show the AAD binding holds).
    #[cfg(test)]
    pub(crate) fn relabelled(&self, org: OrgId, version: u32) -> Self {
        Self {
            org,
            version,
            key: self.key.clone(),
        }
    }
}

/// A data-encryption key in the clear: what the KMS returns to an authorised caller, who uses
/// it and drops it (it is wiped on drop). Only [`DataKey::expose_secret`] shows its bytes.
pub struct DataKey {
    id: KeyId,
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl DataKey {
    /// A fresh data key with a fresh id, from the OS CSPRNG.
    pub fn generate() -> Result<Self, KeyError> {
        Ok(Self {
            id: KeyId::generate()?,
            key: crypto::random_key().map_err(rng_error("a data key"))?,
        })
    }

    fn from_parts(id: KeyId, bytes: &[u8]) -> Result<Self, KeyError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return Err(KeyError::Length {
                what: format!("data key {id}"),
                got: bytes.len(),
            });
        }
        key.copy_from_slice(bytes);
        Ok(Self { id, key })
    }

    /// Its id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The key bytes. The name is a reminder: whatever holds them must not log them and should
    /// keep them in a zeroizing buffer.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.key
    }
}

/// A data key wrapped under an org's KEK: what the caller stores beside its ciphertext and
/// presents to unwrap. Ciphertext only; safe to print and store anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedDataKey {
    /// The org whose KEK wraps it.
    pub org: OrgId,
    /// The data key's id.
    pub key_id: KeyId,
    /// The KEK version that wraps it.
    pub kek_version: u32,
    /// `nonce ‖ ciphertext ‖ tag`.
    #[serde(with = "hex")]
    pub ciphertext: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(id: &str) -> OrgId {
        OrgId::new(id).unwrap()
    }

    /// A rendering of `bytes` that Debug could leak: hex, and Rust's own array and slice forms.
    fn leaks(debug: &str, bytes: &[u8]) -> bool {
        let decimal = format!("{bytes:?}");
        let first = format!("{:?}", &bytes[..4]);
        debug.contains(&hex::encode(bytes))
            || debug.contains(&hex::encode_upper(bytes))
            || debug.contains(&decimal)
            || debug.contains(first.trim_end_matches(']'))
    }

    #[test]
    fn debug_of_every_key_type_prints_no_key_bytes() {
        let root = RootKey::generate().unwrap();
        let kek = Kek::generate(org("acme"), 1).unwrap();
        let dek = DataKey::generate().unwrap();
        for (debug, bytes) in [
            (format!("{root:?}"), root.bytes().to_vec()),
            (format!("{root:#?}"), root.bytes().to_vec()),
            (format!("{kek:?}"), kek.key.to_vec()),
            (format!("{kek:#?}"), kek.key.to_vec()),
            (format!("{dek:?}"), dek.expose_secret().to_vec()),
            (format!("{dek:#?}"), dek.expose_secret().to_vec()),
        ] {
            assert!(!leaks(&debug, &bytes), "{debug}");
            assert!(debug.contains("redacted"), "{debug}");
        }
        // The leak detector itself finds a key printed the usual ways.
        let bytes = dek.expose_secret().to_vec();
        assert!(leaks(&format!("{bytes:?}"), &bytes));
        assert!(leaks(&hex::encode(&bytes), &bytes));
    }

    #[test]
    fn a_kek_round_trips_under_the_root_key_and_only_there() {
        let root = RootKey::generate().unwrap();
        let kek = Kek::generate(org("acme"), 3).unwrap();
        let wrapped = root.wrap_kek(&kek).unwrap();
        let back = root.unwrap_kek(&wrapped).unwrap();
        assert_eq!(*back.key, *kek.key);
        assert_eq!((back.org(), back.version()), (&org("acme"), 3));

        let other_root = RootKey::generate().unwrap();
        assert!(matches!(
            other_root.unwrap_kek(&wrapped),
            Err(KeyError::Unwrap { .. })
        ));
        let mut moved = wrapped.clone();
        moved.org = org("evil");
        let err = root.unwrap_kek(&moved).unwrap_err();
        assert!(
            err.to_string().contains("KEK of org evil version 3"),
            "{err}"
        );
        let mut downgraded = wrapped;
        downgraded.version = 2;
        assert!(matches!(
            root.unwrap_kek(&downgraded),
            Err(KeyError::Unwrap { .. })
        ));
    }

    #[test]
    fn a_wrapped_dek_relabelled_with_another_org_key_id_or_version_does_not_unwrap() {
        let kek = Kek::generate(org("acme"), 1).unwrap();
        let dek = DataKey::generate().unwrap();
        let wrapped = kek.wrap_data_key(&dek).unwrap();
        let back = kek.unwrap_data_key(&wrapped).unwrap();
        assert_eq!(back.expose_secret(), dek.expose_secret());
        assert_eq!(back.id(), dek.id());

        // Same key bytes, other labels: only the associated data differs, and it is enough.
        let mut other_org = wrapped.clone();
        other_org.org = org("globex");
        let err = kek
            .relabelled(org("globex"), 1)
            .unwrap_data_key(&other_org)
            .unwrap_err();
        assert!(matches!(err, KeyError::Unwrap { .. }), "{err}");

        let mut other_id = wrapped.clone();
        other_id.key_id = KeyId::generate().unwrap();
        assert!(matches!(
            kek.unwrap_data_key(&other_id),
            Err(KeyError::Unwrap { .. })
        ));

        let mut other_version = wrapped.clone();
        other_version.kek_version = 2;
        assert!(matches!(
            kek.relabelled(org("acme"), 2)
                .unwrap_data_key(&other_version),
            Err(KeyError::Unwrap { .. })
        ));

        // Presented to a KEK whose labels differ, the error says so before any crypto.
        let err = kek.unwrap_data_key(&other_org).unwrap_err();
        assert!(matches!(err, KeyError::WrongKek { .. }), "{err}");

        let mut altered = wrapped;
        altered.ciphertext[20] ^= 0x80;
        assert!(matches!(
            kek.unwrap_data_key(&altered),
            Err(KeyError::Unwrap { .. })
        ));
    }

    #[test]
    fn generated_keys_and_ids_differ() {
        let (a, b) = (DataKey::generate().unwrap(), DataKey::generate().unwrap());
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_ne!(a.id(), b.id());
        assert_ne!(
            *RootKey::generate().unwrap().key,
            *RootKey::generate().unwrap().key
        );
    }

    #[test]
    fn ids_are_checked() {
        for bad in ["", "a/b", "with space", &"x".repeat(65)] {
            assert!(OrgId::new(bad).is_err(), "{bad:?}");
        }
        assert!(OrgId::new("Acme-1.prod_eu").is_ok());
        assert!(KeyId::parse("0123456789abcdef0123456789abcdef").is_ok());
        assert!(KeyId::parse("0123456789ABCDEF0123456789abcdef").is_err());
        assert!(serde_json::from_str::<OrgId>("\"a/b\"").is_err());
    }
}
