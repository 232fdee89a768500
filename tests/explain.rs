//! Explain mode: `Edge-Debug: 1` from an address in `explain.allow` adds headers saying what
//! edge did and why; from anywhere else, or without the header, nothing changes.

mod common;

use std::time::Duration;

use common::{Harness, Reply, http_date, start_time};

const DEBUG: (&str, &str) = ("edge-debug", "1");

#[tokio::test]
async fn a_miss_then_a_hit_explained() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply(
        "/hello.txt",
        Reply::ok("hello").header("cache-control", "public, max-age=60"),
    );
    let miss = edge.get_with("/hello.txt", &[DEBUG]).await;
    let key = miss.header("edge-debug-key").unwrap();
    assert!(key.starts_with("/hello.txt; hash="), "{key}");
    assert_eq!(miss.header("edge-debug-tier"), Some("origin"));
    assert_eq!(
        miss.header("edge-debug-freshness"),
        Some("60s from max-age")
    );
    assert_eq!(
        miss.header("edge-debug-age"),
        Some("0s, fresh for 60s more")
    );
    assert_eq!(
        miss.header("edge-debug-stored"),
        Some("yes, fetched from the origin and stored")
    );
    assert_eq!(miss.text(), "hello");

    h.clock.advance(Duration::from_secs(15));
    let hit = edge.get_with("/hello.txt", &[DEBUG]).await;
    assert_eq!(hit.header("edge-debug-key"), Some(key));
    assert_eq!(hit.header("edge-debug-tier"), Some("memory"));
    assert_eq!(
        hit.header("edge-debug-age"),
        Some("15s, fresh for 45s more")
    );
    assert_eq!(
        hit.header("edge-debug-stored"),
        Some("yes, served from the memory tier")
    );

    let edge = edge.restart().await;
    let from_disk = edge.get_with("/hello.txt", &[DEBUG]).await;
    assert_eq!(from_disk.header("edge-debug-tier"), Some("disk"));
}

#[tokio::test]
async fn where_the_lifetime_came_from() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    let now = start_time();
    h.origin.reply(
        "/s",
        Reply::ok("s").header("cache-control", "max-age=5, s-maxage=300"),
    );
    h.origin.reply(
        "/e",
        Reply::ok("e").header("expires", &http_date(now + Duration::from_secs(120))),
    );
    h.origin.reply(
        "/h",
        Reply::ok("h").header("last-modified", &http_date(now - Duration::from_secs(1000))),
    );
    h.origin.reply("/n", Reply::ok("n").header("etag", "\"n\""));
    let freshness = |path: &'static str| {
        let edge = &edge;
        async move {
            let r = edge.get_with(path, &[DEBUG]).await;
            r.header("edge-debug-freshness").unwrap().to_owned()
        }
    };
    assert_eq!(
        freshness("/s").await,
        "300s from s-maxage (shared caches only)"
    );
    assert_eq!(freshness("/e").await, "120s from Expires - Date");
    let heuristic = freshness("/h").await;
    assert!(
        heuristic.starts_with("100s heuristic: 10% of Date - Last-Modified"),
        "{heuristic}"
    );
    let none = freshness("/n").await;
    assert!(
        none.starts_with("0s none: no s-maxage, max-age, Expires or Last-Modified"),
        "{none}"
    );
}

/// The operator's lifetimes are named as such: `negative_ttl` was told as the Last-Modified
/// heuristic "or negative_ttl", and a response `default_ttl` did not store for a request with
/// `Cookie` was explained as a bare "no: cookie".
#[tokio::test]
async fn the_operators_own_lifetimes_are_named() {
    let h = Harness::new().await;
    let edge = h
        .edge_with(|c| {
            c.cache.heuristic.negative_ttl.0 = Duration::from_secs(30);
            c.cache.heuristic.default_ttl.0 = Duration::from_secs(60);
        })
        .await;
    h.origin.reply("/gone", Reply::ok("gone").status(404));
    h.origin.reply("/plain", Reply::ok("plain"));
    let gone = edge.get_with("/gone", &[DEBUG]).await;
    assert_eq!(
        gone.header("edge-debug-freshness"),
        Some("30s cache.heuristic.negative_ttl: a 404 or 410 without explicit expiration")
    );
    let with_cookie = edge.get_with("/plain", &[DEBUG, ("cookie", "a=1")]).await;
    let stored = with_cookie.header("edge-debug-stored").unwrap();
    assert!(
        stored.starts_with("no: the request carried Cookie, and only cache.heuristic.default_ttl"),
        "{stored}"
    );
}

#[tokio::test]
async fn why_a_response_was_not_stored() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply(
        "/private",
        Reply::ok("p").header("cache-control", "private, max-age=60"),
    );
    h.origin.reply(
        "/cookie",
        Reply::ok("c")
            .header("cache-control", "max-age=60")
            .header("set-cookie", "a=b"),
    );
    h.origin.reply(
        "/nostore",
        Reply::ok("x").header("cache-control", "no-store"),
    );
    let stored = |path: &'static str| {
        let edge = &edge;
        async move {
            let r = edge.get_with(path, &[DEBUG]).await;
            r.header("edge-debug-stored").unwrap().to_owned()
        }
    };
    assert_eq!(
        stored("/private").await,
        "no: Cache-Control: private; a shared cache must not store it"
    );
    assert_eq!(
        stored("/cookie").await,
        "no: the response sets a cookie; edge never shares one"
    );
    assert!(
        stored("/nostore")
            .await
            .starts_with("no: Cache-Control: no-store")
    );
    let post = edge.send(http::Method::POST, "/private", &[DEBUG]).await;
    assert_eq!(
        post.header("edge-debug-stored"),
        Some("no: POST requests go to the origin uncached")
    );
}

#[tokio::test]
async fn variants_are_named() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply(
        "/v",
        Reply::ok("v")
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Encoding, Accept-Language"),
    );
    let r = edge
        .get_with("/v", &[DEBUG, ("accept-encoding", "gzip")])
        .await;
    assert_eq!(
        r.header("edge-debug-vary"),
        Some("accept-encoding=\"gzip\", accept-language absent")
    );
}

#[tokio::test]
async fn only_when_asked_and_only_for_allowed_addresses() {
    let h = Harness::new().await;
    h.origin
        .reply("/a", Reply::ok("a").header("cache-control", "max-age=60"));
    let edge = h.edge().await;
    let plain = edge.get("/a").await;
    let zero = edge.get_with("/a", &[("edge-debug", "0")]).await;
    for r in [&plain, &zero] {
        assert!(
            r.headers
                .keys()
                .all(|k| !k.as_str().starts_with("edge-debug")),
            "{:?}",
            r.headers
        );
    }

    let closed = h
        .edge_with(|c| c.explain.allow = vec!["192.0.2.0/24".parse().unwrap()])
        .await;
    let r = closed.get_with("/a", &[DEBUG]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .keys()
            .all(|k| !k.as_str().starts_with("edge-debug")),
        "{:?}",
        r.headers
    );
}
