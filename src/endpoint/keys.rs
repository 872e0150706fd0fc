//! API keys and the tenants they name (`--api-keys FILE`): who may call
//! the endpoint API, on which endpoints, to do what, and how fast.
//!
//! The file is TOML, one `[[keys]]` table per key:
//!
//! ```toml
//! [[keys]]
//! name = "acme"                # the tenant; recorded on each of its jobs
//! key_sha256 = "9f86d0…"       # or key = "…" (the key itself)
//! endpoints = ["sdxl", "llm"]  # or ["*"] for every endpoint
//! role = "submit"              # or "read": status, stream, lists, health
//! rate = "20/s"                # optional: submissions a second
//! max_running = 4              # optional: its jobs in progress at once
//! ```
//!
//! Keys are kept only as SHA-256 hashes and a presented key is compared
//! with every one in constant time, so neither the file's text nor the
//! timing of an answer gives a key away; nothing here logs a key. The file
//! is read at start (a bad file stops jobpipe, naming the line and field)
//! and again on SIGHUP, when a bad file is logged and the keys in use
//! stay.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::queue::endpoint_name_error;
use crate::error::ConfigError;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything: submit, cancel, retry, purge, and every read.
    Submit,
    /// Reads only: status, stream, health, the job and worker lists.
    Read,
}

/// One key of the file, as used: its hash, never its text.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    hash: [u8; 32],
    /// `None`: every endpoint.
    endpoints: Option<Vec<String>>,
    pub role: Role,
    /// Submissions a second, if limited.
    pub rate: Option<f64>,
    /// Its jobs in progress at once, on every endpoint together, if
    /// limited: recorded on each job it submits, and a worker skips the
    /// tenant's waiting jobs while that many run.
    pub max_running: Option<u32>,
}

impl Tenant {
    /// Whether the key may be used on `endpoint`.
    pub fn serves(&self, endpoint: &str) -> bool {
        self.endpoints
            .as_ref()
            .is_none_or(|list| list.iter().any(|e| e == endpoint))
    }

    /// A key with every right on every endpoint (`--api-key`).
    pub fn admin(name: &str, key: &str) -> Tenant {
        Tenant {
            name: name.to_owned(),
            hash: sha256(key.as_bytes()),
            endpoints: None,
            role: Role::Submit,
            rate: None,
            max_running: None,
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The keys in use, swapped whole on reload, and each tenant's rate
/// bucket.
pub struct KeyRing {
    tenants: RwLock<Arc<Vec<Tenant>>>,
    /// Where the keys came from, to read again on SIGHUP.
    file: Option<PathBuf>,
    /// `--api-key`, kept across reloads.
    admin: Option<Tenant>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// The keys of `file` (if given) and the single `admin` key (if given).
    pub fn load(file: Option<&Path>, admin: Option<&str>) -> Result<KeyRing, ConfigError> {
        let admin = admin.map(|key| Tenant::admin("admin", key));
        let mut tenants = match file {
            Some(path) => read_file(path)?,
            None => Vec::new(),
        };
        tenants.extend(admin.clone());
        Ok(KeyRing {
            tenants: RwLock::new(Arc::new(tenants)),
            file: file.map(Path::to_path_buf),
            admin,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Reads the file again; on an error the keys in use stay.
    pub fn reload(&self) -> Result<usize, ConfigError> {
        let Some(path) = &self.file else {
            return Ok(self.current().len());
        };
        let mut tenants = read_file(path)?;
        tenants.extend(self.admin.clone());
        let count = tenants.len();
        *self.tenants.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tenants);
        Ok(count)
    }

    fn current(&self) -> Arc<Vec<Tenant>> {
        self.tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The tenant whose key `given` is, compared with every key in
    /// constant time.
    pub fn find(&self, given: &str) -> Option<Tenant> {
        let hash = sha256(given.as_bytes());
        let mut found = None;
        for tenant in self.current().iter() {
            if bool::from(tenant.hash.ct_eq(&hash)) && found.is_none() {
                found = Some(tenant.clone());
            }
        }
        found
    }

    /// Takes one submission from `tenant`'s rate; when none is left, how
    /// long until one is.
    pub fn admit(&self, tenant: &Tenant) -> Result<(), Duration> {
        let Some(rate) = tenant.rate else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry(tenant.name.clone())
            .or_insert_with(|| Bucket::full(rate));
        bucket.take(rate, Instant::now())
    }
}

/// A token bucket holding a second's worth of submissions.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: f64) -> Bucket {
        Bucket {
            tokens: rate.max(1.0),
            at: Instant::now(),
        }
    }

    fn take(&mut self, rate: f64, now: Instant) -> Result<(), Duration> {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(rate.max(1.0));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    keys: Vec<toml::Spanned<KeySpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySpec {
    name: String,
    key: Option<String>,
    key_sha256: Option<String>,
    endpoints: Vec<String>,
    role: String,
    rate: Option<String>,
    max_running: Option<i64>,
}

fn read_file(path: &Path) -> Result<Vec<Tenant>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::Invalid(format!(
            "cannot read the API keys file {}: {e}",
            path.display()
        ))
    })?;
    parse(&text)
        .map_err(|why| ConfigError::Invalid(format!("API keys file {}: {why}", path.display())))
}

/// The line (from 1) of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The tenants `text` names, or what is wrong and on which line. The
/// parser's own message is not passed on whole: it quotes the line, which
/// may hold a key.
fn parse(text: &str) -> Result<Vec<Tenant>, String> {
    let file: KeyFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(String::new(), |span| {
            format!("line {}: ", line_of(text, span.start))
        });
        format!("{line}{}", e.message())
    })?;
    if file.keys.is_empty() {
        return Err("no [[keys]] table: give at least one key".into());
    }
    let mut tenants: Vec<Tenant> = Vec::new();
    for spanned in &file.keys {
        let line = line_of(text, spanned.span().start);
        let spec = spanned.get_ref();
        let tenant =
            tenant(spec).map_err(|why| format!("line {line}: key {:?}: {why}", spec.name))?;
        if tenants.iter().any(|t| t.name == tenant.name) {
            return Err(format!(
                "line {line}: name {:?} is used by another key; each key names its own tenant",
                tenant.name
            ));
        }
        if tenants.iter().any(|t| t.hash == tenant.hash) {
            return Err(format!(
                "line {line}: key {:?} is the same key as another; each tenant needs its own",
                tenant.name
            ));
        }
        tenants.push(tenant);
    }
    Ok(tenants)
}

fn tenant(spec: &KeySpec) -> Result<Tenant, String> {
    if spec.name.is_empty() || spec.name.len() > 64 || spec.name.contains(char::is_control) {
        return Err("name must be 1 to 64 printable characters".into());
    }
    let hash = match (&spec.key, &spec.key_sha256) {
        (Some(key), None) if key.len() >= 16 => sha256(key.as_bytes()),
        (Some(_), None) => return Err("key must be at least 16 characters long".into()),
        (None, Some(hex)) => decode_hash(hex).ok_or("key_sha256 must be 64 hex digits")?,
        (Some(_), Some(_)) => return Err("give key or key_sha256, not both".into()),
        (None, None) => return Err("give key or key_sha256".into()),
    };
    let endpoints = match spec.endpoints.as_slice() {
        [] => return Err("endpoints is empty: list endpoint names, or [\"*\"] for all".into()),
        [all] if all == "*" => None,
        names => {
            for name in names {
                if let Some(why) = endpoint_name_error(name) {
                    return Err(format!("endpoints: {why}"));
                }
            }
            Some(names.to_vec())
        }
    };
    let role = match spec.role.as_str() {
        "submit" => Role::Submit,
        "read" => Role::Read,
        other => {
            return Err(format!(
                "role must be \"submit\" or \"read\", not {other:?}"
            ))
        }
    };
    let rate = spec.rate.as_deref().map(parse_rate).transpose()?;
    let max_running = match spec.max_running {
        None => None,
        Some(n @ 1..=1_000_000) => Some(n as u32),
        Some(n) => return Err(format!("max_running must be 1 to 1000000, not {n}")),
    };
    Ok(Tenant {
        name: spec.name.clone(),
        hash,
        endpoints,
        role,
        rate,
        max_running,
    })
}

fn decode_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash)
}

/// `"N/s"` or `"N/m"`: submissions a second or a minute, as a second's.
fn parse_rate(text: &str) -> Result<f64, String> {
    let bad = || format!("rate must look like \"20/s\" or \"600/m\", not {text:?}");
    let (count, unit) = text.split_once('/').ok_or_else(bad)?;
    let count: f64 = count.trim().parse().map_err(|_| bad())?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        _ => return Err(bad()),
    };
    if !(count.is_finite() && count > 0.0) {
        return Err(bad());
    }
    Ok(count / per)
}

/// Reloads `ring` on every SIGHUP until `stop`.
pub async fn reload_on_sighup(ring: Arc<KeyRing>, stop: tokio_util::sync::CancellationToken) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; the API keys file is read at start only");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = stop.cancelled() => return,
        }
        match ring.reload() {
            Ok(count) => tracing::info!("API keys file read again: {count} keys"),
            Err(e) => tracing::error!("{e}; the keys read before stay in use"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[keys]]
name = "acme"
key = "acme-key-0123456789"
endpoints = ["sdxl"]
role = "submit"
rate = "2/s"
max_running = 3

[[keys]]
name = "viewer"
key_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
endpoints = ["*"]
role = "read"
"#;

    #[test]
    fn a_good_file_gives_its_tenants_and_finds_them_by_key() {
        let tenants = parse(GOOD).unwrap();
        assert_eq!(tenants.len(), 2);
        let ring = KeyRing {
            tenants: RwLock::new(Arc::new(tenants)),
            file: None,
            admin: None,
            buckets: Mutex::new(HashMap::new()),
        };
        let acme = ring.find("acme-key-0123456789").unwrap();
        assert_eq!((acme.name.as_str(), acme.role), ("acme", Role::Submit));
        assert!(acme.serves("sdxl") && !acme.serves("llm"));
        assert_eq!(acme.max_running, Some(3));
        // sha256("test")
        let viewer = ring.find("test").unwrap();
        assert_eq!(viewer.role, Role::Read);
        assert!(viewer.serves("anything"));
        assert!(ring.find("acme-key-012345678").is_none());
        assert!(ring.admit(&acme).is_ok());
        assert!(ring.admit(&acme).is_ok());
        let wait = ring.admit(&acme).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
    }

    #[test]
    fn a_bad_file_names_the_line_and_field_and_never_the_key() {
        for (text, line, complaint) in [
            ("[[keys]]\nname = \"a\"\nkey = \"secret-value-1234567\"\nendpoints = [\"x\"]\nrole = \"admin\"\n", "line 1", "role must be"),
            ("[[keys]]\nname = \"a\"\nkey = \"short\"\nendpoints = [\"x\"]\nrole = \"read\"\n", "line 1", "at least 16"),
            ("\n\n[[keys]]\nname = \"a\"\nkey = \"secret-value-1234567\"\nendpoints = []\nrole = \"read\"\n", "line 3", "endpoints is empty"),
            ("[[keys]]\nname = \"a\"\nkey = \"secret-value-1234567\"\nendpoints = [\"x\"]\nrole = \"read\"\nrate = \"fast\"\n", "line 1", "rate must"),
            ("[[keys]]\nname = \"a\"\nkey = \"secret-value-1234567\"\nendpoints = [\"x\"]\nrole = \"read\"\ncolour = 1\n", "line ", "unknown field"),
            ("[[keys]]\nname = \"a\"\nkey = \"secret-value-1234567\"\nendpoints = [\"x\"]\nrole = \"submit\"\nmax_running = 0\n", "line 1", "max_running must be 1 to"),
            ("[[keys]]\nname = \"a\"\nkey = \"secret-value-1234567\n", "line 3", ""),
            ("", "", "no [[keys]]"),
        ] {
            let error = parse(text).map(|_| ()).unwrap_err();
            assert!(error.contains(line) && error.contains(complaint), "{text:?}: {error}");
            assert!(!error.contains("secret-value"), "the key leaked: {error}");
        }
    }

    #[test]
    fn rates_are_per_second_or_per_minute() {
        assert_eq!(parse_rate("20/s"), Ok(20.0));
        assert_eq!(parse_rate("600/m"), Ok(10.0));
        for bad in ["0/s", "-1/s", "5", "5/h", "x/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
