//! The request phases: classify → key → lookup → decide → {serve stored | fill | forward} →
//! respond.
//!
//! GET and HEAD are answered from the cache when they can be, and otherwise through a fill (see
//! [`crate::fill`]), which collapses concurrent misses and revalidations of one key into one
//! origin request. Other methods are forwarded as they are. Each request ends with exactly one
//! [`CacheStatus`], which becomes its `Cache-Status` header.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode};
use http_body::Body as _;
use reqwest::Url;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::cache::entry::{Spilled, StoredEntry};
use crate::cache::key::{CacheKey, Variance};
use crate::cache::policy::{self, CacheControl, Forward};
use crate::cache::{Cache, Lookup};
use crate::clock::Clock;
use crate::conditional;
use crate::config::Config;
use crate::fill::{Fill, FillJob, Fills, Head, Role, SharedHead};
use crate::headers::{CACHE_STATUS, CacheStatus};
use crate::origin::{self, Origin, OriginError};
use crate::range::{self, RangeOutcome};

/// Everything a request needs, shared by all of them.
pub struct Edge {
    pub config: Config,
    pub origin: Origin,
    pub cache: Arc<Cache>,
    pub fills: Fills,
    pub clock: Clock,
    /// Background work (fills) that shutdown waits for.
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
        let status = CacheStatus::default();
        return local_response(
            StatusCode::BAD_REQUEST,
            "edge: invalid request target\n",
            status,
        );
    };
    let key = CacheKey::new(&url);
    let (request, body) = request.into_parts();
    match request.method {
        // Content in a GET or HEAD request has no semantics (RFC 9110 §9.3.1); it is dropped.
        Method::GET | Method::HEAD => serve_cacheable(edge, peer, request, url, key).await,
        _ => {
            let status = CacheStatus::forward(Forward::Bypass);
            forward(edge, peer, request, body, url, key, status).await
        }
    }
}

/// lookup and decide, for GET and HEAD.
async fn serve_cacheable(
    edge: &Arc<Edge>,
    peer: SocketAddr,
    request: Parts,
    url: Url,
    key: CacheKey,
) -> Response {
    let request_cc = CacheControl::of(&request.headers);
    let now = edge.clock.now();
    let mut stale = None;
    let fwd = match edge.cache.lookup(&key, &request.headers).await {
        Lookup::Miss => Forward::UriMiss,
        Lookup::VaryMiss => Forward::VaryMiss,
        Lookup::Found(entry, tier) => {
            match policy::decide(&entry.freshness, &request_cc, now) {
                Ok(ttl) => {
                    return respond_stored(&request, &entry, CacheStatus::hit(tier, ttl), now)
                        .await;
                }
                Err(Forward::Stale)
                    if entry
                        .freshness
                        .may_serve_while_revalidating(&request_cc, now) =>
                {
                    // RFC 5861 §3: answer now, refresh in the background (one fill per key).
                    let job = fill_job(&request, peer, &url, &key, Some(entry.clone()));
                    edge.fills.start(edge, job);
                    let mut status = CacheStatus::hit(tier, entry.freshness.ttl(now));
                    status.detail = Some("stale-while-revalidate");
                    return respond_stored(&request, &entry, status, now).await;
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
        let status = CacheStatus {
            detail: Some("only-if-cached"),
            ..CacheStatus::default()
        };
        let body = "edge: not in cache (only-if-cached)\n";
        return local_response(StatusCode::GATEWAY_TIMEOUT, body, status);
    }
    let partial = request.headers.contains_key(header::RANGE);
    if edge.fills.is_pass(&key) {
        // Hit-for-pass: the key was not storable a moment ago; go to the origin in parallel.
        if partial {
            let status = CacheStatus::forward(fwd);
            return forward(edge, peer, request, Body::empty(), url, key, status).await;
        }
        let role = Role::Leader(
            edge.fills
                .solo(edge, fill_job(&request, peer, &url, &key, stale.clone())),
        );
        return answer_from_fill(edge, peer, request, url, key, fwd, stale, role).await;
    }
    let role = edge
        .fills
        .join(edge, fill_job(&request, peer, &url, &key, stale.clone()));
    answer_from_fill(edge, peer, request, url, key, fwd, stale, role).await
}

fn fill_job(
    request: &Parts,
    peer: SocketAddr,
    url: &Url,
    key: &CacheKey,
    stale: Option<Arc<StoredEntry>>,
) -> FillJob {
    FillJob {
        key: key.clone(),
        url: url.clone(),
        request: request.headers.clone(),
        client: peer.ip(),
        version: request.version,
        stale,
        slot: *key.hash(),
    }
}

/// Answers a request from the fill it leads or joined. A waiter that cannot use what the fill
/// brings (its leader is too slow or failed, or the response is private or varies on headers it
/// does not share) fetches alone, as the leader of a fill of its own.
#[allow(clippy::too_many_arguments)]
async fn answer_from_fill(
    edge: &Arc<Edge>,
    peer: SocketAddr,
    request: Parts,
    url: Url,
    key: CacheKey,
    fwd: Forward,
    stale: Option<Arc<StoredEntry>>,
    mut role: Role,
) -> Response {
    let request_cc = CacheControl::of(&request.headers);
    let mut fill_slot = *key.hash();
    loop {
        let (fill, leader) = match role {
            Role::Leader(fill) => (fill, true),
            Role::Waiter(fill) => (fill, false),
        };
        let wait = (!leader).then_some(edge.config.cache.collapse_wait.0);
        let head = fill.head(wait).await;
        let now = edge.clock.now();
        // RFC 5861 §4: a 500, 502, 503 or 504, or no answer at all, may be covered by stale.
        let stale_on_error = |status: Option<StatusCode>| {
            let failed = status.is_none_or(|s| matches!(s.as_u16(), 500 | 502 | 503 | 504));
            let operator = edge.config.cache.stale_if_error.0;
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
                    return serve_stale_on_error(
                        &request,
                        &entry,
                        fwd,
                        Some(shared.fwd_status),
                        now,
                    )
                    .await;
                }
                if leader || shared.variance.matches(&request.headers) {
                    let mut status = CacheStatus::forward(fwd);
                    status.fwd_status = Some(shared.fwd_status);
                    status.stored = true;
                    status.collapsed = !leader;
                    status.ttl = Some(shared.ttl);
                    return respond_shared(&request, &shared, &fill, status).await;
                }
                // Other Vary values: collapse with the requests that share this request's.
                let names = shared.variance.names_of();
                let variant = Variance::select(&names, &request.headers).variant_key(key.hash());
                let slot = *blake3::hash(&variant).as_bytes();
                if slot != fill_slot {
                    let mut job = fill_job(&request, peer, &url, &key, stale.clone());
                    job.slot = slot;
                    fill_slot = slot;
                    role = edge.fills.join(edge, job);
                    continue;
                }
            }
            Some(Head::Private {
                status: origin_status,
                reason,
            }) => {
                if let Some(entry) = stale_on_error(Some(origin_status)) {
                    let fwd_status = Some(origin_status.as_u16());
                    return serve_stale_on_error(&request, &entry, fwd, fwd_status, now).await;
                }
                // Only the leader may take it: to anyone else it is another client's response.
                let private = if leader { fill.take_private() } else { None };
                if let Some(private) = private {
                    if request.headers.contains_key(header::RANGE) {
                        // The representation is not storable; let the origin answer the range.
                        let status = CacheStatus::forward(fwd).not_stored(reason);
                        return forward(edge, peer, request, Body::empty(), url, key, status).await;
                    }
                    let mut status = CacheStatus::forward(fwd).not_stored(reason);
                    status.fwd_status = Some(private.status.as_u16());
                    let mut headers = private.headers;
                    status.add_to(&mut headers);
                    let body = if request.method == Method::HEAD {
                        no_content()
                    } else {
                        Body::from_stream(private.body)
                    };
                    return build(private.status, headers, body);
                }
            }
            Some(Head::Failed(err)) => {
                if let Some(entry) = stale_on_error(None) {
                    return serve_stale_on_error(&request, &entry, fwd, None, now).await;
                }
                if leader {
                    return origin_failure(&err, CacheStatus::forward(fwd));
                }
            }
            Some(Head::Pending) => {
                let err = OriginError::Unreachable("fill ended without a response".into());
                return origin_failure(&err, CacheStatus::forward(fwd));
            }
        }
        role = Role::Leader(
            edge.fills
                .solo(edge, fill_job(&request, peer, &url, &key, stale.clone())),
        );
    }
}

/// RFC 5861 §4: the origin failed and the stale response may stand in for it.
async fn serve_stale_on_error(
    request: &Parts,
    entry: &StoredEntry,
    fwd: Forward,
    fwd_status: Option<u16>,
    now: SystemTime,
) -> Response {
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
async fn respond_stored(
    request: &Parts,
    entry: &StoredEntry,
    status: CacheStatus,
    now: SystemTime,
) -> Response {
    let mut headers = entry.headers.clone();
    let age = entry.freshness.current_age(now).as_secs();
    headers.insert(header::AGE, HeaderValue::from(age));
    headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(entry.content_length()),
    );
    let payload = match &entry.spilled {
        Some(spilled) => Payload::File(spilled.clone()),
        None => Payload::Whole(entry.body.clone()),
    };
    respond(request, entry.status, headers, payload, status).await
}

/// A response from a shareable fill, streamed as it arrives.
async fn respond_shared(
    request: &Parts,
    shared: &SharedHead,
    fill: &Arc<Fill>,
    status: CacheStatus,
) -> Response {
    let payload = Payload::Streaming(fill.clone());
    respond(
        request,
        shared.status,
        shared.headers.clone(),
        payload,
        status,
    )
    .await
}

/// The content of a response edge answers from the cache or from a fill.
enum Payload {
    Whole(Bytes),
    /// A large stored body, read from its file as it is sent.
    File(Spilled),
    Streaming(Arc<Fill>),
}

/// A large body from its open file, in blocks, without holding it whole.
fn file_stream(spilled: Spilled) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    const BLOCK: u64 = 256 * 1024;
    futures_util::stream::try_unfold(0u64, move |offset| {
        let spilled = spilled.clone();
        async move {
            if offset >= spilled.len {
                return Ok(None);
            }
            let len = (spilled.len - offset).min(BLOCK);
            let block = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut block = vec![0; len as usize];
                spilled
                    .file
                    .read_exact_at(&mut block, offset)
                    .map(|()| Bytes::from(block))
            })
            .await
            .map_err(std::io::Error::other)??;
            Ok(Some((block, offset + len)))
        }
    })
}

/// respond: edge answers the client's own conditions (RFC 9110 §13.2.2: If-None-Match /
/// If-Modified-Since → 304) and ranges (§14: 206 or 416) on a 200, since fills ask the origin for
/// the whole representation.
async fn respond(
    request: &Parts,
    status: StatusCode,
    mut headers: HeaderMap,
    payload: Payload,
    cache_status: CacheStatus,
) -> Response {
    cache_status.add_to(&mut headers);
    let head = request.method == Method::HEAD;
    if status == StatusCode::OK {
        if conditional::not_modified(&request.headers, &headers) {
            let not_modified = conditional::not_modified_headers(&headers);
            return build(StatusCode::NOT_MODIFIED, not_modified, no_content());
        }
        // RFC 9110 §14.2: range handling is defined for GET only.
        if request.method == Method::GET && request.headers.contains_key(header::RANGE) {
            let whole = match &payload {
                Payload::Whole(body) => Some(body.clone()),
                // Ranges of a large stored body are cut from it in memory (bounded by
                // cache.max_object_size).
                Payload::File(spilled) => {
                    let spilled = spilled.clone();
                    let read = tokio::task::spawn_blocking(move || spilled.read_all()).await;
                    read.ok().and_then(Result::ok)
                }
                Payload::Streaming(fill) => fill.whole_body().await,
            };
            if let Some(whole) = whole {
                return match range::apply(&request.headers, &headers, &whole) {
                    RangeOutcome::Full => build(status, headers, content(head, Body::from(whole))),
                    RangeOutcome::Partial { headers, body } => build(
                        StatusCode::PARTIAL_CONTENT,
                        headers,
                        content(head, Body::from(body)),
                    ),
                    RangeOutcome::Unsatisfiable { headers: range } => {
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
                };
            }
        }
    }
    let body = match payload {
        Payload::Whole(body) => Body::from(body),
        Payload::File(spilled) => Body::from_stream(file_stream(spilled)),
        Payload::Streaming(fill) => Body::from_stream(fill.body()),
    };
    build(status, headers, content(head, body))
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
    // Edge is the surrogate Surrogate-Control speaks to; it stops here.
    headers.remove(&policy::SURROGATE_CONTROL);
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// forward: the request goes to the origin as it is, and the answer comes back uncached. A 2xx or
/// 3xx answer to an unsafe method invalidates what is stored for the target (RFC 9111 §4.4).
async fn forward(
    edge: &Arc<Edge>,
    peer: SocketAddr,
    parts: Parts,
    body: Body,
    url: Url,
    key: CacheKey,
    mut cache_status: CacheStatus,
) -> Response {
    let version = parts.version;
    let outgoing = origin::request_headers(&parts.headers, peer.ip(), version);
    let body = (!body.is_end_stream()).then(|| reqwest::Body::wrap_stream(body.into_data_stream()));
    let safe = parts.method.is_safe();
    let result = edge
        .origin
        .send(parts.method.clone(), url.clone(), outgoing, body)
        .await;
    let upstream = match result {
        Ok(upstream) => upstream,
        Err(err) => {
            warn!(url = key.url(), %err, "origin request failed");
            return origin_failure(&err, cache_status);
        }
    };
    let status = upstream.status();
    if !safe && (status.is_success() || status.is_redirection()) {
        invalidate_after_unsafe(edge, &parts.headers, &url, &key, upstream.headers()).await;
    }
    let mut headers =
        origin::response_headers(upstream.headers(), edge.clock.now(), upstream.version());
    cache_status.fwd_status = Some(status.as_u16());
    cache_status.add_to(&mut headers);
    let body = if parts.method == Method::HEAD {
        no_content()
    } else {
        Body::from_stream(upstream.bytes_stream())
    };
    build(status, headers, body)
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
    invalidate(edge, key).await;
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
            invalidate(edge, &CacheKey::new(&target)).await;
        }
    }
}

/// Removes what is stored for `key`, and keeps a fill in flight for it from storing afterwards.
async fn invalidate(edge: &Edge, key: &CacheKey) {
    edge.fills.invalidate(key);
    edge.cache.invalidate(key).await;
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

/// 502 when the origin cannot be reached, 504 when it is too slow (RFC 9110 §15.6.3, §15.6.5).
fn origin_failure(err: &OriginError, mut cache_status: CacheStatus) -> Response {
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
