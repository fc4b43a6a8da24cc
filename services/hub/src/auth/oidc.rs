//! OIDC sign-in: an ID token (compact JWS) from a configured issuer, verified against that
//! issuer's JWKS (pinned in the hub's configuration), for that issuer's client id. A verified
//! `(iss, sub)` signs in the local user it was linked to by an administrator; an unlinked
//! identity is refused (no accounts are created from a token).

use std::collections::BTreeMap;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::OidcIssuer;
use crate::error::ApiError;

/// The algorithms an ID token may use (what the ring provider verifies; never HMAC, never none).
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

struct IssuerKeys {
    client_id: String,
    keys: BTreeMap<String, (Algorithm, DecodingKey)>,
}

/// Verifies ID tokens of the configured issuers.
pub struct OidcVerifier {
    issuers: BTreeMap<String, IssuerKeys>,
}

/// Why an OIDC issuer's configuration was refused.
#[derive(Debug, thiserror::Error)]
#[error("OIDC issuer {issuer}: {problem}")]
pub struct OidcConfigError {
    issuer: String,
    problem: String,
}

/// A verified ID token's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcIdentity {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
}

#[derive(Deserialize)]
struct IdClaims {
    iss: String,
    sub: String,
}

#[derive(Deserialize)]
struct Unverified {
    iss: Option<String>,
}

impl OidcVerifier {
    /// Compiles the issuers' JWKS; every key needs a `kid` and a supported type.
    pub fn new(issuers: &[OidcIssuer]) -> Result<Self, OidcConfigError> {
        if !coffer_kms::authz::install_crypto_provider() {
            return Err(OidcConfigError {
                issuer: "*".into(),
                problem: "another jsonwebtoken crypto provider was installed first".into(),
            });
        }
        let mut out = BTreeMap::new();
        for issuer in issuers {
            let err = |problem: String| OidcConfigError {
                issuer: issuer.issuer.clone(),
                problem,
            };
            let set: JwkSet = serde_json::from_value(issuer.jwks.clone())
                .map_err(|e| err(format!("JWKS is not a JWK set: {e}")))?;
            let mut keys = BTreeMap::new();
            for jwk in &set.keys {
                let kid = jwk
                    .common
                    .key_id
                    .clone()
                    .ok_or_else(|| err("a JWKS key has no kid".into()))?;
                let alg = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => {
                        return Err(err(format!(
                            "key {kid} is symmetric (kty oct): refused, anyone who reads the configuration could sign in"
                        )))
                    }
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| err(format!("key {kid}: {e}")))?;
                keys.insert(kid, (alg, key));
            }
            out.insert(
                issuer.issuer.clone(),
                IssuerKeys {
                    client_id: issuer.client_id.clone(),
                    keys,
                },
            );
        }
        Ok(Self { issuers: out })
    }

    /// Verifies `token`: a configured issuer, a key it names by `kid`, the signature, `aud` =
    /// the issuer's client id, `exp` (60 s leeway), `iss`.
    pub fn verify(&self, token: &str) -> Result<OidcIdentity, ApiError> {
        let refuse = |why: String| ApiError::unauthenticated(format!("ID token refused: {why}"));
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| refuse(format!("malformed header ({e})")))?;
        // The issuer picks the key set; the signature check below confirms the claim.
        let unverified: Unverified = jsonwebtoken::dangerous::insecure_decode(token)
            .map_err(|e| refuse(format!("malformed claims ({e})")))?
            .claims;
        let iss = unverified
            .iss
            .ok_or_else(|| refuse("no iss claim".into()))?;
        let issuer = self
            .issuers
            .get(&iss)
            .ok_or_else(|| refuse(format!("issuer {iss:?} is not configured")))?;
        let kid = header
            .kid
            .ok_or_else(|| refuse("no kid in the header".into()))?;
        let (alg, key) = issuer
            .keys
            .get(&kid)
            .ok_or_else(|| refuse(format!("issuer {iss:?} has no key {kid:?}")))?;
        if header.alg != *alg || !ALGORITHMS.contains(alg) {
            return Err(refuse(format!(
                "algorithm {:?} does not match key {kid:?} (expected {alg:?})",
                header.alg
            )));
        }
        let mut validation = Validation::new(*alg);
        validation.set_audience(&[&issuer.client_id]);
        validation.set_issuer(&[&iss]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 60;
        let data = jsonwebtoken::decode::<IdClaims>(token, key, &validation)
            .map_err(|e| refuse(format!("{e}")))?;
        Ok(OidcIdentity {
            issuer: data.claims.iss,
            subject: data.claims.sub,
        })
    }
}
