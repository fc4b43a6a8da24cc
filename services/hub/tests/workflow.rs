//! The hub's whole workflow over its HTTP API, on SQLite and on a real PostgreSQL: two orgs,
//! their datasets, a join job, k-of-n approvals (with a refusal, a self-approval, a withdrawal),
//! the workload manager's start with a job grant, and the grant checked by the KMS's own
//! authorizer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::SystemTime;

use coffer_kms::authz::{AttestedPeer, Credential, Request};
use coffer_kms::{Authorizer, AuthzConfig, KeyId, OrgId};
use common::TestHub;
use serde_json::{json, Value};

const KEY_A: &str = "0123456789abcdef0123456789abcdef";
const KEY_B: &str = "fedcba9876543210fedcba9876543210";
const KEY_OTHER: &str = "00000000000000000000000000000000";

fn schema() -> Value {
    json!({"fields": [{"name": "id", "type": "int64"}, {"name": "amount", "type": "float64"}]})
}

/// The KMS's authorizer, trusting this hub as its control plane.
fn kms_authorizer(t: &TestHub) -> Authorizer {
    let issuer = serde_json::from_value(json!({
        "issuer": t.hub.keys.issuer(), "kind": "control_plane", "jwks": t.hub.keys.jwks()
    }))
    .unwrap();
    Authorizer::new(AuthzConfig::new(vec![issuer])).unwrap()
}

fn peer(role: coffer_types::Role) -> AttestedPeer {
    AttestedPeer {
        role,
        measurement: [7; 48],
    }
}

async fn notifications_of(t: &TestHub, username: &str) -> Vec<String> {
    use sqlx::Row;
    sqlx::query(
        "SELECT n.kind FROM notifications n JOIN users u ON u.id = n.user_id WHERE u.username = $1 ORDER BY n.seq",
    )
    .bind(username)
    .fetch_all(&t.hub.db)
    .await
    .unwrap()
    .iter()
    .map(|r| r.try_get::<String, _>("kind").unwrap())
    .collect()
}

async fn two_org_story(t: &TestHub) {
    let admin = t.admin().await;
    t.org(&admin, "acme", "research").await;
    t.org(&admin, "beta", "lab").await;
    let alice = t.user(&admin, "alice").await;
    let olga = t.user(&admin, "olga").await;
    let bob = t.user(&admin, "bob").await;
    let bea = t.user(&admin, "bea").await;
    let carl = t.user(&admin, "carl").await;
    t.member(&admin, "acme", "alice", &["analyst"], &["research"])
        .await;
    t.member(&admin, "acme", "olga", &["owner"], &[]).await;
    t.member(&admin, "beta", "bob", &["approver"], &[]).await;
    t.member(&admin, "beta", "bea", &["approver"], &[]).await;
    t.member(&admin, "beta", "carl", &["analyst"], &["lab"])
        .await;

    // Datasets: acme's needs one owner; beta's needs two approvers and is shared.
    let ds_a = t
        .ok(
            201,
            "POST",
            "/v1/orgs/acme/datasets",
            Some(&alice),
            Some(json!({
            "workspace": "research", "name": "payments", "schema": schema(),
            "location": "file:///data/acme/payments", "key_id": KEY_A,
            "policy": {"roles": ["owner"], "k": 1}})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ds_b = t
        .ok(
            201,
            "POST",
            "/v1/orgs/beta/datasets",
            Some(&carl),
            Some(json!({
            "workspace": "lab", "name": "customers", "schema": schema(),
            "location": "s3://beta-bucket/customers", "key_id": KEY_B,
            "policy": {"roles": ["approver"], "k": 2}, "shared": true})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // alice sees beta's shared dataset, not acme's own through the shared list.
    let shared = t.ok(200, "GET", "/v1/datasets", Some(&alice), None).await;
    let ids: Vec<&str> = shared["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![ds_b.as_str()]);
    // A user of another org cannot see acme's unshared dataset: it does not exist for them.
    let (status, body) = t
        .call("GET", &format!("/v1/datasets/{ds_a}"), Some(&carl), None)
        .await;
    assert_eq!(status, 404, "{body}");

    // The job: an encrypted definition (opaque to the hub) over both datasets.
    let job = t
        .ok(
            201,
            "POST",
            "/v1/jobs",
            Some(&alice),
            Some(json!({
            "org": "acme", "workspace": "research", "name": "join",
            "definition": "c2VhbGVkIGRlZmluaXRpb24=", "datasets": [ds_a, ds_b], "submit": true})),
        )
        .await;
    assert_eq!(job["state"], "pending_approval");
    let job = job["id"].as_str().unwrap().to_owned();
    assert_eq!(
        notifications_of(t, "bob").await,
        vec!["job.approval_requested"]
    );
    assert_eq!(
        notifications_of(t, "olga").await,
        vec!["job.approval_requested"]
    );
    assert!(
        notifications_of(t, "carl").await.is_empty(),
        "carl's role does not count"
    );

    let approve = |token: String| {
        let job = job.clone();
        async move {
            t.call(
                "POST",
                &format!("/v1/jobs/{job}/approve"),
                Some(&token),
                None,
            )
            .await
        }
    };
    // Separation of duties, and a role that does not count.
    let (s, b) = approve(alice.clone()).await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (403, Some("self_approval")),
        "{b}"
    );
    let (s, b) = approve(carl.clone()).await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (403, Some("not_an_approver")),
        "{b}"
    );

    let (s, b) = approve(bob.clone()).await;
    assert_eq!(
        (s.as_u16(), b["state"].as_str()),
        (200, Some("pending_approval")),
        "{b}"
    );
    let (s, b) = approve(bob.clone()).await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (409, Some("already_approved")),
        "{b}"
    );
    let (_, b) = approve(olga.clone()).await;
    assert_eq!(
        b["state"], "pending_approval",
        "beta still needs a second approver: {b}"
    );
    let (_, b) = approve(bea.clone()).await;
    assert_eq!(b["state"], "approved", "{b}");
    let detail = t
        .ok(200, "GET", &format!("/v1/jobs/{job}"), Some(&alice), None)
        .await;
    assert_eq!(detail["approved"], true);
    let beta = detail["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == ds_b.as_str())
        .unwrap();
    assert_eq!(
        beta["approval"],
        json!({"have": 2, "need": 2, "met": true}),
        "{detail}"
    );

    // A withdrawal before the job runs sends it back; approving again brings it forward.
    let b = t
        .ok(
            200,
            "POST",
            &format!("/v1/jobs/{job}/withdraw"),
            Some(&bea),
            None,
        )
        .await;
    assert_eq!(b["state"], "pending_approval");
    let (_, b) = approve(bea.clone()).await;
    assert_eq!(b["state"], "approved");
    assert!(notifications_of(t, "alice")
        .await
        .contains(&"job.approved".to_owned()));

    // The workload manager: a service account, and only it, schedules and starts.
    let sched = t
        .ok(
            201,
            "POST",
            "/v1/service-accounts",
            Some(&admin),
            Some(json!({"name": "wm", "kind": "scheduler"})),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = t.call("GET", "/v1/queue", Some(&alice), None).await;
    assert_eq!(s, 403);
    let queue = t.ok(200, "GET", "/v1/queue", Some(&sched), None).await;
    assert_eq!(queue["jobs"][0]["id"], job.as_str());
    let (s, b) = t
        .call("POST", &format!("/v1/jobs/{job}/start"), Some(&sched), None)
        .await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (409, Some("invalid_transition")),
        "{b}"
    );
    t.ok(
        200,
        "POST",
        &format!("/v1/jobs/{job}/schedule"),
        Some(&sched),
        None,
    )
    .await;
    let started = t
        .ok(
            200,
            "POST",
            &format!("/v1/jobs/{job}/start"),
            Some(&sched),
            None,
        )
        .await;
    assert_eq!(started["state"], "running");
    assert_eq!(started["definition"], "c2VhbGVkIGRlZmluaXRpb24=");
    let grant = started["grant"].as_str().unwrap().to_owned();

    // The KMS, trusting this hub, lets an executor with the grant unwrap exactly the job's keys.
    let kms = kms_authorizer(t);
    let now = SystemTime::now();
    let exec = peer(coffer_types::Role::Executor);
    let unwrap = |org: &str, key: &str| Request::UnwrapDataKey {
        org: OrgId::new(org).unwrap(),
        key_id: KeyId::parse(key).unwrap(),
    };
    let d = kms.authorize(
        &unwrap("beta", KEY_B),
        Some(&exec),
        &Credential::JobGrant(grant.clone()),
        now,
    );
    assert!(d.is_allowed(), "{:?}", d.denial());
    let d = kms.authorize(
        &unwrap("acme", KEY_A),
        Some(&exec),
        &Credential::JobGrant(grant.clone()),
        now,
    );
    assert!(d.is_allowed(), "{:?}", d.denial());
    let d = kms.authorize(
        &unwrap("beta", KEY_OTHER),
        Some(&exec),
        &Credential::JobGrant(grant.clone()),
        now,
    );
    assert!(!d.is_allowed(), "a key outside the job must be refused");
    // And an identity token the hub signs lets alice generate keys in her workspace only.
    let token = t
        .ok(
            200,
            "POST",
            "/v1/tokens/identity",
            Some(&alice),
            Some(json!({"org": "acme", "workspace": "research"})),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let client = peer(coffer_types::Role::Client);
    let generate = |ws: &str| Request::GenerateDataKey {
        org: OrgId::new("acme").unwrap(),
        workspace: ws.into(),
    };
    let d = kms.authorize(
        &generate("research"),
        Some(&client),
        &Credential::IdentityToken(token.clone()),
        now,
    );
    assert!(d.is_allowed(), "{:?}", d.denial());
    let d = kms.authorize(
        &generate("other"),
        Some(&client),
        &Credential::IdentityToken(token),
        now,
    );
    assert!(!d.is_allowed());
    let (s, _) = t
        .call(
            "POST",
            "/v1/tokens/identity",
            Some(&alice),
            Some(json!({"org": "beta", "workspace": "lab"})),
        )
        .await;
    assert_eq!(s, 403, "alice is not in beta");

    // Approvals close once the job runs; the job finishes; everyone was told.
    let (s, b) = t
        .call(
            "POST",
            &format!("/v1/jobs/{job}/withdraw"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (409, Some("approvals_closed")),
        "{b}"
    );
    let done = t
        .ok(
            200,
            "POST",
            &format!("/v1/jobs/{job}/finish"),
            Some(&sched),
            Some(json!({"outcome": "succeeded"})),
        )
        .await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(
        notifications_of(t, "alice")
            .await
            .last()
            .map(String::as_str),
        Some("job.succeeded")
    );
    let detail = t
        .ok(200, "GET", &format!("/v1/jobs/{job}"), Some(&bob), None)
        .await;
    let trail: Vec<&str> = detail["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        trail,
        [
            "draft",
            "pending_approval",
            "approved",
            "pending_approval",
            "approved",
            "scheduled",
            "running",
            "succeeded"
        ]
    );

    // Every step is in the audit log, in order.
    use sqlx::Row;
    let actions: Vec<String> = sqlx::query("SELECT body FROM audit_entries ORDER BY idx")
        .fetch_all(&t.hub.db)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let body: Value =
                serde_json::from_str(&r.try_get::<String, _>("body").unwrap()).unwrap();
            format!(
                "{} {}",
                body["action"].as_str().unwrap(),
                body["outcome"].as_str().unwrap()
            )
        })
        .collect();
    for wanted in [
        "job.create ok",
        "job.submit ok",
        "job.approve denied",
        "job.approve ok",
        "job.withdraw ok",
        "job.policy_met ok",
        "job.policy_unmet ok",
        "job.grant ok",
        "job.succeed ok",
        "token.identity ok",
    ] {
        assert!(
            actions.iter().any(|a| a == wanted),
            "{wanted:?} not in the audit log: {actions:?}"
        );
    }
    assert_eq!(t.hub.audit.size(), actions.len() as u64);
}

#[tokio::test]
async fn two_orgs_join_with_approvals_on_sqlite() {
    let t = TestHub::sqlite().await;
    two_org_story(&t).await;
}

#[tokio::test]
async fn two_orgs_join_with_approvals_on_postgres() {
    let pg = common::postgres::Postgres::start();
    let url = pg.create_database("hub").await;
    let t = TestHub::with_database(url).await;
    two_org_story(&t).await;
}

#[tokio::test]
async fn a_dropped_role_no_longer_counts_and_the_job_cannot_start() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    t.org(&admin, "acme", "w").await;
    t.org(&admin, "beta", "w").await;
    let alice = t.user(&admin, "alice").await;
    let bob = t.user(&admin, "bob").await;
    t.member(&admin, "acme", "alice", &["analyst"], &["w"])
        .await;
    t.member(&admin, "beta", "bob", &["approver"], &[]).await;
    let ds = t
        .ok(201, "POST", "/v1/orgs/beta/datasets", Some(&admin), Some(json!({
            "workspace": "w", "name": "d", "schema": schema(), "location": "file:///d", "key_id": KEY_B,
            "policy": {"roles": ["approver"], "k": 1}, "shared": true})))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = t
        .ok(201, "POST", "/v1/jobs", Some(&alice), Some(json!({
            "org": "acme", "workspace": "w", "name": "j", "definition": "AA==", "datasets": [ds], "submit": true})))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = t
        .ok(
            200,
            "POST",
            &format!("/v1/jobs/{job}/approve"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(b["state"], "approved");
    let sched = t
        .ok(
            201,
            "POST",
            "/v1/service-accounts",
            Some(&admin),
            Some(json!({"name": "wm", "kind": "scheduler"})),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    t.ok(
        200,
        "POST",
        &format!("/v1/jobs/{job}/schedule"),
        Some(&sched),
        None,
    )
    .await;
    // bob loses the approver role after approving: his approval stops counting.
    t.member(&admin, "beta", "bob", &["analyst"], &[]).await;
    let (s, b) = t
        .call("POST", &format!("/v1/jobs/{job}/start"), Some(&sched), None)
        .await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (409, Some("policy_unmet")),
        "{b}"
    );
    let detail = t
        .ok(200, "GET", &format!("/v1/jobs/{job}"), Some(&alice), None)
        .await;
    assert_eq!(detail["state"], "pending_approval");
}

#[tokio::test]
async fn bad_input_is_refused_with_a_code_naming_it() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    t.org(&admin, "acme", "w").await;
    t.member(&admin, "acme", "admin", &["owner"], &["w"]).await;
    let cases = [
        (
            json!({"workspace": "w", "name": "d", "schema": {"fields": []}, "location": "file:///d", "key_id": KEY_A,
                "policy": {"roles": ["owner"], "k": 1}}),
            "invalid_schema",
        ),
        (
            json!({"workspace": "w", "name": "d", "schema": {"fields": [{"name": "a", "type": "varchar"}]},
                "location": "file:///d", "key_id": KEY_A, "policy": {"roles": ["owner"], "k": 1}}),
            "invalid_schema",
        ),
        (
            json!({"workspace": "w", "name": "d", "schema": schema(), "location": "ftp://x/d", "key_id": KEY_A,
                "policy": {"roles": ["owner"], "k": 1}}),
            "invalid_location",
        ),
        (
            json!({"workspace": "w", "name": "d", "schema": schema(), "location": "file:///d", "key_id": "xyz",
                "policy": {"roles": ["owner"], "k": 1}}),
            "invalid_key_id",
        ),
        (
            json!({"workspace": "w", "name": "d", "schema": schema(), "location": "file:///d", "key_id": KEY_A,
                "policy": {"roles": ["owner"], "k": 0}}),
            "invalid_policy",
        ),
        (
            json!({"workspace": "w", "name": "d", "schema": schema(), "location": "file:///d", "key_id": KEY_A,
                "policy": {"roles": [], "k": 1}}),
            "invalid_policy",
        ),
        (
            json!({"workspace": "w", "name": "d", "schema": schema(), "location": "file:///d", "key_id": KEY_A,
                "policy": {"roles": ["owner"], "k": 1}, "approved": true}),
            "invalid_body",
        ),
    ];
    for (body, code) in cases {
        let (s, b) = t
            .call(
                "POST",
                "/v1/orgs/acme/datasets",
                Some(&admin),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (s.as_u16(), b["error"]["code"].as_str()),
            (400, Some(code)),
            "{body} -> {b}"
        );
        assert!(!b["error"]["message"].as_str().unwrap().is_empty());
    }
    let (s, b) = t
        .call(
            "POST",
            "/v1/jobs",
            Some(&admin),
            Some(json!({"org": "acme", "workspace": "w", "name": "j",
            "definition": "not base64!", "datasets": ["ds-x"]})),
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (400, Some("invalid_definition")),
        "{b}"
    );
    // A malformed optional body is refused, not taken as empty.
    let (s, b) = t
        .call(
            "POST",
            "/v1/jobs/job-x/cancel",
            Some(&admin),
            Some(json!([1])),
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (400, Some("invalid_body")),
        "{b}"
    );
    let (s, b) = t.call("GET", "/v1/nowhere", Some(&admin), None).await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{b}"
    );
}
