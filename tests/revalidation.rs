//! RFC 9111 §4.3: validation of stale responses — conditional requests built from the stored
//! validators, refreshing on 304 (§4.3.4, §3.2), replacing on 200, and one revalidation per key.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Harness, Reply, http_date, start_time};
use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An origin speaking raw HTTP/1.1, for answers that depend on the request's headers (which the
/// fixture origin cannot script). `answer` gets the request's number (from 0) and its head, and
/// returns the whole response; every connection is closed after one answer.
struct RawOrigin {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl RawOrigin {
    async fn start(answer: impl Fn(usize, &str) -> String + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (seen, answer) = (seen.clone(), answer.clone());
                tokio::spawn(async move {
                    let head = read_head(&mut socket).await;
                    let index = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(head.clone());
                        seen.len() - 1
                    };
                    let response = answer(index, &head);
                    socket.write_all(response.as_bytes()).await.unwrap();
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { addr, heads }
    }

    fn url(&self) -> edge::config::OriginUrl {
        edge::config::OriginUrl(format!("http://{}", self.addr).parse().unwrap())
    }

    /// The heads of the requests received, oldest first.
    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

async fn read_head(socket: &mut tokio::net::TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(received).unwrap()
}

/// The value of header `name` in a raw request head, if present.
fn raw_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A whole HTTP/1.1 response that closes its connection.
fn raw_response(status_line: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut out = format!("HTTP/1.1 {status_line}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("connection: close\r\n\r\n");
    out.push_str(body);
    out
}

/// The heads `origin` received, checked to be the fill, one revalidation with `If-None-Match:
/// etag`, and one request more without it (RFC 9111 §4.3.4: the 304 selected nothing stored).
fn refetched_once_unconditionally(origin: &RawOrigin, etag: &str) -> Vec<String> {
    let heads = origin.heads();
    assert_eq!(heads.len(), 3, "one conditional request, then one more");
    assert_eq!(raw_header(&heads[1], "if-none-match"), Some(etag));
    assert_eq!(raw_header(&heads[2], "if-none-match"), None);
    heads
}

fn pattern(len: u32) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn a_stale_entry_with_an_etag_is_revalidated_with_if_none_match() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("alpha")
            .header("cache-control", "max-age=10")
            .header("etag", "\"v1\""),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    assert!(
        h.origin
            .last("/a")
            .unwrap()
            .headers
            .get("if-none-match")
            .is_none(),
        "the first fetch is unconditional"
    );
    h.clock.advance(Duration::from_secs(15));
    h.origin
        .reply("/a", Reply::ok("").status(304).header("etag", "\"v1\""));

    let revalidated = edge.get("/a").await;
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.text(), "alpha");
    assert_eq!(h.origin.hits("/a"), 2);
    let sent = h.origin.last("/a").unwrap().headers;
    assert_eq!(sent["if-none-match"], "\"v1\"");
    assert!(
        sent.get("if-modified-since").is_none(),
        "no Last-Modified was stored, so there is no date to validate with"
    );
    // The 304 brought a new Date and no Cache-Control: the stored max-age=10 counts from now.
    assert_eq!(
        revalidated.cache_status(),
        "edge; fwd=stale; fwd-status=304; stored; ttl=10"
    );
}

#[tokio::test]
async fn a_stale_entry_with_last_modified_is_revalidated_with_if_modified_since() {
    let h = Harness::new().await;
    let modified = http_date(start_time() - Duration::from_secs(3600));
    h.origin.reply(
        "/a",
        Reply::ok("alpha")
            .header("cache-control", "max-age=10")
            .header("last-modified", &modified),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(15));
    h.origin.reply("/a", Reply::ok("").status(304));

    let revalidated = edge.get("/a").await;
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.text(), "alpha");
    assert_eq!(revalidated.param("fwd-status"), Some("304"));
    let sent = h.origin.last("/a").unwrap().headers;
    assert_eq!(sent["if-modified-since"], modified.as_str());
    assert!(sent.get("if-none-match").is_none(), "no ETag was stored");
}

#[tokio::test]
async fn a_stale_entry_with_both_validators_sends_both_conditions() {
    let h = Harness::new().await;
    let modified = http_date(start_time() - Duration::from_secs(3600));
    h.origin.reply(
        "/a",
        Reply::ok("alpha")
            .header("cache-control", "max-age=10")
            .header("etag", "W/\"v1\"")
            .header("last-modified", &modified),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(15));
    h.origin
        .reply("/a", Reply::ok("").status(304).header("etag", "W/\"v1\""));
    let revalidated = edge.get("/a").await;
    assert_eq!(revalidated.text(), "alpha");
    assert_eq!(revalidated.param("fwd-status"), Some("304"));
    let sent = h.origin.last("/a").unwrap().headers;
    assert_eq!(sent["if-none-match"], "W/\"v1\"");
    assert_eq!(sent["if-modified-since"], modified.as_str());
}

#[tokio::test]
async fn a_stale_entry_without_validators_is_fetched_unconditionally() {
    let h = Harness::new().await;
    h.origin
        .reply("/a", Reply::ok("v1").header("cache-control", "max-age=10"));
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(15));
    h.origin
        .reply("/a", Reply::ok("v2").header("cache-control", "max-age=10"));
    let refreshed = edge.get("/a").await;
    assert_eq!(refreshed.text(), "v2");
    assert_eq!(refreshed.fwd(), Some("stale"));
    let sent = h.origin.last("/a").unwrap().headers;
    assert!(sent.get("if-none-match").is_none());
    assert!(sent.get("if-modified-since").is_none());
}

/// RFC 9111 §4.3.4: a 304 without a validator selects the one stored response when that has none
/// either, whatever made the origin send it to an unconditional request. The client, which sent
/// no condition, got the bare 304, and the key became hit-for-pass.
#[tokio::test]
async fn a_304_to_the_refetch_of_an_entry_without_validators_refreshes_it() {
    let h = Harness::new().await;
    h.origin
        .reply("/a", Reply::ok("v1").header("cache-control", "max-age=10"));
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(15));
    h.origin.reply(
        "/a",
        Reply::ok("")
            .status(304)
            .header("cache-control", "max-age=100"),
    );
    let refreshed = edge.get("/a").await;
    assert_eq!((refreshed.status, refreshed.text()), (200, "v1"));
    assert_eq!(
        refreshed.cache_status(),
        "edge; fwd=stale; fwd-status=304; stored; ttl=100"
    );
    let hit = edge.get("/a").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(h.origin.hits("/a"), 2);
}

#[tokio::test]
async fn the_clients_conditions_and_range_are_not_sent_to_the_origin_on_a_fill() {
    let h = Harness::new().await;
    let modified = http_date(start_time() - Duration::from_secs(3600));
    h.origin.reply(
        "/a",
        Reply::ok("0123456789")
            .header("cache-control", "max-age=10")
            .header("etag", "\"v1\"")
            .header("last-modified", &modified),
    );
    let edge = h.edge().await;
    let long_ago = http_date(start_time() - Duration::from_secs(86_400));
    let later = http_date(start_time() + Duration::from_secs(86_400));
    let client_headers = [
        ("if-none-match", "\"client\""),
        ("if-modified-since", long_ago.as_str()),
        ("if-match", "*"),
        ("if-unmodified-since", later.as_str()),
        ("if-range", "\"v1\""),
        ("range", "bytes=0-3"),
    ];
    let forbidden = [
        "if-none-match",
        "if-modified-since",
        "if-match",
        "if-unmodified-since",
        "if-range",
        "range",
    ];

    // A miss: the origin is asked for the whole, current representation.
    let miss = edge.get_with("/a", &client_headers).await;
    assert_eq!(miss.status, 206, "edge answers the range itself");
    assert_eq!(miss.text(), "0123");
    let sent = h.origin.last("/a").unwrap().headers;
    for name in forbidden {
        assert!(
            sent.get(name).is_none(),
            "{name} reached the origin on a miss: {:?}",
            sent.get(name)
        );
    }
    let whole = edge.get("/a").await;
    assert!(whole.is_hit(), "{}", whole.cache_status());
    assert_eq!(whole.text(), "0123456789", "the whole body was stored");

    // A revalidation: the origin sees edge's validators, never the client's.
    h.clock.advance(Duration::from_secs(15));
    h.origin
        .reply("/a", Reply::ok("").status(304).header("etag", "\"v1\""));
    let revalidated = edge.get_with("/a", &client_headers).await;
    assert_eq!(revalidated.status, 206);
    assert_eq!(revalidated.text(), "0123");
    assert_eq!(revalidated.param("fwd-status"), Some("304"));
    assert_eq!(h.origin.hits("/a"), 2);
    let sent = h.origin.last("/a").unwrap().headers;
    let inm: Vec<_> = sent.get_all("if-none-match").iter().collect();
    assert_eq!(inm, ["\"v1\""], "only the stored ETag is sent");
    let ims: Vec<_> = sent.get_all("if-modified-since").iter().collect();
    assert_eq!(
        ims,
        [modified.as_str()],
        "only the stored Last-Modified is sent"
    );
    for name in ["if-match", "if-unmodified-since", "if-range", "range"] {
        assert!(
            sent.get(name).is_none(),
            "{name} reached the origin on a revalidation"
        );
    }
}

#[tokio::test]
async fn a_304_serves_the_stored_body_and_refreshes_the_entry_in_memory_and_on_disk() {
    let h = Harness::new().await;
    let body = pattern(50_000);
    h.origin.reply(
        "/a",
        Reply::ok(body.clone())
            .header("cache-control", "max-age=10")
            .header("etag", "\"v1\"")
            .header("x-version", "1"),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(15));
    h.origin.reply(
        "/a",
        Reply::ok("")
            .status(304)
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=100")
            .header("x-version", "2"),
    );

    let revalidated = edge.get("/a").await;
    assert_eq!(revalidated.status, 200);
    assert_eq!(
        revalidated.body, body,
        "the stored body, byte for byte, for a 304"
    );
    assert_eq!(
        revalidated.cache_status(),
        "edge; fwd=stale; fwd-status=304; stored; ttl=100"
    );
    assert_eq!(revalidated.header("x-version"), Some("2"));
    assert_eq!(revalidated.header("etag"), Some("\"v1\""));
    assert_eq!(revalidated.header("content-length"), Some("50000"));
    assert_eq!(h.origin.hits("/a"), 2);

    // The refreshed freshness (max-age=100 from the 304's Date) holds in memory…
    h.clock.advance(Duration::from_secs(40));
    let hit = edge.get("/a").await;
    assert_eq!(hit.cache_status(), "edge; hit; ttl=60; detail=memory");
    assert_eq!(hit.age(), Some(40));
    assert_eq!(hit.header("x-version"), Some("2"));
    assert_eq!(hit.body, body);

    // …and on disk.
    let edge = edge.restart().await;
    let from_disk = edge.get("/a").await;
    assert_eq!(from_disk.cache_status(), "edge; hit; ttl=60; detail=disk");
    assert_eq!(from_disk.age(), Some(40));
    assert_eq!(from_disk.header("x-version"), Some("2"));
    assert_eq!(from_disk.header("cache-control"), Some("max-age=100"));
    assert_eq!(from_disk.body, body);
    assert_eq!(h.origin.hits("/a"), 2);
}

#[tokio::test]
async fn a_304_never_replaces_the_stored_content_length() {
    let h = Harness::new().await;
    let clock = h.clock.clone();
    // A 304 may carry Content-Length (of the representation it would have sent); this one lies.
    let origin = RawOrigin::start(move |index, _| {
        let date = http_date(clock.now());
        if index == 0 {
            raw_response(
                "200 OK",
                &[
                    ("date", &date),
                    ("cache-control", "max-age=10"),
                    ("etag", "\"v1\""),
                    ("content-length", "11"),
                ],
                "hello world",
            )
        } else {
            raw_response(
                "304 Not Modified",
                &[
                    ("date", &date),
                    ("cache-control", "max-age=60"),
                    ("etag", "\"v1\""),
                    ("content-length", "3"),
                ],
                "",
            )
        }
    })
    .await;
    let edge = h.edge_with(|c| c.origin.url = origin.url()).await;
    assert_eq!(edge.get("/a").await.text(), "hello world");
    h.clock.advance(Duration::from_secs(15));

    let revalidated = edge.get("/a").await;
    assert_eq!(revalidated.param("fwd-status"), Some("304"));
    assert_eq!(revalidated.header("content-length"), Some("11"));
    assert_eq!(revalidated.text(), "hello world");
    let hit = edge.get("/a").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.header("content-length"), Some("11"));
    assert_eq!(hit.text(), "hello world");
    assert_eq!(origin.heads().len(), 2);
}

#[tokio::test]
async fn a_200_during_revalidation_replaces_the_stored_response() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("old body")
            .header("cache-control", "max-age=10")
            .header("etag", "\"v1\""),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(15));
    h.origin.reply(
        "/a",
        Reply::ok("new body")
            .header("cache-control", "max-age=30")
            .header("etag", "\"v2\""),
    );

    let replaced = edge.get("/a").await;
    assert_eq!(replaced.status, 200);
    assert_eq!(replaced.text(), "new body");
    assert_eq!(
        replaced.cache_status(),
        "edge; fwd=stale; fwd-status=200; stored; ttl=30"
    );
    assert_eq!(
        h.origin.last("/a").unwrap().headers["if-none-match"],
        "\"v1\""
    );

    h.clock.advance(Duration::from_secs(5));
    let hit = edge.get("/a").await;
    assert_eq!(hit.cache_status(), "edge; hit; ttl=25; detail=memory");
    assert_eq!(hit.text(), "new body");
    assert_eq!(hit.header("etag"), Some("\"v2\""));
    assert_eq!(h.origin.hits("/a"), 2);

    // The next revalidation uses the new validator.
    h.clock.advance(Duration::from_secs(30));
    h.origin
        .reply("/a", Reply::ok("").status(304).header("etag", "\"v2\""));
    let revalidated = edge.get("/a").await;
    assert_eq!(revalidated.text(), "new body");
    assert_eq!(
        h.origin.last("/a").unwrap().headers["if-none-match"],
        "\"v2\""
    );
}

#[tokio::test]
async fn a_304_for_another_etag_makes_one_unconditional_refetch() {
    let h = Harness::new().await;
    let clock = h.clock.clone();
    let origin = RawOrigin::start(move |index, head| {
        let date = http_date(clock.now());
        if index == 0 {
            raw_response(
                "200 OK",
                &[
                    ("date", &date),
                    ("cache-control", "max-age=10"),
                    ("etag", "\"v1\""),
                    ("content-length", "2"),
                ],
                "v1",
            )
        } else if raw_header(head, "if-none-match").is_some() {
            // RFC 9111 §4.3.4: this 304 selects a representation edge does not hold.
            raw_response(
                "304 Not Modified",
                &[("date", &date), ("etag", "\"v9\"")],
                "",
            )
        } else {
            raw_response(
                "200 OK",
                &[
                    ("date", &date),
                    ("cache-control", "max-age=60"),
                    ("etag", "\"v2\""),
                    ("content-length", "2"),
                ],
                "v2",
            )
        }
    })
    .await;
    let edge = h.edge_with(|c| c.origin.url = origin.url()).await;
    assert_eq!(edge.get("/a").await.text(), "v1");
    h.clock.advance(Duration::from_secs(15));

    let refetched = edge.get("/a").await;
    assert_eq!(refetched.status, 200);
    assert_eq!(refetched.text(), "v2");
    assert_eq!(
        refetched.cache_status(),
        "edge; fwd=stale; fwd-status=200; stored; ttl=60"
    );
    let heads = refetched_once_unconditionally(&origin, "\"v1\"");
    assert_eq!(raw_header(&heads[2], "if-modified-since"), None);

    let hit = edge.get("/a").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.text(), "v2");
    assert_eq!(hit.header("etag"), Some("\"v2\""));
    assert_eq!(origin.heads().len(), 3);
}

/// RFC 9111 §4.3.4: a 304 with a strong entity-tag selects only a response stored with that same
/// strong tag, and `W/"v1"` is not `"v1"` by strong comparison (RFC 9110 §8.8.3.2). nginx's gzip
/// filter sends just that: a weakened tag on the compressed 200, the strong one on its 304. The
/// stored body went out refreshed under the strong tag.
#[tokio::test]
async fn a_304_with_a_strong_etag_does_not_refresh_a_response_stored_with_a_weak_one() {
    let h = Harness::new().await;
    let clock = h.clock.clone();
    let origin = RawOrigin::start(move |index, head| {
        let date = http_date(clock.now());
        let (etag, body) = if index == 0 {
            ("W/\"v1\"", "gz")
        } else if raw_header(head, "if-none-match").is_some() {
            return raw_response(
                "304 Not Modified",
                &[
                    ("date", &date),
                    ("etag", "\"v1\""),
                    ("cache-control", "max-age=60"),
                ],
                "",
            );
        } else {
            ("\"v1\"", "v1")
        };
        let cache_control = if index == 0 {
            "max-age=10"
        } else {
            "max-age=60"
        };
        raw_response(
            "200 OK",
            &[
                ("date", &date),
                ("cache-control", cache_control),
                ("etag", etag),
                ("content-length", "2"),
            ],
            body,
        )
    })
    .await;
    let edge = h.edge_with(|c| c.origin.url = origin.url()).await;
    assert_eq!(edge.get("/a").await.text(), "gz");
    h.clock.advance(Duration::from_secs(15));

    let refetched = edge.get("/a").await;
    assert_eq!(refetched.text(), "v1", "{}", refetched.cache_status());
    assert_eq!(refetched.header("etag"), Some("\"v1\""));
    assert_eq!(
        refetched.cache_status(),
        "edge; fwd=stale; fwd-status=200; stored; ttl=60"
    );
    refetched_once_unconditionally(&origin, "W/\"v1\"");
}

/// RFC 9111 §4.1: a 304 that adds a `Vary` would leave the stored response chosen by fields it
/// no longer varies on, as edge holds only the values of the old ones: it is asked for again,
/// unconditionally. It was refreshed in place, and served to every `Accept-Encoding`.
#[tokio::test]
async fn a_304_that_changes_vary_makes_one_unconditional_refetch() {
    let h = Harness::new().await;
    let clock = h.clock.clone();
    let origin = RawOrigin::start(move |index, head| {
        let date = http_date(clock.now());
        let headers = |etag| {
            vec![
                ("date", date.clone()),
                ("cache-control", "max-age=10".to_owned()),
                ("etag", etag),
                ("content-length", "4".to_owned()),
            ]
        };
        let render = |status, headers: Vec<(&str, String)>, body| {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            raw_response(status, &headers, body)
        };
        if index == 0 {
            render("200 OK", headers("\"v1\"".to_owned()), "gzip")
        } else if raw_header(head, "if-none-match").is_some() {
            render(
                "304 Not Modified",
                vec![
                    ("date", date.clone()),
                    ("etag", "\"v1\"".to_owned()),
                    ("vary", "Accept-Encoding".to_owned()),
                ],
                "",
            )
        } else {
            let mut headers = headers("\"v2\"".to_owned());
            headers.push(("vary", "Accept-Encoding".to_owned()));
            render("200 OK", headers, "GZIP")
        }
    })
    .await;
    let edge = h.edge_with(|c| c.origin.url = origin.url()).await;
    let gzip = [("accept-encoding", "gzip")];
    assert_eq!(edge.get_with("/a", &gzip).await.text(), "gzip");
    h.clock.advance(Duration::from_secs(15));

    let refetched = edge.get_with("/a", &gzip).await;
    assert_eq!(refetched.text(), "GZIP", "{}", refetched.cache_status());
    let heads = origin.heads();
    assert_eq!(heads.len(), 3, "one conditional request, then one more");
    assert_eq!(raw_header(&heads[2], "if-none-match"), None);

    // The response now varies: another Accept-Encoding is not served the gzip one.
    let other = edge.get_with("/a", &[("accept-encoding", "br")]).await;
    assert!(!other.is_hit(), "{}", other.cache_status());
    assert_eq!(origin.heads().len(), 4);
    assert!(edge.get_with("/a", &gzip).await.is_hit());
}

/// A request's `no-store` or credentials forbid storing only its own exchange (RFC 9111 §5.2.1.5,
/// §3.5): a 304 to its revalidation leaves the stored response for everyone else. It was
/// removed, so that any client could evict any entry.
#[tokio::test]
async fn a_revalidation_a_request_forbids_storing_leaves_the_stored_response() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    for (path, header) in [
        ("/a", ("cache-control", "no-cache, no-store")),
        ("/b", ("authorization", "Basic eDp5")),
    ] {
        h.origin.reply(
            path,
            Reply::ok("v1")
                .header("cache-control", "max-age=10")
                .header("etag", "\"v1\""),
        );
        assert!(edge.get(path).await.stored());
        h.clock.advance(Duration::from_secs(15));
        h.origin
            .reply(path, Reply::ok("").status(304).header("etag", "\"v1\""));

        let asked = edge.get_with(path, &[header]).await;
        assert_eq!((asked.status, asked.text()), (200, "v1"));
        assert!(!asked.stored(), "{path}: {}", asked.cache_status());

        // Still there, still stale: the next request revalidates it rather than missing.
        let next = edge.get(path).await;
        assert_eq!(next.fwd(), Some("stale"), "{path}: {}", next.cache_status());
        assert_eq!(next.text(), "v1");
        assert!(edge.get(path).await.is_hit());
        assert_eq!(h.origin.hits(path), 3, "{path}");
    }

    // But a 304 that itself forbids storing removes the stored response, whoever asked.
    h.origin.reply(
        "/c",
        Reply::ok("v1")
            .header("cache-control", "max-age=10")
            .header("etag", "\"v1\""),
    );
    assert!(edge.get("/c").await.stored());
    h.clock.advance(Duration::from_secs(15));
    h.origin.reply(
        "/c",
        Reply::ok("")
            .status(304)
            .header("etag", "\"v1\"")
            .header("cache-control", "private"),
    );
    let asked = edge
        .get_with("/c", &[("cache-control", "no-cache, no-store")])
        .await;
    assert_eq!(asked.text(), "v1");
    let next = edge.get("/c").await;
    assert_eq!(next.fwd(), Some("uri-miss"), "{}", next.cache_status());
}

#[tokio::test]
async fn a_hundred_concurrent_requests_for_a_stale_key_make_one_revalidation() {
    let h = Harness::new().await;
    let body = pattern(100_000);
    h.origin.reply(
        "/hot",
        Reply::ok(body.clone())
            .header("cache-control", "max-age=10")
            .header("etag", "\"v1\""),
    );
    let edge = h.edge().await;
    edge.get("/hot").await;
    h.clock.advance(Duration::from_secs(15));
    h.origin.reply(
        "/hot",
        Reply::ok("")
            .status(304)
            .header("etag", "\"v1\"")
            .delay(Duration::from_millis(300)),
    );

    let responses = join_all((0..100).map(|_| edge.get("/hot"))).await;
    assert_eq!(h.origin.hits("/hot"), 2, "exactly one revalidation request");
    assert_eq!(
        h.origin.last("/hot").unwrap().headers["if-none-match"],
        "\"v1\""
    );
    for response in &responses {
        assert_eq!(response.status, 200);
        assert_eq!(response.body, body, "every body is the stored one");
        assert_eq!(response.fwd(), Some("stale"), "{}", response.cache_status());
        assert_eq!(
            response.param("fwd-status"),
            Some("304"),
            "{}",
            response.cache_status()
        );
    }
    let hit = edge.get("/hot").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.param("ttl"), Some("10"));
    assert_eq!(h.origin.hits("/hot"), 2);
}

#[tokio::test]
async fn a_head_request_revalidates_with_get_and_keeps_the_stored_body() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("alpha")
            .header("cache-control", "max-age=10")
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
            .header("cache-control", "max-age=60"),
    );

    let head = edge.head("/a").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.param("fwd-status"), Some("304"));
    assert_eq!(head.header("content-length"), Some("5"));
    let sent = h.origin.last("/a").unwrap();
    assert_eq!(sent.method, http::Method::GET);
    assert_eq!(sent.headers["if-none-match"], "\"v1\"");

    let hit = edge.get("/a").await;
    assert_eq!(hit.cache_status(), "edge; hit; ttl=60; detail=memory");
    assert_eq!(hit.text(), "alpha");
    assert_eq!(h.origin.hits("/a"), 2);
}

#[tokio::test]
async fn a_stale_entry_read_from_disk_is_revalidated() {
    let h = Harness::new().await;
    let body = pattern(20_000);
    h.origin.reply(
        "/a",
        Reply::ok(body.clone())
            .header("cache-control", "max-age=10")
            .header("etag", "\"v1\""),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    let edge = edge.restart().await;
    h.clock.advance(Duration::from_secs(15));
    h.origin
        .reply("/a", Reply::ok("").status(304).header("etag", "\"v1\""));

    let revalidated = edge.get("/a").await;
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.body, body);
    assert_eq!(
        revalidated.cache_status(),
        "edge; fwd=stale; fwd-status=304; stored; ttl=10"
    );
    assert_eq!(
        h.origin.last("/a").unwrap().headers["if-none-match"],
        "\"v1\""
    );
    let hit = edge.get("/a").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.body, body);
    assert_eq!(h.origin.hits("/a"), 2);
}

#[tokio::test]
async fn a_304_that_adds_set_cookie_or_private_is_not_stored_or_shared() {
    let h = Harness::new().await;
    h.origin.reply(
        "/r",
        Reply::ok("shared page")
            .header("cache-control", "max-age=10")
            .header("etag", "\"r1\""),
    );
    let edge = h.edge().await;
    edge.get("/r").await;
    h.clock.advance(Duration::from_secs(20));
    h.origin.reply(
        "/r",
        Reply::ok("")
            .status(304)
            .header("etag", "\"r1\"")
            .header("cache-control", "max-age=10, private")
            .header("set-cookie", "session=alice-secret"),
    );
    let alice = edge.get("/r").await;
    assert_eq!(alice.text(), "shared page");
    assert_eq!(alice.header("set-cookie"), Some("session=alice-secret"));
    assert!(!alice.stored(), "{}", alice.cache_status());
    assert_eq!(
        alice.param("fwd-status"),
        Some("304"),
        "what the origin sent"
    );
    // Counted as a pass (fetched, not stored), not as a stored response refreshed.
    let metrics = edge.metrics().await;
    let requests = |label: &str| common::requests(&metrics, label);
    assert_eq!((requests("pass"), requests("revalidated")), (1.0, 0.0));

    h.origin.reply(
        "/r",
        Reply::ok("page for bob").header("cache-control", "max-age=10"),
    );
    let bob = edge.get("/r").await;
    assert_eq!(
        bob.header("set-cookie"),
        None,
        "another client's cookie is never handed out"
    );
    assert!(!bob.is_hit(), "{}", bob.cache_status());
    assert_eq!(bob.text(), "page for bob");
}

#[tokio::test]
async fn a_refreshed_entry_takes_its_age_from_the_304_not_the_old_response() {
    let h = Harness::new().await;
    h.origin.reply(
        "/r",
        Reply::ok("body")
            .header("cache-control", "max-age=600")
            .header("age", "590")
            .header("etag", "\"a\""),
    );
    let edge = h.edge().await;
    edge.get("/r").await;
    h.clock.advance(Duration::from_secs(15));
    h.origin
        .reply("/r", Reply::ok("").status(304).header("etag", "\"a\""));
    let refreshed = edge.get("/r").await;
    assert_eq!(refreshed.param("fwd-status"), Some("304"));
    assert_eq!(
        refreshed.param("ttl"),
        Some("600"),
        "{}",
        refreshed.cache_status()
    );
    h.clock.advance(Duration::from_secs(100));
    let hit = edge.get("/r").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.age(), Some(100));
    assert_eq!(h.origin.hits("/r"), 2);
}
