//! edge: an HTTP caching reverse proxy for one origin, following RFC 9111 as a shared cache, with
//! a moka memory tier in front of a sled disk tier.
//!
//! [`Node`] is a whole edge node on listeners the caller has bound, so tests run it in-process;
//! [`serve`] opens one and runs it until a shutdown signal.

pub mod cache;
pub mod clock;
pub mod conditional;
pub mod config;
pub mod demo;
pub mod explain;
pub mod fill;
pub mod headers;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod range;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Future, pending};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{info, warn};

use crate::cache::Cache;
use crate::clock::Clock;
use crate::config::Config;
use crate::fill::Fills;
use crate::metrics::Metrics;
use crate::origin::Origin;
use crate::proxy::{Edge, Settings};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A running edge node's shared state: what [`Node::reload`] changes and [`Node::serve`] serves.
#[derive(Clone)]
pub struct Node {
    edge: Arc<Edge>,
}

impl Node {
    /// Opens the cache tiers and builds the origin client.
    pub async fn open(config: Config, clock: Clock) -> Result<Self, ServeError> {
        let origin = Origin::new(&config.origin);
        let cache = Arc::new(Cache::open(&config.cache).await);
        let fills = Fills::new(&config.cache);
        let edge = Arc::new(Edge {
            settings: ArcSwap::from_pointee(Settings { config, origin }),
            metrics: Metrics::new(cache.clone()),
            cache,
            fills,
            clock,
            tasks: TaskTracker::new(),
        });
        Ok(Self { edge })
    }

    /// Applies a new configuration without dropping the cache. Settings that are fixed once the
    /// node runs (listen addresses, tier sizes and the disk path) keep their running values; the
    /// names of those that differ are returned, so that the caller can say so.
    pub fn reload(&self, mut config: Config) -> Vec<&'static str> {
        let current = self.edge.config();
        let running = &current.config;
        let mut kept = Vec::new();
        macro_rules! keep {
            ($($field:ident).+, $name:literal) => {
                if config.$($field).+ != running.$($field).+ {
                    kept.push($name);
                    config.$($field).+ = running.$($field).+.clone();
                }
            };
        }
        keep!(listen, "listen");
        keep!(client_header_timeout, "client_header_timeout");
        keep!(admin.listen, "admin.listen");
        keep!(cache.memory.capacity, "cache.memory.capacity");
        keep!(cache.memory.max_object_size, "cache.memory.max_object_size");
        keep!(cache.disk.path, "cache.disk.path");
        keep!(cache.disk.capacity, "cache.disk.capacity");
        keep!(cache.disk.min_free, "cache.disk.min_free");
        keep!(cache.hit_for_pass, "cache.hit_for_pass");
        let origin = Origin::new(&config.origin);
        self.edge.cache.set_heuristic(config.cache.heuristic);
        self.edge
            .settings
            .store(Arc::new(Settings { config, origin }));
        kept
    }

    /// Serves client traffic on `listener` and the admin API on `admin` until `shutdown`
    /// completes; then stops accepting, gives in-flight requests and background stores up to
    /// `shutdown_timeout` to finish, and flushes the disk tier.
    pub async fn serve(
        &self,
        listener: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let edge = self.edge.clone();
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });

        let admin_app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/metrics", get(metrics))
            .route("/purge", post(purge))
            .with_state(edge.clone());
        let header_timeout = edge.config().client_header_timeout.0;
        let proxy = edge.clone();
        let main = serve_clients(
            listener,
            header_timeout,
            stop.clone(),
            move |peer, request| proxy::handle(proxy.clone(), peer, request),
        );
        let admin = serve_clients(admin, header_timeout, stop.clone(), move |_, request| {
            admin_app
                .clone()
                .oneshot(request)
                .map(|answer| match answer {
                    Ok(response) => response,
                    Err(never) => match never {},
                })
        });
        let main = tokio::spawn(main);
        let admin = tokio::spawn(admin);
        stop.cancelled().await;
        let limit = edge.config().shutdown_timeout.0;
        info!(timeout = ?limit, "shutting down: no new connections; finishing in-flight requests");
        let drained = tokio::time::timeout(limit, async {
            let main = main.await;
            let admin = admin.await;
            edge.tasks.close();
            edge.tasks.wait().await;
            (main, admin)
        })
        .await;
        let result = match drained {
            Ok((main, admin)) => {
                let main = main.map_err(std::io::Error::other)?;
                let admin = admin.map_err(std::io::Error::other)?;
                main.and(admin).map_err(ServeError::from)
            }
            Err(_) => {
                warn!(timeout = ?limit, "shutdown_timeout passed; cutting off the requests still in flight");
                Ok(())
            }
        };
        edge.cache.flush().await;
        result
    }
}

/// Opens a node for `config` and serves it until `shutdown` completes.
pub async fn serve(
    config: Config,
    clock: Clock,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    Node::open(config, clock)
        .await?
        .serve(listener, admin, shutdown)
        .await
}

/// A listener (the main one or the admin one): HTTP/1.1 and HTTP/2 (prior knowledge)
/// connections, every request to `handle` with the client's address, until `stop`; then no new
/// connections, and the open ones close as their requests end.
///
/// A client gets `header_timeout` (nginx's `client_header_timeout`) for each thing it owes: its
/// first bytes, counted from the accept; then an HTTP/1 request head, counted from when hyper
/// starts reading it (those first bytes, or the previous response); and on HTTP/2, a new stream
/// whenever none is open. Past it the connection is closed: without these limits clients that
/// send slowly or nothing at all (slowloris) hold connections, and file descriptors, for good.
/// hyper times out HTTP/1 heads when given a timer, which axum's `serve` does not give it; it
/// times out nothing else, and hyper-util's builder reads the first bytes with no timer at all.
async fn serve_clients<H, F>(
    listener: TcpListener,
    header_timeout: std::time::Duration,
    stop: CancellationToken,
    handle: H,
) -> std::io::Result<()>
where
    H: Fn(std::net::SocketAddr, axum::extract::Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let limit = (!header_timeout.is_zero()).then_some(header_timeout);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(limit);
    let http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    let protocols = Arc::new(Protocols { http1, http2 });
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        // Without TCP_NODELAY a body written after its head waits for the client's delayed ACK
        // (40 ms on Linux) whenever the two go out as separate writes, as streamed fills do.
        let _ = tcp.set_nodelay(true);
        let connection = serve_connection(
            tcp,
            peer,
            protocols.clone(),
            limit,
            stop.clone(),
            handle.clone(),
        );
        connections.spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, %err, "client connection ended");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// hyper's two servers, set up once for a listener and shared by its connections.
struct Protocols {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// How an HTTP/2 connection with prior knowledge opens (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one client connection: reads its first bytes, up to where they show HTTP/2's preface or
/// not, within `limit` of the accept; then serves it with hyper's HTTP/1 or HTTP/2 server.
async fn serve_connection<H, F>(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    protocols: Arc<Protocols>,
    limit: Option<std::time::Duration>,
    stop: CancellationToken,
    handle: H,
) -> hyper::Result<()>
where
    H: Fn(std::net::SocketAddr, axum::extract::Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let first = async {
        match limit {
            Some(limit) => tokio::time::timeout(limit, first_bytes(tcp))
                .await
                .ok()
                .flatten(),
            None => first_bytes(tcp).await,
        }
    };
    let io = tokio::select! {
        first = first => match first {
            Some(io) => io,
            None => return Ok(()),
        },
        () = stop.cancelled() => return Ok(()),
    };
    if !io.http2() {
        let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            handle(peer, request.map(axum::body::Body::new)).map(Ok::<_, Infallible>)
        });
        let connection = protocols.http1.serve_connection(TokioIo::new(io), service);
        return until_closed(connection, |c| c.graceful_shutdown(), &stop, pending()).await;
    }
    // Streams are counted from the request's head to the end of its response's body, which
    // hyper drops when the stream ends or is reset; a request whose response ended before its
    // body did is counted closed, so that its connection goes on idle only as a graceful close,
    // which lets that stream finish.
    let (streams, open) = tokio::sync::watch::channel(0usize);
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let stream = OpenStream::new(&streams);
        handle(peer, request.map(axum::body::Body::new)).map(move |response| {
            Ok::<_, Infallible>(response.map(|body| Counted {
                body,
                _stream: stream,
            }))
        })
    });
    let connection = protocols.http2.serve_connection(TokioIo::new(io), service);
    let idle = async move {
        match limit {
            Some(limit) => idle(open, limit).await,
            None => pending().await,
        }
    };
    until_closed(connection, |c| c.graceful_shutdown(), &stop, idle).await
}

/// Reads a connection's first bytes, as far as telling whether they open HTTP/2: `None` if it
/// closes before that. hyper-util's builder does the same, with no timer.
async fn first_bytes(mut tcp: TcpStream) -> Option<FirstBytes> {
    use tokio::io::AsyncReadExt;
    let mut first = [0; PREFACE.len()];
    let mut len = 0;
    while len < first.len() && first[..len] == PREFACE[..len] {
        match tcp.read(&mut first[len..]).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => len += read,
        }
    }
    Some(FirstBytes {
        tcp,
        first,
        len,
        at: 0,
    })
}

/// A client connection whose first bytes were read to learn its protocol, with those bytes put
/// back in front of the rest. Reading costs one comparison more than the bare socket, as
/// hyper-util's own wrapper does.
struct FirstBytes {
    tcp: TcpStream,
    first: [u8; PREFACE.len()],
    len: usize,
    /// How many of `first` hyper has read.
    at: usize,
}

impl FirstBytes {
    fn http2(&self) -> bool {
        self.first[..self.len] == PREFACE[..]
    }
}

impl AsyncRead for FirstBytes {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.len {
            let n = buf.remaining().min(this.len - this.at);
            buf.put_slice(&this.first[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for FirstBytes {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Drives `connection` to its end. When the node stops, or `idle` ends, it is asked to close
/// (`close`: hyper's graceful shutdown, which lets the requests in progress finish). `idle` ends
/// with how long that close may take: HTTP/2's waits for the client to answer a PING, which a
/// client that sends nothing never does.
async fn until_closed<C>(
    connection: C,
    close: fn(Pin<&mut C>),
    stop: &CancellationToken,
    idle: impl Future<Output = std::time::Duration>,
) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>>,
{
    let mut connection = std::pin::pin!(connection);
    // The connection first: it is what wakes this task for every request.
    let grace = tokio::select! {
        biased;
        ended = connection.as_mut() => return ended,
        () = stop.cancelled() => None,
        grace = idle => Some(grace),
    };
    close(connection.as_mut());
    match grace {
        // shutdown_timeout bounds this.
        None => connection.await,
        Some(grace) => tokio::time::timeout(grace, connection)
            .await
            .unwrap_or(Ok(())),
    }
}

/// Ends once an HTTP/2 connection has had no open stream for `limit`, with as long again for
/// its graceful close.
async fn idle(
    mut open: tokio::sync::watch::Receiver<usize>,
    limit: std::time::Duration,
) -> std::time::Duration {
    loop {
        // The sender lives as long as the connection, which outlives this.
        let _ = open.wait_for(|&open| open == 0).await;
        tokio::select! {
            // A stream may have opened as the time ran out.
            () = tokio::time::sleep(limit) => if *open.borrow() == 0 {
                return limit;
            },
            _ = open.changed() => {}
        }
    }
}

/// An HTTP/2 stream, counted open until this is dropped.
struct OpenStream(tokio::sync::watch::Sender<usize>);

impl OpenStream {
    fn new(streams: &tokio::sync::watch::Sender<usize>) -> Self {
        streams.send_modify(|open| *open += 1);
        Self(streams.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.send_modify(|open| *open -= 1);
    }
}

/// A response body on an HTTP/2 connection, which keeps its stream counted open.
struct Counted {
    body: axum::body::Body,
    _stream: OpenStream,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// An accept that failed: a connection reset before it was accepted is nothing; anything else
/// (out of file descriptors, most often) is logged and waited out for a second, as axum does.
async fn accept_failed(err: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%err, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(edge): State<Arc<Edge>>) -> Response {
    edge.cache.settle();
    let mut response = edge.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `POST /purge?url=<path or absolute URL>` or `POST /purge?tag=<surrogate key>`, with
/// `soft=true` to mark stale instead of deleting; the parameters may also come as a form body
/// (`curl --data-urlencode url=/a?b=1&c=2`). Answers with how many responses were affected. The
/// purge runs to its end even if the client goes away.
async fn purge(
    State(edge): State<Arc<Edge>>,
    Query(mut query): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    query.extend(form_urlencoded::parse(&body).into_owned());
    let soft = match query.get("soft").map(String::as_str) {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(other) => {
            return bad_request(format!("soft must be true or false, not {other:?}"));
        }
    };
    let body = match (query.get("url"), query.get("tag")) {
        (Some(url), None) => {
            let Some(target) = purge_target(&edge, url) else {
                return bad_request(format!(
                    "url {url:?} is not a path or an absolute URL edge serves"
                ));
            };
            let purged = proxy::purge_url(&edge, &target, soft).await;
            let key = cache::key::CacheKey::new(&target);
            serde_json::json!({ "url": key.url(), "purged": purged, "soft": soft })
        }
        (None, Some(tag)) if !tag.is_empty() => {
            let purged = proxy::purge_tag(&edge, tag, soft).await;
            serde_json::json!({ "tag": tag, "purged": purged, "soft": soft })
        }
        _ => return bad_request("give exactly one of url=<path or URL> or tag=<tag>".into()),
    };
    let mut response = format!("{body}\n").into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The origin URL a purge names: a path (`/a?b`), or an absolute URL whose path and query are
/// taken (edge serves one origin, under whatever host name clients use for it).
fn purge_target(edge: &Edge, url: &str) -> Option<url::Url> {
    let uri: http::Uri = url.parse().ok()?;
    let path: http::Uri = uri.path_and_query()?.as_str().parse().ok()?;
    edge.config().origin.url_for(&path)
}

fn bad_request(message: String) -> Response {
    let body = serde_json::json!({ "error": message });
    (StatusCode::BAD_REQUEST, format!("{body}\n")).into_response()
}
