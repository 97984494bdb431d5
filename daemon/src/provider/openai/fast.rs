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
pub(super) fn text_chunk(data: &str) -> Option<TextChunk<'_>> {
    let mut p = Scan {
        s: data.as_bytes(),
        src: data,
        i: 0,
    };
    let mut out = TextChunk::default();
    let (mut choices, mut usage, mut model) = (false, false, false);
    p.object(|p, key| match key {
        "model" if !model => {
            model = true;
            out.model = Some(p.string()?);
            Some(())
        }
        "choices" if !choices => {
            choices = true;
            p.one_choice(&mut out)
        }
        "usage" if !usage => {
            usage = true;
            p.null()
        }
        // Read by the slow path, or a key seen twice (serde refuses those).
        "model" | "choices" | "usage" | "error" => None,
        _ => p.scalar(),
    })?;
    p.ws();
    (p.i == p.s.len() && choices).then_some(out)
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

    /// `{ "key": value, ... }`, calling `field` with the scanner at each value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            // A key spelled with escapes could name a field: leave it to serde.
            let key = self.plain_string()?;
            self.eat(b':')?;
            field(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
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

    /// `[ { "index": 0, "delta": {...}, "logprobs": null, "finish_reason": null } ]`.
    fn one_choice(&mut self, out: &mut TextChunk<'a>) -> Option<()> {
        self.eat(b'[')?;
        let (mut index, mut delta, mut logprobs, mut finish) = (false, false, false, false);
        self.object(|p, key| match key {
            "index" if !index => {
                index = true;
                p.ws();
                // Only choice 0 is read; `0` is the one spelling serde also reads as 0 here.
                p.literal(b"0")?;
                match p.s.get(p.i) {
                    Some(b) if b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E') => None,
                    _ => Some(()),
                }
            }
            "delta" if !delta => {
                delta = true;
                p.delta(out)
            }
            "logprobs" if !logprobs => {
                logprobs = true;
                p.null()
            }
            "finish_reason" if !finish => {
                finish = true;
                p.null()
            }
            _ => None,
        })?;
        self.eat(b']')
    }

    /// `{ "role": "assistant", "content": "...", "reasoning_content": "..." }`, each optional,
    /// `content` and `reasoning_content` possibly `null`.
    fn delta(&mut self, out: &mut TextChunk<'a>) -> Option<()> {
        let (mut role, mut content, mut reasoning, mut refusal) = (false, false, false, false);
        self.object(|p, key| match key {
            "role" if !role => {
                role = true;
                (p.peek()? == b'"').then_some(())?;
                p.plain_string().map(drop)
            }
            "content" if !content => {
                content = true;
                p.text_or_null(&mut out.content)
            }
            "reasoning_content" if !reasoning => {
                reasoning = true;
                p.text_or_null(&mut out.reasoning)
            }
            "refusal" if !refusal => {
                refusal = true;
                p.null()
            }
            _ => None,
        })
    }

    fn text_or_null(&mut self, slot: &mut Option<Cow<'a, str>>) -> Option<()> {
        if self.peek()? == b'n' {
            return self.null();
        }
        *slot = Some(self.string()?);
        Some(())
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

    /// Every data line of the recorded OpenAI transcripts and of the simulator's chunks, and
    /// thousands of single-byte mutations of them: whenever the fast path reads a chunk, the
    /// deltas equal serde's, and whenever serde refuses one, the fast path did not read it.
    #[test]
    fn agrees_with_serde_on_transcripts_and_their_mutations() {
        use crate::provider::openai::stream::OpenAiDecoder;
        let mut lines: Vec<String> = Vec::new();
        for name in [
            "openai_chat_finish_length_usage.sse",
            "openai_chat_multiple_choices_n3.sse",
            "openai_chat_text_usage_final_chunk_DONE.sse",
            "openai_chat_tool_call_args_fragments.sse",
        ] {
            let path = format!("{}/testdata/sse/{name}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).expect("transcript");
            lines.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .filter(|d| *d != "[DONE]")
                    .map(str::to_string),
            );
        }
        lines.extend([
            r#"{"id":"chatcmpl-sim-1","object":"chat.completion.chunk","created":1764000000,"model":"gpt-sim-1","system_fingerprint":"fp_sim","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#.to_string(),
            r#"{"id":"x","choices":[{"index":0,"delta":{"content":null,"reasoning_content":"th\u00efnk \\ \/ \ud83d\ude00"},"finish_reason":null}],"usage":null}"#.to_string(),
            r#" { "model" : "m" , "choices" : [ { "delta" : { "content" : "a b" } , "index" : 0 } ] , "n" : -1.5e+3 , "t" : true } "#.to_string(),
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
        let (mut read, mut checked) = (0, 0);
        let mut check = |data: &str| {
            checked += 1;
            if let Some(got) = fast(data) {
                read += 1;
                assert_eq!(Ok(got), slow(data), "{data}");
            }
        };
        for line in &lines {
            check(line);
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
                        check(&v);
                    }
                    let mut v = bytes.to_vec();
                    if let Some(b) = b {
                        v[i] = b;
                        if let Ok(v) = String::from_utf8(v) {
                            check(&v);
                        }
                    }
                }
            }
        }
        // The fast path must actually be taken on the usual chunks.
        assert!(read > 1000, "fast path read {read} of {checked}");
    }
}
