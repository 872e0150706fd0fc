//! Where jobs come from. Each source is a task that takes jobs only for
//! free slots of the pool, submits them, and returns their results to
//! wherever they belong; it stops taking when `shutdown.take` is cancelled
//! and returns once every job it took has ended. A new source is a module
//! here and one arm in [`run`]; it adds only its transport and hands each
//! job to a [`crate::runner::Runner`], which carries it to its delivered
//! result.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Identity, SourceConfig};
use crate::error::FatalError;
use crate::pool::Pool;

pub mod queue;
pub mod queue_config;
mod queue_job;
pub mod runpod;
mod runpod_urls;
pub mod test_input;

/// The shutdown phases a source takes part in.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled on the first stop request: take no more jobs and end any
    /// long poll at once.
    pub take: CancellationToken,
    /// Cancelled when results not yet delivered must be kept (spooled) now
    /// instead of retried.
    pub flush: CancellationToken,
}

/// What every source is given.
#[derive(Clone)]
pub struct SourceContext {
    pub pool: Arc<Pool>,
    pub shutdown: Shutdown,
    pub identity: Arc<Identity>,
    /// Where a source reports an error that must stop the worker; it keeps
    /// running to flush what it holds and returns when told.
    pub fatal: mpsc::UnboundedSender<FatalError>,
}

/// Runs the configured source to its end; returns the exit code it asks for.
pub async fn run(config: SourceConfig, ctx: SourceContext) -> Result<u8, FatalError> {
    match config {
        SourceConfig::TestInput {
            job,
            expected_output,
        } => Ok(test_input::run(job, expected_output, ctx).await),
        SourceConfig::Runpod(config) => runpod::run(config, ctx).await,
        SourceConfig::Queue(config) => queue::run(config, ctx).await,
    }
}
