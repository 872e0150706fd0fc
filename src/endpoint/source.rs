//! Jobs from jobpipe's own queue, with the endpoint API in the same
//! process (`jobpipe --serve-api -- handler`), or split across processes
//! sharing a PostgreSQL queue: the API alone (`--serve-api --api-only`)
//! and workers alone (`--queue postgres://… -- handler`).
//!
//! Besides the take loop here, four tasks run for the life of the source:
//! the API server ([`crate::endpoint::api`]), lease renewal for the jobs held, upkeep
//! ([`super::upkeep`]: lease expiry, ttl, retention, the worker heartbeat
//! for `/health`), and
//! webhook delivery ([`crate::endpoint::webhook`]). One task per job writes its
//! updates and final result ([`super::sink`]). On the first stop
//! request the API refuses new jobs (503), `/runsync` callers get their
//! answer, running jobs finish, and queued jobs stay in the database.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::keys::{self, KeyRing};
use super::rollup::{self, Rollup};
use super::sink::{Held, QueueSink};
use super::upkeep::Upkeep;
use crate::backoff::{Backoff, BackoffPolicy};
use crate::delivery::Spool;
use crate::endpoint::api::{self, ApiState};
use crate::endpoint::queue::stores::QueueLocation;
use crate::endpoint::queue::{log_failure, Queue, QueueEvent, WorkerInfo};
use crate::endpoint::settings::EndpointSettings;
use crate::error::{exit, ConfigError, FatalError};
use crate::input_schema::InputSchema;
use crate::objects::retention::{upload_lifetime, Deleter};
use crate::pool::Pool;
use crate::runner::SourceContext;
use crate::runner::{Runner, RunnerOptions};

/// How often queued jobs are looked for when no event says so (jobs
/// whose retry back-off ended, missed events).
const FALLBACK_POLL: Duration = Duration::from_secs(1);
/// Pauses after failed takes: growing while the database keeps failing,
/// so a broken one is not asked in a tight loop, and from the start again
/// after a take that worked.
const TAKE_BACKOFF: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(500), Duration::from_secs(30), 0.5);
/// How long the API may finish requests in progress once jobs are done.
const API_GRACE: Duration = Duration::from_secs(5);

/// The validated endpoint options.
#[derive(Clone)]
pub struct QueueSourceConfig {
    pub queue: QueueLocation,
    /// Where the API listens; `None` takes jobs without serving the API.
    pub api_addr: Option<SocketAddr>,
    /// The keys the API asks for (`--api-key`, `--api-keys`); none: open.
    pub keys: Option<Arc<KeyRing>>,
    /// What one client may take of the API: timeouts, connections.
    pub api_limits: api::Limits,
    /// `--input-schema`, checked again as a job is taken; `None` when
    /// `--endpoints` gives some endpoint a schema of its own (the API
    /// checks each job against its endpoint's at submission).
    pub schema: Option<Arc<InputSchema>>,
    /// Each endpoint's job defaults and schema, for the API.
    pub settings: Arc<EndpointSettings>,
    pub lease: Duration,
    /// Where the end of a job is kept when the database cannot take it.
    pub spool_dir: PathBuf,
    /// Job ends awaiting the database before no more jobs are taken.
    pub max_undelivered: usize,
    /// False with `--api-only`: serve the API, run no jobs here.
    pub take_jobs: bool,
    /// The endpoints whose jobs this worker takes (`--endpoint`).
    pub endpoints: Arc<[String]>,
    /// The longest a job should wait, for the autoscaling signals.
    pub target_wait: Duration,
    /// Signs webhook posts (`--webhook-secret`); never printed.
    pub webhook_secret: Option<Arc<str>>,
}

impl std::fmt::Debug for QueueSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSourceConfig")
            .field("queue", &self.queue)
            .field("api_addr", &self.api_addr)
            .field("keys", &self.keys)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// Runs the endpoint until the first stop request, then drains.
pub async fn run(config: QueueSourceConfig, ctx: SourceContext) -> Result<u8, FatalError> {
    // A database that is down at start is waited for; a stop request
    // ends the wait.
    let queue_tasks = ctx.shutdown.child();
    // Jobs whose result an earlier run kept in the spool keep their
    // leases, so that result is delivered rather than the job run again.
    let spool_dir = config.spool_dir.clone();
    let spooled = tokio::task::spawn_blocking(move || Spool::job_ids(&spool_dir))
        .await
        .unwrap_or_default();
    let queue = tokio::select! {
        queue = config.queue.open(&queue_tasks, &spooled) => queue?,
        _ = ctx.shutdown.take.cancelled() => return Ok(exit::OK),
    };
    let tasks = TaskTracker::new();
    let background = ctx.shutdown.child();
    let api_stop = ctx.shutdown.child();
    if let Some(addr) = config.api_addr {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            FatalError::Config(ConfigError::Invalid(format!(
                "the endpoint API cannot listen on {addr}: {e}; choose another --api-addr (JOBPIPE_API_ADDR)"
            )))
        })?;
        let shown = listener.local_addr().unwrap_or(addr);
        tracing::info!("endpoint API listening on http://{shown} (routes at the root and under /v2/ENDPOINT_ID/)");
        let state = ApiState {
            queue: queue.clone(),
            keys: config.keys.clone(),
            settings: config.settings.clone(),
            closing: ctx.shutdown.take.clone(),
            metrics: Some(ctx.pool.metrics.clone()),
            target_wait: config.target_wait,
            rollup: Arc::new(Rollup::new()),
            objects: ctx.objects.clone(),
            ends: Arc::new(api::Ends::start(&queue, api_stop.clone())),
        };
        tasks.spawn(rollup::sample(
            queue.clone(),
            state.rollup.clone(),
            background.clone(),
        ));
        if let Some(ring) = &config.keys {
            tasks.spawn(keys::reload_on_sighup(ring.clone(), api_stop.clone()));
        }
        let stop = api_stop.clone();
        let limits = config.api_limits;
        tasks.spawn(async move {
            if let Err(e) = api::serve(listener, api::router(state), limits, stop).await {
                tracing::error!("endpoint API server failed: {e}");
            }
        });
    }
    if !config.take_jobs {
        tasks.spawn(webhook_task(
            queue.clone(),
            config.webhook_secret.clone(),
            background.clone(),
        ));
        ctx.pool.metrics.serve_api_only();
        tasks.spawn(
            Upkeep {
                queue: queue.clone(),
                worker: None,
                metrics: ctx.pool.metrics.clone(),
                deleter: deleter(&ctx, &config),
            }
            .run(background.clone()),
        );
        tracing::info!("serving the API only (--api-only); workers elsewhere run the jobs");
        ctx.shutdown.take.cancelled().await;
        stop_tasks(&tasks, &background, &api_stop).await;
        return Ok(exit::OK);
    }
    let held = Held::default();
    let sink = Arc::new(QueueSink {
        queue: queue.clone(),
        held: held.clone(),
    });
    let options = RunnerOptions {
        source_name: "the queue",
        // The queue itself makes a streaming job's output its partials.
        aggregate_stream: None,
        spool_dir: config.spool_dir.clone(),
        input_schema: config.schema.clone(),
        max_undelivered: config.max_undelivered,
        object_namespace: match &*config.endpoints {
            [one] => one.clone(),
            _ => ctx.identity.worker_id.clone(),
        },
    };
    let runner = Runner::start(sink, &ctx, options).await?;
    tasks.spawn(webhook_task(
        queue.clone(),
        config.webhook_secret.clone(),
        background.clone(),
    ));
    tasks.spawn(
        Upkeep {
            queue: queue.clone(),
            worker: Some((worker_info(&ctx, &config.endpoints), ctx.pool.clone())),
            metrics: ctx.pool.metrics.clone(),
            deleter: deleter(&ctx, &config),
        }
        .run(background.clone()),
    );
    tasks.spawn(renew_leases(
        queue.clone(),
        held.clone(),
        ctx.pool.clone(),
        config.lease,
        background.clone(),
    ));
    tasks.spawn(stop_cancelled(
        queue.clone(),
        ctx.pool.clone(),
        background.clone(),
    ));
    take_loop(&queue, &config, &ctx, &held, &runner).await;
    if ctx.pool.in_flight() > 0 {
        tracing::info!(
            "taking no more jobs; waiting for {} running",
            ctx.pool.in_flight()
        );
    }
    runner.finish().await;
    stop_tasks(&tasks, &background, &api_stop).await;
    Ok(exit::OK)
}

/// The task that deletes objects past their time, with an object store.
fn deleter(ctx: &SourceContext, config: &QueueSourceConfig) -> Option<Deleter> {
    let store = ctx.objects.clone()?;
    let lifetime = upload_lifetime(&store.config, config.settings.longest_retention());
    Some(Deleter::start(store, lifetime))
}

/// Stops the background tasks and the API server; requests in progress
/// get [`API_GRACE`] to finish.
async fn stop_tasks(tasks: &TaskTracker, background: &CancellationToken, api: &CancellationToken) {
    background.cancel();
    api.cancel();
    tasks.close();
    if tokio::time::timeout(API_GRACE, tasks.wait()).await.is_err() {
        tracing::warn!(
            "endpoint API requests still open after {}s are cut off",
            API_GRACE.as_secs()
        );
    }
}

/// Takes queued jobs for free slots until the first stop request.
async fn take_loop(
    queue: &Arc<dyn Queue>,
    config: &QueueSourceConfig,
    ctx: &SourceContext,
    held: &Held,
    runner: &Runner<QueueSink>,
) {
    let take = &ctx.shutdown.take;
    let worker = ctx.identity.worker_id.clone();
    let me = worker_info(ctx, &config.endpoints);
    let mut events = queue.subscribe();
    let mut reported = Reported::default();
    let mut failures = TAKE_BACKOFF.iter();
    loop {
        let Some(mut slots) = runner.slots().await else {
            return;
        };
        let leases = match queue
            .take_raw(&worker, &config.endpoints, slots.len(), config.lease)
            .await
        {
            Ok(leases) => {
                failures.reset();
                leases
            }
            Err(e) => {
                log_failure("taking jobs", &e);
                // The slots stay free while the database is waited for.
                drop(slots);
                if !pause_after_failure(&mut failures, take).await {
                    return;
                }
                continue;
            }
        };
        if leases.is_empty() {
            drop(slots);
            report_slots(queue, &me, &ctx.pool, &mut reported).await;
            tokio::select! {
                _ = wait_for_queued(&mut events) => {}
                _ = tokio::time::sleep(FALLBACK_POLL) => {}
                _ = take.cancelled() => return,
            }
            continue;
        }
        for lease in leases {
            let slot = slots.pop().expect("no more jobs than slots are taken");
            tracing::debug!(job_id = %lease.job_id, "attempt {} of this job", lease.attempt);
            ctx.pool.metrics.queue_wait(lease.waited);
            held.hold(&lease, queue, &ctx.pool);
            // The job object goes to the handler as it was queued.
            runner.start_leased(lease.payload.into_bytes(), lease.stall_timeout, slot);
        }
        report_slots(queue, &me, &ctx.pool, &mut reported).await;
    }
}

/// Waits out the next pause after a failed take; false when a stop
/// request ended the wait.
async fn pause_after_failure(failures: &mut Backoff, stop: &CancellationToken) -> bool {
    let pause = failures.next().unwrap_or(TAKE_BACKOFF.max);
    tokio::select! {
        _ = tokio::time::sleep(pause) => true,
        _ = stop.cancelled() => false,
    }
}

/// What the last heartbeat of the take loop said, and when.
#[derive(Default)]
struct Reported {
    slots: Option<(usize, usize)>,
    at: Option<Instant>,
}

/// Least time between two heartbeats of the take loop: busy workers would
/// otherwise write one for almost every job.
const REPORT_SPACING: Duration = Duration::from_millis(250);

/// `/health` counts busy slots from heartbeats: a change is reported soon
/// (at once when the worker became idle or the last report is older than
/// [`REPORT_SPACING`]) rather than at the next beat of the upkeep task.
/// Who this worker is, for its heartbeats.
fn worker_info(ctx: &SourceContext, endpoints: &[String]) -> WorkerInfo {
    WorkerInfo {
        id: ctx.identity.worker_id.clone(),
        hostname: ctx.identity.hostname.clone(),
        endpoints: endpoints.to_vec(),
    }
}

async fn report_slots(
    queue: &Arc<dyn Queue>,
    worker: &WorkerInfo,
    pool: &Pool,
    reported: &mut Reported,
) {
    let now = (pool.capacity(), pool.in_flight());
    if reported.slots == Some(now) {
        return;
    }
    let recent = reported.at.is_some_and(|at| at.elapsed() < REPORT_SPACING);
    if recent && now.1 != 0 {
        return;
    }
    match queue.heartbeat(worker, now.0, now.1).await {
        Ok(()) => {
            reported.slots = Some(now);
            reported.at = Some(Instant::now());
        }
        Err(e) => log_failure("the worker heartbeat", &e),
    }
}

async fn wait_for_queued(events: &mut tokio::sync::broadcast::Receiver<QueueEvent>) {
    loop {
        match events.recv().await {
            Ok(QueueEvent::Queued | QueueEvent::Poll) | Err(RecvError::Lagged(_)) => return,
            Ok(_) => {}
            Err(RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// Renews the leases of held jobs every third of the lease; a job whose
/// lease is gone (cancelled, or lost while renewal failed) is stopped.
async fn renew_leases(
    queue: Arc<dyn Queue>,
    held: Held,
    pool: Arc<Pool>,
    lease: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(lease / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        let leases = held.leases();
        if leases.is_empty() {
            continue;
        }
        match queue.renew(&leases, lease).await {
            Ok(lost) => {
                for id in lost {
                    if pool.cancel(&id) {
                        tracing::warn!(job_id = %id, "this worker no longer holds the job's lease; stopping it");
                    }
                }
            }
            Err(e) => log_failure("renewing leases", &e),
        }
    }
}

/// Stops the handlers of jobs cancelled through the API.
async fn stop_cancelled(queue: Arc<dyn Queue>, pool: Arc<Pool>, stop: CancellationToken) {
    let mut events = queue.subscribe();
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = stop.cancelled() => return,
        };
        match event {
            Ok(QueueEvent::Cancelled(id)) => {
                if pool.cancel(&id) {
                    tracing::info!(job_id = %id, "job cancelled; stopping its handler");
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(
                    "{missed} queue events missed; lease renewal catches cancelled jobs"
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn webhook_task(queue: Arc<dyn Queue>, secret: Option<Arc<str>>, stop: CancellationToken) {
    crate::endpoint::webhook::run(queue, secret, stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn failed_takes_pause_longer_each_time_until_one_works() {
        let stop = CancellationToken::new();
        let mut failures = TAKE_BACKOFF.iter();
        let mut pauses = Vec::new();
        for _ in 0..4 {
            let started = Instant::now();
            assert!(pause_after_failure(&mut failures, &stop).await);
            pauses.push(started.elapsed());
        }
        // With half of each pause random: 250-500 ms, then 0.5-1 s, 1-2 s, 2-4 s.
        assert!(pauses[0] >= Duration::from_millis(250), "{pauses:?}");
        assert!(pauses[3] >= Duration::from_secs(2), "{pauses:?}");
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]), "{pauses:?}");
        failures.reset();
        let started = Instant::now();
        assert!(pause_after_failure(&mut failures, &stop).await);
        assert!(started.elapsed() <= Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_request_ends_the_pause_at_once() {
        let stop = CancellationToken::new();
        let mut failures = TAKE_BACKOFF.iter();
        for _ in 0..10 {
            failures.next();
        }
        let started = Instant::now();
        let pause = pause_after_failure(&mut failures, &stop);
        tokio::pin!(pause);
        tokio::select! {
            _ = &mut pause => panic!("the pause ended before the stop request"),
            _ = tokio::time::sleep(Duration::from_secs(1)) => stop.cancel(),
        }
        assert!(!pause.await);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
