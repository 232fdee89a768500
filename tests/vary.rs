//! RFC 9111 §4.1: several variants of one URI side by side, selected by normalised request
//! header values, in both tiers; invalidating the URI removes them all.

mod common;

use std::time::Duration;

use common::{Harness, Reply};
use http::Method;

fn varying(body: &str) -> Reply {
    Reply::ok(body.to_owned())
        .header("cache-control", "max-age=600")
        .header("vary", "Accept-Encoding")
}

#[tokio::test]
async fn variants_of_one_uri_are_stored_side_by_side() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply("/v", varying("gzip body"));
    assert!(
        edge.get_with("/v", &[("accept-encoding", "gzip")])
            .await
            .stored()
    );
    h.origin.reply("/v", varying("br body"));
    let br = edge.get_with("/v", &[("accept-encoding", "br")]).await;
    assert_eq!(br.fwd(), Some("vary-miss"), "{}", br.cache_status());
    assert_eq!(br.text(), "br body");

    let gzip = edge.get_with("/v", &[("accept-encoding", "gzip")]).await;
    assert!(gzip.is_hit(), "{}", gzip.cache_status());
    assert_eq!(gzip.text(), "gzip body");
    let br = edge.get_with("/v", &[("accept-encoding", "br")]).await;
    assert!(br.is_hit(), "{}", br.cache_status());
    assert_eq!(br.text(), "br body");
    let none = edge.get("/v").await;
    assert_eq!(
        none.fwd(),
        Some("vary-miss"),
        "a request without the header is its own variant"
    );
    assert_eq!(h.origin.hits("/v"), 3);
}

#[tokio::test]
async fn variant_selection_ignores_whitespace_order_and_case_of_negotiation_lists() {
    let h = Harness::new().await;
    h.origin.reply("/v", varying("encoded"));
    let edge = h.edge().await;
    edge.get_with("/v", &[("accept-encoding", "gzip, br")])
        .await;
    for same in ["gzip,br", "br, gzip", "GZIP,  BR"] {
        let hit = edge.get_with("/v", &[("accept-encoding", same)]).await;
        assert!(hit.is_hit(), "{same:?}: {}", hit.cache_status());
    }
    assert_eq!(h.origin.hits("/v"), 1);
}

/// Letter case means nothing in a media type or a parameter's name, but it may in a parameter's
/// value (RFC 9110 §5.6.6): an origin negotiating `Accept: application/json; version=A` may answer
/// `version=a` otherwise, so the one must not be served the other's variant (RFC 9111 §4.1).
#[tokio::test]
async fn variant_selection_keeps_the_letter_case_of_parameter_values() {
    let h = Harness::new().await;
    let accepting = |body: &str| {
        Reply::ok(body.to_owned())
            .header("cache-control", "max-age=600")
            .header("vary", "Accept")
    };
    h.origin.reply("/v", accepting("version A"));
    let edge = h.edge().await;
    let first = edge
        .get_with("/v", &[("accept", "application/json; version=A")])
        .await;
    assert!(first.stored(), "{}", first.cache_status());
    let same = edge
        .get_with("/v", &[("accept", "Application/JSON;Version=A")])
        .await;
    assert!(same.is_hit(), "{}", same.cache_status());
    assert_eq!(same.text(), "version A");

    h.origin.reply("/v", accepting("version a"));
    let other = edge
        .get_with("/v", &[("accept", "application/json; version=a")])
        .await;
    assert_eq!(other.fwd(), Some("vary-miss"), "{}", other.cache_status());
    assert_eq!(other.text(), "version a");
    assert_eq!(h.origin.hits("/v"), 2);
}

/// CGI, FastCGI and WSGI servers (PHP, Python's `wsgiref`, gunicorn before 22.0) read `_` in a
/// field name as `-`: to an origin behind one, `Accept_Encoding: gzip` asks for gzip. Its answer
/// must not be stored as the variant of requests without `Accept-Encoding` (web cache poisoning:
/// every client that cannot decode gzip would be served it).
#[tokio::test]
async fn a_field_spelled_with_underscores_selects_a_variant_of_its_own() {
    let h = Harness::new().await;
    h.origin.reply("/v", varying("gzip body"));
    let edge = h.edge().await;
    let respelled = [("accept_encoding", "gzip")];
    let first = edge.get_with("/v", &respelled).await;
    assert!(first.stored(), "{}", first.cache_status());
    let again = edge.get_with("/v", &respelled).await;
    assert!(again.is_hit(), "{}", again.cache_status());

    h.origin.reply("/v", varying("identity body"));
    let plain = edge.get("/v").await;
    assert_eq!(plain.fwd(), Some("vary-miss"), "{}", plain.cache_status());
    assert_eq!(plain.text(), "identity body");
    let gzip = edge.get_with("/v", &[("accept-encoding", "gzip")]).await;
    assert_eq!(gzip.fwd(), Some("vary-miss"), "{}", gzip.cache_status());
    assert_eq!(h.origin.hits("/v"), 3);
}

#[tokio::test]
async fn variants_survive_a_restart_and_are_found_on_disk() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    h.origin.reply("/v", varying("gzip body"));
    edge.get_with("/v", &[("accept-encoding", "gzip")]).await;
    h.origin.reply("/v", varying("br body"));
    edge.get_with("/v", &[("accept-encoding", "br")]).await;

    let edge = edge.restart().await;
    let br = edge.get_with("/v", &[("accept-encoding", "br")]).await;
    assert_eq!(br.cache_status(), "edge; hit; ttl=600; detail=disk");
    assert_eq!(br.text(), "br body");
    let gzip = edge.get_with("/v", &[("accept-encoding", "gzip")]).await;
    assert!(gzip.is_hit(), "{}", gzip.cache_status());
    assert_eq!(gzip.text(), "gzip body");
    assert_eq!(h.origin.hits("/v"), 2);
}

#[tokio::test]
async fn invalidating_a_uri_removes_every_variant_from_both_tiers() {
    let h = Harness::new().await;
    let edge = h.edge().await;
    for encoding in ["gzip", "br"] {
        h.origin.reply("/v", varying(encoding));
        edge.get_with("/v", &[("accept-encoding", encoding)]).await;
    }
    h.origin.reply("/v", Reply::ok("").status(204));
    assert_eq!(edge.send(Method::DELETE, "/v", &[]).await.status, 204);

    h.origin.reply("/v", varying("fresh"));
    for encoding in ["gzip", "br"] {
        let after = edge.get_with("/v", &[("accept-encoding", encoding)]).await;
        assert!(!after.is_hit(), "{encoding}: {}", after.cache_status());
        assert_eq!(after.text(), "fresh");
    }
    // And from disk: after a restart nothing old comes back.
    let edge = edge.restart().await;
    h.clock.advance(Duration::from_secs(1));
    let gzip = edge.get_with("/v", &[("accept-encoding", "gzip")]).await;
    assert_eq!(gzip.text(), "fresh");
}

#[tokio::test]
async fn a_waiter_with_other_vary_values_does_not_get_the_leaders_variant() {
    let h = Harness::new().await;
    h.origin.reply(
        "/v",
        varying("for whoever asked first").delay(Duration::from_millis(300)),
    );
    let edge = h.edge().await;
    let (gzip, br) = tokio::join!(edge.get_with("/v", &[("accept-encoding", "gzip")]), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        edge.get_with("/v", &[("accept-encoding", "br")]).await
    });
    assert!(
        !br.cache_status().contains("collapsed"),
        "{}",
        br.cache_status()
    );
    assert!(
        !gzip.cache_status().contains("collapsed"),
        "{}",
        gzip.cache_status()
    );
    assert_eq!(
        h.origin.hits("/v"),
        2,
        "each variant was fetched for the request that selects it"
    );
}

#[tokio::test]
async fn waiters_with_the_same_other_vary_values_collapse_among_themselves() {
    let h = Harness::new().await;
    h.origin
        .reply("/v", varying("encoded").delay(Duration::from_millis(300)));
    let edge = h.edge().await;
    let gzip = edge.get_with("/v", &[("accept-encoding", "gzip")]);
    let brs = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        futures_util::future::join_all(
            (0..20).map(|_| edge.get_with("/v", &[("accept-encoding", "br")])),
        )
        .await
    };
    let (gzip, brs) = tokio::join!(gzip, brs);
    assert_eq!(gzip.text(), "encoded");
    assert_eq!(h.origin.hits("/v"), 2, "one fetch per variant");
    let collapsed = brs
        .iter()
        .filter(|r| r.cache_status().contains("collapsed"))
        .count();
    assert_eq!(
        collapsed, 19,
        "all br requests but one shared that one's fetch"
    );
    assert!(
        edge.get_with("/v", &[("accept-encoding", "br")])
            .await
            .is_hit()
    );
    assert!(
        edge.get_with("/v", &[("accept-encoding", "gzip")])
            .await
            .is_hit()
    );
}

/// A field the client names in `Connection` is not forwarded (RFC 9110 §7.6.1), so the origin
/// answers as if it were absent: the response is stored as the variant for its absence. It was
/// stored under the client's value, and served to the next client that sent that value.
#[tokio::test]
async fn a_field_named_in_connection_does_not_choose_the_variant_stored() {
    let h = Harness::new().await;
    h.origin.reply(
        "/lang",
        Reply::ok("default page")
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Language"),
    );
    let edge = h.edge().await;
    let hostile = edge
        .get_with(
            "/lang",
            &[("accept-language", "de"), ("connection", "Accept-Language")],
        )
        .await;
    assert!(hostile.stored(), "{}", hostile.cache_status());
    let seen = h.origin.last("/lang").unwrap().headers;
    assert!(seen.get("accept-language").is_none(), "{seen:?}");

    let german = edge.get_with("/lang", &[("accept-language", "de")]).await;
    assert!(!german.is_hit(), "{}", german.cache_status());
    assert_eq!(h.origin.hits("/lang"), 2);
    assert!(edge.get("/lang").await.is_hit());
}

/// The request header values a variant was selected by are kept with it, and a client chooses
/// them: with `Vary: X-Foo` and 32 KiB of `X-Foo` per request, the memory tier weighed each
/// variant by its one-byte body and headers only, and held 64 of them (2 MiB of values) within a
/// capacity of 1 MiB: a budget that many clients' values could outgrow without limit.
#[tokio::test]
async fn the_memory_tier_weighs_the_request_values_a_variant_was_selected_by() {
    const VALUE: usize = 32 << 10;
    const CAPACITY: u64 = 1 << 20;
    let h = Harness::new().await;
    let edge = h.edge_with(|c| c.cache.memory.capacity.0 = CAPACITY).await;
    for i in 0..64 {
        let path = format!("/v{i}");
        h.origin.reply(
            &path,
            Reply::ok("v")
                .header("cache-control", "max-age=600")
                .header("vary", "X-Foo"),
        );
        let value = format!("{i:04}{}", "f".repeat(VALUE - 4));
        let stored = edge.get_with(&path, &[("x-foo", &value)]).await;
        assert!(stored.stored(), "{}", stored.cache_status());
    }
    let metrics = edge.metrics().await;
    let entries = common::sample(&metrics, "edge_cache_entries{tier=\"memory\"}") as u64;
    let bytes = common::sample(&metrics, "edge_cache_bytes{tier=\"memory\"}") as u64;
    assert!(entries > 0, "{metrics}");
    assert!(
        bytes >= entries * VALUE as u64,
        "{entries} variants of {VALUE} bytes of request values each weighed {bytes} bytes"
    );
    assert!(
        entries * VALUE as u64 <= CAPACITY,
        "{entries} variants of {VALUE} bytes of request values each in a tier of {CAPACITY} bytes"
    );
}
