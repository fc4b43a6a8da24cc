//! The dataset registry: what a dataset is called, its schema, where its (encrypted) files
//! are, which data key encrypts them, and who must approve jobs that read it. Never data.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use coffer_kms::authz::{ApprovalPolicy, OrgRole};
use coffer_kms::KeyId;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::orgs::{check_workspace, require_org, require_workspace, MANAGERS, MEMBERS};
use crate::audit::AuditRecord;
use crate::auth::{self, Caller};
use crate::error::{ApiError, ApiResult, ErrorBody, Json, Path, Query};
use crate::state::Hub;

pub(super) fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(create, list_org))
        .routes(routes!(list_shared))
        .routes(routes!(describe, delete))
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
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DatasetSchema)]
pub struct Schema {
    /// The columns (1 to 1000).
    fields: Vec<Field>,
}

/// One column of a declared schema.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DatasetField)]
struct Field {
    /// The column's name: 1-128 printable characters, unique in the schema.
    #[schema(example = "amount")]
    name: String,
    /// The column's type.
    #[serde(rename = "type")]
    #[schema(schema_with = column_type)]
    ty: String,
    /// Whether it may be null (default: true).
    #[serde(default = "yes")]
    nullable: bool,
}

/// The schema of a column type: one of [`COLUMN_TYPES`].
fn column_type() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(COLUMN_TYPES))
        .description(Some("The column's type"))
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateDataset {
    /// The workspace it belongs to (must exist).
    #[schema(example = "research")]
    workspace: String,
    /// Its name: 1-128 printable characters, unique in the workspace.
    #[schema(example = "payments")]
    name: String,
    /// Its columns.
    schema: Schema,
    /// Where its encrypted files are: a URL with scheme `file`, `s3`, `az` or `azure`, at most
    /// 2048 bytes.
    #[schema(example = "s3://bucket/payments/")]
    location: String,
    /// The id of the data key that encrypts it: 32 lowercase hex digits.
    #[schema(
        example = "0123456789abcdef0123456789abcdef",
        pattern = "^[0-9a-f]{32}$"
    )]
    key_id: String,
    /// Who must approve jobs that read it.
    #[schema(schema_with = crate::openapi::approval_policy)]
    policy: ApprovalPolicy,
    /// Whether every user of the deployment may see its metadata (default: false).
    #[serde(default)]
    shared: bool,
}

/// A new dataset's id.
#[derive(Serialize, ToSchema)]
struct CreatedDataset {
    /// Its id.
    id: String,
}

/// The roles that may register datasets in an org.
const WRITERS: [OrgRole; 3] = [OrgRole::Owner, OrgRole::Admin, OrgRole::Analyst];

/// Registers a dataset of an org (its owners, admins and analysts).
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/datasets",
    tag = "datasets",
    operation_id = "create_dataset",
    params(("org" = String, Path, description = "The org's id", example = "acme")),
    request_body = CreateDataset,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered", body = CreatedDataset),
        (status = 400, description = "A field is invalid (`invalid_workspace`, `invalid_name`, \
         `invalid_schema`, `invalid_location`, `invalid_key_id`, `invalid_policy`, \
         `invalid_body`)", body = ErrorBody),
        (status = 403, description = "The caller is not an owner, admin or analyst of the org \
         (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such org or workspace (`not_found`)", body = ErrorBody),
        (status = 409, description = "The name is taken in the workspace (`dataset_exists`)",
         body = ErrorBody),
    )
)]
async fn create(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(org): Path<String>,
    Json(req): Json<CreateDataset>,
) -> ApiResult<(StatusCode, Json<CreatedDataset>)> {
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
    require_workspace(w.conn(), &org, &req.workspace).await?;
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
    Ok((StatusCode::CREATED, Json(CreatedDataset { id })))
}

const COLUMNS: &str =
    "id, org_id, workspace, name, schema_json, location, key_id, policy_json, shared, created_at";

/// A dataset, as answered (metadata only).
#[derive(Serialize, ToSchema)]
struct Dataset {
    /// Its id.
    id: String,
    /// The org that owns it.
    org: String,
    /// Its workspace.
    workspace: String,
    /// Its name.
    name: String,
    /// Its columns.
    schema: Schema,
    /// Where its encrypted files are.
    location: String,
    /// The id of its data key.
    key_id: String,
    /// Who must approve jobs that read it.
    #[schema(schema_with = crate::openapi::approval_policy)]
    policy: ApprovalPolicy,
    /// Whether every user of the deployment may see it.
    shared: bool,
    /// When it was registered (seconds since the Unix epoch).
    created_at: i64,
}

/// A dataset row as answered.
fn to_dataset(row: &sqlx::any::AnyRow) -> ApiResult<Dataset> {
    let schema: String = row.try_get("schema_json")?;
    let policy: String = row.try_get("policy_json")?;
    let shared: i64 = row.try_get("shared")?;
    Ok(Dataset {
        id: row.try_get("id")?,
        org: row.try_get("org_id")?,
        workspace: row.try_get("workspace")?,
        name: row.try_get("name")?,
        schema: serde_json::from_str(&schema)
            .map_err(|e| ApiError::internal("stored schema", e))?,
        location: row.try_get("location")?,
        key_id: row.try_get("key_id")?,
        policy: serde_json::from_str(&policy)
            .map_err(|e| ApiError::internal("stored policy", e))?,
        shared: shared != 0,
        created_at: row.try_get("created_at")?,
    })
}

/// Datasets.
#[derive(Serialize, ToSchema)]
struct DatasetList {
    /// The datasets.
    datasets: Vec<Dataset>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this workspace's datasets (default: all of the org's).
    #[serde(default)]
    #[param(example = "research")]
    workspace: Option<String>,
}

/// The datasets of an org (any member), by workspace and name.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/datasets",
    tag = "datasets",
    operation_id = "list_org_datasets",
    params(("org" = String, Path, description = "The org's id", example = "acme"), ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The datasets", body = DatasetList),
        (status = 403, description = "The caller is not a member of the org (`forbidden`)",
         body = ErrorBody),
        (status = 404, description = "No such org (`not_found`)", body = ErrorBody),
    )
)]
async fn list_org(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(org): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<DatasetList>> {
    let user = caller.user()?;
    require_org(&hub, &org).await?;
    auth::require_role(&hub, user, &org, &MEMBERS).await?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM datasets WHERE org_id = $1 AND deleted_at IS NULL \
         AND ($2 = '' OR workspace = $2) ORDER BY workspace, name"
    ))
    .bind(&org)
    .bind(q.workspace.unwrap_or_default())
    .fetch_all(&hub.db)
    .await?;
    let datasets: ApiResult<Vec<Dataset>> = rows.iter().map(to_dataset).collect();
    Ok(Json(DatasetList {
        datasets: datasets?,
    }))
}

/// Datasets their owners shared with the whole deployment (metadata only).
#[utoipa::path(
    get,
    path = "/v1/datasets",
    tag = "datasets",
    operation_id = "list_shared_datasets",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The shared datasets", body = DatasetList),
        (status = 403, description = "The caller is a service account (`forbidden`)",
         body = ErrorBody),
    )
)]
async fn list_shared(State(hub): State<Arc<Hub>>, caller: Caller) -> ApiResult<Json<DatasetList>> {
    caller.user()?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM datasets WHERE shared = 1 AND deleted_at IS NULL ORDER BY org_id, workspace, name"
    ))
    .fetch_all(&hub.db)
    .await?;
    let datasets: ApiResult<Vec<Dataset>> = rows.iter().map(to_dataset).collect();
    Ok(Json(DatasetList {
        datasets: datasets?,
    }))
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

/// A dataset (one of the caller's orgs', or a shared one).
#[utoipa::path(
    get,
    path = "/v1/datasets/{id}",
    tag = "datasets",
    operation_id = "describe_dataset",
    params(("id" = String, Path, description = "The dataset's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The dataset", body = Dataset),
        (status = 403, description = "The caller is a service account (`forbidden`)",
         body = ErrorBody),
        (status = 404, description = "No such dataset, or not one the caller may see \
         (`not_found`)", body = ErrorBody),
    )
)]
async fn describe(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Dataset>> {
    let user = caller.user()?;
    let row = visible(&hub, user, &id).await?;
    Ok(Json(to_dataset(&row)?))
}

/// Deletes a dataset that no unfinished job reads (its org's owners and admins).
#[utoipa::path(
    delete,
    path = "/v1/datasets/{id}",
    tag = "datasets",
    operation_id = "delete_dataset",
    params(("id" = String, Path, description = "The dataset's id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The caller is not an owner or admin of the dataset's org \
         (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such dataset, or not one the caller may see \
         (`not_found`)", body = ErrorBody),
        (status = 409, description = "Unfinished jobs read it (`dataset_in_use`)",
         body = ErrorBody),
    )
)]
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
