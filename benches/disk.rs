//! Disk tier measurements: bytes on disk per stored byte for 16 KiB and 1 MiB objects, and how
//! long the tier takes to open with 100k stored objects, inline and in files, and to scan them
//! for a purge by URL prefix. `cargo bench --bench disk`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use edge::cache::disk::DiskTier;
use edge::cache::entry::{Record, StoredEntry};
use edge::cache::key::Variance;
use edge::config::HeuristicConfig;
use http::{HeaderMap, HeaderValue, StatusCode};

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            du(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

fn entry(i: usize, size: usize) -> Record {
    let mut headers = HeaderMap::new();
    headers.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=3600"),
    );
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        "etag",
        HeaderValue::from_str(&format!("\"{i:016x}\"")).unwrap(),
    );
    let now = SystemTime::now();
    let body: Vec<u8> = (0..size).map(|b| (b ^ i) as u8).collect();
    Record::Entry(Arc::new(StoredEntry::new(
        format!("http://origin/obj/{i}"),
        StatusCode::OK,
        headers,
        Variance::default(),
        now,
        now,
        Bytes::from(body),
        &HeuristicConfig::default(),
    )))
}

fn key(i: usize) -> Vec<u8> {
    blake3::hash(format!("http://origin/obj/{i}").as_bytes())
        .as_bytes()
        .to_vec()
}

#[tokio::main]
async fn main() {
    for (size, count) in [(16 << 10, 4000), (1 << 20, 200)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let tier = DiskTier::open(&path, 64 << 30, 0, 8 << 20, HeuristicConfig::default()).unwrap();
        let started = Instant::now();
        for i in 0..count {
            tier.put(key(i), entry(i, size)).await.unwrap();
        }
        tier.flush().await.unwrap();
        let elapsed = started.elapsed();
        let stored = (size * count) as u64;
        let on_disk = du(&path);
        println!(
            "{:>5} KiB x {count}: {on_disk} bytes on disk for {stored} stored = {:.3} per stored byte ({:.0} MB/s stored)",
            size >> 10,
            on_disk as f64 / stored as f64,
            stored as f64 / elapsed.as_secs_f64() / 1e6
        );
    }

    // Start-up: 1 KiB bodies are inline in sled's records; 16 KiB bodies are files that carry
    // their own records, found at start-up by their names.
    for (size, count) in [(1024, 100_000), (16 << 10, 100_000)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let tier =
                DiskTier::open(&path, 64 << 30, 0, 8 << 20, HeuristicConfig::default()).unwrap();
            let mut writers = Vec::new();
            for w in 0..8 {
                let tier = tier.clone();
                writers.push(tokio::spawn(async move {
                    for i in (w..count).step_by(8) {
                        tier.put(key(i), entry(i, size)).await.unwrap();
                    }
                }));
            }
            for writer in writers {
                writer.await.unwrap();
            }
            tier.flush().await.unwrap();
        }
        let started = Instant::now();
        let opened = path.clone();
        let tier = tokio::task::spawn_blocking(move || {
            DiskTier::open(&opened, 64 << 30, 0, 8 << 20, HeuristicConfig::default())
        })
        .await
        .unwrap()
        .unwrap();
        println!(
            "open with {count} stored {} KiB objects: {:?}",
            size >> 10,
            started.elapsed()
        );
        let started = Instant::now();
        for i in (0..count).step_by(100) {
            assert!(tier.get(key(i)).await.unwrap().is_some());
        }
        println!(
            "{} verified disk reads of {} KiB objects: {:?}",
            count / 100,
            size >> 10,
            started.elapsed()
        );
        // What a purge by URL prefix reads to find its URLs: every record.
        let started = Instant::now();
        let found = tier.urls_under("http://origin/obj/1".into()).await.unwrap();
        println!(
            "URL prefix scan of {count} stored {} KiB objects: {:?} ({} under the prefix)",
            size >> 10,
            started.elapsed(),
            found.len()
        );
    }
}
