//! Deltas (text, thinking, refusal) arrive byte for byte, end to end, whatever their length and
//! characters: around the 24 bytes a delta's text keeps inline (`mythos_protocol::Text`),
//! multi-byte characters across that limit, escapes and control characters, ZWJ emoji, long
//! runs, and JSON written with `\uXXXX` escapes and surrogate pairs (as a server with
//! `ensure_ascii` writes it). Hand-made provider streams in both wire formats, through the
//! socket in both frame encodings and through the three HTTP APIs.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use axum::routing::post;
use mythos_protocol::{ChatRequest, StreamEvent, Thinking};
use mythos_tests::{RawClient, TestEnv};
use serde_json::{json, Value};

/// The deltas each stream sends, in order.
fn pieces() -> Vec<String> {
    let mut v: Vec<String> = vec![
        "a".repeat(24),
        "b".repeat(25),
        "é".repeat(12),
        "é".repeat(13),
        "🦀".repeat(6),
        "🦀".repeat(7),
        format!("x{}", "🦀".repeat(6)),
        format!("xy{}", "漢".repeat(8)),
        "漢字".repeat(50),
        "quote \" backslash \\ nl \n tab \t ctl \u{1} del \u{7f} ls \u{2028}".to_string(),
        "👩‍👩‍👧‍👦🏳️‍🌈👍🏽".to_string(),
        " ".repeat(30),
        "z".repeat(23),
        "w".repeat(10_000),
        "é".repeat(40_000),
        "末尾".to_string(),
    ];
    v.push("ok.".into());
    v
}

fn openai_body(reasoning: bool, refusal: bool, ascii_escape: bool) -> String {
    let mut out = String::new();
    let mut chunk = |delta: Value, finish: Value| {
        let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        let mut s = c.to_string();
        if ascii_escape {
            // As a server with ensure_ascii writes it: \uXXXX with surrogate pairs.
            s = s
                .chars()
                .map(|ch| {
                    if ch.is_ascii() {
                        ch.to_string()
                    } else {
                        let mut buf = [0u16; 2];
                        ch.encode_utf16(&mut buf)
                            .iter()
                            .map(|u| format!("\\u{u:04x}"))
                            .collect()
                    }
                })
                .collect();
        }
        out.push_str(&format!("data: {s}\n\n"));
    };
    chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    if reasoning {
        for p in pieces() {
            chunk(
                json!({"content": null, "reasoning_content": p}),
                Value::Null,
            );
        }
    }
    for p in pieces() {
        if refusal {
            chunk(json!({"content": null, "refusal": p}), Value::Null);
        } else {
            chunk(json!({"content": p}), Value::Null);
        }
    }
    chunk(json!({}), json!("stop"));
    out.push_str("data: [DONE]\n\n");
    out
}

fn anthropic_body(thinking: bool) -> String {
    let mut out = String::new();
    let mut ev = |name: &str, data: Value| {
        out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    };
    ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
        "content": [], "model": "claude-x", "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 3, "output_tokens": 1}}}),
    );
    let mut idx = 0;
    if thinking {
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        );
        for p in pieces() {
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": p}}),
            );
        }
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}}),
        );
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        );
        idx = 1;
    }
    ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": idx, "content_block": {"type": "text", "text": ""}}),
    );
    for p in pieces() {
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": idx, "delta": {"type": "text_delta", "text": p}}),
        );
    }
    ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": idx}),
    );
    ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 20}}),
    );
    ev("message_stop", json!({"type": "message_stop"}));
    out
}

/// A provider on 127.0.0.1 answering either API's path with `body` of the request.
async fn serve(body: fn(&Value) -> String) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let answer = post(move |b: axum::body::Bytes| async move {
        let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from(body(&v)))
            .unwrap()
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", answer.clone())
        .route("/v1/messages", answer);
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

fn prompt_of(v: &Value) -> String {
    v["messages"][0]["content"]
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            v["messages"][0]["content"][0]["text"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn oa(v: &Value) -> String {
    let p = prompt_of(v);
    openai_body(
        p.contains("reason"),
        p.contains("refuse"),
        p.contains("escape"),
    )
}
fn an(v: &Value) -> String {
    anthropic_body(v["thinking"].is_object())
}

async fn daemon_on(api: &str, base: String) -> (TestEnv, mythos_tests::Daemon) {
    let env = TestEnv::new();
    let base = if api == "openai" {
        format!("{base}/v1")
    } else {
        base
    };
    env.write_config(&format!(
        "[[provider]]\nname = \"only\"\napi = \"{api}\"\nbase_url = \"{base}\"\nmodel = \"{}\"\napi_key = \"k\"\n",
        if api == "openai" { "deepseek-chat" } else { "claude-sonnet-4-5" }
    ));
    let d = env.start_daemon(&[]);
    (env, d)
}

fn collect(ev: &[StreamEvent]) -> (String, String, String) {
    let (mut t, mut th, mut r) = (String::new(), String::new(), String::new());
    for e in ev {
        match e {
            StreamEvent::TextDelta { text } => t.push_str(text),
            StreamEvent::ThinkingDelta { text } => th.push_str(text),
            StreamEvent::RefusalDelta { text } => r.push_str(text),
            _ => {}
        }
    }
    (t, th, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_multibyte_deltas_socket_and_http() {
    let want: String = pieces().concat();
    let mut failures = Vec::new();
    for api in ["openai", "anthropic"] {
        let base = serve(if api == "openai" { oa } else { an }).await;
        let (env, _d) = daemon_on(api, base).await;
        // What each hand-made stream sends depends on the prompt (see `oa` and `an`).
        let prompts: &[&str] = if api == "openai" {
            &[
                "plain",
                "reason",
                "refuse",
                "escape",
                "escape reason",
                "escape refuse",
            ]
        } else {
            &["plain", "think"]
        };
        for enc in [
            mythos_protocol::Encoding::Bincode,
            mythos_protocol::Encoding::Json,
        ] {
            let mut c = RawClient::connect_with(&env.socket, enc).await;
            for (k, p) in prompts.iter().enumerate() {
                let mut req = ChatRequest::user_text(k as u64 + 1, *p);
                if *p == "think" {
                    req.options.thinking = Some(Thinking {
                        budget_tokens: Some(2048),
                        display: true,
                    });
                    req.max_tokens = Some(8192);
                }
                let ev = tokio::time::timeout(Duration::from_secs(20), c.chat(req))
                    .await
                    .expect("answer");
                let (t, th, r) = collect(&ev);
                let ok_end = matches!(ev.last(), Some(StreamEvent::Done(_)));
                let (exp_t, exp_th, exp_r) = match *p {
                    "reason" | "escape reason" => (want.clone(), want.clone(), String::new()),
                    "refuse" | "escape refuse" => (String::new(), String::new(), want.clone()),
                    "think" => (want.clone(), want.clone(), String::new()),
                    _ => (want.clone(), String::new(), String::new()),
                };
                for (what, got, exp) in [
                    ("text", &t, &exp_t),
                    ("thinking", &th, &exp_th),
                    ("refusal", &r, &exp_r),
                ] {
                    if got != exp {
                        failures.push(format!("socket {enc:?} {api}/{p} {what}: got {} bytes, want {}; first diff at {:?}", got.len(), exp.len(),
                        got.char_indices().zip(exp.chars()).find(|((_, a), b)| a != b).map(|((i, _), _)| i)));
                    }
                }
                if !ok_end {
                    failures.push(format!("socket {api}/{p}: ended {:?}", ev.last()));
                }
            }
        }
        // HTTP: chat completions and messages, each prompt.
        let (hbase, token) = env.http();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        for p in prompts {
            for path in ["/v1/chat/completions", "/v1/messages", "/v1/responses"] {
                let mut body = if path == "/v1/responses" {
                    json!({"model": "mythos", "stream": true, "input": [{"role": "user", "content": p}]})
                } else {
                    json!({"model": "mythos", "stream": true, "max_tokens": 8192, "messages": [{"role": "user", "content": p}]})
                };
                if *p == "think" {
                    if path == "/v1/messages" {
                        body["thinking"] = json!({"type": "enabled", "budget_tokens": 2048});
                    } else if path == "/v1/chat/completions" {
                        body["reasoning_effort"] = json!("high");
                    } else {
                        body["reasoning"] = json!({"effort": "high"});
                    }
                }
                let r = http
                    .post(format!("{hbase}{path}"))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                let st = r.status();
                let text = r.text().await.unwrap();
                let (mut t, mut th, mut rf) = (String::new(), String::new(), String::new());
                for frame in text.split("\n\n") {
                    for line in frame.lines() {
                        let Some(d) = line.strip_prefix("data: ") else {
                            continue;
                        };
                        let Ok(v) = serde_json::from_str::<Value>(d) else {
                            continue;
                        };
                        let dl = &v["choices"][0]["delta"];
                        t.push_str(dl["content"].as_str().unwrap_or(""));
                        th.push_str(dl["reasoning_content"].as_str().unwrap_or(""));
                        rf.push_str(dl["refusal"].as_str().unwrap_or(""));
                        if v["type"] == "content_block_delta" {
                            t.push_str(v["delta"]["text"].as_str().unwrap_or(""));
                            th.push_str(v["delta"]["thinking"].as_str().unwrap_or(""));
                        }
                        match v["type"].as_str().unwrap_or("") {
                            "response.output_text.delta" => {
                                t.push_str(v["delta"].as_str().unwrap_or(""))
                            }
                            "response.refusal.delta" => {
                                rf.push_str(v["delta"].as_str().unwrap_or(""))
                            }
                            "response.reasoning_text.delta"
                            | "response.reasoning_summary_text.delta" => {
                                th.push_str(v["delta"].as_str().unwrap_or(""))
                            }
                            _ => {}
                        }
                    }
                }
                let all = format!("{t}{rf}");
                let exp_all = want.clone();
                if all != exp_all || st != 200 {
                    failures.push(format!("http {api}{path} {p}: status {st}, text+refusal {} bytes want {}; thinking {} bytes; first diff at {:?}",
                        all.len(), exp_all.len(), th.len(),
                        all.char_indices().zip(exp_all.chars()).find(|((_, a), b)| a != b).map(|((i, _), _)| i)));
                }
                if !th.is_empty() && th != want {
                    failures.push(format!(
                        "http {api}{path} {p}: thinking differs ({} vs {})",
                        th.len(),
                        want.len()
                    ));
                }
            }
        }
    }
    for f in &failures {
        println!("FAIL {f}");
    }
    assert!(failures.is_empty());
}
