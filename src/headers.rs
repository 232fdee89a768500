//! Header rules shared by the request phases: hop-by-hop fields (RFC 9110 §7.6.1), `Via`
//! (§7.6.3), and `Cache-Status` (RFC 9211).

use std::borrow::Cow;

use bytes::Bytes;
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::cache::Tier;
use crate::cache::policy::{Forward, NotStored};

/// The cache's name in `Cache-Status` and its pseudonym in `Via`.
pub const CACHE_NAME: &str = "edge";
/// The `Cache-Status` detail of a purge edge made (`PURGE` on the main listener).
pub const PURGED: &str = "purge";

pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// RFC 9110 §7.6.1 fields that apply to one connection only, and so are never forwarded.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The place of `name` in [`HOP_BY_HOP`]. A match on the name's text, which looks at its length
/// first, costs less than comparing it with each of them.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "te" => Some(3),
        "trailer" => Some(4),
        "transfer-encoding" => Some(5),
        "upgrade" => Some(6),
        _ => None,
    }
}

/// A field name as CGI, FastCGI and WSGI servers (PHP, Python's `wsgiref`, gunicorn before 22.0)
/// hand it to an application: each `_` read as `-`, so that `X_Forwarded_Host` and
/// `X-Forwarded-Host` are one variable (`HTTP_X_FORWARDED_HOST`), the two lines joined or the later
/// one winning. A field edge takes out or replaces by its name must be looked for in this form,
/// or it reaches such an origin under the other spelling. (nginx drops every field with `_` in
/// its name by default, `underscores_in_headers off`.) Borrowed when there is no `_`: nearly
/// always.
pub fn as_cgi_reads_it(name: &str) -> Cow<'_, str> {
    if name.contains('_') {
        Cow::Owned(name.replace('_', "-"))
    } else {
        Cow::Borrowed(name)
    }
}

/// Removes every field whose name `drop` picks. One pass over the names when none is picked (the
/// usual case); names are copied only when some are.
pub fn remove_fields(headers: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    if headers.keys().any(&drop) {
        let picked: Vec<HeaderName> = headers.keys().filter(|name| drop(name)).cloned().collect();
        for name in picked {
            headers.remove(name);
        }
    }
}

/// Whether a `Connection` value may name other fields: the usual ones do not, and are answered
/// without splitting them.
fn names_options(connection: &HeaderValue) -> bool {
    let bytes = connection.as_bytes();
    !bytes.eq_ignore_ascii_case(b"keep-alive") && !bytes.eq_ignore_ascii_case(b"close")
}

/// The other fields that `Connection` names as hop-by-hop (RFC 9110 §7.6.1); usually none.
pub fn connection_options(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut options = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        if !names_options(value) {
            continue;
        }
        // Bytes, not text: a member that is not a field name (one not UTF-8 among them) does not
        // hide the others.
        let named = (value.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|token| {
                !token.eq_ignore_ascii_case(b"close")
                    && !HOP_BY_HOP
                        .iter()
                        .any(|hop| token.eq_ignore_ascii_case(hop.as_str().as_bytes()))
            })
            .filter_map(|name| HeaderName::from_bytes(name).ok());
        options.extend(named);
    }
    options
}

/// Removes hop-by-hop fields, including every field named in `Connection` (RFC 9110 §7.6.1),
/// and says whether a field `wanted` remains. One pass over the fields finds both, comparing
/// names rather than hashing them: usually there are no hop-by-hop fields, or only
/// `Connection: keep-alive`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, wanted: &HeaderName) -> bool {
    let mut found = HopByHop::default();
    let mut has_wanted = false;
    for (name, value) in &*headers {
        found.note(name, value);
        has_wanted |= name == wanted;
    }
    found.remove_from(headers);
    // Rarely, `Connection` names other fields, `wanted` possibly among them.
    if found.options && has_wanted {
        has_wanted = headers.contains_key(wanted);
    }
    has_wanted
}

/// The hop-by-hop fields a header section has.
#[derive(Default)]
struct HopByHop {
    present: [bool; HOP_BY_HOP.len()],
    /// A `Connection` value names other fields.
    options: bool,
}

impl HopByHop {
    /// Takes one field into account.
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if let Some(i) = hop_by_hop_index(name) {
            self.present[i] = true;
            self.options |= i == 0 && names_options(value);
        }
    }

    fn remove_from(&self, headers: &mut HeaderMap) {
        if self.options {
            for name in connection_options(headers) {
                headers.remove(name);
            }
        }
        for (hop, present) in HOP_BY_HOP.iter().zip(self.present) {
            if present {
                headers.remove(hop);
            }
        }
    }
}

/// A trailer section as edge forwards it: without hop-by-hop fields, those the message's head
/// named in its `Connection` (`named`), which RFC 9110 §7.6.1 has an intermediary remove from
/// the trailers as from the head, nor `Content-Length`, which frames the message and may not be
/// a trailer (§6.5.1). hyper strips the connection-specific fields from the head of an HTTP/2
/// response but not from its trailers, which the h2 library then refuses to send (RFC 9113
/// §8.2.2): the stream is reset after the whole body; and nghttp2 (curl) takes a
/// `Content-Length` trailer that does not match the body for a malformed response.
pub fn forwardable_trailers(trailers: &mut HeaderMap, named: &[HeaderName]) {
    if remove_hop_by_hop(trailers, &header::CONTENT_LENGTH) {
        trailers.remove(header::CONTENT_LENGTH);
    }
    for name in named {
        trailers.remove(name);
    }
}

/// Appends this hop to `Via` (RFC 9110 §7.6.3).
pub fn append_via(headers: &mut HeaderMap, version: Version) {
    let protocol = match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    };
    let ours = match version {
        Version::HTTP_2 => HeaderValue::from_static("2 edge"),
        Version::HTTP_10 => HeaderValue::from_static("1.0 edge"),
        Version::HTTP_11 => HeaderValue::from_static("1.1 edge"),
        _ => HeaderValue::from_str(&format!("{protocol} {CACHE_NAME}")).expect("a token"),
    };
    append_member(headers, header::VIA, ours);
}

/// Puts `ours` after the values `name` has already, as one line (RFC 9110 §5.3: several lines of
/// a list field are one list, in order).
pub fn append_member(headers: &mut HeaderMap, name: HeaderName, ours: HeaderValue) {
    match headers.entry(name) {
        header::Entry::Vacant(entry) => {
            entry.insert(ours);
        }
        header::Entry::Occupied(mut entry) => {
            let mut value: Vec<u8> = Vec::new();
            for earlier in entry.iter() {
                value.extend_from_slice(earlier.as_bytes());
                value.extend_from_slice(b", ");
            }
            value.extend_from_slice(ours.as_bytes());
            entry.insert(HeaderValue::from_bytes(&value).unwrap_or(ours));
        }
    }
}

/// `Surrogate-Key` (space-separated, as Fastly) and `Cache-Tag` (comma-separated, as Cloudflare):
/// the tags a response can be purged by.
pub static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
pub static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// The purge tags a response carries, in either field, split on commas and whitespace.
pub fn surrogate_keys(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(&SURROGATE_KEY)
        .iter()
        .chain(headers.get_all(&CACHE_TAG).iter())
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(|c: char| c == ',' || c.is_ascii_whitespace()))
        .filter(|tag| !tag.is_empty())
}

/// [`surrogate_keys`] of a stored header section.
pub fn stored_surrogate_keys(
    headers: &crate::cache::entry::StoredHeaders,
) -> impl Iterator<Item = &str> {
    headers
        .get_all(&SURROGATE_KEY)
        .chain(headers.get_all(&CACHE_TAG))
        .filter_map(|value| std::str::from_utf8(value).ok())
        .flat_map(|value| value.split(|c: char| c == ',' || c.is_ascii_whitespace()))
        .filter(|tag| !tag.is_empty())
}

/// What the cache did with one request, as RFC 9211 `Cache-Status` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStatus {
    /// Served from cache: the tier it came from.
    pub hit: Option<Tier>,
    /// Went to the origin, and why.
    pub fwd: Option<Forward>,
    /// The origin's status code, when it answered.
    pub fwd_status: Option<u16>,
    /// The response was admitted to the cache.
    pub stored: bool,
    /// The request was served by another request's origin fetch (RFC 9211 §2.6).
    pub collapsed: bool,
    /// Remaining freshness in seconds (negative when a stale response is served).
    pub ttl: Option<i64>,
    /// A short reason the response was not stored, or what went wrong.
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    pub fn hit(tier: Tier, ttl: i64) -> Self {
        Self {
            hit: Some(tier),
            ttl: Some(ttl),
            ..Self::default()
        }
    }

    pub fn forward(fwd: Forward) -> Self {
        Self {
            fwd: Some(fwd),
            ..Self::default()
        }
    }

    pub fn not_stored(mut self, reason: NotStored) -> Self {
        self.detail = Some(reason.as_str());
        self
    }

    /// Adds edge's member after any upstream caches' (RFC 9211 §2: members are in the order the
    /// caches handled the response, and a cache preserves what it received).
    pub fn add_to(&self, headers: &mut HeaderMap) {
        append_member(headers, CACHE_STATUS.clone(), self.to_header_value());
    }

    /// What the cache did, in one word, for metrics and the access log: `hit`, `stale` (served
    /// stale), `revalidated` (a 304 from the origin refreshed it), `miss` (fetched and stored),
    /// `pass` (fetched, not storable), `bypass` (a method edge does not cache), `purge`, `local`
    /// (an `OPTIONS` edge answered itself), or `error` (edge answered itself because the request
    /// or the origin failed). A request whose client left before its answer is `abandoned`.
    pub fn label(&self) -> &'static str {
        // A PURGE edge refused, as malformed or from outside `purge.allow`, is an `error`.
        if self.detail == Some(PURGED) {
            return "purge";
        }
        if self.hit.is_some() {
            let stale = self.ttl.is_some_and(|ttl| ttl < 0)
                || self.detail == Some("stale-while-revalidate");
            return if stale { "stale" } else { "hit" };
        }
        if self.detail == Some("stale-if-error") {
            return "stale";
        }
        match self.fwd {
            None if self.detail == Some("only-if-cached") => "miss",
            None if self.detail == Some("options") => "local",
            None => "error",
            // The origin failed, or the client's upload did: whatever the method. (Or it answered
            // another request's fetch with an error, which this one shares as edge's own.)
            Some(_) if self.fwd_status.is_none() || self.detail == Some("origin-error") => "error",
            Some(Forward::Method) => "bypass",
            // Stale, or fresh and sent on by the request's own `no-cache`, `max-age` or
            // `min-fresh` (a browser's reload): either way a 304 refreshed what was stored.
            Some(Forward::Stale | Forward::Request)
                if self.fwd_status == Some(304) && self.stored =>
            {
                "revalidated"
            }
            Some(_) if self.stored => "miss",
            Some(_) => "pass",
        }
    }

    pub fn to_header_value(&self) -> HeaderValue {
        let mut out = String::with_capacity(64);
        out.push_str(CACHE_NAME);
        if self.hit.is_some() {
            out.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            out.push_str("; fwd=");
            out.push_str(fwd.as_str());
        }
        if let Some(status) = self.fwd_status {
            out.push_str("; fwd-status=");
            out.push_str(itoa::Buffer::new().format(status));
        }
        if self.stored {
            out.push_str("; stored");
        }
        if self.collapsed {
            out.push_str("; collapsed");
        }
        if let Some(ttl) = self.ttl {
            out.push_str("; ttl=");
            out.push_str(itoa::Buffer::new().format(ttl));
        }
        // RFC 9211 §2.8: detail is implementation-specific; edge names the serving tier on hits.
        if let Some(detail) = self.detail.or(self.hit.map(Tier::as_str)) {
            out.push_str("; detail=");
            out.push_str(detail);
        }
        HeaderValue::from_maybe_shared(Bytes::from(out)).expect("Cache-Status is built from tokens")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_and_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        let secret = HeaderName::from_static("x-secret");
        assert!(!remove_hop_by_hop(&mut headers, &secret));
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
        assert!(remove_hop_by_hop(
            &mut headers,
            &HeaderName::from_static("x-kept")
        ));
        assert_eq!(headers.len(), 1);
    }

    #[test]
    fn cache_status_follows_upstream_caches() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CACHE_STATUS.clone(),
            HeaderValue::from_static("origin-cache; hit"),
        );
        CacheStatus::forward(Forward::UriMiss).add_to(&mut headers);
        assert_eq!(
            headers[&CACHE_STATUS],
            "origin-cache; hit, edge; fwd=uri-miss"
        );
    }

    #[test]
    fn cache_status_renders_rfc_9211_parameters() {
        let mut status = CacheStatus::forward(Forward::UriMiss);
        status.fwd_status = Some(200);
        status.stored = true;
        status.ttl = Some(60);
        assert_eq!(
            status.to_header_value(),
            "edge; fwd=uri-miss; fwd-status=200; stored; ttl=60"
        );
        assert_eq!(
            CacheStatus::hit(Tier::Disk, 5).to_header_value(),
            "edge; hit; ttl=5; detail=disk"
        );
    }
}
