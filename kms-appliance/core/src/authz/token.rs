//! Verifying a credential: header, issuer, key, signature (jsonwebtoken on ring), then the
//! claims the KMS checks itself against the caller's `now` (audience, times, lifetime).

use std::collections::BTreeMap;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::config::{Issuer, IssuerKind};
use super::decision::{Denial, Reason};
use crate::keys::{KeyId, OrgId};

/// The audience every credential must name, alone.
pub const AUDIENCE: &str = "kms";
/// The JWT `typ` of an identity token.
pub const IDENTITY_TOKEN_TYP: &str = "coffer-identity+jwt";
/// The JWT `typ` of a job grant.
pub const JOB_GRANT_TYP: &str = "coffer-job-grant+jwt";
/// The JWT `typ` of a control plane's request to co-sign an audit checkpoint.
pub const CHECKPOINT_REQUEST_TYP: &str = "coffer-checkpoint+jwt";
/// The longest lifetime of a checkpoint request (5 min): it authorises one checkpoint, now.
pub const MAX_CHECKPOINT_REQUEST_LIFETIME_SECS: u64 = 300;

/// The JWT `typ` of a control plane's request to collect the KMS's audit journal.
pub const AUDIT_COLLECT_TYP: &str = "coffer-audit-collect+jwt";
/// The longest lifetime of an audit collection request (5 min).
pub const MAX_AUDIT_COLLECT_LIFETIME_SECS: u64 = 300;

/// The algorithms a credential may be signed with (each key allows exactly one of them).
pub const ALLOWED_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256];

/// A user's role in an org.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrgRole {
    /// Owns the org.
    Owner,
    /// Administers it.
    Admin,
    /// Works with its data.
    Analyst,
    /// Approves jobs on its datasets.
    Approver,
    /// Reads its audit trail and key metadata.
    Auditor,
}

/// `aud`: one string or an array (RFC 7519 §4.1.3). Must be exactly `kms`, or `["kms"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "kms"`.
    One(String),
    /// `"aud": ["kms"]`.
    Many(Vec<String>),
}

impl Audience {
    fn is_kms_only(&self) -> bool {
        match self {
            Self::One(a) => a == AUDIENCE,
            Self::Many(list) => list.len() == 1 && list[0] == AUDIENCE,
        }
    }
}

/// The claims of an identity token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityClaims {
    /// The issuer (a configured control plane or OIDC issuer).
    pub iss: String,
    /// The user.
    pub sub: String,
    /// The user's org.
    pub org: OrgId,
    /// The workspace the token is for.
    pub workspace: String,
    /// The user's roles in `org`.
    pub roles: Vec<OrgRole>,
    /// Must be `kms`.
    pub aud: Audience,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at.
    pub exp: u64,
    /// Not before (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The token's unique id.
    pub jti: String,
}

/// A dataset's approval policy: `k` distinct users of the owning org, each holding one of
/// `roles`, must have approved the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPolicy {
    /// The roles that count.
    pub roles: Vec<OrgRole>,
    /// How many distinct approvers are needed (at least 1).
    pub k: u32,
}

/// A dataset a job reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantDataset {
    /// The dataset's id in the registry.
    pub id: String,
    /// Its owning org (whose KEK wraps its key).
    pub org: OrgId,
    /// Its data key.
    pub key_id: KeyId,
    /// The policy its owner set.
    pub policy: ApprovalPolicy,
}

/// Who receives a job's results (result keys are generated for them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    /// The org.
    pub org: OrgId,
    /// Its workspace.
    pub workspace: String,
}

/// One approval of the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The approving user.
    pub user: String,
    /// Their org.
    pub org: OrgId,
    /// The role they approved in.
    pub role: OrgRole,
    /// When (seconds since the epoch); must not be after the grant's `iat`.
    pub at: u64,
}

/// The claims of a job grant. Unknown fields are refused (an `"approved": true` is not a
/// claim the KMS reads: it recounts the approvals).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobGrantClaims {
    /// The issuer (a control plane).
    pub iss: String,
    /// The submitting user.
    pub sub: String,
    /// Must be `kms`.
    pub aud: Audience,
    /// Issued at.
    pub iat: u64,
    /// Expires at.
    pub exp: u64,
    /// Not before (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The grant's unique id.
    pub jti: String,
    /// The job.
    pub job: String,
    /// The submitter's org.
    pub org: OrgId,
    /// The datasets it reads.
    pub datasets: Vec<GrantDataset>,
    /// Who receives its results.
    pub recipients: Vec<Recipient>,
    /// The approvals collected.
    pub approvals: Vec<Approval>,
}

/// The time claims every credential carries.
pub(crate) trait TimeClaims {
    fn iss(&self) -> &str;
    fn aud(&self) -> &Audience;
    fn iat(&self) -> u64;
    fn exp(&self) -> u64;
    fn nbf(&self) -> Option<u64>;
}

macro_rules! time_claims {
    ($t:ty) => {
        impl TimeClaims for $t {
            fn iss(&self) -> &str {
                &self.iss
            }
            fn aud(&self) -> &Audience {
                &self.aud
            }
            fn iat(&self) -> u64 {
                self.iat
            }
            fn exp(&self) -> u64 {
                self.exp
            }
            fn nbf(&self) -> Option<u64> {
                self.nbf
            }
        }
    };
}
/// The claims of a checkpoint request: a control plane asks the KMS to co-sign exactly the
/// checkpoint whose SHA-256 it names. Our own control plane writes them: unknown fields are
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRequestClaims {
    /// The issuer: a configured control plane (an OIDC issuer is refused).
    pub iss: String,
    /// Who asks (informational).
    pub sub: String,
    /// Must be `kms`.
    pub aud: Audience,
    /// Issued at.
    pub iat: u64,
    /// Expires at (at most [`MAX_CHECKPOINT_REQUEST_LIFETIME_SECS`] after `iat`).
    pub exp: u64,
    /// Not before (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The request's unique id.
    pub jti: String,
    /// SHA-256 of the checkpoint text to co-sign, hex.
    pub checkpoint_sha256: String,
}

/// The claims of an audit collection request: the control plane collects the decisions the
/// KMS journaled. Our own control plane writes them: unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCollectClaims {
    /// The issuer: a configured control plane (an OIDC issuer is refused).
    pub iss: String,
    /// Who asks (informational).
    pub sub: String,
    /// Must be `kms`.
    pub aud: Audience,
    /// Issued at.
    pub iat: u64,
    /// Expires at (at most [`MAX_AUDIT_COLLECT_LIFETIME_SECS`] after `iat`).
    pub exp: u64,
    /// Not before (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The request's unique id.
    pub jti: String,
}

time_claims!(AuditCollectClaims);
time_claims!(IdentityClaims);
time_claims!(CheckpointRequestClaims);
time_claims!(JobGrantClaims);

/// The kind of credential expected, with its bounds.
pub(crate) struct Expect {
    pub(crate) typ: &'static str,
    pub(crate) grant: bool,
    pub(crate) max_lifetime: u64,
    pub(crate) skew: u64,
}

#[derive(Deserialize)]
struct PeekIssuer {
    iss: String,
}

fn malformed(what: impl std::fmt::Display) -> Denial {
    Denial::new(Reason::TokenMalformed, format!("malformed token: {what}"))
}

/// Verifies `token` as `expect` says, at `now`.
pub(crate) fn verify<C: DeserializeOwned + TimeClaims>(
    issuers: &BTreeMap<String, Issuer>,
    token: &str,
    expect: &Expect,
    now: u64,
) -> Result<C, Denial> {
    let header = jsonwebtoken::decode_header(token).map_err(malformed)?;
    if header.typ.as_deref() != Some(expect.typ) {
        return Err(Denial::new(
            Reason::TokenTypeMismatch,
            format!("token typ: expected {}, got {:?}", expect.typ, header.typ),
        ));
    }
    if !ALLOWED_ALGORITHMS.contains(&header.alg) {
        return Err(Denial::new(
            Reason::AlgorithmNotAllowed,
            format!(
                "algorithm: expected one of {ALLOWED_ALGORITHMS:?}, got {:?}",
                header.alg
            ),
        ));
    }
    // The issuer names the key set; nothing read here is believed before the signature checks.
    let peek = jsonwebtoken::dangerous::insecure_decode::<PeekIssuer>(token).map_err(malformed)?;
    let issuer = issuers.get(&peek.claims.iss).ok_or_else(|| {
        Denial::new(
            Reason::IssuerUnknown,
            format!(
                "issuer: expected one of {:?}, got {:?}",
                issuers.keys().collect::<Vec<_>>(),
                peek.claims.iss
            ),
        )
    })?;
    if expect.grant && issuer.kind != IssuerKind::ControlPlane {
        return Err(Denial::new(
            Reason::IssuerNotAllowed,
            format!(
                "issuer of a {}: expected a control plane, got {:?} ({:?})",
                expect.typ, peek.claims.iss, issuer.kind
            ),
        ));
    }
    let kid = header
        .kid
        .as_deref()
        .ok_or_else(|| Denial::new(Reason::KeyUnknown, "kid: expected one, the header has none"))?;
    let key = issuer.keys.get(kid).ok_or_else(|| {
        Denial::new(
            Reason::KeyUnknown,
            format!(
                "kid of issuer {:?}: expected one of {:?}, got {kid:?}",
                peek.claims.iss,
                issuer.keys.keys().collect::<Vec<_>>()
            ),
        )
    })?;
    if key.alg != header.alg {
        return Err(Denial::new(
            Reason::AlgorithmNotAllowed,
            format!(
                "algorithm for kid {kid:?}: expected {:?}, got {:?}",
                key.alg, header.alg
            ),
        ));
    }
    // jsonwebtoken checks the signature and the algorithm; the KMS checks every claim itself
    // against the caller's clock, with typed claims (a string `exp` does not parse, the
    // type confusion of CVE-2026-25537 cannot arise).
    let mut validation = Validation::new(key.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<C>(token, &key.key, &validation).map_err(|e| {
        match e.kind() {
            ErrorKind::InvalidSignature => Denial::new(
                Reason::SignatureInvalid,
                format!(
                    "signature: expected one by issuer {:?} key {kid:?}, got one that does not verify",
                    peek.claims.iss
                ),
            ),
            _ => malformed(e),
        }
    })?;
    let claims = data.claims;
    if claims.iss() != peek.claims.iss {
        // Cannot happen with one payload; kept so the checked issuer is the signed one.
        return Err(malformed("issuer changed between reads"));
    }
    if !claims.aud().is_kms_only() {
        return Err(Denial::new(
            Reason::AudienceMismatch,
            format!("audience: expected {AUDIENCE:?}, got {:?}", claims.aud()),
        ));
    }
    let skew = expect.skew;
    if claims.exp() <= claims.iat() {
        return Err(malformed(format!(
            "exp {} is not after iat {}",
            claims.exp(),
            claims.iat()
        )));
    }
    let lifetime = claims.exp() - claims.iat();
    if lifetime > expect.max_lifetime {
        return Err(Denial::new(
            Reason::LifetimeTooLong,
            format!(
                "lifetime: expected at most {} s, got {lifetime} s",
                expect.max_lifetime
            ),
        ));
    }
    let not_before = claims
        .nbf()
        .map_or(claims.iat(), |nbf| nbf.max(claims.iat()));
    if not_before > now.saturating_add(skew) {
        return Err(Denial::new(
            Reason::TokenNotYetValid,
            format!("validity: starts at {not_before}, now is {now} (skew {skew} s)"),
        ));
    }
    if now > claims.exp().saturating_add(skew) {
        return Err(Denial::new(
            Reason::TokenExpired,
            format!(
                "expiry: expected after {now}, got exp {} (skew {skew} s)",
                claims.exp()
            ),
        ));
    }
    Ok(claims)
}
