//! An in-process stand-in for the worker side of RunPod's serverless job
//! queue (see the wire protocol: job-take, job-take-batch, job-done,
//! job-stream, ping and job-stop under `/v2/<endpoint>/`).
//!
//! The fake serves plain HTTP (or HTTPS, [`FakeRunpod::start_tls`]) on
//! `127.0.0.1` on a free port, counts the connections it accepts, records every
//! request it receives (including rejected ones) and lets a test inject
//! jobs, failures, outages and stop requests. All state lives behind an
//! `Arc`, so a [`FakeRunpod`] is cheap to clone and every method takes
//! `&self`.
//!
//! The server task runs on the tokio runtime that called
//! [`FakeRunpod::start`]; it stops when that runtime shuts down (the end of
//! a `#[tokio::test]`). Waiting helpers are async, so a test must not block
//! that runtime's only thread while a worker talks to the fake.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Query, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use tokio::sync::Notify;

/// The endpoint id used in every URL the fake hands out.
pub const ENDPOINT_ID: &str = "ep";
/// The worker id the fake hands out as `RUNPOD_POD_ID`.
pub const POD_ID: &str = "pod-1";
/// How long an empty job-take waits for a job unless changed with
/// [`FakeRunpod::set_long_poll`].
pub const DEFAULT_LONG_POLL: Duration = Duration::from_millis(200);
/// How long a job-stop poll waits for a stop request before answering 204,
/// unless changed with [`FakeRunpod::set_stop_long_poll`].
pub const STOP_LONG_POLL: Duration = Duration::from_secs(1);
/// Largest request body the fake reads; larger bodies are answered 413.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One HTTP request received by the fake, as recorded before it was answered.
#[derive(Clone, Debug)]
pub struct Request {
    /// When the request (headers and body) had been received.
    pub at: Instant,
    /// The HTTP method, e.g. `GET`.
    pub method: String,
    /// The URL path as sent, without the query string (not percent-decoded).
    pub path: String,
    /// The query parameters in order, percent-decoded.
    pub query: Vec<(String, String)>,
    /// The headers in order; names are lowercase.
    pub headers: Vec<(String, String)>,
    /// The body as text (invalid UTF-8 is replaced).
    pub body: String,
    /// The status the fake answered with, or `None` while the answer is
    /// still pending (long poll, delayed job-done) or was never sent because
    /// the client went away.
    pub status: Option<u16>,
}

impl Request {
    /// The first value of the header `name` (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The body of `r` parsed as JSON.
///
/// # Panics
/// When the body is not valid JSON (the message shows the request).
pub fn parse_body(r: &Request) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| {
        panic!(
            "body of {} {} is not JSON ({e}): {:?}",
            r.method, r.path, r.body
        )
    })
}

/// The first value of the query parameter `key` in `r`, if any.
pub fn query(r: &Request, key: &str) -> Option<String> {
    r.query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

/// The job id in the path of a job-done or job-stream request
/// (percent-decoded), or `None` for other requests.
pub fn job_id(r: &Request) -> Option<String> {
    match route(&r.path) {
        Some((Route::Done | Route::Stream, id)) => id,
        _ => None,
    }
}

/// Whether the JSON body of a job-done post is a progress update
/// (`"status": "IN_PROGRESS"`) rather than a final result.
fn is_progress(body: &str) -> bool {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("status").and_then(Value::as_str).map(str::to_owned))
        .is_some_and(|s| s == "IN_PROGRESS")
}

/// Serves `app` on every connection `listener` accepts, over TLS when
/// `tls` is given (a failed handshake closes that connection alone).
async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    fake: FakeRunpod,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        fake.shared.connections.fetch_add(1, Ordering::Relaxed);
        let service = TowerToHyperService::new(app.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let builder = Builder::new(TokioExecutor::new());
            let _ = match tls {
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Err(_) => return,
                },
            };
        });
    }
}

/// The worker routes of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Take,
    TakeBatch,
    Done,
    Stream,
    Ping,
    Stop,
}

impl Route {
    fn method(self) -> Method {
        match self {
            Route::Done | Route::Stream => Method::POST,
            Route::Take | Route::TakeBatch | Route::Ping | Route::Stop => Method::GET,
        }
    }
}

/// Classifies a path; for job-done and job-stream also returns the
/// percent-decoded job id.
fn route(path: &str) -> Option<(Route, Option<String>)> {
    let segments: Vec<&str> = path.strip_prefix("/v2/")?.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    match segments.as_slice() {
        [_, "job-take", _] => Some((Route::Take, None)),
        // The take route under a name without `/job-take/`, for a worker
        // whose take URL cannot be turned into the others.
        [_, "next-job", _] => Some((Route::Take, None)),
        [_, "job-take-batch", _] => Some((Route::TakeBatch, None)),
        [_, "ping", _] => Some((Route::Ping, None)),
        [_, "job-stop", _] => Some((Route::Stop, None)),
        [_, "job-done", _, job] => Some((Route::Done, Some(percent_decode(job)))),
        [_, "job-stream", _, job] => Some((Route::Stream, Some(percent_decode(job)))),
        _ => None,
    }
}

/// Decodes `%XX` escapes in a path segment (malformed escapes are kept).
fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi * 16 + lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One entry of the job queue.
enum Queued {
    /// A job object, answered as JSON.
    Job(Value),
    /// A raw body, answered verbatim with status 200.
    Raw(String),
}

/// The mutable state of the fake.
struct Inner {
    queue: VecDeque<Queued>,
    requests: Vec<Request>,
    fail_done: usize,
    outage_until: Option<Instant>,
    take_status: Option<u16>,
    long_poll: Duration,
    stops: Vec<String>,
    done_delay: Duration,
    /// Job-done posts answered 200 so far.
    done_ok: usize,
    stream_delay: Duration,
    stop_long_poll: Duration,
    empty_take_body: Option<String>,
}

struct Shared {
    api_key: String,
    base_url: String,
    inner: Mutex<Inner>,
    /// Woken when the job queue gains entries.
    queue_changed: Notify,
    /// Woken when a stop request is added.
    stops_changed: Notify,
    /// Woken on every change a test could observe.
    activity: Notify,
    /// TCP connections accepted (for HTTPS: each one a TLS handshake).
    connections: AtomicUsize,
}

/// A running stand-in of RunPod's job queue. Cheap to clone; clones share
/// the same server and state.
#[derive(Clone)]
pub struct FakeRunpod {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeRunpod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRunpod")
            .field("base_url", &self.shared.base_url)
            .finish_non_exhaustive()
    }
}

impl FakeRunpod {
    /// Starts the fake on `127.0.0.1` on a free port. Every request must
    /// carry `Authorization: <api_key>` verbatim, or it is answered 401.
    pub async fn start(api_key: &str) -> FakeRunpod {
        FakeRunpod::start_with(api_key, None).await
    }

    /// Like [`FakeRunpod::start`], but serving HTTPS with `tls` (see
    /// `support::tls::TestCa`): its base URL is `https://127.0.0.1:PORT`.
    pub async fn start_tls(
        api_key: &str,
        tls: Arc<tokio_rustls::rustls::ServerConfig>,
    ) -> FakeRunpod {
        FakeRunpod::start_with(api_key, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(api_key: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> FakeRunpod {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake RunPod server");
        let addr = listener.local_addr().expect("local address of the fake");
        let fake = FakeRunpod {
            shared: Arc::new(Shared {
                api_key: api_key.to_owned(),
                base_url: format!("{}://{addr}", if tls.is_some() { "https" } else { "http" }),
                inner: Mutex::new(Inner {
                    queue: VecDeque::new(),
                    requests: Vec::new(),
                    fail_done: 0,
                    outage_until: None,
                    take_status: None,
                    long_poll: DEFAULT_LONG_POLL,
                    stops: Vec::new(),
                    done_delay: Duration::ZERO,
                    done_ok: 0,
                    stream_delay: Duration::ZERO,
                    stop_long_poll: STOP_LONG_POLL,
                    empty_take_body: None,
                }),
                queue_changed: Notify::new(),
                stops_changed: Notify::new(),
                activity: Notify::new(),
                connections: AtomicUsize::new(0),
            }),
        };
        let app = Router::new().fallback(handle).with_state(fake.clone());
        tokio::spawn(serve(listener, tls, app, fake.clone()));
        fake
    }

    /// The TCP connections accepted so far: with connections reused, a
    /// handful per worker whatever the number of jobs.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// The server's base URL, `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The environment variables RunPod sets for a worker: the four webhook
    /// URL templates (with literal `$RUNPOD_POD_ID` / `$ID` placeholders and
    /// a `?gpu=TEST` query), `RUNPOD_AI_API_KEY` and `RUNPOD_POD_ID`
    /// (`pod-1`).
    pub fn env(&self) -> Vec<(String, String)> {
        let v2 = format!("{}/v2/{ENDPOINT_ID}", self.shared.base_url);
        [
            (
                "RUNPOD_WEBHOOK_GET_JOB",
                format!("{v2}/job-take/$RUNPOD_POD_ID?gpu=TEST"),
            ),
            (
                "RUNPOD_WEBHOOK_POST_OUTPUT",
                format!("{v2}/job-done/$RUNPOD_POD_ID/$ID?gpu=TEST"),
            ),
            (
                "RUNPOD_WEBHOOK_POST_STREAM",
                format!("{v2}/job-stream/$RUNPOD_POD_ID/$ID?gpu=TEST"),
            ),
            (
                "RUNPOD_WEBHOOK_PING",
                format!("{v2}/ping/$RUNPOD_POD_ID?gpu=TEST"),
            ),
            ("RUNPOD_AI_API_KEY", self.shared.api_key.clone()),
            ("RUNPOD_POD_ID", POD_ID.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Queues a job object as given (it may be invalid on purpose). Jobs
    /// and raw bodies are handed out first in, first out.
    pub fn push_job(&self, job: Value) {
        self.lock().queue.push_back(Queued::Job(job));
        self.shared.queue_changed.notify_waiters();
        self.touch();
    }

    /// Queues a raw body: the take that reaches it answers 200 with exactly
    /// this body (a batch take answers it alone). For non-JSON tests.
    pub fn push_raw(&self, body: &str) {
        self.lock().queue.push_back(Queued::Raw(body.to_owned()));
        self.shared.queue_changed.notify_waiters();
        self.touch();
    }

    /// The next `n` job-done posts (results and progress updates alike) are
    /// answered 500. They are recorded but never count as results.
    pub fn fail_done_posts(&self, n: usize) {
        self.lock().fail_done = n;
    }

    /// Every request received during the next `d` is answered 503.
    pub fn outage_for(&self, d: Duration) {
        self.lock().outage_until = Some(Instant::now() + d);
    }

    /// Forces every job-take and job-take-batch to answer `status` (e.g. 401
    /// or 429) without handing out a job; `None` restores normal answers.
    pub fn set_take_status(&self, status: Option<u16>) {
        self.lock().take_status = status;
    }

    /// An empty take waits up to `d` for a job before answering 204
    /// (default [`DEFAULT_LONG_POLL`]).
    pub fn set_long_poll(&self, d: Duration) {
        self.lock().long_poll = d;
    }

    /// The next job-stop poll answers 200 `{"jobsToStop": [.., id]}`; ids
    /// requested before that poll are all returned together.
    pub fn stop_job(&self, id: &str) {
        self.lock().stops.push(id.to_owned());
        self.shared.stops_changed.notify_waiters();
        self.touch();
    }

    /// Delays the answer to each job-done post by `d`. A post counts as a
    /// result only once it has been answered.
    pub fn set_done_delay(&self, d: Duration) {
        self.lock().done_delay = d;
    }

    /// Delays the answer to each job-stream post by `d` (a slow destination).
    pub fn set_stream_delay(&self, d: Duration) {
        self.lock().stream_delay = d;
    }

    /// A job-stop poll waits up to `d` for a stop request before answering
    /// 204 (default [`STOP_LONG_POLL`]; zero answers at once).
    pub fn set_stop_long_poll(&self, d: Duration) {
        self.lock().stop_long_poll = d;
    }

    /// An empty take (single or batch) answers 200 with `body` (e.g. `[]`)
    /// instead of 204; `None` restores 204.
    pub fn set_empty_take_body(&self, body: Option<&str>) {
        self.lock().empty_take_body = body.map(str::to_owned);
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// Job-done posts that were answered 200 and are final results (their
    /// body is not a `"status": "IN_PROGRESS"` progress update).
    pub fn results(&self) -> Vec<Request> {
        self.filtered(|r, route| {
            route == Route::Done && r.status == Some(200) && !is_progress(&r.body)
        })
    }

    /// How many job-done posts have been answered 200 so far, results and
    /// progress updates alike, counted without copying them: cheap enough
    /// to poll while large bodies pile up.
    pub fn done_count(&self) -> usize {
        self.lock().done_ok
    }

    /// [`results`](Self::results) for the job `job_id`.
    pub fn results_for(&self, job_id: &str) -> Vec<Request> {
        self.results()
            .into_iter()
            .filter(|r| self::job_id(r).as_deref() == Some(job_id))
            .collect()
    }

    /// Job-done posts for `job_id` whose body has `"status": "IN_PROGRESS"`,
    /// whatever they were answered (see [`Request::status`]).
    pub fn progress_posts(&self, job_id: &str) -> Vec<Request> {
        self.for_job(Route::Done, job_id)
            .into_iter()
            .filter(|r| is_progress(&r.body))
            .collect()
    }

    /// Job-stream posts for `job_id`, whatever they were answered.
    pub fn stream_posts(&self, job_id: &str) -> Vec<Request> {
        self.for_job(Route::Stream, job_id)
    }

    /// Every ping request received, whatever it was answered.
    pub fn pings(&self) -> Vec<Request> {
        self.filtered(|_, route| route == Route::Ping)
    }

    /// Every job-stop poll received, whatever it was answered.
    pub fn stop_polls(&self) -> Vec<Request> {
        self.filtered(|_, route| route == Route::Stop)
    }

    /// Every job-take and job-take-batch request received, whatever it was
    /// answered.
    pub fn takes(&self) -> Vec<Request> {
        self.filtered(|_, route| matches!(route, Route::Take | Route::TakeBatch))
    }

    /// Waits until at least `n` final results have been accepted or
    /// `timeout` has passed, and returns the results there are.
    pub async fn wait_for_results(&self, n: usize, timeout: Duration) -> Vec<Request> {
        self.wait_until(timeout, |f| f.results().len() >= n).await;
        self.results()
    }

    /// Waits until `pred` holds or `timeout` has passed; returns whether it
    /// holds. The predicate is checked at once and again whenever the fake
    /// receives or answers a request or its queue changes.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&FakeRunpod) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.activity.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(self);
            }
        }
    }

    /// The number of queued jobs and raw bodies not yet handed out.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not make every other check fail too.
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn touch(&self) {
        self.shared.activity.notify_waiters();
    }

    fn filtered(&self, keep: impl Fn(&Request, Route) -> bool) -> Vec<Request> {
        self.lock()
            .requests
            .iter()
            .filter(|r| route(&r.path).is_some_and(|(route, _)| keep(r, route)))
            .cloned()
            .collect()
    }

    fn for_job(&self, which: Route, job_id: &str) -> Vec<Request> {
        self.lock()
            .requests
            .iter()
            .filter(|r| {
                route(&r.path)
                    .is_some_and(|(route, id)| route == which && id.as_deref() == Some(job_id))
            })
            .cloned()
            .collect()
    }

    /// Records a request and returns its index.
    fn record(&self, request: Request) -> usize {
        let index = {
            let mut inner = self.lock();
            inner.requests.push(request);
            inner.requests.len() - 1
        };
        self.touch();
        index
    }

    /// Notes the status a recorded request was answered with.
    fn answered(&self, index: usize, status: StatusCode) {
        let mut inner = self.lock();
        let request = &mut inner.requests[index];
        request.status = Some(status.as_u16());
        if status == StatusCode::OK
            && route(&request.path).is_some_and(|(route, _)| route == Route::Done)
        {
            inner.done_ok += 1;
        }
        drop(inner);
        self.touch();
    }

    /// Answers a recorded request.
    async fn dispatch(
        &self,
        method: &Method,
        path: &str,
        query: &[(String, String)],
        headers: &HeaderMap,
        body: &str,
    ) -> Response {
        if self
            .lock()
            .outage_until
            .is_some_and(|until| Instant::now() < until)
        {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        let authorized = headers
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == self.shared.api_key.as_bytes());
        if !authorized {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let Some((route, _)) = route(path) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        if *method != route.method() {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        match route {
            Route::Take | Route::TakeBatch => {
                if let Some(status) = self.lock().take_status {
                    return StatusCode::from_u16(status)
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                        .into_response();
                }
                let batch = if route == Route::TakeBatch {
                    match query
                        .iter()
                        .find(|(k, _)| k == "batch_size")
                        .and_then(|(_, v)| v.parse::<usize>().ok())
                    {
                        Some(n) if n > 0 => Some(n),
                        _ => return StatusCode::BAD_REQUEST.into_response(),
                    }
                } else {
                    None
                };
                self.take(batch).await
            }
            Route::Done => self.done(body).await,
            Route::Stream => {
                let delay = self.lock().stream_delay;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                StatusCode::OK.into_response()
            }
            Route::Ping => StatusCode::OK.into_response(),
            Route::Stop => self.stop_poll().await,
        }
    }

    /// A single take (`batch` = `None`) or a batch take of up to `n` jobs.
    async fn take(&self, batch: Option<usize>) -> Response {
        let deadline = tokio::time::Instant::now() + self.lock().long_poll;
        loop {
            let notified = self.shared.queue_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(response) = self.pop(batch) {
                self.touch();
                return response;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return match self.lock().empty_take_body.clone() {
                    Some(body) => json_response(body),
                    None => StatusCode::NO_CONTENT.into_response(),
                };
            }
        }
    }

    /// Takes the answer for a take off the queue, if there is a job.
    fn pop(&self, batch: Option<usize>) -> Option<Response> {
        let mut inner = self.lock();
        match (inner.queue.pop_front()?, batch) {
            (Queued::Raw(raw), _) => Some(json_response(raw)),
            (Queued::Job(job), None) => Some(json_response(job.to_string())),
            (Queued::Job(job), Some(n)) => {
                let mut jobs = vec![job];
                while jobs.len() < n && matches!(inner.queue.front(), Some(Queued::Job(_))) {
                    if let Some(Queued::Job(job)) = inner.queue.pop_front() {
                        jobs.push(job);
                    }
                }
                Some(json_response(Value::Array(jobs).to_string()))
            }
        }
    }

    /// Answers a job-done post: 500 while failures are pending, 400 when the
    /// body is not JSON, 200 otherwise, each after the configured delay.
    async fn done(&self, body: &str) -> Response {
        let (fail, delay) = {
            let mut inner = self.lock();
            let fail = inner.fail_done > 0;
            if fail {
                inner.fail_done -= 1;
            }
            (fail, inner.done_delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if fail {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        } else if serde_json::from_str::<Value>(body).is_err() {
            StatusCode::BAD_REQUEST.into_response()
        } else {
            StatusCode::OK.into_response()
        }
    }

    /// Long-polls for stop requests.
    async fn stop_poll(&self) -> Response {
        let deadline = tokio::time::Instant::now() + self.lock().stop_long_poll;
        loop {
            let notified = self.shared.stops_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let stops = std::mem::take(&mut self.lock().stops);
            if !stops.is_empty() {
                self.touch();
                return json_response(serde_json::json!({ "jobsToStop": stops }).to_string());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return StatusCode::NO_CONTENT.into_response();
            }
        }
    }
}

fn json_response(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The single handler behind every path: records the request, then answers.
async fn handle(State(fake): State<FakeRunpod>, request: HttpRequest) -> Response {
    let (parts, body) = request.into_parts();
    let (body, readable) = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => (String::from_utf8_lossy(&bytes).into_owned(), true),
        Err(_) => (String::new(), false),
    };
    let query = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path = parts.uri.path().to_owned();
    let index = fake.record(Request {
        at: Instant::now(),
        method: parts.method.to_string(),
        path: path.clone(),
        query: query.clone(),
        headers,
        body: body.clone(),
        status: None,
    });
    let response = if readable {
        fake.dispatch(&parts.method, &path, &query, &parts.headers, &body)
            .await
    } else {
        StatusCode::PAYLOAD_TOO_LARGE.into_response()
    };
    fake.answered(index, response.status());
    response
}
