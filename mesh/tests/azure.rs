//! The Azure path through the mesh, in CI: each node's vTPM is a real swtpm provisioned as a
//! simulated Azure vTPM (AK at 0x81000003, an HCL report whose SNP report the simulated secure
//! processor signed), the "init" has extended the deployment digest into PCR 15 and the "image"
//! into PCR 11, and evidence is collected through tss-esapi. Mutually attested TLS then accepts
//! the pinned peer and refuses, by name, another deployment's and another image's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use coffer_mesh::http::{MeshClient, SessionEvent};
use coffer_mesh::{MeshError, MeshNode, Simulation, Trust};
use coffer_sim::sim_deployment;
use coffer_types::{deployment_digest, Platform, Role, DEPLOYMENT_PCR};
use coffer_vtpm_provider::swtpm::{Swtpm, SwtpmError};
use coffer_vtpm_provider::{provision_swtpm, AzureVtpmEvidence, AzureVtpmProvider, SimPlatform};
use common::{get, next_event, refused_by_server, root, start_server};

/// The paravisor's launch measurement each simulated Azure VM reports.
const PARAVISOR: [u8; 48] = [0x77; 48];
/// What the kms and client "images" measure into PCR 11.
const KMS_IMAGE: [u8; 32] = [0xa1; 32];
const CLIENT_IMAGE: [u8; 32] = [0xc1; 32];
const OTHER_IMAGE: [u8; 32] = [0xee; 32];

fn extended(event: &[u8; 32]) -> String {
    hex::encode(coffer_vtpm::predict::extended_from_reset(event))
}

/// A simulated Azure deployment: the paravisor measurement pinned for every role, and PCR 11
/// pinned per role to its image.
fn manifest(id: &str) -> Vec<u8> {
    let pins = BTreeMap::from([
        (Role::Kms, vec![hex::encode(PARAVISOR)]),
        (Role::Client, vec![hex::encode(PARAVISOR)]),
    ]);
    let mut deployment = sim_deployment(root(), id, pins).unwrap();
    deployment.platform = Platform::Azure;
    for (role, image) in [(Role::Kms, KMS_IMAGE), (Role::Client, CLIENT_IMAGE)] {
        let pins = deployment.roles.get_mut(&role).unwrap();
        pins.pcrs.insert(11, extended(&image));
    }
    serde_json::to_vec_pretty(&deployment).unwrap()
}

/// An Azure VM of `role`: its own swtpm, provisioned, with `launched_into`'s digest in PCR 15
/// and `image` in PCR 11; trusting `trusts`. `None` when swtpm is not installed.
fn azure_node(
    role: Role,
    image: [u8; 32],
    launched_into: &[u8],
    trusts: &[u8],
) -> Option<(Arc<MeshNode>, Swtpm)> {
    let tpm = match Swtpm::start() {
        Ok(tpm) => tpm,
        Err(SwtpmError::NotInstalled) => {
            eprintln!("SKIPPED: the swtpm binary is not installed (Debian: apt-get install swtpm)");
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    provision_swtpm(&tpm.tcti(), root(), &SimPlatform::new(PARAVISOR, [0; 32])).unwrap();
    tpm.extend_pcr(DEPLOYMENT_PCR, deployment_digest(launched_into))
        .unwrap();
    tpm.extend_pcr(11, image).unwrap();
    let provider = AzureVtpmEvidence::new(
        AzureVtpmProvider::new(tpm.tcti(), &[11, DEPLOYMENT_PCR]).unwrap(),
        root().vcek_der().to_vec(),
    );
    // Simulated Azure: the HCL report's SNP report is signed by the simulation root.
    let trust = Trust::from_manifest(trusts, Simulation::DangerousAccept).unwrap();
    let node = MeshNode::new(role, Arc::new(provider), Arc::new(trust)).unwrap();
    Some((Arc::new(node), tpm))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_simulated_azure_vms_attest_each_other_through_their_vtpms() {
    let manifest = manifest("azure-test");
    let Some((kms, _kms_tpm)) = azure_node(Role::Kms, KMS_IMAGE, &manifest, &manifest) else {
        return;
    };
    let Some((client, _client_tpm)) = azure_node(Role::Client, CLIENT_IMAGE, &manifest, &manifest)
    else {
        return;
    };
    let (addr, mut events) = start_server(kms).await;
    let mut connection = MeshClient::connect(&client, &addr, Role::Kms)
        .await
        .unwrap();
    assert_eq!(connection.peer().role, Role::Kms);
    assert_eq!(connection.peer().measurement, PARAVISOR);
    let response = connection.send(get()).await.unwrap();
    assert_eq!(response.body().as_ref(), b"hello client");
    assert!(matches!(
        next_event(&mut events).await,
        SessionEvent::Accepted(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_vm_of_another_deployment_is_refused_by_the_deployment_pcr() {
    let ours = manifest("azure-test");
    let theirs = manifest("azure-other");
    let Some((kms, _kms_tpm)) = azure_node(Role::Kms, KMS_IMAGE, &ours, &ours) else {
        return;
    };
    // Its init measured the other manifest into PCR 15.
    let Some((client, _client_tpm)) = azure_node(Role::Client, CLIENT_IMAGE, &theirs, &ours) else {
        return;
    };
    let (addr, mut events) = start_server(kms).await;
    MeshClient::connect(&client, &addr, Role::Kms)
        .await
        .unwrap_err();
    match refused_by_server(&mut events).await {
        MeshError::WrongDeployment { expected, got } => {
            assert!(
                expected.contains(&extended(&deployment_digest(&ours))),
                "{expected}"
            );
            assert!(
                got.contains(&extended(&deployment_digest(&theirs))),
                "{got}"
            );
        }
        other => panic!("expected wrong_deployment, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_vm_running_another_image_is_refused_by_its_pcr() {
    let manifest = manifest("azure-test");
    let Some((kms, _kms_tpm)) = azure_node(Role::Kms, KMS_IMAGE, &manifest, &manifest) else {
        return;
    };
    let Some((client, _client_tpm)) = azure_node(Role::Client, OTHER_IMAGE, &manifest, &manifest)
    else {
        return;
    };
    let (addr, mut events) = start_server(kms).await;
    MeshClient::connect(&client, &addr, Role::Kms)
        .await
        .unwrap_err();
    match refused_by_server(&mut events).await {
        MeshError::PcrNotPinned { role, pcr, .. } => {
            assert_eq!((role, pcr), (Role::Client, 11));
        }
        other => panic!("expected pcr_not_pinned, got {other}"),
    }
}
