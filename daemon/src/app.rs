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
    /// Why the log directory cannot be written, if it cannot: `mythos status` says so, since
    /// the daemon then logs to a stderr that nobody may read.
    pub log_failure: Option<String>,
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

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config file is wrong or leaves no usable provider: mended by hand, not by a restart.
    #[error("{0}")]
    Config(String),
    /// Anything else (the HTTPS client, the simulated providers).
    #[error("{0}")]
    Other(String),
}

/// Load config, open state, start simulated providers if needed, build the router.
pub async fn prepare(opts: &Options) -> Result<Prepared, StartError> {
    let config = Config::load(&opts.config).map_err(|e| StartError::Config(e.to_string()))?;
    if !opts.simulate {
        config
            .check_usable()
            .map_err(|e| StartError::Config(e.to_string()))?;
    }
    for s in &config.skipped {
        tracing::warn!(provider = %s.provider, variable = %s.variable, "{s}");
    }
    let client = http_client()
        .map_err(|e| StartError::Other(format!("cannot set up the HTTPS client: {e}")))?;
    let mut notes: Vec<String> = opts.log_failure.iter().cloned().collect();
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
            .map_err(|e| StartError::Other(format!("cannot start simulated providers: {e}")))?
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
            .with_request_memory(config.server.max_request_memory)
            .with_metrics(metrics)
            .with_notes(notes),
    );
    ctx.set_config_warnings(config.skipped.iter().map(ToString::to_string).collect());
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
        state.save_health(health_snapshot(ctx));
    }
}

/// Every provider's health as it is now, to save.
pub fn health_snapshot(ctx: &Context) -> Vec<crate::router::health::SavedHealth> {
    ctx.router().health().save(Instant::now(), now_unix_ms())
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
            // A stopping daemon hands its last health over to the next one, which owns it from
            // then on: a save after that (a change seen during the drain) would overwrite the
            // next daemon's. Checked with nothing awaited before the save is queued, so any
            // save comes before the hand-over's.
            if ctx.draining.is_cancelled() {
                return;
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

/// What a reload does with a config that loaded: a pure decision from the new config and the
/// providers in force, carried out by [`reload`].
#[derive(Debug)]
pub enum ReloadPlan {
    /// Run on these real providers; `warnings` are for the log and `status`.
    Providers {
        /// The providers, in priority order.
        providers: Vec<ProviderConfig>,
        /// Providers skipped for want of a key, and those that kept their old settings.
        warnings: Vec<String>,
    },
    /// Run on the built-in simulated providers (no provider and no key, or `--simulate`).
    Simulated,
    /// Keep the config in force, for this reason.
    Refuse(String),
}

/// Decide a reload. Like a start, a config whose file names providers none of which has its
/// key is refused. Beyond a start: a config that yields no provider at all while real ones
/// run (the file with the keys was deleted; a SIGHUP cannot change the daemon's environment)
/// is refused rather than switching to simulated answers, and a provider the new file names
/// without its key keeps the settings it had, with a warning, rather than vanishing.
pub fn plan_reload(config: &Config, old: &[ProviderConfig], simulate: bool) -> ReloadPlan {
    if simulate {
        return ReloadPlan::Simulated;
    }
    if let Err(e) = config.check_usable() {
        return ReloadPlan::Refuse(e.to_string());
    }
    let real_before = old.iter().filter(|p| !p.simulated).count();
    if config.providers.is_empty() {
        if real_before == 0 {
            return ReloadPlan::Simulated;
        }
        let source = match &config.file {
            Some(f) => format!("{} names none", f.display()),
            None => "there is no config file".to_string(),
        };
        return ReloadPlan::Refuse(format!(
            "the new config has no provider ({source}, and no API key is in mythosd's \
             environment) while {real_before} run now: it would switch to the simulated \
             providers"
        ));
    }
    let mut providers = config.providers.clone();
    let mut warnings = Vec::new();
    for s in &config.skipped {
        let before = old
            .iter()
            .find(|o| o.name == s.provider && !o.simulated && o.api_key.is_some());
        match before {
            Some(o) if !providers.iter().any(|p| p.name == o.name) => {
                providers.push(o.clone());
                warnings.push(format!("{s}; it keeps its settings from before the reload"));
            }
            _ => warnings.push(s.to_string()),
        }
    }
    providers.sort_by_key(|p| p.priority);
    ReloadPlan::Providers {
        providers,
        warnings,
    }
}

/// How long a reload waits for the config file to be read.
const CONFIG_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Re-read the config file (SIGHUP), as a start would read it: providers are rebuilt and health
/// carries over (the same book when the same providers stay, in any order; by name otherwise); a provider
/// whose key changed gets a fresh chance after a 401. What a config that loaded leads to is
/// [`plan_reload`]'s decision; a refused reload, like a config that does not parse, keeps the
/// config in force, is logged as an error, noted in `status` and returned as `Err(why)`.
pub async fn reload(ctx: &Context, opts: &Options) -> Result<(), String> {
    let refuse = |why: String| {
        tracing::error!(error = %why, "config reload failed; keeping the old config");
        ctx.reload_refused(why.clone());
        Err(why)
    };
    // Read on a blocking thread, for a while at most: a config on a network mount that hangs
    // must not hold the worker that serves status and streams.
    let path = opts.config.clone();
    let loading = tokio::task::spawn_blocking(move || Config::load(&path));
    let config = match tokio::time::timeout(CONFIG_READ_TIMEOUT, loading).await {
        Ok(Ok(Ok(c))) => c,
        Ok(Ok(Err(e))) => return refuse(e.to_string()),
        Ok(Err(e)) => return refuse(format!("reading the config failed: {e}")),
        Err(_) => {
            return refuse(format!(
                "{} could not be read within {} s (a network mount that hangs?)",
                opts.config.display(),
                CONFIG_READ_TIMEOUT.as_secs()
            ))
        }
    };
    let old = ctx.router();
    let old_configs: Vec<ProviderConfig> = old.providers().iter().map(|p| p.cfg.clone()).collect();
    let (providers, warnings) = match plan_reload(&config, &old_configs, opts.simulate) {
        ReloadPlan::Refuse(why) => return refuse(why),
        ReloadPlan::Providers {
            providers,
            warnings,
        } => (providers, warnings),
        ReloadPlan::Simulated => match ctx.sims_or_start().await {
            Ok(configs) => (configs, Vec::new()),
            Err(e) => return refuse(format!("cannot start simulated providers: {e}")),
        },
    };
    for w in &warnings {
        tracing::warn!("{w}");
    }
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
    ctx.set_config_warnings(warnings);
    Ok(())
}

/// Carry out reloads one at a time, as they are asked for (`SIGHUP`, `mythos daemon reload`):
/// two at once would each build a router from the one before, and the second could undo the
/// first.
pub fn spawn_reloader(ctx: Arc<Context>, opts: Options) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<crate::server::ReloadAsk>(16);
    if ctx.reloads.set(tx).is_err() {
        return;
    }
    tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            let outcome = reload(&ctx, &opts).await;
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: Option<&str>) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        if let Some(text) = text {
            std::fs::write(&path, text).unwrap();
        }
        Config::load_with(&path, &|_| None).unwrap()
    }

    fn real(name: &str, priority: u32) -> ProviderConfig {
        let mut p = ProviderConfig::new(name, crate::config::Api::Openai, "http://x/v1", "m");
        p.api_key = Some(crate::config::Secret::new("k-0123456789"));
        p.priority = priority;
        p
    }

    /// A SIGHUP with a config whose only provider lacks its variable, or with the config file
    /// deleted, switched a working daemon to the simulated providers: "keep the old config"
    /// covered parse errors only (found by a chaos run). Such reloads are refused now, and a
    /// provider the new file names without its key keeps its old settings.
    #[test]
    fn a_reload_never_trades_real_providers_for_the_simulation() {
        let old = [real("good", 0)];
        let missing = config(Some(
            "[[provider]]\nname = \"good\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\n\
             api_key_env = \"NOPE_UNSET\"\n",
        ));
        match plan_reload(&missing, &old, false) {
            ReloadPlan::Refuse(why) => {
                assert!(why.contains("`good` needs NOPE_UNSET"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // The file deleted (the keys were in it): nothing left but the simulation.
        match plan_reload(&config(None), &old, false) {
            ReloadPlan::Refuse(why) => assert!(why.contains("simulated"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A provider that lost its key keeps its old settings beside the usable ones.
        let mixed = config(Some(
            "[[provider]]\nname = \"good\"\nbase_url = \"http://x/v1\"\nmodel = \"m2\"\n\
             api_key_env = \"NOPE_UNSET\"\npriority = 9\n\n\
             [[provider]]\nname = \"new\"\nbase_url = \"http://y/v1\"\nmodel = \"m\"\n\
             api_key = \"k-abcdefgh\"\npriority = 3\n",
        ));
        match plan_reload(&mixed, &old, false) {
            ReloadPlan::Providers {
                providers,
                warnings,
            } => {
                let got: Vec<_> = providers
                    .iter()
                    .map(|p| (p.name.as_str(), p.model.as_str()))
                    .collect();
                assert_eq!(got, [("good", "m"), ("new", "m")]);
                assert_eq!(warnings.len(), 1);
                assert!(warnings[0].contains("NOPE_UNSET"), "{warnings:?}");
                assert!(warnings[0].contains("keeps its settings"), "{warnings:?}");
            }
            other => panic!("{other:?}"),
        }
        // Unchanged: a daemon on the simulation stays there while no key appears, and
        // `--simulate` always simulates.
        let mut sim = real("sim-openai", 0);
        sim.simulated = true;
        assert!(matches!(
            plan_reload(&config(None), &[sim], false),
            ReloadPlan::Simulated
        ));
        assert!(matches!(
            plan_reload(&missing, &old, true),
            ReloadPlan::Simulated
        ));
    }

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
