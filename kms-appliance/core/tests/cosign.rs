//! Co-signing audit checkpoints for the control plane through the API: only a control plane's
//! checkpoint request for exactly this checkpoint is taken, every decision is audited, and a
//! fork or truncation is refused with its code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use coffer_kms::authz::{Outcome, CHECKPOINT_REQUEST_TYP};
use coffer_kms::rollback::MemoryAnchor;
use coffer_kms::{Kms, KmsApi, MemoryAuditSink};
use coffer_tlog::note::{open, TrustedKeys, VerifierKey};
use coffer_tlog::{Checkpoint, MemoryTree};
use http_body_util::BodyExt;
use hyper::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use common::issuer::{now, TestIssuer, CP};

const ORIGIN: &str = "coffer/dep-test/audit";

fn request(issuer: &TestIssuer, checkpoint: &[u8], lifetime: u64) -> String {
    let now = now();
    issuer.sign(
        CHECKPOINT_REQUEST_TYP,
        &json!({"iss": CP, "sub": "hub", "aud": "kms", "iat": now, "exp": now + lifetime,
            "jti": format!("cp-{now}-{lifetime}"),
            "checkpoint_sha256": hex::encode(Sha256::digest(checkpoint))}),
    )
}

async fn cosign(
    api: &KmsApi,
    token: &str,
    checkpoint: &[u8],
    proof: Vec<[u8; 32]>,
) -> (StatusCode, Vec<u8>) {
    let response = api
        .cosign_checkpoint(ORIGIN.into(), token, checkpoint.to_vec(), proof)
        .await;
    let status = response.status();
    (
        status,
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

fn code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn only_the_control_planes_request_for_this_checkpoint_is_cosigned() {
    let dir = tempfile::tempdir().unwrap();
    let kms = Kms::open(
        &dir.path().join("kms.redb"),
        &common::platform(),
        Box::new(MemoryAnchor::new()),
    )
    .unwrap();
    let vkey = VerifierKey::parse(&kms.audit_signer_vkey(ORIGIN).unwrap()).unwrap();
    let issuer = TestIssuer::generate("cp-1");
    let audit = Arc::new(MemoryAuditSink::new());
    let api = KmsApi::new(kms, issuer.authorizer(), audit.clone());

    let mut tree = MemoryTree::new();
    for i in 0..20 {
        tree.append_entry(format!("event {i}").as_bytes());
    }
    let at = |size: u64| {
        Checkpoint::new(ORIGIN, size, tree.root_at(size).unwrap())
            .unwrap()
            .to_text()
            .into_bytes()
    };
    let (c10, c20) = (at(10), at(20));

    // Allowed: the note verifies with the KMS's verifier key.
    let (status, note) = cosign(&api, &request(&issuer, &c10, 60), &c10, vec![]).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&note));
    open(&note, &TrustedKeys::new([vkey.clone()]).unwrap()).unwrap();

    // A request for another checkpoint, a request living too long, an identity token: denied.
    let (status, body) = cosign(&api, &request(&issuer, &c10, 60), &c20, vec![]).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::FORBIDDEN, "checkpoint_mismatch")
    );
    let (status, body) = cosign(&api, &request(&issuer, &c20, 3600), &c20, vec![]).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::FORBIDDEN, "lifetime_too_long")
    );
    let identity = issuer.identity("hub", "acme", "w1", &["admin"]);
    let (status, body) = cosign(&api, &identity, &c20, vec![]).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::FORBIDDEN, "token_type_mismatch")
    );
    // Another issuer's key: unknown.
    let stranger = TestIssuer::generate("cp-1");
    let (status, body) = cosign(&api, &request(&stranger, &c20, 60), &c20, vec![]).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::FORBIDDEN, "signature_invalid")
    );

    // Grown with a consistency proof: signed. Then a fork of size 20 and a truncation: refused.
    let proof = tree.consistency_proof(10, 20).unwrap();
    let (status, body) = cosign(&api, &request(&issuer, &c20, 60), &c20, proof).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let fork = Checkpoint::new(ORIGIN, 20, [7; 32])
        .unwrap()
        .to_text()
        .into_bytes();
    let (status, body) = cosign(&api, &request(&issuer, &fork, 60), &fork, vec![]).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::CONFLICT, "checkpoint_fork")
    );
    let (status, body) = cosign(&api, &request(&issuer, &c10, 60), &c10, vec![]).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::CONFLICT, "checkpoint_truncated")
    );

    // Every decision audited, allowed or denied.
    let events = audit.events();
    assert_eq!(events.len(), 8);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.outcome == Outcome::Allowed)
            .count(),
        4
    );
    assert!(events.iter().all(|e| e.org == "*"));
}
