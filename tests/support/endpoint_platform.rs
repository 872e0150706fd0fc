//! The endpoint as a platform, written once and run against every queue
//! store (see `all_platform_tests!`): endpoints as separate queues, the job
//! list and a job's whole record.

use std::time::Instant;

use serde_json::{json, Value};

use super::endpoint::{fake, Endpoint, Store, KEY, WAIT};

/// Every platform test for one store.
#[macro_export]
macro_rules! all_platform_tests {
    ($store:expr) => {
        $crate::route_tests!(
            endpoint_platform,
            $store,
            endpoints_are_separate_queues_served_by_their_own_workers,
            the_job_list_pages_through_ten_thousand_jobs_while_more_arrive,
            a_jobs_record_has_its_input_output_and_times,
            the_scale_signal_moves_with_the_queue,
            an_endpoints_file_gives_one_endpoint_its_schema_and_attempts,
        );
    };
}

/// A call with the key to `path` from the server's root (`/v2/NAME/...`).
pub async fn at(
    endpoint: &Endpoint,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}{path}", endpoint.root);
    let (status, body, _) = endpoint.request(KEY, method, &url, body).await;
    (status, body)
}

pub async fn get(endpoint: &Endpoint, path: &str) -> (u16, Value) {
    at(endpoint, reqwest::Method::GET, path, None).await
}

/// Submits a job to the endpoint under `prefix` (`/v2/NAME`, or "" for
/// the root); its id.
pub async fn submit(endpoint: &Endpoint, prefix: &str, body: Value) -> String {
    let (code, answer) = at(
        endpoint,
        reqwest::Method::POST,
        &format!("{prefix}/run"),
        Some(body),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

/// Waits until job `id` under `prefix` is COMPLETED; its `/status`.
pub async fn completed(endpoint: &Endpoint, prefix: &str, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let (code, body) = get(endpoint, &format!("{prefix}/status/{id}")).await;
        assert_eq!(code, 200, "{body}");
        match body["status"].as_str().unwrap_or_default() {
            "COMPLETED" => return body,
            "IN_QUEUE" | "IN_PROGRESS" => {}
            _ => panic!("job {id} ended otherwise: {body}"),
        }
        assert!(
            started.elapsed() < WAIT,
            "job {id} did not complete: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Jobs submitted to one endpoint are taken only by workers that serve
/// it, found only under its routes, and counted in its own `/health`; an
/// endpoint nobody serves keeps its jobs and says so.
pub async fn endpoints_are_separate_queues_served_by_their_own_workers(store: &Store) {
    let alpha = Endpoint::start(store, &["--endpoint", "alpha"]).await;
    let mut alpha_ids = Vec::new();
    for n in 0..5 {
        alpha_ids.push(submit(&alpha, "/v2/alpha", fake("echo", json!({"n": n}))).await);
    }
    let mut beta_ids = Vec::new();
    for n in 0..3 {
        beta_ids.push(submit(&alpha, "/v2/beta", fake("echo", json!({"n": n}))).await);
    }
    let root_id = submit(&alpha, "", fake("echo", json!({"root": true}))).await;
    let mut alpha_worker = None;
    for id in &alpha_ids {
        let done = completed(&alpha, "/v2/alpha", id).await;
        alpha_worker.get_or_insert_with(|| done["workerId"].clone());
    }
    // Not found under another endpoint's routes, nor at the root.
    for path in [
        format!("/v2/beta/status/{}", alpha_ids[0]),
        format!("/status/{}", alpha_ids[0]),
        format!("/v2/alpha/status/{}", beta_ids[0]),
    ] {
        let (code, body) = get(&alpha, &path).await;
        assert_eq!(code, 404, "{path}: {body}");
    }
    let (code, body) = at(
        &alpha,
        reqwest::Method::POST,
        &format!("/v2/beta/cancel/{}", alpha_ids[0]),
        None,
    )
    .await;
    assert_eq!(code, 404, "{body}");

    let (_, health) = get(&alpha, "/v2/beta/health").await;
    assert_eq!(health["jobs"]["inQueue"], 3, "{health}");
    assert_eq!(health["workers"]["idle"], 0, "{health}");
    assert_eq!(health["workers"]["running"], 0, "{health}");
    let warning = health["warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains("no worker serves endpoint \"beta\""),
        "{health}"
    );
    let (_, health) = get(&alpha, "/v2/alpha/health").await;
    assert_eq!(health["jobs"]["completed"], 5, "{health}");
    assert_eq!(health["jobs"]["inQueue"], 0, "{health}");
    assert_eq!(health["workers"]["processes"], 1, "{health}");
    assert!(health.get("warning").is_none(), "{health}");
    let (_, health) = get(&alpha, "/health").await;
    assert_eq!(health["endpoint"], "default", "{health}");
    assert_eq!(health["jobs"]["inQueue"], 1, "{health}");

    let (_, list) = get(&alpha, "/v2/alpha/workers").await;
    let workers = list["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{list}");
    assert_eq!(workers[0]["id"], alpha_worker.clone().unwrap(), "{list}");
    assert_eq!(workers[0]["endpoints"], json!(["alpha"]), "{list}");
    assert_eq!(workers[0]["state"], "idle", "{list}");
    assert!(workers[0]["slots"].as_u64().unwrap() >= 1, "{list}");
    assert!(
        !workers[0]["version"].as_str().unwrap().is_empty(),
        "{list}"
    );
    let (_, list) = get(&alpha, "/v2/beta/workers").await;
    assert_eq!(list["workers"], json!([]), "{list}");

    // A name that cannot be an endpoint's.
    let (code, body) = get(&alpha, "/v2/no%20spaces/health").await;
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not an endpoint name"),
        "{body}"
    );

    // The jobs of beta and of the root wait for a worker that serves them.
    // Stopped but kept: its directory holds a SQLite queue.
    let mut alpha = alpha;
    alpha.request_stop();
    alpha.finished().await;
    let queue = alpha.queue.clone();
    let other = Endpoint::start_on(
        store,
        tempfile::tempdir().unwrap(),
        queue,
        &["--endpoint", "beta,default"],
    )
    .await;
    for id in &beta_ids {
        let done = completed(&other, "/v2/beta", id).await;
        assert_ne!(done["workerId"], alpha_worker.clone().unwrap(), "{done}");
    }
    completed(&other, "/v2/default", &root_id).await;
    let (_, health) = get(&other, "/v2/alpha/health").await;
    assert_eq!(
        health["jobs"]["completed"], 5,
        "alpha's jobs ran once: {health}"
    );
    other.stop().await;
}

/// Submits `count` jobs to the endpoint under `prefix`, `parallel` at a
/// time; their ids.
pub async fn submit_many(
    endpoint: &Endpoint,
    prefix: &str,
    count: usize,
    parallel: usize,
) -> Vec<String> {
    submit_many_as(endpoint, KEY, prefix, count, parallel).await
}

/// [`submit_many`] with another key.
pub async fn submit_many_as(
    endpoint: &Endpoint,
    key: &str,
    prefix: &str,
    count: usize,
    parallel: usize,
) -> Vec<String> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (http, url, next, key) = (
            endpoint.http.clone(),
            format!("{}{prefix}/run", endpoint.root),
            next.clone(),
            key.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                let answer: Value = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&fake("echo", json!({})))
                    .send()
                    .await
                    .expect("the endpoint answers")
                    .json()
                    .await
                    .unwrap();
                ids.push(answer["id"].as_str().expect("an id").to_owned());
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    ids
}

/// Keyset paging: 10,000 jobs read 500 a page, newest first, while
/// another client keeps submitting: every job that was there is seen
/// exactly once, and the order never goes back.
pub async fn the_job_list_pages_through_ten_thousand_jobs_while_more_arrive(store: &Store) {
    // Nobody serves "listed": its jobs stay queued.
    let endpoint = Endpoint::start(store, &[]).await;
    let before = submit_many(&endpoint, "/v2/listed", 10_000, 16).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let adding = {
        let (http, url, stop) = (
            endpoint.http.clone(),
            format!("{}/v2/listed/run", endpoint.root),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut added = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = http
                    .post(&url)
                    .bearer_auth(KEY)
                    .json(&fake("echo", json!({})))
                    .send()
                    .await;
                assert_eq!(sent.expect("the endpoint answers").status(), 200);
                added += 1;
            }
            added
        })
    };
    let mut seen: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v2/listed/jobs?limit=500&cursor={cursor}"),
            None => "/v2/listed/jobs?limit=500".to_owned(),
        };
        let (code, page) = get(&endpoint, &path).await;
        assert_eq!(code, 200, "{page}");
        pages += 1;
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 500);
        seen.extend(jobs.iter().cloned());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 100, "the list does not end");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let added = adding.await.unwrap();
    assert!(added > 0, "no job was added while paging");
    let key = |job: &Value| {
        (
            job["createdAt"].as_i64().unwrap(),
            job["id"].as_str().unwrap().to_owned(),
        )
    };
    for pair in seen.windows(2) {
        assert!(
            key(&pair[0]) > key(&pair[1]),
            "out of order: {} then {}",
            pair[0],
            pair[1]
        );
    }
    let ids: std::collections::HashSet<&str> =
        seen.iter().map(|job| job["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), seen.len(), "a job was listed twice");
    for id in &before {
        assert!(ids.contains(id.as_str()), "job {id} was never listed");
    }
    assert!(seen.iter().all(|job| job["status"] == "IN_QUEUE"));

    // Filters, and what a wrong parameter gets.
    let (_, page) = get(&endpoint, "/v2/listed/jobs?status=COMPLETED").await;
    assert_eq!(page["jobs"], json!([]), "{page}");
    assert_eq!(page["nextCursor"], Value::Null, "{page}");
    let (_, page) = get(&endpoint, "/v2/listed/jobs?status=IN_QUEUE&limit=3").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 3, "{page}");
    let far = "2999-01-01T00:00:00Z";
    let (_, page) = get(&endpoint, &format!("/v2/listed/jobs?since={far}")).await;
    assert_eq!(page["jobs"], json!([]), "{page}");
    let (_, page) = get(&endpoint, "/jobs").await;
    assert_eq!(page["jobs"], json!([]), "another endpoint's jobs: {page}");
    for (query, complaint) in [
        ("limit=501", "limit must be"),
        ("limit=0", "limit must be"),
        ("status=DONE", "status must be"),
        ("since=yesterday", "since must be"),
        ("cursor=xyz", "cursor"),
        ("offset=10", "unknown parameter"),
    ] {
        let (code, body) = get(&endpoint, &format!("/v2/listed/jobs?{query}")).await;
        assert_eq!(code, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(complaint),
            "{query}: {body}"
        );
    }
    endpoint.stop().await;
}

/// `/jobs/{id}`: the whole job, its input as it was sent, under its own
/// endpoint only.
pub async fn a_jobs_record_has_its_input_output_and_times(store: &Store) {
    let endpoint = Endpoint::start(store, &["--endpoint", "whole"]).await;
    let body =
        r#"{"input": {"do": "echo", "big": 1180591620717411303424}, "policy": {"priority": 7}}"#;
    let answer: Value = endpoint
        .http
        .post(format!("{}/v2/whole/run", endpoint.root))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = answer["id"].as_str().expect("an id").to_owned();
    completed(&endpoint, "/v2/whole", &id).await;
    let response = endpoint
        .http
        .get(format!("{}/v2/whole/jobs/{id}", endpoint.root))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("\"big\":1180591620717411303424"),
        "input kept as sent: {text}"
    );
    let job: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["endpoint"], "whole");
    assert_eq!(job["status"], "COMPLETED");
    assert_eq!(job["input"]["do"], "echo", "{job}");
    assert_eq!(job["output"]["do"], "echo", "{job}");
    assert_eq!(job["attemptCount"], 1);
    assert_eq!(job["attempts"][0]["outcome"], "completed", "{job}");
    assert_eq!(job["priority"], 7);
    assert_eq!(job["maxAttempts"], 3);
    let (created, started, finished) = (
        job["createdAt"].as_i64().unwrap(),
        job["startedAt"].as_i64().unwrap(),
        job["finishedAt"].as_i64().unwrap(),
    );
    assert!(created <= started && started <= finished, "{job}");
    assert!(
        job["workerId"].as_str().unwrap().starts_with("jobpipe-"),
        "{job}"
    );
    let (_, page) = get(&endpoint, "/v2/whole/jobs").await;
    assert_eq!(page["jobs"][0]["id"], id.as_str(), "{page}");
    assert_eq!(page["jobs"][0]["status"], "COMPLETED", "{page}");
    let (code, _) = get(&endpoint, &format!("/jobs/{id}")).await;
    assert_eq!(code, 404, "found under another endpoint");
    let (code, _) = get(&endpoint, "/v2/whole/jobs/no-such-job").await;
    assert_eq!(code, 404);
    assert_eq!(job["stream"], json!([]), "{job}");
    assert_eq!(job["streamCount"], 0, "{job}");

    // A streaming job's record shows its partials without taking them
    // from /stream's reader.
    let streamed = submit(&endpoint, "/v2/whole", fake("stream", json!({"n": 3}))).await;
    completed(&endpoint, "/v2/whole", &streamed).await;
    let (_, record) = get(&endpoint, &format!("/v2/whole/jobs/{streamed}")).await;
    assert_eq!(
        record["stream"],
        json!([{"n": 0}, {"n": 1}, {"n": 2}]),
        "{record}"
    );
    assert_eq!(record["streamCount"], 3, "{record}");
    let (_, unread) = at(
        &endpoint,
        reqwest::Method::POST,
        &format!("/v2/whole/stream/{streamed}"),
        None,
    )
    .await;
    assert_eq!(
        unread["stream"].as_array().map(Vec::len),
        Some(3),
        "{unread}"
    );
    endpoint.stop().await;
}

/// `/scale` asks for no worker while nothing happens, for one per job
/// waiting beyond what the target wait allows, and for few once the
/// backlog has run.
pub async fn the_scale_signal_moves_with_the_queue(store: &Store) {
    let endpoint = Endpoint::start(store, &["--target-wait", "1s"]).await;
    let (code, scale) = get(&endpoint, "/v2/scaled/scale").await;
    assert_eq!(code, 200, "{scale}");
    assert_eq!(scale["desiredWorkers"], 0, "{scale}");
    assert_eq!(scale["waiting"], 0, "{scale}");
    assert_eq!(scale["targetWaitMs"], 1000, "{scale}");
    let ids = submit_many(&endpoint, "/v2/scaled", 20, 4).await;
    let started = Instant::now();
    let scale = loop {
        let (_, scale) = get(&endpoint, "/v2/scaled/scale").await;
        if scale["oldestWaitMs"].as_i64().unwrap_or(0) >= 200 {
            break scale;
        }
        assert!(started.elapsed() < WAIT, "{scale}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(scale["waiting"], 20, "{scale}");
    assert_eq!(scale["workers"], 0, "nobody serves it: {scale}");
    // 20 waiting, each taken to last the 1 s target: 20 slots and more.
    let backlog = scale["desiredWorkers"].as_u64().unwrap();
    assert!(backlog >= 20, "{scale}");
    let (_, health) = get(&endpoint, "/v2/scaled/health").await;
    assert_eq!(health["scaling"]["waiting"], 20, "{health}");
    // The API's /metrics: the same, labelled by endpoint (promtool judges
    // it in tests/observe.rs).
    let metrics = endpoint
        .http
        .get(format!("{}/metrics", endpoint.root))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("jobpipe_endpoint_jobs_waiting{endpoint=\"scaled\"} 20"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "jobpipe_endpoint_desired_workers{{endpoint=\"scaled\"}} {backlog}"
        )) || metrics.contains("jobpipe_endpoint_desired_workers{endpoint=\"scaled\"} "),
        "{metrics}"
    );

    let mut endpoint = endpoint;
    endpoint.request_stop();
    endpoint.finished().await;
    let worker = Endpoint::start_on(
        store,
        tempfile::tempdir().unwrap(),
        endpoint.queue.clone(),
        &["--endpoint", "scaled", "--target-wait", "1s"],
    )
    .await;
    for id in &ids {
        completed(&worker, "/v2/scaled", id).await;
    }
    let (_, scale) = get(&worker, "/v2/scaled/scale").await;
    assert_eq!(scale["waiting"], 0, "{scale}");
    assert_eq!(scale["workers"], 1, "{scale}");
    assert!(scale["meanRunMs"].as_f64().is_some(), "{scale}");
    let drained = scale["desiredWorkers"].as_u64().unwrap();
    assert!(drained <= 1, "after the backlog ran: {scale}");
    worker.stop().await;
}

/// Waits until job `id` under `prefix` has ended; its `/status`.
async fn ended(endpoint: &Endpoint, prefix: &str, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let (code, body) = get(endpoint, &format!("{prefix}/status/{id}")).await;
        assert_eq!(code, 200, "{body}");
        if !matches!(body["status"].as_str(), Some("IN_QUEUE" | "IN_PROGRESS")) {
            return body;
        }
        assert!(started.elapsed() < WAIT, "job {id} did not end: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// `--endpoints`: the endpoint `strict` checks inputs against its own
/// schema and gives a crashing job one attempt; `other`, not in the file,
/// keeps the flags' settings (no schema, three attempts).
pub async fn an_endpoints_file_gives_one_endpoint_its_schema_and_attempts(store: &Store) {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("strict.json"),
        r#"{"type": "object", "required": ["prompt"], "properties": {"prompt": {"type": "string"}}}"#,
    )
    .unwrap();
    let file = dir.path().join("endpoints.toml");
    std::fs::write(
        &file,
        "[endpoints.strict]\ninput_schema = \"strict.json\"\nmax_attempts = 1\n",
    )
    .unwrap();
    let file_arg = file.display().to_string();
    let endpoint = Endpoint::start(
        store,
        &["--endpoints", &file_arg, "--endpoint", "strict,other"],
    )
    .await;

    let (code, body) = at(
        &endpoint,
        Method::POST,
        "/v2/strict/run",
        Some(fake("echo", json!({}))),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("prompt"), "{body}");
    let id = submit(
        &endpoint,
        "/v2/strict",
        fake("echo", json!({"prompt": "a cat"})),
    )
    .await;
    let done = completed(&endpoint, "/v2/strict", &id).await;
    assert_eq!(done["output"]["prompt"], "a cat", "{done}");
    let id = submit(&endpoint, "/v2/other", fake("echo", json!({}))).await;
    completed(&endpoint, "/v2/other", &id).await;

    let strict = submit(
        &endpoint,
        "/v2/strict",
        fake("crash", json!({"prompt": "x"})),
    )
    .await;
    let other = submit(&endpoint, "/v2/other", fake("crash", json!({}))).await;
    let body = ended(&endpoint, "/v2/strict", &strict).await;
    assert_eq!(body["status"], "FAILED", "{body}");
    assert_eq!(body["retries"], 0, "max_attempts = 1: {body}");
    let body = ended(&endpoint, "/v2/other", &other).await;
    assert_eq!(body["status"], "FAILED", "{body}");
    assert_eq!(body["retries"], 2, "the flags' three attempts: {body}");
    endpoint.stop().await;
}
