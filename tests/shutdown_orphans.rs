//! Black-box tests of what jobpipe leaves behind when its processes go: a
//! SIGKILLed jobpipe takes its handler along (parent-death signal), and the
//! orphans a handler leaves are reaped by jobpipe, both as PID 1 of a PID
//! namespace (`unshare`, a prerequisite that can be opted out of with
//! `JOBPIPE_TEST_SKIP=unshare`) and as a subreaper.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::daemon::daemon;
use support::shutdown::*;

// ---------------------------------------------------------------------------
// A SIGKILLed jobpipe takes its handler along (parent-death signal)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_jobpipe_takes_its_handler_along() {
    let dir = tempdir();
    let tag = new_tag();
    let pidfile = dir.path().join("handler.pid");
    let job = json!({"id": "t-4", "input": {"do": "hang", "pidfile": pidfile}});
    let mut jp = start(&test_mode_args(&job, &[], &tag), &[], dir.path());
    let pid = wait_for_pid(&pidfile, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the job never started\n{}", jp.logs()));
    assert!(handler_alive(pid, &tag));
    jp.signal(Signal::SIGKILL);
    let took = eventually(Duration::from_secs(1), || !handler_alive(pid, &tag)).await;
    jp.wait_async(Duration::from_secs(2)).await;
    assert!(
        took.is_some(),
        "handler {pid} still running 1 s after jobpipe was SIGKILLed: {:?}",
        tagged_processes(&tag)
    );
    assert_nothing_left(&tag);
}

// ---------------------------------------------------------------------------
// Orphans are reaped: as PID 1 of a PID namespace, and as a subreaper
// ---------------------------------------------------------------------------

const ORPHAN_JOB: &str =
    r#"{"id": "t-5", "input": {"do": "orphan", "linger_ms": 100, "check_after_ms": 800}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_reaped_by_jobpipe_as_pid_1() {
    let dir = tempdir();
    let tag = new_tag();
    let job: Value = serde_json::from_str(ORPHAN_JOB).expect("job");
    let started = daemon()
        .wrapper(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
        .args(test_mode_args(&job, &[], &tag))
        .cwd(dir.path())
        .try_start();
    let mut jp = match started {
        Ok(jp) => jp,
        Err(e) => {
            support::prereq::missing("unshare", &format!("unshare cannot be run here: {e}"));
            return;
        }
    };
    let status = jp.wait_async(Duration::from_secs(20)).await;
    let stderr = jp.stderr();
    if status.code() != Some(0) && stderr.starts_with("unshare:") {
        support::prereq::missing(
            "unshare",
            &format!("no PID namespace here: {}", stderr.trim()),
        );
        return;
    }
    let line = result_line(&jp);
    assert_eq!(line["status"], "COMPLETED", "{}", jp.logs());
    assert_eq!(
        line["output"]["orphan_state"], "gone",
        "orphan not reaped: {line}"
    );
    // Pids start again at 1 in the new namespace, where jobpipe is PID 1.
    let orphan = line["output"]["orphan"].as_i64().unwrap_or(i64::MAX);
    assert!(orphan < 100, "not in a new PID namespace: {line}");
    assert_eq!(status.code(), Some(0), "{}", jp.logs());
    assert_nothing_left(&tag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_reaped_by_jobpipe_as_a_subreaper() {
    let dir = tempdir();
    let tag = new_tag();
    let job: Value = serde_json::from_str(ORPHAN_JOB).expect("job");
    let mut jp = start(&test_mode_args(&job, &[], &tag), &[], dir.path());
    let status = jp.wait_async(Duration::from_secs(20)).await;
    let line = result_line(&jp);
    assert_eq!(line["status"], "COMPLETED", "{}", jp.logs());
    assert_eq!(
        line["output"]["orphan_state"], "gone",
        "orphan not reaped: {line}"
    );
    assert_eq!(status.code(), Some(0), "{}", jp.logs());
    assert_nothing_left(&tag);
}
