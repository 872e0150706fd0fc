//! The C example handler in handlers/c: compiled with gcc here, then run by
//! the real jobpipe binary, which checks that it speaks the protocol without
//! any helper library.

mod support;

use serde_json::json;
use support::{c_echo, jobpipe};

#[test]
fn c_echo_returns_the_input_unchanged() {
    let input = json!({"text": "quote \" brace } bracket ]", "list": [1, 2.5, null, true], "nested": {"a": {}}});
    let run = jobpipe()
        .test_input(&json!({"input": input, "id": 42}).to_string())
        .handler([c_echo()])
        .run();
    run.expect_code(0);
    assert_eq!(
        run.result(),
        json!({"id": "42", "status": "COMPLETED", "output": input})
    );
}

#[test]
fn c_echo_fails_a_job_that_asks_to_fail() {
    let run = jobpipe()
        .test_input(r#"{"input": {"fail": "asked to fail"}}"#)
        .handler([c_echo()])
        .run();
    run.expect_code(1);
    assert_eq!(run.error(), "asked to fail");
}

#[test]
fn c_echo_matches_the_expected_output() {
    jobpipe()
        .test_input(r#"{"input": [1, "two"]}"#)
        .arg("--test-output")
        .arg(r#"[1, "two"]"#)
        .handler([c_echo()])
        .run()
        .expect_code(0);
}
