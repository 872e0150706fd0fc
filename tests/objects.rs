//! Payloads of any size through an S3-compatible object store, against a
//! real one (moto's server on a loopback port, tests/support/s3.rs) and
//! the real jobpipe binary: an output over the threshold is uploaded, the
//! job's output becomes a reference, and what the presigned URL gives back
//! is what the handler wrote, on the self-hosted endpoint, on RunPod and
//! through the official runpod client.

mod support;

use std::path::Path;
use std::time::Instant;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::daemon::daemon;
use support::fake_runpod::{parse_body, FakeRunpod, ENDPOINT_ID};
use support::objects::{fixture, Server, KEY, WAIT};
use support::prereq::venv_python;
use support::s3::{fetch, sha256_hex, S3Server};
/// The output size the tests offload: over the default threshold and
/// RunPod's result limit, small enough for a loaded CI machine.
const LARGE: usize = 50_000_000;
/// The output the memory test offloads: ten times RunPod's result limit.
const HUGE: usize = 200_000_000;
/// jobpipe's peak resident memory while it offloads [`HUGE`].
const PEAK_RSS_MAX_KIB: u64 = 64 * 1024;

/// Checks a reference against what the handler noted and what the URL gives.
async fn check_reference(output: &Value, note: &Path, size: usize) -> Value {
    let object = &output["object"];
    assert_eq!(object["contentType"], "application/json", "{output}");
    // The output's JSON text: the string and its two quotes.
    assert_eq!(object["size"], size + 2, "{output}");
    let noted = std::fs::read_to_string(note).expect("the handler noted its output's hash");
    assert_eq!(object["sha256"], noted.as_str(), "{output}");
    let url = object["url"].as_str().expect("a presigned URL");
    let started = Instant::now();
    let (status, body) = fetch(url).await;
    eprintln!(
        "fetched {} bytes back in {:.1}s",
        body.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        status,
        200,
        "{}",
        String::from_utf8_lossy(&body[..body.len().min(500)])
    );
    assert_eq!(body.len(), size + 2);
    assert_eq!(sha256_hex(&body), noted);
    object.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_endpoint_output_is_offloaded_and_a_small_one_stays_inline() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &s3, &[]).await;
    let note = dir.path().join("large.sha256");
    let large = server
        .submit(json!({"size": HUGE, "note": note.display().to_string()}))
        .await;
    let small = server.submit(json!({"size": 1000})).await;
    let status = server.finished(&large).await;
    assert_eq!(status["status"], "COMPLETED", "{status}");
    // The handler's line went to a file as it was read and was uploaded
    // from there: jobpipe never held the output.
    let peak = support::peak_rss_kib(server.daemon.pid());
    eprintln!(
        "jobpipe's peak RSS while offloading {HUGE} bytes: {} MiB",
        peak / 1024
    );
    assert!(
        peak > 0 && peak < PEAK_RSS_MAX_KIB,
        "jobpipe's peak RSS was {peak} KiB offloading a {HUGE} byte output (limit {PEAK_RSS_MAX_KIB} KiB)"
    );
    let object = check_reference(&status["output"], &note, HUGE).await;
    assert_eq!(
        object["key"],
        format!("default/{large}/output.json"),
        "the key names the endpoint and the job"
    );
    let status = server.finished(&small).await;
    assert_eq!(status["status"], "COMPLETED", "{status}");
    assert_eq!(status["output"].as_str().map(str::len), Some(1000));
    assert_eq!(server.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runpod_worker_offloads_with_runpods_bucket_variables() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let fake = FakeRunpod::start(KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let note = dir.path().join("large.sha256");
    fake.push_job(
        json!({"id": "big-1", "input": {"size": LARGE, "note": note.display().to_string()}}),
    );
    let mut worker = daemon()
        .envs(fake.env())
        .env("RUNPOD_ENDPOINT_ID", ENDPOINT_ID)
        .env("BUCKET_ENDPOINT_URL", s3.endpoint())
        .env("BUCKET_ACCESS_KEY_ID", support::s3::ACCESS_KEY)
        .env("BUCKET_SECRET_ACCESS_KEY", support::s3::SECRET_KEY)
        .args([
            "--object-store",
            &format!("s3://{}/rp", support::s3::BUCKET),
        ])
        .arg("--spool-dir")
        .arg(dir.path().join("spool"))
        .arg("--scratch-dir")
        .arg(dir.path().join("scratch"))
        .args(["--", "python3", &fixture("big_output.py")])
        .start();
    let results = fake.wait_for_results(1, WAIT).await;
    assert_eq!(results.len(), 1, "{}", worker.logs());
    let body = parse_body(&results[0]);
    let object = check_reference(&body["output"], &note, LARGE).await;
    assert_eq!(object["key"], format!("{ENDPOINT_ID}/big-1/output.json"));
    worker.signal(Signal::SIGTERM);
    assert_eq!(worker.wait(WAIT).code(), Some(0), "{}", worker.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_runpod_client_reads_an_offloaded_result() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let Some(python) = venv_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A low threshold keeps this test quick: the reference is the same.
    let server = Server::start(dir.path(), &s3, &["--offload-threshold", "1MB"]).await;
    let note = dir.path().join("client.sha256");
    let script = r#"
import hashlib, json, os, sys, urllib.request
import runpod
runpod.api_key = os.environ["JOBPIPE_KEY"]
runpod.endpoint_url_base = os.environ["JOBPIPE_BASE"]
endpoint = runpod.Endpoint("default")
output = endpoint.run_sync({"input": {"size": 3000000, "note": os.environ["NOTE"]}}, timeout=120)
body = urllib.request.urlopen(output["object"]["url"]).read()
print(json.dumps({"reference": output, "fetched_sha256": hashlib.sha256(body).hexdigest(),
                  "text_len": len(json.loads(body))}))
"#;
    let base = server.base.trim_end_matches("/default").to_owned();
    let out = tokio::process::Command::new(python)
        .args(["-c", script])
        .env("JOBPIPE_KEY", KEY)
        .env("JOBPIPE_BASE", base)
        .env("NOTE", &note)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.daemon.logs()
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    let noted = std::fs::read_to_string(&note).unwrap();
    assert_eq!(
        seen["reference"]["object"]["sha256"],
        noted.as_str(),
        "{seen}"
    );
    assert_eq!(seen["fetched_sha256"], noted.as_str(), "{seen}");
    assert_eq!(seen["text_len"], 3_000_000);
    assert_eq!(server.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_partial_over_its_threshold_is_offloaded() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &s3, &[]).await;
    let note = dir.path().join("partial");
    let big = 2_000_000;
    let id = server
        .submit(json!({"stream": [big, 100], "size": 10, "note": note.display().to_string()}))
        .await;
    let status = server.finished(&id).await;
    assert_eq!(status["status"], "COMPLETED", "{status}");
    let stream = server
        .try_get(&format!("/stream/{id}"))
        .await
        .expect("the stream answers");
    let partials = stream["stream"].as_array().expect("the partials");
    assert_eq!(partials.len(), 2, "{stream}");
    let first = &partials[0]["output"];
    assert_eq!(
        first["object"]["key"],
        format!("default/{id}/stream-0.json"),
        "{first}"
    );
    let noted = std::fs::read_to_string(format!("{}.0", note.display())).unwrap();
    assert_eq!(first["object"]["sha256"], noted.as_str());
    let (code, body) = fetch(first["object"]["url"].as_str().unwrap()).await;
    assert_eq!(code, 200);
    assert_eq!(sha256_hex(&body), noted);
    assert_eq!(
        partials[1]["output"].as_str().map(str::len),
        Some(100),
        "a small partial stays inline"
    );
    assert_eq!(server.stop(), 0);
}

/// `?inline=1`: an offloaded JSON output comes back in `/status`'s and
/// `/runsync`'s answer itself; without it, the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_1_answers_an_offloaded_output_itself() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &s3, &["--offload-threshold", "1MB"]).await;
    let size = 2_000_000;
    let id = server.submit(json!({"size": size})).await;
    let status = server.finished(&id).await;
    assert_eq!(status["status"], "COMPLETED", "{status}");
    assert_eq!(status["output"]["object"]["size"], size + 2, "{status}");
    let inline = server
        .try_get(&format!("/status/{id}?inline=1"))
        .await
        .expect("an answer");
    assert_eq!(inline["status"], "COMPLETED", "{inline}");
    assert_eq!(inline["output"].as_str().map(str::len), Some(size));
    let synced: Value = server
        .http
        .post(format!("{}/runsync?inline=1", server.base))
        .bearer_auth(KEY)
        .json(&json!({"input": {"size": size}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        synced["status"],
        "COMPLETED",
        "{}",
        &synced.to_string()[..200.min(synced.to_string().len())]
    );
    assert_eq!(synced["output"].as_str().map(str::len), Some(size));
    let response = server
        .http
        .get(format!("{}/status/{id}?inline=maybe", server.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let why: Value = response.json().await.unwrap();
    assert!(
        why["error"]
            .as_str()
            .unwrap()
            .contains("inline must be 1 or 0"),
        "{why}"
    );
    assert_eq!(server.stop(), 0);
}
