//! Incremental server-sent-events parser (the WHATWG algorithm), fed arbitrary byte chunks.
//!
//! Lines may end in LF, CRLF or a lone CR, and a chunk boundary may fall anywhere, including
//! between the CR and LF of one line ending or inside a multi-byte character. The parser keeps
//! only the unfinished line between pushes and scans each byte once.

use super::error::ProviderError;

/// Cap on one line and on one event's data: no provider sends events this large, and a stream
/// that does is broken or hostile.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, or `message` when absent.
    pub event: String,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// What the parser yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A complete event.
    Event(SseEvent),
    /// A comment line (`: keep-alive`): the connection is alive.
    Comment,
}

/// The parser state.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous chunk ended in CR: a leading LF of the next chunk belongs to it.
    after_cr: bool,
    /// Still at the very start of the stream (a BOM may follow).
    started: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// A fresh parser.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes; complete events are appended to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<SseItem>) -> Result<(), ProviderError> {
        if !self.started && !chunk.is_empty() {
            // A BOM can only be recognised once three bytes are there; hold short prefixes.
            self.line.extend_from_slice(chunk);
            if self.line.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.line) {
                return Ok(());
            }
            self.started = true;
            let held = std::mem::take(&mut self.line);
            let rest = held.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&held);
            return self.scan(rest, out);
        }
        if self.after_cr {
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
            self.after_cr = false;
        }
        self.scan(chunk, out)
    }

    fn scan(&mut self, mut chunk: &[u8], out: &mut Vec<SseItem>) -> Result<(), ProviderError> {
        while let Some(pos) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (head, tail) = chunk.split_at(pos);
            self.grow(head)?;
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out)?;
            self.line = line;
            self.line.clear();
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

    fn grow(&mut self, bytes: &[u8]) -> Result<(), ProviderError> {
        if self.line.len() + bytes.len() > MAX_EVENT_BYTES {
            return Err(ProviderError::malformed(format!(
                "SSE line longer than {MAX_EVENT_BYTES} bytes"
            )));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseItem>) -> Result<(), ProviderError> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            out.push(SseItem::Comment);
            return Ok(());
        }
        let line = std::str::from_utf8(line)
            .map_err(|_| ProviderError::malformed("SSE line is not UTF-8"))?;
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT_BYTES {
                    return Err(ProviderError::malformed(format!(
                        "SSE event larger than {MAX_EVENT_BYTES} bytes"
                    )));
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // id, retry and unknown fields carry nothing we use.
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseItem>) {
        let event = self.event.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        out.push(SseItem::Event(SseEvent {
            event: event.unwrap_or_else(|| "message".to_string()),
            data: std::mem::take(&mut self.data),
        }));
    }

    /// The stream ended. An event whose data was read but whose blank line never came is
    /// dispatched: recorded Anthropic streams end that way, and the official SDK yields it.
    pub fn finish(&mut self, out: &mut Vec<SseItem>) -> Result<(), ProviderError> {
        if !self.started {
            self.started = true;
            let held = std::mem::take(&mut self.line);
            self.scan(&held, out)?;
        }
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out)?;
        }
        self.dispatch(out);
        Ok(())
    }
}
