//! Cache keys: the normalised origin URL of a request, hashed with blake3, plus the request header
//! values a stored response varies on (RFC 9111 §4.1).

use std::borrow::Cow;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

use crate::headers::as_cgi_reads_it;

/// The scheme a client asked by: which of edge's listeners its request came to (not the
/// origin's scheme, which is the same for both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// What an https key's text begins with. Every path begins with `/`, so no http key's text can;
/// and `https:/a` is itself a URI reference for what it stands for.
pub const HTTPS_MARK: &str = "https:";

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The primary key of a stored response: the path and query edge asks the origin for (HEAD maps
/// to GET), after `https:` for a request that came over HTTPS. The origin's scheme and authority
/// are not part of it, so that pointing edge at another server for the same content (a reload
/// with a new `origin.url` host) keeps the cache. The client's scheme is: RFC 9111 §2 keys by the
/// target URI, whose scheme differs, and an origin may answer the two differently (a cacheable
/// redirect of http to https, by `X-Forwarded-Proto`: served to https clients, a loop). An
/// http key's text is the path and query alone, as before https was served.
///
/// The URL has been through WHATWG URL parsing when the request target was joined to the origin,
/// so dot segments are resolved and percent-encoding is normalised; the query is kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    url: String,
    hash: [u8; 32],
}

impl CacheKey {
    pub fn new(url: &url::Url, scheme: Scheme) -> Self {
        let mut text = String::with_capacity(
            HTTPS_MARK.len() + url.path().len() + url.query().map_or(0, str::len) + 1,
        );
        if scheme == Scheme::Https {
            text.push_str(HTTPS_MARK);
        }
        text.push_str(url.path());
        if let Some(query) = url.query() {
            text.push('?');
            text.push_str(query);
        }
        Self::from_text(text)
    }

    /// The key whose [`CacheKey::url`] is `text` (as recorded with a stored response).
    pub fn from_text(text: String) -> Self {
        let hash = *blake3::hash(text.as_bytes()).as_bytes();
        Self { url: text, hash }
    }

    /// The key's text, as recorded with a stored response: the path and query, after `https:`
    /// for an https request.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The path and query to ask the origin for.
    pub fn target(&self) -> &str {
        target_of(&self.url)
    }

    /// The scheme the key's requests came by.
    pub fn scheme(&self) -> Scheme {
        if self.url.starts_with(HTTPS_MARK) {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }

    /// The key of the same path and query by the other scheme.
    pub fn other_scheme(&self) -> Self {
        match self.url.strip_prefix(HTTPS_MARK) {
            Some(path) => Self::from_text(path.to_owned()),
            None => Self::from_text([HTTPS_MARK, &self.url].concat()),
        }
    }

    /// 32 bytes that identify the URL in both tiers.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }
}

/// The path and query of a key's text ([`CacheKey::url`]), whichever its scheme: what a purge by
/// prefix compares, so that it finds the http and https responses alike.
pub fn target_of(url: &str) -> &str {
    url.strip_prefix(HTTPS_MARK).unwrap_or(url)
}

/// The request header values named by a stored response's `Vary`, normalised so that requests
/// that differ only in ways the header's semantics ignore select the same response (RFC 9111
/// §4.1), and no further: the content-negotiation fields are lists, whose whitespace and line
/// folding, letter case, and for `Accept-Encoding` and `Accept-Charset` order of members (their
/// preference comes from `q` weights) mean nothing. The order of `Accept` and `Accept-Language`
/// members is kept: among equal weights, servers take the first (RFC 9110 §12.5.4 says as much of
/// languages). `Cookie`'s lines and pairs are joined with `; ` as edge forwards them (RFC 9113
/// §8.2.3); a comma is part of a cookie's value. Any other field (`User-Agent`, `Origin`, an
/// `X-` one) is compared as the origin sees it, line by line: not knowing its syntax, edge
/// cannot tell which differences mean nothing to it, and one client could otherwise have its
/// answer stored for another's value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variance(Vec<(HeaderName, Option<String>)>);

/// The fields compared as comma-separated lists of members (RFC 9110 §12.5), without regard to
/// whitespace or letter case.
const LISTS: [HeaderName; 4] = [
    header::ACCEPT,
    header::ACCEPT_CHARSET,
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
];

/// Fields whose list members are compared without regard to their order as well.
const UNORDERED: [HeaderName; 2] = [header::ACCEPT_CHARSET, header::ACCEPT_ENCODING];

impl Variance {
    /// The header names `response` varies on, lowercase, each once, sorted. `None` when it can
    /// match no request: `Vary: *` (RFC 9111 §4.1), or a `Vary` that is not a list of field
    /// names (a member quoted, or not a token), which edge cannot match either. Such a response
    /// is not stored; Varnish does not store one either.
    pub fn names(response: &HeaderMap) -> Option<Vec<HeaderName>> {
        let mut names = Vec::new();
        for value in response.get_all(header::VARY) {
            for member in value.to_str().ok()?.split(',') {
                let member = member.trim_matches([' ', '\t']);
                // Empty list members are ignored (RFC 9110 §5.6.1).
                if member.is_empty() {
                    continue;
                }
                if member == "*" {
                    return None;
                }
                names.push(HeaderName::from_bytes(member.as_bytes()).ok()?);
            }
        }
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        Some(names)
    }

    /// Captures, from `request`, the values of the headers named in `names`.
    pub fn select(names: &[HeaderName], request: &HeaderMap) -> Self {
        Self(
            names
                .iter()
                .map(|name| (name.clone(), normalised_value(request, name)))
                .collect(),
        )
    }

    /// Captures, from `request`, the values of the headers that `response` varies on; `None`
    /// when it can match no request ([`Variance::names`]).
    pub fn capture(response: &HeaderMap, request: &HeaderMap) -> Option<Self> {
        Some(Self::select(&Self::names(response)?, request))
    }

    /// Rebuilds a variance from stored parts.
    pub fn from_parts(fields: Vec<(HeaderName, Option<String>)>) -> Self {
        Self(fields)
    }

    pub fn fields(&self) -> &[(HeaderName, Option<String>)] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names_of(&self) -> Vec<HeaderName> {
        self.0.iter().map(|(name, _)| name.clone()).collect()
    }

    /// RFC 9111 §4.1: does `request` select the stored response?
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.0
            .iter()
            .all(|(name, value)| normalised_value(request, name) == *value)
    }

    /// The secondary key of this variant of the URI whose key is `primary`: the disk tier keeps
    /// it at `primary ++ variant`, so that every variant of a URI shares a prefix.
    pub fn variant_key(&self, primary: &[u8; 32]) -> Vec<u8> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(primary);
        for (name, value) in &self.0 {
            hasher.update(name.as_str().as_bytes());
            match value {
                Some(value) => hasher.update(b"=").update(value.as_bytes()),
                None => hasher.update(b"!"),
            };
            hasher.update(b"\n");
        }
        let mut key = primary.to_vec();
        key.extend_from_slice(hasher.finalize().as_bytes());
        key
    }
}

/// A field line's value as text. Each byte past ASCII is spelled out after a NUL, which no field
/// value holds: two different values must not read alike (as both would with U+FFFD), or one
/// client's variant would be served to another.
fn text_of(value: &HeaderValue) -> Cow<'_, str> {
    match std::str::from_utf8(value.as_bytes()) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(value.as_bytes().iter().fold(String::new(), |mut text, &b| {
            if b.is_ascii() {
                text.push(char::from(b));
            } else {
                text.push_str(&format!("\0{b:02x}"));
            }
            text
        })),
    }
}

/// All lines of a header as one normalised value, or `None` when the request carries it in
/// neither spelling. CGI, FastCGI and WSGI servers (PHP, Python's `wsgiref`, gunicorn before 22.0)
/// read `_` in a field name as `-` ([`as_cgi_reads_it`]), so that to an origin behind one
/// `Accept_Encoding: gzip` is `Accept-Encoding: gzip`: lines so spelled are part of the value,
/// after a NUL (which no field value holds), each with its name and as sent. Otherwise a client
/// could have the answer to them (gzip-encoded, or in its own language) stored as the variant of
/// requests without the field, and served to them.
fn normalised_value(request: &HeaderMap, name: &HeaderName) -> Option<String> {
    let value = value_as_named(request, name);
    // Only a name with a `-` has another spelling; a request rarely has a name with a `_`.
    if !name.as_str().contains('-') {
        return value;
    }
    let mut respelled = None;
    for other in request.keys() {
        if other.as_str().contains('_') && as_cgi_reads_it(other.as_str()) == name.as_str() {
            let text: &mut String = respelled.get_or_insert_with(String::new);
            for line in request.get_all(other) {
                text.push_str("\0_");
                text.push_str(other.as_str());
                text.push(':');
                text.push_str(&text_of(line));
            }
        }
    }
    match respelled {
        None => value,
        Some(respelled) => Some(value.unwrap_or_default() + &respelled),
    }
}

/// [`normalised_value`] of the lines named `name` as it is spelled.
fn value_as_named(request: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut lines = request.get_all(name).iter().peekable();
    lines.peek()?;
    let ows: &[char] = &[' ', '\t'];
    if *name == header::COOKIE {
        let mut pairs: Vec<String> = Vec::new();
        for value in lines {
            let text = text_of(value);
            let pairs_of_line = text.split(';').map(|pair| pair.trim_matches(ows));
            pairs.extend(
                pairs_of_line
                    .filter(|pair| !pair.is_empty())
                    .map(str::to_owned),
            );
        }
        return Some(pairs.join("; "));
    }
    if !LISTS.contains(name) {
        // Lines kept apart by a byte no field value holds: a field that is not a list may not be
        // split over lines (RFC 9110 §5.3), and an origin reads two as it will (the first, both,
        // or a 400), so one line must not match two.
        let lines: Vec<String> = lines
            .map(|value| text_of(value).trim_matches(ows).to_owned())
            .collect();
        return Some(lines.join("\n"));
    }
    // The lines of a list are one list (RFC 9110 §5.3), read as the one value an origin that
    // joins them reads: a quoted string left open on one line goes on into the next. Read line by
    // line, `a;q="x` and `Y"` were taken for `a;q="x, y"`, which is another value to the origin.
    let joined = lines.map(text_of).collect::<Vec<_>>().join(", ");
    let mut members: Vec<String> = Vec::new();
    list_members(&joined, &mut members);
    if UNORDERED.contains(name) {
        members.sort();
    }
    Some(members.join(", "))
}

/// Appends the members of a list field line (RFC 9110 §5.6.1) to `members`, each written the one
/// way its syntax allows: outside quoted strings, whitespace runs as one space (none beside a
/// `;`), and the letters of tokens and parameter names in lowercase. A parameter's value, a token
/// or a quoted string (§5.6.4, §5.6.6), is kept as sent, a quoted string's commas and spaces
/// included: whether its letter case means something depends on the parameter (`version=A` of a
/// media type in `Accept` may not be `version=a` to the origin), so one client must not be
/// served the variant negotiated for the other (RFC 9111 §4.1).
fn list_members(text: &str, members: &mut Vec<String>) {
    let mut member = String::new();
    let (mut quoted, mut escaped, mut space) = (false, false, false);
    // Within a parameter's value: after its `=`, up to the next `;` or `,`.
    let mut value = false;
    for c in text.chars() {
        if quoted {
            member.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            // SP and HTAB only (§5.6.3): a value with another space in it (U+00A0) is another
            // value to the origin, so it must not select the same variant.
            ' ' | '\t' => space = true,
            ',' => {
                if !member.is_empty() {
                    members.push(std::mem::take(&mut member));
                }
                space = false;
                value = false;
            }
            _ => {
                if space && !member.is_empty() && c != ';' && !member.ends_with(';') {
                    member.push(' ');
                }
                space = false;
                quoted = c == '"';
                member.push(if value { c } else { c.to_ascii_lowercase() });
                match c {
                    '=' => value = true,
                    ';' => value = false,
                    _ => {}
                }
            }
        }
    }
    if !member.is_empty() {
        members.push(member);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn key_ignores_fragment_and_keeps_query() {
        let a = CacheKey::new(&"http://o/a?x=1#frag".parse().unwrap(), Scheme::Http);
        let b = CacheKey::new(&"http://o/a?x=1".parse().unwrap(), Scheme::Http);
        let c = CacheKey::new(&"http://o/a?x=2".parse().unwrap(), Scheme::Http);
        assert_eq!(a, b);
        assert_ne!(a.hash(), c.hash());
    }

    /// An https request's key is another key, marked where no path can be; an http key is the
    /// path and query alone, as stored before https was served.
    #[test]
    fn https_keys_are_apart_from_http_keys_of_the_same_url() {
        let url = "http://o/a?x=1".parse().unwrap();
        let http = CacheKey::new(&url, Scheme::Http);
        let https = CacheKey::new(&url, Scheme::Https);
        assert_eq!(http.url(), "/a?x=1");
        assert_eq!(https.url(), "https:/a?x=1");
        assert_ne!(http.hash(), https.hash());
        assert_eq!(
            (http.scheme(), https.scheme()),
            (Scheme::Http, Scheme::Https)
        );
        assert_eq!((http.target(), https.target()), ("/a?x=1", "/a?x=1"));
        assert_eq!(http.other_scheme(), https);
        assert_eq!(https.other_scheme(), http);
        assert_eq!(target_of("https:/a"), "/a");
    }

    #[test]
    fn variance_ignores_order_and_case_of_negotiation_lists_only() {
        // Accept-Language keeps its order: among equal weights servers take the first.
        let mut languages = HeaderMap::new();
        languages.insert(header::VARY, HeaderValue::from_static("Accept-Language"));
        let asking = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static(value));
            headers
        };
        let german_first = Variance::capture(&languages, &asking("de, fr")).unwrap();
        assert!(german_first.matches(&asking("DE,fr")));
        assert!(!german_first.matches(&asking("fr, de")));

        let mut response = HeaderMap::new();
        response.insert(
            header::VARY,
            HeaderValue::from_static("Accept-Encoding, X-Theme"),
        );
        let request = |encoding: &'static str, theme: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(encoding));
            headers.insert("x-theme", HeaderValue::from_static(theme));
            headers
        };
        let variance = Variance::capture(&response, &request("gzip, br", "Dark")).unwrap();
        assert!(variance.matches(&request("BR,gzip", "Dark")));
        assert!(
            !variance.matches(&request("gzip, br", "dark")),
            "X-Theme is case-sensitive"
        );
        // A quoted string is one piece of a member, kept as sent: its commas do not split the
        // list, and its letters are not lowered.
        let quoted = Variance::capture(&response, &request("gzip;p=\"1, br\"", "Dark")).unwrap();
        assert!(quoted.matches(&request("GZIP ; p=\"1, br\"", "Dark")));
        for other in ["br\", gzip;p=\"1", "gzip;p=\"1, BR\"", "gzip;p=\"1,  br\""] {
            assert!(!quoted.matches(&request(other, "Dark")), "{other}");
        }
        // A parameter's value keeps its letter case, quoted or not; its name does not.
        let token = Variance::capture(&response, &request("gzip;p=Ab", "Dark")).unwrap();
        assert!(token.matches(&request("GZIP; P=Ab", "Dark")));
        assert!(!token.matches(&request("gzip;p=ab", "Dark")));
        let same = Variance::capture(&response, &request("br, GZIP", "Dark")).unwrap();
        assert_eq!(variance.variant_key(&[1; 32]), same.variant_key(&[1; 32]));
        assert_ne!(
            variance.variant_key(&[1; 32]),
            variance.variant_key(&[2; 32])
        );
    }

    /// `Cookie` is not a comma list: its lines (HTTP/2 sends one per pair) and pairs are joined
    /// with `; `, as edge forwards them, and a comma stays part of a value. Fields edge does not
    /// know the syntax of are compared as sent, line by line.
    #[test]
    fn variance_compares_cookies_by_pairs_and_other_fields_as_sent() {
        let vary = |names: &'static str| {
            let mut response = HeaderMap::new();
            response.insert(header::VARY, HeaderValue::from_static(names));
            response
        };
        let asking = |name: &'static str, lines: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append(name, HeaderValue::from_static(line));
            }
            headers
        };
        let cookie = Variance::capture(&vary("Cookie"), &asking("cookie", &["a=1; b=2"])).unwrap();
        assert!(cookie.matches(&asking("cookie", &["a=1", "b=2"])));
        assert!(cookie.matches(&asking("cookie", &["a=1;b=2 "])));
        assert!(!cookie.matches(&asking("cookie", &["a=1, b=2"])));
        assert!(!cookie.matches(&asking("cookie", &["b=2; a=1"])));
        let split = Variance::capture(&vary("Cookie"), &asking("cookie", &["a=1", "b=2"])).unwrap();
        assert_eq!(split.variant_key(&[1; 32]), cookie.variant_key(&[1; 32]));

        let agent = "Mozilla/5.0 (KHTML, like Gecko)";
        let ua = Variance::capture(&vary("User-Agent"), &asking("user-agent", &[agent])).unwrap();
        assert!(ua.matches(&asking("user-agent", &[agent])));
        for other in [
            "Mozilla/5.0 (KHTML,like Gecko)",
            "Mozilla/5.0  (KHTML, like Gecko)",
        ] {
            assert!(!ua.matches(&asking("user-agent", &[other])), "{other}");
        }
        let split = asking("user-agent", &["Mozilla/5.0 (KHTML", "like Gecko)"]);
        assert!(!ua.matches(&split), "one line is not two");
    }

    /// The lines of a list field are one list (RFC 9110 §5.3): a quoted string one line leaves
    /// open goes on into the next, as for an origin that joins them, and keeps its letters there.
    #[test]
    fn variance_reads_the_lines_of_a_list_as_one_value() {
        let mut response = HeaderMap::new();
        response.insert(header::VARY, HeaderValue::from_static("Accept"));
        let asking = |lines: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append(header::ACCEPT, HeaderValue::from_static(line));
            }
            headers
        };
        let split = Variance::capture(&response, &asking(&["a;q=\"x", "Y\""])).unwrap();
        assert!(split.matches(&asking(&["a;q=\"x, Y\""])));
        assert!(
            !split.matches(&asking(&["a;q=\"x, y\""])),
            "a quoted Y is not a y"
        );
        let lines = Variance::capture(&response, &asking(&["text/html", "A/B"])).unwrap();
        assert!(lines.matches(&asking(&["text/html, a/b"])));
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
        let variance = Variance::capture(&response, &first).unwrap();
        assert!(variance.matches(&second));
        assert!(!variance.matches(&HeaderMap::new()));
    }
}
