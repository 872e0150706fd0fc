//! Every OS call about processes lives here: spawning a handler in its own
//! process group and stopping a whole group (this file), waiting for
//! children ([`reaper`]), what `/proc` says about processes and the killing
//! of escaped descendants ([`procfs`]), and the checks made at start
//! ([`checks`]).

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::oneshot;

mod checks;
mod escaped;
mod procfs;
mod reaper;

pub use checks::{
    check_executable, check_handler_limits, make_non_dumpable, ExecutableError, LimitError,
    MAX_HANDLERS,
};
/// Secrets of jobpipe's own that a child process (a handler, a fitness
/// check) does not get unless asked.
pub const SECRETS: &[&str] = &["RUNPOD_AI_API_KEY", "JOBPIPE_API_KEY"];

pub use escaped::kill_escaped;
pub use procfs::group_resident_memory;
pub use reaper::{init_reaper, release};

/// Allocations from this size up get their own mapping (see
/// [`tune_allocator`]).
const OWN_MAPPING_FROM: i32 = 256 * 1024;

/// Makes the C allocator give every large buffer (a job's payload, a
/// handler's answer) its own memory mapping, returned to the system when it
/// is freed and grown in place (`mremap`) rather than copied. glibc's
/// default raises this threshold to the largest buffer freed so far, so
/// after one large job the next ones come from the heap: growing a buffer
/// then copies it, and the freed memory stays with the process.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tunable of the allocator; it is called
    // first thing in main, before any other thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, OWN_MAPPING_FROM);
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exited with code {code}"),
            ExitStatus::Signal(sig) => {
                let name = Signal::try_from(*sig)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown");
                write!(f, "was killed by signal {sig} ({name})")
            }
        }
    }
}

/// A spawned child: its pipes and the future of its exit status.
pub struct Spawned {
    pub pid: i32,
    pub stdin: std::process::ChildStdin,
    pub stdout: std::process::ChildStdout,
    pub stderr: std::process::ChildStderr,
    pub exit: oneshot::Receiver<ExitStatus>,
}

/// What a handler process is started with.
pub struct SpawnSpec<'a> {
    pub argv: &'a [String],
    pub env_remove: &'a [&'a str],
    pub env_add: &'a [(&'a str, String)],
}

/// Spawns a handler in its own process group with pipes on stdin, stdout
/// and stderr, and a parent-death signal so it cannot outlive jobpipe.
pub fn spawn(spec: &SpawnSpec<'_>) -> std::io::Result<Spawned> {
    init_reaper();
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for name in spec.env_remove {
        cmd.env_remove(name);
    }
    for (name, value) in spec.env_add {
        cmd.env(name, value);
    }
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls (prctl, getppid).
    unsafe {
        let parent = nix::unistd::getpid();
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // jobpipe may have died between fork and prctl.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
    let mut handlers = reaper::HANDLERS.lock().unwrap_or_else(|p| p.into_inner());
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    let rx = reaper::register(&mut handlers, pid);
    drop(handlers);
    Ok(Spawned {
        pid,
        stdin: child.stdin.take().expect("piped"),
        stdout: child.stdout.take().expect("piped"),
        stderr: child.stderr.take().expect("piped"),
        exit: rx,
    })
}

/// Sends a signal to every process in a group; a group that is already
/// gone is not an error. The group of a handler may be signalled until the
/// handler is [`release`]d: until then its leader's pid is not reused.
pub fn signal_group(pgid: i32, signal: Signal) {
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!("cannot send {signal} to process group {pgid}: {e}"),
    }
}

/// True while a live process (not a zombie) is in the group. The group
/// of an unreleased handler always holds at least its leader, alive or a
/// zombie, so only `/proc` can tell whether anything else is left.
pub fn group_alive(pgid: i32) -> bool {
    if let Err(Errno::ESRCH) = killpg(Pid::from_raw(pgid), None) {
        return false;
    }
    procfs::group_has_live_member(pgid)
}

/// Waits, checking every few milliseconds, until a process group is empty or
/// `limit` has passed. Returns whether it emptied.
pub async fn wait_group_gone(pgid: i32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if !group_alive(pgid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        // Each check reads /proc, so it is not made more often.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_reads_like_a_sentence() {
        assert_eq!(ExitStatus::Code(3).to_string(), "exited with code 3");
        assert_eq!(
            ExitStatus::Signal(9).to_string(),
            "was killed by signal 9 (SIGKILL)"
        );
    }
}
