//! Multi-range answers of a large body do not hold a copy of it per request: the parts are read
//! from the body's file as they are sent. (A file of their own: they measure the process's
//! resident memory, which other tests running beside them would move.)

mod common;

use std::time::Duration;

use common::{Harness, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Asks for `path` with `range`, reads the response head, then nothing more (a 4 KiB receive
/// buffer): whatever edge holds for the response stays held.
async fn stalled_ranged_client(
    edge: std::net::SocketAddr,
    path: &str,
    range: &str,
) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4 << 10).unwrap();
    let mut stream = socket.connect(edge).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: edge\r\nrange: {range}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0);
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(head.contains("multipart/byteranges"), "{head}");
    stream
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
        clients.push(stalled_ranged_client(edge.addr, "/big", "bytes=0-0,2-").await);
    }
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "{CLIENTS} multi-range requests of a {} MiB body on disk grew the process by {grown_mib} MiB",
        LEN >> 20
    );
    drop(clients);
}
