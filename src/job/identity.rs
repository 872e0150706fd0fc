//! Who this worker is ([`Identity`]), as reported in pings, heartbeats and
//! error reports, and the flags that name it ([`IdentityArgs`]).

use clap::Args;

/// Who this worker is, as reported in pings and error reports.
#[derive(Debug, Clone)]
pub struct Identity {
    pub worker_id: String,
    pub hostname: String,
}

/// The worker's id and host name.
#[derive(Args)]
pub struct IdentityArgs {
    /// This worker's id [default: a new random id].
    #[arg(long, env = "RUNPOD_POD_ID", value_name = "ID")]
    pub worker_id: Option<String>,

    /// Host name reported in error reports [default: the machine's host name].
    #[arg(long, env = "RUNPOD_POD_HOSTNAME", value_name = "NAME")]
    pub hostname: Option<String>,
}

impl IdentityArgs {
    /// The identity: the given id or a new random one, the given host name
    /// or the machine's.
    pub fn into_identity(self) -> Identity {
        let worker_id = self
            .worker_id
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| format!("jobpipe-{}", uuid::Uuid::new_v4().simple()));
        let hostname = self.hostname.unwrap_or_else(|| {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into())
        });
        Identity {
            worker_id,
            hostname,
        }
    }
}
