//! `GET /dashboard/session`: what the login form needs to know about the
//! key it holds. Whether the API asks for keys at all (when it does not,
//! the form is skipped), whether the key given is one of them, and its
//! role, so that a read key's pages show no action buttons. Always 200
//! with JSON: a wrong key is an answer here, not an error, so a mistyped
//! key leaves no failed request in the browser. It answers nothing a
//! `401`/`403` from the API would not tell.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::Json;
use serde_json::{json, Value};

use crate::endpoint::keys::{KeyRing, Role};

pub(super) async fn session(
    State(keys): State<Option<Arc<KeyRing>>>,
    headers: HeaderMap,
) -> Json<Value> {
    let Some(ring) = keys else {
        return Json(
            json!({"keysRequired": false, "valid": true, "role": "submit", "tenant": null}),
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    match ring.find(given) {
        Some(tenant) => Json(json!({
            "keysRequired": true,
            "valid": true,
            "role": match tenant.role { Role::Submit => "submit", Role::Read => "read" },
            "tenant": tenant.name,
        })),
        None => Json(json!({"keysRequired": true, "valid": false, "role": null, "tenant": null})),
    }
}
