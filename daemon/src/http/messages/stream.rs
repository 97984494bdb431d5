//! Stream events → the Messages API's SSE stream, byte-compatible with what the official SDKs
//! accumulate: one `message_start`, dense block indices, `ping` after the first block opens,
//! block start / delta / stop, `message_delta` with cumulative usage, `message_stop`; every
//! frame with its `event:` line.

use bytes::BytesMut;
use mythos_protocol::{RerouteMode, StreamEvent, Usage};
use serde_json::json;

use crate::http::errors::{anthropic_type, status_of};
use crate::http::relay::{anthropic_stop, anthropic_usage, sse, Encoder, Head};

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
    /// Tool calls being gathered: each goes out whole, as one block.
    pending: Vec<(u32, String, String, String)>,
    usage: Usage,
    /// The request asked for thinking: only then are thinking blocks sent (the API never
    /// sends them unasked, and clients read `content[0].text`).
    thinking: bool,
}

impl MessagesEncoder {
    /// The encoder and the opening `message_start` frame. `input_estimate` stands in for the
    /// prompt's token count until the provider's own count arrives with `message_delta`.
    pub fn start(head: &Head, input_estimate: u64, thinking: bool) -> (Self, BytesMut) {
        let mut out = BytesMut::new();
        sse(
            &mut out,
            Some("message_start"),
            &json!({"type": "message_start", "message": {
                "id": format!("msg_mythos_{}", head.record),
                "type": "message",
                "role": "assistant",
                "model": head.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": input_estimate, "output_tokens": 1,
                          "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
            }}),
        );
        (
            MessagesEncoder {
                open: None,
                next_index: 0,
                pinged: false,
                visible: false,
                tools: false,
                pending: Vec::new(),
                usage: Usage::default(),
                thinking,
            },
            out,
        )
    }

    fn close(&mut self, out: &mut BytesMut) {
        if let Some((index, _)) = self.open.take() {
            sse(
                out,
                Some("content_block_stop"),
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn open_block(&mut self, out: &mut BytesMut, block: serde_json::Value) -> u32 {
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        sse(
            out,
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        if !self.pinged {
            self.pinged = true;
            sse(out, Some("ping"), &json!({"type": "ping"}));
        }
        index
    }

    fn ensure(&mut self, out: &mut BytesMut, kind: Open) -> u32 {
        match self.open {
            Some((index, k)) if k == kind => index,
            _ => {
                let block = match kind {
                    Open::Text => json!({"type": "text", "text": ""}),
                    Open::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
                };
                let index = self.open_block(out, block);
                self.open = Some((index, kind));
                index
            }
        }
    }

    fn delta(out: &mut BytesMut, index: u32, delta: serde_json::Value) {
        sse(
            out,
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }

    fn flush_tools(&mut self, out: &mut BytesMut) {
        for (_, id, name, args) in std::mem::take(&mut self.pending) {
            self.visible = true;
            self.tools = true;
            let index = self.open_block(
                out,
                json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
            );
            if !args.is_empty() {
                Self::delta(
                    out,
                    index,
                    json!({"type": "input_json_delta", "partial_json": args}),
                );
            }
            sse(
                out,
                Some("content_block_stop"),
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn error(&mut self, out: &mut BytesMut, ty: &str, message: &str) {
        sse(
            out,
            Some("error"),
            &json!({"type": "error", "error": {"type": ty, "message": message}}),
        );
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
        match ev {
            StreamEvent::TextDelta { text } => {
                if !text.is_empty() {
                    self.visible = true;
                    let index = self.ensure(out, Open::Text);
                    Self::delta(out, index, json!({"type": "text_delta", "text": text}));
                }
            }
            StreamEvent::ThinkingDelta { .. } | StreamEvent::ThinkingSignature { .. }
                if !self.thinking => {}
            StreamEvent::ThinkingDelta { text } => {
                let index = self.ensure(out, Open::Thinking);
                Self::delta(
                    out,
                    index,
                    json!({"type": "thinking_delta", "thinking": text}),
                );
            }
            StreamEvent::ThinkingSignature { signature } => {
                let index = self.ensure(out, Open::Thinking);
                Self::delta(
                    out,
                    index,
                    json!({"type": "signature_delta", "signature": signature}),
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
                ..
            } => {
                if self.visible {
                    // Text already delivered cannot be taken back, and the new provider starts
                    // over: end with an error the SDK raises rather than a garbled answer.
                    self.error(
                        out,
                        "api_error",
                        &format!(
                            "{from} failed mid-answer and {to} could not continue it; the \
                             answer must be asked again"
                        ),
                    );
                    return true;
                }
                // Only thinking went out: close it, the new attempt thinks afresh.
                self.close(out);
            }
            StreamEvent::Rerouted { .. } | StreamEvent::Queued { .. } => {
                sse(out, Some("ping"), &json!({"type": "ping"}));
            }
            StreamEvent::Done(done) => {
                self.close(out);
                sse(
                    out,
                    Some("message_delta"),
                    &json!({"type": "message_delta",
                            "delta": {"stop_reason": anthropic_stop(&done.finish, self.tools),
                                      "stop_sequence": null},
                            "usage": anthropic_usage(&done.usage)}),
                );
                sse(out, Some("message_stop"), &json!({"type": "message_stop"}));
                return true;
            }
            StreamEvent::Error { kind, message, .. } => {
                let ty = anthropic_type(kind, status_of(kind));
                self.error(out, ty, &message);
                return true;
            }
            StreamEvent::Started { .. } => {}
        }
        false
    }

    fn keepalive(&mut self, out: &mut BytesMut) {
        sse(out, Some("ping"), &json!({"type": "ping"}));
    }

    fn vanished(&mut self, out: &mut BytesMut) {
        self.error(
            out,
            "api_error",
            "mythosd lost this request (a bug: see the daemon log)",
        );
    }
}
