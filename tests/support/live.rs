//! A jobpipe binary running in the background (a [`super::daemon`]
//! process) with `--metrics-addr 127.0.0.1:0`: the address it listens on is
//! read from its log, and its endpoints are asked over plain HTTP/1.1, the
//! way a probe or a scraper would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::daemon::{daemon, Daemon};

/// A running jobpipe.
pub struct Live {
    daemon: Daemon,
    addr: String,
}

impl Live {
    /// Starts jobpipe with `args` and `env` (on top of a clean environment
    /// without `JOBPIPE_*`/`RUNPOD_*`), serving its endpoints on a free port.
    pub fn start(args: &[String], env: &[(String, String)]) -> Live {
        let mut daemon = daemon()
            .arg("--metrics-addr")
            .arg("127.0.0.1:0")
            .args(args)
            .env("JOBPIPE_LOG_LEVEL", "DEBUG")
            .envs(env.iter().cloned())
            .start();
        let line = daemon.wait_for_log(
            "health, readiness and metrics on http://",
            Duration::from_secs(20),
        );
        let start = line.find("http://").unwrap() + "http://".len();
        let addr = line[start..].split_whitespace().next().unwrap().to_owned();
        Live { daemon, addr }
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) -> String {
        self.daemon.wait_for_log(needle, limit)
    }

    /// Everything jobpipe logged so far, each line with the seconds since
    /// its start.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    pub fn pid(&self) -> i32 {
        self.daemon.pid()
    }

    /// `GET path`: the status code and the body.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path)
            .unwrap_or_else(|e| panic!("GET {path} failed: {e}\n{}", self.log()))
    }

    /// Asks `path` until its status is `status`; returns the body then.
    pub fn wait_for_status(&self, path: &str, status: u16, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let (got, body) = self.get(path);
            if got == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path} still answered {got} ({body}) after {limit:?}, not {status}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal to jobpipe.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        self.daemon.signal(signal);
    }

    /// Waits for jobpipe to exit; returns its exit code.
    pub fn wait(mut self, limit: Duration) -> Option<i32> {
        self.daemon.wait(limit).code()
    }
}

/// One HTTP/1.1 GET with `Connection: close`.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
