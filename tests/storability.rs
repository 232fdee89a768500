//! RFC 9111 §3: which responses a shared cache may store, and the cache key (§2, §4.1).

mod common;

use std::time::Duration;

use common::{Harness, Reply};

/// Asserts that `/path` went to the origin twice, i.e. the first response was not reused.
async fn assert_not_reused(h: &Harness, edge: &common::TestEdge, path: &str) {
    let second = edge.get(path).await;
    assert!(
        !second.is_hit(),
        "{path} was served from cache: {}",
        second.cache_status()
    );
    assert_eq!(h.origin.hits(path), 2, "{path}");
}

#[tokio::test]
async fn response_no_store_is_never_stored() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("secret").header("cache-control", "no-store, max-age=60"),
    );
    let edge = h.edge().await;

    let first = edge.get("/a").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "secret");
    assert_eq!(
        first.cache_status(),
        "edge; fwd=uri-miss; fwd-status=200; detail=no-store"
    );
    assert_not_reused(&h, &edge, "/a").await;
}

#[tokio::test]
async fn request_no_store_prevents_storing_the_response() {
    let h = Harness::new().await;
    h.origin
        .reply("/a", Reply::ok("a").header("cache-control", "max-age=60"));
    let edge = h.edge().await;

    let first = edge.get_with("/a", &[("cache-control", "no-store")]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "a");
    assert!(!first.stored(), "{}", first.cache_status());
    assert_eq!(first.param("detail"), Some("no-store"));
    assert_not_reused(&h, &edge, "/a").await;
}

#[tokio::test]
async fn response_private_is_not_stored_by_a_shared_cache() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("alice's page").header("cache-control", "private, max-age=60"),
    );
    let edge = h.edge().await;

    let first = edge.get("/a").await;
    assert_eq!(first.text(), "alice's page");
    assert_eq!(
        first.cache_status(),
        "edge; fwd=uri-miss; fwd-status=200; detail=private"
    );
    assert_not_reused(&h, &edge, "/a").await;
}

#[tokio::test]
async fn qualified_private_is_treated_like_unqualified_private() {
    // §5.2.2.7 lets a shared cache store the rest of the response without the named fields; edge
    // takes the conservative reading and stores nothing, so the named field can never leak.
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("page")
            .header("cache-control", "private=\"x-user\", max-age=60")
            .header("x-user", "alice"),
    );
    let edge = h.edge().await;

    let first = edge.get("/a").await;
    assert_eq!(first.header("x-user"), Some("alice"));
    assert!(!first.stored(), "{}", first.cache_status());
    assert_eq!(first.param("detail"), Some("private"));

    h.origin.reply(
        "/a",
        Reply::ok("page")
            .header("cache-control", "private=\"x-user\", max-age=60")
            .header("x-user", "bob"),
    );
    let second = edge.get("/a").await;
    assert!(!second.is_hit(), "{}", second.cache_status());
    assert_eq!(second.header("x-user"), Some("bob"));
    assert_eq!(h.origin.hits("/a"), 2);
}

#[tokio::test]
async fn authorized_request_response_is_not_stored_without_permission() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("mine").header("cache-control", "max-age=60"),
    );
    let edge = h.edge().await;
    let auth = [("authorization", "Bearer alice")];

    let first = edge.get_with("/a", &auth).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "mine");
    assert_eq!(
        first.cache_status(),
        "edge; fwd=uri-miss; fwd-status=200; detail=authorization"
    );
    let second = edge.get_with("/a", &auth).await;
    assert!(!second.is_hit(), "{}", second.cache_status());
    assert_eq!(h.origin.hits("/a"), 2);
}

/// §3.5: `public`, `s-maxage` and `must-revalidate` each allow storing an authenticated response.
async fn authorized_response_is_stored_with(cache_control: &str, ttl: &str) {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("shared").header("cache-control", cache_control),
    );
    let edge = h.edge().await;
    let auth = [("authorization", "Bearer alice")];

    let first = edge.get_with("/a", &auth).await;
    assert_eq!(first.text(), "shared");
    assert_eq!(
        first.cache_status(),
        format!("edge; fwd=uri-miss; fwd-status=200; stored; ttl={ttl}"),
        "{cache_control}"
    );
    h.clock.advance(Duration::from_secs(1));
    let second = edge.get_with("/a", &auth).await;
    assert!(
        second.is_hit(),
        "{cache_control}: {}",
        second.cache_status()
    );
    assert_eq!(second.text(), "shared");
    assert_eq!(second.age(), Some(1));
    assert_eq!(h.origin.hits("/a"), 1, "{cache_control}");
}

#[tokio::test]
async fn authorized_request_response_with_public_is_stored() {
    authorized_response_is_stored_with("public, max-age=60", "60").await;
}

#[tokio::test]
async fn authorized_request_response_with_s_maxage_is_stored() {
    authorized_response_is_stored_with("s-maxage=60", "60").await;
}

#[tokio::test]
async fn authorized_request_response_with_must_revalidate_is_stored() {
    authorized_response_is_stored_with("must-revalidate, max-age=60", "60").await;
}

/// With `must-revalidate` alone, an answer to a request with `Authorization` may be stored (RFC
/// 9111 §3.5), but the origin gave it no freshness: a lifetime edge guesses, from `Last-Modified`
/// (§4.2.2) or the operator's `negative_ttl`, would serve that user's page to everyone else
/// without asking the origin, as `default_ttl` would. Explicit freshness, or `public`, still
/// share it.
#[tokio::test]
async fn an_authorized_answer_stored_only_by_must_revalidate_gets_no_heuristic_freshness() {
    let h = Harness::new().await;
    let modified = common::http_date(common::start_time() - Duration::from_secs(100_000));
    let mine = |body: &'static str, status: u16, cache_control: &str| {
        Reply::ok(body)
            .status(status)
            .header("cache-control", cache_control)
            .header("last-modified", &modified)
    };
    h.origin
        .reply("/account", mine("alice's account", 200, "must-revalidate"));
    h.origin
        .reply("/order/7", mine("not yours", 404, "must-revalidate"));
    h.origin.reply(
        "/shared",
        mine("everyone's", 200, "public, must-revalidate"),
    );
    let edge = h
        .edge_with(|c| c.cache.heuristic.negative_ttl.0 = Duration::from_secs(60))
        .await;
    let alice = [("authorization", "Bearer alice")];
    for path in ["/account", "/order/7"] {
        let first = edge.get_with(path, &alice).await;
        assert_eq!(
            first.param("detail"),
            Some("authorization"),
            "{path}: {}",
            first.cache_status()
        );
        h.origin
            .reply(path, mine("sign in", 401, "must-revalidate"));
        let anonymous = edge.get(path).await;
        assert_eq!(
            (anonymous.status, anonymous.text()),
            (401, "sign in"),
            "{path}: {}",
            anonymous.cache_status()
        );
        assert_eq!(h.origin.hits(path), 2, "{path}");
    }
    // `public` says the answer is everyone's: the heuristic (10% of 100,000 s) applies.
    let first = edge.get_with("/shared", &alice).await;
    assert_eq!(
        first.param("ttl"),
        Some("10000"),
        "{}",
        first.cache_status()
    );
    assert!(edge.get("/shared").await.is_hit());
    assert_eq!(h.origin.hits("/shared"), 1);
}

#[tokio::test]
async fn set_cookie_response_is_never_stored_or_handed_to_another_client() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("welcome")
            .header("cache-control", "max-age=60")
            .header("set-cookie", "session=alice"),
    );
    let edge = h.edge().await;

    let alice = edge.get("/a").await;
    assert_eq!(alice.text(), "welcome");
    assert_eq!(alice.header("set-cookie"), Some("session=alice"));
    assert_eq!(
        alice.cache_status(),
        "edge; fwd=uri-miss; fwd-status=200; detail=set-cookie"
    );

    // The origin no longer sets a cookie: anything Bob sees could only come from the cache.
    h.origin.reply(
        "/a",
        Reply::ok("welcome").header("cache-control", "max-age=60"),
    );
    let bob = edge.get("/a").await;
    assert_eq!(bob.text(), "welcome");
    assert_eq!(bob.header("set-cookie"), None);
    assert!(!bob.is_hit(), "{}", bob.cache_status());
    assert_eq!(h.origin.hits("/a"), 2);
}

/// RFC 9111 §3.1: `Proxy-Authenticate` and `Proxy-Authentication-Info` are for the client of
/// the proxy that sent them (edge), and a cache must not store them: a response carrying either is
/// passed on to the request that asked, and not stored.
#[tokio::test]
async fn responses_with_proxy_authentication_fields_are_not_stored() {
    let h = Harness::new().await;
    let replies = [
        (
            "/challenge",
            407,
            "proxy-authenticate",
            "Basic realm=\"upstream\"",
        ),
        (
            "/info",
            200,
            "proxy-authentication-info",
            "nextnonce=\"n1\"",
        ),
    ];
    for (path, status, name, value) in replies {
        h.origin.reply(
            path,
            Reply::ok("body")
                .status(status)
                .header("cache-control", "max-age=60")
                .header(name, value),
        );
    }
    let edge = h.edge().await;
    for (path, status, name, value) in replies {
        let first = edge.get(path).await;
        assert_eq!(first.status, status);
        assert_eq!(first.header(name), Some(value));
        assert_eq!(first.param("detail"), Some("proxy-authenticate"), "{path}");
        let second = edge.get(path).await;
        assert!(!second.is_hit(), "{path}: {}", second.cache_status());
        assert_eq!(h.origin.hits(path), 2, "{path}");
    }
}

#[tokio::test]
async fn partial_content_206_is_never_stored() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("01234")
            .status(206)
            .header("content-range", "bytes 0-4/10")
            .header("cache-control", "max-age=60"),
    );
    let edge = h.edge().await;

    let first = edge.get("/a").await;
    assert_eq!(first.status, 206);
    assert_eq!(first.text(), "01234");
    assert_eq!(
        first.cache_status(),
        "edge; fwd=uri-miss; fwd-status=206; detail=status"
    );
    assert_not_reused(&h, &edge, "/a").await;
}

#[tokio::test]
async fn not_modified_304_is_never_stored() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("")
            .status(304)
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=60"),
    );
    let edge = h.edge().await;

    let first = edge.get("/a").await;
    assert_eq!(first.status, 304);
    assert_eq!(
        first.cache_status(),
        "edge; fwd=uri-miss; fwd-status=304; detail=status"
    );
    assert_not_reused(&h, &edge, "/a").await;
}

#[tokio::test]
async fn redirect_302_without_explicit_freshness_is_not_stored() {
    let h = Harness::new().await;
    h.origin.reply(
        "/moved",
        Reply::ok("")
            .status(302)
            .header("location", "/elsewhere")
            .header("etag", "\"r\""),
    );
    let edge = h.edge().await;

    let first = edge.get("/moved").await;
    assert_eq!(first.status, 302);
    assert_eq!(first.header("location"), Some("/elsewhere"));
    assert_eq!(
        first.cache_status(),
        "edge; fwd=uri-miss; fwd-status=302; detail=status"
    );
    assert_not_reused(&h, &edge, "/moved").await;
}

#[tokio::test]
async fn redirect_302_with_max_age_is_stored() {
    let h = Harness::new().await;
    h.origin.reply(
        "/moved",
        Reply::ok("")
            .status(302)
            .header("location", "/elsewhere")
            .header("cache-control", "max-age=60"),
    );
    let edge = h.edge().await;

    let first = edge.get("/moved").await;
    assert_eq!(first.status, 302);
    assert_eq!(
        first.cache_status(),
        "edge; fwd=uri-miss; fwd-status=302; stored; ttl=60"
    );
    let hit = edge.get("/moved").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.status, 302);
    assert_eq!(hit.header("location"), Some("/elsewhere"));
    assert_eq!(h.origin.hits("/moved"), 1);
}

#[tokio::test]
async fn not_found_404_with_max_age_is_stored_and_served_as_a_404_hit() {
    let h = Harness::new().await;
    h.origin.reply(
        "/gone",
        Reply::ok("nothing here")
            .status(404)
            .header("cache-control", "max-age=60"),
    );
    let edge = h.edge().await;

    let first = edge.get("/gone").await;
    assert_eq!(first.status, 404);
    assert_eq!(
        first.cache_status(),
        "edge; fwd=uri-miss; fwd-status=404; stored; ttl=60"
    );
    h.clock.advance(Duration::from_secs(10));
    let hit = edge.get("/gone").await;
    assert_eq!(hit.status, 404);
    assert_eq!(hit.text(), "nothing here");
    assert_eq!(hit.cache_status(), "edge; hit; ttl=50; detail=memory");
    assert_eq!(hit.age(), Some(10));
    assert_eq!(h.origin.hits("/gone"), 1);
}

#[tokio::test]
async fn server_error_500_with_explicit_freshness_is_stored() {
    let h = Harness::new().await;
    h.origin.reply(
        "/err",
        Reply::ok("broken")
            .status(500)
            .header("cache-control", "max-age=60"),
    );
    let edge = h.edge().await;

    let first = edge.get("/err").await;
    assert_eq!(first.status, 500);
    assert!(first.stored(), "{}", first.cache_status());
    let hit = edge.get("/err").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.status, 500);
    assert_eq!(hit.text(), "broken");
    assert_eq!(h.origin.hits("/err"), 1);
}

#[tokio::test]
async fn response_with_neither_freshness_nor_validator_is_not_stored() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("plain"));
    let edge = h.edge().await;

    let first = edge.get("/a").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "plain");
    assert_eq!(
        first.cache_status(),
        "edge; fwd=uri-miss; fwd-status=200; detail=no-freshness"
    );
    assert_not_reused(&h, &edge, "/a").await;
}

/// RFC 9110 §8.8.2, §13.1.3: a `Last-Modified` that is not an HTTP-date is no validator (the
/// origin must ignore it sent back as `If-Modified-Since`), so with no freshness either the
/// response is not stored. It was, as `stored; ttl=0`, and each later request was a full fetch
/// sent `If-Modified-Since: garbage`, counted stale and written to disk again. A date that names
/// the wrong day of the week is a date all the same (as nginx reads it), sent back as it came.
#[tokio::test]
async fn a_last_modified_that_is_not_a_date_is_no_validator() {
    let h = Harness::new().await;
    h.origin.reply(
        "/garbage",
        Reply::ok("plain").header("last-modified", "garbage"),
    );
    let edge = h.edge().await;
    let first = edge.get("/garbage").await;
    assert_eq!(first.text(), "plain");
    assert_eq!(
        first.cache_status(),
        "edge; fwd=uri-miss; fwd-status=200; detail=no-freshness"
    );
    assert_not_reused(&h, &edge, "/garbage").await;
    let sent = h.origin.last("/garbage").unwrap();
    assert!(!sent.headers.contains_key("if-modified-since"));

    for (path, date) in [
        ("/valid", "Tue, 01 Dec 2026 10:00:00 GMT"),
        // 1 December 2026 was a Tuesday.
        ("/weekday", "Mon, 01 Dec 2026 10:00:00 GMT"),
    ] {
        h.origin.reply(
            path,
            Reply::ok("plain")
                .header("last-modified", date)
                .header("cache-control", "no-cache"),
        );
        assert!(edge.get(path).await.stored(), "{path}");
        edge.get(path).await;
        let sent = h.origin.last(path).unwrap();
        assert_eq!(sent.headers["if-modified-since"], date, "{path}");
    }
}

#[tokio::test]
async fn vary_star_is_never_stored() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Language, *"),
    );
    let edge = h.edge().await;

    let first = edge.get("/a").await;
    assert_eq!(
        first.cache_status(),
        "edge; fwd=uri-miss; fwd-status=200; detail=vary-star"
    );
    assert_not_reused(&h, &edge, "/a").await;
}

/// The origin saw `X-Forwarded-For` with the client's address, which edge appends: chosen by the
/// client's own `X-Forwarded-For` (none, for most), one client's variant would be every client's.
#[tokio::test]
async fn a_response_varying_on_the_client_address_is_not_stored() {
    for vary in ["X-Forwarded-For", "Accept-Language, x-forwarded-for"] {
        let h = Harness::new().await;
        h.origin.reply(
            "/a",
            Reply::ok("for 127.0.0.1")
                .header("cache-control", "max-age=60")
                .header("vary", vary),
        );
        let edge = h.edge().await;
        let first = edge.get("/a").await;
        assert_eq!(
            first.cache_status(),
            "edge; fwd=uri-miss; fwd-status=200; detail=vary-client",
            "{vary}"
        );
        assert_not_reused(&h, &edge, "/a").await;
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn object_larger_than_max_object_size_is_passed_through_unstored() {
    let h = Harness::new().await;
    let body = pattern(4096);
    h.origin.reply(
        "/big",
        Reply::ok(body.clone()).header("cache-control", "max-age=60"),
    );
    let edge = h.edge_with(|c| c.cache.max_object_size.0 = 1024).await;

    let first = edge.get("/big").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("content-length"), Some("4096"));
    assert_eq!(first.body.as_ref(), body.as_slice());
    assert_eq!(
        first.cache_status(),
        "edge; fwd=uri-miss; fwd-status=200; detail=too-large"
    );
    let second = edge.get("/big").await;
    assert!(!second.is_hit(), "{}", second.cache_status());
    assert_eq!(second.body.as_ref(), body.as_slice());
    assert_eq!(h.origin.hits("/big"), 2);
}

#[tokio::test]
async fn object_of_exactly_max_object_size_is_stored() {
    let h = Harness::new().await;
    let body = pattern(1024);
    h.origin.reply(
        "/edge",
        Reply::ok(body.clone()).header("cache-control", "max-age=60"),
    );
    let edge = h.edge_with(|c| c.cache.max_object_size.0 = 1024).await;

    let first = edge.get("/edge").await;
    assert!(first.stored(), "{}", first.cache_status());
    let hit = edge.get("/edge").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.body.as_ref(), body.as_slice());
    assert_eq!(h.origin.hits("/edge"), 1);
}

#[tokio::test]
async fn query_string_is_part_of_the_cache_key() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a?x=1",
        Reply::ok("one").header("cache-control", "max-age=60"),
    );
    h.origin.reply(
        "/a?x=2",
        Reply::ok("two").header("cache-control", "max-age=60"),
    );
    let edge = h.edge().await;

    let one = edge.get("/a?x=1").await;
    assert_eq!(one.text(), "one");
    assert_eq!(one.fwd(), Some("uri-miss"));
    let two = edge.get("/a?x=2").await;
    assert_eq!(two.text(), "two");
    assert_eq!(two.fwd(), Some("uri-miss"));

    let one_again = edge.get("/a?x=1").await;
    assert!(one_again.is_hit(), "{}", one_again.cache_status());
    assert_eq!(one_again.text(), "one");
    let two_again = edge.get("/a?x=2").await;
    assert!(two_again.is_hit(), "{}", two_again.cache_status());
    assert_eq!(two_again.text(), "two");

    assert_eq!(h.origin.hits("/a?x=1"), 1);
    assert_eq!(h.origin.hits("/a?x=2"), 1);
    assert_eq!(h.origin.hits("/a"), 0);
}

/// `origin.strip_query` takes tracking parameters out of the request before it is looked up and
/// forwarded (the origin never sees them, so the stored response cannot depend on them), and
/// `origin.sort_query` orders the rest by name: requests that differ only so share one stored
/// response. A purge names it either way; a parameter whose name only begins like one listed
/// without `*` is kept, as is the order of two of one name.
#[tokio::test]
async fn stripped_and_sorted_query_parameters_share_one_stored_response() {
    let h = Harness::new().await;
    let cached = |body: &'static str| Reply::ok(body).header("cache-control", "max-age=60");
    h.origin.reply("/a?id=1", cached("one"));
    h.origin.reply("/a", cached("none"));
    h.origin.reply("/a?a=1&b=2", cached("ab"));
    h.origin.reply("/a?fbclidx=1&tag=2&tag=1", cached("tags"));
    let edge = h
        .edge_with(|c| {
            c.origin.strip_query = vec!["utm_*".into(), "fbclid".into()];
            c.origin.sort_query = true;
        })
        .await;

    for (path, body, hit) in [
        ("/a?utm_source=x&id=1", "one", false),
        ("/a?id=1&utm_medium=y&fbclid=z", "one", true),
        ("/a?id=1", "one", true),
        ("/a?utm_source=x", "none", false),
        ("/a", "none", true),
        ("/a?b=2&a=1&utm_campaign=c", "ab", false),
        ("/a?a=1&b=2", "ab", true),
        ("/a?tag=2&fbclidx=1&tag=1", "tags", false),
    ] {
        let got = edge.get(path).await;
        assert_eq!(got.text(), body, "{path}");
        assert_eq!(got.is_hit(), hit, "{path}: {}", got.cache_status());
    }
    let asked: Vec<String> = h.origin.received().into_iter().map(|r| r.uri).collect();
    assert_eq!(
        asked,
        ["/a?id=1", "/a", "/a?a=1&b=2", "/a?fbclidx=1&tag=2&tag=1"]
    );

    let purge = http::Method::from_bytes(b"PURGE").unwrap();
    let purged = edge.send(purge, "/a?utm_source=q&id=1", &[]).await;
    assert_eq!(purged.status, 200);
    assert!(purged.text().contains("\"purged\":1"), "{}", purged.text());
    assert!(!edge.get("/a?id=1").await.is_hit());
    assert_eq!(h.origin.hits("/a?id=1"), 2);
}

#[tokio::test]
async fn vary_response_is_only_served_to_requests_with_the_same_value() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("gzip-flavoured")
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Encoding"),
    );
    let edge = h.edge().await;
    let gzip = [("accept-encoding", "gzip")];
    let br = [("accept-encoding", "br")];

    let first = edge.get_with("/a", &gzip).await;
    assert!(first.stored(), "{}", first.cache_status());

    let same = edge.get_with("/a", &gzip).await;
    assert!(same.is_hit(), "{}", same.cache_status());
    assert_eq!(same.text(), "gzip-flavoured");
    assert_eq!(h.origin.hits("/a"), 1);

    h.origin.reply(
        "/a",
        Reply::ok("br-flavoured")
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Encoding"),
    );
    let different = edge.get_with("/a", &br).await;
    assert!(!different.is_hit(), "{}", different.cache_status());
    assert_eq!(different.fwd(), Some("vary-miss"));
    assert_eq!(different.text(), "br-flavoured");
    assert_eq!(h.origin.hits("/a"), 2);
    assert_eq!(
        h.origin
            .last("/a")
            .unwrap()
            .headers
            .get("accept-encoding")
            .unwrap(),
        "br"
    );

    // A request without the header does not match either stored value.
    let absent = edge.get("/a").await;
    assert_eq!(absent.fwd(), Some("vary-miss"), "{}", absent.cache_status());
    assert_eq!(h.origin.hits("/a"), 3);
}

#[tokio::test]
async fn must_understand_overrides_no_store_for_an_understood_status() {
    // §5.2.2.3: a cache that understands the status code ignores no-store next to must-understand.
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("understood").header("cache-control", "must-understand, no-store, max-age=60"),
    );
    let edge = h.edge().await;

    let first = edge.get("/a").await;
    assert_eq!(
        first.cache_status(),
        "edge; fwd=uri-miss; fwd-status=200; stored; ttl=60"
    );
    let hit = edge.get("/a").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.text(), "understood");
    assert_eq!(h.origin.hits("/a"), 1);
}

#[tokio::test]
async fn must_understand_with_an_unknown_status_is_not_stored() {
    // §5.2.2.3: a status code the cache does not understand must not be stored.
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("odd")
            .status(299)
            .header("cache-control", "must-understand, no-store, max-age=60"),
    );
    let edge = h.edge().await;

    let first = edge.get("/a").await;
    assert_eq!(first.status, 299);
    assert!(!first.stored(), "{}", first.cache_status());
    assert_not_reused(&h, &edge, "/a").await;
}

#[tokio::test]
async fn response_with_an_empty_body_is_stored_and_served() {
    let h = Harness::new().await;
    h.origin.reply(
        "/empty",
        Reply::ok("").header("cache-control", "max-age=60"),
    );
    let edge = h.edge().await;

    let first = edge.get("/empty").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.cache_status(),
        "edge; fwd=uri-miss; fwd-status=200; stored; ttl=60"
    );
    let hit = edge.get("/empty").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.status, 200);
    assert!(hit.body.is_empty());
    assert_eq!(hit.header("content-length"), Some("0"));
    assert_eq!(h.origin.hits("/empty"), 1);
}

#[tokio::test]
async fn redirect_302_with_a_body_and_max_age_is_stored() {
    let h = Harness::new().await;
    h.origin.reply(
        "/moved",
        Reply::ok("see /elsewhere")
            .status(302)
            .header("location", "/elsewhere")
            .header("cache-control", "max-age=60"),
    );
    let edge = h.edge().await;

    let first = edge.get("/moved").await;
    assert!(first.stored(), "{}", first.cache_status());
    let hit = edge.get("/moved").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.status, 302);
    assert_eq!(hit.header("location"), Some("/elsewhere"));
    assert_eq!(hit.text(), "see /elsewhere");
    assert_eq!(h.origin.hits("/moved"), 1);
}

#[tokio::test]
async fn no_content_204_with_max_age_is_stored() {
    let h = Harness::new().await;
    h.origin.reply(
        "/none",
        Reply::ok("")
            .status(204)
            .header("cache-control", "max-age=60"),
    );
    let edge = h.edge().await;

    let first = edge.get("/none").await;
    assert_eq!(first.status, 204);
    assert!(first.stored(), "{}", first.cache_status());
    let hit = edge.get("/none").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.status, 204);
    assert!(hit.body.is_empty());
    assert_eq!(h.origin.hits("/none"), 1);
}

/// An edge in front of an origin that answers every request with `response`, byte for byte.
async fn edge_before_raw(h: &Harness, response: &[u8]) -> (common::TestEdge, RequestCount) {
    let (origin, requests) = common::raw_origin(Vec::leak(response.to_vec())).await;
    (h.edge_before(origin).await, requests)
}

type RequestCount = std::sync::Arc<std::sync::atomic::AtomicUsize>;

fn count(requests: &RequestCount) -> usize {
    requests.load(std::sync::atomic::Ordering::SeqCst)
}

/// A quoted argument may hold bytes outside ASCII (obs-text, RFC 9110 §5.6.4): the directives
/// beside it still count. `private` and `no-store` were skipped with such a line, and one
/// client's response was served to the next.
#[tokio::test]
async fn a_cache_control_line_with_bytes_outside_ascii_is_still_obeyed() {
    let h = Harness::new().await;
    let responses: [&[u8]; 3] = [
        b"HTTP/1.1 200 OK\r\nCache-Control: private, ext=\"caf\xe9\"\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Length: 12\r\n\r\nsecret-alice",
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nCache-Control: no-store, x=\"\xe9\"\r\nContent-Length: 12\r\n\r\nsecret-alice",
        // Surrogate-Control, which replaces Cache-Control for edge, alike.
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nSurrogate-Control: no-store, x=\"\xe9\"\r\nContent-Length: 12\r\n\r\nsecret-alice",
    ];
    for response in responses {
        let (edge, requests) = edge_before_raw(&h, response).await;
        let first = edge.get("/a").await;
        assert_eq!(first.text(), "secret-alice");
        assert!(!first.stored(), "{}", first.cache_status());
        let second = edge.get("/a").await;
        assert!(!second.is_hit(), "{}", second.cache_status());
        assert_eq!(count(&requests), 2);
    }
}

/// RFC 9111 §4.1: a `Vary` edge cannot match a request against (a member that is not a field
/// name, or a line that is not ASCII) is taken as `Vary: *`: the response is not stored. It was
/// stored as if it did not vary, and served to requests with other values.
#[tokio::test]
async fn a_vary_that_does_not_parse_is_not_stored() {
    let h = Harness::new().await;
    let varies: [&[u8]; 4] = [
        b"\"Accept-Encoding\"",
        b"Accept-Encoding, X-\xe9",
        b"*, X-\xe9",
        b"Accept-Encoding, a b",
    ];
    for vary in varies {
        let mut response = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nVary: ".to_vec();
        response.extend_from_slice(vary);
        response.extend_from_slice(b"\r\nContent-Length: 4\r\n\r\ngzip");
        let (edge, requests) = edge_before_raw(&h, &response).await;
        let vary = String::from_utf8_lossy(vary);
        let first = edge.get_with("/a", &[("accept-encoding", "gzip")]).await;
        assert_eq!(first.status, 200, "{vary}");
        assert_eq!(
            first.param("detail"),
            Some("vary-star"),
            "{vary}: {}",
            first.cache_status()
        );
        let other = edge.get_with("/a", &[("accept-encoding", "br")]).await;
        assert!(!other.is_hit(), "{vary}: {}", other.cache_status());
        assert_eq!(count(&requests), 2, "{vary}");
    }

    // Empty list members are allowed (RFC 9110 §5.6.1), and such a response is stored.
    let (edge, requests) = edge_before_raw(
        &h,
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nVary: , Accept-Encoding ,\r\nContent-Length: 4\r\n\r\ngzip",
    )
    .await;
    assert!(
        edge.get_with("/a", &[("accept-encoding", "gzip")])
            .await
            .stored()
    );
    assert!(
        edge.get_with("/a", &[("accept-encoding", "gzip")])
            .await
            .is_hit()
    );
    assert!(
        !edge
            .get_with("/a", &[("accept-encoding", "br")])
            .await
            .is_hit()
    );
    assert_eq!(count(&requests), 2);
}

/// Status codes above 599 are invalid (RFC 9110 §15), which hyper lets through: a 502, as a 5xx
/// from the origin would be, and never stored.
#[tokio::test]
async fn a_status_above_599_is_not_stored() {
    let h = Harness::new().await;
    let (edge, requests) = edge_before_raw(
        &h,
        b"HTTP/1.1 600 Odd\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    let first = edge.get("/a").await;
    assert_eq!(first.status, 502);
    assert_eq!(first.param("detail"), Some("origin-invalid"));
    assert!(!first.stored(), "{}", first.cache_status());
    assert!(!edge.get("/a").await.is_hit());
    assert_eq!(count(&requests), 2);
}

/// Request header values that are not UTF-8 are told apart when a response varies on them: two
/// different ones read alike once each was made UTF-8 with U+FFFD.
#[tokio::test]
async fn vary_tells_apart_values_that_are_not_utf8() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("v")
            .header("cache-control", "max-age=60")
            .header("vary", "x-name"),
    );
    let edge = h.edge().await;
    let get = |value: &'static [u8]| {
        let request = edge
            .client
            .get(edge.url("/a"))
            .header("x-name", http::HeaderValue::from_bytes(value).unwrap());
        async move { request.send().await.unwrap().headers().clone() }
    };
    let status = |headers: &http::HeaderMap| headers["cache-status"].to_str().unwrap().to_owned();
    assert!(status(&get(b"caf\xe9").await).contains("stored"));
    assert!(status(&get(b"caf\xe9").await).contains("hit"));
    let other = get(b"caf\xfc").await;
    assert!(!status(&other).contains("hit"), "{}", status(&other));
    assert_eq!(h.origin.hits("/a"), 2);
}
