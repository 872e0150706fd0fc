//! Webhook delivery: the final job object is POSTed to the job's `webhook`
//! URL. Posts wait in the queue's database (written with the final status),
//! so a restart does not lose them; this task sends the due ones apart from
//! the job path, so a slow or dead receiver never holds up the queue. A
//! failed post is tried again with back-off until it is a day old.
//!
//! Receivers are kept apart, so one that hangs or keeps failing delays only
//! its own posts ([`receivers`]): each gets a few posts in flight, and a
//! circuit breaker backs it off on its own. Posts taken from the database
//! for a receiver that cannot take them now are held here briefly (a
//! bounded number) or put back, due later, so the database keeps handing
//! out the posts of healthy receivers. Posts are signed with
//! `--webhook-secret` ([`signature`]).

#[path = "webhook_post.rs"]
mod post;
#[path = "webhook_receivers.rs"]
mod receivers;
#[path = "webhook_signature.rs"]
mod signature;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::post::{deliver, origin, shown, GIVE_UP_AFTER};
use self::receivers::{Health, Receivers, Verdict};
use self::signature::Signer;
use crate::endpoint::queue::{log_failure, now_ms, Queue, QueueEvent, WebhookPost};

pub use self::signature::HEADER as SIGNATURE_HEADER;

/// Posts in flight at once, over all receivers: the task count and the
/// bodies in memory stay bounded whatever the receivers do.
const PARALLEL: usize = 32;
/// Due posts taken from the database at once.
const FETCH: usize = 32;
/// Posts held here waiting for their receiver's turn, in all and per
/// receiver, and for how long at most before they go back to the database
/// (well within the database's 60 s claim on a taken post).
const HOLD: usize = 32;
const HOLD_PER_RECEIVER: usize = 4 * receivers::PER_RECEIVER;
const HOLD_FOR: Duration = Duration::from_secs(20);
/// When a post whose receiver is busy, and that cannot be held, is due
/// again.
const BUSY_AGAIN: Duration = Duration::from_secs(1);
/// Timeouts of one post: a receiver that does not accept the connection
/// soon is as good as down; one that accepts but does not answer holds a
/// slot of its own receiver's for at most `POST_TIMEOUT`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often due posts are looked for when no job ends.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Sends due webhook posts until `stop` is cancelled, signing them with
/// `secret` if there is one.
pub async fn run(queue: Arc<dyn Queue>, secret: Option<Arc<str>>, stop: CancellationToken) {
    let http = match reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
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
    let mut delivery = Delivery {
        queue,
        http,
        signer: secret.as_deref().map(Signer::new),
        receivers: Receivers::default(),
        held: VecDeque::new(),
        posts: JoinSet::new(),
        origins: HashMap::new(),
    };
    loop {
        delivery.reap();
        if delivery.dispatch().await {
            // More are due and a slot is free: look again at once.
            if stop.is_cancelled() {
                break;
            }
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = delivery.posts.join_next_with_id() => delivery.ended(done),
            _ = webhook_due(&mut events) => {}
            _ = tokio::time::sleep(IDLE_CHECK) => {}
        }
    }
    // Posts in flight get their timeout to finish; held ones are due again
    // when the database's claim on them runs out.
    while let Some(done) = delivery.posts.join_next_with_id().await {
        delivery.ended(done);
    }
}

/// The delivery task's state.
struct Delivery {
    queue: Arc<dyn Queue>,
    http: reqwest::Client,
    signer: Option<Signer>,
    receivers: Receivers,
    /// Posts taken whose receiver was busy, oldest first.
    held: VecDeque<Held>,
    /// Every post in flight, reaped before new ones start, so its length
    /// is the number in flight.
    posts: JoinSet<(String, Health)>,
    /// The receiver of each post in flight, by task, should one panic.
    origins: HashMap<tokio::task::Id, String>,
}

struct Held {
    post: WebhookPost,
    origin: String,
    since: Instant,
}

/// Posts taken this round that do not go out now.
#[derive(Default)]
struct PutBack {
    /// Ids put back into the database, by when they are due again.
    due: HashMap<Instant, Vec<i64>>,
    /// Posts a day old whose receiver is backed off: given up.
    expired: Vec<WebhookPost>,
}

impl PutBack {
    fn is_empty(&self) -> bool {
        self.due.is_empty() && self.expired.is_empty()
    }

    /// Puts a post back, due at `at`, unless it is a day old: a post held
    /// back that long (its receiver's circuit open all day) is given up as
    /// a failing one is.
    fn add(&mut self, post: WebhookPost, at: Instant) {
        if now_ms() - post.created_at > GIVE_UP_AFTER.as_millis() as i64 {
            self.expired.push(post);
        } else {
            self.due.entry(at).or_default().push(post.id);
        }
    }

    async fn write(self, queue: &dyn Queue, now: Instant) {
        for (at, ids) in self.due {
            let at = SystemTime::now() + at.saturating_duration_since(now);
            if let Err(e) = queue.webhooks_defer(&ids, at).await {
                // They are due again when the claim on them runs out.
                log_failure("putting back webhook posts", &e);
            }
        }
        for post in self.expired {
            tracing::error!(job_id = %post.job_id, "webhook to {} not delivered for a day (its receiver kept failing); giving up", shown(&post.url));
            if let Err(e) = queue.webhook_done(post.id).await {
                log_failure("giving up a webhook", &e);
            }
        }
    }
}

impl Delivery {
    fn reap(&mut self) {
        while let Some(done) = self.posts.try_join_next_with_id() {
            self.ended(done);
        }
    }

    fn ended(&mut self, done: Result<(tokio::task::Id, (String, Health)), tokio::task::JoinError>) {
        let (id, health) = match done {
            Ok((id, (_, health))) => (id, health),
            Err(e) => (e.id(), Health::Failed),
        };
        if let Some(origin) = self.origins.remove(&id) {
            self.receivers.finished(&origin, health, Instant::now());
        }
    }

    /// Starts the held posts whose receiver is free, then due posts from
    /// the database; answers whether more may be due with a slot free.
    async fn dispatch(&mut self) -> bool {
        let now = Instant::now();
        let mut put_back = PutBack::default();
        for held in std::mem::take(&mut self.held) {
            match self.receivers.verdict(&held.origin, now) {
                Verdict::Start if self.posts.len() < PARALLEL => self.start(held.post, held.origin),
                Verdict::Open(until) => put_back.add(held.post, until),
                _ if now - held.since > HOLD_FOR => put_back.add(held.post, now),
                _ => self.held.push_back(held),
            }
        }
        let mut more = false;
        if self.posts.len() < PARALLEL {
            match self.queue.webhooks_due(FETCH).await {
                Ok(due) => {
                    more = due.len() == FETCH;
                    for post in due {
                        self.sort(post, now, &mut put_back);
                    }
                }
                Err(e) => log_failure("reading due webhooks", &e),
            }
        }
        // Looking again at once makes progress only if this round put
        // posts back (behind the rest) and a slot is free.
        more &= !put_back.is_empty() && self.posts.len() < PARALLEL;
        put_back.write(&*self.queue, now).await;
        more
    }

    /// Starts, holds or puts back a post just taken.
    fn sort(&mut self, post: WebhookPost, now: Instant, put_back: &mut PutBack) {
        let origin = origin(&post.url);
        let verdict = self.receivers.verdict(&origin, now);
        if let Verdict::Open(until) = verdict {
            return put_back.add(post, until);
        }
        if verdict == Verdict::Start && self.posts.len() < PARALLEL {
            return self.start(post, origin);
        }
        let held_here = self.held.iter().filter(|h| h.origin == origin).count();
        if self.held.len() < HOLD && held_here < HOLD_PER_RECEIVER {
            self.held.push_back(Held {
                post,
                origin,
                since: now,
            });
        } else if verdict == Verdict::Busy {
            put_back.add(post, now + BUSY_AGAIN);
        } else {
            put_back.add(post, now);
        }
    }

    fn start(&mut self, post: WebhookPost, origin: String) {
        self.receivers.started(&origin, Instant::now());
        let (queue, http, signer) = (self.queue.clone(), self.http.clone(), self.signer.clone());
        let task_origin = origin.clone();
        let task = self.posts.spawn(async move {
            let health = deliver(&*queue, &http, signer.as_ref(), post).await;
            (task_origin, health)
        });
        self.origins.insert(task.id(), origin);
    }
}

/// Resolves when a webhook post was queued or events were missed; other
/// queue events (a job without a webhook ending, a streaming job's
/// partials) do not send the task to the database.
async fn webhook_due(events: &mut broadcast::Receiver<QueueEvent>) {
    loop {
        match events.recv().await {
            Ok(QueueEvent::WebhookDue) | Err(RecvError::Lagged(_)) => return,
            Ok(_) => {}
            // The queue is gone; the idle check alone remains.
            Err(RecvError::Closed) => std::future::pending().await,
        }
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
            assert!(limit <= FETCH);
            self.asked.fetch_add(1, Ordering::SeqCst);
            Ok(Vec::new())
        }
        async fn webhook_done(&self, _: i64) -> Result<(), QueueError> {
            unreachable!("no post is due")
        }
        async fn webhook_later(&self, _: i64, _: SystemTime) -> Result<(), QueueError> {
            unreachable!("no post is due")
        }
        async fn webhooks_defer(&self, _: &[i64], _: SystemTime) -> Result<(), QueueError> {
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
        async fn list_jobs(
            &self,
            _: &str,
            _: &crate::endpoint::queue::JobFilter,
            _: usize,
        ) -> Result<Vec<crate::endpoint::queue::JobSummary>, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn job_raw(
            &self,
            _: &str,
        ) -> Result<Option<crate::endpoint::queue::JobDetail>, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn active_endpoints(&self, _: usize) -> Result<Vec<String>, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn workers(
            &self,
            _: &str,
        ) -> Result<Vec<crate::endpoint::queue::WorkerRow>, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn purge(&self, _: &str) -> Result<u64, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn health(&self, _: &str) -> Result<Health, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn depth(&self, _: &str) -> Result<crate::endpoint::queue::Depth, QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn ended_since(
            &self,
            _: Option<i64>,
            _: usize,
        ) -> Result<(Vec<crate::endpoint::queue::Ended>, i64), QueueError> {
            unreachable!("not used by webhook delivery")
        }
        async fn take_raw(
            &self,
            _: &str,
            _: &[String],
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
        async fn heartbeat(
            &self,
            _: &crate::endpoint::queue::WorkerInfo,
            _: usize,
            _: usize,
        ) -> Result<(), QueueError> {
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
    async fn due_posts_are_looked_for_when_a_webhook_is_queued_not_on_every_event() {
        let queue = Arc::new(NothingDue {
            events: broadcast::channel(16).0,
            asked: AtomicUsize::new(0),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(queue.clone(), None, stop.clone()));
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
        // A job without a webhook ending: not a reason either.
        for _ in 0..200 {
            queue.events.send(QueueEvent::Finished("j".into())).unwrap();
            tokio::task::yield_now().await;
        }
        settle(10).await;
        assert_eq!(
            asked(),
            1,
            "ends without a webhook sent the task to the database"
        );
        queue.events.send(QueueEvent::WebhookDue).unwrap();
        settle(10).await;
        assert_eq!(asked(), 2, "a queued webhook post is a reason to look");
        settle(IDLE_CHECK.as_millis() as u64).await;
        assert_eq!(asked(), 3, "and so is the idle check");
        stop.cancel();
        task.await.unwrap();
    }
}
