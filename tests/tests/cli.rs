//! The CLI's answers to bad input: one line naming the problem, exit code 2, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use coffer_tests::{build_image, checkout, run, Outcome};
use coffer_types::Role;

/// Asserts the command failed as bad input, ending with exactly one error line that contains
/// `expected` (progress lines may come before it).
fn assert_one_line_error(outcome: &Outcome, expected: &str) {
    assert_eq!(outcome.code, 2, "{outcome:?}");
    assert!(!outcome.stderr.contains("panicked"), "{outcome:?}");
    let errors: Vec<&str> = outcome
        .stderr
        .lines()
        .filter(|l| l.starts_with("coffer: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line, got: {outcome:?}");
    assert_eq!(
        outcome.stderr.lines().last(),
        Some(errors[0]),
        "{outcome:?}"
    );
    assert!(
        errors[0].contains(expected),
        "expected '{expected}' in: {}",
        errors[0]
    );
}

#[test]
fn an_unknown_role_is_named() {
    let outcome = run(&["image", "build", "hub"]);
    assert_one_line_error(
        &outcome,
        "unknown role 'hub' (expected one of: kms, client, executor)",
    );
}

#[test]
fn a_broken_spec_is_named_with_its_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(checkout().join("image/specs/kms.toml")).unwrap();
    let cases = [
        (
            good.replace("critical = true", "critical = true\nshell = true"),
            "unknown field `shell`",
        ),
        (
            good.replace("health_port = 8080", "health_port = 9999"),
            "health_port 9999 is not one of the [[port]] entries",
        ),
        (
            good.replace("role = \"kms\"", "role = \"client\""),
            "it describes role 'client', not 'kms'",
        ),
        ("role = [".to_owned(), "image spec"),
    ];
    for (index, (text, expected)) in cases.iter().enumerate() {
        let spec = dir.path().join(format!("bad{index}.toml"));
        std::fs::write(&spec, text).unwrap();
        let outcome = run(&["image", "build", "kms", "--spec", spec.to_str().unwrap()]);
        assert_one_line_error(&outcome, expected);
        assert!(
            outcome.stderr.contains(spec.to_str().unwrap()),
            "{outcome:?}"
        );
    }
}

/// A copy of the checkout's image inputs (not its Rust code: input checks come first).
fn copy_inputs(to: &Path) {
    let from = checkout();
    let status = std::process::Command::new("cp")
        .args([
            "-r",
            from.join("image").to_str().unwrap(),
            to.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_missing_pinned_input_says_how_to_get_it() {
    let copy = tempfile::tempdir().unwrap();
    copy_inputs(copy.path());
    std::fs::remove_file(copy.path().join("image/vendor/kernel/vmlinuz")).unwrap();
    let outcome = run(&[
        "image",
        "build",
        "kms",
        "--source",
        copy.path().to_str().unwrap(),
    ]);
    assert_one_line_error(
        &outcome,
        "pinned input kernel is missing: image/vendor/kernel/vmlinuz does not exist (run image/vendor-kernel.sh",
    );
}

#[test]
fn a_tampered_pinned_input_is_refused_with_both_digests() {
    for (what, path) in [
        ("kernel", "image/vendor/kernel/vmlinuz"),
        ("firmware", "image/vendor/firmware/OVMF.amdsev.fd"),
        (
            "module:virtio_net",
            "image/vendor/kernel/modules/kernel/drivers/net/virtio_net.ko",
        ),
    ] {
        let copy = tempfile::tempdir().unwrap();
        copy_inputs(copy.path());
        let file = copy.path().join(path);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[1000] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        let outcome = run(&[
            "image",
            "build",
            "kms",
            "--source",
            copy.path().to_str().unwrap(),
        ]);
        assert_one_line_error(
            &outcome,
            &format!("pinned input {what} ({path}) does not match the lock file: expected sha256 "),
        );
        assert!(outcome.stderr.contains(", got "), "{outcome:?}");
    }
}

#[test]
fn outside_a_checkout_the_builder_says_so() {
    let empty = tempfile::tempdir().unwrap();
    let outcome = run(&[
        "image",
        "build",
        "kms",
        "--source",
        empty.path().to_str().unwrap(),
    ]);
    assert_one_line_error(&outcome, "not inside a Coffer checkout");
}

#[test]
fn run_refuses_a_busy_port_a_tampered_image_and_a_non_image() {
    let out = tempfile::tempdir().unwrap();
    let image = out.path().join("kms");
    build_image(Role::Kms, &image, None);

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let state = tempfile::tempdir().unwrap();
    let outcome = run(&[
        "--state-dir",
        state.path().to_str().unwrap(),
        "run",
        image.to_str().unwrap(),
        "--port",
        &format!("health={port}"),
    ]);
    assert_one_line_error(
        &outcome,
        &format!("host port 127.0.0.1:{port} (for guest port health/8080) is already in use"),
    );

    let outcome = run(&["run", image.to_str().unwrap(), "--port", "metrics=9000"]);
    assert_one_line_error(&outcome, "the image has no port named 'metrics'");

    let outcome = run(&["run", out.path().to_str().unwrap()]);
    assert_one_line_error(&outcome, "is not an image directory: manifest.json");

    let initramfs = image.join("initramfs.cpio.gz");
    let mut bytes = std::fs::read(&initramfs).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&initramfs, &bytes).unwrap();
    let outcome = run(&["run", image.to_str().unwrap()]);
    assert_one_line_error(
        &outcome,
        "initramfs.cpio.gz does not match its manifest: expected sha256 ",
    );
}

#[test]
fn stopping_an_unknown_vm_is_an_error() {
    let state = tempfile::tempdir().unwrap();
    let outcome = run(&[
        "--state-dir",
        state.path().to_str().unwrap(),
        "stop",
        "nosuch",
    ]);
    assert_one_line_error(&outcome, "no running VM named 'nosuch'");
}

#[test]
fn help_lists_the_commands() {
    let outcome = run(&["--help"]);
    assert_eq!(outcome.code, 0);
    for command in ["image", "run", "stop", "ps"] {
        assert!(outcome.stdout.contains(command), "{}", outcome.stdout);
    }
}

#[test]
fn a_deployment_of_another_simulation_root_is_refused_before_boot() {
    let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let manifest = theirs.path().join("deployment.json");
    let pins = checkout().join("measurements/pins");
    let outcome = run(&[
        "--state-dir",
        theirs.path().to_str().unwrap(),
        "deployment",
        "init",
        "--out",
        manifest.to_str().unwrap(),
        "--pins",
        pins.to_str().unwrap(),
    ]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    // Another state directory has another simulated secure processor.
    let outcome = run(&[
        "--state-dir",
        ours.path().to_str().unwrap(),
        "run",
        "/nonexistent-image",
        "--deployment",
        manifest.to_str().unwrap(),
    ]);
    assert_one_line_error(
        &outcome,
        "the deployment's simulation root is not the one in",
    );
}

#[test]
fn a_broken_deployment_manifest_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("deployment.json");
    std::fs::write(&manifest, r#"{"format_version": 1}"#).unwrap();
    let outcome = run(&[
        "--state-dir",
        dir.path().to_str().unwrap(),
        "run",
        "/nonexistent-image",
        "--deployment",
        manifest.to_str().unwrap(),
    ]);
    assert_one_line_error(&outcome, "deployment manifest: missing field");
}

#[test]
fn verify_endpoint_refuses_a_simulation_deployment_without_the_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("deployment.json");
    let pins = checkout().join("measurements/pins");
    let outcome = run(&[
        "--state-dir",
        dir.path().to_str().unwrap(),
        "deployment",
        "init",
        "--out",
        manifest.to_str().unwrap(),
        "--pins",
        pins.to_str().unwrap(),
    ]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let outcome = run(&[
        "verify",
        "endpoint",
        "https://127.0.0.1:9",
        "--deployment",
        manifest.to_str().unwrap(),
    ]);
    assert_one_line_error(&outcome, "not configured for simulation");
}
