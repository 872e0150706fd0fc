//! Objects do not outlive their use: when the endpoint's retention deletes
//! finished jobs, the objects under `<endpoint>/<job id>/` (their offloaded
//! outputs and files) are deleted too, and inputs uploaded through
//! `POST /uploads` (under [`UPLOADS`]) are deleted once older than their
//! lifetime ([`upload_lifetime`]); neither with `--keep-objects`.
//!
//! Deleting happens on a task of its own ([`Deleter`]), each round
//! bounded in time, and a round of uploads in the objects it looks at
//! too, so a store that is slow or down never holds up the queue's upkeep
//! (the worker's heartbeat among it); what could not be deleted is
//! logged. The caller says when a round of uploads is due, so that one
//! process of those sharing a queue does each.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::path::Path;
use tokio::sync::mpsc;

use super::config::ObjectStoreConfig;
use super::store::Store;

/// The key prefix of uploaded inputs: `uploads/ENDPOINT/ID`.
pub const UPLOADS: &str = "uploads";

/// Rounds of deletes waiting at most; past them, the objects of the jobs
/// swept meanwhile are left in the store (and logged).
const WAITING_MAX: usize = 64;

/// Longest one round of deletes may take.
const DELETE_BUDGET: Duration = Duration::from_secs(30);

/// Uploads listed at once (one page of an S3 listing).
const UPLOADS_PAGE: usize = 1000;
/// Uploads looked at in one round at most; the next round goes on from
/// the last. With a round a minute, 14 million uploads a day are looked at.
const UPLOADS_PER_ROUND: usize = 10 * UPLOADS_PAGE;
/// Longest one round of uploads may take; one cut short goes on from its
/// last finished page next time.
const UPLOADS_BUDGET: Duration = Duration::from_secs(10);

/// How long uploads are kept: `--upload-lifetime`, else `--presign-expiry`
/// plus `longest_retention`, the longest any endpoint keeps a finished job.
/// A client may PUT an upload until its URL expires and name it in jobs
/// after that, and a job that failed can be retried while it is kept: the
/// default outlives both.
pub fn upload_lifetime(config: &ObjectStoreConfig, longest_retention: Duration) -> Duration {
    config
        .upload_lifetime
        .unwrap_or(config.presign_expiry + longest_retention)
}

/// How often a round of uploads is due: a tenth of their lifetime, from
/// a second (the upkeep's beat) to a minute, so an upload outlives its
/// lifetime by little.
fn uploads_every(lifetime: Duration) -> Duration {
    (lifetime / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Deletes the objects of swept jobs, and uploads past their lifetime, in
/// the background.
pub struct Deleter {
    jobs: mpsc::Sender<Vec<(String, String)>>,
    /// Rounds of uploads asked for; one waits at most.
    uploads: mpsc::Sender<()>,
    /// Spacing of the rounds of uploads; none with `--keep-objects`.
    uploads_every: Option<Duration>,
}

impl Deleter {
    /// Starts the task, which deletes uploads older than `upload_lifetime`
    /// when asked; it ends when the deleter is dropped, after the rounds
    /// of jobs already handed to it.
    pub fn start(store: Arc<Store>, upload_lifetime: Duration) -> Deleter {
        let (jobs, mut jobs_waiting) = mpsc::channel::<Vec<(String, String)>>(WAITING_MAX);
        let (uploads, mut uploads_waiting) = mpsc::channel::<()>(1);
        let keep = store.config.keep_objects;
        if !keep {
            tracing::info!(
                "uploads (POST /uploads) are deleted {} after they were put in the store (--upload-lifetime)",
                humantime::format_duration(upload_lifetime)
            );
        }
        let mut expiry = UploadExpiry {
            lifetime: upload_lifetime,
            after: None,
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    jobs = jobs_waiting.recv() => match jobs {
                        Some(jobs) => delete_jobs(&store, &jobs).await,
                        None => return,
                    },
                    Some(()) = uploads_waiting.recv() => expiry.round(&store).await,
                }
            }
        });
        Deleter {
            jobs,
            uploads,
            uploads_every: (!keep).then(|| uploads_every(upload_lifetime)),
        }
    }

    /// Hands the objects of `jobs` (endpoint, job id), just removed from
    /// the queue, to the task; never waits.
    pub fn delete(&self, jobs: Vec<(String, String)>) {
        if jobs.is_empty() {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(jobs)) = self.jobs.try_send(jobs) {
            tracing::warn!(
                "the objects of {} jobs past their retention are left in the store: earlier deletes are still waiting (is the store slow or down?)",
                jobs.len()
            );
        }
    }

    /// How often a round of uploads is due, among all the processes that
    /// share a queue; none with `--keep-objects`.
    pub fn uploads_every(&self) -> Option<Duration> {
        self.uploads_every
    }

    /// Hands a round of deleting uploads past their lifetime to the task;
    /// never waits. A round already waiting is enough.
    pub fn expire_uploads(&self) {
        if self.uploads_every.is_some() {
            let _ = self.uploads.try_send(());
        }
    }
}

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

/// A pass over the uploads, a round at a time.
struct UploadExpiry {
    lifetime: Duration,
    /// Where the next round lists from: after the last upload looked at
    /// (none: from the first).
    after: Option<Path>,
}

impl UploadExpiry {
    /// Deletes the uploads older than their lifetime among the next
    /// [`UPLOADS_PER_ROUND`].
    async fn round(&mut self, store: &Store) {
        let mut deleted = 0;
        let lifetime_ms = i64::try_from(self.lifetime.as_millis()).unwrap_or(i64::MAX);
        let cutoff = unix_ms(SystemTime::now()).saturating_sub(lifetime_ms);
        let pages = self.pages(store, cutoff, &mut deleted);
        match tokio::time::timeout(UPLOADS_BUDGET, pages).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                "uploads past their lifetime were not deleted from the object store (tried again next round): {e}"
            ),
            Err(_) => tracing::warn!(
                "a round of deleting uploads past their lifetime took over {}s; the next goes on from where it stopped",
                UPLOADS_BUDGET.as_secs()
            ),
        }
        if deleted > 0 {
            tracing::info!(
                "deleted {deleted} uploads older than their lifetime of {}",
                humantime::format_duration(self.lifetime)
            );
        }
    }

    /// Lists and deletes a page at a time; the place in the pass moves
    /// on only once a page's deletes are done.
    async fn pages(
        &mut self,
        store: &Store,
        cutoff_ms: i64,
        deleted: &mut usize,
    ) -> Result<(), object_store::Error> {
        let mut looked_at = 0;
        while looked_at < UPLOADS_PER_ROUND {
            let page = store
                .list_after(&[UPLOADS], self.after.as_ref(), UPLOADS_PAGE)
                .await?;
            looked_at += page.len();
            let expired: Vec<Path> = page
                .iter()
                .filter(|meta| meta.last_modified.timestamp_millis() <= cutoff_ms)
                .map(|meta| meta.location.clone())
                .collect();
            if !expired.is_empty() {
                *deleted += store.delete_paths(expired).await?;
            }
            if page.len() < UPLOADS_PAGE {
                // The pass is done; the next starts from the first.
                self.after = None;
                return Ok(());
            }
            self.after = page.last().map(|meta| meta.location.clone());
        }
        Ok(())
    }
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_of_uploads_come_every_tenth_of_their_lifetime_within_a_second_and_a_minute() {
        let secs = Duration::from_secs;
        assert_eq!(uploads_every(secs(7 * 86400)), secs(60));
        assert_eq!(uploads_every(secs(300)), secs(30));
        assert_eq!(uploads_every(secs(12)), Duration::from_millis(1200));
        assert_eq!(uploads_every(secs(1)), secs(1));
    }
}
