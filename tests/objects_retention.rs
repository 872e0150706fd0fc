//! A job's objects are deleted with it: when the endpoint's retention
//! (`--result-retention`) deletes a finished job, its offloaded output
//! goes from the object store (a real one: moto, tests/support/s3.rs)
//! too; with `--keep-objects` it stays.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::objects::{Server, WAIT};
use support::s3::{fetch, S3Server};

/// Runs one offloaded job with a short retention; returns the object's
/// status after the job is gone.
async fn object_after_retention(extra: &[&str]) -> Option<u16> {
    let s3 = S3Server::start().await?;
    let dir = tempfile::tempdir().unwrap();
    let mut flags = vec!["--offload-threshold", "1KB", "--result-retention", "3s"];
    flags.extend_from_slice(extra);
    let server = Server::start(dir.path(), &s3, &flags).await;
    let id = server.submit(json!({"size": 100_000})).await;
    let status = server.finished(&id).await;
    assert_eq!(status["status"], "COMPLETED", "{status}");
    let url = status["output"]["object"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        fetch(&url).await.0,
        200,
        "the object is there while the job is"
    );
    let started = Instant::now();
    while server
        .try_get(&format!("/status/{id}"))
        .await
        .is_some_and(|s| s["status"] == "COMPLETED")
    {
        assert!(started.elapsed() < WAIT, "the job was never deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The objects go in the same upkeep pass as the job; give it a moment.
    let started = Instant::now();
    let mut code = fetch(&url).await.0;
    while code == 200 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        code = fetch(&url).await.0;
    }
    assert_eq!(server.stop(), 0);
    Some(code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_a_jobs_objects_with_it() {
    if let Some(code) = object_after_retention(&[]).await {
        assert_eq!(code, 404, "the object is deleted with its job");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_objects_leaves_them() {
    if let Some(code) = object_after_retention(&["--keep-objects"]).await {
        assert_eq!(code, 200, "--keep-objects leaves the object");
    }
}
