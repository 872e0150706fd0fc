//! The endpoint API under hostile clients: every error is JSON (also a path
//! that does not decode), slow headers and idle connections are closed in
//! time, a body that trickles is cut with 408, and connections beyond the
//! limit get a JSON 503 — while the API goes on serving.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::{daemon, Daemon};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HANDLER: &str = "import time; print('{\"ready\": true}', flush=True); time.sleep(600)";
/// Generous for a loaded machine, far below "never".
const SLACK: Duration = Duration::from_secs(15);

/// An endpoint on a free loopback port with `args`; returns it and its
/// address once `/health` answers.
async fn endpoint(args: &[&str]) -> (Daemon, String) {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let builder = daemon();
    let queue = format!("sqlite:{}", builder.dir().join("queue.db").display());
    let spool = builder.dir().join("spool");
    let jp = builder
        .args(["--log-format", "text", "--serve-api", "--queue", &queue])
        .args(["--api-addr", &addr])
        .env("JOBPIPE_SPOOL_DIR", spool)
        .args(args)
        .args(["--", "python3", "-c", HANDLER])
        .start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("http://{addr}/health")).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the API never answered\n{}",
            jp.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (jp, addr)
}

/// Reads until the server closes the connection (or `limit` passes);
/// returns what it sent and how long the close took.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&seen).into_owned(), None),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&seen).into_owned(),
                    Some(started.elapsed()),
                )
            }
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// The JSON body of a raw HTTP answer.
fn body_json(answer: &str) -> Value {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_does_not_decode_gets_a_json_error() {
    let (jp, addr) = endpoint(&[]).await;
    for path in ["/status/%FF%FE", "/v2/%C3%28/status/x", "/cancel/%80"] {
        let answer = reqwest::Client::new()
            .request(
                if path.starts_with("/cancel") {
                    reqwest::Method::POST
                } else {
                    reqwest::Method::GET
                },
                format!("http://{addr}{path}"),
            )
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let kind = answer
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body: Value = answer
            .json()
            .await
            .unwrap_or_else(|e| panic!("{path}: {status} is not JSON ({e})\n{}", jp.logs()));
        assert!(status.is_client_error(), "{path}: {status} {body}");
        assert!(kind.starts_with("application/json"), "{path}: {kind}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_and_idle_connections_are_closed_in_time() {
    let (jp, addr) = endpoint(&["--api-header-timeout", "1s", "--api-idle-timeout", "2s"]).await;
    // 100 connections that send half a request header and stop.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(stream);
    }
    let mut longest = Duration::ZERO;
    for stream in &mut slow {
        let (_, closed) = read_to_close(stream, Duration::from_secs(1) + SLACK).await;
        let closed =
            closed.unwrap_or_else(|| panic!("a slow header was never closed\n{}", jp.logs()));
        longest = longest.max(closed);
    }
    println!("100 half-sent headers: the last was closed {longest:?} after the check began");

    // A keep-alive connection after its answer: closed once idle.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_to_close(&mut idle, Duration::from_secs(2) + SLACK).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let closed = closed.unwrap_or_else(|| panic!("an idle connection was never closed"));
    assert!(
        closed >= Duration::from_millis(1500),
        "closed after {closed:?}, before the idle timeout"
    );
    // Still serving.
    let health = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_is_cut_with_408() {
    let (jp, addr) = endpoint(&["--api-body-timeout", "1s", "--api-body-min-rate", "1MB"]).await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"input\": \"",
        )
        .await
        .unwrap();
    let (answer, _) = read_to_close(&mut stream, Duration::from_secs(1) + SLACK).await;
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "{answer}\n{}",
        jp.logs()
    );
    let body = body_json(&answer);
    assert!(
        body["error"].as_str().unwrap().contains("too slowly"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_get_a_json_503() {
    let (jp, addr) = endpoint(&["--api-max-connections", "3", "--api-header-timeout", "60s"]).await;
    // Three connections hold the limit (the health check's has closed or
    // is idle-closing; wait for a refusal rather than count).
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    let deadline = Instant::now() + SLACK;
    let answer = loop {
        let mut extra = TcpStream::connect(&addr).await.unwrap();
        let (answer, _) = read_to_close(&mut extra, Duration::from_secs(5)).await;
        if answer.starts_with("HTTP/1.1 503") {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "never refused: {answer:?}\n{}",
            jp.logs()
        );
        held.push(extra);
    };
    let body = body_json(&answer);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--api-max-connections"),
        "{body}"
    );
    // Freed connections make room again.
    drop(held);
    let deadline = Instant::now() + SLACK;
    loop {
        if let Ok(health) = reqwest::get(format!("http://{addr}/health")).await {
            if health.status() == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the API never served again\n{}",
            jp.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
