//! The recorded transcripts of the official SDKs' test suites (`daemon/testdata/sse/`), decoded
//! as if a provider had sent them, relayed as the router relays them, and encoded by the front
//! end in both APIs: decoding our output again must give the same answer (text, thinking, tool
//! calls with their arguments, stop reason, usage), and our frames must have the structure the
//! SDKs rely on.

use bytes::BytesMut;
use mythos_protocol::{DoneInfo, FinishReason, StreamEvent, Usage};
use serde_json::Value;

use super::chat::stream::ChatEncoder;
use super::messages::stream::MessagesEncoder;
use super::relay::{Encoder, Head};
use crate::provider::anthropic::stream::AnthropicDecoder;
use crate::provider::decode::{StreamDecoder, WireDecoder};
use crate::provider::openai::stream::OpenAiDecoder;
use crate::provider::Delta;

macro_rules! transcript {
    ($name:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/sse/", $name))
    };
}

#[derive(Debug, Default, PartialEq)]
struct Answer {
    text: String,
    thinking: String,
    tools: Vec<(String, String, Value)>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

fn decode<D: WireDecoder>(dec: D, bytes: &[u8]) -> Vec<Delta> {
    let mut d = StreamDecoder::new(dec);
    let mut out = Vec::new();
    d.push(bytes, &mut out).expect("decodes");
    d.finish(&mut out).expect("ends cleanly");
    out
}

fn fold(deltas: &[Delta]) -> Answer {
    let mut a = Answer::default();
    let mut args: Vec<String> = Vec::new();
    for d in deltas {
        match d {
            Delta::Text(t) => a.text.push_str(t),
            Delta::Thinking(t) => a.thinking.push_str(t),
            Delta::ToolCallStart { id, name, .. } => {
                a.tools.push((id.clone(), name.clone(), Value::Null));
                args.push(String::new());
            }
            Delta::ToolCallArgs { json, .. } => args.last_mut().expect("start").push_str(json),
            Delta::Finish(f) => a.finish = Some(f.clone()),
            Delta::Usage(u) => a.usage = Some(*u),
            _ => {}
        }
    }
    for (t, raw) in a.tools.iter_mut().zip(args) {
        t.2 = if raw.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str(&raw).expect("arguments are JSON")
        };
    }
    a
}

/// The events the router would relay for `deltas`, ending in `done`.
fn relay(deltas: &[Delta]) -> Vec<StreamEvent> {
    let mut out = Vec::new();
    let (mut finish, mut usage) = (FinishReason::Stop, Usage::default());
    for d in deltas {
        out.push(match d.clone() {
            Delta::Text(text) => StreamEvent::TextDelta { text },
            Delta::Thinking(text) => StreamEvent::ThinkingDelta { text },
            Delta::ThinkingSignature(signature) => StreamEvent::ThinkingSignature { signature },
            Delta::RedactedThinking(data) => StreamEvent::RedactedThinking { data },
            Delta::ToolCallStart { index, id, name } => {
                StreamEvent::ToolCallStart { index, id, name }
            }
            Delta::ToolCallArgs { index, json } => StreamEvent::ToolCallDelta { index, json },
            Delta::Usage(u) => {
                usage = u;
                StreamEvent::Usage(u)
            }
            Delta::Finish(f) => {
                finish = f;
                continue;
            }
            _ => continue,
        });
    }
    out.push(StreamEvent::Done(Box::new(DoneInfo {
        finish,
        usage,
        cost_usd: 0.0,
        latency_ms: 1,
        provider: "p".into(),
        model: "m".into(),
        record: 7,
    })));
    out
}

fn head() -> Head {
    Head {
        provider: "p".into(),
        model: "m".into(),
        record: 7,
        reroutes: 0,
        overhead: std::time::Duration::ZERO,
    }
}

fn encode(mut enc: impl Encoder, first: BytesMut, events: Vec<StreamEvent>) -> Vec<u8> {
    let mut out = first;
    let mut ended = false;
    for ev in events {
        assert!(!ended, "events after the end");
        ended = enc.event(ev, &mut out);
    }
    assert!(ended, "the stream did not end");
    out.to_vec()
}

/// The structure the Anthropic SDK relies on: every frame named, the name equal to the JSON
/// `type`, one `message_start` first, dense indices, balanced blocks, `message_stop` last.
fn check_messages_frames(bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).unwrap();
    let mut types = Vec::new();
    let mut open: Option<u64> = None;
    let mut next = 0;
    for frame in text.split("\n\n").filter(|f| !f.is_empty()) {
        let mut lines = frame.lines();
        let name = lines
            .next()
            .unwrap()
            .strip_prefix("event: ")
            .expect("event line");
        let data: Value =
            serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["type"], name);
        match name {
            "content_block_start" => {
                assert_eq!(open, None, "a block opened inside another");
                assert_eq!(data["index"], next, "indices are dense");
                open = Some(next);
                next += 1;
            }
            "content_block_delta" => assert_eq!(Some(data["index"].as_u64().unwrap()), open),
            "content_block_stop" => {
                assert_eq!(open, Some(data["index"].as_u64().unwrap()));
                open = None;
            }
            "message_delta" => assert!(data["usage"]["output_tokens"].is_u64()),
            _ => {}
        }
        types.push(name.to_string());
    }
    assert_eq!(types.first().map(String::as_str), Some("message_start"));
    assert_eq!(types.iter().filter(|t| *t == "message_start").count(), 1);
    assert_eq!(types.last().map(String::as_str), Some("message_stop"));
    if let Some(i) = types.iter().position(|t| t == "content_block_start") {
        assert_eq!(
            types[i + 1],
            "ping",
            "ping right after the first block opens"
        );
    }
}

fn check_chat_frames(bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).unwrap();
    let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
    assert_eq!(frames.last(), Some(&"data: [DONE]"));
    let first: Value = serde_json::from_str(frames[0].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert!(frames
        .iter()
        .any(|f| f.contains("\"finish_reason\":\"") && !f.contains("\"finish_reason\":null")));
}

/// Decode `bytes` as `upstream`, relay, encode in both APIs, decode again: same answer.
fn round_trip(bytes: &[u8], anthropic_upstream: bool) {
    let deltas = if anthropic_upstream {
        decode(AnthropicDecoder::default(), bytes)
    } else {
        decode(OpenAiDecoder::default(), bytes)
    };
    let want = fold(&deltas);
    let events = relay(&deltas);

    let (enc, first) = MessagesEncoder::start(&head(), 10, true);
    let messages = encode(enc, first, events.clone());
    check_messages_frames(&messages);
    let got = fold(&decode(AnthropicDecoder::default(), &messages));
    assert_eq!(got.text, want.text);
    assert_eq!(got.thinking, want.thinking);
    assert_eq!(got.tools, want.tools);
    assert_eq!(
        got.usage.map(|u| u.output_tokens),
        want.usage.map(|u| u.output_tokens)
    );

    let (enc, first) = ChatEncoder::start(&head(), true);
    let chat = encode(enc, first, events);
    check_chat_frames(&chat);
    let got = fold(&decode(OpenAiDecoder::default(), &chat));
    assert_eq!(got.text, want.text);
    assert_eq!(got.tools, want.tools);
    assert_eq!(
        got.usage.map(|u| u.output_tokens),
        want.usage.map(|u| u.output_tokens)
    );
    // Both APIs name the same reason for stopping.
    assert_eq!(
        got.finish.map(|f| f.as_str().to_string()),
        want.finish.map(|f| f.as_str().to_string())
    );
}

#[test]
fn anthropic_text_round_trips() {
    round_trip(transcript!("anthropic_basic_text_with_ping.sse"), true);
}

#[test]
fn anthropic_tool_use_round_trips() {
    round_trip(transcript!("anthropic_tool_use_input_json_delta.sse"), true);
}

#[test]
fn anthropic_refusal_round_trips_as_text() {
    let bytes = transcript!("anthropic_refusal_response.sse");
    let deltas = decode(AnthropicDecoder::default(), bytes);
    let (enc, first) = MessagesEncoder::start(&head(), 10, true);
    let out = encode(enc, first, relay(&deltas));
    check_messages_frames(&out);
    assert!(String::from_utf8_lossy(&out).contains("\"stop_reason\":\"refusal\""));
}

#[test]
fn openai_text_round_trips() {
    round_trip(
        transcript!("openai_chat_text_usage_final_chunk_DONE.sse"),
        false,
    );
}

#[test]
fn openai_length_round_trips() {
    round_trip(transcript!("openai_chat_finish_length_usage.sse"), false);
}

#[test]
fn openai_tool_call_round_trips() {
    round_trip(
        transcript!("openai_chat_tool_call_args_fragments.sse"),
        false,
    );
}
