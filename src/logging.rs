//! jobpipe's log lines, on stderr.
//!
//! Two formats of the same events: text for people, `LEVEL | job id |
//! message`, and RunPod's log-viewer JSON, `{"requestId", "message",
//! "level"}`, which groups lines by job. An event names its job with a
//! `job_id` field. Very long messages are cut in the middle.
//!
//! Lines are handed to a writer thread through a bounded queue and never
//! written from the runtime's threads: when stderr is a slow or stalled
//! pipe, logging must not stall job handling. When the queue is full, lines
//! are dropped (lossy) rather than buffered without bound.

use std::fmt::Write as _;
use std::io::Write as _;

use clap::{Args, ValueEnum};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::error::ConfigError;
use crate::text::clip_middle;

/// Longest message written whole.
const MESSAGE_MAX: usize = 16 * 1024;
/// Lines waiting for a slow stderr before new ones are dropped (at most
/// `MESSAGE_MAX` bytes each).
const QUEUED_LINES_MAX: usize = 4096;

/// Format of jobpipe's own log lines (on stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `LEVEL | job id | message` lines for people.
    Text,
    /// One `{"requestId", "message", "level"}` object per line (RunPod's log viewer).
    Json,
}

/// The log's own flags.
#[derive(Args)]
pub struct LoggingArgs {
    /// Log level: DEBUG, INFO, WARN (or WARNING), ERROR; NOTSET, the runpod
    /// SDK's "no logging", keeps errors [default: from RUNPOD_LOG_LEVEL, else
    /// RUNPOD_DEBUG_LEVEL, else DEBUG].
    #[arg(long, alias = "rp_log_level", env = "JOBPIPE_LOG_LEVEL", value_parser = parse_level)]
    pub log_level: Option<tracing::Level>,

    /// Log line format [default: json when RUNPOD_ENDPOINT_ID is set, else text].
    #[arg(long, env = "JOBPIPE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

impl LoggingArgs {
    /// The log level from `--log-level`, else RunPod's variables, else DEBUG.
    pub fn level(&self) -> Result<Level, ConfigError> {
        if let Some(level) = self.log_level {
            return Ok(level);
        }
        for var in ["RUNPOD_LOG_LEVEL", "RUNPOD_DEBUG_LEVEL"] {
            if let Ok(text) = std::env::var(var) {
                if !text.is_empty() {
                    return parse_level(&text)
                        .map_err(|e| ConfigError::Invalid(format!("{var}: {e}")));
                }
            }
        }
        Ok(Level::DEBUG)
    }

    /// The log format from `--log-format`, else JSON on RunPod, else text.
    pub fn format(&self) -> LogFormat {
        self.log_format
            .unwrap_or_else(|| match std::env::var("RUNPOD_ENDPOINT_ID") {
                Ok(id) if !id.is_empty() => LogFormat::Json,
                _ => LogFormat::Text,
            })
    }
}

fn parse_level(text: &str) -> Result<Level, String> {
    match text.trim().to_ascii_uppercase().as_str() {
        "DEBUG" => Ok(Level::DEBUG),
        "INFO" => Ok(Level::INFO),
        "WARN" | "WARNING" => Ok(Level::WARN),
        // The runpod SDK's NOTSET turns its logging off; a worker's errors
        // are still worth a line.
        "ERROR" | "NOTSET" => Ok(Level::ERROR),
        "TRACE" => Ok(Level::TRACE),
        other => Err(format!(
            "unknown log level {other:?}; use DEBUG, INFO, WARN or ERROR"
        )),
    }
}

/// Installs the global subscriber. Events of other crates show from WARN up,
/// except the PostgreSQL pool's, which warn for every broken connection
/// while the queue already says once that the database is unreachable.
/// Keep the returned guard until the end of `main`: dropping it writes the
/// lines still queued (waiting at most a second).
pub fn init(level: Level, format: LogFormat) -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES_MAX)
        .thread_name("jobpipe-log")
        .finish(std::io::stderr());
    let ours = filter_fn(|meta| {
        let target = meta.target();
        target.starts_with("jobpipe")
            || *meta.level() <= Level::ERROR
            || (*meta.level() <= Level::WARN && !target.starts_with("deadpool"))
    });
    let layer = LineLayer { format, writer }
        .with_filter(LevelFilter::from_level(level))
        .with_filter(ours);
    let _ = tracing_subscriber::registry().with(layer).try_init();
    guard
}

struct LineLayer {
    format: LogFormat,
    writer: NonBlocking,
}

#[derive(Default)]
struct Fields {
    message: String,
    job_id: Option<String>,
    extra: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "job_id" => self.job_id = Some(value.to_owned()),
            name => {
                let _ = write!(self.extra, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "job_id" => self.job_id = Some(format!("{value:?}")),
            name => {
                let _ = write!(self.extra, " {name}={value:?}");
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for LineLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = clip_middle(&(fields.message + &fields.extra), MESSAGE_MAX);
        let level = level_name(*event.metadata().level());
        let line = match self.format {
            LogFormat::Text => format!(
                "{level:<5} | {} | {message}\n",
                fields.job_id.as_deref().unwrap_or("-")
            ),
            LogFormat::Json => {
                serde_json::json!({"requestId": fields.job_id, "message": message, "level": level})
                    .to_string()
                    + "\n"
            }
        };
        // One write is one queued line, so lines never interleave.
        let _ = self.writer.clone().write_all(line.as_bytes());
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}
