//! What one upstream request costs the daemon before a byte goes out: a coding agent's
//! conversation (a system prompt of a few KB, 10 tools, 20 messages) turned into a ready
//! `reqwest` request by [`HttpTransport::open`], for each wire format.
//!
//! The timing test is ignored by default (timings belong in a report, not an assertion):
//!
//! ```text
//! cargo test -p mythosd --release --lib provider::setup_bench -- --ignored --nocapture
//! ```
//!
//! For instruction counts, run the same test binary under
//! `valgrind --tool=callgrind --toggle-collect='*setup_bench::open_many*'`, one format at a time
//! with `MYTHOS_BENCH_API=openai` (instructions / 1,100 requests: 100 warm-up, 1,000 timed).

use std::time::Instant;

use mythos_protocol::{
    CachePoint, CacheTtl, ChatRequest, ContentBlock, Message, Role, SystemBlock, Thinking,
    ToolChoice, ToolSpec,
};

use super::{http_client, HttpTransport, Transport, UpstreamRequest};
use crate::config::{Api, ProviderConfig, Secret};

/// A coding agent's request in the middle of a tool loop.
pub(crate) fn agent_conversation() -> ChatRequest {
    let mut chat = ChatRequest::user_text(1, "Fix the failing test in src/parser.rs and run it.");
    let rules = "You are a coding agent working in the user's repository. Read files before \
                 editing them, keep changes small, run the tests after every change, and \
                 explain what you did in a few sentences. Never invent file contents. ";
    let system: String = rules.repeat(16);
    chat.options.system_blocks = vec![
        SystemBlock {
            text: system[..system.len() / 2].to_string(),
            cache: None,
        },
        SystemBlock {
            text: system[system.len() / 2..].to_string(),
            cache: Some(CacheTtl::Default),
        },
    ];
    chat.system = Some(
        chat.options
            .system_blocks
            .iter()
            .map(|b| b.text.as_str())
            .collect::<Vec<_>>()
            .join("\n\n"),
    );
    let tools = [
        "read_file",
        "write_file",
        "edit_file",
        "list_dir",
        "grep",
        "glob",
        "bash",
        "web_fetch",
        "todo_write",
        "mcp__github.com__search_issues",
    ];
    chat.tools = tools
        .iter()
        .map(|name| ToolSpec {
            name: (*name).into(),
            description: format!(
                "{name}: does what its name says. Use it when the task needs it; prefer it to \
                 running shell commands for the same job, as its output is structured."
            ),
            input_schema_json: format!(
                r#"{{"type":"object","properties":{{"path":{{"type":"string","description":"Absolute path of the file or directory for {name}"}},"offset":{{"type":"integer","minimum":0,"description":"Line to start at"}},"limit":{{"type":"integer","minimum":1,"maximum":2000}},"mode":{{"type":"string","enum":["fast","full"]}},"flags":{{"type":"array","items":{{"type":"string"}}}}}},"required":["path"],"additionalProperties":false,"$schema":"http://json-schema.org/draft-07/schema#"}}"#
            ),
        })
        .collect();
    let file = "fn parse(input: &str) -> Result<Ast, Error> {\n    let mut p = Parser::new(input);\n    p.expr()\n}\n"
        .repeat(20);
    for i in 0..9 {
        let id = format!("toolu_{i:02}abcdefghijklmnop");
        chat.messages.push(Message {
            role: Role::Assistant,
            content: vec![
                ContentBlock::Thinking {
                    text: "The test fails on an empty input; look at the parser first.".into(),
                    signature: Some("EqQBCkYIARgCIkDsig".repeat(8)),
                },
                ContentBlock::Text {
                    text: format!("Let me look at step {i}."),
                },
                ContentBlock::ToolUse {
                    id: id.clone(),
                    name: tools[i % tools.len()].into(),
                    input_json: format!(r#"{{"path":"/repo/src/parser.rs","offset":{i}}}"#),
                },
            ],
        });
        chat.messages.push(Message {
            role: Role::User,
            content: vec![ContentBlock::ToolResult {
                tool_use_id: id,
                content: file.clone(),
                is_error: i == 4,
                images: Vec::new(),
            }],
        });
    }
    chat.messages.push(Message::text(
        Role::Assistant,
        "The parser now handles empty input.",
    ));
    chat.messages
        .push(Message::text(Role::User, "Now run the tests."));
    chat.options.cache_points = vec![CachePoint {
        message: 18,
        block: 0,
        ttl: CacheTtl::Default,
    }];
    chat.options.stop = vec!["</done>".into()];
    chat.options.tool_choice = Some(ToolChoice::Auto);
    chat.options.thinking = Some(Thinking {
        budget_tokens: Some(4096),
        display: true,
    });
    chat.temperature = Some(0.2);
    chat
}

/// A provider of `api` with a key, on a port nothing listens on (nothing is sent).
pub(crate) fn provider(api: Api) -> ProviderConfig {
    let (base, model) = match api {
        Api::Anthropic => ("http://127.0.0.1:1", "claude-sonnet-4-5"),
        Api::Openai => ("http://127.0.0.1:1/v1", "gpt-4.1"),
        Api::Gemini => ("http://127.0.0.1:1", "gemini-2.5-flash"),
    };
    ProviderConfig {
        api_key: Some(Secret::new("sk-bench-0123456789abcdef")),
        ..ProviderConfig::new(api.as_str(), api, base, model)
    }
}

/// Open (and drop, unsent) `n` requests: the per-request set-up alone.
#[inline(never)]
fn open_many(t: &HttpTransport, req: &UpstreamRequest<'_>, n: usize) {
    for _ in 0..n {
        drop(std::hint::black_box(t.open(std::hint::black_box(req))));
    }
}

#[test]
#[ignore = "a measurement, not a check: run it in release mode with --nocapture"]
fn per_request_setup_cost() {
    let n: usize = std::env::var("MYTHOS_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    // One format alone (`anthropic`, `openai`, `gemini`), for a profiler.
    let only = std::env::var("MYTHOS_BENCH_API").ok();
    let chat = agent_conversation();
    for api in [Api::Anthropic, Api::Openai, Api::Gemini] {
        if only.as_deref().is_some_and(|o| o != api.as_str()) {
            continue;
        }
        let cfg = provider(api);
        let model = cfg.model.clone();
        let t = HttpTransport::new(cfg, http_client().unwrap());
        let req = UpstreamRequest {
            chat: &chat,
            model: &model,
            max_tokens: 8192,
            prefill: None,
            prefill_blocks: &[],
            format_in_words: false,
        };
        // Warm up allocator and caches.
        open_many(&t, &req, n / 10 + 1);
        let start = Instant::now();
        open_many(&t, &req, n);
        let per = start.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!(
            "setup {:9}: {per:7.1} µs per request ({n} requests)",
            api.as_str()
        );
    }
}
