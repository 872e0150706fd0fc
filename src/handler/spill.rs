//! Lines too long to hold in memory. With an object store, a handler's
//! line that passes `--offload-threshold` is written to a file under
//! `--scratch-dir` as it is read ([`super::lines::read_line_spilling`]), so
//! a 200 MB output costs jobpipe a buffer, not 200 MB. A final answer's
//! output then stays in that file and is uploaded from it
//! ([`crate::job::Outcome::Spilled`]); any other spilled line (a huge
//! stream partial, an error, a broken line) is read back into memory, up
//! to the output limit as before, and treated as any line.
//!
//! Finding the output in the file takes two passes over it, each with a
//! small buffer: serde_json checks that the line is one JSON value, then a
//! scan of its structure (strings, escapes, nesting) finds where each
//! top-level member's value starts and ends, and checks the text is UTF-8.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::job::spilled::{FileRange, SpillFile};

/// Where and from what length lines are spilled.
#[derive(Debug, Clone)]
pub struct Spill {
    pub dir: PathBuf,
    /// Lines longer than this many bytes go to a file.
    pub at: usize,
}

/// Removes the files of lines that an earlier run spilled and did not
/// live to remove (killed, or a power cut): those whose process no longer
/// runs, or ran under this process's id before (a container's PID 1).
pub fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let own = std::process::id();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("line-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let gone = pid == own || !Path::new(&format!("/proc/{pid}")).exists();
        if gone {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(
                    "removed {}, a line spilled by an earlier run",
                    entry.path().display()
                ),
                Err(e) => tracing::warn!("cannot remove {}: {e}", entry.path().display()),
            }
        }
    }
}

/// The most a spilled answer's other members (its id, ...) may hold
/// together to be read into memory beside a spilled output.
const HEAD_MAX: u64 = 1 << 20;

/// Buffer of each pass over a spilled line.
const BUFFER: usize = 256 << 10;

/// What a spilled line turned out to be.
#[derive(Debug)]
pub enum Split {
    /// An answer with an output and no error: the line with its output
    /// replaced by `null`, and where the output is in the file.
    Output { head: Bytes, output: FileRange },
    /// Anything else: the whole line, read into memory.
    Whole(Bytes),
}

/// Sorts a spilled line of `len` bytes; blocking (it reads the file).
pub fn split(file: SpillFile, len: usize) -> std::io::Result<Split> {
    if let Some(members) = members(file.path())? {
        if let Some((head, offset, output_len)) = head_of(file.path(), &members)? {
            return Ok(Split::Output {
                head,
                output: FileRange {
                    file: Arc::new(file),
                    offset,
                    len: output_len,
                },
            });
        }
    }
    let mut text = Vec::with_capacity(len);
    std::fs::File::open(file.path())?.read_to_end(&mut text)?;
    if text.last() == Some(&b'\r') {
        text.pop();
    }
    Ok(Split::Whole(Bytes::from(text)))
}

/// One member of the line's top-level object.
#[derive(Debug, PartialEq)]
struct Member {
    /// The key's JSON text, with its quotes and escapes.
    key: Vec<u8>,
    /// The value's text is `start..end` of the file.
    start: u64,
    end: u64,
}

impl Member {
    fn key(&self) -> Option<String> {
        serde_json::from_slice(&self.key).ok()
    }
}

/// The members of the object the file holds; `None` when it is not one
/// valid JSON object in UTF-8 (then it is read as any line, which says
/// what is wrong with it).
fn members(path: &Path) -> std::io::Result<Option<Vec<Member>>> {
    let reader = BufReader::with_capacity(BUFFER, std::fs::File::open(path)?);
    if serde_json::from_reader::<_, serde::de::IgnoredAny>(reader).is_err() {
        return Ok(None);
    }
    let mut reader = BufReader::with_capacity(BUFFER, std::fs::File::open(path)?);
    let mut scan = Scan::default();
    let mut utf8 = Utf8::default();
    let mut at = 0u64;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        if !utf8.check(chunk) {
            return Ok(None);
        }
        if !scan.chunk(chunk, at) {
            return Ok(None);
        }
        let n = chunk.len();
        at += n as u64;
        reader.consume(n);
    }
    Ok((utf8.carry.is_empty() && scan.closed).then_some(scan.members))
}

/// The line with its output as `null`, and the output's place, for an
/// answer with one output, no error and small other members.
fn head_of(path: &Path, members: &[Member]) -> std::io::Result<Option<(Bytes, u64, u64)>> {
    let keys: Vec<Option<String>> = members.iter().map(Member::key).collect();
    let is = |key: &str| keys.iter().filter(|k| k.as_deref() == Some(key)).count();
    if is("output") != 1 || is("error") > 0 {
        return Ok(None);
    }
    let rest: u64 = members
        .iter()
        .zip(&keys)
        .filter(|(_, key)| key.as_deref() != Some("output"))
        .map(|(m, _)| m.key.len() as u64 + m.end - m.start + 2)
        .sum();
    if rest > HEAD_MAX {
        return Ok(None);
    }
    let mut file = std::fs::File::open(path)?;
    let mut head = b"{".to_vec();
    let mut output = None;
    for (member, key) in members.iter().zip(&keys) {
        if key.as_deref() == Some("output") {
            output = Some((member.start, member.end - member.start));
            continue;
        }
        head.extend_from_slice(&member.key);
        head.push(b':');
        file.seek(SeekFrom::Start(member.start))?;
        (&mut file)
            .take(member.end - member.start)
            .read_to_end(&mut head)?;
        head.push(b',');
    }
    head.extend_from_slice(br#""output":null}"#);
    let (offset, len) = output.expect("counted once");
    Ok(Some((Bytes::from(head), offset, len)))
}

/// Where the scan is in the top-level object.
#[derive(Debug, Default, PartialEq, Clone, Copy)]
enum Phase {
    /// Before the object's `{`.
    #[default]
    Before,
    Key,
    Colon,
    Value,
    InValue,
}

/// A scan of a line already known to be valid JSON: only strings,
/// escapes and nesting need following.
#[derive(Debug, Default)]
struct Scan {
    phase: Phase,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The key being read, while in its string.
    key: Option<Vec<u8>>,
    /// The current member's key and where its value started.
    member: Option<(Vec<u8>, u64)>,
    /// The last byte of the current value so far.
    last: u64,
    members: Vec<Member>,
    closed: bool,
}

impl Scan {
    /// Takes the bytes from `base` on; false when the text is not an
    /// object. The inside of a value's string (most of a large output) is
    /// skipped to its next quote or backslash at once.
    fn chunk(&mut self, chunk: &[u8], base: u64) -> bool {
        let mut i = 0;
        while i < chunk.len() {
            if self.in_string && self.key.is_none() && !self.escaped {
                match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                    Some(0) => {}
                    Some(n) => {
                        i += n;
                        self.last = base + i as u64 - 1;
                    }
                    None => {
                        self.last = base + chunk.len() as u64 - 1;
                        return true;
                    }
                }
            }
            if !self.byte(chunk[i], base + i as u64) {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Takes the byte at `at`; false when the text is not an object.
    fn byte(&mut self, byte: u8, at: u64) -> bool {
        if self.in_string {
            if let Some(key) = &mut self.key {
                key.push(byte);
            } else {
                self.last = at;
            }
            if self.escaped {
                self.escaped = false;
            } else if byte == b'\\' {
                self.escaped = true;
            } else if byte == b'"' {
                self.in_string = false;
                if let Some(key) = self.key.take() {
                    self.member = Some((key, 0));
                    self.phase = Phase::Colon;
                }
            }
            return true;
        }
        if byte.is_ascii_whitespace() {
            return true;
        }
        if self.phase == Phase::Before {
            if byte != b'{' {
                return false;
            }
            self.depth = 1;
            self.phase = Phase::Key;
            return true;
        }
        if self.depth == 1 {
            match (self.phase, byte) {
                (Phase::Key, b'"') => {
                    self.in_string = true;
                    self.key = Some(vec![b'"']);
                    return true;
                }
                (Phase::Colon, b':') => {
                    self.phase = Phase::Value;
                    return true;
                }
                (Phase::Value, _) => {
                    if let Some(member) = &mut self.member {
                        member.1 = at;
                    }
                    self.phase = Phase::InValue;
                }
                (Phase::InValue, b',') => {
                    self.end_member();
                    self.phase = Phase::Key;
                    return true;
                }
                (_, b'}') => {
                    self.end_member();
                    self.depth = 0;
                    self.closed = true;
                    return true;
                }
                _ => {}
            }
        }
        match byte {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => self.depth -= 1,
            _ => {}
        }
        self.last = at;
        true
    }

    fn end_member(&mut self) {
        if let Some((key, start)) = self.member.take() {
            if self.phase == Phase::InValue {
                self.members.push(Member {
                    key,
                    start,
                    end: self.last + 1,
                });
            }
        }
    }
}

/// A UTF-8 check of a text given in chunks.
#[derive(Default)]
struct Utf8 {
    /// The start of a character cut at the end of the last chunk.
    carry: Vec<u8>,
}

impl Utf8 {
    fn check(&mut self, chunk: &[u8]) -> bool {
        let joined;
        let text = if self.carry.is_empty() {
            chunk
        } else {
            joined = [self.carry.as_slice(), chunk].concat();
            &joined
        };
        match std::str::from_utf8(text) {
            Ok(_) => {
                self.carry.clear();
                true
            }
            Err(e) if e.error_len().is_none() => {
                self.carry = text[e.valid_up_to()..].to_vec();
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spilled(text: &str) -> (tempfile::TempDir, SpillFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("line");
        std::fs::write(&path, text).unwrap();
        (dir, SpillFile::new(path))
    }

    #[test]
    fn an_answer_keeps_its_output_in_the_file() {
        let line = r#" {"id": "j\"1", "output": {"a": [1, "}\\\"", {"b": null}]} , "refresh_worker": true}"#;
        let (_dir, file) = spilled(line);
        let Split::Output { head, output } = split(file, line.len()).unwrap() else {
            panic!("expected an output");
        };
        assert_eq!(
            std::str::from_utf8(&head).unwrap(),
            r#"{"id":"j\"1","refresh_worker":true,"output":null}"#
        );
        assert_eq!(
            String::from_utf8(output.read().unwrap()).unwrap(),
            r#"{"a": [1, "}\\\"", {"b": null}]}"#
        );
    }

    #[test]
    fn a_string_output_at_the_end_is_found() {
        let line = "{\"id\":\"x\",\"output\":\"h\u{e9}llo\"}\r";
        let (_dir, file) = spilled(line);
        let Split::Output { output, .. } = split(file, line.len()).unwrap() else {
            panic!("expected an output");
        };
        assert_eq!(output.read().unwrap(), "\"h\u{e9}llo\"".as_bytes());
    }

    #[test]
    fn escapes_across_the_scans_chunks_are_followed() {
        let mut text = String::new();
        while text.len() < 3 * BUFFER {
            text.push_str(&"x".repeat(1000));
            text.push_str(r#"\"\\}]"#);
        }
        let output = format!(r#""{text}""#);
        let line = format!(r#"{{"id":"x","output":{output},"refresh_worker":false}}"#);
        let (_dir, file) = spilled(&line);
        let Split::Output {
            head,
            output: range,
        } = split(file, line.len()).unwrap()
        else {
            panic!("expected an output");
        };
        assert_eq!(range.read().unwrap(), output.as_bytes());
        assert_eq!(
            &head[..],
            br#"{"id":"x","refresh_worker":false,"output":null}"#
        );
    }

    #[test]
    fn anything_else_is_read_whole() {
        for line in [
            r#"{"id": "x", "error": "bad", "output": 1}"#,
            r#"{"id": "x", "stream": [1, 2]}"#,
            r#"{"id": "x", "output": 1, "output": 2}"#,
            r#"{"id": "x", "output": [1, 2}"#,
            r#"[1, 2]"#,
            "not json",
        ] {
            let (_dir, file) = spilled(line);
            let Split::Whole(text) = split(file, line.len()).unwrap() else {
                panic!("{line}: expected the whole line");
            };
            assert_eq!(text, line.as_bytes(), "{line}");
        }
    }

    #[test]
    fn text_that_is_not_utf8_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("line");
        std::fs::write(&path, b"{\"id\":\"x\",\"output\":\"\xff\"}").unwrap();
        let split = split(SpillFile::new(path), 22).unwrap();
        assert!(matches!(split, Split::Whole(_)), "{split:?}");
    }

    #[test]
    fn utf8_cut_between_chunks_is_whole_again() {
        let text = "a\u{1F600}b".as_bytes();
        for cut in 0..text.len() {
            let mut check = Utf8::default();
            assert!(check.check(&text[..cut]) && check.check(&text[cut..]));
            assert!(check.carry.is_empty(), "cut at {cut}");
        }
    }

    #[test]
    fn leftovers_of_gone_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join(format!("line-{}-abc", std::process::id()));
        // Process 1 runs wherever the test runs.
        let alive = dir.path().join("line-1-abc");
        let gone = dir.path().join(format!("line-{}-abc", u32::MAX - 1));
        let other = dir.path().join("notes");
        for path in [&own, &alive, &gone, &other] {
            std::fs::write(path, b"x").unwrap();
        }
        remove_leftovers(dir.path());
        assert!(!own.exists() && !gone.exists());
        assert!(alive.exists() && other.exists());
    }

    #[test]
    fn the_file_goes_with_the_output() {
        let line = r#"{"id":"x","output":[1]}"#;
        let (dir, file) = spilled(line);
        let path = dir.path().join("line");
        let Split::Output { output, .. } = split(file, line.len()).unwrap() else {
            panic!("expected an output");
        };
        assert!(path.exists());
        drop(output);
        assert!(!path.exists());
    }
}
