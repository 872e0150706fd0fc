//! jobpipe against the stand-in served over HTTPS beside the same run over
//! plain HTTP (`--tls`): what TLS costs per job, and whether connections
//! are kept (the stand-in counts the TCP connections it accepts, each one a
//! TLS handshake over HTTPS). The stand-in's certificate is signed by a CA
//! made for the run, which jobpipe trusts through `SSL_CERT_FILE`, as a
//! user would. The reference worker speaks plain HTTP alone; it runs in the
//! same rounds as the floor of the machine.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::compare::{median, METRICS};
use crate::measure::{measure_on, Cutoff, Expect, Meter, Run, Tls, Workload};
use crate::tls_ca::TestCa;
use crate::{build, c_echo, fail, jobpipe_command, require_clean_exit, Args};

/// The workers of each round, in the order of the table's columns.
const SIDES: [&str; 3] = ["jobpipe https", "jobpipe http", "reference http"];

pub(crate) async fn run(args: &Args, jobpipe: &Path, meter: Meter) {
    if args.rounds == 0 {
        fail("--rounds must be at least 1");
    }
    let reference = build("--example", "reference_worker");
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let ca = TestCa::new("jobpipe bench CA");
    let tls = Tls {
        server: ca.server.clone(),
        ca_file: ca.write_pem(dir.path()),
    };
    println!(
        "TLS: the stand-in serves HTTPS (rustls, a CA made for this run, trusted by jobpipe through SSL_CERT_FILE);\n\
         the reference worker speaks plain HTTP only, so its column is the same plain floor as in --reference"
    );
    for concurrency in [1, 16] {
        let work = Workload {
            jobs: args.jobs,
            concurrency,
            payload: 0,
            expect: Expect::Echo,
            limit: Duration::from_secs(args.timeout),
            cutoff: Cutoff::Fail,
        };
        let title = format!("C echo, concurrency {concurrency}, {} jobs", args.jobs);
        let runs = rounds(&title, &work, jobpipe, &reference, &tls, args.rounds, meter).await;
        print_table(&title, &runs, args.rounds);
    }
}

/// Runs the three sides `rounds` times in turns; returns each side's runs.
async fn rounds(
    title: &str,
    work: &Workload,
    jobpipe: &Path,
    reference: &Path,
    tls: &Tls,
    rounds: usize,
    meter: Meter,
) -> Vec<Vec<Run>> {
    let handler = vec!["--".to_owned(), c_echo().display().to_string()];
    let mut runs: Vec<Vec<Run>> = SIDES.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        eprintln!("bench: {title}: round {} of {rounds}", round + 1);
        // Who goes first rotates, so none always meets the machine as
        // another left it.
        for turn in 0..SIDES.len() {
            let side = (round + turn) % SIDES.len();
            let label = SIDES[side];
            let spool = tempfile::tempdir().expect("create a temporary directory");
            let run = match side {
                0 | 1 => {
                    let command =
                        jobpipe_command(jobpipe, work.concurrency, spool.path(), &handler);
                    let over = (side == 0).then_some(tls);
                    let run = measure_on(label, command, work, meter, over).await;
                    require_clean_exit(&run);
                    run
                }
                _ => {
                    let mut command = Command::new(reference);
                    command
                        .args(["--concurrency", &work.concurrency.to_string()])
                        .args(&handler);
                    measure_on(label, command, work, meter, None).await
                }
            };
            runs[side].push(run);
        }
    }
    runs
}

fn print_table(title: &str, runs: &[Vec<Run>], rounds: usize) {
    println!("\n{title} (medians of {rounds} rounds)");
    let mut header = format!("  {:34}", "");
    for label in SIDES {
        header.push_str(&format!(" {label:>15}"));
    }
    header.push_str(&format!(" {:>12} {:>12}", "https / http", "https / ref"));
    println!("{header}");
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_owned(),
    };
    for m in METRICS {
        let medians: Vec<Option<f64>> = runs
            .iter()
            .map(|side| median(side.iter().filter_map(m.value).collect()))
            .collect();
        let mut line = format!("  {:34}", m.name);
        for value in &medians {
            let cell = match value {
                Some(v) if *v >= 100.0 => format!("{v:.0} {}", m.unit),
                Some(v) => format!("{v:.3} {}", m.unit),
                None => "-".to_owned(),
            };
            line.push_str(&format!(" {cell:>15}"));
        }
        line.push_str(&format!(
            " {:>12} {:>12}",
            ratio(medians[0], medians[1]),
            ratio(medians[0], medians[2])
        ));
        println!("{line}");
    }
    // Every run's count, not a median: one handshake per job would show
    // in any of them.
    let mut line = format!("  {:34}", "connections accepted, each run");
    for side in runs {
        let counts: Vec<String> = side.iter().map(|r| r.connections.to_string()).collect();
        line.push_str(&format!(" {:>15}", counts.join(" ")));
    }
    println!("{line}");
}
