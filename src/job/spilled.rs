//! A handler's output too large to hold in memory: the line that carried
//! it was written to a file as it was read (see `handler::spill`), and the
//! output is a byte range of that file, uploaded to the object store from
//! there. The file goes when the last holder of the range drops it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file holding one spilled line; removed when dropped.
#[derive(Debug)]
pub struct SpillFile {
    path: PathBuf,
}

impl SpillFile {
    /// Takes charge of `path`, which is removed with this value.
    pub fn new(path: PathBuf) -> SpillFile {
        SpillFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

impl PartialEq for SpillFile {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl Eq for SpillFile {}

/// One JSON value's text, checked, at `offset..offset + len` of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRange {
    pub file: Arc<SpillFile>,
    pub offset: u64,
    pub len: u64,
}

impl FileRange {
    /// The text, read into memory: for the rare consumer that has no
    /// object store to upload it to (a `--test-input` job).
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(self.file.path())?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut text = Vec::with_capacity(self.len as usize);
        file.take(self.len).read_to_end(&mut text)?;
        Ok(text)
    }
}
