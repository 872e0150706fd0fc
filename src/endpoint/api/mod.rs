//! RunPod's endpoint API (`/run`, `/runsync`, `/status`, `/stream`,
//! `/cancel`, `/retry`, `/purge-queue`, `/health`) over a [`Queue`], so the
//! official clients work against jobpipe unchanged, and jobpipe's own
//! reads for operators (`/jobs`, `/jobs/{id}`), `POST /uploads` (a
//! presigned URL to put a large input into the object store), and the
//! web dashboard ([`crate::endpoint::dashboard`], which needs no key: its
//! pages read through these routes with the key typed into them).
//!
//! Routes are mounted under `/v2/{endpoint}/` and at the root, which is
//! the endpoint `default`. Each endpoint is its own queue: its jobs are
//! taken only by workers that serve it, and a job is found only under its
//! own endpoint. [`router`] builds them from an
//! [`ApiState`], so tests call it in-process and [`serve`] runs it on a
//! listener with graceful shutdown. When the worker's metrics are given,
//! `/health` also carries the worker's own figures (those of
//! [`crate::observe`]) and `/ready` and `/metrics` are served at the root.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

pub use self::ends::Ends;
use crate::endpoint::keys::KeyRing;
use crate::endpoint::queue::Queue;
use crate::endpoint::rollup::Rollup;
use crate::endpoint::settings::EndpointSettings;
use crate::metrics::Metrics;
use crate::objects::store::Store;

pub use crate::endpoint::settings::JobDefaults;
pub use conn::{serve, Limits, SlowBody};

mod auth;
mod conn;
mod endpoint_name;
mod ends;
mod error;
mod inline;
mod jobs;
mod queue_metrics;
mod request;
mod retry_policy;
mod routes;
mod scale;
mod stats;
mod uploads;

/// Largest `/run` body, as on RunPod.
pub const RUN_BODY_LIMIT: usize = 10 * 1024 * 1024;
/// Largest `/runsync` body, as on RunPod.
pub const RUNSYNC_BODY_LIMIT: usize = 20 * 1024 * 1024;

/// Everything the routes share.
#[derive(Clone)]
pub struct ApiState {
    pub queue: Arc<dyn Queue>,
    /// The keys asked for as `Authorization: Bearer <key>`, when set;
    /// never logged.
    pub keys: Option<Arc<KeyRing>>,
    /// Each endpoint's job defaults and input schema (`--endpoints`, or
    /// the flags).
    pub settings: Arc<EndpointSettings>,
    /// Cancelled when jobpipe starts shutting down: submissions are then
    /// refused with 503 and `/runsync` callers get their answer at once.
    pub closing: CancellationToken,
    /// The longest a job should wait, for the autoscaling signals.
    pub target_wait: Duration,
    /// The worker's own figures: `/health` adds them to RunPod's fields,
    /// and `/ready` and `/metrics` are served at the root.
    pub metrics: Option<Arc<Metrics>>,
    /// The dashboard's figures, fed by [`crate::endpoint::rollup::sample`].
    pub rollup: Arc<Rollup>,
    /// The object store (`--object-store`) that `POST /uploads` signs
    /// upload URLs for.
    pub objects: Option<Arc<Store>>,
    /// `/runsync` callers waiting for their job's end.
    pub ends: Arc<Ends>,
}

/// The endpoint API's routes, under `/v2/{endpoint_id}/` and at the root.
pub fn router(state: ApiState) -> Router {
    let routes = || {
        Router::new()
            .route("/run", post(routes::run))
            .route("/runsync", post(routes::runsync))
            .route("/status/:job_id", get(routes::status).post(routes::status))
            .route("/stream/:job_id", get(routes::stream).post(routes::stream))
            .route("/cancel/:job_id", post(routes::cancel))
            .route("/retry/:job_id", post(routes::retry))
            .route("/purge-queue", post(routes::purge))
            .route("/uploads", post(uploads::create))
            .route("/health", get(routes::health))
            .route("/jobs", get(jobs::list))
            .route("/scale", get(scale::scale))
            .route("/workers", get(jobs::workers))
            .route("/stats", get(stats::stats))
            .route("/jobs/:job_id", get(jobs::detail))
    };
    let mut router = Router::new()
        .nest(&format!("/v2/:{}", endpoint_name::PARAM), routes())
        .merge(routes())
        .route("/endpoints", get(stats::endpoints));
    if let Some(metrics) = &state.metrics {
        router = router.merge(
            Router::new()
                .route("/ready", get(crate::observe::ready))
                .with_state(metrics.clone()),
        );
        router = router.route("/metrics", get(queue_metrics::metrics));
    }
    router
        .merge(crate::endpoint::dashboard::router(state.keys.clone()))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .layer(axum::middleware::map_response(error::json_errors))
        .with_state(state)
}
