//! Webhook delivery: the final job object is POSTed to the job's `webhook`
//! URL. Posts wait in the queue's database (written with the final status),
//! so a restart does not lose them; this task sends the due ones a few at a
//! time, apart from the job path, so a slow or dead receiver never holds up
//! the queue. A failed post is tried again with back-off until it is a day
//! old.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::BackoffPolicy;
use crate::endpoint::queue::{now_ms, Queue, QueueEvent, WebhookPost};

/// Delays between tries of one post.
const RETRY: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(500), Duration::from_secs(600), 0.2);
/// A post not delivered after this long is given up, with an error logged.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Posts in flight at once.
const PARALLEL: usize = 8;
/// Timeout of one post.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often due posts are looked for when no job ends.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Sends due webhook posts until `stop` is cancelled.
pub async fn run(queue: Arc<dyn Queue>, stop: CancellationToken) {
    let http = match reqwest::Client::builder()
        .timeout(POST_TIMEOUT)
        .user_agent(concat!("jobpipe/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            tracing::error!("cannot build the webhook HTTP client ({e}); webhooks stay queued");
            return;
        }
    };
    let mut events = queue.subscribe();
    // Every post runs in `posts`, reaped before new ones are spawned, so
    // its length is the number in flight: never more than PARALLEL tasks,
    // each holding one post, whatever the receivers do.
    let mut posts = JoinSet::new();
    loop {
        while posts.try_join_next().is_some() {}
        let free = PARALLEL - posts.len();
        if free > 0 {
            match queue.webhooks_due(free).await {
                Ok(due) => {
                    for post in due.into_iter().take(free) {
                        let (queue, http) = (queue.clone(), http.clone());
                        posts.spawn(async move { deliver(&*queue, &http, post).await });
                    }
                }
                Err(e) => crate::endpoint::queue::log_failure("reading due webhooks", &e),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = posts.join_next() => {}
            _ = job_finished(&mut events) => {}
            _ = tokio::time::sleep(IDLE_CHECK) => {}
        }
    }
    // Posts in flight get their timeout to finish; the rest stay queued.
    while posts.join_next().await.is_some() {}
}

/// Resolves when a job ends (its webhook may be due now) or events were
/// missed; other queue events, such as a streaming job's partials, do not
/// send the task to the database.
async fn job_finished(events: &mut broadcast::Receiver<QueueEvent>) {
    loop {
        match events.recv().await {
            Ok(QueueEvent::Finished(_)) | Err(RecvError::Lagged(_)) => return,
            Ok(_) => {}
            // The queue is gone; the idle check alone remains.
            Err(RecvError::Closed) => std::future::pending().await,
        }
    }
}

async fn deliver(queue: &dyn Queue, http: &reqwest::Client, post: WebhookPost) {
    // The body as it was written with the final status: the handler's
    // output exactly as it wrote it.
    let body = reqwest::Body::from(post.body.clone().into_bytes());
    let sent = http
        .post(&post.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let outcome = match sent {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("HTTP {}", response.status().as_u16())),
        Err(e) => Err(e.without_url().to_string()),
    };
    let id = &post.job_id;
    let recorded = match outcome {
        Ok(()) => {
            tracing::debug!(job_id = %id, "webhook delivered");
            queue.webhook_done(post.id).await
        }
        Err(why) if now_ms() - post.created_at > GIVE_UP_AFTER.as_millis() as i64 => {
            tracing::error!(job_id = %id, "webhook to {} failed ({why}) for a day; giving up", shown(&post.url));
            queue.webhook_done(post.id).await
        }
        Err(why) => {
            let delay = RETRY
                .iter()
                .nth(post.attempts as usize)
                .unwrap_or(RETRY.max);
            tracing::warn!(job_id = %id, "webhook post failed ({why}); retrying in {}ms", delay.as_millis());
            queue
                .webhook_later(post.id, SystemTime::now() + delay)
                .await
        }
    };
    if let Err(e) = recorded {
        tracing::warn!(job_id = %id, "cannot record the webhook's delivery: {e}");
    }
}

/// A webhook URL as logs show it: its origin alone, since the path or
/// query of many webhook URLs is their secret.
fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(url) => format!("{}/…", url.origin().ascii_serialization()),
        Err(_) => "an invalid URL".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::endpoint::queue::{
        Ending, Health, JobRecord, JobStatus, Lease, NewJob, QueueError, RetryOutcome, Swept,
    };
    use crate::json::Json;

    /// A queue with no webhook ever due, counting how often it is asked.
    struct NothingDue {
        events: broadcast::Sender<QueueEvent>,
        asked: AtomicUsize,
    }

    #[async_trait]
    impl Queue for NothingDue {
        fn subscribe(&self) -> broadcast::Receiver<QueueEvent> {
            self.events.subscribe()
        }
        async fn webhooks_due(&self, limit: usize) -> Result<Vec<WebhookPost>, QueueError> {
            assert!(limit <= PARALLEL);
            self.asked.fetch_add(1, Ordering::SeqCst);
            Ok(Vec::new())
        }
        async fn webhook_done(&self, _: i64) -> Result<(), QueueError> {
            unreachable!("no post is due")
        }
        async fn webhook_later(&self, _: i64, _: SystemTime) -> Result<(), QueueError> {
            unreachable!("no post is due")
        }
        async fn enqueue_raw(&self, _: NewJob<Json>) -> Result<(), QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn status_raw(&self, _: &str) -> Result<Option<JobRecord<Json>>, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn read_stream_raw(
            &self,
            _: &str,
        ) -> Result<Option<(JobStatus, Vec<Json>)>, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn cancel(&self, _: &str) -> Result<Option<JobStatus>, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn retry(&self, _: &str) -> Result<RetryOutcome, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn purge(&self) -> Result<u64, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn health(&self) -> Result<Health, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn take_raw(
            &self,
            _: &str,
            _: usize,
            _: Duration,
        ) -> Result<Vec<Lease<Json>>, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn renew(
            &self,
            _: &[(String, String)],
            _: Duration,
        ) -> Result<Vec<String>, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn progress_raw(&self, _: &str, _: &str, _: Json) -> Result<bool, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn stream_raw(&self, _: &str, _: &str, _: Json) -> Result<bool, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn finish_raw(&self, _: &str, _: &str, _: Ending<Json>) -> Result<bool, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn heartbeat(&self, _: &str, _: usize, _: usize) -> Result<(), QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn sweep(&self) -> Result<Swept, QueueError> {
            unreachable!("not used by webhook delivery")
        }
    }

    #[test]
    fn logs_show_a_webhook_url_without_its_secret_parts() {
        let url = "https://user:pw@hooks.example.com:8443/services/T0/B0/s3cr3t?token=abc";
        let text = shown(url);
        assert_eq!(text, "https://hooks.example.com:8443/…");
        assert!(!text.contains("s3cr3t") && !text.contains("abc") && !text.contains("pw"));
    }

    #[tokio::test(start_paused = true)]
    async fn due_posts_are_looked_for_when_a_job_ends_not_on_every_event() {
        let queue = Arc::new(NothingDue {
            events: broadcast::channel(16).0,
            asked: AtomicUsize::new(0),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(queue.clone(), stop.clone()));
        let asked = || queue.asked.load(Ordering::SeqCst);
        // Paused, the clock moves only once every task waits.
        let settle = |ms| tokio::time::sleep(Duration::from_millis(ms));
        settle(10).await;
        assert_eq!(asked(), 1, "looked once at start");
        // A streaming job's partials: not a reason to look.
        for _ in 0..200 {
            queue.events.send(QueueEvent::Streamed("s".into())).unwrap();
            tokio::task::yield_now().await;
        }
        settle(10).await;
        assert_eq!(asked(), 1, "partials sent the task to the database");
        queue.events.send(QueueEvent::Finished("j".into())).unwrap();
        settle(10).await;
        assert_eq!(asked(), 2, "a job's end is a reason to look");
        settle(IDLE_CHECK.as_millis() as u64).await;
        assert_eq!(asked(), 3, "and so is the idle check");
        stop.cancel();
        task.await.unwrap();
    }
}
