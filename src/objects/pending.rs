//! An upload that waits in the spool for the object store to come back.
//!
//! When an output's first upload fails because the store cannot be
//! reached, its bytes are moved into a folder of the spool (`upload-*`,
//! beside the result files) and fsynced, and the result is spooled as a
//! post that still has to upload them ([`PendingUpload`] in
//! `Post::upload`). The job's slot is free meanwhile; the upload is retried
//! with back-off, in this run or the next start, until
//! `--object-store-retry` after the first failure, and then the reference
//! (or the error that says why there is none) is posted like any result.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::store::Source;

/// What one object of a result is uploaded from, and as what.
#[derive(Clone)]
pub struct Upload {
    /// The object's name after the job id in its key.
    pub name: String,
    pub source: Source,
    pub content_type: String,
}

/// The uploads a result still needs, kept in the spool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingUpload {
    pub files: Vec<PendingFile>,
    /// One object whose reference is the output, or files listed as
    /// `{"files": [{"name", "object"}]}`.
    pub single: bool,
    /// When the first upload failed, in milliseconds since the epoch:
    /// retries end `--object-store-retry` after it.
    pub since_ms: u64,
    /// The first failure, for the job's error if the store never returns.
    pub first_error: String,
    /// The spool folder that holds the files.
    pub dir: PathBuf,
}

/// One object of a pending upload: `len` bytes from `offset` of `path`
/// (the whole file when `len` is none).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingFile {
    pub name: String,
    pub path: PathBuf,
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub len: Option<u64>,
    pub content_type: String,
}

impl PendingFile {
    pub fn upload(&self) -> Upload {
        let source = match self.len {
            Some(len) => Source::Range {
                path: self.path.clone(),
                offset: self.offset,
                len,
            },
            None => Source::File(self.path.clone()),
        };
        Upload {
            name: self.name.clone(),
            source,
            content_type: self.content_type.clone(),
        }
    }
}

impl PendingUpload {
    /// Moves (or writes) the bytes of `uploads` into a new folder of the
    /// spool `spool_dir`, durably; blocking. A file is moved when it can
    /// be renamed there, copied otherwise.
    pub fn keep(
        spool_dir: &Path,
        uploads: &[Upload],
        single: bool,
        first_error: String,
    ) -> std::io::Result<PendingUpload> {
        let dir = spool_dir.join(format!("upload-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let kept = keep_files(&dir, uploads).and_then(|files| {
            std::fs::File::open(&dir)?.sync_all()?;
            std::fs::File::open(spool_dir)?.sync_all()?;
            Ok(files)
        });
        if kept.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(PendingUpload {
            files: kept?,
            single,
            since_ms: now_ms(),
            first_error,
            dir,
        })
    }

    /// Removes the kept files; blocking.
    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", self.dir.display());
            }
        }
    }

    /// How long retries may still go on.
    pub fn time_left(&self, retry_for: std::time::Duration) -> std::time::Duration {
        let end = self.since_ms.saturating_add(retry_for.as_millis() as u64);
        std::time::Duration::from_millis(end.saturating_sub(now_ms()))
    }
}

fn keep_files(dir: &Path, uploads: &[Upload]) -> std::io::Result<Vec<PendingFile>> {
    let mut files = Vec::new();
    for (n, upload) in uploads.iter().enumerate() {
        let path = dir.join(format!("{n}"));
        let (offset, len) = match &upload.source {
            Source::Pieces(pieces) => {
                write_pieces(&path, pieces)?;
                (0, None)
            }
            Source::File(from) => {
                move_file(from, &path)?;
                (0, None)
            }
            Source::Range {
                path: from,
                offset,
                len,
            } => {
                move_file(from, &path)?;
                (*offset, Some(*len))
            }
        };
        std::fs::File::open(&path)?.sync_all()?;
        files.push(PendingFile {
            name: upload.name.clone(),
            path,
            offset,
            len,
            content_type: upload.content_type.clone(),
        });
    }
    Ok(files)
}

fn write_pieces(path: &Path, pieces: &[Bytes]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    for piece in pieces {
        file.write_all(piece)?;
    }
    Ok(())
}

/// Renames `from` to `to`, or copies it across file systems. A file that
/// is still someone's (a spilled line's file, removed when its holder
/// drops it) is gone from its old place either way, which its holder
/// tolerates.
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            std::fs::copy(from, to)?;
            std::fs::remove_file(from)
        }
        Err(e) => Err(e),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_files_move_into_the_spool_and_go_with_it() {
        let root = tempfile::tempdir().unwrap();
        let spilled = root.path().join("line");
        std::fs::write(&spilled, br#"{"id":"x","output":[1,2]}"#).unwrap();
        let uploads = [
            Upload {
                name: "output.json".into(),
                source: Source::Range {
                    path: spilled.clone(),
                    offset: 19,
                    len: 5,
                },
                content_type: "application/json".into(),
            },
            Upload {
                name: "b.txt".into(),
                source: Source::Pieces(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")]),
                content_type: "text/plain".into(),
            },
        ];
        let spool = root.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        let pending = PendingUpload::keep(&spool, &uploads, false, "down".into()).unwrap();
        assert!(!spilled.exists(), "the line's file moved");
        assert_eq!(pending.files[0].offset, 19);
        assert_eq!(pending.files[0].len, Some(5));
        assert_eq!(std::fs::read(&pending.files[1].path).unwrap(), b"abc");
        let text = serde_json::to_string(&pending).unwrap();
        assert_eq!(
            serde_json::from_str::<PendingUpload>(&text).unwrap(),
            pending
        );
        assert!(
            pending
                .time_left(std::time::Duration::from_secs(60))
                .as_secs()
                >= 59
        );
        pending.remove();
        assert!(!pending.dir.exists());
    }
}
