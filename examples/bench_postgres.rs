//! Benchmark of the PostgreSQL queue with several worker processes.
//!
//! Starts a throw-away PostgreSQL server (the test harness in
//! tests/support/postgres.rs, from the installed server binaries), one
//! jobpipe API process (`--api-only`) and W worker processes running the
//! compiled C echo handler, then measures:
//!
//! * **throughput**: N jobs posted to `/run` as fast as the API takes them
//!   (64 posts in flight); jobs/s from the first job's creation to the last
//!   one's COMPLETED, both on the database's clock;
//! * **idle pick-up latency**: with every worker idle, one job at a time;
//!   the time from its creation to a worker taking it (`started_at -
//!   created_at`, the database's clock), p50 and p99;
//! * **the floor**: the same server doing a job's SQL with `pgbench`, 32
//!   clients for 10 s, three transactions a job (insert it; take one with
//!   `FOR UPDATE SKIP LOCKED`; mark it completed), no HTTP and no
//!   processes, and jobpipe's throughput as a share of it.
//!
//! Every job must end COMPLETED with its input echoed, or the benchmark
//! fails.
//!
//! ```sh
//! cargo run --release --example bench_postgres -- [--jobs N] [--workers W] [--samples S]
//! ```

#[allow(dead_code)]
#[path = "../tests/support/postgres.rs"]
mod postgres;
#[path = "../tests/support/prereq.rs"]
#[allow(dead_code)]
mod prereq;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// Benchmark jobpipe's PostgreSQL queue.
#[derive(Debug, Parser)]
#[command(name = "bench_postgres")]
struct Args {
    /// Jobs for the throughput run.
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Each worker's `--concurrency` (warm handlers).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Run the server without fsync (and synchronous_commit off): the
    /// floor is then the CPU's, not the disk's.
    #[arg(long)]
    no_fsync: bool,
    /// A soak: print the rate, the jobs table's size and its dead rows
    /// every this many completed jobs.
    #[arg(long)]
    report_every: Option<usize>,
    /// Single jobs for the idle pick-up latency.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Run this jobpipe binary instead of building the release one.
    #[arg(long)]
    jobpipe: Option<PathBuf>,
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn build(args: &Args) -> (PathBuf, PathBuf) {
    let jobpipe = args.jobpipe.clone().unwrap_or_else(|| {
        let status = Command::new("cargo")
            .args(["build", "--release", "--bin", "jobpipe"])
            .current_dir(MANIFEST_DIR)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build failed");
        PathBuf::from(MANIFEST_DIR).join("target/release/jobpipe")
    });
    let echo = std::env::temp_dir().join(format!("jobpipe-bench-echo-{}", std::process::id()));
    let status = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&echo)
        .arg(PathBuf::from(MANIFEST_DIR).join("handlers/c/echo.c"))
        .status()
        .expect("gcc runs");
    assert!(status.success(), "gcc could not compile handlers/c/echo.c");
    (jobpipe, echo)
}

fn spawn(jobpipe: &PathBuf, args: &[&str]) -> Proc {
    Proc(
        Command::new(jobpipe)
            // Before the arguments, which may end with `-- HANDLER`.
            .args(["--log-level", "WARN"])
            .args(args)
            .env_remove("RUNPOD_WEBHOOK_GET_JOB")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("jobpipe starts"),
    )
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let (jobpipe, echo) = build(&args);
    let durability = if args.no_fsync { "off" } else { "on" };
    let own = postgres::own_server_with(&format!(
        "fsync = {durability}\nsynchronous_commit = {durability}\nfull_page_writes = {durability}\nshared_preload_libraries = 'pg_stat_statements'\n"
    ))
    .expect("PostgreSQL server binaries are needed");
    let server = own.0;
    let db = server.create_database();
    db.psql("CREATE EXTENSION pg_stat_statements");
    let url = db.url();
    let (watch, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let base = format!("http://{addr}");
    let _api = spawn(
        &jobpipe,
        &[
            "--serve-api",
            "--api-only",
            "--api-addr",
            &addr,
            "--queue",
            &url,
        ],
    );
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client
        .get(format!("{base}/health"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the API did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let echo = echo.to_string_lossy().into_owned();
    let _workers: Vec<Proc> = (0..args.workers)
        .map(|i| {
            let id = format!("bench-w{i}");
            spawn(
                &jobpipe,
                &[
                    "--queue",
                    &url,
                    "--worker-id",
                    &id,
                    "--concurrency",
                    &args.concurrency.to_string(),
                    "--",
                    &echo,
                ],
            )
        })
        .collect();
    while count_workers(&client, &base).await < args.workers as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the workers did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Idle pick-up latency: one job at a time, every worker idle.
    for i in 0..args.samples {
        let id = post(&client, &base, json!({"n": i})).await;
        wait_done(&watch, &format!("id = '{id}'"), 1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies: Vec<i64> = db
        .psql("SELECT started_at - created_at FROM jobpipe.jobs")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    latencies.sort();
    db.psql("DELETE FROM jobpipe.jobs");

    // Throughput: N jobs through /run.
    db.psql("SELECT pg_stat_statements_reset()");
    let commits_before = commits(&db);
    let wall = Instant::now();
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..args.jobs {
        if posts.len() >= 64 {
            posts.join_next().await.unwrap().unwrap();
        }
        let (client, base) = (client.clone(), base.clone());
        posts.spawn(async move {
            post(&client, &base, json!({"n": i})).await;
        });
    }
    while let Some(done) = posts.join_next().await {
        done.unwrap();
    }
    let polls = match args.report_every {
        Some(every) => soak_report(&watch, args.jobs, every).await,
        None => wait_done(&watch, "true", args.jobs).await,
    };
    let wall = wall.elapsed();
    // Statistics of idle backends reach pg_stat_database within 10 s.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let commits = commits(&db) - commits_before - polls - 1;
    let statements: f64 = db
        .psql(
            "SELECT sum(calls) FROM pg_stat_statements
              WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND query NOT IN ('BEGIN', 'COMMIT', 'ROLLBACK')
                AND query NOT LIKE '%pg_stat%' AND query NOT LIKE '%bench-poll%'",
        )
        .parse()
        .unwrap();
    let span_ms: i64 = db
        .psql("SELECT max(finished_at) - min(created_at) FROM jobpipe.jobs")
        .parse()
        .unwrap();
    let bad = db.psql(
        "SELECT count(*) FROM jobpipe.jobs WHERE status <> 'COMPLETED' OR (output::json -> 'n') IS NULL",
    );
    assert_eq!(
        bad, "0",
        "jobs that did not complete with their input echoed"
    );
    println!(
        "workers: {} jobpipe processes, --concurrency {}, handler handlers/c/echo.c; server fsync {durability}",
        args.workers, args.concurrency
    );
    println!(
        "throughput: {} jobs from /run to COMPLETED in {:.2}s: {:.0} jobs/s (wall clock {:.2}s)",
        args.jobs,
        span_ms as f64 / 1000.0,
        args.jobs as f64 / (span_ms.max(1) as f64 / 1000.0),
        wall.as_secs_f64()
    );
    println!(
        "idle pick-up latency over {} jobs: p50 {} ms, p99 {} ms, max {} ms",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
    println!(
        "per job (pg_stat_statements, the bench's own queries left out): {:.2} statements besides BEGIN/COMMIT, {:.2} commits",
        statements / args.jobs as f64,
        commits as f64 / args.jobs as f64
    );
    let jobpipe_rate = args.jobs as f64 / (span_ms.max(1) as f64 / 1000.0);
    let floor = floor(server, &db, &url);
    println!(
        "floor: pgbench, the same server, 32 clients, insert + take (SKIP LOCKED) + complete: {floor:.0} jobs/s; jobpipe / floor = {:.2}",
        jobpipe_rate / floor
    );
}

/// Jobs per second the database does with a job's SQL alone (see the
/// module docs), measured by `pgbench` on a table shaped like the queue's.
/// A take that finds every queued job locked by other clients takes none
/// (its completion is then a no-op) and still counts, so the floor errs
/// high, against jobpipe.
fn floor(server: &postgres::PgServer, db: &postgres::TestDb, url: &str) -> f64 {
    db.psql(
        "CREATE TABLE floor_jobs (
            id bigserial PRIMARY KEY, status text NOT NULL, payload text NOT NULL,
            lease_token text, output text, queued_at bigint NOT NULL);
         CREATE INDEX floor_queued ON floor_jobs (queued_at, id) WHERE status = 'IN_QUEUE'",
    );
    let script = std::env::temp_dir().join(format!("jobpipe-floor-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "INSERT INTO floor_jobs (status, payload, queued_at)
            VALUES ('IN_QUEUE', '{\"input\": {\"n\": 1}}', (extract(epoch FROM clock_timestamp()) * 1000)::bigint);
WITH taken AS (UPDATE floor_jobs SET status = 'IN_PROGRESS', lease_token = md5(random()::text) WHERE id = (SELECT id FROM floor_jobs WHERE status = 'IN_QUEUE' ORDER BY queued_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id) SELECT coalesce((SELECT id FROM taken), 0) AS id \\gset
UPDATE floor_jobs SET status = 'COMPLETED', output = payload, lease_token = NULL WHERE id = :id;
",
    )
    .unwrap();
    let output = Command::new(server.tool("pgbench"))
        .args(["-n", "-c", "32", "-j", "2", "-T", "10", "-f"])
        .arg(&script)
        .arg(url)
        .output()
        .expect("pgbench runs");
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pgbench failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's output: {text}"))
}

async fn post(client: &reqwest::Client, base: &str, input: Value) -> String {
    let response = client
        .post(format!("{base}/run"))
        .json(&json!({"input": input}))
        .send()
        .await
        .expect("/run answers");
    assert!(
        response.status().is_success(),
        "/run answered {}",
        response.status()
    );
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

async fn count_workers(client: &reqwest::Client, base: &str) -> u64 {
    let Ok(response) = client.get(format!("{base}/health")).send().await else {
        return 0;
    };
    let body: Value = response.json().await.unwrap_or_default();
    body["workers"]["idle"].as_u64().unwrap_or(0) + body["workers"]["running"].as_u64().unwrap_or(0)
}

/// Waits until `count` jobs meeting `condition` completed; the number of
/// queries (transactions) it made.
async fn wait_done(db: &tokio_postgres::Client, condition: &str, count: usize) -> i64 {
    let sql = format!(
        "SELECT count(*) /* bench-poll */ FROM jobpipe.jobs WHERE status = 'COMPLETED' AND ({condition})"
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut polls = 1;
    while (db.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) as usize) < count {
        assert!(Instant::now() < deadline, "jobs did not complete in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
        polls += 1;
    }
    polls
}

/// [`wait_done`] for a soak: a line every `every` completed jobs with the
/// rate since the last line, the size of the jobs table with its indexes
/// and its dead rows.
async fn soak_report(db: &tokio_postgres::Client, count: usize, every: usize) -> i64 {
    let sql = "SELECT count(*) /* bench-poll */ FROM jobpipe.jobs WHERE status = 'COMPLETED'";
    let size = "SELECT pg_total_relation_size('jobpipe.jobs') /* bench-poll */,
                       (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'jobpipe.jobs'::regclass),
                       (SELECT count(*) FROM jobpipe.jobs)";
    let (mut polls, mut next, mut last) = (0, every, Instant::now());
    let mut done = 0;
    while done < count {
        tokio::time::sleep(Duration::from_millis(200)).await;
        done = db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) as usize;
        polls += 1;
        if done >= next {
            let row = db.query_one(size, &[]).await.unwrap();
            polls += 1;
            let (bytes, dead, rows): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            println!(
                "soak: {done} completed, {:.0} jobs/s over the last {every}; jobs table with indexes {:.1} MB for {rows} rows ({:.0} bytes a row), {dead} dead rows",
                every as f64 / last.elapsed().as_secs_f64(),
                bytes as f64 / 1e6,
                bytes as f64 / rows.max(1) as f64,
            );
            last = Instant::now();
            next += every;
        }
    }
    polls
}

/// Transactions committed in the bench's database so far.
fn commits(db: &postgres::TestDb) -> i64 {
    db.psql("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        .parse()
        .unwrap()
}
