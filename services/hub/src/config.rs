//! The hub's configuration: where its database and keys are, who it says it is.

use std::path::PathBuf;

use serde::Deserialize;

/// How long a session lasts (1 hour): sessions are short-lived; clients sign in again.
pub const SESSION_LIFETIME_SECS: u64 = 3600;
/// How long an identity token for the KMS lasts (10 minutes; the KMS accepts at most 15).
pub const IDENTITY_TOKEN_LIFETIME_SECS: u64 = 600;
/// How long a job grant lasts (1 hour; the KMS accepts at most a day).
pub const JOB_GRANT_LIFETIME_SECS: u64 = 3600;
/// Failed sign-ins per account within [`LOGIN_WINDOW_SECS`] before further attempts are refused.
pub const LOGIN_MAX_FAILURES: u64 = 5;
/// Failed sign-ins from one address within [`LOGIN_WINDOW_SECS`] (on any accounts) before
/// further attempts from it are refused: against one password tried on many accounts.
pub const LOGIN_MAX_FAILURES_PER_ADDRESS: u64 = 50;
/// The window of the login rate limit (15 minutes).
pub const LOGIN_WINDOW_SECS: u64 = 900;

/// The hub's configuration (from the command line).
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The database: `sqlite://PATH` (created if missing) or `postgres://...`.
    pub database_url: String,
    /// A directory for the hub's signing key (created 0700; the key file 0600).
    pub state_dir: PathBuf,
    /// The issuer name in the credentials the hub signs (`iss`), e.g. `https://cp.example`.
    /// The KMS's `kms.authz` config must name it with the hub's JWKS.
    pub issuer: String,
    /// The audit log's origin (the first line of its checkpoints), `coffer/<deployment>/audit`.
    pub audit_origin: String,
    /// OIDC issuers whose ID tokens sign users in.
    pub oidc: Vec<OidcIssuer>,
    /// The KMS that co-signs the audit log's checkpoints (none: checkpoints carry the hub's
    /// signature only).
    pub kms: Option<KmsLink>,
}

/// Where the deployment's KMS serves its endpoint, and how to attest it.
#[derive(Debug, Clone)]
pub struct KmsLink {
    /// `https://HOST:PORT` of the KMS appliance's attestation endpoint.
    pub endpoint: String,
    /// The deployment manifest (its pins say which KMS measurements to accept).
    pub manifest: Vec<u8>,
    /// Accept a KMS on the simulated platform (development and CI only).
    pub allow_simulation: bool,
}

/// An OIDC issuer the hub accepts ID tokens from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuer {
    /// `iss`, exactly.
    pub issuer: String,
    /// The client id the ID token must name in `aud`.
    pub client_id: String,
    /// The issuer's JWKS, inline (fetched and pinned by the operator).
    pub jwks: serde_json::Value,
}

impl KmsLink {
    /// Attests the KMS's endpoint against the manifest's pins for the kms role (simulated
    /// evidence only if [`KmsLink::allow_simulation`]); its check holds the attested TLS key
    /// and the claims the evidence vouches for.
    pub async fn attest(
        &self,
    ) -> Result<coffer_mesh::endpoint::EndpointCheck, coffer_mesh::MeshError> {
        let simulation = if self.allow_simulation {
            coffer_mesh::Simulation::DangerousAccept
        } else {
            coffer_mesh::Simulation::Refuse
        };
        let trust = coffer_mesh::Trust::from_manifest(&self.manifest, simulation)?;
        coffer_mesh::endpoint::check_endpoint(&self.endpoint, &trust, Some(coffer_types::Role::Kms))
            .await
    }
}
