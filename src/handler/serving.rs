//! What a serving handler process holds, apart from how the actor reacts
//! to it: the jobs in flight with their deadlines and stop requests,
//! whether it takes more, the stdout lines that were no protocol lines, and
//! the watcher task of each job.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::lines::clip_middle;
use super::restart::RestartReason;
use super::ActorContext;
use crate::job::{JobFailure, JobTicket};
use crate::timer::sleep_until;

/// Whether a serving process takes more jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Intake {
    /// Ready: it takes jobs while it has room.
    Open,
    /// It finishes the jobs it holds and takes no more: the pool is
    /// stopping.
    Closed,
    /// It finishes the jobs it holds and takes no more, then is replaced
    /// for this reason.
    Replace(RestartReason),
}

/// Why a job is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopCause {
    Timeout,
    Cancel,
}

/// A job the handler is running.
pub(super) struct Running {
    pub(super) ticket: JobTicket,
    pub(super) watcher: AbortHandle,
    /// When `--job-timeout` runs out for it.
    pub(super) deadline: Option<Instant>,
    /// Its `--stall-timeout`, and when the handler last sent a line for it.
    pub(super) stall: Option<Duration>,
    pub(super) heard: Instant,
    pub(super) streamed: bool,
    /// Set once the job was asked to stop (jobs-per-handler > 1).
    pub(super) stopping: Option<(StopCause, Instant)>,
}

/// What only a serving process has.
pub(super) struct Serving {
    /// The jobs in flight, by id.
    pub(super) jobs: HashMap<String, Running>,
    pub(super) intake: Intake,
    /// Each job's watcher sends at most one request, so this channel holds
    /// at most one per job in flight.
    pub(super) stops: mpsc::UnboundedSender<(String, StopCause)>,
    pub(super) stop_requests: mpsc::UnboundedReceiver<(String, StopCause)>,
    /// The process (and process group) id, for its memory use.
    pub(super) pid: i32,
    /// Jobs this process has finished, for `--max-jobs-per-handler`.
    pub(super) served: u64,
    /// Lines on stdout that were no protocol line, named when a job gets
    /// no answer.
    pub(super) stray: StrayLines,
}

/// How many stdout lines were not protocol lines, and the last of them.
#[derive(Default)]
pub(super) struct StrayLines {
    pub(super) count: u64,
    pub(super) last: String,
}

impl StrayLines {
    /// How many characters of the last stray line a job's error quotes.
    const QUOTED: usize = 200;

    pub(super) fn record(&mut self, line: &[u8]) {
        self.count += 1;
        self.last = clip_middle(&String::from_utf8_lossy(line), Self::QUOTED);
    }

    /// What a job that got no answer is told of them, if any.
    pub(super) fn note(&self) -> String {
        match self.count {
            0 => String::new(),
            n => format!(
                "; the handler wrote {n} line(s) to stdout that are not protocol lines, the last: {:?} (protocol lines are JSON objects; print logs to stderr)",
                self.last
            ),
        }
    }
}

impl Serving {
    pub(super) fn new(pid: i32) -> Serving {
        let (stops, stop_requests) = mpsc::unbounded_channel();
        Serving {
            jobs: HashMap::new(),
            intake: Intake::Open,
            stops,
            stop_requests,
            pid,
            served: 0,
            stray: StrayLines::default(),
        }
    }

    /// How many more jobs it could start now.
    pub(super) fn room(&self, ctx: &ActorContext) -> usize {
        match self.intake {
            Intake::Open => ctx.config.jobs_per_handler.saturating_sub(self.jobs.len()),
            Intake::Closed | Intake::Replace(_) => 0,
        }
    }

    /// Takes no more jobs: the pool is stopping.
    pub(super) fn close(&mut self) {
        if self.intake == Intake::Open {
            self.intake = Intake::Closed;
        }
    }

    pub(super) fn ids(&self) -> String {
        let mut ids: Vec<&str> = self.jobs.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids.join(",")
    }

    /// When the next job counts as stalled, if any job has a limit.
    pub(super) fn next_stall_deadline(&self) -> Option<Instant> {
        self.jobs
            .values()
            .filter(|job| job.stopping.is_none())
            .filter_map(|job| Some(job.heard + job.stall?))
            .min()
    }

    pub(super) fn next_grace_deadline(&self) -> Option<Instant> {
        self.jobs
            .values()
            .filter_map(|job| job.stopping.map(|(_, at)| at))
            .min()
    }

    pub(super) fn fail_all(&mut self, failure: JobFailure) {
        for (_, running) in self.jobs.drain() {
            running.watcher.abort();
            running.ticket.fail(failure.clone());
        }
    }
}

/// Spawns the task that reports when a job is cancelled or times out.
pub(super) fn watch_job(
    ticket: &JobTicket,
    deadline: Option<Instant>,
    stops: mpsc::UnboundedSender<(String, StopCause)>,
) -> AbortHandle {
    let cancel = ticket.cancel.clone();
    let id = ticket.id().to_owned();
    tokio::spawn(async move {
        let cause = tokio::select! {
            _ = cancel.cancelled() => StopCause::Cancel,
            _ = sleep_until(deadline) => StopCause::Timeout,
        };
        let _ = stops.send((id, cause));
    })
    .abort_handle()
}

pub(super) fn cause_name(cause: StopCause) -> &'static str {
    match cause {
        StopCause::Timeout => "timed out",
        StopCause::Cancel => "stop requested",
    }
}

pub(super) fn cause_reason(cause: StopCause) -> RestartReason {
    match cause {
        StopCause::Timeout => RestartReason::Timeout,
        StopCause::Cancel => RestartReason::Cancelled,
    }
}
