//! The origin: one pooled reqwest client, the mapping of request targets to origin URLs, and the
//! header rewriting of a forwarding intermediary (RFC 9110 §7.6).

use std::net::IpAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri, Version};
use reqwest::Url;

use crate::config::OriginConfig;
use std::time::SystemTime;

use crate::headers::{append_via, remove_hop_by_hop};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Why the origin did not answer.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("origin unreachable: {0}")]
    Unreachable(String),
    #[error("origin did not answer within {0:?}")]
    Timeout(Duration),
}

pub struct Origin {
    client: reqwest::Client,
    base: Url,
    /// `base`'s path without its trailing slash: every forwarded path starts with it.
    prefix: String,
    timeout: Duration,
}

impl Origin {
    pub fn new(config: &OriginConfig) -> Result<Self, reqwest::Error> {
        // No redirects, no proxies from the environment, no decompression (no such feature is
        // compiled in): the origin's answer passes through as it was sent.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(config.connect_timeout.0)
            .read_timeout(config.timeout.0)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()?;
        let base = config.url.0.clone();
        let prefix = base.path().trim_end_matches('/').to_owned();
        Ok(Self {
            client,
            base,
            prefix,
            timeout: config.timeout.0,
        })
    }

    /// The origin URL for a request target in origin-form (or absolute-form, whose path and query
    /// are used). `None` for a target edge will not forward, such as `*` or a path that climbs
    /// out of the origin's prefix.
    pub fn url_for(&self, target: &Uri) -> Option<Url> {
        let path_and_query = target.path_and_query()?.as_str();
        if !path_and_query.starts_with('/') {
            return None;
        }
        let mut url = self.base.clone();
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        url.set_path(&format!("{}{}", self.prefix, path));
        url.set_query(query);
        let inside = url.path().strip_prefix(self.prefix.as_str())?;
        inside.starts_with('/').then_some(url)
    }

    /// Whether `url` (already resolved) is on this origin.
    pub fn owns(&self, url: &Url) -> bool {
        url.origin() == self.base.origin()
            && url
                .path()
                .strip_prefix(self.prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Sends one request to the origin and waits for its response head.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, OriginError> {
        let mut request = self.client.request(method, url).headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        match tokio::time::timeout(self.timeout, request.send()).await {
            Err(_) => Err(OriginError::Timeout(self.timeout)),
            Ok(Err(err)) if err.is_timeout() => Err(OriginError::Timeout(self.timeout)),
            Ok(Err(err)) => Err(OriginError::Unreachable(error_chain(&err))),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// The headers to send to the origin for a client request (RFC 9110 §7.6): hop-by-hop fields
/// removed, `Host` left to the client library (the origin's own), `Via` and `X-Forwarded-*` added.
///
/// reqwest adds `Accept: */*` when the client sent no `Accept`; RFC 9110 §12.5.1 gives both the
/// same meaning.
pub fn request_headers(incoming: &HeaderMap, client: IpAddr, version: Version) -> HeaderMap {
    let mut headers = incoming.clone();
    remove_hop_by_hop(&mut headers);
    // Credentials meant for a proxy are consumed here, never passed on (RFC 9110 §11.7.2).
    headers.remove(header::PROXY_AUTHORIZATION);
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    // RFC 9110 §5.3: several lines of a list field are one list, in order.
    let mut forwarded_for: Vec<u8> = Vec::new();
    for earlier in headers.get_all(&X_FORWARDED_FOR) {
        forwarded_for.extend_from_slice(earlier.as_bytes());
        forwarded_for.extend_from_slice(b", ");
    }
    forwarded_for.extend_from_slice(client.to_string().as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    append_via(&mut headers, version);
    headers
}

/// The origin's response headers as edge stores and forwards them: hop-by-hop fields removed,
/// a `Date` added when the origin sent none (RFC 9110 §6.6.1), and this hop in `Via`, naming the
/// protocol the origin answered with (§7.6.3). Hits are served with the same `Via`.
pub fn response_headers(origin: &HeaderMap, received: SystemTime, version: Version) -> HeaderMap {
    let mut headers = origin.clone();
    remove_hop_by_hop(&mut headers);
    if !headers.contains_key(header::DATE) {
        let date = httpdate::fmt_http_date(received);
        headers.insert(
            header::DATE,
            HeaderValue::from_str(&date).expect("HTTP date is ASCII"),
        );
    }
    append_via(&mut headers, version);
    headers
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OriginUrl, Seconds};

    fn origin(url: &str) -> Origin {
        Origin::new(&OriginConfig {
            url: OriginUrl(url.parse().unwrap()),
            connect_timeout: Seconds(Duration::from_secs(1)),
            timeout: Seconds(Duration::from_secs(1)),
        })
        .unwrap()
    }

    #[test]
    fn targets_map_under_the_prefix_and_cannot_climb_out() {
        let o = origin("http://o:9000/base/");
        let url = o.url_for(&"/a/b?x=1&y".parse().unwrap()).unwrap();
        assert_eq!(url.as_str(), "http://o:9000/base/a/b?x=1&y");
        assert_eq!(
            o.url_for(&"/a/../b".parse().unwrap()).unwrap().as_str(),
            "http://o:9000/base/b"
        );
        assert!(o.url_for(&"/../../etc".parse().unwrap()).is_none());
        assert!(o.url_for(&"*".parse().unwrap()).is_none());
    }
}
