//! Decoder for the Anthropic Messages API stream.
//!
//! Events: `message_start`, `content_block_start` / `_delta` / `_stop`, `ping`, `message_delta`
//! (cumulative usage), `message_stop`, and `error` (e.g. `overloaded_error` after a 200). Unknown
//! event types are ignored, as Anthropic's versioning policy asks of clients.
//!
//! Thinking blocks yield their text and then their signature (`signature_delta`), which the
//! client must send back with the text in later turns. `redacted_thinking` blocks carry nothing
//! a user can read and are skipped. Usage counts cache reads and writes apart from
//! `input_tokens`, exactly as the API reports them.

use mythos_protocol::{FinishReason, Usage};
use serde::Deserialize;

use crate::provider::decode::{Str, WireDecoder};
use crate::provider::delta::Delta;
use crate::provider::error::{kind_for_error_type, ProviderError};
use crate::provider::sse::SseEvent;

/// State of one Anthropic stream.
#[derive(Debug, Default)]
pub struct AnthropicDecoder {
    usage: Usage,
    /// Tool-use blocks seen so far, and the content-block index of each (to number calls).
    tool_blocks: Vec<u32>,
    /// The server tool block being read: its content-block index, its start (JSON), and the
    /// input its deltas add up to. It goes out whole at its stop.
    server_block: Option<(u32, String, String)>,
    /// A tool call's input given whole in its start (content-block index, JSON), not yet
    /// sent: it goes out at the block's stop unless `input_json_delta`s came, which replace it
    /// (as the official SDK's accumulator does). The API itself starts with `{}` and streams
    /// the input; servers that speak its format may not.
    start_input: Option<(u32, String)>,
    done: bool,
}

// The event as far as it is read, borrowing its strings from the event's data: the type tags
// are only compared, and text is copied once, into its delta. What comes once per message or
// block sits behind a pointer: serde moves these structs several times while building them, so
// the per-delta event stays small.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<&'a str>,
    #[serde(default, borrow)]
    message: Option<Box<StartMessage<'a>>>,
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, borrow)]
    content_block: Option<&'a serde_json::value::RawValue>,
    #[serde(default, borrow)]
    delta: Option<DeltaBody<'a>>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    error: Option<Box<ErrorBody>>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(default, borrow)]
    model: Option<Str<'a>>,
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize, Default)]
struct RawUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    /// `{"web_search_requests": n, "web_fetch_requests": m}`: what server tools did.
    #[serde(default)]
    server_tool_use: Option<RawServerToolUse>,
}

#[derive(Deserialize)]
struct RawServerToolUse {
    #[serde(default)]
    web_search_requests: Option<u64>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow)]
    ty: Str<'a>,
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
    #[serde(default, borrow)]
    thinking: Option<Str<'a>>,
    #[serde(default, borrow)]
    data: Option<Str<'a>>,
    #[serde(default, borrow)]
    input: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct DeltaBody<'a> {
    #[serde(rename = "type", default, borrow)]
    ty: Option<Str<'a>>,
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
    #[serde(default, borrow)]
    partial_json: Option<Str<'a>>,
    #[serde(default, borrow)]
    thinking: Option<Str<'a>>,
    #[serde(default, borrow)]
    signature: Option<Str<'a>>,
    #[serde(default, borrow)]
    stop_reason: Option<Str<'a>>,
    #[serde(default, borrow)]
    stop_sequence: Option<Str<'a>>,
    #[serde(default, borrow)]
    citation: Option<&'a serde_json::value::RawValue>,
}

// Only read when the stream fails: owned, like the error it becomes.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    ty: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// A server tool block, whole: its start with the `input` its deltas added up to.
fn server_block(start: &str, input: &str) -> Result<String, ProviderError> {
    if input.trim().is_empty() {
        return Ok(start.to_string());
    }
    let bad = |e: serde_json::Error| {
        ProviderError::malformed(format!("anthropic server tool block: {e}"))
    };
    let mut block: serde_json::Value = serde_json::from_str(start).map_err(bad)?;
    let input: serde_json::Value = serde_json::from_str(input).map_err(bad)?;
    if let Some(obj) = block.as_object_mut() {
        obj.insert("input".into(), input);
    }
    Ok(block.to_string())
}

/// Whether `json` is an object with at least one key (the API's own start says `{}`).
fn has_keys(json: &str) -> bool {
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json)
        .is_ok_and(|m| !m.is_empty())
}

fn finish_reason(s: &str) -> FinishReason {
    match s {
        "end_turn" => FinishReason::Stop,
        // Kept by name: a Messages client is told `stop_sequence` (the Chat Completions and
        // Responses encoders read it as a plain stop).
        "stop_sequence" => FinishReason::Other("stop_sequence".into()),
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
        if let Some(r) = u.cache_read_input_tokens {
            self.usage.cache_read_input_tokens = r;
        }
        if let Some(w) = u.cache_creation_input_tokens {
            self.usage.cache_creation_input_tokens = w;
        }
        if let Some(n) = u
            .server_tool_use
            .as_ref()
            .and_then(|s| s.web_search_requests)
        {
            self.usage.web_searches = n;
        }
        out.push(Delta::Usage(self.usage));
    }

    /// Send a tool call's input given whole in its start (see `start_input`).
    fn flush_start_input(&mut self, out: &mut Vec<Delta>) {
        if let Some((at, json)) = self.start_input.take() {
            out.push(Delta::ToolCallArgs {
                index: self.tool_number(Some(at)),
                json,
            });
        }
    }

    fn tool_number(&self, block: Option<u32>) -> u32 {
        block
            .and_then(|b| self.tool_blocks.iter().position(|&t| t == b))
            .unwrap_or(self.tool_blocks.len().saturating_sub(1)) as u32
    }
}

impl WireDecoder for AnthropicDecoder {
    fn on_event(&mut self, ev: &SseEvent<'_>, out: &mut Vec<Delta>) -> Result<(), ProviderError> {
        let parsed: Event<'_> = serde_json::from_str(ev.data).map_err(|e| {
            ProviderError::malformed(format!("anthropic `{}` event: {e}", ev.event))
        })?;
        let ty = parsed.ty.unwrap_or(ev.event);
        match ty {
            "message_start" => {
                if let Some(m) = parsed.message {
                    if let Some(model) = m.model {
                        out.push(Delta::Model(model.into_string()));
                    }
                    if let Some(u) = m.usage {
                        self.apply_usage(&u, out);
                    }
                }
            }
            "content_block_start" => {
                if let Some(raw) = parsed.content_block {
                    let b: Block<'_> = serde_json::from_str(raw.get()).map_err(|e| {
                        ProviderError::malformed(format!("anthropic content block: {e}"))
                    })?;
                    match b.ty.as_str() {
                        "tool_use" => {
                            self.flush_start_input(out);
                            let at = parsed.index.unwrap_or(0);
                            self.tool_blocks.push(at);
                            out.push(Delta::ToolCallStart {
                                index: self.tool_blocks.len() as u32 - 1,
                                id: b.id.map(Str::into_string).unwrap_or_default(),
                                name: b.name.map(Str::into_string).unwrap_or_default(),
                            });
                            // Left out, the call went to the client as `{}` and the agent ran
                            // its tool with no arguments (found by a chaos run).
                            if let Some(input) = b.input.filter(|i| has_keys(i.get())) {
                                self.start_input = Some((at, input.get().to_string()));
                            }
                        }
                        "text" => {
                            if let Some(t) = b.text.filter(|t| !t.is_empty()) {
                                out.push(Delta::Text(t.into_text()));
                            }
                        }
                        "thinking" => {
                            if let Some(t) = b.thinking.filter(|t| !t.is_empty()) {
                                out.push(Delta::Thinking(t.into_text()));
                            }
                        }
                        // Whole in its start event: the client gets it to send back.
                        "redacted_thinking" => {
                            if let Some(d) = b.data.filter(|d| !d.is_empty()) {
                                out.push(Delta::RedactedThinking(d.into_string()));
                            }
                        }
                        // A server tool's call (`server_tool_use`, its input to come in deltas)
                        // or result (`web_search_tool_result`, ...), and kinds newer than
                        // this code: whole, for the client that offered the tool.
                        _ => {
                            self.server_block = Some((
                                parsed.index.unwrap_or(0),
                                raw.get().to_string(),
                                String::new(),
                            ))
                        }
                    }
                }
            }
            "content_block_delta" => {
                if let Some(d) = parsed.delta {
                    match d.ty.as_ref().map(Str::as_str) {
                        Some("text_delta") => {
                            if let Some(t) = d.text.filter(|t| !t.is_empty()) {
                                out.push(Delta::Text(t.into_text()));
                            }
                        }
                        Some("input_json_delta") => match &mut self.server_block {
                            Some((at, _, input)) if Some(*at) == parsed.index => {
                                if let Some(j) = d.partial_json {
                                    input.push_str(j.as_str());
                                }
                            }
                            _ => {
                                let j = d.partial_json.filter(|j| !j.is_empty());
                                // Only input that comes replaces the start's: the API's first
                                // delta is often empty, and the SDK keeps the start's then.
                                if j.is_some()
                                    && self.start_input.as_ref().map(|s| s.0) == parsed.index
                                {
                                    self.start_input = None;
                                }
                                if let Some(j) = j {
                                    out.push(Delta::ToolCallArgs {
                                        index: self.tool_number(parsed.index),
                                        json: j.into_string(),
                                    });
                                }
                            }
                        },
                        Some("thinking_delta") => {
                            if let Some(t) = d.thinking.filter(|t| !t.is_empty()) {
                                out.push(Delta::Thinking(t.into_text()));
                            }
                        }
                        Some("signature_delta") => {
                            if let Some(sig) = d.signature.filter(|s| !s.is_empty()) {
                                out.push(Delta::ThinkingSignature(sig.into_string()));
                            }
                        }
                        Some("citations_delta") => {
                            if let Some(c) = d.citation {
                                out.push(Delta::Citation(c.get().to_string()));
                            }
                        }
                        // Future kinds.
                        _ => {}
                    }
                }
            }
            "message_delta" => {
                // A block's stop that never came: its input still goes before the finish.
                self.flush_start_input(out);
                if let Some(d) = parsed.delta {
                    if let Some(r) = d.stop_reason {
                        let finish = match d.stop_sequence {
                            // Which of the client's sequences it was, for the client.
                            Some(s) if r.as_str() == "stop_sequence" => {
                                FinishReason::StopSequence(s.into_string())
                            }
                            _ => finish_reason(r.as_str()),
                        };
                        out.push(Delta::Finish(finish));
                    }
                }
                if let Some(u) = parsed.usage {
                    self.apply_usage(&u, out);
                }
            }
            "content_block_stop" => {
                if self.start_input.as_ref().map(|s| s.0) == parsed.index {
                    self.flush_start_input(out);
                }
                if let Some((at, start, input)) = self.server_block.take() {
                    if Some(at) == parsed.index {
                        out.push(Delta::ServerBlock(server_block(&start, &input)?));
                    } else {
                        self.server_block = Some((at, start, input));
                    }
                }
            }
            "message_stop" => self.done = true,
            "ping" => out.push(Delta::KeepAlive),
            "error" => {
                let e = parsed.error.map(|e| *e).unwrap_or(ErrorBody {
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
            // Anything newer.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::decode::StreamDecoder;

    fn decode(body: &str) -> Vec<Delta> {
        let mut d = StreamDecoder::new(AnthropicDecoder::default());
        let mut out = Vec::new();
        d.push(body.as_bytes(), &mut out).unwrap();
        d.finish(&mut out).unwrap();
        out
    }

    /// A server of Anthropic's format that gives a tool call's input whole in its start, with
    /// no `input_json_delta`: the call carries it (it went out as `{}`, and the agent ran its
    /// tool with no arguments). Deltas, when they come, are the input, as in the official
    /// SDK's accumulator; the API's own empty start is nothing.
    #[test]
    fn a_tool_input_given_whole_in_its_start_is_kept() {
        let start = |i: u32, input: &str| {
            format!(
                "event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":{i},\
                 \"content_block\":{{\"type\":\"tool_use\",\"id\":\"t{i}\",\"name\":\"read\",\
                 \"input\":{input}}}}}\n\n"
            )
        };
        let delta = |i: u32, json: &str| {
            format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{i},\
                 \"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":{}}}}}\n\n",
                serde_json::to_string(json).unwrap()
            )
        };
        let stop = |i: u32| {
            format!(
                "event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":{i}}}\n\n"
            )
        };
        let body = [
            start(0, r#"{"path":"a.rs"}"#),
            delta(0, ""),
            stop(0),
            start(1, "{}"),
            delta(1, r#"{"path":"#),
            delta(1, r#""b.rs"}"#),
            stop(1),
            start(2, r#"{"path":"stale"}"#),
            delta(2, r#"{"path":"c.rs"}"#),
            stop(2),
            // No stop before the finish: the input still goes first.
            start(3, r#"{"path":"d.rs"}"#),
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"}}\n\n".into(),
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".into(),
        ]
        .concat();
        let args: Vec<(u32, String)> = decode(&body)
            .into_iter()
            .filter_map(|d| match d {
                Delta::ToolCallArgs { index, json } => Some((index, json)),
                _ => None,
            })
            .collect();
        let want = |i: u32, j: &str| (i, j.to_string());
        assert_eq!(
            args,
            [
                want(0, r#"{"path":"a.rs"}"#),
                want(1, r#"{"path":"#),
                want(1, r#""b.rs"}"#),
                want(2, r#"{"path":"c.rs"}"#),
                want(3, r#"{"path":"d.rs"}"#),
            ]
        );
    }

    /// A web search as Anthropic's streaming documentation shows it (no SDK test suite records
    /// one): text, the `server_tool_use` whose query comes in `input_json_delta`s, the results
    /// whole in their start event, then the answer with a `citations_delta`. The call and the
    /// results come out whole, once each, wherever the bytes are split; they are not mistaken
    /// for a tool call the client should run.
    #[test]
    fn a_web_search_comes_out_as_whole_server_blocks() {
        let body = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me search.\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"server_tool_use\",\"id\":\"srvtoolu_1\",\"name\":\"web_search\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"query\\\": \\\"rust \"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"async\\\"}\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"web_search_tool_result\",\"tool_use_id\":\"srvtoolu_1\",\"content\":[{\"type\":\"web_search_result\",\"url\":\"https://tokio.rs\",\"title\":\"Tokio\",\"encrypted_content\":\"EqgfCioIAR\",\"page_age\":null}]}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":3,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"citations_delta\",\"citation\":{\"type\":\"web_search_result_location\",\"url\":\"https://tokio.rs\",\"title\":\"Tokio\",\"encrypted_index\":\"Eo8B\",\"cited_text\":\"Tokio is\"}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"text_delta\",\"text\":\"Use Tokio.\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":3}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":30,\"server_tool_use\":{\"web_search_requests\":1}}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let call: serde_json::Value = serde_json::json!({"type": "server_tool_use",
            "id": "srvtoolu_1", "name": "web_search", "input": {"query": "rust async"}});
        for split in 0..=body.len() {
            let mut d = StreamDecoder::new(AnthropicDecoder::default());
            let mut out = Vec::new();
            d.push(&body.as_bytes()[..split], &mut out).unwrap();
            d.push(&body.as_bytes()[split..], &mut out).unwrap();
            d.finish(&mut out).unwrap();
            let mut text = String::new();
            let mut blocks = Vec::new();
            for delta in &out {
                match delta {
                    Delta::Text(t) => text.push_str(t),
                    Delta::ServerBlock(b) => {
                        blocks.push(serde_json::from_str::<serde_json::Value>(b).unwrap())
                    }
                    Delta::ToolCallStart { .. } | Delta::ToolCallArgs { .. } => {
                        panic!("a server tool is not the client's to run: {out:?}")
                    }
                    _ => {}
                }
            }
            assert_eq!(text, "Let me search.Use Tokio.", "split at {split}");
            assert_eq!(blocks.len(), 2, "split at {split}: {out:?}");
            assert_eq!(blocks[0], call, "split at {split}");
            assert_eq!(blocks[1]["type"], "web_search_tool_result");
            assert_eq!(blocks[1]["content"][0]["url"], "https://tokio.rs");
            assert!(out.contains(&Delta::Finish(FinishReason::Stop)));
            // The answer's source, for the client to show with it.
            let cited: Vec<&Delta> = out
                .iter()
                .filter(|d| matches!(d, Delta::Citation(c) if c.contains("https://tokio.rs")))
                .collect();
            assert_eq!(cited.len(), 1, "split at {split}");
            // The search is billed apart from the tokens: its count comes with the usage.
            let searches = out.iter().rev().find_map(|d| match d {
                Delta::Usage(u) => Some(u.web_searches),
                _ => None,
            });
            assert_eq!(searches, Some(1), "split at {split}");
        }
    }

    #[test]
    fn thinking_then_signature_and_redacted_skipped() {
        let out = decode(concat!(
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Let me see.\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"redacted_thinking\",\"data\":\"EmwKAhgBEgy\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"text_delta\",\"text\":\"4\"}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ));
        assert_eq!(
            out,
            [
                Delta::Thinking("Let me see.".into()),
                Delta::ThinkingSignature("EqQBCgIYAhIM".into()),
                Delta::RedactedThinking("EmwKAhgBEgy".into()),
                Delta::Text("4".into()),
            ]
        );
    }

    /// An answer that ended on one of the client's stop sequences says so: a Messages client
    /// reads `stop_reason: "stop_sequence"`, a Chat Completions one `stop`.
    #[test]
    fn a_stop_sequence_is_told_apart_from_an_end_of_turn() {
        let out = decode(concat!(
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"stop_sequence\",\"stop_sequence\":\"END\"},\"usage\":{\"output_tokens\":3}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ));
        let finish = out
            .iter()
            .find_map(|d| match d {
                Delta::Finish(f) => Some(f.clone()),
                _ => None,
            })
            .expect("a finish");
        assert_eq!(
            crate::http::relay::anthropic_stop(&finish, false),
            "stop_sequence"
        );
        assert_eq!(crate::http::relay::openai_finish(&finish, false), "stop");
        // And which sequence it was, as Anthropic said.
        assert_eq!(crate::http::relay::stop_sequence(&finish), Some("END"));
    }

    #[test]
    fn cache_usage_is_kept_apart_from_input() {
        let out = decode(concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":2048,\"cache_read_input_tokens\":30000,\"output_tokens\":1}}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":40}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":30001,\"output_tokens\":41}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ));
        let usages: Vec<Usage> = out
            .iter()
            .filter_map(|d| match d {
                Delta::Usage(u) => Some(*u),
                _ => None,
            })
            .collect();
        let first = Usage {
            input_tokens: 12,
            output_tokens: 1,
            cache_read_input_tokens: 30_000,
            cache_creation_input_tokens: 2048,
            web_searches: 0,
        };
        assert_eq!(usages[0], first);
        // A delta without cache fields keeps the ones message_start gave.
        assert_eq!(
            usages[1],
            Usage {
                output_tokens: 40,
                ..first
            }
        );
        assert_eq!(
            usages[2],
            Usage {
                output_tokens: 41,
                cache_read_input_tokens: 30_001,
                ..first
            }
        );
    }
}
