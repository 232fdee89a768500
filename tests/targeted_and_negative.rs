//! RFC 9213 targeted fields (CDN-Cache-Control, and Surrogate-Control) take precedence over
//! Cache-Control for edge; negative caching only as RFC 9111 allows unless the operator says.

mod common;

use std::time::Duration;

use common::{Harness, Reply, http_date, start_time};

#[tokio::test]
async fn cdn_cache_control_governs_edge_and_is_forwarded() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "max-age=120"),
    );
    let edge = h.edge().await;
    let miss = edge.get("/a").await;
    assert_eq!(miss.param("ttl"), Some("120"), "{}", miss.cache_status());
    assert_eq!(
        miss.header("cdn-cache-control"),
        Some("max-age=120"),
        "passed on for CDNs downstream"
    );
    assert_eq!(
        miss.header("cache-control"),
        Some("no-store"),
        "browsers still get the origin's word"
    );
    let hit = edge.get("/a").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(h.origin.hits("/a"), 1);
}

#[tokio::test]
async fn cdn_cache_control_can_forbid_what_cache_control_allows() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("cache-control", "max-age=600")
            .header("cdn-cache-control", "no-store"),
    );
    let edge = h.edge().await;
    assert_eq!(edge.get("/a").await.param("detail"), Some("no-store"));
    edge.get("/a").await;
    assert_eq!(h.origin.hits("/a"), 2);
}

#[tokio::test]
async fn a_targeted_field_makes_edge_ignore_expires() {
    let h = Harness::new().await;
    let expires = http_date(start_time() + Duration::from_secs(3600));
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("expires", &expires)
            .header("cdn-cache-control", "max-age=30"),
    );
    let edge = h.edge().await;
    assert_eq!(edge.get("/a").await.param("ttl"), Some("30"));
}

#[tokio::test]
async fn an_empty_targeted_field_is_ignored() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("cache-control", "max-age=60")
            .header("cdn-cache-control", ""),
    );
    let edge = h.edge().await;
    assert_eq!(edge.get("/a").await.param("ttl"), Some("60"));
}

/// RFC 9213 §2.1: a targeted field that is not a valid Structured Field Dictionary, or whose
/// `max-age` is not an Integer, is ignored; here that leaves the origin's `no-store` in force.
#[tokio::test]
async fn a_malformed_targeted_field_is_ignored_for_cache_control() {
    for (path, value) in [
        ("/garbage", "max-age=10000, &&&&&"),
        ("/string", "max-age=\"10000\""),
        ("/decimal", "max-age=10000.5"),
        ("/space", "max-age =10000"),
        ("/negative", "max-age=-1"),
    ] {
        let h = Harness::new().await;
        h.origin.reply(
            path,
            Reply::ok("a")
                .header("cache-control", "no-store")
                .header("cdn-cache-control", value),
        );
        let edge = h.edge().await;
        let first = edge.get(path).await;
        assert_eq!(
            first.param("detail"),
            Some("no-store"),
            "{value}: {}",
            first.cache_status()
        );
        let second = edge.get(path).await;
        assert!(!second.is_hit(), "{value}: {}", second.cache_status());
        assert_eq!(h.origin.hits(path), 2, "{value}");
    }
}

/// The same field, valid, spread over two lines: one dictionary.
#[tokio::test]
async fn a_targeted_field_over_two_lines_is_one_dictionary() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "public")
            .header("cdn-cache-control", "max-age=90"),
    );
    let edge = h.edge().await;
    assert_eq!(edge.get("/a").await.param("ttl"), Some("90"));
    assert!(edge.get("/a").await.is_hit());
    assert_eq!(h.origin.hits("/a"), 1);
}

#[tokio::test]
async fn surrogate_control_wins_and_is_not_forwarded() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("cache-control", "max-age=10")
            .header("cdn-cache-control", "max-age=20")
            .header("surrogate-control", "max-age=300"),
    );
    let edge = h.edge().await;
    let miss = edge.get("/a").await;
    assert_eq!(miss.param("ttl"), Some("300"));
    assert_eq!(miss.header("surrogate-control"), None);
    let hit = edge.get("/a").await;
    assert!(hit.is_hit());
    assert_eq!(hit.header("surrogate-control"), None);
    // The stored copy keeps it, so freshness is the same after a restart.
    let edge = edge.restart().await;
    assert_eq!(edge.get("/a").await.param("ttl"), Some("300"));
}

#[tokio::test]
async fn a_404_without_freshness_or_validator_is_not_stored_by_default() {
    let h = Harness::new().await;
    h.origin
        .reply("/missing", Reply::ok("not here").status(404));
    let edge = h.edge().await;
    let first = edge.get("/missing").await;
    assert_eq!(first.status, 404);
    assert_eq!(first.param("detail"), Some("no-freshness"));
    edge.get("/missing").await;
    assert_eq!(h.origin.hits("/missing"), 2);
}

#[tokio::test]
async fn a_500_is_stored_only_with_explicit_freshness() {
    let h = Harness::new().await;
    h.origin
        .reply("/e", Reply::ok("oops").status(500).header("etag", "\"e\""));
    let edge = h.edge().await;
    assert_eq!(edge.get("/e").await.param("detail"), Some("status"));
    h.origin.reply(
        "/e",
        Reply::ok("oops")
            .status(500)
            .header("cache-control", "max-age=5"),
    );
    edge.get("/e").await;
    let hit = edge.get("/e").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.status, 500);
}

#[tokio::test]
async fn operator_negative_ttl_stores_404_and_410_for_that_long() {
    let h = Harness::new().await;
    h.origin
        .reply("/missing", Reply::ok("not here").status(404));
    h.origin.reply("/gone", Reply::ok("gone").status(410));
    h.origin.reply(
        "/explicit",
        Reply::ok("not here")
            .status(404)
            .header("cache-control", "max-age=5"),
    );
    let edge = h
        .edge_with(|c| c.cache.heuristic.negative_ttl.0 = Duration::from_secs(30))
        .await;
    for path in ["/missing", "/gone"] {
        assert_eq!(edge.get(path).await.param("ttl"), Some("30"), "{path}");
        assert!(edge.get(path).await.is_hit(), "{path}");
    }
    // Explicit freshness still wins.
    assert_eq!(edge.get("/explicit").await.param("ttl"), Some("5"));
    h.clock.advance(Duration::from_secs(30));
    assert!(!edge.get("/missing").await.is_hit());
    assert_eq!(h.origin.hits("/missing"), 2);
}
