//! Bad input that made the hub answer 500 (found by `tests/schemathesis.rs` and the review
//! around it), each now a 400 that names what was wrong. Most of them failed on PostgreSQL
//! only: it refuses text with a NUL character, and index entries longer than a page allows.
//! `make test` runs this file on both backends.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::TestHub;
use serde_json::{json, Value};

/// Asserts a 400 with `code` whose message contains `needle`.
fn assert_400(what: &str, answer: &(reqwest::StatusCode, Value), code: &str, needle: &str) {
    let (status, body) = answer;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (400, Some(code)),
        "{what}: {body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(needle),
        "{what}: {message:?} lacks {needle:?}"
    );
}

/// A string no compression shortens much: `n` hex digits of fresh ids.
fn incompressible(n: usize) -> String {
    let mut s = String::new();
    while s.len() < n {
        s.push_str(&coffer_hub::db::new_id(""));
    }
    s.truncate(n);
    s
}

#[tokio::test]
async fn text_with_a_nul_character_is_refused_by_where_it_is() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    t.org(&admin, "acme", "research").await;
    // A JSON field (was: 500 on PostgreSQL, "invalid byte sequence for encoding UTF8: 0x00").
    let answer = t
        .call(
            "POST",
            "/v1/orgs",
            Some(&admin),
            Some(json!({"id": "beta", "name": "be\u{0}ta"})),
        )
        .await;
    assert_400("org name", &answer, "invalid_body", "request body: name");
    let (s, b) = t.call("GET", "/v1/orgs", Some(&admin), None).await;
    assert_eq!(s, 200);
    assert_eq!(
        b["orgs"].as_array().unwrap().len(),
        1,
        "nothing was created: {b}"
    );
    // Nested, and in a list.
    let answer = t
        .call(
            "PUT",
            "/v1/orgs/acme/members/admin",
            Some(&admin),
            Some(json!({"roles": ["owner"], "workspaces": ["research", "\u{0}"]})),
        )
        .await;
    assert_400("workspace list", &answer, "invalid_body", "workspaces[1]");
    let answer = t
        .call(
            "POST",
            "/v1/users",
            Some(&admin),
            Some(
                json!({"username": "carol", "oidc": {"issuer": "https://i\u{0}", "subject": "c"}}),
            ),
        )
        .await;
    assert_400("nested field", &answer, "invalid_body", "oidc.issuer");
    // Signing in, before any account is looked up.
    let answer = t
        .call(
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"username": "\u{0}", "password": "whatever-it-is"})),
        )
        .await;
    assert_400("login", &answer, "invalid_body", "username");
    // An optional body (a job's cancel reason; a finish detail is the same extractor).
    let answer = t
        .call(
            "POST",
            "/v1/jobs/job-1/cancel",
            Some(&admin),
            Some(json!({"reason": "because\u{0}"})),
        )
        .await;
    assert_400("cancel reason", &answer, "invalid_body", "reason");
    // A path parameter, and a query parameter.
    let answer = t
        .call("GET", "/v1/datasets/ds%00x", Some(&admin), None)
        .await;
    assert_400("path", &answer, "invalid_path", "ds%00x");
    let answer = t
        .call(
            "GET",
            "/v1/orgs/acme/datasets?workspace=r%00",
            Some(&admin),
            None,
        )
        .await;
    assert_400("query", &answer, "invalid_query", "workspace");
    let answer = t.call("GET", "/v1/jobs?org=%00", Some(&admin), None).await;
    assert_400("query", &answer, "invalid_query", "org");
    // A backslash-u in text is not a NUL.
    t.ok(
        201,
        "POST",
        "/v1/orgs",
        Some(&admin),
        Some(json!({"id": "gamma", "name": "back\\u0000slash"})),
    )
    .await;
}

#[tokio::test]
async fn a_path_that_is_not_utf8_is_refused_with_the_error_body() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    // Was axum's own text/plain 400, not the API's error body.
    let answer = t.call("GET", "/v1/jobs/%FF", Some(&admin), None).await;
    assert_400("path", &answer, "invalid_path", "UTF-8");
}

#[tokio::test]
async fn a_name_that_cannot_be_a_user_is_refused_at_sign_in_and_not_recorded() {
    let t = TestHub::new().await;
    // Was: 500 on PostgreSQL (the failure was recorded under the name, in an index whose
    // entries may not exceed a page).
    let long = incompressible(12_000);
    let answer = t
        .call(
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"username": long, "password": "whatever-it-is"})),
        )
        .await;
    assert_400("long name", &answer, "invalid_username", "must be 1-64");
    let answer = t
        .call(
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"username": "Not A Name", "password": "whatever-it-is"})),
        )
        .await;
    assert_400("odd name", &answer, "invalid_username", "Not A Name");
    use sqlx::Row;
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM login_failures")
        .fetch_one(&t.hub.db)
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    assert_eq!(n, 0);
    // A well-formed unknown name is still a plain wrong sign-in.
    let (s, b) = t
        .call(
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"username": "nobody", "password": "whatever-it-is"})),
        )
        .await;
    assert_eq!(
        (s.as_u16(), &b["error"]["code"]),
        (401, &json!("unauthenticated"))
    );
}

#[tokio::test]
async fn an_oidc_identity_to_link_has_bounded_lengths() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    // Was: 500 on PostgreSQL (issuer and subject are the key of oidc_identities).
    let answer = t
        .call(
            "POST",
            "/v1/users",
            Some(&admin),
            Some(json!({"username": "carol", "oidc": {"issuer": incompressible(12_000), "subject": "c"}})),
        )
        .await;
    assert_400("issuer", &answer, "invalid_oidc", "issuer is 12000 bytes");
    let answer = t
        .call(
            "POST",
            "/v1/users",
            Some(&admin),
            Some(json!({"username": "carol", "oidc": {"issuer": "https://idp.example", "subject": "s".repeat(256)}})),
        )
        .await;
    assert_400("subject", &answer, "invalid_oidc", "subject is 256 bytes");
    let answer = t
        .call(
            "POST",
            "/v1/users",
            Some(&admin),
            Some(json!({"username": "carol", "oidc": {"issuer": "", "subject": "c"}})),
        )
        .await;
    assert_400("empty issuer", &answer, "invalid_oidc", "issuer is 0 bytes");
    t.ok(
        201,
        "POST",
        "/v1/users",
        Some(&admin),
        Some(json!({"username": "carol", "oidc": {"issuer": "https://idp.example", "subject": "s".repeat(255)}})),
    )
    .await;
}

#[tokio::test]
async fn a_workspace_named_twice_makes_one_membership() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    t.org(&admin, "acme", "research").await;
    t.user(&admin, "alice").await;
    // Was: 500 (the second insert broke workspace_members' primary key).
    let set = t
        .ok(
            200,
            "PUT",
            "/v1/orgs/acme/members/alice",
            Some(&admin),
            Some(json!({"roles": ["analyst"], "workspaces": ["research", "research"]})),
        )
        .await;
    assert_eq!(set["workspaces"], json!(["research"]));
    let alice = t.login("alice", "alice-password-1").await;
    let me = t.ok(200, "GET", "/v1/me", Some(&alice), None).await;
    assert_eq!(
        me["orgs"]["acme"]["workspaces"],
        json!(["research"]),
        "{me}"
    );
}

#[tokio::test]
async fn an_optional_body_may_be_null() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    // The description says so (an optional body is nullable): `null` is no body, not a 400.
    let (s, b) = t
        .call(
            "POST",
            "/v1/jobs/job-none/cancel",
            Some(&admin),
            Some(Value::Null),
        )
        .await;
    assert_eq!(
        (s.as_u16(), &b["error"]["code"]),
        (404, &json!("not_found")),
        "{b}"
    );
}

/// An org owner could get an identity token naming any string as workspace (owners belong to
/// every workspace of their org): now only an existing, well-formed one.
#[tokio::test]
async fn an_identity_token_names_only_a_workspace_the_org_has() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    t.org(&admin, "acme", "research").await;
    let olga = t.user(&admin, "olga").await;
    t.member(&admin, "acme", "olga", &["owner"], &[]).await;
    let ask = |ws: &str| {
        let body = json!({"org": "acme", "workspace": ws});
        let olga = olga.clone();
        let t = &t;
        async move {
            t.call("POST", "/v1/tokens/identity", Some(&olga), Some(body))
                .await
        }
    };
    let (status, body) = ask("research").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = ask("nowhere").await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    assert_400(
        "a malformed workspace",
        &ask("a b/c").await,
        "invalid_workspace",
        "a b/c",
    );
}

/// Two hub processes on one database would each keep their own write lock and audit tree:
/// the second is refused at start, naming why.
#[tokio::test]
async fn a_second_hub_on_the_same_database_is_refused() {
    let t = TestHub::new().await;
    let err = coffer_hub::Hub::open(t.hub.config.clone())
        .await
        .expect_err("a second hub on the same database must not start");
    assert!(
        err.to_string()
            .contains("another coffer-hub uses this database"),
        "{err}"
    );
}
