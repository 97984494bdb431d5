//! Any response body, split where the first byte says, through the SSE parser and the Anthropic
//! and OpenAI stream decoders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mythosd::provider::anthropic::stream::AnthropicDecoder;
use mythosd::provider::decode::{StreamDecoder, WireDecoder};
use mythosd::provider::openai::stream::OpenAiDecoder;

fn feed<D: WireDecoder>(decoder: D, chunk: usize, body: &[u8]) {
    let mut d = StreamDecoder::new(decoder);
    let mut out = Vec::new();
    for piece in body.chunks(chunk) {
        if d.push(piece, &mut out).is_err() {
            return;
        }
    }
    let _ = d.finish(&mut out);
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(split).max(1);
    feed(AnthropicDecoder::default(), chunk, body);
    feed(OpenAiDecoder::default(), chunk, body);
});
