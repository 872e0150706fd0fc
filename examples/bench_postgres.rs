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
//!   processes, and jobpipe's throughput as a share of it; and the same
//!   three transactions by one client in a row, the floor of a lone
//!   `/runsync` (which jobpipe's passes through three processes).
//!
//! Every job must end COMPLETED with its input echoed, or the benchmark
//! fails.
//!
//! ```sh
//! cargo run --release --example bench_postgres -- [--jobs N] [--workers W] [--samples S]
//!     [--endpoints E] [--tenants T]
//! ```
//!
//! With `--endpoints E` the jobs go round-robin to `/v2/e0/run` ..
//! `/v2/e{E-1}/run` and every worker serves all of them (`--endpoint
//! e0,e1,..`); the latency samples and `/runsync` calls go to `e0`. With
//! `--tenants T` the API reads a keys file of T tenants (role submit,
//! endpoints `["*"]`) and the throughput run's job `i` is posted with
//! tenant `i % T`'s key (the bench's other calls use a master `--api-key`).

#[path = "bench_endpoints/cpu.rs"]
mod cpu;
#[allow(dead_code)]
#[path = "../tests/support/postgres.rs"]
mod postgres;
#[path = "../tests/support/prereq.rs"]
#[allow(dead_code)]
mod prereq;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use cpu::{cpu_fields, own_children_cpu, tree_cpu};

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
    /// In a soak, post a job only while fewer than this many posted jobs
    /// have not completed: a steady state at the rate the workers keep,
    /// rather than a burst the queue drains.
    #[arg(long, default_value_t = 2000)]
    backlog: usize,
    /// Hold a transaction (REPEATABLE READ, its snapshot taken) open in the
    /// same database for this many seconds from the start of the
    /// throughput run, as a long report or a forgotten session would: dead
    /// rows cannot be vacuumed meanwhile.
    #[arg(long, value_name = "SECONDS")]
    hold_snapshot: Option<u64>,
    /// Single jobs for the idle pick-up latency.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Endpoints e0..eE-1 the jobs are spread over, round-robin; every
    /// worker serves all of them. 0: the root routes (endpoint "default").
    #[arg(long, default_value_t = 0)]
    endpoints: usize,
    /// Tenants (API keys) the jobs are submitted with, round-robin. 0: no
    /// keys file, no tenants.
    #[arg(long, default_value_t = 0)]
    tenants: usize,
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
    // Endpoints: the prefix of the latency and /runsync calls, and the
    // prefixes the throughput run's jobs go to in turn.
    let names: Vec<String> = (0..args.endpoints).map(|e| format!("e{e}")).collect();
    let prefixes: Vec<String> = if names.is_empty() {
        vec![String::new()]
    } else {
        names.iter().map(|n| format!("/v2/{n}")).collect()
    };
    let first = prefixes[0].clone();
    let master = "bench-master-key-0123456789".to_owned();
    let tenant_keys: Vec<String> = (0..args.tenants)
        .map(|t| format!("bench-tenant-key-{t:04}-abcdef"))
        .collect();
    let keys_file =
        std::env::temp_dir().join(format!("jobpipe-bench-keys-{}.toml", std::process::id()));
    let mut api_args: Vec<String> = [
        "--serve-api",
        "--api-only",
        "--api-addr",
        &addr,
        "--queue",
        &url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !tenant_keys.is_empty() {
        let toml: String = tenant_keys
            .iter()
            .enumerate()
            .map(|(t, key)| {
                format!("[[keys]]\nname = \"t{t}\"\nkey = \"{key}\"\nendpoints = [\"*\"]\nrole = \"submit\"\n\n")
            })
            .collect();
        std::fs::write(&keys_file, toml).unwrap();
        api_args.extend([
            "--api-keys".to_owned(),
            keys_file.to_string_lossy().into_owned(),
            "--api-key".to_owned(),
            master.clone(),
        ]);
    }
    let api_refs: Vec<&str> = api_args.iter().map(String::as_str).collect();
    let _api = spawn(&jobpipe, &api_refs);
    let mut headers = reqwest::header::HeaderMap::new();
    if !tenant_keys.is_empty() {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {master}").parse().unwrap(),
        );
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    let started = Instant::now();
    while client
        .get(format!("{base}{first}/health"))
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
    let served = if names.is_empty() {
        "default".to_owned()
    } else {
        names.join(",")
    };
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
                    "--endpoint",
                    &served,
                    "--concurrency",
                    &args.concurrency.to_string(),
                    "--",
                    &echo,
                ],
            )
        })
        .collect();
    while count_workers(&client, &format!("{base}{first}")).await < args.workers as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the workers did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Idle pick-up latency: one job at a time, every worker idle.
    for i in 0..args.samples {
        let id = post(&client, &format!("{base}{first}"), None, json!({"n": i})).await;
        wait_done(&watch, &format!("id = '{id}'"), 1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies: Vec<i64> = db
        .psql("SELECT started_at - created_at FROM jobpipe.jobs")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    latencies.sort();
    // /runsync with one client: the lone caller's round trip.
    let mut runsync = Vec::with_capacity(args.samples);
    for i in 0..args.samples {
        let sent = Instant::now();
        let answer: Value = client
            .post(format!("{base}{first}/runsync"))
            .json(&json!({"input": {"n": i}}))
            .send()
            .await
            .expect("/runsync answers")
            .json()
            .await
            .unwrap();
        runsync.push(sent.elapsed().as_micros() as i64);
        assert_eq!(answer["status"], "COMPLETED", "{answer}");
    }
    runsync.sort();
    db.psql("DELETE FROM jobpipe.jobs");

    // Throughput: N jobs through /run.
    db.psql("SELECT pg_stat_statements_reset()");
    let commits_before = commits(&db);
    let postmaster = server.postmaster_pid();
    let jobpipe_pids: Vec<i32> = std::iter::once(&_api)
        .chain(&_workers)
        .map(|p| p.0.id() as i32)
        .collect();
    let own_pid = std::process::id() as i32;
    let (pg_cpu_before, jobpipe_cpu_before, client_cpu_before) = (
        tree_cpu(postmaster),
        jobpipe_pids.iter().map(|&p| tree_cpu(p)).sum::<f64>(),
        cpu_fields(own_pid).0,
    );
    // Watched from the start, so a soak reports while jobs are posted.
    let (watcher, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let (jobs, report_every) = (args.jobs, args.report_every);
    let posted = Arc::new(AtomicUsize::new(0));
    let posted_count = posted.clone();
    let completed = Arc::new(AtomicUsize::new(0));
    let completed_count = completed.clone();
    let waiter = tokio::spawn(async move {
        match report_every {
            Some(every) => {
                soak_report(&watcher, &posted_count, &completed_count, jobs, every).await
            }
            None => wait_done(&watcher, "true", jobs).await,
        }
    });
    if let Some(seconds) = args.hold_snapshot {
        let (mut holder, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        tokio::spawn(async move {
            let tx = holder
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .start()
                .await
                .unwrap();
            tx.query_one("SELECT count(*) FROM jobpipe.jobs", &[])
                .await
                .unwrap();
            println!("holding a snapshot open for {seconds} s");
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            tx.commit().await.unwrap();
            println!("the snapshot was released");
        });
    }
    // The take's plan, with the queue busy: EXPLAIN ANALYZE in a
    // transaction that is rolled back, two seconds into the run.
    let explain_url = url.clone();
    let explain_endpoints: Vec<String> = served.split(',').map(str::to_owned).collect();
    let explain = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (mut client, connection) = tokio_postgres::connect(&explain_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let tx = client.transaction().await.unwrap();
        // The plan of jobpipe.take's statement (migration 9), under the
        // function's settings, for the endpoints the workers serve.
        tx.batch_execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
            .await
            .unwrap();
        let plan = tx
            .query(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) WITH picked AS (
                    SELECT head.id FROM unnest($1::text[]) AS e (name),
                    LATERAL (
                      SELECT q.id, q.priority, q.fair_rank, q.queued_at, q.seq FROM jobpipe.jobs AS q
                       WHERE q.endpoint = e.name AND q.status = 'IN_QUEUE'
                         AND q.run_after <= jobpipe.now_ms() AND q.queued_at + q.ttl_ms > jobpipe.now_ms()
                       ORDER BY q.priority DESC, q.fair_rank, q.queued_at, q.seq
                       LIMIT 4 FOR UPDATE SKIP LOCKED) AS head
                    ORDER BY head.priority DESC, head.fair_rank, head.queued_at, head.seq
                    LIMIT 4)
                 UPDATE jobpipe.jobs AS j SET status = 'IN_PROGRESS'
                   FROM picked WHERE j.id = picked.id RETURNING j.id",
                &[&explain_endpoints],
            )
            .await
            .unwrap();
        let _ = tx.rollback().await;
        plan.iter()
            .map(|row| row.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n  ")
    });
    let wall = Instant::now();
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..args.jobs {
        if posts.len() >= 64 {
            posts.join_next().await.unwrap().unwrap();
        }
        while args.report_every.is_some()
            && i.saturating_sub(completed.load(Ordering::SeqCst)) >= args.backlog
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let target = format!("{base}{}", prefixes[i % prefixes.len()]);
        let key = (!tenant_keys.is_empty()).then(|| tenant_keys[i % tenant_keys.len()].clone());
        let (client, posted) = (client.clone(), posted.clone());
        posts.spawn(async move {
            post(&client, &target, key, json!({"n": i})).await;
            posted.fetch_add(1, Ordering::SeqCst);
        });
    }
    while let Some(done) = posts.join_next().await {
        done.unwrap();
    }
    let polls = waiter.await.unwrap();
    let pg_cpu = tree_cpu(postmaster) - pg_cpu_before;
    let jobpipe_cpu = jobpipe_pids.iter().map(|&p| tree_cpu(p)).sum::<f64>() - jobpipe_cpu_before;
    let client_cpu = cpu_fields(own_pid).0 - client_cpu_before;
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
        "workers: {} jobpipe processes, --concurrency {}, --endpoint {served}, handler handlers/c/echo.c; server fsync {durability}; {} endpoint(s), {} tenant(s)",
        args.workers, args.concurrency, prefixes.len(), args.tenants
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
        "/runsync, one client, {} calls: p50 {:.2} ms, p99 {:.2} ms",
        runsync.len(),
        percentile(&runsync, 0.5) as f64 / 1000.0,
        percentile(&runsync, 0.99) as f64 / 1000.0
    );
    println!(
        "per job (pg_stat_statements, the bench's own queries left out): {:.2} statements besides BEGIN/COMMIT, {:.2} commits",
        statements / args.jobs as f64,
        commits as f64 / args.jobs as f64
    );
    println!("the take, 2 s into the run:\n  {}", explain.await.unwrap());
    println!(
        "statements by the server's time (pg_stat_statements: calls per job, mean and total ms):"
    );
    let top = db.psql(&format!(
        "SELECT round(calls::numeric / {jobs}, 2), round(mean_exec_time::numeric, 3),
                round(total_exec_time::numeric), regexp_replace(left(query, 90), '\\s+', ' ', 'g')
           FROM pg_stat_statements
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND query NOT LIKE '%pg_stat%' AND query NOT LIKE '%bench-poll%'
          ORDER BY total_exec_time DESC LIMIT 10",
        jobs = args.jobs
    ));
    for line in top.lines() {
        println!("  {line}");
    }
    let jobpipe_rate = args.jobs as f64 / (span_ms.max(1) as f64 / 1000.0);
    let (pg_floor_before, own_before) = (tree_cpu(postmaster), own_children_cpu());
    let (floor, floor_jobs) = floor(server, &db, &url);
    let (pg_floor, pgbench_cpu) = (
        tree_cpu(postmaster) - pg_floor_before,
        own_children_cpu() - own_before,
    );
    let per_job = |seconds: f64, jobs: f64| seconds * 1000.0 / jobs;
    let jobs = args.jobs as f64;
    println!(
        "CPU per job, jobpipe's run: PostgreSQL {:.2} ms, jobpipe's processes and handlers {:.2} ms, this benchmark's HTTP client {:.2} ms, together {:.2} ms",
        per_job(pg_cpu, jobs),
        per_job(jobpipe_cpu, jobs),
        per_job(client_cpu, jobs),
        per_job(pg_cpu + jobpipe_cpu + client_cpu, jobs)
    );
    println!(
        "CPU per job, the floor: PostgreSQL {:.2} ms, pgbench {:.2} ms, together {:.2} ms (both runs share this machine's {} cores)",
        per_job(pg_floor, floor_jobs),
        per_job(pgbench_cpu, floor_jobs),
        per_job(pg_floor + pgbench_cpu, floor_jobs),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "floor: pgbench, the same server, 32 clients, insert + take (SKIP LOCKED) + complete: {floor:.0} jobs/s; jobpipe / floor = {:.2}",
        jobpipe_rate / floor
    );
    let lone = latency_floor(server, &db, &url);
    println!(
        "/runsync floor: one pgbench client, the same three transactions in a row: {lone:.2} ms a job; jobpipe's /runsync p50 / floor = {:.1}",
        percentile(&runsync, 0.5) as f64 / 1000.0 / lone
    );
}

/// Jobs per second the database does with a job's SQL alone (see the
/// module docs), measured by `pgbench` on a table shaped like the queue's.
/// A take that finds every queued job locked by other clients takes none
/// (its completion is then a no-op) and still counts, so the floor errs
/// high, against jobpipe.
fn floor(server: &postgres::PgServer, db: &postgres::TestDb, url: &str) -> (f64, f64) {
    let text = pgbench_floor(server, db, url, 32, 10);
    let tps = pgbench_figure(&text, "tps = ");
    let jobs = pgbench_figure(&text, "number of transactions actually processed: ");
    (tps, jobs)
}

/// The number after `prefix` on the line of pgbench's output that starts
/// with it.
fn pgbench_figure(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix:?} in pgbench's output: {text}"))
}

/// The floor of a lone `/runsync`: one `pgbench` client doing a job's
/// three transactions in a row, for 5 s; the mean time of a job in ms.
fn latency_floor(server: &postgres::PgServer, db: &postgres::TestDb, url: &str) -> f64 {
    pgbench_figure(&pgbench_floor(server, db, url, 1, 5), "latency average = ")
}

/// Runs the floor's script with `clients` for `seconds`; pgbench's output.
fn pgbench_floor(
    server: &postgres::PgServer,
    db: &postgres::TestDb,
    url: &str,
    clients: usize,
    seconds: u64,
) -> String {
    db.psql(
        "DROP TABLE IF EXISTS floor_jobs;
         CREATE TABLE floor_jobs (
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
        .args(["-n", "-f"])
        .arg(&script)
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &seconds.to_string()])
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
    text.into_owned()
}

async fn post(client: &reqwest::Client, base: &str, key: Option<String>, input: Value) -> String {
    let mut request = client
        .post(format!("{base}/run"))
        .json(&json!({"input": input}));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("/run answers");
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
/// Completed jobs are those posted and no longer queued or running: the
/// count the partial indexes answer, where counting COMPLETED rows would
/// scan a table of a million rows five times a second and weigh on the
/// very run it measures.
async fn soak_report(
    db: &tokio_postgres::Client,
    posted: &AtomicUsize,
    completed: &AtomicUsize,
    count: usize,
    every: usize,
) -> i64 {
    let sql = "SELECT count(*) /* bench-poll */ FROM jobpipe.jobs
                WHERE status IN ('IN_QUEUE', 'IN_PROGRESS')";
    let size = "SELECT pg_total_relation_size('jobpipe.jobs') /* bench-poll */,
                       n_dead_tup, n_live_tup
                  FROM pg_stat_user_tables WHERE relid = 'jobpipe.jobs'::regclass";
    let (mut polls, mut next, mut last) = (0, every, Instant::now());
    let mut done = 0;
    while done < count {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let posted_before = posted.load(Ordering::SeqCst);
        let unfinished = db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) as usize;
        done = posted_before.saturating_sub(unfinished);
        completed.store(done, Ordering::SeqCst);
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
