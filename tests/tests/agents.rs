//! What real agents send, through the HTTP front end of the real daemon, served by a provider
//! of the other format. The request shapes are those observed from the agents themselves.

use mythos_tests::Mocks;
use serde_json::{json, Value};

/// The request Claude Code 2.1 sent to a mock: a model name no router knows, 12 tools,
/// adaptive thinking with the display omitted, 128,000 output tokens, streaming, system blocks
/// with prompt-cache breakpoints, `?beta=true`.
fn claude_code_request(prompt: &str) -> Value {
    let tools: Vec<Value> = [
        "Task",
        "Bash",
        "Glob",
        "Grep",
        "LS",
        "ExitPlanMode",
        "Read",
        "Edit",
        "MultiEdit",
        "Write",
        "NotebookEdit",
        "WebFetch",
    ]
    .iter()
    .map(|name| {
        json!({
            "name": name,
            "description": format!("The {name} tool."),
            "input_schema": {
                "type": "object",
                "properties": {"arg": {"type": "string", "description": "its argument"}},
                "required": ["arg"],
                "additionalProperties": false,
                "$schema": "http://json-schema.org/draft-07/schema#"
            }
        })
    })
    .collect();
    json!({
        "model": "claude-opus-5-5",
        "max_tokens": 128000,
        "stream": true,
        "thinking": {"type": "adaptive", "display": "omitted"},
        "metadata": {"user_id": "user_0123_account__session_4567"},
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "You are an interactive CLI tool that helps users with software engineering tasks.",
             "cache_control": {"type": "ephemeral"}}
        ],
        "tools": tools,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>context</system-reminder>"},
            {"type": "text", "text": prompt, "cache_control": {"type": "ephemeral"}}
        ]}]
    })
}

/// SSE frames of a body: (event name, data).
fn frames(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|f| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in f.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap_or(Value::String(d.into()));
                }
            }
            (name, data)
        })
        .collect()
}

fn text_of(frames: &[(String, Value)]) -> String {
    frames
        .iter()
        .filter(|(n, d)| n == "content_block_delta" && d["delta"]["type"] == "text_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_served_by_an_openai_format_provider() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let (base, token) = env.http();
    let http = reqwest::Client::new();
    let prompt = "Summarise the repository layout.";

    // Pinned to the OpenAI-format provider.
    let mut req = claude_code_request(prompt);
    req["model"] = json!("openai/gpt-4o");
    let resp = http
        .post(format!("{base}/v1/messages?beta=true"))
        .header("x-api-key", &token)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(req.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-mythos-provider"], "openai");
    let body = resp.text().await.unwrap();
    let f = frames(&body);
    assert_eq!(f.last().unwrap().0, "message_stop", "{body}");
    let text = text_of(&f);
    assert!(
        text.starts_with("This is a simulated answer to") && text.ends_with("nothing is repeated."),
        "{text}"
    );

    // What the OpenAI-format provider received: its own dialect, nothing it would refuse.
    let sent = mocks
        .openai
        .requests()
        .pop()
        .expect("the openai mock was asked");
    let b = &sent.body;
    assert_eq!(b["messages"][0]["role"], "system");
    assert!(b["messages"][0]["content"]
        .as_str()
        .unwrap()
        .starts_with("You are Claude Code"));
    assert_eq!(b["tools"].as_array().unwrap().len(), 12);
    assert_eq!(b["tools"][0]["type"], "function");
    let limit = b["max_tokens"]
        .as_u64()
        .or_else(|| b["max_completion_tokens"].as_u64())
        .unwrap();
    assert!(
        limit <= 16_384,
        "max_tokens {limit} is above gpt-4o's output limit"
    );
    let text = b.to_string();
    assert!(!text.contains("cache_control"), "{text}");
    assert!(!text.contains("\"thinking\""), "{text}");

    // Unpinned, the same request goes to the primary (Anthropic format), which keeps the
    // cache breakpoints.
    let resp = http
        .post(format!("{base}/v1/messages?beta=true"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(claude_code_request(prompt).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-mythos-provider"], "anthropic");
    let body = resp.text().await.unwrap();
    let text = text_of(&frames(&body));
    assert!(text.ends_with("nothing is repeated."), "{text}");
    let sent = mocks.anthropic.requests().pop().unwrap();
    assert!(sent.body.to_string().contains("cache_control"));
    assert!(sent.body["max_tokens"].as_u64().unwrap() <= 64_000);
}

/// An agent asking for a tool by its OpenAI name gets the call back under that name, with
/// arguments that parse, from a provider of the other format; the result goes back and the
/// answer completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_tool_round_trip_served_by_anthropic_format() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let (base, token) = env.http();
    let http = reqwest::Client::new();
    let long_name = format!("workspace_{}_read_file", "x".repeat(70));
    let tools = json!([{"type": "function", "function": {
        "name": long_name, "description": "read a file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}]);
    let first = json!({
        "model": "anthropic/claude-sonnet-4-5",
        "messages": [{"role": "user", "content": "call: read the readme"}],
        "tools": tools,
        "tool_choice": "required",
    });
    let resp: Value = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(first.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).expect("a JSON body"))
        .unwrap();
    let msg = &resp["choices"][0]["message"];
    assert_eq!(resp["choices"][0]["finish_reason"], "tool_calls", "{resp}");
    let call = &msg["tool_calls"][0];
    assert_eq!(call["function"]["name"], json!(long_name), "mapped back");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
        .expect("arguments are JSON");
    assert!(args.is_object());
    // The provider saw a name it accepts.
    let sent = mocks.anthropic.requests().pop().unwrap();
    let sent_name = sent.body["tools"][0]["name"].as_str().unwrap().to_string();
    assert!(sent_name.len() <= 64, "{sent_name}");
    assert_eq!(sent.body["tool_choice"]["type"], "any");

    let second = json!({
        "model": "anthropic/claude-sonnet-4-5",
        "messages": [
            {"role": "user", "content": "call: read the readme"},
            msg,
            {"role": "tool", "tool_call_id": call["id"], "content": "# mythos"}
        ],
        "tools": tools,
    });
    let resp: Value = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(second.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).expect("a JSON body"))
        .unwrap();
    assert_eq!(resp["choices"][0]["finish_reason"], "stop", "{resp}");
    let sent = mocks.anthropic.requests().pop().unwrap();
    let turns = sent.body["messages"].as_array().unwrap();
    assert_eq!(turns.len(), 3);
    assert_eq!(turns[1]["content"][0]["type"], "tool_use");
    assert_eq!(turns[1]["content"][0]["name"], json!(sent_name));
    assert_eq!(turns[2]["content"][0]["type"], "tool_result");
    assert_eq!(turns[2]["content"][0]["tool_use_id"], call["id"]);
}

async fn post(http: &reqwest::Client, url: String, token: &str, body: &Value) -> (u16, String) {
    let resp = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// Anthropic's signed thinking streams through as thinking blocks with their signature, goes
/// back to Anthropic verified, and is never sent to another provider with a signature it did
/// not make; foreign reasoning replayed to Anthropic is dropped, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinking_round_trips_across_providers() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let (base, token) = env.http();
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/messages");
    let first = json!({
        "model": "anthropic/claude-sonnet-4-5",
        "max_tokens": 4096,
        "stream": true,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": [{"role": "user", "content": "think first"}],
    });
    let (status, body) = post(&http, url.clone(), &token, &first).await;
    assert_eq!(status, 200, "{body}");
    let f = frames(&body);
    let thinking: String = f
        .iter()
        .filter(|(n, d)| n == "content_block_delta" && d["delta"]["type"] == "thinking_delta")
        .map(|(_, d)| d["delta"]["thinking"].as_str().unwrap().to_string())
        .collect();
    let signature: String = f
        .iter()
        .filter(|(_, d)| d["delta"]["type"] == "signature_delta")
        .map(|(_, d)| d["delta"]["signature"].as_str().unwrap().to_string())
        .collect();
    assert!(!thinking.is_empty() && !signature.is_empty(), "{body}");
    let text = text_of(&f);

    // The next turn replays the signed thinking to Anthropic, which checks the signature.
    let history = json!([
        {"role": "user", "content": "think first"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": thinking, "signature": signature},
            {"type": "text", "text": text}
        ]},
        {"role": "user", "content": "and now?"}
    ]);
    let mut next = first.clone();
    next["messages"] = history.clone();
    let (status, body) = post(&http, url.clone(), &token, &next).await;
    assert_eq!(status, 200, "Anthropic refused its own thinking: {body}");

    // The same history to the OpenAI-format provider: the signature stays behind.
    next["model"] = json!("openai/gpt-4o");
    let (status, body) = post(&http, url.clone(), &token, &next).await;
    assert_eq!(status, 200, "{body}");
    let sent = mocks.openai.requests().pop().unwrap();
    assert!(!sent.body.to_string().contains(&signature));

    // A forged signature (or foreign reasoning without one) never reaches Anthropic.
    let mut forged = history.clone();
    forged[1]["content"][0]["signature"] = json!("");
    next["model"] = json!("anthropic/claude-sonnet-4-5");
    next["messages"] = forged;
    next["thinking"] = json!({"type": "disabled"});
    let (status, body) = post(&http, url, &token, &next).await;
    assert_eq!(status, 200, "{body}");
}

/// Thinking that Anthropic redacted comes through as a `redacted_thinking` block, whole, and
/// goes back to Anthropic in the next turn of a tool loop, where it is checked; with the
/// thinking kept, the loop goes on thinking (the turn starts with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redacted_thinking_goes_back_to_anthropic() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let (base, token) = env.http();
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/messages");
    let tools = json!([{"name": "record", "description": "Record a note.",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}}}]);
    let prompt = "call: redact this and write it down";
    let first = json!({
        "model": "anthropic/claude-sonnet-4-5",
        "max_tokens": 4096,
        "stream": true,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "tools": tools,
        "messages": [{"role": "user", "content": prompt}],
    });
    for stream in [true, false] {
        let mut req = first.clone();
        req["stream"] = json!(stream);
        let (status, body) = post(&http, url.clone(), &token, &req).await;
        assert_eq!(status, 200, "{body}");
        // The assistant turn as the client keeps it.
        let content: Vec<Value> = if stream {
            let mut blocks: Vec<Value> = Vec::new();
            for (name, d) in frames(&body) {
                match name.as_str() {
                    "content_block_start" => blocks.push(d["content_block"].clone()),
                    "content_block_delta" => {
                        let b = blocks.last_mut().unwrap();
                        match d["delta"]["type"].as_str().unwrap() {
                            "thinking_delta" => {
                                let t = b["thinking"].as_str().unwrap().to_string();
                                b["thinking"] = json!(t + d["delta"]["thinking"].as_str().unwrap());
                            }
                            "signature_delta" => b["signature"] = d["delta"]["signature"].clone(),
                            "input_json_delta" => {
                                let t = b["partial"].as_str().unwrap_or("").to_string();
                                b["partial"] =
                                    json!(t + d["delta"]["partial_json"].as_str().unwrap());
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            for b in &mut blocks {
                if let Some(p) = b.get("partial").cloned() {
                    b["input"] = serde_json::from_str(p.as_str().unwrap()).unwrap();
                    b.as_object_mut().unwrap().remove("partial");
                }
            }
            blocks
        } else {
            serde_json::from_str::<Value>(&body).unwrap()["content"]
                .as_array()
                .unwrap()
                .clone()
        };
        let kinds: Vec<&str> = content
            .iter()
            .map(|b| b["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["thinking", "redacted_thinking", "tool_use"],
            "{body}"
        );
        assert_eq!(
            content[1]["data"],
            mythosd::sim::sim_redacted_thinking(),
            "whole, as it came"
        );
        let call_id = content[2]["id"].clone();
        let mut next = first.clone();
        next["stream"] = json!(false);
        next["messages"] = json!([
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": content},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call_id, "content": "noted"}]}
        ]);
        let before = mocks.anthropic.requests().len();
        let (status, body) = post(&http, url.clone(), &token, &next).await;
        assert_eq!(status, 200, "Anthropic refused the turn: {body}");
        let sent = &mocks.anthropic.requests()[before..];
        let last = sent.last().expect("asked Anthropic").body.clone();
        assert_eq!(
            last["thinking"]["type"], "enabled",
            "the loop keeps thinking"
        );
        assert_eq!(
            last["messages"][1]["content"][1]["type"],
            "redacted_thinking"
        );
    }
}

/// Images reach a provider of the other format: a data URL through Chat Completions to the
/// Anthropic-format provider, a base64 block through Messages to the OpenAI-format one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_cross_formats() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let (base, token) = env.http();
    let http = reqwest::Client::new();
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
    let chat = json!({
        "model": "anthropic/claude-sonnet-4-5",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is it"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}}
        ]}],
    });
    let (status, body) = post(&http, format!("{base}/v1/chat/completions"), &token, &chat).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.starts_with("I see 1 image(s)."), "{text}");

    let messages = json!({
        "model": "openai/gpt-4o",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
            {"type": "text", "text": "what is it"}
        ]}],
    });
    let (status, body) = post(&http, format!("{base}/v1/messages"), &token, &messages).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let text = v["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("I see 1 image(s)."), "{text}");
    let sent = mocks.openai.requests().pop().unwrap();
    assert!(sent.body.to_string().contains("data:image/png;base64,"));
}

/// An agent that sends no output limit (Codex, aider) gets the serving model's whole output
/// limit, not the daemon's 4,096 default, so long answers are not cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_limit_means_the_models_own_limit() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let (base, token) = env.http();
    let http = reqwest::Client::new();
    let body = json!({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let (status, text) = post(&http, format!("{base}/v1/chat/completions"), &token, &body).await;
    assert_eq!(status, 200, "{text}");
    let sent = mocks.openai.requests().pop().unwrap();
    assert_eq!(sent.body["max_tokens"], 16_384, "{}", sent.body);
    let body = json!({"model": "anthropic/claude-sonnet-4-5", "input": "hi"});
    let (status, text) = post(&http, format!("{base}/v1/responses"), &token, &body).await;
    assert_eq!(status, 200, "{text}");
    let sent = mocks.anthropic.requests().pop().unwrap();
    assert_eq!(sent.body["max_tokens"], 64_000, "{}", sent.body);
}

/// `mythos env` asks the daemon where its front end is: the client's own state directory or
/// environment does not matter (a daemon started elsewhere is still found).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_lines_come_from_the_daemon() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let (base, token) = env.http();
    let out = env
        .command("mythos")
        .args(["env", "openai"])
        .env("MYTHOS_STATE_DIR", env.dir.path().join("elsewhere"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("export OPENAI_BASE_URL={base}/v1\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("export OPENAI_API_KEY={token}\n")),
        "{text}"
    );
    let out = env.command("mythos").arg("token").output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), token);
}
