//! [`AuthzConfig`]: the issuers the KMS believes and the time bounds it applies, as the
//! appliance will load them from the deployment manifest (measured, so the host cannot swap an
//! issuer key).

use std::collections::BTreeMap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};

/// The longest clock skew a configuration may allow (5 min): beyond that, "short-lived" means
/// little.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// What an issuer may sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssuerKind {
    /// Coffer's control plane: identity tokens and job grants.
    ControlPlane,
    /// An OIDC provider named in the manifest: identity tokens only, never job grants.
    Oidc,
}

/// One issuer: its `iss` value, what it may sign, and its public keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// What it may sign.
    pub kind: IssuerKind,
    /// Its public keys (RFC 7517). Each needs a `kid`; Ed25519 (OKP), P-256 (EC) and RSA keys
    /// are accepted, each for one algorithm: EdDSA, ES256, RS256.
    pub jwks: JwkSet,
}

/// The authorisation configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzConfig {
    /// The issuers, at most one per `iss`.
    pub issuers: Vec<IssuerConfig>,
    /// The longest identity token lifetime (`exp - iat`) accepted. Default 900 s (15 min).
    #[serde(default = "default_token_lifetime")]
    pub max_token_lifetime_secs: u64,
    /// The longest job grant lifetime accepted. Default 86 400 s (a day: a job may run long).
    #[serde(default = "default_grant_lifetime")]
    pub max_grant_lifetime_secs: u64,
    /// How far the issuer's clock may be from ours, both ways. Default 60 s, at most
    /// [`MAX_CLOCK_SKEW_SECS`].
    #[serde(default = "default_skew")]
    pub clock_skew_secs: u64,
}

fn default_token_lifetime() -> u64 {
    900
}
fn default_grant_lifetime() -> u64 {
    86_400
}
fn default_skew() -> u64 {
    60
}

impl AuthzConfig {
    /// A configuration with these issuers and the default bounds.
    pub fn new(issuers: Vec<IssuerConfig>) -> Self {
        Self {
            issuers,
            max_token_lifetime_secs: default_token_lifetime(),
            max_grant_lifetime_secs: default_grant_lifetime(),
            clock_skew_secs: default_skew(),
        }
    }
}

/// A configuration the authorizer refuses to start with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthzConfigError {
    /// Two issuers share an `iss`.
    #[error("issuer '{0}' is configured twice")]
    DuplicateIssuer(String),
    /// A key without a `kid`: tokens could not name it.
    #[error("issuer '{issuer}': a key has no kid")]
    MissingKid {
        /// The issuer.
        issuer: String,
    },
    /// Two keys of one issuer share a `kid`.
    #[error("issuer '{issuer}': kid '{kid}' appears twice")]
    DuplicateKid {
        /// The issuer.
        issuer: String,
        /// The kid.
        kid: String,
    },
    /// A key type or curve we do not accept (HMAC keys, P-384, X25519, ...).
    #[error("issuer '{issuer}', kid '{kid}': unsupported key ({got}); expected an Ed25519 (OKP), P-256 (EC) or RSA public key")]
    UnsupportedKey {
        /// The issuer.
        issuer: String,
        /// The kid.
        kid: String,
        /// What the key is.
        got: String,
    },
    /// The key's `alg` disagrees with its type.
    #[error(
        "issuer '{issuer}', kid '{kid}': alg {got} does not fit the key (expected {expected})"
    )]
    KeyAlgorithmMismatch {
        /// The issuer.
        issuer: String,
        /// The kid.
        kid: String,
        /// The algorithm the key type implies.
        expected: String,
        /// The `alg` the JWK states.
        got: String,
    },
    /// The key's parameters do not decode.
    #[error("issuer '{issuer}', kid '{kid}': {reason}")]
    BadKey {
        /// The issuer.
        issuer: String,
        /// The kid.
        kid: String,
        /// What is wrong.
        reason: String,
    },
    /// The clock skew is above [`MAX_CLOCK_SKEW_SECS`].
    #[error("clock skew {got} s exceeds the bound of {MAX_CLOCK_SKEW_SECS} s")]
    ClockSkewTooLarge {
        /// The configured skew.
        got: u64,
    },
    /// A maximum lifetime of zero would refuse every token.
    #[error("{what} must be above zero")]
    ZeroLifetime {
        /// Which bound.
        what: &'static str,
    },
    /// Another jsonwebtoken crypto provider was installed in this process before ours: we do
    /// not verify signatures with a provider we have not reviewed.
    #[error("another jsonwebtoken CryptoProvider is installed in this process; coffer-kms verifies only with its ring provider")]
    ForeignCryptoProvider,
}

/// A verification key, with the one algorithm it may be used with.
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

/// An issuer, ready to verify.
pub(crate) struct Issuer {
    pub(crate) kind: IssuerKind,
    pub(crate) keys: BTreeMap<String, VerifyingKey>,
}

/// Checks the configuration and turns each JWK into a verification key.
pub(crate) fn compile(config: &AuthzConfig) -> Result<BTreeMap<String, Issuer>, AuthzConfigError> {
    if config.clock_skew_secs > MAX_CLOCK_SKEW_SECS {
        return Err(AuthzConfigError::ClockSkewTooLarge {
            got: config.clock_skew_secs,
        });
    }
    if config.max_token_lifetime_secs == 0 {
        return Err(AuthzConfigError::ZeroLifetime {
            what: "max_token_lifetime_secs",
        });
    }
    if config.max_grant_lifetime_secs == 0 {
        return Err(AuthzConfigError::ZeroLifetime {
            what: "max_grant_lifetime_secs",
        });
    }
    let mut issuers = BTreeMap::new();
    for issuer in &config.issuers {
        let name = &issuer.issuer;
        let mut keys = BTreeMap::new();
        for jwk in &issuer.jwks.keys {
            let kid = jwk
                .common
                .key_id
                .clone()
                .ok_or_else(|| AuthzConfigError::MissingKid {
                    issuer: name.clone(),
                })?;
            let unsupported = |got: String| AuthzConfigError::UnsupportedKey {
                issuer: name.clone(),
                kid: kid.clone(),
                got,
            };
            let alg = match &jwk.algorithm {
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    Algorithm::EdDSA
                }
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::OctetKeyPair(p) => {
                    return Err(unsupported(format!("OKP {:?}", p.curve)))
                }
                AlgorithmParameters::EllipticCurve(p) => {
                    return Err(unsupported(format!("EC {:?}", p.curve)))
                }
                AlgorithmParameters::OctetKey(_) => {
                    return Err(unsupported("a symmetric (oct) key".into()))
                }
            };
            if let Some(stated) = jwk.common.key_algorithm {
                if format!("{stated:?}") != format!("{alg:?}") {
                    return Err(AuthzConfigError::KeyAlgorithmMismatch {
                        issuer: name.clone(),
                        kid,
                        expected: format!("{alg:?}"),
                        got: format!("{stated:?}"),
                    });
                }
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| AuthzConfigError::BadKey {
                issuer: name.clone(),
                kid: kid.clone(),
                reason: e.to_string(),
            })?;
            if keys
                .insert(kid.clone(), VerifyingKey { alg, key })
                .is_some()
            {
                return Err(AuthzConfigError::DuplicateKid {
                    issuer: name.clone(),
                    kid,
                });
            }
        }
        let compiled = Issuer {
            kind: issuer.kind,
            keys,
        };
        if issuers.insert(name.clone(), compiled).is_some() {
            return Err(AuthzConfigError::DuplicateIssuer(name.clone()));
        }
    }
    Ok(issuers)
}
