//! jobpipe processes on one PostgreSQL queue, as black boxes: an API-only
//! process and workers started from the real binary, jobs submitted over
//! HTTP, and the queue's state read with SQL.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use super::daemon::{daemon, Daemon};
use super::postgres::TestDb;

/// The lease: short, so lost leases show quickly, yet long enough that a
/// loaded machine renews it in time.
pub const LEASE: &str = "10s";

/// A jobpipe process in the background named `name` (its worker id, if it
/// is a worker), with text logs at INFO and a spool of its own.
pub fn start(name: &str, args: &[&str]) -> Daemon {
    let builder = daemon()
        .name(name)
        .args(["--log-level", "INFO", "--log-format", "text"])
        .args(args);
    let spool = builder.dir().join("spool");
    builder.env("JOBPIPE_SPOOL_DIR", spool).start()
}

/// A worker with two handlers of the fake handler and no API.
pub fn worker(name: &str, url: &str) -> Daemon {
    worker_with(name, url, &["python3".into(), super::fake_handler()])
}

/// A worker with two handlers of `handler` and no API.
pub fn worker_with(name: &str, url: &str, handler: &[String]) -> Daemon {
    worker_with_args(name, url, &[], handler)
}

/// [`worker_with`], with `extra` arguments before the handler.
pub fn worker_with_args(name: &str, url: &str, extra: &[&str], handler: &[String]) -> Daemon {
    let mut args = vec![
        "--queue",
        url,
        "--worker-id",
        name,
        "--lease",
        LEASE,
        "--max-attempts",
        "10",
        "--concurrency",
        "2",
    ];
    args.extend(extra);
    args.push("--");
    args.extend(handler.iter().map(String::as_str));
    start(name, &args)
}

/// SIGTERM, then the exit code within `limit` (`None` if it did not exit).
pub fn stop(mut daemon: Daemon, limit: Duration) -> Option<i32> {
    daemon.signal(Signal::SIGTERM);
    daemon.wait_for_exit(limit).and_then(|status| status.code())
}

/// The API process (no handlers) on a free port; returns it and its base URL.
pub async fn api(url: &str) -> (Daemon, String) {
    api_with(url, &[]).await
}

/// [`api`], with `extra` arguments.
pub async fn api_with(url: &str, extra: &[&str]) -> (Daemon, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--serve-api",
        "--api-only",
        "--api-addr",
        &addr,
        "--queue",
        url,
        "--lease",
        LEASE,
        "--max-attempts",
        "10",
    ];
    args.extend(extra);
    let daemon = start("api", &args);
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(format!("{base}/health")).send().await {
            if response.status().is_success() {
                return (daemon, base);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the API did not come up:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Submits `count` jobs with `input` through `/run`; returns their ids.
pub async fn submit(base: &str, count: usize, input: Value) -> Vec<String> {
    submit_bodies(base, (0..count).map(|_| json!({"input": input})).collect()).await
}

/// Submits each body through `/run`, 16 at a time; returns their ids in
/// order. A 503 (the database slow to answer on a loaded machine) is
/// retried, as its Retry-After asks.
pub async fn submit_bodies(base: &str, bodies: Vec<Value>) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut ids = Vec::with_capacity(bodies.len());
    for chunk in bodies.chunks(16) {
        let posts = chunk.iter().map(|body| {
            let (client, body) = (client.clone(), body.clone());
            let url = format!("{base}/run");
            async move {
                for _ in 0..10 {
                    let response = client.post(&url).json(&body).send().await.unwrap();
                    let status = response.status();
                    let answer: Value = response.json().await.unwrap();
                    if status == 503 {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    assert!(status.is_success(), "{status}: {answer}");
                    return answer["id"].as_str().unwrap().to_owned();
                }
                panic!("/run kept answering 503");
            }
        });
        let handles: Vec<_> = posts.map(tokio::spawn).collect();
        for handle in handles {
            ids.push(handle.await.unwrap());
        }
    }
    ids
}

/// One `/run` with no retry: the job's id when it was accepted, else the
/// status (0 for no answer within `limit`) and the answer's text.
pub async fn try_submit(
    base: &str,
    body: &Value,
    limit: Duration,
) -> Result<String, (u16, String)> {
    let client = reqwest::Client::builder().timeout(limit).build().unwrap();
    let response = match client.post(format!("{base}/run")).json(body).send().await {
        Ok(response) => response,
        Err(e) => return Err((0, e.to_string())),
    };
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(answer) if status == 200 => Ok(answer["id"].as_str().unwrap().to_owned()),
        _ => Err((status, text)),
    }
}

pub fn count(db: &TestDb, condition: &str) -> usize {
    db.psql(&format!(
        "SELECT count(*) FROM jobpipe.jobs WHERE {condition}"
    ))
    .parse()
    .unwrap()
}

/// Waits until `condition` holds for at least `at_least` jobs.
pub async fn wait_count(
    db: &TestDb,
    condition: &str,
    at_least: usize,
    limit: Duration,
    daemons: &[&Daemon],
) {
    let deadline = Instant::now() + limit;
    loop {
        let now = count(db, condition);
        if now >= at_least {
            return;
        }
        if Instant::now() > deadline {
            for daemon in daemons {
                eprintln!("--- {} log ---\n{}", daemon.name(), daemon.log());
            }
            panic!("only {now} jobs with {condition}, waited for {at_least}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
