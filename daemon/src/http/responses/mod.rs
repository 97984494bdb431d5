//! `POST /v1/responses`: the OpenAI Responses API, the subset Codex CLI and the official SDKs
//! use. Stateless: every request carries the whole conversation (see [`request`]).

pub mod request;
pub mod stream;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::errors::{ApiError, Dialect};
use super::relay::{self, Answer, Block};
use super::Front;
use stream::{Item, Meta, State};

/// Serve one Responses request, streaming or not.
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
        let (encoder, first) = stream::ResponsesEncoder::start_with(
            &head,
            parsed.echo,
            parsed.custom_tools,
            parsed.local_shell,
        );
        super::sse_headers(&mut headers);
        let body = routed.into_body(first.freeze(), encoder).await;
        return Ok((StatusCode::OK, headers, body).into_response());
    }
    let (answer, done) = routed.collect().await?;
    let mut meta = Meta::new(&head, parsed.echo);
    meta.custom = parsed.custom_tools.clone();
    meta.local_shell = parsed.local_shell;
    let (status, incomplete) = stream::outcome(&done.finish);
    let items = items(&answer, head.record, &meta);
    // Only the item the limit cut short is incomplete, as in the stream.
    let last = items.len().saturating_sub(1);
    let state = State {
        status,
        output: items
            .iter()
            .enumerate()
            .map(|(k, i)| match status {
                "incomplete" if k == last => i.json("incomplete"),
                _ => i.json("completed"),
            })
            .collect(),
        usage: Some(&done.usage),
        error: serde_json::Value::Null,
        incomplete,
    };
    let body = meta.response(&done.model, &state);
    // The provider that finished may not be the one that started.
    relay::finished_headers(&mut headers, &done, routed.reroutes);
    Ok((StatusCode::OK, headers, axum::Json(body)).into_response())
}

/// A whole answer as output items, numbered as the stream would number them.
fn items(answer: &Answer, record: u64, meta: &Meta) -> Vec<Item> {
    let mut out = Vec::with_capacity(answer.blocks.len());
    for b in &answer.blocks {
        let n = out.len();
        out.push(match b {
            Block::Thinking { text, signature } => {
                // Unsummarised thinking is dropped, unless it carries a signature that
                // Anthropic needs back.
                if text.is_empty() && signature.is_none() {
                    continue;
                }
                Item::Reasoning {
                    id: Item::id("rs", record, n),
                    text: text.clone(),
                    signature: signature.clone(),
                }
            }
            // As in the stream: nothing a Responses client could use.
            Block::RedactedThinking(_) | Block::Server(_) | Block::Citation(_) => continue,
            Block::Text(text) => Item::Message {
                id: Item::id("msg", record, n),
                text: text.clone(),
            },
            Block::Refusal(text) => Item::Refusal {
                id: Item::id("msg", record, n),
                text: text.clone(),
            },
            Block::Tool { id, name, args } => {
                let kind = meta.call_kind(name);
                Item::Call {
                    kind,
                    id: Item::id(kind.prefix(), record, n),
                    call_id: id.clone(),
                    name: name.clone(),
                    args: if args.is_empty() {
                        "{}".into()
                    } else {
                        args.clone()
                    },
                }
            }
        });
    }
    out
}
