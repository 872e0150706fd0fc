//! Command line and environment configuration.
//!
//! Everything jobpipe can be told lives in one clap struct, [`Cli`]: each
//! option has a `JOBPIPE_*` environment variable (RunPod's own variables where
//! the platform sets them), and the flag wins over the variable. [`Cli`] is
//! parsed once into the typed [`Config`] the rest of the program uses, so
//! validation errors surface at start-up as one clear line and exit code 2.

use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::ffi::OsString;

use clap::builder::BoolishValueParser;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgMatches, CommandFactory, Parser, ValueEnum};
use serde_json::Value;

use crate::error::ConfigError;
use crate::fitness::Check;

pub use crate::source::queue_config::EndpointArgs;

/// How the handler process is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One long-lived handler process per slot, fed one job line after another.
    Worker,
    /// A fresh process per job: the job on stdin, its whole stdout is the result.
    Oneshot,
}

/// Format of jobpipe's own log lines (on stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `LEVEL | job id | message` lines for people.
    Text,
    /// One `{"requestId", "message", "level"}` object per line (RunPod's log viewer).
    Json,
}

/// Command line of jobpipe. Every option can also be set by the environment
/// variable shown; the flag wins. Deliberately not `Debug`: it holds the
/// API key.
#[derive(Parser)]
#[command(
    name = "jobpipe",
    version,
    args_override_self = true,
    about = "Supervises a handler program and feeds it jobs over stdin/stdout.",
    long_about = "Supervises a handler program and feeds it jobs over stdin/stdout.\n\n\
Jobs come from one of: RunPod serverless (when RUNPOD_WEBHOOK_GET_JOB is set); \
jobpipe's own RunPod-compatible endpoint (--serve-api) over its queue, a SQLite file on \
one machine or a PostgreSQL database shared by many (--queue; a worker with a postgres:// \
--queue takes jobs without serving the API); one test job from --test-input; or one from \
./test_input.json. The handler is executed directly (no shell); see \
docs/handler-protocol.md for the line protocol it speaks.",
    after_help = "Exit codes: 0 ok; 1 the test job failed or its output did not match; \
2 invalid configuration or no job source; 3 the handler cannot start; \
4 the RunPod key was rejected; 5 shutdown was forced and in-flight jobs were failed; \
6 an internal or I/O error; 7 the handler crashed or exited --max-handler-failures times in a row; \
8 a fitness check (--require-*, --fitness-check) failed before any job was taken.\n\n\
On/off variables accept 1/0, true/false, yes/no and on/off."
)]
pub struct Cli {
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

    /// Largest result accepted from the handler; a larger one fails the job.
    #[arg(long, env = "JOBPIPE_MAX_OUTPUT_SIZE", default_value = "20MB", value_parser = parse_size)]
    pub max_output_size: usize,

    /// Pass jobpipe's secrets (RUNPOD_AI_API_KEY, JOBPIPE_API_KEY) on to the handler.
    #[arg(long, env = "JOBPIPE_PASS_SECRETS", value_parser = BoolishValueParser::new())]
    pub pass_secrets: bool,

    /// Run this one job (JSON with an "input") and exit 0 if it succeeded, 1 if not.
    #[arg(
        long,
        alias = "test_input",
        env = "JOBPIPE_TEST_INPUT",
        value_name = "JSON"
    )]
    pub test_input: Option<String>,

    /// Expected output of the test job; a mismatch exits 1.
    #[arg(
        long,
        alias = "test_output",
        env = "JOBPIPE_TEST_OUTPUT",
        value_name = "JSON"
    )]
    pub test_output: Option<String>,

    /// Log level: DEBUG, INFO, WARN (or WARNING), ERROR; NOTSET, the runpod
    /// SDK's "no logging", keeps errors [default: from RUNPOD_LOG_LEVEL, else
    /// RUNPOD_DEBUG_LEVEL, else DEBUG].
    #[arg(long, alias = "rp_log_level", env = "JOBPIPE_LOG_LEVEL", value_parser = parse_level)]
    pub log_level: Option<tracing::Level>,

    /// Log line format [default: json when RUNPOD_ENDPOINT_ID is set, else text].
    #[arg(long, env = "JOBPIPE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Time the first SIGTERM/SIGINT allows in-flight jobs to finish and
    /// their results to be delivered before jobs are failed and handlers
    /// killed. At most 7 days.
    #[arg(long, env = "JOBPIPE_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = parse_long_duration)]
    pub shutdown_timeout: Duration,

    /// Where results that could not be delivered by shutdown are kept until
    /// the next start.
    #[arg(
        long,
        env = "JOBPIPE_SPOOL_DIR",
        default_value = "/var/tmp/jobpipe/spool"
    )]
    pub spool_dir: PathBuf,

    /// How many results may await delivery (retried in memory and kept in
    /// the spool) before jobpipe stops taking jobs until delivery resumes.
    #[arg(
        long,
        env = "JOBPIPE_MAX_UNDELIVERED",
        default_value = "16",
        value_name = "N"
    )]
    pub max_undelivered: NonZeroUsize,

    /// Put the list of streamed partials in a streaming job's final output
    /// (a job whose partials together exceed --max-output-size fails).
    #[arg(long, env = "JOBPIPE_RETURN_AGGREGATE_STREAM", value_parser = BoolishValueParser::new())]
    pub return_aggregate_stream: bool,

    /// RunPod job-take URL template; setting it makes jobpipe a RunPod worker.
    #[arg(long, env = "RUNPOD_WEBHOOK_GET_JOB", value_name = "URL")]
    pub runpod_get_job: Option<String>,

    /// RunPod job-done URL template.
    #[arg(long, env = "RUNPOD_WEBHOOK_POST_OUTPUT", value_name = "URL")]
    pub runpod_post_output: Option<String>,

    /// RunPod job-stream URL template [default: job-done URL with /job-done/ → /job-stream/].
    #[arg(long, env = "RUNPOD_WEBHOOK_POST_STREAM", value_name = "URL")]
    pub runpod_post_stream: Option<String>,

    /// RunPod heartbeat URL template (no heartbeat when unset).
    #[arg(long, env = "RUNPOD_WEBHOOK_PING", value_name = "URL")]
    pub runpod_ping: Option<String>,

    /// Heartbeat period in milliseconds (1 ms to one hour).
    #[arg(
        long,
        env = "RUNPOD_PING_INTERVAL",
        default_value = "10000",
        value_name = "MS",
        value_parser = clap::value_parser!(u64).range(1..=3_600_000)
    )]
    pub runpod_ping_interval: u64,

    /// RunPod API key, sent verbatim in the Authorization header; never logged.
    #[arg(
        long,
        env = "RUNPOD_AI_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub runpod_api_key: Option<String>,

    /// This worker's id [default: a new random id].
    #[arg(long, env = "RUNPOD_POD_ID", value_name = "ID")]
    pub worker_id: Option<String>,

    /// Host name reported in error reports [default: the machine's host name].
    #[arg(long, env = "RUNPOD_POD_HOSTNAME", value_name = "NAME")]
    pub hostname: Option<String>,

    /// Serve GET /health, /ready and /metrics (Prometheus) on this address,
    /// e.g. 0.0.0.0:9090 [default: off].
    #[arg(long, env = "JOBPIPE_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,

    #[command(flatten)]
    pub endpoint: EndpointArgs,

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

    /// Fitness check before the first job: the file system holding PATH has
    /// SIZE free, e.g. /tmp:10GB. Repeatable (comma-separated in the
    /// variable). A failed check exits with code 8.
    #[arg(
        long,
        env = "JOBPIPE_REQUIRE_FREE_DISK",
        value_name = "PATH:SIZE",
        value_delimiter = ','
    )]
    pub require_free_disk: Vec<String>,

    /// Fitness check before the first job: at least SIZE of memory available
    /// (MemAvailable in /proc/meminfo).
    #[arg(long, env = "JOBPIPE_REQUIRE_MEMORY", value_name = "SIZE", value_parser = parse_size)]
    pub require_memory: Option<usize>,

    /// Fitness check before the first job: PATH exists (a model file, a
    /// mounted volume). Repeatable (comma-separated in the variable).
    #[arg(
        long,
        env = "JOBPIPE_REQUIRE_FILE",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub require_file: Vec<PathBuf>,

    /// Fitness check before the first job: `nvidia-smi -L` lists a GPU.
    #[arg(long, env = "JOBPIPE_REQUIRE_GPU", value_parser = BoolishValueParser::new())]
    pub require_gpu: bool,

    /// Fitness check before the first job: COMMAND exits 0 within
    /// --startup-timeout. Split into words like a shell would, run without
    /// one. Repeatable (one command in the variable).
    #[arg(long, env = "JOBPIPE_FITNESS_CHECK", value_name = "COMMAND")]
    pub fitness_check: Vec<String>,
}

/// Where jobs come from, decided once at start-up.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// One local test job, then exit.
    TestInput {
        job: Value,
        expected_output: Option<Value>,
    },
    /// RunPod serverless queue.
    Runpod(RunpodConfig),
    /// Jobpipe's own queue, with the endpoint API when asked for.
    Queue(crate::source::queue::QueueSourceConfig),
}

/// The RunPod worker endpoints and credentials.
#[derive(Clone)]
pub struct RunpodConfig {
    pub take_url: String,
    pub done_url: String,
    pub stream_url: String,
    pub ping_url: Option<String>,
    pub ping_interval: Duration,
    pub api_key: String,
    pub spool_dir: PathBuf,
    pub max_undelivered: usize,
    /// `--return-aggregate-stream`: the byte limit of the partials kept
    /// for the final output (`--max-output-size`); `None` when off.
    pub aggregate_stream: Option<usize>,
    /// `--input-schema`: jobs whose input breaks it fail before a handler sees them.
    pub input_schema: Option<std::sync::Arc<crate::input_schema::InputSchema>>,
}

impl std::fmt::Debug for RunpodConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunpodConfig")
            .field("take_url", &self.take_url)
            .field("done_url", &self.done_url)
            .field("api_key", &"<redacted>")
            .finish_non_exhaustive()
    }
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
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub handler: HandlerConfig,
    pub source: SourceConfig,
    pub shutdown_timeout: Duration,
    pub identity: Identity,
    /// Where health, readiness and metrics are served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// What must hold before the first job.
    pub fitness: Vec<Check>,
}

/// Who this worker is, as reported in pings and error reports.
#[derive(Debug, Clone)]
pub struct Identity {
    pub worker_id: String,
    pub hostname: String,
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
}

impl Cli {
    /// Validates the command line into a [`Config`]; `cwd` is where
    /// `test_input.json` is looked for.
    pub fn into_config(self, cwd: &Path) -> Result<Config, ConfigError> {
        // An API-only process runs no handler, so it needs none.
        let api_only = self.endpoint.api_only;
        let argv = if api_only {
            Vec::new()
        } else {
            self.handler_argv()?
        };
        let source = self.source(cwd)?;
        // A test job that gets no answer must not hang a terminal or a CI
        // run forever: it has a limit unless one was given (0: none).
        let test_job_default =
            matches!(source, SourceConfig::TestInput { .. }) && self.job_timeout.is_none();
        let job_timeout = if test_job_default {
            Some(TEST_JOB_TIMEOUT)
        } else {
            self.job_timeout.filter(|t| !t.is_zero())
        };
        let worker_id = self
            .worker_id
            .clone()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| format!("jobpipe-{}", uuid::Uuid::new_v4().simple()));
        let hostname = self.hostname.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into())
        });
        let handler = HandlerConfig {
            argv,
            mode: self.mode,
            concurrency: if api_only { 0 } else { self.concurrency.get() },
            jobs_per_handler: self.jobs_per_handler.get(),
            startup_timeout: self.startup_timeout,
            job_timeout,
            job_timeout_is_default: test_job_default,
            kill_grace: self.kill_grace,
            refresh_worker: self.refresh_worker,
            keep_handler_on_error: self.keep_handler_on_error,
            max_output_size: self.max_output_size,
            pass_secrets: self.pass_secrets,
            max_handler_failures: Some(self.max_handler_failures).filter(|n| *n > 0),
            max_jobs: self.max_jobs_per_handler.map(NonZeroU64::get),
            max_memory: self.max_handler_memory.map(|size| size as u64),
            warmup: self
                .warmup_input
                .as_deref()
                .map(|text| test_job(parse_json("--warmup-input", text)?, "--warmup-input"))
                .transpose()?,
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
        Ok(Config {
            handler,
            source,
            shutdown_timeout: self.shutdown_timeout,
            identity: Identity {
                worker_id,
                hostname,
            },
            metrics_addr: self.metrics_addr,
            fitness: self.fitness_checks()?,
        })
    }

    fn fitness_checks(&self) -> Result<Vec<Check>, ConfigError> {
        let mut checks = Vec::new();
        for text in &self.require_free_disk {
            checks.push(Check::free_disk(text)?);
        }
        if let Some(min) = self.require_memory {
            checks.push(Check::Memory { min: min as u64 });
        }
        checks.extend(self.require_file.iter().cloned().map(Check::File));
        if self.require_gpu {
            checks.push(Check::Gpu);
        }
        for line in &self.fitness_check {
            checks.push(Check::command(line)?);
        }
        Ok(checks)
    }

    fn handler_argv(&self) -> Result<Vec<String>, ConfigError> {
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

    fn source(&self, cwd: &Path) -> Result<SourceConfig, ConfigError> {
        let expected_output = self
            .test_output
            .as_deref()
            .map(|text| parse_json("--test-output", text))
            .transpose()?;
        if self.endpoint.runs_queue() {
            if self.test_input.is_some() || expected_output.is_some() {
                return Err(ConfigError::Invalid(
                    "--serve-api (or a shared --queue) runs jobs from a queue; --test-input and --test-output run one job and exit: give one or the other".into(),
                ));
            }
            return self
                .endpoint
                .source(self.spool_dir.clone(), self.max_undelivered.get())
                .map(SourceConfig::Queue);
        }
        if let Some(text) = &self.test_input {
            let job = test_job(parse_json("--test-input", text)?, "--test-input")?;
            return Ok(SourceConfig::TestInput {
                job,
                expected_output,
            });
        }
        if let Some(take_url) = &self.runpod_get_job {
            if expected_output.is_some() {
                return Err(ConfigError::Invalid(
                    "--test-output needs a test job (--test-input); RunPod jobs have no expected output".into(),
                ));
            }
            return self.runpod_source(take_url).map(SourceConfig::Runpod);
        }
        let file = cwd.join("test_input.json");
        if file.is_file() {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                ConfigError::Invalid(format!("cannot read {}: {e}", file.display()))
            })?;
            let job = test_job(parse_json("test_input.json", &text)?, "test_input.json")?;
            return Ok(SourceConfig::TestInput {
                job,
                expected_output,
            });
        }
        Err(ConfigError::NoJobSource)
    }

    fn runpod_source(&self, take_url: &str) -> Result<RunpodConfig, ConfigError> {
        let done_url = self.runpod_post_output.clone().ok_or_else(|| {
            ConfigError::Invalid(
                "RUNPOD_WEBHOOK_GET_JOB is set but RUNPOD_WEBHOOK_POST_OUTPUT is not: results would have nowhere to go".into(),
            )
        })?;
        let api_key = self.runpod_api_key.clone().ok_or_else(|| {
            ConfigError::Invalid(
                "RUNPOD_WEBHOOK_GET_JOB is set but RUNPOD_AI_API_KEY is not: set the endpoint's API key".into(),
            )
        })?;
        for (name, url) in [
            ("RUNPOD_WEBHOOK_GET_JOB", take_url),
            ("RUNPOD_WEBHOOK_POST_OUTPUT", done_url.as_str()),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be an http:// or https:// URL, got {url:?}"
                )));
            }
        }
        let stream_url = self
            .runpod_post_stream
            .clone()
            .unwrap_or_else(|| done_url.replace("/job-done/", "/job-stream/"));
        Ok(RunpodConfig {
            take_url: take_url.to_owned(),
            done_url,
            stream_url,
            ping_url: self.runpod_ping.clone().filter(|u| !u.is_empty()),
            ping_interval: Duration::from_millis(self.runpod_ping_interval),
            api_key,
            spool_dir: self.spool_dir.clone(),
            max_undelivered: self.max_undelivered.get(),
            aggregate_stream: self.return_aggregate_stream.then_some(self.max_output_size),
            input_schema: self.endpoint.schema()?,
        })
    }
}

/// Parses the command line and the environment. A bad value that came
/// from an environment variable is reported under the variable's name,
/// since that is where it must be fixed.
pub fn matches() -> Result<ArgMatches, clap::Error> {
    let args: Vec<OsString> = std::env::args_os().collect();
    Cli::command()
        .try_get_matches_from(&args)
        .map_err(|e| name_env_source(e, &args))
}

fn name_env_source(error: clap::Error, args: &[OsString]) -> clap::Error {
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return error;
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) = (
        error.get(ContextKind::InvalidArg),
        error.get(ContextKind::InvalidValue),
    ) else {
        return error;
    };
    let mut command = Cli::command();
    let Some(spec) = command.get_arguments().find(|a| {
        a.get_long()
            .is_some_and(|long| arg.split(' ').next() == Some(&format!("--{long}")))
    }) else {
        return error;
    };
    let (Some(var), Some(long)) = (spec.get_env(), spec.get_long()) else {
        return error;
    };
    let mut names = vec![long.to_owned()];
    names.extend(
        spec.get_all_aliases()
            .unwrap_or_default()
            .into_iter()
            .map(str::to_owned),
    );
    let own_args = args.iter().skip(1).take_while(|a| *a != "--");
    let on_command_line = own_args.filter_map(|a| a.to_str()).any(|a| {
        names
            .iter()
            .any(|n| a == format!("--{n}") || a.starts_with(&format!("--{n}=")))
    });
    if on_command_line || std::env::var_os(var).is_none() {
        return error;
    }
    let why = match error.get(ContextKind::ValidValue) {
        _ if matches!(spec.get_action(), clap::ArgAction::SetTrue) => {
            ": use 1/0, true/false, yes/no or on/off".to_owned()
        }
        Some(ContextValue::Strings(valid)) => format!("; use one of {}", valid.join(", ")),
        _ => std::error::Error::source(&error)
            .map(|cause| format!(": {cause}"))
            .unwrap_or_default(),
    };
    command.error(
        ErrorKind::ValueValidation,
        format!(
            "invalid value {value:?} in the environment variable {} (for --{long}){why}",
            var.to_string_lossy()
        ),
    )
}

/// The log level from `--log-level`, else RunPod's variables, else DEBUG.
pub fn log_level(cli: &Cli) -> Result<tracing::Level, ConfigError> {
    if let Some(level) = cli.log_level {
        return Ok(level);
    }
    for var in ["RUNPOD_LOG_LEVEL", "RUNPOD_DEBUG_LEVEL"] {
        if let Ok(text) = std::env::var(var) {
            if !text.is_empty() {
                return parse_level(&text).map_err(|e| ConfigError::Invalid(format!("{var}: {e}")));
            }
        }
    }
    Ok(tracing::Level::DEBUG)
}

/// The log format from `--log-format`, else JSON on RunPod, else text.
pub fn log_format(cli: &Cli) -> LogFormat {
    cli.log_format
        .unwrap_or_else(|| match std::env::var("RUNPOD_ENDPOINT_ID") {
            Ok(id) if !id.is_empty() => LogFormat::Json,
            _ => LogFormat::Text,
        })
}

fn parse_level(text: &str) -> Result<tracing::Level, String> {
    match text.trim().to_ascii_uppercase().as_str() {
        "DEBUG" => Ok(tracing::Level::DEBUG),
        "INFO" => Ok(tracing::Level::INFO),
        "WARN" | "WARNING" => Ok(tracing::Level::WARN),
        // The runpod SDK's NOTSET turns its logging off; a worker's errors
        // are still worth a line.
        "ERROR" | "NOTSET" => Ok(tracing::Level::ERROR),
        "TRACE" => Ok(tracing::Level::TRACE),
        other => Err(format!(
            "unknown log level {other:?}; use DEBUG, INFO, WARN or ERROR"
        )),
    }
}

/// Longest value of a duration that may reasonably be days: start-up, job,
/// shutdown, a queue's lease and result retention. A bound keeps every
/// deadline computed from it far from overflow, in memory and in the queue
/// database's millisecond columns.
const LONG_DURATION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest kill grace: a handler that needs longer to stop is stuck.
const SHORT_DURATION_MAX: Duration = Duration::from_secs(3600);
/// Most jobs one handler process may hold.
const MAX_JOBS_PER_HANDLER: usize = 10_000;
/// The job timeout of a test job when none is given: long enough for a
/// real model's test job, short enough that a handler that never answers
/// does not hang a CI run.
pub const TEST_JOB_TIMEOUT: Duration = Duration::from_secs(5 * 60);

pub(crate) fn parse_long_duration(text: &str) -> Result<Duration, String> {
    parse_duration_up_to(text, LONG_DURATION_MAX)
}

fn parse_short_duration(text: &str) -> Result<Duration, String> {
    parse_duration_up_to(text, SHORT_DURATION_MAX)
}

fn parse_duration_up_to(text: &str, max: Duration) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{e}; write a duration like 30s, 5m or 1h30m"))?;
    if duration > max {
        return Err(format!(
            "{text} is longer than the limit of {}",
            humantime::format_duration(max)
        ));
    }
    Ok(duration)
}

fn parse_size(text: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = text
        .parse()
        .map_err(|e| format!("{e}; write a size like 20MB, 512KiB or 1000000"))?;
    usize::try_from(size.as_u64()).map_err(|_| "size too large".into())
}

fn parse_json(what: &str, text: &str) -> Result<Value, ConfigError> {
    serde_json::from_str(text)
        .map_err(|e| ConfigError::Invalid(format!("{what} is not valid JSON: {e}")))
}

/// Checks a local test job: it must be an object with `input`; `id`
/// defaults to `local_test`.
fn test_job(mut job: Value, what: &str) -> Result<Value, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("jobpipe").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn test_input_gets_default_id_and_handler_from_after_dashes() {
        let config = cli(&["--test-input", r#"{"input": 1}"#, "--", "echo", "hi"])
            .into_config(Path::new("/nonexistent"))
            .unwrap();
        assert_eq!(config.handler.argv, ["echo", "hi"]);
        let SourceConfig::TestInput { job, .. } = config.source else {
            panic!("expected a test job")
        };
        assert_eq!(job["id"], "local_test");
    }

    #[test]
    fn a_test_job_has_a_default_timeout_unless_one_is_given() {
        let timeout = |extra: &[&str]| {
            let mut args = vec!["--test-input", r#"{"input": 1}"#];
            args.extend_from_slice(extra);
            args.extend_from_slice(&["--", "x"]);
            let config = cli(&args).into_config(Path::new("/nonexistent")).unwrap();
            (config.handler.job_timeout, config.handler.timeout_message())
        };
        let (limit, message) = timeout(&[]);
        assert_eq!(limit, Some(TEST_JOB_TIMEOUT));
        assert!(message.contains("5m"), "{message}");
        assert!(
            message.contains("default --job-timeout of a test job"),
            "{message}"
        );
        assert_eq!(timeout(&["--job-timeout", "0"]).0, None);
        let (limit, message) = timeout(&["--job-timeout", "1h"]);
        assert_eq!(limit, Some(Duration::from_secs(3600)));
        assert_eq!(message, "job timed out after 1h (--job-timeout)");
    }

    #[test]
    fn sdk_spelling_of_test_input_works() {
        let config = cli(&["--test_input", r#"{"input": 1, "id": "a"}"#, "--", "x"])
            .into_config(Path::new("/nonexistent"))
            .unwrap();
        assert!(matches!(config.source, SourceConfig::TestInput { job, .. } if job["id"] == "a"));
    }

    #[test]
    fn job_without_input_is_rejected_with_a_hint() {
        let err = cli(&["--test-input", r#"{"x": 1}"#, "--", "x"])
            .into_config(Path::new("/nonexistent"))
            .unwrap_err();
        assert!(err.to_string().contains("no \"input\" key"), "{err}");
    }

    #[test]
    fn no_job_source_is_its_own_error() {
        let err = cli(&["--", "x"])
            .into_config(Path::new("/nonexistent"))
            .unwrap_err();
        assert!(matches!(err, ConfigError::NoJobSource));
    }

    #[test]
    fn handler_line_is_split_like_a_shell_without_running_one() {
        let mut c = cli(&["--test-input", r#"{"input": 1}"#]);
        c.handler_line = Some(r#"python3 "my handler.py" --flag"#.into());
        let config = c.into_config(Path::new("/nonexistent")).unwrap();
        assert_eq!(config.handler.argv, ["python3", "my handler.py", "--flag"]);
    }

    #[test]
    fn a_worker_id_is_invented_when_none_is_given() {
        let config = cli(&["--test-input", r#"{"input": 1}"#, "--", "x"])
            .into_config(Path::new("/nonexistent"))
            .unwrap();
        assert!(config.identity.worker_id.starts_with("jobpipe-"));
        assert!(config.identity.worker_id.len() > 20);
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(
            parse_long_duration("10m").unwrap(),
            Duration::from_secs(600)
        );
        assert!(parse_long_duration("7days").is_ok());
        let err = parse_long_duration("300000000000years").unwrap_err();
        assert!(err.contains("longer than the limit of 7days"), "{err}");
        assert!(parse_short_duration("2h").is_err());
        assert!(parse_long_duration("soon")
            .unwrap_err()
            .contains("like 30s"));
        let absurd = Cli::try_parse_from(["jobpipe", "--kill-grace", "1000years", "--", "x"]);
        assert!(absurd.is_err());
        let absurd = Cli::try_parse_from(["jobpipe", "--runpod-ping-interval", "99999999999999"]);
        assert!(absurd.is_err());
        let never = Cli::try_parse_from(["jobpipe", "--runpod-ping-interval", "0"]);
        assert!(never.is_err(), "a heartbeat every 0 ms is refused");
    }

    #[test]
    fn queue_durations_are_bounded_like_the_others() {
        for flag in ["--lease", "--result-retention"] {
            let absurd = Cli::try_parse_from(["jobpipe", flag, "300000000000years", "--", "x"]);
            let err = absurd.err().expect("refused").to_string();
            assert!(
                err.contains("longer than the limit of 7days"),
                "{flag}: {err}"
            );
            let fine = Cli::try_parse_from(["jobpipe", flag, "90s", "--", "x"]).unwrap();
            let parsed = match flag {
                "--lease" => fine.endpoint.lease,
                _ => fine.endpoint.result_retention,
            };
            assert_eq!(parsed, Duration::from_secs(90));
        }
    }

    #[test]
    fn sizes_and_levels_parse() {
        assert_eq!(parse_size("20MB").unwrap(), 20_000_000);
        assert_eq!(parse_size("1KiB").unwrap(), 1024);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_level("warning").unwrap(), tracing::Level::WARN);
        assert!(parse_level("loud").is_err());
    }
}
