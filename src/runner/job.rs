//! The task of one job: its updates in order, then its final result,
//! delivered or kept in the spool (the policy is in the parent module's
//! docs).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::time::Instant;

use super::objects::Offloaded;
use super::{check_id, IdProblem, ResultSink, Shared, SPOOL_AFTER, UPDATE_BUDGET};
use crate::delivery::{deliver, Attempt, Delivery, Post, PostKind, Spooled};
use crate::job::{JobEvent, JobEvents, JobResult, Outcome};
use crate::json::{self, Json};
use crate::text::clip_middle;

impl<S: ResultSink> Shared<S> {
    /// Posts one job's updates in order, then its final result.
    pub(super) async fn run_job(
        self: Arc<Self>,
        id: String,
        mut events: JobEvents,
        mut dir: Option<PathBuf>,
    ) {
        let mut partials = self.options.aggregate_stream.map(Partials::new);
        // Stream partials so far, which name offloaded ones (stream-N.json).
        let mut streamed = 0usize;
        // Once the result is known, the updates still queued share one
        // budget, so the result waits for them at most that long.
        let mut rest_deadline: Option<Instant> = None;
        while let Some(event) = events.recv().await {
            let (kind, body) = match event {
                JobEvent::Progress(value) => (PostKind::Progress, value),
                JobEvent::Stream(value) => {
                    let value = self.offload_partial(&id, value, &mut streamed).await;
                    if let Some(partials) = &mut partials {
                        partials.keep(&id, &value);
                    }
                    (PostKind::Stream, value)
                }
                JobEvent::Done(result) => {
                    let result = match self.offload(&id, result, dir.as_deref()).await {
                        Offloaded::Done(result) => result,
                        Offloaded::Waiting(waiting) => {
                            // Its files move to the spool before the job's
                            // directory goes.
                            let kept = self.keep_upload(&id, waiting).await;
                            remove_dir(&id, dir.take()).await;
                            let post = match &kept {
                                Ok((post, _)) | Err(post) => post,
                            };
                            self.pending(post);
                            events.release_slot();
                            match kept {
                                Ok((post, path)) => self.finish_upload(post, path).await,
                                Err(post) => self.post_final(post).await,
                            }
                            return;
                        }
                    };
                    remove_dir(&id, dir.take()).await;
                    let post = final_post(&id, result, partials.take());
                    // The slot frees once the result counts as undelivered,
                    // so the next take sees its size (RESULT_BYTES_IN_FLIGHT).
                    if let Some(post) = &post {
                        self.pending(post);
                    }
                    events.release_slot();
                    if let Some(post) = post {
                        self.post_final(post).await;
                    }
                    return;
                }
            };
            if rest_deadline.is_none() && events.is_finished() {
                rest_deadline = Some(Instant::now() + UPDATE_BUDGET);
            }
            let own = Instant::now() + UPDATE_BUDGET;
            let deadline = rest_deadline.map_or(own, |rest| rest.min(own));
            let post = Post {
                job_id: id.clone(),
                kind,
                body,
                refresh_worker: false,
                upload: None,
                lease: None,
            };
            let delivery = deliver(&*self.sink, &post, &self.shutdown.flush, &self.metrics);
            match tokio::time::timeout_at(deadline, delivery).await {
                Ok(Delivery::Delivered | Delivery::Refused) => {}
                Ok(Delivery::Flushed) => {
                    self.dropped(1);
                    tracing::warn!(job_id = %id, "shutting down: an undelivered {} update is dropped (only final results are kept)", kind.name());
                }
                Err(_) => {
                    let queued = events.drop_queued();
                    self.dropped(1 + queued);
                    tracing::warn!(
                        job_id = %id,
                        "a {} update was not delivered within {}s; it and {queued} queued updates are dropped so the job's result is not held back",
                        kind.name(),
                        UPDATE_BUDGET.as_secs()
                    );
                }
            }
        }
    }

    fn dropped(&self, updates: usize) {
        self.updates_dropped
            .fetch_add(updates, std::sync::atomic::Ordering::Relaxed);
        for _ in 0..updates {
            self.metrics.update_dropped();
        }
    }

    /// A final result starts its way to its destination.
    pub(super) fn pending(&self, post: &Post) {
        self.undelivered.add(&post.job_id, post.body.len());
        self.metrics.result_pending();
    }

    /// A final result was delivered, refused or left in the spool.
    pub(super) fn settled(&self, post: &Post) {
        self.undelivered.remove(&post.job_id, post.body.len());
        self.metrics.result_settled();
    }

    /// Delivers a final result. If the first post fails, or has not
    /// succeeded within [`SPOOL_AFTER`], the result is spooled at once and
    /// retried from there; at shutdown it stays in the spool.
    pub(super) async fn deliver_final(self: Arc<Self>, post: Post) {
        self.pending(&post);
        self.post_final(post).await;
    }

    /// [`Shared::deliver_final`] for a result already counted as pending.
    pub(super) async fn post_final(&self, post: Post) {
        let post = Arc::new(post);
        let first = self.sink.send(&post);
        tokio::pin!(first);
        // At shutdown a result still on its first post goes to the spool
        // at once rather than after the whole window.
        let early = tokio::select! {
            attempt = &mut first => Some(attempt),
            _ = tokio::time::sleep(SPOOL_AFTER) => None,
            _ = self.shutdown.flush.cancelled() => None,
        };
        let path = match early {
            Some(Attempt::Delivered) => {
                tracing::debug!(job_id = %post.job_id, "result delivered");
                self.metrics.post_ended("result", "delivered");
                return self.settled(&post);
            }
            Some(Attempt::Refused(why)) => {
                tracing::error!(job_id = %post.job_id, "the platform refused the result: {why}; it is not retried");
                self.metrics.post_ended("result", "refused");
                return self.settled(&post);
            }
            Some(Attempt::Retry(why)) => {
                self.metrics.post_retried("result");
                let path = self.spool_result(&post).await;
                tracing::warn!(job_id = %post.job_id, "result post failed: {why}; {}; retrying", kept(&path));
                path
            }
            None => {
                let path = self.spool_result(&post).await;
                tracing::warn!(job_id = %post.job_id, "result post has not succeeded within {}s; {}", SPOOL_AFTER.as_secs(), kept(&path));
                match self.finish_first(first, &post).await {
                    Some(delivery) => return self.settle(&post, path, delivery).await,
                    None => path,
                }
            }
        };
        let delivery = deliver(&*self.sink, &post, &self.shutdown.flush, &self.metrics).await;
        self.settle(&post, path, delivery).await;
    }

    /// Waits for a slow first post; `None` when it failed and must be retried.
    async fn finish_first(
        &self,
        first: impl std::future::Future<Output = Attempt>,
        post: &Post,
    ) -> Option<Delivery> {
        let attempt = tokio::select! {
            attempt = first => attempt,
            _ = self.shutdown.flush.cancelled() => {
                self.metrics.post_ended("result", "flushed");
                return Some(Delivery::Flushed);
            }
        };
        match attempt {
            Attempt::Delivered => {
                self.metrics.post_ended("result", "delivered");
                Some(Delivery::Delivered)
            }
            Attempt::Refused(why) => {
                tracing::error!(job_id = %post.job_id, "the platform refused the result: {why}; it is not retried");
                self.metrics.post_ended("result", "refused");
                Some(Delivery::Refused)
            }
            Attempt::Retry(why) => {
                tracing::warn!(job_id = %post.job_id, "result post failed: {why}; retrying");
                self.metrics.post_retried("result");
                None
            }
        }
    }

    /// Ends the life of an undelivered result: removed from the spool once
    /// delivered or refused, left there at shutdown.
    async fn settle(&self, post: &Post, path: Option<PathBuf>, delivery: Delivery) {
        match (delivery, path) {
            (Delivery::Delivered | Delivery::Refused, Some(path)) => {
                let spool = self.spool.clone();
                let _ = tokio::task::spawn_blocking(move || spool.forget(&path)).await;
            }
            (Delivery::Delivered | Delivery::Refused, None) => {}
            (Delivery::Flushed, Some(path)) => {
                tracing::warn!(job_id = %post.job_id, "result not delivered before shutdown; kept in {} for the next start", path.display());
            }
            (Delivery::Flushed, None) => {
                tracing::error!(job_id = %post.job_id, "result not delivered and it could not be spooled; it is lost: {}", clip_middle(&post.body.text(), 2000));
            }
        }
        self.settled(post);
    }

    /// Writes a result to the spool off the runtime's threads.
    pub(super) async fn spool_result(&self, post: &Arc<Post>) -> Option<PathBuf> {
        let spool = self.spool.clone();
        let mut copy = (**post).clone();
        self.sink.stamp(&mut copy);
        let written = tokio::task::spawn_blocking(move || spool.keep(&copy)).await;
        match written {
            Ok(Ok(path)) => {
                self.metrics.result_spooled();
                Some(path)
            }
            Ok(Err(e)) => {
                tracing::error!(job_id = %post.job_id, "cannot write the result to the spool ({e}); it is kept in memory only");
                None
            }
            Err(e) => {
                tracing::error!(job_id = %post.job_id, "writing the result to the spool failed ({e}); it is kept in memory only");
                None
            }
        }
    }

    /// Delivers a result an earlier run kept in the spool.
    pub(super) async fn redeliver(self: Arc<Self>, spooled: Spooled) {
        let Spooled { path, post } = spooled;
        if let Err(IdProblem::Unanswerable(why)) = check_id(&post.job_id) {
            tracing::error!(
                "the spooled result {} cannot be delivered ({why}); it is removed: {}",
                path.display(),
                clip_middle(&post.body.text(), 2000)
            );
            let spool = self.spool.clone();
            let _ = tokio::task::spawn_blocking(move || spool.forget(&path)).await;
            return;
        }
        tracing::info!(job_id = %post.job_id, "delivering a result kept in the spool by an earlier run");
        self.pending(&post);
        if post.upload.is_some() {
            return self.finish_upload(post, path).await;
        }
        self.post_spooled(post, path).await;
    }

    /// Delivers a result already kept in the spool at `path`.
    pub(super) async fn post_spooled(&self, post: Post, path: PathBuf) {
        let delivery = deliver(&*self.sink, &post, &self.shutdown.flush, &self.metrics).await;
        self.settle(&post, Some(path), delivery).await;
    }
}

/// Removes a job's scratch directory, off the runtime's threads.
async fn remove_dir(id: &str, dir: Option<PathBuf>) {
    if let Some(dir) = dir {
        let id = id.to_owned();
        let _ =
            tokio::task::spawn_blocking(move || crate::objects::job_dir::remove(&dir, &id)).await;
    }
}

/// The post for a job's final result; `None` for a stopped job, for which
/// nothing is posted. `partials` are given when the stream is aggregated.
fn final_post(id: &str, result: JobResult, partials: Option<Partials>) -> Option<Post> {
    let body = match result.outcome {
        Outcome::Cancelled => {
            tracing::info!(job_id = %id, "job stopped on request; nothing is posted for it");
            return None;
        }
        Outcome::Output(_) if result.streamed && partials.is_some() => {
            match partials.expect("checked").into_list() {
                Ok(list) => json::object([("output", &list)]),
                Err(error) => json::object([("error", &Json::from_value(&error.into()))]),
            }
        }
        Outcome::Output(output) => json::object([("output", &output)]),
        // The runner uploads files before it builds the post.
        Outcome::Files(_) | Outcome::Spilled(_) => json::object([(
            "error",
            &Json::from_value(&"the output files were not uploaded".into()),
        )]),
        Outcome::Error { error, output } => {
            let error = Json::from_value(&error.into());
            let mut fields = vec![("error", &error)];
            fields.extend(output.as_ref().map(|output| ("output", output)));
            json::object(fields)
        }
    };
    Some(Post {
        job_id: id.to_owned(),
        kind: PostKind::Final {
            is_stream: result.streamed,
        },
        body,
        refresh_worker: result.refresh_worker,
        upload: None,
        lease: None,
    })
}

fn kept(path: &Option<PathBuf>) -> String {
    match path {
        Some(path) => format!("kept in {}", path.display()),
        None => "not in the spool (it cannot be written)".into(),
    }
}

/// The partials of a job whose final output is their list
/// (`--return-aggregate-stream`), kept up to a byte limit: past it they are
/// let go, and the job fails rather than hold its whole stream in memory.
struct Partials {
    kept: Vec<Json>,
    bytes: usize,
    count: usize,
    limit: usize,
}

impl Partials {
    fn new(limit: usize) -> Partials {
        Partials {
            kept: Vec::new(),
            bytes: 0,
            count: 0,
            limit,
        }
    }

    fn keep(&mut self, id: &str, partial: &Json) {
        let was_over = self.over();
        self.count += 1;
        self.bytes += partial.len() + 1;
        if !self.over() {
            self.kept.push(partial.clone());
        } else if !was_over {
            tracing::warn!(job_id = %id, "the job's stream partials pass {} bytes (--max-output-size), too many for its aggregated output; the job will fail", self.limit);
            self.kept = Vec::new();
        }
    }

    /// Whether the list would be longer than the limit: its length is
    /// `bytes + 1` (a comma between items, brackets around them).
    fn over(&self) -> bool {
        self.bytes >= self.limit
    }

    /// The list, or the error the job ends with.
    fn into_list(self) -> Result<Json, String> {
        if self.over() {
            return Err(format!(
                "the job streamed {} partials of about {} bytes in all, more than the {} byte limit (--max-output-size) of an aggregated output; raise --max-output-size or turn off --return-aggregate-stream",
                self.count, self.bytes, self.limit
            ));
        }
        Ok(json::array(&self.kept))
    }
}
