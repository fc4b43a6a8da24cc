//! The hub's HTTP API (JSON). Every route but sign-in, the public keys and `/openapi.json` needs
//! a bearer token (see [`crate::auth`]); every error is `{"error": {"code", "message"}}`.
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
//!
//! `GET /openapi.json` (no token) answers the OpenAPI 3.1 description of all of it
//! ([`crate::openapi`]), made from the same list of handlers as the router.

mod accounts;
pub use accounts::bootstrap_admin;
mod datasets;
pub(crate) use datasets::MAX_POLICY_K;
mod jobs;
mod orgs;

use std::sync::Arc;

use axum::Router;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::Hub;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Every route with its description: the one list the router and the OpenAPI description
/// are both made from.
fn described_routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .merge(accounts::routes())
        .merge(orgs::routes())
        .merge(datasets::routes())
        .merge(jobs::routes())
        .merge(crate::notify::routes())
        .merge(crate::audit::routes())
        .routes(routes!(crate::openapi::serve_document))
}

/// The whole API.
pub fn router(hub: Arc<Hub>) -> Router {
    let (router, _) = described_routes().split_for_parts();
    router
        .fallback(|| async { crate::error::ApiError::not_found("route") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(hub)
}

/// The OpenAPI 3.1 description of the whole API (what `GET /openapi.json` answers).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = described_routes().into_openapi();
    crate::openapi::finish(&mut doc);
    doc
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // With each connection's peer address: the sign-in limit per address needs it.
    axum::serve(
        listener,
        router(hub).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
