//! The RunPod source's flags ([`RunpodArgs`]: RunPod's own variables, which
//! the platform sets) and what they validate into ([`RunpodConfig`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::Args;

use crate::error::ConfigError;
use crate::input_schema::InputSchema;

/// RunPod's worker endpoints and key.
#[derive(Args, Clone)]
pub struct RunpodArgs {
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

    /// File holding the RunPod API key (the Docker and Kubernetes secrets
    /// convention), instead of RUNPOD_AI_API_KEY.
    #[arg(long, env = "RUNPOD_AI_API_KEY_FILE", value_name = "FILE")]
    pub runpod_api_key_file: Option<PathBuf>,
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
    pub input_schema: Option<Arc<InputSchema>>,
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

/// What the RunPod source shares with the other parts of the configuration.
pub struct RunpodShared {
    pub spool_dir: PathBuf,
    pub max_undelivered: usize,
    pub max_output_size: usize,
    pub input_schema: Option<Arc<InputSchema>>,
}

impl RunpodArgs {
    /// Whether RunPod's take URL is set: this process is a RunPod worker.
    pub fn is_set(&self) -> bool {
        self.runpod_get_job.is_some()
    }

    /// Validates the RunPod endpoints and key (the take URL must be set).
    pub fn into_config(self, shared: RunpodShared) -> Result<RunpodConfig, ConfigError> {
        let take_url = self.runpod_get_job.unwrap_or_default();
        let done_url = self.runpod_post_output.ok_or_else(|| {
            ConfigError::Invalid(
                "RUNPOD_WEBHOOK_GET_JOB is set but RUNPOD_WEBHOOK_POST_OUTPUT is not: results would have nowhere to go".into(),
            )
        })?;
        let api_key = crate::secret::resolve_either(
            "RUNPOD_AI_API_KEY (--runpod-api-key)",
            "--runpod-api-key-file (RUNPOD_AI_API_KEY_FILE)",
            self.runpod_api_key.as_deref(),
            self.runpod_api_key_file.as_deref(),
        )?
        .ok_or_else(|| {
            ConfigError::Invalid(
                "RUNPOD_WEBHOOK_GET_JOB is set but RUNPOD_AI_API_KEY is not: set the endpoint's API key".into(),
            )
        })?
        .to_string();
        for (name, url) in [
            ("RUNPOD_WEBHOOK_GET_JOB", take_url.as_str()),
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
            .unwrap_or_else(|| done_url.replace("/job-done/", "/job-stream/"));
        Ok(RunpodConfig {
            take_url,
            done_url,
            stream_url,
            ping_url: self.runpod_ping.filter(|u| !u.is_empty()),
            ping_interval: Duration::from_millis(self.runpod_ping_interval),
            api_key,
            spool_dir: shared.spool_dir,
            max_undelivered: shared.max_undelivered,
            aggregate_stream: self
                .return_aggregate_stream
                .then_some(shared.max_output_size),
            input_schema: shared.input_schema,
        })
    }
}
