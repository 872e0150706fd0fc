//! A job's objects go with it: when the endpoint's retention deletes
//! finished jobs, the objects under `<endpoint>/<job id>/` (its offloaded
//! output and files) are deleted too, unless `--keep-objects`.
//!
//! Deleting happens on a task of its own ([`Deleter`]), each round
//! bounded in time, so a store that is slow or down never holds up the
//! queue's upkeep (the worker's heartbeat among it); what could not be
//! deleted is logged by prefix.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::store::Store;

/// Rounds of deletes waiting at most; past them, the objects of the jobs
/// swept meanwhile are left in the store (and logged).
const WAITING_MAX: usize = 64;

/// Deletes the objects of swept jobs in the background.
pub struct Deleter(mpsc::Sender<Vec<(String, String)>>);

impl Deleter {
    /// Starts the task; it ends when the deleter is dropped, after the
    /// rounds already handed to it.
    pub fn start(store: Arc<Store>) -> Deleter {
        let (sender, mut receiver) = mpsc::channel::<Vec<(String, String)>>(WAITING_MAX);
        tokio::spawn(async move {
            while let Some(jobs) = receiver.recv().await {
                delete_jobs(&store, &jobs).await;
            }
        });
        Deleter(sender)
    }

    /// Hands the objects of `jobs` (endpoint, job id), just removed from
    /// the queue, to the task; never waits.
    pub fn delete(&self, jobs: Vec<(String, String)>) {
        if jobs.is_empty() {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(jobs)) = self.0.try_send(jobs) {
            tracing::warn!(
                "the objects of {} jobs past their retention are left in the store: earlier deletes are still waiting (is the store slow or down?)",
                jobs.len()
            );
        }
    }
}

/// Longest one round of deletes may take.
const DELETE_BUDGET: Duration = Duration::from_secs(30);

/// Deletes the objects of `jobs` (endpoint, job id) just removed from the queue.
pub async fn delete_jobs(store: &Store, jobs: &[(String, String)]) {
    if store.config.keep_objects || jobs.is_empty() {
        return;
    }
    let work = async {
        let mut deleted = 0;
        for (endpoint, id) in jobs {
            match store.delete_under(&[endpoint, id]).await {
                Ok(n) => deleted += n,
                Err(e) => tracing::warn!(
                    job_id = %id,
                    "the job's objects under {endpoint}/{id}/ were not deleted with it: {e}"
                ),
            }
        }
        deleted
    };
    match tokio::time::timeout(DELETE_BUDGET, work).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("deleted {n} objects of {} jobs past their retention", jobs.len()),
        Err(_) => tracing::warn!(
            "deleting the objects of {} jobs past their retention took over {}s; the rest are left in the store",
            jobs.len(),
            DELETE_BUDGET.as_secs()
        ),
    }
}
