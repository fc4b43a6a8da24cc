//! Notifications end to end: the inbox and its read marks, the server-sent-events stream
//! (live, and replay after a reconnect), and signed webhooks with retries and subscriptions.
//! Events are raised through the `Writer` directly (the jobs API raises them in the hub).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use coffer_hub::notify::{verify_signature, Event, SignatureError, MAX_ATTEMPTS};
use common::TestHub;
use serde_json::{json, Value};

/// The id of the user signed in with `token`.
async fn user_id(t: &TestHub, token: &str) -> String {
    t.ok(200, "GET", "/v1/me", Some(token), None).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Raises `kind` in `org` for `users`, as the jobs API will.
async fn emit(t: &TestHub, kind: &'static str, org: &str, users: &[&str], body: Value) {
    let mut w = t.hub.writer().await.unwrap();
    w.notify(Event {
        kind,
        org: org.to_owned(),
        job_id: Some("job-1".to_owned()),
        users: users.iter().map(|u| (*u).to_owned()).collect(),
        body,
    })
    .await
    .unwrap();
    w.commit().await.unwrap();
}

// ---- inbox ----

#[tokio::test]
async fn the_inbox_lists_and_marks_only_ones_own() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    let alice = t.user(&admin, "alice").await;
    let bob = t.user(&admin, "bob").await;
    let (alice_id, bob_id) = (user_id(&t, &alice).await, user_id(&t, &bob).await);
    t.org(&admin, "acme", "ws").await;

    emit(
        &t,
        "job.approval_requested",
        "acme",
        &[&alice_id, &bob_id],
        json!({"n": 1}),
    )
    .await;
    emit(&t, "job.approved", "acme", &[&alice_id], json!({"n": 2})).await;
    emit(&t, "job.succeeded", "acme", &[&alice_id], json!({"n": 3})).await;

    let mine = t
        .ok(200, "GET", "/v1/notifications", Some(&alice), None)
        .await;
    let items = mine["notifications"].as_array().unwrap();
    let kinds: Vec<&str> = items.iter().map(|n| n["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["job.approval_requested", "job.approved", "job.succeeded"]
    );
    assert_eq!(items[1]["body"], json!({"n": 2}));
    assert_eq!(items[1]["job_id"], "job-1");
    assert!(items
        .iter()
        .all(|n| n["read_at"].is_null() && n.get("user_id").is_none()));
    let seqs: Vec<i64> = items.iter().map(|n| n["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(mine["last_seq"], seqs[2]);

    let theirs = t
        .ok(200, "GET", "/v1/notifications", Some(&bob), None)
        .await;
    assert_eq!(theirs["notifications"].as_array().unwrap().len(), 1);

    // after= and limit=.
    let later = t
        .ok(
            200,
            "GET",
            &format!("/v1/notifications?after={}", seqs[0]),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(later["notifications"].as_array().unwrap().len(), 2);
    let one = t
        .ok(200, "GET", "/v1/notifications?limit=1", Some(&alice), None)
        .await;
    assert_eq!(one["notifications"].as_array().unwrap().len(), 1);
    let (status, err) = t
        .call("GET", "/v1/notifications?limit=501", Some(&alice), None)
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "invalid_limit");

    // Someone else's notification is not found, for reading or marking.
    let first = items[0]["id"].as_str().unwrap();
    let (status, err) = t
        .call(
            "POST",
            &format!("/v1/notifications/{first}/read"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, 404, "{err}");
    let (status, _) = t
        .call("POST", "/v1/notifications/n-nope/read", Some(&alice), None)
        .await;
    assert_eq!(status, 404);

    let marked = t
        .ok(
            200,
            "POST",
            &format!("/v1/notifications/{first}/read"),
            Some(&alice),
            None,
        )
        .await;
    let read_at = marked["read_at"].as_i64().unwrap();
    // Marking again keeps the first time.
    let again = t
        .ok(
            200,
            "POST",
            &format!("/v1/notifications/{first}/read"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(again["read_at"], read_at);
    let unread = t
        .ok(
            200,
            "GET",
            "/v1/notifications?unread=true",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(unread["notifications"].as_array().unwrap().len(), 2);

    let all = t
        .ok(
            200,
            "POST",
            "/v1/notifications/read-all",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(all["marked"], 2);
    let unread = t
        .ok(
            200,
            "GET",
            "/v1/notifications?unread=true",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(unread["notifications"], json!([]));
    // Bob's copy of the shared event is still unread.
    let bobs = t
        .ok(
            200,
            "GET",
            "/v1/notifications?unread=true",
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(bobs["notifications"].as_array().unwrap().len(), 1);

    let (status, _) = t.call("GET", "/v1/notifications", None, None).await;
    assert_eq!(status, 401);
}

// ---- the live stream ----

/// A raw SSE reader over a streaming response.
struct SseReader {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

/// One SSE event: id, event name, data.
#[derive(Debug)]
struct SseMessage {
    id: i64,
    event: String,
    data: Value,
}

impl SseReader {
    async fn open(t: &TestHub, token: &str, last_event_id: Option<i64>) -> Self {
        let mut req = t
            .http
            .get(format!("{}/v1/notifications/stream", t.base))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Self {
            resp,
            buf: Vec::new(),
        }
    }

    /// The next event with data (keep-alive comments are skipped).
    async fn next(&mut self) -> SseMessage {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8(block).unwrap();
                let (mut id, mut event, mut data) = (None, None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse::<i64>().unwrap());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
                    }
                }
                if let Some(data) = data {
                    return SseMessage {
                        id: id.expect("an event has an id"),
                        event: event.expect("an event has a name"),
                        data,
                    };
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("no event within 10 s")
                .unwrap()
                .expect("the stream ended");
            self.buf.extend_from_slice(&chunk);
        }
    }
}

#[tokio::test]
async fn the_stream_delivers_live_and_replays_what_was_missed() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    let alice = t.user(&admin, "alice").await;
    let bob = t.user(&admin, "bob").await;
    let (alice_id, bob_id) = (user_id(&t, &alice).await, user_id(&t, &bob).await);
    t.org(&admin, "acme", "ws").await;

    // Before the stream opens: replayed first.
    emit(
        &t,
        "job.approval_requested",
        "acme",
        &[&alice_id],
        json!({"n": 1}),
    )
    .await;
    let mut stream = SseReader::open(&t, &alice, None).await;
    let first = stream.next().await;
    assert_eq!(first.event, "job.approval_requested");
    assert_eq!(first.data["body"], json!({"n": 1}));
    assert_eq!(first.data["seq"], first.id);

    // Live: bob's is not alice's.
    emit(&t, "job.approved", "acme", &[&bob_id], json!({"n": 2})).await;
    emit(&t, "job.succeeded", "acme", &[&alice_id], json!({"n": 3})).await;
    let live = stream.next().await;
    assert_eq!(
        (live.event.as_str(), &live.data["body"]),
        ("job.succeeded", &json!({"n": 3}))
    );
    assert!(live.id > first.id);
    drop(stream);

    // Missed while disconnected, then replayed from Last-Event-ID, then live again.
    emit(&t, "job.failed", "acme", &[&alice_id], json!({"n": 4})).await;
    emit(
        &t,
        "job.cancelled",
        "acme",
        &[&alice_id, &bob_id],
        json!({"n": 5}),
    )
    .await;
    let mut stream = SseReader::open(&t, &alice, Some(live.id)).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(stream.next().await);
    }
    emit(
        &t,
        "approval.granted",
        "acme",
        &[&alice_id],
        json!({"n": 6}),
    )
    .await;
    got.push(stream.next().await);
    let bodies: Vec<i64> = got
        .iter()
        .map(|m| m.data["body"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(bodies, [4, 5, 6], "{got:?}");
    assert!(got.windows(2).all(|w| w[0].id < w[1].id), "{got:?}");
    assert!(got[0].id > live.id);

    // ?after= does the same as Last-Event-ID; a bad Last-Event-ID is named.
    let (status, err) = {
        let resp = t
            .http
            .get(format!("{}/v1/notifications/stream", t.base))
            .bearer_auth(&alice)
            .header("Last-Event-ID", "yesterday")
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "invalid_last_event_id");
}

// ---- webhooks ----

/// A local webhook receiver answering statuses from a script (the last one repeats).
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

struct ReceiverState {
    script: Vec<u16>,
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

impl Receiver {
    async fn start(script: &[u16]) -> Self {
        async fn hook(
            State(st): State<Arc<ReceiverState>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let mut got = st.got.lock().unwrap();
            let n = got.len();
            got.push((headers, body));
            let code = st
                .script
                .get(n)
                .or(st.script.last())
                .copied()
                .unwrap_or(200);
            StatusCode::from_u16(code).unwrap()
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(ReceiverState {
            script: script.to_vec(),
            got: got.clone(),
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            url,
            got,
            _shutdown: tx,
        }
    }

    fn received(&self) -> Vec<(HeaderMap, Bytes)> {
        self.got.lock().unwrap().clone()
    }
}

/// Creates a webhook in `org` to `url` for `events`; returns (id, secret).
async fn create_webhook(
    t: &TestHub,
    token: &str,
    org: &str,
    url: &str,
    events: &[&str],
) -> (String, String) {
    let v = t
        .ok(
            201,
            "POST",
            &format!("/v1/orgs/{org}/webhooks"),
            Some(token),
            Some(json!({"url": url, "events": events})),
        )
        .await;
    (
        v["id"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

/// The delivery log of webhook `id`.
async fn deliveries(t: &TestHub, token: &str, org: &str, id: &str) -> Vec<Value> {
    let v = t
        .ok(
            200,
            "GET",
            &format!("/v1/orgs/{org}/webhooks/{id}/deliveries"),
            Some(token),
            None,
        )
        .await;
    v["deliveries"].as_array().unwrap().clone()
}

/// Waits (up to 20 s) until webhook `id` has one delivery and it is no longer pending.
async fn settled(t: &TestHub, token: &str, org: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = deliveries(t, token, org, id).await;
        if log.len() == 1 && log[0]["status"] != "pending" {
            return log[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery still pending: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_webhook_gets_the_event_signed_with_its_secret() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    t.org(&admin, "acme", "ws").await;
    let rx = Receiver::start(&[200]).await;
    let (id, secret) = create_webhook(&t, &admin, "acme", &rx.url, &["job.succeeded"]).await;
    assert_eq!(secret.len(), 43, "32 bytes, base64url without padding");
    assert!(secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));

    // The list never shows the secret.
    let list = t
        .ok(200, "GET", "/v1/orgs/acme/webhooks", Some(&admin), None)
        .await;
    assert_eq!(list["webhooks"][0]["id"], id.as_str());
    assert_eq!(list["webhooks"][0]["url"], rx.url.as_str());
    assert_eq!(list["webhooks"][0]["events"], json!(["job.succeeded"]));
    assert!(list["webhooks"][0].get("secret").is_none());
    assert!(!list.to_string().contains(&secret));

    emit(&t, "job.succeeded", "acme", &[], json!({"rows": 42})).await;
    let entry = settled(&t, &admin, "acme", &id).await;
    assert_eq!(entry["status"], "delivered");
    assert_eq!(entry["attempts"], 1);
    assert_eq!(entry["last_http_status"], 200);
    assert_eq!(entry["event"], "job.succeeded");

    let got = rx.received();
    assert_eq!(got.len(), 1);
    let (headers, body) = &got[0];
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-coffer-event"], "job.succeeded");
    assert_eq!(headers["x-coffer-delivery"], entry["id"].as_str().unwrap());
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(payload["id"], entry["id"]);
    assert_eq!(payload["event"], "job.succeeded");
    assert_eq!(payload["org"], "acme");
    assert_eq!(payload["job_id"], "job-1");
    assert_eq!(payload["body"], json!({"rows": 42}));
    assert!(payload["created_at"].as_i64().unwrap() > 0);

    let signature = headers["x-coffer-signature"].to_str().unwrap();
    let t_sent: i64 = signature
        .strip_prefix("t=")
        .and_then(|s| s.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    let now = coffer_hub::db::now();
    assert_eq!(verify_signature(&secret, signature, body, now, 300), Ok(()));
    // A tampered body, another secret, or a delivery replayed later fail.
    let mut tampered = body.to_vec();
    tampered.extend_from_slice(b" ");
    assert_eq!(
        verify_signature(&secret, signature, &tampered, now, 300),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify_signature("not-the-secret", signature, body, now, 300),
        Err(SignatureError::Mismatch)
    );
    assert!(matches!(
        verify_signature(&secret, signature, body, t_sent + 301, 300),
        Err(SignatureError::Stale { .. })
    ));

    // Creation is audited, without the secret.
    let rows: Vec<String> = sqlx::query_scalar("SELECT body FROM audit_entries ORDER BY idx")
        .fetch_all(&t.hub.db)
        .await
        .unwrap();
    let created: Vec<&String> = rows
        .iter()
        .filter(|b| b.contains("\"webhook.create\""))
        .collect();
    assert_eq!(created.len(), 1);
    assert!(created[0].contains(&id));
    assert!(rows.iter().all(|b| !b.contains(&secret)));
}

#[tokio::test]
async fn a_failing_receiver_is_retried_until_it_answers() {
    let t = TestHub::new().await;
    t.hub.notify.set_retry_base_secs(0);
    let admin = t.admin().await;
    t.org(&admin, "acme", "ws").await;
    let rx = Receiver::start(&[500, 500, 200]).await;
    let (id, _) = create_webhook(&t, &admin, "acme", &rx.url, &["*"]).await;

    emit(&t, "job.failed", "acme", &[], json!({})).await;
    let entry = settled(&t, &admin, "acme", &id).await;
    assert_eq!(entry["status"], "delivered", "{entry}");
    assert_eq!(entry["attempts"], 3);
    assert_eq!(entry["last_http_status"], 200);
    assert!(entry["last_error"].is_null());
    let got = rx.received();
    assert_eq!(got.len(), 3);
    // The same delivery each time (the receiver's idempotency key), the same body.
    assert!(got
        .iter()
        .all(|(h, b)| h["x-coffer-delivery"] == entry["id"].as_str().unwrap() && *b == got[0].1));
}

#[tokio::test]
async fn a_receiver_that_always_fails_ends_failed_after_the_last_attempt() {
    let t = TestHub::new().await;
    t.hub.notify.set_retry_base_secs(0);
    let admin = t.admin().await;
    t.org(&admin, "acme", "ws").await;
    let rx = Receiver::start(&[503]).await;
    let (id, _) = create_webhook(&t, &admin, "acme", &rx.url, &["job.rejected"]).await;

    emit(&t, "job.rejected", "acme", &[], json!({})).await;
    let entry = settled(&t, &admin, "acme", &id).await;
    assert_eq!(entry["status"], "failed", "{entry}");
    assert_eq!(entry["attempts"], MAX_ATTEMPTS);
    assert_eq!(entry["last_http_status"], 503);
    assert_eq!(entry["last_error"], "HTTP 503 Service Unavailable");
    assert_eq!(rx.received().len(), MAX_ATTEMPTS as usize);

    // An unreachable receiver fails with the transport error, not the URL.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}/hook?token=abc", closed.local_addr().unwrap());
    drop(closed);
    let (dead_id, _) = create_webhook(&t, &admin, "acme", &dead, &["job.cancelled"]).await;
    emit(&t, "job.cancelled", "acme", &[], json!({})).await;
    let entry = settled(&t, &admin, "acme", &dead_id).await;
    assert_eq!(entry["status"], "failed", "{entry}");
    assert!(entry["last_http_status"].is_null());
    let error = entry["last_error"].as_str().unwrap();
    assert!(!error.is_empty() && error.chars().count() <= 500);
    assert!(!error.contains("token=abc"), "{error}");
}

#[tokio::test]
async fn webhooks_hear_only_their_org_and_kinds() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    t.org(&admin, "acme", "ws").await;
    t.org(&admin, "other", "ws").await;
    let (rx_kind, rx_all, rx_other) = (
        Receiver::start(&[200]).await,
        Receiver::start(&[200]).await,
        Receiver::start(&[200]).await,
    );
    let (kind_id, _) = create_webhook(
        &t,
        &admin,
        "acme",
        &rx_kind.url,
        &["job.failed", "job.rejected"],
    )
    .await;
    let (all_id, _) = create_webhook(&t, &admin, "acme", &rx_all.url, &["*"]).await;
    let (other_id, _) = create_webhook(&t, &admin, "other", &rx_other.url, &["*"]).await;

    emit(&t, "job.succeeded", "acme", &[], json!({})).await;
    let entry = settled(&t, &admin, "acme", &all_id).await;
    assert_eq!(entry["status"], "delivered");
    // Deliveries are queued in the event's own transaction: none now means none ever.
    assert!(deliveries(&t, &admin, "acme", &kind_id).await.is_empty());
    assert!(deliveries(&t, &admin, "other", &other_id).await.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx_all.received().len(), 1);
    assert!(rx_kind.received().is_empty());
    assert!(rx_other.received().is_empty());
}

#[tokio::test]
async fn only_owners_and_admins_manage_webhooks() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    t.org(&admin, "acme", "ws").await;
    let owner = t.user(&admin, "olga").await;
    let org_admin = t.user(&admin, "adam").await;
    let analyst = t.user(&admin, "ann").await;
    let auditor = t.user(&admin, "aud").await;
    let outsider = t.user(&admin, "otto").await;
    t.member(&admin, "acme", "olga", &["owner"], &[]).await;
    t.member(&admin, "acme", "adam", &["admin"], &[]).await;
    t.member(&admin, "acme", "ann", &["analyst"], &["ws"]).await;
    t.member(&admin, "acme", "aud", &["auditor"], &[]).await;
    let body = json!({"url": "https://hooks.example/coffer", "events": ["*"]});

    for (who, token) in [
        ("analyst", &analyst),
        ("auditor", &auditor),
        ("outsider", &outsider),
    ] {
        let (status, err) = t
            .call(
                "POST",
                "/v1/orgs/acme/webhooks",
                Some(token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 403, "{who}: {err}");
        assert_eq!(err["error"]["code"], "forbidden");
    }
    let (owner_hook, _) =
        create_webhook(&t, &owner, "acme", "https://hooks.example/a", &["*"]).await;
    let (admin_hook, _) = create_webhook(
        &t,
        &org_admin,
        "acme",
        "http://10.0.0.1:8080/b",
        &["job.failed"],
    )
    .await;

    // Readers: owners, admins, auditors.
    let list = t
        .ok(200, "GET", "/v1/orgs/acme/webhooks", Some(&auditor), None)
        .await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 2);
    assert!(list["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h.get("secret").is_none()));
    let (status, _) = t
        .call("GET", "/v1/orgs/acme/webhooks", Some(&analyst), None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = t
        .call(
            "GET",
            &format!("/v1/orgs/acme/webhooks/{owner_hook}/deliveries"),
            Some(&analyst),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = t
        .call("GET", "/v1/orgs/nope/webhooks", Some(&admin), None)
        .await;
    assert_eq!(status, 404);

    // Bad input is named.
    for (req, code, needle) in [
        (
            json!({"url": "ftp://h/x", "events": ["*"]}),
            "invalid_url",
            "http",
        ),
        (
            json!({"url": "not a url", "events": ["*"]}),
            "invalid_url",
            "not a URL",
        ),
        (
            json!({"url": "https://h/x", "events": []}),
            "invalid_events",
            "at least one",
        ),
        (
            json!({"url": "https://h/x", "events": ["job.exploded"]}),
            "invalid_events",
            "job.exploded",
        ),
        (
            json!({"url": "https://h/x", "events": ["*"], "secret": "mine"}),
            "invalid_body",
            "secret",
        ),
    ] {
        let (status, err) = t
            .call(
                "POST",
                "/v1/orgs/acme/webhooks",
                Some(&owner),
                Some(req.clone()),
            )
            .await;
        assert!(status.is_client_error(), "{req}: {status}");
        assert_eq!(err["error"]["code"], code, "{req}: {err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(needle),
            "{req}: {err}"
        );
    }

    // Deleting: managers only, once; the deleted one is gone from the list and its log.
    let (status, _) = t
        .call(
            "DELETE",
            &format!("/v1/orgs/acme/webhooks/{admin_hook}"),
            Some(&analyst),
            None,
        )
        .await;
    assert_eq!(status, 403);
    t.ok(
        204,
        "DELETE",
        &format!("/v1/orgs/acme/webhooks/{admin_hook}"),
        Some(&owner),
        None,
    )
    .await;
    let (status, _) = t
        .call(
            "DELETE",
            &format!("/v1/orgs/acme/webhooks/{admin_hook}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = t
        .call(
            "GET",
            &format!("/v1/orgs/acme/webhooks/{admin_hook}/deliveries"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let list = t
        .ok(200, "GET", "/v1/orgs/acme/webhooks", Some(&org_admin), None)
        .await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);
    assert_eq!(list["webhooks"][0]["id"], owner_hook.as_str());
    // Another org's webhook is not found through this org.
    t.org(&admin, "other", "ws").await;
    let (status, _) = t
        .call(
            "DELETE",
            &format!("/v1/orgs/other/webhooks/{owner_hook}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 404);

    let actions: Vec<String> = sqlx::query_scalar("SELECT body FROM audit_entries ORDER BY idx")
        .fetch_all(&t.hub.db)
        .await
        .unwrap();
    assert_eq!(
        actions
            .iter()
            .filter(|b| b.contains("\"webhook.create\""))
            .count(),
        2
    );
    assert_eq!(
        actions
            .iter()
            .filter(|b| b.contains("\"webhook.delete\""))
            .count(),
        1
    );
}

#[tokio::test]
async fn deleting_a_webhook_ends_its_pending_deliveries() {
    let t = TestHub::new().await;
    t.hub.notify.set_retry_base_secs(3600);
    let admin = t.admin().await;
    t.org(&admin, "acme", "ws").await;
    let rx = Receiver::start(&[500]).await;
    let (id, _) = create_webhook(&t, &admin, "acme", &rx.url, &["*"]).await;
    emit(&t, "job.approved", "acme", &[], json!({})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = deliveries(&t, &admin, "acme", &id).await;
        if log.len() == 1 && log[0]["attempts"] == 1 {
            assert_eq!(log[0]["status"], "pending");
            // The retry is far off (the delay is capped).
            let next = log[0]["next_attempt_at"].as_i64().unwrap();
            assert!(next > coffer_hub::db::now() + 200, "{log:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{log:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.ok(
        204,
        "DELETE",
        &format!("/v1/orgs/acme/webhooks/{id}"),
        Some(&admin),
        None,
    )
    .await;
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT status, last_error FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(&id)
            .fetch_one(&t.hub.db)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), error.as_deref()),
        ("failed", Some("webhook deleted"))
    );
}

/// Nothing stored is lost: a delivery still pending when the hub stops is delivered by the
/// next start (deliveries live in the database, not in the worker).
#[tokio::test]
async fn a_pending_delivery_survives_a_restart() {
    let t = TestHub::sqlite().await;
    // A retry at least a second away (times are whole seconds): the stop comes before it.
    t.hub.notify.set_retry_base_secs(2);
    let admin = t.admin().await;
    t.org(&admin, "acme", "ws").await;
    let rx = Receiver::start(&[500, 200]).await;
    let (id, _) = create_webhook(&t, &admin, "acme", &rx.url, &["*"]).await;
    emit(&t, "job.approved", "acme", &[], json!({"job": "job-1"})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while rx.received().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no first attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stopped right after the failed first attempt, before the retry.
    let (config, password) = (t.hub.config.clone(), t.admin_password.clone());
    let dir = t.stop().await;
    let pool = coffer_hub::db::connect(&config.database_url).await.unwrap();
    let (status, attempts): (String, i64) =
        sqlx::query_as("SELECT status, attempts FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), attempts),
        ("pending", 1),
        "stopped before the retry"
    );
    drop(pool);
    let t = TestHub::reopen(dir, config, password).await;
    let admin = t.admin().await;
    let entry = settled(&t, &admin, "acme", &id).await;
    assert_eq!(entry["status"], "delivered", "{entry}");
    assert_eq!(entry["attempts"], 2, "{entry}");
    let got = rx.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1, got[1].1, "the same delivery, byte for byte");
}
