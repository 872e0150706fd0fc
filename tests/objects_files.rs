//! A handler hands over files instead of output (`output_file`,
//! `output_files`): jobpipe gives each job a scratch directory (`job_dir`
//! in the job line, `JOBPIPE_JOB_DIR` for a one-shot handler), uploads the
//! files from it to a real S3-compatible server (moto, tests/support/s3.rs),
//! makes the references the job's output and removes the directory; a
//! file outside the directory fails the job and says why; a 1 GiB file
//! goes up in parts with jobpipe's memory flat.

mod support;

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::objects::{fixture, Server};
use support::s3::{fetch, sha256_hex, S3Server};

/// Checks one uploaded file against the handler's note.
async fn check_file(object: &Value, note: &Value, name: &str, size: usize, content_type: &str) {
    assert_eq!(object["size"], size, "{object}");
    assert_eq!(object["contentType"], content_type, "{object}");
    assert_eq!(object["sha256"], note["sha256"][name], "{object}");
    let (status, body) = fetch(object["url"].as_str().expect("a URL")).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), size);
    assert_eq!(sha256_hex(&body), note["sha256"][name].as_str().unwrap());
}

fn read_note(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("the handler's note")).unwrap()
}

fn handler(extra: &[&str]) -> Vec<String> {
    let mut argv = vec!["python3".to_owned(), fixture("file_output.py")];
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_in_the_job_dir_are_uploaded_and_the_dir_is_removed() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &s3, &[], &handler(&[])).await;

    let note = dir.path().join("one.json");
    let size = 20 << 20;
    let one = server
        .submit(json!({"files": {"clip.mp4": size}, "note": note.display().to_string()}))
        .await;
    let status = server.finished(&one).await;
    assert_eq!(status["status"], "COMPLETED", "{status}");
    let noted = read_note(&note);
    let object = &status["output"]["object"];
    assert_eq!(object["key"], format!("default/{one}/clip.mp4"));
    check_file(object, &noted, "clip.mp4", size, "video/mp4").await;
    let job_dir = noted["job_dir"].as_str().unwrap();
    assert!(
        job_dir.starts_with(&dir.path().join("scratch").display().to_string()),
        "{job_dir}"
    );
    assert!(
        !Path::new(job_dir).exists(),
        "the job's directory is removed after the job"
    );

    let note = dir.path().join("two.json");
    let two = server
        .submit(json!({"files": {"a.png": 1000, "b.json": 10}, "note": note.display().to_string()}))
        .await;
    let status = server.finished(&two).await;
    assert_eq!(status["status"], "COMPLETED", "{status}");
    let noted = read_note(&note);
    let files = status["output"]["files"]
        .as_array()
        .expect("a list of files");
    assert_eq!(files.len(), 2, "{status}");
    assert_eq!(files[0]["name"], "a.png");
    check_file(&files[0]["object"], &noted, "a.png", 1000, "image/png").await;
    assert_eq!(files[1]["name"], "b.json");
    check_file(
        &files[1]["object"],
        &noted,
        "b.json",
        10,
        "application/json",
    )
    .await;
    assert_eq!(server.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_outside_the_job_dir_fails_the_job_saying_so() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "not for upload").unwrap();
    let server = Server::start_with(dir.path(), &s3, &[], &handler(&[])).await;
    let id = server
        .submit(json!({"path": secret.display().to_string()}))
        .await;
    let status = server.finished(&id).await;
    assert_eq!(status["status"], "FAILED", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("is outside the job's directory"),
        "the error names the cause: {status}"
    );
    assert_eq!(server.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_handler_finds_its_job_dir_in_the_environment() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &s3,
        &["--mode", "oneshot"],
        &handler(&["--oneshot"]),
    )
    .await;
    let note = dir.path().join("oneshot.json");
    let id = server
        .submit(json!({"files": {"out.txt": 5000}, "note": note.display().to_string()}))
        .await;
    let status = server.finished(&id).await;
    assert_eq!(status["status"], "COMPLETED", "{status}");
    let noted = read_note(&note);
    check_file(
        &status["output"]["object"],
        &noted,
        "out.txt",
        5000,
        "text/plain",
    )
    .await;
    assert!(!Path::new(noted["job_dir"].as_str().unwrap()).exists());
    assert_eq!(server.stop(), 0);
}

/// The size and hex SHA-256 of what `url` answers, read a chunk at a
/// time, and its ETag.
async fn stream_sha256(url: &str) -> (u64, String, String) {
    let mut response = reqwest::get(url).await.expect("the URL answers");
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let mut hasher = Sha256::new();
    let mut size = 0;
    while let Some(chunk) = response.chunk().await.expect("the body arrives") {
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let digest = hasher.finalize();
    let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
    (size, hex, etag)
}

/// A field of /proc/PID/status in KiB, which must be there.
fn status_kib(pid: i32, field: &str) -> u64 {
    support::status_kib(pid, field).unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// The case: a handler answers `output_file` with a 1 GiB file;
/// jobpipe uploads it in 8 MiB parts (multipart) and the job's output is
/// its reference, with the file's size and SHA-256 (the handler's, as it
/// wrote the file, and the test's, reading the object back from the
/// store), while jobpipe's peak RSS stays under 64 MiB besides the pages
/// of its own binary (a debug build's are some 32 MiB, a release build's
/// some 10; docs/benchmark.md has 51 MiB in all for a release build).
/// moto keeps the object in memory and peaks at some 4.4 GiB doing so;
/// the test takes some 20 s, the upload about 12 of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_output_file_goes_up_in_parts_with_memory_flat() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &s3, &[], &handler(&[])).await;
    let note = dir.path().join("big.json");
    let size: u64 = 1 << 30;
    let started = Instant::now();
    let id = server
        .submit(json!({
            "files": {"big.bin": size},
            "pattern": true,
            "note": note.display().to_string(),
        }))
        .await;
    let status = server.finished(&id).await;
    let took = started.elapsed();
    assert_eq!(status["status"], "COMPLETED", "{status}");
    let pid = server.daemon.pid();
    let (peak_kib, file_kib) = (status_kib(pid, "VmHWM"), status_kib(pid, "RssFile"));
    let moto_peak = || {
        s3.pid()
            .map_or(0, |pid| status_kib(pid as i32, "VmHWM") / 1024)
    };
    let moto_after_upload = moto_peak();
    let object = &status["output"]["object"];
    assert_eq!(object["size"], 1_073_741_824u64, "{object}");
    assert_eq!(object["key"], format!("default/{id}/big.bin"));
    let written = read_note(&note)["sha256"]["big.bin"].clone();
    assert_eq!(object["sha256"], written, "jobpipe's hash is the handler's");
    let read_started = Instant::now();
    let (stored_size, stored_sha256, etag) = stream_sha256(object["url"].as_str().unwrap()).await;
    assert_eq!(stored_size, size);
    assert_eq!(stored_sha256, written, "the store holds what was written");
    // A multipart object's ETag ends in its count of parts: 128 of 8 MiB.
    assert!(etag.trim_matches('"').ends_with("-128"), "ETag {etag}");
    let logs = server.daemon.logs();
    let upload = logs
        .lines()
        .find(|l| l.contains("bytes to the object store in"))
        .unwrap_or("(no upload line)");
    println!(
        "1 GiB output_file: submission to COMPLETED {took:.1?}, read back and hashed in {:.1?}, jobpipe's peak RSS {} MiB of which {} MiB file pages; moto's peak RSS {moto_after_upload} MiB after the upload, {} MiB after the read; {upload}",
        read_started.elapsed(),
        peak_kib / 1024,
        file_kib / 1024,
        moto_peak(),
    );
    assert!(
        peak_kib - file_kib < 64 * 1024,
        "jobpipe's peak RSS was {peak_kib} KiB uploading a 1 GiB file, {file_kib} KiB of it file pages\n{logs}"
    );
    assert_eq!(server.stop(), 0);
}
