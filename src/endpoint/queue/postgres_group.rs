//! Group commit of the PostgreSQL queue's writes: submissions and results.
//!
//! A commit is the expensive part of a write (a WAL flush, and the work
//! the server does per transaction), so paying one per job caps a fleet at
//! the server's commit rate. Instead, the writes that arrive while one
//! group commits wait for the next and go in together: one transaction,
//! their statements pipelined on one connection, one commit, then every
//! caller is answered. A lone write waits for no one (there is no timer:
//! a group is whatever queued up meanwhile), so the group grows with the
//! load and an idle queue answers as fast as before.
//!
//! Each write keeps its own outcome: a duplicate id refuses only that
//! submission, a result whose lease token is stale is refused alone (its
//! `UPDATE` checks the token and changes nothing). If a statement or the
//! commit fails, the whole transaction is rolled back and nobody is told
//! their write is on disk; the writes are then tried one by one, so the
//! one that failed gets its error and the others their answers. If the
//! database cannot be reached, every caller of the group gets a 5xx.

use std::sync::Arc;

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};

use super::postgres_batch::{enqueue_many, finish_many, PlainEnd};
use super::postgres_call::Db;
use super::postgres_ops::{self as ops, Events, Fault};
use super::{Ending, NewJob, QueueError};

use crate::json::Json;

/// Most writes one transaction takes.
const GROUP_MAX: usize = 256;
/// Writes waiting for a commit; more wait for room (back-pressure).
const WAITING_MAX: usize = 4096;

/// A write to commit with others.
pub(super) enum Write {
    /// Queue a job; refused with [`QueueError::Duplicate`] if its id exists.
    Enqueue(Box<NewJob<Json>>),
    /// End a job held with `token`; false when the lease is no longer held.
    Finish {
        id: String,
        token: String,
        ending: Ending<Json>,
    },
}

/// What a write's caller hears: true when it changed the queue.
type Outcome = Result<bool, QueueError>;

/// Where writes go to be committed in groups.
pub(super) struct Writer(mpsc::Sender<(Write, oneshot::Sender<Outcome>)>);

impl Writer {
    /// Starts the task that commits groups through `db`; it ends when the
    /// queue (the last sender) is dropped.
    pub(super) fn start(db: Arc<Db>) -> Writer {
        let (sender, receiver) = mpsc::channel(WAITING_MAX);
        tokio::spawn(commit_groups(db, receiver));
        Writer(sender)
    }

    /// Makes `write`; answers once the transaction holding it committed.
    pub(super) async fn write(&self, write: Write) -> Outcome {
        let (answer, answered) = oneshot::channel();
        let stopped = || QueueError::Database("the queue's writer has stopped".into());
        self.0.send((write, answer)).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

async fn commit_groups(
    db: Arc<Db>,
    mut receiver: mpsc::Receiver<(Write, oneshot::Sender<Outcome>)>,
) {
    let mut group = Vec::with_capacity(GROUP_MAX);
    while receiver.recv_many(&mut group, GROUP_MAX).await > 0 {
        let (writes, answers): (Vec<_>, Vec<_>) = group.drain(..).unzip();
        let outcomes = if writes.len() == 1 {
            vec![alone(&db, &writes[0]).await]
        } else {
            match together(&db, &writes).await {
                Ok(outcomes) => outcomes,
                Err(QueueError::Unavailable(why)) => {
                    let unavailable = || Err(QueueError::Unavailable(why.clone()));
                    writes.iter().map(|_| unavailable()).collect()
                }
                // A statement or the commit failed: nothing of the group
                // is on disk. One by one, each write gets its own answer.
                Err(_) => {
                    let mut outcomes = Vec::with_capacity(writes.len());
                    for write in &writes {
                        outcomes.push(alone(&db, write).await);
                    }
                    outcomes
                }
            }
        };
        for (outcome, answer) in outcomes.into_iter().zip(answers) {
            let _ = answer.send(outcome);
        }
    }
}

/// One write on its own: a submission or a usual end is one statement,
/// which commits alone; the other ends take a transaction.
async fn alone(db: &Db, write: &Write) -> Outcome {
    match write {
        Write::Enqueue(job) => {
            let how = db.target.statements();
            let (inserted, events, notified) = db
                .call(|client| async move {
                    let (mut events, mut notified) = (Events::new(), false);
                    let inserted =
                        ops::enqueue(&client, how, job, &mut events, &mut notified).await?;
                    Ok((inserted, events, notified))
                })
                .await?;
            if notified {
                db.announcer.hear_here(events);
            } else {
                db.announcer.announce(events);
            }
            inserted.map(|()| true)
        }
        Write::Finish { id, token, ending } => {
            let how = db.target.statements();
            db.call_announcing(|mut client, mut events| async move {
                // A usual end is one statement, so it commits alone.
                if let Some(end) = PlainEnd::of(id, token, ending) {
                    if finish_many(&client, how, &[end], &mut events).await?[0] {
                        return Ok((true, events));
                    }
                }
                // The rest (or a usual end that statement left alone), on
                // the path that locks the row first.
                let tx = client.transaction().await?;
                let written = ops::finish_in(&tx, id, token, ending.clone(), &mut events).await?;
                if written {
                    tx.commit().await?;
                }
                Ok((written, events))
            })
            .await
        }
    }
}

/// Every write of the group in one transaction: the submissions in one
/// statement, the usual ends in another, the rest (a streamed job's end, a
/// retry) one by one, all pipelined; the outcomes in order, or the error
/// that rolled the group back.
async fn together(db: &Db, writes: &[Write]) -> Result<Vec<Outcome>, QueueError> {
    let mut jobs = Vec::new();
    let mut ends = Vec::new();
    let mut others = Vec::new();
    for (index, write) in writes.iter().enumerate() {
        match write {
            Write::Enqueue(job) => jobs.push((index, job)),
            Write::Finish { id, token, ending } => match PlainEnd::of(id, token, ending) {
                Some(end) => ends.push((index, end)),
                None => others.push((index, id, token, ending)),
            },
        }
    }
    let how = db.target.statements();
    let (outcomes, events) = db
        .call(|mut client| async move {
            let tx = client.transaction().await?;
            let (mut queued, mut ended) = (Events::new(), Events::new());
            let submitted = async {
                if jobs.is_empty() {
                    return Ok(Vec::new());
                }
                let batch: Vec<&NewJob<Json>> = jobs.iter().map(|(_, job)| &***job).collect();
                enqueue_many(&tx, how, &batch, &mut queued).await
            };
            let finished = async {
                if ends.is_empty() {
                    return Ok(Vec::new());
                }
                let batch: Vec<_> = ends.iter().map(|(_, end)| end.clone()).collect();
                let mut written = finish_many(&tx, how, &batch, &mut ended).await?;
                // Those left alone: a lease gone, or a failure the job's
                // policy retries.
                for ((index, end), written) in ends.iter().zip(&mut written) {
                    if !*written {
                        let Write::Finish { ending, .. } = &writes[*index] else {
                            unreachable!("an end is a finish");
                        };
                        *written =
                            ops::finish_in(&tx, end.id, end.token, ending.clone(), &mut ended)
                                .await?;
                    }
                }
                Ok::<_, Fault>(written)
            };
            let rest = join_all(others.iter().map(|(_, id, token, ending)| async {
                let mut events = Events::new();
                let written =
                    ops::finish_in(&tx, id, token, (*ending).clone(), &mut events).await?;
                Ok::<_, Fault>((written, events))
            }));
            let (submitted, finished, rest) = futures_util::join!(submitted, finished, rest);
            let mut outcomes: Vec<Option<Outcome>> = writes.iter().map(|_| None).collect();
            for ((index, _), result) in jobs.iter().zip(submitted?) {
                outcomes[*index] = Some(result.map(|()| true));
            }
            for ((index, _), written) in ends.iter().zip(finished?) {
                outcomes[*index] = Some(Ok(written));
            }
            let mut events = queued;
            events.extend(ended);
            for ((index, ..), result) in others.iter().zip(rest) {
                let (written, more) = result?;
                outcomes[*index] = Some(Ok(written));
                events.extend(more);
            }
            tx.commit().await?;
            let outcomes = outcomes
                .into_iter()
                .map(|outcome| outcome.expect("every write has an outcome"))
                .collect();
            Ok((outcomes, events))
        })
        .await?;
    db.announcer.announce(events);
    Ok(outcomes)
}
