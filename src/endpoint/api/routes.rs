//! One function per route. Each answers RunPod's JSON shape, or an
//! [`ApiError`]. A job's output goes out as the text its handler wrote.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::endpoint_name::EndpointName;
use super::ends::{Heard, Watch};
use super::error::ApiError;
use super::inline;
use super::request::parse_job;
use super::{ApiState, RUNSYNC_BODY_LIMIT, RUN_BODY_LIMIT};
use crate::endpoint::keys::Tenant;
use crate::endpoint::queue::{JobRecord, JobStatus, NewJob, QueueError, RetryOutcome};
use crate::json::{self, Json as JsonText};

type Answer = Result<Json<Value>, ApiError>;
/// An answer that carries a job's output as its text.
type TextAnswer = Result<TextBody, ApiError>;

/// A JSON body written as the text it is.
pub(crate) struct TextBody(pub(crate) JsonText);

impl IntoResponse for TextBody {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::new(self.0.into_http_body()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// How often a waiting `/runsync` looks at its job without being told.
const RECHECK: Duration = Duration::from_secs(1);
type Params = Path<HashMap<String, String>>;

pub(crate) async fn run(
    State(state): State<ApiState>,
    EndpointName(endpoint): EndpointName,
    tenant: Option<Extension<Tenant>>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    if state.closing.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let body = read_body(&headers, body, RUN_BODY_LIMIT).await?;
    let (defaults, schema) = state.settings.for_endpoint(&endpoint);
    let job = parse_job(
        endpoint,
        tenant.as_ref().map(|t| &t.0),
        &body,
        &headers,
        defaults,
        defaults.run_retention,
        schema,
    )?;
    let (id, new) = submit(&state, job).await?;
    if new {
        return Ok(Json(json!({"id": id, "status": "IN_QUEUE"})));
    }
    // A repeated Idempotency-Key: the first submission's job as it is now.
    match state.queue.status_raw(&id).await? {
        Some(record) => Ok(Json(json!({"id": id, "status": record.status.as_str()}))),
        None => Err(ApiError::Conflict(format!(
            "job {id}, submitted with this Idempotency-Key, was deleted after its retention; use a new key"
        ))),
    }
}

/// Queues `job`; its id, and whether it is new: a submission with an
/// `Idempotency-Key` used before with the same body gets the first job's
/// id (false); with another body, 422.
async fn submit(state: &ApiState, job: NewJob<JsonText>) -> Result<(String, bool), ApiError> {
    let id = job.id.clone();
    match state.queue.enqueue_raw(job).await {
        Ok(()) => Ok((id, true)),
        Err(QueueError::KeyUsed {
            existing,
            same_body: true,
        }) => Ok((existing, false)),
        Err(QueueError::KeyUsed {
            existing,
            same_body: false,
        }) => Err(ApiError::Unprocessable(format!(
            "this Idempotency-Key was used for job {existing} with a different body; send the same body to get that job, or use a new key for a new job"
        ))),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn runsync(
    State(state): State<ApiState>,
    EndpointName(endpoint): EndpointName,
    tenant: Option<Extension<Tenant>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> TextAnswer {
    if state.closing.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let (defaults, schema) = state.settings.for_endpoint(&endpoint);
    let inline = inline::wanted(&query)?;
    let wait = match query.get("wait") {
        None => defaults.sync_wait,
        Some(text) => match text.parse::<u64>() {
            Ok(ms) => Duration::from_millis(ms).min(defaults.sync_wait_max),
            Err(_) => {
                return Err(ApiError::BadRequest(format!(
                    "wait must be a whole number of milliseconds (at most {}), got {text:?}",
                    defaults.sync_wait_max.as_millis()
                )))
            }
        },
    };
    let body = read_body(&headers, body, RUNSYNC_BODY_LIMIT).await?;
    let job = parse_job(
        endpoint,
        tenant.as_ref().map(|t| &t.0),
        &body,
        &headers,
        defaults,
        defaults.sync_retention,
        schema,
    )?;
    let job = NewJob {
        awaited: true,
        ..job
    };
    // Watched before the job exists, so its end cannot be missed.
    let watch = state.ends.watch(&job.id);
    let (id, new) = submit(&state, job).await?;
    let mut watch = if new { watch } else { state.ends.watch(&id) };
    // A job submitted before under the same Idempotency-Key may have
    // ended already, or (sent to /run) may not announce its end: look at
    // it now, and then now and then.
    let ended = !new
        && state
            .queue
            .status_raw(&id)
            .await?
            .is_none_or(|r| r.status.is_final());
    if !ended {
        wait_for_end(&state, &mut watch, &id, wait).await?;
    }
    match state.queue.status_raw(&id).await? {
        Some(mut record) => {
            if inline {
                inline::output(&state, &mut record).await?;
            }
            Ok(TextBody(record.to_json()))
        }
        None => Err(ApiError::NotFound(format!(
            "job {id} was removed (purged) before it ended"
        ))),
    }
}

/// Waits until job `id` ends, `wait` passes or the API closes: on the
/// job's end event, or on a look at the job itself when events may have
/// been missed, and now and then in any case.
async fn wait_for_end(
    state: &ApiState,
    watch: &mut Watch,
    id: &str,
    wait: Duration,
) -> Result<(), ApiError> {
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
    loop {
        tokio::select! {
            heard = watch.heard() => match heard {
                Heard::Ended => break,
                // Missed or unheard events: look at the job itself.
                Heard::LookAgain => {
                    if state.queue.status_raw(id).await?.is_none_or(|r| r.status.is_final()) {
                        break;
                    }
                }
            },
            _ = &mut deadline => break,
            _ = state.closing.cancelled() => break,
            // A notification lost with a database connection must not
            // leave the caller waiting: look now and then.
            _ = recheck.tick() => {
                if state.queue.status_raw(id).await?.is_none_or(|r| r.status.is_final()) {
                    break;
                }
            }
        }
    }
    Ok(())
}

pub(crate) async fn status(
    State(state): State<ApiState>,
    EndpointName(endpoint): EndpointName,
    Path(params): Params,
    Query(query): Query<HashMap<String, String>>,
) -> TextAnswer {
    let id = job_id(&params);
    let inline = inline::wanted(&query)?;
    let mut record = job_of(&state, &endpoint, id).await?;
    if inline {
        inline::output(&state, &mut record).await?;
    }
    Ok(TextBody(record.to_json()))
}

pub(crate) async fn stream(
    State(state): State<ApiState>,
    EndpointName(endpoint): EndpointName,
    Path(params): Params,
) -> TextAnswer {
    let id = job_id(&params);
    job_of(&state, &endpoint, id).await?;
    let Some((status, partials)) = state.queue.read_stream_raw(id).await? else {
        return Err(unknown_job(id));
    };
    let chunks: Vec<JsonText> = partials
        .iter()
        .map(|p| json::object([("output", p)]))
        .collect();
    let stream = json::array(&chunks);
    let id = JsonText::from_value(&json!(id));
    let status = JsonText::from_value(&json!(status.as_str()));
    Ok(TextBody(json::object([
        ("id", &id),
        ("status", &status),
        ("stream", &stream),
    ])))
}

pub(crate) async fn cancel(
    State(state): State<ApiState>,
    EndpointName(endpoint): EndpointName,
    Path(params): Params,
) -> Answer {
    let id = job_id(&params);
    job_of(&state, &endpoint, id).await?;
    match state.queue.cancel(id).await? {
        Some(status) => Ok(Json(json!({"id": id, "status": status.as_str()}))),
        None => Err(unknown_job(id)),
    }
}

pub(crate) async fn retry(
    State(state): State<ApiState>,
    EndpointName(endpoint): EndpointName,
    Path(params): Params,
) -> Answer {
    if state.closing.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let id = job_id(&params);
    job_of(&state, &endpoint, id).await?;
    match state.queue.retry(id).await? {
        RetryOutcome::Requeued => Ok(Json(json!({"id": id, "status": "IN_QUEUE"}))),
        RetryOutcome::NotFound => Err(unknown_job(id)),
        RetryOutcome::NotRetryable(status) => Err(ApiError::Conflict(format!(
            "job {id} is {}; only FAILED or TIMED_OUT jobs can be retried",
            status.as_str()
        ))),
    }
}

pub(crate) async fn purge(
    State(state): State<ApiState>,
    EndpointName(endpoint): EndpointName,
) -> Answer {
    let removed = state.queue.purge(&endpoint).await?;
    Ok(Json(json!({"removed": removed, "status": "completed"})))
}

pub(crate) async fn health(
    State(state): State<ApiState>,
    EndpointName(endpoint): EndpointName,
) -> Answer {
    let health = state.queue.health(&endpoint).await?;
    let mut body = match &state.metrics {
        Some(metrics) => serde_json::to_value(metrics.snapshot()).unwrap_or_else(|_| json!({})),
        None => json!({}),
    };
    let runpod = json!({
        "jobs": {
            "completed": health.count(JobStatus::Completed),
            "failed": health.count(JobStatus::Failed),
            "inProgress": health.count(JobStatus::InProgress),
            "inQueue": health.count(JobStatus::InQueue),
            "cancelled": health.count(JobStatus::Cancelled),
            "timedOut": health.count(JobStatus::TimedOut),
            "retried": health.retried,
        },
        "workers": {
            "idle": health.idle,
            "running": health.running,
            "processes": health.workers,
        },
        "endpoint": endpoint,
        "scaling": super::scale::signals(&health, state.target_wait),
    });
    if let (Value::Object(body), Value::Object(runpod)) = (&mut body, runpod) {
        body.extend(runpod);
        if health.workers == 0 {
            body.insert(
                "warning".into(),
                json!(format!(
                    "no worker serves endpoint {endpoint:?}: its jobs wait until a worker started with --endpoint {endpoint} runs"
                )),
            );
        }
    }
    Ok(Json(body))
}

pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no such route: {}; the API has /run, /runsync, /status/ID, /stream/ID, /cancel/ID, /retry/ID, /purge-queue, /health, /jobs, /jobs/ID, /workers and /scale, under /v2/ENDPOINT/ or at the root (the endpoint \"default\")",
        uri.path()
    ))
}

pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}

fn job_id(params: &HashMap<String, String>) -> &str {
    params.get("job_id").map_or("", String::as_str)
}

/// The job `id`, if it belongs to `endpoint`: a job is not found under
/// another endpoint's routes.
async fn job_of(
    state: &ApiState,
    endpoint: &str,
    id: &str,
) -> Result<JobRecord<JsonText>, ApiError> {
    match state.queue.status_raw(id).await? {
        Some(record) if record.endpoint == endpoint => Ok(record),
        _ => Err(unknown_job(id)),
    }
}

pub(crate) fn unknown_job(id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no job {id:?}: it never existed, was purged, or its result passed its retention time"
    ))
}

/// Reads a request body of at most `limit` bytes.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let source = e.into_inner();
        if source.is::<http_body_util::LengthLimitError>() {
            ApiError::TooLarge { limit }
        } else if let Some(slow) = slow_body(&*source) {
            ApiError::TooSlow(slow.to_string())
        } else {
            ApiError::BadRequest(format!("could not read the request body: {source}"))
        }
    })
}

/// The [`super::SlowBody`] among an error's causes, if it is there (the
/// body's error arrives wrapped by axum and by the length limit).
fn slow_body<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a super::SlowBody> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(slow) = error.downcast_ref::<super::SlowBody>() {
            return Some(slow);
        }
        cause = error.source();
    }
    None
}
