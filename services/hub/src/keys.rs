//! The hub's signing keys, and the credentials it signs with them.
//!
//! One 32-byte seed in `<state>/hub.key` (0600, generated at first start) derives, by
//! HKDF-SHA-256 with distinct labels, two Ed25519 keys: the **credential key** (EdDSA JWTs the
//! KMS verifies: identity tokens, job grants, checkpoint requests; published as a JWK with
//! `kid`) and the **audit key** (C2SP signed-note signatures on audit checkpoints). The seed
//! and everything derived from it live in zeroizing buffers and are never logged.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64ct::{Base64UrlUnpadded, Encoding};
use coffer_kms::authz::{
    Audience, AuditCollectClaims, CheckpointRequestClaims, IdentityClaims, JobGrantClaims,
    AUDIENCE, AUDIT_COLLECT_TYP, CHECKPOINT_REQUEST_TYP, IDENTITY_TOKEN_TYP, JOB_GRANT_TYP,
};
use coffer_tlog::note::NoteSigner;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::hkdf;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;
use zeroize::Zeroizing;

/// Why the keys could not be loaded or a credential signed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or creating the key file failed.
    #[error("hub key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file is not 32 bytes.
    #[error("hub key file {path} holds {got} bytes, expected 32")]
    BadLength {
        /// The file.
        path: String,
        /// Its length.
        got: usize,
    },
    /// The key file is readable by others than its owner.
    #[error("hub key file {path} has mode {mode:o}: it must not be readable by group or others (chmod 600)")]
    Permissions {
        /// The file.
        path: String,
        /// Its mode.
        mode: u32,
    },
    /// A derivation or signature failed.
    #[error("signing key: {0}")]
    Crypto(String),
}

/// The hub's signing keys.
pub struct HubKeys {
    credential_pkcs8: Zeroizing<Vec<u8>>,
    credential_public: [u8; 32],
    kid: String,
    issuer: String,
    audit: NoteSigner,
}

impl std::fmt::Debug for HubKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubKeys")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .field("audit", &self.audit.name())
            .finish_non_exhaustive()
    }
}

/// The PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410 §7): the seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl HubKeys {
    /// Loads `<state_dir>/hub.key`, creating it (and `state_dir`) on first start.
    pub fn load_or_create(
        state_dir: &Path,
        issuer: &str,
        audit_origin: &str,
    ) -> Result<Self, KeyError> {
        let path = state_dir.join("hub.key");
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let _ = std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700));
        if !path.exists() {
            let mut seed = Zeroizing::new([0u8; 32]);
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, seed.as_mut());
            // create_new: never overwrite a key another process wrote in between.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            file.write_all(seed.as_ref()).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let meta = std::fs::metadata(&path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.display().to_string(),
                mode,
            });
        }
        let bytes = Zeroizing::new(std::fs::read(&path).map_err(io)?);
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(bytes.as_slice().try_into().map_err(
            |_| KeyError::BadLength {
                path: path.display().to_string(),
                got: bytes.len(),
            },
        )?);
        Self::from_seed(&seed, issuer, audit_origin)
    }

    /// Derives the keys from `seed`.
    pub fn from_seed(seed: &[u8; 32], issuer: &str, audit_origin: &str) -> Result<Self, KeyError> {
        let credential_seed = derive(seed, b"coffer hub v1 credential key")?;
        let audit_seed = derive(seed, b"coffer hub v1 audit key")?;
        let mut pkcs8 = Zeroizing::new(Vec::with_capacity(48));
        pkcs8.extend_from_slice(&ED25519_PKCS8_PREFIX);
        pkcs8.extend_from_slice(credential_seed.as_ref());
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
            .map_err(|e| KeyError::Crypto(e.to_string()))?;
        let credential_public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| KeyError::Crypto("Ed25519 public key length".into()))?;
        let kid = format!("hub-{}", &hex::encode(credential_public)[..16]);
        let audit = NoteSigner::ed25519_from_seed(audit_origin, audit_seed)
            .map_err(|e| KeyError::Crypto(e.to_string()))?;
        if !coffer_kms::authz::install_crypto_provider() {
            return Err(KeyError::Crypto(
                "another jsonwebtoken crypto provider was installed first".into(),
            ));
        }
        Ok(Self {
            credential_pkcs8: pkcs8,
            credential_public,
            kid,
            issuer: issuer.to_owned(),
            audit,
        })
    }

    /// The issuer name in the credentials (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The credential key's id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWKS the KMS's `kms.authz` issuer entry needs (public key only).
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": self.kid,
            "x": Base64UrlUnpadded::encode_string(&self.credential_public),
        }]})
    }

    /// The audit log's checkpoint signer.
    pub fn audit_signer(&self) -> &NoteSigner {
        &self.audit
    }

    /// Signs an identity token.
    pub fn sign_identity(&self, claims: &IdentityClaims) -> Result<String, KeyError> {
        self.sign(IDENTITY_TOKEN_TYP, claims)
    }

    /// Signs a job grant.
    pub fn sign_job_grant(&self, claims: &JobGrantClaims) -> Result<String, KeyError> {
        self.sign(JOB_GRANT_TYP, claims)
    }

    /// Signs a request for the KMS to co-sign an audit checkpoint.
    pub fn sign_checkpoint_request(
        &self,
        claims: &CheckpointRequestClaims,
    ) -> Result<String, KeyError> {
        self.sign(CHECKPOINT_REQUEST_TYP, claims)
    }

    /// Signs a request to collect the KMS's audit journal.
    pub fn sign_audit_collect(&self, claims: &AuditCollectClaims) -> Result<String, KeyError> {
        self.sign(AUDIT_COLLECT_TYP, claims)
    }

    /// The audience of every credential.
    pub fn audience() -> Audience {
        Audience::One(AUDIENCE.to_owned())
    }

    fn sign<C: Serialize>(&self, typ: &str, claims: &C) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_ed_der(&self.credential_pkcs8),
        )
        .map_err(|e| KeyError::Crypto(e.to_string()))
    }
}

fn derive(seed: &[u8; 32], label: &'static [u8]) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"coffer-hub").extract(seed);
    let info = [label];
    let okm = prk
        .expand(&info, Len32)
        .map_err(|_| KeyError::Crypto("HKDF expand".into()))?;
    let mut out = Zeroizing::new([0u8; 32]);
    okm.fill(out.as_mut())
        .map_err(|_| KeyError::Crypto("HKDF fill".into()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_kms::authz::{AuthzConfig, IssuerConfig, IssuerKind};

    #[test]
    fn the_jwks_is_a_valid_kms_issuer_and_differs_per_seed() {
        let keys = HubKeys::from_seed(&[7; 32], "https://hub.test", "coffer/d/audit").unwrap();
        let issuer: IssuerConfig = serde_json::from_value(serde_json::json!({
            "issuer": "https://hub.test", "kind": "control_plane", "jwks": keys.jwks()
        }))
        .unwrap();
        assert_eq!(issuer.kind, IssuerKind::ControlPlane);
        let config = AuthzConfig::new(vec![issuer]);
        let authorizer = coffer_kms::Authorizer::new(config).unwrap();
        drop(authorizer);
        // A different seed gives a different key id and public key.
        let other = HubKeys::from_seed(&[8; 32], "https://hub.test", "coffer/d/audit").unwrap();
        assert_ne!(keys.kid(), other.kid());
        assert_ne!(keys.jwks(), other.jwks());
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        HubKeys::load_or_create(dir.path(), "https://h", "o").unwrap();
        let path = dir.path().join("hub.key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = HubKeys::load_or_create(dir.path(), "https://h", "o").unwrap_err();
        assert!(err.to_string().contains("mode 644"), "{err}");
    }

    #[test]
    fn the_same_key_file_gives_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let a = HubKeys::load_or_create(dir.path(), "https://h", "o").unwrap();
        let b = HubKeys::load_or_create(dir.path(), "https://h", "o").unwrap();
        assert_eq!(a.jwks(), b.jwks());
        assert_eq!(
            a.audit_signer().verifier_key(),
            b.audit_signer().verifier_key()
        );
    }
}
