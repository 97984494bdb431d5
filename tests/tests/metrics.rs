//! `GET /metrics` on the real daemon after a failover: the counters moved as they should, and
//! the text is valid Prometheus exposition format.

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
