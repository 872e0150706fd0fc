//! The handler line protocol: what one stdout line of a handler means.
//!
//! Classification is pure so that it can be tested without a process; the
//! actor decides what a frame does to its jobs. The protocol itself is
//! documented for handler authors in docs/handler-protocol.md.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::json::{has_surrogate_escape, id_text, present, Json};

/// One line of handler stdout, understood.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `{"ready": true}`: the handler can take jobs.
    Ready,
    /// A final answer: `output` and/or `error`, maybe `refresh_worker`.
    Final {
        id: String,
        output: Option<Json>,
        error: Option<String>,
        refresh_worker: bool,
    },
    /// `{"id", "output_file": "/path"}` or `{"id", "output_files": [{"name",
    /// "path"}]}`: files in the job's directory to upload as its output;
    /// `files` is the object with that one key, as written.
    Files {
        id: String,
        files: Json,
        refresh_worker: bool,
    },
    /// `{"id", "stream": ...}`: a partial result.
    Stream { id: String, value: Json },
    /// `{"id", "progress": ...}`: a progress update.
    Progress { id: String, value: Json },
    /// `{"id", "heartbeat": true}`: the handler is alive and still working
    /// on the job, with nothing to report (see `--stall-timeout`).
    Heartbeat { id: String },
    /// A line that starts like a protocol object but cannot be read, and
    /// why. It fails the job it names, if it names one.
    Unreadable(String),
    /// Anything else: logged as handler output.
    Other,
}

/// The keys of a protocol object, their values left as text: only what
/// jobpipe acts on is looked at, an output is passed on as it came.
#[derive(Deserialize)]
struct Keys<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    ready: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    output: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    error: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    progress: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    heartbeat: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    refresh_worker: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    output_file: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    output_files: Option<&'a RawValue>,
}

/// Reads one stdout line.
pub fn parse_line(line: &Bytes) -> Frame {
    let object = line.trim_ascii_start().starts_with(b"{");
    if !object {
        return Frame::Other;
    }
    let text = match std::str::from_utf8(line) {
        Ok(text) => text,
        Err(e) => {
            return Frame::Unreadable(format!(
                "it is not valid UTF-8 (byte {} is not part of a UTF-8 character); write protocol lines as UTF-8",
                e.valid_up_to() + 1
            ))
        }
    };
    let keys = match serde_json::from_str::<Keys>(text) {
        Ok(keys) => keys,
        Err(e) => return Frame::Unreadable(unreadable_json(text, &e)),
    };
    // Skipping a value checks its syntax but not that each escaped
    // surrogate is half of a pair; the rare line with one is parsed whole.
    if has_surrogate_escape(line) {
        if let Err(e) = serde_json::from_str::<Value>(text) {
            return Frame::Unreadable(unreadable_json(text, &e));
        }
    }
    let is_true = |raw: Option<&RawValue>| raw.is_some_and(|raw| raw.get().trim() == "true");
    if is_true(keys.ready) && keys.id.is_none() {
        return Frame::Ready;
    }
    let Some(id) = keys.id.and_then(id_text) else {
        return Frame::Other;
    };
    let json = |raw: &RawValue| Json::slice_of(line, raw);
    if keys.output.is_some() || keys.error.is_some() {
        let error = match keys.error {
            None => None,
            Some(raw) if raw.get() == "null" => None,
            Some(raw) if raw.get().starts_with('"') => serde_json::from_str(raw.get()).ok(),
            Some(raw) => serde_json::from_str::<Value>(raw.get())
                .ok()
                .map(|v| v.to_string()),
        };
        return Frame::Final {
            id,
            output: keys.output.map(json),
            error,
            refresh_worker: is_true(keys.refresh_worker),
        };
    }
    let files = [
        ("output_file", keys.output_file),
        ("output_files", keys.output_files),
    ];
    if let Some((key, Some(value))) = files.into_iter().find(|(_, value)| value.is_some()) {
        return Frame::Files {
            id,
            files: crate::json::object([(key, &json(value))]),
            refresh_worker: is_true(keys.refresh_worker),
        };
    }
    if let Some(value) = keys.stream {
        return Frame::Stream {
            id,
            value: json(value),
        };
    }
    if let Some(value) = keys.progress {
        return Frame::Progress {
            id,
            value: json(value),
        };
    }
    if is_true(keys.heartbeat) {
        return Frame::Heartbeat { id };
    }
    Frame::Other
}

/// Says what is wrong with a line that looks like a protocol object but is
/// not JSON, naming the usual causes.
fn unreadable_json(text: &str, error: &serde_json::Error) -> String {
    let message = error.to_string();
    if (message.contains("surrogate") || message.contains("hex escape"))
        && has_surrogate_escape(text.as_bytes())
    {
        return format!(
            "it contains a lone surrogate escape such as \\ud800, which is not Unicode text ({message}); replace or drop such characters before answering"
        );
    }
    if let Some(word) = non_json_number(text) {
        return format!(
            "it contains {word}, which JSON does not allow ({message}); send null or a string instead"
        );
    }
    format!("it is not valid JSON ({message})")
}

/// Finds a `NaN`, `Infinity` or `-Infinity` where a JSON value would be.
fn non_json_number(text: &str) -> Option<&'static str> {
    for word in ["-Infinity", "Infinity", "NaN"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(word) {
            let start = from + at;
            let before = text[..start].trim_end().chars().last();
            if matches!(before, Some(':' | '[' | ',')) {
                return Some(word);
            }
            from = start + word.len();
        }
    }
    None
}

/// The line that asks a multiplexing handler to stop one job.
pub fn cancel_line(id: &str) -> String {
    serde_json::json!({"id": id, "cancel": true}).to_string()
}

/// Tries to find which of `ids` an over-long line answers, from its start;
/// such a line cannot be parsed whole.
pub fn sniff_id<'a>(prefix: &[u8], ids: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let text = String::from_utf8_lossy(prefix);
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    ids.into_iter().find(|id| {
        let quoted = Value::from(*id).to_string();
        compact.contains(&format!("\"id\":{quoted}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_line(line: &[u8]) -> Frame {
        super::parse_line(&Bytes::copy_from_slice(line))
    }

    fn json(value: Value) -> Json {
        Json::from_value(&value)
    }

    #[test]
    fn frames_are_recognised() {
        assert_eq!(parse_line(br#"{"ready": true}"#), Frame::Ready);
        assert_eq!(
            parse_line(br#"{"id": "a", "heartbeat": true}"#),
            Frame::Heartbeat { id: "a".into() }
        );
        assert_eq!(
            parse_line(br#"{"id": "a", "heartbeat": false}"#),
            Frame::Other
        );
        assert_eq!(
            parse_line(br#"{"id": "a", "output": {"x": 1}}"#),
            Frame::Final {
                id: "a".into(),
                output: Some(Json::parse(Bytes::from_static(br#"{"x": 1}"#)).unwrap()),
                error: None,
                refresh_worker: false
            }
        );
        assert_eq!(
            parse_line(br#"{"id": "a", "error": "bad", "output": 2, "refresh_worker": true}"#),
            Frame::Final {
                id: "a".into(),
                output: Some(json(json!(2))),
                error: Some("bad".into()),
                refresh_worker: true
            }
        );
        assert_eq!(
            parse_line(br#"{"id": "a", "output_file": "/j/x.mp4"}"#),
            Frame::Files {
                id: "a".into(),
                files: json(json!({"output_file": "/j/x.mp4"})),
                refresh_worker: false
            }
        );
        assert_eq!(
            parse_line(br#"{"id": "a", "stream": [1]}"#),
            Frame::Stream {
                id: "a".into(),
                value: json(json!([1]))
            }
        );
        assert_eq!(
            parse_line(br#"{"id": "a", "progress": 50}"#),
            Frame::Progress {
                id: "a".into(),
                value: json(json!(50))
            }
        );
    }

    #[test]
    fn output_null_is_still_a_final_answer() {
        assert!(matches!(
            parse_line(br#"{"id": "a", "output": null}"#),
            Frame::Final {
                output: Some(output),
                ..
            } if output.is_null()
        ));
    }

    #[test]
    fn anything_else_is_other() {
        for line in [
            &b"loading model..."[..],
            b"",
            b"[1,2]",
            br#"{"id": "a"}"#,
            br#"{"output": 1}"#,
            br#"{"ready": false}"#,
            b"\xff\xfe",
            b"[NaN]",
        ] {
            assert_eq!(parse_line(line), Frame::Other, "{line:?}");
        }
    }

    #[test]
    fn unreadable_objects_say_why() {
        let why = |line: &[u8]| match parse_line(line) {
            Frame::Unreadable(why) => why,
            other => panic!("{other:?}"),
        };
        assert!(why(b"{\"id\": \"a\", \"output\": \"\xff\"}").contains("not valid UTF-8 (byte 24"));
        assert!(why(br#"{"id": "a", "output": "\ud800"}"#).contains("lone surrogate"));
        assert!(why(br#"{"id": "a", "output": [1, NaN]}"#).contains("contains NaN"));
        assert!(why(br#"{"id": "a", "output": -Infinity}"#).contains("contains -Infinity"));
        assert!(why(br#"{"id": "a", "output": "NaN" "#).contains("not valid JSON"));
        // A surrogate pair is one character and fine.
        assert!(matches!(
            parse_line(br#"{"id": "a", "output": "\ud83d\ude00"}"#),
            Frame::Final { output: Some(o), .. } if o.to_value() == json!("\u{1f600}")
        ));
    }

    #[test]
    fn error_that_is_not_a_string_becomes_its_json_text() {
        assert!(matches!(
            parse_line(br#"{"id": "a", "error": {"code": 1}}"#),
            Frame::Final { error: Some(e), .. } if e == r#"{"code":1}"#
        ));
    }

    #[test]
    fn sniffing_finds_the_id_at_the_start_of_a_long_line() {
        let prefix = br#"{ "id" : "job-2", "output": "xxxxxxxx"#;
        assert_eq!(sniff_id(prefix, ["job-1", "job-2"]), Some("job-2"));
        assert_eq!(sniff_id(prefix, ["job-1"]), None);
    }
}
