//! Secrets never reach the hub's logs or its database in the clear: passwords (right and
//! wrong), session tokens, identity tokens and the hub's key seed. The binary runs with every
//! log level on (`RUST_LOG=trace`) through sign-ins, user creation, a webhook and an identity
//! token; then every line it wrote and every byte of the database files are searched. (The
//! administrator's password is printed once, on purpose, on its own line at first start; a
//! webhook's secret is stored, because the hub signs with it.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64ct::{Base64, Base64UrlUnpadded, Encoding};
use serde_json::{json, Value};

fn drain(pipe: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    });
}

#[tokio::test]
async fn no_secret_reaches_the_logs_or_the_database_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer-hub"))
        .args([
            "--database",
            &format!("sqlite://{}", dir.path().join("hub.db").display()),
        ])
        .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    drain(child.stdout.take().unwrap(), lines.clone());
    drain(child.stderr.take().unwrap(), lines.clone());
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "coffer-hub did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let admin_password = loop {
        let found = lines.lock().unwrap().iter().find_map(|l| {
            l.strip_prefix("coffer-hub: created administrator \"admin\" with password ")
                .map(str::to_owned)
        });
        if let Some(p) = found {
            break p;
        }
        assert!(Instant::now() < deadline, "no password line");
        std::thread::sleep(Duration::from_millis(50));
    };

    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, token: Option<&str>, body: Value| {
        let mut req = http.request(method, format!("{base}{path}")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    use reqwest::Method as M;
    let (_, v) = call(
        M::POST,
        "/v1/auth/login",
        None,
        json!({"username": "admin", "password": admin_password}),
    )
    .await;
    let admin = v["token"].as_str().unwrap().to_owned();
    let bob_password = "bob's very secret passphrase 42";
    call(
        M::POST,
        "/v1/users",
        Some(&admin),
        json!({"username": "bob", "password": bob_password}),
    )
    .await;
    call(M::POST, "/v1/orgs", Some(&admin), json!({"id": "acme"})).await;
    call(
        M::POST,
        "/v1/orgs/acme/workspaces",
        Some(&admin),
        json!({"name": "w"}),
    )
    .await;
    call(
        M::PUT,
        "/v1/orgs/acme/members/bob",
        Some(&admin),
        json!({"roles": ["owner"], "workspaces": ["w"]}),
    )
    .await;
    let wrong = "a wrong guess that is secret too";
    let (status, _) = call(
        M::POST,
        "/v1/auth/login",
        None,
        json!({"username": "bob", "password": wrong}),
    )
    .await;
    assert_eq!(status, 401);
    let (_, v) = call(
        M::POST,
        "/v1/auth/login",
        None,
        json!({"username": "bob", "password": bob_password}),
    )
    .await;
    let bob = v["token"].as_str().unwrap().to_owned();
    let (_, v) = call(
        M::POST,
        "/v1/tokens/identity",
        Some(&bob),
        json!({"org": "acme", "workspace": "w"}),
    )
    .await;
    let identity = v["token"].as_str().unwrap().to_owned();
    let (status, v) = call(
        M::POST,
        "/v1/orgs/acme/webhooks",
        Some(&bob),
        json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let webhook_secret = v["secret"].as_str().unwrap().to_owned();
    let (status, _) = call(M::POST, "/v1/auth/logout", Some(&bob), json!(null)).await;
    assert_eq!(status, 204);

    let _ = child.kill();
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(200));
    let seed = std::fs::read(dir.path().join("state/hub.key")).unwrap();
    assert_eq!(seed.len(), 32);

    // The logs: nothing but the one password line names the administrator's password.
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines.len() > 20,
        "trace logging produced only {} lines",
        lines.len()
    );
    let logs: String = lines
        .iter()
        .filter(|l| !l.starts_with("coffer-hub: created administrator"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut secrets: Vec<(&str, String)> = vec![
        ("the administrator's password", admin_password.clone()),
        ("bob's password", bob_password.to_owned()),
        ("a wrong password", wrong.to_owned()),
        ("the admin's session token", admin.clone()),
        ("bob's session token", bob.clone()),
        ("an identity token", identity.clone()),
        ("the key seed (hex)", hex::encode(&seed)),
        ("the key seed (base64)", Base64::encode_string(&seed)),
        (
            "the key seed (base64url)",
            Base64UrlUnpadded::encode_string(&seed),
        ),
    ];
    for (what, secret) in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "{what} is in the hub's logs"
        );
    }
    secrets.push(("the webhook secret", webhook_secret.clone()));
    assert!(
        !logs.contains(&webhook_secret),
        "the webhook secret is in the hub's logs"
    );

    // The database files (the WAL too): no password, token or seed; the webhook secret is
    // stored on purpose (the hub signs deliveries with it).
    let mut db = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("hub.db")
        {
            db.extend(std::fs::read(&path).unwrap());
        }
    }
    assert!(db.len() > 4096);
    let contains = |needle: &[u8]| db.windows(needle.len()).any(|w| w == needle);
    for (what, secret) in secrets.iter().filter(|(w, _)| *w != "the webhook secret") {
        assert!(
            !contains(secret.as_bytes()),
            "{what} is in the database in the clear"
        );
    }
    assert!(!contains(&seed), "the key seed is in the database");
    assert!(
        contains(webhook_secret.as_bytes()),
        "the scan must see what is stored"
    );
}
