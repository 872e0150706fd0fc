//! The PostgreSQL queue's job list and whole-job reads (see
//! [`super::listing`]).

use deadpool_postgres::Object;
use tokio_postgres::Row;

use super::listing::{
    Cursor, Depth, Ended, JobDetail, JobFilter, JobSummary, WorkerRow, ENDED_BACKFILL_MS,
    ENDED_SETTLE_MS, PARTIALS_SHOWN, WORKER_GONE_MS,
};
use super::postgres_attempts;
use super::postgres_ops::{status_of, Fault};
use super::postgres_typed::p;
use super::{stored_json, JobRecord};

/// A page of `endpoint`'s jobs, newest first.
pub(super) async fn list(
    client: &Object,
    endpoint: &str,
    filter: &JobFilter,
    limit: usize,
) -> Result<Vec<JobSummary>, Fault> {
    let after = filter.after.clone().unwrap_or_else(Cursor::start);
    let status = filter.status.map(|s| s.as_str().to_owned());
    let since = filter.since.unwrap_or(i64::MIN);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query_typed(
            "SELECT id, status, created_at, started_at, finished_at, attempts, priority, worker_id,
                    error, tenant
               FROM jobpipe.jobs
              WHERE endpoint = $1 AND (created_at, id) < ($2, $3) AND created_at >= $4
                AND ($5::text IS NULL OR status = $5) AND ($7::text IS NULL OR tenant = $7)
              ORDER BY created_at DESC, id DESC LIMIT $6",
            &[
                p(&endpoint),
                p(&after.created_at),
                p(&after.id),
                p(&since),
                p(&status),
                p(&limit),
                p(&filter.tenant),
            ],
        )
        .await?;
    rows.iter().map(summary).collect()
}

fn summary(row: &Row) -> Result<JobSummary, Fault> {
    Ok(JobSummary {
        id: row.get(0),
        status: status_of(row.get(1))?,
        created_at: row.get(2),
        started_at: row.get(3),
        finished_at: row.get(4),
        attempts: u32::try_from(row.get::<_, i32>(5)).unwrap_or(0),
        priority: row.get(6),
        worker_id: row.get(7),
        error: row.get(8),
        tenant: row.get(9),
    })
}

/// Everything kept of job `id`.
pub(super) async fn detail(client: &Object, id: &str) -> Result<Option<JobDetail>, Fault> {
    let Some(row) = client
        .query_typed_opt(
            "SELECT id, endpoint, status, output, error, attempts, worker_id, created_at,
                    started_at, finished_at, payload, webhook, priority, max_attempts, queued_at,
                    (SELECT COUNT(*) FROM jobpipe.webhooks AS w WHERE w.job_id = j.id), tenant
               FROM jobpipe.jobs AS j WHERE id = $1",
            &[p(&id)],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(JobDetail {
        record: JobRecord {
            id: row.get(0),
            endpoint: row.get(1),
            status: status_of(row.get(2))?,
            output: row.get::<_, Option<String>>(3).map(stored_json),
            error: row.get(4),
            attempts: u32::try_from(row.get::<_, i32>(5)).unwrap_or(0),
            worker_id: row.get(6),
            created_at: row.get(7),
            started_at: row.get(8),
            finished_at: row.get(9),
        },
        payload: stored_json(row.get(10)),
        webhook: row.get(11),
        priority: row.get(12),
        max_attempts: u32::try_from(row.get::<_, i32>(13)).unwrap_or(0),
        queued_at: row.get(14),
        webhooks_pending: u64::try_from(row.get::<_, i64>(15)).unwrap_or(0),
        tenant: row.get(16),
        history: postgres_attempts::history(client, id).await?,
        partials: client
            .query_typed(
                "SELECT output FROM jobpipe.stream WHERE job_id = $1 ORDER BY seq LIMIT $2",
                &[p(&id), p(&(PARTIALS_SHOWN as i64))],
            )
            .await?
            .iter()
            .map(|row| stored_json(row.get(0)))
            .collect(),
        partials_total: u64::try_from(
            client
                .query_typed_one(
                    "SELECT COUNT(*) FROM jobpipe.stream WHERE job_id = $1",
                    &[p(&id)],
                )
                .await?
                .get::<_, i64>(0),
        )
        .unwrap_or(0),
    }))
}

/// The workers that serve `endpoint`, newest first; lost ones are those
/// silent for `WORKER_GONE_MS` by the database's clock.
pub(super) async fn workers(client: &Object, endpoint: &str) -> Result<Vec<WorkerRow>, Fault> {
    let rows = client
        .query_typed(
            "SELECT id, hostname, endpoints, version, capacity, busy, started_at, seen_at,
                    seen_at <= jobpipe.now_ms() - $2
               FROM jobpipe.workers WHERE $1 = ANY (endpoints)
              ORDER BY started_at DESC, id",
            &[p(&endpoint), p(&WORKER_GONE_MS)],
        )
        .await?;
    let mut workers = rows
        .iter()
        .map(|row| WorkerRow {
            id: row.get(0),
            hostname: row.get(1),
            endpoints: row.get(2),
            version: row.get(3),
            slots: u32::try_from(row.get::<_, i32>(4)).unwrap_or(0),
            busy: u32::try_from(row.get::<_, i32>(5)).unwrap_or(0),
            started_at: row.get(6),
            seen_at: row.get(7),
            lost: row.get(8),
            current_jobs: Vec::new(),
        })
        .collect::<Vec<_>>();
    // The jobs in progress (index jobs_leases).
    let held = client
        .query_typed(
            "SELECT worker_id, id FROM jobpipe.jobs
              WHERE status = 'IN_PROGRESS' AND endpoint = $1 ORDER BY started_at",
            &[p(&endpoint)],
        )
        .await?;
    for row in &held {
        let worker: Option<String> = row.get(0);
        if let Some(w) = workers.iter_mut().find(|w| Some(&w.id) == worker.as_ref()) {
            w.current_jobs.push(row.get(1));
        }
    }
    Ok(workers)
}

/// `endpoint`'s jobs waiting (index jobs_take) and in progress
/// (jobs_leases).
pub(super) async fn depth(client: &Object, endpoint: &str) -> Result<Depth, Fault> {
    let row = client
        .query_typed_one(
            "SELECT (SELECT COUNT(*) FROM jobpipe.jobs WHERE endpoint = $1 AND status = 'IN_QUEUE'),
                    (SELECT COUNT(*) FROM jobpipe.jobs
                      WHERE status = 'IN_PROGRESS' AND endpoint = $1),
                    (SELECT jobpipe.now_ms() - MIN(queued_at) FROM jobpipe.jobs
                      WHERE endpoint = $1 AND status = 'IN_QUEUE' AND run_after <= jobpipe.now_ms())",
            &[p(&endpoint)],
        )
        .await?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(Depth {
        waiting: count(row.get(0)),
        running: count(row.get(1)),
        oldest_wait_ms: row.get::<_, Option<i64>>(2).map(|ms| ms.max(0)),
    })
}

/// Jobs that ended after `after` and before the database's now less the
/// settling time, oldest first (index jobs_finished).
pub(super) async fn ended_since(
    client: &Object,
    after: Option<i64>,
    limit: usize,
) -> Result<(Vec<Ended>, i64), Fault> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let bounds = client
        .query_typed_one(
            "SELECT coalesce($1, jobpipe.now_ms() - $2), jobpipe.now_ms() - $3",
            &[p(&after), p(&ENDED_BACKFILL_MS), p(&ENDED_SETTLE_MS)],
        )
        .await?;
    let (after, upto): (i64, i64) = (bounds.get(0), bounds.get(1));
    let rows = client
        .query_typed(
            "SELECT endpoint, status, finished_at, started_at - greatest(queued_at, run_after),
                    finished_at - started_at
               FROM jobpipe.jobs WHERE finished_at > $1 AND finished_at <= $2
              ORDER BY finished_at LIMIT $3",
            &[p(&after), p(&upto), p(&limit)],
        )
        .await?;
    let ended = rows
        .iter()
        .map(|row| {
            Ok(Ended {
                endpoint: row.get(0),
                status: status_of(row.get(1))?,
                finished_at: row.get(2),
                wait_ms: row.get::<_, Option<i64>>(3).map(|ms| ms.max(0)),
                run_ms: row.get::<_, Option<i64>>(4).map(|ms| ms.max(0)),
            })
        })
        .collect::<Result<Vec<Ended>, Fault>>()?;
    let read_to = match ended.last() {
        Some(last) if i64::try_from(ended.len()).unwrap_or(0) == limit => last.finished_at,
        _ => upto.max(after),
    };
    Ok((ended, read_to))
}

/// The endpoints with jobs waiting or live workers, sorted, at most
/// `limit`.
pub(super) async fn active_endpoints(client: &Object, limit: usize) -> Result<Vec<String>, Fault> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query_typed(
            "SELECT endpoint FROM jobpipe.jobs WHERE status = 'IN_QUEUE'
             UNION
             SELECT unnest(endpoints) FROM jobpipe.workers WHERE seen_at > jobpipe.now_ms() - $1
             ORDER BY 1 LIMIT $2",
            &[p(&WORKER_GONE_MS), p(&limit)],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
