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
//! `kms.journal_started` entry naming the previous journal and how far it had collected it.
//!
//! **Replayed entries.** The KMS keeps its journal on its disk and, at start, carries what the
//! previous process left uncollected over into the new journal, each entry marked
//! `replayed_from: {journal, seq}`, its original position. The hub may have appended some of
//! them already: collected just before the crash, with the acknowledgement (the next request)
//! never seen. So a replayed entry is appended only if its original sequence number is past what
//! the log holds of its original journal: the journal's collected position (`kms_journals`),
//! or what earlier replays of it brought in (`kms_journal_replays`, raised by every replayed
//! entry appended, in the same transaction). A KMS carries entries over in order, so holding
//! `(journal, seq)` means holding every entry of that journal up to `seq`. Skipped entries still
//! advance the new journal's position. An entry that stands for records the KMS could not carry
//! over (`kms.replay_journal`, denied, the KMS as actor: tampered or missing on its disk) has no
//! original position when it is made, so it is appended like a new decision.

use std::collections::HashMap;

use coffer_kms::api::journal::{JournalPosition, MAX_PAGE};
use coffer_kms::api::AUDIT_EVENTS_PATH;
use coffer_kms::authz::{AuditCollectClaims, AuditEvent, Operation, Outcome};
use coffer_mesh::endpoint::request_attested;
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
    /// Where a replayed entry was first recorded (absent from KMSs that do not replay).
    #[serde(default)]
    replayed_from: Option<JournalPosition>,
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
                // The KMS checked before restarted (a new process, a new TLS key): attest the
                // one that answers now, once, rather than fail this collection.
                Err(e @ CollectError::NotAttested { .. }) if self.attested_spki.is_some() => {
                    tracing::info!(error = %e, "KMS journal: the KMS checked before does not answer with its key; attesting it again");
                    self.attested_spki = None;
                    continue;
                }
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
                let check = link
                    .attest()
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
    let row = sqlx::query("SELECT journal, last_seq FROM kms_journals ORDER BY ord DESC LIMIT 1")
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

/// How far the log holds the entries of `journal`: collected from it, or replayed from it.
async fn held_through(conn: &mut sqlx::AnyConnection, journal: &str) -> Result<u64, ApiError> {
    let mut held = 0;
    for query in [
        "SELECT last_seq AS seq FROM kms_journals WHERE journal = $1",
        "SELECT covered_seq AS seq FROM kms_journal_replays WHERE journal = $1",
    ] {
        if let Some(r) = sqlx::query(query)
            .bind(journal)
            .fetch_optional(&mut *conn)
            .await?
        {
            held = held.max(u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0));
        }
    }
    Ok(held)
}

/// Records that the log holds `journal`'s entries up to `seq` through replays (never lowers it).
async fn cover(
    conn: &mut sqlx::AnyConnection,
    journal: &str,
    seq: u64,
    now: i64,
) -> Result<(), ApiError> {
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    let covered = sqlx::query("SELECT covered_seq FROM kms_journal_replays WHERE journal = $1")
        .bind(journal)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.try_get::<i64, _>("covered_seq"))
        .transpose()?;
    let query = match covered {
        Some(covered) if covered >= seq => return Ok(()),
        Some(_) => {
            "UPDATE kms_journal_replays SET covered_seq = $1, updated_at = $2 WHERE journal = $3"
        }
        None => {
            "INSERT INTO kms_journal_replays (covered_seq, updated_at, journal) VALUES ($1, $2, $3)"
        }
    };
    sqlx::query(query)
        .bind(seq)
        .bind(now)
        .bind(journal)
        .execute(&mut *conn)
        .await?;
    Ok(())
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
                "SELECT ord, journal, last_seq FROM kms_journals ORDER BY ord DESC LIMIT 1",
            )
            .fetch_optional(w.conn())
            .await?;
            let (ord, previous) = match previous {
                Some(r) => (
                    r.try_get::<i64, _>("ord")? + 1,
                    json!({"journal": r.try_get::<String, _>("journal")?,
                           "collected_to": r.try_get::<i64, _>("last_seq")?}),
                ),
                None => (1, serde_json::Value::Null),
            };
            w.audit(
                AuditRecord::ok("kms", "kms.journal_started")
                    .target(&page.journal)
                    .detail(json!({"journal": page.journal, "previous": previous})),
            )
            .await?;
            sqlx::query(
                "INSERT INTO kms_journals (ord, journal, last_seq, first_seen, updated_at) VALUES ($1, $2, 0, $3, $3)",
            )
            .bind(ord)
            .bind(&page.journal)
            .bind(now)
            .execute(w.conn())
            .await?;
            0
        }
    };
    let mut appended = 0;
    // What the log holds of each original journal of this page's replayed entries.
    let mut held: HashMap<String, u64> = HashMap::new();
    for entry in page.events {
        if entry.seq <= last {
            continue; // already appended (a page repeated after a crash)
        }
        if let Some(origin) = &entry.replayed_from {
            let through = match held.get(&origin.journal) {
                Some(&through) => through,
                None => held_through(w.conn(), &origin.journal).await?,
            };
            if origin.seq <= through {
                // Appended before the KMS restarted (its acknowledgement was lost).
                held.insert(origin.journal.clone(), through);
                last = entry.seq;
                continue;
            }
            held.insert(origin.journal.clone(), origin.seq);
            cover(w.conn(), &origin.journal, origin.seq, now).await?;
        }
        let e = &entry.event;
        let operation = serde_json::to_value(e.operation)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        let actor = match (&e.subject, e.operation) {
            // The KMS's own report of records it could not carry over at a restart.
            (_, Operation::ReplayJournal) => "kms".to_owned(),
            (Some(subject), _) => subject.clone(),
            (None, _) => "unauthenticated".to_owned(),
        };
        let mut detail = json!({"kms_journal": page.journal, "seq": entry.seq, "event": e});
        if let Some(origin) = &entry.replayed_from {
            detail["replayed_from"] = json!({"journal": origin.journal, "seq": origin.seq});
        }
        let mut record = AuditRecord::ok(actor, format!("kms.{operation}")).detail(detail);
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

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_kms::authz::Operation;
    use coffer_types::Role;

    fn event(outcome: Outcome) -> AuditEvent {
        AuditEvent {
            time: 1,
            peer_role: Some(Role::Client),
            peer_measurement: None,
            subject: Some("user:alice".into()),
            issuer: None,
            credential_id: None,
            operation: Operation::UnwrapDataKey,
            org: "acme".into(),
            workspace: None,
            key_id: Some("0123456789abcdef0123456789abcdef".into()),
            outcome,
            reason: None,
            message: String::new(),
        }
    }

    fn page(journal: &str, seqs: &[u64]) -> Page {
        Page {
            journal: journal.into(),
            events: seqs
                .iter()
                .map(|&seq| Entry {
                    seq,
                    event: event(if seq % 2 == 0 {
                        Outcome::Denied
                    } else {
                        Outcome::Allowed
                    }),
                    replayed_from: None,
                })
                .collect(),
        }
    }

    /// A page of journal `journal` from `first` on, each entry replayed from the `(journal,
    /// seq)` given, or recorded in this journal (`None`).
    fn replayed(journal: &str, first: u64, origins: &[Option<(&str, u64)>]) -> Page {
        Page {
            journal: journal.into(),
            events: origins
                .iter()
                .zip(first..)
                .map(|(origin, seq)| Entry {
                    seq,
                    event: event(Outcome::Allowed),
                    replayed_from: origin.map(|(journal, seq)| JournalPosition {
                        journal: journal.into(),
                        seq,
                    }),
                })
                .collect(),
        }
    }

    async fn test_hub(dir: &std::path::Path) -> std::sync::Arc<Hub> {
        Hub::open(crate::HubConfig {
            database_url: format!("sqlite://{}", dir.join("hub.db").display()),
            state_dir: dir.join("state"),
            issuer: "https://hub.test".into(),
            audit_origin: "coffer/test/audit".into(),
            oidc: Vec::new(),
            kms: None,
        })
        .await
        .unwrap()
    }

    /// `(journal, seq, replayed_from)` of a KMS decision in the log.
    type Decision = (String, u64, Option<(String, u64)>);

    /// Every KMS decision in the log, in order.
    async fn decisions(hub: &Hub) -> Vec<Decision> {
        sqlx::query("SELECT body FROM audit_entries ORDER BY idx")
            .fetch_all(&hub.db)
            .await
            .unwrap()
            .iter()
            .filter_map(|r| {
                let v: serde_json::Value =
                    serde_json::from_str(&r.try_get::<String, _>("body").unwrap()).unwrap();
                let d = &v["detail"];
                let seq = d["seq"].as_u64()?;
                let origin = d["replayed_from"]["journal"]
                    .as_str()
                    .map(|j| (j.to_owned(), d["replayed_from"]["seq"].as_u64().unwrap()));
                Some((d["kms_journal"].as_str()?.to_owned(), seq, origin))
            })
            .collect()
    }

    async fn actions(hub: &Hub) -> Vec<String> {
        sqlx::query("SELECT body FROM audit_entries ORDER BY idx")
            .fetch_all(&hub.db)
            .await
            .unwrap()
            .iter()
            .map(|r| {
                let v: serde_json::Value =
                    serde_json::from_str(&r.try_get::<String, _>("body").unwrap()).unwrap();
                format!("{} {} {}", v["action"], v["outcome"], v["detail"]["seq"])
            })
            .collect()
    }

    #[tokio::test]
    async fn each_decision_is_appended_once_and_a_new_journal_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let hub = test_hub(dir.path()).await;
        assert_eq!(append_page(&hub, page("a", &[1, 2])).await.unwrap(), 2);
        // A page seen again (the hub crashed before its next request acknowledged it) adds
        // only what is new.
        assert_eq!(append_page(&hub, page("a", &[1, 2, 3])).await.unwrap(), 1);
        assert_eq!(position(&hub).await.unwrap(), (Some("a".into()), 3));
        // The KMS restarted: a new journal, recorded with how far the previous one was read.
        assert_eq!(append_page(&hub, page("b", &[1])).await.unwrap(), 1);
        assert_eq!(position(&hub).await.unwrap(), (Some("b".into()), 1));
        assert_eq!(
            actions(&hub).await,
            [
                "\"kms.journal_started\" \"ok\" null",
                "\"kms.unwrap_data_key\" \"ok\" 1",
                "\"kms.unwrap_data_key\" \"denied\" 2",
                "\"kms.unwrap_data_key\" \"ok\" 3",
                "\"kms.journal_started\" \"ok\" null",
                "\"kms.unwrap_data_key\" \"ok\" 1",
            ]
        );
        let started: String = sqlx::query("SELECT body FROM audit_entries WHERE idx = 4")
            .fetch_one(&hub.db)
            .await
            .unwrap()
            .try_get("body")
            .unwrap();
        assert!(
            started.contains(r#""previous":{"collected_to":3,"journal":"a"}"#),
            "{started}"
        );
    }

    #[tokio::test]
    async fn a_replayed_entry_already_appended_is_skipped_and_a_new_one_appended() {
        let dir = tempfile::tempdir().unwrap();
        let hub = test_hub(dir.path()).await;
        // Journal a: the hub appends 1 to 3, but the KMS crashes before it sees the next
        // request acknowledge them.
        assert_eq!(append_page(&hub, page("a", &[1, 2, 3])).await.unwrap(), 3);
        // Journal b replays a's 2 to 5 (2 had been acknowledged on the KMS's memory only),
        // then records its own 5.
        let b = replayed(
            "b",
            1,
            &[
                Some(("a", 2)),
                Some(("a", 3)),
                Some(("a", 4)),
                Some(("a", 5)),
                None,
            ],
        );
        assert_eq!(append_page(&hub, b).await.unwrap(), 3);
        assert_eq!(position(&hub).await.unwrap(), (Some("b".into()), 5));
        // The KMS crashes again before seeing that acknowledgement: journal c replays b's
        // entries, each still marked with where it was first recorded, then records its own.
        let c = replayed(
            "c",
            1,
            &[Some(("a", 4)), Some(("a", 5)), Some(("b", 5)), None],
        );
        assert_eq!(append_page(&hub, c).await.unwrap(), 1);
        assert_eq!(position(&hub).await.unwrap(), (Some("c".into()), 4));
        let origin = |j: &str, s| Some((j.to_owned(), s));
        assert_eq!(
            decisions(&hub).await,
            [
                ("a".to_owned(), 1, None),
                ("a".to_owned(), 2, None),
                ("a".to_owned(), 3, None),
                ("b".to_owned(), 3, origin("a", 4)),
                ("b".to_owned(), 4, origin("a", 5)),
                ("b".to_owned(), 5, None),
                ("c".to_owned(), 4, None),
            ]
        );
    }

    #[tokio::test]
    async fn replays_of_a_journal_the_hub_never_collected_are_appended_once() {
        let dir = tempfile::tempdir().unwrap();
        let hub = test_hub(dir.path()).await;
        // Journal x crashed before the hub ever asked it: its entries come only replayed.
        let y = replayed("y", 1, &[Some(("x", 1)), Some(("x", 2))]);
        assert_eq!(append_page(&hub, y).await.unwrap(), 2);
        // y crashes before the acknowledgement; z carries them again, and one more of x that
        // y had not (it cannot: a replay keeps x's order; this checks the rule, not the KMS).
        let z = replayed("z", 1, &[Some(("x", 1)), Some(("x", 2)), Some(("x", 3))]);
        assert_eq!(append_page(&hub, z).await.unwrap(), 1);
        // A page repeated (the hub crashed before its next request) adds nothing.
        let z = replayed("z", 1, &[Some(("x", 1)), Some(("x", 2)), Some(("x", 3))]);
        assert_eq!(append_page(&hub, z).await.unwrap(), 0);
        let origins: Vec<_> = decisions(&hub)
            .await
            .into_iter()
            .map(|(j, s, o)| (j, s, o.unwrap().1))
            .collect();
        assert_eq!(
            origins,
            [
                ("y".to_owned(), 1, 1),
                ("y".to_owned(), 2, 2),
                ("z".to_owned(), 3, 3)
            ]
        );
    }

    #[tokio::test]
    async fn what_the_kms_could_not_carry_over_is_appended_as_the_kms_own_denial() {
        let dir = tempfile::tempdir().unwrap();
        let hub = test_hub(dir.path()).await;
        let mut page = replayed("b", 1, &[None]);
        let e = &mut page.events[0].event;
        e.operation = Operation::ReplayJournal;
        e.outcome = Outcome::Denied;
        e.subject = None;
        e.org = "*".into();
        e.key_id = None;
        assert_eq!(append_page(&hub, page).await.unwrap(), 1);
        let body: String = sqlx::query("SELECT body FROM audit_entries ORDER BY idx DESC LIMIT 1")
            .fetch_one(&hub.db)
            .await
            .unwrap()
            .try_get("body")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["actor"], "kms");
        assert_eq!(v["action"], "kms.replay_journal");
        assert_eq!(v["outcome"], "denied");
    }
}
