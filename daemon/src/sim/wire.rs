//! What the simulated providers put on the wire: error bodies and streaming plans in the
//! Anthropic, OpenAI and Gemini formats (shapes as in the recorded transcripts of the official
//! SDKs).

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mythos_protocol::SimFault;
use serde_json::{json, Value};

use super::answer::{answer_for, chunk_answer, json_answer_for};
use super::checks::{self, Features};
use super::{Flavor, SimOptions};
use crate::provider::continuation::CONTINUE_INSTRUCTION;

/// One step of a streamed response.
pub enum Step {
    /// Write these bytes.
    Send(Bytes),
    /// Wait.
    Sleep(Duration),
    /// The terminator was sent.
    Complete,
    /// The script ended without a terminator (scripted failure).
    Finished,
    /// Never send anything again.
    Stall,
    /// Send a keep-alive comment every period, forever.
    KeepAliveForever,
    /// Drop the connection mid-body.
    Cut,
}

/// How to answer.
pub enum Plan {
    /// A complete (error) response.
    Respond(Response),
    /// A 200 with this streamed body.
    Stream(Vec<Step>),
}

/// An error response in the flavour's format.
pub fn error(
    flavor: Flavor,
    status: u16,
    ty: &str,
    msg: &str,
    retry_after_ms: Option<u64>,
) -> Response {
    if flavor == Flavor::Gemini {
        return google_error(status, msg, retry_after_ms);
    }
    let body = match flavor {
        Flavor::Anthropic => json!({"type": "error", "error": {"type": ty, "message": msg}}),
        _ => json!({"error": {"message": msg, "type": ty, "param": null, "code": null}}),
    };
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(ms) = retry_after_ms {
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&ms.div_ceil(1000).to_string()) {
            h.insert("retry-after", v);
        }
        if let Ok(v) = HeaderValue::from_str(&ms.to_string()) {
            h.insert("retry-after-ms", v);
        }
    }
    resp
}

/// Google's canonical status name for an HTTP status.
fn google_status(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 | 529 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// A Google API error: no quota headers, the wait in a `RetryInfo` detail ("7s").
fn google_error(status: u16, msg: &str, retry_after_ms: Option<u64>) -> Response {
    let mut body =
        json!({"error": {"code": status, "message": msg, "status": google_status(status)}});
    if let Some(ms) = retry_after_ms {
        body["error"]["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{}s", ms as f64 / 1000.0),
        }]);
    }
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

/// A `429` for a spent quota, with the wait in `retry-after` (whole seconds) and
/// `retry-after-ms`.
pub fn rate_limited(flavor: Flavor, wait: Duration) -> Response {
    let ty = if flavor == Flavor::Anthropic {
        "rate_limit_error"
    } else {
        "rate_limit_exceeded"
    };
    let ms = (wait.as_millis() as u64).max(1);
    error(
        flavor,
        429,
        ty,
        "Number of requests has exceeded your rate limit. Please try again later.",
        Some(ms),
    )
}

/// What a request costs against quotas: (input tokens, `max_tokens`), counting words as
/// tokens.
pub fn cost(req: &Value) -> (u64, u64) {
    let mut words = req["system"]
        .as_str()
        .map_or(0, |s| s.split_whitespace().count());
    for m in req["messages"].as_array().into_iter().flatten() {
        words += text_of(&m["content"]).split_whitespace().count();
    }
    let max = req["max_tokens"]
        .as_u64()
        .or_else(|| req["max_completion_tokens"].as_u64())
        .unwrap_or(4096);
    (words as u64, max)
}

fn status_error(flavor: Flavor, code: u16) -> Response {
    let anthropic = flavor == Flavor::Anthropic;
    if code == 502 {
        // What a proxy in front of the provider sends: HTML, not the provider's JSON.
        return (
            StatusCode::BAD_GATEWAY,
            [("content-type", "text/html")],
            "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>",
        )
            .into_response();
    }
    let (ty, msg) = match code {
        400 => ("invalid_request_error", "simulated bad request"),
        401 => ("authentication_error", "simulated invalid API key"),
        403 => ("permission_error", "simulated permission denied"),
        404 => ("not_found_error", "simulated unknown model"),
        429 => (
            if anthropic {
                "rate_limit_error"
            } else {
                "rate_limit_exceeded"
            },
            "simulated rate limit",
        ),
        529 => ("overloaded_error", "Overloaded"),
        _ => (
            if anthropic {
                "api_error"
            } else {
                "server_error"
            },
            "simulated server error",
        ),
    };
    error(flavor, code, ty, msg, None)
}

/// Text of a message's content: a string, or the text blocks of an array.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect(),
        _ => String::new(),
    }
}

/// Decide the response to a request and a fault.
pub fn plan(opts: &SimOptions, req: &Value, fault: Option<SimFault>, key: &str) -> Plan {
    let flavor = opts.flavor;
    let echo = format!("invalid request; headers were {{\"authorization\": \"Bearer {key}\", \"x-api-key\": \"{key}\"}}");
    match &fault {
        Some(SimFault::EchoKey { in_stream: false }) => {
            return Plan::Respond(error(flavor, 400, "invalid_request_error", &echo, None));
        }
        Some(SimFault::RateLimit { retry_after_ms }) => {
            let ty = if flavor == Flavor::Anthropic {
                "rate_limit_error"
            } else {
                "rate_limit_exceeded"
            };
            return Plan::Respond(error(
                flavor,
                429,
                ty,
                "simulated rate limit: slow down",
                Some(*retry_after_ms),
            ));
        }
        Some(f @ (SimFault::Overloaded | SimFault::OverloadedFor { .. })) => {
            let after = match f {
                SimFault::OverloadedFor { retry_after_ms } => Some(*retry_after_ms),
                _ => None,
            };
            return Plan::Respond(match flavor {
                Flavor::Anthropic => error(flavor, 529, "overloaded_error", "Overloaded", after),
                Flavor::Gemini => error(
                    flavor,
                    503,
                    "",
                    "The model is overloaded. Please try again later.",
                    after,
                ),
                _ => error(
                    flavor,
                    503,
                    "server_error",
                    "The server is overloaded",
                    after,
                ),
            });
        }
        Some(SimFault::Status { code }) => return Plan::Respond(status_error(flavor, *code)),
        _ => {}
    }
    let features: Features = match checks::check(flavor, req) {
        Ok(f) => f,
        Err(msg) => {
            return Plan::Respond(error(flavor, 400, "invalid_request_error", &msg, None));
        }
    };

    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let texts: Vec<(String, String)> = messages
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or("").to_string(),
                text_of(&m["content"]),
            )
        })
        .collect();
    let input_tokens: usize = texts
        .iter()
        .map(|(_, t)| t.split_whitespace().count())
        .sum::<usize>()
        + req["system"]
            .as_str()
            .map_or(0, |s| s.split_whitespace().count());

    // Find the prompt and, for a continuation, the partial answer to extend.
    let mut partial = String::new();
    let mut upto = texts.len();
    match flavor {
        Flavor::Anthropic => {
            if let Some((role, text)) = texts.last() {
                if role == "assistant" {
                    // The final block, when it is text (a continued search's turn may end with
                    // its results).
                    let last = match messages.last().map(|m| &m["content"]) {
                        Some(Value::Array(blocks)) => {
                            blocks.last().and_then(|b| b["text"].as_str()).unwrap_or("")
                        }
                        _ => text.as_str(),
                    };
                    if last.trim_end() != last {
                        return Plan::Respond(error(
                            flavor,
                            400,
                            "invalid_request_error",
                            "messages: final assistant content cannot end with trailing whitespace",
                            None,
                        ));
                    }
                    partial = text.clone();
                    upto -= 1;
                }
            }
        }
        _ => {
            let n = texts.len();
            if n >= 2
                && texts[n - 1].0 == "user"
                && texts[n - 1].1 == CONTINUE_INSTRUCTION
                && texts[n - 2].0 == "assistant"
            {
                partial = texts[n - 2].1.clone();
                upto -= 2;
            }
        }
    }
    let prompt = texts[..upto]
        .iter()
        .rev()
        .find(|(r, _)| r == "user")
        .map(|(_, t)| t.clone())
        .unwrap_or_default();
    let json = checks::wanted_json(req);
    let mut full = match &json {
        Some(schema) => json_answer_for(&prompt, schema),
        None => answer_for(&prompt),
    };
    if opts.answer_repeat > 1 && json.is_none() {
        full = vec![full; opts.answer_repeat].join(" ");
    }
    if features.images > 0 && json.is_none() {
        // Says the images arrived; the same count gives the same text on every flavour.
        full = format!("I see {} image(s). {full}", features.images);
    }
    if features.documents > 0 && json.is_none() {
        full = format!("I read {} document(s). {full}", features.documents);
    }
    let mut rest = full
        .strip_prefix(partial.as_str())
        .unwrap_or(&full)
        .to_string();
    let c = opts.continuation;
    if c.repeat_words > 0 && !partial.is_empty() {
        // Repeat the last words shown, as chat models asked to continue often do.
        let pieces = chunk_answer(&partial);
        let from = pieces.len().saturating_sub(c.repeat_words);
        let mut repeat: String = pieces[from..].concat();
        if c.vary {
            repeat = repeat
                .split_whitespace()
                .map(|w| {
                    let mut cs = w.chars();
                    cs.next()
                        .map(|f| f.to_uppercase().chain(cs).collect::<String>())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("  ");
            repeat.insert(0, ' ');
        }
        rest = format!("{repeat}{rest}");
    }
    let tool = req["tools"]
        .as_array()
        .and_then(|t| t.first())
        .and_then(|t| {
            t["name"]
                .as_str()
                .or_else(|| t["function"]["name"].as_str())
                .map(str::to_string)
        });
    // A turn that brings tool results back gets an answer, not the same call again (OpenAI
    // format: the results are `tool` messages after the user's prompt).
    let after_results = texts[..upto].last().is_some_and(|(r, _)| r == "tool");
    let tool = tool.filter(|_| prompt.starts_with("call:") && !after_results);
    // OpenAI's models decline in a field of their own (`delta.refusal`, content `null`), most
    // often when a response format was asked: a prompt that says `refuse` gets one.
    let refusal = flavor == Flavor::OpenAi && tool.is_none() && prompt.contains("refuse");
    if refusal {
        full = REFUSAL.to_string();
        rest = full
            .strip_prefix(partial.as_str())
            .unwrap_or(&full)
            .to_string();
    }

    // Reasoning streamed before the answer: Anthropic when thinking is on; DeepSeek always
    // for a fresh plain answer (a demo nicety), and before tool calls too in reasoning mode.
    let anthropic_thinking = flavor == Flavor::Anthropic && features.thinking;
    let deepseek_reasoning =
        flavor == Flavor::DeepSeek && partial.is_empty() && (tool.is_none() || features.reasoning);
    let gemini_thoughts = flavor == Flavor::Gemini && req["gemini_thoughts"] == true;
    let redacted = anthropic_thinking && prompt.contains("redact");
    // Offered Anthropic's web search, a fresh answer searches for the prompt first (not a
    // continuation: it has its search in its prefill).
    let searches = flavor == Flavor::Anthropic
        && tool.is_none()
        && !anthropic_thinking
        && upto == texts.len()
        && req["tools"].as_array().is_some_and(|tools| {
            tools.iter().any(|t| {
                t["type"]
                    .as_str()
                    .is_some_and(|ty| ty.starts_with("web_search_"))
            })
        });
    let w = Writer {
        flavor,
        model: opts.model.clone(),
        id: format!("{}-{}", opts.name, fastrand::u64(..)),
        include_usage: req["stream_options"]["include_usage"] == true,
        block: if searches {
            2
        } else {
            u32::from(anthropic_thinking) + u32::from(redacted)
        },
        redacted,
        refusal,
        web_search: searches.then(|| prompt.to_string()),
    };
    let mut steps = Vec::new();
    if let Some(SimFault::KeepAliveOnly) = fault {
        steps.push(Step::KeepAliveForever);
        return Plan::Stream(steps);
    }
    // With reasoning first, the answer's block (Anthropic) or tool call (OpenAI) opens after it.
    let late_open = anthropic_thinking || searches || (deepseek_reasoning && tool.is_some());
    steps.extend(
        w.preamble(input_tokens, tool.as_deref(), late_open)
            .into_iter()
            .map(Step::Send),
    );
    if let Some(SimFault::StallBeforeFirstToken) = fault {
        steps.push(Step::Stall);
        return Plan::Stream(steps);
    }
    // The wait for the first token; DeepSeek fills it with keep-alive comments.
    let mut wait = opts.first_token_delay;
    if flavor == Flavor::DeepSeek && !opts.keep_alive_every.is_zero() {
        while wait > opts.keep_alive_every {
            steps.push(Step::Sleep(opts.keep_alive_every));
            steps.push(Step::Send(Bytes::from_static(b": keep-alive\n\n")));
            wait -= opts.keep_alive_every;
        }
    }
    steps.push(Step::Sleep(wait));
    const THOUGHTS: [&str; 3] = ["Considering", " the", " question."];
    if deepseek_reasoning {
        for t in THOUGHTS {
            steps.push(Step::Send(
                w.openai_delta(json!({"content": null, "reasoning_content": t})),
            ));
        }
    }
    if gemini_thoughts {
        for t in THOUGHTS {
            steps.push(Step::Send(
                w.gemini_chunk(json!([{"text": t, "thought": true}]), None),
            ));
        }
    }
    if anthropic_thinking {
        for t in THOUGHTS {
            steps.push(Step::Send(w.thinking(t)));
        }
        steps.push(Step::Send(
            w.signature(&checks::signature(&THOUGHTS.concat())),
        ));
    }
    if late_open {
        steps.extend(w.open_answer(tool.as_deref()).into_iter().map(Step::Send));
    }

    let pieces: Vec<Bytes> = match &tool {
        // Gemini sends a function call whole, in one part.
        Some(name) if flavor == Flavor::Gemini => vec![w.gemini_chunk(
            json!([{"functionCall": {"name": name, "args": {"text": full}}}]),
            None,
        )],
        Some(_) => {
            let args = json!({"text": full}).to_string();
            let mut frames = Vec::new();
            let mut start = 0;
            while start < args.len() {
                let mut end = (start + 10).min(args.len());
                while !args.is_char_boundary(end) {
                    end += 1;
                }
                frames.push(w.tool_args(&args[start..end]));
                start = end;
            }
            frames
        }
        None => chunk_answer(&rest).into_iter().map(|c| w.text(c)).collect(),
    };
    let cut_at = match &fault {
        Some(
            SimFault::StallAfter { tokens }
            | SimFault::DisconnectAfter { tokens }
            | SimFault::MalformedAfter { tokens }
            | SimFault::ErrorEventAfter { tokens },
        ) => Some(*tokens as usize),
        Some(SimFault::EchoKey { in_stream: true }) => Some(3),
        _ => None,
    };
    let output_tokens = pieces.len();
    for (i, piece) in pieces.into_iter().enumerate() {
        if cut_at == Some(i) {
            break;
        }
        if i > 0 {
            steps.push(Step::Sleep(opts.token_delay));
        }
        steps.push(Step::Send(piece));
    }
    match fault {
        Some(SimFault::StallAfter { .. }) => steps.push(Step::Stall),
        Some(SimFault::DisconnectAfter { .. }) => {
            // Let the frames already written reach the client before the connection dies (an
            // error from the body makes hyper drop its unflushed buffer too).
            steps.push(Step::Sleep(Duration::from_millis(20)));
            steps.push(Step::Cut);
        }
        Some(SimFault::MalformedAfter { .. }) => {
            steps.push(Step::Send(Bytes::from_static(
                b"data: {\"type\":\"content_block_delta\",\n\n",
            )));
            steps.push(Step::Finished);
        }
        Some(SimFault::ErrorEventAfter { .. }) => {
            steps.push(Step::Send(w.error_event()));
            steps.push(Step::Finished);
        }
        Some(SimFault::EchoKey { in_stream: true }) => {
            steps.push(Step::Send(w.echo_event(&echo)));
            steps.push(Step::Finished);
        }
        Some(SimFault::CutBeforeTerminator) => {
            let mut last = w.epilogue(input_tokens, output_tokens, tool.is_some());
            // Gemini has no terminator: its last chunk carries the finish reason.
            if !w.gemini() {
                last.pop();
            }
            steps.extend(last.into_iter().map(Step::Send));
            steps.push(Step::Sleep(Duration::from_millis(20)));
            steps.push(Step::Cut);
        }
        _ => {
            steps.extend(
                w.epilogue(input_tokens, output_tokens, tool.is_some())
                    .into_iter()
                    .map(Step::Send),
            );
            if !opts.end_linger.is_zero() {
                steps.push(Step::Sleep(opts.end_linger));
            }
            steps.push(Step::Complete);
        }
    }
    Plan::Stream(steps)
}

/// Frame builder for one response.
struct Writer {
    flavor: Flavor,
    model: String,
    id: String,
    include_usage: bool,
    /// Anthropic content-block index of the answer (1 after a thinking block, 2 after a
    /// redacted one too).
    block: u32,
    /// Anthropic: a `redacted_thinking` block follows the thinking (a prompt that says
    /// `redact`), as when the provider's safety systems flag some of the reasoning.
    redacted: bool,
    /// OpenAI: the answer is a refusal, streamed in `delta.refusal`.
    refusal: bool,
    /// Anthropic: the request offered the web search server tool; the answer searches first
    /// (a `server_tool_use` block, then its `web_search_tool_result`), for this query.
    web_search: Option<String>,
}

/// What the OpenAI-flavour simulator says when a prompt asks it to `refuse`: the words of the
/// refusal recorded from the live API in openai-python's test suite.
pub const REFUSAL: &str = "I'm sorry, I can't assist with that request.";

/// The page a simulated web search for `query` finds.
fn web_search_url(query: &str) -> String {
    let slug: String = query
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("https://example.com/{slug}")
}

/// The results block of a simulated web search for `query`.
pub fn web_search_result(tool_use_id: &str, query: &str) -> Value {
    json!({"type": "web_search_tool_result", "tool_use_id": tool_use_id, "content": [
        {"type": "web_search_result", "url": web_search_url(query),
         "title": format!("About {query}"), "encrypted_content": "EqgfCioIARgBIiQ3YTAw",
         "page_age": "April 30, 2025"}]})
}

fn sse(event: &str, data: Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn data(v: Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

impl Writer {
    fn anthropic(&self) -> bool {
        self.flavor == Flavor::Anthropic
    }

    fn gemini(&self) -> bool {
        self.flavor == Flavor::Gemini
    }

    /// A `GenerateContentResponse` with these parts for candidate 0, and the usage and finish
    /// reason of the last chunk when given.
    fn gemini_chunk(&self, parts: Value, end: Option<(&str, usize, usize)>) -> Bytes {
        let mut cand = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        let mut v = json!({"candidates": [], "modelVersion": self.model, "responseId": self.id});
        if let Some((reason, input, output)) = end {
            cand["finishReason"] = json!(reason);
            v["usageMetadata"] = json!({"promptTokenCount": input,
                "candidatesTokenCount": output, "totalTokenCount": input + output});
        }
        v["candidates"] = json!([cand]);
        // Framed as the API frames it.
        Bytes::from(format!("data: {v}\r\n\r\n"))
    }

    fn created() -> u64 {
        mythos_protocol::clock::now_unix_ms() / 1000
    }

    fn openai_chunk(&self, choices: Value) -> Bytes {
        data(json!({
            "id": format!("chatcmpl-{}", self.id),
            "object": "chat.completion.chunk",
            "created": Self::created(),
            "model": self.model,
            "system_fingerprint": "fp_sim",
            "choices": choices,
        }))
    }

    fn openai_delta(&self, delta: Value) -> Bytes {
        self.openai_chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]),
        )
    }

    /// Anthropic's block for the answer: a tool call or text.
    fn answer_block(&self, tool: Option<&str>) -> Value {
        if let Some(name) = tool {
            json!({"type": "tool_use", "id": format!("toolu_{}", self.id), "name": name, "input": {}})
        } else {
            json!({"type": "text", "text": ""})
        }
    }

    fn openai_tool_start(&self, name: &str, role: bool) -> Bytes {
        let mut delta = json!({"content": null, "tool_calls": [
            {"index": 0, "id": format!("call_{}", self.id), "type": "function",
             "function": {"name": name, "arguments": ""}}]});
        if role {
            delta["role"] = json!("assistant");
            delta["refusal"] = Value::Null;
        }
        self.openai_delta(delta)
    }

    /// Frames before the first token. With `late_open`, reasoning comes first: Anthropic opens
    /// a thinking block instead of the answer's, OpenAI holds back the tool call.
    fn preamble(&self, input_tokens: usize, tool: Option<&str>, late_open: bool) -> Vec<Bytes> {
        if self.gemini() {
            // Gemini sends nothing before the first content.
            Vec::new()
        } else if self.anthropic() {
            let block = if self.web_search.is_some() {
                json!({"type": "server_tool_use", "id": format!("srvtoolu_{}", self.id),
                    "name": "web_search", "input": {}})
            } else if late_open {
                json!({"type": "thinking", "thinking": "", "signature": ""})
            } else {
                self.answer_block(tool)
            };
            vec![
                sse(
                    "message_start",
                    json!({"type": "message_start", "message": {
                    "id": format!("msg_{}", self.id), "type": "message", "role": "assistant",
                    "content": [], "model": self.model, "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
                ),
                sse(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                    "content_block": block}),
                ),
                Bytes::from_static(b"event: ping\ndata: {\"type\": \"ping\"}\n\n"),
            ]
        } else if let Some(name) = tool.filter(|_| !late_open) {
            vec![self.openai_tool_start(name, true)]
        } else if tool.is_some() {
            vec![self.openai_delta(json!({"role": "assistant", "content": null, "refusal": null}))]
        } else if self.refusal {
            vec![self.openai_delta(json!({"role": "assistant", "content": null, "refusal": ""}))]
        } else {
            vec![self.openai_delta(json!({"role": "assistant", "content": "", "refusal": null}))]
        }
    }

    /// After reasoning: Anthropic closes the thinking block and opens the answer's; OpenAI
    /// starts the held-back tool call.
    fn open_answer(&self, tool: Option<&str>) -> Vec<Bytes> {
        if self.gemini() {
            Vec::new()
        } else if let Some(query) = self.web_search.as_deref().filter(|_| self.anthropic()) {
            // As Anthropic streams a search: the query in one delta, then the results whole.
            let id = format!("srvtoolu_{}", self.id);
            let input = json!({"query": query}).to_string();
            vec![
                sse(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": input}}),
                ),
                sse(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                sse(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 1, "content_block":
                        web_search_result(&id, query)}),
                ),
                sse(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 1}),
                ),
                sse(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": self.block,
                    "content_block": self.answer_block(tool)}),
                ),
                // The answer cites what it found, before the text it sources.
                sse(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": self.block,
                    "delta": {"type": "citations_delta", "citation":
                        {"type": "web_search_result_location", "url": web_search_url(query),
                         "title": format!("About {query}"), "encrypted_index": "Eo8BCioIAhgB",
                         "cited_text": query}}}),
                ),
            ]
        } else if self.anthropic() {
            let mut frames = vec![sse(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            )];
            if self.redacted {
                // Whole in its start event, as Anthropic sends it.
                frames.push(sse(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 1, "content_block":
                        {"type": "redacted_thinking", "data": checks::redacted_data()}}),
                ));
                frames.push(sse(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 1}),
                ));
            }
            frames.push(sse(
                "content_block_start",
                json!({"type": "content_block_start", "index": self.block,
                "content_block": self.answer_block(tool)}),
            ));
            frames
        } else {
            tool.map(|name| self.openai_tool_start(name, false))
                .into_iter()
                .collect()
        }
    }

    fn thinking(&self, t: &str) -> Bytes {
        sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "thinking_delta", "thinking": t}}),
        )
    }

    fn signature(&self, sig: &str) -> Bytes {
        sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "signature_delta", "signature": sig}}),
        )
    }

    fn text(&self, t: &str) -> Bytes {
        if self.gemini() {
            self.gemini_chunk(json!([{"text": t}]), None)
        } else if self.anthropic() {
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": self.block,
                "delta": {"type": "text_delta", "text": t}}),
            )
        } else if self.refusal {
            self.openai_delta(json!({"refusal": t}))
        } else {
            self.openai_delta(json!({"content": t}))
        }
    }

    fn tool_args(&self, fragment: &str) -> Bytes {
        if self.anthropic() {
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": self.block,
                "delta": {"type": "input_json_delta", "partial_json": fragment}}),
            )
        } else {
            self.openai_delta(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
            )
        }
    }

    fn error_event(&self) -> Bytes {
        if self.gemini() {
            data(
                json!({"error": {"code": 500, "message": "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
                "status": "INTERNAL"}}),
            )
        } else if self.anthropic() {
            Bytes::from_static(
                b"event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n",
            )
        } else {
            data(
                json!({"error": {"message": "The server had an error while processing your request.",
                "type": "server_error", "param": null, "code": null}}),
            )
        }
    }

    /// An in-stream `api_error` whose message is `text`.
    fn echo_event(&self, text: &str) -> Bytes {
        if self.gemini() {
            data(json!({"error": {"code": 500, "message": text, "status": "INTERNAL"}}))
        } else if self.anthropic() {
            sse(
                "error",
                json!({"type": "error", "error": {"type": "api_error", "message": text}}),
            )
        } else {
            data(
                json!({"error": {"message": text, "type": "server_error", "param": null, "code": null}}),
            )
        }
    }

    fn epilogue(&self, input_tokens: usize, output_tokens: usize, tool: bool) -> Vec<Bytes> {
        if self.gemini() {
            // No terminator event: the last chunk carries the finish reason (STOP for a call
            // too) and the usage, and then the body ends.
            vec![self.gemini_chunk(
                json!([{"text": ""}]),
                Some(("STOP", input_tokens, output_tokens)),
            )]
        } else if self.anthropic() {
            let mut usage = json!({"output_tokens": output_tokens});
            if self.web_search.is_some() {
                // As Anthropic counts a search, billed apart from the tokens.
                usage["server_tool_use"] = json!({"web_search_requests": 1});
            }
            vec![
                sse(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": self.block}),
                ),
                sse(
                    "message_delta",
                    json!({"type": "message_delta",
                    "delta": {"stop_reason": if tool { "tool_use" } else { "end_turn" }, "stop_sequence": null},
                    "usage": usage}),
                ),
                sse("message_stop", json!({"type": "message_stop"})),
            ]
        } else {
            let mut v = vec![
                self.openai_chunk(json!([{"index": 0, "delta": {}, "logprobs": null,
                "finish_reason": if tool { "tool_calls" } else { "stop" }}])),
            ];
            if self.include_usage {
                v.push(data(json!({
                    "id": format!("chatcmpl-{}", self.id), "object": "chat.completion.chunk",
                    "created": Self::created(), "model": self.model, "choices": [],
                    "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                              "total_tokens": input_tokens + output_tokens}})));
            }
            v.push(Bytes::from_static(b"data: [DONE]\n\n"));
            v
        }
    }
}
