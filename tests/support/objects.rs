//! The self-hosted endpoint with an object store, as the object-store
//! tests start it: the real binary serving the API over SQLite, with the
//! test S3 server's flags and credentials and a handler whose output is
//! as large as asked (tests/fixtures/big_output.py).

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use super::daemon::{daemon, Daemon};
use super::endpoint::free_port;
use super::s3::S3Server;

pub const KEY: &str = "objects-key";
pub const WAIT: Duration = Duration::from_secs(180);

pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A jobpipe process serving the endpoint API with an object store.
pub struct Server {
    pub daemon: Daemon,
    pub base: String,
    pub http: reqwest::Client,
}

impl Server {
    pub async fn start(dir: &Path, s3: &S3Server, extra: &[&str]) -> Server {
        let handler = ["python3".to_owned(), fixture("big_output.py")];
        Server::start_with(dir, s3, extra, &handler).await
    }

    /// [`Server::start`] with another handler command.
    pub async fn start_with(
        dir: &Path,
        s3: &S3Server,
        extra: &[&str],
        handler: &[String],
    ) -> Server {
        let port = free_port();
        let daemon = daemon()
            .args(["--serve-api", "--api-key", KEY, "--log-level", "info"])
            .args(["--api-addr", &format!("127.0.0.1:{port}")])
            .arg("--queue")
            .arg(format!("sqlite:{}", dir.join("queue.db").display()))
            .arg("--spool-dir")
            .arg(dir.join("spool"))
            .args(s3.flags("results"))
            .envs(s3.env())
            .args(extra)
            .arg("--scratch-dir")
            .arg(dir.join("scratch"))
            .arg("--")
            .args(handler)
            .start();
        let server = Server {
            daemon,
            base: format!("http://127.0.0.1:{port}/v2/default"),
            http: reqwest::Client::new(),
        };
        let started = Instant::now();
        while server.try_get("/health").await.is_none() {
            assert!(
                started.elapsed() < WAIT,
                "jobpipe did not start serving\n{}",
                server.daemon.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    pub async fn try_get(&self, path: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    pub async fn submit(&self, input: Value) -> String {
        let answer: Value = self
            .http
            .post(format!("{}/run", self.base))
            .bearer_auth(KEY)
            .json(&json!({ "input": input }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["id"].as_str().expect("an id").to_owned()
    }

    /// Puts `data` in the store as an upload (`POST /uploads`, then a PUT
    /// to its URL); returns its key.
    pub async fn upload(&self, data: Vec<u8>) -> String {
        let upload: Value = self
            .http
            .post(format!("{}/uploads", self.base))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let put = self
            .http
            .put(upload["url"].as_str().expect("an upload URL"))
            .body(data)
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success(), "{}", put.status());
        upload["key"].as_str().expect("a key").to_owned()
    }

    /// Waits for a job's final status; returns the status answer.
    pub async fn finished(&self, id: &str) -> Value {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_get(&format!("/status/{id}")).await {
                if matches!(
                    status["status"].as_str(),
                    Some("COMPLETED" | "FAILED" | "CANCELLED" | "TIMED_OUT")
                ) {
                    return status;
                }
            }
            assert!(
                started.elapsed() < WAIT,
                "job {id} did not finish\n{}",
                self.daemon.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn stop(mut self) -> i32 {
        self.daemon.signal(Signal::SIGTERM);
        self.daemon.wait(WAIT).code().unwrap_or(-1)
    }
}
