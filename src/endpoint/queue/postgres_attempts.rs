//! The PostgreSQL queue's side of a job's attempts (see
//! [`super::attempts`]): the job's retry policy as its row keeps it, and
//! the history of its attempts, one row written in the transaction that
//! ends each attempt (a group's usual ends record theirs in the statement
//! that writes them, see [`super::postgres_batch`]) and deleted with the
//! job (the foreign key cascades). Below [`super::postgres_ops`], so its
//! errors are the driver's.

use deadpool_postgres::{Object, Transaction};
use tokio_postgres::Error;

use super::attempts::{AttemptRecord, RetryPolicy};
use super::postgres_typed::p;

/// Attempts used, attempts allowed and the retry policy of job `id`,
/// whose row is locked.
pub(super) async fn policy(
    tx: &Transaction<'_>,
    id: &str,
) -> Result<(i64, i64, RetryPolicy), Error> {
    let row = tx
        .query_typed_one(
            "SELECT attempts, max_attempts, retry_on, retry_backoff_ms, retry_max_backoff_ms
               FROM jobpipe.jobs WHERE id = $1",
            &[p(&id)],
        )
        .await?;
    let policy = RetryPolicy::stored(row.get(2), row.get(3), row.get(4));
    Ok((
        row.get::<_, i32>(0).into(),
        row.get::<_, i32>(1).into(),
        policy,
    ))
}

/// Records the end, now, of job `id`'s current attempt, by the worker and
/// from the start its row names. Before anything else changes the row. A
/// second end of one attempt is not recorded (nothing ends an attempt
/// twice; if something did, the job's own change must still be written).
pub(super) async fn record(
    tx: &Transaction<'_>,
    id: &str,
    outcome: &str,
    detail: Option<&str>,
) -> Result<(), Error> {
    tx.execute_typed(
        "INSERT INTO jobpipe.attempts
                (job_id, attempt, worker_id, started_at, ended_at, outcome, detail)
         SELECT id, attempts, worker_id, started_at, jobpipe.now_ms(), $2, $3
           FROM jobpipe.jobs WHERE id = $1
         ON CONFLICT (job_id, attempt) DO NOTHING",
        &[p(&id), p(&outcome), p(&detail)],
    )
    .await?;
    Ok(())
}

/// Job `id`'s attempts, first first.
pub(super) async fn history(client: &Object, id: &str) -> Result<Vec<AttemptRecord>, Error> {
    let rows = client
        .query_typed(
            "SELECT attempt, worker_id, started_at, ended_at, outcome, detail
               FROM jobpipe.attempts WHERE job_id = $1 ORDER BY attempt",
            &[p(&id)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| AttemptRecord {
            attempt: u32::try_from(row.get::<_, i32>(0)).unwrap_or(0),
            worker_id: row.get(1),
            started_at: row.get(2),
            ended_at: row.get(3),
            outcome: row.get(4),
            detail: row.get(5),
        })
        .collect())
}
