//! What the actor says about a handler's output: stray stdout lines, the
//! stderr tail quoted in errors, and how long a closed stdout may precede
//! the exit. Shared by starting and serving a handler.

use std::time::Duration;

use super::lines::{clip_middle, Line};
use super::process::LOG_LINE_MAX;

/// How long a closed stdout may precede the process's exit.
pub(super) const EXIT_AFTER_EOF: Duration = Duration::from_secs(1);

pub(super) fn stderr_note(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; its stderr ended with:\n{tail}")
    }
}

pub(super) fn log_stray_line(line: &Line) {
    match line {
        Line::Whole(bytes) => {
            tracing::warn!(
                "handler stdout, not a protocol line (protocol lines are JSON objects; print logs to stderr): {}",
                clip_middle(&String::from_utf8_lossy(bytes), LOG_LINE_MAX)
            );
        }
        Line::TooLong { len, .. } | Line::Spilled { len, .. } | Line::Unspilled { len, .. } => {
            tracing::warn!("handler wrote a {len} byte line to stdout outside any job; dropped");
        }
    }
}
