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

/// `cache.heuristic.default_ttl`: a response the origin says nothing of caching (nginx's
/// `proxy_cache_valid`, Varnish's `default_ttl`) is fresh for that long, where RFC 9111 allows a
/// heuristic; explicit freshness and `Last-Modified` still decide where present.
#[tokio::test]
async fn operator_default_ttl_stores_responses_without_caching_headers_for_that_long() {
    let h = Harness::new().await;
    h.origin.reply("/plain", Reply::ok("plain"));
    h.origin.reply("/moved", Reply::ok("moved").status(301));
    h.origin.reply("/found", Reply::ok("found").status(302));
    h.origin.reply(
        "/explicit",
        Reply::ok("e").header("cache-control", "max-age=5"),
    );
    h.origin.reply(
        "/private",
        Reply::ok("p").header("cache-control", "private"),
    );
    h.origin.reply(
        "/modified",
        Reply::ok("m").header(
            "last-modified",
            &http_date(start_time() - Duration::from_secs(1000)),
        ),
    );
    let edge = h
        .edge_with(|c| c.cache.heuristic.default_ttl.0 = Duration::from_secs(60))
        .await;
    for path in ["/plain", "/moved"] {
        let miss = edge.get(path).await;
        assert!(miss.stored(), "{path}: {}", miss.cache_status());
        assert_eq!(miss.param("ttl"), Some("60"), "{path}");
        assert!(edge.get(path).await.is_hit(), "{path}");
    }
    // 302 is not heuristically cacheable (RFC 9110 §15.4.3); explicit freshness, private and
    // the Last-Modified heuristic (10% of 1000 s) are as before.
    assert_eq!(edge.get("/found").await.param("detail"), Some("status"));
    assert_eq!(edge.get("/explicit").await.param("ttl"), Some("5"));
    assert_eq!(edge.get("/private").await.param("detail"), Some("private"));
    assert_eq!(edge.get("/modified").await.param("ttl"), Some("100"));

    h.clock.advance(Duration::from_secs(60));
    let refetched = edge.get("/plain").await;
    assert_eq!(
        refetched.fwd(),
        Some("stale"),
        "{}",
        refetched.cache_status()
    );
    assert_eq!(h.origin.hits("/plain"), 2);
}

/// Off (0s, the default), such a response is not stored, as RFC 9111 gives no freshness to it.
#[tokio::test]
async fn without_default_ttl_a_response_without_caching_headers_is_not_stored() {
    let h = Harness::new().await;
    h.origin.reply("/plain", Reply::ok("plain"));
    let edge = h.edge().await;
    let first = edge.get("/plain").await;
    assert_eq!(
        first.param("detail"),
        Some("no-freshness"),
        "{}",
        first.cache_status()
    );
    assert!(!edge.get("/plain").await.is_hit());
    assert_eq!(h.origin.hits("/plain"), 2);
}

/// The default is the operator's guess, not the origin's word: an answer to a request with
/// `Cookie` may be that client's own page, so it is not stored on the default (as Varnish's
/// built-in rules pass such requests), and the next client without cookies stores it.
#[tokio::test]
async fn default_ttl_does_not_store_an_answer_to_a_request_with_cookies() {
    let h = Harness::new().await;
    h.origin.reply("/page", Reply::ok("page"));
    let edge = h
        .edge_with(|c| c.cache.heuristic.default_ttl.0 = Duration::from_secs(60))
        .await;
    let with_cookie = edge.get_with("/page", &[("cookie", "session=alice")]).await;
    assert_eq!(
        with_cookie.param("detail"),
        Some("cookie"),
        "{}",
        with_cookie.cache_status()
    );
    let without = edge.get("/page").await;
    assert!(without.stored(), "{}", without.cache_status());
    assert!(edge.get("/page").await.is_hit());
    assert_eq!(h.origin.hits("/page"), 2);
}

/// Nor does it reach a response with a validator: one without freshness is stored to be
/// revalidated on every use (perhaps from a request with cookies), and freshness is worked out
/// again when a record is read from disk, so the default would turn such a page fresh for
/// everyone after a restart.
#[tokio::test]
async fn default_ttl_does_not_make_a_response_with_a_validator_fresh_even_after_a_restart() {
    let h = Harness::new().await;
    h.origin
        .reply("/page", Reply::ok("alice's page").header("etag", "\"a\""));
    let edge = h.edge().await;
    let stored = edge.get_with("/page", &[("cookie", "session=alice")]).await;
    assert!(
        stored.stored(),
        "stored for its validator: {}",
        stored.cache_status()
    );
    let dir = edge.stop().await;
    let mut config = common::base_config(&h.origin.url(), dir.path());
    config.cache.heuristic.default_ttl.0 = Duration::from_secs(60);
    let edge = common::TestEdge::start(config, h.clock.clone(), dir).await;
    let other = edge.get("/page").await;
    assert_eq!(
        other.fwd(),
        Some("stale"),
        "revalidated: {}",
        other.cache_status()
    );
    assert_eq!(h.origin.hits("/page"), 2);
}

/// An answer to a request with `Authorization` may be stored only because `must-revalidate`
/// (or `public`, `s-maxage`) allows it (RFC 9111 §3.5); with only `must-revalidate`, the origin
/// gave no freshness: the default would make that user's page fresh for everyone else, as it
/// would a page asked for with cookies.
#[tokio::test]
async fn default_ttl_does_not_store_an_authorized_answer_that_is_only_must_revalidate() {
    let h = Harness::new().await;
    h.origin.reply(
        "/account",
        Reply::ok("alice's account").header("cache-control", "must-revalidate"),
    );
    let edge = h
        .edge_with(|c| c.cache.heuristic.default_ttl.0 = Duration::from_secs(60))
        .await;
    let alice = edge
        .get_with("/account", &[("authorization", "Bearer alice")])
        .await;
    assert!(!alice.stored(), "{}", alice.cache_status());
    h.origin.reply(
        "/account",
        Reply::ok("sign in").header("cache-control", "must-revalidate"),
    );
    let anonymous = edge.get("/account").await;
    assert_eq!(anonymous.text(), "sign in", "{}", anonymous.cache_status());
    assert_eq!(h.origin.hits("/account"), 2);
}

/// A 429, 500, 502, 503 or 504 says the origin is failing or shedding load, not what the
/// resource is: `public` alone (which some servers add to every answer) does not make the
/// operator's default keep it, or one error would be served to everyone for `default_ttl` after
/// the origin recovered.
#[tokio::test]
async fn default_ttl_does_not_keep_an_origin_error_marked_public() {
    let h = Harness::new().await;
    let edge = h
        .edge_with(|c| c.cache.heuristic.default_ttl.0 = Duration::from_secs(600))
        .await;
    for (path, status) in [
        ("/a", 429),
        ("/b", 500),
        ("/c", 502),
        ("/d", 503),
        ("/e", 504),
    ] {
        h.origin.reply(
            path,
            Reply::ok("failing")
                .status(status)
                .header("cache-control", "public"),
        );
        let error = edge.get(path).await;
        assert_eq!(error.status, status);
        assert!(!error.stored(), "{path}: {}", error.cache_status());
        h.origin.reply(path, Reply::ok("recovered"));
        let after = edge.get(path).await;
        assert_eq!(
            (after.status, after.text()),
            (200, "recovered"),
            "{path}: {}",
            after.cache_status()
        );
    }
}
