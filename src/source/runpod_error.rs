//! Why a call to RunPod's queue failed: a heartbeat, a job-stop poll, or
//! reading a taken job. Kept apart from the transport in `runpod.rs`, with
//! reqwest's error as the cause where there is one. Each renders the text
//! the take loop, the heartbeat and the job-stop poll log; a reqwest error
//! reads with its causes and without its URL's query.

use std::error::Error;

#[derive(Debug, thiserror::Error)]
pub(super) enum RequestError {
    /// The request, or reading its answer, failed on the way. Made with
    /// `From`, which drops the URL.
    #[error("{}", text(.0))]
    Http(#[source] reqwest::Error),
    /// An answer with a status the call does not expect.
    #[error("HTTP {0}")]
    Status(u16),
    /// A take's answer announced as larger than a take may hold.
    #[error("the answer is {size} bytes, more than the {cap} bytes a take may hold")]
    TooLarge { size: usize, cap: usize },
    /// A take's answer that grew past the cap while it was read.
    #[error("the answer is more than the {cap} bytes a take may hold")]
    OverCap { cap: usize },
}

impl From<reqwest::Error> for RequestError {
    fn from(error: reqwest::Error) -> Self {
        RequestError::Http(error.without_url())
    }
}

/// Describes a reqwest error without its URL's query (which never holds a
/// secret, but is long) and with its cause.
pub(super) fn describe(error: reqwest::Error) -> String {
    text(&error.without_url())
}

fn text(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if let Some(hint) = crate::tls::untrusted_hint(error) {
        text.push_str(" (");
        text.push_str(hint);
        text.push(')');
    }
    text
}
