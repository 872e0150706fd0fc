//! The client's command line: `jobpipe submit|status|jobs|cancel|retry`,
//! a clap parser of its own, so the daemon's flags and `--help` stay as
//! they are. Every flag has its variable; the flag wins over it.

use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use super::error::ClientError;

/// Shown after every command's `--help`.
const AFTER_HELP: &str = "Exit codes: 0 ok; 1 the job did not end COMPLETED, the server answered with an error, \
or it cannot be reached; 2 invalid usage or input; 130 interrupted while waiting (the job keeps running).\n\n\
The daemon's own options: jobpipe --help.";

/// Talks to a running jobpipe endpoint's RunPod-style API over HTTP.
#[derive(Parser)]
#[command(
    name = "jobpipe",
    version,
    args_override_self = true,
    about = "Client of a jobpipe endpoint's RunPod-style API: submit jobs, follow them, list, cancel and retry them.",
    after_help = AFTER_HELP
)]
pub(crate) struct ClientCli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Submit a job (POST /run) and print its id; with --wait, follow it
    /// to its end and print its output.
    #[command(after_help = AFTER_HELP)]
    Submit(SubmitArgs),
    /// Print a job's status (GET /status/ID) as JSON.
    #[command(after_help = AFTER_HELP)]
    Status(IdArgs),
    /// List jobs (GET /jobs): a table on a terminal, otherwise one JSON
    /// object per line.
    #[command(after_help = AFTER_HELP)]
    Jobs(JobsArgs),
    /// Cancel a job (POST /cancel/ID) and print the answer.
    #[command(after_help = AFTER_HELP)]
    Cancel(IdArgs),
    /// Queue a FAILED or TIMED_OUT job again (POST /retry/ID) and print the
    /// answer.
    #[command(after_help = AFTER_HELP)]
    Retry(IdArgs),
}

/// Where the endpoint is and the key it wants; every command takes them.
/// Deliberately not `Debug`: it holds the key.
#[derive(Args)]
pub(crate) struct Connection {
    /// The endpoint's base URL, e.g. http://host:8000/v2/sdxl; requests go
    /// to URL/run, URL/status/ID and so on. Required.
    #[arg(long, env = "JOBPIPE_ENDPOINT_URL", value_name = "URL")]
    pub endpoint: Option<String>,

    /// The API key, sent as `Authorization: Bearer KEY`. Prefer the
    /// variable: a key on the command line is visible in the process list.
    /// When neither is set, RUNPOD_API_KEY is used [default: no key].
    #[arg(
        long,
        env = "JOBPIPE_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
}

#[derive(Args)]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    pub connection: Connection,

    /// The job's input, as JSON (sent as {"input": JSON}). Without
    /// --input or --input-file, the JSON is read from stdin.
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    pub input: Option<String>,

    /// A file holding the job's input as JSON ("-" for stdin).
    #[arg(long, value_name = "FILE")]
    pub input_file: Option<std::path::PathBuf>,

    /// URL the endpoint POSTs the job's result to when it ends (the job's
    /// "webhook") [default: none].
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,

    /// The job's priority, sent as policy.priority: higher runs first
    /// (the server says its range) [default: the server's, 0].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i32>,

    /// Sent as the Idempotency-Key header: submitting the same body with
    /// the same key again gives the first job instead of a new one
    /// [default: none].
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,

    /// Follow the job until it ends: its status and latest progress on
    /// stderr, each stream partial's output as a JSON line on stdout, then
    /// the final output. Exits 0 if the job ends COMPLETED, 1 otherwise,
    /// 130 on Ctrl-C (the job keeps running).
    #[arg(long)]
    pub wait: bool,
}

#[derive(Args)]
pub(crate) struct IdArgs {
    #[command(flatten)]
    pub connection: Connection,

    /// The job's id, as `jobpipe submit` printed it.
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Args)]
pub(crate) struct JobsArgs {
    #[command(flatten)]
    pub connection: Connection,

    /// Only jobs of this status (IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED,
    /// CANCELLED, TIMED_OUT) [default: every status].
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,

    /// Jobs per page (per request with --all).
    #[arg(long, value_name = "N", default_value = "20")]
    pub limit: std::num::NonZeroU32,

    /// Start from this page: the nextCursor of the page before
    /// [default: the first page].
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,

    /// Follow nextCursor to the last page.
    #[arg(long)]
    pub all: bool,
}

impl Connection {
    /// The endpoint's base URL, which every command needs.
    pub fn endpoint(&self) -> Result<&str, ClientError> {
        self.endpoint.as_deref().ok_or_else(|| {
            ClientError::Usage(
                "no endpoint: give --endpoint URL or set JOBPIPE_ENDPOINT_URL to the endpoint's base URL, like http://host:8000/v2/ENDPOINT_ID".into(),
            )
        })
    }

    /// The API key: --api-key or JOBPIPE_API_KEY, else RUNPOD_API_KEY;
    /// set but empty is an error, not "no key".
    pub fn key(&self) -> Result<Option<Arc<str>>, ClientError> {
        let runpod = std::env::var("RUNPOD_API_KEY").ok();
        let (what, value) = match (&self.api_key, &runpod) {
            (Some(key), _) => ("--api-key (JOBPIPE_API_KEY)", Some(key.as_str())),
            (None, Some(key)) => ("RUNPOD_API_KEY", Some(key.as_str())),
            (None, None) => ("--api-key", None),
        };
        crate::secret::resolve(what, value, None).map_err(|e| ClientError::Usage(e.to_string()))
    }
}

impl Command {
    /// The connection flags of whichever command it is.
    pub fn connection(&self) -> &Connection {
        match self {
            Command::Submit(args) => &args.connection,
            Command::Status(args) | Command::Cancel(args) | Command::Retry(args) => {
                &args.connection
            }
            Command::Jobs(args) => &args.connection,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_parser_is_consistent() {
        ClientCli::command().debug_assert();
    }

    #[test]
    fn input_and_input_file_exclude_each_other() {
        let both =
            ClientCli::try_parse_from(["jobpipe", "submit", "--input", "1", "--input-file", "f"]);
        assert!(both.is_err());
        let negative = ClientCli::try_parse_from(["jobpipe", "submit", "--priority", "-5"]);
        assert!(negative.is_ok());
    }
}
