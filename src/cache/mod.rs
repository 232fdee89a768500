//! The cache facade: lookup, store and invalidate across a memory tier in front of a disk tier.
//!
//! ```text
//! lookup ──▶ memory (moka) ──miss──▶ disk (sled, verified) ──hit──▶ promote to memory
//! store  ──▶ memory + disk        invalidate ──▶ memory + disk
//! ```
//!
//! Crash safety: a record reaches the disk tier whole (one sled write, or a body file renamed into
//! place with its record at its end) and carries checksums over its metadata and its body. After
//! a crash a reader sees the old record, the new one, or nothing; a record that fails its checks
//! is removed and fetched again. Any tier error is logged and counts as a miss: the client gets the
//! origin's answer, never a 5xx or a wrong body because of the cache.

pub mod disk;
pub mod entry;
pub mod key;
pub mod memory;
pub mod policy;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderMap;
use http::header::HeaderName;
use tracing::{info, warn};

use crate::config::CacheConfig;
use disk::{DiskTier, Spool};
use entry::{Record, StoredEntry};
use key::{CacheKey, Variance};
use memory::MemoryTier;

/// What a lookup found.
pub enum Lookup {
    Found(Arc<StoredEntry>, Tier),
    /// Responses are stored for the URI, but not for this request's `Vary` header values.
    VaryMiss,
    Miss,
}

impl Lookup {
    fn miss(vary_miss: bool) -> Self {
        if vary_miss {
            Lookup::VaryMiss
        } else {
            Lookup::Miss
        }
    }
}

/// Which tier answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Disk,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
        }
    }
}

/// What one tier holds, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct TierStats {
    pub entries: u64,
    pub bytes: u64,
    /// What the tier may hold now (disk: less than its capacity when its file system is short of
    /// room).
    pub capacity: u64,
    pub evictions: u64,
}

/// The hasher of the maps keyed by a key's blake3 digest (or a record's sequence number), which
/// every request looks up: foldhash, seeded per process, as hashbrown uses it. std's SipHash cost
/// ~270 instructions a lookup, two lookups on a pass-through request. The digest is of a URL the
/// client chose, so a seeded hash, not the digest's bytes as they are: those could be searched
/// for URLs whose digests share the bits that pick a bucket. A digest is hashed by its first 16
/// bytes, as one number: they are as unpredictable as all 32, which foldhash would hash by its
/// path for long input, about twice the instructions.
#[derive(Clone, Default)]
pub struct KeyHasher(foldhash::fast::RandomState);

impl std::hash::BuildHasher for KeyHasher {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(self.0.build_hasher())
    }
}

/// [`KeyHasher`]'s hasher: foldhash's, with a digest taken as its first 16 bytes.
pub struct DigestHasher(foldhash::fast::FoldHasher<'static>);

impl std::hash::Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        match bytes.first_chunk::<16>() {
            Some(head) if bytes.len() == 32 => self.0.write_u128(u128::from_ne_bytes(*head)),
            _ => self.0.write(bytes),
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0.write_u64(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.0.write_usize(n);
    }

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct CacheStats {
    pub memory: TierStats,
    /// All zero when the disk tier could not be opened at start-up.
    pub disk: TierStats,
    pub integrity_failures: u64,
    /// Whether the disk tier is on: off while its store, which failed a write, is being
    /// reopened, and for good when it could not be opened at start-up (edge then runs on the
    /// memory tier alone until it is restarted).
    pub disk_on: bool,
    /// How many times the disk tier went off.
    pub disk_failures: u64,
}

pub struct Cache {
    memory: MemoryTier,
    disk: Option<DiskTier>,
    /// Counts invalidations; a store or promotion that began before the key's latest
    /// invalidation must not leave its older response behind.
    epoch: AtomicU64,
    /// The epoch of each key's latest invalidation, kept long enough to outlive any fill.
    invalidated: Marks<[u8; 32], KeyHasher>,
    /// The same for purged tags: a response fetched before its tag was purged is not stored.
    tags_purged: Marks<String, std::collections::hash_map::RandomState>,
    /// The same for purged URL prefixes.
    prefixes_purged: PrefixMarks,
}

/// The epoch at which each of the latest keys (or tags) was invalidated, up to `MARKS` of them for
/// an hour. Every POST answered 2xx leaves one, for a URI that may hold nothing: they were kept up
/// to 2^20 (~360 MB). A mark that goes early takes its epoch into `forgotten`, and a response
/// fetched before that is not stored whatever its key: conservative, never stale.
struct Marks<K, S> {
    marks: moka::sync::Cache<K, u64, S>,
    forgotten: Arc<AtomicU64>,
}

/// ~22 MB at most (~345 bytes of resident memory a mark, measured with 300,000 POSTs).
const MARKS: u64 = 1 << 16;

impl<K, S> Marks<K, S>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    S: std::hash::BuildHasher + Clone + Default + Send + Sync + 'static,
{
    fn new(capacity: u64) -> Self {
        let forgotten = Arc::new(AtomicU64::new(0));
        let floor = forgotten.clone();
        let marks = moka::sync::Cache::builder()
            // LRU, not TinyLFU: every invalidation must be admitted, however many there are.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .max_capacity(capacity)
            .time_to_live(Duration::from_secs(3600))
            .eviction_listener(move |_, epoch: u64, cause| {
                if cause.was_evicted() {
                    floor.fetch_max(epoch, Ordering::SeqCst);
                }
            })
            .build_with_hasher(S::default());
        Self { marks, forgotten }
    }

    fn mark(&self, key: K, epoch: u64) {
        self.marks.insert(key, epoch);
    }

    /// Every key counts as invalidated at `epoch`: a response fetched before it is not stored.
    fn mark_all(&self, epoch: u64) {
        self.forgotten.fetch_max(epoch, Ordering::SeqCst);
    }

    /// Whether `key` was invalidated after `epoch`, or may have been (its mark is gone).
    fn since<Q>(&self, key: &Q, epoch: u64) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        epoch < self.forgotten.load(Ordering::SeqCst)
            || self.marks.get(key).is_some_and(|at| at > epoch)
    }
}

/// The epochs of the latest URL prefix purges, up to [`PREFIX_MARKS`] of them: a store checks
/// its URL against each, so they are a short list, not a map. A fetch begun after the latest
/// one (every fetch but those in flight when one came) is told apart by one atomic load, and
/// looks at none of them: stores do not get slower for the marks kept, and they need no expiry.
/// The oldest goes first, its epoch into `forgotten` as with [`Marks`].
struct PrefixMarks {
    marks: std::sync::Mutex<std::collections::VecDeque<(String, u64)>>,
    /// The epoch of the latest mark.
    latest: AtomicU64,
    forgotten: AtomicU64,
}

/// Operators purge a path now and then; a script purging many in a row makes the fetches in
/// flight before the oldest of the last 256 not stored, whatever their URL.
const PREFIX_MARKS: usize = 256;

impl PrefixMarks {
    fn new() -> Self {
        Self {
            marks: std::sync::Mutex::new(std::collections::VecDeque::new()),
            latest: AtomicU64::new(0),
            forgotten: AtomicU64::new(0),
        }
    }

    fn mark(&self, prefix: String, epoch: u64) {
        let mut marks = crate::fill::lock(&self.marks);
        if marks.len() == PREFIX_MARKS
            && let Some((_, gone)) = marks.pop_front()
        {
            self.forgotten.fetch_max(gone, Ordering::SeqCst);
        }
        marks.push_back((prefix, epoch));
        // After the mark is in the list: a store that sees this epoch finds the mark.
        self.latest.fetch_max(epoch, Ordering::SeqCst);
    }

    /// Whether a prefix of `url` was purged after `epoch`, or may have been (its mark is gone).
    fn since(&self, url: &str, epoch: u64) -> bool {
        if epoch >= self.latest.load(Ordering::SeqCst) {
            return false;
        }
        epoch < self.forgotten.load(Ordering::SeqCst)
            || (crate::fill::lock(&self.marks).iter())
                .any(|(prefix, at)| *at > epoch && url.starts_with(prefix.as_str()))
    }
}

impl Cache {
    /// Opens both tiers. Never fails: a disk tier that cannot be opened leaves a memory-only cache.
    pub async fn open(config: &CacheConfig) -> Self {
        let path = config.disk.path.clone();
        let capacity = config.disk.capacity.0;
        let min_free = config.disk.min_free.0;
        let heuristic = config.heuristic;
        let stream_over = config.memory.max_object_size.0;
        let disk = tokio::task::spawn_blocking(move || {
            DiskTier::open(&path, capacity, min_free, stream_over, heuristic)
        })
        .await
        .unwrap_or_else(|err| {
            warn!(%err, "opening the disk tier failed; running with the memory tier only");
            None
        });
        let memory = MemoryTier::new(config.memory.capacity.0, config.memory.max_object_size.0);
        if let Some(disk) = &disk {
            let memory = memory.clone();
            // A record's key begins with its URI's key (a variant's has the variant's after it).
            disk.keep_in_memory_ones(move |key| {
                key.first_chunk()
                    .is_some_and(|primary| memory.holds(primary))
            });
        }
        Self {
            memory,
            disk,
            epoch: AtomicU64::new(0),
            invalidated: Marks::new(MARKS),
            tags_purged: Marks::new(MARKS),
            prefixes_purged: PrefixMarks::new(),
        }
    }

    /// The current invalidation epoch: pass it to [`Cache::store`] for a response fetched from
    /// now on.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn invalidated_since(&self, key: &CacheKey, epoch: u64) -> bool {
        self.invalidated.since(key.hash(), epoch)
    }

    /// Whether `key`, a prefix of its URL, or a tag `entry` carries, was purged after `epoch`.
    fn purged_since(&self, key: &CacheKey, entry: &StoredEntry, epoch: u64) -> bool {
        self.invalidated_since(key, epoch)
            || self.prefixes_purged.since(key.target(), epoch)
            || crate::headers::stored_surrogate_keys(&entry.headers)
                .any(|tag| self.tags_purged.since(tag, epoch))
    }

    /// Starts a purge of `tag`: responses carrying it that are being fetched now are not stored.
    pub fn purge_tag_from_now(&self, tag: &str) {
        self.tags_purged.mark(tag.to_owned(), self.next_epoch());
    }

    /// Starts a purge of the URLs that start with `prefix`: responses for them that are being
    /// fetched now are not stored.
    pub fn purge_prefix_from_now(&self, prefix: &str) {
        self.prefixes_purged
            .mark(prefix.to_owned(), self.next_epoch());
    }

    /// A new invalidation epoch, after every one so far.
    fn next_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Whether the memory tier holds any variant of `key`: a lookup would look no further for a
    /// hit-for-pass key if it does not (see `proxy::serve_cacheable`).
    pub fn in_memory(&self, key: &CacheKey) -> bool {
        self.memory.holds(key.hash())
    }

    /// Finds the stored response that `request` selects for `key`: memory first, then disk
    /// (promoting what it finds) unless `memory_only`.
    pub async fn lookup(&self, key: &CacheKey, request: &HeaderMap, memory_only: bool) -> Lookup {
        let started = self.epoch();
        let mut vary_miss = false;
        if let Some(variants) = self.memory.get(key.hash()) {
            match variants.select(request) {
                Some(entry) if entry.url == key.url() => return Lookup::Found(entry, Tier::Memory),
                // Other variants are in memory; this one may still be on disk.
                _ => vary_miss = true,
            }
        }
        let Some(disk) = self.disk.as_ref().filter(|_| !memory_only) else {
            return Lookup::miss(vary_miss);
        };
        let entry = match disk.get(key.hash().to_vec()).await {
            Ok(Some(Record::Entry(entry))) if entry.variance.is_empty() => Some(entry),
            Ok(Some(Record::Vary(names))) => {
                vary_miss = true;
                let variant = Variance::select(&names, request).variant_key(key.hash());
                match disk.get(variant).await {
                    Ok(Some(Record::Entry(entry))) => Some(entry),
                    Ok(_) => None,
                    Err(err) => {
                        warn!(url = key.url(), %err, "disk tier lookup failed; treating it as a miss");
                        None
                    }
                }
            }
            Ok(_) => None,
            Err(err) => {
                warn!(url = key.url(), %err, "disk tier lookup failed; treating it as a miss");
                None
            }
        };
        match entry {
            Some(entry) if entry.url == key.url() && entry.variance.matches(request) => {
                self.memory.insert(*key.hash(), entry.clone());
                // An invalidation during the read must not be undone by the promotion.
                if self.invalidated_since(key, started) {
                    self.memory.remove(key.hash());
                    return Lookup::Miss;
                }
                Lookup::Found(entry, Tier::Disk)
            }
            _ => Lookup::miss(vary_miss),
        }
    }

    /// Stores `entry`, fetched from epoch `fetched` on, in both tiers, replacing what was stored
    /// for `key` and the same variant — unless the key was invalidated since, in which case the
    /// response may predate the change and is dropped (RFC 9111 §4.4). The check comes again after
    /// the write, so an invalidation racing it wins either way.
    pub async fn store(&self, key: &CacheKey, entry: Arc<StoredEntry>, fetched: u64) {
        if self.purged_since(key, &entry, fetched) {
            return not_stored_for_purge(key);
        }
        self.memory.insert(*key.hash(), entry.clone());
        self.store_on_disk(key, entry.clone()).await;
        if self.purged_since(key, &entry, fetched) {
            self.remove(key).await;
            not_stored_for_purge(key);
        }
    }

    /// The disk half of [`Cache::store`].
    async fn store_on_disk(&self, key: &CacheKey, entry: Arc<StoredEntry>) {
        let Some(disk) = &self.disk else { return };
        let result = match self.prepare_disk(disk, key, &entry).await {
            Ok(record_key) => disk.put(record_key, Record::Entry(entry)).await,
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            warn!(url = key.url(), %err, "disk tier store failed; the response stays in memory only");
        }
    }

    /// Makes room for `entry` on disk and returns the key of its record: the URI's own key, or
    /// (for a response that varies) its variant's key behind a Vary marker.
    async fn prepare_disk(
        &self,
        disk: &DiskTier,
        key: &CacheKey,
        entry: &StoredEntry,
    ) -> Result<Vec<u8>, disk::DiskError> {
        let primary = key.hash().to_vec();
        if entry.variance.is_empty() {
            // Any variants stored under an earlier Vary would be unreachable now.
            disk.remove_prefix(primary.clone()).await?;
            Ok(primary)
        } else {
            let names: Arc<[HeaderName]> = entry.variance.names_of().into();
            disk.put(primary, Record::Vary(names)).await?;
            Ok(entry.variance.variant_key(key.hash()))
        }
    }

    /// Starts writing a response body for `key` to the disk tier as it arrives, for a response
    /// too large for the memory tier. `None` without a disk tier, or when the file cannot be made.
    pub async fn spool(&self, key: &CacheKey, len: Option<u64>) -> Option<Spool> {
        let disk = self.disk.clone()?;
        let spool_key = key.hash().to_vec();
        match tokio::task::spawn_blocking(move || disk.spool(spool_key, len)).await {
            Ok(Ok(spool)) => Some(spool),
            // Off: said once, when it went off.
            Ok(Err(disk::DiskError::Off)) => None,
            Ok(Err(err)) => {
                warn!(url = key.url(), %err, "cannot spool a body to disk; it is passed on, not stored");
                None
            }
            Err(_) => None,
        }
    }

    /// Stores `entry`, whose body was written to `spool`, on disk only (it is too large for
    /// memory), under the same invalidation rule as [`Cache::store`].
    pub async fn store_spooled(
        &self,
        key: &CacheKey,
        entry: StoredEntry,
        spool: Spool,
        fetched: u64,
    ) {
        let Some(disk) = &self.disk else { return };
        if self.purged_since(key, &entry, fetched) {
            return not_stored_for_purge(key);
        }
        // An older, smaller copy in memory would otherwise be found first.
        self.memory.remove(key.hash());
        let record_key = match self.prepare_disk(disk, key, &entry).await {
            Ok(record_key) => record_key,
            Err(err) => {
                warn!(url = key.url(), %err, "disk tier store failed");
                return;
            }
        };
        let committed = tokio::task::spawn_blocking(move || {
            let result = spool.commit(record_key, &entry);
            (result, entry)
        })
        .await;
        let entry = match committed {
            Ok((Err(disk::DiskError::Off), _)) => return,
            Ok((Err(err), _)) => {
                warn!(url = key.url(), %err, "disk tier store failed");
                return;
            }
            Ok((Ok(()), entry)) => entry,
            Err(_) => return,
        };
        if self.purged_since(key, &entry, fetched) {
            self.remove(key).await;
            not_stored_for_purge(key);
        }
    }

    /// Removes whatever is stored for `key`, every variant, from both tiers, and keeps stores of
    /// responses fetched before now from bringing it back. Returns how many responses went.
    pub async fn invalidate(&self, key: &CacheKey) -> usize {
        self.bump_epoch(key);
        let removed = self.remove(key).await;
        // A lookup that read the disk record before it went may promote it to memory meanwhile:
        // a second epoch makes a late promotion undo itself, and an earlier one is removed here.
        self.bump_epoch(key);
        self.memory.remove(key.hash());
        removed
    }

    /// Removes the one response stored for `key` under `variance` (the variant a revalidation
    /// found unsuitable), as [`Cache::invalidate`] does, and leaves the URI's other variants; a
    /// response that does not vary is all there is, and goes as in [`Cache::invalidate`].
    pub async fn invalidate_variant(&self, key: &CacheKey, variance: &Variance) -> usize {
        if variance.is_empty() {
            return self.invalidate(key).await;
        }
        self.bump_epoch(key);
        // A variant's key is the URI's followed by its own: a prefix of nothing else.
        let on_disk = (self.purge_disk(variance.variant_key(key.hash()), key.url())).await;
        // As in `invalidate`: a promotion of the record racing this undoes itself.
        self.bump_epoch(key);
        let in_memory = self.memory.remove_variant(key.hash(), variance);
        in_memory.max(on_disk)
    }

    /// Removes every stored response from both tiers (a purge of everything), and keeps stores
    /// of responses fetched before now from bringing any back. Returns how many went.
    pub async fn invalidate_all(&self) -> usize {
        self.bump_epoch_all();
        let on_disk = self.purge_disk(Vec::new(), "*").await;
        // As in `invalidate`: a promotion that read a record before it went undoes itself.
        self.bump_epoch_all();
        let in_memory = self.memory.clear();
        in_memory.max(on_disk)
    }

    /// Marks every stored response stale as of `at` (a soft purge of everything); returns how
    /// many were marked.
    pub async fn mark_all_stale(&self, at: std::time::SystemTime) -> usize {
        self.bump_epoch_all();
        let on_disk = self.mark_disk_stale(Vec::new(), at, "*").await;
        self.bump_epoch_all();
        let in_memory = self.memory.rewrite_all(expired(at));
        in_memory.max(on_disk)
    }

    fn bump_epoch_all(&self) {
        self.invalidated.mark_all(self.next_epoch());
    }

    fn bump_epoch(&self, key: &CacheKey) {
        self.invalidated.mark(*key.hash(), self.next_epoch());
    }

    /// How many responses were stored for `key`, in whichever tier holds more of them (memory
    /// holds a subset of disk, except when a disk write failed).
    async fn remove(&self, key: &CacheKey) -> usize {
        let on_disk = self.purge_disk(key.hash().to_vec(), key.url()).await;
        let in_memory = self.memory.remove(key.hash());
        in_memory.max(on_disk)
    }

    /// Removes the disk tier's records under `prefix` (`url` names them in a log line should that
    /// fail); returns how many responses went.
    async fn purge_disk(&self, prefix: Vec<u8>, url: &str) -> usize {
        let Some(disk) = &self.disk else { return 0 };
        disk.purge(prefix).await.unwrap_or_else(|err| {
            warn!(url, %err, "disk tier invalidation failed");
            0
        })
    }

    /// Marks the disk tier's responses under `prefix` stale as of `at`, or removes them should
    /// that fail; returns how many were marked.
    async fn mark_disk_stale(
        &self,
        prefix: Vec<u8>,
        at: std::time::SystemTime,
        url: &str,
    ) -> usize {
        let Some(disk) = &self.disk else { return 0 };
        match disk.mark_stale(prefix.clone(), at).await {
            Ok(count) => count,
            Err(err) => {
                warn!(url, %err, "disk tier soft purge failed; removing instead");
                let _ = disk.purge(prefix).await;
                0
            }
        }
    }

    /// Marks every response stored for `key` stale as of `at` (a soft purge), so that its next
    /// use revalidates it; a fetch already in flight does not store. Returns how many were
    /// marked.
    pub async fn mark_stale(&self, key: &CacheKey, at: std::time::SystemTime) -> usize {
        self.bump_epoch(key);
        let on_disk = self
            .mark_disk_stale(key.hash().to_vec(), at, key.url())
            .await;
        // As in `invalidate`: disk first, then a second epoch, then memory, so that a promotion
        // of the unmarked record racing this either undoes itself or is marked here.
        self.bump_epoch(key);
        let in_memory = self.memory.rewrite(key.hash(), expired(at));
        in_memory.max(on_disk)
    }

    /// The URLs, each once, of stored responses tagged with one of `tags` (by `Surrogate-Key` or
    /// `Cache-Tag`). The memory tier is read once for all of them (a purge may name hundreds of
    /// tags, and each reading looks at every entry); the disk tier, which indexes its tags, is
    /// asked for each.
    pub async fn tagged(&self, tags: &[String]) -> Vec<String> {
        let wanted: std::collections::HashSet<String> = tags.iter().cloned().collect();
        let in_memory = move |entry: &StoredEntry| {
            crate::headers::stored_surrogate_keys(&entry.headers).any(|t| wanted.contains(t))
        };
        let on_disk = |disk: DiskTier| async move {
            let mut urls = Vec::new();
            for tag in tags {
                // One tag the disk tier fails to look up does not keep the others' from the purge.
                match disk.tagged(tag.clone()).await {
                    Ok(found) => urls.extend(found),
                    Err(err) => warn!(tag, %err, "disk tier lookup of what to purge failed"),
                }
            }
            Ok(urls)
        };
        self.urls_where(in_memory, on_disk, &tags.join(" ")).await
    }

    /// The URLs (as [`CacheKey::url`]) of stored responses whose path and query start with
    /// `prefix`, requested by http or by https. The disk tier reads every record it holds to find
    /// them.
    pub async fn urls_under(&self, prefix: &str) -> Vec<String> {
        let wanted = prefix.to_owned();
        let in_memory = move |entry: &StoredEntry| key::target_of(&entry.url).starts_with(&wanted);
        let on_disk = |disk: DiskTier| async move { disk.urls_under(prefix.to_owned()).await };
        self.urls_where(in_memory, on_disk, prefix).await
    }

    /// The URLs, each once, of the responses in memory for which `in_memory` holds and of those
    /// that `on_disk` finds on disk; `named` (a tag, a prefix) names them in a log line should
    /// the disk tier fail. Every entry in memory is looked at, off the runtime: a large memory
    /// tier would hold up a worker, and every request on it, for a good part of a second.
    async fn urls_where<F>(
        &self,
        in_memory: impl Fn(&StoredEntry) -> bool + Send + 'static,
        on_disk: impl FnOnce(DiskTier) -> F,
        named: &str,
    ) -> Vec<String>
    where
        F: Future<Output = Result<Vec<String>, disk::DiskError>>,
    {
        let memory = self.memory.clone();
        let scanned = tokio::task::spawn_blocking(move || memory.urls_where(in_memory)).await;
        let mut urls = scanned.unwrap_or_default();
        if let Some(disk) = &self.disk {
            match on_disk(disk.clone()).await {
                Ok(found) => urls.extend(found),
                Err(err) => warn!(named, %err, "disk tier lookup of what to purge failed"),
            }
        }
        urls.sort();
        urls.dedup();
        urls
    }

    /// Sizes and counters of both tiers; call [`Cache::settle`] first for current memory figures.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            memory: self.memory.stats(),
            disk: self.disk.as_ref().map(DiskTier::stats).unwrap_or_default(),
            integrity_failures: self.disk.as_ref().map_or(0, DiskTier::integrity_failures),
            disk_on: self.disk.as_ref().is_some_and(DiskTier::is_on),
            disk_failures: self.disk.as_ref().map_or(0, DiskTier::failures),
        }
    }

    pub fn settle(&self) {
        self.memory.settle();
    }

    /// Uses `heuristic` for responses read from disk from now on (a reload).
    pub fn set_heuristic(&self, heuristic: crate::config::HeuristicConfig) {
        if let Some(disk) = &self.disk {
            disk.set_heuristic(heuristic);
        }
    }

    /// Writes what the disk tier holds to disk, for a clean shutdown.
    pub async fn flush(&self) {
        if let Some(disk) = &self.disk
            && let Err(err) = disk.flush().await
        {
            warn!(%err, "flushing the disk tier failed");
        }
    }
}

/// A soft purge at `at`: the entry as it is, but stale from `at` on.
fn expired(at: std::time::SystemTime) -> impl Fn(&StoredEntry) -> StoredEntry {
    move |entry| {
        let mut entry = entry.clone();
        entry.freshness.expire(at);
        entry
    }
}

/// A response fetched before its URI (or a tag it carries) was purged or invalidated is not
/// stored: it may predate the change. Said, since its answer had already said `stored`.
fn not_stored_for_purge(key: &CacheKey) {
    info!(
        url = key.url(),
        "purged or invalidated while it was fetched; not storing it"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache of a 1 GiB memory tier and no disk tier.
    fn memory_only() -> Cache {
        Cache {
            memory: MemoryTier::new(1 << 30, 1 << 20),
            disk: None,
            epoch: AtomicU64::new(0),
            invalidated: Marks::new(MARKS),
            tags_purged: Marks::new(MARKS),
            prefixes_purged: PrefixMarks::new(),
        }
    }

    /// Stores a 200 of one byte for `url`, with `headers`, in `cache`'s memory tier.
    fn insert(cache: &Cache, url: String, headers: HeaderMap) {
        let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let key = CacheKey::from_text(url.clone());
        let entry = StoredEntry::new(
            url,
            http::StatusCode::OK,
            headers,
            key::Variance::default(),
            t,
            t,
            bytes::Bytes::from_static(b"x"),
            &crate::config::HeuristicConfig::default(),
        );
        cache.memory.insert(*key.hash(), Arc::new(entry));
    }

    /// Finding what a purge by prefix (or tag) names looks at every entry in memory: that is done
    /// off the runtime, which a large memory tier would otherwise hold up, every request on its
    /// worker waiting, for a good part of a second (200,000 entries: 0.16-0.23 s in a release
    /// build). A task spawned while it runs on the only worker is not kept waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_scan_of_the_memory_tier_for_a_purge_leaves_the_runtime_free() {
        let cache = Arc::new(memory_only());
        let entries = 100_000;
        for i in 0..entries {
            insert(&cache, format!("/s/{i}"), HeaderMap::new());
        }
        let scanning = cache.clone();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scan_done = done.clone();
        let scan = tokio::spawn(async move {
            let found = scanning.urls_under("/s/").await.len();
            scan_done.store(true, Ordering::SeqCst);
            found
        });
        // The test's own thread is no worker: it may block, where a timer would wait for the
        // worker.
        std::thread::sleep(Duration::from_millis(5));
        // A task spawned now runs while the scan goes on (100,000 entries: ~0.2 s here in a
        // debug build), not only once the scan has let go of the worker.
        let ran_during_the_scan = tokio::spawn(async move { !done.load(Ordering::SeqCst) });
        assert!(
            ran_during_the_scan.await.unwrap(),
            "a task waited for the scan"
        );
        assert!(scan.await.unwrap() > entries / 2);
    }

    /// A purge that names many tags reads the memory tier once, not once for each tag: a
    /// thousand tags against 100,000 entries took ~100 s in a release build that way (each
    /// reading 0.1 s), the purge's client long gone.
    #[tokio::test]
    async fn a_purge_of_many_tags_reads_the_memory_tier_once() {
        let cache = memory_only();
        let entries = 20_000;
        for i in 0..entries {
            let mut headers = HeaderMap::new();
            let tags = format!("all t{i}");
            headers.insert("surrogate-key", tags.parse().unwrap());
            insert(&cache, format!("/t/{i}"), headers);
        }
        let timed = async |tags: &[String]| {
            let started = std::time::Instant::now();
            let found = cache.tagged(tags).await;
            (found, started.elapsed())
        };
        let (all, one) = timed(&["all".to_owned()]).await;
        assert_eq!(all.len(), entries);
        let many: Vec<String> = (0..200).map(|i| format!("t{}", i * 7)).collect();
        let (found, took) = timed(&many).await;
        assert_eq!(found.len(), 200);
        assert!(found.contains(&"/t/7".to_owned()) && !found.contains(&"/t/8".to_owned()));
        // Once: about as long as one tag takes (200 readings would take 200 times as long).
        assert!(took < one * 20, "200 tags took {took:?}, one {one:?}");
    }

    /// Marks are bounded; one that went early still refuses what was fetched before it.
    #[test]
    fn invalidation_marks_are_bounded_and_forgetting_one_is_conservative() {
        let marks: Marks<u64, std::collections::hash_map::RandomState> = Marks::new(MARKS);
        // A fill begins at epoch 0; then an invalidation flood, each at an epoch of its own.
        for key in 1..=MARKS * 4 {
            marks.mark(key, key);
        }
        marks.marks.run_pending_tasks();
        assert!(
            marks.marks.entry_count() <= MARKS,
            "{} marks kept",
            marks.marks.entry_count()
        );
        // The first key's mark is gone: the fill begun before it must still not store.
        assert!(marks.marks.get(&1).is_none());
        assert!(marks.since(&1, 0));
        // A fetch begun after all of them stores; one begun before a kept mark does not.
        assert!(!marks.since(&1, MARKS * 4));
        assert!(marks.since(&(MARKS * 4), MARKS * 4 - 1));
        assert!(!marks.since(&(MARKS * 4), MARKS * 4));
    }

    /// URL prefix marks too, and a fetch begun after the latest of them looks at none.
    #[test]
    fn prefix_marks_are_bounded_and_forgetting_one_is_conservative() {
        let marks = PrefixMarks::new();
        assert!(!marks.since("/a", 0), "nothing purged yet");
        marks.mark("/static/".into(), 1);
        assert!(marks.since("/static/a", 0));
        assert!(!marks.since("/staticfoo", 0));
        assert!(!marks.since("/static/a", 1), "fetched since the purge");
        let last = 1 + PREFIX_MARKS as u64;
        for epoch in 2..=last {
            marks.mark(format!("/p{epoch}/"), epoch);
        }
        assert_eq!(crate::fill::lock(&marks.marks).len(), PREFIX_MARKS);
        // The first mark went: what was fetched before it is not stored, whatever its URL.
        assert!(marks.since("/static/a", 0));
        assert!(marks.since("/other", 0));
        assert!(!marks.since("/other", 1));
        assert!(marks.since(&format!("/p{last}/x"), last - 1));
        assert!(!marks.since(&format!("/p{last}/x"), last));
    }
}
