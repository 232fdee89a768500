//! The README's first command, run as a user would: `edge demo` starts a demo origin and edge in
//! front of it; `curl -I` twice shows a miss then a hit; after a restart the hit comes from disk.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Running, free_port};

/// Starts `edge demo`; with `one_cpu`, pinned to one CPU (where edge runs a current-thread
/// runtime) when taskset is there.
fn start(config: &Path, log: &Path, one_cpu: bool) -> Running {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/www");
    let pinned = one_cpu && Command::new("taskset").arg("-V").output().is_ok();
    let mut command = if pinned {
        let mut taskset = Command::new("taskset");
        taskset.args(["-c", "0", env!("CARGO_BIN_EXE_edge")]);
        taskset
    } else {
        Command::new(env!("CARGO_BIN_EXE_edge"))
    };
    let child = command
        .args([
            "demo",
            "--config",
            config.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Running(child)
}

async fn head_when_ready(client: &reqwest::Client, url: &str) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.head(url).send().await {
            Ok(response) => return response,
            Err(err) if Instant::now() > deadline => panic!("edge did not come up: {err}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn cache_status(response: &reqwest::Response) -> String {
    response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn demo_shows_a_miss_then_a_hit_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, origin, admin) = (free_port(), free_port(), free_port());
    let config = dir.path().join("edge.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{listen}\norigin:\n  url: http://127.0.0.1:{origin}\n\
             cache:\n  disk:\n    path: {}\nadmin:\n  listen: 127.0.0.1:{admin}\n",
            dir.path().join("store").display()
        ),
    )
    .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://127.0.0.1:{listen}/hello.txt");
    let expected =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/www/hello.txt"))
            .unwrap();

    let log = dir.path().join("first.log");
    let mut edge = start(&config, &log, false);
    let miss = head_when_ready(&client, &url).await;
    assert_eq!(miss.status(), 200);
    assert!(
        cache_status(&miss).starts_with("edge; fwd=uri-miss; fwd-status=200; stored"),
        "{}",
        cache_status(&miss)
    );
    assert_eq!(
        miss.headers()["content-length"],
        expected.len().to_string().as_str()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hit = client.head(&url).send().await.unwrap();
    assert!(
        cache_status(&hit).starts_with("edge; hit;"),
        "{}",
        cache_status(&hit)
    );
    assert!(hit.headers().contains_key("age"));
    let body = client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], &expected[..]);
    let health = client
        .get(format!("http://127.0.0.1:{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // SIGTERM: a clean exit that flushes the disk tier.
    let status = Command::new("kill")
        .args(["-TERM", &edge.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = edge.0.wait().unwrap();
    assert!(exit.success(), "edge exits 0 on SIGTERM: {exit}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        log.matches("demo origin request").count(),
        1,
        "the origin saw one request: {log}"
    );

    // Restarted on one CPU: the current-thread runtime serves, and stops cleanly, as well.
    edge = start(&config, &dir.path().join("second.log"), true);
    let from_disk = head_when_ready(&client, &url).await;
    assert!(
        cache_status(&from_disk).contains("detail=disk"),
        "{}",
        cache_status(&from_disk)
    );
    let status = Command::new("kill")
        .args(["-TERM", &edge.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = edge.0.wait().unwrap();
    assert!(exit.success(), "edge exits 0 on SIGTERM on one CPU: {exit}");
}

/// The demo origin speaks plain HTTP: with an `https` origin.url, `edge demo` says so and
/// exits, where it started an HTTP origin on the https port and every request failed.
#[test]
fn the_demo_refuses_an_https_origin() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("edge.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:{}\norigin:\n  url: https://127.0.0.1:{}\nadmin:\n  listen: 127.0.0.1:{}\n\
         cache:\n  disk:\n    path: {}\n",
        free_port(),
        free_port(),
        free_port(),
        dir.path().join("store").display()
    );
    std::fs::write(&config, yaml).unwrap();
    let log = dir.path().join("edge.log");
    let mut edge = start(&config, &log, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = edge.0.try_wait().unwrap() {
            break exit;
        }
        let said = std::fs::read_to_string(&log).unwrap();
        assert!(Instant::now() < deadline, "still running: {said}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!exit.success(), "{said}");
    assert!(said.contains("origin.url must be http://"), "{said}");
}
