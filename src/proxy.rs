//! The request phases: classify → key → lookup → decide → {serve hit | fetch} → admit → respond.
//!
//! Each request ends with exactly one [`CacheStatus`], which becomes its `Cache-Status` header.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::Body as _;
use reqwest::Url;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::cache::entry::StoredEntry;
use crate::cache::key::{CacheKey, Variance};
use crate::cache::policy::{self, CacheControl, Forward, NotStored};
use crate::cache::{Cache, Tier};
use crate::clock::Clock;
use crate::config::Config;
use crate::headers::{CACHE_STATUS, CacheStatus, append_via, remove_hop_by_hop};
use crate::origin::{self, Origin, OriginError};

/// Everything a request needs, shared by all of them.
pub struct Edge {
    pub config: Config,
    pub origin: Origin,
    pub cache: Arc<Cache>,
    pub clock: Clock,
    /// Background work (stores, HEAD bodies) that shutdown waits for.
    pub tasks: TaskTracker,
}

/// axum fallback handler: every method and path of the main listener.
pub async fn handle(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let uri = request.uri().clone();
    let response = route(&edge, peer, request).await;
    debug!(
        %method,
        %uri,
        status = response.status().as_u16(),
        cache_status = ?response.headers().get(&CACHE_STATUS),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// classify and key.
async fn route(edge: &Arc<Edge>, peer: SocketAddr, request: Request) -> Response {
    let Some(url) = edge.origin.url_for(request.uri()) else {
        return local_response(
            StatusCode::BAD_REQUEST,
            "edge: invalid request target\n",
            CacheStatus::default(),
        );
    };
    let key = CacheKey::new(&url);
    match *request.method() {
        Method::GET | Method::HEAD => serve_cacheable(edge, peer, request, url, key).await,
        _ => forward_uncached(edge, peer, request, url, key).await,
    }
}

/// lookup and decide, for GET and HEAD.
async fn serve_cacheable(
    edge: &Arc<Edge>,
    peer: SocketAddr,
    request: Request,
    url: Url,
    key: CacheKey,
) -> Response {
    let request_cc = CacheControl::of(request.headers());
    let head = request.method() == Method::HEAD;
    let fwd = match edge.cache.lookup(&key).await {
        None => Forward::UriMiss,
        Some((entry, tier)) if entry.variance.matches(request.headers()) => {
            let now = edge.clock.now();
            match policy::decide(&entry.freshness, &request_cc, now) {
                Ok(ttl) => {
                    return respond_from_cache(&entry, tier, ttl, now, head);
                }
                Err(fwd) => fwd,
            }
        }
        Some(_) => Forward::VaryMiss,
    };
    // RFC 9111 §5.2.1.7: nothing usable is stored, and the client forbids going forward.
    if request_cc.has("only-if-cached") {
        let status = CacheStatus {
            detail: Some("only-if-cached"),
            ..CacheStatus::default()
        };
        return local_response(
            StatusCode::GATEWAY_TIMEOUT,
            "edge: not in cache (only-if-cached)\n",
            status,
        );
    }
    fetch(edge, peer, request, url, key, fwd, request_cc).await
}

/// serve hit: the stored response with `Age` (RFC 9111 §4.2.3, §5.1) and `Cache-Status`.
fn respond_from_cache(
    entry: &StoredEntry,
    tier: Tier,
    ttl: i64,
    now: SystemTime,
    head: bool,
) -> Response {
    let mut headers = entry.headers.clone();
    let age = entry.freshness.current_age(now).as_secs();
    headers.insert(header::AGE, HeaderValue::from(age));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
    CacheStatus::hit(tier, ttl).add_to(&mut headers);
    let body = if head {
        Body::empty()
    } else {
        Body::from(entry.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    *response.headers_mut() = headers;
    response
}

/// fetch and admit: one origin request for a GET or HEAD that the cache could not answer.
async fn fetch(
    edge: &Arc<Edge>,
    peer: SocketAddr,
    request: Request,
    url: Url,
    key: CacheKey,
    fwd: Forward,
    request_cc: CacheControl,
) -> Response {
    let head = request.method() == Method::HEAD;
    let version = request.version();
    let request_headers = request.headers().clone();
    let outgoing = origin::request_headers(&request_headers, peer.ip(), version);
    let request_time = edge.clock.now();
    // A HEAD miss is fetched as GET so that the body can be stored for later GETs and HEADs.
    let result = edge.origin.send(Method::GET, url, outgoing, None).await;
    let upstream = match result {
        Ok(upstream) => upstream,
        Err(err) => return origin_failure(err, CacheStatus::forward(fwd), &key),
    };
    let response_time = edge.clock.now();
    let status = upstream.status();
    let mut headers = response_headers(upstream.headers(), response_time, upstream.version());
    let mut cache_status = CacheStatus::forward(fwd);
    cache_status.fwd_status = Some(status.as_u16());

    let response_cc = CacheControl::of(&headers);
    let admission = admit(
        edge,
        &request_headers,
        &request_cc,
        status,
        &headers,
        &response_cc,
        request_time,
        response_time,
    );
    let admission = match admission {
        Ok(entry) => {
            cache_status.stored = true;
            cache_status.ttl = Some(entry.freshness.ttl(response_time));
            Some(Admission {
                cache: edge.cache.clone(),
                tasks: edge.tasks.clone(),
                key,
                entry,
                chunks: Vec::new(),
                received: 0,
                limit: edge.config.cache.max_object_size.0,
                // RFC 9110 §15.3.5: a 204 has no content, whatever its headers say.
                expected: if status == StatusCode::NO_CONTENT {
                    Some(0)
                } else {
                    content_length(&headers)
                },
            })
        }
        Err(reason) => {
            cache_status = cache_status.not_stored(reason);
            None
        }
    };
    // hyper never polls an empty body, so an empty one is stored now.
    let admission = match admission {
        Some(admission) if admission.expected == Some(0) => {
            admission.finish();
            None
        }
        admission => admission,
    };
    cache_status.add_to(&mut headers);

    let stream = AdmittingStream {
        inner: upstream.bytes_stream().boxed(),
        admission,
    };
    let body = if head {
        // The client gets the head now; the body is read in the background only to store it.
        if stream.admission.is_some() {
            edge.tasks.spawn(stream.for_each(|_| async {}));
        }
        Body::empty()
    } else {
        Body::from_stream(stream)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// admit: RFC 9111 §3 storability plus edge's own limits. On success, the entry to store once
/// its body has arrived.
#[allow(clippy::too_many_arguments)]
fn admit(
    edge: &Edge,
    request: &HeaderMap,
    request_cc: &CacheControl,
    status: StatusCode,
    headers: &HeaderMap,
    response_cc: &CacheControl,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Result<StoredEntry, NotStored> {
    policy::check_storable(
        &Method::GET,
        request,
        request_cc,
        status,
        headers,
        response_cc,
    )?;
    if content_length(headers).is_some_and(|len| len > edge.config.cache.max_object_size.0) {
        return Err(NotStored::TooLarge);
    }
    let entry = StoredEntry::new(
        String::new(),
        status,
        headers.clone(),
        Variance::capture(headers, request),
        request_time,
        response_time,
        Bytes::new(),
        &edge.config.cache.heuristic,
    );
    if !entry.freshness.worth_storing(headers) {
        return Err(NotStored::NoFreshness);
    }
    Ok(entry)
}

/// Methods other than GET and HEAD: forwarded with their bodies streamed, never stored, and a
/// success invalidates what is stored for the target (RFC 9111 §4.4).
async fn forward_uncached(
    edge: &Arc<Edge>,
    peer: SocketAddr,
    request: Request,
    url: Url,
    key: CacheKey,
) -> Response {
    let version = request.version();
    let (parts, body) = request.into_parts();
    let outgoing = origin::request_headers(&parts.headers, peer.ip(), version);
    let body = (!body.is_end_stream()).then(|| reqwest::Body::wrap_stream(body.into_data_stream()));
    let safe = matches!(parts.method, Method::OPTIONS | Method::TRACE);
    let result = edge
        .origin
        .send(parts.method.clone(), url.clone(), outgoing, body)
        .await;
    let upstream = match result {
        Ok(upstream) => upstream,
        Err(err) => return origin_failure(err, CacheStatus::forward(Forward::Bypass), &key),
    };
    let status = upstream.status();
    if !safe && (status.is_success() || status.is_redirection()) {
        invalidate_after_unsafe(edge, &parts.headers, &url, &key, upstream.headers()).await;
    }
    let mut headers = response_headers(upstream.headers(), edge.clock.now(), upstream.version());
    let mut cache_status = CacheStatus::forward(Forward::Bypass);
    cache_status.fwd_status = Some(status.as_u16());
    cache_status.add_to(&mut headers);
    let mut response = Response::new(Body::from_stream(upstream.bytes_stream()));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// RFC 9111 §4.4: the target URI, and `Location` / `Content-Location` when they are on the same
/// origin. Edge's own host name (from the request) counts as the same origin as the origin's.
async fn invalidate_after_unsafe(
    edge: &Edge,
    request: &HeaderMap,
    url: &Url,
    key: &CacheKey,
    response: &HeaderMap,
) {
    edge.cache.invalidate(key).await;
    let public_host = request.get(header::HOST).and_then(|h| h.to_str().ok());
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(reference) = response.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Ok(resolved) = url.join(reference) else {
            continue;
        };
        let target = if edge.origin.owns(&resolved) {
            Some(resolved)
        } else if public_host.is_some_and(|host| is_public_origin(&resolved, host)) {
            resolved
                .as_str()
                .parse()
                .ok()
                .and_then(|uri| edge.origin.url_for(&uri))
        } else {
            None
        };
        if let Some(target) = target {
            edge.cache.invalidate(&CacheKey::new(&target)).await;
        }
    }
}

/// Whether `url` names edge itself as the client addressed it: same scheme (edge listens on
/// http), host and port, with the default port and no port the same (RFC 9110 §4.2.3).
fn is_public_origin(url: &Url, host: &str) -> bool {
    let Ok(public) = Url::parse(&format!("http://{host}/")) else {
        return false;
    };
    url.scheme() == "http"
        && url
            .host_str()
            .is_some_and(|h| public.host_str().is_some_and(|p| p.eq_ignore_ascii_case(h)))
        && url.port_or_known_default() == public.port_or_known_default()
}

/// The origin's response headers as edge stores and forwards them: hop-by-hop fields removed,
/// a `Date` added when the origin sent none (RFC 9110 §6.6.1), and this hop in `Via`, naming the
/// protocol the origin answered with (§7.6.3). Hits are served with the same `Via`.
fn response_headers(origin: &HeaderMap, received: SystemTime, version: Version) -> HeaderMap {
    let mut headers = origin.clone();
    remove_hop_by_hop(&mut headers);
    if !headers.contains_key(header::DATE) {
        let date = httpdate::fmt_http_date(received);
        headers.insert(
            header::DATE,
            HeaderValue::from_str(&date).expect("HTTP date is ASCII"),
        );
    }
    append_via(&mut headers, version);
    headers
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// 502 when the origin cannot be reached, 504 when it is too slow (RFC 9110 §15.6.3, §15.6.5).
fn origin_failure(err: OriginError, mut cache_status: CacheStatus, key: &CacheKey) -> Response {
    warn!(url = key.url(), %err, "origin request failed");
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
    };
    cache_status.detail = Some(detail);
    local_response(status, body, cache_status)
}

/// A response edge makes itself.
fn local_response(status: StatusCode, body: &'static str, cache_status: CacheStatus) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(CACHE_STATUS.clone(), cache_status.to_header_value());
    response
}

/// A response body being stored while it streams to the client.
struct Admission {
    cache: Arc<Cache>,
    tasks: TaskTracker,
    key: CacheKey,
    /// The entry to store, complete but for its body.
    entry: StoredEntry,
    chunks: Vec<Bytes>,
    received: u64,
    limit: u64,
    expected: Option<u64>,
}

/// What an [`Admission`] made of one more chunk.
enum Progress {
    /// More is expected.
    Partial,
    /// All of `Content-Length` has arrived. hyper stops polling a body at that point, so the end
    /// of the stream may never be seen.
    Complete,
    /// The body is not stored after all.
    Abandoned,
}

impl Admission {
    fn take(&mut self, chunk: &Bytes) -> Progress {
        self.received += chunk.len() as u64;
        if self.received > self.limit {
            debug!(
                url = self.key.url(),
                limit = self.limit,
                "body outgrew max_object_size; not storing it"
            );
            return Progress::Abandoned;
        }
        self.chunks.push(chunk.clone());
        match self.expected {
            Some(expected) if expected == self.received => Progress::Complete,
            Some(expected) if expected < self.received => {
                warn!(
                    url = self.key.url(),
                    "origin body longer than Content-Length; not storing it"
                );
                Progress::Abandoned
            }
            _ => Progress::Partial,
        }
    }

    /// The whole body has arrived: store it, if it is as long as the origin said.
    fn finish(self) {
        if self
            .expected
            .is_some_and(|expected| expected != self.received)
        {
            warn!(
                url = self.key.url(),
                "origin body length differs from Content-Length; not storing it"
            );
            return;
        }
        let body = match self.chunks.len() {
            1 => self.chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut body = BytesMut::with_capacity(self.received as usize);
                for chunk in &self.chunks {
                    body.extend_from_slice(chunk);
                }
                body.freeze()
            }
        };
        let mut entry = self.entry;
        entry.url = self.key.url().to_owned();
        entry.body = body;
        let (cache, key) = (self.cache, self.key);
        self.tasks
            .spawn(async move { cache.store(&key, Arc::new(entry)).await });
    }
}

/// The origin's body on its way to the client, copied (by reference) into an [`Admission`].
/// If the stream ends early, fails, or is dropped, nothing is stored.
struct AdmittingStream {
    inner: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    admission: Option<Admission>,
}

impl Stream for AdmittingStream {
    type Item = reqwest::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = std::task::ready!(self.inner.poll_next_unpin(cx));
        match &item {
            Some(Ok(chunk)) => {
                let progress = self
                    .admission
                    .as_mut()
                    .map(|admission| admission.take(chunk));
                match progress {
                    Some(Progress::Complete) => {
                        if let Some(admission) = self.admission.take() {
                            admission.finish();
                        }
                    }
                    Some(Progress::Abandoned) => self.admission = None,
                    Some(Progress::Partial) | None => {}
                }
            }
            Some(Err(err)) => {
                if let Some(admission) = self.admission.take() {
                    warn!(url = admission.key.url(), %err, "origin body failed; not storing it");
                }
            }
            None => {
                if let Some(admission) = self.admission.take() {
                    admission.finish();
                }
            }
        }
        Poll::Ready(item)
    }
}
