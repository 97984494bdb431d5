//! The simulators against the daemon's own HTTP + SSE adapters, over real loopback HTTP.

use std::time::Duration;

use futures_util::StreamExt;
use mythos_protocol::{
    ChatRequest, ContentBlock, ErrorKind, FinishReason, Message, Role, SimFault, ToolSpec,
};

use super::*;
use crate::config::{Api, ProviderConfig, Secret};
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
    let api = if flavor == Flavor::Anthropic {
        Api::Anthropic
    } else {
        Api::Openai
    };
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
    let req = UpstreamRequest {
        chat,
        model: "m",
        max_tokens: 100,
        prefill,
    };
    let mut s = t.open(&req).await?;
    let mut g = Got::default();
    while let Some(d) = s.next().await {
        match d {
            Ok(Delta::Text(x)) => g.text.push_str(&x),
            Ok(Delta::Thinking(x)) => g.thinking.push_str(&x),
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

const ALL: [Flavor; 3] = [Flavor::Anthropic, Flavor::OpenAi, Flavor::DeepSeek];

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
    for f in [Flavor::Anthropic, Flavor::OpenAi] {
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
        let req = *g.limits.unwrap().get(QuotaKind::Requests).unwrap();
        assert_eq!((req.limit, req.remaining), (Some(2), Some(1)), "{flavor:?}");
        run(&t, &chat, None).await.unwrap();
        // The third in the same minute: 429, saying when, with the quota headers.
        let e = run(&t, &chat, None).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::RateLimited, "{flavor:?}");
        let wait = e.retry_after.unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        let limits = e.limits.unwrap();
        assert_eq!(limits.get(QuotaKind::Requests).unwrap().remaining, Some(0));
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
