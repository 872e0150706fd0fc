//! Black-box tests of `jobpipe --serve-api`: the real binary, the official
//! Python client, `kill -9` in the middle of a run, and retention keeping
//! the database flat over 1,000 jobs.

mod support;
use support::prereq::venv_python;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::daemon::{daemon, Daemon};
use support::endpoint::free_port;

const KEY: &str = "blackbox-key";
const WAIT: Duration = Duration::from_secs(120);

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A jobpipe process serving the endpoint API.
struct Server {
    daemon: Daemon,
    base: String,
    http: reqwest::Client,
}

impl Server {
    async fn start(queue: &Path, handler: &[String], extra: &[&str]) -> Server {
        let port = free_port();
        let daemon = daemon()
            .args(["--serve-api", "--api-key", KEY, "--log-level", "info"])
            .args(["--api-addr", &format!("127.0.0.1:{port}")])
            .arg("--queue")
            .arg(format!("sqlite:{}", queue.display()))
            .arg("--spool-dir")
            .arg(queue.with_extension("spool"))
            .args(extra)
            .arg("--")
            .args(handler)
            .start();
        let server = Server {
            daemon,
            base: format!("http://127.0.0.1:{port}/v2/default"),
            http: reqwest::Client::new(),
        };
        let started = Instant::now();
        while server.try_get("/health").await.is_none() {
            assert!(
                started.elapsed() < WAIT,
                "jobpipe did not start serving\n{}",
                server.daemon.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    async fn try_get(&self, path: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    async fn get(&self, path: &str) -> Value {
        self.try_get(path).await.expect("jobpipe answers")
    }

    async fn submit(&self, input: Value) -> String {
        let answer: Value = self
            .http
            .post(format!("{}/run", self.base))
            .bearer_auth(KEY)
            .json(&json!({ "input": input }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["id"].as_str().expect("an id").to_owned()
    }

    /// Waits until `/health` satisfies `done`; returns its jobs.
    async fn wait_health(&self, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let health = self.get("/health").await;
            if done(&health["jobs"]) {
                return health["jobs"].clone();
            }
            assert!(started.elapsed() < WAIT, "gave up waiting: {health}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn rss_kib(&self) -> u64 {
        support::rss_kib(self.daemon.pid())
    }

    fn kill9(mut self) {
        self.daemon.kill();
    }

    /// SIGTERM; the exit code.
    fn stop(mut self) -> i32 {
        self.daemon.signal(Signal::SIGTERM);
        self.daemon.wait(WAIT).code().unwrap_or(-1)
    }
}

fn logging_handler(log: &Path) -> Vec<String> {
    vec![
        "python3".into(),
        fixture("logging_handler.py"),
        log.display().to_string(),
    ]
}

/// How often each job id ran, from the logging handler's file.
fn runs(log: &Path) -> HashMap<String, usize> {
    let mut runs = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let id = line.split(' ').next().unwrap_or_default();
        *runs.entry(id.to_owned()).or_default() += 1;
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_restart_every_job_ends_once() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, log) = (dir.path().join("queue.db"), dir.path().join("runs.log"));
    let handler = logging_handler(&log);
    let server = Server::start(&queue, &handler, &["--concurrency", "4"]).await;
    let mut ids = Vec::new();
    for i in 0..500 {
        ids.push(server.submit(json!({"n": i, "ms": 30})).await);
    }
    let started = Instant::now();
    while runs(&log).len() < 120 {
        assert!(started.elapsed() < WAIT, "jobs do not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    let before_restart = runs(&log);
    assert!(before_restart.len() < 500, "the kill came mid-run");
    let server = Server::start(&queue, &handler, &["--concurrency", "4"]).await;
    let jobs = server
        .wait_health(|jobs| jobs["inQueue"] == 0 && jobs["inProgress"] == 0)
        .await;
    assert_eq!(jobs["completed"], 500, "{jobs}");
    let runs = runs(&log);
    let mut run_again = 0;
    for id in &ids {
        let status = server.get(&format!("/status/{id}")).await;
        assert_eq!(status["status"], "COMPLETED", "{status}");
        let times = runs.get(id).copied().unwrap_or(0);
        assert!(times >= 1, "job {id} ran");
        if times > 1 {
            run_again += 1;
            assert!(
                status["retries"].as_u64().unwrap() >= 1,
                "a rerun counts an attempt: {status}"
            );
        }
    }
    // Only jobs held at the kill (at most one per slot) ran twice.
    assert!(run_again <= 4, "{run_again} jobs ran more than once");
    assert_eq!(server.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_jobs_complete_and_retention_keeps_the_database_flat() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, log) = (dir.path().join("queue.db"), dir.path().join("runs.log"));
    let handler = logging_handler(&log);
    let server = Server::start(
        &queue,
        &handler,
        &["--concurrency", "4", "--result-retention", "1s"],
    )
    .await;
    let mut rss = Vec::new();
    for batch in 0..2 {
        let mut submitted = Vec::new();
        for i in 0..500 {
            submitted.push(server.submit(json!({"batch": batch, "n": i})).await);
        }
        // Every job ran and its result was then deleted.
        server
            .wait_health(|jobs| jobs.as_object().unwrap().values().all(|n| n == 0))
            .await;
        let runs = runs(&log);
        assert!(submitted.iter().all(|id| runs.contains_key(id)));
        let rows: i64 = rusqlite::Connection::open(&queue)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "finished jobs are deleted after their retention");
        rss.push(server.rss_kib());
    }
    assert_eq!(runs(&log).len(), 1000);
    eprintln!(
        "jobpipe RSS after 500 jobs: {} KiB, after 1000: {} KiB",
        rss[0], rss[1]
    );
    assert!(
        rss[1] < rss[0] + 16 * 1024,
        "memory grows with finished jobs: {rss:?} KiB"
    );
    assert_eq!(server.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_client_works_unchanged() {
    let Some(python) = venv_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let handler = vec!["python3".to_owned(), fixture("fake_handler.py")];
    // A worker of the endpoint "sdxl", which the client names in its URLs.
    let server = Server::start(
        &dir.path().join("queue.db"),
        &handler,
        &["--endpoint", "sdxl"],
    )
    .await;
    let base = server.base.trim_end_matches("/default").to_owned();
    let client = PathBuf::from(fixture("endpoint_client.py"));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(client)
            .env("JOBPIPE_BASE", base)
            .env("JOBPIPE_ENDPOINT_NAME", "sdxl")
            .env("JOBPIPE_KEY", KEY)
            .env_remove("RUNPOD_API_KEY")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client failed: {stderr}");
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["run_sync"]["x"], 1, "{seen}");
    assert_eq!(seen["output"]["x"], 2, "{seen}");
    assert_eq!(seen["status"], "COMPLETED");
    assert_eq!(seen["stream"], json!([{"n": 0}, {"n": 1}, {"n": 2}]));
    assert_eq!(seen["health"]["jobs"]["inQueue"], 2, "{seen}");
    assert_eq!(seen["health"]["workers"]["running"], 1, "{seen}");
    assert_eq!(
        seen["purge_queue"],
        json!({"removed": 2, "status": "completed"})
    );
    assert_eq!(seen["cancel"]["status"], "CANCELLED");
    assert_eq!(seen["cancelled_status"], "CANCELLED");
    assert!(
        seen["wrong_key"].as_str().unwrap().contains("401"),
        "{seen}"
    );
    assert_eq!(server.stop(), 0);
}
