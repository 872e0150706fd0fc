//! The job queue behind the endpoint API: a database that holds every job
//! from `/run` to its one final status, and hands jobs to workers under
//! leases.
//!
//! The [`Queue`] trait is what the API routes and the queue source use; a
//! store implements it ([`sqlite`] embedded, one process; [`postgres`]
//! shared by many processes on many machines). The model is
//! made for many workers sharing one database:
//!
//! * A worker *takes* a queued job under a **lease**: an expiry time and a
//!   token. It renews the lease while the handler holds the job; a result
//!   is accepted only with the current token, so a worker that lost its
//!   lease (it froze, was cut off, or the job was cancelled) cannot write a
//!   second final status.
//! * Every take counts an **attempt**. An attempt that fails in a way the
//!   job's `policy.retry` names (by default: the handler crashed or
//!   stalled, or the worker was lost, its lease running out) puts the job
//!   back in the queue after a back-off while attempts remain
//!   (`maxAttempts`), else the job ends saying why. Each ended attempt is
//!   kept in the job's history, written with the job's change
//!   ([`attempts`]). Execution is therefore at-least-once, and
//!   every job ends with exactly one final status.
//! * Every final status goes through one transition that also records the
//!   job's webhook delivery, in the same transaction, so a restart never
//!   loses a webhook.
//! * Finished jobs are deleted when their retention runs out, so the
//!   database does not grow with the jobs that pass through it.
//!
//! JSON travels as text ([`Json`]): a job's object as it was submitted
//! (with its `id` added), the handler's output as it wrote it. The stores
//! keep that text, and the API answers with it, so numbers of any size,
//! `-0`, key order and escapes reach the handler and the caller unchanged.
//! The methods whose names end in `_raw` carry the text; the others are
//! the same calls with parsed values, for code that builds jobs itself.
//!
//! Changes are announced on a broadcast channel ([`QueueEvent`]) so that
//! idle workers wake at once, `/runsync` answers as soon as the job ends,
//! and a cancel reaches the worker holding the job.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::json::{self, Json};

pub use attempts::{AttemptRecord, Failure, RetryOn, RetryPolicy};
pub use listing::{
    Cursor, Depth, Ended, JobDetail, JobFilter, JobSummary, WorkerRow, ENDED_BACKFILL_MS,
    ENDED_SETTLE_MS, PAGE_MAX, WORKER_FORGET_MS, WORKER_GONE_MS,
};

mod attempts;
mod fairness;
mod listing;
pub mod postgres;
mod postgres_announce;
mod postgres_attempts;
mod postgres_batch;
mod postgres_call;
mod postgres_conn;
mod postgres_fair;
mod postgres_group;
mod postgres_listen;
mod postgres_listing;
mod postgres_ops;
mod postgres_schema;
mod postgres_typed;
pub mod sqlite;
mod sqlite_attempts;
mod sqlite_cached;
mod sqlite_listing;
mod sqlite_schema;
mod sqlite_submit;
mod sqlite_writer;
pub mod stores;

/// A job's status, as RunPod names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    InQueue,
    InProgress,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::InQueue,
        JobStatus::InProgress,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::InQueue => "IN_QUEUE",
            JobStatus::InProgress => "IN_PROGRESS",
            JobStatus::Completed => "COMPLETED",
            JobStatus::Failed => "FAILED",
            JobStatus::Cancelled => "CANCELLED",
            JobStatus::TimedOut => "TIMED_OUT",
        }
    }

    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the job has ended for good.
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::InQueue | JobStatus::InProgress)
    }
}

/// A job accepted by `/run` or `/runsync`; `NewJob<Json>` carries the
/// job object's text.
#[derive(Debug, Clone)]
pub struct NewJob<P = Value> {
    pub id: String,
    /// The endpoint the job was submitted to (`/v2/{endpoint}/run`); only
    /// workers serving it take the job.
    pub endpoint: String,
    /// The name of the API key it was submitted with (`--api-keys`).
    pub tenant: Option<String>,
    /// The tenant's cap on its jobs in progress at once (its key's
    /// `max_running`): a worker skips this job while that many of the
    /// tenant's jobs run.
    pub max_running: Option<u32>,
    /// The job object the handler receives: `id`, `input`, and the caller's
    /// other keys (`webhook`, `policy`, ...).
    pub payload: P,
    pub webhook: Option<String>,
    pub policy: JobPolicy,
    /// The caller's `Idempotency-Key`, if it sent one.
    pub idempotency: Option<Idempotency>,
    /// Submitted by `/runsync`, whose caller waits for the job's end. On
    /// PostgreSQL only such a job's usual end is announced to the other
    /// processes ([`QueueEvent::Finished`]): nobody else waits for it,
    /// and announcing every end woke every listening process once a job.
    pub awaited: bool,
}

/// An `Idempotency-Key` and the body it came with: a second submission
/// with the key (by the same tenant) gets the first one's job, if its
/// body is the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    /// SHA-256 of the request body, hex.
    pub body_hash: String,
}

impl NewJob {
    /// The job with its object as text.
    pub fn into_raw(self) -> NewJob<Json> {
        NewJob {
            id: self.id,
            endpoint: self.endpoint,
            tenant: self.tenant,
            max_running: self.max_running,
            payload: Json::from_value(&self.payload),
            webhook: self.webhook,
            policy: self.policy,
            idempotency: self.idempotency,
            awaited: self.awaited,
        }
    }
}

/// How long a job may wait, run and be kept, and how often it may be tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPolicy {
    /// Longest run time of one attempt; the job then ends TIMED_OUT.
    pub execution_timeout: Option<Duration>,
    /// Longest time in the queue before it starts; it then ends TIMED_OUT
    /// without running.
    pub ttl: Duration,
    /// Takes allowed before a job whose failed attempts are retried ends
    /// anyway.
    pub max_attempts: u32,
    /// Which failed attempts are retried, after what wait.
    pub retry: RetryPolicy,
    /// How long the final status can be read before the job is deleted.
    pub retention: Duration,
    /// The job's own `--stall-timeout`, which wins over the worker's.
    pub stall_timeout: Option<Duration>,
    /// Higher is taken first; first in, first out within a priority.
    pub priority: i32,
    /// The job is not taken before this long after it was queued.
    pub delay: Duration,
}

/// The endpoint of the root routes (`/run`, ...) and of a worker started
/// without `--endpoint`.
pub const DEFAULT_ENDPOINT: &str = "default";

/// Why `name` cannot be an endpoint's name, if it cannot: 1 to 64 ASCII
/// letters, digits, `-`, `_` and `.`, starting with a letter or digit, so
/// it is the same in a path, a flag, a list and a Prometheus label.
pub fn endpoint_name_error(name: &str) -> Option<String> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (!ok).then(|| {
        format!(
            "{name:?} is not an endpoint name: use 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )
    })
}

/// Who a worker process is, as its row in the workers table records it;
/// made once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    pub id: String,
    /// The worker's host name (`--hostname`, else the machine's).
    pub hostname: String,
    /// The endpoints it serves (`--endpoint`).
    pub endpoints: Vec<String>,
}

/// The priority of a job submitted with `policy.lowPriority: true`: below
/// every priority a job can be given.
pub const LOW_PRIORITY: i32 = -1001;
/// The priorities a job can be given (`policy.priority`).
pub const PRIORITIES: std::ops::RangeInclusive<i32> = -1000..=1000;

/// A job as `/status` shows it; `JobRecord<Json>` carries the output's
/// text.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord<O = Value> {
    pub id: String,
    pub endpoint: String,
    pub status: JobStatus,
    /// The result, or the latest progress update while running.
    pub output: Option<O>,
    pub error: Option<String>,
    pub attempts: u32,
    pub worker_id: Option<String>,
    /// Times in ms since the epoch.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl JobRecord<Json> {
    /// The JSON object RunPod's `/status` answers with, the output as its
    /// text. Keys in alphabetical order, as RunPod sends them.
    pub fn to_json(&self) -> Json {
        let mut fields: Vec<(&str, Json)> = Vec::with_capacity(8);
        let times = self.started_at.map(|started| {
            let end = self.finished_at.unwrap_or_else(now_ms);
            ((started - self.created_at).max(0), (end - started).max(0))
        });
        if let Some((delay, _)) = times {
            fields.push(("delayTime", Json::from_value(&json!(delay))));
        }
        if let Some(error) = &self.error {
            fields.push(("error", Json::from_value(&json!(error))));
        }
        if let Some((_, execution)) = times {
            fields.push(("executionTime", Json::from_value(&json!(execution))));
        }
        fields.push(("id", Json::from_value(&json!(self.id))));
        if let Some(output) = &self.output {
            fields.push(("output", output.clone()));
        }
        let retries = self.attempts.saturating_sub(1);
        fields.push(("retries", Json::from_value(&json!(retries))));
        fields.push(("status", Json::from_value(&json!(self.status.as_str()))));
        if let Some(worker) = &self.worker_id {
            fields.push(("workerId", Json::from_value(&json!(worker))));
        }
        json::object(fields.iter().map(|(key, value)| (*key, value)))
    }

    /// The record with its output parsed.
    pub fn parsed(self) -> JobRecord {
        JobRecord {
            id: self.id,
            endpoint: self.endpoint,
            status: self.status,
            output: self.output.map(|output| output.to_value()),
            error: self.error,
            attempts: self.attempts,
            worker_id: self.worker_id,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
    }
}

/// A job held by a worker under a lease; `Lease<Json>` carries the job
/// object's text.
#[derive(Debug, Clone)]
pub struct Lease<P = Value> {
    pub job_id: String,
    /// Proves the lease is still this worker's when it writes.
    pub token: String,
    /// 1 for the first take.
    pub attempt: u32,
    pub payload: P,
    pub execution_timeout: Option<Duration>,
    /// How long the job waited in the queue before this take.
    pub waited: Duration,
    /// The job's own `--stall-timeout`.
    pub stall_timeout: Option<Duration>,
}

impl Lease<Json> {
    /// The lease with its job object parsed.
    pub fn parsed(self) -> Lease {
        Lease {
            job_id: self.job_id,
            token: self.token,
            attempt: self.attempt,
            payload: self.payload.to_value(),
            execution_timeout: self.execution_timeout,
            waited: self.waited,
            stall_timeout: self.stall_timeout,
        }
    }
}

/// How a leased job's attempt ends, as the worker reports it;
/// `Ending<Json>` carries the output's text. Every ending but `Completed`
/// is a [`Failure`]: the job is queued again if its `policy.retry` names
/// that failure and attempts remain, else it ends FAILED (TIMED_OUT for a
/// timeout) with the error given.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending<O = Value> {
    Completed(O),
    /// The handler's own error ([`Failure::Error`]: final by default).
    Failed {
        error: String,
        output: Option<O>,
    },
    /// The attempt ran past its timeout ([`Failure::Timeout`]: final by
    /// default).
    TimedOut(String),
    /// The attempt was lost: the handler crashed or stalled, or the worker
    /// shut down (retried by default). `stderr` is the end of the
    /// handler's stderr, when known, for the attempt's history.
    Retry {
        kind: Failure,
        why: String,
        stderr: String,
    },
}

impl Ending {
    /// The ending with its output as text.
    pub fn into_raw(self) -> Ending<Json> {
        match self {
            Ending::Completed(output) => Ending::Completed(Json::from_value(&output)),
            Ending::Failed { error, output } => Ending::Failed {
                error,
                output: output.as_ref().map(Json::from_value),
            },
            Ending::TimedOut(why) => Ending::TimedOut(why),
            Ending::Retry { kind, why, stderr } => Ending::Retry { kind, why, stderr },
        }
    }
}

/// What `/retry` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    Requeued,
    NotFound,
    /// Only FAILED and TIMED_OUT jobs can be retried.
    NotRetryable(JobStatus),
}

/// Job counts by status and the workers seen lately, for `/health`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    pub counts: Vec<(JobStatus, u64)>,
    /// Jobs kept that needed more than one attempt.
    pub retried: u64,
    /// Free handler slots of live workers.
    pub idle: u64,
    /// Busy handler slots of live workers.
    pub running: u64,
    /// Live worker processes.
    pub workers: u64,
    /// How long the oldest job that may start now has waited (ms).
    pub oldest_wait_ms: Option<i64>,
    /// Jobs submitted in the last [`RATE_WINDOW_MS`].
    pub arrived: u64,
    /// Mean run time (ms) of the jobs submitted in the last
    /// [`RATE_WINDOW_MS`] that have ended after running.
    pub mean_run_ms: Option<f64>,
}

/// The window over which `/health` and `/scale` measure arrivals and run
/// times: five minutes.
pub const RATE_WINDOW_MS: i64 = 5 * 60 * 1000;

impl Health {
    pub fn count(&self, status: JobStatus) -> u64 {
        self.counts
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }
}

/// A webhook post waiting to be delivered.
#[derive(Debug, Clone)]
pub struct WebhookPost {
    pub id: i64,
    pub job_id: String,
    pub url: String,
    /// The JSON text to post.
    pub body: Json,
    /// Failed posts so far.
    pub attempts: u32,
    pub created_at: i64,
}

/// What one maintenance pass changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Jobs whose lease ran out and that were queued again.
    pub requeued: u64,
    /// Jobs that ended (lease lost with no attempts left, or ttl passed).
    pub ended: u64,
    /// Finished jobs deleted after their retention.
    pub deleted: u64,
    /// Those jobs, as (endpoint, id): their objects in the object store
    /// go with them.
    pub deleted_jobs: Vec<(String, String)>,
}

/// Something that changed in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueEvent {
    /// A job can be taken.
    Queued,
    /// A job reached its final status.
    Finished(String),
    /// A job was cancelled; whoever runs it must stop it.
    Cancelled(String),
    /// A stream partial was added.
    Streamed(String),
    /// A webhook post was queued: only jobs with a webhook make webhook
    /// delivery look at the database.
    WebhookDue,
    /// This process cannot hear other processes' events (a PostgreSQL
    /// queue with `--queue-listen-url off`): whoever waits for a job to be
    /// queued or to end looks at the database now. Sent every
    /// [`postgres::POLL_INTERVAL`] or so, to this process only.
    Poll,
}

/// Why a submission was not inserted: its id exists, or its
/// `Idempotency-Key` does, for `existing` (the job's id and body hash).
pub(crate) fn refusal(job: &NewJob<Json>, existing: Option<(String, String)>) -> QueueError {
    match (&job.idempotency, existing) {
        (Some(idempotency), Some((existing, hash))) => QueueError::KeyUsed {
            existing,
            same_body: hash == idempotency.body_hash,
        },
        _ => QueueError::Duplicate(job.id.clone()),
    }
}

/// A database fault.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot open the queue {what}: {why}")]
    Open { what: String, why: String },
    #[error("queue database error: {0}")]
    Database(String),
    /// The embedded database refused a statement.
    #[error("queue database error: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// The task that ran the statement was lost (it panicked).
    #[error("queue database error: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The database cannot be reached right now; the store logs when that
    /// starts and ends, so callers retry without logging each failure.
    #[error("the queue database cannot be reached: {0}")]
    Unavailable(String),
    #[error("a job with id {0:?} already exists")]
    Duplicate(String),
    /// The submission's `Idempotency-Key` was used before, for the job
    /// `existing`, with the same body or not.
    #[error("the Idempotency-Key was used before, for job {existing}")]
    KeyUsed { existing: String, same_body: bool },
    /// One error for many callers: a group commit that failed.
    #[error(transparent)]
    Shared(std::sync::Arc<QueueError>),
}

/// A job store shared by API routes and workers. See the module docs.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Changes in the queue, for waiting without polling.
    fn subscribe(&self) -> broadcast::Receiver<QueueEvent>;

    // Caller side.
    /// Queues a job whose object is kept as the text given.
    async fn enqueue_raw(&self, job: NewJob<Json>) -> Result<(), QueueError>;
    /// The job, its output as the text the handler wrote.
    async fn status_raw(&self, id: &str) -> Result<Option<JobRecord<Json>>, QueueError>;
    /// The partials not read before, oldest first, as the handler wrote
    /// them, with the job's status; they are marked read.
    async fn read_stream_raw(&self, id: &str)
        -> Result<Option<(JobStatus, Vec<Json>)>, QueueError>;
    /// Cancels a job that has not ended; returns its status afterwards.
    async fn cancel(&self, id: &str) -> Result<Option<JobStatus>, QueueError>;
    async fn retry(&self, id: &str) -> Result<RetryOutcome, QueueError>;
    /// A page of `endpoint`'s jobs, newest first: at most `limit` of
    /// those `filter` lets through.
    async fn list_jobs(
        &self,
        endpoint: &str,
        filter: &JobFilter,
        limit: usize,
    ) -> Result<Vec<JobSummary>, QueueError>;
    /// Everything kept of the job `id`.
    async fn job_raw(&self, id: &str) -> Result<Option<JobDetail>, QueueError>;
    /// The endpoints with jobs waiting or live workers, at most `limit`.
    async fn active_endpoints(&self, limit: usize) -> Result<Vec<String>, QueueError>;
    /// The workers that serve `endpoint`, live or lost, newest first.
    async fn workers(&self, endpoint: &str) -> Result<Vec<WorkerRow>, QueueError>;
    /// Deletes every queued job of `endpoint`; returns how many.
    async fn purge(&self, endpoint: &str) -> Result<u64, QueueError>;
    /// `endpoint`'s jobs and the live workers that serve it.
    async fn health(&self, endpoint: &str) -> Result<Health, QueueError>;
    /// `endpoint`'s jobs waiting and running now, from indexes only.
    async fn depth(&self, endpoint: &str) -> Result<Depth, QueueError>;
    /// Jobs of every endpoint that ended after `after` (ms, the
    /// database's clock; `None`: [`ENDED_BACKFILL_MS`] ago) and at least
    /// [`ENDED_SETTLE_MS`] ago, oldest first, at most `limit`; with the
    /// time they were read up to, the `after` of the next call.
    async fn ended_since(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<Ended>, i64), QueueError>;

    // Worker side.
    /// Takes up to `count` queued jobs of `endpoints` for `worker`, each
    /// under a lease, with the job objects as they were queued.
    async fn take_raw(
        &self,
        worker: &str,
        endpoints: &[String],
        count: usize,
        lease: Duration,
    ) -> Result<Vec<Lease<Json>>, QueueError>;
    /// Extends leases; returns the ids of the jobs whose lease is no longer
    /// held (cancelled, or lost), which the worker must stop.
    async fn renew(
        &self,
        leases: &[(String, String)],
        lease: Duration,
    ) -> Result<Vec<String>, QueueError>;
    /// Records a progress update (shown as the running job's output).
    async fn progress_raw(
        &self,
        job_id: &str,
        token: &str,
        output: Json,
    ) -> Result<bool, QueueError>;
    /// Appends a stream partial; false when the lease is no longer held.
    async fn stream_raw(&self, job_id: &str, token: &str, output: Json)
        -> Result<bool, QueueError>;
    /// Ends a leased job; false (and nothing written) when the lease is no
    /// longer held.
    async fn finish_raw(
        &self,
        job_id: &str,
        token: &str,
        ending: Ending<Json>,
    ) -> Result<bool, QueueError>;
    /// Reports this worker's handler slots (and, on its first beat, who
    /// it is), so `/health` and `/workers` can count and list it.
    async fn heartbeat(
        &self,
        worker: &WorkerInfo,
        capacity: usize,
        busy: usize,
    ) -> Result<(), QueueError>;

    // Maintenance.
    /// Requeues or ends jobs whose lease ran out, ends jobs whose ttl
    /// passed, and deletes finished jobs past their retention.
    async fn sweep(&self) -> Result<Swept, QueueError>;
    /// Claims the next round of `chore`, a task that one process of those
    /// sharing the queue does at most once per `every` (deleting uploads
    /// past their lifetime): true when this process is to do it now. A
    /// queue that one process owns (SQLite) always says yes, and the caller
    /// spaces its own rounds.
    async fn claim_round(&self, chore: &str, every: Duration) -> Result<bool, QueueError> {
        let _ = (chore, every);
        Ok(true)
    }
    /// Webhook posts due now, oldest first.
    async fn webhooks_due(&self, limit: usize) -> Result<Vec<WebhookPost>, QueueError>;
    /// Removes a delivered (or abandoned) webhook post.
    async fn webhook_done(&self, id: i64) -> Result<(), QueueError>;
    /// Schedules another try of a webhook post.
    async fn webhook_later(&self, id: i64, at: SystemTime) -> Result<(), QueueError>;
    /// Puts taken webhook posts back, due at `at`, without counting a try:
    /// delivery set them aside because their receiver was busy or backed
    /// off.
    async fn webhooks_defer(&self, ids: &[i64], at: SystemTime) -> Result<(), QueueError>;

    // The same calls with parsed values.
    async fn enqueue(&self, job: NewJob) -> Result<(), QueueError> {
        self.enqueue_raw(job.into_raw()).await
    }
    async fn status(&self, id: &str) -> Result<Option<JobRecord>, QueueError> {
        Ok(self.status_raw(id).await?.map(JobRecord::parsed))
    }
    async fn read_stream(&self, id: &str) -> Result<Option<(JobStatus, Vec<Value>)>, QueueError> {
        Ok(self
            .read_stream_raw(id)
            .await?
            .map(|(status, partials)| (status, partials.iter().map(Json::to_value).collect())))
    }
    async fn take(
        &self,
        worker: &str,
        endpoints: &[String],
        count: usize,
        lease: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        let leases = self.take_raw(worker, endpoints, count, lease).await?;
        Ok(leases.into_iter().map(Lease::parsed).collect())
    }
    async fn progress(&self, job_id: &str, token: &str, output: Value) -> Result<bool, QueueError> {
        self.progress_raw(job_id, token, Json::from_value(&output))
            .await
    }
    async fn stream(&self, job_id: &str, token: &str, output: Value) -> Result<bool, QueueError> {
        self.stream_raw(job_id, token, Json::from_value(&output))
            .await
    }
    async fn finish(&self, job_id: &str, token: &str, ending: Ending) -> Result<bool, QueueError> {
        self.finish_raw(job_id, token, ending.into_raw()).await
    }
}

/// Logs a failed queue call, unless the database is unreachable: the store
/// logs that once when it starts and once when it ends, not per call.
pub(crate) fn log_failure(what: &str, error: &QueueError) {
    match error {
        QueueError::Unavailable(_) => tracing::debug!("{what} failed: {error}"),
        _ => tracing::warn!("{what} failed: {error}"),
    }
}

/// Now, in ms since the epoch.
pub fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

pub fn to_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

// How both stores keep a job: JSON as the text it came as (`text` columns,
// never PostgreSQL's `jsonb`, which rewrites numbers and reorders keys), the
// status as its RunPod name. Reading a row back goes through these, so the
// stores cannot disagree.

/// A value kept as JSON text, read back as that text; text that is not
/// JSON reads as a string.
pub(crate) fn stored_json(text: String) -> Json {
    Json::from_text(text).unwrap_or_else(|text| Json::from_value(&Value::String(text)))
}

/// Whether a completed job's output is empty (`null` or `[]`): a streaming
/// handler's is, and the job's output is then the list of its partials.
/// Looks no further than the first bytes that are not white space.
pub(crate) fn is_empty_output(output: &Json) -> bool {
    let mut bytes = output
        .pieces()
        .iter()
        .flat_map(|piece| piece.iter().copied())
        .filter(|b| !b.is_ascii_whitespace());
    match bytes.next() {
        // The only JSON value that starts with `n`.
        Some(b'n') => true,
        Some(b'[') => bytes.next() == Some(b']') && bytes.next().is_none(),
        _ => false,
    }
}

/// The partials as one output: `[p1, p2, ...]`.
pub(crate) fn partials_output(partials: &[Json]) -> Json {
    json::array(partials)
}

/// A status column that holds no status this jobpipe knows: the database
/// was written by something else.
#[derive(Debug, thiserror::Error)]
#[error("unknown job status {0:?} in the queue database")]
pub(crate) struct UnknownStatus(String);

/// A status kept as its RunPod name.
pub(crate) fn stored_status(text: &str) -> Result<JobStatus, UnknownStatus> {
    JobStatus::parse(text).ok_or_else(|| UnknownStatus(text.to_owned()))
}

/// Stream partials read as `(seq, output)` rows, oldest first.
pub(crate) fn stored_partials(mut rows: Vec<(i64, String)>) -> Vec<Json> {
    rows.sort_by_key(|(seq, _)| *seq);
    rows.into_iter()
        .map(|(_, text)| stored_json(text))
        .collect()
}

/// The body of a job's webhook post: the final job object, the output as
/// its text, keys in alphabetical order. PostgreSQL's one-statement end
/// (`postgres_batch::finish_many`) builds the same body in SQL, so a
/// change here is a change there.
pub(crate) fn webhook_body(
    id: &str,
    status: JobStatus,
    output: &Option<Json>,
    error: &Option<String>,
) -> Json {
    let error = error.as_ref().map(|error| Json::from_value(&json!(error)));
    let id = Json::from_value(&json!(id));
    let status = Json::from_value(&json!(status.as_str()));
    let fields = [
        ("error", error.as_ref()),
        ("id", Some(&id)),
        ("output", output.as_ref()),
        ("status", Some(&status)),
    ];
    json::object(
        fields
            .into_iter()
            .filter_map(|(key, value)| value.map(|value| (key, value))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(json: &Json) -> String {
        json.text().into_owned()
    }

    #[test]
    fn stored_values_read_back_as_written() {
        let exact = r#"{"z": 1180591620717411303424, "a": -0, "e": "\u00e9", "f": 1.50}"#;
        assert_eq!(text(&stored_json(exact.into())), exact);
        assert_eq!(text(&stored_json("not json".into())), r#""not json""#);
        let rows = vec![(3, "3".into()), (1, "-0".into()), (2, "x".into())];
        let partials: Vec<String> = stored_partials(rows).iter().map(text).collect();
        assert_eq!(partials, ["-0", r#""x""#, "3"]);
        for status in JobStatus::ALL {
            assert_eq!(stored_status(status.as_str()).unwrap(), status);
        }
        let unknown = stored_status("DONE").unwrap_err().to_string();
        assert!(unknown.contains("\"DONE\""), "{unknown}");
    }

    #[test]
    fn empty_outputs_are_null_or_an_empty_list() {
        for empty in ["null", "[]", " [ \n ] ", "\tnull"] {
            let output = Json::parse(empty.as_bytes().to_vec().into()).unwrap();
            assert!(is_empty_output(&output), "{empty:?}");
        }
        for full in ["[0]", "{}", "\"\"", "0", "[null]"] {
            let output = Json::parse(full.as_bytes().to_vec().into()).unwrap();
            assert!(!is_empty_output(&output), "{full:?}");
        }
    }

    #[test]
    fn answers_carry_the_output_text_unchanged() {
        let output = stored_json(r#"{"n": -0, "big": 1180591620717411303424}"#.into());
        let record = JobRecord {
            id: "j".into(),
            endpoint: DEFAULT_ENDPOINT.into(),
            status: JobStatus::Completed,
            output: Some(output.clone()),
            error: None,
            attempts: 1,
            worker_id: Some("w".into()),
            created_at: 1,
            started_at: Some(3),
            finished_at: Some(10),
        };
        assert_eq!(
            text(&record.to_json()),
            r#"{"delayTime":2,"executionTime":7,"id":"j","output":{"n": -0, "big": 1180591620717411303424},"retries":0,"status":"COMPLETED","workerId":"w"}"#
        );
        let body = webhook_body("j", JobStatus::Failed, &Some(output), &Some("e".into()));
        assert_eq!(
            text(&body),
            r#"{"error":"e","id":"j","output":{"n": -0, "big": 1180591620717411303424},"status":"FAILED"}"#
        );
    }
}
