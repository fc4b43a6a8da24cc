//! The mesh applets every image can run: `mesh-serve` (an attested HTTPS server, plus the
//! attestation endpoint for people) and `mesh-probe` (connects to a peer role's mesh endpoint and
//! exchanges a request). They are the first services that use the attested mesh; the KMS, client
//! and executor services of later issues are built the same way.
//!
//! Both read the deployment manifest the init verified ([`DEPLOYMENT_RUNTIME_PATH`]); without one
//! (an appliance run standalone) they log that the mesh is disabled and idle.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use coffer_mesh::http::{serve, MeshClient};
use coffer_mesh::{MeshNode, PeerIdentity, Simulation, Trust};
use coffer_types::{Role, DEPLOYMENT_RUNTIME_PATH};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};

/// `mesh-serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Mesh address to listen on.
    #[arg(long)]
    pub listen: String,
    /// Roles allowed to connect (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub accept: Vec<Role>,
    /// Also serve the attestation endpoint for people on this address.
    #[arg(long)]
    pub endpoint: Option<String>,
}

/// `mesh-probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The role to connect to (its endpoint comes from the deployment manifest).
    #[arg(long)]
    pub peer: Role,
    /// Milliseconds between requests (and between attempts while the peer is not up).
    #[arg(long, default_value_t = 5000)]
    pub interval_ms: u64,
}

/// This node, from the verified deployment manifest and this guest's evidence provider; `None`
/// when the appliance runs without a deployment.
pub fn node(role: Role) -> Result<Option<Arc<MeshNode>>, String> {
    let manifest = match std::fs::read(DEPLOYMENT_RUNTIME_PATH) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{DEPLOYMENT_RUNTIME_PATH}: {e}")),
    };
    let provider = coffer_evidence::detect().map_err(|e| e.to_string())?;
    // A guest on the simulated platform can only ever meet simulated peers; on real hardware the
    // init has already refused a simulation manifest (platform mismatch).
    let simulation = if provider.platform() == coffer_types::Platform::Sim {
        tracing::warn!("simulated platform: trusting the deployment's simulation root (NOT AMD)");
        Simulation::DangerousAccept
    } else {
        Simulation::Refuse
    };
    let trust = Trust::from_manifest(&manifest, simulation).map_err(|e| e.to_string())?;
    let node =
        MeshNode::new(role, Arc::from(provider), Arc::new(trust)).map_err(|e| e.to_string())?;
    Ok(Some(Arc::new(node)))
}

/// What a mesh service does in an appliance run without a deployment: logs it and waits.
pub fn idle() -> ExitCode {
    tracing::info!("no deployment manifest: mesh disabled");
    loop {
        std::thread::park();
    }
}

/// The single-threaded runtime every mesh applet runs on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Runs `mesh-serve`.
pub fn serve_main(role: Role, args: &ServeArgs) -> ExitCode {
    let node = match node(role) {
        Ok(Some(node)) => node,
        Ok(None) => return idle(),
        Err(e) => {
            tracing::error!(error = %e, "mesh-serve: cannot join the mesh");
            return ExitCode::FAILURE;
        }
    };
    let result =
        runtime().and_then(|rt| {
            rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(&args.listen).await?;
            tracing::info!(listen = %args.listen, accept = ?args.accept, "mesh-serve: listening");
            if let Some(endpoint) = &args.endpoint {
                let listener = tokio::net::TcpListener::bind(endpoint).await?;
                tracing::info!(listen = %endpoint, "attestation endpoint: listening");
                tokio::spawn(coffer_mesh::endpoint::serve_endpoint(node.clone(), listener));
            }
            let handler = move |request: Request<hyper::body::Incoming>,
                                peer: Arc<PeerIdentity>| async move {
                let body = serde_json::json!({
                    "role": role,
                    "path": request.uri().path(),
                    "peer_role": peer.role,
                    "peer_measurement": hex::encode(peer.measurement),
                });
                Response::new(Full::new(Bytes::from(body.to_string())))
            };
            serve(node, listener, args.accept.clone(), handler, None).await
        })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "mesh-serve failed");
            ExitCode::FAILURE
        }
    }
}

/// Runs `mesh-probe`.
pub fn probe_main(role: Role, args: &ProbeArgs) -> ExitCode {
    let node = match node(role) {
        Ok(Some(node)) => node,
        Ok(None) => return idle(),
        Err(e) => {
            tracing::error!(error = %e, "mesh-probe: cannot join the mesh");
            return ExitCode::FAILURE;
        }
    };
    let Some(addr) = node.trust().deployment().endpoints.get(&args.peer).cloned() else {
        tracing::error!(peer = %args.peer, "mesh-probe: the deployment names no endpoint for this role");
        return ExitCode::FAILURE;
    };
    let interval = Duration::from_millis(args.interval_ms);
    let result = runtime().map(|rt| {
        rt.block_on(async {
            let mut connected: Option<MeshClient> = None;
            loop {
                if connected.is_none() {
                    match MeshClient::connect(&node, &addr, args.peer).await {
                        Ok(client) => {
                            tracing::info!(peer = %client.peer(), %addr, "mesh-probe: attested");
                            connected = Some(client);
                        }
                        Err(e) => {
                            tracing::warn!(%addr, error = %e, reason = e.name(), "mesh-probe: refused");
                        }
                    }
                }
                if let Some(client) = connected.as_mut() {
                    let request = Request::get("/v1/peer").body(Full::new(Bytes::new()));
                    match request {
                        Ok(request) => match client.send(request).await {
                            Ok(response) => tracing::info!(
                                status = response.status().as_u16(),
                                answer = %String::from_utf8_lossy(response.body()),
                                "mesh-probe: exchanged a request"
                            ),
                            Err(e) => {
                                tracing::warn!(error = %e, reason = e.name(), "mesh-probe: session ended");
                                connected = None;
                            }
                        },
                        Err(e) => tracing::error!(error = %e, "mesh-probe: bad request"),
                    }
                }
                tokio::time::sleep(interval).await;
            }
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "mesh-probe failed");
            ExitCode::FAILURE
        }
    }
}
