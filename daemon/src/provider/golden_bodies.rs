//! Golden request bodies: rich requests in every wire format, compared with the bodies the
//! `serde_json::json!`-tree builders made before the bodies became typed structs
//! (`daemon/testdata/bodies/`). Compared as parsed JSON: the same fields, values and
//! omissions. Never edit a golden by hand; a deliberate change of the wire body is re-recorded
//! with `MYTHOS_BLESS=1` and reviewed as a diff.

use std::path::PathBuf;

use mythos_protocol::{
    CachePoint, CacheTtl, ChatRequest, ContentBlock, ImageSource, Message, Role, SystemBlock,
    Thinking, ToolChoice, ToolSpec,
};
use serde_json::Value;

use super::setup_bench::{agent_conversation, provider};
use super::{anthropic, gemini, openai, UpstreamRequest};
use crate::config::{Api, ProviderConfig};

/// Everything the adapters treat specially, in one conversation.
fn kitchen_sink() -> ChatRequest {
    let png = ImageSource::Base64 {
        media_type: "image/png".into(),
        data: "iVBORw0KGgo=".into(),
    };
    let mut chat = ChatRequest::user_text(7, "look at these \"quoted\"\n and \u{1F600}");
    chat.messages[0].content.extend([
        ContentBlock::Image {
            source: png.clone(),
        },
        ContentBlock::Image {
            source: ImageSource::Url {
                url: "https://example.com/cat.jpg".into(),
            },
        },
        ContentBlock::Image {
            source: ImageSource::Url {
                url: "data:image/gif;charset=x;base64,R0lGOD".into(),
            },
        },
        ContentBlock::Image {
            source: ImageSource::Url {
                url: "data:text/plain,hello".into(),
            },
        },
        ContentBlock::Text {
            text: String::new(),
        },
        ContentBlock::Text {
            text: " second text".into(),
        },
    ]);
    let long = "mcp__a_server_with_a_long_name__a_tool_with_an_even_longer_name_x";
    chat.messages.push(Message {
        role: Role::Assistant,
        content: vec![
            ContentBlock::Thinking {
                text: "signed plan".into(),
                signature: Some("sig-abc".into()),
            },
            ContentBlock::RedactedThinking {
                data: "opaque==".into(),
            },
            ContentBlock::Text {
                text: "I will call tools.".into(),
            },
            ContentBlock::ToolUse {
                id: "call_1".into(),
                name: "fs.read file".into(),
                input_json: r#"{"path": "/a b", "n": 1.5e3, "deep": {"x": [1, null, true]}}"#
                    .into(),
            },
            ContentBlock::ToolUse {
                id: "call_2".into(),
                name: long.into(),
                input_json: r#"{"cut": "#.into(),
            },
            ContentBlock::ToolUse {
                id: "call_3".into(),
                name: "shot".into(),
                input_json: String::new(),
            },
        ],
    });
    chat.messages.push(Message {
        role: Role::User,
        content: vec![
            ContentBlock::ToolResult {
                tool_use_id: "call_1".into(),
                content: "file text".into(),
                is_error: false,
                images: Vec::new(),
            },
            ContentBlock::ToolResult {
                tool_use_id: "call_2".into(),
                content: "  exit 1".into(),
                is_error: true,
                images: Vec::new(),
            },
            ContentBlock::ToolResult {
                tool_use_id: "call_3".into(),
                content: "ERROR: already said".into(),
                is_error: true,
                images: vec![
                    png.clone(),
                    ImageSource::Url {
                        url: "https://example.com/shot.png".into(),
                    },
                ],
            },
            ContentBlock::ToolResult {
                tool_use_id: "call_trimmed".into(),
                content: String::new(),
                is_error: false,
                images: vec![
                    png,
                    ImageSource::Base64 {
                        media_type: "application/pdf".into(),
                        data: "JVBERi0xLjQ=".into(),
                    },
                ],
            },
            ContentBlock::Document {
                source: ImageSource::Base64 {
                    media_type: "application/pdf".into(),
                    data: "JVBERi0xLjc=".into(),
                },
                title: Some("spec.pdf".into()),
            },
            ContentBlock::Document {
                source: ImageSource::Url {
                    url: "https://example.com/paper.pdf".into(),
                },
                title: None,
            },
            ContentBlock::Thinking {
                text: "user-side thinking".into(),
                signature: None,
            },
            ContentBlock::Text {
                text: "go on".into(),
            },
        ],
    });
    // A turn another provider wrote: unsigned thinking only.
    chat.messages.push(Message {
        role: Role::Assistant,
        content: vec![
            ContentBlock::Thinking {
                text: "foreign".into(),
                signature: None,
            },
            ContentBlock::Text {
                text: String::new(),
            },
        ],
    });
    chat.messages
        .push(Message::text(Role::User, "and the last question"));
    chat.system = Some("joined system".into());
    chat.options.system_blocks = vec![
        SystemBlock {
            text: "block one".into(),
            cache: Some(CacheTtl::Hour),
        },
        SystemBlock {
            text: String::new(),
            cache: Some(CacheTtl::Default),
        },
        SystemBlock {
            text: "block two".into(),
            cache: Some(CacheTtl::Default),
        },
    ];
    chat.options.cache_points = (0..5)
        .map(|m| CachePoint {
            message: m,
            block: if m == 0 { 3 } else { 0 },
            ttl: if m == 2 {
                CacheTtl::Hour
            } else {
                CacheTtl::Default
            },
        })
        .collect();
    chat.tools = vec![
        ToolSpec {
            name: "fs.read file".into(),
            description: "Read a file".into(),
            input_schema_json: r##"{"type": "object", "$defs": {"P": {"type": ["string", "null"], "description": "a path"}},
                "properties": {"path": {"$ref": "#/$defs/P", "description": "where"},
                "mode": {"const": "fast"}, "n": {"type": "integer", "enum": [1, 2]},
                "list": {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "number"}]}}},
                "required": ["path", "ghost"], "additionalProperties": false}"##
                .into(),
        },
        ToolSpec {
            name: long.into(),
            description: String::new(),
            input_schema_json: r#"{"type":"object","properties":{}}"#.into(),
        },
        ToolSpec {
            name: "shot".into(),
            description: "Screenshot".into(),
            input_schema_json: r#"{"type":"object","properties":{"scale":{"type":"number","minimum":0.5}}}"#
                .into(),
        },
    ];
    chat.temperature = Some(0.7);
    chat.options.top_p = Some(0.9);
    chat.options.stop = ["END", "", " ", "s3", "s4", "s5", "s6"]
        .map(String::from)
        .to_vec();
    chat.options.user = Some("user-42".into());
    chat.options.tool_choice = Some(ToolChoice::Tool { name: long.into() });
    chat.options.parallel_tool_calls = Some(false);
    chat.options.thinking = Some(Thinking {
        budget_tokens: Some(50_000),
        display: true,
    });
    chat
}

/// One golden: a request as one provider would be sent it.
struct Case {
    name: &'static str,
    cfg: ProviderConfig,
    chat: ChatRequest,
    model: &'static str,
    max_tokens: u32,
    prefill: Option<&'static str>,
}

fn case(
    name: &'static str,
    cfg: ProviderConfig,
    chat: &ChatRequest,
    model: &'static str,
    max_tokens: u32,
    prefill: Option<&'static str>,
) -> Case {
    Case {
        name,
        cfg,
        chat: chat.clone(),
        model,
        max_tokens,
        prefill,
    }
}

fn cases() -> Vec<Case> {
    let agent = agent_conversation();
    let sink = kitchen_sink();
    // Gemini refuses cut-off arguments (the request fails); the others send `{}` or the text.
    let mut sink_gemini = sink.clone();
    if let ContentBlock::ToolUse { input_json, .. } = &mut sink_gemini.messages[1].content[4] {
        *input_json = r#"{"cut": "off"}"#.into();
    }
    let mut sink_auto = sink_gemini.clone();
    sink_auto.options.tool_choice = Some(ToolChoice::Auto);
    sink_auto.options.parallel_tool_calls = None;
    sink_auto.messages.truncate(3);
    let mut deepseek = ProviderConfig::new(
        "deepseek",
        Api::Openai,
        "https://api.deepseek.com",
        "deepseek-reasoner",
    );
    deepseek.api_key = None;
    let (a, o, g) = (
        provider(Api::Anthropic),
        provider(Api::Openai),
        provider(Api::Gemini),
    );
    vec![
        case(
            "anthropic_agent",
            a.clone(),
            &agent,
            "claude-sonnet-4-5",
            8192,
            None,
        ),
        case(
            "anthropic_sink",
            a.clone(),
            &sink,
            "claude-sonnet-4-5",
            8192,
            None,
        ),
        // Thinking on in a tool loop whose calling turn starts with signed thinking.
        case(
            "anthropic_sink_thinking",
            a.clone(),
            &sink_auto,
            "claude-opus-4-1",
            4096,
            None,
        ),
        case(
            "anthropic_prefill",
            a,
            &sink,
            "claude-3-5-haiku",
            100,
            Some("Partial  \n"),
        ),
        case("openai_agent", o.clone(), &agent, "gpt-4.1", 8192, None),
        case(
            "openai_sink",
            o.clone(),
            &sink,
            "gpt-4o",
            1000,
            Some("Hello "),
        ),
        case("openai_sink_reasoning", o, &sink_auto, "o3", 1000, None),
        case(
            "openai_deepseek",
            deepseek,
            &sink,
            "deepseek-reasoner",
            1000,
            None,
        ),
        case(
            "gemini_agent",
            g.clone(),
            &agent,
            "gemini-2.5-flash",
            8192,
            None,
        ),
        case(
            "gemini_sink",
            g.clone(),
            &sink_gemini,
            "gemini-2.5-pro",
            1000,
            Some("Hel"),
        ),
        case(
            "gemini_sink_old_model",
            g,
            &sink_auto,
            "gemini-2.0-flash",
            1000,
            None,
        ),
    ]
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/bodies")
        .join(format!("{name}.json"))
}

/// The body as a golden holds it: parsed (so key order and values count, spacing does not)
/// and pretty-printed, so a change reads as a diff.
fn golden_text(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    let mut text = serde_json::to_string_pretty(&v).unwrap();
    text.push('\n');
    text
}

#[test]
fn bodies_match_the_goldens() {
    let bless = std::env::var_os("MYTHOS_BLESS").is_some();
    for c in cases() {
        let req = UpstreamRequest {
            chat: &c.chat,
            model: c.model,
            max_tokens: c.max_tokens,
            prefill: c.prefill,
            prefill_blocks: &[],
            format_in_words: false,
        };
        let built = match c.cfg.api {
            Api::Anthropic => anthropic::build(&c.cfg, &req),
            Api::Openai => openai::build(&c.cfg, &req),
            Api::Gemini => gemini::build(&c.cfg, &req),
        }
        .unwrap_or_else(|e| panic!("{}: {e:?}", c.name));
        let path = golden_path(c.name);
        let got = golden_text(&built.body);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, got).unwrap();
            continue;
        }
        let want =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Parsed as well, so a failure says whether only the key order moved.
        let same_values =
            serde_json::from_str::<Value>(&got).ok() == serde_json::from_str::<Value>(&want).ok();
        assert!(
            got == want,
            "{}: the body differs from {} (same values, other order: {same_values})\n{got}",
            c.name,
            path.display()
        );
    }
}
