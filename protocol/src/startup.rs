//! The one line `mythosd --notify-stdout` prints when it is ready, or why it is not, for the
//! client that started it: `ready <socket>`, `already-running <socket>` or `error <message>`.
//! Defined once here, written by the daemon and read by the client and the tests.

use std::fmt;

/// The daemon's start-up line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupLine {
    /// `ready <socket>`: the socket accepts connections.
    Ready(String),
    /// `already-running <socket>`: another daemon owns the socket.
    AlreadyRunning(String),
    /// `error <message>`: the daemon could not start.
    Error(String),
}

impl StartupLine {
    /// Read a line (a trailing newline is fine); `None` for anything else.
    pub fn parse(line: &str) -> Option<StartupLine> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "ready" => Some(StartupLine::Ready(rest.to_string())),
            "already-running" => Some(StartupLine::AlreadyRunning(rest.to_string())),
            "error" => Some(StartupLine::Error(rest.to_string())),
            _ => None,
        }
    }
}

impl fmt::Display for StartupLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartupLine::Ready(s) => write!(f, "ready {s}"),
            StartupLine::AlreadyRunning(s) => write!(f, "already-running {s}"),
            StartupLine::Error(m) => write!(f, "error {m}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        for line in [
            StartupLine::Ready("/run/user/1/mythos/mythosd.sock".into()),
            StartupLine::AlreadyRunning("/tmp/a b.sock".into()),
            StartupLine::Error("config.toml line 3: unknown field `x`".into()),
        ] {
            assert_eq!(StartupLine::parse(&format!("{line}\n")), Some(line));
        }
        assert_eq!(StartupLine::parse("hello"), None);
        assert_eq!(StartupLine::parse(""), None);
    }
}
