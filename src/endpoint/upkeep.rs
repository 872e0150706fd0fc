//! The queue's upkeep, once a second for the life of the endpoint source:
//! this worker's heartbeat for `/health`, then the sweep (lost leases
//! queued again, ttls ended, finished jobs deleted after their retention),
//! whose deleted jobs' objects go to the object store's [`Deleter`] task,
//! so a slow or down store never holds up the next beat; and, with a
//! store, now and then a round of deleting uploads past their lifetime,
//! claimed through the queue so that one process of those sharing it
//! does each round.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::endpoint::queue::{log_failure, Queue, WorkerInfo};
use crate::metrics::Metrics;
use crate::objects::retention::Deleter;
use crate::pool::Pool;

/// How often upkeep runs.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);
/// The name of the chore of deleting uploads past their lifetime, as the
/// queue records its rounds.
const EXPIRE_UPLOADS: &str = "expire-uploads";

/// What the upkeep task works on.
pub(super) struct Upkeep {
    pub queue: Arc<dyn Queue>,
    /// This worker and its pool, for its heartbeat; none for a process
    /// that runs no jobs (`--api-only`).
    pub worker: Option<(WorkerInfo, Arc<Pool>)>,
    /// The sweep's answer also tells an API-only process's readiness
    /// whether the database answers.
    pub metrics: Arc<Metrics>,
    /// Deletes objects in the background; none without an object store.
    pub deleter: Option<Deleter>,
}

impl Upkeep {
    /// Runs until `stop` is cancelled.
    pub(super) async fn run(self, stop: CancellationToken) {
        let mut uploads_due = Instant::now();
        let mut ticks = tokio::time::interval(UPKEEP_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.cancelled() => return,
            }
            self.beat().await;
            self.sweep().await;
            self.claim_uploads_round(&mut uploads_due).await;
        }
    }

    async fn beat(&self) {
        if let Some((me, pool)) = &self.worker {
            let beat = self
                .queue
                .heartbeat(me, pool.capacity(), pool.in_flight())
                .await;
            if let Err(e) = beat {
                log_failure("the worker heartbeat", &e);
            }
        }
    }

    async fn sweep(&self) {
        let swept = self.queue.sweep().await;
        self.metrics.database_answered(swept.is_ok());
        match swept {
            Ok(swept) => {
                if let Some(deleter) = &self.deleter {
                    deleter.delete(swept.deleted_jobs);
                }
                if swept.requeued + swept.ended > 0 {
                    tracing::info!(
                        "queue upkeep: {} jobs queued again after losing their worker, {} ended (no attempts left or ttl passed)",
                        swept.requeued,
                        swept.ended
                    );
                }
            }
            Err(e) => log_failure("queue upkeep", &e),
        }
    }

    /// Asks the queue, once per the rounds' spacing, whether the next
    /// round of deleting uploads past their lifetime is this process's.
    /// The queue grants one round per nine tenths of that spacing among
    /// all the processes asking, so a process's own next ask, a spacing
    /// later, is never refused for being a moment early.
    async fn claim_uploads_round(&self, due: &mut Instant) {
        let Some(deleter) = &self.deleter else {
            return;
        };
        let Some(every) = deleter.uploads_every() else {
            return;
        };
        if Instant::now() < *due {
            return;
        }
        *due = Instant::now() + every;
        match self.queue.claim_round(EXPIRE_UPLOADS, every * 9 / 10).await {
            Ok(true) => deleter.expire_uploads(),
            Ok(false) => {}
            Err(e) => log_failure("claiming a round of deleting expired uploads", &e),
        }
    }
}
