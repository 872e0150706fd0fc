//! Recycling: replacing a healthy handler process that has run too many
//! jobs or grown too big, before a leak turns into an out-of-memory kill
//! in the middle of a job. Checked after each job, when the process holds
//! the fewest jobs it will.

use bytesize::ByteSize;

use super::restart::RestartReason;
use crate::handler::config::HandlerConfig;

/// Whether the process `pid` (leader of its process group) is due to be
/// replaced after finishing its `served`th job.
pub(super) fn due(config: &HandlerConfig, served: u64, pid: i32) -> Option<RestartReason> {
    if let Some(max) = config.max_jobs {
        if served >= max {
            tracing::info!(
                pid,
                "handler process ran {served} jobs (--max-jobs-per-handler {max}); replacing it"
            );
            return Some(RestartReason::MaxJobs);
        }
    }
    let max = config.max_memory?;
    let resident = crate::os::group_resident_memory(pid);
    if resident > max {
        tracing::info!(
            pid,
            "handler process group uses {} resident memory, more than --max-handler-memory {}; replacing it",
            ByteSize(resident),
            ByteSize(max)
        );
        return Some(RestartReason::MaxMemory);
    }
    tracing::debug!(
        pid,
        "handler process group uses {} resident memory",
        ByteSize(resident)
    );
    None
}
