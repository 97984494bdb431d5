//! Events of a chat stream, sent by the daemon.

use serde::{Deserialize, Serialize};

/// The text of a streamed delta ([`StreamEvent::TextDelta`], [`StreamEvent::ThinkingDelta`],
/// [`StreamEvent::RefusalDelta`]).
///
/// A string that keeps up to 24 bytes inline, as long as a `String` and used like one: a
/// token is a few bytes, and a heap allocation and its release per token was 5 % of the
/// daemon's instructions per relayed chunk. On the wire it is a plain string, in both
/// encodings.
pub type Text = compact_str::CompactString;

/// One event of a chat stream.
///
/// Order: `started`, then deltas; `rerouted` may appear between deltas (followed by a new
/// `started`); `queued` may come before any `started` (or after a `rerouted`) while the request
/// waits for capacity; the stream ends with exactly one `done` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamEvent {
    /// A provider accepted the request and is streaming.
    Started {
        /// Provider name.
        provider: String,
        /// Model that answers.
        model: String,
        /// 1 for the first attempt of this request, counting retries and failovers.
        attempt: u32,
        /// Id of the routing record this request will have (`mythos why RECORD`).
        record: u64,
        /// Microseconds the daemon spent on this request before the first upstream request
        /// went out, not counting time queued for capacity.
        setup_us: u64,
    },
    /// Answer text to append.
    TextDelta {
        /// The text.
        text: Text,
    },
    /// Reasoning text (DeepSeek `reasoning_content`, Anthropic thinking). Not part of the answer.
    ThinkingDelta {
        /// The text.
        text: Text,
    },
    /// The model starts a tool call.
    ToolCallStart {
        /// Position of the call in this answer.
        index: u32,
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
    },
    /// A fragment of a tool call's JSON arguments; concatenate fragments of the same index.
    ToolCallDelta {
        /// Which call.
        index: u32,
        /// The fragment.
        json: String,
    },
    /// The daemon moved this request to another provider.
    Rerouted {
        /// Provider that failed.
        from: String,
        /// Provider taking over.
        to: String,
        /// Why, in words.
        reason: String,
        /// Whether the answer so far stands.
        mode: RerouteMode,
    },
    /// Token counts of the current attempt so far (latest wins).
    Usage(Usage),
    /// The answer is complete.
    Done(Box<DoneInfo>),
    /// The request failed; nothing more follows.
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// One line for the user.
        message: String,
        /// When a provider is expected back, as Unix milliseconds, if known.
        retry_at_unix_ms: Option<u64>,
    },
    /// No provider can take the request right now (rate limits, quotas, cooldowns, every
    /// provider busy), but one is expected to within the daemon's `max_queue_wait`: the request
    /// waits in a fair queue and goes out the moment capacity returns. Sent again when the
    /// expectation changes; the next `started` ends the wait.
    Queued {
        /// Why, in words (`anthropic: rate limited for 4 s; deepseek: cooling down`).
        reason: String,
        /// When capacity is expected back, as Unix milliseconds; `None` when it depends on
        /// another request finishing (a probe, a provider's concurrency limit).
        until_unix_ms: Option<u64>,
        /// When the daemon gives up waiting, as Unix milliseconds.
        deadline_unix_ms: u64,
    },
    /// The signature that closes the thinking so far (Anthropic only); the thinking text is
    /// sent back to Anthropic with it in later turns.
    ThinkingSignature {
        /// The opaque signature.
        signature: String,
    },
    /// Thinking the provider redacted (Anthropic's `redacted_thinking` block): nothing to
    /// show, but sent back to Anthropic with its turn in later requests, which keeps the
    /// model's thinking whole across a tool loop.
    RedactedThinking {
        /// The encrypted thinking.
        data: String,
    },
    /// The model declines to answer, in words to append (OpenAI's `refusal`, which arrives in
    /// place of answer text, notably when a response format was asked). Kept apart from
    /// [`StreamEvent::TextDelta`] so a client that parses the answer (structured output) is
    /// not handed the refusal as if it were the answer.
    RefusalDelta {
        /// The text.
        text: Text,
    },
    /// A block of the answer that the provider's servers made and only its own API carries:
    /// Anthropic's server tools (web search, web fetch, code execution) call
    /// (`server_tool_use`) and result (`web_search_tool_result`, ...), as JSON text, whole.
    /// A Messages client gets it as it came and sends it back in later turns; other clients
    /// may show that it happened.
    ServerBlock {
        /// The block, JSON text.
        json: String,
    },
    /// Where the text that follows comes from (Anthropic's `citations_delta`: a web search
    /// result, a document's pages), as JSON text. A Messages client shows it with the text;
    /// Anthropic asks that web search sources be shown to users.
    Citation {
        /// The citation, JSON text.
        json: String,
    },
}

impl StreamEvent {
    /// Part of the answer itself (text, reasoning, a tool call), as opposed to bookkeeping
    /// (started, usage, reroutes, queueing) and the end.
    pub fn is_output(&self) -> bool {
        matches!(
            self,
            StreamEvent::TextDelta { .. }
                | StreamEvent::ThinkingDelta { .. }
                | StreamEvent::ThinkingSignature { .. }
                | StreamEvent::RedactedThinking { .. }
                | StreamEvent::RefusalDelta { .. }
                | StreamEvent::ServerBlock { .. }
                | StreamEvent::Citation { .. }
                | StreamEvent::ToolCallStart { .. }
                | StreamEvent::ToolCallDelta { .. }
        )
    }
}

/// How a complete answer ended. (On the wire, exactly the fields of the `done` event: a newtype
/// variant of a struct encodes like a struct variant, in JSON and in bincode.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneInfo {
    /// Why the model stopped.
    pub finish: FinishReason,
    /// Tokens of the whole request, summed over providers that were billed (what `mythos
    /// usage` counts; the HTTP front end gives agents the last attempt's own count instead,
    /// the conversation with the whole answer, which is what they size their context by).
    pub usage: Usage,
    /// Estimated cost in US dollars.
    pub cost_usd: f64,
    /// Wall time from request to done.
    pub latency_ms: u64,
    /// Provider that finished the answer.
    pub provider: String,
    /// Model that finished the answer.
    pub model: String,
    /// Id of the routing record (`mythos why RECORD`).
    pub record: u64,
}

/// What a reroute means for the text already streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RerouteMode {
    /// Nothing had been streamed yet, or the new provider continues the answer: keep it.
    Continue,
    /// Discard everything received for this request so far; the answer restarts.
    Restart,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Prompt tokens read from the provider's prompt cache (not counted in `input_tokens`).
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    /// Prompt tokens written to the provider's prompt cache (not counted in `input_tokens`).
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    /// Web searches a server tool made (Anthropic's `web_search`), billed apart from tokens.
    #[serde(default)]
    pub web_searches: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;

    /// Component-wise sum.
    fn add(self, other: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens + other.input_tokens,
            output_tokens: self.output_tokens + other.output_tokens,
            cache_read_input_tokens: self.cache_read_input_tokens + other.cache_read_input_tokens,
            cache_creation_input_tokens: self.cache_creation_input_tokens
                + other.cache_creation_input_tokens,
            web_searches: self.web_searches + other.web_searches,
        }
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end (`end_turn`, `stop`, `stop_sequence`).
    Stop,
    /// Hit the token limit (`max_tokens`, `length`).
    MaxTokens,
    /// The model wants tool results (`tool_use`, `tool_calls`).
    ToolUse,
    /// The model refused (`refusal`).
    Refusal,
    /// Output was filtered (`content_filter`).
    ContentFilter,
    /// Any other reason, as the provider named it.
    Other(String),
    /// One of the client's stop sequences ended it, and the provider said which (Anthropic's
    /// `stop_sequence`).
    StopSequence(String),
}

impl FinishReason {
    /// Short name for display.
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::MaxTokens => "max_tokens",
            FinishReason::ToolUse => "tool_use",
            FinishReason::Refusal => "refusal",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Other(s) => s,
            FinishReason::StopSequence(_) => "stop_sequence",
        }
    }
}

/// Kind of a failure, for clients to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// HTTP 429.
    RateLimited,
    /// HTTP 529 / `overloaded_error` / 503.
    Overloaded,
    /// HTTP 5xx.
    ServerError,
    /// Could not connect, or the connection broke.
    Network,
    /// The watchdog saw no progress in time.
    Timeout,
    /// The stream ended without its terminator.
    Truncated,
    /// The provider sent something unparseable.
    Malformed,
    /// HTTP 401/403: the key is wrong or lacks permission.
    Auth,
    /// HTTP 400 and kin: the request itself is wrong.
    BadRequest,
    /// HTTP 404: unknown model or endpoint.
    NotFound,
    /// No provider is configured, or none matches the pin.
    NoProviders,
    /// Every provider is cooling down.
    AllCoolingDown,
    /// Every provider failed to connect at once: this machine looks offline.
    Offline,
    /// The client cancelled.
    Cancelled,
    /// The daemon is shutting down.
    ShuttingDown,
    /// The client broke the protocol.
    Protocol,
    /// A bug in the daemon, or a local resource ran out (file descriptors, memory): nothing a
    /// provider did.
    Internal,
    /// The provider's account cannot pay (HTTP 402, `insufficient_quota`, a low credit
    /// balance): unusable until reset by hand or a long cooldown.
    Billing,
    /// The prompt does not fit the model's context window (HTTP 413, or a 400 that says so).
    ContextLength,
}

/// The message of a `shutting_down` error that refuses a request before any attempt of it
/// was made (the daemon was stopping when it came): no provider saw it, and a client may send
/// it again to the next daemon. A stream the daemon had to cut says something else.
pub const REFUSED_WHILE_STOPPING: &str = "mythosd is shutting down";

impl ErrorKind {
    /// Short snake_case name for display.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::ServerError => "server_error",
            ErrorKind::Network => "network",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Truncated => "truncated",
            ErrorKind::Malformed => "malformed",
            ErrorKind::Auth => "auth",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::NoProviders => "no_providers",
            ErrorKind::AllCoolingDown => "all_cooling_down",
            ErrorKind::Offline => "offline",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Internal => "internal",
            ErrorKind::Billing => "billing",
            ErrorKind::ContextLength => "context_length",
        }
    }
}
