//! The descendants of handlers that escaped their process group and were
//! re-parented to jobpipe (as PID 1 or as a child subreaper): found in
//! `/proc` by the worker's marker in their environment, and killed.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::procfs::{all, Stat};

/// Live children of this process that descend from a handler of this
/// worker (they carry `marker`, the handler's `JOBPIPE_WORKER_ID=…`, in
/// their environment) but are not a handler jobpipe started: escaped
/// descendants re-parented to jobpipe.
fn escaped(marker: &[u8]) -> Vec<Stat> {
    let me = std::process::id() as i32;
    all()
        .filter(|p| p.ppid == me && !p.is_dead() && !super::reaper::is_handler(p.pid))
        .filter(|p| carries(p.pid, marker))
        .collect()
}

fn carries(pid: i32, marker: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == marker))
}

/// Kills the escaped descendants of this worker's handlers, with their
/// process groups, round after round as their own children are re-parented
/// in turn, for at most `limit`. Returns how many were killed.
pub async fn kill_escaped(worker_id: &str, limit: Duration) -> usize {
    let marker: Arc<[u8]> = format!("JOBPIPE_WORKER_ID={worker_id}").into_bytes().into();
    let deadline = tokio::time::Instant::now() + limit;
    let mut killed = std::collections::HashSet::new();
    loop {
        let Ok(found) = tokio::time::timeout_at(deadline, scan_escaped(marker.clone())).await
        else {
            tracing::warn!(
                "looking for processes left behind by handlers took longer than {}s (a process stuck in the kernel?); given up",
                limit.as_secs_f64()
            );
            return killed.len();
        };
        if found.is_empty() || tokio::time::Instant::now() >= deadline {
            return killed.len();
        }
        for process in found.iter().filter(|p| killed.insert(p.pid)) {
            tracing::info!(
                "killing process {} left behind by a handler (it escaped the handler's process group)",
                process.pid
            );
            if process.pgrp == process.pid {
                super::signal_group(process.pgrp, Signal::SIGKILL);
            }
            let _ = kill(Pid::from_raw(process.pid), Signal::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`escaped`] on a thread of its own. Reading another process's
/// environment waits for that process's memory-map lock, which a process
/// stuck in the kernel can hold for good; neither a runtime thread nor
/// jobpipe's exit (which waits for tokio's blocking pool) may wait with it.
async fn scan_escaped(marker: Arc<[u8]>) -> Vec<Stat> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let scan = marker.clone();
    let spawned = std::thread::Builder::new()
        .name("jobpipe-procfs".into())
        .spawn(move || {
            let _ = tx.send(escaped(&scan));
        });
    match spawned {
        Ok(_) => rx.await.unwrap_or_default(),
        // No thread to be had: look on this one rather than not at all.
        Err(_) => escaped(&marker),
    }
}
