//! jobpipe: a worker daemon that feeds jobs to a supervised handler program
//! over stdin/stdout and returns their results.
//!
//! # Architecture
//!
//! * [`config`] turns flags and environment into one validated [`Config`].
//! * [`supervisor::run`] is the whole program behind `main`: it starts a
//!   [`pool::Pool`] of handler actors and one job [`source`], and walks the
//!   shutdown phases (drain, force, flush) on signals, deadlines and fatal
//!   errors. Stop requests arrive on a channel so tests can drive them.
//! * [`pool`] owns free-slot accounting: a source takes a job only for a
//!   free slot, submits it, and reads its events (progress, stream, exactly
//!   one final result) from a channel.
//! * [`handler`] holds one actor per handler process ([`handler::actor`]
//!   for persistent handlers, [`handler::oneshot`] for a process per job),
//!   the line protocol, and the process wrapper; [`os`] holds every process
//!   system call (process groups, reaping, subreaper, parent-death signal).
//! * [`runner`] carries one job from taken to delivered for every source:
//!   validation, submission, ordered updates, the final result, retries and
//!   the spool ([`delivery`]). A source adds only its transport.
//! * [`source`] holds the job sources: [`source::test_input`] for local
//!   runs and CI, [`source::runpod`] for RunPod serverless.
//! * [`metrics`] counts what an operator watches and [`observe`] serves it
//!   (`/health`, `/ready`, `/metrics`) when `--metrics-addr` is set.
//! * Errors are sorted in [`error`]: fatal ones end the run with an exit
//!   code; per-job ones become the job's result; transient ones are retried
//!   with [`backoff`].

pub mod api;
pub mod backoff;
pub mod config;
pub mod delivery;
pub mod error;
pub mod fitness;
pub mod handler;
pub mod input_schema;
pub mod job;
pub mod json;
pub mod logging;
pub mod metrics;
pub mod observe;
pub mod os;
pub mod pool;
pub mod queue;
pub mod runner;
pub mod signals;
pub mod source;
pub mod supervisor;
pub mod text;
pub mod timer;
pub(crate) mod tls;
pub mod units;
pub mod webhook;

pub use config::Config;

/// jobpipe's version, reported in pings and error reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
