//! The audit journal through the API: every decision is journaled before it runs, only the
//! control plane's collection request reads it, and collecting acknowledges what came before.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use coffer_kms::api::AuditJournal;
use coffer_kms::authz::AUDIT_COLLECT_TYP;
use coffer_kms::rollback::MemoryAnchor;
use coffer_kms::{Kms, KmsApi};
use http_body_util::BodyExt;
use hyper::StatusCode;
use serde_json::{json, Value};

use common::issuer::{now, TestIssuer, CP};

fn collect_token(issuer: &TestIssuer, lifetime: u64) -> String {
    let now = now();
    issuer.sign(
        AUDIT_COLLECT_TYP,
        &json!({"iss": CP, "sub": "hub", "aud": "kms", "iat": now, "exp": now + lifetime,
                "jti": format!("ac-{now}-{lifetime}")}),
    )
}

async fn collect(api: &KmsApi, token: &str, after: u64) -> (StatusCode, Value) {
    let journal = api.journal().map(|j| j.id().to_owned());
    let response = api
        .collect_audit(token, journal.as_deref(), after, 100)
        .await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn only_the_control_plane_collects_the_journal_and_collecting_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let kms = Kms::open(
        &dir.path().join("kms.redb"),
        &common::platform(),
        Box::new(MemoryAnchor::new()),
    )
    .unwrap();
    let issuer = TestIssuer::generate("cp-1");
    let journal = Arc::new(AuditJournal::new(1000).unwrap());
    let api = KmsApi::with_journal(kms, issuer.authorizer(), journal.clone());

    // Refused collections: an identity token, a request living too long, another issuer's key.
    // Each refusal is itself journaled.
    let identity = issuer.identity("hub", "acme", "w1", &["admin"]);
    let (status, body) = collect(&api, &identity, 0).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "token_type_mismatch");
    let (status, body) = collect(&api, &collect_token(&issuer, 3600), 0).await;
    assert_eq!(
        body["error"]["code"], "lifetime_too_long",
        "{status} {body}"
    );
    let stranger = TestIssuer::generate("cp-1");
    let (_, body) = collect(&api, &collect_token(&stranger, 60), 0).await;
    assert_eq!(body["error"]["code"], "signature_invalid");
    assert_eq!(journal.pending(), 3);

    // The control plane collects the three refusals, in order; its own collection is not
    // journaled (it would grow the log forever).
    let (status, page) = collect(&api, &collect_token(&issuer, 60), 0).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["journal"], journal.id());
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(page["events"][0]["event"]["operation"], "collect_audit");
    assert_eq!(page["events"][0]["event"]["outcome"], "denied");
    assert_eq!(page["last_seq"], 3);
    // Asking after 3 acknowledges them: the journal is empty, and stays so.
    let (_, page) = collect(&api, &collect_token(&issuer, 60), 3).await;
    assert_eq!(page["events"], json!([]));
    assert_eq!(journal.pending(), 0);
}
