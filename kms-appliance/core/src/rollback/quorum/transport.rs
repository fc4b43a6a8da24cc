//! Witnesses reached through their attestation endpoints: [`EndpointTransport`].
//!
//! Each witness URL is checked once per witness process: its endpoint's evidence must be
//! genuine code pinned for the **kms** role in this KMS's manifest, bound to a fresh nonce and
//! to the TLS key of that connection, under any manifest of the deployment
//! ([`Binding::AnyManifest`]: witnesses keep working while the manifest changes, e.g. during an
//! image upgrade). That key's SHA-256 is the witness's incarnation. Requests then go over one
//! keep-alive TLS connection to that key only; when it fails, a new one is opened, and a
//! different key means a different process, which is checked again (a new incarnation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use coffer_mesh::endpoint::{check_endpoint_bound, AttestedConnection};
use coffer_mesh::{Binding, Trust};
use coffer_types::Role;
use hyper::body::Bytes;
use hyper::Method;

use super::{Incarnation, Outcome, WitnessReply, WitnessRequest, WitnessTransport, WITNESS_PATH};

/// How long one witness exchange (attestation check and request) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Reaches witnesses over their attestation endpoints, on a runtime of its own.
pub struct EndpointTransport {
    trust: Arc<Trust>,
    /// A current-thread runtime driven by a thread of this transport: the callers block (a
    /// commit holds the KMS), and the appliance's own runtime is current-thread too, so it
    /// cannot be driven from here.
    runtime: tokio::runtime::Handle,
    /// URL → its witness: the hex SHA-256 of the TLS key its evidence bound (checked once per
    /// witness process) and the open connection to it. One request at a time per witness.
    witnesses: Arc<Mutex<HashMap<String, Slot>>>,
}

/// One witness URL's attested key and connection.
type Slot = Arc<tokio::sync::Mutex<Known>>;

#[derive(Default)]
struct Known {
    spki: Option<String>,
    connection: Option<AttestedConnection>,
}

impl std::fmt::Debug for EndpointTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointTransport").finish_non_exhaustive()
    }
}

impl EndpointTransport {
    /// Witnesses verified against `trust`'s kms pins. Starts the thread that drives the
    /// transport's runtime (for the life of the process). [`WitnessTransport::call_all`] blocks:
    /// call it from a blocking thread, never from async code.
    pub fn new(trust: Arc<Trust>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("kms-witness-io".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        Ok(Self {
            trust,
            runtime: handle,
            witnesses: Arc::default(),
        })
    }
}

async fn call(
    trust: Arc<Trust>,
    slot: Slot,
    url: String,
    body: Bytes,
) -> Result<(Incarnation, Outcome), String> {
    let mut known = slot.lock().await;
    let (spki, (status, reply)) = exchange(&trust, &mut known, &url, body).await?;
    let incarnation: Incarnation = hex::decode(&spki)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the attested TLS key digest is not 32 bytes")?;
    let reply: WitnessReply = serde_json::from_slice(&reply).map_err(|_| {
        format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&reply[..reply.len().min(300)])
        )
    })?;
    let outcome = reply.outcome(status.as_u16())?;
    Ok((incarnation, outcome))
}

/// Sends `body` to the witness at `url`: over the open connection; else over a new one to the
/// key attested before; else to a key attested afresh (a restarted witness). Returns the
/// attested key's digest and the answer. Witness requests are idempotent, so one that failed
/// midway may be sent again.
async fn exchange(
    trust: &Trust,
    known: &mut Known,
    url: &str,
    body: Bytes,
) -> Result<(String, (hyper::StatusCode, Bytes)), String> {
    let named = |e: coffer_mesh::MeshError| format!("{e} ({})", e.name());
    if let (Some(spki), Some(connection)) = (known.spki.clone(), known.connection.as_mut()) {
        if let Ok(answer) = connection
            .send(Method::POST, WITNESS_PATH, body.clone())
            .await
        {
            return Ok((spki, answer));
        }
    }
    known.connection = None;
    if let Some(spki) = known.spki.clone() {
        if let Ok(mut connection) = AttestedConnection::connect(url, &spki).await {
            if let Ok(answer) = connection
                .send(Method::POST, WITNESS_PATH, body.clone())
                .await
            {
                known.connection = Some(connection);
                return Ok((spki, answer));
            }
        }
    }
    known.spki = None;
    let spki = attest(trust, url).await?;
    let mut connection = AttestedConnection::connect(url, &spki)
        .await
        .map_err(named)?;
    let answer = connection
        .send(Method::POST, WITNESS_PATH, body)
        .await
        .map_err(named)?;
    known.spki = Some(spki.clone());
    known.connection = Some(connection);
    Ok((spki, answer))
}

/// Checks the witness's attestation endpoint; returns the TLS key digest its evidence bound.
async fn attest(trust: &Trust, url: &str) -> Result<String, String> {
    let check = check_endpoint_bound(url, trust, Some(Role::Kms), Binding::AnyManifest)
        .await
        .map_err(|e| format!("not an attested kms: {e} ({})", e.name()))?;
    Ok(check.tls_spki_sha256)
}

impl WitnessTransport for EndpointTransport {
    fn call_all(
        &self,
        urls: &[String],
        request: &WitnessRequest,
    ) -> Vec<Result<(Incarnation, Outcome), String>> {
        let body = match serde_json::to_vec(request) {
            Ok(body) => Bytes::from(body),
            Err(e) => return urls.iter().map(|_| Err(e.to_string())).collect(),
        };
        let receivers: Vec<_> = urls
            .iter()
            .map(|url| {
                let slot = self
                    .witnesses
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(url.clone())
                    .or_default()
                    .clone();
                let (trust, url, body) = (self.trust.clone(), url.clone(), body.clone());
                let (send, receive) = std::sync::mpsc::sync_channel(1);
                self.runtime.spawn(async move {
                    let result = tokio::time::timeout(CALL_TIMEOUT, call(trust, slot, url, body))
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer in {CALL_TIMEOUT:?}")));
                    // The caller waits for every answer: a send fails only if it is gone.
                    drop(send.send(result));
                });
                receive
            })
            .collect();
        receivers
            .into_iter()
            .map(|receive| {
                receive
                    .recv()
                    .unwrap_or_else(|_| Err("the witness call was dropped".into()))
            })
            .collect()
    }
}
