//! API errors: an HTTP status, a stable machine-readable `code` and a message that names what
//! was wrong. The body is always `{"error": {"code": "...", "message": "..."}}`.
//! Internal failures (the database) are logged with their cause and answered with a generic
//! message: a caller never sees SQL or server paths.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// An error answered to an API caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable code (`snake_case`) clients can match on.
    pub code: &'static str,
    /// What was wrong, for people.
    pub message: String,
    /// Seconds to wait before retrying (429 only).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: the request is malformed or names something invalid.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401: no valid credential.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    /// 403: the caller is known but may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404: `what` does not exist (or the caller may not know it does).
    pub fn not_found(what: impl Into<String>) -> Self {
        let what = what.into();
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 500: something on the hub's side failed; `cause` is logged, not answered.
    pub fn internal(context: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(context, %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error ({context}); see the hub's log"),
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// The body of every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong.
    pub error: ErrorDetail,
}

/// An error's code and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code (`snake_case`) clients can match on.
    #[schema(example = "not_found")]
    pub code: String,
    /// What was wrong, for people.
    #[schema(example = "org \"acme\" not found")]
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal("database", e)
    }
}

impl From<JsonRejection> for ApiError {
    /// 400 for a body that is not the expected JSON (axum answers 422 for well-formed JSON of
    /// the wrong shape; one status for both keeps clients simple), 413 and 415 kept.
    fn from(e: JsonRejection) -> Self {
        let status = match e.status() {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            other => other,
        };
        Self::new(status, "invalid_body", e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::bad_request("invalid_query", e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        Self::new(e.status(), "invalid_path", e.body_text())
    }
}

/// A JSON body whose rejection is an [`ApiError`] (`invalid_body`, naming the field). Text
/// with a NUL character is refused too (PostgreSQL cannot store it, and no name, URL or
/// message of the hub's needs one).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let bytes =
            axum::body::Bytes::from_request(Request::from_parts(parts.clone(), body), state)
                .await
                .map_err(|e| ApiError::new(e.status(), "invalid_body", e.body_text()))?;
        let again = Request::from_parts(parts, axum::body::Body::from(bytes.clone()));
        let axum::Json(value) = axum::Json::<T>::from_request(again, state).await?;
        reject_nul_in_body(&bytes)?;
        Ok(Self(value))
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A query string whose rejection is an [`ApiError`] (`invalid_query`); a parameter with a
/// NUL character (`%00`) is refused by name.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        if let Some(pair) = query.split('&').find(|pair| pair.contains("%00")) {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("query parameter {name:?} contains a NUL character (%00)"),
            ));
        }
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// Path parameters whose rejection is an [`ApiError`] (`invalid_path`: not UTF-8 once
/// percent-decoded, or with a NUL character).
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Some(segment) = parts.uri.path().split('/').find(|s| s.contains("%00")) {
            return Err(ApiError::bad_request(
                "invalid_path",
                format!("path segment {segment:?} contains a NUL character (%00)"),
            ));
        }
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// 400 if a JSON body (known to parse) has a NUL character in a string or a key, naming where.
fn reject_nul_in_body(bytes: &[u8]) -> ApiResult<()> {
    // A NUL can only be written `\u0000` in JSON: most bodies are passed over without parsing.
    if !bytes.windows(6).any(|w| w == b"\\u0000") {
        return Ok(());
    }
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(());
    };
    match nul_at(&value, String::new()) {
        Some(at) => Err(ApiError::bad_request(
            "invalid_body",
            format!("request body: {at} contains a NUL character (\\u0000)"),
        )),
        None => Ok(()),
    }
}

/// Where in `value` (below `at`) a string or key has a NUL character, if anywhere.
fn nul_at(value: &Value, at: String) -> Option<String> {
    let here = |at: String| {
        if at.is_empty() {
            "the body".to_owned()
        } else {
            at
        }
    };
    match value {
        Value::String(s) if s.contains('\0') => Some(here(at)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_at(v, format!("{at}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let field = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if k.contains('\0') {
                Some(format!("a key of {}", here(at.clone())))
            } else {
                nul_at(v, field)
            }
        }),
        _ => None,
    }
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// An optional JSON body: an empty body (or `null`) is `T::default()`; anything else must parse
/// as `T` (a malformed body is refused with `invalid_body`, never taken as empty).
#[derive(Debug, Clone, Copy, Default)]
pub struct OptionalJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for OptionalJson<T>
where
    T: serde::de::DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), "invalid_body", e.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        let value: Option<T> = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request("invalid_body", format!("request body: {e}")))?;
        reject_nul_in_body(&bytes)?;
        Ok(Self(value.unwrap_or_default()))
    }
}
