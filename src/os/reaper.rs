//! The reaper: the one place that waits for child processes.
//!
//! jobpipe reaps its children itself instead of letting a runtime do it,
//! because as PID 1 (or as a child subreaper) it also inherits orphaned
//! grandchildren, which only a wait on any child can reap. One thread owns
//! all waiting: it wakes on SIGCHLD and hands the exit status of a handler
//! to whoever spawned it.
//!
//! A handler is the leader of its process group, and the group is
//! signalled by its id. Were the leader reaped at once, its pid could be
//! given to an unrelated process before the group is signalled for the last
//! time. So an exited handler is only *seen* (`waitid` with `WNOWAIT`) and
//! stays a zombie, holding its pid, until its owner [`release`]s it after
//! the last signal to its group. Orphans are reaped at once.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use super::{procfs, ExitStatus};

/// A handler process spawned by jobpipe whose pid is not released yet.
pub(super) struct Handler {
    /// Who wants the exit status; taken when it is sent.
    waiter: Option<oneshot::Sender<ExitStatus>>,
    /// Exited and seen, but not reaped: a zombie that holds its pid.
    exited: bool,
}

/// Handler processes by pid. Spawning holds this lock too, so a child that
/// dies at once is never seen before it is registered, and the standard
/// library's own wait after a failed `exec` never races the reaper.
pub(super) static HANDLERS: Mutex<Option<HashMap<i32, Handler>>> = Mutex::new(None);
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

/// Registers a just-spawned handler; the caller holds the [`HANDLERS`] lock.
pub(super) fn register(
    handlers: &mut Option<HashMap<i32, Handler>>,
    pid: i32,
) -> oneshot::Receiver<ExitStatus> {
    let (tx, rx) = oneshot::channel();
    let handler = Handler {
        waiter: Some(tx),
        exited: false,
    };
    handlers
        .get_or_insert_with(HashMap::new)
        .insert(pid, handler);
    rx
}

/// The owner of a handler is done with its process group: the zombie, if it
/// has exited, is reaped now, and otherwise when it exits.
pub fn release(pid: i32) {
    {
        let mut handlers = HANDLERS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(handler) = handlers.as_mut().and_then(|h| h.remove(&pid)) {
            if handler.exited {
                let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
            }
        }
    }
    // Orphans that exited behind the zombie are reaped now.
    reap_all();
}

/// True if `pid` is a handler not yet released.
pub(super) fn is_handler(pid: i32) -> bool {
    let handlers = HANDLERS.lock().unwrap_or_else(|p| p.into_inner());
    handlers.as_ref().is_some_and(|h| h.contains_key(&pid))
}

fn reap_all() {
    let mut guard = HANDLERS.lock().unwrap_or_else(|p| p.into_inner());
    let handlers = guard.get_or_insert_with(HashMap::new);
    see_exited_handlers(handlers);
    reap_orphans(handlers);
}

/// Sends the exit status of every handler that has exited, leaving it a
/// zombie until it is released.
fn see_exited_handlers(handlers: &mut HashMap<i32, Handler>) {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    for (pid, handler) in handlers.iter_mut().filter(|(_, h)| !h.exited) {
        let status = match waitid(Id::Pid(Pid::from_raw(*pid)), flags) {
            Ok(WaitStatus::Exited(_, code)) => ExitStatus::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => ExitStatus::Signal(sig as i32),
            _ => continue,
        };
        handler.exited = true;
        if let Some(waiter) = handler.waiter.take() {
            let _ = waiter.send(status);
        }
    }
}

/// Reaps every exited child that is not an unreleased handler.
fn reap_orphans(handlers: &HashMap<i32, Handler>) {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        let pid = match waitid(Id::All, flags) {
            Ok(status) => match status.pid() {
                Some(pid) => pid,
                None => return,
            },
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => return,
            Err(e) => {
                tracing::warn!("waitid failed: {e}");
                return;
            }
        };
        if handlers.contains_key(&pid.as_raw()) {
            // A held zombie comes first in the kernel's list and would come
            // first again: find the other exited children by name.
            reap_listed_zombies(handlers);
            return;
        }
        reap(pid);
    }
}

fn reap_listed_zombies(handlers: &HashMap<i32, Handler>) {
    for pid in procfs::zombie_children() {
        if !handlers.contains_key(&pid) {
            reap(Pid::from_raw(pid));
        }
    }
}

fn reap(pid: Pid) {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => {
            tracing::debug!("reaped orphaned process {pid} ({})", ExitStatus::Code(code))
        }
        Ok(WaitStatus::Signaled(_, sig, _)) => tracing::debug!(
            "reaped orphaned process {pid} ({})",
            ExitStatus::Signal(sig as i32)
        ),
        _ => {}
    }
}
