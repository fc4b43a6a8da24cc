//! The KMS appliance in a real VM (sim platform, TCG): its state on the data disk, its API over
//! the attested mesh, and crash safety under power-off.
//!
//! The test process plays a client appliance: a mesh node with the pinned client measurement,
//! attested by this machine's simulated secure processor (the deployment's simulation root),
//! and a control-plane issuer whose key the deployment manifest names.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64ct::{Base64UrlUnpadded, Encoding};
use coffer_mesh::http::MeshClient;
use coffer_mesh::{MeshNode, Simulation, Trust};
use coffer_sim::{ReportFields, SimGuest, SimRoot, SimService};
use coffer_tests::{build_image, checkout, free_port, run, unique, Vm};
use coffer_types::{deployment_digest, Deployment, Role};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand_core::RngCore;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const CP: &str = "https://cp.coffer.test";

/// The control plane's signing key, as the test holds it.
struct Issuer {
    pkcs8: Vec<u8>,
    x: String,
}

impl Issuer {
    fn generate() -> Self {
        // jsonwebtoken signs with the crypto provider the KMS's authorizer installs (ring).
        coffer_kms::Authorizer::new(coffer_kms::AuthzConfig::new(Vec::new())).unwrap();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Self {
            x: Base64UrlUnpadded::encode_string(pair.public_key().as_ref()),
            pkcs8: pkcs8.as_ref().to_vec(),
        }
    }

    fn authz(&self) -> Value {
        json!({"issuers": [{"issuer": CP, "kind": "control_plane",
            "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": self.x, "kid": "cp-1"}]}}]})
    }

    fn identity(&self, user: &str, org: &str, roles: &[&str]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.typ = Some("coffer-identity+jwt".into());
        header.kid = Some("cp-1".into());
        let claims = json!({"iss": CP, "sub": user, "org": org, "workspace": "w1",
            "roles": roles, "aud": "kms", "iat": now, "exp": now + 600,
            "jti": format!("tok-{user}-{now}")});
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_der(&self.pkcs8),
        )
        .unwrap()
    }
}

/// A client appliance's mesh identity in `manifest`, on this machine's simulated secure
/// processor.
fn client_node(state: &Path, manifest: &[u8]) -> Arc<MeshNode> {
    let deployment = Deployment::from_json(manifest).unwrap();
    let measurement: [u8; 48] = deployment.measurements(Role::Client)[0];
    let platform = Arc::new(SimService::new(
        Arc::new(SimRoot::load(&state.join("sim")).unwrap()),
        SimGuest {
            measurement,
            host_data: deployment_digest(manifest),
            policy: ReportFields::DEFAULT_POLICY,
        },
    ));
    let trust = Trust::from_manifest(manifest, Simulation::DangerousAccept).unwrap();
    Arc::new(MeshNode::new(Role::Client, platform, Arc::new(trust)).unwrap())
}

async fn call(
    client: &mut MeshClient,
    method: &str,
    path: &str,
    token: &str,
    body: Value,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client.send(request).await.unwrap();
    let status = response.status();
    (status, serde_json::from_slice(response.body()).unwrap())
}

async fn connect(node: &MeshNode, port: u16) -> MeshClient {
    let addr = format!("127.0.0.1:{port}");
    let mut last = None;
    for _ in 0..60 {
        match MeshClient::connect(node, &addr, Role::Kms).await {
            Ok(client) => return client,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("cannot reach the KMS over the mesh: {last:?}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn start_kms(
    state: &Arc<tempfile::TempDir>,
    image: &Path,
    name: &str,
    manifest: &str,
    mesh: u16,
) -> Vm {
    start_kms_with(state, image, name, manifest, mesh, &[])
}

fn start_kms_with(
    state: &Arc<tempfile::TempDir>,
    image: &Path,
    name: &str,
    manifest: &str,
    mesh: u16,
    extra: &[&str],
) -> Vm {
    let mesh_port = format!("mesh={mesh}");
    let mut args = vec!["--deployment", manifest, "--port", &mesh_port];
    args.extend_from_slice(extra);
    let vm = Vm::start_in(state.clone(), image, name, &args);
    assert!(
        vm.wait_for_log("kms state opened and verified", Duration::from_secs(90)),
        "{}",
        vm.serial()
    );
    vm
}

/// `coffer deployment init` for a deployment whose KMS listens on host port `mesh` and trusts
/// `issuer`; returns the manifest's path.
fn deployment(
    state: &Path,
    file: &str,
    id: &str,
    mesh: u16,
    issuer: &Issuer,
) -> std::path::PathBuf {
    deployment_with(state, file, id, mesh, issuer, &[])
}

/// [`deployment`] with more arguments to `coffer deployment init`.
fn deployment_with(
    state: &Path,
    file: &str,
    id: &str,
    mesh: u16,
    issuer: &Issuer,
    extra: &[&str],
) -> std::path::PathBuf {
    let authz = state.join(format!("{file}.authz.json"));
    std::fs::write(&authz, issuer.authz().to_string()).unwrap();
    let manifest_path = state.join(file);
    let outcome = run(&[
        "--state-dir",
        state.to_str().unwrap(),
        "deployment",
        "init",
        "--out",
        manifest_path.to_str().unwrap(),
        "--id",
        id,
        "--pins",
        checkout().join("measurements/pins").to_str().unwrap(),
        "--endpoint",
        &format!("kms=10.0.2.2:{mesh}"),
        "--kms-authz",
        authz.to_str().unwrap(),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .collect::<Vec<_>>());
    assert_eq!(outcome.code, 0, "{outcome:?}");
    manifest_path
}

#[test]
fn the_kms_vm_serves_keys_over_the_mesh_and_keeps_every_acknowledged_key_across_power_off() {
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("kms");
    build_image(Role::Kms, &image, None);
    let state = Arc::new(tempfile::tempdir().unwrap());
    let mesh = free_port();
    let issuer = Issuer::generate();
    let manifest_path = deployment(state.path(), "deployment.json", "vm-kms", mesh, &issuer);
    let manifest = std::fs::read(&manifest_path).unwrap();
    let name = unique("kms-vm");
    let node = client_node(state.path(), &manifest);
    let admin = issuer.identity("admin@acme", "acme", &["admin"]);
    let analyst = issuer.identity("ana@acme", "acme", &["analyst"]);
    let stranger = issuer.identity("eve@other", "other", &["admin"]);
    let rt = runtime();

    let mut vm = start_kms(&state, &image, &name, manifest_path.to_str().unwrap(), mesh);
    let serial = vm.serial();
    assert!(
        serial.contains("data disk opened to the services"),
        "{serial}"
    );
    assert!(
        serial.contains("rollback anchor: no witness, a host replaying an old copy of the data disk is not detected"),
        "{serial}"
    );
    let data_disk = coffer_qemu::state::data_disk(state.path(), &name);
    assert!(data_disk.exists());

    // The API over the attested mesh: an org key, a data key, its unwrap, a denial.
    let first_key = rt.block_on(async {
        let mut client = connect(&node, mesh).await;
        let (status, peer) = call(&mut client, "GET", "/v1/peer", &admin, json!(null)).await;
        assert_eq!(status, StatusCode::OK, "{peer}");
        assert_eq!(peer["peer_role"], "client");
        let (status, body) =
            call(&mut client, "POST", "/v1/orgs/acme/keys", &admin, json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = call(
            &mut client,
            "POST",
            "/v1/orgs/acme/data-keys",
            &analyst,
            json!({"workspace": "w1"}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let key_id = body["key_id"].as_str().unwrap().to_owned();
        let (status, unwrapped) = call(
            &mut client,
            "POST",
            &format!("/v1/orgs/acme/data-keys/{key_id}/unwrap"),
            &analyst,
            json!({"wrapped": body["wrapped"]}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{unwrapped}");
        assert_eq!(unwrapped["plaintext"], body["plaintext"]);
        let (status, denied) = call(
            &mut client,
            "POST",
            &format!("/v1/orgs/acme/data-keys/{key_id}/unwrap"),
            &stranger,
            json!({"wrapped": body["wrapped"]}),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{denied}");
        assert_eq!(denied["error"]["code"], "org_mismatch", "{denied}");
        (key_id, body)
    });
    assert!(
        vm.wait_for_log("\"outcome\":\"denied\"", Duration::from_secs(10)),
        "every decision is audited:\n{}",
        vm.serial()
    );
    let plaintext = first_key.1["plaintext"].as_str().unwrap().to_owned();
    assert!(
        !vm.serial().contains(&plaintext),
        "key material in the console log"
    );

    // Power-off at random points while a client creates keys: every acknowledged key unwraps
    // after the restart, and the store verifies (the KMS refuses to start otherwise).
    let mut acknowledged: Vec<(Value, String)> =
        vec![(first_key.1["wrapped"].clone(), digest_of(&plaintext))];
    for round in 0..2 {
        let delay = Duration::from_millis(400 + rand_core::OsRng.next_u64() % 1200);
        let acked = rt.block_on(async {
            let mut client = connect(&node, mesh).await;
            let mut acked = Vec::new();
            let writer = async {
                loop {
                    let request = Request::builder()
                        .method("POST")
                        .uri("/v1/orgs/acme/data-keys")
                        .header("authorization", format!("Bearer {analyst}"))
                        .body(Full::new(Bytes::from(
                            json!({"workspace": "w1"}).to_string(),
                        )))
                        .unwrap();
                    match client.send(request).await {
                        Ok(response) if response.status() == StatusCode::CREATED => {
                            let body: Value = serde_json::from_slice(response.body()).unwrap();
                            let digest = digest_of(body["plaintext"].as_str().unwrap());
                            acked.push((body["wrapped"].clone(), digest));
                        }
                        Ok(response) => panic!("unexpected answer {}", response.status()),
                        // The power went off mid-request: never acknowledged.
                        Err(_) => break,
                    }
                }
            };
            let killer = async {
                tokio::time::sleep(delay).await;
                kill(Pid::from_raw(vm.record.pid), Signal::SIGKILL).unwrap();
                // Keep the writer going until the connection dies.
                std::future::pending::<()>().await;
            };
            tokio::select! {
                () = writer => {}
                () = killer => {}
            }
            acked
        });
        eprintln!(
            "round {round}: power off after {delay:?}, {} keys acknowledged",
            acked.len()
        );
        acknowledged.extend(acked);
        while vm.record.is_running() {
            std::thread::sleep(Duration::from_millis(50));
        }
        vm = start_kms(&state, &image, &name, manifest_path.to_str().unwrap(), mesh);
        rt.block_on(async {
            let mut client = connect(&node, mesh).await;
            for (wrapped, digest) in &acknowledged {
                let key_id = wrapped["key_id"].as_str().unwrap();
                let (status, body) = call(
                    &mut client,
                    "POST",
                    &format!("/v1/orgs/acme/data-keys/{key_id}/unwrap"),
                    &analyst,
                    json!({"wrapped": wrapped}),
                )
                .await;
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "round {round}: acknowledged key lost: {body}"
                );
                assert_eq!(&digest_of(body["plaintext"].as_str().unwrap()), digest);
            }
        });
    }
    assert!(
        acknowledged.len() >= 5,
        "only {} keys acknowledged",
        acknowledged.len()
    );
    let outcome = vm.stop();
    assert_eq!(outcome.code, 0, "{outcome:?}");
    // The host sees only ciphertext: no data key's bytes on the data disk.
    let disk = std::fs::read(&data_disk).unwrap();
    let raw = base64ct::Base64::decode_vec(&plaintext).unwrap();
    assert!(
        !disk.windows(raw.len()).any(|w| w == raw.as_slice()),
        "a data key in the clear on the data disk"
    );
}

fn digest_of(plaintext_b64: &str) -> String {
    hex::encode(Sha256::digest(plaintext_b64.as_bytes()))
}

async fn create_key(node: &MeshNode, mesh: u16, admin: &str, analyst: &str) -> Value {
    let mut client = connect(node, mesh).await;
    let (status, body) = call(&mut client, "POST", "/v1/orgs/acme/keys", admin, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = call(
        &mut client,
        "POST",
        "/v1/orgs/acme/data-keys",
        analyst,
        json!({"workspace": "w1"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// Unwraps `key` (an answer of `create_key`) at the KMS on `mesh`; returns the plaintext.
async fn unwrap_at(node: &MeshNode, mesh: u16, analyst: &str, key: &Value) -> String {
    let mut client = connect(node, mesh).await;
    let key_id = key["key_id"].as_str().unwrap();
    let (status, body) = call(
        &mut client,
        "POST",
        &format!("/v1/orgs/acme/data-keys/{key_id}/unwrap"),
        analyst,
        json!({"wrapped": key["wrapped"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["plaintext"].as_str().unwrap().to_owned()
}

/// A new data key of the org `acme` (whose key exists) at the KMS on `mesh`.
async fn data_key(node: &MeshNode, mesh: u16, analyst: &str) -> Value {
    let mut client = connect(node, mesh).await;
    let (status, body) = call(
        &mut client,
        "POST",
        "/v1/orgs/acme/data-keys",
        analyst,
        json!({"workspace": "w1"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// The rollback defence of SEV-SNP and sim with real VMs: a replica witnesses the primary's
/// state versions in its memory; the primary's data disk put back to an older copy is refused
/// at start, naming the witness and both versions; the newest copy opens and serves.
#[test]
fn a_kms_whose_disk_is_put_back_to_an_older_copy_is_refused_by_its_witness() {
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("kms");
    build_image(Role::Kms, &image, None);
    let state = Arc::new(tempfile::tempdir().unwrap());
    let (a_mesh, a_attest, b_mesh, b_attest) = (free_port(), free_port(), free_port(), free_port());
    let issuer = Issuer::generate();
    let manifest = deployment(
        state.path(),
        "quorum.json",
        "vm-kms-quorum",
        a_mesh,
        &issuer,
    );
    let manifest_bytes = std::fs::read(&manifest).unwrap();
    let manifest = manifest.to_str().unwrap();
    let node = client_node(state.path(), &manifest_bytes);
    let admin = issuer.identity("admin@acme", "acme", &["admin"]);
    let analyst = issuer.identity("ana@acme", "acme", &["analyst"]);
    let rt = runtime();
    let a_url = format!("https://10.0.2.2:{a_attest}");
    let b_url = format!("https://10.0.2.2:{b_attest}");
    let a_ports = format!("attest={a_attest}");
    let a_args = ["--port", a_ports.as_str(), "--kms-peer", b_url.as_str()];

    let a_name = unique("kms-witnessed");
    let a = start_kms_with(&state, &image, &a_name, manifest, a_mesh, &a_args);
    assert!(
        a.serial().contains("rollback anchor: no witness"),
        "{}",
        a.serial()
    );
    let first = rt.block_on(create_key(&node, a_mesh, &admin, &analyst));

    // The replica joins and names the primary as its witness; the primary learns it from the
    // replica's own advance and lists it in turn.
    let join = format!("10.0.2.2:{a_mesh}");
    let b_ports = format!("attest={b_attest}");
    let b = start_kms_with(
        &state,
        &image,
        &unique("kms-witness"),
        manifest,
        b_mesh,
        &[
            "--kms-join",
            &join,
            "--port",
            &b_ports,
            "--kms-peer",
            &a_url,
        ],
    );
    assert!(
        b.wait_for_log("rollback anchor: witnessed", Duration::from_secs(30)),
        "{}",
        b.serial()
    );
    assert!(
        a.wait_for_log(
            "rollback witnesses: new set listed",
            Duration::from_secs(60)
        ),
        "{}",
        a.serial()
    );
    let second = rt.block_on(data_key(&node, a_mesh, &analyst));

    // The host keeps a copy of the primary's disk, lets it run on and write more, ...
    let disk = coffer_qemu::state::data_disk(state.path(), &a_name);
    let aside = state.path().join("aside.img");
    let newest = state.path().join("newest.img");
    assert_eq!(a.stop().code, 0);
    std::fs::copy(&disk, &aside).unwrap();
    let a = start_kms_with(&state, &image, &a_name, manifest, a_mesh, &a_args);
    let third = rt.block_on(data_key(&node, a_mesh, &analyst));
    assert_eq!(a.stop().code, 0);
    std::fs::copy(&disk, &newest).unwrap();

    // ... then puts the older copy back: the witness saw a newer version, so it is refused.
    std::fs::copy(&aside, &disk).unwrap();
    let outcome = Vm::run_detached(
        state.path(),
        &image,
        &a_name,
        &[
            "--deployment",
            manifest,
            "--port",
            &format!("mesh={a_mesh}"),
            "--port",
            &a_ports,
            "--kms-peer",
            &b_url,
        ],
    );
    let serial_log = coffer_qemu::state::vm_dir(state.path(), &a_name).join("serial.log");
    let serial =
        || String::from_utf8_lossy(&std::fs::read(&serial_log).unwrap_or_default()).into_owned();
    let started = std::time::Instant::now();
    while !serial().contains("refusing to serve") && started.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = serial();
    assert!(
        log.contains("was rolled back: state version")
            && log.contains(&format!("witness {b_url}"))
            && !log.contains("kms state opened and verified"),
        "{outcome:?}\n{log}"
    );
    if let Some(record) = coffer_qemu::state::load(state.path(), &a_name) {
        if record.is_running() {
            let _ = kill(Pid::from_raw(record.pid), Signal::SIGKILL);
        }
    }

    // The newest copy opens, and every key it acknowledged unwraps; the replica still serves
    // the key it received.
    std::thread::sleep(Duration::from_secs(1));
    std::fs::copy(&newest, &disk).unwrap();
    let a = start_kms_with(&state, &image, &a_name, manifest, a_mesh, &a_args);
    for key in [&second, &third] {
        assert_eq!(
            rt.block_on(unwrap_at(&node, a_mesh, &analyst, key)),
            key["plaintext"].as_str().unwrap()
        );
    }
    assert_eq!(
        rt.block_on(unwrap_at(&node, b_mesh, &analyst, &first)),
        first["plaintext"].as_str().unwrap()
    );
    for vm in [&a, &b] {
        assert_eq!(vm.stop().code, 0);
    }
}

#[path = "../../services/hub/tests/common/postgres.rs"]
mod postgres;

/// A replicated deployment's KMS in real VMs: two replicas keep their state in one PostgreSQL
/// database on the host (reached at 10.0.2.2, as an operator's server would be) and witness each
/// other. A key made at one unwraps at the other; an org destroyed at one is refused at the
/// other within a second; a replica restarted opens the shared state; the database holds no
/// key in the clear.
#[test]
fn two_replicas_share_one_store_in_postgresql() {
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("kms");
    build_image(Role::Kms, &image, None);
    let pg = postgres::Postgres::start();
    let rt = runtime();
    let url = rt.block_on(pg.create_database("kms"));
    let guest_url = url.replace("127.0.0.1", "10.0.2.2");
    let tables: i64 = rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'coffer_kms_records'")
            .fetch_one(&mut c)
            .await
            .unwrap()
    });
    assert_eq!(tables, 0, "a fresh database");
    let state = Arc::new(tempfile::tempdir().unwrap());
    let (a_mesh, a_attest, b_mesh, b_attest) = (free_port(), free_port(), free_port(), free_port());
    let issuer = Issuer::generate();
    let manifest = deployment_with(
        state.path(),
        "shared.json",
        "vm-kms-shared",
        a_mesh,
        &issuer,
        &["--kms-shared-store"],
    );
    let manifest_bytes = std::fs::read(&manifest).unwrap();
    let manifest = manifest.to_str().unwrap();
    let node = client_node(state.path(), &manifest_bytes);
    let admin = issuer.identity("admin@acme", "acme", &["admin"]);
    let analyst = issuer.identity("ana@acme", "acme", &["analyst"]);
    let a_url = format!("https://10.0.2.2:{a_attest}");
    let b_url = format!("https://10.0.2.2:{b_attest}");
    let (a_ports, b_ports) = (format!("attest={a_attest}"), format!("attest={b_attest}"));
    let a_args = [
        "--port",
        a_ports.as_str(),
        "--kms-peer",
        b_url.as_str(),
        "--kms-store",
        guest_url.as_str(),
    ];
    let a_name = unique("kms-shared-a");
    let a = start_kms_with(&state, &image, &a_name, manifest, a_mesh, &a_args);
    assert!(
        a.serial().contains("the replicas' shared store"),
        "{}",
        a.serial()
    );
    let first = rt.block_on(create_key(&node, a_mesh, &admin, &analyst));

    let join = format!("10.0.2.2:{a_mesh}");
    let b = start_kms_with(
        &state,
        &image,
        &unique("kms-shared-b"),
        manifest,
        b_mesh,
        &[
            "--kms-join",
            &join,
            "--port",
            &b_ports,
            "--kms-peer",
            &a_url,
            "--kms-store",
            &guest_url,
        ],
    );
    // A key made at A unwraps at B, and one made at B at A.
    assert_eq!(
        rt.block_on(unwrap_at(&node, b_mesh, &analyst, &first)),
        first["plaintext"].as_str().unwrap()
    );
    let second = rt.block_on(data_key(&node, b_mesh, &analyst));
    assert_eq!(
        rt.block_on(unwrap_at(&node, a_mesh, &analyst, &second)),
        second["plaintext"].as_str().unwrap()
    );
    // A restarted replica opens the shared state, witnessed by the other: the replicas list
    // each other (and themselves) as witnesses, and B lists a new set once A is gone.
    assert_eq!(a.stop().code, 0);
    assert!(
        b.wait_for_log(
            "rollback witnesses: new set listed",
            Duration::from_secs(60)
        ),
        "{}",
        b.serial()
    );
    let a_mesh_port = format!("mesh={a_mesh}");
    let mut a_restart = vec!["--deployment", manifest, "--port", a_mesh_port.as_str()];
    a_restart.extend_from_slice(&a_args);
    let a = Vm::start_in(state.clone(), &image, &a_name, &a_restart);
    assert!(
        a.wait_for_log("kms state opened and verified", Duration::from_secs(90)),
        "A restarted:\n{}\n\nB:\n{}",
        a.serial(),
        b.serial()
    );
    assert_eq!(
        rt.block_on(unwrap_at(&node, a_mesh, &analyst, &second)),
        second["plaintext"].as_str().unwrap()
    );

    // The database holds every key sealed: no data key in the clear.
    let sealed: Vec<Vec<u8>> = rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT sealed FROM coffer_kms_records")
            .fetch_all(&mut c)
            .await
            .unwrap()
    });
    assert!(sealed.len() >= 4, "{} records", sealed.len());
    for key in [&first, &second] {
        let plain = base64ct::Base64::decode_vec(key["plaintext"].as_str().unwrap()).unwrap();
        assert!(
            !sealed
                .iter()
                .any(|r| r.windows(plain.len()).any(|w| w == plain)),
            "a data key in the clear in the shared store"
        );
    }

    // Destroyed at B: refused at A within its sync interval (and at once on a miss).
    rt.block_on(async {
        let mut client = connect(&node, b_mesh).await;
        let (status, body) = call(
            &mut client,
            "DELETE",
            "/v1/orgs/acme/keys",
            &admin,
            json!({}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    });
    std::thread::sleep(Duration::from_millis(1500));
    rt.block_on(async {
        let mut client = connect(&node, a_mesh).await;
        let key_id = first["key_id"].as_str().unwrap();
        let (status, body) = call(
            &mut client,
            "POST",
            &format!("/v1/orgs/acme/data-keys/{key_id}/unwrap"),
            &analyst,
            json!({"wrapped": first["wrapped"]}),
        )
        .await;
        assert_eq!(status, StatusCode::GONE, "{body}");
    });
    for vm in [&a, &b] {
        assert_eq!(vm.stop().code, 0);
    }
}

/// Replica join, a refused join by an image that is not pinned, and an image upgrade, each with
/// real VMs: the new KMS attests to the running one over the mesh and receives its root key and
/// state; a key made before unwraps after.
#[test]
fn a_replica_and_an_upgraded_image_join_the_kms_and_an_unpinned_image_cannot() {
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("kms");
    build_image(Role::Kms, &image, None);
    // The "next version": the same image with another kernel command line, so another
    // launch measurement (not in the committed pins).
    let spec = images.path().join("kms-next.toml");
    let text = std::fs::read_to_string(checkout().join("image/specs/kms.toml")).unwrap();
    assert!(text.contains("loglevel=4"));
    std::fs::write(&spec, text.replace("loglevel=4", "loglevel=5")).unwrap();
    let next = images.path().join("kms-next");
    build_image(Role::Kms, &next, Some(&spec));
    let next_set: coffer_types::MeasurementSet =
        serde_json::from_slice(&std::fs::read(next.join("measurements.json")).unwrap()).unwrap();

    let state = Arc::new(tempfile::tempdir().unwrap());
    let (mesh, replica_mesh, next_mesh) = (free_port(), free_port(), free_port());
    let issuer = Issuer::generate();
    let v1 = deployment(state.path(), "v1.json", "vm-kms-join", mesh, &issuer);
    let v1_bytes = std::fs::read(&v1).unwrap();
    let node_v1 = client_node(state.path(), &v1_bytes);
    let admin = issuer.identity("admin@acme", "acme", &["admin"]);
    let analyst = issuer.identity("ana@acme", "acme", &["analyst"]);
    let rt = runtime();
    let join = format!("10.0.2.2:{mesh}");

    let primary_name = unique("kms-primary");
    let primary = start_kms(&state, &image, &primary_name, v1.to_str().unwrap(), mesh);
    let key = rt.block_on(create_key(&node_v1, mesh, &admin, &analyst));

    // A replica of the same image joins, and unwraps the key the primary made.
    let replica = start_kms_with(
        &state,
        &image,
        &unique("kms-replica"),
        v1.to_str().unwrap(),
        replica_mesh,
        &["--kms-join", &join],
    );
    assert!(
        replica.serial().contains("joined the KMS"),
        "{}",
        replica.serial()
    );
    assert_eq!(
        rt.block_on(unwrap_at(&node_v1, replica_mesh, &analyst, &key)),
        key["plaintext"].as_str().unwrap()
    );
    assert!(
        primary.wait_for_log(
            "\"operation\":\"replica_snapshot\",\"org\":\"*\"",
            Duration::from_secs(10)
        ),
        "the hand-over is audited:\n{}",
        primary.serial()
    );

    // The next image is not pinned yet: its join is refused, and it never serves.
    let stranger = Vm::start_in(
        state.clone(),
        &next,
        &unique("kms-unpinned"),
        &["--deployment", v1.to_str().unwrap(), "--kms-join", &join],
    );
    assert!(
        stranger.wait_for_log("join: cannot attest to the KMS", Duration::from_secs(90)),
        "{}",
        stranger.serial()
    );
    assert!(
        primary.wait_for_log("measurement_not_pinned", Duration::from_secs(10)),
        "{}",
        primary.serial()
    );
    assert!(!stranger.serial().contains("joined the KMS"));
    drop(stranger);
    drop(replica);

    // The upgrade: the new image's measurements are added to the manifest's kms pins, the
    // running KMS restarts on the new manifest (same disk, same image: its state opens), and
    // the new image joins it.
    let mut deployment = Deployment::from_json(&v1_bytes).unwrap();
    let pins = &mut deployment.roles.get_mut(&Role::Kms).unwrap().measurements;
    pins.extend(next_set.snp.iter().map(|d| d.launch_digest.clone()));
    pins.sort();
    pins.dedup();
    let v2 = state.path().join("v2.json");
    std::fs::write(&v2, serde_json::to_vec_pretty(&deployment).unwrap()).unwrap();
    let v2_bytes = std::fs::read(&v2).unwrap();
    assert_eq!(primary.stop().code, 0);
    let primary = start_kms(&state, &image, &primary_name, v2.to_str().unwrap(), mesh);
    let upgraded = start_kms_with(
        &state,
        &next,
        &unique("kms-next"),
        v2.to_str().unwrap(),
        next_mesh,
        &["--kms-join", &join],
    );
    assert!(
        upgraded.serial().contains("joined the KMS"),
        "{}",
        upgraded.serial()
    );
    let node_v2 = client_node(state.path(), &v2_bytes);
    assert_eq!(
        rt.block_on(unwrap_at(&node_v2, next_mesh, &analyst, &key)),
        key["plaintext"].as_str().unwrap()
    );
    for vm in [&upgraded, &primary] {
        assert_eq!(vm.stop().code, 0);
    }
}

/// k-of-n recovery with real VMs: a KMS whose deployment names three recovery officers (any two
/// restore) splits its root key and publishes the kit; it is then lost with its disk; a fresh
/// KMS under a manifest naming that split waits for shares; two officers check its attestation
/// and hand theirs over with `coffer recovery submit`; the restored KMS unwraps a key the lost
/// one made.
#[test]
fn two_of_three_officers_restore_a_lost_kms_into_a_fresh_attested_one() {
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("kms");
    build_image(Role::Kms, &image, None);
    let state = Arc::new(tempfile::tempdir().unwrap());
    let dir = state.path();
    let (mesh, attest) = (free_port(), free_port());
    let issuer = Issuer::generate();
    let mut officers = Vec::new();
    for i in 0..3 {
        let identity = dir.join(format!("officer-{i}.key"));
        let outcome = run(&["recovery", "keygen", "--out", identity.to_str().unwrap()]);
        assert_eq!(outcome.code, 0, "{outcome:?}");
        officers.push((identity, outcome.stdout.trim().to_owned()));
    }
    let authz = dir.join("authz.json");
    std::fs::write(&authz, issuer.authz().to_string()).unwrap();
    let v1 = dir.join("v1.json");
    let mut init = vec![
        "--state-dir".to_owned(),
        dir.display().to_string(),
        "deployment".into(),
        "init".into(),
        "--out".into(),
        v1.display().to_string(),
        "--id".into(),
        "vm-kms-recovery".into(),
        "--pins".into(),
        checkout().join("measurements/pins").display().to_string(),
        "--endpoint".into(),
        format!("kms=10.0.2.2:{mesh}"),
        "--kms-authz".into(),
        authz.display().to_string(),
        "--recovery-threshold".into(),
        "2".into(),
    ];
    for (_, recipient) in &officers {
        init.extend(["--recovery-officer".to_owned(), recipient.clone()]);
    }
    let init: Vec<&str> = init.iter().map(String::as_str).collect();
    let outcome = run(&init);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let v1_bytes = std::fs::read(&v1).unwrap();
    let admin = issuer.identity("admin@acme", "acme", &["admin"]);
    let analyst = issuer.identity("ana@acme", "acme", &["analyst"]);
    let rt = runtime();
    let url = format!("https://127.0.0.1:{attest}");
    let endpoint_args = |manifest: &Path| -> Vec<String> {
        vec![
            "--kms".into(),
            url.clone(),
            "--deployment".into(),
            manifest.display().to_string(),
            "--allow-simulation".into(),
        ]
    };

    // The KMS that will be lost: it splits its root key at first start.
    let lost = start_kms_with(
        &state,
        &image,
        &unique("kms-lost"),
        v1.to_str().unwrap(),
        mesh,
        &["--port", &format!("attest={attest}")],
    );
    // The split comes right after the state opened: wait for it.
    assert!(
        lost.wait_for_log("recovery kit ready", Duration::from_secs(30)),
        "{}",
        lost.serial()
    );
    // The KMS states its audit signer on the endpoint, bound into the evidence.
    let audit_signer = |manifest: &Path| -> String {
        let outcome = run(&[
            "verify",
            "endpoint",
            &url,
            "--deployment",
            manifest.to_str().unwrap(),
            "--role",
            "kms",
            "--allow-simulation",
        ]);
        assert_eq!(outcome.code, 0, "{outcome:?}");
        outcome
            .stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("claim audit_signer = "))
            .map(|v| v.split_whitespace().next().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no audit_signer claim: {outcome:?}"))
    };
    let lost_signer = audit_signer(&v1);
    assert!(
        lost_signer.starts_with("coffer/vm-kms-recovery/audit/kms+"),
        "{lost_signer}"
    );
    let key = rt.block_on(create_key(
        &client_node(dir, &v1_bytes),
        mesh,
        &admin,
        &analyst,
    ));
    let kit = dir.join("kit.json");
    let mut args = vec!["recovery".to_owned(), "kit".into()];
    args.extend(endpoint_args(&v1));
    args.extend(["--out".into(), kit.display().to_string()]);
    let outcome = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let kit_json: Value = serde_json::from_slice(&std::fs::read(&kit).unwrap()).unwrap();
    let backup = dir.join("backup.bin");
    let mut args = vec!["recovery".to_owned(), "backup".into()];
    args.extend(endpoint_args(&v1));
    args.extend(["--out".into(), backup.display().to_string()]);
    let outcome = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(outcome.code, 0, "{outcome:?}");
    // Neither holds key material in the clear.
    let plaintext = key["plaintext"].as_str().unwrap();
    let raw = base64ct::Base64::decode_vec(plaintext).unwrap();
    for file in [&kit, &backup] {
        let bytes = std::fs::read(file).unwrap();
        assert!(!bytes.windows(raw.len()).any(|w| w == raw.as_slice()));
        assert!(!String::from_utf8_lossy(&bytes).contains(plaintext));
    }
    // Power off (its disk is gone with its name); its ports are free once QEMU is gone.
    kill(Pid::from_raw(lost.record.pid), Signal::SIGKILL).unwrap();
    while lost.record.is_running() {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(lost);

    // The restoring deployment: the same, plus the split to restore (from the kit; every
    // officer sees the same split and commitment in their own share).
    let mut deployment = Deployment::from_json(&v1_bytes).unwrap();
    deployment
        .kms
        .as_mut()
        .unwrap()
        .recovery
        .as_mut()
        .unwrap()
        .restore = Some(coffer_types::RestoreFrom {
        split_id: kit_json["info"]["split_id"].as_str().unwrap().to_owned(),
        commitment: kit_json["info"]["commitment"].as_str().unwrap().to_owned(),
    });
    let v2 = dir.join("v2.json");
    std::fs::write(&v2, serde_json::to_vec_pretty(&deployment).unwrap()).unwrap();
    let fresh = Vm::start_in(
        state.clone(),
        &image,
        &unique("kms-fresh"),
        &[
            "--deployment",
            v2.to_str().unwrap(),
            "--port",
            &format!("mesh={mesh}"),
            "--port",
            &format!("attest={attest}"),
        ],
    );
    assert!(
        fresh.wait_for_log(
            "RESTORING: waiting for the recovery officers' shares",
            Duration::from_secs(60)
        ),
        "{}",
        fresh.serial()
    );
    let submit = |officer: usize, backup_file: Option<&Path>| {
        let mut args = vec!["recovery".to_owned(), "submit".into()];
        args.extend(endpoint_args(&v2));
        args.extend([
            "--kit".into(),
            kit.display().to_string(),
            "--identity".into(),
            officers[officer].0.display().to_string(),
        ]);
        if let Some(file) = backup_file {
            args.extend(["--backup".into(), file.display().to_string()]);
        }
        run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // Under the first manifest the fresh KMS is of another deployment: refused.
    let mut args = vec!["recovery".to_owned(), "submit".into()];
    args.extend(endpoint_args(&v1));
    args.extend([
        "--kit".into(),
        kit.display().to_string(),
        "--identity".into(),
        officers[1].0.display().to_string(),
    ]);
    let refused = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("does not verify"), "{refused:?}");

    let outcome = submit(0, Some(&backup));
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert!(outcome.stdout.contains("\"complete\":false"), "{outcome:?}");
    // The same share twice is refused.
    let again = submit(0, None);
    assert_ne!(again.code, 0, "{again:?}");
    assert!(again.stderr.contains("400"), "{again:?}");
    let outcome = submit(2, None);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert!(outcome.stdout.contains("\"complete\":true"), "{outcome:?}");
    assert!(
        fresh.wait_for_log("kms state opened and verified", Duration::from_secs(60)),
        "{}",
        fresh.serial()
    );
    assert!(
        fresh
            .serial()
            .contains("root key restored from the recovery officers' shares"),
        "{}",
        fresh.serial()
    );
    // The same root key: the same audit signer, stated by the restored KMS's evidence (stated
    // before it makes its own new kit).
    assert!(
        fresh.wait_for_log("recovery kit ready", Duration::from_secs(30)),
        "{}",
        fresh.serial()
    );
    assert_eq!(audit_signer(&v2), lost_signer);
    // The key the lost KMS made unwraps at the restored one.
    let node_v2 = client_node(dir, &std::fs::read(&v2).unwrap());
    assert_eq!(
        rt.block_on(unwrap_at(&node_v2, mesh, &analyst, &key)),
        plaintext
    );
    assert_eq!(fresh.stop().code, 0);
}
