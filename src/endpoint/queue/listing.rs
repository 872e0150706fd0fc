//! What the job list, a job's whole record and the worker list read from
//! a store: the filter and page of `GET /v2/{endpoint}/jobs`, a row of
//! it, `GET /v2/{endpoint}/jobs/{id}` and `GET /v2/{endpoint}/workers`.
//!
//! The list is newest first and paged by a key, not an offset: a page
//! ends with a cursor naming its last job by `(created_at, id)`, and the
//! next page starts strictly after it, so jobs added meanwhile (which are
//! newer) never shift a page and every job is seen once. Both stores read
//! it from one index, `jobs_list (endpoint, created_at, id)`, backwards.

use super::{AttemptRecord, JobRecord, JobStatus};
use crate::json::Json;

/// The most jobs one page holds.
pub const PAGE_MAX: usize = 500;

/// Which of an endpoint's jobs a page lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    /// Only jobs submitted with this key's name.
    pub tenant: Option<String>,
    /// Only jobs created at or after this time (ms since the epoch).
    pub since: Option<i64>,
    /// Only jobs before this one in the list: the cursor of the page
    /// before.
    pub after: Option<Cursor>,
}

/// A place in the list: the last job of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: String,
}

impl Cursor {
    /// The text a client sends back as `cursor`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at, self.id)
    }

    /// The cursor `text` names, if it is one.
    pub fn decode(text: &str) -> Option<Cursor> {
        let (created_at, id) = text.split_once('.')?;
        Some(Cursor {
            created_at: created_at.parse().ok()?,
            id: id.to_owned(),
        })
    }

    /// Where a first page starts: before every job.
    pub(crate) fn start() -> Cursor {
        Cursor {
            created_at: i64::MAX,
            id: String::new(),
        }
    }
}

/// A job as the list shows it: no input or output, which may be large.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSummary {
    pub id: String,
    pub status: JobStatus,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub attempts: u32,
    pub priority: i32,
    pub worker_id: Option<String>,
    pub error: Option<String>,
    pub tenant: Option<String>,
}

impl JobSummary {
    /// Where the next page starts if this is the last job of a page.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id.clone(),
        }
    }
}

/// Everything kept of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDetail {
    /// What `/status` shows.
    pub record: JobRecord<Json>,
    /// The job object as the handler receives it (`id`, `input`, ...).
    pub payload: Json,
    pub webhook: Option<String>,
    pub priority: i32,
    pub max_attempts: u32,
    /// When the job was (last) queued, or may start if delayed.
    pub queued_at: i64,
    /// Webhook posts of the job not yet delivered.
    pub webhooks_pending: u64,
    pub tenant: Option<String>,
    /// Its ended attempts, first first.
    pub history: Vec<AttemptRecord>,
    /// Its first [`PARTIALS_SHOWN`] stream partials, read or not (reading
    /// them here does not take them from `/stream`'s reader).
    pub partials: Vec<Json>,
    /// How many stream partials it has in all.
    pub partials_total: u64,
}

/// The stream partials a job's record shows, at most.
pub const PARTIALS_SHOWN: usize = 100;

/// A worker process as `GET /v2/{endpoint}/workers` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    pub id: String,
    pub hostname: String,
    pub endpoints: Vec<String>,
    pub version: String,
    /// Handler slots, and how many are running a job.
    pub slots: u32,
    pub busy: u32,
    pub started_at: i64,
    pub seen_at: i64,
    /// Not heard from for [`WORKER_GONE_MS`]: its jobs' leases run out
    /// and they are queued again. Forgotten after [`WORKER_FORGET_MS`].
    pub lost: bool,
    /// The jobs of the endpoint it holds in progress now.
    pub current_jobs: Vec<String>,
}

/// A job that ended, as the dashboard's figures count it
/// ([`super::Queue::ended_since`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub endpoint: String,
    pub status: JobStatus,
    /// When it ended (ms since the epoch, by the database's clock).
    pub finished_at: i64,
    /// From when it could first start (queued, or the end of its delay or
    /// back-off) to its last start; none if it never started.
    pub wait_ms: Option<i64>,
    /// Its last attempt's run time; none if it never started.
    pub run_ms: Option<i64>,
}

/// How far behind the database's clock [`super::Queue::ended_since`]
/// reads: a job's end is stamped a little before its transaction
/// commits, so the newest moments are read once they have settled.
pub const ENDED_SETTLE_MS: i64 = 2_000;
/// Where a first [`super::Queue::ended_since`] starts: this long ago.
pub const ENDED_BACKFILL_MS: i64 = 60 * 60 * 1000;

/// What an endpoint's queue holds now, read from the partial indexes of
/// queued and leased jobs only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Depth {
    pub waiting: u64,
    pub running: u64,
    /// How long the oldest job that may start now has waited (ms).
    pub oldest_wait_ms: Option<i64>,
}

/// A worker not heard from for this long is lost: not counted in
/// `/health`, shown as lost in the list.
pub const WORKER_GONE_MS: i64 = 30_000;
/// A lost worker is forgotten (its row deleted) after this long.
pub const WORKER_FORGET_MS: i64 = 10 * 60 * 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_and_refuse_other_text() {
        let cursor = Cursor {
            created_at: 1_700_000_000_123,
            id: "6a38cdd7-063f-496b-af17-5aa779921ee0".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in ["", "x.y", "12", ".id"] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }
}
