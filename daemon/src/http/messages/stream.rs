//! Stream events → the Messages API's SSE stream, byte-compatible with what the official SDKs
//! accumulate: one `message_start`, dense block indices, `ping` after the first block opens,
//! block start / delta / stop, `message_delta` with cumulative usage, `message_stop`; every
//! frame with its `event:` line.

use bytes::BytesMut;
use mythos_protocol::{RerouteMode, StreamEvent, Usage};
use serde::Serialize;

use crate::http::errors::{anthropic_type, status_of};
use crate::http::relay::{
    anthropic_stop, anthropic_usage, refusal_finish, sse, stop_sequence, AnthropicUsage,
    EmptyObject, Encoder, Head, EMPTY_ARRAY,
};
use crate::http::template::{Hole, Template, TEXT_MARKER};

/// One frame of the stream. Its `type` is also the frame's `event:` name; the fields are in
/// the order the API sends them.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Frame<'a> {
    MessageStart {
        message: MessageShell<'a>,
    },
    ContentBlockStart {
        index: u32,
        content_block: BlockStart<'a>,
    },
    /// A server tool's block, as Anthropic made it.
    #[serde(rename = "content_block_start")]
    ServerBlockStart {
        index: u32,
        content_block: &'a serde_json::Value,
    },
    Ping,
    ContentBlockDelta {
        index: u32,
        delta: Delta<'a>,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: StopDelta<'a>,
        usage: AnthropicUsage,
    },
    MessageStop,
    Error {
        error: ErrorBody<'a>,
    },
}

impl Frame<'_> {
    fn name(&self) -> &'static str {
        match self {
            Frame::MessageStart { .. } => "message_start",
            Frame::ContentBlockStart { .. } | Frame::ServerBlockStart { .. } => {
                "content_block_start"
            }
            Frame::Ping => "ping",
            Frame::ContentBlockDelta { .. } => "content_block_delta",
            Frame::ContentBlockStop { .. } => "content_block_stop",
            Frame::MessageDelta { .. } => "message_delta",
            Frame::MessageStop => "message_stop",
            Frame::Error { .. } => "error",
        }
    }

    fn write(&self, out: &mut BytesMut) {
        sse(out, Some(self.name()), self);
    }
}

/// `message_start`'s message: empty, with the estimated prompt size.
#[derive(Serialize)]
struct MessageShell<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    ty: &'static str,
    role: &'static str,
    model: &'a str,
    content: [(); 0],
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'static str>,
    usage: AnthropicUsage,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockStart<'a> {
    Text {
        text: &'static str,
    },
    Thinking {
        thinking: &'static str,
        signature: &'static str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: EmptyObject,
    },
    RedactedThinking {
        data: &'a str,
    },
}

/// A block delta; its `type` is the variant's name with `_delta`.
#[derive(Serialize)]
#[serde(tag = "type")]
enum Delta<'a> {
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
    #[serde(rename = "citations_delta")]
    Citations {
        citation: &'a serde_json::value::RawValue,
    },
}

#[derive(Serialize)]
struct StopDelta<'a> {
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    message: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Open {
    Thinking,
    Text,
}

/// The encoder of one response.
pub struct MessagesEncoder {
    open: Option<(u32, Open)>,
    next_index: u32,
    pinged: bool,
    /// Text or a tool call went out: a restart can no longer be hidden.
    visible: bool,
    tools: bool,
    /// The model refused in words (OpenAI's `refusal`): they go out as text, and the answer
    /// ends with `stop_reason: "refusal"`, the Messages API's own way to say it.
    refused: bool,
    /// Tool calls being gathered: each goes out whole, as one block.
    pending: Vec<(u32, String, String, String)>,
    usage: Usage,
    /// The request asked for thinking: only then are thinking blocks sent (the API never
    /// sends them unasked, and clients read `content[0].text`).
    thinking: bool,
    /// The text delta frame of the open text block, and the thinking delta frame of the open
    /// thinking block, serialized once per block (see `template`).
    text_frame: Option<(u32, Option<Template>)>,
    thinking_frame: Option<(u32, Option<Template>)>,
}

impl MessagesEncoder {
    /// The encoder and the opening `message_start` frame. `input_estimate` stands in for the
    /// prompt's token count until the provider's own count arrives with `message_delta`.
    pub fn start(head: &Head, input_estimate: u64, thinking: bool) -> (Self, BytesMut) {
        let mut out = BytesMut::new();
        Frame::MessageStart {
            message: MessageShell {
                id: &format!("msg_mythos_{}", head.record),
                ty: "message",
                role: "assistant",
                model: &head.model,
                content: EMPTY_ARRAY,
                stop_reason: None,
                stop_sequence: None,
                usage: anthropic_usage(&Usage {
                    input_tokens: input_estimate,
                    output_tokens: 1,
                    cache_read_input_tokens: 0,
                    cache_creation_input_tokens: 0,
                    web_searches: 0,
                }),
            },
        }
        .write(&mut out);
        (
            MessagesEncoder {
                open: None,
                next_index: 0,
                pinged: false,
                visible: false,
                tools: false,
                refused: false,
                pending: Vec::new(),
                usage: Usage::default(),
                thinking,
                text_frame: None,
                thinking_frame: None,
            },
            out,
        )
    }

    fn close(&mut self, out: &mut BytesMut) {
        if let Some((index, _)) = self.open.take() {
            Frame::ContentBlockStop { index }.write(out);
        }
    }

    fn open_block(&mut self, out: &mut BytesMut, block: BlockStart<'_>) -> u32 {
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        Frame::ContentBlockStart {
            index,
            content_block: block,
        }
        .write(out);
        if !self.pinged {
            self.pinged = true;
            Frame::Ping.write(out);
        }
        index
    }

    fn ensure(&mut self, out: &mut BytesMut, kind: Open) -> u32 {
        match self.open {
            Some((index, k)) if k == kind => index,
            _ => {
                let block = match kind {
                    Open::Text => BlockStart::Text { text: "" },
                    Open::Thinking => BlockStart::Thinking {
                        thinking: "",
                        signature: "",
                    },
                };
                let index = self.open_block(out, block);
                self.open = Some((index, kind));
                index
            }
        }
    }

    /// The template of block `index`'s delta frame, made when the block is new to `slot`
    /// (once per block: a block whose template cannot be made is encoded without one).
    fn template(
        slot: &mut Option<(u32, Option<Template>)>,
        index: u32,
        delta: impl FnOnce(&'static str) -> Delta<'static>,
    ) -> Option<&Template> {
        if slot.as_ref().is_none_or(|(i, _)| *i != index) {
            let delta = delta(TEXT_MARKER);
            let made = Template::new(&[Hole::Text], |out| Self::delta(out, index, delta));
            *slot = Some((index, made));
        }
        slot.as_ref().and_then(|(_, t)| t.as_ref())
    }

    fn delta(out: &mut BytesMut, index: u32, delta: Delta<'_>) {
        Frame::ContentBlockDelta { index, delta }.write(out);
    }

    fn flush_tools(&mut self, out: &mut BytesMut) {
        for (_, id, name, args) in std::mem::take(&mut self.pending) {
            self.visible = true;
            self.tools = true;
            let index = self.open_block(
                out,
                BlockStart::ToolUse {
                    id: &id,
                    name: &name,
                    input: EmptyObject,
                },
            );
            if !args.is_empty() {
                Self::delta(
                    out,
                    index,
                    Delta::InputJson {
                        partial_json: &args,
                    },
                );
            }
            Frame::ContentBlockStop { index }.write(out);
        }
    }

    /// A server tool's block as Anthropic streams it: a `server_tool_use` opens with an empty
    /// `input` that one `input_json_delta` fills (the SDKs gather it so); a result comes whole
    /// in its start.
    fn server_block(&mut self, out: &mut BytesMut, json: &str) {
        let Ok(mut block) = serde_json::from_str::<serde_json::Value>(json) else {
            tracing::warn!("a server tool block that is not JSON was dropped");
            return;
        };
        self.close(out);
        self.visible = true;
        let is_call = block.get("type").and_then(|t| t.as_str()) == Some("server_tool_use");
        let input = block
            .get_mut("input")
            .filter(|_| is_call)
            .map(|input| std::mem::replace(input, serde_json::json!({})));
        let index = self.next_index;
        self.next_index += 1;
        Frame::ServerBlockStart {
            index,
            content_block: &block,
        }
        .write(out);
        if !self.pinged {
            self.pinged = true;
            Frame::Ping.write(out);
        }
        if let Some(input) = input {
            Self::delta(
                out,
                index,
                Delta::InputJson {
                    partial_json: &input.to_string(),
                },
            );
        }
        Frame::ContentBlockStop { index }.write(out);
    }

    fn error(&mut self, out: &mut BytesMut, ty: &str, message: &str) {
        Frame::Error {
            error: ErrorBody { ty, message },
        }
        .write(out);
    }
}

impl Encoder for MessagesEncoder {
    fn event(&mut self, ev: StreamEvent, out: &mut BytesMut) -> bool {
        if !matches!(
            ev,
            StreamEvent::ToolCallStart { .. }
                | StreamEvent::ToolCallDelta { .. }
                | StreamEvent::Usage(_)
        ) {
            self.flush_tools(out);
        }
        let ev = match ev {
            StreamEvent::RefusalDelta { text } => {
                self.refused = true;
                StreamEvent::TextDelta { text }
            }
            ev => ev,
        };
        match ev {
            StreamEvent::TextDelta { text } => {
                if !text.is_empty() {
                    self.visible = true;
                    let index = self.ensure(out, Open::Text);
                    let frame = Self::template(&mut self.text_frame, index, |marker| Delta::Text {
                        text: marker,
                    });
                    match frame {
                        Some(t) => t.write(out, &[&text], &[]),
                        None => Self::delta(out, index, Delta::Text { text: &text }),
                    }
                }
            }
            StreamEvent::ThinkingDelta { .. }
            | StreamEvent::ThinkingSignature { .. }
            | StreamEvent::RedactedThinking { .. }
                if !self.thinking => {}
            StreamEvent::RedactedThinking { data } => {
                // Whole in its start event, as Anthropic sends it.
                let index = self.open_block(out, BlockStart::RedactedThinking { data: &data });
                Frame::ContentBlockStop { index }.write(out);
            }
            StreamEvent::ThinkingDelta { text } => {
                let index = self.ensure(out, Open::Thinking);
                let frame = Self::template(&mut self.thinking_frame, index, |marker| {
                    Delta::Thinking { thinking: marker }
                });
                match frame {
                    Some(t) => t.write(out, &[&text], &[]),
                    None => Self::delta(out, index, Delta::Thinking { thinking: &text }),
                }
            }
            StreamEvent::ThinkingSignature { signature } => {
                let index = self.ensure(out, Open::Thinking);
                Self::delta(
                    out,
                    index,
                    Delta::Signature {
                        signature: &signature,
                    },
                );
                // A signature ends its thinking block.
                self.close(out);
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.pending.push((index, id, name, String::new()));
            }
            StreamEvent::ToolCallDelta { index, json } => {
                if let Some(p) = self.pending.iter_mut().rev().find(|p| p.0 == index) {
                    p.3.push_str(&json);
                }
            }
            StreamEvent::Usage(u) => self.usage = u,
            StreamEvent::Rerouted {
                mode: RerouteMode::Restart,
                from,
                to,
                reason,
                ..
            } => {
                if self.visible {
                    // Text already delivered cannot be taken back, and the new provider starts
                    // over: end with an error the SDK raises rather than a garbled answer.
                    self.error(
                        out,
                        "api_error",
                        &crate::http::relay::restart_message(&from, &to, &reason),
                    );
                    return true;
                }
                // Only thinking went out: close it, the new attempt thinks afresh.
                self.close(out);
            }
            StreamEvent::Rerouted { .. } | StreamEvent::Queued { .. } => Frame::Ping.write(out),
            StreamEvent::Done(done) => {
                self.close(out);
                let finish = refusal_finish(&done.finish, self.refused);
                Frame::MessageDelta {
                    delta: StopDelta {
                        stop_reason: anthropic_stop(finish, self.tools),
                        stop_sequence: stop_sequence(&done.finish).filter(|_| !self.tools),
                    },
                    usage: anthropic_usage(&done.usage),
                }
                .write(out);
                Frame::MessageStop.write(out);
                return true;
            }
            StreamEvent::Error { kind, message, .. } => {
                let ty = anthropic_type(kind, status_of(kind));
                self.error(out, ty, &message);
                return true;
            }
            StreamEvent::ServerBlock { json } => self.server_block(out, &json),
            // In the text block it sources, as Anthropic sends it (before the text).
            StreamEvent::Citation { json } => {
                if let Ok(citation) = serde_json::from_str::<&serde_json::value::RawValue>(&json) {
                    self.visible = true;
                    let index = self.ensure(out, Open::Text);
                    Self::delta(out, index, Delta::Citations { citation });
                }
            }
            StreamEvent::Started { .. } | StreamEvent::RefusalDelta { .. } => {}
        }
        false
    }

    fn keepalive(&mut self, out: &mut BytesMut) {
        Frame::Ping.write(out);
    }

    fn vanished(&mut self, out: &mut BytesMut) {
        self.error(
            out,
            "api_error",
            "mythosd lost this request (a bug: see the daemon log)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer ended by one of the client's stop sequences says which, as Anthropic does;
    /// any other end says `null`.
    #[test]
    fn the_stop_sequence_is_named() {
        let done = |finish| {
            StreamEvent::Done(Box::new(mythos_protocol::DoneInfo {
                finish,
                usage: mythos_protocol::Usage::default(),
                cost_usd: 0.0,
                latency_ms: 1,
                provider: "p".into(),
                model: "m".into(),
                record: 1,
            }))
        };
        for (finish, want) in [
            (
                mythos_protocol::FinishReason::StopSequence("END".into()),
                r#""stop_reason":"stop_sequence","stop_sequence":"END""#,
            ),
            (
                mythos_protocol::FinishReason::Stop,
                r#""stop_reason":"end_turn","stop_sequence":null"#,
            ),
        ] {
            let (mut enc, _) = MessagesEncoder::start(&Head::for_test(), 10, false);
            let mut out = BytesMut::new();
            enc.event(done(finish), &mut out);
            let text = String::from_utf8(out.to_vec()).unwrap();
            assert!(text.contains(want), "{text}");
        }
    }

    /// Text deltas are written from a template, made once per block (the golden streams
    /// check the bytes are the same either way).
    #[test]
    fn text_deltas_go_through_a_template() {
        let (mut enc, _) = MessagesEncoder::start(&Head::for_test(), 10, true);
        let mut out = BytesMut::new();
        enc.event(StreamEvent::ThinkingDelta { text: "hm".into() }, &mut out);
        assert!(enc
            .thinking_frame
            .as_ref()
            .is_some_and(|(i, t)| *i == 0 && t.is_some()));
        enc.event(StreamEvent::TextDelta { text: "a".into() }, &mut out);
        assert!(enc
            .text_frame
            .as_ref()
            .is_some_and(|(i, t)| *i == 1 && t.is_some()));
    }
}
