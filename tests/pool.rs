//! In-process tests of the handler pool with a multiplexing handler
//! (`--jobs-per-handler` above 1): answers matched by id, cancel lines,
//! and the restart when a job ignores its cancel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jobpipe::handler::config::{HandlerConfig, Mode};
use jobpipe::job::Identity;
use jobpipe::job::{Job, JobEvent, JobEvents, JobResult, Outcome};
use jobpipe::metrics::Metrics;
use jobpipe::pool::Pool;
use serde_json::{json, Value};
use tokio::sync::mpsc;

fn config(jobs_per_handler: usize, job_timeout: Option<Duration>) -> HandlerConfig {
    HandlerConfig {
        argv: vec![
            "python3".into(),
            format!(
                "{}/tests/fixtures/async_handler.py",
                env!("CARGO_MANIFEST_DIR")
            ),
        ],
        mode: Mode::Worker,
        concurrency: 1,
        jobs_per_handler,
        startup_timeout: Duration::from_secs(20),
        job_timeout,
        job_timeout_is_default: false,
        stall_timeout: None,
        kill_grace: Duration::from_millis(500),
        refresh_worker: false,
        keep_handler_on_error: false,
        max_output_size: 1 << 20,
        pass_secrets: false,
        max_handler_failures: Some(5),
        max_jobs: None,
        max_memory: None,
        spill: None,
        warmup: None,
    }
}

fn start(config: HandlerConfig) -> Arc<Pool> {
    let identity = Arc::new(Identity {
        worker_id: "w".into(),
        hostname: "h".into(),
    });
    // A fatal error would show as a job that never ends; these handlers start.
    let (fatal, _) = mpsc::unbounded_channel();
    Pool::start(
        config,
        identity,
        Arc::new(Metrics::default()),
        fatal,
        &tokio_util::sync::CancellationToken::new(),
    )
}

async fn submit(pool: &Pool, id: &str, input: Value) -> JobEvents {
    let slot = pool.free_slots().await.swap_remove(0);
    let job = Job::from_value(json!({"id": id, "input": input})).unwrap();
    pool.submit(slot, job).unwrap()
}

async fn result(events: &mut JobEvents) -> JobResult {
    let wait = async {
        loop {
            match events
                .recv()
                .await
                .expect("a result before the channel closes")
            {
                JobEvent::Done(result) => {
                    // As a source does once it has the result: the slot is free.
                    events.release_slot();
                    return result;
                }
                _ => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("result in time")
}

fn output(result: &JobResult) -> Value {
    match &result.outcome {
        Outcome::Output(value) => value.to_value(),
        other => panic!("expected an output, got {other:?}"),
    }
}

fn error_report(result: &JobResult) -> Value {
    match &result.outcome {
        Outcome::Error { error, .. } => serde_json::from_str(error).expect("a JSON error report"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_runs_several_jobs_at_once_and_answers_match_by_id() {
    let pool = start(config(4, None));
    // Warm up so that start-up time does not count.
    let mut warm = submit(&pool, "warm", json!({"ms": 0})).await;
    let pid = output(&result(&mut warm).await)["pid"].clone();
    let started = Instant::now();
    let mut jobs = Vec::new();
    for (i, ms) in [400, 100, 300, 200].into_iter().enumerate() {
        jobs.push(submit(&pool, &format!("m{i}"), json!({"ms": ms})).await);
    }
    for (events, ms) in jobs.iter_mut().zip([400, 100, 300, 200]) {
        let result = result(events).await;
        assert_eq!(output(&result)["ms"], ms, "each answer reaches its own job");
        assert_eq!(output(&result)["pid"], pid, "all in one process");
    }
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "ran side by side: {:?}",
        started.elapsed()
    );
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_job_is_cancelled_by_line_and_the_process_is_kept() {
    let pool = start(config(2, Some(Duration::from_millis(300))));
    let mut slow = submit(&pool, "slow", json!({"ms": 5000})).await;
    let failed = result(&mut slow).await;
    assert_eq!(error_report(&failed)["error_type"], "JobTimeout");
    let mut next = submit(&pool, "next", json!({"ms": 0})).await;
    let mut other = submit(&pool, "other", json!({"ms": 0})).await;
    let a = result(&mut next).await;
    let b = result(&mut other).await;
    assert_eq!(output(&a)["pid"], output(&b)["pid"]);
    assert_eq!(
        pool.metrics.snapshot().handler_restarts["timeout"],
        0,
        "the handler honoured the cancel"
    );
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_ignores_its_cancel_restarts_the_process_and_fails_its_neighbours() {
    let pool = start(config(2, Some(Duration::from_millis(300))));
    let mut warm = submit(&pool, "warm", json!({"ms": 0})).await;
    let first_pid = output(&result(&mut warm).await)["pid"].clone();
    let mut stubborn = submit(&pool, "stubborn", json!({"ignore_cancel": true})).await;
    let mut neighbour = submit(&pool, "neighbour", json!({"ms": 100_000})).await;
    let stubborn = result(&mut stubborn).await;
    assert_eq!(error_report(&stubborn)["error_type"], "JobTimeout");
    let neighbour = result(&mut neighbour).await;
    let report = error_report(&neighbour);
    // The neighbour either timed out itself or was failed by the restart.
    let kind = report["error_type"].as_str().unwrap();
    assert!(
        kind == "HandlerRestarted" || kind == "JobTimeout",
        "{report}"
    );
    let mut after = submit(&pool, "after", json!({"ms": 0})).await;
    let after = result(&mut after).await;
    assert_ne!(
        output(&after)["pid"],
        first_pid,
        "a new process after the restart"
    );
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_ends_as_cancelled_and_its_neighbour_finishes() {
    let pool = start(config(2, None));
    let mut doomed = submit(&pool, "doomed", json!({"ms": 100_000})).await;
    let mut fine = submit(&pool, "fine", json!({"ms": 300})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(pool.cancel("doomed"));
    assert_eq!(result(&mut doomed).await.outcome, Outcome::Cancelled);
    assert!(output(&result(&mut fine).await)["pid"].is_number());
    assert!(!pool.cancel("doomed"), "no longer in flight");
    pool.shutdown().await;
}
