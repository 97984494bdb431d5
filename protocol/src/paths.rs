//! Where the daemon listens and keeps its files, agreed by daemon and clients.
//!
//! Not wire format, but both sides must compute the same socket path, so it lives here.

use std::path::PathBuf;

/// Environment variable that overrides the socket path (or pipe name on Windows).
pub const SOCKET_ENV: &str = "MYTHOS_SOCKET";

/// The socket path: `$MYTHOS_SOCKET`, else `mythosd.sock` in [`runtime_dir`].
pub fn socket_path() -> PathBuf {
    match std::env::var_os(SOCKET_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default_socket_path(),
    }
}

#[cfg(unix)]
fn default_socket_path() -> PathBuf {
    runtime_dir().join("mythosd.sock")
}

#[cfg(windows)]
fn default_socket_path() -> PathBuf {
    // A named pipe lives in the pipe namespace, not on disk; include the user so two users on
    // one machine do not meet.
    let user = std::env::var("USERNAME").unwrap_or_else(|_| "user".into());
    PathBuf::from(format!("mythosd-{user}"))
}

/// The lock file beside the socket (Unix): the daemon that holds its lock is the one for the
/// socket path. A stopping daemon lets go of it as its drain begins, and `mythos daemon
/// restart` starts the next one as soon as it is free.
pub fn instance_lock_path(socket: &std::path::Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Per-user runtime directory: `$XDG_RUNTIME_DIR/mythos`, else `mythos-<uid>` under the
/// temp dir. The daemon creates it with mode 0700.
pub fn runtime_dir() -> PathBuf {
    match env_dir("XDG_RUNTIME_DIR") {
        Some(dir) => dir.join("mythos"),
        None => std::env::temp_dir().join(format!("mythos-{}", user_id())),
    }
}

/// Where state (health database, logs) is kept: `$XDG_STATE_HOME/mythos`, else
/// `~/.local/state/mythos`.
pub fn state_dir() -> PathBuf {
    env_dir("XDG_STATE_HOME")
        .or_else(|| home().map(|h| h.join(".local").join("state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("mythos")
}

/// The optional config file: `$XDG_CONFIG_HOME/mythos/config.toml`, else
/// `~/.config/mythos/config.toml`.
pub fn config_path() -> PathBuf {
    env_dir("XDG_CONFIG_HOME")
        .or_else(|| home().map(|h| h.join(".config")))
        .unwrap_or_else(std::env::temp_dir)
        .join("mythos")
        .join("config.toml")
}

fn env_dir(var: &str) -> Option<PathBuf> {
    // The XDG spec says relative paths are invalid and must be ignored.
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from)
}

#[cfg(unix)]
fn user_id() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }.to_string()
}

#[cfg(not(unix))]
fn user_id() -> String {
    std::env::var("USERNAME").unwrap_or_else(|_| "user".into())
}

/// How systemd restarts the `mythosd` unit whose process has `cgroup` (a `/proc/PID/cgroup`
/// text): `systemctl [--user] restart mythosd[@NAME].service`. `None` for a process in any
/// other unit (a terminal, a bot that runs `mythos` and auto-started a daemon).
pub fn systemd_restart(cgroup: &str) -> Option<Vec<String>> {
    for line in cgroup.lines() {
        let path = line.rsplit(':').next().unwrap_or("");
        let Some(unit) = path.rsplit('/').next() else {
            continue;
        };
        let ours = unit == "mythosd.service"
            || (unit.starts_with("mythosd@") && unit.ends_with(".service"));
        if ours {
            let mut cmd = vec!["systemctl".to_string()];
            if path.contains("/user@") {
                cmd.push("--user".into());
            }
            cmd.extend(["restart".to_string(), unit.to_string()]);
            return Some(cmd);
        }
    }
    None
}

/// What a daemon its service manager runs writes into its instance lock file, read by a
/// client that finds no daemon answering: start it through the manager, never with a daemon of
/// its own. One a client started while the manager's was finishing its streams (`systemctl
/// restart`) took the socket first once the old one exited; the manager's then failed as
/// "already running", and the one left serving had the shell's environment instead of the
/// unit's keys, with simulated providers where the keys were missing.
const STARTED_BY: &str = "started-by:";

/// The lock file's text for a daemon restarted by `restart` (see [`systemd_restart`] and the
/// launchd agent's `launchctl kickstart -k gui/UID/LABEL`): the command that starts it again
/// if it is not running. `None` where a client could not run it (a system unit needs root)
/// or the command is not one of those.
pub fn managed_marker(restart: &[String]) -> Option<String> {
    let start: Vec<&str> = match restart
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["systemctl", "--user", "restart", unit] => vec!["systemctl", "--user", "start", unit],
        ["launchctl", "kickstart", "-k", target] => vec!["launchctl", "kickstart", target],
        _ => return None,
    };
    let line = format!("{STARTED_BY} {}\n", start.join(" "));
    start_command(&line).is_some().then_some(line)
}

/// The command in a lock file's text that starts the daemon through its service manager, if
/// the text holds one. Only the two exact shapes [`managed_marker`] writes are taken, with
/// names in a plain alphabet: the file is private, but what a client runs is never more than
/// what it could have built itself.
pub fn start_command(lock_text: &str) -> Option<Vec<String>> {
    let line = lock_text.lines().next()?.strip_prefix(STARTED_BY)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '_' | '-' | ':'))
    };
    let ok = match words.as_slice() {
        ["systemctl", "--user", "start", unit] => {
            plain(unit)
                && (*unit == "mythosd.service"
                    || (unit.starts_with("mythosd@") && unit.ends_with(".service")))
        }
        ["launchctl", "kickstart", target] => {
            let mut parts = target.split('/');
            parts.next() == Some("gui")
                && parts
                    .next()
                    .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
                && parts.next() == Some("dev.mythos.mythosd")
                && parts.next().is_none()
        }
        _ => false,
    };
    ok.then(|| words.iter().map(|w| w.to_string()).collect())
}

#[cfg(test)]
mod systemd_tests {
    use super::*;

    #[test]
    fn a_managed_daemon_says_how_to_start_it_and_nothing_else_is_run() {
        let words = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let user = managed_marker(&words(&[
            "systemctl",
            "--user",
            "restart",
            "mythosd.service",
        ]))
        .unwrap();
        assert_eq!(user, "started-by: systemctl --user start mythosd.service\n");
        assert_eq!(
            start_command(&user).unwrap(),
            ["systemctl", "--user", "start", "mythosd.service"]
        );
        let agent = managed_marker(&words(&[
            "launchctl",
            "kickstart",
            "-k",
            "gui/501/dev.mythos.mythosd",
        ]))
        .unwrap();
        assert_eq!(
            start_command(&agent).unwrap(),
            ["launchctl", "kickstart", "gui/501/dev.mythos.mythosd"]
        );
        // A system unit needs root to start: a client goes on as before.
        assert_eq!(
            managed_marker(&words(&["systemctl", "restart", "mythosd@alice.service"])),
            None
        );
        // Nothing but those shapes, with plain names, is ever taken from the file.
        for text in [
            "",
            "\n",
            "started-by: systemctl --user start other.service\n",
            "started-by: systemctl --user start mythosd.service; rm -rf ~\n",
            "started-by: systemctl --user start mythosd.service extra\n",
            "started-by: sh -c mythosd\n",
            "started-by: launchctl kickstart gui/501/evil.agent\n",
            "started-by: launchctl kickstart gui/5o1/dev.mythos.mythosd\n",
            "started-by: launchctl kickstart -k gui/501/dev.mythos.mythosd\n",
            "systemctl --user start mythosd.service\n",
        ] {
            assert_eq!(start_command(text), None, "{text:?}");
        }
    }

    #[test]
    fn only_the_mythosd_unit_is_restarted_and_with_its_manager() {
        let user = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/mythosd.service\n";
        assert_eq!(
            systemd_restart(user).unwrap(),
            ["systemctl", "--user", "restart", "mythosd.service"]
        );
        let system = "0::/system.slice/mythosd@alice.service\n";
        assert_eq!(
            systemd_restart(system).unwrap(),
            ["systemctl", "restart", "mythosd@alice.service"]
        );
        let v1 = "12:pids:/user.slice/user-1000.slice/user@1000.service/app.slice/mythosd.service\n\
                  1:name=systemd:/user.slice/user-1000.slice/user@1000.service/app.slice/mythosd.service\n";
        assert_eq!(systemd_restart(v1).unwrap()[3], "mythosd.service");
        // A shell in a terminal, or a bot whose `mythos` started a daemon: not ours to restart.
        for other in [
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/vte-spawn-1.scope\n",
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/mythos-bot.service\n",
        ] {
            assert_eq!(systemd_restart(other), None, "{other}");
        }
    }
}
