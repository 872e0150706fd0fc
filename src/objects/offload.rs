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
//! An upload is tried once when the job ends; one that fails because the
//! store cannot be reached waits in the spool ([`super::pending`]) and is
//! retried with back-off for `--object-store-retry`, then the job fails
//! with an error that says the store could not be reached, so a result is
//! never lost silently and a job never hangs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::job_dir;
use super::pending::Upload;
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

/// Why uploads did not end with references.
#[derive(Debug)]
pub enum UploadFailed {
    /// The store could not be reached or refused: worth trying later.
    Unreachable(String),
    /// Trying again cannot help (a file that cannot be read, a bad answer).
    Failed(String),
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

    /// Whether a stream partial of `len` bytes goes to the store.
    pub fn wants_partial(&self, len: usize) -> bool {
        len > self.store.config.offload_stream_threshold
    }

    /// How long uploads are retried while the store cannot be reached.
    pub fn retry_for(&self) -> std::time::Duration {
        self.store.config.retry_for
    }

    /// The upload of a JSON output (or stream partial) as `name`.
    pub fn json_upload(name: &str, source: Source) -> Upload {
        Upload {
            name: name.to_owned(),
            source,
            content_type: OUTPUT_CONTENT_TYPE.to_owned(),
        }
    }

    /// The uploads of the files a handler answered with
    /// (`{"output_file": path}` or `{"output_files": [{"name", "path"}]}`,
    /// from the job's directory `dir`), and whether it named one file.
    pub fn file_uploads(files: &Json, dir: Option<&Path>) -> Result<(Vec<Upload>, bool), String> {
        let Some(dir) = dir else {
            return Err("the handler answered with output_file(s), but this job has no job_dir to take them from".into());
        };
        let (list, single) = named_files(&files.to_value(), dir)?;
        let uploads = list
            .into_iter()
            .map(|(name, path)| Upload {
                content_type: job_dir::content_type(&name).to_owned(),
                name,
                source: Source::File(path),
            })
            .collect();
        Ok((uploads, single))
    }

    /// Uploads each of `uploads`, retrying while the store fails until
    /// `until` (none: one attempt each), and returns the job's output: the
    /// reference when `single`, else `{"files": [{"name", "object"}]}`.
    pub async fn upload_all(
        &self,
        job_id: &str,
        uploads: &[Upload],
        single: bool,
        until: Option<Instant>,
    ) -> Result<Json, UploadFailed> {
        let mut objects = Vec::new();
        for upload in uploads {
            let stored = self.upload(job_id, upload, until).await?;
            let reference = self
                .reference(&stored, &upload.content_type)
                .await
                .map_err(UploadFailed::Unreachable)?;
            if single {
                return Ok(Json::from_value(&reference));
            }
            objects.push(json!({"name": upload.name, "object": reference["object"]}));
        }
        Ok(Json::from_value(&json!({ "files": objects })))
    }

    /// Uploads one object as `<namespace>/<job id>/<name>`, retrying while
    /// the store fails until `until`.
    async fn upload(
        &self,
        job_id: &str,
        upload: &Upload,
        until: Option<Instant>,
    ) -> Result<Stored, UploadFailed> {
        let name = upload.name.as_str();
        let key = [self.namespace.as_str(), job_id, name];
        let mut delays = RETRY.iter();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let started = Instant::now();
            let put = self
                .store
                .put(&key, upload.source.clone(), &upload.content_type);
            match put.await {
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
                    return Err(UploadFailed::Failed(format!(
                        "the file {} cannot be read for upload: {source}",
                        path.display()
                    )))
                }
                Err(UploadError::Store(e)) => {
                    let delay = delays.next().expect("back-off is endless");
                    if until.is_none_or(|until| Instant::now() + delay >= until) {
                        return Err(UploadFailed::Unreachable(format!(
                            "the object store {} could not be reached to upload {name} ({attempts} attempts): {e}",
                            self.store.config.url(),
                        )));
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

/// The files of an `output_file(s)` answer, named and resolved inside the
/// job's directory, and whether it named one file.
fn named_files(answer: &Value, dir: &Path) -> Result<(Vec<(String, PathBuf)>, bool), String> {
    if let Some(given) = answer.get("output_file") {
        let Some(given) = given.as_str() else {
            return Err(format!("output_file must be a path string, not {given}"));
        };
        let path = job_dir::resolve(dir, given)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        return Ok((vec![(name, path)], true));
    }
    let shape = || {
        "output_files must be a list of {\"name\": \"file name\", \"path\": \"/path/in/job_dir\"}"
            .to_owned()
    };
    let items = answer
        .get("output_files")
        .and_then(Value::as_array)
        .ok_or_else(shape)?;
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for item in items {
        let (Some(name), Some(given)) = (
            item.get("name").and_then(Value::as_str),
            item.get("path").and_then(Value::as_str),
        ) else {
            return Err(shape());
        };
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(format!(
                "the output file name {name:?} is not a plain file name (no slashes, not . or ..)"
            ));
        }
        if files.iter().any(|(n, _)| n == name) {
            return Err(format!("the output file name {name:?} is given twice"));
        }
        files.push((name.to_owned(), job_dir::resolve(dir, given)?));
    }
    Ok((files, false))
}
