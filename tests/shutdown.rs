//! Black-box tests of shutdown and process supervision: the jobpipe binary
//! runs as a child process and is stopped with real signals; handler
//! processes are followed through pidfiles and /proc.
//!
//! Every handler started here carries `--tag <unique marker>` on its command
//! line, so a scan of /proc finds whatever of it is left, and every wait is
//! bounded: a jobpipe that overruns its limit is SIGKILLed and the test fails.

mod support;

use support::spooled;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::fake_runpod::{self, parse_body, FakeRunpod};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_jobpipe");
const KEY: &str = "shutdown-test-key";

// ---------------------------------------------------------------------------
// Helpers: the handler command line
// ---------------------------------------------------------------------------

fn handler_script() -> String {
    format!(
        "{}/tests/fixtures/fake_handler.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The Python interpreter itself (not a launcher shim that execs it), so
/// handler starts are quick and the handler's pid is the interpreter's.
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "python3".to_owned())
    })
}

/// A marker unique to one test run, passed to its handlers as `--tag`.
fn new_tag() -> String {
    format!("shutdown-test-{}", uuid::Uuid::new_v4())
}

/// `-- python3 fake_handler.py --tag TAG`
fn handler_argv(tag: &str) -> Vec<String> {
    vec![
        "--".to_owned(),
        python().to_owned(),
        handler_script(),
        "--tag".to_owned(),
        tag.to_owned(),
    ]
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

// ---------------------------------------------------------------------------
// Helpers: the jobpipe process
// ---------------------------------------------------------------------------

/// Pids of children spawned by any test of this file and not yet reaped:
/// a zombie among them is a child its test has not waited for yet.
static UNREAPED: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn unreaped() -> std::sync::MutexGuard<'static, Vec<i32>> {
    UNREAPED.lock().unwrap_or_else(|p| p.into_inner())
}

/// A jobpipe (or `unshare … jobpipe`) child with stdout and stderr in files.
struct Jobpipe {
    child: Child,
    pid: i32,
    status: Option<ExitStatus>,
    /// When the exit was noticed (within a few milliseconds).
    exited_at: Option<Instant>,
    stdout: PathBuf,
    /// jobpipe's stderr, each line prefixed with the seconds since its start.
    stderr: PathBuf,
    /// Signalled when the copy of stderr to its file is complete.
    stderr_done: std::sync::mpsc::Receiver<()>,
}

impl Jobpipe {
    /// Starts `program args` in `dir` with `env` added to a copy of this
    /// process's environment cleared of jobpipe and RunPod settings.
    fn start(program: &str, args: &[String], env: &[(String, String)], dir: &Path) -> Jobpipe {
        Self::try_start(program, args, env, dir)
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
    }

    fn try_start(
        program: &str,
        args: &[String],
        env: &[(String, String)],
        dir: &Path,
    ) -> std::io::Result<Jobpipe> {
        let stdout = dir.join("jobpipe.stdout");
        let stderr = dir.join("jobpipe.stderr");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars() {
            if name.starts_with("JOBPIPE_") || name.starts_with("RUNPOD_") {
                cmd.env_remove(name);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let mut unreaped = unreaped();
        let mut child = cmd.spawn()?;
        let pid = child.id() as i32;
        unreaped.push(pid);
        drop(unreaped);
        let started = Instant::now();
        let pipe = child.stderr.take().expect("piped stderr");
        let mut log = File::create(&stderr)?;
        let (done, stderr_done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Each line gets the time since the start, for reading timings.
            for line in BufReader::new(pipe).split(b'\n') {
                let Ok(line) = line else { break };
                let at = started.elapsed().as_secs_f64();
                let _ = writeln!(log, "[{at:7.3}] {}", String::from_utf8_lossy(&line));
            }
            let _ = done.send(());
        });
        Ok(Jobpipe {
            child,
            pid,
            status: None,
            exited_at: None,
            stdout,
            stderr,
            stderr_done,
        })
    }

    fn signal(&self, signal: Signal) {
        assert!(self.status.is_none(), "jobpipe already exited");
        kill(Pid::from_raw(self.pid), signal).expect("signal jobpipe");
    }

    /// Whether it has exited (and reaps it if so).
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.status = Some(status);
                self.exited_at = Some(Instant::now());
                unreaped().retain(|&p| p != self.pid);
                // Whatever still holds the pipe (nothing should) cannot
                // hold up the test for long.
                let _ = self.stderr_done.recv_timeout(Duration::from_secs(2));
            }
        }
        self.status
    }

    /// Waits up to `limit` for the exit; on overrun kills jobpipe and fails.
    async fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.poll() {
                return status;
            }
            if Instant::now() >= deadline {
                self.kill_and_reap();
                panic!(
                    "jobpipe did not exit within {limit:?}; it was killed\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn kill_and_reap(&mut self) {
        if self.poll().is_none() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            if let Ok(status) = self.child.wait() {
                self.status = Some(status);
            }
            unreaped().retain(|&p| p != self.pid);
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// stdout and the tail of stderr, for failure messages.
    fn logs(&self) -> String {
        let stderr = self.stderr();
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        format!(
            "--- jobpipe stdout ---\n{}\n--- jobpipe stderr (last 80 lines) ---\n{tail}",
            self.stdout()
        )
    }

    /// The line test mode prints for the job.
    fn result_line(&self) -> Value {
        self.stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v.get("status").is_some())
            .unwrap_or_else(|| panic!("no result line on stdout\n{}", self.logs()))
    }
}

impl Drop for Jobpipe {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// Test-mode arguments for one job.
fn test_mode_args(job: &Value, extra: &[&str], tag: &str) -> Vec<String> {
    let mut args = vec!["--test-input".to_owned(), job.to_string()];
    args.extend(strings(extra));
    args.extend(handler_argv(tag));
    args
}

/// RunPod-mode arguments (the queue itself comes from the fake's env).
fn runpod_args(spool: &Path, extra: &[&str], tag: &str) -> Vec<String> {
    let mut args = vec![
        "--spool-dir".to_owned(),
        spool.to_str().expect("utf-8 path").to_owned(),
    ];
    args.extend(strings(extra));
    args.extend(handler_argv(tag));
    args
}

// ---------------------------------------------------------------------------
// Helpers: waiting, /proc, results
// ---------------------------------------------------------------------------

/// Polls `check` every few milliseconds for up to `limit`; returns how long
/// it took to hold, or `None`.
async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if check() {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The pid the fake handler wrote to `path` once a job started.
async fn read_pid(path: &Path, limit: Duration) -> Option<i32> {
    let mut pid = None;
    eventually(limit, || {
        pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    })
    .await?;
    pid
}

/// State letter, parent and process group of a process, from /proc.
fn proc_stat(pid: i32) -> Option<(char, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Whether `pid` is a live (not zombie) process of a handler tagged `tag`;
/// the tag guards against a reused pid.
fn handler_alive(pid: i32, tag: &str) -> bool {
    matches!(proc_stat(pid), Some((state, _, _)) if state != 'Z' && state != 'X')
        && cmdline(pid).contains(tag)
}

/// Live processes whose command line carries the fake handler and `tag`
/// (handlers and any process they forked).
fn tagged_processes(tag: &str) -> Vec<(i32, String)> {
    let script = handler_script();
    all_pids()
        .into_iter()
        .filter_map(|pid| {
            let line = cmdline(pid);
            let (state, _, _) = proc_stat(pid)?;
            (line.contains(&script) && line.contains(tag) && state != 'Z')
                .then(|| (pid, format!("{state} {line}")))
        })
        .collect()
}

/// Zombie children of this test process other than a child some test has
/// not reaped yet.
fn stray_zombie_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let unreaped = unreaped().clone();
    all_pids()
        .into_iter()
        .filter(|pid| {
            matches!(proc_stat(*pid), Some(('Z', ppid, _)) if ppid == me) && !unreaped.contains(pid)
        })
        .collect()
}

/// The `error_type` of an error report (the JSON text in `"error"`).
fn error_type(error: &Value) -> Option<String> {
    let report: Value = serde_json::from_str(error.as_str()?).ok()?;
    report["error_type"].as_str().map(str::to_owned)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("jobpipe-shutdown-")
        .tempdir()
        .expect("tempdir")
}

// ---------------------------------------------------------------------------
// 1. First SIGTERM: the running job finishes and is returned; exit 0
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_test_job_finish() {
    let dir = tempdir();
    let tag = new_tag();
    let pidfile = dir.path().join("handler.pid");
    let job = json!({"id": "t-1", "input": {"do": "sleep", "ms": 1000, "pidfile": pidfile}});
    let mut jp = Jobpipe::start(BIN, &test_mode_args(&job, &[], &tag), &[], dir.path());
    let pid = read_pid(&pidfile, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the job never started\n{}", jp.logs()));
    jp.signal(Signal::SIGTERM);
    let signalled = Instant::now();
    let status = jp.wait(Duration::from_secs(10)).await;
    let took = jp.exited_at.expect("exited").duration_since(signalled);
    let line = jp.result_line();
    assert_eq!(line["status"], "COMPLETED", "{}", jp.logs());
    assert_eq!(line["output"]["do"], "sleep", "{}", jp.logs());
    assert_eq!(status.code(), Some(0), "{}", jp.logs());
    // The job still had most of its second to run when the signal came.
    assert!(
        took >= Duration::from_millis(700),
        "exited {took:?} after SIGTERM"
    );
    assert!(
        took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM"
    );
    assert!(!handler_alive(pid, &tag), "handler {pid} still running");
    assert_nothing_left(&tag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_the_running_runpod_job_and_ends_the_long_poll_at_once() {
    let dir = tempdir();
    let tag = new_tag();
    let fake = FakeRunpod::start(KEY).await;
    fake.set_long_poll(Duration::from_secs(30));
    let pidfile = dir.path().join("handler.pid");
    fake.push_job(json!({"id": "job-1", "input": {"do": "sleep", "ms": 1000, "pidfile": pidfile}}));
    // Two slots: while the job runs, the free one waits in a long poll.
    let args = runpod_args(&dir.path().join("spool"), &["--concurrency", "2"], &tag);
    let mut jp = Jobpipe::start(BIN, &args, &fake.env(), dir.path());
    let pid = read_pid(&pidfile, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the job never started\n{}", jp.logs()));
    let polling = fake
        .wait_until(Duration::from_secs(5), |f| {
            f.queued() == 0 && f.takes().iter().any(|t| t.status.is_none())
        })
        .await;
    assert!(polling, "no take is waiting in a long poll\n{}", jp.logs());
    assert!(
        fake.results_for("job-1").is_empty(),
        "the job ended too early"
    );

    jp.signal(Signal::SIGTERM);
    let signalled = Instant::now();
    let status = jp.wait(Duration::from_secs(10)).await;
    let exited = jp.exited_at.expect("exited");
    assert_eq!(status.code(), Some(0), "{}", jp.logs());

    let results = fake.results_for("job-1");
    assert_eq!(results.len(), 1, "{results:?}\n{}", jp.logs());
    let body = parse_body(&results[0]);
    assert_eq!(body["output"]["do"], "sleep", "{body}");
    assert!(spooled(&dir.path().join("spool")).is_empty());
    // The 30 s long poll did not hold up the exit.
    let after_result = exited.saturating_duration_since(results[0].at);
    assert!(
        after_result < Duration::from_secs(2),
        "exited {after_result:?} after the result was posted\n{}",
        jp.logs()
    );
    assert!(
        exited.duration_since(signalled) < Duration::from_secs(4),
        "exited {:?} after SIGTERM",
        exited.duration_since(signalled)
    );
    let late_takes: Vec<_> = fake
        .takes()
        .into_iter()
        .filter(|t| t.at > signalled)
        .collect();
    assert!(late_takes.is_empty(), "takes after SIGTERM: {late_takes:?}");
    assert!(!handler_alive(pid, &tag), "handler {pid} still running");
    assert_nothing_left(&tag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_after_a_long_uptime_reports_once_not_in_a_burst() {
    let dir = tempdir();
    let tag = new_tag();
    let pidfile = dir.path().join("handler.pid");
    let job = json!({"id": "t-1b", "input": {"do": "sleep", "ms": 11_500, "pidfile": pidfile}});
    let mut jp = Jobpipe::start(BIN, &test_mode_args(&job, &[], &tag), &[], dir.path());
    let started = Instant::now();
    read_pid(&pidfile, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the job never started\n{}", jp.logs()));
    // Up for two report periods (5 s) and more, then drain for about 1 s.
    tokio::time::sleep_until((started + Duration::from_millis(10_500)).into()).await;
    jp.signal(Signal::SIGTERM);
    let status = jp.wait(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", jp.logs());
    let reports: Vec<String> = jp
        .stderr()
        .lines()
        .filter(|l| l.contains("draining:"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        reports.len(),
        1,
        "a drain of about 1 s reported {} times:\n{}",
        reports.len(),
        reports.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 2. Second SIGINT: the job fails as WorkerShutdown, exit 5, handler gone
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigint_fails_the_test_job_and_kills_its_handler() {
    let dir = tempdir();
    let tag = new_tag();
    let pidfile = dir.path().join("handler.pid");
    let job = json!({"id": "t-2", "input": {"do": "hang", "pidfile": pidfile}});
    let mut jp = Jobpipe::start(BIN, &test_mode_args(&job, &[], &tag), &[], dir.path());
    let pid = read_pid(&pidfile, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the job never started\n{}", jp.logs()));
    jp.signal(Signal::SIGINT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        jp.poll().is_none(),
        "exited on the first SIGINT\n{}",
        jp.logs()
    );
    assert!(handler_alive(pid, &tag), "handler gone on the first SIGINT");
    jp.signal(Signal::SIGINT);
    let signalled = Instant::now();
    let status = jp.wait(Duration::from_secs(8)).await;
    let took = jp.exited_at.expect("exited").duration_since(signalled);

    let line = jp.result_line();
    assert_eq!(line["status"], "FAILED", "{}", jp.logs());
    assert_eq!(
        error_type(&line["error"]).as_deref(),
        Some("WorkerShutdown"),
        "{line}"
    );
    assert_eq!(status.code(), Some(5), "{}", jp.logs());
    assert!(
        took < Duration::from_secs(3),
        "exited {took:?} after the second SIGINT"
    );
    assert!(!handler_alive(pid, &tag), "handler {pid} still running");
    assert_nothing_left(&tag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigint_fails_the_runpod_job_and_kills_its_handler() {
    let dir = tempdir();
    let tag = new_tag();
    let spool = dir.path().join("spool");
    let fake = FakeRunpod::start(KEY).await;
    let pidfile = dir.path().join("handler.pid");
    fake.push_job(json!({"id": "job-2", "input": {"do": "hang", "pidfile": pidfile}}));
    let mut jp = Jobpipe::start(
        BIN,
        &runpod_args(&spool, &[], &tag),
        &fake.env(),
        dir.path(),
    );
    let pid = read_pid(&pidfile, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the job never started\n{}", jp.logs()));
    jp.signal(Signal::SIGINT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        jp.poll().is_none(),
        "exited on the first SIGINT\n{}",
        jp.logs()
    );
    jp.signal(Signal::SIGINT);
    let status = jp.wait(Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(5), "{}", jp.logs());

    let mut finals: Vec<Value> = fake.results_for("job-2").iter().map(parse_body).collect();
    finals.extend(
        spooled(&spool)
            .into_iter()
            .filter(|s| s["job_id"] == "job-2")
            .map(|s| s["body"].clone()),
    );
    assert_eq!(
        finals.len(),
        1,
        "not exactly one result: {finals:?}\n{}",
        jp.logs()
    );
    assert_eq!(
        error_type(&finals[0]["error"]).as_deref(),
        Some("WorkerShutdown"),
        "{}",
        finals[0]
    );
    assert!(!handler_alive(pid, &tag), "handler {pid} still running");
    assert_nothing_left(&tag);
}

// ---------------------------------------------------------------------------
// 3. A handler that survives SIGTERM is SIGKILLed after --kill-grace
// ---------------------------------------------------------------------------

/// The times (seconds since the epoch) the handler noted a SIGTERM.
fn term_times(termlog: &Path) -> Vec<f64> {
    std::fs::read_to_string(termlog)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_timeout_sends_sigterm_then_sigkill_after_the_grace() {
    let dir = tempdir();
    let tag = new_tag();
    let pidfile = dir.path().join("handler.pid");
    let termlog = dir.path().join("term.log");
    let job =
        json!({"id": "t-3", "input": {"do": "trap-term", "termlog": termlog, "pidfile": pidfile}});
    let args = test_mode_args(&job, &["--job-timeout", "1s", "--kill-grace", "1s"], &tag);
    let mut jp = Jobpipe::start(BIN, &args, &[], dir.path());
    let pid = read_pid(&pidfile, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the job never started\n{}", jp.logs()));
    let started = epoch_now();
    eventually(Duration::from_secs(8), || !handler_alive(pid, &tag))
        .await
        .unwrap_or_else(|| panic!("handler {pid} still running\n{}", jp.logs()));
    let gone = epoch_now();
    let status = jp.wait(Duration::from_secs(5)).await;

    let line = jp.result_line();
    assert_eq!(line["status"], "FAILED", "{}", jp.logs());
    assert_eq!(
        error_type(&line["error"]).as_deref(),
        Some("JobTimeout"),
        "{line}"
    );
    assert_eq!(status.code(), Some(1), "{}", jp.logs());
    let terms = term_times(&termlog);
    assert_eq!(terms.len(), 1, "SIGTERMs noted: {terms:?}\n{}", jp.logs());
    let term = terms[0];
    assert!(
        (0.7..2.0).contains(&(term - started)),
        "SIGTERM {:.3}s after the job started (timeout 1s)",
        term - started
    );
    assert!(
        (0.9..1.8).contains(&(gone - term)),
        "gone {:.3}s after SIGTERM (grace 1s)\n{}",
        gone - term,
        jp.logs()
    );
    assert!(jp.stderr().contains("got SIGTERM"), "{}", jp.logs());
    assert_nothing_left(&tag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_sigkills_a_handler_that_survives_sigterm_after_the_grace() {
    let dir = tempdir();
    let tag = new_tag();
    let fake = FakeRunpod::start(KEY).await;
    fake.set_long_poll(Duration::from_secs(30));
    let pidfile = dir.path().join("handler.pid");
    let termlog = dir.path().join("term.log");
    fake.push_job(json!({"id": "job-3", "input": {
        "do": "trap-term", "answer": true, "termlog": termlog, "pidfile": pidfile}}));
    let args = runpod_args(&dir.path().join("spool"), &["--kill-grace", "1s"], &tag);
    let mut jp = Jobpipe::start(BIN, &args, &fake.env(), dir.path());
    let delivered = fake
        .wait_until(Duration::from_secs(10), |f| {
            !f.results_for("job-3").is_empty()
        })
        .await;
    assert!(delivered, "no result\n{}", jp.logs());
    let pid = read_pid(&pidfile, Duration::from_secs(1))
        .await
        .expect("pid");
    assert!(handler_alive(pid, &tag));

    jp.signal(Signal::SIGTERM);
    let signalled = epoch_now();
    eventually(Duration::from_secs(6), || !handler_alive(pid, &tag))
        .await
        .unwrap_or_else(|| panic!("handler {pid} still running\n{}", jp.logs()));
    let gone = epoch_now();
    let status = jp.wait(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", jp.logs());

    let terms = term_times(&termlog);
    assert_eq!(terms.len(), 1, "SIGTERMs noted: {terms:?}\n{}", jp.logs());
    let term = terms[0];
    assert!(
        term - signalled < 0.5,
        "the handler got SIGTERM {:.3}s after jobpipe did",
        term - signalled
    );
    assert!(
        (0.9..1.8).contains(&(gone - term)),
        "gone {:.3}s after SIGTERM (grace 1s)\n{}",
        gone - term,
        jp.logs()
    );
    assert_eq!(fake.results_for("job-3").len(), 1);
    assert_nothing_left(&tag);
}

// ---------------------------------------------------------------------------
// 4. A SIGKILLed jobpipe takes its handler along (parent-death signal)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_jobpipe_takes_its_handler_along() {
    let dir = tempdir();
    let tag = new_tag();
    let pidfile = dir.path().join("handler.pid");
    let job = json!({"id": "t-4", "input": {"do": "hang", "pidfile": pidfile}});
    let mut jp = Jobpipe::start(BIN, &test_mode_args(&job, &[], &tag), &[], dir.path());
    let pid = read_pid(&pidfile, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the job never started\n{}", jp.logs()));
    assert!(handler_alive(pid, &tag));
    jp.signal(Signal::SIGKILL);
    let took = eventually(Duration::from_secs(1), || !handler_alive(pid, &tag)).await;
    jp.wait(Duration::from_secs(2)).await;
    assert!(
        took.is_some(),
        "handler {pid} still running 1 s after jobpipe was SIGKILLed: {:?}",
        tagged_processes(&tag)
    );
    assert_nothing_left(&tag);
}

// ---------------------------------------------------------------------------
// 5. Orphans are reaped: as PID 1 of a PID namespace, and as a subreaper
// ---------------------------------------------------------------------------

const ORPHAN_JOB: &str =
    r#"{"id": "t-5", "input": {"do": "orphan", "linger_ms": 100, "check_after_ms": 800}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_reaped_by_jobpipe_as_pid_1() {
    let dir = tempdir();
    let tag = new_tag();
    let job: Value = serde_json::from_str(ORPHAN_JOB).expect("job");
    let mut args = strings(&["--pid", "--fork", "--mount-proc", "--kill-child", BIN]);
    args.extend(test_mode_args(&job, &[], &tag));
    let mut jp = match Jobpipe::try_start("unshare", &args, &[], dir.path()) {
        Ok(jp) => jp,
        Err(e) => {
            support::prereq::missing("unshare", &format!("unshare cannot be run here: {e}"));
            return;
        }
    };
    let status = jp.wait(Duration::from_secs(20)).await;
    let stderr = jp.stderr();
    if status.code() != Some(0) && stderr.starts_with("unshare:") {
        support::prereq::missing(
            "unshare",
            &format!("no PID namespace here: {}", stderr.trim()),
        );
        return;
    }
    let line = jp.result_line();
    assert_eq!(line["status"], "COMPLETED", "{}", jp.logs());
    assert_eq!(
        line["output"]["orphan_state"], "gone",
        "orphan not reaped: {line}"
    );
    // Pids start again at 1 in the new namespace, where jobpipe is PID 1.
    let orphan = line["output"]["orphan"].as_i64().unwrap_or(i64::MAX);
    assert!(orphan < 100, "not in a new PID namespace: {line}");
    assert_eq!(status.code(), Some(0), "{}", jp.logs());
    assert_nothing_left(&tag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_reaped_by_jobpipe_as_a_subreaper() {
    let dir = tempdir();
    let tag = new_tag();
    let job: Value = serde_json::from_str(ORPHAN_JOB).expect("job");
    let mut jp = Jobpipe::start(BIN, &test_mode_args(&job, &[], &tag), &[], dir.path());
    let status = jp.wait(Duration::from_secs(20)).await;
    let line = jp.result_line();
    assert_eq!(line["status"], "COMPLETED", "{}", jp.logs());
    assert_eq!(
        line["output"]["orphan_state"], "gone",
        "orphan not reaped: {line}"
    );
    assert_eq!(status.code(), Some(0), "{}", jp.logs());
    assert_nothing_left(&tag);
}

// ---------------------------------------------------------------------------
// A take answer in flight when SIGTERM arrives
// ---------------------------------------------------------------------------

/// A TCP proxy to `target` that holds everything the server sends for
/// `delay` before passing it on: an answer "in flight" for that long.
async fn slow_answer_proxy(target: &str, delay: Duration) -> String {
    let target = target.strip_prefix("http://").expect("http URL").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = tokio::io::copy(&mut client_read, &mut server_write);
                let down = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = server_read.read(&mut buf).await?;
                        if n == 0 {
                            return client_write.shutdown().await;
                        }
                        tokio::time::sleep(delay).await;
                        client_write.write_all(&buf[..n]).await?;
                    }
                };
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_take_answer_is_in_flight_loses_no_job() {
    let dir = tempdir();
    let tag = new_tag();
    let spool = dir.path().join("spool");
    let fake = FakeRunpod::start(KEY).await;
    fake.set_long_poll(Duration::from_secs(30));
    // Takes (and job-stop polls) go through a proxy that holds answers 100 ms:
    // the answer is on its way, and jobpipe gives a take in flight 250 ms.
    let proxy = slow_answer_proxy(&fake.base_url(), Duration::from_millis(100)).await;
    let env: Vec<(String, String)> = fake
        .env()
        .into_iter()
        .map(|(k, v)| {
            if k == "RUNPOD_WEBHOOK_GET_JOB" {
                let v = v.replace(&fake.base_url(), &proxy);
                (k, v)
            } else {
                (k, v)
            }
        })
        .collect();
    let mut jp = Jobpipe::start(BIN, &runpod_args(&spool, &[], &tag), &env, dir.path());
    let polling = fake
        .wait_until(Duration::from_secs(10), |f| {
            f.takes().iter().any(|t| t.status.is_none())
        })
        .await;
    assert!(polling, "no take is waiting in a long poll\n{}", jp.logs());
    // RunPod hands the job out; the answer is on its way when SIGTERM comes.
    fake.push_job(json!({"id": "job-in-flight", "input": {"do": "echo"}}));
    let handed_out = fake
        .wait_until(Duration::from_secs(5), |f| {
            f.queued() == 0 && f.takes().iter().any(|t| t.status == Some(200))
        })
        .await;
    assert!(handed_out, "the fake did not hand the job out");
    jp.signal(Signal::SIGTERM);
    let status = jp.wait(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", jp.logs());

    let delivered = fake.results_for("job-in-flight").len();
    let kept = spooled(&spool)
        .iter()
        .filter(|s| s["job_id"] == "job-in-flight")
        .count();
    assert_eq!(
        delivered + kept,
        1,
        "job-in-flight was handed out to jobpipe: {delivered} results delivered, {kept} spooled\n{}",
        jp.logs()
    );
    assert_nothing_left(&tag);
}

// ---------------------------------------------------------------------------
// 6. Chaos: hundreds of misbehaving jobs, failing and slow posts, signals
// ---------------------------------------------------------------------------

const CHAOS_JOBS: usize = 300;
const CHAOS_CONCURRENCY: &str = "4";
const CHAOS_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// A behaviour for the fake handler and the input that asks for it.
fn chaos_input(rng: &mut StdRng) -> Value {
    let weights: [(&str, u32); 10] = [
        ("echo", 30),
        ("sleep", 10),
        ("crash", 8),
        ("sigkill-self", 6),
        ("hang", 3),
        ("garbage", 8),
        ("error", 8),
        ("refresh", 7),
        ("stream", 10),
        ("progress", 5),
    ];
    let total: u32 = weights.iter().map(|(_, w)| w).sum();
    let mut pick = rng.gen_range(0..total);
    let what = weights
        .iter()
        .find(|(_, w)| {
            if pick < *w {
                true
            } else {
                pick -= w;
                false
            }
        })
        .map(|(name, _)| *name)
        .expect("a behaviour");
    let mut input = json!({"do": what});
    match what {
        "sleep" => input["ms"] = json!(rng.gen_range(20..400)),
        "crash" => input["code"] = json!(rng.gen_range(1..120)),
        "stream" | "progress" => input["n"] = json!(rng.gen_range(1..5)),
        _ => {}
    }
    input
}

/// Something the chaos run does to the fake or to jobpipe at a given time.
#[derive(Debug)]
enum Chaos {
    FailPosts(usize),
    DelayPosts(Duration),
    StopDelaying,
    Sigterm,
    SecondSigterm,
}

/// Hundreds of jobs through the fake queue with a random mix of
/// misbehaviours, failing and slow result posts, and a SIGTERM (sometimes
/// two) at a random moment. `JOBPIPE_CHAOS_SEED` repeats a run,
/// `JOBPIPE_CHAOS_LOG_DIR` keeps jobpipe's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_every_taken_job_gets_exactly_one_final_result() {
    let seed: u64 = std::env::var("JOBPIPE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed {seed} (JOBPIPE_CHAOS_SEED={seed} repeats this run)");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempdir();
    let tag = new_tag();
    let pids = dir.path().join("pids");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&pids).expect("pids dir");
    let fake = FakeRunpod::start(KEY).await;
    fake.set_long_poll(Duration::from_secs(5));

    let mut ids = Vec::new();
    let mut kinds = BTreeMap::new();
    for i in 0..CHAOS_JOBS {
        let id = format!("chaos-{i:03}");
        let mut input = chaos_input(&mut rng);
        input["pidfile"] = json!(pids.join(&id));
        kinds.insert(id.clone(), input["do"].as_str().unwrap_or("?").to_owned());
        fake.push_job(json!({"id": id, "input": input}));
        ids.push(id);
    }

    // The script: failing and slow posts, then one SIGTERM, maybe two.
    let term_at = Duration::from_millis(rng.gen_range(1500..10_000));
    let mut script = vec![
        (Duration::ZERO, Chaos::FailPosts(rng.gen_range(5..30))),
        (
            Duration::from_millis(rng.gen_range(0..term_at.as_millis() as u64)),
            Chaos::FailPosts(rng.gen_range(5..40)),
        ),
        (term_at, Chaos::Sigterm),
    ];
    if rng.gen_bool(0.3) {
        // A stall from shortly before the SIGTERM that outlasts the drain
        // and the flush window, so that results end up in the spool.
        let from = term_at.saturating_sub(Duration::from_millis(rng.gen_range(0..1500)));
        let stall = Duration::from_millis(rng.gen_range(3000..8000));
        script.push((from, Chaos::DelayPosts(stall)));
        script.push((from + Duration::from_secs(10), Chaos::StopDelaying));
    } else {
        // Slow posts for a while, sometimes past the shutdown deadline.
        let from = Duration::from_millis(rng.gen_range(0..term_at.as_millis() as u64 + 2000));
        let delay = Duration::from_millis(rng.gen_range(50..800));
        script.push((from, Chaos::DelayPosts(delay)));
        script.push((
            from + Duration::from_millis(rng.gen_range(300..8000)),
            Chaos::StopDelaying,
        ));
    }
    if rng.gen_bool(0.4) {
        script.push((
            term_at + Duration::from_millis(rng.gen_range(20..2500)),
            Chaos::SecondSigterm,
        ));
    }
    script.sort_by_key(|(at, _)| *at);
    eprintln!("chaos script: {script:?}");

    let args = runpod_args(
        &spool,
        &[
            "--concurrency",
            CHAOS_CONCURRENCY,
            "--job-timeout",
            "2s",
            "--kill-grace",
            "300ms",
            "--shutdown-timeout",
            "3s",
        ],
        &tag,
    );
    let started = Instant::now();
    let mut jp = Jobpipe::start(BIN, &args, &fake.env(), dir.path());
    let mut signalled = None;
    let mut second_sent = false;
    'script: for (at, step) in &script {
        while Instant::now() < started + *at {
            if signalled.is_some() && jp.poll().is_some() {
                break 'script;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match step {
            Chaos::FailPosts(n) => fake.fail_done_posts(*n),
            Chaos::DelayPosts(d) => fake.set_done_delay(*d),
            Chaos::StopDelaying => fake.set_done_delay(Duration::ZERO),
            Chaos::Sigterm => {
                assert!(
                    jp.poll().is_none(),
                    "jobpipe exited on its own\n{}",
                    jp.logs()
                );
                jp.signal(Signal::SIGTERM);
                signalled = Some(Instant::now());
            }
            Chaos::SecondSigterm => {
                if jp.poll().is_none() {
                    jp.signal(Signal::SIGTERM);
                    second_sent = true;
                }
            }
        }
    }
    let signalled = signalled.expect("SIGTERM sent");
    let status = jp.wait(Duration::from_secs(30)).await;
    let stopping = jp.exited_at.expect("exited").duration_since(signalled);
    fake.set_done_delay(Duration::ZERO);
    if let Some(keep) = std::env::var_os("JOBPIPE_CHAOS_LOG_DIR") {
        let to = Path::new(&keep).join(format!("chaos-{seed}.log"));
        std::fs::copy(&jp.stderr, &to).expect("keep the chaos log");
        eprintln!("jobpipe's log is kept in {}", to.display());
    }

    // Which jobs jobpipe took: the queue hands them out in order.
    let taken = &ids[..CHAOS_JOBS - fake.queued()];
    let mut finals: BTreeMap<String, Vec<(&str, Value)>> = BTreeMap::new();
    for result in fake.results() {
        let id = fake_runpod::job_id(&result).expect("job id");
        finals
            .entry(id)
            .or_default()
            .push(("delivered", parse_body(&result)));
    }
    let spool_files = spooled(&spool);
    for kept in &spool_files {
        let id = kept["job_id"].as_str().expect("job_id").to_owned();
        assert!(
            kept["kind"].get("Final").is_some(),
            "non-final result spooled: {kept}"
        );
        finals
            .entry(id)
            .or_default()
            .push(("spooled", kept["body"].clone()));
    }
    let stderr = jp.stderr();
    let mut problems = Vec::new();
    // Jobs handed out in the answer to a take that SIGTERM cut off: jobpipe
    // never saw them.
    let mut lost_in_take = Vec::new();
    for id in taken {
        let kind = &kinds[id];
        match finals.get(id).map(Vec::as_slice) {
            None | Some([]) => {
                if stderr.contains(&format!("| {id} | job taken")) {
                    problems.push(format!("{id} ({kind}): taken but no result"));
                } else {
                    lost_in_take.push(id.clone());
                }
            }
            Some([(_, body)]) => {
                let shutdown = error_type(&body["error"]).as_deref() == Some("WorkerShutdown");
                let fine = match kind.as_str() {
                    "crash" | "sigkill-self" | "hang" | "error" => body.get("error").is_some(),
                    "garbage" => true,
                    _ => body.get("output").is_some() || shutdown,
                };
                if !fine {
                    problems.push(format!("{id} ({kind}): unexpected result {body}"));
                }
            }
            Some(many) => problems.push(format!("{id} ({kind}): {} results: {many:?}", many.len())),
        }
    }
    if !lost_in_take.is_empty() {
        problems.push(format!(
            "jobs {lost_in_take:?}: handed out, never taken by jobpipe, no result"
        ));
    }
    let taken_set: HashSet<&String> = taken.iter().collect();
    for id in finals.keys() {
        if !taken_set.contains(id) {
            problems.push(format!("{id}: a result for a job never handed out"));
        }
    }

    // No handler process, and nothing they forked, is left.
    let mut handler_pids = HashSet::new();
    for entry in std::fs::read_dir(&pids).expect("pids dir").flatten() {
        if let Some(pid) = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            handler_pids.insert(pid);
        }
    }
    for pid in &handler_pids {
        if handler_alive(*pid, &tag) {
            problems.push(format!("handler {pid} still running: {}", cmdline(*pid)));
        }
    }
    for (pid, line) in tagged_processes(&tag) {
        problems.push(format!("process {pid} of a handler still running: {line}"));
    }
    for pid in stray_zombie_children() {
        problems.push(format!("zombie child {pid} of the test process"));
    }

    let delivered = finals
        .values()
        .flatten()
        .filter(|(w, _)| *w == "delivered")
        .count();
    eprintln!(
        "chaos: {} of {CHAOS_JOBS} jobs taken, {delivered} results delivered, {} spooled, \
         {} handler processes; exit {:?} {stopping:?} after the first SIGTERM \
         (second SIGTERM: {second_sent}); run took {:?}",
        taken.len(),
        spool_files.len(),
        handler_pids.len(),
        status.code(),
        started.elapsed(),
    );
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problems:\n{}\n{}",
        problems.len(),
        problems.join("\n"),
        jp.logs()
    );
    assert!(
        matches!(status.code(), Some(0) | Some(5)),
        "exit {status:?}\n{}",
        jp.logs()
    );
    if status.code() == Some(0) {
        assert!(
            spool_files.is_empty(),
            "a graceful exit left results in the spool"
        );
    }
    // Drain (3 s), forced stop and flush window (2 s), with room to spare.
    let limit = CHAOS_SHUTDOWN_TIMEOUT + Duration::from_secs(5);
    assert!(
        stopping < limit,
        "took {stopping:?} to stop after SIGTERM\n{}",
        jp.logs()
    );
}

/// Fails if any process started with this run's tag is still there.
fn assert_nothing_left(tag: &str) {
    let left = tagged_processes(tag);
    assert!(left.is_empty(), "handler processes left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_while_handlers_stop_kills_them_at_once() {
    let dir = tempdir();
    let tag = new_tag();
    let pidfile = dir.path().join("handler.pid");
    // The job succeeds; the handler then shrugs off SIGTERM, so stopping it
    // would take the whole 30 s grace.
    let job =
        json!({"id": "t-7", "input": {"do": "trap-term", "answer": true, "pidfile": pidfile}});
    let args = test_mode_args(&job, &["--kill-grace", "30s"], &tag);
    let mut jp = Jobpipe::start(BIN, &args, &[], dir.path());
    let pid = read_pid(&pidfile, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the job never started\n{}", jp.logs()));
    eventually(Duration::from_secs(10), || {
        jp.stderr().contains("got SIGTERM")
    })
    .await
    .unwrap_or_else(|| panic!("the handler was never asked to stop\n{}", jp.logs()));
    jp.signal(Signal::SIGINT);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(handler_alive(pid, &tag), "the first signal only drains");
    jp.signal(Signal::SIGINT);
    let signalled = std::time::Instant::now();
    let status = jp.wait(Duration::from_secs(5)).await;
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "exited {:?} after the second SIGINT",
        signalled.elapsed()
    );
    assert_eq!(status.code(), Some(5), "{}", jp.logs());
    assert_eq!(jp.result_line()["status"], "COMPLETED");
    assert!(!handler_alive(pid, &tag), "handler {pid} still running");
    assert_nothing_left(&tag);
}
