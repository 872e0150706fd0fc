//! The endpoint API is secure by default: an empty key is refused at
//! start, a keyless API listens on loopback only unless told otherwise, a
//! key on the command line is warned about, and keys can come from files.

mod support;

use std::time::{Duration, Instant};

use support::daemon::{daemon, Builder, Daemon};

const HANDLER: &str = "import time; print('{\"ready\": true}', flush=True); time.sleep(600)";

/// An endpoint with a queue in its own directory and a handler that only
/// says it is ready; `args(dir)` gives the arguments, with files it may
/// write into the process's directory first.
fn endpoint_with(args: impl FnOnce(&std::path::Path) -> Vec<String>) -> Builder {
    let builder = daemon();
    let queue = format!("sqlite:{}", builder.dir().join("queue.db").display());
    let spool = builder.dir().join("spool");
    let args = args(builder.dir());
    builder
        .args(["--log-format", "text", "--serve-api", "--queue", &queue])
        .env("JOBPIPE_SPOOL_DIR", spool)
        .args(args)
        .args(["--", "python3", "-c", HANDLER])
}

fn endpoint(args: &[&str]) -> Builder {
    endpoint_with(|_| args.iter().map(|a| a.to_string()).collect())
}

/// `--api-key-file` with a file holding `key`, and `extra`.
fn with_key_file(key: &str, extra: &[&str]) -> Builder {
    endpoint_with(|dir| {
        let file = dir.join("key");
        std::fs::write(&file, key).unwrap();
        let mut args = vec!["--api-key-file".to_owned(), file.display().to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    })
}

/// Runs it expecting an exit within a minute; returns the code and stderr.
fn exits(builder: Builder) -> (Option<i32>, String) {
    let mut jp = builder.start();
    let status = jp.wait(Duration::from_secs(60));
    (status.code(), jp.stderr())
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Waits until `url` answers anything.
async fn answers(url: &str, jp: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(url).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{url} never answered\n{}",
            jp.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn an_empty_key_is_a_start_up_error_naming_the_variable() {
    let (code, stderr) = exits(endpoint(&[]).env("JOBPIPE_API_KEY", ""));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("JOBPIPE_API_KEY") && stderr.contains("empty"),
        "{stderr}"
    );

    let (code, stderr) = exits(with_key_file("\n", &[]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is empty"), "{stderr}");

    // An empty webhook secret must not silently mean unsigned posts.
    let (code, stderr) = exits(endpoint(&[]).env("JOBPIPE_WEBHOOK_SECRET", ""));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("JOBPIPE_WEBHOOK_SECRET") && stderr.contains("empty"),
        "{stderr}"
    );
}

#[test]
fn a_keyless_api_on_a_public_address_needs_insecure_no_auth() {
    let (code, stderr) = exits(endpoint(&["--api-addr", "0.0.0.0:0"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--insecure-no-auth"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_no_auth_starts_and_warns() {
    let port = free_port();
    let addr = format!("0.0.0.0:{port}");
    let mut jp = endpoint(&["--api-addr", &addr, "--insecure-no-auth"]).start();
    answers(&format!("http://127.0.0.1:{port}/health"), &jp).await;
    let log = jp.stderr();
    assert!(
        log.contains("WARN") && log.contains("without a key"),
        "{log}"
    );
    jp.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_from_a_file_is_required_and_a_key_flag_is_warned_about() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut jp = with_key_file("k3y-from-file\n", &["--api-addr", &addr]).start();
    let health = format!("http://{addr}/health");
    answers(&health, &jp).await;
    let http = reqwest::Client::new();
    assert_eq!(http.get(&health).send().await.unwrap().status(), 401);
    let allowed = http.get(&health).bearer_auth("k3y-from-file").send().await;
    assert_eq!(allowed.unwrap().status(), 200);
    jp.kill();

    // A key on the command line: the log says it can be read in `ps`. The
    // address is taken, so jobpipe exits after the warning.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = exits(endpoint(&[
        "--api-key",
        "on-the-command-line",
        "--api-addr",
        &addr,
    ]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--api-key") && stderr.contains("process list"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("on-the-command-line"),
        "the key is logged: {stderr}"
    );
}
