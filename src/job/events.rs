//! The path of one job's events from its handler to its source, with
//! back-pressure.
//!
//! Stream partials go through a bounded queue: when it is full, the actor
//! that reads the handler's stdout waits ([`EventSender::stream`]), so it
//! stops reading and the handler blocks on its write; the handler is paced
//! by the destination instead of filling jobpipe's memory. Progress never
//! blocks: when the queue is full, only the latest progress value is kept
//! (a newer value supersedes an older one). The final result travels apart
//! from both, so finishing a job never waits, even from `Drop`.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::result::{JobEvent, JobResult};
use crate::json::Json;

/// Updates one job may have queued before its handler is paused.
pub const UPDATE_QUEUE: usize = 16;

/// The latest progress value that did not fit in the queue.
type Latest = Arc<Mutex<Option<Json>>>;

/// The handler's end: held by the job's ticket.
pub(crate) struct EventSender {
    updates: mpsc::Sender<JobEvent>,
    latest: Latest,
    done: Option<oneshot::Sender<JobResult>>,
}

/// The source's end: updates in order, then exactly one final result.
pub struct JobEvents {
    updates: mpsc::Receiver<JobEvent>,
    latest: Latest,
    done: Option<oneshot::Receiver<JobResult>>,
    /// The final result, once it has been seen before the updates ran out.
    result: Option<JobResult>,
    /// The job's slot in the pool: held until the source has taken in the
    /// result ([`JobEvents::release_slot`]) or drops these events, so the
    /// next job is taken only once this one's result is accounted for.
    slot: Option<OwnedSemaphorePermit>,
}

/// A connected pair for one job, holding its slot in the pool.
pub(crate) fn channel(slot: Option<OwnedSemaphorePermit>) -> (EventSender, JobEvents) {
    let (updates_tx, updates_rx) = mpsc::channel(UPDATE_QUEUE);
    let (done_tx, done_rx) = oneshot::channel();
    let latest = Latest::default();
    (
        EventSender {
            updates: updates_tx,
            latest: latest.clone(),
            done: Some(done_tx),
        },
        JobEvents {
            updates: updates_rx,
            latest,
            done: Some(done_rx),
            result: None,
            slot,
        },
    )
}

impl EventSender {
    /// Queues a progress value; when the queue is full it replaces any
    /// progress still waiting for room.
    pub(crate) fn progress(&self, value: Json) {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        match self.updates.try_send(JobEvent::Progress(value)) {
            // Anything parked is older than what was just queued.
            Ok(()) => *latest = None,
            Err(mpsc::error::TrySendError::Full(JobEvent::Progress(value))) => {
                *latest = Some(value);
            }
            Err(_) => {}
        }
    }

    /// Queues a partial, waiting for room: the caller stops reading the
    /// handler meanwhile. Gives up when the job is stopped.
    pub(crate) async fn stream(&self, value: Json, cancel: &CancellationToken) {
        tokio::select! {
            _ = self.updates.send(JobEvent::Stream(value)) => {}
            _ = cancel.cancelled() => {}
        }
    }

    /// Sends the final result; never waits.
    pub(crate) fn finish(&mut self, result: JobResult) {
        if let Some(done) = self.done.take() {
            let _ = done.send(result);
        }
    }
}

impl JobEvents {
    /// The next event: progress and partials in order, then the final
    /// result, then `None`. Cancel-safe: usable in `select!`.
    pub async fn recv(&mut self) -> Option<JobEvent> {
        loop {
            match self.updates.try_recv() {
                Ok(event) => return Some(event),
                Err(mpsc::error::TryRecvError::Empty) => {
                    if let Some(value) = self.take_latest() {
                        return Some(JobEvent::Progress(value));
                    }
                    if let Some(event) = self.updates.recv().await {
                        return Some(event);
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    // The ticket is gone, so its result was sent; a progress
                    // value still parked is superseded by it.
                    self.take_latest();
                    if let Some(result) = self.result.take() {
                        return Some(JobEvent::Done(result));
                    }
                    // Awaited in place, so a caller that gives up on this
                    // call (a `select!`) still finds the result next time.
                    let done = self.done.as_mut()?;
                    let result = done.await.ok();
                    self.done = None;
                    return result.map(JobEvent::Done);
                }
            }
        }
    }

    /// Whether the final result is already known (updates may still be
    /// queued before it).
    pub fn is_finished(&mut self) -> bool {
        if self.result.is_none() {
            if let Some(done) = &mut self.done {
                if let Ok(result) = done.try_recv() {
                    self.result = Some(result);
                    self.done = None;
                }
            }
        }
        self.result.is_some()
    }

    /// Frees the job's slot in the pool. A source calls it once it has
    /// taken in the final result (dropping the events does the same).
    pub fn release_slot(&mut self) {
        self.slot.take();
    }

    /// Drops every update queued now; returns how many were dropped.
    pub fn drop_queued(&mut self) -> usize {
        let mut dropped = usize::from(self.take_latest().is_some());
        while self.updates.try_recv().is_ok() {
            dropped += 1;
        }
        dropped
    }

    fn take_latest(&self) -> Option<Json> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn progress_beyond_the_queue_keeps_only_the_latest() {
        let (tx, mut rx) = channel(None);
        for step in 0..UPDATE_QUEUE + 5 {
            tx.progress(json!(step).into());
        }
        let mut seen = Vec::new();
        for _ in 0..=UPDATE_QUEUE {
            match rx.recv().await {
                Some(JobEvent::Progress(v)) => seen.push(v.to_value().as_u64().unwrap()),
                other => panic!("unexpected {other:?}"),
            }
        }
        let mut expected: Vec<u64> = (0..UPDATE_QUEUE as u64).collect();
        expected.push(UPDATE_QUEUE as u64 + 4);
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn a_full_queue_holds_the_stream_back_and_the_result_comes_last() {
        let (mut tx, mut rx) = channel(None);
        let cancel = CancellationToken::new();
        for n in 0..UPDATE_QUEUE {
            tx.stream(json!(n).into(), &cancel).await;
        }
        let blocked = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            tx.stream(json!("more").into(), &cancel),
        )
        .await;
        assert!(blocked.is_err(), "a full queue makes the sender wait");
        tx.finish(JobResult::output(json!("done").into()));
        drop(tx);
        assert!(rx.is_finished());
        let mut count = 0;
        loop {
            match rx.recv().await {
                Some(JobEvent::Stream(_)) => count += 1,
                Some(JobEvent::Done(result)) => {
                    assert_eq!(result, JobResult::output(json!("done").into()));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(count, UPDATE_QUEUE);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn dropping_the_queue_leaves_the_result() {
        let (mut tx, mut rx) = channel(None);
        tx.progress(json!(1).into());
        tx.progress(json!(2).into());
        tx.finish(JobResult::output(json!(3).into()));
        drop(tx);
        assert_eq!(rx.drop_queued(), 2);
        assert!(matches!(rx.recv().await, Some(JobEvent::Done(_))));
    }
}
