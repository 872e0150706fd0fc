//! The figures behind the dashboard's charts: per endpoint and per
//! minute, the jobs that completed and failed, and histograms of their
//! queue wait and run time, for the last day.
//!
//! They are kept in memory by the API process, fed every few seconds by
//! [`sample`] from the jobs that ended since it last looked (read in order
//! of their end from the index `jobs_finished`, a few thousand rows at a
//! time), and on start from the last hour of jobs the store still keeps.
//! Memory rather than a rollup table because the source of truth, the
//! jobs themselves, is already in the database: a table would add a write
//! per minute per endpoint to every API process and a migration for
//! figures that a restart can rebuild from the kept jobs of the last
//! hour. What a restart loses is the day beyond that hour (and jobs
//! deleted by a retention shorter than the sampling period); the page
//! says from when its figures start.
//!
//! A histogram has four bins per doubling of the time (each within ±9 %)
//! and keeps only the bins it has counts in, so a minute costs some
//! hundred bytes and two minutes merge exactly: a day's chart sums
//! five-minute buckets from the minutes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::endpoint::queue::{to_ms, Ended, JobStatus, Queue};

/// How often [`sample`] reads the jobs that ended.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Jobs read per statement.
const BATCH: usize = 5_000;
/// Statements per round, at most: a backlog is caught up over rounds.
const ROUNDS_MAX: usize = 20;
/// How long the figures are kept.
pub const KEPT_MS: i64 = 24 * 60 * 60 * 1000;
const MINUTE_MS: i64 = 60_000;
/// Endpoints with figures, at most; a name beyond them is not counted
/// (the names in use are few; this bounds memory whatever clients send).
const ENDPOINTS_MAX: usize = 256;
/// Bins per doubling of a time.
const BINS_PER_OCTAVE: f64 = 4.0;

/// Counts of times in bins growing by 2^(1/4); only the bins in use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// (bin, count), sorted by bin.
    bins: Vec<(u16, u64)>,
}

impl Histogram {
    /// Bin 0 holds times under 1 ms; bin i ≥ 1 holds [2^((i-1)/4), 2^(i/4)).
    fn bin(ms: i64) -> u16 {
        if ms < 1 {
            return 0;
        }
        ((ms as f64).log2() * BINS_PER_OCTAVE).floor() as u16 + 1
    }

    pub fn add(&mut self, ms: i64) {
        self.add_count(Histogram::bin(ms), 1);
    }

    fn add_count(&mut self, bin: u16, count: u64) {
        match self.bins.binary_search_by_key(&bin, |(b, _)| *b) {
            Ok(i) => self.bins[i].1 += count,
            Err(i) => self.bins.insert(i, (bin, count)),
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        for &(bin, count) in &other.bins {
            self.add_count(bin, count);
        }
    }

    /// The time (ms) below which a share `q` of the counts lie: the
    /// middle of its bin (on a log scale); none when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.bins.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for &(bin, count) in &self.bins {
            seen += count;
            if seen >= rank {
                if bin == 0 {
                    return Some(0.5);
                }
                return Some(2f64.powf((f64::from(bin) - 0.5) / BINS_PER_OCTAVE));
            }
        }
        None
    }
}

/// What ended in one span of time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Span {
    /// Its start (ms since the epoch).
    pub t: i64,
    pub completed: u64,
    /// FAILED and TIMED_OUT.
    pub failed: u64,
    pub cancelled: u64,
    pub wait: Histogram,
    pub run: Histogram,
}

impl Span {
    fn add(&mut self, job: &Ended) {
        match job.status {
            JobStatus::Completed => self.completed += 1,
            JobStatus::Failed | JobStatus::TimedOut => self.failed += 1,
            JobStatus::Cancelled => self.cancelled += 1,
            JobStatus::InQueue | JobStatus::InProgress => return,
        }
        if let Some(ms) = job.wait_ms {
            self.wait.add(ms);
        }
        if let Some(ms) = job.run_ms {
            self.run.add(ms);
        }
    }

    fn merge(&mut self, other: &Span) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.cancelled += other.cancelled;
        self.wait.merge(&other.wait);
        self.run.merge(&other.run);
    }
}

/// Every endpoint's minutes, and from when they count.
#[derive(Debug)]
pub struct Rollup {
    endpoints: Mutex<HashMap<String, VecDeque<Span>>>,
    /// The first time read (ms): figures before it are not known.
    since: Mutex<Option<i64>>,
}

impl Default for Rollup {
    fn default() -> Self {
        Rollup::new()
    }
}

impl Rollup {
    pub fn new() -> Rollup {
        Rollup {
            endpoints: Mutex::new(HashMap::new()),
            since: Mutex::new(None),
        }
    }

    /// Counts `jobs` into their endpoints' minutes.
    pub fn add(&self, jobs: &[Ended]) {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        for job in jobs {
            if !endpoints.contains_key(&job.endpoint) && endpoints.len() >= ENDPOINTS_MAX {
                continue;
            }
            let minutes = endpoints.entry(job.endpoint.clone()).or_default();
            let t = job.finished_at - job.finished_at.rem_euclid(MINUTE_MS);
            // Jobs come oldest first, so the minute is nearly always the
            // last one or a new one.
            let at = minutes.iter().rposition(|m| m.t <= t);
            match at {
                Some(i) if minutes[i].t == t => minutes[i].add(job),
                _ => {
                    let mut span = Span {
                        t,
                        ..Span::default()
                    };
                    span.add(job);
                    minutes.insert(at.map_or(0, |i| i + 1), span);
                }
            }
            let newest = minutes.back().map_or(t, |m| m.t);
            while minutes.front().is_some_and(|m| m.t < newest - KEPT_MS) {
                minutes.pop_front();
            }
        }
    }

    /// Notes the first time read, once.
    fn start_at(&self, at: i64) {
        self.since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(at);
    }

    /// From when the figures count (ms), once the first read is done.
    pub fn since(&self) -> Option<i64> {
        *self.since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `endpoint`'s spans of `bucket_ms` from `from` up to `to` (ms), one
    /// for each, empty ones included, oldest first.
    pub fn series(&self, endpoint: &str, from: i64, to: i64, bucket_ms: i64) -> Vec<Span> {
        let start = from - from.rem_euclid(bucket_ms);
        let count = ((to - start) / bucket_ms + 1).clamp(0, 10_000) as usize;
        let mut spans: Vec<Span> = (0..count)
            .map(|i| Span {
                t: start + i as i64 * bucket_ms,
                ..Span::default()
            })
            .collect();
        let endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        for minute in endpoints.get(endpoint).into_iter().flatten() {
            if minute.t < start {
                continue;
            }
            let i = ((minute.t - start) / bucket_ms) as usize;
            if let Some(span) = spans.get_mut(i) {
                span.merge(minute);
            }
        }
        spans
    }

    /// Everything that ended for `endpoint` from `from` (ms) on.
    pub fn total(&self, endpoint: &str, from: i64) -> Span {
        let mut total = Span::default();
        let endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        for minute in endpoints.get(endpoint).into_iter().flatten() {
            if minute.t + MINUTE_MS > from {
                total.merge(minute);
            }
        }
        total
    }

    /// The endpoints with figures.
    pub fn endpoints(&self) -> Vec<String> {
        let endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        endpoints.keys().cloned().collect()
    }
}

/// Now, in ms since the epoch, by this process's clock.
pub fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

/// Feeds `rollup` with the jobs that end, until `stop`.
pub async fn sample(queue: Arc<dyn Queue>, rollup: Arc<Rollup>, stop: CancellationToken) {
    let mut after: Option<i64> = None;
    let mut failing = false;
    loop {
        for _ in 0..ROUNDS_MAX {
            match queue.ended_since(after, BATCH).await {
                Ok((ended, read_to)) => {
                    if after.is_none() {
                        rollup.start_at(ended.first().map_or(read_to, |e| e.finished_at));
                    }
                    rollup.add(&ended);
                    after = Some(read_to);
                    failing = false;
                    if ended.len() < BATCH {
                        break;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!("the dashboard's figures cannot be read from the queue: {e}; trying again every {}s", SAMPLE_EVERY.as_secs());
                    }
                    failing = true;
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(endpoint: &str, status: JobStatus, at: i64, wait: i64, run: i64) -> Ended {
        Ended {
            endpoint: endpoint.into(),
            status,
            finished_at: at,
            wait_ms: Some(wait),
            run_ms: Some(run),
        }
    }

    #[test]
    fn quantiles_land_within_a_bin_of_the_truth() {
        let mut h = Histogram::default();
        for ms in 1..=1000 {
            h.add(ms);
        }
        let p50 = h.quantile(0.5).unwrap();
        let p99 = h.quantile(0.99).unwrap();
        assert!((450.0..=550.0).contains(&p50), "p50 {p50}");
        assert!((900.0..=1100.0).contains(&p99), "p99 {p99}");
        assert_eq!(Histogram::default().quantile(0.5), None);
        let mut fast = Histogram::default();
        fast.add(0);
        assert_eq!(fast.quantile(0.99), Some(0.5));
    }

    #[test]
    fn minutes_sum_into_buckets_with_empty_ones_kept() {
        let rollup = Rollup::new();
        let t0 = 1_800_000_000_000 - 1_800_000_000_000 % (5 * MINUTE_MS);
        rollup.add(&[
            ended("a", JobStatus::Completed, t0 + 1_000, 10, 100),
            ended("a", JobStatus::Failed, t0 + 61_000, 20, 200),
            ended("a", JobStatus::TimedOut, t0 + 61_500, 20, 200),
            ended("b", JobStatus::Completed, t0 + 2_000, 1, 1),
            // Out of order: goes into its own minute, before the others.
            ended("a", JobStatus::Completed, t0 - 60_000, 5, 5),
        ]);
        let minutes = rollup.series("a", t0 - 60_000, t0 + 120_000, MINUTE_MS);
        let counts: Vec<(u64, u64)> = minutes.iter().map(|m| (m.completed, m.failed)).collect();
        assert_eq!(counts, [(1, 0), (1, 0), (0, 2), (0, 0)]);
        let five = rollup.series("a", t0, t0 + 60_000, 5 * MINUTE_MS);
        assert_eq!(five.len(), 1);
        assert_eq!((five[0].completed, five[0].failed), (1, 2));
        assert_eq!(rollup.total("a", t0).completed, 1);
        assert_eq!(rollup.total("b", t0).completed, 1);
        assert!(rollup.series("none", t0, t0, MINUTE_MS)[0]
            .wait
            .quantile(0.5)
            .is_none());
    }

    #[test]
    fn a_day_is_kept_and_no_more() {
        let rollup = Rollup::new();
        let t0 = 1_800_000_000_000;
        rollup.add(&[ended("a", JobStatus::Completed, t0, 1, 1)]);
        rollup.add(&[ended(
            "a",
            JobStatus::Completed,
            t0 + KEPT_MS + MINUTE_MS,
            1,
            1,
        )]);
        assert_eq!(rollup.total("a", 0).completed, 1);
    }
}
