//! Signing in and out, users, service accounts, and the identity tokens the KMS checks.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use coffer_kms::authz::{IdentityClaims, OrgRole};
use coffer_kms::OrgId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::Row;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use zeroize::Zeroizing;

use crate::audit::AuditRecord;
use crate::auth::{self, password, Caller};
use crate::config::{
    IDENTITY_TOKEN_LIFETIME_SECS, LOGIN_MAX_FAILURES, LOGIN_MAX_FAILURES_PER_ADDRESS,
    LOGIN_WINDOW_SECS,
};
use crate::error::{ApiError, ApiResult, ErrorBody, Json};
use crate::state::Hub;

pub(super) fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(login_oidc))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(create_user, list_users))
        .routes(routes!(create_service_account))
        .routes(routes!(identity_token))
        .routes(routes!(jwks))
}

/// The longest OIDC issuer accepted when linking an identity, in bytes.
pub const MAX_OIDC_ISSUER_LEN: usize = 1024;
/// The longest OIDC subject accepted when linking an identity, in bytes (OpenID Connect Core
/// 1.0 §2: at most 255 ASCII characters).
pub const MAX_OIDC_SUBJECT_LEN: usize = 255;

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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    /// The user name.
    #[schema(example = "alice", pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    username: String,
    /// The password.
    #[schema(value_type = String, format = Password)]
    password: Zeroizing<String>,
}

/// A new session: its bearer token (shown once) and when it ends.
#[derive(Serialize, ToSchema)]
struct Session {
    /// The session token (`cs_…`), for `Authorization: Bearer`.
    token: String,
    /// When the session ends (seconds since the Unix epoch).
    expires_at: i64,
}

/// Signs in with a user name and password.
///
/// After too many failures for one user name, or from one address, within the window, sign-in
/// is refused (429) for that name or address until the oldest failure leaves the window, even
/// with the right password.
#[utoipa::path(
    post,
    path = "/v1/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in", body = Session),
        (status = 400, description = "The body is malformed, or the user name cannot be one \
         (`invalid_body`, `invalid_username`)", body = ErrorBody),
        (status = 401, description = "Wrong user name or password (`unauthenticated`)",
         body = ErrorBody),
        (status = 429, description = "Too many failed sign-ins for this user name or from this \
         address (`too_many_attempts`)", body = ErrorBody,
         headers(("Retry-After" = u64, description = "Seconds until sign-in is possible again"))),
    )
)]
async fn login(
    State(hub): State<Arc<Hub>>,
    ClientIp(ip): ClientIp,
    Json(req): Json<LoginRequest>,
) -> ApiResult<Json<Session>> {
    // A name that cannot be a user's is refused before anything is recorded under it.
    check_username(&req.username)?;
    let actor = format!(
        "anonymous:{}",
        req.username.chars().take(64).collect::<String>()
    );
    let limits = limits(&req.username, ip);
    check_rate(&hub, &limits, &actor).await?;
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
            for limit in &limits {
                if failures(&mut w, limit).await? >= limit.max {
                    drop(w);
                    return Err(rate_limited(&hub, limit, &actor).await);
                }
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
            Ok(Json(Session { token, expires_at }))
        }
        _ => {
            sqlx::query("INSERT INTO login_failures (username, ip, at) VALUES ($1, $2, $3)")
                .bind(&req.username)
                .bind(ip.map(|ip| ip.to_string()))
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
/// One sign-in failure limit: failures recorded under `column = value` within
/// [`LOGIN_WINDOW_SECS`].
struct Limit {
    /// `username` or `ip` (a column of `login_failures`; never user input).
    column: &'static str,
    value: String,
    max: u64,
    /// "for this account", "from this address".
    scope: &'static str,
}

/// The limits a sign-in as `username` from `ip` is under: the account's (against guessing one
/// password) and the address's (against trying one password on many accounts). Without a
/// peer address (a router served without connection info), the account's only.
fn limits(username: &str, ip: Option<std::net::IpAddr>) -> Vec<Limit> {
    let mut limits = vec![Limit {
        column: "username",
        value: username.to_owned(),
        max: LOGIN_MAX_FAILURES,
        scope: "for this account",
    }];
    if let Some(ip) = ip {
        limits.push(Limit {
            column: "ip",
            value: ip.to_string(),
            max: LOGIN_MAX_FAILURES_PER_ADDRESS,
            scope: "from this address",
        });
    }
    limits
}

/// Failures under `limit` in the window.
async fn count(db: &mut sqlx::AnyConnection, limit: &Limit) -> ApiResult<(u64, i64)> {
    let since = crate::db::now() - LOGIN_WINDOW_SECS as i64;
    let row = sqlx::query(&format!(
        "SELECT COUNT(*) AS n, COALESCE(MIN(at), 0) AS oldest FROM login_failures \
         WHERE {} = $1 AND at > $2",
        limit.column
    ))
    .bind(&limit.value)
    .bind(since)
    .fetch_one(db)
    .await?;
    let n: i64 = row.try_get("n")?;
    Ok((u64::try_from(n).unwrap_or(0), row.try_get("oldest")?))
}

async fn failures(w: &mut crate::Writer<'_>, limit: &Limit) -> ApiResult<u64> {
    Ok(count(w.conn(), limit).await?.0)
}

async fn check_rate(hub: &Hub, limits: &[Limit], actor: &str) -> ApiResult<()> {
    let mut conn = hub.db.acquire().await?;
    for limit in limits {
        if count(&mut conn, limit).await?.0 >= limit.max {
            drop(conn);
            return Err(rate_limited(hub, limit, actor).await);
        }
    }
    Ok(())
}

async fn rate_limited(hub: &Hub, limit: &Limit, actor: &str) -> ApiError {
    let oldest = match hub.db.acquire().await {
        Ok(mut conn) => match count(&mut conn, limit).await {
            Ok((_, oldest)) => oldest,
            Err(e) => return e,
        },
        Err(e) => return e.into(),
    };
    let why = format!("rate_limited ({})", limit.column);
    hub.audit_refusal(AuditRecord::denied(actor, "auth.login", &why))
        .await;
    let wait = (oldest + LOGIN_WINDOW_SECS as i64 - crate::db::now()).max(1);
    let mut err = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        format!(
            "{} failed sign-ins {} within {} minutes; try again in {wait} s",
            limit.max,
            limit.scope,
            LOGIN_WINDOW_SECS / 60
        ),
    );
    err.retry_after = Some(wait as u64);
    err
}

/// The peer address of the connection, when the router is served with connection info
/// ([`super::serve`] does). Behind a reverse proxy this is the proxy's address: the per-address
/// limit then counts everyone behind it together (no forwarded header is trusted).
pub(crate) struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct OidcLoginRequest {
    /// An ID token (a JWT) from a configured OIDC issuer, for this hub's client id.
    id_token: String,
}

/// Signs in with an OIDC ID token whose identity an administrator linked to a user.
#[utoipa::path(
    post,
    path = "/v1/auth/oidc",
    tag = "auth",
    request_body = OidcLoginRequest,
    responses(
        (status = 200, description = "Signed in", body = Session),
        (status = 401, description = "The ID token is refused (`unauthenticated`), or its \
         identity is linked to no user (`oidc_identity_unknown`)", body = ErrorBody),
    )
)]
async fn login_oidc(
    State(hub): State<Arc<Hub>>,
    Json(req): Json<OidcLoginRequest>,
) -> ApiResult<Json<Session>> {
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
    Ok(Json(Session { token, expires_at }))
}

/// Signs out: ends the session whose token the request carries.
#[utoipa::path(
    post,
    path = "/v1/auth/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Signed out"),
        (status = 403, description = "A service account has no session (`forbidden`)",
         body = ErrorBody),
    )
)]
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

/// Who the caller is: a user, or a service account.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
enum Me {
    /// A user.
    User(UserMe),
    /// A service account.
    Service(ServiceMe),
}

/// A signed-in user, their roles and workspaces.
#[derive(Serialize, ToSchema)]
struct UserMe {
    /// The user's id.
    id: String,
    /// The user name.
    username: String,
    /// Whether they are a deployment administrator.
    admin: bool,
    /// The orgs they belong to, by org id.
    orgs: BTreeMap<String, Membership>,
}

/// A user's place in one org.
#[derive(Default, Serialize, ToSchema)]
struct Membership {
    /// Their roles.
    #[schema(schema_with = crate::openapi::org_roles)]
    roles: Vec<String>,
    /// The workspaces they are a member of (absent: none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    workspaces: Vec<String>,
}

/// A service account.
#[derive(Serialize, ToSchema)]
struct ServiceMe {
    /// Its name.
    service: String,
    /// Its kind (`scheduler`).
    kind: String,
}

/// Who the caller is, and (for a user) their roles and workspaces in each org.
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, description = "The caller", body = Me))
)]
async fn me(State(hub): State<Arc<Hub>>, caller: Caller) -> ApiResult<Json<Me>> {
    match &caller {
        Caller::Service(s) => Ok(Json(Me::Service(ServiceMe {
            service: s.name.clone(),
            kind: s.kind.clone(),
        }))),
        Caller::User(u) => {
            let rows = sqlx::query(
                "SELECT org_id, role FROM memberships WHERE user_id = $1 ORDER BY org_id, role",
            )
            .bind(&u.id)
            .fetch_all(&hub.db)
            .await?;
            let mut orgs: BTreeMap<String, Membership> = BTreeMap::new();
            for row in rows {
                let org: String = row.try_get("org_id")?;
                let role: String = row.try_get("role")?;
                orgs.entry(org).or_default().roles.push(role);
            }
            let ws = sqlx::query("SELECT org_id, workspace FROM workspace_members WHERE user_id = $1 ORDER BY org_id, workspace")
                .bind(&u.id)
                .fetch_all(&hub.db)
                .await?;
            for row in ws {
                let org: String = row.try_get("org_id")?;
                let workspace: String = row.try_get("workspace")?;
                orgs.entry(org).or_default().workspaces.push(workspace);
            }
            Ok(Json(Me::User(UserMe {
                id: u.id.clone(),
                username: u.username.clone(),
                admin: u.is_admin,
                orgs,
            })))
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    /// The sign-in name: 1-64 of `a-z 0-9 . _ -`, starting with a letter or digit.
    #[schema(example = "carol", pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    username: String,
    /// A name for people (default: the user name).
    #[serde(default)]
    display_name: Option<String>,
    /// A password (at least 12 characters, at most 1024 bytes).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Password)]
    password: Option<Zeroizing<String>>,
    /// An OIDC identity to sign in with. A user needs a password, an OIDC identity, or both.
    #[serde(default)]
    oidc: Option<OidcLink>,
    /// Whether the user is a deployment administrator.
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct OidcLink {
    /// The issuer (`iss`), as configured.
    issuer: String,
    /// The subject (`sub`) the issuer names the person by.
    subject: String,
}

/// 400 unless an OIDC identity to link has an issuer and a subject of sensible lengths.
fn check_oidc_link(link: &OidcLink) -> ApiResult<()> {
    let bad = |what: &str, value: &str, max: usize| {
        ApiError::bad_request(
            "invalid_oidc",
            format!(
                "OIDC {what} is {} bytes; 1 to {max} are accepted",
                value.len()
            ),
        )
    };
    if link.issuer.is_empty() || link.issuer.len() > MAX_OIDC_ISSUER_LEN {
        return Err(bad("issuer", &link.issuer, MAX_OIDC_ISSUER_LEN));
    }
    if link.subject.is_empty() || link.subject.len() > MAX_OIDC_SUBJECT_LEN {
        return Err(bad("subject", &link.subject, MAX_OIDC_SUBJECT_LEN));
    }
    Ok(())
}

/// A user, as created.
#[derive(Serialize, ToSchema)]
struct CreatedUser {
    /// Its id.
    id: String,
    /// Its user name.
    username: String,
}

/// Creates a user (deployment administrators).
#[utoipa::path(
    post,
    path = "/v1/users",
    tag = "users",
    request_body = CreateUser,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = CreatedUser),
        (status = 400, description = "A field is invalid (`invalid_username`, `no_credential`, \
         `weak_password`, `invalid_password`, `invalid_oidc`, `invalid_body`)", body = ErrorBody),
        (status = 403, description = "The caller is not a deployment administrator \
         (`forbidden`)", body = ErrorBody),
        (status = 409, description = "The user name is taken (`user_exists`), or the OIDC \
         identity is linked already (`oidc_identity_linked`)", body = ErrorBody),
    )
)]
async fn create_user(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Json(req): Json<CreateUser>,
) -> ApiResult<(StatusCode, Json<CreatedUser>)> {
    caller.admin()?;
    check_username(&req.username)?;
    if let Some(link) = &req.oidc {
        check_oidc_link(link)?;
    }
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
        Json(CreatedUser {
            id,
            username: req.username,
        }),
    ))
}

/// The users of the deployment.
#[derive(Serialize, ToSchema)]
struct UserList {
    /// Every user, by user name.
    users: Vec<UserInfo>,
}

/// A user, as listed.
#[derive(Serialize, ToSchema)]
struct UserInfo {
    /// Its id.
    id: String,
    /// Its user name.
    username: String,
    /// Its name for people.
    display_name: String,
    /// Whether it is a deployment administrator.
    admin: bool,
}

/// Lists the users (deployment administrators).
#[utoipa::path(
    get,
    path = "/v1/users",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The users", body = UserList),
        (status = 403, description = "The caller is not a deployment administrator \
         (`forbidden`)", body = ErrorBody),
    )
)]
async fn list_users(State(hub): State<Arc<Hub>>, caller: Caller) -> ApiResult<Json<UserList>> {
    caller.admin()?;
    let rows =
        sqlx::query("SELECT id, username, display_name, is_admin FROM users ORDER BY username")
            .fetch_all(&hub.db)
            .await?;
    let mut users = Vec::new();
    for r in rows {
        let admin: i64 = r.try_get("is_admin")?;
        users.push(UserInfo {
            id: r.try_get("id")?,
            username: r.try_get("username")?,
            display_name: r.try_get("display_name")?,
            admin: admin != 0,
        });
    }
    Ok(Json(UserList { users }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateServiceAccount {
    /// Its name (same rules as a user name).
    #[schema(example = "scheduler-1", pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    name: String,
    /// Its kind: `scheduler` (the workload manager).
    #[schema(example = "scheduler")]
    kind: String,
}

/// A service account, as created, with its token (shown this once).
#[derive(Serialize, ToSchema)]
struct CreatedServiceAccount {
    /// Its id.
    id: String,
    /// Its name.
    name: String,
    /// Its bearer token (`csa_…`); it does not expire.
    token: String,
}

/// Creates a service account (deployment administrators).
#[utoipa::path(
    post,
    path = "/v1/service-accounts",
    tag = "users",
    request_body = CreateServiceAccount,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = CreatedServiceAccount),
        (status = 400, description = "A field is invalid (`invalid_username`, `invalid_kind`, \
         `invalid_body`)", body = ErrorBody),
        (status = 403, description = "The caller is not a deployment administrator \
         (`forbidden`)", body = ErrorBody),
        (status = 409, description = "The name is taken (`service_account_exists`)",
         body = ErrorBody),
    )
)]
async fn create_service_account(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Json(req): Json<CreateServiceAccount>,
) -> ApiResult<(StatusCode, Json<CreatedServiceAccount>)> {
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
        Json(CreatedServiceAccount {
            id,
            name: req.name,
            token,
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct IdentityRequest {
    /// The org.
    #[schema(example = "acme")]
    org: String,
    /// The workspace.
    #[schema(example = "research")]
    workspace: String,
}

/// An identity token for the KMS, and when it expires.
#[derive(Serialize, ToSchema)]
struct IdentityToken {
    /// The signed JWT.
    token: String,
    /// When it expires (seconds since the Unix epoch).
    expires_at: u64,
}

/// An identity token for the KMS: the caller's roles in `org`, for `workspace`, which the
/// caller must be a member of (owners and admins of the org are members of all its workspaces).
#[utoipa::path(
    post,
    path = "/v1/tokens/identity",
    tag = "credentials",
    request_body = IdentityRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The token", body = IdentityToken),
        (status = 400, description = "The org id or workspace name is invalid \
         (`invalid_org`, `invalid_workspace`), or the body is malformed (`invalid_body`)",
         body = ErrorBody),
        (status = 403, description = "The caller is a service account, or not a member of the \
         workspace (`forbidden`)", body = ErrorBody),
        (status = 404, description = "The org has no such workspace (`not_found`)",
         body = ErrorBody),
    )
)]
async fn identity_token(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Json(req): Json<IdentityRequest>,
) -> ApiResult<Json<IdentityToken>> {
    let user = caller.user()?;
    let org =
        OrgId::new(&req.org).map_err(|e| ApiError::bad_request("invalid_org", e.to_string()))?;
    super::orgs::check_workspace(&req.workspace)?;
    let roles = auth::roles_in(&hub.db, &user.id, &req.org).await?;
    // Owners and admins belong to every workspace of their org, but only to those that exist:
    // a token never names a workspace the org does not have.
    if !roles.is_empty() {
        super::orgs::require_workspace(&mut *hub.db.acquire().await?, &req.org, &req.workspace)
            .await?;
    }
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
    Ok(Json(IdentityToken {
        token,
        expires_at: claims.exp,
    }))
}

/// The hub's credential issuer and the public keys that verify its tokens.
#[derive(Serialize, ToSchema)]
struct Jwks {
    /// The issuer (`iss`) of the hub's identity tokens and job grants.
    issuer: String,
    /// A JWK set (`{"keys": [...]}`): what the KMS's issuer entry for this hub needs.
    #[schema(value_type = Object)]
    jwks: Value,
}

/// The public keys that verify the hub's identity tokens and job grants (no token needed).
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "credentials",
    responses((status = 200, description = "The issuer and its keys", body = Jwks))
)]
async fn jwks(State(hub): State<Arc<Hub>>) -> Json<Jwks> {
    Json(Jwks {
        issuer: hub.keys.issuer().to_owned(),
        jwks: hub.keys.jwks(),
    })
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
