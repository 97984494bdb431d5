//! OpenAI Chat Completions (and every compatible endpoint: DeepSeek, OpenRouter, Groq, Ollama,
//! vLLM...): request body and headers. The stream decoder is in [`stream`].

pub mod stream;

use mythos_protocol::{ContentBlock, ErrorKind, Role};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use super::anthropic::parse_json;
use super::continuation::CONTINUE_INSTRUCTION;
use super::{secret_header, ProviderError, UpstreamRequest};
use crate::config::ProviderConfig;

/// URL, headers and JSON body of a streamed chat completion.
pub fn build(
    cfg: &ProviderConfig,
    req: &UpstreamRequest<'_>,
) -> Result<(String, HeaderMap, Vec<u8>), ProviderError> {
    let url = format!("{}/chat/completions", cfg.base_url.trim_end_matches('/'));
    let mut headers = HeaderMap::new();
    if let Some(key) = &cfg.api_key {
        secret_header(
            &mut headers,
            "authorization",
            format!("Bearer {}", key.expose()),
        );
    }

    let mut messages = Vec::with_capacity(req.chat.messages.len() + 3);
    if let Some(system) = &req.chat.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in &req.chat.messages {
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for block in &m.content {
            match block {
                ContentBlock::Text { text: t } => text.push_str(t),
                ContentBlock::ToolUse {
                    id,
                    name,
                    input_json,
                } => tool_calls.push(json!({"id": id, "type": "function",
                    "function": {"name": name, "arguments": input_json}})),
                // Tool results are messages of their own in this API.
                ContentBlock::ToolResult {
                    tool_use_id,
                    content,
                    ..
                } => messages.push(json!({"role": "tool", "tool_call_id": tool_use_id,
                                          "content": content})),
                _ => {}
            }
        }
        match m.role {
            Role::User if !text.is_empty() => {
                messages.push(json!({"role": "user", "content": text}));
            }
            Role::User => {}
            Role::Assistant => {
                let mut msg = json!({"role": "assistant", "content": text});
                if !tool_calls.is_empty() {
                    msg["tool_calls"] = Value::Array(tool_calls);
                }
                messages.push(msg);
            }
        }
    }
    if let Some(prefill) = req.prefill.filter(|p| !p.is_empty()) {
        // No prefill in this API: show the partial answer and ask for the rest explicitly.
        messages.push(json!({"role": "assistant", "content": prefill}));
        messages.push(json!({"role": "user", "content": CONTINUE_INSTRUCTION}));
    }

    let mut body = json!({
        "model": req.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": req.max_tokens,
    });
    if let Some(t) = req.chat.temperature {
        body["temperature"] = json!(t);
    }
    if !req.chat.tools.is_empty() {
        let mut tools = Vec::with_capacity(req.chat.tools.len());
        for t in &req.chat.tools {
            tools.push(json!({"type": "function", "function": {
                "name": t.name,
                "description": t.description,
                "parameters": parse_json(&t.input_schema_json, "tool input schema")?,
            }}));
        }
        body["tools"] = Value::Array(tools);
    }
    let bytes = serde_json::to_vec(&body)
        .map_err(|e| ProviderError::new(ErrorKind::Internal, e.to_string()))?;
    Ok((url, headers, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Api, Secret};
    use mythos_protocol::{ChatRequest, Message};

    #[test]
    fn body_with_continuation_and_tool_results() {
        let cfg = ProviderConfig {
            api_key: Some(Secret::new("sk-secret")),
            priority: 1,
            price_input_per_mtok: 0.3,
            price_output_per_mtok: 0.4,
            ..ProviderConfig::new(
                "deepseek",
                Api::Openai,
                "http://127.0.0.1:1/v1",
                "deepseek-chat",
            )
        };
        let mut chat = ChatRequest::user_text(1, "hi");
        chat.system = Some("sys".into());
        chat.messages.push(Message {
            role: Role::User,
            content: vec![ContentBlock::ToolResult {
                tool_use_id: "call_1".into(),
                content: "42".into(),
                is_error: false,
                images: Vec::new(),
            }],
        });
        let req = UpstreamRequest {
            chat: &chat,
            model: "deepseek-chat",
            max_tokens: 50,
            prefill: Some("Hello "),
        };
        let (url, headers, body) = build(&cfg, &req).unwrap();
        assert_eq!(url, "http://127.0.0.1:1/v1/chat/completions");
        assert!(headers["authorization"].is_sensitive());
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let roles: Vec<_> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(roles, ["system", "user", "tool", "assistant", "user"]);
        assert_eq!(v["messages"][3]["content"], "Hello ");
        assert_eq!(v["messages"][4]["content"], CONTINUE_INSTRUCTION);
    }
}
