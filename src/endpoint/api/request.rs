//! Turns a `/run` or `/runsync` body into a job, or says exactly what is
//! wrong with it.
//!
//! The body is checked whole, but the job keeps its text: the handler
//! receives the submitted `input` (and the caller's other keys) exactly as
//! they were sent, with the job's `id` added in front. Only the small keys
//! jobpipe reads (`webhook`, `policy`), and the input when a schema must
//! check it, are parsed.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use bytes::Bytes;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::JobDefaults;
use crate::endpoint::keys::Tenant;
use crate::endpoint::queue::{Idempotency, JobPolicy, NewJob, LOW_PRIORITY, PRIORITIES};
use crate::input_schema::InputSchema;
use crate::json::{self, Json};

/// Policy keys jobpipe understands.
const POLICY_KEYS: &[&str] = &[
    "executionTimeout",
    "ttl",
    "lowPriority",
    "priority",
    "delay",
    "runAt",
    "maxAttempts",
    "stallTimeout",
    "retry",
];
/// The longest a job can be delayed (`policy.delay`, `policy.runAt`).
const DELAY_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// Checks a submission body and builds the job it asks for.
pub(crate) fn parse_job(
    endpoint: String,
    tenant: Option<&Tenant>,
    body: &Bytes,
    headers: &HeaderMap,
    defaults: &JobDefaults,
    retention: Duration,
    schema: Option<&InputSchema>,
) -> Result<NewJob<Json>, ApiError> {
    let idempotency = idempotency(headers, body)?;
    let not_json =
        |e: serde_json::Error| ApiError::BadRequest(format!("request body is not valid JSON: {e}"));
    let Fields(fields) = serde_json::from_slice(body).map_err(not_json)?;
    let Some(fields) = fields else {
        return Err(ApiError::BadRequest(
            "request body must be a JSON object like {\"input\": {...}}".into(),
        ));
    };
    // Text is checked without decoding its strings; a string with a lone
    // surrogate escape is not Unicode, and is refused as when parsed.
    if json::has_surrogate_escape(body) {
        serde_json::from_slice::<Value>(body).map_err(not_json)?;
    }
    // The last of a repeated key counts, as when parsed.
    let field = |key: &str| {
        fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, raw)| *raw)
    };
    // The few keys jobpipe reads, parsed.
    let parsed = |key: &str| -> Result<Option<Value>, ApiError> {
        field(key)
            .map(|raw| serde_json::from_str(raw.get()).map_err(not_json))
            .transpose()
    };
    let Some(input) = field("input") else {
        return Err(ApiError::BadRequest(
            "request body has no \"input\"; send {\"input\": {...}}".into(),
        ));
    };
    if let Some(schema) = schema {
        let input: Value = serde_json::from_str(input.get()).map_err(not_json)?;
        let violations = schema.check(&input);
        if !violations.is_empty() {
            return Err(ApiError::Invalid(violations));
        }
    }
    let webhook = match parsed("webhook")?.as_ref() {
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
    let policy = parse_policy(parsed("policy")?.as_ref(), defaults, retention)?;
    let id = uuid::Uuid::new_v4().to_string();
    let payload = with_id(body, &fields, &id);
    Ok(NewJob {
        id,
        endpoint,
        tenant: tenant.map(|t| t.name.clone()),
        max_running: tenant.and_then(|t| t.max_running),
        payload,
        webhook,
        policy,
        idempotency,
        awaited: false,
    })
}

/// The longest `Idempotency-Key` taken.
const IDEMPOTENCY_KEY_MAX: usize = 255;

/// The `Idempotency-Key` header, if sent, with the hash of the body: 1 to
/// 255 printable ASCII characters (a UUID, say).
fn idempotency(headers: &HeaderMap, body: &Bytes) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| {
            (1..=IDEMPOTENCY_KEY_MAX).contains(&key.len())
                && key.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters without spaces (a UUID, say)"
            ))
        })?;
    let body_hash = crate::text::hex(&Sha256::digest(body));
    Ok(Some(Idempotency {
        key: key.to_owned(),
        body_hash,
    }))
}

/// The job object: the body with `"id"` in front. The body's text is kept
/// (without a copy of a large one) unless it has an `id` of its own or a
/// key twice: the object is then written again from the text of each
/// value, the last of a repeated key counting, as when parsed.
fn with_id(body: &Bytes, fields: &[(String, &RawValue)], id: &str) -> Json {
    let id_json = Json::from_value(&Value::String(id.to_owned()));
    let mut seen = HashSet::with_capacity(fields.len());
    let plain = fields
        .iter()
        .all(|(key, _)| key != "id" && seen.insert(key.as_str()));
    if plain {
        return json::with_field(&Json::checked(body.clone()), "id", &id_json);
    }
    let mut seen = HashSet::with_capacity(fields.len());
    let mut kept: Vec<&(String, &RawValue)> = fields
        .iter()
        .rev()
        .filter(|(key, _)| key != "id" && seen.insert(key.as_str()))
        .collect();
    kept.reverse();
    let size = kept
        .iter()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .sum::<usize>();
    let mut text = Vec::with_capacity(size + id.len() + 10);
    text.extend_from_slice(b"{\"id\":");
    text.extend_from_slice(&id_json.contiguous());
    for (key, value) in kept {
        text.push(b',');
        serde_json::to_writer(&mut text, key).expect("a key serialises");
        text.push(b':');
        text.extend_from_slice(value.get().as_bytes());
    }
    text.push(b'}');
    Json::checked(Bytes::from(text))
}

/// A body's top-level keys with the text of their values, in order;
/// `None` when the body is JSON but not an object.
struct Fields<'a>(Option<Vec<(String, &'a RawValue)>>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            fields.push((key, map.next_value::<&'de RawValue>()?));
        }
        Ok(Fields(Some(fields)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Fields(None))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Fields(None))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Fields(None))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Fields(None))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Fields(None))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Fields(None))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Fields(None))
    }
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
        stall_timeout: None,
        priority: 0,
        delay: Duration::ZERO,
        retry: Default::default(),
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
    if let Some(ms) = positive_ms(fields, "stallTimeout")? {
        result.stall_timeout = Some(ms);
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
    result.priority = priority(fields)?;
    result.delay = delay(fields)?;
    result.retry = super::retry_policy::parse_retry(fields.get("retry"))?;
    Ok(result)
}

/// `policy.priority` (an integer, higher first) or `policy.lowPriority:
/// true` (below every priority), not both.
fn priority(fields: &Map<String, Value>) -> Result<i32, ApiError> {
    let low = match fields.get("lowPriority") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "policy.lowPriority must be true or false, got {other}"
            )))
        }
    };
    let given = match fields.get("priority") {
        None | Some(Value::Null) => None,
        Some(value) => match value
            .as_i64()
            .filter(|n| PRIORITIES.contains(&(*n as i32)) && *n as i32 as i64 == *n)
        {
            Some(n) => Some(n as i32),
            None => {
                return Err(ApiError::BadRequest(format!(
                "policy.priority must be an integer from {} to {} (higher runs first), got {value}",
                PRIORITIES.start(),
                PRIORITIES.end()
            )))
            }
        },
    };
    match (low, given) {
        (true, Some(_)) => Err(ApiError::BadRequest(
            "give policy.priority or policy.lowPriority, not both".into(),
        )),
        (true, None) => Ok(LOW_PRIORITY),
        (false, given) => Ok(given.unwrap_or(0)),
    }
}

/// `policy.delay` (ms from now) or `policy.runAt` (an RFC 3339 time), not
/// both; a time in the past is no delay.
fn delay(fields: &Map<String, Value>) -> Result<Duration, ApiError> {
    let delay = positive_ms(fields, "delay")?;
    let run_at = match fields.get("runAt") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => match humantime::parse_rfc3339_weak(text) {
            Ok(at) => Some(at.duration_since(SystemTime::now()).unwrap_or_default()),
            Err(e) => {
                return Err(ApiError::BadRequest(format!(
                    "policy.runAt must be an RFC 3339 time like \"2026-12-24T18:00:00Z\" ({e}), got {text:?}"
                )))
            }
        },
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "policy.runAt must be an RFC 3339 time like \"2026-12-24T18:00:00Z\", got {other}"
            )))
        }
    };
    let delay = match (delay, run_at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give policy.delay or policy.runAt, not both".into(),
            ))
        }
        (delay, run_at) => delay.or(run_at).unwrap_or_default(),
    };
    if delay > DELAY_MAX {
        return Err(ApiError::BadRequest(format!(
            "a job can be delayed by 7 days at most; policy.delay or policy.runAt asks for {}",
            humantime::format_duration(Duration::from_secs(delay.as_secs()))
        )));
    }
    Ok(delay)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(body: &str) -> Result<NewJob<Json>, ApiError> {
        let body = Bytes::from(body.to_owned());
        parse_job(
            "default".into(),
            None,
            &body,
            &HeaderMap::new(),
            &JobDefaults::default(),
            Duration::from_secs(60),
            None,
        )
    }

    fn refused(body: &str) -> String {
        match job(body) {
            Err(ApiError::BadRequest(message)) => message,
            other => panic!("{body:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn the_job_keeps_the_submitted_text_with_its_id_in_front() {
        let input =
            r#"{"big": 1180591620717411303424, "neg": -0, "z": 1, "a": "\u00e9\n", "f": 1.50}"#;
        let new = job(&format!(r#" {{"input": {input}, "x": [1.0]}}"#)).unwrap();
        assert_eq!(
            new.payload.text(),
            format!(r#" {{"id":"{}","input": {input}, "x": [1.0]}}"#, new.id)
        );
        // The caller's own id is replaced; of a repeated key the last counts.
        let new = job(&format!(
            r#"{{"id": 5, "input": 1, "x": 2, "input": {input}}}"#
        ))
        .unwrap();
        assert_eq!(
            new.payload.text(),
            format!(r#"{{"id":"{}","x":2,"input":{input}}}"#, new.id)
        );
        let policy = job(r#"{"input": 1, "policy": {"ttl": 5}, "policy": {"ttl": 7}}"#).unwrap();
        assert_eq!(policy.policy.ttl, Duration::from_millis(7));
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_refused_as_before() {
        assert!(refused("[1, 2]").contains("must be a JSON object"));
        assert!(refused("7").contains("must be a JSON object"));
        assert!(refused(r#"{"input": 1"#).contains("not valid JSON"));
        assert!(refused(r#"{"x": 1}"#).contains("has no \"input\""));
        assert!(refused(r#"{"input": "\ud800"}"#).contains("not valid JSON"));
        assert!(job(r#"{"input": "\ud83d\ude00"}"#).is_ok());
    }
}
