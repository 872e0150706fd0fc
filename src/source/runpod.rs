//! RunPod serverless source (work in progress).

use super::SourceContext;
use crate::config::RunpodConfig;
use crate::error::FatalError;

pub async fn run(_config: RunpodConfig, _ctx: SourceContext) -> Result<u8, FatalError> {
    Err(FatalError::Internal("not yet".into()))
}
