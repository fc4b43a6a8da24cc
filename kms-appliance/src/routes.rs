//! The KMS's routes on its attestation endpoint (server-authenticated TLS): recovery, for people,
//! and checkpoint co-signing, for the control plane (which is not a mesh node):
//!
//! | method | path | answer |
//! |---|---|---|
//! | `GET` | [`KIT_PATH`] | the recovery kit (public: shares age-encrypted to the officers), 404 without one |
//! | `GET` | [`STATUS_PATH`] | `{"restoring": bool, "status"?: SessionStatus}` |
//! | `POST` | [`SHARE_PATH`] | body: one share re-encrypted to the session recipient; 200 `{"index", "received", "complete"}` |
//! | `GET` | [`BACKUP_PATH`] | serving: a fresh backup (ciphertext under a root-derived key) |
//! | `POST` | [`BACKUP_PATH`] | restoring: the backup to restore with the root key (before the last share) |
//! | `POST` | [`COSIGN_PATH`] | serving: `{"token", "checkpoint", "proof"}` from the control plane; the co-signed note (see `KmsApi::cosign_checkpoint`) |
//! | `POST` | [`AUDIT_EVENTS_PATH`] | serving: `{"token", "journal", "after", "limit"}` from the control plane; the audit journal after `after` (see `KmsApi::collect_audit`) |
//! | `POST` | [`WITNESS_PATH`] | always: a peer KMS's `advance` or `query` of its state version, answered from this process's memory ([`coffer_kms::rollback::quorum`]) |
//!
//! While restoring, the node's endpoint claims (bound into each answer's evidence) name the
//! session's recipient and the split it expects, so an officer checks, with `coffer recovery
//! submit`, that the attested KMS is the one their share is for before re-encrypting it. The
//! split comes from the deployment manifest (`kms.recovery.restore`), never from a request.

use std::collections::BTreeMap;
use std::sync::Arc;

use coffer_kms::keys::RootKey;
use coffer_kms::recovery::{RecoveryInfo, RecoverySession};
use coffer_kms::KmsApi;
use coffer_mesh::endpoint::Extension;
use coffer_mesh::MeshNode;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use tokio::sync::{oneshot, Mutex};

pub use coffer_kms::api::AUDIT_EVENTS_PATH;
pub use coffer_kms::checkpoint::COSIGN_PATH;
pub use coffer_kms::recovery::endpoint::{
    BACKUP_PATH, COMMITMENT_CLAIM, KIT_PATH, RECIPIENT_CLAIM, SHARE_PATH, SPLIT_CLAIM, STATUS_PATH,
};
use coffer_kms::rollback::quorum::WitnessTable;
pub use coffer_kms::rollback::quorum::WITNESS_PATH;

/// What the recovery routes serve from.
#[derive(Default)]
pub struct State {
    /// The session while restoring.
    session: Option<RecoverySession>,
    /// Where the restored root key (and the backup received, if any) goes.
    done: Option<oneshot::Sender<Restored>>,
    /// The backup posted while restoring.
    backup: Option<Bytes>,
    /// The kit, once the KMS serves.
    kit: Option<String>,
    /// The KMS, once it serves (for backups and checkpoints).
    api: Option<Arc<KmsApi>>,
    /// The audit log's origin (the deployment's).
    origin: String,
}

/// What a completed restore yields.
pub struct Restored {
    /// The root key the officers' shares restored.
    pub root: RootKey,
    /// The backup posted, if any.
    pub backup: Option<Bytes>,
}

/// The routes' shared state.
pub type Shared = Arc<Mutex<State>>;

/// The split a restoring KMS accepts, from the manifest.
pub fn restore_info(deployment: &coffer_types::Deployment) -> Option<Result<RecoveryInfo, String>> {
    let policy = deployment.kms.as_ref()?.recovery.as_ref()?;
    let restore = policy.restore.as_ref()?;
    let parse = || -> Result<RecoveryInfo, String> {
        let split: [u8; 16] = hex::decode(&restore.split_id)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("kms.recovery.restore.split_id is not 16 bytes of hex")?;
        let commitment: [u8; 32] = hex::decode(&restore.commitment)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("kms.recovery.restore.commitment is not 32 bytes of hex")?;
        Ok(RecoveryInfo {
            deployment_id: deployment.deployment_id.clone(),
            split_id: split,
            threshold: policy.threshold,
            officers: policy.officers.clone(),
            commitment,
        })
    };
    Some(parse())
}

/// Starts a restoring session on `state`, states it in `node`'s claims, and returns where the
/// root key arrives once enough shares came in.
pub async fn begin(
    state: &Shared,
    node: &MeshNode,
    info: RecoveryInfo,
) -> Result<oneshot::Receiver<Restored>, String> {
    let (split, commitment, threshold) = (
        hex::encode(info.split_id),
        hex::encode(info.commitment),
        info.threshold,
    );
    let session = RecoverySession::new(info).map_err(|e| e.to_string())?;
    let claims = BTreeMap::from([
        (SPLIT_CLAIM.to_owned(), split),
        (COMMITMENT_CLAIM.to_owned(), commitment),
        (RECIPIENT_CLAIM.to_owned(), session.recipient().to_owned()),
    ]);
    tracing::warn!(
        recipient = session.recipient(),
        threshold,
        "RESTORING: waiting for the recovery officers' shares (coffer recovery submit)"
    );
    node.set_claims(claims);
    let (done, receiver) = oneshot::channel();
    let mut state = state.lock().await;
    state.session = Some(session);
    state.done = Some(done);
    Ok(receiver)
}

/// Publishes the kit (JSON, if any) and the KMS once it serves, with the audit log's origin.
pub async fn serving(state: &Shared, kit: Option<String>, api: Arc<KmsApi>, origin: String) {
    let mut state = state.lock().await;
    state.kit = kit;
    state.api = Some(api);
    state.origin = origin;
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({ "error": { "code": status.as_u16(), "message": message } }),
    )
}

/// The endpoint extension serving the routes from `state`, and the witness route from
/// `witness` (what this process witnessed of its peers: memory only, on purpose).
pub fn extension(state: Shared, witness: Arc<WitnessTable>) -> Extension {
    Arc::new(move |method, path, body| {
        let (state, witness) = (state.clone(), witness.clone());
        Box::pin(async move {
            match (method, path.as_str()) {
                (Method::GET, KIT_PATH) => Some(match &state.lock().await.kit {
                    Some(kit) => {
                        let mut response = Response::new(Full::new(Bytes::from(kit.clone())));
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        response
                    }
                    None => error(
                        StatusCode::NOT_FOUND,
                        "no recovery kit: the deployment names no recovery officers, or the KMS is still restoring".into(),
                    ),
                }),
                (Method::GET, STATUS_PATH) => {
                    let state = state.lock().await;
                    Some(json(
                        StatusCode::OK,
                        &match &state.session {
                            Some(session) => {
                                serde_json::json!({"restoring": true, "status": session.status()})
                            }
                            None => serde_json::json!({"restoring": false}),
                        },
                    ))
                }
                (Method::POST, SHARE_PATH) => Some(submit(&state, &body).await),
                (Method::GET, BACKUP_PATH) => Some(backup(&state).await),
                (Method::POST, BACKUP_PATH) => {
                    let mut state = state.lock().await;
                    Some(if state.session.is_some() {
                        tracing::info!(bytes = body.len(), "recovery backup received");
                        state.backup = Some(body);
                        json(StatusCode::OK, &serde_json::json!({"backup": "received"}))
                    } else {
                        error(
                            StatusCode::CONFLICT,
                            "this KMS is not restoring: it takes no backup".into(),
                        )
                    })
                }
                (Method::POST, COSIGN_PATH) => Some(cosign(&state, &body).await),
                (Method::POST, AUDIT_EVENTS_PATH) => Some(collect(&state, &body).await),
                (Method::POST, WITNESS_PATH) => Some(witness.respond(&body)),
                (
                    _,
                    KIT_PATH | STATUS_PATH | SHARE_PATH | BACKUP_PATH | COSIGN_PATH
                    | AUDIT_EVENTS_PATH | WITNESS_PATH,
                ) => Some(error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed on this route".into(),
                )),
                _ => None,
            }
        })
    })
}

/// A checkpoint co-signing request, as posted.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CosignRequest {
    token: String,
    checkpoint: String,
    #[serde(default)]
    proof: Vec<String>,
}

async fn cosign(state: &Shared, body: &[u8]) -> Response<Full<Bytes>> {
    let (api, origin) = {
        let state = state.lock().await;
        match &state.api {
            Some(api) => (api.clone(), state.origin.clone()),
            None => {
                return error(
                    StatusCode::CONFLICT,
                    "this KMS does not serve yet: it signs no checkpoint".into(),
                )
            }
        }
    };
    let request: CosignRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let mut proof = Vec::with_capacity(request.proof.len());
    for (i, hash) in request.proof.iter().enumerate() {
        use base64ct::{Base64, Encoding as _};
        let mut out = [0u8; 32];
        match Base64::decode(hash, &mut out) {
            Ok(decoded) if decoded.len() == 32 => proof.push(out),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("proof[{i}]: expected the base64 of 32 bytes, got {hash:?}"),
                )
            }
        }
    }
    api.cosign_checkpoint(
        origin,
        &request.token,
        request.checkpoint.into_bytes(),
        proof,
    )
    .await
}

/// An audit journal collection, as posted.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CollectRequest {
    token: String,
    #[serde(default)]
    journal: Option<String>,
    after: u64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    coffer_kms::api::journal::MAX_PAGE
}

async fn collect(state: &Shared, body: &[u8]) -> Response<Full<Bytes>> {
    let Some(api) = state.lock().await.api.clone() else {
        return error(
            StatusCode::CONFLICT,
            "this KMS does not serve yet: no audit journal".into(),
        );
    };
    let request: CollectRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    api.collect_audit(
        &request.token,
        request.journal.as_deref(),
        request.after,
        request.limit,
    )
    .await
}

async fn backup(state: &Shared) -> Response<Full<Bytes>> {
    let Some(api) = state.lock().await.api.clone() else {
        return error(
            StatusCode::CONFLICT,
            "this KMS does not serve yet: no backup".into(),
        );
    };
    // On the blocking pool: reading a shared store waits on its database.
    let mut kms = api.kms().clone().lock_owned().await;
    let backup = match tokio::task::spawn_blocking(move || kms.export_backup()).await {
        Ok(backup) => backup,
        Err(e) => Err(coffer_kms::KmsError::Record {
            record: "backup".into(),
            reason: format!("the export task failed: {e}"),
        }),
    };
    match backup {
        Ok(bytes) => {
            let mut response = Response::new(Full::new(Bytes::from(bytes)));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot export a backup");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot export a backup".into(),
            )
        }
    }
}

async fn submit(state: &Shared, body: &[u8]) -> Response<Full<Bytes>> {
    let mut state = state.lock().await;
    let Some(session) = state.session.as_mut() else {
        return error(
            StatusCode::CONFLICT,
            "this KMS is not restoring: it takes no shares".into(),
        );
    };
    let index = match session.submit(body) {
        Ok(index) => index,
        Err(e) => {
            tracing::warn!(error = %e, "recovery share refused");
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let status = session.status();
    tracing::info!(index, received = ?status.received, "recovery share accepted");
    let complete = status.received.len() >= usize::from(status.expected.threshold);
    if complete {
        let Some(session) = state.session.take() else {
            return error(StatusCode::CONFLICT, "the session is gone".into());
        };
        match session.complete() {
            Ok(root) => {
                let backup = state.backup.take();
                if let Some(done) = state.done.take() {
                    let _ = done.send(Restored { root, backup });
                }
            }
            Err(e) => {
                // The session is spent: dropping the sender fails the service, which restarts
                // with a new session (and a new recipient).
                state.done = None;
                tracing::error!(error = %e, "the shares do not restore the expected root key");
                return error(StatusCode::BAD_REQUEST, e.to_string());
            }
        }
    }
    json(
        StatusCode::OK,
        &serde_json::json!({"index": index, "received": status.received, "complete": complete}),
    )
}
