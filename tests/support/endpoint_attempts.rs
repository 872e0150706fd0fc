//! A job's retry policy (`policy.retry`) and its attempt history
//! (`GET /v2/{endpoint}/jobs/{id}`'s `attempts`), written once and run
//! against every queue store (see `all_attempt_tests!`), with the real
//! handler process crashing, hanging and failing.

use serde_json::{json, Value};

use super::endpoint::{fake, Endpoint, Store};

/// Every attempt test for one store.
#[macro_export]
macro_rules! all_attempt_tests {
    ($store:expr) => {
        $crate::route_tests!(
            endpoint_attempts,
            $store,
            a_crash_and_a_timeout_are_retried_and_the_history_shows_each_attempt,
            handler_errors_are_final_unless_the_policy_retries_them,
            bad_retry_policies_are_refused_naming_the_field,
            a_cancelled_attempt_is_in_the_history,
        );
    };
}

/// The whole record of job `id`.
async fn whole(endpoint: &Endpoint, id: &str) -> Value {
    let (code, job) = endpoint.get(&format!("/jobs/{id}")).await;
    assert_eq!(code, 200, "{job}");
    job
}

/// The outcomes of a job's attempts, in order, after checking that each
/// attempt is numbered, names its worker, and starts after the one
/// before ended.
fn outcomes(job: &Value) -> Vec<String> {
    let attempts = job["attempts"].as_array().expect("an attempts list");
    let mut ended_before = job["createdAt"].as_i64().unwrap();
    for (n, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt["attempt"], n + 1, "{job}");
        let worker = attempt["workerId"].as_str().unwrap_or_default();
        assert!(worker.starts_with("jobpipe-"), "{job}");
        let (started, ended) = (
            attempt["startedAt"].as_i64().unwrap(),
            attempt["endedAt"].as_i64().unwrap(),
        );
        assert!(ended_before <= started && started <= ended, "{job}");
        ended_before = ended;
    }
    attempts
        .iter()
        .map(|a| a["outcome"].as_str().unwrap().to_owned())
        .collect()
}

/// A job that crashes on its first attempt and hangs past its
/// `executionTimeout` on its second, with a policy that retries both, is
/// COMPLETED by its third; its history shows the three attempts, the
/// crash with its exit status and stderr, the timeout with why.
pub async fn a_crash_and_a_timeout_are_retried_and_the_history_shows_each_attempt(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let counter = endpoint.dir.path().join("calls");
    let mut body = fake(
        "by-call",
        json!({"counter": counter, "steps": ["crash", "hang", "echo"]}),
    );
    body["policy"] = json!({
        "executionTimeout": 3000,
        "maxAttempts": 3,
        "retry": {"on": ["crash", "timeout"], "backoffMs": 500, "maxBackoffMs": 1000},
    });
    let id = endpoint.submit(body).await;
    let status = endpoint.wait_for(&id, "COMPLETED").await;
    assert_eq!(status["retries"], 2, "{status}");
    assert_eq!(status["output"]["do"], "echo", "{status}");
    let job = whole(&endpoint, &id).await;
    assert_eq!(job["attemptCount"], 3, "{job}");
    assert_eq!(outcomes(&job), ["crash", "timeout", "completed"], "{job}");
    let attempts = &job["attempts"];
    let crash = attempts[0]["detail"].as_str().unwrap();
    assert!(crash.contains("handler exited with code 3"), "{job}");
    assert!(
        crash.contains("fake_handler: crashing with code 3"),
        "{job}"
    );
    let timeout = attempts[1]["detail"].as_str().unwrap();
    assert!(timeout.contains("executionTimeout"), "{job}");
    assert_eq!(attempts[2]["detail"], Value::Null, "{job}");
    endpoint.stop().await;
}

/// A handler's error ends the job FAILED after one attempt by default;
/// with `on: ["error"]` and two attempts it runs twice, the second no
/// sooner than the back-off after the first ended, then ends FAILED
/// saying the attempts were used.
pub async fn handler_errors_are_final_unless_the_policy_retries_them(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let id = endpoint.submit(fake("error", json!({}))).await;
    let status = endpoint.wait_for(&id, "FAILED").await;
    assert_eq!(status["error"], "it went wrong", "{status}");
    let job = whole(&endpoint, &id).await;
    assert_eq!(outcomes(&job), ["error"], "{job}");
    assert_eq!(job["attempts"][0]["detail"], "it went wrong", "{job}");

    let backoff = 700;
    let mut body = fake("error", json!({"message": "still wrong"}));
    body["policy"] = json!({"maxAttempts": 2, "retry": {"on": ["error"], "backoffMs": backoff}});
    let id = endpoint.submit(body).await;
    let status = endpoint.wait_for(&id, "FAILED").await;
    let error = status["error"].as_str().unwrap();
    assert!(
        error.starts_with("still wrong") && error.contains("attempt 2 of 2"),
        "{status}"
    );
    let job = whole(&endpoint, &id).await;
    assert_eq!(job["attemptCount"], 2, "{job}");
    assert_eq!(outcomes(&job), ["error", "error"], "{job}");
    let attempts = &job["attempts"];
    let waited =
        attempts[1]["startedAt"].as_i64().unwrap() - attempts[0]["endedAt"].as_i64().unwrap();
    assert!(waited >= backoff, "ran again {waited} ms after: {job}");
    endpoint.stop().await;
}

/// Each bad `policy.retry` is a 400 that names the field.
pub async fn bad_retry_policies_are_refused_naming_the_field(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    for (retry, field) in [
        (json!({"on": ["crash", "oom"]}), "policy.retry.on"),
        (json!({"on": "crash"}), "policy.retry.on"),
        (json!({"backoffMs": -1}), "policy.retry.backoffMs"),
        (json!({"backoffMs": 2.5}), "policy.retry.backoffMs"),
        (json!({"maxBackoffMs": -1}), "policy.retry.maxBackoffMs"),
        (
            json!({"backoffMs": 5000, "maxBackoffMs": 1000}),
            "policy.retry.maxBackoffMs",
        ),
        (json!({"attempts": 2}), "\"attempts\""),
        (json!(true), "policy.retry"),
    ] {
        let body = json!({"input": {"do": "echo"}, "policy": {"retry": retry}});
        let (code, answer) = endpoint.post("/run", body).await;
        assert_eq!(code, 400, "{retry}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(field), "{retry}: {answer}");
    }
    let (code, _) = endpoint.get("/health").await;
    assert_eq!(code, 200);
    assert_eq!(endpoint.jobs().await["inQueue"], 0);
    endpoint.stop().await;
}

/// A job cancelled while it runs keeps that attempt, as cancelled.
pub async fn a_cancelled_attempt_is_in_the_history(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let id = endpoint.submit(fake("hang", json!({}))).await;
    endpoint.wait_for(&id, "IN_PROGRESS").await;
    let (code, answer) = endpoint.post(&format!("/cancel/{id}"), json!({})).await;
    assert_eq!(code, 200, "{answer}");
    let job = whole(&endpoint, &id).await;
    assert_eq!(job["status"], "CANCELLED", "{job}");
    assert_eq!(outcomes(&job), ["cancelled"], "{job}");
    endpoint.stop().await;
}
