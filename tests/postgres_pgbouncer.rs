//! A fleet behind a real PgBouncer in transaction mode: every queue
//! statement must work whichever server connection it lands on, so none
//! may rely on a named prepared statement, and notifications come from a
//! direct listening connection (`--queue-listen-url URL`) or from polling
//! (`--queue-listen-url off`).

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cluster::{api_with, count, submit, wait_count, worker_with_args};
use support::fixtures::fake_handler;
use support::{pgbouncer, postgres};

#[tokio::test]
async fn a_fleet_behind_pgbouncer_in_transaction_mode_runs_every_job_once() {
    let Some(db) = postgres::database() else {
        return;
    };
    // Two server connections for the whole fleet: consecutive statements
    // of one process often land on different ones.
    let Some(bouncer) = pgbouncer::start(&db, 2) else {
        return;
    };
    let pooled = bouncer.url();
    let direct = db.url();
    let (api, base) = api_with(&pooled, &["--queue-listen-url", "off"]).await;
    let handler = ["python3".to_owned(), fake_handler()];
    let listening = worker_with_args(
        "w-listening",
        &pooled,
        &["--queue-listen-url", &direct],
        &handler,
    );
    let polling = worker_with_args(
        "w-polling",
        &pooled,
        &["--queue-listen-url", "off"],
        &handler,
    );
    let daemons = [&api, &listening, &polling];

    let total = 200;
    let ids = submit(&base, total, json!({"do": "sleep", "ms": 5})).await;
    assert_eq!(ids.len(), total);
    let limit = Duration::from_secs(180);
    wait_count(&db, "status = 'COMPLETED'", total, limit, &daemons).await;
    assert_eq!(count(&db, "status = 'COMPLETED' AND attempts = 1"), total);
    let by_worker = db
        .psql("SELECT worker_id, count(*) FROM jobpipe.jobs GROUP BY worker_id ORDER BY worker_id");
    assert!(
        by_worker.contains("w-listening") && by_worker.contains("w-polling"),
        "both workers ran jobs: {by_worker}"
    );

    // /runsync through an API that polls: answered with the result.
    let client = reqwest::Client::new();
    for i in 0..5 {
        let started = Instant::now();
        let answer: Value = client
            .post(format!("{base}/runsync"))
            .json(&json!({"input": {"n": i}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "COMPLETED", "{answer}");
        assert_eq!(answer["output"]["n"], i, "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "runsync took {:?}",
            started.elapsed()
        );
    }
    let errors: Vec<String> = daemons
        .iter()
        .flat_map(|d| d.log().lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| line.contains("prepared statement") || line.contains("ERROR"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{}", bouncer.log());
}
