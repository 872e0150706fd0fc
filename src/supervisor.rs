//! The dispatcher: starts the pool and the job source, and walks the
//! shutdown phases on stop requests, fatal errors and deadlines.
//!
//! Phases: running → draining (first SIGTERM/SIGINT: no new jobs, in-flight
//! jobs may finish and deliver within `--shutdown-timeout`) → forced
//! (second signal, SIGQUIT, the deadline, or a fatal error: handlers are
//! killed, their jobs fail as shut down, and results get a short window to
//! be delivered before they are spooled) → handlers stopped → exit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{exit, ConfigError, FatalError};
use crate::metrics::{Metrics, Phase};
use crate::pool::Pool;
use crate::runner::{Shutdown, SourceContext};
use crate::signals::ShutdownRequest;
use crate::source;
use crate::timer::sleep_until;

/// How long results of jobs failed by a forced shutdown may try to reach
/// their destination before they are spooled.
const FLUSH_WINDOW: Duration = Duration::from_secs(2);
/// Jobs a state dump names; the rest are counted.
const DUMP_JOBS: usize = 20;
/// How often the draining phase says what it waits for.
const DRAIN_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Runs the worker until its source ends or it is shut down; returns the
/// exit code. `requests` carries stop requests (signals, or a test).
pub async fn run(
    config: Config,
    mut requests: mpsc::UnboundedReceiver<ShutdownRequest>,
) -> Result<u8, FatalError> {
    crate::os::init_reaper();
    crate::os::check_handler_limits(config.handler.concurrency)
        .map_err(|e| FatalError::Config(ConfigError::Invalid(e.to_string())))?;
    // An API-only process has no handler to check.
    if let Some(program) = config.handler.argv.first() {
        crate::os::check_executable(program).map_err(|problem| FatalError::HandlerUnusable {
            program: program.clone(),
            problem: problem.into(),
        })?;
    }
    let identity = Arc::new(config.identity.clone());
    let objects = config
        .objects
        .as_ref()
        .map(crate::objects::store::Store::open)
        .transpose()?;
    let metrics = Arc::new(Metrics::default());
    // The root of every token of this run: when the run ends, in any way,
    // everything still listening (the observer, background tasks) stops.
    let root = CancellationToken::new();
    let _end_of_run = root.clone().drop_guard();
    let observer = root.child_token();
    if let Some(addr) = config.metrics_addr {
        let listener = crate::observe::bind(addr).await.map_err(|e| {
            ConfigError::Invalid(format!(
                "cannot listen on --metrics-addr {addr}: {e}; pick a free address or leave it unset"
            ))
        })?;
        tokio::spawn(crate::observe::serve(listener, metrics.clone(), observer));
    }
    if !config.fitness.is_empty() {
        let limit = config.handler.startup_timeout;
        tokio::select! {
            checked = crate::fitness::check_all(&config.fitness, limit) => {
                if let Err(why) = checked {
                    metrics.set_phase(Phase::Failing(why.to_string()));
                    return Err(FatalError::Unfit(why.into()));
                }
            }
            Some(_) = requests.recv() => {
                tracing::info!("stopped during the fitness checks; no job was taken");
                return Ok(exit::OK);
            }
        }
    }
    metrics.set_phase(Phase::Running);
    // Handlers that can never start and sources whose key is rejected
    // report on the same channel.
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel();
    let pool = Pool::start(
        config.handler.clone(),
        identity.clone(),
        metrics,
        fatal_tx.clone(),
        &root,
    );
    let shutdown = Shutdown::new(&root);
    let ctx = SourceContext {
        pool: pool.clone(),
        shutdown: shutdown.clone(),
        identity,
        fatal: fatal_tx,
        objects,
    };
    let mut source = tokio::spawn(source::run(config.source.clone(), ctx));
    let mut phases = Phases {
        pool: pool.clone(),
        shutdown,
        shutdown_timeout: config.shutdown_timeout,
        phase: RunPhase::Running,
        handlers_stopping: false,
        fatal: None,
    };
    let outcome = loop {
        let (drain_deadline, next_report, flush_at) = phases.timers();
        tokio::select! {
            outcome = &mut source => break outcome,
            Some(error) = fatal_rx.recv() => phases.handle_fatal(error),
            Some(request) = requests.recv() => phases.handle_request(request),
            _ = sleep_until(drain_deadline), if drain_deadline.is_some() => {
                tracing::info!("shutdown deadline passed with {} jobs in flight; forcing", pool.in_flight());
                phases.force();
            }
            _ = sleep_until(flush_at), if flush_at.is_some() => phases.flush(),
            _ = sleep_until(next_report), if next_report.is_some() => phases.report_drain(),
        }
    };
    // A source or a handler may report a fatal error and end at once.
    while let Ok(error) = fatal_rx.try_recv() {
        phases.handle_fatal(error);
    }
    tracing::info!("stopping handler processes");
    phases.stop_handlers();
    // Stopping handlers takes up to the kill grace; a second signal then
    // still means now.
    let stopping = pool.shutdown();
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            _ = &mut stopping => break,
            Some(request) = requests.recv() => phases.handle_request(request),
        }
    }
    let totals = pool.metrics.snapshot();
    tracing::info!(
        "all handler processes stopped; {} jobs processed, {} failed, handler restarts: {}",
        totals.jobs_processed,
        totals.jobs_failed,
        serde_json::to_string(&totals.handler_restarts).unwrap_or_default()
    );
    if let Some(error) = phases.fatal {
        return Err(error);
    }
    let code = outcome.map_err(|e| FatalError::Internal(format!("job source panicked: {e}")))??;
    Ok(if phases.forced() { exit::FORCED } else { code })
}

/// Where one run is on its way from running to stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RunPhase {
    /// Jobs are taken.
    Running,
    /// No new jobs; those in flight may finish until `deadline`.
    Draining {
        deadline: Instant,
        /// When to say again what the drain waits for.
        next_report: Instant,
    },
    /// Handlers are killed and their jobs failed; results still
    /// undelivered at `flush_at` are spooled (`None` once they were).
    Forced { flush_at: Option<Instant> },
}

/// The shutdown state of one run.
struct Phases {
    pool: Arc<Pool>,
    shutdown: Shutdown,
    shutdown_timeout: Duration,
    phase: RunPhase,
    /// The source has ended and the handlers are being stopped.
    handlers_stopping: bool,
    fatal: Option<FatalError>,
}

impl Phases {
    /// Moves to `phase`, and tells the metrics.
    fn enter(&mut self, phase: RunPhase) {
        self.phase = phase;
        self.show();
    }

    /// The one place the phase the metrics show is derived from the run's.
    fn show(&self) {
        let shown = match (&self.fatal, self.phase) {
            (Some(error), _) => Phase::Failing(error.to_string()),
            (None, _) if self.handlers_stopping => Phase::Stopping,
            (None, RunPhase::Running) => Phase::Running,
            (None, RunPhase::Draining { .. }) => Phase::Draining,
            (None, RunPhase::Forced { .. }) => Phase::Stopping,
        };
        self.pool.metrics.set_phase(shown);
    }

    fn forced(&self) -> bool {
        matches!(self.phase, RunPhase::Forced { .. })
    }

    /// The drain's deadline, its next report, and the flush, if due.
    fn timers(&self) -> (Option<Instant>, Option<Instant>, Option<Instant>) {
        match self.phase {
            RunPhase::Running => (None, None, None),
            RunPhase::Draining {
                deadline,
                next_report,
            } => (Some(deadline), Some(next_report), None),
            RunPhase::Forced { flush_at } => (None, None, flush_at),
        }
    }

    fn handle_request(&mut self, request: ShutdownRequest) {
        // The first stop request drains even when the source already
        // ended on its own; only a second one forces.
        match (request, self.phase) {
            (ShutdownRequest::StateDump, _) => self.dump_state(),
            (ShutdownRequest::Stop, RunPhase::Running) => {
                self.shutdown.take.cancel();
                let now = Instant::now();
                self.enter(RunPhase::Draining {
                    deadline: now + self.shutdown_timeout,
                    next_report: now,
                });
                tracing::info!(
                    "shutting down: taking no more jobs; waiting up to {} for {} jobs in flight (signal again to stop now)",
                    humantime::format_duration(self.shutdown_timeout),
                    self.pool.in_flight()
                );
            }
            _ => {
                if !self.forced() {
                    tracing::info!("stopping now: killing handlers; {} jobs in flight will be reported as failed", self.pool.in_flight());
                }
                self.force();
            }
        }
    }

    fn handle_fatal(&mut self, error: FatalError) {
        tracing::error!("{error}");
        if self.fatal.is_none() {
            self.fatal = Some(error);
        }
        self.show();
        self.force();
    }

    fn force(&mut self) {
        self.shutdown.take.cancel();
        if self.forced() {
            return;
        }
        self.pool.force();
        self.enter(RunPhase::Forced {
            flush_at: Some(Instant::now() + FLUSH_WINDOW),
        });
    }

    fn flush(&mut self) {
        tracing::info!("keeping undelivered results in the spool now");
        self.shutdown.flush.cancel();
        self.enter(RunPhase::Forced { flush_at: None });
    }

    /// The source has ended: handlers are stopped next.
    fn stop_handlers(&mut self) {
        self.handlers_stopping = true;
        self.show();
        self.shutdown.take.cancel();
    }

    /// SIGUSR1: one screen of what the worker is doing, in the log.
    fn dump_state(&self) {
        let figures = self.pool.metrics.snapshot();
        let phase = match self.phase {
            RunPhase::Running if self.handlers_stopping => "stopping handlers".to_owned(),
            RunPhase::Running => "running".to_owned(),
            RunPhase::Draining { deadline, .. } => format!(
                "draining ({}s left)",
                deadline.saturating_duration_since(Instant::now()).as_secs()
            ),
            RunPhase::Forced { .. } => "forced stop".to_owned(),
        };
        let jobs: Vec<String> = self
            .pool
            .in_flight_ages()
            .iter()
            .take(DUMP_JOBS)
            .map(|(id, age)| format!("{id} ({:.1}s)", age.as_secs_f64()))
            .collect();
        let more = self.pool.in_flight().saturating_sub(jobs.len());
        tracing::info!(
            "state (SIGUSR1): phase {phase}, state {}; slots {} ({} in use), handlers ready {}; jobs in flight: {}{}; undelivered results: {}; jobs done {} (failed {}); handler restarts {}; up {:.0}s",
            figures.state.name(),
            figures.slots,
            figures.in_flight,
            figures.handlers_ready,
            if jobs.is_empty() { "none".to_owned() } else { jobs.join(", ") },
            if more > 0 { format!(" and {more} more") } else { String::new() },
            figures.undelivered_results,
            figures.jobs_processed,
            figures.jobs_failed,
            serde_json::to_string(&figures.handler_restarts).unwrap_or_default(),
            figures.uptime_s,
        );
    }

    fn report_drain(&mut self) {
        let RunPhase::Draining { deadline, .. } = self.phase else {
            return;
        };
        self.phase = RunPhase::Draining {
            deadline,
            next_report: Instant::now() + DRAIN_REPORT_EVERY,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        tracing::info!(
            "draining: {} jobs in flight ({}); {}s left",
            self.pool.in_flight(),
            self.pool.in_flight_ids().join(", "),
            left.as_secs()
        );
    }
}
