//! Micro-benchmarks of the CPU work on a cache hit and a store: key normalisation and hashing,
//! the freshness decision, and the record encoding the disk tier reads and writes.
//! `cargo bench --bench hot_path` (about 90 s of measuring on 2 cores); `-- --test` runs each once.
//!
//! Groups: `key/*` (primary key, Vary selection), `policy/*` (Cache-Control parsing, freshness,
//! storability, the serve-or-forward decision), `headers/*` (decorating a hit), `record/*`
//! (entry construction, encode and decode with the body inline or in a file).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use edge::cache::Tier;
use edge::cache::entry::{BodyRef, Decoded, Record, StoredEntry};
use edge::cache::key::{CacheKey, Scheme, Variance};
use edge::cache::policy::{self, CacheControl, Freshness};
use edge::config::HeuristicConfig;
use edge::headers::{self, CacheStatus};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Version};

/// A fixed clock, so every run measures the same branches: the response arrived at `RECEIVED`
/// and is used a minute later, well inside its hour of freshness.
const RECEIVED_SECS: u64 = 1_700_000_000;

fn received() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(RECEIVED_SECS)
}

fn now() -> SystemTime {
    received() + Duration::from_secs(60)
}

const SHORT_URL: &str = "http://origin.example/static/app.css";

/// A search-page URL with tracking parameters: about 1 KiB of query.
fn long_query_url() -> String {
    let mut url = String::from("http://origin.example/search/results?q=caching+reverse+proxy");
    for i in 0..40 {
        url.push_str(&format!("&utm_param_{i:02}=value-{i:04}-abcdef"));
    }
    url
}

/// A typical cacheable origin response: explicit freshness, both validators, a Date.
fn response_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    headers.insert(
        header::ETAG,
        HeaderValue::from_static("\"5f2b9c1e-4a3d-11ee-be56-0242ac120002\""),
    );
    headers.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_str(&httpdate::fmt_http_date(
            received() - Duration::from_secs(86_400),
        ))
        .unwrap(),
    );
    headers.insert(
        header::DATE,
        HeaderValue::from_str(&httpdate::fmt_http_date(received())).unwrap(),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    headers
}

/// The same response, varying on Accept-Encoding.
fn varying_response_headers() -> HeaderMap {
    let mut headers = response_headers();
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
    headers
}

/// What a browser sends.
fn request_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/css,*/*;q=0.1"),
    );
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("gzip, deflate, br, zstd"),
    );
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static(
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
    );
    headers
}

fn entry(body_len: usize, variance: Variance) -> StoredEntry {
    let body: Vec<u8> = (0..body_len).map(|i| (i * 31 % 251) as u8).collect();
    StoredEntry::new(
        SHORT_URL.to_owned(),
        StatusCode::OK,
        varying_response_headers(),
        variance,
        received(),
        received(),
        Bytes::from(body),
        &HeuristicConfig::default(),
    )
}

/// About 3.5 s a benchmark. Plots are off: on a 2-core machine drawing them doubled the run.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
}

fn key(c: &mut Criterion) {
    let mut group = c.benchmark_group("key");
    let short: reqwest::Url = SHORT_URL.parse().unwrap();
    let long: reqwest::Url = long_query_url().parse().unwrap();
    group.bench_function("new_short", |b| {
        b.iter(|| CacheKey::new(black_box(&short), Scheme::Http))
    });
    group.bench_function("new_long_query", |b| {
        b.iter(|| CacheKey::new(black_box(&long), Scheme::Http))
    });

    let response = varying_response_headers();
    let request = request_headers();
    group.bench_function("vary_names", |b| {
        b.iter(|| Variance::names(black_box(&response)))
    });
    let names = Variance::names(&response).expect("a list of field names");
    group.bench_function("vary_select", |b| {
        b.iter(|| Variance::select(black_box(&names), black_box(&request)))
    });
    let variance = Variance::select(&names, &request);
    let primary = *CacheKey::new(&short, Scheme::Http).hash();
    group.bench_function("variant_key", |b| {
        b.iter(|| black_box(&variance).variant_key(black_box(&primary)))
    });
    group.bench_function("vary_matches", |b| {
        b.iter(|| black_box(&variance).matches(black_box(&request)))
    });
    group.finish();
}

fn policy(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy");
    let heuristic = HeuristicConfig::default();
    let response = response_headers();
    let request = request_headers();
    group.bench_function("cc_of", |b| {
        b.iter(|| CacheControl::of(black_box(&response)))
    });
    group.bench_function("cc_governing", |b| {
        b.iter(|| CacheControl::governing(black_box(&response)))
    });
    let response_cc = CacheControl::governing(&response);
    let no_request_cc = CacheControl::of(&request);
    group.bench_function("check_storable", |b| {
        b.iter(|| {
            policy::check_storable(
                black_box(&Method::GET),
                black_box(request.contains_key(http::header::AUTHORIZATION)),
                black_box(&no_request_cc),
                black_box(StatusCode::OK),
                black_box(&response),
                black_box(&response_cc),
            )
        })
    });
    group.bench_function("freshness_of", |b| {
        b.iter(|| {
            Freshness::of(
                black_box(StatusCode::OK),
                black_box(&response),
                black_box(&response_cc),
                black_box(received()),
                black_box(received()),
                black_box(&heuristic),
            )
        })
    });

    let freshness = Freshness::of(
        StatusCode::OK,
        &response,
        &response_cc,
        received(),
        received(),
        &heuristic,
    );
    let mut revalidating = request.clone();
    revalidating.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
    let max_age_0 = CacheControl::of(&revalidating);
    assert!(policy::decide(&freshness, &no_request_cc, now()).is_ok());
    assert!(policy::decide(&freshness, &max_age_0, now()).is_err());
    group.bench_function("decide_fresh", |b| {
        b.iter(|| {
            policy::decide(
                black_box(&freshness),
                black_box(&no_request_cc),
                black_box(now()),
            )
        })
    });
    group.bench_function("decide_max_age_0", |b| {
        b.iter(|| {
            policy::decide(
                black_box(&freshness),
                black_box(&max_age_0),
                black_box(now()),
            )
        })
    });
    // The whole per-hit decision, parsing the request's Cache-Control included.
    group.bench_function("hit_decision", |b| {
        b.iter(|| {
            let request_cc = CacheControl::of(black_box(&request));
            policy::decide(black_box(&freshness), &request_cc, black_box(now()))
        })
    });
    group.finish();
}

fn headers(c: &mut Criterion) {
    let mut group = c.benchmark_group("headers");
    let stored = entry(0, Variance::default());
    // What a hit does with the stored header section: a response header map (values shared, not
    // copied) with room for Age, Content-Length and Cache-Status, and Cache-Status added.
    group.bench_function("hit_response_headers", |b| {
        b.iter(|| {
            let mut out = black_box(&stored).headers.to_map_with(4);
            CacheStatus::hit(Tier::Memory, black_box(3540)).add_to(&mut out);
            out
        })
    });
    // What a forwarded request's headers get: Via.
    group.bench_function("append_via", |b| {
        b.iter_batched(
            || stored.headers.to_map(),
            |mut out| {
                headers::append_via(&mut out, Version::HTTP_11);
                out
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn record(c: &mut Criterion) {
    let mut group = c.benchmark_group("record");
    let heuristic = HeuristicConfig::default();
    let variance = Variance::capture(&varying_response_headers(), &request_headers())
        .expect("a list of field names");

    // Building an entry from a fetched response (the headers and URL are moved in, as on a store).
    let body = Bytes::from(vec![7u8; 16 << 10]);
    group.bench_function("entry_new", |b| {
        b.iter_batched(
            || {
                (
                    SHORT_URL.to_owned(),
                    varying_response_headers(),
                    variance.clone(),
                )
            },
            |(url, headers, variance)| {
                StoredEntry::new(
                    url,
                    StatusCode::OK,
                    headers,
                    variance,
                    received(),
                    received(),
                    body.clone(),
                    &heuristic,
                )
            },
            BatchSize::SmallInput,
        )
    });

    for (name, size) in [("1k", 1usize << 10), ("16k", 16 << 10), ("256k", 256 << 10)] {
        let record = Record::Entry(Arc::new(entry(size, variance.clone())));
        let encoded = Bytes::from(record.encode(true));
        assert!(matches!(
            Record::decode(encoded.clone(), &heuristic),
            Ok(Decoded::Record(Record::Entry(_)))
        ));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| black_box(&record).encode(black_box(true)))
        });
        group.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| Record::decode(black_box(encoded.clone()), black_box(&heuristic)))
        });
    }

    // A body kept in a file (larger than the memory tier takes): the record holds only its
    // length and checksum, which the spool computed as the body streamed.
    group.throughput(Throughput::Elements(1));
    let spilled_body = vec![7u8; 4 << 20];
    let body_ref = BodyRef {
        len: spilled_body.len() as u64,
        checksum: *blake3::hash(&spilled_body).as_bytes(),
    };
    let detached = entry(0, variance.clone());
    let encoded = Bytes::from(detached.encode_detached(body_ref));
    assert!(matches!(
        Record::decode(encoded.clone(), &heuristic),
        Ok(Decoded::BodyElsewhere(_, _))
    ));
    group.bench_function("encode_detached", |b| {
        b.iter(|| black_box(&detached).encode_detached(black_box(body_ref)))
    });
    group.bench_function("decode_detached", |b| {
        b.iter(|| Record::decode(black_box(encoded.clone()), black_box(&heuristic)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = key, policy, headers, record
}
criterion_main!(benches);
