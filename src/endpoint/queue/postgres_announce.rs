//! Queue events announced after the commit that made them, coalesced.
//!
//! A transaction that sends `NOTIFY` takes one lock for the whole database
//! at its commit and holds it through the WAL flush, so notifying in every
//! job's own transaction makes those commits run one at a time. Instead,
//! the events of a committed transaction are handed to this process's
//! announcer, which sends everything that gathered meanwhile in one small
//! transaction of its own (many `pg_notify` calls, one commit, one lock),
//! so the lock is taken once per batch rather than once per job. This
//! process hears its own events at once, without the round trip.
//!
//! An event is sent after its commit, so a listener never hears of a
//! change it cannot see. One can be lost (the process dies between the two
//! commits, the database goes away); every waiter also looks by itself
//! now and then (takers poll, `/runsync` rechecks, renewal finds
//! cancellations), so a lost event costs latency, not correctness.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

use super::postgres_conn::PgTarget;
use super::postgres_listen::{payload, CHANNEL};
use super::postgres_typed::{p, query, Statements};
use super::QueueEvent;

/// Events kept for the next batch at most; past it, per-job events are
/// dropped (their waiters look by themselves) but a queued job is not.
const PENDING_MAX: usize = 10_000;
/// Pause after a batch could not be sent.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Longest a batch may take, connecting included: a database that stops
/// answering must not hold the announcer (and the events gathering behind
/// it) for ever.
const SEND_DEADLINE: Duration = Duration::from_secs(10);

/// Hands committed events to the task that announces them.
#[derive(Clone)]
pub(super) struct Announcer {
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
    local: broadcast::Sender<QueueEvent>,
}

/// The payloads waiting for the next batch; a queued job and a due
/// webhook once at most.
#[derive(Default)]
struct Pending {
    payloads: Vec<String>,
    queued: bool,
    webhook: bool,
}

impl Announcer {
    /// Starts the announcing task on `pool`; it ends with `stop`.
    pub(super) fn start(
        pool: Pool,
        target: PgTarget,
        local: broadcast::Sender<QueueEvent>,
        stop: CancellationToken,
    ) -> Announcer {
        let announcer = Announcer {
            pending: Arc::default(),
            wake: Arc::new(Notify::new()),
            local,
        };
        tokio::spawn(announcer.clone().run(pool, target, stop));
        announcer
    }

    /// Announces the events of a transaction that committed.
    pub(super) fn announce(&self, events: Vec<QueueEvent>) {
        if events.is_empty() {
            return;
        }
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for event in &events {
                match event {
                    QueueEvent::Queued => pending.queued = true,
                    QueueEvent::WebhookDue => pending.webhook = true,
                    other if pending.payloads.len() < PENDING_MAX => {
                        pending.payloads.push(payload(other));
                    }
                    _ => {}
                }
            }
        }
        for event in events {
            let _ = self.local.send(event);
        }
        self.wake.notify_one();
    }

    /// Events whose notification already went out to the other processes
    /// (pipelined behind the write that made them): heard here only.
    pub(super) fn hear_here(&self, events: Vec<QueueEvent>) {
        for event in events {
            let _ = self.local.send(event);
        }
    }

    fn take(&self) -> Vec<String> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut payloads = std::mem::take(&mut pending.payloads);
        if std::mem::take(&mut pending.queued) {
            payloads.push(payload(&QueueEvent::Queued));
        }
        if std::mem::take(&mut pending.webhook) {
            payloads.push(payload(&QueueEvent::WebhookDue));
        }
        payloads
    }

    async fn run(self, pool: Pool, target: PgTarget, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = stop.cancelled() => return,
            }
            let payloads = self.take();
            if payloads.is_empty() {
                continue;
            }
            if let Err(e) = send(&pool, target.statements(), &payloads).await {
                let why = target.redact(&e);
                tracing::debug!("{} queue events not announced: {why}", payloads.len());
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_PAUSE) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// One transaction that notifies every payload.
async fn send(pool: &Pool, how: Statements, payloads: &[String]) -> Result<(), String> {
    tokio::time::timeout(SEND_DEADLINE, send_now(pool, how, payloads))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", SEND_DEADLINE.as_secs())))
}

async fn send_now(pool: &Pool, how: Statements, payloads: &[String]) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    query(&client, how, NOTIFY, &[p(&CHANNEL), p(&payloads)])
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Notifies each payload of `$2` on the channel `$1`, in a transaction of
/// its own. A notification carries no data that must survive a crash, so
/// its commit does not wait for the WAL flush, and the lock NOTIFY takes
/// at commit is held for less.
pub(super) const NOTIFY: &str = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p,
                      set_config('synchronous_commit', 'off', true) AS s";
