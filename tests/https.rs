//! HTTPS for clients (`tls:`): the same service as on `listen`, after a TLS handshake, HTTP/1.1
//! or HTTP/2 by ALPN; the origin told `X-Forwarded-Proto: https`; http and https responses kept
//! apart and purged together; the certificate re-read on SIGHUP; handshakes that fail, and PROXY
//! protocol headers before them.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Harness, Reply, Resp, TestEdge, free_port};
use edge::config::{Config, TlsConfig};
use http::Method;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A self-signed certificate for `localhost`, and its key, in PEM.
struct Identity {
    certificate: String,
    key: String,
}

impl Identity {
    fn new() -> Self {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        Self {
            certificate: generated.cert.pem(),
            key: generated.signing_key.serialize_pem(),
        }
    }

    /// Writes the two files into `dir`, as `name.crt` and `name.key`.
    fn write(&self, dir: &Path, name: &str) {
        std::fs::write(dir.join(format!("{name}.crt")), &self.certificate).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), &self.key).unwrap();
    }
}

/// A `tls:` section on 127.0.0.1:0 for the files `name.crt` and `name.key` in `dir`, read as the
/// configuration reads them.
fn tls_section(dir: &Path, name: &str) -> TlsConfig {
    let yaml = format!(
        "origin:\n  url: http://o\ntls:\n  listen: 127.0.0.1:0\n  certificate: {}\n  key: {}\n",
        dir.join(format!("{name}.crt")).display(),
        dir.join(format!("{name}.key")).display(),
    );
    Config::parse(&yaml, "t.yaml").unwrap().tls.unwrap()
}

/// An edge with an HTTPS listener (and `tweak` applied), its certificate, and the directory of
/// the certificate files.
async fn https_edge(h: &Harness, tweak: impl FnOnce(&mut Config)) -> (TestEdge, Identity, TempDir) {
    let files = TempDir::new().unwrap();
    let identity = Identity::new();
    identity.write(files.path(), "edge");
    let tls = tls_section(files.path(), "edge");
    let edge = h
        .edge_with(|c| {
            c.tls = Some(tls);
            tweak(c);
        })
        .await;
    (edge, identity, files)
}

/// A client that trusts `identity` alone, and reaches `localhost` at `addr`.
fn client(identity: &Identity, addr: SocketAddr) -> reqwest::ClientBuilder {
    let root = reqwest::Certificate::from_pem(identity.certificate.as_bytes()).unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve("localhost", addr)
}

fn https_url(addr: SocketAddr, path: &str) -> String {
    format!("https://localhost:{}{path}", addr.port())
}

async fn send(client: &reqwest::Client, method: Method, url: &str) -> Resp {
    Resp::read(client.request(method, url).send().await.unwrap()).await
}

/// The one header line `name` of the origin's last request for `path`.
fn told(h: &Harness, path: &str, name: &str) -> String {
    let received = h.origin.last(path).unwrap();
    let values: Vec<_> = received.headers.get_all(name).iter().collect();
    assert_eq!(values.len(), 1, "{name}: {values:?}");
    values[0].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn https_serves_a_miss_then_a_hit_from_the_cache() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("secure body").header("cache-control", "max-age=60"),
    );
    let (edge, identity, _files) = https_edge(&h, |_| {}).await;
    let tls = edge.tls_addr.unwrap();
    let client = client(&identity, tls).build().unwrap();

    let first = send(&client, Method::GET, &https_url(tls, "/a")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "secure body");
    assert_eq!(
        first.cache_status(),
        "edge; fwd=uri-miss; fwd-status=200; stored; ttl=60"
    );
    h.clock.advance(Duration::from_secs(5));
    let second = send(&client, Method::GET, &https_url(tls, "/a")).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "secure body");
    assert_eq!(second.cache_status(), "edge; hit; ttl=55; detail=memory");
    assert_eq!(second.age(), Some(5));
    assert_eq!(h.origin.hits("/a"), 1);
}

/// ALPN `h2` gets HTTP/2, `http/1.1` (or a client offering only it) HTTP/1.1; a client that
/// offers no ALPN and opens with HTTP/2's preface gets HTTP/2 too.
#[tokio::test]
async fn http2_and_http1_over_tls_by_alpn() {
    let h = Harness::new().await;
    h.origin
        .reply("/a", Reply::ok("a").header("cache-control", "max-age=60"));
    let (edge, identity, _files) = https_edge(&h, |_| {}).await;
    let tls = edge.tls_addr.unwrap();

    let h2 = client(&identity, tls).build().unwrap();
    let response = h2.get(https_url(tls, "/a")).send().await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.text().await.unwrap(), "a");
    let h1 = client(&identity, tls).http1_only().build().unwrap();
    let response = h1.get(https_url(tls, "/a")).send().await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_11);
    assert_eq!(response.text().await.unwrap(), "a");

    // No ALPN, HTTP/2 with prior knowledge.
    let stream = handshake(&identity, TcpStream::connect(tls).await.unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    let response = http2_get(stream, tls, "/a").await;
    assert_eq!(response.0, 200);
    assert_eq!(&response.1[..], b"a");
    assert_eq!(h.origin.hits("/a"), 1);
}

/// A TLS client handshake on `tcp`, trusting `identity`, offering `alpn`.
async fn handshake(
    identity: &Identity,
    tcp: TcpStream,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(identity.certificate.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// An HTTP/2 GET of `path` on `stream`: status and body.
async fn http2_get<S>(stream: S, addr: SocketAddr, path: &str) -> (u16, Bytes)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(https_url(addr, path))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    (status, body.to_bytes())
}

/// An HTTP/1.1 GET of `path` on `stream`: status and body.
async fn http1_get<S>(stream: S, path: &str) -> (u16, Bytes)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::TokioIo;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", "localhost")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    (status, body.to_bytes())
}

#[tokio::test]
async fn the_origin_is_told_which_scheme_the_client_used() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let (edge, identity, _files) = https_edge(&h, |_| {}).await;
    let tls = edge.tls_addr.unwrap();
    let client = client(&identity, tls).build().unwrap();

    assert_eq!(edge.get("/a").await.status, 200);
    assert_eq!(told(&h, "/a", "x-forwarded-proto"), "http");
    // A client's own claim is not passed on.
    let response = client
        .get(https_url(tls, "/a"))
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(told(&h, "/a", "x-forwarded-proto"), "https");
    // Forwarded methods too.
    let posted = send(&client, Method::POST, &https_url(tls, "/a")).await;
    assert_eq!(posted.status, 200);
    assert_eq!(h.origin.last("/a").unwrap().method, Method::POST);
    assert_eq!(told(&h, "/a", "x-forwarded-proto"), "https");
}

/// An origin that redirects http to https by `X-Forwarded-Proto`, cacheably: the redirect is
/// stored for http, and https clients get the page, not the redirect (a loop). Each scheme is
/// fetched once and served from its own entry after.
#[tokio::test]
async fn http_and_https_responses_are_stored_apart() {
    use axum::response::IntoResponse;
    let h = Harness::new().await;
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (counted, clock) = (hits.clone(), h.clock.clone());
    let app = axum::Router::new().fallback(move |headers: http::HeaderMap| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let https = headers
            .get("x-forwarded-proto")
            .is_some_and(|p| p == "https");
        let date = common::http_date(clock.now());
        async move {
            let cached = [("cache-control", "max-age=3600".to_owned()), ("date", date)];
            if https {
                (http::StatusCode::OK, cached, "the page").into_response()
            } else {
                let to = [("location", "https://localhost/page")];
                (http::StatusCode::MOVED_PERMANENTLY, cached, to, "").into_response()
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let files = TempDir::new().unwrap();
    let identity = Identity::new();
    identity.write(files.path(), "edge");
    let tls = tls_section(files.path(), "edge");
    let url = format!("http://{origin}").parse().unwrap();
    let edge = h
        .edge_with(|c| {
            c.origin.url = edge::config::OriginUrl(url);
            c.tls = Some(tls);
        })
        .await;
    let tls = edge.tls_addr.unwrap();
    let client = client(&identity, tls).build().unwrap();

    for round in 0..2 {
        let http = edge.get("/page").await;
        assert_eq!(http.status, 301, "round {round}");
        assert_eq!(http.header("location"), Some("https://localhost/page"));
        let https = send(&client, Method::GET, &https_url(tls, "/page")).await;
        assert_eq!(https.status, 200, "round {round}: {:?}", https.headers);
        assert_eq!(https.text(), "the page");
        assert_eq!(http.is_hit(), round == 1, "{}", http.cache_status());
        assert_eq!(https.is_hit(), round == 1, "{}", https.cache_status());
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A purge by URL (`url=`, or `PURGE` by either scheme) or by prefix removes what was stored for
/// http and for https.
#[tokio::test]
async fn purges_remove_the_http_and_the_https_responses() {
    let h = Harness::new().await;
    h.origin
        .reply("/p/a", Reply::ok("a").header("cache-control", "max-age=60"));
    let (edge, identity, _files) = https_edge(&h, |_| {}).await;
    let tls = edge.tls_addr.unwrap();
    let client = client(&identity, tls).build().unwrap();
    let https_url = https_url(tls, "/p/a");
    let both_hit = async || {
        let http = edge.get("/p/a").await;
        let https = send(&client, Method::GET, &https_url).await;
        (http.is_hit(), https.is_hit())
    };

    assert_eq!(both_hit().await, (false, false));
    assert_eq!(both_hit().await, (true, true));
    assert_eq!(h.origin.hits("/p/a"), 2);

    let purged = edge.purge_form(&[("url", "/p/a")]).await;
    assert_eq!(purged["purged"], 2, "{purged}");
    assert_eq!(both_hit().await, (false, false), "after url=");
    assert_eq!(h.origin.hits("/p/a"), 4);

    let purged = edge.purge_form(&[("prefix", "/p/")]).await;
    assert_eq!(purged["purged"], 2, "{purged}");
    assert_eq!(both_hit().await, (false, false), "after prefix=");
    assert_eq!(h.origin.hits("/p/a"), 6);

    let purged = edge
        .send(Method::from_bytes(b"PURGE").unwrap(), "/p/a", &[])
        .await;
    assert_eq!(purged.status, 200);
    assert!(purged.text().contains("\"purged\":2"), "{}", purged.text());
    assert_eq!(both_hit().await, (false, false), "after PURGE by http");
    assert_eq!(h.origin.hits("/p/a"), 8);

    let method = Method::from_bytes(b"PURGE").unwrap();
    let purged = send(&client, method, &https_url).await;
    assert_eq!(purged.status, 200);
    assert!(purged.text().contains("\"purged\":2"), "{}", purged.text());
    assert_eq!(both_hit().await, (false, false), "after PURGE by https");
    assert_eq!(h.origin.hits("/p/a"), 10);
}

/// A plain HTTP request to the HTTPS port is answered 400, saying so, as nginx answers it, and
/// counted; anything else that is not a ClientHello has its connection closed, unanswered; edge
/// goes on serving HTTPS.
#[tokio::test]
async fn a_connection_that_is_not_tls_is_closed_and_plain_http_told_why() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let (edge, identity, _files) = https_edge(&h, |_| {}).await;
    let tls = edge.tls_addr.unwrap();
    // The request in two writes, the second after edge could have answered the first.
    let mut stream = TcpStream::connect(tls).await.unwrap();
    stream.write_all(b"GET /a HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(b"Host: x\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got));
    read.await.expect("closed").unwrap();
    let got = String::from_utf8(got).unwrap();
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    assert!(got.contains("\r\nconnection: close\r\n"), "{got}");
    assert!(
        got.contains("\r\ncache-status: edge; detail=plain-http\r\n"),
        "{got}"
    );
    assert!(
        got.ends_with("\r\n\r\nedge: a plain HTTP request was sent to the HTTPS port\n"),
        "{got}"
    );
    let metrics = edge.metrics().await;
    let counted = "edge_requests_total{cache_status=\"error\"} 1";
    assert!(metrics.contains(counted), "{metrics}");
    // Its body counts as sent, as any other answer's.
    let body = "edge: a plain HTTP request was sent to the HTTPS port\n";
    let served = common::sample(&metrics, "edge_served_bytes_total");
    assert_eq!(served, body.len() as f64, "{metrics}");
    for garbage in [
        &[0x16, 3, 1, 0, 4, 0xff, 0xff, 0xff, 0xff][..],
        &[0u8; 4096][..],
        b"get / HTTP/1.1\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(tls).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got));
        let read = read.await.expect("closed");
        // A TLS alert at most (rustls answers a malformed handshake with one), never HTTP.
        assert!(read.is_err() || !got.starts_with(b"HTTP"), "{got:?}");
    }
    assert_eq!(h.origin.hits("/a"), 0);
    let client = client(&identity, tls).build().unwrap();
    assert_eq!(
        send(&client, Method::GET, &https_url(tls, "/a"))
            .await
            .status,
        200
    );
}

/// A plain HTTP request whose lines end in bare LFs (`printf 'GET / HTTP/1.0\n\n' | nc`, which
/// hyper takes on the plain listener) is answered 400 as well, not left unanswered until
/// `client_header_timeout` closes it; so is one whose head comes a byte at a time.
#[tokio::test]
async fn a_plain_http_request_with_bare_line_feeds_on_the_https_port_is_answered() {
    let h = Harness::new().await;
    let (edge, _identity, _files) = https_edge(&h, |_| {}).await;
    let tls = edge.tls_addr.unwrap();
    let heads: [&[&[u8]]; 3] = [
        &[b"GET / HTTP/1.0\n\n"],
        &[b"GET / HTTP/1.1\nHost: x\n", b"\n"],
        &[b"G", b"ET / HTTP/1.1\r", b"\nHost: x\r\n", b"\r", b"\n"],
    ];
    for writes in heads {
        let mut stream = TcpStream::connect(tls).await.unwrap();
        for bytes in writes {
            stream.write_all(bytes).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got));
        assert!(read.await.is_ok(), "{writes:?}: unanswered after 5 s");
        let got = String::from_utf8(got).unwrap();
        assert!(
            got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{writes:?}: {got}"
        );
    }
}

/// A plain HTTP client that sends a head and stops is closed at `client_header_timeout`, as on
/// the plain listener.
#[tokio::test]
async fn a_plain_http_head_never_finished_on_the_https_port_is_closed_in_time() {
    let h = Harness::new().await;
    let (edge, _identity, _files) = https_edge(&h, |c| {
        c.client_header_timeout = edge::config::Seconds(Duration::from_secs(1));
    })
    .await;
    let mut stream = TcpStream::connect(edge.tls_addr.unwrap()).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got));
    assert!(read.await.is_ok(), "still open after 5 s");
    assert!(got.is_empty(), "{got:?}");
    let slow = "edge_client_disconnects_total{reason=\"slow_head\"} 1";
    let metrics = edge.metrics().await;
    assert!(metrics.contains(slow), "{metrics}");
}

/// A handshake counts against `client_header_timeout`, as a request head does: a client that
/// stops part-way through its ClientHello is closed.
#[tokio::test]
async fn a_stalled_handshake_is_closed_after_client_header_timeout() {
    let h = Harness::new().await;
    let (edge, _identity, _files) = https_edge(&h, |c| {
        c.client_header_timeout = edge::config::Seconds(Duration::from_secs(1));
    })
    .await;
    let mut stream = TcpStream::connect(edge.tls_addr.unwrap()).await.unwrap();
    // A handshake record's header, announcing 512 bytes that never come.
    stream.write_all(&[0x16, 3, 1, 2, 0]).await.unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got));
    assert!(read.await.is_ok(), "still open after 5 s");
    assert!(got.is_empty(), "{got:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// From a `proxy_protocol` address, the PROXY header comes first, on the TCP connection, and the
/// TLS handshake after it; the client's address is the header's.
#[tokio::test]
async fn a_proxy_protocol_header_comes_before_the_handshake() {
    let h = Harness::new().await;
    h.origin.reply("/a", Reply::ok("a"));
    let (edge, identity, _files) = https_edge(&h, |c| {
        c.proxy_protocol = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let tls = edge.tls_addr.unwrap();
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut tcp = TcpStream::connect(tls).await.unwrap();
        tcp.write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n")
            .await
            .unwrap();
        let stream = handshake(&identity, tcp, &[alpn]).await.unwrap();
        let (status, body) = if alpn == b"h2" {
            http2_get(stream, tls, "/a").await
        } else {
            http1_get(stream, "/a").await
        };
        assert_eq!((status, &body[..]), (200, &b"a"[..]));
        assert_eq!(told(&h, "/a", "x-forwarded-for"), "203.0.113.7");
        assert_eq!(told(&h, "/a", "x-forwarded-proto"), "https");
    }
    // Without the header, the handshake is taken for a broken one: closed.
    let tcp = TcpStream::connect(tls).await.unwrap();
    assert!(handshake(&identity, tcp, &[]).await.is_err());
    assert_eq!(h.origin.hits("/a"), 2);
}

/// SIGHUP re-reads the certificate and key: new connections get the new certificate; files that
/// do not load (a key that is not the certificate's) are refused, and the running certificate
/// stays.
#[tokio::test]
async fn sighup_rotates_the_certificate_and_keeps_it_when_the_new_files_are_bad() {
    let origin = common::Origin::start(edge::clock::Clock::system()).await;
    origin.reply("/a", Reply::ok("a"));
    let dir = TempDir::new().unwrap();
    let (old, new) = (Identity::new(), Identity::new());
    old.write(dir.path(), "edge");
    let (listen, admin, https) = (free_port(), free_port(), free_port());
    let config = dir.path().join("edge.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:{listen}\norigin:\n  url: {}\ncache:\n  disk:\n    path: store\n\
         admin:\n  listen: 127.0.0.1:{admin}\ntls:\n  listen: 127.0.0.1:{https}\n  \
         certificate: edge.crt\n  key: edge.key\n",
        origin.url()
    );
    std::fs::write(&config, yaml).unwrap();
    let log = dir.path().join("stderr.log");
    let process = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["--config", config.to_str().unwrap()])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .env_remove("RUST_LOG")
        .spawn()
        .unwrap();
    let process = common::Running(process);
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    let tls: SocketAddr = ([127, 0, 0, 1], https).into();
    // A new client each time: a connection of its own.
    let trusted = async |identity: &Identity| {
        let client = client(identity, tls).build().unwrap();
        let response = client.get(https_url(tls, "/a")).send().await;
        response.is_ok_and(|r| r.status() == 200)
    };
    let wait_for = async |what: &str, done: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(&stderr()) {
            assert!(Instant::now() < deadline, "no {what}:\n{}", stderr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_for("start", &|log| log.contains("edge serving")).await;
    assert!(trusted(&old).await, "{}", stderr());
    assert!(!trusted(&new).await);

    new.write(dir.path(), "edge");
    let hup = || {
        let pid = process.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    hup();
    wait_for("reload", &|log| log.contains("configuration reloaded")).await;
    assert!(trusted(&new).await, "{}", stderr());
    assert!(!trusted(&old).await);

    // A key that is not the certificate's.
    std::fs::write(dir.path().join("edge.key"), &old.key).unwrap();
    hup();
    wait_for("rejection", &|log| log.contains("reload rejected")).await;
    let rejected = stderr();
    let line = rejected
        .lines()
        .find(|l| l.contains("reload rejected"))
        .unwrap();
    assert!(line.contains("tls.key"), "{line}");
    assert!(trusted(&new).await, "{}", stderr());
    assert!(!trusted(&old).await);
}

/// `edge check` reads the certificate files: one missing is an error naming the key and its
/// line, and the exit status says so.
#[test]
fn edge_check_names_a_missing_certificate_file() {
    let dir = TempDir::new().unwrap();
    Identity::new().write(dir.path(), "edge");
    let config = dir.path().join("edge.yaml");
    std::fs::write(
        &config,
        "origin:\n  url: http://127.0.0.1:9\ntls:\n  listen: 127.0.0.1:8443\n  certificate: gone.crt\n  key: edge.key\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["--config", config.to_str().unwrap(), "check"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("edge.yaml:5:3: tls.certificate: cannot read gone.crt"),
        "{stderr}"
    );
}
