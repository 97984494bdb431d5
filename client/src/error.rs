//! The one error type of the client: a line for the user, an optional hint, an exit status.
//!
//! Every command returns `Result<u8, Failure>`. `main` prints a failure as
//! `mythos: <message>` plus `hint: <hint>` on stderr and exits with its code, so no I/O problem
//! ever reaches the user as a panic or a backtrace.

use std::io;

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: the request failed, the daemon could not be reached or started, bad input.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: the running daemon speaks another protocol version (clap also uses 2 for usage
/// errors).
pub const EXIT_INCOMPATIBLE: u8 = 2;
/// Exit status: bad usage (clap's status for command-line errors; also an empty prompt).
pub const EXIT_USAGE: u8 = 2;
/// Exit status of `mythos daemon status` when no daemon is running.
pub const EXIT_NOT_RUNNING: u8 = 3;
/// Exit status after Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Why a command failed, ready to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// One line; empty for a silent exit (stdout closed under us).
    pub message: String,
    /// What the user can do about it.
    pub hint: Option<String>,
    /// Process exit status.
    pub code: u8,
}

impl Failure {
    /// A failure with exit status 1.
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            hint: None,
            code: EXIT_FAILURE,
        }
    }

    /// Attach a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Set the exit status.
    pub fn code(mut self, code: u8) -> Self {
        self.code = code;
        self
    }

    /// Exit with `code` and print nothing.
    pub fn silent(code: u8) -> Self {
        Failure {
            message: String::new(),
            hint: None,
            code,
        }
    }

    /// Print to stderr (unless silent) and return the exit status.
    pub fn report(&self) -> u8 {
        use std::io::Write;
        if !self.message.is_empty() {
            let mut err = io::stderr().lock();
            // Nothing sensible is left to do if stderr itself is gone.
            let _ = writeln!(err, "mythos: {}", self.message);
            if let Some(hint) = &self.hint {
                let _ = writeln!(err, "hint: {hint}");
            }
        }
        self.code
    }
}

/// Errors writing our own output (stdout, stderr). A closed pipe (`mythos status | head -1`) is
/// the reader's choice, not an error: exit quietly. Errors talking to the daemon are mapped
/// explicitly where they happen, never through this conversion.
impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Failure::silent(EXIT_OK)
        } else {
            Failure::new(format!("cannot write output: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pipe_is_a_quiet_success() {
        let f = Failure::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(f.code, EXIT_OK);
        assert!(f.message.is_empty());
        let f = Failure::from(io::Error::other("disk full"));
        assert_eq!(f.code, EXIT_FAILURE);
        assert!(f.message.contains("disk full"));
    }
}
