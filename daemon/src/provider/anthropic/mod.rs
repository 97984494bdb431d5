//! Anthropic Messages API: request body and headers. The stream decoder is in [`stream`].

pub mod stream;

use mythos_protocol::{ContentBlock, ErrorKind, Role};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

use super::{key_or_empty, secret_header, ProviderError, UpstreamRequest};
use crate::config::ProviderConfig;

/// API version header value; the streaming event format used here is stable under it.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// URL, headers and JSON body of a streamed Messages request.
pub fn build(
    cfg: &ProviderConfig,
    req: &UpstreamRequest<'_>,
) -> Result<(String, HeaderMap, Vec<u8>), ProviderError> {
    let url = format!("{}/v1/messages", cfg.base_url.trim_end_matches('/'));
    let mut headers = HeaderMap::new();
    headers.insert(
        "anthropic-version",
        HeaderValue::from_static(ANTHROPIC_VERSION),
    );
    secret_header(
        &mut headers,
        "x-api-key",
        key_or_empty(cfg.api_key.as_ref()).to_string(),
    );

    let mut messages = Vec::with_capacity(req.chat.messages.len() + 1);
    for m in &req.chat.messages {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        let mut content = Vec::with_capacity(m.content.len());
        for block in &m.content {
            content.push(match block {
                ContentBlock::Text { text } => json!({"type": "text", "text": text}),
                ContentBlock::ToolUse {
                    id,
                    name,
                    input_json,
                } => json!({"type": "tool_use", "id": id, "name": name,
                            "input": parse_json(input_json, "tool_use input")?}),
                ContentBlock::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                    ..
                } => json!({"type": "tool_result", "tool_use_id": tool_use_id,
                            "content": content, "is_error": is_error}),
                _ => continue,
            });
        }
        messages.push(json!({"role": role, "content": content}));
    }
    if let Some(prefill) = req.prefill {
        // The API rejects a final assistant turn ending in whitespace; the router strips the
        // trimmed part from the start of the continuation so nothing is duplicated or lost.
        let trimmed = prefill.trim_end();
        if !trimmed.is_empty() {
            messages.push(json!({"role": "assistant", "content": trimmed}));
        }
    }

    let mut body = json!({
        "model": req.model,
        "max_tokens": req.max_tokens,
        "stream": true,
        "messages": messages,
    });
    if let Some(system) = &req.chat.system {
        body["system"] = json!(system);
    }
    if let Some(t) = req.chat.temperature {
        body["temperature"] = json!(t);
    }
    if !req.chat.tools.is_empty() {
        let mut tools = Vec::with_capacity(req.chat.tools.len());
        for t in &req.chat.tools {
            tools.push(json!({
                "name": t.name,
                "description": t.description,
                "input_schema": parse_json(&t.input_schema_json, "tool input schema")?,
            }));
        }
        body["tools"] = Value::Array(tools);
    }
    let bytes = serde_json::to_vec(&body)
        .map_err(|e| ProviderError::new(ErrorKind::Internal, e.to_string()))?;
    Ok((url, headers, bytes))
}

/// Parse JSON text the client sent, failing the request (not the provider) if it is invalid.
pub(crate) fn parse_json(text: &str, what: &str) -> Result<Value, ProviderError> {
    serde_json::from_str(text).map_err(|e| {
        ProviderError::new(
            ErrorKind::BadRequest,
            format!("invalid JSON in {what}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Api, Secret};
    use mythos_protocol::{ChatRequest, Message, ToolSpec};

    fn cfg() -> ProviderConfig {
        ProviderConfig {
            api_key: Some(Secret::new("sk-ant-secret")),
            price_input_per_mtok: 3.0,
            price_output_per_mtok: 15.0,
            ..ProviderConfig::new(
                "anthropic",
                Api::Anthropic,
                "http://127.0.0.1:1/",
                "claude-x",
            )
        }
    }

    #[test]
    fn body_with_prefill_tools_and_system() {
        let mut chat = ChatRequest::user_text(1, "hi");
        chat.system = Some("be brief".into());
        chat.tools.push(ToolSpec {
            name: "read".into(),
            description: "read a file".into(),
            input_schema_json: r#"{"type":"object"}"#.into(),
        });
        chat.messages.push(Message {
            role: Role::Assistant,
            content: vec![ContentBlock::ToolUse {
                id: "t".into(),
                name: "read".into(),
                input_json: r#"{"path":"a"}"#.into(),
            }],
        });
        let req = UpstreamRequest {
            chat: &chat,
            model: "claude-x",
            max_tokens: 100,
            prefill: Some("Hello wor  "),
        };
        let (url, headers, body) = build(&cfg(), &req).unwrap();
        assert_eq!(url, "http://127.0.0.1:1/v1/messages");
        assert!(headers["x-api-key"].is_sensitive());
        assert_eq!(headers["anthropic-version"], ANTHROPIC_VERSION);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["stream"], true);
        assert_eq!(v["system"], "be brief");
        assert_eq!(v["tools"][0]["input_schema"]["type"], "object");
        assert_eq!(v["messages"][1]["content"][0]["input"]["path"], "a");
        assert_eq!(v["messages"][2]["role"], "assistant");
        assert_eq!(v["messages"][2]["content"], "Hello wor");
    }

    #[test]
    fn invalid_tool_json_is_the_callers_fault() {
        let mut chat = ChatRequest::user_text(1, "hi");
        chat.tools.push(ToolSpec {
            name: "x".into(),
            description: String::new(),
            input_schema_json: "{nope".into(),
        });
        let req = UpstreamRequest {
            chat: &chat,
            model: "m",
            max_tokens: 1,
            prefill: None,
        };
        assert_eq!(build(&cfg(), &req).unwrap_err().kind, ErrorKind::BadRequest);
    }
}
