//! Whether a service manager runs this daemon, and how it is restarted there.
//!
//! A daemon the service manager started must be restarted through it: `mythos daemon restart`
//! used to stop it (a clean exit, which neither the systemd unit nor the launchd agent
//! restarts) and start an unmanaged one in its place, with the shell's environment instead
//! of the unit's keys.

/// The command that restarts this daemon through its service manager, if one runs it: this
/// process is the `mythosd` systemd unit (`mythosd.service`, `mythosd@NAME.service`) or the
/// `dev.mythos.mythosd` launchd agent. (Only the name tells a service from a terminal started
/// by one: a terminal's shells inherit its `INVOCATION_ID` or `XPC_SERVICE_NAME`.)
pub fn restart_command() -> Option<Vec<String>> {
    // Read once: it cannot change while the process lives, and `status --watch` asks often.
    static COMMAND: std::sync::OnceLock<Option<Vec<String>>> = std::sync::OnceLock::new();
    COMMAND.get_or_init(find_restart_command).clone()
}

fn find_restart_command() -> Option<Vec<String>> {
    if std::env::var_os("INVOCATION_ID").is_some() {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        return mythos_protocol::paths::systemd_restart(&cgroup);
    }
    let label = std::env::var("XPC_SERVICE_NAME").ok()?;
    if label != "dev.mythos.mythosd" {
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

/// Whether systemd runs this daemon as its unit (an exit status then tells it what happened).
pub fn under_systemd() -> bool {
    restart_command().is_some_and(|c| c[0] == "systemctl")
}
