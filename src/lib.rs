//! jobpipe: a worker daemon that feeds jobs to a supervised handler program
//! over stdin/stdout and returns their results.
//!
//! # Architecture
//!
//! From the top down; a module imports only from the layers below it
//! (`scripts/check-cycles` checks that no two files import each other,
//! directly or round a loop; CONTRIBUTING.md has the rules and recipes).
//!
//! * [`config`] flattens every subsystem's flags into one `Cli` and chooses
//!   the job source, giving one validated [`Config`]. Nothing below
//!   `main` and [`supervisor`] imports it.
//! * [`client`] is the command-line client (`jobpipe submit`, `status`,
//!   `jobs`, `cancel`, `retry`) of an endpoint's HTTP API, with a parser of
//!   its own; `main` runs it instead of the daemon for those words, and
//!   nothing else imports it.
//! * [`supervisor::run`] is the whole program behind `main`: it starts a
//!   [`pool::Pool`] of handler actors and one job [`source`], and walks the
//!   shutdown phases (drain, force, flush) on signals, deadlines and fatal
//!   errors. Stop requests arrive on a channel so tests can drive them.
//! * [`source`] chooses among the job sources: [`source::test_input`] (one
//!   local job, for development and CI), [`source::runpod`] (RunPod
//!   serverless) and the self-hosted [`endpoint`].
//! * [`endpoint`] is the self-hosted endpoint in one folder: its flags, the
//!   API routes ([`endpoint::api`]), the queue and its stores
//!   ([`endpoint::queue`]: SQLite for one machine, PostgreSQL for many,
//!   registered by URL scheme in [`endpoint::queue::stores`]), the webhook
//!   sender and its job source.
//! * [`runner`] carries one job from taken to delivered for every source:
//!   validation, submission, ordered updates, the final result, retries and
//!   the spool ([`delivery`], which defines the [`delivery::ResultSink`] a
//!   source implements). A source adds only its transport.
//! * [`objects`] is the S3-compatible object store for payloads of any
//!   size: its flags, its client, and the offload of large outputs that
//!   the runner applies to every source's results.
//! * [`pool`] owns free-slot accounting: a source takes a job only for a
//!   free slot, submits it, and reads its events (progress, stream, exactly
//!   one final result) from a channel.
//! * [`handler`] holds one actor per handler process ([`handler::actor`]
//!   for persistent handlers, [`handler::oneshot`] for a process per job),
//!   the line protocol, the process wrapper and the handler's own flags
//!   ([`handler::config`]).
//! * [`job`] is a job, its ticket (finished exactly once), its events and
//!   result, and the worker's [`job::Identity`].
//! * [`os`] holds every process system call (process groups, reaping,
//!   subreaper, escaped descendants, start-up checks); [`fitness`] the
//!   checks before the first job.
//! * [`metrics`] counts what an operator watches and [`observe`] serves it
//!   (`/health`, `/ready`, `/metrics`) when `--metrics-addr` is set;
//!   [`logging`] writes jobpipe's own lines.
//! * Leaves used everywhere: [`error`] (fatal errors and exit codes, config
//!   errors), [`backoff`], [`json`], [`text`], [`units`], [`timer`],
//!   [`secret`].

pub mod backoff;
pub mod client;
pub mod config;
pub mod delivery;
pub mod endpoint;
pub mod error;
pub mod fitness;
pub mod handler;
pub mod input_schema;
pub mod job;
pub mod json;
pub mod logging;
pub mod metrics;
pub mod objects;
pub mod observe;
pub mod os;
pub mod pool;
pub mod runner;
pub mod secret;
pub mod signals;
pub mod source;
pub mod supervisor;
pub mod text;
pub mod timer;
pub(crate) mod tls;
pub mod units;

pub use config::Config;

/// jobpipe's version, reported in pings and error reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
