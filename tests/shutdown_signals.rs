//! Black-box tests of jobpipe's answer to SIGTERM and SIGINT in test mode
//! (`--test-input`): the first signal drains (the running job finishes and
//! is printed, exit 0; the drain is reported once), the second stops at
//! once (the job fails as WorkerShutdown, exit 5, its handler is killed),
//! also while handlers are being stopped. The binary runs as a child
//! process and gets real signals; its handlers are followed through
//! pidfiles and /proc (see tests/support/shutdown.rs).

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use support::shutdown::*;

// ---------------------------------------------------------------------------
// First SIGTERM: the running job finishes and is returned; exit 0
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_test_job_finish() {
    let dir = tempdir();
    let tag = new_tag();
    let pidfile = dir.path().join("handler.pid");
    let job = json!({"id": "t-1", "input": {"do": "sleep", "ms": 1000, "pidfile": pidfile}});
    let mut jp = start(&test_mode_args(&job, &[], &tag), &[], dir.path());
    let pid = wait_for_pid(&pidfile, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the job never started\n{}", jp.logs()));
    jp.signal(Signal::SIGTERM);
    let signalled = Instant::now();
    let status = jp.wait_async(Duration::from_secs(10)).await;
    let took = jp.exited_at().expect("exited").duration_since(signalled);
    let line = result_line(&jp);
    assert_eq!(line["status"], "COMPLETED", "{}", jp.logs());
    assert_eq!(line["output"]["do"], "sleep", "{}", jp.logs());
    assert_eq!(status.code(), Some(0), "{}", jp.logs());
    // The job still had most of its second to run when the signal came.
    assert!(
        took >= Duration::from_millis(700),
        "exited {took:?} after SIGTERM"
    );
    assert!(
        took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM"
    );
    assert!(!handler_alive(pid, &tag), "handler {pid} still running");
    assert_nothing_left(&tag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_after_a_long_uptime_reports_once_not_in_a_burst() {
    let dir = tempdir();
    let tag = new_tag();
    let pidfile = dir.path().join("handler.pid");
    let job = json!({"id": "t-1b", "input": {"do": "sleep", "ms": 11_500, "pidfile": pidfile}});
    let mut jp = start(&test_mode_args(&job, &[], &tag), &[], dir.path());
    let started = Instant::now();
    wait_for_pid(&pidfile, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the job never started\n{}", jp.logs()));
    // Up for two report periods (5 s) and more, then drain for about 1 s.
    tokio::time::sleep_until((started + Duration::from_millis(10_500)).into()).await;
    jp.signal(Signal::SIGTERM);
    let status = jp.wait_async(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", jp.logs());
    let reports: Vec<String> = jp
        .stderr()
        .lines()
        .filter(|l| l.contains("draining:"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        reports.len(),
        1,
        "a drain of about 1 s reported {} times:\n{}",
        reports.len(),
        reports.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Second SIGINT: the job fails as WorkerShutdown, exit 5, handler gone
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigint_fails_the_test_job_and_kills_its_handler() {
    let dir = tempdir();
    let tag = new_tag();
    let pidfile = dir.path().join("handler.pid");
    let job = json!({"id": "t-2", "input": {"do": "hang", "pidfile": pidfile}});
    let mut jp = start(&test_mode_args(&job, &[], &tag), &[], dir.path());
    let pid = wait_for_pid(&pidfile, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the job never started\n{}", jp.logs()));
    jp.signal(Signal::SIGINT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        jp.poll().is_none(),
        "exited on the first SIGINT\n{}",
        jp.logs()
    );
    assert!(handler_alive(pid, &tag), "handler gone on the first SIGINT");
    jp.signal(Signal::SIGINT);
    let signalled = Instant::now();
    let status = jp.wait_async(Duration::from_secs(8)).await;
    let took = jp.exited_at().expect("exited").duration_since(signalled);

    let line = result_line(&jp);
    assert_eq!(line["status"], "FAILED", "{}", jp.logs());
    assert_eq!(
        error_type(&line["error"]).as_deref(),
        Some("WorkerShutdown"),
        "{line}"
    );
    assert_eq!(status.code(), Some(5), "{}", jp.logs());
    assert!(
        took < Duration::from_secs(3),
        "exited {took:?} after the second SIGINT"
    );
    assert!(!handler_alive(pid, &tag), "handler {pid} still running");
    assert_nothing_left(&tag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_while_handlers_stop_kills_them_at_once() {
    let dir = tempdir();
    let tag = new_tag();
    let pidfile = dir.path().join("handler.pid");
    // The job succeeds; the handler then shrugs off SIGTERM, so stopping it
    // would take the whole 30 s grace.
    let job =
        json!({"id": "t-7", "input": {"do": "trap-term", "answer": true, "pidfile": pidfile}});
    let args = test_mode_args(&job, &["--kill-grace", "30s"], &tag);
    let mut jp = start(&args, &[], dir.path());
    let pid = wait_for_pid(&pidfile, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the job never started\n{}", jp.logs()));
    eventually(Duration::from_secs(10), || {
        jp.stderr().contains("got SIGTERM")
    })
    .await
    .unwrap_or_else(|| panic!("the handler was never asked to stop\n{}", jp.logs()));
    jp.signal(Signal::SIGINT);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(handler_alive(pid, &tag), "the first signal only drains");
    jp.signal(Signal::SIGINT);
    let signalled = std::time::Instant::now();
    let status = jp.wait_async(Duration::from_secs(5)).await;
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "exited {:?} after the second SIGINT",
        signalled.elapsed()
    );
    assert_eq!(status.code(), Some(5), "{}", jp.logs());
    assert_eq!(result_line(&jp)["status"], "COMPLETED");
    assert!(!handler_alive(pid, &tag), "handler {pid} still running");
    assert_nothing_left(&tag);
}

// ---------------------------------------------------------------------------
// SIGUSR1 and SIGUSR2 never end the worker
// ---------------------------------------------------------------------------

/// SIGUSR1 logs the state with the job in flight and its age; SIGUSR2 is
/// ignored; the job finishes and is printed, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_dumps_the_state_and_sigusr2_is_ignored_with_a_job_in_flight() {
    let dir = tempdir();
    let tag = new_tag();
    let pidfile = dir.path().join("handler.pid");
    let job = json!({"id": "t-usr", "input": {"do": "sleep", "ms": 2000, "pidfile": pidfile}});
    let mut jp = start(&test_mode_args(&job, &[], &tag), &[], dir.path());
    wait_for_pid(&pidfile, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the job never started\n{}", jp.logs()));
    jp.signal(Signal::SIGUSR1);
    jp.signal(Signal::SIGUSR2);
    eventually(Duration::from_secs(10), || {
        jp.stderr().contains("state (SIGUSR1)") && jp.stderr().contains("SIGUSR2; ignored")
    })
    .await
    .unwrap_or_else(|| panic!("no state dump or SIGUSR2 line\n{}", jp.logs()));
    let status = jp.wait_async(Duration::from_secs(30)).await;
    let log = jp.stderr();
    let dump = log
        .lines()
        .find(|l| l.contains("state (SIGUSR1)"))
        .expect("the dump line");
    assert!(dump.contains("t-usr ("), "the job and its age: {dump}");
    assert!(dump.contains("undelivered results"), "{dump}");
    assert_eq!(status.code(), Some(0), "{}", jp.logs());
    assert_eq!(result_line(&jp)["status"], "COMPLETED", "{}", jp.logs());
}
