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

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::LogFormat;
use crate::handler::lines::clip_middle;

/// Longest message written whole.
const MESSAGE_MAX: usize = 16 * 1024;
/// Lines waiting for a slow stderr before new ones are dropped (at most
/// `MESSAGE_MAX` bytes each).
const QUEUED_LINES_MAX: usize = 4096;

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
