-- Fill jobpipe.jobs (a schema jobpipe's migrations created) with :rows jobs
-- over 3 endpoints (e0..e2) and 10 tenants (t0..t9): the newest :waiting
-- IN_QUEUE, about 1 % FAILED, the rest COMPLETED; one job every 10 ms
-- ending now. fair_rank is the job's place in its tenant's jobs on its
-- endpoint (g / 30), as fair_ranks would give a steady round-robin.
-- psql -v rows=100000 -v waiting=3000 -f pg_fill.sql URL
\set ON_ERROR_STOP 1
TRUNCATE jobpipe.jobs CASCADE;
INSERT INTO jobpipe.jobs (id, status, payload, ttl_ms, max_attempts, retention_ms,
                          created_at, queued_at, run_after, started_at, finished_at,
                          output, endpoint, tenant, fair_rank)
SELECT md5(g::text)::uuid::text,
       CASE WHEN g > :rows - :waiting THEN 'IN_QUEUE'
            WHEN g % 97 = 0 THEN 'FAILED' ELSE 'COMPLETED' END,
       '{"input": {"n": 1}}', 7 * 86400000, 1, 7 * 86400000,
       b.t0 + g * 10, b.t0 + g * 10, b.t0 + g * 10,
       CASE WHEN g > :rows - :waiting THEN NULL ELSE b.t0 + g * 10 + 3 END,
       CASE WHEN g > :rows - :waiting THEN NULL ELSE b.t0 + g * 10 + 5 END,
       CASE WHEN g > :rows - :waiting THEN NULL ELSE '{"n": 1}' END,
       'e' || (g % 3), 't' || (g % 10), g / 30
  FROM generate_series(1, :rows) AS g,
       (SELECT jobpipe.now_ms() - :rows * 10 AS t0) AS b;
VACUUM ANALYZE jobpipe.jobs;
SELECT endpoint, status, count(*) FROM jobpipe.jobs GROUP BY 1, 2 ORDER BY 1, 2;
