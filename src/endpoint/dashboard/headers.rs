//! The headers every dashboard answer carries: a Content-Security-Policy
//! that allows only the dashboard's own scripts, styles and API calls (no
//! inline script, so a job's data that slipped into the page could not
//! run), a ban on framing (no clickjacking of the action buttons) and no
//! content-type sniffing.

use axum::http::{header, HeaderValue};
use axum::response::Response;

/// The policy: everything from this origin only, nothing inline.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
form-action 'self'";

pub(super) async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
