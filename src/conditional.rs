//! Conditional requests (RFC 9110 §13): whether a client's GET or HEAD can be answered with 304
//! instead of the 200 edge is about to serve, which fields that 304 carries, and whether
//! `If-Range` lets a `Range` apply.
//!
//! Nothing here checks the method or the status: the caller evaluates these only for GET and HEAD
//! against a 200 (§13.2.1), which is what lets every function assume a current representation.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// RFC 9110 §8.8.3: an entity-tag, with its opaque-tag's bytes between (not including) the quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    opaque: &'a [u8],
}

impl EntityTag<'_> {
    /// §8.8.3.2: the opaque-tags match, whatever either tag's weakness.
    fn weak_eq(&self, other: &EntityTag<'_>) -> bool {
        self.opaque == other.opaque
    }

    /// §8.8.3.2: both tags are strong and their opaque-tags match.
    fn strong_eq(&self, other: &EntityTag<'_>) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }
}

/// Parses one entity-tag at the start of `input` and returns it with what follows it.
fn parse_entity_tag(input: &[u8]) -> Option<(EntityTag<'_>, &[u8])> {
    // §8.8.3: the weak indicator is case-sensitive.
    let (weak, rest) = match input.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, input),
    };
    let rest = rest.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let opaque = &rest[..end];
    // etagc = %x21 / %x23-7E / obs-text; a comma is a legal etagc, so lists cannot be split on it.
    if !opaque
        .iter()
        .all(|&b| b == 0x21 || (0x23..=0x7E).contains(&b) || b >= 0x80)
    {
        return None;
    }
    Some((EntityTag { weak, opaque }, &rest[end + 1..]))
}

/// A response's `ETag`: exactly one line holding exactly one entity-tag, or nothing.
fn response_etag(response: &HeaderMap) -> Option<EntityTag<'_>> {
    let value = single_line(response, &header::ETAG)?;
    let (tag, rest) = parse_entity_tag(value.as_bytes().trim_ascii())?;
    rest.is_empty().then_some(tag)
}

/// What an `If-None-Match` field asks for.
enum IfNoneMatch<'a> {
    /// `*`: any current representation.
    Any,
    Tags(Vec<EntityTag<'a>>),
}

/// Parses every `If-None-Match` line as one list (§5.3); `None` when any part of it is malformed.
fn parse_if_none_match(request: &HeaderMap) -> Option<IfNoneMatch<'_>> {
    let lines: Vec<&[u8]> = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .map(|v| v.as_bytes().trim_ascii())
        .collect();
    // §13.1.2: `*` is the whole field value, never a member alongside entity-tags.
    if lines.contains(&&b"*"[..]) {
        return (lines.len() == 1).then_some(IfNoneMatch::Any);
    }
    let mut tags = Vec::new();
    for line in lines {
        let mut rest = line;
        loop {
            // §5.6.1: a recipient accepts empty list elements.
            rest = rest.trim_ascii_start();
            while let Some(after) = rest.strip_prefix(b",") {
                rest = after.trim_ascii_start();
            }
            if rest.is_empty() {
                break;
            }
            let (tag, after) = parse_entity_tag(rest)?;
            tags.push(tag);
            rest = after.trim_ascii_start();
            if !rest.is_empty() && !rest.starts_with(b",") {
                return None;
            }
        }
    }
    Some(IfNoneMatch::Tags(tags))
}

/// The only line of a field that must not repeat; `None` when absent or sent more than once.
fn single_line<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    lines.next().is_none().then_some(first)
}

/// An HTTP-date in any of the three formats of RFC 9110 §5.6.7.
fn http_date(value: &HeaderValue) -> Option<SystemTime> {
    crate::cache::policy::http_date(value.to_str().ok()?)
}

/// Whether edge should answer this GET or HEAD with 304 rather than the 200 whose fields are
/// `response` (RFC 9110 §13.2.2, steps 3 and 4).
///
/// A malformed `If-None-Match` is evaluated as "no match": sending the 200 is always correct, a
/// 304 the client did not ask for is not.
pub fn not_modified(request: &HeaderMap, response: &HeaderMap) -> bool {
    // §13.1.3: If-Modified-Since is ignored whenever If-None-Match is present, valid or not, since
    // entity-tags are the more accurate validator.
    if request.contains_key(header::IF_NONE_MATCH) {
        return match parse_if_none_match(request) {
            // §13.1.2: the caller serves a 200, so a current representation exists.
            Some(IfNoneMatch::Any) => true,
            Some(IfNoneMatch::Tags(tags)) => response_etag(response)
                .is_some_and(|etag| tags.iter().any(|tag| tag.weak_eq(&etag))),
            None => false,
        };
    }
    // §13.1.3: ignored unless a single, valid HTTP-date.
    let Some(since) = single_line(request, &header::IF_MODIFIED_SINCE).and_then(http_date) else {
        return false;
    };
    // RFC 9111 §4.3.2: without Last-Modified a cache compares with the stored response's Date;
    // the time it was received is the last resort there, but it is not a field, so edge stops
    // here and serves the 200.
    let modified = response
        .get(header::LAST_MODIFIED)
        .and_then(http_date)
        .or_else(|| response.get(header::DATE).and_then(http_date));
    modified.is_some_and(|modified| modified <= since)
}

/// Representation metadata a 304 leaves out, and why each goes.
///
/// §15.4.5 requires Content-Location, Date, ETag, Vary, Cache-Control and Expires when the 200
/// would have had them, and says a sender SHOULD NOT send other representation metadata unless it
/// guides cache updates. Last-Modified does (it is the validator when there is no ETag), so it
/// stays; the fields below describe content the 304 does not carry. Content-Length and
/// Content-Range in particular would be taken by a recipient freshening its stored response
/// (RFC 9111 §4.3.4) as facts about a body, and Transfer-Encoding frames one. Everything that is
/// not representation metadata (Age, Via, Cache-Status, Accept-Ranges, `X-` fields, and
/// Set-Cookie, which a stored response never has and which a fresh 200's client must still get)
/// is kept, as the 200 would have had it.
const NOT_IN_304: [HeaderName; 7] = [
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_LANGUAGE,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::TRANSFER_ENCODING,
    // RFC 9530 §2: a digest of the message content, which a 304 does not have.
    HeaderName::from_static("content-digest"),
];

/// The fields of the 304 that replaces the 200 whose fields are `response` (RFC 9110 §15.4.5).
pub fn not_modified_headers(response: &HeaderMap) -> HeaderMap {
    let mut headers = response.clone();
    for name in &NOT_IN_304 {
        headers.remove(name);
    }
    headers
}

/// Whether the `If-Range` precondition (RFC 9110 §13.1.5) lets the request's `Range` apply to the
/// response whose fields are `response`; true when there is no `If-Range`.
///
/// A value that is neither a valid entity-tag nor a valid HTTP-date never matches, so the client
/// gets the whole representation rather than a part of one it may not have.
pub fn if_range_matches(request: &HeaderMap, response: &HeaderMap) -> bool {
    if !request.contains_key(header::IF_RANGE) {
        return true;
    }
    // If-Range holds one validator, not a list.
    let Some(value) = single_line(request, &header::IF_RANGE) else {
        return false;
    };
    let value = value.as_bytes().trim_ascii();
    if value.starts_with(b"\"") || value.starts_with(b"W/") {
        // §13.1.5: an entity-tag matches by strong comparison only, so a weak one never does.
        let Some((tag, rest)) = parse_entity_tag(value) else {
            return false;
        };
        return rest.is_empty() && response_etag(response).is_some_and(|etag| tag.strong_eq(&etag));
    }
    let Some(date) = std::str::from_utf8(value)
        .ok()
        .and_then(crate::cache::policy::http_date)
    else {
        return false;
    };
    let Some(last_modified) = response.get(header::LAST_MODIFIED).and_then(http_date) else {
        return false;
    };
    // §13.1.5 wants an exact match with a strong validator; §8.8.2.2: a Last-Modified is strong
    // only when the response's Date is at least a second later, since a representation can change
    // twice within the same second.
    let strong = response
        .get(header::DATE)
        .and_then(http_date)
        .is_some_and(|sent| sent >= last_modified + Duration::from_secs(1));
    strong && last_modified == date
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const T0_RFC850: &str = "Sunday, 06-Nov-94 08:49:37 GMT";
    const T0_ASCTIME: &str = "Sun Nov  6 08:49:37 1994";
    const BEFORE_T0: &str = "Sun, 06 Nov 1994 08:49:36 GMT";
    const AFTER_T0: &str = "Sun, 06 Nov 1994 08:49:38 GMT";

    fn headers(fields: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn if_none_match_list_matches_weakly() {
        let request = headers(&[("if-none-match", r#""a", W/"b""#)]);
        assert!(not_modified(&request, &headers(&[("etag", r#""b""#)])));
        assert!(not_modified(&request, &headers(&[("etag", r#"W/"a""#)])));
        assert!(!not_modified(&request, &headers(&[("etag", r#""c""#)])));
        assert!(!not_modified(&request, &headers(&[])));
    }

    #[test]
    fn if_none_match_lines_form_one_list() {
        let request = headers(&[("if-none-match", r#""a""#), ("if-none-match", r#""b""#)]);
        assert!(not_modified(&request, &headers(&[("etag", r#""b""#)])));
        assert!(!not_modified(&request, &headers(&[("etag", r#""c""#)])));
    }

    #[test]
    fn opaque_tags_may_hold_commas_and_lists_may_hold_empty_elements() {
        let request = headers(&[("if-none-match", r#" , "x,y" ,, W/"z","#)]);
        assert!(not_modified(&request, &headers(&[("etag", r#""x,y""#)])));
        assert!(not_modified(&request, &headers(&[("etag", r#""z""#)])));
        assert!(!not_modified(&request, &headers(&[("etag", r#""x""#)])));
    }

    #[test]
    fn if_none_match_star_matches_any_representation() {
        let request = headers(&[("if-none-match", "*")]);
        assert!(not_modified(&request, &headers(&[("etag", r#""a""#)])));
        assert!(not_modified(&request, &headers(&[])));
        // `*` is the whole value or it is invalid.
        let mixed = headers(&[("if-none-match", "*"), ("if-none-match", r#""a""#)]);
        assert!(!not_modified(&mixed, &headers(&[("etag", r#""a""#)])));
    }

    #[test]
    fn malformed_if_none_match_never_yields_304() {
        let etag = headers(&[("etag", r#""a""#)]);
        for bad in [r#"a"#, r#""a"#, r#""a" "b""#, r#"w/"a""#, r#""a b""#] {
            assert!(
                !not_modified(&headers(&[("if-none-match", bad)]), &etag),
                "{bad}"
            );
        }
        // A malformed response ETag matches nothing either.
        let request = headers(&[("if-none-match", r#""a""#)]);
        assert!(!not_modified(&request, &headers(&[("etag", "a")])));
    }

    #[test]
    fn if_modified_since_is_ignored_when_if_none_match_is_present() {
        let response = headers(&[("etag", r#""new""#), ("last-modified", BEFORE_T0)]);
        let request = headers(&[("if-none-match", r#""old""#), ("if-modified-since", T0)]);
        assert!(!not_modified(&request, &response));
        // Even a malformed If-None-Match shadows it.
        let request = headers(&[("if-none-match", "garbage"), ("if-modified-since", T0)]);
        assert!(!not_modified(&request, &response));
    }

    #[test]
    fn if_modified_since_compares_with_last_modified() {
        let response = headers(&[("last-modified", T0), ("date", AFTER_T0)]);
        for since in [T0, T0_RFC850, T0_ASCTIME, AFTER_T0] {
            let request = headers(&[("if-modified-since", since)]);
            assert!(not_modified(&request, &response), "{since}");
        }
        let request = headers(&[("if-modified-since", BEFORE_T0)]);
        assert!(!not_modified(&request, &response));
    }

    #[test]
    fn if_modified_since_falls_back_to_date() {
        let response = headers(&[("date", T0)]);
        assert!(not_modified(
            &headers(&[("if-modified-since", T0)]),
            &response
        ));
        assert!(!not_modified(
            &headers(&[("if-modified-since", BEFORE_T0)]),
            &response
        ));
        assert!(!not_modified(
            &headers(&[("if-modified-since", T0)]),
            &headers(&[])
        ));
    }

    #[test]
    fn invalid_or_repeated_if_modified_since_is_ignored() {
        let response = headers(&[("last-modified", T0)]);
        for bad in ["yesterday", "0", "Sun, 06 Nov 1994 08:49:37", ""] {
            assert!(
                !not_modified(&headers(&[("if-modified-since", bad)]), &response),
                "{bad:?}"
            );
        }
        let twice = headers(&[("if-modified-since", T0), ("if-modified-since", AFTER_T0)]);
        assert!(!not_modified(&twice, &response));
        // An invalid Last-Modified (and no Date) leaves nothing to compare with.
        let request = headers(&[("if-modified-since", T0)]);
        assert!(!not_modified(
            &request,
            &headers(&[("last-modified", "soon")])
        ));
    }

    #[test]
    fn a_304_keeps_validators_and_cache_metadata_but_not_content_fields() {
        let response = headers(&[
            ("content-location", "/a.en"),
            ("date", AFTER_T0),
            ("etag", r#""a""#),
            ("vary", "accept"),
            ("vary", "accept-encoding"),
            ("cache-control", "max-age=60"),
            ("expires", AFTER_T0),
            ("last-modified", T0),
            ("age", "5"),
            ("via", "1.1 edge"),
            ("x-request-id", "7"),
            ("content-type", "text/plain"),
            ("content-length", "12"),
            ("content-encoding", "gzip"),
            ("content-language", "en"),
            ("content-range", "bytes 0-11/12"),
            ("transfer-encoding", "chunked"),
            ("content-digest", "sha-256=:AA=:"),
        ]);
        let kept = not_modified_headers(&response);
        for name in [
            "content-location",
            "date",
            "etag",
            "cache-control",
            "expires",
            "last-modified",
            "age",
            "via",
            "x-request-id",
        ] {
            assert!(kept.contains_key(name), "{name} dropped");
        }
        assert_eq!(kept.get_all("vary").iter().count(), 2);
        for name in &NOT_IN_304 {
            assert!(!kept.contains_key(name), "{name} kept");
        }
        assert_eq!(kept.keys_len(), 10);
    }

    #[test]
    fn if_range_absent_matches() {
        assert!(if_range_matches(&headers(&[]), &headers(&[])));
    }

    #[test]
    fn if_range_entity_tag_compares_strongly() {
        let strong = headers(&[("etag", r#""a""#)]);
        let weak = headers(&[("etag", r#"W/"a""#)]);
        let ask = |value| headers(&[("if-range", value)]);
        assert!(if_range_matches(&ask(r#""a""#), &strong));
        assert!(!if_range_matches(&ask(r#""b""#), &strong));
        assert!(!if_range_matches(&ask(r#"W/"a""#), &strong));
        assert!(!if_range_matches(&ask(r#""a""#), &weak));
        assert!(!if_range_matches(&ask(r#""a""#), &headers(&[])));
        // One validator, not a list.
        assert!(!if_range_matches(&ask(r#""a", "b""#), &strong));
        let twice = headers(&[("if-range", r#""a""#), ("if-range", r#""a""#)]);
        assert!(!if_range_matches(&twice, &strong));
    }

    #[test]
    fn if_range_date_needs_an_exact_strong_last_modified() {
        let strong = headers(&[("last-modified", T0), ("date", AFTER_T0)]);
        for date in [T0, T0_RFC850, T0_ASCTIME] {
            assert!(
                if_range_matches(&headers(&[("if-range", date)]), &strong),
                "{date}"
            );
        }
        // Only an exact match: a later date does not mean "unchanged since".
        assert!(!if_range_matches(
            &headers(&[("if-range", AFTER_T0)]),
            &strong
        ));
        assert!(!if_range_matches(
            &headers(&[("if-range", BEFORE_T0)]),
            &strong
        ));
        // Date within the same second as Last-Modified, or absent: a weak validator.
        let same_second = headers(&[("last-modified", T0), ("date", T0)]);
        assert!(!if_range_matches(
            &headers(&[("if-range", T0)]),
            &same_second
        ));
        let no_date = headers(&[("last-modified", T0)]);
        assert!(!if_range_matches(&headers(&[("if-range", T0)]), &no_date));
        assert!(!if_range_matches(
            &headers(&[("if-range", T0)]),
            &headers(&[("date", AFTER_T0)])
        ));
    }

    #[test]
    fn invalid_if_range_never_matches() {
        let response = headers(&[
            ("etag", r#""a""#),
            ("last-modified", T0),
            ("date", AFTER_T0),
        ]);
        for bad in ["yesterday", r#""a"#, "a", ""] {
            assert!(
                !if_range_matches(&headers(&[("if-range", bad)]), &response),
                "{bad:?}"
            );
        }
    }
}
