//! What an operator measures: jobs by outcome and duration, handler
//! restarts by reason and start-up time, result posts and retries,
//! undelivered and spooled results, and the worker's state.
//!
//! Every value lives in a Prometheus [`Registry`] of this worker's own (not
//! the process-wide default one), so several workers in one test process
//! never mix their counts. Each part of the worker bumps what it knows
//! about through the methods here; [`Metrics::render`] writes the text
//! format for `GET /metrics` and [`Metrics::snapshot`] the figures for
//! `GET /health` (see [`crate::observe`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::handler::restart::RestartReason;

/// Where the worker is in its life, as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Fitness checks are running; no handler has been started.
    Checking,
    /// Handlers run and jobs are taken.
    Running,
    /// A stop was asked for: no new jobs, the ones in flight finish.
    Draining,
    /// Handlers are being stopped.
    Stopping,
    /// The worker cannot work (a fitness check or a fatal error); it says why.
    Failing(String),
}

/// The state reported by `/health` and the `jobpipe_state` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Checking,
    Starting,
    Ready,
    Busy,
    Draining,
    Stopping,
    Failing,
}

impl State {
    const ALL: [State; 7] = [
        State::Checking,
        State::Starting,
        State::Ready,
        State::Busy,
        State::Draining,
        State::Stopping,
        State::Failing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            State::Checking => "checking",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Busy => "busy",
            State::Draining => "draining",
            State::Stopping => "stopping",
            State::Failing => "failing",
        }
    }
}

/// The worker's metrics.
pub struct Metrics {
    registry: Registry,
    started: Instant,
    jobs: IntCounterVec,
    job_duration: Histogram,
    queue_wait: Histogram,
    restarts: IntCounterVec,
    startup: HistogramVec,
    posts: IntCounterVec,
    post_retries: IntCounterVec,
    spooled: IntCounter,
    undelivered: IntGauge,
    updates_dropped: IntCounter,
    in_flight: IntGauge,
    slots: IntGauge,
    handlers_ready: IntGauge,
    /// Start attempts that failed since a handler was last ready.
    start_failures: AtomicU64,
    jobs_queued: IntGauge,
    /// Reads the pool's room and queue, at each scrape.
    pool_probe: Mutex<Option<PoolProbe>>,
    state: IntGaugeVec,
    ready: IntGauge,
    last_job: Gauge,
    last_job_at: Mutex<Option<SystemTime>>,
    phase: Mutex<Phase>,
    /// For a process that serves the API only (no handlers): whether its
    /// queue's database answered the last upkeep. `None` elsewhere.
    api_only: Mutex<Option<bool>>,
}

type PoolProbe = Box<dyn Fn() -> PoolView + Send + Sync>;

/// What the pool can take now, read when the state is asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolView {
    /// Jobs taken and waiting for a handler.
    pub queued: usize,
    /// Jobs the ready handlers could start now, beyond those queued.
    pub room: usize,
    /// Slots not held by a job.
    pub free_slots: usize,
}

/// The figures `/health` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub state: State,
    /// Why the worker is failing, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing: Option<String>,
    pub ready: bool,
    pub jobs_processed: u64,
    pub jobs_failed: u64,
    pub in_flight: u64,
    pub slots: u64,
    pub handlers_ready: u64,
    pub handler_restarts: BTreeMap<&'static str, u64>,
    pub undelivered_results: u64,
    pub uptime_s: f64,
    /// Seconds since the Unix epoch.
    pub last_job_at: Option<f64>,
}

/// Bucket bounds for job and start-up durations, in seconds: from a trivial
/// job to a long model load.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let metrics = Metrics {
            started: Instant::now(),
            jobs: counter_vec(&registry, "jobpipe_jobs_total", "Jobs finished, by outcome (completed, failed, cancelled).", &["outcome"]),
            job_duration: histogram(&registry, "jobpipe_job_duration_seconds", "Time from a job's hand-over to the handlers to its final result."),
            queue_wait: histogram(&registry, "jobpipe_queue_wait_seconds", "Time jobs waited in their queue before this worker took them, where the source knows it."),
            restarts: counter_vec(&registry, "jobpipe_handler_restarts_total", "Handler processes replaced or failing to start, by reason.", &["reason"]),
            startup: histogram_vec(&registry, "jobpipe_handler_startup_seconds", "Time a new handler process took, by phase: until ready, and its warm-up job.", &["phase"]),
            posts: counter_vec(&registry, "jobpipe_result_posts_total", "Posts of results and updates that ended, by kind and outcome (delivered, refused, flushed).", &["kind", "outcome"]),
            post_retries: counter_vec(&registry, "jobpipe_result_post_retries_total", "Failed post attempts that were retried, by kind.", &["kind"]),
            spooled: counter(&registry, "jobpipe_results_spooled_total", "Final results written to the spool because their first post failed or was slow."),
            undelivered: gauge(&registry, "jobpipe_results_undelivered", "Final results waiting to be delivered."),
            updates_dropped: counter(&registry, "jobpipe_updates_dropped_total", "Progress and stream updates dropped undelivered (at shutdown, or not delivered within their time budget)."),
            in_flight: gauge(&registry, "jobpipe_jobs_in_flight", "Jobs taken and not yet finished."),
            slots: gauge(&registry, "jobpipe_slots", "Jobs this worker can hold at once."),
            handlers_ready: gauge(&registry, "jobpipe_handlers_ready", "Handler processes ready for jobs."),
            start_failures: AtomicU64::new(0),
            jobs_queued: gauge(&registry, "jobpipe_jobs_queued", "Jobs taken by this worker and waiting for a handler."),
            pool_probe: Mutex::new(None),
            state: gauge_vec(&registry, "jobpipe_state", "The worker's state: 1 for the current one.", &["state"]),
            ready: gauge(&registry, "jobpipe_ready", "1 when a handler is ready and a slot is free (what GET /ready answers)."),
            last_job: float_gauge(&registry, "jobpipe_last_job_timestamp_seconds", "When the last job finished, in seconds since the Unix epoch (0: none yet)."),
            last_job_at: Mutex::new(None),
            phase: Mutex::new(Phase::Checking),
            api_only: Mutex::new(None),
            registry,
        };
        for reason in RestartReason::ALL {
            metrics.restarts.with_label_values(&[reason.name()]);
        }
        for outcome in ["completed", "failed", "cancelled"] {
            metrics.jobs.with_label_values(&[outcome]);
        }
        metrics.refresh_state();
        metrics
    }

    /// Counts one finished job and how long it took.
    pub fn job_done(&self, success: bool, took: Duration) {
        let outcome = if success { "completed" } else { "failed" };
        self.jobs.with_label_values(&[outcome]).inc();
        self.job_duration.observe(took.as_secs_f64());
        let now = SystemTime::now();
        *lock(&self.last_job_at) = Some(now);
        self.last_job.set(epoch_seconds(now));
    }

    /// Counts a job stopped on request (nothing is reported for it).
    pub fn job_cancelled(&self) {
        self.jobs.with_label_values(&["cancelled"]).inc();
    }

    /// How long a job waited in its queue, for sources that know.
    pub fn queue_wait(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    pub fn restarted(&self, reason: RestartReason) {
        self.restarts.with_label_values(&[reason.name()]).inc();
        if reason == RestartReason::StartFailed {
            self.start_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A handler process became ready after `took` (spawn to ready line).
    pub fn handler_started(&self, took: Duration) {
        self.startup
            .with_label_values(&["ready"])
            .observe(took.as_secs_f64());
    }

    /// A handler's warm-up job succeeded after `took`.
    pub fn handler_warmed_up(&self, took: Duration) {
        self.startup
            .with_label_values(&["warmup"])
            .observe(took.as_secs_f64());
    }

    /// A handler process is ready for real jobs.
    pub fn handler_up(&self) {
        self.start_failures.store(0, Ordering::Relaxed);
        self.handlers_ready.inc();
    }

    /// A handler process that was ready is being replaced or stopped.
    pub fn handler_down(&self) {
        self.handlers_ready.dec();
    }

    /// The pool started with `slots` slots; `probe` says what it can take.
    pub fn pool_started(&self, slots: usize, probe: impl Fn() -> PoolView + Send + Sync + 'static) {
        self.slots.set(slots as i64);
        *lock(&self.pool_probe) = Some(Box::new(probe));
    }

    pub fn set_in_flight(&self, jobs: usize) {
        self.in_flight.set(jobs as i64);
    }

    /// The outcome of one post, after all its attempts.
    pub fn post_ended(&self, kind: &str, outcome: &str) {
        self.posts.with_label_values(&[kind, outcome]).inc();
    }

    pub fn post_retried(&self, kind: &str) {
        self.post_retries.with_label_values(&[kind]).inc();
    }

    /// A final result starts its way to the platform.
    pub fn result_pending(&self) {
        self.undelivered.inc();
    }

    /// A final result was delivered, refused or spooled.
    pub fn result_settled(&self) {
        self.undelivered.dec();
    }

    pub fn result_spooled(&self) {
        self.spooled.inc();
    }

    pub fn update_dropped(&self) {
        self.updates_dropped.inc();
    }

    pub fn set_phase(&self, phase: Phase) {
        *lock(&self.phase) = phase;
    }

    /// This process serves the API only: it is ready once its API listens
    /// and its queue's database answers, with no handler to wait for.
    pub fn serve_api_only(&self) {
        lock(&self.api_only).get_or_insert(false);
    }

    /// Whether the queue's database answered the last call that checks it.
    pub fn database_answered(&self, answered: bool) {
        if let Some(state) = lock(&self.api_only).as_mut() {
            *state = answered;
        }
    }

    /// The current state, derived from the phase and what the handlers do.
    pub fn state(&self) -> State {
        match &*lock(&self.phase) {
            Phase::Checking => return State::Checking,
            Phase::Draining => return State::Draining,
            Phase::Stopping => return State::Stopping,
            Phase::Failing(_) => return State::Failing,
            Phase::Running => {}
        }
        if let Some(answered) = *lock(&self.api_only) {
            return if answered {
                State::Ready
            } else {
                State::Starting
            };
        }
        let Some(view) = self.pool_view() else {
            return State::Checking;
        };
        if self.handlers_ready.get() <= 0 {
            if self.start_failures.load(Ordering::Relaxed) > 0 {
                return State::Failing;
            }
            return State::Starting;
        }
        if view.room > 0 && view.free_slots > 0 {
            State::Ready
        } else {
            State::Busy
        }
    }

    fn pool_view(&self) -> Option<PoolView> {
        lock(&self.pool_probe).as_ref().map(|probe| probe())
    }

    fn refresh_state(&self) -> State {
        if let Some(view) = self.pool_view() {
            self.jobs_queued.set(view.queued as i64);
        }
        let state = self.state();
        for s in State::ALL {
            self.state
                .with_label_values(&[s.name()])
                .set(i64::from(s == state));
        }
        self.ready.set(i64::from(state == State::Ready));
        state
    }

    /// The figures at this moment.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.refresh_state();
        let failing = match &*lock(&self.phase) {
            Phase::Failing(why) => Some(why.clone()),
            _ if state == State::Failing => {
                Some("the handler failed to start; it is being started again".into())
            }
            _ => None,
        };
        let count = |outcome: &str| self.jobs.with_label_values(&[outcome]).get();
        let failed = count("failed");
        Snapshot {
            state,
            failing,
            ready: state == State::Ready,
            jobs_processed: count("completed") + failed,
            jobs_failed: failed,
            in_flight: self.in_flight.get().max(0) as u64,
            slots: self.slots.get().max(0) as u64,
            handlers_ready: self.handlers_ready.get().max(0) as u64,
            handler_restarts: RestartReason::ALL
                .iter()
                .map(|r| (r.name(), self.restarts.with_label_values(&[r.name()]).get()))
                .collect(),
            undelivered_results: self.undelivered.get().max(0) as u64,
            uptime_s: self.started.elapsed().as_secs_f64(),
            last_job_at: lock(&self.last_job_at).map(epoch_seconds),
        }
    }

    /// All metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        self.refresh_state();
        let mut text = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut text) {
            tracing::error!("cannot encode the metrics: {e}");
        }
        String::from_utf8(text).unwrap_or_default()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn epoch_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Registers a collector; names are fixed in this file, so a failure is a
/// programming error caught by the tests.
fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect("valid metric"))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid metric"))
}

fn float_gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    register(registry, Gauge::new(name, help).expect("valid metric"))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    register(registry, Histogram::with_opts(opts).expect("valid metric"))
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    register(
        registry,
        HistogramVec::new(opts, labels).expect("valid metric"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn state_follows_handlers_and_slots() {
        let m = Metrics::new();
        assert_eq!(m.state(), State::Checking);
        m.set_phase(Phase::Running);
        let room = Arc::new(AtomicUsize::new(0));
        let probe = room.clone();
        m.pool_started(2, move || PoolView {
            queued: 0,
            room: probe.load(Ordering::Relaxed),
            free_slots: 2,
        });
        assert_eq!(m.state(), State::Starting);
        m.restarted(RestartReason::StartFailed);
        assert_eq!(m.state(), State::Failing);
        m.handler_up();
        room.store(1, Ordering::Relaxed);
        assert_eq!(m.state(), State::Ready);
        room.store(0, Ordering::Relaxed);
        assert_eq!(m.state(), State::Busy, "the one ready handler is full");
        m.handler_up();
        room.store(1, Ordering::Relaxed);
        assert_eq!(m.state(), State::Ready);
        m.set_phase(Phase::Draining);
        assert_eq!(m.state(), State::Draining);
        assert!(!m.snapshot().ready);
    }

    #[test]
    fn snapshot_counts_jobs_and_restarts() {
        let m = Metrics::new();
        m.job_done(true, Duration::from_millis(5));
        m.job_done(false, Duration::from_millis(5));
        m.job_cancelled();
        m.restarted(RestartReason::MaxMemory);
        let s = m.snapshot();
        assert_eq!((s.jobs_processed, s.jobs_failed), (2, 1));
        assert_eq!(s.handler_restarts["max_memory"], 1);
        assert!(s.last_job_at.is_some());
        let text = m.render();
        assert!(
            text.contains("jobpipe_jobs_total{outcome=\"cancelled\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("jobpipe_job_duration_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains("jobpipe_state{state=\"checking\"} 1"),
            "{text}"
        );
    }
}
