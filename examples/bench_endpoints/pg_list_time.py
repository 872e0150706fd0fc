#!/usr/bin/env python3
"""Times postgres_listing.rs's list query on a filled jobpipe database
(pg_fill.sql): one psql session, each page 21 times with \\timing (client
round trip over the local socket), median (min, max) in ms.

    python3 pg_list_time.py URL
"""
import re
import statistics
import subprocess
import sys

url = sys.argv[1]
LIST = """SELECT id, status, created_at, started_at, finished_at, attempts, priority, worker_id,
       error, tenant FROM jobpipe.jobs
 WHERE endpoint = $1 AND (created_at, id) < ($2, $3) AND created_at >= $4
   AND ($5::text IS NULL OR status = $5) AND ($7::text IS NULL OR tenant = $7)
 ORDER BY created_at DESC, id DESC LIMIT $6"""
def run(sql):
    return subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url],
                          input=sql, capture_output=True, text=True, check=True).stdout
half = run("SELECT created_at || ' ' || id FROM jobpipe.jobs WHERE endpoint = 'e0' "
           "ORDER BY created_at DESC, id DESC OFFSET (SELECT count(*) / 2 FROM jobpipe.jobs "
           "WHERE endpoint = 'e0') LIMIT 1").split()
MAX, MIN = 2**63 - 1, -(2**63)
pages = {
    "first page, no filter": ("e0", MAX, "", MIN, None, 50, None),
    "page half-way down (cursor), no filter": ("e0", half[0], half[1], MIN, None, 50, None),
    "first page, status=COMPLETED": ("e0", MAX, "", MIN, "COMPLETED", 50, None),
    "first page, status=FAILED (1 %)": ("e0", MAX, "", MIN, "FAILED", 50, None),
    "page half-way down (cursor), status=FAILED": ("e0", half[0], half[1], MIN, "FAILED", 50, None),
}
def lit(v):
    return "NULL" if v is None else f"'{v}'"
# Each query sent as a one-off statement with literal values, as the
# unnamed statement query_typed sends is planned with its parameters'.
print("list query, endpoint e0, 50 a page, median (min, max) of 21 runs, ms (psql \\timing):")
for title, params in pages.items():
    sql = LIST
    for i, v in sorted(enumerate(params, 1), reverse=True):
        cast = {2: "::bigint", 4: "::bigint", 5: "::text", 7: "::text", 6: "::bigint", 3: "::text", 1: "::text"}[i]
        sql = sql.replace(f"${i}", f"({lit(v)}{cast})")
    script = "\\timing on\n" + "\n".join([sql + ";"] * 21) + "\n"
    out = run(script)
    times = [float(t) for t in re.findall(r"^Time: ([0-9.]+) ms", out, re.M)]
    rows = (len(out.splitlines()) - len(times)) // 21
    print(f"  {title}: {statistics.median(times):.3f} ({min(times):.3f}, {max(times):.3f}), {rows} rows")
