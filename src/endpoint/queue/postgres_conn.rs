//! Reaching the PostgreSQL queue: the `--queue postgres://…` URL, the
//! password kept out of every message, which connection errors are the
//! user's to fix (exit 2) and which are worth waiting out, and the one log
//! line per change of the database's reachability.
//!
//! The password comes from the URL or from `PGPASSWORD`. Errors from the
//! driver are passed through [`PgTarget::redact`] before anyone sees them,
//! so even a driver message that quoted the URL would not show it.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

use super::postgres_typed::Statements;
use crate::error::ConfigError;

/// How long one connection attempt may take before it counts as failed.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections one process keeps at most by default (besides its
/// listener): a fleet of 100 workers then needs about 500 of the server.
pub const DEFAULT_POOL_SIZE: usize = 4;

/// A PostgreSQL server and database to keep the queue in.
#[derive(Clone)]
pub struct PgTarget {
    pub(super) config: tokio_postgres::Config,
    /// The URL as shown in messages: the password replaced by `***`.
    shown: String,
    password: Option<String>,
    /// Connections the process keeps at most, besides its listener.
    pub(super) pool_size: usize,
    /// Where the process hears other processes' events.
    pub(super) listen: Listen,
}

/// Where a process hears the queue's notifications (`--queue-listen-url`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A connection of its own to the queue's URL (the default).
    Queue,
    /// A connection to this URL instead: the queue's URL goes through
    /// PgBouncer in transaction mode, which cannot hold a `LISTEN`, and
    /// this one reaches the same database directly.
    Direct(Box<PgTarget>),
    /// No connection: the process looks at the database every
    /// [`super::postgres::POLL_INTERVAL`] or so instead.
    Poll,
}

impl PgTarget {
    /// How statements are sent on this URL's connections (see
    /// [`super::postgres_typed`]): prepared when the URL also carries the
    /// process's `LISTEN`, so it is not PgBouncer in transaction mode.
    pub(super) fn statements(&self) -> Statements {
        match self.listen {
            Listen::Queue => Statements::Prepared,
            Listen::Direct(_) | Listen::Poll => Statements::Unnamed,
        }
    }

    /// Parses `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?options]`;
    /// the password may come from `pgpassword` (`PGPASSWORD`) instead.
    pub fn parse(url: &str, pgpassword: Option<String>) -> Result<PgTarget, ConfigError> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            let why = redact_secret(&e.to_string(), url_password(url).as_deref());
            ConfigError::Invalid(format!(
                "--queue is not a valid PostgreSQL URL ({why}); write it as postgres://USER@HOST[:PORT]/DATABASE and give the password in PGPASSWORD"
            ))
        })?;
        let complaint = |what: &str| {
            ConfigError::Invalid(format!(
                "--queue {} names no {what}; write it as postgres://USER@HOST[:PORT]/DATABASE",
                redact_secret(url, url_password(url).as_deref())
            ))
        };
        if config.get_hosts().is_empty() {
            return Err(complaint("host"));
        }
        if config.get_user().is_none() {
            return Err(complaint("user"));
        }
        if config.get_dbname().is_none() {
            return Err(complaint("database"));
        }
        if config.get_password().is_none() {
            if let Some(password) = pgpassword.filter(|p| !p.is_empty()) {
                config.password(password);
            }
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        // A worker cut off without a reset must notice within a lease or so.
        config.keepalives_idle(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("jobpipe");
        }
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let shown = redact_secret(url, url_password(url).as_deref());
        Ok(PgTarget {
            config,
            shown,
            password,
            pool_size: DEFAULT_POOL_SIZE,
            listen: Listen::Queue,
        })
    }

    /// The target with at most `size` pooled connections (`--queue-pool-size`).
    pub fn with_pool_size(mut self, size: usize) -> PgTarget {
        self.pool_size = size.max(1);
        self
    }

    /// The target listening where `--queue-listen-url` says: `None` for the
    /// queue's own URL, `off` to poll, or a `postgres://` URL (its password
    /// from the URL or `pgpassword`).
    pub fn with_listen(
        mut self,
        text: Option<&str>,
        pgpassword: Option<String>,
    ) -> Result<PgTarget, ConfigError> {
        self.listen = match text {
            None => Listen::Queue,
            Some("off") => Listen::Poll,
            Some(url) => {
                let direct = PgTarget::parse(url, pgpassword).map_err(|e| {
                    ConfigError::Invalid(format!(
                        "{}; --queue-listen-url takes a postgres:// URL that reaches the queue's database without PgBouncer, or off",
                        e.to_string().replace("--queue ", "--queue-listen-url ")
                    ))
                })?;
                Listen::Direct(Box::new(direct))
            }
        };
        Ok(self)
    }

    /// `text` with the password, if it appears, replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        redact_secret(text, self.password.as_deref())
    }

    /// The error's text, redacted, with the driver's detail when it has one.
    pub(super) fn describe(&self, error: &tokio_postgres::Error) -> String {
        if error.to_string().contains("password missing") {
            return "the server asks for a password and none was given: put it in \
                    the URL (postgres://USER:PASSWORD@HOST/DB) or in PGPASSWORD"
                .to_owned();
        }
        if error.code() == Some(&SqlState::TOO_MANY_CONNECTIONS) {
            return self.redact(&format!(
                "{} ({}): the server has no connection left for this process; raise max_connections on the server, lower --queue-pool-size (JOBPIPE_QUEUE_POOL_SIZE) on every process, or put PgBouncer in front",
                error.as_db_error().map_or_else(|| error.to_string(), |db| db.message().to_owned()),
                SqlState::TOO_MANY_CONNECTIONS.code()
            ));
        }
        let text = match error.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => match std::error::Error::source(error) {
                Some(source) => format!("{error}: {source}"),
                None => error.to_string(),
            },
        };
        self.redact(&text)
    }

    /// Whether the server refused us for a reason that waiting will not
    /// fix: wrong password, unknown user or database, no permission; or our
    /// own configuration cannot work with it (no password where it asks
    /// for one, an authentication method the driver does not speak).
    pub(super) fn is_refusal(error: &tokio_postgres::Error) -> bool {
        let Some(code) = error.code() else {
            // The driver has no public kind for these: its message names
            // the kind first ("invalid configuration: password missing",
            // "authentication error: unsupported SASL mechanism").
            let text = error.to_string();
            return [
                "invalid configuration",
                "authentication error",
                "invalid connection string",
            ]
            .iter()
            .any(|kind| text.starts_with(kind));
        };
        // Too many clients: at start, a fleet too large for the server,
        // which waiting will not fix either.
        *code == SqlState::TOO_MANY_CONNECTIONS
            || *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            || *code == SqlState::INVALID_CATALOG_NAME
            || *code == SqlState::INSUFFICIENT_PRIVILEGE
    }
}

impl fmt::Display for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgTarget({})", self.shown)
    }
}

impl PartialEq for PgTarget {
    fn eq(&self, other: &Self) -> bool {
        self.shown == other.shown && self.password == other.password
    }
}

impl Eq for PgTarget {}

/// The password written in a URL, percent-decoded as the driver reads it.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split(['/', '?']).next()?.rsplit_once('@')?.0;
    let raw = userinfo.split_once(':')?.1;
    let mut bytes = Vec::with_capacity(raw.len());
    let mut iter = raw.bytes();
    while let Some(b) = iter.next() {
        if b == b'%' {
            let hex: Vec<u8> = iter.by_ref().take(2).collect();
            match std::str::from_utf8(&hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(decoded) => bytes.push(decoded),
                None => return Some(raw.to_owned()),
            }
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

fn redact_secret(text: &str, secret: Option<&str>) -> String {
    let mut text = text.to_owned();
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        text = text.replace(secret, "***");
        // The URL spells it percent-encoded when it has special characters.
        if let Some(raw) = text
            .split_once("://")
            .and_then(|(_, rest)| rest.split(['/', '?']).next())
            .and_then(|authority| authority.rsplit_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, raw)| raw.to_owned())
            .filter(|raw| raw != "***")
        {
            text = text.replacen(&format!(":{raw}@"), ":***@", 1);
        }
    }
    text
}

/// Whether the database answers, logged once per change rather than once
/// per failed call.
#[derive(Default)]
pub(super) struct Reachability {
    down_since: Mutex<Option<Instant>>,
}

impl Reachability {
    /// A call failed because the database could not be reached.
    pub(super) fn failed(&self, target: &PgTarget, why: &str) {
        let mut down = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        if down.is_none() {
            *down = Some(Instant::now());
            tracing::warn!(
                "the queue database {target} cannot be reached: {why}; retrying with back-off (running jobs go on; their results are saved when it returns)"
            );
        }
    }

    /// A call reached the database.
    pub(super) fn succeeded(&self, target: &PgTarget) {
        let mut down = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = down.take() {
            tracing::info!(
                "the queue database {target} is reachable again after {:.1}s",
                since.elapsed().as_secs_f64()
            );
        }
    }

    pub(super) fn is_down(&self) -> bool {
        self.down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_user_host_and_database_parses() {
        let target = PgTarget::parse("postgres://jp:s3cret@db.local:6543/jobs", None).unwrap();
        assert_eq!(target.to_string(), "postgres://jp:***@db.local:6543/jobs");
        assert_eq!(target.config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(target.config.get_dbname(), Some("jobs"));
    }

    #[test]
    fn pgpassword_fills_in_a_missing_password_only() {
        let target = PgTarget::parse("postgres://jp@db/jobs", Some("fromenv".into())).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"fromenv"[..]));
        let target = PgTarget::parse("postgres://jp:url@db/jobs", Some("fromenv".into())).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"url"[..]));
        assert_eq!(target.redact("x url y"), "x *** y");
    }

    #[test]
    fn malformed_urls_are_refused_without_the_password() {
        for url in [
            "postgres://jp:pass@db:99999/jobs",
            "postgres://jp:pass@db:notaport/jobs",
            "postgres://jp:pass@/jobs",
            "postgres://jp:pass@db",
        ] {
            let error = PgTarget::parse(url, None).unwrap_err().to_string();
            assert!(!error.contains("pass@"), "{url}: {error}");
            assert!(error.contains("postgres://USER@HOST"), "{url}: {error}");
        }
    }

    #[test]
    fn encoded_passwords_are_redacted_in_both_spellings() {
        let target = PgTarget::parse("postgres://jp:p%40ss@db/jobs", None).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(target.to_string(), "postgres://jp:***@db/jobs");
        assert_eq!(target.redact("it was p@ss"), "it was ***");
        assert!(!format!("{target:?}").contains("p%40ss"));
    }
}
