//! The queue stores, registered by URL scheme: the one place that knows
//! which `--queue` URLs exist, how each is parsed and opened, and which
//! are shared by many processes. A new store is a module beside this one
//! and an arm in each match here.

use std::path::PathBuf;
use std::sync::Arc;

use super::postgres::{PgQueue, PgTarget};
use super::sqlite::SqliteQueue;
use tokio_util::sync::CancellationToken;

use super::{Queue, QueueError};
use crate::error::{ConfigError, FatalError};

/// Where the embedded queue lives unless `--queue` says otherwise.
pub const DEFAULT_QUEUE: &str = "sqlite:/var/tmp/jobpipe/queue.db";

/// Whether `--queue` names a queue other processes can share (so a
/// process given it works for it even without `--serve-api`).
pub fn is_shared(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// Where the queue is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueLocation {
    Sqlite(PathBuf),
    /// Shared by every process pointed at it; shown without its password.
    Postgres(Box<PgTarget>),
}

impl QueueLocation {
    /// Opens the queue a configuration names, its tasks under `parent`; a queue that cannot be opened is
    /// a configuration error (exit 2).
    /// `spooled`: the jobs whose result this process's spool holds, whose
    /// leases an embedded queue keeps (a shared queue's leases run out on
    /// their own).
    pub async fn open(
        &self,
        parent: &CancellationToken,
        spooled: &[String],
    ) -> Result<Arc<dyn Queue>, FatalError> {
        match self {
            QueueLocation::Sqlite(path) => match SqliteQueue::open_keeping(path, spooled).await {
                Ok(queue) => Ok(Arc::new(queue)),
                Err(e) => Err(FatalError::Config(ConfigError::Invalid(format!(
                    "{e}; set --queue (JOBPIPE_QUEUE) to sqlite:PATH of a file this process may create and write"
                )))),
            },
            QueueLocation::Postgres(target) => match PgQueue::open_in((**target).clone(), parent).await {
                Ok(queue) => Ok(Arc::new(queue)),
                Err(e @ QueueError::Open { .. }) => Err(FatalError::Config(ConfigError::Invalid(format!(
                    "{e}; check the user, the password (in the URL or PGPASSWORD) and the database named in --queue (JOBPIPE_QUEUE)"
                )))),
                Err(e) => Err(FatalError::Internal(e.to_string())),
            },
        }
    }

    /// The location with at most `size` pooled connections, for the stores
    /// that pool them.
    pub fn with_pool_size(self, size: usize) -> QueueLocation {
        match self {
            QueueLocation::Postgres(target) => {
                QueueLocation::Postgres(Box::new(target.with_pool_size(size)))
            }
            other => other,
        }
    }

    /// The location with the listener `--queue-listen-url` names, for the
    /// stores that listen; an error for a URL given to a store that does
    /// not.
    pub fn with_listen(
        self,
        text: Option<&str>,
        pgpassword: Option<String>,
    ) -> Result<QueueLocation, ConfigError> {
        match self {
            QueueLocation::Postgres(target) => Ok(QueueLocation::Postgres(Box::new(
                target.with_listen(text, pgpassword)?,
            ))),
            other if text.is_none() => Ok(other),
            _ => Err(ConfigError::Invalid(
                "--queue-listen-url is for a postgres:// --queue; leave it out for an SQLite queue"
                    .into(),
            )),
        }
    }

    /// Parses `--queue`; a PostgreSQL URL without a password takes
    /// `pgpassword` (the `PGPASSWORD` variable).
    pub fn parse(text: &str, pgpassword: Option<String>) -> Result<QueueLocation, ConfigError> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return PgTarget::parse(text, pgpassword).map(|t| QueueLocation::Postgres(Box::new(t)));
        }
        if let Some(path) = text.strip_prefix("sqlite:") {
            // The URL convention: after `//` comes a host, so the file
            // follows a third slash (`sqlite:///abs/path`). A file path
            // right after the colon (`sqlite:/abs`, `sqlite:relative`)
            // needs none.
            let path = match path.strip_prefix("//") {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
                Some(rest) => {
                    return Err(ConfigError::Invalid(format!(
                        "--queue {text:?} names a host ({host:?}) where a file path was \
                         expected; write sqlite:///{rest} (or sqlite:/{rest}) for the \
                         file /{rest}, or sqlite:{rest} for ./{rest}",
                        host = rest.split('/').next().unwrap_or(rest),
                    )))
                }
                None => path,
            };
            if path.is_empty() {
                return Err(ConfigError::Invalid(
                    "--queue sqlite: needs a file path, like sqlite:/var/tmp/jobpipe/queue.db"
                        .into(),
                ));
            }
            return Ok(QueueLocation::Sqlite(PathBuf::from(path)));
        }
        Err(ConfigError::Invalid(format!(
            "--queue {text:?} is not a queue this jobpipe knows; use sqlite:PATH or postgres://USER@HOST/DATABASE"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_path(text: &str) -> Result<PathBuf, String> {
        match QueueLocation::parse(text, None) {
            Ok(QueueLocation::Sqlite(path)) => Ok(path),
            Ok(_) => Err("not SQLite".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn sqlite_urls_follow_the_url_convention() {
        assert_eq!(sqlite_path("sqlite:///abs/q.db"), Ok("/abs/q.db".into()));
        assert_eq!(sqlite_path("sqlite:/abs/q.db"), Ok("/abs/q.db".into()));
        assert_eq!(sqlite_path("sqlite:rel/q.db"), Ok("rel/q.db".into()));
        let error = sqlite_path("sqlite://tmp/x.db").unwrap_err();
        assert!(error.contains("sqlite:///tmp/x.db"), "{error}");
        assert!(error.contains("sqlite:tmp/x.db"), "{error}");
        assert!(sqlite_path("sqlite://").is_err());
        assert!(sqlite_path("sqlite:").is_err());
    }
}
