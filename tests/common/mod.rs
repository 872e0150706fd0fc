//! Helpers for the black-box tests of the jobpipe binary: run it with
//! arguments, environment and working directory under a deadline, read the
//! result line it prints, and check whether processes are still running.

#![allow(dead_code)]

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Deadline of one jobpipe run unless a test sets its own.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// The jobpipe binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_jobpipe")
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file of the repository, as an absolute path string.
pub fn repo_path(relative: &str) -> String {
    repo().join(relative).to_string_lossy().into_owned()
}

/// The misbehaving handler used by most tests.
pub fn fake_handler() -> String {
    repo_path("tests/fixtures/fake_handler.py")
}

/// A test input that makes the fake handler do `what`, with extra input keys.
pub fn fake_job(what: &str, extra: Value) -> String {
    let mut input = serde_json::json!({ "do": what });
    if let Value::Object(extra) = extra {
        input.as_object_mut().unwrap().extend(extra);
    }
    serde_json::json!({ "input": input }).to_string()
}

/// One jobpipe invocation being set up.
pub struct Jobpipe {
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    deadline: Duration,
}

/// Starts setting up a jobpipe run. The run gets the test's environment
/// without any `JOBPIPE_*` or `RUNPOD_*` variable, so that the developer's
/// own settings cannot change what is tested, and a fresh empty working
/// directory unless [`Jobpipe::cwd`] is given.
pub fn jobpipe() -> Jobpipe {
    Jobpipe {
        args: Vec::new(),
        env: Vec::new(),
        cwd: None,
        deadline: DEFAULT_DEADLINE,
    }
}

impl Jobpipe {
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// `--test-input JSON`.
    pub fn test_input(self, json: &str) -> Self {
        self.arg("--test-input").arg(json)
    }

    /// `-- ARGV...`: the handler command.
    pub fn handler<I, S>(self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.arg("--").args(argv)
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_owned());
        self
    }

    /// Longest the run may take; past it jobpipe is killed and the test fails.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Runs jobpipe to its end (or its deadline) and collects what it printed.
    pub fn run(self) -> Run {
        let scratch = tempfile::tempdir().expect("temporary directory");
        let cwd = self
            .cwd
            .clone()
            .unwrap_or_else(|| scratch.path().to_owned());
        let mut cmd = Command::new(binary());
        cmd.args(&self.args)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars_os() {
            let text = name.to_string_lossy();
            if text.starts_with("JOBPIPE_") || text.starts_with("RUNPOD_") {
                cmd.env_remove(&name);
            }
        }
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().expect("jobpipe starts");
        let stdout = collect(child.stdout.take().expect("piped"));
        let stderr = collect(child.stderr.take().expect("piped"));
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for jobpipe") {
                break Some(status);
            }
            if started.elapsed() > self.deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(10));
        };
        let elapsed = started.elapsed();
        let run = Run {
            args: self.args,
            code: status.and_then(|s| s.code()),
            timed_out: status.is_none(),
            stdout: stdout.finish(),
            stderr: stderr.finish(),
            elapsed,
        };
        assert!(
            !run.timed_out,
            "jobpipe did not finish within {:?} and was killed\n{}",
            self.deadline,
            run.describe()
        );
        run
    }
}

/// Reads a pipe to its end on a thread of its own.
struct Collector(mpsc::Receiver<Vec<u8>>);

fn collect(mut pipe: impl Read + Send + 'static) -> Collector {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    Collector(rx)
}

impl Collector {
    /// The bytes read; gives up after a moment if something else still holds
    /// the pipe open once jobpipe is gone.
    fn finish(self) -> String {
        let bytes = self
            .0
            .recv_timeout(Duration::from_secs(3))
            .unwrap_or_else(|_| b"<pipe still open after jobpipe exited>".to_vec());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// What one jobpipe run did.
pub struct Run {
    pub args: Vec<OsString>,
    /// Exit code; `None` if killed by a signal.
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// Everything about the run, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "args: {:?}\nexit code: {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args,
            self.code,
            self.elapsed,
            clip(&self.stdout),
            clip(&self.stderr)
        )
    }

    /// Asserts the exit code.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code\n{}",
            self.describe()
        );
        self
    }

    /// The result line of the test job: stdout must be exactly one JSON line.
    pub fn result(&self) -> Value {
        let lines: Vec<&str> = self
            .stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one result line on stdout\n{}",
            self.describe()
        );
        serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("result line is not JSON ({e})\n{}", self.describe()))
    }

    /// The output of a test job that completed.
    pub fn output(&self) -> Value {
        let result = self.result();
        assert_eq!(
            result["status"],
            "COMPLETED",
            "job did not complete\n{}",
            self.describe()
        );
        result["output"].clone()
    }

    /// The error text of a test job that failed.
    pub fn error(&self) -> String {
        let result = self.result();
        assert_eq!(
            result["status"],
            "FAILED",
            "job did not fail\n{}",
            self.describe()
        );
        result["error"]
            .as_str()
            .unwrap_or_else(|| panic!("error is not a string\n{}", self.describe()))
            .to_owned()
    }

    /// The error report (JSON text in the error) of a job jobpipe failed.
    pub fn error_report(&self) -> Value {
        let error = self.error();
        let report: Value = serde_json::from_str(&error)
            .unwrap_or_else(|e| panic!("error is not a JSON report ({e})\n{}", self.describe()));
        for key in [
            "error_type",
            "error_message",
            "error_traceback",
            "hostname",
            "worker_id",
            "jobpipe_version",
        ] {
            assert!(
                report[key].is_string(),
                "error report has no string {key:?}: {report}\n{}",
                self.describe()
            );
        }
        report
    }

    /// The stderr lines that are not empty.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// Checks that something was logged, and only at ERROR (text format).
    pub fn expect_only_error_lines(&self) -> &Self {
        let lines = self.stderr_lines();
        assert!(
            !lines.is_empty(),
            "the failure is logged\n{}",
            self.describe()
        );
        for line in lines {
            assert!(line.starts_with("ERROR"), "{line:?}\n{}", self.describe());
        }
        self
    }
}

/// The Python echo handler of handlers/python.
pub fn python_echo() -> Vec<String> {
    vec!["python3".into(), repo_path("handlers/python/echo.py")]
}

fn clip(text: &str) -> String {
    const MAX: usize = 8000;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut head = MAX / 2;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - MAX / 2;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{} …({} bytes in all)… {}",
        &text[..head],
        text.len(),
        &text[tail..]
    )
}

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

/// The C example handler, compiled with gcc once per test binary into the
/// target directory; returns the executable's path.
pub fn c_echo() -> String {
    static BUILT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| compile_c("handlers/c/echo.c")).clone()
}

/// Compiles one C file of the repository with gcc. Each test binary builds
/// its own copy, named with its process id, so binaries running side by
/// side never execute a file another one is still writing.
pub fn compile_c(source: &str) -> String {
    let stem = Path::new(source).file_stem().unwrap().to_string_lossy();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c-handlers");
    std::fs::create_dir_all(&dir).expect("create the C build directory");
    let out = dir.join(format!("{stem}-{}", std::process::id()));
    let status = Command::new("gcc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(repo_path(source))
        .status()
        .expect("gcc runs (a C compiler is needed for these tests)");
    assert!(status.success(), "gcc could not compile {source}");
    out.to_string_lossy().into_owned()
}
