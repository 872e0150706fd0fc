-- The plans of the take, the list and the fair-rank lookups (see
-- docs/benchmark.md, "Endpoints and tenants"). Run after pg_fill.sql:
-- psql -X -f pg_plans.sql URL   (the server has auto_explain loaded,
-- or LOAD 'auto_explain' below works as a superuser)
\set ON_ERROR_STOP 1
\pset pager off
LOAD 'auto_explain';

\echo '== (a) the take: jobpipe.take(worker, {e0,e1,e2}, 4, 60000) as the function runs it (auto_explain, nested)'
SET auto_explain.log_min_duration = 0;
SET auto_explain.log_analyze = on;
SET auto_explain.log_buffers = on;
SET auto_explain.log_timing = on;
SET auto_explain.log_nested_statements = on;
SET auto_explain.log_level = notice;
SET client_min_messages = notice;
BEGIN;
SELECT count(*) FROM jobpipe.take('plan-worker', '{e0,e1,e2}', 4, 60000);
ROLLBACK;
RESET auto_explain.log_min_duration;
SET auto_explain.log_min_duration = -1;

\echo '== (a) the take: the function''s statement, its settings, EXPLAIN (ANALYZE, BUFFERS), rolled back'
BEGIN;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_bitmapscan = off;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
WITH picked AS (
  SELECT head.id FROM unnest('{e0,e1,e2}'::text[]) AS e (name),
  LATERAL (
    SELECT q.id, q.priority, q.fair_rank, q.queued_at, q.seq FROM jobpipe.jobs AS q
     WHERE q.endpoint = e.name AND q.status = 'IN_QUEUE'
       AND q.run_after <= jobpipe.now_ms() AND q.queued_at + q.ttl_ms > jobpipe.now_ms()
     ORDER BY q.priority DESC, q.fair_rank, q.queued_at, q.seq
     LIMIT 4
     FOR UPDATE SKIP LOCKED) AS head
  ORDER BY head.priority DESC, head.fair_rank, head.queued_at, head.seq
  LIMIT 4)
UPDATE jobpipe.jobs AS j
   SET status = 'IN_PROGRESS', attempts = j.attempts + 1, worker_id = 'plan-worker',
       lease_token = gen_random_uuid()::text,
       lease_expires_at = jobpipe.now_ms() + 60000, started_at = jobpipe.now_ms()
  FROM picked WHERE j.id = picked.id
RETURNING j.id;
ROLLBACK;

-- The list query (postgres_listing.rs), as the unnamed statement is
-- planned: with its parameters' values.
\echo '== (b) list, first page, endpoint e0, no filter'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT id, status, created_at, started_at, finished_at, attempts, priority, worker_id, error, tenant
  FROM jobpipe.jobs
 WHERE endpoint = 'e0' AND (created_at, id) < (9223372036854775807::bigint, ''::text)
   AND created_at >= (-9223372036854775808)::bigint
   AND (NULL::text IS NULL OR status = NULL::text) AND (NULL::text IS NULL OR tenant = NULL::text)
 ORDER BY created_at DESC, id DESC LIMIT 50;

-- A cursor half-way down e0's list.
SELECT created_at AS cur_at, id AS cur_id FROM jobpipe.jobs WHERE endpoint = 'e0'
 ORDER BY created_at DESC, id DESC OFFSET (SELECT count(*) / 2 FROM jobpipe.jobs WHERE endpoint = 'e0') LIMIT 1 \gset
\echo '== (b) list, a page half-way down (cursor), no filter'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT id, status, created_at, started_at, finished_at, attempts, priority, worker_id, error, tenant
  FROM jobpipe.jobs
 WHERE endpoint = 'e0' AND (created_at, id) < (:cur_at::bigint, :'cur_id'::text)
   AND created_at >= (-9223372036854775808)::bigint
   AND (NULL::text IS NULL OR status = NULL::text) AND (NULL::text IS NULL OR tenant = NULL::text)
 ORDER BY created_at DESC, id DESC LIMIT 50;
\echo '== (b) list, first page, status=COMPLETED'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT id, status, created_at, started_at, finished_at, attempts, priority, worker_id, error, tenant
  FROM jobpipe.jobs
 WHERE endpoint = 'e0' AND (created_at, id) < (9223372036854775807::bigint, ''::text)
   AND created_at >= (-9223372036854775808)::bigint
   AND ('COMPLETED'::text IS NULL OR status = 'COMPLETED'::text) AND (NULL::text IS NULL OR tenant = NULL::text)
 ORDER BY created_at DESC, id DESC LIMIT 50;
\echo '== (b) list, first page, status=FAILED (about 1 % of the jobs)'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT id, status, created_at, started_at, finished_at, attempts, priority, worker_id, error, tenant
  FROM jobpipe.jobs
 WHERE endpoint = 'e0' AND (created_at, id) < (9223372036854775807::bigint, ''::text)
   AND created_at >= (-9223372036854775808)::bigint
   AND ('FAILED'::text IS NULL OR status = 'FAILED'::text) AND (NULL::text IS NULL OR tenant = NULL::text)
 ORDER BY created_at DESC, id DESC LIMIT 50;
\echo '== (b) list, page half-way down (cursor), status=FAILED'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT id, status, created_at, started_at, finished_at, attempts, priority, worker_id, error, tenant
  FROM jobpipe.jobs
 WHERE endpoint = 'e0' AND (created_at, id) < (:cur_at::bigint, :'cur_id'::text)
   AND created_at >= (-9223372036854775808)::bigint
   AND ('FAILED'::text IS NULL OR status = 'FAILED'::text) AND (NULL::text IS NULL OR tenant = NULL::text)
 ORDER BY created_at DESC, id DESC LIMIT 50;

\echo '== (c) fair ranks at submission (postgres_fair.rs): head rank of e0 and t3''s highest waiting rank'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT u.e, u.t,
       (SELECT j.fair_rank FROM jobpipe.jobs AS j
         WHERE j.endpoint = u.e AND j.status = 'IN_QUEUE'
         ORDER BY j.priority DESC, j.fair_rank LIMIT 1),
       (SELECT MAX(j.fair_rank) FROM jobpipe.jobs AS j
         WHERE j.endpoint = u.e AND coalesce(j.tenant, '') = u.t
           AND j.status = 'IN_QUEUE')
  FROM unnest('{e0}'::text[], '{t3}'::text[]) AS u (e, t);
