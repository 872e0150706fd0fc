//! What the benchmark reads about a worker from /proc, and the syscall
//! count from `perf stat` when it works: CPU time, memory, context
//! switches and syscalls of a process and of its tree of descendants.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::fail;

/// Fields of /proc/<pid>/stat, in clock ticks.
pub(crate) struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

pub(crate) fn proc_stat(pid: u32) -> Option<Stat> {
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
pub(crate) fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    proc_kib(pid, "status", key)
}

/// A `kB` value from /proc/<pid>/<file>, e.g. `Pss:` in `smaps_rollup`.
pub(crate) fn proc_kib(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of `pid`, in clock ticks.
pub(crate) fn own_cpu_ticks(pid: u32) -> u64 {
    let stat = proc_stat(pid).unwrap_or_else(|| fail(&format!("cannot read /proc/{pid}/stat")));
    stat.utime + stat.stime
}

/// CPU of `root` and its descendants in clock ticks: each live process's
/// own time plus the time of the children it has reaped.
pub(crate) fn tree_cpu_ticks(root: u32) -> u64 {
    descendants(root)
        .into_iter()
        .filter_map(proc_stat)
        .map(|s| s.utime + s.stime + s.cutime + s.cstime)
        .sum()
}

/// `root` and every live descendant of it.
pub(crate) fn descendants(root: u32) -> Vec<u32> {
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
pub(crate) struct TreeSampler {
    stop: Arc<AtomicBool>,
    rss: Arc<AtomicU64>,
    pss: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl TreeSampler {
    pub(crate) fn start(root: u32) -> TreeSampler {
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
    pub(crate) fn stop(self) -> (u64, u64) {
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
pub(crate) fn clock_ticks_per_second() -> u64 {
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

/// Counters of a process summed over its threads, at one moment.
#[derive(Clone, Copy, Default)]
pub(crate) struct Counters {
    /// CPU time in nanoseconds (`/proc/<pid>/task/*/schedstat`, first
    /// field): finer than the clock ticks of `/proc/<pid>/stat`.
    pub(crate) cpu_ns: u64,
    /// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches`.
    pub(crate) context_switches: u64,
}

/// The counters of `pid` summed over its live threads. Threads that have
/// ended are not counted, so take both readings while the same threads live.
pub(crate) fn counters(pid: u32) -> Counters {
    let mut sum = Counters::default();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return sum;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        if let Ok(text) = fs::read_to_string(dir.join("schedstat")) {
            sum.cpu_ns += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(text) = fs::read_to_string(dir.join("status")) {
            for line in text.lines() {
                if let Some(v) = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    sum.context_switches += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    sum
}

/// Whether `perf stat` can count syscalls here (it needs the
/// `raw_syscalls:sys_enter` tracepoint and the right to use it).
pub(crate) fn perf_works() -> bool {
    Command::new("perf")
        .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `perf stat` attached to a running process, counting its syscalls.
pub(crate) struct SyscallCounter {
    child: Child,
    output: PathBuf,
}

impl SyscallCounter {
    /// Starts counting the syscalls of every thread `pid` has now.
    pub(crate) fn start(pid: u32, output: PathBuf) -> Option<SyscallCounter> {
        let child = Command::new("perf")
            .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-o"])
            .arg(&output)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // perf needs a moment to attach: the caller waits a little before
        // it reads the job count that starts the span.
        Some(SyscallCounter { child, output })
    }

    /// Stops counting and returns the count.
    pub(crate) fn stop(mut self) -> Option<u64> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        self.child.wait().ok()?;
        let text = fs::read_to_string(&self.output).ok()?;
        text.lines()
            .find(|line| line.contains("raw_syscalls:sys_enter"))?
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()
    }
}
