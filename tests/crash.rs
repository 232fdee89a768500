//! Crash safety: `kill -9` during a fill loses at most recent writes and never leads to a wrong
//! body after restart.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Harness, Reply, Running, free_port};

fn start(config: &std::path::Path) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Running(child)
}

async fn wait_until_listening(client: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(url).send().await.is_err() {
        assert!(Instant::now() < deadline, "edge did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A config for edge in front of `origin_url`, with its disk tier under `dir`: its path, and the
/// main and admin listeners' ports.
fn config_in(dir: &std::path::Path, origin_url: &str) -> (std::path::PathBuf, u16, u16) {
    let (listen, admin) = (free_port(), free_port());
    let config = dir.join("edge.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{listen}\norigin:\n  url: {origin_url}\ncache:\n  disk:\n    path: {}\nadmin:\n  listen: 127.0.0.1:{admin}\n",
            dir.join("store").display()
        ),
    )
    .unwrap();
    (config, listen, admin)
}

fn kill_9(edge: Running) {
    let status = Command::new("kill")
        .args(["-KILL", &edge.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    drop(edge);
}

fn body(i: usize) -> Vec<u8> {
    let len = if i % 4 == 0 { 60_000 + i } else { 3_000 + i };
    (0..len).map(|b| (b * 7 + i) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_fill_never_leads_to_a_wrong_body() {
    let h = Harness::new().await;
    const OBJECTS: usize = 300;
    for i in 0..OBJECTS {
        h.origin.reply(
            &format!("/c/{i}"),
            Reply::ok(body(i)).header("cache-control", "max-age=3600"),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (config, listen, admin) = config_in(dir.path(), &h.origin.url());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://127.0.0.1:{listen}");

    let edge = start(&config);
    wait_until_listening(&client, &format!("http://127.0.0.1:{admin}/healthz")).await;
    // Fill from 8 clients at once, and kill edge while that is going on.
    let filling = (0..8).map(|worker| {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            for i in (worker..OBJECTS).step_by(8) {
                if client.get(format!("{base}/c/{i}")).send().await.is_err() {
                    return;
                }
            }
        })
    });
    let filling: Vec<_> = filling.collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.origin.received().len() < OBJECTS / 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    kill_9(edge);
    for task in filling {
        let _ = task.await;
    }
    let fetched_before = h.origin.received().len();
    assert!(
        fetched_before < OBJECTS,
        "the kill came before the fill was done"
    );

    let _edge = start(&config);
    wait_until_listening(&client, &format!("http://127.0.0.1:{admin}/healthz")).await;
    let mut from_cache = 0;
    for i in 0..OBJECTS {
        let response = client.get(format!("{base}/c/{i}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "/c/{i}");
        let cache_status = response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .to_owned();
        if cache_status.contains("hit") {
            from_cache += 1;
        }
        let received = response.bytes().await.unwrap();
        assert_eq!(&received[..], &body(i)[..], "/c/{i} ({cache_status})");
    }
    // Most of what was stored before the kill survived it.
    assert!(
        from_cache > 0,
        "nothing survived the kill (origin had served {fetched_before})"
    );
}

/// RFC 9111 §4.4: a 2xx to an unsafe method invalidates what is stored for its URI, and that
/// removal is flushed to disk before the response goes on, as a purge's is. It was left to
/// sled's next flush (up to 500 ms), so a `kill -9` just after brought the old responses back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_by_an_unsafe_method_survives_kill_9() {
    let h = Harness::new().await;
    const KEYS: usize = 5;
    let cached = |body: String| Reply::ok(body).header("cache-control", "max-age=3600");
    for i in 0..KEYS {
        h.origin
            .reply(&format!("/p{i}"), cached(format!("old {i}")));
    }
    let dir = tempfile::tempdir().unwrap();
    let (config, listen, admin) = config_in(dir.path(), &h.origin.url());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let (base, health) = (
        format!("http://127.0.0.1:{listen}"),
        format!("http://127.0.0.1:{admin}/healthz"),
    );

    let edge = start(&config);
    wait_until_listening(&client, &health).await;
    for i in 0..KEYS {
        client.get(format!("{base}/p{i}")).send().await.unwrap();
    }
    // Long enough for sled to have written the stores out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..KEYS {
        let response = client
            .post(format!("{base}/p{i}"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        h.origin
            .reply(&format!("/p{i}"), cached(format!("new {i}")));
    }
    kill_9(edge);

    let _edge = start(&config);
    wait_until_listening(&client, &health).await;
    for i in 0..KEYS {
        let response = client.get(format!("{base}/p{i}")).send().await.unwrap();
        let cache_status = response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            response.text().await.unwrap(),
            format!("new {i}"),
            "/p{i} was invalidated by a POST before the kill: {cache_status}"
        );
    }
}
