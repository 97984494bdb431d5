//! Decoder for OpenAI Chat Completions chunks (also DeepSeek and OpenAI-compatible servers).
//!
//! Only choice 0 is read (the daemon never asks for `n > 1`). DeepSeek's `reasoning_content`
//! becomes thinking; the final chunk with `"choices":[]` carries usage; `[DONE]` ends the
//! stream. Servers report failures mid-stream as a chunk with an `error` object.
//!
//! Usage counts prompt tokens served from the provider's cache (OpenAI
//! `prompt_tokens_details.cached_tokens`, DeepSeek `prompt_cache_hit_tokens`) as cache reads,
//! and only the rest as input, as Anthropic does, so no token is counted twice.

use mythos_protocol::{FinishReason, Text, Usage};
use serde::Deserialize;

use crate::provider::decode::{Seq, Str, WireDecoder};
use crate::provider::delta::Delta;
use crate::provider::error::{kind_for_error_type, ProviderError};
use crate::provider::sse::SseEvent;

/// State of one chat-completions stream.
#[derive(Debug, Default)]
pub struct OpenAiDecoder {
    model_seen: bool,
    done: bool,
    /// The tool calls begun in this stream: index → id. Some servers (DeepSeek, Qwen, proxies
    /// such as LiteLLM) repeat a call's `id` and `name` on every chunk of its arguments; only a
    /// new index, or a new id at an index, begins a call.
    /// (A map: a hostile stream may begin any number of calls.)
    calls: std::collections::HashMap<u32, String>,
    /// Where the text starts in this stream's chunks, for the fast path.
    shape: super::fast::Shape,
}

// The chunk as far as it is read, borrowing its strings from the event's data: `model` comes
// on every chunk and is kept once, and the text is copied once, into its delta. What is rare
// (an error, tool calls) sits behind a pointer: serde moves these structs several times while
// building them, and a small struct is cheaper to move than an allocation it avoids.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    model: Option<Str<'a>>,
    #[serde(default, borrow)]
    choices: Seq<Choice<'a>>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    error: Option<Box<ErrorBody>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    delta: Option<ChoiceDelta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct ChoiceDelta<'a> {
    #[serde(default, borrow)]
    content: Option<Str<'a>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Str<'a>>,
    /// Ollama's, OpenRouter's and newer vLLM's name for `reasoning_content` (vLLM sends both,
    /// alike: only one is taken).
    #[serde(default, borrow)]
    reasoning: Option<Str<'a>>,
    #[serde(default, borrow)]
    refusal: Option<Str<'a>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default, borrow)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, borrow)]
    arguments: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

// Only read when a server fails mid-stream: owned, like the error it becomes.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(rename = "type", default)]
    ty: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

fn finish_reason(s: &str) -> FinishReason {
    match s {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::MaxTokens,
        "tool_calls" | "function_call" => FinishReason::ToolUse,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_string()),
    }
}

impl WireDecoder for OpenAiDecoder {
    fn on_event(&mut self, ev: &SseEvent<'_>, out: &mut Vec<Delta>) -> Result<(), ProviderError> {
        // Nearly all data is a JSON object: no trimming those to compare with the terminator.
        if !ev.data.starts_with('{') && ev.data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        // A chunk shaped like the last one is read from its text on, unless that would skip a
        // model not yet taken.
        let resumed = if self.model_seen || !self.shape.skips_model() {
            self.shape.resume(ev.data)
        } else {
            None
        };
        match resumed.or_else(|| super::fast::read(ev.data, Some(&mut self.shape))) {
            Some(fast) => {
                self.push_fast(fast, out);
                Ok(())
            }
            None => self.decode_slow(ev.data, out),
        }
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn terminator(&self) -> &'static str {
        "[DONE]"
    }
}

impl OpenAiDecoder {
    /// The usual chunk, read without serde: the same deltas in the same order as
    /// [`OpenAiDecoder::decode_slow`] would give.
    pub(super) fn push_fast(&mut self, fast: super::fast::TextChunk<'_>, out: &mut Vec<Delta>) {
        if !self.model_seen {
            if let Some(m) = fast.model.filter(|m| !m.is_empty()) {
                self.model_seen = true;
                out.push(Delta::Model(m.into_owned()));
            }
        }
        if let Some(t) = fast.reasoning.filter(|t| !t.is_empty()) {
            out.push(Delta::Thinking(Text::from(t)));
        }
        if let Some(t) = fast.content.filter(|t| !t.is_empty()) {
            out.push(Delta::Text(Text::from(t)));
        }
    }

    /// Any chunk, through serde.
    pub(super) fn decode_slow(
        &mut self,
        data: &str,
        out: &mut Vec<Delta>,
    ) -> Result<(), ProviderError> {
        let chunk: Chunk<'_> = serde_json::from_str(data)
            .map_err(|e| ProviderError::malformed(format!("chat completion chunk: {e}")))?;
        if let Some(e) = chunk.error.map(|e| *e) {
            let ty =
                e.ty.or_else(|| e.code.and_then(|c| c.as_str().map(str::to_string)))
                    .unwrap_or_else(|| "server_error".into());
            return Err(ProviderError::new(
                kind_for_error_type(&ty),
                format!("stream error {ty}: {}", e.message.unwrap_or_default()),
            ));
        }
        if !self.model_seen {
            if let Some(m) = chunk.model.filter(|m| !m.is_empty()) {
                self.model_seen = true;
                out.push(Delta::Model(m.into_string()));
            }
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(d) = choice.delta {
                // Read, the thinking is also what keeps the watchdog from taking a model that
                // reasons for a minute (gpt-oss on Ollama, R1 on OpenRouter) for a silent one:
                // ignored, it was cut at the first token's limit, on every attempt.
                let reasoning = d
                    .reasoning_content
                    .filter(|t| !t.is_empty())
                    .or(d.reasoning.filter(|t| !t.is_empty()));
                if let Some(t) = reasoning {
                    out.push(Delta::Thinking(t.into_text()));
                }
                if let Some(t) = d.content.filter(|t| !t.is_empty()) {
                    out.push(Delta::Text(t.into_text()));
                }
                if let Some(t) = d.refusal.filter(|t| !t.is_empty()) {
                    out.push(Delta::Refusal(t.into_text()));
                }
                for call in d.tool_calls.unwrap_or_default() {
                    let (name, args) = match call.function {
                        Some(f) => (f.name, f.arguments),
                        None => (None, None),
                    };
                    let id = call
                        .id
                        .as_ref()
                        .map(Str::as_str)
                        .filter(|id| !id.is_empty());
                    let new = match (self.calls.get(&call.index), id) {
                        (None, _) => call.id.is_some() || name.is_some(),
                        (Some(known), Some(id)) => known != id,
                        (Some(_), None) => false,
                    };
                    if new {
                        let id = call.id.map(Str::into_string).unwrap_or_default();
                        self.calls.insert(call.index, id.clone());
                        out.push(Delta::ToolCallStart {
                            index: call.index,
                            id,
                            name: name.map(Str::into_string).unwrap_or_default(),
                        });
                    }
                    if let Some(a) = args.filter(|a| !a.is_empty()) {
                        out.push(Delta::ToolCallArgs {
                            index: call.index,
                            json: a.into_string(),
                        });
                    }
                }
            }
            // Some servers (older Ollama, SGLang) send `""` or `"null"` on every chunk: not a
            // finish, which would make any later break look like the end of a whole answer.
            if let Some(r) = choice
                .finish_reason
                .filter(|r| !r.as_str().is_empty() && r.as_str() != "null")
            {
                out.push(Delta::Finish(finish_reason(r.as_str())));
            }
        }
        if let Some(u) = chunk.usage {
            let cached = u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .or(u.prompt_cache_hit_tokens)
                .unwrap_or(0)
                .min(u.prompt_tokens);
            out.push(Delta::Usage(Usage {
                input_tokens: u.prompt_tokens - cached,
                output_tokens: u.completion_tokens,
                cache_read_input_tokens: cached,
                cache_creation_input_tokens: 0,
                web_searches: 0,
            }));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::decode::StreamDecoder;

    fn usage_of(chunk: &str) -> Usage {
        let mut d = StreamDecoder::new(OpenAiDecoder::default());
        let mut out = Vec::new();
        d.push(
            format!("data: {chunk}\n\ndata: [DONE]\n\n").as_bytes(),
            &mut out,
        )
        .unwrap();
        d.finish(&mut out).unwrap();
        out.into_iter()
            .find_map(|d| match d {
                Delta::Usage(u) => Some(u),
                _ => None,
            })
            .expect("usage")
    }

    fn deltas(chunks: &[&str]) -> Vec<Delta> {
        let mut d = StreamDecoder::new(OpenAiDecoder::default());
        let mut out = Vec::new();
        for c in chunks {
            d.push(format!("data: {c}\n\n").as_bytes(), &mut out)
                .unwrap();
        }
        d.push(b"data: [DONE]\n\n", &mut out).unwrap();
        d.finish(&mut out).unwrap();
        out
    }

    fn call(index: u32, id: Option<&str>, name: Option<&str>, args: &str) -> String {
        let mut f = serde_json::json!({"arguments": args});
        if let Some(n) = name {
            f["name"] = n.into();
        }
        let mut c = serde_json::json!({"index": index, "type": "function", "function": f});
        if let Some(id) = id {
            c["id"] = id.into();
        }
        serde_json::json!({"choices": [{"index": 0, "delta": {"tool_calls": [c]}}]}).to_string()
    }

    /// Ollama's and OpenRouter's `reasoning` is thinking, as DeepSeek's `reasoning_content`
    /// is; a delta with both (vLLM) gives it once.
    #[test]
    fn reasoning_under_either_name_is_thinking_once() {
        let out = deltas(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":"Need"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning":" to","reasoning_content":" to"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":" answer."}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}"#,
        ]);
        let thinking: String = out
            .iter()
            .filter_map(|d| match d {
                Delta::Thinking(t) => Some(t.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(thinking, "Need to answer.");
        assert!(out.contains(&Delta::Text("Hi".into())), "{out:?}");
        // As Ollama sends it, the same chunk again and again.
        let ollama = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-oss:20b","choices":[{"index":0,"delta":{"content":"","reasoning":"hmm "}}]}"#;
        let out = deltas(&[
            r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-oss:20b","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            ollama,
            ollama,
            ollama,
        ]);
        let n = out
            .iter()
            .filter(|d| matches!(d, Delta::Thinking(_)))
            .count();
        assert_eq!(n, 3, "{out:?}");
    }

    /// Servers that repeat a call's id and name on every chunk of its arguments (DeepSeek,
    /// Qwen, LiteLLM) still make one call per index; a new id at an index is a new call.
    #[test]
    fn a_call_whose_id_comes_on_every_chunk_is_one_call() {
        let out = deltas(&[
            &call(0, Some("call_a"), Some("read"), ""),
            &call(0, Some("call_a"), Some("read"), "{\"path\":"),
            &call(0, Some("call_a"), None, "\"a.rs\"}"),
            &call(1, Some("call_b"), Some("grep"), "{}"),
            &call(1, Some("call_b"), Some("grep"), ""),
            &call(1, None, None, ""),
            &call(0, Some("call_c"), Some("read"), "{}"),
        ]);
        let starts: Vec<_> = out
            .iter()
            .filter_map(|d| match d {
                Delta::ToolCallStart { index, id, name } => {
                    Some((*index, id.as_str(), name.as_str()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            starts,
            [
                (0, "call_a", "read"),
                (1, "call_b", "grep"),
                (0, "call_c", "read")
            ]
        );
        let args: String = out
            .iter()
            .filter_map(|d| match d {
                Delta::ToolCallArgs { index: 0, json } => Some(json.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(args, "{\"path\":\"a.rs\"}{}");
    }

    /// Servers that send `"finish_reason": ""` or `"null"` on every chunk (older Ollama,
    /// SGLang) have not finished: only the real reason at the end is one.
    #[test]
    fn an_empty_finish_reason_is_none() {
        let chunk = |text: &str, finish: &str| {
            format!(
                r#"{{"choices":[{{"index":0,"delta":{{"content":"{text}"}},"finish_reason":{finish}}}]}}"#
            )
        };
        let out = deltas(&[
            &chunk("a", r#""""#),
            &chunk("b", r#""null""#),
            &chunk("c", "null"),
            &chunk("", r#""stop""#),
        ]);
        let finishes: Vec<_> = out
            .iter()
            .filter_map(|d| match d {
                Delta::Finish(f) => Some(f.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(finishes, [FinishReason::Stop]);
    }

    #[test]
    fn cached_prompt_tokens_are_not_counted_twice() {
        let openai = usage_of(
            r#"{"choices":[],"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,"prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0}}}"#,
        );
        assert_eq!(
            openai,
            Usage {
                input_tokens: 86,
                output_tokens: 300,
                cache_read_input_tokens: 1920,
                cache_creation_input_tokens: 0,
                web_searches: 0,
            }
        );
        let deepseek = usage_of(
            r#"{"choices":[],"usage":{"prompt_tokens":100,"completion_tokens":5,"prompt_cache_hit_tokens":64,"prompt_cache_miss_tokens":36}}"#,
        );
        assert_eq!(
            (deepseek.input_tokens, deepseek.cache_read_input_tokens),
            (36, 64)
        );
        let plain = usage_of(r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":1}}"#);
        assert_eq!((plain.input_tokens, plain.cache_read_input_tokens), (7, 0));
        // A server that reports more cached than prompt tokens does not underflow.
        let odd = usage_of(
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":9}}}"#,
        );
        assert_eq!((odd.input_tokens, odd.cache_read_input_tokens), (0, 5));
    }
}
