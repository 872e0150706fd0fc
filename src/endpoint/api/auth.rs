//! The API key check: `Authorization: Bearer <key>` on every route when a
//! key is configured, compared in constant time so response timing does
//! not reveal how much of a guess was right.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::ApiState;

pub(crate) async fn require_key(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.api_key else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    if key_matches(given, expected) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

fn key_matches(given: &str, expected: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_key_matches() {
        assert!(key_matches("secret", "secret"));
        assert!(!key_matches("secre", "secret"));
        assert!(!key_matches("", "secret"));
        assert!(!key_matches("secret2", "secret"));
    }
}
