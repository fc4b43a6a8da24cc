//! The hub's OpenAPI 3.1 description, generated from the handlers' `#[utoipa::path]`
//! annotations and served at `GET /openapi.json` (no token needed).
//!
//! The router and the description are built from one list ([`crate::api::openapi`]: each
//! module registers its handlers with `utoipa_axum::routes!`), so a route cannot exist without
//! being described. Each handler's annotation names its success answers and the errors particular
//! to it; [`finish`] adds the ones every route shares (401 without a valid token on routes that
//! need one, 400 for parameters or a body that do not parse, 413 and 415 for bodies, 500), the
//! bearer security scheme, and the schemas of types from other crates ([`ORG_ROLE`],
//! [`APPROVAL_POLICY`]).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response as DocResponse, ResponseBuilder};
use utoipa::openapi::schema::{AdditionalProperties, ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Components, ContentBuilder, OpenApi, Ref, RefOr, Required};

use crate::error::{ApiError, ApiResult};

/// The name of the bearer-token security scheme (`Authorization: Bearer cs_…` or `csa_…`).
pub const BEARER: &str = "bearer";
/// The component name of an org role's schema (`coffer_kms::authz::OrgRole`).
pub const ORG_ROLE: &str = "OrgRole";
/// The component name of a dataset approval policy's schema (`coffer_kms::authz::ApprovalPolicy`).
pub const APPROVAL_POLICY: &str = "ApprovalPolicy";
/// The component name of the error body's schema ([`crate::error::ErrorBody`]).
pub const ERROR_BODY: &str = "ErrorBody";

/// The description's fixed parts: title, version, tags; paths come from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Coffer hub API",
        version = env!("CARGO_PKG_VERSION"),
        description = "The control plane of Coffer: orgs, users, workspaces and roles; datasets \
                       and job metadata; approval workflows; notifications; the signed audit log. \
                       Every error answer is `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    components(schemas(crate::error::ErrorBody)),
    tags(
        (name = "auth", description = "Signing in and out; who the caller is"),
        (name = "users", description = "Users and service accounts (deployment administrators)"),
        (name = "credentials", description = "Identity tokens for the KMS and the keys that verify them"),
        (name = "orgs", description = "Orgs, workspaces and memberships"),
        (name = "datasets", description = "The dataset registry (metadata only)"),
        (name = "jobs", description = "Jobs, their workflow and approvals"),
        (name = "scheduler", description = "The workload manager's side (scheduler service accounts)"),
        (name = "notifications", description = "A user's inbox and its live stream"),
        (name = "webhooks", description = "An org's signed webhooks"),
        (name = "audit", description = "The tamper-evident audit log: checkpoints, entries, proofs"),
        (name = "meta", description = "This description"),
    )
)]
pub struct ApiDoc;

/// Completes a description whose paths were collected from the handlers (see the module docs).
pub fn finish(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Components::new);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "A session token (`cs_…`, from sign-in) or a service-account token (`csa_…`)",
                ))
                .build(),
        ),
    );
    components
        .schemas
        .insert(ORG_ROLE.to_owned(), org_role_schema().into());
    components
        .schemas
        .insert(APPROVAL_POLICY.to_owned(), approval_policy_schema().into());
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add_shared_errors(operation);
        }
    }
}

/// The errors every operation of its kind can answer, where its annotation did not name them.
fn add_shared_errors(op: &mut Operation) {
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let body = op.request_body.as_ref();
    let body_required = body.is_some_and(|b| matches!(b.required, Some(Required::True)));
    let has_body = body.is_some();
    let mut shared = Vec::new();
    if has_params || has_body {
        shared.push((
            "400",
            "A parameter or the body is malformed (`invalid_path`, `invalid_query`, \
             `invalid_body`, or a code naming the invalid field)",
        ));
    }
    if secured {
        shared.push((
            "401",
            "No valid bearer token (`unauthenticated`): none, unknown, expired or signed out",
        ));
    }
    if has_body {
        shared.push(("413", "The body is larger than 2 MiB (`invalid_body`)"));
    }
    if body_required {
        shared.push((
            "415",
            "The body is not declared `Content-Type: application/json` (`invalid_body`)",
        ));
    }
    shared.push((
        "500",
        "The hub failed (`internal`; the cause is in the hub's log)",
    ));
    for (status, description) in shared {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description).into());
    }
}

/// An error answer described by `description`, with the error body.
fn error_response(description: &str) -> DocResponse {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ERROR_BODY)))
                .build(),
        )
        .build()
}

/// `OrgRole`: a role in an org, serialised in lowercase.
fn org_role_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["owner", "admin", "analyst", "approver", "auditor"]))
        .description(Some("A role in an org"))
        .build()
        .into()
}

/// `ApprovalPolicy`: `k` distinct users of the dataset's org, each holding one of `roles`.
fn approval_policy_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "A dataset's approval policy: k distinct users of the owning org, each holding one \
             of roles, must approve a job that reads it",
        ))
        .property("roles", org_roles())
        .required("roles")
        .property(
            "k",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(crate::api::MAX_POLICY_K))
                .description(Some("How many distinct approvers are needed")),
        )
        .required("k")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .build()
        .into()
}

/// A reference to the `OrgRole` schema (for `#[schema(schema_with = ...)]`).
pub(crate) fn org_role() -> Ref {
    Ref::from_schema_name(ORG_ROLE)
}

/// A list of org roles (for `#[schema(schema_with = ...)]`).
pub(crate) fn org_roles() -> ArrayBuilder {
    ArrayBuilder::new().items(RefOr::Ref(org_role()))
}

/// A reference to the `ApprovalPolicy` schema (for `#[schema(schema_with = ...)]`).
pub(crate) fn approval_policy() -> Ref {
    Ref::from_schema_name(APPROVAL_POLICY)
}

/// The description as JSON, made once.
fn document_json() -> ApiResult<&'static str> {
    static JSON: OnceLock<Result<String, String>> = OnceLock::new();
    JSON.get_or_init(|| {
        crate::api::openapi()
            .to_pretty_json()
            .map_err(|e| e.to_string())
    })
    .as_deref()
    .map_err(|e| ApiError::internal("OpenAPI description", e))
}

/// This description of the API (OpenAPI 3.1).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    responses(
        (status = 200, description = "The OpenAPI 3.1 description of the hub's API",
         content_type = "application/json", body = Object),
    )
)]
pub(crate) async fn serve_document() -> ApiResult<Response> {
    let json = document_json()?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}
