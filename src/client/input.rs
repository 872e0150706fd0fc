//! A job's input for `jobpipe submit`, from `--input`, `--input-file` or
//! stdin, and the `/run` body around it. The input is checked to be JSON
//! but sent as the text it was given, so large numbers, key order and
//! escapes reach the handler unchanged.

use std::io::{IsTerminal, Read};
use std::path::Path;

use serde::Serialize;
use serde_json::value::RawValue;

use super::error::ClientError;

/// Where the input comes from, for the messages.
enum Source<'a> {
    Flag,
    File(&'a Path),
    Stdin,
}

impl Source<'_> {
    fn describe(&self) -> String {
        match self {
            Source::Flag => "--input".to_owned(),
            Source::File(path) => format!("--input-file {}", path.display()),
            Source::Stdin => "the input read from stdin".to_owned(),
        }
    }
}

/// The input's JSON text, checked.
pub(crate) fn read(flag: Option<&str>, file: Option<&Path>) -> Result<Box<RawValue>, ClientError> {
    let (text, source) = match (flag, file) {
        (Some(text), _) => (text.to_owned(), Source::Flag),
        (None, Some(path)) if path == Path::new("-") => (read_stdin()?, Source::Stdin),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ClientError::Usage(format!("cannot read --input-file {}: {e}", path.display()))
            })?;
            (text, Source::File(path))
        }
        (None, None) => {
            if std::io::stdin().is_terminal() {
                return Err(ClientError::Usage(
                    "no input: give the job's input with --input JSON or --input-file FILE, or pipe it on stdin (stdin is a terminal)".into(),
                ));
            }
            (read_stdin()?, Source::Stdin)
        }
    };
    if text.trim().is_empty() {
        return Err(ClientError::Usage(format!(
            "{} is empty; the job's input must be JSON, like {{\"prompt\": \"a cat\"}}",
            source.describe()
        )));
    }
    serde_json::from_str::<Box<RawValue>>(text.trim())
        .map_err(|e| ClientError::Usage(format!("{} is not valid JSON: {e}", source.describe())))
}

fn read_stdin() -> Result<String, ClientError> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| ClientError::Usage(format!("cannot read the input from stdin: {e}")))?;
    Ok(text)
}

/// The body of a `/run` request.
#[derive(Serialize)]
pub(crate) struct RunBody<'a> {
    pub input: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
}

#[derive(Serialize)]
pub(crate) struct Policy {
    pub priority: i32,
}

impl RunBody<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a body of JSON text and strings serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_is_sent_as_given() {
        let input = read(
            Some(r#" {"big": 1180591620717411303424, "a": "\u00e9"} "#),
            None,
        )
        .unwrap();
        let body = RunBody {
            input: &input,
            webhook: None,
            policy: Some(Policy { priority: 3 }),
        };
        assert_eq!(
            body.to_json(),
            r#"{"input":{"big": 1180591620717411303424, "a": "\u00e9"},"policy":{"priority":3}}"#
        );
    }

    #[test]
    fn bad_json_names_where_it_came_from() {
        let err = read(Some("{nope"), None).unwrap_err();
        assert!(
            err.to_string().starts_with("--input is not valid JSON"),
            "{err}"
        );
        assert_eq!(err.exit_code(), crate::client::error::exit::USAGE);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("in.json");
        std::fs::write(&file, "[1,").unwrap();
        let err = read(None, Some(&file)).unwrap_err().to_string();
        assert!(
            err.contains("--input-file") && err.contains("in.json"),
            "{err}"
        );
        let err = read(None, Some(&dir.path().join("missing"))).unwrap_err();
        assert!(
            err.to_string().contains("cannot read --input-file"),
            "{err}"
        );
    }
}
