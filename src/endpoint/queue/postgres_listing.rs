//! The PostgreSQL queue's job list and whole-job reads (see
//! [`super::listing`]).

use deadpool_postgres::Object;
use tokio_postgres::Row;

use super::listing::{Cursor, JobDetail, JobFilter, JobSummary, WorkerRow, WORKER_GONE_MS};
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
    Ok(rows
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
        })
        .collect())
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
