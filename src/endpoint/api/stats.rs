//! `GET /v2/{endpoint}/stats` (what the queue holds now and, per minute
//! or five, the jobs that ended and their wait and run times, for the
//! dashboard's overview) and `GET /endpoints` (the endpoints a key may
//! see). The figures come from [`crate::endpoint::rollup`] and from
//! index-only reads of the queue, so a dashboard polling them stays cheap.

use std::collections::{BTreeSet, HashMap};

use axum::extract::{Query, State};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::endpoint_name::EndpointName;
use super::error::ApiError;
use super::ApiState;
use crate::endpoint::keys::Tenant;
use crate::endpoint::queue::DEFAULT_ENDPOINT;
use crate::endpoint::rollup::{now_ms, Span};

const HOUR_MS: i64 = 60 * 60 * 1000;
/// Endpoints listed, at most.
const ENDPOINTS_MAX: usize = 200;

pub(crate) async fn stats(
    State(state): State<ApiState>,
    EndpointName(endpoint): EndpointName,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (range, range_ms, bucket_ms) = match query.get("range").map(String::as_str) {
        None | Some("1h") => ("1h", HOUR_MS, 60_000),
        Some("1d") => ("1d", 24 * HOUR_MS, 5 * 60_000),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "range must be 1h (minutes) or 1d (five-minute buckets); got {other:?}"
            )))
        }
    };
    if let Some(other) = query.keys().find(|k| *k != "range") {
        return Err(ApiError::BadRequest(format!(
            "unknown parameter {other:?}; stats takes range (1h or 1d)"
        )));
    }
    let depth = state.queue.depth(&endpoint).await?;
    let workers = state.queue.workers(&endpoint).await?;
    let lost = workers.iter().filter(|w| w.lost).count();
    // A worker's busy count is as of its last heartbeat; the jobs it
    // holds are as of now.
    let busy = workers
        .iter()
        .filter(|w| !w.lost && (w.busy > 0 || !w.current_jobs.is_empty()))
        .count();
    let idle = workers.len() - lost - busy;
    let now = now_ms();
    let hour = state.rollup.total(&endpoint, now - HOUR_MS);
    let series: Vec<Value> = state
        .rollup
        .series(&endpoint, now - range_ms + bucket_ms, now, bucket_ms)
        .iter()
        .map(point)
        .collect();
    Ok(Json(json!({
        "endpoint": endpoint,
        "range": range,
        "bucketSeconds": bucket_ms / 1000,
        "since": state.rollup.since(),
        "now": {
            "waiting": depth.waiting,
            "running": depth.running,
            "completedLastHour": hour.completed,
            "failedLastHour": hour.failed,
            "oldestWaitSeconds": depth.oldest_wait_ms.map(|ms| ms as f64 / 1000.0),
            "workers": {"idle": idle, "busy": busy, "lost": lost},
        },
        "series": series,
    })))
}

/// One bucket of the chart; percentiles rounded to 0.1 ms, null when no
/// job ended in it.
fn point(span: &Span) -> Value {
    let ms = |v: Option<f64>| v.map(|v| (v * 10.0).round() / 10.0);
    json!({
        "t": span.t,
        "completed": span.completed,
        "failed": span.failed,
        "cancelled": span.cancelled,
        "waitP50Ms": ms(span.wait.quantile(0.5)),
        "waitP99Ms": ms(span.wait.quantile(0.99)),
        "runP50Ms": ms(span.run.quantile(0.5)),
        "runP99Ms": ms(span.run.quantile(0.99)),
    })
}

/// The endpoints this key may use among those named in `--endpoints`,
/// served by live workers, with jobs waiting or with figures, and
/// `default`.
pub(crate) async fn endpoints(
    State(state): State<ApiState>,
    tenant: Option<Extension<Tenant>>,
) -> Result<Json<Value>, ApiError> {
    let mut names: BTreeSet<String> = state.settings.named().cloned().collect();
    names.extend(state.queue.active_endpoints(ENDPOINTS_MAX).await?);
    names.extend(state.rollup.endpoints());
    names.insert(DEFAULT_ENDPOINT.to_owned());
    let names: Vec<String> = names
        .into_iter()
        .filter(|name| tenant.as_ref().is_none_or(|t| t.serves(name)))
        .take(ENDPOINTS_MAX)
        .collect();
    Ok(Json(json!({"endpoints": names})))
}
