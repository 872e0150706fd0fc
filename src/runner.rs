//! One job from taken to delivered, the same for every source.
//!
//! A source adds only its transport: it takes jobs (as JSON values) from its
//! queue and implements [`ResultSink`] to post what a job produces. The
//! [`Runner`] does the rest, so every source keeps the same promises:
//!
//! * a job is validated (an invalid one, or one whose id cannot be used, is
//!   answered with an error where it has an id to answer, logged where not),
//!   then submitted to the pool;
//! * its progress and stream updates are posted in order, with
//!   back-pressure: a job has a small queue of updates, and a handler whose
//!   updates are not yet posted waits (see [`crate::job::events`]); an
//!   update that cannot be delivered within [`UPDATE_BUDGET`] is dropped with
//!   a warning, so the final result never waits long behind it;
//! * its one final result is posted; if that first post fails (or has not
//!   succeeded within [`SPOOL_AFTER`]) the result is written to the spool at
//!   once and delivered from there, with retries, by this run or the next
//!   start;
//! * at most `max_undelivered` final results, and at most
//!   [`RESULT_BYTES_IN_FLIGHT`] bytes of them, may be awaiting delivery:
//!   beyond that [`Runner::slots`] waits, so the source stops taking jobs
//!   until delivery resumes.
//!
//! A new source looks like this:
//!
//! ```text
//! let runner = Runner::start(Arc::new(MySink::new(..)), &ctx, RunnerOptions { .. }).await?;
//! // Slots are room for jobs; None once shutdown says stop taking.
//! while let Some(slots) = runner.slots().await {
//!     for (value, slot) in my_queue.take(slots.len()).await.into_iter().zip(slots) {
//!         runner.start_job(value, slot);
//!     }
//! }
//! runner.finish().await; // every job ended, every result delivered or spooled
//! ```
//!
//! Its heartbeat, if it has one, reports [`Runner::ids`]: the jobs running
//! and those whose result is not yet delivered.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio_util::task::TaskTracker;

use crate::delivery::{Post, ResultSink, Spool};
use crate::error::FatalError;
use crate::job::Job;
use crate::json::Json;
use crate::metrics::Metrics;
use crate::objects::inputs::Inputs;
use crate::objects::offload::Offloader;
use crate::pool::{Pool, Slot};

mod context;
mod ids;
mod job;
mod objects;

pub use context::{Shutdown, SourceContext};

use ids::Undelivered;
pub use ids::{check_id, IdProblem, MAX_ID_LEN};

/// How long one update may take to be delivered before it is dropped.
pub const UPDATE_BUDGET: Duration = Duration::from_secs(10);
/// How many bytes of final results may be on their way while more jobs are
/// taken. Beyond it the next take waits for delivery, so a worker with
/// large payloads holds one job's input or output at a time, not the next
/// job's input beside the last one's output.
pub const RESULT_BYTES_IN_FLIGHT: usize = 8 << 20;
/// How long taking may wait for results to be delivered before it says so.
const UNDELIVERED_WARNING: Duration = Duration::from_secs(1);
/// How long a final result's first post may take before the result is
/// written to the spool anyway (the post goes on).
pub const SPOOL_AFTER: Duration = Duration::from_secs(2);

/// How a runner treats results, set by its source.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Named in log lines about jobs the source sent ("RunPod sent an invalid job").
    pub source_name: &'static str,
    /// A streaming job's final output is the list of its partials, which
    /// may hold this many bytes together (more fails the job).
    pub aggregate_stream: Option<usize>,
    /// Where undelivered final results are kept.
    pub spool_dir: PathBuf,
    /// `--input-schema`: a job whose input breaks it fails with the list of
    /// violations before a handler sees it.
    pub input_schema: Option<Arc<crate::input_schema::InputSchema>>,
    /// How many final results may await delivery before no more jobs are taken.
    pub max_undelivered: usize,
    /// The part of an offloaded object's key before the job id: the
    /// endpoint's or the worker's name.
    pub object_namespace: String,
}

/// Submits a ready job to the pool; the work that carries it to its
/// result, or none for a job already running here (its scratch directory,
/// made for this copy, is removed).
fn submit<S: ResultSink>(
    shared: &Arc<Shared<S>>,
    pool: &Pool,
    job: Job,
    slot: Slot,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let (id, dir) = (job.id.clone(), job.dir.clone());
    match pool.submit(slot, job) {
        Ok(events) => Some(shared.clone().run_job(id, events, dir)),
        Err(duplicate) => {
            tracing::warn!(job_id = %id, "{duplicate}");
            if let Some(dir) = dir {
                crate::objects::job_dir::remove(&dir, &id);
            }
            None
        }
    }
}

/// Carries jobs from taken to delivered. See the module docs.
pub struct Runner<S> {
    shared: Arc<Shared<S>>,
    pool: Arc<Pool>,
    jobs: TaskTracker,
}

/// What every job task of one runner uses.
struct Shared<S> {
    sink: Arc<S>,
    spool: Spool,
    shutdown: Shutdown,
    options: RunnerOptions,
    undelivered: Undelivered,
    /// Where posts, retries, undelivered and spooled results are counted.
    metrics: Arc<Metrics>,
    /// Updates dropped in this run, for the line at the end.
    updates_dropped: AtomicUsize,
    /// Uploads outputs over the threshold, when a store is configured.
    offloader: Option<Offloader>,
    /// Fetches inputs given by reference, when a store is configured.
    inputs: Option<Inputs>,
}

impl<S: ResultSink> Runner<S> {
    /// Opens the spool (an unusable one is a fatal error now, not at the
    /// first result it should keep) and starts delivering the results an
    /// earlier run kept there.
    pub async fn start(
        sink: Arc<S>,
        ctx: &SourceContext,
        options: RunnerOptions,
    ) -> Result<Runner<S>, FatalError> {
        // Opening fsyncs a probe file and the pending results are read
        // whole: disk work that would stall every task of a runtime thread.
        let dir = options.spool_dir.clone();
        let (spool, pending) = tokio::task::spawn_blocking(move || {
            let spool = Spool::open(&dir)?;
            let pending = spool.pending();
            Ok::<_, FatalError>((spool, pending))
        })
        .await
        .map_err(|e| FatalError::Internal(format!("opening the spool failed: {e}")))??;
        let offloader = ctx
            .objects
            .as_ref()
            .map(|store| Offloader::new(store.clone(), &options.object_namespace));
        let runner = Runner {
            shared: Arc::new(Shared {
                sink,
                spool,
                shutdown: ctx.shutdown.clone(),
                options,
                undelivered: Undelivered::default(),
                metrics: ctx.pool.metrics.clone(),
                updates_dropped: AtomicUsize::new(0),
                offloader,
                inputs: ctx.objects.clone().map(Inputs::new),
            }),
            pool: ctx.pool.clone(),
            jobs: TaskTracker::new(),
        };
        for spooled in pending {
            let shared = runner.shared.clone();
            runner.jobs.spawn(shared.redeliver(spooled));
        }
        Ok(runner)
    }

    /// Waits for room for more jobs and returns the free slots, or `None`
    /// once the source must stop taking. Room means free slots in the pool
    /// and fewer undelivered results than `max_undelivered`.
    pub async fn slots(&self) -> Option<Vec<Slot>> {
        let take = &self.shared.shutdown.take;
        let max = self.shared.options.max_undelivered;
        loop {
            let load = self.shared.undelivered.load();
            if !load.fits(max, RESULT_BYTES_IN_FLIGHT) {
                tracing::debug!(
                    "{} results ({} bytes) are on their way; the next job is taken once they are delivered",
                    load.count,
                    load.bytes
                );
                let delivered = self.shared.undelivered.fits(max, RESULT_BYTES_IN_FLIGHT);
                tokio::pin!(delivered);
                // A full house of results for a moment is how a fast
                // handler meets a busy database (they are written in
                // groups): only a wait that lasts is worth a warning.
                let waited = tokio::select! {
                    _ = &mut delivered => false,
                    _ = tokio::time::sleep(UNDELIVERED_WARNING) => true,
                    _ = take.cancelled() => return None,
                };
                if waited {
                    let count = self.shared.undelivered.load().count;
                    let warned = count >= max;
                    if warned {
                        tracing::warn!(
                            "{count} results have not been delivered for {}s (--max-undelivered {max}); taking no more jobs until delivery resumes",
                            UNDELIVERED_WARNING.as_secs()
                        );
                    }
                    tokio::select! {
                        _ = &mut delivered => if warned {
                            tracing::info!("results are being delivered again; taking jobs");
                        },
                        _ = take.cancelled() => return None,
                    }
                }
            }
            let slots = tokio::select! {
                slots = self.pool.free_slots() => slots,
                _ = take.cancelled() => return None,
            };
            if self
                .shared
                .undelivered
                .load()
                .fits(max, RESULT_BYTES_IN_FLIGHT)
            {
                return Some(slots);
            }
        }
    }

    /// Validates one taken job and starts it in `slot`; a job that cannot
    /// run is answered with an error when it can be, logged when not.
    pub fn start_job(&self, value: Value, slot: Slot) {
        self.admit(Job::from_value(value), slot);
    }

    /// The same for a job object's text as it came (see [`Job::from_json`]).
    /// Returns false when nothing in it could be answered (it was dropped).
    pub fn start_job_text(&self, text: Bytes, slot: Slot) -> bool {
        self.start_leased(text, None, slot)
    }

    /// [`Self::start_job_text`] for a job with its own stall timeout.
    pub fn start_leased(&self, text: Bytes, stall_timeout: Option<Duration>, slot: Slot) -> bool {
        let job = Job::from_json(text).map(|job| Job {
            stall_timeout,
            ..job
        });
        self.admit(job, slot)
    }

    /// Starts or answers a job; false when it had to be dropped unanswered.
    fn admit(&self, job: Result<Job, (String, Option<String>)>, slot: Slot) -> bool {
        let name = self.shared.options.source_name;
        let (id, problem) = match job {
            Ok(job) => match check_id(&job.id) {
                Ok(()) => {
                    self.submit(job, slot);
                    return true;
                }
                Err(problem) => (job.id, problem),
            },
            Err((message, None)) => {
                tracing::error!(
                    "{name} sent an invalid job ({message}) without an id; it cannot be answered"
                );
                return false;
            }
            Err((message, Some(id))) => match check_id(&id) {
                Ok(()) => (id, IdProblem::Answerable(message)),
                Err(problem) => (id, problem),
            },
        };
        match problem {
            IdProblem::Answerable(message) => {
                tracing::error!(job_id = %id.escape_debug(), "{name} sent an invalid job: {message}");
                self.answer_error(id, format!("invalid job: {message}"));
                true
            }
            IdProblem::Unanswerable(message) => {
                tracing::error!(
                    "{name} sent a job that cannot be answered and is dropped: {message}"
                );
                false
            }
        }
    }

    /// Posts an error as the final result of a job that never ran.
    fn answer_error(&self, id: String, error: String) {
        let post = Post::final_result(id, Json::from_value(&json!({ "error": error })));
        self.jobs.spawn(self.shared.clone().deliver_final(post));
    }

    fn submit(&self, job: Job, slot: Slot) {
        let id = job.id.clone();
        if let Some(schema) = &self.shared.options.input_schema {
            let violations = job.input().map(|input| schema.check(&input));
            if let Some(violations) = violations.filter(|v| !v.is_empty()) {
                let error = crate::input_schema::describe(&violations);
                tracing::error!(job_id = %id, "{error}");
                return self.answer_error(id, error);
            }
        }
        let job = match self.shared.with_job_dir(job) {
            Ok(job) => job,
            Err(error) => {
                tracing::error!(job_id = %id, "{error}");
                return self.answer_error(id, error);
            }
        };
        tracing::info!(job_id = %id, "job taken");
        if self.shared.has_input_refs(&job) {
            // Downloads take time: the slot waits for them in the job's
            // own task, not in the taking loop.
            let (shared, pool) = (self.shared.clone(), self.pool.clone());
            self.jobs.spawn(async move {
                match shared.fetch_inputs(job).await {
                    Ok(job) => {
                        if let Some(run) = submit(&shared, &pool, job, slot) {
                            run.await;
                        }
                    }
                    Err((job, error)) => {
                        drop(slot);
                        shared.input_failed(job, error).await;
                    }
                }
            });
            return;
        }
        if let Some(run) = submit(&self.shared, &self.pool, job, slot) {
            self.jobs.spawn(run);
        }
    }

    /// Ids of the jobs this worker holds: running, or with a result not
    /// yet delivered.
    pub fn ids(&self) -> Vec<String> {
        let mut ids = self.pool.in_flight_ids();
        ids.extend(self.shared.undelivered.ids());
        ids.sort();
        ids.dedup();
        ids
    }

    /// Waits until every job taken has ended and its result is delivered
    /// or spooled.
    pub async fn finish(&self) {
        self.jobs.close();
        self.jobs.wait().await;
        let dropped = self.shared.updates_dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!("{dropped} progress or stream updates were dropped in this run because they could not be delivered in time");
        }
    }
}
