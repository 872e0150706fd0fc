//! Black-box tests of result delivery under hostile conditions: the jobpipe
//! binary against the stand-in RunPod queue with fault switches (slow
//! stream endpoint, job-done outage, polls answered at once, odd URLs and
//! job ids), plus `kill -9` and an unwritable spool. Memory figures are
//! printed (run with `--nocapture` to see them). `JOBPIPE_TEST_BINARY`
//! runs them against another jobpipe binary (an older build, say).

mod support;

use support::spooled;

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::daemon::{daemon, Daemon};
use support::fake_runpod::{job_id, parse_body, FakeRunpod};

/// The jobpipe binary under test.
fn binary() -> String {
    std::env::var("JOBPIPE_TEST_BINARY").unwrap_or_else(|_| support::binary().into())
}
const KEY: &str = "delivery-test-key";

/// A jobpipe process in the background (with its stderr in a file).
struct Worker(Daemon);

impl Worker {
    /// Starts jobpipe as a RunPod worker of `fake` with `extra` flags and
    /// the fake handler (unless `extra` names a handler after `--`).
    fn start(fake: &FakeRunpod, spool: &Path, extra: &[&str]) -> Worker {
        Self::start_env(fake.env(), spool, extra)
    }

    fn start_env(env: Vec<(String, String)>, spool: &Path, extra: &[&str]) -> Worker {
        let mut builder = daemon()
            .program(binary())
            .args(["--spool-dir", spool.to_str().unwrap()])
            .args(["--runpod-ping-interval", "200", "--kill-grace", "1s"])
            .args(extra);
        if !extra.contains(&"--") {
            builder = builder.args(["--", "python3", &support::fake_handler()]);
        }
        Worker(builder.envs(env).env("JOBPIPE_LOG_LEVEL", "INFO").start())
    }

    fn pid(&self) -> i32 {
        self.0.pid()
    }

    fn stderr(&self) -> String {
        self.0.log()
    }

    /// Resident and peak resident memory in KiB, from /proc.
    fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Waits up to `limit` for the exit; its code, or `None` if still running.
    async fn wait(&mut self, limit: Duration) -> Option<i32> {
        let status = self.0.wait_for_exit_async(limit).await?;
        Some(status.code().unwrap_or(-1))
    }

    /// SIGTERM, a second one after `patience`, SIGKILL as a last resort
    /// (when the worker is dropped).
    async fn stop(&mut self, patience: Duration) -> Option<i32> {
        self.0.signal(Signal::SIGTERM);
        if let Some(code) = self.wait(patience).await {
            return Some(code);
        }
        self.0.signal(Signal::SIGTERM);
        self.wait(Duration::from_secs(15)).await
    }

    fn kill9(&mut self) {
        self.0.kill();
    }
}

fn echo_job(id: &str, extra: Value) -> Value {
    json!({"id": id, "input": {"do": "echo", "extra": extra}})
}

async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    check()
}

/// A handler that answers each job with `n` stream partials of `pad` bytes.
const STREAMER: &str = r#"
import json, os, sys
def send(obj):
    view = memoryview((json.dumps(obj) + "\n").encode())
    while view:
        view = view[os.write(1, view):]
send({"ready": True})
for line in sys.stdin:
    job = json.loads(line)
    if "input" not in job:
        continue
    pad = "p" * int(job["input"]["pad"])
    for i in range(int(job["input"]["n"])):
        send({"id": job["id"], "stream": {"i": i, "pad": pad}})
    send({"id": job["id"], "output": []})
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_partials_to_a_slow_stream_endpoint_keeps_memory_flat() {
    let fake = FakeRunpod::start(KEY).await;
    fake.set_stream_delay(Duration::from_millis(20));
    fake.push_job(json!({"id": "flood", "input": {"n": 200_000, "pad": 1000}}));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("streamer.py");
    std::fs::write(&script, STREAMER).unwrap();
    let spool = dir.path().join("spool");
    let mut worker = Worker::start(
        &fake,
        &spool,
        &[
            "--shutdown-timeout",
            "1s",
            "--",
            "python3",
            script.to_str().unwrap(),
        ],
    );
    assert!(
        eventually(Duration::from_secs(20), || !fake
            .stream_posts("flood")
            .is_empty())
        .await,
        "no partial was posted\n{}",
        worker.stderr()
    );
    let start_rss = worker.memory_kib().0;
    let mut peak = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(worker.memory_kib().0);
    }
    let (_, hwm) = worker.memory_kib();
    let posts = fake.stream_posts("flood");
    println!(
        "flood: 200k partials of 1 kB to a stream endpoint taking 20 ms per post: RSS {} KiB when streaming began, peak RSS over 6 s {} KiB, VmHWM {} KiB; {} partials posted",
        start_rss,
        peak,
        hwm,
        posts.len()
    );
    let order: Vec<u64> = posts
        .iter()
        .map(|r| parse_body(r)["output"]["i"].as_u64().unwrap())
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "partials out of order"
    );
    assert!(
        hwm < 60 * 1024,
        "jobpipe grew to {hwm} KiB under a flood of partials\n{}",
        worker.stderr()
    );
    worker.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_result_is_spooled_before_kill_9_and_delivered_at_restart() {
    let fake = FakeRunpod::start(KEY).await;
    fake.fail_done_posts(usize::MAX);
    let ids: Vec<String> = (0..5).map(|i| format!("outage-{i}")).collect();
    for id in &ids {
        fake.push_job(echo_job(id, json!(id)));
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut worker = Worker::start(&fake, &spool, &[]);
    // Each job's handler has answered once its result was posted (and refused).
    assert!(
        eventually(Duration::from_secs(30), || ids.iter().all(|id| fake
            .requests()
            .iter()
            .any(|r| job_id(r).as_deref() == Some(id))))
        .await,
        "not every job was answered\n{}",
        worker.stderr()
    );
    let all_spooled = eventually(Duration::from_secs(5), || {
        spooled(&spool).len() == ids.len()
    })
    .await;
    let (rss, hwm) = worker.memory_kib();
    println!("job-done outage, 5 results: RSS {rss} KiB, VmHWM {hwm} KiB");
    worker.kill9();
    assert!(
        all_spooled,
        "after the failed posts the spool holds {} of {} results\n{}",
        spooled(&spool).len(),
        ids.len(),
        worker.stderr()
    );
    fake.fail_done_posts(0);
    let mut again = Worker::start(&fake, &spool, &[]);
    fake.wait_for_results(ids.len(), Duration::from_secs(30))
        .await;
    for id in &ids {
        let results = fake.results_for(id);
        assert_eq!(results.len(), 1, "{id}: {results:?}\n{}", again.stderr());
        assert_eq!(parse_body(&results[0])["output"]["extra"], json!(id));
    }
    assert!(
        eventually(Duration::from_secs(5), || spooled(&spool).is_empty()).await,
        "delivered results stay in the spool"
    );
    assert_eq!(again.stop(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_stops_at_the_undelivered_bound_and_resumes_with_delivery() {
    let fake = FakeRunpod::start(KEY).await;
    fake.fail_done_posts(usize::MAX);
    let big = "x".repeat(1 << 20);
    for i in 0..30 {
        fake.push_job(echo_job(&format!("big-{i}"), json!(big)));
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut worker = Worker::start(&fake, &spool, &["--max-undelivered", "4"]);
    assert!(
        eventually(Duration::from_secs(30), || spooled(&spool).len() >= 4).await,
        "results were not spooled\n{}",
        worker.stderr()
    );
    let mut peak = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(worker.memory_kib().0);
    }
    let handed_out = 30 - fake.queued();
    println!(
        "job-done outage with 1 MB results and --max-undelivered 4: {handed_out} jobs taken, peak RSS over 3 s {peak} KiB, VmHWM {} KiB",
        worker.memory_kib().1
    );
    // One more may have been taken while the fourth result was on its way.
    assert!(
        handed_out <= 5,
        "{handed_out} jobs taken during the outage\n{}",
        worker.stderr()
    );
    assert!(worker
        .stderr()
        .contains("taking no more jobs until delivery resumes"));
    fake.fail_done_posts(0);
    let results = fake.wait_for_results(30, Duration::from_secs(90)).await;
    assert_eq!(results.len(), 30, "{}", worker.stderr());
    assert_eq!(worker.stop(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_answered_at_once_are_paced() {
    let fake = FakeRunpod::start(KEY).await;
    fake.set_long_poll(Duration::ZERO);
    fake.set_stop_long_poll(Duration::ZERO);
    fake.set_empty_take_body(Some("[]"));
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut worker = Worker::start(&fake, &spool, &["--concurrency", "2"]);
    // The handler may take long to start on a loaded machine: the window
    // opens at the first take and the first job-stop poll, not at start.
    let ready = Instant::now();
    while fake.takes().is_empty() || fake.stop_polls().is_empty() {
        assert!(
            ready.elapsed() < Duration::from_secs(60),
            "no take and job-stop poll within 60 s: {}",
            worker.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (takes_before, stops_before) = (fake.takes().len(), fake.stop_polls().len());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let takes = fake.takes().len() - takes_before;
    let stops = fake.stop_polls().len() - stops_before;
    println!("4 s of polls answered at once: {takes} takes (batch, 200 []), {stops} job-stop polls (204)");
    assert!(takes <= 40, "{takes} takes in 4 s");
    assert!(stops <= 40, "{stops} job-stop polls in 4 s");
    fake.push_job(echo_job("after", json!(1)));
    assert_eq!(
        fake.wait_for_results(1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    assert_eq!(worker.stop(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_url_without_job_take_loses_no_job() {
    let fake = FakeRunpod::start(KEY).await;
    let env: Vec<(String, String)> = fake
        .env()
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "RUNPOD_WEBHOOK_GET_JOB" => (k, v.replace("/job-take/", "/next-job/")),
            _ => (k, v),
        })
        .collect();
    for i in 0..20 {
        fake.push_job(echo_job(&format!("j{i}"), json!(i)));
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut worker = Worker::start_env(env, &spool, &["--concurrency", "2"]);
    let results = fake.wait_for_results(20, Duration::from_secs(30)).await;
    assert_eq!(results.len(), 20, "{}", worker.stderr());
    let warnings = worker
        .stderr()
        .matches("cannot stop single jobs on this worker")
        .count();
    assert_eq!(warnings, 1, "{}", worker.stderr());
    assert_eq!(worker.stop(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weird_job_ids_are_answered_or_logged_never_retried_forever() {
    let fake = FakeRunpod::start(KEY).await;
    fake.push_job(echo_job("..", json!(1)));
    fake.push_job(echo_job("line\nbreak", json!(2)));
    fake.push_job(echo_job("fine", json!(3)));
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // Results an earlier run spooled with the same ids.
    std::fs::create_dir_all(&spool).unwrap();
    for (name, id) in [("1-a.json", ".."), ("2-b.json", "spooled\u{7f}id")] {
        let post =
            json!({"job_id": id, "kind": {"Final": {"is_stream": false}}, "body": {"output": 0}});
        std::fs::write(spool.join(name), post.to_string()).unwrap();
    }
    let mut worker = Worker::start(&fake, &spool, &[]);
    fake.wait_for_results(3, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answered = fake.results_for("line\nbreak");
    assert_eq!(answered.len(), 1, "{}", worker.stderr());
    let error = parse_body(&answered[0])["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("job id"), "{error}");
    assert_eq!(
        fake.results_for("spooled\u{7f}id").len(),
        1,
        "{}",
        worker.stderr()
    );
    assert_eq!(fake.results_for("fine").len(), 1);
    let posts = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(
        posts,
        3,
        "posts: {:?}\n{}",
        fake.requests(),
        worker.stderr()
    );
    let logged = worker
        .stderr()
        .matches("cannot be named in a result URL")
        .count();
    assert_eq!(logged, 2, "{}", worker.stderr());
    assert!(spooled(&spool).is_empty());
    assert_eq!(worker.stop(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_spool_is_exit_6_at_start() {
    let fake = FakeRunpod::start(KEY).await;
    fake.push_job(echo_job("never", json!(1)));
    // A directory that exists but where even root cannot create a file.
    let spool = Path::new("/proc/self");
    let mut worker = Worker::start(&fake, spool, &[]);
    let code = worker.wait(Duration::from_secs(10)).await;
    assert_eq!(code, Some(6), "{}", worker.stderr());
    assert!(
        worker.stderr().contains("spool directory /proc/self"),
        "{}",
        worker.stderr()
    );
    assert!(
        fake.takes().is_empty(),
        "a job was taken before the spool was checked"
    );
}
