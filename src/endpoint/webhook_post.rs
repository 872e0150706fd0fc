//! One webhook post: sent with its signature, its outcome recorded in the
//! queue (delivered, tried again later with back-off, or given up after a
//! day), and how its receiver did told to the delivery loop for the
//! receiver's circuit breaker. Apart from the loop so each reads on its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::receivers::Health;
use super::signature::{self, Signer};
use crate::backoff::BackoffPolicy;
use crate::endpoint::queue::{now_ms, Queue, WebhookPost};

/// Delays between tries of one post.
const RETRY: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(500), Duration::from_secs(600), 0.2);
/// A post not delivered after this long is given up, with an error logged.
pub(super) const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Sends one post and records how it went; answers how the receiver did.
pub(super) async fn deliver(
    queue: &dyn Queue,
    http: &reqwest::Client,
    signer: Option<&Signer>,
    post: WebhookPost,
) -> Health {
    // The body as it was written with the final status (the handler's
    // output exactly as it wrote it), signed and sent as these very bytes.
    let body = post.body.clone().into_bytes();
    let mut request = http
        .post(&post.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(signer) = signer {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        request = request.header(signature::HEADER, signer.header(&body, unix));
    }
    let (outcome, health) = match request.body(body).send().await {
        Ok(response) if response.status().is_success() => (Ok(()), Health::Answered),
        Ok(response) => {
            let status = response.status().as_u16();
            let health = match status {
                408 | 429 | 500.. => Health::Failed,
                _ => Health::Answered,
            };
            (Err(PostError::Status(status)), health)
        }
        Err(e) => (Err(PostError::Send(e.without_url())), Health::Failed),
    };
    record(queue, &post, outcome).await;
    health
}

/// Why one webhook post failed, as the retry and give-up lines say it.
#[derive(Debug, thiserror::Error)]
enum PostError {
    /// The receiver answered, but not with a 2xx.
    #[error("HTTP {0}")]
    Status(u16),
    /// No answer (connection, TLS, timeout); the error without its URL,
    /// whose path or query may be the webhook's secret.
    #[error("{0}")]
    Send(#[source] reqwest::Error),
}

async fn record(queue: &dyn Queue, post: &WebhookPost, outcome: Result<(), PostError>) {
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
            tracing::warn!(job_id = %id, "webhook post to {} failed ({why}); retrying in {}ms", shown(&post.url), delay.as_millis());
            queue
                .webhook_later(post.id, SystemTime::now() + delay)
                .await
        }
    };
    if let Err(e) = recorded {
        tracing::warn!(job_id = %id, "cannot record the webhook's delivery: {e}");
    }
}

/// A webhook URL's receiver: its origin (scheme, host and port).
pub(super) fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(url) => url.origin().ascii_serialization(),
        // Refused when the job was submitted; kept apart all the same.
        Err(_) => "invalid".to_owned(),
    }
}

/// A webhook URL as logs show it: its origin alone, since the path or
/// query of many webhook URLs is their secret.
pub(super) fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(url) => format!("{}/…", url.origin().ascii_serialization()),
        Err(_) => "an invalid URL".to_owned(),
    }
}
