//! An org's webhooks: URLs the hub POSTs signed JSON to when events of the kinds they
//! subscribed to happen in the org ([`super::worker`] delivers, [`super::signature`] signs).
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /v1/orgs/{org}/webhooks` `{url, events}` | owner, admin | creates one; answers `{id, secret, ...}`: the secret is shown this once |
//! | `GET /v1/orgs/{org}/webhooks` | owner, admin, auditor | lists the active ones (never their secrets) |
//! | `DELETE /v1/orgs/{org}/webhooks/{id}` | owner, admin | deletes one; its pending deliveries end `failed` |
//! | `GET /v1/orgs/{org}/webhooks/{id}/deliveries?limit=N` | owner, admin, auditor | its delivery log, newest first |
//!
//! Deployment administrators may do all of these. Creation and deletion are audited
//! (`webhook.create`, `webhook.delete`; the entry names the URL's origin only, as a URL's path
//! may carry a credential of the receiver's).
//!
//! **Checks:** the URL is absolute `http` or `https` with a host, at most
//! [`MAX_URL_LEN`] bytes; `events` is a non-empty list of kinds from [`super::KINDS`] or `*`.
//! Webhook URLs may name any host, private addresses included (an org's own receivers are
//! often internal): an operator who must keep the hub from reaching its internal network
//! filters its egress.
//!
//! The secret is 32 random bytes, base64url (no padding); it is stored to sign with, is never
//! listed or logged, and a lost one is replaced by creating a new webhook.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use base64ct::{Base64UrlUnpadded, Encoding};
use coffer_kms::authz::OrgRole;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{AnyConnection, Row};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Event, KINDS};
use crate::audit::AuditRecord;
use crate::auth::{self, Caller};
use crate::error::{ApiError, ApiResult, ErrorBody, Json, Path, Query};
use crate::state::Hub;

/// The longest webhook URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Subscribes a webhook to every kind.
pub const ALL_KINDS: &str = "*";

/// Who manages an org's webhooks.
const MANAGERS: [OrgRole; 2] = [OrgRole::Owner, OrgRole::Admin];
/// Who may read an org's webhooks and their delivery logs.
const READERS: [OrgRole; 3] = [OrgRole::Owner, OrgRole::Admin, OrgRole::Auditor];

pub(super) fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(delete))
        .routes(routes!(deliveries))
}

/// The schema of a list of subscribed event kinds: [`KINDS`] or `*`.
fn event_kinds() -> ArrayBuilder {
    let kinds = std::iter::once(ALL_KINDS).chain(KINDS);
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(kinds)),
        )
        .description(Some("Event kinds, or `*` for all"))
}

/// 404 unless `org` exists.
async fn require_org(hub: &Hub, org: &str) -> ApiResult<()> {
    let exists = sqlx::query("SELECT 1 AS x FROM orgs WHERE id = $1")
        .bind(org)
        .fetch_optional(&hub.db)
        .await?
        .is_some();
    if exists {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("org {org:?}")))
    }
}

/// The URL if it is absolute `http(s)` with a host; an error naming what is wrong if not.
fn check_url(url: &str) -> ApiResult<reqwest::Url> {
    let bad =
        |why: &str| ApiError::bad_request("invalid_url", format!("webhook url {url:?} {why}"));
    if url.len() > MAX_URL_LEN {
        return Err(ApiError::bad_request(
            "invalid_url",
            format!(
                "webhook url is {} bytes; at most {MAX_URL_LEN} are accepted",
                url.len()
            ),
        ));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("must be http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    Ok(parsed)
}

/// The subscribed kinds, sorted and without duplicates; an error naming an unknown one.
fn check_events(events: &[String]) -> ApiResult<Vec<String>> {
    if events.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_events",
            "events must name at least one event kind (or \"*\" for all)",
        ));
    }
    let mut out = Vec::new();
    for e in events {
        if e != ALL_KINDS && !KINDS.contains(&e.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_events",
                format!("unknown event kind {e:?}: expected \"*\" or one of {KINDS:?}"),
            ));
        }
        out.push(e.clone());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Whether a webhook subscribed to `events_json` hears `kind`. A stored list that does not
/// parse subscribes to nothing (and is logged).
fn subscribed(webhook: &str, events_json: &str, kind: &str) -> bool {
    match serde_json::from_str::<Vec<String>>(events_json) {
        Ok(events) => events.iter().any(|e| e == ALL_KINDS || e == kind),
        Err(e) => {
            tracing::error!(webhook, error = %e, "stored webhook event list is not a JSON list of strings");
            false
        }
    }
}

/// A fresh webhook secret: 32 random bytes, base64url without padding.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    Base64UrlUnpadded::encode_string(&bytes)
}

/// Queues, in the caller's transaction, one pending delivery of `event` for each active webhook
/// of its org subscribed to its kind; returns how many.
pub(super) async fn queue_deliveries(
    conn: &mut AnyConnection,
    event: &Event,
    now: i64,
) -> ApiResult<usize> {
    let hooks =
        sqlx::query("SELECT id, events_json FROM webhooks WHERE org_id = $1 AND active = 1")
            .bind(&event.org)
            .fetch_all(&mut *conn)
            .await?;
    let mut queued = 0;
    for hook in hooks {
        let webhook_id: String = hook.try_get("id")?;
        let events_json: String = hook.try_get("events_json")?;
        if !subscribed(&webhook_id, &events_json, event.kind) {
            continue;
        }
        let id = crate::db::new_id("wd-");
        let payload = json!({
            "id": id,
            "event": event.kind,
            "org": event.org,
            "job_id": event.job_id,
            "body": event.body,
            "created_at": now,
        })
        .to_string();
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook_id, event, payload, status, attempts, \
             next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5, $5)",
        )
        .bind(&id)
        .bind(&webhook_id)
        .bind(event.kind)
        .bind(&payload)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        queued += 1;
    }
    Ok(queued)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateWebhook {
    /// Where to POST: an absolute `http` or `https` URL with a host, at most 2048 bytes.
    #[schema(example = "https://hooks.example/coffer")]
    url: String,
    /// The event kinds it hears (at least one), or `*` for all.
    #[schema(schema_with = event_kinds)]
    events: Vec<String>,
}

/// A webhook, as created: with its secret, shown this once.
#[derive(Serialize, ToSchema)]
struct CreatedWebhook {
    /// Its id.
    id: String,
    /// Where it POSTs.
    url: String,
    /// The event kinds it hears, sorted.
    #[schema(schema_with = event_kinds)]
    events: Vec<String>,
    /// When it was created (seconds since the Unix epoch).
    created_at: i64,
    /// The HMAC key its deliveries are signed with (base64url, no padding).
    secret: String,
}

/// Creates a webhook of an org (its owners and admins).
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/webhooks",
    tag = "webhooks",
    operation_id = "create_webhook",
    params(("org" = String, Path, description = "The org's id", example = "acme")),
    request_body = CreateWebhook,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = CreatedWebhook),
        (status = 400, description = "The URL or events are invalid (`invalid_url`, \
         `invalid_events`, `invalid_body`)", body = ErrorBody),
        (status = 403, description = "The caller is not an owner or admin of the org \
         (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such org (`not_found`)", body = ErrorBody),
    )
)]
async fn create(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(org): Path<String>,
    Json(req): Json<CreateWebhook>,
) -> ApiResult<(StatusCode, Json<CreatedWebhook>)> {
    let user = caller.user()?;
    require_org(&hub, &org).await?;
    auth::require_role(&hub, user, &org, &MANAGERS).await?;
    let url = check_url(&req.url)?;
    let events = check_events(&req.events)?;
    let events_json =
        serde_json::to_string(&events).map_err(|e| ApiError::internal("webhook events", e))?;
    let id = crate::db::new_id("wh-");
    let secret = new_secret();
    let now = crate::db::now();
    let mut w = hub.writer().await?;
    sqlx::query(
        "INSERT INTO webhooks (id, org_id, url, secret, events_json, created_at, active) \
         VALUES ($1, $2, $3, $4, $5, $6, 1)",
    )
    .bind(&id)
    .bind(&org)
    .bind(&req.url)
    .bind(&secret)
    .bind(&events_json)
    .bind(now)
    .execute(w.conn())
    .await?;
    w.audit(
        AuditRecord::ok(caller.actor(), "webhook.create")
            .org(&org)
            .target(&id)
            .detail(json!({"origin": url.origin().ascii_serialization(), "events": events})),
    )
    .await?;
    w.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            id,
            url: req.url,
            events,
            created_at: now,
            secret,
        }),
    ))
}

/// A webhook, as listed (never its secret).
#[derive(Serialize, ToSchema)]
struct WebhookInfo {
    /// Its id.
    id: String,
    /// Where it POSTs.
    url: String,
    /// The event kinds it hears.
    #[schema(schema_with = event_kinds)]
    events: Vec<String>,
    /// When it was created (seconds since the Unix epoch).
    created_at: i64,
}

/// An org's webhooks.
#[derive(Serialize, ToSchema)]
struct WebhookList {
    /// The active ones, oldest first.
    webhooks: Vec<WebhookInfo>,
}

/// The active webhooks of an org (its owners, admins and auditors).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/webhooks",
    tag = "webhooks",
    operation_id = "list_webhooks",
    params(("org" = String, Path, description = "The org's id", example = "acme")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The webhooks", body = WebhookList),
        (status = 403, description = "The caller is not an owner, admin or auditor of the org \
         (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such org (`not_found`)", body = ErrorBody),
    )
)]
async fn list(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(org): Path<String>,
) -> ApiResult<Json<WebhookList>> {
    let user = caller.user()?;
    require_org(&hub, &org).await?;
    auth::require_role(&hub, user, &org, &READERS).await?;
    let rows = sqlx::query(
        "SELECT id, url, events_json, created_at FROM webhooks \
         WHERE org_id = $1 AND active = 1 ORDER BY created_at, id",
    )
    .bind(&org)
    .fetch_all(&hub.db)
    .await?;
    let mut hooks = Vec::new();
    for r in rows {
        let events_json: String = r.try_get("events_json")?;
        let events: Vec<String> = serde_json::from_str(&events_json)
            .map_err(|e| ApiError::internal("stored webhook events", e))?;
        hooks.push(WebhookInfo {
            id: r.try_get("id")?,
            url: r.try_get("url")?,
            events,
            created_at: r.try_get("created_at")?,
        });
    }
    Ok(Json(WebhookList { webhooks: hooks }))
}

/// 404 unless `id` is an active webhook of `org` (read through `conn`).
async fn require_webhook(conn: &mut AnyConnection, org: &str, id: &str) -> ApiResult<String> {
    let row = sqlx::query("SELECT url FROM webhooks WHERE id = $1 AND org_id = $2 AND active = 1")
        .bind(id)
        .bind(org)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("webhook {id:?} of org {org:?}")))?;
    Ok(row.try_get("url")?)
}

/// Deletes a webhook of an org; its pending deliveries end `failed` (its owners and admins).
#[utoipa::path(
    delete,
    path = "/v1/orgs/{org}/webhooks/{id}",
    tag = "webhooks",
    operation_id = "delete_webhook",
    params(
        ("org" = String, Path, description = "The org's id", example = "acme"),
        ("id" = String, Path, description = "The webhook's id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The caller is not an owner or admin of the org \
         (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such org, or no such active webhook of it \
         (`not_found`)", body = ErrorBody),
    )
)]
async fn delete(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path((org, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let user = caller.user()?;
    require_org(&hub, &org).await?;
    auth::require_role(&hub, user, &org, &MANAGERS).await?;
    let now = crate::db::now();
    let mut w = hub.writer().await?;
    let url = require_webhook(w.conn(), &org, &id).await?;
    // The row stays (its delivery log refers to it) but hears nothing more.
    sqlx::query("UPDATE webhooks SET active = 0 WHERE id = $1")
        .bind(&id)
        .execute(w.conn())
        .await?;
    let dropped = sqlx::query(
        "UPDATE webhook_deliveries SET status = 'failed', last_error = 'webhook deleted', \
         updated_at = $1 WHERE webhook_id = $2 AND status = 'pending'",
    )
    .bind(now)
    .bind(&id)
    .execute(w.conn())
    .await?
    .rows_affected();
    let origin = reqwest::Url::parse(&url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    w.audit(
        AuditRecord::ok(caller.actor(), "webhook.delete")
            .org(&org)
            .target(&id)
            .detail(json!({"origin": origin, "pending_dropped": dropped})),
    )
    .await?;
    w.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeliveriesQuery {
    /// The most to answer: 1 to 500 (default: 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// One delivery of an event to a webhook.
#[derive(Serialize, ToSchema)]
struct Delivery {
    /// Its id (also the payload's `id`).
    id: String,
    /// The event kind.
    event: String,
    /// How many attempts were made.
    attempts: i64,
    /// When the next attempt is due, while pending (seconds since the Unix epoch).
    next_attempt_at: Option<i64>,
    /// `pending`, `delivered` or `failed`.
    #[schema(example = "delivered")]
    status: String,
    /// The HTTP status of the last attempt, if it got one.
    last_http_status: Option<i64>,
    /// Why the last attempt failed, if it did.
    last_error: Option<String>,
    /// When it was queued (seconds since the Unix epoch).
    created_at: i64,
    /// When it last changed (seconds since the Unix epoch).
    updated_at: i64,
}

/// A webhook's delivery log.
#[derive(Serialize, ToSchema)]
struct DeliveryList {
    /// The deliveries, newest first.
    deliveries: Vec<Delivery>,
}

/// The delivery log of a webhook of an org, newest first (its owners, admins and auditors).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/webhooks/{id}/deliveries",
    tag = "webhooks",
    params(
        ("org" = String, Path, description = "The org's id", example = "acme"),
        ("id" = String, Path, description = "The webhook's id"),
        DeliveriesQuery,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The deliveries", body = DeliveryList),
        (status = 400, description = "The limit is out of range (`invalid_limit`), or a \
         parameter is malformed (`invalid_query`)", body = ErrorBody),
        (status = 403, description = "The caller is not an owner, admin or auditor of the org \
         (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such org, or no such active webhook of it \
         (`not_found`)", body = ErrorBody),
    )
)]
async fn deliveries(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path((org, id)): Path<(String, String)>,
    Query(q): Query<DeliveriesQuery>,
) -> ApiResult<Json<DeliveryList>> {
    let user = caller.user()?;
    require_org(&hub, &org).await?;
    auth::require_role(&hub, user, &org, &READERS).await?;
    let limit = q.limit.unwrap_or(super::inbox::DEFAULT_LIMIT);
    let max = super::inbox::MAX_LIMIT;
    if !(1..=max).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit {limit} must be between 1 and {max}"),
        ));
    }
    let mut conn = hub.db.acquire().await?;
    require_webhook(&mut conn, &org, &id).await?;
    let rows = sqlx::query(
        "SELECT id, event, status, attempts, next_attempt_at, last_http_status, last_error, \
         created_at, updated_at FROM webhook_deliveries WHERE webhook_id = $1 \
         ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(&id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let status: String = r.try_get("status")?;
        let next: i64 = r.try_get("next_attempt_at")?;
        out.push(Delivery {
            id: r.try_get("id")?,
            event: r.try_get("event")?,
            attempts: r.try_get("attempts")?,
            next_attempt_at: (status == "pending").then_some(next),
            status,
            last_http_status: r.try_get("last_http_status")?,
            last_error: r.try_get("last_error")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        });
    }
    Ok(Json(DeliveryList { deliveries: out }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert!(check_url("https://hooks.example/x?y=1").is_ok());
        assert!(check_url("http://127.0.0.1:9000/").is_ok());
        for bad in [
            "ftp://h/x",
            "hooks.example/x",
            "file:///etc/passwd",
            "https://",
            "",
        ] {
            let e = check_url(bad).unwrap_err();
            assert_eq!(e.code, "invalid_url", "{bad}");
        }
        let long = format!("https://h/{}", "a".repeat(MAX_URL_LEN));
        assert!(check_url(&long).unwrap_err().message.contains("at most"));
    }

    #[test]
    fn events_are_known_kinds_or_all() {
        assert_eq!(
            check_events(&["job.failed".into(), "*".into(), "job.failed".into()]).unwrap(),
            vec!["*".to_owned(), "job.failed".to_owned()]
        );
        assert!(check_events(&[]).is_err());
        let e = check_events(&["job.exploded".into()]).unwrap_err();
        assert!(e.message.contains("job.exploded"), "{}", e.message);
        assert!(subscribed("w", r#"["*"]"#, "job.failed"));
        assert!(subscribed("w", r#"["job.failed"]"#, "job.failed"));
        assert!(!subscribed("w", r#"["job.succeeded"]"#, "job.failed"));
        assert!(!subscribed("w", "not json", "job.failed"));
    }
}
