//! An endpoint (`jobpipe --serve-api`) running in this test process on a
//! free port, over a queue store the test chooses, with HTTP helpers.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use jobpipe::config::Cli;
use jobpipe::error::FatalError;
use jobpipe::signals::ShutdownRequest;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub const KEY: &str = "endpoint-test-key";
/// Longest wait for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(30);

/// Where a test's queue lives; the route tests run against every store.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite,
    /// A fresh database per endpoint on the test PostgreSQL server.
    Postgres,
}

impl Store {
    /// The `--queue` value for a fresh queue inside `dir`. A PostgreSQL
    /// database is made with a client connection rather than `psql`: the
    /// endpoints in this process reap every child process, so a `psql`
    /// run could lose its exit status. The server's directory, databases
    /// and all, is removed when the tests end.
    pub async fn fresh_queue(&self, dir: &Path) -> String {
        match self {
            Store::Sqlite => format!("sqlite:{}", dir.join("queue.db").display()),
            Store::Postgres => {
                let server = super::postgres::server().expect("the test server runs");
                let (client, connection) =
                    tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
                        .await
                        .expect("connect to the test server");
                tokio::spawn(connection);
                let name = format!("endpoint_{}", uuid::Uuid::new_v4().simple());
                client
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create a test database");
                server.url(&name)
            }
        }
    }

    /// Whether this store can be tested here (PostgreSQL may be missing:
    /// the tests then say so and skip).
    pub fn available(&self) -> bool {
        match self {
            Store::Sqlite => true,
            Store::Postgres => super::postgres::server().is_some(),
        }
    }
}

pub fn fake_handler() -> String {
    format!(
        "{}/tests/fixtures/fake_handler.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An endpoint running in this process.
pub struct Endpoint {
    /// `http://127.0.0.1:PORT/v2/ENDPOINT`, where the clients send calls.
    pub base: String,
    /// `http://127.0.0.1:PORT`.
    pub root: String,
    pub http: reqwest::Client,
    pub queue: String,
    task: Option<JoinHandle<Result<u8, FatalError>>>,
    requests: mpsc::UnboundedSender<ShutdownRequest>,
    pub dir: tempfile::TempDir,
}

impl Endpoint {
    /// Starts an endpoint with the fake handler; `extra` are more flags.
    pub async fn start(store: &Store, extra: &[&str]) -> Endpoint {
        let dir = tempfile::tempdir().unwrap();
        let queue = store.fresh_queue(dir.path()).await;
        Endpoint::start_on(store, dir, queue, extra).await
    }

    /// Starts an endpoint on an existing queue.
    pub async fn start_on(
        _store: &Store,
        dir: tempfile::TempDir,
        queue: String,
        extra: &[&str],
    ) -> Endpoint {
        wait_for_previous_owner(&queue).await;
        let port = free_port();
        let mut args: Vec<String> = [
            "jobpipe",
            "--serve-api",
            "--api-key",
            KEY,
            "--kill-grace",
            "1s",
            "--shutdown-timeout",
            "10s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--api-addr".into(), format!("127.0.0.1:{port}")]);
        args.extend(["--queue".into(), queue.clone()]);
        let spool = dir.path().join("spool");
        args.extend(["--spool-dir".into(), spool.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        if !extra.contains(&"--") {
            args.extend(["--".into(), "python3".into(), fake_handler()]);
        }
        let config = Cli::try_parse_from(args)
            .unwrap()
            .into_config(Path::new("/nonexistent"))
            .unwrap();
        let (requests, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(jobpipe::supervisor::run(config, rx));
        let endpoint = Endpoint {
            base: format!("http://127.0.0.1:{port}/v2/default"),
            root: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            queue,
            task: Some(task),
            requests,
            dir,
        };
        endpoint.wait_until_serving().await;
        endpoint
    }

    async fn wait_until_serving(&self) {
        let started = Instant::now();
        while started.elapsed() < WAIT {
            if let Ok(response) = self
                .http
                .get(format!("{}/health", self.base))
                .bearer_auth(KEY)
                .send()
                .await
            {
                if response.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the endpoint did not start serving");
    }

    /// A call with the key; answers status and JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let (status, body, _) = self.request(KEY, method, &url, body).await;
        (status, body)
    }

    /// A call to `url` with `key`; answers status, JSON body and
    /// `Retry-After`.
    pub async fn request(
        &self,
        key: &str,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> (u16, Value, Option<String>) {
        let mut request = self.http.request(method, url).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the endpoint answers");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        let text = response.text().await.unwrap();
        let body =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?} ({status})"));
        (status, body, retry_after)
    }

    /// A POST with the key and an `Idempotency-Key`.
    pub async fn post_idempotent(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .expect("the endpoint answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?} ({status})"));
        (status, body)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Submits a job for the fake handler; returns its id.
    pub async fn submit(&self, body: Value) -> String {
        let (status, answer) = self.post("/run", body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["status"], "IN_QUEUE");
        answer["id"].as_str().unwrap().to_owned()
    }

    /// Waits until a job reaches `status` and returns its `/status` body.
    pub async fn wait_for(&self, id: &str, status: &str) -> Value {
        let started = Instant::now();
        loop {
            let (code, body) = self.get(&format!("/status/{id}")).await;
            assert_eq!(code, 200, "{body}");
            if body["status"] == status {
                return body;
            }
            let finals = ["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"];
            if finals.contains(&body["status"].as_str().unwrap_or_default())
                || started.elapsed() > WAIT
            {
                panic!("job {id} was to become {status}: {body}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `/health`'s job counts.
    pub async fn jobs(&self) -> Value {
        let (code, body) = self.get("/health").await;
        assert_eq!(code, 200);
        body["jobs"].clone()
    }

    /// Sends a stop request (as a first SIGTERM would).
    pub fn request_stop(&self) {
        let _ = self.requests.send(ShutdownRequest::Stop);
    }

    /// Waits for the endpoint to end after stop requests; its exit code.
    pub async fn finished(&mut self) -> u8 {
        let task = self.task.take().expect("not finished before");
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the endpoint stops in time")
            .expect("no panic")
            .expect("no fatal error")
    }

    /// Stops the endpoint and waits for it.
    pub async fn stop(mut self) -> u8 {
        self.request_stop();
        self.finished().await
    }
}

/// A fake-handler job body.
pub fn fake(what: &str, extra: Value) -> Value {
    let mut input = json!({ "do": what });
    if let Value::Object(extra) = extra {
        input.as_object_mut().unwrap().extend(extra);
    }
    json!({ "input": input })
}

/// Waits until no earlier in-process endpoint holds the SQLite queue's
/// lock: a stopped supervisor's last tasks may still be dropping it, and a
/// second open would be refused as a second process.
async fn wait_for_previous_owner(queue: &str) {
    let Some(path) = queue.strip_prefix("sqlite:") else {
        return;
    };
    let lock_path = format!("{path}.lock");
    let started = Instant::now();
    loop {
        let Ok(file) = std::fs::File::create(&lock_path) else {
            return;
        };
        if nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok() {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "the previous endpoint never released {lock_path}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
