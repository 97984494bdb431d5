//! The recorded transcripts from the official SDKs' test suites (`daemon/testdata/sse/`),
//! decoded whole, split at every byte boundary, and fed one byte at a time.

use mythos_protocol::{ErrorKind, FinishReason, Usage};

use super::anthropic::stream::AnthropicDecoder;
use super::decode::{StreamDecoder, WireDecoder};
use super::delta::Delta;
use super::gemini::stream::GeminiDecoder;
use super::openai::stream::OpenAiDecoder;
use super::ProviderError;

macro_rules! transcript {
    ($name:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/sse/", $name))
    };
}

/// Everything a decoded stream amounts to.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    model: Option<String>,
    text: String,
    refusal: String,
    thinking: String,
    signature: String,
    redacted: Vec<String>,
    tools: Vec<(u32, String, String, String)>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    keep_alives: usize,
    server_blocks: Vec<String>,
}

fn fold(deltas: Vec<Delta>) -> Outcome {
    let mut o = Outcome::default();
    for d in deltas {
        match d {
            Delta::Model(m) => o.model = Some(m),
            Delta::Text(t) => o.text.push_str(&t),
            Delta::Refusal(t) => o.refusal.push_str(&t),
            Delta::Thinking(t) => o.thinking.push_str(&t),
            Delta::ThinkingSignature(s) => o.signature.push_str(&s),
            Delta::RedactedThinking(d) => o.redacted.push(d),
            Delta::ToolCallStart { index, id, name } => {
                o.tools.push((index, id, name, String::new()))
            }
            Delta::ToolCallArgs { index, json } => {
                let t = o
                    .tools
                    .iter_mut()
                    .find(|t| t.0 == index)
                    .expect("args before start");
                t.3.push_str(&json);
            }
            Delta::Usage(u) => o.usage = Some(u),
            Delta::Finish(f) => o.finish = Some(f),
            Delta::KeepAlive => o.keep_alives += 1,
            Delta::RateLimits(_) => {}
            Delta::ServerBlock(b) => o.server_blocks.push(b),
            Delta::Citation(c) => o.server_blocks.push(c),
        }
    }
    o
}

fn run<D: WireDecoder>(make: impl Fn() -> D, chunks: &[&[u8]]) -> Result<Outcome, ProviderError> {
    let mut dec = StreamDecoder::new(make());
    let mut out = Vec::new();
    for c in chunks {
        dec.push(c, &mut out)?;
    }
    dec.finish(&mut out)?;
    Ok(fold(out))
}

/// Decode whole, at every split point, and byte by byte; all must agree.
fn decode_all_ways<D: WireDecoder>(
    make: impl Fn() -> D,
    bytes: &[u8],
) -> Result<Outcome, ProviderError> {
    let whole = run(&make, &[bytes]);
    for i in 0..=bytes.len() {
        let (a, b) = bytes.split_at(i);
        assert_eq!(run(&make, &[a, b]), whole, "split at byte {i}");
    }
    let bytes_each: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(run(&make, &bytes_each), whole, "one byte at a time");
    whole
}

fn anthropic(bytes: &[u8]) -> Result<Outcome, ProviderError> {
    decode_all_ways(AnthropicDecoder::default, bytes)
}

fn gemini(bytes: &[u8]) -> Result<Outcome, ProviderError> {
    decode_all_ways(GeminiDecoder::default, bytes)
}

macro_rules! gemini_transcript {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/gemini/",
            $name
        ))
    };
}

fn openai(bytes: &[u8]) -> Result<Outcome, ProviderError> {
    decode_all_ways(OpenAiDecoder::default, bytes)
}

#[test]
fn anthropic_basic_text_with_ping() {
    let o = anthropic(transcript!("anthropic_basic_text_with_ping.sse")).unwrap();
    assert_eq!(o.text, "Hello there!");
    assert_eq!(o.model.as_deref(), Some("claude-3-opus-latest"));
    assert_eq!(o.finish, Some(FinishReason::Stop));
    assert_eq!(
        o.usage,
        Some(Usage {
            input_tokens: 11,
            output_tokens: 6,
            ..Usage::default()
        })
    );
    assert_eq!(o.keep_alives, 1, "the ping");
}

#[test]
fn anthropic_tool_use() {
    let o = anthropic(transcript!("anthropic_tool_use_input_json_delta.sse")).unwrap();
    assert_eq!(o.text, "I'll check the current weather in Paris for you.");
    assert_eq!(
        o.tools,
        [(
            0,
            "toolu_01NRLabsLyVHZPKxbKvkfSMn".to_string(),
            "get_weather".to_string(),
            r#"{"location": "Paris"}"#.to_string()
        )]
    );
    assert_eq!(o.finish, Some(FinishReason::ToolUse));
    assert_eq!(
        o.usage,
        Some(Usage {
            input_tokens: 377,
            output_tokens: 65,
            ..Usage::default()
        })
    );
}

#[test]
fn anthropic_refusal() {
    let o = anthropic(transcript!("anthropic_refusal_response.sse")).unwrap();
    assert_eq!(o.text, "");
    assert_eq!(o.finish, Some(FinishReason::Refusal));
    assert_eq!(
        o.usage,
        Some(Usage {
            input_tokens: 20,
            output_tokens: 0,
            ..Usage::default()
        })
    );
}

#[test]
fn anthropic_overloaded_error_event() {
    let e = anthropic(transcript!("anthropic_error_event_overloaded.sse")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Overloaded);
    assert!(e.message.contains("Overloaded"), "{}", e.message);
}

#[test]
fn openai_text_usage_and_done() {
    let o = openai(transcript!("openai_chat_text_usage_final_chunk_DONE.sse")).unwrap();
    assert_eq!(
        o.text,
        "I'm unable to provide real-time weather updates. To get the current weather in San \
         Francisco, I recommend checking a reliable weather website or a weather app."
    );
    assert_eq!(o.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(o.finish, Some(FinishReason::Stop));
    assert_eq!(
        o.usage,
        Some(Usage {
            input_tokens: 14,
            output_tokens: 30,
            ..Usage::default()
        })
    );
}

/// A refusal (a response format was asked of a prompt the model declines) is its own field,
/// not answer text: a client parsing the answer must not be handed the refusal as the answer.
#[test]
fn openai_refusal() {
    let o = openai(transcript!("openai_chat_refusal.sse")).unwrap();
    assert_eq!(o.text, "");
    assert_eq!(o.refusal, "I'm sorry, I can't assist with that request.");
    assert_eq!(o.finish, Some(FinishReason::Stop));
    assert_eq!(o.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(
        o.usage,
        Some(Usage {
            input_tokens: 79,
            output_tokens: 11,
            ..Usage::default()
        })
    );
}

#[test]
fn openai_finish_length() {
    let o = openai(transcript!("openai_chat_finish_length_usage.sse")).unwrap();
    assert_eq!(o.text, "{\"");
    assert_eq!(o.finish, Some(FinishReason::MaxTokens));
    assert_eq!(
        o.usage,
        Some(Usage {
            input_tokens: 79,
            output_tokens: 1,
            ..Usage::default()
        })
    );
}

#[test]
fn openai_tool_call_fragments() {
    let o = openai(transcript!("openai_chat_tool_call_args_fragments.sse")).unwrap();
    assert_eq!(
        o.tools,
        [(
            0,
            "call_c91SqDXlYFuETYv8mUHzz6pp".to_string(),
            "GetWeatherArgs".to_string(),
            r#"{"city":"Edinburgh","country":"UK","units":"c"}"#.to_string()
        )]
    );
    assert_eq!(o.text, "");
    assert_eq!(o.finish, Some(FinishReason::ToolUse));
    assert_eq!(
        o.usage,
        Some(Usage {
            input_tokens: 76,
            output_tokens: 24,
            ..Usage::default()
        })
    );
}

#[test]
fn openai_n3_reads_choice_zero_only() {
    let o = openai(transcript!("openai_chat_multiple_choices_n3.sse")).unwrap();
    let expected: String = {
        // Choice 0's content, reassembled independently of the decoder.
        let text = std::str::from_utf8(transcript!("openai_chat_multiple_choices_n3.sse")).unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
            .flat_map(|v| v["choices"].as_array().cloned().unwrap_or_default())
            .filter(|c| c["index"] == 0)
            .filter_map(|c| c["delta"]["content"].as_str().map(str::to_string))
            .collect()
    };
    assert!(
        expected.starts_with("{\"city\":\"San Francisco\""),
        "{expected}"
    );
    assert_eq!(o.text, expected);
    assert_eq!(o.finish, Some(FinishReason::Stop));
}

#[test]
fn truncated_streams_fail() {
    for (name, bytes, cut) in [
        (
            "anthropic",
            &transcript!("anthropic_basic_text_with_ping.sse")[..],
            "event: message_stop",
        ),
        (
            "openai",
            &transcript!("openai_chat_text_usage_final_chunk_DONE.sse")[..],
            "data: [DONE]",
        ),
    ] {
        let text = std::str::from_utf8(bytes).unwrap();
        let short = &text[..text.find(cut).unwrap()];
        let r = if name == "anthropic" {
            run(AnthropicDecoder::default, &[short.as_bytes()])
        } else {
            run(OpenAiDecoder::default, &[short.as_bytes()])
        };
        assert_eq!(r.unwrap_err().kind, ErrorKind::Truncated, "{name}");
        // An empty body too.
        assert_eq!(
            run(AnthropicDecoder::default, &[]).unwrap_err().kind,
            ErrorKind::Truncated
        );
    }
}

#[test]
fn line_endings_do_not_matter() {
    let lf = transcript!("anthropic_tool_use_input_json_delta.sse");
    let base = anthropic(lf).unwrap();
    let text = std::str::from_utf8(lf).unwrap();
    let crlf = text.replace('\n', "\r\n");
    let cr = text.replace('\n', "\r");
    assert_eq!(anthropic(crlf.as_bytes()).unwrap(), base);
    assert_eq!(anthropic(cr.as_bytes()).unwrap(), base);
    // A BOM at the start is not part of the first field name.
    let bom = [&b"\xEF\xBB\xBF"[..], lf].concat();
    assert_eq!(anthropic(&bom).unwrap(), base);
}

#[test]
fn deepseek_reasoning_and_keep_alive() {
    let body = b": keep-alive\n\n: keep-alive\n\n\
        data: {\"model\":\"deepseek-reasoner\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"reasoning_content\":\"Think \"},\"finish_reason\":null}]}\n\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":null,\"reasoning_content\":\"h\xc3\xa9\xf0\x9f\x9a\x80\"}}]}\n\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"h\xc3\xa9llo \xf0\x9f\x9a\x80\",\"reasoning_content\":null}}]}\n\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n\
        data: [DONE]\n\n";
    let o = openai(body).unwrap();
    assert_eq!(o.thinking, "Think h\u{e9}\u{1f680}");
    assert_eq!(o.text, "h\u{e9}llo \u{1f680}");
    assert_eq!(o.keep_alives, 2);
    assert_eq!(
        o.usage,
        Some(Usage {
            input_tokens: 3,
            output_tokens: 4,
            ..Usage::default()
        })
    );
}

/// Extended thinking as the Messages API streams it (shape from Anthropic's streaming docs),
/// with cache usage: signature and cache counts survive every split.
#[test]
fn anthropic_thinking_signature_and_cache_usage() {
    let body = b"event: message_start\n\
        data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"usage\":{\"input_tokens\":9,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":2500,\"output_tokens\":1}}}\n\n\
        event: content_block_start\n\
        data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n\
        event: content_block_delta\n\
        data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"27 * 453 = 12231 \xf0\x9f\xa7\xae\"}}\n\n\
        event: content_block_delta\n\
        data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds\"}}\n\n\
        event: content_block_stop\n\
        data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
        event: content_block_start\n\
        data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
        event: content_block_delta\n\
        data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"12,231\"}}\n\n\
        event: content_block_stop\n\
        data: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
        event: message_delta\n\
        data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":30}}\n\n\
        event: message_stop\n\
        data: {\"type\":\"message_stop\"}\n\n";
    let o = anthropic(body).unwrap();
    assert_eq!(o.thinking, "27 * 453 = 12231 \u{1f9ee}");
    assert_eq!(
        o.signature,
        "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"
    );
    assert_eq!(o.text, "12,231");
    assert_eq!(
        o.usage,
        Some(Usage {
            input_tokens: 9,
            output_tokens: 30,
            cache_read_input_tokens: 2500,
            cache_creation_input_tokens: 0,
            web_searches: 0,
        })
    );
}

#[test]
fn in_stream_openai_error() {
    let body = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n\
        data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";
    let e = openai(body).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ServerError);
}

#[test]
fn malformed_json_and_oversized_lines() {
    let e = openai(b"data: {\"choices\":[\n\n").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Malformed);
    let e = anthropic(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\n\n")
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Malformed);
    assert!(e.message.contains("content_block_delta"));
    let huge = vec![b'x'; super::sse::MAX_EVENT_BYTES + 10];
    let e = run(OpenAiDecoder::default, &[b"data: ", &huge]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Malformed);
}

#[test]
fn bytes_after_the_terminator_are_ignored() {
    let mut body = transcript!("openai_chat_finish_length_usage.sse").to_vec();
    body.extend_from_slice(b"data: {garbage\n\n");
    assert!(run(OpenAiDecoder::default, &[&body]).is_ok());
}

#[test]
fn gemini_text_stream() {
    let bytes = gemini_transcript!("gemini_text_stream.sse");
    let o = gemini(bytes).unwrap();
    assert!(o
        .text
        .starts_with("The sky is blue due to a phenomenon called **Rayleigh"));
    assert!(o.text.ends_with("a hazy appearance."));
    assert_eq!(o.model.as_deref(), Some("gemini-2.0-flash"));
    assert_eq!(o.finish, Some(FinishReason::Stop));
    // The last chunk's usage replaces the earlier prompt-only ones.
    assert_eq!(
        o.usage,
        Some(Usage {
            input_tokens: 6,
            output_tokens: 377,
            ..Usage::default()
        })
    );
    // No terminator event: the body ending after the finish reason is the end.
    // Cut inside the last event: its half JSON is the failure.
    let cut = bytes.len() - 10;
    let err = gemini(&bytes[..cut]).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Malformed, "{err}");
    let last = bytes[..bytes.len() - 4]
        .windows(6)
        .rposition(|w| w == b"data: ")
        .unwrap();
    let err = gemini(&bytes[..last]).unwrap_err();
    assert_eq!(
        err.kind,
        ErrorKind::Truncated,
        "ends before the finishReason chunk"
    );
}

#[test]
fn gemini_function_call() {
    let o = gemini(gemini_transcript!("gemini_function_call.sse")).unwrap();
    assert_eq!(
        o.tools,
        [(
            0,
            "call_adSfaOfkBsmagbUPt96I0QI_0".to_string(),
            "customDivide".to_string(),
            r#"{"denominator":2,"numerator":10}"#.to_string()
        )]
    );
    assert_eq!(o.finish, Some(FinishReason::ToolUse), "STOP with a call");
    assert_eq!(
        o.usage,
        Some(Usage {
            input_tokens: 17,
            output_tokens: 6,
            ..Usage::default()
        })
    );
}

#[test]
fn gemini_thoughts_cache_and_errors() {
    let stream = concat!(
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Let me think\",\"thought\":true}],\"role\":\"model\"},\"index\":0}],\"modelVersion\":\"gemini-2.5-flash\"}\r\n\r\n",
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}],\"role\":\"model\"},\"finishReason\":\"MAX_TOKENS\",\"index\":0}],",
        "\"usageMetadata\":{\"promptTokenCount\":100,\"candidatesTokenCount\":5,\"thoughtsTokenCount\":20,\"cachedContentTokenCount\":64}}\r\n\r\n"
    );
    let o = gemini(stream.as_bytes()).unwrap();
    assert_eq!(
        (o.thinking.as_str(), o.text.as_str()),
        ("Let me think", "Hi")
    );
    assert_eq!(o.finish, Some(FinishReason::MaxTokens));
    assert_eq!(
        o.usage,
        Some(Usage {
            input_tokens: 36,
            output_tokens: 25,
            cache_read_input_tokens: 64,
            cache_creation_input_tokens: 0,
            web_searches: 0,
        })
    );
    for (reason, want) in [
        ("SAFETY", FinishReason::ContentFilter),
        ("RECITATION", FinishReason::ContentFilter),
        ("PROHIBITED_CONTENT", FinishReason::ContentFilter),
        (
            "MALFORMED_FUNCTION_CALL",
            FinishReason::Other("MALFORMED_FUNCTION_CALL".into()),
        ),
    ] {
        let s = format!("data: {{\"candidates\":[{{\"finishReason\":\"{reason}\"}}]}}\n\n");
        assert_eq!(gemini(s.as_bytes()).unwrap().finish, Some(want));
    }
    let blocked = b"data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"}}\n\n";
    assert_eq!(
        gemini(blocked).unwrap().finish,
        Some(FinishReason::ContentFilter)
    );

    let overloaded = b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}]}\n\ndata: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\n\n";
    assert_eq!(gemini(overloaded).unwrap_err().kind, ErrorKind::Overloaded);
    let limited = br#"data: {"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"7s"}]}}

"#;
    let e = gemini(limited).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(7)));
    assert_eq!(
        gemini(b"data: {\"candidates\":[\n\n").unwrap_err().kind,
        ErrorKind::Malformed
    );
}
