//! Signing in and out, users, service accounts, and the identity tokens the KMS checks.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use coffer_kms::authz::{IdentityClaims, OrgRole};
use coffer_kms::OrgId;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;
use zeroize::Zeroizing;

use crate::audit::AuditRecord;
use crate::auth::{self, password, Caller};
use crate::config::{IDENTITY_TOKEN_LIFETIME_SECS, LOGIN_MAX_FAILURES, LOGIN_WINDOW_SECS};
use crate::error::{ApiError, ApiResult, Json};
use crate::state::Hub;

pub(super) fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/oidc", post(login_oidc))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/me", get(me))
        .route("/v1/users", post(create_user).get(list_users))
        .route("/v1/service-accounts", post(create_service_account))
        .route("/v1/tokens/identity", post(identity_token))
        .route("/.well-known/jwks.json", get(jwks))
}

/// A user name: 1-64 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub(crate) fn check_username(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_username",
            format!(
                "user name {name:?} must be 1-64 of a-z 0-9 . _ -, starting with a letter or digit"
            ),
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    username: String,
    password: Zeroizing<String>,
}

async fn login(
    State(hub): State<Arc<Hub>>,
    Json(req): Json<LoginRequest>,
) -> ApiResult<Json<Value>> {
    let actor = format!(
        "anonymous:{}",
        req.username.chars().take(64).collect::<String>()
    );
    check_rate(&hub, &req.username, &actor).await?;
    let row = sqlx::query("SELECT id, password_hash FROM users WHERE username = $1")
        .bind(&req.username)
        .fetch_optional(&hub.db)
        .await?;
    let (user_id, phc) = match row {
        Some(r) => (
            Some(r.try_get::<String, _>("id")?),
            r.try_get::<Option<String>, _>("password_hash")?,
        ),
        None => (None, None),
    };
    let ok = password::verify(req.password, phc).await?;
    let mut w = hub.writer().await?;
    match (ok, user_id) {
        (true, Some(user_id)) => {
            // Re-checked under the write lock: attempts racing the limit do not get through.
            if failures(&mut w, &req.username).await?.0 >= LOGIN_MAX_FAILURES {
                drop(w);
                return Err(rate_limited(&hub, &req.username, &actor).await);
            }
            sqlx::query("DELETE FROM login_failures WHERE username = $1")
                .bind(&req.username)
                .execute(w.conn())
                .await?;
            let (token, expires_at) = auth::start_session(&mut w, &user_id).await?;
            w.audit(
                AuditRecord::ok(format!("user:{}", req.username), "auth.login").target(&user_id),
            )
            .await?;
            w.commit().await?;
            Ok(Json(json!({"token": token, "expires_at": expires_at})))
        }
        _ => {
            sqlx::query("INSERT INTO login_failures (username, at) VALUES ($1, $2)")
                .bind(&req.username)
                .bind(crate::db::now())
                .execute(w.conn())
                .await?;
            w.audit(AuditRecord::denied(
                &actor,
                "auth.login",
                "invalid_credentials",
            ))
            .await?;
            w.commit().await?;
            Err(ApiError::unauthenticated("wrong user name or password"))
        }
    }
}

/// (failures in the window, the oldest one's time).
async fn failures(w: &mut crate::Writer<'_>, username: &str) -> ApiResult<(u64, i64)> {
    let since = crate::db::now() - LOGIN_WINDOW_SECS as i64;
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, COALESCE(MIN(at), 0) AS oldest FROM login_failures WHERE username = $1 AND at > $2",
    )
    .bind(username)
    .bind(since)
    .fetch_one(w.conn())
    .await?;
    let n: i64 = row.try_get("n")?;
    Ok((u64::try_from(n).unwrap_or(0), row.try_get("oldest")?))
}

async fn check_rate(hub: &Hub, username: &str, actor: &str) -> ApiResult<()> {
    let since = crate::db::now() - LOGIN_WINDOW_SECS as i64;
    let n: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM login_failures WHERE username = $1 AND at > $2")
            .bind(username)
            .bind(since)
            .fetch_one(&hub.db)
            .await?
            .try_get("n")?;
    if u64::try_from(n).unwrap_or(0) >= LOGIN_MAX_FAILURES {
        return Err(rate_limited(hub, username, actor).await);
    }
    Ok(())
}

async fn rate_limited(hub: &Hub, username: &str, actor: &str) -> ApiError {
    let since = crate::db::now() - LOGIN_WINDOW_SECS as i64;
    let oldest: i64 = match sqlx::query(
        "SELECT COALESCE(MIN(at), 0) AS oldest FROM login_failures WHERE username = $1 AND at > $2",
    )
    .bind(username)
    .bind(since)
    .fetch_one(&hub.db)
    .await
    .and_then(|r| r.try_get("oldest"))
    {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    hub.audit_refusal(AuditRecord::denied(actor, "auth.login", "rate_limited"))
        .await;
    let wait = (oldest + LOGIN_WINDOW_SECS as i64 - crate::db::now()).max(1);
    let mut err = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        format!(
            "{LOGIN_MAX_FAILURES} failed sign-ins for this account within {} minutes; try again in {wait} s",
            LOGIN_WINDOW_SECS / 60
        ),
    );
    err.retry_after = Some(wait as u64);
    err
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcLoginRequest {
    id_token: String,
}

async fn login_oidc(
    State(hub): State<Arc<Hub>>,
    Json(req): Json<OidcLoginRequest>,
) -> ApiResult<Json<Value>> {
    let identity = match hub.oidc.verify(&req.id_token) {
        Ok(i) => i,
        Err(e) => {
            hub.audit_refusal(AuditRecord::denied(
                "anonymous:oidc",
                "auth.oidc",
                &e.message,
            ))
            .await;
            return Err(e);
        }
    };
    let row = sqlx::query(
        "SELECT u.id, u.username FROM oidc_identities o JOIN users u ON u.id = o.user_id \
         WHERE o.issuer = $1 AND o.subject = $2",
    )
    .bind(&identity.issuer)
    .bind(&identity.subject)
    .fetch_optional(&hub.db)
    .await?;
    let Some(row) = row else {
        let why = format!(
            "no user is linked to OIDC identity {:?} of issuer {:?}; an administrator must link it",
            identity.subject, identity.issuer
        );
        hub.audit_refusal(AuditRecord::denied("anonymous:oidc", "auth.oidc", &why))
            .await;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "oidc_identity_unknown",
            why,
        ));
    };
    let user_id: String = row.try_get("id")?;
    let username: String = row.try_get("username")?;
    let mut w = hub.writer().await?;
    let (token, expires_at) = auth::start_session(&mut w, &user_id).await?;
    w.audit(
        AuditRecord::ok(format!("user:{username}"), "auth.oidc")
            .target(&user_id)
            .detail(json!({"issuer": identity.issuer})),
    )
    .await?;
    w.commit().await?;
    Ok(Json(json!({"token": token, "expires_at": expires_at})))
}

async fn logout(
    State(hub): State<Arc<Hub>>,
    headers: axum::http::HeaderMap,
    caller: Caller,
) -> ApiResult<StatusCode> {
    let user = caller.user()?;
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default();
    let mut w = hub.writer().await?;
    sqlx::query("UPDATE sessions SET revoked = 1 WHERE token_hash = $1")
        .bind(auth::token_hash(token))
        .execute(w.conn())
        .await?;
    w.audit(AuditRecord::ok(caller.actor(), "auth.logout").target(&user.id))
        .await?;
    w.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(State(hub): State<Arc<Hub>>, caller: Caller) -> ApiResult<Json<Value>> {
    match &caller {
        Caller::Service(s) => Ok(Json(json!({"service": s.name, "kind": s.kind}))),
        Caller::User(u) => {
            let rows = sqlx::query(
                "SELECT org_id, role FROM memberships WHERE user_id = $1 ORDER BY org_id, role",
            )
            .bind(&u.id)
            .fetch_all(&hub.db)
            .await?;
            let mut orgs = serde_json::Map::new();
            for row in rows {
                let org: String = row.try_get("org_id")?;
                let role: String = row.try_get("role")?;
                let entry = orgs.entry(org).or_insert_with(|| json!({"roles": []}));
                if let Some(list) = entry["roles"].as_array_mut() {
                    list.push(Value::String(role));
                }
            }
            let ws = sqlx::query("SELECT org_id, workspace FROM workspace_members WHERE user_id = $1 ORDER BY org_id, workspace")
                .bind(&u.id)
                .fetch_all(&hub.db)
                .await?;
            for row in ws {
                let org: String = row.try_get("org_id")?;
                let workspace: String = row.try_get("workspace")?;
                let entry = orgs.entry(org).or_insert_with(|| json!({"roles": []}));
                match entry.get_mut("workspaces").and_then(Value::as_array_mut) {
                    Some(list) => list.push(Value::String(workspace)),
                    None => entry["workspaces"] = json!([workspace]),
                }
            }
            Ok(Json(
                json!({"id": u.id, "username": u.username, "admin": u.is_admin, "orgs": orgs}),
            ))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    username: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    password: Option<Zeroizing<String>>,
    #[serde(default)]
    oidc: Option<OidcLink>,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcLink {
    issuer: String,
    subject: String,
}

async fn create_user(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Json(req): Json<CreateUser>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.admin()?;
    check_username(&req.username)?;
    if req.password.is_none() && req.oidc.is_none() {
        return Err(ApiError::bad_request(
            "no_credential",
            "a user needs a password or an OIDC identity to sign in with",
        ));
    }
    let phc = match req.password {
        Some(p) => {
            password::check_new(&p)?;
            Some(password::hash(p).await?)
        }
        None => None,
    };
    let id = crate::db::new_id("u-");
    let mut w = hub.writer().await?;
    let taken = sqlx::query("SELECT 1 AS x FROM users WHERE username = $1")
        .bind(&req.username)
        .fetch_optional(w.conn())
        .await?
        .is_some();
    if taken {
        return Err(ApiError::conflict(
            "user_exists",
            format!("user {:?} already exists", req.username),
        ));
    }
    sqlx::query(
        "INSERT INTO users (id, username, display_name, password_hash, is_admin, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(&req.username)
    .bind(req.display_name.as_deref().unwrap_or(&req.username))
    .bind(phc)
    .bind(i64::from(req.admin))
    .bind(crate::db::now())
    .execute(w.conn())
    .await?;
    if let Some(link) = &req.oidc {
        let linked =
            sqlx::query("SELECT 1 AS x FROM oidc_identities WHERE issuer = $1 AND subject = $2")
                .bind(&link.issuer)
                .bind(&link.subject)
                .fetch_optional(w.conn())
                .await?
                .is_some();
        if linked {
            return Err(ApiError::conflict(
                "oidc_identity_linked",
                format!(
                    "OIDC identity {:?} of {:?} is already linked to a user",
                    link.subject, link.issuer
                ),
            ));
        }
        sqlx::query("INSERT INTO oidc_identities (issuer, subject, user_id) VALUES ($1, $2, $3)")
            .bind(&link.issuer)
            .bind(&link.subject)
            .bind(&id)
            .execute(w.conn())
            .await?;
    }
    w.audit(
        AuditRecord::ok(caller.actor(), "user.create")
            .target(&id)
            .detail(json!({"username": req.username, "admin": req.admin, "oidc": req.oidc.as_ref().map(|l| &l.issuer)})),
    )
    .await?;
    w.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "username": req.username})),
    ))
}

async fn list_users(State(hub): State<Arc<Hub>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.admin()?;
    let rows =
        sqlx::query("SELECT id, username, display_name, is_admin FROM users ORDER BY username")
            .fetch_all(&hub.db)
            .await?;
    let mut users = Vec::new();
    for r in rows {
        let admin: i64 = r.try_get("is_admin")?;
        users.push(json!({
            "id": r.try_get::<String, _>("id")?,
            "username": r.try_get::<String, _>("username")?,
            "display_name": r.try_get::<String, _>("display_name")?,
            "admin": admin != 0,
        }));
    }
    Ok(Json(json!({"users": users})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateServiceAccount {
    name: String,
    kind: String,
}

async fn create_service_account(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Json(req): Json<CreateServiceAccount>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.admin()?;
    check_username(&req.name)?;
    if req.kind != "scheduler" {
        return Err(ApiError::bad_request(
            "invalid_kind",
            format!(
                "service account kind {:?} is unknown: expected \"scheduler\"",
                req.kind
            ),
        ));
    }
    let token = auth::new_token("csa_");
    let id = crate::db::new_id("sa-");
    let mut w = hub.writer().await?;
    let taken = sqlx::query("SELECT 1 AS x FROM service_accounts WHERE name = $1")
        .bind(&req.name)
        .fetch_optional(w.conn())
        .await?
        .is_some();
    if taken {
        return Err(ApiError::conflict(
            "service_account_exists",
            format!("service account {:?} already exists", req.name),
        ));
    }
    sqlx::query("INSERT INTO service_accounts (id, name, kind, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(&req.name)
        .bind(&req.kind)
        .bind(auth::token_hash(&token))
        .bind(crate::db::now())
        .execute(w.conn())
        .await?;
    w.audit(
        AuditRecord::ok(caller.actor(), "service_account.create")
            .target(&id)
            .detail(json!({"name": req.name, "kind": req.kind})),
    )
    .await?;
    w.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "name": req.name, "token": token})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityRequest {
    org: String,
    workspace: String,
}

/// An identity token for the KMS: the caller's roles in `org`, for `workspace`, which the
/// caller must be a member of (owners and admins of the org are members of all its workspaces).
async fn identity_token(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Json(req): Json<IdentityRequest>,
) -> ApiResult<Json<Value>> {
    let user = caller.user()?;
    let org =
        OrgId::new(&req.org).map_err(|e| ApiError::bad_request("invalid_org", e.to_string()))?;
    let roles = auth::roles_in(&hub.db, &user.id, &req.org).await?;
    let member = roles.iter().any(|r| matches!(r, OrgRole::Owner | OrgRole::Admin))
        || sqlx::query("SELECT 1 AS x FROM workspace_members WHERE org_id = $1 AND workspace = $2 AND user_id = $3")
            .bind(&req.org)
            .bind(&req.workspace)
            .bind(&user.id)
            .fetch_optional(&hub.db)
            .await?
            .is_some();
    if roles.is_empty() || !member {
        let why = format!(
            "user {:?} is not a member of workspace {:?} of org {:?}",
            user.username, req.workspace, req.org
        );
        hub.audit_refusal(
            AuditRecord::denied(caller.actor(), "token.identity", &why).org(&req.org),
        )
        .await;
        return Err(ApiError::forbidden(why));
    }
    let now = u64::try_from(crate::db::now()).unwrap_or(0);
    let jti = crate::db::new_id("it-");
    let claims = IdentityClaims {
        iss: hub.keys.issuer().to_owned(),
        sub: user.username.clone(),
        org,
        workspace: req.workspace.clone(),
        roles: roles.clone(),
        aud: crate::keys::HubKeys::audience(),
        iat: now,
        exp: now + IDENTITY_TOKEN_LIFETIME_SECS,
        nbf: None,
        jti: jti.clone(),
    };
    let token = hub
        .keys
        .sign_identity(&claims)
        .map_err(|e| ApiError::internal("sign identity token", e))?;
    let mut w = hub.writer().await?;
    w.audit(
        AuditRecord::ok(caller.actor(), "token.identity")
            .org(&req.org)
            .target(&jti)
            .detail(json!({"workspace": req.workspace, "roles": roles, "exp": claims.exp})),
    )
    .await?;
    w.commit().await?;
    Ok(Json(json!({"token": token, "expires_at": claims.exp})))
}

async fn jwks(State(hub): State<Arc<Hub>>) -> Json<Value> {
    Json(json!({"issuer": hub.keys.issuer(), "jwks": hub.keys.jwks()}))
}

/// Creates the first deployment administrator when the hub has no users; returns the password
/// generated for it (shown once by the caller), or `None` if users exist.
pub async fn bootstrap_admin(hub: &Hub, username: &str) -> ApiResult<Option<Zeroizing<String>>> {
    check_username(username)?;
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users")
        .fetch_one(&hub.db)
        .await?
        .try_get("n")?;
    if n > 0 {
        return Ok(None);
    }
    let password = Zeroizing::new(auth::new_token(""));
    let phc = password::hash(password.clone()).await?;
    let id = crate::db::new_id("u-");
    let mut w = hub.writer().await?;
    sqlx::query(
        "INSERT INTO users (id, username, display_name, password_hash, is_admin, created_at) \
         VALUES ($1, $2, $2, $3, 1, $4)",
    )
    .bind(&id)
    .bind(username)
    .bind(phc)
    .bind(crate::db::now())
    .execute(w.conn())
    .await?;
    w.audit(
        AuditRecord::ok("hub", "user.bootstrap_admin")
            .target(&id)
            .detail(json!({"username": username})),
    )
    .await?;
    w.commit().await?;
    Ok(Some(password))
}
