//! A file being downloaded: bounded in size, hashed as it is written.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

pub struct Sink {
    file: tokio::fs::File,
    path: PathBuf,
    hasher: Sha256,
    size: u64,
    max: u64,
}

impl Sink {
    pub async fn create(path: &Path, max: u64) -> Result<Sink, String> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(Sink {
            file,
            path: path.to_owned(),
            hasher: Sha256::new(),
            size: 0,
            max,
        })
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.size += chunk.len() as u64;
        if self.size > self.max {
            return Err(format!(
                "the input is larger than the {} byte limit (--fetch-max-size)",
                self.max
            ));
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }

    /// The size and hex SHA-256 of what was written.
    pub async fn finish(mut self) -> Result<(u64, String), String> {
        self.file
            .flush()
            .await
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        let digest = self.hasher.finalize();
        Ok((self.size, crate::text::hex(&digest)))
    }
}
