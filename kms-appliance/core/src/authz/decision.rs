//! What is asked ([`Request`]), by whom ([`AttestedPeer`], [`Credential`]), and what was
//! decided ([`Decision`], with its [`AuditEvent`]).

use coffer_types::Role;
use serde::{Deserialize, Serialize};

use crate::keys::{KeyId, OrgId};

/// Who the peer of the session proved to be, from its attestation (the fields of
/// `coffer_mesh::PeerIdentity` the decision needs). Only a peer whose measurement the mesh found
/// pinned for `role` gets one; anything else is `None` at [`super::Authorizer::authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedPeer {
    /// The role its measurement is pinned for.
    pub role: Role,
    /// Its launch measurement.
    pub measurement: [u8; 48],
}

/// The credential presented with a request: the compact JWS, as received.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// Nothing.
    None,
    /// An identity token (a user acting through a client appliance).
    IdentityToken(String),
    /// A job grant (an executor running an approved job).
    JobGrant(String),
}

impl std::fmt::Debug for Credential {
    // Tokens are bearer credentials: never in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "Credential::None",
            Self::IdentityToken(_) => "Credential::IdentityToken([redacted])",
            Self::JobGrant(_) => "Credential::JobGrant([redacted])",
        })
    }
}

impl Credential {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::None => "no credential",
            Self::IdentityToken(_) => "an identity token",
            Self::JobGrant(_) => "a job grant",
        }
    }
}

/// A KMS operation to authorise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Create an org's KEK.
    CreateOrgKey {
        /// The org.
        org: OrgId,
    },
    /// Rotate an org's KEK.
    RotateOrgKey {
        /// The org.
        org: OrgId,
    },
    /// Re-wrap an org's data-key records under its current KEK version (after a rotation).
    RewrapDataKeys {
        /// The org.
        org: OrgId,
    },
    /// Destroy an org's KEKs (crypto-shredding).
    DestroyOrgKey {
        /// The org.
        org: OrgId,
    },
    /// List an org's key metadata.
    ListKeyMetadata {
        /// The org.
        org: OrgId,
    },
    /// Generate a data key under an org's KEK, for one of its workspaces.
    GenerateDataKey {
        /// The org.
        org: OrgId,
        /// The workspace the key is for.
        workspace: String,
    },
    /// Unwrap a data key.
    UnwrapDataKey {
        /// The org whose KEK wraps it.
        org: OrgId,
        /// The data key.
        key_id: KeyId,
    },
}

impl Request {
    /// The operation.
    pub fn operation(&self) -> Operation {
        match self {
            Self::CreateOrgKey { .. } => Operation::CreateOrgKey,
            Self::RotateOrgKey { .. } => Operation::RotateOrgKey,
            Self::RewrapDataKeys { .. } => Operation::RewrapDataKeys,
            Self::DestroyOrgKey { .. } => Operation::DestroyOrgKey,
            Self::ListKeyMetadata { .. } => Operation::ListKeyMetadata,
            Self::GenerateDataKey { .. } => Operation::GenerateDataKey,
            Self::UnwrapDataKey { .. } => Operation::UnwrapDataKey,
        }
    }

    /// The org the request acts on.
    pub fn org(&self) -> &OrgId {
        match self {
            Self::CreateOrgKey { org }
            | Self::RotateOrgKey { org }
            | Self::RewrapDataKeys { org }
            | Self::DestroyOrgKey { org }
            | Self::ListKeyMetadata { org }
            | Self::GenerateDataKey { org, .. }
            | Self::UnwrapDataKey { org, .. } => org,
        }
    }
}

/// An operation's stable name (in audit events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// [`Request::CreateOrgKey`].
    CreateOrgKey,
    /// [`Request::RotateOrgKey`].
    RotateOrgKey,
    /// [`Request::RewrapDataKeys`].
    RewrapDataKeys,
    /// [`Request::DestroyOrgKey`].
    DestroyOrgKey,
    /// [`Request::ListKeyMetadata`].
    ListKeyMetadata,
    /// [`Request::GenerateDataKey`].
    GenerateDataKey,
    /// [`Request::UnwrapDataKey`].
    UnwrapDataKey,
    /// The root key and state handed to a joining KMS replica (or upgraded image); see
    /// [`super::Authorizer::authorize_replica`].
    ReplicaSnapshot,
    /// An audit checkpoint co-signed for the control plane; see
    /// [`super::Authorizer::authorize_checkpoint`].
    SignCheckpoint,
    /// The control plane collecting the audit journal; see
    /// [`super::Authorizer::authorize_audit_collect`].
    CollectAudit,
    /// Not a request: the KMS carrying a previous process's uncollected journal entries into
    /// its new journal at start ([`crate::api::AuditJournal::durable`]). Appears only, denied,
    /// in the entry that stands for a record it refused to carry over (tampered or missing).
    ReplayJournal,
}

/// Why a request was denied: a stable code (its serde name, also [`Reason::code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No attested identity for the peer (not attested, or its measurement is not pinned).
    PeerNotAttested,
    /// The peer's attested role may not call the KMS (only client and executor may).
    PeerRoleNotAllowed,
    /// No credential was presented.
    CredentialMissing,
    /// The wrong kind of credential for the peer's role.
    CredentialKindMismatch,
    /// Not a well-formed token, or its claims do not parse.
    TokenMalformed,
    /// The JWT `typ` header is not the one of the expected credential.
    TokenTypeMismatch,
    /// The `iss` is not a configured issuer.
    IssuerUnknown,
    /// A job grant signed by an issuer that may not sign grants (an OIDC provider).
    IssuerNotAllowed,
    /// No `kid`, or a `kid` the issuer does not have.
    KeyUnknown,
    /// An algorithm outside EdDSA/ES256/RS256, or not the one of the named key.
    AlgorithmNotAllowed,
    /// The signature does not verify.
    SignatureInvalid,
    /// The audience is not `kms`.
    AudienceMismatch,
    /// Past `exp` (beyond the skew).
    TokenExpired,
    /// Before `iat` or `nbf` (beyond the skew).
    TokenNotYetValid,
    /// `exp - iat` above the configured maximum.
    LifetimeTooLong,
    /// The request's org is not the credential's.
    OrgMismatch,
    /// The request's workspace is not the token's.
    WorkspaceMismatch,
    /// The user's roles do not allow the operation.
    RoleInsufficient,
    /// The peer's role may never perform this operation (an executor administering keys).
    OperationNotPermitted,
    /// A dataset's approval policy cannot be satisfied by anything (k = 0 or no roles).
    ApprovalPolicyInvalid,
    /// A dataset owner's policy is not met by the approvals listed.
    ApprovalsInsufficient,
    /// The key asked for belongs to no dataset of the job.
    DatasetNotInJob,
    /// A result key for someone who is not a recipient of the job.
    RecipientNotInJob,
    /// A checkpoint request names another checkpoint than the one sent.
    CheckpointMismatch,
    /// A journal record of a previous process did not authenticate (altered, forged or
    /// moved on the disk): its decision is lost and was not carried over.
    JournalEntryTampered,
    /// Sequence numbers inside a previous process's journal were missing on the disk
    /// (deleted): their decisions are lost.
    JournalEntriesMissing,
}

impl Reason {
    /// The stable code, as in audit events.
    pub fn code(self) -> &'static str {
        match self {
            Self::PeerNotAttested => "peer_not_attested",
            Self::PeerRoleNotAllowed => "peer_role_not_allowed",
            Self::CredentialMissing => "credential_missing",
            Self::CredentialKindMismatch => "credential_kind_mismatch",
            Self::TokenMalformed => "token_malformed",
            Self::TokenTypeMismatch => "token_type_mismatch",
            Self::IssuerUnknown => "issuer_unknown",
            Self::IssuerNotAllowed => "issuer_not_allowed",
            Self::KeyUnknown => "key_unknown",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::SignatureInvalid => "signature_invalid",
            Self::AudienceMismatch => "audience_mismatch",
            Self::TokenExpired => "token_expired",
            Self::TokenNotYetValid => "token_not_yet_valid",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::OrgMismatch => "org_mismatch",
            Self::WorkspaceMismatch => "workspace_mismatch",
            Self::RoleInsufficient => "role_insufficient",
            Self::OperationNotPermitted => "operation_not_permitted",
            Self::ApprovalPolicyInvalid => "approval_policy_invalid",
            Self::ApprovalsInsufficient => "approvals_insufficient",
            Self::DatasetNotInJob => "dataset_not_in_job",
            Self::RecipientNotInJob => "recipient_not_in_job",
            Self::CheckpointMismatch => "checkpoint_mismatch",
            Self::JournalEntryTampered => "journal_entry_tampered",
            Self::JournalEntriesMissing => "journal_entries_missing",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// A denial: its code and what was wrong (expected vs got).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The stable code.
    pub reason: Reason,
    /// What was wrong, for people.
    pub message: String,
}

impl Denial {
    pub(crate) fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Allowed or denied, in audit events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The operation may proceed.
    Allowed,
    /// It may not.
    Denied,
}

/// The record of one decision, allowed or denied, for the audit log. Holds identifiers only:
/// never a token, a signature or key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// When (the `now` the decision was made at), in seconds since the Unix epoch.
    pub time: u64,
    /// The peer's attested role, if it had one.
    pub peer_role: Option<Role>,
    /// The peer's launch measurement (hex), if attested.
    pub peer_measurement: Option<String>,
    /// Who acted, once the credential verified: `user:<sub>` or `job:<job id>`.
    pub subject: Option<String>,
    /// The credential's issuer, once verified.
    pub issuer: Option<String>,
    /// The credential's `jti`, once verified.
    pub credential_id: Option<String>,
    /// The operation asked for.
    pub operation: Operation,
    /// The org it acts on.
    pub org: String,
    /// The workspace, for data key generation.
    pub workspace: Option<String>,
    /// The data key, for unwrap.
    pub key_id: Option<String>,
    /// Allowed or denied.
    pub outcome: Outcome,
    /// Why it was denied.
    pub reason: Option<Reason>,
    /// What was decided and why, for people.
    pub message: String,
}

/// The decision on one request. Whatever it is, [`Decision::audit`] goes to the audit log.
#[must_use = "a decision must be enforced and its audit event recorded"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub(crate) denial: Option<Denial>,
    pub(crate) audit: AuditEvent,
}

impl Decision {
    /// Whether the operation may proceed.
    pub fn is_allowed(&self) -> bool {
        self.denial.is_none()
    }

    /// Why it may not, if denied.
    pub fn denial(&self) -> Option<&Denial> {
        self.denial.as_ref()
    }

    /// The reason code, if denied.
    pub fn reason(&self) -> Option<Reason> {
        self.denial.as_ref().map(|d| d.reason)
    }

    /// The audit event of this decision.
    pub fn audit(&self) -> &AuditEvent {
        &self.audit
    }
}
