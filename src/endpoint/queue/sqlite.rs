//! The embedded queue: one SQLite file in WAL mode, owned by one jobpipe
//! process (an exclusive lock file next to it says so).
//!
//! rusqlite with SQLite compiled in (`bundled`) means no system library is
//! needed and every machine runs the same SQLite. Its calls block: writes
//! go to one thread that owns the writing connection and commits the
//! writes that arrive together in one transaction ([`super::sqlite_writer`]);
//! reads run on tokio's blocking pool on a second connection, which WAL
//! lets read beside the writer.
//! Because the file belongs to one process, jobs found running at open were
//! held by a previous run that died: their leases are ended at once, which
//! counts the attempt and queues them again (or fails them).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use nix::fcntl::{Flock, FlockArg};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::broadcast;

use super::attempts::{after_failure, lost_lease, FailedAttempt, Next};
use super::sqlite_attempts;
use super::sqlite_cached::{cached_execute, cached_row};
use super::sqlite_listing::{self, status_of};
use super::sqlite_submit;
use super::sqlite_writer::Writer;
use super::{
    duration_ms, is_empty_output, now_ms, partials_output, stored_json, stored_partials, to_ms,
    webhook_body, Depth, Ended, Ending, Health, JobDetail, JobFilter, JobRecord, JobStatus,
    JobSummary, Lease, NewJob, Queue, QueueError, QueueEvent, RetryOutcome, Swept, WebhookPost,
    WorkerInfo, WorkerRow, RATE_WINDOW_MS, WORKER_FORGET_MS, WORKER_GONE_MS,
};
use crate::json::Json;

/// Most rows one maintenance pass changes, so no transaction runs long.
const SWEEP_BATCH: i64 = 500;
/// Prepared statements each connection keeps: more than the queue has.
const STATEMENTS_KEPT: usize = 128;
/// How long a webhook post taken for delivery is hidden from other takes.
const WEBHOOK_CLAIM_MS: i64 = 60_000;

/// The SQLite queue. See the module docs.
pub struct SqliteQueue {
    /// Every write, committed in batches; dropped (and its thread ended)
    /// before the lock, so the file is closed when the lock is released.
    writer: Writer,
    /// The connection reads use.
    reader: Arc<Mutex<Connection>>,
    events: broadcast::Sender<QueueEvent>,
    /// Held for the life of the queue: one process per file.
    _lock: Flock<File>,
}

impl SqliteQueue {
    /// Opens (creating it and its directory if needed) the queue at `path`
    /// and applies pending migrations.
    pub async fn open(path: &Path) -> Result<SqliteQueue, QueueError> {
        SqliteQueue::open_keeping(path, &[]).await
    }

    /// [`SqliteQueue::open`], but the jobs in `spooled` (whose results
    /// this process's spool holds, to be delivered now) keep their leases.
    pub async fn open_keeping(path: &Path, spooled: &[String]) -> Result<SqliteQueue, QueueError> {
        let path = path.to_owned();
        let queue = tokio::task::spawn_blocking(move || open_blocking(&path))
            .await
            .map_err(QueueError::Task)??;
        // Jobs running when a previous process died: their leases end now,
        // but for those whose result waits in the spool.
        let spooled = serde_json::to_string(spooled).expect("strings serialise");
        queue
            .write(move |tx, _| {
                cached_execute(
                    tx,
                    "UPDATE jobs SET lease_expires_at = 0 WHERE status = 'IN_PROGRESS' \
                     AND id NOT IN (SELECT value FROM json_each(?1))",
                    [spooled],
                )
            })
            .await?;
        let swept = queue.sweep().await?;
        if swept.requeued + swept.ended > 0 {
            tracing::warn!(
                "{} jobs were running when jobpipe last stopped: {} queued again, {} out of attempts",
                swept.requeued + swept.ended,
                swept.requeued,
                swept.ended
            );
        }
        Ok(queue)
    }

    /// Runs the reads of `f` on the reading connection, in the blocking
    /// pool.
    async fn call<T, F>(&self, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(QueueError::Task)?
        .map_err(QueueError::Sqlite)
    }

    /// Runs `f` in the writer's next transaction; answers once it
    /// committed, and announces the events `f` returned.
    async fn write<T, F>(&self, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction, &mut Vec<QueueEvent>) -> rusqlite::Result<T> + Send + 'static,
    {
        self.writer.write(false, f).await
    }
}

fn open_blocking(path: &Path) -> Result<SqliteQueue, QueueError> {
    let fail = |why: String| QueueError::Open {
        what: format!("sqlite:{}", path.display()),
        why,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    }
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let lock_file = File::create(&lock_path)
        .map_err(|e| fail(format!("cannot create {}: {e}", lock_path.display())))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        fail("another jobpipe process is using it (an embedded queue belongs to one process); stop that one or give this one another file".into())
    })?;
    let mut conn = Connection::open(path).map_err(|e| fail(e.to_string()))?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS_KEPT);
    conn.busy_timeout(Duration::from_secs(5))
        .and_then(|()| conn.pragma_update(None, "journal_mode", "WAL"))
        // Commits do not wait for fsync; the answers to submissions do
        // (see sqlite_writer).
        .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
        .map_err(|e| fail(e.to_string()))?;
    super::sqlite_schema::migrate(&mut conn).map_err(|e| fail(e.to_string()))?;
    let reader = Connection::open(path).map_err(|e| fail(e.to_string()))?;
    reader.set_prepared_statement_cache_capacity(STATEMENTS_KEPT);
    reader
        .busy_timeout(Duration::from_secs(5))
        .and_then(|()| reader.pragma_update(None, "query_only", true))
        .map_err(|e| fail(e.to_string()))?;
    let events = broadcast::channel(4096).0;
    let log = PathBuf::from(format!("{}-wal", path.display()));
    let writer = Writer::start(conn, log, events.clone())
        .map_err(|e| fail(format!("cannot start its writer thread: {e}")))?;
    Ok(SqliteQueue {
        writer,
        reader: Arc::new(Mutex::new(reader)),
        events,
        _lock: lock,
    })
}

/// Writes a job's one final status and queues its webhook, in `tx`.
fn finalize(
    tx: &Transaction,
    id: &str,
    status: JobStatus,
    output: Option<Json>,
    error: Option<String>,
    events: &mut Vec<QueueEvent>,
) -> rusqlite::Result<()> {
    let now = now_ms();
    let output_text = output.as_ref().map(|output| output.text());
    let webhook: Option<Option<String>> = cached_row(
        tx,
        "UPDATE jobs SET status = ?2, output = ?3, error = ?4, finished_at = ?5,
                expires_at = ?5 + retention_ms, lease_token = NULL, lease_expires_at = NULL
             WHERE id = ?1 RETURNING webhook",
        params![id, status.as_str(), output_text.as_deref(), error, now],
        |row| row.get(0),
    )
    .optional()?;
    if let Some(Some(url)) = webhook {
        let body = webhook_body(id, status, &output, &error);
        cached_execute(tx,
            "INSERT INTO webhooks (job_id, url, body, next_at, created_at) VALUES (?1, ?2, ?3, ?4, ?4)",
            params![id, url, &*body.text(), now],
        )?;
        events.push(QueueEvent::WebhookDue);
    }
    events.push(QueueEvent::Finished(id.to_owned()));
    Ok(())
}

/// Records a failed attempt of running job `id`, then queues the job
/// again if its retry policy says so, else ends it; true when queued
/// again.
fn end_failed(
    tx: &Transaction,
    id: &str,
    failed: FailedAttempt,
    events: &mut Vec<QueueEvent>,
) -> rusqlite::Result<bool> {
    let (attempts, max, policy) = sqlite_attempts::policy(tx, id)?;
    let outcome = failed.failure.as_str();
    sqlite_attempts::record(tx, id, now_ms(), outcome, Some(&failed.detail))?;
    let delay_ms = match after_failure(&policy, &failed, attempts, max) {
        Next::End { error } => {
            let status = failed.failure.status();
            finalize(tx, id, status, failed.output, Some(error), events)?;
            return Ok(false);
        }
        Next::Again { delay_ms } => delay_ms,
    };
    cached_execute(
        tx,
        "UPDATE jobs SET status = 'IN_QUEUE', run_after = ?2, lease_token = NULL,
            lease_expires_at = NULL, output = NULL WHERE id = ?1",
        params![id, now_ms() + delay_ms],
    )?;
    cached_execute(tx, "DELETE FROM stream WHERE job_id = ?1", [id])?;
    let why = &failed.error;
    tracing::info!(job_id = %id, "{why}; queued again in {delay_ms} ms (attempt {attempts} of {max} used)");
    events.push(QueueEvent::Queued);
    Ok(true)
}

/// The ids of the next `count` jobs of `endpoints` that may start at
/// `now`: higher priority first, then by fair rank (see
/// [`super::fairness`]), first in, first out within one. Each
/// endpoint is one ordered scan of `jobs_take` that stops after `count`
/// rows; a worker serving several endpoints merges their heads.
///
/// The parameters are written `+?1` and `?3 + 0`: a bare parameter as the
/// limit, or compared with a column that a partial index's condition also
/// names, makes SQLite plan the statement again at every run, for the
/// value bound (it checks whether that value satisfies the condition);
/// an expression keeps one plan, and the same index.
fn next_jobs(
    tx: &Transaction,
    endpoints: &[String],
    now: i64,
    count: usize,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = tx.prepare_cached(
        "SELECT priority, fair_rank, queued_at, rowid, id FROM jobs
          WHERE endpoint = +?1 AND status = 'IN_QUEUE' AND run_after <= +?2 AND queued_at + ttl_ms > +?2
            AND (max_running IS NULL
                 OR (SELECT count(*) FROM jobs AS r
                      WHERE coalesce(r.tenant, '') = coalesce(jobs.tenant, '')
                        AND r.status = 'IN_PROGRESS' AND r.max_running IS NOT NULL)
                    < max_running)
          ORDER BY priority DESC, fair_rank, queued_at, rowid LIMIT ?3 + 0",
    )?;
    let mut heads: Vec<(i64, i64, i64, i64, String)> = Vec::new();
    for endpoint in endpoints {
        let rows = stmt.query_map(params![endpoint, now, count as i64], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?;
        for row in rows {
            heads.push(row?);
        }
    }
    heads.sort_by_key(|(priority, rank, queued_at, rowid, _)| {
        (-priority, *rank, *queued_at, *rowid)
    });
    heads.truncate(count);
    Ok(heads.into_iter().map(|(.., id)| id).collect())
}

/// Whether `token` holds the lease of running job `id`.
fn holds(tx: &Transaction, id: &str, token: &str) -> rusqlite::Result<bool> {
    cached_row(
        tx,
        "SELECT 1 FROM jobs WHERE id = ?1 AND lease_token = ?2 AND status = 'IN_PROGRESS'",
        [id, token],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

/// A job's status; `None` when there is no such job.
fn job_status(tx: &Transaction, id: &str) -> rusqlite::Result<Option<JobStatus>> {
    cached_row(tx, "SELECT status FROM jobs WHERE id = ?1", [id], |row| {
        row.get::<_, String>(0)
    })
    .optional()?
    .map(|text| status_of(&text))
    .transpose()
}

/// The partials of a job, oldest first.
fn partials(tx: &Transaction, id: &str) -> rusqlite::Result<Vec<Json>> {
    let mut stmt = tx.prepare_cached("SELECT output FROM stream WHERE job_id = ?1 ORDER BY seq")?;
    let rows = stmt.query_map([id], |row| row.get::<_, String>(0))?;
    rows.map(|text| text.map(stored_json)).collect()
}

#[async_trait]
impl Queue for SqliteQueue {
    fn subscribe(&self) -> broadcast::Receiver<QueueEvent> {
        self.events.subscribe()
    }

    async fn enqueue_raw(&self, job: NewJob<Json>) -> Result<(), QueueError> {
        self.writer
            .write(true, move |tx, events| {
                let inserted = sqlite_submit::insert(tx, &job)?;
                if inserted.is_ok() {
                    events.push(QueueEvent::Queued);
                }
                Ok(inserted)
            })
            .await?
    }

    async fn status_raw(&self, id: &str) -> Result<Option<JobRecord<Json>>, QueueError> {
        let id = id.to_owned();
        self.call(move |conn| {
            cached_row(conn,
                "SELECT id, status, output, error, attempts, worker_id, created_at, started_at, finished_at,
                    endpoint
                 FROM jobs WHERE id = ?1",
                [&id],
                |row| {
                    Ok(JobRecord {
                        id: row.get(0)?,
                        endpoint: row.get(9)?,
                        status: status_of(&row.get::<_, String>(1)?)?,
                        output: row.get::<_, Option<String>>(2)?.map(stored_json),
                        error: row.get(3)?,
                        attempts: row.get(4)?,
                        worker_id: row.get(5)?,
                        created_at: row.get(6)?,
                        started_at: row.get(7)?,
                        finished_at: row.get(8)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn read_stream_raw(
        &self,
        id: &str,
    ) -> Result<Option<(JobStatus, Vec<Json>)>, QueueError> {
        let id = id.to_owned();
        self.write(move |tx, _| {
            let Some(status) = job_status(tx, &id)? else {
                return Ok(None);
            };
            let mut stmt = tx.prepare_cached(
                "UPDATE stream SET read = 1 WHERE job_id = ?1 AND read = 0 RETURNING seq, output",
            )?;
            let rows = stmt
                .query_map([&id], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(Some((status, stored_partials(rows))))
        })
        .await
    }

    async fn cancel(&self, id: &str) -> Result<Option<JobStatus>, QueueError> {
        let id = id.to_owned();
        self.write(move |tx, events| {
            let Some(status) = job_status(tx, &id)? else {
                return Ok(None);
            };
            if status.is_final() {
                return Ok(Some(status));
            }
            if status == JobStatus::InProgress {
                sqlite_attempts::record(tx, &id, now_ms(), "cancelled", None)?;
            }
            finalize(tx, &id, JobStatus::Cancelled, None, None, events)?;
            if status == JobStatus::InProgress {
                events.push(QueueEvent::Cancelled(id.clone()));
            }
            Ok(Some(JobStatus::Cancelled))
        })
        .await
    }

    async fn retry(&self, id: &str) -> Result<RetryOutcome, QueueError> {
        let id = id.to_owned();
        self.write(move |tx, events| {
            let Some(status) = job_status(tx, &id)? else {
                return Ok(RetryOutcome::NotFound);
            };
            if !matches!(status, JobStatus::Failed | JobStatus::TimedOut) {
                return Ok(RetryOutcome::NotRetryable(status));
            }
            let now = now_ms();
            cached_execute(
                tx,
                "UPDATE jobs SET status = 'IN_QUEUE', attempts = 0, queued_at = ?2, run_after = ?2,
                    started_at = NULL, finished_at = NULL, expires_at = NULL, worker_id = NULL,
                    output = NULL, error = NULL WHERE id = ?1",
                params![id, now],
            )?;
            cached_execute(tx, "DELETE FROM stream WHERE job_id = ?1", [&id])?;
            // Its attempts count from one again, so its history does too.
            cached_execute(tx, "DELETE FROM attempts WHERE job_id = ?1", [&id])?;
            events.push(QueueEvent::Queued);
            Ok(RetryOutcome::Requeued)
        })
        .await
    }

    async fn list_jobs(
        &self,
        endpoint: &str,
        filter: &JobFilter,
        limit: usize,
    ) -> Result<Vec<JobSummary>, QueueError> {
        let (endpoint, filter) = (endpoint.to_owned(), filter.clone());
        self.call(move |conn| sqlite_listing::list(conn, &endpoint, &filter, limit))
            .await
    }

    async fn job_raw(&self, id: &str) -> Result<Option<JobDetail>, QueueError> {
        let id = id.to_owned();
        self.call(move |conn| sqlite_listing::detail(conn, &id))
            .await
    }

    async fn active_endpoints(&self, limit: usize) -> Result<Vec<String>, QueueError> {
        self.call(move |conn| sqlite_listing::active_endpoints(conn, now_ms(), limit))
            .await
    }

    async fn workers(&self, endpoint: &str) -> Result<Vec<WorkerRow>, QueueError> {
        let endpoint = endpoint.to_owned();
        self.call(move |conn| sqlite_listing::workers(conn, &endpoint, now_ms()))
            .await
    }

    async fn depth(&self, endpoint: &str) -> Result<Depth, QueueError> {
        let endpoint = endpoint.to_owned();
        self.call(move |conn| sqlite_listing::depth(conn, &endpoint, now_ms()))
            .await
    }

    async fn ended_since(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<Ended>, i64), QueueError> {
        self.call(move |conn| sqlite_listing::ended_since(conn, after, now_ms(), limit))
            .await
    }

    async fn purge(&self, endpoint: &str) -> Result<u64, QueueError> {
        let endpoint = endpoint.to_owned();
        self.write(move |tx, _| {
            // A queued job may have failed attempts behind it.
            cached_execute(
                tx,
                "DELETE FROM attempts WHERE job_id IN
                    (SELECT id FROM jobs WHERE status = 'IN_QUEUE' AND endpoint = ?1)",
                [&endpoint],
            )?;
            let removed = cached_execute(
                tx,
                "DELETE FROM jobs WHERE status = 'IN_QUEUE' AND endpoint = ?1",
                [&endpoint],
            )?;
            cached_execute(
                tx,
                "DELETE FROM stream WHERE job_id NOT IN (SELECT id FROM jobs)",
                [],
            )?;
            Ok(removed as u64)
        })
        .await
    }

    async fn health(&self, endpoint: &str) -> Result<Health, QueueError> {
        let endpoint = endpoint.to_owned();
        self.call(move |conn| {
            let mut health = Health::default();
            let mut stmt = conn.prepare_cached(
                "SELECT status, COUNT(*) FROM jobs WHERE endpoint = ?1 GROUP BY status",
            )?;
            let rows = stmt.query_map([&endpoint], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (status, count) = row?;
                health
                    .counts
                    .push((status_of(&status)?, count.max(0) as u64));
            }
            let retried: i64 = cached_row(
                conn,
                "SELECT COUNT(*) FROM jobs WHERE endpoint = ?1 AND attempts > 1",
                [&endpoint],
                |r| r.get(0),
            )?;
            health.retried = retried.max(0) as u64;
            let (idle, running, workers): (Option<i64>, Option<i64>, i64) = cached_row(
                conn,
                "SELECT SUM(MAX(capacity - busy, 0)), SUM(busy), COUNT(*) FROM workers
                  WHERE seen_at > ?1 AND ',' || endpoints || ',' LIKE '%,' || ?2 || ',%'",
                params![now_ms() - WORKER_GONE_MS, endpoint],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?;
            health.idle = idle.unwrap_or(0).max(0) as u64;
            health.running = running.unwrap_or(0).max(0) as u64;
            health.workers = workers.max(0) as u64;
            let now = now_ms();
            let (oldest, arrived, mean_run): (Option<i64>, i64, Option<f64>) = cached_row(
                conn,
                "SELECT (SELECT MIN(queued_at) FROM jobs
                          WHERE endpoint = ?1 AND status = 'IN_QUEUE' AND run_after <= ?2),
                        COUNT(*), AVG(finished_at - started_at)
                   FROM jobs WHERE endpoint = ?1 AND created_at > ?3",
                params![endpoint, now, now - RATE_WINDOW_MS],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?;
            health.oldest_wait_ms = oldest.map(|at| (now - at).max(0));
            health.arrived = arrived.max(0) as u64;
            health.mean_run_ms = mean_run;
            Ok(health)
        })
        .await
    }

    async fn take_raw(
        &self,
        worker: &str,
        endpoints: &[String],
        count: usize,
        lease: Duration,
    ) -> Result<Vec<Lease<Json>>, QueueError> {
        let worker = worker.to_owned();
        let endpoints = endpoints.to_vec();
        let lease_ms = duration_ms(lease);
        self.write(move |tx, _| {
            let now = now_ms();
            let ids = next_jobs(tx, &endpoints, now, count)?;
            let mut leases = Vec::with_capacity(ids.len());
            for id in ids {
                let token = uuid::Uuid::new_v4().simple().to_string();
                // None: its tenant's max_running was reached by a job
                // taken before it in this batch (the gate skipped it).
                let lease = cached_row(tx,
                    "UPDATE jobs SET status = 'IN_PROGRESS', attempts = attempts + 1, worker_id = ?2,
                        lease_token = ?3, lease_expires_at = ?4, started_at = ?5
                     WHERE id = ?1 RETURNING payload, attempts, execution_timeout_ms, queued_at,
                        stall_timeout_ms",
                    params![id, worker, token, now + lease_ms, now],
                    |row| {
                        Ok(Lease {
                            job_id: id.clone(),
                            token: token.clone(),
                            payload: stored_json(row.get(0)?),
                            attempt: row.get(1)?,
                            execution_timeout: row
                                .get::<_, Option<i64>>(2)?
                                .map(|ms| Duration::from_millis(ms.max(0) as u64)),
                            waited: Duration::from_millis((now - row.get::<_, i64>(3)?).max(0) as u64),
                            stall_timeout: row
                                .get::<_, Option<i64>>(4)?
                                .map(|ms| Duration::from_millis(ms.max(0) as u64)),
                        })
                    },
                )
                .optional()?;
                leases.extend(lease);
            }
            Ok(leases)
        })
        .await
    }

    async fn renew(
        &self,
        leases: &[(String, String)],
        lease: Duration,
    ) -> Result<Vec<String>, QueueError> {
        let leases = leases.to_vec();
        let lease_ms = duration_ms(lease);
        self.write(move |tx, _| {
            let until = now_ms() + lease_ms;
            let mut lost = Vec::new();
            for (id, token) in leases {
                let renewed = cached_execute(
                    tx,
                    "UPDATE jobs SET lease_expires_at = ?3
                     WHERE id = ?1 AND lease_token = ?2 AND status = 'IN_PROGRESS'",
                    params![id, token, until],
                )?;
                if renewed == 0 {
                    lost.push(id);
                }
            }
            Ok(lost)
        })
        .await
    }

    async fn progress_raw(
        &self,
        job_id: &str,
        token: &str,
        output: Json,
    ) -> Result<bool, QueueError> {
        let (id, token) = (job_id.to_owned(), token.to_owned());
        self.write(move |tx, _| {
            let changed = cached_execute(tx,
                "UPDATE jobs SET output = ?3 WHERE id = ?1 AND lease_token = ?2 AND status = 'IN_PROGRESS'",
                params![id, token, &*output.text()],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    async fn stream_raw(
        &self,
        job_id: &str,
        token: &str,
        output: Json,
    ) -> Result<bool, QueueError> {
        let (id, token) = (job_id.to_owned(), token.to_owned());
        self.write(move |tx, events| {
            if !holds(tx, &id, &token)? {
                return Ok(false);
            }
            cached_execute(
                tx,
                "INSERT INTO stream (job_id, seq, output)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM stream WHERE job_id = ?1), ?2)",
                params![id, &*output.text()],
            )?;
            events.push(QueueEvent::Streamed(id));
            Ok(true)
        })
        .await
    }

    async fn finish_raw(
        &self,
        job_id: &str,
        token: &str,
        ending: Ending<Json>,
    ) -> Result<bool, QueueError> {
        let (id, token) = (job_id.to_owned(), token.to_owned());
        self.write(move |tx, events| {
            if !holds(tx, &id, &token)? {
                return Ok(false);
            }
            let output = match ending.into_failure() {
                Ok(output) => output,
                Err(failed) => {
                    end_failed(tx, &id, failed, events)?;
                    return Ok(true);
                }
            };
            // A streaming handler's final output is empty: the job's
            // output is then the list of its partials.
            let list = if is_empty_output(&output) {
                partials(tx, &id)?
            } else {
                Vec::new()
            };
            let output = if list.is_empty() {
                output
            } else {
                partials_output(&list)
            };
            sqlite_attempts::record(tx, &id, now_ms(), "completed", None)?;
            finalize(tx, &id, JobStatus::Completed, Some(output), None, events)?;
            Ok(true)
        })
        .await
    }

    async fn heartbeat(
        &self,
        worker: &WorkerInfo,
        capacity: usize,
        busy: usize,
    ) -> Result<(), QueueError> {
        let (id, hostname) = (worker.id.clone(), worker.hostname.clone());
        let endpoints = worker.endpoints.join(",");
        self.write(move |tx, _| {
            cached_execute(tx,
                "INSERT INTO workers (id, capacity, busy, seen_at, endpoints, hostname, version, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?4)
                 ON CONFLICT (id) DO UPDATE SET capacity = ?2, busy = ?3, seen_at = ?4, endpoints = ?5",
                params![
                    id,
                    capacity as i64,
                    busy as i64,
                    now_ms(),
                    endpoints,
                    hostname,
                    env!("CARGO_PKG_VERSION")
                ],
            )
        })
        .await
        .map(drop)
    }

    async fn sweep(&self) -> Result<Swept, QueueError> {
        self.write(|tx, events| {
            let now = now_ms();
            let mut swept = Swept::default();
            let lost: Vec<String> = tx
                .prepare_cached(
                    "SELECT id FROM jobs WHERE status = 'IN_PROGRESS' AND lease_expires_at < ?1 LIMIT ?2",
                )?
                .query_map(params![now, SWEEP_BATCH], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for id in lost {
                if end_failed(tx, &id, lost_lease(), events)? {
                    swept.requeued += 1;
                } else {
                    swept.ended += 1;
                }
            }
            let expired: Vec<(String, i64)> = tx
                .prepare_cached(
                    "SELECT id, ttl_ms FROM jobs WHERE status = 'IN_QUEUE' AND queued_at + ttl_ms <= ?1 LIMIT ?2",
                )?
                .query_map(params![now, SWEEP_BATCH], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (id, ttl) in expired {
                let error = format!("the job's ttl of {ttl} ms passed before it started; it did not run");
                finalize(tx, &id, JobStatus::TimedOut, None, Some(error), events)?;
                swept.ended += 1;
            }
            for table in ["stream", "attempts"] {
                cached_execute(tx,
                    &format!(
                        "DELETE FROM {table} WHERE job_id IN
                            (SELECT id FROM jobs WHERE expires_at <= ?1 LIMIT ?2)"
                    ),
                    params![now, SWEEP_BATCH],
                )?;
            }
            swept.deleted_jobs = tx
                .prepare_cached(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE expires_at <= ?1 LIMIT ?2)
                     RETURNING endpoint, id",
                )?
                .query_map(params![now, SWEEP_BATCH], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            swept.deleted = swept.deleted_jobs.len() as u64;
            cached_execute(tx, "DELETE FROM workers WHERE seen_at < ?1", [now - WORKER_FORGET_MS])?;
            Ok(swept)
        })
        .await
    }

    async fn webhooks_due(&self, limit: usize) -> Result<Vec<WebhookPost>, QueueError> {
        self.write(move |tx, _| {
            let now = now_ms();
            let mut stmt = tx.prepare_cached(
                "UPDATE webhooks SET next_at = ?1 + ?2 WHERE id IN
                    (SELECT id FROM webhooks WHERE next_at <= ?1 ORDER BY next_at LIMIT ?3 + 0)
                 RETURNING id, job_id, url, body, attempts, created_at",
            )?;
            let posts = stmt
                .query_map(params![now, WEBHOOK_CLAIM_MS, limit as i64], |row| {
                    Ok(WebhookPost {
                        id: row.get(0)?,
                        job_id: row.get(1)?,
                        url: row.get(2)?,
                        body: stored_json(row.get(3)?),
                        attempts: row.get(4)?,
                        created_at: row.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(posts)
        })
        .await
    }

    async fn webhook_done(&self, id: i64) -> Result<(), QueueError> {
        self.write(move |tx, _| cached_execute(tx, "DELETE FROM webhooks WHERE id = ?1", [id]))
            .await
            .map(drop)
    }

    async fn webhook_later(&self, id: i64, at: SystemTime) -> Result<(), QueueError> {
        let at = to_ms(at);
        self.write(move |tx, _| {
            cached_execute(
                tx,
                "UPDATE webhooks SET attempts = attempts + 1, next_at = ?2 WHERE id = ?1",
                params![id, at],
            )
        })
        .await
        .map(drop)
    }

    async fn webhooks_defer(&self, ids: &[i64], at: SystemTime) -> Result<(), QueueError> {
        let (ids, at) = (ids.to_vec(), to_ms(at));
        self.write(move |tx, _| {
            let mut stmt = tx.prepare_cached("UPDATE webhooks SET next_at = ?2 WHERE id = ?1")?;
            for id in ids {
                stmt.execute(params![id, at])?;
            }
            Ok(())
        })
        .await
    }
}
