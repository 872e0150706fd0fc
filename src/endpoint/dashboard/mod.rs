//! The web dashboard (`/dashboard`): pages for an operator to watch an
//! endpoint's queue, jobs and workers and to cancel, retry and purge.
//!
//! The pages hold no data and no power of their own: each is a static HTML
//! shell whose scripts read and act through the public API with the bearer
//! key the person typed in (kept in the tab's session storage), so the
//! dashboard can do nothing the key cannot do through `curl`. The shells,
//! the stylesheet and the scripts are files under `web/`, embedded in the
//! binary ([`assets`]): no build step, no network at run time. Every answer
//! carries a strict Content-Security-Policy and framing ban ([`headers`]).
//!
//! The routes need no key (they hold nothing secret); `/dashboard/session`
//! tells the login form whether the API wants a key at all and what the
//! one given may do ([`session`]).

use std::sync::Arc;

use axum::routing::get;
use axum::Router;

use crate::endpoint::keys::KeyRing;

mod assets;
mod headers;
mod pages;
mod session;

/// The path prefix the dashboard is served under; the API's key check lets
/// it through.
pub const PREFIX: &str = "/dashboard";

/// Whether `path` is one of the dashboard's (which need no key). A path
/// with a dot segment or an encoded dot is not, whatever it starts with: the
/// router does not resolve `..`, but the key check must not depend on it.
pub fn is_dashboard_path(path: &str) -> bool {
    let plain = !path
        .split('/')
        .any(|segment| segment == ".." || segment == ".")
        && !path.to_ascii_lowercase().contains("%2e");
    plain
        && (path == PREFIX
            || path
                .strip_prefix(PREFIX)
                .is_some_and(|rest| rest.starts_with('/')))
}

/// The dashboard's routes, for merging into the API's router.
pub fn router<S: Clone + Send + Sync + 'static>(keys: Option<Arc<KeyRing>>) -> Router<S> {
    Router::new()
        .route("/dashboard", get(pages::overview))
        .route("/dashboard/", get(pages::overview))
        .route("/dashboard/jobs", get(pages::jobs))
        .route("/dashboard/jobs/:job_id", get(pages::job))
        .route("/dashboard/workers", get(pages::workers))
        .route("/dashboard/assets/:name", get(assets::serve))
        .route("/dashboard/session", get(session::session))
        .layer(axum::middleware::map_response(headers::secure))
        .with_state(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_paths_are_recognised() {
        assert!(is_dashboard_path("/dashboard"));
        assert!(is_dashboard_path("/dashboard/jobs/x"));
        assert!(!is_dashboard_path("/dashboards"));
        assert!(!is_dashboard_path("/v2/dashboard/run"));
        assert!(!is_dashboard_path("/dashboard/../v2/default/jobs"));
        assert!(!is_dashboard_path("/dashboard/%2E%2E/v2/default/jobs"));
        assert!(!is_dashboard_path("/dashboard/./jobs"));
    }
}
