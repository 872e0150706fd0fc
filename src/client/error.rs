//! What can go wrong in a client command, split by what the caller must
//! do, and the one place each becomes an exit code: fix the command line
//! or the input (2), look at the server or the job (1), or nothing, as
//! the user stopped the wait (130). No message ever holds the API key.

use thiserror::Error;

/// Exit codes of the client commands.
pub(crate) mod exit {
    pub const OK: u8 = 0;
    /// The job did not end COMPLETED, or the server answered an error or
    /// could not be reached.
    pub const FAILED: u8 = 1;
    /// The command line or the job's input is wrong.
    pub const USAGE: u8 = 2;
    /// Ctrl-C while waiting, as a shell reports a SIGINT.
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, Error)]
pub(crate) enum ClientError {
    /// A flag, a variable or the input is wrong; the message says which.
    #[error("{0}")]
    Usage(String),
    /// The server answered with an error status.
    #[error("{method} {path}: HTTP {code}: {message}{hint}", hint = http_hint(*.code))]
    Http {
        method: String,
        path: String,
        code: u16,
        message: String,
    },
    /// No connection could be made.
    #[error("{method} {path}: the endpoint URL {base} cannot be reached ({cause}); check --endpoint (JOBPIPE_ENDPOINT_URL)")]
    Unreachable {
        method: String,
        path: String,
        base: String,
        cause: String,
    },
    /// The request went out but no whole answer came back (a timeout, a
    /// dropped connection, an answer that is not JSON).
    #[error("{method} {path}: {cause}")]
    Transport {
        method: String,
        path: String,
        cause: String,
        /// Whether asking again may work.
        transient: bool,
    },
    /// The job ended, but not COMPLETED; `detail` is its error if it has one.
    #[error("job {id} ended {status}{}", detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    JobNotCompleted {
        id: String,
        status: String,
        detail: Option<String>,
    },
    /// The user pressed Ctrl-C while waiting.
    #[error("stopped waiting; job {id} keeps running on the endpoint (jobpipe status {id} shows it, jobpipe cancel {id} stops it)")]
    Interrupted { id: String },
}

fn http_hint(code: u16) -> &'static str {
    match code {
        401 | 403 => "; check the API key (--api-key, JOBPIPE_API_KEY or RUNPOD_API_KEY)",
        _ => "",
    }
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => exit::USAGE,
            ClientError::Interrupted { .. } => exit::INTERRUPTED,
            ClientError::Http { .. }
            | ClientError::Unreachable { .. }
            | ClientError::Transport { .. }
            | ClientError::JobNotCompleted { .. } => exit::FAILED,
        }
    }

    /// Whether the same request may succeed a little later: the server
    /// was unreachable, overloaded, restarting or briefly failing.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Transport { transient, .. } => *transient,
            ClientError::Http { code, .. } => *code == 429 || (500..=599).contains(code),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_key_says_where_to_fix_it() {
        let error = ClientError::Http {
            method: "POST".into(),
            path: "/v2/x/run".into(),
            code: 401,
            message: "missing or wrong API key".into(),
        };
        assert_eq!(
            error.to_string(),
            "POST /v2/x/run: HTTP 401: missing or wrong API key; check the API key (--api-key, JOBPIPE_API_KEY or RUNPOD_API_KEY)"
        );
        assert_eq!(error.exit_code(), exit::FAILED);
        assert!(!error.is_transient());
    }

    #[test]
    fn overload_and_outages_are_transient() {
        let http = |code| ClientError::Http {
            method: "GET".into(),
            path: "/status/a".into(),
            code,
            message: String::new(),
        };
        assert!(http(503).is_transient());
        assert!(http(429).is_transient());
        assert!(!http(404).is_transient());
    }
}
