//! Inputs by reference: a job's input may hold markers
//! `{"object": {"key": "..."}}` (an object under the store's prefix, e.g.
//! one uploaded with a URL from `POST /uploads`) or `{"object": {"url":
//! "..."}}`. Before the handler sees the job, each is downloaded into the
//! job's directory and replaced by `{"path", "size", "sha256"}`. Only this
//! marker is fetched, so an ordinary string that looks like a URL never is.
//! URLs go through [`super::fetch`]'s checks; sizes and times are bounded.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use super::fetch::{self, FetchPolicy};
use super::sink::Sink;
use super::store::Store;

/// Fetches the inputs of jobs for one runner.
pub struct Inputs {
    store: Arc<Store>,
    policy: Arc<FetchPolicy>,
    client: reqwest::Client,
}

/// Where a marker points.
enum Marker {
    Key(String),
    Url(String),
}

impl Inputs {
    pub fn new(store: Arc<Store>) -> Inputs {
        let policy = Arc::new(FetchPolicy {
            allow: store.config.fetch_allow.clone(),
            store: store.config.endpoints(),
        });
        let client = policy.client(store.config.fetch_timeout);
        Inputs {
            store,
            policy,
            client,
        }
    }

    /// Whether the input holds any marker (most do not: nothing to do).
    pub fn wanted(input: &Value) -> bool {
        let mut found = Vec::new();
        markers(input, String::new(), &mut found);
        !found.is_empty()
    }

    /// Downloads every marker of `input` into `dir` and replaces it.
    pub async fn resolve(&self, input: &mut Value, dir: &Path) -> Result<(), String> {
        let mut found = Vec::new();
        markers(input, String::new(), &mut found);
        for (n, (pointer, marker)) in found.into_iter().enumerate() {
            let (name, what) = match &marker {
                Marker::Key(key) => (key.as_str(), format!("the object {key:?}")),
                Marker::Url(url) => (url.as_str(), format!("the URL {url}")),
            };
            let file = dir.join(format!("input-{n}-{}", file_name(name)));
            let limit = self.store.config.fetch_timeout;
            let fetched = tokio::time::timeout(limit, self.fetch(&marker, &file)).await;
            let (size, sha256) = match fetched {
                Ok(Ok(done)) => done,
                Ok(Err(why)) => {
                    return Err(format!(
                        "the input {pointer} ({what}) was not fetched: {why}"
                    ))
                }
                Err(_) => {
                    return Err(format!(
                        "the input {pointer} ({what}) was not fetched within {} (--fetch-timeout)",
                        humantime::format_duration(limit)
                    ))
                }
            };
            let path = file.display().to_string();
            if let Some(slot) = input.pointer_mut(&pointer) {
                *slot = json!({"path": path, "size": size, "sha256": sha256});
            }
        }
        Ok(())
    }

    async fn fetch(&self, marker: &Marker, file: &Path) -> Result<(u64, String), String> {
        let max = self.store.config.fetch_max_size;
        match marker {
            Marker::Key(key) => {
                check_key(key)?;
                let mut sink = Sink::create(file, max).await?;
                self.store.download(key, &mut sink).await?;
                sink.finish().await
            }
            Marker::Url(url) => {
                let url = reqwest::Url::parse(url).map_err(|e| format!("it is not a URL ({e})"))?;
                self.policy.check(&url)?;
                fetch::download(&self.client, &url, file, max).await
            }
        }
    }
}

/// Finds the markers under `value`, with their JSON pointers.
fn markers(value: &Value, at: String, found: &mut Vec<(String, Marker)>) {
    match value {
        Value::Object(map) => {
            if let (1, Some(Value::Object(inner))) = (map.len(), map.get("object")) {
                let key = inner.get("key").and_then(Value::as_str);
                let url = inner.get("url").and_then(Value::as_str);
                match (key, url) {
                    (Some(key), _) => return found.push((at, Marker::Key(key.to_owned()))),
                    (None, Some(url)) => return found.push((at, Marker::Url(url.to_owned()))),
                    _ => {}
                }
            }
            for (k, v) in map {
                let escaped = k.replace('~', "~0").replace('/', "~1");
                markers(v, format!("{at}/{escaped}"), found);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                markers(v, format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

/// A key must stay under the store's prefix.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.starts_with('/') || key.split('/').any(|p| p == ".." || p == ".") {
        return Err(format!(
            "the key {key:?} is not a key under the store's prefix (no leading slash, no . or ..)"
        ));
    }
    Ok(())
}

/// A safe file name from the last part of a key or URL path.
fn file_name(name: &str) -> String {
    let last = name
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let safe: String = last
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(64)
        .collect();
    match safe.trim_start_matches('.') {
        "" => "file".into(),
        s => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_markers_are_found() {
        let input = json!({
            "image": {"object": {"key": "uploads/a/cat.png"}},
            "list": [{"object": {"url": "https://example.com/x.wav?sig=1"}}, "https://example.com/not-a-marker"],
            "other": {"object": {"key": "k"}, "more": 1},
            "a/b": {"object": {"key": "k2"}}
        });
        let mut found = Vec::new();
        markers(&input, String::new(), &mut found);
        let pointers: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(pointers, ["/a~1b", "/image", "/list/0"]);
        assert_eq!(file_name("https://example.com/x.wav?sig=1"), "x.wav");
        assert_eq!(file_name("uploads/a/"), "file");
        assert!(check_key("../x").is_err());
        assert!(check_key("uploads/a").is_ok());
    }
}
