//! `mythosd`: parse flags, set up logging, bind the socket, run the server, shut down in order.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use futures_util::StreamExt;
use mythosd::app::{self, Options};
use mythosd::server::{self, socket};
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// The mythos routing daemon.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Socket path (a pipe name on Windows).
    #[arg(long, env = "MYTHOS_SOCKET")]
    socket: Option<PathBuf>,
    /// Config file (default: $XDG_CONFIG_HOME/mythos/config.toml).
    #[arg(long, env = "MYTHOS_CONFIG")]
    config: Option<PathBuf>,
    /// State directory for the health database and logs (default: $XDG_STATE_HOME/mythos).
    #[arg(long, env = "MYTHOS_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Use the built-in simulated providers even when API keys are set.
    #[arg(long)]
    simulate: bool,
    /// Print one line on stdout once ready (`ready PATH`, `already-running PATH` or
    /// `error MESSAGE`), then close stdout. Used by `mythos` when it starts the daemon.
    #[arg(long)]
    notify_stdout: bool,
    /// Also log to stderr.
    #[arg(long)]
    foreground: bool,
}

/// The one readiness line, then stdout is closed so the spawning client stops reading.
fn notify(enabled: bool, line: &str) {
    if enabled {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        #[cfg(unix)]
        // SAFETY: closing fd 1 after the last write; nothing writes to stdout afterwards.
        unsafe {
            libc::close(1);
        }
    }
}

/// Tell systemd we are ready (Type=notify), if it is listening. A datagram to $NOTIFY_SOCKET is
/// the whole protocol; no crate needed.
fn sd_notify_ready() {
    #[cfg(unix)]
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        use std::os::unix::net::UnixDatagram;
        if let Ok(sock) = UnixDatagram::unbound() {
            let _ = sock.send_to(b"READY=1\n", path);
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let socket_path = args
        .socket
        .clone()
        .unwrap_or_else(mythos_protocol::paths::socket_path);
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(mythos_protocol::paths::state_dir);
    let opts = Options {
        config: args
            .config
            .clone()
            .unwrap_or_else(mythos_protocol::paths::config_path),
        state_dir: state_dir.clone(),
        simulate: args.simulate,
    };

    // Logs: a daily file under the state dir, plus stderr in the foreground.
    let filter = EnvFilter::try_from_env("MYTHOS_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let log_dir = state_dir.join("logs");
    let _ = std::fs::create_dir_all(&log_dir);
    let (file_writer, _guard) =
        tracing_appender::non_blocking(tracing_appender::rolling::daily(&log_dir, "mythosd.log"));
    let stderr_layer = args
        .foreground
        .then(|| fmt::layer().with_writer(std::io::stderr));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_ansi(false).with_writer(file_writer))
        .with(stderr_layer)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mythosd")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            notify(
                args.notify_stdout,
                &format!("error cannot start runtime: {e}"),
            );
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(args.notify_stdout, socket_path, opts));
    // Dropping the runtime, then the log guard (end of main), flushes the last log lines.
    drop(runtime);
    code
}

async fn run(notify_stdout: bool, socket_path: PathBuf, opts: Options) -> ExitCode {
    let bound = match socket::bind(&socket_path).await {
        Ok(b) => b,
        Err(socket::BindError::AlreadyRunning(p)) => {
            notify(notify_stdout, &format!("already-running {}", p.display()));
            eprintln!(
                "mythosd: another mythosd is already running on {}",
                p.display()
            );
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot bind");
            notify(notify_stdout, &format!("error {e}"));
            eprintln!("mythosd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let prepared = match app::prepare(&opts).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            notify(notify_stdout, &format!("error {e}"));
            eprintln!("mythosd: {e}");
            drop(bound.listener);
            socket::Bound::remove_socket(&bound.path);
            return ExitCode::FAILURE;
        }
    };
    let ctx = prepared.ctx.clone();
    let drain = prepared.config.routing.drain_timeout;

    // Signals: TERM/INT shut down, HUP reloads the config.
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        match signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
            Ok(mut signals) => {
                let ctx = ctx.clone();
                let opts = opts.clone();
                tokio::spawn(async move {
                    let mut shutdown_tx = Some(shutdown_tx);
                    while let Some(sig) = signals.next().await {
                        if sig == SIGHUP {
                            tracing::info!("SIGHUP: reloading config");
                            app::reload(&ctx, &opts);
                        } else if let Some(tx) = shutdown_tx.take() {
                            tracing::info!(signal = sig, "shutdown signal");
                            let _ = tx.send(());
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot install signal handlers"),
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = shutdown_tx.send(());
    });

    app::spawn_health_saver(ctx.clone());
    tracing::info!(socket = %bound.path.display(), simulated = ctx.simulated,
                   version = env!("CARGO_PKG_VERSION"), "mythosd ready");
    notify(notify_stdout, &format!("ready {}", bound.path.display()));
    sd_notify_ready();

    let socket_path = bound.path.clone();
    // `bound` keeps holding the lock file until the end of this function.
    let listener = bound.listener;
    server::run(
        listener,
        ctx.clone(),
        async {
            let _ = shutdown_rx.await;
        },
        drain,
    )
    .await;

    // In order: state, then the socket, then (on return) the logs.
    app::save_health(&ctx);
    if let Some(state) = &ctx.state {
        state.flush().await;
    }
    for sim in ctx.sims.values() {
        sim.shutdown();
    }
    socket::Bound::remove_socket(&socket_path);
    tracing::info!("mythosd stopped");
    ExitCode::SUCCESS
}
