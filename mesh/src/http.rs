//! HTTP over the attested mesh: a server loop and a client, so every service gets attested TLS
//! by default.
//!
//! Each connection is served until its [`Session`] ends (pin revoked, age exceeded): then it is
//! dropped, which closes it. The client checks its session before every request and fails with
//! the session's reason ([`MeshError::PinRevoked`], [`MeshError::Expired`]) once it has ended.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use coffer_types::Role;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::{MeshError, MeshNode, PeerIdentity, Session};

/// The body type of mesh requests and responses.
pub type Body = Full<Bytes>;

/// What happened to a connection, for logs and tests.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// A peer attested and its session began.
    Accepted(Arc<PeerIdentity>),
    /// A connection was refused during the attested handshake.
    Refused(MeshError),
    /// A session ended because of `reason` (revocation, age); its connection was closed.
    Ended {
        /// The peer.
        peer: Arc<PeerIdentity>,
        /// Why.
        reason: MeshError,
    },
}

/// Serves `handler` to attested peers of the roles in `accept`, on `listener`, forever. Each
/// request reaches the handler with the peer's identity. Events go to `events` if given, and to
/// the log.
pub async fn serve<H, F>(
    node: Arc<MeshNode>,
    listener: TcpListener,
    accept: Vec<Role>,
    handler: H,
    events: Option<mpsc::UnboundedSender<SessionEvent>>,
) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>, Arc<PeerIdentity>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let accept: Arc<[Role]> = accept.into();
    loop {
        let (tcp, remote) = crate::accept::next_connection(&listener, "mesh").await;
        let (node, accept, handler, events) = (
            node.clone(),
            accept.clone(),
            handler.clone(),
            events.clone(),
        );
        tokio::spawn(async move {
            let emit = |event: SessionEvent| {
                if let Some(events) = &events {
                    let _ = events.send(event);
                }
            };
            let attested = match node.accept(tcp, &accept).await {
                Ok(attested) => attested,
                Err(e) => {
                    tracing::warn!(%remote, error = %e, reason = e.name(), "mesh peer refused");
                    emit(SessionEvent::Refused(e));
                    return;
                }
            };
            let session = attested.session;
            let peer = session.peer().clone();
            tracing::info!(%remote, %peer, "mesh session established");
            emit(SessionEvent::Accepted(peer.clone()));
            let service = {
                let peer = peer.clone();
                hyper::service::service_fn(move |request| {
                    let response = handler(request, peer.clone());
                    async move { Ok::<_, Infallible>(response.await) }
                })
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(attested.stream), service);
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(%remote, error = %e, "mesh connection closed with an error");
                    }
                }
                reason = session.ended() => {
                    tracing::warn!(%remote, %peer, error = %reason, "mesh session ended");
                    emit(SessionEvent::Ended { peer, reason });
                }
            }
        });
    }
}

/// A client connection to one attested peer.
#[derive(Debug)]
pub struct MeshClient {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    session: Session,
    closed: tokio::sync::watch::Receiver<Option<MeshError>>,
}

impl MeshClient {
    /// Connects to `addr` and attests a peer of `expect`.
    pub async fn connect(node: &MeshNode, addr: &str, expect: Role) -> Result<Self, MeshError> {
        let attested = node.connect(addr, expect).await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(attested.stream))
                .await
                .map_err(|e| MeshError::Io(e.to_string()))?;
        let session = attested.session.clone();
        let (closed_tx, closed) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "mesh client connection closed with an error");
                    }
                }
                reason = session.ended() => {
                    tracing::warn!(error = %reason, "mesh session ended");
                    let _ = closed_tx.send(Some(reason));
                }
            }
        });
        Ok(Self {
            sender,
            session: attested.session,
            closed,
        })
    }

    /// Who the server is.
    pub fn peer(&self) -> &Arc<PeerIdentity> {
        self.session.peer()
    }

    /// Sends a request; fails with the session's reason once it has ended.
    pub async fn send(&mut self, request: Request<Body>) -> Result<Response<Bytes>, MeshError> {
        self.session.check()?;
        if let Some(reason) = self.closed.borrow().clone() {
            return Err(reason);
        }
        self.sender
            .ready()
            .await
            .map_err(|e| MeshError::Io(e.to_string()))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| MeshError::Io(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| MeshError::Io(e.to_string()))?
            .to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}
