//! The database itself failing under running jobpipe processes. On
//! PostgreSQL (an API process and two workers on a server of the test's
//! own): crashed and restarted (`pg_ctl restart -m immediate`), every client
//! backend terminated (`pg_terminate_backend`), and unreachable for 30 s. On
//! SQLite: its disk full (a small tmpfs in a mount namespace of the
//! process's own) for 5 s. Jobs are submitted before, during and after each
//! fault, and the same processes, never restarted, must finish every one.
//! The final state must then pass independent checks, over the jobs table
//! and the handler's own log of runs: every accepted job has a final
//! status, none is lost or added, attempts never exceed the maximum, the
//! stored result is the one of the job's last run (none accepted from an
//! old lease), every webhook went out with that one result, and memory
//! stayed bounded. Each test prints its figures (jobs accepted, ended, run
//! twice, time to recover, memory during the fault).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cluster::{api, count, stop, submit_bodies, try_submit, wait_count, worker_with};
use support::daemon::Daemon;
use support::hooks::{receiver, Receiver};
use support::postgres::{self, TestDb};
use support::tcp_proxy::TcpProxy;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Submissions going on through a fault: stop them with the token; the
/// task gives the ids accepted and the number refused.
type Submitting = (CancellationToken, JoinHandle<(Vec<String>, usize)>);

/// Jobs submitted before the fault, and after it.
const BEFORE: usize = 300;
const AFTER: usize = 100;
/// How long every job may take to end once the fault is over.
const FINISH: Duration = Duration::from_secs(300);

/// An API process and two workers on one database, a webhook receiver, and
/// the handler's log of runs.
struct Cluster {
    db: TestDb,
    api: Daemon,
    base: String,
    workers: Vec<Daemon>,
    hook: Receiver,
    runs_log: PathBuf,
    _dir: tempfile::TempDir,
    accepted: Vec<String>,
}

impl Cluster {
    /// Starts the processes against `url` (the database's, or a proxy's)
    /// and submits the first jobs.
    async fn start(db: TestDb, url: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let runs_log = dir.path().join("runs.log");
        let handler = vec![
            "python3".to_owned(),
            support::repo_path("tests/fixtures/logging_handler.py"),
            runs_log.display().to_string(),
        ];
        let (api, base) = api(url).await;
        let workers = vec![
            worker_with("w1", url, &handler),
            worker_with("w2", url, &handler),
        ];
        let hook = receiver(0).await;
        let mut cluster = Cluster {
            db,
            api,
            base,
            workers,
            hook,
            runs_log,
            _dir: dir,
            accepted: Vec::new(),
        };
        let bodies = (0..BEFORE).map(|_| cluster.body()).collect();
        cluster.accepted = submit_bodies(&cluster.base, bodies).await;
        cluster
    }

    fn body(&self) -> Value {
        json!({"input": {"ms": 30, "tag": true}, "webhook": self.hook.url})
    }

    fn daemons(&self) -> Vec<&Daemon> {
        self.workers.iter().chain([&self.api]).collect()
    }

    /// Waits until some jobs completed: the fault comes mid-run.
    async fn running(&self) {
        let daemons = self.daemons();
        wait_count(&self.db, "status = 'COMPLETED'", 60, FINISH, &daemons).await;
    }

    /// Submits jobs one after another until the returned token is
    /// cancelled, while the fault happens: the ids accepted are kept by
    /// [`Self::faulted`], and every refusal must be a JSON error, in time.
    fn submit_through_fault(&self) -> Submitting {
        let (base, body) = (self.base.clone(), self.body());
        let done = CancellationToken::new();
        let until = done.clone();
        let submitting = tokio::spawn(async move {
            let (mut ids, mut refused) = (Vec::new(), 0);
            while !until.is_cancelled() {
                let asked = Instant::now();
                match try_submit(&base, &body, Duration::from_secs(30)).await {
                    Ok(id) => ids.push(id),
                    Err((status, text)) => {
                        assert!(status >= 500, "refused with {status}: {text}");
                        let answer: Value = serde_json::from_str(&text)
                            .unwrap_or_else(|_| panic!("a refusal is JSON: {status} {text}"));
                        assert!(answer["error"].is_string(), "{answer}");
                        refused += 1;
                    }
                }
                assert!(asked.elapsed() < Duration::from_secs(30), "/run hung");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (ids, refused)
        });
        (done, submitting)
    }

    /// Ends the submissions of [`Self::submit_through_fault`]; keeps the
    /// ids accepted and prints how many were.
    async fn faulted(&mut self, submitting: Submitting) {
        submitting.0.cancel();
        let (ids, refused) = submitting.1.await.unwrap();
        eprintln!(
            "during the fault: {} submissions accepted, {refused} refused",
            ids.len()
        );
        self.accepted.extend(ids);
    }

    /// After the fault: waits for the first job to complete, submits more,
    /// then waits until every accepted job ended; returns how long after
    /// the fault the first job completed.
    async fn recover(&mut self, fault_over: Instant) -> Duration {
        let done_before = count(&self.db, "status = 'COMPLETED'");
        // When every job of the fault has already completed, one more
        // completion needs new jobs first (the queue works, so they are
        // taken at once).
        let pending = count(&self.db, "status = 'IN_QUEUE' OR status = 'IN_PROGRESS'");
        if pending == 0 {
            self.submit_after().await;
        }
        let daemons = self.daemons();
        wait_count(
            &self.db,
            "status = 'COMPLETED'",
            done_before + 1,
            FINISH,
            &daemons,
        )
        .await;
        let recovered = fault_over.elapsed();
        if pending > 0 {
            self.submit_after().await;
        }
        let daemons = self.daemons();
        let total = self.accepted.len();
        wait_count(
            &self.db,
            "status <> 'IN_QUEUE' AND status <> 'IN_PROGRESS'",
            total,
            FINISH,
            &daemons,
        )
        .await;
        recovered
    }

    /// Submits the jobs that follow a fault.
    async fn submit_after(&mut self) {
        let bodies = (0..AFTER).map(|_| self.body()).collect();
        let more = submit_bodies(&self.base, bodies).await;
        self.accepted.extend(more);
    }

    /// The invariants over the final state; prints and returns the figures.
    async fn check(&self, fault: &str, recovered: Duration, rss: &Rss) {
        let rows = self.db.psql(
            "SELECT id || ' ' || status || ' ' || attempts || ' ' || max_attempts || ' '
                    || coalesce(output::json ->> 'run', '-') || ' ' || (lease_token IS NULL)
               FROM jobpipe.jobs ORDER BY id",
        );
        let state = FinalState {
            rows,
            accepted: &self.accepted,
            runs_log: &self.runs_log,
            hook: &self.hook,
        };
        state.check(fault, recovered, rss).await;
    }

    /// SIGTERM to every process: each exits 0 (it recovered by itself).
    fn stop(self) {
        for daemon in self.workers.into_iter().chain([self.api]) {
            let name = daemon.name().to_owned();
            let log = daemon.log();
            assert_eq!(
                stop(daemon, Duration::from_secs(60)),
                Some(0),
                "{name}:\n{log}"
            );
        }
    }
}

/// What is left after a fault, to be checked.
struct FinalState<'a> {
    /// One line per job: "ID STATUS ATTEMPTS MAX_ATTEMPTS RUN UNLEASED",
    /// RUN the run named in the stored output, UNLEASED "true" when the
    /// job holds no lease.
    rows: String,
    accepted: &'a [String],
    runs_log: &'a Path,
    hook: &'a Receiver,
}

impl FinalState<'_> {
    /// The invariants; prints the figures.
    async fn check(&self, fault: &str, recovered: Duration, rss: &Rss) {
        let runs = runs(self.runs_log);
        let rows = &self.rows;
        let mut seen = HashMap::new();
        for row in rows.lines() {
            let fields: Vec<&str> = row.split(' ').collect();
            let [id, status, attempts, max, run, unleased] = fields[..] else {
                panic!("row {row:?}");
            };
            // Exactly one final status: a completed row, once.
            assert!(
                seen.insert(id.to_owned(), run.to_owned()).is_none(),
                "{id} twice"
            );
            assert_eq!(status, "COMPLETED", "{row}");
            assert_eq!(unleased, "true", "a final job holds no lease: {row}");
            let (attempts, max): (u32, u32) = (attempts.parse().unwrap(), max.parse().unwrap());
            assert!(attempts >= 1 && attempts <= max, "attempts: {row}");
            // The stored result is the last run's: none from an old lease.
            let job_runs = runs.get(id).unwrap_or_else(|| panic!("{id} never ran"));
            assert_eq!(
                run,
                job_runs.last().unwrap(),
                "{id}: result of an earlier run kept; runs {job_runs:?}"
            );
            assert!(
                job_runs.len() as u32 <= attempts,
                "{id}: ran {job_runs:?} in {attempts} attempts"
            );
        }
        // Every accepted job is there, and nothing else.
        let mut accepted = self.accepted.to_vec();
        accepted.sort();
        let mut stored: Vec<&String> = seen.keys().collect();
        stored.sort();
        assert_eq!(stored.len(), accepted.len(), "jobs lost or added");
        assert!(
            stored.iter().zip(&accepted).all(|(a, b)| *a == b),
            "other ids stored"
        );
        // Webhooks: at least once each, every post the stored result.
        let deadline = Instant::now() + FINISH;
        while self.hook.delivered().len() < accepted.len() {
            assert!(
                Instant::now() < deadline,
                "{} of {} webhooks delivered",
                self.hook.delivered().len(),
                accepted.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (_, body) in self.hook.posts.lock().unwrap().iter() {
            let id = body["id"].as_str().unwrap();
            assert_eq!(body["status"], "COMPLETED", "{body}");
            assert_eq!(
                body["output"]["run"].as_str(),
                seen.get(id).map(String::as_str),
                "{body}"
            );
        }
        let delivered = self.hook.delivered();
        let twice_posted = delivered.values().filter(|n| **n > 1).count();
        let run_twice = runs.values().filter(|r| r.len() > 1).count();
        eprintln!(
            "fault {fault}: jobs accepted {}, ended {}, run twice {run_twice}, webhooks posted twice {twice_posted}, \
             recovered (first job completed after the fault) in {:.1} s, RSS while away: {}",
            accepted.len(),
            stored.len(),
            recovered.as_secs_f64(),
            rss.describe()
        );
        assert!(
            run_twice <= accepted.len() / 10,
            "{run_twice} jobs ran twice"
        );
    }
}

/// Each job's runs, in the order they started, from the handler's log.
fn runs(log: &Path) -> HashMap<String, Vec<String>> {
    let mut runs: HashMap<String, Vec<String>> = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        if let Some((id, run)) = line.split_once(' ') {
            runs.entry(id.to_owned()).or_default().push(run.to_owned());
        }
    }
    runs
}

/// Resident memory of the processes, sampled while the database is away.
#[derive(Default)]
struct Rss {
    /// Per process: (at the start, the most seen).
    samples: Vec<(String, u64, u64)>,
}

impl Rss {
    fn start(daemons: &[&Daemon]) -> Rss {
        let samples = daemons
            .iter()
            .map(|d| {
                let now = support::rss_kib(d.pid());
                (d.name().to_owned(), now, now)
            })
            .collect();
        Rss { samples }
    }

    fn sample(&mut self, daemons: &[&Daemon]) {
        for (daemon, sample) in daemons.iter().zip(&mut self.samples) {
            sample.2 = sample.2.max(support::rss_kib(daemon.pid()));
        }
    }

    fn describe(&self) -> String {
        self.samples
            .iter()
            .map(|(name, start, max)| format!("{name} {} → {} MiB", start / 1024, max / 1024))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Memory stays bounded: no process grew by more than 64 MiB.
    fn assert_bounded(&self) {
        for (name, start, max) in &self.samples {
            assert!(
                max.saturating_sub(*start) < 64 * 1024,
                "{name} grew from {start} to {max} KiB"
            );
        }
    }
}

/// A cluster on `url`, running jobs, with its memory followed and jobs
/// submitted all along: ready for the fault.
async fn before_fault(db: TestDb, url: &str) -> (Cluster, Rss, Submitting) {
    let cluster = Cluster::start(db, url).await;
    cluster.running().await;
    let rss = Rss::start(&cluster.daemons());
    let submitting = cluster.submit_through_fault();
    (cluster, rss, submitting)
}

/// After the fault: the submissions end, every job must end, the final
/// state pass the checks, and every process exit 0 on SIGTERM.
async fn after_fault(
    mut cluster: Cluster,
    fault: &str,
    fault_over: Instant,
    rss: Rss,
    submitting: Submitting,
) {
    cluster.faulted(submitting).await;
    let recovered = cluster.recover(fault_over).await;
    cluster.check(fault, recovered, &rss).await;
    rss.assert_bounded();
    for daemon in cluster.daemons() {
        let log = daemon.log();
        assert!(!log.contains("panicked"), "{}:\n{log}", daemon.name());
    }
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_crashes_and_restarts_mid_run() {
    let Some(server) = postgres::own_server() else {
        return;
    };
    let db = server.0.create_database();
    let url = db.url();
    let (cluster, rss, submitting) = before_fault(db, &url).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart_immediate();
    let fault_over = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    after_fault(
        cluster,
        "pg_ctl restart -m immediate",
        fault_over,
        rss,
        submitting,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_is_terminated_three_times_mid_run() {
    let Some(server) = postgres::own_server() else {
        return;
    };
    let db = server.0.create_database();
    let url = db.url();
    let (cluster, rss, submitting) = before_fault(db, &url).await;
    let mut ended = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        ended += server.terminate_backends();
    }
    assert!(ended >= 3, "backends were ended: {ended}");
    let fault_over = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    after_fault(
        cluster,
        "pg_terminate_backend ×3",
        fault_over,
        rss,
        submitting,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_is_unreachable_for_30_seconds() {
    let Some(server) = postgres::own_server() else {
        return;
    };
    let db = server.0.create_database();
    let port = server.port;
    let proxy = TcpProxy::start(([127, 0, 0, 1], port).into()).await;
    let proxied = db
        .url()
        .replace(&format!(":{port}/"), &format!(":{}/", proxy.port));
    let (cluster, mut rss, submitting) = before_fault(db, &proxied).await;
    proxy.cut();
    let away = Instant::now();
    while away.elapsed() < Duration::from_secs(30) {
        rss.sample(&cluster.daemons());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    proxy.restore();
    after_fault(cluster, "unreachable 30 s", Instant::now(), rss, submitting).await;
}

/// The state of a SQLite queue file, as rows for [`FinalState`]. SQLite
/// resolves `/proc/PID/root` to this process's own root, so the file (and
/// its write-ahead log) is copied out of the other mount namespace first;
/// the process writes nothing by then but its heartbeat.
fn sqlite_rows(queue: &Path, copy: &Path) -> String {
    for suffix in ["", "-wal"] {
        let from = PathBuf::from(format!("{}{suffix}", queue.display()));
        let to = PathBuf::from(format!("{}{suffix}", copy.display()));
        if from.exists() {
            std::fs::copy(&from, &to).unwrap();
        }
    }
    let conn = rusqlite::Connection::open(copy).unwrap();
    let mut statement = conn
        .prepare(
            "SELECT id || ' ' || status || ' ' || attempts || ' ' || max_attempts || ' '
                    || coalesce(json_extract(output, '$.run'), '-') || ' '
                    || (CASE WHEN lease_token IS NULL THEN 'true' ELSE 'false' END)
               FROM jobs ORDER BY id",
        )
        .unwrap();
    let rows: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.join("\n")
}

/// How many jobs are queued or running, and how many completed, from
/// `/health`.
async fn unfinished(base: &str) -> (u64, u64) {
    let health: Value = reqwest::get(format!("{base}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jobs = &health["jobs"];
    let (queued, running) = (jobs["inQueue"].as_u64(), jobs["inProgress"].as_u64());
    (
        queued.unwrap() + running.unwrap(),
        jobs["completed"].as_u64().unwrap(),
    )
}

/// Fills the file system under `dir` with a file until it is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match file.write_all(&chunk).and_then(|()| file.sync_all()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => return path,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlites_disk_fills_up_mid_run() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let runs_log = dir.path().join("runs.log");
    let queue = disk.join("queue.db");
    let addr = format!("127.0.0.1:{}", support::endpoint::free_port());
    let builder = support::daemon()
        .name("sqlite")
        .wrapper([
            "python3".to_owned(),
            support::repo_path("tests/fixtures/small_disk.py"),
            disk.display().to_string(),
            "16384".to_owned(),
            "--".to_owned(),
        ])
        .args(["--log-level", "INFO", "--log-format", "text", "--serve-api"])
        .args(["--api-addr", &addr, "--queue"])
        .arg(format!("sqlite:{}", queue.display()))
        .args(["--concurrency", "2", "--max-attempts", "10", "--"])
        .args([
            "python3",
            &support::repo_path("tests/fixtures/logging_handler.py"),
        ])
        .arg(&runs_log);
    let spool = builder.dir().join("spool");
    let mut server = builder.env("JOBPIPE_SPOOL_DIR", spool).start();
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get(format!("{base}/health")).send().await.is_err() {
        if let Some(status) = server.poll() {
            let log = server.log();
            if status.code() == Some(97) {
                support::prereq::missing("unshare", &format!("a tmpfs cannot be mounted: {log}"));
                return;
            }
            panic!("jobpipe exited {status:?}:\n{log}");
        }
        assert!(Instant::now() < deadline, "no API:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The disk as the process sees it, in its own mount namespace.
    let seen_disk =
        PathBuf::from(format!("/proc/{}/root", server.pid())).join(disk.strip_prefix("/").unwrap());
    let seen_queue = seen_disk.join("queue.db");
    let hook = receiver(0).await;
    let body = json!({"input": {"ms": 30, "tag": true}, "webhook": hook.url});
    let mut accepted = submit_bodies(&base, vec![body.clone(); BEFORE]).await;
    while (BEFORE as u64) < 40 + unfinished(&base).await.0 {
        assert!(Instant::now() < deadline + FINISH, "jobs do not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let daemons = [&server];
    let mut rss = Rss::start(&daemons);
    let filler = fill(&seen_disk);
    let (mut refused, full_since) = (0, Instant::now());
    while full_since.elapsed() < Duration::from_secs(5) {
        match try_submit(&base, &body, Duration::from_secs(30)).await {
            Ok(id) => accepted.push(id),
            Err((status, text)) => {
                assert!(status >= 500, "refused with {status}: {text}");
                let answer: Value = serde_json::from_str(&text).unwrap();
                assert!(answer["error"].is_string(), "{answer}");
                refused += 1;
            }
        }
        rss.sample(&daemons);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let completed_before = unfinished(&base).await.1;
    std::fs::remove_file(&filler).unwrap();
    let fault_over = Instant::now();
    eprintln!("while the disk was full: {refused} submissions refused");
    assert!(
        refused > 0,
        "a full disk refuses new jobs:\n{}",
        server.log()
    );

    let more = submit_bodies(&base, vec![body.clone(); AFTER]).await;
    accepted.extend(more);
    let mut recovered = None;
    let finish = Instant::now() + FINISH;
    loop {
        let (unfinished, completed) = unfinished(&base).await;
        if recovered.is_none() && completed > completed_before {
            recovered = Some(fault_over.elapsed());
        }
        if unfinished == 0 {
            break;
        }
        assert!(
            Instant::now() < finish,
            "{unfinished} jobs never ended:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = FinalState {
        rows: sqlite_rows(&seen_queue, &dir.path().join("copy.db")),
        accepted: &accepted,
        runs_log: &runs_log,
        hook: &hook,
    };
    let recovered = recovered.unwrap_or_else(|| fault_over.elapsed());
    state
        .check("SQLite disk full for 5 s", recovered, &rss)
        .await;
    rss.assert_bounded();
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let status = server.wait_for_exit(Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", server.log());
}
