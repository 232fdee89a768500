//! RFC 9110 §9.3.2 and RFC 9111 §4: HEAD is answered from a stored GET response, and a HEAD miss
//! fills the cache for later GETs.

mod common;

use std::time::Duration;

use common::{Harness, Reply};
use http::Method;

const BODY: &str = "the quick brown fox jumps over the lazy dog";

#[tokio::test]
async fn head_is_served_from_a_cached_get() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok(BODY)
            .header("cache-control", "max-age=60")
            .header("content-type", "text/plain")
            .header("etag", "\"v1\""),
    );
    let edge = h.edge().await;

    let get = edge.get("/a").await;
    assert!(get.stored(), "{}", get.cache_status());
    assert_eq!(get.text(), BODY);
    h.clock.advance(Duration::from_secs(10));

    let head = edge.head("/a").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.cache_status(), "edge; hit; ttl=50; detail=memory");
    assert_eq!(
        head.header("content-length"),
        Some(BODY.len().to_string().as_str())
    );
    assert_eq!(head.header("content-type"), Some("text/plain"));
    assert_eq!(head.header("etag"), Some("\"v1\""));
    assert_eq!(head.age(), Some(10));
    assert!(head.body.is_empty(), "HEAD response had a body");
    assert_eq!(h.origin.hits("/a"), 1);
}

#[tokio::test]
async fn head_miss_fetches_get_and_stores_it_for_later_gets() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok(BODY)
            .header("cache-control", "max-age=60")
            .header("content-type", "text/plain")
            .header("etag", "\"v1\""),
    );
    let edge = h.edge().await;

    let head = edge.head("/a").await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.cache_status(),
        "edge; fwd=uri-miss; fwd-status=200; stored; ttl=60"
    );
    assert_eq!(
        head.header("content-length"),
        Some(BODY.len().to_string().as_str())
    );
    assert_eq!(head.header("content-type"), Some("text/plain"));
    assert_eq!(head.header("etag"), Some("\"v1\""));
    assert!(head.body.is_empty(), "HEAD response had a body");
    assert_eq!(h.origin.hits("/a"), 1);
    assert_eq!(h.origin.last("/a").unwrap().method, Method::GET);

    h.clock.advance(Duration::from_secs(5));
    let get = edge.get("/a").await;
    assert_eq!(get.status, 200);
    assert_eq!(get.cache_status(), "edge; hit; ttl=55; detail=memory");
    assert_eq!(get.body.as_ref(), BODY.as_bytes());
    assert_eq!(get.age(), Some(5));
    assert_eq!(h.origin.hits("/a"), 1);

    let head_again = edge.head("/a").await;
    assert!(head_again.is_hit(), "{}", head_again.cache_status());
    assert!(head_again.body.is_empty());
    assert_eq!(h.origin.hits("/a"), 1);
}

#[tokio::test]
async fn head_miss_stores_a_large_body_byte_identical() {
    // Many chunks: the background read of a HEAD miss must store every byte.
    let h = Harness::new().await;
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    h.origin.reply(
        "/big",
        Reply::ok(body.clone()).header("cache-control", "max-age=60"),
    );
    let edge = h.edge().await;

    let head = edge.head("/big").await;
    assert!(head.stored(), "{}", head.cache_status());
    assert_eq!(head.header("content-length"), Some("300000"));
    assert!(head.body.is_empty());

    let get = edge.get("/big").await;
    assert!(get.is_hit(), "{}", get.cache_status());
    assert_eq!(get.body.len(), body.len());
    assert!(get.body.as_ref() == body.as_slice(), "body differs");
    assert_eq!(h.origin.hits("/big"), 1);
}

#[tokio::test]
async fn head_for_an_uncacheable_resource_reaches_the_origin_each_time() {
    let h = Harness::new().await;
    h.origin
        .reply("/a", Reply::ok(BODY).header("cache-control", "no-store"));
    let edge = h.edge().await;

    for expected_hits in 1..=3 {
        let head = edge.head("/a").await;
        assert_eq!(head.status, 200);
        assert!(!head.is_hit(), "{}", head.cache_status());
        assert_eq!(head.param("detail"), Some("no-store"));
        assert!(head.body.is_empty());
        assert_eq!(h.origin.hits("/a"), expected_hits);
    }
}

#[tokio::test]
async fn head_miss_of_an_empty_body_is_stored() {
    let h = Harness::new().await;
    h.origin.reply(
        "/empty",
        Reply::ok("").header("cache-control", "max-age=60"),
    );
    let edge = h.edge().await;

    let head = edge.head("/empty").await;
    assert!(head.stored(), "{}", head.cache_status());
    let get = edge.get("/empty").await;
    assert!(get.is_hit(), "{}", get.cache_status());
    assert!(get.body.is_empty());
    assert_eq!(h.origin.hits("/empty"), 1);
}
