//! Hostile clients and bad days, against the real binaries: each case states what a user needs
//! (the daemon stays up, other sessions go on, nothing leaks) and checks it.

use std::time::Duration;

use mythos_protocol::{ChatRequest, ErrorKind, Request, Response, StreamEvent};
use mythos_tests::{text_of, Mocks, RawClient};
use mythosd::sim::answer_for;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A 14-byte frame whose string claims 32 TiB used to abort the daemon (and every stream with
/// it). Now it costs its sender the connection, and nobody else anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_claiming_terabytes_drops_one_client_only() {
    let mocks = Mocks::start().await;
    mocks
        .anthropic
        .set_delays(Duration::from_millis(5), Duration::from_millis(20));
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    // Another session is mid-answer.
    let mut other = RawClient::connect(&env.socket).await;
    other
        .send(Request::Chat(ChatRequest::user_text(1, "keep streaming")))
        .await;
    for claim in [1u64 << 45, 1u64 << 63] {
        let mut c = RawClient::connect(&env.socket).await;
        let mut frame = vec![0u8, 0, 0, 10, 4, 253];
        frame.extend_from_slice(&claim.to_le_bytes());
        c.framed.get_mut().write_all(&frame).await.unwrap();
        match c.recv().await {
            Response::Error { kind, .. } => assert_eq!(kind, ErrorKind::Protocol),
            other => panic!("{other:?}"),
        }
        let mut rest = Vec::new();
        let _ = c.framed.get_mut().read_to_end(&mut rest).await;
    }
    // The other session's answer arrives whole.
    let mut events = Vec::new();
    loop {
        if let Response::Event { event, .. } = other.recv().await {
            let end = matches!(event, StreamEvent::Done { .. } | StreamEvent::Error { .. });
            events.push(event);
            if end {
                break;
            }
        }
    }
    assert_eq!(text_of(&events), answer_for("keep streaming"));
    let mut c = RawClient::connect(&env.socket).await;
    assert!(!c.status().await.providers.is_empty());
}

/// Every place a provider can put the key back into our words: a 400 body, an in-stream error
/// event, on every provider. None of it may reach the user, the logs or the state database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_echoed_by_providers_never_leave_the_daemon() {
    use mythos_protocol::SimFault;
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let daemon = env.start_daemon(&[]);
    let keys = ["key-anthropic", "key-deepseek", "key-openai"];
    let mut seen = String::new();
    for sim in [&mocks.anthropic, &mocks.deepseek, &mocks.openai] {
        sim.inject([SimFault::EchoKey { in_stream: true }]);
    }
    // In-stream echoes on every provider: the answer still arrives.
    let out = env.mythos(&["ask", "tell me a secret"]);
    seen.push_str(&String::from_utf8_lossy(&out.stdout));
    seen.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{seen}");
    // A 400 body that echoes the headers goes back to the user, scrubbed.
    for (name, sim) in [
        ("anthropic", &mocks.anthropic),
        ("deepseek", &mocks.deepseek),
        ("openai", &mocks.openai),
    ] {
        sim.inject([SimFault::EchoKey { in_stream: false }]);
        let out = env.mythos(&["ask", "--provider", name, "again"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("***"), "{err}");
        seen.push_str(&err);
    }
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["why", "last"],
        &["why", "1"],
        &["usage"],
    ] {
        let out = env.mythos(args);
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
        seen.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let mut c = RawClient::connect(&env.socket).await;
    seen.push_str(&format!("{:?}", c.status().await));
    drop(c);
    assert!(daemon.stop().success());
    for key in keys {
        assert!(!seen.contains(key), "{key} reached the user: {seen}");
    }
    for file in walk(&env.state) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for key in keys {
            assert!(!text.contains(key), "{key} leaked into {}", file.display());
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A continuing model that repeats the last words it saw, verbatim or with other capitals and
/// spacing, on each wire format: the user reads every word once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuations_that_repeat_the_tail_are_shown_once() {
    use mythos_protocol::SimFault;
    use mythosd::sim::SimContinuation;
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let mut c = RawClient::connect(&env.socket).await;
    let cases = [
        (3, false, "repeats three words"),
        (2, true, "repeats two, shouting and spaced out"),
        (5, false, "repeats five"),
    ];
    for (n, (words, vary, case)) in cases.into_iter().enumerate() {
        for sim in [&mocks.anthropic, &mocks.deepseek, &mocks.openai] {
            sim.set_continuation(SimContinuation {
                repeat_words: words,
                vary,
            });
            // Whichever is asked first breaks after 9 chunks; the next continues it.
            sim.inject([SimFault::DisconnectAfter { tokens: 9 }]);
        }
        let prompt = format!("seam case {n}");
        let ev = c.chat(ChatRequest::user_text(n as u64 + 1, &prompt)).await;
        assert_eq!(text_of(&ev), answer_for(&prompt), "{case}");
        assert!(
            ev.iter().any(|e| matches!(e, StreamEvent::Rerouted { .. })),
            "{case}: no reroute happened"
        );
        for sim in [&mocks.anthropic, &mocks.deepseek, &mocks.openai] {
            // Faults not used by this case must not leak into the next.
            sim.clear_faults();
        }
    }
}
