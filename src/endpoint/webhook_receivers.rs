//! What webhook delivery knows about each receiver (an origin: scheme, host
//! and port), so that one slow or dead receiver holds up only its own
//! posts: a few posts in flight per receiver, and a circuit breaker that
//! stops posting to a receiver that keeps failing, for a back-off that
//! grows while it keeps failing. Pure bookkeeping, driven by the delivery
//! loop with the time passed in, so it is tested without a clock or a
//! network.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Posts in flight to one receiver at once. A receiver that hangs holds
/// this many posts and no more; two let a healthy receiver overlap one
/// slow answer with the next post.
pub(super) const PER_RECEIVER: usize = 2;
/// Failures in a row (no answer, a refused connection, 5xx, 408 or 429)
/// after which a receiver's circuit opens.
const FAILURES_TO_OPEN: u32 = 5;
/// How long a circuit stays open the first time; it doubles each time the
/// one trial post let through afterwards fails, up to `OPEN_MAX`.
const OPEN_FIRST: Duration = Duration::from_secs(5);
const OPEN_MAX: Duration = Duration::from_secs(300);
/// Receivers remembered at most. Only receivers with posts in flight or
/// failures are remembered at all; past this, the one idle longest is
/// forgotten (it starts afresh, closed, if it comes back).
const REMEMBERED: usize = 1024;

/// Whether a post to a receiver may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Start,
    /// The receiver has `PER_RECEIVER` posts in flight, or its one trial
    /// post after an open circuit.
    Busy,
    /// The circuit is open until then.
    Open(Instant),
}

/// How a post went, as far as the receiver's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Health {
    /// It answered; a 4xx other than 408 and 429 counts too (the post
    /// failed, the receiver did not).
    Answered,
    Failed,
}

#[derive(Debug)]
struct Receiver {
    in_flight: usize,
    failures: u32,
    /// Set while the circuit is open, and once past, while its trial post
    /// runs (half-open).
    open_until: Option<Instant>,
    open_for: Duration,
    last_seen: Instant,
}

/// Every receiver with posts in flight or recent failures.
#[derive(Debug, Default)]
pub(super) struct Receivers {
    map: HashMap<String, Receiver>,
}

impl Receivers {
    pub(super) fn verdict(&self, origin: &str, now: Instant) -> Verdict {
        let Some(receiver) = self.map.get(origin) else {
            return Verdict::Start;
        };
        match receiver.open_until {
            Some(until) if now < until => Verdict::Open(until),
            // Half-open: one trial post at a time.
            Some(_) if receiver.in_flight > 0 => Verdict::Busy,
            _ if receiver.in_flight >= PER_RECEIVER => Verdict::Busy,
            _ => Verdict::Start,
        }
    }

    /// Records a post started (after a `Start` verdict).
    pub(super) fn started(&mut self, origin: &str, now: Instant) {
        if !self.map.contains_key(origin) && self.map.len() >= REMEMBERED {
            self.forget_the_longest_idle();
        }
        let receiver = self.map.entry(origin.to_owned()).or_insert(Receiver {
            in_flight: 0,
            failures: 0,
            open_until: None,
            open_for: Duration::ZERO,
            last_seen: now,
        });
        receiver.in_flight += 1;
        receiver.last_seen = now;
    }

    /// Records a post ended; opens, reopens or closes the circuit.
    pub(super) fn finished(&mut self, origin: &str, health: Health, now: Instant) {
        let Some(receiver) = self.map.get_mut(origin) else {
            return;
        };
        receiver.in_flight = receiver.in_flight.saturating_sub(1);
        receiver.last_seen = now;
        match health {
            Health::Answered => {
                receiver.failures = 0;
                receiver.open_until = None;
                receiver.open_for = Duration::ZERO;
            }
            Health::Failed => {
                receiver.failures = receiver.failures.saturating_add(1);
                let open_for = match receiver.open_until {
                    // A post started before the circuit opened: counted,
                    // but the circuit is open already.
                    Some(until) if now < until => None,
                    // The trial post failed.
                    Some(_) => Some((receiver.open_for * 2).min(OPEN_MAX)),
                    None if receiver.failures >= FAILURES_TO_OPEN => Some(OPEN_FIRST),
                    None => None,
                };
                if let Some(open_for) = open_for {
                    receiver.open_for = open_for;
                    receiver.open_until = Some(now + open_for);
                }
            }
        }
        if receiver.in_flight == 0 && receiver.failures == 0 {
            self.map.remove(origin);
        }
    }

    /// Receivers remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    fn forget_the_longest_idle(&mut self) {
        let idle = self
            .map
            .iter()
            .filter(|(_, r)| r.in_flight == 0)
            .min_by_key(|(_, r)| r.last_seen)
            .map(|(origin, _)| origin.clone());
        if let Some(origin) = idle {
            self.map.remove(&origin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOOK: &str = "http://hooks.example:80";

    fn fail(receivers: &mut Receivers, times: u32, now: Instant) {
        for _ in 0..times {
            assert_eq!(receivers.verdict(HOOK, now), Verdict::Start);
            receivers.started(HOOK, now);
            receivers.finished(HOOK, Health::Failed, now);
        }
    }

    #[test]
    fn a_receiver_gets_a_bounded_number_of_posts_in_flight() {
        let (mut receivers, now) = (Receivers::default(), Instant::now());
        for _ in 0..PER_RECEIVER {
            assert_eq!(receivers.verdict(HOOK, now), Verdict::Start);
            receivers.started(HOOK, now);
        }
        assert_eq!(receivers.verdict(HOOK, now), Verdict::Busy);
        assert_eq!(receivers.verdict("http://other:80", now), Verdict::Start);
        receivers.finished(HOOK, Health::Answered, now);
        assert_eq!(receivers.verdict(HOOK, now), Verdict::Start);
        receivers.finished(HOOK, Health::Answered, now);
        assert_eq!(receivers.len(), 0, "a healthy idle receiver is forgotten");
    }

    #[test]
    fn the_circuit_opens_after_failures_in_a_row_and_backs_off_while_trials_fail() {
        let (mut receivers, t0) = (Receivers::default(), Instant::now());
        fail(&mut receivers, FAILURES_TO_OPEN - 1, t0);
        receivers.started(HOOK, t0);
        receivers.finished(HOOK, Health::Answered, t0);
        fail(&mut receivers, FAILURES_TO_OPEN - 1, t0);
        assert_eq!(
            receivers.verdict(HOOK, t0),
            Verdict::Start,
            "reset by the answer"
        );
        fail(&mut receivers, 1, t0);
        assert_eq!(receivers.verdict(HOOK, t0), Verdict::Open(t0 + OPEN_FIRST));
        // Past the back-off one trial post goes; its failure doubles it.
        let t1 = t0 + OPEN_FIRST;
        assert_eq!(receivers.verdict(HOOK, t1), Verdict::Start);
        receivers.started(HOOK, t1);
        assert_eq!(
            receivers.verdict(HOOK, t1),
            Verdict::Busy,
            "one trial at a time"
        );
        receivers.finished(HOOK, Health::Failed, t1);
        assert_eq!(
            receivers.verdict(HOOK, t1),
            Verdict::Open(t1 + OPEN_FIRST * 2)
        );
        // The back-off is capped; a trial that is answered closes it.
        let mut t = t1;
        for _ in 0..20 {
            t += OPEN_MAX;
            receivers.started(HOOK, t);
            receivers.finished(HOOK, Health::Failed, t);
        }
        assert_eq!(receivers.verdict(HOOK, t), Verdict::Open(t + OPEN_MAX));
        t += OPEN_MAX;
        receivers.started(HOOK, t);
        receivers.finished(HOOK, Health::Answered, t);
        assert_eq!(receivers.verdict(HOOK, t), Verdict::Start);
        assert_eq!(receivers.len(), 0);
    }

    #[test]
    fn posts_started_before_the_circuit_opened_do_not_extend_it() {
        let (mut receivers, t0) = (Receivers::default(), Instant::now());
        receivers.started(HOOK, t0);
        fail(&mut receivers, FAILURES_TO_OPEN, t0);
        let late = t0 + Duration::from_secs(1);
        receivers.finished(HOOK, Health::Failed, late);
        assert_eq!(
            receivers.verdict(HOOK, late),
            Verdict::Open(t0 + OPEN_FIRST)
        );
    }

    #[test]
    fn the_receivers_remembered_are_bounded() {
        let (mut receivers, now) = (Receivers::default(), Instant::now());
        for i in 0..REMEMBERED + 100 {
            let origin = format!("http://dead{i}:80");
            let at = now + Duration::from_millis(i as u64);
            receivers.started(&origin, at);
            receivers.finished(&origin, Health::Failed, at);
        }
        assert_eq!(receivers.len(), REMEMBERED);
        assert_eq!(receivers.verdict("http://dead0:80", now), Verdict::Start);
    }
}
