//! Black-box tests of the jobpipe binary in local test mode: each runs
//! `jobpipe --test-input ... -- HANDLER` and checks what a user sees, the
//! result line on stdout, the log on stderr and the exit code.
//!
//! Most tests use `tests/fixtures/fake_handler.py`, whose behaviour is chosen
//! by the job's input (`{"do": "crash"}`, ...). Local test mode runs a single
//! job, so behaviour across several jobs is tested with the RunPod source.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use support::{
    assert_gone, fake_handler, fake_job, jobpipe, pid_of, python_echo, read_pid, repo_path, Run,
};

/// Runs the fake handler on one job doing `what`.
fn fake(what: &str, extra: Value, flags: &[&str]) -> Run {
    jobpipe()
        .args(flags)
        .test_input(&fake_job(what, extra))
        .handler([fake_handler()])
        .run()
}

fn assert_contains(haystack: &str, needle: &str, run: &Run) {
    assert!(
        haystack.contains(needle),
        "expected {needle:?} in {haystack:?}\n{}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------
// The example handlers and the test-mode options
// ---------------------------------------------------------------------------

#[test]
fn python_echo_handler_prints_the_output_and_exits_0() {
    let run = jobpipe()
        .test_input(r#"{"input": {"name": "x"}}"#)
        .handler(python_echo())
        .run();
    run.expect_code(0);
    assert_eq!(
        run.result(),
        json!({"id": "local_test", "status": "COMPLETED", "output": {"name": "x"}})
    );
}

#[test]
fn handler_error_fails_the_job_and_exits_1() {
    let run = jobpipe()
        .test_input(r#"{"input": {"fail": "boom"}}"#)
        .handler(python_echo())
        .run();
    run.expect_code(1);
    let result = run.result();
    assert_eq!(result["status"], "FAILED", "{}", run.describe());
    // The Python helper reports an exception in the runpod SDK's shape.
    let report: Value = serde_json::from_str(result["error"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("error is not a report ({e})\n{}", run.describe()));
    assert_eq!(report["error_type"], "<class 'ValueError'>", "{report}");
    assert_eq!(report["error_message"], "boom", "{report}");
    assert!(report["error_traceback"]
        .as_str()
        .unwrap_or_default()
        .contains("ValueError: boom"));
}

#[test]
fn test_input_json_in_the_working_directory_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("test_input.json"),
        r#"{"input": {"from": "file"}}"#,
    )
    .unwrap();
    let run = jobpipe().cwd(dir.path()).handler(python_echo()).run();
    run.expect_code(0);
    assert_eq!(run.output(), json!({"from": "file"}));
}

#[test]
fn matching_test_output_exits_0() {
    let run = jobpipe()
        .test_input(r#"{"input": {"name": "x"}}"#)
        .args(["--test-output", r#"{"name": "x"}"#])
        .handler(python_echo())
        .run();
    run.expect_code(0);
    assert_eq!(run.output(), json!({"name": "x"}));
}

#[test]
fn mismatching_test_output_exits_1() {
    let run = jobpipe()
        .test_input(r#"{"input": {"name": "x"}}"#)
        .args(["--test-output", r#"{"name": "y"}"#])
        .handler(python_echo())
        .run();
    run.expect_code(1);
    // The job itself completed; only the comparison failed.
    assert_eq!(run.output(), json!({"name": "x"}));
    assert_contains(&run.stderr, "does not match", &run);
}

#[test]
fn sdk_spellings_of_test_input_and_test_output_work() {
    let run = jobpipe()
        .args(["--test_input", r#"{"input": {"n": 1}}"#])
        .args(["--test_output", r#"{"n": 1}"#])
        .handler(python_echo())
        .run();
    run.expect_code(0);
    assert_eq!(run.output(), json!({"n": 1}));

    let run = jobpipe()
        .args(["--test_input", r#"{"input": {"n": 1}}"#])
        .args(["--test_output", r#"{"n": 2}"#])
        .handler(python_echo())
        .run();
    run.expect_code(1);
}

#[test]
fn node_echo_handler_works() {
    let run = jobpipe()
        .test_input(r#"{"input": {"name": "x", "list": [1, 2]}}"#)
        .handler(["node".to_string(), repo_path("handlers/node/echo.js")])
        .run();
    run.expect_code(0);
    assert_eq!(run.output(), json!({"name": "x", "list": [1, 2]}));
}

#[test]
fn oneshot_echo_script_works() {
    let run = jobpipe()
        .args(["--mode", "oneshot"])
        .test_input(r#"{"input": {"name": "x"}}"#)
        .handler([repo_path("handlers/oneshot/echo.sh")])
        .run();
    run.expect_code(0);
    assert_eq!(
        run.output(),
        json!({"job_id": "local_test", "job": {"id": "local_test", "input": {"name": "x"}}})
    );
}

#[test]
fn failing_oneshot_handler_exits_1_with_its_exit_status() {
    let run = jobpipe()
        .args(["--mode", "oneshot"])
        .test_input(r#"{"input": {"fail": true}}"#)
        .handler([repo_path("handlers/oneshot/echo.sh")])
        .run();
    run.expect_code(1);
    let report = run.error_report();
    assert_eq!(report["error_type"], "HandlerCrashed", "{report}");
    assert_contains(
        report["error_message"].as_str().unwrap(),
        "exited with code 3",
        &run,
    );
    assert_contains(
        report["error_traceback"].as_str().unwrap(),
        "echo.sh: job asked to fail",
        &run,
    );
}

// ---------------------------------------------------------------------------
// Handlers that crash, hang or break the protocol
// ---------------------------------------------------------------------------

#[test]
fn handler_exiting_with_code_3_fails_the_job_with_a_full_report() {
    let run = fake(
        "crash",
        json!({"code": 3}),
        &["--worker-id", "w-test", "--hostname", "h-test"],
    );
    run.expect_code(1);
    let report = run.error_report();
    assert_eq!(report["error_type"], "HandlerCrashed", "{report}");
    assert_contains(
        report["error_message"].as_str().unwrap(),
        "handler exited with code 3",
        &run,
    );
    assert_contains(
        report["error_traceback"].as_str().unwrap(),
        "fake_handler: crashing with code 3",
        &run,
    );
    assert_eq!(report["worker_id"], "w-test", "{report}");
    assert_eq!(report["hostname"], "h-test", "{report}");
    assert!(
        !report["jobpipe_version"].as_str().unwrap().is_empty(),
        "{report}"
    );
}

#[test]
fn handler_killed_by_sigkill_fails_the_job() {
    let run = fake("sigkill-self", json!({}), &[]);
    run.expect_code(1);
    let report = run.error_report();
    assert_eq!(report["error_type"], "HandlerCrashed", "{report}");
    assert_contains(
        report["error_message"].as_str().unwrap(),
        "killed by signal 9",
        &run,
    );
}

#[test]
fn handler_segfault_fails_the_job() {
    let run = fake("segfault", json!({}), &[]);
    run.expect_code(1);
    let report = run.error_report();
    assert_eq!(report["error_type"], "HandlerCrashed", "{report}");
    assert_contains(report["error_message"].as_str().unwrap(), "signal 11", &run);
}

#[test]
fn hanging_job_fails_as_timed_out_and_its_handler_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let run = fake(
        "hang",
        json!({"pidfile": pidfile}),
        &["--job-timeout", "1s", "--kill-grace", "500ms"],
    );
    run.expect_code(1);
    let report = run.error_report();
    assert_eq!(report["error_type"], "JobTimeout", "{report}");
    assert_contains(report["error_message"].as_str().unwrap(), "timed out", &run);
    assert!(
        run.elapsed >= Duration::from_secs(1) && run.elapsed < Duration::from_secs(4),
        "took {:?}\n{}",
        run.elapsed,
        run.describe()
    );
    assert_gone(&[read_pid(&pidfile)], Duration::from_secs(1), &run);
}

#[test]
fn timed_out_handler_that_ignores_sigterm_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let run = fake(
        "ignore-term",
        json!({"pidfile": pidfile}),
        &["--job-timeout", "1s", "--kill-grace", "500ms"],
    );
    run.expect_code(1);
    assert_eq!(run.error_report()["error_type"], "JobTimeout");
    assert!(
        run.elapsed < Duration::from_secs(4),
        "took {:?}\n{}",
        run.elapsed,
        run.describe()
    );
    assert_gone(&[read_pid(&pidfile)], Duration::from_secs(1), &run);
}

#[test]
fn garbage_on_stdout_is_skipped_and_the_answer_is_found() {
    let run = fake("garbage", json!({}), &[]);
    run.expect_code(0);
    assert_eq!(run.output(), json!({"clean": true}));
}

/// A stray print and no answer: the log warns at once with a hint, and the
/// timeout's error names the stray line.
#[test]
fn a_stray_line_and_no_answer_fails_the_test_job_naming_the_line() {
    let run = fake("stray-then-hang", json!({}), &["--job-timeout", "2s"]);
    run.expect_code(1);
    let report = run.error_report();
    assert_eq!(report["error_type"], "JobTimeout", "{report}");
    let message = report["error_message"].as_str().unwrap();
    assert_contains(message, "hello from a stray print", &run);
    assert_contains(message, "protocol lines are JSON objects", &run);
    assert_contains(&run.stderr, "WARN", &run);
    assert_contains(&run.stderr, "print logs to stderr", &run);
}

#[test]
fn answer_for_another_job_is_a_protocol_error() {
    let run = fake("wrong-id", json!({}), &[]);
    run.expect_code(1);
    let report = run.error_report();
    assert_eq!(report["error_type"], "ProtocolError", "{report}");
    assert_contains(
        report["error_message"].as_str().unwrap(),
        "not-this-job",
        &run,
    );
}

#[test]
fn handler_closing_its_stdout_is_a_protocol_error() {
    let run = fake("close-stdout", json!({}), &[]);
    run.expect_code(1);
    let report = run.error_report();
    assert_eq!(report["error_type"], "ProtocolError", "{report}");
    assert_contains(
        report["error_message"].as_str().unwrap(),
        "closed its stdout",
        &run,
    );
}

#[test]
fn grandchild_ignoring_sigterm_does_not_outlive_jobpipe() {
    let run = fake("grandchild", json!({}), &["--kill-grace", "500ms"]);
    run.expect_code(0);
    let output = run.output();
    let handler = pid_of(&output, "pid");
    let grandchild = pid_of(&output, "grandchild");
    assert_eq!(
        pid_of(&output, "pgid"),
        handler,
        "the handler leads a process group of its own"
    );
    assert_gone(&[handler, grandchild], Duration::from_secs(2), &run);
    assert!(
        run.elapsed < Duration::from_secs(4),
        "took {:?}\n{}",
        run.elapsed,
        run.describe()
    );
}

#[test]
fn orphan_that_escaped_the_group_is_reaped() {
    let run = fake(
        "orphan",
        json!({"linger_ms": 100, "check_after_ms": 600}),
        &[],
    );
    run.expect_code(0);
    let output = run.output();
    assert_eq!(
        output["orphan_state"], "gone",
        "the orphan should have been reaped by jobpipe (a child subreaper) while the job ran: {output}\n{}",
        run.describe()
    );
}

#[test]
fn output_over_max_output_size_fails_the_job() {
    let run = fake("big", json!({"size": 2000}), &["--max-output-size", "1KB"]);
    run.expect_code(1);
    let report = run.error_report();
    assert_eq!(report["error_type"], "OutputTooLarge", "{report}");
    assert_contains(
        report["error_message"].as_str().unwrap(),
        "--max-output-size",
        &run,
    );
}

/// An answer that passes the limit fails its job at once, though its line
/// never ends and the handler then stalls (no --job-timeout).
#[test]
fn an_over_long_line_without_a_newline_fails_its_job_at_once() {
    let run = fake(
        "flood-then-stall",
        json!({"size": 3 * 64 * 1024}),
        &["--max-output-size", "64KiB"],
    );
    run.expect_code(1);
    let report = run.error_report();
    assert_eq!(report["error_type"], "OutputTooLarge", "{report}");
    assert!(
        run.elapsed < Duration::from_secs(15),
        "took {:?} (before: forever)\n{}",
        run.elapsed,
        run.describe()
    );
}

/// A handler alive but hung (it answers nothing) fails its job as Stalled
/// within --stall-timeout, without a --job-timeout.
#[test]
fn a_silent_handler_fails_its_job_as_stalled_within_the_stall_timeout() {
    let run = fake("hang", json!({}), &["--stall-timeout", "2s"]);
    run.expect_code(1);
    let report = run.error_report();
    assert_eq!(report["error_type"], "Stalled", "{report}");
    let message = report["error_message"].as_str().unwrap();
    assert!(message.contains("for 2s (--stall-timeout"), "{message}");
    // Start-up of the handler plus 2 s, with slack for a loaded machine.
    assert!(
        run.elapsed >= Duration::from_secs(2) && run.elapsed < Duration::from_secs(15),
        "took {:?} (before: forever)\n{}",
        run.elapsed,
        run.describe()
    );
}

/// Heartbeat lines keep a job that works longer than --stall-timeout alive.
#[test]
fn heartbeats_keep_a_long_job_alive_under_the_stall_timeout() {
    let run = fake(
        "heartbeat",
        json!({"ms": 4000, "every_ms": 100}),
        &["--stall-timeout", "2s"],
    );
    run.expect_code(0);
    assert_eq!(run.output()["do"], "heartbeat");
}

#[test]
fn two_megabyte_line_under_the_default_limit_works() {
    let run = fake("long-line", json!({"size": 2 * 1024 * 1024}), &[]);
    run.expect_code(0);
    let output = run.output();
    let data = output["data"].as_str().expect("data is a string");
    assert_eq!(data.len(), 2 * 1024 * 1024);
    assert!(data.bytes().all(|b| b == b'y'));
}

#[test]
fn stderr_flood_with_a_megabyte_line_does_not_break_anything() {
    let run = fake("stderr-flood", json!({"lines": 2000}), &[]);
    run.expect_code(0);
    assert_eq!(run.output(), json!("flooded"));
    assert_contains(&run.stderr, "fake_handler: flood line 1999", &run);
    let longest = run.stderr.lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest < 64 * 1024,
        "a log line of {longest} bytes: the 1 MB stderr line should be clipped"
    );
}

#[test]
fn error_answer_fails_the_job_with_the_handlers_message() {
    let run = fake("error", json!({"message": "no GPU"}), &[]);
    run.expect_code(1);
    assert_eq!(run.error(), "no GPU");
}

#[test]
fn streamed_partials_become_the_output() {
    let run = fake("stream", json!({"n": 3}), &[]);
    run.expect_code(0);
    assert_eq!(run.output(), json!([{"n": 0}, {"n": 1}, {"n": 2}]));
}

#[test]
fn progress_lines_are_logged_and_the_final_answer_counts() {
    let run = fake("progress", json!({"n": 3}), &[]);
    run.expect_code(0);
    assert_eq!(run.output(), json!("done"));
    assert_contains(&run.stderr, r#"{"step":2}"#, &run);
}

#[test]
fn refresh_worker_answer_is_still_a_success() {
    let run = fake("refresh", json!({}), &[]);
    run.expect_code(0);
    assert_eq!(run.output()["do"], "refresh");
}

#[test]
fn handler_exiting_right_after_its_answer_is_fine() {
    let run = fake("exit-after", json!({}), &[]);
    run.expect_code(0);
    assert_eq!(run.output()["do"], "exit-after");
}

#[test]
fn slow_ready_within_the_startup_timeout_works() {
    let run = jobpipe()
        .args(["--startup-timeout", "5s"])
        .test_input(&fake_job("echo", json!({"v": 1})))
        .handler([fake_handler(), "--slow-ready".into(), "0.5".into()])
        .run();
    run.expect_code(0);
    assert_eq!(run.output()["v"], 1);
}

// ---------------------------------------------------------------------------
// Handlers that cannot start
// ---------------------------------------------------------------------------

/// The handler-cannot-start failures are reported at once, in one line that
/// names the program.
fn assert_unusable_handler(run: &Run, program: &str, problem: &str) {
    run.expect_code(3);
    assert!(
        run.elapsed < Duration::from_secs(1),
        "took {:?}\n{}",
        run.elapsed,
        run.describe()
    );
    assert!(run.stdout.is_empty(), "{}", run.describe());
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "one error line\n{}", run.describe());
    assert_contains(lines[0], program, run);
    assert_contains(lines[0], problem, run);
}

#[test]
fn missing_handler_fails_at_once_naming_it() {
    let run = jobpipe()
        .test_input(r#"{"input": {}}"#)
        .handler(["/no/such/handler"])
        .run();
    assert_unusable_handler(&run, "/no/such/handler", "does not exist");
}

#[test]
fn non_executable_handler_fails_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("handler.sh");
    std::fs::write(&script, "#!/bin/sh\necho '{\"ready\": true}'\n").unwrap();
    let program = script.to_string_lossy().into_owned();
    let run = jobpipe()
        .test_input(r#"{"input": {}}"#)
        .handler([program.clone()])
        .run();
    assert_unusable_handler(&run, &program, "not executable");
}

#[test]

fn handler_never_ready_gives_up_after_the_startup_timeout() {
    let run = jobpipe()
        .args(["--startup-timeout", "1s"])
        .test_input(r#"{"input": {}}"#)
        .handler([fake_handler(), "--never-ready".into()])
        .deadline(Duration::from_secs(5))
        .run();
    run.expect_code(3);
    assert_contains(&run.stderr, "not ready within 1s", &run);
    assert_contains(&run.stderr, "--startup-timeout", &run);
    assert!(
        run.elapsed < Duration::from_secs(3),
        "took {:?}\n{}",
        run.elapsed,
        run.describe()
    );
}

#[test]

fn handler_exiting_at_start_is_a_crash_loop() {
    let run = jobpipe()
        .test_input(r#"{"input": {}}"#)
        .handler([fake_handler(), "--exit-at-start".into(), "3".into()])
        // Five starts of Python; generous for a loaded machine.
        .deadline(Duration::from_secs(20))
        .run();
    run.expect_code(3);
    assert_contains(&run.stderr, "exited with code 3 before it was ready", &run);
    assert_contains(&run.stderr, "5 attempts", &run);
}

#[test]
fn a_handler_that_dies_before_ready_leaves_no_process_of_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let pids_file = dir.path().join("grandchildren");
    let run = jobpipe()
        .test_input(r#"{"input": {}}"#)
        .args(["--kill-grace", "200ms"])
        .handler([
            fake_handler(),
            "--grandchild-pids".into(),
            pids_file.display().to_string(),
            "--exit-at-start".into(),
            "3".into(),
        ])
        .deadline(Duration::from_secs(20))
        .run();
    run.expect_code(3);
    let pids: Vec<i32> = std::fs::read_to_string(&pids_file)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 5, "one grandchild per start attempt");
    assert_gone(&pids, Duration::from_secs(1), &run);
}

// ---------------------------------------------------------------------------
// Configuration errors and --help
// ---------------------------------------------------------------------------

#[test]
fn no_job_source_exits_2_naming_the_ways_to_give_one() {
    let run = jobpipe().handler(python_echo()).run();
    run.expect_code(2);
    assert_contains(&run.stderr, "--test-input", &run);
    assert_contains(&run.stderr, "test_input.json", &run);
    assert!(run.stdout.is_empty(), "{}", run.describe());
}

/// One bad setting: flags, environment, and the option the error must name.
struct BadSetting {
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    names: &'static str,
}

#[test]
fn invalid_flag_values_exit_2() {
    let cases = [
        BadSetting {
            args: &["--job-timeout", "nonsense"],
            env: &[],
            names: "--job-timeout",
        },
        BadSetting {
            args: &[],
            env: &[("JOBPIPE_CONCURRENCY", "0")],
            names: "--concurrency",
        },
        BadSetting {
            args: &["--max-output-size", "lots"],
            env: &[],
            names: "--max-output-size",
        },
        BadSetting {
            args: &["--mode", "sometimes"],
            env: &[],
            names: "--mode",
        },
        BadSetting {
            args: &["--log-level", "loud"],
            env: &[],
            names: "--log-level",
        },
    ];
    for case in cases {
        let mut cmd = jobpipe().args(case.args);
        for (name, value) in case.env {
            cmd = cmd.env(name, value);
        }
        let run = cmd
            .test_input(r#"{"input": {}}"#)
            .handler(python_echo())
            .run();
        run.expect_code(2);
        assert_contains(&run.stderr, case.names, &run);
    }
}

#[test]
fn a_listen_url_that_cannot_be_used_exits_2_naming_it() {
    let cases: [(&[&str], &str); 2] = [
        (
            &["--serve-api", "--queue-listen-url", "postgres://u@h/db"],
            "--queue-listen-url is for a postgres:// --queue",
        ),
        (
            &[
                "--queue",
                "postgres://u@127.0.0.1:1/db",
                "--queue-listen-url",
                "postgres://u@h",
            ],
            "--queue-listen-url",
        ),
    ];
    for (args, names) in cases {
        let run = jobpipe().args(args).handler(python_echo()).run();
        run.expect_code(2);
        assert_contains(&run.stderr, names, &run);
    }
}

#[test]
fn invalid_test_input_exits_2() {
    for (input, says) in [
        ("not json", "not valid JSON"),
        (r#"{"x": 1}"#, "\"input\""),
        ("[1]", "JSON object"),
    ] {
        let run = jobpipe().test_input(input).handler(python_echo()).run();
        run.expect_code(2);
        assert_contains(&run.stderr, says, &run);
    }
}

#[test]
fn help_mentions_every_environment_variable() {
    let run = jobpipe().arg("--help").run();
    run.expect_code(0);
    for var in [
        "JOBPIPE_HANDLER",
        "JOBPIPE_MODE",
        "JOBPIPE_CONCURRENCY",
        "JOBPIPE_JOBS_PER_HANDLER",
        "JOBPIPE_STARTUP_TIMEOUT",
        "JOBPIPE_JOB_TIMEOUT",
        "JOBPIPE_KILL_GRACE",
        "JOBPIPE_REFRESH_WORKER",
        "JOBPIPE_KEEP_HANDLER_ON_ERROR",
        "JOBPIPE_MAX_OUTPUT_SIZE",
        "JOBPIPE_PASS_SECRETS",
        "JOBPIPE_TEST_INPUT",
        "JOBPIPE_TEST_OUTPUT",
        "JOBPIPE_LOG_LEVEL",
        "JOBPIPE_LOG_FORMAT",
        "JOBPIPE_SHUTDOWN_TIMEOUT",
        "JOBPIPE_SPOOL_DIR",
        "JOBPIPE_RETURN_AGGREGATE_STREAM",
        "RUNPOD_WEBHOOK_GET_JOB",
        "RUNPOD_WEBHOOK_POST_OUTPUT",
        "RUNPOD_WEBHOOK_POST_STREAM",
        "RUNPOD_WEBHOOK_PING",
        "RUNPOD_PING_INTERVAL",
        "RUNPOD_AI_API_KEY",
        "RUNPOD_POD_ID",
        "RUNPOD_POD_HOSTNAME",
        "RUNPOD_LOG_LEVEL",
        "RUNPOD_ENDPOINT_ID",
    ] {
        assert_contains(&run.stdout, var, &run);
    }
    assert_contains(&run.stdout, "Exit codes", &run);
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

/// Runs `env` as a one-shot handler; returns the run and the handler's
/// environment.
fn handler_env(flags: &[&str]) -> (Run, HashMap<String, String>) {
    let run = jobpipe()
        .env("RUNPOD_AI_API_KEY", "secret123")
        .env("JOBPIPE_API_KEY", "secret456")
        .args(["--mode", "oneshot"])
        .args(flags)
        .test_input(r#"{"input": {}}"#)
        .handler(["/usr/bin/env"])
        .run();
    run.expect_code(0);
    let output = run.output();
    let text = output.as_str().expect("env prints text");
    let env = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (run, env)
}

#[test]
fn secrets_are_kept_from_the_handler() {
    let (run, env) = handler_env(&[]);
    assert!(!env.contains_key("RUNPOD_AI_API_KEY"), "{}", run.describe());
    assert!(!env.contains_key("JOBPIPE_API_KEY"), "{}", run.describe());
    assert!(!run.stdout.contains("secret123"), "{}", run.describe());
    assert!(
        env.get("JOBPIPE_WORKER_ID")
            .is_some_and(|id| !id.is_empty()),
        "{}",
        run.describe()
    );
    assert_eq!(
        env.get("JOBPIPE_JOB_ID").map(String::as_str),
        Some("local_test")
    );
    assert!(!run.stderr.contains("secret123"), "{}", run.describe());
    assert!(!run.stderr.contains("secret456"), "{}", run.describe());
}

#[test]
fn pass_secrets_gives_the_handler_the_secrets() {
    let (run, env) = handler_env(&["--pass-secrets"]);
    assert_eq!(
        env.get("RUNPOD_AI_API_KEY").map(String::as_str),
        Some("secret123"),
        "{}",
        run.describe()
    );
    assert_eq!(
        env.get("JOBPIPE_API_KEY").map(String::as_str),
        Some("secret456")
    );
    assert!(!run.stderr.contains("secret123"), "{}", run.describe());
}

#[test]
fn help_does_not_show_the_api_key() {
    let run = jobpipe()
        .env("RUNPOD_AI_API_KEY", "secret123")
        .arg("--help")
        .run();
    run.expect_code(0);
    assert!(!run.stdout.contains("secret123"), "{}", run.describe());
}

// ---------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------

#[test]
fn logs_are_json_lines_on_runpod() {
    let run = jobpipe()
        .env("RUNPOD_ENDPOINT_ID", "x")
        .test_input(r#"{"input": {"name": "x"}}"#)
        .handler(python_echo())
        .run();
    run.expect_code(0);
    let lines = run.stderr_lines();
    assert!(!lines.is_empty(), "{}", run.describe());
    let mut for_the_job = 0;
    for line in lines {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line {line:?} is not JSON ({e})\n{}", run.describe()));
        assert!(entry.get("requestId").is_some(), "{line}");
        assert!(entry["message"].is_string(), "{line}");
        assert!(entry["level"].is_string(), "{line}");
        if entry["requestId"] == "local_test" {
            for_the_job += 1;
        }
    }
    assert!(
        for_the_job > 0,
        "no log line names the job\n{}",
        run.describe()
    );
    // The handler's own stderr is logged too.
    assert_contains(&run.stderr, "echo handler loading...", &run);
}

#[test]
fn log_level_error_suppresses_info_lines() {
    // Text format.
    let run = jobpipe()
        .args(["--log-level", "ERROR"])
        .test_input(r#"{"input": {"fail": "boom"}}"#)
        .handler(python_echo())
        .run();
    run.expect_code(1).expect_only_error_lines();

    // JSON format.
    let run = jobpipe()
        .env("RUNPOD_ENDPOINT_ID", "x")
        .args(["--log-level", "ERROR"])
        .test_input(r#"{"input": {"name": "x"}}"#)
        .handler(python_echo())
        .run();
    run.expect_code(0);
    for line in run.stderr_lines() {
        let entry: Value = serde_json::from_str(line).expect("JSON log line");
        assert_eq!(entry["level"], "ERROR", "{line}\n{}", run.describe());
    }
}

#[test]
fn runpod_log_level_variable_sets_the_level() {
    let run = jobpipe()
        .env("RUNPOD_LOG_LEVEL", "ERROR")
        .test_input(r#"{"input": {"name": "x"}}"#)
        .handler(python_echo())
        .run();
    run.expect_code(0);
    assert!(
        run.stderr_lines().is_empty(),
        "a successful job logs nothing at ERROR\n{}",
        run.describe()
    );
}

#[test]
fn a_bad_endpoint_name_or_keys_file_exits_2_naming_the_line_and_never_the_key() {
    let run = jobpipe()
        .args(["--serve-api", "--endpoint", "no spaces"])
        .handler(python_echo())
        .run();
    run.expect_code(2);
    assert_contains(
        &run.stderr,
        "--endpoint: \"no spaces\" is not an endpoint name",
        &run,
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(
        &file,
        "[[keys]]\nname = \"acme\"\nkey = \"very-secret-key-0001\"\nendpoints = [\"sdxl\"]\nrole = \"submit\"\n\n[[keys]]\nname = \"bad\"\nkey = \"very-secret-key-0002\"\nendpoints = [\"*\"]\nrole = \"owner\"\n",
    )
    .unwrap();
    let run = jobpipe()
        .args(["--serve-api", "--api-keys"])
        .arg(&file)
        .handler(python_echo())
        .run();
    run.expect_code(2);
    assert_contains(&run.stderr, "line 7: key \"bad\": role must be", &run);
    assert!(!run.stderr.contains("very-secret"), "{}", run.describe());
}

#[test]
fn a_bad_endpoints_file_exits_2_naming_the_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.toml");
    std::fs::write(
        &file,
        "[endpoints.sdxl]\nmax_attempts = 5\n\n[endpoints.llm]\nttl = \"2h\"\nmax_attempts = 101\n",
    )
    .unwrap();
    let run = jobpipe()
        .args(["--serve-api", "--endpoints"])
        .arg(&file)
        .handler(python_echo())
        .run();
    run.expect_code(2);
    assert_contains(&run.stderr, "endpoints.toml", &run);
    assert_contains(
        &run.stderr,
        "line 6: endpoint \"llm\": max_attempts: must be from 1 to 100, not 101",
        &run,
    );

    std::fs::write(&file, "[endpoints.sdxl]\ninput_schema = \"nowhere.json\"\n").unwrap();
    let run = jobpipe()
        .env("JOBPIPE_ENDPOINTS", file.to_str().unwrap())
        .args(["--serve-api"])
        .handler(python_echo())
        .run();
    run.expect_code(2);
    assert_contains(
        &run.stderr,
        "line 2: endpoint \"sdxl\": input_schema: cannot read",
        &run,
    );
}
