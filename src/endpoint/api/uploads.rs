//! `POST /uploads`: a presigned URL to PUT one input into the object
//! store, and the key to name it by in a job's input
//! (`{"object": {"key": KEY}}`), so an input larger than `/run`'s body
//! limit goes straight to the store, never through the API. The upload is
//! deleted once older than `--upload-lifetime`
//! ([`crate::objects::retention`]).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::endpoint_name::EndpointName;
use super::error::ApiError;
use super::ApiState;
use crate::objects::retention::UPLOADS;

pub(crate) async fn create(
    State(state): State<ApiState>,
    EndpointName(endpoint): EndpointName,
) -> Result<Json<Value>, ApiError> {
    let Some(store) = &state.objects else {
        return Err(ApiError::NotFound(
            "this endpoint has no object store (start jobpipe with --object-store to take uploads)"
                .into(),
        ));
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let key = format!("{UPLOADS}/{endpoint}/{id}");
    let url = store.presigned_put(&key).await.map_err(|e| {
        tracing::error!("cannot sign an upload URL: {e}");
        ApiError::Unprocessable(format!(
            "cannot sign an upload URL for the object store: {e}"
        ))
    })?;
    Ok(Json(json!({
        "key": key,
        "url": url,
        "method": "PUT",
        "expiresIn": store.config.presign_expiry.as_secs(),
        "use": {"object": {"key": key}},
    })))
}
