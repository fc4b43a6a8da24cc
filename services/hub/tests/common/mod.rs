//! An in-process hub on a free loopback port, and a small JSON client for it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod postgres;

use std::sync::Arc;

use coffer_hub::{Hub, HubConfig};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A running hub and what it needs to live.
pub struct TestHub {
    pub hub: Arc<Hub>,
    pub base: String,
    pub admin_password: String,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    /// The PostgreSQL server, when the hub runs on one (dropped last).
    _postgres: Option<postgres::Postgres>,
}

impl TestHub {
    /// A hub on a fresh database of the backend `COFFER_HUB_TEST_DATABASE` names: `sqlite`
    /// (the default) or `postgres` (a private server per test). `make test` runs the hub's
    /// suite once per backend.
    pub async fn new() -> Self {
        Self::new_on_test_database(true).await
    }

    /// Like [`new`](Self::new), but the hub makes no outbound requests: webhook deliveries stay
    /// queued (for fuzzing, which registers webhooks with whatever URLs it makes up).
    pub async fn without_deliveries() -> Self {
        Self::new_on_test_database(false).await
    }

    async fn new_on_test_database(deliver: bool) -> Self {
        let (dir, url, pg) = match std::env::var("COFFER_HUB_TEST_DATABASE").as_deref() {
            Ok("postgres") => {
                let pg = postgres::Postgres::start();
                let url = pg.create_database("hub").await;
                (tempfile::tempdir().unwrap(), url, Some(pg))
            }
            Ok("sqlite") | Err(_) => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("hub.db").display());
                (dir, url, None)
            }
            Ok(other) => panic!("COFFER_HUB_TEST_DATABASE={other:?}: expected sqlite or postgres"),
        };
        let config = Self::config(&dir, url);
        let mut t = Self::launch(dir, config, deliver).await;
        t._postgres = pg;
        t
    }

    /// A hub on a fresh SQLite database.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        Self::start(dir, url).await
    }

    /// A hub on `url` (a fresh database), with its state in a new temporary directory.
    pub async fn with_database(url: String) -> Self {
        Self::start(tempfile::tempdir().unwrap(), url).await
    }

    async fn start(dir: tempfile::TempDir, database_url: String) -> Self {
        let config = Self::config(&dir, database_url);
        Self::start_with(dir, config).await
    }

    fn config(dir: &tempfile::TempDir, database_url: String) -> HubConfig {
        HubConfig {
            database_url,
            state_dir: dir.path().join("state"),
            issuer: "https://hub.test".into(),
            audit_origin: "coffer/test/audit".into(),
            oidc: Vec::new(),
            kms: None,
        }
    }

    /// A hub with `config` (its state dir should be inside `dir`).
    pub async fn start_with(dir: tempfile::TempDir, config: HubConfig) -> Self {
        Self::launch(dir, config, true).await
    }

    /// Starts a hub with `config`; with its webhook worker if `deliver`, else with its
    /// checkpointer only.
    async fn launch(dir: tempfile::TempDir, config: HubConfig, deliver: bool) -> Self {
        Self::launch_with(dir, config, deliver, None).await
    }

    /// Starts a hub again on the database and keys a stopped one left in `dir`
    /// ([`stop`](Self::stop)); `admin_password` is the one its first start created.
    pub async fn reopen(dir: tempfile::TempDir, config: HubConfig, admin_password: String) -> Self {
        Self::launch_with(dir, config, true, Some(admin_password)).await
    }

    async fn launch_with(
        dir: tempfile::TempDir,
        config: HubConfig,
        deliver: bool,
        existing_admin: Option<String>,
    ) -> Self {
        let hub = Hub::open(config).await.unwrap();
        let created = coffer_hub::api::bootstrap_admin(&hub, "admin")
            .await
            .unwrap();
        let admin_password = match (created, existing_admin) {
            (Some(created), None) => created.to_string(),
            (None, Some(existing)) => existing,
            (Some(_), Some(_)) => panic!("a reopened hub must not create a new administrator"),
            (None, None) => panic!("a fresh hub creates its administrator"),
        };
        if deliver {
            coffer_hub::spawn_workers(&hub);
        } else {
            coffer_hub::audit::spawn_checkpointer(hub.clone());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(coffer_hub::api::serve(hub.clone(), listener, async move {
            let _ = rx.await;
        }));
        Self {
            hub,
            _postgres: None,
            base,
            admin_password,
            http: reqwest::Client::new(),
            _dir: dir,
            _shutdown: tx,
        }
    }

    /// Stops the hub (server and workers) and waits until it has let go of its database;
    /// returns its directory (the SQLite database and the key stay in it).
    pub async fn stop(self) -> tempfile::TempDir {
        let Self {
            hub,
            _dir,
            _shutdown,
            http,
            ..
        } = self;
        drop(http);
        drop(_shutdown);
        let weak = Arc::downgrade(&hub);
        drop(hub);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while weak.strong_count() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the hub was not released within 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        _dir
    }

    /// `method path` with an optional bearer token and JSON body; the status and JSON answer
    /// (`Value::Null` for an empty body).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// Like [`call`](Self::call), asserting `expected` status; returns the JSON answer.
    pub async fn ok(
        &self,
        expected: u16,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let (status, value) = self.call(method, path, token, body).await;
        assert_eq!(status.as_u16(), expected, "{method} {path}: {value}");
        value
    }

    /// Signs in; returns the session token.
    pub async fn login(&self, user: &str, password: &str) -> String {
        let v = self
            .ok(
                200,
                "POST",
                "/v1/auth/login",
                None,
                Some(json!({"username": user, "password": password})),
            )
            .await;
        v["token"].as_str().unwrap().to_owned()
    }

    /// The administrator's session.
    pub async fn admin(&self) -> String {
        let pw = self.admin_password.clone();
        self.login("admin", &pw).await
    }

    /// Creates user `name` (password `name` + "-password-1") and returns their session.
    pub async fn user(&self, admin: &str, name: &str) -> String {
        let password = format!("{name}-password-1");
        self.ok(
            201,
            "POST",
            "/v1/users",
            Some(admin),
            Some(json!({"username": name, "password": password})),
        )
        .await;
        self.login(name, &password).await
    }

    /// Creates org `org` with workspace `ws`.
    pub async fn org(&self, admin: &str, org: &str, ws: &str) {
        self.ok(
            201,
            "POST",
            "/v1/orgs",
            Some(admin),
            Some(json!({"id": org})),
        )
        .await;
        self.ok(
            201,
            "POST",
            &format!("/v1/orgs/{org}/workspaces"),
            Some(admin),
            Some(json!({"name": ws})),
        )
        .await;
    }

    /// Gives `user` `roles` in `org` and membership of `workspaces`.
    pub async fn member(
        &self,
        admin: &str,
        org: &str,
        user: &str,
        roles: &[&str],
        workspaces: &[&str],
    ) {
        self.ok(
            200,
            "PUT",
            &format!("/v1/orgs/{org}/members/{user}"),
            Some(admin),
            Some(json!({"roles": roles, "workspaces": workspaces})),
        )
        .await;
    }
}
