//! The hub's HTTP API (JSON). Every route but sign-in and the public keys needs a bearer
//! token (see [`crate::auth`]); every error is `{"error": {"code", "message"}}`.
//!
//! | area | routes |
//! |---|---|
//! | sign-in | `POST /v1/auth/login`, `POST /v1/auth/oidc`, `POST /v1/auth/logout`, `GET /v1/me` |
//! | people | `POST /v1/users`, `GET /v1/users`, `POST /v1/service-accounts` |
//! | orgs | `POST/GET /v1/orgs`, `POST/GET /v1/orgs/{org}/workspaces`, `PUT/DELETE /v1/orgs/{org}/members/{user}` |
//! | credentials | `POST /v1/tokens/identity`, `GET /.well-known/jwks.json` |
//! | datasets | `POST/GET /v1/orgs/{org}/datasets`, `GET/DELETE /v1/datasets/{id}` |
//! | jobs | `POST/GET /v1/jobs`, `GET /v1/jobs/{id}`, `POST /v1/jobs/{id}/{submit,cancel,approve,reject,withdraw}` |
//! | workload manager | `GET /v1/queue`, `POST /v1/jobs/{id}/{schedule,start,requeue,finish}` |
//! | notifications | `GET /v1/notifications`, `GET /v1/notifications/stream`, webhooks under `/v1/orgs/{org}/webhooks` |
//! | audit | `/v1/audit/...` (checkpoints, entries, proofs, exports) |

mod accounts;
pub use accounts::bootstrap_admin;
mod datasets;
mod jobs;
mod orgs;

use std::sync::Arc;

use axum::Router;

use crate::state::Hub;

/// The whole API.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .merge(accounts::routes())
        .merge(orgs::routes())
        .merge(datasets::routes())
        .merge(jobs::routes())
        .merge(crate::notify::routes())
        .merge(crate::audit::routes())
        .fallback(|| async { crate::error::ApiError::not_found("route") })
        .layer(axum::extract::DefaultBodyLimit::max(2 * 1024 * 1024))
        .with_state(hub)
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(hub))
        .with_graceful_shutdown(shutdown)
        .await
}
