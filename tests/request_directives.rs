//! RFC 9111 §5.2.1: request Cache-Control directives (no-cache, max-age, min-fresh,
//! only-if-cached, max-stale) and the request directives edge ignores (§5.2.3, §5.4).

mod common;

use std::time::Duration;

use common::{Harness, Reply};

/// An edge with `/a` stored at time zero as `body`, with the response `Cache-Control` given.
async fn stored(h: &Harness, cache_control: &str, body: &str) -> common::TestEdge {
    h.origin.reply(
        "/a",
        Reply::ok(body.to_owned()).header("cache-control", cache_control),
    );
    let edge = h.edge().await;
    let first = edge.get("/a").await;
    assert!(first.stored(), "{}", first.cache_status());
    assert_eq!(h.origin.hits("/a"), 1);
    edge
}

#[tokio::test]
async fn request_no_cache_goes_to_origin_and_replaces_the_stored_response() {
    let h = Harness::new().await;
    let edge = stored(&h, "max-age=60", "v1").await;
    h.clock.advance(Duration::from_secs(10));
    h.origin
        .reply("/a", Reply::ok("v2").header("cache-control", "max-age=60"));

    let forced = edge.get_with("/a", &[("cache-control", "no-cache")]).await;
    assert_eq!(forced.text(), "v2");
    assert_eq!(
        forced.cache_status(),
        "edge; fwd=request; fwd-status=200; stored; ttl=60"
    );
    assert_eq!(h.origin.hits("/a"), 2);

    let after = edge.get("/a").await;
    assert!(after.is_hit(), "{}", after.cache_status());
    assert_eq!(after.text(), "v2");
    assert_eq!(after.age(), Some(0));
    assert_eq!(h.origin.hits("/a"), 2);
}

/// `cache.client_refresh: ignore` (as nginx, Varnish and most CDNs): a browser's reload
/// (`max-age=0`), shift-reload (`no-cache`) or a `min-fresh` no longer sends a request for a
/// fresh stored response to the origin; what shortens nothing (`max-stale`, `only-if-cached`)
/// and the request's `no-store` still count, and a stale response is still validated.
#[tokio::test]
async fn client_refresh_ignore_answers_reloads_from_the_cache() {
    let h = Harness::new().await;
    h.origin
        .reply("/a", Reply::ok("v1").header("cache-control", "max-age=60"));
    let edge = h
        .edge_with(|c| c.cache.client_refresh = edge::config::ClientRefresh::Ignore)
        .await;
    assert!(edge.get("/a").await.stored());
    h.clock.advance(Duration::from_secs(10));
    for directives in [
        "no-cache",
        "max-age=0",
        "min-fresh=3600",
        "no-cache, max-age=0",
    ] {
        let reload = edge.get_with("/a", &[("cache-control", directives)]).await;
        assert!(reload.is_hit(), "{directives}: {}", reload.cache_status());
        assert_eq!(
            (reload.text(), reload.age()),
            ("v1", Some(10)),
            "{directives}"
        );
    }
    assert_eq!(h.origin.hits("/a"), 1);
    h.origin
        .reply("/b", Reply::ok("b").header("cache-control", "max-age=60"));
    let not_stored = edge.get_with("/b", &[("cache-control", "no-store")]).await;
    assert!(!not_stored.stored(), "{}", not_stored.cache_status());
    // Stale: validated all the same, and max-stale still takes it as it is.
    h.clock.advance(Duration::from_secs(60));
    let stale_ok = edge.get_with("/a", &[("cache-control", "max-stale")]).await;
    assert!(stale_ok.is_hit(), "{}", stale_ok.cache_status());
    assert_eq!(h.origin.hits("/a"), 1);
    let refreshed = edge.get_with("/a", &[("cache-control", "no-cache")]).await;
    assert_eq!(
        refreshed.fwd(),
        Some("stale"),
        "{}",
        refreshed.cache_status()
    );
    assert_eq!(h.origin.hits("/a"), 2);
}

#[tokio::test]
async fn request_max_age_rejects_an_older_entry_and_accepts_a_younger_one() {
    let h = Harness::new().await;
    let edge = stored(&h, "max-age=60", "a").await;
    h.clock.advance(Duration::from_secs(10));

    let young_enough = edge
        .get_with("/a", &[("cache-control", "max-age=20")])
        .await;
    assert!(young_enough.is_hit(), "{}", young_enough.cache_status());
    assert_eq!(young_enough.age(), Some(10));
    assert_eq!(h.origin.hits("/a"), 1);

    let too_old = edge.get_with("/a", &[("cache-control", "max-age=5")]).await;
    assert!(!too_old.is_hit(), "{}", too_old.cache_status());
    // The entry is still fresh: the request's directive is why it was not used.
    assert_eq!(too_old.fwd(), Some("request"));
    assert_eq!(too_old.text(), "a");
    assert_eq!(h.origin.hits("/a"), 2);
}

#[tokio::test]
async fn request_min_fresh_rejects_an_entry_with_too_little_freshness_left() {
    let h = Harness::new().await;
    let edge = stored(&h, "max-age=60", "a").await;
    h.clock.advance(Duration::from_secs(10));

    let enough = edge
        .get_with("/a", &[("cache-control", "min-fresh=30")])
        .await;
    assert!(enough.is_hit(), "{}", enough.cache_status());
    assert_eq!(enough.param("ttl"), Some("50"));
    assert_eq!(h.origin.hits("/a"), 1);

    let too_little = edge
        .get_with("/a", &[("cache-control", "min-fresh=55")])
        .await;
    assert!(!too_little.is_hit(), "{}", too_little.cache_status());
    assert_eq!(too_little.fwd(), Some("request"));
    assert_eq!(h.origin.hits("/a"), 2);
}

#[tokio::test]
async fn only_if_cached_miss_is_a_504_without_contacting_the_origin() {
    let h = Harness::new().await;
    h.origin
        .reply("/a", Reply::ok("a").header("cache-control", "max-age=60"));
    let edge = h.edge().await;

    let miss = edge
        .get_with("/a", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(miss.status, 504);
    assert_eq!(miss.cache_status(), "edge; detail=only-if-cached");
    assert_eq!(h.origin.hits("/a"), 0);
    assert!(h.origin.received().is_empty());
}

#[tokio::test]
async fn only_if_cached_is_answered_from_a_fresh_entry() {
    let h = Harness::new().await;
    let edge = stored(&h, "max-age=60", "cached").await;
    h.clock.advance(Duration::from_secs(5));

    let hit = edge
        .get_with("/a", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.text(), "cached");
    assert_eq!(hit.cache_status(), "edge; hit; ttl=55; detail=memory");
    assert_eq!(h.origin.hits("/a"), 1);
}

#[tokio::test]
async fn only_if_cached_with_only_a_stale_entry_is_a_504_without_contacting_the_origin() {
    let h = Harness::new().await;
    let edge = stored(&h, "max-age=10", "old").await;
    h.clock.advance(Duration::from_secs(15));

    let refused = edge
        .get_with("/a", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(refused.status, 504);
    assert_eq!(h.origin.hits("/a"), 1);
}

#[tokio::test]
async fn max_stale_serves_a_stale_entry() {
    let h = Harness::new().await;
    let edge = stored(&h, "max-age=10", "old").await;
    h.clock.advance(Duration::from_secs(15));

    let stale = edge.get_with("/a", &[("cache-control", "max-stale")]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.text(), "old");
    assert_eq!(stale.cache_status(), "edge; hit; ttl=-5; detail=memory");
    assert_eq!(stale.age(), Some(15));
    assert_eq!(h.origin.hits("/a"), 1);
}

/// `max-stale` must not revive a stored response whose directives forbid serving it stale.
async fn max_stale_is_refused_for(cache_control: &str) {
    let h = Harness::new().await;
    let edge = stored(&h, cache_control, "old").await;
    h.clock.advance(Duration::from_secs(15));
    h.origin.reply(
        "/a",
        Reply::ok("new").header("cache-control", cache_control),
    );

    let response = edge.get_with("/a", &[("cache-control", "max-stale")]).await;
    assert!(
        !response.is_hit(),
        "{cache_control}: {}",
        response.cache_status()
    );
    assert_eq!(response.fwd(), Some("stale"), "{cache_control}");
    assert_eq!(response.text(), "new", "{cache_control}");
    assert_eq!(h.origin.hits("/a"), 2, "{cache_control}");
}

#[tokio::test]
async fn max_stale_never_serves_a_must_revalidate_response_stale() {
    max_stale_is_refused_for("max-age=10, must-revalidate").await;
}

#[tokio::test]
async fn max_stale_never_serves_a_proxy_revalidate_response_stale() {
    max_stale_is_refused_for("max-age=10, proxy-revalidate").await;
}

#[tokio::test]
async fn max_stale_never_serves_an_s_maxage_response_stale() {
    max_stale_is_refused_for("s-maxage=10").await;
}

#[tokio::test]
async fn max_stale_never_serves_a_no_cache_response_without_the_origin() {
    max_stale_is_refused_for("no-cache, max-age=10").await;
}

/// A response that was never fresh (stored only for its validator: `max-age=0`, or no freshness
/// at all beside an `ETag`, as frameworks send for personalised pages) answered the cookies of
/// the request it was fetched for: a client's `max-stale` does not hand it to another client.
#[tokio::test]
async fn max_stale_never_serves_a_response_that_was_never_fresh() {
    for (path, cache_control) in [("/zero", Some("max-age=0")), ("/etag-only", None)] {
        let h = Harness::new().await;
        let mut reply = Reply::ok("your account").header("etag", "\"v1\"");
        if let Some(cache_control) = cache_control {
            reply = reply.header("cache-control", cache_control);
        }
        h.origin.reply(path, reply);
        let edge = h.edge().await;
        let first = edge.get_with(path, &[("cookie", "session=first")]).await;
        assert!(first.stored(), "{path}: {}", first.cache_status());
        h.clock.advance(Duration::from_secs(5));

        let other = edge
            .get_with(
                path,
                &[("cookie", "session=second"), ("cache-control", "max-stale")],
            )
            .await;
        assert!(!other.is_hit(), "{path}: {}", other.cache_status());
        assert_eq!(other.fwd(), Some("stale"), "{path}");
        assert_eq!(h.origin.hits(path), 2, "{path}");
        let last = h.origin.last(path).unwrap();
        assert_eq!(last.headers.get("cookie").unwrap(), "session=second");
    }
}

#[tokio::test]
async fn max_stale_with_an_argument_bounds_how_stale() {
    let h = Harness::new().await;
    let edge = stored(&h, "max-age=10", "old").await;
    h.clock.advance(Duration::from_secs(15));

    // Stale by 5 s.
    let within = edge
        .get_with("/a", &[("cache-control", "max-stale=5")])
        .await;
    assert!(within.is_hit(), "{}", within.cache_status());
    assert_eq!(within.param("ttl"), Some("-5"));
    assert_eq!(h.origin.hits("/a"), 1);

    let generous = edge
        .get_with("/a", &[("cache-control", "max-stale=100")])
        .await;
    assert!(generous.is_hit(), "{}", generous.cache_status());
    assert_eq!(h.origin.hits("/a"), 1);

    let beyond = edge
        .get_with("/a", &[("cache-control", "max-stale=4")])
        .await;
    assert!(!beyond.is_hit(), "{}", beyond.cache_status());
    assert_eq!(beyond.fwd(), Some("stale"));
    assert_eq!(h.origin.hits("/a"), 2);
}

#[tokio::test]
async fn unknown_and_malformed_request_directives_are_ignored() {
    let h = Harness::new().await;
    let edge = stored(&h, "max-age=60", "a").await;
    h.clock.advance(Duration::from_secs(10));

    let hit = edge
        .get_with("/a", &[("cache-control", "foo-bar, max-age=abc")])
        .await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.text(), "a");
    assert_eq!(hit.param("ttl"), Some("50"));
    assert_eq!(h.origin.hits("/a"), 1);
}

#[tokio::test]
async fn request_pragma_no_cache_is_ignored() {
    let h = Harness::new().await;
    let edge = stored(&h, "max-age=60", "a").await;
    h.clock.advance(Duration::from_secs(10));

    let hit = edge.get_with("/a", &[("pragma", "no-cache")]).await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.text(), "a");
    assert_eq!(h.origin.hits("/a"), 1);
}

/// A field named in `Connection` is for edge alone (RFC 9110 §7.6.1): a `Cache-Control:
/// no-store` so named still forbids storing, though it is not forwarded.
#[tokio::test]
async fn a_no_store_named_in_connection_still_forbids_storing() {
    let h = Harness::new().await;
    h.origin
        .reply("/a", Reply::ok("a").header("cache-control", "max-age=60"));
    let edge = h.edge().await;
    let first = edge
        .get_with(
            "/a",
            &[
                ("cache-control", "no-store"),
                ("connection", "Cache-Control"),
            ],
        )
        .await;
    assert!(!first.stored(), "{}", first.cache_status());
    assert!(
        h.origin
            .last("/a")
            .unwrap()
            .headers
            .get("cache-control")
            .is_none(),
        "a field named in Connection was forwarded"
    );
    assert!(!edge.get("/a").await.is_hit());
    assert_eq!(h.origin.hits("/a"), 2);
}
