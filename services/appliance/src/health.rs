//! The health service: `GET /healthz` over HTTP/1.1 (hyper), for the launcher's readiness wait.
//!
//! It answers from inside the guest, so a 200 means the kernel, the network and the init all
//! came up. Later issues put this route on the real services; the body format is
//! [`coffer_types::Health`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use coffer_types::{Health, Role};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Arguments of the `health` applet.
#[derive(clap::Args, Debug)]
pub struct HealthArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
}

/// Runs the health service until SIGTERM.
pub fn run(role: Role, args: &HealthArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn!(error = %e, "cannot start runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(role, args.listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            warn!(error = %e, listen = %args.listen, "health service failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(role: Role, listen: SocketAddr) -> std::io::Result<()> {
    let service = std::env::var("COFFER_SERVICE").unwrap_or_else(|_| "health".to_owned());
    let health = Health {
        status: "ok".to_owned(),
        role,
        service,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let body = Bytes::from(serde_json::to_vec(&health).map_err(std::io::Error::other)?);
    let listener = TcpListener::bind(listen).await?;
    info!(%listen, "health endpoint listening");
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let body = body.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, body.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = sigterm.recv() => {
                info!("SIGTERM: health endpoint stopping");
                return Ok(());
            }
        }
    }
}

async fn answer(req: Request<Incoming>, body: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = if req.method() == Method::GET && req.uri().path() == "/healthz" {
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(body))
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not found\n")))
    };
    // The builder only fails on invalid header values; ours are constants.
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}
