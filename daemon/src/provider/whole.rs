//! A whole answer where a stream was asked for.
//!
//! Some OpenAI-compatible servers and proxies ignore `stream: true` and answer `200` with one
//! `chat.completion` document; a Gemini endpoint that ignores `alt=sse` sends the stream's
//! chunks as one JSON array; an Anthropic-compatible proxy may buffer the answer into one
//! `message`. The answer is all there, and failing it over (with a cooldown for a provider
//! that answered) threw it away (found by a helper's chaos run). It is rewritten as the events
//! of the stream it would have been, so the provider's own stream decoder reads it, with every
//! check a stream gets (a finish, a terminator, the tool calls' arguments), and the client
//! gets the answer in one piece.
//!
//! Anything else in JSON (an error document, a shape this does not know) is `None` and is
//! reported as what it is.

use serde_json::{json, Map, Value};

use crate::config::Api;

/// The most of a whole answer read: the longest answers (a file written by a tool call, 64k
/// output tokens) are a few hundred KiB of JSON.
pub(super) const WHOLE_ANSWER_CAP: usize = 8 << 20;

/// `body` as the event stream `api`'s decoder reads, when it is a whole answer.
pub(super) fn as_stream(api: Api, body: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let mut out = Vec::with_capacity(body.len() + 256);
    match api {
        Api::Openai => openai(v, &mut out)?,
        Api::Anthropic => anthropic(v, &mut out)?,
        Api::Gemini => gemini(v, &mut out)?,
    }
    Some(out)
}

fn event(out: &mut Vec<u8>, name: Option<&str>, data: &Value) {
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    // A `Value` always serializes.
    out.extend_from_slice(&serde_json::to_vec(data).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
}

/// A `chat.completion` as the one chunk holding all of it, then `[DONE]`.
fn openai(v: Value, out: &mut Vec<u8>) -> Option<()> {
    let Value::Object(mut doc) = v else {
        return None;
    };
    let Some(Value::Array(choices)) = doc.remove("choices") else {
        return None;
    };
    // One answer was asked for (`n` is never sent above 1).
    let Value::Object(mut choice) = choices.into_iter().next()? else {
        return None;
    };
    let Some(Value::Object(message)) = choice.remove("message") else {
        return None;
    };
    let mut delta = Map::new();
    for (k, val) in message {
        match k.as_str() {
            "content" | "refusal" | "reasoning_content" if val.is_string() => {
                delta.insert(k, val);
            }
            // Parts (Mistral's reasoning models, some compatible servers): the text parts are
            // the content, the thinking parts the reasoning. Anything else is not read as an
            // empty answer.
            "content" if val.is_array() => {
                let (text, thinking) = content_parts(&val)?;
                delta.insert(k, Value::String(text));
                if !thinking.is_empty() {
                    delta.insert("reasoning_content".into(), Value::String(thinking));
                }
            }
            "content" if !val.is_null() => return None,
            // vLLM's and OpenRouter's name for the reasoning.
            "reasoning" if val.is_string() => {
                delta.entry("reasoning_content").or_insert(val);
            }
            "tool_calls" => {
                let Value::Array(calls) = val else { continue };
                let calls: Vec<Value> = calls
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut c)| {
                        // A chunk's calls say which one they add to.
                        if let Value::Object(m) = &mut c {
                            m.insert("index".into(), json!(i));
                        }
                        c
                    })
                    .collect();
                delta.insert(k, Value::Array(calls));
            }
            _ => {}
        }
    }
    let mut chunk = Map::new();
    for k in ["id", "created", "model"] {
        if let Some(val) = doc.remove(k) {
            chunk.insert(k.into(), val);
        }
    }
    chunk.insert("object".into(), json!("chat.completion.chunk"));
    chunk.insert(
        "choices".into(),
        json!([{
            "index": 0,
            "delta": delta,
            "finish_reason": choice.remove("finish_reason").unwrap_or(Value::Null),
        }]),
    );
    if let Some(u) = doc.remove("usage").filter(Value::is_object) {
        chunk.insert("usage".into(), u);
    }
    event(out, None, &Value::Object(chunk));
    out.extend_from_slice(b"data: [DONE]\n\n");
    Some(())
}

/// The text and the thinking of a content given as parts, or `None` for a part of another
/// kind (an image, audio: not an answer this can carry).
fn content_parts(parts: &Value) -> Option<(String, String)> {
    let (mut text, mut thinking) = (String::new(), String::new());
    for part in parts.as_array()? {
        match part.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(part.get("text")?.as_str()?),
            Some("thinking") => match part.get("thinking")? {
                Value::String(t) => thinking.push_str(t),
                Value::Array(inner) => {
                    for t in inner {
                        thinking.push_str(t.get("text")?.as_str()?);
                    }
                }
                _ => return None,
            },
            _ => return None,
        }
    }
    Some((text, thinking))
}

/// A `message` as its stream: each block whole in its start (the decoder takes a text, a
/// thinking, a tool call's input there, as the API sends a server tool's result), a thinking
/// block's signature in its delta, then the stop reason.
fn anthropic(v: Value, out: &mut Vec<u8>) -> Option<()> {
    let Value::Object(mut msg) = v else {
        return None;
    };
    if msg.get("type").and_then(Value::as_str) != Some("message") {
        return None;
    }
    let Some(Value::Array(blocks)) = msg.remove("content") else {
        return None;
    };
    let usage = msg.remove("usage").filter(Value::is_object);
    let stop_reason = msg.remove("stop_reason").unwrap_or(Value::Null);
    let stop_sequence = msg.remove("stop_sequence").unwrap_or(Value::Null);
    let mut start = msg;
    start.insert("content".into(), json!([]));
    start.insert("stop_reason".into(), Value::Null);
    if let Some(u) = &usage {
        start.insert("usage".into(), u.clone());
    }
    event(
        out,
        Some("message_start"),
        &json!({"type": "message_start", "message": start}),
    );
    for (index, mut block) in blocks.into_iter().enumerate() {
        let signature = match &mut block {
            Value::Object(b) if b.get("type").and_then(Value::as_str) == Some("thinking") => {
                b.remove("signature")
            }
            _ => None,
        };
        // A text's citations come in deltas of their own, as the stream sends them.
        let citations = match &mut block {
            Value::Object(b) if b.get("type").and_then(Value::as_str) == Some("text") => {
                match b.remove("citations") {
                    Some(Value::Array(c)) => c,
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        event(
            out,
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        for citation in citations {
            event(
                out,
                Some("content_block_delta"),
                &json!({
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "citations_delta", "citation": citation},
                }),
            );
        }
        if let Some(sig) = signature.filter(Value::is_string) {
            event(
                out,
                Some("content_block_delta"),
                &json!({
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "signature_delta", "signature": sig},
                }),
            );
        }
        event(
            out,
            Some("content_block_stop"),
            &json!({"type": "content_block_stop", "index": index}),
        );
    }
    let output = usage
        .as_ref()
        .and_then(|u| u.get("output_tokens"))
        .cloned()
        .unwrap_or(json!(0));
    event(
        out,
        Some("message_delta"),
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": {"output_tokens": output},
        }),
    );
    event(out, Some("message_stop"), &json!({"type": "message_stop"}));
    Some(())
}

/// A `GenerateContentResponse`, or the stream's responses in one array, each as a chunk.
fn gemini(v: Value, out: &mut Vec<u8>) -> Option<()> {
    let chunks = match v {
        Value::Array(chunks) => chunks,
        one => vec![one],
    };
    // Each a response (a last one may carry only the usage), one at least an answer.
    let response = |c: &Value| c.is_object() && c.get("error").is_none();
    let answers = |c: &Value| c.get("candidates").is_some() || c.get("promptFeedback").is_some();
    if !chunks.iter().all(response) || !chunks.iter().any(answers) {
        return None;
    }
    for c in &chunks {
        event(out, None, c);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::anthropic::stream::AnthropicDecoder;
    use crate::provider::decode::{StreamDecoder, WireDecoder};
    use crate::provider::delta::Delta;
    use crate::provider::gemini::stream::GeminiDecoder;
    use crate::provider::openai::stream::OpenAiDecoder;
    use mythos_protocol::FinishReason;

    /// What `api`'s decoder reads from `body` rewritten, and whether it ended cleanly.
    fn read<D: WireDecoder>(api: Api, decoder: D, body: &str) -> (Vec<Delta>, bool) {
        let stream = as_stream(api, body.as_bytes()).expect("a whole answer");
        let mut d = StreamDecoder::new(decoder);
        let mut out = Vec::new();
        d.push(&stream, &mut out).expect("decodes");
        let clean = d.finish(&mut out).is_ok();
        (
            out.into_iter()
                .filter(|d| !matches!(d, Delta::Usage(_) | Delta::Model(_)))
                .collect(),
            clean,
        )
    }

    #[test]
    fn a_chat_completion_reads_as_its_stream() {
        let body = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hello there",
            "reasoning":"think","tool_calls":[{"id":"call_1","type":"function",
            "function":{"name":"read","arguments":"{\"path\":\"a.rs\"}"}}]},
            "finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#;
        let (deltas, clean) = read(Api::Openai, OpenAiDecoder::default(), body);
        assert!(clean, "{deltas:?}");
        assert!(
            deltas.contains(&Delta::Text("Hello there".into())),
            "{deltas:?}"
        );
        assert!(
            deltas.contains(&Delta::Thinking("think".into())),
            "{deltas:?}"
        );
        assert!(deltas.contains(&Delta::ToolCallStart {
            index: 0,
            id: "call_1".into(),
            name: "read".into()
        }));
        assert!(deltas.contains(&Delta::ToolCallArgs {
            index: 0,
            json: r#"{"path":"a.rs"}"#.into()
        }));
        assert_eq!(deltas.last(), Some(&Delta::Finish(FinishReason::ToolUse)));
    }

    #[test]
    fn a_message_reads_as_its_stream() {
        let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude",
            "content":[{"type":"thinking","thinking":"hmm","signature":"sig=="},
            {"type":"text","text":"I will read it."},
            {"type":"tool_use","id":"toolu_1","name":"read","input":{"path":"a.rs"}}],
            "stop_reason":"tool_use","stop_sequence":null,
            "usage":{"input_tokens":10,"output_tokens":20}}"#;
        let (deltas, clean) = read(Api::Anthropic, AnthropicDecoder::default(), body);
        assert!(clean, "{deltas:?}");
        assert_eq!(
            deltas,
            [
                Delta::Thinking("hmm".into()),
                Delta::ThinkingSignature("sig==".into()),
                Delta::Text("I will read it.".into()),
                Delta::ToolCallStart {
                    index: 0,
                    id: "toolu_1".into(),
                    name: "read".into()
                },
                Delta::ToolCallArgs {
                    index: 0,
                    json: r#"{"path":"a.rs"}"#.into()
                },
                Delta::Finish(FinishReason::ToolUse),
            ]
        );
    }

    #[test]
    fn a_gemini_response_or_array_of_them_reads_as_its_stream() {
        let one = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi"}]},
            "finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":3}}"#;
        let (deltas, clean) = read(Api::Gemini, GeminiDecoder::new(1), one);
        assert!(clean);
        assert_eq!(
            deltas,
            [Delta::Text("Hi".into()), Delta::Finish(FinishReason::Stop)]
        );
        let array = r#"[{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi"}]}}]},
            {"candidates":[{"content":{"role":"model","parts":[{"text":" you"}]},
            "finishReason":"STOP"}]}]"#;
        let (deltas, clean) = read(Api::Gemini, GeminiDecoder::new(1), array);
        assert!(clean);
        assert_eq!(
            deltas,
            [
                Delta::Text("Hi".into()),
                Delta::Text(" you".into()),
                Delta::Finish(FinishReason::Stop)
            ]
        );
    }

    /// Found by a review: content in parts read as an empty answer; a Gemini array's last
    /// usage-only chunk failed the whole; a text's citations were dropped.
    #[test]
    fn parts_a_last_usage_chunk_and_citations_are_kept() {
        let parts = r#"{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant",
            "content":[{"type":"thinking","thinking":[{"type":"text","text":"why"}]},
            {"type":"text","text":"Because."}]},"finish_reason":"stop"}]}"#;
        let (deltas, clean) = read(Api::Openai, OpenAiDecoder::default(), parts);
        assert!(clean);
        assert!(
            deltas.contains(&Delta::Thinking("why".into())),
            "{deltas:?}"
        );
        assert!(
            deltas.contains(&Delta::Text("Because.".into())),
            "{deltas:?}"
        );
        let image = r#"{"choices":[{"index":0,"message":{"content":[{"type":"image_url"}]}}]}"#;
        assert!(as_stream(Api::Openai, image.as_bytes()).is_none());

        let array = r#"[{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi"}]},
            "finishReason":"STOP"}]},{"usageMetadata":{"promptTokenCount":3}}]"#;
        let (deltas, clean) = read(Api::Gemini, GeminiDecoder::new(1), array);
        assert!(clean);
        assert!(deltas.contains(&Delta::Text("Hi".into())), "{deltas:?}");

        let cited = r#"{"type":"message","role":"assistant","model":"claude","content":[
            {"type":"text","text":"It is blue.","citations":[{"type":"char_location",
            "cited_text":"blue","document_index":0,"start_char_index":0,"end_char_index":4}]}],
            "stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":2}}"#;
        let (deltas, clean) = read(Api::Anthropic, AnthropicDecoder::default(), cited);
        assert!(clean);
        assert!(
            deltas
                .iter()
                .any(|d| matches!(d, Delta::Citation(c) if c.contains("cited_text"))),
            "{deltas:?}"
        );
    }

    #[test]
    fn errors_and_unknown_documents_are_no_answer() {
        for (api, body) in [
            (
                Api::Openai,
                r#"{"error":{"message":"slow down","type":"requests"}}"#,
            ),
            (Api::Openai, r#"{"choices":[]}"#),
            (Api::Openai, r#"{"object":"list","data":[]}"#),
            (
                Api::Anthropic,
                r#"{"type":"error","error":{"type":"overloaded_error"}}"#,
            ),
            (
                Api::Gemini,
                r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}"#,
            ),
            (Api::Gemini, r#"[]"#),
            (Api::Openai, "not json"),
        ] {
            assert!(as_stream(api, body.as_bytes()).is_none(), "{body}");
        }
    }
}
