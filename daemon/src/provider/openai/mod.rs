//! OpenAI Chat Completions (and every compatible endpoint: DeepSeek, OpenRouter, Groq, Ollama,
//! vLLM...): request body and headers. The stream decoder is in [`stream`].
//!
//! Requests may come from an agent that spoke the Anthropic format. What this API has no place
//! for (prompt-cache breakpoints, thinking signatures, redacted thinking) is dropped with a
//! debug line; tool-result images, which a `tool` message cannot carry, follow in a `user`
//! message.
//!
//! The body is a tree of structs borrowing from the client's request (see [`super::wire`]);
//! their field order is the order the keys go out in.

mod fast;
pub mod stream;

use std::borrow::Cow;

use mythos_protocol::{ContentBlock, ImageSource, ResponseFormat, Role, ToolChoice};
use reqwest::header::HeaderMap;
use serde::Serialize;
use serde_json::value::RawValue;

use super::continuation::CONTINUE_INSTRUCTION;
use super::wire::{
    format_instruction, raw_json, system_text, to_bytes, with_instruction, DataUrl, NativeFields,
};
use super::{secret_header, Built, ProviderError, ToolNames, UpstreamRequest};
use crate::config::{is_silent_reasoner, ProviderConfig};

/// Most stop sequences the API takes.
const MAX_STOP: usize = 4;

/// Whether the endpoint is DeepSeek's, whose thinking mode wants its reasoning back on
/// tool-call turns.
pub fn is_deepseek(cfg: &ProviderConfig, model: &str) -> bool {
    cfg.base_url.to_ascii_lowercase().contains("deepseek")
        || model.to_ascii_lowercase().starts_with("deepseek")
}

/// `reasoning_effort` for the client's own word, on `model`: as it is where the model takes it
/// (`minimal` on GPT-5 models, `none` on GPT-5.1 and later), the nearest the model has
/// elsewhere (`xhigh` is the most: `high`), so that a request that fails over to another
/// reasoning model is not refused for a word that model lacks.
pub fn effort_for(model: &str, word: &str) -> &'static str {
    let m = model.to_ascii_lowercase();
    // `openai/gpt-5` through a gateway.
    let m = m.rsplit('/').next().unwrap_or(&m);
    let gpt5 = m.starts_with("gpt-5");
    // GPT-5.1 and later: `gpt-5.1`, `gpt-5.2-codex`...
    let gpt51 = m
        .strip_prefix("gpt-5.")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_digit() && c != '0');
    match word {
        "none" if gpt51 => "none",
        "none" | "minimal" if gpt5 => "minimal",
        "none" | "minimal" | "low" => "low",
        "medium" => "medium",
        _ => "high",
    }
}

/// `reasoning_effort` for a thinking budget (`None`: the model decides, `medium`).
pub fn reasoning_effort(budget: Option<u32>) -> &'static str {
    match budget {
        None => "medium",
        Some(b) if b <= 4096 => "low",
        Some(b) if b <= 16_384 => "medium",
        Some(_) => "high",
    }
}

/// Whether a request's response format goes in `response_format` (else in words): not for a
/// continuation (the rest of a JSON value is not a whole one), not where the provider refused
/// it, and not to DeepSeek beside tools (its JSON mode would force the tool-calling turns into
/// JSON too).
pub fn asks_format_natively(cfg: &ProviderConfig, req: &UpstreamRequest<'_>) -> bool {
    req.chat.options.response_format.is_some()
        && req.prefill.is_none_or(|p| p.is_empty())
        && !req.format_in_words
        && (req.chat.tools.is_empty() || !is_deepseek(cfg, req.model))
}

/// The streamed chat completion endpoint.
pub fn endpoint(cfg: &ProviderConfig) -> String {
    format!("{}/chat/completions", cfg.base_url.trim_end_matches('/'))
}

/// The provider's own headers: the key, if there is one, marked sensitive.
pub fn headers(cfg: &ProviderConfig) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(key) = &cfg.api_key {
        secret_header(
            &mut headers,
            "authorization",
            format!("Bearer {}", key.expose()),
        );
    }
    headers
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<Msg<'a>>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    // f32 widened as a `Value` widened it, so the bytes sent are what they always were.
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a [&'a str]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Tool<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Choice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Format<'a>>,
    /// The client's `seed`, penalties and `logit_bias`, as it sent them.
    #[serde(flatten)]
    native: NativeFields<'a>,
}

/// The OpenAI fields a client's request may carry through (see `ChatOptions::native`).
pub const NATIVE: &[&str] = &[
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
];

/// Which of [`NATIVE`] `cfg`'s model takes. Reasoning models refuse the penalties and
/// `logit_bias` ("Unsupported parameter", a `400`), as they refuse `temperature`; DeepSeek
/// documents the penalties only; `logit_bias` goes to OpenAI's own API (and OpenRouter's)
/// alone, since other servers' token ids differ and some refuse it (Groq).
fn native_allowed(
    cfg: &ProviderConfig,
    reasoning: bool,
    deepseek: bool,
) -> &'static [&'static str] {
    if reasoning {
        &[]
    } else if deepseek {
        &NATIVE[1..3]
    } else if is_openai_or_openrouter(cfg) {
        NATIVE
    } else {
        &NATIVE[..3]
    }
}

/// Whether `cfg` is OpenAI's own API or OpenRouter's, rather than another server of the format.
pub fn is_openai_or_openrouter(cfg: &ProviderConfig) -> bool {
    let url = cfg.base_url.to_ascii_lowercase();
    url.contains("api.openai.com") || url.contains("openrouter.ai")
}

/// `response_format`: JSON mode, or a schema.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Format<'a> {
    JsonObject,
    JsonSchema { json_schema: SchemaFormat<'a> },
}

#[derive(Serialize)]
struct SchemaFormat<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    schema: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// One message. `tool_call_id` only on `tool` messages; `tool_calls` and `reasoning_content`
/// only on assistant turns that call tools.
#[derive(Serialize)]
struct Msg<'a> {
    role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<Cow<'a, str>>,
    content: Content<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
}

impl<'a> Msg<'a> {
    fn new(role: &'static str, content: Content<'a>) -> Self {
        Msg {
            role,
            tool_call_id: None,
            content,
            tool_calls: None,
            reasoning_content: None,
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum Content<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part<'a> {
    Text { text: Cow<'a, str> },
    ImageUrl { image_url: ImageUrl<'a> },
    File { file: File<'a> },
}

/// A document inline: Chat Completions takes a PDF as a `file` part with a data URL.
#[derive(Serialize)]
struct File<'a> {
    filename: &'a str,
    file_data: Url<'a>,
}

#[derive(Serialize)]
struct ImageUrl<'a> {
    url: Url<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Url<'a> {
    Data(DataUrl<'a>),
    Plain(&'a str),
}

#[derive(Serialize)]
struct ToolCall<'a> {
    id: Cow<'a, str>,
    #[serde(rename = "type")]
    kind: &'static str,
    function: CallFunction<'a>,
}

#[derive(Serialize)]
struct CallFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct Tool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionDecl<'a>,
}

#[derive(Serialize)]
struct FunctionDecl<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a RawValue,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Choice<'a> {
    Mode(&'static str),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        function: NamedFunction<'a>,
    },
}

#[derive(Serialize)]
struct NamedFunction<'a> {
    name: &'a str,
}

/// An `image_url` content part.
fn image_part(source: &ImageSource) -> Part<'_> {
    if source.is_document() {
        return document_part(source, None);
    }
    let url = match source {
        ImageSource::Base64 { media_type, data } => Url::Data(DataUrl { media_type, data }),
        ImageSource::Url { url } => Url::Plain(url),
    };
    Part::ImageUrl {
        image_url: ImageUrl { url },
    }
}

/// A document as a `file` part. Chat Completions takes documents inline only: one at a URL
/// is named in words, so the model at least knows it was given one.
fn document_part<'a>(source: &'a ImageSource, title: Option<&'a str>) -> Part<'a> {
    let file_data = match source {
        ImageSource::Base64 { media_type, data } => Url::Data(DataUrl { media_type, data }),
        ImageSource::Url { url } if url.starts_with("data:") => Url::Plain(url),
        ImageSource::Url { url } => {
            return Part::Text {
                text: Cow::Owned(format!(
                    "[A document at {url} was attached; it cannot be shown here.]\n"
                )),
            }
        }
    };
    Part::File {
        file: File {
            filename: title.filter(|t| !t.is_empty()).unwrap_or("document.pdf"),
            file_data,
        },
    }
}

/// The JSON body of a streamed chat completion, and the tool names it used.
pub fn build(cfg: &ProviderConfig, req: &UpstreamRequest<'_>) -> Result<Built, ProviderError> {
    let chat = req.chat;
    let opts = &chat.options;
    let names = ToolNames::for_request(chat);
    let deepseek = is_deepseek(cfg, req.model);
    let reasoning = cfg.reasoning || is_silent_reasoner(req.model);

    let (format, instruction) = match &opts.response_format {
        None => (None, None),
        Some(f) if !asks_format_natively(cfg, req) => (None, Some(format_instruction(f))),
        // DeepSeek has JSON mode but refuses schemas: JSON mode, and the schema in words.
        Some(f @ ResponseFormat::JsonSchema { .. }) if deepseek => {
            (Some(Format::JsonObject), Some(format_instruction(f)))
        }
        Some(ResponseFormat::JsonObject) => (Some(Format::JsonObject), None),
        Some(ResponseFormat::JsonSchema {
            name,
            description,
            schema_json,
            strict,
        }) => (
            Some(Format::JsonSchema {
                json_schema: SchemaFormat {
                    name,
                    description: description.as_deref(),
                    schema: raw_json(schema_json, "response schema")?,
                    strict: *strict,
                },
            }),
            None,
        ),
    };

    let mut messages = Vec::with_capacity(chat.messages.len() + 3);
    if let Some(system) = with_instruction(system_text(chat), instruction.as_deref()) {
        messages.push(Msg::new("system", Content::Text(system)));
    }
    if !opts.cache_points.is_empty() || opts.system_blocks.iter().any(|b| b.cache.is_some()) {
        tracing::debug!("openai: prompt-cache breakpoints dropped (caching is automatic)");
    }
    for m in &chat.messages {
        match m.role {
            Role::User => user_messages(&m.content, deepseek, &mut messages),
            Role::Assistant => messages.push(assistant_message(&m.content, &names, deepseek)),
        }
    }
    if let Some(prefill) = req.prefill.filter(|p| !p.is_empty()) {
        // No prefill in this API: show the partial answer and ask for the rest explicitly.
        messages.push(Msg::new("assistant", Content::Text(prefill.into())));
        messages.push(Msg::new("user", Content::Text(CONTINUE_INSTRUCTION.into())));
    }

    let mut body = Body {
        model: req.model,
        messages,
        stream: true,
        stream_options: StreamOptions {
            include_usage: true,
        },
        max_completion_tokens: None,
        reasoning_effort: None,
        max_tokens: None,
        temperature: None,
        top_p: None,
        stop: None,
        user: None,
        tools: None,
        tool_choice: None,
        parallel_tool_calls: None,
        response_format: format,
        native: NativeFields {
            fields: &opts.native,
            api: "openai",
            allowed: if opts.native.is_empty() {
                &[]
            } else {
                native_allowed(cfg, reasoning, deepseek)
            },
        },
    };
    if reasoning {
        // Reasoning models count their hidden reasoning in this, and refuse `max_tokens`.
        body.max_completion_tokens = Some(req.max_tokens);
        if chat.temperature.is_some() || opts.top_p.is_some() {
            tracing::debug!("openai: sampling parameters dropped (reasoning model)");
        }
        if let Some(word) = &opts.reasoning_effort {
            // The client's own word, which a budget would round (`minimal` came out `low`,
            // `none` as no effort at all: the model's default).
            body.reasoning_effort = Some(effort_for(req.model, word));
        } else if let Some(t) = opts.thinking {
            body.reasoning_effort = Some(reasoning_effort(t.budget_tokens));
        }
    } else {
        body.max_tokens = Some(req.max_tokens);
        body.temperature = chat.temperature.map(f64::from);
        body.top_p = opts.top_p.map(f64::from);
        if opts.thinking.is_some() {
            tracing::debug!(
                model = req.model,
                "openai: thinking dropped (not a reasoning model)"
            );
        }
    }
    let stop: Vec<&str> = opts
        .stop
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    if reasoning && !stop.is_empty() {
        tracing::debug!("openai: stop sequences dropped (reasoning models refuse them)");
    } else if !stop.is_empty() {
        if stop.len() > MAX_STOP {
            tracing::debug!(
                dropped = stop.len() - MAX_STOP,
                "openai: stop sequences over 4 dropped"
            );
        }
        body.stop = Some(&stop[..stop.len().min(MAX_STOP)]);
    }
    body.user = opts.user.as_deref().filter(|u| !u.is_empty());
    if !chat.tools.is_empty() {
        let mut tools = Vec::with_capacity(chat.tools.len());
        for t in &chat.tools {
            tools.push(Tool {
                kind: "function",
                function: FunctionDecl {
                    name: names.wire(&t.name),
                    description: &t.description,
                    parameters: raw_json(&t.input_schema_json, "tool input schema")?,
                },
            });
        }
        body.tools = Some(tools);
        body.tool_choice = opts.tool_choice.as_ref().map(|choice| match choice {
            ToolChoice::Auto => Choice::Mode("auto"),
            ToolChoice::Any => Choice::Mode("required"),
            ToolChoice::None => Choice::Mode("none"),
            ToolChoice::Tool { name } => Choice::Function {
                kind: "function",
                function: NamedFunction {
                    name: names.wire(name),
                },
            },
        });
        body.parallel_tool_calls = opts.parallel_tool_calls;
    } else if opts.tool_choice.is_some() || opts.parallel_tool_calls.is_some() {
        // The API refuses both without tools.
        tracing::debug!("openai: tool_choice / parallel_tool_calls dropped (no tools)");
    }
    let bytes = to_bytes(&body, chat)?;
    Ok(Built {
        body: bytes,
        tool_names: names,
    })
}

/// A user turn: its tool results as `tool` messages first (they must directly follow the
/// assistant turn that called the tools), then a `user` message with the tools' images, then
/// the user's own text and images.
fn user_messages<'a>(content: &'a [ContentBlock], deepseek: bool, messages: &mut Vec<Msg<'a>>) {
    // DeepSeek reads no files and sees no images: they are named in words there (a `file` or
    // `image_url` part is a `400`, "unknown variant `image_url`", and a screenshot in Claude
    // Code's turn failed the attempt on every try).
    let document = |source: &'a ImageSource, title: Option<&'a str>| {
        if deepseek {
            Part::Text {
                text: Cow::Owned(format!(
                    "[A PDF document{} was attached; this model cannot read it.]\n",
                    title.map(|t| format!(" ({t})")).unwrap_or_default()
                )),
            }
        } else {
            document_part(source, title)
        }
    };
    let image = |source: &'a ImageSource| {
        if source.is_document() {
            document(source, None)
        } else if deepseek {
            Part::Text {
                text: Cow::Borrowed("[An image was attached; this model cannot see it.]\n"),
            }
        } else {
            image_part(source)
        }
    };
    let mut parts: Vec<Part<'a>> = Vec::new();
    let mut tool_images: Vec<Part<'a>> = Vec::new();
    for block in content {
        match block {
            ContentBlock::Text { text } if !text.is_empty() => {
                parts.push(Part::Text {
                    text: Cow::Borrowed(text),
                });
            }
            ContentBlock::Image { source } => parts.push(image(source)),
            ContentBlock::Document { source, title } => {
                parts.push(document(source, title.as_deref()))
            }
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
                images,
            } => {
                let text = if *is_error
                    && !content
                        .trim_start()
                        .get(..5)
                        .is_some_and(|w| w.eq_ignore_ascii_case("error"))
                {
                    // No error flag in this API: say it in the text.
                    Cow::Owned(format!("Error: {content}"))
                } else {
                    Cow::Borrowed(content.as_str())
                };
                messages.push(Msg {
                    tool_call_id: Some(call_id(tool_use_id)),
                    ..Msg::new("tool", Content::Text(text))
                });
                if !images.is_empty() {
                    // Most compatible servers refuse images in a `tool` message.
                    tool_images.push(Part::Text {
                        text: Cow::Owned(format!("Images returned by tool call {tool_use_id}:")),
                    });
                    tool_images.extend(images.iter().map(image));
                }
            }
            ContentBlock::Thinking { .. }
            | ContentBlock::RedactedThinking { .. }
            | ContentBlock::ServerBlock { .. } => {
                tracing::debug!("openai: thinking or server tool block in a user turn dropped");
            }
            ContentBlock::Text { .. } | ContentBlock::ToolUse { .. } => {}
        }
    }
    // The tools' images in a message of their own, so the user's own turn reads the same as
    // in the other formats.
    for parts in [tool_images, parts] {
        if parts.is_empty() {
            continue;
        }
        let content = if parts.iter().all(|p| matches!(p, Part::Text { .. })) {
            // Text only: a plain string, which every compatible server accepts.
            let mut texts = parts.into_iter().map(|p| match p {
                Part::Text { text } => text,
                Part::ImageUrl { .. } | Part::File { .. } => Cow::Borrowed(""),
            });
            let first = texts.next().unwrap_or_default();
            Content::Text(texts.fold(first, |mut all, t| {
                all.to_mut().push_str(&t);
                all
            }))
        } else {
            Content::Parts(parts)
        };
        messages.push(Msg::new("user", content));
    }
}

/// The longest tool-call id OpenAI takes (`string too long. Expected a string with maximum
/// length 40`); other providers' ids are longer (Vertex's `toolu_vrtx_…`, a gateway's
/// `call_0_<uuid>`), and a conversation holding one was refused on every turn once it failed
/// over to an OpenAI-format provider (found by a helper's agent run).
const MAX_CALL_ID: usize = 40;

/// A tool call's id as OpenAI takes it: a longer one becomes its first characters and a hash
/// of the whole, the same wherever it occurs (the call and its result), so two ids cannot
/// become one.
fn call_id(id: &str) -> Cow<'_, str> {
    if id.len() <= MAX_CALL_ID {
        return Cow::Borrowed(id);
    }
    let hash = crate::provider::toolnames::fnv1a64(id.as_bytes());
    // 16 hex digits and `_` leave 23 bytes of the original (whole characters only).
    let mut kept = MAX_CALL_ID - 17;
    while !id.is_char_boundary(kept) {
        kept -= 1;
    }
    Cow::Owned(format!("{}_{hash:016x}", &id[..kept]))
}

/// An assistant turn: its text and tool calls (and, for DeepSeek, its reasoning).
fn assistant_message<'a>(
    content: &'a [ContentBlock],
    names: &'a ToolNames,
    deepseek: bool,
) -> Msg<'a> {
    let mut text: Cow<'a, str> = Cow::Borrowed("");
    let mut thinking = String::new();
    let mut tool_calls = Vec::new();
    for block in content {
        match block {
            ContentBlock::Text { text: t } if text.is_empty() => text = Cow::Borrowed(t),
            ContentBlock::Text { text: t } => text.to_mut().push_str(t),
            ContentBlock::ToolUse {
                id,
                name,
                input_json,
            } => tool_calls.push(ToolCall {
                id: call_id(id),
                kind: "function",
                function: CallFunction {
                    name: names.wire(name),
                    arguments: input_json,
                },
            }),
            ContentBlock::Thinking { text: t, .. } => thinking.push_str(t),
            // Anthropic's server tools' blocks mean nothing elsewhere (their results are
            // encrypted); the text that quoted them follows.
            ContentBlock::RedactedThinking { .. } | ContentBlock::ServerBlock { .. } => {
                tracing::debug!("openai: redacted thinking or server tool block dropped");
            }
            ContentBlock::Image { .. }
            | ContentBlock::Document { .. }
            | ContentBlock::ToolResult { .. } => {
                tracing::debug!(
                    "openai: image, document or tool result in an assistant turn dropped"
                );
            }
        }
    }
    let mut msg = Msg::new("assistant", Content::Text(text));
    if !tool_calls.is_empty() {
        msg.tool_calls = Some(tool_calls);
        if deepseek {
            // DeepSeek's thinking mode refuses a tool-call turn without `reasoning_content`. A
            // turn another provider wrote has no reasoning to give: it gets an empty one, as the
            // field's absence is what is refused.
            msg.reasoning_content = Some(thinking);
            return msg;
        }
    }
    if !thinking.is_empty() {
        tracing::debug!("openai: thinking dropped");
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Api, Secret};
    use mythos_protocol::{
        CachePoint, CacheTtl, ChatRequest, Message, SystemBlock, Thinking, ToolSpec,
    };
    use serde_json::{json, Value};

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
            prefill_blocks: &[],
            format_in_words: false,
        };
        let Built { body, .. } = build(&cfg, &req).unwrap();
        assert_eq!(endpoint(&cfg), "http://127.0.0.1:1/v1/chat/completions");
        assert!(headers(&cfg)["authorization"].is_sensitive());
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

    fn schema_request() -> ChatRequest {
        let mut chat = ChatRequest::user_text(1, "extract");
        chat.system = Some("be exact".into());
        chat.options.response_format = Some(ResponseFormat::JsonSchema {
            name: "event".into(),
            description: Some("an event".into()),
            schema_json: r#"{"type":"object","properties":{"day":{"type":"string"}}}"#.into(),
            strict: Some(true),
        });
        chat
    }

    /// Structured output: as asked where the API has it; DeepSeek (JSON mode, no schemas)
    /// gets JSON mode and the schema in words; a continuation gets words only, since the rest
    /// of a JSON value is not a whole one.
    #[test]
    fn structured_output_natively_or_in_words() {
        let chat = schema_request();
        let schema = json!({"type": "object", "properties": {"day": {"type": "string"}}});
        let openai = ProviderConfig::new("o", Api::Openai, "https://api.openai.com/v1", "gpt-4o");
        let v = body_for(&openai, &chat);
        assert_eq!(
            v["response_format"],
            json!({"type": "json_schema",
                   "json_schema": {"name": "event", "description": "an event",
                                   "schema": schema, "strict": true}})
        );
        assert_eq!(
            v["messages"][0],
            json!({"role": "system", "content": "be exact"})
        );

        let deepseek = ProviderConfig::new(
            "d",
            Api::Openai,
            "https://api.deepseek.com",
            "deepseek-chat",
        );
        let v = body_for(&deepseek, &chat);
        assert_eq!(v["response_format"], json!({"type": "json_object"}));
        let system = v["messages"][0]["content"].as_str().unwrap();
        assert!(system.starts_with("be exact\n\n"), "{system}");
        assert!(system.contains(&schema.to_string()), "{system}");
        assert!(
            system.contains("JSON"),
            "DeepSeek's JSON mode wants the word: {system}"
        );
        // Beside tools, JSON mode would force the tool-calling turns into JSON too: words only.
        let mut tooled = chat.clone();
        tooled.tools = vec![ToolSpec {
            name: "read".into(),
            description: String::new(),
            input_schema_json: r#"{"type":"object"}"#.into(),
        }];
        let v = body_for(&deepseek, &tooled);
        assert!(v.get("response_format").is_none(), "{v}");
        assert!(v["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("JSON Schema"));
        // A provider that refused the native field, and a continuation, get words.
        for (prefill, format_in_words) in [(None, true), (Some("{\"day\": \"Fri"), false)] {
            let req = UpstreamRequest {
                chat: &chat,
                model: "gpt-4o",
                max_tokens: 100,
                prefill,
                prefill_blocks: &[],
                format_in_words,
            };
            let v: Value = serde_json::from_slice(&build(&openai, &req).unwrap().body).unwrap();
            assert!(v.get("response_format").is_none(), "{v}");
            let system = v["messages"][0]["content"].as_str().unwrap();
            assert!(system.contains(&schema.to_string()), "{system}");
        }

        let mut any = ChatRequest::user_text(1, "json please");
        any.options.response_format = Some(ResponseFormat::JsonObject);
        let v = body_for(&openai, &any);
        assert_eq!(v["response_format"], json!({"type": "json_object"}));
        assert_eq!(
            v["messages"].as_array().unwrap().len(),
            1,
            "no system added"
        );
    }

    fn body_for(cfg: &ProviderConfig, chat: &ChatRequest) -> Value {
        let req = UpstreamRequest {
            chat,
            model: &cfg.model,
            max_tokens: 100,
            prefill: None,
            prefill_blocks: &[],
            format_in_words: false,
        };
        serde_json::from_slice(&build(cfg, &req).unwrap().body).unwrap()
    }

    fn openai(model: &str) -> ProviderConfig {
        ProviderConfig::new("openai", Api::Openai, "https://api.openai.com/v1", model)
    }

    fn tool(name: &str) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: String::new(),
            input_schema_json: r#"{"type":"object"}"#.into(),
        }
    }

    fn png() -> ImageSource {
        ImageSource::Base64 {
            media_type: "image/png".into(),
            data: "iVBOR".into(),
        }
    }

    #[test]
    fn images_become_parts_and_tool_images_follow_the_tool_messages() {
        let mut chat = ChatRequest::user_text(1, "see");
        chat.messages[0].content.push(ContentBlock::Image {
            source: ImageSource::Url {
                url: "https://x/y.jpg".into(),
            },
        });
        chat.messages.push(Message {
            role: Role::Assistant,
            content: vec![
                ContentBlock::ToolUse {
                    id: "c1".into(),
                    name: "shot".into(),
                    input_json: "{}".into(),
                },
                ContentBlock::ToolUse {
                    id: "c2".into(),
                    name: "run".into(),
                    input_json: "{}".into(),
                },
            ],
        });
        chat.messages.push(Message {
            role: Role::User,
            content: vec![
                ContentBlock::ToolResult {
                    tool_use_id: "c1".into(),
                    content: "here".into(),
                    is_error: false,
                    images: vec![png()],
                },
                ContentBlock::ToolResult {
                    tool_use_id: "c2".into(),
                    content: "exit 1".into(),
                    is_error: true,
                    images: Vec::new(),
                },
                ContentBlock::ToolResult {
                    tool_use_id: "c3".into(),
                    content: "Error: already said".into(),
                    is_error: true,
                    images: Vec::new(),
                },
            ],
        });
        let v = body_for(&openai("gpt-4o"), &chat);
        let m = v["messages"].as_array().unwrap();
        assert_eq!(
            m[0]["content"],
            json!([{"type": "text", "text": "see"},
                   {"type": "image_url", "image_url": {"url": "https://x/y.jpg"}}])
        );
        assert_eq!(
            m[2],
            json!({"role": "tool", "tool_call_id": "c1", "content": "here"})
        );
        assert_eq!(m[3]["content"], "Error: exit 1");
        assert_eq!(m[4]["content"], "Error: already said");
        assert_eq!(
            m[5],
            json!({"role": "user", "content": [
                {"type": "text", "text": "Images returned by tool call c1:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}]})
        );
        assert_eq!(m.len(), 6);
        // Plain text stays a plain string.
        let v = body_for(&openai("gpt-4o"), &ChatRequest::user_text(1, "hi"));
        assert_eq!(v["messages"][0]["content"], "hi");
    }

    /// OpenAI takes tool-call ids of up to 40 characters: longer ones from other providers
    /// (Vertex's `toolu_vrtx_…`, `call_0_<uuid>`) are shortened the same way in the call and
    /// in its result, two long ids that begin alike stay apart, and short ones pass as they are.
    #[test]
    fn long_tool_call_ids_are_shortened_alike_in_call_and_result() {
        let long = "call_0_51ac2b2e-7dc8-4d35-9a54-5b5f0b0f1d11";
        let twin = "call_0_51ac2b2e-7dc8-4d35-9a54-5b5f0b0f1d12";
        let mut chat = ChatRequest::user_text(1, "read both");
        let call = |id: &str| ContentBlock::ToolUse {
            id: id.into(),
            name: "read".into(),
            input_json: "{}".into(),
        };
        let result = |id: &str| ContentBlock::ToolResult {
            tool_use_id: id.into(),
            content: "ok".into(),
            is_error: false,
            images: Vec::new(),
        };
        chat.messages.push(Message {
            role: Role::Assistant,
            content: vec![call(long), call(twin), call("c1")],
        });
        chat.messages.push(Message {
            role: Role::User,
            content: vec![result(long), result(twin), result("c1")],
        });
        let v = body_for(&openai("gpt-4o"), &chat);
        let m = v["messages"].as_array().unwrap();
        let calls: Vec<&str> = m[1]["tool_calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        let results: Vec<&str> = m[2..5]
            .iter()
            .map(|r| r["tool_call_id"].as_str().unwrap())
            .collect();
        assert_eq!(calls, results);
        assert!(calls.iter().all(|id| id.len() <= 40), "{calls:?}");
        assert!(calls[0].starts_with("call_0_51ac2b2e"), "{calls:?}");
        assert_ne!(calls[0], calls[1]);
        assert_eq!(calls[2], "c1");
    }

    /// DeepSeek refuses `image_url` parts ("unknown variant `image_url`", a `400`): a request
    /// with a screenshot that reached it after the providers that see images were busy failed
    /// there on every try (found by a helper replaying Claude Code). Images are named in words,
    /// in the user's turn and among a tool's results, as PDFs already were.
    #[test]
    fn deepseek_gets_images_named_in_words() {
        let mut chat = ChatRequest::user_text(1, "what is on it?");
        chat.messages[0]
            .content
            .push(ContentBlock::Image { source: png() });
        chat.messages.push(Message {
            role: Role::Assistant,
            content: vec![ContentBlock::ToolUse {
                id: "c1".into(),
                name: "shot".into(),
                input_json: "{}".into(),
            }],
        });
        chat.messages.push(Message {
            role: Role::User,
            content: vec![ContentBlock::ToolResult {
                tool_use_id: "c1".into(),
                content: "here".into(),
                is_error: false,
                images: vec![png()],
            }],
        });
        let deepseek = ProviderConfig::new(
            "deepseek",
            Api::Openai,
            "https://api.deepseek.com",
            "deepseek-chat",
        );
        let text = body_for(&deepseek, &chat).to_string();
        assert!(!text.contains("image_url"), "{text}");
        assert_eq!(
            text.matches("[An image was attached; this model cannot see it.]")
                .count(),
            2,
            "{text}"
        );
        // Elsewhere they stay images.
        let v = body_for(&openai("gpt-4o"), &chat);
        assert_eq!(v["messages"][0]["content"][1]["type"], "image_url");
    }

    /// OpenAI's own sampling settings a client sent go on as sent (they were dropped even when
    /// the request was pinned to an OpenAI provider); DeepSeek documents the penalties only.
    #[test]
    fn the_clients_own_openai_fields_go_as_sent() {
        let mut chat = ChatRequest::user_text(1, "hi");
        let field = mythos_protocol::NativeField::new;
        chat.options.native = vec![
            field("openai", "seed", "7"),
            field("openai", "frequency_penalty", "0.5"),
            field("openai", "presence_penalty", "-0.5"),
            field("openai", "logit_bias", r#"{"50256":-100}"#),
            field("openai", "stream", "false"),
            field("anthropic", "top_k", "5"),
        ];
        let v = body_for(&openai("gpt-4o"), &chat);
        assert_eq!(v["seed"], 7);
        assert_eq!(v["frequency_penalty"], 0.5);
        assert_eq!(v["presence_penalty"], -0.5);
        assert_eq!(v["logit_bias"], json!({"50256": -100}));
        assert_eq!(v["stream"], true);
        assert!(v.get("top_k").is_none());
        let deepseek = ProviderConfig::new(
            "deepseek",
            Api::Openai,
            "https://api.deepseek.com",
            "deepseek-chat",
        );
        let v = body_for(&deepseek, &chat);
        assert_eq!(v["frequency_penalty"], 0.5);
        assert!(v.get("seed").is_none() && v.get("logit_bias").is_none());
        // Reasoning models refuse all but the prompt ("Unsupported parameter", a 400), as
        // they refuse `temperature` (found by a review).
        let v = body_for(&openai("o3-mini"), &chat);
        for name in NATIVE {
            assert!(v.get(name).is_none(), "{name}: {v}");
        }
        // Other servers' token ids differ, and some refuse `logit_bias` (Groq).
        let local = ProviderConfig::new("local", Api::Openai, "http://127.0.0.1:8080/v1", "qwen");
        let v = body_for(&local, &chat);
        assert_eq!(v["seed"], 7);
        assert!(v.get("logit_bias").is_none(), "{v}");
    }

    #[test]
    fn thinking_goes_back_to_deepseek_tool_turns_only() {
        let mut chat = ChatRequest::user_text(1, "q");
        chat.messages.push(Message {
            role: Role::Assistant,
            content: vec![
                ContentBlock::Thinking {
                    text: "plan".into(),
                    signature: Some("anthropic-sig".into()),
                },
                ContentBlock::RedactedThinking { data: "x".into() },
                ContentBlock::ToolUse {
                    id: "c".into(),
                    name: "f".into(),
                    input_json: "{}".into(),
                },
            ],
        });
        chat.messages.push(Message {
            role: Role::Assistant,
            content: vec![
                ContentBlock::Thinking {
                    text: "musing".into(),
                    signature: None,
                },
                ContentBlock::Text { text: "a".into() },
            ],
        });
        let ds = ProviderConfig::new(
            "ds",
            Api::Openai,
            "https://api.deepseek.com",
            "deepseek-reasoner",
        );
        let v = body_for(&ds, &chat);
        assert_eq!(v["messages"][1]["reasoning_content"], "plan");
        assert!(v["messages"][2].get("reasoning_content").is_none());
        let v = body_for(&openai("gpt-4o"), &chat);
        assert!(v["messages"][1].get("reasoning_content").is_none());
        assert!(!v.to_string().contains("plan"));
        assert!(!v.to_string().contains("musing"));
        // A tool-call turn with no thinking still gets the field DeepSeek insists on.
        chat.messages[1].content.remove(0);
        let v = body_for(&ds, &chat);
        assert_eq!(v["messages"][1]["reasoning_content"], "");
    }

    #[test]
    fn options_and_dropped_caching() {
        let mut chat = ChatRequest::user_text(1, "hi");
        chat.system = None;
        chat.options.system_blocks = vec![
            SystemBlock {
                text: "a".into(),
                cache: Some(CacheTtl::Hour),
            },
            SystemBlock {
                text: "b".into(),
                cache: None,
            },
        ];
        chat.options.cache_points = vec![CachePoint {
            message: 0,
            block: 0,
            ttl: CacheTtl::Default,
        }];
        chat.temperature = Some(0.5);
        chat.options.top_p = Some(0.5);
        chat.options.stop = (0..6).map(|i| format!("s{i}")).collect();
        chat.options.user = Some("u".into());
        chat.options.tool_choice = Some(ToolChoice::Any);
        chat.options.parallel_tool_calls = Some(false);
        chat.options.thinking = Some(Thinking {
            budget_tokens: Some(50_000),
            display: true,
        });
        let v = body_for(&openai("gpt-4o"), &chat);
        assert_eq!(
            v["messages"][0],
            json!({"role": "system", "content": "a\n\nb"})
        );
        assert!(!v.to_string().contains("cache"));
        assert_eq!(v["stop"], json!(["s0", "s1", "s2", "s3"]));
        assert_eq!(v["user"], "u");
        assert_eq!(v["max_tokens"], 100);
        assert!(v["top_p"].is_number() && v["temperature"].is_number());
        assert!(v.get("reasoning_effort").is_none());
        // No tools: no tool_choice, no parallel_tool_calls.
        assert!(v.get("tool_choice").is_none() && v.get("parallel_tool_calls").is_none());

        chat.tools.push(tool("read"));
        let v = body_for(&openai("gpt-4o"), &chat);
        assert_eq!(v["tool_choice"], "required");
        assert_eq!(v["parallel_tool_calls"], false);
        for (choice, want) in [
            (ToolChoice::Auto, json!("auto")),
            (ToolChoice::None, json!("none")),
            (
                ToolChoice::Tool {
                    name: "read".into(),
                },
                json!({"type": "function", "function": {"name": "read"}}),
            ),
        ] {
            chat.options.tool_choice = Some(choice);
            assert_eq!(body_for(&openai("gpt-4o"), &chat)["tool_choice"], want);
        }
    }

    /// The client's effort word reaches a model that takes it as it is, and the nearest word
    /// a model has otherwise (a failover to another reasoning model must not be refused).
    #[test]
    fn the_clients_effort_word_is_kept_where_the_model_takes_it() {
        let mut chat = ChatRequest::user_text(1, "hi");
        for (model, word, sent) in [
            ("gpt-5", "minimal", "minimal"),
            ("gpt-5-mini", "none", "minimal"),
            ("gpt-5.1", "none", "none"),
            ("openai/gpt-5.2-codex", "none", "none"),
            ("gpt-5.1", "minimal", "minimal"),
            ("o3", "minimal", "low"),
            ("o4-mini", "none", "low"),
            ("gpt-5", "low", "low"),
            ("gpt-5", "medium", "medium"),
            ("gpt-5", "high", "high"),
            ("gpt-5.1-codex-max", "xhigh", "high"),
        ] {
            chat.options.reasoning_effort = Some(word.into());
            assert_eq!(
                body_for(&openai(model), &chat)["reasoning_effort"],
                sent,
                "{model} {word}"
            );
        }
    }

    #[test]
    fn reasoning_models_get_their_own_parameters() {
        let mut chat = ChatRequest::user_text(1, "hi");
        chat.temperature = Some(0.5);
        chat.options.top_p = Some(0.5);
        chat.options.stop = vec!["x".into()];
        let v = body_for(&openai("o3"), &chat);
        assert_eq!(v["max_completion_tokens"], 100);
        for absent in [
            "max_tokens",
            "temperature",
            "top_p",
            "stop",
            "reasoning_effort",
        ] {
            assert!(v.get(absent).is_none(), "{absent}");
        }
        for (budget, effort) in [
            (None, "medium"),
            (Some(1024), "low"),
            (Some(4096), "low"),
            (Some(16_384), "medium"),
            (Some(32_000), "high"),
        ] {
            chat.options.thinking = Some(Thinking {
                budget_tokens: budget,
                display: false,
            });
            assert_eq!(
                body_for(&openai("gpt-5"), &chat)["reasoning_effort"],
                effort
            );
        }
        // Configured as a reasoner although the name does not say so.
        let mut cfg = openai("my-thinker");
        cfg.reasoning = true;
        assert_eq!(body_for(&cfg, &chat)["reasoning_effort"], "high");
    }

    #[test]
    fn tool_names_are_fitted_and_returned() {
        let mut chat = ChatRequest::user_text(1, "hi");
        chat.tools.push(tool("fs/read file"));
        chat.options.tool_choice = Some(ToolChoice::Tool {
            name: "fs/read file".into(),
        });
        let req = UpstreamRequest {
            chat: &chat,
            model: "gpt-4o",
            max_tokens: 10,
            prefill: None,
            prefill_blocks: &[],
            format_in_words: false,
        };
        let b = build(&openai("gpt-4o"), &req).unwrap();
        let v: Value = serde_json::from_slice(&b.body).unwrap();
        let wire = v["tools"][0]["function"]["name"].as_str().unwrap();
        assert!(super::super::toolnames::is_valid(wire));
        assert_eq!(v["tool_choice"]["function"]["name"], wire);
        assert_eq!(b.tool_names.client(wire.into()), "fs/read file");
    }
}
