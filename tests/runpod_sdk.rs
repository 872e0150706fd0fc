//! Handler files written for the runpod Python SDK (tests/fixtures/runpod_sdk)
//! run unchanged through the real jobpipe binary and the adapter
//! handlers/python/jobpipe_runpod.py: with `--test-input` and against the
//! stand-in of RunPod's queue, with the official runpod package (the
//! virtualenv `.ci/python-venv` makes) and without it (`python3 -S`, which
//! sees no installed packages). What RunPod receives is compared with what
//! the SDK's own worker posts for the same job; the differences that are
//! intended are named where they are normalised away.

mod support;
use support::prereq::venv_python;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::daemon::daemon;
use support::fake_runpod::{parse_body, query, FakeRunpod, Request};
use support::{jobpipe, repo_path};
use tokio::sync::Semaphore;

const KEY: &str = "sdk-test-key";
/// Longest wait for one worker's results: Python and the runpod package
/// start slowly on a loaded machine.
const WAIT: Duration = Duration::from_secs(90);

/// A Python with the runpod package, or one without it.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Python {
    WithPackage,
    WithoutPackage,
}

impl Python {
    fn argv(self, fixture: &str) -> Vec<String> {
        let mut argv = match self {
            Python::WithPackage => vec![venv_python().expect("checked by the caller")],
            Python::WithoutPackage => vec!["python3".to_owned(), "-S".to_owned()],
        };
        argv.push(repo_path("handlers/python/jobpipe_runpod.py"));
        argv.push(fixture_path(fixture));
        argv
    }
}

fn fixture_path(name: &str) -> String {
    repo_path(&format!("tests/fixtures/runpod_sdk/{name}.py"))
}

/// What RunPod must receive for one job.
#[derive(Clone, Debug)]
enum Final {
    /// Exactly this job-done body.
    Body(Value),
    /// A failure whose error is the SDK's report of this exception.
    Report {
        error_type: &'static str,
        message: &'static str,
    },
    /// A failure whose error text contains this.
    ErrorContains(&'static str),
}

#[derive(Clone, Debug)]
struct Case {
    fixture: &'static str,
    input: Value,
    done: Final,
    streams: Vec<Value>,
    progress: Vec<Value>,
    /// Uses one of the runpod package's utilities.
    needs_package: bool,
}

fn case(fixture: &'static str, input: Value, done: Final) -> Case {
    Case {
        fixture,
        input,
        done,
        streams: Vec::new(),
        progress: Vec::new(),
        needs_package: false,
    }
}

fn cases() -> Vec<Case> {
    let body = |v: Value| Final::Body(v);
    vec![
        case(
            "sync_echo",
            json!({"a": 1}),
            body(json!({"output": {"echo": {"a": 1}}})),
        ),
        case(
            "async_echo",
            json!({"a": 1}),
            body(json!({"output": {"echo": {"a": 1}}})),
        ),
        Case {
            streams: vec![json!({"part": 0}), json!({"part": 1}), json!({"part": 2})],
            ..case(
                "generator",
                json!({"parts": 3}),
                body(json!({"output": []})),
            )
        },
        Case {
            streams: vec![json!({"part": 0})],
            ..case(
                "generator",
                json!({"parts": 3, "fail_at": 1}),
                Final::Report {
                    error_type: "<class 'RuntimeError'>",
                    message: "failed at part 1",
                },
            )
        },
        Case {
            streams: vec![json!("a"), json!("b"), json!("c")],
            ..case(
                "async_generator_aggregate",
                json!({"text": "a b c"}),
                body(json!({"output": ["a", "b", "c"]})),
            )
        },
        Case {
            progress: vec![
                json!({"step": 1, "of": 2}),
                json!({"step": 2, "of": 2}),
                json!("done"),
            ],
            ..case(
                "progress",
                json!({"steps": 2}),
                body(json!({"output": {"steps": 2}})),
            )
        },
        case(
            "refresh_by_return",
            json!({}),
            body(json!({"output": {"fresh": true}, "stopPod": true})),
        ),
        case(
            "refresh_by_config",
            json!({}),
            body(json!({"output": {"ok": true}, "stopPod": true})),
        ),
        case(
            "error_dict",
            json!({"why": "no prompt"}),
            body(json!({"error": "bad input: no prompt"})),
        ),
        case(
            "error_dict",
            json!({"with_output": true}),
            body(json!({"error": "half done", "output": {"done": 3}})),
        ),
        case(
            "exception",
            json!({"a": 1}),
            Final::Report {
                error_type: "<class 'ValueError'>",
                message: "boom: {'a': 1}",
            },
        ),
        Case {
            needs_package: true,
            ..case(
                "validator",
                json!({"prompt": "a cat"}),
                body(json!({"output": {"prompt": "a cat", "steps": 20}})),
            )
        },
        Case {
            needs_package: true,
            ..case(
                "validator",
                json!({"steps": 500}),
                Final::ErrorContains("prompt"),
            )
        },
        case(
            "noisy",
            json!({"a": 1}),
            body(json!({"output": {"quiet": {"a": 1}}})),
        ),
        case(
            "returns_generator",
            json!({}),
            Final::ErrorContains("is a generator object, which is not JSON"),
        ),
    ]
}

/// Checks an error report (JSON text) of the adapter.
fn check_report(error: &str, error_type: &str, message: &str, what: &str) {
    let report: Value = serde_json::from_str(error)
        .unwrap_or_else(|e| panic!("{what}: error is not a JSON report ({e}): {error}"));
    assert_eq!(report["error_type"], error_type, "{what}: {report}");
    assert_eq!(report["error_message"], message, "{what}: {report}");
    let traceback = report["error_traceback"].as_str().unwrap_or_default();
    assert!(
        traceback.contains("Traceback") && traceback.contains(message),
        "{what}: {report}"
    );
    for key in ["hostname", "worker_id"] {
        assert!(report[key].is_string(), "{what}: no {key}: {report}");
    }
}

fn check_final(done: &Final, body: &Value, what: &str) {
    match done {
        Final::Body(expected) => assert_eq!(body, expected, "{what}"),
        Final::Report {
            error_type,
            message,
        } => {
            let error = body["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: {body}"));
            check_report(error, error_type, message, what);
        }
        Final::ErrorContains(part) => {
            let error = body["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: {body}"));
            assert!(error.contains(part), "{what}: {body}");
        }
    }
}

/// Checks the `--test-input` result line against what RunPod would get:
/// test mode has no `stopPod`, and shows a stream's partials as its output.
fn check_test_line(case: &Case, line: &Value, what: &str) {
    let mut body = line.clone();
    let obj = body.as_object_mut().unwrap();
    obj.remove("id");
    let status = obj.remove("status").unwrap_or_default();
    assert_eq!(status == "FAILED", body_fails(&case.done), "{what}: {line}");
    let mut expected = case.done.clone();
    if let Final::Body(Value::Object(v)) = &mut expected {
        v.remove("stopPod");
        if !case.streams.is_empty() && !v.contains_key("error") {
            v.insert("output".into(), Value::Array(case.streams.clone()));
        }
    }
    check_final(&expected, &body, what);
}

fn run_test_input(case: &Case, python: Python) {
    let what = format!("{} {} ({python:?}, --test-input)", case.fixture, case.input);
    let run = jobpipe()
        .test_input(&json!({"input": case.input}).to_string())
        .handler(python.argv(case.fixture))
        .deadline(WAIT)
        .run();
    let failed = body_fails(&case.done);
    run.expect_code(if failed { 1 } else { 0 });
    check_test_line(case, &run.result(), &what);
}

fn body_fails(done: &Final) -> bool {
    match done {
        Final::Body(v) => v.get("error").is_some(),
        _ => true,
    }
}

/// Runs every case in a few threads: each run waits mostly on Python's
/// start-up.
fn run_all_test_inputs(python: Python) {
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| python == Python::WithPackage || !c.needs_package)
        .collect();
    std::thread::scope(|scope| {
        for share in cases.chunks(cases.len().div_ceil(3)) {
            scope.spawn(move || share.iter().for_each(|c| run_test_input(c, python)));
        }
    });
}

#[test]
fn sdk_handlers_run_with_test_input_using_the_runpod_package() {
    let Some(_) = venv_python() else { return };
    run_all_test_inputs(Python::WithPackage);
}

#[test]
fn sdk_handlers_run_with_test_input_without_the_runpod_package() {
    run_all_test_inputs(Python::WithoutPackage);
}

#[test]
fn a_handler_that_needs_the_package_fails_to_start_clearly_without_it() {
    let run = jobpipe()
        .test_input(r#"{"input": {"prompt": "x"}}"#)
        .handler(Python::WithoutPackage.argv("validator"))
        .deadline(WAIT)
        .run();
    run.expect_code(3);
    assert!(
        run.stderr
            .contains("No module named 'runpod.serverless.utils'"),
        "{}",
        run.describe()
    );
}

#[test]
fn the_sdks_command_line_flags_are_removed_before_the_handler_sees_them() {
    let mut argv = Python::WithoutPackage.argv("argv_echo");
    argv.extend(
        [
            "--rp_log_level",
            "DEBUG",
            "--keep",
            "--test_input={\"input\": 2}",
            "--rp_serve_api",
            "x",
        ]
        .map(String::from),
    );
    let run = jobpipe()
        .test_input(r#"{"input": 1}"#)
        .handler(argv)
        .deadline(WAIT)
        .run();
    run.expect_code(0);
    assert_eq!(run.output(), json!(["--keep", "x"]), "{}", run.describe());
    assert!(run
        .stderr
        .contains("removed the runpod SDK flag --test_input"));
}

/// Posts RunPod received for one job.
struct Posts {
    done: Value,
    is_stream: Option<String>,
    streams: Vec<Value>,
    progress: Vec<Value>,
}

fn posts_for(fake: &FakeRunpod, id: &str) -> Posts {
    let results = fake.results_for(id);
    assert_eq!(results.len(), 1, "one result for {id}: {results:?}");
    let output = |r: &Request| parse_body(r)["output"].clone();
    Posts {
        done: parse_body(&results[0]),
        is_stream: query(&results[0], "isStream"),
        streams: fake.stream_posts(id).iter().map(output).collect(),
        progress: fake.progress_posts(id).iter().map(output).collect(),
    }
}

/// Runs a worker command against a fresh stand-in holding `jobs`, waits
/// for a result for each (and for `progress` updates), stops the worker
/// with SIGTERM to its process group, and returns the stand-in.
async fn serve(
    argv: Vec<String>,
    extra_env: &[(&str, &str)],
    jobs: &[Value],
    progress: usize,
) -> (FakeRunpod, Option<i32>) {
    let fake = FakeRunpod::start(KEY).await;
    for job in jobs {
        fake.push_job(job.clone());
    }
    let builder = daemon()
        .program(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default());
    let spool = builder.dir().join("spool");
    let mut worker = builder
        .env("JOBPIPE_SPOOL_DIR", &spool)
        .env("JOBPIPE_KILL_GRACE", "1s")
        // The SDK's checks of the machine (free disk, memory, network) are
        // not what is compared here; a crowded test machine fails them.
        .env("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "true")
        .envs(fake.env())
        .envs(extra_env.iter().copied())
        .own_process_group()
        .start();
    let ids: Vec<String> = jobs
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    let all_in = fake
        .wait_until(WAIT, |f| {
            ids.iter().all(|id| f.results_for(id).len() == 1)
                && ids
                    .iter()
                    .map(|id| f.progress_posts(id).len())
                    .sum::<usize>()
                    >= progress
        })
        .await;
    worker.signal_group(Signal::SIGTERM);
    let code = worker
        .wait_for_exit_async(Duration::from_secs(20))
        .await
        .and_then(|s| s.code());
    worker.kill();
    assert!(
        all_in,
        "{argv:?}: results missing; worker output:\n{}",
        worker.logs()
    );
    (fake, code)
}

fn jobpipe_argv(python: Python, fixture: &str, extra: &[&str]) -> Vec<String> {
    let mut argv = vec![support::binary().to_owned()];
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv.push("--".into());
    argv.extend(python.argv(fixture));
    argv
}

async fn run_on_runpod(case: &Case, python: Python, id: &str) -> Posts {
    let job = json!({"id": id, "input": case.input});
    let argv = jobpipe_argv(python, case.fixture, &[]);
    let (fake, code) = serve(argv, &[], &[job], case.progress.len()).await;
    assert_eq!(code, Some(0), "jobpipe exits 0 on SIGTERM ({id})");
    let posts = posts_for(&fake, id);
    let what = format!("{} {} ({python:?}, RunPod)", case.fixture, case.input);
    check_final(&case.done, &posts.done, &what);
    assert_eq!(posts.streams, case.streams, "{what}");
    assert_eq!(posts.progress, case.progress, "{what}: progress in order");
    let streamed = !case.streams.is_empty();
    assert_eq!(
        posts.is_stream.as_deref(),
        Some(if streamed { "true" } else { "false" }),
        "{what}"
    );
    posts
}

/// What the SDK's own worker posts for the same job.
async fn run_sdk_worker(case: &Case, id: &str) -> Posts {
    let job = json!({"id": id, "input": case.input});
    let argv = vec![venv_python().unwrap(), fixture_path(case.fixture)];
    let env = [("RUNPOD_LOG_LEVEL", "WARN")];
    let (fake, _) = serve(argv, &env, &[job], case.progress.len()).await;
    posts_for(&fake, id)
}

/// A body with the parts that are meant to differ made comparable.
fn comparable(mut body: Value) -> Value {
    match body.get("error").cloned() {
        // The report's traceback names different frames, and the SDK says
        // "unknown" for the host where jobpipe names it.
        Some(Value::String(text)) => {
            if let Ok(Value::Object(mut report)) = serde_json::from_str::<Value>(&text) {
                report.remove("error_traceback");
                report.remove("hostname");
                body["error"] = Value::Object(report);
            }
        }
        // Intended difference: the SDK posts a returned non-string error
        // (e.g. rp_validator's list) as it is; jobpipe posts its JSON text,
        // so a job's error is always a string.
        Some(other) if !other.is_null() => body["error"] = Value::String(other.to_string()),
        _ => {}
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_handlers_on_runpod_post_what_the_sdks_own_worker_posts() {
    let Some(_) = venv_python() else { return };
    let limit = Arc::new(Semaphore::new(3));
    let mut runs = tokio::task::JoinSet::new();
    for (n, case) in cases().into_iter().enumerate() {
        let limit = limit.clone();
        runs.spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let id = format!("job-{n}-{}", case.fixture);
            let ours = run_on_runpod(&case, Python::WithPackage, &id).await;
            if case.fixture == "returns_generator" {
                // Intended difference: the SDK cannot serialise the
                // generator object, logs that and posts no result at all,
                // so the job hangs on the platform until it times out.
                return;
            }
            let sdk = run_sdk_worker(&case, &id).await;
            let what = format!(
                "{} {}: jobpipe vs the SDK's worker",
                case.fixture, case.input
            );
            assert_eq!(ours.streams, sdk.streams, "{what}");
            assert_eq!(ours.is_stream, sdk.is_stream, "{what}");
            // The SDK posts progress from threads of their own, in any
            // order and even after the result; jobpipe keeps them in order.
            let mut sdk_progress = sdk
                .progress
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>();
            let mut our_progress = ours
                .progress
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>();
            sdk_progress.sort();
            our_progress.sort();
            assert_eq!(our_progress, sdk_progress, "{what}");
            let (mut ours, mut sdk) = (comparable(ours.done), comparable(sdk.done));
            if case.fixture == "generator" && case.input.get("fail_at").is_some() {
                // Intended difference: an exception in a generator is the
                // SDK's error report like any other exception; the SDK
                // sends "handler: <message> \ntraceback: ..." text here.
                let text = sdk["error"].as_str().unwrap_or_default();
                assert!(
                    text.starts_with("handler: failed at part 1"),
                    "{what}: {sdk}"
                );
                assert_eq!(ours["error"]["error_message"], "failed at part 1", "{what}");
                (ours, sdk) = (Value::Null, Value::Null);
            }
            assert_eq!(ours, sdk, "{what}");
        });
    }
    while let Some(done) = runs.join_next().await {
        done.expect("a case failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_handlers_on_runpod_without_the_runpod_package() {
    for (n, case) in cases().iter().enumerate().filter(|(_, c)| !c.needs_package) {
        run_on_runpod(case, Python::WithoutPackage, &format!("plain-{n}")).await;
    }
}

/// concurrency_modifier returns 3 and jobpipe allows 4 jobs per handler:
/// three jobs run at once, never four, in the adapter as in the SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_modifier_limits_jobs_below_jobs_per_handler() {
    let jobs: Vec<Value> = (0..4)
        .map(|i| json!({"id": format!("c{i}"), "input": {}}))
        .collect();
    let mut workers = vec![(
        "jobpipe",
        jobpipe_argv(
            Python::WithoutPackage,
            "concurrency",
            &["--jobs-per-handler", "4"],
        ),
    )];
    if let Some(python) = venv_python() {
        workers.push(("the SDK", vec![python, fixture_path("concurrency")]));
    }
    for (who, argv) in workers {
        let (fake, _) = serve(argv, &[], &jobs, 0).await;
        for job in &jobs {
            let id = job["id"].as_str().unwrap();
            let posts = posts_for(&fake, id);
            assert_eq!(posts.done, json!({"output": {"peak": 3}}), "{who}, {id}");
        }
    }
}

#[test]
fn the_adapter_names_a_missing_handler_file_and_a_missing_start_call() {
    let missing = jobpipe()
        .test_input(r#"{"input": 1}"#)
        .handler([
            "python3",
            &repo_path("handlers/python/jobpipe_runpod.py"),
            "nope.py",
        ])
        .run();
    missing.expect_code(3);
    assert!(
        missing.stderr.contains("handler file 'nope.py' not found"),
        "{}",
        missing.describe()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("no_start.py");
    std::fs::write(&file, "import runpod\n\ndef handler(job):\n    return 1\n").unwrap();
    let run = jobpipe()
        .test_input(r#"{"input": 1}"#)
        .handler([
            "python3".to_owned(),
            repo_path("handlers/python/jobpipe_runpod.py"),
            path_str(&file),
        ])
        .run();
    run.expect_code(3);
    assert!(
        run.stderr
            .contains("ended without calling runpod.serverless.start"),
        "{}",
        run.describe()
    );
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
