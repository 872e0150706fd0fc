//! The SQLite queue's job list and whole-job reads (see
//! [`super::listing`]).

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::listing::{Cursor, JobDetail, JobFilter, JobSummary};
use super::sqlite::status_of;
use super::sqlite_attempts;
use super::{stored_json, JobRecord};

/// A page of `endpoint`'s jobs, newest first.
pub(super) fn list(
    conn: &Connection,
    endpoint: &str,
    filter: &JobFilter,
    limit: usize,
) -> rusqlite::Result<Vec<JobSummary>> {
    let after = filter.after.clone().unwrap_or_else(Cursor::start);
    let mut stmt = conn.prepare_cached(
        "SELECT id, status, created_at, started_at, finished_at, attempts, priority, worker_id, error
           FROM jobs INDEXED BY jobs_list
          WHERE endpoint = ?1 AND (created_at, id) < (?2, ?3) AND created_at >= ?4
            AND (?5 IS NULL OR status = ?5)
          ORDER BY created_at DESC, id DESC LIMIT ?6",
    )?;
    let rows = stmt.query_map(
        params![
            endpoint,
            after.created_at,
            after.id,
            filter.since.unwrap_or(i64::MIN),
            filter.status.map(|s| s.as_str()),
            limit as i64
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
    })
}

/// Everything kept of job `id`, its attempts too (read on the one
/// connection, so with the row as it stands).
pub(super) fn detail(conn: &Connection, id: &str) -> rusqlite::Result<Option<JobDetail>> {
    conn.query_row(
        "SELECT id, endpoint, status, output, error, attempts, worker_id, created_at, started_at,
                finished_at, payload, webhook, priority, max_attempts, queued_at,
                (SELECT COUNT(*) FROM webhooks WHERE job_id = jobs.id)
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
                history: Vec::new(),
            })
        },
    )
    .optional()?
    .map(|mut job| {
        job.history = sqlite_attempts::history(conn, id)?;
        Ok(job)
    })
    .transpose()
}
