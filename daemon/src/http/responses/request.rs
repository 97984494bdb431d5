//! An OpenAI Responses request → [`ChatRequest`], for the subset Codex CLI and the SDKs send.
//!
//! mythosd keeps no responses: a client must send the whole conversation as `input` every turn
//! (Codex does, with `store: false`). So `previous_response_id` and `conversation` are refused
//! with a 400 that says so, rather than silently answering without the history. `custom` tools
//! and Codex's `local_shell` are offered upstream as functions and their calls shown in their
//! own item types; input items and tools with no provider-neutral meaning (hosted tools, item
//! references) are dropped with a debug line, as the other translators do.

use mythos_protocol::{
    ChatOptions, ChatRequest, ContentBlock, ImageSource, Message, Role, Thinking, ToolChoice,
    ToolSpec,
};
use serde_json::{json, Map, Value};

use crate::http::chat::request::budget_for_effort;
use crate::http::errors::ApiError;
use crate::http::translate::{
    add_to_tool_result, attached_file, data_url_image, merge_same_role, object_and_model,
    response_format, text_of, token_limit,
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
    /// The request's settings as a response object repeats them (`instructions`, `tools`,
    /// `tool_choice`, `temperature`...): the real API echoes them in every response object.
    pub echo: Map<String, Value>,
    /// Names of the request's `custom` tools (free-form input, such as Codex's
    /// `apply_patch`): offered upstream as functions taking `{"input": string}`, and their
    /// calls returned as `custom_tool_call` items.
    pub custom_tools: Vec<String>,
    /// The request offered Codex's `local_shell` tool: offered upstream as the function
    /// [`LOCAL_SHELL`], its calls returned as `local_shell_call` items.
    pub local_shell: bool,
}

/// The function Codex's `local_shell` tool is offered upstream as.
pub const LOCAL_SHELL: &str = "local_shell";

/// `local_shell` as a function: its arguments are the `exec` action's fields.
fn local_shell_tool() -> ToolSpec {
    ToolSpec {
        name: LOCAL_SHELL.into(),
        description: "Run a command on the user's machine and get its output. Give the program \
                      and its arguments as a list (for a shell pipeline: [\"bash\", \"-lc\", \
                      \"...\"])."
            .into(),
        input_schema_json: json!({
            "type": "object",
            "properties": {
                "command": {"type": "array", "items": {"type": "string"},
                            "description": "The program and its arguments."},
                "working_directory": {"type": "string"},
                "timeout_ms": {"type": "integer"},
            },
            "required": ["command"],
        })
        .to_string(),
    }
}

/// A `local_shell_call`'s `exec` action from the function's arguments: the fields Codex reads
/// (`command` a list of strings; a single string is split off as `bash -lc`).
pub fn shell_action(args: &str) -> Value {
    let a: Value = serde_json::from_str(args).unwrap_or(Value::Null);
    let command = match a.get("command") {
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p {
                Value::String(s) => json!(s),
                other => json!(other.to_string()),
            })
            .collect(),
        Some(Value::String(line)) => vec![json!("bash"), json!("-lc"), json!(line)],
        _ => Vec::new(),
    };
    json!({
        "type": "exec",
        "command": command,
        "timeout_ms": a.get("timeout_ms").and_then(Value::as_u64),
        "working_directory": a.get("working_directory").and_then(Value::as_str),
        "env": a.get("env").filter(|e| e.is_object()).cloned().unwrap_or_else(|| json!({})),
        "user": Value::Null,
    })
}

/// The function a `custom` tool is offered upstream as: one string argument carrying the
/// free-form input, with the tool's grammar (if any) in the description so the model can
/// follow it.
fn custom_tool(t: &Value) -> Option<ToolSpec> {
    let name = t.get("name").and_then(Value::as_str)?;
    let mut description = t
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if let Some(f) = t.get("format").filter(|f| f["type"] == "grammar") {
        let syntax = f.get("syntax").and_then(Value::as_str).unwrap_or("grammar");
        if let Some(def) = f.get("definition").and_then(Value::as_str) {
            description.push_str(&format!(
                "\n\nPut the tool's whole input in `input`, following this {syntax} grammar:\n{def}"
            ));
        }
    }
    Some(ToolSpec {
        name: name.into(),
        description,
        input_schema_json: json!({
            "type": "object",
            "properties": {"input": {"type": "string", "description": "The tool's raw input."}},
            "required": ["input"],
        })
        .to_string(),
    })
}

/// Translate a Responses request body.
pub fn parse(body: &Value) -> Result<Parsed, ApiError> {
    let (obj, model) = object_and_model(body)?;
    for key in ["previous_response_id", "conversation"] {
        if obj.get(key).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::bad_request(format!(
                "{key}: mythosd is stateless and keeps no responses or conversations; send the \
                 whole conversation in `input` on every request (with `store: false`, as Codex \
                 CLI does)"
            )));
        }
    }

    let mut system_parts: Vec<String> = Vec::new();
    if let Some(s) = obj.get("instructions").and_then(Value::as_str) {
        if !s.is_empty() {
            system_parts.push(s.to_string());
        }
    }
    let mut messages: Vec<Message> = Vec::new();
    match obj.get("input") {
        Some(Value::String(s)) => messages.push(Message::text(Role::User, s.clone())),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(i, item, &mut messages, &mut system_parts)?;
            }
        }
        Some(Value::Null) | None => {
            return Err(ApiError::bad_request("input: field required"));
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "input: expected a string or a list of input items",
            ))
        }
    }
    // The Responses API cannot place prompt-cache breakpoints: Anthropic gets them placed.
    let mut options = ChatOptions {
        cache_automatically: true,
        ..ChatOptions::default()
    };
    let messages: Vec<Message> = merge_same_role(messages, &mut options.cache_points)
        .into_iter()
        .filter(|m| !m.content.is_empty())
        .collect();
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "input: at least one user or assistant item is required",
        ));
    }

    let mut tools = Vec::new();
    let mut offered = Vec::new();
    let mut custom_tools = Vec::new();
    let mut local_shell = false;
    for t in obj
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = t.get("type").and_then(Value::as_str).unwrap_or("function");
        if kind == "local_shell" {
            if !local_shell {
                tools.push(local_shell_tool());
                local_shell = true;
                offered.push(t.clone());
            }
            continue;
        }
        if kind == "custom" {
            if let Some(spec) = custom_tool(t) {
                custom_tools.push(spec.name.clone());
                tools.push(spec);
                offered.push(t.clone());
            }
            continue;
        }
        if kind != "function" {
            tracing::debug!(tool = kind, "dropped a tool that is not a function");
            continue;
        }
        // The Responses shape is flat; accept the Chat Completions nesting too.
        let f = t.get("function").unwrap_or(t);
        let Some(name) = f.get("name").and_then(Value::as_str) else {
            tracing::debug!("dropped a function tool with no name");
            continue;
        };
        let schema = f
            .get("parameters")
            .filter(|p| !p.is_null())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        tools.push(ToolSpec {
            name: name.into(),
            description: f
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .into(),
            input_schema_json: schema.to_string(),
        });
        offered.push(t.clone());
    }

    options.tool_choice = match obj.get("tool_choice") {
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(ToolChoice::Auto),
            "required" => Some(ToolChoice::Any),
            "none" => Some(ToolChoice::None),
            other => {
                tracing::debug!(tool_choice = other, "ignored an unknown tool_choice");
                None
            }
        },
        Some(v @ Value::Object(_)) => match v.get("type").and_then(Value::as_str) {
            Some("function") => v
                .get("name")
                .or_else(|| v.get("function").and_then(|f| f.get("name")))
                .and_then(Value::as_str)
                .map(|n| ToolChoice::Tool { name: n.into() }),
            // `allowed_tools` narrows the offer; its mode is what the router can carry.
            Some("allowed_tools") => match v.get("mode").and_then(Value::as_str) {
                Some("required") => Some(ToolChoice::Any),
                _ => Some(ToolChoice::Auto),
            },
            other => {
                tracing::debug!(tool_choice = ?other, "ignored a tool_choice for a hosted tool");
                None
            }
        },
        _ => None,
    };
    options.parallel_tool_calls = obj.get("parallel_tool_calls").and_then(Value::as_bool);
    options.top_p = obj.get("top_p").and_then(Value::as_f64).map(|v| v as f32);
    options.user = obj
        .get("user")
        .and_then(Value::as_str)
        .or_else(|| obj.get("safety_identifier").and_then(Value::as_str))
        .map(String::from);
    let effort = obj
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .and_then(Value::as_str);
    if let Some(effort) = effort {
        options.thinking = budget_for_effort(effort).map(|b| Thinking {
            budget_tokens: Some(b),
            display: true,
        });
        options.reasoning_effort = crate::http::chat::request::known_effort(effort);
    }
    options.response_format =
        response_format(obj.get("text").and_then(|t| t.get("format")), "text.format")?;
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let temperature = obj
        .get("temperature")
        .and_then(Value::as_f64)
        .map(|v| v as f32);
    let max_tokens = token_limit(body, "max_output_tokens")?;

    let field = |k: &str| obj.get(k).cloned().unwrap_or(Value::Null);
    let mut echo = Map::new();
    echo.insert("instructions".into(), field("instructions"));
    echo.insert("max_output_tokens".into(), field("max_output_tokens"));
    echo.insert("max_tool_calls".into(), field("max_tool_calls"));
    echo.insert(
        "parallel_tool_calls".into(),
        json!(options.parallel_tool_calls.unwrap_or(true)),
    );
    echo.insert("prompt_cache_key".into(), field("prompt_cache_key"));
    echo.insert(
        "reasoning".into(),
        json!({
            "effort": effort,
            "summary": obj.get("reasoning").and_then(|r| r.get("summary")).cloned().unwrap_or(Value::Null),
        }),
    );
    echo.insert("safety_identifier".into(), field("safety_identifier"));
    echo.insert(
        "store".into(),
        json!(obj.get("store").and_then(Value::as_bool).unwrap_or(false)),
    );
    echo.insert("temperature".into(), field("temperature"));
    echo.insert(
        "text".into(),
        obj.get("text")
            .cloned()
            .unwrap_or_else(|| json!({"format": {"type": "text"}})),
    );
    echo.insert(
        "tool_choice".into(),
        obj.get("tool_choice").cloned().unwrap_or(json!("auto")),
    );
    echo.insert("tools".into(), Value::Array(offered));
    echo.insert("top_p".into(), field("top_p"));
    echo.insert("user".into(), field("user"));
    echo.insert(
        "metadata".into(),
        obj.get("metadata").cloned().unwrap_or(json!({})),
    );

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
            temperature,
            tools,
            options,
        },
        model,
        stream,
        echo,
        custom_tools,
        local_shell,
    })
}

/// One `input` item onto the conversation (or the system prompt).
fn input_item(
    i: usize,
    item: &Value,
    messages: &mut Vec<Message>,
    system: &mut Vec<String>,
) -> Result<(), ApiError> {
    // Easy input messages (`{role, content}`) may leave out `type`.
    let kind = match item.get("type").and_then(Value::as_str) {
        Some(k) => k,
        None if item.get("role").is_some() => "message",
        None => {
            return Err(ApiError::bad_request(format!(
                "input.{i}: an item needs a `type` (or a `role`, for a message)"
            )))
        }
    };
    match kind {
        "message" => {
            let role = item.get("role").and_then(Value::as_str).unwrap_or("");
            match role {
                "system" | "developer" => {
                    // The router has one system prompt: instructions first, then these in
                    // order (Codex sends its permission and environment notes this way).
                    let text = match item.get("content") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Array(parts)) => text_of(parts),
                        _ => String::new(),
                    };
                    if !text.is_empty() {
                        system.push(text);
                    }
                }
                "user" => messages.push(Message {
                    role: Role::User,
                    content: parts(item.get("content")),
                }),
                "assistant" => messages.push(Message {
                    role: Role::Assistant,
                    content: parts(item.get("content")),
                }),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "input.{i}.role: expected user, assistant, system or developer, got \
                         {other:?}"
                    )))
                }
            }
        }
        "function_call" => {
            let id = item.get("call_id").and_then(Value::as_str);
            let name = item.get("name").and_then(Value::as_str);
            let (Some(id), Some(name)) = (id, name) else {
                return Err(ApiError::bad_request(format!(
                    "input.{i}: a function_call needs a call_id and a name"
                )));
            };
            let args = item
                .get("arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.trim().is_empty())
                .unwrap_or("{}");
            // Consecutive calls (and the text or reasoning before them) become one assistant
            // turn when same-role messages are merged.
            messages.push(Message {
                role: Role::Assistant,
                content: vec![ContentBlock::ToolUse {
                    id: id.into(),
                    name: name.into(),
                    input_json: args.into(),
                }],
            });
        }
        "custom_tool_call" => {
            let id = item.get("call_id").and_then(Value::as_str);
            let name = item.get("name").and_then(Value::as_str);
            let (Some(id), Some(name)) = (id, name) else {
                return Err(ApiError::bad_request(format!(
                    "input.{i}: a custom_tool_call needs a call_id and a name"
                )));
            };
            let input = item.get("input").and_then(Value::as_str).unwrap_or("");
            messages.push(Message {
                role: Role::Assistant,
                content: vec![ContentBlock::ToolUse {
                    id: id.into(),
                    name: name.into(),
                    input_json: json!({ "input": input }).to_string(),
                }],
            });
        }
        "local_shell_call" => {
            // Codex's shell call, as the model made it: the function it was offered as.
            let id = item
                .get("call_id")
                .or_else(|| item.get("id"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("input.{i}: a local_shell_call needs a call_id"))
                })?;
            let mut action = item.get("action").cloned().unwrap_or_else(|| json!({}));
            if let Some(a) = action.as_object_mut() {
                a.remove("type");
                a.retain(|_, v| !v.is_null());
            }
            messages.push(Message {
                role: Role::Assistant,
                content: vec![ContentBlock::ToolUse {
                    id: id.into(),
                    name: LOCAL_SHELL.into(),
                    input_json: action.to_string(),
                }],
            });
        }
        "function_call_output" | "custom_tool_call_output" | "local_shell_call_output" => {
            // A `local_shell_call_output` names its call by `id`; the others' `id` is their own.
            let id = match kind {
                "local_shell_call_output" => item.get("call_id").or_else(|| item.get("id")),
                _ => item.get("call_id"),
            };
            let id = id.and_then(Value::as_str).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "input.{i}.call_id: a function_call_output needs the call_id it answers"
                ))
            })?;
            let (content, images) = match item.get("output") {
                Some(Value::String(s)) => (s.clone(), Vec::new()),
                Some(Value::Array(parts)) => {
                    let mut texts = vec![text_of(parts)];
                    let mut images: Vec<ImageSource> = parts.iter().filter_map(image_of).collect();
                    // A file the tool returned: a PDF rides with the images (told apart by its
                    // media type); a file of text joins the text.
                    for p in parts.iter().filter(|p| p["type"] == "input_file") {
                        let field = |k| p.get(k).and_then(Value::as_str);
                        if let Some(file) =
                            attached_file(field("file_data"), field("file_url"), field("filename"))
                        {
                            add_to_tool_result(file, &mut texts, &mut images);
                        }
                    }
                    texts.retain(|t| !t.is_empty());
                    (texts.join("\n\n"), images)
                }
                _ => (String::new(), Vec::new()),
            };
            messages.push(Message {
                role: Role::User,
                content: vec![ContentBlock::ToolResult {
                    tool_use_id: id.into(),
                    content,
                    is_error: false,
                    images,
                }],
            });
        }
        "reasoning" => {
            // The summary is what the model showed. `encrypted_content` is OpenAI's own opaque
            // state, meaningless to any other provider, unless mythosd put an Anthropic
            // signature there: then the thinking goes back to Anthropic with it.
            let text: Vec<&str> = item
                .get("summary")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|s| s.get("text").and_then(Value::as_str))
                .collect();
            let text = text.join("\n\n");
            let signature = item
                .get("encrypted_content")
                .and_then(Value::as_str)
                .and_then(|e| e.strip_prefix(super::stream::SIGNATURE_PREFIX))
                .filter(|s| !s.is_empty())
                .map(String::from);
            // Signed thinking goes back even without text: Anthropic may sign thinking it
            // showed none of, and wants the block back as it was.
            if !text.is_empty() || signature.is_some() {
                messages.push(Message {
                    role: Role::Assistant,
                    content: vec![ContentBlock::Thinking { text, signature }],
                });
            }
        }
        other => tracing::debug!(item = other, "dropped an input item the router cannot map"),
    }
    Ok(())
}

/// A message's content: a string, or input / output parts.
fn parts(content: Option<&Value>) -> Vec<ContentBlock> {
    match content {
        Some(Value::String(s)) if !s.is_empty() => vec![ContentBlock::Text { text: s.clone() }],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("input_text" | "output_text" | "text") => p
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .map(|t| ContentBlock::Text { text: t.into() }),
                // An assistant's refusal, replayed: its words are that turn's text.
                Some("refusal") => p
                    .get("refusal")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .map(|t| ContentBlock::Text { text: t.into() }),
                Some("input_image") => image_of(p).map(|source| ContentBlock::Image { source }),
                Some("input_file") => {
                    let field = |k| p.get(k).and_then(Value::as_str);
                    attached_file(field("file_data"), field("file_url"), field("filename"))
                }
                other => {
                    tracing::debug!(part = ?other, "dropped a content part the router cannot map");
                    None
                }
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// An `input_image` part with an `image_url` (a data URL or a URL). Uploaded files (`file_id`)
/// live on OpenAI's servers and cannot be sent elsewhere.
fn image_of(p: &Value) -> Option<ImageSource> {
    if p.get("type").and_then(Value::as_str) != Some("input_image") {
        return None;
    }
    let Some(url) = p.get("image_url").and_then(Value::as_str) else {
        tracing::debug!("dropped an input_image without an image_url (a file_id?)");
        return None;
    };
    Some(data_url_image(url).unwrap_or(ImageSource::Url { url: url.into() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `input_file` parts: inline (`file_data`) or at a URL (`file_url`), both reach the model.
    #[test]
    fn input_files() {
        let body = serde_json::json!({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
            {"type": "input_file", "file_url": "https://x/p.pdf"},
            {"type": "input_file", "file_id": "file-abc"},
            {"type": "input_text", "text": "compare"}
        ]}]});
        let c = parse(&body).unwrap().chat;
        assert_eq!(
            c.messages[0].content,
            vec![
                ContentBlock::Document {
                    source: ImageSource::Base64 {
                        media_type: "application/pdf".into(),
                        data: "JVBERi0=".into()
                    },
                    title: Some("a.pdf".into())
                },
                ContentBlock::Document {
                    source: ImageSource::Url {
                        url: "https://x/p.pdf".into()
                    },
                    title: None
                },
                ContentBlock::Text {
                    text: "compare".into()
                },
            ]
        );
    }

    /// The shape of a Codex CLI turn after a tool call: instructions, developer and user
    /// messages, a reasoning item, two function calls, their outputs (one with a screenshot),
    /// and tools Codex offers that only OpenAI hosts.
    #[test]
    fn codex_shaped_request() {
        let body = json!({
            "model": "gpt-5-codex",
            "instructions": "You are Codex.",
            "store": false,
            "stream": true,
            "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": "abc",
            "parallel_tool_calls": false,
            "reasoning": {"effort": "medium", "summary": "auto"},
            "tool_choice": "auto",
            "max_output_tokens": 4000,
            "tools": [
                {"type": "function", "name": "shell", "description": "run",
                 "strict": false,
                 "parameters": {"type": "object", "properties": {"command": {"type": "array"}}}},
                {"type": "local_shell"},
                {"type": "web_search"},
                {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}}
            ],
            "input": [
                {"type": "message", "role": "developer",
                 "content": [{"type": "input_text", "text": "sandbox: read-only"}]},
                {"role": "user", "content": [
                    {"type": "input_text", "text": "look at this"},
                    {"type": "input_image", "image_url": "data:image/png;base64,iVBOR"},
                    {"type": "input_image", "image_url": "https://x/y.png"}
                ]},
                {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAA",
                 "summary": [{"type": "summary_text", "text": "Plan"}]},
                {"type": "function_call", "call_id": "c1", "name": "shell",
                 "arguments": "{\"command\":[\"ls\"]}"},
                {"type": "function_call", "call_id": "c2", "name": "shell", "arguments": ""},
                {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
                {"type": "function_call_output", "call_id": "c2", "output": [
                    {"type": "input_text", "text": "shot"},
                    {"type": "input_image", "image_url": "data:image/jpeg;base64,/9j/"},
                    {"type": "input_file", "filename": "r.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}
                ]},
                {"type": "local_shell_call", "id": "lsh_1", "call_id": "c3", "status": "completed",
                 "action": {"type": "exec", "command": ["ls", "-a"], "timeout_ms": null,
                            "working_directory": "/w", "env": {}, "user": null}},
                {"type": "function_call_output", "call_id": "c3", "output": ".git"},
                {"type": "message", "role": "assistant",
                 "content": [{"type": "output_text", "text": "Done."}]},
                {"role": "user", "content": "thanks"}
            ]
        });
        let p = parse(&body).unwrap();
        assert!(p.stream);
        let c = &p.chat;
        assert_eq!(
            c.system.as_deref(),
            Some("You are Codex.\n\nsandbox: read-only")
        );
        assert_eq!(c.max_tokens, Some(4000));
        assert_eq!(c.options.tool_choice, Some(ToolChoice::Auto));
        assert_eq!(c.options.parallel_tool_calls, Some(false));
        assert_eq!(c.options.thinking.unwrap().budget_tokens, Some(8192));
        assert_eq!(
            c.tools.len(),
            3,
            "hosted tools are dropped, custom ones and the local shell kept"
        );
        assert_eq!(c.tools[0].name, "shell");
        assert_eq!(c.tools[1].name, LOCAL_SHELL);
        assert_eq!(c.tools[2].name, "apply_patch");
        assert_eq!(p.custom_tools, ["apply_patch"]);
        assert!(p.local_shell);
        assert_eq!(p.echo["tools"].as_array().unwrap().len(), 3);
        assert_eq!(p.echo["store"], json!(false));

        let roles: Vec<Role> = c.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::User,
                Role::Assistant,
                Role::User,
                Role::Assistant,
                Role::User,
                Role::Assistant,
                Role::User
            ]
        );
        assert_eq!(
            c.messages[0].content[1],
            ContentBlock::Image {
                source: ImageSource::Base64 {
                    media_type: "image/png".into(),
                    data: "iVBOR".into()
                }
            }
        );
        assert!(matches!(
            &c.messages[0].content[2],
            ContentBlock::Image { source: ImageSource::Url { url } } if url == "https://x/y.png"
        ));
        // Reasoning and both calls share one assistant turn.
        let turn = &c.messages[1].content;
        assert_eq!(turn.len(), 3);
        assert_eq!(
            turn[0],
            ContentBlock::Thinking {
                text: "Plan".into(),
                signature: None
            }
        );
        match &turn[2] {
            ContentBlock::ToolUse { id, input_json, .. } => {
                assert_eq!((id.as_str(), input_json.as_str()), ("c2", "{}"))
            }
            other => panic!("{other:?}"),
        }
        // Both outputs share one user turn; the second carries its screenshot.
        let results = &c.messages[2].content;
        assert_eq!(results.len(), 2);
        match &results[1] {
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                images,
                ..
            } => {
                assert_eq!((tool_use_id.as_str(), content.as_str()), ("c2", "shot"));
                // The screenshot, and the PDF the tool returned.
                assert_eq!(images.len(), 2);
                assert!(images[1].is_document());
            }
            other => panic!("{other:?}"),
        }
        // The shell call is the function it was offered as, with its output after it (dropped,
        // its output was a tool result with no call, which providers refuse with a 400).
        assert_eq!(
            c.messages[3].content,
            [ContentBlock::ToolUse {
                id: "c3".into(),
                name: LOCAL_SHELL.into(),
                input_json: r#"{"command":["ls","-a"],"working_directory":"/w","env":{}}"#.into(),
            }]
        );
        assert!(matches!(&c.messages[4].content[0],
            ContentBlock::ToolResult { tool_use_id, content, .. } if tool_use_id == "c3" && content == ".git"));
        assert_eq!(c.messages[5].joined_text(), "Done.");
        assert_eq!(c.messages[6].joined_text(), "thanks");
    }

    #[test]
    fn a_string_input_is_one_user_turn() {
        let p = parse(&json!({"model": "m", "input": "hi", "tool_choice":
            {"type": "function", "name": "get"}, "safety_identifier": "u1"}))
        .unwrap();
        assert_eq!(p.chat.messages, vec![Message::text(Role::User, "hi")]);
        assert_eq!(
            p.chat.options.tool_choice,
            Some(ToolChoice::Tool { name: "get".into() })
        );
        assert_eq!(p.chat.options.user.as_deref(), Some("u1"));
        assert!(!p.stream);
    }

    /// What the stream sends for signed thinking without text comes back as that block.
    #[test]
    fn a_signed_reasoning_item_without_summary_goes_back() {
        let sig = format!("{}c2ln", super::super::stream::SIGNATURE_PREFIX);
        let p = parse(&json!({"model": "m", "input": [
            {"role": "user", "content": "hi"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": sig},
            {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAA"},
            {"role": "user", "content": "go on"},
        ]}))
        .unwrap();
        let thinking: Vec<_> = p
            .chat
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .filter(|b| matches!(b, ContentBlock::Thinking { .. }))
            .collect();
        assert_eq!(
            thinking,
            vec![&ContentBlock::Thinking {
                text: String::new(),
                signature: Some("c2ln".into()),
            }],
            "OpenAI's own opaque state alone is still dropped"
        );
    }

    #[test]
    fn server_side_state_is_refused_with_a_reason() {
        let e = parse(&json!({"model": "m", "input": "hi", "previous_response_id": "resp_1"}))
            .unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert!(e.message.contains("stateless"), "{}", e.message);
        assert!(e.message.contains("previous_response_id"), "{}", e.message);
        // An explicit null is what some clients send when there is none.
        parse(&json!({"model": "m", "input": "hi", "previous_response_id": null})).unwrap();
    }

    #[test]
    fn bad_requests_say_where() {
        let e =
            parse(&json!({"model": "m", "input": [{"role": "bot", "content": "x"}]})).unwrap_err();
        assert!(e.message.starts_with("input.0.role"), "{}", e.message);
        let e = parse(&json!({"model": "m", "input": [{"type": "function_call", "name": "f"}]}))
            .unwrap_err();
        assert!(e.message.starts_with("input.0"), "{}", e.message);
        let e = parse(&json!({"model": "m"})).unwrap_err();
        assert!(e.message.starts_with("input"), "{}", e.message);
        let e = parse(&json!({"model": "m", "input": [{"type": "reasoning", "summary": []}]}))
            .unwrap_err();
        assert!(e.message.contains("at least one"), "{}", e.message);
    }
}
