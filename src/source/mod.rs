//! Where jobs come from. Each source is a task that takes jobs only for
//! free slots of the pool, submits them, and returns their results to
//! wherever they belong; it stops taking when `shutdown.take` is cancelled
//! and returns once every job it took has ended. A new source is a module
//! here and one arm in [`run`]; it adds only its transport and hands each
//! job to a [`crate::runner::Runner`], which carries it to its delivered
//! result.

use crate::error::FatalError;
use crate::runner::SourceContext;

pub mod runpod;
pub mod runpod_config;
mod runpod_error;
mod runpod_urls;
pub mod test_input;

/// Where jobs come from, decided once at start-up.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// One local test job, then exit.
    TestInput {
        job: serde_json::Value,
        expected_output: Option<serde_json::Value>,
    },
    /// RunPod serverless queue.
    Runpod(runpod_config::RunpodConfig),
    /// Jobpipe's own queue, with the endpoint API when asked for.
    Queue(crate::endpoint::source::QueueSourceConfig),
}

/// Runs the configured source to its end; returns the exit code it asks for.
pub async fn run(config: SourceConfig, ctx: SourceContext) -> Result<u8, FatalError> {
    match config {
        SourceConfig::TestInput {
            job,
            expected_output,
        } => Ok(test_input::run(job, expected_output, ctx).await),
        SourceConfig::Runpod(config) => runpod::run(config, ctx).await,
        SourceConfig::Queue(config) => crate::endpoint::source::run(config, ctx).await,
    }
}
