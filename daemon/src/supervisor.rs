//! Whether a service manager runs this daemon, and how it is restarted there.
//!
//! A daemon the service manager started must be restarted through it: `mythos daemon restart`
//! used to stop it (a clean exit, which neither the systemd unit nor the launchd agent
//! restarts) and start an unmanaged one in its place, with the shell's environment instead
//! of the unit's keys.

/// The command that restarts this daemon through its service manager, if one runs it: this
/// process is the systemd user unit or the launchd agent whose name says `mythos`. (Only the
/// name tells a service from a terminal started by one: a terminal's shells inherit its
/// `INVOCATION_ID` or `XPC_SERVICE_NAME`.)
pub fn restart_command() -> Option<Vec<String>> {
    if let Some(unit) = systemd_unit() {
        return Some(
            ["systemctl", "--user", "restart", &unit]
                .map(String::from)
                .to_vec(),
        );
    }
    let label = std::env::var("XPC_SERVICE_NAME").ok()?;
    if !label.contains("mythos") {
        return None;
    }
    #[cfg(unix)]
    // SAFETY: getuid cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    #[cfg(not(unix))]
    let uid = 0;
    Some(
        [
            "launchctl",
            "kickstart",
            "-k",
            &format!("gui/{uid}/{label}"),
        ]
        .map(String::from)
        .to_vec(),
    )
}

/// The systemd unit this process runs as (from its cgroup), if it is a mythos one.
fn systemd_unit() -> Option<String> {
    std::env::var_os("INVOCATION_ID")?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    unit_of(&cgroup)
}

/// The `.service` unit at the end of a `/proc/self/cgroup` text, if its name says `mythos`.
fn unit_of(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .find(|u| u.ends_with(".service") && u.contains("mythos"))
        .map(String::from)
}

/// Whether systemd runs this daemon as its unit (an exit status then tells it what happened).
pub fn under_systemd() -> bool {
    systemd_unit().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_comes_from_the_cgroup_and_must_be_ours() {
        let ours = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/mythosd.service\n";
        assert_eq!(unit_of(ours).as_deref(), Some("mythosd.service"));
        // A shell in a terminal that systemd started is not the daemon's unit.
        let terminal = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/\
                        app-gnome-org.gnome.Terminal.slice/vte-spawn-1.scope\n";
        assert_eq!(unit_of(terminal), None);
        let other = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/tmux.service\n";
        assert_eq!(unit_of(other), None);
    }
}
