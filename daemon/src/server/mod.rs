//! The IPC server: accepts local-socket connections and serves each one until it closes.
//!
//! [`run`] takes an already-bound listener and a shutdown future (mini-redis style), so tests run
//! the real server in-process and `main` only wires things together. Shutdown has an order:
//! stop accepting, refuse new streams, hand over to the next daemon (the caller's `hand_over`:
//! everything a new daemon needs is let go here, so a restart does not wait for the drain), let
//! streams in flight finish up to the drain deadline, then cancel what is left and wait for
//! every connection to close.

pub mod connection;
pub mod limits;
pub mod memory;
pub mod socket;

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use interprocess::local_socket::tokio::Listener;
use interprocess::local_socket::traits::tokio::Listener as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ProviderConfig;
use crate::router::Router;
use crate::sim::{SimProvider, Sims};
use crate::state::StateStore;

/// Everything a connection needs.
pub struct Context {
    router: RwLock<Arc<Router>>,
    /// When the daemon started.
    pub started: Instant,
    /// The simulated providers, once started (they keep running across reloads): their
    /// configs, and the servers by name for fault injection.
    sims: std::sync::Mutex<Option<Sims>>,
    /// The HTTP client every provider shares.
    pub http: reqwest::Client,
    /// Live client connections.
    pub conns: limits::ConnTable,
    /// Bytes of requests held in memory, over both front ends.
    pub memory: Arc<memory::RequestMemory>,
    /// Things the user should know about the daemon itself (state recovered, ...), for status.
    pub notes: Vec<String>,
    /// Things learnt about the daemon itself after it started (its HTTP port taken), for
    /// status.
    later_notes: std::sync::Mutex<Vec<String>>,
    /// What the config in force, and the last reload, left the user to fix (providers without
    /// their key, a refused reload), for status; replaced on every reload.
    config_notes: std::sync::Mutex<ConfigNotes>,
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
    /// Counters fed by every request record, for `GET /metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The HTTP front end's base URL and token, once it listens (`mythos env`).
    pub front_end: std::sync::OnceLock<(String, String)>,
    /// Where reloads are asked for (`SIGHUP`, `mythos daemon reload`), once the task that
    /// carries them out, one at a time, runs.
    pub reloads: std::sync::OnceLock<tokio::sync::mpsc::Sender<ReloadAsk>>,
}

/// A reload asked for; the answer, if someone waits for it, is `Err(why)` when it was refused.
pub type ReloadAsk = Option<tokio::sync::oneshot::Sender<Result<(), String>>>;

impl Context {
    /// A context around `router`.
    pub fn new(
        router: Router,
        sims: Option<Sims>,
        state: Option<StateStore>,
        http: reqwest::Client,
    ) -> Self {
        let router = Arc::new(router);
        router.publish();
        Context {
            router: RwLock::new(router),
            started: Instant::now(),
            sims: std::sync::Mutex::new(sims),
            http,
            conns: limits::ConnTable::new(crate::config::ServerConfig::default().max_connections),
            memory: memory::RequestMemory::new(memory::DEFAULT_MIB << 20),
            notes: Vec::new(),
            later_notes: std::sync::Mutex::default(),
            config_notes: std::sync::Mutex::default(),
            state,
            shutdown_requested: CancellationToken::new(),
            draining: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            streams: TaskTracker::new(),
            metrics: Arc::new(crate::metrics::Metrics::default()),
            front_end: std::sync::OnceLock::new(),
            reloads: std::sync::OnceLock::new(),
        }
    }

    /// Use `metrics` (the ones the router's records feed).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The daemon's view of itself and of every provider, as `status` reports it.
    pub fn status_report(&self) -> mythos_protocol::StatusReport {
        let router = self.router();
        mythos_protocol::StatusReport {
            build: connection::BUILD.to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            in_flight: router.in_flight(),
            simulated: router.is_simulated(),
            providers: router.status(),
            notes: self.notes(),
            recent_failovers: self.metrics.recent_failovers(),
            restart_command: crate::supervisor::restart_command(),
        }
    }

    /// What the user should know about this daemon's set-up: a state database moved aside,
    /// providers skipped for want of a key, a refused reload (for `status` and `/health`).
    pub fn notes(&self) -> Vec<String> {
        let later = self
            .later_notes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.notes
            .iter()
            .cloned()
            .chain(later)
            .chain(self.state.as_ref().and_then(StateStore::trouble))
            .chain(self.config_notes_lock().all())
            .collect()
    }

    /// Add a note about the daemon itself, for `status` and `/health`.
    pub fn add_note(&self, note: String) {
        self.later_notes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(note);
    }

    /// The router in force (replaced on config reload; running streams keep the old one).
    pub fn router(&self) -> Arc<Router> {
        self.router
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Things to tell the user in `status`.
    pub fn with_notes(mut self, notes: Vec<String>) -> Self {
        self.notes = notes;
        self
    }

    /// What the config now in force leaves to fix, for `status`; a reload that succeeds
    /// replaces it, and clears the note of an earlier refused reload.
    pub fn set_config_warnings(&self, warnings: Vec<String>) {
        *self.config_notes_lock() = ConfigNotes {
            warnings,
            refused: None,
        };
    }

    /// A reload was refused for `why`: the config before it stays, and `status` says so until
    /// a reload succeeds.
    pub fn reload_refused(&self, why: String) {
        self.config_notes_lock().refused = Some(why);
    }

    /// Reload the config and wait for the outcome: `Err(why)` when it was refused (the config
    /// before it stays) or no reload can be made now.
    pub async fn reload(&self) -> Result<(), String> {
        let Some(asks) = self.reloads.get() else {
            return Err("the daemon is still starting; try again in a moment".into());
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if asks.send(Some(tx)).await.is_err() {
            return Err("the daemon is stopping".into());
        }
        rx.await
            .unwrap_or_else(|_| Err("the daemon is stopping".into()))
    }

    fn config_notes_lock(&self) -> std::sync::MutexGuard<'_, ConfigNotes> {
        self.config_notes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Use `table` for connections (the cap from the config, fitted to the fd limit).
    pub fn with_connection_table(mut self, table: limits::ConnTable) -> Self {
        self.conns = table;
        self
    }

    /// Hold at most `bytes` of requests in memory at once.
    pub fn with_request_memory(mut self, bytes: usize) -> Self {
        self.memory = memory::RequestMemory::new(bytes);
        self
    }

    /// Swap in a new router.
    pub fn replace_router(&self, router: Router) {
        let router = Arc::new(router);
        router.publish();
        *self.router.write().unwrap_or_else(|e| e.into_inner()) = router;
    }

    fn sims_lock(&self) -> std::sync::MutexGuard<'_, Option<Sims>> {
        self.sims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The simulated provider `name`, if the daemon runs on simulated providers now.
    pub fn sim(&self, name: &str) -> Option<SimProvider> {
        if !self.router().is_simulated() {
            return None;
        }
        self.sims_lock()
            .as_ref()
            .and_then(|(_, sims)| sims.get(name).cloned())
    }

    /// The simulated providers' configs, starting them if they are not running yet.
    pub async fn sims_or_start(&self) -> std::io::Result<Vec<ProviderConfig>> {
        if let Some((configs, _)) = self.sims_lock().as_ref() {
            return Ok(configs.clone());
        }
        let (configs, sims) = crate::sim::start_builtin().await?;
        let mut slot = self.sims_lock();
        let (configs, _) = slot.get_or_insert((configs, sims));
        Ok(configs.clone())
    }

    /// Stop the simulated providers (at shutdown).
    pub fn stop_sims(&self) {
        if let Some((_, sims)) = self.sims_lock().as_ref() {
            for sim in sims.values() {
                sim.shutdown();
            }
        }
    }
}

/// The config's notes for `status`.
#[derive(Debug, Default)]
struct ConfigNotes {
    /// Of the config in force (providers skipped for want of a key).
    warnings: Vec<String>,
    /// Why the last reload was refused, if it was.
    refused: Option<String>,
}

impl ConfigNotes {
    fn all(&self) -> Vec<String> {
        let refused = self.refused.as_ref().map(|why| {
            format!("the last config reload was refused, the config before it stays: {why}")
        });
        self.warnings.iter().cloned().chain(refused).collect()
    }
}

/// The peer's uid when it is not this daemon's (Unix; elsewhere, or unknown: `None`).
fn foreign_peer(stream: &interprocess::local_socket::tokio::Stream) -> Option<u32> {
    #[cfg(unix)]
    {
        use interprocess::local_socket::traits::StreamCommon as _;
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let peer = stream.peer_creds().ok()?.euid()?;
        (peer != uid).then_some(peer)
    }
    #[cfg(not(unix))]
    {
        let _ = stream;
        None
    }
}

/// Serve connections on `listener` until `shutdown` resolves (or a client asks to stop), then
/// close it, run `hand_over`, drain streams for up to `drain` (counted from the stop) and
/// return once every connection is closed.
pub async fn run(
    listener: Listener,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()>,
    hand_over: impl Future<Output = ()>,
    drain: Duration,
) {
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    // Accept errors (out of file descriptors, typically) back off exponentially and are logged
    // once per burst, instead of spinning and logging ten times a second.
    let mut backoff = Duration::ZERO;
    let mut failed = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    if failed > 0 {
                        tracing::info!(errors = failed, "accepting connections again");
                        failed = 0;
                    }
                    backoff = Duration::ZERO;
                    if let Some(uid) = foreign_peer(&stream) {
                        // The socket is 0600 in a 0700 directory; this is the last line.
                        tracing::warn!(peer_uid = uid, "refused a connection from another user");
                        continue;
                    }
                    match ctx.conns.admit(Instant::now()) {
                        Some(seat) => {
                            let ctx = ctx.clone();
                            connections.spawn(connection::serve(stream, ctx, seat));
                        }
                        None => {
                            tracing::warn!(
                                max = ctx.conns.max(),
                                "every connection is busy and the reserve is full: refusing one"
                            );
                            drop(stream);
                        }
                    }
                }
                Err(e) => {
                    if failed == 0 {
                        tracing::error!(error = %e, "accept failed; backing off");
                    }
                    failed += 1;
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    tokio::time::sleep(backoff).await;
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
    let deadline = Instant::now() + drain;
    drop(listener);
    ctx.draining.cancel();
    ctx.streams.close();
    // The streams in flight go on meanwhile: they are tasks of their own.
    hand_over.await;
    if tokio::time::timeout_at(deadline, ctx.streams.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; cancelling the streams still running");
    }
    ctx.hard_stop.cancel();
    connections.close();
    // Connections end promptly once hard_stop fires; bound the wait anyway.
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
    // So do the streams that were cut, the HTTP front end's among them (a dropped response
    // hands its route to the tracker): their last act is to record the request, which the
    // caller's final flush of the state then writes.
    let _ = tokio::time::timeout(Duration::from_secs(2), ctx.streams.wait()).await;
}

#[cfg(test)]
mod tests;
