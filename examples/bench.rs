//! Throughput, CPU and memory benchmark of jobpipe as a RunPod worker.
//!
//! Starts the stand-in of RunPod's job queue from tests/support, queues N
//! trivial echo jobs, runs the release jobpipe binary against it as a
//! subprocess and measures wall time, jobs/s, jobpipe's CPU time per job and
//! its peak memory. Every job must get exactly one correct result and
//! jobpipe must exit 0 on SIGTERM, or the benchmark fails.
//!
//! Optionally (`--sdk`, and by default when `python3 -c "import runpod"`
//! works) the same workload runs through the official runpod Python SDK
//! worker (benches/sdk_echo.py) against the same stand-in, and the figures
//! are compared.
//!
//! ```sh
//! cargo run --release --example bench -- [--jobs N] [--concurrency C] \
//!     [--handler python|oneshot] [--sdk | --no-sdk] [--sdk-jobs M]
//! ```
//!
//! See docs/benchmark.md.

#[allow(dead_code)]
#[path = "../tests/support/fake_runpod.rs"]
mod fake_runpod;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use fake_runpod::{job_id, parse_body, FakeRunpod};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

const API_KEY: &str = "bench-key";
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum HandlerKind {
    /// Persistent mode: `python3 handlers/python/echo.py`.
    Python,
    /// One process per job: `--mode oneshot -- handlers/oneshot/echo.sh`.
    Oneshot,
}

/// Benchmark jobpipe against a local stand-in of RunPod's job queue.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Echo jobs to run through jobpipe.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,

    /// Jobs run side by side (jobpipe --concurrency; the SDK's
    /// concurrency_modifier).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,

    /// The handler jobpipe runs.
    #[arg(long, value_enum, default_value = "python")]
    handler: HandlerKind,

    /// Also run the workload through the runpod Python SDK worker [default:
    /// when `python3 -c "import runpod"` succeeds].
    #[arg(long, conflicts_with = "no_sdk")]
    sdk: bool,

    /// Do not run the SDK comparison.
    #[arg(long)]
    no_sdk: bool,

    /// Jobs for the SDK run (it manages about 1 job/s at concurrency 1).
    #[arg(long, default_value_t = 30)]
    sdk_jobs: usize,

    /// Longest the SDK run may take, in seconds; it is cut off there and
    /// the figures cover the jobs that finished.
    #[arg(long, default_value_t = 120)]
    sdk_timeout: u64,

    /// Longest the jobpipe run may take, in seconds (exceeding it fails).
    #[arg(long, default_value_t = 600)]
    timeout: u64,

    /// The jobpipe binary to run [default: build it with `cargo build --release`].
    #[arg(long)]
    jobpipe: Option<PathBuf>,

    /// The Python interpreter for handlers and the SDK.
    #[arg(long, default_value = "python3")]
    python: String,
}

fn main() {
    let args = Args::parse();
    if args.jobs == 0 || args.concurrency == 0 || args.sdk_jobs == 0 {
        fail("--jobs, --concurrency and --sdk-jobs must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let clk_tck = clock_ticks_per_second();
    let jobpipe = match &args.jobpipe {
        Some(path) => path.clone(),
        None => build_jobpipe(),
    };
    if !jobpipe.is_file() {
        fail(&format!(
            "jobpipe binary not found at {}",
            jobpipe.display()
        ));
    }

    // Decide on the SDK comparison before the long run, so a skip is explained early.
    let sdk_plan = if args.no_sdk {
        Err("--no-sdk given".to_owned())
    } else {
        match check_runpod_sdk(&args.python) {
            Ok(version) => Ok(version),
            Err(why) if args.sdk => Err(format!("--sdk given, but {why}")),
            Err(why) => Err(why),
        }
    };

    let (label, handler_args): (&str, Vec<String>) = match args.handler {
        HandlerKind::Python => (
            "jobpipe + python echo.py",
            vec![
                "--".into(),
                args.python.clone(),
                "handlers/python/echo.py".into(),
            ],
        ),
        HandlerKind::Oneshot => (
            "jobpipe --mode oneshot + echo.sh",
            vec![
                "--mode".into(),
                "oneshot".into(),
                "--".into(),
                "handlers/oneshot/echo.sh".into(),
            ],
        ),
    };
    eprintln!(
        "bench: {} jobs through {label} at concurrency {} ({})",
        args.jobs,
        args.concurrency,
        jobpipe.display()
    );
    let spool = tempfile::tempdir().expect("create a temporary directory");
    let mut jobpipe_args: Vec<String> = vec![
        "--concurrency".into(),
        args.concurrency.to_string(),
        "--spool-dir".into(),
        spool.path().join("spool").display().to_string(),
        "--log-level".into(),
        "WARN".into(),
    ];
    jobpipe_args.extend(handler_args);
    let mut command = Command::new(&jobpipe);
    command.args(&jobpipe_args);
    let expect = match args.handler {
        HandlerKind::Python => Expect::Echo,
        HandlerKind::Oneshot => Expect::Oneshot,
    };
    let ours = measure(
        label,
        command,
        args.jobs,
        args.concurrency,
        expect,
        Duration::from_secs(args.timeout),
        Cutoff::Fail,
        clk_tck,
    )
    .await;
    if ours.exit_code != Some(0) {
        fail(&format!(
            "jobpipe exited with {} after SIGTERM, expected 0; stderr tail:\n{}",
            ours.exit_text, ours.stderr_tail
        ));
    }

    let sdk = match sdk_plan {
        Ok(version) => {
            eprintln!(
                "bench: {} jobs through the runpod SDK {version} worker at concurrency {}",
                args.sdk_jobs, args.concurrency
            );
            let script = Path::new(MANIFEST_DIR).join("benches/sdk_echo.py");
            let mut command = Command::new(&args.python);
            command
                .arg(script)
                .env("BENCH_CONCURRENCY", args.concurrency.to_string())
                .env("RUNPOD_LOG_LEVEL", "WARN");
            let label = format!("runpod SDK {version}");
            Some(
                measure(
                    &label,
                    command,
                    args.sdk_jobs,
                    args.concurrency,
                    Expect::Echo,
                    Duration::from_secs(args.sdk_timeout),
                    Cutoff::Report,
                    clk_tck,
                )
                .await,
            )
        }
        Err(why) => {
            eprintln!("bench: SDK comparison skipped: {why}");
            None
        }
    };

    print_report(&ours, sdk.as_ref());
    if let Some(sdk) = &sdk {
        if sdk.exit_code != Some(0) {
            println!(
                "\nnote: the SDK worker exited with {} after SIGTERM",
                sdk.exit_text
            );
        }
    }
}

/// What a correct result looks like for a job `{"id", "input"}`.
#[derive(Clone, Copy)]
enum Expect {
    /// `{"output": <input>}`.
    Echo,
    /// handlers/oneshot/echo.sh: `{"output": {"job_id": id, "job": <job>}}`.
    Oneshot,
}

/// What to do when a run passes its time limit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cutoff {
    /// The benchmark fails.
    Fail,
    /// The figures cover the jobs that finished.
    Report,
}

/// Figures of one measured run.
struct Run {
    label: String,
    jobs: usize,
    concurrency: usize,
    completed: usize,
    cut_off: bool,
    /// Spawn to the receipt of the last result.
    wall: Duration,
    /// Receipt of the first result to receipt of the last.
    first_to_last: Duration,
    /// Spawn to the receipt of the first result.
    first_result: Duration,
    /// CPU of the worker process itself (utime + stime).
    cpu: Duration,
    /// CPU of the worker process and all its descendants, live or reaped.
    tree_cpu: Duration,
    /// CPU of the worker process and of the tree from the first result seen
    /// to the end, and the number of results in that span: per-job CPU
    /// without start-up. `None` when the run ended within one poll.
    steady: Option<(Duration, Duration, usize)>,
    /// VmHWM of the worker process.
    peak_rss_kib: u64,
    /// Largest sum of VmRSS over the process tree seen while sampling.
    tree_peak_rss_kib: u64,
    /// Largest sum of Pss over the process tree seen while sampling.
    tree_peak_pss_kib: u64,
    /// Processes in the tree when the figures were read.
    tree_processes: usize,
    exit_code: Option<i32>,
    exit_text: String,
    stderr_tail: String,
}

impl Run {
    fn per_job(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0 / self.completed.max(1) as f64
    }
    fn throughput(&self) -> f64 {
        self.completed as f64 / self.wall.as_secs_f64()
    }
    fn steady_cpu_per_job(&self) -> Option<(f64, f64)> {
        let (own, tree, jobs) = self.steady?;
        (jobs > 0).then(|| {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0 / jobs as f64;
            (ms(own), ms(tree))
        })
    }
    fn steady_throughput(&self) -> Option<f64> {
        (self.completed > 1 && !self.first_to_last.is_zero())
            .then(|| (self.completed - 1) as f64 / self.first_to_last.as_secs_f64())
    }
}

/// Runs `command` against a fresh stand-in with `jobs` queued echo jobs and
/// measures it; verifies the results, then stops it with SIGTERM.
#[allow(clippy::too_many_arguments)]
async fn measure(
    label: &str,
    mut command: Command,
    jobs: usize,
    concurrency: usize,
    expect: Expect,
    limit: Duration,
    cutoff: Cutoff,
    clk_tck: u64,
) -> Run {
    let fake = FakeRunpod::start(API_KEY).await;
    let mut inputs = BTreeMap::new();
    for i in 0..jobs {
        let id = format!("bench-{i:06}");
        let input = json!({"n": i, "text": "hello"});
        fake.push_job(json!({"id": id, "input": input}));
        inputs.insert(id, input);
    }

    let dir = tempfile::tempdir().expect("create a temporary directory");
    let stderr_path = dir.path().join("stderr");
    let stderr = fs::File::create(&stderr_path).expect("create the stderr file");
    // Only the stand-in's settings, not whatever this shell has set.
    for (name, _) in std::env::vars() {
        if name.starts_with("RUNPOD_") || name.starts_with("JOBPIPE_") {
            command.env_remove(&name);
        }
    }
    command
        .envs(fake.env())
        .current_dir(MANIFEST_DIR)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);

    let started = Instant::now();
    let mut child: Child = command
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start {label}: {e}")));
    let pid = child.id();
    let sampler = TreeSampler::start(pid);

    // Wait for the results. Their times come from the stand-in's receipt
    // stamps, so the polling period does not affect the figures.
    let deadline = started + limit;
    let mut cut_off = false;
    // (results, own CPU ticks, tree CPU ticks) when the first result was seen.
    let mut at_first: Option<(usize, u64, u64)> = None;
    loop {
        if let Some(status) = child.try_wait().expect("poll the worker process") {
            fail(&format!(
                "{label} exited early ({}); stderr tail:\n{}",
                describe(status),
                tail(&stderr_path)
            ));
        }
        if at_first.is_none() {
            let done = fake.results().len();
            if done > 0 {
                at_first = Some((done, own_cpu_ticks(pid), tree_cpu_ticks(pid)));
            }
        }
        if fake.queued() == 0 && fake.results().len() >= jobs {
            break;
        }
        if Instant::now() >= deadline {
            if cutoff == Cutoff::Fail {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                fail(&format!(
                    "{label}: only {} of {jobs} results after {limit:?}; stderr tail:\n{}",
                    fake.results().len(),
                    tail(&stderr_path)
                ));
            }
            cut_off = true;
            break;
        }
        let period = if at_first.is_none() { 5 } else { 20 };
        tokio::time::sleep(Duration::from_millis(period)).await;
    }

    // The figures, read just before SIGTERM.
    let own_ticks = own_cpu_ticks(pid);
    let tree_ticks = tree_cpu_ticks(pid);
    let peak_rss_kib = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    let tree_processes = descendants(pid).len();
    let (tree_peak_rss_kib, tree_peak_pss_kib) = sampler.stop();

    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("send SIGTERM");
    let status = wait_timeout(&mut child, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            fail(&format!(
                "{label} did not exit within 60 s of SIGTERM; stderr tail:\n{}",
                tail(&stderr_path)
            ))
        });

    // Exactly one correct result per job, counted after the worker exited.
    let results = fake.results();
    let mut by_job: HashMap<String, Vec<Value>> = HashMap::new();
    for r in &results {
        let id = job_id(r).unwrap_or_default();
        by_job.entry(id).or_default().push(parse_body(r));
    }
    let mut problems = Vec::new();
    for id in by_job.keys() {
        if !inputs.contains_key(id) {
            problems.push(format!("result for unknown job {id:?}"));
        }
    }
    let mut completed: usize = 0;
    for (id, input) in &inputs {
        match by_job.get(id).map(Vec::as_slice) {
            None | Some([]) => {
                if !cut_off {
                    problems.push(format!("{id}: no result"));
                }
            }
            Some([body]) => match check(expect, id, input, body) {
                Ok(()) => completed += 1,
                Err(e) => problems.push(format!("{id}: {e}: {body}")),
            },
            Some(many) => problems.push(format!("{id}: {} results: {many:?}", many.len())),
        }
    }
    if !problems.is_empty() {
        let shown: Vec<&str> = problems.iter().take(10).map(String::as_str).collect();
        fail(&format!(
            "{label}: {} of {jobs} jobs without exactly one correct result:\n  {}",
            problems.len(),
            shown.join("\n  ")
        ));
    }

    let mut times: Vec<Instant> = results.iter().map(|r| r.at).collect();
    times.sort();
    let (first, last) = match (times.first(), times.last()) {
        (Some(&first), Some(&last)) => (first, last),
        _ => fail(&format!("{label}: no result at all within {limit:?}")),
    };
    let ticks = |t: u64| Duration::from_secs_f64(t as f64 / clk_tck as f64);
    let steady = at_first.map(|(done, own0, tree0)| {
        (
            ticks(own_ticks.saturating_sub(own0)),
            ticks(tree_ticks.saturating_sub(tree0)),
            completed.saturating_sub(done),
        )
    });
    Run {
        label: label.to_owned(),
        jobs,
        concurrency,
        completed,
        cut_off,
        wall: last - started,
        first_to_last: last - first,
        first_result: first - started,
        cpu: ticks(own_ticks),
        tree_cpu: ticks(tree_ticks),
        steady,
        peak_rss_kib,
        tree_peak_rss_kib,
        tree_peak_pss_kib,
        tree_processes,
        exit_code: status.code(),
        exit_text: describe(status),
        stderr_tail: tail(&stderr_path),
    }
}

fn check(expect: Expect, id: &str, input: &Value, body: &Value) -> Result<(), String> {
    if body.get("error").is_some() {
        return Err("the job failed".into());
    }
    let output = body.get("output").ok_or("no output")?;
    match expect {
        Expect::Echo if output == input => Ok(()),
        Expect::Echo => Err("output is not the input".into()),
        Expect::Oneshot => {
            if output.get("job_id").and_then(Value::as_str) != Some(id) {
                Err("output.job_id is not the job id".into())
            } else if output.pointer("/job/input") != Some(input) {
                Err("output.job.input is not the input".into())
            } else {
                Ok(())
            }
        }
    }
}

fn print_report(ours: &Run, sdk: Option<&Run>) {
    let mut runs = vec![ours];
    runs.extend(sdk);
    let secs = |d: Duration| format!("{:.3} s", d.as_secs_f64());
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let ms = |v: f64| format!("{v:.3} ms");
    type Cell = Box<dyn Fn(&Run) -> String>;
    let rows: Vec<(&str, Cell)> = vec![
        (
            "jobs completed",
            Box::new(|r: &Run| {
                let mut s = format!("{} / {}", r.completed, r.jobs);
                if r.cut_off {
                    s.push_str(" (cut off)");
                }
                s
            }),
        ),
        ("concurrency", Box::new(|r: &Run| r.concurrency.to_string())),
        (
            "wall time, start to last result",
            Box::new(move |r: &Run| secs(r.wall)),
        ),
        (
            "  start to first result",
            Box::new(move |r: &Run| secs(r.first_result)),
        ),
        (
            "  first to last result",
            Box::new(move |r: &Run| secs(r.first_to_last)),
        ),
        (
            "throughput, whole run",
            Box::new(|r: &Run| format!("{:.1} jobs/s", r.throughput())),
        ),
        (
            "throughput, first to last result",
            Box::new(|r: &Run| match r.steady_throughput() {
                Some(t) => format!("{t:.1} jobs/s"),
                None => "-".into(),
            }),
        ),
        (
            "CPU, worker process",
            Box::new(|r: &Run| format!("{:.0} ms", r.cpu.as_secs_f64() * 1000.0)),
        ),
        (
            "CPU, process tree",
            Box::new(|r: &Run| format!("{:.0} ms", r.tree_cpu.as_secs_f64() * 1000.0)),
        ),
        (
            "CPU per job, worker process",
            Box::new(move |r: &Run| ms(r.per_job(r.cpu))),
        ),
        (
            "CPU per job, process tree",
            Box::new(move |r: &Run| ms(r.per_job(r.tree_cpu))),
        ),
        (
            "CPU per job after start-up, worker",
            Box::new(move |r: &Run| {
                r.steady_cpu_per_job()
                    .map_or("-".into(), |(own, _)| ms(own))
            }),
        ),
        (
            "CPU per job after start-up, tree",
            Box::new(move |r: &Run| {
                r.steady_cpu_per_job()
                    .map_or("-".into(), |(_, tree)| ms(tree))
            }),
        ),
        (
            "peak RSS, worker process (VmHWM)",
            Box::new(move |r: &Run| mib(r.peak_rss_kib)),
        ),
        (
            "peak RSS, process tree (sum)",
            Box::new(move |r: &Run| mib(r.tree_peak_rss_kib)),
        ),
        (
            "peak PSS, process tree (sum)",
            Box::new(move |r: &Run| mib(r.tree_peak_pss_kib)),
        ),
        (
            "processes in the tree at the end",
            Box::new(|r: &Run| r.tree_processes.to_string()),
        ),
    ];
    let labels: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(_, f)| runs.iter().map(|r| f(r)).collect())
        .collect();
    let first_width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..runs.len())
        .map(|i| {
            cells
                .iter()
                .map(|row| row[i].len())
                .chain([labels[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    println!();
    let mut header = format!("{:first_width$}", "");
    for (label, w) in labels.iter().zip(&widths) {
        header.push_str(&format!(" | {label:>w$}"));
    }
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for ((name, _), row) in rows.iter().zip(&cells) {
        let mut line = format!("{name:first_width$}");
        for (cell, w) in row.iter().zip(&widths) {
            line.push_str(&format!(" | {cell:>w$}"));
        }
        println!("{line}");
    }
    println!(
        "\nworker process: jobpipe itself, or the SDK's Python process (which runs the handler).\n\
         process tree: the worker process and its descendants (jobpipe's handler processes, the\n\
         SDK's heartbeat process); CPU includes reaped children; RSS and PSS are sampled every 50 ms.\n\
         after start-up: CPU from the first result seen to the last, over the jobs finished in that span."
    );

    let Some(sdk) = sdk else { return };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => {
            let r = a / b;
            if r >= 1.0 {
                format!("{r:9.1}")
            } else {
                format!("{r:9.4}  (1/{:.0})", 1.0 / r)
            }
        }
        _ => format!("{:>9}", "-"),
    };
    let steady_own = |r: &Run| r.steady_cpu_per_job().map(|(own, _)| own);
    let steady_tree = |r: &Run| r.steady_cpu_per_job().map(|(_, tree)| tree);
    let kib = |k: u64| Some(k as f64);
    let ratios: Vec<(&str, String)> = vec![
        (
            "throughput, whole run",
            ratio(Some(ours.throughput()), Some(sdk.throughput())),
        ),
        (
            "throughput, first to last result",
            ratio(ours.steady_throughput(), sdk.steady_throughput()),
        ),
        (
            "CPU per job after start-up, jobpipe process / SDK tree",
            ratio(steady_own(ours), steady_tree(sdk)),
        ),
        (
            "CPU per job after start-up, jobpipe tree / SDK tree",
            ratio(steady_tree(ours), steady_tree(sdk)),
        ),
        (
            "CPU per job whole run, jobpipe tree / SDK tree",
            ratio(
                Some(ours.per_job(ours.tree_cpu)),
                Some(sdk.per_job(sdk.tree_cpu)),
            ),
        ),
        (
            "peak RSS, jobpipe process / SDK process (VmHWM)",
            ratio(kib(ours.peak_rss_kib), kib(sdk.peak_rss_kib)),
        ),
        (
            "peak PSS, jobpipe tree / SDK tree",
            ratio(kib(ours.tree_peak_pss_kib), kib(sdk.tree_peak_pss_kib)),
        ),
    ];
    println!(
        "\nratios jobpipe / SDK (throughput: higher is better; CPU and memory: lower is better)"
    );
    let w = ratios.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (name, value) in ratios {
        println!("  {name:w$}  {value}");
    }
}

/// Builds the release jobpipe binary and returns its path.
fn build_jobpipe() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("bench: cargo build --release --bin jobpipe");
    let mut child = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--bin",
            "jobpipe",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(MANIFEST_DIR)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo: {e}")));
    let mut executable = None;
    for line in BufReader::new(child.stdout.take().expect("cargo stdout")).lines() {
        let Ok(line) = line else { break };
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact" && message["target"]["name"] == "jobpipe" {
            if let Some(path) = message["executable"].as_str() {
                executable = Some(PathBuf::from(path));
            }
        }
    }
    let status = child.wait().expect("wait for cargo");
    if !status.success() {
        fail("cargo build --release failed");
    }
    executable.unwrap_or_else(|| Path::new(MANIFEST_DIR).join("target/release/jobpipe"))
}

/// The runpod SDK's version, or why it cannot be imported.
fn check_runpod_sdk(python: &str) -> Result<String, String> {
    let output = Command::new(python)
        .args(["-c", "import runpod; print(runpod.__version__)"])
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").trim().to_owned();
        Err(format!(
            "`{python} -c \"import runpod\"` failed ({last}); install it with `pip install runpod`"
        ))
    }
}

/// Fields of /proc/<pid>/stat, in clock ticks.
struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

fn proc_stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces or parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state) of proc(5).
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        ppid: u32::try_from(field(4)?).ok()?,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

/// A `kB` value from /proc/<pid>/status, e.g. `VmHWM:`.
fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    proc_kib(pid, "status", key)
}

/// A `kB` value from /proc/<pid>/<file>, e.g. `Pss:` in `smaps_rollup`.
fn proc_kib(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of `pid`, in clock ticks.
fn own_cpu_ticks(pid: u32) -> u64 {
    let stat = proc_stat(pid).unwrap_or_else(|| fail(&format!("cannot read /proc/{pid}/stat")));
    stat.utime + stat.stime
}

/// CPU of `root` and its descendants in clock ticks: each live process's
/// own time plus the time of the children it has reaped.
fn tree_cpu_ticks(root: u32) -> u64 {
    descendants(root)
        .into_iter()
        .filter_map(proc_stat)
        .map(|s| s.utime + s.stime + s.cutime + s.cstime)
        .sum()
}

/// `root` and every live descendant of it.
fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some(stat) = proc_stat(pid) {
                children.entry(stat.ppid).or_default().push(pid);
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        if let Some(kids) = children.get(&tree[i]) {
            tree.extend(kids);
        }
        i += 1;
    }
    tree
}

/// Samples the summed VmRSS and Pss of a process tree every 50 ms on a
/// thread and keeps the largest sums.
struct TreeSampler {
    stop: Arc<AtomicBool>,
    rss: Arc<AtomicU64>,
    pss: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl TreeSampler {
    fn start(root: u32) -> TreeSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let rss = Arc::new(AtomicU64::new(0));
        let pss = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, rss, pss) = (stop.clone(), rss.clone(), pss.clone());
            std::thread::spawn(move || loop {
                // One last sample after the stop request.
                let last = stop.load(Ordering::Relaxed);
                let tree = descendants(root);
                let sum = |file: &str, key: &str| -> u64 {
                    tree.iter().filter_map(|&p| proc_kib(p, file, key)).sum()
                };
                rss.fetch_max(sum("status", "VmRSS:"), Ordering::Relaxed);
                pss.fetch_max(sum("smaps_rollup", "Pss:"), Ordering::Relaxed);
                if last {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            })
        };
        TreeSampler {
            stop,
            rss,
            pss,
            thread,
        }
    }

    /// Stops sampling and returns the peak sums of VmRSS and Pss in KiB.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        (
            self.rss.load(Ordering::Relaxed),
            self.pss.load(Ordering::Relaxed),
        )
    }
}

/// sysconf(_SC_CLK_TCK): glibc answers it from the AT_CLKTCK entry of the
/// auxiliary vector, which /proc/self/auxv holds as native-endian word pairs.
fn clock_ticks_per_second() -> u64 {
    const AT_CLKTCK: u64 = 17;
    const WORD: usize = std::mem::size_of::<usize>();
    let mut auxv = Vec::new();
    if fs::File::open("/proc/self/auxv")
        .and_then(|mut f| f.read_to_end(&mut auxv))
        .is_ok()
    {
        let word = |b: &[u8]| -> u64 {
            let mut buf = [0u8; WORD];
            buf.copy_from_slice(b);
            usize::from_ne_bytes(buf) as u64
        };
        for pair in auxv.chunks_exact(2 * WORD) {
            let (key, value) = (word(&pair[..WORD]), word(&pair[WORD..]));
            if key == AT_CLKTCK && value > 0 {
                return value;
            }
        }
    }
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

async fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("poll the worker process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}

/// The last lines of a captured stderr file.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn fail(message: &str) -> ! {
    eprintln!("bench: FAILED: {message}");
    std::process::exit(1);
}
