//! The memory tier: a moka cache weighted by the bytes each entry holds, with TinyLFU admission.
//!
//! All stored variants of one URI (RFC 9111 §4.1) are kept together under the URI's key, so that
//! invalidating or purging the URI drops every one of them at once. moka may decline to keep an
//! item under pressure, or evict it at any time; the memory tier is a best-effort copy of what
//! the disk tier holds.
//!
//! moka's synchronous cache, not its async one: nothing here waits for anything but memory, and
//! the async one's `get` was a 752-byte future inside every request's future (which is copied
//! whole when a request starts), and its insert and remove 1.1 KB and 0.9 KB more inside the
//! lookup's, for promotions from disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::Cache;

use super::KeyHasher;
use super::entry::StoredEntry;
use super::key::Variance;

/// At most this many variants of one URI are kept in memory; the oldest goes first.
const MAX_VARIANTS: usize = 32;

/// The stored variants of one URI, oldest first.
#[derive(Debug, Default)]
pub struct Variants(Vec<Arc<StoredEntry>>);

impl Variants {
    /// The variant the request selects, if it is here.
    pub fn select(&self, request: &HeaderMap) -> Option<Arc<StoredEntry>> {
        self.0
            .iter()
            .find(|entry| entry.variance.matches(request))
            .cloned()
    }

    fn weight(&self) -> u32 {
        self.0
            .iter()
            .fold(0u32, |sum, entry| sum.saturating_add(entry.weight()))
    }
}

/// A clone is another handle on the same entries.
#[derive(Clone)]
pub struct MemoryTier {
    entries: Cache<[u8; 32], Arc<Variants>, KeyHasher>,
    evictions: Arc<AtomicU64>,
    capacity: u64,
    /// Larger entries live on disk only.
    max_entry: u64,
}

impl MemoryTier {
    pub fn new(capacity_bytes: u64, max_entry_bytes: u64) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let counted = evictions.clone();
        let entries = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_key, variants: &Arc<Variants>| variants.weight())
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build_with_hasher(KeyHasher::default());
        Self {
            entries,
            evictions,
            capacity: capacity_bytes,
            max_entry: max_entry_bytes,
        }
    }

    pub fn get(&self, primary: &[u8; 32]) -> Option<Arc<Variants>> {
        self.entries.get(primary)
    }

    /// Whether any variant of the URI is here. Unlike [`MemoryTier::get`], not a read: it neither
    /// counts towards the key's popularity nor queues work for moka's housekeeping.
    pub fn holds(&self, primary: &[u8; 32]) -> bool {
        self.entries.contains_key(primary)
    }

    /// Keeps `entry` as the variant of the URI it was stored for, replacing the variant with the
    /// same request header values, and every variant selected by other header names (the
    /// origin changed its `Vary`).
    pub fn insert(&self, primary: [u8; 32], entry: Arc<StoredEntry>) {
        let names = entry.variance.names_of();
        let mut kept: Vec<Arc<StoredEntry>> = match self.entries.get(&primary) {
            Some(current) if !names.is_empty() => current
                .0
                .iter()
                .filter(|other| {
                    other.variance.names_of() == names && other.variance != entry.variance
                })
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        if entry.content_length() <= self.max_entry && entry.spilled.is_none() {
            kept.push(entry);
        }
        if kept.len() > MAX_VARIANTS {
            kept.drain(..kept.len() - MAX_VARIANTS);
        }
        if kept.is_empty() {
            self.entries.invalidate(&primary);
            return;
        }
        // Exactly sized: `kept` was grown by pushes (room for 4), and lives as long as the entry.
        kept.shrink_to_fit();
        let variants = Variants(kept);
        // An item larger than the whole tier would only push out others until moka's next
        // housekeeping; keep it on disk only.
        if u64::from(variants.weight()) > self.capacity {
            self.entries.invalidate(&primary);
            return;
        }
        self.entries.insert(primary, Arc::new(variants));
    }

    /// Removes every variant of the URI; returns how many there were.
    pub fn remove(&self, primary: &[u8; 32]) -> usize {
        self.entries
            .remove(primary)
            .map_or(0, |variants| variants.0.len())
    }

    /// Removes the variant of the URI stored for `variance`, leaving the others; returns how
    /// many went (0 or 1).
    pub fn remove_variant(&self, primary: &[u8; 32], variance: &Variance) -> usize {
        let mut removed = 0;
        self.entries
            .entry(*primary)
            .and_compute_with(|current| match current {
                Some(current) => {
                    let kept: Vec<_> = (current.value().0.iter())
                        .filter(|entry| entry.variance != *variance)
                        .cloned()
                        .collect();
                    removed = current.value().0.len() - kept.len();
                    if removed == 0 {
                        Op::Nop
                    } else if kept.is_empty() {
                        Op::Remove
                    } else {
                        Op::Put(Arc::new(Variants(kept)))
                    }
                }
                None => Op::Nop,
            });
        removed
    }

    /// Replaces every variant of the URI with `change(variant)`, atomically with respect to other
    /// writes of the URI; returns how many there were.
    pub fn rewrite(
        &self,
        primary: &[u8; 32],
        change: impl Fn(&StoredEntry) -> StoredEntry,
    ) -> usize {
        let mut count = 0;
        self.entries
            .entry(*primary)
            .and_compute_with(|current| match current {
                Some(current) => {
                    let changed: Vec<_> = current
                        .value()
                        .0
                        .iter()
                        .map(|e| Arc::new(change(e)))
                        .collect();
                    count = changed.len();
                    Op::Put(Arc::new(Variants(changed)))
                }
                None => Op::Nop,
            });
        count
    }

    /// Removes everything; returns how many responses (variants) there were.
    pub fn clear(&self) -> usize {
        let held = self
            .entries
            .iter()
            .map(|(_, variants)| variants.0.len())
            .sum();
        self.entries.invalidate_all();
        held
    }

    /// [`MemoryTier::rewrite`] for every URI held; returns how many responses there were.
    pub fn rewrite_all(&self, change: impl Fn(&StoredEntry) -> StoredEntry) -> usize {
        let keys: Vec<_> = self.entries.iter().map(|(key, _)| *key).collect();
        keys.iter().map(|key| self.rewrite(key, &change)).sum()
    }

    /// The URLs of stored responses for which `holds` holds.
    pub fn urls_where(&self, holds: impl Fn(&StoredEntry) -> bool) -> Vec<String> {
        let mut urls = Vec::new();
        for (_, variants) in self.entries.iter() {
            if let Some(entry) = variants.0.iter().find(|entry| holds(entry)) {
                urls.push(entry.url.clone());
            }
        }
        urls
    }

    /// Lets moka finish its pending bookkeeping, so that [`MemoryTier::stats`] is current.
    pub fn settle(&self) {
        self.entries.run_pending_tasks();
    }

    /// Objects (URIs, each with its variants) and bytes held, and evictions so far.
    pub fn stats(&self) -> super::TierStats {
        super::TierStats {
            entries: self.entries.entry_count(),
            bytes: self.entries.weighted_size(),
            capacity: self.capacity,
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}
