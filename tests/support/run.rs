//! Runs the jobpipe binary to its end (a test job, a bad flag, `--help`)
//! under a deadline and collects what it printed: `jobpipe().args(..)
//! .run()` returns a [`Run`] with stdout, stderr, exit code and time. It is
//! a [`super::daemon`] process waited for at once, so it gets the same
//! cleared environment.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::daemon::daemon;

/// Deadline of one jobpipe run unless a test sets its own.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// One jobpipe invocation being set up.
pub struct Jobpipe {
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    stdin: Option<PathBuf>,
    deadline: Duration,
}

/// Starts setting up a jobpipe run. The run gets the test's environment
/// without any `JOBPIPE_*`, `RUNPOD_*` or `PGPASSWORD` variable, so that
/// the developer's own settings cannot change what is tested, and a fresh
/// empty working directory unless [`Jobpipe::cwd`] is given.
pub fn jobpipe() -> Jobpipe {
    Jobpipe {
        args: Vec::new(),
        env: Vec::new(),
        cwd: None,
        stdin: None,
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

    /// Reads stdin from this file (stdin is /dev/null otherwise).
    pub fn stdin_file(mut self, path: &Path) -> Self {
        self.stdin = Some(path.to_owned());
        self
    }

    /// Longest the run may take; past it jobpipe is killed and the test fails.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Runs jobpipe to its end (or its deadline) and collects what it printed.
    pub fn run(self) -> Run {
        let mut builder = daemon().args(&self.args);
        if let Some(cwd) = &self.cwd {
            builder = builder.cwd(cwd);
        }
        if let Some(stdin) = &self.stdin {
            builder = builder.stdin_file(stdin);
        }
        let mut process = builder.envs(self.env.iter().cloned()).start();
        let status = process.wait_for_exit(self.deadline);
        if status.is_none() {
            process.kill();
        }
        let elapsed = process
            .exited_at()
            .unwrap_or_else(std::time::Instant::now)
            .duration_since(process.started());
        let run = Run {
            args: self.args,
            code: status.and_then(|s| s.code()),
            timed_out: status.is_none(),
            stdout: process.stdout(),
            stderr: process.stderr(),
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
