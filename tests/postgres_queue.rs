//! The PostgreSQL queue against a real server: migrations under many
//! simultaneous starts, takes that never hand one job out twice, leases
//! that run out and count attempts, tokens that refuse a lost worker's
//! result, notifications across processes, one process of many for each
//! round of a chore, and refused credentials.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jobpipe::endpoint::queue::postgres::{PgQueue, PgTarget, DEFAULT_POOL_SIZE};
use jobpipe::endpoint::queue::{
    Ending, Failure, JobPolicy, JobStatus, NewJob, Queue, QueueError, QueueEvent, RetryOn,
    WorkerInfo,
};
use serde_json::json;
use support::postgres::{self, TestDb};
use tokio::sync::broadcast;

const LONG: Duration = Duration::from_secs(60);

fn policy(max_attempts: u32) -> JobPolicy {
    JobPolicy {
        execution_timeout: None,
        ttl: Duration::from_secs(3600),
        max_attempts,
        retention: Duration::from_secs(3600),
        stall_timeout: None,
        priority: 0,
        delay: Duration::ZERO,
        retry: Default::default(),
    }
}

/// The endpoint every job of these tests is queued for and taken from.
fn ep() -> Vec<String> {
    vec!["default".to_owned()]
}

/// A worker of the endpoint every job of these tests is queued for.
fn worker(id: &str) -> WorkerInfo {
    WorkerInfo {
        id: id.to_owned(),
        hostname: "test-host".to_owned(),
        endpoints: ep(),
    }
}

fn job(id: &str, max_attempts: u32) -> NewJob {
    NewJob {
        endpoint: "default".into(),
        tenant: None,
        max_running: None,
        id: id.into(),
        payload: json!({"id": id, "input": {"n": id}}),
        webhook: None,
        policy: policy(max_attempts),
        idempotency: None,
        awaited: false,
    }
}

async fn open(db: &TestDb) -> PgQueue {
    let target = PgTarget::parse(&db.url(), None).unwrap();
    tokio::time::timeout(LONG, PgQueue::open(target))
        .await
        .expect("open in time")
        .expect("open")
}

/// Waits for the first event that `want` accepts.
async fn wait_for(
    events: &mut broadcast::Receiver<QueueEvent>,
    want: impl Fn(&QueueEvent) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(event) = events.recv().await {
                if want(&event) {
                    return;
                }
            }
        }
    })
    .await
    .expect("the event arrives");
}

#[tokio::test]
async fn many_processes_starting_at_once_migrate_once() {
    let Some(db) = postgres::database() else {
        return;
    };
    let url = db.url();
    let opens = (0..6).map(|_| {
        let target = PgTarget::parse(&url, None).unwrap();
        async move { PgQueue::open(target).await.expect("open") }
    });
    let queues = tokio::time::timeout(LONG, futures_join_all(opens))
        .await
        .unwrap();
    assert_eq!(queues.len(), 6);
    assert_eq!(db.psql("SELECT version FROM jobpipe.schema_version"), "16");
    assert_eq!(
        db.psql("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'jobpipe'"),
        "8"
    );
    // The storage settings of migration 4.
    let options = db.psql("SELECT reloptions FROM pg_class WHERE oid = 'jobpipe.jobs'::regclass");
    assert!(
        options.contains("fillfactor=80")
            && options.contains("autovacuum_vacuum_scale_factor=0.02"),
        "{options}"
    );
}

/// Opens concurrently without another dependency.
async fn futures_join_all<F: std::future::Future<Output = PgQueue> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<PgQueue> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_job_runs_once_and_ends_with_one_status() {
    let Some(db) = postgres::database() else {
        return;
    };
    let queue = open(&db).await;
    queue.enqueue(job("a", 3)).await.unwrap();
    assert!(matches!(
        queue.enqueue(job("a", 3)).await,
        Err(QueueError::Duplicate(id)) if id == "a"
    ));
    let status = queue.status("a").await.unwrap().unwrap();
    assert_eq!(status.status, JobStatus::InQueue);

    let leases = queue.take("w1", &ep(), 4, LONG).await.unwrap();
    assert_eq!(leases.len(), 1);
    let lease = &leases[0];
    assert_eq!((lease.job_id.as_str(), lease.attempt), ("a", 1));
    assert_eq!(lease.payload["input"]["n"], "a");
    assert!(
        queue.take("w2", &ep(), 4, LONG).await.unwrap().is_empty(),
        "taken once"
    );

    assert!(queue.stream("a", &lease.token, json!("p1")).await.unwrap());
    assert!(queue.stream("a", &lease.token, json!("p2")).await.unwrap());
    let (status, partials) = queue.read_stream("a").await.unwrap().unwrap();
    assert_eq!(
        (status, partials),
        (JobStatus::InProgress, vec![json!("p1"), json!("p2")])
    );
    assert!(
        queue.read_stream("a").await.unwrap().unwrap().1.is_empty(),
        "read once"
    );

    let done = Ending::Completed(json!({"ok": true}));
    assert!(queue.finish("a", &lease.token, done.clone()).await.unwrap());
    assert!(
        !queue.finish("a", &lease.token, done).await.unwrap(),
        "one final status"
    );
    let record = queue.status("a").await.unwrap().unwrap();
    assert_eq!(record.status, JobStatus::Completed);
    assert_eq!(record.output, Some(json!({"ok": true})));
    assert_eq!(record.worker_id.as_deref(), Some("w1"));
}

#[tokio::test]
async fn concurrent_takes_from_two_processes_never_share_a_job() {
    let Some(db) = postgres::database() else {
        return;
    };
    let (a, b) = (Arc::new(open(&db).await), Arc::new(open(&db).await));
    for i in 0..200 {
        a.enqueue(job(&format!("j{i}"), 3)).await.unwrap();
    }
    let taker = |queue: Arc<PgQueue>, worker: &'static str| {
        tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let leases = queue.take(worker, &ep(), 3, LONG).await.unwrap();
                if leases.is_empty() {
                    return ids;
                }
                ids.extend(leases.into_iter().map(|l| l.job_id));
            }
        })
    };
    let (one, two) = (taker(a.clone(), "w1"), taker(b.clone(), "w2"));
    let (one, two) = (one.await.unwrap(), two.await.unwrap());
    let all: HashSet<_> = one.iter().chain(&two).cloned().collect();
    assert_eq!(one.len() + two.len(), 200, "no job taken twice");
    assert_eq!(all.len(), 200, "every job taken");
    assert!(
        !one.is_empty() && !two.is_empty(),
        "both took: {} {}",
        one.len(),
        two.len()
    );
}

#[tokio::test]
async fn an_expired_lease_requeues_counting_the_attempt_then_fails_the_job() {
    let Some(db) = postgres::database() else {
        return;
    };
    let queue = open(&db).await;
    queue.enqueue(job("x", 2)).await.unwrap();
    let first = queue
        .take("w1", &ep(), 1, Duration::from_millis(200))
        .await
        .unwrap();
    let first = &first[0];
    tokio::time::sleep(Duration::from_millis(400)).await;
    let swept = queue.sweep().await.unwrap();
    assert_eq!((swept.requeued, swept.ended), (1, 0));
    let late = Ending::Completed(json!("late"));
    assert!(
        !queue.finish("x", &first.token, late).await.unwrap(),
        "the lost worker's result is refused"
    );
    assert_eq!(
        queue
            .renew(&[("x".into(), first.token.clone())], LONG)
            .await
            .unwrap(),
        ["x"]
    );

    // The retry waits out its back-off (1 s after the first attempt).
    assert!(queue.take("w2", &ep(), 1, LONG).await.unwrap().is_empty());
    db.psql("UPDATE jobpipe.jobs SET run_after = 0");
    let second = queue
        .take("w2", &ep(), 1, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(second[0].attempt, 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let swept = queue.sweep().await.unwrap();
    assert_eq!((swept.requeued, swept.ended), (0, 1));
    let record = queue.status("x").await.unwrap().unwrap();
    assert_eq!(record.status, JobStatus::Failed);
    let error = record.error.unwrap();
    assert!(
        error.contains("lease expired") && error.contains("attempt 2 of 2"),
        "{error}"
    );
    // Both lost attempts are in the job's history, by their workers.
    let history = queue.job_raw("x").await.unwrap().unwrap().history;
    let lost: Vec<(u32, &str, &str)> = history
        .iter()
        .map(|a| {
            let worker = a.worker_id.as_deref().unwrap_or_default();
            (a.attempt, worker, a.outcome.as_str())
        })
        .collect();
    assert_eq!(lost, [(1, "w1", "lost"), (2, "w2", "lost")]);
}

#[tokio::test]
async fn renewal_keeps_a_lease_and_handler_errors_are_not_retried() {
    let Some(db) = postgres::database() else {
        return;
    };
    let queue = open(&db).await;
    queue.enqueue(job("r", 3)).await.unwrap();
    let lease = queue
        .take("w1", &ep(), 1, Duration::from_millis(300))
        .await
        .unwrap()
        .remove(0);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let held = [(lease.job_id.clone(), lease.token.clone())];
        assert!(queue
            .renew(&held, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(queue.sweep().await.unwrap().requeued, 0);
    }
    let failed = Ending::Failed {
        error: "bad input".into(),
        output: None,
    };
    assert!(queue.finish("r", &lease.token, failed).await.unwrap());
    let record = queue.status("r").await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.error.as_deref()),
        (JobStatus::Failed, Some("bad input"))
    );
    assert_eq!(record.attempts, 1);
}

#[tokio::test]
async fn a_crash_is_retried_after_a_back_off() {
    let Some(db) = postgres::database() else {
        return;
    };
    let queue = open(&db).await;
    queue.enqueue(job("c", 3)).await.unwrap();
    let lease = queue.take("w1", &ep(), 1, LONG).await.unwrap().remove(0);
    let crash = Ending::Retry {
        kind: Failure::Crash,
        why: "HandlerCrashed: exit 1".into(),
        stderr: String::new(),
    };
    assert!(queue.finish("c", &lease.token, crash).await.unwrap());
    let record = queue.status("c").await.unwrap().unwrap();
    assert_eq!((record.status, record.attempts), (JobStatus::InQueue, 1));
    assert!(
        queue.take("w1", &ep(), 1, LONG).await.unwrap().is_empty(),
        "not before the back-off"
    );
    let again = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let leases = queue.take("w1", &ep(), 1, LONG).await.unwrap();
            if let Some(lease) = leases.into_iter().next() {
                return lease;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("taken again after the back-off");
    assert_eq!(again.attempt, 2);
}

/// Only the end of a job whose caller waits (`/runsync`) is announced:
/// announcing every end woke every listening process once a job. The
/// quiet job ends first, so its announcement, were there one, would be
/// heard before the awaited one's.
#[tokio::test]
async fn only_the_ends_of_awaited_jobs_are_announced() {
    let Some(db) = postgres::database() else {
        return;
    };
    let (api, worker) = (open(&db).await, open(&db).await);
    let mut caller = api.subscribe();
    api.enqueue(job("quiet", 3)).await.unwrap();
    api.enqueue(NewJob {
        awaited: true,
        ..job("awaited", 3)
    })
    .await
    .unwrap();
    let mut leases = Vec::new();
    while leases.len() < 2 {
        leases.extend(worker.take("w1", &ep(), 2, LONG).await.unwrap());
    }
    leases.sort_by_key(|lease| lease.job_id != "quiet");
    for lease in &leases {
        let ending = Ending::Completed(json!(lease.job_id));
        assert!(worker
            .finish(&lease.job_id, &lease.token, ending)
            .await
            .unwrap());
    }
    let mut heard = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(QueueEvent::Finished(id)) = caller.recv().await {
                heard.push(id.clone());
                if id == "awaited" {
                    return;
                }
            }
        }
    })
    .await
    .expect("the awaited job's end is announced");
    assert_eq!(heard, ["awaited"]);
    for id in ["quiet", "awaited"] {
        assert_eq!(
            api.status(id).await.unwrap().unwrap().status,
            JobStatus::Completed
        );
    }
}

/// The take is a prepared statement on each pooled connection. When the
/// schema changes under a running process (here the take's result gains
/// a column, as a newer jobpipe's migration might), a connection whose
/// statement went stale fails one take and prepares it afresh for the
/// next: takes work again after at most one failure per connection.
#[tokio::test]
async fn a_prepared_take_made_stale_by_a_schema_change_is_prepared_afresh() {
    let Some(db) = postgres::database() else {
        return;
    };
    let queue = open(&db).await;
    // Prepare the take on every connection of the pool at once.
    for i in 0..DEFAULT_POOL_SIZE {
        queue.enqueue(job(&format!("before-{i}"), 3)).await.unwrap();
    }
    let endpoints = ep();
    let takes = (0..DEFAULT_POOL_SIZE).map(|_| queue.take("w1", &endpoints, 1, LONG));
    let taken: usize = futures_util::future::join_all(takes)
        .await
        .into_iter()
        .map(|leases| leases.unwrap().len())
        .sum();
    assert!(taken >= 1, "the takes before the change found no job");
    db.psql(
        "ALTER FUNCTION jobpipe.take(text, text[], bigint, bigint) RENAME TO take_before;
         CREATE FUNCTION jobpipe.take(worker text, endpoints text[], slots bigint, lease_ms bigint)
          RETURNS TABLE (job_id text, token text, job_payload text, attempt integer,
                         execution_ms bigint, waited_ms bigint, stall_ms bigint, extra integer)
          LANGUAGE sql AS $$ SELECT t.*, 0 FROM jobpipe.take_before(worker, endpoints, slots, lease_ms) AS t $$",
    );
    let mut failures = 0;
    for i in 0..3 * DEFAULT_POOL_SIZE {
        let id = format!("after-{i}");
        queue.enqueue(job(&id, 3)).await.unwrap();
        loop {
            match queue.take("w1", &ep(), 1, LONG).await {
                Ok(leases) if leases.iter().any(|lease| lease.job_id == id) => break,
                Ok(_) => {}
                Err(e) => {
                    failures += 1;
                    assert!(
                        failures <= DEFAULT_POOL_SIZE,
                        "take failed {failures} times after the change: {e}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn notifications_reach_another_process() {
    let Some(db) = postgres::database() else {
        return;
    };
    let (api, worker) = (open(&db).await, open(&db).await);
    let (mut heard, mut caller) = (worker.subscribe(), api.subscribe());

    api.enqueue(job("n", 3)).await.unwrap();
    wait_for(&mut heard, |e| *e == QueueEvent::Queued).await;
    let lease = worker.take("w1", &ep(), 1, LONG).await.unwrap().remove(0);
    assert_eq!(api.cancel("n").await.unwrap(), Some(JobStatus::Cancelled));
    wait_for(&mut heard, |e| *e == QueueEvent::Cancelled("n".into())).await;
    wait_for(&mut caller, |e| *e == QueueEvent::Finished("n".into())).await;
    assert!(!worker
        .finish("n", &lease.token, Ending::Completed(json!(1)))
        .await
        .unwrap());
    assert_eq!(
        api.status("n").await.unwrap().unwrap().status,
        JobStatus::Cancelled
    );
}

#[tokio::test]
async fn health_counts_workers_across_processes() {
    let Some(db) = postgres::database() else {
        return;
    };
    let (one, two) = (open(&db).await, open(&db).await);
    one.heartbeat(&worker("w1"), 4, 1).await.unwrap();
    two.heartbeat(&worker("w2"), 2, 2).await.unwrap();
    one.enqueue(job("h", 3)).await.unwrap();
    let health = two.health("default").await.unwrap();
    assert_eq!((health.idle, health.running), (3, 3));
    assert_eq!(health.count(JobStatus::InQueue), 1);
    db.psql("UPDATE jobpipe.workers SET seen_at = 0 WHERE id = 'w2'");
    one.sweep().await.unwrap();
    let health = one.health("default").await.unwrap();
    assert_eq!(
        (health.idle, health.running),
        (3, 1),
        "the silent worker is forgotten"
    );
}

#[tokio::test]
async fn one_process_of_many_gets_each_round_of_a_chore() {
    let Some(db) = postgres::database() else {
        return;
    };
    let queues = [open(&db).await, open(&db).await, open(&db).await];
    let hour = Duration::from_secs(3600);
    let claims = queues.iter().map(|q| q.claim_round("test-chore", hour));
    let won = futures_util::future::join_all(claims).await;
    let won: Vec<bool> = won.into_iter().map(Result::unwrap).collect();
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    for queue in &queues {
        assert!(!queue.claim_round("test-chore", hour).await.unwrap());
    }
    assert!(
        queues[1].claim_round("another-chore", hour).await.unwrap(),
        "each chore has rounds of its own"
    );
    // Once the spacing has passed since the last round, the next is due.
    db.psql("UPDATE jobpipe.chores SET done_at = done_at - 3600000 WHERE name = 'test-chore'");
    assert!(queues[2].claim_round("test-chore", hour).await.unwrap());
    assert!(!queues[0].claim_round("test-chore", hour).await.unwrap());
    let by = db.psql("SELECT done_by FROM jobpipe.chores WHERE name = 'test-chore'");
    assert!(by.contains(" pid "), "who did the round last: {by}");
}

#[tokio::test]
async fn refused_credentials_are_an_error_without_the_password() {
    let Some(db) = postgres::database() else {
        return;
    };
    let url = db.url().replace(&db.server.password, "Wr0ngSecret");
    let target = PgTarget::parse(&url, None).unwrap();
    let error = tokio::time::timeout(LONG, PgQueue::open(target))
        .await
        .expect("refused at once, not retried")
        .err()
        .expect("refused");
    let text = error.to_string();
    assert!(matches!(error, QueueError::Open { .. }), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains("Wr0ngSecret"), "{text}");
}

#[tokio::test]
async fn dropped_connections_are_replaced_and_the_listener_comes_back() {
    let Some(db) = postgres::database() else {
        return;
    };
    let queue = open(&db).await;
    let mut events = queue.subscribe();
    queue.enqueue(job("d1", 3)).await.unwrap();
    wait_for(&mut events, |e| *e == QueueEvent::Queued).await;
    let killed = db.psql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    ));
    assert_ne!(killed, "0");
    // The pool's broken connections fail at most one call each; then new
    // ones are made.
    let record = tokio::time::timeout(LONG, async {
        loop {
            if let Ok(record) = queue.status("d1").await {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the queue recovers");
    assert_eq!(record.unwrap().status, JobStatus::InQueue);
    // The listener reconnects and says so with a Queued event.
    wait_for(&mut events, |e| *e == QueueEvent::Queued).await;
    queue.enqueue(job("d2", 3)).await.unwrap();
    wait_for(&mut events, |e| *e == QueueEvent::Queued).await;
}

#[tokio::test]
async fn a_take_never_claims_more_than_asked() {
    let Some(db) = postgres::database() else {
        return;
    };
    let queue = open(&db).await;
    for round in 0..20 {
        for i in 0..3 {
            queue
                .enqueue(job(&format!("t{round}-{i}"), 3))
                .await
                .unwrap();
        }
        let leases = queue.take("w1", &ep(), 1, LONG).await.unwrap();
        assert_eq!(leases.len(), 1, "round {round}");
        assert_eq!(
            db.psql("SELECT count(*) FROM jobpipe.jobs WHERE status = 'IN_PROGRESS'"),
            (round + 1).to_string(),
            "round {round}"
        );
        db.psql("UPDATE jobpipe.jobs SET status = 'CANCELLED' WHERE status = 'IN_QUEUE'");
    }
}

/// Results that finish together are written in one transaction (group
/// commit); a stale lease token among them refuses only its own result.
/// Each written end records its attempt; a handler's error whose job's
/// policy retries errors queues the job again, in the same group.
#[tokio::test]
async fn a_stale_token_in_a_group_of_results_refuses_only_that_result() {
    let Some(db) = postgres::database() else {
        return;
    };
    let queue = open(&db).await;
    // r3, r11, ... end with an error their policy retries; r5, r13, ...
    // with one it does not.
    let retried = |id: &str| id[1..].parse::<u32>().unwrap() % 8 == 3;
    let failed = |id: &str| id[1..].parse::<u32>().unwrap() % 8 == 5;
    for i in 0..64 {
        let mut job = job(&format!("r{i}"), 3);
        // Every other job has a webhook, posted once its end is written.
        if i % 2 == 0 {
            job.webhook = Some("http://127.0.0.1:9/hook".into());
        }
        if retried(&job.id) {
            job.policy.retry.on = RetryOn::of([Failure::Error]);
        }
        queue.enqueue(job).await.unwrap();
    }
    let leases = queue.take("w1", &ep(), 64, LONG).await.unwrap();
    assert_eq!(leases.len(), 64);
    let stale = &leases[17].job_id;
    let finishes = leases.iter().map(|lease| {
        let token = if &lease.job_id == stale {
            "not-the-token".to_owned()
        } else {
            lease.token.clone()
        };
        let output = json!({"done": lease.job_id});
        let queue = &queue;
        async move {
            let ending = if retried(&lease.job_id) || failed(&lease.job_id) {
                Ending::Failed {
                    error: "no".into(),
                    output: None,
                }
            } else {
                Ending::Completed(output)
            };
            let written = queue.finish(&lease.job_id, &token, ending).await;
            (
                lease.job_id.clone(),
                written.expect("the write is answered"),
            )
        }
    });
    let written = futures_util::future::join_all(finishes).await;
    for (id, written) in &written {
        assert_eq!(*written, id != stale, "{id}: written {written}");
        let record = queue.status(id).await.unwrap().unwrap();
        let want = if id == stale {
            JobStatus::InProgress
        } else if retried(id) {
            JobStatus::InQueue
        } else if failed(id) {
            JobStatus::Failed
        } else {
            JobStatus::Completed
        };
        assert_eq!(record.status, want, "{id}");
        let history = queue.job_raw(id).await.unwrap().unwrap().history;
        let outcomes: Vec<&str> = history.iter().map(|a| a.outcome.as_str()).collect();
        let want: &[&str] = match want {
            JobStatus::InProgress => &[],
            JobStatus::Completed => &["completed"],
            _ => &["error"],
        };
        assert_eq!(outcomes, want, "{id}");
        if let Some(attempt) = history.first() {
            assert_eq!(attempt.worker_id.as_deref(), Some("w1"), "{id}");
            assert_eq!(attempt.attempt, 1, "{id}");
        }
    }
    // A webhook post for each written end of a job with a webhook, its
    // body the job's end.
    let hooks = db.psql("SELECT job_id, body FROM jobpipe.webhooks ORDER BY job_id");
    let hooked: Vec<&str> = hooks
        .lines()
        .map(|l| l.split('|').next().unwrap())
        .collect();
    let mut want: Vec<String> = (0..64)
        .filter(|i| i % 2 == 0)
        .map(|i| format!("r{i}"))
        .filter(|id| id != stale)
        .collect();
    want.sort();
    assert_eq!(hooked, want);
    assert!(hooks.contains(r#""output":{"done":"r0"}"#), "{hooks}");
    for line in hooks.lines() {
        let (id, body) = line.split_once('|').unwrap();
        let body: serde_json::Value = serde_json::from_str(body).expect("the body is JSON");
        let want = if failed(id) {
            json!({"id": id, "status": "FAILED", "error": "no"})
        } else {
            json!({"id": id, "status": "COMPLETED", "output": {"done": id}})
        };
        assert_eq!(body, want, "{id}");
    }
}

/// An end written on its own (one statement, no transaction around it)
/// queues the job's webhook with it, and a second end of the same attempt
/// changes nothing.
#[tokio::test]
async fn an_end_written_alone_queues_its_webhook_once() {
    let Some(db) = postgres::database() else {
        return;
    };
    let queue = open(&db).await;
    let mut hooked = job("alone", 3);
    hooked.webhook = Some("http://127.0.0.1:9/hook".into());
    queue.enqueue(hooked).await.unwrap();
    let lease = queue.take("w1", &ep(), 1, LONG).await.unwrap().remove(0);
    let ending = || Ending::Failed {
        error: "bad \"input\"\n".into(),
        output: Some(json!({"partial": [1, 2]})),
    };
    assert!(queue.finish("alone", &lease.token, ending()).await.unwrap());
    assert!(!queue.finish("alone", &lease.token, ending()).await.unwrap());
    let hooks = db.psql("SELECT url, body FROM jobpipe.webhooks WHERE job_id = 'alone'");
    let (url, body) = hooks.split_once('|').expect("one webhook row");
    assert_eq!(url, "http://127.0.0.1:9/hook");
    let body: serde_json::Value = serde_json::from_str(body).expect("the body is JSON");
    assert_eq!(
        body,
        json!({"id": "alone", "status": "FAILED", "error": "bad \"input\"\n",
               "output": {"partial": [1, 2]}})
    );
    let record = queue.status("alone").await.unwrap().unwrap();
    assert_eq!(record.status, JobStatus::Failed);
}

/// Submissions that arrive together are committed together; when a
/// statement or the commit of the group fails, no caller is told its job
/// was queued unless it is: the failing one gets an error, every other
/// one an answer that matches the table.
#[tokio::test]
async fn a_group_whose_commit_fails_answers_no_job_as_queued_that_is_not() {
    let Some(db) = postgres::database() else {
        return;
    };
    let queue = open(&db).await;
    // Fails at COMMIT (a deferred constraint trigger) for one payload, and
    // at the INSERT itself for another.
    db.psql(
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.payload LIKE '%refused-at-commit%' OR NEW.payload LIKE '%refused-now%' THEN
             RAISE EXCEPTION 'refused by the test';
           END IF;
           RETURN NEW;
         END $$;
         CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON jobpipe.jobs
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
           WHEN (NEW.payload LIKE '%refused-at-commit%') EXECUTE FUNCTION public.refuse();
         CREATE TRIGGER refuse_now BEFORE INSERT ON jobpipe.jobs
           FOR EACH ROW WHEN (NEW.payload LIKE '%refused-now%')
           EXECUTE FUNCTION public.refuse();",
    );
    for round in 0..3 {
        let ids: Vec<String> = (0..48).map(|i| format!("g{round}-{i}")).collect();
        let submits = ids.iter().enumerate().map(|(i, id)| {
            let mut job = job(id, 3);
            if i == 7 {
                job.payload = json!({"input": "refused-at-commit"});
            }
            if i == 30 {
                job.payload = json!({"input": "refused-now"});
            }
            let queue = &queue;
            async move { queue.enqueue(job).await }
        });
        let answers = futures_util::future::join_all(submits).await;
        for (i, (id, answer)) in ids.iter().zip(&answers).enumerate() {
            let stored = queue.status(id).await.unwrap();
            match answer {
                Ok(()) => assert!(stored.is_some(), "{id} answered queued but is not stored"),
                Err(e) => {
                    assert!(matches!(e, QueueError::Database(_)), "{id}: {e:?}");
                    assert!(stored.is_none(), "{id} refused but stored");
                }
            }
            assert_eq!(answer.is_err(), i == 7 || i == 30, "{id}: {answer:?}");
        }
    }
}
