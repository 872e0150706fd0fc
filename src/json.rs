//! JSON text that is checked once and then carried, not parsed again.
//!
//! jobpipe does not need to look inside a job's input or a handler's
//! output: it reads a few keys (`id`, `output`, `error`, ...) and passes the
//! values on. Parsing them into `serde_json::Value` and writing them out
//! again cost most of a large job's CPU and several copies of its payload,
//! so values travel as [`Json`]: the bytes of one valid JSON value, shared
//! (a slice of the line or response it came in, no copy) and written out
//! as they are. Bodies are put together from such pieces by [`object`].

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// One valid JSON value's text (UTF-8, possibly with whitespace inside).
#[derive(Clone)]
pub struct Json(Bytes);

impl Json {
    /// `null`.
    pub fn null() -> Json {
        Json(Bytes::from_static(b"null"))
    }

    /// The text of a value.
    pub fn from_value(value: &Value) -> Json {
        Json(Bytes::from(
            serde_json::to_vec(value).expect("a JSON value serialises"),
        ))
    }

    /// Checks that `text` is one JSON value; `None` when it is not.
    pub fn parse(text: Bytes) -> Option<Json> {
        serde_json::from_slice::<serde::de::IgnoredAny>(&text).ok()?;
        std::str::from_utf8(&text).ok()?;
        Some(Json(text))
    }

    /// The part of `whole` that `raw` was read from, without a copy.
    /// `raw` must have been borrowed from `whole`'s bytes.
    pub(crate) fn slice_of(whole: &Bytes, raw: &RawValue) -> Json {
        Json(whole.slice_ref(raw.get().as_bytes()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The text, for log lines and tests (checks UTF-8 again).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("<not UTF-8>")
    }

    /// The bytes, to hand to an HTTP body or a pipe without a copy.
    pub fn bytes(&self) -> Bytes {
        self.0.clone()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses the value, where jobpipe must look inside after all.
    pub fn to_value(&self) -> Value {
        serde_json::from_slice(&self.0).unwrap_or(Value::Null)
    }

    /// True for the JSON literal `true` (with any whitespace around it).
    pub fn is_true(&self) -> bool {
        self.0.trim_ascii() == b"true"
    }

    /// True for `null`.
    pub fn is_null(&self) -> bool {
        self.0.trim_ascii() == b"null"
    }
}

/// `{"key": value, ...}` from pieces that are valid JSON already, so the
/// result is too. Keys are jobpipe's own ASCII names, not escaped.
pub fn object<'a>(fields: impl IntoIterator<Item = (&'a str, &'a Json)>) -> Json {
    let fields: Vec<_> = fields.into_iter().collect();
    let size = fields
        .iter()
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum::<usize>()
        + 2;
    let mut out = Vec::with_capacity(size);
    out.push(b'{');
    for (i, (key, value)) in fields.into_iter().enumerate() {
        debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(value.as_bytes());
    }
    out.push(b'}');
    Json(Bytes::from(out))
}

/// `[a, b, ...]` from valid pieces.
pub fn array<'a>(items: impl IntoIterator<Item = &'a Json>) -> Json {
    let mut out = vec![b'['];
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item.as_bytes());
    }
    out.push(b']');
    Json(Bytes::from(out))
}

/// Adds `key: value` to the front of an object's text.
pub fn with_field(object: &Json, key: &str, value: &Json) -> Json {
    let text = object.as_bytes();
    let start = text.iter().position(|&b| b == b'{');
    let Some(start) = start else {
        return object.clone();
    };
    let rest = &text[start + 1..];
    let empty = rest.trim_ascii_start().starts_with(b"}");
    let mut out = Vec::with_capacity(text.len() + key.len() + value.len() + 4);
    out.extend_from_slice(&text[..=start]);
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(value.as_bytes());
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Json(Bytes::from(out))
}

/// True if `text` holds a `\uD800`–`\uDFFF` escape: such text must be
/// parsed whole to know whether each is half of a pair (fine) or alone
/// (not Unicode, refused where jobpipe promises Unicode text).
pub fn has_surrogate_escape(text: &[u8]) -> bool {
    memchr::memchr_iter(b'\\', text).any(|at| {
        let w = &text[at..];
        w.len() >= 4
            && w[1] == b'u'
            && w[2].eq_ignore_ascii_case(&b'd')
            && matches!(w[3].to_ascii_lowercase(), b'8'..=b'9' | b'a'..=b'f')
    })
}

/// Compared as text.
impl PartialEq for Json {
    fn eq(&self, other: &Json) -> bool {
        self.0 == other.0
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

impl From<Value> for Json {
    fn from(value: Value) -> Json {
        Json::from_value(&value)
    }
}

/// Written as the value itself (a spooled result's body is JSON, not a string).
impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue =
            serde_json::from_str(self.text()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let text: Box<str> = raw.into();
        Ok(Json(Bytes::from(text.into_boxed_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_are_built_from_valid_pieces() {
        let out = Json::from_value(&json!({"a": [1, "x"]}));
        let body = object([("output", &out), ("error", &Json::from_value(&json!("e")))]);
        assert_eq!(
            body.to_value(),
            json!({"output": {"a": [1, "x"]}, "error": "e"})
        );
        assert_eq!(
            array([&out, &Json::null()]).to_value(),
            json!([{"a": [1, "x"]}, null])
        );
    }

    #[test]
    fn a_field_goes_in_front() {
        let t = Json::from_value(&json!(true));
        let body = Json::parse(Bytes::from_static(b" { \"output\" : 1 }")).unwrap();
        assert_eq!(
            with_field(&body, "stopPod", &t).to_value(),
            json!({"stopPod": true, "output": 1})
        );
        let empty = Json::parse(Bytes::from_static(b"{ }")).unwrap();
        assert_eq!(
            with_field(&empty, "stopPod", &t).to_value(),
            json!({"stopPod": true})
        );
    }

    #[test]
    fn spooled_bodies_stay_json() {
        let body = Json::from_value(&json!({"output": "x"}));
        let text = serde_json::to_string(&json!({"body": body.to_value()})).unwrap();
        #[derive(Serialize, Deserialize)]
        struct Holder {
            body: Json,
        }
        let back: Holder = serde_json::from_str(&text).unwrap();
        assert_eq!(back.body, body);
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }

    #[test]
    fn parse_refuses_what_is_not_one_value() {
        assert!(Json::parse(Bytes::from_static(b"{\"a\":1}")).is_some());
        assert!(Json::parse(Bytes::from_static(b"{\"a\":1} x")).is_none());
        assert!(Json::parse(Bytes::from_static(b"NaN")).is_none());
    }

    #[test]
    fn surrogate_escapes_are_found() {
        assert!(has_surrogate_escape(br#""\ud800""#));
        assert!(has_surrogate_escape(br#""\uDBFF\uDC00""#));
        assert!(!has_surrogate_escape(br#""\u00e9 \\ d800""#));
        assert!(!has_surrogate_escape(br#"\u"#));
    }
}
