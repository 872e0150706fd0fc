//! Handler processes: the line protocol ([`protocol`], [`lines`]), one
//! running process ([`process`]), and the two kinds of actor that own
//! processes: [`actor`] keeps a persistent handler warm across jobs,
//! [`oneshot`] starts a fresh process per job; [`startup`] brings a
//! persistent handler to ready. The persistent actor sees its process
//! through [`running`], so its unit tests give it a scripted fake instead.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::error::FatalError;
use crate::handler::config::HandlerConfig;
use crate::job::Identity;
use crate::job::JobTicket;
use crate::metrics::Metrics;

pub mod actor;
pub mod config;
pub mod lines;
pub mod oneshot;
pub mod process;
pub mod protocol;
mod recycle;
mod report;
pub mod restart;
mod running;
mod serving;
pub mod spill;
mod startup;

#[cfg(test)]
mod actor_tests;
#[cfg(test)]
mod fake;

/// What every actor is given by the pool.
pub struct ActorContext {
    /// Position in the pool, for log lines.
    pub index: usize,
    pub config: Arc<HandlerConfig>,
    pub identity: Arc<Identity>,
    /// Jobs waiting for a handler; shared by all actors of the pool.
    pub queue: async_channel::Receiver<JobTicket>,
    /// Where an actor reports that its handler can never start.
    pub fatal: mpsc::UnboundedSender<FatalError>,
    /// Graceful stop: finish what is held, then stop the process.
    pub stop: CancellationToken,
    /// Forced stop: kill the process now and fail what it holds.
    pub force: CancellationToken,
    pub metrics: Arc<Metrics>,
    /// This actor's share of the pool's room for new jobs.
    pub room: RoomShare,
    /// Unplanned handler ends in a row across the pool.
    pub failures: Arc<FailureStreak>,
}

/// Counts handler crashes and exits in a row, across all actors of a pool,
/// with no job succeeding in between. A handler that keeps doing that
/// fails every job it is given; reaching the limit ends the worker.
#[derive(Default)]
pub struct FailureStreak(std::sync::atomic::AtomicU32);

impl FailureStreak {
    /// Counts one more crash or exit; returns the count.
    pub(crate) fn add(&self) -> u32 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    /// A job succeeded: the handler works.
    pub(crate) fn reset(&self) {
        self.0.store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One actor's contribution to the pool's count of jobs its ready handlers
/// could start now. The pool takes no job beyond that count, so a job is
/// never taken for a handler that is still starting or restarting. Dropping
/// the share (the actor ended, or panicked) withdraws it.
pub struct RoomShare {
    total: Arc<watch::Sender<usize>>,
    mine: usize,
}

impl RoomShare {
    pub(crate) fn new(total: Arc<watch::Sender<usize>>) -> Self {
        RoomShare { total, mine: 0 }
    }

    /// Sets how many more jobs this actor could start now.
    pub(crate) fn set(&mut self, room: usize) {
        if room == self.mine {
            return;
        }
        let old = std::mem::replace(&mut self.mine, room);
        self.total.send_modify(|n| *n = (*n - old) + room);
    }
}

impl Drop for RoomShare {
    fn drop(&mut self) {
        self.set(0);
    }
}
