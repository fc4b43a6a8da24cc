//! The audit log's HTTP routes. Every route needs a bearer token ([`Caller`]).
//!
//! | route | answer | who |
//! |---|---|---|
//! | `GET /v1/audit/checkpoint` | `{size, root, note, verifier_key, cosigned}`: the checkpoint of the current size (signed now if the log grew) | any caller |
//! | `GET /v1/audit/entries?start=&end=` | `{start, end, size, entries: [{index, entry}]}`: entries `start..end` (end exclusive), at most [`MAX_ENTRIES_PER_CALL`] | see below |
//! | `GET /v1/audit/proof/inclusion?index=&size=` | `{index, size, leaf_hash, proof}` | any caller |
//! | `GET /v1/audit/proof/consistency?from=&to=` | `{from, to, proof}` | any caller |
//! | `GET /v1/audit/export` | a `coffer-tlog-export/v1` log export | deployment administrators |
//! | `GET /v1/audit/bundle?indices=1,5,9[&from=SIZE,...]` | a `coffer-tlog-bundle/v1` proof bundle | see below |
//!
//! Hashes are standard base64. Checkpoints and proofs reveal only hashes and sizes, so any
//! signed-in caller may have them. Entries name people and actions: a deployment administrator
//! reads every entry; a user who is an auditor, owner or admin of some orgs reads the entries of
//! those orgs (`entries` leaves the others out, `bundle` refuses them by index); anyone else
//! gets 403.
//!
//! A bundle's inclusion proofs lead to the current checkpoint; it carries consistency proofs to
//! it from the first stored checkpoint that covered each entry and from the stored checkpoints
//! of the sizes in `from` (those a verifier trusted before: `coffer audit verify --previous`).
//!
//! **Checks:** every index, size and range against the log, answering 400 with a code and the
//! numbers: `invalid_range`, `size_beyond_log`, `index_out_of_range`, `sizes_out_of_order`,
//! `invalid_indices`, `unknown_checkpoint`, `bundle_too_large`; query strings that do not parse
//! are `invalid_query`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64ct::{Base64, Encoding as _};
use coffer_kms::authz::OrgRole;
use coffer_tlog::bundle::{make_bundle, LogExport, MAX_CHECKPOINTS, MAX_ENTRIES};
use coffer_tlog::merkle::{consistency_proof, inclusion_proof, Hash, HashReader, NodeId};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;

use super::checkpoint::{
    first_covering, from_db, latest_checkpoint, stored_checkpoint, stored_notes, to_db,
};
use crate::auth::{role_name, Caller};
use crate::error::{ApiError, ApiResult, Json, Query};
use crate::state::Hub;

/// The most entries `GET /v1/audit/entries` answers in one call.
pub const MAX_ENTRIES_PER_CALL: u64 = 1000;

/// The most entries in one proof bundle.
pub const MAX_BUNDLE_INDICES: usize = 1000;

/// The most sizes in a bundle's `from`.
const MAX_BUNDLE_FROM: usize = 100;

/// The org roles whose holders read their orgs' audit entries.
const ENTRY_READERS: [OrgRole; 3] = [OrgRole::Auditor, OrgRole::Owner, OrgRole::Admin];

/// The audit log's routes (see the module docs).
pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/v1/audit/checkpoint", get(checkpoint))
        .route("/v1/audit/entries", get(entries))
        .route("/v1/audit/proof/inclusion", get(inclusion))
        .route("/v1/audit/proof/consistency", get(consistency))
        .route("/v1/audit/export", get(export))
        .route("/v1/audit/bundle", get(bundle))
}

/// Which entries a caller may read.
enum Scope {
    /// A deployment administrator: every entry.
    All,
    /// The entries of `orgs`, where `username` is an auditor, owner or admin.
    Orgs {
        username: String,
        orgs: BTreeSet<String>,
    },
}

/// The part of an entry that decides who may read it.
#[derive(Deserialize)]
struct EntryOrg {
    #[serde(default)]
    org: Option<String>,
}

impl Scope {
    /// The caller's scope, or 403 for a service account or a user who may read no entry.
    async fn of(hub: &Hub, caller: &Caller) -> ApiResult<Self> {
        let user = caller.user()?;
        if user.is_admin {
            return Ok(Self::All);
        }
        let [a, b, c] = ENTRY_READERS.map(role_name);
        let rows = sqlx::query(
            "SELECT DISTINCT org_id FROM memberships WHERE user_id = $1 AND role IN ($2, $3, $4)",
        )
        .bind(&user.id)
        .bind(a)
        .bind(b)
        .bind(c)
        .fetch_all(&hub.db)
        .await?;
        let orgs = rows
            .iter()
            .map(|r| r.try_get("org_id"))
            .collect::<Result<BTreeSet<String>, _>>()?;
        if orgs.is_empty() {
            return Err(ApiError::forbidden(format!(
                "user {:?} may not read audit entries: that needs a deployment administrator, \
                 or one of the roles {:?} in an org",
                user.username,
                ENTRY_READERS.map(role_name)
            )));
        }
        Ok(Self::Orgs {
            username: user.username.clone(),
            orgs,
        })
    }

    /// Whether the caller may read entry `index`, whose stored text is `body`.
    fn sees(&self, index: u64, body: &str) -> ApiResult<bool> {
        match self {
            Self::All => Ok(true),
            Self::Orgs { orgs, .. } => {
                let entry: EntryOrg = serde_json::from_str(body).map_err(|e| {
                    ApiError::internal("audit entry", format!("entry {index} is not JSON: {e}"))
                })?;
                Ok(entry.org.is_some_and(|org| orgs.contains(&org)))
            }
        }
    }

    /// 403 unless the caller may read entry `index`.
    fn require(&self, index: u64, body: &str) -> ApiResult<()> {
        if self.sees(index, body)? {
            return Ok(());
        }
        let username = match self {
            Self::Orgs { username, .. } => username.as_str(),
            Self::All => "",
        };
        Err(ApiError::forbidden(format!(
            "audit entry {index} is not an entry of an org where user {username:?} holds one \
             of the roles {:?}",
            ENTRY_READERS.map(role_name)
        )))
    }
}

fn encode_hashes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| Base64::encode_string(h)).collect()
}

/// A JSON document already encoded (an export or a bundle, in their own formats).
fn json_bytes(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// 400 unless a tree of `size` entries is within the log (of `log_size` entries).
fn check_size(name: &str, size: u64, log_size: u64) -> ApiResult<()> {
    if size > log_size {
        return Err(ApiError::bad_request(
            "size_beyond_log",
            format!("{name} {size} is beyond the log, which has {log_size} entries"),
        ));
    }
    Ok(())
}

async fn checkpoint(State(hub): State<Arc<Hub>>, _caller: Caller) -> ApiResult<Json<Value>> {
    let c = latest_checkpoint(&hub).await?;
    Ok(Json(json!({
        "size": c.size,
        "root": Base64::encode_string(&c.root),
        "note": c.note,
        "verifier_key": hub.keys.audit_signer().verifier_key().to_string(),
        "cosigned": c.cosigned,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntriesQuery {
    #[serde(default)]
    start: Option<u64>,
    #[serde(default)]
    end: Option<u64>,
}

/// `start..end` checked against a log of `size` entries; `start` defaults to 0, `end` to as far
/// as one call reaches.
fn entry_range(start: Option<u64>, end: Option<u64>, size: u64) -> ApiResult<(u64, u64)> {
    let invalid = |message: String| ApiError::bad_request("invalid_range", message);
    let start = start.unwrap_or(0);
    if start > size {
        return Err(invalid(format!(
            "start {start} is beyond the log, which has {size} entries"
        )));
    }
    let end = end.unwrap_or_else(|| size.min(start.saturating_add(MAX_ENTRIES_PER_CALL)));
    if end < start {
        return Err(invalid(format!("end {end} is before start {start}")));
    }
    if end - start > MAX_ENTRIES_PER_CALL {
        return Err(invalid(format!(
            "{start}..{end} is {} entries; at most {MAX_ENTRIES_PER_CALL} per call",
            end - start
        )));
    }
    if end > size {
        return Err(invalid(format!(
            "end {end} is beyond the log, which has {size} entries"
        )));
    }
    Ok((start, end))
}

async fn entries(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Query(q): Query<EntriesQuery>,
) -> ApiResult<Json<Value>> {
    let scope = Scope::of(&hub, &caller).await?;
    let size = hub.audit.size();
    let (start, end) = entry_range(q.start, q.end, size)?;
    let rows = sqlx::query(
        "SELECT idx, body FROM audit_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx",
    )
    .bind(to_db(start)?)
    .bind(to_db(end)?)
    .fetch_all(&hub.db)
    .await?;
    let mut out = Vec::new();
    for row in rows {
        let index = from_db(row.try_get("idx")?)?;
        let body: String = row.try_get("body")?;
        if scope.sees(index, &body)? {
            out.push(json!({"index": index, "entry": body}));
        }
    }
    Ok(Json(json!({
        "start": start,
        "end": end,
        "size": size,
        "entries": out,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InclusionQuery {
    index: u64,
    size: u64,
}

async fn inclusion(
    State(hub): State<Arc<Hub>>,
    _caller: Caller,
    Query(q): Query<InclusionQuery>,
) -> ApiResult<Json<Value>> {
    let (index, size) = (q.index, q.size);
    let (leaf, proof) = hub.audit.with_tree(|tree| {
        check_size("size", size, tree.size())?;
        if index >= size {
            return Err(ApiError::bad_request(
                "index_out_of_range",
                format!("index {index} is not in a tree of {size} entries"),
            ));
        }
        let leaf = tree
            .read_nodes(&[NodeId { level: 0, index }])
            .map_err(|e| ApiError::internal("audit leaf", e))?
            .first()
            .copied()
            .ok_or_else(|| ApiError::internal("audit leaf", format!("leaf {index} not read")))?;
        let proof = inclusion_proof(tree, index, size)
            .map_err(|e| ApiError::internal("audit inclusion proof", e))?;
        Ok((leaf, proof))
    })?;
    Ok(Json(json!({
        "index": index,
        "size": size,
        "leaf_hash": Base64::encode_string(&leaf),
        "proof": encode_hashes(&proof),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

async fn consistency(
    State(hub): State<Arc<Hub>>,
    _caller: Caller,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult<Json<Value>> {
    let (from, to) = (q.from, q.to);
    let proof = hub.audit.with_tree(|tree| {
        check_size("to", to, tree.size())?;
        if from > to {
            return Err(ApiError::bad_request(
                "sizes_out_of_order",
                format!("from {from} is larger than to {to}: a log only grows"),
            ));
        }
        consistency_proof(tree, from, to)
            .map_err(|e| ApiError::internal("audit consistency proof", e))
    })?;
    Ok(Json(json!({
        "from": from,
        "to": to,
        "proof": encode_hashes(&proof),
    })))
}

/// Every entry of the log and the stored checkpoints (the newest [`MAX_CHECKPOINTS`] of them,
/// the last one of the log's current size), for `coffer audit verify --log`.
async fn export(State(hub): State<Arc<Hub>>, caller: Caller) -> ApiResult<Response> {
    caller.admin()?;
    let latest = latest_checkpoint(&hub).await?;
    let size = latest.size;
    if size > MAX_ENTRIES as u64 {
        return Err(ApiError::conflict(
            "log_too_large",
            format!(
                "the log has {size} entries, more than the {MAX_ENTRIES} an export holds; \
                 page through /v1/audit/entries and check with proof bundles instead"
            ),
        ));
    }
    let rows = sqlx::query("SELECT body FROM audit_entries WHERE idx < $1 ORDER BY idx")
        .bind(to_db(size)?)
        .fetch_all(&hub.db)
        .await?;
    if rows.len() as u64 != size {
        return Err(ApiError::internal(
            "audit export",
            format!("expected {size} entries, the database holds {}", rows.len()),
        ));
    }
    let entries = rows
        .iter()
        .map(|r| r.try_get::<String, _>("body").map(String::into_bytes))
        .collect::<Result<Vec<_>, _>>()?;
    let notes: Vec<Vec<u8>> = stored_notes(&hub, size, MAX_CHECKPOINTS)
        .await?
        .into_iter()
        .map(String::into_bytes)
        .collect();
    let export = LogExport::new(hub.audit.origin(), entries, &notes)
        .map_err(|e| ApiError::internal("audit export", e))?;
    let json = export
        .to_json()
        .map_err(|e| ApiError::internal("audit export", e))?;
    Ok(json_bytes(json))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleQuery {
    indices: String,
    #[serde(default)]
    from: Option<String>,
}

/// A comma-separated list of numbers (`name` in messages), at most `max` distinct ones.
fn number_list(name: &str, list: &str, max: usize) -> ApiResult<BTreeSet<u64>> {
    let invalid = |message: String| ApiError::bad_request("invalid_indices", message);
    let mut out = BTreeSet::new();
    for item in list.split(',').map(str::trim) {
        let n = item.parse::<u64>().map_err(|_| {
            invalid(format!(
                "{name} must be comma-separated numbers; {item:?} is not a number"
            ))
        })?;
        out.insert(n);
        if out.len() > max {
            return Err(invalid(format!("{name} names more than {max} numbers")));
        }
    }
    Ok(out)
}

async fn bundle(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Query(q): Query<BundleQuery>,
) -> ApiResult<Response> {
    let scope = Scope::of(&hub, &caller).await?;
    let indices = number_list("indices", &q.indices, MAX_BUNDLE_INDICES)?;
    let from = match &q.from {
        Some(list) => number_list("from", list, MAX_BUNDLE_FROM)?,
        None => BTreeSet::new(),
    };
    let latest = latest_checkpoint(&hub).await?;
    let size = latest.size;
    // The older checkpoints to prove consistency from, by size.
    let mut older: BTreeMap<u64, String> = BTreeMap::new();
    let mut entries: Vec<(u64, Vec<u8>)> = Vec::with_capacity(indices.len());
    for &index in &indices {
        if index >= size {
            return Err(ApiError::bad_request(
                "index_out_of_range",
                format!("index {index} is not in the latest checkpoint, of {size} entries"),
            ));
        }
        let body: String = sqlx::query("SELECT body FROM audit_entries WHERE idx = $1")
            .bind(to_db(index)?)
            .fetch_optional(&hub.db)
            .await?
            .ok_or_else(|| {
                ApiError::internal("audit bundle", format!("entry {index} is not stored"))
            })?
            .try_get("body")?;
        scope.require(index, &body)?;
        if let Some(c) = first_covering(&hub, index, size).await? {
            older.insert(c.size, c.note);
        }
        entries.push((index, body.into_bytes()));
    }
    for &old in &from {
        check_size("from size", old, size)?;
        if old == 0 || old == size {
            // The empty tree is a prefix of every tree; the same size needs no proof.
            continue;
        }
        let c = stored_checkpoint(&hub, old).await?.ok_or_else(|| {
            ApiError::bad_request(
                "unknown_checkpoint",
                format!("no checkpoint of size {old} was signed"),
            )
        })?;
        older.insert(old, c.note);
    }
    if older.len() > MAX_CHECKPOINTS {
        return Err(ApiError::bad_request(
            "bundle_too_large",
            format!(
                "these entries need consistency proofs from {} checkpoints, more than the \
                 {MAX_CHECKPOINTS} a bundle holds; ask for fewer entries",
                older.len()
            ),
        ));
    }
    let entry_refs: Vec<(u64, &[u8])> = entries.iter().map(|(i, e)| (*i, e.as_slice())).collect();
    let older_refs: Vec<&[u8]> = older.values().map(String::as_bytes).collect();
    let bundle = hub.audit.with_tree(|tree| {
        make_bundle(tree, latest.note.as_bytes(), &entry_refs, &older_refs)
            .map_err(|e| ApiError::internal("audit bundle", e))
    })?;
    let json = bundle
        .to_json()
        .map_err(|e| ApiError::internal("audit bundle", e))?;
    Ok(json_bytes(json))
}
