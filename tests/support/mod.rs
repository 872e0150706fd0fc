#![allow(dead_code)]
pub mod endpoint;
pub mod endpoint_routes;
pub mod fake_runpod;
pub mod live;
pub mod postgres;
pub mod prereq;
pub mod tcp_proxy;
pub mod tls;

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
