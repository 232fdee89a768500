//! RFC 9111 §4.4: unsafe methods invalidate stored responses; they are forwarded, never stored.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Harness, Reply, TestEdge};
use http::Method;

/// A response the cache may store for a minute.
fn cacheable(body: &str) -> Reply {
    Reply::ok(body.to_owned()).header("cache-control", "max-age=60")
}

/// Stores `body` for `path` and checks that the next GET is answered from the cache.
async fn prime(h: &Harness, edge: &TestEdge, path: &str, body: &str) {
    h.origin.reply(path, cacheable(body));
    let miss = edge.get(path).await;
    assert_eq!(miss.text(), body, "{path}");
    assert!(miss.stored(), "{path}: {}", miss.cache_status());
    let hit = edge.get(path).await;
    assert!(hit.is_hit(), "{path} not primed: {}", hit.cache_status());
    assert_eq!(hit.text(), body, "{path}");
}

/// After the origin has changed `path` to `new_body`, a GET must go to the origin and get it.
async fn assert_invalidated(h: &Harness, edge: &TestEdge, path: &str, new_body: &str) {
    h.origin.reply(path, cacheable(new_body));
    let before = h.origin.hits(path);
    let after = edge.get(path).await;
    assert!(
        !after.is_hit(),
        "{path} was still served from cache: {}",
        after.cache_status()
    );
    assert_eq!(after.fwd(), Some("uri-miss"), "{path}");
    assert_eq!(after.text(), new_body, "{path}");
    assert_eq!(h.origin.hits(path), before + 1, "{path}");
}

/// After the origin has changed `path`, a GET must still be a hit with the old body.
async fn assert_still_cached(h: &Harness, edge: &TestEdge, path: &str, old_body: &str) {
    h.origin.reply(path, cacheable("changed at the origin"));
    let before = h.origin.hits(path);
    let after = edge.get(path).await;
    assert!(
        after.is_hit(),
        "{path} was invalidated: {}",
        after.cache_status()
    );
    assert_eq!(after.text(), old_body, "{path}");
    assert_eq!(h.origin.hits(path), before, "{path}");
}

/// Deterministic bytes covering every byte value (xorshift64).
fn binary_body(len: usize, seed: u64) -> Bytes {
    let mut x = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

#[tokio::test]
async fn successful_post_invalidates_the_target_uri() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/a", "v1").await;

    h.origin.reply("/a", Reply::ok("created").status(201));
    let post = edge.send(Method::POST, "/a", &[]).await;
    assert_eq!(post.status, 201);
    assert_eq!(post.text(), "created");

    assert_invalidated(&h, &edge, "/a", "v2").await;
    assert_eq!(h.origin.hits("/a"), 3);
}

#[tokio::test]
async fn successful_put_patch_and_delete_invalidate_the_target_uri() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    let cases = [
        (Method::PUT, 200, "/put-200"),
        (Method::PUT, 201, "/put-201"),
        (Method::PATCH, 200, "/patch-200"),
        (Method::PATCH, 204, "/patch-204"),
        (Method::DELETE, 200, "/delete-200"),
        (Method::DELETE, 202, "/delete-202"),
        (Method::DELETE, 204, "/delete-204"),
        (Method::POST, 204, "/post-204"),
    ];
    for (method, status, path) in cases {
        prime(&h, &edge, path, "old").await;
        h.origin.reply(path, Reply::ok("").status(status));
        let answer = edge.send(method.clone(), path, &[]).await;
        assert_eq!(answer.status, status, "{method} {path}");
        assert_eq!(h.origin.last(path).unwrap().method, method, "{path}");
        assert_invalidated(&h, &edge, path, "new").await;
    }
}

#[tokio::test]
async fn redirect_answer_to_post_invalidates_the_target_uri() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    for (status, path) in [
        (301, "/r301"),
        (302, "/r302"),
        (303, "/r303"),
        (307, "/r307"),
    ] {
        prime(&h, &edge, path, "old").await;
        // The Location points at a URI nothing is stored for; only the target is at stake here.
        h.origin.reply(
            path,
            Reply::ok("")
                .status(status)
                .header("location", "/elsewhere"),
        );
        let answer = edge.send(Method::POST, path, &[]).await;
        assert_eq!(answer.status, status, "{path}");
        assert_eq!(answer.header("location"), Some("/elsewhere"), "{path}");
        assert_invalidated(&h, &edge, path, "new").await;
    }
}

#[tokio::test]
async fn error_answer_to_post_does_not_invalidate() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    for status in [400, 403, 404, 409, 500, 502, 503] {
        let path = format!("/e{status}");
        prime(&h, &edge, &path, "kept").await;
        h.origin.reply(&path, Reply::ok("refused").status(status));
        let answer = edge.send(Method::POST, &path, &[]).await;
        assert_eq!(answer.status, status, "{path}");
        assert_eq!(answer.text(), "refused", "{path}");
        assert_eq!(
            h.origin.hits(&path),
            2,
            "{path}: the POST went to the origin"
        );
        assert_still_cached(&h, &edge, &path, "kept").await;
    }
}

#[tokio::test]
async fn error_answer_to_put_and_delete_does_not_invalidate() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    for (method, status, path) in [
        (Method::PUT, 412, "/put-412"),
        (Method::DELETE, 405, "/delete-405"),
        (Method::DELETE, 500, "/delete-500"),
    ] {
        prime(&h, &edge, path, "kept").await;
        h.origin.reply(path, Reply::ok("no").status(status));
        assert_eq!(edge.send(method, path, &[]).await.status, status, "{path}");
        assert_still_cached(&h, &edge, path, "kept").await;
    }
}

#[tokio::test]
async fn unsafe_method_of_unknown_safety_invalidates_the_target_uri() {
    // §4.4: "including methods whose safety is unknown".
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/a", "v1").await;
    h.origin.reply("/a", Reply::ok("frobbed"));
    let method = Method::from_bytes(b"FROB").unwrap();
    let answer = edge.send(method.clone(), "/a", &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "frobbed");
    assert_eq!(h.origin.last("/a").unwrap().method, method);
    assert_invalidated(&h, &edge, "/a", "v2").await;
}

#[tokio::test]
async fn relative_location_is_invalidated() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/a", "a1").await;
    prime(&h, &edge, "/b", "b1").await;

    h.origin.reply(
        "/a",
        Reply::ok("created").status(201).header("location", "/b"),
    );
    let post = edge.send(Method::POST, "/a", &[]).await;
    assert_eq!(post.status, 201);
    assert_eq!(post.header("location"), Some("/b"));

    assert_invalidated(&h, &edge, "/b", "b2").await;
    assert_invalidated(&h, &edge, "/a", "a2").await;
}

#[tokio::test]
async fn relative_location_without_leading_slash_is_resolved_against_the_target() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/dir/item", "i1").await;
    prime(&h, &edge, "/dir/list", "l1").await;

    h.origin.reply(
        "/dir/list",
        Reply::ok("").status(201).header("location", "item"),
    );
    assert_eq!(edge.send(Method::POST, "/dir/list", &[]).await.status, 201);
    assert_invalidated(&h, &edge, "/dir/item", "i2").await;
}

#[tokio::test]
async fn absolute_location_naming_edges_own_host_is_invalidated() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/a", "a1").await;
    prime(&h, &edge, "/b", "b1").await;

    // reqwest sends `Host: 127.0.0.1:PORT` for edge's address: that is edge's public authority.
    let location = format!("http://127.0.0.1:{}/b", edge.addr.port());
    h.origin.reply(
        "/a",
        Reply::ok("created")
            .status(201)
            .header("location", &location),
    );
    let post = edge.send(Method::POST, "/a", &[]).await;
    assert_eq!(post.status, 201);
    assert_eq!(post.header("location"), Some(location.as_str()));

    assert_invalidated(&h, &edge, "/b", "b2").await;
}

#[tokio::test]
async fn content_location_on_the_same_origin_is_invalidated() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/a", "a1").await;
    prime(&h, &edge, "/c", "c1").await;

    h.origin
        .reply("/a", Reply::ok("updated").header("content-location", "/c"));
    let post = edge.send(Method::POST, "/a", &[]).await;
    assert_eq!(post.status, 200);
    assert_eq!(post.header("content-location"), Some("/c"));

    assert_invalidated(&h, &edge, "/c", "c2").await;
    assert_invalidated(&h, &edge, "/a", "a2").await;
}

#[tokio::test]
async fn absolute_content_location_naming_edges_own_host_is_invalidated() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/c", "c1").await;

    let content_location = format!("http://127.0.0.1:{}/c", edge.addr.port());
    h.origin.reply(
        "/a",
        Reply::ok("updated").header("content-location", &content_location),
    );
    assert_eq!(edge.send(Method::PUT, "/a", &[]).await.status, 200);
    assert_invalidated(&h, &edge, "/c", "c2").await;
}

#[tokio::test]
async fn location_naming_another_host_invalidates_nothing_there() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/a", "a1").await;
    prime(&h, &edge, "/b", "b1").await;
    prime(&h, &edge, "/c", "c1").await;

    h.origin.reply(
        "/a",
        Reply::ok("created")
            .status(201)
            .header("location", "http://other.example/b")
            .header("content-location", "http://other.example/c"),
    );
    let post = edge.send(Method::POST, "/a", &[]).await;
    assert_eq!(post.status, 201);

    assert_still_cached(&h, &edge, "/b", "b1").await;
    assert_still_cached(&h, &edge, "/c", "c1").await;
    // The target itself is still invalidated.
    assert_invalidated(&h, &edge, "/a", "a2").await;
}

#[tokio::test]
async fn location_on_same_host_but_another_port_invalidates_nothing() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/b", "b1").await;

    // Same host name, different port: a different origin (RFC 9110 §4.3.1).
    let other_port = if edge.addr.port() == 1 { 2 } else { 1 };
    h.origin.reply(
        "/a",
        Reply::ok("")
            .status(201)
            .header("location", &format!("http://127.0.0.1:{other_port}/b")),
    );
    assert_eq!(edge.send(Method::POST, "/a", &[]).await.status, 201);
    assert_still_cached(&h, &edge, "/b", "b1").await;
}

#[tokio::test]
async fn location_after_an_error_answer_is_not_invalidated() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/b", "b1").await;

    h.origin.reply(
        "/a",
        Reply::ok("conflict")
            .status(409)
            .header("location", "/b")
            .header("content-location", "/b"),
    );
    assert_eq!(edge.send(Method::POST, "/a", &[]).await.status, 409);
    assert_still_cached(&h, &edge, "/b", "b1").await;
}

#[tokio::test]
async fn target_uri_with_a_query_string_is_invalidated_and_other_queries_are_not() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/search?q=1", "one").await;
    prime(&h, &edge, "/search?q=2", "two").await;
    prime(&h, &edge, "/search", "plain").await;

    h.origin
        .reply("/search?q=1", Reply::ok("posted").status(201));
    let post = edge.send(Method::POST, "/search?q=1", &[]).await;
    assert_eq!(post.status, 201);
    assert_eq!(h.origin.last("/search?q=1").unwrap().method, Method::POST);

    assert_invalidated(&h, &edge, "/search?q=1", "one again").await;
    assert_still_cached(&h, &edge, "/search?q=2", "two").await;
    assert_still_cached(&h, &edge, "/search", "plain").await;
}

#[tokio::test]
async fn location_with_a_query_string_is_invalidated() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/items?page=2", "p2").await;

    h.origin.reply(
        "/items",
        Reply::ok("")
            .status(303)
            .header("location", "/items?page=2"),
    );
    assert_eq!(edge.send(Method::POST, "/items", &[]).await.status, 303);
    assert_invalidated(&h, &edge, "/items?page=2", "p2 new").await;
}

#[tokio::test]
async fn invalidation_removes_the_response_from_the_disk_tier_too() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/a", "a1").await;
    prime(&h, &edge, "/kept", "k1").await;
    h.origin.reply("/a", Reply::ok("").status(204));
    assert_eq!(edge.send(Method::DELETE, "/a", &[]).await.status, 204);

    // A restart empties the memory tier; only the disk tier can answer now.
    let edge = edge.restart().await;
    let kept = edge.get("/kept").await;
    assert!(kept.is_hit(), "control: {}", kept.cache_status());
    assert_eq!(kept.param("detail"), Some("disk"));
    assert_eq!(kept.text(), "k1");

    assert_invalidated(&h, &edge, "/a", "a2").await;
}

#[tokio::test]
async fn unsafe_methods_bypass_the_cache_and_are_never_stored() {
    let h = Harness::new().await;
    // Even explicitly cacheable answers to POST are not stored.
    h.origin.reply(
        "/a",
        Reply::ok("created")
            .status(201)
            .header("cache-control", "public, max-age=600"),
    );
    let edge = h.edge().await;

    let first = edge.send(Method::POST, "/a", &[]).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.text(), "created");
    assert_eq!(first.cache_status(), "edge; fwd=method; fwd-status=201");
    assert_eq!(first.age(), None);

    let second = edge.send(Method::POST, "/a", &[]).await;
    assert_eq!(second.status, 201);
    assert_eq!(second.cache_status(), "edge; fwd=method; fwd-status=201");
    assert_eq!(h.origin.hits("/a"), 2);

    // Nor does a later GET get the POST's answer from the cache.
    h.origin.reply("/a", cacheable("the resource"));
    let get = edge.get("/a").await;
    assert_eq!(get.fwd(), Some("uri-miss"));
    assert_eq!(get.text(), "the resource");
    assert_eq!(h.origin.hits("/a"), 3);
}

#[tokio::test]
async fn every_unsafe_method_reports_fwd_method() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("ok").status(201));
    let edge = h.edge().await;
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let answer = edge.send(method.clone(), "/a", &[]).await;
        assert_eq!(answer.status, 201, "{method}");
        assert_eq!(
            answer.cache_status(),
            "edge; fwd=method; fwd-status=201",
            "{method}"
        );
        let again = edge.send(method.clone(), "/a", &[]).await;
        assert_eq!(again.fwd(), Some("method"), "{method}");
    }
    assert_eq!(h.origin.hits("/a"), 8);
}

#[tokio::test]
async fn put_body_reaches_the_origin_byte_identical() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("stored").status(201));
    let edge = h.edge().await;
    let body = binary_body(300 * 1024, 0x9E37_79B9_7F4A_7C15);

    let answer = edge
        .send_body(
            Method::PUT,
            "/a",
            &[("content-type", "application/octet-stream")],
            body.clone(),
        )
        .await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.text(), "stored");

    let received = h.origin.last("/a").unwrap();
    assert_eq!(received.method, Method::PUT);
    assert_eq!(received.body.len(), body.len());
    assert!(received.body == body, "the PUT body was altered on the way");
    assert_eq!(
        received.headers.get("content-type").unwrap(),
        "application/octet-stream"
    );
}

#[tokio::test]
async fn post_body_reaches_the_origin_byte_identical() {
    let h = Harness::new().await;
    h.origin.reply("/upload", Reply::ok("thanks").status(201));
    let edge = h.edge().await;
    let body = binary_body(300 * 1024 + 7, 42);

    let answer = edge
        .send_body(Method::POST, "/upload", &[], body.clone())
        .await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.cache_status(), "edge; fwd=method; fwd-status=201");

    let received = h.origin.last("/upload").unwrap();
    assert_eq!(received.method, Method::POST);
    assert_eq!(received.body.len(), body.len());
    assert!(
        received.body == body,
        "the POST body was altered on the way"
    );
}

#[tokio::test]
async fn post_without_a_body_reaches_the_origin_with_an_empty_body() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("").status(204));
    let edge = h.edge().await;
    assert_eq!(edge.send(Method::POST, "/a", &[]).await.status, 204);
    let received = h.origin.last("/a").unwrap();
    assert_eq!(received.method, Method::POST);
    assert!(received.body.is_empty());
}

#[tokio::test]
async fn location_with_another_scheme_invalidates_nothing() {
    // Edge serves http and https (see `an_https_location_naming_the_host_invalidates_from_the_
    // http_listener`); a URI of another scheme on the same host and port is no resource of its.
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/b", "b1").await;

    let location = format!("ftp://127.0.0.1:{}/b", edge.addr.port());
    h.origin.reply(
        "/a",
        Reply::ok("").status(201).header("location", &location),
    );
    assert_eq!(edge.send(Method::POST, "/a", &[]).await.status, 201);
    assert_still_cached(&h, &edge, "/b", "b1").await;
}

#[tokio::test]
async fn absolute_location_matches_a_host_header_with_an_explicit_default_port() {
    // RFC 9110 §4.2.3: `http://cdn.example:80/` and `http://cdn.example/` are the same origin.
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/b", "b1").await;

    h.origin.reply(
        "/a",
        Reply::ok("")
            .status(201)
            .header("location", "http://cdn.example/b"),
    );
    let post = edge
        .send(Method::POST, "/a", &[("host", "cdn.example:80")])
        .await;
    assert_eq!(post.status, 201);
    // (reqwest sends a `Host` set by hand as written, port included.)
    assert_invalidated(&h, &edge, "/b", "b2").await;
}

/// Behind a TLS terminator, clients ask `https://cdn.example/` and edge's http listener gets
/// the request: an `https` `Location` naming that host is edge's own resource (both schemes of it
/// are invalidated), and one on another port is not.
#[tokio::test]
async fn an_https_location_naming_the_host_invalidates_from_the_http_listener() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/b", "b1").await;
    h.origin.reply(
        "/a",
        Reply::ok("")
            .status(201)
            .header("location", "https://cdn.example:8443/b"),
    );
    let post = edge
        .send(Method::POST, "/a", &[("host", "cdn.example")])
        .await;
    assert_eq!(post.status, 201);
    assert_still_cached(&h, &edge, "/b", "b1").await;

    h.origin.reply(
        "/a",
        Reply::ok("")
            .status(201)
            .header("location", "https://cdn.example/b"),
    );
    let post = edge
        .send(Method::POST, "/a", &[("host", "cdn.example")])
        .await;
    assert_eq!(post.status, 201);
    assert_invalidated(&h, &edge, "/b", "b2").await;
}

#[tokio::test]
async fn absolute_location_matches_the_host_header_case_insensitively() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/b", "b1").await;

    h.origin.reply(
        "/a",
        Reply::ok("")
            .status(201)
            .header("location", "http://cdn.example/b"),
    );
    let post = edge
        .send(Method::POST, "/a", &[("host", "CDN.Example")])
        .await;
    assert_eq!(post.status, 201);
    assert_invalidated(&h, &edge, "/b", "b2").await;
}

#[tokio::test]
async fn an_invalidation_during_a_fill_is_not_undone_by_its_store() {
    let h = Harness::new().await;
    h.origin.reply(
        "/v",
        Reply::ok("old")
            .header("cache-control", "max-age=60")
            .header("vary", "x-v")
            .delay(Duration::from_millis(300)),
    );
    let edge = h.edge().await;
    // Two fills in flight for /v: one in the map, one alone (its Vary value differs).
    let first = edge.get_with("/v", &[("x-v", "a")]);
    let second = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        edge.get_with("/v", &[("x-v", "b")]).await
    };
    let change = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        h.origin.reply("/v", Reply::ok("").status(204));
        let deleted = edge.send(Method::DELETE, "/v", &[]).await;
        h.origin.reply(
            "/v",
            Reply::ok("new")
                .header("cache-control", "max-age=60")
                .header("vary", "x-v"),
        );
        deleted
    };
    let (_, _, deleted) = tokio::join!(first, second, change);
    assert_eq!(deleted.status, 204);
    for value in ["a", "b"] {
        let after = edge.get_with("/v", &[("x-v", value)]).await;
        assert_eq!(
            after.text(),
            "new",
            "x-v: {value}: {}",
            after.cache_status()
        );
    }
}

/// Sends `request` as written and returns the response's status.
async fn raw_status(edge: &TestEdge, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    response.split(' ').nth(1).unwrap().parse().unwrap()
}

/// RFC 9112 §3.2.2: with a target in absolute form, its authority names the request's host, not
/// `Host`: a `Location` on the `Host` header's name is another origin's (it was invalidated), one
/// on the target's is edge's own.
#[tokio::test]
async fn an_absolute_form_target_names_edges_public_host_not_the_host_header() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/b", "b1").await;
    let post = "POST http://a.example/a HTTP/1.1\r\nHost: b.example\r\nContent-Length: 0\r\n\
                Connection: close\r\n\r\n";
    h.origin.reply(
        "/a",
        Reply::ok("")
            .status(201)
            .header("location", "http://b.example/b"),
    );
    assert_eq!(raw_status(&edge, post).await, 201);
    assert_still_cached(&h, &edge, "/b", "b1").await;
    h.origin.reply(
        "/a",
        Reply::ok("")
            .status(201)
            .header("location", "http://a.example/b"),
    );
    assert_eq!(raw_status(&edge, post).await, 201);
    assert_invalidated(&h, &edge, "/b", "b2").await;
}

/// Over HTTP/2 the request's host is its `:authority` (there is no `Host`): a `Location` on it
/// invalidates as it does over HTTP/1.1.
#[tokio::test]
async fn an_http2_location_on_edges_own_authority_is_invalidated() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    prime(&h, &edge, "/b", "b1").await;
    let location = format!("http://127.0.0.1:{}/b", edge.addr.port());
    h.origin.reply(
        "/a",
        Reply::ok("").status(201).header("location", &location),
    );
    let h2 = common::h2_client();
    let post = h2.post(edge.url("/a")).send().await.unwrap();
    assert_eq!(post.version(), http::Version::HTTP_2);
    assert_eq!(post.status(), 201);
    assert_invalidated(&h, &edge, "/b", "b2").await;
}

/// With `origin.strip_query` and `origin.sort_query`, a `Location` or `Content-Location` on the
/// origin names the stored response by its normalised target, as a request for it would: the
/// origin links with its tracking parameters, or its parameters in another order.
#[tokio::test]
async fn location_on_the_origin_is_invalidated_under_the_query_rules() {
    let h = Harness::new().await;
    let edge = h
        .edge_with(|c| {
            c.origin.strip_query = vec!["utm_*".into()];
            c.origin.sort_query = true;
        })
        .await;
    prime(&h, &edge, "/b?x=1", "b1").await;
    prime(&h, &edge, "/c?a=1&b=2", "c1").await;

    h.origin.reply(
        "/a",
        Reply::ok("created")
            .status(201)
            .header("location", "/b?x=1&utm_source=feed")
            .header("content-location", "/c?b=2&a=1"),
    );
    assert_eq!(edge.send(Method::POST, "/a", &[]).await.status, 201);
    assert_invalidated(&h, &edge, "/b?x=1", "b2").await;
    assert_invalidated(&h, &edge, "/c?a=1&b=2", "c2").await;
}
