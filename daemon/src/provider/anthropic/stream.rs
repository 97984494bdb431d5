//! Decoder for the Anthropic Messages API stream.
//!
//! Events: `message_start`, `content_block_start` / `_delta` / `_stop`, `ping`, `message_delta`
//! (cumulative usage), `message_stop`, and `error` (e.g. `overloaded_error` after a 200). Unknown
//! event types are ignored, as Anthropic's versioning policy asks of clients.

use mythos_protocol::{FinishReason, Usage};
use serde::Deserialize;

use crate::provider::decode::WireDecoder;
use crate::provider::delta::Delta;
use crate::provider::error::{kind_for_error_type, ProviderError};
use crate::provider::sse::SseEvent;

/// State of one Anthropic stream.
#[derive(Debug, Default)]
pub struct AnthropicDecoder {
    usage: Usage,
    /// Tool-use blocks seen so far, and the content-block index of each (to number calls).
    tool_blocks: Vec<u32>,
    done: bool,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<&'a str>,
    #[serde(default)]
    message: Option<StartMessage>,
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    content_block: Option<Block>,
    #[serde(default)]
    delta: Option<DeltaBody>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize, Default)]
struct RawUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct DeltaBody {
    #[serde(rename = "type", default)]
    ty: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    ty: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

fn finish_reason(s: &str) -> FinishReason {
    match s {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" => FinishReason::MaxTokens,
        "tool_use" => FinishReason::ToolUse,
        "refusal" => FinishReason::Refusal,
        other => FinishReason::Other(other.to_string()),
    }
}

impl AnthropicDecoder {
    fn apply_usage(&mut self, u: &RawUsage, out: &mut Vec<Delta>) {
        if let Some(i) = u.input_tokens {
            self.usage.input_tokens = i;
        }
        if let Some(o) = u.output_tokens {
            self.usage.output_tokens = o;
        }
        out.push(Delta::Usage(self.usage));
    }

    fn tool_number(&self, block: Option<u32>) -> u32 {
        block
            .and_then(|b| self.tool_blocks.iter().position(|&t| t == b))
            .unwrap_or(self.tool_blocks.len().saturating_sub(1)) as u32
    }
}

impl WireDecoder for AnthropicDecoder {
    fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<Delta>) -> Result<(), ProviderError> {
        let parsed: Event<'_> = serde_json::from_str(&ev.data).map_err(|e| {
            ProviderError::malformed(format!("anthropic `{}` event: {e}", ev.event))
        })?;
        let ty = parsed.ty.unwrap_or(ev.event.as_str());
        match ty {
            "message_start" => {
                if let Some(m) = parsed.message {
                    if let Some(model) = m.model {
                        out.push(Delta::Model(model));
                    }
                    if let Some(u) = m.usage {
                        self.apply_usage(&u, out);
                    }
                }
            }
            "content_block_start" => {
                if let Some(b) = parsed.content_block {
                    match b.ty.as_str() {
                        "tool_use" | "server_tool_use" => {
                            self.tool_blocks.push(parsed.index.unwrap_or(0));
                            out.push(Delta::ToolCallStart {
                                index: self.tool_blocks.len() as u32 - 1,
                                id: b.id.unwrap_or_default(),
                                name: b.name.unwrap_or_default(),
                            });
                        }
                        "text" => {
                            if let Some(t) = b.text.filter(|t| !t.is_empty()) {
                                out.push(Delta::Text(t));
                            }
                        }
                        _ => {}
                    }
                }
            }
            "content_block_delta" => {
                if let Some(d) = parsed.delta {
                    match d.ty.as_deref() {
                        Some("text_delta") => {
                            if let Some(t) = d.text.filter(|t| !t.is_empty()) {
                                out.push(Delta::Text(t));
                            }
                        }
                        Some("input_json_delta") => {
                            if let Some(j) = d.partial_json.filter(|j| !j.is_empty()) {
                                out.push(Delta::ToolCallArgs {
                                    index: self.tool_number(parsed.index),
                                    json: j,
                                });
                            }
                        }
                        Some("thinking_delta") => {
                            if let Some(t) = d.thinking.filter(|t| !t.is_empty()) {
                                out.push(Delta::Thinking(t));
                            }
                        }
                        // signature_delta, citations_delta and future kinds carry no text.
                        _ => {}
                    }
                }
            }
            "message_delta" => {
                if let Some(r) = parsed.delta.and_then(|d| d.stop_reason) {
                    out.push(Delta::Finish(finish_reason(&r)));
                }
                if let Some(u) = parsed.usage {
                    self.apply_usage(&u, out);
                }
            }
            "message_stop" => self.done = true,
            "ping" => out.push(Delta::KeepAlive),
            "error" => {
                let e = parsed.error.unwrap_or(ErrorBody {
                    ty: None,
                    message: None,
                });
                let ty = e.ty.unwrap_or_else(|| "error".into());
                return Err(ProviderError::new(
                    kind_for_error_type(&ty),
                    format!(
                        "anthropic stream error {ty}: {}",
                        e.message.unwrap_or_default()
                    ),
                ));
            }
            // content_block_stop and anything newer.
            _ => {}
        }
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn terminator(&self) -> &'static str {
        "message_stop"
    }
}
