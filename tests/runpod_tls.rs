//! A worker against an HTTPS stand-in of RunPod whose certificate a CA of
//! the user's own signed: trusted through `SSL_CERT_FILE` it completes
//! jobs over reused connections; untrusted it says which CA is missing
//! and what to do, and takes no job. Black-box runs of the real binary, so
//! the environment is read the way a container provides it.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use support::fake_runpod::{parse_body, FakeRunpod};
use support::live::Live;
use support::tls::TestCa;

const KEY: &str = "tls-key";
const WAIT: Duration = Duration::from_secs(30);
const JOBS: usize = 20;

/// A RunPod worker with the fake handler, `SSL_CERT_FILE` set to `ca_file`.
fn worker(fake: &FakeRunpod, dir: &std::path::Path, ca_file: &std::path::Path) -> Live {
    let args: Vec<String> = [
        "--spool-dir",
        &dir.join("spool").display().to_string(),
        "--kill-grace",
        "2s",
        "--",
        "python3",
        &support::fake_handler(),
    ]
    .map(str::to_owned)
    .to_vec();
    let mut env = fake.env();
    env.push(("SSL_CERT_FILE".into(), ca_file.display().to_string()));
    Live::start(&args, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_trusting_the_ca_in_ssl_cert_file_completes_jobs_over_reused_connections() {
    let ca = TestCa::new("jobpipe test CA");
    let fake = FakeRunpod::start_tls(KEY, ca.server.clone()).await;
    assert!(fake.base_url().starts_with("https://"));
    let dir = tempfile::tempdir().unwrap();
    let live = worker(&fake, dir.path(), &ca.write_pem(dir.path()));
    for i in 0..JOBS {
        fake.push_job(json!({"id": format!("job-{i}"), "input": {"n": i}}));
    }
    let results = fake.wait_for_results(JOBS, WAIT).await;
    assert_eq!(results.len(), JOBS, "{}", live.log());
    for i in 0..JOBS {
        let posted = fake.results_for(&format!("job-{i}"));
        assert_eq!(posted.len(), 1, "{}", live.log());
        assert_eq!(parse_body(&posted[0])["output"]["n"], i, "{}", live.log());
    }
    // Takes, posts, pings and job-stop polls share a few kept-alive
    // connections; a handshake per request would be more than one per job.
    let connections = fake.connections();
    assert!(
        (1..=6).contains(&connections),
        "{connections} TLS connections for {JOBS} jobs and their pings\n{}",
        live.log()
    );
    live.signal(Signal::SIGTERM);
    assert_eq!(live.wait(WAIT), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_not_trusting_the_ca_says_what_to_do_and_takes_no_job() {
    let ca = TestCa::new("jobpipe test CA");
    let fake = FakeRunpod::start_tls(KEY, ca.server.clone()).await;
    // The user's bundle holds some other CA, not the one that signed the endpoint.
    let other = TestCa::new("some other CA");
    let dir = tempfile::tempdir().unwrap();
    let mut live = worker(&fake, dir.path(), &other.write_pem(dir.path()));
    fake.push_job(json!({"id": "job-0", "input": {"n": 0}}));
    let line = live.wait_for_log("taking a job failed", WAIT);
    for needle in [
        "invalid peer certificate: UnknownIssuer",
        "signed by a CA this worker does not trust",
        "set SSL_CERT_FILE to a PEM file holding it",
        "retrying in",
    ] {
        assert!(
            line.contains(needle),
            "no {needle:?} in: {line}\n{}",
            live.log()
        );
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    assert_eq!(fake.queued(), 1, "the job stays queued");
    live.signal(Signal::SIGTERM);
    assert_eq!(live.wait(WAIT), Some(0));
}

#[test]
fn an_unreadable_ssl_cert_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for (file, problem) in [
        (&missing, "cannot be read"),
        (&empty, "holds no PEM certificate"),
    ] {
        let run = support::jobpipe()
            .env(
                "RUNPOD_WEBHOOK_GET_JOB",
                "https://127.0.0.1:9/v2/ep/job-take/$RUNPOD_POD_ID?gpu=TEST",
            )
            .env(
                "RUNPOD_WEBHOOK_POST_OUTPUT",
                "https://127.0.0.1:9/v2/ep/job-done/$RUNPOD_POD_ID/$ID?gpu=TEST",
            )
            .env("RUNPOD_AI_API_KEY", KEY)
            .env("SSL_CERT_FILE", &file.display().to_string())
            .handler(["python3".to_owned(), support::fake_handler()])
            .run();
        run.expect_code(2);
        let expected = format!("SSL_CERT_FILE is {}, which {problem}", file.display());
        assert!(run.stderr.contains(&expected), "{}", run.describe());
        assert!(
            run.stderr
                .contains("set it to a PEM file of the CA certificates to trust"),
            "{}",
            run.describe()
        );
    }
}
