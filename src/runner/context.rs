//! What a source is given to run: the pool, its part in shutdown, the
//! worker's identity and where to report a fatal error.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::FatalError;
use crate::job::Identity;
use crate::objects::store::Store;
use crate::pool::Pool;

/// The shutdown phases a source takes part in: one tree of cancellation
/// tokens under the run's root. Cancelling the root (the run is over)
/// cancels every token made from it; `take` and `flush` are also
/// cancelled on their own, when the supervisor's phase says so.
#[derive(Clone)]
pub struct Shutdown {
    root: CancellationToken,
    /// Cancelled on the first stop request: take no more jobs and end any
    /// long poll at once.
    pub take: CancellationToken,
    /// Cancelled when results not yet delivered must be kept (spooled) now
    /// instead of retried.
    pub flush: CancellationToken,
}

impl Shutdown {
    /// The tree under `root`.
    pub fn new(root: &CancellationToken) -> Shutdown {
        Shutdown {
            root: root.clone(),
            take: root.child_token(),
            flush: root.child_token(),
        }
    }

    /// A token for a task that lives as long as the run, unless cancelled
    /// on its own first (a source's background tasks, its API server).
    pub fn child(&self) -> CancellationToken {
        self.root.child_token()
    }
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
    /// The object store for large payloads (`--object-store`), if any.
    pub objects: Option<Arc<Store>>,
}
