//! The endpoint's HTTP API as the client sees it: a base URL, the key sent
//! as `Authorization: Bearer`, and every answer either JSON text or a
//! [`ClientError`] that names the request and what to check. The key is
//! only ever put in a header; it is in no URL and no message.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::error::ClientError;

/// Longest wait for a connection to be made.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a whole answer: the API answers at once (the client
/// never calls `/runsync`), so a minute means trouble.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of an answer that is not JSON is shown in a message.
const SHOWN_BODY: usize = 300;

/// A connection to one endpoint.
pub(crate) struct Api {
    http: reqwest::Client,
    base: Url,
}

/// One request to make.
pub(crate) struct Call<'a> {
    pub method: Method,
    /// Path segments after the base, each escaped as one segment.
    pub segments: &'a [&'a str],
    pub query: &'a [(&'a str, String)],
    pub body: Option<String>,
    pub idempotency_key: Option<&'a str>,
}

impl<'a> Call<'a> {
    pub fn get(segments: &'a [&'a str]) -> Call<'a> {
        Call {
            method: Method::GET,
            segments,
            query: &[],
            body: None,
            idempotency_key: None,
        }
    }

    pub fn post(segments: &'a [&'a str]) -> Call<'a> {
        Call {
            method: Method::POST,
            ..Call::get(segments)
        }
    }
}

/// A successful answer: its JSON text, as the server wrote it, and parsed.
pub(crate) struct Answer {
    pub text: String,
    pub value: Value,
}

impl Api {
    /// `endpoint` is the base URL (`http://host:8000/v2/sdxl`); `key`, if
    /// any, goes with every request.
    pub fn new(endpoint: &str, key: Option<&str>) -> Result<Api, ClientError> {
        let base = parse_base(endpoint)?;
        let mut headers = HeaderMap::new();
        if let Some(key) = key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                ClientError::Usage(
                    "the API key has characters a header cannot carry (a newline, say); check --api-key or JOBPIPE_API_KEY".into(),
                )
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("jobpipe-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Usage(format!("cannot set up HTTP: {e}")))?;
        Ok(Api { http, base })
    }

    /// Makes `call`; a JSON answer with a 2xx status, or the error.
    pub async fn call(&self, call: Call<'_>) -> Result<Answer, ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has a path")
            .pop_if_empty()
            .extend(call.segments);
        if !call.query.is_empty() {
            url.query_pairs_mut().extend_pairs(call.query);
        }
        let method = call.method.to_string();
        let path = url.path().to_owned();
        let mut request = self.http.request(call.method, url);
        if let Some(body) = call.body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        if let Some(key) = call.idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let transport = |e: reqwest::Error| self.transport_error(&method, &path, e);
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let text = response.text().await.map_err(transport)?;
        if !status.is_success() {
            return Err(ClientError::Http {
                method,
                path,
                code: status.as_u16(),
                message: error_message(status, &text),
            });
        }
        match serde_json::from_str(&text) {
            Ok(value) => Ok(Answer { text, value }),
            Err(e) => Err(ClientError::Transport {
                method,
                path,
                cause: format!(
                    "the answer is not JSON ({e}): {}; is --endpoint a jobpipe or RunPod endpoint?",
                    crate::text::clip_middle(&text, SHOWN_BODY)
                ),
                transient: false,
            }),
        }
    }

    fn transport_error(&self, method: &str, path: &str, error: reqwest::Error) -> ClientError {
        let connect = error.is_connect();
        let cause = causes(&error.without_url());
        if connect {
            return ClientError::Unreachable {
                method: method.to_owned(),
                path: path.to_owned(),
                base: self.base.as_str().trim_end_matches('/').to_owned(),
                cause,
            };
        }
        ClientError::Transport {
            method: method.to_owned(),
            path: path.to_owned(),
            cause,
            transient: true,
        }
    }
}

/// The endpoint's base URL: http or https, with no query, and no key in it.
fn parse_base(endpoint: &str) -> Result<Url, ClientError> {
    let bad = |why: &str| {
        ClientError::Usage(format!(
            "--endpoint (JOBPIPE_ENDPOINT_URL) {endpoint:?} {why}; give the endpoint's base URL, like http://host:8000/v2/ENDPOINT_ID"
        ))
    };
    let url = Url::parse(endpoint).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("is not an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("has a query or fragment"));
    }
    Ok(url)
}

/// The server's `{"error": ...}` sentence, or what the answer says.
fn error_message(status: StatusCode, text: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    match parsed.as_ref().and_then(|v| v.get("error")) {
        Some(Value::String(message)) => message.clone(),
        Some(other) => other.to_string(),
        None if text.trim().is_empty() => {
            status.canonical_reason().unwrap_or("no message").to_owned()
        }
        None => crate::text::clip_middle(text.trim(), SHOWN_BODY),
    }
}

/// An error and its causes in one line (reqwest's own message is only
/// "error sending request").
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let more = error.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = error.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_url_must_be_http_without_a_query() {
        assert!(parse_base("http://h:8000/v2/sdxl").is_ok());
        assert!(parse_base("https://h/v2/sdxl/").is_ok());
        for bad in ["h:8000", "ftp://h/x", "http://h/x?a=1", "nonsense"] {
            let err = parse_base(bad).expect_err(bad).to_string();
            assert!(err.contains("--endpoint"), "{err}");
        }
    }

    #[test]
    fn the_error_sentence_is_taken_from_the_json() {
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, r#"{"error": "no job \"x\""}"#),
            "no job \"x\""
        );
        assert_eq!(error_message(StatusCode::BAD_GATEWAY, ""), "Bad Gateway");
        assert_eq!(error_message(StatusCode::BAD_GATEWAY, " <html> "), "<html>");
    }
}
