//! Job ids: which ones can be answered, and which ones this worker still
//! owes a result for.
//!
//! An id is put into result URLs as one path segment and into a header, so
//! an id that is not plain printable ASCII, or that is too long, fails its
//! job with an error that says so (the result is still posted, by the
//! percent-encoded URL). The ids `.` and `..` cannot be a path segment at
//! all (URL parsers treat even their encoded forms as "this" and "parent"
//! directory), so jobs with them cannot be answered and are only logged.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// Longest job id jobpipe accepts.
pub const MAX_ID_LEN: usize = 256;

/// What is wrong with a job id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdProblem {
    /// The job can be answered, with this error.
    Answerable(String),
    /// No URL can name the job; it can only be logged.
    Unanswerable(String),
}

/// Checks a job id as the runner needs it.
pub fn check_id(id: &str) -> Result<(), IdProblem> {
    if id.is_empty() || id == "." || id == ".." {
        return Err(IdProblem::Unanswerable(format!(
            "the job id {id:?} cannot be named in a result URL"
        )));
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdProblem::Answerable(format!(
            "the job id is {} bytes long; at most {MAX_ID_LEN} are accepted",
            id.len()
        )));
    }
    if let Some(c) = id.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(IdProblem::Answerable(format!(
            "the job id {id:?} contains {c:?}; ids must be printable ASCII without spaces"
        )));
    }
    Ok(())
}

/// The final results not yet delivered (in memory or in the spool), by job
/// id, with their count for whoever waits for it to fall.
pub struct Undelivered {
    ids: Mutex<BTreeMap<String, usize>>,
    load: watch::Sender<Load>,
}

/// How many results are on their way, and how large they are together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub count: usize,
    pub bytes: usize,
}

impl Default for Undelivered {
    fn default() -> Self {
        Undelivered {
            ids: Mutex::default(),
            load: watch::channel(Load::default()).0,
        }
    }
}

impl Undelivered {
    /// A result of `bytes` starts on its way.
    pub fn add(&self, id: &str, bytes: usize) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        *ids.entry(id.to_owned()).or_default() += 1;
        self.load.send_modify(|load| {
            load.count += 1;
            load.bytes += bytes;
        });
    }

    /// A result added with the same `bytes` has been settled.
    pub fn remove(&self, id: &str, bytes: usize) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = ids.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                ids.remove(id);
            }
            self.load.send_modify(|load| {
                load.count -= 1;
                load.bytes = load.bytes.saturating_sub(bytes);
            });
        }
    }

    pub fn ids(&self) -> Vec<String> {
        let ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.keys().cloned().collect()
    }

    pub fn load(&self) -> Load {
        *self.load.borrow()
    }

    /// Resolves once the load fits: fewer than `max` results and at most
    /// `max_bytes` bytes of them.
    pub async fn fits(&self, max: usize, max_bytes: usize) {
        let mut load = self.load.subscribe();
        let _ = load.wait_for(|load| load.fits(max, max_bytes)).await;
    }
}

impl Load {
    pub fn fits(&self, max: usize, max_bytes: usize) -> bool {
        self.count < max && self.bytes <= max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_fits_below_both_bounds() {
        let load = |count, bytes| Load { count, bytes };
        assert!(load(0, 0).fits(1, 100));
        assert!(!load(1, 0).fits(1, 100));
        assert!(load(1, 100).fits(2, 100));
        assert!(!load(1, 101).fits(2, 100));
        assert!(load(0, 0).fits(2, 0));
    }

    #[test]
    fn ids_are_sorted_by_what_can_be_done() {
        assert_eq!(check_id("job-1:a/b?c"), Ok(()));
        assert!(matches!(check_id(".."), Err(IdProblem::Unanswerable(_))));
        assert!(matches!(check_id("."), Err(IdProblem::Unanswerable(_))));
        assert!(matches!(check_id("a\nb"), Err(IdProblem::Answerable(_))));
        assert!(matches!(check_id("a b"), Err(IdProblem::Answerable(_))));
        assert!(matches!(check_id("é"), Err(IdProblem::Answerable(_))));
        assert!(matches!(
            check_id(&"x".repeat(MAX_ID_LEN + 1)),
            Err(IdProblem::Answerable(_))
        ));
    }

    #[test]
    fn undelivered_counts_each_result() {
        let u = Undelivered::default();
        u.add("a", 10);
        u.add("a", 20);
        u.add("b", 5);
        assert_eq!(u.load().count, 3);
        assert_eq!(u.ids(), ["a", "b"]);
        assert_eq!(u.load().bytes, 35);
        u.remove("a", 10);
        assert_eq!(u.ids(), ["a", "b"]);
        u.remove("a", 20);
        u.remove("zzz", 100);
        assert_eq!(u.ids(), ["b"]);
        assert_eq!(u.load(), Load { count: 1, bytes: 5 });
    }
}
