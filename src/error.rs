//! Errors, sorted by what the caller must do about them.
//!
//! * [`ConfigError`] and [`FatalError`] end the program: the binary maps each
//!   to an exit code in [`FatalError::exit_code`], and nowhere else.
//! * Per-job failures are not Rust errors at all: they become the job's
//!   result (see [`crate::job::JobFailure`]) and the worker goes on.
//! * Transient faults (network, 5xx, 429) are retried where they happen, with
//!   the shared back-off in [`crate::backoff`].

use std::path::PathBuf;

/// A subsystem's own typed error, carried as the cause of a [`FatalError`].
/// This file is a leaf (CONTRIBUTING.md, Layers) and cannot name the
/// subsystems' types; `downcast_ref` recovers them (e.g.
/// `fitness::FitnessError`, `os::ExecutableError`).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Exit codes, documented in `--help` and the README.
pub mod exit {
    pub const OK: u8 = 0;
    pub const JOB_FAILED: u8 = 1;
    pub const CONFIG: u8 = 2;
    pub const HANDLER: u8 = 3;
    pub const AUTH: u8 = 4;
    pub const FORCED: u8 = 5;
    pub const INTERNAL: u8 = 6;
    pub const HANDLER_FAILING: u8 = 7;
    pub const UNFIT: u8 = 8;
}

/// The configuration cannot work; nothing has been started.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    /// A file the configuration names cannot be read (`test_input.json`).
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file a flag names cannot be read (`--input-schema`).
    #[error("cannot read {flag} {}: {source}", path.display())]
    FlagFileUnreadable {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file a key or secret is given in cannot be read; `what` names
    /// the key as the flag does.
    #[error("cannot read {what} from {}: {source}", path.display())]
    KeyFileUnreadable {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no job source: give one job with --test-input '{{\"input\": ...}}', put a test_input.json \
         in the working directory, run on RunPod (RUNPOD_WEBHOOK_GET_JOB), or serve the endpoint API with --serve-api"
    )]
    NoJobSource,
}

/// Something that stops the worker as a whole.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("handler {program:?} {problem}")]
    HandlerUnusable {
        program: String,
        #[source]
        problem: Cause,
    },
    #[error("handler could not start: {0}")]
    HandlerStart(String),
    #[error("handler fails every job: {0}")]
    HandlerFailing(String),
    #[error("this machine is not fit to take jobs: {0}")]
    Unfit(#[source] Cause),
    #[error(
        "RunPod rejected the API key (HTTP {status}); check RUNPOD_AI_API_KEY for this endpoint"
    )]
    KeyRejected { status: u16 },
    #[error("cannot use the spool directory {}: {source}; set --spool-dir (JOBPIPE_SPOOL_DIR) to a writable directory", path.display())]
    Spool {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl FatalError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            FatalError::Config(_) => exit::CONFIG,
            FatalError::HandlerUnusable { .. } | FatalError::HandlerStart(_) => exit::HANDLER,
            FatalError::HandlerFailing(_) => exit::HANDLER_FAILING,
            FatalError::Unfit(_) => exit::UNFIT,
            FatalError::KeyRejected { .. } => exit::AUTH,
            FatalError::Spool { .. } | FatalError::Internal(_) => exit::INTERNAL,
        }
    }
}
