//! The HTTP server's connection handling, before any request reaches the router: at most
//! `max_connections` at once (more wait in the kernel's backlog), a deadline for each request's
//! headers (which also closes idle keep-alive connections), and a bounded drain at shutdown.
//! All of it applies before authentication, so sockets that never send a full request cannot
//! starve clients that hold the token.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::NodeContext;

/// How long streams get to deliver their final error event once the drain is over.
const FLUSH: Duration = Duration::from_secs(3);

/// Serves `app` on `listener` until `shutdown` resolves, then drains: no new connections,
/// in-flight requests get `drain_secs`, after which streams end with an error event (see
/// [`NodeContext::halted`]) and the rest are dropped.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    ctx: Arc<NodeContext>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let config = &ctx.config;
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.header_timeout_secs))
        .max_headers(100);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    let mut warned_full = false;
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        if slots.available_permits() == 0 && !warned_full {
            warned_full = true;
            tracing::warn!(
                max = config.max_connections,
                "the API holds its maximum of HTTP connections; new ones wait (raise --max-connections if these are real clients)"
            );
        } else if slots.available_permits() > config.max_connections / 2 {
            warned_full = false;
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept: wait a
                    // moment instead of spinning, and keep serving the ones we have.
                    tracing::warn!("accepting an API connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "API connection ended: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    let drain = Duration::from_secs(ctx.config.drain_secs);
    tracing::info!(
        secs = drain.as_secs(),
        "shutting down: finishing in-flight requests"
    );
    let done = graceful.shutdown();
    tokio::pin!(done);
    if tokio::time::timeout(drain, &mut done).await.is_err() {
        tracing::warn!(
            secs = drain.as_secs(),
            "in-flight requests outlived the drain; ending them with an error"
        );
        ctx.halt.send_replace(true);
        let _ = tokio::time::timeout(FLUSH, &mut done).await;
    }
}
