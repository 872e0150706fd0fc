//! The SQLite queue's schema as numbered migrations, applied in order at
//! open. The number applied so far is kept in `PRAGMA user_version`, so a
//! newer jobpipe upgrades an older database in place and an older jobpipe
//! refuses a database it does not know.

use rusqlite::Connection;

/// Each entry is one schema version; never edit one that has shipped,
/// append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: jobs with leases, stream partials, webhook outbox, workers.
    "CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        payload TEXT NOT NULL,
        webhook TEXT,
        execution_timeout_ms INTEGER,
        ttl_ms INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        retention_ms INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        queued_at INTEGER NOT NULL,
        run_after INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        worker_id TEXT,
        lease_token TEXT,
        lease_expires_at INTEGER,
        output TEXT,
        error TEXT,
        expires_at INTEGER
    );
    CREATE INDEX jobs_queued ON jobs (status, queued_at);
    CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
    CREATE INDEX jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE stream (
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        output TEXT NOT NULL,
        read INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (job_id, seq)
    );
    CREATE TABLE webhooks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        url TEXT NOT NULL,
        body TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX webhooks_due ON webhooks (next_at);
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        capacity INTEGER NOT NULL,
        busy INTEGER NOT NULL,
        seen_at INTEGER NOT NULL
    );",
    // 2: a job's own stall timeout (policy.stallTimeout).
    "ALTER TABLE jobs ADD COLUMN stall_timeout_ms INTEGER;",
    // 3: priorities (policy.priority, lowPriority), taken higher first and
    // first in, first out within one; a delayed job is queued at the time
    // it may start, so it waits behind the jobs due before it. A
    // submission's Idempotency-Key and the hash of its body, the key
    // unique while the job is kept.
    "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    DROP INDEX jobs_queued;
    CREATE INDEX jobs_take ON jobs (priority DESC, queued_at) WHERE status = 'IN_QUEUE';
    ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
    ALTER TABLE jobs ADD COLUMN request_hash TEXT;
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;",
    // 4: endpoints. A job belongs to the endpoint it was submitted to and
    // is taken by workers that serve it: the take index leads with the
    // endpoint, so a take stays one ordered scan. The job list reads an
    // endpoint's jobs newest first by (created_at, id), a key that stays
    // stable while jobs are added. A worker's row names its endpoints
    // (comma-separated), machine, version and start.
    "ALTER TABLE jobs ADD COLUMN endpoint TEXT NOT NULL DEFAULT 'default';
    DROP INDEX jobs_take;
    CREATE INDEX jobs_take ON jobs (endpoint, priority DESC, queued_at) WHERE status = 'IN_QUEUE';
    CREATE INDEX jobs_list ON jobs (endpoint, created_at, id);
    ALTER TABLE workers ADD COLUMN endpoints TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE workers ADD COLUMN hostname TEXT NOT NULL DEFAULT '';
    ALTER TABLE workers ADD COLUMN version TEXT NOT NULL DEFAULT '';
    ALTER TABLE workers ADD COLUMN started_at INTEGER NOT NULL DEFAULT 0;",
    // 5: tenants. The name of the API key a job was submitted with; an
    // Idempotency-Key is unique per tenant.
    "ALTER TABLE jobs ADD COLUMN tenant TEXT;
    DROP INDEX jobs_idempotency;
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (coalesce(tenant, ''), idempotency_key)
        WHERE idempotency_key IS NOT NULL;",
    // 6: fair shares between tenants (see fairness.rs): jobs are taken by
    // priority, then fair rank, then queue time, in one ordered scan; a
    // submission finds its tenant's highest waiting rank in one more.
    "ALTER TABLE jobs ADD COLUMN fair_rank INTEGER NOT NULL DEFAULT 0;
    DROP INDEX jobs_take;
    CREATE INDEX jobs_take ON jobs (endpoint, priority DESC, fair_rank, queued_at)
        WHERE status = 'IN_QUEUE';
    CREATE INDEX jobs_tenant_rank ON jobs (endpoint, coalesce(tenant, ''), fair_rank)
        WHERE status = 'IN_QUEUE';",
    // 7: retry policies (policy.retry: which failures, as a bit mask, and
    // the back-off; NULL is the default) and the history of a job's
    // attempts, deleted with the job.
    "ALTER TABLE jobs ADD COLUMN retry_on INTEGER;
    ALTER TABLE jobs ADD COLUMN retry_backoff_ms INTEGER;
    ALTER TABLE jobs ADD COLUMN retry_max_backoff_ms INTEGER;
    CREATE TABLE attempts (
        job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        worker_id TEXT,
        started_at INTEGER,
        ended_at INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT,
        PRIMARY KEY (job_id, attempt)
    );",
    // 8: a tenant's cap on its jobs in progress at once (its key's
    // max_running, copied onto each job it submits). The capped jobs in
    // progress are counted in their own small index, and a trigger skips
    // (RAISE(IGNORE)) a take that would pass the cap, so a batch of takes
    // never does; only capped jobs fire it.
    "ALTER TABLE jobs ADD COLUMN max_running INTEGER;
    CREATE INDEX jobs_tenant_running ON jobs (coalesce(tenant, ''))
        WHERE status = 'IN_PROGRESS' AND max_running IS NOT NULL;
    CREATE TRIGGER jobs_tenant_cap BEFORE UPDATE OF status ON jobs
        WHEN NEW.max_running IS NOT NULL AND NEW.status = 'IN_PROGRESS'
            AND OLD.status <> 'IN_PROGRESS'
            AND (SELECT count(*) FROM jobs AS r
                  WHERE coalesce(r.tenant, '') = coalesce(NEW.tenant, '')
                    AND r.status = 'IN_PROGRESS' AND r.max_running IS NOT NULL)
                >= NEW.max_running
        BEGIN SELECT RAISE(IGNORE); END;",
    // 9: the jobs that ended, in order of their end, for the dashboard's
    // figures, read a few seconds' worth at a time.
    "CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;",
];

/// Why the schema could not be brought up to date; the caller reports it
/// as why the queue file could not be opened.
#[derive(Debug, thiserror::Error)]
pub(super) enum MigrationError {
    /// Reading the schema version or starting a migration's transaction.
    #[error("{0}")]
    Database(#[source] rusqlite::Error),
    #[error("its schema version {current} is newer than this jobpipe knows ({known}); use a newer jobpipe or another queue file")]
    NewerSchema { current: i64, known: i64 },
    #[error("schema migration {version} failed: {source}")]
    Step {
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
}

/// Brings the schema up to date; fails on a database from a newer jobpipe.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), MigrationError> {
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(MigrationError::Database)?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(MigrationError::NewerSchema { current, known });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as i64 + 1;
        let tx = conn.transaction().map_err(MigrationError::Database)?;
        tx.execute_batch(sql)
            .and_then(|()| tx.pragma_update(None, "user_version", version))
            .and_then(|()| tx.commit())
            .map_err(|source| MigrationError::Step { version, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_refuse_newer_databases() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        let err = migrate(&mut conn).unwrap_err().to_string();
        assert!(err.contains("newer"), "{err}");
    }
}
