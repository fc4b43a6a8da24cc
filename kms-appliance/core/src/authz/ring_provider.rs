//! A [`jsonwebtoken`] crypto provider on `ring`, the crypto rustls already links into the
//! appliances (jsonwebtoken 10 ships only aws-lc-rs and RustCrypto backends).
//!
//! Verifies EdDSA (Ed25519), ES256 (P-256, fixed-length r‖s as JWS requires) and RS256
//! (PKCS#1 v1.5, 2048 to 8192-bit moduli); signs EdDSA and ES256 from PKCS#8 DER (the control
//! plane's side and the tests). Every other algorithm, HMAC included, is an error: a symmetric
//! key in a manifest would let anyone who reads the manifest mint tokens.

use std::sync::OnceLock;

use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, RsaPublicKeyComponents, UnparsedPublicKey,
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, RSA_PKCS1_2048_8192_SHA256,
};

/// The provider, installed process-wide by [`install`].
pub(crate) static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    jwk_utils: JwkUtils {
        extract_rsa_public_key_components: |_| Err(unsupported("RSA key extraction")),
        extract_ec_public_key_coordinates: |_, _| Err(unsupported("EC key extraction")),
        compute_digest,
    },
};

/// Installs [`RING_PROVIDER`] as jsonwebtoken's process-wide provider. Returns whether the
/// installed provider is ours: `false` if another was installed first, in which case the
/// caller must refuse to verify (we cannot vouch for another provider's algorithm handling).
pub(crate) fn install() -> bool {
    static OURS: OnceLock<bool> = OnceLock::new();
    *OURS.get_or_init(|| match RING_PROVIDER.install_default() {
        Ok(()) => true,
        Err(existing) => std::ptr::eq(existing, &RING_PROVIDER),
    })
}

fn unsupported(what: &str) -> Error {
    ErrorKind::Provider(format!(
        "{what} is not supported by coffer-kms's ring provider"
    ))
    .into()
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Vec<u8> {
    let alg = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
    };
    ring::digest::digest(alg, data).as_ref().to_vec()
}

enum RingSigner {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair, SystemRandom),
}

impl Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        match self {
            Self::Ed25519(key) => Ok(key.sign(msg).as_ref().to_vec()),
            Self::P256(key, rng) => key
                .sign(rng, msg)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| signature::Error::new()),
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        match self {
            Self::Ed25519(_) => Algorithm::EdDSA,
            Self::P256(..) => Algorithm::ES256,
        }
    }
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    match (alg, key.family()) {
        (Algorithm::EdDSA, AlgorithmFamily::Ed) => {
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(key.inner())
                .map_err(|_| Error::from(ErrorKind::InvalidEddsaKey))?;
            Ok(Box::new(RingSigner::Ed25519(pair)))
        }
        (Algorithm::ES256, AlgorithmFamily::Ec) => {
            let rng = SystemRandom::new();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.inner(), &rng)
                    .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?;
            Ok(Box::new(RingSigner::P256(pair, rng)))
        }
        (Algorithm::EdDSA | Algorithm::ES256, _) => Err(ErrorKind::InvalidKeyFormat.into()),
        (other, _) => Err(unsupported(&format!("signing with {other:?}"))),
    }
}

enum RingVerifier {
    /// EdDSA or ES256: the raw public key (32 bytes, or the uncompressed SEC1 point).
    Raw(Algorithm, Vec<u8>),
    /// RS256: modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let ok = match self {
            Self::Raw(Algorithm::EdDSA, key) => {
                UnparsedPublicKey::new(&ED25519, key).verify(msg, sig)
            }
            Self::Raw(Algorithm::ES256, key) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key).verify(msg, sig)
            }
            Self::Raw(..) => return Err(signature::Error::new()),
            Self::Rsa { n, e } => {
                RsaPublicKeyComponents { n, e }.verify(&RSA_PKCS1_2048_8192_SHA256, msg, sig)
            }
        };
        ok.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        match self {
            Self::Raw(alg, _) => *alg,
            Self::Rsa { .. } => Algorithm::RS256,
        }
    }
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    match (alg, key.family(), key.kind()) {
        (Algorithm::EdDSA, AlgorithmFamily::Ed, DecodingKeyKind::SecretOrDer(raw))
        | (Algorithm::ES256, AlgorithmFamily::Ec, DecodingKeyKind::SecretOrDer(raw)) => {
            Ok(Box::new(RingVerifier::Raw(*alg, raw.clone())))
        }
        (Algorithm::RS256, AlgorithmFamily::Rsa, DecodingKeyKind::RsaModulusExponent { n, e }) => {
            Ok(Box::new(RingVerifier::Rsa {
                n: n.clone(),
                e: e.clone(),
            }))
        }
        (Algorithm::EdDSA | Algorithm::ES256 | Algorithm::RS256, ..) => {
            Err(ErrorKind::InvalidKeyFormat.into())
        }
        (other, ..) => Err(unsupported(&format!("verifying {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::EllipticCurve;

    #[test]
    fn the_curve_names_match_what_jwks_use() {
        // Guards the JWK mapping in config.rs: ES256 keys are P-256, EdDSA keys are Ed25519.
        assert_eq!(
            serde_json::to_value(EllipticCurve::P256).ok(),
            Some("P-256".into())
        );
        assert_eq!(
            serde_json::to_value(EllipticCurve::Ed25519).ok(),
            Some("Ed25519".into())
        );
    }

    #[test]
    fn hmac_and_other_algorithms_are_refused() {
        let key = DecodingKey::from_secret(b"a shared secret in a manifest");
        assert!(new_verifier(&Algorithm::HS256, &key).is_err());
        assert!(new_verifier(&Algorithm::EdDSA, &key).is_err());
        let enc = EncodingKey::from_secret(b"a shared secret in a manifest");
        assert!(new_signer(&Algorithm::HS256, &enc).is_err());
    }
}
