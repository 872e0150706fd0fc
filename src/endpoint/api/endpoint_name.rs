//! The endpoint a request is for: the `{endpoint}` of `/v2/{endpoint}/...`,
//! or `default` for the routes at the root. One extractor, so every route
//! reads and checks the name the same way.

use axum::async_trait;
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;

use super::error::ApiError;
use crate::endpoint::queue::{endpoint_name_error, DEFAULT_ENDPOINT};

/// The path parameter that names the endpoint.
pub(crate) const PARAM: &str = "endpoint_id";

/// A checked endpoint name.
pub(crate) struct EndpointName(pub String);

#[async_trait]
impl<S: Send + Sync> FromRequestParts<S> for EndpointName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("cannot read the path: {e}")))?;
        let Some((_, name)) = params.iter().find(|(key, _)| *key == PARAM) else {
            return Ok(EndpointName(DEFAULT_ENDPOINT.to_owned()));
        };
        match endpoint_name_error(name) {
            None => Ok(EndpointName(name.to_owned())),
            Some(why) => Err(ApiError::NotFound(format!("no such endpoint: {why}"))),
        }
    }
}
