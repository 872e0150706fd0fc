//! The actor that owns one persistent handler process.
//!
//! Life of an actor: start a process and wait until it is ready (see
//! [`super::startup`]), serve jobs until the process must be replaced or
//! the pool stops, stop the process (its whole group), and start again.
//! Everything that happens to the process (a stdout line, its exit, a
//! job's deadline, a stop request) arrives as one [`Step`] of a `select!`
//! and has its own `handle_*` method. Every job the actor accepts leaves
//! through `Actor::finish` or one of the failure paths, each of which
//! finishes the ticket exactly once.
//!
//! Where the actor is in that life is its [`ActorState`]; the state alone
//! decides how many more jobs the actor could start now, which it tells the
//! pool so that no job is taken for a handler that is not ready.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::lines::{clip_middle, Line};
use super::process::HandlerProcess;
use super::protocol::{cancel_line, parse_line, sniff_id, Frame};

use super::startup::{log_stray_line, stderr_note};
use super::ActorContext;
use crate::backoff::{Backoff, BackoffPolicy};
use crate::error::FatalError;
use crate::job::{FailureKind, JobFailure, JobResult, JobTicket, Outcome};
use crate::json::Json;
use crate::metrics::RestartReason;
use crate::timer::sleep_until;

/// Delays between restarts after a crash.
const RESTART_BACKOFF: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(100), Duration::from_secs(10), 0.2);
/// How long a closed stdout may precede the process's exit.
pub(super) const EXIT_AFTER_EOF: Duration = Duration::from_secs(1);
/// Longest time spent killing what a replaced handler left behind.
const ESCAPED_KILL_LIMIT: Duration = Duration::from_secs(2);
/// How long, after the process exited, lines it wrote are still read.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(100);

/// Where an actor's handler process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorState {
    /// A process is being started and has not said it is ready.
    Starting,
    /// Ready, with no job.
    Idle,
    /// Ready, running `jobs` jobs since `since`.
    Busy { jobs: usize, since: Instant },
    /// Finishing the jobs it holds and taking no more: the process is due
    /// to be replaced, or the pool is stopping.
    Draining { jobs: usize },
    /// The process is being stopped (its whole group).
    Stopping,
    /// No process, and none will be started.
    Exited,
}

impl ActorState {
    /// Whether the process is ready and serving (it may be full).
    fn is_ready(self) -> bool {
        matches!(self, ActorState::Idle | ActorState::Busy { .. })
    }

    /// How many more jobs an actor in this state could start now.
    fn room(self, capacity: usize) -> usize {
        match self {
            ActorState::Idle => capacity,
            ActorState::Busy { jobs, .. } => capacity.saturating_sub(jobs),
            _ => 0,
        }
    }
}

/// Why a job is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopCause {
    Timeout,
    Cancel,
}

/// How a served process ended.
enum End {
    /// Replace the process.
    Restart(RestartReason),
    /// The pool is stopping: stop the process gracefully.
    Stop,
    /// Forced shutdown: kill the process.
    Kill,
}

/// One event the serving loop reacts to.
enum Step {
    Force,
    Exited(crate::os::ExitStatus),
    Line(Option<Line>),
    StopJob(String, StopCause),
    GraceOver,
    Job(Option<JobTicket>),
    Shutdown,
}

/// A job the handler is running.
struct Running {
    ticket: JobTicket,
    watcher: AbortHandle,
    /// When `--job-timeout` runs out for it.
    deadline: Option<Instant>,
    streamed: bool,
    /// Set once the job was asked to stop (jobs-per-handler > 1).
    stopping: Option<(StopCause, Instant)>,
}

/// State of one served process.
struct Serving {
    jobs: HashMap<String, Running>,
    /// A restart is due once the jobs in flight are done.
    draining: Option<RestartReason>,
    queue_open: bool,
    stops: mpsc::UnboundedSender<(String, StopCause)>,
    /// The process (and process group) id, for its memory use.
    pid: i32,
    /// Jobs this process has finished, for `--max-jobs-per-handler`.
    served: u64,
    /// Lines on stdout that were no protocol line, named when a job gets
    /// no answer.
    stray: StrayLines,
}

/// How many stdout lines were not protocol lines, and the last of them.
#[derive(Default)]
struct StrayLines {
    count: u64,
    last: String,
}

impl StrayLines {
    /// How many characters of the last stray line a job's error quotes.
    const QUOTED: usize = 200;

    fn record(&mut self, line: &[u8]) {
        self.count += 1;
        self.last = clip_middle(&String::from_utf8_lossy(line), Self::QUOTED);
    }

    /// What a job that got no answer is told of them, if any.
    fn note(&self) -> String {
        match self.count {
            0 => String::new(),
            n => format!(
                "; the handler wrote {n} line(s) to stdout that are not protocol lines, the last: {:?} (protocol lines are JSON objects; print logs to stderr)",
                self.last
            ),
        }
    }
}

/// Runs the actor until the pool stops or the handler cannot start.
pub async fn run(ctx: ActorContext) {
    let mut actor = Actor {
        backoff: RESTART_BACKOFF.iter(),
        ctx,
        state: ActorState::Starting,
        last_end: String::new(),
    };
    actor.life().await;
    actor.set_state(ActorState::Exited);
}

impl Actor {
    /// Starts, serves and replaces processes until the pool stops or the
    /// handler cannot start.
    async fn life(&mut self) {
        loop {
            self.set_state(ActorState::Starting);
            let Some(mut process) = self.start().await else {
                return;
            };
            self.set_state(ActorState::Idle);
            let end = self.serve(&mut process).await;
            self.set_state(ActorState::Stopping);
            match end {
                End::Kill => {
                    process.kill().await;
                    return;
                }
                End::Stop => {
                    process
                        .stop(self.ctx.config.kill_grace, &self.ctx.force)
                        .await;
                    return;
                }
                End::Restart(reason) => {
                    self.ctx.metrics.restarted(reason);
                    tracing::info!(
                        handler = self.ctx.index,
                        pid = process.pid,
                        "replacing handler process ({})",
                        reason.name()
                    );
                    process
                        .stop(self.ctx.config.kill_grace, &self.ctx.force)
                        .await;
                    crate::os::kill_escaped(&self.ctx.identity.worker_id, ESCAPED_KILL_LIMIT).await;
                    let crashed = matches!(
                        reason,
                        RestartReason::Crashed
                            | RestartReason::ExitedIdle
                            | RestartReason::ProtocolError
                    );
                    let ended =
                        matches!(reason, RestartReason::Crashed | RestartReason::ExitedIdle);
                    if ended && self.failing_every_job() {
                        return;
                    }
                    if crashed && !self.pause().await {
                        return;
                    }
                }
            }
        }
    }
}

pub(super) struct Actor {
    pub(super) ctx: ActorContext,
    pub(super) backoff: Backoff,
    state: ActorState,
    /// How the last process ended by itself, for the report when the
    /// handler turns out to fail every job.
    last_end: String,
}

impl Actor {
    /// Counts one more crash or exit of the handler; true (with a fatal
    /// error reported) when that makes too many in a row.
    fn failing_every_job(&mut self) -> bool {
        let count = self.ctx.failures.add();
        let Some(limit) = self.ctx.config.max_handler_failures else {
            return false;
        };
        if count < limit {
            return false;
        }
        let error = FatalError::HandlerFailing(format!(
            "it crashed or exited {count} times in a row with no job succeeding (--max-handler-failures {limit}); this worker takes no more jobs so the platform can replace it. Last: {}",
            self.last_end
        ));
        let _ = self.ctx.fatal.send(error);
        true
    }

    /// Moves to `state` and tells the pool how many jobs this actor could
    /// start now.
    pub(super) fn set_state(&mut self, state: ActorState) {
        match (self.state.is_ready(), state.is_ready()) {
            (false, true) => self.ctx.metrics.handler_up(),
            (true, false) => self.ctx.metrics.handler_down(),
            _ => {}
        }
        self.state = state;
        self.ctx
            .room
            .set(state.room(self.ctx.config.jobs_per_handler));
    }

    /// The state that matches the jobs held while serving.
    fn serving_state(&self, s: &Serving) -> ActorState {
        let jobs = s.jobs.len();
        if s.draining.is_some() || !s.queue_open || self.ctx.stop.is_cancelled() {
            return ActorState::Draining { jobs };
        }
        match self.state {
            _ if jobs == 0 => ActorState::Idle,
            ActorState::Busy { since, .. } => ActorState::Busy { jobs, since },
            _ => ActorState::Busy {
                jobs,
                since: Instant::now(),
            },
        }
    }

    /// Feeds jobs to a ready process until it must be replaced or stopped.
    async fn serve(&mut self, process: &mut HandlerProcess) -> End {
        let (stops, mut stop_requests) = mpsc::unbounded_channel();
        let mut s = Serving {
            jobs: HashMap::new(),
            draining: None,
            queue_open: true,
            stops,
            pid: process.pid,
            served: 0,
            stray: StrayLines::default(),
        };
        let mut tagged = String::new();
        loop {
            self.set_state(self.serving_state(&s));
            let room = self.state.room(self.ctx.config.jobs_per_handler) > 0;
            let grace_over = s.next_grace_deadline();
            let step = tokio::select! {
                biased;
                _ = self.ctx.force.cancelled() => Step::Force,
                line = process.stdout.recv() => Step::Line(line),
                status = process.exit.wait() => Step::Exited(status),
                Some((id, cause)) = stop_requests.recv() => Step::StopJob(id, cause),
                _ = sleep_until(grace_over), if grace_over.is_some() => Step::GraceOver,
                ticket = self.ctx.queue.recv(), if room => Step::Job(ticket.ok()),
                _ = self.ctx.stop.cancelled(), if s.jobs.is_empty() => Step::Shutdown,
            };
            if let Some(end) = self.handle(step, process, &mut s).await {
                return end;
            }
            // Stderr lines are tagged with the jobs the process holds now.
            let ids = s.ids();
            if ids != tagged {
                process.set_jobs(ids.clone());
                tagged = ids;
            }
            if s.jobs.is_empty() {
                if let Some(reason) = s.draining {
                    return End::Restart(reason);
                }
            }
        }
    }

    async fn handle(
        &mut self,
        step: Step,
        process: &mut HandlerProcess,
        s: &mut Serving,
    ) -> Option<End> {
        match step {
            Step::Force => {
                s.fail_all(JobFailure::new(
                    FailureKind::WorkerShutdown,
                    "the worker was shut down (forced) while the job was running",
                ));
                Some(End::Kill)
            }
            Step::Shutdown => Some(End::Stop),
            Step::Job(None) => {
                s.queue_open = false;
                None
            }
            Step::Job(Some(ticket)) => {
                self.handle_job(ticket, process, s);
                None
            }
            Step::Line(Some(line)) => self.handle_line(line, process, s).await,
            Step::Line(None) => Some(self.handle_stdout_closed(process, s).await),
            Step::Exited(status) => Some(self.handle_exit(status, process, s).await),
            Step::StopJob(id, cause) => self.handle_stop(&id, cause, process, s),
            Step::GraceOver => Some(self.handle_grace_over(s)),
        }
    }

    fn handle_job(&mut self, mut ticket: JobTicket, process: &HandlerProcess, s: &mut Serving) {
        if ticket.is_cancelled() {
            ticket.finish(JobResult::cancelled());
            return;
        }
        let id = ticket.id().to_owned();
        tracing::debug!(job_id = %id, pid = process.pid, "job sent to handler");
        process.send(std::mem::take(&mut ticket.job.line));
        // One deadline for the job, watched apart and when it waits to stream.
        let deadline = self
            .ctx
            .config
            .job_timeout
            .map(|limit| Instant::now() + limit);
        let watcher = watch_job(&ticket, deadline, s.stops.clone());
        s.jobs.insert(
            id,
            Running {
                ticket,
                watcher,
                deadline,
                streamed: false,
                stopping: None,
            },
        );
    }

    async fn handle_line(
        &mut self,
        line: Line,
        process: &HandlerProcess,
        s: &mut Serving,
    ) -> Option<End> {
        let max = self.ctx.config.max_output_size;
        let bytes = match line {
            Line::TooLong { len, prefix } => return self.too_large(s, len, &prefix),
            Line::Whole(bytes) => bytes,
        };
        let frame = parse_line(&bytes);
        if bytes.len() > max && matches!(frame, Frame::Final { .. } | Frame::Stream { .. }) {
            return self.too_large(s, bytes.len(), &bytes);
        }
        match frame {
            Frame::Ready => None,
            Frame::Other => {
                s.stray.record(&bytes);
                log_stray_line(&Line::Whole(bytes));
                None
            }
            Frame::Unreadable(why) => self.unreadable(s, &bytes, &why),
            Frame::Stream { id, value } => {
                let Some(job) = s.jobs.get_mut(&id) else {
                    tracing::warn!(job_id = %id, "handler streamed for a job it is not running; ignored");
                    return None;
                };
                job.streamed = true;
                // Waiting for room in the job's update queue must not hold
                // back its timeout or a forced stop.
                let deadline = job.deadline;
                let timed_out = tokio::select! {
                    _ = job.ticket.stream(value) => false,
                    _ = sleep_until(deadline), if deadline.is_some() => true,
                    _ = self.ctx.force.cancelled() => false,
                };
                if timed_out {
                    tracing::warn!(job_id = %id, "the job timed out while a stream partial waited for room; the partial is dropped");
                    return self.handle_stop(&id, StopCause::Timeout, process, s);
                }
                None
            }
            Frame::Progress { id, value } => {
                match s.jobs.get(&id) {
                    Some(job) => job.ticket.progress(value),
                    None => {
                        tracing::warn!(job_id = %id, "handler sent progress for a job it is not running; ignored")
                    }
                }
                None
            }
            Frame::Final {
                id,
                output,
                error,
                refresh_worker,
            } => {
                if s.jobs.contains_key(&id) {
                    let outcome = match error {
                        Some(error) => Outcome::Error { error, output },
                        None => Outcome::Output(output.unwrap_or_else(Json::null)),
                    };
                    let result = JobResult {
                        outcome,
                        refresh_worker,
                        streamed: false,
                    };
                    return self.finish(s, &id, result);
                }
                self.answer_for_unknown_job(s, &id)
            }
        }
    }

    /// Ends one job with the handler's result and decides whether the
    /// process is replaced.
    fn finish(&mut self, s: &mut Serving, id: &str, mut result: JobResult) -> Option<End> {
        let running = s.jobs.remove(id)?;
        running.watcher.abort();
        if let Some((cause, _)) = running.stopping {
            // The handler answered a cancel and keeps running; the job
            // still ends as stopped.
            self.end_stopped(running.ticket, cause, &s.stray);
            return None;
        }
        result.streamed = running.streamed;
        result.refresh_worker |= self.ctx.config.refresh_worker;
        let success = result.is_success();
        let refresh = result.refresh_worker;
        if success {
            self.backoff.reset();
            self.ctx.failures.reset();
        }
        running.ticket.finish(result);
        s.served += 1;
        let single = self.ctx.config.jobs_per_handler == 1;
        let reason = if refresh {
            Some(RestartReason::Refresh)
        } else if !success && single && !self.ctx.config.keep_handler_on_error {
            Some(RestartReason::JobFailed)
        } else if s.draining.is_none() {
            super::recycle::due(&self.ctx.config, s.served, s.pid)
        } else {
            None
        };
        match reason {
            Some(reason) if s.jobs.is_empty() => Some(End::Restart(reason)),
            Some(reason) => {
                s.draining = Some(reason);
                None
            }
            None => None,
        }
    }

    fn too_large(&mut self, s: &mut Serving, len: usize, prefix: &[u8]) -> Option<End> {
        let id = if s.jobs.len() == 1 {
            s.jobs.keys().next().cloned()
        } else {
            sniff_id(prefix, s.jobs.keys().map(String::as_str)).map(str::to_owned)
        };
        let message = format!(
            "the handler's result is {len} bytes, more than the {} byte limit (--max-output-size); store large outputs elsewhere and return a reference",
            self.ctx.config.max_output_size
        );
        let Some(id) = id else {
            tracing::warn!("{message}; the line names no job in flight, so it is dropped");
            return None;
        };
        let failure = JobFailure::new(FailureKind::OutputTooLarge, message);
        let report = failure.report(&self.ctx.identity);
        self.finish(s, &id, JobResult::error(report))
    }

    /// A line that cannot be read ends the job it names at once, so the
    /// job neither waits for an answer that already came nor hides the cause.
    fn unreadable(&mut self, s: &mut Serving, line: &[u8], why: &str) -> Option<End> {
        let Some(id) = sniff_id(line, s.jobs.keys().map(String::as_str)).map(str::to_owned) else {
            log_stray_line(&Line::Whole(Bytes::copy_from_slice(line)));
            tracing::warn!("the line above looks like a protocol line but {why}; it names no job in flight, so it is dropped");
            return None;
        };
        tracing::warn!(job_id = %id, "the handler's line for this job cannot be read: {why}");
        let failure = JobFailure::new(
            FailureKind::ProtocolError,
            format!("protocol error: the handler's line for this job cannot be read: {why}"),
        );
        let report = failure.report(&self.ctx.identity);
        self.finish(s, &id, JobResult::error(report))
    }

    fn answer_for_unknown_job(&mut self, s: &mut Serving, id: &str) -> Option<End> {
        if self.ctx.config.jobs_per_handler > 1 || s.jobs.is_empty() {
            tracing::warn!(job_id = %id, "handler answered for a job it is not running; ignored");
            return None;
        }
        let running = s.ids();
        s.fail_all(JobFailure::new(
            FailureKind::ProtocolError,
            format!(
                "protocol error: the handler answered for job {id:?} while running job {running:?}"
            ),
        ));
        Some(End::Restart(RestartReason::ProtocolError))
    }

    async fn handle_exit(
        &mut self,
        status: crate::os::ExitStatus,
        process: &mut HandlerProcess,
        s: &mut Serving,
    ) -> End {
        // Lines written just before the exit may still be in the pipe.
        let deadline = Instant::now() + DRAIN_AFTER_EXIT;
        while !s.jobs.is_empty() {
            match tokio::time::timeout_at(deadline, process.stdout.recv()).await {
                Ok(Some(line)) => {
                    self.handle_line(line, process, s).await;
                }
                Ok(None) | Err(_) => break,
            }
        }
        let tail = process.stderr_tail().await;
        self.last_end = format!("handler {status}{}", stderr_note(&tail));
        if s.jobs.is_empty() {
            tracing::warn!(pid = process.pid, "handler {status} while idle");
            return End::Restart(RestartReason::ExitedIdle);
        }
        tracing::warn!(pid = process.pid, jobs = %s.ids(), "handler {status} while running jobs");
        s.fail_all(
            JobFailure::new(FailureKind::HandlerCrashed, format!("handler {status}"))
                .with_stderr(tail),
        );
        End::Restart(RestartReason::Crashed)
    }

    async fn handle_stdout_closed(&mut self, process: &mut HandlerProcess, s: &mut Serving) -> End {
        if let Ok(status) = tokio::time::timeout(EXIT_AFTER_EOF, process.exited()).await {
            return self.handle_exit(status, process, s).await;
        }
        let tail = process.stderr_tail().await;
        s.fail_all(
            JobFailure::new(
                FailureKind::ProtocolError,
                "protocol error: the handler closed its stdout but kept running",
            )
            .with_stderr(tail),
        );
        End::Restart(RestartReason::ProtocolError)
    }

    fn handle_stop(
        &mut self,
        id: &str,
        cause: StopCause,
        process: &HandlerProcess,
        s: &mut Serving,
    ) -> Option<End> {
        let grace = self.ctx.config.kill_grace;
        let job = s.jobs.get_mut(id)?;
        if job.stopping.is_some() {
            return None;
        }
        tracing::info!(job_id = %id, "stopping job ({})", cause_name(cause));
        if self.ctx.config.jobs_per_handler == 1 {
            let running = s.jobs.remove(id).expect("present");
            self.end_stopped(running.ticket, cause, &s.stray);
            return Some(End::Restart(cause_reason(cause)));
        }
        job.stopping = Some((cause, Instant::now() + grace));
        process.send(cancel_line(id).into());
        None
    }

    fn handle_grace_over(&mut self, s: &mut Serving) -> End {
        let now = Instant::now();
        let overdue: Vec<String> = s
            .jobs
            .iter()
            .filter(|(_, job)| job.stopping.is_some_and(|(_, at)| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        let mut reason = RestartReason::Timeout;
        for id in &overdue {
            let running = s.jobs.remove(id).expect("present");
            let (cause, _) = running.stopping.expect("stopping");
            reason = cause_reason(cause);
            running.watcher.abort();
            self.end_stopped(running.ticket, cause, &s.stray);
        }
        s.fail_all(JobFailure::new(
            FailureKind::HandlerRestarted,
            format!(
                "the handler process was restarted because job {} did not stop within {} of being cancelled",
                overdue.join(", "),
                humantime::format_duration(self.ctx.config.kill_grace)
            ),
        ));
        End::Restart(reason)
    }
}

impl Actor {
    /// Ends a job that was stopped: nothing for a cancel, an error for a
    /// timeout.
    fn end_stopped(&self, ticket: JobTicket, cause: StopCause, stray: &StrayLines) {
        match cause {
            StopCause::Cancel => ticket.finish(JobResult::cancelled()),
            StopCause::Timeout => ticket.fail(JobFailure::new(
                FailureKind::Timeout,
                format!("{}{}", self.ctx.config.timeout_message(), stray.note()),
            )),
        }
    }
}

impl Serving {
    fn ids(&self) -> String {
        let mut ids: Vec<&str> = self.jobs.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids.join(",")
    }

    fn next_grace_deadline(&self) -> Option<Instant> {
        self.jobs
            .values()
            .filter_map(|job| job.stopping.map(|(_, at)| at))
            .min()
    }

    fn fail_all(&mut self, failure: JobFailure) {
        for (_, running) in self.jobs.drain() {
            running.watcher.abort();
            running.ticket.fail(failure.clone());
        }
    }
}

/// Spawns the task that reports when a job is cancelled or times out.
fn watch_job(
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

fn cause_name(cause: StopCause) -> &'static str {
    match cause {
        StopCause::Timeout => "timed out",
        StopCause::Cancel => "stop requested",
    }
}

fn cause_reason(cause: StopCause) -> RestartReason {
    match cause {
        StopCause::Timeout => RestartReason::Timeout,
        StopCause::Cancel => RestartReason::Cancelled,
    }
}
