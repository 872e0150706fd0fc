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
    NotFound(String),
    MethodNotAllowed(String),
    Conflict(String),
    TooLarge { limit: usize },
    ShuttingDown,
    Database(QueueError),
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
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, json!({"error": message})),
            ApiError::MethodNotAllowed(message) => {
                (StatusCode::METHOD_NOT_ALLOWED, json!({"error": message}))
            }
            ApiError::Conflict(message) => (StatusCode::CONFLICT, json!({"error": message})),
            ApiError::TooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("request body is larger than this route's limit of {} MiB", limit / (1024 * 1024))}),
            ),
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
