//! What the shutdown tests (tests/shutdown_*.rs) share: jobpipe started on
//! tagged fake handlers, and those handlers followed through /proc.
//!
//! Every handler started here carries `--tag <unique marker>` on its command
//! line, so a scan of /proc finds whatever of it is left, and every wait is
//! bounded: a jobpipe that overruns its limit is SIGKILLed and the test fails.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::daemon::{daemon, unreaped, Daemon};

/// The API key of the stand-in RunPod queue of these tests.
pub const KEY: &str = "shutdown-test-key";

// ---------------------------------------------------------------------------
// The handler command line
// ---------------------------------------------------------------------------

pub fn handler_script() -> String {
    format!(
        "{}/tests/fixtures/fake_handler.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The Python interpreter itself (not a launcher shim that execs it), so
/// handler starts are quick and the handler's pid is the interpreter's.
pub fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "python3".to_owned())
    })
}

/// A marker unique to one test run, passed to its handlers as `--tag`.
pub fn new_tag() -> String {
    format!("shutdown-test-{}", uuid::Uuid::new_v4())
}

/// `-- python3 fake_handler.py --tag TAG`
pub fn handler_argv(tag: &str) -> Vec<String> {
    vec![
        "--".to_owned(),
        python().to_owned(),
        handler_script(),
        "--tag".to_owned(),
        tag.to_owned(),
    ]
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

pub fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

// ---------------------------------------------------------------------------
// The jobpipe process
// ---------------------------------------------------------------------------

/// Starts jobpipe with `args` in `dir`, with `env` on top of the cleared
/// environment (see `support::daemon`).
pub fn start(args: &[String], env: &[(String, String)], dir: &Path) -> Daemon {
    daemon()
        .args(args)
        .envs(env.iter().cloned())
        .cwd(dir)
        .start()
}

/// Test-mode arguments for one job.
pub fn test_mode_args(job: &Value, extra: &[&str], tag: &str) -> Vec<String> {
    let mut args = vec!["--test-input".to_owned(), job.to_string()];
    args.extend(strings(extra));
    args.extend(handler_argv(tag));
    args
}

/// RunPod-mode arguments (the queue itself comes from the fake's env).
pub fn runpod_args(spool: &Path, extra: &[&str], tag: &str) -> Vec<String> {
    let mut args = vec![
        "--spool-dir".to_owned(),
        spool.to_str().expect("utf-8 path").to_owned(),
    ];
    args.extend(strings(extra));
    args.extend(handler_argv(tag));
    args
}

/// The line test mode prints for the job.
pub fn result_line(jp: &Daemon) -> Value {
    jp.stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("status").is_some())
        .unwrap_or_else(|| panic!("no result line on stdout\n{}", jp.logs()))
}

// ---------------------------------------------------------------------------
// Waiting, /proc, results
// ---------------------------------------------------------------------------

/// Polls `check` every few milliseconds for up to `limit`; returns how long
/// it took to hold, or `None`.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if check() {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The pid the fake handler wrote to `path` once a job started.
pub async fn wait_for_pid(path: &Path, limit: Duration) -> Option<i32> {
    let mut pid = None;
    eventually(limit, || {
        pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    })
    .await?;
    pid
}

/// State letter, parent and process group of a process, from /proc.
pub fn proc_stat(pid: i32) -> Option<(char, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Whether `pid` is a live (not zombie) process of a handler tagged `tag`;
/// the tag guards against a reused pid.
pub fn handler_alive(pid: i32, tag: &str) -> bool {
    matches!(proc_stat(pid), Some((state, _, _)) if state != 'Z' && state != 'X')
        && cmdline(pid).contains(tag)
}

/// Live processes whose command line carries the fake handler and `tag`
/// (handlers and any process they forked).
pub fn tagged_processes(tag: &str) -> Vec<(i32, String)> {
    let script = handler_script();
    all_pids()
        .into_iter()
        .filter_map(|pid| {
            let line = cmdline(pid);
            let (state, _, _) = proc_stat(pid)?;
            (line.contains(&script) && line.contains(tag) && state != 'Z')
                .then(|| (pid, format!("{state} {line}")))
        })
        .collect()
}

/// Zombie children of this test process other than a child some test has
/// not reaped yet.
pub fn stray_zombie_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let unreaped = unreaped();
    all_pids()
        .into_iter()
        .filter(|pid| {
            matches!(proc_stat(*pid), Some(('Z', ppid, _)) if ppid == me) && !unreaped.contains(pid)
        })
        .collect()
}

/// The `error_type` of an error report (the JSON text in `"error"`).
pub fn error_type(error: &Value) -> Option<String> {
    let report: Value = serde_json::from_str(error.as_str()?).ok()?;
    report["error_type"].as_str().map(str::to_owned)
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("jobpipe-shutdown-")
        .tempdir()
        .expect("tempdir")
}

/// Fails if any process started with this run's tag is still there.
pub fn assert_nothing_left(tag: &str) {
    let left = tagged_processes(tag);
    assert!(left.is_empty(), "handler processes left behind: {left:?}");
}
