//! The authorisation matrix: nobody reads or changes another org's workspaces, datasets, jobs
//! or inbox; an analyst cannot approve; an approver of one org cannot approve for another's
//! dataset; roles bound what members do in their own org. One table, every row a sentence.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::TestHub;
use serde_json::{json, Value};

const KEY: &str = "0123456789abcdef0123456789abcdef";

struct World {
    t: TestHub,
    tokens: std::collections::BTreeMap<&'static str, String>,
    ds_acme: String,
    ds_beta: String,
    job_draft: String,
    job_join: String,
}

async fn world() -> World {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    t.org(&admin, "acme", "research").await;
    t.org(&admin, "beta", "lab").await;
    t.ok(
        201,
        "POST",
        "/v1/orgs/acme/workspaces",
        Some(&admin),
        Some(json!({"name": "other"})),
    )
    .await;
    let mut tokens = std::collections::BTreeMap::new();
    for (name, org, roles, ws) in [
        ("olga", "acme", &["owner"][..], &[][..]),
        ("alice", "acme", &["analyst"][..], &["research"][..]),
        ("aaron", "acme", &["approver"][..], &[][..]),
        ("audrey", "acme", &["auditor"][..], &[][..]),
        ("bob", "beta", &["approver"][..], &[][..]),
        ("carl", "beta", &["analyst"][..], &["lab"][..]),
    ] {
        tokens.insert(name, t.user(&admin, name).await);
        t.member(&admin, org, name, roles, ws).await;
    }
    tokens.insert("sched", {
        let v = t
            .ok(
                201,
                "POST",
                "/v1/service-accounts",
                Some(&admin),
                Some(json!({"name": "wm", "kind": "scheduler"})),
            )
            .await;
        v["token"].as_str().unwrap().to_owned()
    });
    tokens.insert("admin", admin);
    let dataset = |org: &'static str, ws: &'static str, who: &'static str, shared: bool| {
        let t = &t;
        let token = tokens[who].clone();
        async move {
            t.ok(201, "POST", &format!("/v1/orgs/{org}/datasets"), Some(&token), Some(json!({
                "workspace": ws, "name": "d", "location": "file:///d", "key_id": KEY, "shared": shared,
                "schema": {"fields": [{"name": "x", "type": "int64"}]},
                "policy": {"roles": ["approver"], "k": 1}})))
                .await["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let ds_acme = dataset("acme", "research", "alice", false).await;
    let ds_beta = dataset("beta", "lab", "carl", true).await;
    let job = |datasets: Vec<&String>, submit: bool| {
        let t = &t;
        let token = tokens["alice"].clone();
        let datasets: Vec<String> = datasets.into_iter().cloned().collect();
        async move {
            t.ok(
                201,
                "POST",
                "/v1/jobs",
                Some(&token),
                Some(json!({
                "org": "acme", "workspace": "research", "name": "j", "definition": "AA==",
                "datasets": datasets, "submit": submit})),
            )
            .await["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let job_draft = job(vec![&ds_acme], false).await;
    let job_join = job(vec![&ds_acme, &ds_beta], true).await;
    World {
        t,
        tokens,
        ds_acme,
        ds_beta,
        job_draft,
        job_join,
    }
}

#[tokio::test]
async fn nobody_reaches_into_another_org_and_roles_bound_what_members_do() {
    let w = world().await;
    let (da, db, jd, jj) = (&w.ds_acme, &w.ds_beta, &w.job_draft, &w.job_join);
    let ds_body = json!({"workspace": "research", "name": "x", "location": "file:///x", "key_id": KEY,
        "schema": {"fields": [{"name": "x", "type": "int64"}]}, "policy": {"roles": ["owner"], "k": 1}});
    let job_body = json!({"org": "acme", "workspace": "research", "name": "j", "definition": "AA==", "datasets": [da]});
    // (who, method, path, body, expected status, why)
    type Row<'a> = (&'a str, &'a str, String, Option<Value>, u16, &'a str);
    let rows: Vec<Row<'_>> = vec![
        // Another org's members.
        (
            "carl",
            "GET",
            "/v1/orgs/acme/workspaces".into(),
            None,
            403,
            "beta's analyst lists acme's workspaces",
        ),
        (
            "carl",
            "POST",
            "/v1/orgs/acme/workspaces".into(),
            Some(json!({"name": "x"})),
            403,
            "beta's analyst creates an acme workspace",
        ),
        (
            "carl",
            "GET",
            "/v1/orgs/acme/members".into(),
            None,
            403,
            "beta's analyst lists acme's members",
        ),
        (
            "carl",
            "PUT",
            "/v1/orgs/acme/members/carl".into(),
            Some(json!({"roles": ["owner"]})),
            403,
            "beta's analyst joins acme as owner",
        ),
        (
            "carl",
            "GET",
            "/v1/orgs/acme/datasets".into(),
            None,
            403,
            "beta's analyst lists acme's datasets",
        ),
        (
            "carl",
            "POST",
            "/v1/orgs/acme/datasets".into(),
            Some(ds_body.clone()),
            403,
            "beta's analyst registers an acme dataset",
        ),
        (
            "carl",
            "GET",
            format!("/v1/datasets/{da}"),
            None,
            404,
            "beta's analyst reads acme's unshared dataset",
        ),
        (
            "carl",
            "DELETE",
            format!("/v1/datasets/{da}"),
            None,
            404,
            "beta's analyst deletes acme's dataset",
        ),
        (
            "bob",
            "DELETE",
            format!("/v1/datasets/{db}"),
            None,
            403,
            "beta's approver deletes beta's dataset",
        ),
        (
            "alice",
            "DELETE",
            format!("/v1/datasets/{db}"),
            None,
            403,
            "acme's analyst deletes beta's shared dataset",
        ),
        (
            "carl",
            "GET",
            format!("/v1/jobs/{jd}"),
            None,
            404,
            "beta's analyst reads acme's draft",
        ),
        (
            "bob",
            "GET",
            format!("/v1/jobs/{jd}"),
            None,
            404,
            "beta's approver reads acme's draft (no beta data)",
        ),
        (
            "carl",
            "POST",
            format!("/v1/jobs/{jd}/submit"),
            None,
            404,
            "beta's analyst submits acme's draft",
        ),
        (
            "carl",
            "POST",
            format!("/v1/jobs/{jj}/cancel"),
            None,
            403,
            "beta's analyst cancels acme's job",
        ),
        (
            "carl",
            "POST",
            "/v1/jobs".into(),
            Some(job_body.clone()),
            403,
            "beta's analyst submits a job as acme",
        ),
        (
            "carl",
            "POST",
            "/v1/tokens/identity".into(),
            Some(json!({"org": "acme", "workspace": "research"})),
            403,
            "beta's analyst gets an acme identity token",
        ),
        // Roles within an org.
        (
            "alice",
            "POST",
            format!("/v1/jobs/{jj}/approve"),
            None,
            403,
            "the submitter approves (self-approval)",
        ),
        (
            "audrey",
            "POST",
            format!("/v1/jobs/{jj}/approve"),
            None,
            403,
            "an auditor approves",
        ),
        (
            "carl",
            "POST",
            format!("/v1/jobs/{jj}/approve"),
            None,
            403,
            "an analyst approves",
        ),
        (
            "carl",
            "POST",
            format!("/v1/jobs/{jj}/reject"),
            None,
            403,
            "an analyst rejects",
        ),
        (
            "audrey",
            "POST",
            "/v1/orgs/acme/datasets".into(),
            Some(ds_body.clone()),
            403,
            "an auditor registers a dataset",
        ),
        (
            "aaron",
            "POST",
            "/v1/jobs".into(),
            Some(job_body.clone()),
            403,
            "an approver submits a job",
        ),
        (
            "alice",
            "POST",
            "/v1/orgs/acme/workspaces".into(),
            Some(json!({"name": "x"})),
            403,
            "an analyst creates a workspace",
        ),
        (
            "alice",
            "PUT",
            "/v1/orgs/acme/members/alice".into(),
            Some(json!({"roles": ["admin"]})),
            403,
            "an analyst promotes herself",
        ),
        (
            "alice",
            "GET",
            "/v1/orgs/acme/members".into(),
            None,
            403,
            "an analyst lists members",
        ),
        (
            "alice",
            "POST",
            "/v1/tokens/identity".into(),
            Some(json!({"org": "acme", "workspace": "other"})),
            403,
            "an analyst gets a token for a workspace she is not in",
        ),
        (
            "olga",
            "POST",
            "/v1/orgs".into(),
            Some(json!({"id": "mine"})),
            403,
            "an org owner creates an org",
        ),
        (
            "olga",
            "GET",
            "/v1/users".into(),
            None,
            403,
            "an org owner lists all users",
        ),
        // The workload manager only schedules; people never do its part.
        (
            "sched",
            "POST",
            "/v1/orgs".into(),
            Some(json!({"id": "x"})),
            403,
            "the scheduler creates an org",
        ),
        (
            "sched",
            "GET",
            format!("/v1/jobs/{jj}"),
            None,
            403,
            "the scheduler reads job details meant for people",
        ),
        (
            "olga",
            "GET",
            "/v1/queue".into(),
            None,
            403,
            "an owner reads the scheduler's queue",
        ),
        (
            "olga",
            "POST",
            format!("/v1/jobs/{jj}/start"),
            None,
            403,
            "an owner starts a job (and so gets a grant)",
        ),
        // And what must work, so the table cannot pass by refusing everything.
        (
            "audrey",
            "GET",
            "/v1/orgs/acme/members".into(),
            None,
            200,
            "an auditor lists members",
        ),
        (
            "bob",
            "GET",
            format!("/v1/jobs/{jj}"),
            None,
            200,
            "beta's approver reads a job on beta's data",
        ),
        (
            "carl",
            "GET",
            format!("/v1/datasets/{db}"),
            None,
            200,
            "beta's analyst reads beta's dataset",
        ),
        (
            "alice",
            "GET",
            format!("/v1/datasets/{db}"),
            None,
            200,
            "acme's analyst reads beta's shared dataset",
        ),
    ];
    // The inbox: bob was asked to approve; nobody else reads or marks that notification.
    let inbox =
        w.t.ok(
            200,
            "GET",
            "/v1/notifications",
            Some(&w.tokens["bob"]),
            None,
        )
        .await;
    let note = inbox["notifications"][0]["id"].as_str().unwrap().to_owned();
    let mut rows = rows;
    rows.extend([
        (
            "carl",
            "POST",
            format!("/v1/notifications/{note}/read"),
            None,
            404,
            "beta's analyst marks bob's notification read",
        ),
        (
            "olga",
            "POST",
            format!("/v1/notifications/{note}/read"),
            None,
            404,
            "acme's owner marks bob's notification read",
        ),
        (
            "carl",
            "POST",
            "/v1/orgs/acme/webhooks".into(),
            Some(json!({"url": "http://127.0.0.1:9/x", "events": ["*"]})),
            403,
            "beta's analyst adds a webhook to acme",
        ),
        (
            "carl",
            "GET",
            "/v1/orgs/acme/webhooks".into(),
            None,
            403,
            "beta's analyst lists acme's webhooks",
        ),
        (
            "bob",
            "POST",
            format!("/v1/notifications/{note}/read"),
            None,
            200,
            "bob marks his own notification read",
        ),
    ]);
    for who in ["carl", "olga", "alice"] {
        let theirs =
            w.t.ok(200, "GET", "/v1/notifications", Some(&w.tokens[who]), None)
                .await;
        assert!(
            !theirs.to_string().contains(&note),
            "{who} sees bob's notification: {theirs}"
        );
    }
    let mut failures = Vec::new();
    for (who, method, path, body, want, why) in rows {
        let (status, answer) = w.t.call(method, &path, Some(&w.tokens[who]), body).await;
        if status.as_u16() != want {
            failures.push(format!(
                "{why}: {who} {method} {path} -> {status} {answer}, expected {want}"
            ));
        } else if want >= 400 {
            let msg = answer["error"]["message"].as_str().unwrap_or_default();
            if msg.is_empty() {
                failures.push(format!("{why}: refusal without a message: {answer}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn an_approver_of_one_org_cannot_approve_for_another_orgs_dataset() {
    let w = world().await;
    // acme's approver approves the join: it counts for acme's dataset only.
    let b =
        w.t.ok(
            200,
            "POST",
            &format!("/v1/jobs/{}/approve", w.job_join),
            Some(&w.tokens["aaron"]),
            None,
        )
        .await;
    assert_eq!(b["state"], "pending_approval");
    let job =
        w.t.ok(
            200,
            "GET",
            &format!("/v1/jobs/{}", w.job_join),
            Some(&w.tokens["alice"]),
            None,
        )
        .await;
    for d in job["datasets"].as_array().unwrap() {
        let have = d["approval"]["have"].as_u64().unwrap();
        if d["org"] == "acme" {
            assert_eq!(have, 1, "{job}");
        } else {
            assert_eq!(have, 0, "acme's approver must not count for beta: {job}");
        }
    }
    // A role named explicitly that the user does not hold is refused.
    let (s, b) =
        w.t.call(
            "POST",
            &format!("/v1/jobs/{}/approve", w.job_join),
            Some(&w.tokens["bob"]),
            Some(json!({"role": "owner"})),
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (403, Some("not_an_approver")),
        "{b}"
    );
    let b =
        w.t.ok(
            200,
            "POST",
            &format!("/v1/jobs/{}/approve", w.job_join),
            Some(&w.tokens["bob"]),
            None,
        )
        .await;
    assert_eq!(b["state"], "approved");
}
