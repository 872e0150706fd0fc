//! Starting a persistent handler: spawn it, wait for `{"ready": true}`
//! within the start-up timeout, and retry failed starts with back-off until
//! too many in a row make a crash loop, which is fatal.

use tokio::time::Instant;

use super::actor::Actor;
use super::lines::{clip_middle, Line};
use super::process::LOG_LINE_MAX;
use super::protocol::{parse_line, Frame};
use super::report::{log_stray_line, stderr_note, EXIT_AFTER_EOF};
use super::restart::RestartReason;
use super::running::{Event, RunningHandler, Spawner};
use crate::error::FatalError;

/// Failed starts in a row that make a crash loop.
const MAX_START_FAILURES: u32 = 5;

/// Why a start attempt did not give a ready process.
enum StartError {
    Shutdown,
    /// What went wrong, and the handler's last stderr lines.
    Failed {
        what: String,
        stderr: String,
    },
    Fatal(FatalError),
}

impl<S: Spawner> Actor<S> {
    pub(super) fn stopping(&self) -> bool {
        self.ctx.stop.is_cancelled() || self.ctx.force.is_cancelled()
    }

    /// Waits the next back-off delay; false if the pool stops meanwhile.
    pub(super) async fn pause(&mut self) -> bool {
        let delay = self.backoff.next().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.ctx.stop.cancelled() => false,
            _ = self.ctx.force.cancelled() => false,
        }
    }

    /// Starts a process and waits until it is ready, retrying failed
    /// starts with back-off; `None` when the pool stops or the handler can
    /// never start (then a fatal error has been reported).
    pub(super) async fn start(&mut self) -> Option<S::Process> {
        let mut failures = 0;
        loop {
            if self.stopping() {
                return None;
            }
            let (what, stderr) = match self.try_start().await {
                Ok(process) => return Some(process),
                Err(StartError::Shutdown) => return None,
                Err(StartError::Fatal(error)) => {
                    let _ = self.ctx.fatal.send(error);
                    return None;
                }
                Err(StartError::Failed { what, stderr }) => (what, stderr),
            };
            failures += 1;
            self.ctx.metrics.restarted(RestartReason::StartFailed);
            if failures >= MAX_START_FAILURES {
                let error = FatalError::HandlerStart(format!(
                    "{what} ({failures} attempts in a row; fix the handler and start again){}",
                    stderr_note(&stderr)
                ));
                let _ = self.ctx.fatal.send(error);
                return None;
            }
            tracing::warn!(
                handler = self.ctx.index,
                "{what}; starting it again (attempt {}){}",
                failures + 1,
                stderr_note(&stderr)
            );
            if !self.pause().await {
                return None;
            }
        }
    }

    /// Starts one process and waits for it to be ready. A process that
    /// does not get there is stopped as a whole group before this returns,
    /// so nothing it started can outlive the attempt.
    async fn try_start(&mut self) -> Result<S::Process, StartError> {
        let config = &self.ctx.config;
        let mut process = self
            .spawner
            .spawn(&self.ctx)
            .map_err(|e| StartError::Failed {
                what: format!("cannot execute handler {:?}: {e}", config.argv[0]),
                stderr: String::new(),
            })?;
        tracing::debug!(
            handler = self.ctx.index,
            pid = process.pid(),
            "handler started; waiting for {{\"ready\": true}}"
        );
        let ready = match self.wait_ready(&mut process).await {
            Ok(()) => self.warm_up(&mut process).await,
            Err(error) => Err(error),
        };
        match ready {
            Ok(()) => Ok(process),
            Err(error) => {
                process.stop(config.kill_grace, &self.ctx.force).await;
                Err(error)
            }
        }
    }

    async fn wait_ready(&self, process: &mut S::Process) -> Result<(), StartError> {
        let config = &self.ctx.config;
        let started = Instant::now();
        let deadline = started + config.startup_timeout;
        loop {
            match self.next_event(process, deadline).await? {
                Starting::TimedOut => {
                    let what = format!(
                        "handler was not ready within {} (--startup-timeout); it must print {{\"ready\": true}} on stdout and flush it (Python: print(..., flush=True) or python3 -u; a line left in an output buffer was never sent)",
                        humantime::format_duration(config.startup_timeout),
                    );
                    return Err(too_slow(process, what).await);
                }
                Starting::Exited(status) => {
                    let what = format!("handler {status} before it was ready{}", exit_hint(status));
                    return Err(failed(process, what).await);
                }
                Starting::Line(Line::Whole(bytes)) if parse_line(&bytes) == Frame::Ready => {
                    self.ctx.metrics.handler_started(started.elapsed());
                    tracing::info!(
                        handler = self.ctx.index,
                        pid = process.pid(),
                        "handler ready after {:.2}s",
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                Starting::Line(line) => log_stray_line(&line),
                Starting::StdoutClosed => {
                    let exited = tokio::time::timeout(EXIT_AFTER_EOF, process.exited()).await;
                    let what = match exited {
                        Ok(status) => format!("handler {status} before it was ready"),
                        Err(_) => "handler closed its stdout before it was ready".into(),
                    };
                    return Err(failed(process, what).await);
                }
            }
        }
    }

    /// Runs the `--warmup-input` job on a process that just became ready.
    /// An error answer, an exit or a closed stdout is a failed start; no
    /// answer within the start-up timeout is fatal, as for the ready line.
    async fn warm_up(&self, process: &mut S::Process) -> Result<(), StartError> {
        let config = &self.ctx.config;
        let Some(job) = &config.warmup else {
            return Ok(());
        };
        let id = format!("jobpipe-warmup-{}", process.pid());
        let mut job = job.clone();
        job["id"] = id.clone().into();
        process.send(job.to_string().into());
        let started = Instant::now();
        let deadline = started + config.startup_timeout;
        loop {
            let bytes = match self.next_event(process, deadline).await? {
                Starting::TimedOut => {
                    let what = format!(
                        "the warm-up job (--warmup-input) did not finish within {} (--startup-timeout)",
                        humantime::format_duration(config.startup_timeout),
                    );
                    return Err(too_slow(process, what).await);
                }
                Starting::Exited(status) => {
                    let what = format!("handler {status} during its warm-up job");
                    return Err(failed(process, what).await);
                }
                Starting::StdoutClosed => {
                    let what = "handler closed its stdout during its warm-up job".to_owned();
                    return Err(failed(process, what).await);
                }
                Starting::Line(Line::Whole(bytes)) => bytes,
                Starting::Line(line) => {
                    log_stray_line(&line);
                    continue;
                }
            };
            match parse_line(&bytes) {
                Frame::Final {
                    id: answered,
                    error,
                    ..
                } if answered == id => {
                    if let Some(error) = error {
                        let what = format!(
                            "the warm-up job (--warmup-input) failed: {}",
                            clip_middle(&error, LOG_LINE_MAX)
                        );
                        return Err(failed(process, what).await);
                    }
                    let took = started.elapsed();
                    self.ctx.metrics.handler_warmed_up(took);
                    tracing::info!(
                        handler = self.ctx.index,
                        pid = process.pid(),
                        "warm-up job done in {:.2}s",
                        took.as_secs_f64()
                    );
                    return Ok(());
                }
                Frame::Progress { id: answered, .. } | Frame::Stream { id: answered, .. }
                    if answered == id => {}
                _ => log_stray_line(&Line::Whole(bytes)),
            }
        }
    }

    /// What a starting process does next, before `deadline`; a stop of
    /// the pool ends the start.
    async fn next_event(
        &self,
        process: &mut S::Process,
        deadline: Instant,
    ) -> Result<Starting, StartError> {
        tokio::select! {
            _ = self.ctx.force.cancelled() => Err(StartError::Shutdown),
            _ = self.ctx.stop.cancelled() => Err(StartError::Shutdown),
            _ = tokio::time::sleep_until(deadline) => Ok(Starting::TimedOut),
            event = process.next() => Ok(match event {
                Event::Exited(status) => Starting::Exited(status),
                Event::Line(line) => line.map_or(Starting::StdoutClosed, Starting::Line),
            }),
        }
    }
}

/// What a starting process did, as the ready wait and the warm-up see it.
enum Starting {
    Line(Line),
    Exited(crate::os::ExitStatus),
    StdoutClosed,
    TimedOut,
}

/// A failed start, with the handler's last stderr lines: tried again.
async fn failed(process: &mut impl RunningHandler, what: String) -> StartError {
    StartError::Failed {
        what,
        stderr: process.stderr_tail().await,
    }
}

/// A start that ran out of time: fatal, since the next would too.
async fn too_slow(process: &mut impl RunningHandler, what: String) -> StartError {
    let tail = process.stderr_tail().await;
    StartError::Fatal(FatalError::HandlerStart(format!(
        "{what}{}",
        stderr_note(&tail)
    )))
}

/// What an exit status before ready usually means, when it says more than
/// the number.
fn exit_hint(status: crate::os::ExitStatus) -> &'static str {
    match status {
        crate::os::ExitStatus::Code(127) => {
            " (127: a command it runs, or the interpreter in its #! line, was not found)"
        }
        crate::os::ExitStatus::Code(126) => " (126: a command it runs is not executable)",
        _ => "",
    }
}
