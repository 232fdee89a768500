//! RFC 9110 §7.6: what a forwarding intermediary does to header fields (hop-by-hop fields, `Via`,
//! `X-Forwarded-*`, `Host`, `Date`), and the answers edge makes itself when the origin fails.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{Harness, Reply, disconnects, http_date, raw_origin, requests, sample, start_time};
use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Header lines in the order they arrived.
type Headers = Vec<(String, String)>;

/// A response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Headers,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response from a kept-alive connection; `closed` says what it means if the
/// connection closes first.
async fn read_response(stream: &mut TcpStream, closed: &str) -> RawResponse {
    let mut buf = Vec::new();
    loop {
        if let Some(response) = parse_response(&buf) {
            return response;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "{closed}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Writes `request` (a complete HTTP/1.1 request head, no body) to `addr` as is, and reads one
/// response. reqwest would normalise dot segments and may manage connection headers itself; this
/// sends exactly the bytes given.
async fn raw_request(addr: SocketAddr, request: &str) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        loop {
            if let Some(response) = parse_response(&buf) {
                return response;
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                return parse_response(&buf)
                    .or_else(|| parse_until_eof(&buf))
                    .expect("connection closed before a whole response arrived");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no response within 10 s")
}

/// The response head in `buf`, if it is complete.
fn parse_head(buf: &[u8]) -> Option<(u16, Headers, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).expect("response head is ASCII");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .expect("status code")
        .parse()
        .unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("header line");
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    Some((status, headers, end + 4))
}

/// The whole response in `buf` when its framing says it is complete.
fn parse_response(buf: &[u8]) -> Option<RawResponse> {
    let (status, headers, start) = parse_head(buf)?;
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let rest = &buf[start..];
    let body = if let Some(length) = find("content-length") {
        let length: usize = length.parse().unwrap();
        if rest.len() < length {
            return None;
        }
        rest[..length].to_vec()
    } else if find("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        decode_chunked(rest)?
    } else {
        return None;
    };
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// A response delimited by the end of the connection.
fn parse_until_eof(buf: &[u8]) -> Option<RawResponse> {
    let (status, headers, start) = parse_head(buf)?;
    Some(RawResponse {
        status,
        headers,
        body: buf[start..].to_vec(),
    })
}

fn decode_chunked(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            // No trailers expected: the final CRLF.
            return rest.starts_with(b"\r\n").then_some(body);
        }
        if rest.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Every value of `name`, joined by ", ".
fn joined(headers: &HeaderMap, name: &str) -> String {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(", ")
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

/// A port on 127.0.0.1 where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A request carrying hop-by-hop fields (RFC 9110 §7.6.1) next to an end-to-end one.
fn request_with_hop_by_hop_fields(path: &str, host: SocketAddr) -> String {
    format!(
        "GET {path} HTTP/1.1\r\n\
         Host: {host}\r\n\
         Connection: close, X-Secret\r\n\
         X-Secret: 1\r\n\
         Keep-Alive: timeout=5, max=100\r\n\
         TE: trailers, deflate\r\n\
         Upgrade: h2c\r\n\
         Proxy-Connection: keep-alive\r\n\
         Proxy-Authorization: Basic cHJveHk6c2VjcmV0\r\n\
         X-Kept: yes\r\n\
         \r\n"
    )
}

#[tokio::test]
async fn hop_by_hop_request_headers_do_not_reach_the_origin() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    h.origin.reply("/direct", Reply::ok("d"));
    let edge = h.edge().await;

    // Control: sent straight to the fixture origin, every one of these fields arrives, so their
    // absence below is edge's doing.
    let direct = raw_request(
        h.origin.addr,
        &request_with_hop_by_hop_fields("/direct", h.origin.addr),
    )
    .await;
    assert_eq!(direct.status, 200);
    let control = h.origin.last("/direct").unwrap().headers;
    for name in [
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
    ] {
        assert!(control.contains_key(name), "control lost {name}");
    }

    let response = raw_request(edge.addr, &request_with_hop_by_hop_fields("/a", edge.addr)).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"a");
    let seen = h.origin.last("/a").unwrap().headers;
    for name in [
        "x-secret",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
    ] {
        assert!(
            !seen.contains_key(name),
            "{name} reached the origin: {:?}",
            seen.get(name)
        );
    }
    let connection = joined(&seen, "connection").to_ascii_lowercase();
    assert!(
        !connection.contains("x-secret"),
        "the client's Connection options reached the origin: {connection}"
    );
    assert_eq!(seen.get("x-kept").unwrap(), "yes");
}

#[tokio::test]
async fn fields_named_in_a_second_connection_line_are_removed_too() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let edge = h.edge().await;
    let request = format!(
        "GET /a HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nConnection: X-One, X-Two\r\n\
         X-One: 1\r\nX-Two: 2\r\nX-Three: 3\r\n\r\n",
        edge.addr
    );
    assert_eq!(raw_request(edge.addr, &request).await.status, 200);
    let seen = h.origin.last("/a").unwrap().headers;
    assert!(!seen.contains_key("x-one"));
    assert!(!seen.contains_key("x-two"));
    assert_eq!(seen.get("x-three").unwrap(), "3");
}

/// A `Connection` line with a byte that is not UTF-8 still takes out the fields it names: the
/// whole line was skipped, and `X-Secret` went to the origin.
#[tokio::test]
async fn fields_named_beside_a_non_utf8_connection_member_are_removed() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let edge = h.edge().await;
    let mut stream = TcpStream::connect(edge.addr).await.unwrap();
    let request = b"GET /a HTTP/1.1\r\nHost: edge\r\nConnection: X-Secret, X\xe9\r\n\
                    X-Secret: s\r\nX-Kept: k\r\nConnection: close\r\n\r\n";
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
    let seen = h.origin.last("/a").unwrap().headers;
    assert!(!seen.contains_key("x-secret"), "{seen:?}");
    assert_eq!(seen.get("x-kept").unwrap(), "k");
}

#[tokio::test]
async fn end_to_end_request_headers_reach_the_origin() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let edge = h.edge().await;
    let response = edge
        .get_with(
            "/a",
            &[
                ("x-custom", "custom value"),
                ("accept-language", "de-CH, en;q=0.5"),
                ("authorization", "Bearer abc.def"),
                ("cookie", "session=1"),
                ("user-agent", "edge-tests/1"),
            ],
        )
        .await;
    assert_eq!(response.status, 200);
    let seen = h.origin.last("/a").unwrap().headers;
    assert_eq!(seen.get("x-custom").unwrap(), "custom value");
    assert_eq!(seen.get("accept-language").unwrap(), "de-CH, en;q=0.5");
    assert_eq!(seen.get("authorization").unwrap(), "Bearer abc.def");
    assert_eq!(seen.get("cookie").unwrap(), "session=1");
    assert_eq!(seen.get("user-agent").unwrap(), "edge-tests/1");
}

#[tokio::test]
async fn hop_by_hop_response_headers_do_not_reach_the_client_on_miss_or_hit() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("{\"a\":1}")
            .header("cache-control", "max-age=60")
            .header("connection", "X-Internal")
            .header("x-internal", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-origin-header", "1")
            .header("content-type", "application/json")
            .header("etag", "\"v1\""),
    );
    let edge = h.edge().await;

    // Control: the fixture origin really sends these fields.
    let direct = edge
        .client
        .get(format!("{}/a", h.origin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.headers().get("x-internal").unwrap(), "secret");
    assert_eq!(direct.headers().get("keep-alive").unwrap(), "timeout=5");
    assert!(
        joined(direct.headers(), "connection")
            .to_ascii_lowercase()
            .contains("x-internal")
    );

    let miss = edge.get("/a").await;
    let hit = edge.get("/a").await;
    assert!(miss.stored(), "{}", miss.cache_status());
    assert!(hit.is_hit(), "{}", hit.cache_status());
    for (what, response) in [("miss", &miss), ("hit", &hit)] {
        assert_eq!(response.status, 200, "{what}");
        assert_eq!(response.text(), "{\"a\":1}", "{what}");
        assert_eq!(response.header("x-internal"), None, "{what}");
        assert_eq!(response.header("keep-alive"), None, "{what}");
        let connection = joined(&response.headers, "connection").to_ascii_lowercase();
        assert!(!connection.contains("x-internal"), "{what}: {connection}");
        assert_eq!(response.header("x-origin-header"), Some("1"), "{what}");
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        assert_eq!(response.header("etag"), Some("\"v1\""), "{what}");
        assert_eq!(
            response.header("cache-control"),
            Some("max-age=60"),
            "{what}"
        );
    }
    assert_eq!(
        h.origin.hits("/a"),
        2,
        "one direct request, one through edge"
    );
}

/// An origin's trailer section (a chunked body's) goes on to an HTTP/2 client without the
/// connection-specific fields, those the head's `Connection` names, and `Content-Length` (RFC
/// 9110 §7.6.1, §6.5.1; RFC 9113 §8.2.2), as the head goes on without them. It went on whole: the
/// h2 library refuses to send a `Connection` or `Transfer-Encoding` trailer, so the client's
/// stream was reset (CANCEL) after the whole body, and curl failed the response (exit 92); a
/// `Content-Length` trailer made nghttp2 (curl) reset the stream as malformed (PROTOCOL_ERROR);
/// a field the head's `Connection` named reached the client.
#[tokio::test]
async fn an_origins_trailers_reach_an_http2_client_without_hop_by_hop_fields() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let h = Harness::new().await;
    let (origin, _) = raw_origin(
        b"HTTP/1.1 200 OK\r\ncache-control: no-store\r\nconnection: x-secret\r\n\
          transfer-encoding: chunked\r\ntrailer: x-kept\r\n\r\n\
          5\r\nhello\r\n0\r\nx-kept: 1\r\nconnection: close\r\nkeep-alive: timeout=5\r\n\
          transfer-encoding: gzip\r\ncontent-length: 99\r\nx-secret: s3cr3t\r\n\r\n",
    )
    .await;
    let edge = h.edge_before(origin).await;
    let tcp = TcpStream::connect(edge.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    for _ in 0..2 {
        let request = http::Request::get(edge.url("/t"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let said = response.headers()["cache-status"].to_str().unwrap();
        assert!(said.contains("detail=no-store"), "{said}");
        let body = match response.into_body().collect().await {
            Ok(body) => body,
            Err(err) => panic!("the response failed after its head: {err:?}"),
        };
        let trailers = body.trailers().cloned().expect("the origin's trailers");
        assert_eq!(&body.to_bytes()[..], b"hello");
        assert_eq!(trailers.get("x-kept").unwrap(), "1");
        for gone in [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "content-length",
            "x-secret",
        ] {
            assert!(!trailers.contains_key(gone), "{gone}: {trailers:?}");
        }
    }
}

#[tokio::test]
async fn via_is_added_to_the_request_and_the_response() {
    let h = Harness::new().await;
    h.origin
        .reply("/a", Reply::ok("a").header("cache-control", "max-age=60"));
    let edge = h.edge().await;
    let miss = edge.get("/a").await;

    let to_origin = joined(&h.origin.last("/a").unwrap().headers, "via");
    assert!(to_origin.contains("edge"), "request Via: {to_origin:?}");
    assert_eq!(to_origin, "1.1 edge");
    assert_eq!(joined(&miss.headers, "via"), "1.1 edge");
}

#[tokio::test]
async fn via_is_appended_to_existing_values() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("cache-control", "max-age=60")
            .header("via", "1.0 backend"),
    );
    let edge = h.edge().await;
    let miss = edge.get_with("/a", &[("via", "1.1 client-proxy")]).await;

    assert_eq!(
        joined(&h.origin.last("/a").unwrap().headers, "via"),
        "1.1 client-proxy, 1.1 edge"
    );
    assert_eq!(joined(&miss.headers, "via"), "1.0 backend, 1.1 edge");
}

#[tokio::test]
async fn a_hit_carries_exactly_one_edge_via_entry() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("cache-control", "max-age=60")
            .header("via", "1.0 backend"),
    );
    let edge = h.edge().await;
    edge.get("/a").await;
    for _ in 0..3 {
        let hit = edge.get("/a").await;
        assert!(hit.is_hit(), "{}", hit.cache_status());
        let via = joined(&hit.headers, "via");
        assert_eq!(via, "1.0 backend, 1.1 edge");
        assert_eq!(via.matches("edge").count(), 1, "{via}");
    }
}

#[tokio::test]
async fn x_forwarded_for_is_the_client_address() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let edge = h.edge().await;
    edge.get("/a").await;
    assert_eq!(
        joined(&h.origin.last("/a").unwrap().headers, "x-forwarded-for"),
        "127.0.0.1"
    );
}

#[tokio::test]
async fn x_forwarded_for_is_appended_to_an_existing_value() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let edge = h.edge().await;
    edge.get_with("/a", &[("x-forwarded-for", "10.0.0.1")])
        .await;
    assert_eq!(
        joined(&h.origin.last("/a").unwrap().headers, "x-forwarded-for"),
        "10.0.0.1, 127.0.0.1"
    );
}

#[tokio::test]
async fn x_forwarded_for_keeps_every_earlier_line() {
    // RFC 9110 §5.3: several lines of a list field mean their values joined in order; a proxy
    // must not drop or reorder them.
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let edge = h.edge().await;
    edge.get_with(
        "/a",
        &[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ],
    )
    .await;
    assert_eq!(
        joined(&h.origin.last("/a").unwrap().headers, "x-forwarded-for"),
        "10.0.0.1, 10.0.0.2, 127.0.0.1"
    );
}

#[tokio::test]
async fn x_forwarded_proto_describes_the_client_request() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let edge = h.edge().await;
    edge.get("/a").await;
    let seen = h.origin.last("/a").unwrap().headers;
    assert_eq!(seen.get("x-forwarded-proto").unwrap(), "http");
}

/// The cache key does not hold the client's `Host`, so nothing of it may reach the origin: an
/// origin that builds links or redirects from `X-Forwarded-Host` would otherwise store one
/// client's host name in what every client of the URL is served (web cache poisoning).
#[tokio::test]
async fn the_client_host_does_not_reach_the_origin() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    h.origin.reply("/b", Reply::ok("b"));
    let edge = h.edge().await;
    let origin_authority = h.origin.addr.to_string();
    let seen_by_origin = |path: &str| {
        let seen = h.origin.last(path).unwrap().headers;
        assert_eq!(
            seen.get("host").unwrap(),
            origin_authority.as_str(),
            "{path}"
        );
        assert!(
            seen.get("x-forwarded-host").is_none(),
            "{path}: the origin was told the client's host: {:?}",
            seen.get_all("x-forwarded-host").iter().collect::<Vec<_>>()
        );
    };

    edge.get_with("/a", &[("host", "evil.example")]).await;
    seen_by_origin("/a");
    edge.get_with("/a?x", &[("x-forwarded-host", "evil.example")])
        .await;
    seen_by_origin("/a?x");

    // Nor any other field by which a proxy names another host, port, scheme or path.
    let claims = [
        ("forwarded", "host=evil.example;proto=https"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-prefix", "/evil"),
        ("x-forwarded-server", "evil.example"),
        ("x-forwarded-scheme", "https"),
        ("x-forwarded-ssl", "on"),
        ("x-original-host", "evil.example"),
        ("x-host", "evil.example"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        // gunicorn before 22.0 takes it as the path the application is mounted at.
        ("script_name", "/evil"),
        // CGI's HTTP_PROXY: the outgoing proxy of many HTTP clients (httpoxy).
        ("proxy", "http://evil.example:8080"),
    ];
    edge.get_with("/a?y", &claims).await;
    let seen = h.origin.last("/a?y").unwrap().headers;
    for (name, _) in claims {
        assert!(seen.get(name).is_none(), "{name} reached the origin");
    }
    assert_eq!(seen.get("x-forwarded-proto").unwrap(), "http");

    // HTTP/2 carries the host in `:authority`; a field the client adds is not passed on either.
    let h2 = common::h2_client();
    let response = h2
        .get(edge.url("/b"))
        .header("x-forwarded-host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.text().await.unwrap(), "b");
    seen_by_origin("/b");
}

/// A method override (`X-HTTP-Method-Override: POST` and its kin) tunnels another method through
/// a POST; on a GET or HEAD, which edge answers from its cache, an origin that honours it would
/// have the answer to another method stored for every client of the URL (the HTTP Method
/// Override cache-poisoned denial of service). A POST keeps it: that is what it is for.
#[tokio::test]
async fn a_method_override_does_not_reach_the_origin_on_a_get_or_head() {
    let h = Harness::new().await;
    h.origin
        .reply("/m", Reply::ok("m").header("cache-control", "max-age=60"));
    h.origin.reply("/p", Reply::ok("p"));
    let edge = h.edge().await;
    let overrides = [
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("x-method-override", "DELETE"),
    ];
    let response = edge.get_with("/m", &overrides).await;
    assert!(response.stored(), "{}", response.cache_status());
    let seen = h.origin.last("/m").unwrap().headers;
    for (name, _) in overrides {
        assert!(
            seen.get(name).is_none(),
            "{name} reached the origin on a GET"
        );
    }
    edge.send(http::Method::POST, "/p", &overrides).await;
    let seen = h.origin.last("/p").unwrap().headers;
    for (name, value) in overrides {
        assert_eq!(seen.get(name).unwrap(), value, "{name} on a POST");
    }
}

/// CGI, FastCGI and WSGI servers (PHP, Python's `wsgiref`, gunicorn before 22.0) read `_` in a
/// field name as `-`: `X_Forwarded_Host` is their `HTTP_X_FORWARDED_HOST`, as `X-Forwarded-Host`
/// is. So a field that edge takes out of a request by name must go in that spelling too, or a
/// client can still have its host name, or another page (`X_Original_URL`), stored for every
/// client of the URL; and `X_Forwarded_Proto: https` would be joined to edge's `http`. Other
/// fields with `_` in their names go on.
#[tokio::test]
async fn fields_taken_out_by_name_go_in_their_underscore_spelling_too() {
    let h = Harness::new().await;
    h.origin
        .reply("/a", Reply::ok("a").header("cache-control", "max-age=60"));
    let edge = h.edge().await;
    let claims = [
        ("x_forwarded_host", "evil.example"),
        ("x-forwarded_host", "evil.example"),
        ("x_original_url", "/admin"),
        ("x_forwarded_proto", "https"),
        ("x_http_method_override", "DELETE"),
    ];
    let mut sent = claims.to_vec();
    sent.push(("x_custom_field", "kept"));
    let response = edge.get_with("/a", &sent).await;
    assert!(response.stored(), "{}", response.cache_status());
    let seen = h.origin.last("/a").unwrap().headers;
    for (name, _) in claims {
        assert!(seen.get(name).is_none(), "{name} reached the origin");
    }
    let protos: Vec<_> = seen.get_all("x-forwarded-proto").iter().collect();
    assert_eq!(protos, ["http"]);
    assert_eq!(seen.get("x_custom_field").unwrap(), "kept");
}

/// Content in a GET has no meaning (RFC 9110 §9.3.1) and edge drops it; its `Content-Length`
/// must go too, or the origin waits for a body that never comes, and the fill with it.
#[tokio::test]
async fn a_get_body_is_dropped_with_its_content_length() {
    let h = Harness::new().await;
    h.origin
        .reply("/a", Reply::ok("a").header("cache-control", "max-age=60"));
    h.origin
        .reply("/p", Reply::ok("p").header("cache-control", "no-store"));
    let edge = h.edge().await;
    let body = || Bytes::from_static(b"hello");
    let sent_bodiless = |path: &str| {
        let seen = h.origin.last(path).unwrap();
        assert!(
            seen.headers.get("content-length").is_none(),
            "{path}: {:?}",
            seen.headers
        );
        assert!(seen.body.is_empty(), "{path}");
    };

    // A miss: the fill.
    let r = edge.send_body(http::Method::GET, "/a", &[], body()).await;
    assert_eq!((r.status, r.text()), (200, "a"), "{}", r.cache_status());
    assert!(r.stored(), "{}", r.cache_status());
    sent_bodiless("/a");
    assert!(edge.get("/a").await.is_hit());

    // A hit-for-pass key: the request forwarded as it is, but for its body.
    assert_eq!(edge.get("/p").await.text(), "p");
    let r = edge.send_body(http::Method::GET, "/p", &[], body()).await;
    assert_eq!((r.status, r.text()), (200, "p"), "{}", r.cache_status());
    sent_bodiless("/p");
    assert_eq!(h.origin.hits("/p"), 2);

    // HEAD alike.
    let r = edge.send_body(http::Method::HEAD, "/p", &[], body()).await;
    assert_eq!(r.status, 200, "{}", r.cache_status());
    sent_bodiless("/p");
}

#[tokio::test]
async fn the_origin_sees_its_own_authority_as_host() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let edge = h.edge().await;
    edge.get_with("/a", &[("host", "cdn.example")]).await;
    let seen = h.origin.last("/a").unwrap().headers;
    assert_eq!(joined(&seen, "host"), h.origin.addr.to_string());
}

#[tokio::test]
async fn unreachable_origin_gives_502() {
    let h = Harness::new().await;
    let port = closed_port();
    let edge = h
        .edge_with(|c| {
            c.origin.url =
                edge::config::OriginUrl(format!("http://127.0.0.1:{port}").parse().unwrap())
        })
        .await;
    let response = edge.get("/a").await;
    assert_eq!(response.status, 502);
    assert_eq!(response.param("detail"), Some("origin-unreachable"));
    assert!(!response.is_hit());
    assert!(!response.stored());
    assert!(
        response.text().contains("origin") && response.body.len() < 200,
        "{:?}",
        response.text()
    );

    let post = edge.send(http::Method::POST, "/a", &[]).await;
    assert_eq!(post.status, 502);
    assert_eq!(post.param("detail"), Some("origin-unreachable"));
}

#[tokio::test]
async fn slow_origin_gives_504() {
    let h = Harness::new().await;
    h.origin.reply(
        "/slow",
        Reply::ok("x")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_secs(3)),
    );
    let edge = h
        .edge_with(|c| c.origin.timeout = edge::config::Seconds(Duration::from_millis(300)))
        .await;
    let started = std::time::Instant::now();
    let response = edge.get("/slow").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "edge waited {:?}",
        started.elapsed()
    );
    assert_eq!(response.status, 504);
    assert_eq!(response.param("detail"), Some("origin-timeout"));
    assert!(!response.stored());
    assert_ne!(response.text(), "x");
}

#[tokio::test]
async fn a_response_without_date_gets_one_from_edge() {
    // The fixture origin cannot send a response without Date: hyper's server adds one from the
    // real clock. This origin writes its response by hand.
    let h = Harness::new().await;
    let (origin, requests) = raw_origin(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    let edge = h.edge_before(origin).await;

    let miss = edge.get("/a").await;
    assert_eq!(miss.status, 200);
    assert_eq!(miss.text(), "hello");
    assert!(miss.stored(), "{}", miss.cache_status());
    let received_at = http_date(start_time());
    assert_eq!(miss.header("date"), Some(received_at.as_str()));
    assert_eq!(miss.headers.get_all("date").iter().count(), 1);

    // RFC 9110 §6.6.1: the Date recorded on receipt is part of the stored response.
    h.clock.advance(Duration::from_secs(10));
    let hit = edge.get("/a").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.text(), "hello");
    assert_eq!(hit.header("date"), Some(received_at.as_str()));
    assert_eq!(hit.headers.get_all("date").iter().count(), 1);
    assert_eq!(hit.age(), Some(10));
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_origin_date_is_kept_unchanged_on_miss_and_hit() {
    let h = Harness::new().await;
    let origin_date = http_date(start_time() - Duration::from_secs(2));
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("cache-control", "max-age=60")
            .header("date", &origin_date),
    );
    let edge = h.edge().await;
    let miss = edge.get("/a").await;
    assert_eq!(miss.header("date"), Some(origin_date.as_str()));

    h.clock.advance(Duration::from_secs(20));
    let hit = edge.get("/a").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.header("date"), Some(origin_date.as_str()));
    assert_eq!(hit.headers.get_all("date").iter().count(), 1);
}

#[tokio::test]
async fn a_large_body_arrives_byte_identical_on_miss_and_hit() {
    let h = Harness::new().await;
    let body = binary_body(2 * 1024 * 1024, 0xD1B5_4A32_D192_ED03);
    h.origin.reply(
        "/big",
        Reply::ok(body.clone())
            .header("cache-control", "max-age=60")
            .header("content-type", "application/octet-stream"),
    );
    let edge = h.edge().await;

    let miss = edge.get("/big").await;
    assert_eq!(miss.status, 200);
    assert!(miss.stored(), "{}", miss.cache_status());
    assert_eq!(miss.body.len(), body.len());
    assert!(miss.body == body, "the miss body differs from the origin's");

    let hit = edge.get("/big").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.body.len(), body.len());
    assert!(hit.body == body, "the hit body differs from the origin's");
    assert_eq!(hit.header("content-length"), Some("2097152"));
    assert_eq!(h.origin.hits("/big"), 1);
}

#[tokio::test]
async fn a_request_target_climbing_out_of_the_origin_prefix_is_rejected() {
    let h = Harness::new().await;
    h.origin.reply("/x", Reply::ok("outside the prefix"));
    h.origin.reply("/base/x", Reply::ok("inside the prefix"));
    let origin = h.origin.addr;
    let edge = h
        .edge_with(|c| {
            c.origin.url = edge::config::OriginUrl(format!("http://{origin}/base").parse().unwrap())
        })
        .await;

    let request = format!(
        "GET /../x HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        edge.addr
    );
    let response = raw_request(edge.addr, &request).await;
    assert_eq!(response.status, 400, "{:?}", response);
    // Edge answered itself: no hit, nothing forwarded.
    assert_eq!(
        response.header("cache-status"),
        Some("edge; detail=invalid-request")
    );
    assert_ne!(response.body, b"outside the prefix");
    assert!(
        h.origin.received().is_empty(),
        "the origin was asked: {:?}",
        h.origin.received()
    );

    // Control: an ordinary target under the prefix is forwarded.
    let request = format!(
        "GET /x HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        edge.addr
    );
    let response = raw_request(edge.addr, &request).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"inside the prefix");
    assert_eq!(h.origin.hits("/base/x"), 1);
    assert_eq!(h.origin.hits("/x"), 0);
}

#[tokio::test]
async fn an_encoded_dot_segment_does_not_climb_out_of_the_origin_prefix() {
    let h = Harness::new().await;
    h.origin.reply("/x", Reply::ok("outside the prefix"));
    let origin = h.origin.addr;
    let edge = h
        .edge_with(|c| {
            c.origin.url = edge::config::OriginUrl(format!("http://{origin}/base").parse().unwrap())
        })
        .await;
    for target in ["/%2e%2e/x", "/.%2e/x", "/%2E%2E/x", "/a/../../x"] {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            edge.addr
        );
        let response = raw_request(edge.addr, &request).await;
        assert_ne!(response.body, b"outside the prefix", "{target}");
        assert_eq!(h.origin.hits("/x"), 0, "{target} reached /x");
    }
}

#[tokio::test]
async fn via_names_the_protocol_each_message_was_received_with() {
    // RFC 9110 §7.6.3: received-protocol is the version used by the upstream sender of *that*
    // message: the client's for the request, the origin's (HTTP/1.1 here) for the response.
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let edge = h.edge().await;
    let request = format!("GET /a HTTP/1.0\r\nHost: {}\r\n\r\n", edge.addr);
    let response = raw_request(edge.addr, &request).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"a");
    assert_eq!(
        joined(&h.origin.last("/a").unwrap().headers, "via"),
        "1.0 edge"
    );
    assert_eq!(response.header("via"), Some("1.1 edge"));
}

#[tokio::test]
async fn repeated_and_non_ascii_origin_headers_survive_memory_and_disk_hits() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("a")
            .header("cache-control", "max-age=60")
            .header("link", "</one.css>; rel=preload")
            .header("link", "</two.js>; rel=preload")
            .header("x-name", "caf\u{e9}"),
    );
    let edge = h.edge().await;
    let check = |what: &str, response: &common::Resp| {
        let links: Vec<_> = response
            .headers
            .get_all("link")
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect();
        assert_eq!(
            links,
            [
                b"</one.css>; rel=preload".to_vec(),
                b"</two.js>; rel=preload".to_vec()
            ],
            "{what}"
        );
        assert_eq!(
            response.headers.get("x-name").unwrap().as_bytes(),
            "caf\u{e9}".as_bytes(),
            "{what}"
        );
    };
    let miss = edge.get("/a").await;
    check("miss", &miss);
    let memory = edge.get("/a").await;
    assert_eq!(memory.param("detail"), Some("memory"));
    check("memory hit", &memory);
    let edge = edge.restart().await;
    let disk = edge.get("/a").await;
    assert_eq!(
        disk.param("detail"),
        Some("disk"),
        "{}",
        disk.cache_status()
    );
    check("disk hit", &disk);
    assert_eq!(h.origin.hits("/a"), 1);
}

/// A client that does not finish its request head within `client_header_timeout` is
/// disconnected (slowloris), on the main listener and the admin one, and so is a keep-alive connection left idle that long; one that keeps
/// sending requests within it is served on the same connection.
#[tokio::test]
async fn a_client_too_slow_to_send_its_head_is_disconnected() {
    let h = Harness::new().await;
    h.origin.reply(
        "/slow-client",
        Reply::ok("fine").header("cache-control", "max-age=60"),
    );
    let edge = h
        .edge_with(|c| c.client_header_timeout.0 = Duration::from_millis(800))
        .await;
    // Closed (read returns 0) within a few timeouts, with nothing sent.
    async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 512];
        matches!(
            tokio::time::timeout(limit, stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }
    // The admin listener too (published from a container, it may face other hosts).
    for addr in [edge.addr, edge.admin_addr] {
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /slow-client HTTP/1.1\r\nHost: edge\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        assert!(
            closed_within(&mut slow, Duration::from_secs(5)).await,
            "{addr}"
        );
        assert!(started.elapsed() >= Duration::from_millis(700), "{addr}");
    }

    let mut kept = TcpStream::connect(edge.addr).await.unwrap();
    let request = b"GET /slow-client HTTP/1.1\r\nHost: edge\r\n\r\n";
    for _ in 0..3 {
        kept.write_all(request).await.unwrap();
        let response = read_response(&mut kept, "closed while a request was answered").await;
        assert_eq!(response.status, 200);
        assert_eq!(&response.body[..], b"fine");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Idle past the timeout: closed.
    assert!(closed_within(&mut kept, Duration::from_secs(5)).await);
    // Counted apart, on the main listener only.
    let metrics = edge.metrics().await;
    assert_eq!(disconnects(&metrics, "slow_head"), 1.0, "{metrics}");
    assert_eq!(disconnects(&metrics, "idle"), 1.0, "{metrics}");
    assert_eq!(disconnects(&metrics, "slow_read"), 0.0, "{metrics}");
    assert_eq!(sample(&metrics, "edge_client_connections"), 0.0);
    edge.stop().await;
}

/// RFC 9112 §6.3: a response with both `Transfer-Encoding` and `Content-Length` "ought to be
/// handled as an error" (nginx answers 502), and so is a transfer coding other than `chunked`,
/// which would reach the cache still applied and no longer labelled. Such responses were stored
/// cut to their Content-Length, or empty.
#[tokio::test]
async fn a_response_framed_two_ways_or_with_an_unknown_transfer_coding_is_a_502() {
    let h = Harness::new().await;
    let responses: [&'static [u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\na\r\nAAAAABBBBB\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ];
    for response in responses {
        let (origin, requests) = raw_origin(response).await;
        let edge = h.edge_before(origin).await;
        let shown = String::from_utf8_lossy(response);
        for _ in 0..2 {
            let r = edge.get("/a").await;
            assert_eq!(r.status, 502, "{shown}");
            assert_eq!(r.param("detail"), Some("origin-invalid"), "{shown}");
        }
        assert_eq!(requests.load(Ordering::SeqCst), 2, "{shown}");
    }

    // 101 Switching Protocols answers an upgrade edge never asks for (`Upgrade` is hop-by-hop).
    let (origin, _) = raw_origin(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    )
    .await;
    let edge = h.edge_before(origin).await;
    let r = edge.get("/a").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.param("detail"), Some("origin-invalid"));

    // RFC 9110 §15: a status outside 100–599 is invalid, to be taken as a 5xx. It was passed on
    // to the client while the origin metric counted an error.
    let (origin, _) = raw_origin(
        b"HTTP/1.1 600 Weird\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let edge = h.edge_before(origin).await;
    let r = edge.get("/a").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.param("detail"), Some("origin-invalid"));
    let metrics = edge.metrics().await;
    assert_eq!(requests(&metrics, "error"), 1.0, "{metrics}");

    // A head that does not parse (a control byte, a folded line) is an invalid answer too, not
    // an origin out of reach.
    for response in [
        b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nok".as_slice(),
        b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    ] {
        let response: &'static [u8] = response;
        let (origin, _) = raw_origin(response).await;
        let edge = h.edge_before(origin).await;
        let r = edge.get("/a").await;
        let shown = String::from_utf8_lossy(response);
        assert_eq!(r.status, 502, "{shown}");
        assert_eq!(r.param("detail"), Some("origin-invalid"), "{shown}");
    }

    // A Content-Length list of one value (RFC 9110 §8.6) is that value; the client got no answer.
    for response in [
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2, 2\r\n\r\nok".as_slice(),
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    ] {
        let (origin, _) = raw_origin(response).await;
        let edge = h.edge_before(origin).await;
        let r = edge.get("/a").await;
        assert_eq!((r.status, r.text()), (200, "ok"), "{}", r.cache_status());
        let lengths: Vec<_> = r.headers.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["2"]);
        assert!(edge.get("/a").await.is_hit());
    }

    // `chunked` alone, in any case, is how a body of unannounced length comes.
    let (origin, _) = raw_origin(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    let edge = h.edge_before(origin).await;
    let r = edge.get("/a").await;
    assert_eq!((r.status, r.text()), (200, "ok"), "{}", r.cache_status());
    assert!(edge.get("/a").await.is_hit());
}

/// RFC 9111 §4.2.3, §5.1: an `Age` from upstream reaches the client as edge reckons it, on a miss
/// as on a hit: the first member of a list, 2^31 for an overflow, nothing for an invalid one. It
/// was passed on as it came.
#[tokio::test]
async fn an_upstream_age_is_passed_on_as_edge_reckons_it() {
    let h = Harness::new().await;
    let cases: [(&'static [u8], &str); 3] = [
        (b"10, 5000", "10"),
        (b"-50", "0"),
        (b"99999999999999999999", "2147483648"),
    ];
    for (sent, shown) in cases {
        let response = [
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nAge: ".as_slice(),
            sent,
            b"\r\nContent-Length: 1\r\n\r\nx",
        ]
        .concat();
        let (origin, _) = raw_origin(Vec::leak(response)).await;
        let edge = h.edge_before(origin).await;
        let miss = edge.get("/a").await;
        assert!(miss.stored(), "{}", miss.cache_status());
        assert_eq!(miss.header("age"), Some(shown), "{sent:?}");
        assert_eq!(miss.headers.get_all("age").iter().count(), 1);
        assert_eq!(edge.get("/a").await.header("age"), Some(shown), "{sent:?}");
    }
}

/// RFC 9113 §8.2.3: the `Cookie` fields of an HTTP/2 request are joined with `; ` before it goes
/// on as HTTP/1.1; an origin reads one. They went on as separate lines.
#[tokio::test]
async fn http2_cookie_fields_reach_the_origin_as_one() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let edge = h.edge().await;
    let h2 = common::h2_client();
    let response = h2
        .get(edge.url("/a"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let seen = h.origin.last("/a").unwrap().headers;
    let cookies: Vec<_> = seen.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);

    // HTTP/1.1 sends one line (RFC 6265 §5.4); several are passed on as they came.
    edge.get_with("/a", &[("cookie", "c=3")]).await;
    let seen = h.origin.last("/a").unwrap().headers;
    assert_eq!(seen.get_all("cookie").iter().collect::<Vec<_>>(), ["c=3"]);
}

/// A connection that sends nothing, or only the start of the HTTP/2 preface, is closed
/// `client_header_timeout` after it was accepted, on both listeners. hyper-util's builder first
/// reads to tell HTTP/1 from HTTP/2, and that read had no timer: such connections stayed open for
/// good, and enough of them used up edge's file descriptors.
#[tokio::test]
async fn a_connection_that_sends_nothing_is_disconnected() {
    let h = Harness::new().await;
    let edge = h
        .edge_with(|c| c.client_header_timeout.0 = Duration::from_secs(1))
        .await;
    let sent: [&[u8]; 2] = [b"", b"PRI * HTTP/2.0\r\n"];
    // Open connections are counted while open.
    let open = TcpStream::connect(edge.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = edge.metrics().await;
    assert_eq!(
        sample(&metrics, "edge_client_connections"),
        1.0,
        "{metrics}"
    );
    drop(open);
    for addr in [edge.addr, edge.admin_addr] {
        for bytes in sent {
            let mut silent = TcpStream::connect(addr).await.unwrap();
            let started = std::time::Instant::now();
            silent.write_all(bytes).await.unwrap();
            let mut buf = [0u8; 512];
            let read = tokio::time::timeout(Duration::from_secs(8), silent.read(&mut buf)).await;
            let shown = String::from_utf8_lossy(bytes);
            assert!(
                matches!(read, Ok(Ok(0) | Err(_))),
                "{addr} {shown:?}: still open ({read:?})"
            );
            assert!(
                started.elapsed() >= Duration::from_millis(900),
                "{addr} {shown:?}: closed after {:?}",
                started.elapsed()
            );
        }
    }
    // A client that connects and then sends a request within the limit is served.
    let mut prompt = TcpStream::connect(edge.admin_addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    prompt
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut prompt, "closed before answering").await;
    assert_eq!(response.status, 200);
    // One that sent nothing counts as idle, one that began a preface as slow; the main
    // listener's only.
    let metrics = edge.metrics().await;
    assert_eq!(disconnects(&metrics, "idle"), 1.0, "{metrics}");
    assert_eq!(disconnects(&metrics, "slow_head"), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "edge_client_connections"), 0.0);
    edge.stop().await;
}

/// An HTTP/2 connection with no open streams for `client_header_timeout` is closed (GOAWAY, then
/// the close), as nginx closes idle HTTP/2 connections; a stream open longer than that is not cut
/// short, nor is a connection whose streams come closer together. hyper's HTTP/2 server has no
/// such limit of its own: an idle h2c connection stayed open for good.
#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let h = Harness::new().await;
    h.origin.reply(
        "/slow",
        Reply::ok("slow")
            .header("cache-control", "no-store")
            .delay(Duration::from_millis(1500)),
    );
    let edge = h
        .edge_with(|c| c.client_header_timeout.0 = Duration::from_secs(1))
        .await;
    let tcp = TcpStream::connect(edge.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let closed = tokio::spawn(async move {
        let _ = connection.await;
        std::time::Instant::now()
    });
    for _ in 0..2 {
        let request = http::Request::get(edge.url("/slow"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
        assert_eq!(&body.to_bytes()[..], b"slow");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let idle = std::time::Instant::now() - Duration::from_millis(500);
    assert!(!closed.is_finished(), "closed while in use");
    let closed = tokio::time::timeout(Duration::from_secs(8), closed)
        .await
        .expect("an idle HTTP/2 connection stayed open")
        .unwrap();
    assert!(
        closed - idle >= Duration::from_millis(900),
        "closed {:?} after its last stream",
        closed - idle
    );

    // One that never gets past its preface and SETTINGS (and never answers the GOAWAY's PING)
    // is closed too.
    let mut silent = TcpStream::connect(edge.addr).await.unwrap();
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 512];
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a silent HTTP/2 connection stayed open");
    // Both closed as idle: the client that closed after the GOAWAY, and the one that ignored it.
    let metrics = edge.metrics().await;
    let idle = sample(&metrics, r#"edge_client_disconnects_total{reason="idle"}"#);
    assert_eq!(idle, 2.0, "{metrics}");
    edge.stop().await;
}

/// A request body that comes after its head is not the start of the next head: the connection,
/// idle after its answer, is counted as an idle one when it is closed.
#[tokio::test]
async fn a_closed_keep_alive_connection_after_an_upload_counts_as_idle() {
    let h = Harness::new().await;
    h.origin.reply("/upload", Reply::ok("thanks"));
    let edge = h
        .edge_with(|c| c.client_header_timeout.0 = Duration::from_secs(1))
        .await;
    let mut client = TcpStream::connect(edge.addr).await.unwrap();
    client
        .write_all(b"POST /upload HTTP/1.1\r\nHost: edge\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.write_all(b"hello").await.unwrap();
    let response = read_response(&mut client, "closed before answering").await;
    assert_eq!(response.status, 200);
    let mut rest = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), client.read(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    let metrics = edge.metrics().await;
    assert_eq!(disconnects(&metrics, "idle"), 1.0, "{metrics}");
    assert_eq!(disconnects(&metrics, "slow_head"), 0.0, "{metrics}");
}

/// CONNECT asks for a tunnel, which edge does not open: with a path for a target it was forwarded,
/// and the origin's 200 turned the client's connection into a tunnel (the client got no bytes)
/// and, as a 2xx to an unsafe method, invalidated what was stored for the path.
#[tokio::test]
async fn connect_with_a_path_is_rejected_and_invalidates_nothing() {
    let h = Harness::new().await;
    h.origin.reply(
        "/c",
        Reply::ok("stored").header("cache-control", "max-age=600"),
    );
    let edge = h.edge().await;
    assert!(edge.get("/c").await.stored());
    let request = format!("CONNECT /c HTTP/1.1\r\nHost: {}\r\n\r\n", edge.addr);
    let response = raw_request(edge.addr, &request).await;
    assert_eq!(response.status, 400, "{response:?}");
    assert_eq!(h.origin.hits("/c"), 1, "the origin was not asked");
    let hit = edge.get("/c").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.text(), "stored");
}

/// A malformed request body is the client's fault: 400, not the 502 "origin unreachable" it
/// was, and not counted as an origin failure.
#[tokio::test]
async fn a_malformed_chunked_upload_gets_a_400() {
    let h = Harness::new().await;
    h.origin.reply("/up", Reply::ok("thanks").status(201));
    let edge = h.edge().await;
    let request = "POST /up HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\n\r\n\
                   3\r\nabc\r\nzz\r\nabc\r\n0\r\n\r\n";
    let response = raw_request(edge.addr, request).await;
    assert_eq!(response.status, 400, "{response:?}");
    assert_eq!(
        response.header("cache-status"),
        Some("edge; fwd=method; detail=client-body-invalid")
    );
    assert_eq!(response.body, b"edge: invalid request body\n");
    let metrics = edge.metrics().await;
    assert_eq!(
        sample(&metrics, "edge_origin_requests_total{status=\"error\"}"),
        0.0,
        "{metrics}"
    );
}

/// RFC 9110 §7.6.2: an intermediary answers an `OPTIONS` with `Max-Forwards: 0` itself and takes
/// one off any other value it forwards; a malformed value is the client's error. `OPTIONS *`
/// asks about the server, which is edge.
#[tokio::test]
async fn options_follows_max_forwards() {
    let h = Harness::new().await;
    h.origin.reply(
        "/o",
        Reply::ok("").header("allow", "GET, HEAD, OPTIONS, PUT"),
    );
    let edge = h.edge().await;

    let own = edge
        .send(reqwest::Method::OPTIONS, "/o", &[("max-forwards", "0")])
        .await;
    assert_eq!(own.status, 200);
    assert_eq!(own.cache_status(), "edge; detail=options");
    let allow = own.header("allow").unwrap_or_default();
    assert!(
        allow.contains("GET") && allow.contains("OPTIONS"),
        "{allow}"
    );
    assert_eq!(h.origin.hits("/o"), 0, "Max-Forwards: 0 goes no further");

    let forwarded = edge
        .send(reqwest::Method::OPTIONS, "/o", &[("max-forwards", "3")])
        .await;
    assert_eq!(forwarded.status, 200);
    assert_eq!(forwarded.header("allow"), Some("GET, HEAD, OPTIONS, PUT"));
    let received = h.origin.last("/o").unwrap();
    assert_eq!(received.method, reqwest::Method::OPTIONS);
    assert_eq!(received.headers["max-forwards"], "2");

    edge.send(reqwest::Method::OPTIONS, "/o", &[]).await;
    assert!(
        !h.origin
            .last("/o")
            .unwrap()
            .headers
            .contains_key("max-forwards")
    );
    // Any number of digits is a valid value; more than 2^64 - 1 counts as that.
    let huge = [("max-forwards", "99999999999999999999")];
    edge.send(reqwest::Method::OPTIONS, "/o", &huge).await;
    let received = h.origin.last("/o").unwrap();
    assert_eq!(received.headers["max-forwards"], "18446744073709551614");
    assert_eq!(h.origin.hits("/o"), 3);

    for bad in ["-1", "one", "1, 2", ""] {
        let refused = edge
            .send(reqwest::Method::OPTIONS, "/o", &[("max-forwards", bad)])
            .await;
        assert_eq!(refused.status, 400, "Max-Forwards: {bad:?}");
    }
    assert_eq!(h.origin.hits("/o"), 3);

    let request = format!("OPTIONS * HTTP/1.1\r\nHost: {}\r\n\r\n", edge.addr);
    let server = raw_request(edge.addr, &request).await;
    assert_eq!(server.status, 200, "{server:?}");
    assert!(server.header("allow").is_some(), "{server:?}");
    // Max-Forwards only binds TRACE and OPTIONS (a recipient may ignore it on other methods).
    h.origin.reply("/g", Reply::ok("g"));
    assert_eq!(
        edge.get_with("/g", &[("max-forwards", "0")]).await.text(),
        "g"
    );
    assert_eq!(h.origin.last("/g").unwrap().headers["max-forwards"], "0");
}

/// TRACE would echo the request, cookies included, from the origin back to whatever got a
/// client to send it: edge answers 405 itself (as nginx does), with `Allow`.
#[tokio::test]
async fn trace_is_not_forwarded() {
    let h = Harness::new().await;
    h.origin.reply("/t", Reply::ok("echo"));
    let edge = h.edge().await;
    let request = format!(
        "TRACE /t HTTP/1.1\r\nHost: {}\r\nCookie: session=secret\r\n\r\n",
        edge.addr
    );
    let response = raw_request(edge.addr, &request).await;
    assert_eq!(response.status, 405, "{response:?}");
    assert!(response.header("allow").is_some(), "{response:?}");
    assert_eq!(response.header("cache-status"), Some("edge; detail=trace"));
    assert_eq!(h.origin.hits("/t"), 0);
}

/// RFC 9110 §8.6: no `Content-Length` in a 204, which an origin may send anyway. Edge passed it
/// on, and an HTTP/2 client rejected the whole response (nghttp2: PROTOCOL_ERROR).
#[tokio::test]
async fn a_204_goes_on_without_the_content_length_its_origin_gave_it() {
    const NO_CONTENT: &[u8] =
        b"HTTP/1.1 204 No Content\r\nCache-Control: max-age=300\r\nContent-Length: 5\r\n\r\nXXXXX";
    let (origin, requests) = raw_origin(NO_CONTENT).await;
    let h = Harness::new().await;
    let edge = h.edge_before(origin).await;
    let h2 = common::h2_client();
    for path in ["/nc", "/nc", "/nc?pass"] {
        let response = if path.ends_with("pass") {
            h2.post(edge.url(path)).send().await.unwrap()
        } else {
            h2.get(edge.url(path)).send().await.unwrap()
        };
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), 204, "{path}");
        assert!(
            response.headers().get("content-length").is_none(),
            "{path}: {:?}",
            response.headers()
        );
        assert_eq!(response.bytes().await.unwrap(), "");
    }
    let request = format!(
        "GET /nc2 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        edge.addr
    );
    let response = raw_request(edge.addr, &request).await;
    assert_eq!(response.status, 204, "{response:?}");
    assert_eq!(response.header("content-length"), None, "{response:?}");
    // The miss, the POST and the HTTP/1 miss (the hit is answered by edge).
    assert_eq!(requests.load(Ordering::SeqCst), 3);
}

/// RFC 9112 §3.2: a 400 for an HTTP/1.1 request without `Host`, and for any with two `Host`
/// lines or an invalid one, or a target with user information (RFC 9110 §4.2.4); they were
/// served. HTTP/1.0 may leave `Host` out.
#[tokio::test]
async fn an_http1_request_needs_one_valid_host() {
    let h = Harness::new().await;
    h.origin.reply("/h", Reply::ok("h"));
    let edge = h.edge().await;
    for (request, status) in [
        ("GET /h HTTP/1.1\r\n", 400),
        ("GET /h HTTP/1.1\r\nHost: a\r\nHost: b\r\n", 400),
        ("GET /h HTTP/1.1\r\nHost: a b/c\r\n", 400),
        ("GET http://edge.example/h HTTP/1.1\r\n", 400),
        ("POST /h HTTP/1.1\r\nContent-Length: 0\r\n", 400),
        ("PURGE /h HTTP/1.1\r\n", 400),
        ("GET /h HTTP/1.0\r\n", 200),
        ("GET /h HTTP/1.0\r\nHost: a\r\nHost: b\r\n", 400),
        ("GET /h HTTP/1.1\r\nHost: [::1]:8080\r\n", 200),
        ("GET /h HTTP/1.1\r\nHost: cdn.example\r\n", 200),
        ("GET /h HTTP/1.1\r\nHost:\r\n", 200),
        (
            "GET http://user:pw@edge.example/h HTTP/1.1\r\nHost: edge.example\r\n",
            400,
        ),
    ] {
        let response = raw_request(edge.addr, &format!("{request}Connection: close\r\n\r\n")).await;
        assert_eq!(response.status, status, "{request:?}: {response:?}");
    }
    assert_eq!(
        h.origin.hits("/h"),
        4,
        "only the requests served reached the origin"
    );
}

/// An absolute target names an http or https resource: `ftp://a/h` was served as `/h`. And its
/// path may be empty (RFC 9112 §3.2.1: `http://a?x=1` is `/?x=1`), which got a 400.
#[tokio::test]
async fn an_absolute_target_is_http_or_https_and_its_empty_path_is_the_root() {
    let h = Harness::new().await;
    let fresh = |body| Reply::ok(body).header("cache-control", "max-age=60");
    h.origin.reply("/h", fresh("h"));
    h.origin.reply("/?x=1", fresh("root x"));
    let edge = h.edge().await;
    for (target, status, body) in [
        ("ftp://edge.example/h", 400, None),
        ("ws://edge.example/h", 400, None),
        ("HTTP://edge.example/h", 200, Some("h")),
        ("https://edge.example/h", 200, Some("h")),
        ("http://edge.example?x=1", 200, Some("root x")),
    ] {
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: edge.example\r\nConnection: close\r\n\r\n");
        let response = raw_request(edge.addr, &request).await;
        assert_eq!(response.status, status, "{target}: {response:?}");
        if let Some(body) = body {
            assert_eq!(response.body, body.as_bytes(), "{target}");
        }
    }
    assert_eq!(h.origin.hits("/h"), 1, "then a hit");
    assert_eq!(h.origin.hits("/?x=1"), 1);
}

/// RFC 9112 §6.1: a transfer coding edge does not understand gets a 501. hyper decoded the
/// `chunked` of `gzip, chunked` and the body went on as plain content, without its `gzip`.
#[tokio::test]
async fn a_request_body_in_an_unknown_transfer_coding_gets_a_501() {
    let h = Harness::new().await;
    h.origin.reply("/up", Reply::ok("thanks").status(201));
    let edge = h.edge().await;
    for coding in ["gzip, chunked", "chunked, chunked"] {
        let request = format!(
            "POST /up HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: {coding}\r\n\
             Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let response = raw_request(edge.addr, &request).await;
        assert_eq!(response.status, 501, "{coding}: {response:?}");
        let said = response.header("cache-status");
        assert_eq!(said, Some("edge; detail=transfer-coding"), "{coding}");
    }
    assert_eq!(h.origin.hits("/up"), 0);
    let request = "POST /up HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\n\
                   Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(raw_request(edge.addr, request).await.status, 201);
    assert_eq!(h.origin.last("/up").unwrap().body, "hello");
}

/// RFC 9110 §10.1.1: an HTTP/1.0 client's `Expect: 100-continue` is ignored, and not passed on
/// for the origin to act on.
#[tokio::test]
async fn an_http10_expectation_goes_no_further() {
    let h = Harness::new().await;
    h.origin.reply("/e", Reply::ok("thanks").status(201));
    let edge = h.edge().await;
    let request = "POST /e HTTP/1.0\r\nHost: edge\r\nExpect: 100-continue\r\n\
                   Content-Length: 5\r\n\r\nhello";
    assert_eq!(raw_request(edge.addr, request).await.status, 201);
    let received = h.origin.last("/e").unwrap();
    assert!(
        !received.headers.contains_key("expect"),
        "{:?}",
        received.headers
    );
    assert_eq!(received.body, "hello");
}

/// RFC 9113 §8.2.1, §8.1.1: over HTTP/2 a field value that begins or ends with whitespace makes
/// the request malformed, and it is not forwarded; nor is one with two `Host` fields or a `Host`
/// with a user in it, as over HTTP/1.1 (RFC 9112 §3.2), nor one whose `Host` names another
/// authority than its `:authority` (RFC 9113 §8.3.1).
#[tokio::test]
async fn a_malformed_http2_request_is_refused_not_forwarded() {
    let h = Harness::new().await;
    h.origin.reply("/m", Reply::ok("fine"));
    let edge = h.edge().await;
    let h2 = common::h2_client();
    let bad: [&[(&str, &str)]; 6] = [
        &[("x-a", "  padded  ")],
        &[("x-a", "\tv")],
        &[("x-a", " ")],
        &[("host", "a.test"), ("host", "b.test")],
        &[("host", "user@a.test")],
        &[("host", "elsewhere.test")],
    ];
    for fields in bad {
        let mut request = h2.get(edge.url("/m"));
        for (name, value) in fields {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), 400, "{fields:?}");
        let said = response.headers()["cache-status"].to_str().unwrap();
        assert_eq!(said, "edge; detail=invalid-request", "{fields:?}");
    }
    assert_eq!(h.origin.hits("/m"), 0);
    let fine = h2
        .get(edge.url("/m"))
        .header("x-a", "in the middle ok")
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), 200);
    assert_eq!(h.origin.hits("/m"), 1);
    // A `Host` that names the same authority is no conflict.
    let same = edge.addr.to_string();
    let fine = h2
        .get(edge.url("/m"))
        .header("host", same)
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), 200);
}

/// RFC 9113 §8.3.1 compares `Host` with `:authority` after scheme-based normalisation (RFC 3986
/// §6.2.3): the scheme's default port, or an empty one, written in one and not the other, and
/// the host's letter case, make no other authority (they were answered 400). Another port does.
#[tokio::test]
async fn an_http2_host_differing_from_authority_only_by_default_port_or_case_is_served() {
    let h = Harness::new().await;
    h.origin.reply("/m", Reply::ok("fine"));
    let edge = h.edge().await;
    // `:authority: edge.test`, connected to edge's port.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .resolve("edge.test", edge.addr)
        .build()
        .unwrap();
    for (host, status) in [
        ("edge.test:80", 200),
        ("EDGE.Test:80", 200),
        ("edge.test:", 200),
        ("edge.test:443", 400),
        ("edge.test:8080", 400),
    ] {
        let response = h2
            .get("http://edge.test/m")
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "Host: {host}");
    }
    assert_eq!(h.origin.hits("/m"), 3);
}

/// RFC 9112 §6.3: `Content-Length` on two lines that agree is one length; it goes on as one line
/// (an origin may refuse a request with two). Over HTTP/2 both lines reach edge.
#[tokio::test]
async fn a_content_length_sent_twice_goes_on_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let (head_tx, head_rx) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"\r\n\r\nhello") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let _ = head_tx.send(String::from_utf8_lossy(&got).to_lowercase());
        let answer = b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n";
        socket.write_all(answer).await.unwrap();
        let _ = socket.read(&mut buf).await;
    });
    let h = Harness::new().await;
    let edge = h.edge_before(origin).await;
    let h2 = common::h2_client();
    let mut fields = reqwest::header::HeaderMap::new();
    fields.append("content-length", "5".parse().unwrap());
    fields.append("content-length", "5".parse().unwrap());
    let body = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from("hello"))]);
    let response = (h2.post(edge.url("/up")).headers(fields))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let head = head_rx.await.unwrap();
    assert_eq!(head.matches("content-length: 5\r\n").count(), 1, "{head}");
}

/// RFC 9110 §10.1.1: a request without content may not expect `100 Continue`; a fill sends none,
/// so a client's `Expect` on a GET goes no further.
#[tokio::test]
async fn a_get_expectation_goes_no_further() {
    let h = Harness::new().await;
    h.origin
        .reply("/g", Reply::ok("got").header("cache-control", "max-age=60"));
    let edge = h.edge().await;
    let answer = edge.get_with("/g", &[("expect", "100-continue")]).await;
    assert_eq!(answer.text(), "got");
    let received = h.origin.last("/g").unwrap();
    assert_eq!(received.headers.get("expect"), None);
}

/// RFC 6265 §5.4: an HTTP/1.1 origin reads one `Cookie` line. A client's several lines go on as
/// one, joined with `; ` as HTTP/2's are (RFC 9113 §8.2.3), which is how `Vary: Cookie` reads
/// them too.
#[tokio::test]
async fn several_cookie_lines_go_on_as_one() {
    let h = Harness::new().await;
    h.origin.reply("/c", Reply::ok("crumbs"));
    let edge = h.edge().await;
    let request = "GET /c HTTP/1.1\r\nHost: edge\r\nCookie: a=1\r\nCookie: b=2\r\n\
                   Connection: close\r\n\r\n";
    assert_eq!(raw_request(edge.addr, request).await.status, 200);
    let received = h.origin.last("/c").unwrap();
    let cookies: Vec<_> = received.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);
}

/// A PROXY protocol version 2 header (`command` 0x21 PROXY, 0x20 LOCAL) for a TCP connection
/// from `source` (IPv6, or none for LOCAL).
fn proxy_v2(command: u8, source: Option<(std::net::Ipv6Addr, u16)>) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(command);
    match source {
        Some((address, port)) => {
            header.extend_from_slice(&[0x21, 0, 36]);
            header.extend_from_slice(&address.octets());
            header.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            header.extend_from_slice(&port.to_be_bytes());
            header.extend_from_slice(&8080u16.to_be_bytes());
        }
        None => header.extend_from_slice(&[0, 0, 0]),
    }
    header
}

/// Behind a load balancer or TLS terminator that speaks the PROXY protocol (HAProxy's
/// `send-proxy`, hitch, a cloud load balancer), the client's address comes from its header, in
/// either version, whether or not the request came in the same segment: it is the address in
/// `X-Forwarded-For`, the one `purge.allow` is checked against, and it holds for every request
/// on the connection. A version 2 `LOCAL` header (the proxy's own health check) is the proxy's
/// address.
#[tokio::test]
async fn a_proxy_protocol_header_gives_the_client_address() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let edge = h
        .edge_with(|c| c.proxy_protocol = vec!["127.0.0.0/8".parse().unwrap()])
        .await;
    let forwarded_for = || joined(&h.origin.last("/a").unwrap().headers, "x-forwarded-for");
    let get = "GET /a HTTP/1.1\r\nHost: x\r\ncache-control: no-cache\r\n\r\n";

    let mut stream = TcpStream::connect(edge.addr).await.unwrap();
    let v1 = format!("PROXY TCP4 203.0.113.7 10.0.0.1 51000 8080\r\n{get}");
    stream.write_all(v1.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut stream, "closed").await.status, 200);
    assert_eq!(forwarded_for(), "203.0.113.7");
    stream.write_all(get.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut stream, "closed").await.status, 200);
    assert_eq!(forwarded_for(), "203.0.113.7", "the second request");
    let purge = "PURGE /a HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(purge.as_bytes()).await.unwrap();
    let refused = read_response(&mut stream, "closed").await;
    assert_eq!(refused.status, 403, "203.0.113.7 is not in purge.allow");

    let mut stream = TcpStream::connect(edge.addr).await.unwrap();
    let source = "2001:db8::7".parse().unwrap();
    stream
        .write_all(&proxy_v2(0x21, Some((source, 51000))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(get.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut stream, "closed").await.status, 200);
    assert_eq!(forwarded_for(), "2001:db8::7");

    let mut stream = TcpStream::connect(edge.addr).await.unwrap();
    let mut local = proxy_v2(0x20, None);
    local.extend_from_slice(purge.as_bytes());
    stream.write_all(&local).await.unwrap();
    let purged = read_response(&mut stream, "closed").await;
    assert_eq!(
        purged.status, 200,
        "LOCAL: the proxy's own address, loopback"
    );
    assert_eq!(h.origin.hits("/a"), 3);
}

/// HTTP/2 with prior knowledge after the header (a TLS terminator passing h2 on as h2c).
#[tokio::test]
async fn http2_follows_a_proxy_protocol_header() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let edge = h
        .edge_with(|c| c.proxy_protocol = vec!["127.0.0.1/32".parse().unwrap()])
        .await;
    let mut tcp = TcpStream::connect(edge.addr).await.unwrap();
    tcp.write_all(b"PROXY TCP6 2001:db8::9 2001:db8::1 40000 443\r\n")
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(edge.url("/a"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    assert_eq!(&body.to_bytes()[..], b"a");
    assert_eq!(
        joined(&h.origin.last("/a").unwrap().headers, "x-forwarded-for"),
        "2001:db8::9"
    );
}

/// A connection from a `proxy_protocol` address that does not begin with a valid header is
/// closed unanswered, as nginx and HAProxy close it; a client not in the list cannot name an
/// address (its PROXY line is a malformed request) and is served as usual.
#[tokio::test]
async fn only_the_listed_proxies_send_the_proxy_protocol() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let edge = h
        .edge_with(|c| c.proxy_protocol = vec!["127.0.0.0/8".parse().unwrap()])
        .await;
    for first in [
        "GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
        "PROXY TCP4 203.0.113.7 10.0.0.1 51000\r\n",
        "PROXY TCP4 203.0.113.300 10.0.0.1 51000 8080\r\n",
        // Ended by a space and a bare LF, not CRLF.
        "PROXY TCP4 203.0.113.7 10.0.0.1 51000 8080 \n",
    ] {
        let mut stream = TcpStream::connect(edge.addr).await.unwrap();
        stream.write_all(first.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got));
        assert!(read.await.is_ok(), "{first:?}: left open");
        assert!(got.is_empty(), "{first:?}: answered");
    }
    assert_eq!(h.origin.hits("/a"), 0);

    let edge = h
        .edge_with(|c| c.proxy_protocol = vec!["10.0.0.0/8".parse().unwrap()])
        .await;
    let spoofed = "PROXY TCP4 10.9.9.9 10.0.0.1 51000 8080\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(raw_request(edge.addr, spoofed).await.status, 400);
    let plain = raw_request(edge.addr, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(plain.status, 200);
    assert_eq!(
        joined(&h.origin.last("/a").unwrap().headers, "x-forwarded-for"),
        "127.0.0.1"
    );
}

/// A load balancer sends its PROXY header as soon as it has the client's connection, before the
/// client sends anything (a browser's preconnect, a client that never sends a request): such a
/// connection, closed at `client_header_timeout` with no request begun, is an idle one, as it is
/// without the header; one whose request head has begun is a slow head.
#[tokio::test]
async fn a_connection_idle_after_its_proxy_protocol_header_counts_as_idle() {
    let h = Harness::new().await;
    let edge = h
        .edge_with(|c| {
            c.proxy_protocol = vec!["127.0.0.0/8".parse().unwrap()];
            c.client_header_timeout.0 = Duration::from_millis(500);
        })
        .await;
    for sent in [
        &b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 8080\r\n"[..],
        &proxy_v2(0x21, Some(("2001:db8::7".parse().unwrap(), 51000))),
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 8080\r\nGET /a HTTP/1.1\r\n",
    ] {
        let mut stream = TcpStream::connect(edge.addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    }
    let metrics = edge.metrics().await;
    assert_eq!(disconnects(&metrics, "idle"), 2.0, "{metrics}");
    assert_eq!(disconnects(&metrics, "slow_head"), 1.0, "{metrics}");
}

/// A version 1 header may come in more than one read: one cut anywhere in it, here right after
/// its source port (where ppp takes what it has for a header with an empty destination port),
/// is read to its end.
#[tokio::test]
async fn a_proxy_protocol_header_cut_anywhere_is_read_whole() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let edge = h
        .edge_with(|c| c.proxy_protocol = vec!["127.0.0.0/8".parse().unwrap()])
        .await;
    let header = "PROXY TCP4 203.0.113.7 10.0.0.1 51000 8080\r\n";
    let get = "GET /a HTTP/1.1\r\nHost: x\r\ncache-control: no-cache\r\n\r\n";
    for cut in 1..header.len() {
        let mut stream = TcpStream::connect(edge.addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        stream.write_all(&header.as_bytes()[..cut]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let rest = format!("{}{get}", &header[cut..]);
        // Closed on the first part, the rest may find the connection reset.
        let _ = stream.write_all(rest.as_bytes()).await;
        let response = read_response(&mut stream, &format!("cut at {cut}: closed")).await;
        assert_eq!(response.status, 200, "cut at {cut}");
        let forwarded_for = joined(&h.origin.last("/a").unwrap().headers, "x-forwarded-for");
        assert_eq!(forwarded_for, "203.0.113.7", "cut at {cut}");
    }
}

/// A TLS terminator in front (HAProxy's `send-proxy-v2-ssl`, hitch) says in its version 2 header
/// (`PP2_TYPE_SSL`, client bit set) that the client's connection was TLS: the request is https,
/// as on edge's own HTTPS listener: `X-Forwarded-Proto: https` to the origin, and cached apart
/// from the http one (an origin's cacheable http → https redirect must not reach it). The same
/// TLV with the client bit clear is plain http.
#[tokio::test]
async fn a_proxy_protocol_ssl_tlv_makes_the_request_https() {
    let h = Harness::new().await;
    h.origin
        .reply("/a", Reply::ok("a").header("cache-control", "max-age=60"));
    let edge = h
        .edge_with(|c| c.proxy_protocol = vec!["127.0.0.0/8".parse().unwrap()])
        .await;
    let header = |client_flags: u8| {
        let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        header.extend_from_slice(&[0x21, 0x11, 0, 20]);
        header.extend_from_slice(&[203, 0, 113, 7, 10, 0, 0, 1]);
        header.extend_from_slice(&51000u16.to_be_bytes());
        header.extend_from_slice(&443u16.to_be_bytes());
        header.extend_from_slice(&[0x20, 0, 5, client_flags, 0, 0, 0, 0]);
        header
    };
    let get = |flags: u8| {
        let mut sent = header(flags);
        sent.extend_from_slice(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
        let addr = edge.addr;
        async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&sent).await.unwrap();
            read_response(&mut stream, "closed").await
        }
    };
    let proto = || joined(&h.origin.last("/a").unwrap().headers, "x-forwarded-proto");

    let first = get(0x01).await;
    assert_eq!(first.status, 200);
    assert!(!first.header("cache-status").unwrap().contains("hit"));
    assert_eq!(proto(), "https");
    assert!(
        get(0x01)
            .await
            .header("cache-status")
            .unwrap()
            .contains("hit")
    );
    let plain = get(0x00).await;
    assert!(
        !plain.header("cache-status").unwrap().contains("hit"),
        "the https response"
    );
    assert_eq!(proto(), "http");
    assert_eq!(h.origin.hits("/a"), 2);
    assert_eq!(
        joined(&h.origin.last("/a").unwrap().headers, "x-forwarded-for"),
        "203.0.113.7"
    );
}
