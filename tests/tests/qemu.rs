//! The QEMU tier: real images booted under QEMU (TCG), checked from the host.
//!
//! Each test builds its image from this checkout, boots it with `coffer run --detach`, talks to
//! it over the forwarded health port and reads its serial log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use coffer_tests::{build_image, checkout, unique, Vm};
use coffer_types::Role;

fn boots_serves_health_and_powers_off_cleanly(role: Role) {
    let out = tempfile::tempdir().unwrap();
    build_image(role, out.path(), None);
    let vm = Vm::start(out.path(), &unique(&format!("boot-{role}")));

    let health = vm.health().unwrap();
    assert_eq!(health.role, role);
    assert_eq!(health.status, "ok");

    let outcome = vm.stop();
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert!(
        outcome.stdout.contains("powered off cleanly"),
        "{outcome:?}"
    );
    assert!(!vm.record.is_running());

    let log = vm.serial();
    assert_eq!(
        log.matches("service started").count(),
        2,
        "two services (health and mesh), each started once:\n{log}"
    );
    assert!(
        log.contains("no deployment config disk: standalone appliance"),
        "{log}"
    );
    assert!(
        !log.contains("service exited"),
        "no service may exit before shutdown:\n{log}"
    );
    assert!(
        !log.contains("killing"),
        "the service must stop on SIGTERM:\n{log}"
    );
    assert!(
        log.contains("shutdown requested reason=ACPI power button"),
        "{log}"
    );
    assert!(
        log.contains("powering off reason=shutdown: ACPI power button"),
        "{log}"
    );
    assert!(log.contains("reboot: Power down"), "{log}");
}

#[test]
fn kms_boots_serves_health_and_powers_off_cleanly() {
    boots_serves_health_and_powers_off_cleanly(Role::Kms);
}

#[test]
fn client_boots_serves_health_and_powers_off_cleanly() {
    boots_serves_health_and_powers_off_cleanly(Role::Client);
}

#[test]
fn executor_boots_serves_health_and_powers_off_cleanly() {
    boots_serves_health_and_powers_off_cleanly(Role::Executor);
}

/// The kms spec with an extra service and another restart policy.
fn spec_with(dir: &Path, service: &str, restart: &str) -> std::path::PathBuf {
    let base = std::fs::read_to_string(checkout().join("image/specs/kms.toml")).unwrap();
    let restart_line = base
        .lines()
        .find(|l| l.starts_with("restart = "))
        .unwrap()
        .to_owned();
    let text = base.replace(&restart_line, restart).replacen(
        "[[port]]",
        &format!("{service}\n[[port]]"),
        1,
    );
    let path = dir.join("spec.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_crashing_service_is_restarted_with_backoff_then_given_up_and_orphans_are_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(
        dir.path(),
        "[[service]]\nname = \"flaky\"\napplet = \"exit-after\"\nargs = [\"--ms\", \"300\", \"--code\", \"3\", \"--orphan-ms\", \"200\"]\nuid = 1000\ngid = 1000\ncritical = false\n",
        "restart = { initial_backoff_ms = 100, max_backoff_ms = 400, max_restarts = 3, window_ms = 60000 }",
    );
    let image = dir.path().join("image");
    build_image(Role::Kms, &image, Some(&spec));
    let vm = Vm::start(&image, &unique("flaky"));
    assert!(
        vm.wait_for_log("giving up on it (not critical)", Duration::from_secs(60)),
        "{}",
        vm.serial()
    );
    let log = vm.serial();
    assert_eq!(
        log.matches("service exited service=flaky status=exit code 3")
            .count(),
        4,
        "{log}"
    );
    // Backoff doubles: 100, 200, 400 ms.
    for delay in [100, 200, 400] {
        assert!(
            log.contains(&format!(
                "service will be restarted service=flaky delay_ms={delay}"
            )),
            "{log}"
        );
    }
    assert_eq!(
        log.matches("restarting service service=flaky").count(),
        3,
        "{log}"
    );
    // A non-critical crash loop leaves the appliance up.
    assert_eq!(vm.health().unwrap().role, Role::Kms);
    let outcome = vm.stop();
    assert!(
        outcome.stdout.contains("powered off cleanly"),
        "{outcome:?}"
    );
}

#[test]
fn a_critical_crash_loop_powers_the_vm_off() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(
        dir.path(),
        "[[service]]\nname = \"doomed\"\napplet = \"exit-after\"\nargs = [\"--ms\", \"1500\"]\nuid = 1000\ngid = 1000\ncritical = true\n",
        "restart = { initial_backoff_ms = 100, max_backoff_ms = 400, max_restarts = 2, window_ms = 60000 }",
    );
    let image = dir.path().join("image");
    build_image(Role::Kms, &image, Some(&spec));
    let vm = Vm::start(&image, &unique("doomed"));
    assert!(
        coffer_qemu::wait_exit(&vm.record, Duration::from_secs(90)),
        "the VM should power itself off:\n{}",
        vm.serial()
    );
    let log = vm.serial();
    assert!(
        log.contains("FAIL-STOP: critical service 'doomed' exited 3 times within 60s"),
        "{log}"
    );
    assert!(log.contains("service stopped service=kms"), "{log}");
    assert!(log.contains("reboot: Power down"), "{log}");
}

#[test]
fn ctrl_alt_del_is_a_clean_shutdown() {
    let out = tempfile::tempdir().unwrap();
    build_image(Role::Kms, out.path(), None);
    let vm = Vm::start(out.path(), &unique("cad"));
    let keys = serde_json::json!({ "keys": [
        { "type": "qcode", "data": "ctrl" },
        { "type": "qcode", "data": "alt" },
        { "type": "qcode", "data": "delete" },
    ]});
    coffer_qemu::qmp::execute(&vm.record.qmp_socket, "send-key", keys).unwrap();
    assert!(
        coffer_qemu::wait_exit(&vm.record, Duration::from_secs(60)),
        "{}",
        vm.serial()
    );
    let log = vm.serial();
    assert!(
        log.contains("shutdown requested reason=SIGINT (Ctrl-Alt-Del)"),
        "{log}"
    );
    assert!(log.contains("service stopped service=kms"), "{log}");
    assert!(!log.contains("killing"), "{log}");
    assert!(log.contains("reboot: Power down"), "{log}");
}

#[test]
fn a_vm_that_dies_before_it_is_healthy_is_reported_with_its_serial_log() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(checkout().join("image/specs/kms.toml")).unwrap();
    // The only service crashes at once: the VM fail-stops before /healthz ever answers.
    let text = base
        .replace("applet = \"health\"", "applet = \"exit-after\"")
        .replace(
            "args = [\"--listen\", \"0.0.0.0:8080\"]",
            "args = [\"--ms\", \"10\"]",
        )
        .replace("max_restarts = 5", "max_restarts = 1");
    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, text).unwrap();
    let image = dir.path().join("image");
    build_image(Role::Kms, &image, Some(&spec));
    let state = tempfile::tempdir().unwrap();
    let outcome = coffer_tests::run(&[
        "--state-dir",
        state.path().to_str().unwrap(),
        "run",
        image.to_str().unwrap(),
        "--detach",
        "--timeout",
        "120",
    ]);
    assert_eq!(outcome.code, 1, "{outcome:?}");
    assert!(
        outcome
            .stderr
            .contains("exited before it became healthy; last lines of"),
        "{outcome:?}"
    );
    assert!(
        outcome
            .stderr
            .contains("FAIL-STOP: critical service 'health' exited 2 times within 60s"),
        "{outcome:?}"
    );
}

#[test]
fn dhcp_configures_the_network_as_on_a_cloud() {
    // QEMU user networking has a DHCP server (10.0.2.2) that leases 10.0.2.15/24.
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(checkout().join("image/specs/kms.toml")).unwrap();
    let static_line = base
        .lines()
        .find(|l| l.starts_with("network = "))
        .unwrap()
        .to_owned();
    let text = base.replace(
        &static_line,
        "network = { mode = \"dhcp\", interface = \"eth0\" }",
    );
    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, text).unwrap();
    let image = dir.path().join("image");
    build_image(Role::Kms, &image, Some(&spec));
    let vm = Vm::start(&image, &unique("dhcp"));
    assert_eq!(vm.health().unwrap().role, Role::Kms);
    let log = vm.serial();
    assert!(
        log.contains("network configured by DHCP interface=eth0 address=10.0.2.15/24 router=Some(10.0.2.2) server=10.0.2.2"),
        "{log}"
    );
    let outcome = vm.stop();
    assert!(
        outcome.stdout.contains("powered off cleanly"),
        "{outcome:?}"
    );
}
