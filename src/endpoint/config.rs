//! The endpoint's options (`--serve-api`, `--queue`, `--api-key`, ...),
//! flattened into [`crate::config::Cli`], and their validation into a
//! [`QueueSourceConfig`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::queue::stores::{self, QueueLocation, DEFAULT_QUEUE};
use super::source::QueueSourceConfig;
use crate::endpoint::api::JobDefaults;
use crate::error::ConfigError;
use crate::input_schema::InputSchema;
use crate::units::parse_long_duration;

/// Options of the self-hosted endpoint.
#[derive(Args)]
pub struct EndpointArgs {
    /// Serve RunPod's endpoint API (/run, /runsync, /status, /stream,
    /// /cancel, /retry, /purge-queue, /health) and run its jobs from --queue.
    #[arg(long, alias = "rp_serve_api", env = "JOBPIPE_SERVE_API", value_parser = clap::builder::BoolishValueParser::new())]
    pub serve_api: bool,

    /// Address the endpoint API listens on.
    #[arg(
        long,
        env = "JOBPIPE_API_ADDR",
        default_value = "127.0.0.1:8000",
        value_name = "HOST:PORT"
    )]
    pub api_addr: String,

    /// Host of the endpoint API, in the RunPod SDK's spelling (replaces the host of --api-addr).
    #[arg(long = "rp_api_host", value_name = "HOST")]
    pub rp_api_host: Option<String>,

    /// Port of the endpoint API, in the RunPod SDK's spelling (replaces the port of --api-addr).
    #[arg(long = "rp_api_port", value_name = "PORT")]
    pub rp_api_port: Option<u16>,

    /// The job queue: sqlite:PATH (sqlite:/abs/path, sqlite:///abs/path or
    /// sqlite:relative/path), an embedded database file owned by this
    /// process (its directory is created); or
    /// postgres://USER@HOST[:PORT]/DATABASE, shared by any number of jobpipe
    /// processes on any number of machines (the password in the URL or in
    /// PGPASSWORD; never printed). With a postgres:// queue and no
    /// --serve-api, this process is a worker only: it runs the queue's jobs
    /// and serves no API.
    #[arg(
        long,
        env = "JOBPIPE_QUEUE",
        default_value = DEFAULT_QUEUE,
        value_name = "URL",
        hide_env_values = true
    )]
    pub queue: String,

    /// Serve the endpoint API and run no handlers: workers sharing the same
    /// postgres:// --queue run the jobs. Implies --serve-api; no handler
    /// command is needed.
    #[arg(long, env = "JOBPIPE_API_ONLY")]
    pub api_only: bool,

    /// Key callers must send as `Authorization: Bearer KEY` on every API
    /// route [default: no key needed]; never logged.
    #[arg(
        long,
        env = "JOBPIPE_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,

    /// JSON Schema file every job's "input" must match; /run and /runsync
    /// answer 400 listing the violations, and nothing is queued.
    #[arg(long, env = "JOBPIPE_INPUT_SCHEMA", value_name = "FILE")]
    pub input_schema: Option<PathBuf>,

    /// How long a taken job stays leased without renewal; jobpipe renews
    /// it while the handler holds the job. A job whose lease runs out is
    /// queued again. From 1s to 7 days.
    #[arg(long, env = "JOBPIPE_LEASE", default_value = "30s", value_parser = parse_long_duration)]
    pub lease: Duration,

    /// Attempts a job gets when its handler crashes or its worker vanishes,
    /// unless its policy.maxAttempts says otherwise.
    #[arg(long, env = "JOBPIPE_MAX_ATTEMPTS", default_value = "3")]
    pub max_attempts: NonZeroU32,

    /// How long the final status of a /run job can be read before it is
    /// deleted (/runsync results: 1 minute, or this if shorter). At most 7
    /// days.
    #[arg(long, env = "JOBPIPE_RESULT_RETENTION", default_value = "30m", value_parser = parse_long_duration)]
    pub result_retention: Duration,

    /// Secret that signs webhook posts: each carries `X-Jobpipe-Signature:
    /// t=UNIX_SECONDS,v1=HEX`, HEX being the HMAC-SHA256, keyed with the
    /// secret, of "UNIX_SECONDS.BODY" (Stripe's scheme; check the time to
    /// refuse replays) [default: posts are not signed]; never logged.
    #[arg(
        long,
        env = "JOBPIPE_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub webhook_secret: Option<String>,
}

impl EndpointArgs {
    /// The compiled `--input-schema`, if one is given.
    pub(crate) fn schema(&self) -> Result<Option<Arc<InputSchema>>, ConfigError> {
        Ok(self
            .input_schema
            .as_deref()
            .map(InputSchema::load)
            .transpose()?
            .map(Arc::new))
    }

    /// Whether --queue names a queue other processes can share.
    pub(crate) fn shared_queue(&self) -> bool {
        stores::is_shared(&self.queue)
    }

    /// Whether this process takes its jobs from --queue: it serves the API,
    /// or works for a shared queue.
    pub(crate) fn runs_queue(&self) -> bool {
        self.serve_api || self.api_only || self.shared_queue()
    }

    pub(crate) fn source(
        &self,
        spool_dir: PathBuf,
        max_undelivered: usize,
    ) -> Result<QueueSourceConfig, ConfigError> {
        if self.api_only && !self.shared_queue() {
            return Err(ConfigError::Invalid(
                "--api-only needs a queue that workers elsewhere share: give --queue postgres://USER@HOST/DATABASE".into(),
            ));
        }
        if self.lease < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "--lease must be at least 1s: it is renewed every third of its length".into(),
            ));
        }
        let schema = self.schema()?;
        let mut defaults = JobDefaults {
            max_attempts: self.max_attempts.get(),
            run_retention: self.result_retention,
            ..JobDefaults::default()
        };
        defaults.sync_retention = defaults.sync_retention.min(self.result_retention);
        Ok(QueueSourceConfig {
            queue: QueueLocation::parse(&self.queue, std::env::var("PGPASSWORD").ok())?,
            api_addr: if self.serve_api || self.api_only {
                Some(self.api_addr()?)
            } else {
                None
            },
            api_key: self
                .api_key
                .clone()
                .filter(|k| !k.is_empty())
                .map(Arc::from),
            schema,
            defaults,
            lease: self.lease,
            spool_dir,
            max_undelivered,
            take_jobs: !self.api_only,
            webhook_secret: self
                .webhook_secret
                .clone()
                .filter(|s| !s.is_empty())
                .map(Arc::from),
        })
    }

    fn api_addr(&self) -> Result<SocketAddr, ConfigError> {
        let (host, port) = match self.api_addr.rsplit_once(':') {
            Some((host, port)) => (
                host.trim_matches(['[', ']']).to_owned(),
                port.parse::<u16>().ok(),
            ),
            None => (self.api_addr.clone(), None),
        };
        let Some(port) = self.rp_api_port.or(port) else {
            return Err(ConfigError::Invalid(format!(
                "--api-addr {:?} needs a port, like 127.0.0.1:8000",
                self.api_addr
            )));
        };
        let host = self.rp_api_host.clone().unwrap_or(host);
        (host.as_str(), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "cannot resolve the API host {host:?}; give an address like 127.0.0.1 or 0.0.0.0"
                ))
            })
    }
}
