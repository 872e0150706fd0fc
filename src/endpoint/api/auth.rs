//! Who may do what: the API key of each request (`Authorization: Bearer
//! <key>`), looked up among the keys in use ([`KeyRing`], compared in
//! constant time), and whether its tenant may use this endpoint, this
//! route (a read key cannot submit, cancel, retry or purge) and, for a
//! submission, this much of its rate. The tenant goes on to the route as a
//! request extension, which records it on the job.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::ApiState;
use crate::endpoint::keys::{Role, Tenant};
use crate::endpoint::queue::DEFAULT_ENDPOINT;

pub(crate) async fn require_key(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(ring) = &state.keys else {
        return next.run(request).await;
    };
    // The dashboard's pages hold no data: they read through the routes
    // below with the key the person types in.
    if crate::endpoint::dashboard::is_dashboard_path(request.uri().path()) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let Some(tenant) = ring.find(given) else {
        return ApiError::Unauthorized.into_response();
    };
    let (endpoint, route) = endpoint_and_route(request.uri().path());
    // The list of endpoints is every key's, filtered to the key's own.
    let listing = request.uri().path() == "/endpoints";
    if !listing && !tenant.serves(endpoint) {
        return ApiError::Forbidden(format!(
            "the key {:?} may not use endpoint {endpoint:?}",
            tenant.name
        ))
        .into_response();
    }
    let writes = [
        "run",
        "runsync",
        "cancel",
        "retry",
        "purge-queue",
        "uploads",
    ]
    .contains(&route);
    if writes && tenant.role == Role::Read {
        return ApiError::Forbidden(format!(
            "the key {:?} may only read; /{route} needs a key with role \"submit\"",
            tenant.name
        ))
        .into_response();
    }
    if matches!(route, "run" | "runsync") {
        if let Err(wait) = ring.admit(&tenant) {
            return ApiError::RateLimited(wait.as_secs_f64().ceil().max(1.0) as u64)
                .into_response();
        }
    }
    request.extensions_mut().insert::<Tenant>(tenant);
    next.run(request).await
}

/// The endpoint a path is for and the first segment of its route:
/// `/v2/sdxl/cancel/ID` is `("sdxl", "cancel")`, `/run` is
/// `("default", "run")`.
fn endpoint_and_route(path: &str) -> (&str, &str) {
    let mut segments = path.trim_start_matches('/').split('/');
    match segments.next() {
        Some("v2") => {
            let endpoint = segments.next().unwrap_or(DEFAULT_ENDPOINT);
            (endpoint, segments.next().unwrap_or(""))
        }
        Some(route) => (DEFAULT_ENDPOINT, route),
        None => (DEFAULT_ENDPOINT, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_endpoint_and_route() {
        assert_eq!(endpoint_and_route("/v2/sdxl/cancel/x"), ("sdxl", "cancel"));
        assert_eq!(endpoint_and_route("/v2/sdxl/run"), ("sdxl", "run"));
        assert_eq!(endpoint_and_route("/run"), ("default", "run"));
        assert_eq!(endpoint_and_route("/health"), ("default", "health"));
        assert_eq!(endpoint_and_route("/"), ("default", ""));
    }
}
