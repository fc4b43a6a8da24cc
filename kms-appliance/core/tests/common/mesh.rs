//! In-process attested mesh nodes (simulated secure processor) for a test deployment with kms,
//! client and executor pinned, and a KMS serving [`KmsApi`] over it.

use std::collections::BTreeMap;
use std::sync::Arc;

use coffer_kms::rollback::Unanchored;
use coffer_kms::{AuditSink, Authorizer, Kms, KmsApi};
use coffer_mesh::http::{serve, MeshClient};
use coffer_mesh::{MeshNode, Simulation, Trust};
use coffer_sim::{sim_deployment, ReportFields, SimGuest, SimService};
use coffer_types::{deployment_digest, Role};
use tokio::net::TcpListener;

use super::{sim_root, KMS_MEASUREMENT};

/// The client image's measurement.
pub const CLIENT_MEASUREMENT: [u8; 48] = [0xc1; 48];
/// The executor image's measurement.
pub const EXECUTOR_MEASUREMENT: [u8; 48] = [0xe1; 48];

/// A sim deployment with the kms, client and executor images pinned, as bytes.
pub fn deployment(id: &str) -> Vec<u8> {
    let pins = BTreeMap::from([
        (Role::Kms, vec![hex::encode(KMS_MEASUREMENT)]),
        (Role::Client, vec![hex::encode(CLIENT_MEASUREMENT)]),
        (Role::Executor, vec![hex::encode(EXECUTOR_MEASUREMENT)]),
    ]);
    serde_json::to_vec_pretty(&sim_deployment(&sim_root(), id, pins).unwrap()).unwrap()
}

/// The simulated secure processor of a guest of `measurement` launched into `manifest`.
pub fn platform_in(manifest: &[u8], measurement: [u8; 48]) -> Arc<SimService> {
    Arc::new(SimService::new(
        sim_root(),
        SimGuest {
            measurement,
            host_data: deployment_digest(manifest),
            policy: ReportFields::DEFAULT_POLICY,
        },
    ))
}

/// A mesh node of `role` on `platform`, trusting `manifest` (simulation accepted: test only).
pub fn node(manifest: &[u8], role: Role, platform: Arc<SimService>) -> Arc<MeshNode> {
    let trust = Trust::from_manifest(manifest, Simulation::DangerousAccept).unwrap();
    Arc::new(MeshNode::new(role, platform, Arc::new(trust)).unwrap())
}

/// A KMS in `dir` sealed to the kms image of `manifest`, serving [`KmsApi`] to clients and
/// executors on loopback. Returns the address and the API.
pub async fn start_kms(
    manifest: &[u8],
    dir: &std::path::Path,
    authorizer: Authorizer,
    audit: Arc<dyn AuditSink>,
) -> (String, Arc<KmsApi>) {
    let platform = platform_in(manifest, KMS_MEASUREMENT);
    let kms = Kms::open(
        &dir.join("kms.redb"),
        platform.as_ref(),
        Box::new(Unanchored::accepting_rollback()),
    )
    .unwrap();
    let api = Arc::new(KmsApi::new(kms, authorizer, audit));
    let node = node(manifest, Role::Kms, platform);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve(
        node,
        listener,
        vec![Role::Client, Role::Executor],
        api.handler(),
        None,
    ));
    (addr, api)
}

/// An attested connection from a fresh node of `role` (`measurement`) to the KMS at `addr`.
pub async fn connect(manifest: &[u8], role: Role, measurement: [u8; 48], addr: &str) -> MeshClient {
    let node = node(manifest, role, platform_in(manifest, measurement));
    MeshClient::connect(&node, addr, Role::Kms).await.unwrap()
}
