//! The two tiers: memory in front of disk, promotion, persistence across restarts, and a disk tier
//! that degrades to a miss (never a 5xx or a wrong body) when its store is damaged.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, Reply, TestEdge, base_config, sample};
use tempfile::TempDir;

#[tokio::test]
async fn restart_serves_the_object_from_the_disk_tier_then_from_memory() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("persistent").header("cache-control", "max-age=600"),
    );
    let edge = h.edge().await;
    assert!(edge.get("/a").await.stored());

    let edge = edge.restart().await;
    h.clock.advance(Duration::from_secs(30));
    let from_disk = edge.get("/a").await;
    assert_eq!(from_disk.status, 200);
    assert_eq!(from_disk.text(), "persistent");
    assert_eq!(from_disk.cache_status(), "edge; hit; ttl=570; detail=disk");
    assert_eq!(from_disk.age(), Some(30));

    let promoted = edge.get("/a").await;
    assert_eq!(promoted.cache_status(), "edge; hit; ttl=570; detail=memory");
    assert_eq!(h.origin.hits("/a"), 1);
}

#[tokio::test]
async fn disk_tier_answers_what_memory_cannot_hold() {
    let h = Harness::new().await;
    let body = vec![b'x'; 4096];
    h.origin.reply(
        "/big",
        Reply::ok(body.clone()).header("cache-control", "max-age=600"),
    );
    // A memory tier smaller than any entry keeps nothing; every hit comes from disk.
    let edge = h.edge_with(|c| c.cache.memory.capacity.0 = 1024).await;
    edge.get("/big").await;
    for _ in 0..3 {
        let hit = edge.get("/big").await;
        assert_eq!(hit.param("detail"), Some("disk"), "{}", hit.cache_status());
        assert_eq!(hit.body, body);
    }
    assert_eq!(h.origin.hits("/big"), 1);
}

#[tokio::test]
async fn objects_over_the_memory_entry_limit_live_on_disk_only() {
    let h = Harness::new().await;
    h.origin.reply(
        "/small",
        Reply::ok(vec![1u8; 500]).header("cache-control", "max-age=600"),
    );
    h.origin.reply(
        "/large",
        Reply::ok(vec![2u8; 50_000]).header("cache-control", "max-age=600"),
    );
    let edge = h
        .edge_with(|c| c.cache.memory.max_object_size.0 = 10_000)
        .await;
    edge.get("/small").await;
    edge.get("/large").await;
    assert_eq!(edge.get("/small").await.param("detail"), Some("memory"));
    for _ in 0..2 {
        let large = edge.get("/large").await;
        assert_eq!(
            large.param("detail"),
            Some("disk"),
            "{}",
            large.cache_status()
        );
        assert_eq!(large.body, vec![2u8; 50_000]);
    }
    assert_eq!(h.origin.hits("/large"), 1);
}

/// An operator who empties the store while edge runs (`rm -rf store/bodies`, as nginx's cache
/// directory is emptied) does not stop large bodies being stored: the directory is made again
/// for the next one, which is then a disk hit after a restart, for a body streamed to its file
/// (over `cache.memory.max_object_size`) and one written whole. Before, every body file failed
/// until a restart.
#[tokio::test]
async fn body_files_are_stored_again_after_their_directory_was_removed() {
    let h = Harness::new().await;
    let streamed: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
    let whole: Vec<u8> = (0..(64u32 << 10)).map(|i| (i % 241) as u8).collect();
    for (path, body) in [("/streamed", &streamed), ("/whole", &whole)] {
        h.origin.reply(
            path,
            Reply::ok(body.clone()).header("cache-control", "max-age=600"),
        );
    }
    let mut edge = h
        .edge_with(|c| c.cache.memory.max_object_size.0 = 1 << 20)
        .await;
    // Its disk tier open: a small response is stored.
    h.origin.reply(
        "/small",
        Reply::ok("small").header("cache-control", "max-age=600"),
    );
    assert!(edge.get("/small").await.stored());
    // Removed before each, so that each way of writing a body file has to make it again.
    for (path, body) in [("/whole", &whole), ("/streamed", &streamed)] {
        let _ = std::fs::remove_dir_all(edge.config.cache.disk.path.join("bodies"));
        assert!(edge.get(path).await.stored(), "{path}");
        edge = edge.restart().await;
        let hit = edge.get(path).await;
        assert_eq!(
            hit.param("detail"),
            Some("disk"),
            "{path}: {}",
            hit.cache_status()
        );
        assert!(hit.body[..] == body[..], "{path}");
        assert_eq!(h.origin.hits(path), 1, "{path}");
    }
}

/// A record made large by its headers rather than its body lives in a body file too: sled holds
/// large values in memory well past its cache's size (a 1-byte body under 55 KB of headers,
/// 10,000 times, took 793 MB resident in the index, and 45 MB as files).
#[tokio::test]
async fn a_record_with_a_large_header_section_lives_in_a_body_file() {
    let h = Harness::new().await;
    let mut reply = Reply::ok("x").header("cache-control", "max-age=600");
    for i in 0..40 {
        reply = reply.header(&format!("x-filler-{i}"), &"f".repeat(600));
    }
    h.origin.reply("/headers", reply);
    let edge = h.edge().await;
    assert!(edge.get("/headers").await.stored());
    let bodies = edge.config.cache.disk.path.join("bodies");
    let files: Vec<_> = std::fs::read_dir(&bodies)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_none())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");

    let edge = edge.restart().await;
    let hit = edge.get("/headers").await;
    assert_eq!(hit.param("detail"), Some("disk"), "{}", hit.cache_status());
    assert_eq!(hit.text(), "x");
    assert_eq!(hit.header("x-filler-39"), Some("f".repeat(600).as_str()));
    assert_eq!(h.origin.hits("/headers"), 1);
}

#[tokio::test]
async fn disk_budget_evicts_the_oldest_objects() {
    let h = Harness::new().await;
    let body = |i: usize| vec![b'a' + i as u8; 200_000];
    for i in 0..30 {
        h.origin.reply(
            &format!("/o{i}"),
            Reply::ok(body(i)).header("cache-control", "max-age=600"),
        );
    }
    let edge = h
        .edge_with(|c| {
            c.cache.memory.capacity.0 = 1024;
            c.cache.disk.capacity.0 = 2 << 20;
        })
        .await;
    for i in 0..30 {
        edge.get(&format!("/o{i}")).await;
    }
    // The newest objects are still on disk; the oldest were evicted to stay within 2 MiB.
    let newest = edge.get("/o29").await;
    assert_eq!(
        newest.param("detail"),
        Some("disk"),
        "{}",
        newest.cache_status()
    );
    assert_eq!(newest.body, body(29));
    let oldest = edge.get("/o0").await;
    assert!(!oldest.is_hit(), "{}", oldest.cache_status());
    assert_eq!(oldest.body, body(0));
    assert_eq!(h.origin.hits("/o0"), 2);
}

/// A response the memory tier holds is in use, though served from memory and never read from
/// disk: eviction keeps it on disk and takes the oldest of the others, so that a restart, which
/// empties memory, finds it there. It went first, as the oldest store, and a restart sent every
/// client of the hottest responses to the origin.
#[tokio::test]
async fn disk_eviction_keeps_what_the_memory_tier_holds() {
    let h = Harness::new().await;
    h.origin.reply(
        "/hot",
        Reply::ok("hot").header("cache-control", "max-age=600"),
    );
    let body = |i: usize| vec![b'a' + i as u8; 200_000];
    for i in 0..30 {
        h.origin.reply(
            &format!("/o{i}"),
            Reply::ok(body(i)).header("cache-control", "max-age=600"),
        );
    }
    let dir = Arc::new(TempDir::new().unwrap());
    let mut config = base_config(&h.origin.url(), dir.path());
    // `/hot` fits in memory, the others (disk only) do not.
    config.cache.memory.max_object_size.0 = 64 << 10;
    config.cache.disk.capacity.0 = 2 << 20;
    let edge = TestEdge::start(config.clone(), h.clock.clone(), dir).await;
    assert!(edge.get("/hot").await.stored());
    for i in 0..30 {
        assert!(edge.get(&format!("/o{i}")).await.stored());
        let hot = edge.get("/hot").await;
        assert_eq!(
            hot.param("detail"),
            Some("memory"),
            "{}",
            hot.cache_status()
        );
    }
    let oldest = edge.get("/o0").await;
    assert!(!oldest.is_hit(), "{}", oldest.cache_status());

    // Started again with room to spare, so that nothing is evicted at start-up (which goes by
    // the order the tier kept: `disk.rs` tests it): what is on disk is what eviction left.
    let dir = edge.stop().await;
    config.cache.disk.capacity.0 = 64 << 20;
    let edge = TestEdge::start(config, h.clock.clone(), dir).await;
    let hot = edge.get("/hot").await;
    assert_eq!(hot.param("detail"), Some("disk"), "{}", hot.cache_status());
    assert_eq!(hot.text(), "hot");
    assert_eq!(h.origin.hits("/hot"), 1);
    let newest = edge.get("/o29").await;
    assert_eq!(
        newest.param("detail"),
        Some("disk"),
        "{}",
        newest.cache_status()
    );
}

#[tokio::test]
async fn a_store_that_will_not_open_is_moved_aside_and_edge_serves() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("fine").header("cache-control", "max-age=600"),
    );
    let dir = Arc::new(TempDir::new().unwrap());
    let store = dir.path().join("store");
    // Not a sled store at all: garbage where its files should be. (A file in place of the
    // directory is a configuration error.)
    std::fs::create_dir_all(store.join("index")).unwrap();
    std::fs::write(store.join("layout"), b"edge disk 3\n").unwrap();
    std::fs::write(store.join("index/conf"), b"this is not a database").unwrap();
    std::fs::write(store.join("index/db"), b"this is not a database").unwrap();
    // One moved aside at an earlier start: outside the disk budget, it goes now, or a store
    // breaking again and again would fill the file system.
    let older = dir.path().join("store.broken-1000");
    std::fs::create_dir_all(older.join("bodies")).unwrap();
    std::fs::write(older.join("bodies/1"), vec![0; 100_000]).unwrap();
    let config = base_config(&h.origin.url(), dir.path());
    let edge = TestEdge::start(config, h.clock.clone(), dir.clone()).await;

    assert!(edge.get("/a").await.stored());
    let hit = edge.get("/a").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.text(), "fine");
    let aside = moved_aside(dir.path());
    assert_eq!(
        aside.len(),
        1,
        "the broken store is kept beside the new one, the older one deleted: {aside:?}"
    );
    assert_eq!(
        std::fs::read(aside[0].join("index/db")).unwrap(),
        b"this is not a database"
    );
}

#[tokio::test]
async fn flipped_bytes_in_the_store_never_become_a_wrong_body_or_a_5xx() {
    let h = Harness::new().await;
    // Half inline in the index, half in body files (over 8 KiB).
    let bodies: Vec<Vec<u8>> = (0..30u8)
        .map(|i| vec![i; if i % 2 == 0 { 3000 } else { 12_000 } + i as usize])
        .collect();
    for (i, body) in bodies.iter().enumerate() {
        h.origin.reply(
            &format!("/o{i}"),
            Reply::ok(body.clone()).header("cache-control", "max-age=600"),
        );
    }
    let edge = h.edge().await;
    for i in 0..bodies.len() {
        edge.get(&format!("/o{i}")).await;
    }
    let dir = edge.stop().await;

    // Flip a byte every 97 bytes in every file of the store but the one naming its layout (a
    // store whose layout is unknown is moved aside whole, which would test nothing here).
    let mut files = vec![dir.path().join("store")];
    while let Some(path) = files.pop() {
        if path.ends_with("layout") {
            continue;
        }
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            let mut bytes = std::fs::read(&path).unwrap();
            for i in (0..bytes.len()).step_by(97) {
                bytes[i] ^= 0x5a;
            }
            std::fs::write(&path, bytes).unwrap();
        }
    }

    let config = base_config(&h.origin.url(), dir.path());
    let edge = TestEdge::start(config, h.clock.clone(), dir).await;
    for (i, body) in bodies.iter().enumerate() {
        let response = edge.get(&format!("/o{i}")).await;
        assert_eq!(response.status, 200, "/o{i}: {}", response.cache_status());
        assert_eq!(
            &response.body[..],
            &body[..],
            "/o{i}: {}",
            response.cache_status()
        );
    }
}

/// The one body file in `edge`'s disk tier.
fn body_file(edge: &TestEdge) -> std::path::PathBuf {
    let bodies = edge.config.cache.disk.path.join("bodies");
    std::fs::read_dir(&bodies)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_none())
        .expect("a body file")
}

/// Writes `bytes` over `file` and moves its modification time a second on, as a later write
/// would: on a file system with coarse timestamps the write alone may leave it where it was.
fn rewrite(file: &std::path::Path, bytes: &[u8]) {
    let before = std::fs::metadata(file).unwrap().modified().unwrap();
    std::fs::write(file, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(file)
        .unwrap()
        .set_modified(before + Duration::from_secs(1))
        .unwrap();
}

/// The stores edge moved aside in `dir`.
fn moved_aside(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("store.broken-"))
        .map(|e| e.path())
        .collect()
}

/// The bytes allocated to the files under `dir`, as `du` counts them.
fn du(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_stores_keep_the_disk_tier_within_its_budget() {
    use bytes::Bytes;
    use edge::cache::disk::DiskTier;
    use edge::cache::entry::{Record, StoredEntry};
    use edge::cache::key::Variance;
    use edge::config::HeuristicConfig;
    use http::{HeaderMap, StatusCode};

    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store");
    let capacity: u64 = 8 << 20;
    let tier = DiskTier::open(&path, capacity, 0, 8 << 20, HeuristicConfig::default()).unwrap();
    let mut writers = Vec::new();
    // 32 writers × 40 objects of 5 KiB (inline) and 40 KiB (files): about 3× the budget.
    for t in 0..32u32 {
        let tier = tier.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..40u32 {
                let now = std::time::SystemTime::now();
                let url = format!("http://o/{t}/{i}");
                let size = if i % 2 == 0 { 5_000 } else { 40_000 };
                let entry = StoredEntry::new(
                    url.clone(),
                    StatusCode::OK,
                    HeaderMap::new(),
                    Variance::default(),
                    now,
                    now,
                    Bytes::from(vec![7u8; size]),
                    &HeuristicConfig::default(),
                );
                let key = blake3::hash(url.as_bytes()).as_bytes().to_vec();
                tier.put(key, Record::Entry(Arc::new(entry))).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    tier.flush().await.unwrap();
    assert!(
        tier.footprint() <= capacity,
        "accounted {} over {capacity}",
        tier.footprint()
    );
    let on_disk = du(&path);
    assert!(
        on_disk <= capacity,
        "du says {on_disk} bytes for a {capacity}-byte budget"
    );
    // It did not get there by evicting everything.
    assert!(on_disk > capacity / 2, "du says only {on_disk} bytes");
}

#[tokio::test]
async fn a_fill_of_three_times_the_budget_through_edge_stays_within_it() {
    let h = Harness::new().await;
    let capacity: u64 = 8 << 20;
    let edge = h
        .edge_with(|c| {
            c.cache.memory.capacity.0 = 1 << 20;
            c.cache.disk.capacity.0 = capacity;
        })
        .await;
    for i in 0..96 {
        let size = if i % 3 == 0 {
            200_000
        } else {
            100_000 + i * 997
        };
        let path = format!("/fill/{i}");
        h.origin.reply(
            &path,
            Reply::ok(vec![(i % 251) as u8; size]).header("cache-control", "max-age=600"),
        );
        assert_eq!(edge.get(&path).await.body.len(), size);
    }
    // Recent objects are still served from disk, byte-identical.
    let recent = edge.get("/fill/95").await;
    assert!(recent.is_hit(), "{}", recent.cache_status());
    assert_eq!(recent.body, vec![95u8; 100_000 + 95 * 997]);
    let dir = edge.stop().await;
    let on_disk = du(&dir.path().join("store"));
    assert!(
        on_disk <= capacity,
        "du says {on_disk} bytes for a {capacity}-byte budget"
    );
}

#[tokio::test]
async fn a_store_written_in_the_previous_layout_is_moved_aside() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok("fine").header("cache-control", "max-age=600"),
    );
    let dir = Arc::new(TempDir::new().unwrap());
    // The layout before body files carried their records: an index and bodies, no layout file.
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("index")).unwrap();
    std::fs::create_dir_all(store.join("bodies")).unwrap();
    std::fs::write(store.join("bodies/old"), b"a body without its record").unwrap();
    let config = base_config(&h.origin.url(), dir.path());
    let edge = TestEdge::start(config, h.clock.clone(), dir.clone()).await;

    assert!(edge.get("/a").await.stored());
    let hit = edge.get("/a").await;
    assert_eq!(
        hit.param("detail"),
        Some("memory"),
        "{}",
        hit.cache_status()
    );
    let edge = edge.restart().await;
    let hit = edge.get("/a").await;
    assert_eq!(hit.param("detail"), Some("disk"), "{}", hit.cache_status());
    assert_eq!(hit.text(), "fine");
    let aside = moved_aside(dir.path());
    assert_eq!(aside.len(), 1, "the old store is kept beside the new one");
    assert!(aside[0].join("bodies/old").exists());
}

/// A crash between storing a response and deleting the one it replaced leaves both on disk:
/// start-up keeps the newer, whichever of a body file and an index record each is.
#[tokio::test]
async fn after_a_crash_the_newer_of_two_records_for_a_key_is_kept() {
    let h = Harness::new().await;
    // /grow: first 100 bytes (in the index), then 20 000 (a body file). /shrink: the reverse.
    let (small, large) = (vec![b's'; 100], vec![b'L'; 20_000]);
    let reply = |body: &Vec<u8>| Reply::ok(body.clone()).header("cache-control", "max-age=10");
    h.origin.reply("/grow", reply(&small));
    h.origin.reply("/shrink", reply(&large));
    let edge = h.edge_with(|c| c.cache.memory.capacity.0 = 1024).await;
    edge.get("/grow").await;
    edge.get("/shrink").await;
    let bodies = edge.config.cache.disk.path.join("bodies");
    let first_files: Vec<_> = std::fs::read_dir(&bodies)
        .unwrap()
        .map(|e| {
            (
                e.as_ref().unwrap().path(),
                std::fs::read(e.unwrap().path()).unwrap(),
            )
        })
        .collect();
    assert_eq!(first_files.len(), 1, "/shrink's first response");

    h.clock.advance(Duration::from_secs(11));
    h.origin.reply("/grow", reply(&large));
    h.origin.reply("/shrink", reply(&small));
    assert_eq!(edge.get("/grow").await.body, large);
    assert_eq!(edge.get("/shrink").await.body, small);
    let dir = edge.stop().await;
    // What the crash left: /shrink's first body file, which the new response replaced.
    let (old_path, old_bytes) = &first_files[0];
    std::fs::write(old_path, old_bytes).unwrap();
    assert_eq!(std::fs::read_dir(&bodies).unwrap().count(), 2);

    let mut config = base_config(&h.origin.url(), dir.path());
    config.cache.memory.capacity.0 = 1024;
    let edge = TestEdge::start(config, h.clock.clone(), dir.clone()).await;
    for (path, body) in [("/grow", &large), ("/shrink", &small)] {
        let hit = edge.get(path).await;
        assert_eq!(
            hit.param("detail"),
            Some("disk"),
            "{path}: {}",
            hit.cache_status()
        );
        assert_eq!(&hit.body, body, "{path}");
    }
    assert!(!old_path.exists(), "the older body file is deleted");
    assert_eq!(h.origin.hits("/grow"), 2);
    assert_eq!(h.origin.hits("/shrink"), 2);
}

#[tokio::test]
async fn leftover_and_damaged_body_files_are_dropped_after_start_up() {
    let h = Harness::new().await;
    h.origin.reply(
        "/kept",
        Reply::ok(vec![3u8; 50_000]).header("cache-control", "max-age=600"),
    );
    let edge = h.edge().await;
    edge.get("/kept").await;
    let dir = edge.stop().await;
    let bodies = dir.path().join("store/bodies");
    let leftover = bodies.join(format!("{}-{}", "ab".repeat(32), "00".repeat(7) + "01"));
    let partial = bodies.join(format!(
        "{}-{}.partial",
        "cd".repeat(32),
        "00".repeat(7) + "02"
    ));
    std::fs::write(&leftover, b"from a crash").unwrap();
    std::fs::write(&partial, b"half a body").unwrap();

    let config = base_config(&h.origin.url(), dir.path());
    let edge = TestEdge::start(config, h.clock.clone(), dir.clone()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while (leftover.exists() || partial.exists()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !leftover.exists() && !partial.exists(),
        "orphans are deleted"
    );
    let kept = edge.get("/kept").await;
    assert!(kept.is_hit(), "{}", kept.cache_status());
    assert_eq!(kept.body, vec![3u8; 50_000]);
}

/// An index lost (deleted, or emptied) between runs beside body files: the files cannot be taken
/// back as they were. A soft purge, which lived in the index, came back as a fresh hit, and the
/// new index's ids named new files with the numbers of old ones, which then escaped eviction.
#[tokio::test]
async fn a_lost_index_beside_body_files_starts_the_tier_empty() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok(vec![b'1'; 20_000])
            .header("cache-control", "max-age=600")
            .header("etag", "\"1\""),
    );
    let edge = h.edge().await;
    assert!(edge.get("/a").await.stored());
    let url = format!("http://{}/purge?url=/a&soft=true", edge.admin_addr);
    let purged = edge.client.post(url).send().await.unwrap();
    assert_eq!(purged.status(), 200);
    let old_file = body_file(&edge);
    let (config, clock) = (edge.config.clone(), edge.clock.clone());
    let dir = edge.stop().await;
    std::fs::remove_dir_all(config.cache.disk.path.join("index")).unwrap();

    h.origin.reply(
        "/a",
        Reply::ok(vec![b'2'; 20_000]).header("cache-control", "max-age=600"),
    );
    let edge = TestEdge::start(config, clock, dir).await;
    let after = edge.get("/a").await;
    assert!(!after.is_hit(), "{}", after.cache_status());
    // Its name may be taken by the new response's file.
    let old = std::fs::read(&old_file).unwrap_or_default();
    assert!(!old.starts_with(b"1"), "the old body file is deleted");
    assert_eq!(after.body, vec![b'2'; 20_000]);
    assert_eq!(h.origin.hits("/a"), 2);
}

/// A purged response's body file that cannot be deleted (here `chattr +i` on the directory,
/// which stops root too; in the field EIO, EPERM, EBUSY) was only logged, and the next start-up
/// took the file back: the purged response was served again. It is emptied instead.
#[tokio::test]
async fn a_purge_whose_body_file_cannot_be_deleted_stays_purged_after_a_restart() {
    let h = Harness::new().await;
    h.origin.reply(
        "/a",
        Reply::ok(vec![b'1'; 20_000]).header("cache-control", "max-age=600"),
    );
    let edge = h.edge().await;
    assert!(edge.get("/a").await.stored());
    let bodies = edge.config.cache.disk.path.join("bodies");
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(&bodies)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if !chattr("+i") {
        eprintln!("skipped: chattr +i needs root and a file system that takes it");
        return;
    }
    // Writable again whatever happens, or the test's directory could not be removed.
    struct Writable<F: Fn(&str) -> bool>(F);
    impl<F: Fn(&str) -> bool> Drop for Writable<F> {
        fn drop(&mut self) {
            (self.0)("-i");
        }
    }
    let writable = Writable(chattr);
    let url = format!("http://{}/purge?url=/a", edge.admin_addr);
    let purged = edge.client.post(url).send().await;
    drop(writable);
    assert_eq!(purged.unwrap().status(), 200);

    h.origin.reply(
        "/a",
        Reply::ok(vec![b'2'; 20_000]).header("cache-control", "max-age=600"),
    );
    let edge = edge.restart().await;
    let after = edge.get("/a").await;
    assert!(!after.is_hit(), "{}", after.cache_status());
    assert_eq!(after.body, vec![b'2'; 20_000]);
}

#[tokio::test]
async fn a_body_file_changed_after_it_was_verified_is_verified_again() {
    let h = Harness::new().await;
    let body = vec![b'v'; 20_000];
    h.origin.reply(
        "/file",
        Reply::ok(body.clone()).header("cache-control", "max-age=600"),
    );
    let edge = h.edge_with(|c| c.cache.memory.capacity.0 = 1024).await;
    edge.get("/file").await;
    // A disk hit verifies the body file and remembers it unchanged.
    let hit = edge.get("/file").await;
    assert_eq!(hit.param("detail"), Some("disk"), "{}", hit.cache_status());
    assert_eq!(hit.body, body);

    let file = body_file(&edge);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[10_000] ^= 0x20;
    rewrite(&file, &bytes);

    let after = edge.get("/file").await;
    assert_eq!(after.body, body, "{}", after.cache_status());
    assert!(!after.is_hit(), "{}", after.cache_status());
    assert_eq!(h.origin.hits("/file"), 2);
}

/// A body file replaced by another key's while edge runs was a miss (the lookup compares URLs),
/// but silently: neither logged nor counted, and left in place. The start-up check already
/// dropped such a file.
#[tokio::test]
async fn a_body_file_holding_another_keys_record_is_an_integrity_failure() {
    let h = Harness::new().await;
    for (path, byte) in [("/a", b'a'), ("/b", b'b')] {
        h.origin.reply(
            path,
            Reply::ok(vec![byte; 20_000]).header("cache-control", "max-age=600"),
        );
    }
    // A memory tier that holds nothing: every lookup reads the disk tier.
    let edge = h.edge_with(|c| c.cache.memory.capacity.0 = 1024).await;
    edge.get("/a").await;
    edge.get("/b").await;
    assert!(edge.get("/a").await.is_hit());
    let bodies = edge.config.cache.disk.path.join("bodies");
    let file_of = |byte: u8| {
        std::fs::read_dir(&bodies)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| std::fs::read(path).is_ok_and(|bytes| bytes.first() == Some(&byte)))
            .unwrap()
    };
    let a = file_of(b'a');
    std::fs::copy(file_of(b'b'), &a).unwrap();

    let after = edge.get("/a").await;
    assert!(!after.is_hit(), "{}", after.cache_status());
    assert_eq!(after.body, vec![b'a'; 20_000]);
    let metrics = edge.metrics().await;
    assert_eq!(
        sample(&metrics, "edge_disk_integrity_failures_total"),
        1.0,
        "{metrics}"
    );
    assert!(edge.get("/b").await.is_hit(), "/b's own file is untouched");
}

/// A disk hit of a body file verified before hashes neither its body nor its record again; a
/// change to the file's record (its modification time moves) is caught all the same.
#[tokio::test]
async fn a_record_changed_after_its_file_was_verified_is_verified_again() {
    let h = Harness::new().await;
    let body = vec![b'v'; 20_000];
    h.origin.reply(
        "/file",
        Reply::ok(body.clone())
            .header("cache-control", "max-age=600")
            .header("x-tag", "original-value"),
    );
    let edge = h.edge_with(|c| c.cache.memory.capacity.0 = 1024).await;
    edge.get("/file").await;
    for _ in 0..2 {
        let hit = edge.get("/file").await;
        assert_eq!(hit.param("detail"), Some("disk"), "{}", hit.cache_status());
        assert_eq!(hit.header("x-tag"), Some("original-value"));
    }

    let file = body_file(&edge);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes[body.len()..]
        .windows(14)
        .position(|w| w == b"original-value")
        .expect("the field's value in the record")
        + body.len();
    // Still a valid value, of the same length: only the record's checksum tells.
    bytes[at..at + 14].copy_from_slice(b"tampered-value");
    rewrite(&file, &bytes);

    let after = edge.get("/file").await;
    assert_eq!(after.body, body, "{}", after.cache_status());
    assert_eq!(after.header("x-tag"), Some("original-value"));
    assert!(!after.is_hit(), "{}", after.cache_status());
    assert_eq!(h.origin.hits("/file"), 2);
}
