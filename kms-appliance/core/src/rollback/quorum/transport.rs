//! Witnesses reached through their attestation endpoints: [`EndpointTransport`].
//!
//! Each witness URL is checked once per witness process: its endpoint's evidence must be
//! genuine code pinned for the **kms** role in this KMS's manifest, bound to a fresh nonce and
//! to the TLS key of that connection, under any manifest of the deployment
//! ([`Binding::AnyManifest`]: witnesses keep working while the manifest changes, e.g. during an
//! image upgrade). That key's SHA-256 is the witness's incarnation. Every request then goes over
//! TLS to that key only; a different key means a different process, which is checked again (a
//! new incarnation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use coffer_mesh::endpoint::{check_endpoint_bound, request_attested};
use coffer_mesh::{Binding, MeshError, Trust};
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
    /// URL → the hex SHA-256 of the TLS key its evidence bound (checked once per process).
    checked: Arc<Mutex<HashMap<String, String>>>,
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
            checked: Arc::default(),
        })
    }
}

async fn call(
    trust: Arc<Trust>,
    checked: Arc<Mutex<HashMap<String, String>>>,
    url: String,
    body: Bytes,
) -> Result<(Incarnation, Outcome), String> {
    let known = checked
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&url)
        .cloned();
    let mut fresh = known.is_none();
    let mut spki = match known {
        Some(spki) => spki,
        None => attest(&trust, &url).await?,
    };
    let (status, reply) = loop {
        match request_attested(&url, &spki, Method::POST, WITNESS_PATH, body.clone()).await {
            Ok(answer) => break answer,
            // Another key (or no connection) may be a restarted witness: check it again, once.
            Err(
                MeshError::SessionBindingMismatch { .. } | MeshError::Io(_) | MeshError::Tls(_),
            ) if !fresh => {
                fresh = true;
                spki = attest(&trust, &url).await?;
            }
            Err(e) => return Err(format!("{} ({})", e, e.name())),
        }
    };
    checked
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(url.clone(), spki.clone());
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
    let held = reply.held.as_ref().map(|h| h.parse()).transpose()?;
    let outcome = match (status.as_u16(), reply.refused.as_deref(), held) {
        (200, None, held) => Outcome::Held(held),
        (409, Some("witness_fork"), Some(held)) => Outcome::Fork(held),
        (409, Some("witness_stale"), Some(held)) => Outcome::Stale(held),
        (code, refused, _) => {
            return Err(format!("unexpected answer {code} (refused: {refused:?})"))
        }
    };
    Ok((incarnation, outcome))
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
                let (trust, checked, url, body) = (
                    self.trust.clone(),
                    self.checked.clone(),
                    url.clone(),
                    body.clone(),
                );
                let (send, receive) = std::sync::mpsc::sync_channel(1);
                self.runtime.spawn(async move {
                    let result =
                        tokio::time::timeout(CALL_TIMEOUT, call(trust, checked, url, body))
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
