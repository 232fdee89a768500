//! A disk that hangs (a failing drive retrying, a stalled network volume; here a file system
//! frozen with `fsfreeze`, on which every write waits until it is thawed): edge answers without
//! storing, rather than waiting with the disk.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Harness, Reply, TestEdge};
use tempfile::TempDir;

/// An ext4 file system in a file, loop-mounted for as long as this lives, that can be frozen.
struct LoopFs {
    mount: PathBuf,
    /// The image, outside the mount.
    _image: TempDir,
}

impl LoopFs {
    /// `None`, said why, where that cannot be made here (it needs root, `mkfs.ext4`, a loop
    /// device and `fsfreeze`; a tmpfs cannot be frozen).
    fn mount() -> Option<Self> {
        let image = TempDir::new().unwrap();
        let file = image.path().join("fs.img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let mount = image.path().join("mnt");
        std::fs::create_dir_all(&mount).unwrap();
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&file)
            .status()
            .is_ok_and(|status| status.success())
            && Command::new("mount")
                .args(["-o", "loop"])
                .arg(&file)
                .arg(&mount)
                .status()
                .is_ok_and(|status| status.success());
        if !made {
            eprintln!("skipped: loop-mounting an ext4 file system needs root and mkfs.ext4");
            return None;
        }
        let fs = Self {
            mount,
            _image: image,
        };
        if !fs.freeze(true) || !fs.freeze(false) {
            eprintln!("skipped: fsfreeze is not available");
            return None;
        }
        Some(fs)
    }

    fn path(&self) -> &Path {
        &self.mount
    }

    /// Freezes the file system (every write to it waits), or thaws it; whether that worked.
    fn freeze(&self, frozen: bool) -> bool {
        Command::new("fsfreeze")
            .arg(if frozen { "-f" } else { "-u" })
            .arg(&self.mount)
            .status()
            .is_ok_and(|status| status.success())
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        self.freeze(false);
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// An edge whose disk tier is on `fs`, a body over `memory_max` going to a file of its own, and
/// serving, its disk tier open (it is opened before the first request is answered: `/small`,
/// which the origin must serve, is stored).
async fn edge_on(h: &Harness, fs: &LoopFs, memory_max: u64) -> TestEdge {
    let store = fs.path().join("store");
    let edge = h
        .edge_with(|c| {
            c.cache.disk.path = store;
            c.cache.disk.min_free.0 = 0;
            c.cache.memory.max_object_size.0 = memory_max;
        })
        .await;
    assert!(edge.get("/small").await.stored());
    edge
}

/// A response too large for memory is written to a file on disk as it arrives. On a disk that
/// hangs, beginning that file hung, and the request with it, its head unsent, for as long as
/// the disk did (a client gave up after 15 s; it was answered once the file system was thawed).
/// It is answered now, after at most a few seconds, and not stored; so is one of unannounced
/// length that outgrows memory, which moves to a file then. Once the disk is back, they are
/// stored as before.
#[tokio::test]
async fn a_disk_that_hangs_does_not_hold_a_large_response() {
    let Some(fs) = LoopFs::mount() else { return };
    let h = Harness::new().await;
    let large: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    for (path, reply) in [
        ("/small", Reply::ok("small")),
        ("/announced", Reply::ok(large.clone())),
        ("/chunked", Reply::ok(large.clone()).chunked()),
    ] {
        h.origin
            .reply(path, reply.header("cache-control", "max-age=600"));
    }
    let edge = edge_on(&h, &fs, 1 << 20).await;

    assert!(fs.freeze(true));
    for path in ["/announced", "/chunked"] {
        let response = tokio::time::timeout(Duration::from_secs(20), edge.get(path))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer in 20 s while the disk hangs"));
        assert_eq!(response.status, 200, "{path}");
        assert!(response.body[..] == large[..], "{path}");
    }
    // What memory holds is served meanwhile.
    assert!(edge.get("/small").await.is_hit());
    assert!(fs.freeze(false));
    // The calls stuck on the frozen disk return: until they have, no body file is begun.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for path in ["/announced", "/chunked"] {
        let response = edge.get(path).await;
        assert!(response.body[..] == large[..], "{path}");
        let hit = edge.get(path).await;
        assert!(hit.is_hit(), "{path}: {}", hit.cache_status());
        assert!(hit.body[..] == large[..], "{path}");
        assert_eq!(h.origin.hits(path), 2, "{path}");
    }
}

/// While the disk hangs, a large response is not held each time for the whole wait: once
/// beginning a body file has overrun its time and is still stuck, edge does not begin another
/// (each would be one more blocking thread stuck on the disk, up to the runtime's 512, after
/// which every blocking call, disk stores and the origin's DNS lookups among them, queues), and
/// the next request for it is answered at once, not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_hangs_is_not_waited_on_again_while_it_still_hangs() {
    let Some(fs) = LoopFs::mount() else { return };
    let h = Harness::new().await;
    let large: Vec<u8> = (0..64u32 << 10).map(|i| (i % 251) as u8).collect();
    for path in ["/small", "/large"] {
        let body = if path == "/small" {
            b"small".to_vec()
        } else {
            large.clone()
        };
        h.origin
            .reply(path, Reply::ok(body).header("cache-control", "max-age=600"));
    }
    let edge = edge_on(&h, &fs, 16 << 10).await;
    assert!(fs.freeze(true));
    let mut took = Vec::new();
    for _ in 0..4 {
        let started = std::time::Instant::now();
        let response = edge.get("/large").await;
        took.push(started.elapsed());
        assert!(response.body[..] == large[..]);
        assert_eq!(response.param("detail"), Some("disk-unavailable"));
    }
    assert!(fs.freeze(false));
    assert!(
        took[1..].iter().all(|took| *took < Duration::from_secs(2)),
        "each request waited on the hung disk, leaving one more thread stuck on it: {took:?}"
    );
}
