//! `GET /v2/{endpoint}/jobs` (a page of the endpoint's jobs, newest
//! first, filtered by status and age, paged by cursor),
//! `GET /v2/{endpoint}/jobs/{id}` (everything kept of one job) and
//! `GET /v2/{endpoint}/workers` (the processes that serve it). None is
//! RunPod's: they are what an operator and the command-line client read.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, value::RawValue, Value};

use super::endpoint_name::EndpointName;
use super::error::ApiError;
use super::routes::TextBody;
use super::ApiState;
use crate::endpoint::queue::{AttemptRecord, Cursor, JobFilter, JobStatus, JobSummary, PAGE_MAX};
use crate::json::{self, Json as JsonText};

/// A page's size when the caller gives none.
const PAGE_DEFAULT: usize = 50;

pub(crate) async fn list(
    State(state): State<ApiState>,
    EndpointName(endpoint): EndpointName,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (filter, limit) = page_query(&query)?;
    let jobs = state.queue.list_jobs(&endpoint, &filter, limit).await?;
    let next = (jobs.len() == limit)
        .then(|| jobs.last().map(|job| job.cursor().encode()))
        .flatten();
    let jobs: Vec<Value> = jobs.iter().map(summary_json).collect();
    Ok(Json(json!({"jobs": jobs, "nextCursor": next})))
}

/// The filter and page size a list request asks for; 400 naming the
/// parameter that is wrong.
fn page_query(query: &HashMap<String, String>) -> Result<(JobFilter, usize), ApiError> {
    let mut filter = JobFilter::default();
    let mut limit = PAGE_DEFAULT;
    for (key, value) in query {
        match key.as_str() {
            "status" => {
                filter.status = Some(JobStatus::parse(value).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "status must be one of IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED, TIMED_OUT; got {value:?}"
                    ))
                })?);
            }
            "since" => filter.since = Some(since(value)?),
            "tenant" => filter.tenant = Some(value.clone()),
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=PAGE_MAX).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "limit must be a whole number from 1 to {PAGE_MAX}; got {value:?}"
                        ))
                    })?;
            }
            "cursor" => {
                filter.after = Some(Cursor::decode(value).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "cursor {value:?} is not one this API gave; pass nextCursor from the page before"
                    ))
                })?);
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                "unknown parameter {other:?}; the job list takes status, tenant, since, limit and cursor"
            )))
            }
        }
    }
    Ok((filter, limit))
}

/// `since`: an RFC 3339 time, or ms since the epoch.
fn since(text: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(text)
        .map(crate::endpoint::queue::to_ms)
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "since must be an RFC 3339 time (2026-12-07T10:00:00Z) or ms since the epoch; got {text:?}"
            ))
        })
}

fn summary_json(job: &JobSummary) -> Value {
    json!({
        "id": job.id,
        "status": job.status.as_str(),
        "createdAt": job.created_at,
        "startedAt": job.started_at,
        "finishedAt": job.finished_at,
        "attempts": job.attempts,
        "priority": job.priority,
        "workerId": job.worker_id,
        "error": job.error,
        "tenant": job.tenant,
    })
}

pub(crate) async fn detail(
    State(state): State<ApiState>,
    EndpointName(endpoint): EndpointName,
    Path(params): Path<HashMap<String, String>>,
) -> Result<TextBody, ApiError> {
    let id = params.get("job_id").map_or("", String::as_str);
    let job = match state.queue.job_raw(id).await? {
        Some(job) if job.record.endpoint == endpoint => job,
        _ => return Err(super::routes::unknown_job(id)),
    };
    let record = &job.record;
    let value = |v: Value| JsonText::from_value(&v);
    let input = input_of(&job.payload);
    let mut fields: Vec<(&str, JsonText)> = vec![
        ("id", value(json!(record.id))),
        ("endpoint", value(json!(record.endpoint))),
        ("status", value(json!(record.status.as_str()))),
    ];
    if let Some(input) = input {
        fields.push(("input", input));
    }
    if let Some(output) = &record.output {
        fields.push(("output", output.clone()));
    }
    fields.extend([
        ("error", value(json!(record.error))),
        ("attemptCount", value(json!(record.attempts))),
        ("maxAttempts", value(json!(job.max_attempts))),
        ("priority", value(json!(job.priority))),
        ("workerId", value(json!(record.worker_id))),
        ("createdAt", value(json!(record.created_at))),
        ("queuedAt", value(json!(job.queued_at))),
        ("startedAt", value(json!(record.started_at))),
        ("finishedAt", value(json!(record.finished_at))),
        ("webhook", value(json!(job.webhook))),
        ("webhooksPending", value(json!(job.webhooks_pending))),
        ("tenant", value(json!(job.tenant))),
        (
            "attempts",
            value(job.history.iter().map(attempt_json).collect()),
        ),
        ("stream", json::array(&job.partials)),
        ("streamCount", value(json!(job.partials_total))),
    ]);
    Ok(TextBody(json::object(
        fields.iter().map(|(key, value)| (*key, value)),
    )))
}

/// One ended attempt of a job's history.
fn attempt_json(attempt: &AttemptRecord) -> Value {
    json!({
        "attempt": attempt.attempt,
        "workerId": attempt.worker_id,
        "startedAt": attempt.started_at,
        "endedAt": attempt.ended_at,
        "outcome": attempt.outcome,
        "detail": attempt.detail,
    })
}

/// The job object's `input`, as the text it was submitted as.
fn input_of(payload: &JsonText) -> Option<JsonText> {
    #[derive(serde::Deserialize)]
    struct Job<'a> {
        #[serde(borrow)]
        input: Option<&'a RawValue>,
    }
    let text = payload.text();
    let job: Job = serde_json::from_str(&text).ok()?;
    JsonText::from_text(job.input?.get().to_owned()).ok()
}

pub(crate) async fn workers(
    State(state): State<ApiState>,
    EndpointName(endpoint): EndpointName,
) -> Result<Json<Value>, ApiError> {
    let workers: Vec<Value> = state
        .queue
        .workers(&endpoint)
        .await?
        .iter()
        .map(|w| {
            let state = if w.lost {
                "lost"
            } else if w.busy > 0 || !w.current_jobs.is_empty() {
                "busy"
            } else {
                "idle"
            };
            json!({
                "id": w.id,
                "hostname": w.hostname,
                "endpoints": w.endpoints,
                "version": w.version,
                "slots": w.slots,
                "busy": w.busy,
                "state": state,
                "startedAt": w.started_at,
                "lastSeenAt": w.seen_at,
                "currentJobs": w.current_jobs,
            })
        })
        .collect();
    Ok(Json(json!({"workers": workers})))
}
