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
//!
//! A body that turns out not to be stored (longer than `cache.max_object_size`, its disk file
//! failed, or too large for memory with no disk file to go to) is read from the origin only [`PASS_WINDOW`] ahead of its slowest reader: it is kept
//! for no one else, so edge has no reason to hold more of it than its readers have yet to take.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Version};
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::cache::KeyHasher;
use crate::cache::disk::Spool;
use crate::cache::entry::StoredEntry;
use crate::cache::key::{CacheKey, Variance};
use crate::cache::policy::{self, CacheControl, Freshness, LifetimeSource, NotStored};
use crate::config::CacheConfig;
use crate::origin::{self, OriginError, Upstream};
use crate::proxy::Edge;

/// Request header fields a fill does not pass on: those that make a request conditional or
/// partial (a fill asks the origin for the whole, current representation; edge answers the
/// client's conditions itself), and `Expect`, as a fill sends no content (RFC 9110 §10.1.1).
const CLIENT_CONDITIONS: [header::HeaderName; 7] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
    header::EXPECT,
];

/// What one fill needs to ask the origin.
pub struct FillJob {
    pub key: CacheKey,
    /// The headers of the request that started the fill.
    pub request: HeaderMap,
    pub client: IpAddr,
    pub version: Version,
    /// The stale stored response to revalidate, if any.
    pub stale: Option<Arc<StoredEntry>>,
    /// Which in-flight slot the fill occupies: the key's hash, or for requests that the key's
    /// fill could not serve because of their `Vary` values, a slot of their variant's own.
    pub slot: [u8; 32],
}

/// The fills in flight, the keys that recently turned out not to be storable, and those whose
/// revalidation recently failed.
pub struct Fills {
    inflight: Mutex<HashMap<[u8; 32], Arc<Fill>>>,
    /// Whether each pass is for a body of unannounced length that outgrew `max_object_size`.
    passes: moka::sync::Cache<[u8; 32], bool, KeyHasher>,
    /// When a revalidation of each slot last failed, by edge's clock (which tests move by hand).
    /// moka's own time to live, in real time, only clears records long past.
    failed_refreshes: moka::sync::Cache<[u8; 32], SystemTime, KeyHasher>,
    /// Fills' blocking calls to the disk that overran [`STORE_TIMEOUT`] and have not returned
    /// ([`on_disk`]): while one has not, the disk hangs, and no body file is begun.
    stuck: Arc<AtomicUsize>,
}

/// How long after a revalidation of a key fails a stale-while-revalidate hit on it starts no
/// background refresh: otherwise each stale hit would ask the failing origin again as soon as the
/// last refresh failed, at the rate of the requests.
const REFRESH_BACKOFF: Duration = Duration::from_secs(1);

/// How a request takes part in a fill.
pub enum Role {
    /// It started the fill: a private response is its own.
    Leader(Ticket),
    /// It joined a fill another request started.
    Waiter(Ticket),
}

/// A request's place in a fill. Until the request reads the body (or goes), its reader is kept
/// at the body's first byte: a body that will not be stored is dropped as every reader there is
/// takes it, and a request that joined but had not begun to read would otherwise come too late
/// for its first bytes and be cut off.
pub struct Ticket {
    pub fill: Arc<Fill>,
    reserved: Option<u64>,
    /// The request joined after the response head had arrived: what it gets is a response from
    /// before it asked, to be judged as a stored one is (RFC 9111 §4).
    pub late: bool,
}

impl Ticket {
    fn new(fill: Arc<Fill>, late: bool) -> Self {
        let reserved = Some(fill.add_reader());
        Self {
            fill,
            reserved,
            late,
        }
    }

    /// The body from its first byte, as it arrives.
    pub fn body(mut self) -> impl Stream<Item = std::io::Result<Bytes>> + Send + use<> {
        self.body_range(0..u64::MAX)
    }

    /// The bytes `range` of the body, each as soon as it has arrived: a range of a body that is
    /// still arriving waits for its own bytes only, and one of a spooled body is read from the
    /// file from its first byte, not from the body's.
    pub fn body_range(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + use<> {
        let id = match self.reserved.take() {
            Some(id) => id,
            None => self.fill.add_reader(),
        };
        self.fill.read(id, range)
    }

    /// The bytes of each of `parts`, in turn, once they have arrived (`None` if the fill failed
    /// first). Meanwhile the ticket's place is kept at the lowest start of the parts yet to read,
    /// so that a body that will not be stored keeps their bytes (and goes on) for them.
    pub async fn gather(&mut self, parts: &[std::ops::Range<u64>]) -> Option<Vec<Bytes>> {
        let mut gathered = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            if let Some(id) = self.reserved {
                let lowest = parts[i..].iter().map(|part| part.start).min();
                self.fill.move_reader(id, lowest.unwrap_or(part.start));
            }
            let mut body = BytesMut::new();
            let mut stream = std::pin::pin!(self.fill.read(self.fill.add_reader(), part.clone()));
            while let Some(chunk) = stream.next().await {
                body.extend_from_slice(&chunk.ok()?);
            }
            gathered.push(body.freeze());
        }
        Some(gathered)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(id) = self.reserved {
            self.fill.remove_reader(id);
        }
    }
}

impl Fills {
    pub fn new(config: &CacheConfig) -> Self {
        let passes = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(config.hit_for_pass.0.max(Duration::from_millis(1)))
            .build_with_hasher(KeyHasher::default());
        let failed_refreshes = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(REFRESH_BACKOFF * 10)
            .build_with_hasher(KeyHasher::default());
        Self {
            inflight: Mutex::new(HashMap::new()),
            passes,
            failed_refreshes,
            stuck: Arc::default(),
        }
    }

    /// Whether `key` recently answered with a response that could not be stored.
    pub fn is_pass(&self, key: &CacheKey) -> bool {
        self.passes.contains_key(key.hash())
    }

    /// `key`'s response, with `headers`, could be stored: the next request fills. Not when the
    /// key passes for a body of unannounced length that outgrew `max_object_size` and these
    /// headers announce none either: only its body can say, and it may outgrow it again.
    pub fn end_pass(&self, key: &CacheKey, headers: &HeaderMap) {
        if content_length(headers).is_none() && self.passes.get(key.hash()) == Some(true) {
            return;
        }
        self.passes.invalidate(key.hash());
    }

    /// Joins the fill in flight for the job's key, or starts one.
    pub fn join(&self, edge: &Arc<Edge>, job: FillJob) -> Role {
        let mut inflight = lock(&self.inflight);
        // A fill whose response is complete has nothing to offer a newcomer: what it brought is
        // stored by now, or was not storable.
        if let Some(fill) = inflight.get(&job.slot) {
            let (complete, late) = {
                let state = lock(&fill.state);
                let complete = state.end.is_some()
                    || matches!(state.head, Head::Private { .. } | Head::Failed(_));
                (complete, !matches!(state.head, Head::Pending))
            };
            if !complete {
                return Role::Waiter(Ticket::new(fill.clone(), late));
            }
        }
        let fill = Arc::new(Fill::new(job.key.clone()));
        inflight.insert(job.slot, fill.clone());
        drop(inflight);
        Role::Leader(self.spawn(edge, fill, job))
    }

    /// Starts a fill that no other request joins: for a request that may not wait for, or use,
    /// another's.
    pub fn solo(&self, edge: &Arc<Edge>, job: FillJob) -> Ticket {
        self.spawn(edge, Arc::new(Fill::new(job.key.clone())), job)
    }

    /// Runs `fill`'s task, its leader's place taken before it starts.
    fn spawn(&self, edge: &Arc<Edge>, fill: Arc<Fill>, job: FillJob) -> Ticket {
        let ticket = Ticket::new(fill.clone(), false);
        let edge_for_task = edge.clone();
        edge.tasks
            .spawn(async move { run(edge_for_task, fill, job).await });
        ticket
    }

    /// Starts a fill for the job's key unless one is in flight, or a revalidation of it failed
    /// less than [`REFRESH_BACKOFF`] ago (background revalidation).
    pub fn start(&self, edge: &Arc<Edge>, job: FillJob) {
        let failed = self.failed_refreshes.get(&job.slot);
        // A clock that went back ends the back-off rather than prolonging it.
        let now = edge.clock.now();
        if failed.is_some_and(|at| now.duration_since(at).is_ok_and(|d| d < REFRESH_BACKOFF)) {
            return;
        }
        drop(self.join(edge, job));
    }

    /// The job's revalidation failed (no answer, a server error, a body cut short): no background
    /// refresh of its slot for [`REFRESH_BACKOFF`]. Recorded before the fill leaves the in-flight
    /// map, so that no stale hit in between starts another.
    fn refresh_failed(&self, job: &FillJob, at: SystemTime) {
        if job.stale.is_some() {
            self.failed_refreshes.insert(job.slot, at);
        }
    }

    /// The job's revalidation brought a response to store: stale hits refresh as before.
    fn refresh_answered(&self, job: &FillJob) {
        if job.stale.is_some() {
            self.failed_refreshes.invalidate(&job.slot);
        }
    }

    /// The URI was invalidated (RFC 9111 §4.4): a fill in flight for it may bring a response from
    /// before the change, so no new request joins it. (Its store is refused by the cache's
    /// invalidation epoch.)
    pub fn invalidate(&self, key: &CacheKey) {
        lock(&self.inflight).retain(|_, fill| fill.key.hash() != key.hash());
    }

    /// The URIs whose path and query start with `prefix` were purged, by either scheme: as
    /// [`Fills::invalidate`] for each.
    pub fn invalidate_prefix(&self, prefix: &str) {
        lock(&self.inflight).retain(|_, fill| !fill.key.target().starts_with(prefix));
    }

    /// Everything was invalidated: no fill in flight takes new joiners.
    pub fn invalidate_all(&self) {
        lock(&self.inflight).clear();
    }

    /// The tag was purged: no fill in flight whose response may carry it takes new joiners, and
    /// which do is known only once a response head has arrived. (Their stores are refused by the
    /// cache's tag epoch.)
    pub fn invalidate_tag(&self, tag: &str) {
        lock(&self.inflight).retain(|_, fill| match &lock(&fill.state).head {
            Head::Shared(head) => !crate::headers::surrogate_keys(&head.headers).any(|t| t == tag),
            _ => false,
        });
    }

    /// The fill has no more to offer late joiners: take it out of the map.
    fn retire(&self, slot: &[u8; 32], fill: &Fill) {
        let mut inflight = lock(&self.inflight);
        if inflight
            .get(slot)
            .is_some_and(|current| std::ptr::eq(Arc::as_ptr(current), fill))
        {
            inflight.remove(slot);
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
        /// Its `Retry-After`, which the requests that share an error it ends with are given.
        retry_after: Option<http::HeaderValue>,
    },
    /// The origin did not answer: every joined request answers with the failure.
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
    pub freshness: Freshness,
    /// Time from asking the origin to its response head.
    pub origin_time: Duration,
    /// Why a storable response will not be stored after all, as its `Cache-Status` detail: its
    /// body is too large for memory, and no file could be begun for it on disk.
    pub not_stored: Option<&'static str>,
}

/// The `Cache-Status` detail of a storable response whose body is too large for the memory tier
/// and that the disk tier could not take (it is off, has no room, or failed or hung beginning
/// the file).
pub const DISK_UNAVAILABLE: &str = "disk-unavailable";

/// A private response, handed to the leader whole.
pub struct PrivateResponse {
    pub status: StatusCode,
    /// The origin's status: 304 when a stale response was revalidated.
    pub fwd_status: u16,
    pub headers: HeaderMap,
    pub body: axum::body::Body,
    pub origin_time: Duration,
}

/// One fill's shared state.
pub struct Fill {
    /// The URI the fill fetches.
    key: CacheKey,
    state: Mutex<State>,
    changed: watch::Sender<()>,
    /// Wakes the fill task when a reader has taken more of the body, or left.
    taken: Notify,
}

struct State {
    head: Head,
    chunks: VecDeque<Bytes>,
    /// Of a body that will not be stored, the chunks every reader had taken are dropped from the
    /// front of `chunks`: how many, and where in the body the first one left begins.
    dropped: usize,
    chunks_at: u64,
    /// A body too large for memory is read back from its spool file instead of `chunks` (or, if
    /// writing the file stopped, from it up to where it stopped and from `chunks` after that).
    spooled: Option<Spooled>,
    end: Option<End>,
    private: Option<PrivateResponse>,
    /// The bodies being read from this fill right now, by reader: how far into the body each has
    /// got. A reader cut off for falling behind is taken out.
    readers: HashMap<u64, u64>,
    next_reader: u64,
}

impl State {
    /// Drops the chunks of `chunks` that end at or before `slowest`, the offset every reader has
    /// passed. One that begins there stays: an empty chunk may not have been taken yet.
    fn trim(&mut self, slowest: u64) {
        while self.chunks_at < slowest
            && let Some(chunk) = self.chunks.front()
            && self.chunks_at + chunk.len() as u64 <= slowest
        {
            self.chunks_at += chunk.len() as u64;
            self.chunks.pop_front();
            self.dropped += 1;
        }
    }
}

/// Where readers find a spooled body, and how much of it they may read.
#[derive(Clone)]
struct Spooled {
    file: Arc<std::fs::File>,
    readable: u64,
    /// Writing the file failed (a full disk): the rest of the body is in `chunks`.
    stopped: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Complete,
    Failed,
}

impl Fill {
    fn new(key: CacheKey) -> Self {
        let state = State {
            head: Head::Pending,
            chunks: VecDeque::new(),
            dropped: 0,
            chunks_at: 0,
            spooled: None,
            end: None,
            private: None,
            readers: HashMap::new(),
            next_reader: 0,
        };
        Self {
            key,
            state: Mutex::new(state),
            changed: watch::Sender::new(()),
            taken: Notify::new(),
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

    /// The private response, for the leader.
    pub fn take_private(&self) -> Option<PrivateResponse> {
        lock(&self.state).private.take()
    }

    /// A new reader, at the body's first byte.
    fn add_reader(&self) -> u64 {
        let mut state = lock(&self.state);
        let id = state.next_reader;
        state.next_reader += 1;
        state.readers.insert(id, 0);
        id
    }

    /// Moves reader `id`, if it is still reading, to `offset`.
    fn move_reader(&self, id: u64, offset: u64) {
        if let Some(at) = lock(&self.state).readers.get_mut(&id) {
            *at = offset;
        }
        self.taken.notify_one();
    }

    fn remove_reader(&self, id: u64) {
        if lock(&self.state).readers.remove(&id).is_some() {
            self.taken.notify_one();
        }
    }

    /// Reader `id`'s stream of the bytes `range`.
    fn read(
        self: &Arc<Self>,
        id: u64,
        range: std::ops::Range<u64>,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + use<> {
        let reader = Reader {
            id,
            fill: self.clone(),
            changed: self.changed.subscribe(),
            next: 0,
            offset: 0,
            past_spool: false,
            // An empty range is delivered as nothing, whichever way round its ends are.
            range: range.start.min(range.end)..range.end,
            done: false,
        };
        futures_util::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        })
    }
}

struct Reader {
    /// Its entry in the fill's `readers`.
    id: u64,
    fill: Arc<Fill>,
    changed: watch::Receiver<()>,
    /// The next chunk to take from memory.
    next: usize,
    /// Bytes of the body passed so far, delivered or skipped (the offset into a spooled body).
    offset: u64,
    /// Reading `chunks` that follow a spool file that stopped short.
    past_spool: bool,
    /// The bytes to deliver.
    range: std::ops::Range<u64>,
    done: bool,
}

/// The most a reader takes from a spool file at once.
const SPOOL_READ: u64 = 64 * 1024;

impl Drop for Reader {
    fn drop(&mut self) {
        self.fill.remove_reader(self.id);
    }
}

/// What a reader does next.
enum Step {
    Chunk(Bytes),
    Spool(Spooled),
    Wait,
    End,
    Failed,
    /// Too far behind the rest of a body that will not be stored.
    CutOff,
}

impl Reader {
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        loop {
            if self.done || self.offset >= self.range.end {
                self.done = true;
                return None;
            }
            self.changed.borrow_and_update();
            let mut moved = false;
            let step = {
                let mut state = lock(&self.fill.state);
                // Everything before `offset` has been handed on: the fill may read further.
                let cut_off = match state.readers.get_mut(&self.id) {
                    Some(at) => {
                        moved = *at != self.offset;
                        *at = self.offset;
                        false
                    }
                    None => true,
                };
                match &state.spooled {
                    _ if cut_off => Step::CutOff,
                    // A spooled file holds the body from its first byte: skip to the range's.
                    Some(spooled) if self.offset.max(self.range.start) < spooled.readable => {
                        self.offset = self.offset.max(self.range.start);
                        Step::Spool(spooled.clone())
                    }
                    // The file stopped short: `chunks` hold the body from where it stopped (any
                    // taken before the body went to the file are gone from them).
                    Some(spooled) if spooled.stopped && !self.past_spool => {
                        self.past_spool = true;
                        self.next = 0;
                        self.offset = spooled.readable;
                        continue;
                    }
                    // Dropped chunks had been taken by every reader there was: this one came later.
                    // If they all lie before its range, it goes on from the first one left.
                    spooled
                        if spooled.as_ref().is_none_or(|spooled| spooled.stopped)
                            && self.next < state.dropped =>
                    {
                        if state.chunks_at <= self.range.start {
                            self.next = state.dropped;
                            self.offset = state.chunks_at;
                            continue;
                        }
                        Step::CutOff
                    }
                    spooled
                        if spooled.as_ref().is_none_or(|spooled| spooled.stopped)
                            && self.next - state.dropped < state.chunks.len() =>
                    {
                        let chunk = state.chunks[self.next - state.dropped].clone();
                        let at = self.offset;
                        self.next += 1;
                        self.offset += chunk.len() as u64;
                        Step::Chunk(slice(&chunk, at, &self.range))
                    }
                    _ => match state.end {
                        Some(End::Complete) => Step::End,
                        Some(End::Failed) => Step::Failed,
                        None => Step::Wait,
                    },
                }
            };
            if moved {
                self.fill.taken.notify_one();
            }
            match step {
                Step::Chunk(chunk) if chunk.is_empty() => {}
                Step::Chunk(chunk) => return Some(Ok(chunk)),
                Step::Spool(spooled) => return Some(self.read_spooled(&spooled)),
                Step::End => {
                    self.done = true;
                    return None;
                }
                Step::Failed => {
                    self.done = true;
                    return Some(Err(std::io::Error::other("origin body failed")));
                }
                Step::CutOff => {
                    self.done = true;
                    let err = "fell behind a body that is not stored; cut off";
                    return Some(Err(std::io::Error::other(err)));
                }
                Step::Wait => {
                    if self.changed.changed().await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// The next block of the spooled body, read on the calling thread, as bodies streamed from
    /// their files are (`proxy::file_stream`): it was written moments ago and is in the page cache.
    fn read_spooled(&mut self, spooled: &Spooled) -> std::io::Result<Bytes> {
        let until = spooled.readable.min(self.range.end);
        let len = (until - self.offset).min(SPOOL_READ);
        let read = crate::cache::entry::read_at(&spooled.file, self.offset, len);
        match &read {
            Ok(chunk) => self.offset += chunk.len() as u64,
            Err(_) => self.done = true,
        }
        read
    }
}

/// What of `chunk`, which starts at byte `at` of the body, lies in `range` (maybe nothing).
fn slice(chunk: &Bytes, at: u64, range: &std::ops::Range<u64>) -> Bytes {
    let len = chunk.len() as u64;
    let from = range.start.saturating_sub(at).min(len);
    let to = range.end.saturating_sub(at).min(len).max(from);
    // Both are at most the chunk's length, which is a usize.
    chunk.slice(from as usize..to as usize)
}

/// Locks `mutex`, whether or not a thread panicked holding it (what it guards stays usable).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The fill task.
async fn run(edge: Arc<Edge>, fill: Arc<Fill>, job: FillJob) {
    let _closer = Closer {
        edge: &edge,
        fill: &fill,
        slot: &job.slot,
    };
    fetch(&edge, &fill, &job).await;
}

/// Whatever happens to a fill task — done, failed, or panicked — no request may wait on it
/// afterwards, and it leaves the in-flight map.
struct Closer<'a> {
    edge: &'a Edge,
    fill: &'a Fill,
    slot: &'a [u8; 32],
}

impl Drop for Closer<'_> {
    fn drop(&mut self) {
        self.fill.update(|state| {
            if matches!(state.head, Head::Pending) {
                let err = OriginError::Unreachable("fill abandoned".into());
                state.head = Head::Failed(Arc::new(err));
            }
            state.end.get_or_insert(End::Failed);
        });
        self.edge.fills.retire(self.slot, self.fill);
    }
}

async fn fetch(edge: &Arc<Edge>, fill: &Arc<Fill>, job: &FillJob) {
    // A 304 refreshes the stored response (one without validators too, RFC 9111 §4.3.4, though
    // asked for unconditionally). A body kept in a file stays there: the refreshed record goes
    // into a copy of that file that the kernel makes (`disk::Inner::write_file`).
    let mut validating = job.stale.as_deref();
    loop {
        let mut outgoing = origin::request_headers(
            job.request.clone(),
            job.client,
            job.version,
            job.key.scheme(),
        );
        for name in &CLIENT_CONDITIONS {
            outgoing.remove(name);
        }
        if let Some(stale) = validating {
            add_validators(&mut outgoing, &stale.headers.to_map());
        }
        // Taken before asking: an invalidation from now on may be newer than the answer.
        let epoch = edge.cache.epoch();
        let request_time = edge.clock.now();
        let (sent, origin_time) = edge
            .send_to_origin(
                &edge.config(),
                Method::GET,
                job.key.target(),
                outgoing,
                axum::body::Body::empty(),
                false,
            )
            .await;
        let mut upstream = match sent {
            Ok(upstream) => upstream,
            Err(err) => {
                warn!(url = job.key.url(), %err, "origin request failed");
                edge.fills.refresh_failed(job, edge.clock.now());
                fill.update(|state| state.head = Head::Failed(Arc::new(err)));
                return;
            }
        };
        let response_time = edge.clock.now();
        let status = upstream.status();
        let version = upstream.version();
        let headers = origin::response_headers(
            std::mem::take(upstream.headers_mut()),
            response_time,
            version,
        );
        let received = Received {
            epoch,
            request_time,
            response_time,
            origin_time,
        };

        if status == StatusCode::NOT_MODIFIED
            && let Some(stale) = validating
        {
            if policy::not_modified_matches(&stale.headers.to_map(), &headers) {
                refresh(edge, fill, job, stale, &headers, received).await;
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
        // The origin failing (RFC 5861 §4's errors) or shedding load (429, RFC 6585 §4): such an
        // answer says nothing of the resource. It replaces no stored response, makes no key a
        // hit-for-pass (which would end collapsing just when the origin needs it) and holds
        // background refreshes back, as a failed revalidation does.
        let failing = policy::origin_failing(status);
        let admitted = admit(
            &edge.config().cache,
            job,
            &request_cc,
            status,
            &headers,
            received,
        );
        let admitted = if failing && job.stale.is_some() {
            // An error never replaces the response it might have to stand in for (RFC 5861 §4).
            // Said as on a miss where it would not be stored anyway (`no-store`, say).
            Err(admitted.err().unwrap_or(NotStored::Status))
        } else {
            admitted
        };
        match admitted {
            Ok(entry) => {
                edge.fills.refresh_answered(job);
                // Too large for memory: the body goes to its file as it arrives, and is read back
                // from there.
                let (spool, not_stored) =
                    match content_length(&headers).filter(|_| status != StatusCode::NO_CONTENT) {
                        Some(len) if len > edge.config().cache.memory.max_object_size.0 => {
                            let spool = begin_spool(edge, &job.key, Some(len)).await;
                            let not_stored = spool.is_none().then_some(DISK_UNAVAILABLE);
                            (spool, not_stored)
                        }
                        _ => (None, None),
                    };
                let ttl = entry.freshness.ttl(response_time);
                let head = SharedHead {
                    status,
                    headers,
                    variance: entry.variance.clone(),
                    fwd_status: status.as_u16(),
                    ttl,
                    freshness: entry.freshness,
                    origin_time: received.origin_time,
                    not_stored,
                };
                let spooled = spool.as_ref().map(|spool| Spooled {
                    file: spool.reader(),
                    readable: 0,
                    stopped: false,
                });
                fill.update(|state| {
                    state.head = Head::Shared(Arc::new(head));
                    state.spooled = spooled;
                });
                let unstorable = not_stored.is_some();
                stream_and_store(edge, fill, job, entry, upstream, epoch, spool, unstorable).await;
            }
            Err(reason) => {
                // Errors pass; remembering them would stop collapsing while the origin recovers.
                if is_about_the_response(reason) && !failing {
                    edge.fills.passes.insert(*job.key.hash(), false);
                }
                if failing {
                    edge.fills.refresh_failed(job, response_time);
                }
                let body = axum::body::Body::new(upstream.into_body());
                publish_private(
                    fill,
                    PrivateResponse {
                        status,
                        fwd_status: status.as_u16(),
                        headers,
                        body,
                        origin_time: received.origin_time,
                    },
                    reason,
                );
                if is_about_the_response(reason) && !failing {
                    drop_superseded(edge, job).await;
                }
            }
        }
        return;
    }
}

/// A revalidation was answered by a full response that is not stored (`no-store`, `private`,
/// too large, not worth storing): the stored response it was to refresh is not suitable any more
/// (RFC 9111 §4.3.3), so it goes rather than being served stale on, each stale hit asking again
/// (the key is a hit-for-pass now). Server errors leave it, for stale-if-error. Only that
/// response goes: the URI's other `Vary` variants were not what was asked about, and may be fresh.
async fn drop_superseded(edge: &Edge, job: &FillJob) {
    if let Some(stale) = &job.stale {
        debug!(
            url = job.key.url(),
            "a revalidation brought a response that is not stored; the stale one goes"
        );
        edge.cache
            .invalidate_variant(&job.key, &stale.variance)
            .await;
    }
}

/// When an origin answer arrived, and the invalidation epoch before it was asked for.
#[derive(Clone, Copy)]
struct Received {
    epoch: u64,
    request_time: SystemTime,
    response_time: SystemTime,
    origin_time: Duration,
}

fn publish_private(fill: &Fill, private: PrivateResponse, reason: NotStored) {
    let status = private.status;
    let retry_after = private.headers.get(header::RETRY_AFTER).cloned();
    fill.update(|state| {
        state.private = Some(private);
        state.head = Head::Private {
            status,
            reason,
            retry_after,
        };
        state.end = Some(End::Complete);
    });
}

/// A 304 answered a revalidation: update the stored response (RFC 9111 §4.3.4), store it, and
/// offer it to every waiting request — if the updated response may still be stored and shared.
async fn refresh(
    edge: &Arc<Edge>,
    fill: &Arc<Fill>,
    job: &FillJob,
    stale: &StoredEntry,
    not_modified: &HeaderMap,
    received: Received,
) {
    // The stored Age described the old response; the 304 brings its own (§4.2.3).
    let mut stored = stale.headers.to_map();
    stored.remove(header::AGE);
    let headers = policy::updated_headers(&stored, not_modified);
    let request_cc = CacheControl::of(&job.request);
    let response_cc = CacheControl::governing(&headers);
    let status = stale.status;
    // The 304 may have changed what may be stored (Set-Cookie, private, no-store, §3.2): then
    // the stored response goes. The request's own `no-store` or credentials forbid storing only
    // this exchange (RFC 9111 §5.2.1.5, §3.5): the stored response stays for everyone else, or any
    // client could evict it. So the response is judged as if asked by a plain request first.
    let storable = |authorized: bool, request_cc: &CacheControl| {
        policy::check_storable(
            &Method::GET,
            authorized,
            request_cc,
            status,
            &headers,
            &response_cc,
        )
    };
    let forbidden_by_response = storable(false, &CacheControl::default()).err();
    let forbidden = forbidden_by_response
        .or_else(|| storable(job.request.contains_key(header::AUTHORIZATION), &request_cc).err());
    if let Some(reason) = forbidden {
        if forbidden_by_response.is_some() {
            edge.cache.invalidate(&job.key).await;
        }
        let body = match &stale.spilled {
            Some(spilled) => {
                let whole = 0..spilled.len;
                axum::body::Body::from_stream(crate::proxy::file_stream(spilled.clone(), whole))
            }
            None => axum::body::Body::from(stale.body.clone()),
        };
        publish_private(
            fill,
            PrivateResponse {
                status,
                fwd_status: StatusCode::NOT_MODIFIED.as_u16(),
                headers,
                body,
                origin_time: received.origin_time,
            },
            reason,
        );
        return;
    }
    let mut entry = StoredEntry::new(
        stale.url.clone(),
        status,
        headers.clone(),
        stale.variance.clone(),
        received.request_time,
        received.response_time,
        stale.body.clone(),
        &edge.config().cache.heuristic,
    );
    entry.spilled = stale.spilled.clone();
    let entry = Arc::new(entry);
    // The body's length is known, as on a hit, even when the origin sent it without one.
    let mut stored_headers = entry.headers.to_map();
    entry.set_length(&mut stored_headers);
    let head = SharedHead {
        status,
        headers: stored_headers,
        variance: entry.variance.clone(),
        fwd_status: StatusCode::NOT_MODIFIED.as_u16(),
        ttl: entry.freshness.ttl(received.response_time),
        freshness: entry.freshness,
        origin_time: received.origin_time,
        not_stored: None,
    };
    edge.fills.refresh_answered(job);
    store(edge, job, entry.clone(), received.epoch).await;
    edge.fills.retire(&job.slot, fill);
    fill.update(|state| {
        state.head = Head::Shared(Arc::new(head));
        match &entry.spilled {
            Some(spilled) => {
                state.spooled = Some(Spooled {
                    file: spilled.file.clone(),
                    readable: spilled.len,
                    stopped: false,
                });
            }
            None => state.chunks.push_back(entry.body.clone()),
        }
        state.end = Some(End::Complete);
    });
}

/// How long a fill waits for its store before handing out the last byte anyway, and for its
/// body file to be begun or written to before it serves the body without one (not stored).
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Begins a body file for `key` (see [`crate::cache::Cache::spool`]), waiting at most
/// [`STORE_TIMEOUT`] for it: on a disk that hangs (a failing drive retrying, a stalled network
/// volume, a frozen file system) creating the file blocks, and the request waited with it, its
/// head unsent, for as long as the disk hung. A file begun after that is deleted again when the
/// blocking call returns (an unused [`Spool`] deletes its file when dropped). Until it has
/// returned, no other file is begun ([`on_disk`]).
async fn begin_spool(edge: &Arc<Edge>, key: &CacheKey, len: Option<u64>) -> Option<Spool> {
    if edge.fills.stuck.load(Ordering::Acquire) > 0 {
        debug!(url = key.url(), "the disk hangs; not beginning a body file");
        return None;
    }
    let spooling = {
        let (edge, key) = (edge.clone(), key.clone());
        tokio::spawn(async move { edge.cache.spool(&key, len).await })
    };
    match on_disk(edge, spooling).await {
        Some(spool) => spool.ok().flatten(),
        None => {
            warn!(
                url = key.url(),
                "beginning a body file took longer than {STORE_TIMEOUT:?}; not storing the body"
            );
            None
        }
    }
}

/// Waits at most [`STORE_TIMEOUT`] for `call`, a fill's blocking call to the disk; `None` if it
/// overran. One that overran is left to finish (what it returns, a [`Spool`], is dropped then,
/// deleting its file), and until it has, [`begin_spool`] begins no file: each would be one more
/// blocking thread stuck on the disk, and another request held [`STORE_TIMEOUT`], for every
/// fill of a large body while the disk hangs, until the runtime's blocking threads (512) were
/// all stuck and every blocking call queued behind them.
async fn on_disk<T: Send + 'static>(
    edge: &Edge,
    mut call: tokio::task::JoinHandle<T>,
) -> Option<Result<T, tokio::task::JoinError>> {
    match tokio::time::timeout(STORE_TIMEOUT, &mut call).await {
        Ok(done) => Some(done),
        Err(_) => {
            let stuck = edge.fills.stuck.clone();
            stuck.fetch_add(1, Ordering::AcqRel);
            tokio::spawn(async move {
                let _ = call.await;
                stuck.fetch_sub(1, Ordering::AcqRel);
            });
            None
        }
    }
}

async fn store(edge: &Edge, job: &FillJob, entry: Arc<StoredEntry>, epoch: u64) {
    let stored = tokio::time::timeout(STORE_TIMEOUT, edge.cache.store(&job.key, entry, epoch));
    if stored.await.is_err() {
        warn!(
            url = job.key.url(),
            "storing took longer than {STORE_TIMEOUT:?}; serving on"
        );
    }
}

/// Reads the origin's body into the fill — in memory, or into `spool` — then stores the whole
/// response; or, `unstorable` (too large for memory, with no file begun for it on disk), only
/// passes it on.
///
/// The last bytes are held back until the response is stored: a client that has the whole body
/// can count on its next request being a hit. Once the body will not be stored, it is read only
/// as fast as its readers take it ([`keep_pace`]).
#[allow(clippy::too_many_arguments)]
async fn stream_and_store(
    edge: &Arc<Edge>,
    fill: &Arc<Fill>,
    job: &FillJob,
    mut entry: StoredEntry,
    upstream: Upstream,
    epoch: u64,
    mut spool: Option<Spool>,
    unstorable: bool,
) {
    // RFC 9110 §15.3.5: a 204 has no content, whatever its headers say.
    let expected = if entry.status == StatusCode::NO_CONTENT {
        Some(0)
    } else {
        content_length(&entry.headers.to_map())
    };
    let limit = edge.config().cache.max_object_size.0;
    let idle = edge.config().config.origin.timeout.0;
    let mut received: u64 = 0;
    let mut held = None;
    let memory_limit = edge.config().cache.memory.max_object_size.0;
    // The body will not be stored: it outgrew max_object_size, or writing it to its file failed,
    // or it is too large for memory and no file could be begun for it (the disk tier is off,
    // has no room for it, or cannot make one). What is left of it is served from memory, read
    // from the origin as its readers take it. A body in that last case was read whole into
    // memory however slowly its readers took it, to be stored nowhere at the end: six clients
    // reading 40 MB bodies at 20 KB/s from a node whose disk tier had no room took 300 MB.
    let mut passing = false;
    if unstorable {
        debug!(
            url = job.key.url(),
            "body too large for memory and not begun on disk; not storing it"
        );
        passing = true;
        // As when writing its file fails: new requests do not join a body that will not be
        // stored, whose chunks go once its readers have them.
        edge.fills.retire(&job.slot, fill);
    }
    let mut body = http_body_util::BodyExt::into_data_stream(upstream.into_body());
    while received < expected.unwrap_or(u64::MAX) {
        let chunk = match body.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(err)) => {
                warn!(url = job.key.url(), %err, "origin body failed; not storing it");
                edge.fills.refresh_failed(job, edge.clock.now());
                fill.update(|state| state.end = Some(End::Failed));
                return;
            }
            None => break,
        };
        let before = received;
        received += chunk.len() as u64;
        let last = expected == Some(received);
        if before <= limit && received > limit {
            // No Content-Length said so up front: stop taking in new requests, and remember the
            // key, so that at least no one else waits on this body.
            debug!(
                url = job.key.url(),
                limit, "body outgrew max_object_size; not storing it"
            );
            edge.fills.retire(&job.slot, fill);
            edge.fills.passes.insert(*job.key.hash(), true);
            passing = true;
            // The spool is written no more, but kept until the body is read, so that its file
            // (which its readers may not have finished) stays within the disk tier's budget.
            stop_spooling(fill);
            drop_superseded(edge, job).await;
        }
        if !passing && let Some(writing) = spool.take() {
            let data = chunk.clone();
            // Not waited on past STORE_TIMEOUT: a write to a disk that hangs would hold every
            // reader for as long as it did. The spool stays with the write and goes with it.
            let written = tokio::task::spawn_blocking(move || {
                let mut writing = writing;
                writing.write(&data).map(|()| writing)
            });
            let err = match on_disk(edge, written).await {
                None => format!("the write took longer than {STORE_TIMEOUT:?}"),
                Some(written) => match written {
                    Ok(Ok(writing)) => {
                        spool = Some(writing);
                        if !last {
                            fill.update(|state| {
                                if let Some(spooled) = &mut state.spooled {
                                    spooled.readable = received;
                                }
                            });
                        }
                        continue;
                    }
                    Ok(Err(err)) => err.to_string(),
                    Err(err) => err.to_string(),
                },
            };
            warn!(
                url = job.key.url(),
                %err,
                "writing a body to disk failed; serving the rest from memory, not storing it"
            );
            // Readers go on from memory where the file stops (its last write may have been
            // partial: this chunk is in memory whole). New requests do not join a body that
            // will not be stored.
            passing = true;
            edge.fills.retire(&job.slot, fill);
            stop_spooling(fill);
        }
        if last {
            held = Some(chunk);
        } else {
            fill.update(|state| state.chunks.push_back(chunk));
            if passing && !keep_pace(fill, job.key.url(), received, idle).await {
                debug!(
                    url = job.key.url(),
                    "unstored body has no readers left; stopping"
                );
                fill.update(|state| state.end = Some(End::Failed));
                return;
            }
        }
        // A body of unannounced length that outgrows the memory tier's entry limit (but may still
        // be stored) moves to its disk file now; readers go on from there at their own offset.
        if expected.is_none() && !passing && before <= memory_limit && received > memory_limit {
            spool = move_to_disk(edge, fill, job).await;
            if spool.is_none() {
                // Nowhere to store it: passed on as above, not held whole in memory.
                passing = true;
                edge.fills.retire(&job.slot, fill);
            }
        }
    }
    let complete = expected.is_none_or(|expected| expected == received);
    if !complete {
        warn!(
            url = job.key.url(),
            received, "origin body length differs from Content-Length; not storing it"
        );
        edge.fills.refresh_failed(job, edge.clock.now());
    }
    entry.url = job.key.url().to_owned();
    if let Some(spool) = spool.filter(|_| complete && !passing) {
        let stored = edge.cache.store_spooled(&job.key, entry, spool, epoch);
        if tokio::time::timeout(STORE_TIMEOUT, stored).await.is_err() {
            warn!(
                url = job.key.url(),
                "storing took longer than {STORE_TIMEOUT:?}; serving on"
            );
        }
    } else if complete && !passing {
        let mut chunks: Vec<Bytes> = lock(&fill.state).chunks.iter().cloned().collect();
        chunks.extend(held.clone());
        entry.body = concat(chunks, received);
        store(edge, job, Arc::new(entry), epoch).await;
    }
    // From here on, a new request finds the response in the cache rather than in this fill.
    edge.fills.retire(&job.slot, fill);
    fill.update(|state| {
        state.chunks.extend(held);
        if let Some(spooled) = &mut state.spooled
            && !spooled.stopped
        {
            spooled.readable = received;
        }
        // A body cut short of its Content-Length is an error to every reader, not a short body.
        state.end = Some(if complete { End::Complete } else { End::Failed });
    });
}

/// Writes what a fill holds in memory to a new spool and has its readers read from there.
/// `None` (the body is then not stored) when that cannot be done.
async fn move_to_disk(edge: &Arc<Edge>, fill: &Arc<Fill>, job: &FillJob) -> Option<Spool> {
    let spool = begin_spool(edge, &job.key, None).await?;
    let chunks = lock(&fill.state).chunks.clone();
    let received: u64 = chunks.iter().map(|chunk| chunk.len() as u64).sum();
    let written = tokio::task::spawn_blocking(move || {
        let mut spool = spool;
        for chunk in &chunks {
            spool.write(chunk)?;
        }
        Ok::<_, crate::cache::disk::DiskError>(spool)
    });
    // As a write in `stream_and_store`, not waited on past STORE_TIMEOUT.
    let Some(Ok(Ok(spool))) = on_disk(edge, written).await else {
        warn!(
            url = job.key.url(),
            "writing a body to disk failed; serving the rest from memory, not storing it"
        );
        return None;
    };
    let file = spool.reader();
    fill.update(|state| {
        state.spooled = Some(Spooled {
            file,
            readable: received,
            stopped: false,
        });
        state.chunks = VecDeque::new();
    });
    Some(spool)
}

/// The body will not be stored: readers of its spool file go on from `chunks` where the file
/// stops.
fn stop_spooling(fill: &Fill) {
    fill.update(|state| {
        if let Some(spooled) = &mut state.spooled {
            spooled.stopped = true;
            state.chunks_at = spooled.readable;
        }
    });
}

/// How far a fill whose body will not be stored reads ahead of its slowest reader: a few
/// origin reads' worth, so that a reader keeping up never waits on the origin being asked, and
/// little enough that a reader that takes nothing cannot make edge hold a body of any size for it
/// (nginx likewise stops buffering at `proxy_max_temp_file_size` and then reads from the origin
/// as fast as the client takes).
const PASS_WINDOW: u64 = 4 << 20;

/// Waits until the slowest reader of a body that will not be stored is within [`PASS_WINDOW`]
/// of the `received` bytes, dropping the chunks every reader has taken. `false` when no reader is
/// left.
///
/// Readers of one fill move together, at the pace of the slowest. A reader that takes nothing for
/// `idle` (`origin.timeout`) while the fill waits on it is cut off (its response ends short), as a
/// stalled origin is: otherwise one client that stops reading would hold the origin's connection,
/// and every reader beside it, for ever.
async fn keep_pace(fill: &Fill, url: &str, received: u64, idle: Duration) -> bool {
    // The slowest reader's offset and how many readers have come, and when the slowest must
    // have moved by: a reader that has just come gets its own time.
    let mut waiting: Option<((u64, u64), tokio::time::Instant)> = None;
    loop {
        let (slowest, came) = {
            let mut state = lock(&fill.state);
            // Requests that joined but have not begun to read are readers at the first byte.
            let Some(slowest) = state.readers.values().min().copied() else {
                return false;
            };
            state.trim(slowest);
            (slowest, state.next_reader)
        };
        if received.saturating_sub(slowest) <= PASS_WINDOW {
            return true;
        }
        let deadline = match waiting {
            Some((at, deadline)) if at == (slowest, came) => deadline,
            _ => {
                let deadline = tokio::time::Instant::now() + idle;
                waiting = Some(((slowest, came), deadline));
                deadline
            }
        };
        if tokio::time::timeout_at(deadline, fill.taken.notified())
            .await
            .is_err()
        {
            let behind = received - PASS_WINDOW;
            let mut state = lock(&fill.state);
            if state.readers.is_empty() {
                return false;
            }
            let before = state.readers.len();
            state.readers.retain(|_, at| *at >= behind);
            let cut = before - state.readers.len();
            if cut > 0 {
                warn!(
                    url,
                    cut, "a reader took nothing for {idle:?} of a body that is not stored; cut off"
                );
            }
        }
    }
}

/// The stored body, in one buffer of exactly its size: a chunk from the origin may be a slice of
/// a larger read buffer, which a cached object would otherwise keep alive (a 16 KiB object held
/// ~27 KiB of RSS that way).
fn concat(chunks: Vec<Bytes>, len: u64) -> Bytes {
    let mut body = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
    for chunk in &chunks {
        body.extend_from_slice(chunk);
    }
    body.freeze()
}

/// admit: RFC 9111 §3 storability plus edge's own limits. On success, the entry to store once
/// its body has arrived.
fn admit(
    config: &CacheConfig,
    job: &FillJob,
    request_cc: &CacheControl,
    status: StatusCode,
    headers: &HeaderMap,
    received: Received,
) -> Result<StoredEntry, NotStored> {
    let (request_time, response_time) = (received.request_time, received.response_time);
    let at = (request_time, response_time);
    let authorized = job.request.contains_key(header::AUTHORIZATION);
    let cookie = job.request.contains_key(header::COOKIE);
    if let Some(reason) = not_storable(config, authorized, cookie, request_cc, status, headers, at)
    {
        return Err(reason);
    }
    // Stored under the values of the request the origin answered (RFC 9111 §4.1): without the
    // fields that were not forwarded, those `Connection` names among them, or a client could name
    // `Accept-Language` there and have the answer to none stored as the variant for its own.
    // (`not_storable` has rejected a Vary that does not parse.)
    let names = Variance::names(headers).unwrap_or_default();
    let variance = if names.is_empty() {
        Variance::default()
    } else {
        let mut asked = job.request.clone();
        crate::headers::remove_hop_by_hop(&mut asked, &header::CONNECTION);
        Variance::select(&names, &asked)
    };
    Ok(StoredEntry::new(
        job.key.url().to_owned(),
        status,
        headers.clone(),
        variance,
        request_time,
        response_time,
        Bytes::new(),
        &config.heuristic,
    ))
}

/// Why a response to a GET would not be stored (RFC 9111 §3, and edge's own limits); `None` when
/// it would. `authorized`, `cookie`: the request carried `Authorization`, `Cookie`;
/// `request_cc`: its directives. `at`: when it was asked for, and when it arrived.
pub fn not_storable(
    config: &CacheConfig,
    authorized: bool,
    cookie: bool,
    request_cc: &CacheControl,
    status: StatusCode,
    headers: &HeaderMap,
    at: (SystemTime, SystemTime),
) -> Option<NotStored> {
    let response_cc = CacheControl::governing(headers);
    let get = Method::GET;
    if let Err(reason) =
        policy::check_storable(&get, authorized, request_cc, status, headers, &response_cc)
    {
        return Some(reason);
    }
    if content_length(headers).is_some_and(|len| len > config.max_object_size.0) {
        return Some(NotStored::TooLarge);
    }
    let (request_time, response_time) = at;
    let heuristic = &config.heuristic;
    let freshness = Freshness::of(
        status,
        headers,
        &response_cc,
        request_time,
        response_time,
        heuristic,
    );
    if freshness.source == LifetimeSource::Default && cookie {
        return Some(NotStored::Cookie);
    }
    // `must-revalidate` alone lets an answer to a request with credentials be stored (RFC 9111
    // §3.5) but gives it no freshness: a lifetime edge guesses (the operator's default or
    // `negative_ttl`, or a fraction of the time since `Last-Modified`, §4.2.2) would serve that
    // user's page to everyone without asking the origin. `public` says it is everyone's.
    let guessed = matches!(
        freshness.source,
        LifetimeSource::Default | LifetimeSource::Negative | LifetimeSource::Heuristic
    );
    if guessed && authorized && !response_cc.has("public") {
        return Some(NotStored::Authorization);
    }
    (!freshness.worth_storing(headers)).then_some(NotStored::NoFreshness)
}

/// Reasons that hold for any request of the key, so the key is worth remembering as a pass.
fn is_about_the_response(reason: NotStored) -> bool {
    !matches!(
        reason,
        NotStored::Method
            | NotStored::Authorization
            | NotStored::RequestNoStore
            | NotStored::Cookie
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

/// RFC 9111 §4.3.1: validate with the stored entity-tag and, for GET, the stored Last-Modified.
fn add_validators(outgoing: &mut HeaderMap, stored: &HeaderMap) {
    if let Some(etag) = stored.get(header::ETAG) {
        outgoing.insert(header::IF_NONE_MATCH, etag.clone());
    }
    // Only a valid date: the origin must ignore any other (RFC 9110 §13.1.3).
    if let Some(modified) = stored.get(header::LAST_MODIFIED)
        && policy::parse_http_date(Some(modified)).is_some()
    {
        outgoing.insert(header::IF_MODIFIED_SINCE, modified.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(5);

    /// Has `reader` take "one two three" as it arrives in `fill`, and ask for more.
    async fn take_all(
        fill: &Fill,
        reader: &mut (impl Stream<Item = std::io::Result<Bytes>> + Unpin),
    ) {
        for chunk in [&b"one "[..], b"two ", b"three"] {
            fill.update(|state| state.chunks.push_back(Bytes::from_static(chunk)));
            assert_eq!(reader.next().await.unwrap().unwrap(), chunk);
        }
        // It has taken the 13 bytes there are.
        assert!(futures_util::FutureExt::now_or_never(reader.next()).is_none());
    }

    /// Of a body that will not be stored, a request that joined the fill but has not begun to
    /// read when the others have taken its first chunks still gets it whole: the chunks are kept
    /// for it. Once it goes without reading, they are dropped, and with no one left, the fill
    /// stops reading.
    #[tokio::test]
    async fn a_request_yet_to_read_keeps_an_unstored_body_from_its_first_byte() {
        let fill = Arc::new(Fill::new(CacheKey::from_text("/".into())));
        let mut first = Box::pin(Ticket::new(fill.clone(), false).body());
        let waiter = Ticket::new(fill.clone(), false);
        let gone = Ticket::new(fill.clone(), false);
        take_all(&fill, &mut first).await;
        assert!(keep_pace(&fill, "/x", 13, IDLE).await);
        assert_eq!(lock(&fill.state).dropped, 0);
        fill.update(|state| state.end = Some(End::Complete));

        let body: Vec<_> = waiter.body().collect().await;
        let body: Vec<u8> = body.into_iter().flat_map(|chunk| chunk.unwrap()).collect();
        assert_eq!(body, b"one two three");

        drop(gone);
        assert!(keep_pace(&fill, "/x", 13, IDLE).await);
        assert_eq!(lock(&fill.state).dropped, 3);
        drop(first);
        assert!(!keep_pace(&fill, "/x", 13, IDLE).await);
    }

    /// Several ranges of a body that will not be stored are read part by part: between parts, the
    /// request keeps its place at the lowest start still to read, and a part whose bytes are still
    /// held is read although chunks before it were dropped.
    #[tokio::test]
    async fn several_ranges_of_an_unstored_body_are_each_read_whole() {
        let fill = Arc::new(Fill::new(CacheKey::from_text("/".into())));
        let mut first = Box::pin(Ticket::new(fill.clone(), false).body());
        let mut ranged = Ticket::new(fill.clone(), false);
        take_all(&fill, &mut first).await;
        fill.update(|state| state.end = Some(End::Complete));
        let parts = ranged.gather(&[8..13, 0..3, 4..7]).await.unwrap();
        assert_eq!(parts, [&b"three"[..], b"one", b"two"]);

        // With the first reader gone, the ranged request alone keeps the body going.
        drop(first);
        assert!(keep_pace(&fill, "/x", 13, IDLE).await);
        let parts = ranged.gather(&[8..13, 4..7]).await.unwrap();
        assert_eq!(parts, [&b"three"[..], b"two"]);
        assert_eq!(
            lock(&fill.state).dropped,
            1,
            "only what lies before 4 is dropped"
        );
    }
    #[test]
    fn slice_keeps_what_of_a_chunk_lies_in_the_range() {
        let chunk = Bytes::from_static(b"0123456789");
        // The chunk holds bytes 100..110 of the body.
        for (range, want) in [
            (0..u64::MAX, &b"0123456789"[..]),
            (103..106, b"345"),
            (0..102, b"01"),
            (108..200, b"89"),
            (0..100, b""),
            (110..120, b""),
            (105..105, b""),
        ] {
            assert_eq!(slice(&chunk, 100, &range), want, "{range:?}");
        }
    }
}
