//! Timers that may be absent, for `select!` arms: a missing limit or
//! deadline never fires.

use std::time::Duration;

use tokio::time::Instant;

/// Sleeps for `limit`, or forever when there is none.
pub async fn sleep_for(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
