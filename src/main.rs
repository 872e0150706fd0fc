//! The jobpipe binary: parse the configuration, install logging, run the
//! supervisor, and map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use jobpipe::config::{self, Cli};
use jobpipe::error::{exit, FatalError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match config::log_level(&cli) {
        Ok(level) => level,
        Err(e) => return fail(&FatalError::Config(e)),
    };
    jobpipe::logging::init(level, config::log_format(&cli));
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let config = match cli.into_config(&cwd) {
        Ok(config) => config,
        Err(e) => return fail(&FatalError::Config(e)),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return fail(&FatalError::Internal(format!(
                "cannot start the runtime: {e}"
            )))
        }
    };
    let outcome = runtime.block_on(async {
        let requests = jobpipe::signals::listen()
            .map_err(|e| FatalError::Internal(format!("cannot install signal handlers: {e}")))?;
        jobpipe::supervisor::run(config, requests).await
    });
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

fn fail(error: &FatalError) -> ExitCode {
    eprintln!("jobpipe: {error}");
    let code = error.exit_code();
    debug_assert_ne!(code, exit::OK);
    ExitCode::from(code)
}
