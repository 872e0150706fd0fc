//! Memory growth over many jobs: jobpipe alone, C echo handler, against a
//! stand-in that makes each job when it is taken and keeps one bit per job
//! rather than a record of every request (the full stand-in would hold
//! gigabytes after a million jobs). It still checks that every job got
//! exactly one correct result.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::measure::Meter;
use crate::procfs::proc_status_kib;
use crate::{describe, fail, jobpipe_command, wait_timeout, API_KEY};

/// What the generating stand-in knows.
struct Generator {
    jobs: usize,
    handed_out: usize,
    /// One entry per job: whether a correct result arrived.
    done: Vec<bool>,
    results: usize,
    problems: Vec<String>,
}

type Shared = Arc<Mutex<Generator>>;

/// Runs `jobs` jobs through jobpipe; returns its VmRSS in KiB after 1,000
/// results and after the last, and the job count.
pub(crate) async fn run(
    jobpipe: &Path,
    echo: &Path,
    jobs: usize,
    _meter: Meter,
) -> (u64, u64, usize) {
    let state: Shared = Arc::new(Mutex::new(Generator {
        jobs,
        handed_out: 0,
        done: vec![false; jobs],
        results: 0,
        problems: Vec::new(),
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the generating stand-in");
    let base = format!("http://{}/v2/ep", listener.local_addr().expect("address"));
    let app = Router::new().fallback(answer).with_state(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let dir = tempfile::tempdir().expect("create a temporary directory");
    let mut command = jobpipe_command(
        jobpipe,
        1,
        dir.path(),
        &["--".to_owned(), echo.display().to_string()],
    );
    for (name, _) in std::env::vars() {
        if name.starts_with("RUNPOD_") || name.starts_with("JOBPIPE_") {
            command.env_remove(&name);
        }
    }
    command
        .env(
            "RUNPOD_WEBHOOK_GET_JOB",
            format!("{base}/job-take/$RUNPOD_POD_ID?gpu=TEST"),
        )
        .env(
            "RUNPOD_WEBHOOK_POST_OUTPUT",
            format!("{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=TEST"),
        )
        .env(
            "RUNPOD_WEBHOOK_POST_STREAM",
            format!("{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=TEST"),
        )
        .env(
            "RUNPOD_WEBHOOK_PING",
            format!("{base}/ping/$RUNPOD_POD_ID?gpu=TEST"),
        )
        .env("RUNPOD_AI_API_KEY", API_KEY)
        .env("RUNPOD_POD_ID", "pod-1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    eprintln!("bench: {jobs} jobs through jobpipe + C echo for memory growth");
    let started = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start jobpipe: {e}")));
    let pid = child.id();
    let mut after_1k = None;
    loop {
        if let Some(status) = child.try_wait().expect("poll jobpipe") {
            fail(&format!("jobpipe exited early ({})", describe(status)));
        }
        let results = state.lock().expect("stand-in state").results;
        if after_1k.is_none() && results >= jobs.min(1000) {
            after_1k = proc_status_kib(pid, "VmRSS:");
        }
        if results >= jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let after_all = proc_status_kib(pid, "VmRSS:").unwrap_or(0);
    let peak = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("send SIGTERM");
    match wait_timeout(&mut child, Duration::from_secs(60)).await {
        Some(status) if status.success() => {}
        Some(status) => fail(&format!("jobpipe exited with {}", describe(status))),
        None => fail("jobpipe did not exit within 60 s of SIGTERM"),
    }
    let generator = state.lock().expect("stand-in state");
    if !generator.problems.is_empty() {
        fail(&format!(
            "{} problems, first: {}",
            generator.problems.len(),
            generator.problems[0]
        ));
    }
    let after_1k = after_1k.unwrap_or(0);
    println!(
        "\nmemory growth: {jobs} jobs in {:.0} s ({:.0} jobs/s); jobpipe VmRSS {:.1} MiB after \
         1000 jobs, {:.1} MiB after {jobs}; VmHWM {:.1} MiB",
        elapsed.as_secs_f64(),
        jobs as f64 / elapsed.as_secs_f64(),
        after_1k as f64 / 1024.0,
        after_all as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    (after_1k, after_all, jobs)
}

async fn answer(State(state): State<Shared>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == API_KEY.as_bytes());
    if !authorized {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if path.contains("/job-take/") {
        let taken = {
            let mut g = state.lock().expect("stand-in state");
            (g.handed_out < g.jobs).then(|| {
                g.handed_out += 1;
                g.handed_out - 1
            })
        };
        return match taken {
            Some(n) => (
                [(header::CONTENT_TYPE, "application/json")],
                format!(r#"{{"id":"e-{n}","input":{{"n":{n},"text":"hello"}}}}"#),
            )
                .into_response(),
            None => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                StatusCode::NO_CONTENT.into_response()
            }
        };
    }
    if path.contains("/job-stop/") {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return StatusCode::NO_CONTENT.into_response();
    }
    if let Some(rest) = path.split("/job-done/").nth(1) {
        let id = rest.rsplit('/').next().unwrap_or("").to_owned();
        let body: Bytes = match axum::body::to_bytes(request.into_body(), 1 << 20).await {
            Ok(body) => body,
            Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
        };
        record(&state, &id, &body);
        return StatusCode::OK.into_response();
    }
    StatusCode::OK.into_response()
}

/// Notes one result: it must be the first for its job and echo its input.
fn record(state: &Shared, id: &str, body: &[u8]) {
    let n: Option<usize> = id.strip_prefix("e-").and_then(|n| n.parse().ok());
    let output: Option<Value> = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("output").cloned());
    let mut g = state.lock().expect("stand-in state");
    let Some(n) = n.filter(|&n| n < g.jobs) else {
        g.problems.push(format!("result for unknown job {id:?}"));
        return;
    };
    let correct = output
        .as_ref()
        .and_then(|o| o.get("n"))
        .and_then(Value::as_u64)
        == Some(n as u64);
    if !correct {
        g.problems.push(format!(
            "{id}: wrong result {}",
            String::from_utf8_lossy(body)
        ));
    } else if std::mem::replace(&mut g.done[n], true) {
        g.problems.push(format!("{id}: a second result"));
    } else {
        g.results += 1;
    }
}
