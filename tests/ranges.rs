//! RFC 9110 §14: range requests answered by edge from the whole representation it stores or
//! fetches (206, multipart/byteranges, 416, If-Range), and passed through when it cannot.

mod common;

use common::{Harness, Reply, Resp, TestEdge};
use http::Method;

const LEN: usize = 1000;

/// 1000 bytes in which every short slice is tied to its offset.
fn body() -> Vec<u8> {
    (0..LEN).map(|i| (i % 251) as u8).collect()
}

fn object() -> Reply {
    Reply::ok(body())
        .header("cache-control", "max-age=60")
        .header("content-type", "application/octet-stream")
        .header("etag", "\"v1\"")
}

/// Stores `/obj` with one origin request and returns the edge.
async fn stored(h: &Harness, reply: Reply) -> TestEdge {
    h.origin.reply("/obj", reply);
    let edge = h.edge().await;
    let miss = edge.get("/obj").await;
    assert_eq!(miss.status, 200);
    assert_eq!(miss.body.len(), LEN);
    assert!(miss.stored(), "{}", miss.cache_status());
    edge
}

/// Asserts a single-part 206 for bytes `first..=last` of the 1000-byte object.
fn assert_partial(r: &Resp, first: usize, last: usize) {
    assert_eq!(r.status, 206, "{}", r.cache_status());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {first}-{last}/{LEN}").as_str())
    );
    assert_eq!(
        r.header("content-length"),
        Some((last - first + 1).to_string().as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(&r.body[..], &body()[first..=last]);
}

/// Asserts the whole 200.
fn assert_full(r: &Resp) {
    assert_eq!(r.status, 200, "{}", r.cache_status());
    assert_eq!(r.header("content-range"), None);
    assert_eq!(r.header("content-length"), Some("1000"));
    assert_eq!(&r.body[..], &body()[..]);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits a multipart/byteranges body on its boundary into (part headers, part content).
fn multipart_parts(content: &[u8], boundary: &str) -> Vec<(String, Vec<u8>)> {
    let delimiter = format!("--{boundary}");
    let mut pieces = Vec::new();
    let mut rest = content;
    while let Some(at) = find(rest, delimiter.as_bytes()) {
        pieces.push(rest[..at].to_vec());
        rest = &rest[at + delimiter.len()..];
    }
    assert!(
        rest.starts_with(b"--"),
        "the body does not end with the close delimiter"
    );
    // Before the first delimiter: the (empty) preamble.
    assert!(pieces.remove(0).iter().all(u8::is_ascii_whitespace));
    pieces
        .into_iter()
        .map(|piece| {
            // Each piece is CRLF, part headers, CRLF CRLF, content, and the CRLF that belongs to
            // the next delimiter.
            let piece = piece
                .strip_prefix(b"\r\n")
                .expect("CRLF after the delimiter");
            let piece = piece
                .strip_suffix(b"\r\n")
                .expect("CRLF before the delimiter");
            let split = find(piece, b"\r\n\r\n").expect("part headers end with an empty line");
            let headers = String::from_utf8(piece[..split].to_vec()).unwrap();
            (headers, piece[split + 4..].to_vec())
        })
        .collect()
}

#[tokio::test]
async fn range_on_a_hit_is_answered_206_with_the_exact_bytes() {
    let h = Harness::new().await;
    let edge = stored(&h, object()).await;
    let r = edge.get_with("/obj", &[("range", "bytes=0-99")]).await;
    assert_partial(&r, 0, 99);
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert_eq!(h.origin.hits("/obj"), 1);
}

#[tokio::test]
async fn suffix_range_is_the_last_bytes() {
    let h = Harness::new().await;
    let edge = stored(&h, object()).await;
    let r = edge.get_with("/obj", &[("range", "bytes=-100")]).await;
    assert_partial(&r, 900, 999);
    assert!(r.is_hit(), "{}", r.cache_status());
}

#[tokio::test]
async fn open_ended_range_runs_to_the_end() {
    let h = Harness::new().await;
    let edge = stored(&h, object()).await;
    let r = edge.get_with("/obj", &[("range", "bytes=900-")]).await;
    assert_partial(&r, 900, 999);
}

#[tokio::test]
async fn range_past_the_end_is_clamped_to_the_last_byte() {
    let h = Harness::new().await;
    let edge = stored(&h, object()).await;
    let r = edge.get_with("/obj", &[("range", "bytes=990-2000")]).await;
    assert_partial(&r, 990, 999);
}

#[tokio::test]
async fn several_ranges_are_answered_as_multipart_byteranges() {
    let h = Harness::new().await;
    let edge = stored(&h, object()).await;
    let r = edge
        .get_with("/obj", &[("range", "bytes=0-9,500-509")])
        .await;
    assert_eq!(r.status, 206, "{}", r.cache_status());
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(r.header("content-range"), None);
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    let content_type = r.header("content-type").unwrap();
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("content-type {content_type}"));
    assert!(!boundary.is_empty());

    let parts = multipart_parts(&r.body, boundary);
    assert_eq!(parts.len(), 2, "{parts:?}");
    let all = body();
    for ((headers, content), (first, last)) in parts.iter().zip([(0, 9), (500, 509)]) {
        let lines: Vec<&str> = headers.split("\r\n").collect();
        assert!(
            lines.contains(&format!("Content-Range: bytes {first}-{last}/{LEN}").as_str()),
            "{headers}"
        );
        assert!(
            lines.contains(&"Content-Type: application/octet-stream"),
            "{headers}"
        );
        assert_eq!(&content[..], &all[first..=last]);
    }
}

#[tokio::test]
async fn unsatisfiable_range_is_416_with_the_length_and_no_content() {
    let h = Harness::new().await;
    let edge = stored(&h, object()).await;
    let r = edge.get_with("/obj", &[("range", "bytes=5000-6000")]).await;
    assert_eq!(r.status, 416, "{}", r.cache_status());
    assert_eq!(r.header("content-range"), Some("bytes */1000"));
    assert!(r.body.is_empty(), "416 carried {} bytes", r.body.len());
    assert_ne!(r.header("content-length"), Some("1000"));
    assert_ne!(
        r.header("content-type"),
        Some("application/octet-stream"),
        "416 described the representation's content"
    );
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(h.origin.hits("/obj"), 1);
}

#[tokio::test]
async fn malformed_range_is_ignored_and_the_whole_200_sent() {
    let h = Harness::new().await;
    let edge = stored(&h, object()).await;
    let r = edge.get_with("/obj", &[("range", "bytes=abc")]).await;
    assert_full(&r);
    assert!(r.is_hit(), "{}", r.cache_status());
}

#[tokio::test]
async fn if_range_with_the_matching_strong_etag_gets_the_range() {
    let h = Harness::new().await;
    let edge = stored(&h, object()).await;
    let r = edge
        .get_with("/obj", &[("range", "bytes=0-99"), ("if-range", "\"v1\"")])
        .await;
    assert_partial(&r, 0, 99);
}

#[tokio::test]
async fn if_range_with_another_etag_gets_the_whole_200() {
    let h = Harness::new().await;
    let edge = stored(&h, object()).await;
    let r = edge
        .get_with("/obj", &[("range", "bytes=0-99"), ("if-range", "\"v0\"")])
        .await;
    assert_full(&r);
}

#[tokio::test]
async fn if_range_with_a_weak_etag_never_matches() {
    let h = Harness::new().await;
    // §13.1.5: If-Range compares strongly, so a weak tag fails even against the same weak tag.
    let edge = stored(
        &h,
        Reply::ok(body())
            .header("cache-control", "max-age=60")
            .header("content-type", "application/octet-stream")
            .header("etag", "W/\"v1\""),
    )
    .await;
    let r = edge
        .get_with("/obj", &[("range", "bytes=0-99"), ("if-range", "W/\"v1\"")])
        .await;
    assert_full(&r);
    let r = edge
        .get_with("/obj", &[("range", "bytes=0-99"), ("if-range", "\"v1\"")])
        .await;
    assert_full(&r);
}

#[tokio::test]
async fn weak_if_range_against_a_strong_etag_gets_the_whole_200() {
    let h = Harness::new().await;
    let edge = stored(&h, object()).await;
    let r = edge
        .get_with("/obj", &[("range", "bytes=0-99"), ("if-range", "W/\"v1\"")])
        .await;
    assert_full(&r);
}

#[tokio::test]
async fn head_with_range_ignores_the_range() {
    let h = Harness::new().await;
    let edge = stored(&h, object()).await;
    // §14.2: "A server MUST ignore a Range header field received with a request method that is
    // unrecognized or for which range handling is not defined. For this specification, GET is
    // the only method for which range handling is defined."
    let r = edge
        .send(Method::HEAD, "/obj", &[("range", "bytes=0-99")])
        .await;
    assert_eq!(r.status, 200, "{}", r.cache_status());
    assert_eq!(r.header("content-range"), None);
    assert_eq!(r.header("content-length"), Some("1000"));
    assert!(r.body.is_empty(), "HEAD response had a body");
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(h.origin.hits("/obj"), 1);
}

#[tokio::test]
async fn range_miss_fetches_the_whole_object_and_stores_it() {
    let h = Harness::new().await;
    h.origin.reply("/obj", object());
    let edge = h.edge().await;

    let r = edge.get_with("/obj", &[("range", "bytes=100-199")]).await;
    let sent = h.origin.last("/obj").expect("the miss reached the origin");
    assert!(
        !sent.headers.contains_key("range"),
        "the client's Range was forwarded: {:?}",
        sent.headers
    );
    assert_partial(&r, 100, 199);
    assert_eq!(r.fwd(), Some("uri-miss"), "{}", r.cache_status());
    assert!(r.stored(), "{}", r.cache_status());

    let hit = edge.get("/obj").await;
    assert_full(&hit);
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(h.origin.hits("/obj"), 1);
}

#[tokio::test]
async fn range_miss_for_an_object_over_max_object_size_forwards_the_range() {
    let h = Harness::new().await;
    h.origin.reply("/obj", object());
    let edge = h.edge_with(|c| c.cache.max_object_size.0 = 500).await;

    for round in 1..=2 {
        // Round 1 leads the fill that finds the object too large; round 2 finds the key
        // marked hit-for-pass. Either way the origin is asked for the range itself.
        let r = edge.get_with("/obj", &[("range", "bytes=0-99")]).await;
        assert!(!r.stored(), "round {round}: {}", r.cache_status());
        if round == 1 {
            assert_eq!(r.param("detail"), Some("too-large"), "{}", r.cache_status());
        }
        let asked = h.origin.last("/obj").unwrap();
        assert_eq!(
            asked.headers.get("range").map(|v| v.to_str().unwrap()),
            Some("bytes=0-99"),
            "round {round}: the Range request reaches the origin"
        );
        // The fixture origin ignores Range (§14.2 allows it): its 200 reaches the client intact.
        assert_full(&r);
    }
}

#[tokio::test]
async fn range_for_an_unstorable_object_gets_a_consistent_answer() {
    let h = Harness::new().await;
    h.origin.reply(
        "/obj",
        Reply::ok(body())
            .header("cache-control", "no-store")
            .header("content-type", "application/octet-stream"),
    );
    let edge = h.edge().await;

    for round in 1..=2 {
        // Round 1 leads the fill that finds the object unstorable; round 2 finds the key marked
        // hit-for-pass. The fixture origin ignores Range, so a 200 with everything is correct
        // too (§14.2: a server MAY ignore Range).
        let r = edge.get_with("/obj", &[("range", "bytes=0-99")]).await;
        match r.status {
            206 => assert_partial(&r, 0, 99),
            200 => assert_full(&r),
            other => panic!("round {round}: status {other}, {}", r.cache_status()),
        }
        assert!(!r.stored(), "round {round}: {}", r.cache_status());
        assert!(!r.is_hit(), "round {round}: {}", r.cache_status());
    }
}
