//! Length-delimited frames with a serde encoding on top.
//!
//! [`FrameCodec`] is a tokio-util codec: use it with `Framed` on any async byte stream. It checks
//! the length prefix against its cap before buffering the body, so a hostile or corrupt prefix
//! costs nothing. bincode is confined to this file so that it can be swapped without touching
//! the message types.

use std::any::Any;
use std::io;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::{Encoding, Response, StreamEvent};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// A length prefix exceeded the cap.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The payload did not decode as the expected message.
    #[error("malformed {encoding:?} frame: {message}")]
    Decode {
        /// Encoding in use.
        encoding: Encoding,
        /// Decoder's explanation.
        message: String,
    },
    /// A message could not be encoded (a bug, or a message over the cap).
    #[error("cannot encode frame: {0}")]
    Encode(String),
}

/// Frames carrying `In` messages one way and `Out` messages the other.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    frames: LengthDelimitedCodec,
    encoding: Encoding,
    max: usize,
    /// The inner codec has consumed a length prefix and waits for the body; the next bytes
    /// are payload, not a prefix to check.
    in_body: bool,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    /// A codec for `encoding` with frames of at most `max` bytes.
    pub fn new(encoding: Encoding, max: usize) -> Self {
        FrameCodec {
            frames: LengthDelimitedCodec::builder()
                .big_endian()
                .length_field_type::<u32>()
                .max_frame_length(max)
                .new_codec(),
            encoding,
            max,
            in_body: false,
            _types: PhantomData,
        }
    }

    /// The encoding in use.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Decode a bincode payload with a limit on what its lengths may claim.
///
/// bincode allocates a string or byte vector as soon as it reads its length, before reading the
/// bytes: a 14-byte frame claiming a 32 TiB string aborted the daemon. With a limit, every length
/// is checked against it first. The limit is a type-level constant in bincode, so it comes in
/// tiers: the smallest one at least 16 times the payload (decoded values take more memory than
/// their varint wire form, never 16 times more in this protocol). Nothing inside a payload can
/// thus claim much more than the payload itself.
fn bincode_decode<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    use bincode::serde::decode_from_slice;
    let c = bincode_config();
    let need = bytes.len().saturating_mul(16).saturating_add(1024);
    if need <= 4 << 10 {
        decode_from_slice(bytes, c.with_limit::<{ 4 << 10 }>())
    } else if need <= 64 << 10 {
        decode_from_slice(bytes, c.with_limit::<{ 64 << 10 }>())
    } else if need <= 1 << 20 {
        decode_from_slice(bytes, c.with_limit::<{ 1 << 20 }>())
    } else if need <= 16 << 20 {
        decode_from_slice(bytes, c.with_limit::<{ 16 << 20 }>())
    } else {
        // Frames are capped at MAX_FRAME_LEN (16 MiB): at most 256 MiB, only for a frame that
        // really is that large.
        decode_from_slice(bytes, c.with_limit::<{ 256 << 20 }>())
    }
}

/// Encode one message to a frame payload (without the length prefix).
pub fn encode_payload<T: Serialize + 'static>(
    encoding: Encoding,
    msg: &T,
) -> Result<Vec<u8>, CodecError> {
    let mut out = BytesMut::new();
    encode_into(encoding, msg, &mut out)?;
    Ok(out.to_vec())
}

/// Append one message's payload to `dst`: frames are encoded where they are sent from, with no
/// intermediate buffer to allocate, grow, copy and free per message (one per streamed token).
fn encode_into<T: Serialize + 'static>(
    encoding: Encoding,
    msg: &T,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let err = |e: &dyn std::fmt::Display| CodecError::Encode(e.to_string());
    match encoding {
        Encoding::Json => serde_json::to_writer(dst.writer(), msg).map_err(|e| err(&e)),
        Encoding::Bincode => {
            if let Some(r) = (msg as &dyn Any).downcast_ref::<Response>() {
                if encode_delta_bincode(r, dst) {
                    return Ok(());
                }
            }
            bincode::serde::encode_into_writer(msg, BytesWriter(dst), bincode_config())
                .map_err(|e| err(&e))
        }
    }
}

/// A text or thinking delta's bincode payload, written without serde: nearly every frame of a
/// stream is one, and the generic path (serde's visitor calls, a varint function per integer)
/// costs several times the copy of the text. The bytes are bincode's own (standard
/// configuration: variant indices and lengths as varints), as the tests check against serde
/// for every varint width. False for any other message.
fn encode_delta_bincode(msg: &Response, dst: &mut BytesMut) -> bool {
    // Variant indices, in declaration order (`Response::Event` is the first variant,
    // `StreamEvent::Started` the first of its own).
    const EVENT: u8 = 0;
    const TEXT_DELTA: u8 = 1;
    const THINKING_DELTA: u8 = 2;
    let (id, tag, text) = match msg {
        Response::Event {
            id,
            event: StreamEvent::TextDelta { text },
        } => (*id, TEXT_DELTA, text),
        Response::Event {
            id,
            event: StreamEvent::ThinkingDelta { text },
        } => (*id, THINKING_DELTA, text),
        _ => return false,
    };
    dst.reserve(2 + 2 * 9 + text.len());
    dst.put_u8(EVENT);
    put_varint(dst, id);
    dst.put_u8(tag);
    put_varint(dst, text.len() as u64);
    dst.extend_from_slice(text.as_bytes());
    true
}

/// bincode's unsigned varint: one byte below 251, else a marker and the value in 2, 4 or 8
/// little-endian bytes.
fn put_varint(dst: &mut BytesMut, n: u64) {
    if n < 251 {
        dst.put_u8(n as u8);
    } else if n <= u16::MAX as u64 {
        dst.put_u8(251);
        dst.put_u16_le(n as u16);
    } else if n <= u32::MAX as u64 {
        dst.put_u8(252);
        dst.put_u32_le(n as u32);
    } else {
        dst.put_u8(253);
        dst.put_u64_le(n);
    }
}

/// bincode's output straight into the frame buffer.
struct BytesWriter<'a>(&'a mut BytesMut);

impl bincode::enc::write::Writer for BytesWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Decode one frame payload (without the length prefix).
pub fn decode_payload<T: DeserializeOwned>(
    encoding: Encoding,
    bytes: &[u8],
) -> Result<T, CodecError> {
    let err = |message: String| CodecError::Decode { encoding, message };
    // Its strings are bounded by the payload; its sequences' items by the budget.
    crate::budget::within(|| match encoding {
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| err(e.to_string())),
        Encoding::Bincode => {
            let (msg, used) = bincode_decode(bytes).map_err(|e| err(e.to_string()))?;
            if used != bytes.len() {
                return Err(err(format!("{} trailing bytes", bytes.len() - used)));
            }
            Ok(msg)
        }
    })
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        // Look at the prefix ourselves so an oversized frame is a typed error, not io::Error.
        let has_prefix = !self.in_body && src.len() >= 4;
        if has_prefix {
            let len = (&src[..4]).get_u32() as usize;
            if len > self.max {
                return Err(CodecError::FrameTooLarge { len, max: self.max });
            }
        }
        match self.frames.decode(src)? {
            Some(frame) => {
                self.in_body = false;
                decode_payload(self.encoding, &frame).map(Some)
            }
            None => {
                // With a whole prefix available the inner codec consumed it.
                self.in_body |= has_prefix;
                Ok(None)
            }
        }
    }
}

impl<In, Out: Serialize + 'static> Encoder<Out> for FrameCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, msg: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        // The prefix is written first and filled in once the payload's length is known; a
        // message that fails or is over the cap leaves `dst` as it was.
        let start = dst.len();
        dst.put_u32(0);
        let len = match encode_into(self.encoding, &msg, dst) {
            Ok(()) => dst.len() - start - 4,
            Err(e) => {
                dst.truncate(start);
                return Err(e);
            }
        };
        if len > self.max {
            dst.truncate(start);
            return Err(CodecError::FrameTooLarge { len, max: self.max });
        }
        dst[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn frame<T: Serialize + 'static>(enc: Encoding, msg: T) -> Vec<u8> {
        let mut codec = FrameCodec::<T, T>::new(enc, MAX_FRAME_LEN);
        let mut buf = BytesMut::new();
        // The Decoder bound is irrelevant for encoding; use Out = T.
        Encoder::<T>::encode(&mut codec, msg, &mut buf).unwrap();
        buf.to_vec()
    }

    #[test]
    fn golden_bincode_frames() {
        // Recorded bytes. If these change, old clients break: bump PROTOCOL_VERSION instead.
        assert_eq!(frame(Encoding::Bincode, Request::Status), [0, 0, 0, 1, 2]);
        assert_eq!(
            frame(Encoding::Bincode, Request::Cancel { id: 300 }),
            [0, 0, 0, 4, 1, 251, 44, 1]
        );
        let ev = Response::Event {
            id: 7,
            event: StreamEvent::TextDelta { text: "hi".into() },
        };
        assert_eq!(
            frame(Encoding::Bincode, ev),
            [0, 0, 0, 6, 0, 7, 1, 2, b'h', b'i']
        );
    }

    /// The hand-written delta frames are bincode's own bytes: at every varint width of the id
    /// and of the text's length, for both kinds of delta, and they decode back.
    #[test]
    fn delta_frames_without_serde_are_bincodes_bytes() {
        let ids = [
            0,
            1,
            250,
            251,
            65_535,
            65_536,
            u32::MAX as u64,
            1 << 32,
            u64::MAX,
        ];
        let lens = [0, 1, 250, 251, 65_535, 65_536, 70_000];
        for id in ids {
            // Lengths in bytes (ASCII), and the same counts of characters of 1 to 3 bytes.
            let texts = lens.iter().flat_map(|&len| {
                [
                    "x".repeat(len),
                    "é€x".chars().cycle().take(len).collect::<String>(),
                ]
            });
            for text in texts {
                let len = text.len();
                for event in [
                    StreamEvent::TextDelta {
                        text: text.as_str().into(),
                    },
                    StreamEvent::ThinkingDelta {
                        text: text.as_str().into(),
                    },
                ] {
                    let msg = Response::Event { id, event };
                    let mut fast = BytesMut::new();
                    assert!(encode_delta_bincode(&msg, &mut fast));
                    let mut slow = BytesMut::new();
                    bincode::serde::encode_into_writer(
                        &msg,
                        BytesWriter(&mut slow),
                        bincode_config(),
                    )
                    .unwrap();
                    assert_eq!(fast, slow, "id {id}, {len} bytes");
                    let back: Response = decode_payload(Encoding::Bincode, &fast).unwrap();
                    assert_eq!(back, msg);
                }
            }
        }
        // Anything else takes serde's path.
        let other = Response::Event {
            id: 1,
            event: StreamEvent::Usage(Usage::default()),
        };
        assert!(!encode_delta_bincode(&other, &mut BytesMut::new()));
        assert!(!encode_delta_bincode(&Response::Ok, &mut BytesMut::new()));
    }

    #[test]
    fn golden_done_event() {
        // `done` carries a DoneInfo struct; its bytes are those of the struct variant it was in
        // protocol 1 (variant index, then the fields in order), in both encodings; protocol 3 added the
        // two cache counts to `usage`, protocol 7 its web searches.
        let ev = Response::Event {
            id: 1,
            event: StreamEvent::Done(Box::new(DoneInfo {
                finish: FinishReason::Stop,
                usage: Usage {
                    input_tokens: 2,
                    output_tokens: 3,
                    ..Usage::default()
                },
                cost_usd: 0.0,
                latency_ms: 4,
                provider: "p".into(),
                model: "m".into(),
                record: 5,
            })),
        };
        let json = frame(Encoding::Json, ev.clone());
        assert_eq!(
            std::str::from_utf8(&json[4..]).unwrap(),
            r#"{"event":{"id":1,"event":{"done":{"finish":"stop","usage":{"input_tokens":2,"output_tokens":3,"cache_read_input_tokens":0,"cache_creation_input_tokens":0,"web_searches":0},"cost_usd":0.0,"latency_ms":4,"provider":"p","model":"m","record":5}}}}"#
        );
        assert_eq!(
            frame(Encoding::Bincode, ev),
            [
                0, 0, 0, 23, 0, 1, 7, 0, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, b'p', 1,
                b'm', 5
            ]
        );
    }

    #[test]
    fn golden_json_frames() {
        let chat = Request::Chat(ChatRequest::user_text(1, "hi"));
        let bytes = frame(Encoding::Json, chat);
        let text = std::str::from_utf8(&bytes[4..]).unwrap();
        assert_eq!(
            text,
            r#"{"chat":{"id":1,"messages":[{"role":"user","content":[{"text":{"text":"hi"}}]}],"system":null,"task":"chat","pin":null,"max_tokens":null,"temperature":null,"tools":[],"options":{"system_blocks":[],"stop":[],"top_p":null,"tool_choice":null,"parallel_tool_calls":null,"thinking":null,"user":null,"cache_points":[],"up_to_model_limit":false,"response_format":null,"anthropic_beta":[],"context_management":null,"server_tools":[],"cache_automatically":false,"reasoning_effort":null,"native":[]}}}"#
        );
        // Editor clients may leave optional fields out.
        let short: Request = decode_payload(
            Encoding::Json,
            br#"{"chat":{"id":1,"messages":[{"role":"user","content":[{"text":{"text":"hi"}}]}]}}"#,
        )
        .unwrap();
        assert_eq!(short, Request::Chat(ChatRequest::user_text(1, "hi")));
    }

    #[test]
    fn round_trip_both_encodings() {
        let mut req = ChatRequest::user_text(9, "write a test");
        req.task = TaskKind::Code;
        req.pin = Some(Pin {
            provider: Some("deepseek".into()),
            model: None,
        });
        req.temperature = Some(0.2);
        req.messages.push(Message {
            role: Role::Assistant,
            content: vec![ContentBlock::ToolUse {
                id: "t1".into(),
                name: "read".into(),
                input_json: "{\"path\":\"a\"}".into(),
            }],
        });
        for enc in [Encoding::Bincode, Encoding::Json] {
            let mut codec = FrameCodec::<Request, Request>::new(enc, MAX_FRAME_LEN);
            let mut buf = BytesMut::new();
            codec.encode(Request::Chat(req.clone()), &mut buf).unwrap();
            // Byte by byte: a partial frame is never an error.
            let mut feed = BytesMut::new();
            let mut out = None;
            for b in buf.iter() {
                feed.put_u8(*b);
                if let Some(m) = codec.decode(&mut feed).unwrap() {
                    out = Some(m);
                }
            }
            assert_eq!(out, Some(Request::Chat(req.clone())));
        }
    }

    #[test]
    fn oversized_prefix_rejected_before_allocation() {
        let mut codec = FrameCodec::<Request, Request>::new(Encoding::Bincode, 1024);
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        match codec.decode(&mut buf) {
            Err(CodecError::FrameTooLarge { len, max: 1024 }) => assert_eq!(len, 0x4745_5420),
            other => panic!("{other:?}"),
        }
        assert!(buf.capacity() < 4096);
    }

    #[test]
    fn a_message_over_the_cap_is_refused_and_leaves_the_buffer_as_it_was() {
        for enc in [Encoding::Bincode, Encoding::Json] {
            let mut codec = FrameCodec::<Request, Response>::new(enc, 64);
            let mut buf = BytesMut::new();
            let text = |t: String| Response::Event {
                id: 7,
                event: StreamEvent::TextDelta { text: t.into() },
            };
            let small = text("ok".into());
            codec.encode(small.clone(), &mut buf).unwrap();
            let before = buf.clone();
            let big = text("x".repeat(100));
            match codec.encode(big, &mut buf) {
                Err(CodecError::FrameTooLarge { max: 64, len }) => assert!(len > 100, "{len}"),
                other => panic!("{other:?}"),
            }
            assert_eq!(buf, before, "{enc:?}");
            // Frames before and after the refused one still decode.
            codec.encode(small.clone(), &mut buf).unwrap();
            let mut dec = FrameCodec::<Response, Request>::new(enc, 64);
            assert_eq!(dec.decode(&mut buf).unwrap(), Some(small.clone()));
            assert_eq!(dec.decode(&mut buf).unwrap(), Some(small));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn garbage_payload_is_a_typed_error() {
        let mut codec = FrameCodec::<Request, Request>::new(Encoding::Bincode, 1024);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 200, 1, 2][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::Decode { .. })
        ));
        let mut codec = FrameCodec::<Request, Request>::new(Encoding::Json, 1024);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 2, b'{', b'x'][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::Decode { .. })
        ));
    }
}
