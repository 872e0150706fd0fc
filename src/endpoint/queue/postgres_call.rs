//! One queue call against the PostgreSQL pool: a pooled connection, the
//! call deadline, faults turned into redacted [`QueueError`]s, the
//! database's reachability noted, and the events of a committed
//! transaction handed to the announcer. Shared by the queue's methods and
//! its group-commit writer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Object, Pool};

use super::postgres_announce::Announcer;
use super::postgres_conn::{PgTarget, Reachability};
use super::postgres_ops::{Events, Fault};
use super::QueueError;

/// Longest time one queue call may take, connecting included.
pub(super) const CALL_DEADLINE: Duration = Duration::from_secs(30);

/// The pool and what every call through it needs.
pub(super) struct Db {
    pub(super) pool: Pool,
    pub(super) target: PgTarget,
    pub(super) reach: Arc<Reachability>,
    pub(super) announcer: Announcer,
}

impl Db {
    /// Runs one call with a pooled connection under the call deadline,
    /// turning faults into redacted errors and noting reachability.
    pub(super) async fn call<T, F, Fut>(&self, f: F) -> Result<T, QueueError>
    where
        F: FnOnce(Object) -> Fut,
        Fut: Future<Output = Result<T, Fault>>,
    {
        let attempt = async {
            let client = self.pool.get().await.map_err(Fault::from)?;
            f(client).await
        };
        let fault = match tokio::time::timeout(CALL_DEADLINE, attempt).await {
            Ok(Ok(value)) => {
                self.reach.succeeded(&self.target);
                return Ok(value);
            }
            Ok(Err(fault)) => fault,
            Err(_) => Fault::Unreachable(format!("no answer within {}s", CALL_DEADLINE.as_secs())),
        };
        Err(match fault {
            Fault::Unreachable(why) => {
                let why = self.target.redact(&why);
                self.reach.failed(&self.target, &why);
                QueueError::Unavailable(why)
            }
            Fault::Sql(why) => QueueError::Database(self.target.redact(&why)),
        })
    }

    /// [`Self::call`] for a call whose transaction makes events, which are
    /// announced once it has committed.
    pub(super) async fn call_announcing<T, F, Fut>(&self, f: F) -> Result<T, QueueError>
    where
        F: FnOnce(Object, Events) -> Fut,
        Fut: Future<Output = Result<(T, Events), Fault>>,
    {
        let (value, events) = self.call(|client| f(client, Vec::new())).await?;
        self.announcer.announce(events);
        Ok(value)
    }
}
