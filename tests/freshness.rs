//! RFC 9111 §4.2: freshness lifetime (s-maxage > max-age > Expires > heuristic) and Age (§4.2.3).

mod common;

use std::time::Duration;

use common::{Harness, Reply, http_date, start_time};

#[tokio::test]
async fn serves_fresh_hit_without_contacting_origin() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("alpha").header("cache-control", "max-age=60"),
    );
    let edge = h.edge().await;

    let miss = edge.get("/a").await;
    assert_eq!(miss.status, 200);
    assert_eq!(miss.text(), "alpha");
    assert_eq!(
        miss.cache_status(),
        "edge; fwd=uri-miss; fwd-status=200; stored; ttl=60"
    );

    h.clock.advance(Duration::from_secs(10));
    let hit = edge.get("/a").await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.text(), "alpha");
    assert_eq!(hit.cache_status(), "edge; hit; ttl=50; detail=memory");
    assert_eq!(hit.age(), Some(10));
    assert_eq!(h.origin.hits("/a"), 1);
}

#[tokio::test]
async fn goes_to_origin_once_max_age_has_passed() {
    let h = Harness::new().await;
    h.origin
        .reply("/a", Reply::ok("v1").header("cache-control", "max-age=5"));
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(5));
    h.origin
        .reply("/a", Reply::ok("v2").header("cache-control", "max-age=5"));

    let refreshed = edge.get("/a").await;
    assert_eq!(refreshed.text(), "v2");
    assert_eq!(refreshed.fwd(), Some("stale"));
    assert_eq!(h.origin.hits("/a"), 2);
    assert!(edge.get("/a").await.is_hit());
}

#[tokio::test]
async fn s_maxage_takes_precedence_over_max_age_and_expires() {
    let h = Harness::new().await;
    let expires = http_date(start_time() + Duration::from_secs(1000));
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("cache-control", "max-age=10, s-maxage=100")
            .header("expires", &expires),
    );
    let edge = h.edge().await;
    assert_eq!(edge.get("/a").await.param("ttl"), Some("100"));
    h.clock.advance(Duration::from_secs(50));
    let hit = edge.get("/a").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.param("ttl"), Some("50"));
}

#[tokio::test]
async fn max_age_takes_precedence_over_expires() {
    let h = Harness::new().await;
    let expires = http_date(start_time() + Duration::from_secs(1000));
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("cache-control", "max-age=20")
            .header("expires", &expires),
    );
    let edge = h.edge().await;
    assert_eq!(edge.get("/a").await.param("ttl"), Some("20"));
}

#[tokio::test]
async fn expires_is_measured_from_the_origin_date() {
    let h = Harness::new().await;
    // The origin's clock is 100 s behind: Expires − Date still gives 30 s of freshness.
    let date = start_time() - Duration::from_secs(100);
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("date", &http_date(date))
            .header("expires", &http_date(date + Duration::from_secs(130))),
    );
    let edge = h.edge().await;
    let miss = edge.get("/a").await;
    assert!(miss.stored(), "{}", miss.cache_status());
    // Lifetime 130 s (Expires − Date), apparent age 100 s (response_time − Date): 30 s remain.
    assert_eq!(miss.param("ttl"), Some("30"));
}

#[tokio::test]
async fn accepts_all_three_http_date_formats() {
    let h = Harness::new().await;
    // RFC 9110 §5.6.7: IMF-fixdate, obsolete RFC 850, and asctime.
    let formats = [
        (
            "/imf",
            "Fri, 15 Jan 2027 08:00:00 GMT",
            "Fri, 15 Jan 2027 08:01:00 GMT",
        ),
        (
            "/rfc850",
            "Friday, 15-Jan-27 08:00:00 GMT",
            "Friday, 15-Jan-27 08:01:00 GMT",
        ),
        (
            "/asctime",
            "Fri Jan 15 08:00:00 2027",
            "Fri Jan 15 08:01:00 2027",
        ),
    ];
    for (path, date, expires) in formats {
        h.origin.reply(
            path,
            Reply::ok("d")
                .header("date", date)
                .header("expires", expires),
        );
    }
    let edge = h.edge().await;
    for (path, _, _) in formats {
        let miss = edge.get(path).await;
        assert!(miss.stored(), "{path}: {}", miss.cache_status());
        assert!(
            edge.get(path).await.is_hit(),
            "{path} was not served from cache"
        );
        assert_eq!(h.origin.hits(path), 1, "{path}");
    }
}

#[tokio::test]
async fn invalid_expires_means_already_expired() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("expires", "0")
            .header("etag", "\"v1\""),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    let second = edge.get("/a").await;
    assert!(!second.is_hit(), "{}", second.cache_status());
    assert_eq!(h.origin.hits("/a"), 2);
}

#[tokio::test]
async fn heuristic_freshness_is_a_tenth_of_the_time_since_last_modified() {
    let h = Harness::new().await;
    let modified = start_time() - Duration::from_secs(1000);
    h.origin.reply(
        "/a",
        Reply::ok("a").header("last-modified", &http_date(modified)),
    );
    let edge = h.edge().await;
    let miss = edge.get("/a").await;
    assert_eq!(miss.param("ttl"), Some("100"), "{}", miss.cache_status());
    h.clock.advance(Duration::from_secs(99));
    assert!(edge.get("/a").await.is_hit());
    h.clock.advance(Duration::from_secs(1));
    assert!(!edge.get("/a").await.is_hit());
    assert_eq!(h.origin.hits("/a"), 2);
}

#[tokio::test]
async fn heuristic_freshness_is_capped_and_configurable() {
    let h = Harness::new().await;
    let modified = start_time() - Duration::from_secs(10 * 365 * 24 * 3600);
    h.origin.reply(
        "/a",
        Reply::ok("a").header("last-modified", &http_date(modified)),
    );
    let edge = h
        .edge_with(|c| {
            c.cache.heuristic.fraction.0 = 0.5;
            c.cache.heuristic.max.0 = Duration::from_secs(300);
        })
        .await;
    assert_eq!(edge.get("/a").await.param("ttl"), Some("300"));
}

#[tokio::test]
async fn no_heuristic_for_statuses_that_are_not_heuristically_cacheable() {
    let h = Harness::new().await;
    let modified = http_date(start_time() - Duration::from_secs(1000));
    h.origin.reply(
        "/moved",
        Reply::ok("")
            .status(302)
            .header("location", "/x")
            .header("last-modified", &modified),
    );
    let edge = h.edge().await;
    let miss = edge.get("/moved").await;
    assert_eq!(miss.status, 302);
    assert!(!miss.stored(), "{}", miss.cache_status());
    edge.get("/moved").await;
    assert_eq!(h.origin.hits("/moved"), 2);
}

/// `public` lets a heuristic apply to any status (RFC 9111 §4.2.2), but not to a 429, 500, 502,
/// 503 or 504: they say the origin is failing or shedding load, not what the resource is, and
/// some servers add `public` to every answer. A maintenance page with a `Last-Modified` would
/// otherwise be served for up to `cache.heuristic.max` after the origin recovered (as
/// `default_ttl` does not do either). Other statuses `public` marks still get the heuristic.
#[tokio::test]
async fn public_gives_no_heuristic_freshness_to_an_origin_error() {
    let h = Harness::new().await;
    let modified = http_date(start_time() - Duration::from_secs(1000));
    let edge = h.edge().await;
    for (path, status) in [
        ("/a", 429),
        ("/b", 500),
        ("/c", 502),
        ("/d", 503),
        ("/e", 504),
    ] {
        h.origin.reply(
            path,
            Reply::ok("down for maintenance")
                .status(status)
                .header("cache-control", "public")
                .header("last-modified", &modified),
        );
        let error = edge.get(path).await;
        assert_eq!(error.status, status);
        // Kept for its validator at most, never fresh.
        assert_eq!(
            error.param("ttl"),
            Some("0"),
            "{path}: {}",
            error.cache_status()
        );
        h.origin.reply(path, Reply::ok("back"));
        let after = edge.get(path).await;
        assert_eq!(
            (after.status, after.text()),
            (200, "back"),
            "{path}: {}",
            after.cache_status()
        );
    }
    h.origin.reply(
        "/moved",
        Reply::ok("")
            .status(302)
            .header("location", "/x")
            .header("cache-control", "public")
            .header("last-modified", &modified),
    );
    let moved = edge.get("/moved").await;
    assert_eq!(moved.param("ttl"), Some("100"), "{}", moved.cache_status());
}

#[tokio::test]
async fn age_includes_the_age_the_origin_reported() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("cache-control", "max-age=60")
            .header("age", "15"),
    );
    let edge = h.edge().await;
    let miss = edge.get("/a").await;
    assert_eq!(miss.param("ttl"), Some("45"));
    h.clock.advance(Duration::from_secs(5));
    let hit = edge.get("/a").await;
    assert_eq!(hit.age(), Some(20));
    assert_eq!(hit.param("ttl"), Some("40"));
}

#[tokio::test]
async fn a_response_older_than_its_lifetime_is_stale_on_arrival() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("cache-control", "max-age=60")
            .header("age", "100")
            .header("etag", "\"x\""),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    let second = edge.get("/a").await;
    assert_eq!(second.fwd(), Some("stale"));
    assert_eq!(h.origin.hits("/a"), 2);
}

/// RFC 9111 §5.1: of a list-valued `Age`, the first member counts.
#[tokio::test]
async fn the_first_member_of_a_list_valued_age_counts() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("cache-control", "max-age=3600")
            .header("age", "7200, 0")
            .header("etag", "\"x\""),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    let second = edge.get("/a").await;
    assert_eq!(second.fwd(), Some("stale"), "{}", second.cache_status());
    assert_eq!(h.origin.hits("/a"), 2);
}

#[tokio::test]
async fn response_no_cache_is_never_served_without_going_to_the_origin() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("cache-control", "no-cache, max-age=600")
            .header("etag", "\"x\""),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    let second = edge.get("/a").await;
    assert!(!second.is_hit());
    assert_eq!(h.origin.hits("/a"), 2);
}
