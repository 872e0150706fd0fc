//! End-to-end tests of the command-line client (`jobpipe submit`,
//! `status`, `jobs`, `cancel`, `retry`): a real `jobpipe --serve-api` on
//! a SQLite queue with the fake handler, and the jobpipe binary run as the
//! client against it. stdout and stderr are files here, not terminals, so
//! these are the script-facing forms: JSON lines, plain progress lines.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::daemon::{daemon, Daemon};
use support::{fake_handler, jobpipe, Jobpipe, Run};

const KEY: &str = "client-test-key";
/// Longest wait for anything: the machine may be loaded.
const WAIT: Duration = Duration::from_secs(120);

/// A jobpipe endpoint (API and a worker with the fake handler) on a free
/// port, over a SQLite queue of its own.
struct Endpoint {
    daemon: Daemon,
    /// Where the API listens.
    addr: std::net::SocketAddr,
    /// The base URL the client is given.
    url: String,
}

impl Endpoint {
    fn start() -> Endpoint {
        let builder = daemon().name("endpoint");
        let queue = builder.dir().join("queue.db");
        let spool = builder.dir().join("spool");
        let mut daemon = builder
            .args(["--serve-api", "--log-level", "info"])
            .args(["--api-addr", "127.0.0.1:0"])
            .args(["--endpoint", "client-test"])
            .env("JOBPIPE_API_KEY", KEY)
            .arg("--queue")
            .arg(format!("sqlite:{}", queue.display()))
            .arg("--spool-dir")
            .arg(spool)
            .args(["--", "python3", &fake_handler()])
            .start();
        let line = daemon.wait_for_log("endpoint API listening on http://", WAIT);
        let addr = line.split("http://").nth(1).unwrap();
        let addr = addr.split_whitespace().next().unwrap();
        Endpoint {
            url: format!("http://{addr}/v2/client-test"),
            addr: addr.parse().unwrap(),
            daemon,
        }
    }

    /// A client run against this endpoint, with the right key.
    fn client(&self) -> Jobpipe {
        jobpipe()
            .env("JOBPIPE_ENDPOINT_URL", &self.url)
            .env("JOBPIPE_API_KEY", KEY)
            .deadline(WAIT)
    }

    /// A client started in the background (for `submit --wait`).
    fn client_in_background(&self, args: &[&str]) -> Daemon {
        client_of(&self.url, args)
    }

    /// `jobpipe submit --input INPUT`; the id it printed.
    fn submit(&self, input: Value) -> String {
        let run = self
            .client()
            .args(["submit", "--input", &input.to_string()])
            .run();
        run.expect_code(0);
        let id = run.stdout.trim().to_owned();
        assert!(
            !id.is_empty() && !id.contains(char::is_whitespace),
            "submit prints the id alone\n{}",
            run.describe()
        );
        id
    }

    /// `jobpipe status ID`, parsed.
    fn status(&self, id: &str) -> Value {
        let run = self.client().args(["status", id]).run();
        run.expect_code(0);
        json_line(&run)
    }

    /// Asks `jobpipe status ID` until the job's status is `status`.
    fn wait_for(&self, id: &str, status: &str) -> Value {
        let started = Instant::now();
        loop {
            let answer = self.status(id);
            if answer["status"] == status {
                return answer;
            }
            assert!(
                started.elapsed() < WAIT,
                "job {id} is not {status} after {WAIT:?}: {answer}\n{}",
                self.daemon.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A client of the endpoint at `url`, started in the background.
fn client_of(url: &str, args: &[&str]) -> Daemon {
    daemon()
        .name("client")
        .env("JOBPIPE_ENDPOINT_URL", url)
        .env("JOBPIPE_API_KEY", KEY)
        .args(args)
        .start()
}

/// The one JSON line a run printed.
fn json_line(run: &Run) -> Value {
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), 1, "one JSON line\n{}", run.describe());
    lines.into_iter().next().unwrap()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// Waits until `done` holds for a background client, failing the test
/// with its output after [`WAIT`].
fn wait_until(client: &mut Daemon, what: &str, done: impl Fn(&Daemon) -> bool) {
    let started = Instant::now();
    while !done(client) {
        if started.elapsed() > WAIT {
            client.kill();
            panic!("{what}: not within {WAIT:?}\n{}", client.logs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_contains(haystack: &str, needle: &str, run: &Run) {
    assert!(
        haystack.contains(needle),
        "expected {needle:?}\n{}",
        run.describe()
    );
}

#[test]
fn submit_prints_an_id_that_status_cancel_and_retry_know() {
    let endpoint = Endpoint::start();
    let id = endpoint.submit(json!({"do": "echo", "x": 1}));
    let done = endpoint.wait_for(&id, "COMPLETED");
    assert_eq!(done["id"], id.as_str());
    assert_eq!(done["output"]["x"], 1, "{done}");

    // The input from stdin; the same Idempotency-Key and body give the
    // same job.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(&input, "{\"do\": \"echo\",\n \"from\": \"stdin\"}\n").unwrap();
    let keyed = |args: &[&str]| {
        let run = endpoint
            .client()
            .args(["submit", "--idempotency-key", "k-1", "--priority", "5"])
            .args(args)
            .stdin_file(&input)
            .run();
        run.expect_code(0);
        run.stdout.trim().to_owned()
    };
    let first = keyed(&[]);
    assert_eq!(keyed(&["--input-file", "-"]), first);
    let from_stdin = endpoint.wait_for(&first, "COMPLETED");
    assert_eq!(from_stdin["output"]["from"], "stdin");

    // A priority the server refuses: its message, as policy.priority.
    let run = endpoint
        .client()
        .args(["submit", "--input", "{}", "--priority", "99999999"])
        .run();
    run.expect_code(1);
    assert_contains(&run.stderr, "POST /v2/client-test/run: HTTP 400: ", &run);
    assert_contains(&run.stderr, "policy.priority", &run);

    // cancel prints the server's answer.
    let gate = dir.path().join("never");
    let running = endpoint.submit(json!({"do": "staged", "gate": gate}));
    endpoint.wait_for(&running, "IN_PROGRESS");
    let run = endpoint.client().args(["cancel", &running]).run();
    run.expect_code(0);
    assert_eq!(
        json_line(&run),
        json!({"id": running, "status": "CANCELLED"})
    );
    // A cancelled job cannot be retried: the server's error, exit 1.
    let run = endpoint.client().args(["retry", &running]).run();
    run.expect_code(1);
    assert_contains(
        &run.stderr,
        &format!("jobpipe: POST /v2/client-test/retry/{running}: HTTP 409: "),
        &run,
    );
    assert_contains(&run.stderr, "only FAILED or TIMED_OUT", &run);
    assert!(run.stdout.is_empty(), "{}", run.describe());

    // A failed job can be.
    let failed = endpoint.submit(json!({"do": "error"}));
    endpoint.wait_for(&failed, "FAILED");
    let run = endpoint.client().args(["retry", &failed]).run();
    run.expect_code(0);
    assert_eq!(json_line(&run), json!({"id": failed, "status": "IN_QUEUE"}));

    let run = endpoint.client().args(["status", "no-such-job"]).run();
    run.expect_code(1);
    assert_contains(
        &run.stderr,
        "jobpipe: GET /v2/client-test/status/no-such-job: HTTP 404: no job",
        &run,
    );
}

#[test]
fn submit_wait_streams_partials_shows_progress_and_prints_the_output() {
    let endpoint = Endpoint::start();
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let input = json!({"do": "staged", "n": 2, "gate": gate}).to_string();
    let mut client = endpoint.client_in_background(&["submit", "--wait", "--input", &input]);
    // Both partials and the latest progress while the job waits at its gate.
    wait_until(&mut client, "the partials and the progress", |c| {
        c.stdout().lines().count() == 2 && c.stderr().contains(r#"progress: {"step":1}"#)
    });
    assert!(
        client.stderr().contains(": IN_PROGRESS"),
        "{}",
        client.logs()
    );
    std::fs::write(&gate, "").unwrap();
    let status = client.wait(WAIT);
    assert_eq!(status.code(), Some(0), "{}", client.logs());
    assert_eq!(
        json_lines(&client.stdout()),
        [
            json!({"n": 0}),
            json!({"n": 1}),
            json!([{"n": 0}, {"n": 1}])
        ],
        "each partial, then the final output\n{}",
        client.logs()
    );
    assert!(client.stderr().contains(": COMPLETED"), "{}", client.logs());
}

#[test]
fn submit_wait_exits_1_when_the_job_fails() {
    let endpoint = Endpoint::start();
    let input = json!({"do": "staged", "n": 1, "error": "the model fell over"}).to_string();
    let run = endpoint
        .client()
        .args(["submit", "--wait", "--input", &input])
        .run();
    run.expect_code(1);
    assert_eq!(
        json_lines(&run.stdout),
        [json!({"n": 0})],
        "{}",
        run.describe()
    );
    assert_contains(&run.stderr, "ended FAILED: the model fell over", &run);
}

#[test]
fn ctrl_c_stops_the_wait_and_leaves_the_job_running() {
    let endpoint = Endpoint::start();
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let input = json!({"do": "staged", "gate": gate}).to_string();
    let mut client = endpoint.client_in_background(&["submit", "--wait", "--input", &input]);
    wait_until(&mut client, "the job running", |c| {
        c.stderr().contains(": IN_PROGRESS")
    });
    let line = client.stderr();
    let id = line
        .lines()
        .find_map(|l| l.strip_prefix("job ")?.strip_suffix(": IN_PROGRESS"))
        .unwrap()
        .to_owned();
    client.signal(Signal::SIGINT);
    let status = client.wait(WAIT);
    assert_eq!(status.code(), Some(130), "{}", client.logs());
    let stderr = client.stderr();
    assert!(
        stderr.contains(&format!("job {id} keeps running")),
        "{}",
        client.logs()
    );
    assert_eq!(endpoint.status(&id)["status"], "IN_PROGRESS");
    std::fs::write(&gate, "").unwrap();
    endpoint.wait_for(&id, "COMPLETED");
}

/// The endpoint's connections cut while a job runs: the client says so,
/// tries again with back-off, and follows the job to its end once they
/// come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_rides_out_a_lost_connection() {
    let endpoint = Endpoint::start();
    let proxy = support::tcp_proxy::TcpProxy::start(endpoint.addr).await;
    let url = format!("http://127.0.0.1:{}/v2/client-test", proxy.port);
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let input = json!({"do": "staged", "n": 1, "gate": gate}).to_string();
    let mut client = client_of(&url, &["submit", "--wait", "--input", &input]);
    // The partial is read first: /stream hands each partial out once, so
    // one whose answer is cut on the way is not sent again.
    wait_until(&mut client, "the job running and its partial", |c| {
        c.stderr().contains(": IN_PROGRESS") && c.stdout().lines().count() == 1
    });
    proxy.cut();
    wait_until(&mut client, "a note of the lost connection", |c| {
        c.stderr().contains("trying again in")
    });
    proxy.restore();
    std::fs::write(&gate, "").unwrap();
    let status = client.wait(WAIT);
    assert_eq!(status.code(), Some(0), "{}", client.logs());
    assert_eq!(
        json_lines(&client.stdout()),
        [json!({"n": 0}), json!([{"n": 0}])],
        "{}",
        client.logs()
    );
}

#[test]
fn a_wrong_key_is_refused_with_a_hint_and_never_shown() {
    let endpoint = Endpoint::start();
    let wrong = "wrong-key-8c1f";
    let by_env = jobpipe()
        .env("JOBPIPE_ENDPOINT_URL", &endpoint.url)
        .env("JOBPIPE_API_KEY", wrong)
        .args(["submit", "--input", "{}"])
        .deadline(WAIT)
        .run();
    let by_flag = jobpipe()
        .env("JOBPIPE_ENDPOINT_URL", &endpoint.url)
        .args(["status", "some-id", "--api-key", wrong])
        .deadline(WAIT)
        .run();
    for run in [&by_env, &by_flag] {
        run.expect_code(1);
        assert_contains(&run.stderr, "HTTP 401", run);
        assert_contains(
            &run.stderr,
            "check the API key (--api-key, JOBPIPE_API_KEY",
            run,
        );
        assert!(
            !run.stderr.contains(wrong) && !run.stdout.contains(wrong),
            "the key is shown\n{}",
            run.describe()
        );
    }
    assert_contains(&by_flag.stderr, "process list", &by_flag);
    assert!(
        !by_env.stderr.contains("process list"),
        "{}",
        by_env.describe()
    );

    // RUNPOD_API_KEY when JOBPIPE_API_KEY is not set.
    let run = jobpipe()
        .env("JOBPIPE_ENDPOINT_URL", &endpoint.url)
        .env("RUNPOD_API_KEY", KEY)
        .args(["submit", "--input", "{}"])
        .deadline(WAIT)
        .run();
    run.expect_code(0);
}

#[test]
fn bad_input_exits_2_naming_where_it_came_from() {
    // Nothing listens there: the input is checked before any request.
    let client = || jobpipe().env("JOBPIPE_ENDPOINT_URL", "http://127.0.0.1:9/v2/x");
    let run = client().args(["submit", "--input", "{\"prompt\": "]).run();
    run.expect_code(2);
    assert_contains(&run.stderr, "jobpipe: --input is not valid JSON", &run);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.json");
    std::fs::write(&file, "{'single': 'quotes'}").unwrap();
    let run = client().arg("submit").arg("--input-file").arg(&file).run();
    run.expect_code(2);
    assert_contains(
        &run.stderr,
        &format!("--input-file {} is not valid JSON", file.display()),
        &run,
    );

    let run = client().arg("submit").stdin_file(&file).run();
    run.expect_code(2);
    assert_contains(&run.stderr, "read from stdin is not valid JSON", &run);

    // stdin is /dev/null: empty, not a terminal.
    let run = client().arg("submit").run();
    run.expect_code(2);
    assert_contains(&run.stderr, "is empty", &run);
}

#[test]
fn a_missing_or_unreachable_endpoint_is_named() {
    let run = jobpipe().args(["status", "x"]).run();
    run.expect_code(2);
    assert_contains(&run.stderr, "JOBPIPE_ENDPOINT_URL", &run);

    let port = support::endpoint::free_port();
    let run = jobpipe()
        .args(["status", "x", "--endpoint"])
        .arg(format!("http://127.0.0.1:{port}/v2/x"))
        .run();
    run.expect_code(1);
    assert_contains(&run.stderr, "cannot be reached", &run);
    assert_contains(&run.stderr, "check --endpoint", &run);

    let run = jobpipe()
        .args(["status", "x", "--endpoint", "localhost:8000"])
        .run();
    run.expect_code(2);
    assert_contains(&run.stderr, "http://", &run);
}

#[test]
fn help_explains_the_flags_and_the_daemon_help_names_the_client() {
    let run = jobpipe().arg("--help").run();
    run.expect_code(0);
    // --help wraps its lines.
    let words = run.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_contains(&words, "jobpipe submit, status, jobs, cancel, retry", &run);
    assert_contains(&words, "jobpipe submit --help", &run);

    let run = jobpipe()
        .env("JOBPIPE_API_KEY", "secret-in-env-5d2")
        .args(["submit", "--help"])
        .run();
    run.expect_code(0);
    for text in [
        "JOBPIPE_ENDPOINT_URL",
        "JOBPIPE_API_KEY",
        "RUNPOD_API_KEY",
        "--input-file",
        "--webhook",
        "--priority",
        "--idempotency-key",
        "--wait",
    ] {
        assert_contains(&run.stdout, text, &run);
    }
    assert!(
        !run.stdout.contains("secret-in-env-5d2"),
        "{}",
        run.describe()
    );
    let run = jobpipe().args(["jobs", "--help"]).run();
    run.expect_code(0);
    assert_contains(&run.stdout, "[default: 20]", &run);
}

#[test]
fn jobs_lists_pages_and_follows_the_cursor() {
    let endpoint = Endpoint::start();
    let ids: Vec<String> = (0..3)
        .map(|i| endpoint.submit(json!({"do": "echo", "i": i})))
        .collect();
    for id in &ids {
        endpoint.wait_for(id, "COMPLETED");
    }
    let listed = |args: &[&str]| {
        let run = endpoint.client().arg("jobs").args(args).run();
        run.expect_code(0);
        let jobs = json_lines(&run.stdout);
        (run, jobs)
    };
    let (run, page) = listed(&["--limit", "2"]);
    assert_eq!(page.len(), 2, "{}", run.describe());
    assert_contains(&run.stderr, "--cursor", &run);
    let (run, all) = listed(&["--limit", "2", "--all", "--status", "completed"]);
    let seen: Vec<&str> = all.iter().filter_map(|j| j["id"].as_str()).collect();
    for id in &ids {
        assert!(seen.contains(&id.as_str()), "{id}\n{}", run.describe());
    }
    for job in &all {
        assert_eq!(job["status"], "COMPLETED", "{}", run.describe());
        assert!(job.get("createdAt").is_some(), "{}", run.describe());
        assert!(job.get("attempts").is_some(), "{}", run.describe());
    }
}
