//! Autoscaling signals: how many workers an endpoint needs so that no job
//! waits longer than `--target-wait`, from figures the queue keeps, for an
//! autoscaler to read (`GET /v2/{endpoint}/scale`, KEDA's metrics-api
//! scaler) and for people (`/health`'s `scaling`).
//!
//! The formula (docs/autoscaling.md): over the last five minutes jobs
//! arrived at λ per second and ran S seconds on average. By Little's law
//! λ·S slots are busy in the steady state; the jobs waiting now, W of
//! them, start within the target T if W·S/T more slots work on them. So
//! the endpoint needs ⌈(λ·S + W·S/T) / c⌉ workers of c slots each (c is
//! the mean of the live workers, 1 when there are none), and at least one
//! while any job waits or runs; none when nothing does. S is taken as T
//! until some job of the window has run.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::endpoint_name::EndpointName;
use super::error::ApiError;
use super::ApiState;
use crate::endpoint::queue::{Health, JobStatus, RATE_WINDOW_MS};

/// The signals of one endpoint, as JSON.
pub(crate) fn signals(health: &Health, target: Duration) -> Value {
    let waiting = health.count(JobStatus::InQueue);
    let running = health.count(JobStatus::InProgress);
    let rate = health.arrived as f64 / (RATE_WINDOW_MS as f64 / 1000.0);
    json!({
        "waiting": waiting,
        "oldestWaitMs": health.oldest_wait_ms,
        "running": running,
        "workers": health.workers,
        "slotsIdle": health.idle,
        "slotsBusy": health.running,
        "arrivalsPerSecond": rate,
        "meanRunMs": health.mean_run_ms,
        "targetWaitMs": target.as_millis() as u64,
        "desiredWorkers": desired_workers(health, target),
    })
}

/// The worker count the module docs derive.
pub(crate) fn desired_workers(health: &Health, target: Duration) -> u64 {
    let waiting = health.count(JobStatus::InQueue) as f64;
    let running = health.count(JobStatus::InProgress);
    if waiting == 0.0 && running == 0 && health.arrived == 0 {
        return 0;
    }
    let target_s = target.as_secs_f64().max(0.001);
    let run_s = health.mean_run_ms.map_or(target_s, |ms| ms / 1000.0);
    let rate = health.arrived as f64 / (RATE_WINDOW_MS as f64 / 1000.0);
    let slots = rate * run_s + waiting * run_s / target_s;
    let per_worker = if health.workers > 0 {
        ((health.idle + health.running) as f64 / health.workers as f64).max(1.0)
    } else {
        1.0
    };
    let workers = (slots / per_worker).ceil() as u64;
    if waiting > 0.0 || running > 0 {
        workers.max(1)
    } else {
        workers
    }
}

pub(crate) async fn scale(
    State(state): State<ApiState>,
    EndpointName(endpoint): EndpointName,
) -> Result<Json<Value>, ApiError> {
    let health = state.queue.health(&endpoint).await?;
    let mut body = signals(&health, state.target_wait);
    body["endpoint"] = json!(endpoint);
    Ok(Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(waiting: u64, running: u64, arrived: u64, mean_run_ms: Option<f64>) -> Health {
        Health {
            counts: vec![
                (JobStatus::InQueue, waiting),
                (JobStatus::InProgress, running),
            ],
            arrived,
            mean_run_ms,
            ..Health::default()
        }
    }

    #[test]
    fn the_worker_count_follows_the_formula() {
        let target = Duration::from_secs(10);
        assert_eq!(desired_workers(&health(0, 0, 0, None), target), 0);
        // 1 job/s of 4 s: 4 busy; 30 waiting drain in 10 s with 12 more.
        assert_eq!(
            desired_workers(&health(30, 4, 300, Some(4000.0)), target),
            16
        );
        // Workers of 4 slots each.
        let mut four = health(30, 4, 300, Some(4000.0));
        (four.workers, four.idle, four.running) = (2, 4, 4);
        assert_eq!(desired_workers(&four, target), 4);
        // Nothing has run yet: each job is taken to last the target.
        assert_eq!(desired_workers(&health(3, 0, 3, None), target), 4);
        // A job waits: one worker at least.
        assert_eq!(desired_workers(&health(1, 0, 0, Some(1.0)), target), 1);
    }
}
