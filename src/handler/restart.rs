//! Why a handler process is replaced: the handler's own vocabulary, which
//! the metrics count by name (`jobpipe_handler_restarts_total{reason}`). A
//! leaf, so that the metrics can name it without depending on the rest of
//! the handler.

/// Why a handler process was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// It exited or was killed while running a job.
    Crashed,
    /// It exited while idle.
    ExitedIdle,
    /// A job ran past `--job-timeout`.
    Timeout,
    /// A job was stopped on request.
    Cancelled,
    /// It broke the line protocol.
    ProtocolError,
    /// A job asked for a fresh process (`refresh_worker`).
    Refresh,
    /// A job failed and `--keep-handler-on-error` is off.
    JobFailed,
    /// It did not become ready, or its warm-up job failed.
    StartFailed,
    /// It ran `--max-jobs-per-handler` jobs.
    MaxJobs,
    /// Its process group grew past `--max-handler-memory`.
    MaxMemory,
    /// A job got nothing from it for `--stall-timeout`: it counts as hung.
    Stalled,
}

impl RestartReason {
    pub const ALL: [RestartReason; 11] = [
        RestartReason::Crashed,
        RestartReason::ExitedIdle,
        RestartReason::Timeout,
        RestartReason::Cancelled,
        RestartReason::ProtocolError,
        RestartReason::Refresh,
        RestartReason::JobFailed,
        RestartReason::StartFailed,
        RestartReason::MaxJobs,
        RestartReason::MaxMemory,
        RestartReason::Stalled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RestartReason::Crashed => "crashed",
            RestartReason::ExitedIdle => "exited_idle",
            RestartReason::Timeout => "timeout",
            RestartReason::Cancelled => "cancelled",
            RestartReason::ProtocolError => "protocol_error",
            RestartReason::Refresh => "refresh",
            RestartReason::JobFailed => "job_failed",
            RestartReason::StartFailed => "start_failed",
            RestartReason::MaxJobs => "max_jobs",
            RestartReason::MaxMemory => "max_memory",
            RestartReason::Stalled => "stalled",
        }
    }
}
