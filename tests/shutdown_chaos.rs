//! A chaos test of shutdown: hundreds of misbehaving jobs through the
//! stand-in RunPod queue, failing and slow result posts, and a SIGTERM
//! (sometimes two) at a random moment; every job jobpipe took gets exactly
//! one final result (delivered or spooled), no handler process or zombie
//! is left, and the stop stays within its limit. `JOBPIPE_CHAOS_SEED`
//! repeats a run, `JOBPIPE_CHAOS_LOG_DIR` keeps jobpipe's log.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::fake_runpod::{self, parse_body, FakeRunpod};
use support::shutdown::*;
use support::spooled;

// ---------------------------------------------------------------------------
// Chaos: hundreds of misbehaving jobs, failing and slow posts, signals
// ---------------------------------------------------------------------------

const CHAOS_JOBS: usize = 300;
const CHAOS_CONCURRENCY: &str = "4";
const CHAOS_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// A behaviour for the fake handler and the input that asks for it.
fn chaos_input(rng: &mut StdRng) -> Value {
    let weights: [(&str, u32); 10] = [
        ("echo", 30),
        ("sleep", 10),
        ("crash", 8),
        ("sigkill-self", 6),
        ("hang", 3),
        ("garbage", 8),
        ("error", 8),
        ("refresh", 7),
        ("stream", 10),
        ("progress", 5),
    ];
    let total: u32 = weights.iter().map(|(_, w)| w).sum();
    let mut pick = rng.gen_range(0..total);
    let what = weights
        .iter()
        .find(|(_, w)| {
            if pick < *w {
                true
            } else {
                pick -= w;
                false
            }
        })
        .map(|(name, _)| *name)
        .expect("a behaviour");
    let mut input = json!({"do": what});
    match what {
        "sleep" => input["ms"] = json!(rng.gen_range(20..400)),
        "crash" => input["code"] = json!(rng.gen_range(1..120)),
        "stream" | "progress" => input["n"] = json!(rng.gen_range(1..5)),
        _ => {}
    }
    input
}

/// Something the chaos run does to the fake or to jobpipe at a given time.
#[derive(Debug)]
enum Chaos {
    FailPosts(usize),
    DelayPosts(Duration),
    StopDelaying,
    Sigterm,
    SecondSigterm,
}

/// Hundreds of jobs through the fake queue with a random mix of
/// misbehaviours, failing and slow result posts, and a SIGTERM (sometimes
/// two) at a random moment. `JOBPIPE_CHAOS_SEED` repeats a run,
/// `JOBPIPE_CHAOS_LOG_DIR` keeps jobpipe's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_every_taken_job_gets_exactly_one_final_result() {
    let seed: u64 = std::env::var("JOBPIPE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed {seed} (JOBPIPE_CHAOS_SEED={seed} repeats this run)");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempdir();
    let tag = new_tag();
    let pids = dir.path().join("pids");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&pids).expect("pids dir");
    let fake = FakeRunpod::start(KEY).await;
    fake.set_long_poll(Duration::from_secs(5));

    let mut ids = Vec::new();
    let mut kinds = BTreeMap::new();
    for i in 0..CHAOS_JOBS {
        let id = format!("chaos-{i:03}");
        let mut input = chaos_input(&mut rng);
        input["pidfile"] = json!(pids.join(&id));
        kinds.insert(id.clone(), input["do"].as_str().unwrap_or("?").to_owned());
        fake.push_job(json!({"id": id, "input": input}));
        ids.push(id);
    }

    // The script: failing and slow posts, then one SIGTERM, maybe two.
    let term_at = Duration::from_millis(rng.gen_range(1500..10_000));
    let mut script = vec![
        (Duration::ZERO, Chaos::FailPosts(rng.gen_range(5..30))),
        (
            Duration::from_millis(rng.gen_range(0..term_at.as_millis() as u64)),
            Chaos::FailPosts(rng.gen_range(5..40)),
        ),
        (term_at, Chaos::Sigterm),
    ];
    if rng.gen_bool(0.3) {
        // A stall from shortly before the SIGTERM that outlasts the drain
        // and the flush window, so that results end up in the spool.
        let from = term_at.saturating_sub(Duration::from_millis(rng.gen_range(0..1500)));
        let stall = Duration::from_millis(rng.gen_range(3000..8000));
        script.push((from, Chaos::DelayPosts(stall)));
        script.push((from + Duration::from_secs(10), Chaos::StopDelaying));
    } else {
        // Slow posts for a while, sometimes past the shutdown deadline.
        let from = Duration::from_millis(rng.gen_range(0..term_at.as_millis() as u64 + 2000));
        let delay = Duration::from_millis(rng.gen_range(50..800));
        script.push((from, Chaos::DelayPosts(delay)));
        script.push((
            from + Duration::from_millis(rng.gen_range(300..8000)),
            Chaos::StopDelaying,
        ));
    }
    if rng.gen_bool(0.4) {
        script.push((
            term_at + Duration::from_millis(rng.gen_range(20..2500)),
            Chaos::SecondSigterm,
        ));
    }
    script.sort_by_key(|(at, _)| *at);
    eprintln!("chaos script: {script:?}");

    let args = runpod_args(
        &spool,
        &[
            "--concurrency",
            CHAOS_CONCURRENCY,
            "--job-timeout",
            "2s",
            "--kill-grace",
            "300ms",
            "--shutdown-timeout",
            "3s",
        ],
        &tag,
    );
    let started = Instant::now();
    let mut jp = start(&args, &fake.env(), dir.path());
    let mut signalled = None;
    let mut second_sent = false;
    'script: for (at, step) in &script {
        while Instant::now() < started + *at {
            if signalled.is_some() && jp.poll().is_some() {
                break 'script;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match step {
            Chaos::FailPosts(n) => fake.fail_done_posts(*n),
            Chaos::DelayPosts(d) => fake.set_done_delay(*d),
            Chaos::StopDelaying => fake.set_done_delay(Duration::ZERO),
            Chaos::Sigterm => {
                assert!(
                    jp.poll().is_none(),
                    "jobpipe exited on its own\n{}",
                    jp.logs()
                );
                jp.signal(Signal::SIGTERM);
                signalled = Some(Instant::now());
            }
            Chaos::SecondSigterm => {
                if jp.poll().is_none() {
                    jp.signal(Signal::SIGTERM);
                    second_sent = true;
                }
            }
        }
    }
    let signalled = signalled.expect("SIGTERM sent");
    let status = jp.wait_async(Duration::from_secs(30)).await;
    let stopping = jp.exited_at().expect("exited").duration_since(signalled);
    fake.set_done_delay(Duration::ZERO);
    if let Some(keep) = std::env::var_os("JOBPIPE_CHAOS_LOG_DIR") {
        let to = Path::new(&keep).join(format!("chaos-{seed}.log"));
        std::fs::copy(jp.log_path(), &to).expect("keep the chaos log");
        eprintln!("jobpipe's log is kept in {}", to.display());
    }

    // Which jobs jobpipe took: the queue hands them out in order.
    let taken = &ids[..CHAOS_JOBS - fake.queued()];
    let mut finals: BTreeMap<String, Vec<(&str, Value)>> = BTreeMap::new();
    for result in fake.results() {
        let id = fake_runpod::job_id(&result).expect("job id");
        finals
            .entry(id)
            .or_default()
            .push(("delivered", parse_body(&result)));
    }
    let spool_files = spooled(&spool);
    for kept in &spool_files {
        let id = kept["job_id"].as_str().expect("job_id").to_owned();
        assert!(
            kept["kind"].get("Final").is_some(),
            "non-final result spooled: {kept}"
        );
        finals
            .entry(id)
            .or_default()
            .push(("spooled", kept["body"].clone()));
    }
    let stderr = jp.stderr();
    let mut problems = Vec::new();
    // Jobs handed out in the answer to a take that SIGTERM cut off: jobpipe
    // never saw them.
    let mut lost_in_take = Vec::new();
    for id in taken {
        let kind = &kinds[id];
        match finals.get(id).map(Vec::as_slice) {
            None | Some([]) => {
                if stderr.contains(&format!("| {id} | job taken")) {
                    problems.push(format!("{id} ({kind}): taken but no result"));
                } else {
                    lost_in_take.push(id.clone());
                }
            }
            Some([(_, body)]) => {
                let shutdown = error_type(&body["error"]).as_deref() == Some("WorkerShutdown");
                let fine = match kind.as_str() {
                    "crash" | "sigkill-self" | "hang" | "error" => body.get("error").is_some(),
                    "garbage" => true,
                    _ => body.get("output").is_some() || shutdown,
                };
                if !fine {
                    problems.push(format!("{id} ({kind}): unexpected result {body}"));
                }
            }
            Some(many) => problems.push(format!("{id} ({kind}): {} results: {many:?}", many.len())),
        }
    }
    if !lost_in_take.is_empty() {
        problems.push(format!(
            "jobs {lost_in_take:?}: handed out, never taken by jobpipe, no result"
        ));
    }
    let taken_set: HashSet<&String> = taken.iter().collect();
    for id in finals.keys() {
        if !taken_set.contains(id) {
            problems.push(format!("{id}: a result for a job never handed out"));
        }
    }

    // No handler process, and nothing they forked, is left.
    let mut handler_pids = HashSet::new();
    for entry in std::fs::read_dir(&pids).expect("pids dir").flatten() {
        if let Some(pid) = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            handler_pids.insert(pid);
        }
    }
    for pid in &handler_pids {
        if handler_alive(*pid, &tag) {
            problems.push(format!("handler {pid} still running: {}", cmdline(*pid)));
        }
    }
    for (pid, line) in tagged_processes(&tag) {
        problems.push(format!("process {pid} of a handler still running: {line}"));
    }
    for pid in stray_zombie_children() {
        problems.push(format!("zombie child {pid} of the test process"));
    }

    let delivered = finals
        .values()
        .flatten()
        .filter(|(w, _)| *w == "delivered")
        .count();
    eprintln!(
        "chaos: {} of {CHAOS_JOBS} jobs taken, {delivered} results delivered, {} spooled, \
         {} handler processes; exit {:?} {stopping:?} after the first SIGTERM \
         (second SIGTERM: {second_sent}); run took {:?}",
        taken.len(),
        spool_files.len(),
        handler_pids.len(),
        status.code(),
        started.elapsed(),
    );
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problems:\n{}\n{}",
        problems.len(),
        problems.join("\n"),
        jp.logs()
    );
    assert!(
        matches!(status.code(), Some(0) | Some(5)),
        "exit {status:?}\n{}",
        jp.logs()
    );
    if status.code() == Some(0) {
        assert!(
            spool_files.is_empty(),
            "a graceful exit left results in the spool"
        );
    }
    // Drain (3 s), forced stop and flush window (2 s), with room to spare.
    let limit = CHAOS_SHUTDOWN_TIMEOUT + Duration::from_secs(5);
    assert!(
        stopping < limit,
        "took {stopping:?} to stop after SIGTERM\n{}",
        jp.logs()
    );
}
