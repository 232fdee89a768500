//! RFC 5861 (`stale-while-revalidate`, `stale-if-error`) within RFC 9111 §4.2.4's limits on serving
//! stale responses, and the operator's `cache.stale_if_error`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Harness, Reply, http_date};
use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Real time a background refresh against `SLOW` needs to land.
const SLOW: Duration = Duration::from_millis(1000);
const SETTLE: Duration = Duration::from_millis(1500);

/// An origin that answers exactly one request with `response` and then stops listening, so that
/// every later connection is refused.
async fn origin_answering_once(response: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        drop(listener);
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        while !received.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
        }
        socket.write_all(response.as_bytes()).await.unwrap();
        let _ = socket.shutdown().await;
    });
    addr
}

fn origin_url(addr: SocketAddr) -> edge::config::OriginUrl {
    edge::config::OriginUrl(format!("http://{addr}").parse().unwrap())
}

/// A 200 with `cache-control`, dated by the harness clock, that closes its connection.
fn raw_ok(h: &Harness, cache_control: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ndate: {}\r\ncache-control: {cache_control}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        http_date(h.clock.now()),
        body.len()
    )
}

fn operator_stale_if_error(c: &mut edge::config::Config) {
    c.cache.stale_if_error = edge::config::Seconds(Duration::from_secs(300));
}

// ---------------------------------------------------------------------------------------------
// stale-while-revalidate (RFC 5861 §3)

#[tokio::test]
async fn stale_while_revalidate_serves_stale_at_once_and_refreshes_in_the_background() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("v1").header("cache-control", "max-age=10, stale-while-revalidate=30"),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(15));
    h.origin.reply(
        "/a",
        Reply::ok("v2")
            .header("cache-control", "max-age=10, stale-while-revalidate=30")
            .delay(SLOW),
    );

    let started = Instant::now();
    let stale = edge.get("/a").await;
    let elapsed = started.elapsed();
    assert_eq!(stale.status, 200);
    assert_eq!(stale.text(), "v1");
    assert_eq!(
        stale.cache_status(),
        "edge; hit; ttl=-5; detail=stale-while-revalidate"
    );
    assert_eq!(stale.age(), Some(15));
    assert!(
        elapsed < SLOW / 2,
        "the stale answer took {elapsed:?}, against a {SLOW:?} origin"
    );

    tokio::time::sleep(SETTLE).await;
    assert_eq!(h.origin.hits("/a"), 2, "one background refresh");
    let fresh = edge.get("/a").await;
    assert_eq!(fresh.text(), "v2");
    assert_eq!(fresh.cache_status(), "edge; hit; ttl=10; detail=memory");
    assert_eq!(h.origin.hits("/a"), 2);
}

#[tokio::test]
async fn twenty_concurrent_stale_requests_make_one_background_refresh() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("v1").header("cache-control", "max-age=10, stale-while-revalidate=30"),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(15));
    h.origin.reply(
        "/a",
        Reply::ok("v2")
            .header("cache-control", "max-age=10")
            .delay(SLOW),
    );

    let started = Instant::now();
    let responses = join_all((0..20).map(|_| edge.get("/a"))).await;
    let elapsed = started.elapsed();
    for response in &responses {
        assert_eq!(response.text(), "v1");
        assert_eq!(
            response.param("detail"),
            Some("stale-while-revalidate"),
            "{}",
            response.cache_status()
        );
        assert!(response.is_hit());
    }
    assert!(
        elapsed < SLOW / 2,
        "20 stale answers took {elapsed:?}, against a {SLOW:?} origin"
    );

    tokio::time::sleep(SETTLE).await;
    assert_eq!(h.origin.hits("/a"), 2, "one refresh for all twenty");
    let fresh = edge.get("/a").await;
    assert!(fresh.is_hit(), "{}", fresh.cache_status());
    assert_eq!(fresh.text(), "v2");
    assert_eq!(fresh.param("ttl"), Some("10"));
    assert_eq!(h.origin.hits("/a"), 2);
}

#[tokio::test]
async fn stale_while_revalidate_refreshes_with_a_conditional_request() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("v1")
            .header("cache-control", "max-age=10, stale-while-revalidate=30")
            .header("etag", "\"v1\""),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(15));
    h.origin.reply(
        "/a",
        Reply::ok("")
            .status(304)
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=100"),
    );
    let stale = edge.get("/a").await;
    assert_eq!(stale.param("detail"), Some("stale-while-revalidate"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.origin.hits("/a"), 2);
    assert_eq!(
        h.origin.last("/a").unwrap().headers["if-none-match"],
        "\"v1\""
    );
    let fresh = edge.get("/a").await;
    assert_eq!(fresh.text(), "v1");
    assert_eq!(fresh.cache_status(), "edge; hit; ttl=100; detail=memory");
}

#[tokio::test]
async fn beyond_the_stale_while_revalidate_window_the_request_waits_for_revalidation() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("v1").header("cache-control", "max-age=10, stale-while-revalidate=30"),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    // 31 s stale: one second past the window.
    h.clock.advance(Duration::from_secs(41));
    h.origin
        .reply("/a", Reply::ok("v2").header("cache-control", "max-age=10"));

    let revalidated = edge.get("/a").await;
    assert_eq!(revalidated.text(), "v2");
    assert_eq!(
        revalidated.cache_status(),
        "edge; fwd=stale; fwd-status=200; stored; ttl=10"
    );
    assert_eq!(h.origin.hits("/a"), 2);
}

#[tokio::test]
async fn stale_while_revalidate_is_not_used_for_must_revalidate_or_no_cache_responses() {
    let h = Harness::new().await;
    let cases = [
        (
            "/must-revalidate",
            "max-age=10, must-revalidate, stale-while-revalidate=30",
        ),
        (
            "/proxy-revalidate",
            "max-age=10, proxy-revalidate, stale-while-revalidate=30",
        ),
        (
            "/no-cache",
            "max-age=10, no-cache, stale-while-revalidate=30",
        ),
    ];
    for (path, cc) in cases {
        h.origin.reply(
            path,
            Reply::ok("v1")
                .header("cache-control", cc)
                .header("etag", "\"v1\""),
        );
    }
    let edge = h.edge().await;
    for (path, _) in cases {
        edge.get(path).await;
    }
    h.clock.advance(Duration::from_secs(15));
    for (path, _) in cases {
        h.origin
            .reply(path, Reply::ok("v2").header("cache-control", "max-age=10"));
    }
    for (path, _) in cases {
        let response = edge.get(path).await;
        assert_eq!(response.text(), "v2", "{path}");
        assert!(!response.is_hit(), "{path}: {}", response.cache_status());
        assert_eq!(response.fwd(), Some("stale"), "{path}");
        assert_eq!(h.origin.hits(path), 2, "{path}");
    }
}

#[tokio::test]
async fn stale_while_revalidate_is_not_used_when_the_request_asks_for_a_fresh_response() {
    let h = Harness::new().await;
    let cases = [
        ("/no-cache", "no-cache"),
        ("/max-age-0", "max-age=0"),
        ("/min-fresh", "min-fresh=5"),
    ];
    for (path, _) in cases {
        h.origin.reply(
            path,
            Reply::ok("v1").header("cache-control", "max-age=10, stale-while-revalidate=30"),
        );
    }
    let edge = h.edge().await;
    for (path, _) in cases {
        edge.get(path).await;
    }
    h.clock.advance(Duration::from_secs(15));
    for (path, _) in cases {
        h.origin
            .reply(path, Reply::ok("v2").header("cache-control", "max-age=10"));
    }
    for (path, request_cc) in cases {
        let response = edge.get_with(path, &[("cache-control", request_cc)]).await;
        assert_eq!(response.text(), "v2", "{request_cc}");
        assert!(
            !response.is_hit(),
            "{request_cc}: {}",
            response.cache_status()
        );
        assert_eq!(response.fwd(), Some("stale"), "{request_cc}");
        assert_eq!(h.origin.hits(path), 2, "{request_cc}");
    }
}

#[tokio::test]
async fn s_maxage_with_stale_while_revalidate_allows_serving_stale() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("v1").header("cache-control", "s-maxage=60, stale-while-revalidate=30"),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(70));
    h.origin.reply(
        "/a",
        Reply::ok("v2")
            .header("cache-control", "s-maxage=60")
            .delay(Duration::from_millis(300)),
    );
    let stale = edge.get("/a").await;
    assert_eq!(stale.text(), "v1");
    assert_eq!(
        stale.cache_status(),
        "edge; hit; ttl=-10; detail=stale-while-revalidate"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(h.origin.hits("/a"), 2);
    let fresh = edge.get("/a").await;
    assert!(fresh.is_hit(), "{}", fresh.cache_status());
    assert_eq!(fresh.text(), "v2");
}

/// After a refresh fails, stale-while-revalidate hits go on being served stale but start no other
/// refresh for a second (of edge's clock): a failing origin is not asked at the rate of the
/// requests. A request that is not served stale still goes to the origin, and once the second has
/// passed, the next stale hit refreshes again.
#[tokio::test]
async fn a_failed_background_refresh_is_not_retried_for_a_second() {
    let h = Harness::new().await;
    let cc = "max-age=1, stale-while-revalidate=600";
    h.origin.reply(
        "/a",
        Reply::ok("v1")
            .header("cache-control", cc)
            .header("etag", "\"v1\""),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(2));
    h.origin.reply("/a", Reply::ok("broken").status(503));

    for _ in 0..50 {
        let stale = edge.get("/a").await;
        assert_eq!(stale.text(), "v1");
        assert_eq!(
            stale.cache_status(),
            "edge; hit; ttl=-1; detail=stale-while-revalidate"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.origin.hits("/a"), 2, "one refresh for fifty stale hits");

    // Not served stale: asked of the origin all the same.
    let no_cache = edge.get_with("/a", &[("cache-control", "no-cache")]).await;
    assert_eq!(no_cache.status, 503, "{}", no_cache.cache_status());
    assert_eq!(h.origin.hits("/a"), 3);

    h.clock.advance(Duration::from_secs(1));
    for _ in 0..10 {
        let stale = edge.get("/a").await;
        assert_eq!(stale.text(), "v1");
        assert_eq!(stale.param("detail"), Some("stale-while-revalidate"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.origin.hits("/a"), 4, "one more refresh a second later");

    // A refresh that succeeds stores as before.
    h.clock.advance(Duration::from_secs(1));
    h.origin.reply(
        "/a",
        Reply::ok("v2")
            .header("cache-control", "max-age=100")
            .header("etag", "\"v2\""),
    );
    assert_eq!(edge.get("/a").await.text(), "v1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = edge.get("/a").await;
    assert_eq!(fresh.text(), "v2");
    assert_eq!(fresh.cache_status(), "edge; hit; ttl=100; detail=memory");
    assert_eq!(h.origin.hits("/a"), 5);
}

/// A revalidation answered by a full response that edge does not store (here `no-store`, too
/// large by its Content-Length, or too large once streamed without one) says the stored response
/// is no longer suitable (RFC 9111 §4.3.3): it is not served stale on (each stale hit starting
/// another refresh); requests after the refresh go to the origin and get its answer.
#[tokio::test]
async fn a_refresh_answered_by_a_response_not_stored_ends_the_stale_one() {
    let big = "x".repeat(4096);
    let replacements = [
        (
            "/no-store",
            Reply::ok("v2").header("cache-control", "no-store"),
        ),
        (
            "/too-large",
            Reply::ok(big.clone()).header("cache-control", "max-age=100"),
        ),
        (
            "/too-large-streamed",
            Reply::ok(big.clone())
                .header("cache-control", "max-age=100")
                .chunked(),
        ),
    ];
    let h = Harness::new().await;
    let cc = "max-age=1, stale-while-revalidate=600";
    for (path, _) in &replacements {
        let stored = Reply::ok("v1")
            .header("cache-control", cc)
            .header("etag", "\"v1\"");
        h.origin.reply(path, stored);
    }
    let edge = h
        .edge_with(|c| c.cache.max_object_size = edge::config::ByteSize(1024))
        .await;
    for (path, _) in &replacements {
        assert!(edge.get(path).await.stored(), "{path}");
    }
    h.clock.advance(Duration::from_secs(2));
    for (path, replacement) in replacements {
        h.origin.reply(path, replacement.clone());
        let stale = edge.get(path).await;
        assert_eq!(stale.text(), "v1", "{path}");
        assert_eq!(stale.param("detail"), Some("stale-while-revalidate"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(h.origin.hits(path), 2, "{path}: refreshed");
        for i in 0..3 {
            let after = edge.get(path).await;
            let body = &after.body;
            assert!(
                *body == replacement.body,
                "{path}: {}",
                after.cache_status()
            );
            assert_eq!(after.fwd(), Some("uri-miss"), "{path}");
            assert_eq!(h.origin.hits(path), 3 + i, "{path}");
        }
    }
}

/// A server error does not end it: it may stand in for the error (stale-if-error).
#[tokio::test]
async fn a_refresh_answered_by_a_server_error_keeps_the_stale_one() {
    let h = Harness::new().await;
    let cc = "max-age=1, stale-while-revalidate=10, stale-if-error=600";
    h.origin
        .reply("/a", Reply::ok("v1").header("cache-control", cc));
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(2));
    h.origin.reply("/a", Reply::ok("broken").status(500));
    assert_eq!(edge.get("/a").await.text(), "v1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.origin.hits("/a"), 2);
    h.clock.advance(Duration::from_secs(100));
    let covered = edge.get("/a").await;
    assert_eq!(covered.text(), "v1");
    assert_eq!(covered.param("detail"), Some("stale-if-error"));
}

/// The same when the origin cannot be reached: one attempt, not one per stale hit.
#[tokio::test]
async fn a_background_refresh_that_finds_the_origin_unreachable_is_not_retried_for_a_second() {
    let h = Harness::new().await;
    let cc = "max-age=1, stale-while-revalidate=600";
    let addr = origin_answering_once(raw_ok(&h, cc, "v1")).await;
    let edge = h.edge_with(|c| c.origin.url = origin_url(addr)).await;
    assert_eq!(edge.get("/a").await.text(), "v1");
    h.clock.advance(Duration::from_secs(2));

    let failed = "edge_origin_requests_total{status=\"error\"}";
    for _ in 0..50 {
        let stale = edge.get("/a").await;
        assert_eq!(stale.text(), "v1");
        assert_eq!(stale.param("detail"), Some("stale-while-revalidate"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(common::sample(&edge.metrics().await, failed), 1.0);

    h.clock.advance(Duration::from_secs(1));
    for _ in 0..10 {
        assert_eq!(edge.get("/a").await.text(), "v1");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(common::sample(&edge.metrics().await, failed), 2.0);
}

// ---------------------------------------------------------------------------------------------
// stale-if-error (RFC 5861 §4)

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_origin_answers_500_502_503_or_504() {
    let h = Harness::new().await;
    let statuses = [500u16, 502, 503, 504];
    for status in statuses {
        h.origin.reply(
            &format!("/{status}"),
            Reply::ok(format!("good {status}"))
                .header("cache-control", "max-age=10, stale-if-error=60")
                .header("etag", "\"v1\""),
        );
    }
    let edge = h.edge().await;
    for status in statuses {
        edge.get(&format!("/{status}")).await;
    }
    h.clock.advance(Duration::from_secs(20));
    for status in statuses {
        h.origin
            .reply(&format!("/{status}"), Reply::ok("broken").status(status));
    }
    for status in statuses {
        let path = format!("/{status}");
        let response = edge.get(&path).await;
        assert_eq!(response.status, 200, "{status}");
        assert_eq!(response.text(), format!("good {status}"));
        assert_eq!(
            response.cache_status(),
            format!("edge; fwd=stale; fwd-status={status}; ttl=-10; detail=stale-if-error")
        );
        assert_eq!(response.age(), Some(20), "{status}");
        assert_eq!(h.origin.hits(&path), 2, "{status}: the origin was asked");
    }
}

#[tokio::test]
async fn beyond_the_stale_if_error_window_the_error_is_passed_through() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("good").header("cache-control", "max-age=10, stale-if-error=60"),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.origin.reply("/a", Reply::ok("broken").status(503));

    // 60 s stale: the edge of the window.
    h.clock.advance(Duration::from_secs(70));
    let covered = edge.get("/a").await;
    assert_eq!(covered.text(), "good");
    assert_eq!(covered.param("detail"), Some("stale-if-error"));

    // 61 s stale: past it.
    h.clock.advance(Duration::from_secs(1));
    let failed = edge.get("/a").await;
    assert_eq!(failed.status, 503);
    assert_eq!(failed.text(), "broken");
    assert_eq!(failed.fwd(), Some("stale"));
    assert_eq!(failed.param("fwd-status"), Some("503"));
    assert_ne!(failed.param("detail"), Some("stale-if-error"));
    assert_eq!(h.origin.hits("/a"), 3);
}

#[tokio::test]
async fn a_404_is_not_an_error_that_stale_if_error_covers() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("good").header("cache-control", "max-age=10, stale-if-error=60"),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(20));
    h.origin.reply("/a", Reply::ok("gone").status(404));
    let response = edge.get("/a").await;
    assert_eq!(response.status, 404);
    assert_eq!(response.text(), "gone");
    assert_eq!(response.param("fwd-status"), Some("404"));
}

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_origin_is_unreachable() {
    let h = Harness::new().await;
    let addr = origin_answering_once(raw_ok(&h, "max-age=10, stale-if-error=60", "good")).await;
    let edge = h.edge_with(|c| c.origin.url = origin_url(addr)).await;
    assert_eq!(edge.get("/a").await.text(), "good");
    h.clock.advance(Duration::from_secs(20));

    let response = edge.get("/a").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "good");
    assert_eq!(
        response.cache_status(),
        "edge; fwd=stale; ttl=-10; detail=stale-if-error"
    );

    // Past the window, the failure shows.
    h.clock.advance(Duration::from_secs(60));
    let failed = edge.get("/a").await;
    assert_eq!(failed.status, 502);
    assert_eq!(failed.param("detail"), Some("origin-unreachable"));
}

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_origin_times_out() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("good").header("cache-control", "max-age=10, stale-if-error=60"),
    );
    let edge = h
        .edge_with(|c| c.origin.timeout = edge::config::Seconds(Duration::from_millis(300)))
        .await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(20));
    h.origin.reply(
        "/a",
        Reply::ok("late")
            .header("cache-control", "max-age=10")
            .delay(Duration::from_secs(2)),
    );

    let started = Instant::now();
    let response = edge.get("/a").await;
    let elapsed = started.elapsed();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "good");
    assert_eq!(
        response.cache_status(),
        "edge; fwd=stale; ttl=-10; detail=stale-if-error"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "the stale answer took {elapsed:?}; the origin timeout is 300 ms"
    );
}

#[tokio::test]
async fn a_request_stale_if_error_covers_a_response_without_the_directive() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("good").header("cache-control", "max-age=10"),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(20));
    h.origin.reply("/a", Reply::ok("broken").status(503));

    let plain = edge.get("/a").await;
    assert_eq!(
        plain.status, 503,
        "without any stale-if-error the error shows"
    );
    assert_eq!(plain.text(), "broken");

    let covered = edge
        .get_with("/a", &[("cache-control", "stale-if-error=60")])
        .await;
    assert_eq!(covered.status, 200);
    assert_eq!(covered.text(), "good");
    assert_eq!(
        covered.cache_status(),
        "edge; fwd=stale; fwd-status=503; ttl=-10; detail=stale-if-error"
    );

    let too_short = edge
        .get_with("/a", &[("cache-control", "stale-if-error=5")])
        .await;
    assert_eq!(too_short.status, 503, "10 s stale is past a 5 s window");
    assert_eq!(h.origin.hits("/a"), 4);
}

#[tokio::test]
async fn stale_if_error_is_never_used_for_must_revalidate_proxy_revalidate_or_no_cache() {
    let h = Harness::new().await;
    let cases = [
        (
            "/must-revalidate",
            "max-age=10, must-revalidate, stale-if-error=60",
        ),
        (
            "/proxy-revalidate",
            "max-age=10, proxy-revalidate, stale-if-error=60",
        ),
        ("/no-cache", "no-cache, stale-if-error=60"),
    ];
    for (path, cc) in cases {
        h.origin.reply(
            path,
            Reply::ok("good")
                .header("cache-control", cc)
                .header("etag", "\"v1\""),
        );
    }
    let edge = h.edge().await;
    for (path, _) in cases {
        edge.get(path).await;
    }
    h.clock.advance(Duration::from_secs(20));
    for (path, _) in cases {
        h.origin.reply(path, Reply::ok("broken").status(503));
    }
    for (path, _) in cases {
        // Neither the response's nor the request's stale-if-error may override it.
        for request in [&[][..], &[("cache-control", "stale-if-error=60")][..]] {
            let response = edge.get_with(path, request).await;
            assert_eq!(response.status, 503, "{path} {request:?}");
            assert_eq!(response.text(), "broken", "{path} {request:?}");
            assert_eq!(response.param("fwd-status"), Some("503"), "{path}");
            assert_ne!(response.param("detail"), Some("stale-if-error"), "{path}");
        }
    }
}

#[tokio::test]
async fn no_cache_is_never_served_on_error_even_while_it_would_be_fresh() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("good")
            .header("cache-control", "max-age=600, no-cache, stale-if-error=60")
            .header("etag", "\"v1\""),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.origin.reply("/a", Reply::ok("broken").status(503));
    let response = edge.get("/a").await;
    assert_eq!(response.status, 503);
    assert_eq!(response.text(), "broken");
}

// ---------------------------------------------------------------------------------------------
// The operator's cache.stale_if_error

#[tokio::test]
async fn operator_stale_if_error_is_off_by_default() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("good").header("cache-control", "max-age=10"),
    );
    let edge = h.edge().await;
    assert!(edge.config.cache.stale_if_error.0.is_zero());
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(20));
    h.origin.reply("/a", Reply::ok("broken").status(503));
    let response = edge.get("/a").await;
    assert_eq!(response.status, 503);
    assert_eq!(response.text(), "broken");
    assert_eq!(response.param("fwd-status"), Some("503"));
}

#[tokio::test]
async fn operator_stale_if_error_serves_stale_within_its_duration() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("good").header("cache-control", "max-age=10"),
    );
    let edge = h.edge_with(operator_stale_if_error).await;
    edge.get("/a").await;
    h.origin.reply("/a", Reply::ok("broken").status(503));

    h.clock.advance(Duration::from_secs(20));
    let covered = edge.get("/a").await;
    assert_eq!(covered.status, 200);
    assert_eq!(covered.text(), "good");
    assert_eq!(
        covered.cache_status(),
        "edge; fwd=stale; fwd-status=503; ttl=-10; detail=stale-if-error"
    );

    // 300 s stale: still covered; 301 s: not.
    h.clock.advance(Duration::from_secs(290));
    assert_eq!(edge.get("/a").await.text(), "good");
    h.clock.advance(Duration::from_secs(1));
    let failed = edge.get("/a").await;
    assert_eq!(failed.status, 503);
    assert_eq!(failed.text(), "broken");
    assert_eq!(h.origin.hits("/a"), 4);
}

#[tokio::test]
async fn operator_stale_if_error_serves_stale_when_the_origin_is_unreachable() {
    let h = Harness::new().await;
    let addr = origin_answering_once(raw_ok(&h, "max-age=10", "good")).await;
    let edge = h
        .edge_with(|c| {
            operator_stale_if_error(c);
            c.origin.url = origin_url(addr);
        })
        .await;
    assert_eq!(edge.get("/a").await.text(), "good");
    h.clock.advance(Duration::from_secs(20));
    let response = edge.get("/a").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "good");
    assert_eq!(
        response.cache_status(),
        "edge; fwd=stale; ttl=-10; detail=stale-if-error"
    );
}

#[tokio::test]
async fn operator_stale_if_error_is_never_used_for_must_revalidate_or_no_cache() {
    let h = Harness::new().await;
    let cases = [
        ("/must-revalidate", "max-age=10, must-revalidate"),
        ("/proxy-revalidate", "max-age=10, proxy-revalidate"),
        ("/no-cache", "no-cache"),
    ];
    for (path, cc) in cases {
        h.origin.reply(
            path,
            Reply::ok("good")
                .header("cache-control", cc)
                .header("etag", "\"v1\""),
        );
    }
    let edge = h.edge_with(operator_stale_if_error).await;
    for (path, _) in cases {
        edge.get(path).await;
    }
    h.clock.advance(Duration::from_secs(20));
    for (path, _) in cases {
        h.origin.reply(path, Reply::ok("broken").status(503));
    }
    for (path, _) in cases {
        let response = edge.get(path).await;
        assert_eq!(response.status, 503, "{path}");
        assert_eq!(response.text(), "broken", "{path}");
    }
}

/// A response that was never fresh (stored only for its validator) answered the cookies of the
/// request it was fetched for: the operator's window does not hand it to everyone while the
/// origin fails; the origin's own `stale-if-error` still does.
#[tokio::test]
async fn operator_stale_if_error_is_never_used_for_a_response_that_was_never_fresh() {
    let h = Harness::new().await;
    let cases = [
        ("/zero", Some("max-age=0"), 503),
        ("/etag-only", None, 503),
        ("/granted", Some("max-age=0, stale-if-error=60"), 200),
    ];
    for (path, cc, _) in cases {
        let mut reply = Reply::ok("good").header("etag", "\"v1\"");
        if let Some(cc) = cc {
            reply = reply.header("cache-control", cc);
        }
        h.origin.reply(path, reply);
    }
    let edge = h.edge_with(operator_stale_if_error).await;
    for (path, _, _) in cases {
        assert!(edge.get(path).await.stored(), "{path}");
    }
    h.clock.advance(Duration::from_secs(20));
    for (path, _, _) in cases {
        h.origin.reply(path, Reply::ok("broken").status(503));
    }
    for (path, _, status) in cases {
        let response = edge.get(path).await;
        assert_eq!(
            response.status,
            status,
            "{path}: {}",
            response.cache_status()
        );
        let body = if status == 200 { "good" } else { "broken" };
        assert_eq!(response.text(), body, "{path}");
    }
}

#[tokio::test]
async fn concurrent_requests_during_an_origin_error_make_one_origin_request_and_all_get_stale() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("good").header("cache-control", "max-age=10, stale-if-error=60"),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(20));
    h.origin.reply(
        "/a",
        Reply::ok("broken")
            .status(503)
            .delay(Duration::from_millis(300)),
    );
    let responses = join_all((0..20).map(|_| edge.get("/a"))).await;
    for response in &responses {
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "good");
        assert_eq!(
            response.param("detail"),
            Some("stale-if-error"),
            "{}",
            response.cache_status()
        );
    }
    assert_eq!(h.origin.hits("/a"), 2, "one origin request for all twenty");
}

/// A server error answering a revalidation never replaces the stale response, which it may have
/// to stand in for, and says why it is not stored as it would on a miss: `no-store` for one that
/// says so, `status` for one that would have been stored but for that.
#[tokio::test]
async fn a_server_error_to_a_revalidation_says_why_it_is_not_stored() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("good")
            .header("cache-control", "max-age=1")
            .header("etag", "\"g\""),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(2));
    for (cc, detail) in [("no-store", "no-store"), ("max-age=60", "status")] {
        h.origin.reply(
            "/a",
            Reply::ok("broken").status(503).header("cache-control", cc),
        );
        let failed = edge.get("/a").await;
        assert_eq!(failed.status, 503, "{cc}");
        assert_eq!(
            failed.fwd(),
            Some("stale"),
            "{cc}: {}",
            failed.cache_status()
        );
        assert_eq!(
            failed.param("detail"),
            Some(detail),
            "{cc}: {}",
            failed.cache_status()
        );
    }
    // The stale response is still there for a request that accepts it while the origin fails.
    let stale = edge
        .get_with("/a", &[("cache-control", "stale-if-error=60")])
        .await;
    assert_eq!(stale.text(), "good", "{}", stale.cache_status());
    assert_eq!(stale.param("detail"), Some("stale-if-error"));
}

#[tokio::test]
async fn operator_stale_if_error_is_never_used_for_s_maxage_responses() {
    // RFC 9111 §5.2.2.10: s-maxage carries proxy-revalidate's semantics for a shared cache, and
    // §4.2.4 forbids generating a stale response against it. Only the origin's own stale-if-error
    // could grant an exception; the operator's setting cannot.
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("good")
            .header("cache-control", "s-maxage=10")
            .header("etag", "\"v1\""),
    );
    let edge = h.edge_with(operator_stale_if_error).await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(20));
    h.origin.reply("/a", Reply::ok("broken").status(503));
    let response = edge.get("/a").await;
    assert_eq!(response.status, 503, "{}", response.cache_status());
    assert_eq!(response.text(), "broken");
}

#[tokio::test]
async fn a_request_stale_if_error_does_not_override_s_maxage() {
    // As with max-stale (RFC 9111 §5.2.1.2, §4.2.4), a client's willingness to take a stale
    // response does not lift the origin's proxy-revalidate semantics.
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("good")
            .header("cache-control", "s-maxage=10")
            .header("etag", "\"v1\""),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(20));
    h.origin.reply("/a", Reply::ok("broken").status(503));
    let response = edge
        .get_with("/a", &[("cache-control", "stale-if-error=60")])
        .await;
    assert_eq!(response.status, 503, "{}", response.cache_status());
    assert_eq!(response.text(), "broken");
}

#[tokio::test]
async fn an_error_during_revalidation_never_replaces_the_stale_entry() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("good").header("cache-control", "max-age=10, stale-if-error=600"),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(20));
    // A cacheable error: it must not be stored over the response it stands in for.
    h.origin.reply(
        "/a",
        Reply::ok("oops")
            .status(500)
            .header("cache-control", "max-age=60"),
    );
    for _ in 0..2 {
        let response = edge.get("/a").await;
        assert_eq!(response.text(), "good", "{}", response.cache_status());
        assert_eq!(response.param("detail"), Some("stale-if-error"));
    }
}

/// A revalidation that ends the stale variant it refreshed (its answer is not stored) leaves the
/// key's other variants: they were not what the answer was to, and are still fresh.
#[tokio::test]
async fn a_refresh_answered_by_a_response_not_stored_leaves_the_other_variants() {
    let h = Harness::new().await;
    h.origin.reply(
        "/v",
        Reply::ok("en v1")
            .header("cache-control", "max-age=1")
            .header("etag", "\"en\"")
            .header("vary", "accept-language"),
    );
    let edge = h.edge().await;
    assert!(
        edge.get_with("/v", &[("accept-language", "en")])
            .await
            .stored()
    );
    h.origin.reply(
        "/v",
        Reply::ok("fr v1")
            .header("cache-control", "max-age=600")
            .header("vary", "accept-language"),
    );
    assert!(
        edge.get_with("/v", &[("accept-language", "fr")])
            .await
            .stored()
    );
    h.clock.advance(Duration::from_secs(2));
    assert!(
        edge.get_with("/v", &[("accept-language", "fr")])
            .await
            .is_hit()
    );

    // The en variant is stale; its revalidation brings a response not to be stored.
    h.origin.reply(
        "/v",
        Reply::ok("en v2")
            .header("cache-control", "no-store")
            .header("vary", "accept-language"),
    );
    let refreshed = edge.get_with("/v", &[("accept-language", "en")]).await;
    assert_eq!(refreshed.text(), "en v2");
    assert_eq!(h.origin.hits("/v"), 3);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let fr = edge.get_with("/v", &[("accept-language", "fr")]).await;
    assert_eq!(fr.text(), "fr v1", "{}", fr.cache_status());
    assert!(fr.is_hit(), "{}", fr.cache_status());
    assert_eq!(h.origin.hits("/v"), 3);
    // The en variant is gone, not served stale.
    let en = edge.get_with("/v", &[("accept-language", "en")]).await;
    assert_eq!(en.text(), "en v2", "{}", en.cache_status());
    assert_eq!(h.origin.hits("/v"), 4);

    // So on disk: after a restart, fr is still a hit and en is not there.
    let edge = edge.restart().await;
    let fr = edge.get_with("/v", &[("accept-language", "fr")]).await;
    assert_eq!(fr.text(), "fr v1", "{}", fr.cache_status());
    assert!(fr.is_hit(), "{}", fr.cache_status());
    let en = edge.get_with("/v", &[("accept-language", "en")]).await;
    assert_eq!(en.text(), "en v2", "{}", en.cache_status());
    assert_eq!(h.origin.hits("/v"), 5);
}

/// A 429 (the origin shedding load) is taken as the failure it is, not as the resource's answer:
/// a stale response a background refresh met it with stays and is served stale on, the refresh
/// is held back for a second, and the key does not become a hit-for-pass, which would end
/// collapsing while the origin is overloaded.
#[tokio::test]
async fn a_429_neither_ends_a_stale_response_nor_makes_the_key_a_pass() {
    let h = Harness::new().await;
    let cc = "max-age=1, stale-while-revalidate=600";
    h.origin
        .reply("/a", Reply::ok("v1").header("cache-control", cc));
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(2));
    h.origin.reply("/a", Reply::ok("slow down").status(429));
    for _ in 0..20 {
        let stale = edge.get("/a").await;
        assert_eq!(stale.text(), "v1", "{}", stale.cache_status());
        assert_eq!(stale.param("detail"), Some("stale-while-revalidate"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.origin.hits("/a"), 2, "one refresh for twenty stale hits");

    // A miss answered 429, then concurrent misses: still collapsed into one request.
    h.origin.reply("/b", Reply::ok("slow down").status(429));
    assert_eq!(edge.get("/b").await.status, 429);
    h.origin.reply(
        "/b",
        Reply::ok("b")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(300)),
    );
    let edge = std::sync::Arc::new(edge);
    let requests = (0..10).map(|_| {
        let edge = edge.clone();
        tokio::spawn(async move { edge.get("/b").await.text().to_owned() })
    });
    for body in join_all(requests).await {
        assert_eq!(body.unwrap(), "b");
    }
    assert_eq!(h.origin.hits("/b"), 2, "the ten made one request");
}
