//! Starting `mythosd`: find the binary, spawn it with `--notify-stdout`, and wait for the line
//! it prints once its socket accepts connections (readiness is observed, never guessed).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mythos_protocol::StartupLine;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::connection::{connect_with_retry, daemon_log_dir, ConnectError, Connection, Target};
use crate::error::Failure;

/// Environment variable naming the `mythosd` binary to start.
pub const DAEMON_BIN_ENV: &str = "MYTHOSD_BIN";

/// How long a daemon we started may take to report readiness.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// After `already-running`: how long the other daemon gets to start accepting connections.
const ALREADY_RUNNING_GRACE: Duration = Duration::from_secs(3);
/// Overall bound on starting a daemon, including waiting for a previous one to finish exiting.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// Bound on starting the daemon through its service manager: a restart there waits for the
/// old daemon's streams (10 s by default) before the new one starts.
#[cfg(unix)]
const MANAGED_START_DEADLINE: Duration = Duration::from_secs(30);

/// What became of a daemon we spawned.
#[derive(Debug)]
pub enum Started {
    /// It printed its line.
    Line(StartupLine),
    /// It closed stdout without a line (crashed, or not a mythosd).
    Exited(Option<ExitStatus>, String),
    /// It printed nothing in time (it was killed).
    TimedOut,
}

/// Locate the `mythosd` binary: `$MYTHOSD_BIN`, else next to this executable, else on `PATH`.
pub fn find_daemon() -> Result<PathBuf, Failure> {
    if let Some(p) = std::env::var_os(DAEMON_BIN_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let name = format!("mythosd{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(&name)));
    if let Some(p) = beside.as_ref().filter(|p| p.is_file()) {
        return Ok(p.clone());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(&name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let looked = beside.map_or_else(String::new, |p| format!(" at {} and", p.display()));
    Err(
        Failure::new(format!("cannot find mythosd (looked{looked} on PATH)")).hint(format!(
            "install it (`cargo install --path daemon`, or `cargo build -p mythosd` next to this \
             binary), or point {DAEMON_BIN_ENV} at it"
        )),
    )
}

/// A command running `mythosd --notify-stdout` with the plumbing a readiness line needs: no
/// stdin, stdout piped to us, stderr discarded (the daemon logs to its state dir).
pub fn daemon_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--notify-stdout")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

/// Spawn `cmd` and wait for its readiness line.
pub async fn spawn_and_wait(mut cmd: Command, bin: &Path) -> Result<(Started, Child), Failure> {
    let mut child = cmd.spawn().map_err(|e| {
        Failure::new(format!("cannot start {}: {e}", bin.display()))
            .hint(format!("set {DAEMON_BIN_ENV} to the mythosd binary to use"))
    })?;
    let Some(stdout) = child.stdout.take() else {
        return Err(Failure::new("cannot read mythosd's readiness line"));
    };
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    let started = match tokio::time::timeout(READY_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => {
            // It has had its chance; do not leave a half-started daemon holding the socket.
            let _ = child.start_kill();
            Started::TimedOut
        }
        Ok(Err(_)) | Ok(Ok(0)) => {
            let status = tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .ok()
                .and_then(Result::ok);
            Started::Exited(status, String::new())
        }
        Ok(Ok(_)) => match StartupLine::parse(&line) {
            Some(StartupLine::Error(first)) => {
                // A failing daemon exits right after its line, but some of its messages (a
                // config parse error with its source excerpt) span several lines: take what
                // follows too, up to its exit, within reason.
                let mut rest = Vec::new();
                let mut tail = tokio::io::AsyncReadExt::take(reader, 16 * 1024);
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::io::AsyncReadExt::read_to_end(&mut tail, &mut rest),
                )
                .await;
                let rest = String::from_utf8_lossy(&rest);
                let rest = rest.trim_end();
                if rest.is_empty() {
                    Started::Line(StartupLine::Error(first))
                } else {
                    Started::Line(StartupLine::Error(format!("{first}\n{rest}")))
                }
            }
            Some(n) => Started::Line(n),
            None => Started::Exited(None, line.trim().to_string()),
        },
    };
    Ok((started, child))
}

/// Turn a start outcome other than ready/already-running into the failure to show.
pub fn start_failure(started: Started, bin: &Path, socket: &Path) -> Failure {
    let how = format!(
        "run `{} --foreground --socket {}` to see why",
        bin.display(),
        socket.display()
    );
    match started {
        Started::Line(StartupLine::Error(msg)) => {
            Failure::new(format!("mythosd could not start: {msg}"))
        }
        Started::Exited(status, junk) => {
            let status = status.map_or_else(String::new, |s| format!(" ({s})"));
            let junk = if junk.is_empty() {
                String::new()
            } else {
                format!("; it printed {junk:?}")
            };
            Failure::new(format!("mythosd exited before it was ready{status}{junk}")).hint(format!(
                "{how}; its log is in {}",
                daemon_log_dir().display()
            ))
        }
        Started::TimedOut => Failure::new(format!(
            "mythosd did not become ready within {} s",
            READY_TIMEOUT.as_secs()
        ))
        .hint(how),
        Started::Line(other) => Failure::new(format!("unexpected readiness line {other:?}")),
    }
}

/// Start the shared daemon for `target` and connect to it: through the service manager that
/// ran the last one, if one did, else as a process of its own.
pub(crate) async fn start_and_connect(target: &Target) -> Result<Connection, Failure> {
    #[cfg(unix)]
    if let Some(command) = managed_start_command(&target.socket) {
        if let Some(done) = start_managed(target, &command).await {
            return done;
        }
    }
    let bin = find_daemon()?;
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        let mut cmd = daemon_command(&bin);
        cmd.arg("--socket").arg(&target.socket);
        cmd.envs(target.daemon_env.iter().map(|(k, v)| (k, v)));
        // Its own process group: the daemon outlives this client and the terminal's Ctrl-C.
        #[cfg(unix)]
        cmd.process_group(0);
        #[cfg(windows)]
        {
            const DETACHED_PROCESS: u32 = 0x0000_0008;
            const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
            cmd.creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP);
        }
        let (started, _child) = spawn_and_wait(cmd, &bin).await?;
        // `_child` is dropped without waiting: the daemon keeps running on its own.
        match started {
            Started::Line(StartupLine::Ready(_)) => {
                return connect_with_retry(target, ALREADY_RUNNING_GRACE)
                    .await
                    .map_err(|e| e.into_failure(target));
            }
            Started::Line(StartupLine::AlreadyRunning(_)) => {
                // Someone else started one at the same moment, or one is on its way out and
                // still holds the socket. Connect when it is ready; start again once it is gone.
                match connect_with_retry(target, ALREADY_RUNNING_GRACE).await {
                    Ok(c) => return Ok(c),
                    Err(e @ ConnectError::Incompatible { .. }) => {
                        return Err(e.into_failure(target))
                    }
                    Err(e) if Instant::now() >= deadline => {
                        return Err(e.into_failure(target).hint(
                            "another mythosd holds the socket but does not accept connections",
                        ))
                    }
                    Err(_) => continue,
                }
            }
            other => return Err(start_failure(other, &bin, &target.socket)),
        }
    }
}

/// The command that starts the daemon through its service manager, as the last daemon on
/// `socket` left it in its lock file: only from a file of this user's (the socket may be in a
/// shared directory), and for this user's launchd domain.
#[cfg(unix)]
fn managed_start_command(socket: &Path) -> Option<Vec<String>> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let file = std::fs::File::open(mythos_protocol::paths::instance_lock_path(socket)).ok()?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if file.metadata().ok()?.uid() != uid {
        return None;
    }
    let mut text = String::new();
    file.take(4096).read_to_string(&mut text).ok()?;
    let command = mythos_protocol::paths::start_command(&text)?;
    let ours = command[0] != "launchctl" || command[2] == format!("gui/{uid}/dev.mythos.mythosd");
    ours.then_some(command)
}

/// Ask the service manager that runs the daemon to start it (`systemctl --user start`, which
/// waits for a restart in progress; `launchctl kickstart`), and connect once it serves. A
/// daemon still finishing its streams refuses connections meanwhile, so both are tried again
/// until it has gone and the next one answers. `None` when the manager cannot be asked at all
/// (no such command, the unit or agent no longer installed): the caller starts a daemon
/// itself, as it would with no manager.
#[cfg(unix)]
async fn start_managed(target: &Target, command: &[String]) -> Option<Result<Connection, Failure>> {
    use std::io::IsTerminal as _;
    let deadline = Instant::now() + MANAGED_START_DEADLINE;
    let shown = command.join(" ");
    let status = if command[0] == "systemctl" {
        format!("systemctl --user status {}", command[command.len() - 1])
    } else {
        format!("launchctl print {}", command[command.len() - 1])
    };
    // Whether the manager took the command once: a failure after that is its answer.
    let mut worked = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let run = Command::new(&command[0])
            .args(&command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let (why, timed_out) = match tokio::time::timeout(left, run).await {
            Ok(Ok(out)) if out.status.success() => (None, false),
            Ok(Ok(out)) => (
                Some(String::from_utf8_lossy(&out.stderr).trim().to_string()),
                false,
            ),
            Ok(Err(e)) => (Some(e.to_string()), false),
            Err(_) => (Some(format!("no answer within {} s", left.as_secs())), true),
        };
        if let Some(why) = why {
            // A manager that is there but slow (a restart waiting out its stop timeout) is
            // still the one to start it: a daemon of our own would race it again.
            if !worked && !timed_out {
                // Never worked: the manager is not there for us; start one ourselves.
                return None;
            }
            return Some(Err(
                Failure::new(format!("`{shown}` failed: {why}")).hint(format!("see `{status}`"))
            ));
        }
        if !worked {
            worked = true;
            if std::io::stderr().is_terminal() {
                eprintln!("mythos: starting mythosd through its service manager ({shown})…");
            }
        }
        match connect_with_retry(target, ALREADY_RUNNING_GRACE.min(left)).await {
            Ok(c) => return Some(Ok(c)),
            Err(e @ ConnectError::Incompatible { .. }) => return Some(Err(e.into_failure(target))),
            Err(e) if Instant::now() >= deadline => {
                return Some(Err(e.into_failure(target).hint(format!(
                    "mythosd runs under a service manager, which did not start it within {} s \
                     (`{shown}`); see `{status}`",
                    MANAGED_START_DEADLINE.as_secs()
                ))))
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_failures_carry_the_daemons_words() {
        let f = start_failure(
            Started::Line(StartupLine::Error("config.toml line 3: bad".into())),
            Path::new("mythosd"),
            Path::new("/s"),
        );
        assert_eq!(
            f.message,
            "mythosd could not start: config.toml line 3: bad"
        );
        assert_eq!(f.code, 1);
        let f = start_failure(Started::TimedOut, Path::new("mythosd"), Path::new("/s"));
        assert!(f.hint.unwrap().contains("--foreground"));
    }
}
