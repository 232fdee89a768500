//! The disk tier and the space it has: it leaves `cache.disk.min_free` free on its file system
//! whatever its capacity says, and a body it has no room for is served whole from memory.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{Harness, Reply, TestEdge, raw_origin};
use futures_util::future::join_all;

/// A tmpfs of `size` mounted at `at` for as long as this lives: a file system that fills up.
struct SmallFs(PathBuf);

impl SmallFs {
    /// `None` where mounting is not allowed (not root), except in CI, which runs as root.
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root and must be able to mount a tmpfs"
            );
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        Some(Self(at.to_owned()))
    }

    /// Bytes free for unprivileged users, as `df` shows them.
    fn available(&self) -> u64 {
        let fs = rustix::fs::statvfs(&self.0).unwrap();
        fs.f_bavail * fs.f_frsize
    }
}

impl SmallFs {
    /// Gives the file system `size` in all.
    fn grow(&self, size: &str) {
        let grown = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(grown.success());
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn body(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| ((i * 7 + j) % 251) as u8).collect()
}

/// A disk tier whose capacity is far larger than its file system keeps `min_free` free by
/// evicting its oldest objects, and goes on storing: nothing fails for want of space, and sled
/// (which takes no more writes after one failed, until it is opened again) never sees a full
/// disk.
#[tokio::test]
async fn a_disk_tier_larger_than_its_file_system_leaves_min_free_and_keeps_storing() {
    let h = Harness::new().await;
    let dir = Arc::new(tempfile::TempDir::new().unwrap());
    let store = dir.path().join("store");
    let Some(fs) = SmallFs::mount(&store, "24m") else {
        return;
    };
    let min_free: u64 = 4 << 20;
    let mut config = common::base_config(&h.origin.url(), dir.path());
    config.cache.memory.capacity.0 = 1 << 20;
    config.cache.disk.capacity.0 = 1 << 30;
    config.cache.disk.min_free.0 = min_free;
    let edge = TestEdge::start(config, h.clock.clone(), dir.clone()).await;
    // 36 MB of bodies in files and 1.5 MB of small ones in sled, through a 24 MiB file system.
    let (large, small) = (180, 1500);
    for i in 0..large {
        let path = format!("/large/{i}");
        h.origin.reply(
            &path,
            Reply::ok(body(i, 200_000)).header("cache-control", "max-age=600"),
        );
        let got = edge.get(&path).await;
        assert!(got.body == body(i, 200_000), "/large/{i}: wrong body");
        assert!(got.stored(), "/large/{i}: {}", got.cache_status());
    }
    for i in 0..small {
        let path = format!("/small/{i}");
        h.origin.reply(
            &path,
            Reply::ok(body(i, 1000)).header("cache-control", "max-age=600"),
        );
        assert!(edge.get(&path).await.body == body(i, 1000), "/small/{i}");
    }
    // sled flushes every 500 ms: let it write what it holds before the file system is measured.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let available = fs.available();
    // The tier measures the room left every 20 ms, and sled's log grows in steps: allow 1 MiB.
    assert!(
        available + (1 << 20) >= min_free,
        "{available} bytes free, min_free is {min_free}"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", edge.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = |name: &str| -> u64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{tier=\"disk\"}}")))
            .unwrap_or_else(|| panic!("no {name} for the disk tier in\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(
        gauge("edge_cache_capacity_bytes") < 24 << 20,
        "the disk tier's capacity should be what the file system has room for"
    );
    assert!(gauge("edge_cache_evictions_total") > 0);
    // After a restart (an empty memory tier) the latest objects of both kinds are disk hits.
    let edge = edge.restart().await;
    for (path, want) in [
        (format!("/large/{}", large - 1), body(large - 1, 200_000)),
        (format!("/small/{}", small - 1), body(small - 1, 1000)),
    ] {
        let got = edge.get(&path).await;
        assert!(got.is_hit(), "{path}: {}", got.cache_status());
        assert!(got.body == want, "{path}: wrong body");
    }
    let origin_requests = h.origin.hits(&format!("/small/{}", small - 1));
    assert_eq!(origin_requests, 1);
    edge.stop().await;
}

/// A body of unannounced length that outgrows what the disk tier may hold stops being written to
/// its file there; every reader, joined to the one fetch, still gets the whole body (from the
/// file up to where it stopped, from memory after), and it is not stored.
#[tokio::test]
async fn a_body_with_no_room_on_disk_is_served_whole_from_memory() {
    let h = Harness::new().await;
    let whole = body(3, 12 << 20);
    let response =
        common::chunked_response("HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\n", &whole);
    let (addr, requests) = raw_origin(Vec::leak(response)).await;
    let edge = h
        .edge_with(|c| {
            c.origin.url = edge::config::OriginUrl(format!("http://{addr}").parse().unwrap());
            c.cache.memory.max_object_size.0 = 256 << 10;
            c.cache.disk.capacity.0 = 4 << 20;
            c.cache.disk.min_free.0 = 0;
        })
        .await;
    let gets = (0..4).map(|_| edge.get("/unannounced"));
    let ranged = edge.get_with("/unannounced", &[("range", "bytes=10000000-10000099")]);
    let (answers, part) = tokio::join!(join_all(gets), ranged);
    for answer in &answers {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body.len(), whole.len(), "{}", answer.cache_status());
        assert!(answer.body == whole, "wrong bytes");
    }
    // A range asked for before the length is known is answered with the whole body (200).
    assert!(
        part.body == whole
            || (part.status == 206 && part.body[..] == whole[10_000_000..10_000_100]),
        "range: {} {}",
        part.status,
        part.cache_status()
    );
    let fetches = requests.load(std::sync::atomic::Ordering::SeqCst);
    // Not stored: the next request goes to the origin again, and is served whole.
    let again = edge.get("/unannounced").await;
    assert!(again.body == whole);
    assert!(!again.is_hit(), "{}", again.cache_status());
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::SeqCst),
        fetches + 1
    );
    edge.stop().await;
}

/// The disk gauges and counters: `edge_disk_up` and `edge_disk_failures_total`.
async fn disk_metric(edge: &TestEdge, name: &str) -> u64 {
    let metrics = reqwest::get(format!("http://{}/metrics", edge.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A disk tier that cannot be opened at start-up (here: another node holds the store) shows in
/// the metrics as `edge_disk_up 0` and a disk tier of nothing, where its series were left out
/// and an alert on `edge_disk_up == 0` never fired. The node serves from memory meanwhile.
#[tokio::test]
async fn a_disk_tier_that_did_not_open_is_down_in_the_metrics() {
    let h = Harness::new().await;
    h.origin.reply("/m", cached(b"in memory".to_vec()));
    let first = h.edge().await;
    assert_eq!(disk_metric(&first, "edge_disk_up").await, 1);
    let path = first.config.cache.disk.path.clone();
    let second = h.edge_with(|c| c.cache.disk.path = path).await;
    assert_eq!(disk_metric(&second, "edge_disk_up").await, 0);
    let metrics = second.metrics().await;
    for name in ["edge_cache_capacity_bytes", "edge_cache_entries"] {
        let sample = format!("{name}{{tier=\"disk\"}} 0");
        assert!(
            metrics.lines().any(|l| l == sample),
            "{sample} in\n{metrics}"
        );
    }
    assert!(second.get("/m").await.stored());
    let hit = second.get("/m").await;
    assert_eq!((hit.text(), hit.is_hit()), ("in memory", true));
}

fn cached(body: Vec<u8>) -> Reply {
    Reply::ok(body).header("cache-control", "max-age=600")
}

/// An edge whose disk tier has sled's directory on a 3 MiB file system of its own, which the
/// tier's measure of room does not see, holding `/kept` (in a body file), `/kept-small` and
/// `/purged` (both in sled), durably; then small responses are stored until a write fails and
/// the tier goes off. `None` where mounting is not allowed.
async fn edge_whose_disk_tier_failed(
    h: &Harness,
) -> Option<(TestEdge, SmallFs, Arc<tempfile::TempDir>)> {
    let dir = Arc::new(tempfile::TempDir::new().unwrap());
    let store = dir.path().join("store");
    let index_fs = SmallFs::mount(&store.join("index"), "3m")?;
    // The store's layout, as edge writes it beside a new index.
    std::fs::write(store.join("layout"), "edge disk 3\n").unwrap();
    let mut config = common::base_config(&h.origin.url(), dir.path());
    // Every hit is read from the disk tier.
    config.cache.memory.capacity.0 = 1024;
    config.cache.disk.capacity.0 = 1 << 30;
    config.cache.disk.min_free.0 = 0;
    let edge = TestEdge::start(config, h.clock.clone(), dir.clone()).await;
    for (path, want) in [
        ("/kept", body(1, 20_000)),
        ("/kept-small", body(4, 2000)),
        ("/purged", body(2, 2000)),
    ] {
        h.origin.reply(path, cached(want.clone()));
        assert!(edge.get(path).await.stored());
        let hit = edge.get(path).await;
        assert!(hit.is_hit() && hit.body == want, "{path}");
    }
    // A purge flushes sled: what it holds so far is on disk.
    purge(&edge, "url=/elsewhere").await;
    assert_eq!(disk_metric(&edge, "edge_disk_up").await, 1);
    let mut stores = 0;
    while disk_metric(&edge, "edge_disk_up").await == 1 {
        for _ in 0..50 {
            let path = format!("/small/{stores}");
            h.origin.reply(&path, cached(body(stores, 2000)));
            assert!(edge.get(&path).await.body == body(stores, 2000));
            stores += 1;
        }
        assert!(stores < 20_000, "the disk tier never failed a write");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(disk_metric(&edge, "edge_disk_failures_total").await, 1);
    Some((edge, index_fs, dir))
}

/// Purges through the admin listener what `query` names.
async fn purge(edge: &TestEdge, query: &str) {
    let purged = edge
        .client
        .post(format!("http://{}/purge?{query}", edge.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
}

/// Purges `/purged` (by what `query` names) while the tier is off, and changes it at the
/// origin: the purged body is not served from disk.
async fn purge_while_off(h: &Harness, edge: &TestEdge, query: &str) {
    purge(edge, query).await;
    h.origin.reply("/purged", cached(body(3, 2000)));
    let got = edge.get("/purged").await;
    assert!(got.body == body(3, 2000), "the purged body was served");
    assert!(!got.is_hit(), "{}", got.cache_status());
    assert_eq!(h.origin.hits("/purged"), 2);
}

/// When sled's file system fills anyway, sled fails a write and takes no more until it is
/// opened again. The tier then goes off: what it holds is not served (a purge made meanwhile
/// cannot reach it) and nothing is stored. Once the file system has room, it is opened again by
/// itself, with what it held, less what was purged while it was off.
#[tokio::test]
async fn a_disk_tier_whose_file_system_filled_comes_back_without_what_was_purged_meanwhile() {
    comes_back_without_what_was_purged_meanwhile("url=/purged").await;
}

/// The same for a purge by URL prefix, which the reopened store makes by reading its records.
#[tokio::test]
async fn a_disk_tier_that_was_off_comes_back_without_what_a_prefix_purge_named_meanwhile() {
    comes_back_without_what_was_purged_meanwhile("prefix=/pur").await;
}

async fn comes_back_without_what_was_purged_meanwhile(query: &str) {
    let h = Harness::new().await;
    let Some((edge, index_fs, _dir)) = edge_whose_disk_tier_failed(&h).await else {
        return;
    };
    purge_while_off(&h, &edge, query).await;
    // No room yet: it stays off (it tries after 1 s, and 2 s after that).
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    assert_eq!(disk_metric(&edge, "edge_disk_up").await, 0);
    // Room again: the tier comes back by itself.
    index_fs.grow("64m");
    let waited = std::time::Instant::now();
    while disk_metric(&edge, "edge_disk_up").await == 0 {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(30),
            "the disk tier did not come back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // With what it held, in body files and in sled...
    for (path, want) in [("/kept", body(1, 20_000)), ("/kept-small", body(4, 2000))] {
        let got = edge.get(path).await;
        assert!(got.is_hit(), "{path}: {}", got.cache_status());
        assert!(got.body == want, "{path}");
        assert_eq!(h.origin.hits(path), 1);
    }
    // ...but not what was purged while it was off; and it stores in sled again.
    let got = edge.get("/purged").await;
    assert!(got.body == body(3, 2000), "the purged body came back");
    assert!(!got.is_hit(), "{}", got.cache_status());
    let got = edge.get("/purged").await;
    assert!(
        got.is_hit() && got.body == body(3, 2000),
        "{}",
        got.cache_status()
    );
    assert_eq!(h.origin.hits("/purged"), 3);
    assert_eq!(disk_metric(&edge, "edge_disk_failures_total").await, 1);
    edge.stop().await;
}

/// Edge stopped while its disk tier is off, with a purge the store has not made: started again,
/// the store starts empty rather than serve the purged response.
#[tokio::test]
async fn a_disk_tier_stopped_while_off_with_a_purge_missed_starts_empty() {
    let h = Harness::new().await;
    let Some((edge, index_fs, _dir)) = edge_whose_disk_tier_failed(&h).await else {
        return;
    };
    purge_while_off(&h, &edge, "url=/purged").await;
    let config = edge.config.clone();
    let dir = edge.stop().await;
    index_fs.grow("64m");
    let edge = TestEdge::start(config, h.clock.clone(), dir).await;
    assert_eq!(disk_metric(&edge, "edge_disk_up").await, 1);
    let got = edge.get("/purged").await;
    assert!(got.body == body(3, 2000), "the purged body came back");
    assert!(!got.is_hit(), "{}", got.cache_status());
    let got = edge.get("/kept").await;
    assert!(!got.is_hit(), "{}", got.cache_status());
    assert!(got.body == body(1, 20_000));
    // The new store works.
    let got = edge.get("/purged").await;
    assert!(got.is_hit(), "{}", got.cache_status());
    edge.stop().await;
}

/// A store that does not open because its file system is full (filled while edge was down, by
/// logs say) is not a broken one: it is left as it is, edge runs on memory meanwhile, and once
/// there is room again the next start serves what it held. It was moved aside as broken, and
/// deleted at the next start: the whole cache lost to a full disk.
#[tokio::test]
async fn a_store_on_a_full_file_system_is_kept_for_when_there_is_room() {
    let h = Harness::new().await;
    let dir = Arc::new(tempfile::TempDir::new().unwrap());
    let Some(fs) = SmallFs::mount(&dir.path().join("fs"), "8m") else {
        return;
    };
    let store = fs.0.join("store");
    let mut config = common::base_config(&h.origin.url(), dir.path());
    config.cache.disk.path = store.clone();
    // Every hit is read from the disk tier.
    config.cache.memory.capacity.0 = 1024;
    config.cache.disk.min_free.0 = 0;
    let edge = TestEdge::start(config.clone(), h.clock.clone(), dir.clone()).await;
    let held = [("/kept", body(1, 20_000)), ("/kept-small", body(4, 2000))];
    for (path, want) in &held {
        h.origin.reply(path, cached(want.clone()));
        assert!(edge.get(path).await.stored(), "{path}");
    }
    let dir = edge.stop().await;
    // The file system fills up while edge is down.
    let fill = fs.0.join("fill");
    let _ = std::fs::write(&fill, vec![0u8; 8 << 20]);
    assert!(
        fs.available() < 64 << 10,
        "{} bytes still free",
        fs.available()
    );
    let edge = TestEdge::start(config.clone(), h.clock.clone(), dir).await;
    assert_eq!(disk_metric(&edge, "edge_disk_up").await, 0);
    let dir = edge.stop().await;
    let aside: Vec<_> = std::fs::read_dir(&fs.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("store.broken-"))
        .collect();
    assert!(aside.is_empty(), "the store was moved aside: {aside:?}");
    // Room again: the next start serves what the store held.
    std::fs::remove_file(&fill).unwrap();
    let edge = TestEdge::start(config, h.clock.clone(), dir).await;
    assert_eq!(disk_metric(&edge, "edge_disk_up").await, 1);
    for (path, want) in &held {
        let got = edge.get(path).await;
        assert!(got.is_hit(), "{path}: {}", got.cache_status());
        assert!(got.body == *want, "{path}");
        assert_eq!(h.origin.hits(path), 1, "{path}");
    }
    edge.stop().await;
}

/// The disk tier's `edge_cache_bytes` and `edge_cache_evictions_total`.
async fn disk_tier_bytes_and_evictions(edge: &TestEdge) -> (u64, u64) {
    let metrics = edge.metrics().await;
    let sample = |name: &str| -> u64 {
        let line = (metrics.lines())
            .find(|l| l.starts_with(&format!("{name}{{tier=\"disk\"}} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    (
        sample("edge_cache_bytes"),
        sample("edge_cache_evictions_total"),
    )
}

/// A store larger than `cache.disk.capacity` (lowered since, as an operator does when the disk
/// runs short) is evicted down to it at start-up. It stayed over it until the next store, which
/// a node serving hits may not make for a long time.
#[tokio::test]
async fn a_store_over_a_lowered_capacity_is_evicted_down_to_it_at_start_up() {
    let h = Harness::new().await;
    let dir = Arc::new(tempfile::TempDir::new().unwrap());
    let mut config = common::base_config(&h.origin.url(), dir.path());
    config.cache.disk.min_free.0 = 0;
    let edge = TestEdge::start(config.clone(), h.clock.clone(), dir.clone()).await;
    for i in 0..40 {
        let path = format!("/large/{i}");
        h.origin.reply(&path, cached(body(i, 50_000)));
        assert!(edge.get(&path).await.stored(), "{path}");
    }
    let (held, _) = disk_tier_bytes_and_evictions(&edge).await;
    assert!(held > 2_000_000, "{held} bytes on disk");
    let dir = edge.stop().await;
    let capacity: u64 = 1 << 20;
    config.cache.disk.capacity.0 = capacity;
    let edge = TestEdge::start(config, h.clock.clone(), dir).await;
    // Beside the server: it answers meanwhile.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (held, evictions) = loop {
        let (held, evictions) = disk_tier_bytes_and_evictions(&edge).await;
        if held <= capacity || std::time::Instant::now() > deadline {
            break (held, evictions);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        held <= capacity,
        "{held} bytes on disk over a capacity of {capacity}"
    );
    assert!(evictions > 0);
    // The newest are kept.
    let got = edge.get("/large/39").await;
    assert!(got.is_hit(), "{}", got.cache_status());
    edge.stop().await;
}
