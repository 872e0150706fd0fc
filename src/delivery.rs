//! Posting results with retries, and the spool that keeps what could not be
//! posted before shutdown.
//!
//! The guarantee is at-least-once delivery of every final result: a post is
//! retried with capped, jittered back-off for as long as the worker runs (a
//! transient fault never drops a result), and a result whose first post
//! fails is written to the spool at once, from which this run or the next
//! start delivers it (see [`crate::runner`]). A result the platform refuses
//! outright (a 4xx other than 401, 403, 408 and 429) is not retried:
//! retrying cannot change the answer; it is logged as an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::backoff::BackoffPolicy;
use crate::error::FatalError;
use crate::json::Json;
use crate::metrics::Metrics;
use crate::objects::pending::PendingUpload;
use crate::text::clip_middle;

/// Where a source's results go: its transport for one post. The runner
/// decides what is posted, when, how often it is retried and what is kept
/// in the spool; the sink sends one attempt and says how it went.
///
/// Bodies are source-neutral: a final result is `{"output": ..}` or
/// `{"error": "..", "output"?: ..}` (with [`Post::refresh_worker`] beside
/// it), a progress or stream update is the handler's value itself. A sink
/// wraps them in whatever its destination expects. The job id has passed
/// [`crate::runner::check_id`]'s rules for a path segment, but may still be one the job
/// is failed for (not a valid header value, say).
pub trait ResultSink: Send + Sync + 'static {
    fn send(&self, post: &Post) -> impl std::future::Future<Output = Attempt> + Send;

    /// Adds to a post about to be spooled what a later run needs to send
    /// it (a queue's lease token, [`Post::lease`]).
    fn stamp(&self, _post: &mut Post) {}
}

/// Where results wait when they cannot be delivered, and how many may.
#[derive(clap::Args)]
pub struct DeliveryArgs {
    /// Where results that could not be delivered by shutdown are kept until
    /// the next start.
    #[arg(
        long,
        env = "JOBPIPE_SPOOL_DIR",
        default_value = "/var/tmp/jobpipe/spool"
    )]
    pub spool_dir: PathBuf,

    /// How many results may await delivery (retried in memory and kept in
    /// the spool) before jobpipe stops taking jobs until delivery resumes.
    #[arg(
        long,
        env = "JOBPIPE_MAX_UNDELIVERED",
        default_value = "16",
        value_name = "N"
    )]
    pub max_undelivered: std::num::NonZeroUsize,
}

/// How long a temporary spool file must be untouched before a start
/// removes it as left by an interrupted write.
const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Delays between attempts of one post.
pub const POST_BACKOFF: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(200), Duration::from_secs(10), 0.3);

/// One HTTP post of a result or an update.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Post {
    pub job_id: String,
    pub kind: PostKind,
    /// The JSON body (see [`ResultSink`] for its shape).
    pub body: Json,
    /// The job asked for a fresh worker after it (final results only).
    #[serde(default)]
    pub refresh_worker: bool,
    /// Objects still to upload before the body is known (a final result
    /// whose upload waits for the store; see [`crate::objects::pending`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<PendingUpload>,
    /// The lease token the job was held under, for a result kept in the
    /// spool: the next start sends it with that token (see
    /// [`ResultSink::stamp`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

impl Post {
    /// A final result that did not stream.
    pub fn final_result(job_id: String, body: Json) -> Post {
        Post {
            job_id,
            kind: PostKind::Final { is_stream: false },
            body,
            refresh_worker: false,
            upload: None,
            lease: None,
        }
    }
}

/// Which endpoint a post goes to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum PostKind {
    /// The final result on job-done, with `isStream`.
    Final { is_stream: bool },
    /// A progress update on job-done.
    Progress,
    /// A partial on job-stream.
    Stream,
}

/// What one attempt of a post came to.
#[derive(Debug)]
pub enum Attempt {
    Delivered,
    /// Worth trying again: network error, 5xx, 429, 408, 401/403.
    Retry(String),
    /// The platform refused this post; trying again cannot help.
    Refused(String),
}

/// How a delivery ended.
#[derive(Debug, PartialEq)]
pub enum Delivery {
    Delivered,
    Refused,
    /// The flush token fired first; the post was not delivered.
    Flushed,
}

/// Posts until delivered, refused, or `flush` is cancelled. Each failed
/// attempt is logged at WARN with the next delay.
pub async fn deliver<S: ResultSink>(
    sender: &S,
    post: &Post,
    flush: &CancellationToken,
    metrics: &Metrics,
) -> Delivery {
    let kind = post.kind.name();
    let delivery = attempts(sender, post, flush, metrics).await;
    let outcome = match delivery {
        Delivery::Delivered => "delivered",
        Delivery::Refused => "refused",
        Delivery::Flushed => "flushed",
    };
    metrics.post_ended(kind, outcome);
    delivery
}

async fn attempts<S: ResultSink>(
    sender: &S,
    post: &Post,
    flush: &CancellationToken,
    metrics: &Metrics,
) -> Delivery {
    let mut delays = POST_BACKOFF.iter();
    let mut attempt = 1u32;
    loop {
        let outcome = tokio::select! {
            outcome = sender.send(post) => outcome,
            _ = flush.cancelled() => return Delivery::Flushed,
        };
        let why = match outcome {
            Attempt::Delivered => return Delivery::Delivered,
            Attempt::Refused(why) => {
                tracing::error!(job_id = %post.job_id, "the platform refused the {} post: {why}; it is not retried", post.kind.name());
                return Delivery::Refused;
            }
            Attempt::Retry(why) => why,
        };
        let delay = delays.next().unwrap_or_default();
        tracing::warn!(
            job_id = %post.job_id,
            "{} post failed (attempt {attempt}): {why}; retrying in {}ms",
            post.kind.name(),
            delay.as_millis()
        );
        attempt += 1;
        metrics.post_retried(post.kind.name());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = flush.cancelled() => return Delivery::Flushed,
        }
    }
}

impl PostKind {
    pub fn name(self) -> &'static str {
        match self {
            PostKind::Final { .. } => "result",
            PostKind::Progress => "progress",
            PostKind::Stream => "stream",
        }
    }
}

/// Sorts an HTTP answer into an [`Attempt`].
pub fn judge(status: u16, body: &str) -> Attempt {
    match status {
        200..=299 => Attempt::Delivered,
        401 | 403 | 408 | 429 | 500..=599 => Attempt::Retry(format!("HTTP {status}")),
        _ => Attempt::Refused(format!("HTTP {status}: {}", clip_middle(body, 300))),
    }
}

/// Results kept on disk across a restart, one JSON file each.
///
/// A file is written whole or not at all (a temporary file, fsynced, then
/// renamed, then the directory fsynced), so a crash at any moment leaves
/// either the result or nothing plus a temporary file that the next start
/// removes. Names are made of the time, a random part and a sanitised
/// prefix of the job id: they cannot collide and cannot leave the
/// directory, whatever the id.
#[derive(Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// A result found in the spool.
pub struct Spooled {
    pub path: PathBuf,
    pub post: Post,
}

impl Spool {
    /// Opens (creating) the spool directory, removes temporary files a
    /// crash left behind, and checks that a result can be written there.
    pub fn open(dir: &Path) -> Result<Spool, FatalError> {
        let fail = |source| FatalError::Spool {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(fail)?;
        let spool = Spool {
            dir: dir.to_owned(),
        };
        spool.remove_leftovers();
        let probe = dir.join(format!(".probe-{}.tmp", std::process::id()));
        write_durably(&probe, b"probe").map_err(fail)?;
        std::fs::remove_file(&probe).map_err(fail)?;
        Ok(spool)
    }

    fn remove_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            let temporary = path.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with('.') && n.ends_with(".tmp")
            });
            // Another worker on this machine may share the directory and be
            // writing right now: only a file left alone for a while is a
            // leftover.
            let abandoned = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= LEFTOVER_AGE));
            if temporary && abandoned {
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::info!(
                        "removed {} left in the spool by an interrupted write",
                        path.display()
                    ),
                    Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
                }
            }
        }
    }

    /// Writes a result to the spool, durably; blocking (call it off the
    /// runtime's threads).
    pub fn keep(&self, post: &Post) -> std::io::Result<PathBuf> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let safe: String = post
            .job_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let unique = uuid::Uuid::new_v4().simple();
        let name = format!("{nanos:020}-{unique}-{safe}.json");
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let text = serde_json::to_vec(post).expect("a post serialises");
        if let Err(e) = write_durably(&tmp, &text) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }

    /// Every spooled result, oldest first. Unreadable files are logged and
    /// left in place for a person to look at.
    pub fn pending(&self) -> Vec<Spooled> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        paths
            .into_iter()
            .filter_map(|path| {
                let parsed = std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| {
                        serde_json::from_slice::<Post>(&bytes).map_err(|e| e.to_string())
                    });
                match parsed {
                    Ok(post) => Some(Spooled { path, post }),
                    Err(e) => {
                        tracing::error!(
                            "spooled result {} cannot be read ({e}); left in place",
                            path.display()
                        );
                        None
                    }
                }
            })
            .collect()
    }

    /// The job ids of the results kept in the spool at `dir`; blocking.
    /// Files that cannot be read are left to [`Spool::pending`] to report.
    pub fn job_ids(dir: &Path) -> Vec<String> {
        #[derive(Deserialize)]
        struct Named {
            job_id: String,
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter_map(|path| std::fs::read(path).ok())
            .filter_map(|bytes| serde_json::from_slice::<Named>(&bytes).ok())
            .map(|named| named.job_id)
            .collect()
    }

    /// Removes a spooled result once delivered; blocking.
    pub fn forget(&self, path: &Path) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(
                "cannot remove delivered result {} from the spool: {e}",
                path.display()
            );
        }
    }
}

/// Writes a new file and fsyncs it.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Fails a set number of times, then delivers.
    struct Flaky {
        failures: usize,
        calls: Arc<AtomicUsize>,
    }

    impl ResultSink for Flaky {
        async fn send(&self, _: &Post) -> Attempt {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.failures {
                Attempt::Retry("HTTP 503".into())
            } else {
                Attempt::Delivered
            }
        }
    }

    fn post() -> Post {
        Post::final_result("job/1".into(), serde_json::json!({"output": 1}).into())
    }

    #[tokio::test(start_paused = true)]
    async fn retries_far_beyond_three_attempts() {
        let calls = Arc::new(AtomicUsize::new(0));
        let sender = Flaky {
            failures: 20,
            calls: calls.clone(),
        };
        let metrics = Metrics::new();
        let outcome = deliver(&sender, &post(), &CancellationToken::new(), &metrics).await;
        assert_eq!(outcome, Delivery::Delivered);
        assert_eq!(calls.load(Ordering::SeqCst), 21);
        let text = metrics.render();
        assert!(
            text.contains("jobpipe_result_post_retries_total{kind=\"result\"} 20"),
            "{text}"
        );
        assert!(
            text.contains("jobpipe_result_posts_total{kind=\"result\",outcome=\"delivered\"} 1"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn flush_ends_the_retries() {
        let sender = Flaky {
            failures: usize::MAX,
            calls: Arc::new(AtomicUsize::new(0)),
        };
        let flush = CancellationToken::new();
        let trigger = flush.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            trigger.cancel();
        });
        let metrics = Metrics::new();
        assert_eq!(
            deliver(&sender, &post(), &flush, &metrics).await,
            Delivery::Flushed
        );
    }

    #[test]
    fn statuses_are_sorted() {
        assert!(matches!(judge(200, ""), Attempt::Delivered));
        for status in [401, 403, 408, 429, 500, 503] {
            assert!(matches!(judge(status, ""), Attempt::Retry(_)), "{status}");
        }
        assert!(matches!(judge(404, "gone"), Attempt::Refused(why) if why.contains("gone")));
    }

    #[test]
    fn spool_keeps_results_in_order_and_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        let first = spool.keep(&post()).unwrap();
        let mut second_post = post();
        second_post.job_id = "job-2".into();
        spool.keep(&second_post).unwrap();
        let pending = spool.pending();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].post, post());
        assert_eq!(pending[1].post.job_id, "job-2");
        spool.forget(&first);
        assert_eq!(spool.pending().len(), 1);
    }

    #[test]
    fn spool_names_never_collide_or_leave_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut paths = std::collections::HashSet::new();
        for id in ["../../etc/x", "a/b", "a_b", "a_b", ".."] {
            let mut p = post();
            p.job_id = id.into();
            let path = spool.keep(&p).unwrap();
            assert_eq!(path.parent(), Some(dir.path()));
            assert!(paths.insert(path));
        }
        assert_eq!(spool.pending().len(), 5);
    }

    #[test]
    fn leftover_temporary_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(".123-x.json.tmp");
        std::fs::write(&old, b"{").unwrap();
        let two_minutes_ago = std::time::SystemTime::now() - Duration::from_secs(120);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_minutes_ago)
            .unwrap();
        // Another worker sharing the directory is writing this one now.
        let fresh = dir.path().join(".456-y.json.tmp");
        std::fs::write(&fresh, b"{").unwrap();
        Spool::open(dir.path()).unwrap();
        assert!(!old.exists(), "an abandoned temporary file is removed");
        assert!(fresh.exists(), "a file being written now is left alone");
    }
}
