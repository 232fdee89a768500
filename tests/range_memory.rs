//! Multi-range answers of a large body do not hold a copy of it per request: the parts are read
//! from the body's file as they are sent. (A file of their own: they measure the process's
//! resident memory, which other tests running beside them would move.)

mod common;

use std::time::Duration;

use common::{Harness, Reply};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Eight clients ask for `bytes=0-0,2-` of a 32 MiB body kept on disk only, and stop reading.
/// Each request read every part into one multipart body in memory before sending its head: the
/// process grew by 8 × 32 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_ranges_of_a_large_disk_body_do_not_hold_a_copy_of_it_per_request() {
    const LEN: usize = 32 << 20;
    const CLIENTS: usize = 8;
    let h = Harness::new().await;
    let body: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    h.origin.reply(
        "/big",
        Reply::ok(body).header("cache-control", "max-age=600"),
    );
    // memory.max_object_size is 8 MiB: /big is on disk only.
    let edge = h.edge().await;
    assert_eq!(edge.get("/big").await.body.len(), LEN);
    let hit = edge.get("/big").await;
    assert_eq!(hit.param("detail"), Some("disk"), "{}", hit.cache_status());
    drop(hit);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (client, head) =
            common::stalled_client(edge.addr, "/big", "range: bytes=0-0,2-\r\n").await;
        assert!(head.starts_with("HTTP/1.1 206"), "{head}");
        assert!(head.contains("multipart/byteranges"), "{head}");
        clients.push(client);
    }
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "{CLIENTS} multi-range requests of a {} MiB body on disk grew the process by {grown_mib} MiB",
        LEN >> 20
    );
    drop(clients);
}
