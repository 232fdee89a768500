//! RFC 9110 §13: conditional GET and HEAD (If-None-Match, If-Modified-Since) answered by edge
//! itself, from what it stores or from the whole representation a fill brings.

mod common;

use std::time::Duration;

use common::{Harness, Reply, http_date, start_time};
use http::Method;

const BODY: &str = "the representation, version one";

/// A fresh, storable 200 with `ETag: "v1"` and a Last-Modified an hour before the clock's start.
fn tagged(etag: &str) -> Reply {
    Reply::ok(BODY)
        .header("cache-control", "max-age=60")
        .header("content-type", "text/plain")
        .header("etag", etag)
        .header(
            "last-modified",
            &http_date(start_time() - Duration::from_secs(3600)),
        )
}

/// Asserts a 304 as RFC 9110 §15.4.5 describes it: no content, the validator and caching fields
/// the 200 would have had, and no fields describing content.
fn assert_not_modified(r: &common::Resp, etag: &str) {
    assert_eq!(r.status, 304, "{}", r.cache_status());
    assert!(r.body.is_empty(), "304 carried a body: {:?}", r.body);
    assert_eq!(r.header("etag"), Some(etag));
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
    assert!(r.header("date").is_some(), "304 without Date");
    assert_eq!(r.header("content-type"), None, "304 with Content-Type");
    assert_eq!(r.header("content-length"), None, "304 with Content-Length");
}

/// Stores `/a` (one origin request) and returns the edge.
async fn stored(h: &Harness, etag: &str) -> common::TestEdge {
    h.origin.reply("/a", tagged(etag));
    let edge = h.edge().await;
    let miss = edge.get("/a").await;
    assert_eq!(miss.status, 200);
    assert!(miss.stored(), "{}", miss.cache_status());
    edge
}

#[tokio::test]
async fn matching_if_none_match_on_a_hit_is_answered_304_with_validators_and_no_content() {
    let h = Harness::new().await;
    let edge = stored(&h, "\"v1\"").await;
    h.clock.advance(Duration::from_secs(10));

    let r = edge.get_with("/a", &[("if-none-match", "\"v1\"")]).await;
    assert_not_modified(&r, "\"v1\"");
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(r.cache_status(), "edge; hit; ttl=50; detail=memory");
    assert_eq!(r.age(), Some(10));
    assert_eq!(
        r.header("last-modified"),
        Some(http_date(start_time() - Duration::from_secs(3600)).as_str())
    );
    assert_eq!(h.origin.hits("/a"), 1);
}

#[tokio::test]
async fn weak_if_none_match_matches_a_strong_etag() {
    let h = Harness::new().await;
    let edge = stored(&h, "\"v1\"").await;
    let r = edge.get_with("/a", &[("if-none-match", "W/\"v1\"")]).await;
    assert_not_modified(&r, "\"v1\"");
    assert!(r.is_hit(), "{}", r.cache_status());
}

#[tokio::test]
async fn strong_if_none_match_matches_a_weak_etag() {
    let h = Harness::new().await;
    let edge = stored(&h, "W/\"v1\"").await;
    let r = edge.get_with("/a", &[("if-none-match", "\"v1\"")]).await;
    assert_not_modified(&r, "W/\"v1\"");
    assert!(r.is_hit(), "{}", r.cache_status());
}

#[tokio::test]
async fn if_none_match_list_containing_the_etag_matches() {
    let h = Harness::new().await;
    let edge = stored(&h, "\"v1\"").await;
    let r = edge
        .get_with("/a", &[("if-none-match", "\"x\", \"v1\"")])
        .await;
    assert_not_modified(&r, "\"v1\"");
}

#[tokio::test]
async fn if_none_match_star_matches_a_stored_representation() {
    let h = Harness::new().await;
    let edge = stored(&h, "\"v1\"").await;
    let r = edge.get_with("/a", &[("if-none-match", "*")]).await;
    assert_not_modified(&r, "\"v1\"");
}

/// Preconditions apply to any 2xx (RFC 9110 §13.2.1, RFC 9111 §4.3.2), not to other statuses.
#[tokio::test]
async fn matching_if_none_match_on_a_stored_203_or_204_is_304_and_on_a_404_is_ignored() {
    let h = Harness::new().await;
    for (path, status) in [("/203", 203), ("/204", 204), ("/404", 404)] {
        h.origin.reply(path, tagged("\"v1\"").status(status));
    }
    let edge = h.edge().await;
    for (path, status) in [("/203", 203), ("/204", 204), ("/404", 404)] {
        let miss = edge.get(path).await;
        assert_eq!(miss.status, status);
        assert!(miss.stored(), "{path}: {}", miss.cache_status());
        let r = edge.get_with(path, &[("if-none-match", "\"v1\"")]).await;
        assert!(r.is_hit(), "{path}: {}", r.cache_status());
        if status == 404 {
            assert_eq!(r.status, 404, "{path}");
        } else {
            assert_not_modified(&r, "\"v1\"");
        }
        assert_eq!(h.origin.hits(path), 1, "{path}");
    }
}

#[tokio::test]
async fn non_matching_if_none_match_gets_the_full_200() {
    let h = Harness::new().await;
    let edge = stored(&h, "\"v1\"").await;
    let r = edge
        .get_with("/a", &[("if-none-match", "\"v2\", W/\"x\"")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), BODY);
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(
        r.header("content-length"),
        Some(BODY.len().to_string().as_str())
    );
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(h.origin.hits("/a"), 1);
}

#[tokio::test]
async fn if_modified_since_equal_to_last_modified_is_304() {
    let h = Harness::new().await;
    let edge = stored(&h, "\"v1\"").await;
    let since = http_date(start_time() - Duration::from_secs(3600));
    let r = edge.get_with("/a", &[("if-modified-since", &since)]).await;
    assert_not_modified(&r, "\"v1\"");
    assert!(r.is_hit(), "{}", r.cache_status());
}

#[tokio::test]
async fn if_modified_since_later_than_last_modified_is_304() {
    let h = Harness::new().await;
    let edge = stored(&h, "\"v1\"").await;
    let since = http_date(start_time() - Duration::from_secs(60));
    let r = edge.get_with("/a", &[("if-modified-since", &since)]).await;
    assert_not_modified(&r, "\"v1\"");
}

#[tokio::test]
async fn if_modified_since_earlier_than_last_modified_gets_the_full_200() {
    let h = Harness::new().await;
    let edge = stored(&h, "\"v1\"").await;
    let since = http_date(start_time() - Duration::from_secs(7200));
    let r = edge.get_with("/a", &[("if-modified-since", &since)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), BODY);
    assert!(r.is_hit(), "{}", r.cache_status());
}

#[tokio::test]
async fn if_modified_since_is_ignored_when_if_none_match_does_not_match() {
    let h = Harness::new().await;
    let edge = stored(&h, "\"v1\"").await;
    // On its own this date would give a 304 (see above); §13.1.3 says If-None-Match decides.
    let since = http_date(start_time());
    let r = edge
        .get_with(
            "/a",
            &[("if-none-match", "\"v2\""), ("if-modified-since", &since)],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), BODY);
}

#[tokio::test]
async fn head_with_matching_if_none_match_is_304() {
    let h = Harness::new().await;
    let edge = stored(&h, "\"v1\"").await;
    let r = edge
        .send(Method::HEAD, "/a", &[("if-none-match", "\"v1\"")])
        .await;
    assert_not_modified(&r, "\"v1\"");
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(h.origin.hits("/a"), 1);
}

#[tokio::test]
async fn conditional_miss_fetches_unconditionally_stores_and_answers_304() {
    let h = Harness::new().await;
    h.origin.reply("/a", tagged("\"v1\""));
    let edge = h.edge().await;
    let since = http_date(start_time());

    let r = edge
        .get_with(
            "/a",
            &[("if-none-match", "\"v1\""), ("if-modified-since", &since)],
        )
        .await;
    let sent = h.origin.last("/a").expect("the miss reached the origin");
    assert!(
        !sent.headers.contains_key("if-none-match"),
        "the client's If-None-Match was forwarded: {:?}",
        sent.headers
    );
    assert!(
        !sent.headers.contains_key("if-modified-since"),
        "the client's If-Modified-Since was forwarded: {:?}",
        sent.headers
    );
    assert_not_modified(&r, "\"v1\"");
    assert_eq!(r.fwd(), Some("uri-miss"), "{}", r.cache_status());
    assert!(r.stored(), "{}", r.cache_status());

    // The 304 was edge's; what it stored is the origin's full 200.
    let hit = edge.get("/a").await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.text(), BODY);
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(h.origin.hits("/a"), 1);
}

#[tokio::test]
async fn conditional_request_for_an_unstorable_response_gets_a_correct_answer() {
    let h = Harness::new().await;
    h.origin.reply(
        "/private",
        Reply::ok(BODY)
            .header("cache-control", "no-store")
            .header("etag", "\"v1\""),
    );
    let edge = h.edge().await;
    // The first request leads the fill that finds the response unstorable (its private
    // response); the second finds the key marked hit-for-pass.
    for round in 1..=2 {
        let r = edge
            .get_with("/private", &[("if-none-match", "\"v1\"")])
            .await;
        match r.status {
            304 => assert!(r.body.is_empty(), "round {round}: 304 carried a body"),
            200 => assert_eq!(r.text(), BODY, "round {round}"),
            other => panic!("round {round}: status {other}, {}", r.cache_status()),
        }
        assert_eq!(r.header("etag"), Some("\"v1\""), "round {round}");
        assert!(!r.is_hit(), "round {round}: {}", r.cache_status());
        assert_eq!(h.origin.hits("/private"), round);
    }
}
