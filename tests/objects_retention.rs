//! Objects do not outlive their use, in a real object store (moto,
//! tests/support/s3.rs): when the endpoint's retention
//! (`--result-retention`) deletes a finished job, its offloaded output
//! goes too; an upload (`POST /uploads`) goes once older than
//! `--upload-lifetime`, while a younger one and a job's objects stay, and
//! of processes sharing a PostgreSQL queue one deletes each; with
//! `--keep-objects` everything stays.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::cluster;
use support::daemon::{daemon, Daemon};
use support::endpoint::free_port;
use support::fake_handler;
use support::objects::{Server, KEY, WAIT};
use support::postgres;
use support::s3::{fetch, S3Server};

/// The prefix the test server puts its objects under.
const PREFIX: &str = "results";

/// What is left after a job's retention.
struct Left {
    /// The job's output object, by its presigned URL: 200 or 404.
    output: u16,
    /// Whether an upload made before the job is still there.
    upload: bool,
}

/// Runs one offloaded job with a short retention, next to an upload with
/// a shorter lifetime; returns what is left after the job is gone.
async fn left_after_retention(extra: &[&str]) -> Option<Left> {
    let s3 = S3Server::start().await?;
    let dir = tempfile::tempdir().unwrap();
    let mut flags = vec![
        "--offload-threshold",
        "1KB",
        "--result-retention",
        "3s",
        "--upload-lifetime",
        "1s",
    ];
    flags.extend_from_slice(extra);
    let server = Server::start(dir.path(), &s3, &flags).await;
    let upload = format!("{PREFIX}/{}", server.upload(b"an input".to_vec()).await);
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
    while (code == 200 || s3.has(&upload).await) && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        code = fetch(&url).await.0;
    }
    let upload = s3.has(&upload).await;
    assert_eq!(server.stop(), 0);
    Some(Left {
        output: code,
        upload,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_a_jobs_objects_with_it() {
    if let Some(left) = left_after_retention(&[]).await {
        assert_eq!(left.output, 404, "the object is deleted with its job");
        assert!(!left.upload, "the upload is deleted after its lifetime");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_objects_leaves_them() {
    if let Some(left) = left_after_retention(&["--keep-objects"]).await {
        assert_eq!(left.output, 200, "--keep-objects leaves the object");
        assert!(left.upload, "--keep-objects leaves uploads");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_past_its_lifetime_is_deleted_and_a_younger_one_stays() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let lifetime = Duration::from_secs(12);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &s3,
        &["--upload-lifetime", "12s", "--offload-threshold", "1KB"],
    )
    .await;
    // A job's object, older than the lifetime by the end: not an upload.
    let id = server.submit(json!({"size": 100_000})).await;
    let status = server.finished(&id).await;
    assert_eq!(status["status"], "COMPLETED", "{status}");
    let output = format!(
        "{PREFIX}/{}",
        status["output"]["object"]["key"].as_str().unwrap()
    );
    assert!(s3.has(&output).await, "{output}");

    let before_old = Instant::now();
    let old = format!("{PREFIX}/{}", server.upload(b"old".to_vec()).await);
    // The younger one is put halfway through the older one's lifetime.
    tokio::time::sleep_until((before_old + lifetime / 2).into()).await;
    let young = format!("{PREFIX}/{}", server.upload(b"young".to_vec()).await);
    let put_young = Instant::now();
    assert!(s3.has(&old).await && s3.has(&young).await);

    while s3.has(&old).await {
        assert!(
            before_old.elapsed() < WAIT,
            "the upload past its lifetime was never deleted\n{}",
            server.daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // S3 times are to the second at worst: the older upload may have been
    // stamped up to a second before the test's clock read `before_old`.
    let gone_at = before_old.elapsed();
    assert!(
        gone_at >= lifetime - Duration::from_secs(1),
        "deleted {gone_at:?} after it was put, before its lifetime of {lifetime:?}"
    );
    let young_age = put_young.elapsed();
    println!("upload lifetime {lifetime:?}: the older deleted {gone_at:?} after it was put; the younger {young_age:?} old and there");
    assert!(
        s3.has(&young).await,
        "the younger upload, {young_age:?} old, was deleted before its lifetime of {lifetime:?}"
    );
    assert!(
        s3.has(&output).await,
        "a job's object is no upload, whatever its age"
    );
    let logs = server.daemon.logs();
    assert!(
        logs.contains("deleted 1 uploads older than their lifetime of 12s"),
        "{logs}"
    );
    assert_eq!(server.stop(), 0);
}

/// A jobpipe process on the shared PostgreSQL queue at `url`, with the
/// store and a short upload lifetime: `--api-only` on `api_port`, else a
/// worker named `name`.
fn on_shared_queue(s3: &S3Server, url: &str, name: &str, api_port: Option<u16>) -> Daemon {
    let builder = daemon()
        .name(name)
        .args(["--log-level", "INFO", "--queue", url])
        .args(s3.flags(PREFIX))
        .envs(s3.env())
        .args(["--upload-lifetime", "20s"]);
    let spool = builder.dir().join("spool");
    let builder = builder.arg("--spool-dir").arg(spool);
    match api_port {
        Some(port) => builder
            .args(["--serve-api", "--api-only", "--api-key", KEY])
            .args(["--api-addr", &format!("127.0.0.1:{port}")]),
        None => builder
            .args(["--worker-id", name, "--", "python3"])
            .arg(fake_handler()),
    }
    .start()
}

/// The uploads a process says it deleted, from its log.
fn uploads_deleted(log: &str) -> usize {
    log.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("deleted ")?;
            let (count, rest) = rest.split_once(' ')?;
            rest.starts_with("uploads older than")
                .then(|| count.parse::<usize>().ok())?
        })
        .sum()
}

/// Three processes with the store on one PostgreSQL queue (an API-only
/// one and two workers): the uploads past their lifetime go, each once,
/// and the rounds are the cluster's, one per spacing, not each process's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_a_queue_take_turns_deleting_uploads() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let Some(db) = postgres::database() else {
        return;
    };
    let url = db.url();
    let port = free_port();
    let first_start = Instant::now();
    let api = on_shared_queue(&s3, &url, "api", Some(port));
    let workers = [
        on_shared_queue(&s3, &url, "w1", None),
        on_shared_queue(&s3, &url, "w2", None),
    ];
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/v2/default");
    let started = Instant::now();
    while http
        .get(format!("{base}/health"))
        .bearer_auth(KEY)
        .send()
        .await
        .is_err()
    {
        assert!(started.elapsed() < WAIT, "no API\n{}", api.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let server = Server {
        daemon: api,
        base,
        http,
    };
    let mut uploads = Vec::new();
    for n in 0..6 {
        let key = server.upload(vec![n; 100]).await;
        uploads.push(format!("{PREFIX}/{key}"));
    }
    for upload in &uploads {
        while s3.has(upload).await {
            assert!(
                started.elapsed() < WAIT,
                "an upload past its lifetime was never deleted\n{}",
                server.daemon.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Two processes deleting in the same round would both count an upload
    // (S3 answers a delete of a missing key as done).
    let logs: Vec<String> = std::iter::once(&server.daemon)
        .chain(&workers)
        .map(|d| d.logs())
        .collect();
    // Each round lists the uploads once (there are fewer than a page):
    // the store saw at most one listing per round's spacing (2 s, granted
    // per 1.8 s), where each process on its own would list every 2 s.
    let window = first_start.elapsed();
    let listings = s3
        .log()
        .lines()
        .filter(|l| l.contains("list-type=2") && l.contains("uploads"))
        .count();
    println!("{listings} listings of the uploads in {window:.1?}");
    assert!(
        (1..=(window.as_secs_f64() / 1.8) as usize + 1).contains(&listings),
        "{listings} listings of the uploads in {window:?}: more than one process a round"
    );
    let by_process: Vec<usize> = logs.iter().map(|log| uploads_deleted(log)).collect();
    println!("uploads deleted by the API process and the two workers: {by_process:?}");
    let deleted: usize = by_process.iter().sum();
    assert_eq!(deleted, uploads.len(), "{logs:#?}");
    let by = db.psql("SELECT done_by FROM jobpipe.chores WHERE name = 'expire-uploads'");
    assert!(by.contains(" pid "), "the last round's process: {by}");
    for daemon in workers {
        assert_eq!(cluster::stop(daemon, WAIT), Some(0));
    }
    assert_eq!(server.stop(), 0);
}
