//! Collecting the KMS's decisions into the audit log.
//!
//! The KMS journals every decision before it runs (`coffer_kms::api::journal`) and holds it
//! until collected. The hub attests the KMS endpoint (as for co-signing: the deployment's pins
//! for the kms role), then asks `POST /.well-known/coffer/audit/events` on the attested TLS key
//! with an audit collection token it signs, naming the journal and the last sequence number it
//! has appended. Each page is appended, one entry per decision (`kms.<operation>`, the
//! decision's subject as actor, the whole event in `detail`), together with the new position in
//! `kms_journals`, in one transaction: a crash between collecting and committing just collects
//! the same events again, and the next request acknowledges them.
//!
//! A journal the hub has not seen before means the KMS started (again): the hub appends a
//! `kms.journal_started` entry naming the previous journal and how far it had collected it, so
//! the log says where decisions made just before a KMS restart may be missing.

use coffer_kms::api::journal::MAX_PAGE;
use coffer_kms::api::AUDIT_EVENTS_PATH;
use coffer_kms::authz::{AuditCollectClaims, AuditEvent, Outcome};
use coffer_mesh::endpoint::{check_endpoint, request_attested};
use coffer_mesh::{Simulation, Trust};
use coffer_types::Role;
use serde::Deserialize;
use serde_json::json;
use sqlx::Row;

use super::{AuditOutcome, AuditRecord};
use crate::config::KmsLink;
use crate::error::ApiError;
use crate::state::Hub;

/// How often the collector asks.
pub const COLLECT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a collection failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The hub's own side failed.
    #[error("{0}")]
    Hub(#[from] ApiError),
    /// The KMS endpoint could not be reached or did not attest.
    #[error("the KMS endpoint {url} did not attest: {reason}")]
    NotAttested {
        /// The endpoint.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The KMS refused or answered something else than a journal page.
    #[error("the KMS answered the collection with HTTP {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The body, as text.
        body: String,
    },
}

#[derive(Deserialize)]
struct Page {
    journal: String,
    events: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    seq: u64,
    event: AuditEvent,
}

/// The KMS endpoint's attested TLS key, kept between collections (re-attested when a request
/// on it fails: the KMS restarted, or another server answers).
#[derive(Debug, Default)]
pub struct Collector {
    attested_spki: Option<String>,
}

impl Collector {
    /// A collector that attests on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Collects every decision the KMS holds; returns how many were appended.
    pub async fn collect(&mut self, hub: &Hub, link: &KmsLink) -> Result<u64, CollectError> {
        let mut appended = 0;
        loop {
            let page = match self.page(hub, link).await {
                Ok(page) => page,
                Err(e) => {
                    // Attest afresh next time.
                    self.attested_spki = None;
                    return Err(e);
                }
            };
            let n = page.events.len();
            appended += append_page(hub, page).await?;
            if n < MAX_PAGE {
                return Ok(appended);
            }
        }
    }

    async fn page(&mut self, hub: &Hub, link: &KmsLink) -> Result<Page, CollectError> {
        let not_attested = |reason: String| CollectError::NotAttested {
            url: link.endpoint.clone(),
            reason,
        };
        let spki = match &self.attested_spki {
            Some(spki) => spki.clone(),
            None => {
                let simulation = if link.allow_simulation {
                    Simulation::DangerousAccept
                } else {
                    Simulation::Refuse
                };
                let trust = Trust::from_manifest(&link.manifest, simulation)
                    .map_err(|e| not_attested(e.to_string()))?;
                let check = check_endpoint(&link.endpoint, &trust, Some(Role::Kms))
                    .await
                    .map_err(|e| not_attested(e.to_string()))?;
                self.attested_spki = Some(check.tls_spki_sha256.clone());
                check.tls_spki_sha256
            }
        };
        let (journal, after) = position(hub).await?;
        let now = u64::try_from(crate::db::now()).unwrap_or(0);
        let token = hub
            .keys
            .sign_audit_collect(&AuditCollectClaims {
                iss: hub.keys.issuer().to_owned(),
                sub: "hub".into(),
                aud: crate::keys::HubKeys::audience(),
                iat: now,
                exp: now + 60,
                nbf: None,
                jti: crate::db::new_id("ac-"),
            })
            .map_err(|e| ApiError::internal("sign audit collection request", e))?;
        let body = json!({"token": token, "journal": journal, "after": after, "limit": MAX_PAGE});
        let (status, answer) = request_attested(
            &link.endpoint,
            &spki,
            hyper::Method::POST,
            AUDIT_EVENTS_PATH,
            body.to_string().into(),
        )
        .await
        .map_err(|e| not_attested(e.to_string()))?;
        if !status.is_success() {
            return Err(CollectError::Refused {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&answer).chars().take(500).collect(),
            });
        }
        serde_json::from_slice(&answer).map_err(|e| CollectError::Refused {
            status: status.as_u16(),
            body: format!("not a journal page: {e}"),
        })
    }
}

/// The journal collected last and how far (`None, 0` before the first).
async fn position(hub: &Hub) -> Result<(Option<String>, u64), ApiError> {
    let row = sqlx::query("SELECT journal, last_seq FROM kms_journals ORDER BY updated_at DESC, first_seen DESC LIMIT 1")
        .fetch_optional(&hub.db)
        .await?;
    Ok(match row {
        Some(r) => (
            Some(r.try_get("journal")?),
            u64::try_from(r.try_get::<i64, _>("last_seq")?).unwrap_or(0),
        ),
        None => (None, 0),
    })
}

/// Appends one page (and the journal's new position) in one transaction.
async fn append_page(hub: &Hub, page: Page) -> Result<u64, ApiError> {
    let now = crate::db::now();
    let mut w = hub.writer().await?;
    let known = sqlx::query("SELECT last_seq FROM kms_journals WHERE journal = $1")
        .bind(&page.journal)
        .fetch_optional(w.conn())
        .await?;
    let mut last = match known {
        Some(r) => u64::try_from(r.try_get::<i64, _>("last_seq")?).unwrap_or(0),
        None => {
            let previous = sqlx::query(
                "SELECT journal, last_seq FROM kms_journals ORDER BY updated_at DESC, first_seen DESC LIMIT 1",
            )
            .fetch_optional(w.conn())
            .await?;
            let previous = match previous {
                Some(r) => json!({"journal": r.try_get::<String, _>("journal")?,
                                  "collected_to": r.try_get::<i64, _>("last_seq")?}),
                None => serde_json::Value::Null,
            };
            w.audit(
                AuditRecord::ok("kms", "kms.journal_started")
                    .target(&page.journal)
                    .detail(json!({"journal": page.journal, "previous": previous})),
            )
            .await?;
            sqlx::query(
                "INSERT INTO kms_journals (journal, last_seq, first_seen, updated_at) VALUES ($1, 0, $2, $2)",
            )
            .bind(&page.journal)
            .bind(now)
            .execute(w.conn())
            .await?;
            0
        }
    };
    let mut appended = 0;
    for entry in page.events {
        if entry.seq <= last {
            continue; // already appended (a page repeated after a crash)
        }
        let e = &entry.event;
        let operation = serde_json::to_value(e.operation)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        let mut record = AuditRecord::ok(
            e.subject
                .clone()
                .unwrap_or_else(|| "unauthenticated".into()),
            format!("kms.{operation}"),
        )
        .detail(json!({"kms_journal": page.journal, "seq": entry.seq, "event": e}));
        if e.org != "*" {
            record = record.org(&e.org);
        }
        if let Some(key) = &e.key_id {
            record = record.target(key);
        }
        if e.outcome == Outcome::Denied {
            record.outcome = AuditOutcome::Denied;
        }
        w.audit(record).await?;
        last = entry.seq;
        appended += 1;
    }
    sqlx::query("UPDATE kms_journals SET last_seq = $1, updated_at = $2 WHERE journal = $3")
        .bind(i64::try_from(last).unwrap_or(i64::MAX))
        .bind(now)
        .bind(&page.journal)
        .execute(w.conn())
        .await?;
    w.commit().await?;
    Ok(appended)
}

/// Starts collecting every [`COLLECT_INTERVAL`] when the hub has a KMS link; failures are
/// logged and retried.
pub fn spawn_collector(hub: std::sync::Arc<Hub>) {
    let Some(link) = hub.config.kms.clone() else {
        return;
    };
    let hub = std::sync::Arc::downgrade(&hub);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!("cannot start the KMS audit collector outside a tokio runtime");
        return;
    };
    runtime.spawn(async move {
        let mut collector = Collector::new();
        let mut ticks = tokio::time::interval(COLLECT_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(hub) = hub.upgrade() else {
                return;
            };
            match collector.collect(&hub, &link).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(n, "KMS decisions appended to the audit log"),
                Err(e) => tracing::warn!(error = %e, "KMS audit journal not collected"),
            }
        }
    });
}
