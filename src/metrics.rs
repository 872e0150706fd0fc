//! Counters an operator needs: jobs processed and failed, jobs in flight,
//! handler restarts by reason, uptime and the time of the last job.
//!
//! Plain atomics: every part of the worker bumps them and a reader takes a
//! [`Snapshot`] without stopping anyone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

/// Why a handler process was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// It exited or was killed while running a job.
    Crashed,
    /// It exited while idle.
    ExitedIdle,
    /// A job ran past `--job-timeout`.
    Timeout,
    /// A job was stopped on request.
    Cancelled,
    /// It broke the line protocol.
    ProtocolError,
    /// A job asked for a fresh process (`refresh_worker`).
    Refresh,
    /// A job failed and `--keep-handler-on-error` is off.
    JobFailed,
    /// It did not become ready.
    StartFailed,
}

impl RestartReason {
    pub const ALL: [RestartReason; 8] = [
        RestartReason::Crashed,
        RestartReason::ExitedIdle,
        RestartReason::Timeout,
        RestartReason::Cancelled,
        RestartReason::ProtocolError,
        RestartReason::Refresh,
        RestartReason::JobFailed,
        RestartReason::StartFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RestartReason::Crashed => "crashed",
            RestartReason::ExitedIdle => "exited_idle",
            RestartReason::Timeout => "timeout",
            RestartReason::Cancelled => "cancelled",
            RestartReason::ProtocolError => "protocol_error",
            RestartReason::Refresh => "refresh",
            RestartReason::JobFailed => "job_failed",
            RestartReason::StartFailed => "start_failed",
        }
    }
}

/// The worker's counters.
pub struct Metrics {
    started: Instant,
    processed: AtomicU64,
    failed: AtomicU64,
    restarts: [AtomicU64; RestartReason::ALL.len()],
    last_job: Mutex<Option<SystemTime>>,
}

/// The counters at one moment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub uptime_seconds: f64,
    pub jobs_processed: u64,
    pub jobs_failed: u64,
    pub handler_restarts: std::collections::BTreeMap<&'static str, u64>,
    /// Seconds since the Unix epoch.
    pub last_job_at: Option<f64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            processed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            restarts: Default::default(),
            last_job: Mutex::new(None),
        }
    }
}

impl Metrics {
    /// Counts one finished job.
    pub fn job_done(&self, success: bool) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        if !success {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        *self.last_job.lock().unwrap_or_else(|p| p.into_inner()) = Some(SystemTime::now());
    }

    pub fn restarted(&self, reason: RestartReason) {
        let index = RestartReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("listed");
        self.restarts[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let last = *self.last_job.lock().unwrap_or_else(|p| p.into_inner());
        Snapshot {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            jobs_processed: self.processed.load(Ordering::Relaxed),
            jobs_failed: self.failed.load(Ordering::Relaxed),
            handler_restarts: RestartReason::ALL
                .iter()
                .zip(&self.restarts)
                .map(|(reason, count)| (reason.name(), count.load(Ordering::Relaxed)))
                .collect(),
            last_job_at: last
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64()),
        }
    }
}
