//! What `/proc` says about processes: group members, children of jobpipe,
//! and the descendants of handlers that escaped their process group and
//! were re-parented to jobpipe (as PID 1 or as a child subreaper).

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The fields of `/proc/<pid>/stat` jobpipe needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
}

impl Stat {
    fn read(pid: i32) -> Option<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is in parentheses and may hold anything.
        let rest = &text[text.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let pgrp = fields.next()?.parse().ok()?;
        Some(Stat {
            pid,
            state,
            ppid,
            pgrp,
        })
    }

    fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

fn all() -> impl Iterator<Item = Stat> {
    pids().filter_map(Stat::read)
}

/// True while a live (not zombie) process is in the group.
pub(super) fn group_has_live_member(pgid: i32) -> bool {
    all().any(|p| p.pgrp == pgid && !p.is_dead())
}

/// Children of this process that have exited and wait to be reaped.
pub(super) fn zombie_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    all()
        .filter(|p| p.ppid == me && p.is_dead())
        .map(|p| p.pid)
        .collect()
}

/// Processes owned by this process's real user.
pub(super) fn processes_of_this_user() -> u64 {
    let uid = nix::unistd::getuid().as_raw();
    pids()
        .filter(|pid| std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == uid))
        .count() as u64
}

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

/// Resident memory, in bytes, of every process in the process group
/// `pgid`, summed from /proc (children and grandchildren a handler started
/// count too). Processes that exit while being read are skipped.
pub fn group_resident_memory(pgid: i32) -> u64 {
    all()
        .filter(|p| p.pgrp == pgid)
        .filter_map(|p| resident_memory(p.pid))
        .sum()
}

/// `VmRSS` of one process, in bytes; `None` for a zombie or a process gone.
fn resident_memory(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_of_this_process_group_is_counted() {
        let own_group = nix::unistd::getpgrp().as_raw();
        let resident = group_resident_memory(own_group);
        assert!(resident > 1_000_000, "{resident} bytes");
        assert_eq!(group_resident_memory(i32::MAX), 0);
    }
}
