//! JSON text that is checked once and then carried, not parsed again.
//!
//! jobpipe does not need to look inside a job's input or a handler's
//! output: it reads a few keys (`id`, `output`, `error`, ...) and passes the
//! values on. Parsing them into `serde_json::Value` and writing them out
//! again cost most of a large job's CPU and several copies of its payload,
//! so values travel as [`Json`]: the bytes of one valid JSON value, shared
//! (a slice of the line or response it came in, no copy) and written out
//! as they are. Bodies are put together from such pieces by [`object`].

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// One valid JSON value's text (UTF-8, possibly with whitespace inside),
/// kept as one piece or as pieces in order, so a body put together around
/// a large output does not copy it.
#[derive(Clone)]
pub struct Json(Repr);

#[derive(Clone)]
enum Repr {
    One(Bytes),
    Pieces(Arc<[Bytes]>),
}

impl Json {
    /// `null`.
    pub fn null() -> Json {
        Json::one(Bytes::from_static(b"null"))
    }

    fn one(bytes: Bytes) -> Json {
        Json(Repr::One(bytes))
    }

    /// The text of a value.
    pub fn from_value(value: &Value) -> Json {
        Json::one(Bytes::from(
            serde_json::to_vec(value).expect("a JSON value serialises"),
        ))
    }

    /// Checks that `text` is one JSON value; `None` when it is not.
    pub fn parse(text: Bytes) -> Option<Json> {
        serde_json::from_slice::<serde::de::IgnoredAny>(&text).ok()?;
        std::str::from_utf8(&text).ok()?;
        Some(Json::one(text))
    }

    /// Text the caller has checked to be one JSON value (UTF-8).
    pub(crate) fn checked(text: Bytes) -> Json {
        debug_assert!(Json::parse(text.clone()).is_some());
        Json::one(text)
    }

    /// Checks that `text` is one JSON value, kept without a copy; gives
    /// `text` back when it is not.
    pub fn from_text(text: String) -> Result<Json, String> {
        match serde_json::from_str::<serde::de::IgnoredAny>(&text) {
            Ok(_) => Ok(Json::one(Bytes::from(text))),
            Err(_) => Err(text),
        }
    }

    /// The text in one buffer, without a copy when it is one piece.
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            Repr::One(bytes) => bytes,
            Repr::Pieces(pieces) => Bytes::from(pieces.concat()),
        }
    }

    /// The text as an HTTP body of known length, its pieces sent in turn
    /// rather than joined first.
    pub fn into_http_body(self) -> HttpBody {
        HttpBody(self.pieces().iter().cloned().collect())
    }

    /// The part of `whole` that `raw` was read from, without a copy.
    /// `raw` must have been borrowed from `whole`'s bytes.
    pub(crate) fn slice_of(whole: &Bytes, raw: &RawValue) -> Json {
        Json::one(whole.slice_ref(raw.get().as_bytes()))
    }

    /// The pieces of the text, in order.
    pub fn pieces(&self) -> &[Bytes] {
        match &self.0 {
            Repr::One(bytes) => std::slice::from_ref(bytes),
            Repr::Pieces(pieces) => pieces,
        }
    }

    /// The text in one buffer: the piece itself, or the pieces joined.
    pub fn contiguous(&self) -> Cow<'_, [u8]> {
        match &self.0 {
            Repr::One(bytes) => Cow::Borrowed(bytes),
            Repr::Pieces(pieces) => Cow::Owned(pieces.concat()),
        }
    }

    /// The text, for log lines and tests.
    pub fn text(&self) -> Cow<'_, str> {
        match self.contiguous() {
            Cow::Borrowed(bytes) => String::from_utf8_lossy(bytes),
            Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }

    pub fn len(&self) -> usize {
        self.pieces().iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses the value, where jobpipe must look inside after all.
    pub fn to_value(&self) -> Value {
        serde_json::from_slice(&self.contiguous()).unwrap_or(Value::Null)
    }

    /// True for `null`.
    pub fn is_null(&self) -> bool {
        self.contiguous().trim_ascii() == b"null"
    }
}

/// A [`Json`] as an HTTP body (see [`Json::into_http_body`]).
pub struct HttpBody(std::collections::VecDeque<Bytes>);

impl http_body::Body for HttpBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.0
                .pop_front()
                .map(|piece| Ok(http_body::Frame::data(piece))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.iter().map(|p| p.len() as u64).sum())
    }
}

/// Builds a text from pieces: small ones are copied together, large ones
/// (an output) are kept as they are.
#[derive(Default)]
struct Builder {
    pieces: Vec<Bytes>,
    small: Vec<u8>,
}

/// From this size a piece is kept rather than copied.
const KEEP_FROM: usize = 16 * 1024;

impl Builder {
    /// A builder whose small pieces, `size` bytes in all, fit without growing.
    fn with_capacity(size: usize) -> Builder {
        Builder {
            pieces: Vec::new(),
            small: Vec::with_capacity(size),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.small.extend_from_slice(bytes);
    }

    fn push_json(&mut self, json: &Json) {
        for piece in json.pieces() {
            if piece.len() >= KEEP_FROM {
                self.flush();
                self.pieces.push(piece.clone());
            } else {
                self.small.extend_from_slice(piece);
            }
        }
    }

    fn flush(&mut self) {
        if !self.small.is_empty() {
            self.pieces
                .push(Bytes::from(std::mem::take(&mut self.small)));
        }
    }

    fn finish(mut self) -> Json {
        if self.pieces.is_empty() {
            return Json::one(Bytes::from(self.small));
        }
        self.flush();
        match self.pieces.len() {
            1 => Json::one(self.pieces.pop().expect("one piece")),
            _ => Json(Repr::Pieces(self.pieces.into())),
        }
    }
}

/// The bytes of `json` a builder copies (its pieces below [`KEEP_FROM`]).
fn small_len(json: &Json) -> usize {
    json.pieces()
        .iter()
        .map(Bytes::len)
        .filter(|&len| len < KEEP_FROM)
        .sum()
}

/// `{"key": value, ...}` from pieces that are valid JSON already, so the
/// result is too. Keys are jobpipe's own ASCII names, not escaped.
pub fn object<'a>(fields: impl IntoIterator<Item = (&'a str, &'a Json)>) -> Json {
    let fields: Vec<_> = fields.into_iter().collect();
    let size = fields
        .iter()
        .map(|(key, value)| key.len() + 4 + small_len(value))
        .sum::<usize>();
    let mut out = Builder::with_capacity(size + 2);
    out.push(b"{");
    for (i, (key, value)) in fields.into_iter().enumerate() {
        debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        if i > 0 {
            out.push(b",");
        }
        out.push(b"\"");
        out.push(key.as_bytes());
        out.push(b"\":");
        out.push_json(value);
    }
    out.push(b"}");
    out.finish()
}

/// `[a, b, ...]` from valid pieces.
pub fn array<'a>(items: impl IntoIterator<Item = &'a Json>) -> Json {
    let items: Vec<_> = items.into_iter().collect();
    let size = items.iter().map(|item| small_len(item) + 1).sum::<usize>();
    let mut out = Builder::with_capacity(size + 2);
    out.push(b"[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b",");
        }
        out.push_json(item);
    }
    out.push(b"]");
    out.finish()
}

/// Adds `key: value` to the front of an object's text, without joining
/// its pieces: only the first one is looked at.
pub fn with_field(object: &Json, key: &str, value: &Json) -> Json {
    let pieces = object.pieces();
    let Some(start) = pieces[0].iter().position(|&b| b == b'{') else {
        return object.clone();
    };
    // Several pieces come from `object()` with at least one field.
    let rest = &pieces[0][start + 1..];
    let empty = pieces.len() == 1 && rest.trim_ascii_start().starts_with(b"}");
    let mut out = Builder::default();
    out.push(&pieces[0][..=start]);
    out.push(b"\"");
    out.push(key.as_bytes());
    out.push(b"\":");
    out.push_json(value);
    if !empty {
        out.push(b",");
    }
    out.push_json(&Json::one(pieces[0].slice(start + 1..)));
    for piece in &pieces[1..] {
        out.push_json(&Json::one(piece.clone()));
    }
    out.finish()
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
        self.contiguous() == other.contiguous()
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
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
        let text = self.text();
        let raw: &RawValue = serde_json::from_str(&text).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let text: Box<str> = raw.into();
        Ok(Json::one(Bytes::from(text.into_boxed_bytes())))
    }
}

/// A key that is there, even with `null` as its value (`"output": null`
/// is an answer).
pub fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// A job id as jobpipe writes it: a string's text, a number's digits.
pub fn id_text(raw: &RawValue) -> Option<String> {
    match raw.get().as_bytes().first()? {
        b'"' => serde_json::from_str::<String>(raw.get()).ok(),
        b'-' | b'0'..=b'9' => match serde_json::from_str::<Value>(raw.get()).ok()? {
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        },
        _ => None,
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
    fn a_large_output_is_kept_as_a_piece_not_copied() {
        let large = Json::from_value(&Value::String("x".repeat(KEEP_FROM)));
        let body = object([("output", &large)]);
        assert_eq!(body.pieces().len(), 3);
        assert_eq!(body.pieces()[1].as_ptr(), large.pieces()[0].as_ptr());
        assert_eq!(body.len(), large.len() + r#"{"output":}"#.len());
        let refreshed = with_field(&body, "stopPod", &Json::from_value(&true.into()));
        assert!(refreshed
            .pieces()
            .iter()
            .any(|p| p.as_ptr() == large.pieces()[0].as_ptr()));
        let value = refreshed.to_value();
        assert_eq!(value["stopPod"], true);
        assert_eq!(value["output"], large.to_value());
        // A spooled copy reads back as the same text.
        let back: Json = serde_json::from_str(&serde_json::to_string(&refreshed).unwrap()).unwrap();
        assert_eq!(back, refreshed);
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
