//! Queue events across machines: every change that someone may be waiting
//! for is announced with `NOTIFY jobpipe` in the transaction that makes it
//! (so it is heard only once committed), and one dedicated connection per
//! process `LISTEN`s and turns the notifications into [`QueueEvent`]s.
//!
//! Idle workers thus wake within milliseconds of a `/run` on any machine,
//! `/runsync` answers when the job ends wherever it ran, and a cancel
//! reaches the worker holding the job. Notifications sent while the
//! listening connection is down are lost; after reconnecting it announces
//! a [`QueueEvent::Queued`] so takers look again, and lease renewal finds
//! cancelled jobs, so nothing waits on a lost notification for long.

use std::time::Duration;

use tokio::sync::{broadcast, oneshot};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::postgres_conn::PgTarget;
use super::QueueEvent;
use crate::backoff::BackoffPolicy;

/// The notification channel.
pub(super) const CHANNEL: &str = "jobpipe";

/// Delays between attempts to reconnect the listening connection.
const RECONNECT: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(200), Duration::from_secs(10), 0.3);

/// The notification payload for an event.
pub(super) fn payload(event: &QueueEvent) -> String {
    match event {
        QueueEvent::Queued => "q".into(),
        QueueEvent::Finished(id) => format!("f:{id}"),
        QueueEvent::Cancelled(id) => format!("c:{id}"),
        QueueEvent::Streamed(id) => format!("s:{id}"),
    }
}

fn event(payload: &str) -> Option<QueueEvent> {
    if payload == "q" {
        return Some(QueueEvent::Queued);
    }
    let (kind, id) = payload.split_once(':')?;
    let id = id.to_owned();
    match kind {
        "f" => Some(QueueEvent::Finished(id)),
        "c" => Some(QueueEvent::Cancelled(id)),
        "s" => Some(QueueEvent::Streamed(id)),
        _ => None,
    }
}

/// Listens until `stop`, reconnecting with back-off. `listening` is told
/// when the first connection listens (or failed), so a queue just opened
/// hears what happens next.
pub(super) async fn run(
    target: PgTarget,
    events: broadcast::Sender<QueueEvent>,
    stop: CancellationToken,
    listening: oneshot::Sender<()>,
) {
    let mut delays = RECONNECT.iter();
    let mut down = false;
    let mut listening = Some(listening);
    loop {
        let outcome = tokio::select! {
            outcome = listen_once(&target, &events, &mut down, &mut delays, &mut listening) => outcome,
            _ = stop.cancelled() => return,
        };
        if let Some(listening) = listening.take() {
            let _ = listening.send(());
        }
        if !down {
            tracing::warn!("queue notifications from {target} stopped: {outcome}; reconnecting (a slow poll covers the gap)");
            down = true;
        }
        let delay = delays.next().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One listening connection, from connect to its loss; returns why it ended.
async fn listen_once(
    target: &PgTarget,
    events: &broadcast::Sender<QueueEvent>,
    down: &mut bool,
    delays: &mut crate::backoff::Backoff,
    listening: &mut Option<oneshot::Sender<()>>,
) -> String {
    let (client, mut connection) = match target.config.connect(tokio_postgres::NoTls).await {
        Ok(pair) => pair,
        Err(e) => return target.describe(&e),
    };
    let drive = async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(note))) => {
                    if let Some(event) = event(note.payload()) {
                        let _ = events.send(event);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return target.describe(&e),
                None => return "the connection closed".to_owned(),
            }
        }
    };
    tokio::pin!(drive);
    let sql = format!("LISTEN {CHANNEL}");
    let listen = client.batch_execute(&sql);
    tokio::select! {
        ended = &mut drive => return ended,
        listened = listen => if let Err(e) = listened {
            return target.describe(&e);
        },
    }
    if *down {
        tracing::info!("queue notifications from {target} are back");
        *down = false;
        // Whatever was announced while nobody listened: look again.
        let _ = events.send(QueueEvent::Queued);
    }
    delays.reset();
    if let Some(listening) = listening.take() {
        let _ = listening.send(());
    }
    drive.await
}
