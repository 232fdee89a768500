//! Clients that stall. `send_timeout` (as nginx's): a client that takes nothing of a response
//! ready for it is cut off: over HTTP/1.1 (a socket it does not read) its connection is closed,
//! over HTTP/2 (a stream window it keeps shut, even while its library sends PINGs) that stream is
//! reset and its connection's other streams go on. One that reads with pauses shorter than the
//! limit, or slowly but steadily, or that waits on a slow origin, is served in full. Without it
//! such clients (slow read) held their connections for good. And the connection watchdog that
//! keeps it and `client_header_timeout` goes on while the node shuts down.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Harness, Reply, TestEdge, disconnects, holding_back_origin};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const LIMIT: Duration = Duration::from_secs(1);

/// How many connections the metrics say were closed for taking nothing of a response.
async fn slow_reads(edge: &TestEdge) -> f64 {
    disconnects(&edge.metrics().await, "slow_read")
}

/// 16 MiB, more than the socket buffers on both sides and hyper's hold together.
fn big_body() -> Bytes {
    (0..16u32 << 20).map(|i| (i % 251) as u8).collect()
}

/// A connection to `addr` with a small receive buffer, with `request` sent on it.
async fn connect(addr: std::net::SocketAddr, request: &[u8]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    stream
}

/// Reads `stream` until it has `want` bytes or ends (it must not fall silent for 10 s),
/// pausing for `pause` after each 4 MiB until it has paused `pauses` times; the bytes read.
async fn read_all(
    stream: &mut TcpStream,
    want: usize,
    pause: Duration,
    mut pauses: usize,
) -> usize {
    let mut got = 0;
    let mut next_pause = 4 << 20;
    let mut buf = vec![0u8; 64 * 1024];
    while got < want {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("neither closed nor sending after {got} bytes"),
        }
        if pauses > 0 && got >= next_pause {
            tokio::time::sleep(pause).await;
            pauses -= 1;
            next_pause += 4 << 20;
        }
    }
    got
}

#[tokio::test]
async fn an_http1_client_that_reads_nothing_is_disconnected() {
    let h = Harness::new().await;
    let body = big_body();
    h.origin.reply(
        "/big",
        Reply::ok(body.clone()).header("cache-control", "max-age=60"),
    );
    let edge = h.edge_with(|c| c.send_timeout.0 = LIMIT).await;
    let r = edge.get("/big").await;
    assert_eq!(r.body, body);
    let request = b"GET /big HTTP/1.1\r\nHost: edge\r\n\r\n";

    // Reads nothing for three times the limit, then tries: edge had closed the connection, so it
    // gets only what was already in the socket buffers.
    let mut stalled = connect(edge.addr, request).await;
    tokio::time::sleep(3 * LIMIT).await;
    let got = read_all(&mut stalled, usize::MAX, Duration::ZERO, 0).await;
    assert!(got < body.len(), "a stalled client got {got} bytes");
    assert!(got > 0);
    assert_eq!(slow_reads(&edge).await, 1.0);

    // Pauses shorter than the limit are not a stall; the whole response comes.
    let mut pausing = connect(edge.addr, request).await;
    tokio::time::sleep(LIMIT * 6 / 10).await;
    let got = read_all(&mut pausing, body.len(), LIMIT * 6 / 10, 3).await;
    assert!(got >= body.len(), "a client pausing got {got} bytes");
    assert_eq!(h.origin.hits("/big"), 1);
    assert_eq!(slow_reads(&edge).await, 1.0);
    edge.stop().await;
}

#[tokio::test]
async fn an_http2_stream_whose_window_stays_shut_is_reset() {
    let h = Harness::new().await;
    let body = big_body();
    h.origin.reply(
        "/big",
        Reply::ok(body.clone()).header("cache-control", "max-age=60"),
    );
    let edge = h.edge_with(|c| c.send_timeout.0 = LIMIT).await;
    let (addr, url) = (edge.addr, edge.url("/big"));
    let fetch = |pause: Duration| {
        let url = url.clone();
        async move {
            // The connection reads its socket all along; the stream's window opens only as the
            // body below is read.
            let (mut sender, _) = h2(addr, |_| {}).await;
            let request = get(url);
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), 200);
            tokio::time::sleep(pause).await;
            http_body_util::BodyExt::collect(response.into_body())
                .await
                .map(|body| body.to_bytes())
        }
    };
    let stalled = fetch(3 * LIMIT).await;
    assert!(stalled.is_err(), "a stalled stream got its whole body");
    let pausing = fetch(LIMIT * 6 / 10).await.unwrap();
    assert_eq!(pausing, body);
    assert_eq!(slow_reads(&edge).await, 1.0);
    edge.stop().await;
}

/// A response waiting on the origin, not on the client, is not cut off, however long the origin
/// takes within `origin.timeout`.
#[tokio::test]
async fn a_response_waiting_on_a_slow_origin_is_not_cut_off() {
    let h = Harness::new().await;
    let head = "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 10\r\n\r\n";
    let (origin, release) =
        holding_back_origin([head, "01234"].concat().into(), "56789".into()).await;
    let edge = h
        .edge_with(|c| {
            c.send_timeout.0 = LIMIT;
            let url = format!("http://{origin}").parse().unwrap();
            c.origin.url = edge::config::OriginUrl(url);
        })
        .await;
    let client = edge.client.clone();
    let url = edge.url("/a");
    let fetch = tokio::spawn(async move { client.get(url).send().await.unwrap().bytes().await });
    tokio::time::sleep(3 * LIMIT).await;
    release.send(()).unwrap();
    let got = fetch.await.unwrap().unwrap();
    assert_eq!(&got[..], b"0123456789");
}

/// A client that takes every byte slowly but steadily is not cut off, though one block of a body
/// file (64 KiB) takes it longer than the limit: edge hands an HTTP/2 stream 16 KiB at a time,
/// and what counts is that the client takes them.
#[tokio::test]
async fn a_slow_but_steady_http2_client_is_served_in_full() {
    const LIMIT: Duration = Duration::from_millis(300);
    let h = Harness::new().await;
    let body: Bytes = big_body().slice(..256 << 10);
    h.origin.reply(
        "/file",
        Reply::ok(body.clone()).header("cache-control", "max-age=60"),
    );
    let edge = h
        .edge_with(|c| {
            c.send_timeout.0 = LIMIT;
            // Kept on disk only, and sent from its file in blocks of 64 KiB.
            c.cache.memory.max_object_size.0 = 16 << 10;
        })
        .await;
    assert_eq!(edge.get("/file").await.body, body);
    let (mut sender, _) = h2(edge.addr, |b| {
        b.initial_stream_window_size(64 << 10);
    })
    .await;
    let request = get(edge.url("/file"));
    let response = sender.send_request(request).await.unwrap();
    let mut response = response.into_body();
    let mut got = Vec::new();
    // ~100 KB/s: a 64 KiB block takes ~650 ms to go out.
    while let Some(frame) = response.frame().await {
        let data = frame.expect("cut off").into_data().unwrap();
        tokio::time::sleep(Duration::from_millis(160) * (data.len() as u32).div_ceil(16 << 10))
            .await;
        got.extend_from_slice(&data);
    }
    assert_eq!(got.len(), body.len());
    assert!(got == body[..]);
    edge.stop().await;
}

/// An edge with a `send_timeout` of `LIMIT` whose `/disk`, 4 MiB, is stored already and kept on
/// disk only: sent from its file in blocks of 64 KiB as the client takes them.
async fn edge_with_disk_object(h: &Harness) -> TestEdge {
    let body = big_body().slice(..4 << 20);
    h.origin.reply(
        "/disk",
        Reply::ok(body.clone()).header("cache-control", "max-age=60"),
    );
    let edge = h
        .edge_with(|c| {
            c.send_timeout.0 = LIMIT;
            c.cache.memory.max_object_size.0 = 16 << 10;
        })
        .await;
    assert_eq!(edge.get("/disk").await.body, body);
    edge
}

/// An HTTP/2 (prior knowledge) connection to `addr`, set up by `configure`, driven by a task of
/// its own.
async fn h2(
    addr: std::net::SocketAddr,
    configure: impl FnOnce(&mut hyper::client::conn::http2::Builder<TokioExecutor>),
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    configure(&mut builder);
    let (sender, connection) = builder.handshake(TokioIo::new(tcp)).await.unwrap();
    (sender, tokio::spawn(connection))
}

fn get(url: String) -> http::Request<http_body_util::Empty<Bytes>> {
    http::Request::get(url)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap()
}

/// A memory hit (handed over whole) read steadily over HTTP/2 through a small window, with a
/// short `client_header_timeout`: it was cut off, its connection taken for idle once the body had
/// been handed to hyper, though the client was still taking it. Over HTTP/1.1 too.
#[tokio::test]
async fn a_memory_hit_read_steadily_is_served_in_full() {
    let h = Harness::new().await;
    let body = big_body().slice(..1 << 20);
    h.origin.reply(
        "/mem",
        Reply::ok(body.clone()).header("cache-control", "max-age=60"),
    );
    let edge = h.edge_with(|c| c.client_header_timeout.0 = LIMIT).await;
    assert_eq!(edge.get("/mem").await.body, body);

    let (mut sender, _) = h2(edge.addr, |b| {
        b.initial_stream_window_size(64 << 10)
            .initial_connection_window_size(64 << 10);
    })
    .await;
    let mut response = sender
        .send_request(get(edge.url("/mem")))
        .await
        .unwrap()
        .into_body();
    let mut got = Vec::new();
    while let Some(frame) = response.frame().await {
        let data = frame.expect("cut off").into_data().unwrap();
        got.extend_from_slice(&data);
        // ~200 KB/s: 5 s in all.
        tokio::time::sleep(Duration::from_micros(5 * data.len() as u64)).await;
    }
    assert!(got == body[..], "{} bytes", got.len());

    let mut stream = connect(edge.addr, b"GET /mem HTTP/1.1\r\nHost: edge\r\n\r\n").await;
    let mut got = 0;
    let mut buf = vec![0u8; 16 << 10];
    while got < body.len() {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "cut off after {got}");
        got += n;
        tokio::time::sleep(Duration::from_micros(5 * n as u64)).await;
    }
    edge.stop().await;
}

/// A stream whose window stays shut is reset though the client's HTTP/2 library sends PINGs (as
/// gRPC clients do), which edge answers: what counts is the response's bytes.
#[tokio::test]
async fn pings_do_not_keep_a_stalled_http2_stream_open() {
    let h = Harness::new().await;
    let edge = edge_with_disk_object(&h).await;
    let (mut sender, _) = h2(edge.addr, |b| {
        b.timer(TokioTimer::new())
            .keep_alive_interval(LIMIT * 3 / 10);
    })
    .await;
    let response = sender.send_request(get(edge.url("/disk"))).await.unwrap();
    tokio::time::sleep(5 * LIMIT).await;
    let collected = response.into_body().collect().await;
    assert!(
        collected.is_err(),
        "a stream stalled 5 × send_timeout was served in full"
    );
    edge.stop().await;
}

/// One stream keeps its window shut while another waits on a slow origin: the connection is not
/// closed while the second still has an answer coming, which it gets.
#[tokio::test]
async fn a_stalled_http2_stream_does_not_take_down_one_waiting_on_the_origin() {
    let h = Harness::new().await;
    h.origin.reply(
        "/slow",
        Reply::ok("slow")
            .header("cache-control", "no-store")
            .delay(3 * LIMIT),
    );
    let edge = edge_with_disk_object(&h).await;
    let (mut sender, _) = h2(edge.addr, |_| {}).await;
    let stalled = sender.send_request(get(edge.url("/disk"))).await.unwrap();
    let slow = sender
        .send_request(get(edge.url("/slow")))
        .await
        .expect("the stream waiting on the origin was lost");
    let slow = slow.into_body().collect().await.expect("its body was lost");
    assert_eq!(&slow.to_bytes()[..], b"slow");
    drop(stalled);
    edge.stop().await;
}

/// A client halfway through a request head when the node stops is still disconnected after
/// `client_header_timeout`, not kept until `shutdown_timeout`: the watchdog goes on while the
/// node waits for its connections to close.
#[tokio::test]
async fn a_stalled_client_does_not_hold_up_shutdown() {
    let h = Harness::new().await;
    let edge = h
        .edge_with(|c| {
            c.client_header_timeout.0 = LIMIT;
            c.shutdown_timeout.0 = 8 * LIMIT;
        })
        .await;
    let mut slow = TcpStream::connect(edge.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: edge\r\n")
        .await
        .unwrap();
    tokio::time::sleep(LIMIT * 3 / 10).await;
    let started = std::time::Instant::now();
    edge.stop().await;
    let took = started.elapsed();
    assert!(took < 3 * LIMIT, "stopping took {took:?}");
}

/// A response that fits in one piece (most do), to a client whose stream window stays shut: it
/// was never seen as waiting on the client, so the connection stayed open for good.
#[tokio::test]
async fn a_small_response_to_a_shut_http2_window_is_a_slow_read() {
    let h = Harness::new().await;
    h.origin.reply(
        "/small",
        Reply::ok(vec![7u8; 1000]).header("cache-control", "max-age=60"),
    );
    let edge = h.edge_with(|c| c.send_timeout.0 = LIMIT).await;
    assert_eq!(edge.get("/small").await.body.len(), 1000);
    let (mut sender, _) = h2(edge.addr, |b| {
        b.initial_stream_window_size(0);
    })
    .await;
    let response = sender.send_request(get(edge.url("/small"))).await.unwrap();
    assert_eq!(response.status(), 200);
    let collected = tokio::time::timeout(5 * LIMIT, response.into_body().collect()).await;
    assert!(
        matches!(collected, Ok(Err(_))),
        "the connection was not closed"
    );
    assert_eq!(slow_reads(&edge).await, 1.0);
    edge.stop().await;
}

/// A stream whose window stays shut is reset on its own: the client's other requests on that
/// connection, made all along, are served, and the connection stays open. Any traffic on the
/// connection kept such a stream open for good.
#[tokio::test]
async fn a_stalled_http2_stream_is_reset_alone() {
    let h = Harness::new().await;
    h.origin.reply(
        "/small",
        Reply::ok(vec![1u8; 20 << 10]).header("cache-control", "max-age=60"),
    );
    let edge = edge_with_disk_object(&h).await;
    let (mut sender, connection) = h2(edge.addr, |_| {}).await;
    let stalled = sender.send_request(get(edge.url("/disk"))).await.unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < 4 * LIMIT {
        let small = sender.send_request(get(edge.url("/small"))).await.unwrap();
        let small = small.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(small.len(), 20 << 10);
        tokio::time::sleep(LIMIT * 3 / 10).await;
    }
    assert_eq!(slow_reads(&edge).await, 1.0);
    let collected = tokio::time::timeout(LIMIT, stalled.into_body().collect()).await;
    assert!(
        matches!(collected, Ok(Err(_))),
        "the stalled stream was not reset"
    );
    assert!(!connection.is_finished());
    let after = sender.send_request(get(edge.url("/small"))).await.unwrap();
    assert_eq!(after.status(), 200);
    edge.stop().await;
}

/// An HTTP/2 client that resets its stream before the answer (a browser navigating away) is
/// counted as `abandoned`, and its connection's other streams go on; the fill it started still
/// stores the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_reset_before_its_answer_is_counted_as_abandoned() {
    let h = Harness::new().await;
    h.origin.reply(
        "/slow",
        Reply::ok("late")
            .header("cache-control", "max-age=600")
            .delay(Duration::from_millis(400)),
    );
    h.origin.reply("/now", Reply::ok("now"));
    let edge = h.edge().await;
    let client = common::h2_client();
    let slow = tokio::spawn(client.get(edge.url("/slow")).send());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while h.origin.hits("/slow") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never reached the origin"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Given up on before its answer (the origin takes 400 ms): the stream is reset.
    slow.abort();
    assert!(slow.await.unwrap_err().is_cancelled());
    let now = client.get(edge.url("/now")).send().await.unwrap();
    assert_eq!(now.version(), http::Version::HTTP_2);
    assert_eq!(now.text().await.unwrap(), "now");
    let abandoned = "edge_requests_total{cache_status=\"abandoned\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while common::sample(&edge.metrics().await, abandoned) < 1.0 {
        assert!(std::time::Instant::now() < deadline, "not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The fill runs on and stores: a later request is a hit (one that comes before the
    // response is stored joins the fill, and is not).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let hit = loop {
        let response = edge.get("/slow").await;
        if response.is_hit() || std::time::Instant::now() > deadline {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.text(), "late");
    assert_eq!(h.origin.hits("/slow"), 1);
}
