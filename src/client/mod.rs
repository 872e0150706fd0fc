//! The command-line client: `jobpipe submit`, `status`, `jobs`, `cancel`
//! and `retry` talk to a running endpoint's RunPod-style HTTP API, so a
//! person or a script can use an endpoint without curl.
//!
//! It lives in the jobpipe binary but shares only leaves with the daemon
//! (`backoff`, `secret`, `text`): `main` hands the
//! command line here when its first word is one of [`COMMANDS`], before the
//! daemon's parser sees it, so the daemon's flags and `--help` are
//! unchanged. Nothing imports this module but `main.rs`.
//!
//! - [`args`]: the clap parser; [`error`]: errors and exit codes.
//! - [`http`]: requests, the key, and errors that say what to check.
//! - [`commands`], [`jobs`]: what each command does; [`input`]: the job's
//!   input; [`wait`] and [`display`]: `submit --wait`; [`output`]: JSON
//!   lines on stdout.

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use args::{ClientCli, Command};
use error::{exit, ClientError};
use http::{Api, Call};

mod args;
mod commands;
mod display;
mod error;
mod http;
mod input;
mod jobs;
mod output;
mod wait;

/// The first words that make a command line the client's.
pub const COMMANDS: [&str; 5] = ["submit", "status", "jobs", "cancel", "retry"];

/// Whether `args` (the whole command line, program name first) is a
/// client command rather than the daemon's.
pub fn is_client_command(args: &[OsString]) -> bool {
    args.get(1)
        .is_some_and(|first| COMMANDS.iter().any(|c| first == c))
}

/// Runs a client command line; the exit code.
pub fn main(args: &[OsString]) -> u8 {
    let parsed = ClientCli::command()
        .try_get_matches_from(args)
        .and_then(|matches| Ok((ClientCli::from_arg_matches(&matches)?, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            // --help and --version go to stdout with 0, mistakes to stderr
            // with 2.
            let _ = e.print();
            return e.exit_code().try_into().unwrap_or(exit::USAGE);
        }
    };
    let from_command_line = matches
        .subcommand()
        .is_some_and(|(_, sub)| sub.value_source("api_key") == Some(ValueSource::CommandLine));
    if from_command_line {
        eprintln!(
            "jobpipe: warning: a key given with --api-key is visible to every user of this machine in the process list; set JOBPIPE_API_KEY instead"
        );
    }
    match run(cli.command) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("jobpipe: {e}");
            e.exit_code()
        }
    }
}

fn run(command: Command) -> Result<(), ClientError> {
    let connection = command.connection();
    let api = Api::new(connection.endpoint()?, connection.key()?.as_deref())?;
    // One request at a time: one thread is plenty.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Usage(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        match &command {
            Command::Submit(args) => commands::submit(&api, args).await,
            Command::Status(args) => {
                commands::one_job(&api, Call::get(&["status", &args.id])).await
            }
            Command::Cancel(args) => {
                commands::one_job(&api, Call::post(&["cancel", &args.id])).await
            }
            Command::Retry(args) => commands::one_job(&api, Call::post(&["retry", &args.id])).await,
            Command::Jobs(args) => jobs::list(&api, args).await,
        }
    })
}
