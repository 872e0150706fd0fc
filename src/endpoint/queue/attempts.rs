//! A job's attempts: the retry policy it was submitted with
//! (`policy.retry`), how an attempt that did not complete failed, what
//! becomes of the job after such an attempt, and the history of attempts
//! each store keeps (`GET /v2/{endpoint}/jobs/{id}`'s `attempts`).
//!
//! Both stores decide through [`after_failure`] and write what
//! [`FailedAttempt`] says, so they cannot disagree about when a job runs
//! again, how long it waits, or what its final error reads.

use std::time::Duration;

use rand::Rng;

use super::{Ending, JobStatus};
use crate::json::Json;

/// How an attempt failed; a job's `policy.retry.on` names the ones it
/// runs again after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The handler process died (or could not start, or was restarted
    /// under the job).
    Crash,
    /// The worker went away: its lease ran out, or it shut down.
    Lost,
    /// The attempt ran past its `executionTimeout` (or `--job-timeout`).
    Timeout,
    /// The handler sent nothing for the stall timeout.
    Stalled,
    /// The handler's own error (or a reply jobpipe could not take).
    Error,
}

impl Failure {
    pub const ALL: [Failure; 5] = [
        Failure::Crash,
        Failure::Lost,
        Failure::Timeout,
        Failure::Stalled,
        Failure::Error,
    ];

    /// Its name in `policy.retry.on` and in an attempt's `outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Crash => "crash",
            Failure::Lost => "lost",
            Failure::Timeout => "timeout",
            Failure::Stalled => "stalled",
            Failure::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Failure> {
        Failure::ALL.into_iter().find(|f| f.as_str() == text)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The final status of a job whose last attempt failed so.
    pub fn status(self) -> JobStatus {
        match self {
            Failure::Timeout => JobStatus::TimedOut,
            _ => JobStatus::Failed,
        }
    }
}

/// A set of failures (`policy.retry.on`), kept in the stores as a bit
/// mask (`retry_on`: crash 1, lost 2, timeout 4, stalled 8, error 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn(u8);

impl RetryOn {
    /// What a job retries when its policy does not say: the handler or the
    /// worker went wrong, not the job.
    pub const DEFAULT: RetryOn = RetryOn(1 | 2 | 8);

    pub fn of(failures: impl IntoIterator<Item = Failure>) -> RetryOn {
        RetryOn(failures.into_iter().fold(0, |bits, f| bits | f.bit()))
    }

    pub fn contains(self, failure: Failure) -> bool {
        self.0 & failure.bit() != 0
    }

    pub(crate) fn bits(self) -> i64 {
        self.0.into()
    }

    /// The set a `retry_on` column holds; NULL (a job queued before there
    /// were retry policies) is the default.
    pub(crate) fn stored(bits: Option<i64>) -> RetryOn {
        bits.map_or(RetryOn::DEFAULT, |bits| RetryOn((bits & 0x1f) as u8))
    }
}

/// Which failed attempts a job runs again after, and how long it waits
/// first: `backoff` doubling per attempt, at most `max_backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub on: RetryOn,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            on: RetryOn::DEFAULT,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// The fraction a delay may grow by at random, so jobs that failed
/// together do not all run again at the same moment.
const JITTER: f64 = 0.2;

impl RetryPolicy {
    /// The policy the `retry_*` columns hold, each NULL being the default.
    pub(crate) fn stored(on: Option<i64>, backoff_ms: Option<i64>, max_ms: Option<i64>) -> Self {
        let ms = |ms: Option<i64>, default: Duration| {
            ms.map_or(default, |ms| Duration::from_millis(ms.max(0) as u64))
        };
        let default = RetryPolicy::default();
        RetryPolicy {
            on: RetryOn::stored(on),
            backoff: ms(backoff_ms, default.backoff),
            max_backoff: ms(max_ms, default.max_backoff),
        }
    }

    /// The wait before the attempt after `attempt` (1 for the first) when
    /// the delays do not vary: `backoff` doubled `attempt - 1` times, at
    /// most `max_backoff`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.clamp(1, 32) - 1;
        self.backoff
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max_backoff)
    }

    /// [`Self::base_delay`] made up to a fifth longer at random, never past
    /// `max_backoff`: never shorter than asked, so a caller can count on
    /// the wait.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        let grown = base.mul_f64(1.0 + rand::thread_rng().gen::<f64>() * JITTER);
        grown.min(self.max_backoff.max(base))
    }
}

/// The longest `detail` an attempt keeps (its error text, with the end of
/// the handler's stderr when known); longer ones lose their middle.
pub const DETAIL_MAX: usize = 4000;

/// One attempt of a job, as its history shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// 1 for the first.
    pub attempt: u32,
    pub worker_id: Option<String>,
    /// Times in ms since the epoch, on the store's clock.
    pub started_at: Option<i64>,
    pub ended_at: i64,
    /// `completed`, `cancelled`, or a [`Failure`]'s name.
    pub outcome: String,
    pub detail: Option<String>,
}

/// `detail` cut to [`DETAIL_MAX`].
pub(crate) fn bounded(detail: &str) -> String {
    crate::text::clip_middle(detail, DETAIL_MAX - 64)
}

/// An attempt that ended without an output, as the stores write it.
#[derive(Debug, Clone)]
pub(crate) struct FailedAttempt {
    pub failure: Failure,
    /// The job's error if this attempt is its last.
    pub error: String,
    /// The output the handler sent with its error.
    pub output: Option<Json>,
    /// What the attempt's history keeps, bounded.
    pub detail: String,
}

impl Ending<Json> {
    /// The completed output, or how the attempt failed.
    pub(crate) fn into_failure(self) -> Result<Json, FailedAttempt> {
        let (failure, error, output, detail) = match self {
            Ending::Completed(output) => return Ok(output),
            Ending::Failed { error, output } => (Failure::Error, error.clone(), output, error),
            Ending::TimedOut(why) => (Failure::Timeout, why.clone(), None, why),
            Ending::Retry { kind, why, stderr } => {
                let detail = if stderr.is_empty() {
                    why.clone()
                } else {
                    format!("{why}; its stderr ended with:\n{stderr}")
                };
                (kind, why, None, detail)
            }
        };
        Err(FailedAttempt {
            failure,
            error,
            output,
            detail: bounded(&detail),
        })
    }
}

/// What becomes of a job after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Next {
    /// Queued again, to start no sooner than this many ms from now.
    Again { delay_ms: i64 },
    /// Ended with the failure's status and this error.
    End { error: String },
}

/// What becomes of a job whose attempt `attempts` (of `max`) failed with
/// `failed`, under `policy`: queued again if the policy retries that
/// failure and attempts remain; else ended, saying so when the attempts
/// ran out.
pub(crate) fn after_failure(
    policy: &RetryPolicy,
    failed: &FailedAttempt,
    attempts: i64,
    max: i64,
) -> Next {
    if !policy.on.contains(failed.failure) {
        return Next::End {
            error: failed.error.clone(),
        };
    }
    if attempts >= max {
        let error = format!(
            "{} (attempt {attempts} of {max}; no attempts left)",
            failed.error
        );
        return Next::End { error };
    }
    let attempt = u32::try_from(attempts).unwrap_or(u32::MAX);
    let delay_ms = i64::try_from(policy.delay(attempt).as_millis()).unwrap_or(i64::MAX);
    Next::Again { delay_ms }
}

/// The reason a lease ran out, as the sweep records it.
pub(crate) fn lost_lease() -> FailedAttempt {
    let why = "its worker stopped holding the job (lease expired)";
    FailedAttempt {
        failure: Failure::Lost,
        error: why.into(),
        output: None,
        detail: why.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(failure: Failure) -> FailedAttempt {
        FailedAttempt {
            failure,
            error: "went wrong".into(),
            output: None,
            detail: String::new(),
        }
    }

    #[test]
    fn delays_double_per_attempt_up_to_the_cap_and_only_grow_by_jitter() {
        let policy = RetryPolicy::default();
        let delays: Vec<u128> = (0..=8).map(|n| policy.base_delay(n).as_millis()).collect();
        assert_eq!(
            delays,
            [1000, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        let policy = RetryPolicy {
            backoff: Duration::from_millis(300),
            max_backoff: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for _ in 0..200 {
            let first = policy.delay(1);
            assert!(first >= Duration::from_millis(300) && first <= Duration::from_millis(360));
            assert_eq!(policy.delay(9), Duration::from_millis(1000));
        }
        assert_eq!(policy.base_delay(u32::MAX), Duration::from_millis(1000));
    }

    #[test]
    fn only_the_failures_named_are_retried_while_attempts_remain() {
        let policy = RetryPolicy::default();
        for failure in [Failure::Crash, Failure::Lost, Failure::Stalled] {
            assert!(matches!(
                after_failure(&policy, &failed(failure), 1, 3),
                Next::Again { delay_ms } if delay_ms >= 1000
            ));
            assert_eq!(
                after_failure(&policy, &failed(failure), 3, 3),
                Next::End {
                    error: "went wrong (attempt 3 of 3; no attempts left)".into()
                }
            );
        }
        for failure in [Failure::Timeout, Failure::Error] {
            assert_eq!(
                after_failure(&policy, &failed(failure), 1, 3),
                Next::End {
                    error: "went wrong".into()
                }
            );
        }
        let on_errors = RetryPolicy {
            on: RetryOn::of([Failure::Error]),
            ..policy
        };
        assert!(matches!(
            after_failure(&on_errors, &failed(Failure::Error), 1, 2),
            Next::Again { .. }
        ));
        assert!(matches!(
            after_failure(&on_errors, &failed(Failure::Crash), 1, 2),
            Next::End { .. }
        ));
    }

    #[test]
    fn stored_policies_read_back_and_null_is_the_default() {
        let on = RetryOn::of([Failure::Timeout, Failure::Error]);
        let policy = RetryPolicy::stored(Some(on.bits()), Some(5), Some(10));
        assert_eq!(policy.on, on);
        assert_eq!(policy.backoff, Duration::from_millis(5));
        assert_eq!(policy.max_backoff, Duration::from_millis(10));
        assert_eq!(
            RetryPolicy::stored(None, None, None),
            RetryPolicy::default()
        );
        for failure in Failure::ALL {
            assert_eq!(Failure::parse(failure.as_str()), Some(failure));
        }
    }

    #[test]
    fn details_are_bounded_and_keep_the_stderr_tail() {
        let ending = Ending::Retry {
            kind: Failure::Crash,
            why: "HandlerCrashed: handler exit status: 3".into(),
            stderr: format!("{}the last line", "x".repeat(10_000)),
        };
        let failed = ending.into_failure().unwrap_err();
        assert_eq!(failed.failure, Failure::Crash);
        assert_eq!(failed.error, "HandlerCrashed: handler exit status: 3");
        assert!(failed.detail.len() <= DETAIL_MAX, "{}", failed.detail.len());
        assert!(failed.detail.starts_with("HandlerCrashed"));
        assert!(failed.detail.ends_with("the last line"));
    }
}
