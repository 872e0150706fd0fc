//! A job's objects go with it: when the endpoint's retention deletes
//! finished jobs, the objects under `<endpoint>/<job id>/` (its offloaded
//! output and files) are deleted too, unless `--keep-objects`.
//!
//! Deleting is bounded in time so that a store that is down does not hold
//! up the queue's upkeep; what could not be deleted is logged by prefix.

use std::time::Duration;

use super::store::Store;

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
