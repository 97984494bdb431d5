//! Pre-serialized frames: the SSE frame of a text delta is the same bytes for every token of
//! an answer but for the token itself (and, in the Responses API, a sequence number).
//!
//! Serializing the whole frame per token spent most of the front end's encoding time escaping
//! the same dozen keys and ids again (serde_json checks each string byte by byte). A template
//! is that frame serialized once, by the encoder's own serde types, with marker values in the
//! holes, and cut where the markers landed: a token then costs two copies and the escaping of
//! the token alone, by serde_json, so the bytes are exactly what the whole frame would have
//! been (the golden streams in `daemon/testdata/http-golden/` and the test below hold it).

use bytes::{BufMut, BytesMut};

/// The marker of a string hole, as serde_json writes it (quotes and escapes included). Control
/// characters, so no model name or id can contain it by accident; a template is refused
/// anyway unless each marker occurs exactly once.
pub const TEXT_MARKER: &str = "\u{1}mythos-text\u{1}";
const TEXT_MARKER_JSON: &[u8] = br#""\u0001mythos-text\u0001""#;

/// The marker of a number hole.
pub const NUMBER_MARKER: u64 = 18_446_744_073_709_551_557;
const NUMBER_MARKER_JSON: &[u8] = b"18446744073709551557";

/// What fills a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hole {
    /// A JSON string.
    Text,
    /// An unsigned integer.
    Number,
}

/// A frame cut around its holes.
#[derive(Debug, Clone)]
pub struct Template {
    /// Fixed bytes: one more than there are holes.
    parts: Vec<Box<[u8]>>,
    /// The hole after each part but the last.
    holes: Vec<Hole>,
}

impl Template {
    /// The template of `frame` (which writes one whole frame, with [`TEXT_MARKER`] and
    /// [`NUMBER_MARKER`] as the values of its holes), holes in the order given. `None` when a
    /// marker is missing, repeated or out of order: the caller then serializes every frame.
    pub fn new(holes: &[Hole], frame: impl FnOnce(&mut BytesMut)) -> Option<Template> {
        let mut whole = BytesMut::new();
        frame(&mut whole);
        let mut parts: Vec<Box<[u8]>> = Vec::with_capacity(holes.len() + 1);
        let mut rest: &[u8] = &whole;
        for hole in holes {
            let marker = match hole {
                Hole::Text => TEXT_MARKER_JSON,
                Hole::Number => NUMBER_MARKER_JSON,
            };
            let at = find(rest, marker)?;
            parts.push(rest[..at].into());
            rest = &rest[at + marker.len()..];
        }
        parts.push(rest.into());
        // A marker elsewhere (twice, or inside a fixed part) would make the cut ambiguous.
        let stray = parts
            .iter()
            .any(|p| find(p, TEXT_MARKER_JSON).is_some() || find(p, NUMBER_MARKER_JSON).is_some());
        (!stray).then(|| Template {
            parts,
            holes: holes.to_vec(),
        })
    }

    /// Write the frame with `texts` in its text holes and `numbers` in its number holes, each
    /// kind in order. A hole with nothing left for it gets an empty string or 0.
    pub fn write(&self, out: &mut BytesMut, texts: &[&str], numbers: &[u64]) {
        let (mut t, mut n) = (texts.iter(), numbers.iter());
        out.extend_from_slice(&self.parts[0]);
        for (hole, part) in self.holes.iter().zip(&self.parts[1..]) {
            // Into memory, a string or a number: serializing cannot fail.
            let _ = match hole {
                Hole::Text => serde_json::to_writer((&mut *out).writer(), t.next().unwrap_or(&"")),
                Hole::Number => serde_json::to_writer((&mut *out).writer(), n.next().unwrap_or(&0)),
            };
            out.extend_from_slice(part);
        }
    }
}

/// Where `needle` first occurs in `hay`. Frames are a few hundred bytes and the markers'
/// first bytes are rare in them: a `memchr` per candidate beats building a substring searcher.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = memchr::memchr(needle[0], &hay[from..]) {
        let at = from + at;
        if hay[at..].starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Frame<'a> {
        id: &'a str,
        seq: u64,
        text: &'a str,
        after: [u32; 2],
    }

    fn whole(id: &str, seq: u64, text: &str) -> BytesMut {
        let mut out = BytesMut::new();
        crate::http::relay::sse(
            &mut out,
            Some("delta"),
            &Frame {
                id,
                seq,
                text,
                after: [1, 2],
            },
        );
        out
    }

    /// Whatever the text (escapes, controls, quotes, non-ASCII, empty), the template writes
    /// the very bytes serde writes for the whole frame.
    #[test]
    fn a_template_writes_what_serde_writes() {
        let t = Template::new(&[Hole::Number, Hole::Text], |out| {
            out.extend_from_slice(&whole("msg_1 \"quoted\" é", NUMBER_MARKER, TEXT_MARKER))
        })
        .expect("a template");
        for (seq, text) in [
            (0, ""),
            (7, " plain words"),
            (u64::MAX, "quote \" backslash \\ slash /"),
            (42, "controls \u{0}\u{1f}\n\t\r and DEL \u{7f}"),
            (3, "naïve 日本語 🎉 \u{2028}"),
            (9, "\u{1}mythos-text\u{1}"),
        ] {
            let mut out = BytesMut::new();
            t.write(&mut out, &[text], &[seq]);
            assert_eq!(out, whole("msg_1 \"quoted\" é", seq, text), "{text:?}");
        }
    }

    /// A marker that is missing, twice there, or out of order gives no template.
    #[test]
    fn ambiguous_markers_give_no_template() {
        let twice = |out: &mut BytesMut| {
            out.extend_from_slice(&whole(TEXT_MARKER, NUMBER_MARKER, TEXT_MARKER))
        };
        assert!(Template::new(&[Hole::Number, Hole::Text], twice).is_none());
        let none = |out: &mut BytesMut| out.extend_from_slice(&whole("id", 1, "text"));
        assert!(Template::new(&[Hole::Text], none).is_none());
        let order =
            |out: &mut BytesMut| out.extend_from_slice(&whole("id", NUMBER_MARKER, TEXT_MARKER));
        assert!(Template::new(&[Hole::Text, Hole::Number], order).is_none());
    }
}
