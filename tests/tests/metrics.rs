//! `GET /metrics` on the real daemon after a failover: the counters moved as they should, and
//! the text is valid Prometheus exposition format.

use std::time::Duration;

use mythos_protocol::{ChatRequest, SimFault, StreamEvent};
use mythos_tests::Mocks;
use mythosd::metrics::parse_exposition;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_failover() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let (base, _token) = env.http();
    let http = reqwest::Client::new();
    let scrape = || async {
        let resp = http.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let ty = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ty.starts_with("text/plain; version=0.0.4"), "{ty}");
        let text = resp.text().await.unwrap();
        parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    };
    let before = scrape().await;
    assert_eq!(before["mythos_open_streams"], 0.0);

    // The primary is overloaded once: the request fails over to the next provider.
    mocks.anthropic.inject([SimFault::Overloaded]);
    let mut c = env.connect().await;
    let events = c.chat(ChatRequest::user_text(1, "count me")).await;
    assert!(
        matches!(events.last(), Some(StreamEvent::Done(_))),
        "{events:?}"
    );

    let after = scrape().await;
    let get = |k: &str| after.get(k).copied().unwrap_or(0.0);
    assert_eq!(
        get(r#"mythos_requests_total{provider="deepseek",task="chat",outcome="ok"}"#),
        1.0,
        "{after:#?}"
    );
    assert_eq!(
        get(r#"mythos_failovers_total{provider="anthropic",reason="overloaded"}"#),
        1.0
    );
    assert_eq!(
        get(r#"mythos_attempts_total{provider="anthropic",outcome="overloaded"}"#),
        1.0
    );
    assert!(get(r#"mythos_tokens_total{provider="deepseek",kind="output"}"#) > 0.0);
    assert_eq!(
        get(r#"mythos_time_to_first_token_seconds_count{provider="deepseek"}"#),
        1.0
    );
    assert_eq!(
        get(r#"mythos_provider_state{provider="deepseek",state="closed"}"#),
        1.0
    );
    assert_eq!(get("mythos_connected_clients"), 1.0);
}

/// `MYTHOS_LOG_FORMAT=json`: every line of the daemon's log file is one JSON object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let mocks = Mocks::start().await;
    let mut env = mocks.env();
    env.var("MYTHOS_LOG_FORMAT", "json");
    let daemon = env.start_daemon(&[]);
    let mut c = env.connect().await;
    let events = c.chat(ChatRequest::user_text(1, "log me")).await;
    assert!(matches!(events.last(), Some(StreamEvent::Done(_))));
    drop(c);
    daemon.stop();
    let logs = mythos_tests::files_under(&env.state.join("logs"));
    assert!(!logs.is_empty());
    let mut lines = 0;
    for f in logs {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
            lines += 1;
        }
    }
    assert!(lines >= 3, "{lines} log lines");
}

/// A provider's burst reaches the client in a few writes, not one per chunk, on both ways in:
/// the writer and the HTTP body gather what is ready before they write
/// (`mythos_client_writes_total` counts the daemon's writes to client sockets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_goes_out_in_few_writes() {
    let mocks = Mocks::start().await;
    for m in [&mocks.anthropic, &mocks.deepseek, &mocks.openai] {
        // As fast as loopback allows, ~600 chunks per answer.
        m.set_delays(Duration::ZERO, Duration::ZERO);
        m.set_answer_repeat(10);
    }
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let (base, token) = env.http();
    let http = reqwest::Client::new();
    let writes = || async {
        let text = mythos_tests::metrics_text(&http, &base).await;
        let m = parse_exposition(&text).unwrap();
        let get = |front: &str| m[&format!("mythos_client_writes_total{{front=\"{front}\"}}")];
        (get("socket"), get("http"))
    };

    let before = writes().await;
    let mut c = env.connect().await;
    let events = c.chat(ChatRequest::user_text(1, "burst")).await;
    let chunks = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::TextDelta { .. }))
        .count() as f64;
    assert!(chunks > 400.0, "{chunks} chunks");
    let after = writes().await;
    let socket = after.0 - before.0;
    assert!(
        socket <= chunks / 4.0,
        "{socket} writes for {chunks} chunks"
    );

    let body = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"model": "mythos", "stream": true,
                "messages": [{"role": "user", "content": "burst"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let chunks = body.matches("\"content\":\"").count() as f64;
    assert!(chunks > 400.0, "{chunks} chunks");
    let last = writes().await;
    // Less the one write of the scrape's own answer in between.
    let http_writes = last.1 - after.1 - 1.0;
    eprintln!("{http_writes} HTTP writes for {chunks} chunks");
    assert!(
        http_writes <= chunks / 4.0,
        "{http_writes} writes for {chunks} chunks"
    );
}
