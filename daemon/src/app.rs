//! Wiring: configuration → providers (real or simulated) → router → state → server.
//!
//! Kept apart from `main` so the end-to-end tests and the benchmark can start the same daemon
//! in-process when they want to.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, ProviderConfig};
use crate::provider::{http_client, HttpTransport};
use crate::router::{RecordSink, RoutedProvider, Router};
use crate::server::Context;
use crate::state::StateStore;

/// Options of one daemon run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Config file path (missing is fine).
    pub config: PathBuf,
    /// State directory (database, logs).
    pub state_dir: PathBuf,
    /// Use the simulated providers even if keys are set.
    pub simulate: bool,
    /// The process's file descriptor limit, if known: the connection cap is fitted under it.
    pub fd_limit: Option<u64>,
}

/// The connection cap: the configured one, lowered so that everything it lets in fits in the
/// fd limit: `cap` socket clients, the HTTP front end's `cap / 2` connections, an upstream
/// stream for each of those, the reserve seats (16) and the daemon's own files (64). Under
/// macOS's usual 256 that is 58 socket clients; it counted only the first two before, and 96
/// chats plus 48 HTTP streams ran out of descriptors well inside the caps.
pub fn connection_cap(configured: usize, fd_limit: Option<u64>) -> usize {
    match fd_limit {
        Some(n) => configured.min(((n.saturating_sub(64 + 16)) / 3).max(8) as usize),
        None => configured,
    }
}

/// Routed providers over `client` for `providers`.
pub fn routed(providers: &[ProviderConfig], client: &reqwest::Client) -> Vec<RoutedProvider> {
    providers
        .iter()
        .map(|p| RoutedProvider {
            cfg: p.clone(),
            transport: Arc::new(HttpTransport::new(p.clone(), client.clone())),
        })
        .collect()
}

/// Build a router over `providers`, restoring saved health.
pub fn build_router(
    providers: &[ProviderConfig],
    cfg: &Config,
    state: Option<&StateStore>,
    saved: &[crate::router::health::SavedHealth],
    next_record: u64,
    client: &reqwest::Client,
    metrics: Arc<crate::metrics::Metrics>,
) -> Router {
    let mut sinks: Vec<Arc<dyn RecordSink>> = vec![metrics];
    if let Some(s) = state {
        sinks.push(Arc::new(s.clone()));
    }
    let sink = Some(Arc::new(crate::metrics::Tee(sinks)) as Arc<dyn RecordSink>);
    let router = Router::new(
        routed(providers, client),
        cfg.routing.clone(),
        sink,
        next_record,
    );
    router
        .health()
        .restore(saved, Instant::now(), now_unix_ms());
    router
}

pub use mythos_protocol::clock::now_unix_ms;

/// A ready daemon, before it serves.
pub struct Prepared {
    /// Shared context for the server.
    pub ctx: Arc<Context>,
    /// Loaded configuration.
    pub config: Config,
    /// The state thread, joined at exit so the last writes land.
    pub state_thread: Option<std::thread::JoinHandle<()>>,
    /// Another daemon holds the state directory: this one leaves its files (the HTTP address)
    /// alone.
    pub state_held_elsewhere: bool,
}

/// How long a starting daemon waits for another to let go of the state database: a daemon
/// restarted while the old one writes its last records, or still drains (on Windows its pipe
/// is free by then). Under the client's 10 s wait for a daemon it started to be ready.
const STATE_LOCK_WAIT: Duration = Duration::from_secs(8);

/// Open the state database, waiting up to [`STATE_LOCK_WAIT`] while another daemon holds it.
async fn open_state(
    path: &std::path::Path,
) -> Result<
    (
        StateStore,
        crate::state::Loaded,
        std::thread::JoinHandle<()>,
        Option<String>,
    ),
    crate::state::StateError,
> {
    let give_up = Instant::now() + STATE_LOCK_WAIT;
    loop {
        match StateStore::open_or_recover(path) {
            Err(crate::state::StateError::InUse { .. }) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Load config, open state, start simulated providers if needed, build the router.
pub async fn prepare(opts: &Options) -> Result<Prepared, String> {
    let config = Config::load(&opts.config).map_err(|e| e.to_string())?;
    let client = http_client().map_err(|e| format!("cannot set up the HTTPS client: {e}"))?;
    let mut notes = Vec::new();
    let mut held_elsewhere = false;
    let opened = match std::fs::create_dir_all(&opts.state_dir) {
        Ok(()) => open_state(&opts.state_dir.join("state.db"))
            .await
            .map_err(|e| {
                held_elsewhere = matches!(e, crate::state::StateError::InUse { .. });
                e.to_string()
            }),
        Err(e) => Err(format!("cannot create {}: {e}", opts.state_dir.display())),
    };
    let (state, loaded, thread) = match opened {
        Ok((s, l, t, note)) => {
            if let Some(note) = note {
                tracing::warn!("{note}");
                notes.push(note);
            }
            (Some(s), Some(l), Some(t))
        }
        Err(e) => {
            // Routing works without persistence; say so loudly and carry on.
            tracing::error!(error = %e, "running without persistent state");
            notes.push(format!("running without saved state: {e}"));
            (None, None, None)
        }
    };
    let (saved, next_record) = loaded
        .map(|l| (l.health, l.next_record))
        .unwrap_or_default();

    let simulated = opts.simulate || config.providers.is_empty();
    let (providers, sims) = if simulated {
        if !opts.simulate {
            tracing::warn!(
                "no API keys found ({}): using the built-in simulated providers",
                crate::config::KEY_ENV_VARS.join(", ")
            );
        }
        crate::sim::start_builtin()
            .await
            .map_err(|e| format!("cannot start simulated providers: {e}"))?
    } else {
        (config.providers.clone(), HashMap::new())
    };
    for p in &providers {
        tracing::info!(provider = %p.name, api = p.api.as_str(), model = %p.model,
                       priority = p.priority, simulated = p.simulated, "provider registered");
    }
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let router = build_router(
        &providers,
        &config,
        state.as_ref(),
        &saved,
        next_record,
        &client,
        metrics.clone(),
    );
    let sims = simulated.then_some((providers.clone(), sims));
    let cap = connection_cap(config.server.max_connections, opts.fd_limit);
    tracing::info!(
        max_connections = cap,
        fd_limit = opts.fd_limit,
        "connection limit"
    );
    let ctx = Arc::new(
        Context::new(router, sims, state, client)
            .with_connection_table(crate::server::limits::ConnTable::new(cap))
            .with_metrics(metrics)
            .with_notes(notes),
    );
    Ok(Prepared {
        ctx,
        config,
        state_thread: thread,
        state_held_elsewhere: held_elsewhere,
    })
}

/// Save health now.
pub fn save_health(ctx: &Context) {
    if let Some(state) = &ctx.state {
        let snapshot = ctx.router().health().save(Instant::now(), now_unix_ms());
        state.save_health(snapshot);
    }
}

/// Every few seconds while the daemon runs, off the request path: save health, notice that the
/// machine slept (see [`crate::suspend`]), and once a burst of traffic is over, hand freed
/// memory back to the OS.
pub fn spawn_health_saver(ctx: Arc<Context>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        let mut seen = ctx.router().next_record_id();
        let mut busy_since_trim = false;
        let mut sleeps = crate::suspend::SleepWatch::new();
        loop {
            let changed = ctx.router().health_changed();
            tokio::select! {
                _ = tick.tick() => {
                    let router = ctx.router();
                    // The first tick after a laptop wakes: what the sleep ended is over.
                    if let Some(gap) = sleeps.check() {
                        router.health().slept(gap, Instant::now());
                        tracing::info!(slept_s = gap.as_secs(), "the machine slept: pauses, \
                                       cooldowns and quota windows moved on by as much");
                    }
                    let served = router.next_record_id();
                    if served != seen || router.in_flight() > 0 {
                        seen = served;
                        busy_since_trim = true;
                    } else if busy_since_trim {
                        busy_since_trim = false;
                        release_free_memory();
                    }
                }
                // A breaker opened, a provider was paused: on disk within tens of
                // milliseconds, so a crash right after cannot lose it. A few more changes in
                // the same moment share the write.
                _ = changed.notified() => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ = ctx.draining.cancelled() => return,
            }
            save_health(&ctx);
        }
    });
}

/// glibc keeps the heap pages of a burst for reuse: after 1,000 concurrent streams an idle
/// daemon stayed at ~110 MiB resident. `malloc_trim` hands the free pages back (measured: 23 MiB
/// a few seconds after the same burst). Other allocators and platforms manage this themselves.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own heap; it is safe to call at any time.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(released, "returned free heap pages to the OS");
    }
}

/// Re-read the config file (SIGHUP), as a start would read it: providers are rebuilt and health
/// carries over (the same book when the same providers stay, in any order; by name otherwise); a provider
/// whose key changed gets a fresh chance after a 401. A config that now yields no provider (the
/// file with the keys was deleted) falls back to the simulated providers, as a start without
/// keys does; one that yields providers again leaves them.
pub async fn reload(ctx: &Context, opts: &Options) {
    let config = match Config::load(&opts.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "config reload failed; keeping the old config");
            return;
        }
    };
    let old = ctx.router();
    let providers = if opts.simulate || config.providers.is_empty() {
        match ctx.sims_or_start().await {
            Ok(configs) => {
                if !opts.simulate && !old.is_simulated() {
                    tracing::warn!(
                        "the reloaded config has no provider (no API key found): using the \
                         built-in simulated providers"
                    );
                }
                configs
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; keeping the old config");
                return;
            }
        }
    } else {
        config.providers.clone()
    };
    let router = old.succeed(routed(&providers, &ctx.http), config.routing.clone());
    for p in &providers {
        let same_key = old
            .providers()
            .iter()
            .find(|o| o.cfg.name == p.name)
            .is_some_and(|o| o.cfg.api_key == p.api_key);
        if !same_key {
            router.health().clear_unusable(&p.name);
        }
    }
    tracing::info!(
        providers = providers.len(),
        simulated = router.is_simulated(),
        "config reloaded"
    );
    ctx.replace_router(router);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seat the caps allow, with its upstream stream, fits under the fd limit.
    #[test]
    fn every_seat_fits_under_the_fd_limit() {
        for limit in [256u64, 1024, 4096, 65_536] {
            let c = connection_cap(100_000, Some(limit)) as u64;
            let http = c / 2;
            assert!(2 * c + 2 * http + 16 + 64 <= limit, "{limit}: {c}");
        }
        assert_eq!(connection_cap(512, None), 512);
        assert_eq!(connection_cap(512, Some(1_000_000)), 512);
    }
}
