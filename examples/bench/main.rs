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
//!     [--handler python|oneshot|c|runpod-adapter] [--sdk | --no-sdk] [--sdk-jobs M]
//! cargo run --release --example bench -- --tls [--jobs N] [--rounds R]
//! ```
//!
//! See docs/benchmark.md.

#[allow(dead_code)]
#[path = "../../tests/support/fake_runpod.rs"]
mod fake_runpod;

#[allow(dead_code)]
#[path = "../../tests/support/tls.rs"]
mod tls_ca;

mod compare;
mod endurance;
mod measure;
mod procfs;
mod tls;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use measure::{measure, Cutoff, Expect, Meter, Run, Workload};
use serde_json::Value;

const API_KEY: &str = "bench-key";
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum HandlerKind {
    /// Persistent mode: `python3 handlers/python/echo.py`.
    Python,
    /// One process per job: `--mode oneshot -- handlers/oneshot/echo.sh`.
    Oneshot,
    /// Persistent mode: the compiled C echo handler (handlers/c/echo.c, built
    /// with `cc -O2`), so that the handler's own cost is close to nothing.
    C,
    /// Persistent mode: the SDK's handler file benches/sdk_echo.py, unchanged,
    /// through handlers/python/jobpipe_runpod.py (`--python` should have the
    /// runpod package, as for the SDK run).
    RunpodAdapter,
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

    /// Run the bare reference worker (examples/reference_worker.rs) beside
    /// jobpipe, interleaved over --rounds rounds, and print the ratios
    /// (persistent handlers only; no SDK run).
    #[arg(long)]
    reference: bool,

    /// With --reference or --goals: another jobpipe binary run in the same
    /// rounds, to compare a change with what it changes.
    #[arg(long)]
    baseline: Option<PathBuf>,

    /// Rounds of the comparison with the reference worker; the figures are
    /// the medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,

    /// Size of each job's input (and so of its output) in bytes, for large
    /// jobs: the input's text is 64 bytes shorter, so the result fits a
    /// --max-output-size of this many bytes. 0: a five-byte text.
    #[arg(long, default_value_t = 0)]
    payload: usize,

    /// The whole comparison with the reference worker, C handler, against
    /// the performance goals: concurrency 1 and 16, 20 MB jobs, and the
    /// memory of jobpipe after 1,000 and --endurance jobs.
    #[arg(long)]
    goals: bool,

    /// jobpipe against the stand-in over HTTPS (a CA made for the run,
    /// trusted through SSL_CERT_FILE) beside the same over plain HTTP and
    /// the plain reference worker, C handler, concurrency 1 and 16, --jobs
    /// jobs each, interleaved over --rounds rounds; prints the ratios and
    /// the connections the stand-in accepted per run.
    #[arg(long)]
    tls: bool,

    /// Jobs for the memory-growth run (jobpipe alone against a generating
    /// stand-in that keeps no record of each job); 0 skips it. One million
    /// takes several minutes.
    #[arg(long, default_value_t = 0)]
    endurance: usize,
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
    let meter = Meter {
        clk_tck: procfs::clock_ticks_per_second(),
        perf: procfs::perf_works(),
    };
    if !meter.perf {
        eprintln!(
            "bench: `perf stat -e raw_syscalls:sys_enter` does not work here; syscalls are left out"
        );
    }
    let jobpipe = match &args.jobpipe {
        Some(path) => path.clone(),
        None => build("--bin", "jobpipe"),
    };
    if !jobpipe.is_file() {
        fail(&format!(
            "jobpipe binary not found at {}",
            jobpipe.display()
        ));
    }
    if args.tls {
        tls::run(&args, &jobpipe, meter).await;
    } else if args.goals || args.reference {
        compare::run(&args, &jobpipe, meter).await;
    } else if args.endurance > 0 {
        endurance::run(&jobpipe, &c_echo(), args.endurance, meter).await;
    } else {
        versus_sdk(&args, &jobpipe, meter).await;
    }
}

/// The original comparison: one jobpipe run, and the SDK's when it can run.
async fn versus_sdk(args: &Args, jobpipe: &Path, meter: Meter) {
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

    let (label, handler_args) = handler(args);
    eprintln!(
        "bench: {} jobs through {label} at concurrency {} ({})",
        args.jobs,
        args.concurrency,
        jobpipe.display()
    );
    let spool = tempfile::tempdir().expect("create a temporary directory");
    let command = jobpipe_command(jobpipe, args.concurrency, spool.path(), &handler_args);
    let expect = match args.handler {
        HandlerKind::Python | HandlerKind::C | HandlerKind::RunpodAdapter => Expect::Echo,
        HandlerKind::Oneshot => Expect::Oneshot,
    };
    let work = Workload {
        jobs: args.jobs,
        concurrency: args.concurrency,
        payload: args.payload,
        expect,
        limit: Duration::from_secs(args.timeout),
        cutoff: Cutoff::Fail,
    };
    let ours = measure(&label, command, &work, meter).await;
    require_clean_exit(&ours);

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
                .env("RUNPOD_LOG_LEVEL", "WARN")
                // The SDK's machine checks (free disk, memory, network) are
                // not part of the workload; a crowded machine fails them.
                .env("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "true");
            let label = format!("runpod SDK {version}");
            let work = Workload {
                jobs: args.sdk_jobs,
                expect: Expect::Echo,
                limit: Duration::from_secs(args.sdk_timeout),
                cutoff: Cutoff::Report,
                ..work
            };
            Some(measure(&label, command, &work, meter).await)
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

/// The label of jobpipe's run and the handler part of its command line.
fn handler(args: &Args) -> (String, Vec<String>) {
    let (label, handler): (&str, Vec<String>) = match args.handler {
        HandlerKind::Python => (
            "jobpipe + python echo.py",
            vec![args.python.clone(), "handlers/python/echo.py".into()],
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
        HandlerKind::C => ("jobpipe + C echo", vec![c_echo().display().to_string()]),
        HandlerKind::RunpodAdapter => (
            "jobpipe + jobpipe_runpod.py sdk_echo.py",
            vec![
                args.python.clone(),
                "handlers/python/jobpipe_runpod.py".into(),
                "benches/sdk_echo.py".into(),
            ],
        ),
    };
    let mut words = handler;
    if args.handler != HandlerKind::Oneshot {
        words.insert(0, "--".into());
    }
    (label.to_owned(), words)
}

/// `jobpipe --concurrency C --spool-dir DIR/spool --log-level WARN HANDLER...`.
fn jobpipe_command(jobpipe: &Path, concurrency: usize, dir: &Path, handler: &[String]) -> Command {
    let mut command = Command::new(jobpipe);
    command
        .args(["--concurrency", &concurrency.to_string(), "--spool-dir"])
        .arg(dir.join("spool"))
        .args(["--log-level", "WARN"])
        .args(handler);
    command
}

fn require_clean_exit(run: &Run) {
    if run.exit_code != Some(0) {
        fail(&format!(
            "jobpipe exited with {} after SIGTERM, expected 0; stderr tail:\n{}",
            run.exit_text, run.stderr_tail
        ));
    }
}

/// Builds the C echo handler once per benchmark process and returns its path.
fn c_echo() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let source = Path::new(MANIFEST_DIR).join("handlers/c/echo.c");
            let out =
                std::env::temp_dir().join(format!("jobpipe-bench-echo-{}", std::process::id()));
            let status = Command::new("cc")
                .args(["-O2", "-o"])
                .arg(&out)
                .arg(&source)
                .status()
                .unwrap_or_else(|e| fail(&format!("cannot run cc: {e}")));
            if !status.success() {
                fail(&format!("cc could not build {}", source.display()));
            }
            out
        })
        .clone()
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

/// Builds a release binary (`--bin NAME` or `--example NAME`) and returns
/// its path.
fn build(kind: &str, name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("bench: cargo build --release {kind} {name}");
    let mut child = Command::new(cargo)
        .args([
            "build",
            "--release",
            kind,
            name,
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
        if message["reason"] == "compiler-artifact" && message["target"]["name"] == name {
            if let Some(path) = message["executable"].as_str() {
                executable = Some(PathBuf::from(path));
            }
        }
    }
    let status = child.wait().expect("wait for cargo");
    if !status.success() {
        fail("cargo build --release failed");
    }
    executable.unwrap_or_else(|| fail(&format!("cargo built no executable named {name}")))
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

pub(crate) async fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
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

pub(crate) fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}

/// The last lines of a captured stderr file.
pub(crate) fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

pub(crate) fn fail(message: &str) -> ! {
    eprintln!("bench: FAILED: {message}");
    std::process::exit(1);
}
