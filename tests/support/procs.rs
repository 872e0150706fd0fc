//! Processes a test follows through /proc: whether a pid is running,
//! waiting until some are gone, and the pids a fake handler reports.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::run::Run;

/// Whether a process is running. A zombie counts as gone: it has exited and
/// only waits to be reaped, which inside a container whose PID 1 does not
/// reap may never happen.
pub fn running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (COMMAND) STATE ...": the command may itself contain ") ".
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next())
        .unwrap_or("?");
    !matches!(state, "Z" | "X" | "x")
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`: the peak
/// resident memory, `RssFile`: what of it maps files); none once the
/// process is gone.
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A process's resident memory in KiB (0 once it is gone).
pub fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS").unwrap_or(0)
}

/// The peak resident memory of a live process so far (VmHWM), in KiB.
pub fn peak_rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmHWM").unwrap_or(0)
}

/// Waits up to `limit` until none of `pids` is running; returns the ones
/// still running then.
pub fn wait_gone(pids: &[i32], limit: Duration) -> Vec<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| running(p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that none of `pids` is running within `limit`, and kills any
/// survivor so that a failing test leaves nothing behind.
pub fn assert_gone(pids: &[i32], limit: Duration, run: &Run) {
    let left = wait_gone(pids, limit);
    for &pid in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        left.is_empty(),
        "processes {left:?} of the handler were still running {limit:?} after jobpipe exited\n{}",
        run.describe()
    );
}

/// The pid a fake handler job wrote to its pidfile.
pub fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("handler wrote no pidfile {}: {e}", path.display()))
        .trim()
        .parse()
        .expect("pidfile holds a pid")
}

/// An integer field of a JSON value as a pid.
pub fn pid_of(value: &Value, key: &str) -> i32 {
    value[key]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid {key:?} in {value}")) as i32
}
