//! The attested mesh on loopback, with the simulated secure processor in-process: two nodes
//! attest each other, and every way of getting in that must fail fails with its own error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use coffer_mesh::binding::{session_report_data, Side};
use coffer_mesh::endpoint::{check_endpoint, serve_endpoint};
use coffer_mesh::handshake::{read_frame, session_keys, write_frame, Hello, VerdictFrame};
use coffer_mesh::http::{MeshClient, SessionEvent};
use coffer_mesh::tls::{self, TlsIdentity};
use coffer_mesh::{MeshError, MeshNode, Simulation, Trust};
use coffer_sim::{sim_deployment, ReportFields, SimGuest, SimService};
use coffer_types::{deployment_digest, Deployment, DeploymentTrustRoot, Platform, Role};
use common::{get, next_event, refused_by_server, root, start_server};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const KMS: [u8; 48] = [0x11; 48];
const CLIENT: [u8; 48] = [0x22; 48];
const OTHER_IMAGE: [u8; 48] = [0x33; 48];

/// The test deployment (kms and client pinned), edited by `edit`, as bytes.
fn manifest(edit: impl FnOnce(&mut Deployment)) -> Vec<u8> {
    let pins = BTreeMap::from([
        (Role::Kms, vec![hex::encode(KMS)]),
        (Role::Client, vec![hex::encode(CLIENT)]),
    ]);
    let mut deployment = sim_deployment(root(), "mesh-test", pins).unwrap();
    edit(&mut deployment);
    serde_json::to_vec_pretty(&deployment).unwrap()
}

/// The simulated secure processor of a guest launched with `measurement` and `policy` into the
/// deployment `manifest` (HOST_DATA = its digest).
fn sim_platform(measurement: [u8; 48], policy: u64, manifest: &[u8]) -> SimService {
    SimService::new(
        root().clone(),
        SimGuest {
            measurement,
            host_data: deployment_digest(manifest),
            policy,
        },
    )
}

/// A node of `role` launched with `measurement` and `policy` into the deployment `manifest`
/// (HOST_DATA = its digest), trusting `trusts`.
fn node_with(
    role: Role,
    measurement: [u8; 48],
    policy: u64,
    launched_into: &[u8],
    trusts: &[u8],
) -> Arc<MeshNode> {
    let provider = sim_platform(measurement, policy, launched_into);
    let trust = Trust::from_manifest(trusts, Simulation::DangerousAccept).unwrap();
    Arc::new(MeshNode::new(role, Arc::new(provider), Arc::new(trust)).unwrap())
}

fn node(role: Role, measurement: [u8; 48], manifest: &[u8]) -> Arc<MeshNode> {
    node_with(
        role,
        measurement,
        ReportFields::DEFAULT_POLICY,
        manifest,
        manifest,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_attest_each_other_and_exchange_a_request() {
    let manifest = manifest(|_| {});
    let (addr, mut events) = start_server(node(Role::Kms, KMS, &manifest)).await;
    let client = node(Role::Client, CLIENT, &manifest);
    let mut connection = MeshClient::connect(&client, &addr, Role::Kms)
        .await
        .unwrap();
    assert_eq!(connection.peer().role, Role::Kms);
    assert_eq!(connection.peer().measurement, KMS);
    assert_eq!(connection.peer().deployment_id, "mesh-test");
    let response = connection.send(get()).await.unwrap();
    assert_eq!(response.body().as_ref(), b"hello client");
    match next_event(&mut events).await {
        SessionEvent::Accepted(peer) => {
            assert_eq!(peer.role, Role::Client);
            assert_eq!(peer.measurement, CLIENT);
        }
        other => panic!("expected the client to be accepted, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_built_from_a_different_image_is_refused() {
    let manifest = manifest(|_| {});
    let (addr, mut events) = start_server(node(Role::Kms, KMS, &manifest)).await;
    let client = node(Role::Client, OTHER_IMAGE, &manifest);
    let e = MeshClient::connect(&client, &addr, Role::Kms)
        .await
        .unwrap_err();
    assert_eq!(e.name(), "refused_by_peer", "{e}");
    assert!(e.to_string().contains("measurement not pinned"), "{e}");
    match refused_by_server(&mut events).await {
        MeshError::MeasurementNotPinned { role, got, pinned } => {
            assert_eq!(role, Role::Client);
            assert_eq!(got, hex::encode(OTHER_IMAGE));
            assert_eq!(pinned, hex::encode(CLIENT));
        }
        other => panic!("expected measurement_not_pinned, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_deployment_is_refused_by_host_data() {
    let ours = manifest(|_| {});
    // Same id and pins, another manifest (another admin): another digest in HOST_DATA.
    let theirs = manifest(|d| d.bootstrap.admin = "mallory@example".into());
    let (addr, mut events) = start_server(node(Role::Kms, KMS, &ours)).await;
    let client = node_with(
        Role::Client,
        CLIENT,
        ReportFields::DEFAULT_POLICY,
        &theirs,
        &theirs,
    );
    MeshClient::connect(&client, &addr, Role::Kms)
        .await
        .unwrap_err();
    match refused_by_server(&mut events).await {
        MeshError::WrongDeployment { expected, got } => {
            assert_eq!(expected, hex::encode(deployment_digest(&ours)));
            assert_eq!(got, hex::encode(deployment_digest(&theirs)));
        }
        other => panic!("expected wrong_deployment, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debug_guest_is_refused() {
    let manifest = manifest(|_| {});
    let (addr, mut events) = start_server(node(Role::Kms, KMS, &manifest)).await;
    let policy = ReportFields::DEFAULT_POLICY | ReportFields::POLICY_DEBUG;
    let client = node_with(Role::Client, CLIENT, policy, &manifest, &manifest);
    MeshClient::connect(&client, &addr, Role::Kms)
        .await
        .unwrap_err();
    let e = refused_by_server(&mut events).await;
    assert_eq!(e.name(), "debug_guest", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_evidence_is_refused_by_an_amd_only_deployment() {
    let amd = manifest(|d| {
        d.platform = Platform::QemuSnp;
        d.trust_root = DeploymentTrustRoot::Amd;
        d.simulation_root = None;
    });
    // The server trusts AMD only (and has no simulation root at all).
    let kms = {
        let provider = sim_platform(KMS, ReportFields::DEFAULT_POLICY, &amd);
        let trust = Trust::from_manifest(&amd, Simulation::Refuse).unwrap();
        Arc::new(MeshNode::new(Role::Kms, Arc::new(provider), Arc::new(trust)).unwrap())
    };
    let (addr, mut events) = start_server(kms).await;
    let client = node_with(
        Role::Client,
        CLIENT,
        ReportFields::DEFAULT_POLICY,
        &amd,
        &manifest(|_| {}),
    );
    MeshClient::connect(&client, &addr, Role::Kms)
        .await
        .unwrap_err();
    match refused_by_server(&mut events).await {
        MeshError::UntrustedRoot { expected, got } => {
            assert!(expected.contains("amd"), "{expected}");
            assert!(got.contains("simulation") || got.contains("Sim"), "{got}");
        }
        other => panic!("expected untrusted_root, got {other}"),
    }
}

#[test]
fn a_simulation_deployment_needs_an_explicit_opt_in() {
    let e = Trust::from_manifest(&manifest(|_| {}), Simulation::Refuse).unwrap_err();
    assert_eq!(e, MeshError::SimulationNotAllowed);
}

/// Drives the client side of the protocol by hand with chosen evidence, on a fresh TLS
/// connection with `identity`. Returns the server's verdict.
async fn handshake_by_hand(
    addr: &str,
    identity: &TlsIdentity,
    evidence_for: impl FnOnce([u8; 32]) -> coffer_evidence::Evidence,
) -> VerdictFrame {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut stream = TlsConnector::from(tls::client_config(Some(identity)).unwrap())
        .connect(tls::server_name(), tcp)
        .await
        .unwrap();
    let (exporter, _) = session_keys(stream.get_ref().1).unwrap();
    let hello = Hello {
        version: 1,
        role: Role::Client,
        deployment_id: "mesh-test".into(),
        evidence: evidence_for(exporter),
    };
    write_frame(&mut stream, &hello).await.unwrap();
    let _server_hello: Hello = read_frame(&mut stream).await.unwrap();
    write_frame(
        &mut stream,
        &VerdictFrame {
            accepted: true,
            reason: String::new(),
        },
    )
    .await
    .unwrap();
    read_frame(&mut stream).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_replayed_from_another_session_is_refused() {
    let manifest = manifest(|_| {});
    let (addr, mut events) = start_server(node(Role::Kms, KMS, &manifest)).await;
    let genuine = node(Role::Client, CLIENT, &manifest);
    let identity = TlsIdentity::generate().unwrap();
    // Session 1: genuine evidence, bound to session 1. Recorded.
    let mut recorded = None;
    let verdict = handshake_by_hand(&addr, &identity, |exporter| {
        let rd = session_report_data(Side::Client, Role::Client, &exporter, identity.cert_der());
        let evidence =
            coffer_evidence::EvidenceProvider::attest(genuine.provider().as_ref(), &rd).unwrap();
        recorded = Some(evidence.clone());
        evidence
    })
    .await;
    assert!(verdict.accepted, "session 1 is genuine: {}", verdict.reason);
    assert!(matches!(
        next_event(&mut events).await,
        SessionEvent::Accepted(_)
    ));
    // Session 2: the same evidence, same TLS key, replayed.
    let verdict = handshake_by_hand(&addr, &identity, |_| recorded.take().unwrap()).await;
    assert!(!verdict.accepted);
    let e = refused_by_server(&mut events).await;
    assert_eq!(e.name(), "session_binding_mismatch", "{e}");
    assert!(
        verdict.reason.contains("session binding mismatch"),
        "{}",
        verdict.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_relayed_from_a_different_tls_session_is_refused() {
    let manifest = manifest(|_| {});
    let (victim, mut events) = start_server(node(Role::Kms, KMS, &manifest)).await;

    // The attacker poses as a kms server to a genuine client, takes the genuine client's
    // evidence from that TLS session and relays it into its own session with the victim.
    let attacker = TlsIdentity::generate().unwrap();
    let trap = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_addr = trap.local_addr().unwrap().to_string();
    let acceptor = TlsAcceptor::from(tls::server_config(&attacker).unwrap());
    let (relayed_tx, relayed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = trap.accept().await.unwrap();
        let mut stream = acceptor.accept(tcp).await.unwrap();
        let hello: Hello = read_frame(&mut stream).await.unwrap();
        relayed_tx.send(hello.evidence).unwrap();
    });
    let genuine = node(Role::Client, CLIENT, &manifest);
    let fooled =
        tokio::spawn(async move { MeshClient::connect(&genuine, &trap_addr, Role::Kms).await });
    let relayed = relayed_rx.await.unwrap();
    let verdict = handshake_by_hand(&victim, &attacker, |_| relayed).await;
    assert!(!verdict.accepted);
    let e = refused_by_server(&mut events).await;
    assert_eq!(e.name(), "session_binding_mismatch", "{e}");
    // And the genuine client never accepted the attacker either.
    assert!(fooled.await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_revoked_on_the_server_tears_the_open_session_down() {
    let manifest = manifest(|_| {});
    let kms = node(Role::Kms, KMS, &manifest);
    let (addr, mut events) = start_server(kms.clone()).await;
    let client = node(Role::Client, CLIENT, &manifest);
    let mut connection = MeshClient::connect(&client, &addr, Role::Kms)
        .await
        .unwrap();
    connection.send(get()).await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        SessionEvent::Accepted(_)
    ));

    kms.trust().revoke(Role::Client, &CLIENT);
    match next_event(&mut events).await {
        SessionEvent::Ended { peer, reason } => {
            assert_eq!(peer.measurement, CLIENT);
            assert_eq!(reason.name(), "pin_revoked", "{reason}");
        }
        other => panic!("expected the session to end, got {other:?}"),
    }
    // The connection is gone: the next request fails.
    assert!(connection.send(get()).await.is_err());
    // And a new one is refused.
    let e = MeshClient::connect(&client, &addr, Role::Kms)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("measurement not pinned"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_revoked_on_the_client_fails_the_next_request_by_name() {
    let manifest = manifest(|_| {});
    let (addr, _events) = start_server(node(Role::Kms, KMS, &manifest)).await;
    let client = node(Role::Client, CLIENT, &manifest);
    let mut connection = MeshClient::connect(&client, &addr, Role::Kms)
        .await
        .unwrap();
    connection.send(get()).await.unwrap();
    client.trust().revoke(Role::Kms, &KMS);
    let e = connection.send(get()).await.unwrap_err();
    assert_eq!(
        e,
        MeshError::PinRevoked {
            role: Role::Kms,
            measurement: hex::encode(KMS)
        }
    );
}

/// A node whose sessions live at most one second.
fn short_lived(role: Role, measurement: [u8; 48], manifest: &[u8]) -> Arc<MeshNode> {
    let provider = sim_platform(measurement, ReportFields::DEFAULT_POLICY, manifest);
    let trust = Trust::from_manifest(manifest, Simulation::DangerousAccept)
        .unwrap()
        .with_max_session_age(Duration::from_secs(1));
    Arc::new(MeshNode::new(role, Arc::new(provider), Arc::new(trust)).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_ends_a_session_at_its_age_bound() {
    let manifest = manifest(|_| {});
    let (addr, mut events) = start_server(short_lived(Role::Kms, KMS, &manifest)).await;
    let client = node(Role::Client, CLIENT, &manifest);
    let mut connection = MeshClient::connect(&client, &addr, Role::Kms)
        .await
        .unwrap();
    connection.send(get()).await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        SessionEvent::Accepted(_)
    ));
    match next_event(&mut events).await {
        SessionEvent::Ended { reason, .. } => assert_eq!(reason, MeshError::Expired(1)),
        other => panic!("expected expiry, got {other:?}"),
    }
    // The server dropped the connection: the client's next request fails.
    assert!(connection.send(get()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_to_use_a_session_past_its_age_bound() {
    let manifest = manifest(|_| {});
    let (addr, _events) = start_server(node(Role::Kms, KMS, &manifest)).await;
    let client = short_lived(Role::Client, CLIENT, &manifest);
    let mut connection = MeshClient::connect(&client, &addr, Role::Kms)
        .await
        .unwrap();
    connection.send(get()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        connection.send(get()).await.unwrap_err(),
        MeshError::Expired(1)
    );
}

#[test]
fn a_node_may_shorten_the_session_bound_but_never_lengthen_it() {
    let manifest = manifest(|d| d.session_max_age_secs = 60);
    let trust = || Trust::from_manifest(&manifest, Simulation::DangerousAccept).unwrap();
    assert_eq!(trust().max_session_age(), Duration::from_secs(60));
    let shorter = trust().with_max_session_age(Duration::from_secs(5));
    assert_eq!(shorter.max_session_age(), Duration::from_secs(5));
    let longer = trust().with_max_session_age(Duration::from_secs(600));
    assert_eq!(longer.max_session_age(), Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attestation_endpoint_proves_the_server_to_a_caller_with_a_nonce() {
    let manifest = manifest(|_| {});
    let kms = node(Role::Kms, KMS, &manifest);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(serve_endpoint(kms.clone(), listener));

    let trust = Trust::from_manifest(&manifest, Simulation::DangerousAccept).unwrap();
    let check = check_endpoint(&url, &trust, Some(Role::Kms)).await.unwrap();
    assert_eq!(check.peer.measurement, KMS);
    assert_eq!(
        check.tls_spki_sha256,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            kms.identity().spki_der()
        ))
    );
    let e = check_endpoint(&url, &trust, Some(Role::Executor))
        .await
        .unwrap_err();
    assert_eq!(e.name(), "unexpected_role");
    // A caller of another deployment does not accept it.
    let other = Trust::from_manifest(
        &manifest_with_id("other-deployment"),
        Simulation::DangerousAccept,
    )
    .unwrap();
    let e = check_endpoint(&url, &other, Some(Role::Kms))
        .await
        .unwrap_err();
    assert_eq!(e.name(), "wrong_deployment_id", "{e}");
    // Without the simulation opt-in there is no trust to check with at all.
    assert_eq!(
        Trust::from_manifest(&manifest, Simulation::Refuse).unwrap_err(),
        MeshError::SimulationNotAllowed
    );
}

fn manifest_with_id(id: &str) -> Vec<u8> {
    manifest(|d| d.deployment_id = id.into())
}

/// A provider that takes its time, as a busy secure processor would.
struct Slow(SimService, Duration);

impl coffer_evidence::EvidenceProvider for Slow {
    fn platform(&self) -> coffer_types::Platform {
        self.0.platform()
    }
    fn attest(
        &self,
        report_data: &[u8; 64],
    ) -> Result<coffer_evidence::Evidence, coffer_evidence::EvidenceError> {
        std::thread::sleep(self.1);
        self.0.attest(report_data)
    }
    fn sealing_key(
        &self,
        context: &[u8],
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, coffer_evidence::EvidenceError> {
        self.0.sealing_key(context)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_handshakes_is_cut_off_at_the_attestation_limit() {
    let manifest = manifest(|_| {});
    let provider = sim_platform(KMS, ReportFields::DEFAULT_POLICY, &manifest);
    let trust = Trust::from_manifest(&manifest, Simulation::DangerousAccept).unwrap();
    let kms = MeshNode::new(
        Role::Kms,
        Arc::new(Slow(provider, Duration::from_millis(1500))),
        Arc::new(trust),
    )
    .unwrap()
    .with_attestation_limit(1);
    let (addr, mut events) = start_server(Arc::new(kms)).await;
    let client = node(Role::Client, CLIENT, &manifest);
    // The first handshake holds the only attestation slot for 1.5 s...
    let first = {
        let (client, addr) = (client.clone(), addr.clone());
        tokio::spawn(async move { MeshClient::connect(&client, &addr, Role::Kms).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...so a second one meanwhile is refused at once, not queued.
    let started = std::time::Instant::now();
    assert!(MeshClient::connect(&client, &addr, Role::Kms)
        .await
        .is_err());
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert_eq!(refused_by_server(&mut events).await, MeshError::Busy(1));
    // The first completes.
    assert!(first.await.unwrap().is_ok());
    assert!(matches!(
        next_event(&mut events).await,
        SessionEvent::Accepted(_)
    ));
}
