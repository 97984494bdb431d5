//! Decoder for Gemini's `streamGenerateContent?alt=sse` stream.
//!
//! Every `data:` is a whole `GenerateContentResponse`. Only candidate 0 is read. Parts are text
//! (`thought: true` marks reasoning) or a whole `functionCall`, which has no id in this API: one
//! is made up for it, unique per response. Each chunk repeats the usage so far.
//!
//! The stream has no terminator event: it ends with the body. A clean end after a
//! `finishReason` (or a blocked prompt's `promptFeedback.blockReason`) is success; an end
//! without one is a truncation. Failures mid-stream come as a chunk with an `error` object.

use mythos_protocol::{FinishReason, Usage};
use serde::Deserialize;
use serde_json::Value;

use super::GoogleError;
use crate::provider::decode::{Seq, Skipped, Str, WireDecoder};
use crate::provider::delta::Delta;
use crate::provider::error::ProviderError;
use crate::provider::sse::SseEvent;

/// State of one Gemini stream.
#[derive(Debug, Default)]
pub struct GeminiDecoder {
    /// Makes call ids unique across responses when the chunks carry no `responseId`.
    seed: u64,
    model_seen: bool,
    finished: bool,
    calls: u32,
}

impl GeminiDecoder {
    /// A decoder whose made-up call ids include `seed` (tests use 0, for stable ids).
    pub fn new(seed: u64) -> Self {
        GeminiDecoder {
            seed,
            ..Self::default()
        }
    }
}

// The chunk as far as it is read, borrowing its strings from the event's data: the model and
// response id come on every chunk and are rarely kept, and text is copied once, into its delta.
// What is rare (errors, calls, a blocked prompt) sits behind a pointer: serde moves these
// structs several times while building them, so the per-chunk ones stay small.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chunk<'a> {
    #[serde(default, borrow)]
    candidates: Seq<Candidate<'a>>,
    #[serde(default)]
    usage_metadata: Option<RawUsage>,
    #[serde(default, borrow)]
    model_version: Option<Str<'a>>,
    #[serde(default, borrow)]
    response_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    prompt_feedback: Option<Box<PromptFeedback<'a>>>,
    #[serde(default)]
    error: Option<Box<GoogleError>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    content: Option<Content<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(default, borrow)]
    parts: Seq<Part<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
    #[serde(default)]
    thought: bool,
    #[serde(default, borrow)]
    function_call: Option<Box<FunctionCall<'a>>>,
}

// Arguments stay a `Value`: they are re-serialised whole, once per call, not per chunk.
#[derive(Deserialize)]
struct FunctionCall<'a> {
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default, borrow)]
    name: Str<'a>,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawUsage {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    // Unused, but on every chunk: named so that skipping them allocates nothing.
    #[serde(rename = "promptTokensDetails", default)]
    _prompt_details: Option<Skipped>,
    #[serde(rename = "candidatesTokensDetails", default)]
    _candidates_details: Option<Skipped>,
    #[serde(rename = "cacheTokensDetails", default)]
    _cache_details: Option<Skipped>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback<'a> {
    #[serde(default, borrow)]
    block_reason: Option<Str<'a>>,
}

/// The protocol's reason for a Gemini `finishReason`; `tools` says whether the answer called
/// any (Gemini says `STOP` then too, where the other APIs say "tool use").
fn finish_reason(s: &str, tools: bool) -> FinishReason {
    match s {
        "STOP" if tools => FinishReason::ToolUse,
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::MaxTokens,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        other => FinishReason::Other(other.to_string()),
    }
}

/// Keeps the characters the other APIs accept in a call id.
fn id_safe(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(40)
        .collect()
}

impl WireDecoder for GeminiDecoder {
    fn on_event(&mut self, ev: &SseEvent<'_>, out: &mut Vec<Delta>) -> Result<(), ProviderError> {
        if ev.data.trim().is_empty() {
            return Ok(());
        }
        let chunk: Chunk<'_> = serde_json::from_str(ev.data)
            .map_err(|e| ProviderError::malformed(format!("generateContent chunk: {e}")))?;
        if let Some(e) = chunk.error {
            let kind = e.kind(None);
            let mut err = ProviderError::new(
                kind,
                format!(
                    "stream error {}: {}",
                    e.status.as_deref().unwrap_or("UNKNOWN"),
                    e.message.as_deref().unwrap_or_default()
                ),
            );
            err.retry_after = e.retry_delay();
            return Err(err);
        }
        if !self.model_seen {
            if let Some(m) = chunk.model_version.filter(|m| !m.is_empty()) {
                self.model_seen = true;
                out.push(Delta::Model(m.into_string()));
            }
        }
        for cand in chunk.candidates.into_iter().filter(|c| c.index == 0) {
            for part in cand.content.map(|c| c.parts).unwrap_or_default() {
                if let Some(call) = part.function_call.map(|c| *c) {
                    let index = self.calls;
                    self.calls += 1;
                    let id = match (call.id.filter(|i| !i.is_empty()), &chunk.response_id) {
                        (Some(id), _) => id.into_string(),
                        (None, Some(r)) if !r.is_empty() => {
                            format!("call_{}_{index}", id_safe(r.as_str()))
                        }
                        (None, _) => format!("call_{:x}_{index}", self.seed),
                    };
                    out.push(Delta::ToolCallStart {
                        index,
                        id,
                        name: call.name.into_string(),
                    });
                    let json = match call.args {
                        Some(a) if !a.is_null() => a.to_string(),
                        _ => "{}".to_string(),
                    };
                    out.push(Delta::ToolCallArgs { index, json });
                } else if let Some(t) = part.text.filter(|t| !t.is_empty()) {
                    out.push(if part.thought {
                        Delta::Thinking(t.into_text())
                    } else {
                        Delta::Text(t.into_text())
                    });
                }
            }
            if let Some(r) = cand.finish_reason.filter(|r| !r.is_empty()) {
                self.finished = true;
                out.push(Delta::Finish(finish_reason(r.as_str(), self.calls > 0)));
            }
        }
        if let Some(reason) = chunk.prompt_feedback.and_then(|f| f.block_reason) {
            // The prompt itself was refused: no candidates come, and nothing else will.
            self.finished = true;
            out.push(Delta::Finish(if reason.as_str() == "OTHER" {
                FinishReason::Other(reason.into_string())
            } else {
                FinishReason::ContentFilter
            }));
        }
        if let Some(u) = chunk.usage_metadata {
            let cached = u.cached_content_token_count.min(u.prompt_token_count);
            out.push(Delta::Usage(Usage {
                input_tokens: u.prompt_token_count - cached,
                // Thinking is billed as output.
                output_tokens: u.candidates_token_count + u.thoughts_token_count,
                cache_read_input_tokens: cached,
                cache_creation_input_tokens: 0,
                web_searches: 0,
            }));
        }
        Ok(())
    }

    /// Never: the body's end is the only end, and a later chunk may still carry usage.
    fn is_done(&self) -> bool {
        false
    }

    fn ends_cleanly(&self) -> bool {
        self.finished
    }

    fn terminator(&self) -> &'static str {
        "a finishReason"
    }
}
