//! Jobs, their events and their one final result.
//!
//! A job travels from a source into the pool as a [`JobTicket`]. Whoever holds
//! the ticket must finish it exactly once; if a ticket is dropped unfinished
//! (a bug, a panic, a queue torn down at shutdown), its `Drop` reports a
//! failure, so no job can end in silence. The source reads the job's
//! [`JobEvent`]s from the matching [`JobEvents`], which pushes back on the
//! handler when the source falls behind (see [`events`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::error::ConfigError;
use crate::json::{id_text, present, Json};

pub mod events;
mod identity;
mod result;
pub mod spilled;

use events::EventSender;
pub use events::JobEvents;
pub use identity::{Identity, IdentityArgs};
pub use result::{FailureKind, JobEvent, JobFailure, JobResult, Outcome};

/// A job as received: `id`, `input` and any other keys, passed on untouched.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    /// The whole job object as the one line the handler receives (without
    /// its newline): the text it came in, not parsed and written again.
    pub line: Bytes,
    /// This job's own `--stall-timeout` (an endpoint job's
    /// `policy.stallTimeout`), which wins over the worker's.
    pub stall_timeout: Option<Duration>,
    /// The job's scratch directory (`job_dir` in its line), made by the
    /// runner when an object store is configured.
    pub dir: Option<std::path::PathBuf>,
}

/// The keys a job must have; the rest of it is passed on as it is.
#[derive(Deserialize)]
struct JobKeys<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    input: Option<&'a RawValue>,
}

impl Job {
    /// Checks a job object: it must be an object with a string `id` and an
    /// `input`. On failure returns a message and the id when there is one.
    pub fn from_value(value: Value) -> Result<Job, (String, Option<String>)> {
        if !value.is_object() {
            return Err(("job is not a JSON object".into(), None));
        }
        Job::from_json(Bytes::from(
            serde_json::to_vec(&value).expect("a JSON value serialises"),
        ))
    }

    /// The same check of a job object's text, which becomes the job's line
    /// without a copy (unless it holds line breaks, which JSON allows
    /// only as white space: they become spaces).
    pub fn from_json(text: Bytes) -> Result<Job, (String, Option<String>)> {
        let Ok(utf8) = std::str::from_utf8(&text) else {
            return Err(("job is not UTF-8 text".into(), None));
        };
        if !utf8.trim_start().starts_with('{') {
            return Err(("job is not a JSON object".into(), None));
        }
        let keys = serde_json::from_str::<JobKeys>(utf8)
            .map_err(|e| (format!("job is not valid JSON ({e})"), None))?;
        let id = match keys.id.and_then(id_text) {
            Some(id) if !id.is_empty() => id,
            _ => return Err(("job has no \"id\"".into(), None)),
        };
        if keys.input.is_none() {
            return Err(("job has no \"input\"".into(), Some(id)));
        }
        let line = if memchr::memchr2(b'\n', b'\r', &text).is_some() {
            let spaced: Vec<u8> = text
                .iter()
                .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
                .collect();
            Bytes::from(spaced)
        } else {
            text
        };
        Ok(Job {
            id,
            line,
            stall_timeout: None,
            dir: None,
        })
    }

    /// The job's `input`, parsed: for the rare check that must look inside.
    pub fn input(&self) -> Option<Value> {
        let keys = serde_json::from_slice::<JobKeys>(&self.line).ok()?;
        serde_json::from_str(keys.input?.get()).ok()
    }
}

/// A local job written as JSON (`--test-input`, `test_input.json`,
/// `--warmup-input`): an object with `input`; its `id` defaults to
/// `local_test`, and a number is taken as its text.
pub fn local_job(text: &str, what: &str) -> Result<Value, ConfigError> {
    let mut job: Value = serde_json::from_str(text)
        .map_err(|e| ConfigError::Invalid(format!("{what} is not valid JSON: {e}")))?;
    let Some(obj) = job.as_object_mut() else {
        return Err(ConfigError::Invalid(format!(
            "{what} must be a JSON object like {{\"input\": {{...}}}}"
        )));
    };
    if !obj.contains_key("input") {
        return Err(ConfigError::Invalid(format!(
            "{what} has no \"input\" key; write it as {{\"input\": {{...}}}}"
        )));
    }
    match obj.get("id") {
        None | Some(Value::Null) => {
            obj.insert("id".into(), Value::from("local_test"));
        }
        Some(Value::String(_)) => {}
        Some(other) => {
            let id = other.to_string();
            obj.insert("id".into(), Value::from(id));
        }
    }
    Ok(job)
}

/// Removes a job from the in-flight registry when it finishes.
pub(crate) trait Registry: Send + Sync {
    fn finished(&self, id: &str, result: &JobResult);
}

/// The right and duty to finish one job. See the module docs.
pub struct JobTicket {
    pub job: Job,
    pub(crate) cancel: CancellationToken,
    events: EventSender,
    identity: Arc<Identity>,
    registry: Arc<dyn Registry>,
    finished: bool,
    /// When the job was handed to the pool, for the duration in the log.
    taken: Instant,
}

impl JobTicket {
    pub(crate) fn new(
        job: Job,
        cancel: CancellationToken,
        events: EventSender,
        identity: Arc<Identity>,
        registry: Arc<dyn Registry>,
    ) -> Self {
        JobTicket {
            job,
            cancel,
            events,
            identity,
            registry,
            finished: false,
            taken: Instant::now(),
        }
    }

    pub fn id(&self) -> &str {
        &self.job.id
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Passes on a progress value; never waits (progress is coalesced
    /// when the source falls behind).
    pub fn progress(&self, value: Json) {
        self.events.progress(value);
    }

    /// Passes on a stream partial, waiting while the job's queue is full:
    /// the caller stops reading the handler meanwhile.
    pub async fn stream(&self, value: Json) {
        self.events.stream(value, &self.cancel).await;
    }

    /// Ends the job with its result.
    pub fn finish(mut self, result: JobResult) {
        self.complete(result);
    }

    /// Ends the job as failed by jobpipe, with an error report.
    pub fn fail(self, failure: JobFailure) {
        let report = failure.report(&self.identity);
        self.finish(JobResult::error(report));
    }

    fn complete(&mut self, result: JobResult) {
        self.finished = true;
        tracing::info!(
            job_id = %self.job.id,
            "job {} after {:.3}s",
            ending(&result.outcome),
            self.taken.elapsed().as_secs_f64()
        );
        self.registry.finished(&self.job.id, &result);
        self.events.finish(result);
    }
}

/// How a job ended, for the log: `completed`, `failed`, `failed
/// (JobTimeout)` with the type of an error report, or `stopped`.
fn ending(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Output(_) | Outcome::Spilled(_) => "completed".into(),
        Outcome::Error { error, .. } => {
            let report = error
                .starts_with('{')
                .then(|| serde_json::from_str::<Value>(error).ok())
                .flatten();
            match report.as_ref().and_then(|r| r["error_type"].as_str()) {
                Some(kind) => format!("failed ({kind})"),
                None => "failed".into(),
            }
        }
        Outcome::Cancelled => "stopped".into(),
        Outcome::Files(_) => "completed (files to upload)".into(),
    }
}

impl Drop for JobTicket {
    fn drop(&mut self) {
        if !self.finished {
            let failure = JobFailure::new(
                FailureKind::WorkerShutdown,
                "jobpipe stopped before this job could run to the end",
            );
            let report = failure.report(&self.identity);
            self.complete(JobResult::error(report));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn job_needs_an_id_and_input() {
        assert!(Job::from_value(json!({"id": "a", "input": 1})).is_ok());
        assert_eq!(
            Job::from_value(json!({"id": "a"})).unwrap_err(),
            ("job has no \"input\"".to_string(), Some("a".to_string()))
        );
        assert_eq!(Job::from_value(json!({"input": 1})).unwrap_err().1, None);
        assert!(Job::from_value(json!([1])).is_err());
    }

    #[test]
    fn job_line_keeps_every_key() {
        let job = Job::from_value(json!({"id": "a", "input": 1, "webhook": "w"})).unwrap();
        let back: Value = serde_json::from_slice(&job.line).unwrap();
        assert_eq!(back["webhook"], "w");
    }

    #[test]
    fn report_has_the_sdk_shape() {
        let identity = Identity {
            worker_id: "w1".into(),
            hostname: "h".into(),
        };
        let text = JobFailure::new(FailureKind::Timeout, "job timed out after 1s")
            .with_stderr("boom".into())
            .report(&identity);
        let report: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(report["error_type"], "JobTimeout");
        assert_eq!(report["error_message"], "job timed out after 1s");
        assert_eq!(report["error_traceback"], "boom");
        assert_eq!(report["worker_id"], "w1");
        assert_eq!(report["hostname"], "h");
        assert_eq!(report["jobpipe_version"], crate::VERSION);
    }

    #[test]
    fn the_log_says_how_a_job_ended() {
        assert_eq!(ending(&Outcome::Output(json!(1).into())), "completed");
        assert_eq!(ending(&Outcome::Cancelled), "stopped");
        let report = JobFailure::new(FailureKind::Timeout, "late").report(&Identity {
            worker_id: "w".into(),
            hostname: "h".into(),
        });
        assert_eq!(
            ending(&JobResult::error(report).outcome),
            "failed (JobTimeout)"
        );
        assert_eq!(
            ending(&JobResult::error("bad input".into()).outcome),
            "failed"
        );
    }

    struct NoRegistry;
    impl Registry for NoRegistry {
        fn finished(&self, _: &str, _: &JobResult) {}
    }

    #[tokio::test]
    async fn dropped_ticket_still_reports_one_failure() {
        let (tx, mut rx) = events::channel(None);
        let identity = Arc::new(Identity {
            worker_id: "w".into(),
            hostname: "h".into(),
        });
        let job = Job::from_value(json!({"id": "a", "input": 1})).unwrap();
        drop(JobTicket::new(
            job,
            CancellationToken::new(),
            tx,
            identity,
            Arc::new(NoRegistry),
        ));
        let Some(JobEvent::Done(result)) = rx.recv().await else {
            panic!("no result")
        };
        assert!(
            matches!(result.outcome, Outcome::Error { error, .. } if error.contains("WorkerShutdown"))
        );
        assert!(rx.recv().await.is_none(), "exactly one result");
    }
}
