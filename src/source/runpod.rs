//! RunPod serverless: take jobs, return results, stream, heartbeat and
//! per-job stop, speaking the worker protocol of RunPod's queue.
//!
//! This module is RunPod's transport alone: the take loop, the heartbeat
//! ([`ping_loop`]), the job-stop long poll ([`stop_loop`]) and one attempt
//! of a post ([`Endpoint`] as a [`ResultSink`]). What happens to a job
//! between take and delivered result is [`crate::runner`]'s.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::SourceContext;
use crate::backoff::{BackoffPolicy, PollPace};
use crate::config::RunpodConfig;
use crate::delivery::{self, Attempt, Post, PostKind};
use crate::error::{exit, FatalError};
use crate::handler::lines::clip_middle;
use crate::pool::Pool;
use crate::runner::{ResultSink, Runner, RunnerOptions};

/// Delays between failed takes (network errors, 5xx).
const TAKE_BACKOFF: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(500), Duration::from_secs(30), 0.5);
/// How long RunPod may hold a take or stop poll open.
const LONG_POLL: Duration = Duration::from_secs(90);
/// How long a take already in flight at shutdown may still answer: enough
/// for an answer already on the wire, short enough that a shutdown still
/// ends an idle long poll at once.
const TAKE_GRACE: Duration = Duration::from_millis(250);
/// The wait after a 429 answer.
const RATE_LIMIT_WAIT: Duration = Duration::from_secs(5);
/// A take or job-stop poll answered with nothing faster than this did not
/// long-poll; the next waits a little, so an endpoint that answers at once
/// is not hammered.
const POLL_PACE: PollPace = PollPace::new(Duration::from_millis(500), Duration::from_millis(200));
/// Timeout of one result post.
const POST_TIMEOUT: Duration = Duration::from_secs(30);

/// The RunPod worker endpoints, with the key and this worker's id filled in.
pub struct Endpoint {
    config: RunpodConfig,
    worker_id: String,
    /// The job-take-batch and job-stop URL templates, derived from the take
    /// URL; `None` when it has no `/job-take/` to replace.
    batch_url: Option<String>,
    stop_url: Option<String>,
    /// For takes and posts.
    http: reqwest::Client,
    /// For pings alone, so a busy connection pool never delays a heartbeat.
    ping_http: reqwest::Client,
}

/// What a take came to.
enum Take {
    Jobs(Vec<Value>),
    /// 204 or 400: nothing to do now.
    Empty,
    RateLimited,
    KeyRejected(u16),
    Failed(String),
}

impl Endpoint {
    fn new(config: RunpodConfig, worker_id: String) -> Result<Endpoint, FatalError> {
        let build = |timeout: Duration| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(timeout)
                .user_agent(concat!("jobpipe/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| FatalError::Internal(format!("cannot build the HTTP client: {e}")))
        };
        let derived = |to: &str| {
            config
                .take_url
                .contains("/job-take/")
                .then(|| config.take_url.replacen("/job-take/", to, 1))
        };
        let (batch_url, stop_url) = (derived("/job-take-batch/"), derived("/job-stop/"));
        if stop_url.is_none() {
            tracing::warn!(
                "the take URL has no /job-take/ to derive the job-stop and batch URLs from; jobs are taken one at a time and RunPod cannot stop single jobs on this worker"
            );
        }
        Ok(Endpoint {
            batch_url,
            stop_url,
            http: build(LONG_POLL + Duration::from_secs(10))?,
            ping_http: build(config.ping_interval.max(Duration::from_secs(1)))?,
            config,
            worker_id,
        })
    }

    /// A take, ping or stop URL: both `$RUNPOD_POD_ID` and `$ID` mean the worker.
    fn worker_url(&self, template: &str) -> String {
        template
            .replace("$RUNPOD_POD_ID", &self.worker_id)
            .replace("$ID", &self.worker_id)
    }

    /// A done or stream URL: `$RUNPOD_POD_ID` is the worker, `$ID` the job.
    fn job_url(&self, template: &str, job_id: &str) -> String {
        template
            .replace("$RUNPOD_POD_ID", &self.worker_id)
            .replace("$ID", &encode(job_id))
    }

    /// A GET with the worker's key, which RunPod takes verbatim (no `Bearer`).
    async fn get(&self, client: &reqwest::Client, url: &str) -> reqwest::Result<reqwest::Response> {
        client
            .get(url)
            .header("Authorization", &self.config.api_key)
            .send()
            .await
    }

    async fn take(&self, count: usize, in_progress: bool) -> Take {
        let flag = u8::from(in_progress);
        let url = match &self.batch_url {
            Some(batch) if count > 1 => with_query(
                &self.worker_url(batch),
                &format!("batch_size={count}&job_in_progress={flag}"),
            ),
            _ => with_query(
                &self.worker_url(&self.config.take_url),
                &format!("job_in_progress={flag}"),
            ),
        };
        let response = match self.get(&self.http, &url).await {
            Ok(response) => response,
            Err(e) => return Take::Failed(describe(e)),
        };
        let status = response.status().as_u16();
        match status {
            204 | 400 => return Take::Empty,
            429 => return Take::RateLimited,
            401 | 403 => return Take::KeyRejected(status),
            200 => {}
            _ => return Take::Failed(format!("HTTP {status}")),
        }
        let text = match response.text().await {
            Ok(text) => text,
            Err(e) => return Take::Failed(format!("reading the job failed: {}", describe(e))),
        };
        if text.trim().is_empty() {
            return Take::Empty;
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Array(jobs)) if jobs.is_empty() => Take::Empty,
            Ok(Value::Array(jobs)) => Take::Jobs(jobs),
            Ok(Value::Null) => Take::Empty,
            Ok(job) => Take::Jobs(vec![job]),
            Err(e) => Take::Failed(format!(
                "RunPod sent a job that is not JSON ({e}): {}",
                clip_middle(&text, 500)
            )),
        }
    }

    async fn ping(&self, ids: &[String]) -> Result<(), String> {
        let Some(template) = &self.config.ping_url else {
            return Ok(());
        };
        let url = with_query(
            &self.worker_url(template),
            &format!(
                "job_id={}&runpod_version={}",
                encode(&ids.join(",")),
                crate::VERSION
            ),
        );
        let response = self.get(&self.ping_http, &url).await.map_err(describe)?;
        match response.status().as_u16() {
            200..=299 => Ok(()),
            status => Err(format!("HTTP {status}")),
        }
    }

    /// One job-stop long poll: the ids to stop.
    async fn stop_poll(&self, template: &str) -> Result<Vec<String>, String> {
        let url = self.worker_url(template);
        let response = self.get(&self.http, &url).await.map_err(describe)?;
        match response.status().as_u16() {
            204 => Ok(Vec::new()),
            200 => {
                let body: Value = response.json().await.map_err(describe)?;
                Ok(body["jobsToStop"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|id| id.as_str().map(str::to_owned))
                    .collect())
            }
            status => Err(format!("HTTP {status}")),
        }
    }
}

impl ResultSink for Endpoint {
    async fn send(&self, post: &Post) -> Attempt {
        let (template, query) = match post.kind {
            PostKind::Final { is_stream } => {
                (&self.config.done_url, format!("isStream={is_stream}"))
            }
            PostKind::Progress => (&self.config.done_url, "isStream=false".to_owned()),
            PostKind::Stream => (&self.config.stream_url, "isStream=false".to_owned()),
        };
        let body = runpod_body(post);
        let url = with_query(&self.job_url(template, &post.job_id), &query);
        let mut request = self
            .http
            .post(&url)
            .timeout(POST_TIMEOUT)
            .header("Authorization", &self.config.api_key)
            .header("Content-Type", "application/json")
            .body(body.to_string());
        // A job whose id is no header value is failed for it (see
        // runner::check_id); its error is still posted, by URL alone.
        if let Ok(id) = reqwest::header::HeaderValue::from_str(&post.job_id) {
            request = request.header("X-Request-ID", id);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                delivery::judge(status, &body)
            }
            // A request that cannot even be built fails the same way each time.
            Err(e) if e.is_builder() => Attempt::Refused(describe(e)),
            Err(e) => Attempt::Retry(describe(e)),
        }
    }
}

/// Runs the RunPod worker until shutdown; returns the exit code.
pub async fn run(config: RunpodConfig, ctx: SourceContext) -> Result<u8, FatalError> {
    let options = RunnerOptions {
        source_name: "RunPod",
        aggregate_stream: config.return_aggregate_stream,
        spool_dir: config.spool_dir.clone(),
        input_schema: config.input_schema.clone(),
        max_undelivered: config.max_undelivered,
    };
    let endpoint = Arc::new(Endpoint::new(config, ctx.identity.worker_id.clone())?);
    let runner = Arc::new(Runner::start(endpoint.clone(), &ctx, options).await?);
    tracing::info!(worker_id = %ctx.identity.worker_id, "RunPod worker started with {} slots", ctx.pool.capacity());
    let background = TaskTracker::new();
    let heartbeat = background.spawn(ping_loop(endpoint.clone(), runner.clone()));
    let stops = background.spawn(stop_loop(endpoint.clone(), ctx.pool.clone()));
    take_loop(&endpoint, &runner, &ctx).await;
    tracing::info!(
        "no longer taking jobs; waiting for {} jobs and their results",
        ctx.pool.in_flight()
    );
    stops.abort();
    runner.finish().await;
    heartbeat.abort();
    Ok(exit::OK)
}

async fn take_loop(endpoint: &Arc<Endpoint>, runner: &Runner<Endpoint>, ctx: &SourceContext) {
    let take = &ctx.shutdown.take;
    let mut delays = TAKE_BACKOFF.iter();
    loop {
        let Some(mut slots) = runner.slots().await else {
            return;
        };
        let started = Instant::now();
        let call = endpoint.take(slots.len(), ctx.pool.in_flight() > 0);
        tokio::pin!(call);
        let answer = tokio::select! {
            answer = &mut call => answer,
            _ = take.cancelled() => {
                // RunPod may be handing out a job at this very moment; the
                // take in flight gets a moment to answer so that job is not
                // lost with the connection.
                match tokio::time::timeout(TAKE_GRACE, &mut call).await {
                    Ok(answer) => answer,
                    Err(_) => return,
                }
            }
        };
        let pause = match answer {
            Take::Jobs(values) => {
                delays.reset();
                for value in values {
                    let slot = match slots.pop() {
                        Some(slot) => slot,
                        // More jobs than asked for: wait for room rather than drop one.
                        None => ctx.pool.free_slots().await.swap_remove(0),
                    };
                    runner.start_job(value, slot);
                }
                None
            }
            Take::Empty => POLL_PACE.after(started),
            Take::RateLimited => {
                tracing::warn!(
                    "RunPod answered 429 (too many requests); waiting {}s",
                    RATE_LIMIT_WAIT.as_secs()
                );
                Some(RATE_LIMIT_WAIT)
            }
            Take::KeyRejected(status) => {
                let _ = ctx.fatal.send(FatalError::KeyRejected { status });
                return;
            }
            Take::Failed(why) => {
                let delay = delays.next().unwrap_or_default();
                tracing::warn!(
                    "taking a job failed: {why}; retrying in {}ms",
                    delay.as_millis()
                );
                Some(delay)
            }
        };
        drop(slots);
        if let Some(pause) = pause {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = take.cancelled() => return,
            }
        }
    }
}

/// Sends the heartbeat with the ids this worker holds, on its own schedule.
async fn ping_loop(endpoint: Arc<Endpoint>, runner: Arc<Runner<Endpoint>>) {
    if endpoint.config.ping_url.is_none() {
        return;
    }
    let mut ticks = tokio::time::interval(endpoint.config.ping_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let ids = runner.ids();
        // Each ping runs apart from the schedule, so a slow answer never
        // delays the next heartbeat.
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            if let Err(why) = endpoint.ping(&ids).await {
                tracing::warn!("heartbeat failed: {why}; the next one goes out on schedule");
            }
        });
    }
}

/// Long-polls job-stop and stops the listed jobs.
async fn stop_loop(endpoint: Arc<Endpoint>, pool: Arc<Pool>) {
    let Some(template) = endpoint.stop_url.clone() else {
        return;
    };
    let mut delays = TAKE_BACKOFF.iter();
    loop {
        let started = Instant::now();
        let pause = match endpoint.stop_poll(&template).await {
            Ok(ids) if ids.is_empty() => {
                delays.reset();
                POLL_PACE.after(started)
            }
            Ok(ids) => {
                delays.reset();
                for id in ids {
                    if pool.cancel(&id) {
                        tracing::info!(job_id = %id, "RunPod asked to stop this job");
                    } else {
                        tracing::debug!(job_id = %id, "RunPod asked to stop a job that is not running here");
                    }
                }
                None
            }
            Err(why) => {
                let delay = delays.next().unwrap_or_default();
                tracing::debug!(
                    "job-stop poll failed: {why}; next in {}ms",
                    delay.as_millis()
                );
                Some(delay)
            }
        };
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
}

/// A post's body as RunPod expects it: progress as an `IN_PROGRESS`
/// status, a partial under `output`, `stopPod` for a fresh worker.
fn runpod_body(post: &Post) -> Value {
    match post.kind {
        PostKind::Progress => json!({"status": "IN_PROGRESS", "output": post.body}),
        PostKind::Stream => json!({"output": post.body}),
        PostKind::Final { .. } if post.refresh_worker => {
            let mut body = post.body.clone();
            body["stopPod"] = Value::Bool(true);
            body
        }
        PostKind::Final { .. } => post.body.clone(),
    }
}

/// Appends query parameters to a URL that may already carry some.
fn with_query(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// Percent-encodes text for a URL path segment or query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~,".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Describes a reqwest error without its URL's query (which never holds a
/// secret, but is long) and with its cause.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        let config = RunpodConfig {
            take_url: "https://h/v2/ep/job-take/$RUNPOD_POD_ID?gpu=A40".into(),
            done_url: "https://h/v2/ep/job-done/$RUNPOD_POD_ID/$ID?gpu=A40".into(),
            stream_url: "https://h/v2/ep/job-stream/$RUNPOD_POD_ID/$ID?gpu=A40".into(),
            ping_url: Some("https://h/v2/ep/ping/$ID?gpu=A40".into()),
            ping_interval: Duration::from_secs(10),
            api_key: "k".into(),
            spool_dir: "/tmp".into(),
            max_undelivered: 16,
            return_aggregate_stream: false,
            input_schema: None,
        };
        Endpoint::new(config, "pod-1".into()).unwrap()
    }

    #[test]
    fn templates_are_filled_as_runpod_defines() {
        let e = endpoint();
        assert_eq!(
            e.worker_url(&e.config.take_url),
            "https://h/v2/ep/job-take/pod-1?gpu=A40"
        );
        assert_eq!(
            e.worker_url(e.config.ping_url.as_ref().unwrap()),
            "https://h/v2/ep/ping/pod-1?gpu=A40"
        );
        assert_eq!(
            e.job_url(&e.config.done_url, "job 1/x"),
            "https://h/v2/ep/job-done/pod-1/job%201%2Fx?gpu=A40"
        );
    }

    #[test]
    fn query_is_appended_with_the_right_separator() {
        assert_eq!(with_query("http://a/b?x=1", "y=2"), "http://a/b?x=1&y=2");
        assert_eq!(with_query("http://a/b", "y=2"), "http://a/b?y=2");
    }
}
