//! The listeners' connections: accepted, past a TLS handshake on the HTTPS one, told HTTP/1.1
//! from HTTP/2, served by hyper, and closed when the client owes something for too long.
//!
//! A client has `client_header_timeout` (nginx's) for each thing it owes: its first bytes, counted
//! from the accept; then a request head, counted from those first bytes or from the end of the
//! previous response, which is also how long an idle keep-alive connection stays open, HTTP/1 or
//! HTTP/2. And it has `send_timeout` (nginx's) to take something of a response that is ready for
//! it. Without these limits, clients that send slowly or nothing at all (slowloris), or that never
//! read what they asked for (slow read), hold connections, and file descriptors, for good: hyper
//! times out only HTTP/1 heads, and only with a timer on every request.
//!
//! One watchdog per connection keeps both limits, also while the node shuts down. The
//! connection's requests and its socket writes note what they do in an [`Activity`]: a few
//! relaxed atomics, with the clock read once per response, and on a socket write only when the
//! socket fills or drains. The watchdog's timer, registered with a waker of its own, wakes the
//! connection's task only when a deadline may have passed, and reads them then. An HTTP/2
//! stream, a task of its own, has a watch of its own for `send_timeout` ([`StreamWatch`]), so
//! that one stalled stream is reset and not its connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::Duration;

use axum::response::Response;
use futures_util::FutureExt;
use http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::key::Scheme;
use crate::config::Config;
use crate::fill::lock;
use crate::metrics::{ClientMetrics, Disconnect};

/// Who a connection's requests come from: the client's address, and whether its connection is
/// encrypted: to edge's HTTPS listener, or to the TLS terminator in front that says so in its
/// PROXY protocol header (version 2's `PP2_TYPE_SSL`, as HAProxy's `send-proxy-v2-ssl` sends it).
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
}

impl Peer {
    /// The scheme the client asked by.
    pub fn scheme(&self) -> Scheme {
        if self.tls {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }
}

/// How long a client may owe something; `None` is no limit.
#[derive(Clone, Copy)]
pub struct Limits {
    /// `client_header_timeout`.
    header: Option<Duration>,
    /// `send_timeout`.
    send: Option<Duration>,
}

impl Limits {
    pub fn of(config: &Config) -> Self {
        let limit = |limit: Duration| (!limit.is_zero()).then_some(limit);
        Self {
            header: limit(config.client_header_timeout.0),
            send: limit(config.send_timeout.0),
        }
    }

    /// How often the watchdog looks at least: the shorter limit, so that no deadline set in
    /// between (a response that starts to wait on its client) passes unseen.
    fn period(&self) -> Option<Duration> {
        match (self.header, self.send) {
            (Some(header), Some(send)) => Some(header.min(send)),
            (header, send) => header.or(send),
        }
    }
}

/// A listener (the main one, the HTTPS one or the admin one): HTTP/1.1 and HTTP/2 (prior
/// knowledge, or over TLS by ALPN) connections, after a TLS handshake by `tls` if given, every
/// request to `handle` with the client's address, until `stop`; then no new connections, and
/// the open ones close as their requests end. Its connections, and those closed
/// on a limit, are counted in `metrics`, if given. A request hyper answers itself, because its
/// head did not parse, goes to `rejected` with the status hyper sent, and so does one edge answers
/// before hyper sees it (plain HTTP on the HTTPS listener).
#[allow(clippy::too_many_arguments)]
pub async fn serve<H, F, R>(
    listener: TcpListener,
    limits: Limits,
    proxy_protocol: Arc<[ipnet::IpNet]>,
    tls: Option<TlsAcceptor>,
    metrics: Option<ClientMetrics>,
    stop: CancellationToken,
    handle: H,
    rejected: R,
) -> std::io::Result<()>
where
    H: Fn(Peer, axum::extract::Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
    R: Fn(Peer, Refused) + Clone + Send + 'static,
{
    let protocols = Arc::new(Protocols {
        http1: hyper::server::conn::http1::Builder::new(),
        http2: hyper::server::conn::http2::Builder::new(Streams {
            send: limits.send,
            metrics: metrics.clone(),
        }),
    });
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
        // An IPv4 client of a listener on `[::]` comes as `::ffff:a.b.c.d`: it is the IPv4
        // address to allow lists (`127.0.0.0/8`), logs and `X-Forwarded-For`.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        // Without TCP_NODELAY a body written after its head waits for the client's delayed ACK
        // (40 ms on Linux) whenever the two go out as separate writes, as streamed fills do.
        let _ = tcp.set_nodelay(true);
        // Boxed: the connection's future is several KiB, which the task would otherwise be
        // copied whole as it is spawned.
        let proxied = crate::config::allowed(&proxy_protocol, peer.ip());
        let connection = Box::pin(serve_connection(
            tcp,
            peer,
            proxied,
            tls.clone(),
            protocols.clone(),
            limits,
            stop.clone(),
            handle.clone(),
        ));
        let metrics = metrics.as_ref().map(Counted::new);
        let rejected = rejected.clone();
        connections.spawn(async move {
            let (peer, served) = connection.await;
            match served {
                Ok(None) => {}
                Ok(Some(why)) => {
                    tracing::debug!(peer = %peer.addr, ?why, "client connection closed on a limit");
                    if let Some(metrics) = &metrics {
                        metrics.0.disconnected(why);
                    }
                }
                Err(Failed::Hyper(err)) => {
                    tracing::debug!(peer = %peer.addr, %err, "client connection ended");
                    if let Some(status) = answered_by_hyper(&err) {
                        rejected(peer, Refused::bare(status));
                    }
                }
                Err(Failed::HeadTimeout) => {
                    tracing::debug!(peer = %peer.addr, "request head not whole within client_header_timeout: closed");
                    if let Some(metrics) = &metrics {
                        metrics.0.disconnected(Disconnect::SlowHead);
                    }
                    rejected(peer, Refused::bare(StatusCode::REQUEST_TIMEOUT));
                }
                Err(Failed::PlainHttp(tcp)) => {
                    tracing::debug!(peer = %peer.addr, "plain HTTP request to the HTTPS listener");
                    let refused = Refused {
                        status: StatusCode::BAD_REQUEST,
                        detail: Some(PLAIN_HTTP),
                        bytes: PLAIN_HTTP_BODY.len() as u64,
                    };
                    rejected(peer, refused);
                    linger(tcp).await;
                }
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// A request answered before edge's handler saw it: by hyper, whose head did not parse, or by
/// edge itself (plain HTTP on the HTTPS listener), with its `Cache-Status` detail and the body
/// bytes it sent; or one whose head was not whole in time, closed with nothing sent (408, as
/// nginx logs it).
#[derive(Clone, Copy, Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub detail: Option<&'static str>,
    pub bytes: u64,
}

impl Refused {
    /// One with no `Cache-Status` and no body edge knows of: hyper's answer, or none sent.
    fn bare(status: StatusCode) -> Self {
        Self {
            status,
            detail: None,
            bytes: 0,
        }
    }
}

/// How a connection ended that neither closed cleanly nor on a limit alone.
enum Failed {
    /// hyper's error, on a request head it could not parse (and answered) or the connection's.
    Hyper(hyper::Error),
    /// A request head begun on a connection hyper was serving was not whole within
    /// `client_header_timeout`: closed on that limit (`slow_head`) with nothing sent, and logged
    /// as a 408, as nginx logs one. (A connection that stalls before its first request's bytes
    /// show whether it speaks HTTP/2, in its PROXY header or TLS handshake, has no request.)
    HeadTimeout,
    /// A plain HTTP request came to the HTTPS listener: edge answered it 400, as nginx does, and
    /// is closing the connection.
    PlainHttp(TcpStream),
}

/// The status hyper's HTTP/1 server answered a request head it could not parse with, if it did
/// (`on_error` in hyper's `proto/h1/role.rs`): 400, 414 for a URI too long, 431 for a head too
/// large. (Over HTTP/2, a malformed request resets its stream.)
fn answered_by_hyper(err: &hyper::Error) -> Option<StatusCode> {
    if err.is_parse_too_large() {
        // Its two kinds are told apart only by their messages.
        let uri = err.to_string().contains("URI too long");
        Some(if uri {
            StatusCode::URI_TOO_LONG
        } else {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        })
    } else if err.is_parse() && !err.is_parse_version_h2() && !err.is_parse_status() {
        Some(StatusCode::BAD_REQUEST)
    } else {
        None
    }
}

/// A connection counted open in the metrics until this is dropped, however its task ends.
struct Counted(ClientMetrics);

impl Counted {
    fn new(metrics: &ClientMetrics) -> Self {
        metrics.opened();
        Self(metrics.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// hyper's two servers, set up once for a listener and shared by its connections.
struct Protocols {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<Streams>,
}

/// Runs the streams of HTTP/2 connections, each as a task of its own (as hyper-util's executor
/// does), under a [`StreamWatch`] when `send_timeout` is set.
#[derive(Clone)]
struct Streams {
    send: Option<Duration>,
    metrics: Option<ClientMetrics>,
}

impl<F> hyper::rt::Executor<F> for Streams
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let Some(limit) = self.send else {
            drop(tokio::spawn(stream));
            return;
        };
        drop(tokio::spawn(StreamWatch {
            stream: Box::pin(stream),
            state: Arc::new(StreamState {
                since: Instant::now(),
                waiting: AtomicBool::new(false),
                handed_at: AtomicU64::new(0),
            }),
            limit,
            timer: None,
            armed_for: 0,
            metrics: self.metrics.clone(),
        }));
    }
}

/// What an HTTP/2 stream's response body notes for its [`StreamWatch`].
struct StreamState {
    since: Instant,
    /// A piece of the body handed to hyper waits for the client to open the stream's window.
    waiting: AtomicBool,
    /// When it was handed, in nanoseconds since `since`.
    handed_at: AtomicU64,
}

std::thread_local! {
    /// The state of the HTTP/2 stream being polled on this thread, until its response body takes
    /// it: the body is made while its stream's task polls the request's future.
    static STREAM: std::cell::RefCell<Option<Arc<StreamState>>> =
        const { std::cell::RefCell::new(None) };
}

/// An HTTP/2 stream whose response waits on its client for `limit` (a piece of its body not
/// taken, the client keeping the stream's window shut) is reset (dropped: hyper's h2 sends
/// RST_STREAM), as nginx's `send_timeout` ends one HTTP/2 stream; its connection's other streams
/// go on.
struct StreamWatch<F> {
    stream: Pin<Box<F>>,
    state: Arc<StreamState>,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The `handed_at` the timer is set for.
    armed_for: u64,
    metrics: Option<ClientMetrics>,
}

impl<F: Future<Output = ()>> Future for StreamWatch<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        // Until the response body has taken its state.
        let unclaimed = Arc::strong_count(&this.state) == 1;
        if unclaimed {
            STREAM.with(|current| current.replace(Some(this.state.clone())));
        }
        let polled = this.stream.as_mut().poll(cx);
        if unclaimed {
            STREAM.with(|current| current.take());
        }
        if polled.is_ready() || !this.state.waiting.load(Ordering::Acquire) {
            return polled;
        }
        let handed = this.state.handed_at.load(Ordering::Relaxed);
        let deadline = this.state.since + Duration::from_nanos(handed) + this.limit;
        let mut timer = match this.timer.take() {
            Some(mut timer) => {
                if this.armed_for != handed {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        this.armed_for = handed;
        let stalled = timer.as_mut().poll(cx).is_ready();
        this.timer = Some(timer);
        if stalled {
            tracing::debug!("a client took nothing of a stream's response for send_timeout; reset");
            if let Some(metrics) = &this.metrics {
                metrics.disconnected(Disconnect::SlowRead);
            }
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// How an HTTP/2 connection with prior knowledge opens (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one client connection: reads its first bytes, its PROXY protocol header first when it
/// comes from a proxy that sends one (`proxied`), then makes its TLS handshake with `tls`, if
/// given, up to where they show HTTP/2 or not, all within `client_header_timeout` of the accept;
/// then serves it with hyper's HTTP/1 or HTTP/2 server, watched. Gives the client's address (the
/// PROXY header's, or `peer`), and says so if it closed the connection on a limit.
#[allow(clippy::too_many_arguments)]
async fn serve_connection<H, F>(
    tcp: TcpStream,
    peer: SocketAddr,
    proxied: bool,
    tls: Option<TlsAcceptor>,
    protocols: Arc<Protocols>,
    limits: Limits,
    stop: CancellationToken,
    handle: H,
) -> (Peer, Result<Option<Disconnect>, Failed>)
where
    H: Fn(Peer, axum::extract::Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let peer = Peer {
        addr: peer,
        tls: tls.is_some(),
    };
    // Without a PROXY header or TLS, the first bytes are a request head's.
    let plain = !proxied && tls.is_none();
    let first = async {
        let first = first_bytes(tcp, peer, proxied, tls, activity.clone());
        match limits.header {
            Some(limit) => tokio::time::timeout(limit, first).await.map_err(|_| ()),
            None => Ok(first.await),
        }
    };
    let (io, client) = tokio::select! {
        first = first => match first {
            Ok(Some(first)) => first,
            Ok(None) => return (peer, Ok(None)),
            // Still telling an HTTP/1 head from HTTP/2's preface (`P`): a head not whole in time.
            Err(()) if plain && activity.head_started.load(Ordering::Relaxed) => {
                return (peer, Err(Failed::HeadTimeout));
            }
            Err(()) if activity.head_started.load(Ordering::Relaxed) => {
                return (peer, Ok(Some(Disconnect::SlowHead)));
            }
            Err(()) => return (peer, Ok(Some(Disconnect::Idle))),
        },
        () = stop.cancelled() => return (peer, Ok(None)),
    };
    let served = match io {
        Opened::Plain(io) => {
            let http2 = io.io.http2();
            serve_io(io, http2, client, protocols, limits, stop, handle, activity).await
        }
        // Boxed, as the handshake is: a plain connection's future holds no room for TLS.
        Opened::Tls(io, http2) => {
            let serving = serve_io(io, http2, client, protocols, limits, stop, handle, activity);
            Box::pin(serving).await
        }
        Opened::PlainHttp(tcp) => return (client, Err(Failed::PlainHttp(tcp))),
    };
    match served {
        Ok(Some(Disconnect::SlowHead)) => (client, Err(Failed::HeadTimeout)),
        served => (client, served.map_err(Failed::Hyper)),
    }
}

/// Serves a connection whose first bytes were read, for `client`, with hyper's HTTP/2 server
/// (`http2`) or its HTTP/1 one.
#[allow(clippy::too_many_arguments)]
async fn serve_io<IO, H, F>(
    io: IO,
    http2: bool,
    client: Peer,
    protocols: Arc<Protocols>,
    limits: Limits,
    stop: CancellationToken,
    handle: H,
    activity: Arc<Activity>,
) -> hyper::Result<Option<Disconnect>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Peer, axum::extract::Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let noted = activity.clone();
    // A request counts from its head to the end of its response's body, which hyper drops when
    // the response (or the HTTP/2 stream) ends; a request whose response ended before its body
    // did is counted closed.
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let open = Open::new(&noted);
        // HTTP/1: the connection lingers if it closes before this body has been read to its end.
        let unread = !http2 && !http_body::Body::is_end_stream(request.body());
        noted.unread_body.store(unread, Ordering::Relaxed);
        let request = if unread {
            let activity = noted.clone();
            request.map(|body| axum::body::Body::new(ReadToEnd { body, activity }))
        } else {
            request.map(axum::body::Body::new)
        };
        handle(client, request).map(move |response| {
            Ok::<_, Infallible>(response.map(|body| Noted {
                body,
                _open: open,
                piece: http2.then_some(PIECE),
                rest: bytes::Bytes::new(),
                stream: http2.then(|| STREAM.with(|stream| stream.take())).flatten(),
            }))
        })
    });
    if http2 {
        let connection = protocols.http2.serve_connection(TokioIo::new(io), service);
        watch(
            connection,
            |c| c.graceful_shutdown(),
            &stop,
            &activity,
            limits,
            true,
        )
        .await
    } else {
        let connection = protocols.http1.serve_connection(TokioIo::new(io), service);
        watch(
            connection,
            |c| c.graceful_shutdown(),
            &stop,
            &activity,
            limits,
            false,
        )
        .await
    }
}

/// What a connection's requests are doing, as its watchdog reads it. Times are nanoseconds since
/// `since`.
struct Activity {
    since: Instant,
    /// Requests whose responses have not ended (on HTTP/1, 0 or 1).
    open: AtomicUsize,
    /// When the last response ended, or the connection's first bytes came.
    idle_since: AtomicU64,
    /// Bytes have come since the last request head was complete: a head is under way.
    head_started: AtomicBool,
    /// The socket is full: the last write found no room.
    blocked: AtomicBool,
    /// When it filled up.
    blocked_since: AtomicU64,
    /// When it last took bytes again after being full.
    unblocked_at: AtomicU64,
    /// HTTP/1: the last request has a body that has not been read to its end (edge answered
    /// without it: a 413, 408 or 400), so its client may still be sending it, or about to.
    unread_body: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            open: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            blocked_since: AtomicU64::new(0),
            unblocked_at: AtomicU64::new(0),
            unread_body: AtomicBool::new(false),
        }
    }

    /// Notes a write to the socket: whether it found the socket full. The clock is read only
    /// when that changes, which a client that keeps up never makes happen.
    fn wrote(&self, full: bool) {
        if self.blocked.load(Ordering::Relaxed) != full {
            let at = if full {
                &self.blocked_since
            } else {
                &self.unblocked_at
            };
            at.store(self.now(), Ordering::Relaxed);
            self.blocked.store(full, Ordering::Release);
        }
    }

    fn now(&self) -> u64 {
        // u64 nanoseconds last 584 years.
        self.since.elapsed().as_nanos() as u64
    }

    fn at(&self, nanos: u64) -> Instant {
        self.since + Duration::from_nanos(nanos)
    }
}

/// What the client owes past its limit, if anything; if not, when to look again (within
/// `period`).
///
/// A connection waits on its client while the socket is full (edge could write again once the
/// client had taken a good part of what the socket holds, as for nginx's `send_timeout`); one
/// HTTP/2 stream whose window stays shut is its [`StreamWatch`]'s to reset. A connection is idle
/// when no request is open and nothing is left to write: an answer still going out to a slow
/// client is not idleness, however long ago its body ended, while the socket keeps taking bytes.
fn check(activity: &Activity, limits: &Limits, period: Duration) -> Result<Instant, Ending> {
    let now = activity.now();
    let mut next = now.saturating_add(period.as_nanos() as u64);
    let mut deadline = |since: &AtomicU64, limit: Duration, ending: Ending| {
        let deadline = since
            .load(Ordering::Relaxed)
            .saturating_add(limit.as_nanos() as u64);
        next = next.min(deadline);
        if deadline <= now { Err(ending) } else { Ok(()) }
    };
    let blocked = activity.blocked.load(Ordering::Acquire);
    if let Some(limit) = limits.send
        && blocked
    {
        deadline(&activity.blocked_since, limit, Ending::Stalled)?;
    }
    if let Some(limit) = limits.header
        && !blocked
        && activity.open.load(Ordering::Acquire) == 0
    {
        let since = if activity.unblocked_at.load(Ordering::Relaxed)
            > activity.idle_since.load(Ordering::Relaxed)
        {
            &activity.unblocked_at
        } else {
            &activity.idle_since
        };
        deadline(since, limit, Ending::Idle)?;
    }
    Ok(activity.at(next))
}

/// An HTTP/1 request's body, which notes on its connection when it has been read to its end
/// ([`Activity::unread_body`]).
struct ReadToEnd {
    body: Incoming,
    activity: Arc<Activity>,
}

impl http_body::Body for ReadToEnd {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if frame.is_none() || self.is_end_stream() {
            self.activity.unread_body.store(false, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A request, counted open until its response ends.
struct Open(Arc<Activity>);

impl Open {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.open.fetch_add(1, Ordering::Relaxed);
        activity.head_started.store(false, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.idle_since.store(activity.now(), Ordering::Relaxed);
        activity.open.fetch_sub(1, Ordering::Release);
    }
}

/// The most of a body an HTTP/2 stream is handed at once: an HTTP/2 DATA frame's worth.
const PIECE: usize = 16 << 10;

/// A response body that keeps its request counted open until it ends. On HTTP/2 it also hands
/// its data to hyper in pieces of at most [`PIECE`], noting for its stream's [`StreamWatch`] when
/// it hands one and whether hyper has come back for the next (or, after the last, dropped the
/// body): hyper holds a piece until the stream's window has room for it, so a piece not taken
/// for `send_timeout` is a client that takes nothing; and a body handed whole (a memory hit)
/// would end for edge, and its connection look idle, before the client had any of it. hyper
/// hands the h2 library a piece once the window has room for part of it; the last piece's rest
/// is then out of sight. On HTTP/1 the socket tells instead ([`ClientIo`]).
struct Noted {
    body: axum::body::Body,
    _open: Open,
    /// HTTP/2: the size of a piece.
    piece: Option<usize>,
    /// What is left of the frame being handed in pieces.
    rest: bytes::Bytes,
    /// HTTP/2 with `send_timeout`: what its stream's watch reads.
    stream: Option<Arc<StreamState>>,
}

impl Noted {
    fn taken(&self) {
        if let Some(stream) = &self.stream {
            stream.waiting.store(false, Ordering::Relaxed);
        }
    }
}

impl http_body::Body for Noted {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let Some(piece) = this.piece else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        this.taken();
        if this.rest.is_empty() {
            match std::task::ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return Poll::Ready(other),
            }
        }
        let data = if this.rest.len() > piece {
            this.rest.split_to(piece)
        } else {
            std::mem::take(&mut this.rest)
        };
        // The last piece too: hyper holds each until the window has room for it, and drops the
        // body only once it has sent the last.
        if let Some(stream) = &this.stream {
            let now = stream.since.elapsed().as_nanos() as u64;
            stream.handed_at.store(now, Ordering::Relaxed);
            stream.waiting.store(true, Ordering::Release);
        }
        Poll::Ready(Some(Ok(http_body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let hint = self.body.size_hint();
        let rest = self.rest.len() as u64;
        let mut sum = http_body::SizeHint::new();
        if let Some(upper) = hint.upper() {
            sum.set_upper(upper.saturating_add(rest));
        }
        sum.set_lower(hint.lower().saturating_add(rest));
        sum
    }
}

impl Drop for Noted {
    fn drop(&mut self) {
        self.taken();
    }
}

/// Why a watched connection stopped being served.
enum Ending {
    /// hyper is done with it.
    Closed(hyper::Result<()>),
    /// No request for `client_header_timeout`, whether one has begun to arrive or not.
    Idle,
    /// A response waited on the client for `send_timeout`.
    Stalled,
}

/// Wakes a connection's task when its watchdog's timer fires or the node stops, and says so: the
/// task looks at them only then, not every time hyper wakes it.
#[derive(Default)]
struct Alarm {
    rang: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Alarm {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.rang.store(true, Ordering::Release);
        if let Some(task) = &*lock(&self.task) {
            task.wake_by_ref();
        }
    }
}

/// Drives `connection` to its end, closing it when the client owes something past its limit:
/// dropped at once, or, for an idle HTTP/2 connection, asked to close (`close`: hyper's graceful
/// shutdown, a GOAWAY) and dropped if still idle as long again, as HTTP/2's close waits for the
/// client to answer a PING, which a client that sends nothing never does. When the node stops, it
/// is asked to close, and the watchdog goes on until it has: a client that stalls does not hold
/// the node's shutdown up to `shutdown_timeout`. Says so if it closed the connection on a limit.
async fn watch<C>(
    connection: C,
    close: fn(Pin<&mut C>),
    stop: &CancellationToken,
    activity: &Activity,
    limits: Limits,
    http2: bool,
) -> hyper::Result<Option<Disconnect>>
where
    C: Future<Output = hyper::Result<()>>,
{
    let mut connection = pin!(connection);
    let alarm = Arc::new(Alarm::default());
    let alarmed = Waker::from(alarm.clone());
    let mut stopped = pin!(stop.cancelled());
    let period = limits.period();
    let mut timer = pin!(tokio::time::sleep(Duration::ZERO));
    // The task's waker, as the alarm has it.
    let mut task: Option<Waker> = None;
    let mut armed = false;
    // Asked to close (the node stops, or an idle HTTP/2 connection got its GOAWAY).
    let mut closing = false;
    // Asked to close for idleness.
    let mut idled = false;
    let ending = std::future::poll_fn(|cx| {
        if !task.as_ref().is_some_and(|task| task.will_wake(cx.waker())) {
            task = Some(cx.waker().clone());
            *lock(&alarm.task) = task.clone();
        }
        let rang = alarm.rang.load(Ordering::Acquire) && alarm.rang.swap(false, Ordering::AcqRel);
        if rang || !armed {
            armed = true;
            let mut cx = Context::from_waker(&alarmed);
            if !closing && stopped.as_mut().poll(&mut cx).is_ready() {
                close(connection.as_mut());
                closing = true;
            }
            if let Some(period) = period {
                while timer.as_mut().poll(&mut cx).is_ready() {
                    match check(activity, &limits, period) {
                        Ok(next) => timer.as_mut().reset(next),
                        Err(Ending::Idle) if http2 && !closing => {
                            close(connection.as_mut());
                            closing = true;
                            idled = true;
                            // As long again from now.
                            activity.idle_since.store(activity.now(), Ordering::Relaxed);
                        }
                        Err(ending) => return Poll::Ready(ending),
                    }
                }
            }
        }
        connection.as_mut().poll(cx).map(Ending::Closed)
    })
    .await;
    Ok(match ending {
        // An idle HTTP/2 connection that closed after its GOAWAY.
        Ending::Closed(_) if idled => Some(Disconnect::Idle),
        Ending::Closed(result) => return result.map(|()| None),
        // HTTP/2 connections read PINGs and SETTINGS between requests.
        Ending::Idle if !http2 && activity.head_started.load(Ordering::Relaxed) => {
            Some(Disconnect::SlowHead)
        }
        Ending::Idle => Some(Disconnect::Idle),
        Ending::Stalled => Some(Disconnect::SlowRead),
    })
}

/// A client connection whose first bytes were read: plain, or over TLS, and then whether it
/// speaks HTTP/2.
enum Opened {
    Plain(ClientIo),
    Tls(Box<Rewound<TlsStream<ClientIo>>>, bool),
    /// Plain HTTP to the HTTPS listener, answered, to be closed.
    PlainHttp(TcpStream),
}

/// Reads a connection's first bytes, as far as telling whether they open HTTP/2: `None` if it
/// closes before that. hyper-util's builder does the same, with no timer. A connection from a
/// proxy that sends the PROXY protocol (`proxied`) begins with its header, which gives the
/// client's address (else it is `peer`); one without a valid header is closed (`None`), as
/// nginx and HAProxy close it. With `tls`, the bytes after that header begin a TLS handshake,
/// and HTTP/2 is what ALPN chose, or without ALPN, what the first bytes it decrypts show; a
/// handshake that fails closes the connection (`None`). A plain HTTP request where the handshake
/// should begin is answered 400 and closed (`PlainHttp`).
async fn first_bytes(
    mut tcp: TcpStream,
    peer: Peer,
    proxied: bool,
    tls: Option<TlsAcceptor>,
    activity: Arc<Activity>,
) -> Option<(Opened, Peer)> {
    let (mut first, client) = if proxied {
        let (rest, client) = proxy_header(&mut tcp, peer, &activity).await?;
        // A head begins with the bytes past the header: a proxy sends its header as soon as it
        // has the client's connection, and a client that sends nothing then is idle.
        activity
            .head_started
            .store(!rest.is_empty(), Ordering::Relaxed);
        (rest, client)
    } else {
        (Vec::with_capacity(PREFACE.len()), peer)
    };
    let Some(tls) = tls else {
        read_first(&mut tcp, &mut first, &activity).await?;
        activity.idle_since.store(activity.now(), Ordering::Relaxed);
        let io = ClientIo {
            io: Rewound {
                io: tcp,
                first,
                at: 0,
            },
            activity,
            lingering: None,
        };
        return Some((Opened::Plain(io), client));
    };
    if first.is_empty() {
        use tokio::io::AsyncReadExt;
        // As much as a client's hello takes (post-quantum key shares make them ~1.8 KB).
        first.reserve(2048);
        match tcp.read_buf(&mut first).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => activity.head_started.store(true, Ordering::Relaxed),
        }
    }
    // A TLS connection opens with a handshake record (RFC 8446 §5.1: its type, 22); an HTTP/1
    // request with its method's first letter. curl and browsers show a TLS alert as garbage
    // ("Received HTTP/0.9"), where a plain answer says what went wrong.
    if first[0].is_ascii_uppercase() {
        let tcp = Box::pin(answer_plain_http(tcp, first)).await?;
        return Some((Opened::PlainHttp(tcp), client));
    }
    let tcp = ClientIo {
        io: Rewound {
            io: tcp,
            first,
            at: 0,
        },
        activity: activity.clone(),
        lingering: None,
    };
    // Boxed: a plain connection's future holds no room for a handshake.
    let (io, http2) = Box::pin(handshake(tcp, &tls, client.addr, &activity)).await?;
    Some((Opened::Tls(io, http2), client))
}

/// The `Cache-Status` detail and body of edge's answer to plain HTTP on the HTTPS listener.
const PLAIN_HTTP: &str = "plain-http";
const PLAIN_HTTP_BODY: &str = "edge: a plain HTTP request was sent to the HTTPS port\n";

/// The most read of a plain HTTP request to the HTTPS listener before it is answered, and after.
const PLAIN_HEAD_MAX: usize = 64 * 1024;

/// Answers a plain HTTP request that came to the HTTPS listener, whose first bytes are `first`,
/// with a 400 saying so, as nginx answers one ("The plain HTTP request was sent to HTTPS port"),
/// after reading its head, so that the client is not reset while it still sends it; `None` if
/// the connection failed.
async fn answer_plain_http(mut tcp: TcpStream, mut first: Vec<u8>) -> Option<TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut read = [0; 4096];
    // Its head ends at an empty line, which may end in a bare LF (RFC 9112 §2.2, as hyper
    // takes it: `printf 'GET / HTTP/1.0\n\n' | nc`). Only what came since the last look is
    // looked at (and the two bytes before it): a client that sends its head a byte at a time
    // would otherwise have it read over again for each byte.
    let mut from = 0;
    while !head_ended(&first[from..]) && first.len() < PLAIN_HEAD_MAX {
        from = first.len().saturating_sub(2);
        match tcp.read(&mut read).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => first.extend_from_slice(&read[..n]),
        }
    }
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let cache_status = crate::headers::CacheStatus {
        detail: Some(PLAIN_HTTP),
        ..Default::default()
    };
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ndate: {date}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         cache-control: no-store\r\ncache-status: {}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{PLAIN_HTTP_BODY}",
        cache_status.to_header_value().to_str().unwrap_or_default(),
        PLAIN_HTTP_BODY.len()
    );
    tcp.write_all(answer.as_bytes()).await.ok()?;
    tcp.shutdown().await.ok()?;
    Some(tcp)
}

/// Whether `bytes` hold the empty line that ends a request head: CRLF CRLF, or with bare LFs.
fn head_ended(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

/// Lets a connection edge has answered and shut down for writing take the client's last bytes
/// for a second before it closes: a client whose unread bytes are still in edge's socket when
/// it closes gets a reset, which can lose it the answer.
async fn linger(mut tcp: TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut read = [0; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut left = PLAIN_HEAD_MAX;
        while let Ok(n @ 1..) = tcp.read(&mut read).await {
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// Makes the TLS handshake of `client`'s connection `tcp`, and reads its first decrypted bytes
/// if ALPN did not say whether it speaks HTTP/2: the TLS stream, and whether it does.
async fn handshake(
    tcp: ClientIo,
    tls: &TlsAcceptor,
    client: SocketAddr,
    activity: &Activity,
) -> Option<(Box<Rewound<TlsStream<ClientIo>>>, bool)> {
    let mut stream = match tls.accept(tcp).await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::debug!(%client, %err, "TLS handshake failed: connection closed");
            return None;
        }
    };
    // The handshake's bytes are no request's.
    activity.head_started.store(false, Ordering::Relaxed);
    let mut first = Vec::new();
    let http2 = match stream.get_ref().1.alpn_protocol() {
        Some(protocol) => protocol == b"h2",
        None => {
            first.reserve(PREFACE.len());
            read_first(&mut stream, &mut first, activity).await?;
            first.starts_with(PREFACE)
        }
    };
    activity.idle_since.store(activity.now(), Ordering::Relaxed);
    let io = Rewound {
        io: stream,
        first,
        at: 0,
    };
    Some((Box::new(io), http2))
}

/// Reads from `io` into `first` until it holds HTTP/2's preface or shows it will not; `None` if
/// the connection closes first.
async fn read_first(
    io: &mut (impl AsyncRead + Unpin),
    first: &mut Vec<u8>,
    activity: &Activity,
) -> Option<()> {
    use tokio::io::AsyncReadExt;
    while first.len() < PREFACE.len() && PREFACE.starts_with(first) {
        let mut more = [0; PREFACE.len()];
        match io.read(&mut more[..PREFACE.len() - first.len()]).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => {
                first.extend_from_slice(&more[..read]);
                activity.head_started.store(true, Ordering::Relaxed);
            }
        }
    }
    Some(())
}

/// Longest PROXY protocol header taken (version 1's are at most 107 bytes; version 2's carry
/// TLVs, a few hundred bytes from HAProxy or a cloud load balancer).
const PROXY_HEADER_MAX: usize = 4096;

/// Longest PROXY protocol version 1 header, its CRLF included.
const PROXY_V1_MAX: usize = 107;

/// Reads a PROXY protocol header (version 1 or 2): the client's address it names (`peer` for a
/// health check of the proxy's own, `LOCAL` or `UNKNOWN`), and the bytes read past it. `None`
/// if the connection closes first or its first bytes are not a valid header.
async fn proxy_header(
    tcp: &mut TcpStream,
    peer: Peer,
    activity: &Activity,
) -> Option<(Vec<u8>, Peer)> {
    use ppp::{HeaderResult, PartialResult, v1, v2};
    use tokio::io::AsyncReadExt;
    let mut read = Vec::with_capacity(256);
    loop {
        let mut more = [0; 512];
        let got = match tcp.read(&mut more).await {
            Ok(0) | Err(_) => return None,
            Ok(got) => got,
        };
        read.extend_from_slice(&more[..got]);
        activity.head_started.store(true, Ordering::Relaxed);
        let header = HeaderResult::parse(&read);
        // A version 1 line is parsed once it has ended, as HAProxy reads it: ppp takes one cut
        // right after its source port (`… 51000 `) for a header with an empty destination port.
        let unended = matches!(header, HeaderResult::V1(_))
            && read.len() < PROXY_V1_MAX
            && !read.contains(&b'\n')
            && (read.starts_with(b"PROXY ") || b"PROXY ".starts_with(&read));
        if (header.is_incomplete() || unended) && read.len() < PROXY_HEADER_MAX {
            continue;
        }
        let (len, named, ssl): (usize, Option<(IpAddr, u16)>, bool) = match header {
            // The line ends with CRLF (HAProxy's proxy-protocol.txt §2.1). ppp also takes one
            // ending in a space and a bare LF (`… 8080 \n`) when nothing follows it in the read,
            // and not when a request does: whether such a header was taken depended on how the
            // proxy's bytes were cut into segments.
            HeaderResult::V1(Ok(header)) if header.header.ends_with("\r\n") => (
                header.header.len(),
                match header.addresses {
                    v1::Addresses::Tcp4(a) => Some((a.source_address.into(), a.source_port)),
                    v1::Addresses::Tcp6(a) => Some((a.source_address.into(), a.source_port)),
                    v1::Addresses::Unknown => None,
                },
                false,
            ),
            HeaderResult::V2(Ok(header)) => (
                header.len(),
                match (header.command, header.addresses) {
                    (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                        Some((a.source_address.into(), a.source_port))
                    }
                    (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                        Some((a.source_address.into(), a.source_port))
                    }
                    _ => None,
                },
                // PP2_TYPE_SSL, its first byte's PP2_CLIENT_SSL bit: the client's connection to
                // the proxy was TLS.
                header.tlvs().flatten().any(|tlv| {
                    tlv.kind == 0x20 && tlv.value.first().is_some_and(|flags| flags & 0x01 != 0)
                }),
            ),
            _ => {
                tracing::warn!(peer = %peer.addr, "a connection from a proxy_protocol address did not begin with a valid PROXY protocol header: closed");
                return None;
            }
        };
        let addr = named.map_or(peer.addr, |(ip, port)| {
            SocketAddr::new(ip.to_canonical(), port)
        });
        let client = Peer {
            addr,
            tls: peer.tls || ssl,
        };
        return Some((read.split_off(len), client));
    }
}

/// A stream whose first bytes were read (to learn its protocol, and past a PROXY protocol
/// header), with those bytes put back in front of the rest. Reading costs one comparison more
/// than the bare stream, as hyper-util's own wrapper does.
struct Rewound<S> {
    io: S,
    first: Vec<u8>,
    /// How many of `first` have been read again.
    at: usize,
}

impl<S> Rewound<S> {
    fn http2(&self) -> bool {
        self.first.starts_with(PREFACE)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.first.len() {
            let n = buf.remaining().min(this.first.len() - this.at);
            buf.put_slice(&this.first[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A client's TCP connection, its first bytes put back ([`Rewound`]), whose reads and writes
/// note in its [`Activity`] when a request head begins, when the socket is full and when it takes
/// bytes again: writing costs one comparison more than the bare socket while the client keeps
/// up. Over TLS, the TLS stream runs on it, so that what is noted is the socket's own.
struct ClientIo {
    io: Rewound<TcpStream>,
    activity: Arc<Activity>,
    /// Once edge has shut its side and found the client still sending: how long it reads on.
    lingering: Option<Lingering>,
}

/// A connection edge closes while its client still sends ([`ClientIo::poll_shutdown`]): read on
/// until nothing comes for [`LINGER_QUIET`], and for [`LINGER`] at most (nginx's
/// `lingering_timeout` and `lingering_time`, 5 s and 30 s).
struct Lingering {
    quiet: Pin<Box<tokio::time::Sleep>>,
    until: Instant,
}

const LINGER: Duration = Duration::from_secs(5);
const LINGER_QUIET: Duration = Duration::from_secs(1);

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.io.at < this.io.first.len() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io.io).poll_read(cx, buf);
        // Bytes while no request is open begin a head (not a request body's).
        if buf.filled().len() > before && this.activity.open.load(Ordering::Relaxed) == 0 {
            this.activity.head_started.store(true, Ordering::Relaxed);
        }
        read
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io.io).poll_write(cx, buf);
        self.activity.wrote(written.is_pending());
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io.io).poll_write_vectored(cx, bufs);
        self.activity.wrote(written.is_pending());
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io.io).poll_flush(cx)
    }

    /// Shuts edge's side; then, if the client is still sending, reads and drops what it sends
    /// for as long as it keeps on ([`Lingering`]; RFC 9112 §9.6), or until it closes its own:
    /// closed with bytes unread, the socket would be reset, and the client could lose the answer
    /// before reading it. A 413 to an upload edge did not read (`client_max_body_size`), or a 408
    /// or 400 to one it stopped reading, was lost so by a client that gives up on a failed write
    /// (curl: "Send failure: Broken pipe"). So it lingers too when nothing has come yet but the
    /// request's body was left unread: the rest of it may be a moment behind (a network's round
    /// trip), and closed at once, the socket would answer it with a reset all the same. A client
    /// that sends nothing more (an idle keep-alive connection, or one whose body was read whole)
    /// is closed at once.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        // Not lingering yet: edge's side is still to shut (it is shut at once, or has failed).
        if this.lingering.is_none() {
            ready!(Pin::new(&mut this.io.io).poll_shutdown(cx))?;
        }
        let mut dropped = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut dropped);
            match Pin::new(&mut this.io.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    let now = Instant::now();
                    match &mut this.lingering {
                        None => {
                            let quiet = Box::pin(tokio::time::sleep_until(now + LINGER_QUIET));
                            let until = now + LINGER;
                            this.lingering = Some(Lingering { quiet, until });
                        }
                        Some(lingering) if now >= lingering.until => return Poll::Ready(Ok(())),
                        Some(lingering) => lingering.quiet.as_mut().reset(now + LINGER_QUIET),
                    }
                }
                // The client closed its side too, or the connection failed.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    if this.lingering.is_none() {
                        if !this.activity.unread_body.load(Ordering::Relaxed) {
                            return Poll::Ready(Ok(()));
                        }
                        let now = Instant::now();
                        let quiet = Box::pin(tokio::time::sleep_until(now + LINGER_QUIET));
                        let until = now + LINGER;
                        this.lingering = Some(Lingering { quiet, until });
                    }
                    let lingering = this.lingering.as_mut().expect("set above");
                    return lingering.quiet.as_mut().poll(cx).map(Ok);
                }
            }
        }
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
