//! The IPC server: accepts local-socket connections and serves each one until it closes.
//!
//! [`run`] takes an already-bound listener and a shutdown future (mini-redis style), so tests run
//! the real server in-process and `main` only wires things together. Shutdown has an order:
//! stop accepting, refuse new streams, let streams in flight finish up to the drain deadline,
//! then cancel what is left and wait for every connection to close.

pub mod connection;
pub mod socket;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use interprocess::local_socket::tokio::Listener;
use interprocess::local_socket::traits::tokio::Listener as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::router::Router;
use crate::sim::SimProvider;
use crate::state::StateStore;

/// Everything a connection needs.
pub struct Context {
    router: RwLock<Arc<Router>>,
    /// When the daemon started.
    pub started: Instant,
    /// The pool is the built-in simulated providers.
    pub simulated: bool,
    /// Simulated providers by name, for fault injection.
    pub sims: HashMap<String, SimProvider>,
    /// The state store, if one could be opened.
    pub state: Option<StateStore>,
    /// Cancelled when a client asks the daemon to shut down.
    pub shutdown_requested: CancellationToken,
    /// Cancelled when shutdown begins: no new streams.
    pub draining: CancellationToken,
    /// Cancelled when the drain deadline passes: streams still running are cut.
    pub hard_stop: CancellationToken,
    /// Tracks every chat stream, so shutdown can wait for them.
    pub streams: TaskTracker,
}

impl Context {
    /// A context around `router`.
    pub fn new(
        router: Router,
        simulated: bool,
        sims: HashMap<String, SimProvider>,
        state: Option<StateStore>,
    ) -> Self {
        Context {
            router: RwLock::new(Arc::new(router)),
            started: Instant::now(),
            simulated,
            sims,
            state,
            shutdown_requested: CancellationToken::new(),
            draining: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            streams: TaskTracker::new(),
        }
    }

    /// The router in force (replaced on config reload; running streams keep the old one).
    pub fn router(&self) -> Arc<Router> {
        self.router
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Swap in a new router.
    pub fn replace_router(&self, router: Router) {
        *self.router.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(router);
    }
}

/// Serve connections on `listener` until `shutdown` resolves (or a client asks to stop), then
/// drain streams for up to `drain` and return once every connection is closed.
pub async fn run(
    listener: Listener,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    let ctx = ctx.clone();
                    connections.spawn(connection::serve(stream, ctx));
                }
                Err(e) => {
                    // Running out of file descriptors, typically: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = &mut shutdown => break,
            _ = ctx.shutdown_requested.cancelled() => break,
        }
    }
    tracing::info!(
        in_flight = ctx.router().in_flight(),
        "shutting down: draining streams"
    );
    drop(listener);
    ctx.draining.cancel();
    ctx.streams.close();
    if tokio::time::timeout(drain, ctx.streams.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; cancelling the streams still running");
    }
    ctx.hard_stop.cancel();
    connections.close();
    // Connections end promptly once hard_stop fires; bound the wait anyway.
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
}
