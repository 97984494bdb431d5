//! The wire protocol spoken between `mythosd` and its clients.
//!
//! This crate is the single source of truth for what crosses the local socket (a Unix domain
//! socket, or a named pipe on Windows). It is written so that a client in another language (an
//! editor plugin, say) can implement it from these docs alone.
//!
//! # Framing
//!
//! Every frame, in both directions, is a 4-byte **big-endian** unsigned length followed by that
//! many bytes of payload. A reader checks the length against a cap *before* allocating:
//! [`MAX_HELLO_LEN`] for the hello frames, [`MAX_FRAME_LEN`] afterwards. A frame over the cap is
//! a protocol error and the connection is closed.
//!
//! # Step 1: hello (always JSON, never changes)
//!
//! The client sends one frame whose payload is a JSON [`Hello`]:
//!
//! ```json
//! {"magic":"mythos","protocol":2,"build":"0.1.0","encodings":["bincode","json"]}
//! ```
//!
//! The daemon answers with one JSON [`HelloReply`] frame, either
//! `{"accepted":{"protocol":2,"build":"0.1.0","encoding":"json"}}` or
//! `{"incompatible":{"protocol":2,"build":"0.1.0","reason":"..."}}`, after which it closes the
//! connection. The shape of these two messages is frozen: a client from any version can always
//! learn which version of the daemon is running and tell its user what to do.
//!
//! # Step 2: messages
//!
//! After an accepted hello, every frame holds one message in the chosen [`Encoding`]:
//! the client sends [`Request`]s, the daemon sends [`Response`]s. With `json`, messages use
//! serde's externally tagged form with `snake_case` names, for example
//!
//! ```json
//! {"chat":{"id":1,"messages":[{"role":"user","content":[{"text":{"text":"hi"}}]}],"task":"code"}}
//! {"event":{"id":1,"event":{"started":{"provider":"anthropic","model":"claude-sonnet-4-5","attempt":1}}}}
//! {"event":{"id":1,"event":{"text_delta":{"text":"Hel"}}}}
//! {"event":{"id":1,"event":{"done":{...}}}}
//! ```
//!
//! Optional request fields may be left out in JSON. `bincode` is bincode 2's standard
//! configuration over the same serde model (fields in declaration order, varint integers).
//!
//! # Step 3: streams
//!
//! A [`ChatRequest`] carries an `id` chosen by the client, unique on its connection. Every
//! [`StreamEvent`] about it comes back wrapped in [`Response::Event`] with the same id, so
//! several requests may be in flight on one connection. A stream always ends with exactly one
//! [`StreamEvent::Done`] or [`StreamEvent::Error`]. [`Request::Cancel`] stops a stream (the daemon
//! aborts the upstream HTTP request, and answers with an `error` event of kind `cancelled`).
//! Closing the connection cancels everything in flight on it.
//!
//! Other requests ([`Request::Status`], [`Request::Shutdown`], ...) are answered by exactly one
//! non-event [`Response`], in the order they were sent.

#![warn(missing_docs)]

pub mod budget;
pub mod clock;
pub mod event;
pub mod hello;
pub mod paths;
pub mod reports;
pub mod request;
pub mod response;
pub mod startup;

#[cfg(feature = "codec")]
pub mod codec;

pub use event::{
    DoneInfo, ErrorKind, FinishReason, RerouteMode, StreamEvent, Text, Usage,
    REFUSED_WHILE_STOPPING,
};
pub use hello::{negotiate, Encoding, Hello, HelloReply};
pub use reports::{
    Attempt, BreakerState, CandidateScore, Failover, ModelLimits, ProviderStatus, QuotaStatus,
    RequestRecord, StatusReport, UsageReport, UsageRow,
};
pub use request::{
    CachePoint, CacheTtl, ChatOptions, ChatRequest, ContentBlock, ImageSource, Message,
    NativeField, Pin, Request, RequestId, ResponseFormat, Role, SimFault, SystemBlock, TaskKind,
    Thinking, ToolChoice, ToolSpec, PDF,
};
pub use response::Response;
pub use startup::StartupLine;

/// Every environment variable from which mythosd registers a provider when it starts (the
/// built-in providers' and the presets' keys), for clients that tell a user which of their
/// keys the daemon lacks, or keep a private daemon away from them. The daemon's tests check
/// this list against its own.
pub const PROVIDER_KEY_VARIABLES: [&str; 12] = [
    "ANTHROPIC_API_KEY",
    "DEEPSEEK_API_KEY",
    "OPENAI_API_KEY",
    "OPENROUTER_API_KEY",
    "GROQ_API_KEY",
    "MISTRAL_API_KEY",
    "XAI_API_KEY",
    "TOGETHER_API_KEY",
    "FIREWORKS_API_KEY",
    "CEREBRAS_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
];

/// Identifies a mythos hello; anything else on the socket is not one of ours.
pub const MAGIC: &str = "mythos";

/// Version of the message model after the hello. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 9;

/// Cap on a hello frame. Hellos are tiny; a larger length prefix means the peer is not a mythos
/// client (an HTTP request's `GET ` reads as a 1.2 GB length, for instance).
pub const MAX_HELLO_LEN: usize = 4 * 1024;

/// Cap on any frame after the hello. Large enough for a long coding conversation with file
/// contents inline; small enough that a corrupt prefix cannot make the daemon allocate gigabytes.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;
