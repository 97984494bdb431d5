//! Stream events → Chat Completions chunks: the role chunk, content / `reasoning_content` /
//! `tool_calls` deltas, the `finish_reason` chunk, the usage chunk when asked for, `[DONE]`.
//! A failure after the stream started ends with an error chunk and no `[DONE]`, which the
//! official SDK raises as an `APIError`.

use bytes::BytesMut;
use mythos_protocol::{RerouteMode, StreamEvent};
use serde::Serialize;
use serde_json::Value;

use crate::http::errors::{error_body, status_of, Dialect};
use crate::http::relay::{openai_finish, openai_usage, sse, Encoder, Head, OpenaiUsage};
use crate::http::template::{Hole, Template, TEXT_MARKER};

/// One `chat.completion.chunk`, fields in the API's order.
#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: Option<&'static str>,
    choices: &'a [Choice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OpenaiUsage>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<&'static str>,
    finish_reason: Option<&'a str>,
}

/// What a chunk adds; each variant is an object with just its own fields.
#[derive(Serialize)]
#[serde(untagged)]
enum Delta<'a> {
    Role {
        role: &'static str,
        content: &'static str,
    },
    Content {
        content: &'a str,
    },
    /// The model declines (the SDKs gather it into `message.refusal`).
    Refusal {
        refusal: &'a str,
    },
    /// DeepSeek's field: clients that know it show it, the rest ignore it.
    Reasoning {
        reasoning_content: &'a str,
    },
    ToolCalls {
        tool_calls: [ToolCall<'a>; 1],
    },
    /// The deprecated form, for a client that offered `functions`.
    FunctionCall {
        function_call: Function<'a>,
    },
    /// `{}`, with the finish reason.
    Empty {},
}

#[derive(Serialize)]
struct ToolCall<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    ty: Option<&'static str>,
    function: Function<'a>,
}

#[derive(Serialize)]
struct Function<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

/// The encoder of one response.
pub struct ChatEncoder {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Calls go out as the deprecated `function_call` (see [`ChatEncoder::legacy_functions`]).
    legacy: bool,
    visible: bool,
    /// Router tool index → dense index in this answer, and whether the call has had any
    /// arguments.
    tools: Vec<(u32, bool)>,
    /// The content chunk, serialized once (see `template`), and the reasoning chunk, once
    /// there is reasoning (`None` inside when it cannot be made).
    content: Option<Template>,
    reasoning: Option<Option<Template>>,
}

impl ChatEncoder {
    /// The encoder and the opening role chunk.
    pub fn start(head: &Head, include_usage: bool) -> (Self, BytesMut) {
        let mut enc = ChatEncoder {
            id: format!("chatcmpl-mythos-{}", head.record),
            created: mythos_protocol::clock::now_unix_ms() / 1000,
            model: head.model.clone(),
            include_usage,
            legacy: false,
            visible: false,
            tools: Vec::new(),
            content: None,
            reasoning: None,
        };
        enc.content = Template::new(&[Hole::Text], |out| {
            enc.chunk(
                out,
                Delta::Content {
                    content: TEXT_MARKER,
                },
                None,
            )
        });
        let mut out = BytesMut::new();
        enc.chunk(
            &mut out,
            Delta::Role {
                role: "assistant",
                content: "",
            },
            None,
        );
        (enc, out)
    }

    /// Calls go out as the deprecated `function_call`, one per answer, ending with
    /// `finish_reason: "function_call"`: the client offered its tools as `functions`.
    pub fn legacy_functions(mut self, legacy: bool) -> Self {
        self.legacy = legacy;
        self
    }

    fn chunk(&self, out: &mut BytesMut, delta: Delta<'_>, finish: Option<&str>) {
        let choice = Choice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: finish,
        };
        self.write(out, std::slice::from_ref(&choice), None);
    }

    /// A fragment of call `n`'s arguments.
    fn arguments(&self, out: &mut BytesMut, n: usize, arguments: &str) {
        if self.legacy {
            let function_call = Function {
                name: None,
                arguments,
            };
            self.chunk(out, Delta::FunctionCall { function_call }, None);
            return;
        }
        let call = ToolCall {
            index: n,
            id: None,
            ty: None,
            function: Function {
                name: None,
                arguments,
            },
        };
        self.chunk(out, Delta::ToolCalls { tool_calls: [call] }, None);
    }

    fn write(&self, out: &mut BytesMut, choices: &[Choice<'_>], usage: Option<OpenaiUsage>) {
        sse(
            out,
            None,
            &Chunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                system_fingerprint: None,
                choices,
                usage,
            },
        );
    }

    fn reasoning(&mut self) -> Option<&Template> {
        if self.reasoning.is_none() {
            let t = Template::new(&[Hole::Text], |out| {
                let delta = Delta::Reasoning {
                    reasoning_content: TEXT_MARKER,
                };
                self.chunk(out, delta, None)
            });
            self.reasoning = Some(t);
        }
        self.reasoning.as_ref().and_then(Option::as_ref)
    }

    fn error(out: &mut BytesMut, body: Value) {
        sse(out, None, &body);
    }
}

/// `finish` as a client of the deprecated `functions` knows it.
pub fn legacy_finish(finish: &'static str, legacy: bool) -> &'static str {
    match finish {
        "tool_calls" if legacy => "function_call",
        other => other,
    }
}

impl Encoder for ChatEncoder {
    fn event(&mut self, ev: StreamEvent, out: &mut BytesMut) -> bool {
        match ev {
            StreamEvent::TextDelta { text } => {
                if !text.is_empty() {
                    self.visible = true;
                    match &self.content {
                        Some(t) => t.write(out, &[&text], &[]),
                        None => self.chunk(out, Delta::Content { content: &text }, None),
                    }
                }
            }
            StreamEvent::RefusalDelta { text } => {
                if !text.is_empty() {
                    self.visible = true;
                    self.chunk(out, Delta::Refusal { refusal: &text }, None);
                }
            }
            StreamEvent::ThinkingDelta { text } => match self.reasoning() {
                Some(t) => t.write(out, &[&text], &[]),
                None => {
                    let delta = Delta::Reasoning {
                        reasoning_content: &text,
                    };
                    self.chunk(out, delta, None)
                }
            },
            // Chat Completions has no way to carry either back.
            StreamEvent::ThinkingSignature { .. } | StreamEvent::RedactedThinking { .. } => {}
            StreamEvent::ToolCallStart { name, .. } if self.legacy && !self.tools.is_empty() => {
                // Asked for one call at a time (`parallel_tool_calls: false`); a provider that
                // sent another anyway has it dropped, as the deprecated form holds one.
                tracing::warn!(tool = %name, "dropped a second call: the client takes one `function_call`");
            }
            StreamEvent::ToolCallStart { index, name, .. } if self.legacy => {
                self.visible = true;
                self.tools.push((index, false));
                let function_call = Function {
                    name: Some(&name),
                    arguments: "",
                };
                self.chunk(out, Delta::FunctionCall { function_call }, None);
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.visible = true;
                let n = self.tools.len();
                self.tools.push((index, false));
                let call = ToolCall {
                    index: n,
                    id: Some(&id),
                    ty: Some("function"),
                    function: Function {
                        name: Some(&name),
                        arguments: "",
                    },
                };
                self.chunk(out, Delta::ToolCalls { tool_calls: [call] }, None);
            }
            StreamEvent::ToolCallDelta { index, json } => {
                if let Some(n) = self.tools.iter().rposition(|&(i, _)| i == index) {
                    self.tools[n].1 |= !json.is_empty();
                    self.arguments(out, n, &json);
                }
            }
            StreamEvent::Rerouted {
                mode: RerouteMode::Restart,
                from,
                to,
                reason,
                ..
            } if self.visible => {
                let message = crate::http::relay::restart_message(&from, &to, &reason);
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
            StreamEvent::Rerouted {
                mode: RerouteMode::Restart,
                ..
            } if self.reasoning.is_some() => {
                // Only reasoning went out, and the new attempt reasons afresh: a client adds
                // `reasoning_content` up into one text, so the two are set apart rather than
                // run together mid-sentence.
                let delta = Delta::Reasoning {
                    reasoning_content: "\n\n",
                };
                self.chunk(out, delta, None);
            }
            StreamEvent::Done(done) => {
                // A call without arguments (Anthropic streams none for an empty input) has
                // `"{}"`, as OpenAI sends it: clients parse the arguments they add up, and
                // `""` is not JSON.
                for n in 0..self.tools.len() {
                    if !self.tools[n].1 {
                        self.arguments(out, n, "{}");
                    }
                }
                let finish = legacy_finish(
                    openai_finish(&done.finish, !self.tools.is_empty()),
                    self.legacy,
                );
                self.chunk(out, Delta::Empty {}, Some(finish));
                if self.include_usage {
                    self.write(out, &[], Some(openai_usage(&done.usage)));
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
            // Server tools are offered by Messages clients only (see ChatOptions::server_tools).
            StreamEvent::Started { .. }
            | StreamEvent::Rerouted { .. }
            | StreamEvent::Usage(_)
            | StreamEvent::ServerBlock { .. }
            | StreamEvent::Citation { .. }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Text and reasoning deltas are written from a template, not serialized whole (the golden
    /// streams check the bytes are the same either way).
    #[test]
    fn deltas_go_through_a_template() {
        let (mut enc, _) = ChatEncoder::start(&Head::for_test(), false);
        let mut out = BytesMut::new();
        enc.event(StreamEvent::ThinkingDelta { text: "hm".into() }, &mut out);
        assert!(enc.content.is_some() && enc.reasoning.is_some_and(|t| t.is_some()));
    }

    /// The end of an answer that called tools.
    fn tool_use_done() -> StreamEvent {
        StreamEvent::Done(Box::new(mythos_protocol::DoneInfo {
            finish: mythos_protocol::FinishReason::ToolUse,
            usage: mythos_protocol::Usage::default(),
            cost_usd: 0.0,
            latency_ms: 0,
            provider: "p".into(),
            model: "m".into(),
            record: 1,
        }))
    }

    /// A call that got no arguments (Claude streams none for a tool without parameters) adds
    /// up to `"{}"`, as OpenAI streams it; one that got some adds up to exactly those.
    #[test]
    fn a_call_without_arguments_has_an_empty_object() {
        let args = |out: &BytesMut| -> Vec<String> {
            let mut calls: Vec<String> = Vec::new();
            for v in std::str::from_utf8(out)
                .unwrap()
                .split("\n\n")
                .filter_map(|f| f.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            {
                for tc in v["choices"][0]["delta"]["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let i = tc["index"].as_u64().unwrap() as usize;
                    if i == calls.len() {
                        calls.push(String::new());
                    }
                    calls[i].push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
                }
            }
            calls
        };
        let (mut enc, _) = ChatEncoder::start(&Head::for_test(), false);
        let mut out = BytesMut::new();
        for ev in [
            StreamEvent::ToolCallStart {
                index: 0,
                id: "a".into(),
                name: "now".into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "b".into(),
                name: "echo".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                json: r#"{"x":1}"#.into(),
            },
        ] {
            enc.event(ev, &mut out);
        }
        assert!(enc.event(tool_use_done(), &mut out));
        assert_eq!(args(&out), ["{}", r#"{"x":1}"#]);
    }

    /// A client of the deprecated `functions` gets its call as `function_call` deltas (name
    /// first, then the arguments) and `finish_reason: "function_call"`; a second call, which it
    /// could not hold, is not sent.
    #[test]
    fn a_legacy_client_gets_one_function_call() {
        let (enc, _) = ChatEncoder::start(&Head::for_test(), false);
        let mut enc = enc.legacy_functions(true);
        let mut out = BytesMut::new();
        for ev in [
            StreamEvent::ToolCallStart {
                index: 0,
                id: "a".into(),
                name: "get_weather".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                json: r#"{"city":"#.into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "b".into(),
                name: "other".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                json: r#"{"x":1}"#.into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                json: r#""Paris"}"#.into(),
            },
        ] {
            enc.event(ev, &mut out);
        }
        assert!(enc.event(tool_use_done(), &mut out));
        let chunks: Vec<Value> = std::str::from_utf8(&out)
            .unwrap()
            .split("\n\n")
            .filter_map(|f| f.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .collect();
        let (mut name, mut args, mut finish) = (String::new(), String::new(), None);
        for c in &chunks {
            let delta = &c["choices"][0]["delta"];
            assert!(delta.get("tool_calls").is_none(), "{c}");
            if let Some(f) = delta.get("function_call") {
                name.push_str(f["name"].as_str().unwrap_or(""));
                args.push_str(f["arguments"].as_str().unwrap());
            }
            if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
        assert_eq!(name, "get_weather");
        assert_eq!(args, r#"{"city":"Paris"}"#);
        assert_eq!(finish.as_deref(), Some("function_call"));
    }

    /// Reasoning, then a restart elsewhere that reasons again: the client's accumulated
    /// reasoning keeps the two apart; a restart before any reasoning adds nothing.
    #[test]
    fn a_restart_after_reasoning_only_sets_the_new_reasoning_apart() {
        let restart = || StreamEvent::Rerouted {
            from: "a".into(),
            to: "b".into(),
            reason: "cut".into(),
            mode: RerouteMode::Restart,
        };
        let reasoning = |out: &BytesMut| -> String {
            std::str::from_utf8(out)
                .unwrap()
                .split("\n\n")
                .filter_map(|f| f.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .filter_map(|v| {
                    v["choices"][0]["delta"]["reasoning_content"]
                        .as_str()
                        .map(String::from)
                })
                .collect()
        };
        let (mut enc, _) = ChatEncoder::start(&Head::for_test(), false);
        let mut out = BytesMut::new();
        assert!(!enc.event(restart(), &mut out));
        assert!(out.is_empty(), "nothing to set apart yet");
        for ev in [
            StreamEvent::ThinkingDelta {
                text: "Let me".into(),
            },
            restart(),
            StreamEvent::ThinkingDelta {
                text: "First,".into(),
            },
        ] {
            assert!(!enc.event(ev, &mut out));
        }
        assert_eq!(reasoning(&out), "Let me\n\nFirst,");
    }
}
