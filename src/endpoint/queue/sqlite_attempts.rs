//! The SQLite queue's side of a job's attempts (see [`super::attempts`]):
//! the job's retry policy as its row keeps it, and the history of its
//! attempts, one row written in the transaction that ends each attempt and
//! read with the job's whole record.

use rusqlite::{params, Connection};

use super::attempts::{AttemptRecord, RetryPolicy};

/// Attempts used, attempts allowed and the retry policy of job `id`.
pub(super) fn policy(conn: &Connection, id: &str) -> rusqlite::Result<(i64, i64, RetryPolicy)> {
    conn.prepare_cached(
        "SELECT attempts, max_attempts, retry_on, retry_backoff_ms, retry_max_backoff_ms
           FROM jobs WHERE id = ?1",
    )?
    .query_row([id], |row| {
        let policy = RetryPolicy::stored(row.get(2)?, row.get(3)?, row.get(4)?);
        Ok((row.get(0)?, row.get(1)?, policy))
    })
}

/// Records the end, at `now`, of job `id`'s current attempt, by the
/// worker and from the start its row names. Before anything else changes
/// the row. A second end of one attempt is not recorded (nothing ends an
/// attempt twice; if something did, the job's own change must still be
/// written).
pub(super) fn record(
    conn: &Connection,
    id: &str,
    now: i64,
    outcome: &str,
    detail: Option<&str>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO attempts (job_id, attempt, worker_id, started_at, ended_at, outcome, detail)
         SELECT id, attempts, worker_id, started_at, ?2, ?3, ?4 FROM jobs WHERE id = ?1
         ON CONFLICT (job_id, attempt) DO NOTHING",
    )?
    .execute(params![id, now, outcome, detail])
    .map(drop)
}

/// Job `id`'s attempts, first first.
pub(super) fn history(conn: &Connection, id: &str) -> rusqlite::Result<Vec<AttemptRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT attempt, worker_id, started_at, ended_at, outcome, detail
           FROM attempts WHERE job_id = ?1 ORDER BY attempt",
    )?;
    let rows = stmt.query_map([id], |row| {
        Ok(AttemptRecord {
            attempt: row.get(0)?,
            worker_id: row.get(1)?,
            started_at: row.get(2)?,
            ended_at: row.get(3)?,
            outcome: row.get(4)?,
            detail: row.get(5)?,
        })
    })?;
    rows.collect()
}
