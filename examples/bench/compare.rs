//! jobpipe beside the bare reference worker (examples/reference_worker.rs):
//! the same stand-in, the same handler, the same jobs, run in turns within
//! one benchmark run so that the load other programs put on the machine
//! falls on both alike. Prints the medians over the rounds and their ratios,
//! and with `--goals` checks them against the performance goals.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::measure::{measure, Cutoff, Expect, Meter, Run, Workload};
use crate::{build, c_echo, endurance, fail, handler, jobpipe_command, require_clean_exit};
use crate::{Args, HandlerKind};

/// One workload run by both workers.
struct Case {
    title: String,
    work: Workload,
    /// The handler's command line, without jobpipe's `--`.
    handler: Vec<String>,
}

/// The medians of both workers' runs of a case.
struct Medians {
    jobpipe: Vec<Option<f64>>,
    reference: Vec<Option<f64>>,
    /// VmHWM of jobpipe, for the 20 MB figures.
    jobpipe_peak_rss_kib: f64,
}

/// A figure of a run, and how to print it.
pub(crate) struct Metric {
    pub(crate) name: &'static str,
    pub(crate) unit: &'static str,
    pub(crate) value: fn(&Run) -> Option<f64>,
}

pub(crate) const METRICS: &[Metric] = &[
    Metric {
        name: "CPU per job, worker process",
        unit: "ms",
        value: |r| {
            let s = r.steady?;
            s.per_job(s.counters.cpu_ns as f64 / 1e6)
        },
    },
    Metric {
        name: "syscalls per job",
        unit: "",
        value: |r| {
            let s = r.steady?;
            s.per_job(s.syscalls? as f64)
        },
    },
    Metric {
        name: "context switches per job",
        unit: "",
        value: |r| {
            let s = r.steady?;
            s.per_job(s.counters.context_switches as f64)
        },
    },
    Metric {
        name: "take to result, p50",
        unit: "µs",
        value: |r| Some(r.latency?.0.as_secs_f64() * 1e6),
    },
    Metric {
        name: "take to result, p99",
        unit: "µs",
        value: |r| Some(r.latency?.1.as_secs_f64() * 1e6),
    },
    Metric {
        name: "throughput, first to last result",
        unit: "jobs/s",
        value: Run::steady_throughput,
    },
    Metric {
        name: "CPU per job, worker, whole run",
        unit: "ms",
        value: |r| Some(r.per_job(r.cpu)),
    },
    Metric {
        name: "peak RSS, worker process",
        unit: "MiB",
        value: |r| Some(r.peak_rss_kib as f64 / 1024.0),
    },
];

const CPU: usize = 0;
const P50: usize = 3;
const P99: usize = 4;
const THROUGHPUT: usize = 5;
const CPU_WHOLE: usize = 6;

pub(crate) async fn run(args: &Args, jobpipe: &Path, meter: Meter) {
    if args.rounds == 0 {
        fail("--rounds must be at least 1");
    }
    let reference = build("--example", "reference_worker");
    let workers = Workers {
        jobpipe,
        baseline: args.baseline.as_deref(),
        reference: &reference,
    };
    let limit = Duration::from_secs(args.timeout);
    let work = |jobs, concurrency, payload| Workload {
        jobs,
        concurrency,
        payload,
        expect: Expect::Echo,
        limit,
        cutoff: Cutoff::Fail,
    };
    if !args.goals {
        if args.handler == HandlerKind::Oneshot {
            fail("--reference needs a persistent handler (--handler c or python)");
        }
        let (label, mut words) = handler(args);
        words.remove(0); // jobpipe's `--`
        let case = Case {
            title: format!("{label}, concurrency {}", args.concurrency),
            work: work(args.jobs, args.concurrency, args.payload),
            handler: words,
        };
        compare(&case, &workers, args.rounds, meter).await;
        return;
    }

    let echo = vec![c_echo().display().to_string()];
    let case = |title: &str, work: Workload| Case {
        title: title.to_owned(),
        work,
        handler: echo.clone(),
    };
    let one = compare(
        &case("C echo, concurrency 1, 20000 jobs", work(20_000, 1, 0)),
        &workers,
        args.rounds,
        meter,
    )
    .await;
    let sixteen = compare(
        &case("C echo, concurrency 16, 30000 jobs", work(30_000, 16, 0)),
        &workers,
        args.rounds,
        meter,
    )
    .await;
    let payload = 20_000_000;
    let big = compare(
        &case(
            "C echo, 20 MB input and output, concurrency 1, 8 jobs",
            work(8, 1, payload),
        ),
        &workers,
        args.rounds,
        meter,
    )
    .await;
    let growth = if args.endurance > 0 {
        Some(endurance::run(jobpipe, &c_echo(), args.endurance, meter).await)
    } else {
        None
    };

    println!("\ngoals (ratios jobpipe / reference worker, medians of the rounds)");
    let ratio = |m: &Medians, i: usize| match (m.jobpipe[i], m.reference[i]) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let idle_kib = one.jobpipe_peak_rss_kib;
    let payload_kib = payload as f64 / 1024.0;
    let rows: Vec<(&str, f64, Option<f64>)> = vec![
        ("CPU per job, concurrency 1", 1.5, ratio(&one, CPU)),
        ("CPU per job, concurrency 16", 1.5, ratio(&sixteen, CPU)),
        ("take to result p50, concurrency 1", 1.5, ratio(&one, P50)),
        ("take to result p99, concurrency 1", 2.0, ratio(&one, P99)),
        (
            "20 MB: CPU per job (whole run)",
            2.0,
            ratio(&big, CPU_WHOLE),
        ),
        (
            "20 MB: peak RSS / payload",
            3.0,
            Some(big.jobpipe_peak_rss_kib / payload_kib),
        ),
        (
            "20 MB: copies alive, (peak − idle RSS) / payload",
            2.0,
            Some((big.jobpipe_peak_rss_kib - idle_kib) / payload_kib),
        ),
    ];
    for (name, target, value) in rows {
        let (shown, met) = match value {
            Some(v) => (
                format!("{v:.2}"),
                if v <= target { "met" } else { "NOT met" },
            ),
            None => ("-".to_owned(), "not measured"),
        };
        println!("  {name:50} {shown:>6}  (at most {target}) {met}");
    }
    if let Some(t) = sixteen.jobpipe[THROUGHPUT] {
        println!(
            "  {:50} {t:>6.0}  jobs/s (no regression)",
            "throughput, concurrency 16"
        );
    }
    if let Some((after_1k, after_all, jobs)) = growth {
        println!(
            "  {:50} {:.1} MiB after 1000 jobs, {:.1} MiB after {jobs} (no growth)",
            "RSS of jobpipe",
            after_1k as f64 / 1024.0,
            after_all as f64 / 1024.0
        );
    }
}

/// The workers a case is run through.
pub(crate) struct Workers<'a> {
    pub(crate) jobpipe: &'a Path,
    /// Another jobpipe binary to compare with (`--baseline`).
    pub(crate) baseline: Option<&'a Path>,
    pub(crate) reference: &'a Path,
}

/// Runs a case through every worker `rounds` times, in turns, prints the
/// medians and returns them.
async fn compare(case: &Case, workers: &Workers<'_>, rounds: usize, meter: Meter) -> Medians {
    let mut order: Vec<(&str, Option<&Path>)> = vec![("jobpipe", Some(workers.jobpipe))];
    if let Some(baseline) = workers.baseline {
        order.push(("baseline", Some(baseline)));
    }
    order.push(("reference", None));
    let mut runs: Vec<Vec<Run>> = order.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        eprintln!("bench: {}: round {} of {rounds}", case.title, round + 1);
        // Rotate who goes first, so none always meets the machine as
        // another left it.
        for turn in 0..order.len() {
            let which = (round + turn) % order.len();
            let (label, jobpipe) = order[which];
            let run = match jobpipe {
                Some(binary) => {
                    let spool = tempfile::tempdir().expect("create a temporary directory");
                    let mut words = vec!["--".to_owned()];
                    words.extend(case.handler.iter().cloned());
                    let command =
                        jobpipe_command(binary, case.work.concurrency, spool.path(), &words);
                    let run = measure(label, command, &case.work, meter).await;
                    require_clean_exit(&run);
                    run
                }
                None => {
                    let mut command = Command::new(workers.reference);
                    command
                        .args(["--concurrency", &case.work.concurrency.to_string(), "--"])
                        .args(&case.handler);
                    measure(label, command, &case.work, meter).await
                }
            };
            runs[which].push(run);
        }
    }
    let medians: Vec<Vec<Option<f64>>> = runs
        .iter()
        .map(|runs| {
            METRICS
                .iter()
                .map(|m| median(runs.iter().filter_map(m.value).collect()))
                .collect()
        })
        .collect();
    println!("\n{} (medians of {rounds} rounds)", case.title);
    let mut header = format!("  {:34}", "");
    for (label, _) in &order {
        header.push_str(&format!(" {label:>14}"));
    }
    header.push_str(&format!(" {:>9}", "/ ref"));
    if workers.baseline.is_some() {
        header.push_str(&format!(" {:>9}", "/ base"));
    }
    println!("{header}");
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_owned(),
    };
    let reference = order.len() - 1;
    for (i, m) in METRICS.iter().enumerate() {
        let mut line = format!("  {:34}", m.name);
        for side in &medians {
            let cell = match side[i] {
                Some(v) if v >= 100.0 => format!("{v:.0} {}", m.unit),
                Some(v) => format!("{v:.3} {}", m.unit),
                None => "-".to_owned(),
            };
            line.push_str(&format!(" {cell:>14}"));
        }
        line.push_str(&format!(
            " {:>9}",
            ratio(medians[0][i], medians[reference][i])
        ));
        if workers.baseline.is_some() {
            line.push_str(&format!(" {:>9}", ratio(medians[0][i], medians[1][i])));
        }
        println!("{line}");
    }
    Medians {
        jobpipe: medians[0].clone(),
        reference: medians[reference].clone(),
        jobpipe_peak_rss_kib: median(runs[0].iter().map(|r| r.peak_rss_kib as f64).collect())
            .unwrap_or(0.0),
    }
}

pub(crate) fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}
