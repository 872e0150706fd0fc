//! Black-box tests of `--kill-grace`: a handler that survives SIGTERM (at a
//! job timeout, or at a graceful shutdown) gets SIGKILL once the grace is
//! over, not before and not much later; the handler notes the times it got
//! SIGTERM in a file.

mod support;

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use support::fake_runpod::FakeRunpod;
use support::shutdown::*;

// ---------------------------------------------------------------------------
// A handler that survives SIGTERM is SIGKILLed after --kill-grace
// ---------------------------------------------------------------------------

/// The times (seconds since the epoch) the handler noted a SIGTERM.
fn term_times(termlog: &Path) -> Vec<f64> {
    std::fs::read_to_string(termlog)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_timeout_sends_sigterm_then_sigkill_after_the_grace() {
    let dir = tempdir();
    let tag = new_tag();
    let pidfile = dir.path().join("handler.pid");
    let termlog = dir.path().join("term.log");
    let job =
        json!({"id": "t-3", "input": {"do": "trap-term", "termlog": termlog, "pidfile": pidfile}});
    let args = test_mode_args(&job, &["--job-timeout", "1s", "--kill-grace", "1s"], &tag);
    let mut jp = start(&args, &[], dir.path());
    let pid = wait_for_pid(&pidfile, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the job never started\n{}", jp.logs()));
    let started = epoch_now();
    eventually(Duration::from_secs(8), || !handler_alive(pid, &tag))
        .await
        .unwrap_or_else(|| panic!("handler {pid} still running\n{}", jp.logs()));
    let gone = epoch_now();
    let status = jp.wait_async(Duration::from_secs(5)).await;

    let line = result_line(&jp);
    assert_eq!(line["status"], "FAILED", "{}", jp.logs());
    assert_eq!(
        error_type(&line["error"]).as_deref(),
        Some("JobTimeout"),
        "{line}"
    );
    assert_eq!(status.code(), Some(1), "{}", jp.logs());
    let terms = term_times(&termlog);
    assert_eq!(terms.len(), 1, "SIGTERMs noted: {terms:?}\n{}", jp.logs());
    let term = terms[0];
    assert!(
        (0.7..2.0).contains(&(term - started)),
        "SIGTERM {:.3}s after the job started (timeout 1s)",
        term - started
    );
    assert!(
        (0.9..1.8).contains(&(gone - term)),
        "gone {:.3}s after SIGTERM (grace 1s)\n{}",
        gone - term,
        jp.logs()
    );
    assert!(jp.stderr().contains("got SIGTERM"), "{}", jp.logs());
    assert_nothing_left(&tag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_sigkills_a_handler_that_survives_sigterm_after_the_grace() {
    let dir = tempdir();
    let tag = new_tag();
    let fake = FakeRunpod::start(KEY).await;
    fake.set_long_poll(Duration::from_secs(30));
    let pidfile = dir.path().join("handler.pid");
    let termlog = dir.path().join("term.log");
    fake.push_job(json!({"id": "job-3", "input": {
        "do": "trap-term", "answer": true, "termlog": termlog, "pidfile": pidfile}}));
    let args = runpod_args(&dir.path().join("spool"), &["--kill-grace", "1s"], &tag);
    let mut jp = start(&args, &fake.env(), dir.path());
    let delivered = fake
        .wait_until(Duration::from_secs(10), |f| {
            !f.results_for("job-3").is_empty()
        })
        .await;
    assert!(delivered, "no result\n{}", jp.logs());
    let pid = wait_for_pid(&pidfile, Duration::from_secs(1))
        .await
        .expect("pid");
    assert!(handler_alive(pid, &tag));

    jp.signal(Signal::SIGTERM);
    let signalled = epoch_now();
    eventually(Duration::from_secs(6), || !handler_alive(pid, &tag))
        .await
        .unwrap_or_else(|| panic!("handler {pid} still running\n{}", jp.logs()));
    let gone = epoch_now();
    let status = jp.wait_async(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", jp.logs());

    let terms = term_times(&termlog);
    assert_eq!(terms.len(), 1, "SIGTERMs noted: {terms:?}\n{}", jp.logs());
    let term = terms[0];
    assert!(
        term - signalled < 0.5,
        "the handler got SIGTERM {:.3}s after jobpipe did",
        term - signalled
    );
    assert!(
        (0.9..1.8).contains(&(gone - term)),
        "gone {:.3}s after SIGTERM (grace 1s)\n{}",
        gone - term,
        jp.logs()
    );
    assert_eq!(fake.results_for("job-3").len(), 1);
    assert_nothing_left(&tag);
}
