//! The disk tier: sled, behind a boundary that keeps its calls off the async runtime, accounts
//! for its bytes itself, evicts the oldest stores past the byte budget, and verifies every read.
//!
//! Two trees: `records` maps a key (a URI's 32-byte hash, or that hash followed by a variant's
//! 32 bytes) to `seq:u64 | record`, and `order` maps `seq` to `size:u64 | key`, so that the lowest
//! `seq` is the oldest store. Both change in one sled
//! transaction, so a crash never leaves a record without its place in the eviction order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{IVec, Transactional};
use tracing::{error, warn};

use super::entry::{DecodeError, Record};
use crate::config::HeuristicConfig;

/// Bytes of bookkeeping charged per record besides the record and its key (sequence numbers,
/// the order entry).
const OVERHEAD_PER_RECORD: u64 = 8 + 8 + 8;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("disk task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
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
    bytes: AtomicU64,
    capacity: u64,
    heuristic: HeuristicConfig,
}

impl DiskTier {
    /// Opens the store at `path`. A store sled cannot open is moved aside and replaced by an
    /// empty one; if even that fails, or another process holds the store, edge runs without a disk
    /// tier rather than not at all. Blocking: call it off the runtime.
    pub fn open(path: &Path, capacity: u64, heuristic: HeuristicConfig) -> Option<Self> {
        match Self::try_open(path, capacity, heuristic.clone()) {
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
        match Self::try_open(path, capacity, heuristic) {
            Ok(tier) => Some(tier),
            Err(err) => {
                error!(path = %path.display(), %err, "cannot create a disk tier; running with the memory tier only");
                None
            }
        }
    }

    fn try_open(path: &Path, capacity: u64, heuristic: HeuristicConfig) -> Result<Self, DiskError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(32 << 20)
            .flush_every_ms(Some(500))
            .open()?;
        let records = db.open_tree("records")?;
        let order = db.open_tree("order")?;
        let mut bytes = 0;
        for item in order.iter() {
            let (_, meta) = item?;
            bytes += meta_size(&meta);
        }
        let inner = Inner {
            db,
            records,
            order,
            bytes: AtomicU64::new(bytes),
            capacity,
            heuristic,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Reads and verifies the record at `key`. A record that fails verification is removed and
    /// reported as absent.
    pub async fn get(&self, key: Vec<u8>) -> Result<Option<Record>, DiskError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let Some(value) = inner.records.get(&key)? else {
                return Ok(None);
            };
            let decoded = if value.len() < 8 {
                Err(DecodeError::Truncated)
            } else {
                // The body is a slice of sled's buffer, not a copy.
                Record::decode(Bytes::from_owner(value).slice(8..), &inner.heuristic)
            };
            match decoded {
                Ok(record) => Ok(Some(record)),
                Err(err) => {
                    warn!(key = %hex(&key), %err, "dropping a disk record that fails verification");
                    inner.remove(&key)?;
                    Ok(None)
                }
            }
        })
        .await?
    }

    /// Stores `record` at `key`, replacing any older record, then evicts the oldest records until
    /// the tier is within its byte budget.
    pub async fn put(&self, key: Vec<u8>, record: Record) -> Result<(), DiskError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.put(&key, &record.encode())).await?
    }

    /// Removes every record whose key starts with `prefix` (a URI and all its variants).
    pub async fn remove_prefix(&self, prefix: Vec<u8>) -> Result<(), DiskError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            for item in inner.records.scan_prefix(&prefix).keys() {
                inner.remove(&item?)?;
            }
            Ok(())
        })
        .await?
    }

    /// Writes everything stored so far to disk.
    pub async fn flush(&self) -> Result<(), DiskError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.db.flush().map(drop))
            .await?
            .map_err(Into::into)
    }
}

impl Inner {
    fn put(&self, key: &[u8], record: &[u8]) -> Result<(), DiskError> {
        let size = record.len() as u64 + key.len() as u64 + OVERHEAD_PER_RECORD;
        if size > self.capacity {
            return Ok(());
        }
        let seq = self.db.generate_id()?.to_be_bytes();
        let mut value = Vec::with_capacity(8 + record.len());
        value.extend_from_slice(&seq);
        value.extend_from_slice(record);
        let value = IVec::from(value);
        let mut meta = Vec::with_capacity(8 + key.len());
        meta.extend_from_slice(&size.to_be_bytes());
        meta.extend_from_slice(key);
        let replaced = (&self.records, &self.order).transaction(|(records, order)| {
            let old = records.insert(key, value.clone())?;
            let released = release_order(order, key, old.as_ref())?;
            order.insert(&seq, meta.as_slice())?;
            Ok(released)
        })?;
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.release(replaced.unwrap_or(0));
        self.evict_to_budget()
    }

    fn evict_to_budget(&self) -> Result<(), DiskError> {
        while self.bytes.load(Ordering::Relaxed) > self.capacity {
            let Some((seq, meta)) = self.order.first()? else {
                break;
            };
            let key = meta.get(8..).unwrap_or_default();
            // Another thread may evict or replace the same record meanwhile: only the one whose
            // transaction removed the order entry releases its bytes.
            let evicted = (&self.records, &self.order).transaction(|(records, order)| {
                if order.remove(&seq)?.is_none() {
                    return Ok(false);
                }
                if let Some(current) = records.get(key)?
                    && current.get(..8) == Some(&seq[..])
                {
                    records.remove(key)?;
                }
                Ok::<_, ConflictableTransactionError<sled::Error>>(true)
            })?;
            if evicted {
                self.release(meta_size(&meta));
            }
        }
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<(), DiskError> {
        let removed = (&self.records, &self.order).transaction(|(records, order)| {
            let old = records.remove(key)?;
            release_order(order, key, old.as_ref())
        })?;
        self.release(removed.unwrap_or(0));
        Ok(())
    }

    /// Takes `size` bytes off the accounted total, never below zero.
    fn release(&self, size: u64) {
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(size))
            });
    }
}

/// Removes the order entry of a replaced or removed record, inside the caller's transaction.
/// The record's bytes are released only if its order entry was still there: an eviction that got
/// to it first has released them already.
fn release_order(
    order: &sled::transaction::TransactionalTree,
    key: &[u8],
    old: Option<&IVec>,
) -> Result<Option<u64>, ConflictableTransactionError<sled::Error>> {
    let Some(old) = old else { return Ok(None) };
    let Some(old_seq) = old.get(..8) else {
        return Ok(None);
    };
    Ok(order.remove(old_seq)?.map(|_| charged(key, old)))
}

/// The bytes a stored `records` value is charged for.
fn charged(key: &[u8], value: &IVec) -> u64 {
    (value.len() as u64).saturating_sub(8) + key.len() as u64 + OVERHEAD_PER_RECORD
}

/// The size recorded in an `order` value (`size:u64 | key`).
fn meta_size(meta: &IVec) -> u64 {
    meta.get(..8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_be_bytes)
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
