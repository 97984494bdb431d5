//! From bytes to [`Delta`]s: the SSE parser plus one wire-format decoder.
//!
//! Events go from the parser straight to the wire decoder as each line is read, borrowed from
//! the chunk where they lie: nothing is queued or copied between the two.

use std::borrow::Cow;

use mythos_protocol::Text;
use serde::{Deserialize, Deserializer};

use super::delta::Delta;
use super::error::ProviderError;
use super::sse::{SseEvent, SseItem, SseParser};

/// A provider's event vocabulary on top of SSE.
pub trait WireDecoder: Send {
    /// Handle one event.
    fn on_event(&mut self, ev: &SseEvent<'_>, out: &mut Vec<Delta>) -> Result<(), ProviderError>;
    /// The stream's terminator was seen.
    fn is_done(&self) -> bool;
    /// Name of the terminator, for the truncation message.
    fn terminator(&self) -> &'static str;
    /// Whether a clean end of the body completes the stream. Formats with a terminator event
    /// need that event ([`WireDecoder::is_done`]); Gemini's stream just stops after its finish
    /// reason, so for it this says whether one came.
    fn ends_cleanly(&self) -> bool {
        false
    }
}

/// An SSE parser feeding a [`WireDecoder`].
pub struct StreamDecoder<D: WireDecoder> {
    sse: SseParser,
    wire: D,
}

impl<D: WireDecoder> StreamDecoder<D> {
    /// A decoder for one response body.
    pub fn new(wire: D) -> Self {
        StreamDecoder {
            sse: SseParser::new(),
            wire,
        }
    }

    /// Feed a chunk of the body.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Delta>) -> Result<(), ProviderError> {
        if self.wire.is_done() {
            return Ok(());
        }
        let wire = &mut self.wire;
        // The rest of a chunk that holds the terminator is still parsed (and a broken SSE line
        // there still fails the push), but no event after the terminator reaches the decoder.
        self.sse.push(chunk, &mut |item| deliver(wire, item, out))
    }

    /// The body ended. Fails with `truncated` unless the terminator was seen: a stream that
    /// stops early is a failure, never a silent success.
    pub fn finish(&mut self, out: &mut Vec<Delta>) -> Result<(), ProviderError> {
        if !self.wire.is_done() {
            let wire = &mut self.wire;
            self.sse.finish(&mut |item| deliver(wire, item, out))?;
        }
        if self.wire.is_done() || self.wire.ends_cleanly() {
            Ok(())
        } else {
            Err(ProviderError::truncated(self.wire.terminator()))
        }
    }

    /// The terminator was seen.
    pub fn is_done(&self) -> bool {
        self.wire.is_done()
    }
}

fn deliver<D: WireDecoder>(
    wire: &mut D,
    item: SseItem<'_>,
    out: &mut Vec<Delta>,
) -> Result<(), ProviderError> {
    if wire.is_done() {
        return Ok(());
    }
    match item {
        SseItem::Comment => {
            out.push(Delta::KeepAlive);
            Ok(())
        }
        SseItem::Event(ev) => wire.on_event(&ev, out),
    }
}

/// A JSON string borrowed from the event's data when it has no escapes, owned when it has.
///
/// serde borrows a bare `Cow<str>` field only with `#[serde(borrow)]`, and never one inside an
/// `Option`; this wrapper borrows in both places. Text the decoders only look at (a model name
/// repeated on every chunk, a type tag) then costs no allocation.
#[derive(Debug, Default)]
pub(crate) struct Str<'a>(pub Cow<'a, str>);

impl Str<'_> {
    /// The text, owned (one copy when it was borrowed).
    pub fn into_string(self) -> String {
        self.0.into_owned()
    }

    /// The text as a delta's [`Text`]: a short one kept inline, without an allocation.
    pub fn into_text(self) -> Text {
        Text::from(self.0)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<De: Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON array whose first element is kept inline: the chunks' `choices`, `candidates` and
/// `parts` nearly always hold one element, which then needs no allocation.
pub(crate) struct Seq<T> {
    first: Option<T>,
    rest: Vec<T>,
}

impl<T> Default for Seq<T> {
    fn default() -> Self {
        Seq {
            first: None,
            rest: Vec::new(),
        }
    }
}

impl<T> IntoIterator for Seq<T> {
    type Item = T;
    type IntoIter = std::iter::Chain<std::option::IntoIter<T>, std::vec::IntoIter<T>>;
    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Seq<T> {
    fn deserialize<De: Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Seq<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut s = Seq {
                    first: seq.next_element()?,
                    rest: Vec::new(),
                };
                if s.first.is_some() {
                    while let Some(x) = seq.next_element()? {
                        s.rest.push(x);
                    }
                }
                Ok(s)
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// A value that is read past, not kept, one element at a time.
///
/// An unknown field is skipped by serde_json with a stack of the brackets it is inside, kept on
/// the heap: a field like Gemini's `promptTokensDetails` (an array of objects), repeated on every
/// chunk, would cost an allocation each time. Naming such a field with this type skips its
/// elements one by one, each only one level deep, and accepts whatever the field holds, as
/// ignoring it would.
pub(crate) struct Skipped;

impl<'de> Deserialize<'de> for Skipped {
    fn deserialize<De: Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skipped;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("anything")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skipped, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Skipped)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skipped, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Skipped)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_str<E>(self, _: &str) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_unit<E>(self) -> Result<Skipped, E> {
                Ok(Skipped)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_borrow_unless_escaped() {
        #[derive(Deserialize)]
        struct T<'a> {
            #[serde(borrow)]
            a: Option<Str<'a>>,
            #[serde(borrow)]
            b: Option<Str<'a>>,
            #[serde(borrow)]
            c: Option<Str<'a>>,
        }
        let t: T<'_> =
            serde_json::from_str(r#"{"a":"plain","b":"line\nbreak \u00e9","c":null}"#).unwrap();
        let (a, b) = (t.a.unwrap(), t.b.unwrap());
        assert!(matches!(a.0, Cow::Borrowed("plain")));
        assert!(matches!(&b.0, Cow::Owned(s) if s == "line\nbreak \u{e9}"));
        assert!(t.c.is_none());
        assert!(serde_json::from_str::<Str<'_>>("7").is_err());
    }

    #[test]
    fn sequences_keep_every_element_in_order() {
        for json in ["[]", "[1]", "[1,2,3]"] {
            let s: Seq<u32> = serde_json::from_str(json).unwrap();
            let want: Vec<u32> = serde_json::from_str(json).unwrap();
            assert_eq!(s.into_iter().collect::<Vec<_>>(), want);
        }
        assert!(serde_json::from_str::<Seq<u32>>("null").is_err());
        assert!(serde_json::from_str::<Seq<u32>>("{}").is_err());
    }

    #[test]
    fn skipped_values_are_whatever_the_field_holds() {
        for json in [
            r#"[{"modality":"TEXT","tokenCount":7},{"a":[[1],{"b":null}]}]"#,
            r#"{"a":[1,{"b":2}]}"#,
            "null",
            "true",
            "-1",
            "1.5",
            r#""text""#,
        ] {
            assert!(serde_json::from_str::<Skipped>(json).is_ok(), "{json}");
        }
        assert!(serde_json::from_str::<Skipped>("[1,").is_err());
    }
}

/// A way to count what decoding costs per chunk, for callgrind; no timing, ignored by default.
///
/// ```text
/// cargo test --release -p mythosd --lib decode_cost_probe --no-run
/// valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.decode.out \
///     <test-binary> provider::decode::cost::decode_cost_probe --exact --ignored --test-threads=1
/// callgrind_annotate --inclusive=yes /tmp/cg.decode.out | grep probe_
/// ```
/// Each `probe_*` function decodes [`cost::CHUNKS`] content events, one upstream read each, as
/// the recorded transcripts send them; its inclusive count divided by that is the cost per chunk.
/// `--toggle-collect='*probe_openai'` counts one format alone, mallocs and memcpys included.
#[cfg(test)]
mod cost {
    use super::*;
    use crate::provider::anthropic::stream::AnthropicDecoder;
    use crate::provider::gemini::stream::GeminiDecoder;
    use crate::provider::openai::stream::OpenAiDecoder;

    pub const CHUNKS: usize = 10_000;

    const OPENAI_FIRST: &str = r#"data: {"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion.chunk","created":1727346168,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_5050236cbd","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]}"#;
    const OPENAI_CHUNK: &str = r#"data: {"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion.chunk","created":1727346168,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_5050236cbd","choices":[{"index":0,"delta":{"content":" unable"},"logprobs":null,"finish_reason":null}]}"#;
    const OPENAI_LAST: &str = r#"data: {"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion.chunk","created":1727346168,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_5050236cbd","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":10000,"total_tokens":10009}}"#;
    const ANTHROPIC_FIRST: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-3-opus-latest\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}";
    const ANTHROPIC_CHUNK: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there\"}}";
    const ANTHROPIC_LAST: &str = "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":10000}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}";
    const GEMINI_CHUNK: &str = r#"data: {"candidates":[{"content":{"parts":[{"text":" sky is blue"}],"role":"model"}}],"modelVersion":"gemini-2.0-flash","responseId":"pdSfaOurIPqAm9IPucqbqA4","usageMetadata":{"promptTokenCount":7,"promptTokensDetails":[{"modality":"TEXT","tokenCount":7}],"totalTokenCount":7}}"#;
    const GEMINI_LAST: &str = r#"data: {"candidates":[{"content":{"parts":[{"text":"."}],"role":"model"},"finishReason":"STOP"}],"modelVersion":"gemini-2.0-flash","responseId":"pdSfaOurIPqAm9IPucqbqA4","usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":10000,"totalTokenCount":10007}}"#;

    /// One upstream read per event, the way streaming servers flush them.
    fn reads(first: &str, chunk: &str, last: &str) -> Vec<Vec<u8>> {
        let mut v = vec![format!("{first}\n\n").into_bytes()];
        v.extend((0..CHUNKS).map(|_| format!("{chunk}\n\n").into_bytes()));
        v.push(format!("{last}\n\n").into_bytes());
        v
    }

    fn run<D: WireDecoder>(wire: D, reads: &[Vec<u8>]) -> usize {
        let mut d = StreamDecoder::new(wire);
        let mut out = Vec::new();
        let mut n = 0;
        for r in reads {
            d.push(r, &mut out).unwrap();
            // The relay takes each delta away as it comes.
            n += out.drain(..).count();
        }
        d.finish(&mut out).unwrap();
        n + out.len()
    }

    #[inline(never)]
    fn probe_openai(reads: &[Vec<u8>]) -> usize {
        run(OpenAiDecoder::default(), reads)
    }

    #[inline(never)]
    fn probe_anthropic(reads: &[Vec<u8>]) -> usize {
        run(AnthropicDecoder::default(), reads)
    }

    #[inline(never)]
    fn probe_gemini(reads: &[Vec<u8>]) -> usize {
        run(GeminiDecoder::new(0), reads)
    }

    #[test]
    #[ignore = "a probe for callgrind, not a check"]
    fn decode_cost_probe() {
        let o = reads(OPENAI_FIRST, OPENAI_CHUNK, OPENAI_LAST);
        let o = [o, vec![b"data: [DONE]\n\n".to_vec()]].concat();
        assert!(probe_openai(&o) > CHUNKS);
        let a = reads(ANTHROPIC_FIRST, ANTHROPIC_CHUNK, ANTHROPIC_LAST);
        assert!(probe_anthropic(&a) > CHUNKS);
        let g = reads(GEMINI_CHUNK, GEMINI_CHUNK, GEMINI_LAST);
        assert!(probe_gemini(&g) > CHUNKS);
    }
}
