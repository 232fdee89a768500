//! The request phases: classify → key → lookup → decide → {serve stored | fill | forward} →
//! respond.
//!
//! GET and HEAD are answered from the cache when they can be, and otherwise through a fill (see
//! [`crate::fill`]), which collapses concurrent misses and revalidations of one key into one
//! origin request. Other methods are forwarded as they are. Each request ends with exactly one
//! [`CacheStatus`], which becomes its `Cache-Status` header.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode, Version};
use http_body::Body as _;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use url::Url;

use crate::cache::entry::{Spilled, StoredEntry};
use crate::cache::key::{CacheKey, Scheme, Variance};
use crate::cache::policy::{self, CacheControl, Forward, Freshness};
use crate::cache::{Cache, Lookup};
use crate::clock::Clock;
use crate::conditional;
use crate::config::{self, Config};
use crate::fill::{self, FillJob, Fills, Head, Role, SharedHead, Ticket};
use crate::headers::{
    CACHE_STATUS, CACHE_TAG, CacheStatus, PURGED, SURROGATE_KEY, as_cgi_reads_it,
};
use crate::metrics::{Metrics, Timing};
use crate::origin::{self, Origin, OriginError, Upstream};
use crate::range::{self, RangeOutcome, Selection};
use arc_swap::ArcSwap;
use http::header::HeaderName;
use std::time::Duration;

/// Everything a request needs, shared by all of them.
pub struct Edge {
    /// The configuration and the origin client built from it, replaced whole by a reload.
    pub settings: ArcSwap<Settings>,
    pub cache: Arc<Cache>,
    pub fills: Fills,
    pub clock: Clock,
    pub metrics: Metrics,
    /// Background work (fills) that shutdown waits for.
    pub tasks: TaskTracker,
    /// Shutdown stopped waiting for the requests in flight: one dropped now was cut off by edge,
    /// not left by its client.
    pub(crate) cut_off: std::sync::atomic::AtomicBool,
    /// Tells a shutdown under way to stop waiting for the requests in flight.
    pub(crate) hurry: tokio::sync::Notify,
}

/// What a reload replaces.
pub struct Settings {
    pub config: Config,
    pub origin: Origin,
    /// The certificate and key of `tls`, as HTTPS handshakes present them.
    pub certified: Option<Arc<rustls::sign::CertifiedKey>>,
}

impl Settings {
    /// `config`, with the origin client and the certificate it makes.
    pub fn new(config: Config) -> Self {
        let origin = Origin::new(
            &config.origin,
            config.client_body_timeout.0,
            config.client_max_body_size.0,
            config.request_buffering,
        );
        let certified = config.tls.as_ref().map(|tls| Arc::new(tls.certified()));
        Self {
            config,
            origin,
            certified,
        }
    }
}

impl Edge {
    /// The configuration in force.
    pub fn config(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Sends a request to the origin of `settings`, and counts it; `streams`: its body is still
    /// to come from its client ([`origin::streams_from_client`]). Returns, with the answer, how
    /// long the origin took to send its response head.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold its arguments twice"
    )]
    pub fn send_to_origin(
        &self,
        settings: &Settings,
        method: Method,
        target: &str,
        headers: HeaderMap,
        body: Body,
        streams: bool,
    ) -> impl Future<Output = (Result<Upstream, OriginError>, Duration)> {
        async move {
            // The wait for a slot is edge's own: not in the origin's response time.
            let slot = match settings.origin.slot(streams).await {
                Ok(slot) => slot,
                Err(err) => {
                    self.metrics.origin_busy();
                    return (Err(err), Duration::ZERO);
                }
            };
            let started = Instant::now();
            let result = (settings.origin)
                .send(method, target, headers, body, slot)
                .await;
            let took = started.elapsed();
            match &result {
                // A client that stalled its upload is not the origin's failure.
                Err(
                    OriginError::ClientTimeout(_)
                    | OriginError::ClientBody(_)
                    | OriginError::TooLarge(_)
                    | OriginError::Buffer(_),
                ) => {}
                Ok(upstream) => self.metrics.origin(Some(upstream.status()), Some(took)),
                // A timeout is the origin's time (a hanging origin shows in the histogram); a
                // refused or broken connection is not a response time.
                Err(OriginError::Timeout(_)) => self.metrics.origin(None, Some(took)),
                Err(_) => self.metrics.origin(None, None),
            }
            (result, took)
        }
    }
}

impl std::ops::Deref for Settings {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

/// The request header that asks for explanation headers (from `explain.allow` addresses).
pub static EDGE_DEBUG: HeaderName = HeaderName::from_static("edge-debug");

/// What produced a response, for the access log, metrics and explain mode: returned with the
/// response by whatever made it.
#[derive(Clone, Default)]
pub struct Outcome {
    pub status: CacheStatus,
    /// Freshness of the stored or storable response.
    pub freshness: Option<Freshness>,
    /// The `Vary` request header values the response was selected by.
    pub variance: Option<Variance>,
    /// Time from asking the origin to its response head, when this request waited for one.
    pub origin_time: Option<Duration>,
}

/// A response and what produced it.
type Answer = (Response, Outcome);

/// Every request of the client listeners, every method and path; `scheme` says which listener
/// (`listen`, or `tls.listen`) it came to.
pub fn handle(
    edge: Arc<Edge>,
    peer: SocketAddr,
    request: Request,
    scheme: Scheme,
) -> impl Future<Output = Response> {
    // The request's head is lent to each phase rather than moved into it, so that only this
    // future holds it (a phase that moves it in keeps a copy of its own in its future).
    let (mut request, body) = request.into_parts();
    async move {
        let started = Instant::now();
        let settings = edge.config();
        let method = request.method.clone();
        let explain = config::allowed(&settings.explain.allow, peer.ip())
            && request
                .headers
                .get(&EDGE_DEBUG)
                .is_some_and(|v| v.as_bytes() != b"0");
        // Only copied for the explanation and the access log line, which read it: the path and
        // query, as nginx logs them, also for an absolute target (HTTP/2's `:authority` is the
        // client's to choose).
        let uri = if explain || settings.log.access {
            match request.uri.path_and_query() {
                Some(target) if request.uri.scheme().is_some() => http::Uri::from(target.clone()),
                _ => request.uri.clone(),
            }
        } else {
            http::Uri::default()
        };
        let told = if settings.log.access {
            Told::of(&request)
        } else {
            Told::default()
        };
        // Counted and logged (499, as nginx logs it) if the client leaves before its answer:
        // hyper then drops this future.
        let pending = Pending {
            method: &method,
            scheme,
            uri: &uri,
            told: &told,
            started,
            client: peer.ip(),
            log: settings.log.access,
            edge: &edge,
        };
        let (mut response, outcome) = if let Err(body) = head_is_valid(&request) {
            local_response(StatusCode::BAD_REQUEST, body, said(INVALID))
        } else if method.as_str() == "PURGE" {
            Box::pin(purge_request(&edge, &settings, peer, &request)).await
        } else {
            route(&edge, &settings, peer, &mut request, body, scheme).await
        };
        std::mem::forget(pending);
        let label = outcome.status.label();
        let status = response.status().as_u16();
        let timing = edge
            .metrics
            .request(label, status, outcome.status.collapsed);
        if let Some(tier) = outcome.status.hit {
            edge.metrics.hit(tier);
        }
        if explain {
            let asked = (&uri, &method, scheme);
            crate::explain::add_headers(&edge, &settings, asked, &outcome, &mut response);
        }
        let log = AccessRecord {
            method,
            scheme,
            uri,
            told,
            status,
            cache: label,
            timing,
            // Only copied for a line that will be written.
            cache_status: settings
                .log
                .access
                .then(|| response.headers().get(&CACHE_STATUS).cloned())
                .flatten(),
            client: peer.ip(),
            started,
            origin_time: outcome.origin_time,
            log: settings.log.access,
        };
        let (parts, body) = response.into_parts();
        // hyper stops reading a body once it has sent Content-Length bytes. Only the access log
        // asks whether the body was sent whole.
        let expected = settings
            .log
            .access
            .then(|| parts.headers.get(header::CONTENT_LENGTH))
            .flatten()
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let served = Served::new(body, expected, log, edge.clone());
        Response::from_parts(parts, Body::new(served))
    }
}

/// The bytes of a `Host` value (RFC 3986 `host [":" port]`: a name, an IPv4 address or an IP
/// literal in brackets).
static IN_HOST: [bool; 256] = origin::printable_except(b"\"#/<>?@\\^`{|}");

/// Whether two authorities (`host [":" port]`) name the same one after scheme-based
/// normalisation (RFC 3986 §6.2.2.1, §6.2.3): the host's letter case, and an empty port or the
/// scheme's default one (80 for http, 443 for https), mean nothing.
fn same_authority(a: &[u8], b: &[u8], scheme: Option<&str>) -> bool {
    let default_port: &[u8] = match scheme {
        Some("http") => b"80",
        Some("https") => b"443",
        _ => b"",
    };
    let normalised = |authority: &[u8]| -> usize {
        // The port follows the last colon, unless that colon is inside an IP literal.
        match authority.iter().rposition(|&b| b == b':') {
            Some(colon) if !authority[colon..].contains(&b']') => {
                let port = &authority[colon + 1..];
                if port.is_empty() || port == default_port {
                    colon
                } else {
                    authority.len()
                }
            }
            _ => authority.len(),
        }
    };
    a[..normalised(a)].eq_ignore_ascii_case(&b[..normalised(b)])
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries one `Host` line, any request at most one, and
/// its value is made of the characters of a host and port (HTTP/2 has `:authority` instead, and
/// may leave `Host` out). A target's authority with user information is refused too (RFC 9110
/// §4.2.4: likely there to disguise the host), and one whose scheme is not http or https.
/// `Err` says what is wrong.
fn head_is_valid(request: &Parts) -> Result<(), &'static str> {
    // An absolute target (or HTTP/2's `:scheme`) names an http or https resource, or one edge
    // does not serve: `ftp://a/b` was served as `/b`.
    let scheme = request.uri.scheme();
    if scheme.is_some_and(|s| *s != http::uri::Scheme::HTTP && *s != http::uri::Scheme::HTTPS) {
        return Err("edge: a request target's scheme must be http or https\n");
    }
    const HOST: &str = "edge: a request needs one valid Host (over HTTP/2, naming its :authority), and no user in its authority\n";
    if (request.uri.authority()).is_some_and(|authority| authority.as_str().contains('@')) {
        return Err(HOST);
    }
    let valid = |host: &HeaderValue| host.as_bytes().iter().all(|&b| IN_HOST[usize::from(b)]);
    if request.version > Version::HTTP_11 {
        // RFC 9113 §8.3.1: `:path` is an absolute path and query (or `*`); the empty path
        // taken as `/` is an HTTP/1 absolute target's only.
        if (request.uri.path_and_query()).is_some_and(|target| target.as_str().starts_with('?')) {
            return Err("edge: an HTTP/2 :path begins with /\n");
        }
        // RFC 9113 §8.2.1: a field value that begins or ends with whitespace makes the request
        // malformed, and it may not be forwarded (§8.1.1). (HTTP/1's parser trims it.)
        let mut hosts = 0;
        for (name, value) in &request.headers {
            let ends = [value.as_bytes().first(), value.as_bytes().last()];
            if ends.iter().any(|end| matches!(end, Some(b' ' | b'\t'))) {
                return Err("edge: a field value begins or ends with whitespace\n");
            }
            if name == header::HOST {
                hosts += 1;
                // RFC 9113 §8.3.1: a `Host` naming another authority than `:authority` makes
                // the request malformed (which one would the client have meant?). Compared
                // after scheme-based normalisation, as it requires of an intermediary.
                let other = (request.uri.authority()).is_some_and(|authority| {
                    let scheme = request.uri.scheme_str();
                    !same_authority(authority.as_str().as_bytes(), value.as_bytes(), scheme)
                });
                if hosts > 1 || !valid(value) || other {
                    return Err(HOST);
                }
            }
        }
        return Ok(());
    }
    // A walk over the few fields of a request costs less than hashing a name to look it up.
    let mut hosts = (request.headers.iter())
        .filter(|&(name, _)| name == header::HOST)
        .map(|(_, value)| value);
    let ok = match (hosts.next(), hosts.next()) {
        (None, _) => request.version < Version::HTTP_11,
        (Some(host), None) => valid(host),
        (Some(_), Some(_)) => false,
    };
    if ok { Ok(()) } else { Err(HOST) }
}

/// `PURGE <path>` on a client listener: removes every variant of one URL from both tiers, its
/// http and https responses alike, for clients in `purge.allow`. `Edge-Soft-Purge: 1` marks them
/// stale instead.
async fn purge_request(
    edge: &Arc<Edge>,
    settings: &Settings,
    peer: SocketAddr,
    request: &Parts,
) -> Answer {
    if !config::allowed(&settings.purge.allow, peer.ip()) {
        warn!(client = %peer.ip(), uri = %request.uri, "PURGE refused: client not in purge.allow");
        return local_response(
            StatusCode::FORBIDDEN,
            "edge: PURGE is not allowed from this address\n",
            said("not-allowed"),
        );
    }
    let Some(url) = settings.origin.url_for(&request.uri) else {
        return invalid_target();
    };
    let soft = match request
        .headers
        .get("edge-soft-purge")
        .map(HeaderValue::as_bytes)
    {
        None => false,
        Some(b"1" | b"true") => true,
        Some(b"0" | b"false") => false,
        // Not taken for a hard purge: asked for, a soft one may have been meant.
        Some(_) => {
            let body = "edge: Edge-Soft-Purge is 1 (or true) or 0 (or false)\n";
            return local_response(StatusCode::BAD_REQUEST, body, said(INVALID));
        }
    };
    let purged = purge_url(edge, &url, soft).await;
    let key = CacheKey::new(&url, Scheme::Http);
    let body = serde_json::json!({ "url": key.url(), "purged": purged, "soft": soft });
    json_response(StatusCode::OK, &body, said(PURGED))
}

/// Purges every variant of `url` from both tiers (or marks them stale), as requested by http and
/// by https; returns how many. The purge runs in its own task, to its end, even if the request
/// that asked for it goes away.
pub async fn purge_url(edge: &Arc<Edge>, url: &Url, soft: bool) -> usize {
    let key = CacheKey::new(url, Scheme::Http);
    let work = edge.clone();
    run_to_end(edge, async move {
        let purged =
            purge_key(&work, &key, soft).await + purge_key(&work, &key.other_scheme(), soft).await;
        work.cache.flush().await;
        work.metrics.purge("url", soft, purged);
        tracing::info!(url = key.url(), purged, soft, "purge");
        purged
    })
    .await
}

/// Purges every stored response tagged with one of `tags` (`Surrogate-Key` / `Cache-Tag`): each
/// URL that carries one, with all its variants, once. Returns how many responses; runs to its
/// end like [`purge_url`].
pub async fn purge_tags(edge: &Arc<Edge>, tags: &[String], soft: bool) -> usize {
    let (work, tags) = (edge.clone(), tags.to_vec());
    run_to_end(edge, async move {
        for tag in &tags {
            work.cache.purge_tag_from_now(tag);
            work.fills.invalidate_tag(tag);
        }
        let urls = work.cache.tagged(&tags).await;
        let purged = purge_each(&work, urls, soft).await;
        work.metrics.purge("tag", soft, purged);
        tracing::info!(tag = tags.join(" "), purged, soft, "purge");
        purged
    })
    .await
}

/// Purges every stored response whose path and query (as [`CacheKey::target`], http and https
/// alike) starts with `prefix`, with all its variants; a fetch in flight for such a URL is not
/// stored, and takes no new joiners.
/// Returns how many responses; runs to its end like [`purge_url`]. Finding them reads the URL
/// of every record on disk: there is no index by URL.
pub async fn purge_prefix(edge: &Arc<Edge>, prefix: &str, soft: bool) -> usize {
    let (work, prefix) = (edge.clone(), prefix.to_owned());
    run_to_end(edge, async move {
        work.cache.purge_prefix_from_now(&prefix);
        work.fills.invalidate_prefix(&prefix);
        let purged = purge_each(&work, work.cache.urls_under(&prefix).await, soft).await;
        work.metrics.purge("prefix", soft, purged);
        tracing::info!(prefix, purged, soft, "purge");
        purged
    })
    .await
}

/// Purges each of `urls` (as [`CacheKey::url`]), then flushes the disk tier; returns how many
/// responses.
async fn purge_each(edge: &Edge, urls: Vec<String>, soft: bool) -> usize {
    let mut purged = 0;
    for url in urls {
        purged += purge_key(edge, &CacheKey::from_text(url), soft).await;
    }
    edge.cache.flush().await;
    purged
}

/// Purges everything stored, both tiers (or marks it all stale); runs to its end like
/// [`purge_url`]. Returns how many responses.
pub async fn purge_all(edge: &Arc<Edge>, soft: bool) -> usize {
    let work = edge.clone();
    run_to_end(edge, async move {
        work.fills.invalidate_all();
        let purged = if soft {
            work.cache.mark_all_stale(work.clock.now()).await
        } else {
            work.cache.invalidate_all().await
        };
        work.cache.flush().await;
        work.metrics.purge("all", soft, purged);
        tracing::info!(purged, soft, "purge of everything");
        purged
    })
    .await
}

/// One URI, every variant, both tiers; a fill in flight for it takes no new joiners.
async fn purge_key(edge: &Edge, key: &CacheKey, soft: bool) -> usize {
    edge.fills.invalidate(key);
    if soft {
        edge.cache.mark_stale(key, edge.clock.now()).await
    } else {
        edge.cache.invalidate(key).await
    }
}

async fn run_to_end(edge: &Edge, work: impl Future<Output = usize> + Send + 'static) -> usize {
    edge.tasks.spawn(work).await.unwrap_or_default()
}

fn json_response(
    status: StatusCode,
    body: &serde_json::Value,
    cache_status: CacheStatus,
) -> Answer {
    let mut response = Response::new(Body::from(format!("{body}\n")));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(CACHE_STATUS.clone(), cache_status.to_header_value());
    let outcome = Outcome {
        status: cache_status,
        ..Outcome::default()
    };
    (response, outcome)
}

/// One access log line, written when the response body is done (sent, or cut off).
struct AccessRecord {
    method: Method,
    scheme: Scheme,
    uri: http::Uri,
    told: Told,
    status: u16,
    cache: &'static str,
    timing: Timing,
    cache_status: Option<HeaderValue>,
    client: std::net::IpAddr,
    started: Instant,
    origin_time: Option<Duration>,
    log: bool,
}

impl AccessRecord {
    /// Writes the line; `bytes` were sent, `complete`ly or not, `took` after the request came.
    fn write(&self, bytes: u64, complete: bool, took: Duration) {
        let millis = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        tracing::info!(
            target: "edge::access",
            client = %self.client,
            method = %self.method,
            scheme = self.scheme.as_str(),
            uri = %self.uri,
            proto = ?self.told.version,
            host = Told::text(&self.told.host),
            status = self.status,
            cache = self.cache,
            bytes,
            duration_ms = millis(took),
            origin_ms = self.origin_time.map(millis),
            complete,
            cache_status = self.cache_status.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
            referer = Told::text(&self.told.referer),
            user_agent = Told::text(&self.told.user_agent),
        );
    }
}

/// What an access line tells of a request besides its method and target, as nginx's `combined`
/// format and varnishncsa's do: its protocol, and the `Host` (HTTP/2: `:authority`), `Referer`
/// and `User-Agent` it sent.
#[derive(Clone, Default)]
struct Told {
    version: Version,
    host: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
}

impl Told {
    fn of(request: &Parts) -> Self {
        let mut told = Self {
            version: request.version,
            host: (request.uri.authority())
                .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok()),
            ..Self::default()
        };
        // A walk over the few fields of a request costs less than three lookups by name.
        for (name, value) in &request.headers {
            let slot = if name == header::HOST {
                &mut told.host
            } else if name == header::REFERER {
                &mut told.referer
            } else if name == header::USER_AGENT {
                &mut told.user_agent
            } else {
                continue;
            };
            slot.get_or_insert_with(|| value.clone());
        }
        told
    }

    /// A field as the line shows it: empty when absent (or not text).
    fn text(value: &Option<HeaderValue>) -> &str {
        value.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// A request answered before edge's handler saw it: one whose head hyper could not parse (no
/// `Cache-Status`, no body edge knows of), or plain HTTP on the HTTPS listener, which edge
/// answered itself; or one whose head was not whole within `client_header_timeout`, closed
/// unanswered (408). Counted, and logged as nginx logs one (no method or target), so that every
/// request begun has its line.
pub fn rejected(edge: &Edge, peer: SocketAddr, refused: crate::listener::Refused, scheme: Scheme) {
    edge.metrics
        .request("error", refused.status.as_u16(), false);
    edge.metrics.served(refused.bytes);
    if edge.config().log.access {
        let cache_status = refused.detail.map(|detail| said(detail).to_header_value());
        tracing::info!(
            target: "edge::access",
            client = %peer.ip(),
            method = "-",
            scheme = scheme.as_str(),
            uri = "-",
            status = refused.status.as_u16(),
            cache = "error",
            bytes = refused.bytes,
            complete = true,
            cache_status = cache_status.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
        );
    }
}

/// A request not yet answered, forgotten once it is: dropped, it was abandoned by its client.
struct Pending<'a> {
    method: &'a Method,
    scheme: Scheme,
    uri: &'a http::Uri,
    told: &'a Told,
    started: Instant,
    client: std::net::IpAddr,
    log: bool,
    edge: &'a Edge,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        // Dropped while edge panicked: a 500 it could not send; cut off by a shutdown that
        // stopped waiting for it: a 503 it could not send.
        let (status, label) = if std::thread::panicking() {
            (500, "error")
        } else if self.edge.cut_off.load(std::sync::atomic::Ordering::Relaxed) {
            (503, "error")
        } else {
            (499, "abandoned")
        };
        let timing = self.edge.metrics.request(label, status, false);
        let took = self.started.elapsed();
        self.edge.metrics.finished(timing, took);
        if self.log {
            let record = AccessRecord {
                method: self.method.clone(),
                scheme: self.scheme,
                uri: self.uri.clone(),
                told: self.told.clone(),
                status,
                cache: label,
                timing,
                cache_status: None,
                client: self.client,
                started: self.started,
                origin_time: None,
                log: true,
            };
            record.write(0, false, took);
        }
    }
}

/// A response body that counts the bytes sent, and logs the request when it is dropped.
struct Served {
    inner: Body,
    bytes: u64,
    /// The length the response declared, if any.
    expected: Option<u64>,
    finished: bool,
    /// The body's failure, held back for one poll (see `poll_frame`).
    failed: Option<axum::Error>,
    record: AccessRecord,
    edge: Arc<Edge>,
}

impl Served {
    fn new(inner: Body, expected: Option<u64>, record: AccessRecord, edge: Arc<Edge>) -> Self {
        Self {
            inner,
            bytes: 0,
            expected,
            finished: false,
            failed: None,
            record,
            edge,
        }
    }
}

impl http_body::Body for Served {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if let Some(err) = self.failed.take() {
            return std::task::Poll::Ready(Some(Err(err)));
        }
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            std::task::Poll::Ready(Some(Ok(ref frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            std::task::Poll::Ready(None) => self.finished = true,
            // A body that fails (an origin that cut it short) ends the connection, and hyper's
            // HTTP/1 connection drops what it has not yet written when it is handed the error;
            // a fill's reader has the bytes before the failure and the failure at once. So the
            // head and those bytes were not sent: the client saw its connection closed with no
            // response, logged and counted as a 200. Held back for one poll, woken at once, the
            // error lets hyper flush them first. (HTTP/2 is not helped: its stream is reset
            // from its own task, and the reset still often drops the HEADERS queued for it.)
            std::task::Poll::Ready(Some(Err(err))) => {
                self.failed = Some(err);
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // A failure held back is still to come: the body has not ended well.
        self.failed.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.edge.metrics.served(self.bytes);
        let r = &self.record;
        let took = r.started.elapsed();
        self.edge.metrics.finished(r.timing, took);
        if !r.log {
            return;
        }
        let complete = self.finished
            || self.inner.is_end_stream()
            || self.expected == Some(self.bytes)
            || r.method == Method::HEAD
            || matches!(r.status, 204 | 304);
        r.write(self.bytes, complete, took);
    }
}

// The paths a hit does not take are boxed, so that the request's future (moved on every hand-off)
// stays small: 6.4 KB otherwise. For the same reason the functions every request or every
// forward goes through return an `async move` block instead of being `async fn`s: an async fn's
// future holds its arguments twice, as passed and as moved into its body (rust-lang/rust#62958),
// and these futures are copied whole into hyper's slot for the request, and `forward`'s into its
// box (the request's future 3.3 KB → 2.7 KB, forward's 2.9 KB → 2.2 KB). And the request's head
// is lent to them (`&mut Parts`), not moved: each future that took it by value kept 224 bytes
// of its own for it (the request's future 1.8 KB → 1.1 KB).

/// classify and key.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice"
)]
fn route(
    edge: &Arc<Edge>,
    settings: &Settings,
    peer: SocketAddr,
    request: &mut Parts,
    body: Body,
    scheme: Scheme,
) -> impl Future<Output = Answer> {
    async move {
        if matches!(request.method, Method::GET | Method::HEAD) {
            // A hit needs only the key; the origin URL is built if the request goes there.
            let key = (settings.origin.simple_key(&request.uri, scheme)).or_else(|| {
                let url = settings.origin.url_for(&request.uri)?;
                Some(CacheKey::new(&url, scheme))
            });
            // Content in a GET or HEAD request has no semantics (RFC 9110 §9.3.1); it is dropped,
            // and so is its `Content-Length`: the origin would otherwise wait for a body that is
            // never sent, and every request joining that fill with it. (`Transfer-Encoding` is
            // hop-by-hop, removed on the way.) Nor may a request without content expect `100
            // Continue` (§10.1.1).
            if !body.is_end_stream() {
                request.headers.remove(header::CONTENT_LENGTH);
                request.headers.remove(header::EXPECT);
            }
            // A method override tunnels another method through a POST; on a GET, an origin that
            // honours it would have another method's answer stored for the URL (cache-poisoned
            // denial of service by method override).
            crate::headers::remove_fields(&mut request.headers, overrides_method);
            return match key {
                Some(key) => serve_cacheable(edge, settings, peer, request, key).await,
                None => invalid_target(),
            };
        }
        // CONNECT asks for a tunnel to an authority (RFC 9110 §9.3.6), which edge does not open:
        // with a path for a target it is malformed, and an origin's 2xx to it would turn the
        // client's connection into a tunnel to the origin.
        if request.method == Method::CONNECT {
            return invalid_target();
        }
        // RFC 9112 §6.1: hyper has decoded one `chunked`; any other coding (or a second
        // `chunked`) it would pass on undone, and unlabelled (`Transfer-Encoding` goes no
        // further than this hop).
        let mut codings = (request.headers.get_all(header::TRANSFER_ENCODING).iter())
            .flat_map(|value| value.as_bytes().split(|&b| b == b','))
            .filter(|coding| !coding.trim_ascii().is_empty());
        if codings.next().is_some() && codings.next().is_some() {
            let body = "edge: no transfer coding but chunked is understood\n";
            return local_response(StatusCode::NOT_IMPLEMENTED, body, said("transfer-coding"));
        }
        // TRACE echoes the request back, cookies and credentials included, to whatever script
        // got a client to send it; edge answers it itself, as nginx does.
        if request.method == Method::TRACE {
            let body = "edge: TRACE is not allowed\n";
            let (mut response, outcome) =
                local_response(StatusCode::METHOD_NOT_ALLOWED, body, said("trace"));
            response
                .headers_mut()
                .insert(header::ALLOW, allowed_methods());
            return (response, outcome);
        }
        if request.method == Method::OPTIONS {
            // RFC 9110 §7.6.2: an intermediary answers an OPTIONS with `Max-Forwards: 0` as its
            // final recipient, and takes one off any other value it forwards. `OPTIONS *` asks
            // about the server, which is edge.
            match max_forwards(&request.headers) {
                _ if request.uri.path() == "*" => return options_answer(),
                Err(()) => {
                    let body = "edge: invalid Max-Forwards\n";
                    return local_response(StatusCode::BAD_REQUEST, body, said(INVALID));
                }
                Ok(Some(0)) => return options_answer(),
                Ok(Some(n)) => {
                    request
                        .headers
                        .insert(header::MAX_FORWARDS, HeaderValue::from(n - 1));
                }
                Ok(None) => {}
            }
        }
        let Some(url) = settings.origin.url_for(&request.uri) else {
            return invalid_target();
        };
        let key = CacheKey::new(&url, scheme);
        let status = CacheStatus::forward(Forward::Method);
        Box::pin(forward(
            edge, settings, peer, request, body, key, status, None,
        ))
        .await
    }
}

/// Request fields by which frameworks let a client ask for another method than the request's.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Looked for as CGI-style servers read names (`X_HTTP_Method_Override` is their
/// `HTTP_X_HTTP_METHOD_OVERRIDE` too: [`as_cgi_reads_it`]).
fn overrides_method(name: &HeaderName) -> bool {
    METHOD_OVERRIDES.contains(&&*as_cgi_reads_it(name.as_str()))
}

/// The methods edge takes, for `Allow`: every other one but `CONNECT` and `TRACE` is forwarded
/// too, as the origin may know it.
fn allowed_methods() -> HeaderValue {
    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
}

/// `Max-Forwards` (`1*DIGIT`, one field line): `Err` when malformed. A number too large for a
/// `u64` is as good as `u64::MAX`.
fn max_forwards(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut values = headers.get_all(header::MAX_FORWARDS).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let digits = value.as_bytes();
    if values.next().is_some() || digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(());
    }
    let number = (digits.iter()).try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    Ok(Some(number.unwrap_or(u64::MAX)))
}

/// edge's own answer to an `OPTIONS` that goes no further.
fn options_answer() -> Answer {
    let (mut response, outcome) = local_response(StatusCode::OK, "", said("options"));
    let headers = response.headers_mut();
    headers.insert(header::ALLOW, allowed_methods());
    headers.remove(header::CONTENT_TYPE);
    (response, outcome)
}

fn invalid_target() -> Answer {
    let body = "edge: invalid request target\n";
    local_response(StatusCode::BAD_REQUEST, body, said(INVALID))
}

/// The `Cache-Status` of an answer edge makes itself, saying why.
fn said(detail: &'static str) -> CacheStatus {
    CacheStatus {
        detail: Some(detail),
        ..CacheStatus::default()
    }
}

/// Why edge answered a malformed request itself.
const INVALID: &str = "invalid-request";

/// lookup and decide, for GET and HEAD.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice"
)]
fn serve_cacheable(
    edge: &Arc<Edge>,
    settings: &Settings,
    peer: SocketAddr,
    request: &mut Parts,
    key: CacheKey,
) -> impl Future<Output = Answer> {
    async move {
        let request_cc = CacheControl::of_request(&request.headers, settings.cache.client_refresh);
        // A hit-for-pass key is rarely stored at all: what the memory tier does not hold is not
        // looked for on disk (a request for it is forwarded, and may find the origin's answer
        // storable again). So when the memory tier holds nothing of it, there is nothing to look
        // up: the request goes to the origin as a lookup would have sent it, without the lookup
        // (a read that moka records and later settles): 3–4% of a pass-through's instructions.
        let pass = edge.fills.is_pass(&key);
        if pass && !edge.cache.in_memory(&key) && !request_cc.has("only-if-cached") {
            let status = CacheStatus::forward(Forward::UriMiss);
            let cc = Some(request_cc);
            let forwarded = forward(
                edge,
                settings,
                peer,
                request,
                Body::empty(),
                key,
                status,
                cc,
            );
            return Box::pin(forwarded).await;
        }
        let now = edge.clock.now();
        let mut stale = None;
        let fwd = match edge.cache.lookup(&key, &request.headers, pass).await {
            Lookup::Miss => Forward::UriMiss,
            Lookup::VaryMiss => Forward::VaryMiss,
            Lookup::Found(entry, tier) => {
                match policy::decide(&entry.freshness, &request_cc, now) {
                    Ok(ttl) => {
                        return respond_stored(request, &entry, CacheStatus::hit(tier, ttl), now)
                            .await;
                    }
                    Err(Forward::Stale)
                        if entry
                            .freshness
                            .may_serve_while_revalidating(&request_cc, now) =>
                    {
                        // RFC 5861 §3: answer now, refresh in the background (one fill per key,
                        // none for a second after one failed).
                        let job = fill_job(request, peer, &key, Some(entry.clone()));
                        edge.fills.start(edge, job);
                        let mut status = CacheStatus::hit(tier, entry.freshness.ttl(now));
                        status.detail = Some("stale-while-revalidate");
                        return respond_stored(request, &entry, status, now).await;
                    }
                    Err(fwd) => {
                        stale = Some(entry);
                        fwd
                    }
                }
            }
        };
        // RFC 9111 §5.2.1.7: nothing usable is stored, and the client forbids going forward.
        if request_cc.has("only-if-cached") {
            let body = "edge: not in cache (only-if-cached)\n";
            return local_response(StatusCode::GATEWAY_TIMEOUT, body, said("only-if-cached"));
        }
        let partial = request.headers.contains_key(header::RANGE);
        if pass {
            // Hit-for-pass: the key was not storable a moment ago; go to the origin in parallel, with
            // the request as it is (conditions and ranges for the origin to answer). A stale stored
            // response is revalidated through a fill of its own instead.
            if partial || stale.is_none() {
                let status = CacheStatus::forward(fwd);
                let cc = Some(request_cc);
                let forwarded = forward(
                    edge,
                    settings,
                    peer,
                    request,
                    Body::empty(),
                    key,
                    status,
                    cc,
                );
                return Box::pin(forwarded).await;
            }
            let role = Role::Leader(
                edge.fills
                    .solo(edge, fill_job(request, peer, &key, stale.clone())),
            );
            let answer = answer_from_fill(edge, settings, peer, request, key, fwd, stale, role);
            return Box::pin(answer).await;
        }
        let role = edge
            .fills
            .join(edge, fill_job(request, peer, &key, stale.clone()));
        let answer = answer_from_fill(edge, settings, peer, request, key, fwd, stale, role);
        Box::pin(answer).await
    }
}

fn fill_job(
    request: &Parts,
    peer: SocketAddr,
    key: &CacheKey,
    stale: Option<Arc<StoredEntry>>,
) -> FillJob {
    FillJob {
        key: key.clone(),
        request: request.headers.clone(),
        client: peer.ip(),
        version: request.version,
        stale,
        slot: *key.hash(),
    }
}

/// Answers a request from the fill it leads or joined. A waiter that cannot use what the fill
/// brings (its leader is too slow, or the response is private or varies on headers it does not
/// share) fetches alone, as the leader of a fill of its own. When the origin failed the fill, the
/// waiters join one more (the failure may have been the leader's own: a connection the origin
/// had just closed, a response to its headers that edge will not read), and share that one's
/// failure; an origin that timed out is not asked again.
#[allow(clippy::too_many_arguments)]
async fn answer_from_fill(
    edge: &Arc<Edge>,
    settings: &Settings,
    peer: SocketAddr,
    request: &mut Parts,
    key: CacheKey,
    mut fwd: Forward,
    stale: Option<Arc<StoredEntry>>,
    mut role: Role,
) -> Answer {
    let request_cc = CacheControl::of_request(&request.headers, settings.cache.client_refresh);
    let mut fill_slot = *key.hash();
    let mut rejoined = false;
    // Fills of other slots joined: an origin whose `Vary` changes from one response to the next
    // could otherwise send a request from one to another for as long as both are in flight.
    let mut hops = 0;
    loop {
        let (ticket, leader) = match role {
            Role::Leader(ticket) => (ticket, true),
            Role::Waiter(ticket) => (ticket, false),
        };
        let wait = (!leader).then_some(settings.cache.collapse_wait.0);
        let asked = Instant::now();
        let head = ticket.fill.head(wait).await;
        // What this request waited for the origin: a waiter, not all of the leader's time.
        let waited = asked.elapsed();
        let now = edge.clock.now();
        // RFC 5861 §4: a 500, 502, 503 or 504, or no answer at all, may be covered by stale.
        let stale_on_error = |status: Option<StatusCode>| {
            let failed = status.is_none_or(|s| matches!(s.as_u16(), 500 | 502 | 503 | 504));
            let operator = settings.cache.stale_if_error.0;
            stale
                .as_ref()
                .filter(|entry| {
                    failed
                        && entry
                            .freshness
                            .may_serve_on_error(&request_cc, operator, now)
                })
                .cloned()
        };
        match head {
            None => {}
            Some(Head::Shared(shared)) => {
                if let Some(entry) = stale_on_error(Some(shared.status)) {
                    let fwd_status = Some(shared.fwd_status);
                    let (response, mut outcome) =
                        serve_stale_on_error(request, &entry, fwd, fwd_status, now).await;
                    outcome.origin_time = Some(if leader { shared.origin_time } else { waited });
                    return (response, outcome);
                }
                // A response that had arrived before this request joined is reused as a stored
                // one is, if it is fresh enough for the request (RFC 9111 §4, §5.2.1); otherwise
                // the request goes to the origin on its own. (One that arrives after is the
                // origin's answer since the request came, and is taken whatever its directives.)
                let ttl = if ticket.late {
                    match policy::decide(&shared.freshness, &request_cc, now) {
                        Ok(ttl) => Some(ttl),
                        // Why it goes on: the response is stale, or the request rules it out.
                        Err(why) => {
                            fwd = why;
                            None
                        }
                    }
                } else if !leader && (shared.freshness.no_cache || shared.ttl <= 0) {
                    // A response to be validated before each use (`no-cache`, `max-age=0`, or
                    // stored only for its validator) answers the request it was fetched for, not
                    // another (RFC 9111 §4, §5.2.2.4): the origin answered the leader's cookies
                    // and credentials, and may have another page for this request's.
                    None
                } else {
                    Some(shared.ttl)
                };
                if let Some(ttl) = ttl
                    && (leader || shared.variance.matches(&request.headers))
                {
                    let mut status = CacheStatus::forward(fwd);
                    status.fwd_status = Some(shared.fwd_status);
                    status.stored = shared.not_stored.is_none();
                    status.detail = shared.not_stored;
                    status.collapsed = !leader;
                    status.ttl = Some(ttl);
                    let origin_time = if leader { shared.origin_time } else { waited };
                    return respond_shared(request, &shared, ticket, status, origin_time, now)
                        .await;
                }
                // Other Vary values, or a response too old for this request: collapse with the
                // requests in the same case, in a slot for this request's values.
                let names = shared.variance.names_of();
                let variant = Variance::select(&names, &request.headers).variant_key(key.hash());
                let slot = *blake3::hash(&variant).as_bytes();
                if slot != fill_slot && hops < MAX_HOPS {
                    hops += 1;
                    let mut job = fill_job(request, peer, &key, stale.clone());
                    job.slot = slot;
                    fill_slot = slot;
                    role = edge.fills.join(edge, job);
                    continue;
                }
            }
            Some(Head::Private {
                status: origin_status,
                reason,
                retry_after,
            }) => {
                if let Some(entry) = stale_on_error(Some(origin_status)) {
                    let fwd_status = Some(origin_status.as_u16());
                    return serve_stale_on_error(request, &entry, fwd, fwd_status, now).await;
                }
                // The origin answered the leader that it is failing or shedding load. Each waiter
                // asking on its own, at once, would send it as many requests: they ask again
                // together, in one fill (the error may have been the leader's alone), and share
                // edge's word for a second error; the body was the leader's.
                if !leader && policy::origin_failing(origin_status) {
                    if !rejoined {
                        rejoined = true;
                        let mut job = fill_job(request, peer, &key, stale.clone());
                        job.slot = fill_slot;
                        role = edge.fills.join(edge, job);
                        continue;
                    }
                    let mut status = CacheStatus::forward(fwd);
                    status.fwd_status = Some(origin_status.as_u16());
                    status.collapsed = true;
                    status.detail = Some("origin-error");
                    let body = "edge: the origin answered with an error\n";
                    let (mut response, outcome) = local_response(origin_status, body, status);
                    // When to ask again is the origin's to say (RFC 9110 §10.2.3).
                    if let Some(retry_after) = retry_after {
                        response
                            .headers_mut()
                            .insert(header::RETRY_AFTER, retry_after);
                    }
                    return (response, outcome);
                }
                // Only the leader may take it: to anyone else it is another client's response.
                let private = if leader {
                    ticket.fill.take_private()
                } else {
                    None
                };
                if let Some(private) = private {
                    if request.headers.contains_key(header::RANGE) {
                        // The representation is not storable; let the origin answer the range.
                        // The whole response goes first: unread, it holds its connection and
                        // its slot (`origin.max_connections`), and this request would wait
                        // for a second while holding the first.
                        drop(private);
                        let status = CacheStatus::forward(fwd).not_stored(reason);
                        let cc = Some(request_cc);
                        let forwarded = forward(
                            edge,
                            settings,
                            peer,
                            request,
                            Body::empty(),
                            key,
                            status,
                            cc,
                        );
                        return Box::pin(forwarded).await;
                    }
                    let mut status = CacheStatus::forward(fwd).not_stored(reason);
                    status.fwd_status = Some(private.fwd_status);
                    let mut headers = private.headers;
                    status.add_to(&mut headers);
                    let body = if request.method == Method::HEAD {
                        no_content()
                    } else {
                        private.body
                    };
                    let outcome = Outcome {
                        status,
                        origin_time: Some(private.origin_time),
                        ..Outcome::default()
                    };
                    return (build(private.status, headers, body), outcome);
                }
            }
            Some(Head::Failed(err)) => {
                // How long the origin had (or, for a request that joined the fetch, how long
                // this one waited for it), for the access line; none for a request never sent
                // (`origin-busy`), as on a pass.
                let origin_time = (!matches!(*err, OriginError::Busy(..))).then_some(waited);
                if let Some(entry) = stale_on_error(None) {
                    let (response, mut outcome) =
                        serve_stale_on_error(request, &entry, fwd, None, now).await;
                    outcome.origin_time = origin_time;
                    return (response, outcome);
                }
                // Asking again for each waiter would send every collapsed request at once to an
                // origin that has just failed: they ask again together, once.
                // Not after a timeout, or a wait for a slot: they have waited as long already.
                if !leader
                    && !rejoined
                    && !matches!(*err, OriginError::Timeout(_) | OriginError::Busy(..))
                {
                    rejoined = true;
                    let mut job = fill_job(request, peer, &key, stale.clone());
                    job.slot = fill_slot;
                    role = edge.fills.join(edge, job);
                    continue;
                }
                let mut status = CacheStatus::forward(fwd);
                status.collapsed = !leader;
                let (response, mut outcome) = origin_failure(&err, status);
                outcome.origin_time = origin_time;
                return (response, outcome);
            }
            Some(Head::Pending) => {
                let err = OriginError::Unreachable("fill ended without a response".into());
                return origin_failure(&err, CacheStatus::forward(fwd));
            }
        }
        role = Role::Leader(
            edge.fills
                .solo(edge, fill_job(request, peer, &key, stale.clone())),
        );
    }
}

/// How many fills of other slots a request joins before it fetches on its own.
const MAX_HOPS: u32 = 4;

/// RFC 5861 §4: the origin failed and the stale response may stand in for it.
async fn serve_stale_on_error(
    request: &Parts,
    entry: &StoredEntry,
    fwd: Forward,
    fwd_status: Option<u16>,
    now: SystemTime,
) -> Answer {
    let status = CacheStatus {
        fwd: Some(fwd),
        fwd_status,
        ttl: Some(entry.freshness.ttl(now)),
        detail: Some("stale-if-error"),
        ..CacheStatus::default()
    };
    respond_stored(request, entry, status, now).await
}

/// serve stored: a stored response with `Age` (RFC 9111 §4.2.3, §5.1) and `Cache-Status`.
fn respond_stored(
    request: &Parts,
    entry: &StoredEntry,
    status: CacheStatus,
    now: SystemTime,
) -> impl Future<Output = Answer> {
    let mut headers = entry.headers.to_map_with(4);
    let age = entry.freshness.current_age(now).as_secs();
    headers.insert(header::AGE, HeaderValue::from(age));
    entry.set_length(&mut headers);
    let payload = match &entry.spilled {
        Some(spilled) => Payload::File(spilled.clone()),
        None => Payload::Whole(entry.body.clone()),
    };
    let outcome = Outcome {
        status,
        freshness: Some(entry.freshness),
        variance: Some(entry.variance.clone()),
        origin_time: None,
    };
    respond(request, entry.status, headers, payload, outcome)
}

/// A response from a shareable fill, streamed as it arrives; `origin_time` is how long this
/// request waited for its head.
fn respond_shared(
    request: &Parts,
    shared: &SharedHead,
    ticket: Ticket,
    status: CacheStatus,
    origin_time: Duration,
    now: SystemTime,
) -> impl Future<Output = Answer> {
    let mut headers = shared.headers.clone();
    // An `Age` from upstream is passed on as edge reckons it (RFC 9111 §4.2.3: the first member
    // of a list, an overflow as 2^31, the time on the way added), not as it came: an invalid
    // one (`-50`, `10, 5000`) would reach the client as it was. A request that joined another's
    // fill is answered from a response it did not ask for, as from a stored one: with an `Age`.
    if status.collapsed || headers.contains_key(header::AGE) {
        let age = shared.freshness.current_age(now).as_secs();
        headers.insert(header::AGE, HeaderValue::from(age));
    }
    let payload = Payload::Streaming(ticket);
    let outcome = Outcome {
        status,
        freshness: Some(shared.freshness),
        variance: Some(shared.variance.clone()),
        origin_time: Some(origin_time),
    };
    respond(request, shared.status, headers, payload, outcome)
}

/// The content of a response edge answers from the cache or from a fill.
enum Payload {
    Whole(Bytes),
    /// A large stored body, read from its file as it is sent.
    File(Spilled),
    Streaming(Ticket),
}

impl Payload {
    fn into_body(self) -> Body {
        match self {
            Payload::Whole(body) => Body::from(body),
            Payload::File(spilled) => {
                let len = spilled.len;
                Body::from_stream(file_stream(spilled, 0..len))
            }
            Payload::Streaming(ticket) => Body::from_stream(ticket.body()),
        }
    }
}

/// The bytes `range` of a large body, read from its open file in blocks as the client takes them,
/// without holding it whole.
///
/// Read on the calling thread, as bodies up to `cache.memory.max_object_size` are
/// ([`crate::cache::disk::DiskTier::get`]): a block from the page cache costs less than a hop to
/// the blocking pool and back, and a fresh block handed from a pool thread to this one was
/// returned to the system and faulted in again on every allocation (a 1 MiB body streamed at
/// a fifth of the rate of one read whole).
///
/// Every [`BLOCKS_PER_TURN`] blocks the stream yields to the runtime's other tasks. Blocks from
/// the page cache are always ready, so without it a client taking a large body would keep the
/// thread until its socket's buffers fill (megabytes on loopback), and every other request,
/// a new connection's included, would wait behind it.
pub(crate) fn file_stream(
    spilled: Spilled,
    range: std::ops::Range<u64>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    const BLOCK: u64 = 64 * 1024;
    let end = range.end;
    futures_util::stream::try_unfold(
        (spilled, range.start, 0u32),
        move |(spilled, offset, blocks)| async move {
            if offset >= end {
                return Ok(None);
            }
            if blocks > 0 && blocks % BLOCKS_PER_TURN == 0 {
                tokio::task::yield_now().await;
            }
            let len = (end - offset).min(BLOCK);
            let block = spilled.read_at(offset, len)?;
            Ok(Some((block, (spilled, offset + len, blocks + 1))))
        },
    )
}

/// How many 64 KiB blocks of a body file one response sends before it lets others run.
/// `bench/run.sh`'s `mixed` check (1 KiB hits on one connection beside 20 downloads of a 32 MiB
/// body file; plain builds, two runs each): hits' p99 215–251 ms with no turns, 16–26 ms with
/// turns of 16 blocks, 2.6–9.7 ms with 4, 2.2–2.4 ms with 1 (nginx 3.8 ms). Downloads of 32 MiB
/// with 64 connections (`large`) ran 64–70/s with none, 70–74/s with 4 and 48–59/s with 1: a
/// writev per 64 KiB costs more than the turns save.
const BLOCKS_PER_TURN: u32 = 4;

/// respond: edge answers the client's own conditions (RFC 9110 §13.2.2: If-None-Match /
/// If-Modified-Since → 304) and ranges (§14: 206 or 416) on a 200, since fills ask the origin for
/// the whole representation.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice"
)]
fn respond(
    request: &Parts,
    status: StatusCode,
    mut headers: HeaderMap,
    payload: Payload,
    outcome: Outcome,
) -> impl Future<Output = Answer> {
    async move {
        outcome.status.add_to(&mut headers);
        let head = request.method == Method::HEAD;
        // RFC 9110 §13.2.1: preconditions apply to what would otherwise be a 2xx.
        if status.is_success() && conditional::not_modified(&request.headers, &headers) {
            let not_modified = conditional::not_modified_headers(&headers);
            return (
                build(StatusCode::NOT_MODIFIED, not_modified, no_content()),
                outcome,
            );
        }
        // RFC 9110 §14.2: range handling is defined for GET only. Boxed: the only path that may
        // wait here, rarely taken, and its future would otherwise be part of every hit's.
        if status == StatusCode::OK
            && request.method == Method::GET
            && request.headers.contains_key(header::RANGE)
        {
            let ranged = Box::pin(respond_to_range(request, status, headers, payload)).await;
            return (ranged, outcome);
        }
        (
            build(status, headers, content(head, payload.into_body())),
            outcome,
        )
    }
}

/// A 200 to a GET with `Range`: a 206 or 416, its bytes read from the body in memory, from its
/// file, or from the fill as they arrive; or the 200 as it is when the body cannot be had.
async fn respond_to_range(
    request: &Parts,
    status: StatusCode,
    headers: HeaderMap,
    mut payload: Payload,
) -> Response {
    let whole = match &mut payload {
        Payload::Whole(body) => Some(body.clone()),
        // The ranges of a large stored body are read from its file as they are sent, in blocks,
        // one after the other.
        Payload::File(spilled) => {
            let length = usize::try_from(spilled.len).unwrap_or(usize::MAX);
            match range::select(&request.headers, &headers, length) {
                Selection::Full => return build(status, headers, payload.into_body()),
                Selection::Unsatisfiable { headers: range } => {
                    return unsatisfiable(headers, range);
                }
                Selection::One { headers, range } => {
                    let part = Body::from_stream(file_stream(spilled.clone(), offsets(&range)));
                    return build(StatusCode::PARTIAL_CONTENT, headers, part);
                }
                Selection::Several(parts) => {
                    use futures_util::StreamExt;
                    let (headers, pieces) = range::several(&headers, &parts, length);
                    let spilled = spilled.clone();
                    let body =
                        futures_util::stream::iter(pieces).flat_map(move |piece| match piece {
                            range::Piece::Framing(framing) => {
                                futures_util::stream::once(async { Ok(framing) }).boxed()
                            }
                            range::Piece::Part(part) => {
                                file_stream(spilled.clone(), offsets(&part)).boxed()
                            }
                        });
                    return build(
                        StatusCode::PARTIAL_CONTENT,
                        headers,
                        Body::from_stream(body),
                    );
                }
            }
        }
        // One range of a body still arriving is sent as its bytes arrive; several are gathered
        // part by part, and sent once the last is in, if they come to at most GATHERED_MAX. A
        // body of unannounced length, or more ranges of it, are sent whole, as they arrive, as
        // nginx does (§14.2 lets a server ignore Range): waiting for all of it would hold a copy
        // of up to cache.max_object_size per request. Once it is stored, its length is known and
        // its ranges are answered.
        Payload::Streaming(fill) => {
            let length = crate::fill::content_length(&headers)
                .and_then(|length| usize::try_from(length).ok());
            let selection =
                length.map(|length| (length, range::select(&request.headers, &headers, length)));
            match selection {
                Some((_, Selection::Full)) | None => {
                    return build(status, headers, payload.into_body());
                }
                Some((_, Selection::Unsatisfiable { headers: range })) => {
                    return unsatisfiable(headers, range);
                }
                Some((_, Selection::One { headers, range })) => {
                    let part = Body::from_stream(fill.body_range(offsets(&range)));
                    return build(StatusCode::PARTIAL_CONTENT, headers, part);
                }
                Some((length, Selection::Several(parts))) => {
                    let wanted: Vec<_> = parts.iter().map(offsets).collect();
                    let size: u64 = wanted.iter().map(|part| part.end - part.start).sum();
                    if size > GATHERED_MAX {
                        return build(status, headers, payload.into_body());
                    }
                    let gathered = fill.gather(&wanted).await.filter(|gathered| {
                        let lengths = gathered.iter().map(|part| part.len() as u64);
                        lengths.eq(wanted.iter().map(|part| part.end - part.start))
                    });
                    // The 206's Content-Length counts every part whole.
                    let Some(gathered) = gathered else {
                        return build(status, headers, payload.into_body());
                    };
                    let mut gathered = gathered.into_iter();
                    let (headers, pieces) = range::several(&headers, &parts, length);
                    let body: Vec<Bytes> = pieces
                        .into_iter()
                        .map(|piece| match piece {
                            range::Piece::Framing(framing) => framing,
                            range::Piece::Part(_) => gathered.next().unwrap_or_default(),
                        })
                        .collect();
                    return build(StatusCode::PARTIAL_CONTENT, headers, pieces_body(body));
                }
            }
        }
    };
    let Some(whole) = whole else {
        return build(status, headers, payload.into_body());
    };
    match range::apply(&request.headers, &headers, &whole) {
        RangeOutcome::Full => build(status, headers, Body::from(whole)),
        RangeOutcome::Partial { headers, body } => {
            build(StatusCode::PARTIAL_CONTENT, headers, pieces_body(body))
        }
        RangeOutcome::Unsatisfiable { headers: range } => unsatisfiable(headers, range),
    }
}

/// The most bytes of a body still arriving that the parts of one multipart answer are gathered
/// into, in memory, before it is sent; more are answered with the whole body.
const GATHERED_MAX: u64 = 1 << 20;

/// A body sent as `pieces`, each as it is (slices of a stored body are not copied).
fn pieces_body(mut pieces: Vec<Bytes>) -> Body {
    match pieces.len() {
        1 => Body::from(pieces.remove(0)),
        _ => Body::from_stream(futures_util::stream::iter(
            pieces.into_iter().map(Ok::<_, std::convert::Infallible>),
        )),
    }
}

/// The byte offsets of a range as the body's readers take them: from its first byte to past its
/// last.
fn offsets(range: &std::ops::RangeInclusive<usize>) -> std::ops::Range<u64> {
    *range.start() as u64..*range.end() as u64 + 1
}

/// A 416 with the 200's `headers`, less those that describe its content, and `range`'s
/// `Content-Range`.
fn unsatisfiable(mut headers: HeaderMap, range: HeaderMap) -> Response {
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
    ] {
        headers.remove(name);
    }
    headers.extend(range);
    build(StatusCode::RANGE_NOT_SATISFIABLE, headers, Body::empty())
}

/// No content for HEAD (RFC 9110 §9.3.2).
fn content(head: bool, body: Body) -> Body {
    if head { no_content() } else { body }
}

/// An empty body of no declared size, so that the server adds no `Content-Length: 0` to a HEAD
/// or 304 response whose header section describes the content a GET would get.
fn no_content() -> Body {
    Body::from_stream(futures_util::stream::empty::<
        Result<Bytes, std::convert::Infallible>,
    >())
}

fn build(status: StatusCode, mut headers: HeaderMap, body: Body) -> Response {
    // Edge is the surrogate Surrogate-Control speaks to, and the cache its purge tags are for;
    // they stop here.
    // Usually none is there: look by comparing names before hashing them to remove.
    let edge_only = [&policy::SURROGATE_CONTROL, &SURROGATE_KEY, &CACHE_TAG];
    if headers.keys().any(|name| edge_only.contains(&name)) {
        for name in edge_only {
            headers.remove(name);
        }
    }
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// forward: the request goes to the origin as it is, and the answer comes back uncached. A 2xx or
/// 3xx answer to an unsafe method invalidates what is stored for the target (RFC 9111 §4.4). For a
/// hit-for-pass GET or HEAD, the answer says why it is not stored — or, when it could be now, the
/// key stops being a pass, so that the next request fills.
///
/// `request_cc`: for a GET or HEAD, the request's directives as the lookup read them
/// ([`CacheControl::of_request`]; the storability check asks them only for `no-store`), so that
/// they are not parsed again.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice"
)]
#[allow(clippy::too_many_arguments)]
fn forward(
    edge: &Arc<Edge>,
    settings: &Settings,
    peer: SocketAddr,
    parts: &mut Parts,
    body: Body,
    key: CacheKey,
    mut cache_status: CacheStatus,
    request_cc: Option<CacheControl>,
) -> impl Future<Output = Answer> {
    async move {
        let safe = parts.method.is_safe();
        let cacheable_method = matches!(parts.method, Method::GET | Method::HEAD);
        // What the storability check and an invalidation need of the request's headers, taken before
        // they go to the origin.
        let authorized = cacheable_method && parts.headers.contains_key(header::AUTHORIZATION);
        // Asked only where it can matter (`cache.heuristic.default_ttl`), off a pass-through's path.
        let cookie = cacheable_method
            && !settings.cache.heuristic.default_ttl.0.is_zero()
            && parts.headers.contains_key(header::COOKIE);
        // The target's authority, when it has one (absolute form; HTTP/2's `:authority`), and
        // not `Host` (RFC 9112 §3.2.2).
        let public_host = if safe {
            None
        } else {
            (parts.uri.authority())
                .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
                .or_else(|| parts.headers.get(header::HOST).cloned())
        };
        let headers = std::mem::take(&mut parts.headers);
        let mut outgoing = origin::request_headers(headers, peer.ip(), parts.version, key.scheme());
        // A small body is read whole before the request takes a slot and a connection to the
        // origin, which a client trickling it would hold meanwhile (nginx's
        // `proxy_request_buffering`). Boxed: requests without a body, nearly all, do not carry
        // its future.
        if let Err(err) = settings.origin.admits(&body) {
            return abandoned_upload(&err, &key, cache_status, parts.version);
        }
        let (body, streams) = if settings.origin.reads_first(&outgoing, &body) {
            match Box::pin(settings.origin.read_first(&mut outgoing, body)).await {
                Ok(read) => read,
                // The origin was not asked: no time of its own.
                Err(err) => return abandoned_upload(&err, &key, cache_status, parts.version),
            }
        } else {
            let streams = origin::streams_from_client(&outgoing, &body);
            (body, streams)
        };
        let request_time = edge.clock.now();
        let (result, origin_time) = edge
            .send_to_origin(
                settings,
                parts.method.clone(),
                key.target(),
                outgoing,
                body,
                streams,
            )
            .await;
        let upstream = match result {
            Ok(upstream) => upstream,
            Err(
                err @ (OriginError::ClientTimeout(_)
                | OriginError::ClientBody(_)
                | OriginError::TooLarge(_)
                | OriginError::Buffer(_)),
            ) => {
                let (response, mut outcome) =
                    abandoned_upload(&err, &key, cache_status, parts.version);
                outcome.origin_time = Some(origin_time);
                return (response, outcome);
            }
            Err(err) => {
                warn!(url = key.url(), %err, "origin request failed");
                let (response, mut outcome) = origin_failure(&err, cache_status);
                // How long the origin had, for the access line: it matters most here (a
                // request never sent, `origin-busy`, has none).
                outcome.origin_time =
                    (!matches!(err, OriginError::Busy(..))).then_some(origin_time);
                return (response, outcome);
            }
        };
        let (upstream, upstream_body) = upstream.into_parts();
        let status = upstream.status;
        if !safe && (status.is_success() || status.is_redirection()) {
            let invalidation =
                invalidate_after_unsafe(edge, &parts.uri, public_host, &key, &upstream.headers);
            Box::pin(invalidation).await;
        }
        let response_time = edge.clock.now();
        let mut headers =
            origin::response_headers(upstream.headers, response_time, upstream.version);
        if let Some(request_cc) = request_cc {
            let config = &settings.cache;
            let at = (request_time, response_time);
            let stored = fill::not_storable(
                config,
                authorized,
                cookie,
                &request_cc,
                status,
                &headers,
                at,
            );
            match stored {
                Some(reason) => cache_status = cache_status.not_stored(reason),
                None => edge.fills.end_pass(&key, &headers),
            }
        }
        cache_status.fwd_status = Some(status.as_u16());
        cache_status.add_to(&mut headers);
        let body = if parts.method == Method::HEAD {
            no_content()
        } else {
            Body::new(upstream_body)
        };
        let outcome = Outcome {
            status: cache_status,
            origin_time: Some(origin_time),
            ..Outcome::default()
        };
        (build(status, headers, body), outcome)
    }
}

/// The answer to a request whose client stalled its upload (408), sent it malformed or cut
/// short (400) or too long (413, `client_max_body_size`), or whose upload edge could not write to
/// its temporary file (500, `request_buffering`): over HTTP/1 the connection closes with it, as
/// the rest of the body may still come and the connection can carry no other request.
fn abandoned_upload(
    err: &OriginError,
    key: &CacheKey,
    cache_status: CacheStatus,
    version: Version,
) -> Answer {
    match err {
        // Edge's own failure (a full or failing `$TMPDIR`): for the operator to see.
        OriginError::Buffer(_) => warn!(url = key.url(), %err, "upload abandoned"),
        _ => debug!(url = key.url(), %err, "upload abandoned"),
    }
    let (mut response, outcome) = origin_failure(err, cache_status);
    if version <= Version::HTTP_11 {
        let close = HeaderValue::from_static("close");
        response.headers_mut().insert(header::CONNECTION, close);
    }
    (response, outcome)
}

/// RFC 9111 §4.4: the target URI, and `Location` / `Content-Location` when they are on the same
/// origin. Edge's own host name (from the request) counts as the same origin as the origin's.
/// What it removed is flushed, once, before the response goes on, as a purge's is: otherwise a
/// crash within sled's flush interval brings the invalidated responses back.
async fn invalidate_after_unsafe(
    edge: &Edge,
    target: &http::Uri,
    public_host: Option<HeaderValue>,
    key: &CacheKey,
    response: &HeaderMap,
) {
    let removed = invalidate_uris(edge, target, public_host, key, response).await;
    if removed > 0 {
        edge.cache.flush().await;
    }
}

/// [`invalidate_after_unsafe`]'s removals; returns how many responses went.
async fn invalidate_uris(
    edge: &Edge,
    target: &http::Uri,
    public_host: Option<HeaderValue>,
    key: &CacheKey,
    response: &HeaderMap,
) -> usize {
    let mut removed = invalidate(edge, key).await;
    let Some(url) = edge.config().origin.url_for(target) else {
        return removed;
    };
    let public_host = public_host.as_ref().and_then(|h| h.to_str().ok());
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(reference) = response.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Ok(resolved) = url.join(reference) else {
            continue;
        };
        let target = if edge.config().origin.owns(&resolved) {
            Some(edge.config().origin.with_query_rules(resolved))
        } else if public_host.is_some_and(|host| is_public_origin(&resolved, host)) {
            resolved
                .as_str()
                .parse()
                .ok()
                .and_then(|uri| edge.config().origin.url_for(&uri))
        } else {
            None
        };
        if let Some(target) = target {
            removed += invalidate(edge, &CacheKey::new(&target, Scheme::Http)).await;
        }
    }
    removed
}

/// Removes what is stored for `key`, by http and by https (the one resource the origin serves
/// both), and keeps a fill in flight for either from storing afterwards; returns how many
/// responses went.
async fn invalidate(edge: &Edge, key: &CacheKey) -> usize {
    let mut removed = 0;
    for key in [key.clone(), key.other_scheme()] {
        edge.fills.invalidate(&key);
        removed += edge.cache.invalidate(&key).await;
    }
    removed
}

/// Whether `url` names edge itself as the client addressed it: its host and port, by http or
/// https whichever the request came by (edge serves both, and behind a TLS terminator an https
/// site's `Location` reaches the http listener), with the scheme's default port and no port the
/// same (RFC 9110 §4.2.3). RFC 9111 §4.4 asks for the same host.
fn is_public_origin(url: &Url, host: &str) -> bool {
    if !matches!(url.scheme(), "http" | "https") {
        return false;
    }
    let Ok(public) = Url::parse(&format!("{}://{host}/", url.scheme())) else {
        return false;
    };
    url.host_str()
        .is_some_and(|h| public.host_str().is_some_and(|p| p.eq_ignore_ascii_case(h)))
        && url.port_or_known_default() == public.port_or_known_default()
}

/// 502 when the origin cannot be reached, 504 when it is too slow (RFC 9110 §15.6.3, §15.6.5),
/// 503 when edge has as many requests in flight to it as it may (§15.6.4);
/// 408 when the client is too slow with its request's body (§15.5.9), 400 when that body is
/// malformed or cut short, 413 when it is longer than `client_max_body_size` (§15.5.14).
fn origin_failure(err: &OriginError, mut cache_status: CacheStatus) -> Answer {
    let (status, body, detail) = match err {
        OriginError::Unreachable(_) => (
            StatusCode::BAD_GATEWAY,
            "edge: origin unreachable\n",
            "origin-unreachable",
        ),
        OriginError::Timeout(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            "edge: origin timed out\n",
            "origin-timeout",
        ),
        OriginError::Invalid(_) => (
            StatusCode::BAD_GATEWAY,
            "edge: origin sent an invalid response\n",
            "origin-invalid",
        ),
        OriginError::Busy(..) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "edge: too many requests in flight to the origin\n",
            "origin-busy",
        ),
        OriginError::ClientTimeout(_) => (
            StatusCode::REQUEST_TIMEOUT,
            "edge: request body timed out\n",
            "client-body-timeout",
        ),
        OriginError::ClientBody(_) => (
            StatusCode::BAD_REQUEST,
            "edge: invalid request body\n",
            "client-body-invalid",
        ),
        OriginError::TooLarge(_) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "edge: request body too large\n",
            "client-body-too-large",
        ),
        OriginError::Buffer(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "edge: could not keep the request body\n",
            "client-body-buffer-failed",
        ),
    };
    cache_status.detail = Some(detail);
    local_response(status, body, cache_status)
}

/// A response edge makes itself.
fn local_response(status: StatusCode, body: &'static str, cache_status: CacheStatus) -> Answer {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(CACHE_STATUS.clone(), cache_status.to_header_value());
    let outcome = Outcome {
        status: cache_status,
        ..Outcome::default()
    };
    (response, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// An absolute target's empty path is `/` over HTTP/1 (RFC 9112 §3.2.1), but an HTTP/2
    /// `:path` without its `/` is malformed (RFC 9113 §8.3.1); neither may name another scheme.
    #[test]
    fn targets_with_an_empty_path_or_another_scheme() {
        let head = |version, target: &str| {
            let request = Request::builder()
                .version(version)
                .uri(target)
                .header("host", "a");
            head_is_valid(&request.body(()).unwrap().into_parts().0)
        };
        assert!(head(Version::HTTP_11, "http://a?x=1").is_ok());
        assert!(head(Version::HTTP_2, "http://a/?x=1").is_ok());
        assert!(head(Version::HTTP_2, "http://a?x=1").is_err());
        assert!(head(Version::HTTP_11, "ftp://a/x").is_err());
        assert!(head(Version::HTTP_2, "ftp://a/x").is_err());
    }

    /// RFC 3986 §6.2.3 as RFC 9113 §8.3.1 asks: a default or empty port, and the host's letter
    /// case, make no other authority; another port, host, or a colon inside an IP literal do.
    #[test]
    fn authorities_are_compared_after_scheme_based_normalisation() {
        let same = |a: &str, b: &str, scheme| same_authority(a.as_bytes(), b.as_bytes(), scheme);
        for (a, b, scheme) in [
            ("a.test", "a.test:80", Some("http")),
            ("a.test:443", "A.TEST", Some("https")),
            ("a.test:", "a.test", Some("http")),
            ("[::1]", "[::1]:80", Some("http")),
            ("[::A]:8080", "[::a]:8080", Some("http")),
        ] {
            assert!(same(a, b, scheme), "{a} {b}");
        }
        for (a, b, scheme) in [
            ("a.test", "a.test:443", Some("http")),
            ("a.test", "a.test:80", Some("https")),
            ("a.test", "a.test:8080", Some("http")),
            ("a.test", "b.test", Some("http")),
            ("a.test", "a.test:80", None),
            ("[::1]", "[::1:80]", Some("http")),
        ] {
            assert!(!same(a, b, scheme), "{a} {b}");
        }
    }

    /// A body file's blocks are always ready, so the stream itself must let other tasks run: here
    /// one spawned on the same (current-thread) runtime gets its turn while a 2 MiB body is read,
    /// and the body still arrives whole and in order.
    #[tokio::test]
    async fn a_body_file_stream_lets_other_tasks_run_between_blocks() {
        let mut file = tempfile::tempfile().unwrap();
        let body: Vec<u8> = (0..2 << 20).map(|i: u32| (i % 251) as u8).collect();
        std::io::Write::write_all(&mut file, &body).unwrap();
        let spilled = Spilled {
            file: Arc::new(file),
            len: body.len() as u64,
            checksum: [0; 32],
        };
        let other_ran = Arc::new(AtomicBool::new(false));
        let flag = other_ran.clone();
        tokio::spawn(async move { flag.store(true, Ordering::Relaxed) });
        let mut stream = std::pin::pin!(file_stream(spilled, 0..body.len() as u64));
        let (mut got, mut ran_while_streaming) = (Vec::new(), false);
        while let Some(block) = stream.next().await {
            got.extend_from_slice(&block.unwrap());
            ran_while_streaming |= got.len() < body.len() && other_ran.load(Ordering::Relaxed);
        }
        assert!(got == body, "the body arrives whole and in order");
        assert!(
            ran_while_streaming,
            "the other task ran before the body ended"
        );
    }
}
