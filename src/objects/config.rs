//! The object store's own flags ([`ObjectStoreArgs`]) and what they
//! validate into ([`ObjectStoreConfig`]): where large payloads go, with
//! which credentials, and when an output is large enough to go there.
//!
//! Credentials are read from the environment only, never from a flag, so
//! they do not show in a process listing: the usual `AWS_*` variables, or
//! RunPod's `BUCKET_*` ones, which the runpod SDK's upload helper reads and
//! which RunPod users already set on their endpoints.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::Args;

use crate::error::ConfigError;
use crate::units::{parse_keep_duration, parse_long_duration, parse_size};

/// `--max-output-size` when an object store is configured: a result that
/// large is streamed to the store, not posted whole.
pub const MAX_OUTPUT_WITH_STORE: usize = 1 << 30;

/// Where large inputs and outputs are kept.
#[derive(Args, Clone)]
pub struct ObjectStoreArgs {
    /// S3-compatible object storage for payloads of any size, as
    /// s3://BUCKET/PREFIX [default: off]. An output larger than
    /// --offload-threshold is uploaded there and replaced by a reference
    /// {"object": {"url", "key", "size", "sha256", "contentType"}}.
    /// Credentials come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    /// AWS_SESSION_TOKEN, or RunPod's BUCKET_ACCESS_KEY_ID and
    /// BUCKET_SECRET_ACCESS_KEY; the region from AWS_REGION (default
    /// us-east-1).
    #[arg(long, env = "JOBPIPE_OBJECT_STORE", value_name = "URL")]
    pub object_store: Option<String>,

    /// The S3-compatible server's URL, e.g. https://ACCOUNT.r2.cloudflarestorage.com
    /// or http://127.0.0.1:9000 [default: BUCKET_ENDPOINT_URL or
    /// AWS_ENDPOINT_URL if set, else Amazon S3].
    #[arg(long, env = "JOBPIPE_OBJECT_STORE_ENDPOINT", value_name = "URL")]
    pub object_store_endpoint: Option<String>,

    /// Outputs larger than this go to the object store; smaller ones are
    /// returned inline. The default stays well under RunPod's ~20 MB
    /// result limit.
    #[arg(long, env = "JOBPIPE_OFFLOAD_THRESHOLD", default_value = "8MiB", value_parser = parse_size)]
    pub offload_threshold: usize,

    /// Stream partials larger than this go to the object store the same
    /// way (as stream-N.json); the default is RunPod's per-partial limit.
    #[arg(long, env = "JOBPIPE_OFFLOAD_STREAM_THRESHOLD", default_value = "1MiB", value_parser = parse_size)]
    pub offload_stream_threshold: usize,

    /// How long the presigned URL in an object reference stays valid. At
    /// most 7 days (S3's limit).
    #[arg(long, env = "JOBPIPE_PRESIGN_EXPIRY", default_value = "7days", value_parser = parse_long_duration)]
    pub presign_expiry: Duration,

    /// How long an upload is retried, with back-off, while the store
    /// cannot be reached. Meanwhile the output waits in the spool (on disk,
    /// across restarts) and the worker takes other jobs, up to
    /// --max-undelivered results waiting; then the job fails saying so. At
    /// most 7 days.
    #[arg(long, env = "JOBPIPE_OBJECT_STORE_RETRY", default_value = "1h", value_parser = parse_long_duration)]
    pub object_store_retry: Duration,

    /// Where each job's scratch directory is made (its path is the job
    /// line's "job_dir", JOBPIPE_JOB_DIR in one-shot mode): a handler's
    /// output_file must lie in it; it is removed after the job. Used only
    /// with --object-store.
    #[arg(
        long,
        env = "JOBPIPE_SCRATCH_DIR",
        default_value = "/var/tmp/jobpipe/jobs",
        value_name = "DIR"
    )]
    pub scratch_dir: std::path::PathBuf,

    /// Hosts that job inputs may be fetched from by URL
    /// ({"object": {"url": ...}}), as host or host:port, comma separated;
    /// the entry `*` allows any host on a public address. The object store
    /// is always allowed; loopback, private and link-local addresses only
    /// when named here as an address (127.0.0.1:8000, localhost) [default:
    /// none].
    #[arg(
        long,
        env = "JOBPIPE_FETCH_ALLOW",
        value_delimiter = ',',
        value_name = "HOSTS"
    )]
    pub fetch_allow: Vec<String>,

    /// Largest input file fetched for a job (from the store or a URL).
    #[arg(long, env = "JOBPIPE_FETCH_MAX_SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub fetch_max_size: usize,

    /// Longest one input file may take to fetch. At most 7 days.
    #[arg(long, env = "JOBPIPE_FETCH_TIMEOUT", default_value = "10m", value_parser = parse_long_duration)]
    pub fetch_timeout: Duration,

    /// Keep a job's objects when the endpoint's retention deletes the job,
    /// and uploads past --upload-lifetime.
    #[arg(long, env = "JOBPIPE_KEEP_OBJECTS", value_parser = BoolishValueParser::new())]
    pub keep_objects: bool,

    /// How long an input uploaded through the endpoint's POST /uploads is
    /// kept, counted from when it was put in the store; then the
    /// endpoint's housekeeping deletes it (unless --keep-objects). From 1s
    /// to 1year; give every process sharing a queue the same [default:
    /// --presign-expiry plus the longest result retention of any endpoint,
    /// 7days 30m with their defaults].
    #[arg(long, env = "JOBPIPE_UPLOAD_LIFETIME", value_name = "DURATION", value_parser = parse_keep_duration)]
    pub upload_lifetime: Option<Duration>,
}

/// Access keys for the store; shown as redacted.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: Arc<str>,
    pub secret_access_key: Arc<str>,
    pub session_token: Option<Arc<str>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(redacted)")
    }
}

/// The validated object-store options.
#[derive(Debug, Clone)]
pub struct ObjectStoreConfig {
    pub bucket: String,
    /// Key prefix without slashes at either end; may be empty.
    pub prefix: String,
    /// The S3-compatible server, or `None` for Amazon S3.
    pub endpoint: Option<String>,
    pub region: String,
    /// `None`: the store is reached without signing (a public bucket) or
    /// with the instance's role, as object_store finds it.
    pub credentials: Option<Credentials>,
    pub offload_threshold: usize,
    pub offload_stream_threshold: usize,
    pub presign_expiry: Duration,
    pub retry_for: Duration,
    pub keep_objects: bool,
    /// `--upload-lifetime`; `None`: the endpoint's default
    /// ([`super::retention::upload_lifetime`]).
    pub upload_lifetime: Option<Duration>,
    /// Where job directories are made.
    pub scratch_dir: std::path::PathBuf,
    pub fetch_allow: Vec<String>,
    pub fetch_max_size: u64,
    pub fetch_timeout: Duration,
}

impl ObjectStoreConfig {
    /// The `host:port`s the store is reached at, which input URLs may name.
    pub fn endpoints(&self) -> Vec<String> {
        match self
            .endpoint
            .as_deref()
            .and_then(|e| reqwest::Url::parse(e).ok())
        {
            Some(url) => vec![format!(
                "{}:{}",
                url.host_str().unwrap_or_default().trim_matches(['[', ']']),
                url.port_or_known_default().unwrap_or(443)
            )],
            None => vec![
                format!("{}.s3.{}.amazonaws.com:443", self.bucket, self.region),
                format!("s3.{}.amazonaws.com:443", self.region),
            ],
        }
    }

    /// The store's URL as a user wrote it, for messages.
    pub fn url(&self) -> String {
        match self.prefix.as_str() {
            "" => format!("s3://{}", self.bucket),
            prefix => format!("s3://{}/{prefix}", self.bucket),
        }
    }
}

impl ObjectStoreArgs {
    /// Whether a store is configured (which raises `--max-output-size`'s default).
    pub fn is_set(&self) -> bool {
        self.object_store.is_some()
    }

    /// Validates the flags and reads the credentials from `env`.
    pub fn into_config(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ObjectStoreConfig>, ConfigError> {
        let Some(url) = self.object_store else {
            return Ok(None);
        };
        let (bucket, prefix) = parse_url(&url)?;
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let endpoint = self
            .object_store_endpoint
            .or_else(|| env("BUCKET_ENDPOINT_URL"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        if let Some(endpoint) = &endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "--object-store-endpoint {endpoint:?} is not an http:// or https:// URL; write e.g. https://s3.example.com"
                )));
            }
        }
        let credentials = credentials(&env)?;
        let expiry_limit = Duration::from_secs(7 * 24 * 3600);
        if self.presign_expiry > expiry_limit || self.presign_expiry.is_zero() {
            return Err(ConfigError::Invalid(
                "--presign-expiry must be more than 0 and at most 7days (S3's limit for a presigned URL)".into(),
            ));
        }
        if self
            .upload_lifetime
            .is_some_and(|d| d < Duration::from_secs(1))
        {
            return Err(ConfigError::Invalid(
                "--upload-lifetime must be at least 1s; write e.g. 7days, or leave it out for --presign-expiry plus the result retention".into(),
            ));
        }
        Ok(Some(ObjectStoreConfig {
            bucket,
            prefix,
            endpoint,
            region: env("AWS_REGION")
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            credentials,
            offload_threshold: self.offload_threshold,
            offload_stream_threshold: self.offload_stream_threshold,
            presign_expiry: self.presign_expiry,
            retry_for: self.object_store_retry,
            keep_objects: self.keep_objects,
            upload_lifetime: self.upload_lifetime,
            scratch_dir: self.scratch_dir,
            fetch_allow: self
                .fetch_allow
                .into_iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            fetch_max_size: self.fetch_max_size as u64,
            fetch_timeout: self.fetch_timeout,
        }))
    }
}

/// Splits `s3://bucket/prefix` into its bucket and prefix.
fn parse_url(url: &str) -> Result<(String, String), ConfigError> {
    let bad = |why: &str| {
        ConfigError::Invalid(format!(
            "--object-store {url:?} {why}; write s3://BUCKET or s3://BUCKET/PREFIX"
        ))
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("is not an s3:// URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid_bucket {
        return Err(bad(
            "names no valid bucket (3 to 63 lowercase letters, digits, dots and dashes)",
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|part| part == "." || part == "..") {
        return Err(bad("has . or .. in its prefix"));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

/// The access keys from the AWS variables, else RunPod's BUCKET_* ones.
fn credentials(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Credentials>, ConfigError> {
    for (id, secret, token) in [
        (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            Some("AWS_SESSION_TOKEN"),
        ),
        ("BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", None),
    ] {
        match (env(id), env(secret)) {
            (Some(key), Some(secret_key)) => {
                return Ok(Some(Credentials {
                    access_key_id: key.into(),
                    secret_access_key: secret_key.into(),
                    session_token: token.and_then(env).map(Arc::from),
                }))
            }
            (None, None) => {}
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "only one of {id} and {secret} is set; the object store needs both"
                )))
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        store: ObjectStoreArgs,
    }

    fn config(args: &[&str], vars: &[(&str, &str)]) -> Result<Option<ObjectStoreConfig>, String> {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cli.store
            .into_config(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn off_unless_a_store_is_given() {
        assert!(config(&[], &[]).unwrap().is_none());
    }

    #[test]
    fn url_endpoint_and_runpod_credentials() {
        let c = config(
            &["--object-store", "s3://my-bucket/jobs/out/"],
            &[
                ("BUCKET_ENDPOINT_URL", "http://127.0.0.1:9000"),
                ("BUCKET_ACCESS_KEY_ID", "id"),
                ("BUCKET_SECRET_ACCESS_KEY", "secret"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.bucket, "my-bucket");
        assert_eq!(c.prefix, "jobs/out");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(&*c.credentials.as_ref().unwrap().access_key_id, "id");
        assert_eq!(c.offload_threshold, 8 << 20);
        assert_eq!(c.presign_expiry, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.upload_lifetime, None, "the endpoint's default");
        assert!(!format!("{c:?}").contains("secret"), "{c:?}");
    }

    #[test]
    fn mistakes_are_named() {
        let err = config(&["--object-store", "https://bucket"], &[]).unwrap_err();
        assert!(err.contains("is not an s3:// URL"), "{err}");
        let err = config(&["--object-store", "s3://B"], &[]).unwrap_err();
        assert!(err.contains("no valid bucket"), "{err}");
        let err = config(
            &["--object-store", "s3://bucket"],
            &[("AWS_ACCESS_KEY_ID", "a")],
        )
        .unwrap_err();
        assert!(err.contains("only one of AWS_ACCESS_KEY_ID"), "{err}");
        let err = config(
            &[
                "--object-store",
                "s3://bucket",
                "--object-store-endpoint",
                "localhost:9000",
            ],
            &[],
        )
        .unwrap_err();
        assert!(err.contains("not an http:// or https:// URL"), "{err}");
    }

    #[test]
    fn upload_lifetime_from_a_second_to_a_year() {
        let store = ["--object-store", "s3://bucket", "--upload-lifetime"];
        let lifetime = |value: &str| {
            let args: Vec<&str> = store.iter().copied().chain([value]).collect();
            config(&args, &[]).map(|c| c.unwrap().upload_lifetime.unwrap())
        };
        assert_eq!(lifetime("30days").unwrap(), Duration::from_secs(30 * 86400));
        assert_eq!(lifetime("1s").unwrap(), Duration::from_secs(1));
        let err = lifetime("0s").unwrap_err();
        assert!(
            err.contains("--upload-lifetime must be at least 1s"),
            "{err}"
        );
        assert_eq!(lifetime("1year").unwrap(), Duration::from_secs(31_557_600));
        let err = lifetime("400days").unwrap_err();
        assert!(err.contains("longer than the limit of 1year"), "{err}");
    }
}
