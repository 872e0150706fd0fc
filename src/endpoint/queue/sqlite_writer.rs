//! The SQLite queue's one writer: a thread that owns the connection every
//! write goes through, and commits the writes that arrive together in one
//! transaction.
//!
//! SQLite has one writer at a time, so writes queue anyway; what a write
//! costs beyond its statements is its commit (the log frames of every page
//! it touched). Taking every write that waits when a commit ends —
//! submissions, takes, results, renewals — into the next transaction
//! shares that cost among them: a busy queue commits a batch at a time, an
//! idle one a write at a time, with no timer.
//!
//! Each write runs inside a savepoint of the batch's transaction, so one
//! that fails is rolled back alone and its caller gets its error, while
//! the others commit. Every caller is answered after the commit, and if
//! the commit fails, with its error: no caller of a batch that did not
//! commit hears its write was made. Events (a job queued, ended,
//! cancelled) are announced only once committed.
//!
//! Commits are `synchronous = NORMAL`: written to the write-ahead log, not
//! synced (a power cut may lose a take or a result, which the lease then
//! ends as lost). A write that must be durable (a submission: its caller
//! is told the job is queued) is answered only after a second thread, the
//! syncer, has `fdatasync`ed the log once more after its commit. That is
//! what `synchronous = FULL` would do at the commit, but the writer goes on
//! with the next batch meanwhile, and one sync covers every commit before
//! it. It is safe across checkpoints: SQLite starts writing the log from
//! its beginning again only after a checkpoint copied every frame into
//! the database file and synced that file, so a commit whose frames the
//! sync no longer finds in the log is already on disk in the database.

use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{mpsc as sync_mpsc, Arc};
use std::thread::JoinHandle;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{QueueError, QueueEvent};

/// Most writes one transaction takes.
const BATCH_MAX: usize = 512;
/// Writes waiting for the writer; more wait for room (back-pressure).
const WAITING_MAX: usize = 4096;
/// Committed batches whose durable writes wait for the syncer.
const SYNCS_WAITING_MAX: usize = 64;

/// The handle to the writer thread. Dropping it ends the thread once the
/// writes sent before are committed, and waits for that, so the file is
/// closed when the queue is.
pub(super) struct Writer {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

/// One write and whether its commit must reach the disk before answering.
struct Request {
    durable: bool,
    op: Box<dyn Op>,
}

/// A write waiting for its turn: run it in the batch's transaction, or,
/// when the batch could not start, tell its caller why.
trait Op: Send {
    /// Runs the write; `broken` is set when its savepoint could not be
    /// ended, and then the whole batch is rolled back.
    fn run(
        self: Box<Self>,
        tx: &Transaction,
        events: &mut Vec<QueueEvent>,
        broken: &mut Option<rusqlite::Error>,
    ) -> Box<dyn Answer>;
    fn refuse(self: Box<Self>, why: Arc<QueueError>);
}

/// A write that ran, waiting for its batch's commit to answer its caller.
trait Answer: Send {
    fn send(self: Box<Self>, commit: Result<(), &Arc<QueueError>>);
}

/// A caller's closure and where its answer goes.
struct Write<T, F> {
    f: F,
    answer: oneshot::Sender<Result<T, QueueError>>,
}

/// What a write returned (or why it failed), not yet sent.
struct Outcome<T> {
    value: Result<T, QueueError>,
    answer: oneshot::Sender<Result<T, QueueError>>,
}

impl<T, F> Op for Write<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Transaction, &mut Vec<QueueEvent>) -> rusqlite::Result<T> + Send + 'static,
{
    fn run(
        self: Box<Self>,
        tx: &Transaction,
        events: &mut Vec<QueueEvent>,
        broken: &mut Option<rusqlite::Error>,
    ) -> Box<dyn Answer> {
        let Write { f, answer } = *self;
        let mut own = Vec::new();
        let value = within_savepoint(tx, broken, |tx| f(tx, &mut own));
        if value.is_ok() {
            events.append(&mut own);
        }
        Box::new(Outcome { value, answer })
    }

    fn refuse(self: Box<Self>, why: Arc<QueueError>) {
        let _ = self.answer.send(Err(QueueError::Shared(why)));
    }
}

impl<T: Send> Answer for Outcome<T> {
    fn send(self: Box<Self>, commit: Result<(), &Arc<QueueError>>) {
        let answer = match (self.value, commit) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(why)) => Err(QueueError::Shared(why.clone())),
            (Ok(value), Ok(())) => Ok(value),
        };
        let _ = self.answer.send(answer);
    }
}

/// Runs `f` in a savepoint of `tx`: kept if it succeeds, rolled back if it
/// fails (or panics), so a batch's other writes are unaffected.
fn within_savepoint<T>(
    tx: &Transaction,
    broken: &mut Option<rusqlite::Error>,
    f: impl FnOnce(&Transaction) -> rusqlite::Result<T>,
) -> Result<T, QueueError> {
    tx.prepare_cached("SAVEPOINT write")
        .and_then(|mut savepoint| savepoint.execute([]))
        .map_err(QueueError::Sqlite)?;
    let value = match catch_unwind(AssertUnwindSafe(|| f(tx))) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(QueueError::Sqlite(e)),
        Err(_) => Err(QueueError::Database(
            "a queue write failed unexpectedly (it panicked); it was rolled back".into(),
        )),
    };
    let end = if value.is_ok() {
        tx.prepare_cached("RELEASE write")
            .and_then(|mut release| release.execute([]))
    } else {
        tx.execute_batch("ROLLBACK TO write; RELEASE write")
            .map(|()| 0)
    };
    if let Err(e) = end {
        *broken = Some(e);
    }
    value
}

impl Writer {
    /// Starts the writer thread on `conn` (in WAL mode, `synchronous =
    /// NORMAL`, its log at `log`) and the syncer; events of committed
    /// writes go to `events`.
    pub(super) fn start(
        conn: Connection,
        log: PathBuf,
        events: broadcast::Sender<QueueEvent>,
    ) -> std::io::Result<Writer> {
        let (requests, receiver) = mpsc::channel(WAITING_MAX);
        // Batches waiting for a sync; when the disk falls behind, the
        // writer waits for room (back-pressure) rather than queue more.
        let (syncs, synced) = sync_mpsc::sync_channel(SYNCS_WAITING_MAX);
        let syncer = std::thread::Builder::new()
            .name("jobpipe-fsync".into())
            .spawn(move || sync_log(&log, synced))?;
        let thread = std::thread::Builder::new()
            .name("jobpipe-sqlite".into())
            .spawn(move || {
                write_batches(conn, receiver, events, syncs);
                let _ = syncer.join();
            })?;
        Ok(Writer {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Runs `f` in the next batch's transaction; answers once that
    /// committed (and, when `durable`, the log was synced after it).
    pub(super) async fn write<T, F>(&self, durable: bool, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction, &mut Vec<QueueEvent>) -> rusqlite::Result<T> + Send + 'static,
    {
        let stopped = || QueueError::Database("the queue's writer has stopped".into());
        let (answer, answered) = oneshot::channel();
        let op = Box::new(Write { f, answer });
        let requests = self.requests.as_ref().ok_or_else(stopped)?;
        requests
            .send(Request { durable, op })
            .await
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers that wait for the log to be synced.
type Unsynced = Vec<Box<dyn Answer>>;

/// The writer thread: a batch is the first write waiting and every write
/// queued behind it, up to [`BATCH_MAX`].
fn write_batches(
    mut conn: Connection,
    mut receiver: mpsc::Receiver<Request>,
    events: broadcast::Sender<QueueEvent>,
    syncs: sync_mpsc::SyncSender<Unsynced>,
) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        while batch.len() < BATCH_MAX {
            match receiver.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        commit(&mut conn, std::mem::take(&mut batch), &events, &syncs);
    }
}

/// Runs one batch in one transaction and answers its callers, those of
/// durable writes once the syncer synced the log.
fn commit(
    conn: &mut Connection,
    batch: Vec<Request>,
    events: &broadcast::Sender<QueueEvent>,
    syncs: &sync_mpsc::SyncSender<Unsynced>,
) {
    let mut happened = Vec::new();
    let mut answers = Vec::with_capacity(batch.len());
    let committed = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => {
            let mut broken = None;
            let mut requests = batch.into_iter();
            for request in requests.by_ref() {
                answers.push((
                    request.durable,
                    request.op.run(&tx, &mut happened, &mut broken),
                ));
                if broken.is_some() {
                    break;
                }
            }
            match broken {
                // Dropping the transaction rolls it back.
                Some(e) => {
                    let why = Arc::new(QueueError::Sqlite(e));
                    for request in requests {
                        request.op.refuse(why.clone());
                    }
                    Err(why)
                }
                None => tx.commit().map_err(|e| Arc::new(QueueError::Sqlite(e))),
            }
        }
        Err(e) => return refuse_all(batch, e),
    };
    if let Err(e) = &committed {
        tracing::error!(
            "queue database error: {e}; {} writes were not made",
            answers.len()
        );
        for (_, answer) in answers {
            answer.send(Err(e));
        }
        return;
    }
    announce(happened, events);
    let mut unsynced = Vec::new();
    for (durable, answer) in answers {
        if durable {
            unsynced.push(answer);
        } else {
            answer.send(Ok(()));
        }
    }
    if !unsynced.is_empty() {
        if let Err(sync_mpsc::SendError(unsynced)) = syncs.send(unsynced) {
            let why = Arc::new(QueueError::Database(
                "the queue's fsync thread has stopped".into(),
            ));
            for answer in unsynced {
                answer.send(Err(&why));
            }
        }
    }
}

/// The syncer thread: syncs the log once for every commit that reached it
/// meanwhile, then answers their durable writes.
fn sync_log(log: &std::path::Path, synced: sync_mpsc::Receiver<Unsynced>) {
    let mut file: Option<File> = None;
    while let Ok(first) = synced.recv() {
        let mut waiting = first;
        while let Ok(more) = synced.try_recv() {
            waiting.extend(more);
        }
        let outcome = match &file {
            Some(file) => file.sync_data(),
            // The log exists once a commit was written to it.
            None => File::open(log).and_then(|opened| {
                opened.sync_data()?;
                file = Some(opened);
                Ok(())
            }),
        };
        let outcome = outcome.map_err(|e| {
            tracing::error!("cannot sync the queue's log {}: {e}", log.display());
            Arc::new(QueueError::Database(format!(
                "the job could not be made durable (fsync of {} failed: {e})",
                log.display()
            )))
        });
        for answer in waiting {
            answer.send(outcome.as_ref().map(|_| ()));
        }
    }
}

/// Sends a batch's events, the "a job can be taken" once.
fn announce(happened: Vec<QueueEvent>, events: &broadcast::Sender<QueueEvent>) {
    let mut queued = false;
    for event in happened {
        if event == QueueEvent::Queued {
            if queued {
                continue;
            }
            queued = true;
        }
        let _ = events.send(event);
    }
}

/// Tells every caller of a batch that could not start why.
fn refuse_all(batch: Vec<Request>, error: rusqlite::Error) {
    tracing::error!(
        "queue database error: {error}; {} writes were not made",
        batch.len()
    );
    let error = Arc::new(QueueError::Sqlite(error));
    for request in batch {
        request.op.refuse(error.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &std::path::Path) -> (Writer, broadcast::Receiver<QueueEvent>) {
        let path = dir.join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .unwrap();
        let (events, heard) = broadcast::channel(64);
        let log = PathBuf::from(format!("{}-wal", path.display()));
        (Writer::start(conn, log, events).unwrap(), heard)
    }

    fn insert(n: i64) -> impl FnOnce(&Transaction, &mut Vec<QueueEvent>) -> rusqlite::Result<()> {
        move |tx, events| {
            tx.execute("INSERT INTO t VALUES (?1)", [n])?;
            events.push(QueueEvent::Finished(n.to_string()));
            Ok(())
        }
    }

    /// Writes sent together: the one that fails is rolled back alone (its
    /// row and its event are gone), the others commit and are announced,
    /// and each caller hears its own outcome.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_is_rolled_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, mut heard) = writer(dir.path());
        let writer = Arc::new(writer);
        let mut answers = Vec::new();
        for n in 0..60i64 {
            let writer = writer.clone();
            answers.push(tokio::spawn(async move {
                if n % 3 == 1 {
                    // Inserts its row, then fails.
                    writer
                        .write(n % 2 == 0, move |tx, events| {
                            insert(n)(tx, events)?;
                            tx.execute("INSERT INTO t VALUES (?1)", [n]).map(drop)
                        })
                        .await
                } else {
                    writer.write(n % 2 == 0, insert(n)).await
                }
            }));
        }
        for (n, answer) in answers.into_iter().enumerate() {
            let outcome = answer.await.unwrap();
            assert_eq!(outcome.is_ok(), n % 3 != 1, "write {n}: {outcome:?}");
        }
        let rows: Vec<i64> = writer
            .write(false, |tx, _| {
                tx.prepare("SELECT n FROM t ORDER BY n")?
                    .query_map([], |row| row.get(0))?
                    .collect()
            })
            .await
            .unwrap();
        let kept: Vec<i64> = (0..60).filter(|n| n % 3 != 1).collect();
        assert_eq!(rows, kept);
        let mut announced = Vec::new();
        while let Ok(QueueEvent::Finished(n)) = heard.try_recv() {
            announced.push(n.parse::<i64>().unwrap());
        }
        announced.sort();
        assert_eq!(announced, kept);
    }

    /// A durable write is answered (after the syncer's fsync), and what it
    /// wrote is in the file when another connection reads it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durable_writes_are_answered_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _heard) = writer(dir.path());
        for n in 0..20 {
            writer.write(true, insert(n)).await.unwrap();
        }
        let reader = Connection::open(dir.path().join("w.db")).unwrap();
        let count: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(count, 20);
        drop(writer);
    }
}
