//! Benchmark of output offload: a handler answers one output of each size
//! given, jobpipe (the self-hosted endpoint, SQLite queue) uploads it to a
//! real S3-compatible server (moto's server mode on a loopback port, from
//! the tests' virtualenv), and this prints, per size, the upload's
//! throughput (from jobpipe's own log line), the time from submission to
//! COMPLETED, and jobpipe's peak resident memory (VmHWM in /proc; one
//! jobpipe process per size, so each peak is that size's).
//!
//! ```sh
//! cargo run --release --example bench_offload -- [--sizes 200MB,1GB] [--jobpipe PATH] [--files]
//! ```
//!
//! `--files`: the handler writes each output to a file in its job
//! directory and answers `output_file`; jobpipe then reads it in parts and
//! never holds it whole.
//!
//! moto keeps objects in memory and is single-threaded Python, so the
//! throughput is a floor set by the server as much as by jobpipe; compare
//! runs on the same machine, not with S3 itself.

#[path = "../tests/support/prereq.rs"]
#[allow(dead_code)]
mod prereq;
#[path = "../tests/support/s3.rs"]
#[allow(dead_code)]
mod s3;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const KEY: &str = "bench-key";

/// Benchmark jobpipe's output offload to an S3-compatible store.
#[derive(Debug, Parser)]
#[command(name = "bench_offload")]
struct Args {
    /// Output sizes, comma separated (e.g. 200MB,1GB).
    #[arg(long, default_value = "200MB,1GB", value_delimiter = ',')]
    sizes: Vec<String>,
    /// The jobpipe binary [default: build target/release/jobpipe].
    #[arg(long)]
    jobpipe: Option<PathBuf>,
    /// The handler writes each output to a file in its job_dir and answers
    /// output_file, instead of printing it as its output line.
    #[arg(long)]
    files: bool,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let args = Args::parse();
    let jobpipe = args.jobpipe.clone().unwrap_or_else(|| {
        let status = Command::new("cargo")
            .args(["build", "--release", "--locked", "--bin", "jobpipe"])
            .current_dir(MANIFEST_DIR)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building jobpipe failed");
        PathBuf::from(MANIFEST_DIR).join("target/release/jobpipe")
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let s3 = s3::S3Server::start()
            .await
            .expect("moto's server is needed");
        println!("size\tupload MB/s\tsubmit->COMPLETED s\tjobpipe peak RSS MiB");
        for size in &args.sizes {
            let bytes = jobpipe::units::parse_size(size).expect("a size like 200MB");
            run_one(&jobpipe, &s3, bytes, args.files).await;
        }
    });
}

async fn run_one(jobpipe: &PathBuf, s3: &s3::S3Server, size: usize, files: bool) {
    let (handler, input) = if files {
        ("file_output.py", json!({"files": {"out.bin": size}}))
    } else {
        ("big_output.py", json!({"size": size}))
    };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.path().join("jobpipe.log");
    let child = Command::new(jobpipe)
        .args(["--log-level", "INFO", "--log-format", "text"])
        .args(["--serve-api", "--api-key", KEY])
        .args(["--api-addr", &format!("127.0.0.1:{port}")])
        .arg("--queue")
        .arg(format!("sqlite:{}", dir.path().join("q.db").display()))
        .arg("--spool-dir")
        .arg(dir.path().join("spool"))
        .args(s3.flags("bench"))
        .arg("--scratch-dir")
        .arg(dir.path().join("scratch"))
        .envs(s3.env())
        .args(["--max-output-size", "2GB", "--object-store-retry", "10m"])
        .args(["--", "python3"])
        .arg(
            PathBuf::from(MANIFEST_DIR)
                .join("tests/fixtures")
                .join(handler),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("jobpipe starts");
    let pid = child.id();
    let _proc = Proc(child);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/v2/default");
    let up = Instant::now();
    while http
        .get(format!("{base}/health"))
        .bearer_auth(KEY)
        .send()
        .await
        .is_err()
    {
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "jobpipe did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let answer: Value = http
        .post(format!("{base}/run"))
        .bearer_auth(KEY)
        .json(&json!({ "input": input }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = answer["id"].as_str().expect("a job id").to_owned();
    let status = loop {
        let status: Value = http
            .get(format!("{base}/status/{id}"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if matches!(status["status"].as_str(), Some("COMPLETED" | "FAILED")) {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "job did not finish"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let total = started.elapsed().as_secs_f64();
    assert_eq!(status["status"], "COMPLETED", "{status}");
    let peak_kib = peak_rss_kib(pid);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let upload_s = text
        .lines()
        .find_map(|l| l.split(" to the object store in ").nth(1))
        .and_then(|rest| rest.split('s').next()?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("jobpipe logs the upload:\n{text}"));
    let object_size = status["output"]["object"]["size"].as_f64().unwrap();
    println!(
        "{size}\t{:.1}\t{total:.1}\t{}",
        object_size / 1e6 / upload_s,
        peak_kib / 1024
    );
}

/// The peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
