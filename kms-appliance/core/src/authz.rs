//! The KMS's authorisation decision: may this attested peer, with this credential, perform
//! this operation now? One [`Authorizer::authorize`] call per request returns a [`Decision`]
//! and, allowed or denied, an [`AuditEvent`] for the audit log.
//!
//! **Trusts:** the attested identity the mesh established for the session ([`AttestedPeer`]:
//! role and measurement, from evidence checked against the deployment's pins), the issuer keys
//! in [`AuthzConfig`] (from the measured deployment manifest), and the caller's clock (`now`).
//! **Not** the credential's bytes until its signature verifies; not the control plane's word
//! that a job is approved: the approvals are recounted against every dataset's policy.
//!
//! # The rules
//! - No [`AttestedPeer`] (not attested, or its measurement not pinned): denied
//!   ([`Reason::PeerNotAttested`]). A peer attested as anything but `client` or `executor`:
//!   denied ([`Reason::PeerRoleNotAllowed`]).
//! - A **client** peer must present an identity token ([`Credential::IdentityToken`]) and acts
//!   only within the token's `org`. Create, rotate and destroy the org key need `owner` or
//!   `admin`; list key metadata needs `owner`, `admin` or `auditor`; generate a data key needs
//!   `owner`, `admin` or `analyst` *and* the request's workspace equal to the token's; unwrap
//!   needs `owner`, `admin` or `analyst` (data keys are wrapped per org: the workspace is not
//!   known at unwrap).
//! - An **executor** peer must present a job grant ([`Credential::JobGrant`]) signed by a
//!   control-plane issuer. Every dataset's policy must be met by the approvals listed; then it
//!   may unwrap exactly the `(org, key_id)` of a dataset of the job, and generate data keys
//!   exactly for a `(org, workspace)` among the recipients. Nothing else.
//!
//! # The credentials (the contract with the control plane, issue 6)
//! Both are compact JWS (RFC 7515/7519), signed with **EdDSA** (Ed25519), **ES256** (P-256,
//! r‖s) or **RS256** (OIDC issuers); the header must carry `kid`, naming a key in the issuer's
//! JWKS in [`AuthzConfig`] (a key is used with the one algorithm its type implies), and `typ`.
//! Times are integer seconds since the Unix epoch. The audience is exactly `"kms"` (or
//! `["kms"]`). Clock skew: [`AuthzConfig::clock_skew_secs`] both ways (default 60 s, at most
//! 300 s). `nbf` is optional; `iat` ≤ now + skew; now ≤ `exp` + skew; `exp` > `iat`.
//!
//! *Identity token*, `typ: "coffer-identity+jwt"`, from a control-plane or OIDC issuer,
//! lifetime `exp - iat` ≤ [`AuthzConfig::max_token_lifetime_secs`] (default 900 s):
//! ```json
//! { "iss": "https://cp.example", "sub": "alice", "org": "acme", "workspace": "research",
//!   "roles": ["analyst"], "aud": "kms", "iat": 1700000000, "exp": 1700000600,
//!   "jti": "9f2c..." }
//! ```
//! `roles` ⊆ `owner`, `admin`, `analyst`, `approver`, `auditor` (an unknown role makes the
//! token malformed). `org` follows the KMS's org id rules (1-64 of `A-Z a-z 0-9 . _ -`).
//! Other claims are ignored (OIDC providers add their own).
//!
//! *Job grant*, `typ: "coffer-job-grant+jwt"`, from a control-plane issuer only, lifetime ≤
//! [`AuthzConfig::max_grant_lifetime_secs`] (default a day); unknown claims are refused:
//! ```json
//! { "iss": "https://cp.example", "sub": "alice", "aud": "kms",
//!   "iat": 1700000000, "exp": 1700003600, "jti": "c41e...",
//!   "job": "job-17", "org": "acme",
//!   "datasets": [ { "id": "ds-1", "org": "beta", "key_id": "<32 hex>",
//!                   "policy": { "roles": ["approver", "owner"], "k": 2 } } ],
//!   "recipients": [ { "org": "acme", "workspace": "research" } ],
//!   "approvals": [ { "user": "bob", "org": "beta", "role": "approver", "at": 1699999000 } ] }
//! ```
//! A dataset's policy is met when at least `k` *distinct* users of the dataset's org, each
//! approving in one of `roles`, approved at or before the grant's `iat`. `k` = 0 or no roles is
//! refused. There is no "approved" flag: the KMS counts.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod config;
mod decision;
mod ring_provider;
mod token;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use coffer_types::Role;

use self::config::{compile, Issuer};
pub use self::config::{
    AuthzConfig, AuthzConfigError, IssuerConfig, IssuerKind, MAX_CLOCK_SKEW_SECS,
};
pub use self::decision::{
    AttestedPeer, AuditEvent, Credential, Decision, Denial, Operation, Outcome, Reason, Request,
};
use self::token::{verify, Expect};
pub use self::token::{
    Approval, ApprovalPolicy, Audience, AuditCollectClaims, CheckpointRequestClaims, GrantDataset,
    IdentityClaims, JobGrantClaims, OrgRole, Recipient, ALLOWED_ALGORITHMS, AUDIENCE,
    AUDIT_COLLECT_TYP, CHECKPOINT_REQUEST_TYP, IDENTITY_TOKEN_TYP, JOB_GRANT_TYP,
    MAX_AUDIT_COLLECT_LIFETIME_SECS, MAX_CHECKPOINT_REQUEST_LIFETIME_SECS,
};

/// Installs the ring-based crypto provider this module verifies (and the control plane signs)
/// credentials with as jsonwebtoken's process-wide provider. Returns `false` if another provider
/// was installed first: then neither verification nor signing here can be vouched for.
/// [`Authorizer::new`] calls it; a token issuer (the control plane) calls it before signing.
pub fn install_crypto_provider() -> bool {
    ring_provider::install()
}

/// Who acted, once the credential verified (for the audit event).
#[derive(Default)]
struct Verified {
    subject: Option<String>,
    issuer: Option<String>,
    credential_id: Option<String>,
}

/// Makes the decisions, with the issuers of an [`AuthzConfig`].
pub struct Authorizer {
    issuers: BTreeMap<String, Issuer>,
    config: AuthzConfig,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// Checks the configuration and installs the ring crypto provider for jsonwebtoken.
    pub fn new(config: AuthzConfig) -> Result<Self, AuthzConfigError> {
        let issuers = compile(&config)?;
        if !ring_provider::install() {
            return Err(AuthzConfigError::ForeignCryptoProvider);
        }
        Ok(Self { issuers, config })
    }

    /// Decides on `request` from `peer` (`None`: no attested, pinned identity) presenting
    /// `credential`, at `now`. Allowed or denied, the decision carries its audit event.
    pub fn authorize(
        &self,
        request: &Request,
        peer: Option<&AttestedPeer>,
        credential: &Credential,
        now: SystemTime,
    ) -> Decision {
        // A clock before 1970 is treated as 0: every token is then not yet valid.
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut verified = Verified::default();
        let denial = self
            .decide(request, peer, credential, now, &mut verified)
            .err();
        let (workspace, key_id) = match request {
            Request::GenerateDataKey { workspace, .. } => (Some(workspace.clone()), None),
            Request::UnwrapDataKey { key_id, .. } => (None, Some(key_id.as_str().to_owned())),
            _ => (None, None),
        };
        let mut audit = event(
            now,
            peer,
            request.operation(),
            request.org().as_str(),
            denial.as_ref(),
            || format!("{:?} on org {} allowed", request.operation(), request.org()),
        );
        audit.subject = verified.subject;
        audit.issuer = verified.issuer;
        audit.credential_id = verified.credential_id;
        audit.workspace = workspace;
        audit.key_id = key_id;
        Decision { denial, audit }
    }

    /// Decides whether `peer` may receive this KMS's root key and state to become a replica (or
    /// the upgraded kms image): only an attested peer whose measurement is pinned for the
    /// **kms** role. No user credential takes part: pinning a kms measurement in the deployment
    /// manifest is the authorisation (an upgrade adds the new image's pins first). The event's
    /// org is `*`: the whole KMS.
    pub fn authorize_replica(&self, peer: Option<&AttestedPeer>, now: SystemTime) -> Decision {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let denial = match peer {
            None => Some(Denial::new(
                Reason::PeerNotAttested,
                "peer: expected an attested kms with a pinned measurement, got none",
            )),
            Some(p) if p.role != Role::Kms => Some(Denial::new(
                Reason::PeerRoleNotAllowed,
                format!("peer role: expected kms (a replica), got {}", p.role),
            )),
            Some(_) => None,
        };
        let mut audit = event(
            now,
            peer,
            Operation::ReplicaSnapshot,
            "*",
            denial.as_ref(),
            || "root key and state handed to a pinned kms replica".to_owned(),
        );
        audit.subject = peer.map(|p| format!("kms:{}", hex::encode(p.measurement)));
        Decision { denial, audit }
    }

    /// Decides whether the control plane presenting `token` may collect the audit journal: an
    /// [`AUDIT_COLLECT_TYP`] token of a *control plane* issuer (not OIDC), audience `kms`, at
    /// most [`MAX_AUDIT_COLLECT_LIFETIME_SECS`] long. The event's org is `*`.
    pub fn authorize_audit_collect(&self, token: &str, now: SystemTime) -> Decision {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let expect = Expect {
            typ: AUDIT_COLLECT_TYP,
            grant: true,
            max_lifetime: MAX_AUDIT_COLLECT_LIFETIME_SECS,
            skew: self.config.clock_skew_secs,
        };
        let verified = verify::<AuditCollectClaims>(&self.issuers, token, &expect, now);
        let denial = verified.as_ref().err().cloned();
        let mut audit = event(
            now,
            None,
            Operation::CollectAudit,
            "*",
            denial.as_ref(),
            || "audit journal collected by the control plane".to_owned(),
        );
        if let Ok(claims) = verified {
            audit.subject = Some(format!("control-plane:{}", claims.sub));
            audit.issuer = Some(claims.iss);
            audit.credential_id = Some(claims.jti);
        }
        Decision { denial, audit }
    }

    /// Decides whether to co-sign the audit checkpoint `checkpoint` (its text) for the control
    /// plane presenting `token`: a [`CHECKPOINT_REQUEST_TYP`] token of a *control plane* issuer
    /// (not OIDC), audience `kms`, at most [`MAX_CHECKPOINT_REQUEST_LIFETIME_SECS`] long, naming
    /// this checkpoint's SHA-256. Only the log's operator may extend what the KMS vouches for;
    /// whether the checkpoint is consistent with the last one is checked when signing. The
    /// event's org is `*`; its subject is the control plane's `sub`.
    pub fn authorize_checkpoint(
        &self,
        token: &str,
        checkpoint: &[u8],
        now: SystemTime,
    ) -> Decision {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let expect = Expect {
            typ: CHECKPOINT_REQUEST_TYP,
            grant: true,
            max_lifetime: MAX_CHECKPOINT_REQUEST_LIFETIME_SECS,
            skew: self.config.clock_skew_secs,
        };
        let verified = verify::<CheckpointRequestClaims>(&self.issuers, token, &expect, now);
        let wanted = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(checkpoint));
        let denial = match &verified {
            Err(denial) => Some(denial.clone()),
            Ok(claims) if claims.checkpoint_sha256 != wanted => Some(Denial::new(
                Reason::CheckpointMismatch,
                format!(
                    "checkpoint_sha256: expected {wanted} (the checkpoint sent), got {}",
                    claims.checkpoint_sha256
                ),
            )),
            Ok(_) => None,
        };
        let mut audit = event(
            now,
            None,
            Operation::SignCheckpoint,
            "*",
            denial.as_ref(),
            || format!("audit checkpoint {wanted} accepted for co-signing"),
        );
        if let Ok(claims) = verified {
            audit.subject = Some(format!("control-plane:{}", claims.sub));
            audit.issuer = Some(claims.iss);
            audit.credential_id = Some(claims.jti);
        }
        Decision { denial, audit }
    }

    fn decide(
        &self,
        request: &Request,
        peer: Option<&AttestedPeer>,
        credential: &Credential,
        now: u64,
        verified: &mut Verified,
    ) -> Result<(), Denial> {
        let peer = peer.ok_or_else(|| {
            Denial::new(
                Reason::PeerNotAttested,
                "peer: expected an attested client or executor with a pinned measurement, got none",
            )
        })?;
        match peer.role {
            Role::Client => {
                let token = match credential {
                    Credential::IdentityToken(token) => token,
                    Credential::None => return Err(missing("an identity token", credential)),
                    Credential::JobGrant(_) => return Err(wrong("an identity token", credential)),
                };
                let claims: IdentityClaims = verify(
                    &self.issuers,
                    token,
                    &Expect {
                        typ: IDENTITY_TOKEN_TYP,
                        grant: false,
                        max_lifetime: self.config.max_token_lifetime_secs,
                        skew: self.config.clock_skew_secs,
                    },
                    now,
                )?;
                verified.subject = Some(format!("user:{}", claims.sub));
                verified.issuer = Some(claims.iss.clone());
                verified.credential_id = Some(claims.jti.clone());
                user_may(request, &claims)
            }
            Role::Executor => {
                let token = match credential {
                    Credential::JobGrant(token) => token,
                    Credential::None => return Err(missing("a job grant", credential)),
                    Credential::IdentityToken(_) => return Err(wrong("a job grant", credential)),
                };
                let grant: JobGrantClaims = verify(
                    &self.issuers,
                    token,
                    &Expect {
                        typ: JOB_GRANT_TYP,
                        grant: true,
                        max_lifetime: self.config.max_grant_lifetime_secs,
                        skew: self.config.clock_skew_secs,
                    },
                    now,
                )?;
                verified.subject = Some(format!("job:{}", grant.job));
                verified.issuer = Some(grant.iss.clone());
                verified.credential_id = Some(grant.jti.clone());
                job_may(request, &grant)
            }
            other => Err(Denial::new(
                Reason::PeerRoleNotAllowed,
                format!("peer role: expected client or executor, got {other}"),
            )),
        }
    }
}

/// The audit event of a decision on `operation` for `org` by `peer` at `now`; `allowed` says
/// what was allowed. Subject, issuer, credential, workspace and key are the caller's to fill.
fn event(
    now: u64,
    peer: Option<&AttestedPeer>,
    operation: Operation,
    org: &str,
    denial: Option<&Denial>,
    allowed: impl FnOnce() -> String,
) -> AuditEvent {
    AuditEvent {
        time: now,
        peer_role: peer.map(|p| p.role),
        peer_measurement: peer.map(|p| hex::encode(p.measurement)),
        subject: None,
        issuer: None,
        credential_id: None,
        operation,
        org: org.to_owned(),
        workspace: None,
        key_id: None,
        outcome: if denial.is_some() {
            Outcome::Denied
        } else {
            Outcome::Allowed
        },
        reason: denial.map(|d| d.reason),
        message: denial.map_or_else(allowed, |d| d.message.clone()),
    }
}

fn missing(expected: &str, got: &Credential) -> Denial {
    Denial::new(
        Reason::CredentialMissing,
        format!("credential: expected {expected}, got {}", got.kind()),
    )
}

fn wrong(expected: &str, got: &Credential) -> Denial {
    Denial::new(
        Reason::CredentialKindMismatch,
        format!("credential: expected {expected}, got {}", got.kind()),
    )
}

/// A user's rights in their org.
fn user_may(request: &Request, claims: &IdentityClaims) -> Result<(), Denial> {
    if request.org() != &claims.org {
        return Err(Denial::new(
            Reason::OrgMismatch,
            format!(
                "org: the token of user {:?} is for {}, the request is for {}",
                claims.sub,
                claims.org,
                request.org()
            ),
        ));
    }
    use OrgRole::{Admin, Analyst, Auditor, Owner};
    let needed: &[OrgRole] = match request {
        Request::CreateOrgKey { .. }
        | Request::RotateOrgKey { .. }
        | Request::RewrapDataKeys { .. }
        | Request::DestroyOrgKey { .. } => &[Owner, Admin],
        Request::ListKeyMetadata { .. } => &[Owner, Admin, Auditor],
        Request::GenerateDataKey { workspace, .. } => {
            if workspace != &claims.workspace {
                return Err(Denial::new(
                    Reason::WorkspaceMismatch,
                    format!(
                        "workspace: the token is for {:?}, the request is for {workspace:?}",
                        claims.workspace
                    ),
                ));
            }
            &[Owner, Admin, Analyst]
        }
        Request::UnwrapDataKey { .. } => &[Owner, Admin, Analyst],
    };
    if claims.roles.iter().any(|r| needed.contains(r)) {
        Ok(())
    } else {
        Err(Denial::new(
            Reason::RoleInsufficient,
            format!(
                "role for {:?}: expected one of {needed:?}, user {:?} has {:?}",
                request.operation(),
                claims.sub,
                claims.roles
            ),
        ))
    }
}

/// A job's rights: its approvals recounted, then its datasets and recipients.
fn job_may(request: &Request, grant: &JobGrantClaims) -> Result<(), Denial> {
    for dataset in &grant.datasets {
        let policy = &dataset.policy;
        if policy.k == 0 || policy.roles.is_empty() {
            return Err(Denial::new(
                Reason::ApprovalPolicyInvalid,
                format!(
                    "approval policy of dataset {:?}: expected k >= 1 and at least one role, got k = {} of {:?}",
                    dataset.id, policy.k, policy.roles
                ),
            ));
        }
        let approvers: BTreeSet<&str> = grant
            .approvals
            .iter()
            .filter(|a| a.org == dataset.org && policy.roles.contains(&a.role) && a.at <= grant.iat)
            .map(|a| a.user.as_str())
            .collect();
        if approvers.len() < policy.k as usize {
            return Err(Denial::new(
                Reason::ApprovalsInsufficient,
                format!(
                    "approvals of job {:?} for dataset {:?}: expected {} distinct approver(s) of org {} in roles {:?}, got {} ({:?})",
                    grant.job,
                    dataset.id,
                    policy.k,
                    dataset.org,
                    policy.roles,
                    approvers.len(),
                    approvers
                ),
            ));
        }
    }
    match request {
        Request::UnwrapDataKey { org, key_id } => {
            if grant
                .datasets
                .iter()
                .any(|d| &d.org == org && &d.key_id == key_id)
            {
                Ok(())
            } else {
                Err(Denial::new(
                    Reason::DatasetNotInJob,
                    format!(
                        "key {key_id} of org {org}: expected the key of a dataset of job {:?} ({:?}), got one outside it",
                        grant.job,
                        grant
                            .datasets
                            .iter()
                            .map(|d| format!("{}: {}/{}", d.id, d.org, d.key_id))
                            .collect::<Vec<_>>()
                    ),
                ))
            }
        }
        Request::GenerateDataKey { org, workspace } => {
            if grant
                .recipients
                .iter()
                .any(|r| &r.org == org && &r.workspace == workspace)
            {
                Ok(())
            } else {
                Err(Denial::new(
                    Reason::RecipientNotInJob,
                    format!(
                        "result key for {org}/{workspace}: expected a recipient of job {:?} ({:?})",
                        grant.job,
                        grant
                            .recipients
                            .iter()
                            .map(|r| format!("{}/{}", r.org, r.workspace))
                            .collect::<Vec<_>>()
                    ),
                ))
            }
        }
        other => Err(Denial::new(
            Reason::OperationNotPermitted,
            format!(
                "operation for an executor: expected unwrap or generate data key, got {:?}",
                other.operation()
            ),
        )),
    }
}
