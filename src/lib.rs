//! edge: an HTTP caching reverse proxy for one origin, following RFC 9111 as a shared cache, with
//! a moka memory tier in front of a sled disk tier.
//!
//! [`serve`] runs a whole edge node on listeners the caller has bound, so tests run it in-process.

pub mod cache;
pub mod clock;
pub mod conditional;
pub mod config;
pub mod demo;
pub mod fill;
pub mod headers;
pub mod origin;
pub mod proxy;
pub mod range;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::Cache;
use crate::clock::Clock;
use crate::config::Config;
use crate::fill::Fills;
use crate::origin::Origin;
use crate::proxy::Edge;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the origin client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves client traffic on `listener` and the admin API on `admin` until `shutdown` completes,
/// then finishes in-flight requests and background stores and flushes the disk tier.
pub async fn serve(
    config: Config,
    clock: Clock,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let origin = Origin::new(&config.origin)?;
    let cache = Arc::new(Cache::open(&config.cache).await);
    let tasks = TaskTracker::new();
    let fills = Fills::new(&config.cache);
    let edge = Arc::new(Edge {
        config,
        origin,
        cache: cache.clone(),
        fills,
        clock,
        tasks: tasks.clone(),
    });

    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });

    let app = Router::new().fallback(proxy::handle).with_state(edge);
    let admin_app = Router::new().route("/healthz", get(|| async { "ok\n" }));
    let main = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.clone().cancelled_owned());
    let admin = axum::serve(admin, admin_app).with_graceful_shutdown(stop.cancelled_owned());
    let (main, admin) = tokio::join!(main.into_future(), admin.into_future());
    tasks.close();
    tasks.wait().await;
    cache.flush().await;
    main?;
    admin?;
    Ok(())
}
