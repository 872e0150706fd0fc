//! The dashboard's figures (`/stats`, `/endpoints`, the workers' current
//! jobs), written once and run against every queue store.

use std::time::Instant;

use serde_json::{json, Value};

use super::endpoint::{fake, Endpoint, Store, WAIT};
use super::endpoint_platform::{at, get, submit};
use reqwest::Method;

/// Every figures test for one store.
#[macro_export]
macro_rules! all_stats_tests {
    ($store:expr) => {
        $crate::route_tests!(
            endpoint_stats,
            $store,
            the_figures_count_what_ended_and_survive_a_restart,
            a_workers_current_job_and_the_endpoints_are_listed,
        );
    };
}

/// Polls `/stats` until `done` holds for it; the last answer.
async fn stats_until(endpoint: &Endpoint, query: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (code, stats) = get(endpoint, &format!("/v2/default/stats{query}")).await;
        assert_eq!(code, 200, "{stats}");
        if done(&stats) {
            return stats;
        }
        assert!(
            started.elapsed() < WAIT,
            "the figures did not come: {stats}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn sum(stats: &Value, field: &str) -> u64 {
    stats["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[field].as_u64().unwrap())
        .sum()
}

/// Ten jobs completed and three failed show in the hour's counts, in the
/// minute chart and the day's five-minute chart with their times; a
/// restarted API reads them back from the jobs kept.
pub async fn the_figures_count_what_ended_and_survive_a_restart(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push((
            submit(&endpoint, "", fake("echo", json!({"i": i}))).await,
            "COMPLETED",
        ));
    }
    for _ in 0..3 {
        ids.push((
            submit(&endpoint, "", fake("error", json!({}))).await,
            "FAILED",
        ));
    }
    for (id, status) in &ids {
        endpoint.wait_for(id, status).await;
    }
    let counted =
        |s: &Value| s["now"]["completedLastHour"] == 10 && s["now"]["failedLastHour"] == 3;
    let stats = stats_until(&endpoint, "", counted).await;
    assert_eq!(stats["range"], "1h", "{stats}");
    assert_eq!(stats["bucketSeconds"], 60, "{stats}");
    assert_eq!(stats["series"].as_array().unwrap().len(), 60, "{stats}");
    assert_eq!(sum(&stats, "completed"), 10, "{stats}");
    assert_eq!(sum(&stats, "failed"), 3, "{stats}");
    let busy = stats["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["completed"].as_u64() > Some(0))
        .unwrap();
    for field in ["waitP50Ms", "waitP99Ms", "runP50Ms", "runP99Ms"] {
        let ms = busy[field].as_f64().unwrap_or(-1.0);
        assert!((0.0..30_000.0).contains(&ms), "{field}: {busy}");
    }
    assert!(
        busy["runP50Ms"].as_f64() <= busy["runP99Ms"].as_f64(),
        "{busy}"
    );
    let quiet = &stats["series"][0];
    assert_eq!(quiet["completed"], 0, "{stats}");
    assert_eq!(quiet["runP50Ms"], Value::Null, "{stats}");
    assert_eq!(stats["now"]["waiting"], 0, "{stats}");
    assert_eq!(stats["now"]["oldestWaitSeconds"], Value::Null, "{stats}");
    let day = stats_until(&endpoint, "?range=1d", counted).await;
    assert_eq!(day["bucketSeconds"], 300, "{day}");
    assert_eq!(day["series"].as_array().unwrap().len(), 288, "{day}");
    assert_eq!(sum(&day, "completed"), 10, "{day}");
    let (code, bad) = get(&endpoint, "/v2/default/stats?range=1w").await;
    assert_eq!(code, 400, "{bad}");
    assert!(
        bad["error"].as_str().unwrap().contains("range must be 1h"),
        "{bad}"
    );

    let mut endpoint = endpoint;
    endpoint.request_stop();
    endpoint.finished().await;
    let again = Endpoint::start_on(
        store,
        tempfile::tempdir().unwrap(),
        endpoint.queue.clone(),
        &[],
    )
    .await;
    let stats = stats_until(&again, "", counted).await;
    assert!(stats["since"].as_i64().is_some(), "{stats}");
    again.stop().await;
}

/// A job in progress is its worker's current job and counts as running;
/// `/endpoints` lists the endpoints in use.
pub async fn a_workers_current_job_and_the_endpoints_are_listed(store: &Store) {
    let endpoint = Endpoint::start(store, &[]).await;
    let id = submit(&endpoint, "", fake("hang", json!({}))).await;
    endpoint.wait_for(&id, "IN_PROGRESS").await;
    let started = Instant::now();
    let workers = loop {
        let (code, list) = get(&endpoint, "/v2/default/workers").await;
        assert_eq!(code, 200, "{list}");
        if list["workers"][0]["currentJobs"] == json!([id]) {
            break list;
        }
        assert!(started.elapsed() < WAIT, "{list}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(workers["workers"][0]["state"], "busy", "{workers}");
    let stats = stats_until(&endpoint, "", |s| s["now"]["running"] == 1).await;
    assert_eq!(stats["now"]["workers"]["busy"], 1, "{stats}");
    assert_eq!(stats["now"]["workers"]["lost"], 0, "{stats}");
    submit(&endpoint, "/v2/other-model", fake("echo", json!({}))).await;
    let (code, listed) = get(&endpoint, "/endpoints").await;
    assert_eq!(code, 200, "{listed}");
    assert_eq!(
        listed["endpoints"],
        json!(["default", "other-model"]),
        "{listed}"
    );
    let (code, cancelled) = at(&endpoint, Method::POST, &format!("/cancel/{id}"), None).await;
    assert_eq!(code, 200, "{cancelled}");
    endpoint.stop().await;
}
