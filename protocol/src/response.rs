//! Messages the daemon sends after the hello.

use serde::{Deserialize, Serialize};

use crate::{ErrorKind, RequestId, RequestRecord, StatusReport, StreamEvent, UsageReport};

/// A message from daemon to client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// An event of the chat stream `id`.
    Event {
        /// The [`crate::ChatRequest::id`].
        id: RequestId,
        /// What happened.
        event: StreamEvent,
    },
    /// Answer to [`crate::Request::Status`].
    Status(StatusReport),
    /// Answer to [`crate::Request::Why`].
    Why(RequestRecord),
    /// Answer to [`crate::Request::Usage`].
    Usage(UsageReport),
    /// A request without a payload succeeded.
    Ok,
    /// A non-stream request failed, or the client broke the protocol (the daemon then closes).
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// One line for the user.
        message: String,
    },
}
