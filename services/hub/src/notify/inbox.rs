//! A user's inbox and its live stream.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/notifications?after=SEQ&unread=true&limit=N` | the caller's notifications with `seq > after`, oldest first (`limit` 1-500, default 100) |
//! | `POST /v1/notifications/{id}/read` | marks one of the caller's notifications read (someone else's id: 404) |
//! | `POST /v1/notifications/read-all` | marks all the caller's notifications read |
//! | `GET /v1/notifications/stream` | server-sent events: `id:` seq, `event:` kind, `data:` the notification JSON |
//!
//! **The stream** first replays, from the database, the caller's notifications after the
//! `Last-Event-ID` header (or `?after=SEQ`; neither: all of them), then follows the live
//! broadcast, keeping only the caller's. It subscribes to the broadcast *before* reading the
//! database, and skips live notifications at or below the last sequence number it sent, so
//! nothing committed in between is missed or sent twice (sequence numbers are assigned and
//! published in commit order, under the hub's write lock). A comment is sent every 15 s to keep
//! proxies from closing an idle stream, and the stream ends within a minute of its session
//! ending (sign-out or expiry): the session is checked again every minute.
//!
//! If a client reads too slowly and the live broadcast overtakes it (more than the broadcast's
//! buffer of notifications behind), the hub **closes the stream** rather than skip any: the
//! client (an `EventSource` does this by itself) reconnects with `Last-Event-ID` = the last id
//! it received, and the replay fills the gap from the database.
//!
//! Only users have an inbox: service accounts are refused (403). Marking read changes only the
//! reader's own view and is not an audited action.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use tokio::sync::broadcast;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use zeroize::Zeroizing;

use super::Notification;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody, Json, Path, Query};
use crate::state::Hub;

/// The most notifications one list call returns.
pub const MAX_LIMIT: i64 = 500;
/// How many a list call returns when it names no limit.
pub const DEFAULT_LIMIT: i64 = 100;

pub(super) fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(stream))
        .routes(routes!(read_all))
        .routes(routes!(read_one))
}

const COLUMNS: &str = "seq, id, user_id, kind, job_id, body_json, created_at, read_at";

fn from_row(row: &AnyRow) -> ApiResult<Notification> {
    let body: String = row.try_get("body_json")?;
    Ok(Notification {
        id: row.try_get("id")?,
        seq: row.try_get("seq")?,
        user_id: row.try_get("user_id")?,
        kind: row.try_get("kind")?,
        job_id: row.try_get("job_id")?,
        body: serde_json::from_str(&body)
            .map_err(|e| ApiError::internal("stored notification body", e))?,
        created_at: row.try_get("created_at")?,
        read_at: row.try_get("read_at")?,
    })
}

/// The caller's notifications with `seq > after`, oldest first.
async fn page(
    hub: &Hub,
    user_id: &str,
    after: i64,
    unread_only: bool,
    limit: i64,
) -> ApiResult<Vec<Notification>> {
    let unread = if unread_only {
        " AND read_at IS NULL"
    } else {
        ""
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM notifications WHERE user_id = $1 AND seq > $2{unread} \
         ORDER BY seq LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(user_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&hub.db)
        .await?;
    rows.iter().map(from_row).collect()
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only notifications after this sequence number (default: 0, all).
    #[serde(default)]
    after: Option<i64>,
    /// Only unread ones (default: false).
    #[serde(default)]
    unread: Option<bool>,
    /// The most to answer: 1 to 500 (default: 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// A page of the caller's inbox.
#[derive(Serialize, ToSchema)]
struct Inbox {
    /// The notifications, oldest first.
    notifications: Vec<Notification>,
    /// The sequence number of the last one (or `after` if none): the next page's `after`.
    last_seq: i64,
}

/// The caller's notifications after a sequence number, oldest first (users only).
#[utoipa::path(
    get,
    path = "/v1/notifications",
    tag = "notifications",
    operation_id = "list_notifications",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of the inbox", body = Inbox),
        (status = 400, description = "The limit is out of range (`invalid_limit`), or a \
         parameter is malformed (`invalid_query`)", body = ErrorBody),
        (status = 403, description = "The caller is a service account (`forbidden`)",
         body = ErrorBody),
    )
)]
async fn list(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Inbox>> {
    let user = caller.user()?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit {limit} must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let after = q.after.unwrap_or(0);
    let items = page(&hub, &user.id, after, q.unread.unwrap_or(false), limit).await?;
    let last_seq = items.last().map_or(after, |n| n.seq);
    Ok(Json(Inbox {
        notifications: items,
        last_seq,
    }))
}

/// A notification marked read.
#[derive(Serialize, ToSchema)]
struct MarkedRead {
    /// Its id.
    id: String,
    /// When it was first marked read (seconds since the Unix epoch).
    read_at: i64,
}

/// Marks one of the caller's notifications read.
#[utoipa::path(
    post,
    path = "/v1/notifications/{id}/read",
    tag = "notifications",
    params(("id" = String, Path, description = "The notification's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Marked read", body = MarkedRead),
        (status = 403, description = "The caller is a service account (`forbidden`)",
         body = ErrorBody),
        (status = 404, description = "No such notification of the caller's (`not_found`)",
         body = ErrorBody),
    )
)]
async fn read_one(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<MarkedRead>> {
    let user = caller.user()?;
    let mut w = hub.writer().await?;
    let row = sqlx::query("SELECT read_at FROM notifications WHERE id = $1 AND user_id = $2")
        .bind(&id)
        .bind(&user.id)
        .fetch_optional(w.conn())
        .await?
        // Someone else's notification is answered like a missing one.
        .ok_or_else(|| ApiError::not_found(format!("notification {id:?}")))?;
    let read_at = match row.try_get::<Option<i64>, _>("read_at")? {
        Some(at) => at,
        None => {
            let now = crate::db::now();
            sqlx::query("UPDATE notifications SET read_at = $1 WHERE id = $2 AND user_id = $3")
                .bind(now)
                .bind(&id)
                .bind(&user.id)
                .execute(w.conn())
                .await?;
            now
        }
    };
    w.commit().await?;
    Ok(Json(MarkedRead { id, read_at }))
}

/// The caller's notifications marked read.
#[derive(Serialize, ToSchema)]
struct MarkedAllRead {
    /// How many were unread.
    marked: u64,
    /// When they were marked (seconds since the Unix epoch).
    read_at: i64,
}

/// Marks all the caller's notifications read.
#[utoipa::path(
    post,
    path = "/v1/notifications/read-all",
    tag = "notifications",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Marked read", body = MarkedAllRead),
        (status = 403, description = "The caller is a service account (`forbidden`)",
         body = ErrorBody),
    )
)]
async fn read_all(State(hub): State<Arc<Hub>>, caller: Caller) -> ApiResult<Json<MarkedAllRead>> {
    let user = caller.user()?;
    let now = crate::db::now();
    let mut w = hub.writer().await?;
    let done =
        sqlx::query("UPDATE notifications SET read_at = $1 WHERE user_id = $2 AND read_at IS NULL")
            .bind(now)
            .bind(&user.id)
            .execute(w.conn())
            .await?;
    w.commit().await?;
    Ok(Json(MarkedAllRead {
        marked: done.rows_affected(),
        read_at: now,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// Replay from after this sequence number (default: 0, all; `Last-Event-ID` wins).
    #[serde(default)]
    after: Option<i64>,
}

/// Where a stream starts: `Last-Event-ID` (a reconnecting `EventSource`), else `?after=`.
fn start_after(headers: &HeaderMap, q: &StreamQuery) -> ApiResult<i64> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(q.after.unwrap_or(0));
    };
    let text = value.to_str().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(q.after.unwrap_or(0));
    }
    text.parse::<i64>().ok().filter(|s| *s >= 0).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_last_event_id",
            format!("Last-Event-ID {text:?} is not a notification sequence number"),
        )
    })
}

/// How many notifications one replay query reads.
const REPLAY_PAGE: i64 = 500;
/// How often a stream checks that its session is still valid.
const RECHECK: Duration = Duration::from_secs(60);

struct StreamState {
    hub: Arc<Hub>,
    user_id: String,
    /// The last sequence number sent (or the one the client had).
    last: i64,
    live: broadcast::Receiver<Notification>,
    queued: VecDeque<Notification>,
    replaying: bool,
    /// The bearer token the stream was opened with, re-checked every [`RECHECK`].
    token: Zeroizing<String>,
    recheck: tokio::time::Interval,
}

impl StreamState {
    /// The next notification for this stream, or `None` to end it.
    async fn next(&mut self) -> Option<Notification> {
        loop {
            if let Some(n) = self.queued.pop_front() {
                return Some(n);
            }
            if self.replaying {
                match page(&self.hub, &self.user_id, self.last, false, REPLAY_PAGE).await {
                    Ok(items) if items.is_empty() => self.replaying = false,
                    Ok(items) => self.queued.extend(items),
                    Err(e) => {
                        // Logged by ApiError; the client reconnects and replays again.
                        tracing::warn!(user = %self.user_id, error = %e, "notification replay failed; closing the stream");
                        return None;
                    }
                }
                continue;
            }
            let received = tokio::select! {
                received = self.live.recv() => received,
                _ = self.recheck.tick() => {
                    if !self.still_signed_in().await {
                        return None;
                    }
                    continue;
                }
            };
            match received {
                Ok(n) if n.user_id == self.user_id && n.seq > self.last => return Some(n),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::info!(user = %self.user_id, missed, "notification stream fell behind; closing it (the client replays on reconnect)");
                    return None;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Whether the stream's session still names its user (not signed out, not expired).
    async fn still_signed_in(&self) -> bool {
        match crate::auth::authenticate(&self.hub, &self.token).await {
            Ok(Caller::User(u)) if u.id == self.user_id => true,
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(user = %self.user_id, error = %e, "notification stream's session ended; closing it");
                false
            }
        }
    }
}

/// The SSE event for `n`. An event name with a line break (not a kind the hub raises) would
/// break the framing: it is sent as `message` instead.
fn sse_event(n: &Notification) -> Option<SseEvent> {
    let data = match serde_json::to_string(n) {
        Ok(data) => data,
        Err(e) => {
            tracing::error!(id = %n.id, error = %e, "cannot encode a notification; skipped");
            return None;
        }
    };
    let kind = if n.kind.contains(['\r', '\n']) || n.kind.is_empty() {
        "message"
    } else {
        n.kind.as_str()
    };
    Some(
        SseEvent::default()
            .id(n.seq.to_string())
            .event(kind)
            .data(data),
    )
}

/// The caller's notifications as server-sent events: a replay after `Last-Event-ID` (or
/// `after`), then live ones (users only; see the module docs).
#[utoipa::path(
    get,
    path = "/v1/notifications/stream",
    tag = "notifications",
    operation_id = "stream_notifications",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<i64>, Header,
         description = "The last sequence number received (a reconnecting EventSource)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "An endless stream: `id:` the sequence number, `event:` \
         the kind, `data:` the notification as JSON", content_type = "text/event-stream",
         body = String),
        (status = 400, description = "`Last-Event-ID` is not a sequence number \
         (`invalid_last_event_id`), or a parameter is malformed (`invalid_query`)",
         body = ErrorBody),
        (status = 403, description = "The caller is a service account (`forbidden`)",
         body = ErrorBody),
    )
)]
async fn stream(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let user = caller.user()?;
    let after = start_after(&headers, &q)?;
    // The extractor has checked it; it is kept to check again while the stream lasts.
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| Zeroizing::new(t.to_owned()))
        .ok_or_else(|| ApiError::unauthenticated("Authorization must be 'Bearer <token>'"))?;
    let recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
    // Subscribe first, then replay from the database: see the module docs.
    let live = hub.notify.subscribe();
    let state = StreamState {
        hub: hub.clone(),
        user_id: user.id.clone(),
        last: after,
        live,
        queued: VecDeque::new(),
        replaying: true,
        token,
        recheck,
    };
    let events = futures::stream::unfold(state, |mut st| async move {
        loop {
            let n = st.next().await?;
            st.last = n.seq;
            if let Some(event) = sse_event(&n) {
                return Some((Ok(event), st));
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
