#!/usr/bin/env python3
"""The SQLite side of docs/benchmark.md, "Endpoints and tenants".

    python3 sqlite_bench.py plans FILE [ROWS WAITING]   # fill, then EXPLAIN QUERY PLAN
    python3 sqlite_bench.py time FILE [ROWS WAITING]    # fill, then time the list query

FILE must be a queue jobpipe created (run `jobpipe --serve-api --queue
sqlite:FILE ...` once and stop it): its jobs are replaced by ROWS jobs over
3 endpoints and 10 tenants, the newest WAITING IN_QUEUE, about 1 % FAILED,
the rest COMPLETED, one every 10 ms ending now; fair_rank is g / 30 (the
job's place among its tenant's jobs on its endpoint).
Python's sqlite3 module runs the queries (its SQLite, not the one bundled
in jobpipe; the version is printed).
"""
import sqlite3
import statistics
import sys
import time

mode, path = sys.argv[1], sys.argv[2]
rows = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000
waiting = int(sys.argv[4]) if len(sys.argv) > 4 else 3_000
db = sqlite3.connect(path)
print("sqlite", sqlite3.sqlite_version)
now = int(time.time() * 1000)
t0 = now - rows * 10
started = time.time()
db.execute("DELETE FROM jobs")
db.execute(
    """
    WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?1)
    INSERT INTO jobs (id, status, payload, ttl_ms, max_attempts, retention_ms,
                      created_at, queued_at, run_after, started_at, finished_at, output,
                      endpoint, tenant, fair_rank)
    SELECT printf('%08x-0000-4000-8000-%012x', n, n * 2654435761 % 281474976710656),
           CASE WHEN n > ?1 - ?2 THEN 'IN_QUEUE' WHEN n % 97 = 0 THEN 'FAILED' ELSE 'COMPLETED' END,
           '{"input": {"n": 1}}', 7 * 86400000, 1, 7 * 86400000,
           ?3 + n * 10, ?3 + n * 10, ?3 + n * 10,
           CASE WHEN n > ?1 - ?2 THEN NULL ELSE ?3 + n * 10 + 3 END,
           CASE WHEN n > ?1 - ?2 THEN NULL ELSE ?3 + n * 10 + 5 END,
           CASE WHEN n > ?1 - ?2 THEN NULL ELSE '{"n": 1}' END,
           'e' || (n % 3), 't' || (n % 10), n / 30
      FROM g
    """,
    (rows, waiting, t0),
)
db.commit()
db.execute("ANALYZE")
db.commit()
print(f"filled {rows} jobs ({waiting} waiting) in {time.time() - started:.1f} s")
for row in db.execute("SELECT endpoint, status, count(*) FROM jobs GROUP BY 1, 2 ORDER BY 1, 2"):
    print("  ", *row)

# sqlite.rs next_jobs, sqlite_listing.rs list, sqlite_submit.rs fair_ranks.
NEXT_JOBS = """SELECT priority, fair_rank, queued_at, rowid, id FROM jobs
          WHERE endpoint = ?1 AND status = 'IN_QUEUE' AND run_after <= ?2 AND queued_at + ttl_ms > ?2
          ORDER BY priority DESC, fair_rank, queued_at, rowid LIMIT ?3"""
LIST = """SELECT id, status, created_at, started_at, finished_at, attempts, priority, worker_id, error,
                tenant
           FROM jobs INDEXED BY jobs_list
          WHERE endpoint = ?1 AND (created_at, id) < (?2, ?3) AND created_at >= ?4
            AND (?5 IS NULL OR status = ?5) AND (?7 IS NULL OR tenant = ?7)
          ORDER BY created_at DESC, id DESC LIMIT ?6"""
HEAD_RANK = """SELECT fair_rank FROM jobs WHERE endpoint = ?1 AND status = 'IN_QUEUE'
                      ORDER BY priority DESC, fair_rank LIMIT 1"""
TENANT_RANK = """SELECT MAX(fair_rank) FROM jobs
                      WHERE endpoint = ?1 AND coalesce(tenant, '') = ?2 AND status = 'IN_QUEUE'"""

MAX, MIN = 2**63 - 1, -(2**63)
half = db.execute("SELECT count(*) / 2 FROM jobs WHERE endpoint = 'e0'").fetchone()[0]
cursor = db.execute(
    "SELECT created_at, id FROM jobs WHERE endpoint = 'e0' ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET ?",
    (half,),
).fetchone()
lists = {
    "first page, no filter": ("e0", MAX, "", MIN, None, 50, None),
    "page half-way down (cursor), no filter": ("e0", cursor[0], cursor[1], MIN, None, 50, None),
    "first page, status=COMPLETED": ("e0", MAX, "", MIN, "COMPLETED", 50, None),
    "first page, status=FAILED (1 %)": ("e0", MAX, "", MIN, "FAILED", 50, None),
    "page half-way down (cursor), status=FAILED": ("e0", cursor[0], cursor[1], MIN, "FAILED", 50, None),
}

if mode == "plans":
    def plan(title, sql, params):
        print(f"== {title}")
        for row in db.execute("EXPLAIN QUERY PLAN " + sql, params):
            print("  ", row[3])
    plan("(a) the take: next_jobs, endpoint e0, 4 slots (once per endpoint served)", NEXT_JOBS, ("e0", now, 4))
    for title, params in lists.items():
        plan(f"(b) list, {title}", LIST, params)
    plan("(c) fair ranks: head rank of e0", HEAD_RANK, ("e0",))
    plan("(c) fair ranks: t3's highest waiting rank on e0", TENANT_RANK, ("e0", "t3"))
elif mode == "time":
    print(f"list query, endpoint e0, 50 a page, median (min, max) of 21 runs, ms:")
    for title, params in lists.items():
        times = []
        for _ in range(21):
            started = time.perf_counter()
            got = db.execute(LIST, params).fetchall()
            times.append((time.perf_counter() - started) * 1000)
        print(f"  {title}: {statistics.median(times):.3f} ({min(times):.3f}, {max(times):.3f}), {len(got)} rows")
