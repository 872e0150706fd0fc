//! A scripted stand-in for a handler process, so the actor's unit tests
//! run without a child. A test gives a script: what a process writes when
//! it starts (`{"ready": true}` unless told otherwise) and what it does on
//! each line it receives (answer, stream, wait, exit, or nothing). The
//! spawner keeps a log of every process started, every line sent to one,
//! and how each was stopped, for the test to check.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::lines::Line;
use super::running::{Event, RunningHandler, Spawner};
use super::ActorContext;
use crate::os::ExitStatus;

/// One thing a fake process does.
#[derive(Debug, Clone)]
pub(super) enum Act {
    /// Writes this line to stdout.
    Say(Value),
    /// Writes this text as a line to stdout.
    SayText(String),
    /// Writes a line longer than the reader's cap: its length and start.
    SayTooLong { len: usize, prefix: String },
    /// Waits this long before the acts after it.
    Wait(Duration),
    /// Exits; stdout is closed once the lines before it are read.
    Exit(ExitStatus),
}

/// What a fake process does on a line it receives: the process's number
/// (1 for the first started) and the line.
type OnLine = dyn Fn(usize, &Value) -> Vec<Act> + Send + Sync;
/// What a fake process does when started, given its number.
type OnStart = dyn Fn(usize) -> Vec<Act> + Send + Sync;

/// What happened to the fake processes, in order.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Record {
    Spawned(usize),
    Received(usize, Value),
    /// Stopped gracefully with this grace.
    Stopped(usize, Duration),
    Killed(usize),
}

/// Starts fake processes that follow one script; clones share the log.
#[derive(Clone)]
pub(super) struct FakeSpawner {
    on_line: Arc<OnLine>,
    on_start: Arc<OnStart>,
    stderr: String,
    log: Arc<Mutex<Vec<Record>>>,
}

impl FakeSpawner {
    /// Processes that get ready at once and do `on_line` for each line.
    pub(super) fn new(on_line: impl Fn(usize, &Value) -> Vec<Act> + Send + Sync + 'static) -> Self {
        FakeSpawner {
            on_line: Arc::new(on_line),
            on_start: Arc::new(|_| vec![Act::Say(json!({"ready": true}))]),
            stderr: String::new(),
            log: Arc::default(),
        }
    }

    /// What the processes do when started, instead of getting ready.
    pub(super) fn on_start(
        mut self,
        acts: impl Fn(usize) -> Vec<Act> + Send + Sync + 'static,
    ) -> Self {
        self.on_start = Arc::new(acts);
        self
    }

    /// The last stderr lines every process reports.
    pub(super) fn stderr(mut self, tail: &str) -> Self {
        self.stderr = tail.to_owned();
        self
    }

    pub(super) fn log(&self) -> Vec<Record> {
        self.log.lock().unwrap().clone()
    }

    /// How many processes were started.
    pub(super) fn spawned(&self) -> usize {
        self.log()
            .iter()
            .filter(|r| matches!(r, Record::Spawned(_)))
            .count()
    }

    /// The lines process `n` received.
    pub(super) fn received(&self, n: usize) -> Vec<Value> {
        self.log()
            .into_iter()
            .filter_map(|r| match r {
                Record::Received(m, line) if m == n => Some(line),
                _ => None,
            })
            .collect()
    }

    /// How the processes were stopped, in order.
    pub(super) fn ends(&self) -> Vec<Record> {
        self.log()
            .into_iter()
            .filter(|r| matches!(r, Record::Stopped(..) | Record::Killed(_)))
            .collect()
    }
}

impl Spawner for FakeSpawner {
    type Process = FakeProcess;

    fn spawn(&self, _: &ActorContext) -> std::io::Result<FakeProcess> {
        let number = {
            let mut log = self.log.lock().unwrap();
            let number = log
                .iter()
                .filter(|r| matches!(r, Record::Spawned(_)))
                .count()
                + 1;
            log.push(Record::Spawned(number));
            number
        };
        let (stdout_tx, stdout) = mpsc::unbounded_channel();
        let (exit_tx, exit) = watch::channel(None);
        let outlet = Outlet {
            stdout: stdout_tx,
            exit: Arc::new(exit_tx),
        };
        play((self.on_start)(number).into(), outlet.clone());
        Ok(FakeProcess {
            number,
            on_line: self.on_line.clone(),
            stderr: self.stderr.clone(),
            log: self.log.clone(),
            outlet,
            stdout,
            exit,
        })
    }

    async fn kill_escaped(&self, _: &ActorContext) {}
}

/// Where a fake process's acts go.
#[derive(Clone)]
struct Outlet {
    stdout: mpsc::UnboundedSender<Line>,
    exit: Arc<watch::Sender<Option<ExitStatus>>>,
}

/// Performs `acts` in order: at once up to the first wait, the rest in a
/// task after it.
fn play(mut acts: VecDeque<Act>, out: Outlet) {
    while let Some(act) = acts.pop_front() {
        let line = match act {
            Act::Say(value) => Line::Whole(Bytes::from(value.to_string())),
            Act::SayText(text) => Line::Whole(Bytes::from(text)),
            Act::SayTooLong { len, prefix } => Line::TooLong {
                len,
                prefix: prefix.into_bytes(),
            },
            Act::Exit(status) => {
                out.exit.send_replace(Some(status));
                continue;
            }
            Act::Wait(delay) => {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    play(acts, out);
                });
                return;
            }
        };
        let _ = out.stdout.send(line);
    }
}

/// A process that follows its spawner's script.
pub(super) struct FakeProcess {
    number: usize,
    on_line: Arc<OnLine>,
    stderr: String,
    log: Arc<Mutex<Vec<Record>>>,
    outlet: Outlet,
    stdout: mpsc::UnboundedReceiver<Line>,
    exit: watch::Receiver<Option<ExitStatus>>,
}

impl FakeProcess {
    fn record(&self, record: Record) {
        self.log.lock().unwrap().push(record);
    }

    fn status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }
}

impl RunningHandler for FakeProcess {
    fn pid(&self) -> i32 {
        1000 + self.number as i32
    }

    fn send(&self, line: Bytes) {
        let value: Value = serde_json::from_slice(&line).expect("the actor sends JSON lines");
        self.record(Record::Received(self.number, value.clone()));
        if self.status().is_none() {
            play(
                (self.on_line)(self.number, &value).into(),
                self.outlet.clone(),
            );
        }
    }

    fn set_jobs(&self, _: String) {}

    async fn next(&mut self) -> Event {
        match self.recv().await {
            Some(line) => Event::Line(Some(line)),
            None => Event::Exited(self.exited().await),
        }
    }

    async fn recv(&mut self) -> Option<Line> {
        loop {
            if let Ok(line) = self.stdout.try_recv() {
                return Some(line);
            }
            if self.status().is_some() {
                return None;
            }
            tokio::select! {
                line = self.stdout.recv() => return line,
                _ = self.exit.changed() => {}
            }
        }
    }

    async fn exited(&mut self) -> ExitStatus {
        let status = *self
            .exit
            .wait_for(Option::is_some)
            .await
            .expect("the sender lives in the process");
        status.expect("waited for")
    }

    async fn stderr_tail(&mut self) -> String {
        self.stderr.clone()
    }

    async fn stop(self, grace: Duration, _: &CancellationToken) -> ExitStatus {
        self.record(Record::Stopped(self.number, grace));
        self.status().unwrap_or(ExitStatus::Signal(15))
    }

    async fn kill(self) -> ExitStatus {
        self.record(Record::Killed(self.number));
        self.status().unwrap_or(ExitStatus::Signal(9))
    }
}

/// The final answer to the job `line` with `output`.
pub(super) fn output(line: &Value, output: Value) -> Act {
    Act::Say(json!({"id": line["id"], "output": output}))
}
