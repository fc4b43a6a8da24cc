//! Orgs, their workspaces, and who holds which role in them.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::Router;
use coffer_kms::authz::OrgRole;
use coffer_kms::OrgId;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;

use crate::audit::AuditRecord;
use crate::auth::{self, role_name, Caller};
use crate::error::{ApiError, ApiResult, Json};
use crate::state::Hub;

pub(super) fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/v1/orgs", post(create_org).get(list_orgs))
        .route(
            "/v1/orgs/{org}/workspaces",
            post(create_workspace).get(list_workspaces),
        )
        .route("/v1/orgs/{org}/members", get(list_members))
        .route(
            "/v1/orgs/{org}/members/{username}",
            put(set_member).delete(remove_member),
        )
}

/// The roles that manage an org.
pub(crate) const MANAGERS: [OrgRole; 2] = [OrgRole::Owner, OrgRole::Admin];

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOrg {
    id: String,
    #[serde(default)]
    name: Option<String>,
}

async fn create_org(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Json(req): Json<CreateOrg>,
) -> ApiResult<(StatusCode, Json<Value>)> {
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
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": req.id, "name": name})),
    ))
}

async fn list_orgs(State(hub): State<Arc<Hub>>, caller: Caller) -> ApiResult<Json<Value>> {
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
        orgs.push(
            json!({"id": r.try_get::<String, _>("id")?, "name": r.try_get::<String, _>("name")?}),
        );
    }
    Ok(Json(json!({"orgs": orgs})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateWorkspace {
    name: String,
}

async fn create_workspace(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(org): Path<String>,
    Json(req): Json<CreateWorkspace>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let user = caller.user()?;
    require_org(&hub, &org).await?;
    auth::require_role(&hub, user, &org, &MANAGERS).await?;
    check_workspace(&req.name)?;
    let mut w = hub.writer().await?;
    let exists = sqlx::query("SELECT 1 AS x FROM workspaces WHERE org_id = $1 AND name = $2")
        .bind(&org)
        .bind(&req.name)
        .fetch_optional(w.conn())
        .await?
        .is_some();
    if exists {
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
        Json(json!({"org": org, "name": req.name})),
    ))
}

async fn list_workspaces(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(org): Path<String>,
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
    let rows = sqlx::query("SELECT name FROM workspaces WHERE org_id = $1 ORDER BY name")
        .bind(&org)
        .fetch_all(&hub.db)
        .await?;
    let names: Result<Vec<String>, _> = rows.iter().map(|r| r.try_get("name")).collect();
    Ok(Json(json!({"workspaces": names?})))
}

async fn list_members(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(org): Path<String>,
) -> ApiResult<Json<Value>> {
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
    let mut members = serde_json::Map::new();
    for r in rows {
        let name: String = r.try_get("username")?;
        let role: String = r.try_get("role")?;
        let entry = members.entry(name).or_insert_with(|| json!([]));
        if let Some(list) = entry.as_array_mut() {
            list.push(Value::String(role));
        }
    }
    Ok(Json(json!({"members": members})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetMember {
    roles: Vec<String>,
    #[serde(default)]
    workspaces: Vec<String>,
}

/// Sets a user's roles in the org and the workspaces they belong to (replacing both).
async fn set_member(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path((org, username)): Path<(String, String)>,
    Json(req): Json<SetMember>,
) -> ApiResult<Json<Value>> {
    let user = caller.user()?;
    require_org(&hub, &org).await?;
    let my_roles = auth::require_role(&hub, user, &org, &MANAGERS).await?;
    let mut roles = Vec::new();
    for r in &req.roles {
        roles.push(auth::parse_role(r)?);
    }
    roles.sort();
    roles.dedup();
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
        let exists = sqlx::query("SELECT 1 AS x FROM workspaces WHERE org_id = $1 AND name = $2")
            .bind(&org)
            .bind(ws)
            .fetch_optional(w.conn())
            .await?
            .is_some();
        if !exists {
            return Err(ApiError::not_found(format!(
                "workspace {ws:?} of org {org:?}"
            )));
        }
    }
    sqlx::query("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2")
        .bind(&org)
        .bind(&target_id)
        .execute(w.conn())
        .await?;
    sqlx::query("DELETE FROM workspace_members WHERE org_id = $1 AND user_id = $2")
        .bind(&org)
        .bind(&target_id)
        .execute(w.conn())
        .await?;
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
    Ok(Json(
        json!({"org": org, "user": username, "roles": roles, "workspaces": req.workspaces}),
    ))
}

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
    sqlx::query("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2")
        .bind(&org)
        .bind(&target_id)
        .execute(w.conn())
        .await?;
    sqlx::query("DELETE FROM workspace_members WHERE org_id = $1 AND user_id = $2")
        .bind(&org)
        .bind(&target_id)
        .execute(w.conn())
        .await?;
    w.audit(
        AuditRecord::ok(caller.actor(), "member.remove")
            .org(&org)
            .target(&username),
    )
    .await?;
    w.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
