//! Large objects: a body too large for the memory tier streams into the disk tier while it
//! streams to every client, is read back from disk, and is stored whole; one too large to store is
//! read from the origin only as fast as its readers take it.

mod common;

use std::time::Duration;

use common::{Harness, Reply, chunked_response, holding_back_origin, raw_origin};
use futures_util::future::join_all;

/// Waits (up to 10 s) until the body files under `bodies` hold `at_least` bytes; returns how
/// many they hold.
async fn bytes_on_disk_reaching(bodies: &std::path::Path, at_least: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let size: u64 = std::fs::read_dir(bodies)
            .map(|files| {
                files
                    .flatten()
                    .map(|f| f.metadata().map_or(0, |m| m.len()))
                    .sum()
            })
            .unwrap_or(0);
        if size >= at_least || std::time::Instant::now() > deadline {
            return size;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn large(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn a_large_body_streams_to_disk_and_to_every_waiter() {
    let h = Harness::new().await;
    let body = large(3 << 20);
    h.origin.reply(
        "/big",
        Reply::ok(body.clone())
            .header("cache-control", "max-age=600")
            .delay(Duration::from_millis(200)),
    );
    let edge = h
        .edge_with(|c| c.cache.memory.max_object_size.0 = 256 << 10)
        .await;
    let responses = join_all((0..10).map(|_| edge.get("/big"))).await;
    assert_eq!(h.origin.hits("/big"), 1);
    for response in &responses {
        assert_eq!(response.status, 200);
        assert!(
            response.body == body,
            "every waiter gets the body byte-identical"
        );
    }
    let hit = edge.get("/big").await;
    assert_eq!(hit.param("detail"), Some("disk"), "{}", hit.cache_status());
    assert!(hit.body == body);
    // It is one body file on disk, not a copy in the index.
    let dir = edge.stop().await;
    let files: Vec<_> = std::fs::read_dir(dir.path().join("store/bodies"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(files.len(), 1);
    // The file is the body followed by its record (a few hundred bytes), not a second copy.
    let stored = std::fs::read(files[0].path()).unwrap();
    assert!(stored.starts_with(&body));
    assert!(
        stored.len() - body.len() < 4096,
        "{} bytes after the body",
        stored.len() - body.len()
    );
}

#[tokio::test]
async fn a_large_body_cut_short_is_an_error_and_is_not_stored() {
    let h = Harness::new().await;
    // A raw origin that promises 2 MiB and closes after 1 MiB.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let head =
                "HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: 2097152\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&vec![9u8; 1 << 20]).await;
        }
    });
    let edge = h
        .edge_with(|c| {
            c.origin.url = edge::config::OriginUrl(format!("http://{addr}").parse().unwrap());
            c.cache.memory.max_object_size.0 = 256 << 10;
        })
        .await;
    let response = edge.client.get(edge.url("/cut")).send().await.unwrap();
    assert!(
        response.bytes().await.is_err(),
        "the client sees the failure, not a short body"
    );
    let dir = edge.stop().await;
    let files = std::fs::read_dir(dir.path().join("store/bodies"))
        .unwrap()
        .count();
    assert_eq!(files, 0, "nothing half-written stays behind");
}

#[tokio::test]
async fn the_body_is_on_disk_while_it_is_still_arriving() {
    let h = Harness::new().await;
    let half = vec![5u8; 1 << 20];
    let mut first = format!(
        "HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: {}\r\n\r\n",
        2 * half.len()
    )
    .into_bytes();
    first.extend_from_slice(&half);
    let (addr, release) = holding_back_origin(first, half.clone()).await;
    let edge = h
        .edge_with(|c| {
            c.origin.url = edge::config::OriginUrl(format!("http://{addr}").parse().unwrap());
            c.cache.memory.max_object_size.0 = 256 << 10;
        })
        .await;
    let request = tokio::spawn({
        let (client, url) = (edge.client.clone(), edge.url("/slow-big"));
        async move { client.get(url).send().await.unwrap().bytes().await.unwrap() }
    });
    // While the origin holds back the second half, the first half is already in a file.
    let bodies = edge.config.cache.disk.path.join("bodies");
    let spooled = bytes_on_disk_reaching(&bodies, half.len() as u64).await;
    assert_eq!(
        spooled,
        half.len() as u64,
        "the first half streamed to disk before the rest arrived"
    );
    release.send(()).unwrap();
    let body = request.await.unwrap();
    assert_eq!(body.len(), 2 * half.len());
    assert!(body.iter().all(|&b| b == 5));
    let hit = edge.get("/slow-big").await;
    assert_eq!(hit.param("detail"), Some("disk"), "{}", hit.cache_status());
    assert_eq!(hit.body.len(), 2 * half.len());
}

/// A range of a response that is still arriving is sent as soon as its own bytes are in, not
/// once the whole body is (a player starting a video that is not cached yet): for a body held in
/// memory and for one spooled to disk alike.
#[tokio::test]
async fn a_range_of_a_body_still_arriving_is_sent_once_its_bytes_are_in() {
    for memory_max in [8 << 20, 256 << 10] {
        let h = Harness::new().await;
        let body = large(2 << 20);
        let half = body.len() / 2;
        let mut first = format!(
            "HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        first.extend_from_slice(&body[..half]);
        let (addr, release) = holding_back_origin(first, body[half..].to_vec()).await;
        let edge = h
            .edge_with(|c| {
                c.origin.url = edge::config::OriginUrl(format!("http://{addr}").parse().unwrap());
                c.cache.memory.max_object_size.0 = memory_max;
            })
            .await;
        // The origin holds back the second half: a range in the first is answered meanwhile.
        let early = edge.get_with("/video", &[("range", "bytes=1000-70999")]);
        let early = tokio::time::timeout(Duration::from_secs(5), early)
            .await
            .expect("the range is sent before the rest of the body arrives");
        assert_eq!(early.status, 206, "{memory_max}: {}", early.cache_status());
        assert_eq!(
            early.header("content-range"),
            Some("bytes 1000-70999/2097152")
        );
        assert!(early.body[..] == body[1000..71_000], "{memory_max}");
        // Several ranges in the first half: gathered part by part, also before the rest arrives.
        let several = edge.get_with("/video", &[("range", "bytes=10-19,300000-300099")]);
        let several = tokio::time::timeout(Duration::from_secs(5), several)
            .await
            .expect("the parts are sent before the rest of the body arrives");
        assert_eq!(
            several.status,
            206,
            "{memory_max}: {}",
            several.cache_status()
        );
        let content_type = several.header("content-type").unwrap_or_default();
        assert!(content_type.starts_with("multipart/byteranges; boundary="));
        for (first, last) in [(10, 19), (300_000, 300_099)] {
            let part = format!("Content-Range: bytes {first}-{last}/2097152\r\n\r\n");
            let at = find(&several.body, part.as_bytes()).expect("the part's header") + part.len();
            assert!(several.body[at..=at + last - first] == body[first..=last]);
        }
        // Several that come to more than edge gathers in memory (1 MiB): the whole body, sent
        // as it arrives. They were gathered whole, a copy per request, before anything was sent.
        let whole = edge
            .client
            .get(edge.url("/video"))
            .header("range", "bytes=0-0,2-1200000")
            .send();
        let whole = tokio::time::timeout(Duration::from_secs(5), whole)
            .await
            .expect("answered before the rest of the body arrives")
            .unwrap();
        assert_eq!(whole.status(), 200, "{memory_max}");
        drop(whole);
        // A range in the second half waits for its bytes, then gets exactly them.
        let late = tokio::spawn({
            let (client, url) = (edge.client.clone(), edge.url("/video"));
            async move {
                let response = client
                    .get(url)
                    .header("range", "bytes=1500000-1600000")
                    .send()
                    .await
                    .unwrap();
                (response.status(), response.bytes().await.unwrap())
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !late.is_finished(),
            "{memory_max}: its bytes have not arrived"
        );
        release.send(()).unwrap();
        let (status, bytes) = late.await.unwrap();
        assert_eq!(status, 206);
        assert!(bytes[..] == body[1_500_000..=1_600_000], "{memory_max}");
        // The whole response is stored (a request while that is under way joins the fill): the
        // origin, which answers one request only, is not asked again.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let next = edge.get("/video").await;
            assert!(next.body == body, "{memory_max}: {}", next.cache_status());
            if next.is_hit() {
                break;
            }
            assert!(
                next.cache_status().contains("collapsed"),
                "{}",
                next.cache_status()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "{memory_max}: never stored"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_large_disk_hit_is_verified_and_streamed_from_its_file() {
    let h = Harness::new().await;
    let body = large(2 << 20);
    h.origin.reply(
        "/big",
        Reply::ok(body.clone())
            .header("cache-control", "max-age=10")
            .header("etag", "\"big\""),
    );
    let edge = h
        .edge_with(|c| c.cache.memory.max_object_size.0 = 256 << 10)
        .await;
    edge.get("/big").await;
    let edge = edge.restart().await;
    let hit = edge.get("/big").await;
    assert_eq!(hit.param("detail"), Some("disk"), "{}", hit.cache_status());
    assert_eq!(hit.header("content-length"), Some("2097152"));
    assert!(hit.body == body);
    let range = edge
        .get_with("/big", &[("range", "bytes=1000000-1000099")])
        .await;
    assert_eq!(range.status, 206);
    assert_eq!(&range.body[..], &body[1_000_000..1_000_100]);
    // Stale: revalidated, and the origin's 304 refreshes the entry with its body intact.
    h.clock.advance(Duration::from_secs(20));
    h.origin.reply(
        "/big",
        Reply::ok("")
            .status(304)
            .header("etag", "\"big\"")
            .header("cache-control", "max-age=10"),
    );
    let refreshed = edge.get("/big").await;
    assert_eq!(
        refreshed.param("fwd-status"),
        Some("304"),
        "{}",
        refreshed.cache_status()
    );
    assert!(refreshed.body == body);
    let after = edge.get("/big").await;
    assert!(after.is_hit(), "{}", after.cache_status());
    assert!(after.body == body);
    assert_eq!(h.origin.hits("/big"), 2);
}

/// A 304 refreshes a body kept on disk only where it is: the requests that waited on the
/// revalidation read it from its file, and after a restart the refreshed headers come with the
/// same bytes, from disk, without the origin sending the body again.
#[tokio::test]
async fn a_304_refreshes_a_large_disk_body_in_place() {
    let h = Harness::new().await;
    let body = large((3 << 20) + 5);
    h.origin.reply(
        "/big",
        Reply::ok(body.clone())
            .header("cache-control", "max-age=10")
            .header("etag", "\"v1\"")
            .header("x-version", "1"),
    );
    let edge = h
        .edge_with(|c| c.cache.memory.max_object_size.0 = 256 << 10)
        .await;
    edge.get("/big").await;
    h.clock.advance(Duration::from_secs(20));
    // Slow enough that the other requests find the revalidation in flight and wait on it.
    h.origin.reply(
        "/big",
        Reply::ok("")
            .status(304)
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=10")
            .header("x-version", "2")
            .delay(Duration::from_millis(300)),
    );
    let answers = join_all((0..4).map(|_| edge.get("/big"))).await;
    for answer in &answers {
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.param("fwd-status"),
            Some("304"),
            "{}",
            answer.cache_status()
        );
        assert_eq!(answer.header("x-version"), Some("2"));
        assert_eq!(answer.header("content-length"), Some("3145733"));
        assert!(
            answer.body == body,
            "{}: the stored bytes",
            answer.cache_status()
        );
    }
    let waited = answers
        .iter()
        .filter(|a| a.cache_status().contains("; collapsed"))
        .count();
    assert_eq!(waited, 3, "one revalidation for the four requests");
    assert_eq!(h.origin.hits("/big"), 2);

    let edge = edge.restart().await;
    let hit = edge.get("/big").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.param("detail"), Some("disk"), "{}", hit.cache_status());
    assert_eq!(hit.header("x-version"), Some("2"));
    assert!(hit.body == body);
    let part = edge.get_with("/big", &[("range", "bytes=3145000-")]).await;
    assert_eq!(part.status, 206);
    assert!(part.body[..] == body[3_145_000..]);
    assert_eq!(h.origin.hits("/big"), 2);
}

/// An origin on loopback that answers its requests, on whatever connections they come, with
/// `replies` in turn (each after its delay, as raw HTTP/1.1 bytes).
async fn scripted_origin(replies: Vec<(Duration, Vec<u8>)>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let replies = std::sync::Arc::new(std::sync::Mutex::new(replies.into_iter()));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let replies = replies.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n @ 1..) = socket.read(&mut buf).await else {
                        return;
                    };
                    head.extend_from_slice(&buf[..n]);
                    if !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        continue;
                    }
                    head.clear();
                    let Some((delay, reply)) = replies.lock().unwrap().next() else {
                        return;
                    };
                    tokio::time::sleep(delay).await;
                    socket.write_all(&reply).await.unwrap();
                }
            });
        }
    });
    addr
}

/// A large body the origin sent without a length, refreshed by a 304: the requests that waited
/// on the revalidation get its length, as a hit does, and a range of it is read from the file.
#[tokio::test]
async fn a_refreshed_large_body_of_unannounced_length_is_served_with_its_length() {
    let h = Harness::new().await;
    let body = large(3 << 20);
    let chunked = common::chunked_response(
        "HTTP/1.1 200 OK\r\ncache-control: max-age=10\r\netag: \"c1\"\r\n",
        &body,
    );
    let not_modified =
        b"HTTP/1.1 304 Not Modified\r\ncache-control: max-age=10\r\netag: \"c1\"\r\n\r\n".to_vec();
    let addr = scripted_origin(vec![
        (Duration::ZERO, chunked),
        (Duration::from_millis(300), not_modified),
    ])
    .await;
    let edge = h
        .edge_with(|c| {
            c.origin.url = edge::config::OriginUrl(format!("http://{addr}").parse().unwrap());
            c.cache.memory.max_object_size.0 = 256 << 10;
        })
        .await;
    let first = edge.get("/chunked").await;
    assert!(
        first.body == body && first.stored(),
        "{}",
        first.cache_status()
    );
    h.clock.advance(Duration::from_secs(20));
    let (whole, part) = tokio::join!(
        edge.get("/chunked"),
        edge.get_with("/chunked", &[("range", "bytes=100-199")])
    );
    for answer in [&whole, &part] {
        assert_eq!(
            answer.param("fwd-status"),
            Some("304"),
            "{}",
            answer.cache_status()
        );
    }
    assert_eq!(whole.header("content-length"), Some("3145728"));
    assert!(whole.body == body);
    assert_eq!(part.status, 206, "{}", part.cache_status());
    assert_eq!(part.header("content-range"), Some("bytes 100-199/3145728"));
    assert!(part.body[..] == body[100..200]);
}

#[tokio::test]
async fn ranges_of_a_large_disk_hit_are_read_from_its_file() {
    let h = Harness::new().await;
    let len = (2 << 20) + 12_345;
    let body = large(len);
    h.origin.reply(
        "/big",
        Reply::ok(body.clone())
            .header("cache-control", "max-age=600")
            .header("content-type", "video/mp4")
            .header("etag", "\"v1\""),
    );
    let edge = h
        .edge_with(|c| c.cache.memory.max_object_size.0 = 256 << 10)
        .await;
    edge.get("/big").await;
    // One range, streamed from the file: across block boundaries, open-ended, a suffix, one byte.
    for (asked, from, to) in [
        ("bytes=65530-200000", 65_530, 200_000),
        ("bytes=0-0", 0, 0),
        ("bytes=2000000-", 2_000_000, len - 1),
        ("bytes=-70000", len - 70_000, len - 1),
        ("bytes=1048576-1114111", 1_048_576, 1_114_111),
        ("bytes=0-", 0, len - 1),
    ] {
        let part = edge.get_with("/big", &[("range", asked)]).await;
        assert_eq!(part.status, 206, "{asked}");
        assert_eq!(
            part.param("detail"),
            Some("disk"),
            "{}",
            part.cache_status()
        );
        assert_eq!(
            part.header("content-range"),
            Some(format!("bytes {from}-{to}/{len}").as_str()),
            "{asked}"
        );
        assert_eq!(
            part.header("content-length"),
            Some((to - from + 1).to_string().as_str()),
            "{asked}"
        );
        assert_eq!(part.header("content-type"), Some("video/mp4"), "{asked}");
        assert!(
            part.body[..] == body[from..=to],
            "{asked}: the bytes asked for"
        );
    }
    // Several ranges: one multipart/byteranges body.
    let parts = edge
        .get_with("/big", &[("range", "bytes=10-19,1500000-1500009")])
        .await;
    assert_eq!(parts.status, 206);
    assert!(
        parts
            .header("content-type")
            .is_some_and(|t| t.starts_with("multipart/byteranges; boundary=")),
        "{:?}",
        parts.header("content-type")
    );
    let text = &parts.body[..];
    let find = |needle: &[u8]| text.windows(needle.len()).position(|w| w == needle);
    let first = find(format!("Content-Range: bytes 10-19/{len}\r\n\r\n").as_bytes()).unwrap();
    let second =
        find(format!("Content-Range: bytes 1500000-1500009/{len}\r\n\r\n").as_bytes()).unwrap();
    let head = format!("Content-Range: bytes 10-19/{len}\r\n\r\n").len();
    assert!(text[first + head..first + head + 10] == body[10..20]);
    let head = format!("Content-Range: bytes 1500000-1500009/{len}\r\n\r\n").len();
    assert!(text[second + head..second + head + 10] == body[1_500_000..1_500_010]);
    // Past the end: 416, with the length, and no content.
    let beyond = edge.get_with("/big", &[("range", "bytes=5000000-")]).await;
    assert_eq!(beyond.status, 416);
    assert_eq!(
        beyond.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );
    assert_eq!(beyond.header("content-type"), None);
    assert!(beyond.body.is_empty());
    // If-Range naming another version: the whole 200.
    let other = edge
        .get_with("/big", &[("range", "bytes=0-99"), ("if-range", "\"v0\"")])
        .await;
    assert_eq!(other.status, 200);
    assert!(other.body == body);
    assert_eq!(
        h.origin.hits("/big"),
        1,
        "all of it from the one stored copy"
    );
}

#[tokio::test]
async fn a_corrupted_large_body_file_is_never_served() {
    let h = Harness::new().await;
    let body = large(1 << 20);
    h.origin.reply(
        "/big",
        Reply::ok(body.clone()).header("cache-control", "max-age=600"),
    );
    let edge = h
        .edge_with(|c| c.cache.memory.max_object_size.0 = 256 << 10)
        .await;
    edge.get("/big").await;
    let bodies = edge.config.cache.disk.path.join("bodies");
    let file = std::fs::read_dir(&bodies)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[500_000] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let again = edge.get("/big").await;
    assert_eq!(again.status, 200);
    assert!(!again.is_hit(), "{}", again.cache_status());
    assert!(
        again.body == body,
        "the origin's body, not the corrupted one"
    );
    assert_eq!(h.origin.hits("/big"), 2);
}

#[tokio::test]
async fn a_large_body_of_unannounced_length_moves_to_disk_once_it_outgrows_memory() {
    let h = Harness::new().await;
    let chunk = |n: u8| {
        let mut out = format!("{:x}\r\n", 64 * 1024).into_bytes();
        out.extend(vec![n; 64 * 1024]);
        out.extend_from_slice(b"\r\n");
        out
    };
    let mut first =
        b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    first.extend((0..16).flat_map(chunk));
    let mut rest: Vec<u8> = (16..32).flat_map(chunk).collect();
    rest.extend_from_slice(b"0\r\n\r\n");
    let (addr, release) = holding_back_origin(first, rest).await;
    let edge = h
        .edge_with(|c| {
            c.origin.url = edge::config::OriginUrl(format!("http://{addr}").parse().unwrap());
            c.cache.memory.max_object_size.0 = 256 << 10;
        })
        .await;
    let request = tokio::spawn({
        let (client, url) = (edge.client.clone(), edge.url("/chunked"));
        async move { client.get(url).send().await.unwrap().bytes().await.unwrap() }
    });
    let bodies = edge.config.cache.disk.path.join("bodies");
    let on_disk = bytes_on_disk_reaching(&bodies, 1 << 20).await;
    assert_eq!(
        on_disk,
        1 << 20,
        "the first MiB is on disk while the rest is held back"
    );
    // A range of it, its length unknown yet, is answered with the whole 200 as it arrives (as
    // nginx does), not held until the whole body is in.
    let ranged = edge
        .client
        .get(edge.url("/chunked"))
        .header("range", "bytes=0-99")
        .send();
    let ranged = tokio::time::timeout(Duration::from_secs(5), ranged)
        .await
        .expect("answered while the body is still arriving")
        .unwrap();
    assert_eq!(ranged.status(), 200);
    assert_eq!(ranged.headers().get("content-range"), None);
    release.send(()).unwrap();
    let expected: Vec<u8> = (0..32u8).flat_map(|n| vec![n; 64 * 1024]).collect();
    assert!(request.await.unwrap() == expected);
    assert!(ranged.bytes().await.unwrap() == expected);
    let hit = edge.get("/chunked").await;
    assert_eq!(hit.param("detail"), Some("disk"), "{}", hit.cache_status());
    assert!(hit.body == expected);
    // Stored, its length is known: its ranges are answered.
    let part = edge.get_with("/chunked", &[("range", "bytes=0-99")]).await;
    assert_eq!(part.status, 206);
    assert!(part.body[..] == expected[..100]);
}

/// The `i`th byte of [`counting_origin`]'s body.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// An origin on loopback that answers one request with a body of `total` bytes in 64 KiB
/// chunks, of unannounced length unless `announced` (then with a `Content-Length`): the first
/// with the head, the rest once the sender it returns is used. It counts the body bytes it has
/// written: what edge has read, plus what its own 64 KiB send buffer and edge's receive buffer
/// hold.
async fn counting_origin(
    total: u64,
    announced: bool,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(64 << 10).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let addr = listener.local_addr().unwrap();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = socket.read(&mut buf).await;
        let framing = if announced {
            format!("content-length: {total}")
        } else {
            "transfer-encoding: chunked".to_owned()
        };
        let head = format!("HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\n{framing}\r\n\r\n");
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut released = Some(released);
        let mut at = 0;
        while at < total {
            let len = (64 << 10).min(total - at);
            let mut chunk = Vec::new();
            if !announced {
                chunk.extend(format!("{len:x}\r\n").into_bytes());
            }
            chunk.extend((at..at + len).map(pattern));
            if !announced {
                chunk.extend_from_slice(b"\r\n");
            }
            // Edge cutting the response off is a test failure, reported by its clients.
            if socket.write_all(&chunk).await.is_err() {
                return;
            }
            at += len;
            counter.store(at, Ordering::SeqCst);
            if let Some(released) = released.take() {
                let _ = released.await;
            }
        }
        if !announced {
            let _ = socket.write_all(b"0\r\n\r\n").await;
        }
        let _ = socket.read(&mut buf).await;
    });
    (addr, release, written)
}

/// [`common::stalled_client`] for a 200.
async fn stalled_client(edge: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    let (stream, head) = common::stalled_client(edge, path, "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream
}

/// Reads a response body in a task, checking each byte against [`pattern`] and counting how many
/// have come; the task returns how many, and whether they were all right.
fn read_checking(
    response: reqwest::Response,
) -> (
    tokio::task::JoinHandle<(u64, bool)>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = progress.clone();
    let task = tokio::spawn(async move {
        let mut response = response;
        let (mut at, mut right) = (0u64, true);
        while let Ok(Some(chunk)) = response.chunk().await {
            right &= chunk.iter().zip(at..).all(|(&b, i)| b == pattern(i));
            at += chunk.len() as u64;
            counter.store(at, std::sync::atomic::Ordering::SeqCst);
        }
        (at, right)
    });
    (task, progress)
}

/// A body of unannounced length that outgrows `cache.max_object_size` is not stored; from then on
/// edge reads it from the origin only a bounded window ahead of its slowest reader, rather than
/// buffering what that reader has not taken (on disk or in memory). A client that reads nothing
/// therefore holds the origin back (and its fellow reader with it) until it leaves.
#[tokio::test]
async fn an_unstorable_body_is_read_from_the_origin_only_as_fast_as_its_readers_take_it() {
    use std::sync::atomic::Ordering;
    const TOTAL: u64 = 64 << 20;
    // 1 MiB max_object_size, edge's 4 MiB window, and the socket and hyper buffers between the
    // origin and edge and between edge and the stalled client (8–12 MiB in all was seen).
    const BOUND: u64 = 32 << 20;
    // Once with the body moved to a disk spool before it outgrew the limit, once in memory.
    for memory_max in [256 << 10, 8 << 20] {
        let h = Harness::new().await;
        let (addr, release, written) = counting_origin(TOTAL, false).await;
        let edge = h
            .edge_with(|c| {
                c.origin.url = edge::config::OriginUrl(format!("http://{addr}").parse().unwrap());
                c.origin.timeout = edge::config::Seconds(Duration::from_secs(120));
                c.cache.max_object_size.0 = 1 << 20;
                c.cache.memory.max_object_size.0 = memory_max;
            })
            .await;
        let stalled = stalled_client(edge.addr, "/huge").await;
        let response = edge.client.get(edge.url("/huge")).send().await.unwrap();
        let status = response.headers()["cache-status"].to_str().unwrap();
        assert!(status.contains("; collapsed"), "{status}");
        let (reading, progress) = read_checking(response);
        release.send(()).unwrap();
        // Until the origin has sent everything (edge read it regardless of its readers) or
        // nothing more has moved for half a second (edge is waiting for the stalled client).
        let mut seen = (0, 0);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = (
                written.load(Ordering::SeqCst),
                progress.load(Ordering::SeqCst),
            );
            if now.0 == TOTAL || now == seen {
                break;
            }
            seen = now;
        }
        let sent = written.load(Ordering::SeqCst);
        assert!(
            sent <= BOUND,
            "memory max {memory_max}: the origin sent {sent} bytes while a client read none"
        );
        let read = progress.load(Ordering::SeqCst);
        assert!(
            read < 16 << 20,
            "memory max {memory_max}: the other client got {read} bytes, past the window"
        );
        // The stalled client leaves: the other reader, no longer held back, gets the rest.
        drop(stalled);
        let (got, right) = tokio::time::timeout(Duration::from_secs(60), reading)
            .await
            .expect("the other client is not held back once the stalled one has left")
            .unwrap();
        assert_eq!(got, TOTAL, "memory max {memory_max}");
        assert!(
            right,
            "memory max {memory_max}: every byte as the origin sent it"
        );
    }
}

/// A body announced larger than `cache.memory.max_object_size` that the disk tier cannot take (no
/// room for it, or `capacity: 0`; a tier that is off, or cannot make a file, is the same) can be
/// stored nowhere. It was read from the origin into memory whole all the same, however slowly its
/// readers took it, and then dropped: six clients reading 40 MB bodies at 20 KB/s from a node
/// whose disk tier had no room held 300 MB. It is passed on as a body that outgrew
/// `cache.max_object_size` is, a bounded window ahead of its slowest reader.
#[tokio::test]
async fn a_body_too_large_for_memory_that_the_disk_cannot_take_is_not_held_in_memory() {
    use std::sync::atomic::Ordering;
    const TOTAL: u64 = 48 << 20;
    // As in the test above: edge's 4 MiB window and the socket and hyper buffers on either side.
    const BOUND: u64 = 32 << 20;
    for disk_capacity in [0, 8 << 20] {
        let h = Harness::new().await;
        let (addr, release, written) = counting_origin(TOTAL, true).await;
        let edge = h
            .edge_with(|c| {
                c.origin.url = edge::config::OriginUrl(format!("http://{addr}").parse().unwrap());
                c.origin.timeout = edge::config::Seconds(Duration::from_secs(120));
                c.cache.memory.max_object_size.0 = 1 << 20;
                c.cache.disk.capacity.0 = disk_capacity;
            })
            .await;
        let stalled = stalled_client(edge.addr, "/huge").await;
        release.send(()).unwrap();
        let mut seen = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = written.load(Ordering::SeqCst);
            if now == TOTAL || now == seen {
                break;
            }
            seen = now;
        }
        let sent = written.load(Ordering::SeqCst);
        assert!(
            sent <= BOUND,
            "disk capacity {disk_capacity}: the origin sent {sent} bytes while the client read none"
        );
        drop(stalled);

        // A client that reads it gets it whole, from the origin each time: it is not stored.
        let body: Vec<u8> = (0..12u64 << 20).map(|i| (i % 253) as u8).collect();
        h.origin.reply(
            "/large",
            Reply::ok(body.clone()).header("cache-control", "max-age=600"),
        );
        let edge = h
            .edge_with(|c| {
                c.cache.memory.max_object_size.0 = 1 << 20;
                c.cache.disk.capacity.0 = disk_capacity;
            })
            .await;
        for _ in 0..2 {
            let response = edge.get("/large").await;
            assert_eq!(response.status, 200);
            assert!(!response.is_hit(), "{}", response.cache_status());
            // And says so: not `stored`, and why.
            assert!(!response.stored(), "{}", response.cache_status());
            let detail = response.param("detail");
            assert_eq!(
                detail,
                Some("disk-unavailable"),
                "{}",
                response.cache_status()
            );
            assert!(
                response.body[..] == body[..],
                "disk capacity {disk_capacity}"
            );
        }
        assert_eq!(h.origin.hits("/large"), 2);
    }
}

/// A reader that takes nothing for `origin.timeout` while an unstorable body waits on it is cut
/// off, so that it cannot hold the origin connection, and the readers beside it, forever.
#[tokio::test]
async fn a_reader_that_stops_reading_an_unstorable_body_is_cut_off_after_the_origin_timeout() {
    use tokio::io::AsyncReadExt;
    const TOTAL: u64 = 32 << 20;
    let h = Harness::new().await;
    let (addr, release, _) = counting_origin(TOTAL, false).await;
    let edge = h
        .edge_with(|c| {
            c.origin.url = edge::config::OriginUrl(format!("http://{addr}").parse().unwrap());
            c.origin.timeout = edge::config::Seconds(Duration::from_secs(1));
            c.cache.max_object_size.0 = 1 << 20;
        })
        .await;
    let mut stalled = stalled_client(edge.addr, "/huge").await;
    let response = edge.client.get(edge.url("/huge")).send().await.unwrap();
    let (reading, _) = read_checking(response);
    release.send(()).unwrap();
    let (got, right) = tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the other client is not held back for longer than origin.timeout")
        .unwrap();
    assert_eq!(got, TOTAL);
    assert!(right, "every byte as the origin sent it");
    // What edge had sent the stalled client before it cut it off, then the end of the connection
    // without the chunked body's last chunk.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the stalled client's connection is closed");
    assert!(
        (rest.len() as u64) < TOTAL && !rest.ends_with(b"0\r\n\r\n"),
        "the stalled client's response was cut off ({} bytes)",
        rest.len()
    );
}

/// A body of unannounced length that outgrows `cache.max_object_size` makes its key a pass for
/// `cache.hit_for_pass`. The pass ended at the next request, whose headers alone looked
/// storable: every other request was a fill again, spooling to disk a body it could not store
/// and answering `stored`.
#[tokio::test]
async fn a_chunked_body_too_large_to_store_stays_a_pass() {
    let h = Harness::new().await;
    let body: Vec<u8> = (0..(3usize << 20)).map(|i| (i % 251) as u8).collect();
    let response = chunked_response("HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\n", &body);
    let (addr, requests) = raw_origin(Box::leak(response.into_boxed_slice())).await;
    let edge = h
        .edge_with(|c| {
            c.origin.url = edge::config::OriginUrl(format!("http://{addr}").parse().unwrap());
            c.cache.memory.max_object_size.0 = 256 << 10;
            c.cache.max_object_size.0 = 1 << 20;
        })
        .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = edge.get("/chunked").await;
        assert!(r.body[..] == body[..], "every client gets the whole body");
        statuses.push(r.cache_status().to_owned());
    }
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 4);
    // The first head went out before the body's length was known.
    for status in &statuses[1..] {
        assert!(!status.contains("stored"), "{statuses:#?}");
    }
}
