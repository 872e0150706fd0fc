//! One running handler process and its I/O.
//!
//! Reading and writing happen in small tasks of their own so the actor that
//! owns the process never blocks: a handler that stops reading its stdin
//! cannot stall the supervisor, and a flood of stderr cannot delay a result.
//! Stopping follows one procedure for every reason: close stdin, SIGTERM to
//! the whole process group, wait the grace period, SIGKILL the group, and
//! wait until no process of the group is left.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use nix::sys::signal::Signal;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::lines::{clip_middle, read_line, read_line_or_cut, read_line_spilling, skip_line, Line};
use super::spill::Spill;
use crate::handler::config::{HandlerConfig, Mode};
use crate::os::{self, ExitStatus, SpawnSpec, SECRETS};

/// How many stderr lines, and bytes, an error report quotes.
const TAIL_LINES: usize = 20;
const TAIL_BYTES: usize = 4096;
/// How long a process may take to exit after SIGKILL before it is left
/// behind (a process in uninterruptible sleep cannot be killed).
const EXIT_AFTER_KILL: Duration = Duration::from_secs(5);
/// How long the rest of a group may take to go after SIGKILL.
const GROUP_GONE_AFTER_KILL: Duration = Duration::from_secs(2);
/// Longest stderr or stdout line that is logged whole.
pub(super) const LOG_LINE_MAX: usize = 4096;

/// A running handler process.
pub struct HandlerProcess {
    pub pid: i32,
    stdin: Option<mpsc::UnboundedSender<Bytes>>,
    writer: JoinHandle<()>,
    /// Lines from stdout; closed when stdout reaches end of file.
    pub stdout: mpsc::Receiver<Line>,
    /// The process's exit, awaited separately from stdout.
    pub exit: ExitWatch,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr_task: JoinHandle<()>,
    /// The job ids stderr lines are tagged with.
    jobs: watch::Sender<String>,
}

impl HandlerProcess {
    /// Starts the handler. `job` (its id and scratch directory) is set in
    /// one-shot mode.
    pub fn spawn(
        config: &HandlerConfig,
        worker_id: &str,
        job: Option<(&str, Option<&std::path::Path>)>,
    ) -> std::io::Result<Self> {
        let mut env_add = vec![("JOBPIPE_WORKER_ID", worker_id.to_owned())];
        let job_id = job.map(|(id, _)| id);
        if let Some(id) = job_id {
            env_add.push(("JOBPIPE_JOB_ID", id.to_owned()));
        }
        if let Some((_, Some(dir))) = job {
            env_add.push(("JOBPIPE_JOB_DIR", dir.display().to_string()));
        }
        let env_remove: &[&str] = if config.pass_secrets { &[] } else { SECRETS };
        let spawned = os::spawn(&SpawnSpec {
            argv: &config.argv,
            env_remove,
            env_add: &env_add,
        })?;
        let stdin = pipe::Sender::from_owned_fd(OwnedFd::from(spawned.stdin))?;
        let stdout = pipe::Receiver::from_owned_fd(OwnedFd::from(spawned.stdout))?;
        let stderr = pipe::Receiver::from_owned_fd(OwnedFd::from(spawned.stderr))?;
        let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
        let (stdout_tx, stdout_rx) = mpsc::channel(64);
        let (jobs, jobs_rx) = watch::channel(job_id.unwrap_or_default().to_owned());
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let pid = spawned.pid;
        // A line may be a whole result, so the cap is the output limit plus
        // room for the envelope around it.
        let cap = config.max_output_size.saturating_add(64 * 1024);
        // A one-shot handler's whole stdout is its answer, kept in memory.
        let spill = config
            .spill
            .clone()
            .filter(|_| config.mode != Mode::Oneshot);
        tokio::spawn(read_stdout(stdout, stdout_tx, cap, spill));
        Ok(HandlerProcess {
            pid,
            stdin: Some(stdin_tx),
            writer: tokio::spawn(write_lines(stdin, stdin_rx)),
            stdout: stdout_rx,
            exit: ExitWatch {
                rx: spawned.exit,
                status: None,
            },
            tail: tail.clone(),
            stderr_task: tokio::spawn(read_stderr(stderr, tail, jobs_rx, pid)),
            jobs,
        })
    }

    /// Queues one line for the handler's stdin.
    /// Queues one line (without its newline) for the handler's stdin.
    pub fn send(&self, line: Bytes) {
        if let Some(stdin) = &self.stdin {
            let _ = stdin.send(line);
        }
    }

    /// Closes stdin once queued lines are written: end of input.
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Tags the handler's stderr lines with these job ids from now on.
    pub fn set_jobs(&self, ids: String) {
        self.jobs.send_replace(ids);
    }

    /// Resolves when the process has exited. Cancel-safe.
    pub async fn exited(&mut self) -> ExitStatus {
        self.exit.wait().await
    }

    /// The last lines the handler wrote to stderr. Once the process has
    /// exited, waits a moment for the rest of its stderr to arrive.
    pub async fn stderr_tail(&mut self) -> String {
        if self.exit.status.is_some() {
            let _ = tokio::time::timeout(Duration::from_millis(200), &mut self.stderr_task).await;
        }
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Stops the process and everything in its group; see the module docs.
    /// A forced shutdown (`force` cancelled) cuts the grace period short.
    /// Returns how the handler itself ended.
    pub async fn stop(mut self, grace: Duration, force: &CancellationToken) -> ExitStatus {
        self.close_stdin();
        self.writer.abort();
        let pgid = self.pid;
        os::signal_group(pgid, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        let graceful = async {
            tokio::time::timeout_at(deadline, self.exit.wait())
                .await
                .is_ok()
                && os::wait_group_gone(
                    pgid,
                    deadline.saturating_duration_since(tokio::time::Instant::now()),
                )
                .await
        };
        let gone = tokio::select! {
            gone = graceful => gone,
            _ = force.cancelled() => false,
        };
        if !gone {
            tracing::debug!(pid = pgid, "handler group still running; sending SIGKILL");
            os::signal_group(pgid, Signal::SIGKILL);
        }
        self.finish(pgid).await
    }

    /// Kills the process group at once (forced shutdown).
    pub async fn kill(mut self) -> ExitStatus {
        self.close_stdin();
        self.writer.abort();
        os::signal_group(self.pid, Signal::SIGKILL);
        let pgid = self.pid;
        self.finish(pgid).await
    }

    async fn finish(mut self, pgid: i32) -> ExitStatus {
        // A process in uninterruptible sleep ignores even SIGKILL for as long
        // as it sleeps; jobpipe does not wait for it forever.
        let status = match tokio::time::timeout(EXIT_AFTER_KILL, self.exited()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(
                    pid = pgid,
                    "handler process has not exited {}s after SIGKILL (uninterruptible sleep?); leaving it behind",
                    EXIT_AFTER_KILL.as_secs()
                );
                ExitStatus::Signal(Signal::SIGKILL as i32)
            }
        };
        // Members of the group that outlived the leader get the same end.
        if os::group_alive(pgid) {
            os::signal_group(pgid, Signal::SIGKILL);
        }
        if !os::wait_group_gone(pgid, GROUP_GONE_AFTER_KILL).await {
            tracing::warn!(
                pgid,
                "processes of the handler's group are still present after SIGKILL"
            );
        }
        status
    }
}

impl Drop for HandlerProcess {
    fn drop(&mut self) {
        self.writer.abort();
        if self.exit.status.is_none() {
            // Dropped without a stop: make sure nothing of it survives.
            os::signal_group(self.pid, Signal::SIGKILL);
        }
        // No signal goes to this group from now on, so its leader's pid may
        // be reaped and reused.
        os::release(self.pid);
    }
}

/// The exit status of a process, once known.
pub struct ExitWatch {
    rx: oneshot::Receiver<ExitStatus>,
    status: Option<ExitStatus>,
}

impl ExitWatch {
    /// Resolves when the process has exited. Cancel-safe.
    pub async fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        // The reaper never drops a waiter without sending; a lost one is
        // treated as a kill.
        let status = (&mut self.rx).await.unwrap_or(ExitStatus::Signal(9));
        self.status = Some(status);
        status
    }
}

async fn write_lines(mut stdin: pipe::Sender, mut lines: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(line) = lines.recv().await {
        // The line and its newline go out in one vectored write, and the
        // line is not copied to append the newline.
        let mut out = line.chain(&b"\n"[..]);
        if let Err(e) = stdin.write_all_buf(&mut out).await {
            tracing::debug!("handler stdin closed: {e}");
            return;
        }
    }
}

async fn read_stdout(
    stdout: pipe::Receiver,
    lines: mpsc::Sender<Line>,
    cap: usize,
    spill: Option<Spill>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    loop {
        let line = match &spill {
            Some(spill) => read_line_spilling(&mut reader, cap, spill).await,
            None => read_line_or_cut(&mut reader, cap).await,
        };
        match line {
            Ok(Some(line)) => {
                let cut = matches!(line, Line::TooLong { .. } | Line::Unspilled { .. });
                if lines.send(line).await.is_err() {
                    return;
                }
                // The job has already failed; the rest of the line goes
                // (the handler is being replaced meanwhile).
                if cut && skip_line(&mut reader).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("reading handler stdout failed: {e}");
                return;
            }
        }
    }
}

async fn read_stderr(
    stderr: pipe::Receiver,
    tail: Arc<Mutex<VecDeque<String>>>,
    jobs: watch::Receiver<String>,
    pid: i32,
) {
    let mut reader = BufReader::new(stderr);
    loop {
        let text = match read_line(&mut reader, LOG_LINE_MAX).await {
            Ok(Some(Line::Whole(bytes))) => String::from_utf8_lossy(&bytes).into_owned(),
            Ok(Some(Line::TooLong { len, prefix })) => {
                clip_middle(&String::from_utf8_lossy(&prefix), LOG_LINE_MAX)
                    + &format!(" …({len} bytes in all)")
            }
            // read_line does not spill.
            Ok(Some(Line::Spilled { len, .. } | Line::Unspilled { len, .. })) => {
                format!("({len} bytes)")
            }
            Ok(None) | Err(_) => return,
        };
        let job_id = jobs.borrow().clone();
        if job_id.is_empty() {
            tracing::info!(handler_pid = pid, "{text}");
        } else {
            tracing::info!(handler_pid = pid, job_id, "{text}");
        }
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.push_back(clip_middle(&text, TAIL_BYTES / 4));
        while tail.len() > TAIL_LINES || tail.iter().map(String::len).sum::<usize>() > TAIL_BYTES {
            tail.pop_front();
        }
    }
}
