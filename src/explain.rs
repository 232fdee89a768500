//! Explain mode: `curl -I -H 'Edge-Debug: 1'` from an address in `explain.allow` adds headers
//! that say, in words, what edge did with the request and why.
//!
//! ```text
//! Edge-Debug-Key: /hello.txt; hash=4b84517d2effe5a0
//! Edge-Debug-Tier: memory
//! Edge-Debug-Freshness: 60s from Cache-Control: max-age
//! Edge-Debug-Age: 12s, fresh for 48s more
//! Edge-Debug-Stored: yes, served from the memory tier
//! ```

use std::time::Duration;

use axum::response::Response;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Uri};

use crate::cache::key::{CacheKey, Scheme};
use crate::cache::policy::{Forward, LifetimeSource};
use crate::headers::CacheStatus;
use crate::proxy::{Edge, Outcome, Settings};

static KEY: HeaderName = HeaderName::from_static("edge-debug-key");
static VARY: HeaderName = HeaderName::from_static("edge-debug-vary");
static TIER: HeaderName = HeaderName::from_static("edge-debug-tier");
static FRESHNESS: HeaderName = HeaderName::from_static("edge-debug-freshness");
static AGE: HeaderName = HeaderName::from_static("edge-debug-age");
static STORED: HeaderName = HeaderName::from_static("edge-debug-stored");

/// Adds the explanation of `outcome` to `response`, for the request of `asked`: its target,
/// method and scheme.
pub fn add_headers(
    edge: &Edge,
    settings: &Settings,
    asked: (&Uri, &Method, Scheme),
    outcome: &Outcome,
    response: &mut Response,
) {
    let (uri, method, scheme) = asked;
    let mut lines: Vec<(&HeaderName, String)> = Vec::new();
    if let Some(url) = settings.origin.url_for(uri) {
        let key = CacheKey::new(&url, scheme);
        let hash: String = key.hash()[..8].iter().map(|b| format!("{b:02x}")).collect();
        lines.push((&KEY, format!("{}; hash={hash}", key.url())));
    }
    if let Some(variance) = outcome.variance.as_ref().filter(|v| !v.is_empty()) {
        let fields: Vec<String> = variance
            .fields()
            .iter()
            .map(|(name, value)| match value {
                Some(value) => format!("{name}={value:?}"),
                None => format!("{name} absent"),
            })
            .collect();
        lines.push((&VARY, fields.join(", ")));
    }
    let status = &outcome.status;
    lines.push((&TIER, tier(status).to_owned()));
    if let Some(freshness) = &outcome.freshness {
        let source = match freshness.source {
            LifetimeSource::SMaxAge => "from s-maxage (shared caches only)".to_owned(),
            LifetimeSource::MaxAge => "from max-age".to_owned(),
            LifetimeSource::Expires => "from Expires - Date".to_owned(),
            LifetimeSource::Heuristic => format!(
                "heuristic: {}% of Date - Last-Modified, at most {} (cache.heuristic)",
                settings.cache.heuristic.fraction.0 * 100.0,
                humantime::format_duration(settings.cache.heuristic.max.0)
            ),
            LifetimeSource::Negative => {
                "cache.heuristic.negative_ttl: a 404 or 410 without explicit expiration".to_owned()
            }
            LifetimeSource::Default => {
                "cache.heuristic.default_ttl: no s-maxage, max-age, Expires or Last-Modified"
                    .to_owned()
            }
            LifetimeSource::None => {
                "none: no s-maxage, max-age, Expires or Last-Modified; revalidated on every use"
                    .to_owned()
            }
            LifetimeSource::Purged => "none: marked stale by a soft purge".to_owned(),
        };
        let mut text = format!("{} {source}", seconds(freshness.lifetime));
        if freshness.no_cache {
            text.push_str("; no-cache: revalidated on every use");
        }
        if freshness.must_revalidate {
            text.push_str("; must-revalidate: never served stale");
        }
        if let Some(window) = freshness.stale_while_revalidate {
            text.push_str(&format!("; stale-while-revalidate={}", window.as_secs()));
        }
        if let Some(window) = freshness.stale_if_error {
            text.push_str(&format!("; stale-if-error={}", window.as_secs()));
        }
        lines.push((&FRESHNESS, text));
        let now = edge.clock.now();
        let age = freshness.current_age(now);
        let ttl = freshness.ttl(now);
        let state = if ttl > 0 && !freshness.no_cache {
            format!("fresh for {ttl}s more")
        } else {
            format!("stale by {}s", -ttl)
        };
        lines.push((&AGE, format!("{}, {state}", seconds(age))));
    }
    lines.push((&STORED, stored(method, status)));
    let headers = response.headers_mut();
    for (name, value) in lines {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name.clone(), value);
        }
    }
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

fn tier(status: &CacheStatus) -> &'static str {
    match (status.hit, status.fwd) {
        (Some(tier), _) => tier.as_str(),
        (None, Some(_)) if status.detail == Some("stale-if-error") => "disk or memory (stale)",
        (None, Some(_)) if status.fwd_status.is_some() => "origin",
        _ => "none (edge answered itself)",
    }
}

fn stored(method: &Method, status: &CacheStatus) -> String {
    if method.as_str() == "PURGE" {
        return "no: a purge".to_owned();
    }
    if let Some(tier) = status.hit {
        return match status.detail {
            Some("stale-while-revalidate") => format!(
                "yes, served stale from the {} tier while it is revalidated in the background (stale-while-revalidate)",
                tier.as_str()
            ),
            _ => format!("yes, served from the {} tier", tier.as_str()),
        };
    }
    if status.detail == Some("stale-if-error") {
        return "yes, the stored copy was served stale because the origin failed (stale-if-error)"
            .to_owned();
    }
    if status.stored {
        return match (status.fwd, status.fwd_status) {
            (Some(Forward::Stale), Some(304)) => {
                "yes, revalidated: the origin answered 304 and the stored headers were updated"
                    .to_owned()
            }
            (Some(Forward::Stale), _) => {
                "yes, replaced: the stored copy was stale and the origin sent a new one".to_owned()
            }
            (Some(Forward::Request), _) => {
                "yes, refetched: the request's Cache-Control ruled out the stored copy".to_owned()
            }
            (_, _) if status.collapsed => {
                "yes, fetched once for this and other concurrent requests (collapsed)".to_owned()
            }
            _ => "yes, fetched from the origin and stored".to_owned(),
        };
    }
    let reason = match status.detail {
        Some("method") => "only GET and HEAD responses are stored".to_owned(),
        Some("no-store") => "Cache-Control: no-store (in the request or the response)".to_owned(),
        Some("private") => "Cache-Control: private; a shared cache must not store it".to_owned(),
        Some("authorization") => "the request carried Authorization and the response did not allow sharing it (public, s-maxage, or must-revalidate with a lifetime from the origin, not a heuristic)".to_owned(),
        Some("set-cookie") => "the response sets a cookie; edge never shares one".to_owned(),
        Some("proxy-authenticate") => "Proxy-Authenticate or Proxy-Authentication-Info: fields for edge, as the origin's client, that a cache must not store".to_owned(),
        Some("status") => format!(
            "status {} is not stored without explicit freshness (or is an error that would replace a stale copy)",
            status.fwd_status.unwrap_or_default()
        ),
        Some("vary-star") => "Vary: * can never be matched".to_owned(),
        Some("no-freshness") => "no freshness (s-maxage, max-age, Expires, Last-Modified) and no validator to revalidate with".to_owned(),
        Some("too-large") => "the body is larger than cache.max_object_size".to_owned(),
        Some(crate::fill::DISK_UNAVAILABLE) => "the body is larger than cache.memory.max_object_size, and the disk tier could not take it (it is off, has no room, or failed or hung beginning its file)".to_owned(),
        Some("only-if-cached") => "nothing stored, and the request said only-if-cached".to_owned(),
        Some("invalid-request") => "edge answered a malformed request itself".to_owned(),
        Some("trace") => "edge answered a TRACE itself (not allowed)".to_owned(),
        Some("transfer-coding") => {
            "edge answered a body in a transfer coding other than chunked itself".to_owned()
        }
        Some("purge") => "edge answered a purge itself".to_owned(),
        Some("not-allowed") => "a PURGE from an address outside purge.allow".to_owned(),
        Some("cookie") => "the request carried Cookie, and only cache.heuristic.default_ttl would have made the response fresh: it may be this client's own page".to_owned(),
        Some("origin-unreachable") => "the origin could not be reached".to_owned(),
        Some("origin-invalid") => "the origin sent a response edge could not read".to_owned(),
        Some("origin-busy") => "origin.max_connections requests were in flight to the origin for all of origin.connect_timeout".to_owned(),
        Some("origin-error") => "the origin answered an error to this request and to those collapsed with it".to_owned(),
        Some("origin-timeout") => "the origin did not answer in time (origin.timeout)".to_owned(),
        _ if status.fwd == Some(Forward::Method) => {
            format!("{method} requests go to the origin uncached")
        }
        Some(other) => other.to_owned(),
        None => "edge answered itself".to_owned(),
    };
    format!("no: {reason}")
}
