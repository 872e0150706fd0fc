//! A line reader that never breaks on a long line.
//!
//! A handler may write a line of any length. Lines up to the cap are
//! returned whole; a longer one is reported as [`Line::TooLong`] with its
//! length and its first bytes (to find the job it answers), and the reader
//! goes on with the next line. Memory stays bounded by the cap.

use bytes::Bytes;

pub(crate) use crate::text::clip_middle;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt};

use super::spill::Spill;
use crate::job::spilled::SpillFile;

/// How much of an over-long line is kept to identify it.
const PREFIX_KEPT: usize = 4096;

/// One line read.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line without its newline.
    Whole(Bytes),
    /// A line longer than the cap: its total length and first bytes.
    TooLong { len: usize, prefix: Vec<u8> },
    /// A line past the spill size, whole, in a file (without its newline).
    Spilled { file: SpillFile, len: usize },
    /// A line past the spill size whose file could not be written (a full
    /// disk): its length so far, first bytes, and why. Its rest is cut as a
    /// too-long line's is.
    Unspilled {
        len: usize,
        prefix: Vec<u8>,
        error: String,
    },
}

/// Reads one line of at most `cap` bytes; `None` at end of input. A last
/// line without a newline still counts as a line. A longer line is read to
/// its end and reported with its whole length.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    cap: usize,
) -> std::io::Result<Option<Line>> {
    read_line_until(reader, cap, false, None).await
}

/// As [`read_line`], but a line is reported [`Line::TooLong`] as soon as it
/// passes `cap`, with the length read so far, and the rest of it is left
/// unread: a handler that writes too much and then stalls without a newline
/// does not hold its job. [`skip_line`] discards the rest.
pub async fn read_line_or_cut<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    cap: usize,
) -> std::io::Result<Option<Line>> {
    read_line_until(reader, cap, true, None).await
}

/// As [`read_line_or_cut`], but a line longer than `spill.at` goes to a
/// file under `spill.dir` as it is read ([`Line::Spilled`]). A file that
/// cannot be written is an error of the read, as a broken pipe is.
pub async fn read_line_spilling<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    cap: usize,
    spill: &Spill,
) -> std::io::Result<Option<Line>> {
    read_line_until(reader, cap, true, Some(spill)).await
}

/// Discards input up to and including the next newline (or to the end);
/// returns how many bytes were discarded.
pub async fn skip_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<usize> {
    let mut skipped = 0;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(skipped);
        }
        match memchr::memchr(b'\n', chunk) {
            Some(pos) => {
                reader.consume(pos + 1);
                return Ok(skipped + pos);
            }
            None => {
                let n = chunk.len();
                skipped += n;
                reader.consume(n);
            }
        }
    }
}

/// A line being written to its spill file.
struct Spilling {
    file: SpillFile,
    out: tokio::io::BufWriter<tokio::fs::File>,
}

/// Opens a new spill file under `spill.dir` (made if missing) and writes
/// the line's first bytes to it.
async fn start_spill(spill: &Spill, first: &[u8], then: &[u8]) -> std::io::Result<Spilling> {
    tokio::fs::create_dir_all(&spill.dir).await?;
    let path = spill.dir.join(format!(
        "line-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let out = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .await?;
    let mut spilling = Spilling {
        file: SpillFile::new(path),
        out: tokio::io::BufWriter::with_capacity(1 << 20, out),
    };
    spilling.out.write_all(first).await?;
    spilling.out.write_all(then).await?;
    Ok(spilling)
}

async fn read_line_until<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    cap: usize,
    cut: bool,
    spill: Option<&Spill>,
) -> std::io::Result<Option<Line>> {
    let mut buf = Vec::new();
    let mut len = 0usize;
    let mut too_long = false;
    let mut spilling: Option<Spilling> = None;
    let mut unspilled: Option<String> = None;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            if len == 0 {
                return Ok(None);
            }
            break;
        }
        let (take, done) = match memchr::memchr(b'\n', chunk) {
            Some(pos) => (pos, true),
            None => (chunk.len(), false),
        };
        len += take;
        if !too_long {
            if len > cap {
                too_long = true;
                spilling = None;
                let room = PREFIX_KEPT.saturating_sub(buf.len());
                buf.truncate(PREFIX_KEPT);
                buf.extend_from_slice(&chunk[..take.min(room)]);
            } else if let Some(spilling) = &mut spilling {
                if let Err(e) = spilling.out.write_all(&chunk[..take]).await {
                    unspilled = Some(e.to_string());
                }
            } else if let Some(spill) = spill.filter(|s| len > s.at) {
                match start_spill(spill, &buf, &chunk[..take]).await {
                    Ok(started) => spilling = Some(started),
                    Err(e) => unspilled = Some(e.to_string()),
                }
                // The first bytes stay to name the job if the line
                // turns out too long.
                let room = PREFIX_KEPT.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..take.min(room)]);
                buf.truncate(PREFIX_KEPT);
                buf.shrink_to_fit();
            } else {
                buf.extend_from_slice(&chunk[..take]);
            }
        }
        reader.consume(if done { take + 1 } else { take });
        if unspilled.is_some() {
            // Cut as a too-long line is.
            too_long = true;
            spilling = None;
        }
        if done || (cut && too_long) {
            break;
        }
    }
    if let Some(error) = unspilled {
        return Ok(Some(Line::Unspilled {
            len,
            prefix: buf,
            error,
        }));
    }
    if too_long {
        return Ok(Some(Line::TooLong { len, prefix: buf }));
    }
    if let Some(Spilling { file, mut out }) = spilling {
        if let Err(e) = out.flush().await {
            return Ok(Some(Line::Unspilled {
                len,
                prefix: buf,
                error: e.to_string(),
            }));
        }
        return Ok(Some(Line::Spilled { file, len }));
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(Line::Whole(Bytes::from(buf))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn all_lines(input: &[u8], cap: usize, buffer: usize) -> Vec<Line> {
        let mut reader = BufReader::with_capacity(buffer, input);
        let mut lines = Vec::new();
        while let Some(line) = read_line(&mut reader, cap).await.unwrap() {
            lines.push(line);
        }
        lines
    }

    #[tokio::test]
    async fn lines_split_on_newline_and_last_line_needs_none() {
        let lines = all_lines(b"a\r\nbb\n\nccc", 10, 2).await;
        assert_eq!(
            lines,
            [
                Line::Whole(Bytes::from_static(b"a")),
                Line::Whole(Bytes::from_static(b"bb")),
                Line::Whole(Bytes::new()),
                Line::Whole(Bytes::from_static(b"ccc"))
            ]
        );
    }

    #[tokio::test]
    async fn a_long_line_is_reported_and_reading_goes_on() {
        let mut input = vec![b'x'; 100_000];
        input.extend_from_slice(b"\nok\n");
        let lines = all_lines(&input, 1000, 64).await;
        assert_eq!(lines.len(), 2);
        let Line::TooLong { len, prefix } = &lines[0] else {
            panic!("expected TooLong")
        };
        assert_eq!(*len, 100_000);
        assert!(prefix.len() <= PREFIX_KEPT && prefix.len() >= 1000);
        assert_eq!(lines[1], Line::Whole(Bytes::from_static(b"ok")));
    }

    #[tokio::test]
    async fn a_line_past_the_cap_is_cut_at_once_and_its_rest_skipped() {
        let input = format!("{}rest\nnext\n", "x".repeat(10_000));
        let mut reader = BufReader::with_capacity(1024, input.as_bytes());
        let Some(Line::TooLong { len, prefix }) = read_line_or_cut(&mut reader, 100).await.unwrap()
        else {
            panic!("expected TooLong")
        };
        assert!(
            len > 100 && len <= 1024,
            "{len}: cut within the first buffer past the cap"
        );
        assert!(prefix.starts_with(b"xxx"));
        let skipped = skip_line(&mut reader).await.unwrap();
        assert_eq!(len + skipped, 10_004);
        let next = read_line_or_cut(&mut reader, 100).await.unwrap();
        assert_eq!(next, Some(Line::Whole(Bytes::from_static(b"next"))));
    }

    #[tokio::test]
    async fn a_line_that_cannot_be_spilled_is_cut_and_says_why() {
        let spill = Spill {
            // Under a regular file: no directory can be made there.
            dir: std::path::PathBuf::from("/dev/null/lines"),
            at: 100,
        };
        let input = format!("{}\nnext\n", "x".repeat(10_000));
        let mut reader = BufReader::with_capacity(1024, input.as_bytes());
        let Some(Line::Unspilled { len, prefix, error }) =
            read_line_spilling(&mut reader, 1 << 20, &spill)
                .await
                .unwrap()
        else {
            panic!("expected Unspilled")
        };
        assert!(len > 100 && len < 10_000, "{len}");
        assert!(prefix.starts_with(b"xxx"));
        assert!(!error.is_empty());
        skip_line(&mut reader).await.unwrap();
        let next = read_line_spilling(&mut reader, 1 << 20, &spill)
            .await
            .unwrap();
        assert_eq!(next, Some(Line::Whole(Bytes::from_static(b"next"))));
    }

    #[tokio::test]
    async fn a_long_line_is_spilled_whole() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill {
            dir: dir.path().join("lines"),
            at: 100,
        };
        let line = "y".repeat(10_000);
        let input = format!("{line}\r\nshort\n");
        let mut reader = BufReader::with_capacity(1024, input.as_bytes());
        let Some(Line::Spilled { file, len }) = read_line_spilling(&mut reader, 1 << 20, &spill)
            .await
            .unwrap()
        else {
            panic!("expected Spilled")
        };
        assert_eq!(len, 10_001);
        assert_eq!(
            std::fs::read(file.path()).unwrap(),
            format!("{line}\r").as_bytes()
        );
        let next = read_line_spilling(&mut reader, 1 << 20, &spill)
            .await
            .unwrap();
        assert_eq!(next, Some(Line::Whole(Bytes::from_static(b"short"))));
        let path = file.path().to_owned();
        drop(file);
        assert!(!path.exists());
    }
}
