//! The admin listener: /healthz, /metrics and /purge (by URL or tag, hard or soft), and the PURGE
//! method on the main listener.

mod common;

use std::time::Duration;

use common::{Harness, Reply, TestEdge, requests, sample};
use http::Method;
use serde_json::Value;

async fn admin(edge: &TestEdge, method: Method, path: &str) -> (u16, String) {
    let url = format!("http://{}{}", edge.admin_addr, path);
    let response = edge.client.request(method, url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn purge(edge: &TestEdge, query: &str) -> Value {
    let (status, body) = admin(edge, Method::POST, &format!("/purge?{query}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn cached(body: &str) -> Reply {
    Reply::ok(body.to_owned()).header("cache-control", "max-age=600")
}

#[tokio::test]
async fn healthz_answers_while_serving() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    assert_eq!(
        admin(&edge, Method::GET, "/healthz").await,
        (200, "ok\n".into())
    );
}

/// A request whose origin failed is an `error` whatever its method: an upload that got a 502 is
/// not a `bypass`.
#[tokio::test]
async fn a_failed_upload_counts_as_an_error() {
    let h = Harness::new().await;
    let nothing = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let edge = h.edge_before(nothing).await;
    let answer = edge.send(Method::POST, "/upload", &[]).await;
    assert_eq!(answer.status, 502, "{}", answer.cache_status());
    let text = edge.metrics().await;
    let requests = |label: &str| common::requests(&text, label);
    assert_eq!(
        (requests("error"), requests("bypass")),
        (1.0, 0.0),
        "{text}"
    );
}

/// Responses by status class, as a `5xx` rate alert needs them: edge's own answers (a 502 for an
/// origin it cannot reach, a 400 for a malformed request, a PURGE's 403) count as well as the
/// origin's, each once.
#[tokio::test]
async fn metrics_count_responses_by_status_class() {
    let h = Harness::new().await;
    let edge = h
        .edge_with(|c| c.purge.allow = vec!["10.0.0.0/8".parse().unwrap()])
        .await;
    h.origin.reply("/a", cached("aaaa"));
    h.origin.reply("/gone", Reply::ok("no").status(404));
    h.origin
        .reply("/moved", Reply::ok("").status(301).header("location", "/a"));
    for path in ["/a", "/a", "/gone", "/moved"] {
        edge.get(path).await;
    }
    let purge = edge
        .send(Method::from_bytes(b"PURGE").unwrap(), "/a", &[])
        .await;
    assert_eq!(purge.status, 403);
    let bad = (edge.send(Method::GET, "/a", &[("host", "a.test"), ("host", "b.test")])).await;
    assert_eq!(bad.status, 400);
    let unreachable = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let failing = h.edge_before(unreachable).await;
    assert_eq!(failing.get("/x").await.status, 502);
    let count = |text: &str, class: &str| {
        sample(text, &format!("edge_responses_total{{status=\"{class}\"}}"))
    };
    let text = edge.metrics().await;
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| count(&text, class));
    assert_eq!(classes, [0.0, 2.0, 1.0, 3.0, 0.0], "{text}");
    assert_eq!(count(&failing.metrics().await, "5xx"), 1.0);
}

/// Hits are counted by the tier they were read from (how well the memory tier is sized), and the
/// version running is published.
#[tokio::test]
async fn hits_are_counted_by_tier_and_the_version_is_published() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply("/a", cached("aaaa"));
    assert!(!edge.get("/a").await.is_hit());
    assert!(edge.get("/a").await.is_hit());
    assert!(edge.get("/a").await.is_hit());
    let text = edge.metrics().await;
    let hits =
        |text: &str, tier: &str| sample(text, &format!("edge_tier_hits_total{{tier=\"{tier}\"}}"));
    assert_eq!(
        (hits(&text, "memory"), hits(&text, "disk")),
        (2.0, 0.0),
        "{text}"
    );
    let version = format!(
        "edge_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&version), "{text}");
    // Memory is empty after a restart: read from disk, then promoted.
    let edge = edge.restart().await;
    assert_eq!(edge.get("/a").await.param("detail"), Some("disk"));
    assert_eq!(edge.get("/a").await.param("detail"), Some("memory"));
    let text = edge.metrics().await;
    assert_eq!(
        (hits(&text, "memory"), hits(&text, "disk")),
        (1.0, 1.0),
        "{text}"
    );
}

/// The process's own figures come as every Prometheus client library names them (`process_*`,
/// without edge's prefix), in the one exposition that ends with one `# EOF`.
#[tokio::test]
async fn the_process_figures_are_published() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    let text = edge.metrics().await;
    for name in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_threads",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(sample(&text, name) > 0.0, "{name}: {text}");
    }
    // In clock ticks (10 ms): a young process may have none yet.
    assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
    assert!(
        text.contains("# TYPE process_cpu_seconds counter"),
        "{text}"
    );
    let started = sample(&text, "process_start_time_seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    assert!(
        (now.unwrap().as_secs_f64() - started).abs() < 3600.0,
        "{started}"
    );
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}

/// Each request is timed from its head to the end of its response body, by what the cache did;
/// the origin's response time counts only origin requests that got a response: a refused
/// connection is not a fast answer.
#[tokio::test]
async fn request_durations_are_timed_by_what_the_cache_did() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    let wait = Duration::from_millis(300);
    h.origin.reply("/a", cached("aaaa").delay(wait));
    assert!(!edge.get("/a").await.is_hit());
    assert!(edge.get("/a").await.is_hit());
    assert!(edge.get("/a").await.is_hit());
    let text = edge.metrics().await;
    let seconds = |what: &str, label: &str| {
        let name = format!("edge_request_duration_seconds_{what}{{cache_status=\"{label}\"}}");
        sample(&text, &name)
    };
    assert_eq!(seconds("count", "miss"), 1.0, "{text}");
    assert_eq!(seconds("count", "hit"), 2.0, "{text}");
    assert_eq!(seconds("count", "pass"), 0.0, "{text}");
    assert!(seconds("sum", "miss") >= wait.as_secs_f64(), "{text}");
    assert!(seconds("sum", "hit") < wait.as_secs_f64(), "{text}");
    assert!(
        text.contains("# TYPE edge_request_duration_seconds histogram"),
        "{text}"
    );

    let unreachable = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let failing = h.edge_before(unreachable).await;
    assert_eq!(failing.get("/x").await.status, 502);
    let text = failing.metrics().await;
    let failed = "edge_origin_requests_total{status=\"error\"}";
    assert_eq!(sample(&text, failed), 1.0, "{text}");
    assert_eq!(
        sample(&text, "edge_origin_response_seconds_count"),
        0.0,
        "{text}"
    );
    let errors = "edge_request_duration_seconds_count{cache_status=\"error\"}";
    assert_eq!(sample(&text, errors), 1.0, "{text}");

    // An origin that hangs is timed, to origin.timeout: a hang is the origin's time.
    let hanging = h
        .edge_with(|c| c.origin.timeout = edge::config::Seconds(Duration::from_millis(300)))
        .await;
    h.origin
        .reply("/hang", cached("late").delay(Duration::from_secs(2)));
    assert_eq!(hanging.get("/hang").await.status, 504);
    let text = hanging.metrics().await;
    assert_eq!(sample(&text, failed), 1.0, "{text}");
    assert_eq!(
        sample(&text, "edge_origin_response_seconds_count"),
        1.0,
        "{text}"
    );
    assert!(
        sample(&text, "edge_origin_response_seconds_sum") >= 0.3,
        "{text}"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_what_the_cache_did() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply("/a", cached("aaaa"));
    h.origin.reply(
        "/v",
        Reply::ok("v1")
            .header("cache-control", "max-age=10")
            .header("etag", "\"v1\""),
    );
    h.origin.reply(
        "/private",
        Reply::ok("mine").header("cache-control", "private"),
    );
    edge.get("/a").await; // miss
    edge.get("/a").await; // hit
    edge.get("/a").await; // hit
    edge.get("/v").await; // miss
    h.clock.advance(Duration::from_secs(20));
    h.origin
        .reply("/v", Reply::ok("").status(304).header("etag", "\"v1\""));
    let revalidated = edge.get("/v").await;
    assert_eq!(revalidated.param("fwd-status"), Some("304"));
    edge.get("/private").await; // pass
    edge.send(Method::POST, "/a", &[]).await; // bypass

    let text = edge.metrics().await;
    let requests = |label: &str| common::requests(&text, label);
    assert_eq!(requests("hit"), 2.0, "{text}");
    assert_eq!(requests("miss"), 2.0, "{text}");
    assert_eq!(requests("revalidated"), 1.0, "{text}");
    assert_eq!(requests("pass"), 1.0, "{text}");
    assert_eq!(requests("bypass"), 1.0, "{text}");
    // /a, /v, /v revalidation, /private, the POST (which invalidated /a).
    assert_eq!(
        sample(&text, "edge_origin_requests_total{status=\"2xx\"}"),
        4.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "edge_origin_requests_total{status=\"3xx\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "edge_origin_response_seconds_count"),
        5.0,
        "{text}"
    );
    // Bodies: "aaaa" ×3, "v1" ×2, "mine", and "aaaa" again for the POST.
    let served = sample(&text, "edge_served_bytes_total");
    assert_eq!(served, (4 * 3 + 2 * 2 + 4 + 4) as f64, "{text}");
    assert!(
        text.contains("# TYPE edge_origin_response_seconds histogram"),
        "{text}"
    );
}

/// A fresh stored response that a request's `no-cache` or `max-age=0` (a browser's reload) sends
/// to the origin, and that a 304 refreshes, is `revalidated`, as one that had gone stale is: not
/// a `miss`, which fetched a body.
#[tokio::test]
async fn a_revalidation_the_request_asked_for_counts_as_revalidated() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply(
        "/v",
        Reply::ok("v1")
            .header("cache-control", "max-age=600")
            .header("etag", "\"v1\""),
    );
    edge.get("/v").await; // miss
    h.origin
        .reply("/v", Reply::ok("").status(304).header("etag", "\"v1\""));
    for asked in ["no-cache", "max-age=0"] {
        // Still fresh, but older than `max-age=0` accepts (each 304 makes it new again).
        h.clock.advance(Duration::from_secs(5));
        let answer = edge.get_with("/v", &[("cache-control", asked)]).await;
        assert_eq!(answer.fwd(), Some("request"), "{}", answer.cache_status());
        assert_eq!(answer.param("fwd-status"), Some("304"));
        assert!(answer.stored(), "{}", answer.cache_status());
    }
    let text = edge.metrics().await;
    let requests = |label: &str| common::requests(&text, label);
    assert_eq!(
        (requests("miss"), requests("revalidated")),
        (1.0, 2.0),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_report_entries_per_tier_collapsed_requests_and_purges() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin
        .reply("/slow", cached("slow").delay(Duration::from_millis(300)));
    h.origin.reply("/b", cached("b"));
    let requests = (0..5).map(|_| edge.get("/slow"));
    let answers = futures_util::future::join_all(requests).await;
    assert!(answers.iter().all(|r| r.text() == "slow"));
    assert_eq!(h.origin.hits("/slow"), 1);
    edge.get("/b").await;

    let text = edge.metrics().await;
    assert_eq!(
        sample(&text, "edge_collapsed_requests_total"),
        4.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "edge_cache_entries{tier=\"memory\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "edge_cache_entries{tier=\"disk\"}"),
        2.0,
        "{text}"
    );
    assert!(
        sample(&text, "edge_cache_bytes{tier=\"memory\"}") > 0.0,
        "{text}"
    );
    assert!(
        sample(&text, "edge_cache_bytes{tier=\"disk\"}") > 0.0,
        "{text}"
    );
    assert!(
        text.contains("edge_cache_evictions_total{tier=\"disk\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("edge_disk_integrity_failures_total 0"),
        "{text}"
    );

    purge(&edge, "url=/b").await;
    let text = edge.metrics().await;
    assert_eq!(
        sample(&text, "edge_purges_total{by=\"url\",mode=\"hard\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(sample(&text, "edge_purged_objects_total"), 1.0, "{text}");
    assert_eq!(
        sample(&text, "edge_cache_entries{tier=\"disk\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "edge_cache_entries{tier=\"memory\"}"),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn purge_by_url_removes_every_variant_from_both_tiers() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply(
        "/v?q=1",
        cached("variant").header("vary", "accept-language"),
    );
    h.origin.reply("/other", cached("other"));
    edge.get_with("/v?q=1", &[("accept-language", "en")]).await;
    edge.get_with("/v?q=1", &[("accept-language", "fr")]).await;
    edge.get("/other").await;
    assert!(
        edge.get_with("/v?q=1", &[("accept-language", "fr")])
            .await
            .is_hit()
    );

    let answer = purge(&edge, "url=/v%3Fq%3D1").await;
    assert_eq!(answer["purged"], 2, "{answer}");
    assert_eq!(answer["soft"], false);
    for language in ["en", "fr"] {
        let after = edge
            .get_with("/v?q=1", &[("accept-language", language)])
            .await;
        assert!(!after.is_hit(), "{language}: {}", after.cache_status());
    }
    assert_eq!(h.origin.hits("/v?q=1"), 4);
    assert!(edge.get("/other").await.is_hit(), "other URLs stay");

    // The disk tier lost them too: purge again, restart, and nothing comes back.
    let answer = purge(&edge, "url=http://cdn.example/v?q=1").await;
    assert_eq!(
        answer["purged"], 2,
        "an absolute URL names the same object: {answer}"
    );
    let edge = edge.restart().await;
    let after = edge.get_with("/v?q=1", &[("accept-language", "en")]).await;
    assert_eq!(after.fwd(), Some("uri-miss"), "{}", after.cache_status());
    assert_eq!(edge.get("/other").await.param("detail"), Some("disk"));
}

#[tokio::test]
async fn purge_by_tag_takes_surrogate_key_and_cache_tag_and_survives_a_restart() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin
        .reply("/t1", cached("one").header("surrogate-key", "news  sport"));
    h.origin
        .reply("/t2", cached("two").header("cache-tag", "weather,news"));
    h.origin
        .reply("/t3", cached("three").header("surrogate-key", "sport"));
    for path in ["/t1", "/t2", "/t3"] {
        let first = edge.get(path).await;
        assert!(first.stored(), "{}", first.cache_status());
        assert_eq!(
            first.header("surrogate-key"),
            None,
            "tags are for edge, not clients"
        );
        assert_eq!(first.header("cache-tag"), None);
    }
    // Memory is empty after a restart: the tags must come from the disk tier.
    let edge = edge.restart().await;
    let answer = purge(&edge, "tag=news").await;
    assert_eq!(answer["purged"], 2, "{answer}");
    assert_eq!(answer["tag"], "news");
    assert!(!edge.get("/t1").await.is_hit());
    assert!(!edge.get("/t2").await.is_hit());
    assert!(edge.get("/t3").await.is_hit());
    assert_eq!(purge(&edge, "tag=nothing").await["purged"], 0);
    // Both tiers: /t3 is in memory now as well as on disk.
    assert_eq!(purge(&edge, "tag=sport").await["purged"], 2);
    assert!(!edge.get("/t3").await.is_hit());
    // Several tags at once (Fastly's and Cloudflare's purges take a list): each response that
    // carries one of them, once (/t1 carries both).
    assert!(!edge.get("/t1").await.is_hit());
    for path in ["/t1", "/t2", "/t3"] {
        assert!(edge.get(path).await.is_hit(), "{path}");
    }
    let answer = purge(&edge, "tag=news&tag=sport").await;
    assert_eq!(answer["purged"], 3, "{answer}");
    assert_eq!(
        answer["tags"],
        serde_json::json!(["news", "sport"]),
        "{answer}"
    );
    for path in ["/t1", "/t2", "/t3"] {
        assert!(!edge.get(path).await.is_hit(), "{path}");
    }
}

#[tokio::test]
async fn a_response_stored_again_without_its_tag_is_not_purged_by_it() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply(
        "/a",
        Reply::ok("tagged")
            .header("cache-control", "max-age=1")
            .header("surrogate-key", "old"),
    );
    edge.get("/a").await;
    h.clock.advance(Duration::from_secs(5));
    h.origin.reply("/a", cached("untagged"));
    assert_eq!(edge.get("/a").await.text(), "untagged");
    assert_eq!(purge(&edge, "tag=old").await["purged"], 0);
    assert!(edge.get("/a").await.is_hit());
}

#[tokio::test]
async fn soft_purge_marks_stale_so_the_next_request_revalidates() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply(
        "/s",
        cached("soft body")
            .header("etag", "\"s1\"")
            .header("surrogate-key", "s"),
    );
    edge.get("/s").await;
    let answer = purge(&edge, "url=/s&soft=true").await;
    assert_eq!(answer["purged"], 1, "{answer}");
    assert_eq!(answer["soft"], true);

    h.origin
        .reply("/s", Reply::ok("").status(304).header("etag", "\"s1\""));
    let after = edge.get("/s").await;
    assert_eq!(after.fwd(), Some("stale"), "{}", after.cache_status());
    assert_eq!(after.param("fwd-status"), Some("304"));
    assert_eq!(after.text(), "soft body", "the stored body is kept");
    let sent = h.origin.last("/s").unwrap();
    assert_eq!(sent.headers["if-none-match"], "\"s1\"");
    // Revalidated: fresh again.
    assert!(edge.get("/s").await.is_hit());
    assert_eq!(h.origin.hits("/s"), 2);

    // A soft purge by tag, and it survives a restart.
    assert_eq!(purge(&edge, "tag=s&soft=1").await["purged"], 1);
    let edge = edge.restart().await;
    let after = edge.get("/s").await;
    assert_eq!(after.fwd(), Some("stale"), "{}", after.cache_status());
    assert_eq!(h.origin.hits("/s"), 3);
}

/// `all=true`: everything, both tiers (a deploy that changed every page); a fetch in flight
/// then is not stored.
#[tokio::test]
async fn purge_all_removes_everything_from_both_tiers() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin
        .reply("/v", cached("variant").header("vary", "accept-language"));
    h.origin.reply("/a", cached("a"));
    h.origin
        .reply("/slow", cached("slow").delay(Duration::from_millis(500)));
    edge.get_with("/v", &[("accept-language", "en")]).await;
    edge.get_with("/v", &[("accept-language", "fr")]).await;
    edge.get("/a").await;
    assert!(edge.get("/a").await.is_hit());
    let slow = {
        let client = edge.client.clone();
        let url = edge.url("/slow");
        tokio::spawn(async move { client.get(url).send().await.unwrap().text().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let answer = purge(&edge, "all=true").await;
    assert_eq!(answer["purged"], 3, "{answer}");
    assert_eq!(
        (answer["all"].clone(), answer["soft"].clone()),
        (true.into(), false.into())
    );
    assert_eq!(slow.await.unwrap().unwrap(), "slow");
    for (path, language) in [("/v", "en"), ("/v", "fr"), ("/a", ""), ("/slow", "")] {
        let after = edge.get_with(path, &[("accept-language", language)]).await;
        assert!(
            !after.is_hit(),
            "{path} {language}: {}",
            after.cache_status()
        );
    }
    assert_eq!(h.origin.hits("/v"), 4);
    assert_eq!(
        h.origin.hits("/slow"),
        2,
        "the fetch in flight was not stored"
    );
    let metrics = edge.metrics().await;
    assert_eq!(
        sample(&metrics, "edge_purges_total{by=\"all\",mode=\"hard\"}"),
        1.0
    );

    // Stored again, purged again, and after a restart nothing comes back from disk.
    assert!(edge.get("/a").await.is_hit());
    assert_eq!(purge(&edge, "all=1").await["purged"], 4);
    let edge = edge.restart().await;
    assert_eq!(edge.get("/a").await.fwd(), Some("uri-miss"));
    assert_eq!(h.origin.hits("/a"), 3);
}

/// After a soft purge, the next request for `path` revalidates its response (stored with
/// `ETag: "s"`), which the origin's 304 makes fresh again, its stored `body` kept.
async fn revalidates_after_a_soft_purge(h: &Harness, edge: &TestEdge, path: &str, body: &str) {
    h.origin
        .reply(path, Reply::ok("").status(304).header("etag", "\"s\""));
    let after = edge.get(path).await;
    assert_eq!(
        after.fwd(),
        Some("stale"),
        "{path}: {}",
        after.cache_status()
    );
    assert_eq!(after.param("fwd-status"), Some("304"));
    assert_eq!(after.text(), body, "the stored body is kept");
    assert_eq!(
        h.origin.last(path).unwrap().headers["if-none-match"],
        "\"s\""
    );
    assert!(edge.get(path).await.is_hit(), "revalidated: fresh again");
}

#[tokio::test]
async fn soft_purge_all_marks_everything_stale() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    for path in ["/s1", "/s2"] {
        h.origin.reply(path, cached("soft").header("etag", "\"s\""));
        edge.get(path).await;
    }
    let answer = purge(&edge, "all=true&soft=true").await;
    assert_eq!(
        (answer["purged"].clone(), answer["soft"].clone()),
        (2.into(), true.into())
    );
    for path in ["/s1", "/s2"] {
        revalidates_after_a_soft_purge(&h, &edge, path, "soft").await;
    }
    // On disk too.
    purge(&edge, "all=true&soft=true").await;
    let edge = edge.restart().await;
    assert_eq!(edge.get("/s1").await.fwd(), Some("stale"));
}

#[tokio::test]
async fn soft_purge_leaves_stale_while_revalidate_to_answer_at_once() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply(
        "/swr",
        cached("old")
            .header("cache-control", "max-age=600, stale-while-revalidate=60")
            .header("etag", "\"o\""),
    );
    edge.get("/swr").await;
    purge(&edge, "url=/swr&soft=true").await;
    h.origin
        .reply("/swr", cached("new").header("etag", "\"n\""));
    let stale = edge.get("/swr").await;
    assert_eq!(stale.text(), "old");
    assert_eq!(stale.param("detail"), Some("stale-while-revalidate"));
    for _ in 0..50 {
        if h.origin.hits("/swr") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.origin.hits("/swr"), 2, "refreshed in the background");
}

#[tokio::test]
async fn purge_requests_that_name_nothing_are_rejected() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    for query in [
        "",
        "url=/a&tag=b",
        "tag=",
        "url=/a&soft=maybe",
        "url=relative",
        // Of a scheme edge does not serve (a prefix is refused so too).
        "url=ftp://cdn.example/a",
        // Named twice, or with a parameter edge does not know (here, the rest of an unencoded
        // query): it answered 200 and purged only the last URL, or the URL cut short.
        "url=/d1&url=/d2",
        "tag=a&tag=",
        "url=/search?q=a&page=2",
        "url=/a&sotf=true",
        "all=maybe",
        "all=false",
        "all=true&url=/a",
        "all=true&tag=t",
    ] {
        let (status, body) = admin(&edge, Method::POST, &format!("/purge?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains("error"), "{body}");
    }
    // The answer says what is wrong, and which values are taken.
    for (query, said) in [
        ("tag=", "tag is empty"),
        (
            "url=/a&soft=maybe",
            "soft must be true (or 1) or false (or 0)",
        ),
        ("all=maybe", "all must be true (or 1)"),
    ] {
        let (_, body) = admin(&edge, Method::POST, &format!("/purge?{query}")).await;
        assert!(body.contains(said), "{query}: {body}");
    }
    // A name in the query and again in a form body is named twice too.
    h.origin.reply("/d1", cached("d1"));
    edge.get("/d1").await;
    let twice = edge
        .client
        .post(format!("http://{}/purge?url=/d2", edge.admin_addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("url=/d1")
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 400);
    assert!(
        edge.get("/d1").await.is_hit(),
        "a refused purge purges nothing"
    );
    // JSON, and labelled so (it was sent as text/plain).
    let url = format!("http://{}/purge?tag=", edge.admin_addr);
    let refused = edge.client.post(url).send().await.unwrap();
    assert_eq!(refused.headers()["content-type"], "application/json");
    let (status, _) = admin(&edge, Method::GET, "/purge?url=/a").await;
    assert_eq!(status, 405, "purging takes POST");
}

#[tokio::test]
async fn purge_method_on_the_main_listener_from_allowed_addresses() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply("/p", cached("p"));
    edge.get("/p").await;
    let purge = Method::from_bytes(b"PURGE").unwrap();
    let answer = edge.send(purge.clone(), "/p", &[]).await;
    assert_eq!(answer.status, 200);
    let json: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(json["purged"], 1, "{json}");
    assert!(!edge.get("/p").await.is_hit());
    assert_eq!(
        h.origin.hits("/p"),
        2,
        "PURGE itself never reaches the origin"
    );
}

/// An IPv4 client of a listener on `[::]` is its IPv4 address: it came as `::ffff:127.0.0.1`,
/// which the default `purge.allow` (loopback) refused, and which went on in `X-Forwarded-For`.
#[tokio::test]
async fn an_ipv4_client_of_a_dual_stack_listener_is_its_ipv4_address() {
    if std::net::TcpListener::bind("[::]:0").is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI has IPv6");
        eprintln!("skipped: no IPv6 here");
        return;
    }
    let h = Harness::new().await;
    let edge = h.edge_with(|c| c.listen = "[::]:0".parse().unwrap()).await;
    h.origin.reply("/p", cached("p"));
    let url = format!("http://127.0.0.1:{}/p", edge.addr.port());
    let client = reqwest::Client::new();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let sent = h.origin.last("/p").unwrap();
    assert_eq!(sent.headers["x-forwarded-for"], "127.0.0.1");
    let purge = Method::from_bytes(b"PURGE").unwrap();
    let answer = client.request(purge, &url).send().await.unwrap();
    assert_eq!(answer.status(), 200, "loopback may purge");
}

#[tokio::test]
async fn purge_method_from_other_addresses_is_forbidden() {
    let h = Harness::new().await;
    let edge = h
        .edge_with(|c| c.purge.allow = vec!["10.0.0.0/8".parse().unwrap()])
        .await;
    h.origin.reply("/p", cached("p"));
    edge.get("/p").await;
    let answer = edge
        .send(Method::from_bytes(b"PURGE").unwrap(), "/p", &[])
        .await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.cache_status(), "edge; detail=not-allowed");
    assert!(edge.get("/p").await.is_hit(), "nothing was purged");
    assert_eq!(h.origin.hits("/p"), 1);
    // Refused, so an `error`, not a purge.
    let metrics = edge.metrics().await;
    assert_eq!(
        (requests(&metrics, "error"), requests(&metrics, "purge")),
        (1.0, 0.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn purge_method_can_be_soft() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply(
        "/p",
        cached("p").header("last-modified", "Tue, 01 Jan 2030 00:00:00 GMT"),
    );
    edge.get("/p").await;
    let answer = edge
        .send(
            Method::from_bytes(b"PURGE").unwrap(),
            "/p",
            &[("edge-soft-purge", "1")],
        )
        .await;
    let json: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        (json["purged"].clone(), json["soft"].clone()),
        (1.into(), true.into())
    );
    h.origin.reply("/p", Reply::ok("").status(304));
    let after = edge.get("/p").await;
    assert_eq!(
        after.param("fwd-status"),
        Some("304"),
        "{}",
        after.cache_status()
    );
    assert_eq!(after.text(), "p");
    assert_eq!(
        h.origin.last("/p").unwrap().headers["if-modified-since"],
        "Tue, 01 Jan 2030 00:00:00 GMT"
    );
}

/// `Edge-Soft-Purge: true` is soft too, and a value that says neither is refused: it was taken
/// for a hard purge, without a word.
#[tokio::test]
async fn edge_soft_purge_takes_true_and_refuses_what_it_does_not_know() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply("/p", cached("p").header("etag", "\"1\""));
    edge.get("/p").await;
    let purge = Method::from_bytes(b"PURGE").unwrap();
    let refused = edge
        .send(purge.clone(), "/p", &[("edge-soft-purge", "yes please")])
        .await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.cache_status(), "edge; detail=invalid-request");
    assert!(edge.get("/p").await.is_hit(), "nothing was purged");
    let answer = edge.send(purge, "/p", &[("edge-soft-purge", "true")]).await;
    let json: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        (json["purged"].clone(), json["soft"].clone()),
        (1.into(), true.into())
    );
    assert_eq!(answer.cache_status(), "edge; detail=purge");
    // The malformed one counted as an `error`, the other as a purge.
    let metrics = edge.metrics().await;
    assert_eq!(
        (requests(&metrics, "error"), requests(&metrics, "purge")),
        (1.0, 1.0),
        "{metrics}"
    );
}

/// The requests of the prefix purge tests: path and `Accept-Language`.
const UNDER_STATIC: [(&str, &str); 5] = [
    ("/static/a", ""),
    ("/static/b?x=1", ""),
    ("/static/large", ""),
    ("/static/v", "en"),
    ("/static/v", "fr"),
];
const BESIDE_STATIC: [(&str, &str); 2] = [("/staticfoo", ""), ("/other", "")];

async fn get_in(edge: &TestEdge, (path, language): (&str, &str)) -> common::Resp {
    edge.get_with(path, &[("accept-language", language)]).await
}

/// `prefix=`: every URL that starts with it, every variant, both tiers, and not a URL that only
/// shares its letters. After a restart (memory empty) the purge finds them by reading the disk
/// tier's records, in sled and in body files (`/static/large`).
#[tokio::test]
async fn purge_by_prefix_removes_every_url_under_it_from_both_tiers() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    for (path, _) in UNDER_STATIC.into_iter().chain(BESIDE_STATIC) {
        let reply = match path {
            "/static/large" => cached(&"l".repeat(20_000)),
            "/static/v" => cached("variant").header("vary", "accept-language"),
            _ => cached(path),
        };
        h.origin.reply(path, reply);
    }
    for request in UNDER_STATIC.into_iter().chain(BESIDE_STATIC) {
        let first = get_in(&edge, request).await;
        assert!(first.stored(), "{request:?}: {}", first.cache_status());
    }
    let edge = edge.restart().await;
    let answer = purge(&edge, "prefix=/static/").await;
    assert_eq!(
        answer,
        serde_json::json!({ "prefix": "/static/", "purged": 5, "soft": false })
    );
    let check = async |edge: &TestEdge, fetched: usize| {
        for request in UNDER_STATIC {
            let after = get_in(edge, request).await;
            // The first variant fetched again stores the URL's Vary marker again.
            let fwd = if request.1 == "fr" {
                "vary-miss"
            } else {
                "uri-miss"
            };
            assert_eq!(
                after.fwd(),
                Some(fwd),
                "{request:?}: {}",
                after.cache_status()
            );
        }
        for request in BESIDE_STATIC {
            let after = get_in(edge, request).await;
            assert_eq!(after.param("detail"), Some("disk"), "{request:?}");
            assert!(after.is_hit(), "{request:?}: {}", after.cache_status());
        }
        for path in ["/static/a", "/static/b?x=1", "/static/large"] {
            assert_eq!(h.origin.hits(path), fetched, "{path}");
        }
        assert_eq!(h.origin.hits("/static/v"), 2 * fetched);
        assert_eq!(h.origin.hits("/staticfoo") + h.origin.hits("/other"), 2);
    };
    check(&edge, 2).await;

    // Stored again, in both tiers: purged again, and after a restart nothing comes back.
    assert_eq!(purge(&edge, "prefix=/static/").await["purged"], 5);
    let metrics = edge.metrics().await;
    assert_eq!(
        sample(&metrics, "edge_purges_total{by=\"prefix\",mode=\"hard\"}"),
        2.0,
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "edge_purged_objects_total"), 10.0);
    let edge = edge.restart().await;
    check(&edge, 3).await;
}

/// A prefix is matched against URLs as edge keeps them: a partial path segment starts the
/// segments it is part of (`/img/a` is a prefix of `/img/a.png`), the prefix is normalised as a
/// request target is (`{` percent-encoded, `..` resolved), and of an absolute URL its path is
/// taken.
#[tokio::test]
async fn a_purge_prefix_is_matched_against_urls_as_edge_keeps_them() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    let paths = [
        "/img/a.png",
        "/img/abc/x",
        "/img/b.png",
        "/p/%7Ba%7D/1",
        "/p/b",
    ];
    for path in paths {
        h.origin.reply(path, cached(path));
        assert!(edge.get(path).await.stored(), "{path}");
    }
    let answer = purge(&edge, "prefix=/img/a").await;
    assert_eq!(
        (&answer["prefix"], &answer["purged"]),
        (&"/img/a".into(), &2.into())
    );
    let answer = edge.purge_form(&[("prefix", "/p/{a")]).await;
    assert_eq!(
        (&answer["prefix"], &answer["purged"]),
        (&"/p/%7Ba".into(), &1.into())
    );
    for (path, purged) in paths.into_iter().zip([true, true, false, true, false]) {
        let after = edge.get(path).await;
        assert_eq!(!after.is_hit(), purged, "{path}: {}", after.cache_status());
        assert_eq!(h.origin.hits(path), 1 + usize::from(purged), "{path}");
    }
    let answer = purge(&edge, "prefix=http://cdn.example/img/c/../b").await;
    assert_eq!(
        (&answer["prefix"], &answer["purged"]),
        (&"/img/b".into(), &1.into())
    );
    assert!(!edge.get("/img/b.png").await.is_hit());
}

/// Under an origin URL with a path, a prefix is mapped under it as a `url=` purge's URL is.
#[tokio::test]
async fn a_purge_prefix_is_mapped_under_the_origin_base_path() {
    let h = Harness::new().await;
    let base = format!("{}/base", h.origin.url()).parse().unwrap();
    let edge = h
        .edge_with(|c| c.origin.url = edge::config::OriginUrl(base))
        .await;
    h.origin.reply("/base/static/a", cached("a"));
    h.origin.reply("/base/staticfoo", cached("foo"));
    edge.get("/static/a").await;
    edge.get("/staticfoo").await;
    let answer = purge(&edge, "prefix=/static/").await;
    assert_eq!(
        (&answer["prefix"], &answer["purged"]),
        (&"/base/static/".into(), &1.into())
    );
    assert!(!edge.get("/static/a").await.is_hit());
    assert!(edge.get("/staticfoo").await.is_hit());
    assert_eq!(h.origin.hits("/base/static/a"), 2);
}

#[tokio::test]
async fn a_soft_purge_by_prefix_marks_stale_so_the_next_request_revalidates() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    for path in ["/s/1", "/s/2", "/t"] {
        h.origin
            .reply(path, cached("soft body").header("etag", "\"s\""));
        edge.get(path).await;
    }
    let answer = purge(&edge, "prefix=/s/&soft=true").await;
    assert_eq!(
        answer,
        serde_json::json!({ "prefix": "/s/", "purged": 2, "soft": true })
    );
    for path in ["/s/1", "/s/2"] {
        revalidates_after_a_soft_purge(&h, &edge, path, "soft body").await;
        assert_eq!(h.origin.hits(path), 2);
    }
    assert!(edge.get("/t").await.is_hit());

    // On disk too.
    assert_eq!(purge(&edge, "prefix=/s/&soft=1").await["purged"], 2);
    let metrics = edge.metrics().await;
    assert_eq!(
        sample(&metrics, "edge_purges_total{by=\"prefix\",mode=\"soft\"}"),
        2.0,
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "edge_purged_objects_total"), 4.0);
    let edge = edge.restart().await;
    let after = edge.get("/s/1").await;
    assert_eq!(after.fwd(), Some("stale"), "{}", after.cache_status());
    assert_eq!(edge.get("/t").await.param("detail"), Some("disk"));
}

/// A prefix that is not a path (or an absolute http(s) URL), or given with anything else a
/// purge names, is refused with an error that says so, and purges nothing.
#[tokio::test]
async fn a_purge_prefix_that_is_not_a_path_or_comes_with_another_name_is_rejected() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply("/a", cached("a"));
    edge.get("/a").await;
    for (query, says) in [
        ("prefix=a/", "is not a path"),
        ("prefix=", "is not a path"),
        ("prefix=ftp://cdn.example/a", "is not a path"),
        ("prefix=/a&url=/a", "exactly one of"),
        ("prefix=/a&tag=t", "exactly one of"),
        ("prefix=/a&all=true", "exactly one of"),
        ("prefix=/a&prefix=/b", "more than once"),
    ] {
        let (status, body) = admin(&edge, Method::POST, &format!("/purge?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.contains(says) && error.contains("prefix"),
            "{query}: {error}"
        );
    }
    assert!(
        edge.get("/a").await.is_hit(),
        "a refused purge purges nothing"
    );
}

/// A `prefix=` is the start of what is stored, stored targets being normalised by
/// `origin.sort_query` and `origin.strip_query` already: its query is taken as written, not
/// reordered or cut as a whole request's would be (which made another prefix of it, purging
/// responses it does not begin, or none at all and a 400).
#[tokio::test]
async fn a_prefix_is_not_rewritten_by_the_query_rules() {
    let h = Harness::new().await;
    let edge = h
        .edge_with(|c| {
            c.origin.strip_query = vec!["utm_*".into()];
            c.origin.sort_query = true;
        })
        .await;
    h.origin.reply("/a?a=x&b=1", cached("ab"));
    h.origin.reply("/a?q=1", cached("q"));
    edge.get("/a?b=1&a=x").await;
    edge.get("/a?q=1&utm_source=z").await;
    assert!(edge.get("/a?a=x&b=1").await.is_hit());
    assert!(edge.get("/a?q=1").await.is_hit());

    // Nothing stored begins so: its parameters would be in order of their names.
    let answer = edge.purge_form(&[("prefix", "/a?b=x&a=")]).await;
    assert_eq!(answer["prefix"], "/a?b=x&a=", "{answer}");
    assert_eq!(answer["purged"], 0, "{answer}");
    assert!(edge.get("/a?a=x&b=1").await.is_hit());

    let answer = edge.purge_form(&[("prefix", "/a?utm_")]).await;
    assert_eq!(answer["purged"], 0, "{answer}");
    let answer = edge.purge_form(&[("prefix", "/a?q=")]).await;
    assert_eq!(answer["purged"], 1, "{answer}");
    assert!(!edge.get("/a?q=1").await.is_hit());
    assert!(edge.get("/a?a=x&b=1").await.is_hit());
}
