//! Inputs by reference on the self-hosted endpoint, against a real
//! S3-compatible server (moto, tests/support/s3.rs): an input uploaded
//! with a URL from `POST /uploads` reaches the handler as a file in its
//! job directory; a URL input is fetched only from an allowed host, and a
//! disallowed host, a private address or a redirect to one is refused
//! with an error that says why.

mod support;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{json, Value};
use support::objects::{fixture, Server, KEY};
use support::s3::{sha256_hex, S3Server};

fn handler() -> Vec<String> {
    vec!["python3".to_owned(), fixture("input_reader.py")]
}

/// A web server on a loopback port with a file and a redirect to a
/// host that is not allowed; returns its port.
async fn web_server(file: Vec<u8>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route("/file.bin", get(move || async move { file.clone() }))
        .route(
            "/redirect",
            get(move || async move {
                (
                    StatusCode::FOUND,
                    [(
                        header::LOCATION,
                        format!("http://127.0.0.2:{port}/file.bin"),
                    )],
                )
                    .into_response()
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_input_reaches_the_handler_as_a_path() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &s3, &[], &handler()).await;
    let upload: Value = server
        .http
        .post(format!("{}/uploads", server.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = upload["key"].as_str().expect("a key").to_owned();
    assert!(key.starts_with("uploads/default/"), "{upload}");
    assert_eq!(upload["method"], "PUT");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let put = reqwest::Client::new()
        .put(upload["url"].as_str().unwrap())
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let id = server
        .submit(json!({"image": {"object": {"key": key}}, "note": "kept as it is"}))
        .await;
    let status = server.finished(&id).await;
    assert_eq!(status["status"], "COMPLETED", "{status}");
    let output = &status["output"];
    let seen = &output["input"]["image"];
    assert_eq!(seen["size"], data.len(), "{output}");
    assert_eq!(seen["sha256"], sha256_hex(&data), "{output}");
    assert_eq!(output["input"]["note"], "kept as it is");
    let files = &output["files"];
    assert_eq!(
        files[0]["sha256"],
        sha256_hex(&data),
        "the handler read the same bytes"
    );
    assert_eq!(files[0]["in_job_dir"], true, "{output}");
    assert_eq!(server.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_inputs_come_only_from_allowed_hosts() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let data = b"an input served over http".to_vec();
    let port = web_server(data.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let allow = format!("127.0.0.1:{port}");
    let server = Server::start_with(dir.path(), &s3, &["--fetch-allow", &allow], &handler()).await;
    let url = |host: &str, path: &str| format!("http://{host}:{port}{path}");

    let fine = server
        .submit(json!({"a": {"object": {"url": url("127.0.0.1", "/file.bin")}}}))
        .await;
    let refused_host = server
        .submit(json!({"a": {"object": {"url": url("127.0.0.3", "/file.bin")}}}))
        .await;
    let redirected = server
        .submit(json!({"a": {"object": {"url": url("127.0.0.1", "/redirect")}}}))
        .await;
    let metadata = server
        .submit(json!({"a": {"object": {"url": "http://169.254.169.254/latest/meta-data/"}}}))
        .await;

    let status = server.finished(&fine).await;
    assert_eq!(status["status"], "COMPLETED", "{status}");
    assert_eq!(status["output"]["files"][0]["sha256"], sha256_hex(&data));

    for (id, needle) in [
        (
            refused_host,
            format!("the host 127.0.0.3:{port} is not allowed"),
        ),
        (redirected, "a redirect was refused".to_owned()),
        (
            metadata,
            "the host 169.254.169.254:80 is not allowed".to_owned(),
        ),
    ] {
        let status = server.finished(&id).await;
        assert_eq!(status["status"], "FAILED", "{status}");
        let error = status["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("was not fetched") && error.contains(&needle),
            "the error says why ({needle}): {error}"
        );
        assert!(
            error.contains("--fetch-allow"),
            "the error names the flag: {error}"
        );
    }
    assert_eq!(server.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_host_means_public_addresses_only_also_after_dns() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let port = web_server(b"private".to_vec()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &s3, &["--fetch-allow", "*"], &handler()).await;
    let by_name = server
        .submit(json!({"a": {"object": {"url": format!("http://localhost:{port}/file.bin")}}}))
        .await;
    let by_address = server
        .submit(json!({"a": {"object": {"url": format!("http://127.0.0.1:{port}/file.bin")}}}))
        .await;
    for (id, needle) in [
        (by_name, "localhost resolves to"),
        (
            by_address,
            "the address 127.0.0.1 is loopback, private or link-local",
        ),
    ] {
        let status = server.finished(&id).await;
        assert_eq!(status["status"], "FAILED", "{status}");
        let error = status["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(needle),
            "the error says why ({needle}): {error}"
        );
    }
    assert_eq!(server.stop(), 0);
}
