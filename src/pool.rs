//! The pool of handler actors and its free-slot accounting.
//!
//! A slot is room for one job: `concurrency × jobs-per-handler` in all. A
//! source first waits for free slots ([`Pool::free_slots`]), takes at most
//! that many jobs from its queue, and submits each with its slot; the slot
//! comes back when the job's result is out. Free slots are also limited to
//! the room of handlers that are ready now (each actor reports its own from
//! its state), so a worker never takes a job it cannot start: nothing is
//! taken while every handler is starting or restarting. Submitted jobs wait
//! in one queue that every actor pulls from when it is ready and has room,
//! so a restarting handler never holds up a job another handler could run.
//!
//! An actor task that panics is a bug; it is reported as a fatal error so
//! the worker drains and exits instead of waiting for an actor that is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::FatalError;
use crate::handler::config::{HandlerConfig, Mode};
use crate::handler::{actor, oneshot, ActorContext, FailureStreak, RoomShare};
use crate::job::Identity;
use crate::job::{
    events, FailureKind, Job, JobEvents, JobFailure, JobResult, JobTicket, Outcome, Registry,
};
use crate::metrics::{Metrics, PoolView};

/// Longest time spent at shutdown killing what handlers left behind.
const ESCAPED_KILL_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Room for one job, held from take to result.
pub struct Slot(OwnedSemaphorePermit);

/// A job id that is already in flight was submitted again.
#[derive(Debug, thiserror::Error)]
#[error("job {0} is already running on this worker; the duplicate is ignored")]
pub struct Duplicate(pub String);

/// The jobs in flight, by id, with the token that stops each.
struct InFlight {
    /// Each job's stop token and when it was submitted.
    jobs: Mutex<HashMap<String, (CancellationToken, Instant)>>,
    count: watch::Sender<usize>,
    metrics: Arc<Metrics>,
}

impl Registry for InFlight {
    fn finished(&self, id: &str, result: &JobResult) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let submitted = jobs.remove(id).map(|(_, at)| at);
        self.count.send_replace(jobs.len());
        self.metrics.set_in_flight(jobs.len());
        if result.outcome == Outcome::Cancelled {
            self.metrics.job_cancelled();
        } else {
            let took = submitted.map(|at| at.elapsed()).unwrap_or_default();
            self.metrics.job_done(result.is_success(), took);
        }
    }
}

/// The handler actors and the queue that feeds them.
pub struct Pool {
    queue: async_channel::Sender<JobTicket>,
    /// The queue's receiving end, kept to fail what is left at shutdown.
    queued: async_channel::Receiver<JobTicket>,
    slots: Arc<Semaphore>,
    capacity: usize,
    /// How many more jobs the ready handlers could start now.
    room: Arc<watch::Sender<usize>>,
    in_flight: Arc<InFlight>,
    identity: Arc<Identity>,
    /// Cancelled to stop the handlers gracefully once no job is in flight.
    stop: CancellationToken,
    /// Cancelled to kill every handler now and fail the jobs they hold.
    force: CancellationToken,
    actors: TaskTracker,
    pub metrics: Arc<Metrics>,
}

impl Pool {
    /// Starts `concurrency` handler actors. A handler that can never start
    /// is reported on `fatal`.
    pub fn start(
        config: HandlerConfig,
        identity: Arc<Identity>,
        metrics: Arc<Metrics>,
        fatal: mpsc::UnboundedSender<FatalError>,
        parent: &CancellationToken,
    ) -> Arc<Pool> {
        let capacity = config.concurrency * config.jobs_per_handler;
        if let Some(spill) = &config.spill {
            crate::handler::spill::remove_leftovers(&spill.dir);
        }
        let (queue_tx, queue_rx) = async_channel::unbounded();
        // Both end with the run at the latest.
        let stop = parent.child_token();
        let force = parent.child_token();
        let actors = TaskTracker::new();
        let config = Arc::new(config);
        let room = Arc::new(watch::channel(0usize).0);
        let slots = Arc::new(Semaphore::new(capacity));
        let (waiting, ready_room, free) = (queue_rx.clone(), room.clone(), slots.clone());
        metrics.pool_started(capacity, move || PoolView {
            queued: waiting.len(),
            room: (*ready_room.borrow()).saturating_sub(waiting.len()),
            free_slots: free.available_permits(),
        });
        let failures = Arc::new(FailureStreak::default());
        for index in 0..config.concurrency {
            let ctx = ActorContext {
                index,
                config: config.clone(),
                identity: identity.clone(),
                queue: queue_rx.clone(),
                fatal: fatal.clone(),
                stop: stop.clone(),
                force: force.clone(),
                metrics: metrics.clone(),
                room: RoomShare::new(room.clone()),
                failures: failures.clone(),
            };
            let task = match config.mode {
                Mode::Worker => tokio::spawn(actor::run(ctx)),
                Mode::Oneshot => tokio::spawn(oneshot::run(ctx)),
            };
            actors.spawn(watch_actor(index, task, fatal.clone()));
        }
        actors.close();
        Arc::new(Pool {
            queue: queue_tx,
            queued: queue_rx,
            slots,
            capacity,
            room,
            in_flight: Arc::new(InFlight {
                jobs: Mutex::default(),
                count: watch::channel(0).0,
                metrics: metrics.clone(),
            }),
            identity,
            stop,
            force,
            actors,
            metrics,
        })
    }

    /// Total number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Waits until at least one slot is free and a ready handler has room,
    /// then returns every free slot that ready handlers have room for.
    pub async fn free_slots(&self) -> Vec<Slot> {
        let room = self.ready_room().await;
        let first = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        let mut slots = vec![Slot(first)];
        while slots.len() < room {
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                break;
            };
            slots.push(Slot(permit));
        }
        slots
    }

    /// Waits until ready handlers have room for a job beyond those already
    /// queued for them; returns that room.
    async fn ready_room(&self) -> usize {
        let mut room = self.room.subscribe();
        loop {
            let free = room.borrow_and_update().saturating_sub(self.queue.len());
            if free > 0 {
                return free;
            }
            // The pool holds the sender, so the channel never closes.
            let _ = room.changed().await;
        }
    }

    /// Hands a job to the handlers. Its events, ending with exactly one
    /// `Done`, arrive on the returned receiver.
    pub fn submit(&self, slot: Slot, job: Job) -> Result<JobEvents, Duplicate> {
        let cancel = CancellationToken::new();
        {
            let mut jobs = self
                .in_flight
                .jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if jobs.contains_key(&job.id) {
                return Err(Duplicate(job.id));
            }
            jobs.insert(job.id.clone(), (cancel.clone(), Instant::now()));
            self.in_flight.count.send_replace(jobs.len());
            self.metrics.set_in_flight(jobs.len());
        }
        let (tx, rx) = events::channel(Some(slot.0));
        let ticket = JobTicket::new(
            job,
            cancel,
            tx,
            self.identity.clone(),
            self.in_flight.clone(),
        );
        // If every actor is gone the queue is closed; the returned ticket is
        // dropped here and reports the failure itself.
        let _ = self.queue.try_send(ticket);
        Ok(rx)
    }

    /// Stops one job: its handler is stopped and nothing is reported for
    /// it. Returns whether the job was in flight.
    pub fn cancel(&self, id: &str) -> bool {
        let jobs = self
            .in_flight
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match jobs.get(id) {
            Some((token, _)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Ids of the jobs in flight.
    pub fn in_flight_ids(&self) -> Vec<String> {
        let jobs = self
            .in_flight
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<String> = jobs.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The jobs in flight with how long ago each was submitted, oldest
    /// first.
    pub fn in_flight_ages(&self) -> Vec<(String, std::time::Duration)> {
        let jobs = self
            .in_flight
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut ages: Vec<_> = jobs
            .iter()
            .map(|(id, (_, since))| (id.clone(), since.elapsed()))
            .collect();
        ages.sort_by_key(|(_, age)| std::cmp::Reverse(*age));
        ages
    }

    /// Number of jobs in flight.
    pub fn in_flight(&self) -> usize {
        *self.in_flight.count.borrow()
    }

    /// Resolves when no job is in flight.
    pub async fn idle(&self) {
        let mut count = self.in_flight.count.subscribe();
        let _ = count.wait_for(|n| *n == 0).await;
    }

    /// Kills every handler now; jobs they hold, and jobs still waiting for
    /// a handler, fail as shut down.
    pub fn force(&self) {
        self.force.cancel();
        self.fail_queued("the worker was shut down (forced) before the job started");
    }

    /// Closes the queue and fails every job still in it.
    fn fail_queued(&self, why: &str) {
        self.queue.close();
        while let Ok(ticket) = self.queued.try_recv() {
            ticket.fail(JobFailure::new(FailureKind::WorkerShutdown, why));
        }
    }

    /// Stops the handlers (gracefully unless forced) and waits until every
    /// handler process is gone. Jobs still queued fail as shut down.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.queue.close();
        self.actors.wait().await;
        // Descendants that escaped their handler's group (a daemon started
        // with setsid) were re-parented to jobpipe; they go with it.
        crate::os::kill_escaped(&self.identity.worker_id, ESCAPED_KILL_LIMIT).await;
        self.fail_queued("the worker shut down before the job started");
    }
}

/// Waits for one actor task; a panic in it is reported as a fatal error
/// rather than leaving the worker waiting for an actor that is gone.
async fn watch_actor(
    index: usize,
    task: tokio::task::JoinHandle<()>,
    fatal: mpsc::UnboundedSender<FatalError>,
) {
    if let Err(error) = task.await {
        if error.is_panic() {
            let _ = fatal.send(FatalError::Internal(format!(
                "the actor of handler {index} panicked ({}); this is a bug in jobpipe, please report it",
                panic_message(error)
            )));
        }
    }
}

fn panic_message(error: JoinError) -> String {
    let payload = error.into_panic();
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "no message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_actor_is_a_fatal_error() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async { panic!("boom") });
        watch_actor(3, task, tx).await;
        let error = rx.recv().await.expect("a fatal error");
        let text = error.to_string();
        assert!(text.contains("handler 3 panicked (boom)"), "{text}");
        assert_eq!(error.exit_code(), crate::error::exit::INTERNAL);
    }
}
