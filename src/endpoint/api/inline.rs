//! `?inline=1` on `/status` and `/runsync`: a JSON output the worker put
//! into the object store (its output is then a reference,
//! `{"object": {"url", "key", "size", "sha256", "contentType"}}`) comes
//! back in the answer itself, read from the store by the API, when it fits
//! `/runsync`'s response limit. A client that cannot follow a URL gets
//! RunPod's shape; one that can leaves the flag off and downloads the
//! object itself. Anything else stays as it is: an output that is not a
//! reference, a file handed over by the handler (not JSON), an object over
//! the limit, or an API started without `--object-store`.

use std::collections::HashMap;

use serde::Deserialize;

use super::error::ApiError;
use super::{ApiState, RUNSYNC_BODY_LIMIT};
use crate::endpoint::queue::JobRecord;
use crate::json::Json;

/// A reference is small; a longer output is never one.
const REFERENCE_MAX: usize = 16 * 1024;

/// Whether the caller asked for `inline`; 400 for a value that is not a
/// yes or a no.
pub(crate) fn wanted(query: &HashMap<String, String>) -> Result<bool, ApiError> {
    match query.get("inline").map(String::as_str) {
        None | Some("0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "inline must be 1 or 0 (true or false); got {other:?}"
        ))),
    }
}

#[derive(Deserialize)]
struct Reference {
    object: Object,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    key: String,
    size: u64,
    content_type: String,
}

/// Replaces `record`'s output by the object it refers to, where it can.
pub(crate) async fn output(state: &ApiState, record: &mut JobRecord<Json>) -> Result<(), ApiError> {
    let (Some(store), Some(output)) = (&state.objects, &record.output) else {
        return Ok(());
    };
    if output.len() > REFERENCE_MAX {
        return Ok(());
    }
    let Ok(reference) = serde_json::from_str::<Reference>(&output.text()) else {
        return Ok(());
    };
    let object = reference.object;
    if object.content_type != "application/json" || object.size > RUNSYNC_BODY_LIMIT as u64 {
        return Ok(());
    }
    let bytes = store
        .get_small(&object.key, RUNSYNC_BODY_LIMIT as u64)
        .await
        .map_err(|why| {
            ApiError::Upstream(format!(
                "job {}'s output is in the object store and could not be read for inline=1: {why}; its reference is in the answer without inline",
                record.id
            ))
        })?;
    let Some(bytes) = bytes else {
        return Ok(());
    };
    let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
        ApiError::Upstream(format!(
            "job {}'s output object {:?} is not UTF-8 text",
            record.id, object.key
        ))
    })?;
    record.output = Some(Json::from_text(text).map_err(|_| {
        ApiError::Upstream(format!(
            "job {}'s output object {:?} is not JSON",
            record.id, object.key
        ))
    })?);
    Ok(())
}
