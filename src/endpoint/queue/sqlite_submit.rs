//! Group commit of submissions to the SQLite queue.
//!
//! Every acknowledged job must survive a power cut, so the commit that
//! holds it waits for `fsync`: it runs with `synchronous = FULL`, whose
//! commit syncs the write-ahead log (and with it every commit before,
//! whatever a checkpoint did meanwhile), while the queue's other writes
//! (takes, results) stay `NORMAL` and cost no fsync. One fsync per `/run`
//! would cap the endpoint at the disk's fsync rate; instead, the
//! submissions that arrive while one commit runs wait for the next, and go
//! in together: one transaction, one fsync, then every caller of the group
//! is answered. A lone caller waits for no one (there is no timer: a group
//! is whatever queued up meanwhile). If the commit fails, every caller of
//! the group gets the error, and none is told its job was queued.

use std::sync::{Arc, Mutex};

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{duration_ms, now_ms, refusal, NewJob, QueueError, QueueEvent};
use crate::json::Json;

/// Most submissions one transaction takes.
const GROUP_MAX: usize = 512;
/// Submissions waiting for a commit; more wait for room (back-pressure).
const WAITING_MAX: usize = 4096;

/// A job to queue and who waits to hear that it is on disk.
type Submission = (NewJob<Json>, oneshot::Sender<Result<(), QueueError>>);

/// Where submissions go to be committed in groups.
pub(super) struct Submissions(mpsc::Sender<Submission>);

impl Submissions {
    /// Starts the task that commits groups on `conn`; it ends when the
    /// queue (the last sender) is dropped.
    pub(super) fn start(
        conn: Arc<Mutex<Connection>>,
        events: broadcast::Sender<QueueEvent>,
    ) -> Submissions {
        let (sender, receiver) = mpsc::channel(WAITING_MAX);
        tokio::spawn(commit_groups(conn, events, receiver));
        Submissions(sender)
    }

    /// Queues `job`; answers once the transaction holding it committed.
    pub(super) async fn submit(&self, job: NewJob<Json>) -> Result<(), QueueError> {
        let (answer, answered) = oneshot::channel();
        let stopped = || QueueError::Database("the queue's writer has stopped".into());
        self.0.send((job, answer)).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

async fn commit_groups(
    conn: Arc<Mutex<Connection>>,
    events: broadcast::Sender<QueueEvent>,
    mut receiver: mpsc::Receiver<Submission>,
) {
    let mut group = Vec::with_capacity(GROUP_MAX);
    while receiver.recv_many(&mut group, GROUP_MAX).await > 0 {
        let (jobs, answers): (Vec<_>, Vec<_>) = group.drain(..).unzip();
        let conn = conn.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            insert_all(&mut conn, &jobs).map(|inserted| (jobs, inserted))
        })
        .await;
        match committed {
            Ok(Ok((_jobs, inserted))) => {
                if inserted.iter().any(Result::is_ok) {
                    let _ = events.send(QueueEvent::Queued);
                }
                for (outcome, answer) in inserted.into_iter().zip(answers) {
                    let _ = answer.send(outcome);
                }
            }
            Ok(Err(e)) => answer_all(answers, QueueError::Sqlite(e)),
            Err(e) => answer_all(answers, QueueError::Task(e)),
        }
    }
}

/// Inserts the group in one transaction; for each job, whether it was new
/// or why not (its id, or its `Idempotency-Key`, already present or twice
/// in the group).
fn insert_all(conn: &mut Connection, jobs: &[NewJob<Json>]) -> rusqlite::Result<Vec<Inserted>> {
    conn.pragma_update(None, "synchronous", "FULL")?;
    let inserted = insert_durably(conn, jobs);
    let normal = conn.pragma_update(None, "synchronous", "NORMAL");
    let inserted = inserted?;
    normal?;
    Ok(inserted)
}

/// [`insert_all`]'s transaction, committed with the fsync.
fn insert_durably(conn: &mut Connection, jobs: &[NewJob<Json>]) -> rusqlite::Result<Vec<Inserted>> {
    let tx = conn.transaction()?;
    let mut inserted = Vec::with_capacity(jobs.len());
    let ranks = fair_ranks(&tx, jobs)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO jobs (id, status, payload, webhook, execution_timeout_ms,
                ttl_ms, max_attempts, retention_ms, created_at, queued_at, run_after,
                stall_timeout_ms, priority, idempotency_key, request_hash, endpoint, tenant,
                fair_rank, retry_on, retry_backoff_ms, retry_max_backoff_ms, max_running)
             VALUES (?1, 'IN_QUEUE', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8 + ?10, ?8 + ?10, ?9, ?11,
                ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
        )?;
        let now = now_ms();
        for (job, rank) in jobs.iter().zip(ranks) {
            let p = job.policy;
            let payload = job.payload.text();
            let rows = insert.execute(params![
                job.id,
                &*payload,
                job.webhook,
                p.execution_timeout.map(duration_ms),
                duration_ms(p.ttl),
                p.max_attempts,
                duration_ms(p.retention),
                now,
                p.stall_timeout.map(duration_ms),
                duration_ms(p.delay),
                p.priority,
                job.idempotency.as_ref().map(|i| &i.key),
                job.idempotency.as_ref().map(|i| &i.body_hash),
                job.endpoint,
                job.tenant,
                rank,
                p.retry.on.bits(),
                duration_ms(p.retry.backoff),
                duration_ms(p.retry.max_backoff),
                job.max_running,
            ])?;
            if rows > 0 {
                inserted.push(Ok(()));
                continue;
            }
            let existing = match &job.idempotency {
                Some(idempotency) => tx
                    .prepare_cached(
                        "SELECT id, request_hash FROM jobs
                          WHERE idempotency_key = ?1 AND coalesce(tenant, '') = coalesce(?2, '')",
                    )?
                    .query_row(params![idempotency.key, job.tenant], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()?,
                None => None,
            };
            inserted.push(Err(refusal(job, existing)));
        }
    }
    tx.commit()?;
    Ok(inserted)
}

/// The fair ranks of `jobs` (see [`super::fairness`]), from the head of
/// each endpoint's queue and each tenant's last waiting job.
fn fair_ranks(tx: &Transaction, jobs: &[NewJob<Json>]) -> rusqlite::Result<Vec<i64>> {
    let mut heads = HashMap::new();
    let mut highest = HashMap::new();
    for job in jobs {
        let tenant = job.tenant.clone().unwrap_or_default();
        if !heads.contains_key(&job.endpoint) {
            let head: Option<i64> = tx
                .prepare_cached(
                    "SELECT fair_rank FROM jobs WHERE endpoint = ?1 AND status = 'IN_QUEUE'
                      ORDER BY priority DESC, fair_rank LIMIT 1",
                )?
                .query_row([&job.endpoint], |row| row.get(0))
                .optional()?;
            heads.insert(job.endpoint.clone(), head.unwrap_or(0));
        }
        let key = (job.endpoint.clone(), tenant);
        if let std::collections::hash_map::Entry::Vacant(entry) = highest.entry(key) {
            let top: Option<i64> = tx
                .prepare_cached(
                    "SELECT MAX(fair_rank) FROM jobs
                      WHERE endpoint = ?1 AND coalesce(tenant, '') = ?2 AND status = 'IN_QUEUE'",
                )?
                .query_row(params![entry.key().0, entry.key().1], |row| row.get(0))?;
            if let Some(top) = top {
                entry.insert(top);
            }
        }
    }
    Ok(super::fairness::assign(
        jobs.iter()
            .map(|job| (job.endpoint.as_str(), job.tenant.as_deref().unwrap_or(""))),
        &heads,
        &mut highest,
    ))
}

/// A submission's outcome: inserted, or why not.
type Inserted = Result<(), QueueError>;

/// Tells every caller of a group that failed why.
fn answer_all(answers: Vec<oneshot::Sender<Result<(), QueueError>>>, error: QueueError) {
    tracing::error!(
        "queue database error: {error}; {} submissions refused",
        answers.len()
    );
    let error = Arc::new(error);
    for answer in answers {
        let _ = answer.send(Err(QueueError::Shared(error.clone())));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::sqlite::SqliteQueue;
    use super::super::{JobPolicy, JobStatus, Queue};
    use super::*;

    fn job(id: &str) -> NewJob {
        NewJob {
            id: id.into(),
            endpoint: "default".into(),
            tenant: None,
            max_running: None,
            payload: serde_json::json!({"id": id, "input": {}}),
            webhook: None,
            policy: JobPolicy {
                execution_timeout: None,
                ttl: Duration::from_secs(3600),
                max_attempts: 3,
                retention: Duration::from_secs(3600),
                stall_timeout: None,
                priority: 0,
                delay: Duration::ZERO,
                retry: Default::default(),
            },
            idempotency: None,
            awaited: false,
        }
    }

    /// Many submissions at once: each is answered once, after its group
    /// committed, a repeated id (in the same group or not) is refused, and
    /// what was answered Ok is what the file holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submissions_are_committed_in_groups_and_answered_once() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(SqliteQueue::open(&dir.path().join("q.db")).await.unwrap());
        let submitted: Vec<_> = (0..400)
            .map(|n| {
                let queue = queue.clone();
                // Every tenth id is submitted twice.
                let id = format!("job-{}", if n % 10 == 9 { n - 1 } else { n });
                tokio::spawn(async move { queue.enqueue(job(&id)).await })
            })
            .collect();
        let (mut queued, mut duplicates) = (0, 0);
        for answer in submitted {
            match answer.await.unwrap() {
                Ok(()) => queued += 1,
                Err(QueueError::Duplicate(_)) => duplicates += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((queued, duplicates), (360, 40));
        let health = queue.health("default").await.unwrap();
        assert_eq!(health.count(JobStatus::InQueue), 360);
    }
}
