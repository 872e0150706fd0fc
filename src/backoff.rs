//! Retry and back-off as data plus an iterator, shared by every caller that
//! retries: handler restarts, job takes, result posts; and the pause that
//! keeps a poll answered at once from becoming a hot loop.

use std::time::Duration;

use rand::Rng;

/// How delays grow between attempts.
#[derive(Debug, Clone, Copy)]
pub struct BackoffPolicy {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Upper bound for any delay.
    pub max: Duration,
    /// Fraction of each delay that is randomised (0.0 to 1.0), so that many
    /// workers recovering from one outage do not retry in lockstep.
    pub jitter: f64,
}

impl BackoffPolicy {
    pub const fn new(initial: Duration, max: Duration, jitter: f64) -> Self {
        BackoffPolicy {
            initial,
            max,
            jitter,
        }
    }

    /// A fresh sequence of delays.
    pub fn iter(&self) -> Backoff {
        Backoff {
            policy: *self,
            next: self.initial,
        }
    }
}

/// The delays of one run of retries: doubling, capped, with jitter. Endless;
/// callers decide when to give up.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    next: Duration,
}

impl Backoff {
    /// Starts over, after a success.
    pub fn reset(&mut self) {
        self.next = self.policy.initial;
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next.min(self.policy.max);
        self.next = (self.next * 2).min(self.policy.max);
        let jitter = self.policy.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return Some(base);
        }
        let factor = 1.0 - jitter + rand::thread_rng().gen::<f64>() * jitter;
        Some(base.mul_f64(factor))
    }
}

/// A poll that should long-poll but may be answered at once: a poll
/// answered quicker than `quick` waits `pause` before the next, so an
/// endpoint that never holds the request open is not hammered.
#[derive(Debug, Clone, Copy)]
pub struct PollPace {
    pub quick: Duration,
    pub pause: Duration,
}

impl PollPace {
    pub const fn new(quick: Duration, pause: Duration) -> Self {
        PollPace { quick, pause }
    }

    /// The pause before the next poll, for one that started at `started`
    /// and came back with nothing.
    pub fn after(&self, started: tokio::time::Instant) -> Option<Duration> {
        (started.elapsed() < self.quick).then_some(self.pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let policy =
            BackoffPolicy::new(Duration::from_millis(100), Duration::from_millis(500), 0.0);
        let delays: Vec<_> = policy.iter().take(5).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let policy = BackoffPolicy::new(Duration::from_secs(1), Duration::from_secs(1), 0.5);
        for delay in policy.iter().take(100) {
            assert!(delay >= Duration::from_millis(500) && delay <= Duration::from_secs(1));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn quick_empty_polls_pause() {
        let pace = PollPace::new(Duration::from_millis(500), Duration::from_millis(200));
        let started = tokio::time::Instant::now();
        assert_eq!(pace.after(started), Some(Duration::from_millis(200)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(pace.after(started), None);
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff =
            BackoffPolicy::new(Duration::from_millis(10), Duration::from_secs(1), 0.0).iter();
        backoff.next();
        backoff.next();
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(10)));
    }
}
