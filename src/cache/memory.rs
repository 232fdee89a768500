//! The memory tier: a moka cache weighted by the bytes each entry holds, with TinyLFU admission.
//!
//! moka may decline to keep an entry under pressure, or evict it at any time; the memory tier is
//! a best-effort copy of what the disk tier holds.

use std::sync::Arc;

use moka::future::Cache;

use super::entry::StoredEntry;

pub struct MemoryTier {
    entries: Cache<[u8; 32], Arc<StoredEntry>>,
}

impl MemoryTier {
    pub fn new(capacity_bytes: u64) -> Self {
        let entries = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_key, entry: &Arc<StoredEntry>| entry.weight())
            .build();
        Self { entries }
    }

    pub async fn get(&self, hash: &[u8; 32]) -> Option<Arc<StoredEntry>> {
        self.entries.get(hash).await
    }

    pub async fn insert(&self, hash: [u8; 32], entry: Arc<StoredEntry>) {
        self.entries.insert(hash, entry).await;
    }

    pub async fn remove(&self, hash: &[u8; 32]) {
        self.entries.invalidate(hash).await;
    }
}
