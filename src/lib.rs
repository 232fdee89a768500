//! edge: an HTTP caching reverse proxy for one origin, following RFC 9111 as a shared cache, with
//! a moka memory tier in front of a sled disk tier.
//!
//! [`Node`] is a whole edge node on listeners the caller has bound, so tests run it in-process;
//! [`serve`] opens one and runs it until a shutdown signal.

pub mod cache;
pub mod clock;
pub mod conditional;
pub mod config;
pub mod demo;
pub mod explain;
pub mod fill;
pub mod headers;
mod listener;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod range;
mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{info, warn};

use crate::cache::Cache;
use crate::cache::key::Scheme;
use crate::clock::Clock;
use crate::config::Config;
use crate::fill::Fills;
use crate::metrics::Metrics;
use crate::proxy::{Edge, Settings};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A running edge node's shared state: what [`Node::reload`] changes and [`Node::serve`] serves.
#[derive(Clone)]
pub struct Node {
    edge: Arc<Edge>,
}

impl Node {
    /// Opens the cache tiers and builds the origin client.
    pub async fn open(config: Config, clock: Clock) -> Result<Self, ServeError> {
        let cache = Arc::new(Cache::open(&config.cache).await);
        let fills = Fills::new(&config.cache);
        let edge = Arc::new(Edge {
            settings: ArcSwap::from_pointee(Settings::new(config)),
            metrics: Metrics::new(cache.clone()),
            cache,
            fills,
            clock,
            tasks: TaskTracker::new(),
            cut_off: std::sync::atomic::AtomicBool::new(false),
            hurry: tokio::sync::Notify::new(),
        });
        Ok(Self { edge })
    }

    /// Applies a new configuration without dropping the cache. Settings that are fixed once the
    /// node runs (listen addresses, tier sizes and the disk path) keep their running values; the
    /// names of those that differ are returned, so that the caller can say so. The TLS
    /// certificate and key are new for the handshakes from now on.
    pub fn reload(&self, mut config: Config) -> Vec<&'static str> {
        let current = self.edge.config();
        let running = &current.config;
        let mut kept = Vec::new();
        macro_rules! keep {
            ($($field:ident).+, $name:literal) => {
                if config.$($field).+ != running.$($field).+ {
                    kept.push($name);
                    config.$($field).+ = running.$($field).+.clone();
                }
            };
        }
        keep!(listen, "listen");
        keep!(proxy_protocol, "proxy_protocol");
        keep!(client_header_timeout, "client_header_timeout");
        keep!(send_timeout, "send_timeout");
        keep!(admin.listen, "admin.listen");
        keep!(cache.memory.capacity, "cache.memory.capacity");
        keep!(cache.memory.max_object_size, "cache.memory.max_object_size");
        keep!(cache.disk.path, "cache.disk.path");
        keep!(cache.disk.capacity, "cache.disk.capacity");
        keep!(cache.disk.min_free, "cache.disk.min_free");
        keep!(cache.hit_for_pass, "cache.hit_for_pass");
        // The HTTPS listener is there or not, on its address, until a restart; while it is, it
        // keeps a certificate.
        let tls_listen = |config: &Config| config.tls.as_ref().map(|tls| tls.listen);
        if tls_listen(&config) != tls_listen(running) {
            kept.push("tls.listen");
            match (&mut config.tls, &running.tls) {
                (Some(tls), Some(running)) => tls.listen = running.listen,
                (tls, running) => tls.clone_from(running),
            }
        }
        self.edge.cache.set_heuristic(config.cache.heuristic);
        self.edge.settings.store(Arc::new(Settings::new(config)));
        kept
    }

    /// Makes a shutdown under way stop waiting for the requests in flight (a second signal).
    pub fn hurry(&self) {
        self.edge.hurry.notify_one();
    }

    /// Serves client traffic on `listener` (and over HTTPS on `tls`, the `tls.listen` socket)
    /// and the admin API on `admin` until `shutdown` completes; then stops accepting, gives
    /// in-flight requests and background stores up to `shutdown_timeout` to finish, and flushes
    /// the disk tier.
    pub async fn serve(
        &self,
        listener: TcpListener,
        admin: TcpListener,
        tls: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let edge = self.edge.clone();
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });

        let admin_app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/metrics", get(metrics))
            .route("/purge", post(purge))
            .with_state(edge.clone());
        let limits = listener::Limits::of(&edge.config());
        let proxy_protocol: Arc<[ipnet::IpNet]> = edge.config().proxy_protocol.clone().into();
        // A request hyper answered itself: by its connection's scheme (on `tls.listen`, https).
        let rejected = {
            let edge = edge.clone();
            move |peer: listener::Peer, refused| {
                proxy::rejected(&edge, peer.addr, refused, peer.scheme());
            }
        };
        // A client listener, served by `handle` (each its own closure, so its own monomorphised
        // connection code).
        macro_rules! clients {
            ($listener:expr, $tls:expr, $handle:expr) => {
                tokio::spawn(listener::serve(
                    $listener,
                    limits,
                    proxy_protocol.clone(),
                    $tls,
                    Some(edge.metrics.clients.clone()),
                    stop.clone(),
                    $handle,
                    rejected.clone(),
                ))
            };
        }
        // The scheme of a request to `listen` is http, unless a TLS terminator in front says in
        // its PROXY header that it was https: only with `proxy_protocol` set is it read from the
        // connection. Written out, it costs nothing (read from it, ~200 instructions a request:
        // the handler's code is no longer specialised to it).
        let proxy = edge.clone();
        let main = if proxy_protocol.is_empty() {
            clients!(listener, None, move |peer: listener::Peer, request| {
                proxy::handle(proxy.clone(), peer.addr, request, Scheme::Http)
            })
        } else {
            clients!(listener, None, move |peer: listener::Peer, request| {
                proxy::handle(proxy.clone(), peer.addr, request, peer.scheme())
            })
        };
        let https = tls.map(|tls| {
            let proxy = edge.clone();
            let acceptor = Some(tls::acceptor(edge.clone()));
            clients!(tls, acceptor, move |peer: listener::Peer, request| {
                proxy::handle(proxy.clone(), peer.addr, request, Scheme::Https)
            })
        });
        let admin = listener::serve(
            admin,
            limits,
            Arc::new([]),
            None,
            None,
            stop.clone(),
            move |_, request| {
                admin_app
                    .clone()
                    .oneshot(request)
                    .map(|answer| match answer {
                        Ok(response) => response,
                        Err(never) => match never {},
                    })
            },
            |_, _| {},
        );
        let admin = tokio::spawn(admin);
        stop.cancelled().await;
        let limit = edge.config().shutdown_timeout.0;
        info!(timeout = ?limit, "shutting down: no new connections; finishing in-flight requests");
        let drain = async {
            let main = main.await;
            let admin = admin.await;
            let https = match https {
                Some(https) => https.await,
                None => Ok(Ok(())),
            };
            edge.tasks.close();
            edge.tasks.wait().await;
            (main, admin, https)
        };
        let drained = tokio::select! {
            drained = drain => Ok(drained),
            () = tokio::time::sleep(limit) => Err("shutdown_timeout passed"),
            () = edge.hurry.notified() => Err("a second stop signal came"),
        };
        let result = match drained {
            Ok((main, admin, https)) => {
                let main = main.map_err(std::io::Error::other)?;
                let admin = admin.map_err(std::io::Error::other)?;
                let https = https.map_err(std::io::Error::other)?;
                main.and(admin).and(https).map_err(ServeError::from)
            }
            Err(why) => {
                // A connection may hold no request: one part-way through its head, which hyper
                // waits for, holds the stop for the whole shutdown_timeout as well.
                let open = edge.metrics.clients.open();
                warn!(
                    connections = open,
                    "{why}; closing the client connections still open, with any request in flight on them"
                );
                edge.cut_off
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
        };
        edge.cache.flush().await;
        result
    }
}

/// Opens a node for `config` and serves it until `shutdown` completes.
pub async fn serve(
    config: Config,
    clock: Clock,
    listener: TcpListener,
    admin: TcpListener,
    tls: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    Node::open(config, clock)
        .await?
        .serve(listener, admin, tls, shutdown)
        .await
}

/// `GET /metrics`: the OpenMetrics text format, as prometheus-client writes it (its counters are
/// typed without `_total`, which the older Prometheus text format would not match).
async fn metrics(State(edge): State<Arc<Edge>>) -> Response {
    edge.cache.settle();
    let mut response = edge.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// `POST /purge?url=<path or absolute URL>`, `POST /purge?prefix=<path or absolute URL>` (every
/// URL that starts with it), `POST /purge?tag=<surrogate key>` (`&tag=<another>`…) or `POST /purge?all=true`
/// (everything), with `soft=true` to mark stale instead of deleting; the parameters may also
/// come as a form body (`curl --data-urlencode url=/a?b=1&c=2`). Answers with how many
/// responses were affected. The purge runs to its end even if the client goes away.
async fn purge(
    State(edge): State<Arc<Edge>>,
    RawQuery(raw): RawQuery,
    body: axum::body::Bytes,
) -> Response {
    // From the query and a form body alike; each parameter once, as a purge names one thing,
    // but for `tag`, which may name several (Fastly's and Cloudflare's purges take a list).
    let mut query = HashMap::new();
    let mut tags = Vec::new();
    let raw = raw.unwrap_or_default();
    for (name, value) in form_urlencoded::parse(raw.as_bytes()).chain(form_urlencoded::parse(&body))
    {
        if !matches!(&*name, "url" | "prefix" | "tag" | "all" | "soft") {
            return bad_request(format!(
                "unknown parameter {name:?} (a url with a query of its own is percent-encoded, or sent as a form body)"
            ));
        }
        if name == "tag" {
            if value.is_empty() {
                return bad_request("tag is empty: name the tag to purge".into());
            }
            tags.push(value.into_owned());
            continue;
        }
        if query.contains_key(&*name) {
            return bad_request(format!(
                "{name} given more than once: one purge names one thing"
            ));
        }
        query.insert(name.into_owned(), value.into_owned());
    }
    let soft = match query.get("soft").map(String::as_str) {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(other) => {
            return bad_request(format!(
                "soft must be true (or 1) or false (or 0), not {other:?}"
            ));
        }
    };
    let all = match query.get("all").map(String::as_str) {
        None => false,
        Some("true" | "1") => true,
        Some(other) => return bad_request(format!("all must be true (or 1), not {other:?}")),
    };
    let named = |name: &str| query.get(name).map(String::as_str);
    let tag = (!tags.is_empty()).then_some(());
    let body = match (named("url"), named("prefix"), tag, all) {
        (None, None, None, true) => {
            let purged = proxy::purge_all(&edge, soft).await;
            serde_json::json!({ "all": true, "purged": purged, "soft": soft })
        }
        (Some(url), None, None, false) => {
            let Some(target) = purge_target(&edge, url) else {
                return bad_request(format!(
                    "url {url:?} is not a path or an absolute http(s) URL edge serves"
                ));
            };
            let purged = proxy::purge_url(&edge, &target, soft).await;
            let key = cache::key::CacheKey::new(&target, Scheme::Http);
            serde_json::json!({ "url": key.url(), "purged": purged, "soft": soft })
        }
        (None, Some(prefix), None, false) => {
            let Some(key_prefix) = purge_prefix(&edge, prefix) else {
                return bad_request(format!(
                    "prefix {prefix:?} is not a path (starting with /) or an absolute http(s) URL"
                ));
            };
            let purged = proxy::purge_prefix(&edge, &key_prefix, soft).await;
            serde_json::json!({ "prefix": key_prefix, "purged": purged, "soft": soft })
        }
        (None, None, Some(()), false) => {
            let purged = proxy::purge_tags(&edge, &tags, soft).await;
            match &tags[..] {
                [tag] => serde_json::json!({ "tag": tag, "purged": purged, "soft": soft }),
                _ => serde_json::json!({ "tags": tags, "purged": purged, "soft": soft }),
            }
        }
        _ => {
            return bad_request(
                "a purge names one thing: give exactly one of url=<path or URL>, prefix=<path or URL>, tag=<tag> (or several: tag=a&tag=b) or all=true".into(),
            );
        }
    };
    let mut response = format!("{body}\n").into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The origin URL a purge names: a path (`/a?b`), or an absolute URL whose path and query are
/// taken (edge serves one origin, under whatever host name clients use for it, by http and
/// https: both are purged).
fn purge_target(edge: &Edge, url: &str) -> Option<url::Url> {
    edge.config().origin.url_for(&purge_path(url)?)
}

/// The path and query of a purge's `url` or `prefix`: itself, or an absolute http(s) URL's.
fn purge_path(url: &str) -> Option<http::Uri> {
    purge_uri(url)?.path_and_query()?.as_str().parse().ok()
}

/// A purge's `url` or `prefix` as a URI: a path, or an absolute URL of a scheme edge serves.
fn purge_uri(text: &str) -> Option<http::Uri> {
    let uri: http::Uri = text.parse().ok()?;
    matches!(uri.scheme_str(), None | Some("http" | "https")).then_some(uri)
}

/// The start of [`cache::key::CacheKey::target`] (of http and https keys alike) that a purge's
/// `prefix` stands for: mapped as
/// [`purge_target`] maps a `url` (but for the query rules), and for its end, which may be part of a path segment
/// (`/img/a` is a prefix of `/img/a.png`) and is not resolved as a whole one would be (`/img/.`
/// is not `/img/`). `None` for what is neither a path nor an absolute http(s) URL.
fn purge_prefix(edge: &Edge, prefix: &str) -> Option<String> {
    let uri = purge_uri(prefix)?;
    // Mapped with a character after it, which keeps its end from being taken for a whole
    // segment, and then taken off again: percent-encoding is per character. Its query is the
    // start of stored ones, which `origin.strip_query` and `sort_query` have made already: one
    // cut or reordered as a request's would be is the start of others.
    let path = purge_path(&format!("{}x", uri.path_and_query()?))?;
    let target = edge.config().origin.url_as_written(&path)?;
    let key = cache::key::CacheKey::new(&target, Scheme::Http);
    key.url().strip_suffix('x').map(str::to_owned)
}

fn bad_request(message: String) -> Response {
    let body = serde_json::json!({ "error": message });
    let json = [(header::CONTENT_TYPE, "application/json")];
    (StatusCode::BAD_REQUEST, json, format!("{body}\n")).into_response()
}
