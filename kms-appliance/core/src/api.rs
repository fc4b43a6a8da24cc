//! The KMS API over the attested mesh: JSON over HTTP/1.1, served with
//! [`coffer_mesh::http::serve`] (see [`KmsApi::handler`]).
//!
//! # Routes
//! | method | path | body | answer |
//! |---|---|---|---|
//! | `POST` | `/v1/orgs/{org}/keys` | none or `{}` | 201 [`OrgKeyInfo`] |
//! | `POST` | `/v1/orgs/{org}/keys/rotate` | none or `{}` | 200 [`OrgKeyInfo`] |
//! | `POST` | `/v1/orgs/{org}/keys/rewrap` | none or `{"limit": 1..=10000}` (default 1000) | 200 [`Rewrap`](crate::Rewrap): the KMS's data-key records moved to the current KEK version in bulk; call again while `remaining` > 0 |
//! | `DELETE` | `/v1/orgs/{org}/keys` | none or `{}` | 200 [`OrgKeyInfo`] (destroyed: crypto-shredding) |
//! | `GET` | `/v1/orgs/{org}/keys` | none | 200 `{"org": OrgKeyInfo, "data_keys": [{key_id, kek_version, created_at}]}` |
//! | `POST` | `/v1/orgs/{org}/data-keys` | `{"workspace": "..."}` | 201 `{"key_id", "plaintext", "wrapped"}` |
//! | `POST` | `/v1/orgs/{org}/data-keys/{key_id}/unwrap` | `{"wrapped": WrappedDataKey}` | 200 `{"key_id", "plaintext", "rewrapped"?}`: `rewrapped` when `wrapped` is under an older KEK version (lazy re-wrap: the caller keeps it instead) |
//! | `POST` | `/v1/replica/snapshot` | none | 200 [`Snapshot`](crate::Snapshot): root key and state, to an attested, pinned **kms** peer only (a joining replica or upgraded image) |
//! | `GET` | `/v1/peer` | none | 200 `{"peer_role", "peer_measurement"}`: the caller as attested (no credential, nothing released) |
//!
//! `plaintext` is the 32-byte key in standard base64 (padded); `wrapped` is a
//! [`WrappedDataKey`] as JSON (ciphertext in hex), which the caller keeps and sends back as is.
//!
//! # Credentials
//! `Authorization: Bearer <identity token>` (a user, through a client appliance) or
//! `Coffer-Job-Grant: <job grant>` (an executor). Neither: the decision is `credential_missing`.
//! Both: 400 `ambiguous_credentials`. The peer's role and measurement are the ones the mesh
//! attested for the session ([`PeerIdentity`]), never anything the request says.
//!
//! # Order of checks, per request
//! 1. The route (404 `not_found`, 405 `method_not_allowed`), the path's org and key id, the
//!    credential headers and the body (400, code `invalid_<field>` or `unknown_field`, with
//!    `field`): only what is needed to know *what* is asked. Nothing is executed, nothing about
//!    any key is read.
//! 2. [`Authorizer::authorize`], whose [`AuditEvent`] goes to the [`AuditSink`] before anything
//!    else happens; if the sink refuses, the request fails (500 `audit_unavailable`) and is not
//!    executed: no key leaves without its record.
//! 3. Denied: 403 with the reason code ([`crate::authz::Reason::code`]) and message.
//! 4. Allowed: the operation on the [`Kms`]; its refusals map to 4xx codes
//!    ([`KmsError`] → `org_key_not_found`, `org_key_exists`, `org_key_destroyed`,
//!    `kek_version_unknown`, `kek_version_retired`, `wrapped_key_invalid`), store and other
//!    internal failures to 500 with a code and a generic message (details only in the log).
//!
//! Every error is `{"error": {"code": "...", "message": "...", "field"?: "..."}}`.
//!
//! # Secrets
//! Tokens and grants are never logged or echoed. Plaintext key bytes exist only in the
//! [`DataKey`] (wiped on drop), their base64 form and the serialised response body, each in a
//! zeroizing buffer; the body is handed to hyper as [`Bytes`] that own that buffer, so it is
//! wiped when hyper drops it. (Copies rustls makes while encrypting the record are beyond this
//! module.) They go only in the response to the attested session that asked; never in the audit
//! event, an error or a log line.
//!
//! # Concurrency
//! [`Kms`] is `Send` but not `Sync` (its rollback anchor is only `Send`), so the KMS sits behind
//! one async mutex: every operation, reads included, holds it in turn. An unwrap holds it for
//! two AES-GCM decryptions (microseconds); writes hold it across their durable commit and run
//! on the blocking pool so no runtime worker waits on `fsync`. Authorisation (signature checks)
//! runs before the lock, in parallel.

use std::sync::Arc;
use std::time::SystemTime;

use base64ct::{Base64, Encoding};
use coffer_mesh::http::Body;
use coffer_mesh::PeerIdentity;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::authz::{
    AttestedPeer, AuditEvent, Authorizer, Credential, Decision, Request as AuthzRequest,
};
use crate::keys::{DataKey, KeyError, KeyId, OrgId, WrappedDataKey};
use crate::kms::{Kms, KmsError, OrgKeyInfo};
use crate::KEY_LEN;

mod audit;
pub mod journal;

pub use self::audit::{AuditError, AuditSink, LogAuditSink, MemoryAuditSink};
pub use self::journal::{AuditJournal, JournalPage, AUDIT_EVENTS_PATH};

/// `GET`: the caller's attested role and measurement as the KMS saw them (diagnostics; no
/// credential needed, nothing released, not audited).
pub const PEER_PATH: &str = "/v1/peer";

/// `POST`: the root key and state, for a joining replica (a pinned kms only; audited). See
/// [`crate::kms::replica`].
pub const REPLICA_SNAPSHOT_PATH: &str = "/v1/replica/snapshot";

/// The header that carries an executor's job grant.
pub const JOB_GRANT_HEADER: &str = "coffer-job-grant";

/// The largest request body accepted (the biggest legitimate one, an unwrap, is under 1 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The future [`KmsApi::handler`]'s closure returns.
pub type HandlerFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>;

/// Base64 length of a data key (32 bytes, padded).
const PLAINTEXT_B64_LEN: usize = KEY_LEN.div_ceil(3) * 4;

impl From<&PeerIdentity> for AttestedPeer {
    fn from(peer: &PeerIdentity) -> Self {
        Self {
            role: peer.role,
            measurement: peer.measurement,
        }
    }
}

/// A failed request: status, stable code, the field at fault (for 400s) and a message that
/// holds no secret.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    field: Option<&'static str>,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            field: None,
            message: message.into(),
        }
    }

    fn field(code: &'static str, field: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            field: Some(field),
            message: message.into(),
        }
    }

    fn internal(code: &'static str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            code,
            "the KMS failed internally; the details are in its log",
        )
    }

    fn into_response(self) -> Response<Body> {
        let mut error = Map::new();
        error.insert("code".into(), Value::from(self.code));
        error.insert("message".into(), Value::from(self.message));
        if let Some(field) = self.field {
            error.insert("field".into(), Value::from(field));
        }
        let body = serde_json::json!({ "error": error }).to_string();
        let mut response = json_response(self.status, Bytes::from(body));
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
        }
        response
    }
}

/// Maps the KMS's refusals to codes; internal failures to 500, logged here with their details.
fn kms_error(error: KmsError) -> ApiError {
    use StatusCode as S;
    let message = error.to_string();
    match error {
        KmsError::UnknownOrg { .. } => ApiError::new(S::NOT_FOUND, "org_key_not_found", message),
        KmsError::OrgExists { .. } => ApiError::new(S::CONFLICT, "org_key_exists", message),
        KmsError::OrgDestroyed { .. } => ApiError::new(S::GONE, "org_key_destroyed", message),
        KmsError::UnknownKekVersion { .. } => {
            ApiError::new(S::NOT_FOUND, "kek_version_unknown", message)
        }
        KmsError::KekVersionRetired { .. } => {
            ApiError::new(S::GONE, "kek_version_retired", message)
        }
        KmsError::RetireCurrent { .. } => {
            ApiError::new(S::CONFLICT, "kek_version_current", message)
        }
        KmsError::Key(KeyError::Unwrap { .. } | KeyError::WrongKek { .. }) => {
            ApiError::field("wrapped_key_invalid", "wrapped", message)
        }
        KmsError::Store(crate::store::StoreError::NotAnchored { .. }) => {
            // Written, not witnessed: the caller may retry; nothing was released.
            tracing::error!(error = %message, "kms write not acknowledged");
            ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "not_witnessed",
                "the write reached this KMS's disk but its rollback witnesses did not record it, so it is not acknowledged; retry later",
            )
        }
        KmsError::Store(_) => {
            tracing::error!(error = %message, "kms store failure");
            ApiError::internal("store_error")
        }
        KmsError::Key(_)
        | KmsError::Record { .. }
        | KmsError::Recovery(_)
        | KmsError::JournalTaken => {
            tracing::error!(error = %message, "kms internal failure");
            ApiError::internal("kms_error")
        }
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn json_value<T: Serialize>(status: StatusCode, value: &T) -> Result<Response<Body>, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| {
        tracing::error!(error = %e, "cannot encode a response");
        ApiError::internal("encode_error")
    })?;
    Ok(json_response(status, Bytes::from(body)))
}

/// A response carrying a data key in the clear: base64 and body in zeroizing buffers, the body
/// handed to hyper as bytes that own (and on drop wipe) that buffer. Never cached.
/// A response whose body holds a secret: wiped when hyper drops it, never cached.
fn secret_response(status: StatusCode, body: Zeroizing<Vec<u8>>) -> Response<Body> {
    let mut response = json_response(status, Bytes::from_owner(body));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn plaintext_response(
    status: StatusCode,
    key: &DataKey,
    wrapped: Option<&WrappedDataKey>,
    rewrapped: Option<&WrappedDataKey>,
) -> Result<Response<Body>, ApiError> {
    #[derive(Serialize)]
    struct WithPlaintext<'a> {
        key_id: &'a KeyId,
        plaintext: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        wrapped: Option<&'a WrappedDataKey>,
        /// On unwrap of a key under an older KEK version: the same key under the current one,
        /// to keep instead.
        #[serde(skip_serializing_if = "Option::is_none")]
        rewrapped: Option<&'a WrappedDataKey>,
    }
    let mut b64 = Zeroizing::new([0u8; PLAINTEXT_B64_LEN]);
    let plaintext = Base64::encode(key.expose_secret(), b64.as_mut_slice())
        .map_err(|_| ApiError::internal("encode_error"))?;
    // Reserved up front so serialising never reallocates (which would leave an unwiped copy).
    let mut body = Zeroizing::new(Vec::with_capacity(4096));
    serde_json::to_writer(
        &mut *body,
        &WithPlaintext {
            key_id: key.id(),
            plaintext,
            wrapped,
            rewrapped,
        },
    )
    .map_err(|_| ApiError::internal("encode_error"))?;
    Ok(secret_response(status, body))
}

/// How many data-key records one `POST .../keys/rewrap` re-wraps by default, and at most (one
/// commit each: bounded time with the KMS held, bounded transaction size).
const DEFAULT_REWRAP_LIMIT: usize = 1000;
const MAX_REWRAP_LIMIT: usize = 10_000;

/// What the route asks for, parsed and checked, before the decision.
enum Call {
    Create(OrgId),
    Rotate(OrgId),
    Rewrap { org: OrgId, limit: usize },
    Destroy(OrgId),
    List(OrgId),
    Generate { org: OrgId, workspace: String },
    Unwrap(WrappedDataKey),
}

impl Call {
    fn authz_request(&self) -> AuthzRequest {
        match self {
            Self::Create(org) => AuthzRequest::CreateOrgKey { org: org.clone() },
            Self::Rotate(org) => AuthzRequest::RotateOrgKey { org: org.clone() },
            Self::Rewrap { org, .. } => AuthzRequest::RewrapDataKeys { org: org.clone() },
            Self::Destroy(org) => AuthzRequest::DestroyOrgKey { org: org.clone() },
            Self::List(org) => AuthzRequest::ListKeyMetadata { org: org.clone() },
            Self::Generate { org, workspace } => AuthzRequest::GenerateDataKey {
                org: org.clone(),
                workspace: workspace.clone(),
            },
            Self::Unwrap(wrapped) => AuthzRequest::UnwrapDataKey {
                org: wrapped.org.clone(),
                key_id: wrapped.key_id.clone(),
            },
        }
    }
}

/// The routes, by path shape.
enum Route {
    Keys,
    Rotate,
    Rewrap,
    DataKeys,
    Unwrap(String),
}

fn route(path: &str) -> Option<(String, Route)> {
    let rest = path.strip_prefix("/v1/orgs/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let route = match parts.as_slice() {
        [_, "keys"] => Route::Keys,
        [_, "keys", "rotate"] => Route::Rotate,
        [_, "keys", "rewrap"] => Route::Rewrap,
        [_, "data-keys"] => Route::DataKeys,
        [_, "data-keys", key_id, "unwrap"] => Route::Unwrap((*key_id).to_owned()),
        _ => return None,
    };
    Some((parts[0].to_owned(), route))
}

/// A workspace name: the org id rules (1-64 of `A-Z a-z 0-9 . _ -`).
fn valid_workspace(workspace: &str) -> bool {
    (1..=64).contains(&workspace.len())
        && workspace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The body as a JSON object with no fields but `allowed` (an empty body is `{}`).
fn body_object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => object,
        Ok(_) => {
            return Err(ApiError::field(
                "invalid_body",
                "body",
                "body: expected a JSON object",
            ))
        }
        Err(e) => {
            return Err(ApiError::field(
                "invalid_body",
                "body",
                format!("body: expected a JSON object, got invalid JSON ({e})"),
            ))
        }
    };
    if let Some(unknown) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        // The name is the caller's own input, echoed back shortened.
        let shown: String = unknown.chars().take(64).collect();
        return Err(ApiError::field(
            "unknown_field",
            "body",
            format!("body: unknown field {shown:?} (expected only {allowed:?})"),
        ));
    }
    Ok(object)
}

/// The credential from the headers; never copied anywhere but the [`Credential`].
fn credential(headers: &HeaderMap) -> Result<Credential, ApiError> {
    let bearer = headers.get(AUTHORIZATION);
    let grant = headers.get(JOB_GRANT_HEADER);
    match (bearer, grant) {
        (Some(_), Some(_)) => Err(ApiError::field(
            "ambiguous_credentials",
            "authorization",
            "credentials: expected an identity token or a job grant, got both",
        )),
        (None, None) => Ok(Credential::None),
        (Some(value), None) => {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| {
                    let (scheme, token) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                })
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    ApiError::field(
                        "invalid_authorization",
                        "authorization",
                        "authorization header: expected \"Bearer <identity token>\"",
                    )
                })?;
            Ok(Credential::IdentityToken(token.to_owned()))
        }
        (None, Some(value)) => {
            let token = value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    ApiError::field(
                        "invalid_job_grant",
                        "coffer-job-grant",
                        "coffer-job-grant header: expected a job grant (compact JWS)",
                    )
                })?;
            Ok(Credential::JobGrant(token.to_owned()))
        }
    }
}

/// The KMS API: the [`Kms`], the [`Authorizer`] that decides on every request, and the
/// [`AuditSink`] that records every decision.
pub struct KmsApi {
    kms: Arc<Mutex<Kms>>,
    authorizer: Authorizer,
    audit: Arc<dyn AuditSink>,
    journal: Option<Arc<AuditJournal>>,
}

impl std::fmt::Debug for KmsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsApi")
            .field("authorizer", &self.authorizer)
            .finish_non_exhaustive()
    }
}

impl KmsApi {
    /// Serves `kms`, deciding with `authorizer` and recording every decision in `audit`.
    pub fn new(kms: Kms, authorizer: Authorizer, audit: Arc<dyn AuditSink>) -> Self {
        Self {
            kms: Arc::new(Mutex::new(kms)),
            authorizer,
            audit,
            journal: None,
        }
    }

    /// Serves `kms`, recording every decision in `journal`, which the control plane collects
    /// ([`KmsApi::collect_audit`]).
    pub fn with_journal(kms: Kms, authorizer: Authorizer, journal: Arc<AuditJournal>) -> Self {
        Self {
            journal: Some(journal.clone()),
            ..Self::new(kms, authorizer, journal)
        }
    }

    /// The control plane collects the journal: `token` an audit collection request of a
    /// control-plane issuer; acknowledges the events up to `after` of `journal` (see
    /// [`AuditJournal::collect`]) and answers the [`JournalPage`] after it (JSON). A denial is
    /// journaled and answered 403; without a journal, 404.
    pub async fn collect_audit(
        &self,
        token: &str,
        journal_id: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Response<Body> {
        let result = async {
            let journal = self.journal.as_ref().ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "no_journal",
                    "this KMS keeps no audit journal",
                )
            })?;
            let decision = self
                .authorizer
                .authorize_audit_collect(token, SystemTime::now());
            self.enforce(&decision)?;
            let page = journal.collect(journal_id, after, limit).map_err(|e| {
                tracing::error!(error = %e, "cannot read the audit journal");
                ApiError::internal("audit_unavailable")
            })?;
            json_value(StatusCode::OK, &page)
        }
        .await;
        match result {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    }

    /// The audit journal, if the API records into one.
    pub fn journal(&self) -> Option<&Arc<AuditJournal>> {
        self.journal.as_ref()
    }

    /// The KMS behind the API, shared (for maintenance in the appliance, and benchmarks that
    /// compare the API with the same operation in-process). Whoever locks it bypasses
    /// authorisation and audit.
    pub fn kms(&self) -> &Arc<Mutex<Kms>> {
        &self.kms
    }

    /// A handler for [`coffer_mesh::http::serve`].
    pub fn handler(
        self: &Arc<Self>,
    ) -> impl Fn(Request<Incoming>, Arc<PeerIdentity>) -> HandlerFuture + Clone + Send + Sync + 'static
    {
        let api = self.clone();
        move |request, peer| {
            let api = api.clone();
            Box::pin(async move { api.handle(request, &peer).await })
        }
    }

    /// Answers one request from the attested `peer`. Never panics; every failure is a JSON
    /// error with a stable code.
    pub async fn handle<B>(&self, request: Request<B>, peer: &PeerIdentity) -> Response<Body>
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        match self.try_handle(request, peer).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    }

    async fn try_handle<B>(
        &self,
        request: Request<B>,
        peer: &PeerIdentity,
    ) -> Result<Response<Body>, ApiError>
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (parts, body) = request.into_parts();
        if parts.uri.path() == PEER_PATH && parts.method == Method::GET {
            // The caller's own attested identity, as this KMS saw it: releases nothing.
            return json_value(
                StatusCode::OK,
                &serde_json::json!({
                    "peer_role": peer.role,
                    "peer_measurement": hex::encode(peer.measurement),
                }),
            );
        }
        if parts.uri.path() == REPLICA_SNAPSHOT_PATH {
            return self.replica_snapshot(&parts.method, peer).await;
        }
        let call = self.parse(&parts.method, parts.uri.path(), body).await?;
        let credential = credential(&parts.headers)?;
        let decision = self.authorizer.authorize(
            &call.authz_request(),
            Some(&AttestedPeer::from(peer)),
            &credential,
            SystemTime::now(),
        );
        drop(credential);
        self.enforce(&decision)?;
        self.execute(call).await
    }

    /// `POST /v1/replica/snapshot`: the root key and state, to a pinned kms only.
    async fn replica_snapshot(
        &self,
        method: &Method,
        peer: &PeerIdentity,
    ) -> Result<Response<Body>, ApiError> {
        if method != Method::POST {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("method {method} is not allowed on this route"),
            ));
        }
        let decision = self
            .authorizer
            .authorize_replica(Some(&AttestedPeer::from(peer)), SystemTime::now());
        self.enforce(&decision)?;
        let snapshot = self
            .blocking(|kms| kms.export_snapshot())
            .await?
            .map_err(|e| {
                tracing::error!(error = %e, "cannot export the replica snapshot");
                ApiError::internal("snapshot_failed")
            })?;
        let body = snapshot.to_json().map_err(|e| {
            tracing::error!(error = %e, "cannot encode the replica snapshot");
            ApiError::internal("snapshot_failed")
        })?;
        tracing::info!(
            peer_measurement = %hex::encode(peer.measurement),
            records = snapshot.records(),
            "root key and state handed to a pinned kms replica"
        );
        Ok(secret_response(StatusCode::OK, body))
    }

    /// Records the decision's audit event (a request is refused if it cannot be recorded), then
    /// refuses a denied request with 403 and the denial's code.
    fn enforce(&self, decision: &Decision) -> Result<(), ApiError> {
        self.record(decision.audit())?;
        match decision.denial() {
            None => Ok(()),
            Some(denial) => {
                let event = decision.audit();
                tracing::info!(
                    peer_role = ?event.peer_role,
                    operation = ?event.operation,
                    org = %event.org,
                    reason = denial.reason.code(),
                    "kms request denied"
                );
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    denial.reason.code(),
                    denial.message.clone(),
                ))
            }
        }
    }

    fn record(&self, event: &AuditEvent) -> Result<(), ApiError> {
        self.audit.record(event).map_err(|e| {
            tracing::error!(error = %e, "audit sink refused an event: request not executed");
            ApiError::internal("audit_unavailable")
        })
    }

    /// The route and its input: no decision yet, nothing executed.
    async fn parse<B>(&self, method: &Method, path: &str, body: B) -> Result<Call, ApiError>
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let Some((org, route)) = route(path) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route (see the KMS API routes under /v1/orgs/{org}/)",
            ));
        };
        let wrong_method = || {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("method {method} is not allowed on this route"),
            )
        };
        // The method first, so a wrong one does not read the body.
        match (&route, method) {
            (Route::Keys, &Method::GET | &Method::POST | &Method::DELETE)
            | (Route::Rotate | Route::Rewrap | Route::DataKeys | Route::Unwrap(_), &Method::POST) =>
                {}
            _ => return Err(wrong_method()),
        }
        let org =
            OrgId::new(org).map_err(|e| ApiError::field("invalid_org", "org", e.to_string()))?;
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("body: expected at most {MAX_BODY_BYTES} bytes"),
                ))
            }
            Err(e) => {
                return Err(ApiError::field(
                    "invalid_body",
                    "body",
                    format!("body: cannot be read ({e})"),
                ))
            }
        };
        Ok(match route {
            Route::Keys => {
                body_object(&body, &[])?;
                match *method {
                    Method::POST => Call::Create(org),
                    Method::DELETE => Call::Destroy(org),
                    _ => Call::List(org),
                }
            }
            Route::Rotate => {
                body_object(&body, &[])?;
                Call::Rotate(org)
            }
            Route::Rewrap => {
                let object = body_object(&body, &["limit"])?;
                let limit = match object.get("limit") {
                    None => DEFAULT_REWRAP_LIMIT,
                    Some(Value::Number(n)) => n
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|n| (1..=MAX_REWRAP_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::field(
                                "invalid_limit",
                                "limit",
                                format!("limit: expected 1..={MAX_REWRAP_LIMIT}, got {n}"),
                            )
                        })?,
                    Some(other) => {
                        return Err(ApiError::field(
                            "invalid_limit",
                            "limit",
                            format!("limit: expected a number, got {other}"),
                        ))
                    }
                };
                Call::Rewrap { org, limit }
            }
            Route::DataKeys => {
                let object = body_object(&body, &["workspace"])?;
                let workspace = match object.get("workspace") {
                    Some(Value::String(w)) if valid_workspace(w) => w.clone(),
                    Some(_) => {
                        return Err(ApiError::field(
                            "invalid_workspace",
                            "workspace",
                            "workspace: expected 1-64 characters of A-Z a-z 0-9 . _ -",
                        ))
                    }
                    None => {
                        return Err(ApiError::field(
                            "invalid_workspace",
                            "workspace",
                            "workspace: missing",
                        ))
                    }
                };
                Call::Generate { org, workspace }
            }
            Route::Unwrap(key_id) => {
                let key_id = KeyId::parse(key_id)
                    .map_err(|e| ApiError::field("invalid_key_id", "key_id", e.to_string()))?;
                let mut object = body_object(&body, &["wrapped"])?;
                let wrapped = object.remove("wrapped").ok_or_else(|| {
                    ApiError::field("invalid_wrapped", "wrapped", "wrapped: missing")
                })?;
                let wrapped: WrappedDataKey = serde_json::from_value(wrapped).map_err(|e| {
                    ApiError::field(
                        "invalid_wrapped",
                        "wrapped",
                        format!(
                            "wrapped: expected a wrapped data key as returned at generation ({e})"
                        ),
                    )
                })?;
                // The decision is on the path's (org, key id): the key presented must be that one.
                if wrapped.org != org || wrapped.key_id != key_id {
                    return Err(ApiError::field(
                        "wrapped_mismatch",
                        "wrapped",
                        format!(
                            "wrapped: expected key {key_id} of org {org}, got key {} of org {}",
                            wrapped.key_id, wrapped.org
                        ),
                    ));
                }
                Call::Unwrap(wrapped)
            }
        })
    }

    /// Runs an allowed call.
    async fn execute(&self, call: Call) -> Result<Response<Body>, ApiError> {
        match call {
            Call::Unwrap(wrapped) => {
                let (first, shared) = {
                    let kms = self.kms.lock().await;
                    (kms.unwrap_and_rewrap(&wrapped), kms.is_shared())
                };
                let (key, rewrapped) = match first {
                    // A replica of a shared store may not have read yet the org or version
                    // another replica made: take in the store, then try again.
                    Err(KmsError::UnknownOrg { .. } | KmsError::UnknownKekVersion { .. })
                        if shared =>
                    {
                        self.write(move |kms| {
                            kms.sync()?;
                            kms.unwrap_and_rewrap(&wrapped)
                        })
                        .await?
                    }
                    other => other.map_err(kms_error)?,
                };
                plaintext_response(StatusCode::OK, &key, None, rewrapped.as_ref())
            }
            Call::List(org) => {
                #[derive(Serialize)]
                struct DataKeyMeta {
                    key_id: KeyId,
                    kek_version: u32,
                    created_at: u64,
                }
                #[derive(Serialize)]
                struct Listing {
                    org: OrgKeyInfo,
                    data_keys: Vec<DataKeyMeta>,
                }
                let listing = self
                    .write(move |kms| {
                        let info = kms
                            .org_key(&org)
                            .cloned()
                            .ok_or_else(|| KmsError::UnknownOrg { org: org.clone() })?;
                        let data_keys = kms
                            .data_keys(&org)?
                            .into_iter()
                            .map(|d| DataKeyMeta {
                                key_id: d.wrapped.key_id,
                                kek_version: d.wrapped.kek_version,
                                created_at: d.created_at,
                            })
                            .collect();
                        Ok(Listing {
                            org: info,
                            data_keys,
                        })
                    })
                    .await?;
                json_value(StatusCode::OK, &listing)
            }
            Call::Create(org) => {
                let info = self
                    .write(move |kms| {
                        kms.create_org_key(&org)?;
                        info_of(kms, &org)
                    })
                    .await?;
                json_value(StatusCode::CREATED, &info)
            }
            Call::Rotate(org) => {
                let info = self
                    .write(move |kms| {
                        kms.rotate_org_key(&org)?;
                        info_of(kms, &org)
                    })
                    .await?;
                json_value(StatusCode::OK, &info)
            }
            Call::Rewrap { org, limit } => {
                let outcome = self
                    .write(move |kms| kms.rewrap_data_keys(&org, limit))
                    .await?;
                json_value(StatusCode::OK, &outcome)
            }
            Call::Destroy(org) => {
                let info = self
                    .write(move |kms| {
                        kms.destroy_org_key(&org)?;
                        info_of(kms, &org)
                    })
                    .await?;
                json_value(StatusCode::OK, &info)
            }
            Call::Generate { org, .. } => {
                let (key, wrapped) = self.write(move |kms| kms.generate_data_key(&org)).await?;
                plaintext_response(StatusCode::CREATED, &key, Some(&wrapped), None)
            }
        }
    }

    /// Co-signs an audit checkpoint for the control plane: the request (a control-plane token
    /// naming this checkpoint, [`Authorizer::authorize_checkpoint`]) is decided and audited
    /// first; then [`Kms::sign_checkpoint`] signs only a checkpoint of `origin` consistent with
    /// the last one it signed (`proof`: the consistency proof from that one). Answers the
    /// signed note (text) or a JSON error: 403 with the denial's code, 409
    /// `checkpoint_fork` / `checkpoint_truncated` / `checkpoint_inconsistent`, 400
    /// `checkpoint_invalid`.
    pub async fn cosign_checkpoint(
        &self,
        origin: String,
        token: &str,
        checkpoint: Vec<u8>,
        proof: Vec<coffer_tlog::merkle::Hash>,
    ) -> Response<Body> {
        match self.try_cosign(origin, token, checkpoint, proof).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    }

    async fn try_cosign(
        &self,
        origin: String,
        token: &str,
        checkpoint: Vec<u8>,
        proof: Vec<coffer_tlog::merkle::Hash>,
    ) -> Result<Response<Body>, ApiError> {
        let decision = self
            .authorizer
            .authorize_checkpoint(token, &checkpoint, SystemTime::now());
        self.enforce(&decision)?;
        let signed = self
            .blocking(move |kms| kms.sign_checkpoint(&origin, &checkpoint, &proof))
            .await?;
        use crate::checkpoint::CheckpointError as E;
        let note = signed.map_err(|e| {
            let message = e.to_string();
            match e {
                E::Fork { .. } => ApiError::new(StatusCode::CONFLICT, "checkpoint_fork", message),
                E::Truncated { .. } => {
                    ApiError::new(StatusCode::CONFLICT, "checkpoint_truncated", message)
                }
                E::Inconsistent { .. } => {
                    ApiError::new(StatusCode::CONFLICT, "checkpoint_inconsistent", message)
                }
                E::Malformed(_)
                | E::WrongOrigin { .. }
                | E::ExtensionLines { .. }
                | E::EmptyTreeRoot { .. } => {
                    ApiError::new(StatusCode::BAD_REQUEST, "checkpoint_invalid", message)
                }
                _ => {
                    tracing::error!(error = %message, "checkpoint signing failed");
                    ApiError::internal("checkpoint_error")
                }
            }
        })?;
        tracing::info!("audit checkpoint co-signed");
        let mut response = Response::new(Full::new(Bytes::from(note)));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok(response)
    }

    /// Runs `op` with the KMS locked, on the blocking pool (it may commit: `fsync`).
    async fn write<T, F>(&self, op: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Kms) -> Result<T, KmsError> + Send + 'static,
    {
        self.blocking(op).await?.map_err(kms_error)
    }

    /// Runs `op` with the KMS locked, on the blocking pool.
    async fn blocking<T, F>(&self, op: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Kms) -> T + Send + 'static,
    {
        let mut kms = self.kms.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || op(&mut kms))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "kms operation task failed");
                ApiError::internal("internal_error")
            })
    }
}

fn info_of(kms: &Kms, org: &OrgId) -> Result<OrgKeyInfo, KmsError> {
    kms.org_key(org)
        .cloned()
        .ok_or_else(|| KmsError::UnknownOrg { org: org.clone() })
}

#[cfg(test)]
mod tests;
