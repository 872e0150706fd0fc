//! Per-endpoint job settings (`--endpoints FILE`): each endpoint's input
//! schema, attempts, ttl, execution timeout and result retention, and the
//! one lookup the routes use to find an endpoint's.
//!
//! The file is TOML, one table per endpoint, every key optional:
//!
//! ```toml
//! [endpoints.sdxl]
//! input_schema = "schemas/sdxl.json"   # relative to the file's folder
//! max_attempts = 5
//! ttl = "2h"
//! execution_timeout = "10m"
//! result_retention = "1h"
//! ```
//!
//! An endpoint not in the file (or with no file) gets the flags'
//! settings. The file is read at start only; a bad file stops jobpipe,
//! naming the file, the line and the field.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::queue::endpoint_name_error;
use crate::error::ConfigError;
use crate::input_schema::InputSchema;
use crate::units::parse_long_duration;

/// What new jobs get when their request does not say.
#[derive(Debug, Clone, Copy)]
pub struct JobDefaults {
    /// Per-attempt run time limit (none: only `--job-timeout` applies).
    pub execution_timeout: Option<Duration>,
    /// Longest wait in the queue before a job ends TIMED_OUT unstarted.
    pub ttl: Duration,
    pub max_attempts: u32,
    /// How long a `/run` job's final status is kept.
    pub run_retention: Duration,
    /// How long a `/runsync` job's final status is kept.
    pub sync_retention: Duration,
    /// How long `/runsync` waits when no `wait` is given.
    pub sync_wait: Duration,
    /// The longest `wait` `/runsync` accepts.
    pub sync_wait_max: Duration,
}

impl Default for JobDefaults {
    /// RunPod's documented values.
    fn default() -> Self {
        JobDefaults {
            execution_timeout: None,
            ttl: Duration::from_secs(24 * 3600),
            max_attempts: 3,
            run_retention: Duration::from_secs(30 * 60),
            sync_retention: Duration::from_secs(60),
            sync_wait: Duration::from_secs(90),
            sync_wait_max: Duration::from_secs(300),
        }
    }
}

impl JobDefaults {
    /// These defaults with a result retention of `retention`: a `/run`
    /// job's, and a `/runsync` job's if shorter than RunPod's minute.
    pub fn with_retention(mut self, retention: Duration) -> JobDefaults {
        self.run_retention = retention;
        self.sync_retention = JobDefaults::default().sync_retention.min(retention);
        self
    }
}

/// One endpoint's defaults and schema.
#[derive(Debug, Clone)]
struct Settings {
    defaults: JobDefaults,
    schema: Option<Arc<InputSchema>>,
}

/// Every endpoint's settings: those of the file, and the flags' for the
/// rest.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    flags: Settings,
    named: HashMap<String, Settings>,
}

impl EndpointSettings {
    /// The flags' settings for every endpoint.
    pub fn uniform(defaults: JobDefaults, schema: Option<Arc<InputSchema>>) -> EndpointSettings {
        EndpointSettings {
            flags: Settings { defaults, schema },
            named: HashMap::new(),
        }
    }

    /// The flags' settings, with those of `file` (if given) for the
    /// endpoints it names.
    pub fn load(
        file: Option<&Path>,
        defaults: JobDefaults,
        schema: Option<Arc<InputSchema>>,
    ) -> Result<EndpointSettings, ConfigError> {
        let mut settings = EndpointSettings::uniform(defaults, schema);
        let Some(path) = file else {
            return Ok(settings);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::Invalid(format!(
                "cannot read the endpoints file {} (--endpoints): {e}",
                path.display()
            ))
        })?;
        let folder = path.parent().unwrap_or(Path::new("."));
        settings.named = parse(&text, folder, &settings.flags).map_err(|why| {
            ConfigError::Invalid(format!("endpoints file {}: {why}", path.display()))
        })?;
        Ok(settings)
    }

    /// The defaults and schema of jobs submitted to `endpoint`.
    pub fn for_endpoint(&self, endpoint: &str) -> (&JobDefaults, Option<&InputSchema>) {
        let settings = self.named.get(endpoint).unwrap_or(&self.flags);
        (&settings.defaults, settings.schema.as_deref())
    }

    /// The longest any endpoint keeps a finished `/run` job.
    pub fn longest_retention(&self) -> Duration {
        self.named
            .values()
            .map(|s| s.defaults.run_retention)
            .fold(self.flags.defaults.run_retention, Duration::max)
    }

    /// The endpoints the file names.
    pub fn named(&self) -> impl Iterator<Item = &String> {
        self.named.keys()
    }

    /// Whether some endpoint has a schema other than `--input-schema`'s.
    pub fn has_own_schemas(&self) -> bool {
        self.named
            .values()
            .any(|s| match (&s.schema, &self.flags.schema) {
                (Some(own), Some(flag)) => !Arc::ptr_eq(own, flag),
                (own, flag) => own.is_some() != flag.is_some(),
            })
    }
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    #[serde(default)]
    endpoints: BTreeMap<toml::Spanned<String>, EndpointSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointSpec {
    input_schema: Option<toml::Spanned<String>>,
    max_attempts: Option<toml::Spanned<i64>>,
    ttl: Option<toml::Spanned<String>>,
    execution_timeout: Option<toml::Spanned<String>>,
    result_retention: Option<toml::Spanned<String>>,
}

/// The line (from 1) of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Each endpoint's settings in `text`, schema paths taken from `folder`,
/// the rest from `flags`; or what is wrong and on which line.
fn parse(text: &str, folder: &Path, flags: &Settings) -> Result<HashMap<String, Settings>, String> {
    let file: SettingsFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(String::new(), |span| {
            format!("line {}: ", line_of(text, span.start))
        });
        format!("{line}{}", e.message())
    })?;
    let mut named = HashMap::new();
    for (name, spec) in &file.endpoints {
        let at = |span: std::ops::Range<usize>, field: &str, why: String| {
            format!(
                "line {}: endpoint {:?}: {field}: {why}",
                line_of(text, span.start),
                name.get_ref()
            )
        };
        if let Some(why) = endpoint_name_error(name.get_ref()) {
            return Err(format!("line {}: {why}", line_of(text, name.span().start)));
        }
        let mut settings = flags.clone();
        if let Some(path) = &spec.input_schema {
            let schema = load_schema(&folder.join(path.get_ref()))
                .map_err(|why| at(path.span(), "input_schema", why))?;
            settings.schema = Some(Arc::new(schema));
        }
        if let Some(n) = &spec.max_attempts {
            let value = *n.get_ref();
            if !(1..=100).contains(&value) {
                let why = format!("must be from 1 to 100, not {value}");
                return Err(at(n.span(), "max_attempts", why));
            }
            settings.defaults.max_attempts = value as u32;
        }
        let duration =
            |given: &toml::Spanned<String>, field: &str| match parse_long_duration(given.get_ref())
            {
                Ok(d) if d > Duration::ZERO => Ok(d),
                Ok(_) => Err(at(given.span(), field, "must be longer than 0s".into())),
                Err(e) => Err(at(given.span(), field, e.to_string())),
            };
        if let Some(ttl) = &spec.ttl {
            settings.defaults.ttl = duration(ttl, "ttl")?;
        }
        if let Some(timeout) = &spec.execution_timeout {
            settings.defaults.execution_timeout = Some(duration(timeout, "execution_timeout")?);
        }
        if let Some(retention) = &spec.result_retention {
            let retention = duration(retention, "result_retention")?;
            settings.defaults = settings.defaults.with_retention(retention);
        }
        named.insert(name.get_ref().clone(), settings);
    }
    Ok(named)
}

/// The schema at `path`, or why it cannot be used.
fn load_schema(path: &Path) -> Result<InputSchema, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let schema: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{shown} is not valid JSON: {e}"))?;
    InputSchema::new(&schema).map_err(|e| format!("{shown} is not a usable JSON Schema: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Settings {
        Settings {
            defaults: JobDefaults::default(),
            schema: None,
        }
    }

    #[test]
    fn a_good_file_sets_its_endpoints_and_leaves_the_rest_to_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.json"), r#"{"required": ["prompt"]}"#).unwrap();
        let text = "[endpoints.sdxl]\ninput_schema = \"s.json\"\nmax_attempts = 5\nttl = \"2h\"\nexecution_timeout = \"10m\"\nresult_retention = \"30s\"\n\n[endpoints.llm]\n";
        let named = parse(text, dir.path(), &flags()).unwrap();
        let settings = EndpointSettings {
            flags: flags(),
            named,
        };
        let (defaults, schema) = settings.for_endpoint("sdxl");
        assert_eq!(defaults.max_attempts, 5);
        assert_eq!(defaults.ttl, Duration::from_secs(7200));
        assert_eq!(defaults.execution_timeout, Some(Duration::from_secs(600)));
        assert_eq!(defaults.run_retention, Duration::from_secs(30));
        assert_eq!(defaults.sync_retention, Duration::from_secs(30));
        assert!(!schema.unwrap().check(&serde_json::json!({})).is_empty());
        let (defaults, schema) = settings.for_endpoint("llm");
        assert_eq!(defaults.max_attempts, 3);
        assert!(schema.is_none());
        assert!(settings.for_endpoint("other").1.is_none());
        assert!(settings.has_own_schemas());
    }

    #[test]
    fn the_longest_retention_is_of_any_endpoint_or_the_flags() {
        let settings = |text: &str| EndpointSettings {
            flags: flags(),
            named: parse(text, Path::new("."), &flags()).unwrap(),
        };
        let short = settings("[endpoints.a]\nresult_retention = \"30s\"\n");
        assert_eq!(short.longest_retention(), Duration::from_secs(30 * 60));
        let long = settings("[endpoints.a]\nresult_retention = \"2days\"\n[endpoints.b]\n");
        assert_eq!(long.longest_retention(), Duration::from_secs(2 * 86400));
    }

    #[test]
    fn a_bad_file_names_the_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.json"), "{not json").unwrap();
        for (text, line, complaint) in [
            (
                "[endpoints.a]\nmax_attempts = 0\n",
                "line 2",
                "max_attempts: must be from 1",
            ),
            ("[endpoints.a]\n\nttl = \"soon\"\n", "line 3", "ttl:"),
            (
                "[endpoints.a]\nexecution_timeout = \"0s\"\n",
                "line 2",
                "execution_timeout: must be longer",
            ),
            (
                "[endpoints.a]\nresult_retention = \"30d\"\n",
                "line 2",
                "result_retention:",
            ),
            (
                "[endpoints.a]\ninput_schema = \"missing.json\"\n",
                "line 2",
                "input_schema: cannot read",
            ),
            (
                "[endpoints.a]\ninput_schema = \"bad.json\"\n",
                "line 2",
                "not valid JSON",
            ),
            (
                "[endpoints.a]\ncolour = 1\n",
                "line 2",
                "unknown field `colour`",
            ),
            (
                "[endpoints.\"no spaces\"]\n",
                "line 1",
                "not an endpoint name",
            ),
            ("[other]\n", "line 1", "unknown field `other`"),
        ] {
            let error = parse(text, dir.path(), &flags()).map(|_| ()).unwrap_err();
            assert!(
                error.contains(line) && error.contains(complaint),
                "{text:?}: {error}"
            );
        }
    }
}
