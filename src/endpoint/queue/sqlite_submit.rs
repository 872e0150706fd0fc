//! Submissions to the SQLite queue: a job's row, its fair rank, and the
//! refusal of a repeated id or `Idempotency-Key`.
//!
//! Every acknowledged job must survive a power cut, so a submission is a
//! durable write: the writer ([`super::sqlite_writer`]) commits it with
//! `fsync`, together with every write that arrived meanwhile (other
//! submissions among them), and answers its caller only then. One fsync
//! per `/run` would cap the endpoint at the disk's fsync rate; a group of
//! submissions shares one. If the commit fails, every caller of the group
//! gets the error, and none is told its job was queued.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension, Transaction};

use super::{duration_ms, now_ms, refusal, NewJob, QueueError};
use crate::json::Json;

/// Inserts `job` in `tx`: Ok when it is new, else why not (its id, or its
/// `Idempotency-Key`, is already present).
pub(super) fn insert(tx: &Transaction, job: &NewJob<Json>) -> rusqlite::Result<Inserted> {
    let mut inserted = insert_all(tx, std::slice::from_ref(job))?;
    Ok(inserted.pop().expect("one outcome per job"))
}

/// Inserts `jobs` in `tx`; for each, whether it was new or why not.
fn insert_all(tx: &Transaction, jobs: &[NewJob<Json>]) -> rusqlite::Result<Vec<Inserted>> {
    let mut inserted = Vec::with_capacity(jobs.len());
    let ranks = fair_ranks(tx, jobs)?;
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
    Ok(inserted)
}

/// The fair ranks of `jobs` (see [`super::fairness`]), from the head of
/// each endpoint's queue and each tenant's last waiting job. (`+?1`: see
/// `next_jobs` in sqlite.rs; a bare parameter would make SQLite plan
/// these statements again at every run.)
fn fair_ranks(tx: &Transaction, jobs: &[NewJob<Json>]) -> rusqlite::Result<Vec<i64>> {
    let mut heads = HashMap::new();
    let mut highest = HashMap::new();
    for job in jobs {
        let tenant = job.tenant.clone().unwrap_or_default();
        if !heads.contains_key(&job.endpoint) {
            let head: Option<i64> = tx
                .prepare_cached(
                    "SELECT fair_rank FROM jobs WHERE endpoint = +?1 AND status = 'IN_QUEUE'
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
                      WHERE endpoint = +?1 AND coalesce(tenant, '') = +?2 AND status = 'IN_QUEUE'",
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
pub(super) type Inserted = Result<(), QueueError>;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
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
