//! `mythosd`: parse flags, set up logging, bind the socket, run the server, shut down in order.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mythos_protocol::StartupLine;
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
    /// A private daemon: shut down once this process is gone (`mythos demo` and `chat --demo`
    /// pass their own pid, so a closed terminal leaves no daemon behind).
    #[arg(long, hide = true)]
    owner_pid: Option<u32>,
    /// Remove this directory after shutting down (the private daemon's temp dir).
    #[arg(long, hide = true)]
    remove_dir: Option<PathBuf>,
}

/// The one readiness line, then stdout is closed so the spawning client stops reading.
fn notify(enabled: bool, line: &str) {
    if enabled {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        // Point fd 1 at /dev/null rather than closing it: a closed fd 1 would be reused by the
        // next file or socket we open, and a stray print would land in it.
        #[cfg(unix)]
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            use std::os::unix::io::AsRawFd;
            // SAFETY: dup2 onto fd 1 with a valid descriptor; stdout is not used after this.
            unsafe {
                libc::dup2(null.as_raw_fd(), 1);
            }
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

/// Files the daemon creates (socket, lock, state database, logs) are its user's alone.
fn private_files() {
    #[cfg(unix)]
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Days of daily log files kept in the state directory's `logs/`.
const LOG_DAYS: usize = 14;

/// One descriptor per connection and per upstream stream: raise the soft limit to the hard one
/// (often 1,024 against 500,000), so a busy machine runs out of neither. Returns the limit.
fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                return None;
            }
            if r.rlim_cur < r.rlim_max {
                let mut want = r;
                want.rlim_cur = r.rlim_max;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                    r = want;
                }
            }
        }
        // rlim_t is not u64 on every Unix.
        #[allow(clippy::unnecessary_cast)]
        Some(r.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    None
}

/// sysexits' "configuration error": the systemd unit's `RestartPreventExitStatus` names it.
const EX_CONFIG: u8 = 78;

/// The exit for a failure that starting again cannot mend: `code`, except as the launchd
/// agent, whose `KeepAlive` (it has no `RestartPreventExitStatus`) starts it again every ten
/// seconds after any unsuccessful exit, logging the same error each time; there it is a
/// success, after the error was said.
fn lasting_failure(code: u8) -> ExitCode {
    let launchd = mythosd::supervisor::restart_command().is_some_and(|c| c[0] == "launchctl");
    if launchd {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(code)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    private_files();
    let fd_limit = raise_fd_limit();
    let socket_path = args
        .socket
        .clone()
        .unwrap_or_else(mythos_protocol::paths::socket_path);
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(mythos_protocol::paths::state_dir);
    let mut opts = Options {
        config: args
            .config
            .clone()
            .unwrap_or_else(mythos_protocol::paths::config_path),
        state_dir: state_dir.clone(),
        simulate: args.simulate,
        fd_limit,
        log_failure: None,
    };

    // Logs: a daily file under the state dir, plus stderr in the foreground.
    let filter = EnvFilter::try_from_env("MYTHOS_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let log_dir = state_dir.join("logs");
    let _ = std::fs::create_dir_all(&log_dir);
    // A log directory that cannot be written (a read-only home under a hardened service) is a
    // warning on stderr, not a panic: the daemon serves without its log file.
    let appender = tracing_appender::rolling::RollingFileAppender::builder()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("mythosd.log")
        // A service runs for months: the oldest days go, at start-up and at each new day.
        .max_log_files(LOG_DAYS)
        .build(&log_dir);
    let log_file_ok = appender.is_ok();
    let appender: Box<dyn std::io::Write + Send> = match appender {
        Ok(a) => Box::new(a),
        Err(e) => {
            let why = format!(
                "cannot write logs in {}: {e}; logging to stderr only (which a daemon started \
                 by a `mythos` command does not have: `mythosd --foreground` shows them)",
                log_dir.display()
            );
            // Said once here (the stderr layer below carries the rest), and in `status`.
            eprintln!("mythosd: {why}");
            opts.log_failure = Some(why);
            Box::new(std::io::sink())
        }
    };
    let (file_writer, _guard) = tracing_appender::non_blocking(appender);
    // MYTHOS_LOG_FORMAT=json: one JSON object per line, for log shippers.
    let json = std::env::var("MYTHOS_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;
    let file_layer: Boxed = if json {
        Box::new(fmt::layer().json().with_writer(file_writer))
    } else {
        Box::new(fmt::layer().with_ansi(false).with_writer(file_writer))
    };
    let mut layers: Vec<Boxed> = vec![file_layer];
    // Through a writer thread like the file: a stderr pipe nobody reads must not stop the
    // runtime's one worker, and every stream with it (lines are dropped instead).
    let _stderr_guard = (args.foreground || !log_file_ok).then(|| {
        let (stderr_writer, guard) = tracing_appender::non_blocking(std::io::stderr());
        layers.push(if json {
            Box::new(fmt::layer().json().with_writer(stderr_writer))
        } else {
            Box::new(fmt::layer().with_writer(stderr_writer))
        });
        guard
    });
    tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .init();

    // A panic anywhere goes to the log file with its backtrace (an auto-started daemon's
    // stderr is /dev/null), then to stderr as usual.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let backtrace = std::backtrace::Backtrace::force_capture();
        tracing::error!(panic = %info, %backtrace, "panic");
        default_hook(info);
    }));

    let workers = std::env::var("MYTHOS_WORKER_THREADS").ok();
    if let Some(w) = workers.as_deref() {
        if w.trim().parse::<usize>().is_err() {
            tracing::warn!(
                value = w,
                "MYTHOS_WORKER_THREADS is not a number: using one worker"
            );
        }
    }
    let runtime = match runtime_builder(workers.as_deref())
        .enable_all()
        .thread_name("mythosd")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            notify(
                args.notify_stdout,
                &StartupLine::Error(format!("cannot start runtime: {e}")).to_string(),
            );
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(
        args.notify_stdout,
        socket_path,
        opts,
        fd_limit,
        args.owner_pid,
    ));
    if let Some(dir) = &args.remove_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    // Dropping the runtime, then the log guard (end of main), flushes the last log lines.
    drop(runtime);
    code
}

/// Whether process `pid` still exists.
fn alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: kill with signal 0 only checks that the process exists.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Shut down when the socket file is deleted or replaced (nobody could reach this daemon any
/// more, yet it would hold the lock and block a new one), or when the owning process is gone.
fn spawn_watchers(
    ctx: std::sync::Arc<mythosd::server::Context>,
    path: PathBuf,
    ours: std::sync::Arc<std::sync::Mutex<Option<socket::SocketId>>>,
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
    owner_pid: Option<u32>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = ctx.draining.cancelled() => return,
            }
            let bound = *ours.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(id) = bound {
                match socket::holder(&path, id).await {
                    socket::Holder::Ours | socket::Holder::Unknown => {}
                    socket::Holder::OursChanged(now) => {
                        tracing::debug!(socket = %path.display(), "the socket file's metadata changed");
                        *ours.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
                    }
                    socket::Holder::Lost => {
                        tracing::warn!(socket = %path.display(),
                                       "the socket file was removed or replaced: shutting down");
                        lost.store(true, std::sync::atomic::Ordering::Relaxed);
                        ctx.shutdown_requested.cancel();
                        return;
                    }
                }
            }
            if let Some(pid) = owner_pid.filter(|&p| !alive(p)) {
                tracing::info!(
                    owner = pid,
                    "the process that started this private daemon is gone"
                );
                ctx.shutdown_requested.cancel();
                return;
            }
        }
    });
}

async fn run(
    notify_stdout: bool,
    socket_path: PathBuf,
    opts: Options,
    fd_limit: Option<u64>,
    owner_pid: Option<u32>,
) -> ExitCode {
    let bound = match socket::bind(&socket_path).await {
        Ok(b) => b,
        Err(socket::BindError::AlreadyRunning(p)) => {
            notify(
                notify_stdout,
                &StartupLine::AlreadyRunning(p.display().to_string()).to_string(),
            );
            eprintln!(
                "mythosd: another mythosd is already running on {}",
                p.display()
            );
            if mythosd::supervisor::under_systemd() {
                // The unit's `RestartPreventExitStatus=3`: failed, with this message in its
                // status, rather than retried until systemd gives up.
                let restart = mythosd::supervisor::restart_command()
                    .map(|c| c.join(" "))
                    .unwrap_or_else(|| "systemctl --user restart mythosd".into());
                eprintln!(
                    "mythosd: it was started by hand or by a client; stop it with `mythos daemon \
                     stop`, then `{restart}`"
                );
                return ExitCode::from(3);
            }
            // Exit status 3 ("already running", as `mythos daemon status` says "not running"):
            // a script that starts one learns it did not.
            return lasting_failure(3);
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot bind");
            notify(
                notify_stdout,
                &StartupLine::Error(e.to_string()).to_string(),
            );
            eprintln!("mythosd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let prepared = match app::prepare(&opts).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            notify(
                notify_stdout,
                &StartupLine::Error(e.to_string()).to_string(),
            );
            eprintln!("mythosd: {e}");
            drop(bound.listener);
            socket::Bound::remove_socket(&bound.path, bound.id);
            // The configuration (a bad file, no usable provider): starting again cannot help
            // until it is mended, and the units do not restart on this status.
            return match e {
                app::StartError::Config(_) => lasting_failure(EX_CONFIG),
                app::StartError::Other(_) => ExitCode::FAILURE,
            };
        }
    };
    let ctx = prepared.ctx.clone();
    let drain = prepared.config.routing.drain_timeout;

    app::spawn_reloader(ctx.clone(), opts.clone());
    // Signals: TERM/INT shut down, HUP reloads the config.
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        match signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
            Ok(mut signals) => {
                use futures_util::StreamExt;
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let mut shutdown_tx = Some(shutdown_tx);
                    while let Some(sig) = signals.next().await {
                        if sig == SIGHUP {
                            tracing::info!("SIGHUP: reloading config");
                            if let Some(asks) = ctx.reloads.get() {
                                let _ = asks.send(None).await;
                            }
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

    // The HTTP front end, for agents that speak the providers' APIs. A port that is taken
    // leaves the socket clients working: logged, never fatal.
    // An address left by an earlier run must not send agents to a port nobody serves.
    let address_file = opts.state_dir.join(mythosd::http::token::ADDRESS_FILE);
    // A daemon whose state another one holds leaves the other's address alone.
    let owns_state = !prepared.state_held_elsewhere;
    if owns_state {
        let _ = std::fs::remove_file(&address_file);
    }
    let mut front_end = None;
    // A service manager starts the next daemon only once this one has exited (see `managed`
    // below), so a managed daemon's HTTP port would refuse connections for its whole drain (up
    // to 10 s), longer than the SDKs' two quick retries: agents failed. A second descriptor of
    // the listening socket, never accepted from, keeps the port listening after the front end
    // closes its own: a request made during the drain waits in the kernel's queue, and the
    // exit resets it, which the SDKs retry as a connection error, by then on the next daemon.
    let managed = mythosd::supervisor::restart_command().is_some();
    let mut held_port = None;
    match mythosd::http::bind(&prepared.config.http).await {
        Ok(Some(listener)) => {
            let held = if managed {
                hold_port(&listener)
                    .map_err(
                        |e| tracing::warn!(error = %e, "cannot hold the HTTP port through a drain"),
                    )
                    .ok()
            } else {
                None
            };
            match mythosd::http::start(
                ctx.clone(),
                prepared.config.http.clone(),
                listener,
                &opts.state_dir,
                owns_state,
            )
            .await
            {
                // Held only for a front end that serves: otherwise the port would take
                // connections nobody ever accepts, for the daemon's whole life.
                Ok(f) => (front_end, held_port) = (Some(f), held),
                Err(e) => {
                    tracing::error!(error = %e, "the HTTP front end cannot start");
                    ctx.add_note(format!("the HTTP front end cannot start: {e}"));
                }
            }
        }
        Ok(None) => {}
        // Said in `status` and `/health` too: otherwise only `mythos env` failing, or an
        // agent's connection refused, told that the port was taken.
        Err(note) => ctx.add_note(note),
    }
    app::spawn_health_saver(ctx.clone());
    let socket::Bound {
        listener,
        path: socket_path,
        id,
        lock,
    } = bound;
    // Set when the socket file was seen removed or replaced: any file at the path by shutdown
    // is then another daemon's, whatever its metadata looks like.
    let socket_lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The socket file's identity, kept up to date by the watcher across `chmod`s: the file is
    // removed at shutdown only if it is still the one bound.
    let socket_id = std::sync::Arc::new(std::sync::Mutex::new(id));
    spawn_watchers(
        ctx.clone(),
        socket_path.clone(),
        socket_id.clone(),
        socket_lost.clone(),
        owner_pid,
    );
    tracing::info!(socket = %socket_path.display(), simulated = ctx.router().is_simulated(),
                   version = env!("CARGO_PKG_VERSION"), fd_limit, "mythosd ready");
    notify(
        notify_stdout,
        &StartupLine::Ready(socket_path.display().to_string()).to_string(),
    );
    sd_notify_ready();

    let handed = Handed {
        ctx: ctx.clone(),
        front_end,
        address_file,
        socket_path,
        socket_id,
        socket_lost,
        lock,
        held_port,
    };
    // A service manager starts the next daemon only once this one has exited (`systemctl
    // restart`, `launchctl kickstart -k`): letting go at the drain's start would only let a
    // client that finds no daemon start an unmanaged one meanwhile (with the shell's keys, not
    // the unit's), and the manager's new daemon would then find it running and fail. So a
    // managed daemon lets go as it exits, as it always did.
    // On Windows a pipe name lives as long as any of its instances, the old daemon's streams'
    // among them: a new daemon could not create it until they ended, so letting go early
    // only made a restart wait and fail there.
    let (early, late) = if managed || cfg!(not(unix)) {
        (None, Some(handed))
    } else {
        (Some(handed), None)
    };
    server::run(
        listener,
        ctx.clone(),
        async {
            let _ = shutdown_rx.await;
        },
        async move {
            if let Some(h) = early {
                hand_over(h).await;
            }
        },
        drain,
    )
    .await;

    // In order: the state's last writes, then (on return) the logs.
    if let Some(h) = late {
        // After the drain: the health saved is the last word, the files go, the lock is free.
        hand_over(h).await;
        if let Some(state) = &ctx.state {
            state.close().await;
        }
    } else if let Some(state) = &ctx.state {
        // What the drained streams taught this daemon about its providers is saved only if no
        // daemon took the state since the hand-over: one that did loaded the health saved
        // then and has saved its own since, which this older view must not overwrite.
        if state.reclaim().await {
            app::save_health(&ctx);
        }
        state.close().await;
    }
    ctx.stop_sims();
    tracing::info!("mythosd stopped");
    ExitCode::SUCCESS
}

/// A second descriptor of `listener`'s socket, which keeps the port listening until it is
/// dropped (see its use in [`run`]).
fn hold_port(listener: &tokio::net::TcpListener) -> std::io::Result<std::net::TcpListener> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        Ok(listener.as_fd().try_clone_to_owned()?.into())
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsSocket;
        Ok(listener.as_socket().try_clone_to_owned()?.into())
    }
}

/// What a stopping daemon lets go of for the next one (see [`hand_over`]).
struct Handed {
    ctx: std::sync::Arc<mythosd::server::Context>,
    front_end: Option<mythosd::http::FrontEnd>,
    address_file: PathBuf,
    socket_path: PathBuf,
    socket_id: std::sync::Arc<std::sync::Mutex<Option<socket::SocketId>>>,
    socket_lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
    lock: socket::InstanceLock,
    /// The managed daemon's HTTP port, held through its drain (see `run`).
    held_port: Option<std::net::TcpListener>,
}

/// At the drain's start, with both listeners closed, let go of everything a new daemon needs,
/// so that a restart does not wait for the streams in flight (up to the drain time, 10 s by
/// default): agents' connections were refused for that long, more than the SDKs' retries
/// cover, and a new daemon could not start. The streams go on, and end, here.
///
/// The order keeps each file safe from a daemon that starts meanwhile: the address file goes
/// while this daemon still holds the state (a new one writes its own only once it has the
/// state), and the socket file while it still holds the instance lock (a new one binds only
/// once it has the lock).
async fn hand_over(h: Handed) {
    // The front end closes its listener when the drain begins; wait for the port to be free.
    let published = match h.front_end {
        Some(f) => {
            let _ = f.closed.await;
            f.published
        }
        None => None,
    };
    // Only the address this daemon wrote: a file that says another address is another
    // daemon's (one sharing the state directory, which took it over).
    if let Some(text) = published {
        if std::fs::read_to_string(&h.address_file).is_ok_and(|t| t == text) {
            let _ = std::fs::remove_file(&h.address_file);
        }
    }
    if let Some(state) = &h.ctx.state {
        let router = h.ctx.router();
        let next_record = router.seal_record_ids();
        let health = app::health_snapshot(&h.ctx);
        state.hand_over(health, next_record).await;
    }
    if !h.socket_lost.load(std::sync::atomic::Ordering::Relaxed) {
        let id = *h.socket_id.lock().unwrap_or_else(|e| e.into_inner());
        socket::Bound::remove_socket(&h.socket_path, id);
    }
    // The port before the lock: a daemon that takes the lock must find the port free, or it
    // ran without its front end for good. Connections waiting on it are reset now, and retried
    // on the next daemon.
    drop(h.held_port);
    h.lock.release();
    tracing::info!(
        in_flight = h.ctx.router().in_flight(),
        "handed over to the next daemon; finishing the streams in flight"
    );
}

/// The async runtime: one worker thread unless `MYTHOS_WORKER_THREADS=N` asks for N (0: tokio's
/// current-thread runtime).
///
/// One worker is the default because a relayed chunk is a chain of small tasks (the upstream
/// connection, the request's router, the client's writer) handing over to each other: on one
/// thread each hand-over is a queue push, while with several workers an idle one is woken to
/// steal it, a futex round trip per chunk. Measured with the bench (2 cores, zero-delay mock):
/// half the daemon CPU per relayed chunk at concurrency 1, and one thread still relays
/// 200,000 chunks a second, hundreds of times what a machine's agents stream. Slow work never
/// runs on it: SQLite has its own thread and blocking calls go to tokio's blocking pool.
fn runtime_builder(workers: Option<&str>) -> tokio::runtime::Builder {
    match workers.and_then(|w| w.trim().parse::<usize>().ok()) {
        Some(0) => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.unwrap_or(1));
            b
        }
    }
}
