//! What the runner does with the object store (`--object-store`): each
//! job's scratch directory before it runs, and the upload of a large
//! output or of a handler's files before its result is posted, so every
//! source gets the same references.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::{ResultSink, Shared};
use crate::delivery::Post;
use crate::job::{Job, JobResult, Outcome};
use crate::json::{self, Json};
use crate::objects::inputs::Inputs;
use crate::objects::job_dir;

impl<S: ResultSink> Shared<S> {
    /// With an object store, gives the job its scratch directory: made
    /// under `--scratch-dir` and named in its line as `job_dir`.
    pub(super) fn with_job_dir(&self, job: Job) -> Result<Job, String> {
        let Some(offloader) = &self.offloader else {
            return Ok(job);
        };
        let root = &offloader.store.config.scratch_dir;
        let dir = job_dir::create(root, &job.id).map_err(|e| {
            format!(
                "cannot make the job's directory under {} (--scratch-dir): {e}",
                root.display()
            )
        })?;
        let path = Json::from_value(&serde_json::json!(dir.display().to_string()));
        let line = Json::parse(job.line.clone())
            .map(|object| json::with_field(&object, "job_dir", &path).into_bytes())
            .unwrap_or(job.line);
        Ok(Job {
            line,
            dir: Some(dir),
            ..job
        })
    }

    /// Puts an output over the offload threshold, or the files a handler
    /// answered with, into the object store and makes the reference the
    /// output; an upload that fails for good fails the job.
    pub(super) async fn offload(
        &self,
        id: &str,
        result: JobResult,
        dir: Option<&Path>,
    ) -> JobResult {
        let uploaded = match (&self.offloader, &result.outcome) {
            (Some(offloader), Outcome::Output(output)) if offloader.wants(output.len()) => {
                offloader.offload_output(id, output).await.map_err(|error| {
                    format!(
                        "the output ({} bytes) was not delivered: {error}",
                        output.len()
                    )
                })
            }
            (Some(offloader), Outcome::Files(files)) => offloader
                .offload_files(id, files, dir)
                .await
                .map_err(|error| format!("the output files were not delivered: {error}")),
            (None, Outcome::Files(_)) => Err(
                "the handler answered with output_file(s), which need an object store to upload them to (--object-store)".into(),
            ),
            _ => return result,
        };
        let outcome = match uploaded {
            Ok(reference) => Outcome::Output(reference),
            Err(error) => {
                tracing::error!(job_id = %id, "{error}");
                Outcome::Error {
                    error,
                    output: None,
                }
            }
        };
        JobResult { outcome, ..result }
    }

    /// Whether a job's input holds references to fetch first.
    pub(super) fn has_input_refs(&self, job: &Job) -> bool {
        self.inputs.is_some() && job.input().is_some_and(|input| Inputs::wanted(&input))
    }

    /// Downloads the inputs a job gives by reference into its directory
    /// and puts `{"path", "size", "sha256"}` in their place.
    pub(super) async fn fetch_inputs(&self, job: Job) -> Result<Job, (Job, String)> {
        let (Some(inputs), Some(dir)) = (&self.inputs, job.dir.clone()) else {
            return Ok(job);
        };
        let Ok(mut object) = serde_json::from_slice::<Value>(&job.line) else {
            return Ok(job);
        };
        let Some(input) = object.get_mut("input") else {
            return Ok(job);
        };
        match inputs.resolve(input, &dir).await {
            Ok(()) => {
                let line = serde_json::to_vec(&object).expect("a JSON value serialises");
                Ok(Job {
                    line: line.into(),
                    ..job
                })
            }
            Err(error) => Err((job, error)),
        }
    }

    /// Fails a job whose inputs could not be fetched, before it ran.
    pub(super) async fn input_failed(self: Arc<Self>, job: Job, error: String) {
        tracing::error!(job_id = %job.id, "{error}");
        if let Some(dir) = &job.dir {
            job_dir::remove(dir, &job.id);
        }
        let body = Json::from_value(&serde_json::json!({ "error": error }));
        let post = Post::final_result(job.id, body);
        self.deliver_final(post).await;
    }

    /// Puts a stream partial over `--offload-stream-threshold` into the
    /// store as `stream-N.json` and returns its reference; a partial that
    /// cannot be uploaded is posted as it is (and may be refused).
    pub(super) async fn offload_partial(&self, id: &str, value: Json, n: &mut usize) -> Json {
        let index = *n;
        *n += 1;
        let Some(offloader) = self
            .offloader
            .as_ref()
            .filter(|o| o.wants_partial(value.len()))
        else {
            return value;
        };
        let name = format!("stream-{index}.json");
        match offloader.offload_json(id, &name, &value).await {
            Ok(reference) => reference,
            Err(error) => {
                tracing::error!(job_id = %id, "stream partial {index} ({} bytes) stays inline: {error}", value.len());
                value
            }
        }
    }
}
