//! Health, readiness and metrics of the real binary: `--metrics-addr`
//! serves `/health`, `/ready` and `/metrics` while jobs flow from the
//! stand-in RunPod queue; promtool judges the metrics text and the alert
//! rules in config/.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::fake_runpod::FakeRunpod;
use support::live::Live;

const KEY: &str = "observe-key";
const WAIT: Duration = Duration::from_secs(30);

/// Runs promtool with `args`, feeding `stdin`; returns (success, output).
pub fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(support::repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus; .ci/run installs it)");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn worker_args(
    fake: &FakeRunpod,
    spool: &std::path::Path,
    handler: &[String],
) -> (Vec<String>, Vec<(String, String)>) {
    let mut args = vec![
        "--spool-dir".to_owned(),
        spool.display().to_string(),
        "--runpod-ping-interval".into(),
        "500".into(),
        "--kill-grace".into(),
        "2s".into(),
        "--".into(),
    ];
    args.extend(handler.iter().cloned());
    (args, fake.env())
}

fn health(live: &Live) -> Value {
    let (status, body) = live.get("/health");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The value of one sample line in the metrics text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_real_jobs_satisfy_promtool() {
    let fake = FakeRunpod::start(KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let (args, mut env) = worker_args(&fake, &dir.path().join("spool"), &[support::c_echo()]);
    env.push(("RUNPOD_AI_API_KEY".into(), KEY.into()));
    let live = Live::start(&args, &env);
    for i in 0..4 {
        fake.push_job(json!({"id": format!("ok-{i}"), "input": {"n": i}}));
    }
    fake.push_job(json!({"id": "bad", "input": {"fail": "no"}}));
    let results = fake.wait_for_results(5, WAIT).await;
    assert_eq!(results.len(), 5, "{}", live.log());

    // The last answer may reach the fake before jobpipe has counted it, and
    // the failed job replaced the handler: wait until both have settled.
    live.wait_for_status("/ready", 200, WAIT);
    let deadline = std::time::Instant::now() + WAIT;
    let text = loop {
        let (status, text) = live.get("/metrics");
        assert_eq!(status, 200);
        if text.contains("jobpipe_result_posts_total{kind=\"result\",outcome=\"delivered\"} 5") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "results not counted:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (clean, complaints) = promtool(&["check", "metrics"], Some(&text));
    assert!(
        clean && complaints.trim().is_empty(),
        "promtool check metrics: {complaints}\n{text}"
    );
    assert_eq!(
        sample(&text, "jobpipe_jobs_total{outcome=\"completed\"}"),
        4.0
    );
    assert_eq!(sample(&text, "jobpipe_jobs_total{outcome=\"failed\"}"), 1.0);
    assert_eq!(sample(&text, "jobpipe_job_duration_seconds_count"), 5.0);
    assert_eq!(
        sample(
            &text,
            "jobpipe_handler_startup_seconds_count{phase=\"ready\"}"
        ),
        2.0,
        "the first handler and the one after the failed job"
    );
    assert_eq!(
        sample(
            &text,
            "jobpipe_handler_restarts_total{reason=\"job_failed\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "jobpipe_result_posts_total{kind=\"result\",outcome=\"delivered\"}"
        ),
        5.0
    );
    assert_eq!(sample(&text, "jobpipe_results_undelivered"), 0.0);
    // Idle between empty takes the worker is ready; while a take holds the
    // free slot it is busy. Either way exactly one of the two is set.
    assert_eq!(
        sample(&text, "jobpipe_state{state=\"ready\"}")
            + sample(&text, "jobpipe_state{state=\"busy\"}"),
        1.0
    );

    let started = std::time::Instant::now();
    let health = loop {
        let health = health(&live);
        if health["state"] == "ready" || started.elapsed() > Duration::from_secs(10) {
            break health;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(health["state"], "ready", "{health}");
    assert_eq!(health["jobs_processed"], 5);
    assert_eq!(health["jobs_failed"], 1);
    assert_eq!(health["in_flight"], 0);
    assert_eq!(health["undelivered_results"], 0);
    assert!(health["last_job_at"].as_f64().unwrap() > 1.0e9, "{health}");
    assert!(health["uptime_s"].as_f64().unwrap() > 0.0, "{health}");
    assert!(health["handler_restarts"].is_object(), "{health}");
    live.signal(Signal::SIGTERM);
    assert_eq!(live.wait(WAIT), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_flips_during_start_up_busy_and_drain() {
    let fake = FakeRunpod::start(KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let handler = [
        "python3".to_owned(),
        support::fake_handler(),
        "--slow-ready".into(),
        "2".into(),
    ];
    let (args, env) = worker_args(&fake, &dir.path().join("spool"), &handler);
    let live = Live::start(&args, &env);

    let (status, body) = live.get("/ready");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"starting\""), "{body}");
    live.wait_for_status("/ready", 200, WAIT);
    assert_eq!(health(&live)["state"], "ready");

    fake.push_job(json!({"id": "slow", "input": {"do": "sleep", "ms": 4000}}));
    let body = live.wait_for_status("/ready", 503, WAIT);
    assert!(
        body.contains("\"busy\""),
        "one slot, held by the slow job: {body}"
    );

    live.signal(Signal::SIGTERM);
    let body = live.wait_for_status("/ready", 503, WAIT);
    let deadline = std::time::Instant::now() + WAIT;
    let mut body = body;
    while !body.contains("\"draining\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "never draining: {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
        body = live.get("/ready").1;
    }
    assert_eq!(
        health(&live)["in_flight"],
        1,
        "the slow job still runs while draining"
    );
    assert_eq!(live.wait(WAIT), Some(0));
    assert_eq!(
        fake.results_for("slow").len(),
        1,
        "the drained job was delivered"
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let (ok, out) = promtool(&["check", "rules", "config/alerts.yml"], None);
    assert!(ok, "promtool check rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "config/alerts.test.yml"], None);
    assert!(ok, "promtool test rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The endpoint API's `/metrics` (`--serve-api`): the process's figures
/// and each endpoint's queue, labelled by endpoint, even one no worker
/// serves; promtool accepts the whole text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apis_metrics_carry_each_endpoints_queue_and_satisfy_promtool() {
    let builder = support::daemon::daemon().name("api");
    let queue = builder.dir().join("queue.db");
    let spool = builder.dir().join("spool");
    let mut daemon = builder
        .args(["--serve-api", "--log-level", "info"])
        .args(["--api-addr", "127.0.0.1:0", "--target-wait", "1s"])
        .env("JOBPIPE_API_KEY", KEY)
        .arg("--queue")
        .arg(format!("sqlite:{}", queue.display()))
        .arg("--spool-dir")
        .arg(spool)
        .args(["--", "python3", &support::fixtures::fake_handler()])
        .start();
    let line = daemon.wait_for_log("endpoint API listening on http://", WAIT);
    let addr = line.split("http://").nth(1).unwrap();
    let base = format!("http://{}", addr.split_whitespace().next().unwrap());
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let answer = http
            .post(format!("{base}/v2/unserved/run"))
            .bearer_auth(KEY)
            .json(&json!({"input": {"do": "echo"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let text = http
        .get(format!("{base}/metrics"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(
            &text,
            "jobpipe_endpoint_jobs_waiting{endpoint=\"unserved\"}"
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "jobpipe_endpoint_workers{endpoint=\"unserved\"}"),
        0.0
    );
    assert!(
        sample(
            &text,
            "jobpipe_endpoint_desired_workers{endpoint=\"unserved\"}"
        ) >= 3.0
    );
    assert_eq!(
        sample(&text, "jobpipe_endpoint_workers{endpoint=\"default\"}"),
        1.0,
        "{text}"
    );
    let (ok, judged) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool: {judged}\n{text}");
}
