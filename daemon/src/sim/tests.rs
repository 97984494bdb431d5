//! The simulators against the daemon's own HTTP + SSE adapters, over real loopback HTTP.

use std::time::Duration;

use futures_util::StreamExt;
use mythos_protocol::{
    ChatRequest, ContentBlock, ErrorKind, FinishReason, ImageSource, Message, Role, SimFault,
    Thinking, ToolSpec,
};

use super::*;
use crate::config::{ProviderConfig, Secret};
use crate::provider::{
    http_client, Delta, HttpTransport, ProviderError, Transport, UpstreamRequest,
};

async fn sim(flavor: Flavor) -> (SimProvider, HttpTransport) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut o = SimOptions::new("t", flavor);
    o.first_token_delay = Duration::from_millis(2);
    o.token_delay = Duration::ZERO;
    o.keep_alive_every = Duration::from_millis(1);
    o.expect_key = Some("k".into());
    let s = SimProvider::start(l, o).await.unwrap();
    let api = flavor.api();
    let cfg = ProviderConfig {
        api_key: Some(Secret::new("k")),
        simulated: true,
        ..ProviderConfig::new("t", api, s.base_url(), "m")
    };
    (
        s,
        HttpTransport::new(cfg, http_client().expect("http client")),
    )
}

#[derive(Debug, Default)]
struct Got {
    limits: Option<crate::provider::ratelimit::RateLimits>,
    text: String,
    thinking: String,
    signature: String,
    tools: Vec<String>,
    tool_args: String,
    finish: Option<FinishReason>,
    keep_alives: usize,
    error: Option<ProviderError>,
}

async fn run(
    t: &HttpTransport,
    chat: &ChatRequest,
    prefill: Option<&str>,
) -> Result<Got, ProviderError> {
    run_as(t, chat, prefill, "m", 100).await
}

async fn run_as(
    t: &HttpTransport,
    chat: &ChatRequest,
    prefill: Option<&str>,
    model: &str,
    max_tokens: u32,
) -> Result<Got, ProviderError> {
    let req = UpstreamRequest {
        chat,
        model,
        max_tokens,
        prefill,
        prefill_blocks: &[],
        format_in_words: false,
    };
    let mut s = t.open(&req).await?;
    let mut g = Got::default();
    while let Some(d) = s.next().await {
        match d {
            Ok(Delta::Text(x)) => g.text.push_str(&x),
            Ok(Delta::Thinking(x)) => g.thinking.push_str(&x),
            Ok(Delta::ThinkingSignature(x)) => g.signature.push_str(&x),
            Ok(Delta::ToolCallStart { name, .. }) => g.tools.push(name),
            Ok(Delta::ToolCallArgs { json, .. }) => g.tool_args.push_str(&json),
            Ok(Delta::Finish(f)) => g.finish = Some(f),
            Ok(Delta::KeepAlive) => g.keep_alives += 1,
            Ok(Delta::RateLimits(l)) => g.limits = Some(*l),
            Ok(_) => {}
            Err(e) => {
                g.error = Some(e);
                break;
            }
        }
    }
    Ok(g)
}

const ALL: [Flavor; 4] = [
    Flavor::Anthropic,
    Flavor::OpenAi,
    Flavor::DeepSeek,
    Flavor::Gemini,
];

#[tokio::test]
async fn healthy_answers_in_every_flavor() {
    for f in ALL {
        let (s, t) = sim(f).await;
        let g = run(&t, &ChatRequest::user_text(1, "hi there"), None)
            .await
            .unwrap();
        assert_eq!(g.text, answer_for("hi there"), "{f:?}");
        assert_eq!(g.finish, Some(FinishReason::Stop));
        assert!(g.error.is_none());
        assert_eq!(!g.thinking.is_empty(), f == Flavor::DeepSeek);
        assert_eq!(s.stats().completed, 1);
        assert!(s.requests()[0].auth_present);
    }
}

#[tokio::test]
async fn error_statuses_are_classified() {
    for f in ALL {
        let (s, t) = sim(f).await;
        s.inject([
            SimFault::RateLimit {
                retry_after_ms: 60_000,
            },
            SimFault::Overloaded,
            SimFault::Status { code: 500 },
            SimFault::Status { code: 400 },
            SimFault::Status { code: 401 },
        ]);
        let chat = ChatRequest::user_text(1, "x");
        let e = run(&t, &chat, None).await.unwrap_err();
        assert_eq!(
            (e.kind, e.retry_after),
            (ErrorKind::RateLimited, Some(Duration::from_secs(60)))
        );
        assert_eq!(
            run(&t, &chat, None).await.unwrap_err().kind,
            ErrorKind::Overloaded
        );
        assert_eq!(
            run(&t, &chat, None).await.unwrap_err().kind,
            ErrorKind::ServerError
        );
        assert_eq!(
            run(&t, &chat, None).await.unwrap_err().kind,
            ErrorKind::BadRequest
        );
        let e = run(&t, &chat, None).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth);
        assert!(!e.message.contains("k\""));
    }
}

#[tokio::test]
async fn mid_stream_faults() {
    for f in ALL {
        let (s, t) = sim(f).await;
        let chat = ChatRequest::user_text(1, "faults");
        let full = answer_for("faults");
        let first3: String = chunk_answer(&full)[..3].concat();

        s.inject([SimFault::DisconnectAfter { tokens: 3 }]);
        let g = run(&t, &chat, None).await.unwrap();
        assert_eq!(g.text, first3, "{f:?}");
        assert_eq!(g.error.unwrap().kind, ErrorKind::Network, "{f:?}");

        s.inject([SimFault::MalformedAfter { tokens: 3 }]);
        let g = run(&t, &chat, None).await.unwrap();
        assert_eq!(g.text, first3);
        assert_eq!(g.error.unwrap().kind, ErrorKind::Malformed);

        s.inject([SimFault::ErrorEventAfter { tokens: 3 }]);
        let g = run(&t, &chat, None).await.unwrap();
        assert_eq!(g.text, first3);
        let kind = g.error.unwrap().kind;
        assert!(
            matches!(kind, ErrorKind::Overloaded | ErrorKind::ServerError),
            "{kind:?}"
        );
    }
}

/// A cut at the very end: the whole text and its finish reason arrive, then the stream breaks
/// where its terminator should be (Gemini has none: after its last chunk).
#[tokio::test]
async fn a_cut_before_the_terminator_comes_after_the_whole_answer() {
    for f in ALL {
        let (s, t) = sim(f).await;
        let chat = ChatRequest::user_text(1, "the end");
        s.inject([SimFault::CutBeforeTerminator]);
        let g = run(&t, &chat, None).await.unwrap();
        assert_eq!(g.text, answer_for("the end"), "{f:?}");
        assert_eq!(g.finish, Some(FinishReason::Stop), "{f:?}");
        let kind = g.error.map(|e| e.kind);
        assert!(
            matches!(kind, Some(ErrorKind::Network | ErrorKind::Truncated)),
            "{f:?}: {kind:?}"
        );
    }
}

#[tokio::test]
async fn stalls_and_keep_alives_hold_until_the_client_leaves() {
    let (s, t) = sim(Flavor::DeepSeek).await;
    let chat = ChatRequest::user_text(1, "stall");
    s.inject([SimFault::KeepAliveOnly, SimFault::StallAfter { tokens: 2 }]);
    let req = UpstreamRequest {
        chat: &chat,
        model: "m",
        max_tokens: 10,
        prefill: None,
        prefill_blocks: &[],
        format_in_words: false,
    };
    let mut st = t.open(&req).await.unwrap();
    // The response headers come first (here: no quotas announced).
    assert!(matches!(st.next().await, Some(Ok(Delta::RateLimits(_)))));
    for _ in 0..3 {
        assert_eq!(st.next().await.unwrap().unwrap(), Delta::KeepAlive);
    }
    drop(st);
    tokio::time::timeout(Duration::from_secs(5), s.wait_for_aborted(1))
        .await
        .unwrap();

    let mut st = t.open(&req).await.unwrap();
    let mut texts = 0;
    while texts < 2 {
        if let Delta::Text(_) = st.next().await.unwrap().unwrap() {
            texts += 1;
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), st.next())
            .await
            .is_err(),
        "silent"
    );
    drop(st);
    tokio::time::timeout(Duration::from_secs(5), s.wait_for_aborted(2))
        .await
        .unwrap();
    assert_eq!(s.stats().active, 0);
}

#[tokio::test]
async fn continuation_by_prefill_and_by_instruction() {
    let prompt = "continue";
    let full = answer_for(prompt);
    let cut = chunk_answer(&full)[..5].concat();
    for f in ALL {
        let (_s, t) = sim(f).await;
        // The adapters trim the prefill for Anthropic; the remainder then starts with the space.
        let g = run(&t, &ChatRequest::user_text(1, prompt), Some(&cut))
            .await
            .unwrap();
        assert_eq!(format!("{}{}", cut.trim_end(), g.text), full, "{f:?}");
    }
    // A raw request whose prefill ends in whitespace is refused, as the real API does.
    let (s, _) = sim(Flavor::Anthropic).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/messages", s.base_url()))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .body(r#"{"model":"m","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"This "}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn tool_calls_stream_their_arguments() {
    // Gemini sends its calls whole: one fragment, the same arguments.
    for f in [Flavor::Anthropic, Flavor::OpenAi, Flavor::Gemini] {
        let (_s, t) = sim(f).await;
        let mut chat = ChatRequest::user_text(1, "call: write it");
        chat.tools.push(ToolSpec {
            name: "write".into(),
            description: String::new(),
            input_schema_json: "{\"type\":\"object\"}".into(),
        });
        chat.messages.insert(
            0,
            Message {
                role: Role::User,
                content: vec![ContentBlock::Text {
                    text: "earlier".into(),
                }],
            },
        );
        let g = run(&t, &chat, None).await.unwrap();
        assert_eq!(g.finish, Some(FinishReason::ToolUse));
        let v: serde_json::Value = serde_json::from_str(&g.tool_args).unwrap();
        assert_eq!(v["text"], answer_for("call: write it"));
    }
}

#[tokio::test]
async fn quotas_are_enforced_and_announced_in_each_format() {
    use crate::provider::ratelimit::QuotaKind;
    for flavor in ALL {
        let (s, t) = sim(flavor).await;
        s.set_quota(Some(SimQuota::requests(2, Duration::from_secs(60))));
        let chat = ChatRequest::user_text(1, "count me");
        let g = run(&t, &chat, None).await.unwrap();
        // Google sends no quota headers: its 429 says when in the body's `retryDelay`.
        let headers = flavor != Flavor::Gemini;
        if headers {
            let req = *g.limits.unwrap().get(QuotaKind::Requests).unwrap();
            assert_eq!((req.limit, req.remaining), (Some(2), Some(1)), "{flavor:?}");
        }
        run(&t, &chat, None).await.unwrap();
        // The third in the same minute: 429, saying when, with the quota headers.
        let e = run(&t, &chat, None).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::RateLimited, "{flavor:?}");
        let wait = e.retry_after.unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        if headers {
            let limits = e.limits.unwrap();
            assert_eq!(limits.get(QuotaKind::Requests).unwrap().remaining, Some(0));
        }
        assert_eq!(s.stats().over_quota, 1);
    }
}

#[tokio::test]
async fn chaos_fails_the_way_providers_do() {
    let (s, t) = sim(Flavor::OpenAi).await;
    s.set_chaos(Some(SimChaos {
        bad_gateway: 1.0,
        ..SimChaos::default()
    }));
    let chat = ChatRequest::user_text(1, "x");
    let e = run(&t, &chat, None).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::ServerError, Some(502)));
    assert!(e.message.contains("502 Bad Gateway"), "{}", e.message);
    s.set_chaos(None);
    assert!(run(&t, &chat, None).await.unwrap().error.is_none());
}

#[tokio::test]
async fn only_recent_requests_are_kept() {
    let (s, t) = sim(Flavor::OpenAi).await;
    let chat = ChatRequest::user_text(1, "big prompt ".repeat(1000));
    for _ in 0..(KEEP_REQUESTS + 10) {
        run(&t, &chat, None).await.unwrap();
    }
    assert_eq!(s.requests().len(), KEEP_REQUESTS);
    assert_eq!(s.stats().requests, KEEP_REQUESTS as u64 + 10);
}

fn tool(name: &str) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        description: String::new(),
        input_schema_json: "{\"type\":\"object\"}".into(),
    }
}

fn thinking(budget: u32) -> Option<Thinking> {
    Some(Thinking {
        budget_tokens: Some(budget),
        display: true,
    })
}

/// A raw request to a simulated provider, bypassing the adapters: (status, body).
async fn raw(s: &SimProvider, body: serde_json::Value) -> (u16, String) {
    let anthropic = s.base_url().ends_with(&s.addr().to_string());
    let c = reqwest::Client::new();
    let req = if anthropic {
        c.post(format!("{}/v1/messages", s.base_url()))
            .header("x-api-key", "k")
            .header("anthropic-version", "2023-06-01")
    } else {
        c.post(format!("{}/chat/completions", s.base_url()))
            .header("authorization", "Bearer k")
    };
    let resp = req.body(body.to_string()).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn anthropic_thinking_is_signed_and_only_its_own_signature_comes_back() {
    let (s, t) = sim(Flavor::Anthropic).await;
    let mut chat = ChatRequest::user_text(1, "why");
    chat.temperature = Some(0.7);
    chat.options.thinking = thinking(2000);
    let g = run_as(&t, &chat, None, "claude-sim-1", 8000).await.unwrap();
    assert_eq!(g.thinking, "Considering the question.");
    assert_eq!(g.signature, sim_thinking_signature(&g.thinking));
    assert_eq!(g.text, answer_for("why"));
    let sent = &s.requests()[0].body;
    assert_eq!(sent["thinking"]["budget_tokens"], 2000);
    assert!(sent.get("temperature").is_none());

    // The next turn with the signed thinking is accepted; a forged signature is not.
    let turn = |signature: Option<String>| {
        let mut next = chat.clone();
        next.messages.push(Message {
            role: Role::Assistant,
            content: vec![
                ContentBlock::Thinking {
                    text: g.thinking.clone(),
                    signature,
                },
                ContentBlock::Text {
                    text: g.text.clone(),
                },
            ],
        });
        next.messages.push(Message::text(Role::User, "and then"));
        next
    };
    let ok = run_as(
        &t,
        &turn(Some(g.signature.clone())),
        None,
        "claude-sim-1",
        8000,
    )
    .await;
    assert_eq!(ok.unwrap().text, answer_for("and then"));
    let forged = run_as(
        &t,
        &turn(Some("EqQBforged".into())),
        None,
        "claude-sim-1",
        8000,
    )
    .await;
    let e = forged.unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("signature"), "{}", e.message);
    // Another provider's thinking (no signature) is left out by the adapter, not refused.
    let foreign = run_as(&t, &turn(None), None, "claude-sim-1", 8000).await;
    assert_eq!(foreign.unwrap().text, answer_for("and then"));

    // What the adapter never sends, the simulator refuses as the API does.
    let base = serde_json::json!({"model": "claude-sim-1", "stream": true, "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "messages": [{"role": "user", "content": "hi"}]});
    for (field, value) in [
        ("temperature", serde_json::json!(0.5)),
        ("max_tokens", serde_json::json!(2000)),
        (
            "thinking",
            serde_json::json!({"type": "enabled", "budget_tokens": 500}),
        ),
        ("tool_choice", serde_json::json!({"type": "any"})),
    ] {
        let mut body = base.clone();
        body[field] = value;
        let (status, text) = raw(&s, body).await;
        assert_eq!(status, 400, "{field}: {text}");
        assert!(text.contains("invalid_request_error"), "{text}");
    }
    let mut prefilled = base.clone();
    prefilled["messages"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"role": "assistant", "content": "This"}));
    assert_eq!(raw(&s, prefilled).await.0, 400);
    assert_eq!(raw(&s, base).await.0, 200);
}

#[tokio::test]
async fn thinking_in_a_tool_loop_survives_a_change_of_provider() {
    let (s, t) = sim(Flavor::Anthropic).await;
    let mut chat = ChatRequest::user_text(1, "call: look");
    chat.tools.push(tool("look"));
    chat.options.thinking = thinking(2000);
    let g = run_as(&t, &chat, None, "claude-sim-1", 8000).await.unwrap();
    assert_eq!(g.tools, ["look"]);
    assert!(!g.signature.is_empty());
    let result = Message {
        role: Role::User,
        content: vec![ContentBlock::ToolResult {
            tool_use_id: "toolu_1".into(),
            content: "seen".into(),
            is_error: false,
            images: Vec::new(),
        }],
    };
    let call = ContentBlock::ToolUse {
        id: "toolu_1".into(),
        name: "look".into(),
        input_json: g.tool_args.clone(),
    };
    // Our own signed turn: thinking stays on.
    let mut own = chat.clone();
    own.messages.push(Message {
        role: Role::Assistant,
        content: vec![
            ContentBlock::Thinking {
                text: g.thinking.clone(),
                signature: Some(g.signature.clone()),
            },
            call.clone(),
        ],
    });
    own.messages.push(result.clone());
    run_as(&t, &own, None, "claude-sim-1", 8000).await.unwrap();
    assert!(s.requests().last().unwrap().body["thinking"].is_object());
    // A turn DeepSeek wrote (unsigned thinking): the API would refuse thinking, so it is off.
    let mut foreign = chat.clone();
    foreign.messages.push(Message {
        role: Role::Assistant,
        content: vec![
            ContentBlock::Thinking {
                text: "deepseek thoughts".into(),
                signature: None,
            },
            call,
        ],
    });
    foreign.messages.push(result);
    let g = run_as(&t, &foreign, None, "claude-sim-1", 8000)
        .await
        .unwrap();
    assert!(g.error.is_none());
    assert!(s.requests().last().unwrap().body.get("thinking").is_none());
}

#[tokio::test]
async fn deepseek_reasoning_mode_wants_reasoning_on_tool_call_turns() {
    let (s, t) = sim(Flavor::DeepSeek).await;
    let mut chat = ChatRequest::user_text(1, "call: fetch");
    chat.tools.push(tool("fetch"));
    // Reasoning mode (the model is a reasoner): reasoning comes before the tool call too.
    let g = run_as(&t, &chat, None, "deepseek-reasoner", 100)
        .await
        .unwrap();
    assert_eq!(g.thinking, "Considering the question.");
    assert_eq!(g.tools, ["fetch"]);
    assert_eq!(g.finish, Some(FinishReason::ToolUse));
    // Not in reasoning mode: the tool call comes straight away, as before.
    let g = run_as(&t, &chat, None, "deepseek-chat", 100).await.unwrap();
    assert!(g.thinking.is_empty());

    // The tool-call turn goes back with its reasoning (even one another provider wrote).
    chat.messages.push(Message {
        role: Role::Assistant,
        content: vec![ContentBlock::ToolUse {
            id: "call_1".into(),
            name: "fetch".into(),
            input_json: "{}".into(),
        }],
    });
    chat.messages.push(Message {
        role: Role::User,
        content: vec![ContentBlock::ToolResult {
            tool_use_id: "call_1".into(),
            content: "page".into(),
            is_error: false,
            images: Vec::new(),
        }],
    });
    let g = run_as(&t, &chat, None, "deepseek-reasoner", 100)
        .await
        .unwrap();
    assert!(g.error.is_none());
    assert_eq!(
        s.requests().last().unwrap().body["messages"][1]["reasoning_content"],
        ""
    );

    // Without it, the simulator refuses, as DeepSeek does.
    let body = serde_json::json!({"model": "deepseek-reasoner", "stream": true, "messages": [
        {"role": "user", "content": "call: fetch"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "fetch", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "page"}]});
    let (status, text) = raw(&s, body.clone()).await;
    assert_eq!(status, 400);
    assert!(text.contains("reasoning_content"), "{text}");
    let mut chat_model = body;
    chat_model["model"] = "deepseek-chat".into();
    assert_eq!(raw(&s, chat_model).await.0, 200);
}

#[tokio::test]
async fn images_arrive_in_every_flavor() {
    let mut chat = ChatRequest::user_text(1, "look");
    chat.messages[0].content.extend([
        ContentBlock::Image {
            source: ImageSource::Base64 {
                media_type: "image/png".into(),
                data: "iVBORw0KGgo=".into(),
            },
        },
        ContentBlock::Image {
            source: ImageSource::Url {
                url: "data:image/jpeg;base64,/9j/4AAQ".into(),
            },
        },
    ]);
    chat.messages.push(Message {
        role: Role::Assistant,
        content: vec![ContentBlock::ToolUse {
            id: "c1".into(),
            name: "shot".into(),
            input_json: "{}".into(),
        }],
    });
    chat.messages.push(Message {
        role: Role::User,
        content: vec![
            ContentBlock::ToolResult {
                tool_use_id: "c1".into(),
                content: "screenshot".into(),
                is_error: false,
                images: vec![ImageSource::Url {
                    url: "https://example.invalid/s.png".into(),
                }],
            },
            ContentBlock::Text {
                text: "what is it".into(),
            },
        ],
    });
    for f in ALL {
        let (_s, t) = sim(f).await;
        let g = run(&t, &chat, None).await.unwrap();
        assert!(g.error.is_none(), "{f:?}: {:?}", g.error);
        assert_eq!(
            g.text,
            format!("I see 3 image(s). {}", answer_for("what is it")),
            "{f:?}"
        );
    }
    // A data: URL where the API wants a fetchable one is refused, as Anthropic does.
    let (s, _) = sim(Flavor::Anthropic).await;
    let body = serde_json::json!({"model": "m", "stream": true, "max_tokens": 10, "messages": [
        {"role": "user", "content": [{"type": "image", "source": {"type": "url",
            "url": "data:image/png;base64,AA"}}]}]});
    assert_eq!(raw(&s, body).await.0, 400);
    // An image in a tool message is refused, as most OpenAI-compatible servers do.
    let (s, _) = sim(Flavor::OpenAi).await;
    let body = serde_json::json!({"model": "m", "stream": true, "messages": [
        {"role": "tool", "tool_call_id": "c", "content": [{"type": "image_url",
            "image_url": {"url": "https://x/y.png"}}]}]});
    assert_eq!(raw(&s, body).await.0, 400);
}

#[tokio::test]
async fn tool_names_the_apis_refuse_go_out_fitted_and_come_back_as_defined() {
    let long = format!("mcp__files__{}", "read_the_whole_file_".repeat(4));
    for f in ALL {
        let (s, t) = sim(f).await;
        let mut chat = ChatRequest::user_text(1, "call: it");
        chat.tools = vec![tool(&long), tool("a.b")];
        let g = run(&t, &chat, None).await.unwrap();
        assert_eq!(g.tools, std::slice::from_ref(&long), "{f:?}");
        let sent = &s.requests()[0].body["tools"][0];
        let wire = sent["name"]
            .as_str()
            .or_else(|| sent["function"]["name"].as_str())
            .or_else(|| sent["functionDeclarations"][0]["name"].as_str())
            .unwrap();
        assert!(crate::provider::toolnames::is_valid(wire), "{wire}");
        assert_ne!(wire, long);
    }
}

/// A raw request to the Gemini-flavour simulator: (status, body).
async fn raw_gemini(s: &SimProvider, query: &str, body: serde_json::Value) -> (u16, String) {
    let url = format!(
        "{}/v1beta/models/gemini-sim-flash:streamGenerateContent?{query}",
        s.base_url()
    );
    let resp = reqwest::Client::new()
        .post(url)
        .header("x-goog-api-key", "k")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn gemini_refuses_what_the_real_api_refuses() {
    let (s, t) = sim(Flavor::Gemini).await;
    let hi = serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    assert_eq!(raw_gemini(&s, "alt=sse", hi.clone()).await.0, 200);
    assert_eq!(
        raw_gemini(&s, "alt=sse&key=k", hi.clone()).await.0,
        400,
        "key in the URL"
    );
    assert_eq!(raw_gemini(&s, "", hi).await.0, 400, "not SSE");
    let strict = serde_json::json!({
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "object",
            "properties": {"a": {"type": "string"}}, "additionalProperties": false}}]}]});
    let (status, body) = raw_gemini(&s, "alt=sse", strict).await;
    assert_eq!(status, 400);
    assert!(
        body.contains("INVALID_ARGUMENT") && body.contains("additionalProperties"),
        "{body}"
    );
    let empty = serde_json::json!({"contents": [{"role": "model", "parts": []}]});
    assert_eq!(raw_gemini(&s, "alt=sse", empty).await.0, 400);

    // The adapter's cleaning gets a strict schema through, and thoughts stream when asked.
    let mut chat = ChatRequest::user_text(1, "call: go");
    chat.tools.push(ToolSpec {
        name: "go".into(),
        description: String::new(),
        input_schema_json: r#"{"$schema":"x","type":"object","properties":{"text":{"type":"string","const":"a"}},"additionalProperties":false}"#.into(),
    });
    let g = run(&t, &chat, None).await.unwrap();
    assert_eq!(g.tools, ["go"]);
    assert_eq!(g.finish, Some(FinishReason::ToolUse));
    let mut chat = ChatRequest::user_text(1, "why");
    chat.options.thinking = thinking(2000);
    let g = run(&t, &chat, None).await.unwrap();
    assert_eq!(g.thinking, "Considering the question.");
    assert_eq!(g.text, answer_for("why"));
    let sent = s.requests().last().unwrap().body.clone();
    assert_eq!(
        sent["generationConfig"]["thinkingConfig"]["includeThoughts"],
        true
    );
}

/// A finished answer leaves its connection for the next request, in every format, also when
/// the server writes the body's end apart from its last event (`[DONE]`, `message_stop`): a
/// body dropped at the last event makes hyper close the connection, and each request then pays
/// for a new one (with a real provider, a TLS handshake). (Gemini's stream has no last event
/// before the body's end: it is here to keep it that way.)
#[tokio::test]
async fn a_finished_answer_leaves_its_connection_for_the_next_request() {
    for flavor in [
        Flavor::OpenAi,
        Flavor::DeepSeek,
        Flavor::Anthropic,
        Flavor::Gemini,
    ] {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut o = SimOptions::new("t", flavor);
        o.first_token_delay = Duration::ZERO;
        o.token_delay = Duration::ZERO;
        o.end_linger = Duration::from_millis(20);
        o.expect_key = Some("k".into());
        let s = SimProvider::start(l, o).await.unwrap();
        let cfg = ProviderConfig {
            api_key: Some(Secret::new("k")),
            simulated: true,
            ..ProviderConfig::new("t", flavor.api(), s.base_url(), "m")
        };
        let t = HttpTransport::new(cfg, http_client().unwrap());
        let chat = ChatRequest::user_text(1, "hello there");
        for _ in 0..4 {
            let got = run(&t, &chat, None).await.unwrap();
            assert!(!got.text.is_empty(), "{flavor:?}: {got:?}");
            // The next request comes once the server has written the end of this body (a
            // moment for it to be read on our side): as an agent's next turn comes, later.
            while s.stats().active > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(s.stats().connections, 1, "{flavor:?}");
    }
}

/// Structured output through every adapter to every simulator, fresh and as a continuation:
/// natively where the adapter asks natively (the simulators refuse what the real APIs refuse),
/// in words elsewhere, and the answer is the schema's JSON each time.
#[tokio::test]
async fn structured_output_in_every_flavor() {
    let schema = serde_json::json!({"type": "object", "additionalProperties": false,
        "properties": {"title": {"type": "string"}, "n": {"type": "integer"},
                       "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["title", "n", "tags"]});
    let mut chat = ChatRequest::user_text(1, "shape it");
    chat.options.response_format = Some(mythos_protocol::ResponseFormat::JsonSchema {
        name: "shape".into(),
        description: None,
        schema_json: schema.to_string(),
        strict: Some(true),
    });
    let want = json_answer_for("shape it", &schema);
    for (f, model) in [
        (Flavor::Anthropic, "claude-sonnet-4-5"),
        (Flavor::Anthropic, "claude-3-7-sonnet-latest"),
        (Flavor::OpenAi, "gpt-4o"),
        (Flavor::DeepSeek, "deepseek-chat"),
        (Flavor::Gemini, "gemini-2.5-flash"),
    ] {
        let (s, t) = sim(f).await;
        let g = run_as(&t, &chat, None, model, 4096).await.unwrap();
        assert!(g.error.is_none(), "{f:?} {model}: {:?}", g.error);
        assert_eq!(g.text, want, "{f:?} {model}");
        // A continuation of the first part, in words.
        let half = &want[..want.len() / 2];
        let g = run_as(&t, &chat, Some(half), model, 4096).await.unwrap();
        assert!(g.error.is_none(), "{f:?} {model}: {:?}", g.error);
        assert_eq!(format!("{half}{}", g.text), want, "{f:?} {model} continued");
        assert_eq!(s.stats().completed, 2);
    }
}
