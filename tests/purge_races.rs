//! Purges racing the traffic they are meant to change: a purged response must not come back from
//! a disk promotion or a fetch that was in flight, and a purge runs to its end whoever waits for it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Harness, Reply, TestEdge};
use http::Method;
use serde_json::Value;

fn cached(body: &str) -> Reply {
    Reply::ok(body.to_owned()).header("cache-control", "max-age=600")
}

async fn purge(edge: &TestEdge, query: &str) -> Value {
    let url = format!("http://{}/purge?{query}", edge.admin_addr);
    let r = edge.client.request(Method::POST, url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

/// Eight clients hammer a URL while it is purged; afterwards nobody gets the old body without
/// the origin being asked.
async fn purge_under_load(soft: bool) {
    let h = Harness::new().await;
    let edge = Arc::new(h.edge().await);
    let mut resurrected = Vec::new();
    for i in 0..40 {
        let path = format!("/hot{i}");
        h.origin.reply(&path, cached("v1").header("etag", "\"v1\""));
        edge.get(&path).await;
        let stop = Arc::new(AtomicBool::new(false));
        let hammers: Vec<_> = (0..8)
            .map(|_| {
                let (edge, stop, path) = (edge.clone(), stop.clone(), path.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        edge.get(&path).await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        h.origin.reply(&path, cached("v2").header("etag", "\"v2\""));
        let soft = if soft { "&soft=true" } else { "" };
        purge(&edge, &format!("url={path}{soft}")).await;
        stop.store(true, Ordering::Relaxed);
        for hammer in hammers {
            hammer.await.unwrap();
        }
        let asked = h.origin.hits(&path);
        let after = edge.get(&path).await;
        if after.text() == "v1" && h.origin.hits(&path) == asked {
            resurrected.push(format!("{path}: {}", after.cache_status()));
        }
    }
    assert!(
        resurrected.is_empty(),
        "purged v1 served without asking the origin: {resurrected:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hard_purge_under_load_is_not_undone_by_a_disk_promotion() {
    purge_under_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_soft_purge_under_load_is_not_undone_by_a_disk_promotion() {
    purge_under_load(true).await;
}

/// A purge (by URL, by tag or by URL prefix) while a cold fetch is in flight keeps its old
/// response out: it is not stored, and a request made after the purge does not join the fetch.
/// (A tag purge let it join: the fetch's tags were not known yet.)
async fn purge_during_a_cold_fill(query: &str) {
    let h = Harness::new().await;
    let edge = Arc::new(h.edge().await);
    h.origin.reply(
        "/p",
        cached("v1")
            .header("surrogate-key", "product-42")
            .delay(Duration::from_millis(400)),
    );
    let first = {
        let edge = edge.clone();
        tokio::spawn(async move { edge.get("/p").await })
    };
    // The fetch is in flight once the origin has the request (it answers 400 ms later).
    while h.origin.hits("/p") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.origin
        .reply("/p", cached("v2").header("surrogate-key", "product-42"));
    purge(&edge, query).await;
    let during = edge.get("/p").await;
    assert_eq!(during.text(), "v2", "{query}: {}", during.cache_status());
    assert_eq!(first.await.unwrap().text(), "v1");
    let after = edge.get("/p").await;
    assert_eq!(after.text(), "v2", "{query}: {}", after.cache_status());
}

#[tokio::test]
async fn a_url_purge_keeps_an_in_flight_fetch_from_being_stored() {
    purge_during_a_cold_fill("url=/p").await;
}

#[tokio::test]
async fn a_tag_purge_keeps_an_in_flight_fetch_from_being_stored() {
    purge_during_a_cold_fill("tag=product-42").await;
}

#[tokio::test]
async fn a_prefix_purge_keeps_an_in_flight_fetch_from_being_stored() {
    purge_during_a_cold_fill("prefix=/p").await;
}

#[tokio::test]
async fn purge_parameters_may_come_as_a_form_body() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    for path in ["/a?b=1&c=2", "/img/a%20b.png"] {
        h.origin.reply(path, cached("x"));
        edge.get(path).await;
        assert!(edge.get(path).await.is_hit());
        let answer = edge.purge_form(&[("url", path)]).await;
        assert_eq!(answer["purged"], 1, "{path}: {answer}");
        assert_eq!(answer["url"], path);
        assert!(!edge.get(path).await.is_hit(), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tag_purge_runs_to_its_end_when_the_admin_client_goes_away() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    // Enough that the purge takes several times the client's patience even in a release build
    // (600 took under 20 ms there, and the client did not give up first).
    let n = 3000;
    for i in 0..n {
        h.origin.reply(
            &format!("/o{i}"),
            cached("x").header("surrogate-key", "all"),
        );
    }
    let paths: Vec<String> = (0..n).map(|i| format!("/o{i}")).collect();
    for chunk in paths.chunks(100) {
        futures_util::future::join_all(chunk.iter().map(|path| edge.get(path))).await;
    }
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    let answer = impatient
        .post(format!("http://{}/purge?tag=all", edge.admin_addr))
        .send()
        .await;
    assert!(answer.is_err(), "the client should have given up first");
    // The purge goes on without its client; the metrics say when it is over.
    let metrics = format!("http://{}/metrics", edge.admin_addr);
    let mut done = false;
    for _ in 0..200 {
        let text = edge
            .client
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains(&format!("edge_purged_objects_total {n}\n")) {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done, "the purge did not finish");
    let mut still = 0;
    for chunk in paths.chunks(100) {
        let answers = futures_util::future::join_all(chunk.iter().map(|path| edge.get(path))).await;
        still += answers.iter().filter(|answer| answer.is_hit()).count();
    }
    assert_eq!(still, 0, "{still} of {n} tagged objects survived the purge");
}
