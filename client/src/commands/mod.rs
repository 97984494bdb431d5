//! One module per command. Each exposes a `run` function returning the exit status or a
//! [`Failure`]; the helpers here are what several commands share.

pub mod ask;
pub mod chat;
pub mod daemon;
pub mod demo;
pub mod env;
pub mod reset;
pub mod status;
pub mod usage;
pub mod watch;
pub mod why;

use std::io::Write;

use mythos_protocol::{ErrorKind, Response};
use serde::Serialize;

use crate::connection::{daemon_config_path, Target};
use crate::error::Failure;
use crate::render::{error_hint, now_unix_ms};
use crate::stream::response_name;

/// Options every command shares.
#[derive(Debug, Clone)]
pub struct Globals {
    /// The daemon to talk to.
    pub target: Target,
}

/// Write `text` to stdout as is.
pub fn print(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Write `value` as pretty JSON, one document followed by a newline.
pub fn print_json<T: Serialize>(value: &T) -> Result<(), Failure> {
    let json = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::new(format!("cannot encode JSON: {e}")))?;
    print(&format!("{json}\n"))
}

/// Write one line to stderr (best effort: there is nowhere else to report a failure).
pub fn eprint_line(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// The failure for a stream that ended with an `error` event: `kind: message` plus a hint.
pub fn stream_failure(
    kind: ErrorKind,
    message: &str,
    retry_at_unix_ms: Option<u64>,
    pinned: bool,
) -> Failure {
    let f = Failure::new(format!("{}: {message}", kind.as_str()));
    match error_hint(
        kind,
        retry_at_unix_ms,
        now_unix_ms(),
        &daemon_config_path(),
        pinned,
    ) {
        Some(h) => f.hint(h),
        None => f,
    }
}

/// The failure for an answer other than the one a request expects.
pub fn unexpected(resp: Response, wanted: &str) -> Failure {
    match resp {
        // "no request has been routed yet", "no provider named `x`": the daemon's words say it;
        // `bad_request:` before them was protocol jargon.
        Response::Error {
            kind: mythos_protocol::ErrorKind::BadRequest,
            message,
        } => Failure::new(message),
        Response::Error { kind, message } => Failure::new(format!("{}: {message}", kind.as_str())),
        other => Failure::new(format!(
            "protocol error: expected {wanted}, mythosd sent {}",
            response_name(&other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mythos_protocol::ErrorKind;

    #[test]
    fn a_refused_call_shows_the_daemons_words_without_protocol_jargon() {
        let f = unexpected(
            Response::Error {
                kind: ErrorKind::BadRequest,
                message: "no request has been routed yet".into(),
            },
            "a request record",
        );
        assert_eq!(f.message, "no request has been routed yet");
        let f = unexpected(
            Response::Error {
                kind: ErrorKind::Overloaded,
                message: "busy".into(),
            },
            "a status report",
        );
        assert_eq!(f.message, "overloaded: busy");
    }
}
