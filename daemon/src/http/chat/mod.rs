//! `POST /v1/chat/completions`: the OpenAI Chat Completions API.

pub mod request;
pub mod stream;

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::errors::{ApiError, Dialect};
use super::relay::{self, openai_finish, openai_usage, Block};
use super::Front;

/// Serve one Chat Completions request, streaming or not.
pub async fn create(front: Arc<Front>, body: Bytes, stuck: super::listener::Stuck) -> Response {
    let arrival = super::Arrival::now(stuck);
    match serve(front, body, arrival).await {
        Ok(r) => r,
        Err(e) => e.into_response(Dialect::Openai),
    }
}

async fn serve(
    front: Arc<Front>,
    body: Bytes,
    arrival: super::Arrival,
) -> Result<Response, ApiError> {
    let parsed = super::parse_request(body.len(), move || {
        request::parse(&super::json_body(&body)?)
    })
    .await?;
    let mut headers = HeaderMap::new();
    let (mut routed, head) =
        super::begin(&front, parsed.chat, &parsed.model, arrival, &mut headers).await?;
    if parsed.stream {
        let (encoder, first) = stream::ChatEncoder::start(&head, parsed.include_usage);
        let encoder = encoder.legacy_functions(parsed.legacy_functions);
        super::sse_headers(&mut headers);
        let body = routed.into_body(first.freeze(), encoder).await;
        return Ok((StatusCode::OK, headers, body).into_response());
    }
    let (answer, done) = routed.collect().await?;
    let mut thinking = String::new();
    let mut tool_calls = Vec::new();
    for b in &answer.blocks {
        match b {
            Block::Thinking { text, .. } => thinking.push_str(text),
            Block::Tool { id, name, args } => tool_calls.push(json!({
                "id": id, "type": "function",
                "function": {"name": name, "arguments": if args.is_empty() { "{}" } else { args }},
            })),
            Block::Text(_)
            | Block::RedactedThinking(_)
            | Block::Refusal(_)
            | Block::Server(_)
            | Block::Citation(_) => {}
        }
    }
    let text = answer.text();
    let refusal = answer.refusal();
    // As the API answers: a refusal in place of content, content `null` beside it.
    let empty = text.is_empty() && (!tool_calls.is_empty() || !refusal.is_empty());
    let mut message = json!({
        "role": "assistant",
        "content": if empty { Value::Null } else { json!(text) },
        "refusal": if refusal.is_empty() { Value::Null } else { json!(refusal) },
    });
    if !thinking.is_empty() {
        message["reasoning_content"] = json!(thinking);
    }
    if parsed.legacy_functions {
        // One call, as `function_call` (the request asked for no parallel calls).
        if let Some(call) = tool_calls.first_mut() {
            message["function_call"] = call["function"].take();
        }
    } else if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let body = json!({
        "id": format!("chatcmpl-mythos-{}", head.record),
        "object": "chat.completion",
        "created": mythos_protocol::clock::now_unix_ms() / 1000,
        "model": done.model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "message": message, "logprobs": null,
                     "finish_reason": stream::legacy_finish(
                         openai_finish(&done.finish, answer.has_tools()),
                         parsed.legacy_functions,
                     )}],
        "usage": openai_usage(&done.usage),
    });
    relay::finished_headers(&mut headers, &done, routed.reroutes);
    Ok((StatusCode::OK, headers, axum::Json(body)).into_response())
}
