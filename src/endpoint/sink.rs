//! The queue's side of a job's path: the [`ResultSink`] that writes a
//! job's updates and its end under the job's lease, and the timer that
//! ends a job at its `executionTimeout`. Everything else a job goes through
//! is the shared [`crate::runner`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::task::AbortHandle;

use crate::backoff::BackoffPolicy;
use crate::delivery::ResultSink;
use crate::delivery::{Attempt, Post, PostKind};
use crate::endpoint::queue::{Ending, Failure, Lease, Queue, QueueError};
use crate::json::{self, Json};
use crate::pool::Pool;

/// Delays between writes of a job's update or end while the database
/// cannot be reached.
const UNREACHABLE_RETRY: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(200), Duration::from_secs(5), 0.2);

/// Failures found by jobpipe in which the handler or the worker, not the
/// job, went wrong (retried by default), by the error report's
/// `error_type`, and how a job's `policy.retry` names each.
const LOST: &[(&str, Failure)] = &[
    ("HandlerCrashed", Failure::Crash),
    ("HandlerRestarted", Failure::Crash),
    ("HandlerStartFailed", Failure::Crash),
    ("Stalled", Failure::Stalled),
    ("WorkerShutdown", Failure::Lost),
];

/// A job this worker holds.
struct HeldJob {
    token: String,
    /// The `executionTimeout` timer, stopped when the job ends first.
    timer: Option<AbortHandle>,
}

/// The jobs this worker holds, by id.
#[derive(Clone, Default)]
pub(super) struct Held(Arc<Mutex<HashMap<String, HeldJob>>>);

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HeldJob>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a taken job and starts its `executionTimeout` timer.
    pub(super) fn hold(&self, lease: &Lease<Json>, queue: &Arc<dyn Queue>, pool: &Arc<Pool>) {
        let timer = lease.execution_timeout.map(|limit| {
            tokio::spawn(time_out(
                lease.clone(),
                limit,
                queue.clone(),
                pool.clone(),
                self.clone(),
            ))
            .abort_handle()
        });
        let job = HeldJob {
            token: lease.token.clone(),
            timer,
        };
        self.lock().insert(lease.job_id.clone(), job);
    }

    fn token(&self, id: &str) -> Option<String> {
        self.lock().get(id).map(|job| job.token.clone())
    }

    fn release(&self, id: &str) {
        if let Some(job) = self.lock().remove(id) {
            if let Some(timer) = job.timer {
                timer.abort();
            }
        }
    }

    /// (id, token) of every job held, for renewal.
    pub(super) fn leases(&self) -> Vec<(String, String)> {
        self.lock()
            .iter()
            .map(|(id, job)| (id.clone(), job.token.clone()))
            .collect()
    }
}

/// Ends a job that runs past its `executionTimeout` as TIMED_OUT, then
/// stops its handler (whose own end is then not written).
async fn time_out(
    lease: Lease<Json>,
    limit: Duration,
    queue: Arc<dyn Queue>,
    pool: Arc<Pool>,
    held: Held,
) {
    tokio::time::sleep(limit).await;
    let id = &lease.job_id;
    let why = format!(
        "the job ran longer than its executionTimeout of {} ms; its handler was stopped",
        limit.as_millis()
    );
    match queue
        .finish_raw(id, &lease.token, Ending::TimedOut(why))
        .await
    {
        Ok(true) => {
            tracing::info!(job_id = %id, "job ran past its executionTimeout; stopping its handler");
            held.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
            pool.cancel(id);
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(job_id = %id, "cannot end the job at its executionTimeout: {e}"),
    }
}

/// Writes what the runner posts into the queue, under the job's lease.
pub(super) struct QueueSink {
    pub(super) queue: Arc<dyn Queue>,
    pub(super) held: Held,
}

impl ResultSink for QueueSink {
    fn stamp(&self, post: &mut Post) {
        if let Some(token) = self.held.token(&post.job_id) {
            post.lease = Some(token);
        }
    }

    async fn send(&self, post: &Post) -> Attempt {
        let id = &post.job_id;
        let is_final = matches!(post.kind, PostKind::Final { .. });
        // A result an earlier run spooled carries the lease it was held under.
        let Some(token) = self.held.token(id).or_else(|| post.lease.clone()) else {
            return Attempt::Refused("this worker no longer holds the job (it was cancelled or timed out, or its lease ran out)".into());
        };
        // While the database cannot be reached, wait for it here rather
        // than fail the attempt: the queue logs the outage once, where a
        // failed attempt would be logged for every job at every retry.
        // Delivery's flush deadline still cuts this wait short.
        // The handler's values go on as the text it wrote.
        let ending = is_final.then(|| ending(&post.body));
        let mut delays = UNREACHABLE_RETRY.iter();
        let written = loop {
            let body = post.body.clone();
            let written = match (&post.kind, &ending) {
                (PostKind::Progress, _) => self.queue.progress_raw(id, &token, body).await,
                (PostKind::Stream, _) => self.queue.stream_raw(id, &token, body).await,
                (PostKind::Final { .. }, Some(ending)) => {
                    self.queue.finish_raw(id, &token, ending.clone()).await
                }
                (PostKind::Final { .. }, None) => unreachable!("a final post has its ending"),
            };
            match written {
                Err(QueueError::Unavailable(why)) => {
                    let delay = delays.next().unwrap_or_default();
                    tracing::debug!(job_id = %id, "the {} write waits for the database ({why})", post.kind.name());
                    tokio::time::sleep(delay).await;
                }
                written => break written,
            }
        };
        match written {
            Ok(true) => {
                if is_final {
                    self.held.release(id);
                }
                Attempt::Delivered
            }
            Ok(false) => {
                self.held.release(id);
                Attempt::Refused("this worker no longer holds the job's lease (cancelled, timed out, or the lease ran out); another status stands".into())
            }
            Err(e) => Attempt::Retry(e.to_string()),
        }
    }
}

/// The keys of a final result body, as the text of their values.
#[derive(Deserialize)]
struct FinalBody<'a> {
    #[serde(borrow, default, deserialize_with = "json::present")]
    output: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "json::present")]
    error: Option<&'a RawValue>,
}

/// What a final result body (`{"output"}` or `{"error", "output"?}`)
/// means for the queue. The output stays the text the handler wrote (a
/// slice of the body, no copy when the body is one piece).
fn ending(body: &Json) -> Ending<Json> {
    let whole = body.clone().into_bytes();
    let is_object = whole.trim_ascii_start().starts_with(b"{");
    let keys = match serde_json::from_slice::<FinalBody>(&whole) {
        Ok(keys) if is_object => keys,
        _ => return Ending::Completed(body.clone()),
    };
    let output = keys.output.map(|raw| Json::slice_of(&whole, raw));
    let Some(error) = keys.error else {
        return Ending::Completed(output.unwrap_or_else(Json::null));
    };
    let error = match serde_json::from_str::<Value>(error.get()) {
        Ok(Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => error.get().to_owned(),
    };
    let Some(report) = report_of(&error) else {
        return Ending::Failed { error, output };
    };
    let why = format!("{}: {}", report.kind, report.message);
    match LOST.iter().find(|(name, _)| *name == report.kind) {
        Some((_, kind)) => Ending::Retry {
            kind: *kind,
            why,
            stderr: report.stderr,
        },
        None if report.kind == "JobTimeout" => Ending::TimedOut(why),
        None => Ending::Failed { error, output },
    }
}

/// What a jobpipe error report says.
struct Report {
    /// `error_type`.
    kind: String,
    /// `error_message`: for a crash, how the process ended
    /// ("handler exit status: 3", "handler signal: 9 (SIGKILL)").
    message: String,
    /// `error_traceback`: the end of the handler's stderr.
    stderr: String,
}

/// The report `error` is, if it is one of jobpipe's.
fn report_of(error: &str) -> Option<Report> {
    let report: Value = serde_json::from_str(error).ok()?;
    let text = |key: &str| report[key].as_str().unwrap_or_default().to_owned();
    let kind = report["error_type"].as_str()?.to_owned();
    report["jobpipe_version"].is_string().then(|| Report {
        kind,
        message: text("error_message"),
        stderr: text("error_traceback"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Identity;
    use crate::job::{FailureKind, JobFailure};
    use serde_json::json;

    fn report(kind: FailureKind) -> String {
        let identity = Identity {
            worker_id: "w".into(),
            hostname: "h".into(),
        };
        JobFailure::new(kind, "went wrong")
            .with_stderr("last words".into())
            .report(&identity)
    }

    fn body(text: &str) -> Json {
        Json::parse(bytes::Bytes::from(text.to_owned())).unwrap()
    }

    #[test]
    fn crashes_are_retried_and_handler_errors_are_final() {
        let crash = Json::from_value(&json!({"error": report(FailureKind::HandlerCrashed)}));
        assert_eq!(
            ending(&crash),
            Ending::Retry {
                kind: Failure::Crash,
                why: "HandlerCrashed: went wrong".into(),
                stderr: "last words".into()
            }
        );
        for (kind, failure) in [
            (FailureKind::Stalled, Failure::Stalled),
            (FailureKind::WorkerShutdown, Failure::Lost),
            (FailureKind::HandlerStart, Failure::Crash),
        ] {
            let body = Json::from_value(&json!({"error": report(kind)}));
            assert!(matches!(ending(&body), Ending::Retry { kind, .. } if kind == failure));
        }
        let own = Json::from_value(
            &json!({"error": "{\"error_type\": \"HandlerCrashed\"}", "output": 1}),
        );
        assert!(
            matches!(ending(&own), Ending::Failed { output: Some(o), .. } if o == body("1")),
            "a handler's own text is not a report"
        );
        let timeout = Json::from_value(&json!({"error": report(FailureKind::Timeout)}));
        assert!(matches!(ending(&timeout), Ending::TimedOut(_)));
        assert_eq!(
            ending(&body(r#"{"output":1}"#)),
            Ending::Completed(body("1"))
        );
        assert_eq!(ending(&body("{}")), Ending::Completed(Json::null()));
    }

    #[test]
    fn outputs_keep_the_handlers_text() {
        let exact = r#"{"big": 1180591620717411303424, "neg": -0, "z": 1, "a": "\u00e9\n", "f": 1.50, "e": 2E+3}"#;
        let completed = ending(&body(&format!(r#"{{"output": {exact}}}"#)));
        assert_eq!(completed, Ending::Completed(body(exact)));
        let failed = ending(&body(&format!(r#"{{"error": "no", "output": {exact}}}"#)));
        assert_eq!(
            failed,
            Ending::Failed {
                error: "no".into(),
                output: Some(body(exact))
            }
        );
        // A body in pieces (a large output) reads the same.
        let large = Json::from_value(&json!("x".repeat(64 * 1024)));
        let pieces = json::object([("output", &large)]);
        assert!(pieces.pieces().len() > 1);
        assert_eq!(ending(&pieces), Ending::Completed(large));
    }
}
