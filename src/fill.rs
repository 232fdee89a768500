//! Request collapsing: at most one origin fetch ("fill") per cache key at a time. Every request
//! that needs the key while a fill is in flight joins it and streams the response as it arrives,
//! from the first byte, instead of fetching again.
//!
//! ```text
//! request ──join──▶ Fills ──(none in flight)──▶ spawn fill task ──▶ origin
//!                     │                              │ head: Shared | Private | Failed
//!                     └──(in flight)──▶ wait ◀───────┘ body chunks, then store, then leave the map
//! ```
//!
//! A fill runs in its own task, so a client that goes away does not cut it short for the others,
//! and the response is stored once whole. A response that may not be stored is `Private`: only
//! the request that started the fill gets it; the others fetch on their own, and the key is
//! remembered for `cache.hit_for_pass` so that later requests skip the wait and go to the origin
//! in parallel. A stale stored response is revalidated through a fill as well (RFC 9111 §4.3),
//! so one revalidation serves every request that found the key stale.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Version};
use reqwest::Url;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::cache::entry::StoredEntry;
use crate::cache::key::{CacheKey, Variance};
use crate::cache::policy::{self, CacheControl, NotStored};
use crate::config::CacheConfig;
use crate::origin::{self, OriginError};
use crate::proxy::Edge;

/// Request header fields that make a request conditional or partial. A fill asks the origin for
/// the whole, current representation; edge answers the client's conditions itself.
const CLIENT_CONDITIONS: [header::HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// What one fill needs to ask the origin.
pub struct FillJob {
    pub key: CacheKey,
    pub url: Url,
    /// The headers of the request that started the fill.
    pub request: HeaderMap,
    pub client: IpAddr,
    pub version: Version,
    /// The stale stored response to revalidate, if any.
    pub stale: Option<Arc<StoredEntry>>,
}

/// The fills in flight, and the keys that recently turned out not to be storable.
pub struct Fills {
    inflight: Mutex<HashMap<[u8; 32], Arc<Fill>>>,
    passes: moka::sync::Cache<[u8; 32], ()>,
}

/// How a request takes part in a fill.
pub enum Role {
    /// It started the fill: a private response is its own.
    Leader(Arc<Fill>),
    /// It joined a fill another request started.
    Waiter(Arc<Fill>),
}

impl Fills {
    pub fn new(config: &CacheConfig) -> Self {
        let passes = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(config.hit_for_pass.0.max(Duration::from_millis(1)))
            .build();
        Self {
            inflight: Mutex::new(HashMap::new()),
            passes,
        }
    }

    /// Whether `key` recently answered with a response that could not be stored.
    pub fn is_pass(&self, key: &CacheKey) -> bool {
        self.passes.contains_key(key.hash())
    }

    /// Joins the fill in flight for the job's key, or starts one.
    pub fn join(&self, edge: &Arc<Edge>, job: FillJob) -> Role {
        let mut inflight = lock(&self.inflight);
        // A fill whose response is complete has nothing to offer a newcomer: what it brought is
        // stored by now, or was not storable.
        if let Some(fill) = inflight.get(job.key.hash())
            && !fill.is_complete()
        {
            return Role::Waiter(fill.clone());
        }
        let fill = Arc::new(Fill::new());
        inflight.insert(*job.key.hash(), fill.clone());
        drop(inflight);
        let (edge_for_task, fill_for_task) = (edge.clone(), fill.clone());
        edge.tasks
            .spawn(async move { run(edge_for_task, fill_for_task, job).await });
        Role::Leader(fill)
    }

    /// Starts a fill that no other request joins: for a request that may not wait for, or use,
    /// another's.
    pub fn solo(&self, edge: &Arc<Edge>, job: FillJob) -> Arc<Fill> {
        let fill = Arc::new(Fill::new());
        let (edge_for_task, fill_for_task) = (edge.clone(), fill.clone());
        edge.tasks
            .spawn(async move { run(edge_for_task, fill_for_task, job).await });
        fill
    }

    /// Starts a fill for the job's key unless one is in flight (background revalidation).
    pub fn start(&self, edge: &Arc<Edge>, job: FillJob) {
        drop(self.join(edge, job));
    }

    /// The URI was invalidated (RFC 9111 §4.4): a fill in flight for it may carry a response from
    /// before the change, so it is no longer joined and does not store what it brings.
    pub fn invalidate(&self, key: &CacheKey) {
        if let Some(fill) = lock(&self.inflight).remove(key.hash()) {
            fill.poisoned.store(true, Ordering::Relaxed);
        }
    }

    /// The fill has no more to offer late joiners: take it out of the map.
    fn retire(&self, key: &CacheKey, fill: &Arc<Fill>) {
        let mut inflight = lock(&self.inflight);
        if inflight
            .get(key.hash())
            .is_some_and(|current| Arc::ptr_eq(current, fill))
        {
            inflight.remove(key.hash());
        }
    }
}

/// The response head of a fill, as every joined request sees it.
#[derive(Clone)]
pub enum Head {
    Pending,
    /// A storable response: everyone may use it.
    Shared(Arc<SharedHead>),
    /// A response only the leader may have; it is in [`Fill::take_private`].
    Private {
        status: StatusCode,
        reason: NotStored,
    },
    /// The origin did not answer.
    Failed(Arc<OriginError>),
}

/// A shareable response head.
pub struct SharedHead {
    pub status: StatusCode,
    /// The header section as stored (and as forwarded, before `Cache-Status`).
    pub headers: HeaderMap,
    /// The request header values the response varies on, from the leader's request.
    pub variance: Variance,
    /// The origin's status: 304 when a stale response was revalidated.
    pub fwd_status: u16,
    /// Remaining freshness when it arrived.
    pub ttl: i64,
}

/// A private response, handed to the leader whole.
pub struct PrivateResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: BoxStream<'static, reqwest::Result<Bytes>>,
}

/// One fill's shared state.
pub struct Fill {
    state: Mutex<State>,
    changed: watch::Sender<()>,
    /// Set when the URI is invalidated while the fill is in flight.
    poisoned: AtomicBool,
}

struct State {
    head: Head,
    chunks: Vec<Bytes>,
    end: Option<End>,
    private: Option<PrivateResponse>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Complete,
    Failed,
}

impl Fill {
    fn new() -> Self {
        let state = State {
            head: Head::Pending,
            chunks: Vec::new(),
            end: None,
            private: None,
        };
        Self {
            state: Mutex::new(state),
            changed: watch::Sender::new(()),
            poisoned: AtomicBool::new(false),
        }
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut lock(&self.state));
        self.changed.send_replace(());
    }

    /// Waits for the response head, or for `limit` to pass (`None`).
    pub async fn head(&self, limit: Option<Duration>) -> Option<Head> {
        let mut changed = self.changed.subscribe();
        let wait = async {
            loop {
                changed.borrow_and_update();
                let head = lock(&self.state).head.clone();
                if !matches!(head, Head::Pending) {
                    return head;
                }
                if changed.changed().await.is_err() {
                    return Head::Failed(Arc::new(OriginError::Unreachable("fill ended".into())));
                }
            }
        };
        match limit {
            Some(limit) => tokio::time::timeout(limit, wait).await.ok(),
            None => Some(wait.await),
        }
    }

    fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    fn is_complete(&self) -> bool {
        let state = lock(&self.state);
        state.end.is_some() || matches!(state.head, Head::Private { .. } | Head::Failed(_))
    }

    /// The private response, for the leader.
    pub fn take_private(&self) -> Option<PrivateResponse> {
        lock(&self.state).private.take()
    }

    /// The body from its first byte, as it arrives.
    pub fn body(self: &Arc<Self>) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let reader = Reader {
            fill: self.clone(),
            changed: self.changed.subscribe(),
            next: 0,
            done: false,
        };
        futures_util::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        })
    }

    /// The whole body, once it has arrived (`None` if the fill failed).
    pub async fn whole_body(self: &Arc<Self>) -> Option<Bytes> {
        let mut body = BytesMut::new();
        let mut stream = std::pin::pin!(self.body());
        while let Some(chunk) = stream.next().await {
            body.extend_from_slice(&chunk.ok()?);
        }
        Some(body.freeze())
    }
}

struct Reader {
    fill: Arc<Fill>,
    changed: watch::Receiver<()>,
    next: usize,
    done: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.done {
            return None;
        }
        loop {
            self.changed.borrow_and_update();
            {
                let state = lock(&self.fill.state);
                if let Some(chunk) = state.chunks.get(self.next) {
                    self.next += 1;
                    return Some(Ok(chunk.clone()));
                }
                match state.end {
                    Some(End::Complete) => return None,
                    Some(End::Failed) => {
                        self.done = true;
                        return Some(Err(std::io::Error::other("origin body failed")));
                    }
                    None => {}
                }
            }
            if self.changed.changed().await.is_err() {
                return None;
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The fill task.
async fn run(edge: Arc<Edge>, fill: Arc<Fill>, job: FillJob) {
    fetch(&edge, &fill, &job).await;
    // Whatever happened, no request may wait on this fill any more.
    fill.update(|state| {
        if matches!(state.head, Head::Pending) {
            state.head = Head::Failed(Arc::new(OriginError::Unreachable("fill abandoned".into())));
        }
        state.end.get_or_insert(End::Failed);
    });
    edge.fills.retire(&job.key, &fill);
}

async fn fetch(edge: &Arc<Edge>, fill: &Arc<Fill>, job: &FillJob) {
    let mut validating = job
        .stale
        .as_ref()
        .filter(|stale| has_validator(&stale.headers));
    loop {
        let mut outgoing = origin::request_headers(&job.request, job.client, job.version);
        for name in &CLIENT_CONDITIONS {
            outgoing.remove(name);
        }
        if let Some(stale) = validating {
            add_validators(&mut outgoing, &stale.headers);
        }
        let request_time = edge.clock.now();
        let upstream = match edge
            .origin
            .send(Method::GET, job.url.clone(), outgoing, None)
            .await
        {
            Ok(upstream) => upstream,
            Err(err) => {
                warn!(url = job.key.url(), %err, "origin request failed");
                fill.update(|state| state.head = Head::Failed(Arc::new(err)));
                return;
            }
        };
        let response_time = edge.clock.now();
        let status = upstream.status();
        let headers =
            origin::response_headers(upstream.headers(), response_time, upstream.version());

        if status == StatusCode::NOT_MODIFIED
            && let Some(stale) = validating
        {
            if policy::not_modified_matches(&stale.headers, &headers) {
                refresh(
                    edge,
                    fill,
                    job,
                    stale,
                    &headers,
                    request_time,
                    response_time,
                )
                .await;
                return;
            }
            // RFC 9111 §4.3.4: the 304 is for something edge does not hold; ask once more,
            // unconditionally.
            debug!(
                url = job.key.url(),
                "304 does not match the stored response; refetching"
            );
            validating = None;
            continue;
        }

        let request_cc = CacheControl::of(&job.request);
        match admit(
            &edge.config.cache,
            job,
            &request_cc,
            status,
            &headers,
            request_time,
            response_time,
        ) {
            Ok(entry) => {
                let ttl = entry.freshness.ttl(response_time);
                let head = SharedHead {
                    status,
                    headers,
                    variance: entry.variance.clone(),
                    fwd_status: status.as_u16(),
                    ttl,
                };
                fill.update(|state| state.head = Head::Shared(Arc::new(head)));
                stream_and_store(edge, fill, job, entry, upstream).await;
            }
            Err(reason) => {
                if is_about_the_response(reason) {
                    edge.fills.passes.insert(*job.key.hash(), ());
                }
                let private = PrivateResponse {
                    status,
                    headers,
                    body: upstream.bytes_stream().boxed(),
                };
                fill.update(|state| {
                    state.private = Some(private);
                    state.head = Head::Private { status, reason };
                    state.end = Some(End::Complete);
                });
            }
        }
        return;
    }
}

/// A 304 answered a revalidation: update the stored response (RFC 9111 §4.3.4), store it, and
/// offer it to every waiting request.
async fn refresh(
    edge: &Arc<Edge>,
    fill: &Arc<Fill>,
    job: &FillJob,
    stale: &StoredEntry,
    not_modified: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) {
    let entry = Arc::new(StoredEntry::new(
        stale.url.clone(),
        stale.status,
        policy::updated_headers(&stale.headers, not_modified),
        stale.variance.clone(),
        request_time,
        response_time,
        stale.body.clone(),
        &edge.config.cache.heuristic,
    ));
    let head = SharedHead {
        status: entry.status,
        headers: entry.headers.clone(),
        variance: entry.variance.clone(),
        fwd_status: StatusCode::NOT_MODIFIED.as_u16(),
        ttl: entry.freshness.ttl(response_time),
    };
    if !fill.is_poisoned() {
        edge.cache.store(&job.key, entry.clone()).await;
    }
    edge.fills.retire(&job.key, fill);
    fill.update(|state| {
        state.head = Head::Shared(Arc::new(head));
        state.chunks.push(entry.body.clone());
        state.end = Some(End::Complete);
    });
}

/// Reads the origin's body into the fill, then stores the whole response.
///
/// The last chunk is held back until the response is stored in both tiers: a client that has the
/// whole body can count on its next request being a hit, and on a later invalidation not being
/// undone by a store that was still on its way.
async fn stream_and_store(
    edge: &Arc<Edge>,
    fill: &Arc<Fill>,
    job: &FillJob,
    mut entry: StoredEntry,
    upstream: reqwest::Response,
) {
    // RFC 9110 §15.3.5: a 204 has no content, whatever its headers say.
    let expected = if entry.status == StatusCode::NO_CONTENT {
        Some(0)
    } else {
        content_length(&entry.headers)
    };
    let limit = edge.config.cache.max_object_size.0;
    let mut received: u64 = 0;
    let mut held = None;
    let mut body = upstream.bytes_stream();
    while received < expected.unwrap_or(u64::MAX) {
        match body.next().await {
            Some(Ok(chunk)) => {
                received += chunk.len() as u64;
                if expected == Some(received) {
                    held = Some(chunk);
                } else {
                    fill.update(|state| state.chunks.push(chunk));
                }
            }
            Some(Err(err)) => {
                warn!(url = job.key.url(), %err, "origin body failed; not storing it");
                fill.update(|state| state.end = Some(End::Failed));
                return;
            }
            None => break,
        }
    }
    let storable = if expected.is_some_and(|expected| expected != received) {
        warn!(
            url = job.key.url(),
            received, "origin body length differs from Content-Length; not storing it"
        );
        false
    } else if received > limit {
        debug!(
            url = job.key.url(),
            limit, "body outgrew max_object_size; not storing it"
        );
        false
    } else {
        true
    };
    let entry = storable.then(|| {
        let mut chunks = lock(&fill.state).chunks.clone();
        chunks.extend(held.clone());
        entry.url = job.key.url().to_owned();
        entry.body = concat(chunks, received);
        Arc::new(entry)
    });
    if let Some(entry) = entry.filter(|_| !fill.is_poisoned()) {
        edge.cache.store(&job.key, entry).await;
    }
    // From here on, a new request finds the response in the cache rather than in this fill.
    edge.fills.retire(&job.key, fill);
    fill.update(|state| {
        state.chunks.extend(held);
        state.end = Some(End::Complete);
    });
}

fn concat(chunks: Vec<Bytes>, len: u64) -> Bytes {
    if chunks.len() == 1 {
        return chunks.into_iter().next().unwrap_or_default();
    }
    let mut body = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
    for chunk in &chunks {
        body.extend_from_slice(chunk);
    }
    body.freeze()
}

/// admit: RFC 9111 §3 storability plus edge's own limits. On success, the entry to store once
/// its body has arrived.
pub fn admit(
    config: &CacheConfig,
    job: &FillJob,
    request_cc: &CacheControl,
    status: StatusCode,
    headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Result<StoredEntry, NotStored> {
    let response_cc = CacheControl::governing(headers);
    policy::check_storable(
        &Method::GET,
        &job.request,
        request_cc,
        status,
        headers,
        &response_cc,
    )?;
    if content_length(headers).is_some_and(|len| len > config.max_object_size.0) {
        return Err(NotStored::TooLarge);
    }
    let entry = StoredEntry::new(
        job.key.url().to_owned(),
        status,
        headers.clone(),
        Variance::capture(headers, &job.request),
        request_time,
        response_time,
        Bytes::new(),
        &config.heuristic,
    );
    if !entry.freshness.worth_storing(headers) {
        return Err(NotStored::NoFreshness);
    }
    Ok(entry)
}

/// Reasons that hold for any request of the key, so the key is worth remembering as a pass.
fn is_about_the_response(reason: NotStored) -> bool {
    !matches!(
        reason,
        NotStored::Method | NotStored::Authorization | NotStored::RequestNoStore
    )
}

pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// RFC 9111 §4.3.1: validate with the stored entity-tag and, for GET, the stored Last-Modified.
fn add_validators(outgoing: &mut HeaderMap, stored: &HeaderMap) {
    if let Some(etag) = stored.get(header::ETAG) {
        outgoing.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.get(header::LAST_MODIFIED) {
        outgoing.insert(header::IF_MODIFIED_SINCE, modified.clone());
    }
}
