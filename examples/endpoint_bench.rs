//! Benchmark of the self-hosted endpoint: jobs/s and latency of `/runsync`
//! through `jobpipe --serve-api` with the C echo handler (compiled here with
//! gcc), so the figures are jobpipe's and SQLite's, not an interpreter's.
//!
//! ```sh
//! cargo run --release --example endpoint_bench -- [--jobs N] [--concurrency C] [--clients K] [--jobpipe PATH]
//! ```
//!
//! K clients each send `/runsync` calls one after another until N jobs are
//! done; every answer must be COMPLETED with the input echoed back. Prints
//! throughput and latency percentiles, the floors (SQLite alone doing a
//! job's three transactions), and where each run's CPU went; see
//! docs/benchmark.md.

#[allow(dead_code)] // own_children_cpu is bench_postgres's
#[path = "bench_endpoints/cpu.rs"]
mod cpu;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Options {
    jobs: usize,
    concurrency: usize,
    clients: usize,
    jobpipe: Option<PathBuf>,
}

fn options() -> Options {
    let mut options = Options {
        jobs: 5000,
        concurrency: 4,
        clients: 8,
        jobpipe: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--jobs" => options.jobs = value().parse().expect("--jobs N"),
            "--concurrency" => options.concurrency = value().parse().expect("--concurrency C"),
            "--clients" => options.clients = value().parse().expect("--clients K"),
            "--jobpipe" => options.jobpipe = Some(PathBuf::from(value())),
            other => panic!("unknown option {other}; see the file's docs"),
        }
    }
    options
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn build_jobpipe() -> PathBuf {
    let status = Command::new("cargo")
        .args(["build", "--release", "--bin", "jobpipe"])
        .current_dir(repo())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build --release failed");
    repo().join("target/release/jobpipe")
}

fn compile_echo(dir: &Path) -> PathBuf {
    let out = dir.join("echo");
    let status = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(repo().join("handlers/c/echo.c"))
        .status()
        .expect("gcc runs");
    assert!(status.success(), "gcc failed");
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() {
    let options = options();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let jobpipe = options.jobpipe.clone().unwrap_or_else(build_jobpipe);
    let echo = compile_echo(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(&jobpipe)
        .args(["--serve-api", "--log-level", "warn"])
        .args(["--api-addr", &format!("127.0.0.1:{port}")])
        .args(["--concurrency", &options.concurrency.to_string()])
        .arg("--queue")
        .arg(format!("sqlite:{}", dir.path().join("queue.db").display()))
        .arg("--spool-dir")
        .arg(dir.path().join("spool"))
        .arg("--")
        .arg(&echo)
        .stdout(Stdio::null())
        .spawn()
        .expect("jobpipe starts");
    let base = format!("http://127.0.0.1:{port}/v2/default");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.clients)
        .build()
        .unwrap();
    let started = Instant::now();
    while http.get(format!("{base}/health")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "jobpipe did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let own = std::process::id() as i32;
    let cpu_before = (cpu::tree_cpu(child.id() as i32), cpu::cpu_fields(own).0);
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..options.clients {
        let (http, base, next, jobs) = (http.clone(), base.clone(), next.clone(), options.jobs);
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= jobs {
                    return latencies;
                }
                let sent = Instant::now();
                let answer: Value = http
                    .post(format!("{base}/runsync"))
                    .json(&json!({"input": {"n": n, "text": "hello"}}))
                    .send()
                    .await
                    .expect("an answer")
                    .json()
                    .await
                    .expect("JSON");
                latencies.push(sent.elapsed());
                assert_eq!(answer["status"], "COMPLETED", "{answer}");
                assert_eq!(answer["output"]["n"], n, "{answer}");
            }
        }));
    }
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.await.expect("client"));
    }
    let elapsed = started.elapsed();
    let jobpipe_cpu = cpu::tree_cpu(child.id() as i32) - cpu_before.0;
    let client_cpu = cpu::cpu_fields(own).0 - cpu_before.1;
    latencies.sort();
    let rss = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_default();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    println!(
        "jobs {}  handlers {}  clients {}  (C echo handler, SQLite queue)",
        options.jobs, options.concurrency, options.clients
    );
    println!(
        "throughput      {:.0} jobs/s ({} jobs in {:.2}s)",
        options.jobs as f64 / elapsed.as_secs_f64(),
        options.jobs,
        elapsed.as_secs_f64()
    );
    for (name, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        println!(
            "/runsync {name}    {:.2} ms",
            percentile(&latencies, p).as_secs_f64() * 1000.0
        );
    }
    println!(
        "/runsync max    {:.2} ms",
        latencies.last().unwrap().as_secs_f64() * 1000.0
    );
    println!("jobpipe peak RSS {rss}; exit status {status}");
    assert!(status.success(), "jobpipe exited with {status}");
    let rate = options.jobs as f64 / elapsed.as_secs_f64();
    let per_job = |seconds: f64| seconds * 1000.0 / options.jobs as f64;
    println!(
        "CPU per job, jobpipe's run: jobpipe and its handlers {:.3} ms, this benchmark's HTTP client {:.3} ms, together {:.3} ms; {:.2} cores busy",
        per_job(jobpipe_cpu),
        per_job(client_cpu),
        per_job(jobpipe_cpu + client_cpu),
        (jobpipe_cpu + client_cpu) / elapsed.as_secs_f64()
    );
    for synchronous in ["NORMAL", "FULL"] {
        let before = cpu::cpu_fields(own).0;
        let floor = sqlite_floor(dir.path(), synchronous, options.jobs);
        println!(
            "floor: SQLite alone (rusqlite, WAL, synchronous={synchronous}, one connection), insert + take + complete: {floor:.0} jobs/s; jobpipe / floor = {:.2}; CPU per job {:.3} ms",
            rate / floor,
            per_job(cpu::cpu_fields(own).0 - before)
        );
    }
}

/// Jobs per second SQLite does with a job's three transactions alone
/// (insert it; take the oldest queued one; mark it completed), on a table
/// shaped like the queue's, in a file beside jobpipe's, one connection
/// with no waiting on others: the best the database can do.
fn sqlite_floor(dir: &Path, synchronous: &str, jobs: usize) -> f64 {
    let path = dir.join(format!("floor-{synchronous}.db"));
    let conn = rusqlite::Connection::open(&path).expect("the floor's database");
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous};
         CREATE TABLE jobs (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
             status TEXT NOT NULL, payload TEXT NOT NULL, output TEXT,
             lease_token TEXT, queued_at INTEGER NOT NULL);
         CREATE INDEX jobs_queued ON jobs (queued_at, seq) WHERE status = 'IN_QUEUE';"
    ))
    .expect("the floor's schema");
    let started = Instant::now();
    for n in 0..jobs {
        let payload = json!({"input": {"n": n, "text": "hello"}}).to_string();
        conn.execute(
            "INSERT INTO jobs (id, status, payload, queued_at) VALUES (?1, 'IN_QUEUE', ?2, ?3)",
            rusqlite::params![format!("floor-{n}"), payload, n as i64],
        )
        .unwrap();
        let seq: i64 = conn
            .query_row(
                "UPDATE jobs SET status = 'IN_PROGRESS', lease_token = hex(randomblob(16))
                  WHERE seq = (SELECT seq FROM jobs WHERE status = 'IN_QUEUE'
                                ORDER BY queued_at, seq LIMIT 1)
                 RETURNING seq",
                [],
                |row| row.get(0),
            )
            .unwrap();
        conn.execute(
            "UPDATE jobs SET status = 'COMPLETED', output = payload, lease_token = NULL WHERE seq = ?1",
            [seq],
        )
        .unwrap();
    }
    jobs as f64 / started.elapsed().as_secs_f64()
}
