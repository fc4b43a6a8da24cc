//! Who is calling: sessions for people, tokens for service accounts, and signing in.
//!
//! Every API request but sign-in carries `Authorization: Bearer <token>`. Session tokens
//! (`cs_…`) are 32 random bytes, given to the user once at sign-in and stored only as their
//! SHA-256; they last [`SESSION_LIFETIME_SECS`] and end at sign-out. Service-account tokens
//! (`csa_…`, the workload manager) are the same shape and do not expire until revoked.

pub mod oidc;
pub mod password;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64ct::{Base64UrlUnpadded, Encoding};
use coffer_kms::authz::OrgRole;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::config::SESSION_LIFETIME_SECS;
use crate::error::{ApiError, ApiResult};
use crate::state::Hub;

/// A signed-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user's id.
    pub id: String,
    /// The sign-in name.
    pub username: String,
    /// A deployment administrator.
    pub is_admin: bool,
}

/// A service account (the workload manager).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its kind (`scheduler`).
    pub kind: String,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A person, through a session.
    User(User),
    /// A service account.
    Service(Service),
}

impl Caller {
    /// The actor name in audit entries: `user:<name>` or `service:<name>`.
    pub fn actor(&self) -> String {
        match self {
            Self::User(u) => format!("user:{}", u.username),
            Self::Service(s) => format!("service:{}", s.name),
        }
    }

    /// The user, or 403 for a service account.
    pub fn user(&self) -> ApiResult<&User> {
        match self {
            Self::User(u) => Ok(u),
            Self::Service(s) => Err(ApiError::forbidden(format!(
                "service account {:?} cannot do this; it needs a user session",
                s.name
            ))),
        }
    }

    /// The user if a deployment administrator, else 403.
    pub fn admin(&self) -> ApiResult<&User> {
        let u = self.user()?;
        if u.is_admin {
            Ok(u)
        } else {
            Err(ApiError::forbidden(format!(
                "user {:?} is not a deployment administrator",
                u.username
            )))
        }
    }

    /// The service account if of `kind`, else 403.
    pub fn service(&self, kind: &str) -> ApiResult<&Service> {
        match self {
            Self::Service(s) if s.kind == kind => Ok(s),
            _ => Err(ApiError::forbidden(format!(
                "only a {kind} service account can do this"
            ))),
        }
    }
}

/// The SHA-256 (hex) under which a bearer token is stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh bearer token with `prefix`.
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", Base64UrlUnpadded::encode_string(&bytes))
}

impl FromRequestParts<Arc<Hub>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> ApiResult<Self> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthenticated("no Authorization header; sign in first"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthenticated("Authorization must be 'Bearer <token>'"))?;
        authenticate(hub, token).await
    }
}

/// The caller a bearer token names.
pub async fn authenticate(hub: &Hub, token: &str) -> ApiResult<Caller> {
    let hash = token_hash(token);
    if token.starts_with("cs_") {
        let row = sqlx::query(
            "SELECT u.id, u.username, u.is_admin, s.expires_at, s.revoked FROM sessions s \
             JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&hub.db)
        .await?
        .ok_or_else(|| ApiError::unauthenticated("unknown session; sign in again"))?;
        let expires: i64 = row.try_get("expires_at")?;
        let revoked: i64 = row.try_get("revoked")?;
        if revoked != 0 {
            return Err(ApiError::unauthenticated(
                "session ended (signed out); sign in again",
            ));
        }
        if expires <= crate::db::now() {
            return Err(ApiError::unauthenticated("session expired; sign in again"));
        }
        let is_admin: i64 = row.try_get("is_admin")?;
        Ok(Caller::User(User {
            id: row.try_get("id")?,
            username: row.try_get("username")?,
            is_admin: is_admin != 0,
        }))
    } else if token.starts_with("csa_") {
        let row = sqlx::query("SELECT id, name, kind FROM service_accounts WHERE token_hash = $1")
            .bind(&hash)
            .fetch_optional(&hub.db)
            .await?
            .ok_or_else(|| ApiError::unauthenticated("unknown service-account token"))?;
        Ok(Caller::Service(Service {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            kind: row.try_get("kind")?,
        }))
    } else {
        Err(ApiError::unauthenticated(
            "not a Coffer token (expected a session token cs_… or a service token csa_…)",
        ))
    }
}

/// Starts a session for `user_id` in the writer's transaction; returns the token and expiry.
pub async fn start_session(w: &mut crate::Writer<'_>, user_id: &str) -> ApiResult<(String, i64)> {
    let token = new_token("cs_");
    let now = crate::db::now();
    let expires = now + SESSION_LIFETIME_SECS as i64;
    sqlx::query(
        "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(token_hash(&token))
    .bind(user_id)
    .bind(now)
    .bind(expires)
    .execute(w.conn())
    .await?;
    Ok((token, expires))
}

/// The roles `user_id` holds in `org` (empty: not a member).
pub async fn roles_in(
    db: impl sqlx::Executor<'_, Database = sqlx::Any>,
    user_id: &str,
    org: &str,
) -> ApiResult<Vec<OrgRole>> {
    let rows = sqlx::query("SELECT role FROM memberships WHERE org_id = $1 AND user_id = $2")
        .bind(org)
        .bind(user_id)
        .fetch_all(db)
        .await?;
    let mut roles = Vec::new();
    for row in rows {
        let role: String = row.try_get("role")?;
        roles.push(parse_role(&role)?);
    }
    roles.sort();
    Ok(roles)
}

/// A role by name (`owner`, `admin`, `analyst`, `approver`, `auditor`).
pub fn parse_role(name: &str) -> ApiResult<OrgRole> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).map_err(|_| {
        ApiError::bad_request(
            "invalid_role",
            format!("unknown role {name:?}: expected owner, admin, analyst, approver or auditor"),
        )
    })
}

/// A role's name.
pub fn role_name(role: OrgRole) -> &'static str {
    match role {
        OrgRole::Owner => "owner",
        OrgRole::Admin => "admin",
        OrgRole::Analyst => "analyst",
        OrgRole::Approver => "approver",
        OrgRole::Auditor => "auditor",
    }
}

/// Requires the user to hold one of `any_of` in `org` (deployment administrators pass);
/// returns the roles held.
pub async fn require_role(
    hub: &Hub,
    user: &User,
    org: &str,
    any_of: &[OrgRole],
) -> ApiResult<Vec<OrgRole>> {
    let roles = roles_in(&hub.db, &user.id, org).await?;
    if user.is_admin || roles.iter().any(|r| any_of.contains(r)) {
        return Ok(roles);
    }
    let wanted: Vec<&str> = any_of.iter().map(|r| role_name(*r)).collect();
    Err(ApiError::forbidden(format!(
        "user {:?} needs one of the roles {wanted:?} in org {org:?}",
        user.username
    )))
}
