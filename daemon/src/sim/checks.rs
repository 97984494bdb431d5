//! The request rules the simulated providers enforce, as the real APIs do, so that an adapter
//! that sends what a real provider would refuse fails its tests here first.
//!
//! Anthropic flavour, with extended thinking (`"thinking": {"type": "enabled"}`):
//! `budget_tokens >= 1024` and `< max_tokens`; `temperature` only 1, `top_p` only >= 0.95; no
//! forced tool choice; the final assistant turn (or, in a tool loop, the turn that called the
//! tools) starts with a thinking block. Always: every replayed thinking block carries a
//! signature this simulator made ([`signature`]); images are base64 with an image media type,
//! or an `http(s)` URL.
//!
//! DeepSeek flavour: *reasoning mode* is on when the requested model's name contains
//! `reasoner` or the request says `"thinking": {"type": "enabled"}` (DeepSeek's switch). In it,
//! every assistant turn with `tool_calls` must carry `reasoning_content`, as DeepSeek demands.
//!
//! Gemini flavour: every turn has parts; roles are `user` and `model`; a `functionCall` only in
//! a `model` turn, a `functionResponse` with a name; images are `inlineData` with an image
//! MIME type or `fileData` with an http(s) URI; function parameters use only the OpenAPI
//! subset (`additionalProperties`, `$schema`, `$ref`, `const`, `exclusiveMinimum`... are
//! refused as unknown fields) and an object declares at least one property.
//!
//! OpenAI flavours: images are `image_url` parts of `user` messages (`data:` base64 or
//! `http(s)`); any other role with an image is refused, as most compatible servers do.

use serde_json::{json, Value};

use super::Flavor;

/// What a valid request asked for, beyond text.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Images anywhere in the conversation (tool results included).
    pub images: usize,
    /// Documents (PDFs) likewise.
    pub documents: usize,
    /// Anthropic extended thinking is on.
    pub thinking: bool,
    /// DeepSeek reasoning mode is on.
    pub reasoning: bool,
}

/// Secret mixed into thinking signatures: the simulators recognise their own and no one else's.
const SIM_SECRET: &[u8] = b"mythos-sim-thinking-v1";

/// The signature the Anthropic-flavour simulator gives thinking `text` (an HMAC stand-in: a
/// 64-bit FNV-1a over secret, text, secret).
pub fn signature(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in SIM_SECRET.iter().chain(text.as_bytes()).chain(SIM_SECRET) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("simsig{h:016x}")
}

/// The encrypted thinking of the Anthropic-flavour simulator's `redacted_thinking` blocks: it
/// knows its own, as it does its signatures.
pub fn redacted_data() -> String {
    format!("simredacted{}", signature("redacted"))
}

/// Check `req` against the flavour's rules; the error is the message of the `400
/// invalid_request_error` the provider would answer.
pub fn check(flavor: Flavor, req: &Value) -> Result<Features, String> {
    match flavor {
        Flavor::Anthropic => anthropic(req),
        _ => openai(flavor, req),
    }
}

fn blocks(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn anthropic_image(source: &Value, at: &str) -> Result<(), String> {
    match source["type"].as_str() {
        Some("base64") => {
            let mt = source["media_type"].as_str().unwrap_or("");
            if !["image/jpeg", "image/png", "image/gif", "image/webp"].contains(&mt) {
                return Err(format!("{at}.source.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"));
            }
            if source["data"].as_str().is_none_or(str::is_empty) {
                return Err(format!("{at}.source.data: Field required"));
            }
            Ok(())
        }
        Some("url") => {
            let url = source["url"].as_str().unwrap_or("");
            if url.starts_with("https://") || url.starts_with("http://") {
                Ok(())
            } else {
                Err(format!("{at}.source.url: only http(s) URLs are supported"))
            }
        }
        _ => Err(format!(
            "{at}.source.type: Input should be 'base64' or 'url'"
        )),
    }
}

/// A `document` block's source as the API takes it: a base64 PDF, a plain-text document, or a
/// URL.
fn anthropic_document(source: &Value, at: &str) -> Result<(), String> {
    let ok = match source["type"].as_str() {
        Some("base64") => {
            source["media_type"] == "application/pdf"
                && source["data"].as_str().is_some_and(|d| !d.is_empty())
        }
        Some("text") => source["media_type"] == "text/plain" && source["data"].is_string(),
        Some("url") => source["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://") || u.starts_with("http://")),
        Some("content") => source["content"].is_array() || source["content"].is_string(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{at}.source: Input tag does not match any expected tag"
        ))
    }
}

fn anthropic(req: &Value) -> Result<Features, String> {
    if let Some(format) = req["output_config"].get("format") {
        if format["type"] != "json_schema" || !format["schema"].is_object() {
            return Err("output_config.format: expected a json_schema format with a schema".into());
        }
        anthropic_schema(&format["schema"], "output_config.format.schema")?;
    }
    if req.get("output_format").is_some() {
        // The beta field, without the beta header the daemon never sends.
        return Err("output_format: Extra inputs are not permitted".into());
    }
    let mut f = Features::default();
    for (i, t) in blocks(&req["tools"]).iter().enumerate() {
        // A tool is the client's (a schema) or one of Anthropic's own (a versioned type).
        let server = t["type"].as_str().is_some_and(|ty| ty != "custom");
        if t["name"].as_str().is_none_or(str::is_empty)
            || (!server && !t["input_schema"].is_object())
        {
            return Err(format!(
                "tools.{i}: Input tag does not match any expected tag"
            ));
        }
    }
    let messages = blocks(&req["messages"]);
    anthropic_tool_pairs(messages)?;
    for (i, m) in messages.iter().enumerate() {
        for (j, b) in blocks(&m["content"]).iter().enumerate() {
            let at = format!("messages.{i}.content.{j}");
            match b["type"].as_str() {
                Some("image") => {
                    anthropic_image(&b["source"], &at)?;
                    f.images += 1;
                }
                Some("document") => {
                    anthropic_document(&b["source"], &at)?;
                    f.documents += 1;
                }
                Some("tool_result") => {
                    for (k, part) in blocks(&b["content"]).iter().enumerate() {
                        let at = format!("{at}.content.{k}");
                        if part["type"] == "image" {
                            anthropic_image(&part["source"], &at)?;
                            f.images += 1;
                        } else if part["type"] == "document" {
                            anthropic_document(&part["source"], &at)?;
                            f.documents += 1;
                        }
                    }
                }
                // A search's results answer a search of the same turn, sent back as it came.
                Some("web_search_tool_result") => {
                    let id = b["tool_use_id"].as_str().unwrap_or("");
                    let called = blocks(&m["content"])[..j]
                        .iter()
                        .any(|c| c["type"] == "server_tool_use" && c["id"] == id);
                    // Results, or the error a failed search gives (`max_uses_exceeded`, ...).
                    let shaped = b["content"].is_array()
                        || b["content"]["type"] == "web_search_tool_result_error";
                    if m["role"] != "assistant" || !called || !shaped {
                        return Err(format!(
                            "{at}: web_search_tool_result block(s) provided when previous \
                             message does not have a matching server_tool_use"
                        ));
                    }
                }
                Some("thinking") => match b["signature"].as_str() {
                    None => return Err(format!("{at}.thinking.signature: Field required")),
                    Some(sig) if sig != signature(b["thinking"].as_str().unwrap_or("")) => {
                        return Err(format!("{at}: Invalid `signature` in `thinking` block"));
                    }
                    Some(_) => {}
                },
                Some("redacted_thinking") if b["data"].as_str() != Some(&redacted_data()) => {
                    return Err(format!("{at}: Invalid `data` in `redacted_thinking` block"));
                }
                Some("text") if b["text"].as_str().is_none_or(str::is_empty) => {
                    return Err(format!("{at}: text content blocks must be non-empty"));
                }
                _ => {}
            }
        }
        if blocks(&m["content"]).is_empty() && m["content"].as_str().is_none_or(str::is_empty) {
            return Err(format!(
                "messages.{i}: all messages must have non-empty content"
            ));
        }
    }

    let thinking = &req["thinking"];
    if thinking["type"] != "enabled" {
        return Ok(f);
    }
    f.thinking = true;
    let budget = thinking["budget_tokens"].as_u64().unwrap_or(0);
    let max = req["max_tokens"].as_u64().unwrap_or(0);
    if budget < 1024 {
        return Err(
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024".into(),
        );
    }
    if max <= budget {
        return Err("`max_tokens` must be greater than `thinking.budget_tokens`".into());
    }
    if req["temperature"].as_f64().is_some_and(|t| t != 1.0) {
        return Err("`temperature` may only be set to 1 when thinking is enabled".into());
    }
    if req["top_p"].as_f64().is_some_and(|p| p < 0.95) {
        return Err(
            "`top_p` must be greater than or equal to 0.95 when thinking is enabled".into(),
        );
    }
    if matches!(req["tool_choice"]["type"].as_str(), Some("any" | "tool")) {
        return Err("Thinking may not be enabled when tool_choice forces tool use.".into());
    }
    // The final assistant turn, or the one whose tool calls the last user turn answers, must
    // start with its thinking.
    let last = messages.last();
    let in_loop = last.is_some_and(|m| {
        m["role"] == "user"
            && blocks(&m["content"])
                .iter()
                .any(|b| b["type"] == "tool_result")
    });
    let turn = if last.is_some_and(|m| m["role"] == "assistant") {
        last
    } else if in_loop {
        messages.iter().rev().find(|m| m["role"] == "assistant")
    } else {
        None
    };
    if let Some(turn) = turn {
        let first = blocks(&turn["content"]).first().map(|b| &b["type"]);
        if !first.is_some_and(|t| t == "thinking" || t == "redacted_thinking") {
            return Err("Expected `thinking` or `redacted_thinking`, but found another block. When `thinking` is enabled, a final `assistant` message must start with a thinking block (preceding the lastmost set of `tool_use` and `tool_result` blocks).".into());
        }
    }
    Ok(f)
}

/// Anthropic's pairing rule, in its words: each `tool_result` answers a `tool_use` of the message
/// just before it, and each `tool_use` (but in the last message) is answered in the next.
fn anthropic_tool_pairs(messages: &[Value]) -> Result<(), String> {
    let ids = |m: &Value, ty: &str, key: &str| -> Vec<String> {
        blocks(&m["content"])
            .iter()
            .filter(|b| b["type"] == ty)
            .filter_map(|b| b[key].as_str().map(String::from))
            .collect()
    };
    for (i, m) in messages.iter().enumerate() {
        let results = ids(m, "tool_result", "tool_use_id");
        let called = match i.checked_sub(1) {
            Some(j) if messages[j]["role"] == "assistant" => ids(&messages[j], "tool_use", "id"),
            _ => Vec::new(),
        };
        if let Some(stray) = results.iter().find(|r| !called.contains(r)) {
            return Err(format!(
                "messages.{i}.content.0: unexpected `tool_use_id` found in `tool_result` blocks: \
                 {stray}. Each `tool_result` block must have a corresponding `tool_use` block in \
                 the previous message."
            ));
        }
        let calls = ids(m, "tool_use", "id");
        if let (Some(next), false) = (messages.get(i + 1), calls.is_empty()) {
            let answered = ids(next, "tool_result", "tool_use_id");
            let missing: Vec<&str> = calls
                .iter()
                .filter(|c| !answered.contains(c))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "messages.{}: `tool_use` ids were found without `tool_result` blocks \
                     immediately after: {}. Each `tool_use` block must have a corresponding \
                     `tool_result` block in the next message.",
                    i + 1,
                    missing.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// The Chat Completions rule, in OpenAI's words: `tool` messages answer the `tool_calls` of the
/// assistant message before them, and every call is answered before the next other message.
fn openai_tool_pairs(messages: &[Value]) -> Result<(), String> {
    // The calls of the last assistant turn still waiting for their `tool` message.
    let mut open: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m["role"] == "tool" {
            let id = m["tool_call_id"].as_str().unwrap_or("");
            if !open.iter().any(|c| c == id) {
                return Err(format!(
                    "Invalid parameter: messages with role 'tool' must be a response to a \
                     preceeding message with 'tool_calls' (messages[{i}])."
                ));
            }
            open.retain(|c| c != id);
            continue;
        }
        if !open.is_empty() {
            return Err(format!(
                "An assistant message with 'tool_calls' must be followed by tool messages \
                 responding to each 'tool_call_id'. The following tool_call_ids did not have \
                 response messages: {}",
                open.join(", ")
            ));
        }
        open = blocks(&m["tool_calls"])
            .iter()
            .filter_map(|c| c["id"].as_str().map(String::from))
            .collect();
    }
    Ok(())
}

fn openai(flavor: Flavor, req: &Value) -> Result<Features, String> {
    let mut f = Features {
        reasoning: flavor == Flavor::DeepSeek
            && (req["model"]
                .as_str()
                .is_some_and(|m| m.contains("reasoner"))
                || req["thinking"]["type"] == "enabled"),
        ..Features::default()
    };
    // Gemini pairs calls by name and order, which its conversion to this shape does not keep.
    if flavor != Flavor::Gemini {
        openai_tool_pairs(blocks(&req["messages"]))?;
    }
    for (i, m) in blocks(&req["messages"]).iter().enumerate() {
        for part in blocks(&m["content"]) {
            if part["type"] == "file" {
                let data = part["file"]["file_data"].as_str().unwrap_or("");
                let id = part["file"]["file_id"].as_str().unwrap_or("");
                if m["role"] != "user"
                    || (id.is_empty() && !data.starts_with("data:application/pdf;base64,"))
                {
                    return Err(format!(
                        "Invalid 'messages[{i}]': a file part needs a PDF as a base64 data URL \
                         in `file_data` (or a `file_id`), in a user message"
                    ));
                }
                f.documents += 1;
                continue;
            }
            if part["type"] != "image_url" {
                continue;
            }
            if m["role"] != "user" {
                return Err(format!(
                    "Invalid 'messages[{i}]'. Image URLs are only allowed for messages with role 'user', but this message with role '{}' contains an image URL.",
                    m["role"].as_str().unwrap_or("")
                ));
            }
            let url = part["image_url"]["url"].as_str().unwrap_or("");
            let data_ok = url
                .strip_prefix("data:image/")
                .is_some_and(|r| r.contains(";base64,"));
            if !(data_ok || url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!("messages[{i}]: invalid image URL"));
            }
            f.images += 1;
        }
        if f.reasoning
            && m["role"] == "assistant"
            && !blocks(&m["tool_calls"]).is_empty()
            && !m["reasoning_content"].is_string()
        {
            return Err(format!(
                "Missing `reasoning_content` field in the assistant message at message index {i}"
            ));
        }
    }
    match req["response_format"]["type"].as_str() {
        None | Some("text") => {}
        Some("json_schema") if flavor == Flavor::DeepSeek => {
            return Err("This response_format type is unavailable now".into());
        }
        Some("json_schema") => {
            if !req["response_format"]["json_schema"]["schema"].is_object() {
                return Err(
                    "Missing required parameter: 'response_format.json_schema.schema'.".into(),
                );
            }
        }
        Some("json_object") if flavor != Flavor::Gemini => {
            // OpenAI's rule, and DeepSeek's: JSON mode wants the word in the prompt.
            let said = blocks(&req["messages"]).iter().any(|m| {
                m["content"]
                    .to_string()
                    .to_ascii_lowercase()
                    .contains("json")
            });
            if !said {
                return Err("'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.".into());
            }
        }
        Some("json_object") => {}
        Some(other) => {
            return Err(format!("Invalid value: '{other}'. Supported values are: 'json_object', 'json_schema', and 'text'."));
        }
    }
    Ok(f)
}

/// The JSON Schema the answer to `req` must match, when it must be JSON (`{"type": "object"}`
/// for any object): asked natively (`response_format`, `output_config.format`, Gemini's JSON
/// mode as [`gemini_as_chat`] carries it) or in the words of the daemon's instruction in the
/// system prompt, which a model would follow as well.
pub fn wanted_json(req: &Value) -> Option<Value> {
    use crate::provider::{FORMAT_OBJECT, FORMAT_SCHEMA};
    let any = || json!({"type": "object"});
    // A schema in words is the most specific: DeepSeek's JSON mode comes with one.
    let system = system_text(req);
    if let Some(at) = system.find(FORMAT_SCHEMA) {
        let rest = system[at + FORMAT_SCHEMA.len()..].trim_start();
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        return Some(values.next().and_then(Result::ok).unwrap_or_else(any));
    }
    match req["response_format"]["type"].as_str() {
        Some("json_schema") => {
            return Some(req["response_format"]["json_schema"]["schema"].clone())
        }
        Some("json_object") => return Some(any()),
        _ => {}
    }
    if req["output_config"]["format"]["type"] == "json_schema" {
        return Some(req["output_config"]["format"]["schema"].clone());
    }
    system.contains(FORMAT_OBJECT).then(any)
}

/// The system prompt of a request in any flavour's shape, as one text.
fn system_text(req: &Value) -> String {
    let mut out = String::new();
    match &req["system"] {
        Value::String(s) => out.push_str(s),
        Value::Array(b) => {
            for block in b {
                out.push_str(block["text"].as_str().unwrap_or(""));
                out.push('\n');
            }
        }
        _ => {}
    }
    for m in blocks(&req["messages"]) {
        if m["role"] == "system" || m["role"] == "developer" {
            match &m["content"] {
                Value::String(s) => out.push_str(s),
                other => out.push_str(&other.to_string()),
            }
            out.push('\n');
        }
    }
    out
}

/// JSON-Schema keywords Anthropic's structured outputs refuse (its SDKs move them into the
/// description before sending).
const ANTHROPIC_REFUSED: [&str; 7] = [
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
];

/// Anthropic's 400 for a structured-output schema it cannot compile.
fn anthropic_schema(schema: &Value, at: &str) -> Result<(), String> {
    match schema {
        Value::Object(obj) => {
            for (k, v) in obj {
                if ANTHROPIC_REFUSED.contains(&k.as_str()) {
                    return Err(format!("{at}: the '{k}' keyword is not supported"));
                }
                if k == "additionalProperties" && v != &Value::Bool(false) {
                    return Err(format!("{at}: additionalProperties must be false"));
                }
                if matches!(k.as_str(), "properties" | "$defs" | "definitions") {
                    // Names, not keywords: a property may be called `minimum`.
                    for (name, sub) in v.as_object().into_iter().flatten() {
                        anthropic_schema(sub, &format!("{at}.{k}.{name}"))?;
                    }
                } else {
                    anthropic_schema(v, &format!("{at}.{k}"))?;
                }
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| anthropic_schema(v, &format!("{at}[{i}]"))),
        _ => Ok(()),
    }
}

/// JSON-Schema keywords outside Gemini's OpenAPI subset, which it refuses as unknown fields.
const GEMINI_REFUSED: [&str; 16] = [
    "$schema",
    "$id",
    "$ref",
    "$defs",
    "definitions",
    "additionalProperties",
    "propertyNames",
    "patternProperties",
    "unevaluatedProperties",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "const",
    "oneOf",
    "allOf",
    "not",
    "if",
];

/// Gemini's 400 for a function schema with a keyword it does not know, or an empty object.
fn gemini_schema(schema: &Value, at: &str) -> Result<(), String> {
    let Some(obj) = schema.as_object() else {
        return Ok(());
    };
    for (k, v) in obj {
        if GEMINI_REFUSED.contains(&k.as_str()) {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{k}\" at '{at}': Cannot find field."
            ));
        }
        match k.as_str() {
            "properties" => {
                for (name, s) in v.as_object().into_iter().flatten() {
                    gemini_schema(s, &format!("{at}.properties[{name}].value"))?;
                }
            }
            "items" => gemini_schema(v, &format!("{at}.items"))?,
            "anyOf" => {
                for (i, s) in blocks(v).iter().enumerate() {
                    gemini_schema(s, &format!("{at}.any_of[{i}]"))?;
                }
            }
            _ => {}
        }
    }
    if obj.get("type").and_then(Value::as_str) == Some("object")
        && obj
            .get("properties")
            .and_then(Value::as_object)
            .is_none_or(serde_json::Map::is_empty)
    {
        return Err(format!(
            "* GenerateContentRequest.{at}.properties: should be non-empty for OBJECT type"
        ));
    }
    Ok(())
}

/// Check a Gemini `generateContent` request as the API would, and translate it to the chat
/// shape the rest of the simulator reads (`messages` with `user`/`assistant`/`tool` roles and
/// text and `image_url` parts, `system`, `tools[].name`, `max_tokens`), plus
/// `gemini_thoughts` when thoughts were asked for. The error is the 400's message.
pub fn gemini_as_chat(req: &Value, model: &str) -> Result<Value, String> {
    let contents = blocks(&req["contents"]);
    if contents.is_empty() {
        return Err("* GenerateContentRequest.contents: contents is not specified".into());
    }
    let mut messages = Vec::new();
    for (i, c) in contents.iter().enumerate() {
        let role = match c["role"].as_str() {
            None | Some("user") => "user",
            Some("model") => "assistant",
            Some(r) => {
                return Err(format!(
                    "Please use a valid role: user, model. (contents[{i}].role is {r})"
                ))
            }
        };
        let parts = blocks(&c["parts"]);
        if parts.is_empty() {
            return Err(format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            ));
        }
        let mut content = Vec::new();
        let mut calls = Vec::new();
        for (j, p) in parts.iter().enumerate() {
            let at = format!("contents[{i}].parts[{j}]");
            if let Some(t) = p["text"].as_str() {
                content.push(json!({"type": "text", "text": t}));
            } else if let Some(d) = p.get("inlineData") {
                let mime = d["mimeType"].as_str().unwrap_or("");
                let data = d["data"].as_str().unwrap_or("");
                // Gemini reads PDFs as inline data too.
                if !(mime.starts_with("image/") || mime == "application/pdf") || data.is_empty() {
                    return Err(format!("* GenerateContentRequest.{at}.inline_data: Unsupported MIME type or no data: {mime}"));
                }
                let url = format!("data:{mime};base64,{data}");
                content.push(if mime == "application/pdf" {
                    json!({"type": "file", "file": {"file_data": url}})
                } else {
                    json!({"type": "image_url", "image_url": {"url": url}})
                });
            } else if let Some(f) = p.get("fileData") {
                let uri = f["fileUri"].as_str().unwrap_or("");
                if !(uri.starts_with("https://") || uri.starts_with("http://")) {
                    return Err(format!("* GenerateContentRequest.{at}.file_data.file_uri: Invalid or unsupported file uri: {uri}"));
                }
                content.push(json!({"type": "image_url", "image_url": {"url": uri}}));
            } else if let Some(call) = p.get("functionCall") {
                if role != "assistant" {
                    return Err(format!("* GenerateContentRequest.{at}: function calls are only allowed in model turns"));
                }
                calls.push(json!({"type": "function", "function": {
                    "name": call["name"], "arguments": call["args"].to_string()}}));
            } else if let Some(r) = p.get("functionResponse") {
                if r["name"].as_str().is_none_or(str::is_empty) {
                    return Err(format!("* GenerateContentRequest.{at}.function_response.name: Name cannot be empty."));
                }
                messages.push(json!({"role": "tool", "content": r["response"].to_string()}));
            } else {
                return Err(format!("* GenerateContentRequest.{at}.data: required oneof field 'data' must have one initialized field"));
            }
        }
        if !content.is_empty() || !calls.is_empty() {
            let mut m = json!({"role": role, "content": content});
            if !calls.is_empty() {
                m["tool_calls"] = Value::Array(calls);
            }
            messages.push(m);
        }
    }
    let mut tools = Vec::new();
    for (i, t) in blocks(&req["tools"]).iter().enumerate() {
        for (j, d) in blocks(&t["functionDeclarations"]).iter().enumerate() {
            let name = d["name"].as_str().unwrap_or("");
            if !crate::provider::toolnames::is_valid(name) {
                return Err(format!("* GenerateContentRequest.tools[{i}].function_declarations[{j}].name: Invalid function name."));
            }
            if let Some(params) = d.get("parameters") {
                gemini_schema(
                    params,
                    &format!("tools[{i}].function_declarations[{j}].parameters"),
                )?;
                if d.get("parametersJsonSchema").is_some() {
                    return Err(format!("* GenerateContentRequest.tools[{i}].function_declarations[{j}]: parameters and parameters_json_schema are mutually exclusive"));
                }
            }
            if let Some(params) = d.get("parametersJsonSchema") {
                if params["type"] != "object" {
                    return Err(format!("* GenerateContentRequest.tools[{i}].function_declarations[{j}].parameters_json_schema: the schema must describe an object"));
                }
            }
            tools.push(json!({"name": name}));
        }
    }
    let system: Vec<&str> = blocks(&req["systemInstruction"]["parts"])
        .iter()
        .filter_map(|p| p["text"].as_str())
        .collect();
    let gen = &req["generationConfig"];
    if let Some(schema) = gen.get("responseSchema") {
        if gen["responseMimeType"] != "application/json" {
            return Err("* GenerateContentRequest.generation_config.response_mime_type: responseSchema needs the application/json MIME type".into());
        }
        gemini_schema(schema, "generation_config.response_schema")?;
        if gen.get("responseJsonSchema").is_some() {
            return Err("* GenerateContentRequest.generation_config: response_schema and response_json_schema are mutually exclusive".into());
        }
    }
    if gen.get("responseJsonSchema").is_some() && gen["responseMimeType"] != "application/json" {
        return Err("* GenerateContentRequest.generation_config.response_mime_type: responseJsonSchema needs the application/json MIME type".into());
    }
    let mut out = json!({
        "model": model,
        "stream": true,
        "messages": messages,
        "max_tokens": gen["maxOutputTokens"].as_u64().unwrap_or(8192),
        "gemini_thoughts": gen["thinkingConfig"]["includeThoughts"] == true,
    });
    if !system.is_empty() {
        out["system"] = json!(system.concat());
    }
    if !tools.is_empty() {
        out["tools"] = Value::Array(tools);
    }
    if gen["responseMimeType"] == "application/json" {
        out["response_format"] = match gen
            .get("responseSchema")
            .or_else(|| gen.get("responseJsonSchema"))
        {
            Some(schema) => json!({"type": "json_schema", "json_schema": {"schema": schema}}),
            None => json!({"type": "json_object"}),
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simulators refuse structured-output requests the real APIs refuse, and read what
    /// the answer must be from the request, natively or in the daemon's words.
    #[test]
    fn structured_output_rules_and_wants() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let chat = |format: Value, text: &str| json!({"messages": [{"role": "user", "content": text}], "response_format": format});
        let with_schema = json!({"type": "json_schema", "json_schema": {"schema": schema}});
        assert!(check(Flavor::OpenAi, &chat(with_schema.clone(), "x")).is_ok());
        let e = check(Flavor::DeepSeek, &chat(with_schema.clone(), "x")).unwrap_err();
        assert!(e.contains("unavailable"), "{e}");
        let object = json!({"type": "json_object"});
        let e = check(Flavor::OpenAi, &chat(object.clone(), "x")).unwrap_err();
        assert!(e.contains("the word 'json'"), "{e}");
        assert!(check(Flavor::DeepSeek, &chat(object.clone(), "answer in JSON")).is_ok());
        let e = check(Flavor::OpenAi, &chat(json!({"type": "xml"}), "x")).unwrap_err();
        assert!(e.contains("'xml'"), "{e}");
        let beta = json!({"messages": [], "output_format": {"type": "json_schema"}});
        assert!(check(Flavor::Anthropic, &beta).is_err());

        assert_eq!(wanted_json(&chat(with_schema, "x")), Some(schema.clone()));
        assert_eq!(
            wanted_json(&chat(object, "json")),
            Some(json!({"type": "object"}))
        );
        let native =
            json!({"output_config": {"format": {"type": "json_schema", "schema": schema}}});
        assert_eq!(wanted_json(&native), Some(schema.clone()));
        let words = crate::provider::FORMAT_SCHEMA;
        let told = json!({"system": format!("be brief\n\n{words}\n{schema}"), "messages": []});
        assert_eq!(wanted_json(&told), Some(schema.clone()));
        let told = json!({"messages": [{"role": "system",
            "content": crate::provider::FORMAT_OBJECT}]});
        assert_eq!(wanted_json(&told), Some(json!({"type": "object"})));
        assert_eq!(wanted_json(&json!({"messages": []})), None);
        // DeepSeek's way: JSON mode, and the schema in words.
        let both = json!({"response_format": {"type": "json_object"},
            "messages": [{"role": "system", "content": format!("{words}\n{schema}")}]});
        assert_eq!(wanted_json(&both), Some(schema.clone()));
    }
}
