//! Google Gemini API (`streamGenerateContent?alt=sse`): request body and headers, tool-schema
//! cleaning and error classification. The stream decoder is in [`stream`].
//!
//! The key goes in the `x-goog-api-key` header, never in the URL's `?key=`: URLs end up in
//! proxies' and servers' logs. Gemini has no assistant prefill, so a continuation shows the
//! partial answer as a `model` turn and asks for the rest, as for OpenAI-compatible endpoints.
//! Function responses are matched to their call by *name* in this API, not by id: the name is
//! looked up in the history from the client's `tool_use_id`.
//!
//! Tool schemas go in `parameters`, which takes an OpenAPI subset of JSON Schema and refuses
//! the rest with a 400; [`clean_schema`] keeps only what the API knows (the fields of the
//! official SDK's `Schema` type), inlines local `$ref`s, and turns `const` and `type` arrays
//! into their OpenAPI spellings. A schema that subset cannot hold (a free-form map, a
//! recursive tree) goes as the client wrote it in `parametersJsonSchema` instead, which takes
//! JSON Schema: cleaned, such arguments were left out, and a tool whose required `env` map was
//! cut could not be called in a way the client accepts.
//!
//! The body is a tree of structs borrowing from the client's request (see [`super::wire`]);
//! their field order is the order the keys go out in.

pub mod stream;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mythos_protocol::{ContentBlock, ErrorKind, ImageSource, ResponseFormat, Role, ToolChoice};
use reqwest::header::HeaderMap;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::anthropic::{parse_json, split_data_url};
use super::continuation::CONTINUE_INSTRUCTION;
use super::wire::{format_instruction, system_text, to_bytes, tool_input, with_instruction};
use super::{secret_header, Built, ProviderError, ToolNames, UpstreamRequest};
use crate::config::ProviderConfig;

/// Most stop sequences the API takes.
const MAX_STOP: usize = 5;

/// How deep `$ref`s are inlined: a recursive schema (a tree of nodes) has no finite inlining,
/// and below this depth the reference is replaced by a bare object.
const MAX_REF_DEPTH: usize = 8;

/// The most schema nodes one tool's cleaned schema may have. Depth alone does not bound the
/// inlining: a definition that refers to itself k times expands to k^8 copies (8 refs: 16
/// million), minutes of CPU and gigabytes for one hostile or careless tool definition. Real
/// schemas have tens to hundreds.
const MAX_SCHEMA_NODES: usize = 10_000;

/// Schema fields the Gemini API accepts in `parameters` (the official Python SDK's `Schema`
/// without `additionalProperties`, `$defs` and `$ref`, which the SDK itself refuses or inlines
/// for the Gemini Developer API).
const SCHEMA_FIELDS: [&str; 22] = [
    "anyOf",
    "default",
    "description",
    "enum",
    "example",
    "format",
    "items",
    "maxItems",
    "maxLength",
    "maxProperties",
    "maximum",
    "minItems",
    "minLength",
    "minProperties",
    "minimum",
    "nullable",
    "pattern",
    "properties",
    "propertyOrdering",
    "required",
    "title",
    "type",
];

/// The endpoint for `model` under `base` (a `models/` prefix, as the API lists its models, is
/// accepted).
pub fn url(base: &str, model: &str) -> String {
    let model = model.strip_prefix("models/").unwrap_or(model);
    format!(
        "{}/v1beta/models/{model}:streamGenerateContent?alt=sse",
        base.trim_end_matches('/')
    )
}

/// The provider's own headers: the key (marked sensitive), never in the URL.
pub fn headers(cfg: &ProviderConfig) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(key) = &cfg.api_key {
        secret_header(&mut headers, "x-goog-api-key", key.expose().to_string());
    }
    headers
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<Content<'a>>,
    generation_config: GenerationConfig<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<[Tools<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
}

/// A turn, or the system instruction (which has no role).
#[derive(Serialize)]
struct Content<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    parts: Vec<Part<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Part<'a> {
    Text(Cow<'a, str>),
    InlineData {
        #[serde(rename = "mimeType")]
        mime_type: &'a str,
        data: &'a str,
    },
    FileData {
        #[serde(rename = "fileUri")]
        file_uri: &'a str,
    },
    FunctionResponse {
        name: &'a str,
        response: FunctionResponse<'a>,
    },
    FunctionCall(Call<'a>),
    /// A call with a thought signature beside it (see [`THOUGHT_SIGNATURE_SENTINEL`]).
    #[serde(untagged)]
    SignedFunctionCall {
        #[serde(rename = "functionCall")]
        function_call: Call<'a>,
        #[serde(rename = "thoughtSignature")]
        thought_signature: &'static str,
    },
}

/// A function call of a past model turn.
#[derive(Serialize)]
struct Call<'a> {
    name: &'a str,
    args: &'a RawValue,
}

/// Gemini 3 and later refuse a past function call without the `thoughtSignature` the model
/// gave it ("Function call is missing a thought_signature", a 400 on the request that carries
/// the first tool result). The protocol does not carry those signatures (the call may well
/// have come from another provider), so every past call gets the value Google documents for
/// histories it did not write.
const THOUGHT_SIGNATURE_SENTINEL: &str = "skip_thought_signature_validator";

/// Whether `model` may be Gemini 3 or later: a numbered version of 3 or more, or an alias
/// without a number (`gemini-flash-latest`, `gemini-exp-1206`), which may serve one.
/// Whether a request's response format goes in Gemini's JSON mode (else in words): not for a
/// continuation (the rest of a JSON value is not a whole one), not where it was refused, and
/// not beside tools before Gemini 3, where JSON mode and function calling refuse each other
/// ("Function calling with a response mime type: 'application/json' is unsupported").
pub fn asks_format_natively(req: &UpstreamRequest<'_>) -> bool {
    req.chat.options.response_format.is_some()
        && req.prefill.is_none_or(|p| p.is_empty())
        && !req.format_in_words
        && (req.chat.tools.is_empty() || needs_thought_signatures(req.model))
}

fn needs_thought_signatures(model: &str) -> bool {
    let m = model.to_ascii_lowercase();
    let m = m.strip_prefix("models/").unwrap_or(&m);
    let Some(v) = m.strip_prefix("gemini-") else {
        return false;
    };
    let major: String = v.chars().take_while(char::is_ascii_digit).collect();
    major.is_empty() && !v.starts_with("pro") && !v.starts_with("ultra")
        || major.parse::<u32>().is_ok_and(|n| n >= 3)
        || v.starts_with("pro-latest")
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum FunctionResponse<'a> {
    Error(&'a str),
    Content(&'a str),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    max_output_tokens: u32,
    // f32 widened as a `Value` widened it, so the bytes sent are what they always were.
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<&'a [&'a str]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<ThinkingConfig>,
    /// `application/json` for structured output.
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    /// The schema, in the OpenAPI subset the API takes (cleaned as tool schemas are).
    #[serde(skip_serializing_if = "Option::is_none")]
    response_schema: Option<&'a RawValue>,
    /// Or, when the cleaning would lose part of it, the schema as JSON Schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a RawValue>,
    /// A Chat client's `seed` (see `ChatOptions::native`).
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    /// A Messages client's `top_k`. (Penalties are not sent: some Gemini models refuse them.)
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<i64>,
}

/// A whole-number field the client sent in its own API (see `ChatOptions::native`).
fn native_int(chat: &mythos_protocol::ChatRequest, api: &str, name: &str) -> Option<i64> {
    chat.options
        .native
        .iter()
        .find(|f| f.api == api && f.name == name)
        .and_then(|f| f.json.trim().parse().ok())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig {
    thinking_budget: i64,
    include_thoughts: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Tools<'a> {
    function_declarations: Vec<FunctionDecl<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDecl<'a> {
    name: &'a str,
    description: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a RawValue>,
    /// In place of `parameters` (the API takes one or the other).
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters_json_schema: Option<&'a RawValue>,
}

/// A schema as it goes to Gemini.
#[derive(Clone)]
enum Schema {
    /// Cleaned to the OpenAPI subset of `parameters` and `responseSchema`, which every Gemini
    /// model has taken since function calling began.
    OpenApi(Arc<RawValue>),
    /// As the client wrote it, in `parametersJsonSchema` and `responseJsonSchema` (JSON Schema
    /// with maps, `$ref`s and recursion): for a schema the cleaning would have cut, where a
    /// free-form map (a shell tool's `env`) or a tree (a recursive node) must stay callable.
    Json(Arc<RawValue>),
}

impl Schema {
    fn open_api(this: &Option<Schema>) -> Option<&RawValue> {
        match this {
            Some(Schema::OpenApi(raw)) => Some(raw),
            _ => None,
        }
    }

    fn json(this: &Option<Schema>) -> Option<&RawValue> {
        match this {
            Some(Schema::Json(raw)) => Some(raw),
            _ => None,
        }
    }
}

/// Most schemas a [`SchemaCache`] keeps; past that it starts over.
const MAX_CACHED_SCHEMAS: usize = 256;

/// Tool schemas as Gemini takes them, by the client's schema text. An agent sends the same
/// tools on every turn, and cleaning a schema costs more than the rest of the body; the text
/// is the key, so a changed schema is cleaned afresh.
#[derive(Default)]
pub struct SchemaCache {
    /// `None`: an object without properties, sent without parameters.
    cleaned: Mutex<HashMap<String, Option<Schema>>>,
}

impl SchemaCache {
    /// The schema to send for `schema_json`; invalid JSON fails the request.
    fn get(&self, schema_json: &str) -> Result<Option<Schema>, ProviderError> {
        if let Some(hit) = lock(&self.cleaned).get(schema_json) {
            return Ok(hit.clone());
        }
        let raw = |v: &Value| {
            let text = serde_json::to_string(v)
                .map_err(|e| ProviderError::new(ErrorKind::Internal, e.to_string()))?;
            let raw = RawValue::from_string(text)
                .map_err(|e| ProviderError::new(ErrorKind::Internal, e.to_string()))?;
            Ok::<_, ProviderError>(Arc::from(raw))
        };
        let mut original = parse_json(schema_json, "tool input schema")?;
        let (schema, lossy) = clean_schema_telling(&original);
        // An object without properties is refused ("properties: should be non-empty for
        // OBJECT type"); a function without parameters is what it means.
        let empty_object = schema["type"] == "object"
            && schema["properties"].as_object().is_none_or(Map::is_empty);
        let cleaned = if lossy {
            // The dialect marker names a draft the API does not claim; the rest is the schema.
            if let Some(o) = original.as_object_mut() {
                o.remove("$schema");
                inline_top_ref(o);
            }
            Some(Schema::Json(raw(&original)?))
        } else if empty_object {
            None
        } else {
            Some(Schema::OpenApi(raw(&schema)?))
        };
        let mut map = lock(&self.cleaned);
        if map.len() >= MAX_CACHED_SCHEMAS {
            map.clear();
        }
        map.insert(schema_json.to_string(), cleaned.clone());
        Ok(cleaned)
    }
}

/// A schema that is only a `$ref` to one of its own definitions (a recursive tree, zod's
/// named schemas) takes that definition's fields at its top, its definitions kept for the
/// references inside: `parametersJsonSchema` must describe an object at its top, and a bare
/// `$ref` there is refused (as the simulated Gemini's checks say).
fn inline_top_ref(o: &mut Map<String, Value>) {
    if o.contains_key("type") {
        return;
    }
    let target = o.get("$ref").and_then(Value::as_str).and_then(|r| {
        let (defs, name) = if let Some(n) = r.strip_prefix("#/$defs/") {
            ("$defs", n)
        } else {
            ("definitions", r.strip_prefix("#/definitions/")?)
        };
        o.get(defs)?.get(name)?.as_object().cloned()
    });
    if let Some(target) = target {
        o.remove("$ref");
        for (k, v) in target {
            // Siblings of the `$ref` (a description) describe this use of it.
            o.entry(k).or_insert(v);
        }
    }
}

/// The map even if a thread panicked holding it: it only ever holds complete entries.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    function_calling_config: CallingConfig<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CallingConfig<'a> {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_function_names: Option<[&'a str; 1]>,
}

/// The JSON body of a streamed `generateContent`, and the tool names it used.
pub fn build(_cfg: &ProviderConfig, req: &UpstreamRequest<'_>) -> Result<Built, ProviderError> {
    build_cached(req, &SchemaCache::default())
}

/// [`build`], with tool schemas cleaned once per `cache` (the transport's).
pub fn build_cached(
    req: &UpstreamRequest<'_>,
    cache: &SchemaCache,
) -> Result<Built, ProviderError> {
    let chat = req.chat;
    let opts = &chat.options;
    let names = ToolNames::for_request(chat);
    let signed = needs_thought_signatures(req.model);

    // Function responses name the function; the client's results only carry the call's id.
    let mut called: HashMap<&str, &str> = HashMap::new();
    for m in &chat.messages {
        for b in &m.content {
            if let ContentBlock::ToolUse { id, name, .. } = b {
                called.insert(id.as_str(), name.as_str());
            }
        }
    }

    let mut contents: Vec<Content<'_>> = Vec::with_capacity(chat.messages.len() + 2);
    for m in &chat.messages {
        let parts = match m.role {
            Role::User => user_parts(&m.content, &called, &names),
            Role::Assistant => model_parts(&m.content, &names, signed)?,
        };
        // The API refuses a turn without parts (an assistant turn of only dropped thinking).
        if parts.is_empty() {
            continue;
        }
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "model",
        };
        contents.push(Content {
            role: Some(role),
            parts,
        });
    }
    if let Some(prefill) = req.prefill.filter(|p| !p.is_empty()) {
        contents.push(Content {
            role: Some("model"),
            parts: vec![Part::Text(prefill.into())],
        });
        contents.push(Content {
            role: Some("user"),
            parts: vec![Part::Text(CONTINUE_INSTRUCTION.into())],
        });
    }

    // Structured output: JSON mode with the schema, except for a continuation, whose rest of a
    // JSON value is not a whole one (told in words instead).
    let continuing = !asks_format_natively(req);
    let instruction = opts
        .response_format
        .as_ref()
        .filter(|_| continuing)
        .map(format_instruction);
    let response_schema = match &opts.response_format {
        Some(ResponseFormat::JsonSchema { schema_json, .. }) if !continuing => {
            cache.get(schema_json)?
        }
        _ => None,
    };
    let system_instruction = with_instruction(system_text(chat), instruction.as_deref())
        .filter(|s| !s.is_empty())
        .map(|text| Content {
            role: None,
            parts: vec![Part::Text(text)],
        });
    if !opts.cache_points.is_empty() || opts.system_blocks.iter().any(|b| b.cache.is_some()) {
        tracing::debug!("gemini: prompt-cache breakpoints dropped (implicit caching)");
    }

    let stop: Vec<&str> = opts
        .stop
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    if stop.len() > MAX_STOP {
        tracing::debug!(
            dropped = stop.len() - MAX_STOP,
            "gemini: stop sequences over 5 dropped"
        );
    }
    let mut gen = GenerationConfig {
        max_output_tokens: req.max_tokens,
        temperature: chat.temperature.map(f64::from),
        top_p: opts.top_p.map(f64::from),
        stop_sequences: (!stop.is_empty()).then(|| &stop[..stop.len().min(MAX_STOP)]),
        thinking_config: None,
        response_mime_type: (opts.response_format.is_some() && !continuing)
            .then_some("application/json"),
        response_schema: Schema::open_api(&response_schema),
        response_json_schema: Schema::json(&response_schema),
        seed: native_int(chat, "openai", "seed"),
        top_k: native_int(chat, "anthropic", "top_k"),
    };
    if let Some(t) = opts.thinking {
        if supports_thinking(req.model) {
            // -1 is the API's "dynamic": the model decides, as `budget_tokens: None` asks. A
            // budget over the model's ceiling is refused, so it is lowered to it.
            let budget = t
                .budget_tokens
                .map_or(-1, |b| i64::from(b.min(max_thinking_budget(req.model))));
            gen.thinking_config = Some(ThinkingConfig {
                thinking_budget: budget,
                include_thoughts: true,
            });
        } else {
            tracing::debug!(
                model = req.model,
                "gemini: thinking dropped (model does not think)"
            );
        }
    }

    let mut body = Body {
        contents,
        system_instruction,
        generation_config: gen,
        tools: None,
        tool_config: None,
    };
    // Held here so the declarations can borrow them.
    let schemas = chat
        .tools
        .iter()
        .map(|t| cache.get(&t.input_schema_json))
        .collect::<Result<Vec<_>, _>>()?;
    if !chat.tools.is_empty() {
        let mut decls = Vec::with_capacity(chat.tools.len());
        for (t, schema) in chat.tools.iter().zip(&schemas) {
            decls.push(FunctionDecl {
                name: names.wire(&t.name),
                description: &t.description,
                parameters: Schema::open_api(schema),
                parameters_json_schema: Schema::json(schema),
            });
        }
        body.tools = Some([Tools {
            function_declarations: decls,
        }]);
        body.tool_config = opts.tool_choice.as_ref().map(|choice| {
            let (mode, allowed) = match choice {
                ToolChoice::Auto => ("AUTO", None),
                ToolChoice::Any => ("ANY", None),
                ToolChoice::None => ("NONE", None),
                ToolChoice::Tool { name } => ("ANY", Some([names.wire(name)])),
            };
            ToolConfig {
                function_calling_config: CallingConfig {
                    mode,
                    allowed_function_names: allowed,
                },
            }
        });
        if opts.parallel_tool_calls.is_some() {
            tracing::debug!("gemini: parallel_tool_calls dropped (no such switch)");
        }
    } else if opts.tool_choice.is_some() {
        tracing::debug!("gemini: tool_choice dropped (no tools)");
    }
    let bytes = to_bytes(&body, chat)?;
    Ok(Built {
        body: bytes,
        tool_names: names,
    })
}

/// Whether `model` takes a `thinkingConfig`: 2.5 and later (and the old `-thinking-`
/// experiments); 1.5 and 2.0 refuse it. Permissive, so a new model works without a release.
pub fn supports_thinking(model: &str) -> bool {
    let m = model.to_ascii_lowercase();
    let m = m.strip_prefix("models/").unwrap_or(&m);
    !(m.starts_with("gemini-1.") || m.starts_with("gemini-2.0")) || m.contains("thinking")
}

/// The largest thinking budget `model` accepts (Flash and Flash-Lite 24,576; Pro 32,768).
fn max_thinking_budget(model: &str) -> u32 {
    if model.contains("flash") {
        24_576
    } else {
        32_768
    }
}

/// An image part: `inlineData` for bytes, `fileData` for a URL the API fetches.
fn image_part(source: &ImageSource) -> Option<Part<'_>> {
    match source {
        ImageSource::Base64 { media_type, data } => Some(Part::InlineData {
            mime_type: media_type,
            data,
        }),
        ImageSource::Url { url } if url.starts_with("data:") => match split_data_url(url) {
            Some((mime_type, data)) => Some(Part::InlineData { mime_type, data }),
            None => {
                tracing::debug!("gemini: image data URL that is not base64 dropped");
                None
            }
        },
        ImageSource::Url { url } => Some(Part::FileData { file_uri: url }),
    }
}

/// A user turn's parts: function responses first (they answer the model turn just before),
/// then the tools' images, then the user's own text and images.
fn user_parts<'a>(
    content: &'a [ContentBlock],
    called: &HashMap<&str, &'a str>,
    names: &'a ToolNames,
) -> Vec<Part<'a>> {
    let mut responses = Vec::new();
    let mut tool_images = Vec::new();
    let mut own = Vec::new();
    for block in content {
        match block {
            ContentBlock::Text { text } if !text.is_empty() => {
                own.push(Part::Text(Cow::Borrowed(text)))
            }
            // Gemini reads a PDF as inline data like an image.
            ContentBlock::Image { source } | ContentBlock::Document { source, .. } => {
                own.extend(image_part(source))
            }
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
                images,
            } => {
                // A result whose call is not in the history (trimmed by the client) still
                // needs a name; the id is the best stand-in there is.
                let name = called
                    .get(tool_use_id.as_str())
                    .map_or(tool_use_id.as_str(), |n| names.wire(n));
                // The API documents `error` for a failed call and any other key for output.
                let response = if *is_error {
                    FunctionResponse::Error(content)
                } else {
                    FunctionResponse::Content(content)
                };
                responses.push(Part::FunctionResponse { name, response });
                tool_images.extend(images.iter().filter_map(image_part));
            }
            ContentBlock::Thinking { .. }
            | ContentBlock::RedactedThinking { .. }
            | ContentBlock::ServerBlock { .. } => {
                tracing::debug!("gemini: thinking or server tool block in a user turn dropped");
            }
            ContentBlock::Text { .. } | ContentBlock::ToolUse { .. } => {}
        }
    }
    responses.extend(tool_images);
    responses.extend(own);
    responses
}

/// A model turn's parts: text and function calls. Thinking is dropped: Gemini takes back only
/// its own signed thoughts, which the protocol does not carry.
fn model_parts<'a>(
    content: &'a [ContentBlock],
    names: &'a ToolNames,
    signed: bool,
) -> Result<Vec<Part<'a>>, ProviderError> {
    let mut parts = Vec::new();
    for block in content {
        match block {
            ContentBlock::Text { text } if !text.is_empty() => {
                parts.push(Part::Text(Cow::Borrowed(text)))
            }
            ContentBlock::ToolUse {
                name, input_json, ..
            } => {
                // Cut-off or non-object arguments from a past turn (clients replay them
                // verbatim) become `{}`: refused, they failed every later turn.
                let args = tool_input(input_json);
                let call = Call {
                    name: names.wire(name),
                    args,
                };
                parts.push(if signed {
                    Part::SignedFunctionCall {
                        function_call: call,
                        thought_signature: THOUGHT_SIGNATURE_SENTINEL,
                    }
                } else {
                    Part::FunctionCall(call)
                });
            }
            // Anthropic's server tools' blocks mean nothing elsewhere (their results are
            // encrypted); the text that quoted them follows.
            ContentBlock::Thinking { .. }
            | ContentBlock::RedactedThinking { .. }
            | ContentBlock::ServerBlock { .. } => {
                tracing::debug!("gemini: thinking or server tool block in a model turn dropped");
            }
            ContentBlock::Text { .. }
            | ContentBlock::Image { .. }
            | ContentBlock::Document { .. }
            | ContentBlock::ToolResult { .. } => {
                tracing::debug!("gemini: image, document or tool result in a model turn dropped");
            }
        }
    }
    Ok(parts)
}

/// `schema` with only what Gemini's `parameters` accepts: unknown keywords removed at every
/// level, local `$ref`s inlined (unresolvable ones become a bare object), `const` as a
/// one-value `enum`, `oneOf` as `anyOf`, a one-part `allOf` as its part, and
/// `"type": ["string", "null"]` as a nullable string.
/// A property Gemini cannot express (an object without properties, such as a map of
/// `additionalProperties`, or an array of them) is left out; an object left with none at the
/// top is a function without parameters (see [`SchemaCache`]).
pub fn clean_schema(schema: &Value) -> Value {
    clean_schema_telling(schema).0
}

/// [`clean_schema`], and whether the cleaning lost part of what the schema describes (a
/// property or a choice left out, a `$ref` not inlined): a model given the cleaned schema
/// could not call the tool with those arguments, so such a schema goes to Gemini whole, in
/// the JSON Schema field instead (see [`SchemaCache`]).
fn clean_schema_telling(schema: &Value) -> (Value, bool) {
    let defs = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut cleaning = Cleaning {
        budget: MAX_SCHEMA_NODES,
        lossy: false,
    };
    let out = clean(schema, &defs, 0, &mut cleaning);
    (out, cleaning.lossy)
}

/// What a cleaning has left to spend, and whether it has lost anything.
struct Cleaning {
    /// Schema nodes left to make (past it, what is left is a bare object, as an unresolvable
    /// `$ref`).
    budget: usize,
    /// Something the schema says was left out.
    lossy: bool,
}

/// `schema` cleaned.
fn clean(schema: &Value, defs: &Value, depth: usize, c: &mut Cleaning) -> Value {
    let Some(obj) = schema.as_object() else {
        // `true`/`false` schemas and other oddities: anything goes.
        return json!({});
    };
    if c.budget == 0 {
        c.lossy = true;
        return json!({"type": "object"});
    }
    c.budget -= 1;
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        let name = r
            .strip_prefix("#/$defs/")
            .or_else(|| r.strip_prefix("#/definitions/"));
        let target = name.and_then(|n| defs.get(n));
        let mut out = match target {
            Some(t) if depth < MAX_REF_DEPTH => clean(t, defs, depth + 1, c),
            _ => {
                c.lossy = true;
                json!({"type": "object"})
            }
        };
        // Siblings of `$ref` (a description, say) describe this use of the definition.
        if let Some(d) = obj.get("description") {
            out["description"] = d.clone();
        }
        return out;
    }
    let mut out = Map::new();
    let mut all_of = None;
    for (k, v) in obj {
        match k.as_str() {
            "properties" => {
                // Gemini refuses an object without properties at any depth ("properties:
                // should be non-empty for OBJECT type"): one free-form map among a tool's
                // arguments (an `env`, MCP's `arguments`) failed every request offering the
                // tool. Left out, the rest of the tool is still callable.
                let props: Map<String, Value> = v
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, s)| (name.clone(), clean(s, defs, depth, c)))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .filter(|(_, s)| {
                        let dropped = inexpressible(s);
                        c.lossy |= dropped;
                        !dropped
                    })
                    .collect();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" => {
                out.insert(k.clone(), clean(v, defs, depth, c));
            }
            "anyOf" | "oneOf" => {
                // A variant Gemini cannot express goes likewise (Pydantic's `Optional[dict]`:
                // a map or null); one left with none is left out above.
                let all: Vec<Value> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| clean(s, defs, depth, c))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .filter(|s| {
                        let dropped = inexpressible(s);
                        c.lossy |= dropped;
                        !dropped
                    })
                    .collect();
                out.insert("anyOf".into(), Value::Array(all));
            }
            "type" => match v {
                Value::Array(types) => {
                    let real: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                    if real.len() < types.len() {
                        out.insert("nullable".into(), json!(true));
                    }
                    if let Some(t) = real.first() {
                        out.insert("type".into(), (*t).clone());
                    }
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            },
            "const" => {
                out.insert("enum".into(), json!([v]));
            }
            // Taken after this node's own keys (below), which it must not overwrite.
            "allOf" => all_of = Some(v),
            // Keys beyond the named properties, of some type (labels, headers): the subset
            // cannot allow them, so the model could not send any. `false` only forbids them,
            // which the cleaned schema does anyway. (An object with no properties at all is
            // left out below, which also counts as a loss.)
            "additionalProperties"
                if v.as_bool() != Some(false)
                    && obj
                        .get("properties")
                        .and_then(Value::as_object)
                        .is_some_and(|p| !p.is_empty()) =>
            {
                c.lossy = true;
            }
            k if SCHEMA_FIELDS.contains(&k) => {
                out.insert(k.to_string(), v.clone());
            }
            _ => {}
        }
    }
    // The subset has no `allOf`. Pydantic wraps a `$ref` given a description in one of one
    // part: that part is the type, with this node's own words over it. Parts to combine, or
    // a part that says otherwise than the node (properties of both), are more than one
    // keyword can hold: sent whole. Dropped, the field was left untyped (any value, an enum
    // lost).
    if let Some(v) = all_of {
        match v.as_array().map(Vec::as_slice) {
            Some([one]) => {
                if let Value::Object(inner) = clean(one, defs, depth, c) {
                    for (ik, iv) in inner {
                        match out.get(&ik) {
                            None => {
                                out.insert(ik, iv);
                            }
                            Some(_) if matches!(ik.as_str(), "description" | "title") => {}
                            Some(mine) if *mine != iv => c.lossy = true,
                            Some(_) => {}
                        }
                    }
                }
            }
            _ => c.lossy = true,
        }
    }
    // `properties` and `required` are for objects only: Gemini refuses them on another type
    // (MCP servers send them on strings and arrays).
    if out
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.eq_ignore_ascii_case("object"))
    {
        out.remove("properties");
        out.remove("required");
    }
    // Gemini's enums are strings only; a numeric enum is refused, so it goes.
    if out
        .get("enum")
        .and_then(Value::as_array)
        .is_some_and(|e| !e.iter().all(Value::is_string))
    {
        out.remove("enum");
    }
    // `required` naming a property that is not there is refused.
    if let (Some(req), Some(props)) = (
        out.get("required").and_then(Value::as_array),
        out.get("properties").and_then(Value::as_object),
    ) {
        let kept: Vec<Value> = req
            .iter()
            .filter(|r| r.as_str().is_some_and(|n| props.contains_key(n)))
            .cloned()
            .collect();
        out.insert("required".into(), Value::Array(kept));
    }
    Value::Object(out)
}

/// Whether a cleaned schema is one Gemini refuses inside `parameters`: an object without
/// properties, an array of such, or a choice left with nothing but `null`.
fn inexpressible(schema: &Value) -> bool {
    if let Some(choices) = schema.get("anyOf").and_then(Value::as_array) {
        return choices.iter().all(|c| c["type"] == "null");
    }
    match schema["type"].as_str() {
        Some(t) if t.eq_ignore_ascii_case("object") => {
            schema["properties"].as_object().is_none_or(Map::is_empty)
        }
        Some(t) if t.eq_ignore_ascii_case("array") => {
            schema.get("items").is_some_and(inexpressible)
        }
        _ => false,
    }
}

/// A Google API error object (`{"error": {"code", "message", "status", "details"}}`), as an
/// HTTP error body or an in-stream event.
#[derive(Debug, Default, serde::Deserialize)]
pub struct GoogleError {
    /// HTTP-like code.
    #[serde(default)]
    pub code: Option<u16>,
    /// Human text.
    #[serde(default)]
    pub message: Option<String>,
    /// The canonical status name (`RESOURCE_EXHAUSTED`, ...).
    #[serde(default)]
    pub status: Option<String>,
    /// Typed details; `RetryInfo` carries `retryDelay`.
    #[serde(default)]
    pub details: Vec<Value>,
}

impl GoogleError {
    /// The error in a body, if it is one of Google's.
    pub fn parse(body: &[u8]) -> Option<GoogleError> {
        let v: Value = serde_json::from_slice(body).ok()?;
        // Some front ends wrap the body in an array.
        let e = match &v {
            Value::Array(a) => a.first()?.get("error")?,
            o => o.get("error")?,
        };
        serde_json::from_value(e.clone()).ok()
    }

    /// The wait the API asked for (`RetryInfo.retryDelay`, "7s" or "0.5s").
    pub fn retry_delay(&self) -> Option<Duration> {
        self.details
            .iter()
            .filter_map(|d| d["retryDelay"].as_str())
            .find_map(parse_duration)
    }

    /// The kind of failure; `http` is the response status, when there is one.
    pub fn kind(&self, http: Option<u16>) -> ErrorKind {
        let msg = self.message.as_deref().unwrap_or("").to_ascii_lowercase();
        let says = |p: &[&str]| p.iter().any(|p| msg.contains(p));
        match self.status.as_deref() {
            // A bad key comes back as 400 INVALID_ARGUMENT; waiting or retrying won't fix it.
            _ if says(&["api key not valid", "api_key_invalid", "api key expired"]) => {
                ErrorKind::Auth
            }
            // Per-minute and per-day quotas alike, though the text mentions billing: the
            // quota comes back, and `retryDelay` says when.
            Some("RESOURCE_EXHAUSTED") => ErrorKind::RateLimited,
            Some("UNAVAILABLE") => ErrorKind::Overloaded,
            Some("INTERNAL" | "UNKNOWN" | "ABORTED") => ErrorKind::ServerError,
            Some("DEADLINE_EXCEEDED") => ErrorKind::Timeout,
            Some("PERMISSION_DENIED" | "UNAUTHENTICATED") => ErrorKind::Auth,
            Some("NOT_FOUND") => ErrorKind::NotFound,
            Some("FAILED_PRECONDITION") if says(&["billing"]) => ErrorKind::Billing,
            Some("INVALID_ARGUMENT" | "OUT_OF_RANGE")
                if says(&["input token count", "exceeds the maximum number of tokens"]) =>
            {
                ErrorKind::ContextLength
            }
            Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE") => {
                ErrorKind::BadRequest
            }
            _ => match http.or(self.code) {
                Some(code) => super::error::classify(code, None, self.message.as_deref()),
                None => ErrorKind::ServerError,
            },
        }
    }
}

/// A protobuf JSON duration ("7s", "1.500s").
fn parse_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
    (0.0..86_400.0)
        .contains(&secs)
        .then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests;
