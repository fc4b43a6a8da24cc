//! Schemathesis (property-based API testing, from PyPI) against the hub's own OpenAPI
//! description: every operation is called with generated valid and invalid input, and every
//! answer must be no server error, have a documented status and content type, and match its
//! documented schema and headers. Two runs share one hub with fixtures of every kind: the
//! workload manager's operations as a scheduler service account, then every operation as the
//! deployment administrator. Dictionaries in the run's configuration mix the fixtures' real ids
//! and names, text that breaks databases (NUL characters, incompressible long text) and numbers
//! at the edges of 64-bit integers into the generated values.
//!
//! Schemathesis lives in the virtualenv `scripts/install-deps.sh` makes (`$COFFER_VENV`, by
//! default `~/.cache/coffer/venv`); without it this test fails and says so. The hub runs without
//! its webhook worker: fuzzing registers webhooks with made-up URLs, and nothing may be sent to
//! them. `COFFER_SCHEMATHESIS_SEED` replays another run's seed (the default one is fixed, so the
//! run is the same every time); `COFFER_SCHEMATHESIS_EXAMPLES` changes the examples per
//! operation. Two operations are left out, and the output says so: signing out (it would end
//! the very session the run uses) and the notification stream (it never ends; the `notify`
//! tests cover it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestHub;
use serde_json::json;

/// The pinned version `scripts/install-deps.sh` installs.
const VERSION: &str = "4.32.5";
/// The default seed (fixed: the same inputs every run).
const SEED: &str = "20260501";
/// Generated test cases per operation and phase (both runs take about 40 s on 2 cores).
const EXAMPLES: &str = "100";
/// Both runs together are stopped (and the test fails) after this long.
const DEADLINE: Duration = Duration::from_secs(150);
/// What the answers are checked for.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";
/// Operations left out, and why (printed with the run).
const EXCLUDED: [(&str, &str); 2] = [
    (
        "/v1/auth/logout",
        "it would end the session the whole run signs its requests with",
    ),
    (
        "/v1/notifications/stream",
        "an event stream never ends; tests/notify.rs covers it",
    ),
];

fn schemathesis() -> PathBuf {
    let venv = std::env::var_os("COFFER_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/coffer/venv")))
        .expect("neither COFFER_VENV nor HOME is set");
    let exe = venv.join("bin/schemathesis");
    assert!(
        exe.is_file(),
        "schemathesis is not installed ({} is missing): run scripts/install-deps.sh",
        exe.display()
    );
    let out = Command::new(&exe).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.contains(VERSION),
        "{} is {version:?}, not {VERSION}: run scripts/install-deps.sh",
        exe.display()
    );
    exe
}

/// What the fixtures made, for the run's dictionaries of real values.
struct Fixtures {
    /// Ids of datasets, jobs, webhooks and notifications.
    ids: Vec<String>,
    /// The scheduler service account's token.
    scheduler: String,
}

/// Something of every kind, so that generated calls can reach past "not found": two orgs with
/// workspaces, users holding roles, a shared dataset, an approved job and a pending one, a
/// webhook, a notification, a scheduler.
async fn fixtures(t: &TestHub, admin: &str) -> Fixtures {
    t.org(admin, "acme", "research").await;
    t.org(admin, "beta", "lab").await;
    t.member(
        admin,
        "acme",
        "admin",
        &["owner", "approver"],
        &["research"],
    )
    .await;
    let alice = t.user(admin, "alice").await;
    let bob = t.user(admin, "bob").await;
    t.member(admin, "acme", "alice", &["analyst"], &["research"])
        .await;
    t.member(admin, "acme", "bob", &["approver"], &[]).await;
    t.member(admin, "beta", "bob", &["owner"], &["lab"]).await;
    let dataset = t
        .ok(
            201,
            "POST",
            "/v1/orgs/acme/datasets",
            Some(admin),
            Some(json!({
                "workspace": "research", "name": "payments",
                "schema": {"fields": [{"name": "id", "type": "int64"}]},
                "location": "s3://bucket/payments/", "key_id": "0123456789abcdef0123456789abcdef",
                "policy": {"roles": ["approver"], "k": 1}, "shared": true,
            })),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ids = vec![dataset.clone()];
    for name in ["approved", "pending"] {
        let job = t
            .ok(
                201,
                "POST",
                "/v1/jobs",
                Some(&alice),
                Some(json!({
                    "org": "acme", "workspace": "research", "name": name,
                    "definition": "c2VhbGVk", "datasets": [dataset], "submit": true,
                })),
            )
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        if name == "approved" {
            t.ok(
                200,
                "POST",
                &format!("/v1/jobs/{job}/approve"),
                Some(&bob),
                None,
            )
            .await;
        }
        ids.push(job);
    }
    let webhook = t
        .ok(
            201,
            "POST",
            "/v1/orgs/acme/webhooks",
            Some(admin),
            Some(json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]})),
        )
        .await;
    ids.push(webhook["id"].as_str().unwrap().to_owned());
    let inbox = t
        .ok(200, "GET", "/v1/notifications", Some(admin), None)
        .await;
    for n in inbox["notifications"].as_array().unwrap() {
        ids.push(n["id"].as_str().unwrap().to_owned());
    }
    let scheduler = t
        .ok(
            201,
            "POST",
            "/v1/service-accounts",
            Some(admin),
            Some(json!({"name": "scheduler", "kind": "scheduler"})),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    Fixtures { ids, scheduler }
}

/// Text that has broken servers: a NUL character (PostgreSQL refuses it), text longer than a
/// PostgreSQL index entry may be (`LONG`: see [`incompressible`]), a percent-encoded NUL,
/// quotes, a path, non-ASCII, nothing.
const NASTY_TEXT: [&str; 8] = [
    "\\u0000",
    "nul\\u0000inside",
    "%00",
    "'; DROP TABLE users; --",
    "../../etc/passwd",
    "\\u00e9\\u00e8\\u4e2d\\U0001F600",
    "",
    "LONG",
];
/// `len` letters and digits that do not compress (a fixed pseudo-random sequence): PostgreSQL
/// compresses long index entries, so only such text goes past an index entry's size limit.
fn incompressible(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from(ALPHABET[(state >> 33) as usize % ALPHABET.len()])
        })
        .collect()
}

/// Numbers at the edges of 64-bit integers.
const NASTY_NUMBERS: [&str; 7] = [
    "-1",
    "0",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
];

/// A schemathesis configuration with dictionaries of values that generation alone rarely makes:
/// the fixtures' real names and ids (so calls reach past "not found"), nasty text and numbers at
/// the edges of 64-bit integers, each offered for a share of the generated values of the
/// parameters and fields they fit.
fn config(ids: &[String]) -> String {
    // Each value is written as the body of a TOML basic string (so `\u0000` is TOML's escape
    // for NUL); `LONG` stands for incompressible text.
    let list = |values: Vec<&str>| {
        let quoted: Vec<String> = values
            .into_iter()
            .map(|v| match v {
                "LONG" => format!("\"{}\"", incompressible(10_000)),
                v => format!("\"{v}\""),
            })
            .collect();
        quoted.join(", ")
    };
    let mut toml = String::new();
    for (name, values) in [
        (
            "ids",
            ids.iter().map(String::as_str).chain(["x\\u0000"]).collect(),
        ),
        ("orgs", vec!["acme", "beta", "acme\\u0000"]),
        ("workspaces", vec!["research", "lab", "lab\\u0000"]),
        ("users", vec!["admin", "alice", "bob", "bob\\u0000"]),
        (
            "roles",
            vec!["owner", "admin", "analyst", "approver", "auditor"],
        ),
        ("text", NASTY_TEXT.to_vec()),
        ("numbers", NASTY_NUMBERS.to_vec()),
    ] {
        toml.push_str(&format!(
            "[dictionaries.{name}]\nvalues = [{}]\n",
            list(values)
        ));
    }
    toml.push_str("[parameters]\n");
    let mut bind = |key: &str, dictionary: &str, probability: f64| {
        toml.push_str(&format!(
            "{key:?} = {{ dictionary = {dictionary:?}, probability = {probability} }}\n"
        ));
    };
    for (key, dictionary) in [
        ("path.id", "ids"),
        ("path.org", "orgs"),
        ("path.username", "users"),
        ("query.org", "orgs"),
        ("query.workspace", "workspaces"),
        ("body.org", "orgs"),
        ("body.workspace", "workspaces"),
        ("body.workspaces[*]", "workspaces"),
        ("body.datasets[*]", "ids"),
        ("body.recipients[*].org", "orgs"),
        ("body.recipients[*].workspace", "workspaces"),
        ("body.role", "roles"),
    ] {
        bind(key, dictionary, 0.4);
    }
    for key in [
        "query.state",
        "query.indices",
        "header.Last-Event-ID",
        "body.username",
        "body.password",
        "body.display_name",
        "body.id_token",
        "body.oidc.issuer",
        "body.oidc.subject",
        "body.id",
        "body.name",
        "body.kind",
        "body.location",
        "body.key_id",
        "body.definition",
        "body.url",
        "body.events[*]",
        "body.roles[*]",
        "body.reason",
        "body.detail",
        "body.outcome",
        "body.schema.fields[*].name",
        "body.schema.fields[*].type",
    ] {
        bind(key, "text", 0.2);
    }
    for key in [
        "query.after",
        "query.limit",
        "query.start",
        "query.end",
        "query.index",
        "query.size",
        "query.from",
        "query.to",
        "body.policy.k",
    ] {
        bind(key, "numbers", 0.3);
    }
    toml
}

/// Runs schemathesis with `args` after the common ones, as `token`'s holder; its exit status
/// (`None`: stopped at `deadline`) and output.
async fn run(
    exe: &std::path::Path,
    t: &TestHub,
    work: &std::path::Path,
    token: &str,
    args: &[&str],
    deadline: Instant,
) -> (Option<std::process::ExitStatus>, String) {
    let mut cmd = Command::new(exe);
    cmd.current_dir(work)
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(work.join("schemathesis.toml"))
        .args(["run", &format!("{}/openapi.json", t.base)])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", CHECKS])
        .args(["--generation-database", "none"])
        .args(["--suppress-health-check", "all"])
        .args(["--request-timeout", "20"])
        .args(["--output-truncate", "false"])
        .arg("--no-color")
        .args(args);
    println!("schemathesis: {cmd:?}");
    tokio::task::spawn_blocking(move || {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            stdout.read_to_string(&mut s).map(|_| s)
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            stderr.read_to_string(&mut s).map(|_| s)
        });
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let output = format!(
            "{}\n{}",
            out.join().unwrap().unwrap(),
            err.join().unwrap().unwrap()
        );
        (status, output)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let exe = schemathesis();
    let t = TestHub::without_deliveries().await;
    let admin = t.admin().await;
    let fixtures = fixtures(&t, &admin).await;
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("schemathesis.toml"), config(&fixtures.ids)).unwrap();

    let seed = std::env::var("COFFER_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.into());
    let examples =
        std::env::var("COFFER_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| EXAMPLES.into());
    let common = [
        "--seed",
        &seed,
        "--max-examples",
        &examples,
        "--workers",
        "2",
    ];
    let started = Instant::now();
    let deadline = started + DEADLINE;
    // The workload manager's operations, as a scheduler service account (the approved job can
    // be scheduled, started and finished).
    let mut scheduler_args = common.to_vec();
    scheduler_args.extend(["--include-tag", "scheduler"]);
    let scheduler = run(
        &exe,
        &t,
        work.path(),
        &fixtures.scheduler,
        &scheduler_args,
        deadline,
    )
    .await;
    // Everything, as the deployment administrator (also an owner and approver of acme).
    let mut admin_args = common.to_vec();
    admin_args.extend(["--phases", "examples,coverage,fuzzing,stateful"]);
    for (path, why) in EXCLUDED {
        println!("schemathesis: leaving out {path}: {why}");
        admin_args.extend(["--exclude-path", path]);
    }
    let administrator = run(&exe, &t, work.path(), &admin, &admin_args, deadline).await;
    println!(
        "schemathesis: both runs took {:.0} s (seed {seed}, {examples} examples per operation)",
        started.elapsed().as_secs_f64()
    );
    let runs = [("scheduler", scheduler), ("administrator", administrator)];
    for (who, (_, output)) in &runs {
        println!("schemathesis as the {who}:\n{output}");
    }
    for (who, (status, _)) in runs {
        let status = status.unwrap_or_else(|| {
            panic!("schemathesis as the {who} was stopped: both runs may take {DEADLINE:?} (output above)")
        });
        assert!(
            status.success(),
            "schemathesis as the {who} reported failures ({status}); its output is above. \
             Replay with COFFER_SCHEMATHESIS_SEED={seed}"
        );
    }
}
