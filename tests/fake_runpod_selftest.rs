//! Checks that the fake RunPod job queue used by the integration tests
//! speaks the worker protocol as described.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::fake_runpod::{self, FakeRunpod};

const KEY: &str = "test-key";

fn env_var(fake: &FakeRunpod, name: &str) -> String {
    fake.env()
        .into_iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("{name} missing from env()"))
        .1
}

/// The take URL as a worker builds it from the environment.
fn take_url(fake: &FakeRunpod) -> String {
    env_var(fake, "RUNPOD_WEBHOOK_GET_JOB").replace("$RUNPOD_POD_ID", fake_runpod::POD_ID)
}

/// The done URL for `job` as a worker builds it from the environment.
fn done_url(fake: &FakeRunpod, job: &str) -> String {
    env_var(fake, "RUNPOD_WEBHOOK_POST_OUTPUT")
        .replace("$RUNPOD_POD_ID", fake_runpod::POD_ID)
        .replace("$ID", job)
}

#[tokio::test]
async fn env_follows_the_protocol() {
    let fake = FakeRunpod::start(KEY).await;
    let base = fake.base_url();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    assert_eq!(
        env_var(&fake, "RUNPOD_WEBHOOK_GET_JOB"),
        format!("{base}/v2/ep/job-take/$RUNPOD_POD_ID?gpu=TEST")
    );
    assert_eq!(
        env_var(&fake, "RUNPOD_WEBHOOK_POST_OUTPUT"),
        format!("{base}/v2/ep/job-done/$RUNPOD_POD_ID/$ID?gpu=TEST")
    );
    assert_eq!(
        env_var(&fake, "RUNPOD_WEBHOOK_POST_STREAM"),
        format!("{base}/v2/ep/job-stream/$RUNPOD_POD_ID/$ID?gpu=TEST")
    );
    assert_eq!(
        env_var(&fake, "RUNPOD_WEBHOOK_PING"),
        format!("{base}/v2/ep/ping/$RUNPOD_POD_ID?gpu=TEST")
    );
    assert_eq!(env_var(&fake, "RUNPOD_AI_API_KEY"), KEY);
    assert_eq!(env_var(&fake, "RUNPOD_POD_ID"), "pod-1");
}

#[tokio::test]
async fn take_then_post_result_is_recorded() {
    let fake = FakeRunpod::start(KEY).await;
    let client = reqwest::Client::new();
    fake.push_job(json!({"id": "job-1", "input": {"n": 1}, "webhook": "http://x"}));
    assert_eq!(fake.queued(), 1);

    let answer = client
        .get(format!("{}&job_in_progress=0", take_url(&fake)))
        .header("Authorization", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let job: Value = answer.json().await.unwrap();
    assert_eq!(
        job,
        json!({"id": "job-1", "input": {"n": 1}, "webhook": "http://x"})
    );
    assert_eq!(fake.queued(), 0);

    let take = &fake.takes()[0];
    assert_eq!(take.method, "GET");
    assert_eq!(take.status, Some(200));
    assert_eq!(fake_runpod::query(take, "gpu").as_deref(), Some("TEST"));
    assert_eq!(
        fake_runpod::query(take, "job_in_progress").as_deref(),
        Some("0")
    );

    // A progress update is recorded but is not a result.
    let answer = client
        .post(format!("{}&isStream=false", done_url(&fake, "job-1")))
        .header("Authorization", KEY)
        .body(r#"{"status": "IN_PROGRESS", "output": "half"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(fake.progress_posts("job-1").len(), 1);
    assert!(fake.results().is_empty());

    let poster = {
        let client = client.clone();
        let url = format!("{}&isStream=false", done_url(&fake, "job-1"));
        tokio::spawn(async move {
            client
                .post(url)
                .header("Authorization", KEY)
                .header("X-Request-ID", "job-1")
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(r#"{"output": {"sum": 2}}"#)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let results = fake.wait_for_results(1, Duration::from_secs(5)).await;
    assert_eq!(poster.await.unwrap(), StatusCode::OK);
    assert_eq!(results.len(), 1);
    let result = &results[0];
    assert_eq!(
        fake_runpod::parse_body(result),
        json!({"output": {"sum": 2}})
    );
    assert_eq!(result.header("x-request-id"), Some("job-1"));
    assert_eq!(fake_runpod::job_id(result).as_deref(), Some("job-1"));
    assert_eq!(fake.results_for("job-1").len(), 1);
    assert!(fake.results_for("job-2").is_empty());
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn empty_take_long_polls_then_answers_204() {
    let fake = FakeRunpod::start(KEY).await;
    let client = reqwest::Client::new();
    fake.set_long_poll(Duration::from_millis(300));

    let started = Instant::now();
    let answer = client
        .get(take_url(&fake))
        .header("Authorization", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A job pushed during the long poll is handed out at once.
    let pusher = fake.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        pusher.push_job(json!({"id": "late", "input": null}));
    });
    let started = Instant::now();
    let answer = client
        .get(take_url(&fake))
        .header("Authorization", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(answer.json::<Value>().await.unwrap()["id"], "late");
}

#[tokio::test]
async fn wrong_or_missing_key_is_401_and_recorded() {
    let fake = FakeRunpod::start(KEY).await;
    let client = reqwest::Client::new();
    fake.push_job(json!({"id": "job-1", "input": 1}));

    let wrong = client
        .get(take_url(&fake))
        .header("Authorization", format!("Bearer {KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let missing = client.get(take_url(&fake)).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);

    assert_eq!(fake.queued(), 1, "a rejected take must not hand out a job");
    let takes = fake.takes();
    assert_eq!(takes.len(), 2);
    assert!(takes.iter().all(|t| t.status == Some(401)));
    assert_eq!(takes[0].header("authorization"), Some("Bearer test-key"));
}

#[tokio::test]
async fn batch_take_answers_up_to_batch_size_jobs() {
    let fake = FakeRunpod::start(KEY).await;
    let client = reqwest::Client::new();
    for i in 0..3 {
        fake.push_job(json!({"id": format!("job-{i}"), "input": i}));
    }
    let batch_url = take_url(&fake).replace("/job-take/", "/job-take-batch/");

    let answer = client
        .get(format!("{batch_url}&batch_size=2&job_in_progress=0"))
        .header("Authorization", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let jobs: Value = answer.json().await.unwrap();
    assert_eq!(
        jobs,
        json!([{"id": "job-0", "input": 0}, {"id": "job-1", "input": 1}])
    );

    let answer = client
        .get(format!("{batch_url}&batch_size=5&job_in_progress=1"))
        .header("Authorization", KEY)
        .send()
        .await
        .unwrap();
    let jobs: Value = answer.json().await.unwrap();
    assert_eq!(jobs, json!([{"id": "job-2", "input": 2}]));

    let answer = client
        .get(format!("{batch_url}&batch_size=5&job_in_progress=0"))
        .header("Authorization", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);

    let takes = fake.takes();
    assert_eq!(takes.len(), 3);
    assert_eq!(
        fake_runpod::query(&takes[0], "batch_size").as_deref(),
        Some("2")
    );
}

#[tokio::test]
async fn outage_answers_503_everywhere_then_recovers() {
    let fake = FakeRunpod::start(KEY).await;
    let client = reqwest::Client::new();
    fake.push_job(json!({"id": "job-1", "input": 1}));
    fake.outage_for(Duration::from_millis(300));

    let ping_url = env_var(&fake, "RUNPOD_WEBHOOK_PING").replace("$RUNPOD_POD_ID", "pod-1");
    for url in [take_url(&fake), ping_url.clone()] {
        let answer = client
            .get(&url)
            .header("Authorization", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE, "{url}");
    }
    let answer = client
        .post(done_url(&fake, "job-1"))
        .header("Authorization", KEY)
        .body(r#"{"output": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(fake.results().is_empty());
    assert_eq!(fake.queued(), 1);

    tokio::time::sleep(Duration::from_millis(350)).await;
    let answer = client
        .get(take_url(&fake))
        .header("Authorization", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let answer = client
        .get(format!("{ping_url}&job_id=job-1"))
        .header("Authorization", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(fake.pings().len(), 2);
}

#[tokio::test]
async fn failed_done_posts_and_forced_take_status() {
    let fake = FakeRunpod::start(KEY).await;
    let client = reqwest::Client::new();
    fake.fail_done_posts(1);
    for expected in [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::OK] {
        let answer = client
            .post(done_url(&fake, "job-1"))
            .header("Authorization", KEY)
            .body(r#"{"error": "boom"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), expected);
    }
    assert_eq!(fake.results_for("job-1").len(), 1);

    fake.push_job(json!({"id": "job-2", "input": 2}));
    fake.set_take_status(Some(429));
    let answer = client
        .get(take_url(&fake))
        .header("Authorization", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(fake.queued(), 1);
    fake.set_take_status(None);

    fake.push_raw("not json");
    let answer = client
        .get(take_url(&fake))
        .header("Authorization", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.json::<Value>().await.unwrap()["id"], "job-2");
    let answer = client
        .get(take_url(&fake))
        .header("Authorization", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.text().await.unwrap(), "not json");
}

#[tokio::test]
async fn stop_poll_and_stream_posts() {
    let fake = FakeRunpod::start(KEY).await;
    let client = reqwest::Client::new();
    let stop_url = take_url(&fake).replace("/job-take/", "/job-stop/");

    let started = Instant::now();
    let answer = client
        .get(&stop_url)
        .header("Authorization", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    assert!(started.elapsed() >= fake_runpod::STOP_LONG_POLL);

    let stopper = fake.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stopper.stop_job("job-7");
    });
    let answer = client
        .get(&stop_url)
        .header("Authorization", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        answer.json::<Value>().await.unwrap(),
        json!({"jobsToStop": ["job-7"]})
    );

    let stream_url = env_var(&fake, "RUNPOD_WEBHOOK_POST_STREAM")
        .replace("$RUNPOD_POD_ID", "pod-1")
        .replace("$ID", "job-7");
    let answer = client
        .post(stream_url)
        .header("Authorization", KEY)
        .body(r#"{"output": "part"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let posts = fake.stream_posts("job-7");
    assert_eq!(posts.len(), 1);
    assert_eq!(
        fake_runpod::parse_body(&posts[0]),
        json!({"output": "part"})
    );
    assert!(fake.results().is_empty());
}

#[tokio::test]
async fn delayed_done_counts_once_answered() {
    let fake = FakeRunpod::start(KEY).await;
    let client = reqwest::Client::new();
    fake.set_done_delay(Duration::from_millis(300));
    let url = done_url(&fake, "job-1");
    let poster = tokio::spawn(async move {
        client
            .post(url)
            .header("Authorization", KEY)
            .body(r#"{"output": null}"#)
            .send()
            .await
            .unwrap()
            .status()
    });
    let received = fake
        .wait_until(Duration::from_secs(5), |f| !f.requests().is_empty())
        .await;
    assert!(received);
    assert!(fake.results().is_empty(), "not answered yet");
    assert_eq!(fake.requests()[0].status, None);
    let results = fake.wait_for_results(1, Duration::from_secs(5)).await;
    assert_eq!(results.len(), 1);
    assert!(results[0].at.elapsed() >= Duration::from_millis(250));
    assert_eq!(poster.await.unwrap(), StatusCode::OK);
}
