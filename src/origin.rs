//! The origin: kept-alive HTTP/1.1 connections to it (hyper's connection API, rustls for `https`
//! origins), the mapping of request targets to origin URLs, and the header rewriting of a
//! forwarding intermediary (RFC 9110 §7.6).
//!
//! Edge speaks HTTP/1.1 to the origin, as nginx and Varnish do to their upstreams. Its pool is a
//! stack of idle connections: a connection goes back when the response body it carried has been
//! read to its end, and a request that finds a pooled connection closed before it was sent goes
//! out on another. hyper-util's pooled client (and reqwest, which wraps it) spawned a task per
//! request to wait for the connection to be ready again, and hashed a pool key twice: 10k of the
//! 68k instructions of a pass-through request (bench/callgrind.sh).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri, Version};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;
use url::{Position, Url};

use crate::cache::key::{CacheKey, HTTPS_MARK, Scheme};
use crate::config::OriginConfig;
use std::time::SystemTime;

use crate::headers::{
    append_member, append_via, as_cgi_reads_it, connection_options, forwardable_trailers,
    remove_fields, remove_hop_by_hop,
};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Why the origin did not answer.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("origin unreachable: {0}")]
    Unreachable(String),
    #[error("origin did not answer within {0:?}")]
    Timeout(Duration),
    #[error("origin sent an invalid response: {0}")]
    Invalid(&'static str),
    /// Not sent: `origin.max_connections` requests were in flight for as long as
    /// `origin.connect_timeout`, or for an upload streaming from its client, half as many such
    /// uploads ([`UPLOAD_SHARE`]); the third field says which.
    #[error("not sent: {0} {2} for {1:?}")]
    Busy(usize, Duration, &'static str),
    /// Not the origin's fault: the client sent none of the body it announced for this long.
    #[error("the client sent nothing of its request body for {0:?}")]
    ClientTimeout(Duration),
    /// Not the origin's fault: the client's request body was malformed or cut short.
    #[error("the client's request body failed: {0}")]
    ClientBody(String),
    /// Not the origin's fault: the client's request body is longer than `client_max_body_size`.
    #[error("the client's request body is longer than client_max_body_size ({0} bytes)")]
    TooLarge(u64),
    /// Not the origin's fault: edge could not write the request body to its temporary file
    /// (`request_buffering`).
    #[error("the request body could not be written to a temporary file: {0}")]
    Buffer(String),
}

/// An origin response, its body read with `origin.timeout` as the limit between two reads.
pub type Upstream = Response<OriginBody>;

pub struct Origin {
    connector: HttpsConnector<HttpConnector>,
    idle: Arc<Idle>,
    base: Url,
    /// `base`'s path without its trailing slash: every forwarded path starts with it.
    prefix: String,
    /// `scheme://authority`: what the connector connects to.
    root: Uri,
    /// The origin's own `Host`.
    host: HeaderValue,
    timeout: Duration,
    /// `client_body_timeout`; `None` is no limit.
    client_body_timeout: Option<Duration>,
    /// `client_max_body_size`; `None` is no limit.
    max_body: Option<u64>,
    /// `request_buffering`.
    buffering: bool,
    /// `None`: no limit on requests in flight.
    slots: Option<Slots>,
    /// The share of `slots` that uploads streaming from their clients may hold ([`UPLOAD_SHARE`]).
    uploads: Option<Slots>,
    /// `origin.strip_query` and `origin.sort_query`; `None` when neither is set.
    query: Option<QueryRules>,
}

/// What is done to a request's query before it is looked up and forwarded.
struct QueryRules {
    strip: Vec<String>,
    sort: bool,
}

impl QueryRules {
    fn strips(&self, name: &str) -> bool {
        self.strip
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(stem) => name.starts_with(stem),
                None => name == pattern,
            })
    }

    /// `query` with the parameters named in `strip` taken out and, with `sort`, the rest in
    /// order of their names; `None` when no parameter is left. Names are compared decoded, as
    /// the origin reads them (`utm%5Fsource` is `utm_source`; `%61` sorts as `a`, and two of one
    /// name keep their order, so that the one an origin takes last stays last).
    fn apply<'a>(&self, query: &'a str) -> Option<Cow<'a, str>> {
        let name = |param: &str| {
            let name = param.split_once('=').map_or(param, |(name, _)| name);
            form_urlencoded::parse(name.as_bytes())
                .next()
                .map_or_else(String::new, |(name, _)| name.into_owned())
        };
        // Empty parameters (`a=1&&b=2`, a trailing `&`) go too: they name nothing. Each name
        // decoded once.
        let mut params: Vec<(String, &str)> = (query.split('&'))
            .filter(|param| !param.is_empty())
            .map(|param| (name(param), param))
            .filter(|(name, _)| !self.strips(name))
            .collect();
        if self.sort {
            // Stable: two of one name keep their order.
            params.sort_by(|(a, _), (b, _)| a.cmp(b));
        }
        let kept = (params.iter().map(|(_, param)| *param))
            .collect::<Vec<_>>()
            .join("&");
        if kept.is_empty() {
            None
        } else if kept == query {
            Some(Cow::Borrowed(query))
        } else {
            Some(Cow::Owned(kept))
        }
    }
}

/// A permit per request in flight to the origin (`origin.max_connections`), and how long a
/// request waits for one (`origin.connect_timeout`).
struct Slots {
    free: Arc<Semaphore>,
    limit: usize,
    wait: Duration,
    /// What the permits are for, as [`OriginError::Busy`] says it.
    what: &'static str,
}

impl Slots {
    fn new(limit: usize, wait: Duration, what: &'static str) -> Self {
        Self {
            free: Arc::new(Semaphore::new(limit)),
            limit,
            wait,
            what,
        }
    }

    /// A permit at once when one is free, or once one is, within `wait`.
    async fn take(&self) -> Result<OwnedSemaphorePermit, OriginError> {
        match self.free.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            // Boxed: only a request that has to wait carries the timer.
            Err(_) => Box::pin(self.wait_for_one()).await,
        }
    }

    async fn wait_for_one(&self) -> Result<OwnedSemaphorePermit, OriginError> {
        match tokio::time::timeout(self.wait, self.free.clone().acquire_owned()).await {
            Ok(permit) => Ok(permit.expect("the semaphore is never closed")),
            Err(_) => Err(OriginError::Busy(self.limit, self.wait, self.what)),
        }
    }
}

/// The share of `origin.max_connections` that uploads streaming from their clients may hold at
/// once (at least one): the rest stay for requests that wait on nobody but the origin.
pub const UPLOAD_SHARE: usize = 2;

/// A request's place among those in flight to the origin (`origin.max_connections`), from
/// [`Origin::slot`], and for an upload that streams from its client its place among those; `None`
/// inside when there is no limit.
pub struct Slot(Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>);

/// A connection to the origin: hyper's handle to send on it, and the task that reads and writes
/// it, aborted to close it while hyper still writes a request body ([`OriginBody`]).
struct Sender {
    send: http1::SendRequest<Body>,
    task: tokio::task::AbortHandle,
}

/// How long an idle connection is kept, and how many are.
const IDLE_FOR: Duration = Duration::from_secs(60);
const IDLE_MAX: usize = 1024;

/// A pooled connection idle for this long may be closed by the origin (its keep-alive timeout:
/// 5 s in Node.js and Apache) just as a request goes out on it; a bodiless GET or HEAD that meets
/// that goes out once more, on a new connection, as nginx does. Only such requests keep the copy
/// that takes: on a busy connection, none is made.
const RETRY_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Idle connections to the origin, the most recently used at the back.
#[derive(Default)]
struct Idle(Mutex<VecDeque<(Sender, Instant)>>);

impl Idle {
    /// The most recently used connection that is still open, and since when it has been idle.
    fn take(&self) -> Option<(Sender, Instant)> {
        let mut idle = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((sender, since)) = idle.pop_back() {
            if !sender.send.is_closed() {
                return Some((sender, since));
            }
        }
        None
    }

    /// Keeps a connection whose last response was read to its end, and lets go of the oldest
    /// when it has been idle for [`IDLE_FOR`].
    fn put(&self, sender: Sender) {
        if sender.send.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if idle
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) > IDLE_FOR)
        {
            idle.pop_front();
        }
        if idle.len() < IDLE_MAX {
            idle.push_back((sender, now));
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Origin {
    /// `client_body_timeout`: how long an upload may wait on its client; `max_body`: the most
    /// bytes it may have (`client_max_body_size`). Zero: no limit. `buffering`: whether uploads
    /// are read whole before the origin is asked (`request_buffering`).
    pub fn new(
        config: &OriginConfig,
        client_body_timeout: Duration,
        max_body: u64,
        buffering: bool,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout.0));
        // rustls for https origins, trusting the webpki (Mozilla) roots or `origin.ca_file`'s;
        // plain TCP for http.
        let tls = hyper_rustls::HttpsConnectorBuilder::new();
        let tls = match &config.ca_file {
            None => tls.with_webpki_roots(),
            Some(ca_file) => tls.with_tls_config(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("ring supports rustls's default protocol versions")
                .with_root_certificates(ca_file.roots.clone())
                .with_no_client_auth(),
            ),
        };
        let tls = tls.https_or_http();
        let tls = match &config.host_header {
            None => tls,
            Some(host) => tls.with_server_name_resolver(
                hyper_rustls::FixedServerNameResolver::new(host.server_name.clone()),
            ),
        };
        let connector = tls.enable_http1().wrap_connector(http);
        let base = config.url.0.clone();
        let prefix = base.path().trim_end_matches('/').to_owned();
        let authority = &base[Position::BeforeHost..Position::AfterPort];
        let root = base[..Position::AfterPort]
            .parse()
            .expect("a URL's scheme, host and port are a URI");
        let host = match &config.host_header {
            Some(host) => host.value.clone(),
            None => HeaderValue::from_str(authority).expect("a URL's host and port are ASCII"),
        };
        Self {
            connector,
            idle: Arc::default(),
            base,
            prefix,
            root,
            host,
            timeout: config.timeout.0,
            client_body_timeout: (!client_body_timeout.is_zero()).then_some(client_body_timeout),
            max_body: (max_body > 0).then_some(max_body),
            buffering,
            slots: (config.max_connections > 0).then(|| {
                let what = "requests in flight to the origin (origin.max_connections)";
                Slots::new(config.max_connections, config.connect_timeout.0, what)
            }),
            uploads: (config.max_connections > 0).then(|| {
                let what = "uploads streaming to the origin from their clients \
                    (half of origin.max_connections)";
                let limit = (config.max_connections / UPLOAD_SHARE).max(1);
                Slots::new(limit, config.connect_timeout.0, what)
            }),
            query: (!config.strip_query.is_empty() || config.sort_query).then(|| QueryRules {
                strip: config.strip_query.clone(),
                sort: config.sort_query,
            }),
        }
    }

    /// The origin URL for a request target in origin-form (or absolute-form, whose path and query
    /// are used). `None` for a target edge will not forward, such as `*` or a path that climbs
    /// out of the origin's prefix.
    pub fn url_for(&self, target: &Uri) -> Option<Url> {
        self.url_with(target, true)
    }

    /// As [`Origin::url_for`], but with the query as written: not cut by `origin.strip_query`
    /// nor ordered by `origin.sort_query`. For the start of stored targets a purge by prefix
    /// names, whose queries are normalised already.
    pub fn url_as_written(&self, target: &Uri) -> Option<Url> {
        self.url_with(target, false)
    }

    fn url_with(&self, target: &Uri, rules: bool) -> Option<Url> {
        let path_and_query = target.path_and_query()?.as_str();
        let (path, query) = split_query(path_and_query);
        // An absolute target's empty path (`http://a?x=1`) is `/` (RFC 9112 §3.2.1).
        let path = if path.is_empty() && target.scheme().is_some() {
            "/"
        } else {
            path
        };
        if !path.starts_with('/') {
            return None;
        }
        let mut url = self.base.clone();
        if self.prefix.is_empty() {
            url.set_path(path);
        } else {
            url.set_path(&[self.prefix.as_str(), path].concat());
        }
        url.set_query(query);
        let inside = url.path().strip_prefix(self.prefix.as_str())?;
        if !inside.starts_with('/') {
            return None;
        }
        // The query rules apply to the query as URL parsing encoded it (`'` as `%27`), so that
        // a query sent encoded and one sent as it is sort alike.
        Some(if rules {
            self.with_query_rules(url)
        } else {
            url
        })
    }

    /// The cache key of a request target, as `CacheKey::new(&url_for(target)?, scheme)` gives it,
    /// without building the URL: for a target that URL parsing leaves as it is (the usual case: no
    /// dot segments, percent-escapes or characters it would encode). `None`: ask
    /// [`Origin::url_for`].
    pub fn simple_key(&self, target: &Uri, scheme: Scheme) -> Option<CacheKey> {
        let path_and_query = target.path_and_query()?.as_str();
        let (path, query) = split_query(path_and_query);
        // Only `origin.strip_query` or `sort_query` rewrite a query.
        let rewritten = match (&self.query, query) {
            (Some(rules), Some(query)) => Some(rules.apply(query)),
            _ => None,
        };
        let query = rewritten.as_ref().map_or(query, Option::as_deref);
        let unchanged = path.starts_with('/')
            && path.bytes().all(|b| STAYS_IN_PATH[usize::from(b)])
            && !has_dot_segment(path.as_bytes())
            && query.is_none_or(|query| query.bytes().all(|b| STAYS_IN_QUERY[usize::from(b)]));
        if !unchanged {
            return None;
        }
        let mut text =
            String::with_capacity(HTTPS_MARK.len() + self.prefix.len() + path_and_query.len());
        if scheme == Scheme::Https {
            text.push_str(HTTPS_MARK);
        }
        text.push_str(&self.prefix);
        match rewritten {
            None => text.push_str(path_and_query),
            Some(query) => {
                text.push_str(path);
                if let Some(query) = query {
                    text.push('?');
                    text.push_str(&query);
                }
            }
        }
        Some(CacheKey::from_text(text))
    }

    /// `url` (already resolved, on this origin) with its query as [`Origin::url_for`] makes a
    /// request's: less what `origin.strip_query` takes out, ordered as `origin.sort_query` says.
    /// What a `Location` or `Content-Location` names is stored under that.
    pub fn with_query_rules(&self, mut url: Url) -> Url {
        if let (Some(rules), Some(query)) = (&self.query, url.query()) {
            let query = rules.apply(query).map(Cow::into_owned);
            url.set_query(query.as_deref());
        }
        url
    }

    /// Whether `url` (already resolved) is on this origin.
    pub fn owns(&self, url: &Url) -> bool {
        url.origin() == self.base.origin()
            && url
                .path()
                .strip_prefix(self.prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// A slot for one request to the origin: at once when one is free, or once one is, within
    /// `origin.connect_timeout` (else [`OriginError::Busy`]). Taken apart from [`Origin::send`],
    /// so that the wait for it is not counted as the origin's time.
    ///
    /// An upload that `streams` from its client ([`streams_from_client`]) first takes a place
    /// among those, which hold at most half the slots (waiting as long again for one): clients
    /// trickling large uploads, each holding its slot and connection until its last byte, took
    /// every one of `origin.max_connections`, and every other request got 503 `origin-busy`.
    /// It gives the place up when its last byte has gone to the origin.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold its arguments twice"
    )]
    pub fn slot(&self, streams: bool) -> impl Future<Output = Result<Slot, OriginError>> {
        async move {
            let upload = match &self.uploads {
                Some(uploads) if streams => Some(uploads.take().await?),
                _ => None,
            };
            match &self.slots {
                None => Ok(Slot(None, upload)),
                Some(slots) => Ok(Slot(Some(slots.take().await?), upload)),
            }
        }
    }

    /// Whether a request body may go to the origin by what it announces: one announced longer
    /// than `client_max_body_size` may not ([`OriginError::TooLarge`]), and is not read (so a
    /// client that expects `100-continue` is not told to send it). One that turns out longer
    /// fails when it does ([`Origin::read_first`], [`Upload`]).
    pub fn admits(&self, body: &Body) -> Result<(), OriginError> {
        match self.max_body {
            Some(max) if body.size_hint().lower() > max => Err(OriginError::TooLarge(max)),
            _ => Ok(()),
        }
    }

    /// Whether `body` is read whole before its request goes to the origin ([`Origin::read_first`]):
    /// not a body that is empty; with `request_buffering` any other; without it, not one
    /// announced longer than [`READ_FIRST_MAX`], nor one whose client expects `100-continue`,
    /// which is read only once the origin has said to go on (so that an origin that refuses the
    /// upload on its head spares the client sending it). Asked of every request edge forwards:
    /// for one without a body, one call on the body and no more.
    pub fn reads_first(&self, headers: &HeaderMap, body: &Body) -> bool {
        !body.is_end_stream()
            && body.size_hint().exact() != Some(0)
            && (self.buffering
                || (body.size_hint().lower() <= READ_FIRST_MAX as u64
                    && !expects_continue(headers)))
    }

    /// Reads a request body whole, before its request takes a slot or a connection to the
    /// origin (nginx's `proxy_request_buffering on`), for a body [`Origin::reads_first`] says to.
    /// A request waiting on its client's upload held both for as long as the client took: 150
    /// streams trickling small bodies on one HTTP/2 connection held 150 origin connections, and a
    /// handful of such clients took every one of `origin.max_connections`, so that every other
    /// request got 503 `origin-busy`.
    ///
    /// A body that ends within [`READ_FIRST_MAX`] comes back as one piece of known length, with
    /// `Content-Length` saying so (also for one that came chunked, as nginx sends a body it
    /// buffered); the request then waits on nobody but the origin. A longer one (only a body of
    /// unannounced length can turn out so) comes back as what was read and then the rest, which
    /// streams as before: edge does not hold large uploads in memory. With `request_buffering`,
    /// a longer body is written whole to a temporary file instead (nginx's
    /// `client_body_temp_path`), and goes on from there with its length: a client trickling a
    /// large upload then holds no origin connection either (and one that expects `100-continue`
    /// is told to go on by edge, as by nginx; its `Expect` goes no further, also when the body
    /// then streams). Without a temporary file to be had, it streams. The second value says
    /// whether the body still streams from its client ([`Origin::slot`]). While the body is read,
    /// `client_body_timeout` bounds each wait on the client (then
    /// [`OriginError::ClientTimeout`], a 408); a malformed or cut-short body is
    /// [`OriginError::ClientBody`] (a 400), and one longer than `client_max_body_size`
    /// [`OriginError::TooLarge`] (a 413); the origin has been asked nothing then.
    pub async fn read_first(
        &self,
        headers: &mut HeaderMap,
        mut body: Body,
    ) -> Result<(Body, bool), OriginError> {
        // Its client, if it expects `100-continue`, is told to go on as the body is first read
        // (hyper does so): the origin is not to be asked, also when the body then streams.
        headers.remove(header::EXPECT);
        // Copied as it comes: a piece may hold on to the whole buffer its connection read it
        // into, and a client sending a byte at a time would have each pin one. Sized for an
        // announced length at once.
        let announced = body.size_hint().lower().min(READ_FIRST_MAX as u64);
        let mut read = BytesMut::with_capacity(announced as usize);
        while let Some(piece) = self.next_piece(&mut body).await? {
            read.extend_from_slice(&piece);
            self.within_max(read.len() as u64)?;
            if read.len() > READ_FIRST_MAX {
                let read = read.freeze();
                if let Some(file) = self.buffering.then(temp_file).flatten() {
                    return Ok((self.spool(file, headers, read, &mut body).await?, false));
                }
                return Ok((
                    Body::new(ReadAhead {
                        read: Some(read),
                        rest: body,
                    }),
                    true,
                ));
            }
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(read.len()));
        Ok((Body::from(read.freeze()), false))
    }

    /// The next piece of a body [`Origin::read_first`] reads, within `client_body_timeout`;
    /// `None` at its end. A trailer section is dropped, as a streamed body's is (the request's
    /// `Trailer` field, hop-by-hop, does not go on to name it).
    async fn next_piece(&self, body: &mut Body) -> Result<Option<Bytes>, OriginError> {
        loop {
            // An HTTP/2 client may mark the end in an empty frame after the `Content-Length`
            // bytes, later or never: the count of what is left says the body is whole (as in
            // [`Upload`]).
            if body.is_end_stream() || body.size_hint().exact() == Some(0) {
                return Ok(None);
            }
            let frame = match self.client_body_timeout {
                None => BodyExt::frame(body).await,
                Some(limit) => (tokio::time::timeout(limit, BodyExt::frame(body)).await)
                    .map_err(|_| OriginError::ClientTimeout(limit))?,
            };
            match frame {
                None => return Ok(None),
                Some(Err(err)) => return Err(OriginError::ClientBody(error_chain(&err))),
                Some(Ok(frame)) => {
                    if let Ok(piece) = frame.into_data() {
                        return Ok(Some(piece));
                    }
                }
            }
        }
    }

    /// [`OriginError::TooLarge`] once a body has more than `client_max_body_size` bytes.
    fn within_max(&self, len: u64) -> Result<(), OriginError> {
        match self.max_body {
            Some(max) if len > max => Err(OriginError::TooLarge(max)),
            _ => Ok(()),
        }
    }

    /// Writes a body whose first bytes were `read` to `file`, a temporary file ([`temp_file`]),
    /// the rest as its client sends it, and returns it as read back from there, with
    /// `Content-Length` saying how long it is.
    async fn spool(
        &self,
        file: std::fs::File,
        headers: &mut HeaderMap,
        read: Bytes,
        body: &mut Body,
    ) -> Result<Body, OriginError> {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        let failed = |err: std::io::Error| OriginError::Buffer(err.to_string());
        let mut file = tokio::fs::File::from_std(file);
        // tokio keeps a buffer as large as the largest write (up to 2 MiB) for the file's life:
        // a client that sent 1 MB at once and then stalled held ~1.2 MB of memory, not ~600 KB.
        file.set_max_buf_size(READ_FIRST_MAX);
        let mut len = read.len() as u64;
        file.write_all(&read).await.map_err(failed)?;
        // Not held while the rest comes, however long its client takes: `read` is over
        // READ_FIRST_MAX (up to twice that, as it grew), and each upload being written held it.
        drop(read);
        while let Some(piece) = self.next_piece(body).await? {
            len += piece.len() as u64;
            self.within_max(len)?;
            file.write_all(&piece).await.map_err(failed)?;
        }
        file.flush().await.map_err(failed)?;
        file.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(failed)?;
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        let file = tokio_util::io::ReaderStream::with_capacity(file, READ_FIRST_MAX);
        Ok(Body::new(Spooled { file, left: len }))
    }

    /// Sends one request to the origin in `slot` and waits for its response head. `target` is a
    /// path and query on this origin: a [`CacheKey::url`]. (An `async move` block rather than an
    /// async fn, as on the rest of the request path: see `proxy::route`.)
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold its arguments twice"
    )]
    pub fn send(
        &self,
        method: Method,
        target: &str,
        mut headers: HeaderMap,
        body: Body,
        slot: Slot,
    ) -> impl Future<Output = Result<Upstream, OriginError>> {
        async move {
            let path = PathAndQuery::try_from(target).map_err(|err| {
                OriginError::Unreachable(format!("invalid origin target {target}: {err}"))
            })?;
            // Held until the response body has been read to its end or dropped: as long as the
            // request keeps a connection to itself.
            let Slot(slot, upload) = slot;
            // Shared by the body, which gives it up at its end, and the response, with which it
            // goes at the latest.
            let place: Option<Place> = upload.map(|permit| Arc::new(Mutex::new(Some(permit))));
            headers.insert(header::HOST, self.host.clone());
            // A connection goes back to the pool only once its request has been sent whole: an
            // origin may answer before it has read an upload, and the next request would queue
            // behind the rest of it.
            // An empty body may not say it ends until it is polled (an HTTP/2 client's empty
            // DATA frame after the head), and hyper does not poll one of length 0.
            let mut gate = None;
            let (body, uploaded) = if body.is_end_stream() || body.size_hint().exact() == Some(0) {
                (body, None)
            } else {
                let progress = Arc::new(Progress::new());
                gate = expects_continue(&headers).then(|| Arc::new(Gate::default()));
                let body = Body::new(Upload {
                    place: place.clone(),
                    inner: body,
                    progress: progress.clone(),
                    limit: self.client_body_timeout,
                    left: self.max_body,
                    timer: None,
                    gate: gate.clone().map(|gate| (gate, None)),
                    wakers: None,
                });
                (body, Some(progress))
            };
            let head = method == Method::HEAD;
            let mut request = Request::new(body);
            *request.method_mut() = method;
            *request.uri_mut() = Uri::from(path);
            *request.headers_mut() = headers;
            if let Some(gate) = gate {
                hyper::ext::on_informational(&mut request, move |response| {
                    if response.status() == http::StatusCode::CONTINUE {
                        gate.open();
                    }
                });
            }
            let exchanged = match &uploaded {
                None => (tokio::time::timeout(self.timeout, self.exchange(request)).await)
                    .map_err(|_| OriginError::Timeout(self.timeout)),
                // Boxed: requests without a body, nearly all, do not carry its future.
                Some(progress) => {
                    Box::pin(progress.within(self.timeout, self.exchange(request))).await
                }
            };
            let fault = uploaded.as_ref().and_then(|progress| progress.fault());
            if !matches!(exchanged, Ok(Ok(_))) {
                give_up(place.as_ref());
            }
            match exchanged {
                Err(err) => Err(err),
                // The request failed because its body did.
                Ok(Err(_)) if fault == Some(Fault::Stalled) => Err(OriginError::ClientTimeout(
                    self.client_body_timeout.unwrap_or_default(),
                )),
                Ok(Err(_)) if fault == Some(Fault::TooLarge) => {
                    Err(OriginError::TooLarge(self.max_body.unwrap_or_default()))
                }
                Ok(Err(err)) if fault == Some(Fault::Broken) => {
                    Err(OriginError::ClientBody(error_chain(&*err)))
                }
                Ok(Err(err)) if timed_out(&*err) => Err(OriginError::Timeout(self.timeout)),
                Ok(Err(err)) if unparsable(&*err) => {
                    Err(OriginError::Invalid("a response head that does not parse"))
                }
                Ok(Err(err)) => Err(OriginError::Unreachable(error_chain(&*err))),
                Ok(Ok((mut response, sender))) => {
                    let Framing { reuse, chunked } = match check_framing(&mut response, head) {
                        Ok(framing) => framing,
                        // Not read on: the connection closes with `response` and its sender.
                        Err(problem) => {
                            give_up(place.as_ref());
                            return Err(OriginError::Invalid(problem));
                        }
                    };
                    // Only a chunked body ends in a trailer section (RFC 9112 §7.1.2); the fields
                    // its head's `Connection` names are read now, before `response_headers`
                    // takes `Connection` out.
                    let named = if chunked {
                        connection_options(response.headers()).into_boxed_slice()
                    } else {
                        Box::default()
                    };
                    Ok(response.map(|body| OriginBody {
                        inner: body,
                        idle: self.timeout,
                        timer: None,
                        armed: false,
                        task: uploaded.is_some().then(|| sender.task.clone()),
                        home: reuse.then(|| (sender, self.idle.clone())),
                        uploaded,
                        slot,
                        place,
                        named,
                    }))
                }
            }
        }
    }

    /// One request on an idle connection, or on a new one. A request that a pooled connection
    /// closed before sending (the origin let it go meanwhile) goes out on the next.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold its arguments twice"
    )]
    fn exchange(
        &self,
        mut request: Request<Body>,
    ) -> impl Future<Output = Result<(Response<Incoming>, Sender), BoxError>> {
        async move {
            let mut retried = false;
            loop {
                // After a connection the origin had closed, the others idle as long may be too.
                let pooled = if retried { None } else { self.idle.take() };
                let (mut sender, idle_since) = match pooled {
                    Some((sender, since)) => (sender, Some(since)),
                    // Boxed: the connector's future (TLS included) is most of this one's size,
                    // and every request's future would carry and move it otherwise.
                    None => (Box::pin(self.connect()).await?, None),
                };
                let pooled = idle_since.is_some();
                // A pooled connection is ready once its connection task has seen the end of the
                // response it carried before.
                if let Err(err) = sender.send.ready().await {
                    if pooled {
                        continue;
                    }
                    return Err(err.into());
                }
                let copy = (!retried
                    && idle_since.is_some_and(|since| since.elapsed() >= RETRY_AFTER_IDLE)
                    && matches!(*request.method(), Method::GET | Method::HEAD)
                    && request.body().is_end_stream())
                .then(|| {
                    let mut copy = Request::new(Body::empty());
                    *copy.method_mut() = request.method().clone();
                    *copy.uri_mut() = request.uri().clone();
                    *copy.headers_mut() = request.headers().clone();
                    copy
                });
                match sender.send.try_send_request(request).await {
                    Ok(response) => return Ok((response, sender)),
                    Err(mut err) => match (err.take_message(), copy) {
                        (Some(unsent), _) if pooled => request = unsent,
                        (_, Some(copy)) if closed_under(err.error()) => {
                            tracing::debug!(
                                "origin closed an idle connection as it was used; asking again"
                            );
                            request = copy;
                            retried = true;
                        }
                        _ => return Err(err.into_error().into()),
                    },
                }
            }
        }
    }

    async fn connect(&self) -> Result<Sender, BoxError> {
        let io = self.connector.clone().oneshot(self.root.clone()).await?;
        let (send, connection) = http1::handshake(io).await?;
        let task = tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "origin connection ended");
            }
        });
        let task = task.abort_handle();
        Ok(Sender { send, task })
    }
}

/// A path and query's path, and its query if it has one (which may be empty: `/a?`).
fn split_query(path_and_query: &str) -> (&str, Option<&str>) {
    match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    }
}

/// Bytes that WHATWG URL parsing keeps as they are in the path of an http(s) URL: printable ASCII
/// outside its path percent-encode set, less `\\` (read as `/`) and `%` (`%2e` is a dot segment).
static STAYS_IN_PATH: [bool; 256] = printable_except(b"\"#<>?^`{}\\%");

/// Bytes that WHATWG URL parsing keeps as they are in the query of an http(s) URL.
static STAYS_IN_QUERY: [bool; 256] = printable_except(b"\"#<>'");

/// Printable ASCII less `excluded`, as a table by byte.
pub(crate) const fn printable_except(excluded: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0x21;
    while b < 0x7f {
        table[b] = true;
        b += 1;
    }
    let mut i = 0;
    while i < excluded.len() {
        table[excluded[i] as usize] = false;
        i += 1;
    }
    table
}

/// Whether a path has a `.` or `..` segment.
fn has_dot_segment(path: &[u8]) -> bool {
    let segment_end = |i: usize| path.get(i).is_none_or(|&b| b == b'/');
    (1..path.len()).any(|i| {
        path[i] == b'.'
            && path[i - 1] == b'/'
            && (segment_end(i + 1) || (path[i + 1] == b'.' && segment_end(i + 2)))
    })
}

/// The most of a request body edge reads before it asks the origin ([`Origin::read_first`]).
/// nginx reads every body whole first, into a temporary file past `client_body_buffer_size`
/// (two memory pages: 8 KiB on x86-64); edge keeps what it reads in memory, so it reads only
/// small bodies first, as most that a form, an API call or a GraphQL query sends are. A larger
/// one streams, and holds its origin connection while it comes. 64 KiB is memory edge can hold
/// for each of many uploads at once: 64 MiB for a thousand stalled ones.
pub const READ_FIRST_MAX: usize = 64 << 10;

/// Whether `body`, not read first ([`Origin::reads_first`]), is still to come from its client as
/// it goes to the origin: one announced longer than [`READ_FIRST_MAX`], of unknown length, or
/// expecting `100-continue`. ([`Origin::read_first`] says so of the bodies it reads.)
pub fn streams_from_client(headers: &HeaderMap, body: &Body) -> bool {
    let hint = body.size_hint();
    !body.is_end_stream()
        && hint.exact() != Some(0)
        && (expects_continue(headers) || hint.exact().is_none_or(|len| len > READ_FIRST_MAX as u64))
}

/// Whether a request's client expects `100-continue` (RFC 9110 §10.1.1).
fn expects_continue(headers: &HeaderMap) -> bool {
    (headers.get(header::EXPECT))
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// A request body that turned out longer than [`READ_FIRST_MAX`]: what was read of it, then the
/// rest as its client sends it. Only a body of unannounced length turns out so, and goes on
/// chunked: its size hint is the default, a length unknown.
struct ReadAhead {
    read: Option<Bytes>,
    rest: Body,
}

impl http_body::Body for ReadAhead {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.read.take() {
            Some(piece) => Poll::Ready(Some(Ok(Frame::data(piece)))),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }
}

/// An unnamed temporary file in `$TMPDIR` for an upload (`request_buffering`); `None` when none
/// can be made (said in the log), and the upload streams to the origin.
fn temp_file() -> Option<std::fs::File> {
    tempfile::tempfile()
        .inspect_err(|err| {
            tracing::warn!(%err, dir = %std::env::temp_dir().display(),
                "no temporary file for an upload: it streams to the origin");
        })
        .ok()
}

/// A request body read back from the temporary file [`Origin::read_first`] wrote it to (which
/// goes with it: the file has no name), of known length.
struct Spooled {
    file: tokio_util::io::ReaderStream<tokio::fs::File>,
    left: u64,
}

impl http_body::Body for Spooled {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        use futures_util::Stream;
        match ready!(Pin::new(&mut self.file).poll_next(cx)) {
            Some(Ok(piece)) => {
                self.left = self.left.saturating_sub(piece.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
            Some(Err(err)) => Poll::Ready(Some(Err(axum::Error::new(err)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// An origin response body that fails when the origin sends nothing for `idle` (as a read timeout
/// does). The timer is armed only while the body waits for the network. Its connection goes back
/// to the pool when the body has been read to its end; a body dropped before that closes it.
pub struct OriginBody {
    inner: Incoming,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
    home: Option<(Sender, Arc<Idle>)>,
    /// Its connection's task, for a request with a body: aborted if the body has not been sent
    /// whole when the response goes.
    task: Option<tokio::task::AbortHandle>,
    /// How the request's body is going; `None` for a request without one.
    uploaded: Option<Arc<Progress>>,
    /// Its place among the requests in flight (`origin.max_connections`).
    slot: Option<OwnedSemaphorePermit>,
    /// Its upload's place among those streaming from their clients, given up with the slot at
    /// the latest ([`Upload::place`]).
    place: Option<Place>,
    /// The fields the head's `Connection` named, for a chunked body: they go from its trailer
    /// section too ([`forwardable_trailers`]).
    named: Box<[HeaderName]>,
}

impl OriginBody {
    /// Once the exchange is over both ways: lends its connection to the next request (when it
    /// can carry one) and gives up its slot.
    fn release(&mut self) {
        if http_body::Body::is_end_stream(&self.inner)
            && self
                .uploaded
                .as_ref()
                .is_none_or(|progress| progress.done.load(Ordering::Acquire))
        {
            if let Some((sender, idle)) = self.home.take() {
                idle.put(sender);
            }
            self.slot = None;
        }
    }
}

/// A request body on its way to the origin, and how it is going. It fails when its client sends
/// nothing of it for `limit` (`client_body_timeout`) while it is being read, whether or not the
/// origin has answered yet.
struct Upload {
    /// Its place among the uploads streaming from their clients ([`Origin::slot`]), given up
    /// when the last byte has come, or when the response goes ([`OriginBody`]): an origin may
    /// answer before it has read the upload and then leave the connection writing it (neither
    /// reading nor closing), which neither ends the body nor lets its client's limit run (hyper
    /// does not read it while it cannot write), and the place would be held for as long.
    place: Option<Place>,
    inner: Body,
    progress: Arc<Progress>,
    limit: Option<Duration>,
    /// How many more bytes it may have (`client_max_body_size`); `None`: no limit.
    left: Option<u64>,
    /// Armed while a read waits on the client.
    timer: Option<Timer>,
    /// For a client that expects `100-continue`: shut until the origin says to go on, and how
    /// long edge has waited for that.
    gate: Option<(Arc<Gate>, Option<Timer>)>,
    /// The task's waker, and the one edge reads the client's body with, which wraps it
    /// ([`Arrived`]): made again only when the task's changes.
    wakers: Option<(Waker, Waker)>,
}

type Timer = Pin<Box<tokio::time::Sleep>>;

/// A place among the uploads streaming from their clients, shared by the body and its response.
type Place = Arc<Mutex<Option<OwnedSemaphorePermit>>>;

/// Gives up an upload's place, if it still holds one.
fn give_up(place: Option<&Place>) {
    if let Some(place) = place {
        drop(place.lock().unwrap_or_else(PoisonError::into_inner).take());
    }
}

/// How long an upload whose client expects `100-continue` waits for the origin's `100
/// Continue` before it is read anyway (curl's own wait; RFC 9110 §10.1.1 lets an origin leave it
/// out).
const EXPECT_WAIT: Duration = Duration::from_secs(1);

/// Lets an upload whose client expects `100-continue` be read once the origin has said to go
/// on. hyper sends the client its `100 Continue` when edge first reads the body; so an origin
/// that refuses the upload at once (401, 413, 417) spares the client sending it, as it would
/// without edge in between.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether it is open, or else to wake `waker` when it opens.
    fn is_open(&self, waker: &Waker) -> bool {
        self.waker.register(waker);
        self.open.load(Ordering::Acquire)
    }
}

/// How an upload is going: whether it has been read to its end, who it waits on since when, and
/// whether its client failed it.
///
/// The limits are nginx's, for a body edge streams instead of buffering it first: while the body
/// waits on its client, `client_body_timeout` (408, kept by [`Upload`]); while the origin takes
/// none of it, `origin.timeout` (nginx's `proxy_send_timeout`); once it is sent whole,
/// `origin.timeout` for the origin to start answering (`proxy_read_timeout`). So an upload that
/// keeps moving goes through however long it takes.
struct Progress {
    done: AtomicBool,
    moved: Mutex<Moved>,
    /// The upload began or stopped waiting on its client: its deadline may have changed.
    turned: tokio::sync::Notify,
    fault: Mutex<Option<Fault>>,
}

#[derive(Clone, Copy)]
struct Moved {
    /// The last time a piece of the body was read, or the upload began to wait on its client.
    at: tokio::time::Instant,
    /// Whether the last read of the body found nothing from the client yet.
    on_client: bool,
}

/// How a client failed its upload.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    /// Nothing of it for `client_body_timeout`.
    Stalled,
    /// Malformed (a bad chunk), or cut short by the client going away.
    Broken,
    /// Longer than `client_max_body_size`.
    TooLarge,
}

impl Progress {
    fn new() -> Self {
        let moved = Moved {
            at: tokio::time::Instant::now(),
            on_client: false,
        };
        Self {
            done: AtomicBool::new(false),
            moved: Mutex::new(moved),
            turned: tokio::sync::Notify::new(),
            fault: Mutex::new(None),
        }
    }

    fn fault(&self) -> Option<Fault> {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fail(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = Some(fault);
    }

    /// The upload now waits on its client (`true`: a read of the body found nothing yet), or no
    /// longer does (a piece was read, or has arrived to be).
    fn wait_on_client(&self, waits: bool) {
        let mut moved = self.moved.lock().unwrap_or_else(PoisonError::into_inner);
        if !waits || !moved.on_client {
            let turned = moved.on_client != waits;
            *moved = Moved {
                at: tokio::time::Instant::now(),
                on_client: waits,
            };
            if turned {
                self.turned.notify_one();
            }
        }
    }

    /// `work` (the exchange carrying this body), until the origin has let the upload wait for
    /// `origin` (`origin.timeout`): taking none of it, or not answering once it has it whole.
    /// While the upload waits on its client, [`Upload`] keeps the client's limit instead.
    async fn within<T>(
        &self,
        origin: Duration,
        work: impl Future<Output = T>,
    ) -> Result<T, OriginError> {
        let mut work = std::pin::pin!(work);
        let mut timer = std::pin::pin!(tokio::time::sleep(origin));
        loop {
            tokio::select! {
                biased;
                done = &mut work => return Ok(done),
                () = &mut timer => {}
                () = self.turned.notified() => {}
            }
            let moved = *self.moved.lock().unwrap_or_else(PoisonError::into_inner);
            let now = tokio::time::Instant::now();
            let deadline = if moved.on_client && !self.done.load(Ordering::Acquire) {
                // Not the origin's turn: looked at again later.
                now + origin
            } else {
                moved.at + origin
            };
            if deadline <= now {
                return Err(OriginError::Timeout(origin));
            }
            timer.as_mut().reset(deadline);
        }
    }
}

/// Wakes the task reading an upload, and notes that the upload no longer waits on its client.
struct Arrived {
    progress: Arc<Progress>,
    waker: Waker,
}

impl std::task::Wake for Arrived {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.progress.wait_on_client(false);
        self.waker.wake_by_ref();
    }
}

impl http_body::Body for Upload {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Some((gate, waited)) = &mut this.gate {
            if !gate.is_open(cx.waker()) {
                let waited =
                    waited.get_or_insert_with(|| Box::pin(tokio::time::sleep(EXPECT_WAIT)));
                ready!(waited.as_mut().poll(cx));
            }
            this.gate = None;
        }
        // When the client's next piece arrives the upload stops waiting on it, whether hyper
        // reads it at once or not (it does not while the origin takes nothing).
        let wakers = match this.wakers.take() {
            Some(wakers) if wakers.0.will_wake(cx.waker()) => wakers,
            _ => {
                let arrived = Arrived {
                    progress: this.progress.clone(),
                    waker: cx.waker().clone(),
                };
                (cx.waker().clone(), Waker::from(Arc::new(arrived)))
            }
        };
        let (_, waker) = this.wakers.insert(wakers);
        let polled = Pin::new(&mut this.inner).poll_frame(&mut Context::from_waker(waker));
        this.progress.wait_on_client(polled.is_pending());
        let Poll::Ready(frame) = polled else {
            let Some(limit) = this.limit else {
                return Poll::Pending;
            };
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            ready!(timer.as_mut().poll(cx));
            this.progress.fail(Fault::Stalled);
            give_up(this.place.as_ref());
            let stalled = format!("the client sent nothing of its request body for {limit:?}");
            return Poll::Ready(Some(Err(axum::Error::new(stalled))));
        };
        this.timer = None;
        if let (Some(Ok(piece)), Some(left)) = (&frame, &mut this.left) {
            let len = piece.data_ref().map_or(0, |data| data.len() as u64);
            match left.checked_sub(len) {
                Some(rest) => *left = rest,
                None => {
                    this.progress.fail(Fault::TooLarge);
                    give_up(this.place.as_ref());
                    let long = "the request body is longer than client_max_body_size";
                    return Poll::Ready(Some(Err(axum::Error::new(long))));
                }
            }
        }
        match &frame {
            Some(Err(_)) => this.progress.fail(Fault::Broken),
            None => this.progress.done.store(true, Ordering::Release),
            // hyper stops polling a body of known length once it has had that many bytes; an
            // HTTP/2 client may still mark the end in an empty frame after them, which is then
            // not read (the size hint counts down what is left of `Content-Length`).
            Some(Ok(_))
                if this.inner.is_end_stream() || this.inner.size_hint().exact() == Some(0) =>
            {
                this.progress.done.store(true, Ordering::Release);
            }
            Some(Ok(_)) => return Poll::Ready(frame),
        }
        // The upload is over, one way or the other.
        give_up(this.place.as_ref());
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a request on a kept-alive connection failed because the origin closed it: it sent
/// nothing back, or reset the connection.
fn closed_under(err: &hyper::Error) -> bool {
    if err.is_incomplete_message() {
        return true;
    }
    io_errors(err).next().is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        )
    })
}

impl Drop for OriginBody {
    /// An upload not sent whole when its answer goes closes its connection, as nginx closes an
    /// upstream connection whose request it did not send whole: an origin that answered without
    /// reading it may neither read it nor close the connection, and hyper would go on writing it
    /// (holding a `request_buffering` temporary file) for as long as the origin held on.
    fn drop(&mut self) {
        self.release();
        give_up(self.place.as_ref());
        if let (Some(task), Some(progress)) = (&self.task, &self.uploaded)
            && !progress.done.load(Ordering::Acquire)
        {
            task.abort();
        }
    }
}

impl http_body::Body for OriginBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.armed = false;
            this.release();
            return Poll::Ready(frame.map(|frame| {
                let mut frame = frame.map_err(std::io::Error::other)?;
                // The last frame of a chunked body, rarely there: the fills read data only, but
                // a response forwarded as it comes hands it to the client.
                if let Some(trailers) = frame.trailers_mut() {
                    forwardable_trailers(trailers, &this.named);
                }
                Ok(frame)
            }));
        }
        // The clock is read only to arm the timer, not on every wait.
        let deadline = || tokio::time::Instant::now() + this.idle;
        let mut timer = match this.timer.take() {
            Some(mut timer) => {
                if !this.armed {
                    timer.as_mut().reset(deadline());
                }
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline())),
        };
        this.armed = true;
        let elapsed = timer.as_mut().poll(cx);
        this.timer = Some(timer);
        ready!(elapsed);
        let idle = this.idle;
        Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("origin sent nothing for {idle:?}"),
        ))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Takes a response head as edge forwards and stores it, or says what is wrong with it; `Ok`
/// says whether its connection may carry another request, and whether its body is chunked.
/// `head`: it answers a HEAD.
///
/// hyper reads a body by its last transfer coding when it is `chunked` and ignores
/// `Content-Length` then, but edge forwards and stores by the fields as sent, so it takes only
/// what nginx takes: no `Transfer-Encoding`, or `chunked` alone without `Content-Length`. RFC
/// 9112 §6.3 calls both together a possible response-splitting attempt that "ought to be handled
/// as an error"; a coding other than `chunked` would reach the cache still encoded, and no longer
/// labelled. A `Content-Length` list of one value (`2, 2` or two lines of `2`, RFC 9110 §8.6),
/// which hyper reads but would not send on, becomes that one number. Edge asks for no upgrade
/// (`Upgrade` is not forwarded), so a 101 is an answer to nothing. A status past 599 is invalid, and
/// RFC 9110 §15 has a client take it as a 5xx.
///
/// A response that has no body whatever its fields say (to a HEAD; a 204 or 304) may announce
/// one: its fields are not checked, but a body an origin sends anyway, a moment later, would be
/// read as the response to the next request on the connection, and stored under that request's
/// key (hyper sees such bytes only if they come with the head). So the connection is not used
/// again after a HEAD (rarely sent on: only when its key is a pass), nor after a 204 or 304 that
/// announces a body.
fn check_framing(response: &mut Response<Incoming>, head: bool) -> Result<Framing, &'static str> {
    let status = response.status();
    if status == http::StatusCode::SWITCHING_PROTOCOLS {
        return Err("101 Switching Protocols, to a request for no upgrade");
    }
    if status.as_u16() > 599 {
        return Err("a status code past 599");
    }
    let headers = response.headers_mut();
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    let coded = codings.next();
    if head || matches!(status.as_u16(), 204 | 304) {
        // A 304's Content-Length is the length of the representation it stands for (RFC 9110
        // §8.6), not of a body; a 204 may not carry one at all.
        let announced = coded.is_some()
            || status.as_u16() == 204
                && headers
                    .get(header::CONTENT_LENGTH)
                    .is_some_and(|length| length.as_bytes().trim_ascii() != b"0");
        if status.as_u16() == 204 {
            // Nor may edge send one on (RFC 9110 §8.6): an HTTP/2 client rejects the response.
            headers.remove(header::CONTENT_LENGTH);
        } else {
            one_length(headers);
        }
        return Ok(Framing {
            reuse: !head && !announced,
            chunked: false,
        });
    }
    if let Some(first) = coded {
        if codings.next().is_some()
            || !first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
        {
            return Err("a transfer coding other than chunked");
        }
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err("both Transfer-Encoding and Content-Length");
        }
        return Ok(Framing {
            reuse: true,
            chunked: true,
        });
    }
    one_length(headers);
    Ok(Framing {
        reuse: true,
        chunked: false,
    })
}

/// How [`check_framing`] found a response framed.
struct Framing {
    /// Its connection may carry another request.
    reuse: bool,
    /// Its body is chunked: it may end in a trailer section.
    chunked: bool,
}

/// A `Content-Length` of several lines or members that all say the same number becomes that
/// number; one that is not a number, or says two, goes. (hyper has checked it where it reads the
/// body by it; a bodiless answer's it does not read.)
fn one_length(headers: &mut HeaderMap) {
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(length) = lengths.next() else {
        return;
    };
    let plain = |value: &[u8]| !value.is_empty() && value.iter().all(u8::is_ascii_digit);
    if lengths.next().is_none() && plain(length.as_bytes()) {
        return;
    }
    let mut members = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    let first = members.next().unwrap_or_default();
    if plain(first) && members.all(|member| member == first) {
        let one = HeaderValue::from_bytes(first).expect("digits are a field value");
        headers.insert(header::CONTENT_LENGTH, one);
    } else {
        headers.remove(header::CONTENT_LENGTH);
    }
}

fn timed_out(err: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    io_errors(err).any(|io| io.kind() == std::io::ErrorKind::TimedOut)
}

/// Whether the origin answered with a response head hyper could not parse (a control byte, a
/// folded line): an answer, not a failure to reach it.
fn unparsable(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |cause| cause.source())
        .filter_map(|cause| cause.downcast_ref::<hyper::Error>())
        .any(hyper::Error::is_parse)
}

/// The I/O errors in an error's chain of causes, the error itself first.
fn io_errors<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a std::io::Error> {
    std::iter::successors(Some(err), |cause| cause.source())
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
}

/// The headers to send to the origin for a client request (RFC 9110 §7.6): hop-by-hop fields
/// and proxy credentials removed, `Via`, `X-Forwarded-For` and `-Proto` (the `scheme` the client
/// asked by) added. The client's `Host` is replaced by the origin's own when the request is sent.
///
/// No `X-Forwarded-Host`, and a client's is removed with the other fields that would name
/// another target ([`names_another_target`]): the cache key does not hold the client's `Host`,
/// so an origin that built links or redirects from it would let one client's `Host` into what
/// every other client of that URL is served (web cache poisoning). nginx does not pass the
/// client's `Host` on either (`$proxy_host`); Varnish does, and keys by it.
///
/// Edited in place: the fields that stay are neither copied nor hashed again.
pub fn request_headers(
    mut headers: HeaderMap,
    client: IpAddr,
    version: Version,
    scheme: Scheme,
) -> HeaderMap {
    // Rarely, `Connection` names other fields (`Host` among them, even): they go before anything
    // is derived from them.
    let proxy_credentials = remove_hop_by_hop(&mut headers, &header::PROXY_AUTHORIZATION);
    // Credentials meant for a proxy are consumed here, never passed on (RFC 9110 §11.7.2).
    if proxy_credentials {
        headers.remove(header::PROXY_AUTHORIZATION);
    }
    remove_fields(&mut headers, names_another_target);
    // A field on several lines (a cheap test: more values than names).
    if headers.len() > headers.keys_len() {
        join_cookies(&mut headers);
        // Several `Content-Length` lines agree (hyper refuses an HTTP/1 request whose do not,
        // and h2 an HTTP/2 stream's), and go on as one (RFC 9112 §6.3), as an origin may refuse
        // the request otherwise.
        if let Some(length) = headers.get(header::CONTENT_LENGTH).cloned() {
            headers.insert(header::CONTENT_LENGTH, length);
        }
    }
    // RFC 9110 §10.1.1: an HTTP/1.0 client's expectation is ignored; the origin is not to wait
    // to be asked for the body either.
    if version == Version::HTTP_10 {
        headers.remove(header::EXPECT);
    }
    let mut address: Vec<u8> = Vec::with_capacity(15);
    match client {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    address.push(b'.');
                }
                address.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
        }
        IpAddr::V6(_) => address.extend_from_slice(client.to_string().as_bytes()),
    }
    if let Ok(address) = HeaderValue::from_maybe_shared(Bytes::from(address)) {
        append_member(&mut headers, X_FORWARDED_FOR.clone(), address);
    }
    let proto = HeaderValue::from_static(scheme.as_str());
    headers.insert(X_FORWARDED_PROTO.clone(), proto);
    append_via(&mut headers, version);
    headers
}

/// Request fields by which a proxy tells the origin behind it what the client asked for: another
/// host, port, scheme or path prefix (`Forwarded`, `X-Forwarded-Host` and its kin), or another
/// path altogether (`X-Original-URL`, `X-Rewrite-URL`, which some frameworks serve instead of the
/// request's own). The cache key holds none of them, and an origin that trusts edge as its proxy
/// would take a client's for edge's word: one client could have links to its own host, or
/// another page, stored for everyone (web cache poisoning). Edge claims only what it knows
/// (`X-Forwarded-For`, `-Proto`). `SCRIPT_NAME` is one too: gunicorn before 22.0 takes it, from
/// any client, as the path the application is mounted at, which prefixes every link it builds.
/// And `Proxy`, no field of HTTP's: CGI servers hand it to the application as `HTTP_PROXY`, which
/// many HTTP clients take as their proxy, so a client could route the origin's own requests
/// through a host of its choosing (httpoxy, CVE-2016-5385; nginx's advice is to clear it).
/// Each is looked for as CGI-style servers read names, `_` as `-`
/// (`X_Forwarded_Host`, [`as_cgi_reads_it`]); so is `X-Forwarded-Proto`, whose `-` spelling edge
/// replaces, but whose `_` one such a server would join to edge's (`https,http`), of which
/// Django's `SECURE_PROXY_SSL_HEADER` reads the first.
fn names_another_target(name: &HeaderName) -> bool {
    match as_cgi_reads_it(name.as_str()) {
        Cow::Borrowed(name) => claims_another_target(name),
        Cow::Owned(name) => claims_another_target(&name) || name == "x-forwarded-proto",
    }
}

/// The fields of [`names_another_target`], by their usual names.
fn claims_another_target(name: &str) -> bool {
    matches!(
        name,
        "forwarded"
            | "x-forwarded-host"
            | "x-forwarded-port"
            | "x-forwarded-prefix"
            | "x-forwarded-server"
            | "x-forwarded-scheme"
            | "x-forwarded-ssl"
            | "x-forwarded-uri"
            | "x-forwarded-path"
            | "x-forwarded-protocol"
            | "x-original-host"
            | "x-host"
            | "x-original-url"
            | "x-original-uri"
            | "x-rewrite-url"
            | "x-url-scheme"
            | "front-end-https"
            | "script-name"
            | "proxy"
    )
}

/// RFC 9113 §8.2.3: HTTP/2 lets a client send `Cookie` as several fields; they are joined with
/// `; ` before going on as HTTP/1.1, where an origin reads one (RFC 6265 §5.4), as are an HTTP/1
/// client's several lines, which the cache's `Vary` selection reads that way too.
fn join_cookies(headers: &mut HeaderMap) {
    let cookies = headers.get_all(header::COOKIE);
    if cookies.iter().nth(1).is_none() {
        return;
    }
    let joined = cookies
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(joined) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, joined);
    }
}

/// The origin's response headers as edge stores and forwards them: hop-by-hop fields removed,
/// a `Date` added when the origin sent none (RFC 9110 §6.6.1), and this hop in `Via`, naming the
/// protocol the origin answered with (§7.6.3). Hits are served with the same `Via`.
pub fn response_headers(
    mut headers: HeaderMap,
    received: SystemTime,
    version: Version,
) -> HeaderMap {
    if !remove_hop_by_hop(&mut headers, &header::DATE) {
        let date = httpdate::fmt_http_date(received);
        headers.insert(
            header::DATE,
            HeaderValue::from_str(&date).expect("HTTP date is ASCII"),
        );
    }
    append_via(&mut headers, version);
    headers
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OriginUrl, Seconds};

    fn origin(url: &str) -> Origin {
        origin_with(url, Vec::new(), false)
    }

    fn origin_with(url: &str, strip_query: Vec<String>, sort_query: bool) -> Origin {
        Origin::new(
            &OriginConfig {
                url: OriginUrl(url.parse().unwrap()),
                connect_timeout: Seconds(Duration::from_secs(1)),
                timeout: Seconds(Duration::from_secs(1)),
                max_connections: 0,
                ca_file: None,
                host_header: None,
                strip_query,
                sort_query,
            },
            Duration::from_secs(1),
            0,
            false,
        )
    }

    #[test]
    fn simple_keys_are_the_keys_of_the_parsed_urls() {
        let bases = ["http://o:9000", "http://o:9000/base/", "https://o/p"];
        let rules = [(vec![], false), (vec!["utm_*".into(), "y".into()], true)];
        for (base, (strip, sort)) in bases.iter().flat_map(|b| rules.iter().map(move |r| (b, r))) {
            let o = origin_with(base, strip.clone(), *sort);
            let simple = [
                "/",
                "/a?utm_a=1",
                "/a?y=2&x=1&utm_b&w",
                "/a?x=2&x=1&",
                "/a",
                "/a/b.c/d",
                "/a?",
                "/a?x=1&y=2",
                "/a/..b/c.",
                "/a//b",
                "/~u/(x)*!$&'+,;=:@",
                "/a?q=%41%zz/?~|\\^{}`",
                "/a?q=a+b",
                "/a/.b",
                "/...",
                "/a/..../",
            ];
            for (target, scheme) in simple
                .iter()
                .flat_map(|t| [(t, Scheme::Http), (t, Scheme::Https)])
            {
                let uri: Uri = target.parse().unwrap();
                let parsed = CacheKey::new(&o.url_for(&uri).unwrap(), scheme);
                assert_eq!(o.simple_key(&uri, scheme), Some(parsed), "{base} {target}");
            }
            // Targets that parsing changes go the long way.
            let changed = [
                "/a/./b", "/a/../b", "/a/..", "/.", "/..", "/a/.", "/%2e/a", "/a%20b", "/a?x='",
                "/a^b", "*",
            ];
            for target in changed {
                let uri: Uri = target.parse().unwrap();
                assert_eq!(o.simple_key(&uri, Scheme::Http), None, "{base} {target}");
            }
        }
    }

    #[test]
    fn targets_map_under_the_prefix_and_cannot_climb_out() {
        let o = origin("http://o:9000/base/");
        let url = o.url_for(&"/a/b?x=1&y".parse().unwrap()).unwrap();
        assert_eq!(url.as_str(), "http://o:9000/base/a/b?x=1&y");
        let o = origin_with(
            "http://o:9000/base/",
            vec!["utm_*".into(), "y".into()],
            true,
        );
        let url = o
            .url_for(&"/a/b?z=1&utm_x=2&y&yy=3&x=4".parse().unwrap())
            .unwrap();
        assert_eq!(url.as_str(), "http://o:9000/base/a/b?x=4&yy=3&z=1");
        let url = o.url_for(&"/a/b?utm_x=2&y".parse().unwrap()).unwrap();
        assert_eq!(url.as_str(), "http://o:9000/base/a/b");
        // Names compared decoded: one written encoded is stripped, and sorts with its equals.
        let url = o
            .url_for(&"/a?utm%5Fx=1&b=2&%61=3&a=4".parse().unwrap())
            .unwrap();
        assert_eq!(url.query(), Some("%61=3&a=4&b=2"));
        let url = o.url_for(&"/a?a=4&%61=3".parse().unwrap()).unwrap();
        assert_eq!(url.query(), Some("a=4&%61=3"));
        // Empty parameters name nothing: a trailing or doubled `&` is one resource with the rest.
        let url = o.url_for(&"/a/b?&x=1&&w=2&".parse().unwrap()).unwrap();
        assert_eq!(url.query(), Some("w=2&x=1"));
        // A name sent with `'` and one sent with `%27` are one name (`b'`, after `b%zz`).
        for target in ["/a?b'=1&b%zz=2", "/a?b%27=1&b%zz=2", "/a?b%zz=2&b'=1"] {
            let url = o.url_for(&target.parse().unwrap()).unwrap();
            assert_eq!(url.query(), Some("b%zz=2&b%27=1"), "{target}");
        }
        assert_eq!(
            o.url_for(&"/a/../b".parse().unwrap()).unwrap().as_str(),
            "http://o:9000/base/b"
        );
        assert!(o.url_for(&"/../../etc".parse().unwrap()).is_none());
        assert!(o.url_for(&"*".parse().unwrap()).is_none());
    }
}
