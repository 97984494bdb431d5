//! An Anthropic Messages request → [`ChatRequest`]. Lenient the way the API is documented to
//! be: what has no provider-neutral meaning goes to Anthropic providers only, as sent (server
//! tools, `mcp_servers`, `container`, `top_k`), or is dropped with a debug line (files by id),
//! never refused.

use mythos_protocol::{
    CachePoint, CacheTtl, ChatOptions, ChatRequest, ContentBlock, ImageSource, Message,
    NativeField, Role, SystemBlock, Thinking, ToolChoice, ToolSpec,
};
use serde_json::Value;

use crate::http::errors::ApiError;
use crate::http::translate::{
    add_to_tool_result, array_field, data_url_image, merge_same_role, object_and_model,
    response_format, text_of, token_limit, u32_field,
};

/// What the front end needs besides the [`ChatRequest`].
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The request for the router (id 0; the caller numbers it). Task and pin unset.
    pub chat: ChatRequest,
    /// The model name the client asked for.
    pub model: String,
    /// `stream: true`.
    pub stream: bool,
}

/// Translate a Messages request body.
pub fn parse(body: &Value) -> Result<Parsed, ApiError> {
    let (obj, model) = object_and_model(body)?;
    let raw_messages = array_field(obj, "messages")?;
    let mut options = ChatOptions::default();

    // System: a string, or text blocks (each may end a cache prefix).
    let mut system = None;
    match obj.get("system") {
        Some(Value::String(s)) if !s.is_empty() => system = Some(s.clone()),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                if let Some(text) = b.get("text").and_then(Value::as_str) {
                    options.system_blocks.push(SystemBlock {
                        text: text.to_string(),
                        cache: cache_ttl(b),
                    });
                }
            }
            if !options.system_blocks.is_empty() {
                let joined: Vec<&str> = options
                    .system_blocks
                    .iter()
                    .map(|b| b.text.as_str())
                    .collect();
                system = Some(joined.join("\n\n"));
            }
        }
        _ => {}
    }

    let mut messages = Vec::with_capacity(raw_messages.len());
    for (mi, m) in raw_messages.iter().enumerate() {
        let role = match m.get("role").and_then(Value::as_str) {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "messages.{mi}.role: expected `user` or `assistant`, got \"{}\"",
                    other.escape_debug()
                )))
            }
            None => {
                return Err(ApiError::bad_request(format!(
                    "messages.{mi}.role: field required (`user` or `assistant`)"
                )))
            }
        };
        let mut content = Vec::new();
        match m.get("content") {
            Some(Value::String(s)) => content.push(ContentBlock::Text { text: s.clone() }),
            Some(Value::Array(blocks)) => {
                for b in blocks {
                    let Some(block) = content_block(b, mi)? else {
                        continue;
                    };
                    if let Some(ttl) = cache_ttl(b) {
                        options.cache_points.push(CachePoint {
                            message: messages.len() as u32,
                            block: content.len() as u32,
                            ttl,
                        });
                    }
                    content.push(block);
                }
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "messages.{mi}.content: expected a string or a list of blocks"
                )))
            }
        }
        messages.push(Message { role, content });
    }
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "messages: at least one message is required",
        ));
    }
    let messages = merge_same_role(messages, &mut options.cache_points);

    let mut tools = Vec::new();
    for t in obj
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = t.get("name").and_then(Value::as_str) else {
            continue;
        };
        match t.get("input_schema") {
            Some(schema) => tools.push(ToolSpec {
                name: name.to_string(),
                description: t
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                input_schema_json: schema.to_string(),
            }),
            // Anthropic's server tools (`web_search_20250305`, `web_fetch_*`,
            // `code_execution_*`) run at Anthropic: they go to Anthropic providers as sent.
            // Anthropic-defined client tools (`bash_20250124`, `text_editor_*`, `computer_*`)
            // have their schema at Anthropic too, and go the same way.
            None => options.server_tools.push(t.to_string()),
        }
    }

    if let Some(tc) = obj.get("tool_choice") {
        options.tool_choice = match tc.get("type").and_then(Value::as_str) {
            Some("auto") => Some(ToolChoice::Auto),
            Some("any") => Some(ToolChoice::Any),
            Some("none") => Some(ToolChoice::None),
            Some("tool") => tc
                .get("name")
                .and_then(Value::as_str)
                .map(|n| ToolChoice::Tool { name: n.into() }),
            _ => None,
        };
        if tc.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
            options.parallel_tool_calls = Some(false);
        }
    }
    options.stop = obj
        .get("stop_sequences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    options.top_p = obj.get("top_p").and_then(Value::as_f64).map(|v| v as f32);
    options.user = obj
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
        .map(String::from);
    // Anthropic's own, passed on to Anthropic providers as it came.
    options.context_management = obj
        .get("context_management")
        .filter(|c| c.is_object())
        .map(Value::to_string);
    // Anthropic's own, with no form elsewhere: passed on to Anthropic providers as they came
    // (an MCP server's tools and a code-execution container bind the request to them).
    for name in ["mcp_servers", "container", "top_k"] {
        if let Some(v) = obj.get(name).filter(|v| !v.is_null()) {
            options
                .native
                .push(NativeField::new("anthropic", name, v.to_string()));
        }
    }
    // `output_config.format` since structured outputs left beta; `output_format` before.
    options.response_format = match obj.get("output_config").and_then(|c| c.get("format")) {
        Some(f) => response_format(Some(f), "output_config.format")?,
        None => response_format(obj.get("output_format"), "output_format")?,
    };
    if let Some(t) = obj.get("thinking") {
        let display = t.get("display").and_then(Value::as_str) != Some("omitted");
        options.thinking = match t.get("type").and_then(Value::as_str) {
            Some("enabled") => Some(Thinking {
                budget_tokens: u32_field(t, "budget_tokens"),
                display,
            }),
            Some("adaptive") => Some(Thinking {
                budget_tokens: None,
                display,
            }),
            _ => None,
        };
    }
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    // An agent that sends no output limit expects the whole answer, not the daemon's default.
    options.up_to_model_limit = true;
    Ok(Parsed {
        chat: ChatRequest {
            id: 0,
            messages,
            system,
            task: Default::default(),
            pin: None,
            max_tokens: token_limit(body, "max_tokens")?,
            temperature: obj
                .get("temperature")
                .and_then(Value::as_f64)
                .map(|v| v as f32),
            tools,
            options,
        },
        model,
        stream,
    })
}

fn cache_ttl(block: &Value) -> Option<CacheTtl> {
    let cc = block.get("cache_control")?;
    Some(match cc.get("ttl").and_then(Value::as_str) {
        Some("1h") => CacheTtl::Hour,
        _ => CacheTtl::Default,
    })
}

fn image(source: &Value) -> Option<ImageSource> {
    match source.get("type").and_then(Value::as_str)? {
        "base64" => Some(ImageSource::Base64 {
            media_type: source.get("media_type")?.as_str()?.to_string(),
            data: source.get("data")?.as_str()?.to_string(),
        }),
        "url" => {
            let url = source.get("url")?.as_str()?;
            Some(data_url_image(url).unwrap_or(ImageSource::Url { url: url.into() }))
        }
        _ => None,
    }
}

/// A block one of Anthropic's server tools made: its call (`server_tool_use`, `mcp_tool_use`)
/// or its result (`web_search_tool_result`, `code_execution_tool_result`, ...).
fn is_server_block(ty: &str) -> bool {
    matches!(ty, "server_tool_use" | "mcp_tool_use")
        || (ty.ends_with("_tool_result") && ty != "tool_result")
}

/// A `document` block: a PDF (base64, or at a URL the provider fetches) is a document; a
/// plain-text one (a `text` source, or `content` blocks) is text under its title. A file by
/// id (the Files API's) is Anthropic's alone and is dropped.
fn document(b: &Value, mi: usize) -> Option<ContentBlock> {
    let source = b.get("source")?;
    let title = b
        .get("title")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty());
    let text = match source.get("type").and_then(Value::as_str) {
        Some("base64" | "url") => {
            return match image(source) {
                Some(source) => Some(ContentBlock::Document {
                    source,
                    title: title.map(String::from),
                }),
                None => {
                    tracing::debug!(message = mi, "dropped a document the router cannot map");
                    None
                }
            };
        }
        Some("text") => source.get("data").and_then(Value::as_str)?.to_string(),
        Some("content") => match source.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => text_of(parts),
            _ => return None,
        },
        other => {
            tracing::debug!(message = mi, source = ?other, "dropped a document the router cannot map");
            return None;
        }
    };
    Some(ContentBlock::Text {
        text: match title {
            Some(t) => format!("{t}\n\n{text}"),
            None => text,
        },
    })
}

fn content_block(b: &Value, mi: usize) -> Result<Option<ContentBlock>, ApiError> {
    let ty = b.get("type").and_then(Value::as_str).unwrap_or("");
    if is_server_block(ty) {
        // Kept whole for Anthropic; its breakpoint, if any, is kept as the others are.
        let mut block = b.clone();
        if let Some(obj) = block.as_object_mut() {
            obj.remove("cache_control");
        }
        return Ok(Some(ContentBlock::ServerBlock {
            json: block.to_string(),
        }));
    }
    Ok(match ty {
        "text" => Some(ContentBlock::Text {
            text: b.get("text").and_then(Value::as_str).unwrap_or("").into(),
        }),
        "document" => document(b, mi),
        "image" => match b.get("source").and_then(image) {
            Some(source) => Some(ContentBlock::Image { source }),
            None => {
                tracing::debug!(
                    message = mi,
                    "dropped an image with a source the router cannot map"
                );
                None
            }
        },
        "tool_use" => {
            let id = b.get("id").and_then(Value::as_str).unwrap_or("");
            let name = b.get("name").and_then(Value::as_str).unwrap_or("");
            if id.is_empty() || name.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "messages.{mi}: a tool_use block needs an id and a name"
                )));
            }
            let input = b
                .get("input")
                .cloned()
                .unwrap_or(Value::Object(Default::default()));
            Some(ContentBlock::ToolUse {
                id: id.into(),
                name: name.into(),
                input_json: input.to_string(),
            })
        }
        "tool_result" => {
            let tool_use_id = b
                .get("tool_use_id")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("messages.{mi}: tool_result needs tool_use_id"))
                })?;
            let mut images = Vec::new();
            let content = match b.get("content") {
                Some(Value::Array(parts)) => {
                    let mut texts = vec![text_of(parts)];
                    for p in parts {
                        match p.get("type").and_then(Value::as_str) {
                            Some("image") => images.extend(p.get("source").and_then(image)),
                            // A PDF that Claude Code's Read returned: among the images, told
                            // apart by its media type; a text document joins the text.
                            Some("document") => {
                                if let Some(file) = document(p, mi) {
                                    add_to_tool_result(file, &mut texts, &mut images);
                                }
                            }
                            _ => {}
                        }
                    }
                    texts.retain(|t| !t.is_empty());
                    texts.join("\n\n")
                }
                Some(Value::String(s)) => s.clone(),
                _ => String::new(),
            };
            Some(ContentBlock::ToolResult {
                tool_use_id: tool_use_id.into(),
                content,
                is_error: b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                images,
            })
        }
        "thinking" => Some(ContentBlock::Thinking {
            text: b
                .get("thinking")
                .and_then(Value::as_str)
                .unwrap_or("")
                .into(),
            signature: b
                .get("signature")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from),
        }),
        "redacted_thinking" => b
            .get("data")
            .and_then(Value::as_str)
            .map(|d| ContentBlock::RedactedThinking { data: d.into() }),
        other => {
            tracing::debug!(
                message = mi,
                block = other,
                "dropped a content block the router cannot map"
            );
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors say what is wrong with a field that is there: an array that is not one, a role
    /// quoted as sent (not Rust's `Some("wizard")`), an output limit that no provider takes.
    #[test]
    fn bad_fields_are_named_as_they_are() {
        let err = |body: serde_json::Value| parse(&body).unwrap_err().message;
        let m = |messages: serde_json::Value, extra: serde_json::Value| {
            let mut b = serde_json::json!({"model": "m", "max_tokens": 10, "messages": messages});
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        let e = err(m(serde_json::json!("hi"), serde_json::json!({})));
        assert!(e.contains("messages: expected an array"), "{e}");
        let e = err(m(
            serde_json::json!([{"role": "wizard", "content": "x"}]),
            serde_json::json!({}),
        ));
        assert!(e.contains(r#"got "wizard""#) && !e.contains("Some("), "{e}");
        let e = err(m(
            serde_json::json!([{"content": "x"}]),
            serde_json::json!({}),
        ));
        assert!(e.contains("messages.0.role: field required"), "{e}");
        for bad in [
            serde_json::json!(0),
            serde_json::json!(2.5),
            serde_json::json!("many"),
        ] {
            let e = err(m(
                serde_json::json!([{"role": "user", "content": "x"}]),
                serde_json::json!({"max_tokens": bad}),
            ));
            assert!(e.contains("max_tokens: expected a whole number"), "{e}");
        }
        let ok = parse(&m(
            serde_json::json!([{"role": "user", "content": "x"}]),
            serde_json::json!({"max_tokens": 1}),
        ))
        .unwrap();
        assert_eq!(ok.chat.max_tokens, Some(1));
        // LM Studio's "no limit", and a whole number written as a float.
        for (given, limit) in [
            (serde_json::json!(-1), None),
            (serde_json::json!(4096.0), Some(4096)),
        ] {
            let p = parse(&m(
                serde_json::json!([{"role": "user", "content": "x"}]),
                serde_json::json!({"max_tokens": given}),
            ))
            .unwrap();
            assert_eq!(p.chat.max_tokens, limit);
        }
    }
    use serde_json::json;

    #[test]
    fn claude_code_shaped_request() {
        let body = json!({
            "model": "claude-opus-5-5",
            "max_tokens": 128000,
            "stream": true,
            "thinking": {"type": "adaptive", "display": "omitted"},
            "metadata": {"user_id": "user_abc"},
            "system": [
                {"type": "text", "text": "You are Claude Code."},
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
            ],
            "tools": [
                {"name": "Bash", "description": "run", "input_schema": {"type": "object"}},
                {"type": "web_search_20250305", "name": "web_search"}
            ],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"cmd": "ls"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": true, "content": [
                        {"type": "text", "text": "no such file"},
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
                    ]}
                ]}
            ]
        });
        let p = parse(&body).unwrap();
        assert!(p.stream);
        assert_eq!(p.model, "claude-opus-5-5");
        let c = &p.chat;
        assert_eq!(c.max_tokens, Some(128000));
        assert_eq!(
            c.system.as_deref(),
            Some("You are Claude Code.\n\nBe brief.")
        );
        assert_eq!(c.options.system_blocks[1].cache, Some(CacheTtl::Default));
        assert_eq!(
            c.options.thinking,
            Some(Thinking {
                budget_tokens: None,
                display: false
            })
        );
        assert_eq!(c.options.user.as_deref(), Some("user_abc"));
        assert_eq!(c.tools.len(), 1, "the server tool is dropped");
        assert_eq!(
            c.options.cache_points,
            vec![CachePoint {
                message: 0,
                block: 0,
                ttl: CacheTtl::Hour
            }]
        );
        assert!(matches!(
            c.messages[0].content[1],
            ContentBlock::Image { .. }
        ));
        assert_eq!(
            c.messages[1].content[0],
            ContentBlock::Thinking {
                text: "hmm".into(),
                signature: Some("sig".into())
            }
        );
        match &c.messages[2].content[0] {
            ContentBlock::ToolResult {
                content,
                is_error,
                images,
                ..
            } => {
                assert_eq!(content, "no such file");
                assert!(is_error);
                assert_eq!(images.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Claude Code sends a PDF the user named as a `document` block, and its Read tool returns
    /// one inside a `tool_result`: both reach the model, not silently dropped. Text documents
    /// are text under their title.
    #[test]
    fn documents_reach_the_model() {
        let pdf = json!({"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="});
        let body = json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": [
                    {"type": "document", "source": pdf, "title": "spec.pdf"},
                    {"type": "document", "source": {"type": "url", "url": "https://x/p.pdf"}},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}, "title": "notes"},
                    {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}},
                    {"type": "document", "source": {"type": "file", "file_id": "file_1"}},
                    {"type": "text", "text": "read them"}
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": "a.pdf"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [
                        {"type": "text", "text": "PDF file read"},
                        {"type": "document", "source": pdf}
                    ]}
                ]}
            ]
        });
        let c = parse(&body).unwrap().chat;
        let pdf_source = ImageSource::Base64 {
            media_type: "application/pdf".into(),
            data: "JVBERi0=".into(),
        };
        assert_eq!(
            c.messages[0].content,
            vec![
                ContentBlock::Document {
                    source: pdf_source.clone(),
                    title: Some("spec.pdf".into())
                },
                ContentBlock::Document {
                    source: ImageSource::Url {
                        url: "https://x/p.pdf".into()
                    },
                    title: None
                },
                ContentBlock::Text {
                    text: "notes\n\nplain words".into()
                },
                ContentBlock::Text {
                    text: "a\n\nb".into()
                },
                ContentBlock::Text {
                    text: "read them".into()
                },
            ]
        );
        assert_eq!(
            c.messages[2].content,
            vec![ContentBlock::ToolResult {
                tool_use_id: "t1".into(),
                content: "PDF file read".into(),
                is_error: false,
                images: vec![pdf_source],
            }]
        );
    }

    #[test]
    fn bad_requests_say_where() {
        let e = parse(&json!({"model": "m", "messages": [{"role": "bot", "content": "x"}]}))
            .unwrap_err();
        assert!(e.message.contains("messages.0.role"), "{}", e.message);
        assert!(parse(&json!({"messages": []}))
            .unwrap_err()
            .message
            .contains("model"));
        assert!(parse(&json!([])).is_err());
    }
}
