//! An OpenAI Chat Completions request → [`ChatRequest`].

use mythos_protocol::{
    ChatOptions, ChatRequest, ContentBlock, ImageSource, Message, NativeField, Role, Thinking,
    ToolChoice, ToolSpec,
};
use serde_json::Value;

use crate::http::errors::ApiError;
use crate::http::translate::{
    array_field, attached_file, data_url_image, merge_same_role, object_and_model, response_format,
    text_of, token_limit,
};

/// What the front end needs besides the [`ChatRequest`].
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The request for the router (id, task and pin unset).
    pub chat: ChatRequest,
    /// The model name the client asked for.
    pub model: String,
    /// `stream: true`.
    pub stream: bool,
    /// `stream_options.include_usage: true`: a last chunk carries the usage.
    pub include_usage: bool,
    /// The client offered its tools as the deprecated `functions` (no `tools`): a call comes
    /// back as `function_call` with `finish_reason: "function_call"`, one per answer.
    pub legacy_functions: bool,
}

/// A thinking budget for an OpenAI `reasoning_effort` (`none`, or a word this does not know:
/// no thinking asked for).
pub fn budget_for_effort(effort: &str) -> Option<u32> {
    match effort {
        "minimal" => Some(1024),
        "low" => Some(2048),
        "medium" => Some(8192),
        "high" => Some(24576),
        // GPT-5.1-Codex-Max's "extra high" (Codex sends it): the most any provider gets,
        // sent upstream as `high` to OpenAI-format models.
        "xhigh" => Some(32768),
        _ => None,
    }
}

/// `effort` if it is one of OpenAI's words for it.
pub fn known_effort(effort: &str) -> Option<String> {
    ["none", "minimal", "low", "medium", "high", "xhigh"]
        .contains(&effort)
        .then(|| effort.to_string())
}

/// Translate a Chat Completions request body.
pub fn parse(body: &Value) -> Result<Parsed, ApiError> {
    let (obj, model) = object_and_model(body)?;
    let raw = array_field(obj, "messages")?;
    // Chat Completions cannot place prompt-cache breakpoints: Anthropic gets them placed.
    let mut options = ChatOptions {
        cache_automatically: true,
        ..ChatOptions::default()
    };
    let mut system_parts: Vec<String> = Vec::new();
    let mut messages: Vec<Message> = Vec::with_capacity(raw.len());
    // The deprecated `function_call` turns carry no call id: each gets one here, and the
    // `function` turn after it (which names the function, not the call) answers it.
    let mut legacy_calls: Vec<(String, String)> = Vec::new();
    for (i, m) in raw.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        match role {
            "system" | "developer" => {
                let text = match m.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => text_of(parts),
                    _ => String::new(),
                };
                if !text.is_empty() {
                    system_parts.push(text);
                }
            }
            "user" => messages.push(Message {
                role: Role::User,
                content: user_content(m.get("content")),
            }),
            "assistant" => {
                let mut content = Vec::new();
                if let Some(r) = m.get("reasoning_content").and_then(Value::as_str) {
                    if !r.is_empty() {
                        content.push(ContentBlock::Thinking {
                            text: r.into(),
                            signature: None,
                        });
                    }
                }
                match m.get("content") {
                    Some(Value::String(s)) if !s.is_empty() => {
                        content.push(ContentBlock::Text { text: s.clone() })
                    }
                    Some(Value::Array(parts)) => {
                        let t = text_of(parts);
                        if !t.is_empty() {
                            content.push(ContentBlock::Text { text: t });
                        }
                    }
                    _ => {}
                }
                // A refusal the client got back (`message.refusal`, content `null`): the
                // model's words for that turn.
                if let Some(r) = m.get("refusal").and_then(Value::as_str) {
                    if !r.is_empty()
                        && !content
                            .iter()
                            .any(|b| matches!(b, ContentBlock::Text { .. }))
                    {
                        content.push(ContentBlock::Text { text: r.into() });
                    }
                }
                for call in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let f = call.get("function");
                    let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
                    let id = call.get("id").and_then(Value::as_str);
                    let (Some(name), Some(id)) = (name, id) else {
                        return Err(ApiError::bad_request(format!(
                            "messages.{i}.tool_calls: each call needs an id and a function name"
                        )));
                    };
                    let args = f
                        .and_then(|f| f.get("arguments"))
                        .and_then(Value::as_str)
                        .filter(|a| !a.trim().is_empty())
                        .unwrap_or("{}");
                    content.push(ContentBlock::ToolUse {
                        id: id.into(),
                        name: name.into(),
                        input_json: args.into(),
                    });
                }
                if let Some(call) = m.get("function_call").filter(|c| !c.is_null()) {
                    let Some(name) = call.get("name").and_then(Value::as_str) else {
                        return Err(ApiError::bad_request(format!(
                            "messages.{i}.function_call.name: field required"
                        )));
                    };
                    let id = format!("call_legacy_{i}");
                    content.push(ContentBlock::ToolUse {
                        id: id.clone(),
                        name: name.into(),
                        input_json: legacy_arguments(call),
                    });
                    legacy_calls.push((name.into(), id));
                }
                messages.push(Message {
                    role: Role::Assistant,
                    content,
                });
            }
            "tool" | "function" => {
                let id = match m.get("tool_call_id").and_then(Value::as_str) {
                    Some(id) => id.to_string(),
                    // The deprecated form: the result of the last call of the function it
                    // names that has none yet.
                    None if role == "function" => {
                        let name = m.get("name").and_then(Value::as_str).ok_or_else(|| {
                            ApiError::bad_request(format!("messages.{i}.name: field required"))
                        })?;
                        match legacy_calls.iter().rposition(|(n, _)| n == name) {
                            Some(at) => legacy_calls.remove(at).1,
                            // No call to answer: kept as a result of its own, which the
                            // pairing before routing turns into text.
                            None => format!("call_legacy_{i}"),
                        }
                    }
                    None => {
                        return Err(ApiError::bad_request(format!(
                            "messages.{i}.tool_call_id: field required"
                        )))
                    }
                };
                let (content, images) = match m.get("content") {
                    Some(Value::String(s)) => (s.clone(), Vec::new()),
                    Some(Value::Array(parts)) => (
                        text_of(parts),
                        parts.iter().filter_map(image_part).collect(),
                    ),
                    _ => (String::new(), Vec::new()),
                };
                messages.push(Message {
                    role: Role::User,
                    content: vec![ContentBlock::ToolResult {
                        tool_use_id: id,
                        content,
                        is_error: false,
                        images,
                    }],
                });
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "messages.{i}.role: unknown role {other:?}"
                )))
            }
        }
    }
    let messages: Vec<Message> = merge_same_role(messages, &mut options.cache_points)
        .into_iter()
        .filter(|m| !m.content.is_empty())
        .collect();
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "messages: at least one user or assistant message is required",
        ));
    }

    let mut tools = Vec::new();
    let offered = obj.get("tools").and_then(Value::as_array);
    // The deprecated `functions` (OpenAI still serves them): the same functions, unwrapped.
    let legacy = obj
        .get("functions")
        .and_then(Value::as_array)
        .filter(|_| offered.is_none_or(|t| t.is_empty()));
    let functions = offered
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let f = t.get("function");
            if f.is_none() {
                tracing::debug!("dropped a tool that is not a function");
            }
            f
        })
        .chain(legacy.into_iter().flatten());
    for f in functions {
        let Some(name) = f.get("name").and_then(Value::as_str) else {
            continue;
        };
        let schema = f
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}}));
        tools.push(ToolSpec {
            name: name.into(),
            description: f
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .into(),
            input_schema_json: schema.to_string(),
        });
    }
    options.tool_choice = match obj.get("tool_choice").or_else(|| {
        // `function_call` is `tool_choice`'s deprecated form, with the same words.
        legacy.and(obj.get("function_call"))
    }) {
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(ToolChoice::Auto),
            "required" => Some(ToolChoice::Any),
            "none" => Some(ToolChoice::None),
            _ => None,
        },
        Some(v) => v
            .get("function")
            .and_then(|f| f.get("name"))
            .or_else(|| v.get("name"))
            .and_then(Value::as_str)
            .map(|n| ToolChoice::Tool { name: n.into() }),
        None => None,
    };
    options.parallel_tool_calls = obj.get("parallel_tool_calls").and_then(Value::as_bool);
    if legacy.is_some() {
        // A `function_call` message holds one call.
        options.parallel_tool_calls = Some(false);
    }
    options.stop = match obj.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    };
    options.top_p = obj.get("top_p").and_then(Value::as_f64).map(|v| v as f32);
    // OpenAI's own sampling settings, with no form elsewhere: passed on to OpenAI-format
    // providers as they came.
    for name in [
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
    ] {
        if let Some(v) = obj.get(name).filter(|v| !v.is_null()) {
            options
                .native
                .push(NativeField::new("openai", name, v.to_string()));
        }
    }
    options.user = obj
        .get("user")
        .and_then(Value::as_str)
        .or_else(|| obj.get("safety_identifier").and_then(Value::as_str))
        .map(String::from);
    options.response_format = response_format(obj.get("response_format"), "response_format")?;
    if let Some(effort) = obj.get("reasoning_effort").and_then(Value::as_str) {
        options.thinking = budget_for_effort(effort).map(|b| Thinking {
            budget_tokens: Some(b),
            display: true,
        });
        options.reasoning_effort = known_effort(effort);
    }
    if obj.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        // One answer comes back per request (each may come from another provider): a client
        // that reads `choices[1]` must hear so, not find it missing.
        return Err(ApiError::bad_request(
            "n: mythos routes one answer per request; ask n times for n answers",
        ));
    }
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let max_tokens = match token_limit(body, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => token_limit(body, "max_tokens")?,
    };
    // An agent that sends no output limit expects the whole answer, not the daemon's default.
    options.up_to_model_limit = true;
    Ok(Parsed {
        chat: ChatRequest {
            id: 0,
            messages,
            system: (!system_parts.is_empty()).then(|| system_parts.join("\n\n")),
            task: Default::default(),
            pin: None,
            max_tokens,
            temperature: obj
                .get("temperature")
                .and_then(Value::as_f64)
                .map(|v| v as f32),
            tools,
            options,
        },
        model,
        stream,
        include_usage,
        legacy_functions: legacy.is_some(),
    })
}

/// A deprecated `function_call`'s arguments: a JSON string as the API sends them (an object
/// from a lenient client is taken as it is); none, or blank, are `{}`.
fn legacy_arguments(call: &Value) -> String {
    match call.get("arguments") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(v @ Value::Object(_)) => v.to_string(),
        _ => "{}".into(),
    }
}

fn image_part(p: &Value) -> Option<ImageSource> {
    if p.get("type").and_then(Value::as_str) != Some("image_url") {
        return None;
    }
    let url = match p.get("image_url")? {
        Value::String(s) => s.as_str(),
        v => v.get("url")?.as_str()?,
    };
    Some(data_url_image(url).unwrap_or(ImageSource::Url { url: url.into() }))
}

fn user_content(content: Option<&Value>) -> Vec<ContentBlock> {
    match content {
        Some(Value::String(s)) => vec![ContentBlock::Text { text: s.clone() }],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => p
                    .get("text")
                    .and_then(Value::as_str)
                    .map(|t| ContentBlock::Text { text: t.into() }),
                Some("image_url") => image_part(p).map(|source| ContentBlock::Image { source }),
                Some("file") => p.get("file").and_then(|f| {
                    let field = |k| f.get(k).and_then(Value::as_str);
                    attached_file(field("file_data"), None, field("filename"))
                }),
                other => {
                    tracing::debug!(part = ?other, "dropped a content part the router cannot map");
                    None
                }
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The SDKs' `file` part: a PDF as a data URL (or bare base64, as some clients send it) is a
    /// document for the model; a text file is its text; a file by id cannot leave OpenAI.
    #[test]
    fn attached_files() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
            {"type": "file", "file": {"file_data": "JVBERi0="}},
            {"type": "file", "file": {"filename": "n.txt", "file_data": "data:text/plain;base64,aGVsbG8gd29ybGQ="}},
            {"type": "file", "file": {"file_id": "file-abc"}},
            {"type": "file", "file": {"filename": "d.json", "file_data": "data:application/json;base64,eyJhIjoxfQ=="}},
            {"type": "file", "file": {"filename": "w.txt", "file_data": "aGVs\nbG8="}},
            {"type": "file", "file": {"filename": "p.png", "file_data": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "file", "file": {"filename": "x.bin", "file_data": "data:application/octet-stream;base64,//79"}},
            {"type": "text", "text": "summarize"}
        ]}]});
        let c = parse(&body).unwrap().chat;
        let pdf = ImageSource::Base64 {
            media_type: "application/pdf".into(),
            data: "JVBERi0=".into(),
        };
        assert_eq!(
            c.messages[0].content,
            vec![
                ContentBlock::Document {
                    source: pdf.clone(),
                    title: Some("a.pdf".into())
                },
                ContentBlock::Document {
                    source: pdf,
                    title: None
                },
                ContentBlock::Text {
                    text: "n.txt\n\nhello world".into()
                },
                // Any file of text is text; base64 may come in lines.
                ContentBlock::Text {
                    text: "d.json\n\n{\"a\":1}".into()
                },
                ContentBlock::Text {
                    text: "w.txt\n\nhello".into()
                },
                ContentBlock::Image {
                    source: ImageSource::Base64 {
                        media_type: "image/png".into(),
                        data: "iVBORw0KGgo=".into()
                    }
                },
                // Bytes no provider reads are not sent to be refused.
                ContentBlock::Text {
                    text: "summarize".into()
                },
            ]
        );
    }

    /// Every effort Codex and the SDKs send: `xhigh` is the most thinking, `none` none.
    #[test]
    fn reasoning_efforts() {
        let efforts = ["minimal", "low", "medium", "high", "xhigh"];
        let budgets: Vec<u32> = efforts
            .iter()
            .filter_map(|e| budget_for_effort(e))
            .collect();
        assert_eq!(budgets.len(), efforts.len());
        assert!(budgets.windows(2).all(|w| w[0] < w[1]), "{budgets:?}");
        assert_eq!(budget_for_effort("none"), None);
        assert_eq!(
            crate::provider::openai::reasoning_effort(budget_for_effort("xhigh")),
            "high"
        );
        // n > 1 cannot be served (one answer per request): said, not silently one choice.
        let body =
            json!({"model": "gpt-4o", "n": 3, "messages": [{"role": "user", "content": "hi"}]});
        assert!(parse(&body).unwrap_err().message.starts_with("n: "));
        let body =
            json!({"model": "gpt-4o", "n": 1, "messages": [{"role": "user", "content": "hi"}]});
        assert!(parse(&body).is_ok());
        // The word itself is kept for the models that take it.
        for (word, kept) in [
            ("minimal", Some("minimal")),
            ("none", Some("none")),
            ("max", None),
        ] {
            let body = json!({"model": "gpt-5", "reasoning_effort": word,
                              "messages": [{"role": "user", "content": "hi"}]});
            let p = parse(&body).unwrap();
            assert_eq!(p.chat.options.reasoning_effort.as_deref(), kept, "{word}");
        }
    }

    #[test]
    fn tools_round_trip_shapes() {
        let body = json!({
            "model": "gpt-4o",
            "max_completion_tokens": 500,
            "stream": true,
            "stream_options": {"include_usage": true},
            "stop": "END",
            "tool_choice": "required",
            "parallel_tool_calls": true,
            "reasoning_effort": "high",
            "tools": [{"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}],
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}}
                ]},
                {"role": "assistant", "content": null, "reasoning_content": "think",
                 "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get", "arguments": "{\"a\":1}"}},
                    {"id": "c2", "type": "function", "function": {"name": "get", "arguments": ""}}
                 ]},
                {"role": "tool", "tool_call_id": "c1", "content": "one"},
                {"role": "tool", "tool_call_id": "c2", "content": "two"}
            ]
        });
        let p = parse(&body).unwrap();
        assert!(p.stream && p.include_usage);
        let c = &p.chat;
        assert_eq!(c.system.as_deref(), Some("sys\n\ndev"));
        assert_eq!(c.max_tokens, Some(500));
        assert_eq!(c.options.stop, vec!["END"]);
        assert_eq!(c.options.tool_choice, Some(ToolChoice::Any));
        assert_eq!(c.options.thinking.unwrap().budget_tokens, Some(24576));
        assert_eq!(
            c.messages.len(),
            3,
            "the two tool results share one user turn"
        );
        assert!(matches!(
            c.messages[0].content[1],
            ContentBlock::Image {
                source: ImageSource::Base64 { .. }
            }
        ));
        assert_eq!(c.messages[1].content.len(), 3);
        match &c.messages[1].content[2] {
            ContentBlock::ToolUse { input_json, .. } => assert_eq!(input_json, "{}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.messages[2].content.len(), 2);
    }

    /// A client of the deprecated `functions`: they are its tools, `function_call` its tool
    /// choice, and each `function` turn answers the call before it that named its function
    /// (neither carries an id). They used to be dropped: the model had no tools at all.
    #[test]
    fn deprecated_functions_are_tools() {
        let body = json!({
            "model": "gpt-4o",
            "functions": [{"name": "get_weather", "description": "Weather",
                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
                          {"name": "get_time", "parameters": {"type": "object"}}],
            "function_call": {"name": "get_weather"},
            "messages": [
                {"role": "user", "content": "weather and time in Paris?"},
                {"role": "assistant", "content": null,
                 "function_call": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"role": "function", "name": "get_weather", "content": "sunny"},
                {"role": "assistant", "content": null,
                 "function_call": {"name": "get_time", "arguments": ""}},
                {"role": "function", "name": "get_time", "content": "noon"}
            ]
        });
        let p = parse(&body).unwrap();
        assert!(p.legacy_functions);
        let c = &p.chat;
        let names: Vec<_> = c.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["get_weather", "get_time"]);
        assert_eq!(c.tools[0].description, "Weather");
        assert_eq!(
            c.options.tool_choice,
            Some(ToolChoice::Tool {
                name: "get_weather".into()
            })
        );
        assert_eq!(c.options.parallel_tool_calls, Some(false));
        let mut calls = Vec::new();
        let mut results = Vec::new();
        for b in c.messages.iter().flat_map(|m| &m.content) {
            match b {
                ContentBlock::ToolUse { id, input_json, .. } => calls.push((id, input_json)),
                ContentBlock::ToolResult {
                    tool_use_id,
                    content,
                    ..
                } => results.push((tool_use_id, content)),
                _ => {}
            }
        }
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].1, "{\"city\":\"Paris\"}");
        assert_eq!(calls[1].1, "{}");
        assert_eq!(
            results,
            [
                (calls[0].0, &"sunny".to_string()),
                (calls[1].0, &"noon".to_string())
            ]
        );
        assert_ne!(calls[0].0, calls[1].0);

        // `tools` beside them win, as OpenAI takes `tools` first; `function_call: "none"`.
        let both = json!({
            "model": "gpt-4o", "function_call": "none",
            "tools": [{"type": "function", "function": {"name": "new"}}],
            "functions": [{"name": "old"}],
            "messages": [{"role": "user", "content": "hi"}]
        });
        let p = parse(&both).unwrap();
        assert!(!p.legacy_functions);
        assert_eq!(p.chat.tools.len(), 1);
        assert_eq!(p.chat.tools[0].name, "new");
        assert_eq!(
            p.chat.options.tool_choice, None,
            "function_call is only with functions"
        );
        let none = json!({
            "model": "gpt-4o", "function_call": "none", "functions": [{"name": "old"}],
            "messages": [{"role": "user", "content": "hi"}]
        });
        assert_eq!(
            parse(&none).unwrap().chat.options.tool_choice,
            Some(ToolChoice::None)
        );
    }
}
