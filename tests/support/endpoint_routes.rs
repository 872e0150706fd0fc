//! The endpoint API's behaviour, written once and run against every queue
//! store (see `route_tests!`): every route, every error answer, streaming,
//! cancellation, timeouts, ttl, retries and attempts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::endpoint::{fake, Endpoint, Store, KEY};
use super::hooks::receiver;

/// Every route test for one store: the list is written once, so every
/// store runs the same tests.
#[macro_export]
macro_rules! all_route_tests {
    ($store:expr) => {
        $crate::route_tests!(
            endpoint_routes,
            $store,
            run_then_status_reports_output_and_times,
            runsync_answers_the_result_or_the_status_when_wait_runs_out,
            stream_returns_unread_partials_in_order,
            progress_shows_as_the_running_jobs_output,
            bad_requests_get_400_with_the_reason,
            input_schema_violations_are_listed_and_nothing_is_queued,
            key_unknown_routes_and_methods_get_json_errors,
            oversized_bodies_get_413,
            cancel_removes_queued_jobs_and_stops_running_ones,
            execution_timeout_ends_timed_out_and_replaces_the_handler,
            ttl_ends_unstarted_jobs_and_retry_runs_them_again,
            priorities_and_delays_order_the_queue,
            idempotent_submits_return_the_first_job_and_run_it_once,
            handler_errors_are_final_and_crashes_use_attempts,
            a_stalled_attempt_is_retried_while_attempts_remain,
            purge_drops_queued_jobs_only,
            shutdown_refuses_new_jobs_answers_waiters_and_keeps_the_queue,
            webhooks_are_retried_until_delivered,
            webhooks_survive_a_restart,
            json_text_passes_through_unchanged,
            webhooks_to_a_hanging_receiver_do_not_delay_others,
            webhook_posts_are_signed_with_the_secret,
        );
    };
}

/// Generates one `#[tokio::test]` per test of a shared test module
/// (`endpoint_routes`, `endpoint_platform`, ...) for a store.
#[macro_export]
macro_rules! route_tests {
    ($module:ident, $store:expr, $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = $store;
                if !store.available() {
                    return;
                }
                support::$module::$name(&store).await;
            }
        )*
    };
}

pub async fn run_then_status_reports_output_and_times(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let id = endpoint.submit(fake("echo", json!({"x": 7}))).await;
    let done = endpoint.wait_for(&id, "COMPLETED").await;
    assert_eq!(done["id"], id.as_str());
    assert_eq!(done["output"]["x"], 7);
    assert_eq!(done["retries"], 0);
    assert!(done["delayTime"].as_i64().unwrap() >= 0, "{done}");
    assert!(done["executionTime"].as_i64().unwrap() >= 0, "{done}");
    assert!(done["workerId"].as_str().unwrap().starts_with("jobpipe-"));
    // The same job at the root and with POST.
    let root = endpoint
        .http
        .post(format!("{}/status/{id}", endpoint.root))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(root.status(), 200);
    assert_eq!(root.json::<Value>().await.unwrap()["output"]["x"], 7);
    // The root /health carries RunPod's fields and the worker's own; the
    // slot is reported free soon after the job ends.
    let started = std::time::Instant::now();
    let health = loop {
        let health: Value = endpoint
            .http
            .get(format!("{}/health", endpoint.root))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if health["workers"]["idle"] == 1 || started.elapsed() > Duration::from_secs(30) {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(health["jobs"]["completed"], 1, "{health}");
    assert_eq!(health["workers"]["idle"], 1, "{health}");
    assert_eq!(health["state"], "ready", "{health}");
    assert_eq!(health["jobs_processed"], 1, "{health}");
    for (path, says) in [
        ("/ready", "\"ready\":true"),
        ("/metrics", "jobpipe_queue_wait_seconds_count 1"),
    ] {
        let response = endpoint
            .http
            .get(format!("{}{path}", endpoint.root))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(response.text().await.unwrap().contains(says), "{path}");
    }
    endpoint.stop().await;
}

pub async fn runsync_answers_the_result_or_the_status_when_wait_runs_out(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let (code, body) = endpoint
        .post("/runsync", fake("echo", json!({"y": 1})))
        .await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "COMPLETED", "{body}");
    assert_eq!(body["output"]["y"], 1);
    let (code, body) = endpoint
        .post("/runsync", fake("error", json!({"message": "nope"})))
        .await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "FAILED");
    assert_eq!(body["error"], "nope");
    let (code, body) = endpoint
        .post("/runsync?wait=200", fake("sleep", json!({"ms": 1500})))
        .await;
    assert_eq!(code, 200);
    assert!(
        ["IN_QUEUE", "IN_PROGRESS"].contains(&body["status"].as_str().unwrap()),
        "{body}"
    );
    let id = body["id"].as_str().unwrap();
    endpoint.wait_for(id, "COMPLETED").await;
    let (code, body) = endpoint
        .post("/runsync?wait=soon", fake("echo", json!({})))
        .await;
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("wait"), "{body}");
    endpoint.stop().await;
}

pub async fn stream_returns_unread_partials_in_order(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let id = endpoint.submit(fake("stream", json!({"n": 4}))).await;
    let mut seen = Vec::new();
    loop {
        let (code, body) = endpoint.get(&format!("/stream/{id}")).await;
        assert_eq!(code, 200, "{body}");
        for chunk in body["stream"].as_array().unwrap() {
            seen.push(chunk["output"]["n"].as_i64().unwrap());
        }
        if body["status"] == "COMPLETED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, [0, 1, 2, 3], "every partial once, in order");
    let (_, again) = endpoint.post(&format!("/stream/{id}"), json!({})).await;
    assert_eq!(again["stream"], json!([]), "partials are not read twice");
    let status = endpoint.wait_for(&id, "COMPLETED").await;
    assert_eq!(
        status["output"],
        json!([{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}]),
        "the output of a stream is its partials"
    );
    endpoint.stop().await;
}

pub async fn progress_shows_as_the_running_jobs_output(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let id = endpoint.submit(fake("progress", json!({"n": 2}))).await;
    let done = endpoint.wait_for(&id, "COMPLETED").await;
    assert_eq!(done["output"], "done");
    endpoint.stop().await;
}

pub async fn bad_requests_get_400_with_the_reason(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let raw = |body: &'static str| {
        endpoint
            .http
            .post(format!("{}/run", endpoint.base))
            .bearer_auth(KEY)
            .body(body)
            .send()
    };
    let response = raw("{not json").await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    for (body, says) in [
        (json!({"inputs": 1}), "no \"input\""),
        (json!([1]), "JSON object"),
        (
            json!({"input": 1, "policy": 5}),
            "\"policy\" must be an object",
        ),
        (
            json!({"input": 1, "policy": {"executionTimeout": "1s"}}),
            "policy.executionTimeout",
        ),
        (json!({"input": 1, "policy": {"ttl": 0}}), "policy.ttl"),
        (
            json!({"input": 1, "policy": {"maxAttempts": 0}}),
            "policy.maxAttempts",
        ),
        (
            json!({"input": 1, "policy": {"speed": 1}}),
            "unknown policy field \"speed\"",
        ),
        (json!({"input": 1, "webhook": "ftp://x"}), "webhook"),
    ] {
        let (code, answer) = endpoint.post("/run", body.clone()).await;
        assert_eq!(code, 400, "{body} → {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(says),
            "{body} → {answer}"
        );
    }
    let jobs = endpoint.jobs().await;
    assert_eq!(
        jobs["inQueue"], 0,
        "a refused request queues nothing: {jobs}"
    );
    assert_eq!(jobs["completed"], 0, "{jobs}");
    endpoint.stop().await;
}

pub async fn input_schema_violations_are_listed_and_nothing_is_queued(store: &Store) {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.json");
    std::fs::write(
        &schema,
        json!({
            "type": "object",
            "required": ["do", "prompt"],
            "properties": {"prompt": {"type": "string"}, "steps": {"type": "integer", "maximum": 50}}
        })
        .to_string(),
    )
    .unwrap();
    let endpoint = Endpoint::start(store, &["--input-schema", schema.to_str().unwrap()]).await;
    for route in ["/run", "/runsync"] {
        let (code, body) = endpoint
            .post(route, fake("echo", json!({"steps": 99})))
            .await;
        assert_eq!(code, 400, "{body}");
        let violations = body["violations"].as_array().unwrap();
        assert_eq!(violations.len(), 2, "{body}");
        assert!(
            violations
                .iter()
                .any(|v| v["path"] == "" && v["message"].as_str().unwrap().contains("prompt")),
            "{body}"
        );
        assert!(
            violations
                .iter()
                .any(|v| v["path"] == "/steps" && v["message"].as_str().unwrap().contains("50")),
            "{body}"
        );
        assert!(body["error"].as_str().unwrap().contains("/steps"), "{body}");
    }
    assert_eq!(endpoint.jobs().await["inQueue"], 0);
    let (code, body) = endpoint
        .post(
            "/runsync",
            fake("echo", json!({"prompt": "hi", "steps": 3})),
        )
        .await;
    assert_eq!(
        (code, body["status"].clone()),
        (200, json!("COMPLETED")),
        "{body}"
    );
    endpoint.stop().await;
}

pub async fn key_unknown_routes_and_methods_get_json_errors(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let url = format!("{}/health", endpoint.base);
    for auth in [None, Some("Bearer wrong"), Some(KEY), Some("Basic abc")] {
        let mut request = endpoint.http.get(&url);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("Bearer"));
    }
    let (code, body) = endpoint.get("/no-such-route").await;
    assert_eq!(code, 404);
    assert!(body["error"].as_str().unwrap().contains("no such route"));
    for path in ["/status/nope", "/stream/nope"] {
        let (code, body) = endpoint.get(path).await;
        assert_eq!(code, 404, "{path}");
        assert!(body["error"].as_str().unwrap().contains("no job"), "{body}");
    }
    for path in ["/cancel/nope", "/retry/nope"] {
        let (code, _) = endpoint.post(path, json!({})).await;
        assert_eq!(code, 404, "{path}");
    }
    let (code, body) = endpoint.get("/run").await;
    assert_eq!(code, 405);
    assert!(body["error"].as_str().unwrap().contains("GET"));
    endpoint.stop().await;
}

pub async fn oversized_bodies_get_413(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    for (route, size) in [
        ("/run", 10 * 1024 * 1024 + 10),
        ("/runsync", 20 * 1024 * 1024 + 10),
    ] {
        let (status, answer) = announce_body(&endpoint, route, size).await;
        assert_eq!(status, 413, "{route}: {answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert!(
            answer["error"].as_str().unwrap().contains("MiB"),
            "{answer}"
        );
    }
    // Just under the /run limit is accepted.
    let body = json!({"input": {"do": "echo", "pad": "b".repeat(9 * 1024 * 1024)}});
    let (code, _) = endpoint.post("/run", body).await;
    assert_eq!(code, 200);
    endpoint.stop().await;
}

/// Announces a body of `size` bytes with `Expect: 100-continue`, as curl
/// does, and returns the answer's status and body: a body that is too
/// large is refused before it is sent.
async fn announce_body(endpoint: &Endpoint, route: &str, size: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.root.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v2/e{route} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

pub async fn cancel_removes_queued_jobs_and_stops_running_ones(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let running = endpoint.submit(fake("hang", json!({}))).await;
    endpoint.wait_for(&running, "IN_PROGRESS").await;
    let queued = endpoint.submit(fake("echo", json!({}))).await;
    let (code, body) = endpoint.post(&format!("/cancel/{queued}"), json!({})).await;
    assert_eq!(
        (code, body["status"].clone()),
        (200, json!("CANCELLED")),
        "{body}"
    );
    let (code, body) = endpoint
        .post(&format!("/cancel/{running}"), json!({}))
        .await;
    assert_eq!(
        (code, body["status"].clone()),
        (200, json!("CANCELLED")),
        "{body}"
    );
    // The hanging handler was replaced: the next job runs.
    let (_, next) = endpoint
        .post("/runsync", fake("echo", json!({"after": "cancel"})))
        .await;
    assert_eq!(next["status"], "COMPLETED", "{next}");
    for id in [&queued, &running] {
        let (_, body) = endpoint.get(&format!("/status/{id}")).await;
        assert_eq!(
            body["status"], "CANCELLED",
            "exactly one final status: {body}"
        );
    }
    // Cancelling an ended job changes nothing.
    let (code, body) = endpoint
        .post(
            &format!("/cancel/{}", next["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!((code, body["status"].clone()), (200, json!("COMPLETED")));
    endpoint.stop().await;
}

pub async fn execution_timeout_ends_timed_out_and_replaces_the_handler(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let mut body = fake("hang", json!({}));
    body["policy"] = json!({"executionTimeout": 300});
    let id = endpoint.submit(body).await;
    let done = endpoint.wait_for(&id, "TIMED_OUT").await;
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("executionTimeout of 300 ms"),
        "{done}"
    );
    let (_, next) = endpoint.post("/runsync", fake("echo", json!({}))).await;
    assert_eq!(next["status"], "COMPLETED", "{next}");
    endpoint.stop().await;
}

pub async fn ttl_ends_unstarted_jobs_and_retry_runs_them_again(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let blocker = endpoint.submit(fake("hang", json!({}))).await;
    endpoint.wait_for(&blocker, "IN_PROGRESS").await;
    let mut body = fake("echo", json!({"late": true}));
    body["policy"] = json!({"ttl": 3000});
    let id = endpoint.submit(body).await;
    let expired = endpoint.wait_for(&id, "TIMED_OUT").await;
    assert!(
        expired["error"].as_str().unwrap().contains("ttl"),
        "{expired}"
    );
    assert!(
        expired.get("executionTime").is_none(),
        "it never ran: {expired}"
    );
    endpoint
        .post(&format!("/cancel/{blocker}"), json!({}))
        .await;
    let (code, answer) = endpoint.post(&format!("/retry/{id}"), json!({})).await;
    assert_eq!(
        (code, answer["status"].clone()),
        (200, json!("IN_QUEUE")),
        "{answer}"
    );
    let done = endpoint.wait_for(&id, "COMPLETED").await;
    assert_eq!(done["output"]["late"], true);
    let (code, answer) = endpoint.post(&format!("/retry/{id}"), json!({})).await;
    assert_eq!(code, 409, "a completed job is not retried: {answer}");
    assert!(answer["error"].as_str().unwrap().contains("COMPLETED"));
    endpoint.stop().await;
}

/// Higher priorities are taken first, first in first out within one,
/// `lowPriority` after every other; a delayed job (`policy.delay`,
/// `policy.runAt`) is not taken before its time, whatever its priority.
pub async fn priorities_and_delays_order_the_queue(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let blocker = endpoint.submit(fake("hang", json!({}))).await;
    endpoint.wait_for(&blocker, "IN_PROGRESS").await;
    let mut ids = Vec::new();
    for (name, policy) in [
        ("low", json!({"lowPriority": true})),
        ("normal-1", json!({})),
        ("high-1", json!({"priority": 10})),
        ("delayed", json!({"priority": 1000, "delay": 6000})),
        ("normal-2", json!({"priority": 0})),
        ("high-2", json!({"priority": 10})),
        ("negative", json!({"priority": -5})),
    ] {
        let mut body = fake("sleep", json!({"ms": 150, "name": name}));
        body["policy"] = policy;
        ids.push((name, endpoint.submit(body).await));
    }
    let mut at = fake("echo", json!({"name": "run-at"}));
    let run_at =
        humantime::format_rfc3339_millis(std::time::SystemTime::now() + Duration::from_secs(2));
    at["policy"] = json!({"runAt": run_at.to_string()});
    let run_at_id = endpoint.submit(at).await;
    endpoint
        .post(&format!("/cancel/{blocker}"), json!({}))
        .await;
    let mut started = Vec::new();
    for (name, id) in &ids {
        let done = endpoint.wait_for(id, "COMPLETED").await;
        started.push((done["delayTime"].as_i64().unwrap(), *name));
    }
    started.sort();
    let order: Vec<&str> = started.iter().map(|(_, name)| *name).collect();
    assert_eq!(
        order,
        ["high-1", "high-2", "normal-1", "normal-2", "negative", "low", "delayed"],
        "{started:?}"
    );
    let delayed = started.iter().find(|(_, name)| *name == "delayed").unwrap();
    assert!(
        delayed.0 >= 6000,
        "the delayed job started after {} ms",
        delayed.0
    );
    let done = endpoint.wait_for(&run_at_id, "COMPLETED").await;
    assert!(
        done["delayTime"].as_i64().unwrap() >= 1500,
        "runAt 2 s ahead: {done}"
    );
    for (policy, complaint) in [
        (
            json!({"priority": 1001}),
            "policy.priority must be an integer from -1000 to 1000",
        ),
        (json!({"priority": 1.5}), "policy.priority"),
        (json!({"priority": 3, "lowPriority": true}), "not both"),
        (
            json!({"delay": 1, "runAt": "2030-01-01T00:00:00Z"}),
            "not both",
        ),
        (json!({"runAt": "tomorrow"}), "RFC 3339"),
        (json!({"delay": 8 * 24 * 3600 * 1000u64}), "7 days at most"),
    ] {
        let mut body = fake("echo", json!({}));
        body["policy"] = policy.clone();
        let (code, answer) = endpoint.post("/run", body).await;
        assert_eq!(code, 400, "{policy}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(complaint),
            "{policy}: {answer}"
        );
    }
    endpoint.stop().await;
}

/// A submission repeated with its `Idempotency-Key` (a client retrying
/// after a lost answer) gets the first job, which runs once; the key with
/// another body is refused with 422.
pub async fn idempotent_submits_return_the_first_job_and_run_it_once(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let body = fake("echo", json!({"n": 1}));
    // Sent together, as a client and its retry may race.
    let sends = (0..12).map(|_| endpoint.post_idempotent("/run", "order-1", body.clone()));
    let answers = futures_util::future::join_all(sends).await;
    let first = answers[0].1["id"].as_str().unwrap().to_owned();
    for (code, answer) in &answers {
        assert_eq!(*code, 200, "{answer}");
        assert_eq!(answer["id"], first.as_str(), "{answer}");
    }
    let done = endpoint.wait_for(&first, "COMPLETED").await;
    assert_eq!(done["retries"], 0, "{done}");
    let (code, again) = endpoint
        .post_idempotent("/run", "order-1", body.clone())
        .await;
    assert_eq!(
        (code, again["id"].as_str(), again["status"].as_str()),
        (200, Some(first.as_str()), Some("COMPLETED")),
        "{again}"
    );
    let (code, other) = endpoint
        .post_idempotent("/run", "order-1", fake("echo", json!({"n": 2})))
        .await;
    assert_eq!(code, 422, "{other}");
    assert!(other["error"].as_str().unwrap().contains(&first), "{other}");
    // /runsync: the retry waits for the same job and gets its output.
    let sync_body = fake("echo", json!({"n": 3}));
    let (code, one) = endpoint
        .post_idempotent("/runsync", "sync-1", sync_body.clone())
        .await;
    let (code_again, two) = endpoint
        .post_idempotent("/runsync", "sync-1", sync_body)
        .await;
    assert_eq!((code, code_again), (200, 200), "{one} {two}");
    assert_eq!(one["id"], two["id"]);
    assert_eq!(one["output"], two["output"], "the same run's output");
    // Without the key, the same body is a new job.
    let fresh = endpoint.submit(body).await;
    assert_ne!(fresh, first);
    for bad in ["with space", &"k".repeat(256)] {
        let (code, answer) = endpoint
            .post_idempotent("/run", bad, fake("echo", json!({})))
            .await;
        assert_eq!(code, 400, "{answer}");
        assert!(answer["error"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"));
    }
    endpoint.stop().await;
}

pub async fn handler_errors_are_final_and_crashes_use_attempts(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let failed = endpoint
        .submit(fake("error", json!({"message": "bad input"})))
        .await;
    let body = endpoint.wait_for(&failed, "FAILED").await;
    assert_eq!(body["error"], "bad input");
    assert_eq!(body["retries"], 0, "a handler's error is not retried");
    let mut crash = fake("crash", json!({}));
    crash["policy"] = json!({"maxAttempts": 2});
    let crashed = endpoint.submit(crash).await;
    let body = endpoint.wait_for(&crashed, "FAILED").await;
    assert_eq!(body["retries"], 1, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("attempt 2 of 2"),
        "{body}"
    );
    let (code, _) = endpoint.post(&format!("/retry/{failed}"), json!({})).await;
    assert_eq!(code, 200);
    endpoint.wait_for(&failed, "FAILED").await;
    assert!(endpoint.jobs().await["retried"].as_u64().unwrap() >= 1);
    endpoint.stop().await;
}

/// A handler alive but silent past the job's `policy.stallTimeout` fails
/// the attempt as Stalled; the job runs again while attempts remain.
pub async fn a_stalled_attempt_is_retried_while_attempts_remain(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let mut hung = fake("hang", json!({}));
    hung["policy"] = json!({"maxAttempts": 2, "stallTimeout": 1000});
    let started = Instant::now();
    let id = endpoint.submit(hung).await;
    let body = endpoint.wait_for(&id, "FAILED").await;
    assert_eq!(body["retries"], 1, "a stalled attempt is retried: {body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("attempt 2 of 2"), "{body}");
    assert!(error.contains("Stalled"), "{body}");
    // Two attempts of 1 s each and a back-off of about 1 s between them,
    // with slack for a loaded machine (before: never).
    assert!(started.elapsed() < Duration::from_secs(30));
    let (code, answer) = endpoint
        .post("/run", json!({"input": {}, "policy": {"stallTimeout": -1}}))
        .await;
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("policy.stallTimeout"),
        "{answer}"
    );
    endpoint.stop().await;
}

pub async fn purge_drops_queued_jobs_only(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let running = endpoint.submit(fake("sleep", json!({"ms": 800}))).await;
    endpoint.wait_for(&running, "IN_PROGRESS").await;
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(endpoint.submit(fake("echo", json!({}))).await);
    }
    let health = endpoint.get("/health").await.1;
    assert_eq!(health["jobs"]["inQueue"], 3, "{health}");
    assert_eq!(health["jobs"]["inProgress"], 1, "{health}");
    let (code, body) = endpoint.post("/purge-queue", json!({})).await;
    assert_eq!(code, 200);
    assert_eq!(body, json!({"removed": 3, "status": "completed"}));
    for id in &queued {
        assert_eq!(endpoint.get(&format!("/status/{id}")).await.0, 404);
    }
    endpoint.wait_for(&running, "COMPLETED").await;
    let health = endpoint.get("/health").await.1;
    assert_eq!(health["jobs"]["inQueue"], 0);
    assert_eq!(health["jobs"]["completed"], 1);
    assert_eq!(
        health["workers"]["idle"].as_u64().unwrap()
            + health["workers"]["running"].as_u64().unwrap(),
        1,
        "{health}"
    );
    endpoint.stop().await;
}

pub async fn shutdown_refuses_new_jobs_answers_waiters_and_keeps_the_queue(store: &Store) {
    let mut endpoint = Endpoint::start(store, &[]).await;
    let running = endpoint.submit(fake("sleep", json!({"ms": 1500}))).await;
    endpoint.wait_for(&running, "IN_PROGRESS").await;
    let queued = endpoint.submit(fake("echo", json!({}))).await;
    let waiter = {
        let (http, base) = (endpoint.http.clone(), endpoint.base.clone());
        tokio::spawn(async move {
            http.post(format!("{base}/runsync"))
                .bearer_auth(KEY)
                .json(&fake("echo", json!({})))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    endpoint.request_stop();
    let answer = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the /runsync caller is answered")
        .unwrap();
    assert_eq!(answer["status"], "IN_QUEUE", "{answer}");
    let response = endpoint
        .http
        .post(format!("{}/run", endpoint.base))
        .bearer_auth(KEY)
        .json(&fake("echo", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(endpoint.finished().await, 0);
    // The running job finished; the queued ones wait for the next start.
    let dir = tempfile::tempdir().unwrap();
    let again = Endpoint::start_on(store, dir, endpoint.queue.clone(), &[]).await;
    let (_, body) = again.get(&format!("/status/{running}")).await;
    assert_eq!(body["status"], "COMPLETED", "{body}");
    again.wait_for(&queued, "COMPLETED").await;
    again.stop().await;
}

pub async fn webhooks_are_retried_until_delivered(store: &Store) {
    let hook = receiver(2).await;
    let endpoint = Endpoint::start(store, &[]).await;
    let mut body = fake("echo", json!({"hooked": 1}));
    body["webhook"] = json!(hook.url);
    let id = endpoint.submit(body).await;
    endpoint.wait_for(&id, "COMPLETED").await;
    let started = std::time::Instant::now();
    while hook
        .posts
        .lock()
        .unwrap()
        .last()
        .is_none_or(|(status, _)| *status != 200)
    {
        assert!(
            started.elapsed() < super::endpoint::WAIT,
            "webhook never delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let posts = hook.posts.lock().unwrap().clone();
    let statuses: Vec<u16> = posts.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses,
        [500, 500, 200],
        "retried after failures, and not posted again once delivered"
    );
    for (_, body) in &posts {
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["status"], "COMPLETED");
        assert_eq!(body["output"]["hooked"], 1);
    }
    endpoint.stop().await;
}

pub async fn webhooks_survive_a_restart(store: &Store) {
    // The receiver is down while the job ends; the post waits in the
    // database and goes out after a restart.
    let port = super::endpoint::free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let mut endpoint = Endpoint::start(store, &[]).await;
    let mut body = fake("echo", json!({}));
    body["webhook"] = json!(url);
    let id = endpoint.submit(body).await;
    endpoint.wait_for(&id, "COMPLETED").await;
    endpoint.request_stop();
    endpoint.finished().await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| async move {
            let _ = tx.send(body.0);
            "ok"
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let again = Endpoint::start_on(
        store,
        tempfile::tempdir().unwrap(),
        endpoint.queue.clone(),
        &[],
    )
    .await;
    let delivered = tokio::time::timeout(super::endpoint::WAIT, rx.recv())
        .await
        .expect("delivered after the restart")
        .unwrap();
    assert_eq!(delivered["id"], id.as_str());
    again.stop().await;
}

/// A webhook receiver that records each post with its arrival time and
/// signature header, answering 200.
struct Recorder {
    url: String,
    posts: std::sync::Arc<std::sync::Mutex<Vec<Arrival>>>,
}

#[derive(Clone)]
struct Arrival {
    at: Instant,
    signature: Option<String>,
    body: bytes::Bytes,
}

impl Recorder {
    async fn start() -> Recorder {
        use axum::extract::State;
        type Posts = std::sync::Arc<std::sync::Mutex<Vec<Arrival>>>;
        let posts: Posts = Default::default();
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |State(posts): State<Posts>,
                     headers: axum::http::HeaderMap,
                     body: bytes::Bytes| async move {
                        let signature = headers
                            .get("x-jobpipe-signature")
                            .map(|v| v.to_str().unwrap().to_owned());
                        posts.lock().unwrap().push(Arrival {
                            at: Instant::now(),
                            signature,
                            body,
                        });
                        "ok"
                    },
                ),
            )
            .with_state(posts.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder { url, posts }
    }

    /// Waits for the post of job `id`.
    async fn arrival(&self, id: &str) -> Arrival {
        let started = Instant::now();
        loop {
            let found = self
                .posts
                .lock()
                .unwrap()
                .iter()
                .find(|a| serde_json::from_slice::<Value>(&a.body).unwrap()["id"] == id)
                .cloned();
            if let Some(arrival) = found {
                return arrival;
            }
            assert!(
                started.elapsed() < super::endpoint::WAIT,
                "the webhook of {id} never came"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A webhook receiver that accepts connections and never answers; it
/// counts the connections open, each one a post in flight.
struct Hanging {
    url: String,
    open: std::sync::Arc<AtomicUsize>,
    /// Most connections open at once, after a grace for closes to be seen.
    most: std::sync::Arc<AtomicUsize>,
    close: tokio_util::sync::CancellationToken,
}

impl Hanging {
    async fn start() -> Hanging {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let hanging = Hanging {
            url,
            open: Default::default(),
            most: Default::default(),
            close: Default::default(),
        };
        let (open, most, close) = (
            hanging.open.clone(),
            hanging.most.clone(),
            hanging.close.clone(),
        );
        tokio::spawn(async move {
            loop {
                let mut stream = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap().0,
                    _ = close.cancelled() => return,
                };
                open.fetch_add(1, Ordering::SeqCst);
                let (open, most, close) = (open.clone(), most.clone(), close.clone());
                tokio::spawn(async move {
                    // The close of a timed-out post may be seen just after
                    // the next connection; what counts is a count that stays.
                    let seen = Instant::now();
                    while open.load(Ordering::SeqCst) > LIMIT
                        && seen.elapsed() < Duration::from_secs(1)
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    most.fetch_max(open.load(Ordering::SeqCst), Ordering::SeqCst);
                    let mut buf = [0u8; 4096];
                    loop {
                        tokio::select! {
                            read = stream.read(&mut buf) => if !matches!(read, Ok(n) if n > 0) { break },
                            _ = close.cancelled() => break,
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        hanging
    }
}

/// Webhook posts in flight to one receiver at most (jobpipe's limit).
const LIMIT: usize = 2;

pub async fn webhooks_to_a_hanging_receiver_do_not_delay_others(store: &Store) {
    let hanging = Hanging::start().await;
    let healthy = Recorder::start().await;
    let endpoint = Endpoint::start(store, &[]).await;
    // Far more posts to the hanging receiver than posts in flight before
    // receivers were kept apart (8); all due before the healthy ones.
    let mut hung = Vec::new();
    for i in 0..24 {
        let mut body = fake("echo", json!({ "hung": i }));
        body["webhook"] = json!(hanging.url);
        hung.push(endpoint.submit(body).await);
    }
    for id in &hung {
        endpoint.wait_for(id, "COMPLETED").await;
    }
    let started = Instant::now();
    while hanging.open.load(Ordering::SeqCst) < LIMIT {
        assert!(
            started.elapsed() < super::endpoint::WAIT,
            "the hanging receiver got no posts"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (mut delays, mut from_submission) = (Vec::new(), Vec::new());
    for i in 0..4 {
        let mut body = fake("echo", json!({ "healthy": i }));
        body["webhook"] = json!(healthy.url);
        let submitted = Instant::now();
        let id = endpoint.submit(body).await;
        endpoint.wait_for(&id, "COMPLETED").await;
        let ended = Instant::now();
        let arrival = healthy.arrival(&id).await;
        // From the end as the test saw it (0 when the post came first),
        // and from the submission (an upper bound, the job's run included).
        delays.push(arrival.at.saturating_duration_since(ended));
        from_submission.push(arrival.at - submitted);
    }
    eprintln!(
        "while another receiver hangs, the healthy one got each post {delays:?} after its job's end was seen, {from_submission:?} after the job's submission"
    );
    // Well under the 10 s a hanging post holds its slot.
    let worst = delays.iter().max().unwrap();
    assert!(*worst < Duration::from_secs(5), "{delays:?}");
    assert!(
        hanging.most.load(Ordering::SeqCst) <= LIMIT,
        "{} posts in flight to one receiver",
        hanging.most.load(Ordering::SeqCst)
    );
    // Closing the hanging connections fails its posts at once, so the stop
    // does not wait for their timeout.
    hanging.close.cancel();
    endpoint.stop().await;
}

pub async fn webhook_posts_are_signed_with_the_secret(store: &Store) {
    use hmac::{Hmac, KeyInit, Mac};
    const SECRET: &str = "whsec-route-test";
    let hook = Recorder::start().await;
    // From a file, as Docker and Kubernetes secrets are mounted.
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let secret_file = secret_file.display().to_string();
    let endpoint = Endpoint::start(store, &["--webhook-secret-file", &secret_file]).await;
    let mut body = fake("echo", json!({ "signed": true }));
    body["webhook"] = json!(hook.url);
    let id = endpoint.submit(body.clone()).await;
    let arrival = hook.arrival(&id).await;
    let header = arrival.signature.expect("a signature header");
    let (t, v1) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .unwrap_or_else(|| panic!("not t=…,v1=…: {header}"));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&arrival.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected, "the signature verifies");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t: u64 = t.parse().unwrap();
    assert!(t.abs_diff(now) < 300, "signed at {t}, now {now}");
    let posted: Value = serde_json::from_slice(&arrival.body).unwrap();
    assert_eq!(posted["output"]["signed"], true);
    endpoint.stop().await;
    // Without a secret, posts carry no signature.
    let endpoint = Endpoint::start(store, &[]).await;
    let id = endpoint.submit(body).await;
    assert_eq!(hook.arrival(&id).await.signature, None);
    endpoint.stop().await;
}

/// A job's input as the caller wrote it: an integer past 64 bits, `-0`,
/// keys out of order, escapes, a trailing zero and an exponent, all of
/// which parsing and writing the JSON again would change.
const EXACT_INPUT: &str = r#"{"do": "raw-echo", "big": 1180591620717411303424, "neg": -0, "z": 1, "a": 2, "esc": "\u00e9\n", "f": 1.50, "e": 2E+3, "in": {"y": [-0.0, 1e-7], "x": null}}"#;

/// Posts a body's text as it is; answers status and body text.
async fn post_text(endpoint: &Endpoint, path: &str, body: String) -> (u16, String) {
    let response = endpoint
        .http
        .post(format!("{}{path}", endpoint.base))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the endpoint answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn get_text(endpoint: &Endpoint, path: &str) -> (u16, String) {
    let response = endpoint
        .http
        .get(format!("{}{path}", endpoint.base))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("the endpoint answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The handler (fake_handler's raw-echo) answers with the text of the
/// input it was given, as a stream partial and as its output; every answer
/// must carry that text byte for byte. Bodies are compared as text, since
/// parsing them would hide exactly the changes looked for.
pub async fn json_text_passes_through_unchanged(store: &Store) {
    // A webhook receiver that keeps the text of each post.
    let (tx, mut hooks) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| async move {
            let _ = tx.send(body);
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let endpoint = Endpoint::start(store, &[]).await;
    let output = format!(r#""output":{EXACT_INPUT}"#);

    // /run, then /status, /stream and the webhook.
    let body = format!(r#"{{"input": {EXACT_INPUT}, "webhook": "{hook}"}}"#);
    let (code, answer) = post_text(&endpoint, "/run", body).await;
    assert_eq!(code, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let id = answer["id"].as_str().unwrap().to_owned();
    endpoint.wait_for(&id, "COMPLETED").await;
    let (code, status) = get_text(&endpoint, &format!("/status/{id}")).await;
    assert_eq!(code, 200, "{status}");
    assert!(
        status.contains(&output),
        "/status changed the output: {status}"
    );
    let (code, stream) = get_text(&endpoint, &format!("/stream/{id}")).await;
    assert_eq!(code, 200, "{stream}");
    assert!(
        stream.contains(&format!(r#""stream":[{{{output}}}]"#)),
        "/stream changed the partial: {stream}"
    );
    let posted = tokio::time::timeout(super::endpoint::WAIT, hooks.recv())
        .await
        .expect("the webhook is posted")
        .unwrap();
    assert!(
        posted.contains(&output),
        "the webhook changed the output: {posted}"
    );
    let posted: Value = serde_json::from_str(&posted).unwrap();
    assert_eq!(
        (posted["id"].as_str(), posted["status"].as_str()),
        (Some(id.as_str()), Some("COMPLETED"))
    );

    // /runsync, with the body's own "id" (replaced, so the job object is
    // written again from the text of its values), white space of its own,
    // and an input large enough to travel in pieces.
    let large = EXACT_INPUT.replace(
        r#""z": 1"#,
        &format!(r#""z": 1, "pad": "{}""#, "p".repeat(40_000)),
    );
    for (body, input) in [
        (format!("\t{{ \"input\" :{EXACT_INPUT} }} "), EXACT_INPUT),
        (
            format!(r#"{{"id": "mine", "input": {large}, "policy": {{"ttl": 60000}}}}"#),
            large.as_str(),
        ),
        (
            format!(r#"{{"input": 1, "input": {EXACT_INPUT}}}"#),
            EXACT_INPUT,
        ),
    ] {
        let (code, answer) = post_text(&endpoint, "/runsync", body).await;
        assert_eq!(code, 200, "{answer}");
        assert!(
            answer.contains(&format!(r#""output":{input}"#)),
            "/runsync changed the output: {answer:.500}"
        );
        let parsed: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(parsed["status"], "COMPLETED", "{answer:.500}");
        assert_ne!(parsed["id"], "mine", "the job's id is jobpipe's");
    }
    endpoint.stop().await;
}
