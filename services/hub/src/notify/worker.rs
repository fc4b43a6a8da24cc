//! The webhook delivery worker: one tokio task that POSTs each pending delivery to its webhook,
//! signed ([`super::signature`]), and retries failures with exponential backoff.
//!
//! A delivery is a `webhook_deliveries` row, queued in the transaction of the change that
//! caused its event, so deliveries survive a restart: the worker picks up whatever is
//! `pending` and due (`next_attempt_at` ≤ now). It wakes when a commit queues deliveries
//! (`Notifier::published`) and polls every second. Each pass:
//!
//! 1. reads up to [`BATCH`] due deliveries with their webhook's URL and secret;
//! 2. **claims** them: moves `next_attempt_at` [`LEASE_SECS`] ahead, only if no one moved it
//!    since it was read (a second hub on the same PostgreSQL database does not send it too;
//!    a hub that dies mid-attempt leaves a claim that simply expires and is retried);
//! 3. POSTs them, [`PARALLEL`] at a time, with a [`TIMEOUT`] and no redirects; a 2xx answer
//!    is delivered, anything else (another status, a redirect, a connection error, a timeout)
//!    is a failed attempt;
//! 4. records each attempt: `attempts`, `last_http_status`, `last_error` (at most
//!    [`MAX_ERROR_CHARS`] characters, never the URL), `updated_at`, and `status`: `delivered`,
//!    `pending` again with `next_attempt_at` = now + base × 2^(attempts−1) (capped at
//!    [`RETRY_MAX_DELAY_SECS`]; base [`RETRY_BASE_SECS`], see
//!    [`super::Notifier::set_retry_base_secs`]), or `failed` after [`MAX_ATTEMPTS`].
//!
//! No HTTP happens under the hub's write lock. The row updates are not audited (they are
//! delivery bookkeeping, not actions); they run as short [`crate::Writer`] transactions so
//! that they serialise with the hub's other writes (on SQLite a write from outside the
//! writer would invalidate an open writer transaction's read snapshot and fail it). An update
//! that fails is retried a few times; if it still fails, the claim expires and the delivery is
//! sent again: delivery is at least once, and receivers de-duplicate by `X-Coffer-Delivery`.
//!
//! **Trusts** nothing from receivers but their status code. **Never** logs a secret or a
//! webhook URL (a URL's path may be a credential). The task does not panic (a pass that did
//! would be logged and the next pass run) and ends when the hub is dropped.

use std::error::Error as _;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use sqlx::Row;
use tokio::sync::Notify;

use super::signature::sign;
use crate::error::ApiResult;
use crate::state::Hub;

/// Attempts per delivery before it is `failed`.
pub const MAX_ATTEMPTS: i64 = 6;
/// The default delay before a delivery's first retry (1 s, then 2 s, 4 s, 8 s, 16 s).
pub const RETRY_BASE_SECS: u64 = 1;
/// The longest delay between two attempts.
pub const RETRY_MAX_DELAY_SECS: u64 = 300;
/// How long one attempt may take (connect, send, answer).
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed delivery is held for its attempt (longer than [`TIMEOUT`]).
pub const LEASE_SECS: i64 = 60;
/// How many due deliveries one pass reads.
pub const BATCH: i64 = 32;
/// How many deliveries are in flight at once.
pub const PARALLEL: usize = 8;
/// The longest `last_error` kept, in characters.
pub const MAX_ERROR_CHARS: usize = 500;
/// How often the worker looks for due deliveries when nothing wakes it.
const POLL: Duration = Duration::from_secs(1);
/// How many times recording an attempt's outcome is tried.
const SAVE_TRIES: u32 = 5;

/// Starts the webhook delivery worker on the current tokio runtime (see the module docs).
pub fn spawn_worker(hub: Arc<Hub>) {
    let wake = hub.notify.wake.clone();
    let hub = Arc::downgrade(&hub);
    tokio::spawn(run(hub, wake));
}

fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!(
            "coffer-hub/",
            env!("CARGO_PKG_VERSION"),
            " (webhooks)"
        ))
        .build()
}

async fn run(hub: Weak<Hub>, wake: Arc<Notify>) {
    let http = loop {
        match client() {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook HTTP client; retrying in a minute");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    };
    loop {
        let Some(strong) = hub.upgrade() else {
            return; // the hub is gone
        };
        let pass = AssertUnwindSafe(deliver_due(&strong, &http))
            .catch_unwind()
            .await;
        drop(strong);
        let busy = match pass {
            Ok(Ok(n)) => n > 0,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "webhook delivery pass failed; retrying");
                false
            }
            Err(_) => {
                tracing::error!("webhook delivery pass panicked; continuing");
                false
            }
        };
        if busy {
            // More may be due already (a full batch, or retries without delay).
            tokio::task::yield_now().await;
        } else {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// A due delivery and where it goes. (No `Debug`: it holds the webhook's secret.)
struct Due {
    id: String,
    event: String,
    payload: String,
    attempts: i64,
    next_attempt_at: i64,
    url: String,
    secret: String,
    active: bool,
}

/// What one attempt came to.
struct Outcome {
    delivered: bool,
    http_status: Option<i64>,
    error: Option<String>,
}

/// One pass (see the module docs); returns how many deliveries it handled.
async fn deliver_due(hub: &Hub, http: &reqwest::Client) -> ApiResult<usize> {
    let now = crate::db::now();
    let rows = sqlx::query(
        "SELECT d.id, d.event, d.payload, d.attempts, d.next_attempt_at, h.url, h.secret, h.active \
         FROM webhook_deliveries d JOIN webhooks h ON h.id = d.webhook_id \
         WHERE d.status = 'pending' AND d.next_attempt_at <= $1 \
         ORDER BY d.next_attempt_at, d.created_at, d.id LIMIT $2",
    )
    .bind(now)
    .bind(BATCH)
    .fetch_all(&hub.db)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut due = Vec::with_capacity(rows.len());
    for r in rows {
        due.push(Due {
            id: r.try_get("id")?,
            event: r.try_get("event")?,
            payload: r.try_get("payload")?,
            attempts: r.try_get("attempts")?,
            next_attempt_at: r.try_get("next_attempt_at")?,
            url: r.try_get("url")?,
            secret: r.try_get("secret")?,
            active: r.try_get::<i64, _>("active")? != 0,
        });
    }
    let handled = due.len();
    let claimed = claim(hub, due, now).await?;
    futures::stream::iter(claimed)
        .for_each_concurrent(PARALLEL, |d| async move {
            let outcome = attempt(http, &d).await;
            save(hub, &d, &outcome).await;
        })
        .await;
    Ok(handled)
}

/// Claims `due` for this pass; ends those whose webhook was deleted. Returns the claimed ones.
async fn claim(hub: &Hub, due: Vec<Due>, now: i64) -> ApiResult<Vec<Due>> {
    let mut claimed = Vec::with_capacity(due.len());
    let mut w = hub.writer().await?;
    for d in due {
        if !d.active {
            sqlx::query(
                "UPDATE webhook_deliveries SET status = 'failed', last_error = 'webhook deleted', \
                 updated_at = $1 WHERE id = $2 AND status = 'pending'",
            )
            .bind(now)
            .bind(&d.id)
            .execute(w.conn())
            .await?;
            continue;
        }
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET next_attempt_at = $1, updated_at = $2 \
             WHERE id = $3 AND status = 'pending' AND next_attempt_at = $4",
        )
        .bind(now.saturating_add(LEASE_SECS))
        .bind(now)
        .bind(&d.id)
        .bind(d.next_attempt_at)
        .execute(w.conn())
        .await?;
        if done.rows_affected() == 1 {
            claimed.push(d);
        }
    }
    w.commit().await?;
    Ok(claimed)
}

/// POSTs `d` once.
async fn attempt(http: &reqwest::Client, d: &Due) -> Outcome {
    let failed = |error: String| Outcome {
        delivered: false,
        http_status: None,
        error: Some(truncate(&error)),
    };
    let timestamp = crate::db::now();
    let signature = match sign(&d.secret, timestamp, d.payload.as_bytes()) {
        Ok(s) => s,
        Err(e) => return failed(format!("cannot sign the delivery: {e}")),
    };
    let sent = http
        .post(&d.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Coffer-Event", &d.event)
        .header("X-Coffer-Delivery", &d.id)
        .header("X-Coffer-Signature", signature)
        .body(d.payload.clone())
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let status = resp.status();
            let delivered = status.is_success();
            Outcome {
                delivered,
                http_status: Some(i64::from(status.as_u16())),
                error: (!delivered).then(|| {
                    if status.is_redirection() {
                        format!("HTTP {status} (redirects are not followed)")
                    } else {
                        format!("HTTP {status}")
                    }
                }),
            }
        }
        Err(e) => failed(describe(e)),
    }
}

/// A transport error and its causes, without the URL.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = if e.is_timeout() {
        format!("timed out after {} s: {e}", TIMEOUT.as_secs())
    } else {
        e.to_string()
    };
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// At most [`MAX_ERROR_CHARS`] characters of `text`.
fn truncate(text: &str) -> String {
    text.chars().take(MAX_ERROR_CHARS).collect()
}

/// The delay after the `attempts`-th failed attempt: base × 2^(attempts−1), capped.
fn backoff_secs(base: u64, attempts: i64) -> i64 {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 32)).unwrap_or(32);
    let delay = base
        .saturating_mul(1u64 << doublings)
        .min(RETRY_MAX_DELAY_SECS);
    i64::try_from(delay).unwrap_or(i64::MAX)
}

/// Records `outcome` in `d`'s row, retrying a failed update (see the module docs).
async fn save(hub: &Hub, d: &Due, outcome: &Outcome) {
    let mut wait = Duration::from_millis(100);
    for attempt in 1..=SAVE_TRIES {
        match save_once(hub, d, outcome).await {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!(delivery = %d.id, "delivery changed while it was being sent; its outcome was not recorded");
                return;
            }
            Err(e) if attempt < SAVE_TRIES => {
                tracing::warn!(delivery = %d.id, error = %e, "cannot record a delivery attempt; retrying");
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
            Err(e) => tracing::error!(
                delivery = %d.id, error = %e,
                "cannot record a delivery attempt; it will be sent again when its claim expires"
            ),
        }
    }
}

/// One try of [`save`]: whether the row was still as claimed (and is now updated).
async fn save_once(hub: &Hub, d: &Due, outcome: &Outcome) -> ApiResult<bool> {
    let now = crate::db::now();
    let attempts = d.attempts.saturating_add(1);
    let (status, next) = if outcome.delivered {
        ("delivered", now)
    } else if attempts >= MAX_ATTEMPTS {
        ("failed", now)
    } else {
        let delay = backoff_secs(hub.notify.retry_base_secs(), attempts);
        ("pending", now.saturating_add(delay))
    };
    let mut w = hub.writer().await?;
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt_at = $3, \
         last_http_status = $4, last_error = $5, updated_at = $6 WHERE id = $7 AND attempts = $8",
    )
    .bind(status)
    .bind(attempts)
    .bind(next)
    .bind(outcome.http_status)
    .bind(outcome.error.as_deref())
    .bind(now)
    .bind(&d.id)
    .bind(d.attempts)
    .execute(w.conn())
    .await?;
    w.commit().await?;
    if status == "failed" {
        tracing::warn!(delivery = %d.id, event = %d.event, attempts, "webhook delivery failed; not retried");
    }
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let delays: Vec<i64> = (1..=6).map(|a| backoff_secs(1, a)).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32]);
        assert_eq!(backoff_secs(0, 3), 0);
        assert_eq!(backoff_secs(100, 10), RETRY_MAX_DELAY_SECS as i64);
        assert_eq!(backoff_secs(u64::MAX, 64), RETRY_MAX_DELAY_SECS as i64);
    }

    #[test]
    fn errors_are_truncated_by_characters() {
        let long = "é".repeat(MAX_ERROR_CHARS + 10);
        assert_eq!(truncate(&long).chars().count(), MAX_ERROR_CHARS);
    }
}
