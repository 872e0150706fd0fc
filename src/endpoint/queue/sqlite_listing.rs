//! The SQLite queue's job list and whole-job reads (see
//! [`super::listing`]).

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::listing::{
    Cursor, Depth, Ended, JobDetail, JobFilter, JobSummary, WorkerRow, ENDED_BACKFILL_MS,
    ENDED_SETTLE_MS, PARTIALS_SHOWN, WORKER_GONE_MS,
};
use super::sqlite_attempts;
use super::{stored_json, stored_status, JobRecord, JobStatus};

/// A status column read back, or the row's error.
pub(super) fn status_of(text: &str) -> rusqlite::Result<JobStatus> {
    stored_status(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

/// A page of `endpoint`'s jobs, newest first.
pub(super) fn list(
    conn: &Connection,
    endpoint: &str,
    filter: &JobFilter,
    limit: usize,
) -> rusqlite::Result<Vec<JobSummary>> {
    let after = filter.after.clone().unwrap_or_else(Cursor::start);
    let mut stmt = conn.prepare_cached(
        "SELECT id, status, created_at, started_at, finished_at, attempts, priority, worker_id, error,
                tenant
           FROM jobs INDEXED BY jobs_list
          WHERE endpoint = ?1 AND (created_at, id) < (?2, ?3) AND created_at >= ?4
            AND (?5 IS NULL OR status = ?5) AND (?7 IS NULL OR tenant = ?7)
          ORDER BY created_at DESC, id DESC LIMIT ?6",
    )?;
    let rows = stmt.query_map(
        params![
            endpoint,
            after.created_at,
            after.id,
            filter.since.unwrap_or(i64::MIN),
            filter.status.map(|s| s.as_str()),
            limit as i64,
            filter.tenant
        ],
        summary,
    )?;
    rows.collect()
}

fn summary(row: &Row) -> rusqlite::Result<JobSummary> {
    Ok(JobSummary {
        id: row.get(0)?,
        status: status_of(&row.get::<_, String>(1)?)?,
        created_at: row.get(2)?,
        started_at: row.get(3)?,
        finished_at: row.get(4)?,
        attempts: row.get(5)?,
        priority: row.get(6)?,
        worker_id: row.get(7)?,
        error: row.get(8)?,
        tenant: row.get(9)?,
    })
}

/// Everything kept of job `id`, its attempts too (read on the one
/// connection, so with the row as it stands).
pub(super) fn detail(conn: &Connection, id: &str) -> rusqlite::Result<Option<JobDetail>> {
    super::sqlite_cached::cached_row(
        conn,
        "SELECT id, endpoint, status, output, error, attempts, worker_id, created_at, started_at,
                finished_at, payload, webhook, priority, max_attempts, queued_at,
                (SELECT COUNT(*) FROM webhooks WHERE job_id = jobs.id), tenant
           FROM jobs WHERE id = ?1",
        [id],
        |row| {
            Ok(JobDetail {
                record: JobRecord {
                    id: row.get(0)?,
                    endpoint: row.get(1)?,
                    status: status_of(&row.get::<_, String>(2)?)?,
                    output: row.get::<_, Option<String>>(3)?.map(stored_json),
                    error: row.get(4)?,
                    attempts: row.get(5)?,
                    worker_id: row.get(6)?,
                    created_at: row.get(7)?,
                    started_at: row.get(8)?,
                    finished_at: row.get(9)?,
                },
                payload: stored_json(row.get(10)?),
                webhook: row.get(11)?,
                priority: row.get(12)?,
                max_attempts: row.get(13)?,
                queued_at: row.get(14)?,
                webhooks_pending: row.get::<_, i64>(15)?.max(0) as u64,
                tenant: row.get(16)?,
                history: Vec::new(),
                partials: Vec::new(),
                partials_total: 0,
            })
        },
    )
    .optional()?
    .map(|mut job| {
        job.history = sqlite_attempts::history(conn, id)?;
        let mut partials = conn
            .prepare_cached("SELECT output FROM stream WHERE job_id = ?1 ORDER BY seq LIMIT ?2")?;
        job.partials = partials
            .query_map(params![id, PARTIALS_SHOWN as i64], |row| {
                Ok(stored_json(row.get(0)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        job.partials_total = conn
            .query_row(
                "SELECT COUNT(*) FROM stream WHERE job_id = ?1",
                [id],
                |row| row.get::<_, i64>(0),
            )?
            .max(0) as u64;
        Ok(job)
    })
    .transpose()
}

/// The workers that serve `endpoint`, newest first; lost ones are those
/// silent since before `now - WORKER_GONE_MS`.
pub(super) fn workers(
    conn: &Connection,
    endpoint: &str,
    now: i64,
) -> rusqlite::Result<Vec<WorkerRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, hostname, endpoints, version, capacity, busy, started_at, seen_at FROM workers
          WHERE ',' || endpoints || ',' LIKE '%,' || ?1 || ',%'
          ORDER BY started_at DESC, id",
    )?;
    let rows = stmt.query_map([endpoint], |row| {
        let seen_at: i64 = row.get(7)?;
        Ok(WorkerRow {
            id: row.get(0)?,
            hostname: row.get(1)?,
            endpoints: row
                .get::<_, String>(2)?
                .split(',')
                .map(str::to_owned)
                .collect(),
            version: row.get(3)?,
            slots: row.get(4)?,
            busy: row.get(5)?,
            started_at: row.get(6)?,
            seen_at,
            lost: seen_at <= now - WORKER_GONE_MS,
            current_jobs: Vec::new(),
        })
    })?;
    let mut workers = rows.collect::<rusqlite::Result<Vec<WorkerRow>>>()?;
    // The leased jobs are the ones in progress, read from their own index
    // (jobs_leases; `+endpoint` keeps the planner off the endpoint's whole
    // history in jobs_list).
    let mut held = conn.prepare_cached(
        "SELECT worker_id, id FROM jobs
          WHERE lease_expires_at IS NOT NULL AND +endpoint = ?1 ORDER BY started_at",
    )?;
    let held = held.query_map([endpoint], |row| {
        Ok((row.get::<_, Option<String>>(0)?, row.get::<_, String>(1)?))
    })?;
    for row in held {
        let (worker, job) = row?;
        if let Some(w) = workers.iter_mut().find(|w| Some(&w.id) == worker.as_ref()) {
            w.current_jobs.push(job);
        }
    }
    Ok(workers)
}

/// `endpoint`'s jobs waiting (index jobs_take) and leased (jobs_leases).
pub(super) fn depth(conn: &Connection, endpoint: &str, now: i64) -> rusqlite::Result<Depth> {
    let (waiting, running, oldest): (i64, i64, Option<i64>) = super::sqlite_cached::cached_row(
        conn,
        "SELECT (SELECT COUNT(*) FROM jobs WHERE endpoint = ?1 AND status = 'IN_QUEUE'),
                (SELECT COUNT(*) FROM jobs WHERE lease_expires_at IS NOT NULL AND +endpoint = ?1),
                (SELECT MIN(queued_at) FROM jobs
                  WHERE endpoint = ?1 AND status = 'IN_QUEUE' AND run_after <= ?2)",
        params![endpoint, now],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    Ok(Depth {
        waiting: waiting.max(0) as u64,
        running: running.max(0) as u64,
        oldest_wait_ms: oldest.map(|at| (now - at).max(0)),
    })
}

/// Jobs that ended after `after` and before `now` less the settling time,
/// oldest first (index jobs_finished).
pub(super) fn ended_since(
    conn: &Connection,
    after: Option<i64>,
    now: i64,
    limit: usize,
) -> rusqlite::Result<(Vec<Ended>, i64)> {
    let after = after.unwrap_or(now - ENDED_BACKFILL_MS);
    let upto = now - ENDED_SETTLE_MS;
    let mut stmt = conn.prepare_cached(
        "SELECT endpoint, status, finished_at, started_at - MAX(queued_at, run_after),
                finished_at - started_at
           FROM jobs WHERE finished_at > ?1 AND finished_at <= ?2
          ORDER BY finished_at LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![after, upto, limit as i64], |row| {
        Ok(Ended {
            endpoint: row.get(0)?,
            status: status_of(&row.get::<_, String>(1)?)?,
            finished_at: row.get(2)?,
            wait_ms: row.get::<_, Option<i64>>(3)?.map(|ms| ms.max(0)),
            run_ms: row.get::<_, Option<i64>>(4)?.map(|ms| ms.max(0)),
        })
    })?;
    let ended = rows.collect::<rusqlite::Result<Vec<Ended>>>()?;
    let read_to = match ended.last() {
        Some(last) if ended.len() == limit => last.finished_at,
        _ => upto.max(after),
    };
    Ok((ended, read_to))
}

/// The endpoints with jobs waiting or live workers, sorted, at most
/// `limit`.
pub(super) fn active_endpoints(
    conn: &Connection,
    now: i64,
    limit: usize,
) -> rusqlite::Result<Vec<String>> {
    let mut names = std::collections::BTreeSet::new();
    let mut waiting =
        conn.prepare_cached("SELECT DISTINCT endpoint FROM jobs WHERE status = 'IN_QUEUE'")?;
    for name in waiting.query_map([], |row| row.get::<_, String>(0))? {
        names.insert(name?);
    }
    let mut workers = conn.prepare_cached("SELECT endpoints FROM workers WHERE seen_at > ?1")?;
    for list in workers.query_map([now - WORKER_GONE_MS], |row| row.get::<_, String>(0))? {
        names.extend(list?.split(',').map(str::to_owned));
    }
    Ok(names.into_iter().take(limit).collect())
}
