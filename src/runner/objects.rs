//! What the runner does with the object store (`--object-store`): each
//! job's scratch directory before it runs, and the upload of a large
//! output or of a handler's files before its result is posted, so every
//! source gets the same references.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tokio::time::Instant;

use super::{ResultSink, Shared};
use crate::delivery::{Post, PostKind};
use crate::job::{Job, JobResult, Outcome};
use crate::json::{self, Json};
use crate::objects::inputs::Inputs;
use crate::objects::job_dir;
use crate::objects::offload::{Offloader, UploadFailed};
use crate::objects::pending::{PendingFile, PendingUpload, Upload};
use crate::objects::store::Source;

/// The name of an offloaded output after the job id in its key.
const OUTPUT_NAME: &str = "output.json";

/// What became of a result's uploads.
pub(super) enum Offloaded {
    /// Nothing to upload, uploaded (the output is the reference), or
    /// failed for good (the job's error says why).
    Done(JobResult),
    /// The store could not be reached: the uploads wait in the spool.
    Waiting(Waiting),
}

/// Uploads that wait for the store, and the result they belong to.
pub(super) struct Waiting {
    uploads: Vec<Upload>,
    single: bool,
    error: String,
    result: JobResult,
}

/// A job's result turned into its error.
fn failed(id: &str, result: JobResult, error: String) -> JobResult {
    tracing::error!(job_id = %id, "{error}");
    JobResult {
        outcome: Outcome::Error {
            error,
            output: None,
        },
        ..result
    }
}

/// The body of a final result that is an error.
fn error_body(error: String) -> Json {
    json::object([("error", &Json::from_value(&error.into()))])
}

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
    /// output. One attempt: when the store cannot be reached, the uploads
    /// wait in the spool ([`Offloaded::Waiting`]); other failures fail the job.
    pub(super) async fn offload(
        &self,
        id: &str,
        result: JobResult,
        dir: Option<&Path>,
    ) -> Offloaded {
        // Named in errors only: built when one is.
        let what = |outcome: &Outcome| match outcome {
            Outcome::Output(output) => format!("the output ({} bytes)", output.len()),
            Outcome::Spilled(output) => format!("the output ({} bytes)", output.len),
            _ => "the output files".to_owned(),
        };
        let planned = match (&self.offloader, &result.outcome) {
            (Some(offloader), Outcome::Output(output)) if offloader.wants(output.len()) => {
                let source = Source::Pieces(output.pieces().to_vec());
                Ok((vec![Offloader::json_upload(OUTPUT_NAME, source)], true))
            }
            (Some(_), Outcome::Spilled(output)) => {
                let source = Source::Range {
                    path: output.file.path().to_owned(),
                    offset: output.offset,
                    len: output.len,
                };
                Ok((vec![Offloader::json_upload(OUTPUT_NAME, source)], true))
            }
            (Some(_), Outcome::Files(files)) => Offloader::file_uploads(files, dir)
                .map_err(|error| format!("the output files were not delivered: {error}")),
            (None, Outcome::Files(_)) => Err(
                "the handler answered with output_file(s), which need an object store to upload them to (--object-store)".into(),
            ),
            (None, Outcome::Spilled(_)) => Err(
                "the handler's output was kept in a file for an object store, but none is configured".into(),
            ),
            _ => return Offloaded::Done(result),
        };
        let (uploads, single) = match planned {
            Ok(planned) => planned,
            Err(error) => return Offloaded::Done(failed(id, result, error)),
        };
        let Some(offloader) = &self.offloader else {
            return Offloaded::Done(result);
        };
        match offloader.upload_all(id, &uploads, single, None).await {
            Ok(reference) => Offloaded::Done(JobResult {
                outcome: Outcome::Output(reference),
                ..result
            }),
            Err(UploadFailed::Failed(error)) => {
                let error = format!("{} was not delivered: {error}", what(&result.outcome));
                Offloaded::Done(failed(id, result, error))
            }
            Err(UploadFailed::Unreachable(error)) => Offloaded::Waiting(Waiting {
                uploads,
                single,
                error,
                result,
            }),
        }
    }

    /// Moves the bytes of uploads that wait for the store into the spool
    /// and spools the result that still needs them; the post and its
    /// spool file, or the job's error when they cannot be kept.
    pub(super) async fn keep_upload(
        &self,
        id: &str,
        waiting: Waiting,
    ) -> Result<(Post, PathBuf), Post> {
        let Waiting {
            uploads,
            single,
            error,
            result,
        } = waiting;
        tracing::warn!(job_id = %id, "{error}; the result waits in the spool until the store is back");
        let spool = self.spool.clone();
        let dir = self.options.spool_dir.clone();
        let job_id = id.to_owned();
        let kind = PostKind::Final {
            is_stream: result.streamed,
        };
        let refresh_worker = result.refresh_worker;
        let mut stamped = Post::final_result(job_id.clone(), Json::null());
        self.sink.stamp(&mut stamped);
        let lease = stamped.lease;
        let kept = tokio::task::spawn_blocking(move || {
            let pending = PendingUpload::keep(&dir, &uploads, single, error)?;
            let post = Post {
                job_id,
                kind,
                body: Json::null(),
                refresh_worker,
                upload: Some(pending.clone()),
                lease,
            };
            match spool.keep(&post) {
                Ok(path) => Ok((post, path)),
                Err(e) => {
                    pending.remove();
                    Err(e)
                }
            }
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        drop(result);
        kept.map_err(|e| {
            let error = format!("the object store could not be reached and the output could not be kept in the spool ({}) to wait for it: {e}", self.options.spool_dir.display());
            tracing::error!(job_id = %id, "{error}");
            Post {
                job_id: id.to_owned(),
                kind,
                body: error_body(error),
                refresh_worker,
                upload: None,
                lease: None,
            }
        })
    }

    /// Uploads what a spooled result waits for, retrying until
    /// `--object-store-retry` after the first failure, then delivers the
    /// result (its reference, or the error that says why there is none).
    /// At shutdown it stays in the spool for the next start.
    pub(super) async fn finish_upload(&self, post: Post, path: PathBuf) {
        let Some(pending) = post.upload.clone() else {
            return self.post_spooled(post, path).await;
        };
        let outcome = match &self.offloader {
            Some(offloader) => {
                let uploads: Vec<_> = pending.files.iter().map(PendingFile::upload).collect();
                let retry_for = offloader.retry_for();
                let until = Instant::now() + pending.time_left(retry_for);
                let upload = offloader.upload_all(&post.job_id, &uploads, pending.single, Some(until));
                tokio::select! {
                    outcome = upload => outcome.map_err(|failed| match failed {
                        UploadFailed::Failed(error) => format!("the output was not delivered: {error}"),
                        UploadFailed::Unreachable(error) => format!(
                            "the output was not delivered: {error}; it waited in the spool and was retried for {} (--object-store-retry); the first failure: {}",
                            humantime::format_duration(retry_for),
                            pending.first_error
                        ),
                    }),
                    _ = self.shutdown.flush.cancelled() => {
                        tracing::warn!(job_id = %post.job_id, "the result's upload waits for the object store; kept in {} for the next start", path.display());
                        return self.settled(&post);
                    }
                }
            }
            None => Err("the output waited in the spool for an object store, but this run has none (--object-store)".into()),
        };
        let body = match outcome {
            Ok(output) => crate::json::object([("output", &output)]),
            Err(error) => {
                tracing::error!(job_id = %post.job_id, "{error}");
                error_body(error)
            }
        };
        let done = Post {
            body,
            upload: None,
            ..post.clone()
        };
        // The spool now keeps the result itself, and the files can go.
        self.settled(&post);
        self.pending(&done);
        let path = match self.spool_result(&Arc::new(done.clone())).await {
            Some(new) => {
                let spool = self.spool.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    spool.forget(&path);
                    pending.remove();
                })
                .await;
                new
            }
            // The old entry stays until the result is delivered.
            None => path,
        };
        self.post_spooled(done, path).await;
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
        let upload = Offloader::json_upload(&name, Source::Pieces(value.pieces().to_vec()));
        match offloader.upload_all(id, &[upload], true, None).await {
            Ok(reference) => reference,
            Err(UploadFailed::Failed(error) | UploadFailed::Unreachable(error)) => {
                tracing::error!(job_id = %id, "stream partial {index} ({} bytes) stays inline: {error}", value.len());
                value
            }
        }
    }
}
