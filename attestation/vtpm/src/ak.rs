//! The vTPM attestation key (AK): an RSA public key, from the HCL runtime claims' JWK, from a
//! SubjectPublicKeyInfo (`tpm2_readpublic -f pem`), or from its modulus and exponent.
//!
//! On Azure the AK is persistent handle 0x81000003, RSA-2048, restricted signing,
//! RSASSA-PKCS1-v1_5 with SHA-256. Only verification happens here; no private key is ever
//! handled (so the `rsa` crate's timing side channel in private-key operations, RUSTSEC-2023-0071,
//! does not apply).

use base64ct::{Base64UrlUnpadded, Encoding};
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPublicKey};
use sha2::{Digest, Sha256};

use crate::hcl::Jwk;

/// Smallest accepted AK modulus, in bits.
pub const MIN_AK_BITS: usize = 2048;

/// Why a public key was not accepted as an AK.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The JWK's `kty` is not `RSA` (the Azure AK is RSA; ECC AKs are not supported).
    #[error("JWK kty is {kty:?}, expected \"RSA\"")]
    JwkNotRsa {
        /// The `kty` found.
        kty: String,
    },
    /// A JWK member the key needs is absent.
    #[error("JWK has no {field:?} member")]
    JwkMissing {
        /// `n` or `e`.
        field: &'static str,
    },
    /// A JWK member is not base64url.
    #[error("JWK member {field:?} is not base64url")]
    JwkBase64 {
        /// `n` or `e`.
        field: &'static str,
    },
    /// The modulus/exponent do not form an RSA public key the `rsa` crate accepts (exponent < 3
    /// or too large, modulus above 4096 bits, ...).
    #[error("not a valid RSA public key: {0}")]
    Rsa(#[source] rsa::Error),
    /// The SubjectPublicKeyInfo (DER or PEM) does not hold an RSA public key.
    #[error("SubjectPublicKeyInfo is not an RSA public key: {reason}")]
    Spki {
        /// The decoder's message.
        reason: String,
    },
    /// The modulus is shorter than [`MIN_AK_BITS`].
    #[error("AK modulus is {bits} bits, at least {MIN_AK_BITS} required")]
    TooSmall {
        /// The modulus size found.
        bits: usize,
    },
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature is not as long as the modulus.
    #[error("signature is {got} bytes, the {bits}-bit AK needs {expected}")]
    Length {
        /// Modulus size in bytes.
        expected: usize,
        /// Signature size in bytes.
        got: usize,
        /// Modulus size in bits.
        bits: usize,
    },
    /// RSASSA-PKCS1-v1_5 verification with SHA-256 failed.
    #[error("RSASSA-PKCS1-v1_5/SHA-256 signature does not verify with the AK")]
    Invalid,
}

/// An RSA attestation-key public key of at least [`MIN_AK_BITS`] bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkPublicKey {
    key: RsaPublicKey,
}

impl AkPublicKey {
    /// From big-endian modulus and exponent bytes.
    pub fn from_rsa_components(modulus: &[u8], exponent: &[u8]) -> Result<Self, KeyError> {
        let key = RsaPublicKey::new(
            BigUint::from_bytes_be(modulus),
            BigUint::from_bytes_be(exponent),
        )
        .map_err(KeyError::Rsa)?;
        Self::checked(key)
    }

    /// From an RSA JWK (RFC 7517/7518: `kty` `RSA`, `n` and `e` base64url). The `kid` and
    /// `key_ops` are not checked here: [`crate::hcl::RuntimeClaims::ak_jwk`] picks the key by
    /// `kid`, and Azure's older reports label the AK `key_ops: ["encrypt"]`.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        if jwk.kty != "RSA" {
            return Err(KeyError::JwkNotRsa {
                kty: jwk.kty.clone(),
            });
        }
        let n = decode_b64url(jwk.n.as_deref(), "n")?;
        let e = decode_b64url(jwk.e.as_deref(), "e")?;
        Self::from_rsa_components(&n, &e)
    }

    /// From a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let key = RsaPublicKey::from_public_key_der(der).map_err(|e| KeyError::Spki {
            reason: e.to_string(),
        })?;
        Self::checked(key)
    }

    /// From a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as `tpm2_readpublic -f pem` writes it.
    pub fn from_spki_pem(pem: &str) -> Result<Self, KeyError> {
        let key = RsaPublicKey::from_public_key_pem(pem).map_err(|e| KeyError::Spki {
            reason: e.to_string(),
        })?;
        Self::checked(key)
    }

    fn checked(key: RsaPublicKey) -> Result<Self, KeyError> {
        let bits = key.n().bits();
        if bits < MIN_AK_BITS {
            return Err(KeyError::TooSmall { bits });
        }
        Ok(Self { key })
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.key.n().bits()
    }

    /// The big-endian modulus (to compare or log a key fingerprint).
    pub fn modulus(&self) -> Vec<u8> {
        self.key.n().to_bytes_be()
    }

    /// Verify an RSASSA-PKCS1-v1_5 signature with SHA-256 over `message`.
    pub fn verify_rsassa_sha256(
        &self,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let expected = self.key.size();
        if signature.len() != expected {
            return Err(SignatureError::Length {
                expected,
                got: signature.len(),
                bits: self.bits(),
            });
        }
        let digest = Sha256::digest(message);
        self.key
            .verify(Pkcs1v15Sign::new::<Sha256>(), &digest, signature)
            .map_err(|_| SignatureError::Invalid)
    }
}

fn decode_b64url(value: Option<&str>, field: &'static str) -> Result<Vec<u8>, KeyError> {
    let value = value.ok_or(KeyError::JwkMissing { field })?;
    // RFC 7515 base64url has no padding; tolerate it anyway, it carries no meaning.
    Base64UrlUnpadded::decode_vec(value.trim_end_matches('='))
        .map_err(|_| KeyError::JwkBase64 { field })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(kty: &str, n: Option<&str>, e: Option<&str>) -> Jwk {
        Jwk {
            kid: Some("HCLAkPub".into()),
            kty: kty.into(),
            key_ops: vec![],
            n: n.map(Into::into),
            e: e.map(Into::into),
        }
    }

    #[test]
    fn jwk_errors_are_named() {
        assert!(matches!(
            AkPublicKey::from_jwk(&jwk("EC", None, None)),
            Err(KeyError::JwkNotRsa { .. })
        ));
        assert!(matches!(
            AkPublicKey::from_jwk(&jwk("RSA", None, Some("AQAB"))),
            Err(KeyError::JwkMissing { field: "n" })
        ));
        assert!(matches!(
            AkPublicKey::from_jwk(&jwk("RSA", Some("!!"), Some("AQAB"))),
            Err(KeyError::JwkBase64 { field: "n" })
        ));
        // A 1024-bit modulus is refused.
        let n = Base64UrlUnpadded::encode_string(&[0xc5; 128]);
        assert!(matches!(
            AkPublicKey::from_jwk(&jwk("RSA", Some(&n), Some("AQAB"))),
            Err(KeyError::TooSmall { bits: 1024 })
        ));
        // Exponent 1 is refused by the rsa crate.
        let n = Base64UrlUnpadded::encode_string(&[0xc5; 256]);
        assert!(matches!(
            AkPublicKey::from_jwk(&jwk("RSA", Some(&n), Some("AQ"))),
            Err(KeyError::Rsa(_))
        ));
        assert!(matches!(
            AkPublicKey::from_spki_der(b"not der"),
            Err(KeyError::Spki { .. })
        ));
    }

    #[test]
    fn a_short_signature_is_a_length_error() {
        let n = Base64UrlUnpadded::encode_string(&[0xc5; 256]);
        let ak = AkPublicKey::from_jwk(&jwk("RSA", Some(&n), Some("AQAB"))).unwrap();
        assert_eq!(ak.bits(), 2048);
        assert_eq!(
            ak.verify_rsassa_sha256(b"m", &[0; 10]),
            Err(SignatureError::Length {
                expected: 256,
                got: 10,
                bits: 2048
            })
        );
        assert_eq!(
            ak.verify_rsassa_sha256(b"m", &[1; 256]),
            Err(SignatureError::Invalid)
        );
    }
}
