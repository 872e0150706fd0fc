//! RunPod serverless: take jobs, return results, stream, heartbeat and
//! per-job stop, speaking the worker protocol of RunPod's queue.
//!
//! This module is RunPod's transport alone: the take loop, the heartbeat
//! ([`ping_loop`]), the job-stop long poll ([`stop_loop`]) and one attempt
//! of a post ([`Endpoint`] as a [`ResultSink`]). What happens to a job
//! between take and delivered result is [`crate::runner`]'s.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::runpod_config::RunpodConfig;
use super::runpod_error::{describe, RequestError};
use super::runpod_urls::Urls;
use crate::backoff::{BackoffPolicy, PollPace};
use crate::delivery::ResultSink;
use crate::delivery::{self, Attempt, Post, PostKind};
use crate::error::{exit, FatalError};
use crate::json::{self, Json};
use crate::pool::Pool;
use crate::runner::SourceContext;
use crate::runner::{Runner, RunnerOptions};
use crate::text::clip_middle;

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
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
/// Timeout of one result post.
const POST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest take answer read: far above RunPod's own payload limits
/// (20 MB for a synchronous job), so only a broken or hostile endpoint
/// reaches it, and memory stays bounded whatever it sends.
const MAX_TAKE_BODY: usize = 256 << 20;

/// The RunPod worker endpoints, with the key and this worker's id filled in.
pub struct Endpoint {
    config: RunpodConfig,
    /// Every URL this worker calls, parsed once.
    urls: Urls,
    /// For takes and posts.
    http: reqwest::Client,
    /// For pings alone, so a busy connection pool never delays a heartbeat.
    ping_http: reqwest::Client,
    /// The key as a header value, checked once and kept out of debug output.
    auth: HeaderValue,
}

/// What a take came to.
enum Take {
    /// Each job object's text, sliced from the answer without a copy.
    Jobs(Vec<Bytes>),
    /// 204 or 400: nothing to do now.
    Empty,
    RateLimited,
    KeyRejected(u16),
    Failed(String),
}

impl Endpoint {
    fn new(config: RunpodConfig, worker_id: &str) -> Result<Endpoint, FatalError> {
        let build = |timeout: Duration| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(timeout)
                .user_agent(concat!("jobpipe/", env!("CARGO_PKG_VERSION")))
                // RunPod answers where it is asked; a redirect is a
                // misconfigured URL, reported as its status, not followed.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| FatalError::Internal(format!("cannot build the HTTP client: {e}")))
        };
        crate::tls::check_cert_file()?;
        let urls = Urls::new(&config, worker_id)?;
        if urls.stop.is_none() {
            tracing::warn!(
                "the take URL has no /job-take/ to derive the job-stop and batch URLs from; jobs are taken one at a time and RunPod cannot stop single jobs on this worker"
            );
        }
        let mut auth = HeaderValue::from_str(&config.api_key).map_err(|_| {
            FatalError::Config(crate::error::ConfigError::Invalid(
                "RUNPOD_AI_API_KEY holds characters an HTTP header cannot carry; set it to the key alone".into(),
            ))
        })?;
        auth.set_sensitive(true);
        Ok(Endpoint {
            auth,
            urls,
            http: build(LONG_POLL + Duration::from_secs(10))?,
            ping_http: build(config.ping_interval.max(Duration::from_secs(1)))?,
            config,
        })
    }

    /// A GET with the worker's key, which RunPod takes verbatim (no `Bearer`).
    async fn get(&self, client: &reqwest::Client, url: Url) -> reqwest::Result<reqwest::Response> {
        client
            .get(url)
            .header(AUTHORIZATION, self.auth.clone())
            .send()
            .await
    }

    async fn take(&self, count: usize, in_progress: bool) -> Take {
        let url = self.urls.take(count, in_progress);
        let response = match self.get(&self.http, url).await {
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
        let body = match read_capped(response, MAX_TAKE_BODY).await {
            Ok(body) => body,
            Err(why) => return Take::Failed(format!("reading the job failed: {why}")),
        };
        split_jobs(body)
    }

    async fn ping(&self, ids: &[String]) -> Result<(), RequestError> {
        let Some(url) = self.urls.ping(ids) else {
            return Ok(());
        };
        let response = self.get(&self.ping_http, url).await?;
        match response.status().as_u16() {
            200..=299 => Ok(()),
            status => Err(RequestError::Status(status)),
        }
    }

    /// One job-stop long poll: the ids to stop.
    async fn stop_poll(&self, url: Url) -> Result<Vec<String>, RequestError> {
        let response = self.get(&self.http, url).await?;
        match response.status().as_u16() {
            204 => Ok(Vec::new()),
            200 => {
                let body: Value = response.json().await?;
                Ok(body["jobsToStop"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|id| id.as_str().map(str::to_owned))
                    .collect())
            }
            status => Err(RequestError::Status(status)),
        }
    }
}

impl ResultSink for Endpoint {
    async fn send(&self, post: &Post) -> Attempt {
        let url = match post.kind {
            PostKind::Final { is_stream } => self.urls.done.for_job(
                &post.job_id,
                if is_stream {
                    "isStream=true"
                } else {
                    "isStream=false"
                },
            ),
            PostKind::Progress => self.urls.done.for_job(&post.job_id, "isStream=false"),
            PostKind::Stream => self.urls.stream.for_job(&post.job_id, "isStream=false"),
        };
        let body = runpod_body(post);
        let mut request = self
            .http
            .post(url)
            .timeout(POST_TIMEOUT)
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, APPLICATION_JSON)
            .body(http_body(&body));
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
        aggregate_stream: config.aggregate_stream,
        spool_dir: config.spool_dir.clone(),
        input_schema: config.input_schema.clone(),
        max_undelivered: config.max_undelivered,
        // RunPod's endpoint id, set on every worker of an endpoint.
        object_namespace: std::env::var("RUNPOD_ENDPOINT_ID")
            .ok()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| ctx.identity.worker_id.clone()),
    };
    let endpoint = Arc::new(Endpoint::new(config, &ctx.identity.worker_id)?);
    let runner = Arc::new(Runner::start(endpoint.clone(), &ctx, options).await?);
    tracing::info!(worker_id = %ctx.identity.worker_id, "RunPod worker started with {} slots", ctx.pool.capacity());
    // The heartbeat goes on until every result is delivered; job-stop
    // polls end when no more jobs are taken. Neither holds a job.
    let background = TaskTracker::new();
    let heartbeat = ctx.shutdown.child();
    let stop_polls = ctx.shutdown.child();
    background.spawn(ping_loop(
        endpoint.clone(),
        runner.clone(),
        background.clone(),
        heartbeat.clone(),
    ));
    background.spawn(stop_loop(
        endpoint.clone(),
        ctx.pool.clone(),
        stop_polls.clone(),
    ));
    take_loop(&endpoint, &runner, &ctx).await;
    tracing::info!(
        "no longer taking jobs; waiting for {} jobs and their results",
        ctx.pool.in_flight()
    );
    stop_polls.cancel();
    runner.finish().await;
    heartbeat.cancel();
    background.close();
    background.wait().await;
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
                let mut readable = false;
                for value in values {
                    let slot = match slots.pop() {
                        Some(slot) => slot,
                        // More jobs than asked for: wait for room rather than drop one.
                        None => ctx.pool.free_slots().await.swap_remove(0),
                    };
                    readable |= runner.start_job_text(value, slot);
                }
                if readable {
                    delays.reset();
                    None
                } else {
                    // An endpoint answering garbage at once is not asked
                    // again at once: it backs off like a failed take.
                    let delay = delays.next().unwrap_or_default();
                    tracing::warn!(
                        "RunPod's answer held no job that could be read; next take in {}ms",
                        delay.as_millis()
                    );
                    Some(delay)
                }
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
/// A ping in flight when the heartbeat ends is dropped with it.
async fn ping_loop(
    endpoint: Arc<Endpoint>,
    runner: Arc<Runner<Endpoint>>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    if endpoint.config.ping_url.is_none() {
        return;
    }
    let mut ticks = tokio::time::interval(endpoint.config.ping_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        let ids = runner.ids();
        // Each ping runs apart from the schedule, so a slow answer never
        // delays the next heartbeat.
        let endpoint = endpoint.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            tokio::select! {
                pinged = endpoint.ping(&ids) => if let Err(why) = pinged {
                    tracing::warn!("heartbeat failed: {why}; the next one goes out on schedule");
                },
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Long-polls job-stop and stops the listed jobs.
async fn stop_loop(endpoint: Arc<Endpoint>, pool: Arc<Pool>, stop: CancellationToken) {
    let Some(stop_url) = endpoint.urls.stop.clone() else {
        return;
    };
    let mut delays = TAKE_BACKOFF.iter();
    loop {
        let started = Instant::now();
        let polled = tokio::select! {
            polled = endpoint.stop_poll(stop_url.clone()) => polled,
            _ = stop.cancelled() => return,
        };
        let pause = match polled {
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
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// A post's body as RunPod expects it: progress as an `IN_PROGRESS`
/// status, a partial under `output`, `stopPod` for a fresh worker.
fn runpod_body(post: &Post) -> Json {
    match post.kind {
        PostKind::Progress => json::object([
            ("status", &Json::from_value(&"IN_PROGRESS".into())),
            ("output", &post.body),
        ]),
        PostKind::Stream => json::object([("output", &post.body)]),
        PostKind::Final { .. } if post.refresh_worker => {
            json::with_field(&post.body, "stopPod", &Json::from_value(&true.into()))
        }
        PostKind::Final { .. } => post.body.clone(),
    }
}

/// A post's body for reqwest: one piece as it is, several (a large output
/// inside its envelope) sent in turn without being joined first.
fn http_body(json: &Json) -> reqwest::Body {
    match json.pieces() {
        [one] => reqwest::Body::from(one.clone()),
        _ => reqwest::Body::wrap(json.clone().into_http_body()),
    }
}

/// Reads a response body of at most `cap` bytes into one buffer, freeing
/// each piece as it is copied in (so a large job is held once, not twice).
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Bytes, RequestError> {
    let expected = response.content_length().unwrap_or(0) as usize;
    if expected > cap {
        return Err(RequestError::TooLarge {
            size: expected,
            cap,
        });
    }
    let mut body = Vec::with_capacity(expected);
    while let Some(chunk) = response.chunk().await? {
        if body.is_empty() && expected > 0 && chunk.len() == expected {
            // The whole answer in one piece: kept as it is.
            return Ok(chunk);
        }
        if body.len() + chunk.len() > cap {
            return Err(RequestError::OverCap { cap });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// A take's answer: one job object, a list of them (a batch), or nothing.
fn split_jobs(body: Bytes) -> Take {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    match start.map(|at| body[at]) {
        None => Take::Empty,
        Some(b'[') => match serde_json::from_slice::<Vec<&RawValue>>(&body) {
            Ok(jobs) if jobs.is_empty() => Take::Empty,
            Ok(jobs) => Take::Jobs(
                jobs.iter()
                    .map(|job| body.slice_ref(job.get().as_bytes()))
                    .collect(),
            ),
            Err(e) => not_json(&body, &e),
        },
        // One job: checked whole when it is read as a job.
        Some(b'{') => Take::Jobs(vec![body]),
        Some(_) => match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Null) => Take::Empty,
            Ok(_) => Take::Jobs(vec![body]),
            Err(e) => not_json(&body, &e),
        },
    }
}

fn not_json(body: &[u8], e: &serde_json::Error) -> Take {
    Take::Failed(format!(
        "RunPod sent a job that is not JSON ({e}): {}",
        clip_middle(&String::from_utf8_lossy(&body[..body.len().min(4096)]), 500)
    ))
}
