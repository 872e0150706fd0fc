//! Queue events across machines: every change that someone may be waiting
//! for is announced with `NOTIFY jobpipe` once the transaction that made it
//! has committed (see [`super::postgres_announce`]), and one dedicated
//! connection per process `LISTEN`s and turns the notifications into
//! [`QueueEvent`]s.
//!
//! Idle workers thus wake within milliseconds of a `/run` on any machine,
//! `/runsync` answers when the job ends wherever it ran, and a cancel
//! reaches the worker holding the job. Notifications sent while the
//! listening connection is down are lost; after reconnecting it announces
//! a [`QueueEvent::Queued`] so takers look again, and lease renewal finds
//! cancelled jobs, so nothing waits on a lost notification for long.

use std::time::Duration;

use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::postgres_conn::PgTarget;
use super::QueueEvent;
use crate::backoff::{Backoff, BackoffPolicy};

/// The notification channel.
pub(super) const CHANNEL: &str = "jobpipe";

/// Delays between attempts to reconnect the listening connection.
const RECONNECT: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(200), Duration::from_secs(10), 0.3);
/// How long a connection must have listened for its loss to count as a new
/// outage rather than the same one going on.
const STEADY: Duration = Duration::from_secs(10);

/// The notification payload for an event.
pub(super) fn payload(event: &QueueEvent) -> String {
    match event {
        QueueEvent::Queued => "q".into(),
        QueueEvent::Finished(id) => format!("f:{id}"),
        QueueEvent::Cancelled(id) => format!("c:{id}"),
        QueueEvent::Streamed(id) => format!("s:{id}"),
        QueueEvent::WebhookDue => "w".into(),
        QueueEvent::Poll => "p".into(),
    }
}

fn event(payload: &str) -> Option<QueueEvent> {
    match payload {
        "q" => return Some(QueueEvent::Queued),
        "w" => return Some(QueueEvent::WebhookDue),
        "p" => return Some(QueueEvent::Poll),
        _ => {}
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
        let ended = tokio::select! {
            ended = listen_once(&target, &events, &mut down, &mut listening) => ended,
            _ = stop.cancelled() => return,
        };
        if let Some(listening) = listening.take() {
            let _ = listening.send(());
        }
        if !down {
            tracing::warn!(
                "queue notifications from {target} stopped: {}; reconnecting (a slow poll covers the gap)",
                ended.why
            );
            down = true;
        }
        let delay = reconnect_delay(&mut delays, ended.listened_at);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// How one listening connection ended.
struct Ended {
    why: String,
    /// When it started listening; `None` when it never did.
    listened_at: Option<Instant>,
}

/// The wait before the next connection. Only a connection that stayed up
/// for [`STEADY`] starts the delays over: one that a server or proxy closes
/// soon after it listened keeps them growing like a failed connect, so a
/// flapping link is not reconnected to several times a second forever.
fn reconnect_delay(delays: &mut Backoff, listened_at: Option<Instant>) -> Duration {
    if listened_at.is_some_and(|at| at.elapsed() >= STEADY) {
        delays.reset();
    }
    delays.next().unwrap_or(RECONNECT.max)
}

/// One listening connection, from connect to its loss.
async fn listen_once(
    target: &PgTarget,
    events: &broadcast::Sender<QueueEvent>,
    down: &mut bool,
    listening: &mut Option<oneshot::Sender<()>>,
) -> Ended {
    let failed = |why| Ended {
        why,
        listened_at: None,
    };
    let (client, mut connection) = match target.config.connect(tokio_postgres::NoTls).await {
        Ok(pair) => pair,
        Err(e) => return failed(target.describe(&e)),
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
        ended = &mut drive => return failed(ended),
        listened = listen => if let Err(e) = listened {
            return failed(target.describe(&e));
        },
    }
    let listened_at = Instant::now();
    if *down {
        tracing::info!("queue notifications from {target} are back");
        *down = false;
        // Whatever was announced while nobody listened: look again.
        let _ = events.send(QueueEvent::Queued);
    }
    if let Some(listening) = listening.take() {
        let _ = listening.send(());
    }
    Ended {
        why: drive.await,
        listened_at: Some(listened_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_read_back_as_their_events() {
        for sent in [
            QueueEvent::Queued,
            QueueEvent::Finished("a:b".into()),
            QueueEvent::Cancelled("c".into()),
            QueueEvent::Streamed("s".into()),
        ] {
            assert_eq!(event(&payload(&sent)), Some(sent));
        }
        assert_eq!(event("x:1"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn reconnects_slow_down_until_a_connection_stays_up() {
        let mut delays = RECONNECT.iter();
        // Failed connects, then connections closed a second after they
        // listened: each wait is longer than the one before.
        let mut waits = vec![
            reconnect_delay(&mut delays, None),
            reconnect_delay(&mut delays, None),
        ];
        for _ in 0..3 {
            let listened_at = Instant::now();
            tokio::time::advance(Duration::from_secs(1)).await;
            waits.push(reconnect_delay(&mut delays, Some(listened_at)));
        }
        assert!(waits.windows(2).all(|w| w[1] > w[0]), "{waits:?}");
        assert!(waits[4] >= Duration::from_millis(2240), "{waits:?}");
        // A connection that listened for a while: start over.
        let listened_at = Instant::now();
        tokio::time::advance(STEADY).await;
        let wait = reconnect_delay(&mut delays, Some(listened_at));
        assert!(wait <= RECONNECT.initial, "{wait:?}");
    }
}
