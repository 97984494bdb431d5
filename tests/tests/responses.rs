//! `POST /v1/responses` against the real binaries and the wire-format mocks: what Codex CLI
//! needs from a turn (the items of `response.output_item.done`, then `response.completed`)
//! arrives whole, also when a provider breaks mid-answer.

use mythos_protocol::SimFault;
use mythos_tests::Mocks;
use mythosd::sim::{answer_for, json_answer_for};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// POST `body` to `url` + `path` with the token; the status and the (de-chunked) body. A raw
/// HTTP/1.1 exchange keeps this crate free of an HTTP client.
async fn post(url: &str, token: &str, path: &str, body: &Value) -> (u16, Vec<u8>) {
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status: u16 = head[9..12].parse().expect("status");
    let mut rest = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        rest = dechunk(&rest);
    }
    (status, rest)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").expect("chunk size");
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16)
            .expect("hex size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// The `data:` objects of an SSE body, checking each `event:` line names its data's type.
fn events(body: &[u8]) -> Vec<Value> {
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    let mut out = Vec::new();
    for frame in text.split("\n\n") {
        let mut event = None;
        for line in frame.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                event = Some(e.to_string());
            } else if let Some(d) = line.strip_prefix("data: ") {
                let v: Value = serde_json::from_str(d).expect("json data");
                assert_eq!(v["type"].as_str(), event.as_deref());
                out.push(v);
            }
        }
    }
    out
}

/// What Codex keeps of a turn: the `output_item.done` items, and the final event's type.
fn codex_view(events: &[Value]) -> (Vec<Value>, String) {
    for (n, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], json!(n));
    }
    let items = events
        .iter()
        .filter(|e| e["type"] == "response.output_item.done")
        .map(|e| e["item"].clone())
        .collect();
    let last = events.last().expect("events")["type"]
        .as_str()
        .unwrap()
        .to_string();
    (items, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_codex_turn_streams_text_and_tool_calls() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let (url, token) = env.http();
    let tools = json!([{"type": "function", "name": "echo",
                        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}},
                       {"type": "local_shell"}]);

    let (status, body) = post(
        &url,
        &token,
        "/v1/responses",
        &json!({"model": "mythos/code", "instructions": "Be brief.", "store": false,
                "stream": true, "input": [{"role": "user", "content": "hello"}], "tools": tools}),
    )
    .await;
    assert_eq!(status, 200);
    let (items, last) = codex_view(&events(&body));
    assert_eq!(last, "response.completed");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["type"], "message");
    assert_eq!(items[0]["content"][0]["text"], json!(answer_for("hello")));

    let (status, body) = post(
        &url,
        &token,
        "/v1/responses",
        &json!({"model": "mythos/code", "stream": true, "tools": tools,
                "input": [{"role": "user", "content": "call: now"}]}),
    )
    .await;
    assert_eq!(status, 200);
    let (items, last) = codex_view(&events(&body));
    assert_eq!(last, "response.completed");
    let call = items
        .iter()
        .find(|i| i["type"] == "function_call")
        .expect("a function call");
    assert_eq!(call["name"], "echo");
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["text"], json!(answer_for("call: now")));

    // The next turn carries the call and its output back, as Codex sends them.
    let (status, body) = post(
        &url,
        &token,
        "/v1/responses",
        &json!({"model": "mythos/code", "tools": tools, "input": [
            {"role": "user", "content": "call: now"},
            {"type": "function_call", "call_id": call["call_id"], "name": "echo",
             "arguments": call["arguments"]},
            {"type": "function_call_output", "call_id": call["call_id"], "output": "done"},
            {"role": "user", "content": "thanks"}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let r: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["output"][0]["type"], "message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_breaking_mid_answer_is_invisible_to_the_client() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let (url, token) = env.http();
    for sim in [&mocks.anthropic, &mocks.deepseek, &mocks.openai] {
        // Whichever is asked first breaks after 9 chunks; the next continues it.
        sim.inject([SimFault::DisconnectAfter { tokens: 9 }]);
    }
    let prompt = "tell me about failover";
    let (status, body) = post(
        &url,
        &token,
        "/v1/responses",
        &json!({"model": "mythos", "stream": true, "input": prompt}),
    )
    .await;
    assert_eq!(status, 200);
    let (items, last) = codex_view(&events(&body));
    assert_eq!(last, "response.completed");
    let text: String = items
        .iter()
        .filter(|i| i["type"] == "message")
        .map(|i| i["content"][0]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, answer_for(prompt));
    let asked: u64 = [&mocks.anthropic, &mocks.deepseek, &mocks.openai]
        .iter()
        .map(|m| m.stats().requests)
        .sum();
    assert!(asked >= 2, "no provider broke: {asked} request(s)");
}

/// Codex's structured output (`text.format`), through two breaks mid-answer: the JSON the
/// schema asks for, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_output_in_text_format_survives_failover() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let (url, token) = env.http();
    for sim in [&mocks.anthropic, &mocks.deepseek, &mocks.openai] {
        sim.inject([SimFault::DisconnectAfter { tokens: 5 }]);
    }
    let schema = json!({"type": "object", "properties": {"summary": {"type": "string"},
        "risky": {"type": "boolean"}}, "required": ["summary", "risky"],
        "additionalProperties": false});
    let prompt = "review this diff";
    let (status, body) = post(
        &url,
        &token,
        "/v1/responses",
        &json!({"model": "mythos", "stream": true, "input": prompt,
                "text": {"format": {"type": "json_schema", "name": "review",
                                    "schema": schema, "strict": true}}}),
    )
    .await;
    assert_eq!(status, 200);
    let (items, last) = codex_view(&events(&body));
    assert_eq!(last, "response.completed");
    let text: String = items
        .iter()
        .filter(|i| i["type"] == "message")
        .map(|i| i["content"][0]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, json_answer_for(prompt, &schema));
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["risky"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_state_is_refused() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let (url, token) = env.http();
    let (status, body) = post(
        &url,
        &token,
        "/v1/responses",
        &json!({"model": "mythos", "input": "hi", "previous_response_id": "resp_1"}),
    )
    .await;
    assert_eq!(status, 400);
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("stateless"));
}

/// Codex replays a turn's reasoning items (with `store: false`): when Anthropic did the
/// thinking, its signature rides in `encrypted_content` and the next turn, replayed to
/// Anthropic, is accepted (the simulated Anthropic checks signatures as the real one does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_reasoning_survives_a_codex_round_trip() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let (url, token) = env.http();
    let first = json!({"model": "anthropic/claude-sonnet-4-5", "stream": true, "store": false,
                       "include": ["reasoning.encrypted_content"],
                       "reasoning": {"effort": "low"}, "max_output_tokens": 8192,
                       "input": [{"role": "user", "content": "think it over"}]});
    let (status, body) = post(&url, &token, "/v1/responses", &first).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (items, last) = codex_view(&events(&body));
    assert_eq!(last, "response.completed");
    let reasoning = items
        .iter()
        .find(|i| i["type"] == "reasoning")
        .expect("a reasoning item")
        .clone();
    assert!(reasoning["encrypted_content"].is_string(), "{reasoning}");

    let mut input = vec![json!({"role": "user", "content": "think it over"})];
    input.extend(items.iter().cloned());
    input.push(json!({"role": "user", "content": "and then?"}));
    let mut next = first.clone();
    next["input"] = json!(input);
    let (status, body) = post(&url, &token, "/v1/responses", &next).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(codex_view(&events(&body)).1, "response.completed");
    // What Anthropic received: the thinking, signed.
    let sent = mocks.anthropic.requests().pop().unwrap();
    let turn = &sent.body["messages"][1]["content"][0];
    assert_eq!(turn["type"], "thinking", "{}", sent.body);
    assert!(turn["signature"].as_str().is_some_and(|s| !s.is_empty()));
}

/// Codex's `apply_patch` is a `custom` tool (free-form input with a grammar): it reaches the
/// provider as a function taking the input as one string, and the call comes back as a
/// `custom_tool_call` with the raw input; its output goes back as the function's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_custom_tools_round_trip() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let (url, token) = env.http();
    let tools = json!([{"type": "custom", "name": "apply_patch",
                        "description": "Apply a patch.",
                        "format": {"type": "grammar", "syntax": "lark",
                                   "definition": "start: \"*** Begin Patch\" ..."}}]);
    let (status, body) = post(
        &url,
        &token,
        "/v1/responses",
        &json!({"model": "anthropic/claude-sonnet-4-5", "stream": true, "tools": tools,
                "input": [{"role": "user", "content": "call: patch it"}]}),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (items, last) = codex_view(&events(&body));
    assert_eq!(last, "response.completed");
    let call = items
        .iter()
        .find(|i| i["type"] == "custom_tool_call")
        .unwrap_or_else(|| panic!("{items:?}"));
    assert_eq!(call["name"], "apply_patch");
    assert!(call["input"].is_string());
    let sent = mocks.anthropic.requests().pop().unwrap();
    let tool = &sent.body["tools"][0];
    assert_eq!(tool["name"], "apply_patch");
    assert_eq!(tool["input_schema"]["required"], json!(["input"]));
    assert!(tool["description"]
        .as_str()
        .unwrap()
        .contains("lark grammar"));

    // The next turn carries the call and its output back.
    let input = json!([
        {"role": "user", "content": "call: patch it"},
        call,
        {"type": "custom_tool_call_output", "call_id": call["call_id"], "output": "Done!"},
    ]);
    let (status, body) = post(
        &url,
        &token,
        "/v1/responses",
        &json!({"model": "anthropic/claude-sonnet-4-5", "stream": true, "tools": tools,
                "input": input}),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let sent = mocks.anthropic.requests().pop().unwrap();
    let turns = sent.body["messages"].as_array().unwrap();
    assert_eq!(turns[1]["content"][0]["type"], "tool_use");
    assert!(turns[1]["content"][0]["input"]["input"].is_string());
    assert_eq!(turns[2]["content"][0]["type"], "tool_result");
}
