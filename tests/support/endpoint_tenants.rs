//! API keys and tenants, written once and run against every queue store
//! (see `all_tenant_tests!`): what each key may do, its rate, its name on
//! its jobs, the file read again on SIGHUP, and fair shares between
//! tenants.

use std::time::Instant;

use serde_json::{json, Value};

use super::endpoint::{fake, Endpoint, Store, KEY, WAIT};
use super::endpoint_platform::{completed, get, submit_many_as};

/// Every tenant test for one store.
#[macro_export]
macro_rules! all_tenant_tests {
    ($store:expr) => {
        $crate::route_tests!(
            endpoint_tenants,
            $store,
            api_keys_give_tenants_their_endpoints_roles_and_rates,
            one_tenants_burst_does_not_starve_another_tenants_job,
            max_running_caps_a_tenants_jobs_in_progress,
        );
    };
}

/// A call with `key` (not the harness's own) to `path` from the root;
/// its status, body and `Retry-After`.
async fn with_key(
    endpoint: &Endpoint,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, Option<String>) {
    let url = format!("{}{path}", endpoint.root);
    endpoint.request(key, method, &url, body).await
}

const ACME: &str = "acme-key-0000000001";
const VIEWER: &str = "viewer-key-00000001";
const LATE: &str = "late-key-0000000001";

fn keys_file(extra: &str) -> String {
    format!(
        "[[keys]]\nname = \"acme\"\nkey = \"{ACME}\"\nendpoints = [\"alpha\"]\nrole = \"submit\"\nrate = \"2/s\"\n\n\
         [[keys]]\nname = \"viewer\"\nkey = \"{VIEWER}\"\nendpoints = [\"*\"]\nrole = \"read\"\n{extra}"
    )
}

/// Keys from `--api-keys`: each tenant uses only its endpoints, a read key
/// cannot submit or cancel, a rate gives 429 with Retry-After, the tenant
/// is recorded on its jobs and scopes its Idempotency-Keys, and SIGHUP
/// reads the file again (a bad file keeps the keys in use).
pub async fn api_keys_give_tenants_their_endpoints_roles_and_rates(store: &Store) {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, keys_file("")).unwrap();
    let file_arg = file.display().to_string();
    let endpoint = Endpoint::start(store, &["--api-keys", &file_arg, "--endpoint", "alpha"]).await;

    let job = fake("echo", json!({}));
    let (code, body, _) = with_key(
        &endpoint,
        ACME,
        Method::POST,
        "/v2/alpha/run",
        Some(job.clone()),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let (code, body, _) = with_key(
        &endpoint,
        ACME,
        Method::POST,
        "/v2/beta/run",
        Some(job.clone()),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("may not use endpoint \"beta\""),
        "{body}"
    );
    // The rate: 2 a second, and the first went out above.
    let mut limited = None;
    for _ in 0..5 {
        let (code, body, retry_after) = with_key(
            &endpoint,
            ACME,
            Method::POST,
            "/v2/alpha/run",
            Some(job.clone()),
        )
        .await;
        if code == 429 {
            limited = Some((body, retry_after));
            break;
        }
        assert_eq!(code, 200, "{body}");
    }
    let (body, retry_after) = limited.expect("the rate of 2/s was enforced");
    assert!(body["error"].as_str().unwrap().contains("rate"), "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));

    for (method, path) in [
        (Method::POST, "/v2/alpha/run".to_owned()),
        (Method::POST, format!("/v2/alpha/cancel/{id}")),
        (Method::POST, "/v2/alpha/purge-queue".to_owned()),
    ] {
        let (code, body, _) = with_key(&endpoint, VIEWER, method, &path, Some(job.clone())).await;
        assert_eq!(code, 403, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("may only read"),
            "{body}"
        );
    }
    let (code, body, _) = with_key(
        &endpoint,
        VIEWER,
        Method::GET,
        &format!("/v2/alpha/status/{id}"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, _, _) = with_key(
        &endpoint,
        "not-a-key-at-all",
        Method::GET,
        "/v2/alpha/health",
        None,
    )
    .await;
    assert_eq!(code, 401);

    let (_, detail, _) = with_key(
        &endpoint,
        VIEWER,
        Method::GET,
        &format!("/v2/alpha/jobs/{id}"),
        None,
    )
    .await;
    assert_eq!(detail["tenant"], "acme", "{detail}");
    let (_, page, _) = with_key(
        &endpoint,
        VIEWER,
        Method::GET,
        "/v2/alpha/jobs?tenant=acme",
        None,
    )
    .await;
    let jobs = page["jobs"].as_array().unwrap();
    assert!(
        !jobs.is_empty() && jobs.iter().all(|j| j["tenant"] == "acme"),
        "{page}"
    );

    // An Idempotency-Key is the tenant's own: the same key from another
    // tenant is another job.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let idempotent = |key: &'static str| {
        endpoint
            .http
            .post(format!("{}/v2/alpha/run", endpoint.root))
            .bearer_auth(key)
            .header("Idempotency-Key", "order-42")
            .json(&job)
            .send()
    };
    let first: Value = idempotent(ACME).await.unwrap().json().await.unwrap();
    let other: Value = idempotent(KEY).await.unwrap().json().await.unwrap();
    let again: Value = idempotent(ACME).await.unwrap().json().await.unwrap();
    assert_ne!(first["id"], other["id"], "{first} {other}");
    assert_eq!(first["id"], again["id"], "{first} {again}");

    // SIGHUP reads the file again: a new key works; a bad file keeps the
    // keys in use.
    std::fs::write(
        &file,
        keys_file(&format!(
            "\n[[keys]]\nname = \"late\"\nkey = \"{LATE}\"\nendpoints = [\"alpha\"]\nrole = \"read\"\n"
        )),
    )
    .unwrap();
    let started = Instant::now();
    loop {
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
        let (code, _, _) = with_key(&endpoint, LATE, Method::GET, "/v2/alpha/health", None).await;
        if code == 200 {
            break;
        }
        assert!(started.elapsed() < WAIT, "the new key was never taken");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    std::fs::write(&file, "[[keys]]\nname = 1\n").unwrap();
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (code, _, _) = with_key(&endpoint, LATE, Method::GET, "/v2/alpha/health", None).await;
    assert_eq!(code, 200, "a bad file must keep the keys in use");
    endpoint.stop().await;
}

/// Fair shares: tenant A's 1,000 jobs wait, then tenant B submits one;
/// once a worker serves the endpoint, B's job starts within the first few
/// jobs, not after A's burst.
pub async fn one_tenants_burst_does_not_starve_another_tenants_job(store: &Store) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(
        &file,
        format!(
            "[[keys]]\nname = \"a\"\nkey = \"{ACME}\"\nendpoints = [\"fair\"]\nrole = \"submit\"\n\n\
             [[keys]]\nname = \"b\"\nkey = \"{LATE}\"\nendpoints = [\"fair\"]\nrole = \"submit\"\n"
        ),
    )
    .unwrap();
    let file_arg = file.display().to_string();
    // Nobody serves "fair" yet: the burst waits.
    let mut api = Endpoint::start(store, &["--api-keys", &file_arg]).await;
    let burst = submit_many_as(&api, ACME, "/v2/fair", 1000, 16).await;
    let (code, single, _) = with_key(
        &api,
        LATE,
        reqwest::Method::POST,
        "/v2/fair/run",
        Some(fake("echo", json!({"single": true}))),
    )
    .await;
    assert_eq!(code, 200, "{single}");
    let single = single["id"].as_str().unwrap().to_owned();
    api.request_stop();
    api.finished().await;
    let worker = Endpoint::start_on(
        store,
        tempfile::tempdir().unwrap(),
        api.queue.clone(),
        &["--api-keys", &file_arg, "--endpoint", "fair"],
    )
    .await;
    let done = completed(&worker, "/v2/fair", &single).await;
    let (_, record) = get(&worker, &format!("/v2/fair/jobs/{single}")).await;
    assert_eq!(record["tenant"], "b", "{record}");
    let started = record["startedAt"].as_i64().unwrap();
    // A's jobs that started before B's, from the list.
    let mut before = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v2/fair/jobs?tenant=a&limit=500&cursor={c}"),
            None => "/v2/fair/jobs?tenant=a&limit=500".to_owned(),
        };
        let (_, page) = get(&worker, &path).await;
        before += page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|job| job["startedAt"].as_i64().is_some_and(|at| at < started))
            .count();
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert!(
        before <= 3,
        "{before} of tenant a's {} jobs started before tenant b's single job: {done}",
        burst.len()
    );
    worker.stop().await;
}

/// `max_running = 1`: with three free handler slots, the capped tenant's
/// three jobs run one after another, while another tenant's jobs run
/// beside them rather than waiting behind.
pub async fn max_running_caps_a_tenants_jobs_in_progress(store: &Store) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(
        &file,
        format!(
            "[[keys]]\nname = \"capped\"\nkey = \"{ACME}\"\nendpoints = [\"cap\"]\nrole = \"submit\"\nmax_running = 1\n\n\
             [[keys]]\nname = \"free\"\nkey = \"{LATE}\"\nendpoints = [\"cap\"]\nrole = \"submit\"\n"
        ),
    )
    .unwrap();
    let file_arg = file.display().to_string();
    // Nobody serves "cap" yet: every job is waiting when the worker starts,
    // so the take sees them all at once.
    let mut api = Endpoint::start(store, &["--api-keys", &file_arg]).await;
    let mut capped = Vec::new();
    for n in 0..3 {
        capped.push(sleeper(&api, ACME, n).await);
    }
    let mut free = Vec::new();
    for n in 0..2 {
        free.push(sleeper(&api, LATE, n).await);
    }
    api.request_stop();
    api.finished().await;
    let worker = Endpoint::start_on(
        store,
        tempfile::tempdir().unwrap(),
        api.queue.clone(),
        &[
            "--api-keys",
            &file_arg,
            "--endpoint",
            "cap",
            "--concurrency",
            "3",
        ],
    )
    .await;
    let capped_runs = spans(&worker, &capped).await;
    let free_runs = spans(&worker, &free).await;
    for pair in capped_runs.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two of the capped tenant's jobs ran at once: {capped_runs:?}"
        );
    }
    let last_capped_start = capped_runs[2].0;
    assert!(
        free_runs.iter().all(|(start, _)| *start < last_capped_start),
        "the other tenant's jobs waited behind the capped ones: free {free_runs:?}, capped {capped_runs:?}"
    );
    worker.stop().await;
}

/// Submits, with `key`, a job to `/v2/cap` that sleeps 700 ms; its id.
async fn sleeper(api: &Endpoint, key: &str, n: u64) -> String {
    let body = fake("sleep", json!({"ms": 700, "n": n}));
    let (code, answer, _) =
        with_key(api, key, reqwest::Method::POST, "/v2/cap/run", Some(body)).await;
    assert_eq!(code, 200, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

/// When each of the jobs `ids` of `/v2/cap` ran (start, end; the store's
/// clock), once all completed, earliest first.
async fn spans(worker: &Endpoint, ids: &[String]) -> Vec<(i64, i64)> {
    let mut spans = Vec::new();
    for id in ids {
        completed(worker, "/v2/cap", id).await;
        let (_, record) = get(worker, &format!("/v2/cap/jobs/{id}")).await;
        spans.push((
            record["startedAt"].as_i64().unwrap(),
            record["finishedAt"].as_i64().unwrap(),
        ));
    }
    spans.sort();
    spans
}
