//! Anthropic Messages API: request body and headers. The stream decoder is in [`stream`].
//!
//! The request may come from an agent that spoke the OpenAI format and may carry history another
//! provider wrote, so the body is built defensively: what Anthropic cannot take (unsigned
//! thinking, empty text, too many cache breakpoints) is dropped with a debug line, and extended
//! thinking is only switched on when the rest of the request satisfies the API's rules for it.
//!
//! The body is a tree of structs borrowing from the client's request (see [`super::wire`]);
//! their field order is the order the keys go out in.

pub mod stream;

use std::borrow::Cow;

use mythos_protocol::{
    CachePoint, CacheTtl, ChatRequest, ContentBlock, ErrorKind, ImageSource, Message,
    ResponseFormat, Role, Thinking, ToolChoice, PDF,
};
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::wire::{format_instruction, raw_json, to_bytes, tool_input, NativeFields};
use super::{
    key_or_empty, secret_header, Built, PrefillBlock, ProviderError, ToolNames, UpstreamRequest,
};
use crate::config::{default_output_limit, ProviderConfig};

/// API version header value; the streaming event format used here is stable under it.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Most `cache_control` breakpoints one request may carry.
const MAX_CACHE_POINTS: usize = 4;

/// Smallest thinking budget the API accepts.
const MIN_THINKING_BUDGET: u32 = 1024;

/// Thinking budget when the client lets the model decide, at most.
const ADAPTIVE_THINKING_CAP: u32 = 16_000;

/// The Messages endpoint.
pub fn endpoint(cfg: &ProviderConfig) -> String {
    format!("{}/v1/messages", cfg.base_url.trim_end_matches('/'))
}

/// The provider's own headers: the API version and the key (marked sensitive).
pub fn headers(cfg: &ProviderConfig) -> HeaderMap {
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
    headers
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    stream: bool,
    messages: Vec<Msg<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<System<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<ThinkingOut>,
    // f32 widened as a `Value` widened it, so the bytes sent are what they always were.
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<AnyTool<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Choice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<OutputConfig<'a>>,
    /// The client's `context_management`, as it sent it (a beta it names in
    /// `anthropic-beta`, which goes with it).
    #[serde(skip_serializing_if = "Option::is_none")]
    context_management: Option<&'a RawValue>,
    /// The client's `mcp_servers`, `container` and `top_k`, as it sent them.
    #[serde(flatten)]
    native: NativeFields<'a>,
}

/// The Anthropic fields a client's request may carry through (see `ChatOptions::native`).
/// The first two name what only Anthropic can serve (see [`binds`]).
pub const NATIVE: &[&str] = &["mcp_servers", "container", "top_k"];

/// Whether `f` asks for what runs at Anthropic alone (an MCP server's tools, a code-execution
/// container): such a request goes to an Anthropic provider first, as for server tools.
pub fn binds(f: &mythos_protocol::NativeField) -> bool {
    f.api == "anthropic" && NATIVE[..2].contains(&f.name.as_str())
}

/// `output_config`: structured output (`{"format": {"type": "json_schema", "schema"}}`).
#[derive(Serialize)]
struct OutputConfig<'a> {
    format: OutputFormat<'a>,
}

#[derive(Serialize)]
struct OutputFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    schema: &'a RawValue,
}

#[derive(Serialize)]
#[serde(untagged)]
enum System<'a> {
    Blocks(Vec<Block<'a>>),
    Text(&'a str),
}

#[derive(Serialize)]
struct ThinkingOut {
    #[serde(rename = "type")]
    kind: &'static str,
    budget_tokens: u32,
}

#[derive(Serialize)]
struct Metadata<'a> {
    user_id: &'a str,
}

#[derive(Serialize)]
struct Tool<'a> {
    name: &'a str,
    description: &'a str,
    input_schema: &'a RawValue,
}

/// A tool the client runs, or one of Anthropic's server tools as the client offered it.
#[derive(Serialize)]
#[serde(untagged)]
enum AnyTool<'a> {
    Client(Tool<'a>),
    Server(&'a RawValue),
}

#[derive(Serialize)]
struct Choice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Serialize)]
struct Msg<'a> {
    role: &'static str,
    content: MsgContent<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum MsgContent<'a> {
    Blocks(Vec<Block<'a>>),
    Text(&'a str),
}

/// A content block. Those that can end a cached prefix carry `cache_control`, last.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    ToolUse {
        id: Cow<'a, str>,
        name: &'a str,
        input: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    ToolResult {
        tool_use_id: Cow<'a, str>,
        content: ResultContent<'a>,
        is_error: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    Image {
        source: Source<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    Document {
        source: Source<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        title: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    RedactedThinking {
        data: &'a str,
    },
    /// A server tool's call or result, as Anthropic made it.
    #[serde(untagged)]
    Server(&'a RawValue),
}

impl Block<'_> {
    /// Where a breakpoint goes on this block; `None` for thinking, which cannot carry one.
    fn cache_slot(&mut self) -> Option<&mut Option<CacheControl>> {
        match self {
            Block::Text { cache_control, .. }
            | Block::ToolUse { cache_control, .. }
            | Block::ToolResult { cache_control, .. }
            | Block::Image { cache_control, .. }
            | Block::Document { cache_control, .. } => Some(cache_control),
            Block::Thinking { .. } | Block::RedactedThinking { .. } | Block::Server(_) => None,
        }
    }

    fn is_thinking(&self) -> bool {
        matches!(
            self,
            Block::Thinking { .. } | Block::RedactedThinking { .. }
        )
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum ResultContent<'a> {
    Text(&'a str),
    Parts(Vec<Block<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Source<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

#[derive(Serialize)]
struct CacheControl {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<&'static str>,
}

/// The JSON body of a streamed Messages request, and the tool names it used.
pub fn build(cfg: &ProviderConfig, req: &UpstreamRequest<'_>) -> Result<Built, ProviderError> {
    let chat = req.chat;
    let opts = &chat.options;
    let names = ToolNames::for_request(chat);

    // Structured output: natively on the models that have it, else (and for a continuation,
    // whose rest of a JSON value is not a whole one) in words after the system prompt.
    let (output_config, instruction) = match &opts.response_format {
        None => (None, None),
        Some(ResponseFormat::JsonSchema { schema_json, .. }) if asks_format_natively(req) => {
            let format = OutputFormat {
                kind: "json_schema",
                schema: raw_json(schema_json, "response schema")?,
            };
            (Some(OutputConfig { format }), None)
        }
        Some(f) => (None, Some(format_instruction(f))),
    };
    let joined: Option<String> =
        instruction
            .as_ref()
            .map(|i| match chat.system.as_deref().filter(|s| !s.is_empty()) {
                Some(s) => format!("{s}\n\n{i}"),
                None => i.clone(),
            });

    // With no breakpoint from the client and leave to place them: one after the system prompt
    // (tools and system are the first part of the prefix) and one after the last message, so
    // each turn of an agent reads the turn before it from the cache and writes itself; and one
    // after the latest earlier turn of the last speaker, which the previous request marked,
    // so its exact prefix is found however many blocks this turn adds.
    let auto = opts.cache_automatically
        && opts.cache_points.is_empty()
        && opts.system_blocks.iter().all(|b| b.cache.is_none());
    let auto_points = if auto {
        auto_cache_points(chat)
    } else {
        Vec::new()
    };
    let auto_system = auto.then_some(CacheTtl::Default);

    // The system prompt, and how many breakpoints it uses up.
    let mut cache_budget = MAX_CACHE_POINTS;
    let system = if auto_system.is_some()
        && opts.system_blocks.iter().all(|b| b.text.is_empty())
        && chat.system.as_deref().is_some_and(|s| !s.is_empty())
    {
        // One text block, to carry the breakpoint; the instruction after it.
        cache_budget -= 1;
        let mut blocks = vec![Block::Text {
            text: chat.system.as_deref().unwrap_or_default(),
            cache_control: auto_system.map(cache_control),
        }];
        if let Some(i) = &instruction {
            blocks.push(Block::Text {
                text: i,
                cache_control: None,
            });
        }
        Some(System::Blocks(blocks))
    } else if opts.system_blocks.iter().any(|b| !b.text.is_empty()) {
        let last = opts.system_blocks.iter().rposition(|b| !b.text.is_empty());
        let mut blocks = Vec::with_capacity(opts.system_blocks.len());
        for (bi, b) in opts.system_blocks.iter().enumerate() {
            if b.text.is_empty() {
                continue;
            }
            let mut cache = None;
            let ttl = b.cache.or(auto_system.filter(|_| Some(bi) == last));
            if let Some(ttl) = ttl {
                if cache_budget > 0 {
                    cache_budget -= 1;
                    cache = Some(cache_control(ttl));
                } else {
                    tracing::debug!("anthropic: system cache breakpoint dropped (limit 4)");
                }
            }
            blocks.push(Block::Text {
                text: &b.text,
                cache_control: cache,
            });
        }
        if let Some(i) = &instruction {
            // After the client's blocks, so their cached prefix stays the same.
            blocks.push(Block::Text {
                text: i,
                cache_control: None,
            });
        }
        Some(System::Blocks(blocks))
    } else if let Some(j) = &joined {
        Some(System::Text(j))
    } else {
        chat.system
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(System::Text)
    };

    // Breakpoints on messages: the latest ones win when there are too many, as they cover the
    // longest prefix.
    let mut points = if auto {
        auto_points
    } else {
        opts.cache_points.clone()
    };
    points.sort_by_key(|p| (p.message, p.block));
    if points.len() > cache_budget {
        tracing::debug!(
            dropped = points.len() - cache_budget,
            "anthropic: message cache breakpoints dropped (limit 4)"
        );
        points.drain(..points.len() - cache_budget);
    }

    let mut messages: Vec<Msg<'_>> = Vec::with_capacity(chat.messages.len() + 1);
    // For each source block of a message with breakpoints, the index of the output block that
    // carries it (or the nearest earlier one that can take a breakpoint).
    let mut carrier: Vec<Option<usize>> = Vec::new();
    for (mi, m) in chat.messages.iter().enumerate() {
        let mut content: Vec<Block<'_>> = Vec::with_capacity(m.content.len());
        let mut here = points
            .iter()
            .filter(|p| p.message as usize == mi)
            .peekable();
        let cached = here.peek().is_some();
        carrier.clear();
        let mut last_cacheable: Option<usize> = None;
        for block in &m.content {
            if let Some(mut b) = block_json(block, m.role, &names) {
                if b.cache_slot().is_some() {
                    last_cacheable = Some(content.len());
                }
                content.push(b);
            }
            if cached {
                carrier.push(last_cacheable);
            }
        }
        for p in here {
            match carrier.get(p.block as usize).copied().flatten() {
                Some(i) => {
                    if let Some(slot) = content[i].cache_slot() {
                        *slot = Some(cache_control(p.ttl));
                    }
                }
                None => tracing::debug!(
                    message = p.message,
                    block = p.block,
                    "anthropic: cache breakpoint on a block not sent, dropped"
                ),
            }
        }
        if content.is_empty() {
            // The API refuses empty content; a turn that was only foreign thinking says nothing
            // Anthropic can use.
            tracing::debug!(message = mi, "anthropic: message left empty, skipped");
            continue;
        }
        // Skipping can leave two turns of one speaker in a row: the API takes that (it joins
        // them), as it does when a client sends it.
        messages.push(Msg {
            role: role_name(m.role),
            content: MsgContent::Blocks(content),
        });
    }
    let mut prefilled = false;
    if let Some(prefill) = req.prefill {
        if req.prefill_blocks.is_empty() {
            // The API rejects a final assistant turn ending in whitespace; the router strips
            // the trimmed part from the start of the continuation so nothing is duplicated or
            // lost.
            let trimmed = prefill.trim_end();
            if !trimmed.is_empty() {
                prefilled = true;
                messages.push(Msg {
                    role: "assistant",
                    content: MsgContent::Text(trimmed),
                });
            }
        } else {
            let content = prefill_with_blocks(prefill, req.prefill_blocks);
            if !content.is_empty() {
                prefilled = true;
                messages.push(Msg {
                    role: "assistant",
                    content: MsgContent::Blocks(content),
                });
            }
        }
    }

    let mut max_tokens = req.max_tokens;
    let has_tools = !chat.tools.is_empty() || !opts.server_tools.is_empty();
    let thinking = opts.thinking.and_then(|t| {
        let why_not = if !supports_thinking(req.model) {
            Some("model has no extended thinking")
        } else if prefilled {
            // A final assistant turn must then start with a thinking block, which a
            // continuation of another provider's text cannot have.
            Some("continuing a prefill")
        } else if has_tools
            && matches!(
                opts.tool_choice,
                Some(ToolChoice::Any | ToolChoice::Tool { .. })
            )
        {
            Some("tool choice forces a tool")
        } else if !last_tool_turn_starts_with_thinking(&messages) {
            // The API wants that turn to start with its (signed) thinking; a turn another
            // provider wrote has none.
            Some("the final or tool-calling assistant turn has no signed thinking")
        } else {
            None
        };
        if let Some(why) = why_not {
            tracing::debug!(why, model = req.model, "anthropic: thinking not enabled");
            return None;
        }
        let limit = cfg
            .max_output_tokens
            .unwrap_or_else(|| default_output_limit(req.model));
        let (budget, max) = thinking_budget(t, max_tokens, limit)?;
        max_tokens = max;
        Some(budget)
    });

    // The client's context management, less the edits that need thinking when it is off here
    // (the API refuses `clear_thinking_*` without thinking; the client asked for thinking, but
    // this turn cannot have it).
    let context_management = opts
        .context_management
        .as_deref()
        .and_then(|c| context_management_for(c, thinking.is_some()));
    let context_management = match &context_management {
        Some(c) => Some(raw_json(c, "context_management")?),
        None => None,
    };
    let mut body = Body {
        model: req.model,
        max_tokens,
        stream: true,
        messages,
        system,
        thinking: thinking.map(|budget| ThinkingOut {
            kind: "enabled",
            budget_tokens: budget,
        }),
        temperature: None,
        top_p: None,
        stop_sequences: None,
        metadata: None,
        tools: None,
        tool_choice: None,
        output_config,
        context_management,
        native: NativeFields {
            fields: &opts.native,
            api: "anthropic",
            // `top_k` is refused beside thinking, as a set `temperature` is.
            allowed: if thinking.is_some() {
                &NATIVE[..2]
            } else {
                NATIVE
            },
        },
    };
    match (chat.temperature, thinking) {
        // Anthropic's range is 0 to 1; OpenAI-format clients may send up to 2.
        (Some(t), None) => body.temperature = Some(f64::from(t).clamp(0.0, 1.0)),
        (Some(_), Some(_)) => {
            tracing::debug!("anthropic: temperature dropped (thinking needs the default)")
        }
        _ => {}
    }
    match (opts.top_p, thinking) {
        (Some(p), Some(_)) if p < 0.95 => {
            tracing::debug!(
                top_p = p,
                "anthropic: top_p dropped (thinking needs >= 0.95)"
            )
        }
        // Claude 4.5 models and later refuse `temperature` and `top_p` together (a 400 that
        // would reach the client); sampling by temperature alone is what the client meant first.
        (Some(p), _) if body.temperature.is_some() => {
            tracing::debug!(top_p = p, "anthropic: top_p dropped (temperature is set)")
        }
        (Some(p), _) => body.top_p = Some(f64::from(p)),
        _ => {}
    }
    let stop: Vec<&str> = opts
        .stop
        .iter()
        .map(String::as_str)
        .filter(|s| !s.trim().is_empty())
        .collect();
    if !stop.is_empty() {
        body.stop_sequences = Some(stop);
    }
    body.metadata = opts
        .user
        .as_deref()
        .filter(|u| !u.is_empty())
        .map(|user_id| Metadata { user_id });
    if has_tools {
        let mut tools = Vec::with_capacity(chat.tools.len() + opts.server_tools.len());
        for t in &chat.tools {
            tools.push(AnyTool::Client(Tool {
                name: names.wire(&t.name),
                description: &t.description,
                input_schema: raw_json(&t.input_schema_json, "tool input schema")?,
            }));
        }
        for t in &opts.server_tools {
            tools.push(AnyTool::Server(raw_json(t, "server tool")?));
        }
        body.tools = Some(tools);
        let choice = |kind, name| Choice {
            kind,
            name,
            disable_parallel_tool_use: None,
        };
        let mut tool_choice = match &opts.tool_choice {
            None if opts.parallel_tool_calls == Some(false) => Some(choice("auto", None)),
            None => None,
            Some(ToolChoice::Auto) => Some(choice("auto", None)),
            Some(ToolChoice::Any) => Some(choice("any", None)),
            Some(ToolChoice::None) => Some(choice("none", None)),
            Some(ToolChoice::Tool { name }) => Some(choice("tool", Some(names.wire(name)))),
        };
        if let Some(c) = tool_choice.as_mut().filter(|c| c.kind != "none") {
            if opts.parallel_tool_calls == Some(false) {
                c.disable_parallel_tool_use = Some(true);
            }
        }
        body.tool_choice = tool_choice;
    } else if opts.tool_choice.is_some() {
        tracing::debug!("anthropic: tool_choice dropped (no tools)");
    }
    let bytes = to_bytes(&body, chat)?;
    Ok(Built {
        body: bytes,
        tool_names: names,
    })
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// `context_management` as sent to Anthropic: as the client gave it, but with thinking off
/// without its `clear_thinking_*` edits (and none at all if nothing else is left).
fn context_management_for(c: &str, thinking: bool) -> Option<Cow<'_, str>> {
    if thinking {
        return Some(Cow::Borrowed(c));
    }
    let Ok(Value::Object(mut o)) = serde_json::from_str::<Value>(c) else {
        return Some(Cow::Borrowed(c));
    };
    let Some(Value::Array(edits)) = o.get_mut("edits") else {
        return Some(Cow::Borrowed(c));
    };
    let before = edits.len();
    edits.retain(|e| {
        !e["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("clear_thinking"))
    });
    if edits.len() == before {
        return Some(Cow::Borrowed(c));
    }
    if edits.is_empty() {
        o.remove("edits");
    }
    (!o.is_empty()).then(|| Cow::Owned(Value::Object(o).to_string()))
}

/// The message breakpoints placed for a client that placed none (see
/// [`ChatOptions::cache_automatically`]): after the last message, and after the latest earlier
/// message of the same speaker.
///
/// [`ChatOptions::cache_automatically`]: mythos_protocol::ChatOptions::cache_automatically
fn auto_cache_points(chat: &ChatRequest) -> Vec<CachePoint> {
    let at_end = |(i, m): (usize, &Message)| {
        (!m.content.is_empty()).then(|| CachePoint {
            message: i as u32,
            block: (m.content.len() - 1) as u32,
            ttl: CacheTtl::Default,
        })
    };
    // A first turn marks only the system prompt: a client that asks once and never again
    // (a script, a one-shot completion) would pay the cache write (1.25x) on its whole
    // prompt for nothing; an agent's second turn reads the system prompt and tools from the
    // cache and marks the rest.
    let Some((last, m)) = chat
        .messages
        .iter()
        .enumerate()
        .next_back()
        .filter(|&(last, _)| last > 0)
    else {
        return Vec::new();
    };
    let mut points: Vec<CachePoint> = chat.messages[..last]
        .iter()
        .enumerate()
        .rev()
        .find(|(_, p)| p.role == m.role && !p.content.is_empty())
        .and_then(at_end)
        .into_iter()
        .collect();
    points.extend(at_end((last, m)));
    points
}

fn cache_control(ttl: CacheTtl) -> CacheControl {
    CacheControl {
        kind: "ephemeral",
        ttl: match ttl {
            CacheTtl::Default => None,
            CacheTtl::Hour => Some("1h"),
        },
    }
}

/// One content block in the API's form; `None` when Anthropic cannot take it.
fn block_json<'a>(block: &'a ContentBlock, role: Role, names: &'a ToolNames) -> Option<Block<'a>> {
    Some(match block {
        ContentBlock::Text { text } if text.is_empty() => {
            // "text content blocks must be non-empty"
            return None;
        }
        ContentBlock::Text { text } => Block::Text {
            text,
            cache_control: None,
        },
        ContentBlock::ToolUse {
            id,
            name,
            input_json,
        } => Block::ToolUse {
            id: tool_id(id),
            name: names.wire(name),
            input: tool_input(input_json),
            cache_control: None,
        },
        ContentBlock::ToolResult {
            tool_use_id,
            content,
            is_error,
            images,
        } => {
            let body = if images.is_empty() {
                ResultContent::Text(content)
            } else {
                let mut parts = Vec::with_capacity(images.len() + 1);
                if !content.is_empty() {
                    parts.push(Block::Text {
                        text: content,
                        cache_control: None,
                    });
                }
                parts.extend(images.iter().filter_map(image_json));
                ResultContent::Parts(parts)
            };
            Block::ToolResult {
                tool_use_id: tool_id(tool_use_id),
                content: body,
                is_error: *is_error,
                cache_control: None,
            }
        }
        ContentBlock::Image { .. } | ContentBlock::Document { .. } if role == Role::Assistant => {
            tracing::debug!("anthropic: image or document in an assistant turn dropped");
            return None;
        }
        ContentBlock::Image { source } => image_json(source)?,
        ContentBlock::Document { source, title } => {
            let (Block::Image { source, .. } | Block::Document { source, .. }) =
                image_json(source)?
            else {
                unreachable!("image_json makes an image or a document")
            };
            Block::Document {
                source,
                title: title.as_deref().filter(|t| !t.is_empty()),
                cache_control: None,
            }
        }
        ContentBlock::Thinking {
            text,
            signature: Some(sig),
        } if !sig.is_empty() => Block::Thinking {
            thinking: text,
            signature: sig,
        },
        ContentBlock::Thinking { .. } => {
            // Thinking from another provider has no Anthropic signature, and one cannot be made
            // up: the API verifies it.
            tracing::debug!("anthropic: unsigned thinking dropped");
            return None;
        }
        ContentBlock::RedactedThinking { data } => Block::RedactedThinking { data },
        ContentBlock::ServerBlock { json } => match serde_json::from_str::<&RawValue>(json) {
            Ok(raw) => Block::Server(raw),
            Err(_) => {
                tracing::debug!("anthropic: a server tool block that is not JSON dropped");
                return None;
            }
        },
    })
}

/// A continuation's final assistant turn when the answer so far holds server tool blocks: its
/// text in pieces, with each block back where it came, as the API takes a turn it paused
/// (`pause_turn`) to be continued. A piece of text that is only whitespace is left out (the API
/// refuses one), and the last piece loses its trailing whitespace (see the plain prefill above).
fn prefill_with_blocks<'a>(text: &'a str, blocks: &'a [PrefillBlock]) -> Vec<Block<'a>> {
    let mut content = Vec::with_capacity(2 * blocks.len() + 1);
    let mut from = 0;
    for b in blocks {
        let piece = text.get(from..b.at).unwrap_or("");
        if !piece.trim().is_empty() {
            content.push(Block::Text {
                text: piece,
                cache_control: None,
            });
        }
        from = b.at.max(from);
        match serde_json::from_str::<&RawValue>(&b.json) {
            Ok(raw) => content.push(Block::Server(raw)),
            Err(_) => tracing::debug!("anthropic: a server tool block that is not JSON dropped"),
        }
    }
    let last = text.get(from..).unwrap_or("").trim_end();
    if !last.trim_start().is_empty() {
        content.push(Block::Text {
            text: last,
            cache_control: None,
        });
    }
    content
}

/// An image block (a document block for a PDF, which a tool result may hold among its
/// images), or `None` (with a debug line) for a `data:` URL that is not base64.
fn image_json(source: &ImageSource) -> Option<Block<'_>> {
    let source = match source {
        ImageSource::Base64 { media_type, data } => Source::Base64 { media_type, data },
        ImageSource::Url { url } if url.starts_with("data:") => match split_data_url(url) {
            Some((media_type, data)) => Source::Base64 { media_type, data },
            None => {
                tracing::debug!("anthropic: image data URL that is not base64 dropped");
                return None;
            }
        },
        // The API fetches http(s) URLs itself; `data:` URLs it does not take.
        ImageSource::Url { url } => Source::Url { url },
    };
    if let Source::Base64 { media_type, .. } = source {
        if media_type.eq_ignore_ascii_case(PDF) {
            return Some(Block::Document {
                source,
                title: None,
                cache_control: None,
            });
        }
    }
    Some(Block::Image {
        source,
        cache_control: None,
    })
}

/// `(media type, base64 data)` of a `data:MEDIA;base64,DATA` URL.
pub(crate) fn split_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    // Parameters such as `;charset=` may sit before `;base64`; the API wants the bare type.
    let media_type = media_type.split(';').next().unwrap_or(media_type);
    (!media_type.is_empty() && !data.is_empty()).then_some((media_type, data))
}

/// Whether `model` has extended thinking: Claude 3.7 and everything after it. Permissive on
/// purpose, so a new model name works without a release; the old families are listed.
pub fn supports_thinking(model: &str) -> bool {
    let m = model.to_ascii_lowercase();
    m.contains("claude")
        && ![
            "claude-3-5",
            "claude-3.5",
            "claude-3-haiku",
            "claude-3-opus",
            "claude-3-sonnet",
            "claude-2",
            "claude-instant",
        ]
        .iter()
        .any(|old| m.contains(old))
}

/// Whether a request's response format goes in `output_config.format` (else in words): a
/// schema (there is no JSON mode without one), to a model that takes it, not for a
/// continuation (the rest of a JSON value is not a whole one), not where it was refused.
pub fn asks_format_natively(req: &UpstreamRequest<'_>) -> bool {
    matches!(
        req.chat.options.response_format,
        Some(ResponseFormat::JsonSchema { .. })
    ) && req.prefill.is_none_or(|p| p.is_empty())
        && !req.format_in_words
        && takes_output_format(req.model)
}

/// Whether `model` takes `output_config.format` (structured outputs): Claude 4.5 and
/// everything after it (Opus 4.1 had only the beta field). An older Claude refuses the field
/// with a 400, so its schema goes in words instead; so does a model of another family behind
/// an Anthropic-style API. A Claude name without a version (an alias) is taken as new; if it
/// refuses, the router asks again in words.
pub fn takes_output_format(model: &str) -> bool {
    let m = model.to_ascii_lowercase();
    if !m.contains("claude") {
        return false;
    }
    // The first one- or two-digit numbers are the version: `claude-opus-4-1-20250805`,
    // `claude-3-7-sonnet-latest`, `claude-sonnet-4-5@20250929` (an eight-digit date is not).
    let mut numbers = m
        .split(['-', '.', '@', ':', '/', '_'])
        .skip_while(|t| !(1..=2).contains(&t.len()) || !t.bytes().all(|b| b.is_ascii_digit()));
    let Some(major) = numbers.next().and_then(|t| t.parse::<u32>().ok()) else {
        return true;
    };
    let minor = numbers
        .next()
        .filter(|t| (1..=2).contains(&t.len()))
        .and_then(|t| t.parse::<u32>().ok())
        .unwrap_or(0);
    (major, minor) >= (4, 5)
}

/// `(budget_tokens, max_tokens)` for a thinking request, or `None` when `max_tokens` leaves no
/// room for it. The API wants `1024 <= budget < max_tokens`; the budget counts towards
/// `max_tokens`, so a budget at or above it raises `max_tokens` (up to `limit`, the model's
/// output limit) rather than starving the answer.
pub fn thinking_budget(t: Thinking, max_tokens: u32, limit: u32) -> Option<(u32, u32)> {
    // The smallest budget must fit under max_tokens; anything above that the API takes (a
    // client asking 2,000 tokens with a 1,024 budget had its thinking dropped).
    if max_tokens <= MIN_THINKING_BUDGET {
        tracing::debug!(max_tokens, "anthropic: too few output tokens for thinking");
        return None;
    }
    let mut budget = match t.budget_tokens {
        Some(b) => b.max(MIN_THINKING_BUDGET),
        // The model decides: half the output allowance, capped.
        None => (max_tokens / 2).clamp(MIN_THINKING_BUDGET, ADAPTIVE_THINKING_CAP),
    };
    let mut max = max_tokens;
    if budget >= max {
        let raised = budget.saturating_add(max).min(limit.max(max));
        if raised > budget {
            max = raised;
        } else {
            // Never under the API's minimum: max_tokens is above it here.
            budget = (max / 2).max(MIN_THINKING_BUDGET);
        }
    }
    Some((budget, max))
}

/// Whether the assistant turn the API checks starts with a thinking block, as it must when
/// thinking is on: a final assistant turn, or during a tool loop (the last turn holds tool
/// results) the turn that called the tools.
fn last_tool_turn_starts_with_thinking(messages: &[Msg<'_>]) -> bool {
    fn blocks<'m, 'a>(m: &'m Msg<'a>) -> &'m [Block<'a>] {
        match &m.content {
            MsgContent::Blocks(b) => b,
            MsgContent::Text(_) => &[],
        }
    }
    let Some(last) = messages.last() else {
        return true;
    };
    let turn = if last.role == "assistant" {
        last
    } else if blocks(last)
        .iter()
        .any(|b| matches!(b, Block::ToolResult { .. }))
    {
        match messages.iter().rev().find(|m| m.role == "assistant") {
            Some(t) => t,
            None => return true,
        }
    } else {
        return true;
    };
    blocks(turn).first().is_some_and(Block::is_thinking)
}

/// A tool call's id as Anthropic takes it (`^[a-zA-Z0-9_-]+$`). Ids made by other providers
/// (Kimi's `functions.Bash:0`, an empty one) are refused with a 400 once a conversation is
/// failed over to Anthropic; they are rewritten the same way wherever they occur (the call and
/// its result), with a hash of the original so two ids cannot become one.
fn tool_id(id: &str) -> Cow<'_, str> {
    let fits = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !id.is_empty() && id.chars().all(fits) {
        return Cow::Borrowed(id);
    }
    let hash = crate::provider::toolnames::fnv1a64(id.as_bytes());
    let kept: String = id
        .chars()
        .map(|c| if fits(c) { c } else { '_' })
        .take(64)
        .collect();
    Cow::Owned(format!("{kept}_{hash:016x}"))
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
    use mythos_protocol::{CachePoint, ChatRequest, Message, SystemBlock, ToolSpec};
    use serde_json::json;

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
            prefill_blocks: &[],
            format_in_words: false,
        };
        let Built { body, .. } = build(&cfg(), &req).unwrap();
        assert_eq!(endpoint(&cfg()), "http://127.0.0.1:1/v1/messages");
        let headers = headers(&cfg());
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
            prefill_blocks: &[],
            format_in_words: false,
        };
        assert_eq!(build(&cfg(), &req).unwrap_err().kind, ErrorKind::BadRequest);
    }

    #[test]
    fn which_claudes_take_output_format() {
        for m in [
            "claude-sonnet-4-5-20250929",
            "claude-sonnet-4-5",
            "claude-haiku-4-5",
            "claude-opus-4-5",
            "claude-opus-4-6",
            "claude-sonnet-5",
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
            "claude-sonnet-4-5@20250929",
            "claude-latest",
        ] {
            assert!(takes_output_format(m), "{m}");
        }
        for m in [
            "claude-sonnet-4-20250514",
            "claude-opus-4-0",
            "claude-opus-4-20250514",
            "claude-3-7-sonnet-latest",
            "claude-3-5-haiku-20241022",
            "claude-sonnet-4-1",
            "claude-opus-4-1-20250805",
            "deepseek-chat",
            "kimi-k2",
        ] {
            assert!(!takes_output_format(m), "{m}");
        }
    }

    /// A schema goes natively to a Claude that takes it, in words (after the client's system
    /// prompt, as its last block when it came in blocks) to one that does not, and in words to
    /// a continuation.
    #[test]
    fn structured_output_natively_or_in_words() {
        let mut chat = ChatRequest::user_text(1, "extract");
        chat.system = Some("be exact".into());
        let schema = json!({"type": "object", "properties": {"day": {"type": "string"}}});
        chat.options.response_format = Some(ResponseFormat::JsonSchema {
            name: "event".into(),
            description: None,
            schema_json: schema.to_string(),
            strict: None,
        });
        let v = body(&chat, "claude-sonnet-4-5", 100, None);
        assert_eq!(
            v["output_config"],
            json!({"format": {"type": "json_schema", "schema": schema}})
        );
        assert_eq!(v["system"], "be exact");

        for (model, prefill) in [
            ("claude-sonnet-4-20250514", None),
            ("claude-sonnet-4-5", Some("{\"day\":")),
        ] {
            let v = body(&chat, model, 100, prefill);
            assert!(v.get("output_config").is_none(), "{model}: {v}");
            let system = v["system"].as_str().unwrap();
            assert!(system.starts_with("be exact\n\n"), "{system}");
            assert!(system.ends_with(&schema.to_string()), "{system}");
        }

        chat.options.system_blocks = vec![SystemBlock {
            text: "be exact".into(),
            cache: Some(CacheTtl::Default),
        }];
        let v = body(&chat, "claude-3-7-sonnet-latest", 100, None);
        let blocks = v["system"].as_array().unwrap();
        assert_eq!(blocks.len(), 2);
        assert!(blocks[0]["cache_control"].is_object());
        assert!(blocks[1].get("cache_control").is_none());
        assert!(blocks[1]["text"]
            .as_str()
            .unwrap()
            .ends_with(&schema.to_string()));

        chat.options.response_format = Some(ResponseFormat::JsonObject);
        chat.options.system_blocks.clear();
        let v = body(&chat, "claude-sonnet-4-5", 100, None);
        assert!(v.get("output_config").is_none());
        assert!(v["system"].as_str().unwrap().contains("JSON object"));
    }

    /// Anthropic's own fields a client sent go on as sent (an MCP server's tools were silently
    /// missing); only the names this API takes, only valid JSON, and never another API's.
    #[test]
    fn the_clients_own_anthropic_fields_go_as_sent() {
        let mut chat = ChatRequest::user_text(1, "hi");
        let field = mythos_protocol::NativeField::new;
        chat.options.native = vec![
            field(
                "anthropic",
                "mcp_servers",
                r#"[{"type":"url","url":"https://m","name":"m"}]"#,
            ),
            field("anthropic", "top_k", "5"),
            field("anthropic", "container", r#"{"id":"c1"}"#),
            field("anthropic", "model", r#""other""#),
            field("anthropic", "top_k", "{not json"),
            field("openai", "seed", "7"),
        ];
        let v = body(&chat, "claude-sonnet-4-5", 100, None);
        assert_eq!(v["mcp_servers"][0]["url"], "https://m");
        assert_eq!(v["top_k"], 5);
        assert_eq!(v["container"], json!({"id": "c1"}));
        assert_eq!(v["model"], "claude-sonnet-4-5");
        assert!(v.get("seed").is_none());
        // Written once each: the body stays one JSON object with unique keys.
        let text =
            String::from_utf8(built(&chat, "claude-sonnet-4-5", 100, None).body.to_vec()).unwrap();
        assert_eq!(text.matches("\"model\"").count(), 1, "{text}");
        assert_eq!(text.matches("\"top_k\"").count(), 1, "{text}");
        // Thinking refuses `top_k`, as it refuses a set `temperature` (found by a review).
        chat.options.thinking = Some(mythos_protocol::Thinking {
            budget_tokens: Some(2000),
            display: true,
        });
        let v = body(&chat, "claude-sonnet-4-5", 8000, None);
        assert!(v.get("thinking").is_some());
        assert!(v.get("top_k").is_none(), "{v}");
        assert_eq!(v["mcp_servers"][0]["url"], "https://m");
    }

    fn body(chat: &ChatRequest, model: &str, max_tokens: u32, prefill: Option<&str>) -> Value {
        serde_json::from_slice(&built(chat, model, max_tokens, prefill).body).unwrap()
    }

    /// The request as built for `model`.
    fn built(chat: &ChatRequest, model: &str, max_tokens: u32, prefill: Option<&str>) -> Built {
        let req = UpstreamRequest {
            chat,
            model,
            max_tokens,
            prefill,
            prefill_blocks: &[],
            format_in_words: false,
        };
        build(&cfg(), &req).unwrap()
    }

    /// A web search's answer continued: the final assistant turn holds its text in pieces with
    /// the search's blocks back in place, whitespace-only pieces left out (the API refuses
    /// them) and the last piece trimmed at its end.
    #[test]
    fn a_prefill_with_server_blocks_puts_them_back_in_place() {
        let call =
            r#"{"type":"server_tool_use","id":"s1","name":"web_search","input":{"query":"q"}}"#;
        let results = r#"{"type":"web_search_tool_result","tool_use_id":"s1","content":[]}"#;
        let chat = ChatRequest::user_text(1, "search");
        let blocks = |at: usize| {
            [call, results].map(|json| PrefillBlock {
                at,
                json: json.into(),
            })
        };
        let text = "Let me look. Tokio is an async ";
        let with = |text: &str, blocks: &[PrefillBlock]| -> Value {
            let req = UpstreamRequest {
                chat: &chat,
                model: "claude-sonnet-4-5",
                max_tokens: 100,
                prefill: Some(text),
                prefill_blocks: blocks,
                format_in_words: false,
            };
            serde_json::from_slice(&build(&cfg(), &req).unwrap().body).unwrap()
        };
        let v = with(text, &blocks(13));
        let last = &v["messages"][1];
        assert_eq!(last["role"], "assistant");
        assert_eq!(
            last["content"],
            json!([
                {"type": "text", "text": "Let me look. "},
                serde_json::from_str::<Value>(call).unwrap(),
                serde_json::from_str::<Value>(results).unwrap(),
                {"type": "text", "text": "Tokio is an async"},
            ])
        );
        // Cut right after the results, with only a space before the search.
        let v = with(" ", &blocks(1));
        let content = v["messages"][1]["content"].as_array().unwrap().clone();
        assert_eq!(content.len(), 2, "{content:?}");
        assert_eq!(content[0]["type"], "server_tool_use");
        assert_eq!(content[1]["type"], "web_search_tool_result");
    }

    fn tool(name: &str) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: String::new(),
            input_schema_json: r#"{"type":"object"}"#.into(),
        }
    }

    #[test]
    fn system_blocks_and_cache_points() {
        let mut chat = ChatRequest::user_text(1, "hi");
        chat.system = Some("ab".into());
        chat.options.system_blocks = vec![
            SystemBlock {
                text: "a".into(),
                cache: None,
            },
            SystemBlock {
                text: "b".into(),
                cache: Some(CacheTtl::Hour),
            },
        ];
        chat.messages[0].content.push(ContentBlock::Text {
            text: "again".into(),
        });
        chat.options.cache_points = vec![CachePoint {
            message: 0,
            block: 1,
            ttl: CacheTtl::Default,
        }];
        let v = body(&chat, "claude-sonnet-4-5", 100, None);
        assert_eq!(
            v["system"],
            json!([{"type": "text", "text": "a"},
                   {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}}])
        );
        assert_eq!(
            v["messages"][0]["content"],
            json!([{"type": "text", "text": "hi"},
                   {"type": "text", "text": "again", "cache_control": {"type": "ephemeral"}}])
        );
    }

    /// A client whose API cannot place breakpoints (Chat Completions, Responses, the CLI's
    /// chat) gets them placed: after the system prompt, after the latest earlier turn of the
    /// last speaker (where the previous request put its last one, so its prefix is found) and
    /// after the last message; a client that placed its own keeps exactly those, and a
    /// Messages client that placed none gets none.
    #[test]
    fn breakpoints_are_placed_for_clients_that_cannot_place_them() {
        let mut chat = ChatRequest::user_text(1, "first");
        chat.system = Some("You are a coding agent.".into());
        chat.messages.push(Message::text(Role::Assistant, "reply"));
        chat.messages.push(Message {
            role: Role::User,
            content: vec![
                ContentBlock::Text { text: "a".into() },
                ContentBlock::Text { text: "b".into() },
            ],
        });
        chat.options.cache_automatically = true;
        let v = body(&chat, "claude-sonnet-4-5", 100, None);
        let ephemeral = json!({"type": "ephemeral"});
        assert_eq!(
            v["system"],
            json!([{"type": "text", "text": "You are a coding agent.", "cache_control": ephemeral}])
        );
        let m = &v["messages"];
        assert_eq!(m[0]["content"][0]["cache_control"], ephemeral, "{m}");
        assert!(m[1]["content"][0].get("cache_control").is_none(), "{m}");
        assert!(m[2]["content"][0].get("cache_control").is_none(), "{m}");
        assert_eq!(m[2]["content"][1]["cache_control"], ephemeral, "{m}");
        assert_eq!(v.to_string().matches("cache_control").count(), 3);

        // With structured output in words, the breakpoint stays on the client's system text.
        let mut with_format = chat.clone();
        with_format.options.response_format = Some(ResponseFormat::JsonObject);
        let v = body(&with_format, "claude-sonnet-4-5", 100, None);
        assert_eq!(
            v["system"][0]["cache_control"], ephemeral,
            "{}",
            v["system"]
        );
        assert!(
            v["system"][1].get("cache_control").is_none(),
            "{}",
            v["system"]
        );

        // The client's own breakpoints, exactly.
        let mut own = chat.clone();
        own.options.cache_points = vec![CachePoint {
            message: 0,
            block: 0,
            ttl: CacheTtl::Hour,
        }];
        let v = body(&own, "claude-sonnet-4-5", 100, None);
        assert_eq!(v.to_string().matches("cache_control").count(), 1, "{v}");
        assert_eq!(v["system"], json!("You are a coding agent."));

        // A first turn: the system prompt only (a one-shot client would pay the cache write
        // on its whole prompt for nothing).
        let mut first = ChatRequest::user_text(1, "only question");
        first.system = Some("You are a coding agent.".into());
        first.options.cache_automatically = true;
        let v = body(&first, "claude-sonnet-4-5", 100, None);
        assert_eq!(v.to_string().matches("cache_control").count(), 1, "{v}");
        assert_eq!(v["system"][0]["cache_control"], ephemeral);

        let mut messages_client = chat;
        messages_client.options.cache_automatically = false;
        let v = body(&messages_client, "claude-sonnet-4-5", 100, None);
        assert!(!v.to_string().contains("cache_control"), "{v}");
    }

    /// Context-management edits that need thinking go only with thinking on.
    #[test]
    fn thinking_edits_go_only_with_thinking() {
        let c =
            r#"{"edits":[{"type":"clear_thinking_20251015"},{"type":"clear_tool_uses_20250919"}]}"#;
        assert_eq!(context_management_for(c, true).as_deref(), Some(c));
        assert_eq!(
            context_management_for(c, false).as_deref(),
            Some(r#"{"edits":[{"type":"clear_tool_uses_20250919"}]}"#)
        );
        let only = r#"{"edits":[{"type":"clear_thinking_20251015","keep":"all"}]}"#;
        assert_eq!(context_management_for(only, false), None);
        let plain = r#"{"edits":[{"type":"clear_tool_uses_20250919"}]}"#;
        assert_eq!(context_management_for(plain, false).as_deref(), Some(plain));
    }

    #[test]
    fn at_most_four_cache_breakpoints_the_latest_kept() {
        let mut chat = ChatRequest::user_text(1, "hi");
        chat.options.system_blocks = vec![SystemBlock {
            text: "s".into(),
            cache: Some(CacheTtl::Default),
        }];
        chat.messages = (0..5)
            .map(|i| Message::text(Role::User, format!("m{i}")))
            .collect();
        chat.options.cache_points = (0..5)
            .map(|m| CachePoint {
                message: m,
                block: 0,
                ttl: CacheTtl::Default,
            })
            .collect();
        let v = body(&chat, "claude-sonnet-4-5", 100, None);
        let text = v.to_string();
        assert_eq!(text.matches("cache_control").count(), 4, "{text}");
        assert!(v["system"][0]["cache_control"].is_object());
        // The first two message breakpoints went.
        let m = &v["messages"];
        assert!(m[1]["content"][0]["cache_control"].is_null());
        assert!(m[2]["content"][0]["cache_control"].is_object());
        assert!(m[4]["content"][0]["cache_control"].is_object());
    }

    #[test]
    fn images_in_messages_and_tool_results() {
        let mut chat = ChatRequest::user_text(1, "look");
        chat.messages[0].content.extend([
            ContentBlock::Image {
                source: ImageSource::Base64 {
                    media_type: "image/png".into(),
                    data: "iVBOR".into(),
                },
            },
            ContentBlock::Image {
                source: ImageSource::Url {
                    url: "https://x/y.jpg".into(),
                },
            },
            ContentBlock::Image {
                source: ImageSource::Url {
                    url: "data:image/gif;base64,R0lG".into(),
                },
            },
            ContentBlock::Image {
                source: ImageSource::Url {
                    url: "data:text/plain,hello".into(),
                },
            },
        ]);
        chat.messages.push(Message {
            role: Role::User,
            content: vec![ContentBlock::ToolResult {
                tool_use_id: "t1".into(),
                content: "shot".into(),
                is_error: true,
                images: vec![ImageSource::Base64 {
                    media_type: "image/jpeg".into(),
                    data: "/9j/".into(),
                }],
            }],
        });
        let v = body(&chat, "claude-sonnet-4-5", 100, None);
        let c = &v["messages"][0]["content"];
        assert_eq!(
            c[1],
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}})
        );
        assert_eq!(
            c[2],
            json!({"type": "image", "source": {"type": "url", "url": "https://x/y.jpg"}})
        );
        assert_eq!(
            c[3],
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0lG"}})
        );
        // The non-base64 data URL was dropped.
        assert_eq!(c.as_array().unwrap().len(), 4);
        assert_eq!(
            v["messages"][1]["content"][0],
            json!({"type": "tool_result", "tool_use_id": "t1", "is_error": true, "content": [
                {"type": "text", "text": "shot"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}}]})
        );
        assert_eq!(
            split_data_url("data:image/png;charset=x;base64,AA"),
            Some(("image/png", "AA"))
        );
        assert_eq!(split_data_url("data:image/png,AA"), None);
    }

    #[test]
    fn only_signed_thinking_goes_back_and_empty_turns_are_skipped() {
        let mut chat = ChatRequest::user_text(1, "q1");
        chat.messages.push(Message {
            role: Role::Assistant,
            content: vec![
                ContentBlock::Thinking {
                    text: "mine".into(),
                    signature: Some("sig".into()),
                },
                ContentBlock::RedactedThinking { data: "xx".into() },
                ContentBlock::Text { text: "a1".into() },
            ],
        });
        chat.messages.push(Message::text(Role::User, "q2"));
        // Another provider's turn: only unsigned thinking and empty text.
        chat.messages.push(Message {
            role: Role::Assistant,
            content: vec![
                ContentBlock::Thinking {
                    text: "foreign".into(),
                    signature: None,
                },
                ContentBlock::Thinking {
                    text: "forged".into(),
                    signature: Some(String::new()),
                },
                ContentBlock::Text {
                    text: String::new(),
                },
            ],
        });
        chat.messages.push(Message::text(Role::User, "q3"));
        let v = body(&chat, "claude-sonnet-4-5", 100, None);
        assert_eq!(
            v["messages"][1]["content"],
            json!([{"type": "thinking", "thinking": "mine", "signature": "sig"},
                   {"type": "redacted_thinking", "data": "xx"},
                   {"type": "text", "text": "a1"}])
        );
        let roles: Vec<_> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "user", "user"]);
        assert_eq!(v["messages"][3]["content"][0]["text"], "q3");
        assert!(!v.to_string().contains("foreign"));
    }

    /// Ids from other providers that Anthropic's pattern refuses are rewritten, the same way
    /// in the call and in its result; ids that fit are sent as they are.
    #[test]
    fn foreign_tool_ids_fit_anthropics_pattern() {
        for (id, kept) in [
            ("toolu_01A-b", true),
            ("functions.Bash:0", false),
            ("", false),
        ] {
            let mut chat = ChatRequest::user_text(1, "go");
            chat.messages.push(Message {
                role: Role::Assistant,
                content: vec![ContentBlock::ToolUse {
                    id: id.into(),
                    name: "read".into(),
                    input_json: "{}".into(),
                }],
            });
            chat.messages.push(Message {
                role: Role::User,
                content: vec![ContentBlock::ToolResult {
                    tool_use_id: id.into(),
                    content: "ok".into(),
                    is_error: false,
                    images: Vec::new(),
                }],
            });
            let v = body(&chat, "claude-sonnet-4-5", 100, None);
            let call = v["messages"][1]["content"][0]["id"].as_str().unwrap();
            let result = v["messages"][2]["content"][0]["tool_use_id"]
                .as_str()
                .unwrap();
            assert_eq!(call, result, "{id:?}");
            assert_eq!(call == id, kept, "{id:?} became {call:?}");
            assert!(
                !call.is_empty()
                    && call
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{call:?}"
            );
        }
        assert_ne!(tool_id("a.b"), tool_id("a:b"), "two ids stay two");
    }

    #[test]
    fn options_map_to_their_fields() {
        let mut chat = ChatRequest::user_text(1, "hi");
        chat.tools.push(tool("read"));
        chat.temperature = Some(0.2);
        chat.options.stop = vec!["END".into(), " ".into()];
        chat.options.top_p = Some(0.5);
        chat.options.user = Some("u-1".into());
        chat.options.tool_choice = Some(ToolChoice::Tool {
            name: "read".into(),
        });
        chat.options.parallel_tool_calls = Some(false);
        let v = body(&chat, "claude-3-5-haiku-latest", 100, None);
        assert_eq!(v["stop_sequences"], json!(["END"]));
        // Claude 4.5 and later refuse both at once: temperature wins.
        assert_eq!(v["top_p"], json!(null));
        assert_eq!(v["temperature"], json!(0.2f32));
        chat.temperature = None;
        assert_eq!(body(&chat, "m", 100, None)["top_p"], json!(0.5));
        // OpenAI-format clients may ask for up to 2; Anthropic takes up to 1.
        chat.temperature = Some(1.6);
        assert_eq!(body(&chat, "m", 100, None)["temperature"], json!(1.0));
        chat.temperature = Some(0.2);
        assert_eq!(v["metadata"], json!({"user_id": "u-1"}));
        assert_eq!(
            v["tool_choice"],
            json!({"type": "tool", "name": "read", "disable_parallel_tool_use": true})
        );
        chat.options.tool_choice = Some(ToolChoice::None);
        assert_eq!(
            body(&chat, "m", 100, None)["tool_choice"],
            json!({"type": "none"})
        );
        chat.options.tool_choice = None;
        assert_eq!(
            body(&chat, "m", 100, None)["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        chat.options.tool_choice = Some(ToolChoice::Any);
        chat.tools.clear();
        assert!(body(&chat, "m", 100, None).get("tool_choice").is_none());
    }

    #[test]
    fn tool_names_are_fitted_everywhere() {
        let long = "mcp__a_server_with_a_long_name__a_tool_with_an_even_longer_name_x";
        let mut chat = ChatRequest::user_text(1, "hi");
        chat.tools = vec![tool(long), tool("fs.read")];
        chat.options.tool_choice = Some(ToolChoice::Tool { name: long.into() });
        chat.messages.push(Message {
            role: Role::Assistant,
            content: vec![ContentBlock::ToolUse {
                id: "t".into(),
                name: "fs.read".into(),
                input_json: "{}".into(),
            }],
        });
        let b = built(&chat, "claude-sonnet-4-5", 100, None);
        let v: Value = serde_json::from_slice(&b.body).unwrap();
        let wire_long = v["tools"][0]["name"].as_str().unwrap();
        let wire_read = v["tools"][1]["name"].as_str().unwrap();
        assert!(super::super::toolnames::is_valid(wire_long));
        assert!(super::super::toolnames::is_valid(wire_read));
        assert_eq!(v["tool_choice"]["name"], wire_long);
        assert_eq!(v["messages"][1]["content"][0]["name"], wire_read);
        assert_eq!(b.tool_names.client(wire_long.into()), long);
        assert_eq!(b.tool_names.client(wire_read.into()), "fs.read");
    }

    #[test]
    fn thinking_budgets() {
        let t = |b| Thinking {
            budget_tokens: b,
            display: true,
        };
        assert_eq!(
            thinking_budget(t(Some(5000)), 32_000, 64_000),
            Some((5000, 32_000))
        );
        assert_eq!(
            thinking_budget(t(Some(10)), 32_000, 64_000),
            Some((1024, 32_000))
        );
        // Adaptive: half the output, capped.
        assert_eq!(thinking_budget(t(None), 8000, 64_000), Some((4000, 8000)));
        assert_eq!(
            thinking_budget(t(None), 64_000, 64_000),
            Some((16_000, 64_000))
        );
        // Below max_tokens is what the API asks, however little it leaves for the answer.
        // A budget at or over max_tokens raises max_tokens within the model's limit...
        assert_eq!(
            thinking_budget(t(Some(31_999)), 32_000, 64_000),
            Some((31_999, 32_000))
        );
        assert_eq!(
            thinking_budget(t(Some(10_000)), 4096, 64_000),
            Some((10_000, 14_096))
        );
        // ...or, at the limit, is lowered.
        assert_eq!(
            thinking_budget(t(Some(64_000)), 64_000, 64_000),
            Some((32_000, 64_000))
        );
        assert_eq!(
            thinking_budget(t(Some(5000)), 2047, 64_000),
            Some((5000, 7047))
        );
        // The API's own floor: a budget of 1,024 under max_tokens, however small.
        assert_eq!(
            thinking_budget(t(Some(1024)), 2000, 64_000),
            Some((1024, 2000))
        );
        assert_eq!(thinking_budget(t(None), 1500, 64_000), Some((1024, 1500)));
        assert_eq!(thinking_budget(t(None), 1024, 64_000), None);
        // A budget over a small output limit is lowered, but never under the API's minimum.
        assert_eq!(
            thinking_budget(t(Some(64_000)), 1500, 1500),
            Some((1024, 1500))
        );
    }

    #[test]
    fn thinking_is_enabled_only_where_the_api_takes_it() {
        let mut chat = ChatRequest::user_text(1, "hi");
        chat.temperature = Some(0.3);
        chat.options.top_p = Some(0.9);
        chat.options.thinking = Some(Thinking {
            budget_tokens: Some(2000),
            display: true,
        });
        let v = body(&chat, "claude-sonnet-4-5", 8000, None);
        assert_eq!(
            v["thinking"],
            json!({"type": "enabled", "budget_tokens": 2000})
        );
        assert_eq!(v["max_tokens"], 8000);
        assert!(v.get("temperature").is_none());
        assert!(v.get("top_p").is_none());
        chat.options.top_p = Some(0.97);
        let top_p = body(&chat, "claude-sonnet-4-5", 8000, None)["top_p"].as_f64();
        assert!((top_p.unwrap() - 0.97).abs() < 1e-6);

        for model in [
            "claude-3-5-sonnet-latest",
            "claude-3-haiku-20240307",
            "gpt-4o",
        ] {
            let v = body(&chat, model, 8000, None);
            assert!(v.get("thinking").is_none(), "{model}");
            assert_eq!(v["temperature"], json!(0.3f32));
        }
        for model in [
            "claude-3-7-sonnet-latest",
            "claude-opus-4-1",
            "claude-haiku-4-5",
            "claude-opus-5",
        ] {
            assert!(
                body(&chat, model, 8000, None)["thinking"].is_object(),
                "{model}"
            );
        }
        // Not when the client's own history ends in an unsigned assistant turn.
        let mut ends_with_assistant = chat.clone();
        ends_with_assistant
            .messages
            .push(Message::text(Role::Assistant, "Sure"));
        let v = body(&ends_with_assistant, "claude-sonnet-4-5", 8000, None);
        assert!(v.get("thinking").is_none());
        // Not with a prefill, too few tokens, or a forced tool.
        assert!(body(&chat, "claude-sonnet-4-5", 8000, Some("Hel"))
            .get("thinking")
            .is_none());
        assert!(body(&chat, "claude-sonnet-4-5", 1000, None)
            .get("thinking")
            .is_none());
        chat.tools.push(tool("read"));
        chat.options.tool_choice = Some(ToolChoice::Any);
        assert!(body(&chat, "claude-sonnet-4-5", 8000, None)
            .get("thinking")
            .is_none());
        chat.options.tool_choice = Some(ToolChoice::Auto);
        assert!(body(&chat, "claude-sonnet-4-5", 8000, None)["thinking"].is_object());

        // In a tool loop whose tool call turn came from another provider (no signed thinking).
        let call = ContentBlock::ToolUse {
            id: "t".into(),
            name: "read".into(),
            input_json: "{}".into(),
        };
        let result = Message {
            role: Role::User,
            content: vec![ContentBlock::ToolResult {
                tool_use_id: "t".into(),
                content: "ok".into(),
                is_error: false,
                images: Vec::new(),
            }],
        };
        let mut foreign = chat.clone();
        foreign.messages.push(Message {
            role: Role::Assistant,
            content: vec![
                ContentBlock::Thinking {
                    text: "deepseek's".into(),
                    signature: None,
                },
                call.clone(),
            ],
        });
        foreign.messages.push(result.clone());
        assert!(body(&foreign, "claude-sonnet-4-5", 8000, None)
            .get("thinking")
            .is_none());
        let mut own = chat.clone();
        own.messages.push(Message {
            role: Role::Assistant,
            content: vec![
                ContentBlock::Thinking {
                    text: "mine".into(),
                    signature: Some("s".into()),
                },
                call,
            ],
        });
        own.messages.push(result);
        assert!(body(&own, "claude-sonnet-4-5", 8000, None)["thinking"].is_object());
    }
}
