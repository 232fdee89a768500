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
    let (listen, admin) = (free_port(), free_port());
    let config = dir.path().join("edge.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{listen}\norigin:\n  url: {}\ncache:\n  disk:\n    path: {}\nadmin:\n  listen: 127.0.0.1:{admin}\n",
            h.origin.url(),
            dir.path().join("store").display()
        ),
    )
    .unwrap();
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
    let status = Command::new("kill")
        .args(["-KILL", &edge.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    drop(edge);
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
