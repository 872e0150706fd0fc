//! The dashboard's files, embedded in the binary, and how they are served.
//!
//! Each asset is linked from the pages under a name carrying a hash of its
//! bytes (`app.1f2e3d4c5b6a7980.js`) and served with `Cache-Control:
//! public, max-age=31536000, immutable`: a browser asks for it once per
//! version of jobpipe, and a new build changes the name, so a stale copy
//! can never be used. The plain name (`app.js`) is served too, with an
//! `ETag` and `no-cache`, for a person who types it. The pages themselves
//! change with the build and are small: they go out with a strong `ETag`
//! and `no-cache`, and a repeated visit costs a `304`.

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One embedded file.
pub(super) struct Asset {
    /// Its plain name, as under `web/`.
    pub name: &'static str,
    pub bytes: &'static [u8],
    pub content_type: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every asset the pages link.
pub(super) const ASSETS: &[Asset] = &[
    Asset {
        name: "style.css",
        bytes: include_bytes!("web/style.css"),
        content_type: "text/css; charset=utf-8",
    },
    Asset {
        name: "app.js",
        bytes: include_bytes!("web/app.js"),
        content_type: JS,
    },
    Asset {
        name: "charts.js",
        bytes: include_bytes!("web/charts.js"),
        content_type: JS,
    },
    Asset {
        name: "overview.js",
        bytes: include_bytes!("web/overview.js"),
        content_type: JS,
    },
    Asset {
        name: "jobs.js",
        bytes: include_bytes!("web/jobs.js"),
        content_type: JS,
    },
    Asset {
        name: "job.js",
        bytes: include_bytes!("web/job.js"),
        content_type: JS,
    },
    Asset {
        name: "workers.js",
        bytes: include_bytes!("web/workers.js"),
        content_type: JS,
    },
];

/// An asset with its hash, worked out once.
struct Hashed {
    asset: &'static Asset,
    /// `app.<hash>.js`.
    versioned: String,
    /// `"<hash>"`, quoted as an ETag is.
    etag: String,
}

fn hashed() -> &'static [Hashed] {
    static HASHED: OnceLock<Vec<Hashed>> = OnceLock::new();
    HASHED.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let hash = digest(asset.bytes);
                let (stem, ext) = asset.name.rsplit_once('.').unwrap_or((asset.name, ""));
                Hashed {
                    asset,
                    versioned: format!("{stem}.{hash}.{ext}"),
                    etag: format!("\"{hash}\""),
                }
            })
            .collect()
    })
}

/// The first 16 hex digits of the bytes' SHA-256: enough to tell versions
/// apart.
pub(super) fn digest(bytes: &[u8]) -> String {
    crate::text::hex(&Sha256::digest(bytes)[..8])
}

/// The URL the pages link `name` by (with its hash).
pub(super) fn url(name: &str) -> String {
    let versioned = hashed()
        .iter()
        .find(|h| h.asset.name == name)
        .map_or(name, |h| h.versioned.as_str());
    format!("{}/assets/{versioned}", super::PREFIX)
}

pub(super) async fn serve(Path(name): Path<String>, headers: HeaderMap) -> Response {
    for hashed in hashed() {
        let cache = if name == hashed.versioned {
            "public, max-age=31536000, immutable"
        } else if name == hashed.asset.name {
            "no-cache"
        } else {
            continue;
        };
        return cached(
            &headers,
            &hashed.etag,
            cache,
            hashed.asset.content_type,
            hashed.asset.bytes,
        );
    }
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({
            "error": format!("no dashboard asset {name:?}")
        })),
    )
        .into_response()
}

/// `bytes` with `etag` and `cache`, or 304 when the browser holds them.
pub(super) fn cached(
    request: &HeaderMap,
    etag: &str,
    cache: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
) -> Response {
    let held = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    let mut response = if held {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = Response::new(Body::from(bytes));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_urls_carry_their_hash() {
        let url = url("app.js");
        assert!(url.starts_with("/dashboard/assets/app."), "{url}");
        assert!(url.ends_with(".js") && url.len() > "/dashboard/assets/app.js".len());
        assert_eq!(url, super::url("app.js"), "the same every time");
    }
}
