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
//! * Every take counts an **attempt**. A lease that runs out puts the job
//!   back in the queue while attempts remain (`maxAttempts`), else the job
//!   ends FAILED saying why. Execution is therefore at-least-once, and
//!   every job ends with exactly one final status.
//! * Every final status goes through one transition that also records the
//!   job's webhook delivery, in the same transaction, so a restart never
//!   loses a webhook.
//! * Finished jobs are deleted when their retention runs out, so the
//!   database does not grow with the jobs that pass through it.
//!
//! Changes are announced on a broadcast channel ([`QueueEvent`]) so that
//! idle workers wake at once, `/runsync` answers as soon as the job ends,
//! and a cancel reaches the worker holding the job.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::broadcast;

pub mod postgres;
mod postgres_conn;
mod postgres_listen;
mod postgres_ops;
mod postgres_schema;
pub mod sqlite;
mod sqlite_schema;
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

/// A job accepted by `/run` or `/runsync`.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    /// The job object the handler receives: `id`, `input`, and the caller's
    /// other keys (`webhook`, `policy`, ...).
    pub payload: Value,
    pub webhook: Option<String>,
    pub policy: JobPolicy,
}

/// How long a job may wait, run and be kept, and how often it may be tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPolicy {
    /// Longest run time of one attempt; the job then ends TIMED_OUT.
    pub execution_timeout: Option<Duration>,
    /// Longest time in the queue before it starts; it then ends TIMED_OUT
    /// without running.
    pub ttl: Duration,
    /// Takes allowed before a job whose worker vanished ends FAILED.
    pub max_attempts: u32,
    /// How long the final status can be read before the job is deleted.
    pub retention: Duration,
}

/// A job as `/status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub status: JobStatus,
    /// The result, or the latest progress update while running.
    pub output: Option<Value>,
    pub error: Option<String>,
    pub attempts: u32,
    pub worker_id: Option<String>,
    /// Times in ms since the epoch.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl JobRecord {
    /// The JSON object RunPod's `/status` answers with.
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "id": self.id,
            "status": self.status.as_str(),
            "retries": self.attempts.saturating_sub(1),
        });
        if let Some(started) = self.started_at {
            body["delayTime"] = json!((started - self.created_at).max(0));
            let end = self.finished_at.unwrap_or_else(now_ms);
            body["executionTime"] = json!((end - started).max(0));
        }
        if let Some(worker) = &self.worker_id {
            body["workerId"] = json!(worker);
        }
        if let Some(output) = &self.output {
            body["output"] = output.clone();
        }
        if let Some(error) = &self.error {
            body["error"] = json!(error);
        }
        body
    }
}

/// A job held by a worker under a lease.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job_id: String,
    /// Proves the lease is still this worker's when it writes.
    pub token: String,
    /// 1 for the first take.
    pub attempt: u32,
    pub payload: Value,
    pub execution_timeout: Option<Duration>,
    /// How long the job waited in the queue before this take.
    pub waited: Duration,
}

/// How a leased job ends, as the worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    Completed(Value),
    /// The handler's own error: final, not retried.
    Failed {
        error: String,
        output: Option<Value>,
    },
    /// The attempt ran past `executionTimeout`.
    TimedOut(String),
    /// The attempt was lost (the handler crashed, jobpipe shut down): the
    /// job is queued again while attempts remain, else it fails with this
    /// error.
    Retry(String),
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
}

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
    pub body: Value,
    /// Failed posts so far.
    pub attempts: u32,
    pub created_at: i64,
}

/// What one maintenance pass changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Jobs whose lease ran out and that were queued again.
    pub requeued: u64,
    /// Jobs that ended (lease lost with no attempts left, or ttl passed).
    pub ended: u64,
    /// Finished jobs deleted after their retention.
    pub deleted: u64,
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
}

/// A database fault.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot open the queue {what}: {why}")]
    Open { what: String, why: String },
    #[error("queue database error: {0}")]
    Database(String),
    /// The database cannot be reached right now; the store logs when that
    /// starts and ends, so callers retry without logging each failure.
    #[error("the queue database cannot be reached: {0}")]
    Unavailable(String),
    #[error("a job with id {0:?} already exists")]
    Duplicate(String),
}

/// A job store shared by API routes and workers. See the module docs.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Changes in the queue, for waiting without polling.
    fn subscribe(&self) -> broadcast::Receiver<QueueEvent>;

    // Caller side.
    async fn enqueue(&self, job: NewJob) -> Result<(), QueueError>;
    async fn status(&self, id: &str) -> Result<Option<JobRecord>, QueueError>;
    /// The partials not read before, oldest first, with the job's status;
    /// they are marked read.
    async fn read_stream(&self, id: &str) -> Result<Option<(JobStatus, Vec<Value>)>, QueueError>;
    /// Cancels a job that has not ended; returns its status afterwards.
    async fn cancel(&self, id: &str) -> Result<Option<JobStatus>, QueueError>;
    async fn retry(&self, id: &str) -> Result<RetryOutcome, QueueError>;
    /// Deletes every queued job; returns how many.
    async fn purge(&self) -> Result<u64, QueueError>;
    async fn health(&self) -> Result<Health, QueueError>;

    // Worker side.
    /// Takes up to `count` queued jobs for `worker`, each under a lease.
    async fn take(
        &self,
        worker: &str,
        count: usize,
        lease: Duration,
    ) -> Result<Vec<Lease>, QueueError>;
    /// Extends leases; returns the ids of the jobs whose lease is no longer
    /// held (cancelled, or lost), which the worker must stop.
    async fn renew(
        &self,
        leases: &[(String, String)],
        lease: Duration,
    ) -> Result<Vec<String>, QueueError>;
    /// Records a progress update (shown as the running job's output).
    async fn progress(&self, job_id: &str, token: &str, output: Value) -> Result<bool, QueueError>;
    /// Appends a stream partial; false when the lease is no longer held.
    async fn stream(&self, job_id: &str, token: &str, output: Value) -> Result<bool, QueueError>;
    /// Ends a leased job; false (and nothing written) when the lease is no
    /// longer held.
    async fn finish(&self, job_id: &str, token: &str, ending: Ending) -> Result<bool, QueueError>;
    /// Reports this worker's handler slots, so `/health` can count them.
    async fn heartbeat(&self, worker: &str, capacity: usize, busy: usize)
        -> Result<(), QueueError>;

    // Maintenance.
    /// Requeues or ends jobs whose lease ran out, ends jobs whose ttl
    /// passed, and deletes finished jobs past their retention.
    async fn sweep(&self) -> Result<Swept, QueueError>;
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

// How both stores keep a job: JSON as text, the status as its RunPod name.
// Reading a row back goes through these, so the stores cannot disagree.

/// A value kept as JSON text; text that is not JSON reads as a string.
pub(crate) fn stored_json(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
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
pub(crate) fn stored_partials(mut rows: Vec<(i64, String)>) -> Vec<Value> {
    rows.sort_by_key(|(seq, _)| *seq);
    rows.into_iter()
        .map(|(_, text)| stored_json(text))
        .collect()
}

/// Delay before a job whose attempt was lost runs again: 1 s doubling per
/// attempt, at most a minute.
pub(crate) fn retry_delay_ms(attempts: i64) -> i64 {
    let exponent = attempts.clamp(1, 7) - 1;
    (1000_i64 << exponent).min(60_000)
}

/// The body of a job's webhook post: the final job object.
pub(crate) fn webhook_body(
    id: &str,
    status: JobStatus,
    output: &Option<Value>,
    error: &Option<String>,
) -> Value {
    let mut body = json!({"id": id, "status": status.as_str()});
    if let Some(output) = output {
        body["output"] = output.clone();
    }
    if let Some(error) = error {
        body["error"] = json!(error);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_read_back_as_written() {
        assert_eq!(stored_json(r#"{"a":1}"#.into()), json!({"a": 1}));
        assert_eq!(stored_json("not json".into()), json!("not json"));
        let rows = vec![(3, "3".into()), (1, "1".into()), (2, "x".into())];
        assert_eq!(stored_partials(rows), [json!(1), json!("x"), json!(3)]);
        for status in JobStatus::ALL {
            assert_eq!(stored_status(status.as_str()).unwrap(), status);
        }
        let unknown = stored_status("DONE").unwrap_err().to_string();
        assert!(unknown.contains("\"DONE\""), "{unknown}");
    }

    #[test]
    fn lost_attempts_wait_longer_each_time_up_to_a_minute() {
        let delays: Vec<i64> = (0..=8).map(retry_delay_ms).collect();
        assert_eq!(
            delays,
            [1000, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
    }
}
