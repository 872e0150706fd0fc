//! Command line and environment configuration: the top of the tree.
//!
//! Each subsystem owns its flags as a clap `Args` struct and turns them into
//! its own configuration (`handler::config`, `source::test_input`,
//! `logging`, `delivery`, `source::runpod_config`, `job::identity`,
//! `source::queue_config` for the endpoint, `handler::config`'s recycling
//! flags, `fitness`). [`Cli`] only flattens them, in the order `--help`
//! shows them, and [`Cli::into_config`] chooses the job source. Every
//! option has a `JOBPIPE_*` environment variable (RunPod's own variables
//! where the platform sets them), and the flag wins over the variable.
//! Validation errors surface at start-up as one clear line and exit code 2.
//! No module below `main` and `supervisor` imports this one.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgMatches, CommandFactory, Parser};

use crate::delivery::DeliveryArgs;
use crate::endpoint::config::EndpointArgs;
use crate::error::ConfigError;
use crate::fitness::{Check, FitnessArgs};
use crate::handler::config::{HandlerArgs, HandlerConfig, HandlerRole, RecycleArgs};
use crate::handler::spill::Spill;
use crate::job::{Identity, IdentityArgs};
use crate::logging::LoggingArgs;
use crate::objects::config::{ObjectStoreArgs, ObjectStoreConfig};
use crate::source::runpod_config::{RunpodArgs, RunpodShared};
use crate::source::test_input::TestInputArgs;
use crate::source::SourceConfig;
use crate::units::parse_long_duration;

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
On/off variables accept 1/0, true/false, yes/no and on/off.\n\n\
Client commands for a running endpoint: jobpipe submit, status, jobs, cancel, retry (see jobpipe submit --help)."
)]
pub struct Cli {
    #[command(flatten)]
    pub handler: HandlerArgs,

    #[command(flatten)]
    pub test: TestInputArgs,

    #[command(flatten)]
    pub logging: LoggingArgs,

    /// Time the first SIGTERM/SIGINT allows in-flight jobs to finish and
    /// their results to be delivered before jobs are failed and handlers
    /// killed. At most 7 days.
    #[arg(long, env = "JOBPIPE_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = parse_long_duration)]
    pub shutdown_timeout: Duration,

    #[command(flatten)]
    pub delivery: DeliveryArgs,

    #[command(flatten)]
    pub runpod: RunpodArgs,

    #[command(flatten)]
    pub identity: IdentityArgs,

    /// Serve GET /health, /ready and /metrics (Prometheus) on this address,
    /// e.g. 0.0.0.0:9090 [default: off].
    #[arg(long, env = "JOBPIPE_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,

    #[command(flatten)]
    pub endpoint: EndpointArgs,

    #[command(flatten)]
    pub objects: ObjectStoreArgs,

    #[command(flatten)]
    pub recycle: RecycleArgs,

    #[command(flatten)]
    pub fitness: FitnessArgs,
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
    /// Where large payloads go, if anywhere.
    pub objects: Option<ObjectStoreConfig>,
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
            self.handler.argv()?
        };
        let source = self.source(cwd)?;
        let role = HandlerRole {
            api_only,
            test_job: matches!(source, SourceConfig::TestInput { .. }),
            object_store: self.objects.is_set(),
        };
        let objects = self
            .objects
            .clone()
            .into_config(|name| std::env::var(name).ok())?;
        let mut handler = self.handler.into_config(argv, self.recycle, role)?;
        // A source that uploads large outputs takes them from a file, so
        // a warm handler's long lines go to one as they are read.
        if !role.test_job {
            handler.spill = objects.as_ref().map(|store| Spill {
                dir: store.scratch_dir.join("lines"),
                // Smaller lines are cheaper kept in memory.
                at: store.offload_threshold.max(1 << 20),
            });
        }
        Ok(Config {
            handler,
            source,
            shutdown_timeout: self.shutdown_timeout,
            identity: self.identity.into_identity(),
            metrics_addr: self.metrics_addr,
            fitness: self.fitness.into_checks()?,
            objects,
        })
    }

    /// The one job source, by precedence: the endpoint's queue, a test job
    /// from `--test-input`, RunPod, `./test_input.json`.
    fn source(&self, cwd: &Path) -> Result<SourceConfig, ConfigError> {
        let expected_output = self
            .test
            .test_output
            .as_deref()
            .map(|text| {
                serde_json::from_str(text).map_err(|e| {
                    ConfigError::Invalid(format!("--test-output is not valid JSON: {e}"))
                })
            })
            .transpose()?;
        if self.endpoint.runs_queue() {
            if self.test.test_input.is_some() || expected_output.is_some() {
                return Err(ConfigError::Invalid(
                    "--serve-api (or a shared --queue) runs jobs from a queue; --test-input and --test-output run one job and exit: give one or the other".into(),
                ));
            }
            return self
                .endpoint
                .source(
                    self.delivery.spool_dir.clone(),
                    self.delivery.max_undelivered.get(),
                )
                .map(SourceConfig::Queue);
        }
        if let Some(text) = &self.test.test_input {
            let job = crate::job::local_job(text, "--test-input")?;
            return Ok(SourceConfig::TestInput {
                job,
                expected_output,
            });
        }
        if self.runpod.is_set() {
            if expected_output.is_some() {
                return Err(ConfigError::Invalid(
                    "--test-output needs a test job (--test-input); RunPod jobs have no expected output".into(),
                ));
            }
            let shared = RunpodShared {
                spool_dir: self.delivery.spool_dir.clone(),
                max_undelivered: self.delivery.max_undelivered.get(),
                max_output_size: self.handler.max_output_size(self.objects.is_set()),
                input_schema: self.endpoint.schema()?,
            };
            return self
                .runpod
                .clone()
                .into_config(shared)
                .map(SourceConfig::Runpod);
        }
        let file = cwd.join("test_input.json");
        if file.is_file() {
            let text =
                std::fs::read_to_string(&file).map_err(|source| ConfigError::Unreadable {
                    path: file.clone(),
                    source,
                })?;
            let job = crate::job::local_job(&text, "test_input.json")?;
            return Ok(SourceConfig::TestInput {
                job,
                expected_output,
            });
        }
        Err(ConfigError::NoJobSource)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::config::TEST_JOB_TIMEOUT;
    use crate::units::{parse_short_duration, parse_size};

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
        c.handler.handler_line = Some(r#"python3 "my handler.py" --flag"#.into());
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
        let err = parse_long_duration("300000000000years")
            .unwrap_err()
            .to_string();
        assert!(err.contains("longer than the limit of 7days"), "{err}");
        assert!(parse_short_duration("2h").is_err());
        assert!(parse_long_duration("soon")
            .unwrap_err()
            .to_string()
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
        let level = |text: &str| cli(&["--log-level", text, "--", "x"]);
        assert_eq!(
            level("warning").logging.level().unwrap(),
            tracing::Level::WARN
        );
        assert!(Cli::try_parse_from(["jobpipe", "--log-level", "loud", "--", "x"]).is_err());
    }
}
