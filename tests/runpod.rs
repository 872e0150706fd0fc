//! In-process tests of the RunPod source: `supervisor::run` against the
//! stand-in queue in tests/support, with scripted faults.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use jobpipe::config::Cli;
use jobpipe::error::{exit, FatalError};
use jobpipe::signals::ShutdownRequest;
use serde_json::{json, Value};
use support::fake_runpod::{parse_body, query, FakeRunpod};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const KEY: &str = "test-key-123";
const WAIT: Duration = Duration::from_secs(20);

fn fake_handler() -> String {
    format!(
        "{}/tests/fixtures/fake_handler.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A worker running in this process, with its stop-request channel.
struct Worker {
    task: JoinHandle<Result<u8, FatalError>>,
    requests: mpsc::UnboundedSender<ShutdownRequest>,
    _dir: Option<tempfile::TempDir>,
}

impl Worker {
    async fn stop(self) -> Result<u8, FatalError> {
        let _ = self.requests.send(ShutdownRequest::Stop);
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("worker stops in time")
            .expect("worker task did not panic")
    }
}

fn args_for(fake: &FakeRunpod, key: &str, spool: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["jobpipe".to_owned()];
    for (name, value) in fake.env() {
        let flag = match name.as_str() {
            "RUNPOD_WEBHOOK_GET_JOB" => "--runpod-get-job",
            "RUNPOD_WEBHOOK_POST_OUTPUT" => "--runpod-post-output",
            "RUNPOD_WEBHOOK_POST_STREAM" => "--runpod-post-stream",
            "RUNPOD_WEBHOOK_PING" => "--runpod-ping",
            "RUNPOD_AI_API_KEY" => continue,
            "RUNPOD_POD_ID" => "--worker-id",
            _ => continue,
        };
        args.push(flag.to_owned());
        args.push(value);
    }
    args.extend(["--runpod-api-key".to_owned(), key.to_owned()]);
    args.extend(["--spool-dir".to_owned(), spool.display().to_string()]);
    args.extend(["--runpod-ping-interval".to_owned(), "200".to_owned()]);
    args.extend(["--kill-grace".to_owned(), "1s".to_owned()]);
    args.extend(["--shutdown-timeout".to_owned(), "10s".to_owned()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    if !extra.contains(&"--") {
        args.extend(["--".to_owned(), "python3".to_owned(), fake_handler()]);
    }
    args
}

fn start_with(fake: &FakeRunpod, key: &str, spool: Option<PathBuf>, extra: &[&str]) -> Worker {
    let (dir, spool) = match spool {
        Some(spool) => (None, spool),
        None => {
            let dir = tempfile::tempdir().unwrap();
            let spool = dir.path().join("spool");
            (Some(dir), spool)
        }
    };
    let cli = Cli::try_parse_from(args_for(fake, key, &spool, extra)).unwrap();
    let config = cli.into_config(Path::new("/nonexistent")).unwrap();
    let (requests, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(jobpipe::supervisor::run(config, rx));
    Worker {
        task,
        requests,
        _dir: dir,
    }
}

fn start(fake: &FakeRunpod, extra: &[&str]) -> Worker {
    start_with(fake, KEY, None, extra)
}

fn job(id: &str, input: Value) -> Value {
    json!({"id": id, "input": input})
}

fn final_body(fake: &FakeRunpod, id: &str) -> Value {
    let results = fake.results_for(id);
    assert_eq!(
        results.len(),
        1,
        "job {id} must have exactly one result: {results:?}"
    );
    parse_body(&results[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_jobs_complete_with_request_id_and_is_stream_false() {
    let fake = FakeRunpod::start(KEY).await;
    for i in 0..40 {
        fake.push_job(job(&format!("job-{i}"), json!({"n": i})));
    }
    let worker = start(&fake, &[]);
    assert_eq!(fake.wait_for_results(40, WAIT).await.len(), 40);
    for i in 0..40 {
        let id = format!("job-{i}");
        let result = &fake.results_for(&id)[0];
        assert_eq!(result.header("x-request-id"), Some(id.as_str()));
        assert_eq!(result.header("authorization"), Some(KEY));
        assert_eq!(query(result, "isStream").as_deref(), Some("false"));
        assert_eq!(query(result, "gpu").as_deref(), Some("TEST"));
        assert_eq!(parse_body(result)["output"]["n"], i);
    }
    let take = &fake.takes()[0];
    assert_eq!(query(take, "job_in_progress").as_deref(), Some("0"));
    assert_eq!(worker.stop().await.unwrap(), exit::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_jobs_carry_the_error_report_and_the_worker_goes_on() {
    let fake = FakeRunpod::start(KEY).await;
    fake.push_job(job("crash", json!({"do": "crash", "code": 3})));
    fake.push_job(job(
        "handler-error",
        json!({"do": "error", "message": "bad input"}),
    ));
    fake.push_job(job("after", json!({"do": "echo"})));
    let worker = start(&fake, &[]);
    fake.wait_for_results(3, WAIT).await;
    let error = final_body(&fake, "crash")["error"]
        .as_str()
        .unwrap()
        .to_owned();
    let report: Value = serde_json::from_str(&error).expect("the error is a JSON report");
    assert_eq!(report["error_type"], "HandlerCrashed");
    assert_eq!(report["error_message"], "handler exited with code 3");
    assert_eq!(report["worker_id"], "pod-1");
    assert!(report["hostname"].is_string() && report["jobpipe_version"].is_string());
    assert_eq!(final_body(&fake, "handler-error")["error"], "bad input");
    assert!(final_body(&fake, "after")["output"]["pid"].is_number());
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_posts_and_an_outage_lose_nothing() {
    let fake = FakeRunpod::start(KEY).await;
    fake.fail_done_posts(5);
    for i in 0..10 {
        fake.push_job(job(&format!("j{i}"), json!({"n": i})));
    }
    let worker = start(&fake, &[]);
    fake.wait_until(WAIT, |f| !f.results().is_empty()).await;
    fake.outage_for(Duration::from_secs(5));
    for i in 10..20 {
        fake.push_job(job(&format!("j{i}"), json!({"n": i})));
    }
    assert_eq!(
        fake.wait_for_results(20, Duration::from_secs(30))
            .await
            .len(),
        20
    );
    for i in 0..20 {
        assert_eq!(final_body(&fake, &format!("j{i}"))["output"]["n"], i);
    }
    let refused = |status: u16| {
        fake.requests()
            .iter()
            .filter(|r| r.path.contains("/job-done/") && r.status == Some(status))
            .count()
    };
    assert!(refused(500) >= 5, "the five failed posts were retried");
    assert!(
        refused(503) >= 1,
        "result posts met the outage and were retried"
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_key_is_fatal_within_seconds() {
    let fake = FakeRunpod::start(KEY).await;
    let started = std::time::Instant::now();
    let worker = start_with(&fake, "wrong-key", None, &[]);
    let outcome = tokio::time::timeout(Duration::from_secs(5), worker.task)
        .await
        .expect("exits within 5 s")
        .unwrap();
    let error = outcome.unwrap_err();
    assert_eq!(error.exit_code(), exit::AUTH);
    let message = error.to_string();
    assert!(message.contains("rejected the API key"), "{message}");
    assert!(
        !message.contains("wrong-key"),
        "the key must not be printed"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_arrive_on_time_with_the_ids_in_flight() {
    let fake = FakeRunpod::start(KEY).await;
    fake.push_job(job("slow", json!({"do": "hang"})));
    let worker = start(&fake, &["--job-timeout", "3s"]);
    let in_flight = |f: &FakeRunpod| {
        f.pings()
            .iter()
            .filter(|p| query(p, "job_id").as_deref() == Some("slow"))
            .count()
            >= 5
    };
    assert!(
        fake.wait_until(WAIT, in_flight).await,
        "pings name the job in flight"
    );
    let pings = fake.pings();
    for pair in pings.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap < Duration::from_millis(600),
            "ping gap {gap:?} with a 200ms interval"
        );
    }
    let ping = pings.last().unwrap();
    assert_eq!(
        query(ping, "runpod_version").as_deref(),
        Some(jobpipe::VERSION)
    );
    assert_eq!(ping.header("authorization"), Some(KEY));
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_worker_sends_stop_pod_and_the_next_job_gets_a_new_process() {
    let fake = FakeRunpod::start(KEY).await;
    fake.push_job(job("first", json!({"do": "refresh"})));
    fake.push_job(job("second", json!({"do": "echo"})));
    let worker = start(&fake, &[]);
    fake.wait_for_results(2, WAIT).await;
    let first = final_body(&fake, "first");
    let second = final_body(&fake, "second");
    assert_eq!(first["stopPod"], true);
    assert!(second.get("stopPod").is_none());
    assert_ne!(first["output"]["pid"], second["output"]["pid"]);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_worker_flag_replaces_the_process_after_every_job() {
    let fake = FakeRunpod::start(KEY).await;
    for i in 0..3 {
        fake.push_job(job(&format!("r{i}"), json!({"do": "echo"})));
    }
    let worker = start(&fake, &["--refresh-worker"]);
    fake.wait_for_results(3, WAIT).await;
    let pids: Vec<Value> = (0..3)
        .map(|i| {
            let body = final_body(&fake, &format!("r{i}"));
            assert_eq!(body["stopPod"], true);
            body["output"]["pid"].clone()
        })
        .collect();
    assert!(pids[0] != pids[1] && pids[1] != pids[2], "{pids:?}");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_progress_arrive_in_order_before_the_result() {
    let fake = FakeRunpod::start(KEY).await;
    fake.push_job(job("s", json!({"do": "stream", "n": 4})));
    fake.push_job(job("p", json!({"do": "progress", "n": 3})));
    let worker = start(&fake, &[]);
    fake.wait_for_results(2, WAIT).await;
    let streams = fake.stream_posts("s");
    let parts: Vec<Value> = streams
        .iter()
        .map(|r| parse_body(r)["output"]["n"].clone())
        .collect();
    assert_eq!(parts, [json!(0), json!(1), json!(2), json!(3)]);
    let result = &fake.results_for("s")[0];
    assert!(streams.iter().all(|s| s.at <= result.at));
    assert_eq!(query(result, "isStream").as_deref(), Some("true"));
    let progress = fake.progress_posts("p");
    let steps: Vec<Value> = progress
        .iter()
        .map(|r| parse_body(r)["output"]["step"].clone())
        .collect();
    assert_eq!(steps, [json!(0), json!(1), json!(2)]);
    assert!(progress
        .iter()
        .all(|r| parse_body(r)["status"] == "IN_PROGRESS"));
    assert_eq!(final_body(&fake, "p")["output"], "done");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_stream_puts_the_partials_in_the_final_output() {
    let fake = FakeRunpod::start(KEY).await;
    fake.push_job(job("s", json!({"do": "stream", "n": 2})));
    let worker = start(&fake, &["--return-aggregate-stream"]);
    fake.wait_for_results(1, WAIT).await;
    assert_eq!(
        final_body(&fake, "s")["output"],
        json!([{"n": 0}, {"n": 1}])
    );
    worker.stop().await.unwrap();
}

/// A handler that streams faster than its partials can be posted waits for
/// room, but that wait does not hold back --job-timeout: the job times out
/// on time and its result follows its queued updates within their budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_for_room_to_stream_still_times_out() {
    let fake = FakeRunpod::start(KEY).await;
    fake.set_stream_delay(Duration::from_millis(500));
    fake.push_job(job("flood", json!({"do": "stream", "n": 200})));
    let worker = start(&fake, &["--job-timeout", "1s"]);
    let results = fake.wait_for_results(1, WAIT).await;
    assert_eq!(results.len(), 1, "the job ended within {WAIT:?}");
    let error = final_body(&fake, "flood")["error"]
        .as_str()
        .unwrap()
        .to_owned();
    let report: Value = serde_json::from_str(&error).expect("a JSON error report");
    assert_eq!(report["error_type"], "JobTimeout");
    assert!(fake.stream_posts("flood").len() < 200);
    worker.stop().await.unwrap();
}

/// The partials kept for an aggregated output are bounded by
/// --max-output-size like any output: past it the job fails and says why,
/// while every partial is still streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregated_stream_over_the_output_limit_fails_the_job() {
    let fake = FakeRunpod::start(KEY).await;
    fake.push_job(job("long", json!({"do": "stream", "n": 40})));
    fake.push_job(job("short", json!({"do": "stream", "n": 2})));
    let worker = start(
        &fake,
        &["--return-aggregate-stream", "--max-output-size", "200"],
    );
    fake.wait_for_results(2, WAIT).await;
    let error = final_body(&fake, "long")["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains("streamed 40 partials") && error.contains("200 byte limit"),
        "{error}"
    );
    assert_eq!(fake.stream_posts("long").len(), 40);
    assert_eq!(
        final_body(&fake, "short")["output"],
        json!([{"n": 0}, {"n": 1}])
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_job_is_killed_unreported_and_the_next_job_runs() {
    let fake = FakeRunpod::start(KEY).await;
    fake.push_job(job("doomed", json!({"do": "hang"})));
    let worker = start(&fake, &[]);
    let running = |f: &FakeRunpod| {
        f.pings()
            .iter()
            .any(|p| query(p, "job_id").as_deref() == Some("doomed"))
    };
    assert!(fake.wait_until(WAIT, running).await);
    fake.stop_job("doomed");
    fake.push_job(job("next", json!({"do": "echo"})));
    fake.wait_for_results(1, WAIT).await;
    assert!(
        fake.results_for("doomed").is_empty(),
        "nothing is posted for a stopped job"
    );
    assert!(final_body(&fake, "next")["output"]["pid"].is_number());
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_uses_batch_takes_and_runs_jobs_in_parallel() {
    let fake = FakeRunpod::start(KEY).await;
    let worker = start(&fake, &["--concurrency", "4"]);
    // Jobs are taken only for ready handlers: once all four are ready, the
    // take asks for four.
    let all_ready = fake
        .wait_until(WAIT, |f| {
            f.takes()
                .iter()
                .any(|t| query(t, "batch_size").as_deref() == Some("4"))
        })
        .await;
    assert!(all_ready, "no take for four jobs");
    for i in 0..8 {
        fake.push_job(job(&format!("c{i}"), json!({"do": "sleep", "ms": 600})));
    }
    let started = std::time::Instant::now();
    fake.wait_for_results(8, WAIT).await;
    let batch = fake
        .takes()
        .into_iter()
        .find(|t| t.path.contains("/job-take-batch/"))
        .expect("a batch take");
    let size: usize = query(&batch, "batch_size").unwrap().parse().unwrap();
    assert!((2..=4).contains(&size), "batch_size {size}");
    let pids: std::collections::HashSet<String> = (0..8)
        .map(|i| final_body(&fake, &format!("c{i}"))["output"]["pid"].to_string())
        .collect();
    assert!(pids.len() >= 2, "jobs ran in several processes: {pids:?}");
    // Eight 600 ms jobs take at least 4.8 s one after another.
    assert!(
        started.elapsed() < Duration::from_millis(4000),
        "took {:?}",
        started.elapsed()
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_jobs_are_reported_and_the_worker_keeps_running() {
    let fake = FakeRunpod::start(KEY).await;
    fake.push_raw("this is not json");
    fake.push_job(json!({"id": "no-input"}));
    fake.push_job(json!({"input": {"no": "id"}}));
    fake.push_job(job("good", json!({"do": "echo"})));
    let worker = start(&fake, &[]);
    fake.wait_for_results(2, WAIT).await;
    let error = final_body(&fake, "no-input")["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("no \"input\""), "{error}");
    assert!(final_body(&fake, "good")["output"].is_object());
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_results_are_spooled_and_delivered_first_at_the_next_start() {
    let fake = FakeRunpod::start(KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    fake.fail_done_posts(usize::MAX);
    fake.push_job(job("kept", json!({"do": "echo"})));
    let worker = start_with(
        &fake,
        KEY,
        Some(spool.clone()),
        &["--shutdown-timeout", "1s"],
    );
    let failing = |f: &FakeRunpod| {
        f.requests()
            .iter()
            .filter(|r| r.path.contains("/job-done/"))
            .count()
            >= 2
    };
    assert!(fake.wait_until(WAIT, failing).await);
    let code = worker.stop().await.unwrap();
    assert_eq!(
        code,
        exit::FORCED,
        "results left undelivered at the deadline force the exit"
    );
    let files: Vec<_> = std::fs::read_dir(&spool).unwrap().collect();
    assert_eq!(files.len(), 1, "the result is in the spool");
    assert!(fake.results_for("kept").is_empty());

    fake.fail_done_posts(0);
    let worker = start_with(&fake, KEY, Some(spool.clone()), &[]);
    fake.wait_for_results(1, WAIT).await;
    assert!(final_body(&fake, "kept")["output"]["pid"].is_number());
    assert_eq!(worker.stop().await.unwrap(), exit::OK);
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "the spool is emptied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_400_means_no_job_and_429_backs_off_five_seconds() {
    let fake = FakeRunpod::start(KEY).await;
    fake.set_take_status(Some(400));
    let worker = start(&fake, &[]);
    assert!(
        fake.wait_until(WAIT, |f| f.takes().len() >= 3).await,
        "400 is no job: takes go on"
    );
    fake.set_take_status(Some(429));
    let limited = |f: &FakeRunpod| f.takes().iter().any(|t| t.status == Some(429));
    assert!(fake.wait_until(WAIT, limited).await);
    fake.set_take_status(None);
    fake.push_job(job("after-429", json!({"do": "echo"})));
    fake.wait_for_results(1, WAIT).await;
    let takes = fake.takes();
    let first_429 = takes.iter().position(|t| t.status == Some(429)).unwrap();
    let gap = takes[first_429 + 1].at - takes[first_429].at;
    assert!(
        gap >= Duration::from_millis(4500),
        "next take {gap:?} after a 429"
    );
    assert!(final_body(&fake, "after-429")["output"]["pid"].is_number());
    worker.stop().await.unwrap();
}

/// An endpoint that answers every take at once with something that is no
/// job is not asked again at once: the takes back off as after a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_answered_with_unreadable_jobs_back_off() {
    let fake = FakeRunpod::start(KEY).await;
    fake.set_empty_take_body(Some("{not a job"));
    let worker = start(&fake, &[]);
    // The window opens at the first take: the handler may be slow to start
    // on a loaded machine.
    let first = std::time::Instant::now();
    while fake.takes().is_empty() {
        assert!(first.elapsed() < WAIT, "no take within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let takes = fake.takes().len();
    assert!(
        takes <= 6,
        "{takes} takes in the 2 s after the first: back-off of 0.5 s doubling expected"
    );
    fake.set_empty_take_body(None);
    fake.push_job(job("after", json!({"do": "echo"})));
    fake.wait_for_results(1, WAIT).await;
    assert!(final_body(&fake, "after")["output"]["pid"].is_number());
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_schema_fails_runpod_jobs_before_the_handler_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.json");
    let pidfile = dir.path().join("pid");
    std::fs::write(
        &schema,
        json!({"type": "object", "properties": {"n": {"type": "integer"}}}).to_string(),
    )
    .unwrap();
    let fake = FakeRunpod::start(KEY).await;
    fake.push_job(job(
        "bad",
        json!({"do": "echo", "n": "two", "pidfile": pidfile}),
    ));
    fake.push_job(job("good", json!({"do": "echo", "n": 2})));
    let worker = start(&fake, &["--input-schema", schema.to_str().unwrap()]);
    fake.wait_for_results(2, WAIT).await;
    let error = final_body(&fake, "bad")["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.starts_with("input does not match --input-schema: /n: "),
        "{error}"
    );
    assert!(!pidfile.exists(), "the handler never saw the job");
    assert_eq!(final_body(&fake, "good")["output"]["n"], 2);
    worker.stop().await.unwrap();
}

/// jobpipe reads only a job's id and input and a handler's keys: the rest
/// travels as the bytes it came in, so numbers beyond 64-bit floats, number
/// spellings and every other key reach the handler and the result unchanged,
/// and line breaks in a pretty-printed job do not break the line protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_outputs_pass_through_as_they_came() {
    let fake = FakeRunpod::start(KEY).await;
    let input =
        r#"{"big": 123456789012345678901234567890, "f": 1.50, "e": 2E+3, "s": "a\u00e9\n"}"#;
    fake.push_raw(&format!(
        "{{\n  \"id\": \"exact\",\n  \"input\": {input},\r\n  \"webhook\": \"w\"\n}}"
    ));
    let worker = start(&fake, &["--", &support::c_echo()]);
    fake.wait_for_results(1, WAIT).await;
    let body = &fake.results_for("exact")[0].body;
    assert_eq!(body, &format!(r#"{{"output":{input}}}"#));
    assert_eq!(worker.stop().await.unwrap(), exit::OK);
}

/// A result larger than the bytes jobpipe lets travel at once is delivered
/// before the next job is taken, so a worker holds one large payload at a
/// time rather than the next job's input beside the last job's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_job_waits_while_a_large_result_is_posted() {
    let fake = FakeRunpod::start(KEY).await;
    let delay = Duration::from_millis(600);
    fake.set_done_delay(delay);
    let large = "x".repeat(jobpipe::runner::RESULT_BYTES_IN_FLIGHT + 1);
    fake.push_job(job("large", json!(large)));
    fake.push_job(job("small-1", json!("a")));
    fake.push_job(job("small-2", json!("b")));
    let worker = start(
        &fake,
        &["--max-output-size", "20MB", "--", &support::c_echo()],
    );
    fake.wait_for_results(3, WAIT).await;
    let posted = &fake.results_for("large")[0];
    assert_eq!(
        parse_body(posted)["output"],
        json!(large),
        "the large output arrives whole"
    );
    let done = posted.at;
    let takes = fake.takes();
    let next = takes
        .iter()
        .find(|take| take.at > done)
        .expect("a take after the large result was posted");
    assert!(
        next.at >= done + delay - Duration::from_millis(50),
        "the next take came {:?} after the large result's post, before it was answered",
        next.at - done
    );
    // Small results do not hold the next take back.
    let small = fake.results_for("small-1")[0].at;
    assert!(
        takes
            .iter()
            .any(|take| take.at > small && take.at < small + delay / 2),
        "a take went out while the small result was still being posted"
    );
    assert_eq!(worker.stop().await.unwrap(), exit::OK);
}
