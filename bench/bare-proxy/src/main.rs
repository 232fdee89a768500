//! `bare-proxy LISTEN ORIGIN`: forwards every request to ORIGIN (host:port) over kept-alive
//! HTTP/1.1 connections and returns the answer as it came: hyper's server and client on a
//! current-thread runtime, as edge runs on one core, and none of a cache's work (no key, lookup,
//! header rewriting, storability check, timeouts or metrics). What it costs per request is the
//! least a hyper-based pass-through can cost.
use std::cell::RefCell;
use std::rc::Rc;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Idle origin connections; a request takes the last one put back, or opens one.
type Pool = Rc<RefCell<Vec<SendRequest<Incoming>>>>;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(origin)) = (args.next(), args.next()) else {
        eprintln!(
            "usage: bare-proxy LISTEN ORIGIN   e.g. bare-proxy 127.0.0.1:19400 127.0.0.1:9000"
        );
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(&listen).await.expect("listen");
        let origin: Rc<str> = origin.into();
        let pool = Pool::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (pool, origin) = (pool.clone(), origin.clone());
            tokio::task::spawn_local(async move {
                let service =
                    service_fn(move |request| forward(pool.clone(), origin.clone(), request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn forward(
    pool: Pool,
    origin: Rc<str>,
    request: Request<Incoming>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    // The last connection put back that the origin has not closed meanwhile (it closes idle
    // ones after its keepalive_timeout), or a new one.
    let idle = std::iter::from_fn(|| pool.borrow_mut().pop()).find(|sender| !sender.is_closed());
    let mut sender = match idle {
        Some(sender) => sender,
        None => {
            let io = TcpStream::connect(&*origin).await?;
            io.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
            tokio::task::spawn_local(connection);
            sender
        }
    };
    // Waits until the connection has finished reading the response it carried before.
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    pool.borrow_mut().push(sender);
    Ok(response)
}
