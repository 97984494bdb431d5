//! Pieces both request translators use.

use mythos_protocol::{CachePoint, ContentBlock, ImageSource, Message, ResponseFormat, PDF};
use serde_json::{Map, Value};

use super::errors::ApiError;

/// The body as an object, and its `model`: every API requires both.
pub fn object_and_model(body: &Value) -> Result<(&Map<String, Value>, String), ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("model: field required"))?
        .to_string();
    Ok((obj, model))
}

/// `data:image/png;base64,AAAA` as an inline image; `None` for any other URL.
pub fn data_url_image(url: &str) -> Option<ImageSource> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    Some(ImageSource::Base64 {
        media_type: media_type.to_string(),
        data: data.to_string(),
    })
}

/// A file the client attached inline (`file_data`: a data URL, or bare base64 as some
/// clients send it) or at a URL, as the Chat Completions `file` part and the Responses
/// `input_file` part carry it. A PDF is a document, an image an image, a file of text (any
/// media type, if its bytes are UTF-8) text under its name; anything else, and a file by id
/// (it lives on OpenAI's servers), cannot be sent elsewhere: `None`, never a block a provider
/// would refuse.
pub fn attached_file(
    file_data: Option<&str>,
    file_url: Option<&str>,
    filename: Option<&str>,
) -> Option<ContentBlock> {
    let title = filename.filter(|f| !f.is_empty()).map(String::from);
    let (media_type, data) = match (file_data, file_url) {
        (Some(d), _) => match d.strip_prefix("data:").and_then(|r| r.split_once(',')) {
            Some((meta, data)) => match meta.strip_suffix(";base64") {
                Some(media) => (Some(media.split(';').next().unwrap_or(media)), data),
                // Not base64: the data is the text itself (percent-encoding aside).
                None => {
                    return Some(titled(title, data.to_string()));
                }
            },
            None => (None, d),
        },
        (None, Some(url)) => {
            return Some(ContentBlock::Document {
                source: ImageSource::Url { url: url.into() },
                title,
            })
        }
        (None, None) => {
            tracing::debug!("dropped a file without its data (a file_id?)");
            return None;
        }
    };
    // Base64 as clients send it: wrapped lines, padding or not.
    let data: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = decode_base64(&data)?;
    let media = media_type.map(str::to_ascii_lowercase);
    let source = |media_type: &str| ImageSource::Base64 {
        media_type: media_type.to_string(),
        data: data.clone(),
    };
    match media.as_deref() {
        Some(PDF) => Some(ContentBlock::Document {
            source: source(PDF),
            title,
        }),
        None if bytes.starts_with(b"%PDF") => Some(ContentBlock::Document {
            source: source(PDF),
            title,
        }),
        Some(m) if m.starts_with("image/") => Some(ContentBlock::Image { source: source(m) }),
        _ => match String::from_utf8(bytes) {
            Ok(text) => Some(titled(title, text)),
            Err(_) => {
                tracing::debug!(media_type = ?media, "dropped a file no provider reads");
                None
            }
        },
    }
}

/// Add a file a tool returned to its result: a PDF (or an image) rides with the result's
/// images, told apart by its media type; a document at a URL is named; text joins the text.
pub fn add_to_tool_result(
    file: ContentBlock,
    texts: &mut Vec<String>,
    images: &mut Vec<ImageSource>,
) {
    match file {
        ContentBlock::Document {
            source: ImageSource::Url { url },
            ..
        } if !url.starts_with("data:") => texts.push(format!("[The document at {url}]")),
        ContentBlock::Document { source, .. } | ContentBlock::Image { source } => {
            images.push(source)
        }
        ContentBlock::Text { text } => texts.push(text),
        _ => {}
    }
}

/// `text` under its `title`, as a text block.
fn titled(title: Option<String>, text: String) -> ContentBlock {
    ContentBlock::Text {
        text: match title {
            Some(t) => format!("{t}\n\n{text}"),
            None => text,
        },
    }
}

/// Base64, padding optional; `None` if it is not.
fn decode_base64(data: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(data.trim_end_matches('='))
        .ok()
}

/// The text parts of a content list, joined by blank lines. An assistant's `refusal` part
/// counts as text: the model said it, and the next provider should read it.
pub fn text_of(parts: &[Value]) -> String {
    let texts: Vec<&str> = parts
        .iter()
        .filter_map(|p| match p.get("type").and_then(Value::as_str) {
            Some("text" | "input_text" | "output_text") => p.get("text"),
            Some("refusal") => p.get("refusal"),
            _ => None,
        })
        .filter_map(Value::as_str)
        .collect();
    texts.join("\n\n")
}

/// An array field that must be there, its error as the APIs word it: missing, or not an array
/// (`"messages": "hi"` said "field required" of a field that was there).
pub fn array_field<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
) -> Result<&'a Vec<Value>, ApiError> {
    match obj.get(key) {
        Some(Value::Array(a)) => Ok(a),
        None | Some(Value::Null) => Err(ApiError::bad_request(format!("{key}: field required"))),
        Some(_) => Err(ApiError::bad_request(format!(
            "{key}: expected an array of messages"
        ))),
    }
}

/// An output limit (`max_tokens` and kin): absent, `null` or negative (LM Studio's documented
/// `-1`) is none; a whole number (also written `4096.0`) of at least 1 is the limit; `0` or
/// text is the client's error, as the APIs answer (both were taken as "no limit"; found by
/// a helper).
pub fn token_limit(v: &Value, key: &str) -> Result<Option<u32>, ApiError> {
    let Some(n) = v.get(key).filter(|n| !n.is_null()) else {
        return Ok(None);
    };
    match n.as_f64() {
        Some(f) if f < 0.0 => Ok(None),
        Some(f) if f >= 1.0 && f.fract() == 0.0 => Ok(Some(f.min(u32::MAX as f64) as u32)),
        _ => Err(ApiError::bad_request(format!(
            "{key}: expected a whole number of at least 1, got {n}"
        ))),
    }
}

/// A non-negative integer field that fits in u32 (larger values are clamped, not refused: the
/// router clamps output limits to each model anyway).
pub fn u32_field(v: &Value, key: &str) -> Option<u32> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|n| n.min(u32::MAX as u64) as u32)
}

/// A structured-output request, in any of the three APIs' shapes: Chat Completions'
/// `response_format` (`{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`),
/// the Responses API's `text.format` (the same fields, flat) or Anthropic's
/// `output_config.format` (`{"type": "json_schema", "schema"}`). `{"type": "text"}` and `null`
/// ask for nothing; an unknown type or a schema that is not an object is the client's error, as
/// the providers would say.
pub fn response_format(v: Option<&Value>, at: &str) -> Result<Option<ResponseFormat>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(ResponseFormat::JsonObject)),
        Some("json_schema") => {
            let spec = v.get("json_schema").unwrap_or(v);
            let schema = spec
                .get("schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| {
                    ApiError::bad_request(format!("{at}.schema: a JSON Schema object is required"))
                })?;
            let name = spec
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or("response");
            Ok(Some(ResponseFormat::JsonSchema {
                name: name.chars().take(64).collect(),
                description: spec
                    .get("description")
                    .and_then(Value::as_str)
                    .filter(|d| !d.is_empty())
                    .map(String::from),
                schema_json: schema.to_string(),
                strict: spec.get("strict").and_then(Value::as_bool),
            }))
        }
        other => Err(ApiError::bad_request(format!(
            "{at}.type: expected \"text\", \"json_object\" or \"json_schema\", got {}",
            other.map_or_else(|| "nothing".to_string(), |t| format!("{t:?}"))
        ))),
    }
}

/// Merge consecutive messages of the same role (Anthropic requires turns to alternate; OpenAI's
/// tool results arrive as one message each), moving cache points along with their blocks.
/// Messages left empty are dropped.
pub fn merge_same_role(messages: Vec<Message>, points: &mut Vec<CachePoint>) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    // Where each input message's blocks went: (output index, block offset); `None` when it
    // was empty and dropped.
    let mut moved: Vec<Option<(u32, u32)>> = Vec::with_capacity(messages.len());
    for m in messages {
        if m.content.is_empty() {
            // Every API refuses an empty turn; one whose blocks were all dropped is nothing.
            moved.push(None);
            continue;
        }
        let n = out.len();
        match out.last_mut() {
            Some(last) if last.role == m.role => {
                moved.push(Some(((n - 1) as u32, last.content.len() as u32)));
                last.content.extend(m.content);
            }
            _ => {
                moved.push(Some((n as u32, 0)));
                out.push(m);
            }
        }
    }
    points.retain_mut(|p| match moved.get(p.message as usize).copied().flatten() {
        Some((to, offset)) => {
            p.message = to;
            p.block += offset;
            true
        }
        None => false,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mythos_protocol::{CacheTtl, ContentBlock, Role};

    #[test]
    fn data_urls() {
        assert_eq!(
            data_url_image("data:image/png;base64,QUJD"),
            Some(ImageSource::Base64 {
                media_type: "image/png".into(),
                data: "QUJD".into()
            })
        );
        assert_eq!(data_url_image("https://x/y.png"), None);
        assert_eq!(data_url_image("data:text/plain,hi"), None);
    }

    #[test]
    fn merging_keeps_cache_points_on_their_blocks() {
        let msgs = vec![
            Message::text(Role::User, "a"),
            Message::text(Role::User, "b"),
            Message::text(Role::Assistant, "c"),
        ];
        let mut points = vec![CachePoint {
            message: 1,
            block: 0,
            ttl: CacheTtl::Default,
        }];
        let out = merge_same_role(msgs, &mut points);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].content.len(), 2);
        assert_eq!((points[0].message, points[0].block), (0, 1));
        assert_eq!(out[0].content[1], ContentBlock::Text { text: "b".into() });
        // An empty turn (its blocks were all dropped) goes, with any point on it.
        let msgs = vec![
            Message::text(Role::User, "a"),
            Message {
                role: Role::Assistant,
                content: Vec::new(),
            },
            Message::text(Role::User, "b"),
        ];
        let mut points = vec![CachePoint {
            message: 2,
            block: 0,
            ttl: CacheTtl::Default,
        }];
        let out = merge_same_role(msgs, &mut points);
        assert_eq!(out.len(), 1, "the two user turns meet and merge");
        assert_eq!((points[0].message, points[0].block), (0, 1));
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn structured_output_in_each_apis_shape() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let want = Some(ResponseFormat::JsonSchema {
            name: "thing".into(),
            description: Some("a thing".into()),
            schema_json: schema.to_string(),
            strict: Some(true),
        });
        let chat = json!({"type": "json_schema",
                          "json_schema": {"name": "thing", "schema": schema, "strict": true,
                                          "description": "a thing"}});
        assert_eq!(
            response_format(Some(&chat), "response_format").unwrap(),
            want
        );
        let responses = json!({"type": "json_schema", "name": "thing", "schema": schema,
                               "strict": true, "description": "a thing"});
        assert_eq!(
            response_format(Some(&responses), "text.format").unwrap(),
            want
        );
        let anthropic = json!({"type": "json_schema", "schema": schema});
        assert_eq!(
            response_format(Some(&anthropic), "output_config.format").unwrap(),
            Some(ResponseFormat::JsonSchema {
                name: "response".into(),
                description: None,
                schema_json: schema.to_string(),
                strict: None,
            })
        );
        let f = |v: Value| response_format(Some(&v), "response_format");
        assert_eq!(
            f(json!({"type": "json_object"})).unwrap(),
            Some(ResponseFormat::JsonObject)
        );
        assert_eq!(f(json!({"type": "text"})).unwrap(), None);
        assert_eq!(f(Value::Null).unwrap(), None);
        assert_eq!(response_format(None, "x").unwrap(), None);
        let e = f(json!({"type": "json_schema", "json_schema": {"name": "x"}})).unwrap_err();
        assert!(
            e.message.contains("response_format.schema"),
            "{}",
            e.message
        );
        let e = f(json!({"type": "xml"})).unwrap_err();
        assert!(e.message.contains("\"xml\""), "{}", e.message);
    }
}
