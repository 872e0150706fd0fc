//! A handler hands over files instead of output (`output_file`,
//! `output_files`): jobpipe gives each job a scratch directory (`job_dir`
//! in the job line, `JOBPIPE_JOB_DIR` for a one-shot handler), uploads the
//! files from it to a real S3-compatible server (moto, tests/support/s3.rs),
//! makes the references the job's output and removes the directory; a
//! file outside the directory fails the job and says why.

mod support;

use std::path::Path;

use serde_json::{json, Value};
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
