//! The endpoint API is secure by default: an empty key is refused at
//! start, a keyless API listens on loopback only unless told otherwise, a
//! key on the command line is warned about, and keys can come from files.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_jobpipe");

/// jobpipe with the given arguments and variables, none of the caller's
/// JOBPIPE_*/RUNPOD_* variables, a queue in `dir`.
fn command(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("JOBPIPE_") || name.starts_with("RUNPOD_") {
            cmd.env_remove(&*name);
        }
    }
    let queue = format!("sqlite:{}", dir.join("queue.db").display());
    cmd.args(["--log-format", "text", "--serve-api", "--queue", &queue])
        .env("JOBPIPE_SPOOL_DIR", dir.join("spool"))
        .args(args)
        .args([
            "--",
            "python3",
            "-c",
            "import time; print('{\"ready\": true}', flush=True); time.sleep(600)",
        ])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs jobpipe expecting it to exit on its own within a minute.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let child = command(dir.path(), args, env).spawn().unwrap();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!("jobpipe {args:?} did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    waiter.join().unwrap()
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A running jobpipe whose API answered; stopped (SIGTERM, then SIGKILL)
/// on drop.
struct Api {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let mut all = vec!["--api-addr", &addr];
        all.extend_from_slice(args);
        let child = command(dir.path(), &all, env)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let api = Api {
            child,
            base: format!("http://{addr}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while reqwest::get(format!("{}/health", api.base)).await.is_err() {
            assert!(Instant::now() < deadline, "the API never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        api
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_empty_key_is_a_start_up_error_naming_the_variable() {
    let out = run_to_exit(&[], &[("JOBPIPE_API_KEY", "")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("JOBPIPE_API_KEY"), "{}", stderr(&out));
    assert!(stderr(&out).contains("empty"), "{}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    std::fs::write(&file, "\n").unwrap();
    let out = run_to_exit(&["--api-key-file", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is empty"), "{}", stderr(&out));
}

#[test]
fn a_keyless_api_on_a_public_address_needs_insecure_no_auth() {
    let out = run_to_exit(&["--api-addr", "0.0.0.0:0"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--insecure-no-auth"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_no_auth_starts_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let port = free_addr().rsplit_once(':').unwrap().1.to_owned();
    let addr = format!("0.0.0.0:{port}");
    let mut child = command(
        dir.path(),
        &["--api-addr", &addr, "--insecure-no-auth"],
        &[],
    )
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the API never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("WARN") && text.contains("without a key"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_from_a_file_is_required_and_a_key_flag_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    std::fs::write(&file, "k3y-from-file\n").unwrap();
    let api = Api::start(&["--api-key-file", file.to_str().unwrap()], &[]).await;
    let http = reqwest::Client::new();
    let health = format!("{}/health", api.base);
    let refused = http.get(&health).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let allowed = http
        .get(&health)
        .bearer_auth("k3y-from-file")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);

    // A key on the command line: the log says it can be read in `ps`.
    // The address is taken, so jobpipe exits after the warning.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run_to_exit(
        &["--api-key", "on-the-command-line", "--api-addr", &addr],
        &[],
    );
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("--api-key") && text.contains("process list"),
        "{text}"
    );
    assert!(
        !text.contains("on-the-command-line"),
        "the key is logged: {text}"
    );
}
