//! The shared queue: PostgreSQL, for many jobpipe processes on many
//! machines pointing at one database.
//!
//! Takes use `FOR UPDATE SKIP LOCKED`, so workers never wait on each other
//! or take the same job. Every change that others must hear of is sent
//! with `NOTIFY jobpipe` in the same transaction (delivered on commit); one
//! `LISTEN` connection per process turns them into [`QueueEvent`]s, so idle
//! workers wake within milliseconds, `/runsync` answers on a notification
//! and a cancel reaches the worker holding the job wherever it runs.
//! Leases, attempts, retention and webhooks work as in the module docs of
//! [`crate::queue`]; a dropped connection is opened again on next use.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{broadcast, Mutex};
use tokio_postgres::{AsyncMessage, Client, NoTls, Transaction};

use super::{
    duration_ms, now_ms, to_ms, Ending, Health, JobRecord, JobStatus, Lease, NewJob, Queue,
    QueueError, QueueEvent, RetryOutcome, Swept, WebhookPost,
};

const SWEEP_BATCH: i64 = 500;
const WORKER_GONE_MS: i64 = 30_000;
const WEBHOOK_CLAIM_MS: i64 = 60_000;
/// The body of a job's webhook post, built from its row.
const WEBHOOK_BODY: &str = "jsonb_build_object('id', id, 'status', status)
    || CASE WHEN output IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('output', output) END
    || CASE WHEN error IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('error', error) END";

/// The PostgreSQL queue. See the module docs.
pub struct PostgresQueue {
    url: String,
    client: Mutex<Client>,
    events: broadcast::Sender<QueueEvent>,
}

fn db(error: tokio_postgres::Error) -> QueueError {
    QueueError::Database(describe(&error))
}

/// An error with its cause, never with the connection URL.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => match std::error::Error::source(error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        },
    }
}

/// The URL with its password replaced, for messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// The connection settings of `url`, with the password from `PGPASSWORD`
/// when the URL has none.
fn settings(url: &str) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_password().is_none() {
        if let Ok(password) = std::env::var("PGPASSWORD") {
            config.password(password);
        }
    }
    Ok(config)
}

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = settings(url)?.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("queue database connection lost: {}", describe(&e));
        }
    });
    Ok(client)
}

/// Forwards `NOTIFY jobpipe` messages as queue events, reconnecting after
/// a lost connection.
async fn listen(
    url: String,
    events: broadcast::Sender<QueueEvent>,
    listening: tokio::sync::oneshot::Sender<()>,
) {
    let mut listening = Some(listening);
    let mut delays = crate::backoff::BackoffPolicy::new(
        Duration::from_millis(200),
        Duration::from_secs(10),
        0.3,
    )
    .iter();
    loop {
        let connected = match settings(&url) {
            Ok(settings) => settings.connect(NoTls).await,
            Err(e) => Err(e),
        };
        match connected {
            Ok((client, mut connection)) => {
                delays.reset();
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                // The connection must be polled for the LISTEN to be sent.
                let pump = tokio::spawn(async move {
                    while let Some(message) =
                        std::future::poll_fn(|cx| connection.poll_message(cx)).await
                    {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                let _ = tx.send(n.payload().to_owned());
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                });
                if client.batch_execute("LISTEN jobpipe").await.is_ok() {
                    if let Some(listening) = listening.take() {
                        let _ = listening.send(());
                    }
                    // Anything may have happened while not listening.
                    let _ = events.send(QueueEvent::Queued);
                    while let Some(payload) = rx.recv().await {
                        if let Some(event) = parse_event(&payload) {
                            let _ = events.send(event);
                        }
                    }
                }
                pump.abort();
                tracing::warn!("queue notifications lost; listening again");
            }
            Err(e) => tracing::warn!("cannot listen for queue notifications: {}", describe(&e)),
        }
        tokio::time::sleep(delays.next().unwrap_or_default()).await;
    }
}

fn parse_event(payload: &str) -> Option<QueueEvent> {
    let (kind, id) = payload.split_once(':').unwrap_or((payload, ""));
    match kind {
        "queued" => Some(QueueEvent::Queued),
        "finished" => Some(QueueEvent::Finished(id.to_owned())),
        "cancelled" => Some(QueueEvent::Cancelled(id.to_owned())),
        "streamed" => Some(QueueEvent::Streamed(id.to_owned())),
        _ => None,
    }
}

async fn notify(tx: &Transaction<'_>, payload: String) -> Result<(), tokio_postgres::Error> {
    tx.execute("SELECT pg_notify('jobpipe', $1)", &[&payload])
        .await
        .map(drop)
}

impl PostgresQueue {
    /// Connects, applies pending migrations and starts listening.
    pub async fn open(url: &str) -> Result<PostgresQueue, QueueError> {
        let fail = |why: String| QueueError::Open {
            what: redact(url),
            why,
        };
        let mut client = connect(url).await.map_err(|e| fail(describe(&e)))?;
        super::postgres_schema::migrate(&mut client)
            .await
            .map_err(|e| fail(format!("schema migration failed: {}", describe(&e))))?;
        let version: i64 = client
            .query_one(
                "SELECT MAX(version)::BIGINT FROM jobpipe.schema_version",
                &[],
            )
            .await
            .map_err(|e| fail(describe(&e)))?
            .get(0);
        if version > super::postgres_schema::known() {
            return Err(fail(format!(
                "its schema version {version} is newer than this jobpipe knows; use a newer jobpipe"
            )));
        }
        let events = broadcast::channel(4096).0;
        let (listening, listens) = tokio::sync::oneshot::channel();
        tokio::spawn(listen(url.to_owned(), events.clone(), listening));
        // Events are only heard once LISTEN is in place.
        if tokio::time::timeout(Duration::from_secs(30), listens)
            .await
            .is_err()
        {
            return Err(fail("cannot LISTEN for queue notifications".into()));
        }
        Ok(PostgresQueue {
            url: url.to_owned(),
            client: Mutex::new(client),
            events,
        })
    }

    /// The connection, opened again if it was lost.
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Client>, QueueError> {
        let mut client = self.client.lock().await;
        if client.is_closed() {
            *client = connect(&self.url).await.map_err(db)?;
            tracing::info!("queue database connection opened again");
        }
        Ok(client)
    }
}

/// Writes a job's one final status and its webhook post, in `tx`.
async fn finalize(
    tx: &Transaction<'_>,
    id: &str,
    status: JobStatus,
    output: Option<Value>,
    error: Option<String>,
) -> Result<(), tokio_postgres::Error> {
    let sql = format!(
        "WITH done AS (
            UPDATE jobpipe.jobs SET status = $2, output = $3, error = $4, finished_at = $5,
                expires_at = $5 + retention_ms, lease_token = NULL, lease_expires_at = NULL
            WHERE id = $1 RETURNING id, webhook, {WEBHOOK_BODY} AS body)
         INSERT INTO jobpipe.webhooks (job_id, url, body, next_at, created_at)
         SELECT id, webhook, body, $5, $5 FROM done WHERE webhook IS NOT NULL"
    );
    tx.execute(&sql, &[&id, &status.as_str(), &output, &error, &now_ms()])
        .await?;
    notify(tx, format!("finished:{id}")).await
}

async fn requeue_or_fail(
    tx: &Transaction<'_>,
    id: &str,
    why: &str,
) -> Result<bool, tokio_postgres::Error> {
    let row = tx
        .query_one(
            "SELECT attempts, max_attempts FROM jobpipe.jobs WHERE id = $1",
            &[&id],
        )
        .await?;
    let (attempts, max): (i32, i32) = (row.get(0), row.get(1));
    if attempts >= max {
        let error = format!("{why} (attempt {attempts} of {max}; no attempts left)");
        finalize(tx, id, JobStatus::Failed, None, Some(error)).await?;
        return Ok(false);
    }
    let delay = (1000_i64 << (attempts.clamp(1, 7) - 1)).min(60_000);
    tx.execute(
        "UPDATE jobpipe.jobs SET status = 'IN_QUEUE', run_after = $2, lease_token = NULL,
            lease_expires_at = NULL, output = NULL WHERE id = $1",
        &[&id, &(now_ms() + delay)],
    )
    .await?;
    tx.execute("DELETE FROM jobpipe.stream WHERE job_id = $1", &[&id])
        .await?;
    tracing::info!(job_id = %id, "{why}; queued again (attempt {attempts} of {max} used)");
    notify(tx, "queued".into()).await?;
    Ok(true)
}

/// The status of `id`, locked for the rest of `tx`.
async fn locked_status(
    tx: &Transaction<'_>,
    id: &str,
) -> Result<Option<JobStatus>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "SELECT status FROM jobpipe.jobs WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?;
    Ok(row.and_then(|row| JobStatus::parse(row.get(0))))
}

async fn holds(tx: &Transaction<'_>, id: &str, token: &str) -> Result<bool, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "SELECT 1 FROM jobpipe.jobs WHERE id = $1 AND lease_token = $2 AND status = 'IN_PROGRESS' FOR UPDATE",
            &[&id, &token],
        )
        .await?;
    Ok(row.is_some())
}

#[async_trait]
impl Queue for PostgresQueue {
    fn subscribe(&self) -> broadcast::Receiver<QueueEvent> {
        self.events.subscribe()
    }

    async fn enqueue(&self, job: NewJob) -> Result<(), QueueError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let now = now_ms();
        let p = job.policy;
        let inserted = tx
            .execute(
                "INSERT INTO jobpipe.jobs (id, status, payload, webhook, execution_timeout_ms,
                    ttl_ms, max_attempts, retention_ms, created_at, queued_at, run_after)
                 VALUES ($1, 'IN_QUEUE', $2, $3, $4, $5, $6, $7, $8, $8, $8) ON CONFLICT DO NOTHING",
                &[
                    &job.id,
                    &job.payload,
                    &job.webhook,
                    &p.execution_timeout.map(duration_ms),
                    &duration_ms(p.ttl),
                    &(p.max_attempts as i32),
                    &duration_ms(p.retention),
                    &now,
                ],
            )
            .await
            .map_err(db)?;
        if inserted == 0 {
            return Err(QueueError::Duplicate(job.id));
        }
        notify(&tx, "queued".into()).await.map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn status(&self, id: &str) -> Result<Option<JobRecord>, QueueError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, status, output, error, attempts, worker_id, created_at, started_at, finished_at
                 FROM jobpipe.jobs WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|row| JobRecord {
            id: row.get(0),
            status: JobStatus::parse(row.get(1)).unwrap_or(JobStatus::Failed),
            output: row.get(2),
            error: row.get(3),
            attempts: row.get::<_, i32>(4).max(0) as u32,
            worker_id: row.get(5),
            created_at: row.get(6),
            started_at: row.get(7),
            finished_at: row.get(8),
        }))
    }

    async fn read_stream(&self, id: &str) -> Result<Option<(JobStatus, Vec<Value>)>, QueueError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let Some(status) = locked_status(&tx, id).await.map_err(db)? else {
            return Ok(None);
        };
        let rows = tx
            .query(
                "UPDATE jobpipe.stream SET read = true WHERE job_id = $1 AND NOT read RETURNING seq, output",
                &[&id],
            )
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let mut partials: Vec<(i32, Value)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        partials.sort_by_key(|(seq, _)| *seq);
        Ok(Some((
            status,
            partials.into_iter().map(|(_, v)| v).collect(),
        )))
    }

    async fn cancel(&self, id: &str) -> Result<Option<JobStatus>, QueueError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let Some(status) = locked_status(&tx, id).await.map_err(db)? else {
            return Ok(None);
        };
        if status.is_final() {
            return Ok(Some(status));
        }
        finalize(&tx, id, JobStatus::Cancelled, None, None)
            .await
            .map_err(db)?;
        if status == JobStatus::InProgress {
            notify(&tx, format!("cancelled:{id}")).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(Some(JobStatus::Cancelled))
    }

    async fn retry(&self, id: &str) -> Result<RetryOutcome, QueueError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let Some(status) = locked_status(&tx, id).await.map_err(db)? else {
            return Ok(RetryOutcome::NotFound);
        };
        if !matches!(status, JobStatus::Failed | JobStatus::TimedOut) {
            return Ok(RetryOutcome::NotRetryable(status));
        }
        tx.execute(
            "UPDATE jobpipe.jobs SET status = 'IN_QUEUE', attempts = 0, queued_at = $2, run_after = $2,
                started_at = NULL, finished_at = NULL, expires_at = NULL, worker_id = NULL,
                output = NULL, error = NULL WHERE id = $1",
            &[&id, &now_ms()],
        )
        .await
        .map_err(db)?;
        tx.execute("DELETE FROM jobpipe.stream WHERE job_id = $1", &[&id])
            .await
            .map_err(db)?;
        notify(&tx, "queued".into()).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(RetryOutcome::Requeued)
    }

    async fn purge(&self) -> Result<u64, QueueError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let removed = tx
            .execute("DELETE FROM jobpipe.jobs WHERE status = 'IN_QUEUE'", &[])
            .await
            .map_err(db)?;
        tx.execute(
            "DELETE FROM jobpipe.stream s WHERE NOT EXISTS (SELECT 1 FROM jobpipe.jobs j WHERE j.id = s.job_id)",
            &[],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(removed)
    }

    async fn health(&self) -> Result<Health, QueueError> {
        let client = self.client().await?;
        let mut health = Health::default();
        for row in client
            .query(
                "SELECT status, COUNT(*) FROM jobpipe.jobs GROUP BY status",
                &[],
            )
            .await
            .map_err(db)?
        {
            if let Some(status) = JobStatus::parse(row.get(0)) {
                health
                    .counts
                    .push((status, row.get::<_, i64>(1).max(0) as u64));
            }
        }
        let retried: i64 = client
            .query_one("SELECT COUNT(*) FROM jobpipe.jobs WHERE attempts > 1", &[])
            .await
            .map_err(db)?
            .get(0);
        health.retried = retried.max(0) as u64;
        let row = client
            .query_one(
                "SELECT COALESCE(SUM(GREATEST(capacity - busy, 0)), 0)::BIGINT, COALESCE(SUM(busy), 0)::BIGINT
                 FROM jobpipe.workers WHERE seen_at > $1",
                &[&(now_ms() - WORKER_GONE_MS)],
            )
            .await
            .map_err(db)?;
        health.idle = row.get::<_, i64>(0).max(0) as u64;
        health.running = row.get::<_, i64>(1).max(0) as u64;
        Ok(health)
    }

    async fn take(
        &self,
        worker: &str,
        count: usize,
        lease: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        let client = self.client().await?;
        let now = now_ms();
        let rows = client
            .query(
                "UPDATE jobpipe.jobs SET status = 'IN_PROGRESS', attempts = attempts + 1, worker_id = $2,
                    lease_token = md5(random()::text || clock_timestamp()::text || id),
                    lease_expires_at = $3, started_at = $1
                 WHERE id IN (
                    SELECT id FROM jobpipe.jobs WHERE status = 'IN_QUEUE' AND run_after <= $1
                        AND queued_at + ttl_ms > $1
                    ORDER BY queued_at, seq LIMIT $4 FOR UPDATE SKIP LOCKED)
                 RETURNING id, lease_token, payload, attempts, execution_timeout_ms, queued_at",
                &[&now, &worker, &(now + duration_ms(lease)), &(count as i64)],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|row| Lease {
                job_id: row.get(0),
                token: row.get(1),
                payload: row.get(2),
                attempt: row.get::<_, i32>(3).max(0) as u32,
                execution_timeout: row
                    .get::<_, Option<i64>>(4)
                    .map(|ms| Duration::from_millis(ms.max(0) as u64)),
                waited: Duration::from_millis((now - row.get::<_, i64>(5)).max(0) as u64),
            })
            .collect())
    }

    async fn renew(
        &self,
        leases: &[(String, String)],
        lease: Duration,
    ) -> Result<Vec<String>, QueueError> {
        let client = self.client().await?;
        let (ids, tokens): (Vec<String>, Vec<String>) = leases.iter().cloned().unzip();
        let rows = client
            .query(
                "UPDATE jobpipe.jobs j SET lease_expires_at = $3
                 FROM unnest($1::text[], $2::text[]) AS l(id, token)
                 WHERE j.id = l.id AND j.lease_token = l.token AND j.status = 'IN_PROGRESS'
                 RETURNING j.id",
                &[&ids, &tokens, &(now_ms() + duration_ms(lease))],
            )
            .await
            .map_err(db)?;
        let renewed: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(ids.into_iter().filter(|id| !renewed.contains(id)).collect())
    }

    async fn progress(&self, job_id: &str, token: &str, output: Value) -> Result<bool, QueueError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE jobpipe.jobs SET output = $3 WHERE id = $1 AND lease_token = $2 AND status = 'IN_PROGRESS'",
                &[&job_id, &token, &output],
            )
            .await
            .map_err(db)?;
        Ok(changed > 0)
    }

    async fn stream(&self, job_id: &str, token: &str, output: Value) -> Result<bool, QueueError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        if !holds(&tx, job_id, token).await.map_err(db)? {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO jobpipe.stream (job_id, seq, output)
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobpipe.stream WHERE job_id = $1), $2)",
            &[&job_id, &output],
        )
        .await
        .map_err(db)?;
        notify(&tx, format!("streamed:{job_id}"))
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn finish(&self, job_id: &str, token: &str, ending: Ending) -> Result<bool, QueueError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        if !holds(&tx, job_id, token).await.map_err(db)? {
            return Ok(false);
        }
        let id = job_id;
        match ending {
            Ending::Completed(output) => {
                let empty = output.is_null() || output.as_array().is_some_and(Vec::is_empty);
                let partials: Option<Value> = tx
                    .query_one(
                        "SELECT jsonb_agg(output ORDER BY seq) FROM jobpipe.stream WHERE job_id = $1",
                        &[&id],
                    )
                    .await
                    .map_err(db)?
                    .get(0);
                let output = match partials {
                    Some(list) if empty => list,
                    _ => output,
                };
                finalize(&tx, id, JobStatus::Completed, Some(output), None).await
            }
            Ending::Failed { error, output } => {
                finalize(&tx, id, JobStatus::Failed, output, Some(error)).await
            }
            Ending::TimedOut(error) => finalize(&tx, id, JobStatus::TimedOut, None, Some(error)).await,
            Ending::Retry(why) => requeue_or_fail(&tx, id, &why).await.map(drop),
        }
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn heartbeat(
        &self,
        worker: &str,
        capacity: usize,
        busy: usize,
    ) -> Result<(), QueueError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO jobpipe.workers (id, capacity, busy, seen_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET capacity = $2, busy = $3, seen_at = $4",
                &[&worker, &(capacity as i32), &(busy as i32), &now_ms()],
            )
            .await
            .map_err(db)
            .map(drop)
    }

    async fn sweep(&self) -> Result<Swept, QueueError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let now = now_ms();
        let mut swept = Swept::default();
        let lost = tx
            .query(
                "SELECT id FROM jobpipe.jobs WHERE status = 'IN_PROGRESS' AND lease_expires_at < $1
                 LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&now, &SWEEP_BATCH],
            )
            .await
            .map_err(db)?;
        for row in lost {
            let id: String = row.get(0);
            let why = "its worker stopped holding the job (lease expired)";
            if requeue_or_fail(&tx, &id, why).await.map_err(db)? {
                swept.requeued += 1;
            } else {
                swept.ended += 1;
            }
        }
        let expired = tx
            .query(
                "SELECT id, ttl_ms FROM jobpipe.jobs WHERE status = 'IN_QUEUE' AND queued_at + ttl_ms <= $1
                 LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&now, &SWEEP_BATCH],
            )
            .await
            .map_err(db)?;
        for row in expired {
            let (id, ttl): (String, i64) = (row.get(0), row.get(1));
            let error =
                format!("the job's ttl of {ttl} ms passed before it started; it did not run");
            finalize(&tx, &id, JobStatus::TimedOut, None, Some(error))
                .await
                .map_err(db)?;
            swept.ended += 1;
        }
        tx.execute(
            "DELETE FROM jobpipe.stream WHERE job_id IN
                (SELECT id FROM jobpipe.jobs WHERE expires_at <= $1)",
            &[&now],
        )
        .await
        .map_err(db)?;
        swept.deleted = tx
            .execute(
                "DELETE FROM jobpipe.jobs WHERE id IN
                    (SELECT id FROM jobpipe.jobs WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&now, &SWEEP_BATCH],
            )
            .await
            .map_err(db)?;
        tx.execute(
            "DELETE FROM jobpipe.workers WHERE seen_at < $1",
            &[&(now - WORKER_GONE_MS)],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(swept)
    }

    async fn webhooks_due(&self, limit: usize) -> Result<Vec<WebhookPost>, QueueError> {
        let client = self.client().await?;
        let now = now_ms();
        let rows = client
            .query(
                "UPDATE jobpipe.webhooks SET next_at = $1 + $2 WHERE id IN
                    (SELECT id FROM jobpipe.webhooks WHERE next_at <= $1 ORDER BY next_at LIMIT $3
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id, job_id, url, body, attempts, created_at",
                &[&now, &WEBHOOK_CLAIM_MS, &(limit as i64)],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|row| WebhookPost {
                id: row.get(0),
                job_id: row.get(1),
                url: row.get(2),
                body: row.get(3),
                attempts: row.get::<_, i32>(4).max(0) as u32,
                created_at: row.get(5),
            })
            .collect())
    }

    async fn webhook_done(&self, id: i64) -> Result<(), QueueError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM jobpipe.webhooks WHERE id = $1", &[&id])
            .await
            .map_err(db)
            .map(drop)
    }

    async fn webhook_later(&self, id: i64, at: SystemTime) -> Result<(), QueueError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE jobpipe.webhooks SET attempts = attempts + 1, next_at = $2 WHERE id = $1",
                &[&id, &to_ms(at)],
            )
            .await
            .map_err(db)
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_appear_in_messages() {
        assert_eq!(
            redact("postgres://jobs:s3cret@db.example:5432/q"),
            "postgres://jobs:***@db.example:5432/q"
        );
        assert_eq!(redact("postgres://db/q"), "postgres://db/q");
    }

    #[test]
    fn notifications_become_events() {
        assert_eq!(parse_event("queued"), Some(QueueEvent::Queued));
        assert_eq!(
            parse_event("finished:a:b"),
            Some(QueueEvent::Finished("a:b".into()))
        );
        assert_eq!(parse_event("other"), None);
    }
}
