//! Messages the daemon sends after the hello.

use serde::{Deserialize, Serialize};

use crate::{ErrorKind, RequestId, RequestRecord, StatusReport, StreamEvent, UsageReport};

/// A message from daemon to client.
///
/// The large, rare answers are boxed (as is [`StreamEvent::Done`]'s): a message is moved
/// through a channel and a sink several times per streamed token, and 88 bytes move in
/// registers where 176 took a `memcpy` call each time. Boxes are invisible on the wire.
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
    Status(Box<StatusReport>),
    /// Answer to [`crate::Request::Why`].
    Why(Box<RequestRecord>),
    /// Answer to [`crate::Request::Usage`].
    Usage(Box<UsageReport>),
    /// A request without a payload succeeded.
    Ok,
    /// Answer to [`crate::Request::Http`]: the HTTP front end, for pointing agents at it.
    Http {
        /// Its base URL (`http://127.0.0.1:7626`, no `/v1`); `None` when it is not listening.
        url: Option<String>,
        /// The local token agents present (never a provider key).
        token: Option<String>,
    },
    /// A non-stream request failed, a chat was not started because its id is already streaming
    /// on the connection (that stream goes on), or the client broke the protocol (the daemon
    /// then closes).
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// One line for the user.
        message: String,
    },
}
