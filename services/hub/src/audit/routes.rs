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
use base64ct::{Base64, Encoding as _};
use coffer_kms::authz::OrgRole;
use coffer_tlog::bundle::{make_bundle, LogExport, MAX_CHECKPOINTS, MAX_ENTRIES};
use coffer_tlog::merkle::{consistency_proof, inclusion_proof, Hash, HashReader, NodeId};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::checkpoint::{
    first_covering, from_db, last_cosigned_size, latest_checkpoint, stored_checkpoint,
    stored_notes, to_db,
};
use crate::auth::{role_name, Caller};
use crate::error::{ApiError, ApiResult, ErrorBody, Json, Query};
use crate::state::Hub;

/// The most entries `GET /v1/audit/entries` answers in one call.
pub const MAX_ENTRIES_PER_CALL: u64 = 1000;

/// The most entries in one proof bundle.
pub const MAX_BUNDLE_INDICES: usize = 1000;

/// The most sizes in a bundle's `from`.
const MAX_BUNDLE_FROM: usize = 100;

/// The org roles whose holders read their orgs' audit entries.
const ENTRY_READERS: [OrgRole; 3] = [OrgRole::Auditor, OrgRole::Owner, OrgRole::Admin];

/// The audit log's routes and their OpenAPI description (see the module docs).
pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(checkpoint))
        .routes(routes!(entries))
        .routes(routes!(inclusion))
        .routes(routes!(consistency))
        .routes(routes!(export))
        .routes(routes!(bundle))
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

/// A signed checkpoint of the audit log.
#[derive(Serialize, ToSchema)]
struct CheckpointAnswer {
    /// The number of entries it covers.
    size: u64,
    /// The Merkle tree root of those entries (standard base64).
    root: String,
    /// The C2SP signed note.
    note: String,
    /// The hub's note verifier key, to check the note with.
    verifier_key: String,
    /// Whether the KMS co-signed it.
    cosigned: bool,
}

/// The checkpoint of the log's current size (signed now if the log grew; any caller).
#[utoipa::path(
    get,
    path = "/v1/audit/checkpoint",
    tag = "audit",
    operation_id = "audit_checkpoint",
    security(("bearer" = [])),
    responses((status = 200, description = "The checkpoint", body = CheckpointAnswer))
)]
async fn checkpoint(
    State(hub): State<Arc<Hub>>,
    _caller: Caller,
) -> ApiResult<Json<CheckpointAnswer>> {
    let c = latest_checkpoint(&hub).await?;
    Ok(Json(CheckpointAnswer {
        size: c.size,
        root: Base64::encode_string(&c.root),
        note: c.note,
        verifier_key: hub.keys.audit_signer().verifier_key().to_string(),
        cosigned: c.cosigned,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EntriesQuery {
    /// The first entry (default: 0).
    #[serde(default)]
    start: Option<u64>,
    /// The entry after the last (default: as far as one call reaches, at most the log's size).
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

/// An audit entry.
#[derive(Serialize, ToSchema)]
struct EntryAnswer {
    /// Its index in the log.
    index: u64,
    /// Its text (JSON), exactly as hashed into the log.
    entry: String,
}

/// A range of the audit log.
#[derive(Serialize, ToSchema)]
struct EntriesAnswer {
    /// The first index of the range.
    start: u64,
    /// The index after the range's last.
    end: u64,
    /// The log's size.
    size: u64,
    /// The entries of the range the caller may read.
    entries: Vec<EntryAnswer>,
}

/// Entries `start..end` of the audit log, at most 1000: every entry for a deployment
/// administrator, those of their orgs for an org's auditors, owners and admins.
#[utoipa::path(
    get,
    path = "/v1/audit/entries",
    tag = "audit",
    operation_id = "audit_entries",
    params(EntriesQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The entries", body = EntriesAnswer),
        (status = 400, description = "The range is invalid (`invalid_range`), or a parameter \
         is malformed (`invalid_query`)", body = ErrorBody),
        (status = 403, description = "The caller may read no audit entry (`forbidden`)",
         body = ErrorBody),
    )
)]
async fn entries(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Query(q): Query<EntriesQuery>,
) -> ApiResult<Json<EntriesAnswer>> {
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
            out.push(EntryAnswer { index, entry: body });
        }
    }
    Ok(Json(EntriesAnswer {
        start,
        end,
        size,
        entries: out,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct InclusionQuery {
    /// The entry's index.
    index: u64,
    /// The size of the tree to prove inclusion in (at most the log's).
    size: u64,
}

/// An inclusion proof.
#[derive(Serialize, ToSchema)]
struct InclusionAnswer {
    /// The entry's index.
    index: u64,
    /// The tree's size.
    size: u64,
    /// The entry's leaf hash (standard base64).
    leaf_hash: String,
    /// The proof's hashes (standard base64), RFC 9162 §2.1.3.
    proof: Vec<String>,
}

/// The proof that entry `index` is in the tree of the first `size` entries (any caller).
#[utoipa::path(
    get,
    path = "/v1/audit/proof/inclusion",
    tag = "audit",
    params(InclusionQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The proof", body = InclusionAnswer),
        (status = 400, description = "The size is beyond the log (`size_beyond_log`), the \
         index not below it (`index_out_of_range`), or a parameter is missing or malformed \
         (`invalid_query`)", body = ErrorBody),
    )
)]
async fn inclusion(
    State(hub): State<Arc<Hub>>,
    _caller: Caller,
    Query(q): Query<InclusionQuery>,
) -> ApiResult<Json<InclusionAnswer>> {
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
    Ok(Json(InclusionAnswer {
        index,
        size,
        leaf_hash: Base64::encode_string(&leaf),
        proof: encode_hashes(&proof),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ConsistencyQuery {
    /// The older tree's size.
    from: u64,
    /// The newer tree's size (at most the log's).
    to: u64,
}

/// A consistency proof.
#[derive(Serialize, ToSchema)]
struct ConsistencyAnswer {
    /// The older tree's size.
    from: u64,
    /// The newer tree's size.
    to: u64,
    /// The proof's hashes (standard base64), RFC 9162 §2.1.4.
    proof: Vec<String>,
}

/// The proof that the tree of the first `from` entries is a prefix of the tree of the first
/// `to` (any caller).
#[utoipa::path(
    get,
    path = "/v1/audit/proof/consistency",
    tag = "audit",
    params(ConsistencyQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The proof", body = ConsistencyAnswer),
        (status = 400, description = "`to` is beyond the log (`size_beyond_log`), `from` is \
         larger than `to` (`sizes_out_of_order`), or a parameter is missing or malformed \
         (`invalid_query`)", body = ErrorBody),
    )
)]
async fn consistency(
    State(hub): State<Arc<Hub>>,
    _caller: Caller,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult<Json<ConsistencyAnswer>> {
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
    Ok(Json(ConsistencyAnswer {
        from,
        to,
        proof: encode_hashes(&proof),
    }))
}

#[derive(Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ExportQuery {
    /// Only checkpoints the KMS co-signed, and the entries up to the last of them: an export
    /// that `coffer audit verify` checks against both the hub's and the KMS's keys.
    #[serde(default)]
    cosigned: bool,
}

/// Every entry of the log and the stored checkpoints (the newest [`MAX_CHECKPOINTS`] of them,
/// the last one of the log's current size), for `coffer audit verify --log`. With
/// `cosigned=true`: the entries up to the last checkpoint the KMS co-signed, and co-signed
/// checkpoints only.
#[utoipa::path(
    get,
    path = "/v1/audit/export",
    tag = "audit",
    params(ExportQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A `coffer-tlog-export/v1` log export",
         content_type = "application/json", body = Object),
        (status = 403, description = "The caller is not a deployment administrator \
         (`forbidden`)", body = ErrorBody),
        (status = 409, description = "The log is too large for one export (`log_too_large`), or \
         `cosigned=true` and the KMS co-signed nothing yet (`no_cosigned_checkpoint`)",
         body = ErrorBody),
    )
)]
async fn export(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Query(query): Query<ExportQuery>,
) -> ApiResult<Response> {
    caller.admin()?;
    let size = if query.cosigned {
        last_cosigned_size(&hub).await?.ok_or_else(|| {
            ApiError::conflict(
                "no_cosigned_checkpoint",
                "the KMS has co-signed no checkpoint of this log yet (does the hub have \
                 --kms-endpoint?)",
            )
        })?
    } else {
        latest_checkpoint(&hub).await?.size
    };
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
    let notes: Vec<Vec<u8>> = stored_notes(&hub, size, MAX_CHECKPOINTS, query.cosigned)
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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct BundleQuery {
    /// The entries' indices, comma-separated (at most 1000).
    #[param(example = "1,5,9")]
    indices: String,
    /// Sizes of checkpoints the verifier trusted before, comma-separated (at most 100).
    #[serde(default)]
    #[param(example = "4")]
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

/// A proof bundle of entries: each with its inclusion proof in the current checkpoint, and
/// consistency proofs from older checkpoints (administrators: any entry; an org's auditors,
/// owners and admins: that org's).
#[utoipa::path(
    get,
    path = "/v1/audit/bundle",
    tag = "audit",
    params(BundleQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A `coffer-tlog-bundle/v1` proof bundle",
         content_type = "application/json", body = Object),
        (status = 400, description = "An index or size is invalid (`invalid_indices`, \
         `index_out_of_range`, `size_beyond_log`, `unknown_checkpoint`, `bundle_too_large`), \
         or a parameter is missing or malformed (`invalid_query`)", body = ErrorBody),
        (status = 403, description = "The caller may not read an entry asked for \
         (`forbidden`)", body = ErrorBody),
    )
)]
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
