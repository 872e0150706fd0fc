//! How a job ends ([`JobResult`], [`Outcome`], [`JobFailure`]) and what a
//! source hears while it runs ([`JobEvent`]).

use serde_json::json;

use super::identity::Identity;
use crate::json::Json;

/// Why a job failed, sorted for the error report's `error_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The handler process exited or was killed while running the job.
    HandlerCrashed,
    /// The job ran longer than `--job-timeout`.
    Timeout,
    /// The handler broke the line protocol.
    ProtocolError,
    /// The result exceeded `--max-output-size`.
    OutputTooLarge,
    /// The worker was shut down before the job finished.
    WorkerShutdown,
    /// The handler process could not be started for this job.
    HandlerStart,
    /// Another job in the same process made it restart.
    HandlerRestarted,
    /// The handler sent nothing for the job for `--stall-timeout`.
    Stalled,
}

impl FailureKind {
    fn name(self) -> &'static str {
        match self {
            FailureKind::HandlerCrashed => "HandlerCrashed",
            FailureKind::Timeout => "JobTimeout",
            FailureKind::ProtocolError => "ProtocolError",
            FailureKind::OutputTooLarge => "OutputTooLarge",
            FailureKind::WorkerShutdown => "WorkerShutdown",
            FailureKind::HandlerStart => "HandlerStartFailed",
            FailureKind::HandlerRestarted => "HandlerRestarted",
            FailureKind::Stalled => "Stalled",
        }
    }
}

/// A failure found by jobpipe itself (as opposed to an error the handler
/// returned), reported in the RunPod SDK's error report shape.
#[derive(Debug, Clone)]
pub struct JobFailure {
    pub kind: FailureKind,
    pub message: String,
    /// The tail of the handler's stderr, when it says something useful.
    pub stderr_tail: String,
}

impl JobFailure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        JobFailure {
            kind,
            message: message.into(),
            stderr_tail: String::new(),
        }
    }

    pub fn with_stderr(mut self, tail: String) -> Self {
        self.stderr_tail = tail;
        self
    }

    /// The JSON text RunPod dashboards parse: `error_type`, `error_message`,
    /// `error_traceback`, `hostname`, `worker_id` and jobpipe's version.
    pub fn report(&self, identity: &Identity) -> String {
        json!({
            "error_type": self.kind.name(),
            "error_message": self.message,
            "error_traceback": self.stderr_tail,
            "hostname": identity.hostname,
            "worker_id": identity.worker_id,
            "jobpipe_version": crate::VERSION,
        })
        .to_string()
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler produced an output.
    Output(Json),
    /// The job failed; `error` is the text reported as the job's error.
    Error { error: String, output: Option<Json> },
    /// The job was stopped on request; nothing is reported for it.
    Cancelled,
    /// The handler answered with files to upload (`output_file` or
    /// `output_files`, as it wrote them); the runner turns them into an
    /// output of references, or an error.
    Files(Json),
    /// The handler's output, too large to hold in memory, in the file its
    /// line was written to; the runner uploads it to the object store.
    Spilled(super::spilled::FileRange),
}

/// The final result of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    pub outcome: Outcome,
    /// The handler (or `--refresh-worker`) asked for a fresh process.
    pub refresh_worker: bool,
    /// The job sent stream partials before its final line.
    pub streamed: bool,
}

impl JobResult {
    pub fn output(value: Json) -> Self {
        JobResult {
            outcome: Outcome::Output(value),
            refresh_worker: false,
            streamed: false,
        }
    }

    pub fn error(error: String) -> Self {
        JobResult {
            outcome: Outcome::Error {
                error,
                output: None,
            },
            refresh_worker: false,
            streamed: false,
        }
    }

    pub fn cancelled() -> Self {
        JobResult {
            outcome: Outcome::Cancelled,
            refresh_worker: false,
            streamed: false,
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Output(_) | Outcome::Files(_) | Outcome::Spilled(_)
        )
    }
}

/// What a source hears about a job while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    Progress(Json),
    Stream(Json),
    Done(JobResult),
}
