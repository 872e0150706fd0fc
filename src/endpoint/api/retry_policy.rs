//! `policy.retry` of a submitted job: which failed attempts run again and
//! how long the job waits before each, checked strictly so that a typo
//! is a 400 naming the field rather than a policy silently not applied.

use std::time::Duration;

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::endpoint::queue::{Failure, RetryOn, RetryPolicy};

/// Keys `policy.retry` takes.
const RETRY_KEYS: &[&str] = &["on", "backoffMs", "maxBackoffMs"];
/// The longest back-off a job can ask for: a week, as the longest delay.
const BACKOFF_MAX_MS: u64 = 7 * 24 * 3600 * 1000;

/// The retry policy `policy.retry` asks for; the default when absent.
/// Without `maxBackoffMs`, the cap is a minute, or `backoffMs` if longer.
pub(super) fn parse_retry(value: Option<&Value>) -> Result<RetryPolicy, ApiError> {
    let mut policy = RetryPolicy::default();
    let fields = match value {
        None | Some(Value::Null) => return Ok(policy),
        Some(Value::Object(fields)) => fields,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "policy.retry must be an object like {{\"on\": [\"crash\", \"error\"], \"backoffMs\": 1000}}, got {other}"
            )))
        }
    };
    if let Some(key) = fields.keys().find(|k| !RETRY_KEYS.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!(
            "unknown policy.retry field {key:?}; known fields: {}",
            RETRY_KEYS.join(", ")
        )));
    }
    if let Some(on) = on(fields)? {
        policy.on = on;
    }
    let backoff = ms(fields, "backoffMs")?;
    let max = ms(fields, "maxBackoffMs")?;
    if let Some(backoff) = backoff {
        policy.backoff = backoff;
        policy.max_backoff = policy.max_backoff.max(backoff);
    }
    if let Some(max) = max {
        if max < policy.backoff {
            return Err(ApiError::BadRequest(format!(
                "policy.retry.maxBackoffMs ({}) must not be less than policy.retry.backoffMs ({})",
                max.as_millis(),
                policy.backoff.as_millis()
            )));
        }
        policy.max_backoff = max;
    }
    Ok(policy)
}

/// `policy.retry.on`: a list of failure names.
fn on(fields: &Map<String, Value>) -> Result<Option<RetryOn>, ApiError> {
    let names = || {
        Failure::ALL
            .iter()
            .map(|f| format!("{:?}", f.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let items = match fields.get("on") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "policy.retry.on must be a list of failures out of {}, got {other}",
                names()
            )))
        }
    };
    let failures = items
        .iter()
        .map(|item| {
            item.as_str().and_then(Failure::parse).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "policy.retry.on: unknown failure {item}; use {}",
                    names()
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(RetryOn::of(failures)))
}

/// A whole number of milliseconds, 0 to a week.
fn ms(fields: &Map<String, Value>, key: &str) -> Result<Option<Duration>, ApiError> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .filter(|ms| *ms <= BACKOFF_MAX_MS)
            .map(|ms| Some(Duration::from_millis(ms)))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "policy.retry.{key} must be a whole number of milliseconds from 0 to {BACKOFF_MAX_MS} (a week), got {value}"
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(value: Value) -> String {
        match parse_retry(Some(&value)) {
            Err(ApiError::BadRequest(message)) => message,
            other => panic!("{value} was not refused: {other:?}"),
        }
    }

    #[test]
    fn a_retry_policy_reads_as_given_and_defaults_fill_the_rest() {
        assert_eq!(parse_retry(None).unwrap(), RetryPolicy::default());
        let policy =
            parse_retry(Some(&json!({"on": ["error", "timeout"], "backoffMs": 0}))).unwrap();
        assert_eq!(policy.on, RetryOn::of([Failure::Error, Failure::Timeout]));
        assert_eq!(policy.backoff, Duration::ZERO);
        assert_eq!(policy.max_backoff, Duration::from_secs(60));
        let long = parse_retry(Some(&json!({"backoffMs": 120000}))).unwrap();
        assert_eq!(long.max_backoff, Duration::from_secs(120));
        let never = parse_retry(Some(&json!({"on": []}))).unwrap();
        assert!(Failure::ALL.iter().all(|f| !never.on.contains(*f)));
    }

    #[test]
    fn bad_retry_policies_are_refused_naming_the_field() {
        for (value, field) in [
            (json!({"on": ["crash", "oom"]}), "policy.retry.on"),
            (json!({"on": "crash"}), "policy.retry.on"),
            (json!({"on": [1]}), "policy.retry.on"),
            (json!({"backoffMs": -1}), "policy.retry.backoffMs"),
            (json!({"backoffMs": 1.5}), "policy.retry.backoffMs"),
            (json!({"backoffMs": "1000"}), "policy.retry.backoffMs"),
            (json!({"maxBackoffMs": -5}), "policy.retry.maxBackoffMs"),
            (
                json!({"backoffMs": 2000, "maxBackoffMs": 1000}),
                "policy.retry.maxBackoffMs",
            ),
            (json!({"maxBackoffMs": 10}), "policy.retry.maxBackoffMs"),
            (json!({"tries": 3}), "\"tries\""),
            (json!([1]), "policy.retry"),
        ] {
            let message = refused(value.clone());
            assert!(message.contains(field), "{value}: {message}");
        }
    }
}
