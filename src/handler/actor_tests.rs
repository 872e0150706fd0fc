//! Unit tests of the persistent-handler actor against a scripted fake
//! process (`fake.rs`), on tokio's paused clock: no child is spawned and
//! no test waits in real time. What a user sees (error texts, which
//! process is replaced, how it is stopped) is checked here; the same
//! behaviour with real processes is covered by the integration tests.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::actor::run_with;
use super::fake::{output, Act, FakeSpawner, Record};
use super::{ActorContext, FailureStreak, HandlerConfig, Identity, RoomShare};
use crate::error::FatalError;
use crate::job::{events, Job, JobEvent, JobEvents, JobResult, JobTicket, Outcome, Registry};
use crate::metrics::Metrics;
use crate::os::ExitStatus;

/// A handler configuration with one job per process and no limits.
fn config() -> HandlerConfig {
    HandlerConfig {
        argv: vec!["fake-handler".into()],
        mode: crate::handler::config::Mode::Worker,
        concurrency: 1,
        jobs_per_handler: 1,
        startup_timeout: Duration::from_secs(30),
        job_timeout: None,
        job_timeout_is_default: false,
        stall_timeout: None,
        kill_grace: Duration::from_secs(5),
        refresh_worker: false,
        keep_handler_on_error: false,
        max_output_size: 1024 * 1024,
        pass_secrets: false,
        max_handler_failures: None,
        max_jobs: None,
        max_memory: None,
        spill: None,
        warmup: None,
    }
}

struct NoRegistry;

impl Registry for NoRegistry {
    fn finished(&self, _: &str, _: &JobResult) {}
}

/// One actor running against a fake, and the pool's side of it.
struct Harness {
    queue: async_channel::Sender<JobTicket>,
    stop: CancellationToken,
    force: CancellationToken,
    metrics: Arc<Metrics>,
    identity: Arc<Identity>,
    fake: FakeSpawner,
    actor: JoinHandle<()>,
    _fatal: mpsc::UnboundedReceiver<FatalError>,
}

impl Harness {
    fn start(config: HandlerConfig, fake: FakeSpawner) -> Harness {
        let (queue, jobs) = async_channel::unbounded();
        let (fatal_tx, fatal) = mpsc::unbounded_channel();
        let (stop, force) = (CancellationToken::new(), CancellationToken::new());
        let metrics = Arc::new(Metrics::new());
        let identity = Arc::new(Identity {
            worker_id: "w".into(),
            hostname: "h".into(),
        });
        let ctx = ActorContext {
            index: 0,
            config: Arc::new(config),
            identity: identity.clone(),
            queue: jobs,
            fatal: fatal_tx,
            stop: stop.clone(),
            force: force.clone(),
            metrics: metrics.clone(),
            room: RoomShare::new(Arc::new(watch::channel(0).0)),
            failures: Arc::new(FailureStreak::default()),
        };
        Harness {
            actor: tokio::spawn(run_with(ctx, fake.clone())),
            queue,
            stop,
            force,
            metrics,
            identity,
            fake,
            _fatal: fatal,
        }
    }

    /// Hands the job `id` to the actor; its events and its stop token.
    fn submit(&self, id: &str) -> (JobEvents, CancellationToken) {
        let job = Job::from_value(json!({"id": id, "input": {}})).unwrap();
        let (tx, rx) = events::channel(None);
        let cancel = CancellationToken::new();
        let ticket = JobTicket::new(
            job,
            cancel.clone(),
            tx,
            self.identity.clone(),
            Arc::new(NoRegistry),
        );
        self.queue.try_send(ticket).unwrap();
        (rx, cancel)
    }

    /// Waits until process `n` has received `lines` lines.
    async fn received(&self, n: usize, lines: usize) {
        while self.fake.received(n).len() < lines {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn restarts(&self, reason: &str) -> u64 {
        self.metrics.snapshot().handler_restarts[reason]
    }
}

/// The job's final result, after any updates.
async fn result(events: &mut JobEvents) -> JobResult {
    loop {
        match events.recv().await.expect("a final result") {
            JobEvent::Done(result) => return result,
            JobEvent::Progress(_) | JobEvent::Stream(_) => {}
        }
    }
}

/// The error report of a job jobpipe failed.
fn report(result: &JobResult) -> Value {
    match &result.outcome {
        Outcome::Error { error, .. } => serde_json::from_str(error).expect("an error report"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn output_of(result: &JobResult) -> Value {
    match &result.outcome {
        Outcome::Output(json) => json.to_value(),
        other => panic!("expected an output, got {other:?}"),
    }
}

/// A handler that answers every job with its id.
fn echo(_: usize, line: &Value) -> Vec<Act> {
    vec![output(line, line["id"].clone())]
}

#[tokio::test(start_paused = true)]
async fn a_crash_while_busy_fails_the_job_and_starts_a_new_process() {
    let fake = FakeSpawner::new(|n, line| match n {
        1 => vec![Act::Exit(ExitStatus::Code(3))],
        _ => echo(n, line),
    })
    .stderr("Traceback: boom");
    let h = Harness::start(config(), fake);
    let (mut a, _) = h.submit("a");
    let failed = report(&result(&mut a).await);
    assert_eq!(failed["error_type"], "HandlerCrashed");
    assert_eq!(failed["error_message"], "handler exited with code 3");
    assert_eq!(failed["error_traceback"], "Traceback: boom");

    let (mut b, _) = h.submit("b");
    assert_eq!(output_of(&result(&mut b).await), json!("b"));
    assert_eq!(h.fake.spawned(), 2);
    assert_eq!(h.fake.ends(), [Record::Stopped(1, Duration::from_secs(5))]);
    assert_eq!(h.restarts("crashed"), 1);
}

#[tokio::test(start_paused = true)]
async fn refresh_worker_replaces_the_process_after_the_result() {
    let fake = FakeSpawner::new(|n, line| match n {
        1 => vec![Act::Say(
            json!({"id": line["id"], "output": 1, "refresh_worker": true}),
        )],
        _ => echo(n, line),
    });
    let h = Harness::start(config(), fake);
    let (mut a, _) = h.submit("a");
    let done = result(&mut a).await;
    assert_eq!(output_of(&done), json!(1));
    assert!(done.refresh_worker);

    let (mut b, _) = h.submit("b");
    result(&mut b).await;
    let log = h.fake.log();
    let at = |record: &Record| log.iter().position(|r| r == record).unwrap();
    assert!(at(&Record::Stopped(1, Duration::from_secs(5))) < at(&Record::Spawned(2)));
    assert_eq!(h.fake.received(2)[0]["id"], "b");
    assert_eq!(h.restarts("refresh"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_pool_stop_lets_jobs_in_flight_finish_then_stops_the_process() {
    let fake = FakeSpawner::new(|_, line| {
        vec![
            Act::Wait(Duration::from_secs(1)),
            output(line, json!("late")),
        ]
    });
    let h = Harness::start(
        HandlerConfig {
            jobs_per_handler: 2,
            ..config()
        },
        fake,
    );
    let (mut a, _) = h.submit("a");
    let (mut b, _) = h.submit("b");
    h.received(1, 2).await;
    let stopped_at = Instant::now();
    h.stop.cancel();
    h.submit("c");
    assert_eq!(output_of(&result(&mut a).await), json!("late"));
    assert_eq!(output_of(&result(&mut b).await), json!("late"));
    assert!(stopped_at.elapsed() >= Duration::from_millis(900));
    h.actor.await.unwrap();
    assert_eq!(h.fake.ends(), [Record::Stopped(1, Duration::from_secs(5))]);
    assert_eq!(h.fake.spawned(), 1);
    assert_eq!(h.queue.len(), 1, "no job is taken once the pool stops");
}

#[tokio::test(start_paused = true)]
async fn a_cancel_not_honoured_within_the_grace_replaces_the_process() {
    let fake = FakeSpawner::new(|_, _| vec![]);
    let h = Harness::start(
        HandlerConfig {
            jobs_per_handler: 2,
            kill_grace: Duration::from_secs(3),
            ..config()
        },
        fake,
    );
    let (mut a, cancel_a) = h.submit("a");
    let (mut b, _) = h.submit("b");
    h.received(1, 2).await;
    let cancelled_at = Instant::now();
    cancel_a.cancel();
    assert_eq!(result(&mut a).await.outcome, Outcome::Cancelled);
    assert!(cancelled_at.elapsed() >= Duration::from_secs(3));
    assert_eq!(h.fake.received(1)[2], json!({"id": "a", "cancel": true}));
    let other = report(&result(&mut b).await);
    assert_eq!(other["error_type"], "HandlerRestarted");
    assert_eq!(
        other["error_message"],
        "the handler process was restarted because job a did not stop within 3s of being cancelled"
    );
    while h.fake.spawned() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(h.fake.ends(), [Record::Stopped(1, Duration::from_secs(3))]);
    assert_eq!(h.restarts("cancelled"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_answered_within_the_grace_keeps_the_process() {
    let fake = FakeSpawner::new(|_, line| match line.get("cancel") {
        Some(_) => vec![Act::Say(json!({"id": line["id"], "error": "stopped"}))],
        None => vec![],
    });
    let h = Harness::start(
        HandlerConfig {
            jobs_per_handler: 2,
            ..config()
        },
        fake,
    );
    let (mut a, cancel_a) = h.submit("a");
    h.received(1, 1).await;
    cancel_a.cancel();
    assert_eq!(result(&mut a).await.outcome, Outcome::Cancelled);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.fake.spawned(), 1);
    assert!(h.fake.ends().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_cancel_with_one_job_per_process_replaces_it_at_once() {
    let fake = FakeSpawner::new(|n, line| match n {
        1 => vec![],
        _ => echo(n, line),
    });
    let h = Harness::start(config(), fake);
    let (mut a, cancel_a) = h.submit("a");
    h.received(1, 1).await;
    let cancelled_at = Instant::now();
    cancel_a.cancel();
    assert_eq!(result(&mut a).await.outcome, Outcome::Cancelled);
    assert!(cancelled_at.elapsed() < Duration::from_secs(1));
    assert_eq!(h.fake.received(1).len(), 1, "no cancel line is sent");
    let (mut b, _) = h.submit("b");
    result(&mut b).await;
    assert_eq!(h.fake.ends(), [Record::Stopped(1, Duration::from_secs(5))]);
    assert_eq!(h.restarts("cancelled"), 1);
}

#[tokio::test(start_paused = true)]
async fn oversized_output_fails_the_job_and_replaces_the_process() {
    let fake = FakeSpawner::new(|n, line| match n {
        1 => vec![Act::SayTooLong {
            len: 5000,
            prefix: format!(r#"{{"id": {}, "output": "xxxx"#, line["id"]),
        }],
        2 => vec![output(line, json!("x".repeat(200)))],
        _ => echo(n, line),
    });
    let h = Harness::start(
        HandlerConfig {
            max_output_size: 100,
            ..config()
        },
        fake,
    );
    let (mut a, _) = h.submit("a");
    let failed = report(&result(&mut a).await);
    assert_eq!(failed["error_type"], "OutputTooLarge");
    assert_eq!(
        failed["error_message"],
        "the handler's result is more than the 100 byte limit (--max-output-size; 5000 bytes were read); store large outputs elsewhere and return a reference"
    );
    // A whole line over the limit is refused the same way.
    let (mut b, _) = h.submit("b");
    let failed = report(&result(&mut b).await);
    assert_eq!(failed["error_type"], "OutputTooLarge");
    assert!(failed["error_message"].as_str().unwrap().starts_with(
        "the handler's result is more than the 100 byte limit (--max-output-size; 222 bytes"
    ));
    let (mut c, _) = h.submit("c");
    assert_eq!(output_of(&result(&mut c).await), json!("c"));
    assert_eq!(h.fake.spawned(), 3);
    assert_eq!(h.restarts("job_failed"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_job_past_its_timeout_fails_and_the_process_is_replaced() {
    let fake = FakeSpawner::new(|n, line| match n {
        1 => vec![Act::SayText("loading model".into())],
        _ => echo(n, line),
    });
    let h = Harness::start(
        HandlerConfig {
            job_timeout: Some(Duration::from_secs(2)),
            ..config()
        },
        fake,
    );
    let started = Instant::now();
    let (mut a, _) = h.submit("a");
    let failed = report(&result(&mut a).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_millis(2100));
    assert_eq!(failed["error_type"], "JobTimeout");
    assert_eq!(
        failed["error_message"],
        "job timed out after 2s (--job-timeout); the handler wrote 1 line(s) to stdout that are not protocol lines, the last: \"loading model\" (protocol lines are JSON objects; print logs to stderr)"
    );
    let (mut b, _) = h.submit("b");
    assert_eq!(output_of(&result(&mut b).await), json!("b"));
    assert_eq!(h.fake.ends(), [Record::Stopped(1, Duration::from_secs(5))]);
    assert_eq!(h.restarts("timeout"), 1);
}

#[tokio::test(start_paused = true)]
async fn updates_for_an_unknown_job_are_ignored() {
    let fake = FakeSpawner::new(|_, line| {
        vec![
            Act::Say(json!({"id": "ghost", "progress": 50})),
            Act::Say(json!({"id": "ghost", "stream": "part"})),
            output(line, json!("done")),
        ]
    });
    let h = Harness::start(config(), fake);
    let (mut a, _) = h.submit("a");
    let mut updates = 0;
    let done = loop {
        match a.recv().await.unwrap() {
            JobEvent::Done(done) => break done,
            _ => updates += 1,
        }
    };
    assert_eq!(output_of(&done), json!("done"));
    assert_eq!(updates, 0);
    assert_eq!(h.fake.spawned(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_answer_for_an_unknown_job_is_ignored_by_a_multi_job_handler() {
    let fake = FakeSpawner::new(|_, line| {
        vec![
            output(&json!({"id": "ghost"}), json!(0)),
            output(line, json!("done")),
        ]
    });
    let h = Harness::start(
        HandlerConfig {
            jobs_per_handler: 2,
            ..config()
        },
        fake,
    );
    let (mut a, _) = h.submit("a");
    assert_eq!(output_of(&result(&mut a).await), json!("done"));
    assert_eq!(h.fake.spawned(), 1);
    assert!(h.fake.ends().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_answer_for_another_job_is_a_protocol_error_with_one_job_per_process() {
    let fake = FakeSpawner::new(|n, line| match n {
        1 => vec![output(&json!({"id": "ghost"}), json!(0))],
        _ => echo(n, line),
    });
    let h = Harness::start(config(), fake);
    let (mut a, _) = h.submit("a");
    let failed = report(&result(&mut a).await);
    assert_eq!(failed["error_type"], "ProtocolError");
    assert_eq!(
        failed["error_message"],
        "protocol error: the handler answered for job \"ghost\" while running job \"a\""
    );
    let (mut b, _) = h.submit("b");
    result(&mut b).await;
    assert_eq!(h.restarts("protocol_error"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_forced_stop_kills_the_process_and_fails_its_job() {
    let h = Harness::start(config(), FakeSpawner::new(|_, _| vec![]));
    let (mut a, _) = h.submit("a");
    h.received(1, 1).await;
    h.force.cancel();
    let failed = report(&result(&mut a).await);
    assert_eq!(failed["error_type"], "WorkerShutdown");
    assert_eq!(
        failed["error_message"],
        "the worker was shut down (forced) while the job was running"
    );
    h.actor.await.unwrap();
    assert_eq!(h.fake.ends(), [Record::Killed(1)]);
}

#[tokio::test(start_paused = true)]
async fn an_exit_while_idle_starts_a_new_process() {
    let fake = FakeSpawner::new(echo).on_start(|n| match n {
        1 => vec![
            Act::Say(json!({"ready": true})),
            Act::Wait(Duration::from_secs(1)),
            Act::Exit(ExitStatus::Code(0)),
        ],
        _ => vec![Act::Say(json!({"ready": true}))],
    });
    let h = Harness::start(config(), fake);
    while h.fake.spawned() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (mut a, _) = h.submit("a");
    assert_eq!(output_of(&result(&mut a).await), json!("a"));
    assert_eq!(h.fake.received(1).len(), 0);
    assert_eq!(h.restarts("exited_idle"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_job_its_handler_is_silent_on_fails_as_stalled_and_the_process_is_replaced() {
    // Process 1 is alive but hung: it says nothing about the job.
    let fake = FakeSpawner::new(|n, line| match n {
        1 => vec![],
        _ => echo(n, line),
    });
    let h = Harness::start(
        HandlerConfig {
            stall_timeout: Some(Duration::from_secs(3)),
            ..config()
        },
        fake,
    );
    let started = Instant::now();
    let (mut a, _) = h.submit("a");
    let failed = report(&result(&mut a).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(3) && took < Duration::from_millis(3100));
    assert_eq!(failed["error_type"], "Stalled");
    let message = failed["error_message"].as_str().unwrap();
    assert!(message.starts_with("Stalled: the handler sent nothing for this job"));
    assert!(message.contains("for 3s (--stall-timeout"), "{message}");
    let (mut b, _) = h.submit("b");
    assert_eq!(output_of(&result(&mut b).await), json!("b"));
    assert_eq!(h.fake.ends(), [Record::Stopped(1, Duration::from_secs(5))]);
    assert_eq!(h.restarts("stalled"), 1);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_and_progress_keep_a_long_silent_job_alive() {
    // Ten seconds of work with a sign of life every two: never stalled at 3.
    let fake = FakeSpawner::new(|_, line| {
        let mut acts = Vec::new();
        for step in 0..5 {
            acts.push(Act::Wait(Duration::from_secs(2)));
            acts.push(Act::Say(match step % 2 {
                0 => json!({"id": line["id"], "heartbeat": true}),
                _ => json!({"id": line["id"], "progress": step}),
            }));
        }
        acts.push(output(line, json!("done")));
        acts
    });
    let h = Harness::start(
        HandlerConfig {
            stall_timeout: Some(Duration::from_secs(3)),
            ..config()
        },
        fake,
    );
    let (mut a, _) = h.submit("a");
    assert_eq!(output_of(&result(&mut a).await), json!("done"));
    assert_eq!(h.fake.spawned(), 1);
    assert_eq!(h.restarts("stalled"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_jobs_own_stall_timeout_wins_over_the_workers() {
    let fake = FakeSpawner::new(|_, _| vec![]);
    let h = Harness::start(
        HandlerConfig {
            stall_timeout: Some(Duration::from_secs(60)),
            ..config()
        },
        fake,
    );
    let mut job = Job::from_value(json!({"id": "a", "input": {}})).unwrap();
    job.stall_timeout = Some(Duration::from_secs(1));
    let (tx, mut a) = events::channel(None);
    let ticket = JobTicket::new(
        job,
        CancellationToken::new(),
        tx,
        h.identity.clone(),
        Arc::new(NoRegistry),
    );
    h.queue.try_send(ticket).unwrap();
    let started = Instant::now();
    let failed = report(&result(&mut a).await);
    assert!(started.elapsed() < Duration::from_millis(1100));
    assert!(failed["error_message"]
        .as_str()
        .unwrap()
        .contains("for 1s (--stall-timeout"));
}

#[tokio::test(start_paused = true)]
async fn a_stalled_job_of_a_multi_job_handler_fails_and_the_process_is_replaced_after_the_others() {
    // Job "a" gets no answer; "b" answers after 5 s.
    let fake = FakeSpawner::new(|n, line| match (n, line["id"].as_str()) {
        (1, Some("a")) => vec![],
        (1, Some("b")) => vec![Act::Wait(Duration::from_secs(5)), output(line, json!("b"))],
        (1, _) => vec![],
        _ => echo(n, line),
    });
    let h = Harness::start(
        HandlerConfig {
            jobs_per_handler: 2,
            stall_timeout: Some(Duration::from_secs(2)),
            ..config()
        },
        fake,
    );
    let (mut a, _) = h.submit("a");
    h.received(1, 1).await;
    tokio::time::advance(Duration::from_millis(1500)).await;
    let (mut b, _) = h.submit("b");
    assert_eq!(report(&result(&mut a).await)["error_type"], "Stalled");
    // The hung process was asked to drop the job.
    assert!(h
        .fake
        .received(1)
        .contains(&json!({"id": "a", "cancel": true})));
    // "b" is silent for 5 s, past the limit too: it stalls as well.
    assert_eq!(report(&result(&mut b).await)["error_type"], "Stalled");
    let (mut c, _) = h.submit("c");
    assert_eq!(output_of(&result(&mut c).await), json!("c"));
    assert_eq!(h.fake.spawned(), 2);
    assert_eq!(h.restarts("stalled"), 1);
}
