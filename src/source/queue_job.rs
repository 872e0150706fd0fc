//! One job taken from jobpipe's queue: submitted to the pool, its updates
//! written in order, its end written once under its lease, with its
//! `executionTimeout` enforced.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::queue::Held;
use super::SourceContext;
use crate::backoff::BackoffPolicy;
use crate::job::{Job, JobEvent, JobResult, Outcome};
use crate::pool::{Pool, Slot};
use crate::queue::{Ending, Lease, Queue};
use crate::timer::sleep_for;

/// Delays between tries of writing a job's end when the database fails.
const WRITE_RETRY: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(100), Duration::from_secs(5), 0.2);
/// Tries of writing a job's end; after them the lease runs out and the job
/// is queued again.
const WRITE_TRIES: usize = 20;
/// Failures found by jobpipe after which the job deserves another attempt:
/// the handler, not the job, went wrong (or jobpipe stopped).
const RETRYABLE: &[&str] = &[
    "HandlerCrashed",
    "HandlerRestarted",
    "HandlerStartFailed",
    "WorkerShutdown",
];

/// Submits a leased job and spawns the task that follows it.
pub(super) fn start(
    lease: Lease,
    slot: Slot,
    queue: Arc<dyn Queue>,
    held: Held,
    ctx: &SourceContext,
    jobs: &TaskTracker,
) {
    let id = lease.job_id.clone();
    let job = match Job::from_value(lease.payload.clone()) {
        Ok(job) => job,
        Err((message, _)) => {
            let ending = Ending::Failed {
                error: format!("invalid job: {message}"),
                output: None,
            };
            jobs.spawn(async move { write_end(&*queue, &lease, ending).await });
            return;
        }
    };
    tracing::info!(job_id = %id, "job taken (attempt {})", lease.attempt);
    match ctx.pool.submit(slot, job) {
        Ok(events) => {
            held.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, lease.token.clone());
            jobs.spawn(follow(lease, events, queue, held, ctx.pool.clone()));
        }
        Err(duplicate) => tracing::warn!(job_id = %id, "{duplicate}"),
    }
}

/// Writes one job's updates in order, then its end.
async fn follow(
    lease: Lease,
    mut events: mpsc::UnboundedReceiver<JobEvent>,
    queue: Arc<dyn Queue>,
    held: Held,
    pool: Arc<Pool>,
) {
    let id = lease.job_id.clone();
    let mut timed_out = false;
    let timeout = sleep_for(lease.execution_timeout);
    tokio::pin!(timeout);
    let result = loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = &mut timeout, if !timed_out => {
                timed_out = true;
                tracing::info!(job_id = %id, "job ran past its executionTimeout; stopping its handler");
                pool.cancel(&id);
                continue;
            }
        };
        let written = match event {
            Some(JobEvent::Progress(value)) => queue.progress(&id, &lease.token, value).await,
            Some(JobEvent::Stream(value)) => queue.stream(&id, &lease.token, value).await,
            Some(JobEvent::Done(result)) => break result,
            None => unreachable!("a ticket always sends its result before it is dropped"),
        };
        if let Err(e) = written {
            tracing::warn!(job_id = %id, "an update of this job was not saved: {e}");
        }
    };
    held.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    let Some(ending) = ending(result, timed_out, lease.execution_timeout) else {
        tracing::info!(job_id = %id, "job stopped after its cancellation");
        return;
    };
    write_end(&*queue, &lease, ending).await;
}

/// What a job's result means for the queue; `None` for a job stopped
/// because it was cancelled (its status is already final).
fn ending(result: JobResult, timed_out: bool, limit: Option<Duration>) -> Option<Ending> {
    if timed_out {
        let limit = limit.unwrap_or_default().as_millis();
        return Some(Ending::TimedOut(format!(
            "the job ran longer than its executionTimeout of {limit} ms; its handler was stopped"
        )));
    }
    match result.outcome {
        Outcome::Output(output) => Some(Ending::Completed(output)),
        Outcome::Cancelled => None,
        Outcome::Error { error, output } => Some(match failure_kind(&error) {
            Some((kind, message)) if RETRYABLE.contains(&kind.as_str()) => {
                Ending::Retry(format!("{kind}: {message}"))
            }
            Some((kind, message)) if kind == "JobTimeout" => {
                Ending::TimedOut(format!("{kind}: {message}"))
            }
            _ => Ending::Failed { error, output },
        }),
    }
}

/// The `error_type` and `error_message` of a jobpipe error report.
fn failure_kind(error: &str) -> Option<(String, String)> {
    let report: Value = serde_json::from_str(error).ok()?;
    let kind = report["error_type"].as_str()?.to_owned();
    let message = report["error_message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    report["jobpipe_version"]
        .is_string()
        .then_some((kind, message))
}

/// Writes a job's end; a refused write means the lease was lost, so
/// another worker (or a cancel) decides the job's status.
async fn write_end(queue: &dyn Queue, lease: &Lease, ending: Ending) {
    let id = &lease.job_id;
    let mut delays = WRITE_RETRY.iter();
    for _ in 0..WRITE_TRIES {
        match queue.finish(id, &lease.token, ending.clone()).await {
            Ok(true) => {
                tracing::debug!(job_id = %id, "job's end saved");
                return;
            }
            Ok(false) => {
                tracing::warn!(job_id = %id, "this worker no longer holds the job (cancelled, or its lease ran out); its result is not saved");
                return;
            }
            Err(e) => {
                let delay = delays.next().unwrap_or_default();
                tracing::warn!(job_id = %id, "saving the job's end failed: {e}; retrying in {}ms", delay.as_millis());
                tokio::time::sleep(delay).await;
            }
        }
    }
    tracing::error!(job_id = %id, "the job's end could not be saved; its lease will run out and it will be queued again");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Identity;
    use crate::job::{FailureKind, JobFailure};
    use serde_json::json;

    fn report(kind: FailureKind) -> String {
        let identity = Identity {
            worker_id: "w".into(),
            hostname: "h".into(),
        };
        JobFailure::new(kind, "went wrong").report(&identity)
    }

    #[test]
    fn crashes_are_retried_and_handler_errors_are_final() {
        let crash = JobResult::error(report(FailureKind::HandlerCrashed));
        assert!(
            matches!(ending(crash, false, None), Some(Ending::Retry(m)) if m.contains("went wrong"))
        );
        let own = JobResult::error("{\"error_type\": \"HandlerCrashed\"}".into());
        assert!(
            matches!(ending(own, false, None), Some(Ending::Failed { .. })),
            "a handler's own text is not a report"
        );
        let timeout = JobResult::error(report(FailureKind::Timeout));
        assert!(matches!(
            ending(timeout, false, None),
            Some(Ending::TimedOut(_))
        ));
        assert_eq!(
            ending(JobResult::output(json!(1)), false, None),
            Some(Ending::Completed(json!(1)))
        );
        assert_eq!(ending(JobResult::cancelled(), false, None), None);
        assert!(matches!(
            ending(JobResult::cancelled(), true, Some(Duration::from_millis(500))),
            Some(Ending::TimedOut(m)) if m.contains("500 ms")
        ));
    }
}
