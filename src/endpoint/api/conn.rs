//! The API's listener: HTTP/1.1 connections served with the limits a
//! public endpoint needs, so that no client can hold the process's files
//! or tasks by being slow.
//!
//! * At most [`Limits::max_connections`] connections are open; one beyond
//!   is answered `503` with a JSON error and closed (while a few such
//!   answers are being written; past that, closed at once).
//! * A request's header must arrive within [`Limits::header_timeout`] of
//!   its first byte (of the connection's opening, for the first request).
//! * A connection with no request in progress is closed after
//!   [`Limits::idle_timeout`].
//! * A request body with no data for [`Limits::body_timeout`], or slower
//!   on average than [`Limits::body_min_rate`] once that long has passed,
//!   is cut ([`SlowBody`]); the route answers 408.
//!
//! hyper's own header timer cannot tell a slow header from an idle
//! keep-alive connection (it runs from the end of the last response), and
//! `axum::serve` sets no timer at all, so both are watched here, per
//! connection, from what its reads and its requests show.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// What one client may take of the API.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    /// Bytes per second a body must average once `body_timeout` has passed.
    pub body_min_rate: u64,
    pub max_connections: usize,
}

/// Refusals of connections over the limit being written at once; beyond
/// them a connection is closed without an answer.
const REFUSALS: usize = 32;
/// Longest time a refusal may take to write.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);
/// Pause after a failed accept (out of file descriptors, say), so the loop
/// does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `stop` is cancelled, then lets the
/// requests in progress finish and closes idle connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!("accepting an API connection failed: {e}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        match connections.clone().try_acquire_owned() {
            Ok(permit) => {
                let (router, stop) = (router.clone(), stop.clone());
                tasks.spawn(async move {
                    connection(stream, router, limits, stop).await;
                    drop(permit);
                });
            }
            Err(_) => {
                if let Ok(permit) = refusals.clone().try_acquire_owned() {
                    tasks.spawn(async move {
                        refuse(stream, limits.max_connections).await;
                        drop(permit);
                    });
                }
            }
        }
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Answers a connection over the limit with a 503 and closes it.
async fn refuse(mut stream: TcpStream, limit: usize) {
    let body = serde_json::json!({
        "error": format!("the API has {limit} connections open, its limit (--api-max-connections); try again shortly")
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE, stream.write_all(answer.as_bytes())).await;
}

/// Serves one connection within its limits.
async fn connection(stream: TcpStream, router: Router, limits: Limits, stop: CancellationToken) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let seen = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let guard = seen.request_started();
        let request = request.map(|body| Body::new(MinRate::new(body, limits)));
        let router = router.clone();
        async move {
            let answer = router.oneshot(request).await;
            drop(guard);
            answer
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = activity.deadline(&limits);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = sleep_until_some(deadline) => {
                if activity.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    // Dropping the connection closes it.
                    return;
                }
            }
            _ = activity.changed.notified() => {}
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What a connection is doing, as its reads and requests show.
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

#[derive(Clone, Copy)]
enum ActivityState {
    /// A request's header is being read since this moment.
    Head(Instant),
    /// Requests are being answered.
    Busy(usize),
    /// Nothing in progress since this moment.
    Idle(Instant),
}

impl Activity {
    fn new() -> Activity {
        Activity {
            // The first request's header is due from the opening on.
            state: Mutex::new(ActivityState::Head(Instant::now())),
            changed: Notify::new(),
        }
    }

    fn set(&self, state: ActivityState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
        self.changed.notify_one();
    }

    fn get(&self) -> ActivityState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived: if nothing was in progress, a request has begun.
    fn bytes_read(&self) {
        if let ActivityState::Idle(_) = self.get() {
            self.set(ActivityState::Head(Instant::now()));
        }
    }

    fn request_started(self: &Arc<Self>) -> RequestGuard {
        let busy = match self.get() {
            ActivityState::Busy(n) => n + 1,
            _ => 1,
        };
        self.set(ActivityState::Busy(busy));
        RequestGuard(self.clone())
    }

    /// When the connection is to be closed if nothing changes.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        match self.get() {
            ActivityState::Head(since) => Some(since + limits.header_timeout),
            ActivityState::Busy(_) => None,
            ActivityState::Idle(since) => Some(since + limits.idle_timeout),
        }
    }
}

/// One request in progress on a connection.
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let next = match self.0.get() {
            ActivityState::Busy(n) if n > 1 => ActivityState::Busy(n - 1),
            _ => ActivityState::Idle(Instant::now()),
        };
        self.0.set(next);
    }
}

/// The connection's socket, reporting reads to its [`Activity`].
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body cut when it stalls or trickles (see the module docs).
struct MinRate {
    inner: Incoming,
    started: Option<Instant>,
    last_data: Instant,
    received: u64,
    limits: Limits,
    timer: Pin<Box<Sleep>>,
}

/// The error of a body that came in too slowly.
#[derive(Debug, thiserror::Error)]
#[error("the request body came in too slowly: {0}")]
pub struct SlowBody(String);

impl MinRate {
    fn new(inner: Incoming, limits: Limits) -> MinRate {
        let now = Instant::now();
        MinRate {
            inner,
            started: None,
            last_data: now,
            received: 0,
            limits,
            timer: Box::pin(tokio::time::sleep_until(now)),
        }
    }

    /// Why the body is too slow now, if it is; else when to look again.
    fn check(&self, now: Instant) -> Result<Instant, SlowBody> {
        let started = self.started.unwrap_or(now);
        let stalled_at = self.last_data + self.limits.body_timeout;
        if now >= stalled_at {
            return Err(SlowBody(format!(
                "no data for {} (--api-body-timeout)",
                humantime::format_duration(self.limits.body_timeout)
            )));
        }
        let rate = self.limits.body_min_rate.max(1);
        let grace_over = started + self.limits.body_timeout;
        // With no more data, the average falls below the floor here.
        let too_slow_at = started + Duration::from_secs_f64(self.received as f64 / rate as f64);
        let rate_check = grace_over.max(too_slow_at);
        if now >= rate_check {
            return Err(SlowBody(format!(
                "{} bytes in {:.0} s, less than {rate} bytes/s (--api-body-min-rate)",
                self.received,
                (now - started).as_secs_f64()
            )));
        }
        Ok(stalled_at.min(rate_check))
    }
}

impl HttpBody for MinRate {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let now = Instant::now();
        self.started.get_or_insert(now);
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received += data.len() as u64;
                    self.last_data = now;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.check(now) {
                Err(slow) => Poll::Ready(Some(Err(slow.into()))),
                Ok(next) => {
                    self.timer.as_mut().reset(next);
                    // Registers the waker for the next look.
                    let _ = self.timer.as_mut().poll(cx);
                    Poll::Pending
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
