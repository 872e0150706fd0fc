//! Durations and sizes as people write them in flags and variables
//! ("30s", "1h30m", "20MB"), with the bounds that keep every deadline
//! computed from them far from overflow. A leaf: it imports nothing of
//! the crate.

use std::time::Duration;

/// Longest value of a duration that may reasonably be days: start-up, job,
/// shutdown, a queue's lease and result retention. A bound keeps every
/// deadline computed from it far from overflow, in memory and in the queue
/// database's millisecond columns.
pub const LONG_DURATION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest kill grace: a handler that needs longer to stop is stuck.
pub const SHORT_DURATION_MAX: Duration = Duration::from_secs(3600);

pub fn parse_long_duration(text: &str) -> Result<Duration, String> {
    parse_duration_up_to(text, LONG_DURATION_MAX)
}

pub fn parse_short_duration(text: &str) -> Result<Duration, String> {
    parse_duration_up_to(text, SHORT_DURATION_MAX)
}

fn parse_duration_up_to(text: &str, max: Duration) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{e}; write a duration like 30s, 5m or 1h30m"))?;
    if duration > max {
        return Err(format!(
            "{text} is longer than the limit of {}",
            humantime::format_duration(max)
        ));
    }
    Ok(duration)
}

pub fn parse_size(text: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = text
        .parse()
        .map_err(|e| format!("{e}; write a size like 20MB, 512KiB or 1000000"))?;
    usize::try_from(size.as_u64()).map_err(|_| "size too large".into())
}
