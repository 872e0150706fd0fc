//! The PostgreSQL queue's statements, one function per operation that
//! needs more than one statement or a transaction. Rows are locked before
//! they are judged (`FOR UPDATE`), so a finish, a cancel and a sweep that
//! race for one job are serialised and exactly one of them ends it; sweeps
//! from many processes skip each other's rows (`SKIP LOCKED`).

use std::time::Duration;

use deadpool_postgres::{GenericClient, Object, Transaction};
use tokio_postgres::Row;

use super::attempts::{after_failure, lost_lease, FailedAttempt, Next};
use super::postgres_announce::NOTIFY;
use super::postgres_attempts;
use super::postgres_listen as listen;
use super::postgres_typed::{p, query, query_then, Statements, Typed};

use super::{
    duration_ms, is_empty_output, partials_output, refusal, stored_json, stored_partials,
    stored_status, webhook_body, Ending, Health, JobRecord, JobStatus, Lease, NewJob, QueueError,
    QueueEvent, RetryOutcome, Swept, WebhookPost, RATE_WINDOW_MS, WORKER_FORGET_MS, WORKER_GONE_MS,
};
use crate::json::Json;

/// Most rows one maintenance pass changes, so no transaction runs long.
const SWEEP_BATCH: i64 = 500;
/// Shortest time between two sweeps of the queue, whichever processes
/// make them.
const SWEEP_SPACING_MS: i64 = 250;
/// Set at the start of a sweep's transaction (see [`sweep`]).
const SWEEP_IDLE_LIMIT: &str = "SET LOCAL idle_in_transaction_session_timeout = '5s'";
/// How long a webhook post taken for delivery is hidden from other takes.
const WEBHOOK_CLAIM_MS: i64 = 60_000;

/// Why a statement failed, sorted by what the caller does about it.
#[derive(Debug)]
pub(super) enum Fault {
    /// The connection failed or the server is gone: wait and retry.
    Unreachable(String),
    /// The statement itself failed.
    Sql(String),
}

impl From<tokio_postgres::Error> for Fault {
    fn from(error: tokio_postgres::Error) -> Self {
        let text = match error.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => match std::error::Error::source(&error) {
                Some(source) => format!("{error}: {source}"),
                None => error.to_string(),
            },
        };
        // Class 08 is a connection exception, 57P0x the server shutting
        // down; without a SQLSTATE, the connection itself failed when it
        // was closed, broke (an I/O error) or could not be made.
        let unreachable = match error.code() {
            Some(code) => code.code().starts_with("08") || code.code().starts_with("57P"),
            None => {
                error.is_closed()
                    || std::error::Error::source(&error).is_some_and(|s| s.is::<std::io::Error>())
                    || text.starts_with("error connecting")
                    || text.starts_with("timeout")
            }
        };
        if unreachable {
            Fault::Unreachable(text)
        } else {
            Fault::Sql(text)
        }
    }
}

impl From<deadpool_postgres::PoolError> for Fault {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(e) => Fault::from(e),
            other => Fault::Unreachable(other.to_string()),
        }
    }
}

/// The job's tenant cap (`max_running`) as PostgreSQL's integer.
pub(super) fn running_cap(job: &NewJob<Json>) -> Option<i32> {
    job.max_running
        .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
}

pub(super) fn status_of(text: &str) -> Result<JobStatus, Fault> {
    stored_status(text).map_err(|e| Fault::Sql(e.to_string()))
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The events of a transaction, announced once it has committed (see
/// [`super::postgres_announce`]).
pub(super) type Events = Vec<QueueEvent>;

/// Inserts `job` unless a job with its id or its `Idempotency-Key`
/// exists (then the inner error says which), in a statement of its own.
/// With prepared statements, the notification of a queued job is
/// pipelined right behind the insert, so idle workers elsewhere hear of it
/// without waiting for our round trip; `notified` says whether it went
/// (then `events`, which holds at most that `Queued`, is for this process
/// alone).
pub(super) async fn enqueue(
    client: &impl Typed,
    how: Statements,
    job: &NewJob<Json>,
    events: &mut Events,
    notified: &mut bool,
) -> Result<Result<(), QueueError>, Fault> {
    // The fair rank (see `super::fairness::assign`) is worked out in the
    // statement itself: a lone submission is one round trip.
    let sql = "INSERT INTO jobpipe.jobs (id, status, payload, webhook, execution_timeout_ms,
                ttl_ms, max_attempts, retention_ms, created_at, queued_at, run_after,
                stall_timeout_ms, priority, idempotency_key, request_hash, endpoint, tenant,
                fair_rank, retry_on, retry_backoff_ms, retry_max_backoff_ms, max_running, awaited)
            SELECT $1, 'IN_QUEUE', $2, $3, $4, $5, $6, $7, t, t + $9, t + $9, $8, $10, $11, $12,
                   $13, $14, CASE WHEN top IS NULL THEN head ELSE GREATEST(top + 1, head) END,
                   $15, $16, $17, $18, $19
              FROM (SELECT jobpipe.now_ms() AS t,
                           COALESCE((SELECT j.fair_rank FROM jobpipe.jobs AS j
                                      WHERE j.endpoint = $13 AND j.status = 'IN_QUEUE'
                                      ORDER BY j.priority DESC, j.fair_rank LIMIT 1), 0) AS head,
                           (SELECT MAX(j.fair_rank) FROM jobpipe.jobs AS j
                             WHERE j.endpoint = $13 AND coalesce(j.tenant, '') = coalesce($14, '')
                               AND j.status = 'IN_QUEUE') AS top) AS now
            ON CONFLICT DO NOTHING
            RETURNING id";
    let (key, hash) = match &job.idempotency {
        Some(idempotency) => (Some(&*idempotency.key), Some(&*idempotency.body_hash)),
        None => (None, None),
    };
    let policy = job.policy;
    let max_attempts = i32::try_from(policy.max_attempts).unwrap_or(i32::MAX);
    let payload = job.payload.text();
    let payload = &*payload;
    let execution = policy.execution_timeout.map(duration_ms);
    let (ttl, retention) = (duration_ms(policy.ttl), duration_ms(policy.retention));
    let stall = policy.stall_timeout.map(duration_ms);
    let delay = duration_ms(policy.delay);
    let retry_on = policy.retry.on.bits();
    let backoff = duration_ms(policy.retry.backoff);
    let max_backoff = duration_ms(policy.retry.max_backoff);
    let cap = running_cap(job);
    let params = [
        p(&job.id),
        p(&payload),
        p(&job.webhook),
        p(&execution),
        p(&ttl),
        p(&max_attempts),
        p(&retention),
        p(&stall),
        p(&delay),
        p(&policy.priority),
        p(&key),
        p(&hash),
        p(&job.endpoint),
        p(&job.tenant),
        p(&retry_on),
        p(&backoff),
        p(&max_backoff),
        p(&cap),
        p(&job.awaited),
    ];
    let rows = if how == Statements::Prepared {
        let payloads = vec![listen::payload(&QueueEvent::Queued)];
        let notify = [p(&listen::CHANNEL), p(&payloads)];
        let (rows, sent) = query_then(client, sql, &params, NOTIFY, &notify).await;
        *notified = sent;
        rows?
    } else {
        query(client, how, sql, &params).await?
    };
    if !rows.is_empty() {
        events.push(QueueEvent::Queued);
        return Ok(Ok(()));
    }
    let existing = match key {
        Some(key) => client
            .unnamed(
                "SELECT id, request_hash FROM jobpipe.jobs
                  WHERE idempotency_key = $1 AND coalesce(tenant, '') = coalesce($2, '')",
                &[p(&key), p(&job.tenant)],
            )
            .await?
            .first()
            .map(|row| (row.get(0), row.get(1))),
        None => None,
    };
    Ok(Err(refusal(job, existing)))
}

pub(super) async fn status(
    client: &Object,
    how: Statements,
    id: &str,
) -> Result<Option<JobRecord<Json>>, Fault> {
    let sql = "SELECT id, status, output, error, attempts, worker_id, created_at, started_at,
            finished_at, endpoint FROM jobpipe.jobs WHERE id = $1";
    let rows = query(client, how, sql, &[p(&id)]).await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    Ok(Some(JobRecord {
        id: row.get(0),
        endpoint: row.get(9),
        status: status_of(row.get(1))?,
        output: row.get::<_, Option<String>>(2).map(stored_json),
        error: row.get(3),
        attempts: u32::try_from(row.get::<_, i32>(4)).unwrap_or(0),
        worker_id: row.get(5),
        created_at: row.get(6),
        started_at: row.get(7),
        finished_at: row.get(8),
    }))
}

/// The job's status, its row locked for the rest of the transaction.
async fn lock_status(tx: &Transaction<'_>, id: &str) -> Result<Option<JobStatus>, Fault> {
    match tx
        .query_typed_opt(
            "SELECT status FROM jobpipe.jobs WHERE id = $1 FOR UPDATE",
            &[p(&id)],
        )
        .await?
    {
        Some(row) => Ok(Some(status_of(row.get(0))?)),
        None => Ok(None),
    }
}

pub(super) async fn read_stream(
    client: &mut Object,
    id: &str,
) -> Result<Option<(JobStatus, Vec<Json>)>, Fault> {
    let tx = client.transaction().await?;
    let Some(row) = tx
        .query_typed_opt("SELECT status FROM jobpipe.jobs WHERE id = $1", &[p(&id)])
        .await?
    else {
        return Ok(None);
    };
    let status = status_of(row.get(0))?;
    let rows = tx
        .query_typed(
            "UPDATE jobpipe.stream SET read = true WHERE job_id = $1 AND NOT read
             RETURNING seq, output",
            &[p(&id)],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    tx.commit().await?;
    Ok(Some((status, stored_partials(rows))))
}

/// Writes a job's one final status and queues its webhook, in `tx`. The
/// row must be locked.
async fn finalize(
    tx: &Transaction<'_>,
    events: &mut Events,
    id: &str,
    status: JobStatus,
    output: Option<Json>,
    error: Option<String>,
) -> Result<(), Fault> {
    let output_text = output.as_ref().map(|output| output.text());
    let output_text = output_text.as_deref();
    let row = tx
        .query_typed_one(
            "UPDATE jobpipe.jobs SET status = $2, output = $3, error = $4,
                finished_at = jobpipe.now_ms(), expires_at = jobpipe.now_ms() + retention_ms,
                lease_token = NULL, lease_expires_at = NULL
             WHERE id = $1
             RETURNING webhook, finished_at",
            &[p(&id), p(&status.as_str()), p(&output_text), p(&error)],
        )
        .await?;
    if let Some(url) = row.get::<_, Option<String>>(0) {
        let finished_at: i64 = row.get(1);
        let body = webhook_body(id, status, &output, &error);
        let body = body.text();
        let body: &str = &body;
        tx.execute_typed(
            "INSERT INTO jobpipe.webhooks (job_id, url, body, next_at, created_at)
                 VALUES ($1, $2, $3, $4, $4)",
            &[p(&id), p(&url), p(&body), p(&finished_at)],
        )
        .await?;
        events.push(QueueEvent::WebhookDue);
    }
    events.push(QueueEvent::Finished(id.to_owned()));
    Ok(())
}

/// Records a failed attempt of running job `id`, then queues the job
/// again if its retry policy says so, else ends it; true when queued
/// again. The row must be locked.
async fn end_failed(
    tx: &Transaction<'_>,
    events: &mut Events,
    id: &str,
    failed: FailedAttempt,
) -> Result<bool, Fault> {
    let (attempts, max, policy) = postgres_attempts::policy(tx, id).await?;
    let outcome = failed.failure.as_str();
    postgres_attempts::record(tx, id, outcome, Some(&failed.detail)).await?;
    let delay_ms = match after_failure(&policy, &failed, attempts, max) {
        Next::End { error } => {
            if policy.on.contains(failed.failure) {
                tracing::warn!(job_id = %id, "{error}; the job ended");
            }
            let status = failed.failure.status();
            finalize(tx, events, id, status, failed.output, Some(error)).await?;
            return Ok(false);
        }
        Next::Again { delay_ms } => delay_ms,
    };
    tx.execute_typed(
        "UPDATE jobpipe.jobs SET status = 'IN_QUEUE', run_after = jobpipe.now_ms() + $2,
                lease_token = NULL, lease_expires_at = NULL, output = NULL
             WHERE id = $1",
        &[p(&id), p(&delay_ms)],
    )
    .await?;
    tx.execute_typed("DELETE FROM jobpipe.stream WHERE job_id = $1", &[p(&id)])
        .await?;
    let why = &failed.error;
    tracing::info!(job_id = %id, "{why}; queued again in {delay_ms} ms (attempt {attempts} of {max} used)");
    events.push(QueueEvent::Queued);
    Ok(true)
}

pub(super) async fn cancel(
    client: &mut Object,
    id: &str,
    events: &mut Events,
) -> Result<Option<JobStatus>, Fault> {
    let tx = client.transaction().await?;
    let Some(status) = lock_status(&tx, id).await? else {
        return Ok(None);
    };
    if status.is_final() {
        return Ok(Some(status));
    }
    if status == JobStatus::InProgress {
        postgres_attempts::record(&tx, id, "cancelled", None).await?;
    }
    finalize(&tx, events, id, JobStatus::Cancelled, None, None).await?;
    if status == JobStatus::InProgress {
        events.push(QueueEvent::Cancelled(id.to_owned()));
    }
    tx.commit().await?;
    Ok(Some(JobStatus::Cancelled))
}

pub(super) async fn retry(
    client: &mut Object,
    id: &str,
    events: &mut Events,
) -> Result<RetryOutcome, Fault> {
    let tx = client.transaction().await?;
    let Some(status) = lock_status(&tx, id).await? else {
        return Ok(RetryOutcome::NotFound);
    };
    if !matches!(status, JobStatus::Failed | JobStatus::TimedOut) {
        return Ok(RetryOutcome::NotRetryable(status));
    }
    tx.execute_typed(
        "UPDATE jobpipe.jobs SET status = 'IN_QUEUE', attempts = 0, queued_at = jobpipe.now_ms(),
            run_after = jobpipe.now_ms(), started_at = NULL, finished_at = NULL,
            expires_at = NULL, worker_id = NULL, output = NULL, error = NULL
         WHERE id = $1",
        &[p(&id)],
    )
    .await?;
    tx.execute_typed("DELETE FROM jobpipe.stream WHERE job_id = $1", &[p(&id)])
        .await?;
    // Its attempts count from one again, so its history does too.
    tx.execute_typed("DELETE FROM jobpipe.attempts WHERE job_id = $1", &[p(&id)])
        .await?;
    tx.commit().await?;
    events.push(QueueEvent::Queued);
    Ok(RetryOutcome::Requeued)
}

pub(super) async fn health(client: &Object, endpoint: &str) -> Result<Health, Fault> {
    let mut health = Health::default();
    for row in client
        .query_typed(
            "SELECT status, COUNT(*) FROM jobpipe.jobs WHERE endpoint = $1 GROUP BY status",
            &[p(&endpoint)],
        )
        .await?
    {
        health
            .counts
            .push((status_of(row.get(0))?, count(row.get(1))));
    }
    let row = client
        .query_typed_one(
            "SELECT (SELECT COUNT(*) FROM jobpipe.jobs WHERE endpoint = $2 AND attempts > 1),
                    SUM(GREATEST(capacity - busy, 0))::bigint, SUM(busy)::bigint, COUNT(*)
               FROM jobpipe.workers
              WHERE seen_at > jobpipe.now_ms() - $1 AND $2 = ANY (endpoints)",
            &[p(&WORKER_GONE_MS), p(&endpoint)],
        )
        .await?;
    health.retried = count(row.get(0));
    health.idle = count(row.get::<_, Option<i64>>(1).unwrap_or(0));
    health.running = count(row.get::<_, Option<i64>>(2).unwrap_or(0));
    health.workers = count(row.get(3));
    let row = client
        .query_typed_one(
            "SELECT jobpipe.now_ms() - (SELECT MIN(queued_at) FROM jobpipe.jobs
                      WHERE endpoint = $1 AND status = 'IN_QUEUE' AND run_after <= jobpipe.now_ms()),
                    COUNT(*), AVG(finished_at - started_at)::float8
               FROM jobpipe.jobs WHERE endpoint = $1 AND created_at > jobpipe.now_ms() - $2",
            &[p(&endpoint), p(&RATE_WINDOW_MS)],
        )
        .await?;
    health.oldest_wait_ms = row.get::<_, Option<i64>>(0).map(|ms| ms.max(0));
    health.arrived = count(row.get(1));
    health.mean_run_ms = row.get(2);
    Ok(health)
}

pub(super) async fn take(
    client: &Object,
    how: Statements,
    worker: &str,
    endpoints: &[String],
    slots: usize,
    lease: Duration,
) -> Result<Vec<Lease<Json>>, Fault> {
    // A function (schema migrations 6 to 13) whose plan is pinned to
    // ordered index scans. Its commit waits for the WAL flush like any
    // other: a take lost to a server crash would leave the job queued while
    // its handler runs it, so it would run once more than its attempts
    // count says (and past its maxAttempts).
    let sql = "SELECT * FROM jobpipe.take($1, $2, $3, $4)";
    let limit = i64::try_from(slots).unwrap_or(i64::MAX);
    let lease_ms = duration_ms(lease);
    let params = [p(&worker), p(&endpoints), p(&limit), p(&lease_ms)];
    let rows = query(client, how, sql, &params).await?;
    Ok(rows.iter().map(lease_of).collect())
}

fn lease_of(row: &Row) -> Lease<Json> {
    Lease {
        job_id: row.get(0),
        token: row.get(1),
        payload: stored_json(row.get(2)),
        attempt: u32::try_from(row.get::<_, i32>(3)).unwrap_or(0),
        execution_timeout: row
            .get::<_, Option<i64>>(4)
            .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        waited: Duration::from_millis(u64::try_from(row.get::<_, i64>(5)).unwrap_or(0)),
        stall_timeout: row
            .get::<_, Option<i64>>(6)
            .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
    }
}

pub(super) async fn renew(
    client: &Object,
    leases: &[(String, String)],
    lease: Duration,
) -> Result<Vec<String>, Fault> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, tokens): (Vec<&str>, Vec<&str>) = leases
        .iter()
        .map(|(id, token)| (id.as_str(), token.as_str()))
        .unzip();
    let sql = "UPDATE jobpipe.jobs AS j SET lease_expires_at = jobpipe.now_ms() + $3
           FROM unnest($1::text[], $2::text[]) AS held (id, token)
          WHERE j.id = held.id AND j.lease_token = held.token AND j.status = 'IN_PROGRESS'
         RETURNING j.id";
    let renewed: Vec<String> = client
        .query_typed(sql, &[p(&ids), p(&tokens), p(&duration_ms(lease))])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(ids
        .into_iter()
        .filter(|id| !renewed.iter().any(|r| r == id))
        .map(str::to_owned)
        .collect())
}

/// Ends a job held with `token` in `tx`, which may hold other jobs'
/// writes too (a group commit); the caller commits. False (and nothing
/// written) when the job is no longer held with `token`. This is the path
/// for the ends one statement cannot write (see
/// [`super::postgres_batch::finish_many`]): it locks the row, then records
/// the attempt and writes the job's end, or queues it again.
pub(super) async fn finish_in(
    tx: &Transaction<'_>,
    id: &str,
    token: &str,
    ending: Ending<Json>,
    events: &mut Events,
) -> Result<bool, Fault> {
    if !lock_held(tx, id, token).await? {
        return Ok(false);
    }
    let output = match ending.into_failure() {
        Ok(output) => output,
        Err(failed) => {
            end_failed(tx, events, id, failed).await?;
            return Ok(true);
        }
    };
    // A streaming handler's final output is empty: the job's output is
    // then the list of its partials.
    let list = if is_empty_output(&output) {
        partials(tx, id).await?
    } else {
        Vec::new()
    };
    let output = if list.is_empty() {
        output
    } else {
        partials_output(&list)
    };
    postgres_attempts::record(tx, id, "completed", None).await?;
    finalize(tx, events, id, JobStatus::Completed, Some(output), None).await?;
    Ok(true)
}

/// Locks the job's row if it is still held with `token`; false if not.
async fn lock_held(tx: &Transaction<'_>, id: &str, token: &str) -> Result<bool, Fault> {
    Ok(tx
        .query_typed_opt(
            "SELECT 1 FROM jobpipe.jobs
              WHERE id = $1 AND lease_token = $2 AND status = 'IN_PROGRESS' FOR UPDATE",
            &[p(&id), p(&token)],
        )
        .await?
        .is_some())
}

async fn partials(tx: &Transaction<'_>, id: &str) -> Result<Vec<Json>, Fault> {
    Ok(tx
        .query_typed(
            "SELECT output FROM jobpipe.stream WHERE job_id = $1 ORDER BY seq",
            &[p(&id)],
        )
        .await?
        .iter()
        .map(|row| stored_json(row.get(0)))
        .collect())
}

/// Sweeps the queue: lost leases, jobs past their ttl, finished jobs past
/// their retention, silent workers. Every process asks once a second, but
/// one at a time sweeps, and the cluster at most once per
/// [`SWEEP_SPACING_MS`]: the sweeper holds the one housekeeping row, the
/// others skip it. Each query compares with one `now` given as a value, so
/// the indexes on lease expiry and retention serve it (a VOLATILE function
/// in the predicate would be a scan of the table).
pub(super) async fn sweep(
    client: &mut Object,
    sweeper: &str,
    events: &mut Events,
) -> Result<Swept, Fault> {
    let tx = client.transaction().await?;
    // A sweeper frozen mid-sweep (SIGSTOP, swapped out) must not hold the
    // housekeeping row, and with it every other process's sweeps: the
    // server ends its session after this long idle in the transaction.
    tx.batch_execute(SWEEP_IDLE_LIMIT).await?;
    let mut swept = Swept::default();
    // The row, if no one else holds it and its time has come: this
    // process's turn, and the `now` of the whole sweep.
    let turn = tx
        .query_typed_opt(
            "UPDATE jobpipe.housekeeping SET swept_at = jobpipe.now_ms(), swept_by = $2
              WHERE ctid = (SELECT ctid FROM jobpipe.housekeeping
                             WHERE swept_at <= jobpipe.now_ms() - $1 FOR UPDATE SKIP LOCKED)
              RETURNING swept_at",
            &[p(&SWEEP_SPACING_MS), p(&sweeper)],
        )
        .await?;
    let Some(turn) = turn else {
        return Ok(swept);
    };
    let now: i64 = turn.get(0);
    let lost = tx
        .query_typed(
            "SELECT id FROM jobpipe.jobs
              WHERE status = 'IN_PROGRESS' AND lease_expires_at < $2
              LIMIT $1 FOR UPDATE SKIP LOCKED",
            &[p(&SWEEP_BATCH), p(&now)],
        )
        .await?;
    for row in lost {
        let id: String = row.get(0);
        if end_failed(&tx, events, &id, lost_lease()).await? {
            swept.requeued += 1;
        } else {
            swept.ended += 1;
        }
    }
    let expired = tx
        .query_typed(
            "SELECT id, ttl_ms FROM jobpipe.jobs
              WHERE status = 'IN_QUEUE' AND queued_at + ttl_ms <= $2
              LIMIT $1 FOR UPDATE SKIP LOCKED",
            &[p(&SWEEP_BATCH), p(&now)],
        )
        .await?;
    for row in expired {
        let (id, ttl): (String, i64) = (row.get(0), row.get(1));
        let error = format!("the job's ttl of {ttl} ms passed before it started; it did not run");
        finalize(&tx, events, &id, JobStatus::TimedOut, None, Some(error)).await?;
        swept.ended += 1;
    }
    swept.deleted_jobs = tx
        .query_typed(
            "DELETE FROM jobpipe.jobs WHERE id IN (
                SELECT id FROM jobpipe.jobs WHERE expires_at <= $2
                 LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING endpoint, id",
            &[p(&SWEEP_BATCH), p(&now)],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    swept.deleted = swept.deleted_jobs.len() as u64;
    tx.execute_typed(
        "DELETE FROM jobpipe.workers WHERE seen_at < $1",
        &[p(&(now - WORKER_FORGET_MS))],
    )
    .await?;
    tx.commit().await?;
    Ok(swept)
}

pub(super) async fn webhooks_due(client: &Object, limit: usize) -> Result<Vec<WebhookPost>, Fault> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query_typed(
            "UPDATE jobpipe.webhooks SET next_at = jobpipe.now_ms() + $1 WHERE id IN (
                SELECT id FROM jobpipe.webhooks WHERE next_at <= (SELECT jobpipe.now_ms())
                 ORDER BY next_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING id, job_id, url, body, attempts, created_at",
            &[p(&WEBHOOK_CLAIM_MS), p(&limit)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| WebhookPost {
            id: row.get(0),
            job_id: row.get(1),
            url: row.get(2),
            body: stored_json(row.get(3)),
            attempts: u32::try_from(row.get::<_, i32>(4)).unwrap_or(0),
            created_at: row.get(5),
        })
        .collect())
}
