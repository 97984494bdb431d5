use std::time::Duration;

use mythos_protocol::{ChatRequest, Message, Thinking, ToolSpec};

use super::*;
use crate::config::{Api, Secret};

fn cfg() -> ProviderConfig {
    ProviderConfig {
        api_key: Some(Secret::new("AIza-secret")),
        ..ProviderConfig::new(
            "gemini",
            Api::Gemini,
            "https://generativelanguage.googleapis.com/",
            "gemini-2.5-flash",
        )
    }
}

/// A user turn with the result of call `id`.
fn result_turn(id: &str, text: &str) -> Message {
    Message {
        role: Role::User,
        content: vec![ContentBlock::ToolResult {
            tool_use_id: id.into(),
            content: text.into(),
            is_error: false,
            images: Vec::new(),
        }],
    }
}

fn build_for(chat: &ChatRequest, prefill: Option<&str>) -> (Built, Value) {
    let req = UpstreamRequest {
        chat,
        model: "gemini-2.5-flash",
        max_tokens: 100,
        prefill,
        prefill_blocks: &[],
        format_in_words: false,
    };
    let b = build(&cfg(), &req).unwrap();
    let v = serde_json::from_slice(&b.body).unwrap();
    (b, v)
}

#[test]
fn url_and_key_header() {
    let chat = ChatRequest::user_text(1, "hi");
    let (_, v) = build_for(&chat, None);
    let endpoint = url(&cfg().base_url, "gemini-2.5-flash");
    assert_eq!(
        endpoint,
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert!(!endpoint.contains("key="), "the key never goes in the URL");
    let headers = headers(&cfg());
    assert_eq!(headers["x-goog-api-key"], "AIza-secret");
    assert!(headers["x-goog-api-key"].is_sensitive());
    assert_eq!(
        v["contents"],
        json!([{"role": "user", "parts": [{"text": "hi"}]}])
    );
    assert_eq!(v["generationConfig"], json!({"maxOutputTokens": 100}));
    assert_eq!(
        url("http://x", "models/gemini-pro"),
        "http://x/v1beta/models/gemini-pro:streamGenerateContent?alt=sse"
    );
}

#[test]
fn body_shape_with_tools_images_results_and_continuation() {
    let mut chat = ChatRequest::user_text(1, "look");
    chat.system = Some("be brief".into());
    chat.temperature = Some(0.2);
    chat.options.top_p = Some(0.9);
    chat.options.stop = vec!["END".into()];
    chat.options.thinking = Some(Thinking {
        budget_tokens: Some(2048),
        display: true,
    });
    chat.messages[0].content.push(ContentBlock::Image {
        source: ImageSource::Base64 {
            media_type: "image/png".into(),
            data: "iVBOR".into(),
        },
    });
    chat.messages[0].content.push(ContentBlock::Image {
        source: ImageSource::Url {
            url: "https://x/y.jpg".into(),
        },
    });
    chat.messages.push(Message {
        role: Role::Assistant,
        content: vec![
            ContentBlock::Thinking {
                text: "hmm".into(),
                signature: None,
            },
            ContentBlock::Text {
                text: "Reading.".into(),
            },
            ContentBlock::ToolUse {
                id: "toolu_1".into(),
                name: "fs/read".into(),
                input_json: r#"{"path":"a"}"#.into(),
            },
        ],
    });
    chat.messages.push(result_turn("toolu_1", "file text"));
    chat.tools.push(ToolSpec {
        name: "fs/read".into(),
        description: "Read a file".into(),
        input_schema_json: r#"{"$schema":"http://json-schema.org/draft-07/schema#","type":"object","properties":{"path":{"type":"string"}},"required":["path"],"additionalProperties":false}"#.into(),
    });
    chat.tools.push(ToolSpec {
        name: "now".into(),
        description: "Time".into(),
        input_schema_json: r#"{"type":"object","properties":{}}"#.into(),
    });
    chat.options.tool_choice = Some(ToolChoice::Tool {
        name: "fs/read".into(),
    });
    let (b, v) = build_for(&chat, Some("Partial "));
    let wire = v["tools"][0]["functionDeclarations"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(wire, "fs/read", "fitted to the API's name rules");
    assert_eq!(b.tool_names.client(wire.clone()), "fs/read");
    assert_eq!(
        v["systemInstruction"],
        json!({"parts": [{"text": "be brief"}]})
    );
    assert_eq!(
        v["contents"],
        json!([
            {"role": "user", "parts": [
                {"text": "look"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}},
                {"fileData": {"fileUri": "https://x/y.jpg"}},
            ]},
            {"role": "model", "parts": [
                {"text": "Reading."},
                {"functionCall": {"name": wire, "args": {"path": "a"}}},
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": wire, "response": {"content": "file text"}}},
            ]},
            {"role": "model", "parts": [{"text": "Partial "}]},
            {"role": "user", "parts": [{"text": CONTINUE_INSTRUCTION}]},
        ])
    );
    assert_eq!(
        v["tools"][0]["functionDeclarations"][0]["parameters"],
        json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]})
    );
    assert!(
        v["tools"][0]["functionDeclarations"][1]
            .get("parameters")
            .is_none(),
        "an empty object schema is refused: no parameters instead"
    );
    // A past call cut off at a token limit, replayed verbatim by the client: `{}`, not a 400
    // on every later turn.
    if let ContentBlock::ToolUse { input_json, .. } = &mut chat.messages[1].content[2] {
        *input_json = r#"{"path":"a"#.into();
    }
    let (_, v) = build_for(&chat, None);
    assert_eq!(
        v["contents"][1]["parts"][1]["functionCall"]["args"],
        json!({})
    );
    assert_eq!(
        v["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [wire]}})
    );
    assert_eq!(
        v["generationConfig"],
        json!({"maxOutputTokens": 100, "temperature": 0.2f32, "topP": 0.9f32,
               "stopSequences": ["END"],
               "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": true}})
    );
}

#[test]
fn tool_choice_modes_and_error_results() {
    let mut chat = ChatRequest::user_text(1, "x");
    chat.tools.push(ToolSpec {
        name: "t".into(),
        description: String::new(),
        input_schema_json: r#"{"type":"object","properties":{"a":{"type":"integer"}}}"#.into(),
    });
    for (choice, mode) in [
        (ToolChoice::Auto, "AUTO"),
        (ToolChoice::Any, "ANY"),
        (ToolChoice::None, "NONE"),
    ] {
        chat.options.tool_choice = Some(choice);
        let (_, v) = build_for(&chat, None);
        assert_eq!(v["toolConfig"]["functionCallingConfig"]["mode"], mode);
    }
    // A result whose call is gone from the history keeps the id as its name.
    chat.messages.push(Message {
        role: Role::User,
        content: vec![ContentBlock::ToolResult {
            tool_use_id: "gone".into(),
            content: "boom".into(),
            is_error: true,
            images: vec![ImageSource::Base64 {
                media_type: "image/png".into(),
                data: "AAAA".into(),
            }],
        }],
    });
    chat.options.thinking = Some(Thinking {
        budget_tokens: None,
        display: false,
    });
    let (_, v) = build_for(&chat, None);
    assert_eq!(
        v["contents"][1]["parts"],
        json!([
            {"functionResponse": {"name": "gone", "response": {"error": "boom"}}},
            {"inlineData": {"mimeType": "image/png", "data": "AAAA"}},
        ])
    );
    assert_eq!(
        v["generationConfig"]["thinkingConfig"]["thinkingBudget"],
        -1
    );
    chat.options.thinking = Some(Thinking {
        budget_tokens: Some(100_000),
        display: true,
    });
    let (_, v) = build_for(&chat, None);
    assert_eq!(
        v["generationConfig"]["thinkingConfig"]["thinkingBudget"],
        24_576
    );
    assert!(supports_thinking("gemini-2.5-pro") && supports_thinking("gemini-3-pro-preview"));
    assert!(!supports_thinking("gemini-2.0-flash") && !supports_thinking("models/gemini-1.5-pro"));
}

/// Gemini 3 refuses past function calls without a thought signature; the documented value
/// for histories it did not write goes beside each one, for every model that may be Gemini 3
/// (aliases without a version number included). Numbered older models get none.
#[test]
fn gemini_3_gets_a_thought_signature_on_past_calls() {
    let mut chat = ChatRequest::user_text(1, "read a.rs");
    chat.messages.push(Message {
        role: Role::Assistant,
        content: vec![ContentBlock::ToolUse {
            id: "call_1".into(),
            name: "read".into(),
            input_json: r#"{"path":"a.rs"}"#.into(),
        }],
    });
    chat.messages.push(result_turn("call_1", "fn main() {}"));
    for (model, signed) in [
        ("gemini-3-pro-preview", true),
        ("models/gemini-3.1-flash", true),
        ("gemini-10-ultra", true),
        ("gemini-flash-latest", true),
        ("gemini-pro-latest", true),
        ("gemini-exp-1206", true),
        ("gemini-2.5-flash", false),
        ("gemini-pro", false),
        ("gemini-2.0-flash", false),
        ("gemini-1.5-pro", false),
        ("gemma-3-27b-it", false),
    ] {
        let req = UpstreamRequest {
            chat: &chat,
            model,
            max_tokens: 100,
            prefill: None,
            prefill_blocks: &[],
            format_in_words: false,
        };
        let v: Value = serde_json::from_slice(&build(&cfg(), &req).unwrap().body).unwrap();
        let part = &v["contents"][1]["parts"][0];
        assert_eq!(
            part["functionCall"]["args"],
            json!({"path": "a.rs"}),
            "{model}"
        );
        if signed {
            assert_eq!(
                part["thoughtSignature"], "skip_thought_signature_validator",
                "{model}"
            );
        } else {
            assert!(part.get("thoughtSignature").is_none(), "{model}: {part}");
        }
    }
}

#[test]
fn schema_cleaning() {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": false,
        "$defs": {"Pt": {"type": "object", "properties": {"x": {"type": "number", "exclusiveMinimum": 0}},
                          "additionalProperties": false}},
        "properties": {
            "point": {"$ref": "#/$defs/Pt", "description": "where"},
            "remote": {"$ref": "https://example.com/s.json"},
            "name": {"type": ["string", "null"], "default": "x", "propertyNames": {"pattern": "a"}},
            "kind": {"const": "fixed"},
            "level": {"type": "integer", "enum": [1, 2], "exclusiveMaximum": 5},
            "either": {"oneOf": [{"type": "string"}, {"type": "integer", "const": 3}]},
            "list": {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
        "required": ["name", "missing"],
    });
    let clean = clean_schema(&schema);
    assert_eq!(
        clean,
        json!({
            "type": "object",
            "properties": {
                "point": {"type": "object", "properties": {"x": {"type": "number"}}, "description": "where"},
                "name": {"type": "string", "nullable": true, "default": "x"},
                "kind": {"enum": ["fixed"]},
                "level": {"type": "integer"},
                "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            },
            "required": ["name"],
        })
    );
    // Objects without properties (a bare one for a `$ref` that cannot be resolved, a map of
    // `additionalProperties`, an array of maps, Pydantic's `Optional[dict]`) are refused by Gemini at any depth: they are
    // left out, and a tool left with no parameters has none.
    let maps = json!({"type": "object", "properties": {
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "headers": {"type": "array", "items": {"type": "object", "properties": {}}},
        "nested": {"type": "object", "properties": {"cmd": {"type": "string"}, "opts": {"type": "object"}}},
        "cmd": {"type": "string"},
        "meta": {"anyOf": [{"type": "object", "additionalProperties": true}, {"type": "null"}]},
        "either": {"anyOf": [{"type": "object"}, {"type": "string"}]}},
        "required": ["env", "cmd"]});
    assert_eq!(
        clean_schema(&maps),
        json!({"type": "object", "properties": {
            "nested": {"type": "object", "properties": {"cmd": {"type": "string"}}},
            "cmd": {"type": "string"},
            "either": {"anyOf": [{"type": "string"}]}},
            "required": ["cmd"]})
    );
    let only_maps = json!({"type": "object", "properties": {"env": {"type": "object"}}});
    let cache = SchemaCache::default();
    assert!(matches!(
        cache.get(&only_maps.to_string()).unwrap(),
        Some(Schema::Json(_))
    ));
    let no_parameters = json!({"type": "object", "properties": {}});
    assert!(cache.get(&no_parameters.to_string()).unwrap().is_none());
    // A recursive definition stops at a bare object instead of recursing forever.
    let tree = json!({"$defs": {"N": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/N"}}}}},
                      "$ref": "#/$defs/N"});
    let s = clean_schema(&tree).to_string();
    assert!(s.len() < 2000 && !s.contains("$ref"), "{s}");
    // Sent whole, its top is the object the `$ref` names (a bare `$ref` is refused there),
    // its definitions kept for the references inside.
    let Some(Schema::Json(sent)) = cache.get(&tree.to_string()).unwrap() else {
        panic!("a recursive tree goes as JSON Schema")
    };
    let sent: Value = serde_json::from_str(sent.get()).unwrap();
    assert_eq!(sent["type"], "object", "{sent}");
    assert_eq!(sent["properties"]["kids"]["items"]["$ref"], "#/$defs/N");
    assert!(
        sent.get("$ref").is_none() && sent["$defs"]["N"].is_object(),
        "{sent}"
    );
    // One that refers to itself eight times would expand to 8^8 (16 million) copies within
    // the depth limit: the node budget stops it at a size a request can carry, at once.
    let props: serde_json::Map<String, Value> = (0..8)
        .map(|i| (format!("k{i}"), json!({"$ref": "#/$defs/N"})))
        .collect();
    let bomb =
        json!({"$defs": {"N": {"type": "object", "properties": props}}, "$ref": "#/$defs/N"});
    let t0 = std::time::Instant::now();
    let s = clean_schema(&bomb).to_string();
    assert!(s.len() < 2_000_000, "{} bytes", s.len());
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t0.elapsed()
    );
    // `properties` and `required` on a type other than object are refused by Gemini.
    let odd = json!({"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}, "properties": {}, "required": ["x"]},
        "name": {"type": "string", "properties": {"a": {"type": "string"}}}}});
    assert_eq!(
        clean_schema(&odd),
        json!({"type": "object", "properties": {
            "tags": {"type": "array", "items": {"type": "string"}},
            "name": {"type": "string"}}})
    );
    let rejected = [
        "$schema",
        "additionalProperties",
        "propertyNames",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "const",
        "$ref",
        "$defs",
        "oneOf",
    ];
    let text = clean.to_string();
    for k in rejected {
        assert!(!text.contains(&format!("\"{k}\"")), "{k} left in {text}");
    }
}

#[test]
fn google_error_mapping() {
    let kind = |status: u16, body: &str| {
        GoogleError::parse(body.as_bytes())
            .expect("a Google error")
            .kind(Some(status))
    };
    let e = |code: u16, status: &str, msg: &str| {
        json!({"error": {"code": code, "message": msg, "status": status}}).to_string()
    };
    let table = [
        (429, e(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing details."), ErrorKind::RateLimited),
        (503, e(503, "UNAVAILABLE", "The model is overloaded. Please try again later."), ErrorKind::Overloaded),
        (500, e(500, "INTERNAL", "An internal error has occurred."), ErrorKind::ServerError),
        (400, e(400, "INVALID_ARGUMENT", "Invalid JSON payload received. Unknown name \"additionalProperties\""), ErrorKind::BadRequest),
        (400, e(400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."), ErrorKind::ContextLength),
        (400, e(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."), ErrorKind::Auth),
        (403, e(403, "PERMISSION_DENIED", "Permission denied"), ErrorKind::Auth),
        (401, e(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."), ErrorKind::Auth),
        (404, e(404, "NOT_FOUND", "models/gemini-9 is not found"), ErrorKind::NotFound),
        (400, e(400, "FAILED_PRECONDITION", "Gemini API free tier is not available in your country. Please enable billing on your project in Google AI Studio."), ErrorKind::Billing),
        (400, e(400, "FAILED_PRECONDITION", "User location is not supported for the API use."), ErrorKind::BadRequest),
        (504, e(504, "DEADLINE_EXCEEDED", "Deadline expired"), ErrorKind::Timeout),
        (502, r#"[{"error":{"code":502,"message":"bad gateway"}}]"#.to_string(), ErrorKind::ServerError),
    ];
    for (status, body, want) in table {
        assert_eq!(kind(status, &body), want, "{body}");
    }
    assert!(GoogleError::parse(b"<html>oops</html>").is_none());
    let limited = GoogleError::parse(
        br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure"},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"7s"}]}}"#,
    )
    .unwrap();
    assert_eq!(limited.retry_delay(), Some(Duration::from_secs(7)));
    assert_eq!(parse_duration("1.500s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_duration("-1s"), None);
    assert_eq!(parse_duration("7"), None);
}

#[test]
fn cached_schemas_give_the_same_body() {
    let mut chat = crate::provider::setup_bench::agent_conversation();
    chat.tools[1].input_schema_json = r#"{"type":"object","properties":{}}"#.into();
    fn req(chat: &ChatRequest) -> UpstreamRequest<'_> {
        UpstreamRequest {
            chat,
            model: "gemini-2.5-flash",
            max_tokens: 100,
            prefill: None,
            prefill_blocks: &[],
            format_in_words: false,
        }
    }
    let fresh = build(&cfg(), &req(&chat)).unwrap().body;
    let cache = SchemaCache::default();
    assert_eq!(build_cached(&req(&chat), &cache).unwrap().body, fresh);
    // From the cache this time, to the byte.
    assert_eq!(build_cached(&req(&chat), &cache).unwrap().body, fresh);
    let v: Value = serde_json::from_slice(&fresh).unwrap();
    let decls = &v["tools"][0]["functionDeclarations"];
    assert!(decls[1].get("parameters").is_none());
    assert!(decls[0]["parameters"]["properties"]["path"].is_object());
    // A changed schema is cleaned afresh; an invalid one still fails the request.
    chat.tools[0].input_schema_json =
        r#"{"type":"object","properties":{"q":{"type":"string"}}}"#.into();
    let v: Value =
        serde_json::from_slice(&build_cached(&req(&chat), &cache).unwrap().body).unwrap();
    assert!(v["tools"][0]["functionDeclarations"][0]["parameters"]["properties"]["q"].is_object());
    chat.tools[0].input_schema_json = "{nope".into();
    assert_eq!(
        build_cached(&req(&chat), &cache).unwrap_err().kind,
        ErrorKind::BadRequest
    );
}

/// A tool whose schema the OpenAPI subset cannot hold (a required free-form map, a recursive
/// tree) goes to Gemini whole, as JSON Schema in `parametersJsonSchema`: cleaned, the map was
/// left out, and the model could never supply the `env` the client requires. A schema the
/// subset holds still goes cleaned in `parameters`, as before; so does structured output.
#[test]
fn schemas_the_subset_cannot_hold_go_as_json_schema() {
    let mut chat = ChatRequest::user_text(1, "run it");
    let shell = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object",
        "properties":{"cmd":{"type":"string"},
                      "env":{"type":"object","additionalProperties":{"type":"string"}}},
        "required":["cmd","env"],"additionalProperties":false}"#;
    let tree = r##"{"type":"object","$defs":{"N":{"type":"object","properties":{"name":{"type":"string"},
        "kids":{"type":"array","items":{"$ref":"#/$defs/N"}}}}},
        "properties":{"root":{"$ref":"#/$defs/N"}},"required":["root"]}"##;
    for (name, schema) in [("shell", shell), ("outline", tree)] {
        chat.tools.push(ToolSpec {
            name: name.into(),
            description: "d".into(),
            input_schema_json: schema.into(),
        });
    }
    chat.tools.push(ToolSpec {
        name: "read".into(),
        description: "d".into(),
        input_schema_json: r#"{"type":"object","properties":{"path":{"type":"string"}}}"#.into(),
    });
    let (_, v) = build_for(&chat, None);
    let decls = &v["tools"][0]["functionDeclarations"];
    let mut expected: Value = serde_json::from_str(shell).unwrap();
    expected.as_object_mut().unwrap().remove("$schema");
    assert_eq!(decls[0]["parametersJsonSchema"], expected);
    assert!(decls[0].get("parameters").is_none(), "{}", decls[0]);
    assert_eq!(
        decls[1]["parametersJsonSchema"],
        serde_json::from_str::<Value>(tree).unwrap()
    );
    assert!(decls[1].get("parameters").is_none(), "{}", decls[1]);
    assert_eq!(
        decls[2]["parameters"]["properties"]["path"]["type"],
        "string"
    );
    assert!(
        decls[2].get("parametersJsonSchema").is_none(),
        "{}",
        decls[2]
    );

    // (With tools, older models take the format in words: none here.)
    chat.tools.clear();
    chat.options.response_format = Some(ResponseFormat::JsonSchema {
        name: "config".into(),
        description: None,
        schema_json: shell.into(),
        strict: None,
    });
    let (_, v) = build_for(&chat, None);
    let gen = &v["generationConfig"];
    assert_eq!(gen["responseJsonSchema"], expected);
    assert!(gen.get("responseSchema").is_none(), "{gen}");
    assert_eq!(gen["responseMimeType"], "application/json");
}

/// `allOf`, which the subset does not have: Pydantic's wrapper of one `$ref` (a field with a
/// description beside its type) is that type, cleaned; several parts, or a map of extra keys
/// beside named properties, go whole as JSON Schema. Both were dropped, silently: the field
/// became untyped (any value, the enum lost), the extra keys impossible.
#[test]
fn all_of_and_extra_keys_are_kept_or_sent_whole() {
    let mut chat = ChatRequest::user_text(1, "go");
    let wrapped = r##"{"type":"object","definitions":{"Mode":{"type":"string","enum":["fast","safe"]}},
        "properties":{"mode":{"allOf":[{"$ref":"#/definitions/Mode"}],"description":"how to run"}},
        "required":["mode"]}"##;
    let parts = r#"{"type":"object","properties":{"job":{"allOf":[
        {"type":"object","properties":{"name":{"type":"string"}},"required":["name"]},
        {"type":"object","properties":{"tries":{"type":"integer"}},"required":["tries"]}]}},
        "required":["job"]}"#;
    let extra = r#"{"type":"object","properties":{"labels":{"type":"object",
        "properties":{"team":{"type":"string"}},"additionalProperties":{"type":"string"}}},
        "required":["labels"]}"#;
    let closed = r#"{"type":"object","properties":{"path":{"type":"string"}},
        "additionalProperties":false}"#;
    // A part with properties beside the node's own: both count (found by a review: the
    // part's went, silently).
    let beside = r#"{"type":"object","properties":{"a":{"type":"string"}},
        "allOf":[{"type":"object","properties":{"b":{"type":"integer"}},"required":["b"]}]}"#;
    for (name, schema) in [
        ("wrapped", wrapped),
        ("parts", parts),
        ("extra", extra),
        ("closed", closed),
        ("beside", beside),
    ] {
        chat.tools.push(ToolSpec {
            name: name.into(),
            description: "d".into(),
            input_schema_json: schema.into(),
        });
    }
    let (_, v) = build_for(&chat, None);
    let decls = &v["tools"][0]["functionDeclarations"];
    assert_eq!(
        decls[0]["parameters"]["properties"]["mode"],
        json!({"type": "string", "enum": ["fast", "safe"], "description": "how to run"}),
        "{}",
        decls[0]
    );
    assert!(
        decls[0].get("parametersJsonSchema").is_none(),
        "{}",
        decls[0]
    );
    for (i, schema) in [(1, parts), (2, extra), (4, beside)] {
        assert_eq!(
            decls[i]["parametersJsonSchema"],
            serde_json::from_str::<Value>(schema).unwrap()
        );
        assert!(decls[i].get("parameters").is_none(), "{}", decls[i]);
    }
    // A closed object says nothing the model needs: cleaned as before.
    assert_eq!(
        decls[3]["parameters"]["properties"]["path"]["type"],
        "string"
    );
    assert!(
        decls[3].get("parametersJsonSchema").is_none(),
        "{}",
        decls[3]
    );
}

/// Structured output: JSON mode with the schema cleaned to the API's subset; a continuation
/// gets the schema in words instead.
#[test]
fn structured_output() {
    let mut chat = ChatRequest::user_text(1, "extract");
    chat.options.response_format = Some(ResponseFormat::JsonSchema {
        name: "event".into(),
        description: None,
        schema_json: r#"{"type":"object","additionalProperties":false,
            "properties":{"day":{"type":"string","const":"Fri"}},"required":["day"]}"#
            .into(),
        strict: Some(true),
    });
    let (_, v) = build_for(&chat, None);
    let gen = &v["generationConfig"];
    assert_eq!(gen["responseMimeType"], "application/json");
    assert_eq!(gen["responseSchema"]["properties"]["day"]["type"], "string");
    assert_eq!(gen["responseSchema"]["required"], json!(["day"]));
    assert!(gen["responseSchema"].get("additionalProperties").is_none());
    assert!(v.get("systemInstruction").is_none());

    let (_, v) = build_for(&chat, Some("{\"day\":"));
    assert!(v["generationConfig"].get("responseMimeType").is_none());
    assert!(v["generationConfig"].get("responseSchema").is_none());
    let system = v["systemInstruction"]["parts"][0]["text"].as_str().unwrap();
    assert!(system.contains("JSON Schema"), "{system}");

    // Gemini 2.x refuses JSON mode beside function calling: with tools, in words.
    let mut tooled = chat.clone();
    tooled.tools = vec![ToolSpec {
        name: "read".into(),
        description: String::new(),
        input_schema_json: r#"{"type":"object","properties":{"p":{"type":"string"}}}"#.into(),
    }];
    let (_, v) = build_for(&tooled, None);
    assert!(
        v["generationConfig"].get("responseMimeType").is_none(),
        "{v}"
    );
    assert!(v["systemInstruction"]["parts"][0]["text"]
        .as_str()
        .unwrap()
        .contains("not a tool call"));

    chat.options.response_format = Some(ResponseFormat::JsonObject);
    let (_, v) = build_for(&chat, None);
    assert_eq!(
        v["generationConfig"]["responseMimeType"],
        "application/json"
    );
    assert!(v["generationConfig"].get("responseSchema").is_none());
}

/// A Chat client's `seed` and a Messages client's `top_k` reach Gemini's generation settings
/// (they were dropped); the penalties do not, since some Gemini models refuse them.
#[test]
fn seed_and_top_k_reach_the_generation_config() {
    let mut chat = ChatRequest::user_text(1, "hi");
    chat.options.native = vec![
        mythos_protocol::NativeField::new("openai", "seed", "42"),
        mythos_protocol::NativeField::new("openai", "presence_penalty", "0.5"),
        mythos_protocol::NativeField::new("anthropic", "top_k", "7"),
    ];
    let (_, v) = build_for(&chat, None);
    let g = &v["generationConfig"];
    assert_eq!(g["seed"], 42, "{v}");
    assert_eq!(g["topK"], 7, "{v}");
    assert!(g.get("presencePenalty").is_none(), "{v}");
    let (_, v) = build_for(&ChatRequest::user_text(1, "hi"), None);
    assert!(v["generationConfig"].get("seed").is_none(), "{v}");
}
