//! Black-box tests of the shutdown of a RunPod worker against the stand-in
//! queue: on SIGTERM the running job is delivered and the long poll ends at
//! once, on a second SIGINT the job gets one WorkerShutdown result
//! (delivered or spooled), and a take whose answer is in flight when
//! SIGTERM comes loses no job.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::fake_runpod::{parse_body, FakeRunpod};
use support::shutdown::*;
use support::spooled;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    let mut jp = start(&args, &fake.env(), dir.path());
    let pid = wait_for_pid(&pidfile, Duration::from_secs(10))
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
    let status = jp.wait_async(Duration::from_secs(10)).await;
    let exited = jp.exited_at().expect("exited");
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
async fn second_sigint_fails_the_runpod_job_and_kills_its_handler() {
    let dir = tempdir();
    let tag = new_tag();
    let spool = dir.path().join("spool");
    let fake = FakeRunpod::start(KEY).await;
    let pidfile = dir.path().join("handler.pid");
    fake.push_job(json!({"id": "job-2", "input": {"do": "hang", "pidfile": pidfile}}));
    let mut jp = start(&runpod_args(&spool, &[], &tag), &fake.env(), dir.path());
    let pid = wait_for_pid(&pidfile, Duration::from_secs(10))
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
    let status = jp.wait_async(Duration::from_secs(8)).await;
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
    let mut jp = start(&runpod_args(&spool, &[], &tag), &env, dir.path());
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
    let status = jp.wait_async(Duration::from_secs(10)).await;
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
