//! One job from taken to delivered, the same for every source.
//!
//! A source adds only its transport: it takes jobs (as JSON values) from its
//! queue and implements [`ResultSink`] to post what a job produces. The
//! [`Runner`] does the rest, so every source keeps the same promises:
//! the job is validated (an invalid one is answered with an error where it
//! has an id to answer), submitted to the pool, its updates are posted in
//! order, and its one final result is delivered with retries or kept in the
//! spool (see [`crate::delivery`]).
//!
//! A new source looks like this:
//!
//! ```ignore
//! let runner = Runner::start(Arc::new(MySink::new(..)), &ctx, RunnerOptions { .. })?;
//! while let Some(slots) = runner.slots().await {   // None once shutdown says stop taking
//!     for (value, slot) in my_queue.take(slots.len()).await.into_iter().zip(slots) {
//!         runner.start(value, slot);
//!     }
//! }
//! runner.finish().await;                            // every job ended, every result out
//! ```
//!
//! Its heartbeat, if it has one, reports [`Runner::ids`]: the jobs running
//! and those whose result is not yet delivered.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::delivery::{deliver, Attempt, Delivery, Post, PostKind, Spool};
use crate::error::FatalError;
use crate::handler::lines::clip_middle;
use crate::job::{Job, JobEvent, Outcome};
use crate::metrics::Metrics;
use crate::pool::{Pool, Slot};
use crate::source::{Shutdown, SourceContext};

/// Where a source's results go: its transport for one post. The runner
/// decides what is posted, when, how often it is retried and what is kept
/// in the spool; the sink only sends one attempt and says how it went.
///
/// Bodies are source-neutral: a final result is `{"output": ..}` or
/// `{"error": "..", "output"?: ..}` (with [`Post::refresh_worker`] beside
/// it), a progress or stream update is the handler's value itself. A sink
/// wraps them in whatever its destination expects.
pub trait ResultSink: Send + Sync + 'static {
    fn send(&self, post: &Post) -> impl std::future::Future<Output = Attempt> + Send;
}

/// How a runner treats results, set by its source.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Named in log lines about jobs the source sent ("RunPod sent an invalid job").
    pub source_name: &'static str,
    /// A streaming job's final output is the list of its partials.
    pub aggregate_stream: bool,
    /// Where undelivered final results are kept.
    pub spool_dir: std::path::PathBuf,
    /// `--input-schema`: a job whose input breaks it fails with the list of
    /// violations before a handler sees it.
    pub input_schema: Option<Arc<crate::input_schema::InputSchema>>,
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
    /// Where posts, retries, undelivered and spooled results are counted.
    metrics: Arc<Metrics>,
}

impl<S: ResultSink> Runner<S> {
    /// Opens the spool and starts delivering the results an earlier run
    /// kept there.
    pub fn start(
        sink: Arc<S>,
        ctx: &SourceContext,
        options: RunnerOptions,
    ) -> Result<Runner<S>, FatalError> {
        let spool = Spool::open(&options.spool_dir)?;
        let runner = Runner {
            shared: Arc::new(Shared {
                sink,
                spool,
                shutdown: ctx.shutdown.clone(),
                options,
                metrics: ctx.pool.metrics.clone(),
            }),
            pool: ctx.pool.clone(),
            jobs: TaskTracker::new(),
        };
        for spooled in runner.shared.spool.pending() {
            tracing::info!(job_id = %spooled.post.job_id, "delivering a result kept in the spool by an earlier run");
            let shared = runner.shared.clone();
            runner.jobs.spawn(async move {
                let flush = &shared.shutdown.flush;
                shared.metrics.result_pending();
                let delivery = deliver(&*shared.sink, &spooled.post, flush, &shared.metrics).await;
                shared.metrics.result_settled();
                if delivery != Delivery::Flushed {
                    shared.spool.forget(&spooled.path);
                }
            });
        }
        Ok(runner)
    }

    /// Waits for room for more jobs and returns the free slots, or `None`
    /// once the source must stop taking.
    pub async fn slots(&self) -> Option<Vec<Slot>> {
        tokio::select! {
            slots = self.pool.free_slots() => Some(slots),
            _ = self.shared.shutdown.take.cancelled() => None,
        }
    }

    /// Validates one taken job and starts it in `slot`; a job that cannot
    /// run is answered with an error when it has an id.
    pub fn start_job(&self, value: Value, slot: Slot) {
        let name = self.shared.options.source_name;
        let violations = match (&self.shared.options.input_schema, value.get("input")) {
            (Some(schema), Some(input)) => schema.check(input),
            _ => Vec::new(),
        };
        let job = match Job::from_value(value) {
            Ok(job) => job,
            Err((message, id)) => {
                let Some(id) = id else {
                    tracing::error!(
                        "{name} sent an invalid job ({message}) without an id; it cannot be answered"
                    );
                    return;
                };
                tracing::error!(job_id = %id, "{name} sent an invalid job: {message}");
                let post =
                    Post::final_result(id, json!({"error": format!("invalid job: {message}")}));
                self.jobs.spawn(self.shared.clone().deliver_final(post));
                return;
            }
        };
        let id = job.id.clone();
        if !violations.is_empty() {
            let error = crate::input_schema::describe(&violations);
            tracing::error!(job_id = %id, "{error}");
            let post = Post::final_result(id, json!({ "error": error }));
            self.jobs.spawn(self.shared.clone().deliver_final(post));
            return;
        }
        tracing::info!(job_id = %id, "job taken");
        match self.pool.submit(slot, job) {
            Ok(events) => {
                self.jobs.spawn(self.shared.clone().run_job(id, events));
            }
            Err(duplicate) => tracing::warn!(job_id = %id, "{duplicate}"),
        }
    }

    /// Ids of the jobs this worker holds: running, or with a result not
    /// yet delivered.
    pub fn ids(&self) -> Vec<String> {
        self.pool.in_flight_ids()
    }

    /// Waits until every job taken has ended and its result is delivered
    /// or spooled.
    pub async fn finish(&self) {
        self.jobs.close();
        self.jobs.wait().await;
    }
}

impl<S: ResultSink> Shared<S> {
    /// Posts one job's updates in order, then its final result.
    async fn run_job(self: Arc<Self>, id: String, mut events: mpsc::UnboundedReceiver<JobEvent>) {
        let aggregate = self.options.aggregate_stream;
        let mut partials = Vec::new();
        while let Some(event) = events.recv().await {
            let (kind, body) = match event {
                JobEvent::Progress(value) => (PostKind::Progress, value),
                JobEvent::Stream(value) => {
                    if aggregate {
                        partials.push(value.clone());
                    }
                    (PostKind::Stream, value)
                }
                JobEvent::Done(result) => {
                    let body = match result.outcome {
                        Outcome::Cancelled => {
                            tracing::info!(job_id = %id, "job stopped on request; nothing is posted for it");
                            return;
                        }
                        Outcome::Output(_) if result.streamed && aggregate => {
                            json!({"output": partials})
                        }
                        Outcome::Output(output) => json!({"output": output}),
                        Outcome::Error { error, output } => {
                            let mut body = json!({"error": error});
                            if let Some(output) = output {
                                body["output"] = output;
                            }
                            body
                        }
                    };
                    let post = Post {
                        job_id: id,
                        kind: PostKind::Final {
                            is_stream: result.streamed,
                        },
                        body,
                        refresh_worker: result.refresh_worker,
                    };
                    self.deliver_final(post).await;
                    return;
                }
            };
            let post = Post {
                job_id: id.clone(),
                kind,
                body,
                refresh_worker: false,
            };
            let delivery = deliver(&*self.sink, &post, &self.shutdown.flush, &self.metrics).await;
            if delivery == Delivery::Flushed {
                self.metrics.update_dropped();
                tracing::warn!(job_id = %id, "shutting down: an undelivered {} update is dropped (only final results are kept)", kind.name());
            }
        }
    }

    /// Delivers a final result, or keeps it in the spool at shutdown.
    async fn deliver_final(self: Arc<Self>, post: Post) {
        self.metrics.result_pending();
        let delivery = deliver(&*self.sink, &post, &self.shutdown.flush, &self.metrics).await;
        self.metrics.result_settled();
        match delivery {
            Delivery::Delivered => tracing::debug!(job_id = %post.job_id, "result delivered"),
            Delivery::Refused => {}
            Delivery::Flushed => match self.spool.keep(&post) {
                Ok(path) => {
                    self.metrics.result_spooled();
                    tracing::warn!(job_id = %post.job_id, "result not delivered before shutdown; kept in {} for the next start", path.display())
                }
                Err(e) => {
                    tracing::error!(job_id = %post.job_id, "result not delivered and cannot be spooled ({e}); it is lost: {}", clip_middle(&post.body.to_string(), 2000))
                }
            },
        }
    }
}
