//! Who waits for which job's end: `/runsync` callers hear of their own
//! job's end, not of every job's.
//!
//! The queue announces each end to every subscriber; a caller that
//! subscribed itself would be woken by every job's end (with 32 callers
//! waiting, 32 wake-ups and 32 copies of the id per job). One task here
//! listens instead and wakes the caller registered for the job that ended.
//! When events may have been missed (a lagging subscription, or a queue
//! that asks its listeners to poll), every caller is told to look at its
//! job itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::endpoint::queue::{Queue, QueueEvent};

/// What a waiting caller is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Its job ended.
    Ended,
    /// Events may have been missed: look at the job.
    LookAgain,
}

/// Callers waiting, by job id; each has a serial number (two callers may
/// wait for the same job: a repeated `Idempotency-Key`).
type Waiting = HashMap<String, Vec<(u64, mpsc::Sender<Heard>)>>;

/// The registry of waiting callers. See the module docs.
pub struct Ends {
    waiting: Arc<Mutex<(u64, Waiting)>>,
}

/// One caller's registration; it ends when dropped.
pub struct Watch {
    waiting: Weak<Mutex<(u64, Waiting)>>,
    id: String,
    serial: u64,
    heard: mpsc::Receiver<Heard>,
}

impl Ends {
    /// Starts the task that hears `queue`'s events until `stop`.
    pub fn start(queue: &Arc<dyn Queue>, stop: CancellationToken) -> Ends {
        Ends::hearing(queue.subscribe(), stop)
    }

    fn hearing(events: broadcast::Receiver<QueueEvent>, stop: CancellationToken) -> Ends {
        let waiting = Arc::new(Mutex::new((0, Waiting::new())));
        tokio::spawn(dispatch(events, Arc::downgrade(&waiting), stop));
        Ends { waiting }
    }

    /// Registers a caller for job `id`'s end; register before the job can
    /// end (before submitting it), so its end cannot be missed.
    pub fn watch(&self, id: &str) -> Watch {
        // One pending signal is enough: any later one says no more.
        let (tell, heard) = mpsc::channel(1);
        let mut waiting = lock(&self.waiting);
        let serial = waiting.0;
        waiting.0 += 1;
        waiting
            .1
            .entry(id.to_owned())
            .or_default()
            .push((serial, tell));
        Watch {
            waiting: Arc::downgrade(&self.waiting),
            id: id.to_owned(),
            serial,
            heard,
        }
    }
}

impl Watch {
    /// The next thing heard about the job; nothing more once the
    /// listening task has stopped (at shutdown: the caller's own deadline
    /// and rechecks end its wait).
    pub async fn heard(&mut self) -> Heard {
        match self.heard.recv().await {
            Some(heard) => heard,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let Some(waiting) = self.waiting.upgrade() else {
            return;
        };
        let mut waiting = lock(&waiting);
        if let Some(callers) = waiting.1.get_mut(&self.id) {
            callers.retain(|(serial, _)| *serial != self.serial);
            if callers.is_empty() {
                waiting.1.remove(&self.id);
            }
        }
    }
}

fn lock(waiting: &Mutex<(u64, Waiting)>) -> std::sync::MutexGuard<'_, (u64, Waiting)> {
    waiting.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hands the queue's events to the callers they concern.
async fn dispatch(
    mut events: broadcast::Receiver<QueueEvent>,
    waiting: Weak<Mutex<(u64, Waiting)>>,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = stop.cancelled() => return,
        };
        let Some(waiting) = waiting.upgrade() else {
            return;
        };
        let waiting = lock(&waiting);
        match event {
            Ok(QueueEvent::Finished(id)) => {
                for (_, tell) in waiting.1.get(&id).into_iter().flatten() {
                    let _ = tell.try_send(Heard::Ended);
                }
            }
            Ok(QueueEvent::Poll) | Err(RecvError::Lagged(_)) => {
                for (_, tell) in waiting.1.values().flatten() {
                    let _ = tell.try_send(Heard::LookAgain);
                }
            }
            Ok(_) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ends(events: &broadcast::Sender<QueueEvent>) -> Ends {
        Ends::hearing(events.subscribe(), CancellationToken::new())
    }

    async fn nothing_heard(watch: &mut Watch) -> bool {
        tokio::time::timeout(Duration::from_millis(100), watch.heard())
            .await
            .is_err()
    }

    /// A job's end wakes its callers only; a poll wakes everyone; a
    /// caller that stops waiting is forgotten.
    #[tokio::test]
    async fn an_end_wakes_only_the_callers_of_that_job() {
        let events = broadcast::channel(16).0;
        let ends = ends(&events);
        let (mut a, mut a_again, mut b) = (ends.watch("a"), ends.watch("a"), ends.watch("b"));
        events.send(QueueEvent::Finished("a".into())).unwrap();
        assert_eq!(a.heard().await, Heard::Ended);
        assert_eq!(a_again.heard().await, Heard::Ended);
        assert!(nothing_heard(&mut b).await);
        events.send(QueueEvent::Queued).unwrap();
        assert!(nothing_heard(&mut b).await);
        events.send(QueueEvent::Poll).unwrap();
        assert_eq!(b.heard().await, Heard::LookAgain);
        assert_eq!(a.heard().await, Heard::LookAgain);
        drop((a, a_again));
        assert_eq!(lock(&ends.waiting).1.len(), 1);
        drop(b);
        assert!(lock(&ends.waiting).1.is_empty());
    }
}
