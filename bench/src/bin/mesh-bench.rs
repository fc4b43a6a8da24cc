//! The attested mesh against plain mutual TLS, on loopback, in one run:
//!
//! 1. **Handshake**: a new connection plus its first request, attested (TLS 1.3 + evidence each
//!    way + verification each way + verdicts) vs plain rustls mutual TLS with the same configs
//!    and the same HTTP/1.1 stack. The simulated secure processor's signing and the verifier's
//!    work are also timed on their own, so the ratio can be read.
//! 2. **Requests**: requests per second over one established connection, attested (every request
//!    checks the session's pin and age) vs plain (target >= 0.95).
//!
//! Both servers run in this process on a multi-threaded runtime; samples alternate between the
//! two so machine drift hits both.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coffer_bench::summarize;
use coffer_mesh::binding::{session_report_data, Side};
use coffer_mesh::http::{serve, Body, MeshClient};
use coffer_mesh::tls::{self, TlsIdentity};
use coffer_mesh::{MeshNode, PeerIdentity, Simulation, Trust};
use coffer_sim::{sim_deployment, ReportFields, SimGuest, SimRoot, SimService};
use coffer_types::{deployment_digest, Role};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const HANDSHAKES: usize = 40;
const REQUEST_ROUNDS: usize = 5;
const REQUESTS_PER_ROUND: usize = 2000;
const KMS: [u8; 48] = [0x11; 48];
const CLIENT: [u8; 48] = [0x22; 48];

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}

fn node(
    root: &Arc<SimRoot>,
    manifest: &[u8],
    role: Role,
    m: [u8; 48],
) -> anyhow::Result<Arc<MeshNode>> {
    let provider = SimService::new(
        root.clone(),
        SimGuest {
            measurement: m,
            host_data: deployment_digest(manifest),
            policy: ReportFields::DEFAULT_POLICY,
        },
    );
    // Simulated evidence: this benchmark runs without SEV-SNP hardware.
    let trust = Trust::from_manifest(manifest, Simulation::DangerousAccept)?;
    Ok(Arc::new(MeshNode::new(
        role,
        Arc::new(provider),
        Arc::new(trust),
    )?))
}

fn ok_response() -> Response<Body> {
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

/// A plain mutual-TLS HTTP/1.1 server with the mesh's TLS configuration, no attestation.
async fn plain_server(identity: TlsIdentity) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let acceptor = TlsAcceptor::from(tls::server_config(&identity)?);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(ok_response())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

type PlainSender = hyper::client::conn::http1::SendRequest<Body>;

async fn plain_connect(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<PlainSender> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(config)
        .connect(tls::server_name(), tcp)
        .await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

fn get() -> anyhow::Result<Request<Body>> {
    Ok(Request::get("/").body(Full::new(Bytes::new()))?)
}

async fn plain_request(sender: &mut PlainSender) -> anyhow::Result<()> {
    sender.ready().await?;
    let response = sender.send_request(get()?).await?;
    let body = response.into_body().collect().await?.to_bytes();
    if body.as_ref() != b"ok" {
        bail!("plain server answered {body:?}");
    }
    Ok(())
}

async fn attested_request(client: &mut MeshClient) -> anyhow::Result<()> {
    let response = client.send(get()?).await?;
    if response.body().as_ref() != b"ok" {
        bail!("attested server answered {:?}", response.body());
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn run() -> anyhow::Result<()> {
    let keys = tempfile::tempdir()?;
    let root = Arc::new(SimRoot::load_or_generate(keys.path()).context("simulation root")?);
    let pins = BTreeMap::from([
        (Role::Kms, vec![hex::encode(KMS)]),
        (Role::Client, vec![hex::encode(CLIENT)]),
    ]);
    let manifest = serde_json::to_vec(&sim_deployment(&root, "bench", pins)?)?;
    let kms = node(&root, &manifest, Role::Kms, KMS)?;
    let client = node(&root, &manifest, Role::Client, CLIENT)?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let attested_addr = listener.local_addr()?.to_string();
    let handler = |_r: Request<Incoming>, _p: Arc<PeerIdentity>| async { ok_response() };
    tokio::spawn(serve(
        kms.clone(),
        listener,
        vec![Role::Client],
        handler,
        None,
    ));
    let plain_addr = plain_server(TlsIdentity::generate()?).await?;
    let plain_config = tls::client_config(Some(&TlsIdentity::generate()?))?;

    // Warm-up (and a check that both work).
    let mut warm = MeshClient::connect(&client, &attested_addr, Role::Kms)
        .await
        .context("attested connect")?;
    attested_request(&mut warm)
        .await
        .context("attested request")?;
    let mut warm_plain = plain_connect(&plain_addr, plain_config.clone())
        .await
        .context("plain connect")?;
    plain_request(&mut warm_plain)
        .await
        .context("plain request")?;

    // 1. Handshakes, alternating.
    let (mut attested, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..HANDSHAKES {
        let started = Instant::now();
        let mut c = MeshClient::connect(&client, &attested_addr, Role::Kms)
            .await
            .context("attested handshake")?;
        attested_request(&mut c)
            .await
            .context("first attested request")?;
        attested.push(started.elapsed());
        drop(c);
        let started = Instant::now();
        let mut s = plain_connect(&plain_addr, plain_config.clone())
            .await
            .context("plain handshake")?;
        plain_request(&mut s).await.context("first plain request")?;
        plain.push(started.elapsed());
    }
    // The parts: one simulated report, one verification (each side of a handshake does one of
    // each).
    let (mut sign, mut verify, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    let identity = TlsIdentity::generate()?;
    for i in 0..HANDSHAKES {
        let report_data = session_report_data(
            Side::Client,
            Role::Client,
            &[i as u8; 32],
            identity.cert_der(),
        );
        let started = Instant::now();
        let evidence =
            coffer_evidence::EvidenceProvider::attest(client.provider().as_ref(), &report_data)?;
        sign.push(started.elapsed());
        let now = coffer_verify::Timestamp::now()?;
        let started = Instant::now();
        kms.trust()
            .verify(Role::Client, &evidence, report_data, now)?;
        verify.push(started.elapsed());
        // The same with an empty collateral cache (a fresh Trust), as on a node's first session.
        let fresh = Trust::from_manifest(&manifest, Simulation::DangerousAccept)?;
        let started = Instant::now();
        fresh.verify(Role::Client, &evidence, report_data, now)?;
        cold.push(started.elapsed());
    }

    // 2. Requests over one established connection each, alternating rounds.
    let mut attested_conn = MeshClient::connect(&client, &attested_addr, Role::Kms).await?;
    let mut plain_conn = plain_connect(&plain_addr, plain_config.clone()).await?;
    let (mut attested_rps, mut plain_rps) = (Vec::new(), Vec::new());
    for _ in 0..REQUEST_ROUNDS {
        let started = Instant::now();
        for _ in 0..REQUESTS_PER_ROUND {
            attested_request(&mut attested_conn)
                .await
                .context("attested request round")?;
        }
        attested_rps.push(REQUESTS_PER_ROUND as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        for _ in 0..REQUESTS_PER_ROUND {
            plain_request(&mut plain_conn)
                .await
                .context("plain request round")?;
        }
        plain_rps.push(REQUESTS_PER_ROUND as f64 / started.elapsed().as_secs_f64());
    }

    let (Some(a), Some(p), Some(s), Some(v), Some(c)) = (
        summarize(&attested),
        summarize(&plain),
        summarize(&sign),
        summarize(&verify),
        summarize(&cold),
    ) else {
        bail!("no samples");
    };
    println!("## Attested mesh vs plain mutual TLS (loopback, one process, {HANDSHAKES} handshakes each)");
    println!();
    println!("| what | median | min | max |");
    println!("|---|---|---|---|");
    for (name, x) in [
        ("plain rustls mutual TLS 1.3: connect + first request", p),
        (
            "attested mesh: connect + attest both ways + first request",
            a,
        ),
        (
            "  of which, per side: sim secure processor signs a report",
            s,
        ),
        (
            "  of which, per side: verify the peer's evidence (chain cached, report signature, policy)",
            v,
        ),
        (
            "  for comparison: the same verification on a first session (nothing cached)",
            c,
        ),
    ] {
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms |",
            ms(x.median),
            ms(x.min),
            ms(x.max)
        );
    }
    println!();
    println!(
        "Handshake ratio attested / plain (median): {:.1}x. Per side, the simulated secure \
         processor's signing is {:.2} ms of it (a real one's cost is not measured here) and \
         verification {:.2} ms ({:.2} ms before the collateral cache holds the peer's chain).",
        ms(a.median) / ms(p.median),
        ms(s.median),
        ms(v.median),
        ms(c.median)
    );
    attested_rps.sort_by(f64::total_cmp);
    plain_rps.sort_by(f64::total_cmp);
    let (am, pm) = (
        attested_rps[attested_rps.len() / 2],
        plain_rps[plain_rps.len() / 2],
    );
    println!();
    println!(
        "## Requests over an established connection ({REQUEST_ROUNDS} rounds of {REQUESTS_PER_ROUND}, sequential)"
    );
    println!();
    println!("| connection | median req/s | min | max |");
    println!("|---|---|---|---|");
    for (name, v) in [
        ("plain mutual TLS", &plain_rps),
        ("attested mesh", &attested_rps),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} |",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    }
    println!();
    println!(
        "Requests ratio attested / plain (median): {:.3} (target >= 0.95).",
        am / pm
    );
    Ok(())
}
