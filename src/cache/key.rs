//! Cache keys: the normalised origin URL of a request, hashed with blake3, plus the request header
//! values a stored response varies on (RFC 9111 §4.1).

use http::HeaderMap;
use http::header::{self, HeaderName};

/// The primary key of a stored response: the origin URL it was fetched from (HEAD maps to GET).
///
/// The URL has been through WHATWG URL parsing when the request target was joined to the origin,
/// so dot segments are resolved and the scheme and host are lowercase; the query is kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    url: String,
    hash: [u8; 32],
}

impl CacheKey {
    pub fn new(url: &reqwest::Url) -> Self {
        let mut text = url.as_str();
        if let Some(at) = text.find('#') {
            text = &text[..at];
        }
        Self {
            url: text.to_owned(),
            hash: *blake3::hash(text.as_bytes()).as_bytes(),
        }
    }

    /// The normalised URL this key stands for.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// 32 bytes that identify the URL in both tiers.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }
}

/// The request header values named by a stored response's `Vary`, normalised so that requests
/// that differ only in whitespace or line folding select the same response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variance(Vec<(HeaderName, Option<String>)>);

impl Variance {
    /// Captures, from `request`, the values of the headers that `response` varies on.
    pub fn capture(response: &HeaderMap, request: &HeaderMap) -> Self {
        let mut fields = Vec::new();
        for value in response.get_all(header::VARY) {
            let Ok(text) = value.to_str() else { continue };
            for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if let Ok(name) = HeaderName::from_bytes(name.as_bytes())
                    && !fields.iter().any(|(n, _)| *n == name)
                {
                    let value = normalised_value(request, &name);
                    fields.push((name, value));
                }
            }
        }
        Self(fields)
    }

    /// Rebuilds a variance from stored parts.
    pub fn from_parts(fields: Vec<(HeaderName, Option<String>)>) -> Self {
        Self(fields)
    }

    pub fn fields(&self) -> &[(HeaderName, Option<String>)] {
        &self.0
    }

    /// RFC 9111 §4.1: does `request` select the stored response?
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.0
            .iter()
            .all(|(name, value)| normalised_value(request, name) == *value)
    }
}

/// All lines of a header joined by ", ", with whitespace around list separators removed.
fn normalised_value(request: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut joined: Option<String> = None;
    for value in request.get_all(name) {
        let text = String::from_utf8_lossy(value.as_bytes());
        let items = text.split(',').map(str::trim).filter(|s| !s.is_empty());
        let out = joined.get_or_insert_with(String::new);
        for item in items {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(item);
        }
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn key_ignores_fragment_and_keeps_query() {
        let a = CacheKey::new(&"http://o/a?x=1#frag".parse().unwrap());
        let b = CacheKey::new(&"http://o/a?x=1".parse().unwrap());
        let c = CacheKey::new(&"http://o/a?x=2".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    fn variance_ignores_whitespace_differences() {
        let mut response = HeaderMap::new();
        response.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        let mut first = HeaderMap::new();
        first.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip,br"));
        let mut second = HeaderMap::new();
        second.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip,  br"),
        );
        let variance = Variance::capture(&response, &first);
        assert!(variance.matches(&second));
        assert!(!variance.matches(&HeaderMap::new()));
    }
}
