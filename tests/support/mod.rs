//! What the integration tests share. Each test file has `mod support;`
//! and uses what it needs (hence `dead_code` is allowed here):
//!
//! - [`daemon`]: the one way to start the jobpipe binary, in the
//!   background, with the developer's `JOBPIPE_*`/`RUNPOD_*` settings
//!   cleared; [`run`] runs it to its end on top of that; [`live`] probes
//!   its HTTP endpoints.
//! - [`fixtures`], [`procs`]: handler files and job inputs; processes
//!   followed through /proc; [`shutdown`]: tagged handlers for the
//!   shutdown tests.
//! - [`fake_runpod`], [`endpoint`], [`endpoint_routes`], [`postgres`],
//!   [`pgbouncer`], [`cluster`], [`hooks`], [`tcp_proxy`], [`tls`]: the services jobpipe
//!   talks to in tests, and jobpipe processes on a shared queue.
//! - [`prereq`]: what a missing prerequisite does (fail, or skip if opted
//!   out with `JOBPIPE_TEST_SKIP`).

#![allow(dead_code)]
pub mod cluster;
pub mod daemon;
pub mod endpoint;
pub mod endpoint_attempts;
pub mod endpoint_platform;
pub mod endpoint_routes;
pub mod endpoint_stats;
pub mod endpoint_tenants;
pub mod fake_runpod;
pub mod fixtures;
pub mod hooks;
pub mod live;
pub mod objects;
pub mod pgbouncer;
pub mod postgres;
pub mod prereq;
pub mod procs;
pub mod run;
pub mod s3;
pub mod shutdown;
pub mod tcp_proxy;
pub mod tls;

// What most tests use, at the top (each test binary uses a subset).
#[allow(unused_imports)]
pub use daemon::{binary, daemon, Daemon};
#[allow(unused_imports)]
pub use fixtures::*;
#[allow(unused_imports)]
pub use procs::*;
#[allow(unused_imports)]
pub use run::{jobpipe, Jobpipe, Run, DEFAULT_DEADLINE};

/// The results kept in a spool directory (`{"job_id", "kind", "body"}`):
/// its `.json` files, not the temporary `.name.tmp` ones, nor a file the
/// worker removed while they were read. A file that is not JSON fails the
/// test.
pub fn spooled(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            Some(
                serde_json::from_str(&text).unwrap_or_else(|e| {
                    panic!("spool file {} is not JSON ({e}): {text}", p.display())
                }),
            )
        })
        .collect()
}
