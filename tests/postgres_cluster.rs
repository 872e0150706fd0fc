//! Many machines on one PostgreSQL queue, as black boxes: the real jobpipe
//! binary as one API process and several worker processes, real signals,
//! and a database connection cut by a proxy. Whatever happens to a worker,
//! every job ends with exactly one final status and none is lost.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::cluster::{api, count, stop, submit, wait_count, worker};
use support::daemon::Daemon;
use support::postgres::{self, TestDb};
use support::tcp_proxy::TcpProxy;

/// Longer than the lease and a sweep after it.
const PAST_LEASE: Duration = Duration::from_secs(22);

/// Sends `signal` to a worker at a moment it holds jobs; returns their ids
/// (for SIGSTOP, those whose end it was not writing at that moment).
fn stop_holding(db: &TestDb, worker: &Daemon, signal: Signal) -> Vec<String> {
    let held = format!(
        "SELECT id FROM jobpipe.jobs WHERE status = 'IN_PROGRESS' AND worker_id = '{}'",
        worker.name()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < deadline,
            "{} never held a job:\n{}",
            worker.name(),
            worker.log()
        );
        if db.psql(&held).is_empty() {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        worker.signal(signal);
        // A worker frozen halfway through writing a job's end keeps that
        // row locked until it wakes, so no sweep can take the job back and
        // its result counts (once): only the jobs whose rows it does not
        // hold locked must be run again by someone else.
        let frozen = match signal {
            Signal::SIGSTOP => format!("{held} FOR UPDATE SKIP LOCKED"),
            _ => held.clone(),
        };
        let ids: Vec<String> = db.psql(&frozen).lines().map(str::to_owned).collect();
        if !ids.is_empty() {
            return ids;
        }
        // It finished them in between: try again.
        assert_eq!(
            signal,
            Signal::SIGSTOP,
            "{} was killed between jobs",
            worker.name()
        );
        worker.signal(Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_lose_one_to_sigkill_and_one_to_sigstop_and_every_job_ends_once() {
    let Some(db) = postgres::database() else {
        return;
    };
    let url = db.url();
    let (api, base) = api(&url).await;
    let workers: Vec<Daemon> = ["w1", "w2", "w3"].iter().map(|w| worker(w, &url)).collect();
    let total = 2000;
    let ids = submit(&base, total, json!({"do": "sleep", "ms": 50})).await;
    assert_eq!(ids.len(), total);
    let all: Vec<&Daemon> = workers.iter().chain([&api]).collect();

    // Kill w1 while it holds jobs.
    let completed = "status = 'COMPLETED'";
    wait_count(&db, completed, 300, Duration::from_secs(300), &all).await;
    let killed_held = stop_holding(&db, &workers[0], Signal::SIGKILL).len();

    // Freeze w2 past its lease while it holds jobs, then let it go on.
    wait_count(&db, completed, 600, Duration::from_secs(300), &all).await;
    let frozen = stop_holding(&db, &workers[1], Signal::SIGSTOP);
    tokio::time::sleep(PAST_LEASE).await;
    workers[1].signal(Signal::SIGCONT);

    wait_count(&db, completed, total, Duration::from_secs(600), &all).await;

    // Exactly one final status each: every job is there, COMPLETED, once.
    assert_eq!(count(&db, "true"), total, "no job lost or added");
    assert_eq!(count(&db, "status = 'COMPLETED'"), total);
    let listed = db.psql("SELECT string_agg(id, ',' ORDER BY id) FROM jobpipe.jobs");
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected.join(","));
    // Jobs the lost workers held ran again; on a machine loaded enough
    // that a healthy worker's renewal comes late, a few more may have.
    // Either way each ended once.
    let retried = count(&db, "attempts > 1");
    eprintln!(
        "{retried} jobs ran more than once; w1 held {killed_held} when killed, w2 {} when frozen",
        frozen.len()
    );
    assert!(
        retried >= frozen.len(),
        "the frozen worker's jobs ran again"
    );
    assert!(retried <= total / 20, "{retried} jobs ran more than once");
    // The frozen worker's jobs were finished by someone else, and it was
    // told its late results do not count.
    for id in &frozen {
        let row = db.psql(&format!(
            "SELECT status || ' ' || (attempts > 1) FROM jobpipe.jobs WHERE id = '{id}'"
        ));
        // Run again (by anyone, w2 too once it woke), and ended once.
        assert_eq!(row, "COMPLETED true", "{id}");
    }
    let w2_log = workers[1].log();
    assert!(
        w2_log.contains("no longer holds"),
        "w2 did not notice it lost its leases:\n{w2_log}"
    );

    // /status through the API agrees, for a sample.
    let client = reqwest::Client::new();
    for id in ids.iter().step_by(97).chain(&frozen) {
        let status: Value = client
            .get(format!("{base}/status/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(status["status"], "COMPLETED", "{status}");
    }
    let mut workers = workers.into_iter();
    drop(workers.next());
    for worker in workers {
        assert_eq!(stop(worker, Duration::from_secs(30)), Some(0));
    }
    assert_eq!(stop(api, Duration::from_secs(30)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_the_database_loses_its_leases_and_its_jobs_finish_elsewhere() {
    let Some(db) = postgres::database() else {
        return;
    };
    let direct = db.url();
    let port = db.server.port;
    let proxy = TcpProxy::start(([127, 0, 0, 1], port).into()).await;
    let proxied = direct.replace(&format!(":{port}/"), &format!(":{}/", proxy.port));
    let (api, base) = api(&direct).await;
    let cut = worker("cut", &proxied);
    let ids = submit(&base, 4, json!({"do": "sleep", "ms": 3000})).await;
    let daemons = [&cut, &api];
    wait_count(
        &db,
        "status = 'IN_PROGRESS' AND worker_id = 'cut'",
        2,
        Duration::from_secs(60),
        &daemons,
    )
    .await;
    let held: Vec<String> = db
        .psql("SELECT id FROM jobpipe.jobs WHERE status = 'IN_PROGRESS' AND worker_id = 'cut'")
        .lines()
        .map(str::to_owned)
        .collect();
    proxy.cut();
    let other = worker("other", &direct);
    let daemons = [&cut, &api, &other];
    wait_count(
        &db,
        "status = 'COMPLETED'",
        ids.len(),
        Duration::from_secs(120),
        &daemons,
    )
    .await;
    for id in &held {
        let row = db.psql(&format!(
            "SELECT status || ' ' || worker_id || ' ' || attempts FROM jobpipe.jobs WHERE id = '{id}'"
        ));
        assert_eq!(row, "COMPLETED other 2", "{id}");
    }
    // Back on the network, the cut-off worker learns it lost the jobs and
    // writes nothing for them.
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cut.log().contains("no longer holds") {
        assert!(
            Instant::now() < deadline,
            "the cut-off worker never noticed:\n{}",
            cut.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = cut.log();
    assert!(log.contains("cannot be reached"), "{log}");
    assert_eq!(
        log.matches("cannot be reached").count(),
        1,
        "logged once per state change:\n{log}"
    );
    for id in &held {
        let row = db.psql(&format!(
            "SELECT status || ' ' || worker_id FROM jobpipe.jobs WHERE id = '{id}'"
        ));
        assert_eq!(row, "COMPLETED other", "{id}");
    }
    assert_eq!(stop(cut, Duration::from_secs(30)), Some(0));
    assert_eq!(stop(other, Duration::from_secs(30)), Some(0));
    assert_eq!(stop(api, Duration::from_secs(30)), Some(0));
}

/// A server that asks for a password, and a URL without one (and no
/// PGPASSWORD): a configuration error, so exit 2 at start with a message
/// that says what to do, not a retry loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_without_the_password_the_server_asks_for_exits_2() {
    let Some(db) = postgres::database() else {
        return;
    };
    let url = db.url().replace(&format!(":{}@", db.server.password), "@");
    assert!(!url.contains(&db.server.password));
    let mut worker = worker("no-password", &url);
    let status = worker.wait_async(Duration::from_secs(60)).await;
    let log = worker.log();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("PGPASSWORD"), "{log}");
    assert!(!log.contains("retrying"), "{log}");
}

/// An API-only process has no handler to wait for: it is ready once it
/// listens and the database answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_only_process_becomes_ready() {
    let Some(db) = postgres::database() else {
        return;
    };
    let (api, base) = api(&db.url()).await;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client.get(format!("{base}/ready")).send().await.unwrap();
        if ready.status() == reqwest::StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/ready still {} after 60 s:\n{}",
            ready.status(),
            api.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health: Value = client
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["state"], "ready", "{health}");
    assert_eq!(stop(api, Duration::from_secs(20)), Some(0));
}

/// A server with no connection left for a new process: it exits 2 at start
/// saying so and what to do, instead of waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_out_of_connections_is_a_clear_start_up_error() {
    let Some(server) =
        postgres::own_server_with("max_connections = 3\nsuperuser_reserved_connections = 0\n")
    else {
        return;
    };
    let url = server.url("postgres");
    // Take every connection the server has.
    let mut held = Vec::new();
    while held.len() < 3 {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        held.push(client);
    }
    let mut worker = worker("no-room", &url);
    let status = worker.wait_async(Duration::from_secs(60)).await;
    let log = worker.log();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("53300"), "{log}");
    assert!(log.contains("--queue-pool-size"), "{log}");
    assert!(log.contains("max_connections"), "{log}");
    assert!(!log.contains(&server.password), "{log}");
    drop(held);
    drop(server);
}

/// Housekeeping (lease expiry, ttl, retention) has no fixed leader: one
/// process at a time takes the housekeeping row and signs it. When the
/// process that swept last is killed, another signs the row within
/// seconds, and a job whose lease ran out is still queued again.
#[tokio::test]
async fn when_the_process_that_swept_last_dies_another_sweeps_within_seconds() {
    let Some(db) = postgres::database() else {
        return;
    };
    let url = db.url();
    let (mut api, _base) = support::cluster::api(&url).await;
    let worker = worker("w-sweeps", &url);
    let swept_by = || db.psql("SELECT coalesce(swept_by, '') FROM jobpipe.housekeeping");
    // Both processes ask once a second; wait until the API process swept.
    let api_pid = format!(" pid {}", api.pid());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !swept_by().ends_with(&api_pid) {
        assert!(
            Instant::now() < deadline,
            "the API process never swept: {}",
            swept_by()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api.signal(Signal::SIGKILL);
    api.wait_for_exit(Duration::from_secs(10)).expect("killed");
    let killed_at = Instant::now();
    // A job held by a worker that vanished: its lease ran out long ago.
    db.psql(
        "INSERT INTO jobpipe.jobs (id, status, payload, ttl_ms, max_attempts, retention_ms,
            attempts, created_at, queued_at, run_after, started_at, worker_id, lease_token,
            lease_expires_at)
         VALUES ('orphan', 'IN_PROGRESS', '{\"id\": \"orphan\", \"input\": {}}', 3600000, 3, 3600000, 1,
            jobpipe.now_ms(), jobpipe.now_ms(), jobpipe.now_ms(), jobpipe.now_ms(), 'gone',
            'stale', jobpipe.now_ms() - 60000)",
    );
    let worker_pid = format!(" pid {}", worker.pid());
    let handed_over = loop {
        if swept_by().ends_with(&worker_pid)
            && db.psql("SELECT status FROM jobpipe.jobs WHERE id = 'orphan'") != "IN_PROGRESS"
        {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "no sweep by the worker after the API process died: swept by {}, orphan {}\n{}",
            swept_by(),
            db.psql("SELECT status FROM jobpipe.jobs WHERE id = 'orphan'"),
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        handed_over < Duration::from_secs(5),
        "hand-over took {handed_over:?}"
    );
    // The orphan runs again on the worker that is left and completes.
    wait_count(
        &db,
        "id = 'orphan' AND status = 'COMPLETED'",
        1,
        Duration::from_secs(60),
        &[&worker],
    )
    .await;
}
