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
/// Longest an object is kept before housekeeping deletes it
/// (`--upload-lifetime`): a year, as humantime writes and reads `1year`
/// (365.25 days).
pub const KEEP_DURATION_MAX: Duration = Duration::from_secs(31_557_600);

/// A duration or size that cannot be used, with what to write instead.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("{source}; write a duration like 30s, 5m or 1h30m")]
    Duration {
        #[source]
        source: humantime::DurationError,
    },
    #[error("{text} is longer than the limit of {}", humantime::format_duration(*.max))]
    TooLong { text: String, max: Duration },
    #[error("{reason}; write a size like 20MB, 512KiB or 1000000")]
    Size { reason: String },
    #[error("size too large")]
    SizeTooLarge,
}

pub fn parse_long_duration(text: &str) -> Result<Duration, UnitError> {
    parse_duration_up_to(text, LONG_DURATION_MAX)
}

pub fn parse_short_duration(text: &str) -> Result<Duration, UnitError> {
    parse_duration_up_to(text, SHORT_DURATION_MAX)
}

pub fn parse_keep_duration(text: &str) -> Result<Duration, UnitError> {
    parse_duration_up_to(text, KEEP_DURATION_MAX)
}

fn parse_duration_up_to(text: &str, max: Duration) -> Result<Duration, UnitError> {
    let duration =
        humantime::parse_duration(text).map_err(|source| UnitError::Duration { source })?;
    if duration > max {
        return Err(UnitError::TooLong {
            text: text.to_owned(),
            max,
        });
    }
    Ok(duration)
}

pub fn parse_size(text: &str) -> Result<usize, UnitError> {
    // bytesize reports its errors as text.
    let size: bytesize::ByteSize = text.parse().map_err(|reason| UnitError::Size { reason })?;
    usize::try_from(size.as_u64()).map_err(|_| UnitError::SizeTooLarge)
}
