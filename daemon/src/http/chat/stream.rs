//! Stream events → Chat Completions chunks: the role chunk, content / `reasoning_content` /
//! `tool_calls` deltas, the `finish_reason` chunk, the usage chunk when asked for, `[DONE]`.
//! A failure after the stream started ends with an error chunk and no `[DONE]`, which the
//! official SDK raises as an `APIError`.

use bytes::BytesMut;
use mythos_protocol::{RerouteMode, StreamEvent};
use serde_json::{json, Value};

use crate::http::errors::{error_body, status_of, Dialect};
use crate::http::relay::{openai_finish, openai_usage, sse, Encoder, Head};

/// The encoder of one response.
pub struct ChatEncoder {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    visible: bool,
    /// Router tool index → dense index in this answer.
    tools: Vec<u32>,
}

impl ChatEncoder {
    /// The encoder and the opening role chunk.
    pub fn start(head: &Head, include_usage: bool) -> (Self, BytesMut) {
        let mut enc = ChatEncoder {
            id: format!("chatcmpl-mythos-{}", head.record),
            created: mythos_protocol::clock::now_unix_ms() / 1000,
            model: head.model.clone(),
            include_usage,
            visible: false,
            tools: Vec::new(),
        };
        let mut out = BytesMut::new();
        enc.chunk(&mut out, json!({"role": "assistant", "content": ""}), None);
        (enc, out)
    }

    fn chunk(&mut self, out: &mut BytesMut, delta: Value, finish: Option<&str>) {
        sse(
            out,
            None,
            &json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": null,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            }),
        );
    }

    fn error(out: &mut BytesMut, body: Value) {
        sse(out, None, &body);
    }
}

impl Encoder for ChatEncoder {
    fn event(&mut self, ev: StreamEvent, out: &mut BytesMut) -> bool {
        match ev {
            StreamEvent::TextDelta { text } => {
                if !text.is_empty() {
                    self.visible = true;
                    self.chunk(out, json!({"content": text}), None);
                }
            }
            StreamEvent::ThinkingDelta { text } => {
                // DeepSeek's field: clients that know it show it, the rest ignore it.
                self.chunk(out, json!({"reasoning_content": text}), None);
            }
            StreamEvent::ThinkingSignature { .. } => {}
            StreamEvent::ToolCallStart { index, id, name } => {
                self.visible = true;
                let n = self.tools.len();
                self.tools.push(index);
                self.chunk(
                    out,
                    json!({"tool_calls": [{"index": n, "id": id, "type": "function",
                                           "function": {"name": name, "arguments": ""}}]}),
                    None,
                );
            }
            StreamEvent::ToolCallDelta { index, json } => {
                if let Some(n) = self.tools.iter().rposition(|&i| i == index) {
                    self.chunk(
                        out,
                        json!({"tool_calls": [{"index": n, "function": {"arguments": json}}]}),
                        None,
                    );
                }
            }
            StreamEvent::Rerouted {
                mode: RerouteMode::Restart,
                from,
                to,
                ..
            } if self.visible => {
                let message = format!(
                    "{from} failed mid-answer and {to} could not continue it; the answer must be \
                     asked again"
                );
                Self::error(
                    out,
                    error_body(
                        Dialect::Openai,
                        mythos_protocol::ErrorKind::ServerError,
                        axum::http::StatusCode::BAD_GATEWAY,
                        &message,
                    ),
                );
                return true;
            }
            StreamEvent::Done(done) => {
                let finish = openai_finish(&done.finish, !self.tools.is_empty());
                self.chunk(out, json!({}), Some(finish));
                if self.include_usage {
                    sse(
                        out,
                        None,
                        &json!({
                            "id": self.id,
                            "object": "chat.completion.chunk",
                            "created": self.created,
                            "model": self.model,
                            "system_fingerprint": null,
                            "choices": [],
                            "usage": openai_usage(&done.usage),
                        }),
                    );
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                return true;
            }
            StreamEvent::Error { kind, message, .. } => {
                Self::error(
                    out,
                    error_body(Dialect::Openai, kind, status_of(kind), &message),
                );
                return true;
            }
            StreamEvent::Started { .. }
            | StreamEvent::Rerouted { .. }
            | StreamEvent::Usage(_)
            | StreamEvent::Queued { .. } => {}
        }
        false
    }

    fn keepalive(&mut self, out: &mut BytesMut) {
        // An SSE comment: every SSE parser skips it.
        out.extend_from_slice(b": keep-alive\n\n");
    }

    fn vanished(&mut self, out: &mut BytesMut) {
        Self::error(
            out,
            error_body(
                Dialect::Openai,
                mythos_protocol::ErrorKind::Internal,
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "mythosd lost this request (a bug: see the daemon log)",
            ),
        );
    }
}
