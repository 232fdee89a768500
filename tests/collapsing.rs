//! Request collapsing: concurrent misses for one key make one origin request, streamed to every
//! waiter; a key that turned out uncacheable goes to the origin in parallel (hit-for-pass);
//! waiting is bounded.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Harness, Reply, holding_back_origin};
use futures_util::future::join_all;

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_origin_request() {
    let h = Harness::new().await;
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    h.origin.reply(
        "/hot",
        Reply::ok(body.clone())
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(300)),
    );
    let edge = h.edge().await;
    let responses = join_all((0..100).map(|_| edge.get("/hot"))).await;
    assert_eq!(h.origin.hits("/hot"), 1);
    let mut collapsed = 0;
    for response in &responses {
        assert_eq!(response.status, 200);
        assert_eq!(
            response.body, body,
            "every body is byte-identical to the origin's"
        );
        assert_eq!(
            response.param("fwd"),
            Some("uri-miss"),
            "{}",
            response.cache_status()
        );
        assert!(response.stored(), "{}", response.cache_status());
        if response.cache_status().contains("; collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(collapsed, 99, "all but the leader say they were collapsed");
    assert!(edge.get("/hot").await.is_hit());
}

#[tokio::test]
async fn waiters_receive_the_body_as_it_arrives() {
    let h = Harness::new().await;
    // A raw origin that sends the head and half the body, then waits before the rest.
    let head = "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 10\r\n\r\nfirst";
    let (addr, release) = holding_back_origin(head.into(), b"-last".to_vec()).await;
    let edge = h
        .edge_with(|c| {
            c.origin.url = edge::config::OriginUrl(format!("http://{addr}").parse().unwrap())
        })
        .await;
    let leader = edge.client.get(edge.url("/slow")).send().await.unwrap();
    let waiter = edge.client.get(edge.url("/slow")).send().await.unwrap();
    assert!(
        waiter.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("collapsed")
    );
    let mut leader_body = leader.bytes_stream();
    let mut waiter_body = waiter.bytes_stream();
    use futures_util::StreamExt;
    // Both get the first half while the origin still holds back the rest.
    let first = tokio::time::timeout(Duration::from_secs(2), waiter_body.next()).await;
    assert_eq!(
        &first
            .expect("the waiter streams before the body is whole")
            .unwrap()
            .unwrap()[..],
        b"first"
    );
    let first = tokio::time::timeout(Duration::from_secs(2), leader_body.next()).await;
    assert_eq!(&first.unwrap().unwrap().unwrap()[..], b"first");
    release.send(()).unwrap();
    assert_eq!(&waiter_body.next().await.unwrap().unwrap()[..], b"-last");
    assert_eq!(&leader_body.next().await.unwrap().unwrap()[..], b"-last");
}

#[tokio::test]
async fn an_uncacheable_key_goes_to_the_origin_in_parallel() {
    let h = Harness::new().await;
    // Long enough that a debug build serving 50 requests on a loaded CI machine (1.3 s seen
    // against a 400 ms origin) stays under three round trips; fifty in a row take 50.
    let delay = Duration::from_secs(1);
    h.origin.reply(
        "/private",
        Reply::ok("mine")
            .header("cache-control", "private")
            .delay(delay),
    );
    let edge = h.edge().await;
    // The first answer shows the key cannot be stored; edge remembers that (hit-for-pass).
    let first = edge.get("/private").await;
    assert_eq!(first.param("detail"), Some("private"));

    let started = Instant::now();
    let responses = join_all((0..50).map(|_| edge.get("/private"))).await;
    let elapsed = started.elapsed();
    assert_eq!(h.origin.hits("/private"), 51);
    for response in &responses {
        assert_eq!(response.text(), "mine");
        assert!(!response.cache_status().contains("collapsed"));
    }
    // One origin round trip, not fifty in a row.
    assert!(
        elapsed < delay * 3,
        "50 requests took {elapsed:?} against a {delay:?} origin"
    );
}

#[tokio::test]
async fn waiters_of_an_uncacheable_response_fetch_on_their_own() {
    let h = Harness::new().await;
    h.origin.reply(
        "/cookie",
        Reply::ok("for one client")
            .header("set-cookie", "id=1")
            .delay(Duration::from_millis(200)),
    );
    let edge = h.edge().await;
    let responses = join_all((0..5).map(|_| edge.get("/cookie"))).await;
    // A response with Set-Cookie is never handed to another client: each got its own.
    assert_eq!(h.origin.hits("/cookie"), 5);
    for response in &responses {
        assert_eq!(response.header("set-cookie"), Some("id=1"));
        assert!(!response.cache_status().contains("collapsed"));
    }
}

/// A response that must be validated before each use (`no-cache`, `max-age=0`, or stored only
/// for its validator) answers the request it was fetched for, not the others waiting on it
/// (RFC 9111 §4, §5.2.2.4): the origin answered the leader's cookies, and may answer another
/// client's with another page. Each waiter goes to the origin with its own request.
#[tokio::test]
async fn waiters_do_not_share_a_response_that_must_be_validated_first() {
    for (path, cache_control) in [
        ("/no-cache", Some("no-cache")),
        ("/max-age-0", Some("max-age=0")),
        ("/validator-only", None),
    ] {
        let h = Harness::new().await;
        let mut reply = Reply::ok("your account")
            .header("etag", "\"v1\"")
            .delay(Duration::from_millis(500));
        if let Some(cache_control) = cache_control {
            reply = reply.header("cache-control", cache_control);
        }
        h.origin.reply(path, reply);
        let edge = h.edge().await;
        let leader = edge.get_with(path, &[("cookie", "session=first")]);
        let waiter = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            edge.get_with(path, &[("cookie", "session=second")]).await
        };
        let (leader, waiter) = tokio::join!(leader, waiter);
        assert_eq!(leader.status, 200, "{path}");
        assert_eq!(waiter.status, 200, "{path}");
        assert!(
            !waiter.cache_status().contains("collapsed"),
            "{path}: {}",
            waiter.cache_status()
        );
        assert_eq!(
            h.origin.hits(path),
            2,
            "{path}: each client asked the origin"
        );
        let cookies: Vec<_> = (h.origin.received().iter())
            .filter_map(|r| {
                r.headers
                    .get("cookie")
                    .map(|v| v.to_str().unwrap().to_owned())
            })
            .collect();
        assert!(
            cookies.contains(&"session=second".to_owned()),
            "{path}: {cookies:?}"
        );
    }
}

#[tokio::test]
async fn a_waiter_whose_leader_is_too_slow_fetches_on_its_own() {
    let h = Harness::new().await;
    h.origin.reply(
        "/slow",
        Reply::ok("late")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_secs(3)),
    );
    let edge = h
        .edge_with(|c| c.cache.collapse_wait.0 = Duration::from_millis(200))
        .await;
    let leader = edge.get("/slow");
    let waiter = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        edge.get("/slow").await
    };
    let (leader, waiter) = tokio::join!(leader, waiter);
    assert_eq!(leader.text(), "late");
    assert_eq!(waiter.text(), "late");
    assert!(
        !waiter.cache_status().contains("collapsed"),
        "{}",
        waiter.cache_status()
    );
    assert_eq!(h.origin.hits("/slow"), 2);
}

#[tokio::test]
async fn waiters_share_a_fill_that_timed_out_instead_of_asking_again() {
    let h = Harness::new().await;
    h.origin.reply(
        "/stuck",
        Reply::ok("too late")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_secs(6)),
    );
    // Long enough for all 50 to join the fill on a loaded machine.
    let edge = h
        .edge_with(|c| c.origin.timeout = edge::config::Seconds(Duration::from_secs(2)))
        .await;
    let responses = join_all((0..50).map(|_| edge.get("/stuck"))).await;
    assert_eq!(h.origin.hits("/stuck"), 1, "one origin request for all 50");
    let mut collapsed = 0;
    for response in &responses {
        assert_eq!(response.status, 504, "{}", response.cache_status());
        assert_eq!(response.text(), "edge: origin timed out\n");
        assert_eq!(response.param("detail"), Some("origin-timeout"));
        assert!(!response.stored(), "{}", response.cache_status());
        if response.cache_status().contains("; collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(collapsed, 49, "all but the leader say they were collapsed");
    // The failure is not remembered: the next request asks the origin.
    h.origin.reply(
        "/stuck",
        Reply::ok("back").header("cache-control", "max-age=60"),
    );
    let next = edge.get("/stuck").await;
    assert_eq!(next.text(), "back");
    assert_eq!(h.origin.hits("/stuck"), 2);
}

/// An origin that takes 1.5 s over each request, then closes the connection without answering
/// the first `failing` requests it gets, and answers the others with a stored-for-60 s `hello`.
/// Returns its address and the count of requests it got.
async fn origin_hanging_up_on_the_first(failing: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while socket.read(&mut buf).await.unwrap_or(0) > 0 {
                    let before = counted.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    if before < failing {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nhello";
                    if socket.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, requests)
}

#[tokio::test]
async fn waiters_of_a_fill_the_origin_hung_up_on_ask_again_together_once() {
    // An origin that waits, and closes the connection without answering, on every request.
    let (addr, requests) = origin_hanging_up_on_the_first(usize::MAX).await;
    let h = Harness::new().await;
    let edge = h.edge_before(addr).await;
    let responses = join_all((0..50).map(|_| edge.get("/gone"))).await;
    // The first fill's failure may have been its leader's alone: the waiters ask again in one
    // fill of their own, and share its failure.
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "two origin requests for all 50"
    );
    for response in &responses {
        assert_eq!(response.status, 502, "{}", response.cache_status());
        assert_eq!(response.text(), "edge: origin unreachable\n");
        assert_eq!(response.param("detail"), Some("origin-unreachable"));
    }
    let collapsed = responses
        .iter()
        .filter(|r| r.cache_status().contains("; collapsed"))
        .count();
    assert_eq!(
        collapsed, 48,
        "all but the two leaders say they were collapsed"
    );
}

/// The fill's failure may be its leader's alone (here the origin hangs up on the first request
/// only): the waiters' one fill of their own gets the answer, and they share it.
#[tokio::test]
async fn waiters_of_a_fill_that_failed_once_get_the_answer_of_their_own_fill() {
    let (addr, requests) = origin_hanging_up_on_the_first(1).await;
    let h = Harness::new().await;
    let edge = h.edge_before(addr).await;
    let responses = join_all((0..50).map(|_| edge.get("/flaky"))).await;
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    let failed: Vec<_> = responses.iter().filter(|r| r.status == 502).collect();
    assert_eq!(
        failed.len(),
        1,
        "only the first fill's leader gets its failure"
    );
    let answered: Vec<_> = responses.iter().filter(|r| r.status == 200).collect();
    assert_eq!(answered.len(), 49);
    for response in answered {
        assert_eq!(response.text(), "hello");
        assert!(response.stored(), "{}", response.cache_status());
    }
    let hit = edge.get("/flaky").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_client_that_leaves_does_not_cut_the_fill_short() {
    let h = Harness::new().await;
    let body = vec![7u8; 300_000];
    h.origin.reply(
        "/a",
        Reply::ok(body.clone())
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(300)),
    );
    let edge = h.edge().await;
    let request = edge.client.get(edge.url("/a")).send();
    let client = tokio::spawn(request);
    // The client leaves once its request has reached the origin, before the answer.
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.origin.hits("/a") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.origin.hits("/a"), 1);
    client.abort();
    assert!(client.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let hit = edge.get("/a").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.body, body);
    assert_eq!(h.origin.hits("/a"), 1);
}

#[tokio::test]
async fn a_pass_is_forwarded_as_asked_and_says_why_it_is_not_stored() {
    let h = Harness::new().await;
    h.origin.reply(
        "/np",
        Reply::ok("v1 body")
            .header("cache-control", "no-store")
            .header("etag", "\"v1\""),
    );
    let edge = h.edge().await;
    let first = edge.get("/np").await;
    assert_eq!(first.param("detail"), Some("no-store"));
    // Hit-for-pass: straight to the origin, and still saying why it is not stored.
    let second = edge.get("/np").await;
    assert_eq!(second.text(), "v1 body");
    assert_eq!(second.fwd(), Some("uri-miss"), "{}", second.cache_status());
    assert_eq!(second.param("detail"), Some("no-store"));
    assert!(!second.stored());
    assert_eq!(h.origin.hits("/np"), 2);
    // The client's own condition goes to the origin, which answers it.
    h.origin.reply(
        "/np",
        Reply::ok("")
            .status(304)
            .header("cache-control", "no-store")
            .header("etag", "\"v1\""),
    );
    let conditional = edge.get_with("/np", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(conditional.status, 304);
    let asked = h.origin.last("/np").unwrap();
    assert_eq!(
        asked.headers.get("if-none-match").unwrap().as_bytes(),
        b"\"v1\""
    );
    assert_eq!(h.origin.hits("/np"), 3);
}

#[tokio::test]
async fn a_pass_whose_response_becomes_storable_is_stored_on_the_next_request() {
    let h = Harness::new().await;
    h.origin.reply(
        "/flip",
        Reply::ok("private").header("cache-control", "private"),
    );
    let edge = h.edge().await;
    assert_eq!(edge.get("/flip").await.param("detail"), Some("private"));
    h.origin.reply(
        "/flip",
        Reply::ok("public now").header("cache-control", "max-age=60"),
    );
    // Still a pass: forwarded, not stored, and no reason given since there is none.
    let passed = edge.get("/flip").await;
    assert_eq!(passed.text(), "public now");
    assert!(!passed.stored(), "{}", passed.cache_status());
    assert_eq!(passed.param("detail"), None, "{}", passed.cache_status());
    // The pass ended with it: the next request fills and stores, the one after is a hit.
    let filled = edge.get("/flip").await;
    assert!(filled.stored(), "{}", filled.cache_status());
    let hit = edge.get("/flip").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.text(), "public now");
    assert_eq!(h.origin.hits("/flip"), 3);
}

// A pass whose key the memory tier holds nothing of goes to the origin without a lookup; these
// two check what that shortcut must not skip.

#[tokio::test]
async fn a_pass_for_one_variant_leaves_the_stored_variants_served_from_the_cache() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply(
        "/page",
        Reply::ok("for everyone")
            .header("cache-control", "max-age=600")
            .header("vary", "Accept-Language"),
    );
    let en = [("accept-language", "en")];
    assert!(edge.get_with("/page", &en).await.stored());
    h.origin.reply(
        "/page",
        Reply::ok("for one reader")
            .header("cache-control", "private")
            .header("vary", "Accept-Language"),
    );
    let de = [("accept-language", "de")];
    assert_eq!(
        edge.get_with("/page", &de).await.param("detail"),
        Some("private")
    );
    // The key is a pass now, but the memory tier holds a variant of it: that one is still a hit.
    let hit = edge.get_with("/page", &en).await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.text(), "for everyone");
    // The other variant is passed: forwarded at once, as a miss of its Vary values.
    let passed = edge.get_with("/page", &de).await;
    assert_eq!(passed.text(), "for one reader");
    assert_eq!(passed.fwd(), Some("vary-miss"), "{}", passed.cache_status());
    assert_eq!(passed.param("detail"), Some("private"));
    assert_eq!(h.origin.hits("/page"), 3);
}

#[tokio::test]
async fn only_if_cached_on_a_pass_is_answered_without_the_origin() {
    let h = Harness::new().await;
    h.origin.reply(
        "/np",
        Reply::ok("fresh").header("cache-control", "no-store"),
    );
    let edge = h.edge().await;
    assert_eq!(edge.get("/np").await.param("detail"), Some("no-store"));
    let passed = edge.get("/np").await;
    assert_eq!(passed.fwd(), Some("uri-miss"), "{}", passed.cache_status());
    assert_eq!(passed.text(), "fresh");
    let cached_only = edge
        .get_with("/np", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(cached_only.status, 504);
    assert_eq!(cached_only.cache_status(), "edge; detail=only-if-cached");
    assert_eq!(h.origin.hits("/np"), 2);
}

/// An origin whose first answer is `first` (head and the start of the body, raw HTTP/1.1), the
/// rest held back until the sender it returns is used or dropped; every later request is
/// answered with `later` whole. Counts the requests.
async fn slow_first_origin(
    first: &'static str,
    rest: &'static str,
    later: &'static str,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let mut released = Some(released);
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let released = released.take();
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while socket.read(&mut buf).await.is_ok_and(|n| n > 0) {
                    let n = counted.fetch_add(1, Ordering::SeqCst);
                    match (n, &released) {
                        (0, Some(_)) => {
                            socket.write_all(first.as_bytes()).await.unwrap();
                            let _ = released.unwrap().await;
                            socket.write_all(rest.as_bytes()).await.unwrap();
                            return;
                        }
                        _ => socket.write_all(later.as_bytes()).await.unwrap(),
                    }
                }
            });
        }
    });
    (addr, release, requests)
}

/// A request that joins a fill whose response head has already arrived gets that response only
/// if it is fresh enough (RFC 9111 §4), with an `Age` saying how old it is; one that comes when
/// it is past its lifetime goes to the origin.
#[tokio::test]
async fn a_request_joining_a_response_under_way_gets_it_only_while_fresh() {
    let h = Harness::new().await;
    let (addr, release, requests) = slow_first_origin(
        "HTTP/1.1 200 OK\r\ncache-control: max-age=2\r\ncontent-length: 10\r\n\r\nfirst",
        "-last",
        "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 5\r\n\r\nfresh",
    )
    .await;
    let edge = h.edge_before(addr).await;
    let leader = edge.client.get(edge.url("/slow")).send().await.unwrap();
    assert_eq!(requests.load(Ordering::SeqCst), 1);

    h.clock.advance(Duration::from_secs(1));
    let waiter = edge.client.get(edge.url("/slow")).send().await.unwrap();
    let status = waiter.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(status.contains("; collapsed; ttl=1"), "{status}");
    assert_eq!(waiter.headers()["age"], "1");
    assert_eq!(requests.load(Ordering::SeqCst), 1);

    // Three seconds old is past the response's two.
    h.clock.advance(Duration::from_secs(2));
    let late = edge.get("/slow").await;
    assert_eq!(late.text(), "fresh");
    // Why it went on: the response it could have had was stale.
    let status = late.cache_status();
    assert!(
        status.contains("fwd=stale;") && !status.contains("collapsed"),
        "{status}"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 2);

    release.send(()).unwrap();
    assert_eq!(&leader.bytes().await.unwrap()[..], b"first-last");
    assert_eq!(&waiter.bytes().await.unwrap()[..], b"first-last");
}

/// A request whose own `max-age` or `no-cache` (RFC 9111 §5.2.1) the response under way does not
/// meet goes to the origin rather than joining it.
#[tokio::test]
async fn a_request_joining_a_response_under_way_has_its_own_directives_honoured() {
    for directive in ["max-age=0", "no-cache"] {
        let h = Harness::new().await;
        let (addr, release, requests) = slow_first_origin(
            "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 10\r\n\r\nfirst",
            "-last",
            "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 5\r\n\r\nfresh",
        )
        .await;
        let edge = h.edge_before(addr).await;
        let leader = edge.client.get(edge.url("/slow")).send().await.unwrap();
        h.clock.advance(Duration::from_secs(1));
        let strict = edge
            .get_with("/slow", &[("cache-control", directive)])
            .await;
        assert_eq!(strict.text(), "fresh", "{directive}");
        // Why it went on: the request ruled out the response it could have had.
        let status = strict.cache_status();
        assert!(
            status.contains("fwd=request;") && !status.contains("collapsed"),
            "{status}"
        );
        assert_eq!(requests.load(Ordering::SeqCst), 2, "{directive}");
        release.send(()).unwrap();
        assert_eq!(&leader.bytes().await.unwrap()[..], b"first-last");
    }
}

/// The origin answers the fill's request with an error (here 503): the waiters do not each ask
/// at once an origin that is failing. They ask again together, in one fill, and share what it
/// brings: a second error as edge's own answer with the origin's status, or a good response.
#[tokio::test]
async fn waiters_of_a_fill_answered_with_an_error_ask_again_together_once() {
    let h = Harness::new().await;
    let failing = || {
        Reply::ok("busy")
            .status(503)
            .header("retry-after", "5")
            .delay(Duration::from_millis(300))
    };
    h.origin.reply("/hot", failing());
    let edge = Arc::new(h.edge().await);
    let many = |path: &'static str| {
        let requests = (0..10).map(|_| {
            let edge = edge.clone();
            tokio::spawn(async move { edge.get(path).await })
        });
        join_all(requests)
    };
    let answers = many("/hot").await;
    assert_eq!(h.origin.hits("/hot"), 2, "the fill's request, and one more");
    let mut shared = 0;
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.status, 503);
        if answer.param("detail") == Some("origin-error") {
            assert!(
                answer.cache_status().contains("collapsed"),
                "{}",
                answer.cache_status()
            );
            assert_eq!(answer.param("fwd-status"), Some("503"));
            assert_eq!(answer.header("retry-after"), Some("5"), "the origin's word");
            shared += 1;
        } else {
            assert_eq!(answer.text(), "busy", "the origin's own answer");
        }
    }
    assert_eq!(shared, 8, "all but the two that asked");
    let metrics = edge.metrics().await;
    assert_eq!(
        common::requests(&metrics, "error"),
        8.0,
        "edge's own answers"
    );

    // The origin recovers while the first fill is out: the rest share the second one's answer.
    h.origin.reply("/warm", failing());
    let answers = tokio::spawn(many("/warm"));
    while h.origin.hits("/warm") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.origin.reply(
        "/warm",
        Reply::ok("warm").header("cache-control", "max-age=60"),
    );
    let statuses: Vec<u16> = (answers.await.unwrap().into_iter())
        .map(|answer| answer.unwrap().status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        9,
        "{statuses:?}"
    );
    assert_eq!(h.origin.hits("/warm"), 2);
}
