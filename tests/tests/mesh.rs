//! The attested mesh between real VMs (sim platform, TCG): a kms and a client VM launched into
//! one deployment attest each other and exchange requests; a client of another deployment is
//! refused by HOST_DATA; people check the kms through its attestation endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use coffer_tests::{build_image, checkout, free_port, run, unique, Vm};
use coffer_types::Role;

fn deployment(
    state: &std::path::Path,
    file: &str,
    id: &str,
    admin: &str,
    mesh_port: u16,
) -> String {
    let path = state.join(file).to_str().unwrap().to_owned();
    let pins = checkout().join("measurements/pins");
    let outcome = run(&[
        "--state-dir",
        state.to_str().unwrap(),
        "deployment",
        "init",
        "--out",
        &path,
        "--id",
        id,
        "--admin",
        admin,
        "--pins",
        pins.to_str().unwrap(),
        "--endpoint",
        &format!("kms=10.0.2.2:{mesh_port}"),
    ]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert!(outcome.stdout.contains("NOT AMD hardware"), "{outcome:?}");
    path
}

#[test]
fn two_vms_attest_each_other_and_a_vm_of_another_deployment_is_refused() {
    let images = tempfile::tempdir().unwrap();
    let (kms_image, client_image) = (images.path().join("kms"), images.path().join("client"));
    build_image(Role::Kms, &kms_image, None);
    build_image(Role::Client, &client_image, None);

    let state = Arc::new(tempfile::tempdir().unwrap());
    let (mesh_port, attest_port) = (free_port(), free_port());
    let ours = deployment(
        state.path(),
        "ours.json",
        "vm-mesh",
        "admin@acme.example",
        mesh_port,
    );
    // Same id and pins, another manifest: another HOST_DATA.
    let theirs = deployment(
        state.path(),
        "theirs.json",
        "vm-mesh",
        "mallory@example",
        mesh_port,
    );

    let kms = Vm::start_in(
        state.clone(),
        &kms_image,
        &unique("mesh-kms"),
        &[
            "--deployment",
            &ours,
            "--port",
            &format!("mesh={mesh_port}"),
            "--port",
            &format!("attest={attest_port}"),
        ],
    );
    let client = Vm::start_in(
        state.clone(),
        &client_image,
        &unique("mesh-client"),
        &["--deployment", &ours],
    );
    for vm in [&kms, &client] {
        assert!(
            vm.serial()
                .contains("deployment manifest matches this guest's HOST_DATA deployment=vm-mesh"),
            "{}",
            vm.serial()
        );
    }
    assert!(
        client.wait_for_log("mesh-probe: exchanged a request", Duration::from_secs(120)),
        "client:\n{}\nkms:\n{}",
        client.serial(),
        kms.serial()
    );
    let client_log = client.serial();
    assert!(client_log.contains("mesh-probe: attested"), "{client_log}");
    assert!(
        client_log.contains("\"peer_role\":\"client\""),
        "{client_log}"
    );
    let kms_log = kms.serial();
    assert!(kms_log.contains("mesh session established"), "{kms_log}");

    // People: the attestation endpoint, through the host port forward.
    let url = format!("https://127.0.0.1:{attest_port}");
    let accepted = run(&[
        "verify",
        "endpoint",
        &url,
        "--deployment",
        &ours,
        "--role",
        "kms",
        "--allow-simulation",
    ]);
    assert_eq!(accepted.code, 0, "{accepted:?}");
    assert!(accepted.stdout.contains("ACCEPTED"), "{accepted:?}");
    assert!(accepted.stdout.contains("NOT AMD hardware"), "{accepted:?}");
    let refused = run(&[
        "verify",
        "endpoint",
        &url,
        "--deployment",
        &theirs,
        "--allow-simulation",
    ]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stdout.contains("wrong_deployment"), "{refused:?}");
    let no_opt_in = run(&["verify", "endpoint", &url, "--deployment", &ours]);
    assert_ne!(no_opt_in.code, 0, "{no_opt_in:?}");
    assert!(
        no_opt_in.stderr.contains("not configured for simulation"),
        "{no_opt_in:?}"
    );

    // A client VM of another deployment: it refuses the kms and the kms refuses it.
    let stranger = Vm::start_in(
        state.clone(),
        &client_image,
        &unique("mesh-stranger"),
        &["--deployment", &theirs],
    );
    assert!(
        stranger.wait_for_log("mesh-probe: refused", Duration::from_secs(120)),
        "{}",
        stranger.serial()
    );
    let log = stranger.serial();
    assert!(log.contains("wrong deployment"), "{log}");
    assert!(!log.contains("mesh-probe: attested"), "{log}");
    assert!(
        kms.wait_for_log("mesh peer refused", Duration::from_secs(30)),
        "{}",
        kms.serial()
    );

    for vm in [&stranger, &client, &kms] {
        let outcome = vm.stop();
        assert_eq!(outcome.code, 0, "{outcome:?}");
    }
}
