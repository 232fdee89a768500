//! The disk tier: body files that carry their own record, beside a sled index for small records,
//! behind a boundary that keeps every call off the async runtime, holds a byte budget on the real
//! footprint, and verifies what it reads: each record and body file the first time it is read
//! after a start-up, and a body file again whenever its length or modification time changes.
//!
//! ```text
//! <cache.disk.path>/layout   "edge disk 3": what is in the directory
//! <cache.disk.path>/index/   sled: records  key → seq:u64 | record   (inline bodies, Vary markers)
//!                                  tags     tag 0x00 key seq → URL
//!                                  soft     key → time of a soft purge
//! <cache.disk.path>/bodies/  one file per response whose body is over 8 KiB: <hex key>-<hex seq>
//!                            holding  body | record | record_len:u32 | "EDGT"
//! <cache.disk.path>/places   (seq:u64, place:u64)*: the records moved in the eviction order,
//!                            written at a clean shutdown, read and deleted at start-up
//! ```
//!
//! Why files: sled 0.34's footprint, measured here, was 2.65× the data for 16 KiB values and
//! 5.84× for 1 MiB values (12.8× after deleting half of them), and it holds a value whole in
//! memory. Bodies up to 8 KiB stay inline in their record; larger ones are files, whose size on
//! disk is known exactly and freed the moment they are deleted (`cargo bench --bench disk`: 1.06
//! bytes on disk per stored byte for 16 KiB objects, 1.001 for 1 MiB).
//!
//! Why a file holds its own record: every sled write left 0.5–0.7 KB resident in edge's memory per
//! object, whatever the value's size or sled's settings (`bench/run.sh` memory), so a response
//! with a body file is not in sled at all. Which keys have a file, and every record's place in
//! the eviction order with its charged size, are held in memory (~150 bytes per record) and
//! rebuilt at start-up from the index and the file names; the records in files are checked in the
//! background after that, and any that does not verify is dropped.
//!
//! Crash safety: a body file is written under a temporary name and renamed into place when it is
//! whole, which is when its response is stored; the record it replaces goes after that. After
//! `kill -9`, a record may be missing (sled flushes every 500 ms), or two records for one key may
//! be left: start-up keeps the newer (sled's ids only grow, across crashes too) and deletes
//! temporary files. A record or file that fails verification reads as a miss and is removed.
//!
//! Budget: every record is charged its bytes, its key, some bookkeeping and its body file rounded
//! up to whole 4 KiB blocks; sled's own overhead is measured as the index directory's allocated
//! size minus the record bytes it holds. When the sum goes over `cache.disk.capacity`, the oldest
//! stores are evicted until it is under 95% of it; a record whose response the memory tier holds
//! is moved to the back instead. The moves are written to `places` at a clean shutdown, so that a
//! restart, which empties memory, finds the records where they were (after a crash, in the
//! order of their stores).

use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Write};
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use sled::IVec;
use tracing::{debug, error, info, warn};

use super::entry::{BodyRef, DecodeError, Decoded, Record, Spilled, StoredEntry};
use crate::config::HeuristicConfig;
use crate::fill::lock;

/// What `layout` holds for the layout this code reads and writes.
const LAYOUT: &str = "edge disk 3\n";
/// Stripes of [`Inner::verifying`].
const VERIFY_STRIPES: usize = 64;
/// The most records in the index remembered as verified (by moka's figure of ~150–190 bytes an
/// entry, up to ~25 MB); the least used beyond that are hashed again when next read.
const CHECKED_RECORDS: u64 = 1 << 17;
/// Bodies larger than this live in files.
const INLINE_MAX: usize = 8 * 1024;
/// So do records whose headers (and the request values a variant was chosen by) make them larger
/// than this, whatever their body: sled holds large values in memory well past its cache's size
/// (a 1-byte body under 55 KB of headers, 10,000 times: 793 MB resident, against 45 MB as files).
const RECORD_INLINE_MAX: u32 = 16 * 1024;
/// Files are charged in whole blocks of this size, as `du` counts them.
const BLOCK: u64 = 4096;
/// Bytes of bookkeeping charged per record besides the record and its key.
const OVERHEAD_PER_RECORD: u64 = 8 + 24;
/// The end of a body file: the length of the record before it, and this.
const TRAILER_MAGIC: &[u8; 4] = b"EDGT";
const TRAILER: u64 = 8;
/// The longest record a body file may end with (a header section is far smaller).
const RECORD_MAX: u64 = 16 << 20;
/// How much of a body file's end is read at once to find its record.
const TAIL_READ: u64 = 2048;
/// A growing spool makes room for itself every this many bytes.
const SPOOL_EVICT_EVERY: u64 = 4 << 20;
/// Once over budget, evict down to this share of it.
const LOW_WATER_PERCENT: u64 = 95;
/// How often sled's own overhead is measured again.
const MEASURE_EVERY: Duration = Duration::from_millis(20);
/// Removals noted for a store that may have missed them; past this, a reopened store starts
/// empty.
const JOURNAL_MAX: usize = 10_000;
/// How often the store is flushed while removals are noted.
const JOURNAL_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long after a failed store it is first opened again, and at most between attempts.
const REOPEN_FIRST: Duration = Duration::from_secs(1);
const REOPEN_MAX: Duration = Duration::from_secs(30);
/// Free space that a failed store is reopened with (its budget then evicts down to
/// `min_free`, which it cannot while it is closed).
const REOPEN_ROOM: u64 = 16 << 20;
/// Rounds of removals noted while a store is reopened that are made without the journal's lock.
const REOPEN_ROUNDS: usize = 3;
/// A store that fails again this soon after it was reopened waits longer to be reopened.
const REOPEN_STABLE: Duration = Duration::from_secs(60);
/// What `layout` is renamed to while the tier is off and the store misses removals: a store
/// found so at start-up starts empty.
const OFF_MARK: &str = "layout.off";

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
    #[error("no room: the body is larger than the disk tier may hold now")]
    NoRoom,
    #[error("the disk tier is off until its store can be opened again")]
    Off,
}

#[derive(Clone)]
pub struct DiskTier {
    shared: Arc<Shared>,
}

/// The tier across reopenings of its store.
///
/// sled takes no write at all once one has failed (a full file system, a failing disk), until
/// it is opened again. The tier is then off: every lookup is a miss and nothing is stored,
/// because a purge made meanwhile cannot reach the store, and a response it still holds must not
/// be served after its purge. A thread opens the store again once its file system has room, and
/// makes there every removal the store may have missed (the [`Journal`]) before it is used.
struct Shared {
    /// The open store, or `None` while the tier is off.
    store: RwLock<Option<Arc<Inner>>>,
    settings: Settings,
    heuristic: Mutex<HeuristicConfig>,
    journal: Mutex<Journal>,
    lasting: Arc<Lasting>,
    /// How many times the tier went off.
    failures: AtomicU64,
    /// When the store was last reopened, and how long the last reopening waited at first: a
    /// store that fails again soon after is tried again less often.
    backoff: Mutex<(Option<Instant>, Duration)>,
}

/// What a store is opened with.
struct Settings {
    path: PathBuf,
    capacity: u64,
    min_free: u64,
    stream_over: u64,
}

/// What goes on across reopenings of the store.
#[derive(Default)]
struct Lasting {
    /// Records evicted to keep the budget.
    evictions: AtomicU64,
    /// Records dropped because they failed verification.
    integrity_failures: AtomicU64,
    /// Whether the memory tier holds a record's response ([`DiskTier::keep_in_memory_ones`]).
    in_memory: std::sync::OnceLock<InMemory>,
}

/// Whether the memory tier holds the response of the record at a key.
type InMemory = Box<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// The most records moved to the back of the order, because the memory tier holds their
/// responses, before one is evicted whatever holds it: a memory tier that holds all the disk tier
/// does cannot make an eviction walk the whole order.
const KEEP_AT_MOST: usize = 16;

/// The removals (purges, invalidations) that the store may not hold durably: each is noted once
/// it has been made (or has failed), and forgotten once a flush that began after it succeeds.
/// While the tier is off, they are all it has of each one.
#[derive(Default)]
struct Journal {
    /// Each removal, with the number of its latest noting.
    removals: HashMap<Removal, u64>,
    next: u64,
    /// More removals were noted than are kept, every one dropped numbered below this: unless a
    /// flush begun after it succeeds, the reopened store starts empty.
    overflowed: Option<u64>,
    /// The store is marked as missing removals ([`OFF_MARK`]), so that edge, started again
    /// before the store is reopened, starts it empty.
    marked: bool,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Removal {
    /// Every record whose key starts with these bytes.
    Prefix(Vec<u8>),
    /// Every record tagged so.
    Tag(String),
    /// Every record whose URL ([`super::key::CacheKey::url`]) starts with this.
    UrlPrefix(String),
}

struct Inner {
    db: sled::Db,
    /// Records whose body is inline, and Vary markers: key → seq | record.
    records: sled::Tree,
    /// Surrogate keys: `tag 0x00 record key seq` → URL for every stored response that carried
    /// the tag. Rows go with their record; a tag purge also drops any whose record is gone.
    tags: sled::Tree,
    /// Records marked stale by a soft purge: record key → the purge's time (ms since the epoch).
    soft: sled::Tree,
    /// The eviction order of every record. Every change to what the tier holds (sled's records,
    /// `files`, the order) is made under this lock.
    index: Mutex<Index>,
    /// Records whose body is in a file: key → the sequence number that names the file. Its own
    /// lock, held only for a map operation (never across a sled call or file I/O), so that a read
    /// does not wait for a store.
    files: Mutex<BTreeMap<Box<[u8]>, u64>>,
    /// Records held (responses and Vary markers).
    entries: AtomicU64,
    lasting: Arc<Lasting>,
    /// Set when this store failed: a spool still writing into it stops.
    off: std::sync::atomic::AtomicBool,
    index_dir: PathBuf,
    bodies: PathBuf,
    /// Σ charged bytes of every record (record, key, bookkeeping, rounded body file).
    charged: AtomicU64,
    /// Σ bytes of records held in sled (the part of `charged` not in files).
    in_index: AtomicU64,
    /// sled's allocated size beyond the record bytes it holds, as last measured.
    index_overhead: AtomicU64,
    measured: Mutex<Instant>,
    /// Body files verified since start-up, and large ones (over `stream_over`) written since, by
    /// the sequence number of their record (which names the file), with the length and
    /// modification time they had then; a file that no longer has them is verified again. A large
    /// file written here needs no first check: its record's checksum was taken of the bytes
    /// written, and hashing it again would read the whole file. A smaller one is hashed as it is
    /// read anyway, and is not worth an entry here until it is.
    verified: moka::sync::Cache<u64, Stamp, super::KeyHasher>,
    /// Records in the index (sled) verified since start-up, by sequence number, with their length:
    /// sled gives back the bytes it was given under a number it never reuses (and checks its own
    /// CRC of what it reads back from disk), so they are not hashed again. Apart from `verified`,
    /// so that many small records read once do not push out large files, which cost a whole
    /// file's hash to verify again.
    checked: moka::sync::Cache<u64, usize, super::KeyHasher>,
    /// Held while a large body file is hashed, one lock per stripe of sequence numbers: the
    /// concurrent first reads of one file (after a restart, of a popular object) hash it once.
    verifying: [Mutex<()>; VERIFY_STRIPES],
    /// How many times a large body file was hashed.
    #[cfg(test)]
    hashed: AtomicU64,
    /// How many records were read with their checksums checked.
    #[cfg(test)]
    checks: AtomicU64,
    /// Readings of every record for URL prefixes.
    #[cfg(test)]
    scans: AtomicU64,
    /// Bytes in spool files not yet committed: on disk, so in the budget.
    spooling: AtomicU64,
    capacity: u64,
    /// Free space to leave on the file system (`cache.disk.min_free`).
    min_free: u64,
    /// The footprint at which the file system would have only `min_free` free, as last measured:
    /// the footprint then plus the space then available beyond `min_free`. Space others take
    /// lowers it at the next measurement; what this tier writes meanwhile is in the footprint.
    room: AtomicU64,
    /// `min_free` holds the tier to less than a tenth of its capacity (said in the log, and
    /// again when it has a fifth).
    short: std::sync::atomic::AtomicBool,
    /// Bodies longer than this are served from their file rather than read into memory.
    stream_over: u64,
    heuristic: Mutex<HeuristicConfig>,
}

/// Every record is in `order` once; a record with a body file is in `Inner::files`, any other is
/// in sled's `records`.
#[derive(Default)]
struct Index {
    /// Every record, first to be evicted first, by its place: its sequence number (so the order
    /// its responses were stored in), or the number it was given when it was last moved to the
    /// back because the memory tier held its response (`moved`).
    order: BTreeMap<u64, Slot>,
    /// The places of the records moved to the back, by sequence number (written to the `places`
    /// file at a clean shutdown, and read back at start-up).
    moved: HashMap<u64, u64, super::KeyHasher>,
}

impl Index {
    fn insert(&mut self, slot: Slot) {
        self.order.insert(slot.seq, slot);
    }

    fn remove(&mut self, seq: u64) -> Option<Slot> {
        let place = self.moved.remove(&seq).unwrap_or(seq);
        self.order.remove(&place)
    }

    /// Moves the record at `place` to `to`, the back of the order.
    fn move_back(&mut self, place: u64, to: u64) {
        if let Some(slot) = self.order.remove(&place) {
            self.moved.insert(slot.seq, to);
            self.order.insert(to, slot);
        }
    }
}

struct Slot {
    key: Box<[u8]>,
    seq: u64,
    /// What the record is charged against the budget.
    charged: u64,
    in_file: bool,
}

/// What a body file's name says: its record's key and sequence number.
type FileName = (Box<[u8]>, u64);

/// A record taken out of the index, to account for and clean up after.
struct Gone {
    key: Box<[u8]>,
    seq: u64,
    charged: u64,
    /// The sled value, for a record that was in sled; `None` for one in a body file.
    value: Option<IVec>,
}

impl DiskTier {
    /// Opens the store at `path`. A store that cannot be opened is moved aside and replaced by
    /// an empty one; if even that fails, or another process holds the store, or edge may not
    /// open it (permissions, a read-only or full file system), edge runs without a disk tier rather than
    /// not at all. Blocking: call it off the runtime.
    pub fn open(
        path: &Path,
        capacity: u64,
        min_free: u64,
        stream_over: u64,
        heuristic: HeuristicConfig,
    ) -> Option<Self> {
        let settings = Settings {
            path: path.to_owned(),
            capacity,
            min_free,
            stream_over,
        };
        let lasting = Arc::new(Lasting::default());
        let inner = match Inner::open_waiting(&settings, heuristic, &lasting, false) {
            Ok(inner) => inner,
            Err(err) if is_locked(&err) => {
                error!(path = %path.display(), "disk tier is in use by another process; running with the memory tier only");
                return None;
            }
            // Not a broken store: one edge may not use (as another user, on a read-only file
            // system) or has no room to open (a full file system). It is kept as it is for when
            // that is put right.
            Err(err) if is_refused(&err) => {
                error!(path = %path.display(), %err, "disk tier cannot be opened; running with the memory tier only, the store left as it is");
                return None;
            }
            Err(err) => {
                let aside = aside_path(path);
                error!(path = %path.display(), aside = %aside.display(), %err, "disk tier does not open; moving it aside and starting empty");
                remove_older_asides(path);
                if let Err(err) = std::fs::rename(path, &aside) {
                    error!(%err, "cannot move the broken disk tier aside; running with the memory tier only");
                    return None;
                }
                match Inner::open(&settings, heuristic, &lasting, false) {
                    Ok(inner) => inner,
                    Err(err) => {
                        error!(path = %path.display(), %err, "cannot create a disk tier; running with the memory tier only");
                        return None;
                    }
                }
            }
        };
        let shared = Arc::new(Shared {
            store: RwLock::new(Some(inner)),
            settings,
            heuristic: Mutex::new(heuristic),
            journal: Mutex::new(Journal::default()),
            lasting,
            failures: AtomicU64::new(0),
            backoff: Mutex::new((None, REOPEN_FIRST)),
        });
        keep_flushing(Arc::downgrade(&shared));
        let tier = Self { shared };
        // A capacity lowered, or a file system that filled, since the store was written: the
        // budget is held from the start, not from the next store on, which a node serving hits
        // may not make for a long time (nginx's cache manager holds max_size on its own too).
        // Beside the server, as `check_files`: evicting thousands of records takes seconds, which
        // would hold up the listeners and `/healthz`.
        let evicting = tier.clone();
        let spawned = std::thread::Builder::new()
            .name("edge-disk-evict".into())
            .spawn(move || {
                if let Some(inner) = evicting.shared.current()
                    && let Err(err) = evicting.check(&inner, inner.evict_to_budget(0))
                {
                    warn!(%err, "cannot evict the disk tier down to its budget");
                }
            });
        if let Err(err) = spawned {
            warn!(%err, "cannot start evicting the disk tier down to its budget");
        }
        Some(tier)
    }

    /// Reads the record at `key`, and its body file if it has one, verified the first time they
    /// are read after a start-up (see [`Inner::checked`] and [`Inner::verified`]). A record that
    /// fails verification is removed and reported as absent.
    ///
    /// A record, and a body file up to `cache.memory.max_object_size`, is read on the calling
    /// thread, as nginx reads its cache files in its worker: on a warm node both are in the page
    /// cache (sled keeps its own), and a hop to the blocking pool and back cost more than the read
    /// (the blocking-pool hop took 24% of a core in context switches under a pass-through load).
    /// A larger body is streamed from its file as it is sent, not read here; verifying it, which
    /// reads the whole file and is done once per file found at start-up, goes to the blocking pool.
    pub async fn get(&self, key: Vec<u8>) -> Result<Option<Record>, DiskError> {
        // A failed read leaves sled able to write: it does not turn the tier off.
        let Some(inner) = self.shared.current() else {
            return Ok(None);
        };
        match inner.get(&key, false) {
            Err(DiskError::Large) => {
                flatten(tokio::task::spawn_blocking(move || inner.get(&key, true)).await)
            }
            other => other,
        }
    }

    /// Stores `record` at `key`, replacing any older record, then evicts the oldest records until
    /// the tier is within its byte budget.
    pub async fn put(&self, key: Vec<u8>, record: Record) -> Result<(), DiskError> {
        let Some(inner) = self.shared.current() else {
            return Ok(());
        };
        self.blocking(inner, None, move |inner| inner.put(&key, &record))
            .await
    }

    /// Removes every record whose key starts with `prefix` (a URI and all its variants), as part
    /// of a store: unlike a purge, it is not made again should the store have missed it.
    pub async fn remove_prefix(&self, prefix: Vec<u8>) -> Result<(), DiskError> {
        let Some(inner) = self.shared.current() else {
            return Ok(());
        };
        self.blocking(inner, None, move |inner| inner.remove_under(&prefix))
            .await
            .map(drop)
    }

    /// Writes everything stored so far to disk, then holds the budget again: a flush is when
    /// sled's files grow.
    pub async fn flush(&self) -> Result<(), DiskError> {
        let Some((inner, mark)) = self.shared.current_and_mark() else {
            return Ok(());
        };
        let shared = self.shared.clone();
        self.blocking(inner, None, move |inner| {
            inner.db.flush()?;
            if let Err(err) = inner.save_places() {
                warn!(%err, "cannot write the disk tier's eviction order; after the restart it is the order of the stores");
            }
            shared.flushed(inner, mark);
            inner.measure_index(true);
            inner.evict_to_budget(0)
        })
        .await
    }

    /// The tier's footprint as the budget counts it.
    pub fn footprint(&self) -> u64 {
        self.shared.current().map_or(0, |inner| inner.footprint())
    }

    /// Starts a body file for `key` that a response streams into while it is served; see
    /// [`Spool`]; `len`, when known, is the body's length. Blocking: call it off the runtime.
    pub fn spool(&self, key: Vec<u8>, len: Option<u64>) -> Result<Spool, DiskError> {
        let Some(inner) = self.shared.current() else {
            return Err(DiskError::Off);
        };
        let started = (|| {
            // A body that cannot fit is not begun: it would evict everything else first.
            inner.measure_index(false);
            if len.is_some_and(|len| len > inner.budget()) {
                return Err(DiskError::NoRoom);
            }
            let seq = inner.db.generate_id()?;
            let partial = inner.body_path(&key, seq).with_extension("partial");
            let file = inner.create_partial(&partial)?;
            let reader = Arc::new(std::fs::File::open(&partial)?);
            Ok(Spool {
                tier: self.clone(),
                inner: inner.clone(),
                seq,
                partial,
                file,
                reader,
                hasher: blake3::Hasher::new(),
                len: 0,
            })
        })();
        self.check(&inner, started)
    }

    /// How many records were dropped because they failed verification.
    pub fn integrity_failures(&self) -> u64 {
        self.shared
            .lasting
            .integrity_failures
            .load(Ordering::Relaxed)
    }

    /// Whether the tier is on: `false` while its store, which failed a write, is being reopened.
    pub fn is_on(&self) -> bool {
        self.shared.current().is_some()
    }

    /// How many times the tier went off since start-up.
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// Records held, footprint, and evictions since start-up (nothing held while the tier is
    /// off).
    pub fn stats(&self) -> super::TierStats {
        let current = self.shared.current();
        super::TierStats {
            entries: current
                .as_ref()
                .map_or(0, |inner| inner.entries.load(Ordering::Relaxed)),
            bytes: current.as_ref().map_or(0, |inner| inner.footprint()),
            capacity: current.as_ref().map_or(0, |inner| inner.budget()),
            evictions: self.shared.lasting.evictions.load(Ordering::Relaxed),
        }
    }

    /// Removes every record whose key starts with `prefix` (a URI and all its variants); returns
    /// how many responses (not Vary markers) went.
    pub async fn purge(&self, prefix: Vec<u8>) -> Result<usize, DiskError> {
        let Some(inner) = self.current_or_note(|| Removal::Prefix(prefix.clone())) else {
            return Ok(0);
        };
        let noted = Removal::Prefix(prefix.clone());
        self.blocking(inner, Some(noted), move |inner| inner.remove_under(&prefix))
            .await
    }

    /// Marks every response stored under `prefix` stale as of `at`, until it is replaced: its
    /// next use revalidates it (a soft purge). Returns how many were marked. Should the mark be
    /// lost with a failed write, the reopened store removes them instead.
    pub async fn mark_stale(&self, prefix: Vec<u8>, at: SystemTime) -> Result<usize, DiskError> {
        let Some(inner) = self.current_or_note(|| Removal::Prefix(prefix.clone())) else {
            return Ok(0);
        };
        let at = millis(at).to_be_bytes();
        let noted = Removal::Prefix(prefix.clone());
        self.blocking(inner, Some(noted), move |inner| {
            let mut marked = 0;
            for (key, is_response) in inner.keys_under(&prefix)? {
                if is_response {
                    inner.soft.insert(key, &at)?;
                    marked += 1;
                }
            }
            Ok(marked)
        })
        .await
    }

    /// The keys (as [`super::key::CacheKey::url`]) of stored responses that carry the surrogate
    /// key `tag`, for a purge of the tag, which is noted: should the store miss one of the
    /// removals that follow (or a record's replacement that took the tag away), it is made again
    /// when the store is reopened.
    pub async fn tagged(&self, tag: String) -> Result<Vec<String>, DiskError> {
        self.named(Removal::Tag(tag.clone()), move |inner| {
            let mut keys = Vec::new();
            for (record_key, seq, url) in inner.tag_rows(&tag)? {
                if inner.current_seq(&record_key)? == Some(seq) {
                    keys.push(String::from_utf8_lossy(&url).into_owned());
                } else {
                    // The record it was made for is gone (a crash between the two writes).
                    inner.tags.remove(tag_row(&tag, &record_key, seq))?;
                }
            }
            Ok(keys)
        })
        .await
    }

    /// The keys (as [`super::key::CacheKey::url`]) of stored responses whose path and query
    /// (http and https alike: [`super::key::target_of`]) start with `prefix`, for a purge of the
    /// prefix, which is noted as a tag purge is (see
    /// [`DiskTier::tagged`]). There is no index by URL: this reads the URL of every record, in
    /// sled and at the end of every body file.
    pub async fn urls_under(&self, prefix: String) -> Result<Vec<String>, DiskError> {
        self.named(Removal::UrlPrefix(prefix.clone()), move |inner| {
            let found = inner.urls_under(&[&prefix])?;
            Ok(found.into_iter().map(|(_, url)| url).collect())
        })
        .await
    }

    /// Runs `find` off the runtime for the URLs that `removal` names, and notes the removal;
    /// while the tier is off, only notes it (the reopened store makes it) and finds nothing.
    async fn named(
        &self,
        removal: Removal,
        find: impl FnOnce(&Arc<Inner>) -> Result<Vec<String>, DiskError> + Send + 'static,
    ) -> Result<Vec<String>, DiskError> {
        let Some(inner) = self.current_or_note(|| removal.clone()) else {
            return Ok(Vec::new());
        };
        self.blocking(inner, Some(removal), find).await
    }

    /// Runs `work` on `inner` off the runtime, to its end even if the caller goes away; then
    /// turns the tier off if sled failed, and notes `noted` (a removal) with the store still
    /// held, so that it cannot be reopened, its journal replayed, before the removal is noted.
    async fn blocking<T: Send + 'static>(
        &self,
        inner: Arc<Inner>,
        noted: Option<Removal>,
        work: impl FnOnce(&Arc<Inner>) -> Result<T, DiskError> + Send + 'static,
    ) -> Result<T, DiskError> {
        let tier = self.clone();
        let done = tokio::task::spawn_blocking(move || {
            let result = tier.check(&inner, work(&inner));
            if let Some(removal) = noted {
                tier.note(removal);
            }
            result
        });
        flatten(done.await)
    }

    /// Keeps records whose response `held` says the memory tier holds: eviction moves them to the
    /// back of its order rather than evicting them. A response served from memory is not read
    /// from disk, so without this the hottest responses would leave the disk tier by the order
    /// they were stored in, and a restart, which empties memory, would find the least of them.
    pub fn keep_in_memory_ones(&self, held: impl Fn(&[u8]) -> bool + Send + Sync + 'static) {
        let _ = self.shared.lasting.in_memory.set(Box::new(held));
    }

    /// Applies a new heuristic configuration to records read from now on.
    pub fn set_heuristic(&self, heuristic: HeuristicConfig) {
        // Under the store's lock, which a reopened store is put in under, with this copied in.
        let store = self.shared.store.read().unwrap_or_else(|p| p.into_inner());
        *lock(&self.shared.heuristic) = heuristic;
        if let Some(inner) = &*store {
            *lock(&inner.heuristic) = heuristic;
        }
    }

    /// The open store, or `None` (with `removal` noted for when it is reopened) while the tier
    /// is off. Checked under the journal's lock, which a reopening holds until the reopened store
    /// is in use, so that no removal falls between the two.
    fn current_or_note(&self, removal: impl FnOnce() -> Removal) -> Option<Arc<Inner>> {
        let mut journal = self.shared.journal();
        let current = self.shared.current();
        if current.is_none() {
            journal.note(removal());
            self.shared.mark_off(&mut journal);
        }
        current
    }

    /// Notes a removal that was made (or failed): it is forgotten once a flush begun after it
    /// succeeds.
    fn note(&self, removal: Removal) {
        let mut journal = self.shared.journal();
        journal.note(removal);
        if self.shared.current().is_none() {
            self.shared.mark_off(&mut journal);
        }
    }

    /// Passes `result` on; a sled error turns the tier off (sled will take no more writes).
    fn check<T>(&self, inner: &Arc<Inner>, result: Result<T, DiskError>) -> Result<T, DiskError> {
        if let Err(err @ DiskError::Sled(_)) = &result {
            self.fail(inner, err);
        }
        result
    }

    /// Turns the tier off, if `inner` is still its store, and starts reopening it.
    fn fail(&self, inner: &Arc<Inner>, err: &DiskError) {
        let failed = {
            let mut store = self.shared.store.write().unwrap_or_else(|p| p.into_inner());
            match &*store {
                Some(current) if Arc::ptr_eq(current, inner) => store.take(),
                _ => None,
            }
        };
        let Some(failed) = failed else { return };
        failed.off.store(true, Ordering::Relaxed);
        self.shared.failures.fetch_add(1, Ordering::Relaxed);
        {
            let mut journal = self.shared.journal();
            if !journal.removals.is_empty() || journal.overflowed.is_some() {
                self.shared.mark_off(&mut journal);
            }
        }
        let wait = {
            let mut backoff = lock(&self.shared.backoff);
            let (reopened, last) = *backoff;
            let wait = match reopened {
                Some(at) if at.elapsed() < REOPEN_STABLE => (last * 2).min(REOPEN_MAX),
                _ => REOPEN_FIRST,
            };
            backoff.1 = wait;
            wait
        };
        error!(%err, retry_in = ?wait, "the disk tier failed a write: it is off (lookups miss, nothing is stored on disk) until its store can be opened again");
        let shared = Arc::downgrade(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("edge-disk-reopen".into())
            .spawn(move || reopen(shared, failed, wait));
        if let Err(err) = spawned {
            error!(%err, "cannot start reopening the disk tier; it stays off");
        }
    }
}

impl DiskTier {
    /// The open store.
    #[cfg(test)]
    fn inner(&self) -> Arc<Inner> {
        self.shared.current().expect("the tier is on")
    }
}

impl Shared {
    fn current(&self) -> Option<Arc<Inner>> {
        self.store.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn journal(&self) -> MutexGuard<'_, Journal> {
        lock(&self.journal)
    }

    /// The open store and the journal's mark, taken together: every removal noted below the
    /// mark was made in this store (or noted while off, which it cannot be then).
    fn current_and_mark(&self) -> Option<(Arc<Inner>, u64)> {
        let journal = self.journal();
        self.current().map(|inner| (inner, journal.next))
    }

    /// A flush of `inner` begun at `mark` succeeded: the removals noted before it are durable,
    /// if `inner` is still the store.
    fn flushed(&self, inner: &Arc<Inner>, mark: u64) {
        let mut journal = self.journal();
        if self
            .current()
            .is_some_and(|current| Arc::ptr_eq(&current, inner))
        {
            journal.forget(mark);
            self.unmark_if_whole(&mut journal);
        }
    }

    /// Renames `layout.off` back once the store misses no removal (it is on, and every one
    /// noted was flushed).
    fn unmark_if_whole(&self, journal: &mut Journal) {
        if !journal.marked || !journal.removals.is_empty() || journal.overflowed.is_some() {
            return;
        }
        let path = &self.settings.path;
        match std::fs::rename(path.join(OFF_MARK), path.join("layout")) {
            Ok(()) => journal.marked = false,
            Err(err) if err.kind() == ErrorKind::NotFound && path.join("layout").exists() => {
                journal.marked = false;
            }
            Err(err) => warn!(%err, "cannot rename the disk tier's layout.off back to layout"),
        }
    }

    /// Marks the store as missing removals, once.
    fn mark_off(&self, journal: &mut Journal) {
        if journal.marked {
            return;
        }
        let path = &self.settings.path;
        match std::fs::rename(path.join("layout"), path.join(OFF_MARK)) {
            Ok(()) => journal.marked = true,
            Err(err) => {
                warn!(%err, "cannot mark the disk tier as missing purges; should edge stop before it is reopened, it could serve them again");
            }
        }
    }

    /// Whether sled's file system and the body files' have room to reopen the store in.
    fn has_room(&self) -> std::io::Result<bool> {
        let settings = &self.settings;
        for dir in [settings.path.join("index"), settings.path.join("bodies")] {
            let dir = if dir.exists() {
                dir
            } else {
                settings.path.clone()
            };
            if available(&dir)? < REOPEN_ROOM {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Opens the store again and makes in it every removal it may have missed; the tier is on
    /// again when this succeeds.
    fn reopen(&self) -> Result<(), DiskError> {
        let settings = &self.settings;
        let (overflowed, removals, from) = {
            let journal = self.journal();
            let removals: Vec<Removal> = journal.removals.keys().cloned().collect();
            (journal.overflowed, removals, journal.next)
        };
        if overflowed.is_some() {
            warn!(
                "more purges and invalidations were missed while the disk tier was off than are kept: it starts empty"
            );
            empty(&settings.path)?;
        }
        // A store opened onto a full file system would fail again at once. While it is closed,
        // what it may hold is kept down by deleting its oldest body files, as its budget would.
        if !self.has_room()? {
            delete_oldest_bodies(&settings.path.join("bodies"))?;
            if !self.has_room()? {
                return Err(DiskError::NoRoom);
            }
        }
        let heuristic = *lock(&self.heuristic);
        let inner = match Inner::open_waiting(settings, heuristic, &self.lasting, true) {
            Ok(inner) => inner,
            Err(err) if is_locked(&err) || is_io(&err) => return Err(err),
            Err(err) => {
                warn!(%err, "the disk tier's store does not open again: it starts empty");
                empty(&settings.path)?;
                Inner::open(settings, heuristic, &self.lasting, true)?
            }
        };
        // Made and flushed without the journal's lock, which purges (and so request tasks)
        // take; those noted meanwhile too, for a few rounds, as they may need every record read;
        // then the last of them under it (they stay noted until the next flush).
        inner.apply(&removals)?;
        inner.db.flush()?;
        let mut made = from;
        let mut journal = self.journal();
        for _ in 0..REOPEN_ROUNDS {
            let late = noted_since(&journal, made);
            if late.is_empty() {
                break;
            }
            made = journal.next;
            drop(journal);
            inner.apply(&late)?;
            journal = self.journal();
        }
        if journal.overflowed != overflowed {
            // Overflowed since: the next attempt starts empty.
            return Err(DiskError::Off);
        }
        inner.apply(&noted_since(&journal, made))?;
        journal.forget(from);
        journal.overflowed = None;
        self.unmark_if_whole(&mut journal);
        let mut store = self.store.write().unwrap_or_else(|p| p.into_inner());
        *lock(&inner.heuristic) = *lock(&self.heuristic);
        *store = Some(inner);
        lock(&self.backoff).0 = Some(Instant::now());
        Ok(())
    }
}

/// The removals noted at or after `seq`.
fn noted_since(journal: &Journal, seq: u64) -> Vec<Removal> {
    (journal.removals.iter())
        .filter(|&(_, &noted)| noted >= seq)
        .map(|(removal, _)| removal.clone())
        .collect()
}

/// Deletes the oldest body files (by their records' sequence numbers) until the file system
/// has [`REOPEN_ROOM`] free, or none is left: what a closed store's budget can still do.
fn delete_oldest_bodies(bodies: &Path) -> std::io::Result<()> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(bodies)?
        .flatten()
        .filter_map(|entry| {
            let (_, seq) = parse_name(entry.file_name().to_str()?)?;
            Some((seq, entry.path()))
        })
        .collect();
    files.sort_unstable_by_key(|&(seq, _)| seq);
    let mut deleted = 0;
    for (_, path) in files {
        if available(bodies)? >= REOPEN_ROOM {
            break;
        }
        std::fs::remove_file(path)?;
        deleted += 1;
    }
    if deleted > 0 {
        warn!(
            deleted,
            "deleted the oldest body files of the closed disk tier to make room for it"
        );
    }
    Ok(())
}

impl Journal {
    fn note(&mut self, removal: Removal) {
        if self.removals.len() >= JOURNAL_MAX && !self.removals.contains_key(&removal) {
            self.removals.clear();
            self.overflowed = Some(self.next);
        }
        self.removals.insert(removal, self.next);
        self.next += 1;
    }

    /// Forgets the removals noted before `mark`: a flush that began after them succeeded.
    fn forget(&mut self, mark: u64) {
        self.removals.retain(|_, &mut seq| seq >= mark);
        if self.overflowed.is_some_and(|at| at <= mark) {
            self.overflowed = None;
        }
    }
}

/// Waits for the last user of a failed store to let go of it, which closes it, then opens it
/// again once there is room: first after `wait`, then less and less often.
fn reopen(shared: Weak<Shared>, failed: Arc<Inner>, mut wait: Duration) {
    let mut failed = Some(failed);
    while let Some(inner) = failed.take() {
        match Arc::try_unwrap(inner) {
            Ok(inner) => drop(inner),
            Err(inner) if shared.strong_count() > 0 => {
                failed = Some(inner);
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => return,
        }
    }
    loop {
        std::thread::sleep(wait);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match shared.reopen() {
            Ok(()) => {
                tracing::info!("the disk tier is on again");
                return;
            }
            Err(DiskError::NoRoom) => {
                debug!("the disk tier's file system has no room yet");
            }
            Err(err) => warn!(%err, "the disk tier cannot be opened again yet"),
        }
        wait = (wait * 2).min(REOPEN_MAX);
    }
}

/// Flushes the store every [`JOURNAL_FLUSH_EVERY`] while removals are noted, so that they are
/// forgotten once durable, and a store that can no longer write is found out.
fn keep_flushing(shared: Weak<Shared>) {
    let spawned = std::thread::Builder::new()
        .name("edge-disk-flush".into())
        .spawn(move || {
            loop {
                std::thread::sleep(JOURNAL_FLUSH_EVERY);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let Some((inner, mark)) = shared.current_and_mark() else {
                    continue;
                };
                {
                    let journal = shared.journal();
                    if journal.removals.is_empty() && journal.overflowed.is_none() {
                        continue;
                    }
                }
                match inner.db.flush() {
                    Ok(_) => shared.flushed(&inner, mark),
                    Err(err) => DiskTier { shared }.fail(&inner, &err.into()),
                }
            }
        });
    if let Err(err) = spawned {
        warn!(%err, "cannot start the disk tier's flush thread");
    }
}

/// Deletes the snapshots sled began and did not finish; whether there were any.
fn drop_unfinished_snapshots(index_dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(index_dir) else {
        return false;
    };
    let mut dropped = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.")
            && name.ends_with(".generating")
            && std::fs::remove_file(entry.path()).is_ok()
        {
            dropped = true;
        }
    }
    dropped
}

/// Deletes what a store holds (its index and body files), keeping the directories, which may
/// be mount points.
fn empty(path: &Path) -> std::io::Result<()> {
    empty_dir(&path.join("index"))?;
    empty_dir(&path.join("bodies")).map(drop)
}

/// Deletes what `dir` holds (but a file system's `lost+found`); returns whether it held anything.
fn empty_dir(dir: &Path) -> std::io::Result<bool> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err),
    };
    let mut held = false;
    for entry in entries {
        let entry = entry?;
        if entry.file_name() == "lost+found" {
            continue;
        }
        held = true;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(held)
}

/// Bytes free for unprivileged users on the file system of `path` (`f_bavail`), as `df` shows
/// them: edge may run as root in a container, but the blocks kept for root are not the cache's
/// to fill.
fn available(path: &Path) -> std::io::Result<u64> {
    let fs = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(fs.f_bavail.saturating_mul(fs.f_frsize))
}

/// A blocking task's result.
fn flatten<T>(
    joined: Result<Result<T, DiskError>, tokio::task::JoinError>,
) -> Result<T, DiskError> {
    joined.map_err(DiskError::from).and_then(|result| result)
}

/// Whether the store failed to open for want of space or another I/O error (worth trying again
/// later), rather than because what it holds does not make sense.
fn is_io(err: &DiskError) -> bool {
    matches!(err, DiskError::Io(_) | DiskError::Sled(sled::Error::Io(_)))
}

impl Inner {
    /// [`Inner::open`], waiting a while for a lock held by a store just closed in this process:
    /// the start-up check of a closed tier holds it while it reads one file, and sled's own
    /// threads finish their writes.
    fn open_waiting(
        settings: &Settings,
        heuristic: HeuristicConfig,
        lasting: &Arc<Lasting>,
        reopening: bool,
    ) -> Result<Arc<Self>, DiskError> {
        let mut attempts = 0;
        loop {
            match Self::open(settings, heuristic, lasting, reopening) {
                Err(err) if is_locked(&err) && attempts < LOCK_ATTEMPTS => {
                    attempts += 1;
                    std::thread::sleep(LOCK_RETRY);
                }
                other => return other,
            }
        }
    }

    /// Opens the store; `reopening` a store that failed in this process, which is read as it is
    /// even if marked as missing removals (they are made next).
    fn open(
        settings: &Settings,
        heuristic: HeuristicConfig,
        lasting: &Arc<Lasting>,
        reopening: bool,
    ) -> Result<Arc<Self>, DiskError> {
        let path = &settings.path;
        let index_dir = path.join("index");
        let bodies = path.join("bodies");
        let layout = path.join("layout");
        let off = path.join(OFF_MARK);
        let marked = off.exists();
        if marked && !reopening {
            // Not while another process has it open: sled's lock says so.
            if let Err(err) = sled::Config::new().path(&index_dir).open() {
                let err = DiskError::from(err);
                if is_locked(&err) {
                    return Err(err);
                }
            }
            warn!(path = %path.display(), "the disk tier was off when edge stopped, and missed purges: it starts empty");
            empty(path)?;
            std::fs::rename(&off, &layout)?;
        }
        match std::fs::read_to_string(&layout) {
            _ if marked && reopening => {}
            Ok(text) if text == LAYOUT => {}
            Ok(_) => return Err(DiskError::OldLayout),
            // sled's files directly under the path, or an index without a layout file: a store
            // written by an earlier version.
            Err(err) if err.kind() == ErrorKind::NotFound => {
                if path.join("conf").exists() || index_dir.exists() {
                    return Err(DiskError::OldLayout);
                }
                std::fs::create_dir_all(path)?;
                std::fs::write(&layout, LAYOUT)?;
            }
            Err(err) => return Err(err.into()),
        }
        std::fs::create_dir_all(&bodies)?;
        let config = sled::Config::new()
            .path(&index_dir)
            .cache_capacity(32 << 20)
            .flush_every_ms(Some(500));
        let db = match config.open() {
            // sled leaves a snapshot it failed to finish (a full disk, a crash), then reads it
            // as the newest one.
            Err(err)
                if !is_locked(&DiskError::Sled(err.clone()))
                    && drop_unfinished_snapshots(&index_dir) =>
            {
                config.open()?
            }
            opened => opened?,
        };
        // A new index beside body files (the index was lost or emptied): they cannot be taken
        // back as they are. Soft purges lived in the index, and its new ids would name new files
        // with the numbers of old ones, which would take their places in the eviction order. A
        // new index is flushed at once, so that a crash before sled's first flush leaves one.
        if !db.was_recovered() {
            if empty_dir(&bodies)? {
                warn!(path = %path.display(), "the disk tier's index was missing or empty beside body files: they are deleted, and the tier starts empty");
            }
            db.flush()?;
        }
        let records = db.open_tree("records")?;
        let tags = db.open_tree("tags")?;
        let soft = db.open_tree("soft")?;
        let inner = Arc::new(Inner {
            db,
            records,
            tags,
            soft,
            index: Mutex::new(Index::default()),
            files: Mutex::new(BTreeMap::new()),
            entries: AtomicU64::new(0),
            lasting: lasting.clone(),
            off: std::sync::atomic::AtomicBool::new(false),
            index_dir,
            bodies,
            charged: AtomicU64::new(0),
            in_index: AtomicU64::new(0),
            index_overhead: AtomicU64::new(0),
            verified: moka::sync::Cache::builder()
                .max_capacity(1 << 20)
                .build_with_hasher(super::KeyHasher::default()),
            checked: moka::sync::Cache::builder()
                .max_capacity(CHECKED_RECORDS)
                .build_with_hasher(super::KeyHasher::default()),
            verifying: std::array::from_fn(|_| Mutex::new(())),
            #[cfg(test)]
            hashed: AtomicU64::new(0),
            #[cfg(test)]
            checks: AtomicU64::new(0),
            #[cfg(test)]
            scans: AtomicU64::new(0),
            spooling: AtomicU64::new(0),
            measured: Mutex::new(Instant::now() - MEASURE_EVERY),
            capacity: settings.capacity,
            min_free: settings.min_free,
            room: AtomicU64::new(u64::MAX),
            short: std::sync::atomic::AtomicBool::new(false),
            stream_over: settings.stream_over,
            heuristic: Mutex::new(heuristic),
        });
        let files = inner.rebuild()?;
        inner.measure_index(true);
        check_files(Arc::downgrade(&inner), files);
        Ok(inner)
    }

    /// Removes every record under `prefix`; returns how many responses (not Vary markers) went.
    fn remove_under(&self, prefix: &[u8]) -> Result<usize, DiskError> {
        let mut responses = 0;
        for (key, is_response) in self.keys_under(prefix)? {
            if self.remove(&key, None)? && is_response {
                responses += 1;
            }
        }
        Ok(responses)
    }

    /// Makes removals that a failed store may have missed; the URL prefixes among them in one
    /// reading of every record.
    fn apply(&self, removals: &[Removal]) -> Result<(), DiskError> {
        let mut keys = Vec::new();
        let mut prefixes = Vec::new();
        for removal in removals {
            match removal {
                Removal::Prefix(prefix) => drop(self.remove_under(prefix)?),
                Removal::Tag(tag) => keys.extend(self.tag_rows(tag)?.into_iter().map(|row| row.0)),
                Removal::UrlPrefix(prefix) => prefixes.push(prefix.as_str()),
            }
        }
        if !prefixes.is_empty() {
            keys.extend(self.urls_under(&prefixes)?.into_iter().map(|(key, _)| key));
        }
        // The whole URI of every record named, as a purge by tag or URL prefix removes it.
        for uri in keys.iter().filter_map(|key| key.get(..32)) {
            self.remove_under(uri)?;
        }
        Ok(())
    }

    /// The records of responses whose path and query (the URL, for either scheme) starts with
    /// one of `prefixes`: key and URL. A record
    /// whose URL is not the one its key was made from (damaged, or a file put in another's
    /// place) is left out: it is never served for that URL, and is dropped when it is read. A
    /// body file that cannot be read (too many open files, an I/O error) is removed here: it may
    /// be one of them, and a purge that cannot tell must not leave it to be served.
    fn urls_under(&self, prefixes: &[&str]) -> Result<Vec<(Vec<u8>, String)>, DiskError> {
        #[cfg(test)]
        self.scans.fetch_add(1, Ordering::Relaxed);
        let mut found = Vec::new();
        let mut take = |key: &[u8], record: &[u8]| {
            if let Some(url) = StoredEntry::url_in(record)
                && prefixes
                    .iter()
                    .any(|prefix| super::key::target_of(url).starts_with(prefix))
                && is_key_of(key, url)
            {
                found.push((key.to_vec(), url.to_owned()));
            }
        };
        for item in self.records.iter() {
            let (key, value) = item?;
            if is_response(&value) {
                take(&key, &value[8..]);
            }
        }
        let files: Vec<FileName> = (self.files().iter())
            .map(|(key, &seq)| (key.clone(), seq))
            .collect();
        for (key, seq) in files {
            let read = std::fs::File::open(self.body_path(&key, seq)).and_then(|file| {
                let len = file.metadata()?.len();
                record_in(&file, len, None)
            });
            match read {
                Ok(Ok((record, _))) => take(&key, &record),
                // Damaged: never served, dropped when it is read.
                Ok(Err(_)) => {}
                // Gone since: evicted, replaced or removed.
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(err) => {
                    warn!(%err, key = %hex(&key), "a body file a purge could not read is removed");
                    self.remove(&key, Some(seq))?;
                }
            }
        }
        Ok(found)
    }

    /// The rows of the tag index for `tag`: record key, sequence number and URL.
    #[allow(clippy::type_complexity)]
    fn tag_rows(&self, tag: &str) -> Result<Vec<(Vec<u8>, u64, IVec)>, DiskError> {
        let prefix = tag_prefix(tag);
        let mut rows = Vec::new();
        for item in self.tags.scan_prefix(&prefix) {
            let (row, url) = item?;
            let Some(split) = row.len().checked_sub(8).filter(|&at| at >= prefix.len()) else {
                continue;
            };
            rows.push((
                row[prefix.len()..split].to_vec(),
                seq_of(&row[split..]),
                url,
            ));
        }
        Ok(rows)
    }

    fn footprint(&self) -> u64 {
        self.charged.load(Ordering::Relaxed)
            + self.index_overhead.load(Ordering::Relaxed)
            + self.spooling.load(Ordering::Relaxed)
    }

    /// What the tier may hold now: its capacity, or less when the file system has less room
    /// than that beyond `min_free`.
    fn budget(&self) -> u64 {
        self.capacity.min(self.room.load(Ordering::Relaxed))
    }

    fn heuristic(&self) -> HeuristicConfig {
        *lock(&self.heuristic)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    fn files(&self) -> MutexGuard<'_, BTreeMap<Box<[u8]>, u64>> {
        lock(&self.files)
    }

    /// The sequence number of the body file at `key`, if its record is in one.
    fn file_seq(&self, key: &[u8]) -> Option<u64> {
        self.files().get(key).copied()
    }

    /// Builds the in-memory index from sled's records and the body files' names, keeping the
    /// newer of two records for one key and deleting temporary files. Returns the body files
    /// found, for [`check_files`].
    ///
    /// Both lists are walked once in key order (sled iterates in key order; the names are sorted)
    /// and the maps are built whole from sorted lists, rather than each file looked up in sled
    /// and inserted one by one (`cargo bench --bench disk`: 100k objects in files opened in
    /// 0.36–0.43 s that way, 0.20–0.26 s this one).
    fn rebuild(&self) -> Result<Vec<FileName>, DiskError> {
        let mut found: Vec<(Box<[u8]>, u64, u64)> = Vec::new();
        for entry in std::fs::read_dir(&self.bodies)?.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".partial") {
                // Written by an earlier run (this one has not started writing) and never finished.
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some((key, seq)) = parse_name(name) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            found.push((key, seq, meta.len()));
        }
        // By key, the newest last: older files of a key were replaced before a crash.
        found.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let mut newest: Vec<(Box<[u8]>, u64, u64)> = Vec::with_capacity(found.len());
        for file in found {
            if let Some(last) = newest.last_mut()
                && last.0 == file.0
            {
                let _ = std::fs::remove_file(self.body_path(&last.0, last.1));
                *last = file;
            } else {
                newest.push(file);
            }
        }
        let mut order: Vec<(u64, Slot)> = Vec::with_capacity(newest.len());
        let mut files: Vec<(Box<[u8]>, u64)> = Vec::with_capacity(newest.len());
        let mut superseded = Vec::new();
        let mut pending = newest.into_iter().peekable();
        let mut file_slot = |(key, seq, len): (Box<[u8]>, u64, u64), order: &mut Vec<_>| {
            let charged = charge(key.len(), rounded(len));
            files.push((key.clone(), seq));
            order.push((
                seq,
                Slot {
                    key,
                    seq,
                    charged,
                    in_file: true,
                },
            ));
        };
        for item in self.records.iter() {
            let (key, value) = item?;
            while let Some(file) = pending.next_if(|file| *file.0 < *key) {
                file_slot(file, &mut order);
            }
            let seq = seq_of(&value);
            let charged = charge(key.len(), value.len() as u64);
            match pending.next_if(|file| *file.0 == *key) {
                Some(file) if file.1 > seq => {
                    // The record a file replaced before a crash, and not deleted yet.
                    file_slot(file, &mut order);
                    superseded.push(Gone {
                        key: key.as_ref().into(),
                        seq,
                        charged,
                        value: Some(value),
                    });
                    continue;
                }
                Some(file) => {
                    let _ = std::fs::remove_file(self.body_path(&file.0, file.1));
                }
                None => {}
            }
            order.push((
                seq,
                Slot {
                    key: key.as_ref().into(),
                    seq,
                    charged,
                    in_file: false,
                },
            ));
        }
        pending.for_each(|file| file_slot(file, &mut order));
        for (_, slot) in &order {
            self.account(slot.charged, slot.in_file);
        }
        let mut index = Index {
            order: order.into_iter().collect(),
            moved: HashMap::default(),
        };
        // Records moved to the back of the order before a clean shutdown go there again. Read
        // once: moves made from now on are written at the next one.
        let places = self.places_file();
        if let Ok(saved) = std::fs::read(&places) {
            for pair in saved.chunks_exact(16) {
                let (seq, place) = pair.split_at(8);
                let seq = u64::from_be_bytes(seq.try_into().expect("8 bytes"));
                let place = u64::from_be_bytes(place.try_into().expect("8 bytes"));
                if index.order.contains_key(&seq) && !index.order.contains_key(&place) {
                    index.move_back(seq, place);
                }
            }
            // Left behind, its moves would apply again after a crash: harmless, as stale moves
            // only reorder eviction.
            let _ = std::fs::remove_file(&places);
        }
        *self.index() = index;
        let found = files.clone();
        *self.files() = files.into_iter().collect();
        // Never counted in, so only their sled rows and tag rows go.
        for gone in superseded {
            self.records.remove(&gone.key)?;
            if !self.tags.is_empty() {
                self.unindex_tags(&gone);
            }
        }
        Ok(found)
    }

    /// Counts a record in.
    fn account(&self, charged: u64, in_file: bool) {
        self.charged.fetch_add(charged, Ordering::Relaxed);
        if !in_file {
            self.in_index.fetch_add(charged, Ordering::Relaxed);
        }
        self.entries.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, key: &[u8], large: bool) -> Result<Option<Record>, DiskError> {
        let record = match self.file_seq(key) {
            Some(seq) => self.get_file(key, seq, large)?,
            None => self.get_indexed(key)?,
        };
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

    /// A record kept in sled: a response with its body inline, or a Vary marker.
    fn get_indexed(&self, key: &[u8]) -> Result<Option<Record>, DiskError> {
        let Some(value) = self.records.get(key)? else {
            return Ok(None);
        };
        let seq = seq_of(&value);
        let seen = self.checked.get(&seq) == Some(value.len());
        #[cfg(test)]
        self.checks.fetch_add(u64::from(!seen), Ordering::Relaxed);
        let failure = match value.get(8..) {
            // The body is a slice of sled's buffer, not a copy.
            Some(_) => match Record::decode_checked(
                Bytes::from_owner(value.clone()).slice(8..),
                &self.heuristic(),
                !seen,
            ) {
                Ok(Decoded::Record(record)) => {
                    if !seen && matches!(record, Record::Entry(_)) {
                        self.checked.insert(seq, value.len());
                    }
                    return Ok(Some(record));
                }
                Ok(Decoded::BodyElsewhere(..)) => {
                    "it names a body file, which the index never does".to_owned()
                }
                Err(DecodeError::Obsolete) => return self.drop_obsolete(key, seq),
                Err(err) => err.to_string(),
            },
            None => DecodeError::Truncated.to_string(),
        };
        self.drop_failed(key, seq, &failure)
    }

    /// A response whose record is at the end of its body file.
    fn get_file(&self, key: &[u8], seq: u64, large: bool) -> Result<Option<Record>, DiskError> {
        let file = match std::fs::File::open(self.body_path(key, seq)) {
            Ok(file) => file,
            Err(err) if err.kind() == ErrorKind::NotFound => {
                if self.file_seq(key) != Some(seq) {
                    // Replaced, evicted or removed since it was looked up.
                    return Ok(None);
                }
                return self.drop_failed(key, seq, "its body file is missing");
            }
            Err(err) => return Err(err.into()),
        };
        let stamp = stamp(&file)?;
        // A file no larger than the bodies served from memory is read whole, in one read: its
        // body and its record are slices of it (the record's few hundred bytes stay in memory
        // with the body, as an inline body's record does).
        let whole = if stamp.0 <= self.stream_over {
            Some(read_body(&file, stamp.0)?)
        } else {
            None
        };
        // A body file verified since start-up, unchanged since (same length and modification
        // time), is not hashed again, its record no more than its body.
        let seen = self.verified.get(&seq).is_some_and(|known| known == stamp);
        #[cfg(test)]
        self.checks.fetch_add(u64::from(!seen), Ordering::Relaxed);
        let read = read_record(&file, stamp.0, whole.as_ref(), &self.heuristic(), !seen)?;
        let (entry, body_ref) = match read {
            Ok(found) => found,
            Err(DecodeError::Obsolete) => return self.drop_obsolete(key, seq),
            Err(err) => return self.drop_failed(key, seq, &err.to_string()),
        };
        // A sound file of another key's, copied or moved over this one.
        if !seen && !is_key_of(key, &entry.url) {
            return self.drop_failed(key, seq, FOR_ANOTHER_KEY);
        }
        if body_ref.len > self.stream_over {
            if !seen {
                // Hashing the whole body is for the blocking pool.
                if !large {
                    return Err(DiskError::Large);
                }
                let stripe = &self.verifying[(seq % VERIFY_STRIPES as u64) as usize];
                let _hashing = lock(stripe);
                // Another read may have verified it while this one waited, or dropped it (it
                // failed, or was replaced).
                if self.file_seq(key) != Some(seq) {
                    return Ok(None);
                }
                if self.verified.get(&seq) != Some(stamp) {
                    #[cfg(test)]
                    self.hashed.fetch_add(1, Ordering::Relaxed);
                    if !body_matches(&file, body_ref)? {
                        return self.drop_failed(key, seq, "its body does not match its record");
                    }
                    self.verified.insert(seq, stamp);
                }
            }
            let mut entry = *entry;
            entry.spilled = Some(Spilled {
                file: Arc::new(file),
                len: body_ref.len,
                checksum: body_ref.checksum,
            });
            return Ok(Some(Record::Entry(Arc::new(entry))));
        }
        let body = match whole {
            Some(whole) => whole.slice(..body_ref.len as usize),
            None => read_body(&file, body_ref.len)?,
        };
        let attached = if seen {
            entry.attach_verified(body, body_ref)
        } else {
            entry.attach(body, body_ref)
        };
        match attached {
            Ok(entry) => {
                if !seen {
                    self.verified.insert(seq, stamp);
                }
                Ok(Some(Record::Entry(Arc::new(entry))))
            }
            Err(err) => self.drop_failed(key, seq, &err.to_string()),
        }
    }

    /// Drops the record `seq` at `key`, which failed verification, and reports it absent.
    fn drop_failed(
        &self,
        key: &[u8],
        seq: u64,
        failure: &str,
    ) -> Result<Option<Record>, DiskError> {
        warn!(key = %hex(key), %failure, "dropping a disk record that fails verification");
        self.lasting
            .integrity_failures
            .fetch_add(1, Ordering::Relaxed);
        self.remove(key, Some(seq))?;
        Ok(None)
    }

    /// Drops the record `seq` at `key`, sound but written by an earlier version in a way no
    /// longer read, and reports it absent: a miss, not an integrity failure.
    fn drop_obsolete(&self, key: &[u8], seq: u64) -> Result<Option<Record>, DiskError> {
        debug!(key = %hex(key), "dropping a disk record of an earlier version");
        self.remove(key, Some(seq))?;
        Ok(None)
    }

    /// The sequence number of the record at `key`, wherever it is.
    fn current_seq(&self, key: &[u8]) -> Result<Option<u64>, DiskError> {
        if let Some(seq) = self.file_seq(key) {
            return Ok(Some(seq));
        }
        Ok(self.records.get(key)?.map(|value| seq_of(&value)))
    }

    fn put(&self, key: &[u8], record: &Record) -> Result<(), DiskError> {
        let seq = self.db.generate_id()?;
        match record {
            Record::Entry(entry)
                if entry.spilled.is_some()
                    || entry.body.len() > INLINE_MAX
                    || entry.weight() > RECORD_INLINE_MAX =>
            {
                let body = match &entry.spilled {
                    Some(spilled) => BodyRef {
                        len: spilled.len,
                        checksum: spilled.checksum,
                    },
                    None => BodyRef {
                        len: entry.body.len() as u64,
                        checksum: *blake3::hash(&entry.body).as_bytes(),
                    },
                };
                let encoded = entry.encode_detached(body);
                let total = body.len + encoded.len() as u64 + TRAILER;
                let charged = charge(key.len(), rounded(total));
                if !self.make_room(charged)? {
                    return Ok(());
                }
                self.index_tags(key, seq, entry)?;
                self.write_file(key, seq, entry, &encoded)?;
                self.commit_file(key, seq, charged)
            }
            _ => {
                let mut value = Vec::with_capacity(8 + INLINE_MAX);
                value.extend_from_slice(&seq.to_be_bytes());
                value.extend_from_slice(&record.encode(true));
                let charged = charge(key.len(), value.len() as u64);
                if !self.make_room(charged)? {
                    return Ok(());
                }
                if let Record::Entry(entry) = record {
                    self.index_tags(key, seq, entry)?;
                }
                self.commit_indexed(key, seq, IVec::from(value), charged)
            }
        }
    }

    /// Writes a body file (`entry`'s body, `record`, trailer) under a temporary name, then renames
    /// it into place. A body still in the file it was served from (a large one, refreshed by a
    /// 304) is copied from there.
    fn write_file(
        &self,
        key: &[u8],
        seq: u64,
        entry: &StoredEntry,
        record: &[u8],
    ) -> Result<(), DiskError> {
        let path = self.body_path(key, seq);
        let partial = path.with_extension("partial");
        let written = self
            .create_partial(&partial)
            .and_then(|mut file| {
                match &entry.spilled {
                    Some(spilled) => copy_body(spilled, &mut file)?,
                    None => file.write_all(&entry.body)?,
                }
                file.write_all(record)?;
                file.write_all(&trailer(record.len()))?;
                stamp(&file)
            })
            .and_then(|stamp| std::fs::rename(&partial, &path).map(|()| stamp));
        match written {
            Ok(stamp) => {
                if entry.content_length() > self.stream_over {
                    self.verified.insert(seq, stamp);
                }
                Ok(())
            }
            Err(err) => {
                let _ = std::fs::remove_file(&partial);
                Err(err.into())
            }
        }
    }

    /// Makes the body file of record `seq`, already in place, the record at `key`.
    fn commit_file(&self, key: &[u8], seq: u64, charged: u64) -> Result<(), DiskError> {
        let taken = {
            let mut index = self.index();
            self.take(&mut index, key, None).inspect(|_| {
                self.files().insert(key.into(), seq);
                index.insert(Slot {
                    key: key.into(),
                    seq,
                    charged,
                    in_file: true,
                });
            })
        };
        let gone = match taken {
            Ok(gone) => gone,
            Err(err) => {
                let _ = std::fs::remove_file(self.body_path(key, seq));
                return Err(err);
            }
        };
        self.account(charged, true);
        self.replaced(gone)
    }

    /// Stores `value` (sequence number `seq`, then the record) in sled at `key`.
    fn commit_indexed(
        &self,
        key: &[u8],
        seq: u64,
        value: IVec,
        charged: u64,
    ) -> Result<(), DiskError> {
        let gone = {
            let mut index = self.index();
            let gone = match self.records.insert(key, value)? {
                Some(old) => Some(Gone {
                    key: key.into(),
                    seq: seq_of(&old),
                    charged: index.remove(seq_of(&old)).map_or(0, |slot| slot.charged),
                    value: Some(old),
                }),
                None => self.files().remove(key).map(|old| Gone {
                    key: key.into(),
                    seq: old,
                    charged: index.remove(old).map_or(0, |slot| slot.charged),
                    value: None,
                }),
            };
            index.insert(Slot {
                key: key.into(),
                seq,
                charged,
                in_file: false,
            });
            gone
        };
        self.account(charged, false);
        self.replaced(gone)
    }

    /// After a store: forgets the record it replaced, and evicts down to the budget.
    fn replaced(&self, gone: Option<Gone>) -> Result<(), DiskError> {
        if let Some(gone) = gone {
            // A soft purge marked the response the new one replaces, not the new one. (A soft
            // purge racing this store is settled by the cache's invalidation epochs, which remove
            // a response fetched before it.)
            self.unmark(&gone.key)?;
            self.forget(gone);
        }
        self.evict_to_budget(0)
    }

    /// Where the moves in the eviction order are kept across a clean restart.
    fn places_file(&self) -> PathBuf {
        self.index_dir.with_file_name("places")
    }

    /// Writes the moves in the eviction order ([`Index::moved`]) to the `places` file, whole or
    /// not at all, for the next start-up.
    fn save_places(&self) -> std::io::Result<()> {
        let saved: Vec<u8> = (self.index().moved.iter())
            .flat_map(|(seq, place)| [seq.to_be_bytes(), place.to_be_bytes()])
            .flatten()
            .collect();
        let places = self.places_file();
        if saved.is_empty() {
            return match std::fs::remove_file(&places) {
                Err(err) if err.kind() != ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            };
        }
        let partial = places.with_extension("partial");
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(&saved)?;
        file.sync_all()?;
        std::fs::rename(&partial, &places)
    }

    /// Takes the record at `key` out of the index (only if its sequence number is `only`, when
    /// given). Called with the index locked, which every change to `records` is made under.
    fn take(
        &self,
        index: &mut Index,
        key: &[u8],
        only: Option<u64>,
    ) -> Result<Option<Gone>, DiskError> {
        if let Some(seq) = self.file_seq(key) {
            if only.is_some_and(|only| only != seq) {
                return Ok(None);
            }
            self.files().remove(key);
            let charged = index.remove(seq).map_or(0, |slot| slot.charged);
            return Ok(Some(Gone {
                key: key.into(),
                seq,
                charged,
                value: None,
            }));
        }
        if let Some(only) = only
            && self.records.get(key)?.map(|value| seq_of(&value)) != Some(only)
        {
            return Ok(None);
        }
        let Some(value) = self.records.remove(key)? else {
            return Ok(None);
        };
        let seq = seq_of(&value);
        let charged = index.remove(seq).map_or(0, |slot| slot.charged);
        Ok(Some(Gone {
            key: key.into(),
            seq,
            charged,
            value: Some(value),
        }))
    }

    /// Removes the record at `key` — only if its sequence number is `only`, when given. Returns
    /// whether there was one.
    fn remove(&self, key: &[u8], only: Option<u64>) -> Result<bool, DiskError> {
        let gone = self.take(&mut self.index(), key, only)?;
        let Some(gone) = gone else { return Ok(false) };
        self.unmark(key)?;
        self.forget(gone);
        Ok(true)
    }

    /// The keys of every record under `prefix`, and whether each is a response (not a Vary
    /// marker).
    fn keys_under(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, bool)>, DiskError> {
        let mut keys = Vec::new();
        for item in self.records.scan_prefix(prefix) {
            let (key, value) = item?;
            keys.push((key.to_vec(), is_response(&value)));
        }
        let files = self.files();
        let under = files
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix));
        keys.extend(under.map(|(key, _)| (key.to_vec(), true)));
        Ok(keys)
    }

    /// Records the response's surrogate keys (`tag 0x00 record key seq` → the key's URL), before
    /// its record is committed: a row without its record is harmless, a record missing from the
    /// index would escape a tag purge. Rows go with their record, in [`Inner::forget`].
    fn index_tags(&self, key: &[u8], seq: u64, entry: &StoredEntry) -> Result<(), DiskError> {
        for tag in crate::headers::stored_surrogate_keys(&entry.headers) {
            self.tags
                .insert(tag_row(tag, key, seq), entry.url.as_bytes())?;
        }
        Ok(())
    }

    /// Puts back the tag rows of a record in a body file that sled lost: they are written before
    /// the file is put in place, but sled writes them out up to 500 ms later (and not at all
    /// after a failed write).
    fn restore_tags(&self, key: &[u8], seq: u64, entry: &StoredEntry) -> Result<(), DiskError> {
        for tag in crate::headers::stored_surrogate_keys(&entry.headers) {
            let row = tag_row(tag, key, seq);
            if self.tags.get(&row)?.is_none() {
                self.tags.insert(row, entry.url.as_bytes())?;
            }
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

    /// Accounts for a record that left the index, and deletes its body file and tag rows.
    fn forget(&self, gone: Gone) {
        release(&self.charged, gone.charged);
        release(&self.entries, 1);
        if gone.value.is_some() {
            release(&self.in_index, gone.charged);
            self.checked.invalidate(&gone.seq);
        } else {
            self.verified.invalidate(&gone.seq);
        }
        if !self.tags.is_empty() {
            self.unindex_tags(&gone);
        }
        if gone.value.is_none() {
            let path = self.body_path(&gone.key, gone.seq);
            if let Err(err) = std::fs::remove_file(&path)
                && err.kind() != ErrorKind::NotFound
            {
                // Left whole, the next start-up would take the file back (a purged response
                // served again); emptied, it fails the start-up check. A client still reading it
                // is cut off (an error it sees, never a wrong body): the price of a file system
                // that refuses to delete.
                let emptied = std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|file| file.set_len(0));
                match emptied {
                    Ok(()) => {
                        warn!(key = %hex(&gone.key), %err, "cannot delete a body file; emptied it instead")
                    }
                    Err(also) => {
                        error!(key = %hex(&gone.key), %err, %also, "cannot delete or empty a body file: after a restart, what it holds may be served again")
                    }
                }
            }
        }
    }

    /// Deletes the tag rows of a record that left the index.
    fn unindex_tags(&self, gone: &Gone) {
        let entry = match &gone.value {
            Some(value) if is_response(value) => {
                let record = Bytes::copy_from_slice(&value[8..]);
                match Record::decode(record, &self.heuristic()) {
                    Ok(Decoded::Record(Record::Entry(entry))) => entry,
                    // A record that does not decode indexed nothing that can be found again.
                    _ => return,
                }
            }
            Some(_) => return,
            None => {
                let path = self.body_path(&gone.key, gone.seq);
                let Ok(file) = std::fs::File::open(path) else {
                    return;
                };
                let Ok(len) = file.metadata().map(|meta| meta.len()) else {
                    return;
                };
                match read_record(&file, len, None, &self.heuristic(), true) {
                    Ok(Ok((entry, _))) => Arc::new(*entry),
                    _ => return,
                }
            }
        };
        for tag in crate::headers::stored_surrogate_keys(&entry.headers) {
            if let Err(err) = self.tags.remove(tag_row(tag, &gone.key, gone.seq)) {
                warn!(%err, "cannot delete a tag index row");
            }
        }
    }

    /// Evicts the oldest records, if need be, so that `charged` more bytes fit in the budget;
    /// `false` when they cannot, even with the tier empty.
    fn make_room(&self, charged: u64) -> Result<bool, DiskError> {
        self.measure_index(false);
        if charged > self.budget() {
            return Ok(false);
        }
        self.evict_to_budget(charged)?;
        Ok(true)
    }

    /// Evicts the oldest records (in the order of [`Index::order`]) while the footprint, with
    /// `incoming` bytes about to be written, is over the budget.
    fn evict_to_budget(&self, incoming: u64) -> Result<(), DiskError> {
        self.measure_index(false);
        let budget = self.budget();
        if self.footprint() + incoming <= budget {
            return Ok(());
        }
        // Down to a low-water mark, so that sled's own growth (its log, a flush) stays inside the
        // budget and eviction does not run on every store.
        let low_water = (budget / 100 * LOW_WATER_PERCENT).saturating_sub(incoming);
        // sled gives space back lazily: measure again as records go, and stop when what is over
        // is sled's own overhead (or spools in flight), which evicting more records cannot cure.
        while self.footprint() > low_water && self.charged.load(Ordering::Relaxed) > 0 {
            self.measure_index(false);
            let beyond_records =
                self.index_overhead.load(Ordering::Relaxed) + self.spooling.load(Ordering::Relaxed);
            if beyond_records >= low_water {
                break;
            }
            let gone = {
                let mut index = self.index();
                // A record whose response the memory tier holds is in use, though it is served
                // from memory and not read here: it goes to the back of the order, so that a
                // restart (which empties memory) finds it on disk.
                let mut kept = 0;
                let (seq, key) = loop {
                    let Some((&place, slot)) = index.order.first_key_value() else {
                        return Ok(());
                    };
                    if kept < KEEP_AT_MOST
                        && self
                            .lasting
                            .in_memory
                            .get()
                            .is_some_and(|held| held(&slot.key))
                    {
                        kept += 1;
                        let to = self.db.generate_id()?;
                        index.move_back(place, to);
                        continue;
                    }
                    break (slot.seq, slot.key.clone());
                };
                match self.take(&mut index, &key, Some(seq))? {
                    Some(gone) => gone,
                    // Not the record at its key (which the index rules out): its place goes all
                    // the same, or eviction would stop here.
                    None => {
                        let slot = index.remove(seq);
                        let (charged, in_file) = slot.map_or((0, true), |s| (s.charged, s.in_file));
                        Gone {
                            key,
                            seq,
                            charged,
                            value: (!in_file).then(IVec::default),
                        }
                    }
                }
            };
            self.unmark(&gone.key)?;
            self.lasting.evictions.fetch_add(1, Ordering::Relaxed);
            self.forget(gone);
        }
        Ok(())
    }

    /// Measures sled's own overhead, and the room left on the file system, again: at most once
    /// per [`MEASURE_EVERY`] unless `now`.
    fn measure_index(&self, now: bool) {
        {
            let mut measured = lock(&self.measured);
            if !now && measured.elapsed() < MEASURE_EVERY {
                return;
            }
            *measured = Instant::now();
        }
        let allocated = allocated_size(&self.index_dir);
        let overhead = allocated.saturating_sub(self.in_index.load(Ordering::Relaxed));
        self.index_overhead.store(overhead, Ordering::Relaxed);
        if let Ok(available) = available(&self.bodies) {
            let room = (self.footprint() + available).saturating_sub(self.min_free);
            self.room.store(room, Ordering::Relaxed);
            // Otherwise a disk with less free than `min_free` quietly makes the tier hold
            // nothing (responses are still `stored`: in memory).
            // Said again once it has twice that: room near the line would flap.
            let was = self.short.load(Ordering::Relaxed);
            let short = if was {
                room < self.capacity / 5
            } else {
                room < self.capacity / 10
            };
            if self.short.swap(short, Ordering::Relaxed) != short {
                let path = self.bodies.display();
                if short {
                    warn!(%path, room, available, min_free = self.min_free, "the disk tier's file system has little room beyond cache.disk.min_free: the tier holds at most {room} bytes");
                } else {
                    info!(%path, room, "the disk tier's file system has room again");
                }
            }
        }
    }

    /// Creates the body file `partial` is to be written under. The bodies directory is made
    /// again if it has gone: an operator who empties the store while edge runs (`rm -rf
    /// store/*`, as nginx's cache directory is emptied, whose levels nginx makes again as it
    /// needs them) would otherwise have every body file fail until a restart.
    fn create_partial(&self, partial: &Path) -> std::io::Result<std::fs::File> {
        match std::fs::File::create(partial) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.bodies)?;
                std::fs::File::create(partial)
            }
            created => created,
        }
    }

    fn body_path(&self, key: &[u8], seq: u64) -> PathBuf {
        let mut name = vec![b'-'; 2 * (key.len() + 8) + 1];
        let (key_hex, seq_hex) = name.split_at_mut(2 * key.len());
        write_hex(key_hex, key);
        write_hex(&mut seq_hex[1..], &seq.to_be_bytes());
        self.bodies.join(std::ffi::OsStr::from_bytes(&name))
    }
}

/// A body being written to its file while it streams to clients, who read it back from the file
/// (by offset, through [`Spool::reader`]) instead of from memory. [`Spool::commit`] ends it with
/// its record, renames it into place and stores it; dropping a spool without committing deletes
/// the file.
pub struct Spool {
    tier: DiskTier,
    /// The store it was begun in: it is committed there, and only while that is still the
    /// tier's store.
    inner: Arc<Inner>,
    seq: u64,
    partial: PathBuf,
    file: std::fs::File,
    reader: Arc<std::fs::File>,
    hasher: blake3::Hasher,
    len: u64,
}

impl Spool {
    /// Appends a chunk, keeping the tier within its budget meanwhile. Blocking.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), DiskError> {
        // Its store failed: it would hold the store open, and could never be committed.
        if self.inner.off.load(Ordering::Relaxed) {
            return Err(DiskError::Off);
        }
        let len = self.len + chunk.len() as u64;
        if self.len == 0 || self.len / SPOOL_EVICT_EVERY != len / SPOOL_EVICT_EVERY {
            // Room for the next stretch, made before it is written.
            let evicted = self.inner.evict_to_budget(SPOOL_EVICT_EVERY);
            self.tier.check(&self.inner, evicted)?;
        }
        // Larger than all the tier may hold: stop before it fills the disk.
        if len > self.inner.budget() {
            return Err(DiskError::NoRoom);
        }
        self.file.write_all(chunk)?;
        self.hasher.update(chunk);
        self.len = len;
        self.inner
            .spooling
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// A handle to read what has been written so far; it stays valid after the file is renamed,
    /// evicted or deleted. Readers read the body's bytes only (the record follows them).
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
    pub fn commit(mut self, key: Vec<u8>, entry: &StoredEntry) -> Result<(), DiskError> {
        let (tier, inner) = (self.tier.clone(), self.inner.clone());
        if !tier
            .shared
            .current()
            .is_some_and(|current| Arc::ptr_eq(&current, &inner))
        {
            return Err(DiskError::Off);
        }
        let committed = (|| {
            let encoded = entry.encode_detached(self.body_ref());
            let total = self.len + encoded.len() as u64 + TRAILER;
            let charged = charge(key.len(), rounded(total));
            if charged > inner.budget() {
                return Ok(());
            }
            self.file.write_all(&encoded)?;
            self.file.write_all(&trailer(encoded.len()))?;
            let stamp = stamp(&self.file)?;
            inner.index_tags(&key, self.seq, entry)?;
            std::fs::rename(&self.partial, inner.body_path(&key, self.seq))?;
            let seq = self.seq;
            if self.len > inner.stream_over {
                inner.verified.insert(seq, stamp);
            }
            drop(self);
            inner.commit_file(&key, seq, charged)
        })();
        tier.check(&inner, committed)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        release(&self.inner.spooling, self.len);
        // Committed spools were renamed away; anything else is abandoned.
        let _ = std::fs::remove_file(&self.partial);
    }
}

/// What identifies one version of a file: its length and modification time.
type Stamp = (u64, i64, i64);

fn stamp(file: &std::fs::File) -> std::io::Result<Stamp> {
    let meta = file.metadata()?;
    Ok((meta.len(), meta.mtime(), meta.mtime_nsec()))
}

/// What a record of `bytes` bytes (in sled, or a body file's rounded size) at a key of `key_len`
/// bytes is charged.
fn charge(key_len: usize, bytes: u64) -> u64 {
    bytes + key_len as u64 + OVERHEAD_PER_RECORD
}

/// The end of a body file whose record is `record_len` bytes.
fn trailer(record_len: usize) -> [u8; TRAILER as usize] {
    let mut out = [0; TRAILER as usize];
    out[..4].copy_from_slice(&(record_len as u32).to_be_bytes());
    out[4..].copy_from_slice(TRAILER_MAGIC);
    out
}

/// Reads the record at the end of a body file of `len` bytes (not the body), and verifies it
/// unless `check` is false. `whole` is the file's bytes, if they were read already.
fn read_record(
    file: &std::fs::File,
    len: u64,
    whole: Option<&Bytes>,
    heuristic: &HeuristicConfig,
    check: bool,
) -> std::io::Result<Result<(Box<StoredEntry>, BodyRef), DecodeError>> {
    let (record, body_len) = match record_in(file, len, whole)? {
        Ok(found) => found,
        Err(err) => return Ok(Err(err)),
    };
    let decoded = StoredEntry::decode_checked(record, heuristic, check);
    Ok(match decoded {
        Ok(Decoded::BodyElsewhere(entry, body)) if body.len == body_len => Ok((entry, body)),
        Ok(Decoded::BodyElsewhere(..)) => Err(DecodeError::Length),
        Ok(Decoded::Record(_)) => Err(DecodeError::Invalid),
        Err(err) => Err(err),
    })
}

/// The bytes of the record at the end of a body file of `len` bytes, undecoded, and the length
/// of the body before it. `whole` is the file's bytes, if they were read already.
fn record_in(
    file: &std::fs::File,
    len: u64,
    whole: Option<&Bytes>,
) -> std::io::Result<Result<(Bytes, u64), DecodeError>> {
    if len < TRAILER || whole.is_some_and(|whole| whole.len() as u64 != len) {
        return Ok(Err(DecodeError::Truncated));
    }
    let tail_len = len.min(TAIL_READ);
    let mut buf = [0; TAIL_READ as usize];
    let tail = match whole {
        Some(whole) => &whole[(len - tail_len) as usize..],
        None => {
            let tail = &mut buf[..tail_len as usize];
            file.read_exact_at(tail, len - tail_len)?;
            tail
        }
    };
    let at = (tail_len - TRAILER) as usize;
    if tail[at + 4..] != TRAILER_MAGIC[..] {
        return Ok(Err(DecodeError::Version));
    }
    let record_len = u64::from(u32::from_be_bytes([
        tail[at],
        tail[at + 1],
        tail[at + 2],
        tail[at + 3],
    ]));
    let Some(body_len) = (len - TRAILER)
        .checked_sub(record_len)
        .filter(|_| record_len <= RECORD_MAX)
    else {
        return Ok(Err(DecodeError::Truncated));
    };
    let record = if let Some(whole) = whole {
        whole.slice(body_len as usize..(body_len + record_len) as usize)
    } else if record_len as usize <= at {
        Bytes::copy_from_slice(&tail[at - record_len as usize..at])
    } else {
        let mut record = vec![0; record_len as usize];
        file.read_exact_at(&mut record, body_len)?;
        Bytes::from(record)
    };
    Ok(Ok((record, body_len)))
}

/// The first `len` bytes of a body file, into memory that is not zeroed first, in one read where
/// the kernel gives them at once (`Read::read_to_end` reads in pieces growing from 8 KiB).
fn read_body(file: &std::fs::File, len: u64) -> std::io::Result<Bytes> {
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    let mut body = Vec::with_capacity(len);
    while body.len() < len {
        let at = body.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut body), at) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
    body.truncate(len);
    Ok(Bytes::from(body))
}

/// Writes the body of `from` at the position of `out`, copied by the kernel where the filesystem
/// allows (`copy_file_range`: the bytes do not pass through edge's memory, and on filesystems that
/// share extents they are not copied at all), else block by block.
fn copy_body(from: &Spilled, out: &mut std::fs::File) -> std::io::Result<()> {
    let mut offset = 0;
    while offset < from.len {
        let left = usize::try_from(from.len - offset).unwrap_or(usize::MAX);
        // The source offset is given, so the file's own position, shared with every clone of it,
        // is left alone; `out`'s moves on with each copy, as a write's would.
        match rustix::fs::copy_file_range(&*from.file, Some(&mut offset), &*out, None, left) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            // Not between these files here (an old kernel, another filesystem): copy the rest.
            Err(_) => break,
        }
    }
    while offset < from.len {
        let block = from.read_at(offset, (from.len - offset).min(COPY_BLOCK))?;
        out.write_all(&block)?;
        offset += block.len() as u64;
    }
    Ok(())
}

/// The most [`copy_body`] reads at once when the kernel cannot copy for it.
const COPY_BLOCK: u64 = 1 << 20;

/// Whether the first `expected.len` bytes of `file` hash to `expected.checksum`, reading them in
/// blocks rather than whole.
fn body_matches(file: &std::fs::File, expected: BodyRef) -> std::io::Result<bool> {
    let mut hasher = blake3::Hasher::new();
    let mut block = vec![0; 1 << 20];
    let mut offset = 0;
    while offset < expected.len {
        let want = (expected.len - offset).min(block.len() as u64) as usize;
        file.read_exact_at(&mut block[..want], offset)?;
        hasher.update(&block[..want]);
        offset += want as u64;
    }
    Ok(*hasher.finalize().as_bytes() == expected.checksum)
}

/// Checks, beside the server, the record of every body file found at start-up (`files`), and
/// drops those that do not verify or do not belong to their key: what a crash or a damaged disk
/// left. Bodies are verified when they are read. Stops when the tier closes.
fn check_files(tier: Weak<Inner>, files: Vec<FileName>) {
    if files.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("edge-disk-check".into())
        .spawn(move || {
            let mut dropped = 0;
            for (key, seq) in files {
                let Some(inner) = tier.upgrade() else { return };
                let path = inner.body_path(&key, seq);
                let Ok(file) = std::fs::File::open(&path) else {
                    continue; // gone since: evicted, replaced or removed
                };
                let Ok(len) = file.metadata().map(|meta| meta.len()) else {
                    continue;
                };
                let failure = match read_record(&file, len, None, &inner.heuristic(), true) {
                    Ok(Ok((entry, _))) if is_key_of(&key, &entry.url) => {
                        if let Err(err) = inner.restore_tags(&key, seq, &entry) {
                            debug!(key = %hex(&key), %err, "cannot restore a body file's tag rows");
                        }
                        continue;
                    }
                    Ok(Ok(_)) => FOR_ANOTHER_KEY.to_owned(),
                    Ok(Err(err)) => err.to_string(),
                    Err(err) => err.to_string(),
                };
                debug!(key = %hex(&key), %failure, "dropping a body file found at start-up");
                if inner.remove(&key, Some(seq)).unwrap_or(false) {
                    dropped += 1;
                }
            }
            if dropped > 0 {
                warn!(
                    dropped,
                    "dropped body files found at start-up that do not verify"
                );
            }
        });
    if let Err(err) = spawned {
        warn!(%err, "cannot start checking the body files");
    }
}

/// How often, and how far apart, a store whose lock is held is tried again (two seconds in all).
const LOCK_ATTEMPTS: u32 = 40;
const LOCK_RETRY: Duration = Duration::from_millis(50);

/// Whether sled could not open the store because its lock file is held.
fn is_locked(err: &DiskError) -> bool {
    err.to_string().contains("could not acquire lock")
}

/// Whether opening the store failed for want of permission or of room (a full file system or
/// quota), not because it is broken: a store moved aside for that would be deleted at the next
/// start, the whole cache lost to a disk that filled while edge was down.
fn is_refused(err: &DiskError) -> bool {
    let io = match err {
        DiskError::Io(io) | DiskError::Sled(sled::Error::Io(io)) => io,
        _ => return false,
    };
    matches!(
        io.kind(),
        std::io::ErrorKind::PermissionDenied
            | std::io::ErrorKind::ReadOnlyFilesystem
            | std::io::ErrorKind::StorageFull
            | std::io::ErrorKind::QuotaExceeded
    )
}

/// The key and sequence number a body file's name holds.
fn parse_name(name: &str) -> Option<FileName> {
    let (key, seq) = name.split_once('-')?;
    let seq: [u8; 8] = unhex(seq)?.try_into().ok()?;
    Some((unhex(key)?.into(), u64::from_be_bytes(seq)))
}

/// Whether `key` is a record key of `url` (its hash, then any variant's): whether a record for
/// `url` was stored under it.
fn is_key_of(key: &[u8], url: &str) -> bool {
    key.get(..32) == Some(&blake3::hash(url.as_bytes()).as_bytes()[..])
}

const FOR_ANOTHER_KEY: &str = "its record is for another key";

/// Whether a record value (sequence number, then record) holds a response, not a Vary marker.
fn is_response(value: &[u8]) -> bool {
    value.get(8..11) == Some(b"EDG")
}

fn tag_row(tag: &str, key: &[u8], seq: u64) -> Vec<u8> {
    let mut row = tag_prefix(tag);
    row.extend_from_slice(key);
    row.extend_from_slice(&seq.to_be_bytes());
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

/// Deletes the stores moved aside before (`<path>.broken-*`): they sit outside the disk budget,
/// so a store that breaks again and again would fill the file system. The one about to be
/// moved aside is kept for a post-mortem, as the last core dump is.
fn remove_older_asides(path: &Path) {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let mut prefix = name.to_os_string();
    prefix.push(".broken-");
    let prefix = prefix.as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir(if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    }) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().as_encoded_bytes().starts_with(prefix) {
            continue;
        }
        let older = entry.path();
        match std::fs::remove_dir_all(&older) {
            Ok(()) => warn!(path = %older.display(), "deleted a disk tier moved aside before"),
            Err(err) => {
                warn!(path = %older.display(), %err, "cannot delete a disk tier moved aside before")
            }
        }
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

/// The sequence number a record value (or a tag row's end) starts with.
fn seq_of(value: &[u8]) -> u64 {
    value
        .get(..8)
        .and_then(|seq| seq.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    write_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

/// Writes `bytes` into `out` (twice as long) in lowercase hex digits.
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (digits, &b) in out.chunks_exact_mut(2).zip(bytes) {
        digits[0] = DIGITS[usize::from(b >> 4)];
        digits[1] = DIGITS[usize::from(b & 15)];
    }
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
mod tests {
    use super::*;
    use crate::cache::entry::StoredEntry;
    use crate::cache::key::Variance;
    use http::{HeaderMap, HeaderValue, StatusCode};

    /// Evicted records take their tag rows with them: per-object tags do not grow the index.
    #[test]
    fn tag_rows_go_with_evicted_records() {
        let dir = tempfile::TempDir::new().unwrap();
        let tier =
            DiskTier::open(dir.path(), 32 << 20, 0, 8 << 20, HeuristicConfig::default()).unwrap();
        for i in 0..3000u32 {
            let url = format!("http://o/{i}");
            let tags = format!("product-{i} all");
            let entry = tagged_entry(&url, Some(&tags), vec![b'x'; 64 * 1024]);
            let key = blake3::hash(url.as_bytes()).as_bytes().to_vec();
            tier.inner().put(&key, &entry).unwrap();
        }
        let records = tier.inner().entries.load(Ordering::Relaxed) as usize;
        let tags = tier.inner().tags.len();
        assert!(tier.inner().lasting.evictions.load(Ordering::Relaxed) > 1000);
        assert_eq!(tags, 2 * records, "tag rows {tags} for {records} records");
    }

    /// A memory tier that holds everything the disk tier does keeps nothing from eviction: the
    /// budget holds, and what goes is still the oldest but for [`KEEP_AT_MOST`] at a time.
    #[test]
    fn eviction_holds_the_budget_when_the_memory_tier_holds_everything() {
        let dir = tempfile::TempDir::new().unwrap();
        let tier =
            DiskTier::open(dir.path(), 32 << 20, 0, 8 << 20, HeuristicConfig::default()).unwrap();
        tier.keep_in_memory_ones(|_| true);
        let key = |i: u32| {
            blake3::hash(format!("http://o/{i}").as_bytes())
                .as_bytes()
                .to_vec()
        };
        for i in 0..1500u32 {
            let entry = tagged_entry(&format!("http://o/{i}"), None, vec![b'x'; 64 * 1024]);
            tier.inner().put(&key(i), &entry).unwrap();
        }
        let inner = tier.inner();
        assert!(inner.footprint() <= 32 << 20, "{}", inner.footprint());
        assert!(inner.lasting.evictions.load(Ordering::Relaxed) > 1000);
        assert!(inner.file_seq(&key(1499)).is_some());
        assert!(inner.file_seq(&key(0)).is_none());
    }

    /// A record moved to the back of the eviction order, because the memory tier held its
    /// response, is there again after a clean restart (which empties memory, so that the
    /// start-up's eviction would otherwise take it first, as the oldest store); once it is
    /// removed, its place goes too; after a crash, the order is that of the stores.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_record_moved_back_in_the_eviction_order_stays_there_across_a_restart() {
        let dir = tempfile::TempDir::new().unwrap();
        let open = || DiskTier::open(dir.path(), 8 << 20, 0, 8 << 20, HeuristicConfig::default());
        let key = |i: u32| {
            blake3::hash(format!("http://o/{i}").as_bytes())
                .as_bytes()
                .to_vec()
        };
        let entry = |i: u32| tagged_entry(&format!("http://o/{i}"), None, vec![b'x'; 64 * 1024]);
        let hot = key(0);
        let tier = open().unwrap();
        let held = hot.clone();
        tier.keep_in_memory_ones(move |key| key == held);
        tier.inner().put(&hot, &entry(0)).unwrap();
        let seq = tier.inner().file_seq(&hot).unwrap();
        // Stores until eviction reaches it, and moves it.
        let mut i = 1;
        let place = loop {
            tier.inner().put(&key(i), &entry(i)).unwrap();
            i += 1;
            if let Some(&place) = tier.inner().index().moved.get(&seq) {
                break place;
            }
            assert!(i < 1000, "never moved");
        };
        let first = |tier: &DiskTier| *tier.inner().index().order.first_key_value().unwrap().0;
        let front = first(&tier);
        assert!(place > front);
        tier.flush().await.unwrap();
        drop(tier);

        let tier = open().unwrap();
        assert_eq!(tier.inner().index().moved.get(&seq), Some(&place));
        assert_eq!(first(&tier), front, "the front is not the moved record");
        // Read once: a crash from here on finds the order of the stores.
        drop(tier);
        let tier = open().unwrap();
        assert!(tier.inner().index().moved.is_empty());
        assert_eq!(first(&tier), seq);
        drop(tier);

        // Moved again, then removed: its place goes with it.
        let tier = open().unwrap();
        tier.inner().index().move_back(seq, place);
        tier.flush().await.unwrap();
        drop(tier);
        let tier = open().unwrap();
        assert_eq!(tier.inner().index().moved.get(&seq), Some(&place));
        assert!(tier.inner().remove(&hot, None).unwrap());
        tier.flush().await.unwrap();
        drop(tier);
        let tier = open().unwrap();
        assert!(tier.inner().index().moved.is_empty());
    }

    /// A body file whose tag rows sled lost (written before the file, out to disk up to 500 ms
    /// later, and not at all after a failed write) gets them back at start-up, so a tag purge
    /// finds it.
    #[tokio::test(flavor = "multi_thread")]
    async fn tag_rows_sled_lost_are_restored_from_body_files() {
        let dir = tempfile::TempDir::new().unwrap();
        let open = || DiskTier::open(dir.path(), 1 << 30, 0, 8 << 20, HeuristicConfig::default());
        let tier = open().unwrap();
        let url = "http://o/tagged";
        let entry = tagged_entry(url, Some("red"), vec![b'x'; 64 * 1024]);
        let key = blake3::hash(url.as_bytes()).as_bytes().to_vec();
        tier.inner().put(&key, &entry).unwrap();
        assert_eq!(tier.tagged("red".into()).await.unwrap(), vec![url]);
        tier.inner().tags.clear().unwrap();
        assert!(tier.tagged("red".into()).await.unwrap().is_empty());
        drop(tier);

        let tier = open().unwrap();
        let waited = Instant::now();
        while tier.tagged("red".into()).await.unwrap().is_empty() {
            assert!(waited.elapsed() < Duration::from_secs(10), "not restored");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(tier.tagged("red".into()).await.unwrap(), vec![url]);
    }

    /// A scan by URL prefix reads the records in sled and at the end of body files, a variant's
    /// as well; not Vary markers, other URLs, or a record under a key not made from its URL (a
    /// file copied over another's). The removal, made again as a reopened store makes it, takes
    /// every record of the URLs found.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_url_prefix_scan_reads_the_records_in_sled_and_in_body_files() {
        let dir = tempfile::TempDir::new().unwrap();
        let tier =
            DiskTier::open(dir.path(), 1 << 30, 0, 8 << 20, HeuristicConfig::default()).unwrap();
        let inner = tier.inner();
        let key = |url: &str| blake3::hash(url.as_bytes()).as_bytes().to_vec();
        let mut variant = key("/s/v");
        variant.extend_from_slice(&[7; 32]);
        for (key, record) in [
            (key("/s/small"), entry("/s/small", vec![1; 100])),
            (key("/s/large"), entry("/s/large", vec![2; 64 << 10])),
            (key("/s/v"), Record::Vary(vec![http::header::ACCEPT].into())),
            (variant, entry("/s/v", vec![3; 100])),
            (key("/sx"), entry("/sx", vec![4; 100])),
            (key("/elsewhere"), entry("/s/copied", vec![5; 64 << 10])),
        ] {
            inner.put(&key, &record).unwrap();
        }
        let mut found = tier.urls_under("/s/".into()).await.unwrap();
        found.sort();
        assert_eq!(found, ["/s/large", "/s/small", "/s/v"]);
        inner.apply(&[Removal::UrlPrefix("/s/".into())]).unwrap();
        assert!(tier.urls_under("/s/".into()).await.unwrap().is_empty());
        assert_eq!(tier.stats().entries, 2, "/sx and the copied file are left");
    }

    /// Prefix purges made while the tier was off are made when it is opened again, all of them
    /// in one reading of the records (one reading each held the reopening up, the later ones
    /// under the journal's lock, which request tasks take).
    #[tokio::test(flavor = "multi_thread")]
    async fn prefix_purges_missed_while_off_are_made_in_one_scan() {
        let dir = tempfile::TempDir::new().unwrap();
        let tier =
            DiskTier::open(dir.path(), 1 << 30, 0, 8 << 20, HeuristicConfig::default()).unwrap();
        let key = |url: &str| blake3::hash(url.as_bytes()).as_bytes().to_vec();
        let urls = ["/a/1", "/b/2", "/c/3", "/d/4", "/kept"];
        for (n, url) in urls.into_iter().enumerate() {
            let body = vec![n as u8; if n % 2 == 0 { 100 } else { 64 << 10 }];
            tier.inner().put(&key(url), &entry(url, body)).unwrap();
        }
        // Off, as after a failed write; closed once its last user lets go.
        let off = tier.shared.store.write().unwrap().take().unwrap();
        drop(off);
        for prefix in ["/a/", "/b/", "/c/", "/d/"] {
            assert!(tier.urls_under(prefix.into()).await.unwrap().is_empty());
        }
        tier.shared.reopen().unwrap();
        assert_eq!(tier.inner().scans.load(Ordering::Relaxed), 1);
        for url in urls {
            let got = tier.get(key(url)).await.unwrap();
            assert_eq!(got.is_some(), url == "/kept", "{url}");
        }
    }

    /// A body file that a prefix scan cannot read (here a directory in its place, as an I/O
    /// error or too many open files would leave it) is removed: it may be under the prefix.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_body_file_a_prefix_scan_cannot_read_is_removed() {
        let dir = tempfile::TempDir::new().unwrap();
        let tier =
            DiskTier::open(dir.path(), 1 << 30, 0, 8 << 20, HeuristicConfig::default()).unwrap();
        let inner = tier.inner();
        let key = |url: &str| blake3::hash(url.as_bytes()).as_bytes().to_vec();
        for url in ["/s/unreadable", "/kept"] {
            inner
                .put(&key(url), &entry(url, vec![1; 64 << 10]))
                .unwrap();
        }
        let seq = inner.file_seq(&key("/s/unreadable")).unwrap();
        let path = inner.body_path(&key("/s/unreadable"), seq);
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(tier.urls_under("/s/".into()).await.unwrap().is_empty());
        assert_eq!(
            inner.file_seq(&key("/s/unreadable")),
            None,
            "left in the index"
        );
        assert!(inner.file_seq(&key("/kept")).is_some());
    }

    fn entry(url: &str, body: Vec<u8>) -> Record {
        tagged_entry(url, None, body)
    }

    /// A response fresh for 600 s, with `Surrogate-Key: tags` when given.
    fn tagged_entry(url: &str, tags: Option<&str>, body: Vec<u8>) -> Record {
        let now = SystemTime::now();
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", HeaderValue::from_static("max-age=600"));
        if let Some(tags) = tags {
            headers.insert("surrogate-key", HeaderValue::from_str(tags).unwrap());
        }
        Record::Entry(Arc::new(StoredEntry::new(
            url.to_owned(),
            StatusCode::OK,
            headers,
            Variance::default(),
            now,
            now,
            Bytes::from(body),
            &HeuristicConfig::default(),
        )))
    }

    /// A response with a body file writes nothing to sled (each sled write left ~0.5 KB resident
    /// per object); the index of such files is rebuilt from their names at start-up.
    #[test]
    fn records_in_body_files_are_not_in_sled_and_are_found_after_a_restart() {
        let dir = tempfile::TempDir::new().unwrap();
        let open = || DiskTier::open(dir.path(), 1 << 30, 0, 8 << 20, HeuristicConfig::default());
        let tier = open().unwrap();
        let key = |i: u32| blake3::hash(format!("/{i}").as_bytes()).as_bytes().to_vec();
        for i in 0..200u32 {
            let body = vec![i as u8; if i % 2 == 0 { 16 << 10 } else { 1000 }];
            tier.inner()
                .put(&key(i), &entry(&format!("/{i}"), body))
                .unwrap();
        }
        assert_eq!(tier.inner().records.len(), 100, "only the inline ones");
        assert_eq!(tier.stats().entries, 200);
        let charged = tier.inner().charged.load(Ordering::Relaxed);
        drop(tier);

        let tier = open().unwrap();
        assert_eq!(tier.stats().entries, 200);
        assert_eq!(tier.inner().charged.load(Ordering::Relaxed), charged);
        for i in 0..200u32 {
            let Some(Record::Entry(found)) = tier.inner().get(&key(i), false).unwrap() else {
                panic!("/{i} is gone");
            };
            let len = if i % 2 == 0 { 16 << 10 } else { 1000 };
            assert_eq!(found.body, vec![i as u8; len]);
        }
    }

    /// What a crash can leave behind, sorted out at start-up: two body files for one key, a body
    /// file older than the inline record that replaced it, and an inline record older than the
    /// body file that replaced it. The newer of each pair is kept and the older deleted.
    #[test]
    fn start_up_keeps_the_newer_of_two_records_for_a_key() {
        let dir = tempfile::TempDir::new().unwrap();
        let open = || DiskTier::open(dir.path(), 1 << 30, 0, 8 << 20, HeuristicConfig::default());
        let tier = open().unwrap();
        let key = |name: &str| blake3::hash(name.as_bytes()).as_bytes().to_vec();
        let put = |name: &str, body: Vec<u8>| {
            tier.inner().put(&key(name), &entry(name, body)).unwrap();
        };
        let file_of = |name: &str| {
            let seq = tier.inner().file_seq(&key(name)).expect("a body file");
            let path = tier.inner().body_path(&key(name), seq);
            (path.clone(), std::fs::read(path).unwrap())
        };
        for i in 0..50 {
            put(
                &format!("/plain{i}"),
                vec![i; if i % 2 == 0 { 16 << 10 } else { 900 }],
            );
        }
        put("/two-files", vec![1; 16 << 10]);
        let older_file = file_of("/two-files");
        put("/two-files", vec![2; 20 << 10]);
        put("/file-then-inline", vec![3; 16 << 10]);
        let replaced_file = file_of("/file-then-inline");
        put("/file-then-inline", vec![4; 900]);
        put("/inline-then-file", vec![5; 900]);
        let replaced_record = tier.inner().records.get(key("/inline-then-file")).unwrap();
        put("/inline-then-file", vec![6; 16 << 10]);
        let charged = tier.inner().charged.load(Ordering::Relaxed);
        drop(tier);

        // What a crash between storing a record and deleting the one it replaced leaves.
        std::fs::write(&older_file.0, &older_file.1).unwrap();
        std::fs::write(&replaced_file.0, &replaced_file.1).unwrap();
        {
            let db = sled::open(dir.path().join("index")).unwrap();
            db.open_tree("records")
                .unwrap()
                .insert(key("/inline-then-file"), replaced_record.unwrap())
                .unwrap();
            db.flush().unwrap();
        }

        let tier = open().unwrap();
        assert_eq!(tier.stats().entries, 53);
        assert_eq!(tier.inner().charged.load(Ordering::Relaxed), charged);
        assert!(!older_file.0.exists() && !replaced_file.0.exists());
        assert!(tier.inner().file_seq(&key("/inline-then-file")).is_some());
        assert_eq!(
            tier.inner().records.get(key("/inline-then-file")).unwrap(),
            None
        );
        let body = |name: &str| match tier.inner().get(&key(name), false).unwrap() {
            Some(Record::Entry(found)) => found.body.clone(),
            _ => panic!("{name} is gone"),
        };
        assert_eq!(body("/two-files"), vec![2; 20 << 10]);
        assert_eq!(body("/file-then-inline"), vec![4; 900]);
        assert_eq!(body("/inline-then-file"), vec![6; 16 << 10]);
        for i in 0..50 {
            let len = if i % 2 == 0 { 16 << 10 } else { 900 };
            assert_eq!(body(&format!("/plain{i}")), vec![i; len]);
        }
    }

    /// A large body refreshed by a 304 is not read back: its new record goes into a copy of the
    /// file it was served from, which holds the same bytes after the old file is replaced and
    /// after a restart.
    #[test]
    fn a_refreshed_record_of_a_large_body_goes_into_a_copy_of_its_file() {
        let dir = tempfile::TempDir::new().unwrap();
        // Bodies over 64 KiB are served from their files.
        let open = || DiskTier::open(dir.path(), 1 << 30, 0, 64 << 10, HeuristicConfig::default());
        let tier = open().unwrap();
        let key = blake3::hash(b"/big").as_bytes().to_vec();
        let body: Vec<u8> = (0..(1 << 20) + 7).map(|i| (i * 7 % 251) as u8).collect();
        tier.inner()
            .put(&key, &entry("/big", body.clone()))
            .unwrap();
        let Some(Record::Entry(stale)) = tier.inner().get(&key, true).unwrap() else {
            panic!("/big is gone");
        };
        assert!(stale.spilled.is_some() && stale.body.is_empty());
        let mut headers = stale.headers.to_map();
        headers.insert("x-version", HeaderValue::from_static("2"));
        let now = SystemTime::now();
        let mut refreshed = StoredEntry::new(
            stale.url.clone(),
            StatusCode::OK,
            headers,
            Variance::default(),
            now,
            now,
            Bytes::new(),
            &HeuristicConfig::default(),
        );
        refreshed.spilled = stale.spilled.clone();
        tier.inner()
            .put(&key, &Record::Entry(Arc::new(refreshed)))
            .unwrap();
        drop(stale);
        assert_eq!(tier.stats().entries, 1);
        assert_eq!(
            tier.inner().records.len(),
            0,
            "the record is in the file, not in sled"
        );
        drop(tier);

        let tier = open().unwrap();
        let Some(Record::Entry(found)) = tier.inner().get(&key, true).unwrap() else {
            panic!("the refreshed record is gone");
        };
        assert_eq!(found.headers.to_map()["x-version"], "2");
        let spilled = found.spilled.as_ref().expect("served from its file");
        assert!(spilled.read_at(0, spilled.len).unwrap() == body);
        assert_eq!(tier.integrity_failures(), 0);
        let files = std::fs::read_dir(dir.path().join("bodies"))
            .unwrap()
            .count();
        assert_eq!(files, 1, "the old file went when the new one replaced it");
    }

    /// After a restart, the first reads of a large body file hash it once, however many of them
    /// arrive at once (a popular object): the others wait for that and find it verified.
    #[test]
    fn concurrent_first_reads_of_a_large_body_hash_it_once() {
        let dir = tempfile::TempDir::new().unwrap();
        let open = || DiskTier::open(dir.path(), 1 << 30, 0, 64 << 10, HeuristicConfig::default());
        let key = blake3::hash(b"/big").as_bytes().to_vec();
        let body = vec![7; 4 << 20];
        let tier = open().unwrap();
        tier.inner()
            .put(&key, &entry("/big", body.clone()))
            .unwrap();
        drop(tier);
        let tier = open().unwrap();
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let (inner, key) = (tier.inner().clone(), key.clone());
                std::thread::spawn(move || match inner.get(&key, true).unwrap() {
                    Some(Record::Entry(found)) => found.content_length(),
                    _ => panic!("/big is gone"),
                })
            })
            .collect();
        for reader in readers {
            assert_eq!(reader.join().unwrap(), body.len() as u64);
        }
        assert_eq!(tier.inner().hashed.load(Ordering::Relaxed), 1);

        // A file that fails is dropped by the read that hashed it; those that waited find it gone.
        drop(tier);
        let bodies = dir.path().join("bodies");
        let file = std::fs::read_dir(&bodies)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[1 << 20] ^= 1;
        std::fs::write(&file, bytes).unwrap();
        let tier = open().unwrap();
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let (inner, key) = (tier.inner().clone(), key.clone());
                std::thread::spawn(move || inner.get(&key, true).unwrap().is_none())
            })
            .collect();
        for reader in readers {
            assert!(reader.join().unwrap(), "a corrupt body is never read");
        }
        assert_eq!(tier.inner().hashed.load(Ordering::Relaxed), 1);
        assert_eq!(tier.integrity_failures(), 1);
    }

    /// A body file written by this process is not hashed when it is first read: its record's
    /// checksum was taken of the bytes written, whether they came from memory, from a spool or
    /// from the file a refreshed record was copied out of. One found at start-up is, once.
    #[test]
    fn a_body_file_written_since_start_up_is_read_without_hashing_it() {
        let dir = tempfile::TempDir::new().unwrap();
        // Bodies over 64 KiB are served from their files, and hashed on the blocking pool.
        let open = || DiskTier::open(dir.path(), 1 << 30, 0, 64 << 10, HeuristicConfig::default());
        let body: Vec<u8> = (0..(1 << 20) + 3).map(|i| (i % 251) as u8).collect();
        let key = |name: &str| blake3::hash(name.as_bytes()).as_bytes().to_vec();
        let read = |tier: &DiskTier, name: &str| match tier.inner().get(&key(name), false) {
            Ok(Some(Record::Entry(found))) => {
                let spilled = found.spilled.clone().expect("served from its file");
                assert_eq!(spilled.read_at(0, spilled.len).unwrap(), body);
                found
            }
            Err(DiskError::Large) => panic!("{name} needs hashing first"),
            _ => panic!("{name} is gone"),
        };
        let tier = open().unwrap();
        tier.inner()
            .put(&key("/put"), &entry("/put", body.clone()))
            .unwrap();
        let found = read(&tier, "/put");
        // A 304's refresh: the new record goes into a copy of the file.
        tier.inner()
            .put(&key("/put"), &Record::Entry(found.clone()))
            .unwrap();
        assert_ne!(tier.inner().file_seq(&key("/put")), None);
        read(&tier, "/put");
        let mut spool = tier.spool(key("/spooled"), None).unwrap();
        for chunk in body.chunks(100_000) {
            spool.write(chunk).unwrap();
        }
        let Record::Entry(head) = entry("/spooled", Vec::new()) else {
            unreachable!()
        };
        spool.commit(key("/spooled"), &head).unwrap();
        read(&tier, "/spooled");
        assert_eq!(tier.inner().hashed.load(Ordering::Relaxed), 0);
        drop(tier);

        let tier = open().unwrap();
        for name in ["/put", "/spooled"] {
            assert!(matches!(
                tier.inner().get(&key(name), false),
                Err(DiskError::Large)
            ));
            assert!(tier.inner().get(&key(name), true).unwrap().is_some());
            read(&tier, name);
        }
        assert_eq!(tier.inner().hashed.load(Ordering::Relaxed), 2);
    }

    /// A record in the index is verified when first read, and not hashed again after that: a
    /// damaged one (here, one byte of its body changed in sled under the same sequence number)
    /// is dropped at its first read.
    #[test]
    fn an_index_record_is_verified_at_its_first_read() {
        let dir = tempfile::TempDir::new().unwrap();
        let tier =
            DiskTier::open(dir.path(), 32 << 20, 0, 8 << 20, HeuristicConfig::default()).unwrap();
        let key = |name: &str| blake3::hash(name.as_bytes()).as_bytes().to_vec();
        let body = |found: Option<Record>| match found {
            Some(Record::Entry(entry)) => Some(entry.body.clone()),
            _ => None,
        };
        for name in ["/sound", "/damaged"] {
            tier.inner()
                .put(&key(name), &entry(name, b"a small body".to_vec()))
                .unwrap();
        }
        let inner = tier.inner();
        let mut value = inner
            .records
            .get(key("/damaged"))
            .unwrap()
            .unwrap()
            .to_vec();
        *value.last_mut().unwrap() ^= 1;
        inner.records.insert(key("/damaged"), value).unwrap();

        assert_eq!(body(inner.get(&key("/damaged"), false).unwrap()), None);
        assert_eq!(inner.records.get(key("/damaged")).unwrap(), None);
        assert_eq!(inner.lasting.integrity_failures.load(Ordering::Relaxed), 1);
        assert_eq!(inner.checks.load(Ordering::Relaxed), 1);
        for _ in 0..2 {
            let found = body(inner.get(&key("/sound"), false).unwrap());
            assert_eq!(found.as_deref(), Some(&b"a small body"[..]));
        }
        // Hashed at its first read only.
        assert_eq!(inner.checks.load(Ordering::Relaxed), 2);

        // A record stored again has a new sequence number: checked again, and the old one's
        // entry goes with the old record.
        let old = seq_of(&inner.records.get(key("/sound")).unwrap().unwrap());
        inner
            .put(&key("/sound"), &entry("/sound", b"a new body".to_vec()))
            .unwrap();
        inner.checked.run_pending_tasks();
        assert_eq!(inner.checked.get(&old), None);
        let found = body(inner.get(&key("/sound"), false).unwrap());
        assert_eq!(found.as_deref(), Some(&b"a new body"[..]));
        assert_eq!(inner.checks.load(Ordering::Relaxed), 3);
    }

    /// A small body file is hashed, body and record, at its first read only, while its length
    /// and modification time stay the same.
    #[test]
    fn a_small_body_file_is_verified_at_its_first_read() {
        let dir = tempfile::TempDir::new().unwrap();
        let tier =
            DiskTier::open(dir.path(), 32 << 20, 0, 8 << 20, HeuristicConfig::default()).unwrap();
        let key = blake3::hash(b"/file").as_bytes().to_vec();
        let body: Vec<u8> = (0..20_000).map(|i| (i % 251) as u8).collect();
        let inner = tier.inner();
        inner.put(&key, &entry("/file", body.clone())).unwrap();
        assert!(inner.file_seq(&key).is_some(), "kept in a body file");
        for _ in 0..3 {
            match inner.get(&key, false).unwrap() {
                Some(Record::Entry(found)) => assert_eq!(found.body, body),
                other => panic!("expected the entry, got {other:?}"),
            }
        }
        assert_eq!(inner.checks.load(Ordering::Relaxed), 1);
    }

    /// The kernel copies a body between files where it can; where it cannot (here, for a file
    /// opened for appending, which `copy_file_range` refuses), the body is read and written in
    /// blocks. Either way the bytes land at the target file's position, between what was written
    /// before and after.
    #[test]
    fn copy_body_copies_by_the_kernel_or_block_by_block() {
        let dir = tempfile::TempDir::new().unwrap();
        let body: Vec<u8> = (0..(5 << 19) + 3).map(|i| (i * 13 % 251) as u8).collect();
        std::fs::write(dir.path().join("from"), &body).unwrap();
        let from = Spilled {
            file: Arc::new(std::fs::File::open(dir.path().join("from")).unwrap()),
            len: body.len() as u64,
            checksum: *blake3::hash(&body).as_bytes(),
        };
        for (name, append) in [("kernel", false), ("blocks", true)] {
            let path = dir.path().join(name);
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .open(&path)
                .unwrap();
            out.write_all(b"before").unwrap();
            copy_body(&from, &mut out).unwrap();
            out.write_all(b"after").unwrap();
            drop(out);
            let written = std::fs::read(&path).unwrap();
            assert_eq!(written.len(), body.len() + 11, "{name}");
            assert!(written[..6] == *b"before" && written[written.len() - 5..] == *b"after");
            assert!(written[6..written.len() - 5] == body, "{name}");
        }
    }

    /// A store closed in this process can hold sled's lock a moment longer: the start-up check
    /// holds the tier while it reads one file, and sled's own threads finish their writes. Opening
    /// it again (a test, or a restart within the process) waits for that instead of running
    /// without a disk tier.
    #[test]
    fn a_store_released_a_moment_after_it_is_closed_opens_again() {
        let dir = tempfile::TempDir::new().unwrap();
        let open = || DiskTier::open(dir.path(), 1 << 30, 0, 8 << 20, HeuristicConfig::default());
        let tier = open().unwrap();
        let key = blake3::hash(b"/a").as_bytes().to_vec();
        tier.inner()
            .put(&key, &entry("/a", vec![1; 16 << 10]))
            .unwrap();
        let held = tier.inner().clone();
        drop(tier);
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let tier = open().expect("the store opens once it is released");
        release.join().unwrap();
        assert_eq!(tier.stats().entries, 1);
    }

    /// While one handle holds the store, another gets no disk tier (and says so) rather than a
    /// second writer; the first keeps working.
    #[test]
    fn a_store_held_by_another_handle_is_not_opened_twice() {
        let dir = tempfile::TempDir::new().unwrap();
        let open = || DiskTier::open(dir.path(), 1 << 30, 0, 8 << 20, HeuristicConfig::default());
        let tier = open().unwrap();
        assert!(open().is_none());
        let key = blake3::hash(b"/a").as_bytes().to_vec();
        tier.inner().put(&key, &entry("/a", vec![2; 100])).unwrap();
        assert!(matches!(
            tier.inner().get(&key, false),
            Ok(Some(Record::Entry(_)))
        ));
    }
}
