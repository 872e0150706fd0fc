//! What an open dashboard costs the API: the API process's CPU while jobs
//! flow at a steady rate, without the dashboard and with it open in a real
//! headless Chromium, measured in alternating phases of one run.
//!
//! Starts a throw-away PostgreSQL server (tests/support/postgres.rs), one
//! jobpipe API process (`--api-only`) and W worker processes running the
//! compiled C echo handler, and posts jobs to `/run` at `--rate` jobs/s
//! (open loop, at most 256 posts in flight). Each round has two phases of
//! `--phase-secs`:
//!
//! * **off**: no browser; the API's CPU seconds per second (user and
//!   system, from /proc/PID/stat) and the jobs completed per second;
//! * **on**: Chromium with `--tabs` dashboard tabs open (Overview and Jobs
//!   in turn, each polling as a person's open page does); the same
//!   figures.
//!
//! One dashboard's share is `(on - off) / tabs / off`: opening many tabs
//! lifts the dashboard's cost above the machine's noise, and dividing by
//! the tab count gives one tab's. Chromium's own CPU is not the API's, and
//! CPU seconds (not wall time) are counted, so the browser competing for
//! the cores does not count against the API.
//!
//! ```sh
//! cargo run --release --example bench_dashboard -- [--rate R] [--phase-secs S]
//!     [--rounds N] [--tabs T] [--workers W] [--concurrency C]
//! ```

#[allow(dead_code)]
#[path = "../tests/support/postgres.rs"]
mod postgres;
#[path = "../tests/support/prereq.rs"]
#[allow(dead_code)]
mod prereq;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// Measure the API's CPU with and without an open dashboard.
#[derive(Debug, Parser)]
#[command(name = "bench_dashboard")]
struct Args {
    /// Jobs posted per second, the whole run.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of each phase (off, on).
    #[arg(long, default_value_t = 20)]
    phase_secs: u64,
    /// Rounds of (off, on).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Dashboard tabs open in the "on" phases.
    #[arg(long, default_value_t = 10)]
    tabs: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Each worker's `--concurrency`.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// The browser.
    #[arg(long, default_value = "/usr/bin/chromium")]
    chromium: PathBuf,
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
    let echo = std::env::temp_dir().join(format!("jobpipe-dash-echo-{}", std::process::id()));
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
            .args(["--log-level", "WARN"])
            .args(args)
            .env_remove("RUNPOD_WEBHOOK_GET_JOB")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("jobpipe starts"),
    )
}

/// A process's own CPU seconds (user and system), from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let fields: Vec<f64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    (fields[11] + fields[12]) / 100.0 // USER_HZ
}

/// Headless Chromium with dashboard tabs open, each polling, driven by
/// `bench_dashboard/tabs.mjs` (playwright-core): Chromium's headless mode
/// opens one page from its command line, and a page must be shown to poll.
struct Tabs {
    node: Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Tabs {
    /// Opens `args.tabs` tabs on `base`, Overview and Jobs in turn; returns
    /// once every page has loaded.
    fn open(args: &Args, base: &str) -> Tabs {
        use std::io::BufRead;
        let script = PathBuf::from(MANIFEST_DIR).join("examples/bench_dashboard/tabs.mjs");
        let mut node = Command::new("node")
            .arg(script)
            .arg(base)
            .arg(args.tabs.to_string())
            .env("DASH_CHROMIUM", &args.chromium)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node starts (npm ci in tests/browser installs playwright-core)");
        let stdout = node.stdout.take().expect("piped");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let ready = lines
            .next()
            .and_then(Result::ok)
            .expect("the tabs open (see the error above)");
        println!("  {ready}");
        Tabs { node, lines }
    }

    /// Closes the browser; the tabs' requests to the API while open.
    fn close(mut self) -> String {
        let _ = kill(Pid::from_raw(self.node.id() as i32), Signal::SIGTERM);
        let said = self.lines.next().and_then(Result::ok).unwrap_or_default();
        let _ = self.node.wait();
        said
    }
}

async fn completed(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM jobpipe.jobs WHERE status = 'COMPLETED'",
        &[],
    )
    .await
    .expect("count")
    .get(0)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert!(
        args.chromium.exists(),
        "{} not found: install Debian's chromium package",
        args.chromium.display()
    );
    let (jobpipe, echo) = build(&args);
    let own = postgres::own_server().expect("PostgreSQL server binaries are needed");
    let db = own.0.create_database();
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
    let api = spawn(
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
        assert!(started.elapsed() < Duration::from_secs(60), "no API");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let echo = echo.to_string_lossy().into_owned();
    let _workers: Vec<Proc> = (0..args.workers)
        .map(|i| {
            let id = format!("dash-w{i}");
            let slots = args.concurrency.to_string();
            spawn(
                &jobpipe,
                &[
                    "--queue",
                    &url,
                    "--worker-id",
                    &id,
                    "--concurrency",
                    &slots,
                    "--",
                    &echo,
                ],
            )
        })
        .collect();

    // The load: `rate` posts a second, open loop, bounded in flight.
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let poster = {
        let (stop, refused, client) = (stop.clone(), refused.clone(), client.clone());
        let (run, rate) = (format!("{base}/run"), args.rate);
        tokio::spawn(async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(256));
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let per_tick = (rate as f64 / 100.0).max(1.0);
            let mut owed = 0.0;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                owed += per_tick;
                while owed >= 1.0 {
                    owed -= 1.0;
                    n += 1;
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let (client, run, refused) = (client.clone(), run.clone(), refused.clone());
                    tokio::spawn(async move {
                        let answer = client
                            .post(&run)
                            .json(&json!({"input": {"n": n}}))
                            .send()
                            .await;
                        if !answer.is_ok_and(|a| a.status().is_success()) {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        drop(permit);
                    });
                }
            }
        })
    };
    // Warm up: the workers reach their pace, the first minute is rolled.
    tokio::time::sleep(Duration::from_secs(10)).await;

    let api_pid = api.0.id();
    let phase = Duration::from_secs(args.phase_secs);
    let mut figures: Vec<(bool, f64, f64)> = Vec::new();
    for round in 0..args.rounds {
        for on in [false, true] {
            let browser = on.then(|| Tabs::open(&args, &base));
            let (cpu0, done0, t0) = (
                cpu_seconds(api_pid),
                completed(&watch).await,
                Instant::now(),
            );
            tokio::time::sleep(phase).await;
            let (cpu1, done1) = (cpu_seconds(api_pid), completed(&watch).await);
            let secs = t0.elapsed().as_secs_f64();
            if let Some(tabs) = browser {
                println!("  the tabs made {}", tabs.close());
            }
            let (cpu, rate) = ((cpu1 - cpu0) / secs, (done1 - done0) as f64 / secs);
            println!(
                "round {round} dashboard {:<3} API CPU {:5.1} % of a core, {rate:6.0} jobs/s completed",
                if on { "on" } else { "off" },
                cpu * 100.0
            );
            figures.push((on, cpu, rate));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = poster.await;
    let mean = |on: bool, pick: fn(&(bool, f64, f64)) -> f64| {
        let values: Vec<f64> = figures.iter().filter(|f| f.0 == on).map(pick).collect();
        values.iter().sum::<f64>() / values.len() as f64
    };
    let (off_cpu, on_cpu) = (mean(false, |f| f.1), mean(true, |f| f.1));
    let (off_rate, on_rate) = (mean(false, |f| f.2), mean(true, |f| f.2));
    let per_tab = (on_cpu - off_cpu) / args.tabs as f64;
    println!(
        "posted at {} jobs/s ({} posts refused or not sent); completed {off_rate:.0} jobs/s off, {on_rate:.0} on",
        args.rate,
        refused.load(Ordering::Relaxed)
    );
    println!(
        "API CPU: {:.1} % of a core without the dashboard, {:.1} % with {} tabs open",
        off_cpu * 100.0,
        on_cpu * 100.0,
        args.tabs
    );
    println!(
        "one open dashboard adds {:.2} % of a core, {:.2} % of the API's CPU",
        per_tab * 100.0,
        per_tab / off_cpu * 100.0
    );
}
