//! Byte soup into the SSE parser and the stream decoders: random bytes, SSE-shaped noise and
//! mutated recorded transcripts, split at random points. Whatever a server sends, decoding ends
//! in deltas or a typed error, never a panic.

use super::anthropic::stream::AnthropicDecoder;
use super::decode::{StreamDecoder, WireDecoder};
use super::openai::stream::OpenAiDecoder;

const TRANSCRIPTS: [&[u8]; 9] = [
    include_bytes!("../../testdata/sse/anthropic_basic_text_with_ping.sse"),
    include_bytes!("../../testdata/sse/anthropic_error_event_overloaded.sse"),
    include_bytes!("../../testdata/sse/anthropic_refusal_response.sse"),
    include_bytes!("../../testdata/sse/anthropic_tool_use_input_json_delta.sse"),
    include_bytes!("../../testdata/sse/openai_chat_finish_length_usage.sse"),
    include_bytes!("../../testdata/sse/openai_chat_multiple_choices_n3.sse"),
    include_bytes!("../../testdata/sse/openai_chat_refusal.sse"),
    include_bytes!("../../testdata/sse/openai_chat_text_usage_final_chunk_DONE.sse"),
    include_bytes!("../../testdata/sse/openai_chat_tool_call_args_fragments.sse"),
];

/// Pieces that make noise look like SSE and like the providers' JSON.
const TOKENS: [&[u8]; 24] = [
    b"data: ",
    b"event: ",
    b"id: ",
    b"retry: ",
    b": keep-alive",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"{",
    b"}",
    b"[DONE]",
    b"\"type\":",
    b"\"content_block_delta\"",
    b"\"message_stop\"",
    b"\"delta\":{\"text\":\"",
    b"\"choices\":[{\"index\":0,\"delta\":{\"content\":\"",
    b"\"tool_calls\":[{\"index\":4294967295",
    b"\"usage\":{\"input_tokens\":18446744073709551615}",
    b"\"error\":{\"type\":\"overloaded_error\"}",
    b"\"index\":-1",
    b"\xff\xfe",
    b"\xe2\x82",
    b"\\ud800",
    b"null",
];

fn feed<D: WireDecoder>(decoder: D, bytes: &[u8], rng: &mut fastrand::Rng) {
    let mut d = StreamDecoder::new(decoder);
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = rng.usize(1..=rest.len().min(64));
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        if d.push(chunk, &mut out).is_err() {
            return;
        }
        // What comes out is bounded by what went in.
        assert!(out.len() <= bytes.len() + 1);
    }
    let _ = d.finish(&mut out);
}

fn soup(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut v = Vec::new();
    match rng.u8(0..3) {
        0 => v.extend((0..rng.usize(0..256)).map(|_| rng.u8(..))),
        1 => {
            for _ in 0..rng.usize(0..40) {
                v.extend_from_slice(TOKENS[rng.usize(..TOKENS.len())]);
            }
        }
        _ => {
            v.extend_from_slice(TRANSCRIPTS[rng.usize(..TRANSCRIPTS.len())]);
            for _ in 0..rng.usize(1..8) {
                if v.is_empty() {
                    break;
                }
                let i = rng.usize(..v.len());
                match rng.u8(0..3) {
                    0 => v[i] = rng.u8(..),
                    1 => {
                        let t = TOKENS[rng.usize(..TOKENS.len())];
                        v.splice(i..i, t.iter().copied());
                    }
                    _ => v.truncate(i),
                }
            }
        }
    }
    v
}

/// 100,000 bodies into each decoder.
#[test]
fn byte_soup_never_panics() {
    let mut rng = fastrand::Rng::with_seed(0xb0d1e5);
    for _ in 0..100_000 {
        let body = soup(&mut rng);
        feed(AnthropicDecoder::default(), &body, &mut rng);
        feed(OpenAiDecoder::default(), &body, &mut rng);
    }
}
