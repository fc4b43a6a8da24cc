//! The witness quorum over real attested endpoints (`EndpointTransport`): a witness is checked
//! by its evidence (pinned kms code, under any manifest of the deployment) and named by the TLS
//! key that evidence binds; a rolled-back store is refused by name; a witness whose image is not
//! pinned is no witness.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use coffer_kms::rollback::quorum::transport::EndpointTransport;
use coffer_kms::rollback::quorum::{
    QuorumAnchor, Survey, WitnessRequest, WitnessTable, WitnessTransport,
};
use coffer_kms::{Kms, OrgId};
use coffer_mesh::endpoint::{check_endpoint, serve_endpoint_with};
use coffer_sim::sim_deployment;
use coffer_types::Role;

use common::mesh::{node, platform_in};
use common::{sim_root, KMS_MEASUREMENT};

/// The deployment `coffer-quorum` with `kms` pinned; the client pin makes it a full manifest.
fn manifest(kms: &[[u8; 48]]) -> Vec<u8> {
    let pins = BTreeMap::from([
        (Role::Kms, kms.iter().map(hex::encode).collect()),
        (Role::Client, vec![hex::encode([0xc1; 48])]),
    ]);
    serde_json::to_vec_pretty(&sim_deployment(&sim_root(), "coffer-quorum", pins).unwrap()).unwrap()
}

/// Serves a witness (the route the kms appliance serves) for a kms of `measurement` launched
/// into `manifest`; returns its URL.
fn start_witness(rt: &tokio::runtime::Runtime, manifest: &[u8], measurement: [u8; 48]) -> String {
    start_witness_at(rt, manifest, measurement, "127.0.0.1:0")
}

/// [`start_witness`] on `addr`.
fn start_witness_at(
    rt: &tokio::runtime::Runtime,
    manifest: &[u8],
    measurement: [u8; 48],
    addr: &str,
) -> String {
    let extension = Arc::new(WitnessTable::new()).extension();
    let node = node(manifest, Role::Kms, platform_in(manifest, measurement));
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr)).unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    rt.spawn(serve_endpoint_with(node, listener, Some(extension)));
    url
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_witness_under_the_next_manifest_vouches_and_a_rolled_back_store_is_refused_by_name() {
    let rt = runtime();
    let v1 = manifest(&[KMS_MEASUREMENT]);
    // The manifest of an upgrade: one more kms image pinned, so another deployment digest.
    let v2 = manifest(&[KMS_MEASUREMENT, [0x4c; 48]]);
    let witness = start_witness(&rt, &v2, KMS_MEASUREMENT);
    // Bound to the deployment, the v1 node refuses it (another HOST_DATA)...
    let v1_node = node(&v1, Role::Kms, platform_in(&v1, KMS_MEASUREMENT));
    let refused = rt
        .block_on(check_endpoint(&witness, v1_node.trust(), Some(Role::Kms)))
        .unwrap_err();
    assert_eq!(refused.name(), "wrong_deployment", "{refused}");
    // ...while as a witness it is genuine pinned kms code, which is all a witness must be.
    let transport = Arc::new(EndpointTransport::new(v1_node.trust().clone()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let open = || {
        let (anchor, handle) =
            QuorumAnchor::new(transport.clone(), [witness.clone()], None).unwrap();
        let kms = Kms::open(
            &path,
            platform_in(&v1, KMS_MEASUREMENT).as_ref(),
            Box::new(anchor.with_open_wait(std::time::Duration::from_secs(2))),
        );
        (kms, handle)
    };
    let acme = OrgId::new("acme").unwrap();

    let (kms, handle) = open();
    let mut kms = kms.unwrap();
    assert_eq!(handle.survey(&[]).unwrap(), Survey::NewSet);
    kms.advance_state().unwrap();
    assert_eq!(handle.witnesses()[0][0].url, witness);
    kms.create_org_key(&acme).unwrap();
    let old = kms.state_version();
    drop(kms);
    std::fs::copy(&path, dir.path().join("aside.redb")).unwrap();
    let (kms, _) = open();
    let mut kms = kms.unwrap();
    kms.generate_data_key(&acme).unwrap();
    let new = kms.state_version();
    drop(kms);
    std::fs::copy(dir.path().join("aside.redb"), &path).unwrap();
    let err = open().0.unwrap_err().to_string();
    assert!(
        err.contains(&format!("state version {old} < anchor {new}"))
            && err.contains(&format!("witness {witness}")),
        "{err}"
    );
}

#[test]
fn a_witness_whose_image_is_not_pinned_is_no_witness() {
    let rt = runtime();
    let v1 = manifest(&[KMS_MEASUREMENT]);
    let stranger = start_witness(&rt, &v1, [0x77; 48]);
    let v1_node = node(&v1, Role::Kms, platform_in(&v1, KMS_MEASUREMENT));
    let transport = EndpointTransport::new(v1_node.trust().clone()).unwrap();
    let answers = transport.call_all(
        std::slice::from_ref(&stranger),
        &WitnessRequest::Query {
            instance: hex::encode([1u8; 16]),
        },
    );
    let err = answers[0].as_ref().unwrap_err();
    assert!(
        err.contains("not an attested kms") && err.contains("measurement_not_pinned"),
        "{err}"
    );
}

#[test]
fn a_witness_restarted_behind_the_same_address_is_a_new_process_and_vouches_for_nothing() {
    let v1 = manifest(&[KMS_MEASUREMENT]);
    let first = runtime();
    let witness = start_witness(&first, &v1, KMS_MEASUREMENT);
    let v1_node = node(&v1, Role::Kms, platform_in(&v1, KMS_MEASUREMENT));
    let transport = Arc::new(EndpointTransport::new(v1_node.trust().clone()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (anchor, handle) = QuorumAnchor::new(transport, [witness.clone()], None).unwrap();
    let mut kms = Kms::open(
        &dir.path().join("kms.redb"),
        platform_in(&v1, KMS_MEASUREMENT).as_ref(),
        Box::new(anchor),
    )
    .unwrap();
    assert_eq!(handle.survey(&[]).unwrap(), Survey::NewSet);
    kms.advance_state().unwrap();
    let acme = OrgId::new("acme").unwrap();
    kms.create_org_key(&acme).unwrap();
    for _ in 0..3 {
        kms.generate_data_key(&acme).unwrap(); // over the one kept connection
    }
    // The witness process ends (its connections with it) and another starts on its address.
    first.shutdown_background();
    let second = runtime();
    let addr = witness.strip_prefix("https://").unwrap();
    let restarted = start_witness_at(&second, &v1, KMS_MEASUREMENT, addr);
    assert_eq!(restarted, witness);
    let err = kms.generate_data_key(&acme).unwrap_err().to_string();
    assert!(
        err.contains("answers as another process") && err.contains("not acknowledged"),
        "{err}"
    );
    // It cannot stand in for the witness it replaced, so no new set is listed either.
    assert_eq!(handle.survey(&[]).unwrap(), Survey::Unchanged);
}
