//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: the Anthropic Messages API.

pub mod request;
pub mod stream;

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::errors::{ApiError, Dialect};
use super::relay::{self, anthropic_stop, anthropic_usage, args_value, stop_sequence, Block};
use super::Front;
use crate::router::estimate_input_tokens;

/// Most beta names one request may pass on, and their longest name.
const MAX_BETAS: usize = 16;
const MAX_BETA_LEN: usize = 64;

/// The beta features a client asked for in `anthropic-beta` (comma-separated, possibly over
/// several header lines), for Anthropic providers. Only names of the shape Anthropic uses
/// (`context-1m-2025-08-07`) are kept, a bounded number of them.
pub fn betas(headers: &HeaderMap) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for value in headers.get_all("anthropic-beta") {
        let Ok(text) = value.to_str() else { continue };
        for name in text.split(',').map(str::trim) {
            let shaped = !name.is_empty()
                && name.len() <= MAX_BETA_LEN
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if shaped && out.len() < MAX_BETAS && !out.iter().any(|b| b == name) {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// Serve one Messages request, streaming or not.
pub async fn create(
    front: Arc<Front>,
    headers: HeaderMap,
    body: Bytes,
    stuck: super::listener::Stuck,
) -> Response {
    let arrival = super::Arrival::now(stuck);
    let betas = betas(&headers);
    match serve(front, body, betas, arrival).await {
        Ok(r) => r,
        Err(e) => e.into_response(Dialect::Anthropic),
    }
}

async fn serve(
    front: Arc<Front>,
    body: Bytes,
    betas: Vec<String>,
    arrival: super::Arrival,
) -> Result<Response, ApiError> {
    let mut parsed = super::parse_request(body.len(), move || {
        request::parse(&super::json_body(&body)?)
    })
    .await?;
    parsed.chat.options.anthropic_beta = betas;
    let estimate = estimate_input_tokens(&parsed.chat);
    let thinking = parsed.chat.options.thinking.is_some();
    let mut headers = HeaderMap::new();
    let (mut routed, head) =
        super::begin(&front, parsed.chat, &parsed.model, arrival, &mut headers).await?;
    if parsed.stream {
        let (encoder, first) = stream::MessagesEncoder::start(&head, estimate, thinking);
        super::sse_headers(&mut headers);
        let body = routed.into_body(first.freeze(), encoder).await;
        return Ok((StatusCode::OK, headers, body).into_response());
    }
    let (answer, done) = routed.collect().await?;
    let mut content: Vec<serde_json::Value> = Vec::new();
    // Citations come before the text they source; one left at the end goes to the last text.
    let mut citations: Vec<serde_json::Value> = Vec::new();
    for b in &answer.blocks {
        if matches!(b, Block::Thinking { .. } | Block::RedactedThinking(_)) && !thinking {
            continue;
        }
        if let Block::Citation(json) = b {
            citations.extend(serde_json::from_str::<serde_json::Value>(json).ok());
            continue;
        }
        if let Block::Text(t) = b {
            if !citations.is_empty() {
                content.push(json!({"type": "text", "text": t,
                    "citations": std::mem::take(&mut citations)}));
                continue;
            }
        }
        content.push(match b {
            Block::Thinking { text, signature } => json!({"type": "thinking", "thinking": text,
                "signature": signature.clone().unwrap_or_default()}),
            // The Messages API has no refusal block: the words are the answer's text, and
            // its stop reason says it refused.
            Block::Text(t) | Block::Refusal(t) => json!({"type": "text", "text": t}),
            Block::RedactedThinking(data) => json!({"type": "redacted_thinking", "data": data}),
            Block::Tool { id, name, args } => {
                json!({"type": "tool_use", "id": id, "name": name, "input": args_value(args)})
            }
            Block::Server(json) => match serde_json::from_str(json) {
                Ok(block) => block,
                Err(_) => continue,
            },
            Block::Citation(_) => continue,
        });
    }
    if !citations.is_empty() {
        if let Some(last) = content.iter_mut().rev().find(|b| b["type"] == "text") {
            match last["citations"].as_array_mut() {
                Some(list) => list.extend(citations),
                None => last["citations"] = json!(citations),
            }
        }
    }
    let body = json!({
        "id": format!("msg_mythos_{}", head.record),
        "type": "message",
        "role": "assistant",
        "model": done.model,
        "content": content,
        "stop_reason": anthropic_stop(
            relay::refusal_finish(&done.finish, !answer.refusal().is_empty()),
            answer.has_tools(),
        ),
        "stop_sequence": stop_sequence(&done.finish).filter(|_| !answer.has_tools()),
        "usage": anthropic_usage(&done.usage),
    });
    // The provider that finished may not be the one that started.
    relay::finished_headers(&mut headers, &done, routed.reroutes);
    Ok((StatusCode::OK, headers, axum::Json(body)).into_response())
}

/// Count a request's input tokens locally: system, tools and messages, by the same estimate the
/// router uses for quotas. No provider is asked, so agents that count before every turn (in
/// bursts of dozens a second) cost nothing.
pub async fn count_tokens(front: Arc<Front>, body: Bytes) -> Response {
    let result = super::parse_request(body.len(), move || {
        let mut value: Value = super::json_body(&body)?;
        // count_tokens takes no max_tokens; the translator does not need one either.
        if let Some(o) = value.as_object_mut() {
            o.entry("max_tokens").or_insert(json!(1));
        }
        let parsed = request::parse(&value)?;
        Ok::<_, ApiError>(estimate_input_tokens(&parsed.chat))
    })
    .await;
    let _ = &front;
    match result {
        Ok(n) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"input_tokens": n}).to_string(),
        )
            .into_response(),
        Err(e) => e.into_response(Dialect::Anthropic),
    }
}
