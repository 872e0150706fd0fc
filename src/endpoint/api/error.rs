//! Every error the endpoint API answers with is a JSON object with an
//! `error` sentence (and, for schema violations, the list of them), so that
//! clients never have to parse plain text.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::endpoint::queue::QueueError;
use crate::input_schema::Violation;

/// Seconds a client is told to wait when jobpipe is shutting down.
const RETRY_AFTER_SECS: &str = "5";

/// An error answer of the API.
#[derive(Debug)]
pub(crate) enum ApiError {
    BadRequest(String),
    Invalid(Vec<Violation>),
    Unauthorized,
    /// The key is good, but not for this.
    Forbidden(String),
    /// The key's rate is used up; another submission is allowed after
    /// this many seconds.
    RateLimited(u64),
    NotFound(String),
    MethodNotAllowed(String),
    Conflict(String),
    /// Well-formed, but not what this resource can take (422).
    Unprocessable(String),
    TooLarge {
        limit: usize,
    },
    /// The request body came in too slowly.
    TooSlow(String),
    ShuttingDown,
    Database(QueueError),
    /// A server this API relies on (the object store) failed (502).
    Upstream(String),
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        ApiError::Database(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, json!({"error": message})),
            ApiError::Invalid(violations) => (
                StatusCode::BAD_REQUEST,
                json!({
                    "error": crate::input_schema::describe(&violations),
                    "violations": violations,
                }),
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "missing or wrong API key: send Authorization: Bearer <key>"}),
            ),
            ApiError::Forbidden(message) => (StatusCode::FORBIDDEN, json!({"error": message})),
            ApiError::RateLimited(seconds) => {
                let body = json!({"error": format!("this key's submission rate is used up; retry after {seconds} s")});
                let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
                if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                return response;
            }
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, json!({"error": message})),
            ApiError::MethodNotAllowed(message) => {
                (StatusCode::METHOD_NOT_ALLOWED, json!({"error": message}))
            }
            ApiError::Conflict(message) => (StatusCode::CONFLICT, json!({"error": message})),
            ApiError::Upstream(message) => (StatusCode::BAD_GATEWAY, json!({"error": message})),
            ApiError::Unprocessable(message) => {
                (StatusCode::UNPROCESSABLE_ENTITY, json!({"error": message}))
            }
            ApiError::TooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("request body is larger than this route's limit of {} MiB", limit / (1024 * 1024))}),
            ),
            ApiError::TooSlow(message) => (StatusCode::REQUEST_TIMEOUT, json!({"error": message})),
            ApiError::ShuttingDown => {
                let body = json!({"error": "jobpipe is shutting down and accepts no new jobs; retry against another worker or after the restart"});
                let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
                return response;
            }
            ApiError::Database(error @ QueueError::Unavailable(_)) => {
                tracing::debug!("endpoint API: {error}");
                let body = json!({"error": format!("{error}; retry shortly")});
                let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
                return response;
            }
            ApiError::Database(error) => {
                tracing::error!("endpoint API: {error}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": error.to_string()}),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

/// Every error answer is JSON: one that is not (an extractor's rejection,
/// such as a path that does not decode as UTF-8) becomes `{"error": its
/// text}` with the same status.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // A rejection's text is a sentence; more is not read.
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(
        parts,
        axum::body::Body::from(json!({ "error": message }).to_string()),
    )
}
