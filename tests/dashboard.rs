//! The web dashboard, in a real browser: the jobpipe binary serves an
//! endpoint (SQLite) with its worker (the fake handler), with a keys file holding a submit key and
//! a read key, and `tests/browser/dashboard.mjs` drives headless Chromium
//! (Debian's `chromium`, through playwright-core) through every page: login,
//! a job from the official runpod client, cancel, retry, purge, 2,000 jobs
//! paged by cursor, a read key without buttons, a `<script>` input shown as
//! text, and no console error or failed request. Screenshots go to
//! target/dashboard-screenshots/. A second test checks the headers and
//! caching of the pages and assets over plain HTTP.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::daemon::{daemon, Daemon};
use support::endpoint::free_port;
use support::prereq::{missing, venv_python};

const SUBMIT_KEY: &str = "dashboard-submit-key-0001";
const READ_KEY: &str = "dashboard-read-key-00001";

fn keys_file(dir: &std::path::Path) -> String {
    let file = dir.join("keys.toml");
    std::fs::write(
        &file,
        format!(
            "[[keys]]\nname = \"ops\"\nkey = \"{SUBMIT_KEY}\"\nendpoints = [\"*\"]\nrole = \"submit\"\n\n\
             [[keys]]\nname = \"viewer\"\nkey = \"{READ_KEY}\"\nendpoints = [\"*\"]\nrole = \"read\"\n"
        ),
    )
    .unwrap();
    file.display().to_string()
}

/// The jobpipe binary serving the API with its worker, in its own
/// process: the browser script is its child's grandchild, never reaped by
/// an endpoint in this test process.
struct Server {
    daemon: Daemon,
    root: String,
}

impl Server {
    /// With the keys file `keys`, or with no key at all.
    async fn start(dir: &Path, keys: Option<&str>) -> Server {
        let port = free_port();
        let keys: &[&str] = match &keys {
            Some(file) => &["--api-keys", file],
            None => &[],
        };
        let daemon = daemon()
            .args(["--serve-api", "--log-level", "info"])
            .args(keys)
            .args(["--api-addr", &format!("127.0.0.1:{port}")])
            .arg("--queue")
            .arg(format!("sqlite:{}", dir.join("queue.db").display()))
            .arg("--spool-dir")
            .arg(dir.join("spool"))
            .args(["--", "python3"])
            .arg(support::fake_handler())
            .start();
        let root = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let up = reqwest::get(format!("{root}/dashboard/session")).await;
            if up.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "jobpipe did not start serving\n{}",
                daemon.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server { daemon, root }
    }
}

/// The status code of a GET of `path` exactly as written, without a key.
async fn raw_get(root: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = root.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"))
}

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The browser and the Node packages; `None` (after [`missing`]) when one
/// is absent and the user opted out with `JOBPIPE_TEST_SKIP=browser`.
fn browser() -> Option<PathBuf> {
    let chromium = PathBuf::from("/usr/bin/chromium");
    if !chromium.exists() {
        missing(
            "browser",
            "/usr/bin/chromium (Debian's chromium) is not installed",
        );
        return None;
    }
    if !repo("tests/browser/node_modules/playwright-core/package.json").exists() {
        missing(
            "browser",
            "tests/browser/node_modules is missing (run `npm ci` in tests/browser)",
        );
        return None;
    }
    Some(chromium)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser() {
    let Some(chromium) = browser() else { return };
    let Some(python) = venv_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path());
    let mut server = Server::start(dir.path(), Some(&keys)).await;
    let open_dir = tempfile::tempdir().unwrap();
    let mut open = Server::start(open_dir.path(), None).await;
    let shots = repo("target/dashboard-screenshots");
    let root = server.root.clone();
    let open_root = open.root.clone();
    let run = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(repo("tests/browser/dashboard.mjs"))
            .current_dir(repo("tests/browser"))
            .env("DASH_ROOT", root)
            .env("DASH_SUBMIT_KEY", SUBMIT_KEY)
            .env("DASH_READ_KEY", READ_KEY)
            .env("DASH_PYTHON", python)
            .env("DASH_SUBMIT_PY", repo("tests/fixtures/dashboard_submit.py"))
            .env("DASH_SHOTS", &shots)
            .env("DASH_CHROMIUM", chromium)
            .env("DASH_OPEN_ROOT", open_root)
            .output()
            .expect("node runs (./test installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    server.daemon.signal(Signal::SIGTERM);
    open.daemon.signal(Signal::SIGTERM);
    let exit = server.daemon.wait_async(Duration::from_secs(60)).await;
    let open_exit = open.daemon.wait_async(Duration::from_secs(60)).await;
    assert!(
        run.status.success(),
        "the browser script failed ({}):\n{stdout}\n{stderr}\njobpipe's log:\n{}",
        run.status,
        server.daemon.logs()
    );
    assert!(stdout.contains("no console error, page error, dialog or failed request"));
    assert!(exit.success(), "jobpipe ends cleanly: {exit}");
    assert!(open_exit.success(), "jobpipe ends cleanly: {open_exit}");
}

/// The pages load without a key, carry the security headers, and assets
/// are cached by hash: immutable under their hashed name, 304 on a
/// matching `If-None-Match`. The API itself still wants its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_assets_carry_security_and_cache_headers() {
    // The binary, not an endpoint in this process: one here would reap the
    // other test's jobpipe and take its exit status.
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path());
    let mut endpoint = Server::start(dir.path(), Some(&keys)).await;
    let http = reqwest::Client::new();
    let page = http
        .get(format!("{}/dashboard/jobs", endpoint.root))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "no key needed for a page");
    let headers = page.headers().clone();
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(html.contains(">Overview</a>") && html.contains(">Workers</a>"));
    let asset = html
        .split('"')
        .find(|s| s.starts_with("/dashboard/assets/app."))
        .expect("the page links app.js by its hashed name");

    let first = http
        .get(format!("{}{asset}", endpoint.root))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(first.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && asset.contains(etag.trim_matches('"')));
    let again = http
        .get(format!("{}{asset}", endpoint.root))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.headers().contains_key("content-security-policy"));

    let plain = http
        .get(format!("{}/dashboard/assets/app.js", endpoint.root))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.headers()["cache-control"], "no-cache");
    assert_eq!(plain.headers()["etag"].to_str().unwrap(), etag);
    let unknown = http
        .get(format!("{}/dashboard/assets/nope.js", endpoint.root))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let session = http
        .get(format!("{}/dashboard/session", endpoint.root))
        .send()
        .await
        .unwrap();
    assert_eq!(session.status(), 200);
    let session: serde_json::Value = session.json().await.unwrap();
    assert_eq!(session["keysRequired"], true);
    assert_eq!(session["valid"], false);
    let session: serde_json::Value = http
        .get(format!("{}/dashboard/session", endpoint.root))
        .bearer_auth(READ_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["valid"], true);
    assert_eq!(session["role"], "read");
    assert_eq!(session["tenant"], "viewer");

    let api = http
        .get(format!("{}/v2/default/jobs", endpoint.root))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401, "the API's own routes still want the key");
    // A path that starts as the dashboard's but names an API route is not
    // let through without the key (sent raw: a client library would
    // resolve the dots itself).
    for path in [
        "/dashboard/../v2/default/jobs",
        "/dashboard/%2e%2e/v2/default/jobs",
        "/dashboard/../jobs",
    ] {
        let status = raw_get(&endpoint.root, path).await;
        assert!(
            status == 404 || status == 401 || status == 400,
            "{path} answered {status} without a key"
        );
    }
    endpoint.daemon.signal(Signal::SIGTERM);
    let exit = endpoint.daemon.wait_async(Duration::from_secs(60)).await;
    assert!(exit.success(), "jobpipe ends cleanly: {exit}");

    // Without keys the login form is skipped: the session says so.
    let dir = tempfile::tempdir().unwrap();
    let mut open = Server::start(dir.path(), None).await;
    let session: serde_json::Value = http
        .get(format!("{}/dashboard/session", open.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["keysRequired"], false, "{session}");
    assert_eq!(session["role"], "submit", "{session}");
    open.daemon.signal(Signal::SIGTERM);
    assert!(open
        .daemon
        .wait_async(Duration::from_secs(60))
        .await
        .success());
}
