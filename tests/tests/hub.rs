//! The control plane and the KMS VM (sim platform, TCG): the hub asks the attested KMS to
//! co-sign its audit checkpoints; the KMS co-signs only one linear history, so a forked log
//! is refused; `coffer audit verify` checks the log against both keys; the KMS's decisions are
//! collected into the hub's log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use coffer_hub::audit::cosign::{cosign_latest, CosignError, Cosigned};
use coffer_hub::audit::kms_journal::Collector;
use coffer_hub::audit::AuditRecord;
use coffer_hub::config::KmsLink;
use coffer_hub::keys::HubKeys;
use coffer_hub::{Hub, HubConfig};
use coffer_tests::{build_image, checkout, free_port, run, unique, Vm};
use coffer_types::Role;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use sqlx::Row;

const ISSUER: &str = "https://hub.coffer.test";
const DEPLOYMENT: &str = "vm-hub-cosign";

fn hub_config(dir: &Path, db: &str, kms: KmsLink) -> HubConfig {
    HubConfig {
        database_url: format!("sqlite://{}", dir.join(db).display()),
        state_dir: dir.join("hub-state"),
        issuer: ISSUER.into(),
        audit_origin: format!("coffer/{DEPLOYMENT}/audit"),
        oidc: Vec::new(),
        kms: Some(kms),
    }
}

async fn append(hub: &Hub, n: usize, tag: &str) {
    let mut w = hub.writer().await.unwrap();
    for i in 0..n {
        w.audit(AuditRecord::ok("user:test", format!("test.{tag}")).detail(json!({"i": i})))
            .await
            .unwrap();
    }
    w.commit().await.unwrap();
}

/// Every entry of the hub's log as `action outcome` (and ` replayed` for a KMS decision carried
/// over from an earlier journal).
async fn audit_actions(hub: &Hub) -> Vec<String> {
    sqlx::query("SELECT body FROM audit_entries ORDER BY idx")
        .fetch_all(&hub.db)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let v: serde_json::Value =
                serde_json::from_str(&r.try_get::<String, _>("body").unwrap()).unwrap();
            let replayed = if v["detail"]["replayed_from"].is_object() {
                " replayed"
            } else {
                ""
            };
            format!(
                "{} {}{replayed}",
                v["action"].as_str().unwrap(),
                v["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

/// `GET /v1/audit/export?cosigned=true` from the hub's API, as an administrator downloads it.
async fn export(hub: &Arc<Hub>) -> Vec<u8> {
    let password = coffer_hub::api::bootstrap_admin(hub, "admin")
        .await
        .unwrap()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(coffer_hub::api::serve(
        hub.clone(),
        listener,
        std::future::pending(),
    ));
    let http = reqwest::Client::new();
    let session: serde_json::Value = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"username": "admin", "password": password.as_str()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answer = http
        .get(format!("{base}/v1/audit/export?cosigned=true"))
        .bearer_auth(session["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    answer.bytes().await.unwrap().to_vec()
}

#[test]
fn the_kms_vm_co_signs_the_hubs_checkpoints_refuses_a_fork_and_its_decisions_reach_the_log() {
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("kms");
    build_image(Role::Kms, &image, None);
    let state = Arc::new(tempfile::tempdir().unwrap());
    let dir = state.path();
    let (mesh, attest) = (free_port(), free_port());
    let origin = format!("coffer/{DEPLOYMENT}/audit");

    // The hub's key exists first: the deployment's KMS trusts it as its control plane.
    let keys = HubKeys::load_or_create(&dir.join("hub-state"), ISSUER, &origin).unwrap();
    let authz = dir.join("authz.json");
    std::fs::write(
        &authz,
        json!({"issuers": [{"issuer": ISSUER, "kind": "control_plane", "jwks": keys.jwks()}]})
            .to_string(),
    )
    .unwrap();
    let manifest = dir.join("deployment.json");
    let outcome = run(&[
        "--state-dir",
        dir.to_str().unwrap(),
        "deployment",
        "init",
        "--out",
        manifest.to_str().unwrap(),
        "--id",
        DEPLOYMENT,
        "--pins",
        checkout().join("measurements/pins").to_str().unwrap(),
        "--endpoint",
        &format!("kms=10.0.2.2:{mesh}"),
        "--kms-authz",
        authz.to_str().unwrap(),
    ]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let vm_name = unique("kms-cosign");
    let start = |name: &str| {
        let vm = Vm::start_in(
            state.clone(),
            &image,
            name,
            &[
                "--deployment",
                manifest.to_str().unwrap(),
                "--port",
                &format!("mesh={mesh}"),
                "--port",
                &format!("attest={attest}"),
            ],
        );
        assert!(
            vm.wait_for_log("kms state opened and verified", Duration::from_secs(90)),
            "{}",
            vm.serial()
        );
        vm
    };
    let mut vm = start(&vm_name);
    let link = KmsLink {
        endpoint: format!("https://127.0.0.1:{attest}"),
        manifest: std::fs::read(&manifest).unwrap(),
        allow_simulation: true,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let hub = Hub::open(hub_config(dir, "hub.db", link.clone()))
            .await
            .unwrap();
        append(&hub, 5, "first").await;
        let kms_key = match cosign_latest(&hub, &link).await.unwrap() {
            Cosigned::Now { size, kms_key } => {
                assert_eq!(size, 5);
                kms_key
            }
            other => panic!("expected a co-signature, got {other:?}"),
        };
        assert!(kms_key.starts_with(&format!("{origin}/kms+")), "{kms_key}");
        // The next checkpoint is co-signed with a consistency proof from the first.
        append(&hub, 7, "second").await;
        assert!(matches!(
            cosign_latest(&hub, &link).await.unwrap(),
            Cosigned::Now { size: 12, .. }
        ));
        assert_eq!(
            cosign_latest(&hub, &link).await.unwrap(),
            Cosigned::Already(12)
        );

        // `coffer audit verify` needs both signatures on every checkpoint, and gets them.
        let log = dir.join("log.json");
        let export_json = export(&hub).await;
        let parsed: serde_json::Value = serde_json::from_slice(&export_json).unwrap();
        // The sign-in for the download added entries after the last co-signed checkpoint: the
        // co-signed export stops at 12.
        assert!(hub.audit.size() > 12);
        assert_eq!(
            parsed["entries"].as_array().map(Vec::len),
            Some(12),
            "{parsed}"
        );
        std::fs::write(&log, export_json).unwrap();
        let hub_key = keys.audit_signer().verifier_key().to_string();
        let outcome = run(&[
            "audit",
            "verify",
            "--log",
            log.to_str().unwrap(),
            "--trust",
            &hub_key,
            "--trust",
            &kms_key,
        ]);
        assert_eq!(outcome.code, 0, "{outcome:?}");

        // A fork: the same hub key and origin, another history of 12 entries. The KMS has
        // co-signed size 12 of the real log and refuses a different tree of that size; it
        // refuses a shorter one as a truncation.
        let forked = Hub::open(hub_config(dir, "fork.db", link.clone()))
            .await
            .unwrap();
        append(&forked, 12, "forged").await;
        match cosign_latest(&forked, &link).await {
            Err(CosignError::Refused { code, size: 12, .. }) => assert_eq!(code, "checkpoint_fork"),
            other => panic!("a fork must be refused, got {other:?}"),
        }
        let short = Hub::open(hub_config(dir, "short.db", link.clone()))
            .await
            .unwrap();
        append(&short, 3, "short").await;
        match cosign_latest(&short, &link).await {
            Err(CosignError::Refused { code, .. }) => assert_eq!(code, "checkpoint_truncated"),
            other => panic!("a truncation must be refused, got {other:?}"),
        }
        // The KMS's decisions reach the hub's log: a refused co-signing request (not a valid
        // token) is journaled by the KMS and collected, once.
        let check = coffer_mesh::endpoint::check_endpoint(
            &link.endpoint,
            &coffer_mesh::Trust::from_manifest(
                &link.manifest,
                coffer_mesh::Simulation::DangerousAccept,
            )
            .unwrap(),
            Some(Role::Kms),
        )
        .await
        .unwrap();
        let (status, _) = coffer_mesh::endpoint::request_attested(
            &link.endpoint,
            &check.tls_spki_sha256,
            hyper::Method::POST,
            coffer_kms::checkpoint::COSIGN_PATH,
            json!({"token": "not.a.token", "checkpoint": "x\n", "proof": []})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
        assert_eq!(status, 403);
        let mut collector = Collector::new();
        let appended = collector.collect(&hub, &link).await.unwrap();
        assert!(appended >= 1, "appended {appended}");
        assert_eq!(
            collector.collect(&hub, &link).await.unwrap(),
            0,
            "collected twice"
        );
        let actions = audit_actions(&hub).await;
        assert!(
            actions.contains(&"kms.journal_started ok".to_owned()),
            "{actions:?}"
        );
        assert!(
            actions.contains(&"kms.sign_checkpoint denied".to_owned()),
            "{actions:?}"
        );

        // A decision the KMS made and flushed (every half second) but the hub had not yet
        // collected survives the VM's power being cut: the restarted KMS carries it into its new
        // journal, and the hub appends it once, marked with where it was first recorded.
        let denied = |actions: &[String]| {
            actions
                .iter()
                .filter(|a| a.starts_with("kms.sign_checkpoint denied"))
                .count()
        };
        let before = denied(&audit_actions(&hub).await);
        let (status, _) = coffer_mesh::endpoint::request_attested(
            &link.endpoint,
            &check.tls_spki_sha256,
            hyper::Method::POST,
            coffer_kms::checkpoint::COSIGN_PATH,
            json!({"token": "before.power.off", "checkpoint": "x\n", "proof": []})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
        assert_eq!(status, 403);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::block_in_place(|| {
            kill(Pid::from_raw(vm.record.pid), Signal::SIGKILL).unwrap();
            while vm.record.is_running() {
                std::thread::sleep(Duration::from_millis(50));
            }
            vm = start(&vm_name);
        });
        collector.collect(&hub, &link).await.unwrap();
        let actions = audit_actions(&hub).await;
        assert_eq!(denied(&actions), before + 1, "{actions:?}");
        assert!(
            actions
                .iter()
                .any(|a| a.starts_with("kms.sign_checkpoint denied") && a.contains("replayed")),
            "{actions:?}"
        );
        assert_eq!(collector.collect(&hub, &link).await.unwrap(), 0);

        // Without simulation allowed, the sim KMS is not attested at all.
        let strict = KmsLink {
            allow_simulation: false,
            ..link.clone()
        };
        append(&hub, 1, "third").await;
        assert!(matches!(
            cosign_latest(&hub, &strict).await,
            Err(CosignError::NotAttested { .. })
        ));
    });
    // Every decision is on the KMS's console as an audit line.
    assert!(vm.serial().contains("checkpoint"), "{}", vm.serial());
}
