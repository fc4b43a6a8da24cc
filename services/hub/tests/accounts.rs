//! Signing in: passwords with a failure limit, sessions that end, OIDC ID tokens checked
//! against the issuer's keys, and who may manage whom.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64ct::{Base64UrlUnpadded, Encoding};
use coffer_hub::config::OidcIssuer;
use coffer_hub::HubConfig;
use common::TestHub;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;

#[tokio::test]
async fn five_failed_sign_ins_lock_the_account_even_against_the_right_password() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    t.user(&admin, "alice").await;
    for i in 0..5 {
        let (s, b) = t
            .call(
                "POST",
                "/v1/auth/login",
                None,
                Some(json!({"username": "alice", "password": format!("wrong-{i}")})),
            )
            .await;
        assert_eq!(
            (s.as_u16(), b["error"]["code"].as_str()),
            (401, Some("unauthenticated")),
            "{b}"
        );
    }
    let resp = t
        .http
        .post(format!("{}/v1/auth/login", t.base))
        .json(&json!({"username": "alice", "password": "alice-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry), "Retry-After {retry}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_attempts");
    // Another account is not affected; an unknown account answers like a wrong password.
    t.login("admin", &t.admin_password.clone()).await;
    let (s, _) = t
        .call(
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"username": "nobody", "password": "whatever-it-is"})),
        )
        .await;
    assert_eq!(s, 401);
    // The failures and the lock are in the audit log.
    use sqlx::Row;
    let denied: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM audit_entries WHERE body LIKE '%\"action\":\"auth.login\"%' AND body LIKE '%\"outcome\":\"denied\"%'",
    )
    .fetch_one(&t.hub.db)
    .await
    .unwrap()
    .try_get("n")
    .unwrap();
    assert_eq!(denied, 7, "5 wrong passwords, 1 lock, 1 unknown account");
}

#[tokio::test]
async fn a_session_ends_at_sign_out_and_tokens_are_stored_hashed() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    let me = t.ok(200, "GET", "/v1/me", Some(&admin), None).await;
    assert_eq!(me["admin"], true);
    use sqlx::Row;
    let stored: Vec<String> = sqlx::query("SELECT token_hash FROM sessions")
        .fetch_all(&t.hub.db)
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get("token_hash").unwrap())
        .collect();
    assert!(
        !stored.iter().any(|h| h == &admin),
        "the bearer token itself is never stored"
    );
    assert!(stored.contains(&coffer_hub::auth::token_hash(&admin)));
    t.ok(204, "POST", "/v1/auth/logout", Some(&admin), None)
        .await;
    let (s, b) = t.call("GET", "/v1/me", Some(&admin), None).await;
    assert_eq!(s, 401);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signed out"),
        "{b}"
    );
    let (s, b) = t.call("GET", "/v1/me", Some("cs_forged"), None).await;
    assert_eq!(s, 401, "{b}");
    let (s, b) = t.call("GET", "/v1/me", None, None).await;
    assert_eq!(s, 401, "{b}");
}

#[tokio::test]
async fn only_org_managers_manage_members_and_only_owners_make_owners() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    t.org(&admin, "acme", "w").await;
    let olga = t.user(&admin, "olga").await;
    let adam = t.user(&admin, "adam").await;
    let alice = t.user(&admin, "alice").await;
    t.member(&admin, "acme", "olga", &["owner"], &[]).await;
    t.member(&admin, "acme", "adam", &["admin"], &[]).await;
    // An org admin can add an analyst but not an owner; an analyst can do neither.
    t.member(&adam, "acme", "alice", &["analyst"], &["w"]).await;
    let (s, b) = t
        .call(
            "PUT",
            "/v1/orgs/acme/members/alice",
            Some(&adam),
            Some(json!({"roles": ["owner"]})),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    let (s, _) = t
        .call(
            "PUT",
            "/v1/orgs/acme/members/adam",
            Some(&alice),
            Some(json!({"roles": ["analyst"]})),
        )
        .await;
    assert_eq!(s, 403);
    t.member(&olga, "acme", "alice", &["owner"], &[]).await;
    let (s, b) = t
        .call(
            "PUT",
            "/v1/orgs/acme/members/alice",
            Some(&olga),
            Some(json!({"roles": ["wizard"]})),
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (400, Some("invalid_role")),
        "{b}"
    );
    // Only deployment administrators create users and orgs.
    let (s, _) = t
        .call(
            "POST",
            "/v1/users",
            Some(&olga),
            Some(json!({"username": "x", "password": "long-enough-pw"})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = t
        .call(
            "POST",
            "/v1/orgs",
            Some(&olga),
            Some(json!({"id": "other"})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, b) = t
        .call(
            "POST",
            "/v1/users",
            Some(&admin),
            Some(json!({"username": "y", "password": "short"})),
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (400, Some("weak_password")),
        "{b}"
    );
}

struct OidcIdp {
    pkcs8: Vec<u8>,
    jwk: serde_json::Value,
}

impl OidcIdp {
    fn new() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Self {
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": "idp-1",
                        "x": Base64UrlUnpadded::encode_string(pair.public_key().as_ref())}),
            pkcs8: pkcs8.as_ref().to_vec(),
        }
    }

    fn id_token(&self, iss: &str, aud: &str, sub: &str, exp_in: i64) -> String {
        let now = coffer_hub::db::now();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("idp-1".into());
        jsonwebtoken::encode(
            &header,
            &json!({"iss": iss, "aud": aud, "sub": sub, "iat": now, "exp": now + exp_in}),
            &jsonwebtoken::EncodingKey::from_ed_der(&self.pkcs8),
        )
        .unwrap()
    }
}

#[tokio::test]
async fn oidc_id_tokens_sign_in_linked_users_only() {
    let idp = OidcIdp::new();
    let dir = tempfile::tempdir().unwrap();
    let config = HubConfig {
        database_url: format!("sqlite://{}", dir.path().join("hub.db").display()),
        state_dir: dir.path().join("state"),
        issuer: "https://hub.test".into(),
        audit_origin: "coffer/test/audit".into(),
        oidc: vec![OidcIssuer {
            issuer: "https://idp.test".into(),
            client_id: "coffer".into(),
            jwks: json!({"keys": [idp.jwk]}),
        }],
        kms: None,
    };
    let t = TestHub::start_with(dir, config).await;
    let admin = t.admin().await;
    t.ok(
        201,
        "POST",
        "/v1/users",
        Some(&admin),
        Some(
            json!({"username": "dana", "oidc": {"issuer": "https://idp.test", "subject": "u-123"}}),
        ),
    )
    .await;
    let t = &t;
    let login = |token: String| async move {
        t.call(
            "POST",
            "/v1/auth/oidc",
            None,
            Some(json!({"id_token": token})),
        )
        .await
    };

    let (s, b) = login(idp.id_token("https://idp.test", "coffer", "u-123", 300)).await;
    assert_eq!(s, 200, "{b}");
    let me = t
        .ok(
            200,
            "GET",
            "/v1/me",
            Some(b["token"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(me["username"], "dana");

    let (s, b) = login(idp.id_token("https://idp.test", "coffer", "u-999", 300)).await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (401, Some("oidc_identity_unknown")),
        "{b}"
    );
    let (s, b) = login(idp.id_token("https://idp.test", "another-app", "u-123", 300)).await;
    assert_eq!(s, 401, "wrong audience: {b}");
    let (s, b) = login(idp.id_token("https://idp.test", "coffer", "u-123", -3600)).await;
    assert_eq!(s, 401, "expired: {b}");
    let (s, b) = login(idp.id_token("https://evil.test", "coffer", "u-123", 300)).await;
    assert_eq!(s, 401, "unknown issuer: {b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not configured"),
        "{b}"
    );
    // Signed by another key under the same kid.
    let forged = OidcIdp::new().id_token("https://idp.test", "coffer", "u-123", 300);
    let (s, b) = login(forged).await;
    assert_eq!(s, 401, "forged: {b}");
}

#[tokio::test]
async fn fifty_failures_from_one_address_stop_it_trying_passwords_on_any_account() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    t.user(&admin, "alice").await;
    // One password tried on many accounts (most do not exist): each a failure from 127.0.0.1.
    for i in 0..coffer_hub::config::LOGIN_MAX_FAILURES_PER_ADDRESS {
        let (s, _) = t
            .call(
                "POST",
                "/v1/auth/login",
                None,
                Some(json!({"username": format!("user{i}"), "password": "Summer2026!!"})),
            )
            .await;
        assert_eq!(s, 401);
    }
    // Now even a right password for an account with no failures of its own is refused.
    let (s, b) = t
        .call(
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"username": "alice", "password": "alice-password-1"})),
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (429, Some("too_many_attempts")),
        "{b}"
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("from this address"),
        "{b}"
    );
    // The session already held keeps working.
    t.ok(200, "GET", "/v1/me", Some(&admin), None).await;
}
