//! What the three adapters share to write a request body: the body is a tree of
//! `#[derive(Serialize)]` structs borrowing from the client's request, written straight to bytes
//! (no `serde_json::Value` tree in between), and JSON the client sent as text (tool schemas,
//! past tool calls' arguments) is checked and copied through as it is rather than parsed into a
//! tree and printed again.

use std::borrow::Cow;
use std::fmt;

use mythos_protocol::{ChatRequest, ErrorKind, NativeField, ResponseFormat};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use super::ProviderError;

/// The system prompt as one text, for APIs without system blocks: the string as it is, or the
/// blocks' text joined (their cache breakpoints have no place there). Borrowed when it can be.
pub(crate) fn system_text(chat: &ChatRequest) -> Option<Cow<'_, str>> {
    match &chat.system {
        Some(s) => Some(Cow::Borrowed(s)),
        None if !chat.options.system_blocks.is_empty() => Some(Cow::Owned(
            chat.options
                .system_blocks
                .iter()
                .map(|b| b.text.as_str())
                .collect::<Vec<_>>()
                .join("\n\n"),
        )),
        None => None,
    }
}

/// What a model is told about the answer's shape when its API cannot be asked for it (no JSON
/// mode, no schema mode), and whenever it continues another provider's JSON answer: the rest of
/// a JSON value is not a whole one, so a native JSON mode would start a new value instead.
/// Appended to the system prompt. The simulated providers read the schema back from it, as a
/// model would.
pub(crate) fn format_instruction(format: &ResponseFormat) -> String {
    match format {
        ResponseFormat::JsonObject => FORMAT_OBJECT.to_string(),
        ResponseFormat::JsonSchema { schema_json, .. } => {
            format!("{FORMAT_SCHEMA}\n{schema_json}")
        }
    }
}

/// The instruction for any JSON object. Tool calls stay tool calls: an agent's turns before
/// its final answer call tools.
pub const FORMAT_OBJECT: &str = "Give your answer (not a tool call) as a single JSON object \
     and nothing else: no text before or after it, no code fences.";

/// The instruction for a schema; the schema follows it on the next line.
pub const FORMAT_SCHEMA: &str = "Give your answer (not a tool call) as a single JSON value and \
     nothing else: no text before or after it, no code fences. It must match this JSON Schema:";

/// `system` with `extra` after it (a blank line between), borrowed when there is nothing to add.
pub(crate) fn with_instruction<'a>(
    system: Option<Cow<'a, str>>,
    extra: Option<&str>,
) -> Option<Cow<'a, str>> {
    match (system.filter(|s| !s.is_empty()), extra) {
        (Some(s), Some(e)) => Some(Cow::Owned(format!("{s}\n\n{e}"))),
        (None, Some(e)) => Some(Cow::Owned(e.to_string())),
        (s, None) => s,
    }
}

/// JSON text the client sent, checked to be one JSON value and sent as it is. Invalid JSON
/// fails the request (not the provider), as a parse into a `Value` would.
pub(crate) fn raw_json<'a>(text: &'a str, what: &str) -> Result<&'a RawValue, ProviderError> {
    serde_json::from_str(text).map_err(|e| {
        ProviderError::new(
            ErrorKind::BadRequest,
            format!("invalid JSON in {what}: {e}"),
        )
    })
}

/// The client's own fields for one API (see `ChatOptions::native`), written flat into that
/// API's body (`#[serde(flatten)]`). Only the names in `allowed` go, so nothing a socket client
/// names can stand beside a field the adapter writes itself (a second `model`); text that is
/// not JSON is left out (the HTTP front ends send only what they parsed).
pub(crate) struct NativeFields<'a> {
    /// The request's fields, of every API.
    pub fields: &'a [NativeField],
    /// The API: `anthropic` or `openai`.
    pub api: &'static str,
    /// The names this API takes.
    pub allowed: &'static [&'static str],
}

impl NativeFields<'_> {
    fn each(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.fields
            .iter()
            .filter(|f| f.api == self.api && self.allowed.contains(&f.name.as_str()))
            .filter_map(|f| Some((f.name.as_str(), serde_json::from_str(&f.json).ok()?)))
    }
}

impl Serialize for NativeFields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        for (name, value) in self.each() {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// An empty JSON object, for arguments that are missing or unusable.
pub(crate) fn empty_object() -> &'static RawValue {
    // A literal the parser accepts: this cannot fail.
    serde_json::from_str("{}").expect("{} is JSON")
}

/// A past tool call's arguments as the object Anthropic and Gemini require. Models do emit cut-off or
/// non-object arguments (at a token limit, say), and clients replay them verbatim: refusing
/// them would fail every later turn of the conversation, so they become `{}` (logged).
pub(crate) fn tool_input(json: &str) -> &RawValue {
    match serde_json::from_str::<&RawValue>(json) {
        // Valid JSON that starts with a brace is an object, if it also parses whole: the raw
        // check is syntax only, and a lone `\ud800` or a `1e400` the API would refuse must
        // become `{}` as before. Arguments are small; the second parse costs little.
        Ok(v)
            if v.get().starts_with('{')
                && serde_json::from_str::<serde_json::Value>(json).is_ok() =>
        {
            v
        }
        Ok(_) | Err(_) => {
            tracing::debug!("a past tool call's arguments are not a JSON object: sent as {{}}");
            empty_object()
        }
    }
}

/// `data:MEDIA;base64,DATA`, written straight into the body: base64 images run to megabytes,
/// and formatting the URL into a `String` first would copy each once more.
pub(crate) struct DataUrl<'a> {
    /// MIME type.
    pub media_type: &'a str,
    /// Base64 bytes.
    pub data: &'a str,
}

impl Serialize for DataUrl<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for DataUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data:{};base64,{}", self.media_type, self.data)
    }
}

/// The body's bytes. Sized up front from the request, so a large conversation is not copied
/// through a dozen doubling reallocations.
pub(crate) fn to_bytes<T: Serialize>(
    body: &T,
    chat: &ChatRequest,
) -> Result<Vec<u8>, ProviderError> {
    let mut out = Vec::with_capacity(size_hint(chat));
    serde_json::to_writer(&mut out, body)
        .map_err(|e| ProviderError::new(ErrorKind::Internal, e.to_string()))?;
    Ok(out)
}

/// About the body's length: the router's estimate of the prompt counts its bytes (at 4 a
/// token), and the JSON around them adds a little.
fn size_hint(chat: &ChatRequest) -> usize {
    let text = crate::router::estimate_input_tokens(chat) as usize * 4;
    text + text / 8 + 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_arguments_a_provider_would_refuse_become_an_empty_object() {
        for bad in [
            r#"{"x":1e400}"#,
            r#"{"x":"\ud800"}"#,
            r#"{"x":"#,
            "[1]",
            "7",
            "",
        ] {
            assert_eq!(tool_input(bad).get(), "{}", "{bad}");
        }
        let good = r#"{"path": "a.rs", "n": [1, 2.5e3]}"#;
        assert_eq!(tool_input(good).get(), good);
    }
}
