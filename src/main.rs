//! The jobpipe binary: parse the configuration, install logging, run the
//! supervisor, and map the outcome to an exit code; or, when the first
//! word is a client command (`jobpipe submit ...`), run the client.

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, FromArgMatches};
use jobpipe::config::{self, Cli};
use jobpipe::error::{exit, FatalError};

fn main() -> ExitCode {
    // First of all, so no handler can read the key from /proc/<pid>/environ.
    jobpipe::os::make_non_dumpable();
    // `jobpipe submit|status|jobs|cancel|retry`: the client, with a parser
    // of its own, so the daemon's command line is untouched.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if jobpipe::client::is_client_command(&args) {
        return ExitCode::from(jobpipe::client::main(&args));
    }
    jobpipe::os::tune_allocator();
    let matches = config::matches().unwrap_or_else(|e| e.exit());
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let level = match cli.logging.level() {
        Ok(level) => level,
        Err(e) => return fail(&FatalError::Config(e)),
    };
    let logging = jobpipe::logging::init(level, cli.logging.format());
    let outcome = run(cli, &matches);
    // Log lines still queued go out before the final message.
    drop(logging);
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

fn run(cli: Cli, matches: &ArgMatches) -> Result<u8, FatalError> {
    // Every key flag: what is on a command line is in the process list.
    for (id, flag, instead) in [
        (
            "runpod_api_key",
            "--runpod-api-key",
            "RUNPOD_AI_API_KEY or --runpod-api-key-file",
        ),
        ("api_key", "--api-key", "JOBPIPE_API_KEY or --api-key-file"),
        (
            "webhook_secret",
            "--webhook-secret",
            "JOBPIPE_WEBHOOK_SECRET",
        ),
    ] {
        if matches.value_source(id) == Some(ValueSource::CommandLine) {
            tracing::warn!(
                "a key was given with {flag}, so every user of this machine can read it in the process list; use {instead} instead"
            );
        }
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let config = cli.into_config(&cwd)?;
    let slots = config.handler.concurrency * config.handler.jobs_per_handler;
    let runtime = runtime(slots)
        .map_err(|e| FatalError::Internal(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let requests = jobpipe::signals::listen()
            .map_err(|e| FatalError::Internal(format!("cannot install signal handlers: {e}")))?;
        jobpipe::supervisor::run(config, requests).await
    })
}

/// The async runtime. A worker with one slot runs one job at a time, and a
/// single thread carries it from take to result with a third fewer system
/// calls, half the context switches and a sixth less CPU per job than two
/// threads handing it to each other (docs/benchmark.md). More slots get two
/// worker threads, so that handlers answering at once are served in
/// parallel (one thread cost up to 44 % of the throughput at concurrency 16
/// on a heavily loaded machine). An API-only process (no slot) keeps two.
fn runtime(slots: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if slots == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2);
        builder
    };
    builder.enable_all().build()
}

fn fail(error: &FatalError) -> ExitCode {
    eprintln!("jobpipe: {error}");
    let code = error.exit_code();
    debug_assert_ne!(code, exit::OK);
    ExitCode::from(code)
}
