//! The endpoint as a platform, written once and run against every queue
//! store (see `platform_tests!`): endpoints as separate queues, the job
//! list and a job's whole record.

use std::time::Instant;

use serde_json::{json, Value};

use super::endpoint::{fake, Endpoint, Store, KEY, WAIT};

/// Every platform test for one store.
#[macro_export]
macro_rules! all_platform_tests {
    ($store:expr) => {
        $crate::platform_tests!(
            $store,
            endpoints_are_separate_queues_served_by_their_own_workers,
        );
    };
}

/// Generates one `#[tokio::test]` per platform test for a store.
#[macro_export]
macro_rules! platform_tests {
    ($store:expr, $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = $store;
                if !store.available() {
                    return;
                }
                support::endpoint_platform::$name(&store).await;
            }
        )*
    };
}

/// A call with the key to `path` from the server's root (`/v2/NAME/...`).
async fn at(
    endpoint: &Endpoint,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = endpoint
        .http
        .request(method, format!("{}{path}", endpoint.root))
        .bearer_auth(KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the endpoint answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?} ({status})"));
    (status, body)
}

async fn get(endpoint: &Endpoint, path: &str) -> (u16, Value) {
    at(endpoint, reqwest::Method::GET, path, None).await
}

/// Submits a job to the endpoint under `prefix` (`/v2/NAME`, or "" for
/// the root); its id.
async fn submit(endpoint: &Endpoint, prefix: &str, body: Value) -> String {
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
async fn completed(endpoint: &Endpoint, prefix: &str, id: &str) -> Value {
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
