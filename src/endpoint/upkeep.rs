//! The queue's upkeep, once a second for the life of the endpoint source:
//! this worker's heartbeat for `/health`, then the sweep (lost leases
//! queued again, ttls ended, finished jobs deleted after their retention),
//! whose deleted jobs' objects go to the object store's [`Deleter`] task,
//! so a slow or down store never holds up the next beat.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::endpoint::queue::{log_failure, Queue, WorkerInfo};
use crate::metrics::Metrics;
use crate::objects::retention::Deleter;
use crate::objects::store::Store;
use crate::pool::Pool;

/// How often upkeep runs.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// What the upkeep task works on.
pub(super) struct Upkeep {
    pub queue: Arc<dyn Queue>,
    /// This worker and its pool, for its heartbeat; none for a process
    /// that runs no jobs (`--api-only`).
    pub worker: Option<(WorkerInfo, Arc<Pool>)>,
    /// The sweep's answer also tells an API-only process's readiness
    /// whether the database answers.
    pub metrics: Arc<Metrics>,
    pub objects: Option<Arc<Store>>,
}

impl Upkeep {
    /// Runs until `stop` is cancelled.
    pub(super) async fn run(self, stop: CancellationToken) {
        let deleter = self.objects.clone().map(Deleter::start);
        let mut ticks = tokio::time::interval(UPKEEP_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.cancelled() => return,
            }
            self.beat().await;
            self.sweep(deleter.as_ref()).await;
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

    async fn sweep(&self, deleter: Option<&Deleter>) {
        let swept = self.queue.sweep().await;
        self.metrics.database_answered(swept.is_ok());
        match swept {
            Ok(swept) => {
                if let Some(deleter) = deleter {
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
}
