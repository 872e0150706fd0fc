//! A real S3-compatible server for the object-store tests: moto's server
//! mode (from the tests' virtualenv, `.ci/python-venv`) on a free loopback
//! port, with one bucket. It can be stopped and started again on the same
//! port, to take the store away in the middle of an upload; moto keeps
//! its objects in memory, so a restart begins empty but for the bucket.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::prereq::moto_server;

/// The bucket every test server has.
pub const BUCKET: &str = "jobpipe-test";
/// Keys the server accepts (moto accepts any; real ones are signed with them).
pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key";

pub struct S3Server {
    program: String,
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts moto with the bucket; `None` when moto is missing and the
    /// user opted out (`JOBPIPE_TEST_SKIP=s3`).
    pub async fn start() -> Option<S3Server> {
        let program = moto_server()?;
        let dir = tempfile::tempdir().unwrap();
        let mut server = S3Server {
            program,
            port: free_port(),
            child: None,
            log: dir.path().join("moto.log"),
            _dir: dir,
        };
        server.run().await;
        Some(server)
    }

    async fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.program)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("moto_server starts");
        self.child = Some(child);
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let made = http
                .put(format!("{}/{BUCKET}", self.endpoint()))
                .send()
                .await;
            if made.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "moto_server did not start on port {}: {}",
                self.port,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's URL (`--object-store-endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// jobpipe's flags for this server under `prefix`.
    pub fn flags(&self, prefix: &str) -> Vec<String> {
        vec![
            "--object-store".into(),
            format!("s3://{BUCKET}/{prefix}"),
            "--object-store-endpoint".into(),
            self.endpoint(),
        ]
    }

    /// The credentials as the AWS variables.
    pub fn env(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ]
    }

    /// Whether the object at `path` (under the bucket: the prefix and the
    /// key) is there.
    pub async fn has(&self, path: &str) -> bool {
        use object_store::ObjectStore as _;
        let client = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .unwrap();
        match client.head(&object_store::path::Path::from(path)).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => panic!("HEAD {path}: {e}"),
        }
    }

    /// Takes the store away (SIGKILL: nothing is answered from now on).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Brings the store back on the same port, with the bucket.
    pub async fn restart(&mut self) {
        self.stop();
        self.run().await;
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fetches a URL (a presigned one) and returns its status and body.
pub async fn fetch(url: &str) -> (u16, Vec<u8>) {
    let response = reqwest::get(url).await.expect("the URL answers");
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
