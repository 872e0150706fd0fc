//! The handler's life beyond one job: recycling after N jobs or past a
//! memory limit, fitness checks before the first job, and the warm-up job
//! every new process runs. Black-box runs of the real binary, against the
//! stand-in RunPod queue where several jobs are needed.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::fake_runpod::{parse_body, FakeRunpod};
use support::live::Live;
use support::{c_echo, fake_handler, jobpipe, Run};

const KEY: &str = "lifecycle-key";
const WAIT: Duration = Duration::from_secs(30);

/// A RunPod worker with the fake handler and `flags`, serving its metrics.
fn worker(fake: &FakeRunpod, spool: &std::path::Path, flags: &[&str]) -> Live {
    let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    args.extend([
        "--spool-dir".into(),
        spool.display().to_string(),
        "--kill-grace".into(),
        "2s".into(),
        "--".into(),
        "python3".into(),
        fake_handler(),
    ]);
    Live::start(&args, &fake.env())
}

/// Pushes jobs one at a time and returns the pid that ran each.
async fn run_one_by_one(fake: &FakeRunpod, live: &Live, inputs: &[Value]) -> Vec<i64> {
    let mut pids = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let id = format!("job-{i}");
        fake.push_job(json!({"id": id, "input": input}));
        fake.wait_for_results(i + 1, WAIT).await;
        let results = fake.results_for(&id);
        assert_eq!(results.len(), 1, "{}", live.log());
        let body = parse_body(&results[0]);
        pids.push(
            body["output"]["pid"]
                .as_i64()
                .unwrap_or_else(|| panic!("no pid in {body}\n{}", live.log())),
        );
    }
    pids
}

/// Scrapes /metrics until `series` has `value`.
fn wait_for_sample(live: &Live, series: &str, value: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, text) = live.get("/metrics");
        if text.lines().any(|l| l == format!("{series} {value}")) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} never became {value}:\n{text}\n{}",
            live.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_is_recycled_after_max_jobs() {
    let fake = FakeRunpod::start(KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let live = worker(
        &fake,
        &dir.path().join("spool"),
        &["--max-jobs-per-handler", "2"],
    );
    let pids = run_one_by_one(&fake, &live, &vec![json!({"do": "echo"}); 5]).await;
    assert_eq!(pids[0], pids[1], "{pids:?}");
    assert_eq!(pids[2], pids[3], "{pids:?}");
    assert_ne!(pids[1], pids[2], "replaced after two jobs: {pids:?}");
    assert_ne!(pids[3], pids[4], "replaced after two more: {pids:?}");
    wait_for_sample(
        &live,
        "jobpipe_handler_restarts_total{reason=\"max_jobs\"}",
        "2",
    );
    live.signal(Signal::SIGTERM);
    assert_eq!(live.wait(WAIT), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_is_recycled_when_its_process_group_outgrows_the_memory_limit() {
    let fake = FakeRunpod::start(KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let live = worker(
        &fake,
        &dir.path().join("spool"),
        &["--max-handler-memory", "100MB"],
    );
    // 10 MB in the handler stays under the limit; 80 MB more, held by a
    // child in the handler's process group, goes over it only when the
    // whole group is counted.
    let inputs = [
        json!({"do": "allocate", "mb": 10}),
        json!({"do": "allocate", "mb": 80, "in_child": true}),
        json!({"do": "echo"}),
    ];
    let pids = run_one_by_one(&fake, &live, &inputs).await;
    assert_eq!(
        pids[0],
        pids[1],
        "10 MB more is under the limit: {pids:?}\n{}",
        live.log()
    );
    assert_ne!(pids[1], pids[2], "recycled after the child grew: {pids:?}");
    wait_for_sample(
        &live,
        "jobpipe_handler_restarts_total{reason=\"max_memory\"}",
        "1",
    );
    let log = live.log();
    let under = log
        .lines()
        .find(|l| l.contains("handler process group uses") && !l.contains("more than"))
        .unwrap_or_else(|| panic!("no memory figure after the first job:\n{log}"));
    let over = log
        .lines()
        .find(|l| l.contains("more than --max-handler-memory"))
        .unwrap_or_else(|| panic!("no recycling line:\n{log}"));
    println!("after 10 MB in the handler: {under}");
    println!("after 80 MB in a child:     {over}");
    live.signal(Signal::SIGTERM);
    assert_eq!(live.wait(WAIT), Some(0));
}

/// One test job through the C echo handler with fitness `flags`.
fn checked(flags: &[&str], path: Option<&str>) -> Run {
    let mut run = jobpipe().args(flags).test_input(r#"{"input": "hi"}"#);
    if let Some(path) = path {
        run = run.env("PATH", path);
    }
    run.handler([c_echo()]).run()
}

fn assert_passes(flags: &[&str], path: Option<&str>) {
    let run = checked(flags, path);
    run.expect_code(0);
    assert_eq!(run.output(), json!("hi"));
    assert!(
        run.stderr.contains("fitness check passed"),
        "{}",
        run.describe()
    );
}

/// Asserts exit 8 before any job, with a message containing each of `says`.
fn assert_fails(flags: &[&str], path: Option<&str>, says: &[&str]) {
    let run = checked(flags, path);
    run.expect_code(8);
    assert!(
        run.stdout.trim().is_empty(),
        "no job ran\n{}",
        run.describe()
    );
    assert!(
        !run.stderr.contains("handler ready"),
        "no handler started\n{}",
        run.describe()
    );
    for needle in std::iter::once(&"not fit to take jobs").chain(says) {
        assert!(
            run.stderr.contains(needle),
            "expected {needle:?}\n{}",
            run.describe()
        );
    }
}

#[test]
fn free_disk_check() {
    let dir = tempfile::tempdir().unwrap();
    let enough = format!("{}:1KB", dir.path().display());
    let too_much = format!("{}:1000PB", dir.path().display());
    assert_passes(&["--require-free-disk", &enough], None);
    assert_fails(
        &["--require-free-disk", &too_much],
        None,
        &["--require-free-disk", "less than the 1000.0 PB required"],
    );
}

#[test]
fn memory_check() {
    assert_passes(&["--require-memory", "1MB"], None);
    assert_fails(
        &["--require-memory", "1000PB"],
        None,
        &["--require-memory", "of memory available, less than"],
    );
}

#[test]
fn file_check() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.bin");
    std::fs::write(&model, b"weights").unwrap();
    assert_passes(&["--require-file", model.to_str().unwrap()], None);
    let missing = dir.path().join("missing.bin");
    assert_fails(
        &[
            "--require-file",
            model.to_str().unwrap(),
            "--require-file",
            missing.to_str().unwrap(),
        ],
        None,
        &["--require-file", "missing.bin", "No such file"],
    );
}

/// A directory with an `nvidia-smi` script that prints `output` and exits
/// with `code`.
fn fake_nvidia_smi(output: &str, code: i32) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("nvidia-smi");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho '{output}'\nexit {code}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn gpu_check() {
    let gpu = fake_nvidia_smi("GPU 0: NVIDIA A40 (UUID: GPU-1234)", 0);
    let path = format!("{}:/usr/bin:/bin", gpu.path().display());
    assert_passes(&["--require-gpu"], Some(&path));

    let broken = fake_nvidia_smi(
        "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver",
        9,
    );
    let path = format!("{}:/usr/bin:/bin", broken.path().display());
    assert_fails(
        &["--require-gpu"],
        Some(&path),
        &[
            "--require-gpu",
            "exited with code 9",
            "could not communicate",
        ],
    );

    let none = tempfile::tempdir().unwrap();
    assert_fails(
        &["--require-gpu"],
        Some(none.path().to_str().unwrap()),
        &["--require-gpu", "nvidia-smi", "no NVIDIA GPU driver"],
    );
}

#[test]
fn command_check() {
    assert_passes(&["--fitness-check", "test -d /"], None);
    assert_fails(
        &[
            "--fitness-check",
            "test -d /",
            "--fitness-check",
            "ls /no-such-backend",
        ],
        None,
        &[
            "--fitness-check ls /no-such-backend failed",
            "exited with code 2",
            "it printed: ls:",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_stays_503_while_checking_and_a_failed_check_exits_8_before_any_take() {
    let fake = FakeRunpod::start(KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let slow_failure =
        "python3 -c 'import sys, time; time.sleep(2); print(\"backend down\"); sys.exit(3)'";
    let live = worker(
        &fake,
        &dir.path().join("spool"),
        &["--fitness-check", slow_failure],
    );
    let (status, body) = live.get("/ready");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"checking\""), "{body}");
    assert_eq!(live.wait(WAIT), Some(8));
    assert!(
        fake.takes().is_empty(),
        "no job is taken by an unfit worker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_runs_on_each_new_process_before_real_jobs() {
    let fake = FakeRunpod::start(KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let live = worker(
        &fake,
        &dir.path().join("spool"),
        &[
            "--warmup-input",
            r#"{"input": {"do": "sleep", "ms": 300}}"#,
            "--max-jobs-per-handler",
            "1",
        ],
    );
    let pids = run_one_by_one(
        &fake,
        &live,
        &[json!({"do": "echo"}), json!({"do": "echo"})],
    )
    .await;
    assert_ne!(pids[0], pids[1]);
    let log = live.log();
    let lines: Vec<&str> = log.lines().collect();
    let position = |needle: &str| lines.iter().position(|l| l.contains(needle));
    let warmed = position("warm-up job done").unwrap_or_else(|| panic!("no warm-up:\n{log}"));
    let taken = position("job taken").unwrap_or_else(|| panic!("no job:\n{log}"));
    assert!(
        warmed < taken,
        "the warm-up comes before the first job:\n{log}"
    );
    // The second process (and the third, started after the second job)
    // warmed up too.
    let text = wait_for_sample(
        &live,
        "jobpipe_handler_startup_seconds_count{phase=\"warmup\"}",
        "3",
    );
    assert!(
        text.contains("jobpipe_handler_restarts_total{reason=\"start_failed\"} 0"),
        "{text}"
    );
    live.signal(Signal::SIGTERM);
    assert_eq!(live.wait(WAIT), Some(0));
}

#[test]
fn failed_warm_up_is_a_failed_start() {
    let run = jobpipe()
        .args([
            "--warmup-input",
            r#"{"input": {"fail": "model not loaded"}}"#,
        ])
        .test_input(r#"{"input": "hi"}"#)
        .handler([c_echo()])
        .deadline(WAIT)
        .run();
    run.expect_code(3);
    assert!(
        run.stdout.trim().is_empty() || run.result()["status"] == "FAILED",
        "{}",
        run.describe()
    );
    assert!(
        run.stderr
            .contains("the warm-up job (--warmup-input) failed: model not loaded"),
        "{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("attempts in a row"),
        "{}",
        run.describe()
    );
}
