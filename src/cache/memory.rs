//! The memory tier: a moka cache weighted by the bytes each entry holds, with TinyLFU admission.
//!
//! moka may decline to keep an entry under pressure, or evict it at any time; the memory tier is
//! a best-effort copy of what the disk tier holds.

use std::sync::Arc;

use moka::future::Cache;

use super::entry::StoredEntry;

pub struct MemoryTier {
    entries: Cache<[u8; 32], Arc<StoredEntry>>,
    capacity: u64,
}

impl MemoryTier {
    pub fn new(capacity_bytes: u64) -> Self {
        let entries = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_key, entry: &Arc<StoredEntry>| entry.weight())
            .build();
        Self {
            entries,
            capacity: capacity_bytes,
        }
    }

    pub async fn get(&self, hash: &[u8; 32]) -> Option<Arc<StoredEntry>> {
        self.entries.get(hash).await
    }

    /// Keeps `entry`, unless it is larger than the whole tier: moka would hold such an entry only
    /// until its next housekeeping, pushing out others for nothing.
    pub async fn insert(&self, hash: [u8; 32], entry: Arc<StoredEntry>) {
        if u64::from(entry.weight()) > self.capacity {
            self.entries.invalidate(&hash).await;
            return;
        }
        self.entries.insert(hash, entry).await;
    }

    pub async fn remove(&self, hash: &[u8; 32]) {
        self.entries.invalidate(hash).await;
    }
}
