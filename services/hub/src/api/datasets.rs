//! The dataset registry: what a dataset is called, its schema, where its (encrypted) files
//! are, which data key encrypts them, and who must approve jobs that read it. Never data.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use coffer_kms::authz::{ApprovalPolicy, OrgRole};
use coffer_kms::KeyId;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;

use super::orgs::{check_workspace, require_org, MANAGERS};
use crate::audit::AuditRecord;
use crate::auth::{self, Caller};
use crate::error::{ApiError, ApiResult, Json, Query};
use crate::state::Hub;

pub(super) fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/v1/orgs/{org}/datasets", post(create).get(list_org))
        .route("/v1/datasets", get(list_shared))
        .route("/v1/datasets/{id}", get(describe).delete(delete))
}

/// The column types a schema may declare (Arrow's, by the names the client's engine uses).
pub const COLUMN_TYPES: [&str; 10] = [
    "string",
    "int32",
    "int64",
    "float32",
    "float64",
    "boolean",
    "date",
    "timestamp",
    "decimal",
    "binary",
];
/// The most columns a schema may declare.
pub const MAX_COLUMNS: usize = 1000;
/// The most approvers a policy may require.
pub const MAX_POLICY_K: u32 = 100;
/// The object-store URL schemes a location may use.
pub const LOCATION_SCHEMES: [&str; 4] = ["file", "s3", "az", "azure"];

/// A declared schema: `{"fields": [{"name", "type", "nullable"}]}`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    fields: Vec<Field>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Field {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default = "yes")]
    nullable: bool,
}

fn yes() -> bool {
    true
}

fn check_schema(schema: &Schema) -> ApiResult<()> {
    let bad = |m: String| ApiError::bad_request("invalid_schema", m);
    if schema.fields.is_empty() || schema.fields.len() > MAX_COLUMNS {
        return Err(bad(format!(
            "schema has {} fields; 1 to {MAX_COLUMNS} are allowed",
            schema.fields.len()
        )));
    }
    let mut seen = BTreeSet::new();
    for (i, f) in schema.fields.iter().enumerate() {
        if f.name.is_empty() || f.name.len() > 128 || f.name.chars().any(char::is_control) {
            return Err(bad(format!(
                "field {i}: name must be 1-128 printable characters"
            )));
        }
        if !seen.insert(f.name.as_str()) {
            return Err(bad(format!(
                "field {i}: name {:?} is declared twice",
                f.name
            )));
        }
        if !COLUMN_TYPES.contains(&f.ty.as_str()) {
            return Err(bad(format!(
                "field {:?}: type {:?} is unknown; expected one of {COLUMN_TYPES:?}",
                f.name, f.ty
            )));
        }
    }
    Ok(())
}

fn check_location(location: &str) -> ApiResult<()> {
    let scheme = location.split_once("://").map(|(s, _)| s);
    match scheme {
        Some(s) if LOCATION_SCHEMES.contains(&s) && location.len() <= 2048 => Ok(()),
        _ => Err(ApiError::bad_request(
            "invalid_location",
            format!("location {location:?} must be a URL with scheme one of {LOCATION_SCHEMES:?}, at most 2048 bytes"),
        )),
    }
}

/// Checks a policy: 1 ≤ k ≤ [`MAX_POLICY_K`], at least one role, no duplicates.
pub(crate) fn check_policy(policy: &ApprovalPolicy) -> ApiResult<()> {
    let bad = |m: String| ApiError::bad_request("invalid_policy", m);
    if policy.k == 0 || policy.k > MAX_POLICY_K {
        return Err(bad(format!(
            "k = {}; it must be 1 to {MAX_POLICY_K}",
            policy.k
        )));
    }
    if policy.roles.is_empty() {
        return Err(bad("the policy names no roles".into()));
    }
    let distinct: BTreeSet<_> = policy.roles.iter().collect();
    if distinct.len() != policy.roles.len() {
        return Err(bad("the policy names a role twice".into()));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDataset {
    workspace: String,
    name: String,
    schema: Schema,
    location: String,
    key_id: String,
    policy: ApprovalPolicy,
    #[serde(default)]
    shared: bool,
}

/// The roles that may register datasets in an org.
const WRITERS: [OrgRole; 3] = [OrgRole::Owner, OrgRole::Admin, OrgRole::Analyst];

async fn create(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(org): Path<String>,
    Json(req): Json<CreateDataset>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let user = caller.user()?;
    require_org(&hub, &org).await?;
    auth::require_role(&hub, user, &org, &WRITERS).await?;
    check_workspace(&req.workspace)?;
    if req.name.is_empty() || req.name.len() > 128 || req.name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_name",
            "dataset name must be 1-128 printable characters",
        ));
    }
    check_schema(&req.schema)?;
    check_location(&req.location)?;
    let key_id = KeyId::parse(&req.key_id)
        .map_err(|e| ApiError::bad_request("invalid_key_id", e.to_string()))?;
    check_policy(&req.policy)?;
    let id = crate::db::new_id("ds-");
    let mut w = hub.writer().await?;
    let ws = sqlx::query("SELECT 1 AS x FROM workspaces WHERE org_id = $1 AND name = $2")
        .bind(&org)
        .bind(&req.workspace)
        .fetch_optional(w.conn())
        .await?;
    if ws.is_none() {
        return Err(ApiError::not_found(format!(
            "workspace {:?} of org {org:?}",
            req.workspace
        )));
    }
    let taken = sqlx::query(
        "SELECT 1 AS x FROM datasets WHERE org_id = $1 AND workspace = $2 AND name = $3",
    )
    .bind(&org)
    .bind(&req.workspace)
    .bind(&req.name)
    .fetch_optional(w.conn())
    .await?
    .is_some();
    if taken {
        return Err(ApiError::conflict(
            "dataset_exists",
            format!(
                "dataset {:?} already exists in {org}/{}",
                req.name, req.workspace
            ),
        ));
    }
    let schema = serde_json::to_string(&req.schema).map_err(|e| ApiError::internal("schema", e))?;
    let policy = serde_json::to_string(&req.policy).map_err(|e| ApiError::internal("policy", e))?;
    sqlx::query(
        "INSERT INTO datasets (id, org_id, workspace, name, schema_json, location, key_id, policy_json, shared, created_by, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&id)
    .bind(&org)
    .bind(&req.workspace)
    .bind(&req.name)
    .bind(&schema)
    .bind(&req.location)
    .bind(key_id.as_str())
    .bind(&policy)
    .bind(i64::from(req.shared))
    .bind(&user.id)
    .bind(crate::db::now())
    .execute(w.conn())
    .await?;
    w.audit(
        AuditRecord::ok(caller.actor(), "dataset.create")
            .org(&org)
            .target(&id)
            .detail(
                json!({"workspace": req.workspace, "name": req.name, "key_id": key_id.as_str(),
                           "policy": req.policy, "shared": req.shared}),
            ),
    )
    .await?;
    w.commit().await?;
    Ok((StatusCode::CREATED, Json(json!({"id": id}))))
}

const COLUMNS: &str =
    "id, org_id, workspace, name, schema_json, location, key_id, policy_json, shared, created_at";

/// A dataset row as answered.
pub(crate) fn to_json(row: &sqlx::any::AnyRow) -> ApiResult<Value> {
    let schema: String = row.try_get("schema_json")?;
    let policy: String = row.try_get("policy_json")?;
    let shared: i64 = row.try_get("shared")?;
    Ok(json!({
        "id": row.try_get::<String, _>("id")?,
        "org": row.try_get::<String, _>("org_id")?,
        "workspace": row.try_get::<String, _>("workspace")?,
        "name": row.try_get::<String, _>("name")?,
        "schema": serde_json::from_str::<Value>(&schema).map_err(|e| ApiError::internal("stored schema", e))?,
        "location": row.try_get::<String, _>("location")?,
        "key_id": row.try_get::<String, _>("key_id")?,
        "policy": serde_json::from_str::<Value>(&policy).map_err(|e| ApiError::internal("stored policy", e))?,
        "shared": shared != 0,
        "created_at": row.try_get::<i64, _>("created_at")?,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    workspace: Option<String>,
}

async fn list_org(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(org): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let user = caller.user()?;
    require_org(&hub, &org).await?;
    auth::require_role(
        &hub,
        user,
        &org,
        &[
            OrgRole::Owner,
            OrgRole::Admin,
            OrgRole::Analyst,
            OrgRole::Approver,
            OrgRole::Auditor,
        ],
    )
    .await?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM datasets WHERE org_id = $1 AND deleted_at IS NULL \
         AND ($2 = '' OR workspace = $2) ORDER BY workspace, name"
    ))
    .bind(&org)
    .bind(q.workspace.unwrap_or_default())
    .fetch_all(&hub.db)
    .await?;
    let list: ApiResult<Vec<Value>> = rows.iter().map(to_json).collect();
    Ok(Json(json!({"datasets": list?})))
}

/// Datasets their owners shared with the whole deployment (metadata only).
async fn list_shared(State(hub): State<Arc<Hub>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.user()?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM datasets WHERE shared = 1 AND deleted_at IS NULL ORDER BY org_id, workspace, name"
    ))
    .fetch_all(&hub.db)
    .await?;
    let list: ApiResult<Vec<Value>> = rows.iter().map(to_json).collect();
    Ok(Json(json!({"datasets": list?})))
}

/// A dataset the user may see: one of their org's, or a shared one. Others are "not found".
pub(crate) async fn visible(
    hub: &Hub,
    user: &auth::User,
    id: &str,
) -> ApiResult<sqlx::any::AnyRow> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM datasets WHERE id = $1 AND deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(&hub.db)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("dataset {id:?}")))?;
    let org: String = row.try_get("org_id")?;
    let shared: i64 = row.try_get("shared")?;
    if shared != 0 || user.is_admin || !auth::roles_in(&hub.db, &user.id, &org).await?.is_empty() {
        Ok(row)
    } else {
        Err(ApiError::not_found(format!("dataset {id:?}")))
    }
}

async fn describe(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let user = caller.user()?;
    let row = visible(&hub, user, &id).await?;
    Ok(Json(to_json(&row)?))
}

async fn delete(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let user = caller.user()?;
    let row = visible(&hub, user, &id).await?;
    let org: String = row.try_get("org_id")?;
    auth::require_role(&hub, user, &org, &MANAGERS).await?;
    let mut w = hub.writer().await?;
    let active = sqlx::query(
        "SELECT j.id FROM job_datasets jd JOIN jobs j ON j.id = jd.job_id WHERE jd.dataset_id = $1 \
         AND j.state NOT IN ('succeeded', 'failed', 'cancelled', 'rejected') ORDER BY j.id",
    )
    .bind(&id)
    .fetch_all(w.conn())
    .await?;
    if !active.is_empty() {
        let jobs: Result<Vec<String>, _> = active.iter().map(|r| r.try_get("id")).collect();
        return Err(ApiError::conflict(
            "dataset_in_use",
            format!(
                "dataset {id:?} is read by unfinished jobs {:?}; cancel them first",
                jobs?
            ),
        ));
    }
    sqlx::query("UPDATE datasets SET deleted_at = $1 WHERE id = $2")
        .bind(crate::db::now())
        .bind(&id)
        .execute(w.conn())
        .await?;
    w.audit(
        AuditRecord::ok(caller.actor(), "dataset.delete")
            .org(&org)
            .target(&id),
    )
    .await?;
    w.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
