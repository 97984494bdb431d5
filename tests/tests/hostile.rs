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
