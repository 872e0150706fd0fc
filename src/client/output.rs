//! What the client prints on stdout: JSON, one value per line, as the
//! server sent it. Output is kept as text (no parse and write again, which
//! would change large numbers and escapes); only whitespace outside
//! strings is dropped, so an output a one-shot handler pretty-printed
//! still takes one line.

use std::io::Write;

use serde_json::value::RawValue;

/// `text` (valid JSON) without whitespace outside its strings.
pub(crate) fn compact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for ch in text.chars() {
        if in_string {
            out.push(ch);
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
        } else if ch == '"' {
            in_string = true;
            out.push(ch);
        } else if !ch.is_ascii_whitespace() {
            out.push(ch);
        }
    }
    out
}

/// Prints `text` (valid JSON) as one line on stdout. A closed stdout (the
/// reader of a pipe went away) is not worth a panic: the line is dropped.
pub(crate) fn print_json(text: &str) {
    print_line(&compact(text));
}

/// Prints one line on stdout, at once (a reader of a pipe sees each
/// partial as it comes).
pub(crate) fn print_line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// The text of the key `key` of the JSON object `text`, if it has one.
pub(crate) fn raw_field(text: &str, key: &str) -> Option<Box<RawValue>> {
    let mut fields: std::collections::HashMap<String, Box<RawValue>> =
        serde_json::from_str(text).ok()?;
    fields.remove(key)
}

/// The outputs of a `/stream` answer's partials (`{"stream": [{"output":
/// ...}, ...]}`), as their text, in order.
pub(crate) fn stream_outputs(text: &str) -> Vec<Box<RawValue>> {
    #[derive(serde::Deserialize)]
    struct Chunk {
        output: Option<Box<RawValue>>,
    }
    #[derive(serde::Deserialize)]
    struct Stream {
        #[serde(default)]
        stream: Vec<Chunk>,
    }
    serde_json::from_str::<Stream>(text)
        .map(|s| s.stream.into_iter().filter_map(|c| c.output).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_goes_but_strings_and_numbers_stay() {
        let text = "{\n  \"a b\": \"x \\\" y\\\\\",\n  \"n\": 1180591620717411303424, \"e\": \"\\u00e9\"\n}";
        assert_eq!(
            compact(text),
            r#"{"a b":"x \" y\\","n":1180591620717411303424,"e":"\u00e9"}"#
        );
    }

    #[test]
    fn partials_and_fields_are_read_as_text() {
        let stream =
            r#"{"id":"j","status":"IN_PROGRESS","stream":[{"output":{"n":1.50}},{"output":"t"}]}"#;
        let outputs: Vec<String> = stream_outputs(stream)
            .iter()
            .map(|o| o.get().to_owned())
            .collect();
        assert_eq!(outputs, [r#"{"n":1.50}"#, r#""t""#]);
        assert_eq!(
            raw_field(stream, "status").unwrap().get(),
            r#""IN_PROGRESS""#
        );
        assert!(raw_field(stream, "output").is_none());
    }
}
