//! The disk tier: a sled index beside a directory of body files, behind a boundary that keeps
//! every call off the async runtime, holds a byte budget on the real footprint, and verifies every
//! read.
//!
//! ```text
//! <cache.disk.path>/index/   sled: records  key → seq:u64 | record
//!                                  order    seq → charged:u64 | file:u64 | key
//! <cache.disk.path>/bodies/  one file per body over 8 KiB: <hex key>-<hex seq>
//! ```
//!
//! Why files: sled 0.34's footprint, measured here, was 2.65× the data for 16 KiB values and
//! 5.84× for 1 MiB values (12.8× after deleting half of them), and it holds a value whole in
//! memory. Bodies up to 8 KiB stay inline in their record; larger ones are files, whose size on
//! disk is known exactly and freed the moment they are deleted (`cargo bench --bench disk`: 1.06
//! bytes on disk per stored byte for 16 KiB objects, 1.001 for 1 MiB).
//!
//! Crash safety: a body file is written under a temporary name and renamed into place before the
//! record that names it is committed; a record and its place in the eviction order change in one
//! sled transaction. After `kill -9`, a record may be missing (sled flushes every 500 ms) or its
//! file may be missing or cut short: both read as a miss, and a record that fails verification is
//! removed. Files that no record names are swept after start-up.
//!
//! Budget: every record is charged its bytes, its key, some bookkeeping and its body file rounded
//! up to whole 4 KiB blocks; sled's own overhead is measured as the index directory's allocated
//! size minus the record bytes it holds. When the sum goes over `cache.disk.capacity`, the oldest
//! stores are evicted until it is under 95% of it.

use std::io::{ErrorKind, Write};
use std::ops::Not;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{IVec, Transactional};
use tracing::{debug, error, warn};

use super::entry::{BodyRef, DecodeError, Decoded, Record, Spilled, StoredEntry};
use crate::config::HeuristicConfig;

/// Bodies larger than this live in files.
const INLINE_MAX: usize = 8 * 1024;
/// Files are charged in whole blocks of this size, as `du` counts them.
const BLOCK: u64 = 4096;
/// Bytes of bookkeeping charged per record besides the record and its key.
const OVERHEAD_PER_RECORD: u64 = 8 + 24;
/// A growing spool makes room for itself every this many bytes.
const SPOOL_EVICT_EVERY: u64 = 4 << 20;
/// Once over budget, evict down to this share of it.
const LOW_WATER_PERCENT: u64 = 95;
/// How often sled's own overhead is measured again.
const MEASURE_EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("body file: {0}")]
    Io(#[from] std::io::Error),
    #[error("disk task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the store has an older layout")]
    OldLayout,
    /// The record's body is large: read it off the runtime.
    #[error("large body")]
    Large,
}

impl From<TransactionError<sled::Error>> for DiskError {
    fn from(err: TransactionError<sled::Error>) -> Self {
        match err {
            TransactionError::Abort(e) | TransactionError::Storage(e) => DiskError::Sled(e),
        }
    }
}

#[derive(Clone)]
pub struct DiskTier {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    records: sled::Tree,
    order: sled::Tree,
    /// Surrogate keys: `tag 0x00 record key` for every stored response that carried the tag.
    /// Entries outlive their records; a tag purge checks each record and drops stale entries.
    tags: sled::Tree,
    /// Records marked stale by a soft purge: record key → the purge's time (ms since the epoch).
    soft: sled::Tree,
    /// Records held (responses and Vary markers).
    entries: AtomicU64,
    /// Records evicted to keep the budget.
    evictions: AtomicU64,
    index_dir: PathBuf,
    bodies: PathBuf,
    /// Σ charged bytes of every record (record, key, bookkeeping, rounded body file).
    charged: AtomicU64,
    /// Σ bytes of records held in sled (the part of `charged` not in files).
    in_index: AtomicU64,
    /// sled's allocated size beyond the record bytes it holds, as last measured.
    index_overhead: AtomicU64,
    measured: Mutex<Instant>,
    /// Records dropped because they failed verification.
    integrity_failures: AtomicU64,
    /// Body files verified since start-up, by the sequence number of their record (which names
    /// the file), with the length and modification time they had then.
    verified: moka::sync::Cache<u64, Stamp>,
    /// Bytes in spool files not yet committed: on disk, so in the budget.
    spooling: AtomicU64,
    capacity: u64,
    /// Bodies longer than this are served from their file rather than read into memory.
    stream_over: u64,
    heuristic: Mutex<HeuristicConfig>,
}

impl DiskTier {
    /// Opens the store at `path`. A store that cannot be opened is moved aside and replaced by
    /// an empty one; if even that fails, or another process holds the store, edge runs without a
    /// disk tier rather than not at all. Blocking: call it off the runtime.
    pub fn open(
        path: &Path,
        capacity: u64,
        stream_over: u64,
        heuristic: HeuristicConfig,
    ) -> Option<Self> {
        match Self::try_open(path, capacity, stream_over, heuristic) {
            Ok(tier) => return Some(tier),
            Err(err) if err.to_string().contains("could not acquire lock") => {
                error!(path = %path.display(), "disk tier is in use by another process; running with the memory tier only");
                return None;
            }
            Err(err) => {
                let aside = aside_path(path);
                error!(path = %path.display(), aside = %aside.display(), %err, "disk tier does not open; moving it aside and starting empty");
                if let Err(err) = std::fs::rename(path, &aside) {
                    error!(%err, "cannot move the broken disk tier aside; running with the memory tier only");
                    return None;
                }
            }
        }
        match Self::try_open(path, capacity, stream_over, heuristic) {
            Ok(tier) => Some(tier),
            Err(err) => {
                error!(path = %path.display(), %err, "cannot create a disk tier; running with the memory tier only");
                None
            }
        }
    }

    fn try_open(
        path: &Path,
        capacity: u64,
        stream_over: u64,
        heuristic: HeuristicConfig,
    ) -> Result<Self, DiskError> {
        // sled's own files directly under the path: the layout before body files.
        if path.join("conf").exists() {
            return Err(DiskError::OldLayout);
        }
        let index_dir = path.join("index");
        let bodies = path.join("bodies");
        std::fs::create_dir_all(&bodies)?;
        let db = sled::Config::new()
            .path(&index_dir)
            .cache_capacity(32 << 20)
            .flush_every_ms(Some(500))
            .open()?;
        let records = db.open_tree("records")?;
        let order = db.open_tree("order")?;
        let tags = db.open_tree("tags")?;
        let soft = db.open_tree("soft")?;
        let (mut charged, mut in_files, mut entries) = (0, 0, 0);
        for item in order.iter() {
            let (_, meta) = item?;
            let (size, file) = meta_sizes(&meta);
            charged += size;
            in_files += file;
            entries += 1;
        }
        let inner = Arc::new(Inner {
            db,
            records,
            order,
            tags,
            soft,
            entries: AtomicU64::new(entries),
            evictions: AtomicU64::new(0),
            index_dir,
            bodies,
            charged: AtomicU64::new(charged),
            in_index: AtomicU64::new(charged - in_files),
            index_overhead: AtomicU64::new(0),
            integrity_failures: AtomicU64::new(0),
            verified: moka::sync::Cache::new(1 << 20),
            spooling: AtomicU64::new(0),
            measured: Mutex::new(Instant::now() - MEASURE_EVERY),
            capacity,
            stream_over,
            heuristic: Mutex::new(heuristic),
        });
        inner.measure_index(true);
        let first_seq = inner.db.generate_id()?;
        sweep_orphans(Arc::downgrade(&inner), first_seq);
        Ok(Self { inner })
    }

    /// Reads and verifies the record at `key`, and its body file if it has one. A record that
    /// fails verification is removed and reported as absent.
    ///
    /// A record, and a body file up to `cache.memory.max_object_size`, is read on the calling
    /// thread, as nginx reads its cache files in its worker: on a warm node both are in the page
    /// cache (sled keeps its own), and a hop to the blocking pool and back cost more than the read
    /// (the blocking-pool hop took 24% of a core in context switches under a pass-through load).
    /// Larger bodies, whose verification reads the whole file, go to the blocking pool.
    pub async fn get(&self, key: Vec<u8>) -> Result<Option<Record>, DiskError> {
        match self.inner.get(&key, false) {
            Err(DiskError::Large) => {
                let inner = self.inner.clone();
                tokio::task::spawn_blocking(move || inner.get(&key, true)).await?
            }
            other => other,
        }
    }

    /// Stores `record` at `key`, replacing any older record, then evicts the oldest records until
    /// the tier is within its byte budget.
    pub async fn put(&self, key: Vec<u8>, record: Record) -> Result<(), DiskError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.put(&key, &record)).await?
    }

    /// Removes every record whose key starts with `prefix` (a URI and all its variants).
    pub async fn remove_prefix(&self, prefix: Vec<u8>) -> Result<(), DiskError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            for key in inner.records.scan_prefix(&prefix).keys() {
                inner.remove(&key?, None)?;
            }
            Ok(())
        })
        .await?
    }

    /// Writes everything stored so far to disk, then holds the budget again: a flush is when
    /// sled's files grow.
    pub async fn flush(&self) -> Result<(), DiskError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.db.flush()?;
            inner.measure_index(true);
            inner.evict_to_budget()
        })
        .await?
    }

    /// The tier's footprint as the budget counts it.
    pub fn footprint(&self) -> u64 {
        self.inner.footprint()
    }

    /// Starts a body file for `key` that a response streams into while it is served; see
    /// [`Spool`]. Blocking: call it off the runtime.
    pub fn spool(&self, key: Vec<u8>) -> Result<Spool, DiskError> {
        let seq = self.inner.db.generate_id()?.to_be_bytes();
        let partial = self.inner.body_path(&key, &seq).with_extension("partial");
        let file = std::fs::File::create(&partial)?;
        let reader = Arc::new(std::fs::File::open(&partial)?);
        let tier = self.clone();
        Ok(Spool {
            tier,
            seq,
            partial,
            file,
            reader,
            hasher: blake3::Hasher::new(),
            len: 0,
        })
    }

    /// How many records were dropped because they failed verification.
    pub fn integrity_failures(&self) -> u64 {
        self.inner.integrity_failures.load(Ordering::Relaxed)
    }

    /// Records held, footprint, and evictions since start-up.
    pub fn stats(&self) -> super::TierStats {
        super::TierStats {
            entries: self.inner.entries.load(Ordering::Relaxed),
            bytes: self.inner.footprint(),
            evictions: self.inner.evictions.load(Ordering::Relaxed),
        }
    }

    /// Removes every record whose key starts with `prefix` (a URI and all its variants); returns
    /// how many responses (not Vary markers) went.
    pub async fn purge(&self, prefix: Vec<u8>) -> Result<usize, DiskError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut responses = 0;
            for item in inner.records.scan_prefix(&prefix) {
                let (key, value) = item?;
                if is_response(&value) {
                    responses += 1;
                }
                inner.remove(&key, None)?;
            }
            Ok(responses)
        })
        .await?
    }

    /// Marks every response stored under `prefix` stale as of `at`, until it is replaced: its
    /// next use revalidates it (a soft purge). Returns how many were marked.
    pub async fn mark_stale(&self, prefix: Vec<u8>, at: SystemTime) -> Result<usize, DiskError> {
        let inner = self.inner.clone();
        let at = millis(at).to_be_bytes();
        tokio::task::spawn_blocking(move || {
            let mut marked = 0;
            for item in inner.records.scan_prefix(&prefix) {
                let (key, value) = item?;
                if is_response(&value) {
                    inner.soft.insert(key, &at)?;
                    marked += 1;
                }
            }
            Ok(marked)
        })
        .await?
    }

    /// The keys (as [`super::key::CacheKey::url`]) of stored responses that carry the surrogate
    /// key `tag`.
    pub async fn tagged(&self, tag: String) -> Result<Vec<String>, DiskError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut keys = Vec::new();
            let prefix = tag_prefix(&tag);
            for item in inner.tags.scan_prefix(&prefix) {
                let (row, url) = item?;
                let Some(split) = row.len().checked_sub(8).filter(|&at| at >= prefix.len()) else {
                    continue;
                };
                let (record_key, seq) = (&row[prefix.len()..split], &row[split..]);
                let current = inner.records.get(record_key)?;
                if current.as_ref().and_then(|value| value.get(..8)) == Some(seq) {
                    keys.push(String::from_utf8_lossy(&url).into_owned());
                } else {
                    // The record it was made for is gone (a crash between the two writes).
                    inner.tags.remove(&row)?;
                }
            }
            Ok(keys)
        })
        .await?
    }

    /// Applies a new heuristic configuration to records read from now on.
    pub fn set_heuristic(&self, heuristic: HeuristicConfig) {
        *self
            .inner
            .heuristic
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = heuristic;
    }
}

impl Inner {
    fn footprint(&self) -> u64 {
        self.charged.load(Ordering::Relaxed)
            + self.index_overhead.load(Ordering::Relaxed)
            + self.spooling.load(Ordering::Relaxed)
    }

    fn heuristic(&self) -> HeuristicConfig {
        *self.heuristic.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &[u8], large: bool) -> Result<Option<Record>, DiskError> {
        let record = self.get_verified(key, large)?;
        let Some(Record::Entry(mut entry)) = record else {
            return Ok(record);
        };
        if let Some(at) = self.soft.get(key)? {
            let at = at.as_ref().try_into().map_or(0, u64::from_be_bytes);
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(at);
            Arc::make_mut(&mut entry).freshness.expire(at);
        }
        Ok(Some(Record::Entry(entry)))
    }

    fn get_verified(&self, key: &[u8], large: bool) -> Result<Option<Record>, DiskError> {
        let Some(value) = self.records.get(key)? else {
            return Ok(None);
        };
        let decoded = match value.get(8..) {
            // The body is a slice of sled's buffer, not a copy.
            Some(_) => Record::decode(
                Bytes::from_owner(value.clone()).slice(8..),
                &self.heuristic(),
            ),
            None => Err(DecodeError::Truncated),
        };
        let failure = match decoded {
            Ok(Decoded::Record(record)) => return Ok(Some(record)),
            Ok(Decoded::BodyElsewhere(_, body_ref))
                if body_ref.len > self.stream_over && !large =>
            {
                return Err(DiskError::Large);
            }
            Ok(Decoded::BodyElsewhere(entry, body_ref)) if body_ref.len > self.stream_over => {
                let path = self.body_path(key, &value[..8]);
                match verified_file(&path, seq_of(&value), body_ref, &self.verified) {
                    Ok(Some(file)) => {
                        let mut entry = *entry;
                        entry.spilled = Some(Spilled {
                            file: Arc::new(file),
                            len: body_ref.len,
                        });
                        return Ok(Some(Record::Entry(Arc::new(entry))));
                    }
                    Ok(None) => "its body file does not match it".into(),
                    Err(err) if err.kind() == ErrorKind::NotFound => {
                        if self.replaced_since(key, &value)? {
                            return Ok(None);
                        }
                        "its body file is missing".into()
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            Ok(Decoded::BodyElsewhere(entry, body_ref)) => {
                let path = self.body_path(key, &value[..8]);
                match read_body(&path) {
                    Ok((body, stamp)) => {
                        // A body file read and verified since start-up, unchanged since (same
                        // length and modification time), is not hashed again.
                        let seq = seq_of(&value);
                        let seen = self.verified.get(&seq).is_some_and(|known| known == stamp);
                        let attached = if seen {
                            entry.attach_verified(Bytes::from(body), body_ref)
                        } else {
                            entry.attach(Bytes::from(body), body_ref)
                        };
                        match attached {
                            Ok(entry) => {
                                if !seen {
                                    self.verified.insert(seq, stamp);
                                }
                                return Ok(Some(Record::Entry(Arc::new(entry))));
                            }
                            Err(err) => err.to_string(),
                        }
                    }
                    Err(err) if err.kind() == ErrorKind::NotFound => {
                        if self.replaced_since(key, &value)? {
                            return Ok(None);
                        }
                        "its body file is missing".into()
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            Err(err) => err.to_string(),
        };
        warn!(key = %hex(key), %failure, "dropping a disk record that fails verification");
        self.integrity_failures.fetch_add(1, Ordering::Relaxed);
        self.remove(key, Some(&value))?;
        Ok(None)
    }

    /// Whether the record at `key` is no longer `value`: replaced, evicted or removed since it
    /// was read (its body file may be gone for that reason alone).
    fn replaced_since(&self, key: &[u8], value: &IVec) -> Result<bool, DiskError> {
        Ok(self.records.get(key)?.as_ref() != Some(value))
    }

    fn put(&self, key: &[u8], record: &Record) -> Result<(), DiskError> {
        let seq = self.db.generate_id()?.to_be_bytes();
        let body = match record {
            Record::Entry(entry) if entry.body.len() > INLINE_MAX => Some(&entry.body),
            _ => None,
        };
        let encoded = record.encode(body.is_none());
        let file = body.map_or(0, |body| rounded(body.len() as u64));
        if self.charge(key, &encoded, file) > self.capacity {
            return Ok(());
        }
        if let Record::Entry(entry) = record {
            self.index_tags(key, &seq, entry)?;
        }
        if let Some(body) = body {
            self.write_body(key, &seq, body)?;
        }
        self.commit(key, &seq, &encoded, file)
    }

    /// Records the response's surrogate keys (`tag 0x00 record key seq` → the key's URL), before
    /// its record is committed: a row without its record is harmless, a record missing from the
    /// index would escape a tag purge. Rows go with their record, in [`Inner::forget`].
    fn index_tags(&self, key: &[u8], seq: &[u8], entry: &StoredEntry) -> Result<(), DiskError> {
        for tag in crate::headers::stored_surrogate_keys(&entry.headers) {
            self.tags
                .insert(tag_row(tag, key, seq), entry.url.as_bytes())?;
        }
        Ok(())
    }

    /// Drops a soft-purge mark left for a record that is gone. Soft purges are rare: the mark
    /// tree is empty almost always, and stores do not write to it then.
    fn unmark(&self, key: &[u8]) -> Result<(), DiskError> {
        if !self.soft.is_empty() {
            self.soft.remove(key)?;
        }
        Ok(())
    }

    /// Deletes the tag rows of a record that left the index.
    fn unindex_tags(&self, key: &[u8], value: &IVec) {
        if !is_response(value) {
            return;
        }
        let Some(record) = value.get(8..) else { return };
        let entry = match Record::decode(Bytes::copy_from_slice(record), &self.heuristic()) {
            Ok(Decoded::Record(Record::Entry(entry))) => entry,
            Ok(Decoded::BodyElsewhere(entry, _)) => Arc::new(*entry),
            // A record that does not decode indexed nothing that can be found again.
            _ => return,
        };
        for tag in crate::headers::stored_surrogate_keys(&entry.headers) {
            if let Err(err) = self.tags.remove(tag_row(tag, key, &value[..8])) {
                warn!(%err, "cannot delete a tag index row");
            }
        }
    }

    /// What a record of `encoded` bytes with a body file of `file` bytes is charged.
    fn charge(&self, key: &[u8], encoded: &[u8], file: u64) -> u64 {
        encoded.len() as u64 + key.len() as u64 + OVERHEAD_PER_RECORD + file
    }

    /// Commits a record (its body file, if any, already in place), accounts for it and for the
    /// record it replaces, and evicts down to the budget.
    fn commit(
        &self,
        key: &[u8],
        seq: &[u8; 8],
        encoded: &[u8],
        file: u64,
    ) -> Result<(), DiskError> {
        let size = self.charge(key, encoded, file);
        let mut value = Vec::with_capacity(8 + encoded.len());
        value.extend_from_slice(seq);
        value.extend_from_slice(encoded);
        let value = IVec::from(value);
        let mut meta = Vec::with_capacity(16 + key.len());
        meta.extend_from_slice(&size.to_be_bytes());
        meta.extend_from_slice(&file.to_be_bytes());
        meta.extend_from_slice(key);
        let committed = (&self.records, &self.order).transaction(|(records, order)| {
            let old = records.insert(key, value.clone())?;
            let released = release_order(order, old.as_ref())?;
            order.insert(seq, meta.as_slice())?;
            Ok(released.zip(old))
        });
        let replaced = match committed {
            Ok(replaced) => replaced,
            Err(err) => {
                if file > 0 {
                    let _ = std::fs::remove_file(self.body_path(key, seq));
                }
                return Err(err.into());
            }
        };
        self.charged.fetch_add(size, Ordering::Relaxed);
        self.in_index.fetch_add(size - file, Ordering::Relaxed);
        self.entries.fetch_add(1, Ordering::Relaxed);
        // A soft purge marked the response this one replaces, not this one. (A soft purge racing
        // this store is settled by the cache's invalidation epochs, which remove a response
        // fetched before it.)
        self.unmark(key)?;
        if let Some((sizes, old)) = replaced {
            self.forget(key, &old, sizes);
        }
        self.evict_to_budget()
    }

    /// Writes a body file under a temporary name, then renames it into place.
    fn write_body(&self, key: &[u8], seq: &[u8], body: &[u8]) -> Result<(), DiskError> {
        let path = self.body_path(key, seq);
        let partial = path.with_extension("partial");
        let written = std::fs::File::create(&partial)
            .and_then(|mut file| file.write_all(body))
            .and_then(|()| std::fs::rename(&partial, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        Ok(written?)
    }

    fn body_path(&self, key: &[u8], seq: &[u8]) -> PathBuf {
        let mut name = String::with_capacity(2 * (key.len() + seq.len()) + 1);
        push_hex(&mut name, key);
        name.push('-');
        push_hex(&mut name, seq);
        self.bodies.join(name)
    }

    /// Accounts for the record `value` leaving the index, and deletes its body file and tag rows.
    fn forget(&self, key: &[u8], value: &IVec, (size, file): (u64, u64)) {
        let seq = value.get(..8).unwrap_or_default();
        self.unindex_tags(key, value);
        release(&self.charged, size);
        release(&self.in_index, size - file);
        release(&self.entries, 1);
        if file > 0
            && let Err(err) = std::fs::remove_file(self.body_path(key, seq))
            && err.kind() != ErrorKind::NotFound
        {
            warn!(key = %hex(key), %err, "cannot delete a body file");
        }
    }

    fn evict_to_budget(&self) -> Result<(), DiskError> {
        self.measure_index(false);
        if self.footprint() <= self.capacity {
            return Ok(());
        }
        // Down to a low-water mark, so that sled's own growth (its log, a flush) stays inside the
        // budget and eviction does not run on every store.
        let low_water = self.capacity / 100 * LOW_WATER_PERCENT;
        // sled gives space back lazily: measure again as records go, and stop when what is over
        // is sled's own overhead (or spools in flight), which evicting more records cannot cure.
        while self.footprint() > low_water && self.charged.load(Ordering::Relaxed) > 0 {
            self.measure_index(false);
            let beyond_records =
                self.index_overhead.load(Ordering::Relaxed) + self.spooling.load(Ordering::Relaxed);
            if beyond_records >= low_water {
                break;
            }
            let Some((seq, meta)) = self.order.first()? else {
                break;
            };
            let key = meta.get(16..).unwrap_or_default().to_vec();
            // Another thread may evict or replace the same record meanwhile: only the one whose
            // transaction removed the order entry accounts for it.
            let evicted = (&self.records, &self.order).transaction(|(records, order)| {
                if order.remove(&seq)?.is_none() {
                    return Ok(None);
                }
                let current = records.get(&key)?;
                if current.as_ref().and_then(|c| c.get(..8)) == Some(&seq[..]) {
                    records.remove(key.as_slice())?;
                    return Ok(current);
                }
                // Its record was removed already; account for the bytes all the same.
                let mut gone = seq.to_vec();
                gone.extend_from_slice(b"---");
                Ok::<_, ConflictableTransactionError<sled::Error>>(Some(IVec::from(gone)))
            })?;
            if let Some(value) = evicted {
                self.unmark(&key)?;
                self.evictions.fetch_add(1, Ordering::Relaxed);
                self.forget(&key, &value, meta_sizes(&meta));
            }
        }
        Ok(())
    }

    /// Removes the record at `key` — only if it is still `expected`, when given.
    fn remove(&self, key: &[u8], expected: Option<&IVec>) -> Result<(), DiskError> {
        let removed = (&self.records, &self.order).transaction(|(records, order)| {
            let current = records.get(key)?;
            if expected.is_some() && current.as_ref() != expected {
                return Ok(None);
            }
            let Some(current) = current else {
                return Ok(None);
            };
            records.remove(key)?;
            Ok(release_order(order, Some(&current))?.map(|sizes| (sizes, current)))
        })?;
        if let Some((sizes, value)) = removed {
            self.unmark(key)?;
            self.forget(key, &value, sizes);
        }
        Ok(())
    }

    /// Measures sled's own overhead again: at most once per [`MEASURE_EVERY`] unless `now`.
    fn measure_index(&self, now: bool) {
        {
            let mut measured = self.measured.lock().unwrap_or_else(|p| p.into_inner());
            if !now && measured.elapsed() < MEASURE_EVERY {
                return;
            }
            *measured = Instant::now();
        }
        let allocated = allocated_size(&self.index_dir);
        let overhead = allocated.saturating_sub(self.in_index.load(Ordering::Relaxed));
        self.index_overhead.store(overhead, Ordering::Relaxed);
    }
}

/// A body being written to its file while it streams to clients, who read it back from the file
/// (by offset, through [`Spool::reader`]) instead of from memory. [`Spool::commit`] renames it
/// into place and commits its record; dropping a spool without committing deletes the file.
pub struct Spool {
    tier: DiskTier,
    seq: [u8; 8],
    partial: PathBuf,
    file: std::fs::File,
    reader: Arc<std::fs::File>,
    hasher: blake3::Hasher,
    len: u64,
}

impl Spool {
    /// Appends a chunk, keeping the tier within its budget meanwhile. Blocking.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), DiskError> {
        self.file.write_all(chunk)?;
        self.hasher.update(chunk);
        let before = self.len;
        self.len += chunk.len() as u64;
        let inner = &self.tier.inner;
        inner
            .spooling
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if before / SPOOL_EVICT_EVERY != self.len / SPOOL_EVICT_EVERY {
            inner.evict_to_budget()?;
        }
        Ok(())
    }

    /// A handle to read what has been written so far; it stays valid after the file is renamed,
    /// evicted or deleted.
    pub fn reader(&self) -> Arc<std::fs::File> {
        self.reader.clone()
    }

    /// The body written so far, as a record would describe it.
    pub fn body_ref(&self) -> BodyRef {
        BodyRef {
            len: self.len,
            checksum: *self.hasher.finalize().as_bytes(),
        }
    }

    /// Stores `entry` at `key`, its body being what was written here. Blocking.
    pub fn commit(self, key: Vec<u8>, entry: &StoredEntry) -> Result<(), DiskError> {
        let inner = self.tier.inner.clone();
        let encoded = entry.encode_detached(self.body_ref());
        let file = rounded(self.len);
        if inner.charge(&key, &encoded, file) > inner.capacity {
            return Ok(());
        }
        inner.index_tags(&key, &self.seq, entry)?;
        std::fs::rename(&self.partial, inner.body_path(&key, &self.seq))?;
        let seq = self.seq;
        drop(self);
        inner.commit(&key, &seq, &encoded, file)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        release(&self.tier.inner.spooling, self.len);
        // Committed spools were renamed away; anything else is abandoned.
        let _ = std::fs::remove_file(&self.partial);
    }
}

/// What identifies one version of a file: its length and modification time.
type Stamp = (u64, i64, i64);

/// A body file's bytes and its [`Stamp`], from one open file.
fn read_body(path: &Path) -> std::io::Result<(Vec<u8>, Stamp)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let mut body = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut body)?;
    Ok((body, (meta.len(), meta.mtime(), meta.mtime_nsec())))
}

/// Opens a body file and checks it against its record, reading it in blocks rather than whole;
/// `None` if it does not match.
/// A file verified before and unchanged since (see `Inner::verified`) is not read again here.
fn verified_file(
    path: &Path,
    seq: u64,
    expected: BodyRef,
    verified: &moka::sync::Cache<u64, Stamp>,
) -> std::io::Result<Option<std::fs::File>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if meta.len() != expected.len {
        return Ok(None);
    }
    let stamp = (meta.len(), meta.mtime(), meta.mtime_nsec());
    if verified.get(&seq).is_some_and(|known| known == stamp) {
        return Ok(Some(file));
    }
    let mut hasher = blake3::Hasher::new();
    let mut block = vec![0; 1 << 20];
    loop {
        let read = file.read(&mut block)?;
        if read == 0 {
            break;
        }
        hasher.update(&block[..read]);
    }
    let matches = *hasher.finalize().as_bytes() == expected.checksum;
    if matches {
        verified.insert(seq, stamp);
    }
    Ok(matches.then_some(file))
}

/// Removes the order entry of a replaced or removed record, inside the caller's transaction, and
/// returns its charged sizes — only if the entry was still there: an eviction that got to it
/// first has accounted for it already.
fn release_order(
    order: &TransactionalTree,
    old: Option<&IVec>,
) -> Result<Option<(u64, u64)>, ConflictableTransactionError<sled::Error>> {
    let Some(old_seq) = old.and_then(|old| old.get(..8)) else {
        return Ok(None);
    };
    Ok(order.remove(old_seq)?.map(|meta| meta_sizes(&meta)))
}

/// The charged size and the body-file part of it, from an `order` value.
fn meta_sizes(meta: &IVec) -> (u64, u64) {
    let read = |range: std::ops::Range<usize>| {
        meta.get(range)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    };
    let (size, file) = (read(0..8), read(8..16));
    (size, file.min(size))
}

/// Whether a record value (sequence number, then record) holds a response, not a Vary marker.
fn is_response(value: &[u8]) -> bool {
    value.get(8..11) == Some(b"EDG")
}

fn tag_row(tag: &str, key: &[u8], seq: &[u8]) -> Vec<u8> {
    let mut row = tag_prefix(tag);
    row.extend_from_slice(key);
    row.extend_from_slice(seq);
    row
}

fn tag_prefix(tag: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(tag.len() + 1 + 64);
    prefix.extend_from_slice(tag.as_bytes());
    prefix.push(0);
    prefix
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn release(counter: &AtomicU64, size: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
        Some(b.saturating_sub(size))
    });
}

fn rounded(len: u64) -> u64 {
    len.div_ceil(BLOCK) * BLOCK
}

/// The bytes allocated to the files under `dir`, as `du` counts them.
fn allocated_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => pending.push(entry.path()),
                Ok(meta) => total += meta.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

/// Deletes body files no record names, left by a crash between writing a file and committing its
/// record, or between replacing a record and deleting its old file. Only files from before this
/// start (sequence numbers below `first_seq`; sled's ids only grow, across crashes too) are
/// considered, so nothing this run is writing can be taken for an orphan. Runs beside the server
/// and stops when the tier closes.
fn sweep_orphans(tier: Weak<Inner>, first_seq: u64) {
    let spawned = std::thread::Builder::new()
        .name("edge-disk-sweep".into())
        .spawn(move || {
            let Some(bodies) = tier.upgrade().map(|inner| inner.bodies.clone()) else {
                return;
            };
            let Ok(entries) = std::fs::read_dir(&bodies) else {
                return;
            };
            let mut swept = 0;
            for entry in entries.flatten() {
                let Some(inner) = tier.upgrade() else { return };
                let name = entry.file_name().to_string_lossy().into_owned();
                let name = name.strip_suffix(".partial").unwrap_or(&name);
                let Some((key, seq)) = name
                    .split_once('-')
                    .and_then(|(k, s)| Some((unhex(k)?, unhex(s)?)))
                else {
                    continue;
                };
                let Ok(seq_bytes) = <[u8; 8]>::try_from(seq.as_slice()) else {
                    continue;
                };
                if u64::from_be_bytes(seq_bytes) >= first_seq {
                    continue;
                }
                let referenced = entry
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".partial")
                    .not()
                    && inner
                        .records
                        .get(&key)
                        .ok()
                        .flatten()
                        .is_some_and(|value| value.get(..8) == Some(&seq_bytes[..]));
                if !referenced && std::fs::remove_file(entry.path()).is_ok() {
                    swept += 1;
                }
            }
            if swept > 0 {
                debug!(swept, "deleted body files no record names");
            }
        });
    if let Err(err) = spawned {
        warn!(%err, "cannot start the body-file sweep");
    }
}

fn aside_path(path: &Path) -> PathBuf {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".broken-{stamp}"));
    path.with_file_name(name)
}

/// The sequence number a record value starts with.
fn seq_of(value: &[u8]) -> u64 {
    value
        .get(..8)
        .and_then(|seq| seq.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.extend(
        bytes.iter().flat_map(|&b| {
            [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]].map(char::from)
        }),
    );
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tag_index_tests {
    use super::*;
    use crate::cache::entry::StoredEntry;
    use crate::cache::key::Variance;
    use http::{HeaderMap, HeaderValue, StatusCode};

    /// Evicted records take their tag rows with them: per-object tags do not grow the index.
    #[test]
    fn tag_rows_go_with_evicted_records() {
        let dir = tempfile::TempDir::new().unwrap();
        let tier =
            DiskTier::open(dir.path(), 32 << 20, 8 << 20, HeuristicConfig::default()).unwrap();
        let now = SystemTime::now();
        for i in 0..3000u32 {
            let mut headers = HeaderMap::new();
            headers.insert("cache-control", HeaderValue::from_static("max-age=600"));
            headers.insert(
                "surrogate-key",
                HeaderValue::from_str(&format!("product-{i} all")).unwrap(),
            );
            let entry = StoredEntry::new(
                format!("http://o/{i}"),
                StatusCode::OK,
                headers,
                Variance::default(),
                now,
                now,
                Bytes::from(vec![b'x'; 64 * 1024]),
                &HeuristicConfig::default(),
            );
            let key = blake3::hash(format!("http://o/{i}").as_bytes())
                .as_bytes()
                .to_vec();
            tier.inner
                .put(&key, &Record::Entry(Arc::new(entry)))
                .unwrap();
        }
        let records = tier.inner.records.len();
        let tags = tier.inner.tags.len();
        assert!(tier.inner.evictions.load(Ordering::Relaxed) > 1000);
        assert_eq!(tags, 2 * records, "tag rows {tags} for {records} records");
    }
}
