//! From bytes to [`Delta`]s: the SSE parser plus one wire-format decoder.

use super::delta::Delta;
use super::error::ProviderError;
use super::sse::{SseEvent, SseItem, SseParser};

/// A provider's event vocabulary on top of SSE.
pub trait WireDecoder: Send {
    /// Handle one event.
    fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<Delta>) -> Result<(), ProviderError>;
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
    items: Vec<SseItem>,
}

impl<D: WireDecoder> StreamDecoder<D> {
    /// A decoder for one response body.
    pub fn new(wire: D) -> Self {
        StreamDecoder {
            sse: SseParser::new(),
            wire,
            items: Vec::new(),
        }
    }

    /// Feed a chunk of the body.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Delta>) -> Result<(), ProviderError> {
        if self.wire.is_done() {
            return Ok(());
        }
        let parsed = self.sse.push(chunk, &mut self.items);
        self.drain(out)?;
        parsed
    }

    /// The body ended. Fails with `truncated` unless the terminator was seen: a stream that
    /// stops early is a failure, never a silent success.
    pub fn finish(&mut self, out: &mut Vec<Delta>) -> Result<(), ProviderError> {
        if !self.wire.is_done() {
            self.sse.finish(&mut self.items)?;
            self.drain(out)?;
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

    fn drain(&mut self, out: &mut Vec<Delta>) -> Result<(), ProviderError> {
        for item in self.items.drain(..) {
            if self.wire.is_done() {
                break;
            }
            match item {
                SseItem::Comment => out.push(Delta::KeepAlive),
                SseItem::Event(ev) => self.wire.on_event(&ev, out)?,
            }
        }
        Ok(())
    }
}
