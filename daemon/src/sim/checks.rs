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
//! OpenAI flavours: images are `image_url` parts of `user` messages (`data:` base64 or
//! `http(s)`); any other role with an image is refused, as most compatible servers do.

use serde_json::Value;

use super::Flavor;

/// What a valid request asked for, beyond text.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Images anywhere in the conversation (tool results included).
    pub images: usize,
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

fn anthropic(req: &Value) -> Result<Features, String> {
    let mut f = Features::default();
    let messages = blocks(&req["messages"]);
    for (i, m) in messages.iter().enumerate() {
        for (j, b) in blocks(&m["content"]).iter().enumerate() {
            let at = format!("messages.{i}.content.{j}");
            match b["type"].as_str() {
                Some("image") => {
                    anthropic_image(&b["source"], &at)?;
                    f.images += 1;
                }
                Some("tool_result") => {
                    for (k, part) in blocks(&b["content"]).iter().enumerate() {
                        if part["type"] == "image" {
                            anthropic_image(&part["source"], &format!("{at}.content.{k}"))?;
                            f.images += 1;
                        }
                    }
                }
                Some("thinking") => match b["signature"].as_str() {
                    None => return Err(format!("{at}.thinking.signature: Field required")),
                    Some(sig) if sig != signature(b["thinking"].as_str().unwrap_or("")) => {
                        return Err(format!("{at}: Invalid `signature` in `thinking` block"));
                    }
                    Some(_) => {}
                },
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

fn openai(flavor: Flavor, req: &Value) -> Result<Features, String> {
    let mut f = Features {
        reasoning: flavor == Flavor::DeepSeek
            && (req["model"]
                .as_str()
                .is_some_and(|m| m.contains("reasoner"))
                || req["thinking"]["type"] == "enabled"),
        ..Features::default()
    };
    for (i, m) in blocks(&req["messages"]).iter().enumerate() {
        for part in blocks(&m["content"]) {
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
    Ok(f)
}
