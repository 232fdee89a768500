//! A demo origin: serves a directory with `Cache-Control: public, max-age=60` and
//! `Last-Modified`, and logs each request it receives, so a newcomer can watch edge answer
//! the second request without the origin seeing it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use http::HeaderValue;
use http::header::CACHE_CONTROL;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;
use tracing::info;

/// The demo origin's routes: the files under `root`.
pub fn router(root: PathBuf) -> Router {
    let served = Arc::new(AtomicU64::new(0));
    Router::new()
        .fallback_service(ServeDir::new(root))
        .layer(SetResponseHeaderLayer::if_not_present(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        ))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let served = served.clone();
            async move { log_request(&served, request, next).await }
        }))
}

async fn log_request(served: &AtomicU64, request: Request, next: Next) -> Response {
    let count = served.fetch_add(1, Ordering::Relaxed) + 1;
    info!(method = %request.method(), uri = %request.uri(), requests_so_far = count, "demo origin request");
    next.run(request).await
}
