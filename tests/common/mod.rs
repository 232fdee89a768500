//! Test harness: a scripted fixture origin on 127.0.0.1:0 that counts requests per path, and an
//! edge node run in-process against it, sharing one manual clock.
//!
//! ```ignore
//! let h = Harness::new().await;
//! h.origin.reply("/a", Reply::ok("body").header("cache-control", "max-age=60"));
//! let edge = h.edge().await;
//! let first = edge.get("/a").await;
//! assert_eq!(first.cache_status(), "edge; fwd=uri-miss; fwd-status=200; stored; ttl=60");
//! h.clock.advance(Duration::from_secs(10));
//! assert_eq!(edge.get("/a").await.age(), Some(10));
//! assert_eq!(h.origin.hits("/a"), 1);
//! ```
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use edge::clock::Clock;
use edge::config::Config;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A fixed point in time the manual clock starts at (whole seconds, so HTTP dates are exact).
pub fn start_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// An HTTP date for `t`.
pub fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// One scripted origin response.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// Send the body chunked, without a Content-Length.
    pub chunked: bool,
}

impl Reply {
    pub fn ok(body: impl Into<Bytes>) -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
            delay: None,
            chunked: false,
        }
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }
}

/// A request as the origin received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
struct OriginState {
    replies: HashMap<String, Reply>,
    hits: HashMap<String, usize>,
    received: Vec<Received>,
    /// Requests being answered now, and the most there have been at once.
    in_flight: usize,
    max_in_flight: usize,
}

/// Counts a request in flight until it is answered or its connection goes.
struct InFlight(Arc<Mutex<OriginState>>);

impl InFlight {
    fn new(state: Arc<Mutex<OriginState>>) -> Self {
        {
            let mut state = state.lock().unwrap();
            state.in_flight += 1;
            state.max_in_flight = state.max_in_flight.max(state.in_flight);
        }
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().unwrap().in_flight -= 1;
    }
}

/// The fixture origin. Replies are keyed by path and query (`/a?x=1`); anything unscripted gets a
/// 404 with no caching headers.
#[derive(Clone)]
pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<Mutex<OriginState>>,
}

impl Origin {
    pub async fn start(clock: Clock) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(OriginState::default()));
        let shared = state.clone();
        let app = Router::new().fallback(move |request: Request| {
            let state = shared.clone();
            let clock = clock.clone();
            async move { answer(state, clock, request).await }
        });
        // TCP_NODELAY, as real servers set it: otherwise a body written after its head waits
        // 40 ms for edge's delayed ACK on a kept-alive connection.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Scripts the reply for `path_and_query`, replacing any earlier one.
    pub fn reply(&self, path_and_query: &str, reply: Reply) {
        self.state
            .lock()
            .unwrap()
            .replies
            .insert(path_and_query.to_owned(), reply);
    }

    /// How many requests reached the origin for `path_and_query`.
    pub fn hits(&self, path_and_query: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path_and_query)
            .copied()
            .unwrap_or(0)
    }

    /// Every request the origin received, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Requests the origin is answering now (waiting out their `delay`).
    pub fn in_flight(&self) -> usize {
        self.state.lock().unwrap().in_flight
    }

    /// The most requests the origin has been answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    /// The last request received for `path_and_query`.
    pub fn last(&self, path_and_query: &str) -> Option<Received> {
        self.received()
            .into_iter()
            .rev()
            .find(|r| r.uri == path_and_query)
    }
}

async fn answer(
    state: Arc<Mutex<OriginState>>,
    clock: Clock,
    request: Request,
) -> http::Response<Body> {
    let _in_flight = InFlight::new(state.clone());
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    let reply = {
        let mut state = state.lock().unwrap();
        *state.hits.entry(uri.clone()).or_default() += 1;
        state.received.push(Received {
            method: parts.method.clone(),
            uri: uri.clone(),
            headers: parts.headers,
            body,
        });
        state.replies.get(&uri).cloned()
    };
    let reply = reply.unwrap_or_else(|| Reply::ok("no route\n").status(404));
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    let body = if reply.chunked {
        let chunk = Ok::<_, std::io::Error>(reply.body.clone());
        Body::from_stream(futures_util::stream::iter([chunk]))
    } else {
        Body::from(reply.body.clone())
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    let headers = response.headers_mut();
    for (name, value) in &reply.headers {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    // The shared manual clock dates every reply (hyper would otherwise add the real time).
    if !headers.contains_key(http::header::DATE) {
        headers.insert(
            http::header::DATE,
            HeaderValue::from_str(&http_date(clock.now())).unwrap(),
        );
    }
    response
}

/// A clock and an origin; edges started from it share both.
pub struct Harness {
    pub clock: Clock,
    pub origin: Origin,
}

impl Harness {
    pub async fn new() -> Self {
        let clock = Clock::manual(start_time());
        let origin = Origin::start(clock.clone()).await;
        Self { clock, origin }
    }

    /// An edge with the default configuration in front of this origin.
    pub async fn edge(&self) -> TestEdge {
        self.edge_with(|_| {}).await
    }

    /// An edge whose configuration `tweak` adjusts first.
    pub async fn edge_with(&self, tweak: impl FnOnce(&mut Config)) -> TestEdge {
        let dir = Arc::new(TempDir::new().unwrap());
        let mut config = base_config(&self.origin.url(), dir.path());
        tweak(&mut config);
        TestEdge::start(config, self.clock.clone(), dir).await
    }

    /// An edge with the default configuration in front of another origin than the harness's.
    pub async fn edge_before(&self, origin: SocketAddr) -> TestEdge {
        let url = format!("http://{origin}").parse().unwrap();
        self.edge_with(|c| c.origin.url = edge::config::OriginUrl(url))
            .await
    }
}

/// The test configuration: everything on 127.0.0.1, the disk tier in `dir`.
pub fn base_config(origin_url: &str, dir: &std::path::Path) -> Config {
    let yaml = format!(
        "listen: 127.0.0.1:0\norigin:\n  url: {origin_url}\n  connect_timeout: 2s\n  timeout: 5s\n\
         cache:\n  disk:\n    path: {}\nadmin:\n  listen: 127.0.0.1:0\n",
        dir.join("store").display()
    );
    Config::parse(&yaml, "test.yaml").unwrap()
}

/// An edge node running in-process.
pub struct TestEdge {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The HTTPS listener's, when the configuration has `tls`.
    pub tls_addr: Option<SocketAddr>,
    pub config: Config,
    pub clock: Clock,
    pub client: reqwest::Client,
    dir: Arc<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), edge::ServeError>>>,
}

impl TestEdge {
    pub async fn start(config: Config, clock: Clock, dir: Arc<TempDir>) -> Self {
        let listener = TcpListener::bind(config.listen).await.unwrap();
        let admin = TcpListener::bind(config.admin.listen).await.unwrap();
        let tls = match &config.tls {
            Some(tls) => Some(TcpListener::bind(tls.listen).await.unwrap()),
            None => None,
        };
        let addr = listener.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let tls_addr = tls.as_ref().map(|tls| tls.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(edge::serve(
            config.clone(),
            clock.clone(),
            listener,
            admin,
            tls,
            async {
                let _ = stopped.await;
            },
        ));
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            addr,
            admin_addr,
            tls_addr,
            config,
            clock,
            client,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops edge gracefully: in-flight requests and background stores finish, the disk tier is
    /// flushed and closed.
    pub async fn stop(mut self) -> Arc<TempDir> {
        self.shutdown().await;
        self.dir.clone()
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Stops this edge and starts a new one on the same configuration and disk path.
    pub async fn restart(mut self) -> TestEdge {
        self.shutdown().await;
        TestEdge::start(self.config.clone(), self.clock.clone(), self.dir.clone()).await
    }

    /// The admin listener's `/metrics`.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin_addr);
        let response = self.client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        // What prometheus-client writes, labelled as such (the older text format's label made
        // Prometheus read `# TYPE edge_requests counter` and `edge_requests_total` apart).
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            kind.starts_with("application/openmetrics-text; version=1.0.0"),
            "{kind}"
        );
        let text = response.text().await.unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        text
    }

    /// `POST /purge` on the admin listener with `pairs` as a form body, as `curl
    /// --data-urlencode` sends them; the answer, which must be a 200.
    pub async fn purge_form(&self, pairs: &[(&str, &str)]) -> serde_json::Value {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        let response = self
            .client
            .post(format!("http://{}/purge", self.admin_addr))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        serde_json::from_str(&response.text().await.unwrap()).unwrap()
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, &[]).await
    }

    pub async fn head(&self, path: &str) -> Resp {
        self.send(Method::HEAD, path, &[]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.send(Method::GET, path, headers).await
    }

    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.send_body(method, path, headers, Bytes::new()).await
    }

    pub async fn send_body(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Resp {
        let mut request = self.client.request(method, self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if !body.is_empty() {
            request = request.body(body);
        }
        Resp::read(request.send().await.unwrap()).await
    }
}

impl Drop for TestEdge {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What a client saw.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The whole of `response`: status, headers and body.
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn cache_status(&self) -> &str {
        self.header("cache-status")
            .expect("every response carries Cache-Status")
    }

    /// Whether `Cache-Status` reports a hit.
    pub fn is_hit(&self) -> bool {
        self.cache_status().split(';').any(|p| p.trim() == "hit")
    }

    /// The `fwd` parameter of `Cache-Status`, if any.
    pub fn fwd(&self) -> Option<&str> {
        self.param("fwd")
    }

    /// A parameter of `Cache-Status` (`ttl`, `detail`, `fwd-status`, …).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.cache_status()
            .split(';')
            .map(str::trim)
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
    }

    pub fn stored(&self) -> bool {
        self.cache_status().split(';').any(|p| p.trim() == "stored")
    }

    pub fn age(&self) -> Option<u64> {
        self.header("age").map(|a| a.parse().unwrap())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// A free port on 127.0.0.1, for a process that binds it itself.
/// A raw HTTP/1.1 response: `head` (the status line and fields, each line ending in CRLF) with
/// `Transfer-Encoding: chunked` added, then `body` in chunks of 64 KiB: a body of unannounced length.
pub fn chunked_response(head: &str, body: &[u8]) -> Vec<u8> {
    let mut response = format!("{head}transfer-encoding: chunked\r\n\r\n").into_bytes();
    for part in body.chunks(64 << 10) {
        response.extend(format!("{:x}\r\n", part.len()).into_bytes());
        response.extend_from_slice(part);
        response.extend_from_slice(b"\r\n");
    }
    response.extend_from_slice(b"0\r\n\r\n");
    response
}

pub fn free_port() -> u16 {
    // Never the same port twice in one test process: two free ports asked for one after the
    // other (a node's two listeners) could otherwise be one.
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// An edge process, killed when dropped so that a failing test leaves nothing running.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An origin that answers every request with `response`, byte for byte, on keep-alive
/// connections, counting the requests. `response` must frame its body with Content-Length; one that
/// sends less than its Content-Length leaves the connection hanging, as a stalled origin does.
pub async fn raw_origin(
    response: &'static [u8],
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let (addr, requests, _) = raw_origin_closing(response, None).await;
    (addr, requests)
}

/// A [`raw_origin`] that also counts the connections it accepts, and closes a connection once it
/// has been idle for `idle_close`, as an origin's keep-alive timeout does.
pub async fn raw_origin_closing(
    response: &'static [u8],
    idle_close: Option<Duration>,
) -> (
    SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (requests, connections) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (counter, accepted) = (requests.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // Requests here have no body: each ends with its head.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        counter.fetch_add(1, Ordering::SeqCst);
                        if tokio::io::AsyncWriteExt::write_all(&mut stream, response)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    let read = tokio::io::AsyncReadExt::read(&mut stream, &mut chunk);
                    let read = match idle_close {
                        Some(idle) => tokio::time::timeout(idle, read).await.unwrap_or(Ok(0)),
                        None => read.await,
                    };
                    match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, requests, connections)
}

/// An origin on loopback that answers one request with `first` (head and the start of the body,
/// as raw HTTP/1.1 bytes), then holds back `rest` until the sender it returns is used or dropped.
pub async fn holding_back_origin(
    first: Vec<u8>,
    rest: Vec<u8>,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = socket.read(&mut buf).await;
        socket.write_all(&first).await.unwrap();
        let _ = released.await;
        socket.write_all(&rest).await.unwrap();
        let _ = socket.read(&mut buf).await;
    });
    (addr, release)
}

/// The value of one sample of `metrics`, by its name with labels as rendered; 0 when absent.
pub fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// How many client requests `metrics` counts under `label` (`hit`, `miss`, `pass`, `error`, …).
pub fn requests(metrics: &str, label: &str) -> f64 {
    let name = format!("edge_requests_total{{cache_status=\"{label}\"}}");
    sample(metrics, &name)
}

/// A client that speaks HTTP/2 from the start (prior knowledge), as h2c clients do.
pub fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// How many client connections `metrics` says edge closed for `reason` (`idle`, `slow_head`,
/// `slow_read`).
pub fn disconnects(metrics: &str, reason: &str) -> f64 {
    let name = format!("edge_client_disconnects_total{{reason=\"{reason}\"}}");
    sample(metrics, &name)
}

/// A client that sends `GET path` with `headers` (each line ending in CRLF), reads the response
/// head, then nothing more, with a receive buffer of 4 KiB: what edge sends it stays in edge.
/// Returns the connection and the head.
pub async fn stalled_client(
    edge: SocketAddr,
    path: &str,
    headers: &str,
) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4 << 10).unwrap();
    let mut stream = socket.connect(edge).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: edge\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "edge closed before the response head");
        head.extend_from_slice(&buf[..n]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}
