//! The PostgreSQL queue's schema, in its own `jobpipe` schema, as numbered
//! migrations applied at start under an advisory lock, so many processes
//! starting at once apply each migration exactly once.

use tokio_postgres::Client;

/// Each entry is one schema version; never edit one that has shipped.
const MIGRATIONS: &[&str] = &["CREATE TABLE jobpipe.jobs (
        id TEXT PRIMARY KEY,
        seq BIGSERIAL,
        status TEXT NOT NULL,
        payload JSONB NOT NULL,
        webhook TEXT,
        execution_timeout_ms BIGINT,
        ttl_ms BIGINT NOT NULL,
        max_attempts INT NOT NULL,
        retention_ms BIGINT NOT NULL,
        attempts INT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        queued_at BIGINT NOT NULL,
        run_after BIGINT NOT NULL,
        started_at BIGINT,
        finished_at BIGINT,
        worker_id TEXT,
        lease_token TEXT,
        lease_expires_at BIGINT,
        output JSONB,
        error TEXT,
        expires_at BIGINT
    );
    CREATE INDEX jobs_queued ON jobpipe.jobs (queued_at, seq) WHERE status = 'IN_QUEUE';
    CREATE INDEX jobs_leases ON jobpipe.jobs (lease_expires_at) WHERE status = 'IN_PROGRESS';
    CREATE INDEX jobs_expiry ON jobpipe.jobs (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE jobpipe.stream (
        job_id TEXT NOT NULL,
        seq INT NOT NULL,
        output JSONB NOT NULL,
        read BOOLEAN NOT NULL DEFAULT false,
        PRIMARY KEY (job_id, seq)
    );
    CREATE TABLE jobpipe.webhooks (
        id BIGSERIAL PRIMARY KEY,
        job_id TEXT NOT NULL,
        url TEXT NOT NULL,
        body JSONB NOT NULL,
        attempts INT NOT NULL DEFAULT 0,
        next_at BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX webhooks_due ON jobpipe.webhooks (next_at);
    CREATE TABLE jobpipe.workers (
        id TEXT PRIMARY KEY,
        capacity INT NOT NULL,
        busy INT NOT NULL,
        seen_at BIGINT NOT NULL
    );"];

/// Brings the schema up to date; fails on a database from a newer jobpipe.
pub(super) async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('jobpipe-migrations'))",
        &[],
    )
    .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS jobpipe;
         CREATE TABLE IF NOT EXISTS jobpipe.schema_version (version INT NOT NULL);",
    )
    .await?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM jobpipe.schema_version",
            &[],
        )
        .await?
        .get(0);
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO jobpipe.schema_version (version) VALUES ($1)",
            &[&(index as i32 + 1)],
        )
        .await?;
    }
    tx.commit().await
}

/// The number of migrations this jobpipe knows.
pub(super) fn known() -> i64 {
    MIGRATIONS.len() as i64
}
