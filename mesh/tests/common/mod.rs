//! Helpers shared by the mesh test files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use coffer_mesh::http::{serve, SessionEvent};
use coffer_mesh::{MeshError, MeshNode};
use coffer_sim::SimRoot;
use coffer_types::Role;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One simulation root for the whole file (RSA-4096 generation is slow).
pub fn root() -> &'static Arc<SimRoot> {
    static ROOT: OnceLock<Arc<SimRoot>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        Arc::new(SimRoot::load_or_generate(dir.path()).unwrap())
    })
}

/// Starts `kms` serving "hello <peer role>" to clients; returns its address and its events.
pub async fn start_server(kms: Arc<MeshNode>) -> (String, mpsc::UnboundedReceiver<SessionEvent>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (events, received) = mpsc::unbounded_channel();
    let handler = |_request: Request<hyper::body::Incoming>,
                   peer: Arc<coffer_mesh::PeerIdentity>| async move {
        Response::new(Full::new(Bytes::from(format!("hello {}", peer.role))))
    };
    tokio::spawn(serve(
        kms,
        listener,
        vec![Role::Client],
        handler,
        Some(events),
    ));
    (addr, received)
}

pub async fn next_event(events: &mut mpsc::UnboundedReceiver<SessionEvent>) -> SessionEvent {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("an event in time")
        .expect("the server is running")
}

pub async fn refused_by_server(events: &mut mpsc::UnboundedReceiver<SessionEvent>) -> MeshError {
    match next_event(events).await {
        SessionEvent::Refused(e) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub fn get() -> Request<Full<Bytes>> {
    Request::get("/").body(Full::new(Bytes::new())).unwrap()
}
