//! A fast path for the chunk that makes up nearly every Chat Completions stream: one choice,
//! index 0, a delta of text (or DeepSeek's reasoning), no finish reason, no usage.
//!
//! serde_json spends ~4,800 instructions on such a ~200-byte chunk (it looks up every key,
//! checks every string for escapes, builds and drops the structs); this walks the object once
//! and takes only what the router needs. Anything
//! else, any doubt (a nested value where a scalar is expected, a duplicate key, an escape in
//! the model name, a number it cannot vouch for), returns `None` and the chunk goes through
//! serde as before, so malformed input gets the same error it always had. A test feeds every
//! recorded transcript and thousands of mutations of them through both paths: whenever this
//! one answers, it answers exactly as serde does.
//!
//! Within one stream, the chunks differ only from the text on: `id`, `created`, `model` and
//! `system_fingerprint` come first and repeat on every chunk. A [`Shape`] keeps the bytes
//! before the text of the last chunk read and what the scanner knew at that point; a chunk that
//! starts with the same bytes is read from its text on (the scanner's state after identical
//! bytes is identical, and every token of those bytes ended before the text's opening quote),
//! so the ~150 repeated bytes are compared, not parsed again. What follows the text
//! (`"},"logprobs":null,"finish_reason":null}]}`) repeats too, and is compared the same way.

use std::borrow::Cow;

/// What a plain text chunk carries.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct TextChunk<'a> {
    /// `model`, when present.
    pub model: Option<Cow<'a, str>>,
    /// `choices[0].delta.content`, when a string.
    pub content: Option<Cow<'a, str>>,
    /// `choices[0].delta.reasoning_content` (DeepSeek), when a string.
    pub reasoning: Option<Cow<'a, str>>,
}

/// The chunk, if it is a plain text chunk this can read with certainty.
#[cfg(test)]
pub(super) fn text_chunk(data: &str) -> Option<TextChunk<'_>> {
    read(data, None)
}

/// Where the text starts in the chunks of one stream, learnt from the last chunk read.
#[derive(Debug, Default)]
pub(super) struct Shape {
    /// The chunk's bytes before the opening quote of its text; empty when nothing is learnt.
    prefix: Vec<u8>,
    /// What the scanner knew there.
    at: Resume,
    /// The bytes after the text of the last chunk resumed, when they held nothing to take (no
    /// model, no second text): the scanner's state after a text is the same whatever the text, so a chunk
    /// that ends with the same bytes is read once its text is. Empty when nothing is learnt.
    tail: Vec<u8>,
}

/// The scanner's state at a text value: which keys each enclosing object has had, and which
/// text it is.
#[derive(Debug, Default, Clone, Copy)]
struct Resume {
    top: TopSeen,
    choice: ChoiceSeen,
    delta: DeltaSeen,
    reasoning: bool,
    /// The bytes before carried a non-empty `model`.
    model: bool,
}

impl Shape {
    /// The chunk read from its text on, if it starts as the learnt one did. A `model` before
    /// the text is not read again (the caller resumes only once it has the model, see
    /// [`Shape::skips_model`]); one after the text is.
    pub(super) fn resume<'a>(&mut self, data: &'a str) -> Option<TextChunk<'a>> {
        if self.prefix.is_empty() || !data.as_bytes().starts_with(&self.prefix) {
            return None;
        }
        let mut p = Scan::new(data);
        p.i = self.prefix.len();
        let mut at = self.at;
        let mut out = TextChunk::default();
        let text = p.string()?;
        if at.reasoning {
            out.reasoning = Some(text);
        } else {
            out.content = Some(text);
        }
        let rest = &data.as_bytes()[p.i..];
        if !self.tail.is_empty() && rest == self.tail.as_slice() {
            return Some(out);
        }
        p.object_rest(|p, key| p.delta_field(key, &mut at.delta, &mut out, None))?;
        p.object_rest(|p, key| p.choice_field(key, &mut at.choice, &mut out, None))?;
        p.eat(b']')?;
        p.object_rest(|p, key| p.top_field(key, &mut at.top, &mut out, None))?;
        p.end(&at.top)?;
        self.tail.clear();
        // Kept only when the bytes after the text gave nothing to take (no model, not the
        // other text): the state after them is the same for every text, but what they gave
        // would not be given again on a match.
        let other = if at.reasoning {
            &out.content
        } else {
            &out.reasoning
        };
        if out.model.is_none() && other.is_none() && rest.len() <= MAX_PREFIX {
            self.tail.extend_from_slice(rest);
        }
        Some(out)
    }

    /// Whether the bytes before the text had a model the caller has not yet taken.
    pub(super) fn skips_model(&self) -> bool {
        self.at.model
    }
}

/// The chunk, if it is a plain text chunk this can read with certainty; with `learn`, where
/// its text starts is kept there for the next chunk.
pub(super) fn read<'a>(data: &'a str, learn: Option<&mut Shape>) -> Option<TextChunk<'a>> {
    let mut p = Scan::new(data);
    let mut out = TextChunk::default();
    let mut top = TopSeen::default();
    let mut hole = learn.is_some().then_some(Hole::Open);
    p.eat(b'{')?;
    if p.eat(b'}').is_none() {
        p.object_first(|p, key| p.top_field(key, &mut top, &mut out, hole.as_mut()))?;
    }
    p.end(&top)?;
    if let (Some(shape), Some(Hole::At(at, state))) = (learn, hole) {
        if at > MAX_PREFIX {
            // Not a chunk the fast path is for; and a stream's memory stays bounded.
            return Some(out);
        }
        shape.prefix.clear();
        shape.prefix.extend_from_slice(&data.as_bytes()[..at]);
        shape.at = state;
        shape.tail.clear();
    }
    Some(out)
}

/// The longest run of bytes before a text that is learnt: real chunks have ~150.
const MAX_PREFIX: usize = 1024;

/// Learning where the text starts, during a full read.
#[derive(Clone, Copy)]
enum Hole {
    /// Not found yet.
    Open,
    /// The text's opening quote is at this byte, with this state.
    At(usize, Resume),
    /// The chunk cannot be resumed (two texts).
    None,
}

#[derive(Debug, Default, Clone, Copy)]
struct TopSeen {
    model: bool,
    choices: bool,
    usage: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct ChoiceSeen {
    index: bool,
    delta: bool,
    logprobs: bool,
    finish: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct DeltaSeen {
    role: bool,
    content: bool,
    reasoning: bool,
    refusal: bool,
}

/// The high bit of each byte of `w` (little-endian) that is `"`, `\\` or below 0x20, and
/// perhaps of bytes after the first such: the lowest set bit is always exact, which is all the
/// scan uses.
fn special_bytes(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    let quote = zero(w ^ (ONES * u64::from(b'"')));
    let backslash = zero(w ^ (ONES * u64::from(b'\\')));
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    (quote | backslash | control) & HIGH
}

struct Scan<'a> {
    s: &'a [u8],
    src: &'a str,
    i: usize,
}

impl<'a> Scan<'a> {
    fn new(src: &'a str) -> Self {
        Scan {
            s: src.as_bytes(),
            src,
            i: 0,
        }
    }

    #[inline(always)]
    fn ws(&mut self) {
        // Compact JSON has none: one comparison in the usual case (every JSON whitespace
        // byte is at most a space).
        while let Some(&b) = self.s.get(self.i) {
            if b > b' ' || !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        self.ws();
        (self.s.get(self.i) == Some(&b)).then(|| self.i += 1)
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    /// The end of the chunk: nothing but whitespace after the top object, which had choices.
    fn end(&mut self, top: &TopSeen) -> Option<()> {
        self.ws();
        (self.i == self.s.len() && top.choices).then_some(())
    }

    /// The members of an object whose `{` is behind and which is not empty, calling `field`
    /// with the scanner at each value.
    fn object_first(
        &mut self,
        mut field: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.member(&mut field)?;
        self.object_rest(field)
    }

    /// The rest of an object after one of its values: `, "key": value ... }`.
    fn object_rest(
        &mut self,
        mut field: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        loop {
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
            self.member(&mut field)?;
        }
    }

    /// `"key": value`.
    #[inline(always)]
    fn member(&mut self, field: &mut impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        if self.peek()? != b'"' {
            return None;
        }
        // A key spelled with escapes could name a field: leave it to serde.
        let key = self.plain_string()?;
        self.eat(b':')?;
        field(self, key)
    }

    /// `{ "key": value, ... }`.
    fn object(&mut self, field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        self.object_first(field)
    }

    fn top_field(
        &mut self,
        key: &str,
        seen: &mut TopSeen,
        out: &mut TextChunk<'a>,
        hole: Option<&mut Hole>,
    ) -> Option<()> {
        match key {
            "model" if !seen.model => {
                seen.model = true;
                out.model = Some(self.string()?);
                Some(())
            }
            "choices" if !seen.choices => {
                seen.choices = true;
                self.one_choice(seen, out, hole)
            }
            "usage" if !seen.usage => {
                seen.usage = true;
                self.null()
            }
            // Read by the slow path, or a key seen twice (serde refuses those).
            "model" | "choices" | "usage" | "error" => None,
            _ => self.scalar(),
        }
    }

    /// `[ { "index": 0, "delta": {...}, "logprobs": null, "finish_reason": null } ]`.
    fn one_choice(
        &mut self,
        top: &TopSeen,
        out: &mut TextChunk<'a>,
        mut hole: Option<&mut Hole>,
    ) -> Option<()> {
        self.eat(b'[')?;
        let mut seen = ChoiceSeen::default();
        self.object(|p, key| {
            let hole = hole.as_deref_mut().map(|h| (h, top));
            p.choice_field(key, &mut seen, out, hole)
        })?;
        self.eat(b']')
    }

    fn choice_field(
        &mut self,
        key: &str,
        seen: &mut ChoiceSeen,
        out: &mut TextChunk<'a>,
        hole: Option<(&mut Hole, &TopSeen)>,
    ) -> Option<()> {
        match key {
            "index" if !seen.index => {
                seen.index = true;
                self.ws();
                // Only choice 0 is read; `0` is the one spelling serde also reads as 0 here.
                self.literal(b"0")?;
                match self.s.get(self.i) {
                    Some(b) if b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E') => None,
                    _ => Some(()),
                }
            }
            "delta" if !seen.delta => {
                seen.delta = true;
                let (top, choice) = (hole.as_ref().map(|h| *h.1), *seen);
                let mut seen = DeltaSeen::default();
                let mut hole = hole.map(|h| h.0);
                self.object(|p, key| {
                    let hole = hole
                        .as_deref_mut()
                        .zip(top)
                        .map(|(h, top)| (h, top, choice));
                    p.delta_field(key, &mut seen, out, hole)
                })
            }
            "logprobs" if !seen.logprobs => {
                seen.logprobs = true;
                self.null()
            }
            "finish_reason" if !seen.finish => {
                seen.finish = true;
                self.null()
            }
            _ => None,
        }
    }

    /// A member of `{ "role": "assistant", "content": "...", "reasoning_content": "..." }`, each
    /// optional, `content` and `reasoning_content` possibly `null`.
    fn delta_field(
        &mut self,
        key: &str,
        seen: &mut DeltaSeen,
        out: &mut TextChunk<'a>,
        hole: Option<(&mut Hole, TopSeen, ChoiceSeen)>,
    ) -> Option<()> {
        match key {
            "role" if !seen.role => {
                seen.role = true;
                (self.peek()? == b'"').then_some(())?;
                self.plain_string().map(drop)
            }
            "content" if !seen.content => {
                seen.content = true;
                self.text(false, seen, out, hole)
            }
            "reasoning_content" if !seen.reasoning => {
                seen.reasoning = true;
                self.text(true, seen, out, hole)
            }
            "refusal" if !seen.refusal => {
                seen.refusal = true;
                self.null()
            }
            _ => None,
        }
    }

    /// A text value, string or `null`; with `hole`, a string is where the next chunk may be
    /// resumed when it is the chunk's only text.
    fn text(
        &mut self,
        reasoning: bool,
        delta: &DeltaSeen,
        out: &mut TextChunk<'a>,
        hole: Option<(&mut Hole, TopSeen, ChoiceSeen)>,
    ) -> Option<()> {
        if self.peek()? == b'n' {
            return self.null();
        }
        let at = self.i;
        let text = self.string()?;
        if let Some((hole, top, choice)) = hole {
            *hole = match *hole {
                Hole::Open if out.content.is_none() && out.reasoning.is_none() => Hole::At(
                    at,
                    Resume {
                        top,
                        choice,
                        delta: *delta,
                        reasoning,
                        model: out.model.as_deref().is_some_and(|m| !m.is_empty()),
                    },
                ),
                _ => Hole::None,
            };
        }
        let slot = if reasoning {
            &mut out.reasoning
        } else {
            &mut out.content
        };
        *slot = Some(text);
        Some(())
    }

    /// A JSON string, borrowed when it has no escapes.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        let (start, escaped) = self.string_end()?;
        if escaped {
            // Escapes are rare in a token; serde decodes them (surrogates and all).
            serde_json::from_str::<String>(self.src.get(start - 1..self.i)?)
                .ok()
                .map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(self.src.get(start..self.i - 1)?))
        }
    }

    /// The string at the scanner (its opening quote), if it has no escapes: keys, and values
    /// only skipped (an escape in those is rare enough to leave to serde).
    #[inline(always)]
    fn plain_string(&mut self) -> Option<&'a str> {
        self.i += 1;
        match self.string_end()? {
            (start, false) => self.src.get(start..self.i - 1),
            (_, true) => None,
        }
    }

    /// Past the closing quote of the string whose opening quote is just behind: where its
    /// text started, and whether it has escapes. `None` on a raw control character (JSON
    /// forbids them) or no closing quote.
    #[inline(always)]
    fn string_end(&mut self) -> Option<(usize, bool)> {
        let start = self.i;
        let mut escaped = false;
        // One pass for the closing quote, escapes and the raw control characters JSON forbids
        // (serde refuses those, and so must we), eight bytes at a time: the strings of a chunk
        // are a few dozen bytes each, too short for a vectorised search to pay for its set-up.
        loop {
            while let Some(word) = self.s.get(self.i..self.i + 8) {
                let hit = special_bytes(u64::from_le_bytes(word.try_into().ok()?));
                if hit != 0 {
                    self.i += (hit.trailing_zeros() / 8) as usize;
                    break;
                }
                self.i += 8;
            }
            match *self.s.get(self.i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    // The escaped character is never the closing quote.
                    self.i += 2;
                }
                b if b < 0x20 => return None,
                _ => self.i += 1,
            }
        }
        self.i += 1;
        Some((start, escaped))
    }

    fn null(&mut self) -> Option<()> {
        self.ws();
        self.s[self.i..].starts_with(b"null").then(|| self.i += 4)
    }

    /// A string, number, `true`, `false` or `null`, skipped. Objects and arrays are not.
    fn scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.plain_string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.s[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }

    /// A number in JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let digits = |p: &mut Self| {
            let from = p.i;
            while p.s.get(p.i).is_some_and(u8::is_ascii_digit) {
                p.i += 1;
            }
            (p.i > from).then_some(())
        };
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.s.get(self.i)? {
            b'0' => self.i += 1,
            b'1'..=b'9' => digits(self)?,
            _ => return None,
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            digits(self)?;
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            digits(self)?;
        }
        // A number running straight into a letter is not one (serde refuses `1x`).
        match self.s.get(self.i) {
            Some(b) if b.is_ascii_alphanumeric() || *b == b'.' => None,
            _ => Some(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_scan_finds_the_first_special_byte() {
        for at in 0..8 {
            for special in [b'"', b'\\', 0x00, 0x1f] {
                for filler in [b'a', b' ', 0x7f, 0xc3, b'!', b'#', b'[', b']'] {
                    let mut w = [filler; 8];
                    w[at] = special;
                    // Bytes after the first may be anything.
                    if at < 7 {
                        w[7] = b'"';
                    }
                    let hit = special_bytes(u64::from_le_bytes(w));
                    assert_eq!(hit.trailing_zeros() / 8, at as u32, "{w:?}");
                }
            }
        }
        assert_eq!(special_bytes(u64::from_le_bytes(*b"abc def!")), 0);
        assert_eq!(
            special_bytes(u64::from_le_bytes([
                0x20, 0x7f, 0x80, 0xff, b'#', b'!', b'[', b']'
            ])),
            0
        );
    }

    #[test]
    fn reads_the_usual_chunk() {
        let c = text_chunk(
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1764000000,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":" wor\"ld\u00e9"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"x1"}"#,
        )
        .expect("fast");
        assert_eq!(c.model.as_deref(), Some("gpt-4o"));
        assert_eq!(c.content.as_deref(), Some(" wor\"ldé"));
        assert_eq!(c.reasoning, None);
    }

    #[test]
    fn leaves_everything_else_to_serde() {
        for chunk in [
            // finish reason, usage, tool calls, a second choice, an error, nested extras
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":1}}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{}}]}"#,
            r#"{"choices":[{"index":1,"delta":{"content":"a"}}]}"#,
            r#"{"error":{"message":"x"},"choices":[{"index":0,"delta":{"content":"a"}}]}"#,
            r#"{"prompt_filter_results":[],"choices":[{"index":0,"delta":{"content":"a"}}]}"#,
            // malformed: duplicate key, raw newline, bad number, trailing bytes, no choices
            r#"{"model":"a","model":"b","choices":[{"index":0,"delta":{"content":"a"}}]}"#,
            "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\nb\"}}]}",
            r#"{"created":01,"choices":[{"index":0,"delta":{"content":"a"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}]}x"#,
            r#"{"model":"a"}"#,
        ] {
            assert_eq!(text_chunk(chunk), None, "{chunk}");
        }
    }

    /// A stream's learnt bytes stay bounded: a chunk with a long run before its text is read
    /// but not learnt.
    /// What follows a text is learnt only when it gave nothing: a second text after the
    /// first is read from every chunk, not lost once the same bytes come again.
    #[test]
    fn a_second_text_after_the_first_is_never_skipped() {
        let chunk = |delta: &str| {
            format!(r#"{{"id":"x","model":"m","choices":[{{"index":0,"delta":{{{delta}}}}}]}}"#)
        };
        let mut shape = Shape::default();
        read(&chunk(r#""content":"a""#), Some(&mut shape));
        let two = chunk(r#""content":"b","reasoning_content":"x""#);
        for _ in 0..3 {
            let got = shape.resume(&two).expect("resumed");
            assert_eq!(got.content.as_deref(), Some("b"));
            assert_eq!(got.reasoning.as_deref(), Some("x"));
        }
        // And a plain tail is learnt, and used.
        let one = chunk(r#""content":"c""#);
        shape.resume(&one).expect("resumed");
        assert!(!shape.tail.is_empty());
        assert_eq!(shape.resume(&one).unwrap().content.as_deref(), Some("c"));
    }

    #[test]
    fn a_long_run_before_the_text_is_not_learnt() {
        let chunk = |id: &str| {
            format!(r#"{{"id":"{id}","choices":[{{"index":0,"delta":{{"content":"a"}}}}]}}"#)
        };
        let (long, short) = (chunk(&"x".repeat(2000)), chunk("x"));
        let mut shape = Shape::default();
        assert!(read(&long, Some(&mut shape)).is_some());
        assert!(shape.resume(&long).is_none());
        assert!(shape.prefix.capacity() <= MAX_PREFIX);
        read(&short, Some(&mut shape));
        assert!(shape.resume(&short).is_some());
    }

    /// The data lines of each recorded OpenAI Chat Completions transcript.
    fn transcripts() -> Vec<Vec<String>> {
        [
            "openai_chat_finish_length_usage.sse",
            "openai_chat_multiple_choices_n3.sse",
            "openai_chat_refusal.sse",
            "openai_chat_text_usage_final_chunk_DONE.sse",
            "openai_chat_tool_call_args_fragments.sse",
        ]
        .iter()
        .map(|name| {
            let path = format!("{}/testdata/sse/{name}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).expect("transcript");
            text.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .map(str::to_string)
                .collect()
        })
        .collect()
    }

    /// Every data line of the recorded OpenAI transcripts and of the simulator's chunks, and
    /// thousands of single-byte mutations of them: whenever the fast path reads a chunk, the
    /// deltas equal serde's, and whenever serde refuses one, the fast path did not read it.
    #[test]
    fn agrees_with_serde_on_transcripts_and_their_mutations() {
        use crate::provider::delta::Delta;
        use crate::provider::openai::stream::OpenAiDecoder;
        let mut lines: Vec<String> = transcripts().concat();
        lines.extend([
            r#"{"id":"chatcmpl-sim-1","object":"chat.completion.chunk","created":1764000000,"model":"gpt-sim-1","system_fingerprint":"fp_sim","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#.to_string(),
            r#"{"id":"x","choices":[{"index":0,"delta":{"content":null,"reasoning_content":"th\u00efnk \\ \/ \ud83d\ude00"},"finish_reason":null}],"usage":null}"#.to_string(),
            r#" { "model" : "m" , "choices" : [ { "delta" : { "content" : "a b" } , "index" : 0 } ] , "n" : -1.5e+3 , "t" : true } "#.to_string(),
            r#"{"id":"chatcmpl-sim-1","object":"chat.completion.chunk","created":1764000000,"model":"gpt-sim-1","system_fingerprint":"fp_sim","choices":[{"index":0,"delta":{"content":" word"},"logprobs":null,"finish_reason":null}],"obfuscation":"k2"}"#.to_string(),
            r#"{"id":"d","model":"deepseek-reasoner","choices":[{"index":0,"delta":{"content":null,"reasoning_content":"hm"},"finish_reason":null}],"usage":null}"#.to_string(),
            r#"{"id":"d","choices":[{"index":0,"delta":{"reasoning_content":"a","content":"b"}}],"model":"m"}"#.to_string(),
        ]);
        let slow = |data: &str| {
            let mut out = Vec::new();
            OpenAiDecoder::default()
                .decode_slow(data, &mut out)
                .map(|()| out)
                .map_err(|e| e.message)
        };
        let fast = |data: &str| {
            text_chunk(data).map(|c| {
                let mut out = Vec::new();
                OpenAiDecoder::default().push_fast(c, &mut out);
                out
            })
        };
        // Read from its text on, after learning the shape from `primer`: the same deltas as
        // serde's, but for a model before the text (the decoder resumes only once it has it).
        let no_model = |r: Result<Vec<Delta>, String>| {
            r.map(|v| {
                v.into_iter()
                    .filter(|d| !matches!(d, Delta::Model(_)))
                    .collect::<Vec<_>>()
            })
        };
        // With `tail`, the primer is also resumed first, so that what follows its text is
        // learnt too (counted in `tails`).
        let tails = std::cell::Cell::new(0);
        let resumed = |primer: &str, data: &str, tail: bool| {
            let mut shape = Shape::default();
            read(primer, Some(&mut shape));
            if tail {
                shape.resume(primer);
                tails.set(tails.get() + usize::from(!shape.tail.is_empty()));
            }
            shape.resume(data).map(|c| {
                let mut out = Vec::new();
                OpenAiDecoder::default().push_fast(c, &mut out);
                if shape.skips_model() {
                    (no_model(Ok(out.clone())), no_model(slow(data)))
                } else {
                    (Ok(out), slow(data))
                }
            })
        };
        let (mut fast_reads, mut resumes, mut checked) = (0, 0, 0);
        let mut check = |primer: &str, data: &str| {
            checked += 1;
            if let Some(got) = fast(data) {
                fast_reads += 1;
                assert_eq!(Ok(got), slow(data), "{data}");
            }
            for tail in [false, true] {
                if let Some((got, want)) = resumed(primer, data, tail) {
                    resumes += 1;
                    assert_eq!(got, want, "{primer} then {data} (tail learnt: {tail})");
                }
            }
        };
        // Keys the bytes before the text had, seen again after it: serde refuses them. And a
        // model after the text, which is read.
        for (before, afters) in [
            (
                r#"{"id":"x","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"#,
                &[
                    r#""a","content":"b"}}]}"#,
                    r#""a","role":"user"}}]}"#,
                    r#""a"}, "index":0}]}"#,
                    r#""a"}, "delta":{}}]}"#,
                    r#""a"}}],"model":"n"}"#,
                    r#""a"}}],"choices":[]}"#,
                    r#""a"}}],"id":"y"}"#,
                    r#""a"}}]}"#,
                ][..],
            ),
            (
                r#"{"usage":null,"choices":[{"logprobs":null,"finish_reason":null,"index":0,"delta":{"refusal":null,"content":null,"reasoning_content":"#,
                &[
                    r#""a","content":"b"}}]}"#,
                    r#""a","refusal":null}}]}"#,
                    r#""a","reasoning_content":"b"}}]}"#,
                    r#""a"},"logprobs":null}]}"#,
                    r#""a"},"finish_reason":null}]}"#,
                    r#""a"}}],"usage":null}"#,
                    r#""a"}}],"model":"late"}"#,
                    r#""a"}}]}"#,
                ][..],
            ),
        ] {
            for after in afters {
                let chunk = format!("{before}{after}");
                check(&format!(r#"{before}"primer"}}}}]}}"#), &chunk);
            }
        }
        // The model after the text, learnt and read on every chunk.
        let late = r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"model":"m"}"#;
        check(late, late);
        check(
            late,
            r#"{"choices":[{"index":0,"delta":{"content":"b c"}}],"model":"m2"}"#,
        );
        for line in &lines {
            check(line, line);
            let bytes = line.as_bytes();
            for i in 0..bytes.len() {
                for b in [
                    None,
                    Some(b'"'),
                    Some(b'\\'),
                    Some(b','),
                    Some(b'}'),
                    Some(b']'),
                    Some(b'0'),
                    Some(b'1'),
                    Some(b' '),
                    Some(b'\n'),
                    Some(b'n'),
                    Some(b'.'),
                ] {
                    let mut v = bytes.to_vec();
                    match b {
                        None => {
                            v.remove(i);
                        }
                        Some(b) => v.insert(i, b),
                    }
                    if let Ok(v) = String::from_utf8(v) {
                        check(line, &v);
                    }
                    let mut v = bytes.to_vec();
                    if let Some(b) = b {
                        v[i] = b;
                        if let Ok(v) = String::from_utf8(v) {
                            check(line, &v);
                        }
                    }
                }
            }
        }
        // Both paths must actually be taken on the usual chunks.
        assert!(
            fast_reads > 1000,
            "fast path read {fast_reads} of {checked}"
        );
        assert!(resumes > 1000, "resumed {resumes} of {checked}");
        assert!(tails.get() > 1000, "tails learnt {}", tails.get());
    }

    /// Whole streams through the decoder, learning and resuming as it goes, against serde
    /// chunk by chunk: each recorded transcript, the simulator's stream, and each of them with
    /// one of its first chunks mutated.
    #[test]
    fn streams_through_the_decoder_agree_with_serde() {
        use crate::provider::decode::WireDecoder;
        use crate::provider::delta::Delta;
        use crate::provider::openai::stream::OpenAiDecoder;
        use crate::provider::sse::SseEvent;
        let mut streams = transcripts();
        let sim = |delta: &str, finish: &str| {
            format!(
                r#"{{"id":"chatcmpl-sim-1","object":"chat.completion.chunk","created":1764000000,"model":"gpt-sim-1","system_fingerprint":"fp_sim","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}"#
            )
        };
        let mut sim_stream = vec![sim(r#"{"role":"assistant","content":""}"#, "null")];
        for word in ["Hello", " wor", r"ld\n", r" \u00e9t\u00e9", " again"] {
            sim_stream.push(sim(&format!(r#"{{"content":"{word}"}}"#), "null"));
        }
        sim_stream.push(sim("{}", r#""stop""#));
        streams.push(sim_stream);

        type Out = Vec<Result<Vec<Delta>, String>>;
        let through = |chunks: &[String], fast: bool| -> Out {
            let mut d = OpenAiDecoder::default();
            chunks
                .iter()
                .map(|data| {
                    let mut out = Vec::new();
                    let r = if fast {
                        let ev = SseEvent {
                            event: "message",
                            data,
                        };
                        d.on_event(&ev, &mut out)
                    } else {
                        d.decode_slow(data, &mut out)
                    };
                    r.map(|()| out).map_err(|e| e.message)
                })
                .collect()
        };
        let mut runs = 0;
        for stream in &streams {
            assert_eq!(through(stream, true), through(stream, false));
            for k in 1..stream.len().min(4) {
                let bytes = stream[k].as_bytes();
                for i in 0..bytes.len() {
                    for b in [None, Some(b'"'), Some(b'x')] {
                        let mut v = bytes.to_vec();
                        match b {
                            None => drop(v.remove(i)),
                            Some(b) => v[i] = b,
                        }
                        let Ok(v) = String::from_utf8(v) else {
                            continue;
                        };
                        let mut mutated = stream.clone();
                        mutated[k] = v;
                        runs += 1;
                        assert_eq!(
                            through(&mutated, true),
                            through(&mutated, false),
                            "chunk {k}: {}",
                            mutated[k]
                        );
                    }
                }
            }
        }
        assert!(runs > 1000, "{runs} mutated streams");
    }
}
