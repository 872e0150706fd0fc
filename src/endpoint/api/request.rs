//! Turns a `/run` or `/runsync` body into a job, or says exactly what is
//! wrong with it.

use std::time::Duration;

use serde_json::{Map, Value};

use super::error::ApiError;
use super::JobDefaults;
use crate::endpoint::queue::{JobPolicy, NewJob};
use crate::input_schema::InputSchema;

/// Policy keys jobpipe understands; `lowPriority` is accepted and has no
/// effect (one queue, first in first out).
const POLICY_KEYS: &[&str] = &["executionTimeout", "ttl", "lowPriority", "maxAttempts"];

/// Checks a submission body and builds the job it asks for.
pub(crate) fn parse_job(
    body: &[u8],
    defaults: &JobDefaults,
    retention: Duration,
    schema: Option<&InputSchema>,
) -> Result<NewJob, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(ApiError::BadRequest(
            "request body must be a JSON object like {\"input\": {...}}".into(),
        ));
    };
    let Some(input) = object.get("input") else {
        return Err(ApiError::BadRequest(
            "request body has no \"input\"; send {\"input\": {...}}".into(),
        ));
    };
    if let Some(schema) = schema {
        let violations = schema.check(input);
        if !violations.is_empty() {
            return Err(ApiError::Invalid(violations));
        }
    }
    let webhook = match object.get("webhook") {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) if url.starts_with("http://") || url.starts_with("https://") => {
            Some(url.clone())
        }
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "\"webhook\" must be an http:// or https:// URL, got {other}"
            )))
        }
    };
    let policy = parse_policy(object.get("policy"), defaults, retention)?;
    let id = uuid::Uuid::new_v4().to_string();
    object.insert("id".into(), Value::String(id.clone()));
    Ok(NewJob {
        id,
        payload: Value::Object(object),
        webhook,
        policy,
    })
}

fn parse_policy(
    policy: Option<&Value>,
    defaults: &JobDefaults,
    retention: Duration,
) -> Result<JobPolicy, ApiError> {
    let mut result = JobPolicy {
        execution_timeout: defaults.execution_timeout,
        ttl: defaults.ttl,
        max_attempts: defaults.max_attempts,
        retention,
    };
    let fields = match policy {
        None | Some(Value::Null) => return Ok(result),
        Some(Value::Object(fields)) => fields,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "\"policy\" must be an object like {{\"executionTimeout\": 60000}}, got {other}"
            )))
        }
    };
    if let Some(key) = fields.keys().find(|k| !POLICY_KEYS.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!(
            "unknown policy field {key:?}; known fields: {}",
            POLICY_KEYS.join(", ")
        )));
    }
    if let Some(ms) = positive_ms(fields, "executionTimeout")? {
        result.execution_timeout = Some(ms);
    }
    if let Some(ms) = positive_ms(fields, "ttl")? {
        result.ttl = ms;
    }
    match fields.get("maxAttempts") {
        None | Some(Value::Null) => {}
        Some(value) => match value.as_u64().filter(|n| (1..=100).contains(n)) {
            Some(n) => result.max_attempts = n as u32,
            None => {
                return Err(ApiError::BadRequest(format!(
                    "policy.maxAttempts must be an integer from 1 to 100, got {value}"
                )))
            }
        },
    }
    match fields.get("lowPriority") {
        None | Some(Value::Null) | Some(Value::Bool(_)) => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "policy.lowPriority must be true or false, got {other}"
            )))
        }
    }
    Ok(result)
}

/// A policy field in milliseconds: a positive integer.
fn positive_ms(fields: &Map<String, Value>, key: &str) -> Result<Option<Duration>, ApiError> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .filter(|ms| *ms > 0)
            .map(|ms| Some(Duration::from_millis(ms)))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "policy.{key} must be a positive whole number of milliseconds, got {value}"
                ))
            }),
    }
}
