//! The KMS API over the real attested mesh, in-process: a kms node serving [`KmsApi`], client
//! and executor nodes with simulated evidence, identity tokens and job grants from a test
//! control plane. Each case checks the status, the JSON error code and, where it matters, the
//! audit event.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use base64ct::{Base64, Encoding};
use coffer_kms::authz::{Operation, Outcome, Reason};
use coffer_kms::MemoryAuditSink;
use coffer_mesh::http::MeshClient;
use coffer_types::Role;
use common::issuer::TestIssuer;
use common::mesh::{connect, deployment, start_kms, CLIENT_MEASUREMENT, EXECUTOR_MEASUREMENT};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};

/// A credential header.
enum Cred<'a> {
    Bearer(&'a str),
    Grant(&'a str),
}

struct World {
    issuer: TestIssuer,
    audit: Arc<MemoryAuditSink>,
    manifest: Vec<u8>,
    addr: String,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let issuer = TestIssuer::generate("cp-1");
    let audit = Arc::new(MemoryAuditSink::new());
    let manifest = deployment("kms-api-test");
    let dir = tempfile::tempdir().unwrap();
    let (addr, _api) = start_kms(&manifest, dir.path(), issuer.authorizer(), audit.clone()).await;
    World {
        issuer,
        audit,
        manifest,
        addr,
        _dir: dir,
    }
}

impl World {
    async fn client(&self) -> MeshClient {
        connect(&self.manifest, Role::Client, CLIENT_MEASUREMENT, &self.addr).await
    }

    async fn executor(&self) -> MeshClient {
        connect(
            &self.manifest,
            Role::Executor,
            EXECUTOR_MEASUREMENT,
            &self.addr,
        )
        .await
    }
}

/// Sends one request; returns the status and the JSON body.
async fn call(
    conn: &mut MeshClient,
    method: Method,
    path: &str,
    cred: Cred<'_>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let builder = Request::builder().method(method).uri(path);
    let builder = match cred {
        Cred::Bearer(t) => builder.header("authorization", format!("Bearer {t}")),
        Cred::Grant(t) => builder.header("coffer-job-grant", t),
    };
    let body = Full::new(Bytes::from(body.unwrap_or("").to_owned()));
    let response = conn.send(builder.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let json = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    (status, json)
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

/// Creates acme's org key (as its owner) and a data key for acme/research (as an analyst);
/// returns the generation answer.
async fn acme_data_key(w: &World, conn: &mut MeshClient) -> Value {
    let owner = w.issuer.identity("olga", "acme", "research", &["owner"]);
    let (status, body) = call(
        conn,
        Method::POST,
        "/v1/orgs/acme/keys",
        Cred::Bearer(&owner),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["current"], 1);
    let analyst = w.issuer.identity("ann", "acme", "research", &["analyst"]);
    let (status, body) = call(
        conn,
        Method::POST,
        "/v1/orgs/acme/data-keys",
        Cred::Bearer(&analyst),
        Some(r#"{"workspace":"research"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

fn unwrap_body(generated: &Value) -> String {
    json!({ "wrapped": generated["wrapped"] }).to_string()
}

fn unwrap_path(key_id: &str) -> String {
    format!("/v1/orgs/acme/data-keys/{key_id}/unwrap")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_generates_a_data_key_and_unwraps_the_same_bytes() {
    let w = world().await;
    let mut conn = w.client().await;
    let generated = acme_data_key(&w, &mut conn).await;
    let key_id = generated["key_id"].as_str().unwrap();
    let plaintext = Base64::decode_vec(generated["plaintext"].as_str().unwrap()).unwrap();
    assert_eq!(plaintext.len(), 32);
    assert_eq!(generated["wrapped"]["key_id"], key_id);

    let analyst = w.issuer.identity("ann", "acme", "research", &["analyst"]);
    let (status, body) = call(
        &mut conn,
        Method::POST,
        &unwrap_path(key_id),
        Cred::Bearer(&analyst),
        Some(&unwrap_body(&generated)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["key_id"], key_id);
    assert_eq!(
        Base64::decode_vec(body["plaintext"].as_str().unwrap()).unwrap(),
        plaintext
    );

    // An analyst may not administer the org key.
    let (status, body) = call(
        &mut conn,
        Method::POST,
        "/v1/orgs/acme/keys/rotate",
        Cred::Bearer(&analyst),
        None,
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "role_insufficient")
    );

    // Every decision is audited (create, generate, unwrap, the denied rotate), and no audit
    // event holds the key or a token.
    let events = w.audit.events();
    let ops: Vec<_> = events.iter().map(|e| (e.operation, e.outcome)).collect();
    assert_eq!(
        ops,
        [
            (Operation::CreateOrgKey, Outcome::Allowed),
            (Operation::GenerateDataKey, Outcome::Allowed),
            (Operation::UnwrapDataKey, Outcome::Allowed),
            (Operation::RotateOrgKey, Outcome::Denied),
        ]
    );
    assert_eq!(events[2].subject.as_deref(), Some("user:ann"));
    assert_eq!(events[2].key_id.as_deref(), Some(key_id));
    assert_eq!(events[2].peer_role, Some(Role::Client));
    let audit_json = serde_json::to_string(&events).unwrap();
    for secret in [
        generated["plaintext"].as_str().unwrap(),
        &hex::encode(&plaintext),
        &analyst,
    ] {
        assert!(!audit_json.contains(secret), "the audit log holds a secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_of_another_org_is_refused_with_org_mismatch_and_audited() {
    let w = world().await;
    let mut conn = w.client().await;
    let generated = acme_data_key(&w, &mut conn).await;
    let key_id = generated["key_id"].as_str().unwrap();
    let mallory = w
        .issuer
        .identity("mallory", "evil", "research", &["owner", "analyst"]);
    let (status, body) = call(
        &mut conn,
        Method::POST,
        &unwrap_path(key_id),
        Cred::Bearer(&mallory),
        Some(&unwrap_body(&generated)),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(&body), "org_mismatch");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("evil"),
        "{body}"
    );
    assert!(body.get("plaintext").is_none());

    let denial = w.audit.events().pop().unwrap();
    assert_eq!(denial.outcome, Outcome::Denied);
    assert_eq!(denial.reason, Some(Reason::OrgMismatch));
    assert_eq!(denial.operation, Operation::UnwrapDataKey);
    assert_eq!(denial.org, "acme");
    assert_eq!(denial.subject.as_deref(), Some("user:mallory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_with_a_complete_grant_unwraps_its_datasets_key_and_nothing_else() {
    let w = world().await;
    let mut client = w.client().await;
    let generated = acme_data_key(&w, &mut client).await;
    let key_id = generated["key_id"].as_str().unwrap();
    let other = {
        let analyst = w.issuer.identity("ann", "acme", "research", &["analyst"]);
        let (status, body) = call(
            &mut client,
            Method::POST,
            "/v1/orgs/acme/data-keys",
            Cred::Bearer(&analyst),
            Some(r#"{"workspace":"research"}"#),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        body
    };

    let mut executor = w.executor().await;
    let grant = w.issuer.job_grant(
        "job-17",
        "acme",
        &[("ds-1", "acme", key_id)],
        &[("acme", "research")],
    );
    let (status, body) = call(
        &mut executor,
        Method::POST,
        &unwrap_path(key_id),
        Cred::Grant(&grant),
        Some(&unwrap_body(&generated)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["plaintext"], generated["plaintext"]);
    let allowed = w.audit.events().pop().unwrap();
    assert_eq!(
        (allowed.outcome, allowed.subject.as_deref()),
        (Outcome::Allowed, Some("job:job-17"))
    );
    assert_eq!(allowed.peer_role, Some(Role::Executor));

    // Another key of the same org, not a dataset of the job.
    let other_id = other["key_id"].as_str().unwrap();
    let (status, body) = call(
        &mut executor,
        Method::POST,
        &unwrap_path(other_id),
        Cred::Grant(&grant),
        Some(&unwrap_body(&other)),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(&body), "dataset_not_in_job");
    let denial = w.audit.events().pop().unwrap();
    assert_eq!(denial.reason, Some(Reason::DatasetNotInJob));
    assert_eq!(denial.key_id.as_deref(), Some(other_id));

    // The path names the job's key but the body carries another: refused before any decision.
    let (status, body) = call(
        &mut executor,
        Method::POST,
        &unwrap_path(key_id),
        Cred::Grant(&grant),
        Some(&unwrap_body(&other)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        (error_code(&body), body["error"]["field"].as_str()),
        ("wrapped_mismatch", Some("wrapped"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_400_naming_the_field_and_unknown_routes_404() {
    let w = world().await;
    let mut conn = w.client().await;
    let analyst = w.issuer.identity("ann", "acme", "research", &["analyst"]);
    let cases: &[(&str, Option<&str>, &str, &str)] = &[
        (
            "/v1/orgs/acme/data-keys",
            Some(r#"{"workspace":42}"#),
            "invalid_workspace",
            "workspace",
        ),
        (
            "/v1/orgs/acme/data-keys",
            Some("{}"),
            "invalid_workspace",
            "workspace",
        ),
        (
            "/v1/orgs/acme/data-keys",
            Some(r#"{"workspace":"a/b"}"#),
            "invalid_workspace",
            "workspace",
        ),
        (
            "/v1/orgs/acme/data-keys",
            Some(r#"{"workspace":"research","x":1}"#),
            "unknown_field",
            "body",
        ),
        (
            "/v1/orgs/acme/data-keys",
            Some("not json"),
            "invalid_body",
            "body",
        ),
        (
            "/v1/orgs/ac%20me/data-keys",
            Some(r#"{"workspace":"research"}"#),
            "invalid_org",
            "org",
        ),
        (
            "/v1/orgs/acme/data-keys/00000000000000000000000000000000/unwrap",
            Some(r#"{"wrapped":"abc"}"#),
            "invalid_wrapped",
            "wrapped",
        ),
        (
            "/v1/orgs/acme/data-keys/NOT-A-KEY/unwrap",
            Some("{}"),
            "invalid_key_id",
            "key_id",
        ),
    ];
    for (path, body, code, field) in cases {
        let (status, answer) =
            call(&mut conn, Method::POST, path, Cred::Bearer(&analyst), *body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body:?}: {answer}");
        assert_eq!(error_code(&answer), *code, "{path} {body:?}");
        assert_eq!(answer["error"]["field"], *field, "{path} {body:?}");
    }
    let (status, answer) = call(
        &mut conn,
        Method::GET,
        "/v1/nothing",
        Cred::Bearer(&analyst),
        None,
    )
    .await;
    assert_eq!(
        (status, error_code(&answer)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, answer) = call(
        &mut conn,
        Method::PUT,
        "/v1/orgs/acme/keys",
        Cred::Bearer(&analyst),
        None,
    )
    .await;
    assert_eq!(
        (status, error_code(&answer)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    // Input errors come before any decision: nothing was audited, nothing executed.
    assert!(w.audit.events().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_org_key_is_destroyed_nothing_unwraps() {
    let w = world().await;
    let mut conn = w.client().await;
    let generated = acme_data_key(&w, &mut conn).await;
    let key_id = generated["key_id"].as_str().unwrap();
    let owner = w.issuer.identity("olga", "acme", "research", &["owner"]);
    let (status, listing) = call(
        &mut conn,
        Method::GET,
        "/v1/orgs/acme/keys",
        Cred::Bearer(&owner),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{listing}");
    assert_eq!(listing["data_keys"][0]["key_id"], key_id);
    assert!(!listing
        .to_string()
        .contains(generated["plaintext"].as_str().unwrap()));

    let (status, body) = call(
        &mut conn,
        Method::DELETE,
        "/v1/orgs/acme/keys",
        Cred::Bearer(&owner),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["destroyed_at"].is_u64(), "{body}");

    let analyst = w.issuer.identity("ann", "acme", "research", &["analyst"]);
    let (status, body) = call(
        &mut conn,
        Method::POST,
        &unwrap_path(key_id),
        Cred::Bearer(&analyst),
        Some(&unwrap_body(&generated)),
    )
    .await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert_eq!(error_code(&body), "org_key_destroyed");
    assert!(body.get("plaintext").is_none());
    // The name is not reused either.
    let (status, body) = call(
        &mut conn,
        Method::POST,
        "/v1/orgs/acme/keys",
        Cred::Bearer(&owner),
        None,
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::GONE, "org_key_destroyed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_is_denied_and_audited() {
    let w = world().await;
    let mut conn = w.client().await;
    let request = Request::post("/v1/orgs/acme/keys")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = conn.send(request).await.unwrap();
    let body: Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(
        (response.status(), error_code(&body)),
        (StatusCode::FORBIDDEN, "credential_missing")
    );
    assert_eq!(w.audit.events()[0].reason, Some(Reason::CredentialMissing));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rotation_an_unwrap_answers_the_key_rewrapped_and_an_admin_rewraps_in_bulk() {
    let w = world().await;
    let mut conn = w.client().await;
    let generated = acme_data_key(&w, &mut conn).await;
    let key_id = generated["key_id"].as_str().unwrap();
    let owner = w.issuer.identity("olga", "acme", "research", &["owner"]);
    let analyst = w.issuer.identity("ann", "acme", "research", &["analyst"]);
    let (status, body) = call(
        &mut conn,
        Method::POST,
        "/v1/orgs/acme/keys/rotate",
        Cred::Bearer(&owner),
        None,
    )
    .await;
    assert_eq!(
        (status, &body["current"]),
        (StatusCode::OK, &json!(2)),
        "{body}"
    );

    // Lazy: the old wrapping unwraps, and the answer carries the same key under version 2.
    let (status, body) = call(
        &mut conn,
        Method::POST,
        &unwrap_path(key_id),
        Cred::Bearer(&analyst),
        Some(&unwrap_body(&generated)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["plaintext"], generated["plaintext"]);
    assert_eq!(body["rewrapped"]["kek_version"], 2, "{body}");
    let (status, again) = call(
        &mut conn,
        Method::POST,
        &unwrap_path(key_id),
        Cred::Bearer(&analyst),
        Some(&json!({ "wrapped": body["rewrapped"] }).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["plaintext"], generated["plaintext"]);
    assert!(again.get("rewrapped").is_none(), "{again}");

    // Bulk: an analyst may not, an admin may; a bad limit is 400 naming the field.
    let (status, body) = call(
        &mut conn,
        Method::POST,
        "/v1/orgs/acme/keys/rewrap",
        Cred::Bearer(&analyst),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let last = w.audit.events().last().cloned().unwrap();
    assert_eq!(last.operation, Operation::RewrapDataKeys);
    assert_eq!(last.outcome, Outcome::Denied);
    let (status, body) = call(
        &mut conn,
        Method::POST,
        "/v1/orgs/acme/keys/rewrap",
        Cred::Bearer(&owner),
        Some(r#"{"limit":0}"#),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_limit")
    );
    let (status, body) = call(
        &mut conn,
        Method::POST,
        "/v1/orgs/acme/keys/rewrap",
        Cred::Bearer(&owner),
        Some(r#"{"limit":10}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (
            &body["current_version"],
            &body["rewrapped"],
            &body["remaining"]
        ),
        (&json!(2), &json!(1), &json!(0)),
        "{body}"
    );
    let (_, listing) = call(
        &mut conn,
        Method::GET,
        "/v1/orgs/acme/keys",
        Cred::Bearer(&owner),
        None,
    )
    .await;
    assert_eq!(listing["data_keys"][0]["kek_version"], 2, "{listing}");
}
