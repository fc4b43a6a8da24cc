//! Notifications: approval requests, approvals, job completion and failure reach users in-app
//! (an inbox and a server-sent-events stream, [`inbox`]) and orgs through signed webhooks
//! ([`webhooks`], delivered by [`worker`], signed as [`signature`] describes).
//!
//! **Owns:** the `notifications` (inbox), `webhooks` and `webhook_deliveries` tables; the live
//! broadcast of committed notifications; the webhook delivery worker.
//!
//! **Trusts:** the code that raises an [`Event`] to name the right users and org, and to put
//! metadata only in its body (never data, keys or secrets: webhook receivers are outside the
//! platform). Webhook receivers are trusted with nothing: they get what their org's owners and
//! admins subscribed them to, and their answers only decide whether a delivery is retried.
//!
//! **Checks:** that a user reads and marks only their own notifications (someone else's id is
//! answered as not found); that only an org's owners and admins (or a deployment administrator)
//! manage its webhooks; that a webhook URL is `http(s)` with a host and its event kinds are
//! known ([`KINDS`]).
//!
//! An [`Event`] is recorded inside the [`crate::Writer`] transaction of the change that causes
//! it: one inbox row per user, one pending delivery per subscribed webhook. Live streams and
//! the worker see it only after the commit (`Notifier::published`), so nothing is announced
//! that was rolled back, and nothing committed is lost: the inbox and the deliveries are in the
//! database, and the worker resumes pending deliveries after a restart.
//!
//! Not done: e-mail (SMTP) notifications.

pub mod inbox;
pub mod signature;
pub mod webhooks;
pub mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use tokio::sync::{broadcast, Notify};

use crate::error::ApiResult;

pub use signature::{sign, verify_signature, SignatureError};
pub use worker::{spawn_worker, MAX_ATTEMPTS, RETRY_BASE_SECS, RETRY_MAX_DELAY_SECS};

/// The event kinds the hub raises (a webhook subscribes to some of them, or to `*`).
pub const KINDS: [&str; 8] = [
    "job.approval_requested",
    "job.approved",
    "job.rejected",
    "job.cancelled",
    "job.succeeded",
    "job.failed",
    "approval.granted",
    "approval.withdrawn",
];

/// How many notifications the live broadcast buffers for a slow stream before that stream
/// lags (and is closed: its client reconnects and replays from the database).
const LIVE_BUFFER: usize = 1024;

/// Something that happened that people should hear about.
#[derive(Debug, Clone)]
pub struct Event {
    /// The kind: one of [`KINDS`] (`job.approval_requested`, `job.approved`, ...).
    pub kind: &'static str,
    /// The org whose webhooks hear it.
    pub org: String,
    /// The job it concerns, if any.
    pub job_id: Option<String>,
    /// The users (ids) whose inboxes get it.
    pub users: Vec<String>,
    /// The details (metadata only: webhook receivers see it).
    pub body: serde_json::Value,
}

/// One stored inbox notification (as listed and as streamed).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Notification {
    /// Its id.
    pub id: String,
    /// Its position in the hub's notification sequence (the SSE event id).
    pub seq: i64,
    /// The user it is for.
    #[serde(skip)]
    pub user_id: String,
    /// The event kind (`job.approved`, `job.failed`, ...: see [`KINDS`]).
    #[schema(example = "job.approved")]
    pub kind: String,
    /// The job, if any.
    pub job_id: Option<String>,
    /// The details.
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
    /// When (seconds since the epoch).
    pub created_at: i64,
    /// When the user marked it read, if they did.
    pub read_at: Option<i64>,
}

/// What a transaction recorded, to publish after it commits.
#[derive(Debug, Default)]
pub struct Recorded {
    notifications: Vec<Notification>,
    deliveries: usize,
}

impl Recorded {
    /// The inbox notifications recorded.
    pub fn notifications(&self) -> &[Notification] {
        &self.notifications
    }

    /// How many webhook deliveries were queued.
    pub fn deliveries(&self) -> usize {
        self.deliveries
    }
}

/// Live notification streams, the webhook worker's wake-up and its retry schedule.
#[derive(Debug)]
pub struct Notifier {
    live: broadcast::Sender<Notification>,
    wake: Arc<Notify>,
    retry_base_secs: AtomicU64,
}

impl Default for Notifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Notifier {
    /// A notifier with no subscribers, retrying deliveries after [`RETRY_BASE_SECS`] (doubling).
    pub fn new() -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Self {
            live,
            wake: Arc::new(Notify::new()),
            retry_base_secs: AtomicU64::new(RETRY_BASE_SECS),
        }
    }

    /// Subscribes to every notification published from now on (the SSE stream filters by user).
    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.live.subscribe()
    }

    /// The delay before a failed delivery's first retry, in seconds (doubled for each further
    /// retry, up to [`RETRY_MAX_DELAY_SECS`]).
    pub fn retry_base_secs(&self) -> u64 {
        self.retry_base_secs.load(Ordering::Relaxed)
    }

    /// Sets the delay before a failed delivery's first retry (tests use 0: retry at once).
    pub fn set_retry_base_secs(&self, secs: u64) {
        self.retry_base_secs.store(secs, Ordering::Relaxed);
    }

    /// Wakes the delivery worker (it also polls every second).
    pub fn wake_worker(&self) {
        self.wake.notify_one();
    }

    /// Records `event` in the caller's transaction: an inbox row for each of its users, and a
    /// pending delivery for each active webhook of its org subscribed to its kind.
    pub(crate) async fn record(
        &self,
        conn: &mut AnyConnection,
        event: &Event,
    ) -> ApiResult<Recorded> {
        let now = crate::db::now();
        let mut recorded = Recorded::default();
        // Sequence numbers are dense and in commit order: the Writer's lock serialises this.
        let next: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS s FROM notifications")
            .fetch_one(&mut *conn)
            .await?
            .try_get("s")?;
        let body = event.body.to_string();
        for (seq, user) in (next + 1..).zip(&event.users) {
            let id = crate::db::new_id("n-");
            sqlx::query(
                "INSERT INTO notifications (seq, id, user_id, kind, job_id, body_json, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(seq)
            .bind(&id)
            .bind(user)
            .bind(event.kind)
            .bind(event.job_id.as_deref())
            .bind(&body)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            recorded.notifications.push(Notification {
                id,
                seq,
                user_id: user.clone(),
                kind: event.kind.to_owned(),
                job_id: event.job_id.clone(),
                body: event.body.clone(),
                created_at: now,
                read_at: None,
            });
        }
        recorded.deliveries = webhooks::queue_deliveries(conn, event, now).await?;
        Ok(recorded)
    }

    /// Publishes what a committed transaction recorded: live streams get its notifications,
    /// the worker is woken if it queued deliveries.
    pub(crate) fn published(&self, recorded: Vec<Recorded>) {
        let mut wake = false;
        for r in recorded {
            wake |= r.deliveries > 0;
            for n in r.notifications {
                // No subscribers is not an error: the inbox has it.
                let _ = self.live.send(n);
            }
        }
        if wake {
            self.wake.notify_one();
        }
    }
}

/// The notification routes: the inbox and its stream, and the orgs' webhooks.
pub fn routes() -> utoipa_axum::router::OpenApiRouter<Arc<crate::Hub>> {
    utoipa_axum::router::OpenApiRouter::new()
        .merge(inbox::routes())
        .merge(webhooks::routes())
}
