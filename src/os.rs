//! Every OS call about processes lives here: spawning a handler in its own
//! process group, stopping a whole group, and reaping.
//!
//! jobpipe reaps its children itself instead of letting a runtime do it,
//! because as PID 1 (or as a child subreaper) it also inherits orphaned
//! grandchildren, which only a `waitpid(-1)` loop can reap. One reaper thread
//! per process owns all waiting: it wakes on SIGCHLD, reaps everything that
//! has exited, and hands the exit status of a handler to whoever spawned it.
//! Spawning holds the same lock as reaping, so a child that dies at once is
//! never reaped before its waiter is registered, and the standard library's
//! own wait after a failed `exec` never races the reaper.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

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

/// Waiters for the exit status of our own children, keyed by pid.
static WAITERS: Mutex<Option<HashMap<i32, oneshot::Sender<ExitStatus>>>> = Mutex::new(None);
static REAPER: OnceLock<()> = OnceLock::new();

/// Starts the process-wide reaper thread (once) and, unless this process is
/// PID 1, makes it a child subreaper so orphans of handlers come to it.
pub fn init_reaper() {
    REAPER.get_or_init(|| {
        if std::process::id() != 1 {
            if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                tracing::warn!("cannot become a child subreaper ({e}); orphaned handler processes will be reaped by init instead");
            }
        }
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGCHLD])
            .expect("SIGCHLD handler can be installed");
        std::thread::Builder::new()
            .name("jobpipe-reaper".into())
            .spawn(move || {
                reap_all();
                for _ in signals.forever() {
                    reap_all();
                }
            })
            .expect("reaper thread starts");
    });
}

fn reap_all() {
    let mut waiters = WAITERS.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signal(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("waitpid failed: {e}");
                return;
            }
        };
        let (pid, status) = status;
        match waiters.as_mut().and_then(|w| w.remove(&pid.as_raw())) {
            Some(waiter) => {
                let _ = waiter.send(status);
            }
            None => tracing::debug!("reaped orphaned process {pid} ({status})"),
        }
    }
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
    let mut waiters = WAITERS.lock().unwrap_or_else(|p| p.into_inner());
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    let (tx, rx) = oneshot::channel();
    waiters.get_or_insert_with(HashMap::new).insert(pid, tx);
    drop(waiters);
    Ok(Spawned {
        pid,
        stdin: child.stdin.take().expect("piped"),
        stdout: child.stdout.take().expect("piped"),
        stderr: child.stderr.take().expect("piped"),
        exit: rx,
    })
}

/// Sends a signal to every process in a group; a group that is already
/// gone is not an error.
pub fn signal_group(pgid: i32, signal: Signal) {
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!("cannot send {signal} to process group {pgid}: {e}"),
    }
}

/// True while any process (zombies included) is in the group.
pub fn group_alive(pgid: i32) -> bool {
    !matches!(killpg(Pid::from_raw(pgid), None), Err(Errno::ESRCH))
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
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Finds the program the way `execvp` will and checks that it can be run,
/// so that a missing handler is reported at once, by name.
pub fn check_executable(program: &str) -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .collect()
    };
    let mut found_unusable = None;
    for candidate in candidates {
        match usable(&candidate) {
            Ok(()) => return check_interpreter(&candidate).map(|()| candidate),
            Err(Some(problem)) => found_unusable = Some(problem),
            Err(None) => {}
        }
    }
    Err(found_unusable.unwrap_or_else(|| {
        if program.contains('/') {
            "does not exist".into()
        } else {
            "was not found on PATH".into()
        }
    }))
}

/// Checks the interpreter a script names in its `#!` line, since a missing
/// one makes `exec` fail with a "no such file" that names the script.
fn check_interpreter(script: &Path) -> Result<(), String> {
    let Some(line) = shebang(script) else {
        return Ok(());
    };
    let mut words = line.split_whitespace();
    let Some(interpreter) = words.next() else {
        return Err("has an empty #! line".into());
    };
    if !Path::new(interpreter).exists() {
        return Err(format!(
            "names the interpreter {interpreter} in its #! line, which does not exist; fix the #! line or install it"
        ));
    }
    let program = words.next().filter(|w| !w.starts_with('-'));
    if let (Some("env"), Some(program)) = (
        Path::new(interpreter).file_name().and_then(|n| n.to_str()),
        program,
    ) {
        if !program.contains('/') && check_executable_on_path(program).is_none() {
            return Err(format!(
                "runs `{line}` in its #! line, but {program} was not found on PATH; fix the #! line or install {program}"
            ));
        }
    }
    Ok(())
}

/// The text after `#!` on the first line of a file, if it starts so.
fn shebang(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let mut file = std::fs::File::open(path).ok()?;
    let n = file.read(&mut head).ok()?;
    let head = head[..n].strip_prefix(b"#!")?;
    let end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    Some(String::from_utf8_lossy(&head[..end]).trim().to_owned())
}

fn check_executable_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| usable(candidate).is_ok())
}

/// `Err(None)`: nothing there; `Err(Some(why))`: there but unusable.
fn usable(path: &Path) -> Result<(), Option<String>> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(None),
        Err(e) => return Err(Some(format!("cannot be read: {e}"))),
    };
    if meta.is_dir() {
        return Err(Some("is a directory, not a program".into()));
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).map_err(|_| {
        Some(format!(
            "is not executable (chmod +x {}, or run it through its interpreter)",
            path.display()
        ))
    })
}

/// Most handler processes one worker runs, whatever the machine allows.
pub const MAX_HANDLERS: usize = 1024;
/// File descriptors jobpipe holds for one handler process: its three pipes
/// and room for the three more a start or a restart holds for a moment.
const FDS_PER_HANDLER: u64 = 6;
/// File descriptors kept for jobpipe itself: connections, logs, the spool.
const FDS_RESERVED: u64 = 256;

/// Checks that `handlers` handler processes fit the machine's limits, after
/// raising the open-file limit to its hard limit; the error says which limit
/// is too low.
pub fn check_handler_limits(handlers: usize) -> Result<(), String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    if handlers > MAX_HANDLERS {
        return Err(format!(
            "--concurrency {handlers} is more than {MAX_HANDLERS} handler processes; run more workers instead"
        ));
    }
    let wanted = FDS_RESERVED + handlers as u64 * FDS_PER_HANDLER;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let mut files = soft;
        if soft < wanted && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            files = hard;
        }
        if files != RLIM_INFINITY && files < wanted {
            return Err(format!(
                "--concurrency {handlers} needs about {wanted} open files but the limit (ulimit -n) is {files}; lower --concurrency or raise the limit"
            ));
        }
    }
    if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NPROC) {
        let root = nix::unistd::getuid().is_root();
        if soft != RLIM_INFINITY && !root {
            let running = processes_of_this_user();
            if running + handlers as u64 > soft {
                return Err(format!(
                    "--concurrency {handlers} needs {handlers} more processes but this user runs {running} of at most {soft} (ulimit -u); lower --concurrency or raise the limit"
                ));
            }
        }
    }
    Ok(())
}

/// Processes owned by this process's real user.
fn processes_of_this_user() -> u64 {
    use std::os::unix::fs::MetadataExt;
    let uid = nix::unistd::getuid().as_raw();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
        .count() as u64
}

/// Makes this process non-dumpable: no core dump, and its `/proc` files
/// (environment, memory) are readable only by a process with
/// `CAP_SYS_PTRACE`, not by every process of the same user such as a
/// handler. Handlers themselves are dumpable again after `exec`.
pub fn make_non_dumpable() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("cannot make jobpipe non-dumpable ({e}); processes of the same user can read its environment");
    }
}

/// Resident memory, in bytes, of every process in the process group
/// `pgid`, summed from /proc (children and grandchildren a handler started
/// count too). Processes that exit while being read are skipped.
pub fn group_resident_memory(pgid: i32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| process_group_of(pid) == Some(pgid))
        .filter_map(resident_memory)
        .sum()
}

/// The process group of `pid`, from /proc/PID/stat.
fn process_group_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMMAND) STATE PPID PGRP ...": the command may contain ") ".
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
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
    fn absurd_handler_counts_are_refused() {
        let err = check_handler_limits(100_000).unwrap_err();
        assert!(err.contains("more than 1024"), "{err}");
        assert!(check_handler_limits(2).is_ok());
    }

    #[test]
    fn missing_and_non_executable_programs_are_named() {
        assert_eq!(
            check_executable("no-such-program-jobpipe").unwrap_err(),
            "was not found on PATH"
        );
        assert_eq!(
            check_executable("/no/such/file").unwrap_err(),
            "does not exist"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.sh");
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        let err = check_executable(file.to_str().unwrap()).unwrap_err();
        assert!(err.contains("not executable"), "{err}");
        assert!(check_executable("sh").is_ok());
    }

    #[test]
    fn a_missing_interpreter_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, first_line: &str| {
            let file = dir.path().join(name);
            std::fs::write(&file, format!("{first_line}\necho hi\n")).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
            file.display().to_string()
        };
        let err = check_executable(&script("a", "#!/usr/bin/python9")).unwrap_err();
        assert!(err.contains("interpreter /usr/bin/python9"), "{err}");
        let err = check_executable(&script("b", "#!/usr/bin/env python9 -u")).unwrap_err();
        assert!(err.contains("python9 was not found on PATH"), "{err}");
        assert!(check_executable(&script("c", "#!/bin/sh")).is_ok());
        assert!(check_executable(&script("d", "#!/usr/bin/env -S sh -e")).is_ok());
    }

    #[test]
    fn resident_memory_of_this_process_group_is_counted() {
        let own_group = nix::unistd::getpgrp().as_raw();
        let resident = group_resident_memory(own_group);
        assert!(resident > 1_000_000, "{resident} bytes");
        assert_eq!(group_resident_memory(i32::MAX), 0);
    }

    #[test]
    fn exit_status_reads_like_a_sentence() {
        assert_eq!(ExitStatus::Code(3).to_string(), "exited with code 3");
        assert_eq!(
            ExitStatus::Signal(9).to_string(),
            "was killed by signal 9 (SIGKILL)"
        );
    }
}
