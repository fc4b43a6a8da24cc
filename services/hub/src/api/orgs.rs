//! Orgs, their workspaces, and who holds which role in them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use coffer_kms::authz::OrgRole;
use coffer_kms::OrgId;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::AuditRecord;
use crate::auth::{self, role_name, Caller};
use crate::error::{ApiError, ApiResult, ErrorBody, Json, Path};
use crate::state::Hub;

pub(super) fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(create_org, list_orgs))
        .routes(routes!(create_workspace, list_workspaces))
        .routes(routes!(list_members))
        .routes(routes!(set_member, remove_member))
}

/// The roles that manage an org.
pub(crate) const MANAGERS: [OrgRole; 2] = [OrgRole::Owner, OrgRole::Admin];

/// Every role: any member of an org.
pub(crate) const MEMBERS: [OrgRole; 5] = [
    OrgRole::Owner,
    OrgRole::Admin,
    OrgRole::Analyst,
    OrgRole::Approver,
    OrgRole::Auditor,
];

/// Whether `org` has workspace `name`.
pub(crate) async fn workspace_exists(
    conn: &mut sqlx::AnyConnection,
    org: &str,
    name: &str,
) -> ApiResult<bool> {
    Ok(
        sqlx::query("SELECT 1 AS x FROM workspaces WHERE org_id = $1 AND name = $2")
            .bind(org)
            .bind(name)
            .fetch_optional(conn)
            .await?
            .is_some(),
    )
}

/// 404 naming the workspace unless `org` has it.
pub(crate) async fn require_workspace(
    conn: &mut sqlx::AnyConnection,
    org: &str,
    name: &str,
) -> ApiResult<()> {
    if workspace_exists(conn, org, name).await? {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "workspace {name:?} of org {org:?}"
        )))
    }
}

/// Removes `user_id`'s roles in `org` and its workspace memberships.
async fn clear_membership(w: &mut crate::Writer<'_>, org: &str, user_id: &str) -> ApiResult<()> {
    for table in ["memberships", "workspace_members"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE org_id = $1 AND user_id = $2"
        ))
        .bind(org)
        .bind(user_id)
        .execute(w.conn())
        .await?;
    }
    Ok(())
}

/// A workspace name: same rules as an org id (the KMS binds it into data-key requests).
pub(crate) fn check_workspace(name: &str) -> ApiResult<()> {
    OrgId::new(name).map(|_| ()).map_err(|_| {
        ApiError::bad_request(
            "invalid_workspace",
            format!("workspace name {name:?} must be 1-64 of A-Z a-z 0-9 . _ -"),
        )
    })
}

/// 404 unless `org` exists.
pub(crate) async fn require_org(hub: &Hub, org: &str) -> ApiResult<()> {
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateOrg {
    /// The org's id: 1-64 of `A-Z a-z 0-9 . _ -`.
    #[schema(example = "globex", pattern = "^[A-Za-z0-9._-]{1,64}$")]
    id: String,
    /// A name for people (default: the id).
    #[serde(default)]
    name: Option<String>,
}

/// An org.
#[derive(Serialize, ToSchema)]
struct Org {
    /// Its id.
    id: String,
    /// Its name for people.
    name: String,
}

/// Creates an org (deployment administrators).
#[utoipa::path(
    post,
    path = "/v1/orgs",
    tag = "orgs",
    request_body = CreateOrg,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = Org),
        (status = 400, description = "The id is invalid (`invalid_org`, `invalid_body`)",
         body = ErrorBody),
        (status = 403, description = "The caller is not a deployment administrator \
         (`forbidden`)", body = ErrorBody),
        (status = 409, description = "The id is taken (`org_exists`)", body = ErrorBody),
    )
)]
async fn create_org(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Json(req): Json<CreateOrg>,
) -> ApiResult<(StatusCode, Json<Org>)> {
    caller.admin()?;
    OrgId::new(&req.id).map_err(|e| ApiError::bad_request("invalid_org", e.to_string()))?;
    let mut w = hub.writer().await?;
    let exists = sqlx::query("SELECT 1 AS x FROM orgs WHERE id = $1")
        .bind(&req.id)
        .fetch_optional(w.conn())
        .await?
        .is_some();
    if exists {
        return Err(ApiError::conflict(
            "org_exists",
            format!("org {:?} already exists", req.id),
        ));
    }
    let name = req.name.clone().unwrap_or_else(|| req.id.clone());
    sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(&req.id)
        .bind(&name)
        .bind(crate::db::now())
        .execute(w.conn())
        .await?;
    w.audit(
        AuditRecord::ok(caller.actor(), "org.create")
            .org(&req.id)
            .detail(json!({"name": name})),
    )
    .await?;
    w.commit().await?;
    Ok((StatusCode::CREATED, Json(Org { id: req.id, name })))
}

/// Orgs.
#[derive(Serialize, ToSchema)]
struct OrgList {
    /// The orgs, by id.
    orgs: Vec<Org>,
}

/// The orgs the caller belongs to (all of them for a deployment administrator).
#[utoipa::path(
    get,
    path = "/v1/orgs",
    tag = "orgs",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The orgs", body = OrgList),
        (status = 403, description = "The caller is a service account (`forbidden`)",
         body = ErrorBody),
    )
)]
async fn list_orgs(State(hub): State<Arc<Hub>>, caller: Caller) -> ApiResult<Json<OrgList>> {
    let user = caller.user()?;
    let rows = if user.is_admin {
        sqlx::query("SELECT id, name FROM orgs ORDER BY id")
            .fetch_all(&hub.db)
            .await?
    } else {
        sqlx::query(
            "SELECT DISTINCT o.id, o.name FROM orgs o JOIN memberships m ON m.org_id = o.id \
             WHERE m.user_id = $1 ORDER BY o.id",
        )
        .bind(&user.id)
        .fetch_all(&hub.db)
        .await?
    };
    let mut orgs = Vec::new();
    for r in rows {
        orgs.push(Org {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
        });
    }
    Ok(Json(OrgList { orgs }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateWorkspace {
    /// The workspace's name: 1-64 of `A-Z a-z 0-9 . _ -`.
    #[schema(example = "lab", pattern = "^[A-Za-z0-9._-]{1,64}$")]
    name: String,
}

/// A workspace.
#[derive(Serialize, ToSchema)]
struct Workspace {
    /// Its org.
    org: String,
    /// Its name.
    name: String,
}

/// Creates a workspace in an org (its owners and admins).
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/workspaces",
    tag = "orgs",
    params(("org" = String, Path, description = "The org's id", example = "acme")),
    request_body = CreateWorkspace,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = Workspace),
        (status = 400, description = "The name is invalid (`invalid_workspace`, \
         `invalid_body`)", body = ErrorBody),
        (status = 403, description = "The caller is not an owner or admin of the org \
         (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such org (`not_found`)", body = ErrorBody),
        (status = 409, description = "The name is taken (`workspace_exists`)",
         body = ErrorBody),
    )
)]
async fn create_workspace(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(org): Path<String>,
    Json(req): Json<CreateWorkspace>,
) -> ApiResult<(StatusCode, Json<Workspace>)> {
    let user = caller.user()?;
    require_org(&hub, &org).await?;
    auth::require_role(&hub, user, &org, &MANAGERS).await?;
    check_workspace(&req.name)?;
    let mut w = hub.writer().await?;
    if workspace_exists(w.conn(), &org, &req.name).await? {
        return Err(ApiError::conflict(
            "workspace_exists",
            format!("workspace {:?} already exists in org {org:?}", req.name),
        ));
    }
    sqlx::query("INSERT INTO workspaces (org_id, name, created_at) VALUES ($1, $2, $3)")
        .bind(&org)
        .bind(&req.name)
        .bind(crate::db::now())
        .execute(w.conn())
        .await?;
    w.audit(
        AuditRecord::ok(caller.actor(), "workspace.create")
            .org(&org)
            .target(&req.name),
    )
    .await?;
    w.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(Workspace {
            org,
            name: req.name,
        }),
    ))
}

/// An org's workspaces.
#[derive(Serialize, ToSchema)]
struct WorkspaceList {
    /// Their names, sorted.
    workspaces: Vec<String>,
}

/// The workspaces of an org (any member).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/workspaces",
    tag = "orgs",
    params(("org" = String, Path, description = "The org's id", example = "acme")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The workspaces", body = WorkspaceList),
        (status = 403, description = "The caller is not a member of the org (`forbidden`)",
         body = ErrorBody),
        (status = 404, description = "No such org (`not_found`)", body = ErrorBody),
    )
)]
async fn list_workspaces(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(org): Path<String>,
) -> ApiResult<Json<WorkspaceList>> {
    let user = caller.user()?;
    require_org(&hub, &org).await?;
    auth::require_role(&hub, user, &org, &MEMBERS).await?;
    let rows = sqlx::query("SELECT name FROM workspaces WHERE org_id = $1 ORDER BY name")
        .bind(&org)
        .fetch_all(&hub.db)
        .await?;
    let names: Result<Vec<String>, _> = rows.iter().map(|r| r.try_get("name")).collect();
    Ok(Json(WorkspaceList { workspaces: names? }))
}

/// An org's members.
#[derive(Serialize, ToSchema)]
struct MemberList {
    /// Each member's roles, by user name.
    #[schema(example = json!({"alice": ["analyst", "approver"]}))]
    members: BTreeMap<String, Vec<String>>,
}

/// The members of an org and their roles (its owners, admins and auditors).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/members",
    tag = "orgs",
    params(("org" = String, Path, description = "The org's id", example = "acme")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The members", body = MemberList),
        (status = 403, description = "The caller is not an owner, admin or auditor of the \
         org (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such org (`not_found`)", body = ErrorBody),
    )
)]
async fn list_members(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(org): Path<String>,
) -> ApiResult<Json<MemberList>> {
    let user = caller.user()?;
    require_org(&hub, &org).await?;
    auth::require_role(
        &hub,
        user,
        &org,
        &[OrgRole::Owner, OrgRole::Admin, OrgRole::Auditor],
    )
    .await?;
    let rows = sqlx::query(
        "SELECT u.username, m.role FROM memberships m JOIN users u ON u.id = m.user_id \
         WHERE m.org_id = $1 ORDER BY u.username, m.role",
    )
    .bind(&org)
    .fetch_all(&hub.db)
    .await?;
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows {
        let name: String = r.try_get("username")?;
        let role: String = r.try_get("role")?;
        members.entry(name).or_default().push(role);
    }
    Ok(Json(MemberList { members }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SetMember {
    /// The roles (at least one): `owner`, `admin`, `analyst`, `approver`, `auditor`.
    #[schema(schema_with = crate::openapi::org_roles)]
    roles: Vec<String>,
    /// The workspaces of the org the user is a member of (default: none).
    #[serde(default)]
    workspaces: Vec<String>,
}

/// A user's membership of an org, as set.
#[derive(Serialize, ToSchema)]
struct MemberSet {
    /// The org.
    org: String,
    /// The user name.
    user: String,
    /// The roles, sorted, without duplicates.
    #[schema(schema_with = crate::openapi::org_roles)]
    roles: Vec<OrgRole>,
    /// The workspaces, sorted, without duplicates.
    workspaces: Vec<String>,
}

/// Sets a user's roles in the org and the workspaces they belong to (replacing both; the
/// org's owners and admins; only owners grant `owner`).
#[utoipa::path(
    put,
    path = "/v1/orgs/{org}/members/{username}",
    tag = "orgs",
    params(
        ("org" = String, Path, description = "The org's id", example = "acme"),
        ("username" = String, Path, description = "The user's name", example = "alice"),
    ),
    request_body = SetMember,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The membership as set", body = MemberSet),
        (status = 400, description = "A role is unknown, or there is none (`invalid_role`, \
         `no_roles`, `invalid_body`)", body = ErrorBody),
        (status = 403, description = "The caller is not an owner or admin of the org, or \
         grants `owner` without being one (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such org, user or workspace (`not_found`)",
         body = ErrorBody),
    )
)]
async fn set_member(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path((org, username)): Path<(String, String)>,
    Json(mut req): Json<SetMember>,
) -> ApiResult<Json<MemberSet>> {
    let user = caller.user()?;
    require_org(&hub, &org).await?;
    let my_roles = auth::require_role(&hub, user, &org, &MANAGERS).await?;
    let mut roles = Vec::new();
    for r in &req.roles {
        roles.push(auth::parse_role(r)?);
    }
    roles.sort();
    roles.dedup();
    // A workspace named twice is a member once (the table's key is org, workspace, user).
    req.workspaces.sort();
    req.workspaces.dedup();
    if roles.is_empty() {
        return Err(ApiError::bad_request(
            "no_roles",
            "a member needs at least one role (remove the member instead)",
        ));
    }
    // Only owners (or deployment administrators) make owners.
    if roles.contains(&OrgRole::Owner) && !user.is_admin && !my_roles.contains(&OrgRole::Owner) {
        return Err(ApiError::forbidden(format!(
            "only an owner of org {org:?} can grant the owner role"
        )));
    }
    let target = sqlx::query("SELECT id FROM users WHERE username = $1")
        .bind(&username)
        .fetch_optional(&hub.db)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {username:?}")))?;
    let target_id: String = target.try_get("id")?;
    let mut w = hub.writer().await?;
    for ws in &req.workspaces {
        require_workspace(w.conn(), &org, ws).await?;
    }
    clear_membership(&mut w, &org, &target_id).await?;
    for role in &roles {
        sqlx::query("INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, $3)")
            .bind(&org)
            .bind(&target_id)
            .bind(role_name(*role))
            .execute(w.conn())
            .await?;
    }
    for ws in &req.workspaces {
        sqlx::query(
            "INSERT INTO workspace_members (org_id, workspace, user_id) VALUES ($1, $2, $3)",
        )
        .bind(&org)
        .bind(ws)
        .bind(&target_id)
        .execute(w.conn())
        .await?;
    }
    w.audit(
        AuditRecord::ok(caller.actor(), "member.set")
            .org(&org)
            .target(&username)
            .detail(json!({"roles": roles, "workspaces": req.workspaces})),
    )
    .await?;
    w.commit().await?;
    Ok(Json(MemberSet {
        org,
        user: username,
        roles,
        workspaces: req.workspaces,
    }))
}

/// Removes a user from an org: their roles and workspace memberships (the org's owners and
/// admins).
#[utoipa::path(
    delete,
    path = "/v1/orgs/{org}/members/{username}",
    tag = "orgs",
    params(
        ("org" = String, Path, description = "The org's id", example = "acme"),
        ("username" = String, Path, description = "The user's name", example = "alice"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed (also when the user was no member)"),
        (status = 403, description = "The caller is not an owner or admin of the org \
         (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such org or user (`not_found`)", body = ErrorBody),
    )
)]
async fn remove_member(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path((org, username)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let user = caller.user()?;
    require_org(&hub, &org).await?;
    auth::require_role(&hub, user, &org, &MANAGERS).await?;
    let target = sqlx::query("SELECT id FROM users WHERE username = $1")
        .bind(&username)
        .fetch_optional(&hub.db)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {username:?}")))?;
    let target_id: String = target.try_get("id")?;
    let mut w = hub.writer().await?;
    clear_membership(&mut w, &org, &target_id).await?;
    w.audit(
        AuditRecord::ok(caller.actor(), "member.remove")
            .org(&org)
            .target(&username),
    )
    .await?;
    w.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
