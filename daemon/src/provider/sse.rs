//! Incremental server-sent-events parser (the WHATWG algorithm), fed arbitrary byte chunks.
//!
//! Lines may end in LF, CRLF or a lone CR, and a chunk boundary may fall anywhere, including
//! between the CR and LF of one line ending or inside a multi-byte character.
//!
//! This runs once per relayed chunk, so it copies as little as it can: line ends are found with
//! `memchr`, complete lines are parsed where they lie in the incoming chunk, and only the
//! unfinished tail is kept between pushes. An event is handed out as borrowed text: its data
//! points into the chunk in the common case of one `data:` line read whole, and into the
//! parser's reused buffer only when the event has several data lines or spans two pushes.

use memchr::memchr2;

use super::error::ProviderError;

/// Cap on one line and on one event's data: no provider sends events this large, and a stream
/// that does is broken or hostile.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// One dispatched event, borrowed from the parser and the chunk being parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field, or `message` when absent.
    pub event: &'a str,
    /// The `data:` lines joined by `\n`.
    pub data: &'a str,
}

/// What the parser yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseItem<'a> {
    /// A complete event.
    Event(SseEvent<'a>),
    /// A comment line (`: keep-alive`): the connection is alive.
    Comment,
}

/// The parser state.
#[derive(Debug, Default)]
pub struct SseParser {
    /// The unfinished line carried over from the previous push.
    line: Vec<u8>,
    /// The previous chunk ended in CR: a leading LF of the next chunk belongs to it.
    after_cr: bool,
    /// Still at the very start of the stream (a BOM may follow).
    started: bool,
    /// The `event:` field of the event being read (valid when `has_event`); the buffer is
    /// reused so naming every event, as Anthropic does, allocates nothing after the first.
    event: String,
    has_event: bool,
    /// Data of the event being read, when it could not stay borrowed from a chunk (valid
    /// when `has_data`).
    data: String,
    has_data: bool,
}

/// One line, split into what the parser acts on.
enum Line<'l> {
    /// An empty line: dispatch.
    Blank,
    Comment,
    Event(&'l str),
    Data(&'l str),
    /// id, retry and unknown fields carry nothing we use.
    Ignored,
}

impl<'l> Line<'l> {
    fn parse(line: &'l [u8]) -> Result<Self, ProviderError> {
        if line.is_empty() {
            return Ok(Line::Blank);
        }
        if line[0] == b':' {
            return Ok(Line::Comment);
        }
        // Nearly every line is `data:`, checked by its bytes before any search for the colon.
        let utf8 = |b: &'l [u8]| {
            simdutf8::basic::from_utf8(b)
                .map_err(|_| ProviderError::malformed("SSE line is not UTF-8"))
        };
        if let Some(value) = line.strip_prefix(b"data:") {
            return Ok(Line::Data(utf8(value.strip_prefix(b" ").unwrap_or(value))?));
        }
        let line = utf8(line)?;
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        Ok(match field {
            "event" => Line::Event(value),
            "data" => Line::Data(value),
            _ => Line::Ignored,
        })
    }
}

impl SseParser {
    /// A fresh parser.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes; each complete item is handed to `f` as soon as its line is read. An error
    /// from `f` stops the parse and is returned.
    pub fn push<F>(&mut self, mut chunk: &[u8], f: &mut F) -> Result<(), ProviderError>
    where
        F: FnMut(SseItem<'_>) -> Result<(), ProviderError>,
    {
        if chunk.is_empty() {
            // Nothing to parse, and a CR that ended the last chunk may still meet its LF.
            return Ok(());
        }
        if !self.started {
            // A BOM can only be recognised once three bytes are there; hold short prefixes.
            self.line.extend_from_slice(chunk);
            if self.line.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.line) {
                return Ok(());
            }
            self.started = true;
            let held = std::mem::take(&mut self.line);
            let rest = held.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&held);
            return self.scan(rest, f);
        }
        if self.after_cr {
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
            self.after_cr = false;
        }
        self.scan(chunk, f)
    }

    fn scan<F>(&mut self, chunk: &[u8], f: &mut F) -> Result<(), ProviderError>
    where
        F: FnMut(SseItem<'_>) -> Result<(), ProviderError>,
    {
        // The data of the event being read, while it is one line that lies in this chunk.
        let mut borrowed = None;
        let result = self.scan_lines(chunk, &mut borrowed, f);
        // The chunk goes back to its owner: what the next push needs is copied now.
        self.own_borrowed(&mut borrowed);
        result
    }

    fn scan_lines<'c, F>(
        &mut self,
        mut chunk: &'c [u8],
        borrowed: &mut Option<&'c str>,
        f: &mut F,
    ) -> Result<(), ProviderError>
    where
        F: FnMut(SseItem<'_>) -> Result<(), ProviderError>,
    {
        loop {
            // The blank line that ends the usual event comes right after its data line: found
            // without a search (the same answer `memchr2` would give, for less).
            let pos = if chunk.first() == Some(&b'\n') {
                0
            } else {
                match memchr2(b'\n', b'\r', chunk) {
                    Some(pos) => pos,
                    None => break,
                }
            };
            let (head, tail) = chunk.split_at(pos);
            if self.line.is_empty() {
                if head.len() > MAX_EVENT_BYTES {
                    return Err(line_too_long());
                }
                match Line::parse(head)? {
                    Line::Data(v) => self.data_in_chunk(v, borrowed)?,
                    other => self.line_done(other, borrowed, f)?,
                }
            } else {
                // The line began in an earlier chunk: complete it in the carried buffer,
                // which is reused for the next line, so its data is copied.
                self.grow(head)?;
                let line = std::mem::take(&mut self.line);
                let done = Line::parse(&line).and_then(|l| self.line_done(l, borrowed, f));
                self.line = line;
                self.line.clear();
                done?;
            }
            chunk = &tail[1..];
            if tail[0] == b'\r' {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.grow(chunk)
    }

    /// Move data that borrows from the chunk into the parser's own buffer.
    fn own_borrowed(&mut self, borrowed: &mut Option<&str>) {
        if let Some(b) = borrowed.take() {
            self.data.clear();
            self.data.push_str(b);
            self.has_data = true;
        }
    }

    fn grow(&mut self, bytes: &[u8]) -> Result<(), ProviderError> {
        if self.line.len() + bytes.len() > MAX_EVENT_BYTES {
            return Err(line_too_long());
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// Act on one line; a data line is copied into the buffer.
    fn line_done<F>(
        &mut self,
        line: Line<'_>,
        borrowed: &mut Option<&str>,
        f: &mut F,
    ) -> Result<(), ProviderError>
    where
        F: FnMut(SseItem<'_>) -> Result<(), ProviderError>,
    {
        match line {
            Line::Blank => self.dispatch(borrowed, f),
            Line::Comment => f(SseItem::Comment),
            Line::Event(name) => {
                self.event.clear();
                self.event.push_str(name);
                self.has_event = true;
                Ok(())
            }
            Line::Data(v) => {
                self.check_data(*borrowed, v)?;
                self.join_data(borrowed, v);
                Ok(())
            }
            Line::Ignored => Ok(()),
        }
    }

    /// A data line read whole from the chunk: the first of an event stays where it is, and is
    /// copied only if it must outlive the chunk or another data line joins it.
    fn data_in_chunk<'c>(
        &mut self,
        value: &'c str,
        borrowed: &mut Option<&'c str>,
    ) -> Result<(), ProviderError> {
        self.check_data(*borrowed, value)?;
        if borrowed.is_none() && !self.has_data {
            *borrowed = Some(value);
        } else {
            self.join_data(borrowed, value);
        }
        Ok(())
    }

    fn check_data(&self, borrowed: Option<&str>, value: &str) -> Result<(), ProviderError> {
        let held = match borrowed {
            Some(b) => b.len(),
            None if self.has_data => self.data.len(),
            None => 0,
        };
        if held + value.len() + 1 > MAX_EVENT_BYTES {
            return Err(ProviderError::malformed(format!(
                "SSE event larger than {MAX_EVENT_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// Append a data line to the event's data in the buffer.
    fn join_data(&mut self, borrowed: &mut Option<&str>, value: &str) {
        self.own_borrowed(borrowed);
        if self.has_data {
            self.data.push('\n');
        } else {
            self.data.clear();
            self.has_data = true;
        }
        self.data.push_str(value);
    }

    fn dispatch<F>(&mut self, borrowed: &mut Option<&str>, f: &mut F) -> Result<(), ProviderError>
    where
        F: FnMut(SseItem<'_>) -> Result<(), ProviderError>,
    {
        let has_event = std::mem::replace(&mut self.has_event, false);
        let data = match borrowed.take() {
            Some(b) => b,
            None if self.has_data => self.data.as_str(),
            None => return Ok(()),
        };
        self.has_data = false;
        f(SseItem::Event(SseEvent {
            event: if has_event { &self.event } else { "message" },
            data,
        }))
    }

    /// The stream ended. An event whose data was read but whose blank line never came is
    /// dispatched: recorded Anthropic streams end that way, and the official SDK yields it.
    pub fn finish<F>(&mut self, f: &mut F) -> Result<(), ProviderError>
    where
        F: FnMut(SseItem<'_>) -> Result<(), ProviderError>,
    {
        if !self.started {
            self.started = true;
            let held = std::mem::take(&mut self.line);
            self.scan(&held, f)?;
        }
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            let parsed = Line::parse(&line)?;
            self.line_done(parsed, &mut None, f)?;
        }
        self.dispatch(&mut None, f)
    }
}

fn line_too_long() -> ProviderError {
    ProviderError::malformed(format!("SSE line longer than {MAX_EVENT_BYTES} bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the parser yields, owned, in order; `None` stands for a comment.
    type Items = Vec<Option<(String, String)>>;

    fn parse(chunks: &[&[u8]]) -> Result<Items, ProviderError> {
        let mut p = SseParser::new();
        let mut items = Vec::new();
        let mut f = |item: SseItem<'_>| {
            items.push(match item {
                SseItem::Event(e) => Some((e.event.to_string(), e.data.to_string())),
                SseItem::Comment => None,
            });
            Ok(())
        };
        for c in chunks {
            p.push(c, &mut f)?;
        }
        p.finish(&mut f)?;
        Ok(items)
    }

    /// Parsed whole, at every split point and at every pair of split points: all must agree.
    fn parse_all_ways(bytes: &[u8]) -> Items {
        let whole = parse(&[bytes]).unwrap();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let parts = [&bytes[..i], &bytes[i..j], &bytes[j..]];
                assert_eq!(parse(&parts).unwrap(), whole, "split at {i} and {j}");
            }
        }
        whole
    }

    fn ev(event: &str, data: &str) -> Option<(String, String)> {
        Some((event.to_string(), data.to_string()))
    }

    #[test]
    fn several_data_lines_are_joined_whatever_the_line_ends() {
        for body in [
            "event: a\ndata: one\ndata:two\ndata\n\n",
            "event: a\r\ndata: one\r\ndata:two\r\ndata\r\n\r\n",
            "event: a\rdata: one\rdata:two\rdata\r\r",
        ] {
            assert_eq!(
                parse_all_ways(body.as_bytes()),
                [ev("a", "one\ntwo\n")],
                "{body:?}"
            );
        }
    }

    #[test]
    fn a_line_end_split_at_a_push_boundary_is_one_line_end() {
        // CR ends one push and its LF starts the next: one line end, so one event, not two.
        let two = parse(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]).unwrap();
        assert_eq!(two, [ev("message", "a\nb")]);
        // Empty pushes between the CR and the LF change nothing.
        let empty = parse(&[b"data: a\r", b"", b"", b"\n\r\n"]).unwrap();
        assert_eq!(empty, [ev("message", "a")]);
        // A CR at the end of a push and another line after it.
        let lone = parse(&[b"data: a\r", b"data: b\r", b"\r"]).unwrap();
        assert_eq!(lone, [ev("message", "a\nb")]);
    }

    #[test]
    fn fields_comments_and_defaults() {
        let body = b": keep-alive\n\
            id: 7\nretry: 1000\nevent: first\ndata: x\n\n\
            data: {\"no\": \"name\"}\n\n\
            event: dropped-without-data\n\n\
            data:\n\n\
            data:  two spaces\n\n\
            unknown: field\n\n\
            data: last, no blank line";
        assert_eq!(
            parse_all_ways(body),
            [
                None,
                ev("first", "x"),
                ev("message", "{\"no\": \"name\"}"),
                ev("message", ""),
                ev("message", " two spaces"),
                ev("message", "last, no blank line"),
            ]
        );
    }

    #[test]
    fn bom_at_the_start_only() {
        let bom = b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n";
        // The second BOM is part of a field name that is not `data`.
        assert_eq!(parse_all_ways(bom), [ev("message", "a")]);
        // A stream that is only part of a BOM is a broken line.
        let e = parse(&[b"\xEF", b"\xBB"]).unwrap_err();
        assert!(e.message.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn text_split_inside_a_character() {
        let body = "event: \u{e9}v\ndata: h\u{e9}\u{1f680}\ndata: \u{1f9ee}\n\n";
        assert_eq!(
            parse_all_ways(body.as_bytes()),
            [ev("\u{e9}v", "h\u{e9}\u{1f680}\n\u{1f9ee}")]
        );
        let e = parse(&[b"data: \xff\n\n"]).unwrap_err();
        assert!(e.message.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn caps_on_lines_and_events() {
        let long = vec![b'x'; MAX_EVENT_BYTES + 1];
        // A line too long, whole in one push or carried across pushes.
        for chunks in [
            &[&long[..], b"\n"][..],
            &[&long[..10], &long[10..], b"\n"][..],
            &[b"data: ", &long[..]][..],
        ] {
            let e = parse(chunks).unwrap_err();
            assert!(e.message.contains("SSE line longer"), "{e}");
        }
        // Lines under the cap whose data joined is over it.
        let half = vec![b'x'; MAX_EVENT_BYTES / 2];
        let body = [&b"data:"[..], &half, b"\ndata:", &half, b"\n\n"].concat();
        let e = parse(&[&body]).unwrap_err();
        assert!(e.message.contains("SSE event larger"), "{e}");
        // The same split where the first line is carried over from an earlier push.
        let e = parse(&[&body[..100], &body[100..]]).unwrap_err();
        assert!(e.message.contains("SSE event larger"), "{e}");
    }

    #[test]
    fn an_error_from_the_receiver_stops_the_parse() {
        let mut p = SseParser::new();
        let mut seen = 0;
        let r = p.push(b"data: a\n\ndata: b\n\n", &mut |_| {
            seen += 1;
            Err(ProviderError::malformed("no"))
        });
        assert!(r.is_err());
        assert_eq!(seen, 1);
    }
}
