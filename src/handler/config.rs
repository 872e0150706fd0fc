//! The handler's own flags ([`HandlerArgs`], [`RecycleArgs`]) and what they
//! validate into: how handler processes are started and supervised
//! ([`HandlerConfig`]).

use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, ValueEnum};
use serde_json::Value;

use crate::error::ConfigError;
use crate::units::{parse_long_duration, parse_short_duration, parse_size};

/// Most jobs one handler process may hold.
const MAX_JOBS_PER_HANDLER: usize = 10_000;
/// The job timeout of a test job when none is given: long enough for a
/// real model's test job, short enough that a handler that never answers
/// does not hang a CI run.
pub const TEST_JOB_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// How the handler process is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One long-lived handler process per slot, fed one job line after another.
    Worker,
    /// A fresh process per job: the job on stdin, its whole stdout is the result.
    Oneshot,
}

/// The handler command and how its processes run.
#[derive(Args)]
pub struct HandlerArgs {
    /// The handler command and its arguments, executed directly.
    #[arg(last = true, value_name = "HANDLER")]
    pub handler: Vec<String>,

    /// The handler command line when none follows `--`; split into words like
    /// a shell would, but no shell is run.
    #[arg(long = "handler", env = "JOBPIPE_HANDLER", value_name = "COMMAND")]
    pub handler_line: Option<String>,

    /// Persistent worker processes, or one fresh process per job.
    #[arg(long, env = "JOBPIPE_MODE", value_enum, default_value = "worker")]
    pub mode: Mode,

    /// Number of handler processes running side by side (at most 1024, and
    /// no more than the open-file and process limits allow).
    #[arg(long, env = "JOBPIPE_CONCURRENCY", default_value = "1")]
    pub concurrency: NonZeroUsize,

    /// Jobs one handler process may hold at once (for handlers that
    /// multiplex); answers are matched by id. At most 10000.
    #[arg(long, env = "JOBPIPE_JOBS_PER_HANDLER", default_value = "1")]
    pub jobs_per_handler: NonZeroUsize,

    /// How long a handler may take to print {"ready": true}; missing it is
    /// fatal. At most 7 days.
    #[arg(long, env = "JOBPIPE_STARTUP_TIMEOUT", default_value = "10m", value_parser = parse_long_duration)]
    pub startup_timeout: Duration,

    /// Longest a job may run before it fails as timed out (default: no
    /// limit; for a --test-input or test_input.json job, 5m). 0 means no
    /// limit. At most 7 days.
    #[arg(long, env = "JOBPIPE_JOB_TIMEOUT", value_parser = parse_long_duration)]
    pub job_timeout: Option<Duration>,

    /// Longest a job may go with nothing from its handler (no progress,
    /// stream partial, heartbeat line or answer) before it fails as Stalled
    /// and its handler is replaced: catches a handler that is alive but
    /// hung. Default: off; an endpoint job's policy.stallTimeout overrides
    /// it. 0 means off. At most 7 days.
    #[arg(long, env = "JOBPIPE_STALL_TIMEOUT", value_parser = parse_long_duration)]
    pub stall_timeout: Option<Duration>,

    /// Time between SIGTERM and SIGKILL when a handler's process group is
    /// stopped. At most 1 hour.
    #[arg(long, env = "JOBPIPE_KILL_GRACE", default_value = "5s", value_parser = parse_short_duration)]
    pub kill_grace: Duration,

    /// Handler crashes or exits in a row, with no job succeeding in between,
    /// after which the handler counts as failing every job: jobpipe stops
    /// taking jobs and exits with code 7. 0 means never.
    #[arg(long, env = "JOBPIPE_MAX_HANDLER_FAILURES", default_value = "5")]
    pub max_handler_failures: u32,

    /// Replace the handler process after every job (and ask RunPod to stop the pod).
    #[arg(long, env = "JOBPIPE_REFRESH_WORKER", value_parser = BoolishValueParser::new())]
    pub refresh_worker: bool,

    /// Keep the handler process after a failed job instead of replacing it.
    #[arg(long, env = "JOBPIPE_KEEP_HANDLER_ON_ERROR", value_parser = BoolishValueParser::new())]
    pub keep_handler_on_error: bool,

    /// Largest result accepted from the handler; a larger one fails the job
    /// [default: 20MB, or 1GiB with --object-store, which takes outputs
    /// over --offload-threshold].
    #[arg(long, env = "JOBPIPE_MAX_OUTPUT_SIZE", value_parser = parse_size)]
    pub max_output_size: Option<usize>,

    /// Pass jobpipe's secrets (RUNPOD_AI_API_KEY, JOBPIPE_API_KEY) on to the handler.
    #[arg(long, env = "JOBPIPE_PASS_SECRETS", value_parser = BoolishValueParser::new())]
    pub pass_secrets: bool,
}

/// When a handler process is replaced though it still works, and what a
/// new one runs first.
#[derive(Args)]
pub struct RecycleArgs {
    /// Replace a handler process after it has run this many jobs (for
    /// handlers that leak) [default: never].
    #[arg(long, env = "JOBPIPE_MAX_JOBS_PER_HANDLER", value_name = "N")]
    pub max_jobs_per_handler: Option<NonZeroU64>,

    /// Replace a handler process after a job when the resident memory of its
    /// whole process group is above SIZE, e.g. 4GB [default: no limit].
    #[arg(long, env = "JOBPIPE_MAX_HANDLER_MEMORY", value_name = "SIZE", value_parser = parse_size)]
    pub max_handler_memory: Option<usize>,

    /// A job (JSON with an "input") run once on every new handler process
    /// after it is ready and before real jobs, e.g. to load a model's lazy
    /// parts; an error, a crash or no answer within --startup-timeout counts
    /// as a failed start.
    #[arg(long, env = "JOBPIPE_WARMUP_INPUT", value_name = "JSON")]
    pub warmup_input: Option<String>,
}

/// How handler processes are started and supervised.
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    pub argv: Vec<String>,
    pub mode: Mode,
    pub concurrency: usize,
    pub jobs_per_handler: usize,
    pub startup_timeout: Duration,
    pub job_timeout: Option<Duration>,
    /// The job timeout is the test job's default, not one that was given.
    pub job_timeout_is_default: bool,
    /// How long a job may go without a line from its handler; `None`: no
    /// limit. A job's own limit ([`crate::job::Job::stall_timeout`]) wins.
    pub stall_timeout: Option<Duration>,
    pub kill_grace: Duration,
    pub refresh_worker: bool,
    pub keep_handler_on_error: bool,
    pub max_output_size: usize,
    pub pass_secrets: bool,
    /// Unplanned handler ends in a row that make the handler count as
    /// failing every job; `None` for no limit.
    pub max_handler_failures: Option<u32>,
    /// Jobs after which a process is replaced.
    pub max_jobs: Option<u64>,
    /// Resident memory of a process group above which it is replaced after a job.
    pub max_memory: Option<u64>,
    /// The job every new process runs before real jobs.
    pub warmup: Option<Value>,
    /// Where a warm handler's lines past the offload threshold are
    /// written as they are read (with an object store; see
    /// [`super::spill`]).
    pub spill: Option<super::spill::Spill>,
}

impl HandlerConfig {
    /// The error of a job that ran past its timeout.
    pub fn timeout_message(&self) -> String {
        let limit = humantime::format_duration(self.job_timeout.unwrap_or_default());
        if self.job_timeout_is_default {
            format!("job timed out after {limit} with no answer (the default --job-timeout of a test job; give --job-timeout for a longer one, 0 for none)")
        } else {
            format!("job timed out after {limit} (--job-timeout)")
        }
    }

    /// The error of a job whose handler went quiet for `limit`.
    pub fn stall_message(limit: Duration) -> String {
        format!(
            "Stalled: the handler sent nothing for this job (no progress, stream partial, heartbeat or answer) for {} (--stall-timeout or the job's policy.stallTimeout), so it counts as hung and was replaced; a handler that works long in silence sends {{\"id\": ..., \"heartbeat\": true}} lines",
            humantime::format_duration(limit)
        )
    }
}

/// What the rest of the configuration decides about the handler.
#[derive(Debug, Clone, Copy)]
pub struct HandlerRole {
    /// An API-only process runs no handler, so it needs none.
    pub api_only: bool,
    /// The job source is one local test job, which gets a default timeout.
    pub test_job: bool,
    /// An object store takes large outputs, so the output limit is higher.
    pub object_store: bool,
}

/// `--max-output-size` unless given.
pub const DEFAULT_MAX_OUTPUT_SIZE: usize = 20_000_000;

impl HandlerArgs {
    /// Validates the handler's flags into its configuration; `argv` is
    /// what [`HandlerArgs::argv`] gave (none for an API-only process).
    pub fn into_config(
        self,
        argv: Vec<String>,
        recycle: RecycleArgs,
        role: HandlerRole,
    ) -> Result<HandlerConfig, ConfigError> {
        // A test job that gets no answer must not hang a terminal or a CI
        // run forever: it has a limit unless one was given (0: none).
        let job_timeout_is_default = role.test_job && self.job_timeout.is_none();
        let job_timeout = if job_timeout_is_default {
            Some(TEST_JOB_TIMEOUT)
        } else {
            self.job_timeout.filter(|t| !t.is_zero())
        };
        let handler = HandlerConfig {
            argv,
            mode: self.mode,
            concurrency: if role.api_only {
                0
            } else {
                self.concurrency.get()
            },
            jobs_per_handler: self.jobs_per_handler.get(),
            startup_timeout: self.startup_timeout,
            job_timeout,
            job_timeout_is_default,
            stall_timeout: self.stall_timeout.filter(|t| !t.is_zero()),
            kill_grace: self.kill_grace,
            refresh_worker: self.refresh_worker,
            keep_handler_on_error: self.keep_handler_on_error,
            max_output_size: self.max_output_size(role.object_store),
            pass_secrets: self.pass_secrets,
            max_handler_failures: Some(self.max_handler_failures).filter(|n| *n > 0),
            max_jobs: recycle.max_jobs_per_handler.map(NonZeroU64::get),
            max_memory: recycle.max_handler_memory.map(|size| size as u64),
            warmup: recycle
                .warmup_input
                .as_deref()
                .map(|text| crate::job::local_job(text, "--warmup-input"))
                .transpose()?,
            spill: None,
        };
        if handler.jobs_per_handler > MAX_JOBS_PER_HANDLER {
            return Err(ConfigError::Invalid(format!(
                "--jobs-per-handler {} is more than {MAX_JOBS_PER_HANDLER}; no handler multiplexes that many jobs",
                handler.jobs_per_handler
            )));
        }
        if handler.mode == Mode::Oneshot && handler.jobs_per_handler > 1 {
            return Err(ConfigError::Invalid(
                "--jobs-per-handler above 1 needs --mode worker (a one-shot process runs one job)"
                    .into(),
            ));
        }
        Ok(handler)
    }

    /// The largest output accepted: as given, else the default for
    /// whether an object store is configured.
    pub fn max_output_size(&self, object_store: bool) -> usize {
        self.max_output_size.unwrap_or(if object_store {
            crate::objects::config::MAX_OUTPUT_WITH_STORE
        } else {
            DEFAULT_MAX_OUTPUT_SIZE
        })
    }

    /// The handler command, after `--` or from `--handler`.
    pub fn argv(&self) -> Result<Vec<String>, ConfigError> {
        if !self.handler.is_empty() {
            return Ok(self.handler.clone());
        }
        let Some(line) = self
            .handler_line
            .as_deref()
            .filter(|l| !l.trim().is_empty())
        else {
            return Err(ConfigError::Invalid(
                "no handler given: put the handler command after `--` (jobpipe -- python3 handler.py) or set JOBPIPE_HANDLER".into(),
            ));
        };
        shlex::split(line).filter(|w| !w.is_empty()).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "JOBPIPE_HANDLER {line:?} has unbalanced quotes; quote it as a shell would"
            ))
        })
    }
}
