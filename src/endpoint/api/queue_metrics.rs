//! The API's `/metrics`: the process's own figures, then the queue of each
//! endpoint with jobs waiting or live workers, labelled by endpoint, so
//! Prometheus (and an autoscaler reading it) sees every endpoint's
//! backlog from any API process, including an endpoint no worker serves.
//! The gauges are read from the queue at each scrape.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus::{GaugeVec, Opts, Registry, TextEncoder};

use super::scale::desired_workers;
use super::ApiState;
use crate::endpoint::queue::{JobStatus, QueueError};

/// Most endpoints one scrape reports.
const ENDPOINTS_MAX: usize = 200;

pub(crate) async fn metrics(State(state): State<ApiState>) -> Response {
    let mut text = state
        .metrics
        .as_ref()
        .map(|metrics| metrics.render())
        .unwrap_or_default();
    match endpoint_gauges(&state).await {
        Ok(gauges) => text.push_str(&gauges),
        Err(e) => tracing::debug!("/metrics without the endpoints' queues: {e}"),
    }
    (
        [(header::CONTENT_TYPE, crate::observe::PROMETHEUS_TEXT)],
        text,
    )
        .into_response()
}

/// Each gauge: its name, its help, and its value from an endpoint's
/// health.
type Gauge = (&'static str, &'static str, fn(&Figures) -> f64);

/// What the gauges are read from.
struct Figures {
    health: crate::endpoint::queue::Health,
    desired: u64,
}

const GAUGES: [Gauge; 6] = [
    (
        "jobpipe_endpoint_jobs_waiting",
        "Jobs of the endpoint waiting to start (IN_QUEUE), delayed ones included.",
        |f| f.health.count(JobStatus::InQueue) as f64,
    ),
    (
        "jobpipe_endpoint_jobs_running",
        "Jobs of the endpoint running (IN_PROGRESS).",
        |f| f.health.count(JobStatus::InProgress) as f64,
    ),
    (
        "jobpipe_endpoint_oldest_wait_seconds",
        "How long the oldest job of the endpoint that may start now has waited (0 when none).",
        |f| f.health.oldest_wait_ms.unwrap_or(0) as f64 / 1000.0,
    ),
    (
        "jobpipe_endpoint_workers",
        "Live worker processes serving the endpoint.",
        |f| f.health.workers as f64,
    ),
    (
        "jobpipe_endpoint_idle_slots",
        "Free handler slots of the live workers serving the endpoint.",
        |f| f.health.idle as f64,
    ),
    (
        "jobpipe_endpoint_desired_workers",
        "Workers that would keep waits under --target-wait (docs/autoscaling.md).",
        |f| f.desired as f64,
    ),
];

async fn endpoint_gauges(state: &ApiState) -> Result<String, QueueError> {
    let registry = Registry::new();
    let mut vecs = Vec::with_capacity(GAUGES.len());
    for (name, help, _) in GAUGES {
        let vec =
            GaugeVec::new(Opts::new(name, help), &["endpoint"]).expect("a valid gauge definition");
        registry
            .register(Box::new(vec.clone()))
            .expect("each gauge registered once");
        vecs.push(vec);
    }
    for endpoint in state.queue.active_endpoints(ENDPOINTS_MAX).await? {
        let health = state.queue.health(&endpoint).await?;
        let desired = desired_workers(&health, state.target_wait);
        let figures = Figures { health, desired };
        for ((_, _, value), vec) in GAUGES.iter().zip(&vecs) {
            vec.with_label_values(&[endpoint.as_str()])
                .set(value(&figures));
        }
    }
    let mut text = String::new();
    if let Err(e) = TextEncoder::new().encode_utf8(&registry.gather(), &mut text) {
        tracing::warn!("cannot encode the endpoints' metrics: {e}");
    }
    Ok(text)
}
