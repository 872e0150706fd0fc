//! The endpoint's options (`--serve-api`, `--queue`, `--api-key`, ...),
//! flattened into [`crate::config::Cli`], and their validation into a
//! [`QueueSourceConfig`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::api::Limits;
use super::keys::KeyRing;
use super::queue::endpoint_name_error;
use super::queue::postgres::DEFAULT_POOL_SIZE;
use super::queue::stores::{self, QueueLocation, DEFAULT_QUEUE};
use super::source::QueueSourceConfig;
use crate::endpoint::api::JobDefaults;
use crate::endpoint::settings::EndpointSettings;
use crate::error::ConfigError;
use crate::input_schema::InputSchema;
use crate::units::{parse_long_duration, parse_short_duration, parse_size};

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

    /// Connections to a PostgreSQL queue this process keeps at most,
    /// besides one that listens for notifications. Keep the fleet's total
    /// under the server's max_connections.
    #[arg(
        long,
        env = "JOBPIPE_QUEUE_POOL_SIZE",
        default_value_t = NonZeroUsize::new(DEFAULT_POOL_SIZE).expect("not zero"),
        value_name = "N"
    )]
    pub queue_pool_size: NonZeroUsize,

    /// Where this process listens for a PostgreSQL queue's notifications
    /// (a job queued, a job ended). Default: a connection to --queue. Behind
    /// PgBouncer in transaction mode, which cannot hold a LISTEN, give a
    /// postgres:// URL that reaches the same database directly, or `off`
    /// to look at the database every 250 ms instead (jittered; costs a
    /// statement per process each time). Either also sends every
    /// statement unnamed, as transaction pooling needs; without it, the
    /// hot statements are prepared once per connection.
    #[arg(
        long,
        env = "JOBPIPE_QUEUE_LISTEN_URL",
        value_name = "URL|off",
        hide_env_values = true
    )]
    pub queue_listen_url: Option<String>,

    /// An endpoint whose jobs this worker takes (repeat the flag, or list
    /// names separated by commas). Jobs are submitted to an endpoint at
    /// /v2/NAME/run; the routes at the root are the endpoint "default".
    #[arg(
        long = "endpoint",
        env = "JOBPIPE_ENDPOINT",
        value_name = "NAME",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub endpoints: Vec<String>,

    /// The longest a job should wait before it starts: /v2/NAME/scale
    /// and /health answer how many workers would keep waits under it
    /// (docs/autoscaling.md).
    #[arg(long, env = "JOBPIPE_TARGET_WAIT", default_value = "30s", value_parser = parse_long_duration)]
    pub target_wait: Duration,

    /// Serve the endpoint API and run no handlers: workers sharing the same
    /// postgres:// --queue run the jobs. Implies --serve-api; no handler
    /// command is needed.
    #[arg(long, env = "JOBPIPE_API_ONLY")]
    pub api_only: bool,

    /// Key callers must send as `Authorization: Bearer KEY` on every API
    /// route; never logged. Without a key the API listens only on a
    /// loopback address, unless --insecure-no-auth is given. An empty key
    /// is an error. Prefer the variable or --api-key-file: a flag is seen
    /// in the process list.
    #[arg(
        long,
        env = "JOBPIPE_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,

    /// File holding the API key (its first line; the Docker and Kubernetes
    /// secrets convention), instead of --api-key.
    #[arg(long, env = "JOBPIPE_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// TOML file of API keys, one [[keys]] table each: name (the tenant),
    /// key or key_sha256, endpoints (["*"] for all), role ("submit" or
    /// "read") and an optional rate ("20/s"). Read again on SIGHUP. May be
    /// given with --api-key, which then keeps every right.
    #[arg(long, env = "JOBPIPE_API_KEYS", value_name = "FILE")]
    pub api_keys: Option<PathBuf>,

    /// Serve the API without a key on an address other than loopback:
    /// anyone who can reach it can submit, read and cancel jobs. Logged at
    /// WARN on every start.
    #[arg(long, env = "JOBPIPE_INSECURE_NO_AUTH", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_no_auth: bool,

    /// Time a request's header may take from its first byte (for a new
    /// connection, from its opening); a slower one is closed. At most 1 hour.
    #[arg(long, env = "JOBPIPE_API_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_short_duration)]
    pub api_header_timeout: Duration,

    /// Time a keep-alive connection may wait with no request before it is
    /// closed. At most 1 hour.
    #[arg(long, env = "JOBPIPE_API_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_short_duration)]
    pub api_idle_timeout: Duration,

    /// A request body that sends nothing for this long is cut (408), and so
    /// is one slower on average than --api-body-min-rate once this long has
    /// passed. At most 1 hour.
    #[arg(long, env = "JOBPIPE_API_BODY_TIMEOUT", default_value = "30s", value_parser = parse_short_duration)]
    pub api_body_timeout: Duration,

    /// The slowest average a request body may arrive at, per second, e.g.
    /// 1KB (a 10 MB body then has 10,000 s).
    #[arg(long, env = "JOBPIPE_API_BODY_MIN_RATE", default_value = "1KB", value_name = "SIZE", value_parser = parse_size)]
    pub api_body_min_rate: usize,

    /// Most connections open at once; one more is answered 503 and closed.
    /// Keep it well under the open-file limit.
    #[arg(
        long,
        env = "JOBPIPE_API_MAX_CONNECTIONS",
        default_value = "1024",
        value_name = "N"
    )]
    pub api_max_connections: NonZeroUsize,

    /// TOML file of per-endpoint settings, one [endpoints.NAME] table each:
    /// input_schema (a path from the file's folder), max_attempts (1 to
    /// 100), ttl, execution_timeout and result_retention (durations like
    /// "10m"), every key optional. An endpoint not in the file gets the
    /// flags' settings. Read at start only (no reload on SIGHUP). See
    /// "Per-endpoint settings" in the README.
    #[arg(long = "endpoints", env = "JOBPIPE_ENDPOINTS", value_name = "FILE")]
    pub endpoints_file: Option<PathBuf>,

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

    /// File holding the webhook secret (its first line), instead of
    /// --webhook-secret.
    #[arg(long, env = "JOBPIPE_WEBHOOK_SECRET_FILE", value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
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
        let mut endpoints: Vec<String> = Vec::new();
        for name in &self.endpoints {
            if let Some(why) = endpoint_name_error(name) {
                return Err(ConfigError::Invalid(format!("--endpoint: {why}")));
            }
            if !endpoints.contains(name) {
                endpoints.push(name.clone());
            }
        }
        let schema = self.schema()?;
        let defaults = JobDefaults {
            max_attempts: self.max_attempts.get(),
            ..JobDefaults::default()
        }
        .with_retention(self.result_retention);
        let settings =
            EndpointSettings::load(self.endpoints_file.as_deref(), defaults, schema.clone())?;
        // A job's own endpoint's schema was checked at submission.
        let schema = schema.filter(|_| !settings.has_own_schemas());
        let api_key = crate::secret::resolve_either(
            "--api-key (JOBPIPE_API_KEY)",
            "--api-key-file (JOBPIPE_API_KEY_FILE)",
            self.api_key.as_deref(),
            self.api_key_file.as_deref(),
        )?;
        let api_addr = if self.serve_api || self.api_only {
            let addr = self.api_addr()?;
            self.check_exposure(addr, api_key.is_some() || self.api_keys.is_some())?;
            Some(addr)
        } else {
            None
        };
        Ok(QueueSourceConfig {
            queue: QueueLocation::parse(&self.queue, std::env::var("PGPASSWORD").ok())?
                .with_pool_size(self.queue_pool_size.get())
                .with_listen(
                    self.queue_listen_url.as_deref(),
                    std::env::var("PGPASSWORD").ok(),
                )?,
            api_addr,
            keys: match (&api_key, &self.api_keys) {
                (None, None) => None,
                (key, file) => Some(Arc::new(KeyRing::load(file.as_deref(), key.as_deref())?)),
            },
            api_limits: Limits {
                header_timeout: self.api_header_timeout,
                idle_timeout: self.api_idle_timeout,
                body_timeout: self.api_body_timeout,
                body_min_rate: self.api_body_min_rate as u64,
                max_connections: self.api_max_connections.get(),
            },
            schema,
            settings: Arc::new(settings),
            lease: self.lease,
            spool_dir,
            max_undelivered,
            take_jobs: !self.api_only,
            endpoints: endpoints.into(),
            target_wait: self.target_wait,
            webhook_secret: crate::secret::resolve_either(
                "--webhook-secret (JOBPIPE_WEBHOOK_SECRET)",
                "--webhook-secret-file (JOBPIPE_WEBHOOK_SECRET_FILE)",
                self.webhook_secret.as_deref(),
                self.webhook_secret_file.as_deref(),
            )?,
        })
    }

    /// An API without a key may listen on loopback only, unless the user
    /// says otherwise, and then hears about it at every start.
    fn check_exposure(&self, addr: SocketAddr, has_key: bool) -> Result<(), ConfigError> {
        if has_key || addr.ip().is_loopback() {
            return Ok(());
        }
        if !self.insecure_no_auth {
            return Err(ConfigError::Invalid(format!(
                "the endpoint API would listen on {addr} without a key, open to anyone who can reach it; set JOBPIPE_API_KEY (or --api-key-file), listen on 127.0.0.1, or give --insecure-no-auth if that is really meant"
            )));
        }
        tracing::warn!(
            "the endpoint API listens on {addr} without a key (--insecure-no-auth): anyone who can reach it can submit, read and cancel jobs"
        );
        Ok(())
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
