//! Settings from the environment as a RunPod user writes them: booleans as
//! 1/0, true/false or yes/no, the SDK's log levels, and errors that name the
//! variable a bad value came from; and the INFO line for each finished job.

mod support;

use support::{jobpipe, python_echo};

#[test]
fn booleans_in_the_environment_accept_the_usual_spellings() {
    for (value, refreshed) in [
        ("1", true),
        ("yes", true),
        ("true", true),
        ("0", false),
        ("no", false),
        ("false", false),
    ] {
        let run = jobpipe()
            .env("JOBPIPE_REFRESH_WORKER", value)
            .args(["--log-level", "INFO"])
            .test_input(r#"{"input": 1}"#)
            .handler(python_echo())
            .run();
        run.expect_code(0);
        assert_eq!(
            run.stderr.contains("\"refresh\":1"),
            refreshed,
            "JOBPIPE_REFRESH_WORKER={value}\n{}",
            run.describe()
        );
    }
    // Every on/off variable reads them so.
    for name in [
        "JOBPIPE_KEEP_HANDLER_ON_ERROR",
        "JOBPIPE_PASS_SECRETS",
        "JOBPIPE_RETURN_AGGREGATE_STREAM",
        "JOBPIPE_SERVE_API",
    ] {
        let run = jobpipe()
            .env(name, "0")
            .test_input(r#"{"input": 1}"#)
            .handler(python_echo())
            .run();
        run.expect_code(0);
    }
}

#[test]
fn a_bad_value_in_the_environment_names_the_variable() {
    for (name, value, hint) in [
        (
            "JOBPIPE_REFRESH_WORKER",
            "maybe",
            "use 1/0, true/false, yes/no or on/off",
        ),
        ("JOBPIPE_CONCURRENCY", "many", "invalid digit"),
        ("JOBPIPE_MODE", "sometimes", "worker, oneshot"),
    ] {
        let run = jobpipe()
            .env(name, value)
            .test_input(r#"{"input": 1}"#)
            .handler(python_echo())
            .run();
        run.expect_code(2);
        let expected = format!("invalid value \"{value}\" in the environment variable {name}");
        assert!(run.stderr.contains(&expected), "{}", run.describe());
        assert!(run.stderr.contains(hint), "{}", run.describe());
    }
    // The same bad value on the command line is reported as the flag's.
    let run = jobpipe()
        .env("JOBPIPE_CONCURRENCY", "many")
        .args(["--concurrency", "lots"])
        .test_input(r#"{"input": 1}"#)
        .handler(python_echo())
        .run();
    run.expect_code(2);
    assert!(
        run.stderr.contains("'lots' for '--concurrency"),
        "{}",
        run.describe()
    );
    assert!(
        !run.stderr.contains("JOBPIPE_CONCURRENCY"),
        "{}",
        run.describe()
    );
}

#[test]
fn runpod_debug_level_notset_is_accepted_and_keeps_errors_only() {
    let run = jobpipe()
        .env("RUNPOD_DEBUG_LEVEL", "NOTSET")
        .test_input(r#"{"input": {"fail": "boom"}}"#)
        .handler(python_echo())
        .run();
    run.expect_code(1).expect_only_error_lines();
}

#[test]
fn each_finished_job_gets_an_info_line_with_outcome_and_duration() {
    let ok = jobpipe()
        .env("RUNPOD_LOG_LEVEL", "INFO")
        .test_input(r#"{"input": 1}"#)
        .handler(python_echo())
        .run();
    ok.expect_code(0);
    let line = ok
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains("job completed after"))
        .unwrap_or_else(|| panic!("no line for the finished job\n{}", ok.describe()));
    assert!(
        line.starts_with("INFO") && line.contains("local_test"),
        "{line}"
    );
    assert!(line.trim_end().ends_with('s'), "{line}");

    let crashed = jobpipe()
        .env("RUNPOD_LOG_LEVEL", "INFO")
        .test_input(r#"{"input": {"do": "crash"}}"#)
        .handler(["python3".to_owned(), support::fake_handler()])
        .run();
    crashed.expect_code(1);
    assert!(
        crashed.stderr.contains("job failed (HandlerCrashed) after"),
        "{}",
        crashed.describe()
    );
}
