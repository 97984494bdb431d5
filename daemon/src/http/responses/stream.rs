//! Stream events → the Responses API event stream, shaped like the live API's recordings in
//! `daemon/testdata/responses/`: every frame has its `event:` line and a `data:` object with
//! `type` and an increasing `sequence_number`.
//!
//! `response.created`, `response.in_progress`; then each output item in order: `added`, its
//! parts and deltas, their `done`s, the item's `done`; then `response.completed` (or
//! `response.incomplete` at the token limit) with the whole response object. A failure after
//! the stream began ends with `response.failed`, never `completed`.
//!
//! What the clients read: Codex CLI (`codex-rs/codex-api/src/sse/responses.rs`) acts on
//! `response.created`, `response.output_item.added`, `response.output_item.done` (the items it
//! keeps in its history), `response.output_text.delta`, `response.reasoning_summary_part.added`,
//! `response.reasoning_summary_text.delta` (by `summary_index`), `response.failed`
//! (`response.error.code` / `message`: `context_length_exceeded` and `insufficient_quota` are
//! final, anything else is retried, after the delay a "try again in N s" message gives) and
//! `response.completed` (`response.id`, `usage`); a stream that ends without `completed` is an
//! error to it. The openai-python stream helper builds its snapshot from `output_item.added`,
//! `content_part.added` and the deltas, and `get_final_response()` needs `response.completed`.

use bytes::BytesMut;
use mythos_protocol::{ErrorKind, FinishReason, RerouteMode, StreamEvent, Usage};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::http::errors::{openai_type, status_of};
use crate::http::relay::{sse, Encoder, Head, EMPTY_ARRAY};
use crate::http::template::{Hole, Template, NUMBER_MARKER, TEXT_MARKER};

/// One event: `type` and `sequence_number` first, then the event's own fields.
#[derive(Serialize)]
struct Frame<'a, F> {
    #[serde(rename = "type")]
    ty: &'a str,
    sequence_number: u64,
    #[serde(flatten)]
    fields: F,
}

/// The event of almost every chunk.
const TEXT_DELTA: &str = "response.output_text.delta";

/// The fields of `response.output_text.delta`, the event of almost every chunk.
#[derive(Serialize)]
struct TextDelta<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: u32,
    delta: &'a str,
    logprobs: [(); 0],
}

/// The fields of `response.reasoning_summary_text.delta`.
#[derive(Serialize)]
struct SummaryDelta<'a> {
    item_id: &'a str,
    output_index: usize,
    summary_index: u32,
    delta: &'a str,
}

/// The fields of `response.function_call_arguments.delta`.
#[derive(Serialize)]
struct ArgsDelta<'a> {
    item_id: &'a str,
    output_index: usize,
    delta: &'a str,
}

/// The fields of the events that carry the whole response object; borrowed, so that
/// `response.created` and `response.in_progress` share one.
#[derive(Serialize)]
struct WithResponse<'a> {
    response: &'a Value,
}

/// Write one event, numbered from `seq`.
fn emit<F: Serialize>(seq: &mut u64, out: &mut BytesMut, ty: &str, fields: F) {
    let frame = Frame {
        ty,
        sequence_number: *seq,
        fields,
    };
    *seq += 1;
    sse(out, Some(ty), &frame);
}

/// The response-level facts every response object repeats.
#[derive(Debug, Clone)]
pub struct Meta {
    /// `resp_mythos_<record>`.
    pub id: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The routing record, for item ids.
    pub record: u64,
    /// The request's settings, echoed (see [`super::request::Parsed::echo`]).
    pub echo: Map<String, Value>,
    /// The request's `custom` tools (see [`super::request::Parsed::custom_tools`]).
    pub custom: Vec<String>,
    /// The request offered Codex's `local_shell` tool (see
    /// [`super::request::Parsed::local_shell`]).
    pub local_shell: bool,
}

impl Meta {
    /// The facts for a response headed by `head`.
    pub fn new(head: &Head, echo: Map<String, Value>) -> Self {
        Meta {
            id: format!("resp_mythos_{}", head.record),
            created_at: mythos_protocol::clock::now_unix_ms() / 1000,
            record: head.record,
            echo,
            custom: Vec::new(),
            local_shell: false,
        }
    }

    /// How a call of the tool `name` is shown to this request's client.
    pub fn call_kind(&self, name: &str) -> CallKind {
        if self.local_shell && name == super::request::LOCAL_SHELL {
            CallKind::LocalShell
        } else if self.custom.iter().any(|c| c == name) {
            CallKind::Custom
        } else {
            CallKind::Function
        }
    }

    /// A response object, with the fields (and their order) the live API sends.
    pub fn response(&self, model: &str, state: &State<'_>) -> Value {
        let mut r = Map::new();
        let echo = |k: &str| self.echo.get(k).cloned().unwrap_or(Value::Null);
        r.insert("id".into(), json!(self.id));
        r.insert("object".into(), json!("response"));
        r.insert("created_at".into(), json!(self.created_at));
        r.insert("status".into(), json!(state.status));
        r.insert("background".into(), json!(false));
        r.insert("error".into(), state.error.clone());
        r.insert("incomplete_details".into(), state.incomplete.clone());
        for k in ["instructions", "max_output_tokens", "max_tool_calls"] {
            r.insert(k.into(), echo(k));
        }
        r.insert("model".into(), json!(model));
        r.insert("output".into(), Value::Array(state.output.clone()));
        r.insert("parallel_tool_calls".into(), echo("parallel_tool_calls"));
        r.insert("previous_response_id".into(), Value::Null);
        r.insert("prompt_cache_key".into(), echo("prompt_cache_key"));
        r.insert("prompt_cache_retention".into(), Value::Null);
        for k in ["reasoning", "safety_identifier"] {
            r.insert(k.into(), echo(k));
        }
        r.insert("service_tier".into(), json!("default"));
        for k in ["store", "temperature", "text", "tool_choice", "tools"] {
            r.insert(k.into(), echo(k));
        }
        r.insert("top_logprobs".into(), json!(0));
        r.insert("top_p".into(), echo("top_p"));
        r.insert("truncation".into(), json!("disabled"));
        r.insert(
            "usage".into(),
            state.usage.map(usage_json).unwrap_or(Value::Null),
        );
        r.insert("user".into(), echo("user"));
        r.insert("metadata".into(), echo("metadata"));
        Value::Object(r)
    }
}

/// Where a response stands, for [`Meta::response`].
#[derive(Debug, Clone)]
pub struct State<'a> {
    /// `in_progress`, `completed`, `incomplete` or `failed`.
    pub status: &'a str,
    /// The output items, finished.
    pub output: Vec<Value>,
    /// Token counts, once known.
    pub usage: Option<&'a Usage>,
    /// `{code, message}` when failed.
    pub error: Value,
    /// `{reason}` when incomplete.
    pub incomplete: Value,
}

impl State<'_> {
    /// A response that has just begun.
    pub fn in_progress() -> Self {
        State {
            status: "in_progress",
            output: Vec::new(),
            usage: None,
            error: Value::Null,
            incomplete: Value::Null,
        }
    }
}

/// The response's status and `incomplete_details` for a finish. The live API says
/// `incomplete` only for the token limit and the content filter.
pub fn outcome(finish: &FinishReason) -> (&'static str, Value) {
    match finish {
        FinishReason::MaxTokens => ("incomplete", json!({"reason": "max_output_tokens"})),
        FinishReason::ContentFilter => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// Responses usage JSON. OpenAI counts cached prompt tokens inside `input_tokens`; the router
/// counts them apart. The router does not know how many output tokens were reasoning.
pub fn usage_json(u: &Usage) -> Value {
    let input = u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens;
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": u.cache_read_input_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + u.output_tokens,
    })
}

/// One output item.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Answer text.
    Message {
        /// `msg_…`.
        id: String,
        /// The text.
        text: String,
    },
    /// The model's refusal: a message whose content is a `refusal` part, as the live API
    /// sends it (the SDKs' `output_text` leaves it out).
    Refusal {
        /// `msg_…`.
        id: String,
        /// The words.
        text: String,
    },
    /// Reasoning, sent as its summary: the text is what the model showed of its thinking.
    Reasoning {
        /// `rs_…`.
        id: String,
        /// The text.
        text: String,
        /// Anthropic's signature over the text, if Anthropic thought it: sent as
        /// `encrypted_content` so that a client replaying the item (Codex does, with
        /// `store: false`) lets the thinking go back to Anthropic verified.
        signature: Option<String>,
    },
    /// A function call.
    Call {
        /// `fc_…`.
        id: String,
        /// The id the client answers with `function_call_output`.
        call_id: String,
        /// Function name.
        name: String,
        /// Arguments, JSON text.
        args: String,
        /// What the client offered the tool as.
        kind: CallKind,
    },
}

impl CallKind {
    /// The prefix of its items' ids, as the live API's.
    pub fn prefix(self) -> &'static str {
        match self {
            CallKind::Function => "fc",
            CallKind::Custom => "ctc",
            CallKind::LocalShell => "lsh",
        }
    }
}

/// What a tool the client offered is, so its calls are shown in the item type it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// A function: `function_call` with JSON arguments.
    Function,
    /// A `custom` tool: `custom_tool_call` with the raw `input`.
    Custom,
    /// Codex's `local_shell`: `local_shell_call` with an `exec` action.
    LocalShell,
}

/// Marks an `encrypted_content` that holds an Anthropic thinking signature (and not OpenAI's
/// own opaque state, which means nothing to any other provider).
pub const SIGNATURE_PREFIX: &str = "mythos-anthropic-signature:";

impl Item {
    /// An item's id for output position `n` of record `record`.
    pub fn id(prefix: &str, record: u64, n: usize) -> String {
        format!("{prefix}_mythos_{record}_{n}")
    }

    /// The item as JSON: an empty shell while `in_progress` (as `output_item.added` carries
    /// it), whole otherwise.
    pub fn json(&self, status: &str) -> Value {
        let shell = status == "in_progress";
        match self {
            Item::Message { id, text } => json!({
                "id": id,
                "type": "message",
                "status": status,
                "content": if shell { json!([]) } else { json!([output_text(text)]) },
                "role": "assistant",
            }),
            Item::Refusal { id, text } => json!({
                "id": id,
                "type": "message",
                "status": status,
                "content": if shell { json!([]) } else { json!([refusal_part(text)]) },
                "role": "assistant",
            }),
            // The live API's reasoning items carry no status.
            Item::Reasoning {
                id,
                text,
                signature,
            } => {
                let mut v = json!({
                    "id": id,
                    "type": "reasoning",
                    "summary": if shell || text.is_empty() { json!([]) }
                               else { json!([{"type": "summary_text", "text": text}]) },
                });
                if let (false, Some(sig)) = (shell, signature) {
                    v["encrypted_content"] = json!(format!("{SIGNATURE_PREFIX}{sig}"));
                }
                v
            }
            Item::Call {
                id,
                call_id,
                args,
                kind: CallKind::LocalShell,
                ..
            } => json!({
                "id": id,
                "type": "local_shell_call",
                "status": status,
                "call_id": call_id,
                "action": super::request::shell_action(args),
            }),
            Item::Call {
                id,
                call_id,
                name,
                args,
                kind: CallKind::Custom,
            } => json!({
                "id": id,
                "type": "custom_tool_call",
                "status": status,
                "call_id": call_id,
                "name": name,
                "input": if shell { String::new() } else { custom_input(args) },
            }),
            Item::Call {
                id,
                call_id,
                name,
                args,
                kind: CallKind::Function,
            } => json!({
                "id": id,
                "type": "function_call",
                "status": status,
                "arguments": if shell { "" } else { args.as_str() },
                "call_id": call_id,
                "name": name,
            }),
        }
    }
}

/// A custom tool's raw input, from the `{"input": ...}` its function was called with (the
/// arguments as they are if the model did not follow that shape).
pub fn custom_input(args: &str) -> String {
    match serde_json::from_str::<Value>(args) {
        Ok(Value::Object(mut o)) => match o.remove("input") {
            Some(Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => args.to_string(),
        },
        _ => args.to_string(),
    }
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
}

fn refusal_part(text: &str) -> Value {
    json!({"type": "refusal", "refusal": text})
}

/// A tool call being gathered: router index, call id, name, argument fragments.
type Pending = (u32, String, String, Vec<String>);

/// The encoder of one response.
pub struct ResponsesEncoder {
    meta: Meta,
    model: String,
    seq: u64,
    /// Items sent so far, with the status their `output_item.done` gave (or will give).
    items: Vec<(Item, &'static str)>,
    /// The message or reasoning item still taking deltas.
    open: Option<usize>,
    /// Tool calls arrive whole but in pieces; each goes out once the next kind of event shows
    /// it is complete.
    pending: Vec<Pending>,
    /// Text or a tool call went out: a restart can no longer be hidden.
    visible: bool,
    usage: Option<Usage>,
    /// The `response.output_text.delta` frame of the open message item, serialized once per
    /// item with holes for the sequence number and the text (see `template`).
    text_frame: Option<(usize, Option<Template>)>,
}

impl ResponsesEncoder {
    /// The encoder and the opening `response.created` and `response.in_progress` frames.
    pub fn start(head: &Head, echo: Map<String, Value>) -> (Self, BytesMut) {
        Self::start_with(head, echo, Vec::new(), false)
    }

    /// [`Self::start`] for a request offering the `custom` tools named in `custom`.
    pub fn start_with(
        head: &Head,
        echo: Map<String, Value>,
        custom: Vec<String>,
        local_shell: bool,
    ) -> (Self, BytesMut) {
        let mut meta = Meta::new(head, echo);
        meta.custom = custom;
        meta.local_shell = local_shell;
        let mut enc = ResponsesEncoder {
            meta,
            model: head.model.clone(),
            seq: 0,
            items: Vec::new(),
            open: None,
            pending: Vec::new(),
            visible: false,
            usage: None,
            text_frame: None,
        };
        let mut out = BytesMut::new();
        let response = enc.meta.response(&enc.model, &State::in_progress());
        emit(
            &mut enc.seq,
            &mut out,
            "response.created",
            WithResponse {
                response: &response,
            },
        );
        emit(
            &mut enc.seq,
            &mut out,
            "response.in_progress",
            WithResponse {
                response: &response,
            },
        );
        (enc, out)
    }

    /// One frame: `type` and `sequence_number` first, then `fields` (an object).
    fn emit(&mut self, out: &mut BytesMut, ty: &str, fields: Value) {
        emit(&mut self.seq, out, ty, fields);
    }

    fn add(&mut self, out: &mut BytesMut, item: Item) -> usize {
        let n = self.items.len();
        let shell = item.json("in_progress");
        self.items.push((item, "completed"));
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": n, "item": shell}),
        );
        n
    }

    fn open_message(&mut self, out: &mut BytesMut) -> usize {
        self.close(out, "completed");
        let id = Item::id("msg", self.meta.record, self.items.len());
        let n = self.add(
            out,
            Item::Message {
                id: id.clone(),
                text: String::new(),
            },
        );
        self.emit(
            out,
            "response.content_part.added",
            json!({"item_id": id, "output_index": n, "content_index": 0,
                   "part": output_text("")}),
        );
        self.open = Some(n);
        n
    }

    fn open_refusal(&mut self, out: &mut BytesMut) -> usize {
        self.close(out, "completed");
        let id = Item::id("msg", self.meta.record, self.items.len());
        let n = self.add(
            out,
            Item::Refusal {
                id: id.clone(),
                text: String::new(),
            },
        );
        self.emit(
            out,
            "response.content_part.added",
            json!({"item_id": id, "output_index": n, "content_index": 0,
                   "part": refusal_part("")}),
        );
        self.open = Some(n);
        n
    }

    fn open_reasoning(&mut self, out: &mut BytesMut) -> usize {
        self.close(out, "completed");
        let id = Item::id("rs", self.meta.record, self.items.len());
        let n = self.add(
            out,
            Item::Reasoning {
                id: id.clone(),
                text: String::new(),
                signature: None,
            },
        );
        self.emit(
            out,
            "response.reasoning_summary_part.added",
            json!({"item_id": id, "output_index": n, "summary_index": 0,
                   "part": {"type": "summary_text", "text": ""}}),
        );
        self.open = Some(n);
        n
    }

    /// End the open item with its `done` events.
    fn close(&mut self, out: &mut BytesMut, status: &'static str) {
        let Some(n) = self.open.take() else { return };
        self.items[n].1 = status;
        let item = self.items[n].0.clone();
        match &item {
            Item::Message { id, text } => {
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": n, "content_index": 0,
                           "text": text, "logprobs": []}),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": n, "content_index": 0,
                           "part": output_text(text)}),
                );
            }
            Item::Refusal { id, text } => {
                self.emit(
                    out,
                    "response.refusal.done",
                    json!({"item_id": id, "output_index": n, "content_index": 0,
                           "refusal": text}),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": n, "content_index": 0,
                           "part": refusal_part(text)}),
                );
            }
            Item::Reasoning { id, text, .. } => {
                self.emit(
                    out,
                    "response.reasoning_summary_text.done",
                    json!({"item_id": id, "output_index": n, "summary_index": 0, "text": text}),
                );
                self.emit(
                    out,
                    "response.reasoning_summary_part.done",
                    json!({"item_id": id, "output_index": n, "summary_index": 0,
                           "part": {"type": "summary_text", "text": text}}),
                );
            }
            Item::Call { .. } => {}
        }
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": n, "item": item.json(status)}),
        );
    }

    fn flush_tools(&mut self, out: &mut BytesMut) {
        if self.pending.is_empty() {
            return;
        }
        self.close(out, "completed");
        for (_, call_id, name, mut parts) in std::mem::take(&mut self.pending) {
            self.visible = true;
            // No arguments at all is an empty object, as in the non-streaming answer.
            if parts.iter().all(|p| p.is_empty()) {
                parts = vec!["{}".into()];
            }
            let kind = self.meta.call_kind(&name);
            let id = Item::id(kind.prefix(), self.meta.record, self.items.len());
            let args = parts.concat();
            let n = self.add(
                out,
                Item::Call {
                    id: id.clone(),
                    call_id,
                    name: name.clone(),
                    args: args.clone(),
                    kind,
                },
            );
            if kind != CallKind::Function {
                // What Codex acts on is the finished item.
                let item = self.items[n].0.json("completed");
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": n, "item": item}),
                );
                continue;
            }
            for delta in parts.iter().filter(|p| !p.is_empty()) {
                emit(
                    &mut self.seq,
                    out,
                    "response.function_call_arguments.delta",
                    ArgsDelta {
                        item_id: &id,
                        output_index: n,
                        delta,
                    },
                );
            }
            self.emit(
                out,
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": n, "name": name, "arguments": args}),
            );
            let item = self.items[n].0.json("completed");
            self.emit(
                out,
                "response.output_item.done",
                json!({"output_index": n, "item": item}),
            );
        }
    }

    fn output(&self) -> Vec<Value> {
        self.items.iter().map(|(i, s)| i.json(s)).collect()
    }

    /// End with `response.failed`.
    fn fail(&mut self, out: &mut BytesMut, kind: ErrorKind, message: &str) {
        // The item cut short gets no `done` events, as from the live API: Codex records each
        // finished item in its history at once and retries a failed turn, so the half answer
        // went to the model again beside the whole one. It stays in the failed response's
        // output, `incomplete`.
        if let Some(n) = self.open.take() {
            self.items[n].1 = "incomplete";
        }
        let code = openai_type(kind, status_of(kind))
            .1
            .unwrap_or("server_error");
        let usage = self.usage;
        let state = State {
            status: "failed",
            output: self.output(),
            usage: usage.as_ref(),
            error: json!({"code": code, "message": message}),
            incomplete: Value::Null,
        };
        let response = self.meta.response(&self.model, &state);
        emit(
            &mut self.seq,
            out,
            "response.failed",
            WithResponse {
                response: &response,
            },
        );
    }
}

/// The failure message, with the wait in the words Codex reads ("try again in N s") when the
/// daemon knows when capacity returns.
fn failure_message(message: String, retry_at_unix_ms: Option<u64>) -> String {
    match retry_at_unix_ms {
        Some(at) => {
            let now = mythos_protocol::clock::now_unix_ms();
            let secs = at.saturating_sub(now).div_ceil(1000).max(1);
            format!("{message}. Please try again in {secs}s.")
        }
        None => message,
    }
}

impl Encoder for ResponsesEncoder {
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
                    let n = match self.open {
                        Some(n) if matches!(self.items[n].0, Item::Message { .. }) => n,
                        _ => self.open_message(out),
                    };
                    let Item::Message { id, text: t } = &mut self.items[n].0 else {
                        unreachable!("the open item is a message")
                    };
                    t.push_str(&text);
                    let fields = |delta| TextDelta {
                        item_id: id,
                        output_index: n,
                        content_index: 0,
                        delta,
                        logprobs: EMPTY_ARRAY,
                    };
                    // Made once per item; an item whose template cannot be made is encoded
                    // without one.
                    if self.text_frame.as_ref().is_none_or(|(i, _)| *i != n) {
                        let made = Template::new(&[Hole::Number, Hole::Text], |out| {
                            let mut seq = NUMBER_MARKER;
                            emit(&mut seq, out, TEXT_DELTA, fields(TEXT_MARKER))
                        });
                        self.text_frame = Some((n, made));
                    }
                    match &self.text_frame {
                        Some((_, Some(frame))) => {
                            frame.write(out, &[&text], &[self.seq]);
                            self.seq += 1;
                        }
                        _ => emit(&mut self.seq, out, TEXT_DELTA, fields(&text)),
                    }
                }
            }
            StreamEvent::RefusalDelta { text } => {
                if !text.is_empty() {
                    self.visible = true;
                    let n = match self.open {
                        Some(n) if matches!(self.items[n].0, Item::Refusal { .. }) => n,
                        _ => self.open_refusal(out),
                    };
                    let Item::Refusal { id, text: t } = &mut self.items[n].0 else {
                        unreachable!("the open item is a refusal")
                    };
                    t.push_str(&text);
                    let id = id.clone();
                    self.emit(
                        out,
                        "response.refusal.delta",
                        json!({"item_id": id, "output_index": n, "content_index": 0,
                               "delta": text}),
                    );
                }
            }
            StreamEvent::ThinkingDelta { text } => {
                if !text.is_empty() {
                    let n = match self.open {
                        Some(n) if matches!(self.items[n].0, Item::Reasoning { .. }) => n,
                        _ => self.open_reasoning(out),
                    };
                    let Item::Reasoning { id, text: t, .. } = &mut self.items[n].0 else {
                        unreachable!("the open item is reasoning")
                    };
                    t.push_str(&text);
                    emit(
                        &mut self.seq,
                        out,
                        "response.reasoning_summary_text.delta",
                        SummaryDelta {
                            item_id: id,
                            output_index: n,
                            summary_index: 0,
                            delta: &text,
                        },
                    );
                }
            }
            // Nothing to show, and a Responses client could only send it back to Anthropic
            // through this daemon: dropped, and Anthropic's thinking for that turn with it.
            StreamEvent::RedactedThinking { .. } => {}
            StreamEvent::ThinkingSignature { signature } => {
                // A signature ends its thinking block; it travels as the item's opaque
                // `encrypted_content`, which clients send back untouched.
                if let Some(n) = self
                    .open
                    .filter(|&n| matches!(self.items[n].0, Item::Reasoning { .. }))
                {
                    if let Item::Reasoning { signature: s, .. } = &mut self.items[n].0 {
                        *s = Some(signature);
                    }
                    self.close(out, "completed");
                } else {
                    // Thinking that showed no text (Anthropic may stream none) still has to go
                    // back to Anthropic with its signature: a reasoning item with no summary,
                    // added and done at once, as the live API sends an unsummarised one.
                    self.close(out, "completed");
                    let id = Item::id("rs", self.meta.record, self.items.len());
                    let item = Item::Reasoning {
                        id,
                        text: String::new(),
                        signature: Some(signature),
                    };
                    let n = self.add(out, item);
                    let item = self.items[n].0.json("completed");
                    self.emit(
                        out,
                        "response.output_item.done",
                        json!({"output_index": n, "item": item}),
                    );
                }
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.pending.push((index, id, name, Vec::new()));
            }
            StreamEvent::ToolCallDelta { index, json } => {
                if let Some(p) = self.pending.iter_mut().rev().find(|p| p.0 == index) {
                    p.3.push(json);
                }
            }
            StreamEvent::Usage(u) => self.usage = Some(u),
            StreamEvent::Rerouted {
                mode: RerouteMode::Restart,
                from,
                to,
                reason,
                ..
            } => {
                if self.visible {
                    // What went out cannot be taken back and the new provider starts over: fail
                    // rather than send a garbled answer. Codex retries a failed response.
                    self.fail(
                        out,
                        ErrorKind::ServerError,
                        &crate::http::relay::restart_message(&from, &to, &reason),
                    );
                    return true;
                }
                // Only reasoning went out: close it, the new attempt thinks afresh.
                self.close(out, "incomplete");
            }
            StreamEvent::Done(done) => {
                let (status, incomplete) = outcome(&done.finish);
                self.close(
                    out,
                    if status == "incomplete" {
                        "incomplete"
                    } else {
                        "completed"
                    },
                );
                let state = State {
                    status,
                    output: self.output(),
                    usage: Some(&done.usage),
                    error: Value::Null,
                    incomplete,
                };
                let response = self.meta.response(&done.model, &state);
                let ty = if status == "incomplete" {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                emit(
                    &mut self.seq,
                    out,
                    ty,
                    WithResponse {
                        response: &response,
                    },
                );
                return true;
            }
            StreamEvent::Error {
                kind,
                message,
                retry_at_unix_ms,
            } => {
                self.fail(out, kind, &failure_message(message, retry_at_unix_ms));
                return true;
            }
            // Server tools are offered by Messages clients only (see ChatOptions::server_tools).
            StreamEvent::Started { .. }
            | StreamEvent::Rerouted { .. }
            | StreamEvent::ServerBlock { .. }
            | StreamEvent::Citation { .. }
            | StreamEvent::Queued { .. } => {}
        }
        false
    }

    fn keepalive(&mut self, out: &mut BytesMut) {
        // A real event, not an SSE comment: Codex's idle timer (300 s) counts events, and an
        // event parser skips comments before anyone sees them. `response.in_progress` is one
        // the API defines and the SDKs' accumulators pass over.
        let response = self.meta.response(&self.model, &State::in_progress());
        emit(
            &mut self.seq,
            out,
            "response.in_progress",
            WithResponse {
                response: &response,
            },
        );
    }

    fn vanished(&mut self, out: &mut BytesMut) {
        self.fail(
            out,
            ErrorKind::Internal,
            "mythosd lost this request (a bug: see the daemon log)",
        );
    }
}

#[cfg(test)]
mod template_tests {
    use super::*;

    /// Text deltas are written from a template, made once per message item (the golden
    /// streams check the bytes are the same either way).
    #[test]
    fn text_deltas_go_through_a_template() {
        let (mut enc, _) = ResponsesEncoder::start(&Head::for_test(), Map::new());
        let mut out = BytesMut::new();
        enc.event(StreamEvent::TextDelta { text: "a".into() }, &mut out);
        enc.event(StreamEvent::TextDelta { text: "b".into() }, &mut out);
        assert!(enc.text_frame.as_ref().is_some_and(|(_, t)| t.is_some()));
        // Numbered in step with the frames serialized whole.
        let text = String::from_utf8(out.to_vec()).unwrap();
        let seqs: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| {
                serde_json::from_str::<Value>(d).unwrap()["sequence_number"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            seqs,
            (2..2 + seqs.len() as u64).collect::<Vec<_>>(),
            "{text}"
        );
    }
}
