//! What `/proc` says about processes: group members, children of jobpipe,
//! their states and memory. Reading only: what is done about them lives in
//! [`super::reaper`] and [`super::escaped`].

use std::os::unix::fs::MetadataExt;

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

    pub(super) fn is_dead(&self) -> bool {
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

pub(super) fn all() -> impl Iterator<Item = Stat> {
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
