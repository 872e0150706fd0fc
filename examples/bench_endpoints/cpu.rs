//! CPU seconds of processes from /proc, for the benchmarks that print
//! where a run's CPU went beside their floor's: on a machine of two cores
//! both runs are bound by CPU, so the figures say what the ratio means.

/// CPU seconds (user and system) of a process, the children it waited
/// for, and its live children: for the postmaster, the whole server,
/// backends that exited included.
pub fn tree_cpu(pid: i32) -> f64 {
    let (own, waited) = cpu_fields(pid);
    let live: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&child| parent_of(child) == Some(pid))
        .map(|child| cpu_fields(child).0)
        .sum();
    own + waited + live
}

/// CPU seconds of the children this benchmark waited for (pgbench).
pub fn own_children_cpu() -> f64 {
    cpu_fields(std::process::id() as i32).1
}

/// A process's own CPU seconds and its waited-for children's, from
/// /proc/PID/stat (utime, stime, cutime, cstime).
pub fn cpu_fields(pid: i32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return (0.0, 0.0);
    };
    let fields: Vec<f64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let ticks = 100.0; // USER_HZ on Linux
    let at = |i: usize| fields.get(i).copied().unwrap_or(0.0) / ticks;
    (at(11) + at(12), at(13) + at(14))
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(1)?.parse().ok()
}
