//! The handler line protocol: what one stdout line of a handler means.
//!
//! Classification is pure so that it can be tested without a process; the
//! actor decides what a frame does to its jobs. The protocol itself is
//! documented for handler authors in docs/handler-protocol.md.

use serde_json::{Map, Value};

/// One line of handler stdout, understood.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `{"ready": true}`: the handler can take jobs.
    Ready,
    /// A final answer: `output` and/or `error`, maybe `refresh_worker`.
    Final {
        id: String,
        output: Option<Value>,
        error: Option<String>,
        refresh_worker: bool,
    },
    /// `{"id", "stream": ...}`: a partial result.
    Stream { id: String, value: Value },
    /// `{"id", "progress": ...}`: a progress update.
    Progress { id: String, value: Value },
    /// A line that starts like a protocol object but cannot be read, and
    /// why. It fails the job it names, if it names one.
    Unreadable(String),
    /// Anything else: logged as handler output.
    Other,
}

/// Reads one stdout line.
pub fn parse_line(line: &[u8]) -> Frame {
    let object = line.trim_ascii_start().starts_with(b"{");
    let text = match std::str::from_utf8(line) {
        Ok(text) => text,
        Err(e) if object => {
            return Frame::Unreadable(format!(
                "it is not valid UTF-8 (byte {} is not part of a UTF-8 character); write protocol lines as UTF-8",
                e.valid_up_to() + 1
            ))
        }
        Err(_) => return Frame::Other,
    };
    let mut obj = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(obj)) => obj,
        Ok(_) => return Frame::Other,
        Err(e) if object => return Frame::Unreadable(unreadable_json(text, &e)),
        Err(_) => return Frame::Other,
    };
    if obj.get("ready") == Some(&Value::Bool(true)) && !obj.contains_key("id") {
        return Frame::Ready;
    }
    let id = match obj.get("id") {
        Some(Value::String(id)) => id.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Frame::Other,
    };
    if obj.contains_key("output") || obj.contains_key("error") {
        return final_frame(id, obj);
    }
    if let Some(value) = obj.remove("stream") {
        return Frame::Stream { id, value };
    }
    if let Some(value) = obj.remove("progress") {
        return Frame::Progress { id, value };
    }
    Frame::Other
}

/// Says what is wrong with a line that looks like a protocol object but is
/// not JSON, naming the usual causes.
fn unreadable_json(text: &str, error: &serde_json::Error) -> String {
    let message = error.to_string();
    if (message.contains("surrogate") || message.contains("hex escape"))
        && has_surrogate_escape(text)
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

/// True if the text holds a `\uD800`–`\uDFFF` escape.
fn has_surrogate_escape(text: &str) -> bool {
    text.as_bytes().windows(4).any(|w| {
        w[0] == b'\\'
            && w[1] == b'u'
            && w[2].eq_ignore_ascii_case(&b'd')
            && matches!(w[3].to_ascii_lowercase(), b'8'..=b'9' | b'a'..=b'f')
    })
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

fn final_frame(id: String, mut obj: Map<String, Value>) -> Frame {
    let refresh_worker = obj.get("refresh_worker") == Some(&Value::Bool(true));
    let error = match obj.remove("error") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text),
        Some(other) => Some(other.to_string()),
    };
    Frame::Final {
        id,
        output: obj.remove("output"),
        error,
        refresh_worker,
    }
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

    #[test]
    fn frames_are_recognised() {
        assert_eq!(parse_line(br#"{"ready": true}"#), Frame::Ready);
        assert_eq!(
            parse_line(br#"{"id": "a", "output": {"x": 1}}"#),
            Frame::Final {
                id: "a".into(),
                output: Some(json!({"x": 1})),
                error: None,
                refresh_worker: false
            }
        );
        assert_eq!(
            parse_line(br#"{"id": "a", "error": "bad", "output": 2, "refresh_worker": true}"#),
            Frame::Final {
                id: "a".into(),
                output: Some(json!(2)),
                error: Some("bad".into()),
                refresh_worker: true
            }
        );
        assert_eq!(
            parse_line(br#"{"id": "a", "stream": [1]}"#),
            Frame::Stream {
                id: "a".into(),
                value: json!([1])
            }
        );
        assert_eq!(
            parse_line(br#"{"id": "a", "progress": 50}"#),
            Frame::Progress {
                id: "a".into(),
                value: json!(50)
            }
        );
    }

    #[test]
    fn output_null_is_still_a_final_answer() {
        assert!(matches!(
            parse_line(br#"{"id": "a", "output": null}"#),
            Frame::Final {
                output: Some(Value::Null),
                ..
            }
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
            Frame::Final { output: Some(Value::String(s)), .. } if s == "\u{1f600}"
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
