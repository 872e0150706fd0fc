//! Black-box tests of the handler side under adversarial conditions: absurd
//! settings, answers jobpipe cannot parse, handlers that never get ready or
//! fail every job, and descendants that escape their process group. The
//! real binary runs against the stand-in queue in tests/support.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::daemon::{daemon, Daemon};
use support::fake_handler;
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
    let worker = spawn_worker(fake, spool, extra, argv);
    wait_worker(worker, limit).await
}

async fn wait_worker(mut worker: Daemon, limit: Duration) -> Outcome {
    let status = worker.wait_async(limit).await;
    Outcome {
        code: status.code(),
        stderr: worker.stderr(),
        elapsed: worker
            .exited_at()
            .expect("exited")
            .duration_since(worker.started()),
    }
}

/// Starts the binary as a RunPod worker of `fake`.
fn spawn_worker(fake: &FakeRunpod, spool: &Path, extra: &[&str], argv: &[String]) -> Daemon {
    daemon()
        // PYTHONUNBUFFERED would hide a handler that forgets to flush.
        .env_remove("PYTHONUNBUFFERED")
        .envs(fake.env())
        .arg("--spool-dir")
        .arg(spool)
        .args(["--kill-grace", "500ms", "--log-level", "info"])
        .args(extra)
        .arg("--")
        .args(argv)
        .start()
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

// ---------------------------------------------------------------------------
// Failing forever is a state
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_that_fails_every_job_ends_the_worker() {
    let fake = FakeRunpod::start(KEY).await;
    for i in 0..20 {
        fake.push_job(json!({"id": format!("job-{i}"), "input": {"do": "echo"}}));
    }
    let dir = tempfile::tempdir().unwrap();
    let run = run_worker_for(
        &fake,
        &dir.path().join("spool"),
        &["--max-handler-failures", "3"],
        &python_handler(&["--exit-after-ready"]),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(run.code, Some(7), "{}", run.describe());
    assert!(
        run.stderr
            .contains("crashed or exited 3 times in a row with no job succeeding"),
        "{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("exiting right after ready"),
        "the report quotes the handler's stderr\n{}",
        run.describe()
    );
    let failed = fake.results().len();
    assert!(
        failed <= 3,
        "{failed} jobs were failed; at most one per handler end\n{}",
        run.describe()
    );
    assert_eq!(
        fake.queued() + failed,
        20,
        "every job not failed is left for another worker"
    );
}

// ---------------------------------------------------------------------------
// Limits on every setting
// ---------------------------------------------------------------------------

#[test]
fn an_absurd_duration_exits_2_at_once() {
    for (flag, value) in [
        ("--startup-timeout", "300000000000years"),
        ("--shutdown-timeout", "300000000000years"),
        ("--kill-grace", "300000000000years"),
        ("--job-timeout", "300000000000years"),
    ] {
        let run = support::jobpipe()
            .args([flag, value])
            .test_input(r#"{"input": {}}"#)
            .handler(python_handler(&[]))
            .deadline(Duration::from_secs(5))
            .run();
        run.expect_code(2);
        assert!(
            run.elapsed < Duration::from_secs(1),
            "{flag}: took {:?}",
            run.elapsed
        );
        assert_contains(&run.stderr, "is longer than the limit of", &run);
    }
    let run = support::jobpipe()
        .env("JOBPIPE_STARTUP_TIMEOUT", "300000000000years")
        .test_input(r#"{"input": {}}"#)
        .handler(python_handler(&[]))
        .deadline(Duration::from_secs(5))
        .run();
    run.expect_code(2);
}

#[test]
fn an_absurd_concurrency_is_refused_with_exit_2() {
    let run = support::jobpipe()
        .env("JOBPIPE_CONCURRENCY", "100000")
        .test_input(r#"{"input": {}}"#)
        .handler(python_handler(&[]))
        .deadline(Duration::from_secs(5))
        .run();
    run.expect_code(2);
    assert_contains(&run.stderr, "--concurrency 100000", &run);
    assert!(
        run.elapsed < Duration::from_secs(1),
        "took {:?}",
        run.elapsed
    );
}

fn assert_contains(text: &str, wanted: &str, run: &support::Run) {
    assert!(
        text.contains(wanted),
        "missing {wanted:?}\n{}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------
// Every answer line ends its job
// ---------------------------------------------------------------------------

#[test]
fn an_unreadable_answer_fails_its_job_at_once_naming_the_cause() {
    for (kind, cause) in [
        ("utf8", "not valid UTF-8"),
        ("surrogate", "lone surrogate"),
        ("nan", "contains NaN"),
    ] {
        let run = support::jobpipe()
            .test_input(&support::fake_job("bad-line", json!({ "kind": kind })))
            .args(["--kill-grace", "200ms"])
            .handler(python_handler(&[]))
            .deadline(Duration::from_secs(15))
            .run();
        run.expect_code(1);
        let report = run.error_report();
        assert_eq!(report["error_type"], "ProtocolError", "{kind}: {report}");
        let message = report["error_message"].as_str().unwrap();
        assert!(message.contains(cause), "{kind}: {message}");
        // The handler hangs after the line: only reading it ends the job.
        assert!(
            run.elapsed < Duration::from_secs(5),
            "{kind}: took {:?}\n{}",
            run.elapsed,
            run.describe()
        );
    }
}

/// A handler written with each helper, in `dir`: `python` after the
/// Python helper is imported as `jobpipe_handler`, `node` after the Node
/// helper's `serve` and `heartbeat` are required; the argv of each.
fn with_each_helper(dir: &std::path::Path, python: &str, node: &str) -> [[String; 2]; 2] {
    let python_file = dir.join("handler.py");
    let python_prelude = format!(
        "import sys\nsys.path.insert(0, {:?})\nimport jobpipe_handler\n",
        support::repo_path("handlers/python")
    );
    std::fs::write(&python_file, python_prelude + python).unwrap();
    let node_file = dir.join("handler.js");
    let node_prelude = format!(
        "const {{ serve, heartbeat }} = require({:?});\n",
        support::repo_path("handlers/node/jobpipe_handler.js")
    );
    std::fs::write(&node_file, node_prelude + node).unwrap();
    [
        ["python3".to_owned(), python_file.display().to_string()],
        ["node".to_owned(), node_file.display().to_string()],
    ]
}

/// Both helpers answer a result holding a lone surrogate with an error line
/// jobpipe can read, instead of an escape it rejects.
#[test]
fn the_helpers_never_write_a_lone_surrogate() {
    let dir = tempfile::tempdir().unwrap();
    let handlers = with_each_helper(
        dir.path(),
        "jobpipe_handler.serve(lambda job: {'text': 'a\\udc80b'})\n",
        "serve(() => ({ text: 'a\\udc80b' }));\n",
    );
    for argv in handlers {
        let run = support::jobpipe()
            .test_input(r#"{"input": {}}"#)
            .handler(argv.clone())
            .deadline(Duration::from_secs(15))
            .run();
        run.expect_code(1);
        let error = run.error();
        assert!(
            error.contains("lone surrogate") && error.contains("not JSON-serialisable"),
            "{argv:?}: {error}"
        );
    }
}

/// Both helpers' heartbeat keeps a job that works past --stall-timeout in
/// silence alive.
#[test]
fn the_helpers_heartbeat_keeps_a_quiet_job_alive() {
    let dir = tempfile::tempdir().unwrap();
    let handlers = with_each_helper(
        dir.path(),
        "import time\n\
         def handler(job):\n    for _ in range(30):\n        time.sleep(0.1)\n        jobpipe_handler.heartbeat(job)\n    return 'done'\n\
         jobpipe_handler.serve(handler)\n",
        "const sleep = (ms) => new Promise((r) => setTimeout(r, ms));\n\
         serve(async (job) => { for (let i = 0; i < 30; i++) { await sleep(100); heartbeat(job); } return 'done'; });\n",
    );
    for argv in handlers {
        let run = support::jobpipe()
            .args(["--stall-timeout", "1500ms"])
            .test_input(r#"{"input": {}}"#)
            .handler(argv.clone())
            .deadline(Duration::from_secs(20))
            .run();
        run.expect_code(0);
        assert_eq!(run.output(), json!("done"), "{argv:?}");
    }
}

// ---------------------------------------------------------------------------
// A start failure is reported as one
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_shebang_is_a_start_failure_naming_the_interpreter() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRunpod::start(KEY).await;
    fake.push_job(json!({"id": "job-1", "input": {}}));
    for (first_line, named) in [
        ("#!/usr/bin/python9", "/usr/bin/python9"),
        ("#!/usr/bin/env python9", "python9 was not found on PATH"),
    ] {
        let script = dir.path().join("handler.py");
        std::fs::write(
            &script,
            format!("{first_line}\nprint('{{\"ready\": true}}')\n"),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let run = run_worker_for(
            &fake,
            &dir.path().join("spool"),
            &[],
            &[script.display().to_string()],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(run.code, Some(3), "{}", run.describe());
        assert!(run.stderr.contains(named), "{}", run.describe());
    }
    assert!(fake.results().is_empty(), "no job was failed");
    assert_eq!(fake.queued(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_startup_timeout_says_to_flush_stdout_and_fails_no_job() {
    let fake = FakeRunpod::start(KEY).await;
    fake.push_job(json!({"id": "job-1", "input": {}}));
    let dir = tempfile::tempdir().unwrap();
    // Python without -u buffers a print to a pipe: the ready line never leaves.
    let script = dir.path().join("buffered.py");
    std::fs::write(
        &script,
        "import time\nprint('{\"ready\": true}')\ntime.sleep(60)\n",
    )
    .unwrap();
    let run = run_worker_for(
        &fake,
        &dir.path().join("spool"),
        &["--startup-timeout", "1s"],
        &["python3".to_owned(), script.display().to_string()],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(run.code, Some(3), "{}", run.describe());
    assert!(
        run.stderr.contains("not ready within 1s"),
        "{}",
        run.describe()
    );
    assert!(run.stderr.contains("flush"), "{}", run.describe());
    assert!(fake.results().is_empty() && fake.takes().is_empty());
}

// ---------------------------------------------------------------------------
// Leftover descendants are killed
// ---------------------------------------------------------------------------

/// Runs a job whose handler starts a daemon in a session of its own (it
/// escapes the handler's process group); returns the daemon's pid.
async fn run_daemon_job(fake: &FakeRunpod, id: &str) -> i32 {
    fake.push_job(
        json!({"id": id, "input": {"do": "orphan", "linger_ms": 60000, "check_after_ms": 0}}),
    );
    let body = loop {
        let results = fake.results_for(id);
        if let Some(result) = results.first() {
            break support::fake_runpod::parse_body(result);
        }
        assert!(
            fake.wait_until(Duration::from_secs(20), |f| !f.results_for(id).is_empty())
                .await,
            "no result for {id}"
        );
    };
    let pid = body["output"]["orphan"]
        .as_i64()
        .unwrap_or_else(|| panic!("{body}")) as i32;
    // The daemon ran when the handler answered (the handler read its
    // /proc state then); by the time the result is read here it may be
    // gone already: with --refresh-worker the handler is replaced, and its
    // daemons killed, as soon as it answers.
    let state = body["output"]["orphan_state"].as_str().unwrap_or("gone");
    assert!(
        pid > 1 && state != "gone" && state != "Z",
        "the daemon runs while its job ends: {body}"
    );
    pid
}

#[tokio::test(flavor = "multi_thread")]
async fn no_setsid_daemon_outlives_its_handler_or_jobpipe() {
    let fake = FakeRunpod::start(KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let worker = spawn_worker(
        &fake,
        &dir.path().join("spool"),
        &["--refresh-worker"],
        &python_handler(&[]),
    );
    // Replaced after its job (--refresh-worker): the daemon goes with it.
    let first = run_daemon_job(&fake, "job-1").await;
    let left = support::wait_gone(&[first], Duration::from_secs(5));
    // Exit: the daemon of the last handler goes with jobpipe.
    let second = run_daemon_job(&fake, "job-2").await;
    worker.signal(nix::sys::signal::Signal::SIGTERM);
    let run = wait_worker(worker, Duration::from_secs(20)).await;
    let left_at_exit = support::wait_gone(&[second], Duration::from_secs(2));
    for &pid in left.iter().chain(&left_at_exit) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        left.is_empty(),
        "daemon {first} outlived its replaced handler\n{}",
        run.describe()
    );
    assert!(
        left_at_exit.is_empty(),
        "daemon {second} outlived jobpipe\n{}",
        run.describe()
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
}

// ---------------------------------------------------------------------------
// Logging never blocks
// ---------------------------------------------------------------------------

/// jobpipe's stderr is a pipe nobody reads: once it is full, log lines are
/// dropped, and the job (whose handler floods stderr) still completes.
#[test]
fn a_stalled_stderr_does_not_stall_jobs() {
    let mut jobpipe = daemon()
        .args(["--log-level", "debug", "--test-input"])
        .arg(support::fake_job("stderr-flood", json!({"lines": 20000})))
        .arg("--")
        .args(python_handler(&[]))
        .stderr_unread()
        .start();
    let status = jobpipe.wait_for_exit(Duration::from_secs(30));
    let stdout = jobpipe.stdout();
    assert!(
        status.is_some(),
        "jobpipe stalled on its stderr; stdout: {stdout}"
    );
    assert!(stdout.contains(r#""output":"flooded""#), "{stdout}");
    assert_eq!(status.unwrap().code(), Some(0));
}
