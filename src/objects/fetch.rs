//! Fetching an input by URL without becoming a proxy into the network
//! jobpipe runs in (SSRF): only hosts the operator allowed
//! (`--fetch-allow host[:port],...`, `*` for any host) and the object
//! store's own endpoint are fetched; a host must resolve to public
//! addresses unless the operator named it as an address (`127.0.0.1`,
//! `localhost`) or it is the store's endpoint. The same checks apply to
//! every redirect and to every DNS answer, so neither a redirect nor a
//! DNS name that resolves to a private address gets round them.
//! Downloads are bounded in size and time.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Who may be fetched from.
#[derive(Debug, Clone, Default)]
pub struct FetchPolicy {
    /// `host` or `host:port` entries; `*` allows any host (public addresses only).
    pub allow: Vec<String>,
    /// The store's endpoints, `host:port`, always allowed.
    pub store: Vec<String>,
}

impl FetchPolicy {
    /// Why `url` may not be fetched, if it may not.
    pub fn check(&self, url: &Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "only http and https URLs are fetched, not {}",
                url.scheme()
            ));
        }
        let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
        let port = url.port_or_known_default().unwrap_or(0);
        let entry = format!("{host}:{port}");
        let named =
            self.store.contains(&entry) || self.allow.iter().any(|a| a == host || *a == entry);
        if !named && !self.allow.iter().any(|a| a == "*") {
            return Err(format!(
                "the host {entry} is not allowed; only the object store and the hosts in --fetch-allow are fetched from"
            ));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            if !named && !is_public(ip) {
                return Err(format!(
                    "the address {ip} is loopback, private or link-local; name it in --fetch-allow to fetch from it"
                ));
            }
        }
        Ok(())
    }

    /// Whether a host name may resolve to private addresses: the store's
    /// endpoint, or one named in the allow list as itself.
    fn trusts_private(&self, host: &str) -> bool {
        self.store
            .iter()
            .any(|s| s.rsplit_once(':').is_some_and(|(h, _)| h == host))
            || self
                .allow
                .iter()
                .any(|a| host == "localhost" && (a == "localhost" || a.starts_with("localhost:")))
    }

    /// An HTTP client that keeps to this policy on redirects and in DNS.
    pub fn client(self: &Arc<Self>, timeout: Duration) -> reqwest::Client {
        let policy = self.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                return attempt.error("more than 5 redirects");
            }
            match policy.check(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(format!("a redirect was refused: {why}")),
            }
        });
        reqwest::Client::builder()
            .redirect(redirects)
            .dns_resolver(Arc::new(Guarded(self.clone())))
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .build()
            .expect("the fetch client builds")
    }
}

/// A DNS resolver that refuses private answers for hosts not trusted with them.
struct Guarded(Arc<FetchPolicy>);

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !policy.trusts_private(&host) {
                if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
                    let why = format!(
                        "{host} resolves to {}, a loopback, private or link-local address; name it in --fetch-allow as an address to fetch from it",
                        bad.ip()
                    );
                    return Err(why.into());
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Whether an address is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || (a == 100 && (64..128).contains(&b))
                || a == 0)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// Downloads `url` into `file`, at most `max` bytes; returns the size and
/// hex SHA-256.
pub async fn download(
    client: &reqwest::Client,
    url: &Url,
    file: &Path,
    max: u64,
) -> Result<(u64, String), String> {
    let shown = format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.path()
    );
    let mut response = client.get(url.clone()).send().await.map_err(|e| {
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text = format!("{text}: {c}");
            cause = c.source();
        }
        format!("fetching {shown} failed: {text}")
    })?;
    if !response.status().is_success() {
        return Err(format!("fetching {shown} answered {}", response.status()));
    }
    let mut out = super::sink::Sink::create(file, max).await?;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("fetching {shown} failed: {e}"))?
    {
        out.write(&chunk).await?;
    }
    out.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> FetchPolicy {
        FetchPolicy {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            store: vec!["127.0.0.1:9000".into()],
        }
    }

    #[test]
    fn only_allowed_hosts_and_public_addresses() {
        let url = |u: &str| Url::parse(u).unwrap();
        assert!(policy(&[]).check(&url("http://127.0.0.1:9000/b/k")).is_ok());
        let err = policy(&[]).check(&url("http://example.com/x")).unwrap_err();
        assert!(err.contains("not allowed"), "{err}");
        assert!(policy(&["example.com"])
            .check(&url("https://example.com/x"))
            .is_ok());
        assert!(policy(&["example.com:8080"])
            .check(&url("https://example.com/x"))
            .is_err());
        let err = policy(&["*"])
            .check(&url("http://169.254.169.254/latest"))
            .unwrap_err();
        assert!(err.contains("link-local"), "{err}");
        assert!(policy(&["*"]).check(&url("http://[::1]:80/")).is_err());
        assert!(policy(&["127.0.0.1:8000"])
            .check(&url("http://127.0.0.1:8000/"))
            .is_ok());
        assert!(policy(&["*"]).check(&url("file:///etc/passwd")).is_err());
    }

    #[test]
    fn public_addresses() {
        for ip in [
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
