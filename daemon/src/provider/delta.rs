//! What a provider stream yields once its wire format is decoded.

use mythos_protocol::{FinishReason, Text, Usage};

use super::ratelimit::RateLimits;

/// One decoded piece of an upstream stream, in provider-neutral form.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// The provider named the model that answers (Anthropic `message_start`, OpenAI `model`).
    Model(String),
    /// Answer text.
    Text(Text),
    /// Reasoning text (DeepSeek `reasoning_content`, Anthropic `thinking_delta`).
    Thinking(Text),
    /// The signature that closes a thinking block (Anthropic `signature_delta`).
    ThinkingSignature(String),
    /// A redacted thinking block's encrypted data (Anthropic `redacted_thinking`).
    RedactedThinking(String),
    /// The model declines, in words (OpenAI `delta.refusal`), in place of answer text.
    Refusal(Text),
    /// A tool call begins.
    ToolCallStart {
        /// Position of the call in the answer (OpenAI `index`, or the Anthropic tool block's
        /// position among tool blocks, starting at 0).
        index: u32,
        /// Provider's call id.
        id: String,
        /// Tool name.
        name: String,
    },
    /// A fragment of a tool call's JSON arguments (never empty).
    ToolCallArgs {
        /// Which call.
        index: u32,
        /// The fragment.
        json: String,
    },
    /// Token counts so far; each report replaces the previous one.
    Usage(Usage),
    /// Why the model stopped (the stream's terminator still has to come).
    Finish(FinishReason),
    /// The connection is alive (ping event, `: keep-alive` comment) but nothing was produced.
    KeepAlive,
    /// What the response's headers said about the provider's quotas; the first item of every
    /// HTTP stream, before any content.
    RateLimits(Box<RateLimits>),
    /// A server tool's block (Anthropic's web search call or results), whole, as JSON text.
    ServerBlock(String),
    /// Where the text that follows comes from (Anthropic's `citations_delta`), JSON text.
    Citation(String),
}

impl Delta {
    /// Bytes of answer this delta carries (text, reasoning, tool calls, server blocks): what
    /// an answer's size cap counts.
    pub fn answer_bytes(&self) -> usize {
        match self {
            Delta::Text(t) | Delta::Thinking(t) | Delta::Refusal(t) => t.len(),
            Delta::ToolCallArgs { json, .. } => json.len(),
            Delta::ToolCallStart { id, name, .. } => id.len() + name.len(),
            Delta::ServerBlock(json) | Delta::Citation(json) => json.len(),
            Delta::ThinkingSignature(s) | Delta::RedactedThinking(s) => s.len(),
            _ => 0,
        }
    }

    /// Whether this delta is progress for the stall watchdog: content the user (or the tool
    /// caller) will see. Pings and keep-alives prove the socket is open, not that the model works.
    pub fn is_progress(&self) -> bool {
        matches!(
            self,
            Delta::Text(_)
                | Delta::Thinking(_)
                | Delta::Refusal(_)
                | Delta::ToolCallStart { .. }
                | Delta::ToolCallArgs { .. }
                | Delta::ServerBlock(_)
        )
    }
}
