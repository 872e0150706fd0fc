//! A jobpipe binary running in the background with `--metrics-addr
//! 127.0.0.1:0`: its stderr is collected line by line, the address it
//! listens on is read from its log, and its endpoints are asked over plain
//! HTTP/1.1, the way a probe or a scraper would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running jobpipe.
pub struct Live {
    child: Child,
    stderr: Arc<Mutex<String>>,
    addr: String,
}

impl Live {
    /// Starts jobpipe with `args` and `env` (on top of a clean environment
    /// without `JOBPIPE_*`/`RUNPOD_*`), serving its endpoints on a free port.
    pub fn start(args: &[String], env: &[(String, String)]) -> Live {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobpipe"));
        cmd.arg("--metrics-addr")
            .arg("127.0.0.1:0")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars_os() {
            let text = name.to_string_lossy();
            if text.starts_with("JOBPIPE_") || text.starts_with("RUNPOD_") {
                cmd.env_remove(&name);
            }
        }
        cmd.env("JOBPIPE_LOG_LEVEL", "DEBUG");
        for (name, value) in env {
            cmd.env(name, value);
        }
        let mut child = cmd.spawn().expect("jobpipe starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let mut live = Live {
            child,
            stderr,
            addr: String::new(),
        };
        let line = live.wait_for_log(
            "health, readiness and metrics on http://",
            Duration::from_secs(20),
        );
        let start = line.find("http://").unwrap() + "http://".len();
        live.addr = line[start..].split_whitespace().next().unwrap().to_owned();
        live
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "no log line with {needle:?} within {limit:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything jobpipe logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
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
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).expect("signal");
    }

    /// Waits for jobpipe to exit; returns its exit code.
    pub fn wait(mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("jobpipe did not exit within {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
