//! The PostgreSQL queue's schema: its own PostgreSQL schema, `jobpipe`, so
//! it shares a database with an application without touching its tables,
//! built by numbered migrations.
//!
//! Many jobpipe processes may start at once against one database, so the
//! migrations run in one transaction that first takes a transaction-level
//! advisory lock: one process migrates, the others wait and then find the
//! schema up to date. DDL is transactional in PostgreSQL, so a migration
//! that fails leaves nothing half-done. A database whose schema is newer
//! than this jobpipe knows is refused rather than misread.

use tokio_postgres::Client;

/// The advisory lock key that serialises migrations (any fixed number;
/// this one spells "jobpipe" in ASCII).
const MIGRATION_LOCK: i64 = 0x006a_6f62_7069_7065;

/// Each entry is one schema version; never edit one that has shipped,
/// append a new one. Times are ms since the epoch on the database's clock
/// (`jobpipe.now_ms()`), so workers on machines whose clocks disagree still
/// agree on when a lease runs out.
const MIGRATIONS: &[&str] = &[
    // 1: jobs with leases, stream partials, webhook outbox, workers.
    "CREATE FUNCTION jobpipe.now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS
        $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;
    CREATE TABLE jobpipe.jobs (
        id text PRIMARY KEY,
        seq bigserial NOT NULL,
        status text NOT NULL CHECK (status IN
            ('IN_QUEUE', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'CANCELLED', 'TIMED_OUT')),
        payload text NOT NULL,
        webhook text,
        execution_timeout_ms bigint,
        ttl_ms bigint NOT NULL,
        max_attempts integer NOT NULL,
        retention_ms bigint NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        created_at bigint NOT NULL,
        queued_at bigint NOT NULL,
        run_after bigint NOT NULL,
        started_at bigint,
        finished_at bigint,
        worker_id text,
        lease_token text,
        lease_expires_at bigint,
        output text,
        error text,
        expires_at bigint
    );
    CREATE INDEX jobs_queued ON jobpipe.jobs (queued_at, seq) WHERE status = 'IN_QUEUE';
    CREATE INDEX jobs_leases ON jobpipe.jobs (lease_expires_at) WHERE status = 'IN_PROGRESS';
    CREATE INDEX jobs_expiry ON jobpipe.jobs (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE jobpipe.stream (
        seq bigserial PRIMARY KEY,
        job_id text NOT NULL REFERENCES jobpipe.jobs (id) ON DELETE CASCADE,
        output text NOT NULL,
        read boolean NOT NULL DEFAULT false
    );
    CREATE INDEX stream_job ON jobpipe.stream (job_id, seq);
    CREATE TABLE jobpipe.webhooks (
        id bigserial PRIMARY KEY,
        job_id text NOT NULL,
        url text NOT NULL,
        body text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        next_at bigint NOT NULL,
        created_at bigint NOT NULL
    );
    CREATE INDEX webhooks_due ON jobpipe.webhooks (next_at);
    CREATE TABLE jobpipe.workers (
        id text PRIMARY KEY,
        capacity integer NOT NULL,
        busy integer NOT NULL,
        seen_at bigint NOT NULL
    );",
    // 2: a job's own stall timeout (policy.stallTimeout).
    "ALTER TABLE jobpipe.jobs ADD COLUMN stall_timeout_ms bigint;",
    // 3: when the queue was last swept, so one process at a time sweeps.
    "CREATE TABLE jobpipe.housekeeping (swept_at bigint NOT NULL);
    INSERT INTO jobpipe.housekeeping VALUES (0);",
    // 4: storage for a queue's churn, and which process swept last. Every job is inserted, updated twice
    // and deleted after its retention, so the jobs table makes dead rows at
    // about three times the job rate: vacuum it after 2 % of its rows (plus
    // 1,000) are dead rather than PostgreSQL's default 20 %, without the
    // cost-based pauses that let vacuum fall behind a busy queue, so the
    // table and its indexes stay near the size of what is retained. An
    // update changes indexed columns (status, lease, expiry), so it cannot
    // be HOT; a fill factor of 80 still leaves room for the new version on
    // the same page, so a job's versions stay together. The workers and
    // housekeeping rows are rewritten every second or faster with no
    // indexed column changed: half-empty pages let those updates be HOT.
    "ALTER TABLE jobpipe.jobs SET (fillfactor = 80,
        autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
        autovacuum_vacuum_insert_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02,
        autovacuum_vacuum_cost_delay = 0);
    ALTER TABLE jobpipe.stream SET (autovacuum_vacuum_scale_factor = 0.02,
        autovacuum_vacuum_cost_delay = 0);
    ALTER TABLE jobpipe.webhooks SET (autovacuum_vacuum_scale_factor = 0.02,
        autovacuum_vacuum_cost_delay = 0);
    ALTER TABLE jobpipe.workers SET (fillfactor = 50);
    ALTER TABLE jobpipe.housekeeping SET (fillfactor = 50);
    ALTER TABLE jobpipe.housekeeping ADD COLUMN swept_by text;",
    // 5: priorities (policy.priority, lowPriority), taken higher first and
    // first in, first out within one, in one scan of one index; a delayed
    // job is queued at the time it may start, so it waits behind the jobs
    // due before it. A submission's Idempotency-Key and the hash of its
    // body, the key unique while the job is kept.
    "ALTER TABLE jobpipe.jobs ADD COLUMN priority integer NOT NULL DEFAULT 0;
    CREATE INDEX jobs_take ON jobpipe.jobs (priority DESC, queued_at, seq) WHERE status = 'IN_QUEUE';
    DROP INDEX jobpipe.jobs_queued;
    ALTER TABLE jobpipe.jobs ADD COLUMN idempotency_key text, ADD COLUMN request_hash text;
    CREATE UNIQUE INDEX jobs_idempotency ON jobpipe.jobs (idempotency_key)
        WHERE idempotency_key IS NOT NULL;",
    // 6: the take as a function whose plan is pinned to the ordered scan
    // of jobs_take that stops after the slots it fills. Left to itself, the
    // planner goes by statistics taken when few jobs were waiting, and
    // during a burst reads and sorts every waiting job instead (a bitmap
    // scan and a sort: 14 ms a take with 3,800 waiting, against well under
    // one). The settings hold for the function's own statement only.
    "CREATE FUNCTION jobpipe.take(worker text, slots bigint, lease_ms bigint)
     RETURNS TABLE (job_id text, token text, job_payload text, attempt integer,
                    execution_ms bigint, waited_ms bigint, stall_ms bigint)
     LANGUAGE sql VOLATILE
     SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off
     AS $$
       WITH picked AS (
         SELECT q.id FROM jobpipe.jobs AS q
          WHERE q.status = 'IN_QUEUE' AND q.run_after <= jobpipe.now_ms()
            AND q.queued_at + q.ttl_ms > jobpipe.now_ms()
          ORDER BY q.priority DESC, q.queued_at, q.seq
          LIMIT slots
          FOR UPDATE SKIP LOCKED)
       UPDATE jobpipe.jobs AS j
          SET status = 'IN_PROGRESS', attempts = j.attempts + 1, worker_id = worker,
              lease_token = gen_random_uuid()::text,
              lease_expires_at = jobpipe.now_ms() + lease_ms, started_at = jobpipe.now_ms()
         FROM picked WHERE j.id = picked.id
       RETURNING j.id, j.lease_token, j.payload, j.attempts, j.execution_timeout_ms,
                 j.started_at - j.queued_at, j.stall_timeout_ms
     $$;",
    // 7: endpoints. A job belongs to the endpoint it was submitted to and
    // is taken by workers that serve it: the take index leads with the
    // endpoint, and the take reads the head of each endpoint it serves
    // with one ordered scan of it (stopping after the slots it fills),
    // then keeps the best of those heads. The job list reads an
    // endpoint's jobs newest first by (created_at, id), a key that stays
    // stable while jobs are added. A worker's row names its endpoints,
    // machine, version and start.
    "ALTER TABLE jobpipe.jobs ADD COLUMN endpoint text NOT NULL DEFAULT 'default';
    DROP INDEX jobpipe.jobs_take;
    CREATE INDEX jobs_take ON jobpipe.jobs (endpoint, priority DESC, queued_at, seq)
        WHERE status = 'IN_QUEUE';
    CREATE INDEX jobs_list ON jobpipe.jobs (endpoint, created_at, id);
    ALTER TABLE jobpipe.workers ADD COLUMN endpoints text[] NOT NULL DEFAULT '{default}',
        ADD COLUMN hostname text NOT NULL DEFAULT '', ADD COLUMN version text NOT NULL DEFAULT '',
        ADD COLUMN started_at bigint NOT NULL DEFAULT 0;
    DROP FUNCTION jobpipe.take(text, bigint, bigint);
    CREATE FUNCTION jobpipe.take(worker text, endpoints text[], slots bigint, lease_ms bigint)
     RETURNS TABLE (job_id text, token text, job_payload text, attempt integer,
                    execution_ms bigint, waited_ms bigint, stall_ms bigint)
     LANGUAGE sql VOLATILE
     SET enable_seqscan = off SET enable_bitmapscan = off
     AS $$
       WITH picked AS (
         SELECT head.id FROM unnest(endpoints) AS e (name),
         LATERAL (
           SELECT q.id, q.priority, q.queued_at, q.seq FROM jobpipe.jobs AS q
            WHERE q.endpoint = e.name AND q.status = 'IN_QUEUE'
              AND q.run_after <= jobpipe.now_ms() AND q.queued_at + q.ttl_ms > jobpipe.now_ms()
            ORDER BY q.priority DESC, q.queued_at, q.seq
            LIMIT slots
            FOR UPDATE SKIP LOCKED) AS head
         ORDER BY head.priority DESC, head.queued_at, head.seq
         LIMIT slots)
       UPDATE jobpipe.jobs AS j
          SET status = 'IN_PROGRESS', attempts = j.attempts + 1, worker_id = worker,
              lease_token = gen_random_uuid()::text,
              lease_expires_at = jobpipe.now_ms() + lease_ms, started_at = jobpipe.now_ms()
         FROM picked WHERE j.id = picked.id
       RETURNING j.id, j.lease_token, j.payload, j.attempts, j.execution_timeout_ms,
                 j.started_at - j.queued_at, j.stall_timeout_ms
     $$;",
    // 8: tenants. The name of the API key a job was submitted with; an
    // Idempotency-Key is unique per tenant.
    "ALTER TABLE jobpipe.jobs ADD COLUMN tenant text;
    DROP INDEX jobpipe.jobs_idempotency;
    CREATE UNIQUE INDEX jobs_idempotency ON jobpipe.jobs (coalesce(tenant, ''), idempotency_key)
        WHERE idempotency_key IS NOT NULL;",
    // 9: fair shares between tenants (see fairness.rs): jobs are taken by
    // priority, then fair rank, then queue time, in one ordered scan of
    // jobs_take per endpoint; a submission finds its tenant's highest
    // waiting rank in jobs_tenant_rank.
    "ALTER TABLE jobpipe.jobs ADD COLUMN fair_rank bigint NOT NULL DEFAULT 0;
    DROP INDEX jobpipe.jobs_take;
    CREATE INDEX jobs_take ON jobpipe.jobs (endpoint, priority DESC, fair_rank, queued_at, seq)
        WHERE status = 'IN_QUEUE';
    CREATE INDEX jobs_tenant_rank ON jobpipe.jobs (endpoint, coalesce(tenant, ''), fair_rank)
        WHERE status = 'IN_QUEUE';
    CREATE OR REPLACE FUNCTION jobpipe.take(worker text, endpoints text[], slots bigint, lease_ms bigint)
     RETURNS TABLE (job_id text, token text, job_payload text, attempt integer,
                    execution_ms bigint, waited_ms bigint, stall_ms bigint)
     LANGUAGE sql VOLATILE
     SET enable_seqscan = off SET enable_bitmapscan = off
     AS $$
       WITH picked AS (
         SELECT head.id FROM unnest(endpoints) AS e (name),
         LATERAL (
           SELECT q.id, q.priority, q.fair_rank, q.queued_at, q.seq FROM jobpipe.jobs AS q
            WHERE q.endpoint = e.name AND q.status = 'IN_QUEUE'
              AND q.run_after <= jobpipe.now_ms() AND q.queued_at + q.ttl_ms > jobpipe.now_ms()
            ORDER BY q.priority DESC, q.fair_rank, q.queued_at, q.seq
            LIMIT slots
            FOR UPDATE SKIP LOCKED) AS head
         ORDER BY head.priority DESC, head.fair_rank, head.queued_at, head.seq
         LIMIT slots)
       UPDATE jobpipe.jobs AS j
          SET status = 'IN_PROGRESS', attempts = j.attempts + 1, worker_id = worker,
              lease_token = gen_random_uuid()::text,
              lease_expires_at = jobpipe.now_ms() + lease_ms, started_at = jobpipe.now_ms()
         FROM picked WHERE j.id = picked.id
       RETURNING j.id, j.lease_token, j.payload, j.attempts, j.execution_timeout_ms,
                 j.started_at - j.queued_at, j.stall_timeout_ms
     $$;",
    // 10: retry policies (policy.retry: which failures, as a bit mask, and
    // the back-off; NULL is the default) and the history of a job's
    // attempts, deleted with the job. Each attempt adds a row, and each job
    // deletes its rows at its retention: vacuum it as early as the jobs.
    "ALTER TABLE jobpipe.jobs ADD COLUMN retry_on bigint, ADD COLUMN retry_backoff_ms bigint,
        ADD COLUMN retry_max_backoff_ms bigint;
    CREATE TABLE jobpipe.attempts (
        job_id text NOT NULL REFERENCES jobpipe.jobs (id) ON DELETE CASCADE,
        attempt integer NOT NULL,
        worker_id text,
        started_at bigint,
        ended_at bigint NOT NULL,
        outcome text NOT NULL,
        detail text,
        PRIMARY KEY (job_id, attempt)
    );
    ALTER TABLE jobpipe.attempts SET (autovacuum_vacuum_scale_factor = 0.02,
        autovacuum_vacuum_insert_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);",
    // 11: a tenant's cap on its jobs in progress at once (its key's
    // max_running, copied onto each job it submits). The capped jobs in
    // progress are counted in their own small index. A take skips a capped
    // tenant's jobs while the cap is reached, and a trigger makes it exact:
    // it takes the tenant's transaction lock without waiting (a take that
    // cannot skips the job, as SKIP LOCKED does, so two takes never wait
    // on each other) and counts again, seeing the rows its own statement
    // took. Only capped jobs fire it; ends need no bookkeeping.
    "ALTER TABLE jobpipe.jobs ADD COLUMN max_running integer;
    CREATE INDEX jobs_tenant_running ON jobpipe.jobs ((coalesce(tenant, '')))
        WHERE status = 'IN_PROGRESS' AND max_running IS NOT NULL;
    CREATE FUNCTION jobpipe.running(who text) RETURNS bigint LANGUAGE sql VOLATILE AS $$
        SELECT count(*) FROM jobpipe.jobs
         WHERE coalesce(tenant, '') = who AND status = 'IN_PROGRESS' AND max_running IS NOT NULL
    $$;
    CREATE FUNCTION jobpipe.tenant_cap() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NOT pg_try_advisory_xact_lock(1785688165, hashtext(coalesce(NEW.tenant, '')))
           OR jobpipe.running(coalesce(NEW.tenant, '')) >= NEW.max_running THEN
            RETURN NULL;
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER jobs_tenant_cap BEFORE UPDATE OF status ON jobpipe.jobs FOR EACH ROW
        WHEN (NEW.max_running IS NOT NULL AND NEW.status = 'IN_PROGRESS'
              AND OLD.status <> 'IN_PROGRESS')
        EXECUTE FUNCTION jobpipe.tenant_cap();
    CREATE OR REPLACE FUNCTION jobpipe.take(worker text, endpoints text[], slots bigint, lease_ms bigint)
     RETURNS TABLE (job_id text, token text, job_payload text, attempt integer,
                    execution_ms bigint, waited_ms bigint, stall_ms bigint)
     LANGUAGE sql VOLATILE
     SET enable_seqscan = off SET enable_bitmapscan = off
     AS $$
       WITH picked AS (
         SELECT head.id FROM unnest(endpoints) AS e (name),
         LATERAL (
           SELECT q.id, q.priority, q.fair_rank, q.queued_at, q.seq FROM jobpipe.jobs AS q
            WHERE q.endpoint = e.name AND q.status = 'IN_QUEUE'
              AND q.run_after <= jobpipe.now_ms() AND q.queued_at + q.ttl_ms > jobpipe.now_ms()
              AND (q.max_running IS NULL
                   OR jobpipe.running(coalesce(q.tenant, '')) < q.max_running)
            ORDER BY q.priority DESC, q.fair_rank, q.queued_at, q.seq
            LIMIT slots
            FOR UPDATE SKIP LOCKED) AS head
         ORDER BY head.priority DESC, head.fair_rank, head.queued_at, head.seq
         LIMIT slots)
       UPDATE jobpipe.jobs AS j
          SET status = 'IN_PROGRESS', attempts = j.attempts + 1, worker_id = worker,
              lease_token = gen_random_uuid()::text,
              lease_expires_at = jobpipe.now_ms() + lease_ms, started_at = jobpipe.now_ms()
         FROM picked WHERE j.id = picked.id
       RETURNING j.id, j.lease_token, j.payload, j.attempts, j.execution_timeout_ms,
                 j.started_at - j.queued_at, j.stall_timeout_ms
     $$;",
    // 12: the jobs that ended, in order of their end, for the dashboard's
    // figures, read a few seconds' worth at a time.
    "CREATE INDEX jobs_finished ON jobpipe.jobs (finished_at) WHERE finished_at IS NOT NULL;",
    // 13: the take in PL/pgSQL, whose plan is kept between calls: a SQL
    // function that cannot be inlined is planned again on every call, and
    // planning the take cost more than running it (1.5 ms against 0.3 ms
    // in `bench_postgres`'s EXPLAIN). Same statement, same settings.
    "CREATE OR REPLACE FUNCTION jobpipe.take(worker text, endpoints text[], slots bigint, lease_ms bigint)
     RETURNS TABLE (job_id text, token text, job_payload text, attempt integer,
                    execution_ms bigint, waited_ms bigint, stall_ms bigint)
     LANGUAGE plpgsql VOLATILE
     SET enable_seqscan = off SET enable_bitmapscan = off
     AS $$ BEGIN RETURN QUERY
       WITH picked AS (
         SELECT head.id FROM unnest(endpoints) AS e (name),
         LATERAL (
           SELECT q.id, q.priority, q.fair_rank, q.queued_at, q.seq FROM jobpipe.jobs AS q
            WHERE q.endpoint = e.name AND q.status = 'IN_QUEUE'
              AND q.run_after <= jobpipe.now_ms() AND q.queued_at + q.ttl_ms > jobpipe.now_ms()
              AND (q.max_running IS NULL
                   OR jobpipe.running(coalesce(q.tenant, '')) < q.max_running)
            ORDER BY q.priority DESC, q.fair_rank, q.queued_at, q.seq
            LIMIT slots
            FOR UPDATE SKIP LOCKED) AS head
         ORDER BY head.priority DESC, head.fair_rank, head.queued_at, head.seq
         LIMIT slots)
       UPDATE jobpipe.jobs AS j
          SET status = 'IN_PROGRESS', attempts = j.attempts + 1, worker_id = worker,
              lease_token = gen_random_uuid()::text,
              lease_expires_at = jobpipe.now_ms() + lease_ms, started_at = jobpipe.now_ms()
         FROM picked WHERE j.id = picked.id
       RETURNING j.id, j.lease_token, j.payload, j.attempts, j.execution_timeout_ms,
                 j.started_at - j.queued_at, j.stall_timeout_ms;
     END $$;",
    // 14: chores that one process of those sharing the queue does now and
    // then (deleting uploads past their lifetime): when each was last done
    // and by whom. A row is rewritten with no indexed column changed:
    // half-empty pages let those updates be HOT.
    "CREATE TABLE jobpipe.chores (
        name text PRIMARY KEY,
        done_at bigint NOT NULL,
        done_by text NOT NULL
    ) WITH (fillfactor = 50);",
    // 15: the take's plan kept, not only its parse. PL/pgSQL plans a
    // statement with parameters afresh for each call while it judges a
    // plan for the call's own values cheaper than the general one; for
    // the take it always did (the slots are a LIMIT), and planning was a
    // third of the take's time (a profile of the server in
    // `bench_postgres`). The general plan is the pinned ordered scan.
    "ALTER FUNCTION jobpipe.take(text, text[], bigint, bigint)
        SET plan_cache_mode = force_generic_plan;",
    // 16: whether a caller waits for the job's end (`/runsync`): only
    // those ends are announced (a constant default adds no rewrite).
    "ALTER TABLE jobpipe.jobs ADD COLUMN awaited boolean NOT NULL DEFAULT false;",
];

/// Why the schema could not be brought up to date. Each renders the
/// server's message through [`detail`], as the caller reports it (after
/// redacting the password) as why the queue could not be opened.
#[derive(Debug, thiserror::Error)]
pub(super) enum MigrationError {
    /// Starting, reading or committing the migration transaction.
    #[error("{}", detail(.0))]
    Database(#[source] tokio_postgres::Error),
    #[error("cannot take the migration lock: {}", detail(.0))]
    Lock(#[source] tokio_postgres::Error),
    #[error("cannot create the jobpipe schema: {}", detail(.0))]
    CreateSchema(#[source] tokio_postgres::Error),
    #[error("its jobpipe schema is version {current}, newer than this jobpipe knows ({known}); use a newer jobpipe")]
    NewerSchema { current: i32, known: i32 },
    #[error("schema migration {version} failed: {}", detail(.source))]
    Step {
        version: i32,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Brings the schema up to date; fails on a schema from a newer jobpipe.
pub(super) async fn migrate(client: &mut Client) -> Result<(), MigrationError> {
    use MigrationError::Database;
    let tx = client.transaction().await.map_err(Database)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(MigrationError::Lock)?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS jobpipe;
         CREATE TABLE IF NOT EXISTS jobpipe.schema_version (version integer NOT NULL);",
    )
    .await
    .map_err(MigrationError::CreateSchema)?;
    let current: i32 = tx
        .query_opt("SELECT version FROM jobpipe.schema_version", &[])
        .await
        .map_err(Database)?
        .map_or(0, |row| row.get(0));
    let known = MIGRATIONS.len() as i32;
    if current > known {
        return Err(MigrationError::NewerSchema { current, known });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as i32 + 1;
        tx.batch_execute(sql)
            .await
            .map_err(|source| MigrationError::Step { version, source })?;
    }
    if current < known {
        tx.batch_execute("DELETE FROM jobpipe.schema_version")
            .await
            .map_err(Database)?;
        tx.execute("INSERT INTO jobpipe.schema_version VALUES ($1)", &[&known])
            .await
            .map_err(Database)?;
        tracing::info!("queue schema migrated from version {current} to {known}");
    }
    tx.commit().await.map_err(Database)
}

/// The server's own message when there is one ("permission denied for
/// database jobs"), not just "db error".
fn detail(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}
