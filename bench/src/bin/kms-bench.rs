//! KMS unwraps over the attested mesh against the same unwrap in-process, in one run:
//! unwrap operations per second and p50/p99 latency at 1, 16 and 64 concurrent clients.
//!
//! - **mesh**: each client its own attested keep-alive connection ([`MeshClient`], TLS 1.3 +
//!   attestation once per connection), one `POST /v1/orgs/{org}/data-keys/{id}/unwrap` after
//!   another with an identity token; the server is [`KmsApi`] under `coffer_mesh::http::serve`.
//!   Every request is authorised (Ed25519 token signature, claims, rights), audited (in memory)
//!   and answered in JSON.
//! - **handler in-process**: the same request handed to [`KmsApi::handle`] directly: the
//!   authorisation, audit and JSON without TLS, HTTP and the client's side.
//! - **Kms in-process** (the ceiling): `Kms::unwrap_data_key` on the same `Kms`, behind the
//!   same lock the API takes.
//!
//! Server and clients share this process and the machine's cores, so the mesh figure pays for
//! both ends. Modes alternate per round so machine drift hits all of them. Latencies are closed
//! loop: from a client being ready to its answer, waits for a worker or the lock included.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use base64ct::{Base64UrlUnpadded, Encoding};
use coffer_kms::api::{AuditError, AuditSink};
use coffer_kms::authz::AuditEvent;
use coffer_kms::authz::{AuthzConfig, IssuerConfig, IssuerKind, IDENTITY_TOKEN_TYP};
use coffer_kms::rollback::Unanchored;
use coffer_kms::{Authorizer, KeyId, Kms, KmsApi, OrgId, WrappedDataKey};
use coffer_mesh::http::{serve, Body, MeshClient};
use coffer_mesh::{MeshNode, PeerIdentity, Simulation, Trust};
use coffer_sim::{sim_deployment, ReportFields, SimGuest, SimRoot, SimService};
use coffer_types::{deployment_digest, Role};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;
use tokio::net::TcpListener;

const LEVELS: [usize; 3] = [1, 16, 64];
const ROUNDS: usize = 2;
const ROUND: Duration = Duration::from_millis(2500);
const TARGET_PER_SEC: f64 = 20_000.0;
const KMS: [u8; 48] = [0x4b; 48];
const CLIENT: [u8; 48] = [0xc1; 48];
const ISSUER: &str = "https://cp.bench.test";

/// The audit sink of the run: encodes every event as the JSON line a log would hold, counts it
/// and drops it (an in-memory list would grow by hundreds of thousands of events and time its
/// own reallocations). The real audit log (issue 6) is not measured here.
#[derive(Default)]
struct CountingSink {
    events: AtomicU64,
    bytes: AtomicU64,
}

impl AuditSink for CountingSink {
    fn record(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let line = serde_json::to_vec(event).map_err(|e| AuditError(e.to_string()))?;
        self.events.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(line.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}

fn platform(root: &Arc<SimRoot>, manifest: &[u8], measurement: [u8; 48]) -> Arc<SimService> {
    Arc::new(SimService::new(
        root.clone(),
        SimGuest {
            measurement,
            host_data: deployment_digest(manifest),
            policy: ReportFields::DEFAULT_POLICY,
        },
    ))
}

fn node(manifest: &[u8], role: Role, platform: Arc<SimService>) -> anyhow::Result<Arc<MeshNode>> {
    // Simulated evidence: this benchmark runs without SEV-SNP hardware.
    let trust = Trust::from_manifest(manifest, Simulation::DangerousAccept)?;
    Ok(Arc::new(MeshNode::new(role, platform, Arc::new(trust))?))
}

/// A control-plane issuer (Ed25519) and an analyst's identity token from it.
fn issuer() -> anyhow::Result<(Authorizer, String, String)> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("cannot load the Ed25519 key"))?;
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "cp-1",
        "x": Base64UrlUnpadded::encode_string(pair.public_key().as_ref())});
    // Built first: it installs the crypto provider jsonwebtoken signs with below.
    let authorizer = Authorizer::new(AuthzConfig::new(vec![IssuerConfig {
        issuer: ISSUER.into(),
        kind: IssuerKind::ControlPlane,
        jwks: serde_json::from_value(json!({ "keys": [jwk] }))?,
    }]))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let token = |roles: &[&str]| -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(IDENTITY_TOKEN_TYP.into());
        header.kid = Some("cp-1".into());
        let claims = json!({"iss": ISSUER, "sub": "bench", "org": "acme",
            "workspace": "research", "roles": roles, "aud": "kms", "iat": now,
            "exp": now + 600, "jti": format!("bench-{now}")});
        Ok(jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_ed_der(pkcs8.as_ref()),
        )?)
    };
    Ok((authorizer, token(&["owner"])?, token(&["analyst"])?))
}

fn request(path: &str, token: &str, body: &str) -> anyhow::Result<Request<Body>> {
    Ok(Request::post(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body.to_owned())))?)
}

/// One measurement: operations in `elapsed`, every latency.
struct Sample {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// Runs `clients` tasks for [`ROUND`], each calling `op` in a loop.
async fn drive<S, F, Fut>(states: Vec<S>, op: F) -> anyhow::Result<Sample>
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<S>> + Send,
{
    let started = Instant::now();
    let deadline = started + ROUND;
    let mut tasks = Vec::new();
    for state in states {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut state = state;
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                // In-process operations never wait on I/O: yield first, so the clients sharing
                // a worker take turns and each latency includes the wait for its turn, as a
                // mesh client's includes the wait in the server's queue.
                tokio::task::yield_now().await;
                state = op(state).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok((state, latencies))
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        let (_, l) = task.await??;
        latencies.extend(l);
    }
    Ok(Sample {
        ops: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    })
}

/// Throughput and p50/p99 of the rounds of one mode at one level.
#[derive(Default)]
struct Result3 {
    ops: usize,
    secs: f64,
    latencies: Vec<Duration>,
}

impl Result3 {
    fn add(&mut self, s: Sample) {
        self.ops += s.ops;
        self.secs += s.elapsed.as_secs_f64();
        self.latencies.extend(s.latencies);
    }
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    fn pct(&mut self, p: f64) -> f64 {
        self.latencies.sort();
        let n = self.latencies.len();
        if n == 0 {
            return f64::NAN;
        }
        let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
        self.latencies[i].as_secs_f64() * 1e6
    }
}

async fn run() -> anyhow::Result<()> {
    let keys = tempfile::tempdir()?;
    let root = Arc::new(SimRoot::load_or_generate(keys.path()).context("simulation root")?);
    let pins = BTreeMap::from([
        (Role::Kms, vec![hex::encode(KMS)]),
        (Role::Client, vec![hex::encode(CLIENT)]),
    ]);
    let manifest = serde_json::to_vec(&sim_deployment(&root, "kms-bench", pins)?)?;
    let (authorizer, owner, analyst) = issuer()?;

    let store = tempfile::tempdir()?;
    let kms_platform = platform(&root, &manifest, KMS);
    let kms = Kms::open(
        &store.path().join("kms.redb"),
        kms_platform.as_ref(),
        Box::new(Unanchored::accepting_rollback()),
    )?;
    let audit = Arc::new(CountingSink::default());
    let api = Arc::new(KmsApi::new(kms, authorizer, audit.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(serve(
        node(&manifest, Role::Kms, kms_platform)?,
        listener,
        vec![Role::Client],
        api.handler(),
        None,
    ));
    let client_node = node(&manifest, Role::Client, platform(&root, &manifest, CLIENT))?;

    // The org key and one data key, through the API (also a check that it works).
    let mut setup = MeshClient::connect(&client_node, &addr, Role::Kms).await?;
    let r = setup
        .send(request("/v1/orgs/acme/keys", &owner, "")?)
        .await?;
    if r.status() != StatusCode::CREATED {
        bail!("create org key: {} {:?}", r.status(), r.body());
    }
    let r = setup
        .send(request(
            "/v1/orgs/acme/data-keys",
            &analyst,
            r#"{"workspace":"research"}"#,
        )?)
        .await?;
    if r.status() != StatusCode::CREATED {
        bail!("generate data key: {} {:?}", r.status(), r.body());
    }
    let generated: serde_json::Value = serde_json::from_slice(r.body())?;
    let wrapped: WrappedDataKey = serde_json::from_value(generated["wrapped"].clone())?;
    let key_id: KeyId = wrapped.key_id.clone();
    if wrapped.org != OrgId::new("acme")? {
        bail!("wrapped key of another org");
    }
    let path: Arc<str> = format!("/v1/orgs/acme/data-keys/{key_id}/unwrap").into();
    let body: Arc<str> = json!({ "wrapped": generated["wrapped"] })
        .to_string()
        .into();
    let analyst: Arc<str> = analyst.into();
    let wrapped = Arc::new(wrapped);
    let peer = Arc::new(PeerIdentity {
        role: Role::Client,
        measurement: CLIENT,
        deployment_id: "kms-bench".into(),
        trust_root: coffer_verify::TrustRoot::Simulation,
    });

    // Every client's attested connection, made before any timing.
    let max = LEVELS.iter().copied().max().unwrap_or(1);
    let mut connections = Vec::with_capacity(max);
    for _ in 0..max {
        connections.push(
            MeshClient::connect(&client_node, &addr, Role::Kms)
                .await
                .context("attested connect")?,
        );
    }

    let mut mesh: Vec<Result3> = LEVELS.iter().map(|_| Result3::default()).collect();
    let mut handler: Vec<Result3> = LEVELS.iter().map(|_| Result3::default()).collect();
    let mut ceiling: Vec<Result3> = LEVELS.iter().map(|_| Result3::default()).collect();
    for _ in 0..ROUNDS {
        for (i, &n) in LEVELS.iter().enumerate() {
            // Mesh: the first n connections, handed to the tasks and back.
            let states: Vec<MeshClient> = connections.drain(..n).collect();
            let (p, b, t) = (path.clone(), body.clone(), analyst.clone());
            let sample = {
                let started = Instant::now();
                let deadline = started + ROUND;
                let mut tasks = Vec::new();
                for mut c in states {
                    let (p, b, t) = (p.clone(), b.clone(), t.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut latencies = Vec::new();
                        while Instant::now() < deadline {
                            let s = Instant::now();
                            let r = c.send(request(&p, &t, &b)?).await?;
                            if r.status() != StatusCode::OK {
                                bail!("unwrap over the mesh: {} {:?}", r.status(), r.body());
                            }
                            latencies.push(s.elapsed());
                        }
                        anyhow::Ok((c, latencies))
                    }));
                }
                let mut latencies = Vec::new();
                for task in tasks {
                    let (c, l) = task.await??;
                    connections.push(c);
                    latencies.extend(l);
                }
                Sample {
                    ops: latencies.len(),
                    elapsed: started.elapsed(),
                    latencies,
                }
            };
            mesh[i].add(sample);

            let (api2, peer2) = (api.clone(), peer.clone());
            let (p, b, t) = (path.clone(), body.clone(), analyst.clone());
            handler[i].add(
                drive(vec![(); n], move |()| {
                    let (api, peer, p, b, t) =
                        (api2.clone(), peer2.clone(), p.clone(), b.clone(), t.clone());
                    async move {
                        let r = api.handle(request(&p, &t, &b)?, &peer).await;
                        if r.status() != StatusCode::OK {
                            bail!("unwrap in-process: {}", r.status());
                        }
                        Ok(())
                    }
                })
                .await?,
            );

            let (kms, w) = (api.kms().clone(), wrapped.clone());
            ceiling[i].add(
                drive(vec![(); n], move |()| {
                    let (kms, w) = (kms.clone(), w.clone());
                    async move {
                        let key = kms.lock().await.unwrap_data_key(&w)?;
                        std::hint::black_box(key.expose_secret());
                        Ok(())
                    }
                })
                .await?,
            );
        }
    }

    println!(
        "## KMS unwraps: attested mesh vs in-process ({ROUNDS} rounds of {:.1} s per mode and level, alternating; 2 runtime workers; clients and server in one process)",
        ROUND.as_secs_f64()
    );
    println!();
    println!("| clients | mode | unwraps/s | p50 | p99 | ratio to the Kms ceiling |");
    println!("|---|---|---|---|---|---|");
    let mut at_max = 0.0;
    for (i, &n) in LEVELS.iter().enumerate() {
        let top = ceiling[i].rate();
        for (name, r) in [
            ("attested mesh (KmsApi over MeshClient)", &mut mesh[i]),
            (
                "KmsApi::handle in-process (authz + audit + JSON)",
                &mut handler[i],
            ),
            ("Kms::unwrap_data_key in-process (ceiling)", &mut ceiling[i]),
        ] {
            println!(
                "| {n} | {name} | {:.0} | {:.0} µs | {:.0} µs | {:.3} |",
                r.rate(),
                r.pct(0.50),
                r.pct(0.99),
                r.rate() / top
            );
        }
        if n == max {
            at_max = mesh[i].rate();
        }
    }
    println!();
    for (i, &n) in LEVELS.iter().enumerate() {
        println!(
            "At {n} client(s): mesh / ceiling = {:.3}, mesh / handler in-process = {:.3}.",
            mesh[i].rate() / ceiling[i].rate(),
            mesh[i].rate() / handler[i].rate()
        );
    }
    println!();
    println!(
        "Target: >= {TARGET_PER_SEC:.0} unwraps/s over the mesh at {max} clients on this machine ({} cores): measured {at_max:.0}: {}.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if at_max >= TARGET_PER_SEC { "MET" } else { "NOT MET" }
    );
    println!(
        "({} audit events encoded as JSON ({} bytes) and counted during the run; the real audit log is not measured.)",
        audit.events.load(Ordering::Relaxed),
        audit.bytes.load(Ordering::Relaxed)
    );
    Ok(())
}
