//! Range requests (RFC 9110 §14): answering a `Range` of a complete representation, with a 206
//! (one part, or `multipart/byteranges`), a 416, or the whole 200.
//!
//! The caller applies this only to GET (§14.2: Range is ignored for other methods) and only to a
//! 200 of known length: [`apply`] cuts the answer from a body in memory; [`select`] and
//! [`several`] leave reading the bytes to the caller (a body kept in a file, or one still
//! arriving from the origin).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::ops::RangeInclusive;

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use http_range_header::{EndPosition, StartPosition};

use crate::conditional::if_range_matches;

/// The most range-specs edge answers in one request; more and the whole representation is sent.
/// §14.2 lets a server ignore a Range of many small or overlapping ranges, the shape of a denial
/// of service (§17.15); 32 is far beyond what a media player or download resumer asks for.
pub const MAX_RANGES: usize = 32;

/// How to answer a request, given the `Range` it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Serve the 200 as it is: no Range, one edge ignores, or a failed `If-Range`.
    Full,
    /// 206 Partial Content: every field of the 200 except those this replaces (`Content-Range`,
    /// `Content-Length`, and for several parts `Content-Type`), and the content to send, in
    /// pieces: slices of the body and, for several parts, the multipart framing around them.
    Partial {
        headers: HeaderMap,
        body: Vec<Bytes>,
    },
    /// 416 Range Not Satisfiable: only `Content-Range: bytes */length` (§15.5.17); the caller adds
    /// what it adds to any response and sends no content.
    Unsatisfiable { headers: HeaderMap },
}

impl RangeOutcome {
    /// The status code to send: 200 for [`RangeOutcome::Full`], the caller's response being a 200.
    pub fn status(&self) -> StatusCode {
        match self {
            RangeOutcome::Full => StatusCode::OK,
            RangeOutcome::Partial { .. } => StatusCode::PARTIAL_CONTENT,
            RangeOutcome::Unsatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
        }
    }
}

/// What a `Range` asks of a representation of a known length, before any content is cut: what
/// [`apply`] answers from a body in memory, and what a body read from its file is answered by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// As [`RangeOutcome::Full`].
    Full,
    /// As [`RangeOutcome::Unsatisfiable`].
    Unsatisfiable { headers: HeaderMap },
    /// One part: the 206's fields, and the bytes of the representation it carries.
    One {
        headers: HeaderMap,
        range: RangeInclusive<usize>,
    },
    /// Several parts, coalesced, in the order they are sent as `multipart/byteranges`.
    Several(Vec<RangeInclusive<usize>>),
}

/// What a `Range` field asks of a representation of a given length.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Ignore the field and serve the whole representation.
    Ignore,
    Unsatisfiable,
    /// The satisfiable ranges, clamped to the representation, in the order they were asked for.
    Ranges(Vec<RangeInclusive<usize>>),
}

/// Resolves a `Range` value against a representation of `length` bytes (§14.1.2).
fn plan(value: &HeaderValue, length: usize) -> Plan {
    let Ok(text) = value.to_str() else {
        return Plan::Ignore;
    };
    // Counted before parsing, so a hostile list costs no allocation.
    if text.split(',').count() > MAX_RANGES {
        return Plan::Ignore;
    }
    // §14.1: range units are case-insensitive, the parser knows only `bytes=`; any other unit is
    // one edge does not support, which §14.2 says to ignore.
    let Some((unit, set)) = text.split_once('=') else {
        return Plan::Ignore;
    };
    if !unit.eq_ignore_ascii_case("bytes") {
        return Plan::Ignore;
    }
    // `range-set` is a list (`1#range-spec`): whitespace around its commas and empty elements
    // are ignored (RFC 9110 §5.6.1), which the parser does not do itself. Anything it rejects
    // (`-0`, say) is served whole, which §14.2 permits for any Range.
    let set: Vec<&str> = (set.split(',').map(str::trim))
        .filter(|spec| !spec.is_empty())
        .collect();
    let Ok(parsed) = http_range_header::parse_range_header(&format!("bytes={}", set.join(",")))
    else {
        return Plan::Ignore;
    };
    let total = length as u64;
    let last_byte = total.saturating_sub(1);
    let mut ranges = Vec::with_capacity(parsed.ranges.len());
    let mut suffix_of_nothing = false;
    for spec in &parsed.ranges {
        let range = match (spec.start, spec.end) {
            (StartPosition::Index(first), EndPosition::Index(last)) => {
                // §14.1.1: last-pos before first-pos makes the whole ranges-specifier invalid.
                if last < first {
                    return Plan::Ignore;
                }
                (first < total).then(|| first..=last.min(last_byte))
            }
            (StartPosition::Index(first), EndPosition::LastByte) => {
                (first < total).then_some(first..=last_byte)
            }
            // §14.1.2: a suffix longer than the representation selects all of it.
            (StartPosition::FromLast(suffix), _) => {
                suffix_of_nothing |= total == 0;
                (total > 0).then(|| total.saturating_sub(suffix)..=last_byte)
            }
        };
        // Both ends are below `length`, a usize, so they convert without loss.
        ranges.extend(range.map(|r| *r.start() as usize..=*r.end() as usize));
    }
    // §14.1.2 calls a non-zero suffix satisfiable even on an empty representation, yet no
    // Content-Range can describe zero bytes; §14.2 lets a server ignore Range when there is no
    // content, so the empty 200 is the answer rather than a 416 that would say "unsatisfiable".
    if suffix_of_nothing {
        return Plan::Ignore;
    }
    if ranges.is_empty() {
        return Plan::Unsatisfiable;
    }
    Plan::Ranges(ranges)
}

/// Merges ranges that overlap or touch, so no byte is sent twice and no part is needlessly split
/// (§15.3.7.2 allows coalescing regardless of order). The parts stay in the order they were asked
/// for (§15.3.7.2 SHOULD), a merged part taking the place of its earliest member.
fn coalesce(ranges: &[RangeInclusive<usize>]) -> Vec<RangeInclusive<usize>> {
    let mut by_start: Vec<(usize, usize, usize)> = ranges
        .iter()
        .enumerate()
        .map(|(order, r)| (*r.start(), *r.end(), order))
        .collect();
    by_start.sort_unstable();
    let mut merged: Vec<(usize, usize, usize)> = Vec::with_capacity(by_start.len());
    for (start, end, order) in by_start {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => {
                last.1 = last.1.max(end);
                last.2 = last.2.min(order);
            }
            _ => merged.push((start, end, order)),
        }
    }
    merged.sort_unstable_by_key(|&(_, _, order)| order);
    merged
        .into_iter()
        .map(|(start, end, _)| start..=end)
        .collect()
}

/// How to answer `request` from a complete representation: `response_headers` are the fields of
/// the 200 edge would send, `body` its whole content (RFC 9110 §14.2, §13.2.2 step 5).
pub fn apply(request: &HeaderMap, response_headers: &HeaderMap, body: &Bytes) -> RangeOutcome {
    match select(request, response_headers, body.len()) {
        Selection::Full => RangeOutcome::Full,
        Selection::Unsatisfiable { headers } => RangeOutcome::Unsatisfiable { headers },
        Selection::One { headers, range } => RangeOutcome::Partial {
            headers,
            body: vec![body.slice(range)],
        },
        Selection::Several(parts) => {
            let (headers, pieces) = several(response_headers, &parts, body.len());
            let body = pieces
                .into_iter()
                .map(|piece| match piece {
                    Piece::Framing(framing) => framing,
                    Piece::Part(part) => body.slice(part),
                })
                .collect();
            RangeOutcome::Partial { headers, body }
        }
    }
}

/// A piece of a `multipart/byteranges` body, in order: framing edge writes, or a part of the
/// representation for the caller to read, as it is sent (never the whole body at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Framing(Bytes),
    Part(RangeInclusive<usize>),
}

/// The 206 of several `parts` of a representation of `length` bytes whose 200 would carry
/// `response_headers`: its fields, and its `multipart/byteranges` content, as pieces.
pub fn several(
    response_headers: &HeaderMap,
    parts: &[RangeInclusive<usize>],
    length: usize,
) -> (HeaderMap, Vec<Piece>) {
    let mut headers = response_headers.clone();
    let boundary = boundary();
    let content_type = headers.get(header::CONTENT_TYPE);
    let pieces = multipart(parts, length, content_type, &boundary);
    let size: usize = pieces
        .iter()
        .map(|piece| match piece {
            Piece::Framing(framing) => framing.len(),
            Piece::Part(part) => part.end() - part.start() + 1,
        })
        .sum();
    headers.remove(header::CONTENT_RANGE);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::try_from(format!("multipart/byteranges; boundary={boundary}"))
            .expect("the boundary is hexadecimal"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    (headers, pieces)
}

/// What `request` asks of a representation of `length` bytes whose 200 would carry
/// `response_headers`, without its content.
pub fn select(request: &HeaderMap, response_headers: &HeaderMap, length: usize) -> Selection {
    let mut lines = request.get_all(header::RANGE).iter();
    let Some(value) = lines.next() else {
        return Selection::Full;
    };
    // Range holds one ranges-specifier; two lines are not one.
    if lines.next().is_some() {
        return Selection::Full;
    }
    // §13.1.5: a failed If-Range means the client's partial copy is of another representation, so
    // it needs all of this one, even when its ranges would be unsatisfiable.
    if !if_range_matches(request, response_headers) {
        return Selection::Full;
    }
    let ranges = match plan(value, length) {
        Plan::Ignore => return Selection::Full,
        Plan::Unsatisfiable => {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_RANGE, content_range(format!("*/{length}")));
            return Selection::Unsatisfiable { headers };
        }
        Plan::Ranges(ranges) => ranges,
    };
    // §14.2: ranges that ask for the same bytes over and over are ignored; measured before
    // coalescing, since it is the request's shape that marks it as hostile.
    let requested = ranges
        .iter()
        .fold(0usize, |sum, r| sum.saturating_add(r.end() - r.start() + 1));
    if requested > length.saturating_mul(2) {
        return Selection::Full;
    }
    let mut parts = coalesce(&ranges);
    // §15.3.7.2: one part is sent on its own, even when several ranges were asked for, since
    // every client understands it.
    if parts.len() > 1 {
        return Selection::Several(parts);
    }
    let only = parts.remove(0);
    let mut headers = response_headers.clone();
    headers.insert(
        header::CONTENT_RANGE,
        content_range(format!("{}-{}/{length}", only.start(), only.end())),
    );
    headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(only.end() - only.start() + 1),
    );
    Selection::One {
        headers,
        range: only,
    }
}

/// `bytes ` followed by `rest`, as a `Content-Range` value (§14.4).
fn content_range(rest: String) -> HeaderValue {
    HeaderValue::try_from(format!("bytes {rest}")).expect("Content-Range is built from digits")
}

/// A fresh multipart boundary: unpredictable, so a representation cannot carry the delimiter
/// that would end its part early. `RandomState` is keyed from the OS once per thread and stepped
/// per instance, which is enough here without a dependency on `rand`.
fn boundary() -> String {
    let high = RandomState::new().build_hasher().finish();
    let low = RandomState::new().build_hasher().finish();
    format!("{high:016x}{low:016x}")
}

/// The `multipart/byteranges` content of §14.6: each part with the representation's
/// `Content-Type`, if it has one, and its own `Content-Range`.
fn multipart(
    parts: &[RangeInclusive<usize>],
    length: usize,
    content_type: Option<&HeaderValue>,
    boundary: &str,
) -> Vec<Piece> {
    let mut pieces = Vec::with_capacity(parts.len() * 2 + 1);
    let mut framing = BytesMut::new();
    for part in parts {
        // RFC 2046 §5.1.1: the CRLF before a delimiter belongs to the delimiter, not the part.
        if !pieces.is_empty() {
            framing.put_slice(b"\r\n");
        }
        framing.put_slice(b"--");
        framing.put_slice(boundary.as_bytes());
        framing.put_slice(b"\r\n");
        if let Some(content_type) = content_type {
            framing.put_slice(b"Content-Type: ");
            framing.put_slice(content_type.as_bytes());
            framing.put_slice(b"\r\n");
        }
        let range = format!(
            "Content-Range: bytes {}-{}/{length}\r\n\r\n",
            part.start(),
            part.end()
        );
        framing.put_slice(range.as_bytes());
        pieces.push(Piece::Framing(framing.split().freeze()));
        pieces.push(Piece::Part(part.clone()));
    }
    framing.put_slice(b"\r\n--");
    framing.put_slice(boundary.as_bytes());
    framing.put_slice(b"--\r\n");
    pieces.push(Piece::Framing(framing.freeze()));
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    const BODY: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

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

    fn stored() -> HeaderMap {
        headers(&[
            ("content-type", "text/plain"),
            ("content-length", "26"),
            ("etag", r#""v1""#),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("date", "Sun, 06 Nov 1994 09:00:00 GMT"),
            ("cache-control", "max-age=60"),
        ])
    }

    fn ask(range: &str) -> RangeOutcome {
        apply(
            &headers(&[("range", range)]),
            &stored(),
            &Bytes::from_static(BODY),
        )
    }

    /// The `Content-Range` and content of a single-part 206.
    fn single(outcome: RangeOutcome) -> (String, Bytes) {
        let RangeOutcome::Partial { headers, body } = outcome else {
            panic!("expected 206, got {outcome:?}");
        };
        let [body] = &body[..] else {
            panic!("one part is one piece: {body:?}");
        };
        let body = body.clone();
        assert_eq!(headers[header::CONTENT_LENGTH], body.len().to_string());
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain");
        assert_eq!(headers[header::ETAG], r#""v1""#);
        let range = headers[header::CONTENT_RANGE].to_str().unwrap().to_owned();
        (range, body)
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    /// Parses a multipart/byteranges 206 back into (Content-Range, bytes) per part, checking the
    /// framing and each part's Content-Type on the way.
    fn parts(outcome: RangeOutcome) -> Vec<(String, Vec<u8>)> {
        let RangeOutcome::Partial { headers, body } = outcome else {
            panic!("expected 206, got {outcome:?}");
        };
        let body = body.concat();
        assert_eq!(headers[header::CONTENT_LENGTH], body.len().to_string());
        assert!(!headers.contains_key(header::CONTENT_RANGE));
        let content_type = headers[header::CONTENT_TYPE].to_str().unwrap();
        let boundary = content_type
            .strip_prefix("multipart/byteranges; boundary=")
            .unwrap();
        let delimiter = format!("\r\n--{boundary}");
        let mut rest = body
            .strip_prefix(format!("--{boundary}\r\n").as_bytes())
            .unwrap();
        let mut out = Vec::new();
        loop {
            let fields_end = find(rest, b"\r\n\r\n").unwrap();
            let fields = std::str::from_utf8(&rest[..fields_end]).unwrap();
            let mut lines = fields.split("\r\n");
            assert_eq!(lines.next(), Some("Content-Type: text/plain"));
            let range = lines
                .next()
                .unwrap()
                .strip_prefix("Content-Range: ")
                .unwrap();
            assert_eq!(lines.next(), None);
            rest = &rest[fields_end + 4..];
            let data_end = find(rest, delimiter.as_bytes()).unwrap();
            out.push((range.to_owned(), rest[..data_end].to_vec()));
            rest = &rest[data_end + delimiter.len()..];
            if rest == b"--\r\n" {
                return out;
            }
            rest = rest.strip_prefix(b"\r\n").unwrap();
        }
    }

    #[test]
    fn no_range_or_another_unit_serves_the_whole_representation() {
        let body = Bytes::from_static(BODY);
        assert_eq!(apply(&headers(&[]), &stored(), &body), RangeOutcome::Full);
        assert_eq!(ask("items=0-5"), RangeOutcome::Full);
        assert_eq!(RangeOutcome::Full.status(), StatusCode::OK);
    }

    #[test]
    fn malformed_ranges_are_ignored() {
        for bad in [
            "bytes",
            "bytes=",
            "bytes=abc",
            "bytes=5-1",
            "bytes=0-1,5-2",
            "bytes=1-2-3",
            "bytes=-0",
            "bytes=+1-2",
            "bytes=0-99999999999999999999",
        ] {
            assert_eq!(ask(bad), RangeOutcome::Full, "{bad}");
        }
        let twice = headers(&[("range", "bytes=0-1"), ("range", "bytes=2-3")]);
        assert_eq!(
            apply(&twice, &stored(), &Bytes::from_static(BODY)),
            RangeOutcome::Full
        );
    }

    /// RFC 9110 §5.6.1: a list's empty elements, and whitespace around its commas, are ignored.
    #[test]
    fn empty_list_elements_and_whitespace_are_ignored() {
        assert_eq!(single(ask("bytes=2-4,")), single(ask("bytes=2-4")));
        assert_eq!(single(ask("bytes=, 2-4 ,,")), single(ask("bytes=2-4")));
        let value = HeaderValue::from_static("bytes=0-1 ,, 3-4");
        assert_eq!(plan(&value, 26), Plan::Ranges(vec![0..=1, 3..=4]));
        assert_eq!(ask("bytes=,"), RangeOutcome::Full);
    }

    #[test]
    fn one_range_is_a_slice_of_the_stored_body() {
        let body = Bytes::from_static(BODY);
        let outcome = apply(&headers(&[("range", "bytes=2-4")]), &stored(), &body);
        assert_eq!(outcome.status(), StatusCode::PARTIAL_CONTENT);
        let (range, part) = single(outcome);
        assert_eq!(range, "bytes 2-4/26");
        assert_eq!(&part[..], b"cde");
        // Not copied: the part points into the stored body.
        assert_eq!(part.as_ptr(), body[2..].as_ptr());
        // The unit is case-insensitive.
        assert_eq!(single(ask("Bytes=0-0")).0, "bytes 0-0/26");
    }

    #[test]
    fn suffix_ranges_take_the_last_bytes() {
        let (range, part) = single(ask("bytes=-3"));
        assert_eq!((range.as_str(), &part[..]), ("bytes 23-25/26", &b"xyz"[..]));
        // §14.1.2: a suffix longer than the representation is all of it.
        let (range, part) = single(ask("bytes=-500"));
        assert_eq!((range.as_str(), &part[..]), ("bytes 0-25/26", BODY));
    }

    #[test]
    fn open_and_overlong_ranges_end_at_the_last_byte() {
        let (range, part) = single(ask("bytes=20-"));
        assert_eq!(
            (range.as_str(), &part[..]),
            ("bytes 20-25/26", &b"uvwxyz"[..])
        );
        let (range, part) = single(ask("bytes=24-9999"));
        assert_eq!((range.as_str(), &part[..]), ("bytes 24-25/26", &b"yz"[..]));
    }

    #[test]
    fn several_ranges_are_multipart_in_the_order_asked() {
        let got = parts(ask("bytes=20-22, 0-1,-2"));
        assert_eq!(
            got,
            vec![
                ("bytes 20-22/26".to_owned(), b"uvw".to_vec()),
                ("bytes 0-1/26".to_owned(), b"ab".to_vec()),
                ("bytes 24-25/26".to_owned(), b"yz".to_vec()),
            ]
        );
    }

    #[test]
    fn overlapping_and_adjacent_ranges_are_coalesced() {
        // 0-2, 1-4 and 5-5 merge into 0-5, placed where 0-2 was asked for: after 10-12.
        let got = parts(ask("bytes=10-12,0-2,1-4,5-5"));
        assert_eq!(
            got,
            vec![
                ("bytes 10-12/26".to_owned(), b"klm".to_vec()),
                ("bytes 0-5/26".to_owned(), b"abcdef".to_vec()),
            ]
        );
        // Ranges that merge into one are one plain 206, not a multipart of one.
        assert_eq!(single(ask("bytes=0-3,2-5")).0, "bytes 0-5/26");
    }

    #[test]
    fn unsatisfiable_members_are_dropped_and_one_survivor_is_plain() {
        assert_eq!(single(ask("bytes=0-1, 100-200")).0, "bytes 0-1/26");
    }

    #[test]
    fn no_satisfiable_range_is_416_with_the_length() {
        for range in ["bytes=26-", "bytes=100-200, 300-"] {
            let outcome = ask(range);
            assert_eq!(outcome.status(), StatusCode::RANGE_NOT_SATISFIABLE);
            let RangeOutcome::Unsatisfiable { headers } = outcome else {
                unreachable!()
            };
            assert_eq!(headers.len(), 1);
            assert_eq!(headers[header::CONTENT_RANGE], "bytes */26");
        }
    }

    #[test]
    fn an_empty_representation_satisfies_no_byte_range() {
        let empty = Bytes::new();
        let outcome = apply(&headers(&[("range", "bytes=0-")]), &stored(), &empty);
        let RangeOutcome::Unsatisfiable { headers: fields } = outcome else {
            panic!("expected 416, got {outcome:?}");
        };
        assert_eq!(fields[header::CONTENT_RANGE], "bytes */0");
        // A suffix is satisfiable there (§14.1.2) but cannot be described, so the 200 is sent.
        for range in ["bytes=-5", "bytes=0-, -5"] {
            let request = headers(&[("range", range)]);
            assert_eq!(apply(&request, &stored(), &empty), RangeOutcome::Full);
        }
    }

    #[test]
    fn if_range_must_match_strongly() {
        let body = Bytes::from_static(BODY);
        let with = |if_range| headers(&[("range", "bytes=0-1"), ("if-range", if_range)]);
        assert_eq!(
            apply(&with(r#"W/"v1""#), &stored(), &body),
            RangeOutcome::Full
        );
        assert_eq!(
            apply(&with(r#""v0""#), &stored(), &body),
            RangeOutcome::Full
        );
        assert_eq!(
            single(apply(&with(r#""v1""#), &stored(), &body)).0,
            "bytes 0-1/26"
        );
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(
            single(apply(&with(date), &stored(), &body)).0,
            "bytes 0-1/26"
        );
        // A failed If-Range sends the whole representation even for an unsatisfiable range.
        let request = headers(&[("range", "bytes=100-"), ("if-range", r#""v0""#)]);
        assert_eq!(apply(&request, &stored(), &body), RangeOutcome::Full);
    }

    #[test]
    fn hostile_range_sets_are_ignored() {
        let many = |n: usize| {
            let specs: Vec<String> = (0..n).map(|i| format!("{i}-{i}")).collect();
            format!("bytes={}", specs.join(","))
        };
        assert_eq!(ask(&many(MAX_RANGES + 1)), RangeOutcome::Full);
        // At the limit they are served; these 26 single bytes touch, so they make one part.
        assert_eq!(single(ask(&many(26))).0, "bytes 0-25/26");
        let spaced: Vec<String> = (0..13).map(|i| format!("{0}-{0}", i * 2)).collect();
        assert_eq!(parts(ask(&format!("bytes={}", spaced.join(",")))).len(), 13);
        // Asking for more than twice the representation is ignored, up to twice is served.
        assert_eq!(ask("bytes=0-,0-,0-"), RangeOutcome::Full);
        assert_eq!(single(ask("bytes=0-,-26")).0, "bytes 0-25/26");
    }

    /// The parts of a multipart answer are slices of the stored body between framing pieces, so
    /// that no request holds a copy of it.
    #[test]
    fn several_parts_are_slices_of_the_stored_body() {
        let body = Bytes::from_static(BODY);
        let request = headers(&[("range", "bytes=0-1,20-25")]);
        let RangeOutcome::Partial {
            headers,
            body: pieces,
        } = apply(&request, &stored(), &body)
        else {
            panic!("expected 206");
        };
        assert_eq!(pieces.len(), 5, "framing, part, framing, part, framing");
        assert_eq!(pieces[1].as_ptr(), body.as_ptr());
        assert_eq!(pieces[3].as_ptr(), body[20..].as_ptr());
        let length: usize = pieces.iter().map(Bytes::len).sum();
        assert_eq!(headers[header::CONTENT_LENGTH], length.to_string());
    }

    #[test]
    fn parts_omit_content_type_when_the_representation_has_none() {
        let mut response = stored();
        response.remove(header::CONTENT_TYPE);
        let request = headers(&[("range", "bytes=0-0,2-2")]);
        let RangeOutcome::Partial { body, .. } =
            apply(&request, &response, &Bytes::from_static(BODY))
        else {
            panic!("expected 206");
        };
        let body = body.concat();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(!text.contains("Content-Type"));
        assert_eq!(text.matches("Content-Range: bytes ").count(), 2);
    }

    #[test]
    fn coalesce_keeps_request_order() {
        assert_eq!(coalesce(&[5..=6, 0..=1, 6..=9]), vec![5..=9, 0..=1]);
        assert_eq!(coalesce(&[0..=0, 2..=2]), vec![0..=0, 2..=2]);
    }
}
