//! Webhook delivery: the final job object is POSTed to the job's `webhook`
//! URL. Posts wait in the queue's database (written with the final status),
//! so a restart does not lose them; this task sends the due ones a few at a
//! time, apart from the job path, so a slow or dead receiver never holds up
//! the queue. A failed post is tried again with back-off until it is a day
//! old.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::BackoffPolicy;
use crate::queue::{now_ms, Queue, QueueEvent, WebhookPost};

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
    let room = Arc::new(Semaphore::new(PARALLEL));
    let mut posts = JoinSet::new();
    loop {
        let free = room.available_permits();
        if free > 0 {
            match queue.webhooks_due(free).await {
                Ok(due) => {
                    for post in due {
                        let permit = room.clone().acquire_owned().await.expect("never closed");
                        let (queue, http) = (queue.clone(), http.clone());
                        posts.spawn(async move {
                            deliver(&*queue, &http, post).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => crate::queue::log_failure("reading due webhooks", &e),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = posts.join_next() => {}
            event = events.recv() => if !matches!(event, Ok(QueueEvent::Finished(_)) | Err(_)) { continue },
            _ = tokio::time::sleep(IDLE_CHECK) => {}
        }
    }
    // Posts in flight get their timeout to finish; the rest stay queued.
    while posts.join_next().await.is_some() {}
}

async fn deliver(queue: &dyn Queue, http: &reqwest::Client, post: WebhookPost) {
    let outcome = match http.post(&post.url).json(&post.body).send().await {
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
            tracing::error!(job_id = %id, "webhook to {} failed ({why}) for a day; giving up", post.url);
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
