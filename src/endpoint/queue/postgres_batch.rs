//! A group's submissions and results as one statement each: many jobs
//! per statement as well as per commit. Each statement costs the server a
//! parse, a plan and an executor start whatever the number of rows, so a
//! group of 64 submissions is one `INSERT … SELECT FROM unnest(…)`, and
//! the usual ends of a group's jobs (an output, a handler's error, a
//! timeout) one `UPDATE … FROM unnest(…)` that checks each job's lease
//! token as it writes, and records each job's attempt in its history: a
//! stale token refuses only its own row.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Transaction;

use super::attempts::{bounded, Failure, RetryOn};
use super::postgres_fair::fair_ranks;
use super::postgres_ops::{running_cap, Events, Fault};
use super::postgres_typed::{p, query, Statements, Typed};
use super::{duration_ms, refusal, Ending, JobStatus, NewJob, QueueError, QueueEvent};
use crate::json::Json;

/// Inserts `jobs` in one statement; for each, in order, whether it was
/// queued or why not (its id or `Idempotency-Key` exists).
pub(super) async fn enqueue_many(
    tx: &Transaction<'_>,
    how: Statements,
    jobs: &[&NewJob<Json>],
    events: &mut Events,
) -> Result<Vec<Result<(), QueueError>>, Fault> {
    let sql = "INSERT INTO jobpipe.jobs (id, status, payload, webhook, execution_timeout_ms,
                ttl_ms, max_attempts, retention_ms, created_at, queued_at, run_after,
                stall_timeout_ms, priority, idempotency_key, request_hash, endpoint, tenant,
                fair_rank, retry_on, retry_backoff_ms, retry_max_backoff_ms, max_running, awaited)
            SELECT u.id, 'IN_QUEUE', u.payload, u.webhook, u.execution_timeout_ms, u.ttl_ms,
                   u.max_attempts, u.retention_ms, now.t, now.t + u.delay_ms, now.t + u.delay_ms,
                   u.stall_timeout_ms, u.priority, u.idempotency_key, u.request_hash, u.endpoint,
                   u.tenant, u.fair_rank, u.retry_on, u.retry_backoff_ms, u.retry_max_backoff_ms,
                   u.max_running, u.awaited
              FROM (SELECT jobpipe.now_ms() AS t) AS now,
                   unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int4[],
                          $7::int8[], $8::int8[], $9::int8[], $10::int4[], $11::text[], $12::text[],
                          $13::text[], $14::text[], $15::int8[], $16::int8[], $17::int8[],
                          $18::int8[], $19::int4[], $20::bool[])
                   AS u (id, payload, webhook, execution_timeout_ms, ttl_ms, max_attempts,
                         retention_ms, stall_timeout_ms, delay_ms, priority, idempotency_key,
                         request_hash, endpoint, tenant, fair_rank, retry_on, retry_backoff_ms,
                         retry_max_backoff_ms, max_running, awaited)
            ON CONFLICT DO NOTHING
            RETURNING id";
    let column = |f: &dyn Fn(&NewJob<Json>) -> Option<i64>| -> Vec<Option<i64>> {
        jobs.iter().map(|job| f(job)).collect()
    };
    let ids: Vec<&str> = jobs.iter().map(|job| job.id.as_str()).collect();
    let payloads: Vec<String> = jobs
        .iter()
        .map(|job| job.payload.text().into_owned())
        .collect();
    let webhooks: Vec<Option<&str>> = jobs.iter().map(|job| job.webhook.as_deref()).collect();
    let execution = column(&|job| job.policy.execution_timeout.map(duration_ms));
    let ttl = column(&|job| Some(duration_ms(job.policy.ttl)));
    let attempts: Vec<i32> = jobs
        .iter()
        .map(|job| i32::try_from(job.policy.max_attempts).unwrap_or(i32::MAX))
        .collect();
    let retention = column(&|job| Some(duration_ms(job.policy.retention)));
    let stall = column(&|job| job.policy.stall_timeout.map(duration_ms));
    let delay = column(&|job| Some(duration_ms(job.policy.delay)));
    let priority: Vec<i32> = jobs.iter().map(|job| job.policy.priority).collect();
    let keys: Vec<Option<&str>> = jobs
        .iter()
        .map(|job| job.idempotency.as_ref().map(|i| i.key.as_str()))
        .collect();
    let hashes: Vec<Option<&str>> = jobs
        .iter()
        .map(|job| job.idempotency.as_ref().map(|i| i.body_hash.as_str()))
        .collect();
    let endpoints: Vec<&str> = jobs.iter().map(|job| job.endpoint.as_str()).collect();
    let tenants: Vec<Option<&str>> = jobs.iter().map(|job| job.tenant.as_deref()).collect();
    let ranks = fair_ranks(tx, how, jobs).await?;
    let retry_on = column(&|job| Some(job.policy.retry.on.bits()));
    let backoff = column(&|job| Some(duration_ms(job.policy.retry.backoff)));
    let max_backoff = column(&|job| Some(duration_ms(job.policy.retry.max_backoff)));
    let max_running: Vec<Option<i32>> = jobs.iter().map(|job| running_cap(job)).collect();
    let awaited: Vec<bool> = jobs.iter().map(|job| job.awaited).collect();
    let inserted: HashSet<String> = query(
        tx,
        how,
        sql,
        &[
            p(&ids),
            p(&payloads),
            p(&webhooks),
            p(&execution),
            p(&ttl),
            p(&attempts),
            p(&retention),
            p(&stall),
            p(&delay),
            p(&priority),
            p(&keys),
            p(&hashes),
            p(&endpoints),
            p(&tenants),
            p(&ranks),
            p(&retry_on),
            p(&backoff),
            p(&max_backoff),
            p(&max_running),
            p(&awaited),
        ],
    )
    .await?
    .iter()
    .map(|row| row.get(0))
    .collect();
    if !inserted.is_empty() {
        events.push(QueueEvent::Queued);
    }
    // The refused ones: by their key's job, when they have a key. A job
    // whose id was inserted can still be the refused second of a pair
    // sharing that id, so a job is judged new only once.
    let mut first = HashSet::with_capacity(jobs.len());
    let new: Vec<bool> = jobs
        .iter()
        .map(|job| inserted.contains(&job.id) && first.insert(job.id.as_str()))
        .collect();
    let asked: Vec<&str> = jobs
        .iter()
        .zip(&new)
        .filter(|(_, new)| !**new)
        .filter_map(|(job, _)| job.idempotency.as_ref().map(|i| i.key.as_str()))
        .collect();
    // By tenant and key: a key is unique per tenant.
    let existing: HashMap<(String, String), (String, String)> = if asked.is_empty() {
        HashMap::new()
    } else {
        tx.query_typed(
            "SELECT coalesce(tenant, ''), idempotency_key, id, request_hash FROM jobpipe.jobs
              WHERE idempotency_key = ANY($1)",
            &[p(&asked)],
        )
        .await?
        .iter()
        .map(|row| ((row.get(0), row.get(1)), (row.get(2), row.get(3))))
        .collect()
    };
    Ok(jobs
        .iter()
        .zip(new)
        .map(|(job, new)| {
            if new {
                return Ok(());
            }
            let found = job
                .idempotency
                .as_ref()
                .and_then(|i| {
                    let tenant = job.tenant.clone().unwrap_or_default();
                    existing.get(&(tenant, i.key.clone()))
                })
                .cloned();
            Err(refusal(job, found))
        })
        .collect())
}

/// A job's usual end, which one statement writes: an output, or a
/// handler's error or a timeout that the job's policy does not retry.
#[derive(Clone)]
pub(super) struct PlainEnd<'a> {
    pub id: &'a str,
    pub token: &'a str,
    pub status: JobStatus,
    pub output: Option<&'a Json>,
    pub error: Option<&'a str>,
    /// How the attempt failed, if it did.
    pub failure: Option<Failure>,
}

impl<'a> PlainEnd<'a> {
    /// The end `ending` makes, if one statement may write it (not a
    /// streamed job's, whose output is its partials, nor a lost attempt,
    /// which is retried by default).
    pub(super) fn of(id: &'a str, token: &'a str, ending: &'a Ending<Json>) -> Option<Self> {
        let (status, output, error, failure) = match ending {
            Ending::Completed(output) if !super::is_empty_output(output) => {
                (JobStatus::Completed, Some(output), None, None)
            }
            Ending::Failed { error, output } => (
                JobStatus::Failed,
                output.as_ref(),
                Some(error),
                Some(Failure::Error),
            ),
            Ending::TimedOut(error) => (
                JobStatus::TimedOut,
                None,
                Some(error),
                Some(Failure::Timeout),
            ),
            _ => return None,
        };
        Some(PlainEnd {
            id,
            token,
            status,
            output,
            error: error.map(String::as_str),
            failure,
        })
    }

    /// What the attempt's history says of it.
    fn outcome(&self) -> &'static str {
        self.failure.map_or("completed", Failure::as_str)
    }
}

/// Writes `ends` in one statement, each under its lease token, recording
/// each attempt in the job's history and queueing the webhooks of those
/// jobs that have one; for each, in order, whether it was written. Being
/// one statement, it needs no transaction of its own: a lone end is one
/// round trip. A
/// failure the job's policy retries is not written here (nor is an end
/// whose lease is gone): [`super::postgres_ops::finish_in`] tells which,
/// and writes the first.
pub(super) async fn finish_many(
    client: &impl Typed,
    how: Statements,
    ends: &[PlainEnd<'_>],
    events: &mut Events,
) -> Result<Vec<bool>, Fault> {
    // `retried` is the failure's bit of `retry_on` (0 for an output): a
    // job whose policy retries the failure is left alone.
    let sql = r#"WITH ended AS (
                 UPDATE jobpipe.jobs AS j
                    SET status = u.status, output = u.output, error = u.error,
                        finished_at = now.t, expires_at = now.t + j.retention_ms,
                        lease_token = NULL, lease_expires_at = NULL
                   FROM (SELECT jobpipe.now_ms() AS t) AS now,
                        unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                               $6::text[], $7::text[], $8::int8[])
                        AS u (id, token, status, output, error, outcome, detail, retried)
                  WHERE j.id = u.id AND j.lease_token = u.token AND j.status = 'IN_PROGRESS'
                    AND COALESCE(j.retry_on, $9) & u.retried = 0
              RETURNING j.id, j.webhook, j.finished_at, j.attempts, j.worker_id, j.started_at,
                        u.outcome, u.detail, j.awaited,
                        -- The body `super::webhook_body` writes, for a job with a webhook.
                        CASE WHEN j.webhook IS NOT NULL THEN
                          '{' || concat_ws(',', '"error":' || to_json(u.error)::text,
                                                '"id":' || to_json(j.id)::text,
                                                '"output":' || u.output,
                                                '"status":' || to_json(u.status)::text) || '}'
                        END AS hook_body),
               recorded AS (
                 INSERT INTO jobpipe.attempts
                        (job_id, attempt, worker_id, started_at, ended_at, outcome, detail)
                 SELECT id, attempts, worker_id, started_at, finished_at, outcome, detail
                   FROM ended
                 ON CONFLICT (job_id, attempt) DO NOTHING),
               hooked AS (
                 INSERT INTO jobpipe.webhooks (job_id, url, body, next_at, created_at)
                 SELECT id, webhook, hook_body, finished_at, finished_at
                   FROM ended WHERE webhook IS NOT NULL)
            SELECT id, webhook IS NOT NULL, awaited FROM ended"#;
    let ids: Vec<&str> = ends.iter().map(|end| end.id).collect();
    let tokens: Vec<&str> = ends.iter().map(|end| end.token).collect();
    let statuses: Vec<&str> = ends.iter().map(|end| end.status.as_str()).collect();
    let outputs: Vec<Option<String>> = ends
        .iter()
        .map(|end| end.output.map(|output| output.text().into_owned()))
        .collect();
    let errors: Vec<Option<&str>> = ends.iter().map(|end| end.error).collect();
    let outcomes: Vec<&str> = ends.iter().map(PlainEnd::outcome).collect();
    let details: Vec<Option<String>> = ends.iter().map(|end| end.error.map(bounded)).collect();
    let retried: Vec<i64> = ends
        .iter()
        .map(|end| end.failure.map_or(0, |f| RetryOn::of([f]).bits()))
        .collect();
    let rows = query(
        client,
        how,
        sql,
        &[
            p(&ids),
            p(&tokens),
            p(&statuses),
            p(&outputs),
            p(&errors),
            p(&outcomes),
            p(&details),
            p(&retried),
            p(&RetryOn::DEFAULT.bits()),
        ],
    )
    .await?;
    let mut written = HashSet::with_capacity(rows.len());
    let mut hooked = false;
    for row in &rows {
        let id: String = row.get(0);
        hooked |= row.get::<_, bool>(1);
        if row.get::<_, bool>(2) {
            events.push(QueueEvent::Finished(id.clone()));
        }
        written.insert(id);
    }
    if hooked {
        events.push(QueueEvent::WebhookDue);
    }
    Ok(ends.iter().map(|end| written.contains(end.id)).collect())
}
