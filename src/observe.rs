//! The operator's window: `GET /health`, `GET /ready` and `GET /metrics`
//! over HTTP.
//!
//! [`router`] is a plain axum router over the worker's [`Metrics`], so any
//! HTTP server of the worker can merge it; [`serve`] runs it on its own
//! listener for `--metrics-addr`. Readiness is what a load balancer or an
//! orchestrator asks: 200 only while a handler is ready and has room for a
//! job, 503 while checking, starting, busy, draining or failing, so that
//! nobody sends work to a worker that cannot start it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The content type of the Prometheus text format.
pub(crate) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `/health`, `/ready` and `/metrics` over the worker's metrics.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(metrics)
}

async fn health(State(metrics): State<Arc<Metrics>>) -> Json<crate::metrics::Snapshot> {
    Json(metrics.snapshot())
}

pub(crate) async fn ready(State(metrics): State<Arc<Metrics>>) -> Response {
    let snapshot = metrics.snapshot();
    let status = if snapshot.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::json!({"ready": snapshot.ready, "state": snapshot.state});
    if let Some(why) = snapshot.failing {
        body["failing"] = why.into();
    }
    (status, Json(body)).into_response()
}

pub(crate) async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> Response {
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], metrics.render()).into_response()
}

/// Listens on `addr`; fails at once (before anything else starts) when the
/// address cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves [`router`] on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let addr = listener.local_addr().ok();
    if let Some(addr) = addr {
        tracing::info!(
            "health, readiness and metrics on http://{addr} (/health, /ready, /metrics)"
        );
    }
    let served = axum::serve(listener, router(metrics))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!("the metrics server stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Phase;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(metrics: &Arc<Metrics>, path: &str) -> (StatusCode, String) {
        let response = router(metrics.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn ready_answers_503_until_a_handler_is_ready() {
        let metrics = Arc::new(Metrics::new());
        assert_eq!(
            get(&metrics, "/ready").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        metrics.set_phase(Phase::Running);
        metrics.pool_started(1, || crate::metrics::PoolView {
            queued: 0,
            room: 1,
            free_slots: 1,
        });
        let (status, body) = get(&metrics, "/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"starting\""), "{body}");
        metrics.handler_up();
        assert_eq!(get(&metrics, "/ready").await.0, StatusCode::OK);
        metrics.set_phase(Phase::Failing("disk full".into()));
        let (status, body) = get(&metrics, "/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("disk full"), "{body}");
    }

    #[tokio::test]
    async fn health_and_metrics_carry_the_figures() {
        let metrics = Arc::new(Metrics::new());
        metrics.job_done(false, std::time::Duration::from_millis(3));
        let (status, body) = get(&metrics, "/health").await;
        assert_eq!(status, StatusCode::OK);
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        for key in [
            "state",
            "jobs_processed",
            "jobs_failed",
            "in_flight",
            "handler_restarts",
            "undelivered_results",
            "uptime_s",
            "last_job_at",
        ] {
            assert!(health.get(key).is_some(), "no {key} in {health}");
        }
        assert_eq!(health["jobs_failed"], 1);
        let (status, text) = get(&metrics, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains("jobpipe_jobs_total{outcome=\"failed\"} 1"),
            "{text}"
        );
    }
}
