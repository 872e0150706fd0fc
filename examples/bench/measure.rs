//! One measured run: a fresh stand-in queue with N echo jobs, a worker
//! process started against it, its figures read from /proc (and `perf
//! stat`), every result checked, then SIGTERM.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::fake_runpod::{job_id, parse_body, FakeRunpod, Request};
use crate::procfs::{
    counters, descendants, own_cpu_ticks, proc_status_kib, tree_cpu_ticks, Counters,
    SyscallCounter, TreeSampler,
};
use crate::{describe, fail, tail, wait_timeout, API_KEY, MANIFEST_DIR};

/// What a run asks of the worker.
#[derive(Clone)]
pub(crate) struct Workload {
    pub(crate) jobs: usize,
    pub(crate) concurrency: usize,
    /// Bytes of the `"text"` in each job's input; 0 for `"hello"`.
    pub(crate) payload: usize,
    pub(crate) expect: Expect,
    pub(crate) limit: Duration,
    pub(crate) cutoff: Cutoff,
}

/// The stand-in served over HTTPS: its server side, and the CA file the
/// worker is told to trust through `SSL_CERT_FILE`.
pub(crate) struct Tls {
    pub(crate) server: Arc<tokio_rustls::rustls::ServerConfig>,
    pub(crate) ca_file: PathBuf,
}

/// What the machine offers for measuring.
#[derive(Clone, Copy)]
pub(crate) struct Meter {
    pub(crate) clk_tck: u64,
    /// `perf stat` can count syscalls.
    pub(crate) perf: bool,
}

/// Figures over the span from the first result seen to the end, when the
/// start-up is behind the worker.
#[derive(Clone, Copy)]
pub(crate) struct Steady {
    /// Results finished in the span.
    pub(crate) jobs: usize,
    /// CPU of the worker process (clock ticks) and of its tree.
    pub(crate) own: Duration,
    pub(crate) tree: Duration,
    /// CPU (ns, from schedstat) and context switches of the worker process.
    pub(crate) counters: Counters,
    /// Syscalls of the worker process, when `perf stat` works.
    pub(crate) syscalls: Option<u64>,
}

impl Steady {
    pub(crate) fn per_job(&self, value: f64) -> Option<f64> {
        (self.jobs > 0).then(|| value / self.jobs as f64)
    }
}
/// What a correct result looks like for a job `{"id", "input"}`.
#[derive(Clone, Copy)]
pub(crate) enum Expect {
    /// `{"output": <input>}`.
    Echo,
    /// handlers/oneshot/echo.sh: `{"output": {"job_id": id, "job": <job>}}`.
    Oneshot,
}

/// What to do when a run passes its time limit.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cutoff {
    /// The benchmark fails.
    Fail,
    /// The figures cover the jobs that finished.
    Report,
}

/// Figures of one measured run.
pub(crate) struct Run {
    pub(crate) label: String,
    pub(crate) jobs: usize,
    pub(crate) concurrency: usize,
    pub(crate) completed: usize,
    pub(crate) cut_off: bool,
    /// Spawn to the receipt of the last result.
    pub(crate) wall: Duration,
    /// Receipt of the first result to receipt of the last.
    pub(crate) first_to_last: Duration,
    /// Spawn to the receipt of the first result.
    pub(crate) first_result: Duration,
    /// CPU of the worker process itself (utime + stime).
    pub(crate) cpu: Duration,
    /// CPU of the worker process and all its descendants, live or reaped.
    pub(crate) tree_cpu: Duration,
    /// Per-job figures without start-up. `None` when the run ended within
    /// one poll.
    pub(crate) steady: Option<Steady>,
    /// Take to result of each job but the first, p50 and p99: at
    /// concurrency 1 only, where the n-th take answered 200 handed out the
    /// n-th job.
    pub(crate) latency: Option<(Duration, Duration)>,
    /// VmHWM of the worker process.
    pub(crate) peak_rss_kib: u64,
    /// Largest sum of VmRSS over the process tree seen while sampling.
    pub(crate) tree_peak_rss_kib: u64,
    /// Largest sum of Pss over the process tree seen while sampling.
    pub(crate) tree_peak_pss_kib: u64,
    /// Processes in the tree when the figures were read.
    pub(crate) tree_processes: usize,
    /// TCP connections the stand-in accepted during the run (over HTTPS,
    /// each one a TLS handshake).
    pub(crate) connections: usize,
    pub(crate) exit_code: Option<i32>,
    pub(crate) exit_text: String,
    pub(crate) stderr_tail: String,
}

impl Run {
    pub(crate) fn per_job(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0 / self.completed.max(1) as f64
    }
    pub(crate) fn throughput(&self) -> f64 {
        self.completed as f64 / self.wall.as_secs_f64()
    }
    pub(crate) fn steady_cpu_per_job(&self) -> Option<(f64, f64)> {
        let steady = self.steady?;
        let ms = |d: Duration| steady.per_job(d.as_secs_f64() * 1000.0);
        Some((ms(steady.own)?, ms(steady.tree)?))
    }
    pub(crate) fn steady_throughput(&self) -> Option<f64> {
        (self.completed > 1 && !self.first_to_last.is_zero())
            .then(|| (self.completed - 1) as f64 / self.first_to_last.as_secs_f64())
    }
}

/// Runs `command` against a fresh stand-in with `jobs` queued echo jobs and
/// measures it; verifies the results, then stops it with SIGTERM.
pub(crate) async fn measure(label: &str, command: Command, work: &Workload, meter: Meter) -> Run {
    measure_on(label, command, work, meter, None).await
}

/// [`measure`], with the stand-in served over HTTPS when `tls` is given.
pub(crate) async fn measure_on(
    label: &str,
    mut command: Command,
    work: &Workload,
    meter: Meter,
    tls: Option<&Tls>,
) -> Run {
    let Workload {
        jobs,
        concurrency,
        expect,
        limit,
        cutoff,
        ..
    } = *work;
    let fake = match tls {
        None => FakeRunpod::start(API_KEY).await,
        Some(tls) => FakeRunpod::start_tls(API_KEY, tls.server.clone()).await,
    };
    let mut inputs = BTreeMap::new();
    let text = if work.payload == 0 {
        "hello".to_owned()
    } else {
        // Room for the rest of the input and the result's envelope, so the
        // result stays within jobpipe's default --max-output-size of the
        // same number of bytes.
        "x".repeat(work.payload.saturating_sub(64))
    };
    for i in 0..jobs {
        let id = format!("bench-{i:06}");
        let input = json!({"n": i, "text": text});
        fake.push_job(json!({"id": id, "input": input}));
        inputs.insert(id, input);
    }

    let dir = tempfile::tempdir().expect("create a temporary directory");
    let stderr_path = dir.path().join("stderr");
    let stderr = fs::File::create(&stderr_path).expect("create the stderr file");
    // Only the stand-in's settings, not whatever this shell has set.
    for (name, _) in std::env::vars() {
        if name.starts_with("RUNPOD_")
            || name.starts_with("JOBPIPE_")
            || name.starts_with("SSL_CERT_")
        {
            command.env_remove(&name);
        }
    }
    if let Some(tls) = tls {
        command.env("SSL_CERT_FILE", &tls.ca_file);
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
    let mut at_first: Option<Start> = None;
    loop {
        if let Some(status) = child.try_wait().expect("poll the worker process") {
            fail(&format!(
                "{label} exited early ({}); stderr tail:\n{}",
                describe(status),
                tail(&stderr_path)
            ));
        }
        if at_first.is_none() && fake.done_count() > 0 {
            let perf = if meter.perf {
                let counter = SyscallCounter::start(pid, dir.path().join("perf"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                counter
            } else {
                None
            };
            at_first = Some(Start {
                done: fake.done_count(),
                own: own_cpu_ticks(pid),
                tree: tree_cpu_ticks(pid),
                counters: counters(pid),
                perf,
            });
        }
        if fake.queued() == 0 && fake.done_count() >= jobs {
            break;
        }
        if Instant::now() >= deadline {
            if cutoff == Cutoff::Fail {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                fail(&format!(
                    "{label}: only {} of {jobs} results after {limit:?}; stderr tail:\n{}",
                    fake.done_count(),
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
    let end_counters = counters(pid);
    let own_ticks = own_cpu_ticks(pid);
    let tree_ticks = tree_cpu_ticks(pid);
    let peak_rss_kib = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    let tree_processes = descendants(pid).len();
    let connections = fake.connections();
    let (tree_peak_rss_kib, tree_peak_pss_kib) = sampler.stop();
    let (at_first, syscalls) = match at_first {
        Some(mut start) => {
            let syscalls = start.perf.take().and_then(SyscallCounter::stop);
            (Some(start), syscalls)
        }
        None => (None, None),
    };

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
    let ticks = |t: u64| Duration::from_secs_f64(t as f64 / meter.clk_tck as f64);
    let steady = at_first.map(|start| Steady {
        jobs: completed.saturating_sub(start.done),
        own: ticks(own_ticks.saturating_sub(start.own)),
        tree: ticks(tree_ticks.saturating_sub(start.tree)),
        counters: Counters {
            cpu_ns: end_counters.cpu_ns.saturating_sub(start.counters.cpu_ns),
            context_switches: end_counters
                .context_switches
                .saturating_sub(start.counters.context_switches),
        },
        syscalls,
    });
    let latency = (concurrency == 1)
        .then(|| latencies(&fake.requests()))
        .flatten();
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
        latency,
        peak_rss_kib,
        tree_peak_rss_kib,
        tree_peak_pss_kib,
        tree_processes,
        connections,
        exit_code: status.code(),
        exit_text: describe(status),
        stderr_tail: tail(&stderr_path),
    }
}

/// The readings taken when the first result was seen.
struct Start {
    done: usize,
    own: u64,
    tree: u64,
    counters: Counters,
    perf: Option<SyscallCounter>,
}

/// p50 and p99 of take-to-result times, leaving out the first job (its take
/// may wait for the handler's start-up). The stand-in hands jobs out in the
/// order they were queued, so with one take at a time the n-th take answered
/// 200 handed out `bench-n`.
fn latencies(requests: &[Request]) -> Option<(Duration, Duration)> {
    let takes: Vec<Instant> = requests
        .iter()
        .filter(|r| r.path.contains("/job-take/") && r.status == Some(200))
        .map(|r| r.at)
        .collect();
    let done: HashMap<String, Instant> = requests
        .iter()
        .filter(|r| r.status == Some(200))
        .filter_map(|r| Some((job_id(r)?, r.at)))
        .collect();
    let mut times: Vec<Duration> = takes
        .iter()
        .enumerate()
        .skip(1)
        .filter_map(|(i, at)| {
            Some(
                done.get(&format!("bench-{i:06}"))?
                    .saturating_duration_since(*at),
            )
        })
        .collect();
    if times.is_empty() {
        return None;
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Some((at(0.5), at(0.99)))
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
