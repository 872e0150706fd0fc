//! The RunPod worker URLs of one worker, parsed once at start.
//!
//! Parsing a URL (its host above all) is a large part of what one request
//! costs, and the HTTP client parses each request's URL twice more on its
//! own; so jobpipe parses each template once, with the worker id in place,
//! and a request only swaps in its job id and query. A template that is not
//! a URL is a configuration error at start, not a failure of every request.

use reqwest::Url;

use super::runpod_config::RunpodConfig;
use crate::error::ConfigError;

/// Every URL a RunPod worker calls.
pub(super) struct Urls {
    /// A single take, without and with `job_in_progress=1`.
    take: [Url; 2],
    /// The batch take, derived from the take URL when it has `/job-take/`.
    batch: Option<Url>,
    /// The job-stop long poll, derived the same way.
    pub(super) stop: Option<Url>,
    ping: Option<Url>,
    pub(super) done: JobUrl,
    pub(super) stream: JobUrl,
}

/// A done or stream URL with `$ID` still to be filled with a job id.
pub(super) struct JobUrl {
    base: Url,
    /// When `$ID` is the last segment of the path (as in RunPod's own
    /// templates): the URL of its folder and the template's query, so a
    /// job's URL is one relative reference resolved against a parsed URL,
    /// about half the work of setting its path and query.
    folder: Option<(Url, String)>,
}

impl Urls {
    pub(super) fn new(config: &RunpodConfig, worker_id: &str) -> Result<Urls, ConfigError> {
        // For take, ping and stop, `$RUNPOD_POD_ID` and `$ID` both mean the worker.
        let worker = |name: &str, template: &str| {
            parse(
                name,
                &template
                    .replace("$RUNPOD_POD_ID", worker_id)
                    .replace("$ID", worker_id),
            )
        };
        let take = worker("RUNPOD_WEBHOOK_GET_JOB", &config.take_url)?;
        let derived = |to: &str| {
            config
                .take_url
                .contains("/job-take/")
                .then(|| {
                    worker(
                        "RUNPOD_WEBHOOK_GET_JOB",
                        &config.take_url.replacen("/job-take/", to, 1),
                    )
                })
                .transpose()
        };
        let job = |name: &str, template: &str| {
            parse(name, &template.replace("$RUNPOD_POD_ID", worker_id)).map(JobUrl::new)
        };
        Ok(Urls {
            take: [
                with_params(&take, "job_in_progress=0"),
                with_params(&take, "job_in_progress=1"),
            ],
            batch: derived("/job-take-batch/")?,
            stop: derived("/job-stop/")?,
            ping: config
                .ping_url
                .as_deref()
                .map(|template| worker("RUNPOD_WEBHOOK_PING", template))
                .transpose()?,
            done: job("RUNPOD_WEBHOOK_POST_OUTPUT", &config.done_url)?,
            stream: job("RUNPOD_WEBHOOK_POST_STREAM", &config.stream_url)?,
        })
    }

    /// The take for `count` jobs: a batch take when there is a batch URL
    /// and room for more than one.
    pub(super) fn take(&self, count: usize, in_progress: bool) -> Url {
        match &self.batch {
            Some(batch) if count > 1 => with_params(
                batch,
                &format!(
                    "batch_size={count}&job_in_progress={}",
                    u8::from(in_progress)
                ),
            ),
            _ => self.take[usize::from(in_progress)].clone(),
        }
    }

    /// The heartbeat with the ids this worker holds; `None` without a ping URL.
    pub(super) fn ping(&self, ids: &[String]) -> Option<Url> {
        let params = format!(
            "job_id={}&runpod_version={}",
            encode(&ids.join(",")),
            crate::VERSION
        );
        self.ping.as_ref().map(|ping| with_params(ping, &params))
    }
}

impl JobUrl {
    fn new(base: Url) -> JobUrl {
        let query = base.query().unwrap_or_default();
        let folder = (base.path().ends_with("/$ID") && !query.contains("$ID"))
            .then(|| base.join(".").ok())
            .flatten()
            .map(|folder| (folder, query.to_owned()));
        JobUrl { base, folder }
    }

    /// The URL for one job, with `params` added to the query.
    pub(super) fn for_job(&self, job_id: &str, params: &str) -> Url {
        let id = encode(job_id);
        if let Some((folder, query)) = &self.folder {
            let sep = if query.is_empty() { "" } else { "&" };
            if let Ok(url) = folder.join(&format!("{id}?{query}{sep}{params}")) {
                return url;
            }
        }
        let mut url = self.base.clone();
        if url.path().contains("$ID") {
            let path = url.path().replace("$ID", &id);
            url.set_path(&path);
        }
        if let Some(query) = url.query().filter(|q| q.contains("$ID")) {
            let query = query.replace("$ID", &id);
            url.set_query(Some(&query));
        }
        with_params(&url, params)
    }
}

fn parse(name: &str, text: &str) -> Result<Url, ConfigError> {
    Url::parse(text).map_err(|e| {
        ConfigError::Invalid(format!(
            "{name} is not a URL ({e}): {text:?}; give the full URL, such as https://api.runpod.ai/v2/..."
        ))
    })
}

/// Adds query parameters to a URL that may already carry some.
fn with_params(url: &Url, params: &str) -> Url {
    let mut url = url.clone();
    let query = match url.query() {
        Some(query) if !query.is_empty() => format!("{query}&{params}"),
        _ => params.to_owned(),
    };
    url.set_query(Some(&query));
    url
}

/// Percent-encodes text for a URL path segment or query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~,".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(take_url: &str) -> RunpodConfig {
        RunpodConfig {
            take_url: take_url.into(),
            done_url: "https://h/v2/ep/job-done/$RUNPOD_POD_ID/$ID?gpu=A40".into(),
            stream_url: "https://h/v2/ep/job-stream/$RUNPOD_POD_ID/$ID".into(),
            ping_url: Some("https://h/v2/ep/ping/$ID?gpu=A40".into()),
            ping_interval: Duration::from_secs(10),
            api_key: "k".into(),
            spool_dir: "/tmp".into(),
            max_undelivered: 16,
            aggregate_stream: None,
            input_schema: None,
        }
    }

    #[test]
    fn templates_are_filled_as_runpod_defines() {
        let urls = Urls::new(
            &config("https://h/v2/ep/job-take/$RUNPOD_POD_ID?gpu=A40"),
            "pod-1",
        )
        .unwrap();
        assert_eq!(
            urls.take(1, false).as_str(),
            "https://h/v2/ep/job-take/pod-1?gpu=A40&job_in_progress=0"
        );
        assert_eq!(
            urls.take(3, true).as_str(),
            "https://h/v2/ep/job-take-batch/pod-1?gpu=A40&batch_size=3&job_in_progress=1"
        );
        assert_eq!(
            urls.stop.as_ref().unwrap().as_str(),
            "https://h/v2/ep/job-stop/pod-1?gpu=A40"
        );
        assert_eq!(
            urls.ping(&["a".into(), "b c".into()]).unwrap().as_str(),
            format!(
                "https://h/v2/ep/ping/pod-1?gpu=A40&job_id=a,b%20c&runpod_version={}",
                crate::VERSION
            )
        );
        assert_eq!(
            urls.done.for_job("job 1/x", "isStream=false").as_str(),
            "https://h/v2/ep/job-done/pod-1/job%201%2Fx?gpu=A40&isStream=false"
        );
        assert_eq!(
            urls.stream.for_job("j", "isStream=false").as_str(),
            "https://h/v2/ep/job-stream/pod-1/j?isStream=false"
        );
    }

    #[test]
    fn a_job_id_anywhere_in_a_template_is_filled() {
        for (template, expected) in [
            (
                "http://h/jobs/$ID/done",
                "http://h/jobs/a%2Fb/done?isStream=false",
            ),
            (
                "http://h/done?job=$ID",
                "http://h/done?job=a%2Fb&isStream=false",
            ),
            ("http://h/d/$ID?x=1", "http://h/d/a%2Fb?x=1&isStream=false"),
            ("http://h/d/.$ID", "http://h/d/.a%2Fb?isStream=false"),
        ] {
            let url = JobUrl::new(Url::parse(template).unwrap());
            assert_eq!(url.for_job("a/b", "isStream=false").as_str(), expected);
        }
    }

    #[test]
    fn a_take_url_without_job_take_has_no_batch_or_stop() {
        let urls = Urls::new(&config("http://127.0.0.1:9/next"), "w").unwrap();
        assert!(urls.stop.is_none());
        assert_eq!(
            urls.take(4, false).as_str(),
            "http://127.0.0.1:9/next?job_in_progress=0"
        );
    }

    #[test]
    fn a_template_that_is_no_url_is_named() {
        let Err(ConfigError::Invalid(why)) = Urls::new(&config("not a url"), "w") else {
            panic!("accepted")
        };
        assert!(why.contains("RUNPOD_WEBHOOK_GET_JOB is not a URL"), "{why}");
    }
}
