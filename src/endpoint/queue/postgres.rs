//! The shared queue: PostgreSQL, for any number of jobpipe processes on any
//! number of machines pointed at one database.
//!
//! * **Take** claims queued jobs for free slots only, in one statement with
//!   `FOR UPDATE SKIP LOCKED`, so workers never wait on each other's rows
//!   and never claim the same job twice.
//! * **Leases** are a token and an expiry on the database's clock. Every
//!   write a worker makes for a job names its token, so a worker that lost
//!   its lease (it froze, was cut off, or the job was cancelled) writes
//!   nothing; whoever sweeps after the expiry queues the job again, counting
//!   the attempt, or fails it when none are left.
//! * **Events** travel as `NOTIFY` ([`super::postgres_listen`]), sent
//!   after the transaction that made the change committed, many in one
//!   transaction ([`super::postgres_announce`]), never in a job's own.
//! * **Connections** come from a small pool (deadpool-postgres): API
//!   requests and worker writes run concurrently, each transaction needs a
//!   connection of its own, and a connection broken by a database restart
//!   is replaced rather than reused. Every call has a deadline, so a
//!   database that stops answering fails calls instead of hanging them,
//!   and its reachability is logged once per change ([`Reachability`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::postgres_announce::Announcer;
use super::postgres_call::{Db, CALL_DEADLINE};
pub use super::postgres_conn::{Listen, PgTarget, DEFAULT_POOL_SIZE};
use super::postgres_conn::{Reachability, CONNECT_TIMEOUT};
use super::postgres_group::{Write, Writer};
use super::postgres_listing as listing;
use super::postgres_ops as ops;
use super::postgres_typed::{p, query};
use super::{
    to_ms, Depth, Ended, Ending, Health, JobDetail, JobFilter, JobRecord, JobStatus, JobSummary,
    Lease, NewJob, Queue, QueueError, QueueEvent, RetryOutcome, Swept, WebhookPost, WorkerInfo,
    WorkerRow,
};
use crate::backoff::BackoffPolicy;
use crate::json::Json;

/// How often a process without a listener (`--queue-listen-url off`)
/// looks for queued and ended jobs.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Delays between attempts to reach the database at start.
const OPEN_RETRY: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(200), Duration::from_secs(10), 0.3);

/// The PostgreSQL queue. See the module docs.
pub struct PgQueue {
    db: Arc<Db>,
    /// Commits submissions and results in groups.
    writer: Writer,
    /// How this process signs the housekeeping row when it sweeps, and a
    /// chore's row when it does a round (`HOST pid PID`), so an operator
    /// sees who did each last.
    sweeper: String,
    events: broadcast::Sender<QueueEvent>,
    /// Stops the listening connection when the queue is dropped.
    _listener: DropGuard,
}

impl PgQueue {
    /// Connects, applies pending migrations and starts listening. A
    /// database that cannot be reached is waited for (with back-off, logged
    /// once); one that refuses us (password, user, database, permissions)
    /// is an error at once. The queue is the root of its own tasks; in a
    /// run, [`PgQueue::open_in`] puts them under the run's.
    pub async fn open(target: PgTarget) -> Result<PgQueue, QueueError> {
        PgQueue::open_in(target, &CancellationToken::new()).await
    }

    /// [`PgQueue::open`], with the listener stopped when `parent` is
    /// cancelled or the queue dropped, whichever comes first.
    pub async fn open_in(
        target: PgTarget,
        parent: &CancellationToken,
    ) -> Result<PgQueue, QueueError> {
        let reach = Arc::new(Reachability::default());
        let mut delays = OPEN_RETRY.iter();
        loop {
            match target.config.connect(tokio_postgres::NoTls).await {
                Ok((mut client, connection)) => {
                    let driver = tokio::spawn(connection);
                    let migrated = super::postgres_schema::migrate(&mut client).await;
                    drop(client);
                    let _ = driver.await;
                    migrated.map_err(|why| QueueError::Open {
                        what: target.to_string(),
                        why: target.redact(&why.to_string()),
                    })?;
                    reach.succeeded(&target);
                    break;
                }
                Err(e) if PgTarget::is_refusal(&e) => {
                    return Err(QueueError::Open {
                        what: target.to_string(),
                        why: target.describe(&e),
                    })
                }
                Err(e) => reach.failed(&target, &target.describe(&e)),
            }
            tokio::time::sleep(delays.next().unwrap_or_default()).await;
        }
        let manager = Manager::from_config(
            target.config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(target.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .wait_timeout(Some(CALL_DEADLINE))
            .build()
            .map_err(|e| QueueError::Open {
                what: target.to_string(),
                why: e.to_string(),
            })?;
        let events = broadcast::channel(4096).0;
        let stop = parent.child_token();
        let listen_to = match &target.listen {
            Listen::Queue => Some(target.clone()),
            Listen::Direct(direct) => Some((**direct).clone()),
            Listen::Poll => None,
        };
        if let Some(listen_to) = listen_to {
            let (listening, listens) = oneshot::channel();
            tokio::spawn(super::postgres_listen::run(
                listen_to,
                events.clone(),
                stop.clone(),
                listening,
            ));
            let _ = tokio::time::timeout(CALL_DEADLINE, listens).await;
        } else {
            tokio::spawn(poll(events.clone(), stop.clone()));
        }
        let announcer =
            Announcer::start(pool.clone(), target.clone(), events.clone(), stop.clone());
        let db = Arc::new(Db {
            pool,
            target,
            reach,
            announcer,
        });
        let writer = Writer::start(db.clone());
        let host = nix::unistd::gethostname().map_or_else(
            |_| "unknown host".to_owned(),
            |name| name.to_string_lossy().into_owned(),
        );
        Ok(PgQueue {
            db,
            writer,
            sweeper: format!("{host} pid {}", std::process::id()),
            events,
            _listener: stop.drop_guard(),
        })
    }

    /// Whether the database was unreachable at the last call.
    pub fn is_unreachable(&self) -> bool {
        self.db.reach.is_down()
    }
}

#[async_trait]
impl Queue for PgQueue {
    fn subscribe(&self) -> broadcast::Receiver<QueueEvent> {
        self.events.subscribe()
    }

    async fn enqueue_raw(&self, job: NewJob<Json>) -> Result<(), QueueError> {
        self.writer
            .write(Write::Enqueue(Box::new(job)))
            .await
            .map(|_| ())
    }

    async fn status_raw(&self, id: &str) -> Result<Option<JobRecord<Json>>, QueueError> {
        let how = self.db.target.statements();
        self.db
            .call(|client| async move { ops::status(&client, how, id).await })
            .await
    }

    async fn read_stream_raw(
        &self,
        id: &str,
    ) -> Result<Option<(JobStatus, Vec<Json>)>, QueueError> {
        self.db
            .call(|mut client| async move { ops::read_stream(&mut client, id).await })
            .await
    }

    async fn cancel(&self, id: &str) -> Result<Option<JobStatus>, QueueError> {
        self.db
            .call_announcing(|mut client, mut events| async move {
                let status = ops::cancel(&mut client, id, &mut events).await?;
                Ok((status, events))
            })
            .await
    }

    async fn retry(&self, id: &str) -> Result<RetryOutcome, QueueError> {
        self.db
            .call_announcing(|mut client, mut events| async move {
                let outcome = ops::retry(&mut client, id, &mut events).await?;
                Ok((outcome, events))
            })
            .await
    }

    async fn list_jobs(
        &self,
        endpoint: &str,
        filter: &JobFilter,
        limit: usize,
    ) -> Result<Vec<JobSummary>, QueueError> {
        self.db
            .call(|client| async move { listing::list(&client, endpoint, filter, limit).await })
            .await
    }

    async fn job_raw(&self, id: &str) -> Result<Option<JobDetail>, QueueError> {
        self.db
            .call(|client| async move { listing::detail(&client, id).await })
            .await
    }

    async fn active_endpoints(&self, limit: usize) -> Result<Vec<String>, QueueError> {
        self.db
            .call(|client| async move { listing::active_endpoints(&client, limit).await })
            .await
    }

    async fn workers(&self, endpoint: &str) -> Result<Vec<WorkerRow>, QueueError> {
        self.db
            .call(|client| async move { listing::workers(&client, endpoint).await })
            .await
    }

    async fn depth(&self, endpoint: &str) -> Result<Depth, QueueError> {
        self.db
            .call(|client| async move { listing::depth(&client, endpoint).await })
            .await
    }

    async fn ended_since(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<Ended>, i64), QueueError> {
        self.db
            .call(|client| async move { listing::ended_since(&client, after, limit).await })
            .await
    }

    async fn purge(&self, endpoint: &str) -> Result<u64, QueueError> {
        self.db
            .call(|client| async move {
                let sql = "DELETE FROM jobpipe.jobs WHERE status = 'IN_QUEUE' AND endpoint = $1";
                Ok(client.execute_typed(sql, &[p(&endpoint)]).await?)
            })
            .await
    }

    async fn health(&self, endpoint: &str) -> Result<Health, QueueError> {
        self.db
            .call(|client| async move { ops::health(&client, endpoint).await })
            .await
    }

    async fn take_raw(
        &self,
        worker: &str,
        endpoints: &[String],
        count: usize,
        lease: Duration,
    ) -> Result<Vec<Lease<Json>>, QueueError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let how = self.db.target.statements();
        self.db
            .call(|client| async move {
                ops::take(&client, how, worker, endpoints, count, lease).await
            })
            .await
    }

    async fn renew(
        &self,
        leases: &[(String, String)],
        lease: Duration,
    ) -> Result<Vec<String>, QueueError> {
        self.db
            .call(|client| async move { ops::renew(&client, leases, lease).await })
            .await
    }

    async fn progress_raw(
        &self,
        job_id: &str,
        token: &str,
        output: Json,
    ) -> Result<bool, QueueError> {
        self.db
            .call(|client| async move {
                let sql = "UPDATE jobpipe.jobs SET output = $3
                 WHERE id = $1 AND lease_token = $2 AND status = 'IN_PROGRESS'";
                let changed = client
                    .execute_typed(sql, &[p(&job_id), p(&token), p(&&*output.text())])
                    .await?;
                Ok(changed > 0)
            })
            .await
    }

    async fn stream_raw(
        &self,
        job_id: &str,
        token: &str,
        output: Json,
    ) -> Result<bool, QueueError> {
        self.db
            .call_announcing(|client, mut events| async move {
                // One statement: the partial is added only under the lease.
                let sql = "INSERT INTO jobpipe.stream (job_id, output)
                    SELECT id, $3 FROM jobpipe.jobs
                     WHERE id = $1 AND lease_token = $2 AND status = 'IN_PROGRESS'";
                let added = client
                    .execute_typed(sql, &[p(&job_id), p(&token), p(&&*output.text())])
                    .await?
                    > 0;
                if added {
                    events.push(QueueEvent::Streamed(job_id.to_owned()));
                }
                Ok((added, events))
            })
            .await
    }

    async fn finish_raw(
        &self,
        job_id: &str,
        token: &str,
        ending: Ending<Json>,
    ) -> Result<bool, QueueError> {
        let (id, token) = (job_id.to_owned(), token.to_owned());
        self.writer.write(Write::Finish { id, token, ending }).await
    }

    async fn heartbeat(
        &self,
        worker: &WorkerInfo,
        capacity: usize,
        busy: usize,
    ) -> Result<(), QueueError> {
        let (capacity, busy) = (count_i32(capacity), count_i32(busy));
        let how = self.db.target.statements();
        self.db
            .call(|client| async move {
                // A heartbeat lost to a crash costs nothing (the next one
                // comes within seconds), so its commit does not wait for
                // the WAL flush: a worker reports busy and idle around
                // every job it runs, and those flushes would queue with
                // the job's own.
                let sql = "INSERT INTO jobpipe.workers
                        (id, capacity, busy, seen_at, endpoints, hostname, version, started_at)
                 SELECT $1, $2, $3, jobpipe.now_ms(), $4, $5, $6, jobpipe.now_ms()
                   FROM set_config('synchronous_commit', 'off', true) AS s
                 ON CONFLICT (id) DO UPDATE
                 SET capacity = $2, busy = $3, seen_at = jobpipe.now_ms(), endpoints = $4";
                let version = env!("CARGO_PKG_VERSION");
                query(
                    &client,
                    how,
                    sql,
                    &[
                        p(&worker.id),
                        p(&capacity),
                        p(&busy),
                        p(&worker.endpoints),
                        p(&worker.hostname),
                        p(&version),
                    ],
                )
                .await?;
                Ok(())
            })
            .await
    }

    async fn sweep(&self) -> Result<Swept, QueueError> {
        self.db
            .call_announcing(|mut client, mut events| async move {
                let swept = ops::sweep(&mut client, &self.sweeper, &mut events).await?;
                Ok((swept, events))
            })
            .await
    }

    async fn claim_round(&self, chore: &str, every: Duration) -> Result<bool, QueueError> {
        let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
        self.db
            .call(|client| async move {
                // A process that finds the row locked waits for the other's
                // claim to commit, then finds it too recent.
                let claimed = client
                    .query_typed_opt(
                        "INSERT INTO jobpipe.chores AS c (name, done_at, done_by)
                              VALUES ($1, jobpipe.now_ms(), $3)
                         ON CONFLICT (name) DO UPDATE
                                 SET done_at = excluded.done_at, done_by = excluded.done_by
                               WHERE c.done_at <= excluded.done_at - $2
                         RETURNING 1",
                        &[p(&chore), p(&every), p(&self.sweeper)],
                    )
                    .await?;
                Ok(claimed.is_some())
            })
            .await
    }

    async fn webhooks_due(&self, limit: usize) -> Result<Vec<WebhookPost>, QueueError> {
        self.db
            .call(|client| async move { ops::webhooks_due(&client, limit).await })
            .await
    }

    async fn webhook_done(&self, id: i64) -> Result<(), QueueError> {
        self.db
            .call(|client| async move {
                client
                    .execute_typed("DELETE FROM jobpipe.webhooks WHERE id = $1", &[p(&id)])
                    .await?;
                Ok(())
            })
            .await
    }

    async fn webhook_later(&self, id: i64, at: SystemTime) -> Result<(), QueueError> {
        // The caller's clock says when; the database's clock keeps time.
        let delay = (to_ms(at) - to_ms(SystemTime::now())).max(0);
        self.db
            .call(|client| async move {
                let sql = "UPDATE jobpipe.webhooks
                 SET attempts = attempts + 1, next_at = jobpipe.now_ms() + $2 WHERE id = $1";
                client.execute_typed(sql, &[p(&id), p(&delay)]).await?;
                Ok(())
            })
            .await
    }

    async fn webhooks_defer(&self, ids: &[i64], at: SystemTime) -> Result<(), QueueError> {
        let delay = (to_ms(at) - to_ms(SystemTime::now())).max(0);
        let ids = ids.to_vec();
        self.db
            .call(|client| async move {
                let sql =
                "UPDATE jobpipe.webhooks SET next_at = jobpipe.now_ms() + $2 WHERE id = ANY($1)";
                client.execute_typed(sql, &[p(&ids), p(&delay)]).await?;
                Ok(())
            })
            .await
    }
}

/// Tells this process's waiters to look at the database, every
/// [`POLL_INTERVAL`] give or take a quarter (so a fleet started together
/// does not poll in step), until `stop`.
async fn poll(events: broadcast::Sender<QueueEvent>, stop: CancellationToken) {
    loop {
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL.mul_f64(jitter)) => {}
            _ = stop.cancelled() => return,
        }
        let _ = events.send(QueueEvent::Poll);
    }
}

fn count_i32(count: usize) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}
