//! Black-box tests of the handler side under adversarial conditions: absurd
//! settings, answers jobpipe cannot parse, handlers that never get ready or
//! fail every job, and descendants that escape their process group. The
//! real binary runs against the stand-in queue in tests/support.

mod common;
mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::fake_handler;
use serde_json::json;
use support::fake_runpod::FakeRunpod;

const KEY: &str = "hardening-test-key";

/// What a jobpipe run against the stand-in queue left behind.
struct Outcome {
    code: Option<i32>,
    stderr: String,
    elapsed: Duration,
}

impl Outcome {
    fn describe(&self) -> String {
        format!(
            "exit code {:?} after {:?}\n--- stderr ---\n{}",
            self.code, self.elapsed, self.stderr
        )
    }
}

/// Runs the binary as a RunPod worker of `fake` with `extra` flags and the
/// handler `argv`, until it exits or `limit` passes (then it is killed).
async fn run_worker_for(
    fake: &FakeRunpod,
    spool: &Path,
    extra: &[&str],
    argv: &[String],
    limit: Duration,
) -> Outcome {
    let mut cmd = tokio::process::Command::new(common::binary());
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("JOBPIPE_") || text.starts_with("RUNPOD_") {
            cmd.env_remove(&name);
        }
    }
    cmd.envs(fake.env())
        .arg("--spool-dir")
        .arg(spool)
        .args(["--kill-grace", "500ms", "--log-level", "info"])
        .args(extra)
        .arg("--")
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let child = cmd.spawn().expect("jobpipe starts");
    let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(output) => output.expect("jobpipe's output"),
        Err(_) => panic!("jobpipe did not exit within {limit:?}"),
    };
    Outcome {
        code: output.status.code(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

fn python_handler(args: &[&str]) -> Vec<String> {
    let mut argv = vec!["python3".to_owned(), fake_handler()];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}

// ---------------------------------------------------------------------------
// Take only what can start
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn no_job_is_taken_while_the_handler_is_not_ready() {
    let fake = FakeRunpod::start(KEY).await;
    fake.push_job(json!({"id": "job-1", "input": {"do": "echo"}}));
    let dir = tempfile::tempdir().unwrap();
    let run = run_worker_for(
        &fake,
        &dir.path().join("spool"),
        &["--startup-timeout", "2s"],
        &python_handler(&["--never-ready"]),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(run.code, Some(3), "{}", run.describe());
    assert!(
        fake.takes().is_empty(),
        "{} takes before any handler was ready\n{}",
        fake.takes().len(),
        run.describe()
    );
    assert_eq!(fake.queued(), 1, "the job stays queued for another worker");
    assert!(fake.results().is_empty(), "no job was failed");
    assert!(
        run.stderr.contains("not ready within 2s"),
        "{}",
        run.describe()
    );
}
