//! The `coffer-hub` binary as an operator runs it: the first start creates the administrator
//! and prints its password once; a restart keeps every user and the audit log, and prints no
//! password; bad flags are refused naming them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

struct Running {
    child: Child,
    base: String,
    printed: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path) -> Running {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer-hub"))
        .args([
            "--database",
            &format!("sqlite://{}", dir.join("hub.db").display()),
        ])
        .args(["--state-dir", dir.join("state").to_str().unwrap()])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--deployment",
            "bin-test",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read stdout (the password line, if any) and wait until the API answers.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "coffer-hub did not listen within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The password line is written before the port opens; the reader thread may lag a little.
    let mut printed = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        printed.push(line);
    }
    Running {
        child,
        base,
        printed: printed.join("\n"),
    }
}

async fn login(base: &str, user: &str, password: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn the_first_start_prints_the_admin_password_once_and_a_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path());
    let password = first
        .printed
        .lines()
        .find_map(|l| l.strip_prefix("coffer-hub: created administrator \"admin\" with password "))
        .unwrap_or_else(|| panic!("no password line in {:?}", first.printed))
        .to_owned();
    assert_eq!(login(&first.base, "admin", &password).await, 200);
    let jwks: serde_json::Value = reqwest::get(format!("{}/.well-known/jwks.json", first.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    drop(first);

    let second = start(dir.path());
    assert!(!second.printed.contains("password"), "{}", second.printed);
    assert_eq!(login(&second.base, "admin", &password).await, 200);
    let again: serde_json::Value = reqwest::get(format!("{}/.well-known/jwks.json", second.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks, again, "the signing key survives a restart");
    // The key file is the owner's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("state/hub.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn an_unsupported_database_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coffer-hub"))
        .args([
            "--database",
            "mysql://db/x",
            "--state-dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sqlite:// or postgres://") && err.contains("mysql://db/x"),
        "{err}"
    );
}

#[tokio::test]
async fn print_kms_authz_names_the_key_the_running_hub_signs_with() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coffer-hub"))
        .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
        .args(["--issuer", "https://hub.demo", "--print-kms-authz"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let authz: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(authz["issuers"][0]["issuer"], "https://hub.demo");
    assert_eq!(authz["issuers"][0]["kind"], "control_plane");
    // The KMS accepts the document as its authz configuration.
    let config: coffer_kms::AuthzConfig = serde_json::from_value(authz.clone()).unwrap();
    coffer_kms::Authorizer::new(config).unwrap();
    let running = start(dir.path());
    let jwks: serde_json::Value = reqwest::get(format!("{}/.well-known/jwks.json", running.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(authz["issuers"][0]["jwks"], jwks["jwks"]);
}
