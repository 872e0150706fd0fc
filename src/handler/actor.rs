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
//! Where the actor is in that life is its [`ActorState`], which holds what
//! only that stage has: the process once started; while serving, the jobs
//! in flight and whether more are taken ([`Intake`]); while stopping, why
//! the process ends. The state alone decides how many more jobs the actor
//! could start now, which it tells the pool so that no job is taken for a
//! handler that is not ready.
//!
//! What a serving process holds (its jobs, their stop requests and
//! deadlines, its intake) is in [`super::serving`]; this file is how the
//! actor reacts.
//!
//! The process is reached through [`RunningHandler`] and started by a
//! [`Spawner`], so unit tests (`actor_tests.rs`) drive the actor with a
//! scripted fake instead of a child.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::lines::Line;
use super::protocol::{cancel_line, parse_line, sniff_id, Frame};
use super::running::{Event, OsSpawner, RunningHandler, Spawner};
use super::serving::{
    cause_name, cause_reason, watch_job, Intake, Running, Serving, StopCause, StrayLines,
};
use super::spill::Split;

use super::config::HandlerConfig;
use super::report::{log_stray_line, stderr_note, EXIT_AFTER_EOF};
use super::restart::RestartReason;
use super::ActorContext;
use crate::backoff::{Backoff, BackoffPolicy};
use crate::error::FatalError;
use crate::job::spilled::FileRange;
use crate::job::{FailureKind, JobFailure, JobResult, JobTicket, Outcome};
use crate::json::Json;
use crate::timer::sleep_until;

/// Delays between restarts after a crash.
const RESTART_BACKOFF: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(100), Duration::from_secs(10), 0.2);
/// How long, after the process exited, lines it wrote are still read.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(100);

/// Where an actor is in its life; each stage holds what only it has.
enum ActorState<P> {
    /// A process is being started and has not said it is ready.
    Starting,
    /// A ready process, serving jobs.
    Serving(P, Serving),
    /// The process is being stopped (its whole group), and why.
    Stopping(P, End),
    /// No process, and none will be started.
    Exited,
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
    Stalled,
    Job(Option<JobTicket>),
    Shutdown,
}

/// Runs the actor until the pool stops or the handler cannot start.
pub async fn run(ctx: ActorContext) {
    run_with(ctx, OsSpawner).await;
}

/// [`run`], with processes started by `spawner`.
pub(super) async fn run_with<S: Spawner>(ctx: ActorContext, spawner: S) {
    let mut actor = Actor {
        backoff: RESTART_BACKOFF.iter(),
        ctx,
        spawner,
        ready: false,
        last_end: String::new(),
    };
    actor.life().await;
}

impl<S: Spawner> Actor<S> {
    /// Starts, serves and replaces processes until the pool stops or the
    /// handler cannot start.
    async fn life(&mut self) {
        let mut state = ActorState::Starting;
        loop {
            match &state {
                ActorState::Serving(_, s) => self.tell_pool(Some(s)),
                _ => self.tell_pool(None),
            }
            state = match state {
                ActorState::Starting => match self.start().await {
                    Some(process) => {
                        let s = Serving::new(process.pid());
                        ActorState::Serving(process, s)
                    }
                    None => ActorState::Exited,
                },
                ActorState::Serving(mut process, mut s) => {
                    let end = self.serve(&mut process, &mut s).await;
                    ActorState::Stopping(process, end)
                }
                ActorState::Stopping(process, end) => {
                    if self.end(process, end).await {
                        ActorState::Starting
                    } else {
                        ActorState::Exited
                    }
                }
                ActorState::Exited => return,
            };
        }
    }

    /// Stops a served process as `end` says; true when another is to be
    /// started.
    async fn end(&mut self, process: S::Process, end: End) -> bool {
        let grace = self.ctx.config.kill_grace;
        let reason = match end {
            End::Kill => {
                process.kill().await;
                return false;
            }
            End::Stop => {
                process.stop(grace, &self.ctx.force).await;
                return false;
            }
            End::Restart(reason) => reason,
        };
        self.ctx.metrics.restarted(reason);
        tracing::info!(
            handler = self.ctx.index,
            pid = process.pid(),
            "replacing handler process ({})",
            reason.name()
        );
        process.stop(grace, &self.ctx.force).await;
        self.spawner.kill_escaped(&self.ctx).await;
        match reason {
            // The handler ended by itself: that counts towards failing
            // every job, and the next start waits its back-off.
            RestartReason::Crashed | RestartReason::ExitedIdle => {
                !self.failing_every_job() && self.pause().await
            }
            RestartReason::ProtocolError => self.pause().await,
            RestartReason::Timeout
            | RestartReason::Cancelled
            | RestartReason::Refresh
            | RestartReason::JobFailed
            | RestartReason::StartFailed
            | RestartReason::MaxJobs
            | RestartReason::MaxMemory
            | RestartReason::Stalled => true,
        }
    }
}

pub(super) struct Actor<S> {
    pub(super) ctx: ActorContext,
    pub(super) backoff: Backoff,
    pub(super) spawner: S,
    /// Whether the pool's metrics count this actor's handler as ready.
    ready: bool,
    /// How the last process ended by itself, for the report when the
    /// handler turns out to fail every job.
    last_end: String,
}

impl<S: Spawner> Actor<S> {
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

    /// Tells the pool how many jobs this actor could start now: some only
    /// while serving with its intake open (then the handler is ready).
    fn tell_pool(&mut self, serving: Option<&Serving>) {
        let (ready, room) = match serving {
            Some(s) => (s.intake == Intake::Open, s.room(&self.ctx)),
            None => (false, 0),
        };
        if ready != self.ready {
            self.ready = ready;
            if ready {
                self.ctx.metrics.handler_up();
            } else {
                self.ctx.metrics.handler_down();
            }
        }
        self.ctx.room.set(room);
    }

    /// Feeds jobs to a ready process until it must be replaced or stopped.
    async fn serve(&mut self, process: &mut S::Process, s: &mut Serving) -> End {
        let mut tagged = String::new();
        loop {
            if self.ctx.stop.is_cancelled() {
                s.close();
            }
            self.tell_pool(Some(s));
            let room = s.room(&self.ctx) > 0;
            let grace_over = s.next_grace_deadline();
            let stall_at = s.next_stall_deadline();
            let step = tokio::select! {
                biased;
                _ = self.ctx.force.cancelled() => Step::Force,
                event = process.next() => match event {
                    Event::Line(line) => Step::Line(line),
                    Event::Exited(status) => Step::Exited(status),
                },
                Some((id, cause)) = s.stop_requests.recv() => Step::StopJob(id, cause),
                _ = sleep_until(grace_over), if grace_over.is_some() => Step::GraceOver,
                _ = sleep_until(stall_at), if stall_at.is_some() => Step::Stalled,
                ticket = self.ctx.queue.recv(), if room => Step::Job(ticket.ok()),
                _ = self.ctx.stop.cancelled(), if s.jobs.is_empty() => Step::Shutdown,
            };
            if let Some(end) = self.handle(step, process, s).await {
                return end;
            }
            // Stderr lines are tagged with the jobs the process holds now.
            let ids = s.ids();
            if ids != tagged {
                process.set_jobs(ids.clone());
                tagged = ids;
            }
            if let (true, Intake::Replace(reason)) = (s.jobs.is_empty(), s.intake) {
                return End::Restart(reason);
            }
        }
    }

    async fn handle(
        &mut self,
        step: Step,
        process: &mut S::Process,
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
                s.close();
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
            Step::Stalled => self.handle_stalled(process, s).await,
        }
    }

    fn handle_job(&mut self, mut ticket: JobTicket, process: &S::Process, s: &mut Serving) {
        if ticket.is_cancelled() {
            ticket.finish(JobResult::cancelled());
            return;
        }
        let id = ticket.id().to_owned();
        tracing::debug!(job_id = %id, pid = process.pid(), "job sent to handler");
        process.send(std::mem::take(&mut ticket.job.line));
        // One deadline for the job, watched apart and when it waits to stream.
        let deadline = self
            .ctx
            .config
            .job_timeout
            .map(|limit| Instant::now() + limit);
        let watcher = watch_job(&ticket, deadline, s.stops.clone());
        let stall = ticket.job.stall_timeout.or(self.ctx.config.stall_timeout);
        s.jobs.insert(
            id,
            Running {
                ticket,
                watcher,
                deadline,
                stall,
                heard: Instant::now(),
                streamed: false,
                stopping: None,
            },
        );
    }

    async fn handle_line(
        &mut self,
        line: Line,
        process: &S::Process,
        s: &mut Serving,
    ) -> Option<End> {
        let max = self.ctx.config.max_output_size;
        let bytes = match line {
            Line::TooLong { len, prefix } => return self.too_large(s, len, &prefix),
            Line::Unspilled { len, prefix, error } => {
                let message = format!("the handler's result ({len} bytes so far) could not be written to a file under --scratch-dir to be uploaded: {error}; free space there or point --scratch-dir at a larger disk");
                return self.fail_line(s, &prefix, FailureKind::OutputTooLarge, message);
            }
            Line::Whole(bytes) => bytes,
            Line::Spilled { file, len } => match split_off_thread(file, len).await {
                Ok(Split::Output { head, output }) => {
                    return self.spilled_output(s, &head, output, len)
                }
                Ok(Split::Whole(bytes)) => bytes,
                Err(e) => {
                    let message = format!("the handler's result ({len} bytes) was written to a file under --scratch-dir that cannot be read back: {e}");
                    return self.fail_line(s, b"", FailureKind::OutputTooLarge, message);
                }
            },
        };
        let frame = parse_line(&bytes);
        if bytes.len() > max
            && matches!(
                frame,
                Frame::Final { .. } | Frame::Stream { .. } | Frame::Files { .. }
            )
        {
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
                job.heard = Instant::now();
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
                match s.jobs.get_mut(&id) {
                    Some(job) => {
                        job.heard = Instant::now();
                        job.ticket.progress(value);
                    }
                    None => {
                        tracing::warn!(job_id = %id, "handler sent progress for a job it is not running; ignored")
                    }
                }
                None
            }
            Frame::Heartbeat { id } => {
                match s.jobs.get_mut(&id) {
                    Some(job) => job.heard = Instant::now(),
                    None => {
                        tracing::debug!(job_id = %id, "handler sent a heartbeat for a job it is not running; ignored")
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
            Frame::Files {
                id,
                files,
                refresh_worker,
            } => {
                if s.jobs.contains_key(&id) {
                    let result = JobResult {
                        outcome: Outcome::Files(files),
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
        } else if !matches!(s.intake, Intake::Replace(_)) {
            super::recycle::due(&self.ctx.config, s.served, s.pid)
        } else {
            None
        };
        match reason {
            Some(reason) if s.jobs.is_empty() => Some(End::Restart(reason)),
            Some(reason) => {
                s.intake = Intake::Replace(reason);
                None
            }
            None => None,
        }
    }

    /// A final answer whose output stayed in the file its line was
    /// written to ([`super::spill`]): the job ends with it, and the runner
    /// uploads it from there.
    fn spilled_output(
        &mut self,
        s: &mut Serving,
        head: &Bytes,
        output: FileRange,
        len: usize,
    ) -> Option<End> {
        let Frame::Final {
            id, refresh_worker, ..
        } = parse_line(head)
        else {
            return self.unreadable(s, head, "its fields beside the output cannot be read");
        };
        if output.len > self.ctx.config.max_output_size as u64 {
            return self.too_large(s, len, head);
        }
        if !s.jobs.contains_key(&id) {
            return self.answer_for_unknown_job(s, &id);
        }
        let result = JobResult {
            outcome: Outcome::Spilled(output),
            refresh_worker,
            streamed: false,
        };
        self.finish(s, &id, result)
    }

    fn too_large(&mut self, s: &mut Serving, len: usize, prefix: &[u8]) -> Option<End> {
        let message = format!(
            "the handler's result is more than the {} byte limit (--max-output-size; {len} bytes were read); store large outputs elsewhere and return a reference",
            self.ctx.config.max_output_size
        );
        self.fail_line(s, prefix, FailureKind::OutputTooLarge, message)
    }

    /// Fails the job a line that could not be taken answers (the only job
    /// in flight, or the one its first bytes name).
    fn fail_line(
        &mut self,
        s: &mut Serving,
        prefix: &[u8],
        kind: FailureKind,
        message: String,
    ) -> Option<End> {
        let id = if s.jobs.len() == 1 {
            s.jobs.keys().next().cloned()
        } else {
            sniff_id(prefix, s.jobs.keys().map(String::as_str)).map(str::to_owned)
        };
        let Some(id) = id else {
            tracing::warn!("{message}; the line names no job in flight, so it is dropped");
            return None;
        };
        let failure = JobFailure::new(kind, message);
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
        process: &mut S::Process,
        s: &mut Serving,
    ) -> End {
        // Lines written just before the exit may still be in the pipe.
        let deadline = Instant::now() + DRAIN_AFTER_EXIT;
        while !s.jobs.is_empty() {
            match tokio::time::timeout_at(deadline, process.recv()).await {
                Ok(Some(line)) => {
                    self.handle_line(line, process, s).await;
                }
                Ok(None) | Err(_) => break,
            }
        }
        let tail = process.stderr_tail().await;
        self.last_end = format!("handler {status}{}", stderr_note(&tail));
        if s.jobs.is_empty() {
            tracing::warn!(pid = process.pid(), "handler {status} while idle");
            return End::Restart(RestartReason::ExitedIdle);
        }
        tracing::warn!(pid = process.pid(), jobs = %s.ids(), "handler {status} while running jobs");
        s.fail_all(
            JobFailure::new(FailureKind::HandlerCrashed, format!("handler {status}"))
                .with_stderr(tail),
        );
        End::Restart(RestartReason::Crashed)
    }

    async fn handle_stdout_closed(&mut self, process: &mut S::Process, s: &mut Serving) -> End {
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
        process: &S::Process,
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

    /// Fails the jobs whose handler went quiet for their stall timeout. A
    /// hung handler is replaced: at once when it holds no other job, else
    /// once the others end (each has the same limit).
    async fn handle_stalled(&mut self, process: &mut S::Process, s: &mut Serving) -> Option<End> {
        let now = Instant::now();
        let stalled: Vec<(String, Duration)> = s
            .jobs
            .iter()
            .filter(|(_, job)| job.stopping.is_none())
            .filter_map(|(id, job)| {
                let limit = job.stall?;
                (job.heard + limit <= now).then(|| (id.clone(), limit))
            })
            .collect();
        if stalled.is_empty() {
            return None;
        }
        let tail = process.stderr_tail().await;
        for (id, limit) in stalled {
            let running = s.jobs.remove(&id).expect("present");
            running.watcher.abort();
            tracing::warn!(job_id = %id, pid = process.pid(), "the handler sent nothing for this job for {}; it counts as hung and is replaced", humantime::format_duration(limit));
            if self.ctx.config.jobs_per_handler > 1 {
                process.send(cancel_line(&id).into());
            }
            let message = format!("{}{}", HandlerConfig::stall_message(limit), s.stray.note());
            running
                .ticket
                .fail(JobFailure::new(FailureKind::Stalled, message).with_stderr(tail.clone()));
        }
        if s.jobs.is_empty() {
            return Some(End::Restart(RestartReason::Stalled));
        }
        s.intake = Intake::Replace(RestartReason::Stalled);
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

impl<S: Spawner> Actor<S> {
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

/// [`super::spill::split`] off the runtime's threads: it reads the file twice.
async fn split_off_thread(
    file: crate::job::spilled::SpillFile,
    len: usize,
) -> std::io::Result<Split> {
    tokio::task::spawn_blocking(move || super::spill::split(file, len))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}
