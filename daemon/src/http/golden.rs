//! Golden bytes of the three stream encoders: a few answers (text; thinking, a signature and
//! tool calls; a bare signature; a failure; a restart after visible text; the token limit;
//! keep-alives) encoded by each, compared byte for byte with `daemon/testdata/http-golden/`.
//! An encoder change that moves a byte shows up here; if the change is meant, rewrite the files
//! with `MYTHOS_UPDATE_GOLDEN=1` and say in the commit why no client minds.

use std::time::Duration;

use bytes::BytesMut;
use mythos_protocol::{DoneInfo, ErrorKind, FinishReason, RerouteMode, StreamEvent, Usage};
use serde_json::Map;

use super::chat::stream::ChatEncoder;
use super::messages::stream::MessagesEncoder;
use super::relay::{Encoder, Head};
use super::responses::stream::ResponsesEncoder;

fn head() -> Head {
    Head {
        provider: "p".into(),
        model: "m-1".into(),
        record: 42,
        reroutes: 0,
        overhead: Duration::ZERO,
    }
}

fn text(t: &str) -> StreamEvent {
    StreamEvent::TextDelta { text: t.into() }
}

fn usage() -> Usage {
    Usage {
        input_tokens: 10,
        output_tokens: 5,
        cache_read_input_tokens: 3,
        cache_creation_input_tokens: 2,
        web_searches: 1,
    }
}

fn done(finish: FinishReason) -> StreamEvent {
    StreamEvent::Done(Box::new(DoneInfo {
        finish,
        usage: usage(),
        cost_usd: 0.0,
        latency_ms: 1,
        provider: "p".into(),
        model: "m-2".into(),
        record: 42,
    }))
}

/// Each scenario: a name and its events (`None` stands for a keep-alive).
fn scenarios() -> Vec<(&'static str, Vec<Option<StreamEvent>>)> {
    let tool = |index: u32, id: &str, name: &str| StreamEvent::ToolCallStart {
        index,
        id: id.into(),
        name: name.into(),
    };
    let args = |index: u32, json: &str| StreamEvent::ToolCallDelta {
        index,
        json: json.into(),
    };
    vec![
        (
            "text",
            vec![
                Some(text("Hello")),
                Some(text("")),
                Some(text(", \"world\"\n\t\u{1}é✓")),
                Some(StreamEvent::Usage(usage())),
                Some(done(FinishReason::Stop)),
            ],
        ),
        (
            "thinking_tools",
            vec![
                Some(StreamEvent::ThinkingDelta {
                    text: "Let me think".into(),
                }),
                Some(StreamEvent::ThinkingDelta {
                    text: " about it.".into(),
                }),
                Some(StreamEvent::ThinkingSignature {
                    signature: "c2ln".into(),
                }),
                Some(text("Calling tools.")),
                Some(tool(0, "call_a", "get_weather")),
                Some(args(0, "{\"city\":")),
                Some(args(0, "\"Paris\"}")),
                Some(tool(1, "call_b", "apply_patch")),
                Some(args(1, "{\"input\":\"*** Begin Patch\"}")),
                Some(tool(2, "call_c", "noargs")),
                Some(StreamEvent::Usage(usage())),
                Some(done(FinishReason::ToolUse)),
            ],
        ),
        (
            "bare_signature",
            vec![
                Some(StreamEvent::ThinkingSignature {
                    signature: "c2ln".into(),
                }),
                Some(text("Answer.")),
                Some(done(FinishReason::Stop)),
            ],
        ),
        (
            "failure",
            vec![
                None,
                Some(StreamEvent::Queued {
                    reason: "busy".into(),
                    until_unix_ms: None,
                    deadline_unix_ms: 0,
                }),
                Some(text("Part")),
                Some(StreamEvent::Error {
                    kind: ErrorKind::RateLimited,
                    message: "all providers are rate limited".into(),
                    retry_at_unix_ms: None,
                }),
            ],
        ),
        (
            "restart",
            vec![
                Some(StreamEvent::ThinkingDelta { text: "hmm".into() }),
                Some(StreamEvent::Rerouted {
                    from: "a".into(),
                    to: "b".into(),
                    reason: "timeout".into(),
                    mode: RerouteMode::Restart,
                }),
                Some(text("Part")),
                Some(StreamEvent::Rerouted {
                    from: "b".into(),
                    to: "c".into(),
                    reason: "timeout".into(),
                    mode: RerouteMode::Restart,
                }),
            ],
        ),
        (
            "max_tokens",
            vec![Some(text("Cut")), None, Some(done(FinishReason::MaxTokens))],
        ),
    ]
}

/// The encoded stream, with the clock's reading (`created`, `created_at`) taken out.
fn encode<E: Encoder>(start: impl Fn() -> (E, BytesMut), events: &[Option<StreamEvent>]) -> String {
    let (mut enc, mut out) = start();
    for ev in events {
        let over = match ev {
            Some(ev) => enc.event(ev.clone(), &mut out),
            None => {
                enc.keepalive(&mut out);
                false
            }
        };
        if over {
            break;
        }
    }
    let text = String::from_utf8(out.to_vec()).expect("UTF-8");
    let mut clean = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("\"created") {
        let (head, tail) = rest.split_at(at);
        clean.push_str(head);
        let colon = tail.find(':').expect("a key") + 1;
        clean.push_str(&tail[..colon]);
        clean.push('0');
        rest = tail[colon..].trim_start_matches(|c: char| c.is_ascii_digit());
    }
    clean.push_str(rest);
    clean
}

fn check(api: &str, name: &str, got: &str) {
    let path = format!(
        "{}/testdata/http-golden/{api}_{name}.sse",
        env!("CARGO_MANIFEST_DIR")
    );
    if std::env::var_os("MYTHOS_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).expect("write the golden file");
        return;
    }
    let want = std::fs::read_to_string(&path).expect("the golden file");
    assert!(
        got == want,
        "{api} {name} differs from {path}:\n--- got\n{got}\n--- want\n{want}"
    );
}

#[test]
fn messages_stream_bytes() {
    let head = head();
    for (name, events) in scenarios() {
        let got = encode(|| MessagesEncoder::start(&head, 7, true), &events);
        check("messages", name, &got);
    }
}

#[test]
fn chat_stream_bytes() {
    let head = head();
    for (name, events) in scenarios() {
        let got = encode(|| ChatEncoder::start(&head, true), &events);
        check("chat", name, &got);
    }
}

#[test]
fn responses_stream_bytes() {
    let head = head();
    for (name, events) in scenarios() {
        let echo = Map::new();
        let custom = vec!["apply_patch".to_string()];
        let got = encode(
            || ResponsesEncoder::start_with(&head, echo.clone(), custom.clone(), false),
            &events,
        );
        check("responses", name, &got);
    }
}
