//! The cache facade: lookup, store and invalidate across a memory tier in front of a disk tier.
//!
//! ```text
//! lookup ──▶ memory (moka) ──miss──▶ disk (sled, verified) ──hit──▶ promote to memory
//! store  ──▶ memory + disk        invalidate ──▶ memory + disk
//! ```
//!
//! Crash safety: a record reaches the disk tier whole, in one sled transaction together with its
//! place in the eviction order, and carries checksums over its metadata and its body. After a
//! crash a reader sees the old record, the new one, or nothing; a record that fails its checks is
//! removed and fetched again. Any tier error is logged and counts as a miss: the client gets the
//! origin's answer, never a 5xx or a wrong body because of the cache.

pub mod disk;
pub mod entry;
pub mod key;
pub mod memory;
pub mod policy;

use std::sync::Arc;

use tracing::warn;

use crate::config::CacheConfig;
use disk::DiskTier;
use entry::StoredEntry;
use key::CacheKey;
use memory::MemoryTier;

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

pub struct Cache {
    memory: MemoryTier,
    disk: Option<DiskTier>,
}

impl Cache {
    /// Opens both tiers. Never fails: a disk tier that cannot be opened leaves a memory-only cache.
    pub async fn open(config: &CacheConfig) -> Self {
        let path = config.disk.path.clone();
        let capacity = config.disk.capacity.0;
        let heuristic = config.heuristic.clone();
        let disk = tokio::task::spawn_blocking(move || DiskTier::open(&path, capacity, heuristic))
            .await
            .unwrap_or_else(|err| {
                warn!(%err, "opening the disk tier failed; running with the memory tier only");
                None
            });
        Self {
            memory: MemoryTier::new(config.memory.capacity.0),
            disk,
        }
    }

    /// Finds the stored response for `key`, memory first, then disk (promoting what it finds).
    pub async fn lookup(&self, key: &CacheKey) -> Option<(Arc<StoredEntry>, Tier)> {
        if let Some(entry) = self.memory.get(key.hash()).await
            && entry.url == key.url()
        {
            return Some((entry, Tier::Memory));
        }
        let disk = self.disk.as_ref()?;
        match disk.get(*key.hash()).await {
            Ok(Some(entry)) if entry.url == key.url() => {
                let entry = Arc::new(entry);
                self.memory.insert(*key.hash(), entry.clone()).await;
                Some((entry, Tier::Disk))
            }
            Ok(_) => None,
            Err(err) => {
                warn!(url = key.url(), %err, "disk tier lookup failed; treating it as a miss");
                None
            }
        }
    }

    /// Stores `entry` in both tiers, replacing what was stored for `key`.
    pub async fn store(&self, key: &CacheKey, entry: Arc<StoredEntry>) {
        self.memory.insert(*key.hash(), entry.clone()).await;
        if let Some(disk) = &self.disk
            && let Err(err) = disk.put(*key.hash(), entry).await
        {
            warn!(url = key.url(), %err, "disk tier store failed; the response stays in memory only");
        }
    }

    /// Removes whatever is stored for `key` from both tiers.
    pub async fn invalidate(&self, key: &CacheKey) {
        self.memory.remove(key.hash()).await;
        if let Some(disk) = &self.disk
            && let Err(err) = disk.remove(*key.hash()).await
        {
            warn!(url = key.url(), %err, "disk tier invalidation failed");
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
