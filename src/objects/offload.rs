//! Output offload: a job's output larger than `--offload-threshold` is
//! uploaded to the object store and replaced by a small reference, so a
//! result of any size reaches RunPod or the endpoint's queue (the same
//! path for both: the runner calls this before it posts a final result).
//!
//! The reference, documented in the README, is
//! `{"object": {"url", "key", "size", "sha256", "contentType"}}`: `url` a
//! presigned GET URL valid for `--presign-expiry`, `key` the object's key
//! under the store's prefix.
//!
//! An upload that fails is retried with back-off for `--object-store-retry`;
//! then the job fails with an error that says the store could not be
//! reached, so a result is never lost silently and a job never hangs.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::store::{Source, Store, Stored, UploadError};
use crate::backoff::BackoffPolicy;
use crate::json::Json;

/// The content type of an offloaded output: its JSON text.
const OUTPUT_CONTENT_TYPE: &str = "application/json";

/// Delays between whole-upload attempts.
const RETRY: BackoffPolicy = BackoffPolicy::new(
    std::time::Duration::from_millis(500),
    std::time::Duration::from_secs(15),
    0.2,
);

/// Uploads large outputs for one source.
pub struct Offloader {
    pub store: Arc<Store>,
    /// The part of the key before the job id: the endpoint or worker.
    namespace: String,
}

impl Offloader {
    pub fn new(store: Arc<Store>, namespace: &str) -> Offloader {
        Offloader {
            store,
            namespace: namespace.to_owned(),
        }
    }

    /// Whether an output of `len` bytes goes to the store.
    pub fn wants(&self, len: usize) -> bool {
        len > self.store.config.offload_threshold
    }

    /// Uploads a job's output and returns its reference, or the job's
    /// error when the store stays unreachable.
    pub async fn offload_output(&self, job_id: &str, output: &Json) -> Result<Json, String> {
        let source = Source::Pieces(output.pieces().to_vec());
        let stored = self
            .upload(job_id, "output.json", source, OUTPUT_CONTENT_TYPE)
            .await?;
        self.reference(&stored, OUTPUT_CONTENT_TYPE)
            .await
            .map(|value| Json::from_value(&value))
    }

    /// Uploads `source` as `<namespace>/<job id>/<name>`, retrying while
    /// the store fails, for at most the configured time.
    pub async fn upload(
        &self,
        job_id: &str,
        name: &str,
        source: Source,
        content_type: &str,
    ) -> Result<Stored, String> {
        let key = [self.namespace.as_str(), job_id, name];
        let deadline = Instant::now() + self.store.config.retry_for;
        let mut delays = RETRY.iter();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let started = Instant::now();
            match self.store.put(&key, source.clone(), content_type).await {
                Ok(stored) => {
                    tracing::info!(
                        job_id,
                        key = %stored.key,
                        "uploaded {} bytes to the object store in {:.1}s",
                        stored.size,
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(stored);
                }
                Err(UploadError::Read { path, source }) => {
                    return Err(format!(
                        "the file {} cannot be read for upload: {source}",
                        path.display()
                    ))
                }
                Err(UploadError::Store(e)) => {
                    let delay = delays.next().expect("back-off is endless");
                    if Instant::now() + delay >= deadline {
                        return Err(format!(
                            "the object store {} could not be reached to upload {name} ({attempts} attempts over {}; --object-store-retry): {e}",
                            self.store.config.url(),
                            humantime::format_duration(self.store.config.retry_for)
                        ));
                    }
                    tracing::warn!(job_id, "upload of {name} to the object store failed ({e}); retrying in {delay:.1?}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The reference to a stored object, with a presigned URL.
    pub async fn reference(&self, stored: &Stored, content_type: &str) -> Result<Value, String> {
        let url = self.store.presigned_get(&stored.key).await.map_err(|e| {
            format!(
                "cannot sign a URL for the uploaded object {}: {e}",
                stored.key
            )
        })?;
        Ok(json!({"object": {
            "url": url,
            "key": stored.key,
            "size": stored.size,
            "sha256": stored.sha256,
            "contentType": content_type,
        }}))
    }
}
