//! What the persistent-handler actor needs of a running handler process,
//! as a trait, so that the actor can be driven by a scripted fake in unit
//! tests (see `fake.rs`) instead of a real child. The real process
//! ([`HandlerProcess`]) implements it; [`OsSpawner`] starts real ones.
//!
//! The actor is generic over these traits rather than holding a boxed
//! object: each job's lines go through them, and a generic costs nothing.

use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::lines::Line;
use super::process::HandlerProcess;
use super::ActorContext;
use crate::os::ExitStatus;

/// Longest time spent killing what a replaced handler left behind.
const ESCAPED_KILL_LIMIT: Duration = Duration::from_secs(2);

/// What a running process did next.
pub(super) enum Event {
    /// A stdout line; `None` once stdout is closed.
    Line(Option<Line>),
    /// The process exited.
    Exited(ExitStatus),
}

/// One running handler process, as the actor and its start-up see it.
pub(super) trait RunningHandler: Send + Sized {
    /// The process (and process group) id.
    fn pid(&self) -> i32;

    /// Queues one line (without its newline) for the handler's stdin.
    fn send(&self, line: Bytes);

    /// Tags the handler's stderr lines with these job ids from now on.
    fn set_jobs(&self, ids: String);

    /// The next stdout line or the exit, a line first when both are
    /// there. Cancel-safe.
    async fn next(&mut self) -> Event;

    /// The next stdout line; `None` once stdout is closed. Cancel-safe.
    async fn recv(&mut self) -> Option<Line>;

    /// Resolves when the process has exited. Cancel-safe.
    async fn exited(&mut self) -> ExitStatus;

    /// The last lines the handler wrote to stderr.
    async fn stderr_tail(&mut self) -> String;

    /// Stops the process and its group: SIGTERM, `grace`, SIGKILL; a
    /// cancelled `force` cuts the grace short.
    async fn stop(self, grace: Duration, force: &CancellationToken) -> ExitStatus;

    /// Kills the process group at once.
    async fn kill(self) -> ExitStatus;
}

/// Starts handler processes for an actor.
pub(super) trait Spawner: Send + Sync + 'static {
    type Process: RunningHandler;

    /// Starts one persistent handler process.
    fn spawn(&self, ctx: &ActorContext) -> std::io::Result<Self::Process>;

    /// Kills what a replaced process left behind outside its group.
    async fn kill_escaped(&self, ctx: &ActorContext);
}

/// Starts real processes.
pub(super) struct OsSpawner;

impl Spawner for OsSpawner {
    type Process = HandlerProcess;

    fn spawn(&self, ctx: &ActorContext) -> std::io::Result<HandlerProcess> {
        HandlerProcess::spawn(&ctx.config, &ctx.identity.worker_id, None)
    }

    async fn kill_escaped(&self, ctx: &ActorContext) {
        crate::os::kill_escaped(&ctx.identity.worker_id, ESCAPED_KILL_LIMIT).await;
    }
}

impl RunningHandler for HandlerProcess {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn send(&self, line: Bytes) {
        HandlerProcess::send(self, line);
    }

    fn set_jobs(&self, ids: String) {
        HandlerProcess::set_jobs(self, ids);
    }

    async fn next(&mut self) -> Event {
        tokio::select! {
            biased;
            line = self.stdout.recv() => Event::Line(line),
            status = self.exit.wait() => Event::Exited(status),
        }
    }

    async fn recv(&mut self) -> Option<Line> {
        self.stdout.recv().await
    }

    async fn exited(&mut self) -> ExitStatus {
        HandlerProcess::exited(self).await
    }

    async fn stderr_tail(&mut self) -> String {
        HandlerProcess::stderr_tail(self).await
    }

    async fn stop(self, grace: Duration, force: &CancellationToken) -> ExitStatus {
        HandlerProcess::stop(self, grace, force).await
    }

    async fn kill(self) -> ExitStatus {
        HandlerProcess::kill(self).await
    }
}
