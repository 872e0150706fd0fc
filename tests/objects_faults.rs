//! The object store goes away while jobpipe uploads an output: a real
//! S3-compatible server (moto, tests/support/s3.rs) is killed as the
//! upload is under way (its first part stored) and started again 30
//! seconds later. Meanwhile the output waits in the spool folder, the
//! worker takes other jobs, and the upload is retried with back-off; the
//! result arrives once the store is back. A store that stays down longer
//! than `--object-store-retry` fails the job with an error that says so.
//! Never a lost result, never a hung job.

mod support;

use std::time::{Duration, Instant};

use std::path::Path;

use serde_json::json;
use support::objects::Server;
use support::s3::{fetch, sha256_hex, S3Server};

/// Waits until the server has stored the first part of a multipart
/// upload (moto logs each request once answered): the upload is under way.
async fn wait_for_first_part(s3: &S3Server) {
    let started = Instant::now();
    while !s3.log().contains("partNumber=") {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no part was uploaded:\n{}",
            s3.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How long the store stays down.
const OUTAGE: Duration = Duration::from_secs(30);

/// The sizes of the files in the spool's upload folders.
fn spooled_uploads(spool: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(spool) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("upload-"))
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten())
        .filter_map(Result::ok)
        .filter_map(|f| f.metadata().ok().map(|m| m.len()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_outlives_a_store_outage_and_the_result_arrives() {
    let Some(mut s3) = S3Server::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &s3, &[]).await;
    let note = dir.path().join("out.sha256");
    let size = 50_000_000;
    let id = server
        .submit(json!({"size": size, "note": note.display().to_string()}))
        .await;
    wait_for_first_part(&s3).await;
    s3.stop();
    let down = Instant::now();
    let waits = server
        .daemon
        .wait_for_log("waits in the spool", Duration::from_secs(120));
    eprintln!("while the store is down: {waits}");
    // The output is on disk in the spool folder, not only in memory.
    let spooled = spooled_uploads(&dir.path().join("spool"));
    assert!(
        spooled.iter().any(|&len| len as usize >= size),
        "the output waits in the spool folder: {spooled:?}\n{}",
        server.daemon.logs()
    );
    // The job's slot is free: a small job runs meanwhile.
    let small = server.submit(json!({"size": 100})).await;
    let status = server.finished(&small).await;
    assert_eq!(status["status"], "COMPLETED", "{status}");
    // Down for the whole outage: several attempts fail before it is back.
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    let attempts = server
        .daemon
        .stderr()
        .matches("to the object store failed")
        .count();
    assert!(
        attempts >= 2,
        "the upload is retried while the store is down:\n{}",
        server.daemon.logs()
    );
    assert_eq!(
        server.try_get(&format!("/status/{id}")).await.unwrap()["status"],
        "IN_PROGRESS",
        "the job waits for the store"
    );
    s3.restart().await;
    let status = server.finished(&id).await;
    assert_eq!(
        status["status"],
        "COMPLETED",
        "{status}\n{}",
        server.daemon.logs()
    );
    let object = &status["output"]["object"];
    let noted = std::fs::read_to_string(&note).unwrap();
    assert_eq!(object["sha256"], noted.as_str());
    let (code, body) = fetch(object["url"].as_str().unwrap()).await;
    assert_eq!(code, 200);
    assert_eq!(body.len(), size + 2);
    assert_eq!(sha256_hex(&body), noted);
    let left = spooled_uploads(&dir.path().join("spool"));
    assert!(left.is_empty(), "the spool folder is emptied: {left:?}");
    assert_eq!(server.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stays_down_fails_the_job_saying_so() {
    let Some(mut s3) = S3Server::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &s3, &["--object-store-retry", "4s"]).await;
    s3.stop();
    let started = Instant::now();
    let id = server.submit(json!({"size": 10_000_000})).await;
    let status = server.finished(&id).await;
    assert_eq!(status["status"], "FAILED", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("could not be reached") && error.contains("--object-store-retry"),
        "the error says what happened: {error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "the job fails within its retry time, not later: {:?}",
        started.elapsed()
    );
    assert_eq!(server.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_waiting_at_shutdown_is_delivered_by_the_next_start() {
    let Some(mut s3) = S3Server::start().await else {
        return;
    };
    s3.stop();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &s3, &["--shutdown-timeout", "3s"]).await;
    let note = dir.path().join("out.sha256");
    let size = 12_000_000;
    let id = server
        .submit(json!({"size": size, "note": note.display().to_string()}))
        .await;
    server
        .daemon
        .wait_for_log("waits in the spool", Duration::from_secs(120));
    let noted = std::fs::read_to_string(&note).unwrap();
    // Stopped while the store is still down: the result stays in the spool.
    server.stop();
    assert!(
        !spooled_uploads(&dir.path().join("spool")).is_empty(),
        "the output is kept in the spool folder for the next start"
    );
    s3.restart().await;
    let server = Server::start(dir.path(), &s3, &[]).await;
    let status = server.finished(&id).await;
    assert_eq!(
        status["status"],
        "COMPLETED",
        "{status}\n{}",
        server.daemon.logs()
    );
    // The earlier run's output, not a second run of the job.
    assert_eq!(status["output"]["object"]["sha256"], noted.as_str());
    assert!(
        !server.daemon.stderr().contains("job taken"),
        "the job did not run again:\n{}",
        server.daemon.logs()
    );
    let (code, body) = fetch(status["output"]["object"]["url"].as_str().unwrap()).await;
    assert_eq!(code, 200);
    assert_eq!(sha256_hex(&body), noted);
    assert!(spooled_uploads(&dir.path().join("spool")).is_empty());
    assert_eq!(server.stop(), 0);
}
