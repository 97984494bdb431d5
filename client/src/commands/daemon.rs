//! `mythos daemon start|stop|restart|reload|status`: manage the shared daemon.

use std::time::{Duration, Instant};

use mythos_protocol::{Request, Response};

use super::{eprint_line, print, status, unexpected, Globals};
use crate::connection::{nothing_listens, open, ConnectError, Connection};
use crate::error::{Failure, EXIT_NOT_RUNNING, EXIT_OK};

/// How long `stop` waits for the daemon to go away.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two looks at a stopping daemon.
const POLL: Duration = Duration::from_millis(50);

/// What to do with the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start it unless it runs.
    Start,
    /// Ask it to shut down and wait until it has.
    Stop,
    /// Stop, then start: the new daemon as soon as the old one has handed over (the old one
    /// finishes its streams in flight meanwhile).
    Restart,
    /// Read the config file again.
    Reload,
    /// Show its status without ever starting it.
    Status {
        /// As JSON.
        json: bool,
    },
}

/// Run `action`.
pub async fn run(g: &Globals, action: Action) -> Result<u8, Failure> {
    match action {
        Action::Start => start(g).await,
        Action::Stop => stop(g).await,
        Action::Restart => {
            let (service, hung) = service_restart(g).await;
            if let Some((cmd, pid)) = service {
                return restart_service(g, &cmd, pid).await;
            }
            restart(g, hung).await
        }
        Action::Reload => reload(g).await,
        Action::Status { json } => match Connection::connect(&g.target).await {
            Err(ConnectError::NotRunning) => {
                let line = "mythosd is not running";
                if json {
                    // A script parses stdout: it gets an answer there too, not an empty
                    // string that fails to parse.
                    eprint_line(line);
                    super::print_json(&serde_json::json!({
                        "running": false,
                        "socket": g.target.socket.display().to_string(),
                    }))?;
                } else {
                    print(&format!("{line}\n"))?;
                }
                Ok(EXIT_NOT_RUNNING)
            }
            Err(e) => Err(e.into_failure(&g.target)),
            Ok(mut conn) => {
                let report = status::fetch(&mut conn).await?;
                status::show(&report, json)?;
                Ok(EXIT_OK)
            }
        },
    }
}

/// Ask the running daemon to read its config again; never starts one (a daemon that starts
/// reads the config as it is anyway).
async fn reload(g: &Globals) -> Result<u8, Failure> {
    let mut conn = match Connection::connect(&g.target).await {
        Err(ConnectError::NotRunning) => {
            print("mythosd is not running; it reads the config when it starts\n")?;
            return Ok(EXIT_NOT_RUNNING);
        }
        Err(e) => return Err(e.into_failure(&g.target)),
        Ok(conn) => conn,
    };
    match conn.call(Request::Reload).await? {
        Response::Ok => {
            print("config reloaded\n")?;
            // What the new config leaves to fix (a provider without its key, ...).
            if let Ok(report) = status::fetch(&mut conn).await {
                for note in &report.notes {
                    eprint_line(&format!("note: {note}"));
                }
            }
            Ok(EXIT_OK)
        }
        other => Err(unexpected(other, "ok").hint("fix the config file and run this again")),
    }
}

/// The command that restarts the running daemon through its service manager, if one runs it:
/// as the daemon says, or (a daemon of an older build, which does not) as its cgroup says.
/// Also the failure to connect when the daemon did not answer its hello, so that the restart
/// does not wait for that hello a second time (it took two timeouts, 23 s: found by a helper).
async fn service_restart(g: &Globals) -> (Option<(Vec<String>, u32)>, Option<ConnectError>) {
    let (pid, hung) = match Connection::connect(&g.target).await {
        Ok(mut conn) => match status::fetch(&mut conn).await {
            Ok(report) => {
                if let Some(cmd) = report.restart_command.filter(|c| is_service_restart(c)) {
                    return (Some((cmd, report.pid)), None);
                }
                (Some(report.pid), None)
            }
            Err(_) => (conn.daemon_pid, None),
        },
        Err(ConnectError::Incompatible { pid, .. }) => (pid, None),
        Err(e @ ConnectError::Unresponsive { pid }) => (pid, Some(e)),
        Err(_) => (None, None),
    };
    let cmd = pid.and_then(|pid| {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let cmd =
            mythos_protocol::paths::systemd_restart(&cgroup).filter(|c| is_service_restart(c))?;
        Some((cmd, pid))
    });
    (cmd, hung)
}

/// Whether `cmd` is one of the two restarts a daemon may ask for: this client runs what the
/// daemon says, so anything else (a daemon of another build, or something that is not our
/// daemon) is ignored rather than run.
fn is_service_restart(cmd: &[String]) -> bool {
    let unit_ok = |u: &str| {
        u == "mythosd.service"
            || (u.starts_with("mythosd@")
                && u.ends_with(".service")
                && u.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "@._-".contains(c)))
    };
    match cmd.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["systemctl", "--user", "restart", unit] | ["systemctl", "restart", unit] => unit_ok(unit),
        ["launchctl", "kickstart", "-k", target] => target
            .strip_prefix("gui/")
            .and_then(|t| t.split_once('/'))
            .is_some_and(|(uid, label)| {
                !uid.is_empty()
                    && uid.bytes().all(|b| b.is_ascii_digit())
                    && label == "dev.mythos.mythosd"
            }),
        _ => false,
    }
}

/// Restart a service-managed daemon through its manager (which gives it the unit's keys and
/// keeps supervising it), then wait for it to answer.
async fn restart_service(g: &Globals, cmd: &[String], old_pid: u32) -> Result<u8, Failure> {
    print(&format!("mythosd runs as a service: {}\n", cmd.join(" ")))?;
    let status = tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .status()
        .await
        .map_err(|e| {
            Failure::new(format!("cannot run {}: {e}", cmd[0]))
                .hint(format!("run `{}` where it is installed", cmd.join(" ")))
        })?;
    if !status.success() {
        return Err(Failure::new(format!(
            "`{}` failed ({status})",
            cmd.join(" ")
        )));
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        // The new daemon, not the old one still on its way out (launchctl returns at once).
        if let Ok(mut conn) = Connection::connect(&g.target).await {
            if let Ok(report) = status::fetch(&mut conn).await {
                if report.pid != old_pid {
                    return say_running(g, report.pid);
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(Failure::new("the service did not come back")
                .hint("see its service manager's status, or the daemon's log"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn start(g: &Globals) -> Result<u8, Failure> {
    let mut conn = Connection::connect_or_start(&g.target).await?;
    let report = status::fetch(&mut conn).await?;
    say_running(g, report.pid)
}

/// "mythosd running on SOCKET (pid N)".
fn say_running(g: &Globals, pid: u32) -> Result<u8, Failure> {
    print(&format!(
        "mythosd running on {} (pid {pid})\n",
        g.target.socket.display()
    ))?;
    Ok(EXIT_OK)
}

async fn stop(g: &Globals) -> Result<u8, Failure> {
    let Some(pid) = ask_to_stop(g).await? else {
        print("mythosd is not running\n")?;
        return Ok(EXIT_OK);
    };
    let pid_text = pid.map_or_else(String::new, |p| format!(" (pid {p})"));
    match wait_until_stopped(g, pid).await? {
        true => print(&format!("mythosd stopped{pid_text}\n"))?,
        false => print(&format!(
            "mythosd stopped accepting connections and is finishing the streams in flight{pid_text}\n"
        ))?,
    }
    Ok(EXIT_OK)
}

/// Stop the daemon and start a new one as soon as the old one has handed over: it lets go of
/// its socket, its lock, the HTTP port and the state as its drain begins, so the new one
/// serves while the old one finishes its streams in flight (up to its drain time). Waiting
/// for the old one to exit left agents' connections refused for that long.
async fn restart(g: &Globals, hung: Option<ConnectError>) -> Result<u8, Failure> {
    // The new daemon keeps the old one's environment where this shell lacks a variable: a
    // restart from a shell without the keys switched a daemon with real providers to the
    // simulated ones, without a word (found by a helper). This shell's own values win (a new
    // key is how a user says "fixed").
    let mut target = g.target.clone();
    // One connection, used for both: a daemon that does not answer cost two hello timeouts
    // (23 s) before it was ended (found by a helper).
    let connected = match hung {
        Some(e) => Err(e),
        None => Connection::connect(&g.target).await,
    };
    let old_pid = match &connected {
        Ok(c) => c.daemon_pid,
        Err(ConnectError::Unresponsive { pid } | ConnectError::Incompatible { pid, .. }) => *pid,
        Err(_) => None,
    };
    if let Some(pid) = old_pid {
        target.daemon_env = inherited_env(pid);
    }
    let g = &Globals { target };
    let old = stop_connected(g, connected).await?;
    if old.is_some() && !wait_until_handed_over(g, old.flatten()).await? {
        // An older daemon lets go at its exit only; the start below waits for that in turn
        // (a daemon that finds the socket still held retries until it is free).
        eprint_line("note: the old mythosd still holds its socket; starting the new one anyway");
    }
    let mut conn = Connection::connect_or_start(&g.target).await?;
    let report = status::fetch(&mut conn).await?;
    match old {
        None => print("mythosd was not running\n")?,
        Some(pid) => {
            let pid_text = pid.map_or_else(String::new, |p| format!(" (pid {p})"));
            // Looked at once the new one runs: by then an old one with nothing in flight has
            // long exited.
            if pid.is_some_and(process_alive) {
                print(&format!(
                    "the old mythosd{pid_text} is finishing the streams in flight\n"
                ))?;
            } else {
                print(&format!("mythosd stopped{pid_text}\n"))?;
            }
        }
    }
    say_running(g, report.pid)
}

/// The variables of process `pid` that a daemon reads (provider keys, base URLs and models,
/// `MYTHOS_*`) and this process lacks (Linux, where `/proc` shows a process of the same user
/// its environment; elsewhere none).
fn inherited_env(pid: u32) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let Ok(all) = std::fs::read(format!("/proc/{pid}/environ")) else {
            return Vec::new();
        };
        all.split(|&b| b == 0)
            .filter_map(|kv| {
                let eq = kv.iter().position(|&b| b == b'=')?;
                let (k, v) = (&kv[..eq], &kv[eq + 1..]);
                let name = std::str::from_utf8(k).ok()?;
                let read = name.starts_with("MYTHOS_")
                    || ["_API_KEY", "_KEY", "_BASE_URL", "_MODEL"]
                        .iter()
                        .any(|end| name.ends_with(end))
                    || mythos_protocol::PROVIDER_KEY_VARIABLES.contains(&name);
                (read && !v.is_empty() && std::env::var_os(name).is_none()).then(|| {
                    (
                        std::ffi::OsStr::from_bytes(k).to_os_string(),
                        std::ffi::OsStr::from_bytes(v).to_os_string(),
                    )
                })
            })
            .collect()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        Vec::new()
    }
}

/// Ask the running daemon to shut down. `None`: none runs; else its pid, if known.
async fn ask_to_stop(g: &Globals) -> Result<Option<Option<u32>>, Failure> {
    stop_connected(g, Connection::connect(&g.target).await).await
}

/// [`ask_to_stop`] with the connection (or the failure to make one) in hand.
async fn stop_connected(
    g: &Globals,
    connected: Result<Connection, ConnectError>,
) -> Result<Option<Option<u32>>, Failure> {
    let pid = match connected {
        Err(ConnectError::NotRunning) => return Ok(None),
        // A daemon of another protocol version cannot be asked in words; a signal works for
        // any version (SIGTERM is its orderly shutdown).
        Err(ConnectError::Incompatible {
            build,
            pid: Some(pid),
            ..
        }) => {
            terminate(pid, &build)?;
            Some(pid)
        }
        // A daemon that hangs (SIGSTOP, a deadlock) cannot be asked either: it is ended by
        // signal, the way out its own error message names (found by a helper: `stop` and
        // `restart` failed and told the user to run `restart`).
        Err(ConnectError::Unresponsive { pid: Some(pid) }) => {
            eprint_line(&format!(
                "mythosd (pid {pid}) does not answer; ending it by signal"
            ));
            end_unresponsive(pid).await?;
            Some(pid)
        }
        Err(ConnectError::Incompatible { build, .. }) => {
            return Err(Failure::new(format!(
                "mythosd {build} speaks another protocol and cannot be asked to stop by this client"
            ))
            .hint("stop it with the mythos of its version, or end the mythosd process"))
        }
        Err(e) => return Err(e.into_failure(&g.target)),
        Ok(mut conn) => {
            let pid = match status::fetch(&mut conn).await {
                Ok(report) => Some(report.pid),
                Err(_) => conn.daemon_pid,
            };
            match conn.call(Request::Shutdown).await? {
                Response::Ok => {}
                other => return Err(unexpected(other, "ok")),
            }
            pid
        }
    };
    Ok(Some(pid))
}

/// Wait until the socket refuses connections and its instance lock is free: the daemon has
/// handed over, and a new one can start. Also done when another process than `old` already
/// serves the socket: a client (`mythos ask`) that found it refusing started the next daemon
/// first, and the socket will not refuse again. False if neither has happened by the deadline.
async fn wait_until_handed_over(g: &Globals, old: Option<u32>) -> Result<bool, Failure> {
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match open(&g.target.socket).await {
            Err(e) if nothing_listens(&e) => {
                if instance_lock_free(&g.target.socket) {
                    return Ok(true);
                }
            }
            Err(_) => {}
            Ok(stream) => {
                use interprocess::local_socket::traits::StreamCommon as _;
                let server = stream.peer_creds().ok().and_then(|c| c.pid()).and_then(
                    #[allow(clippy::useless_conversion)]
                    |p| u32::try_from(p).ok(),
                );
                if old.is_some() && server.is_some() && server != old {
                    return Ok(true);
                }
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether no daemon holds the socket's instance lock. The lock is taken and given back at
/// once: a daemon starting in that instant finds it held and retries, as it would behind a
/// daemon on its way out.
#[cfg(unix)]
fn instance_lock_free(socket: &std::path::Path) -> bool {
    let path = mythos_protocol::paths::instance_lock_path(socket);
    match std::fs::File::open(&path) {
        Ok(file) => match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                true
            }
            Err(std::fs::TryLockError::WouldBlock) => false,
            // Cannot tell (a file system without locks): the start finds out.
            Err(std::fs::TryLockError::Error(_)) => true,
        },
        Err(_) => true,
    }
}

/// A pipe that refuses connections is free for the next daemon (no lock file on Windows).
#[cfg(not(unix))]
fn instance_lock_free(_socket: &std::path::Path) -> bool {
    true
}

/// Wait until the socket refuses connections, then (where we can see processes) until the
/// process has exited. Returns false if it still runs, draining, at the deadline.
async fn wait_until_stopped(g: &Globals, pid: Option<u32>) -> Result<bool, Failure> {
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match open(&g.target.socket).await {
            Err(e) if nothing_listens(&e) => break,
            // A pipe or socket being torn down can fail to open in other ways for a moment
            // (wine reported OS error 676 once in CI): that is the daemon stopping, not a
            // reason to give up. Only at the deadline is it reported.
            Err(e) if Instant::now() >= deadline => {
                return Err(Failure::new(format!(
                    "cannot check on mythosd at {}: {e}",
                    g.target.socket.display()
                )))
            }
            Err(_) | Ok(_) => {}
        }
        if Instant::now() >= deadline {
            return Err(Failure::new(format!(
                "mythosd still accepts connections {} s after being asked to stop",
                STOP_TIMEOUT.as_secs()
            ))
            .hint("try again, or end the mythosd process"));
        }
        tokio::time::sleep(POLL).await;
    }
    let Some(pid) = pid else { return Ok(true) };
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(true)
}

#[cfg(unix)]
fn terminate(pid: u32, build: &str) -> Result<(), Failure> {
    let p = i32::try_from(pid).map_err(|_| Failure::new(format!("bad pid {pid}")))?;
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(p, libc::SIGTERM) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Failure::new(format!(
            "cannot stop mythosd {build} (pid {pid}): {e}"
        )));
    }
    Ok(())
}

/// End a daemon that does not answer: SIGTERM (its orderly shutdown, if only its socket
/// hangs), then SIGKILL if it is still there a few seconds later (a stopped or deadlocked
/// process never acts on SIGTERM).
#[cfg(unix)]
async fn end_unresponsive(pid: u32) -> Result<(), Failure> {
    terminate(pid, "that does not answer")?;
    let deadline = Instant::now() + UNRESPONSIVE_GRACE;
    while process_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    if process_alive(pid) {
        let p = i32::try_from(pid).map_err(|_| Failure::new(format!("bad pid {pid}")))?;
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(p, libc::SIGKILL) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(Failure::new(format!("cannot end mythosd (pid {pid}): {e}")));
        }
    }
    Ok(())
}

#[cfg(not(unix))]
async fn end_unresponsive(pid: u32) -> Result<(), Failure> {
    Err(Failure::new(format!("mythosd (pid {pid}) does not answer"))
        .hint("end the mythosd process (Task Manager), then run the command again"))
}

/// How long a daemon that does not answer has to act on SIGTERM before it is killed.
#[cfg(unix)]
const UNRESPONSIVE_GRACE: Duration = Duration::from_secs(3);

#[cfg(not(unix))]
fn terminate(pid: u32, build: &str) -> Result<(), Failure> {
    Err(Failure::new(format!(
        "mythosd {build} (pid {pid}) speaks another protocol and cannot be asked to stop by this client"
    ))
    .hint("end the mythosd process (Task Manager), then run the command again"))
}

/// Whether process `pid` still exists (and is not a zombie waiting for its parent).
#[cfg(unix)]
fn process_alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    if unsafe { libc::kill(p, 0) } != 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    }
    #[cfg(target_os = "linux")]
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name, is the state; Z and X are dead.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            return !matches!(rest.trim_start().chars().next(), Some('Z' | 'X'));
        }
    }
    true
}

#[cfg(not(unix))]
fn process_alive(_pid: u32) -> bool {
    false
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }
}

#[cfg(test)]
mod restart_tests {
    use super::*;

    /// A client that found the socket refusing may start the next daemon before the restart
    /// looks: the socket then never refuses again, and the restart waited its whole 10 s for
    /// it, then said that the old daemon still held the socket.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_next_daemon_already_serving_is_a_hand_over() {
        use interprocess::local_socket::traits::tokio::Listener as _;
        use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
        let dir =
            std::env::temp_dir().join(format!("mythos-client-test-{}-handed", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("d.sock");
        let name = socket.as_path().to_fs_name::<GenericFilePath>().unwrap();
        // The next daemon: this process, not the old one.
        let listener = ListenerOptions::new().name(name).create_tokio().unwrap();
        let accepting = tokio::spawn(async move {
            loop {
                let _ = listener.accept().await;
            }
        });
        let g = Globals {
            target: crate::connection::Target {
                socket,
                encodings: vec![mythos_protocol::Encoding::Json],
                daemon_env: Vec::new(),
            },
        };
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let old = gone.id();
        gone.wait().unwrap();
        let asked = Instant::now();
        assert!(wait_until_handed_over(&g, Some(old)).await.unwrap());
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        accepting.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The client runs only the restarts it knows, whatever a daemon says.
    #[test]
    fn only_known_restarts_are_run() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        for ok in [
            v(&["systemctl", "--user", "restart", "mythosd.service"]),
            v(&["systemctl", "restart", "mythosd@alice.service"]),
            v(&["launchctl", "kickstart", "-k", "gui/501/dev.mythos.mythosd"]),
        ] {
            assert!(is_service_restart(&ok), "{ok:?}");
        }
        for bad in [
            v(&["sh", "-c", "rm -rf ~"]),
            v(&["systemctl", "--user", "restart", "sshd.service"]),
            v(&["systemctl", "--user", "restart", "mythosd@x;y.service"]),
            v(&["systemctl", "--user", "stop", "mythosd.service"]),
            v(&["launchctl", "kickstart", "-k", "gui/501/com.evil"]),
            v(&[]),
        ] {
            assert!(!is_service_restart(&bad), "{bad:?}");
        }
    }
}
