//! The one way the black-box tests start the jobpipe binary: a process in
//! the background, set up with a builder ([`daemon`]) and watched through a
//! [`Daemon`].
//!
//! - Environment: every inherited variable whose name starts with
//!   `JOBPIPE_` or `RUNPOD_` is removed (and `PGPASSWORD`), so that a
//!   developer's own settings cannot change what is tested; then the test's
//!   own variables are set.
//! - Working directory: a fresh empty one of its own unless the test gives
//!   one.
//! - Output: stdout goes to a file; stderr is copied by a thread into a file
//!   with each line prefixed by the seconds since the start (`[  1.234] `).
//!   [`Daemon::log`] reads it with the times, [`Daemon::stderr`] without.
//! - Control: signals (to the process, or to its process group when it has
//!   one of its own), polling, and waits with a deadline that kill the
//!   process and fail the test with its log on overrun.
//! - Drop: SIGCONT and SIGKILL to whatever is still running (the process
//!   group too, if it has its own), the child reaped, and the log printed
//!   when the test is panicking.
//!
//! The run-to-completion helper of `support::run` is built on this.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// The jobpipe binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_jobpipe")
}

/// Whether an inherited variable is taken away from every process the
/// tests start: jobpipe's and RunPod's settings, and the PostgreSQL
/// password a developer may have exported.
pub fn is_cleared(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with("JOBPIPE_") || name.starts_with("RUNPOD_") || name == "PGPASSWORD"
}

/// Removes from `cmd` every inherited variable that [`is_cleared`].
pub fn clear_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if is_cleared(&name) {
            cmd.env_remove(&name);
        }
    }
}

/// Pids of children started through this module and not reaped yet: a
/// zombie among them is a child its test has not waited for yet.
static UNREAPED: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn unreaped_lock() -> MutexGuard<'static, Vec<i32>> {
    UNREAPED.lock().unwrap_or_else(|p| p.into_inner())
}

/// The children started here that are not reaped yet.
pub fn unreaped() -> Vec<i32> {
    unreaped_lock().clone()
}

/// A background process being set up; see [`daemon`].
pub struct Builder {
    name: String,
    program: OsString,
    wrapper: Vec<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    remove: Vec<OsString>,
    clear_all: bool,
    cwd: Option<PathBuf>,
    stdin: Option<PathBuf>,
    own_group: bool,
    stderr_unread: bool,
    dir: tempfile::TempDir,
}

/// Starts setting up a jobpipe process in the background.
pub fn daemon() -> Builder {
    Builder {
        name: "jobpipe".to_owned(),
        program: binary().into(),
        wrapper: Vec::new(),
        args: Vec::new(),
        env: Vec::new(),
        remove: Vec::new(),
        clear_all: false,
        cwd: None,
        stdin: None,
        own_group: false,
        stderr_unread: false,
        dir: tempfile::Builder::new()
            .prefix("jobpipe-test-")
            .tempdir()
            .expect("a temporary directory"),
    }
}

impl Builder {
    /// A fresh directory of this process, removed when its [`Daemon`] is
    /// dropped: its working directory unless [`Builder::cwd`] names
    /// another, and where its stdout and stderr files are kept.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A name for messages (and the printed log), when a test runs several.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// Runs `program` in place of the jobpipe binary under test (another
    /// build of it, or another worker to compare it with).
    pub fn program(mut self, program: impl AsRef<OsStr>) -> Self {
        self.program = program.as_ref().to_owned();
        self
    }

    /// Runs the program under `argv` (`unshare --pid … jobpipe ARGS`).
    pub fn wrapper<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.wrapper = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets a variable (after the inherited ones were cleared).
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (name, value) in vars {
            self = self.env(name, value);
        }
        self
    }

    /// Removes one more inherited variable.
    pub fn env_remove(mut self, name: impl AsRef<OsStr>) -> Self {
        self.remove.push(name.as_ref().to_owned());
        self
    }

    /// Inherits no variable at all; only those the test sets.
    pub fn env_clear(mut self) -> Self {
        self.clear_all = true;
        self
    }

    /// The working directory (a fresh empty one otherwise).
    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Reads stdin from this file (nothing otherwise: stdin is /dev/null).
    pub fn stdin_file(mut self, path: impl AsRef<Path>) -> Self {
        self.stdin = Some(path.as_ref().to_owned());
        self
    }

    /// Starts the process in a process group of its own: signals can go to
    /// the whole group, and the drop kills the whole group.
    pub fn own_process_group(mut self) -> Self {
        self.own_group = true;
        self
    }

    /// Leaves stderr a pipe that nobody reads (for a test of a stalled
    /// stderr); nothing is logged then.
    pub fn stderr_unread(mut self) -> Self {
        self.stderr_unread = true;
        self
    }

    /// Starts the process; a test fails if it cannot be started.
    #[track_caller]
    pub fn start(self) -> Daemon {
        let what = self.program.clone();
        self.try_start()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", what.to_string_lossy()))
    }

    /// Starts the process, or says why it could not be started.
    pub fn try_start(self) -> std::io::Result<Daemon> {
        let dir = self.dir;
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr.log");
        let mut argv = self.wrapper.clone();
        argv.push(self.program.clone());
        argv.extend(self.args.iter().cloned());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(self.cwd.as_deref().unwrap_or(dir.path()))
            .stdin(match &self.stdin {
                Some(path) => Stdio::from(File::open(path)?),
                None => Stdio::null(),
            })
            .stdout(File::create(&stdout)?)
            .stderr(Stdio::piped());
        if self.clear_all {
            cmd.env_clear();
        } else {
            clear_env(&mut cmd);
        }
        for name in &self.remove {
            cmd.env_remove(name);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if self.own_group {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        // The pid is noted before anyone can see the child as a zombie.
        let mut unreaped = unreaped_lock();
        let mut child = cmd.spawn()?;
        let pid = child.id() as i32;
        unreaped.push(pid);
        drop(unreaped);
        let started = Instant::now();
        let pipe = child.stderr.take().expect("piped stderr");
        let (held_stderr, copied) = if self.stderr_unread {
            File::create(&stderr)?;
            let (done, copied) = mpsc::channel();
            let _ = done.send(());
            (Some(pipe), copied)
        } else {
            (None, copy_stderr(pipe, File::create(&stderr)?, started))
        };
        Ok(Daemon {
            name: self.name,
            argv,
            child,
            pid,
            own_group: self.own_group,
            started,
            status: None,
            exited_at: None,
            stdout,
            stderr,
            copied,
            _held_stderr: held_stderr,
            _dir: dir,
        })
    }
}

/// Copies stderr line by line into `log`, each line prefixed with the
/// seconds since `started`; the receiver hears when the pipe closed.
fn copy_stderr(pipe: ChildStderr, mut log: File, started: Instant) -> mpsc::Receiver<()> {
    let (done, copied) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).split(b'\n') {
            let Ok(line) = line else { break };
            let at = started.elapsed().as_secs_f64();
            let _ = writeln!(log, "[{at:8.3}] {}", String::from_utf8_lossy(&line));
        }
        let _ = done.send(());
    });
    copied
}

/// Removes the time prefix [`copy_stderr`] puts before a line.
fn strip_time(line: &str) -> &str {
    line.strip_prefix('[')
        .and_then(|rest| rest.split_once("] "))
        .map_or(line, |(_, text)| text)
}

/// A process started by [`Builder::start`].
pub struct Daemon {
    name: String,
    argv: Vec<OsString>,
    child: Child,
    pid: i32,
    own_group: bool,
    started: Instant,
    status: Option<ExitStatus>,
    exited_at: Option<Instant>,
    stdout: PathBuf,
    stderr: PathBuf,
    /// Hears when the copy of stderr to its file is complete.
    copied: mpsc::Receiver<()>,
    _held_stderr: Option<ChildStderr>,
    /// Holds the logs (and is the working directory unless one was given).
    _dir: tempfile::TempDir,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process's own directory (see [`Builder::dir`]).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// When the process was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When its exit was noticed (within a few milliseconds), once it was.
    pub fn exited_at(&self) -> Option<Instant> {
        self.exited_at
    }

    /// Its exit status, once it was noticed.
    pub fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Sends `signal` to the process; fails if it was already reaped.
    #[track_caller]
    pub fn signal(&self, signal: Signal) {
        assert!(
            self.status.is_none(),
            "{} already exited ({:?}); cannot send {signal}\n{}",
            self.name,
            self.status,
            self.logs()
        );
        kill(Pid::from_raw(self.pid), signal)
            .unwrap_or_else(|e| panic!("cannot send {signal} to {}: {e}", self.name));
    }

    /// Sends `signal` to the process group of its own.
    #[track_caller]
    pub fn signal_group(&self, signal: Signal) {
        assert!(
            self.own_group,
            "{} has no process group of its own",
            self.name
        );
        killpg(Pid::from_raw(self.pid), signal)
            .unwrap_or_else(|e| panic!("cannot send {signal} to {}'s group: {e}", self.name));
    }

    /// Whether it has exited (and reaps it if so).
    pub fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.reaped(status);
            }
        }
        self.status
    }

    fn reaped(&mut self, status: ExitStatus) {
        self.status = Some(status);
        self.exited_at = Some(Instant::now());
        unreaped_lock().retain(|&p| p != self.pid);
        // Whatever still holds the pipe (a stray handler, say) cannot hold
        // up the test for long.
        let _ = self.copied.recv_timeout(Duration::from_secs(2));
    }

    /// Waits up to `limit` for the exit; `None` if it is still running.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.poll() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// [`Daemon::wait_for_exit`] for async tests: it sleeps on the runtime.
    pub async fn wait_for_exit_async(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.poll() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits up to `limit` for the exit; on overrun kills the process and
    /// fails the test with its log.
    #[track_caller]
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        match self.wait_for_exit(limit) {
            Some(status) => status,
            None => self.overran(limit),
        }
    }

    /// [`Daemon::wait`] for async tests.
    pub async fn wait_async(&mut self, limit: Duration) -> ExitStatus {
        match self.wait_for_exit_async(limit).await {
            Some(status) => status,
            None => self.overran(limit),
        }
    }

    #[track_caller]
    fn overran(&mut self, limit: Duration) -> ! {
        self.kill();
        panic!(
            "{} did not exit within {limit:?}; it was killed\n{}",
            self.name,
            self.logs()
        );
    }

    /// SIGKILLs the process unless it has exited, and reaps it; if it has
    /// a process group of its own, whatever is left of that group is
    /// SIGKILLed too. Returns the exit status (`None` only if it could not
    /// be reaped).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let pid = Pid::from_raw(self.pid);
        if self.poll().is_none() {
            for signal in [Signal::SIGCONT, Signal::SIGKILL] {
                let _ = kill(pid, signal);
            }
            if let Ok(status) = self.child.wait() {
                self.reaped(status);
            }
        }
        if self.own_group {
            for signal in [Signal::SIGCONT, Signal::SIGKILL] {
                let _ = killpg(pid, signal);
            }
        }
        self.status
    }

    /// Waits until a line of stderr contains `needle`; returns that line
    /// (without its time). Fails the test with the log after `limit`.
    #[track_caller]
    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.stderr().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "no log line of {} with {needle:?} within {limit:?}\n{}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// stderr so far, each line with the seconds since the start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// stderr so far as the process wrote it (without the times).
    pub fn stderr(&self) -> String {
        let mut text = String::new();
        for line in self.log().lines() {
            text.push_str(strip_time(line));
            text.push('\n');
        }
        text
    }

    /// The file the timed stderr is written to.
    pub fn log_path(&self) -> &Path {
        &self.stderr
    }

    /// stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// The command line, stdout and the tail of the timed stderr, for
    /// failure messages.
    pub fn logs(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(200)..].join("\n");
        format!(
            "--- {} ({:?}), exit {:?} ---\n--- stdout ---\n{}\n--- stderr (last 200 lines, \
             seconds since the start) ---\n{tail}",
            self.name,
            self.argv,
            self.status,
            self.stdout()
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}
