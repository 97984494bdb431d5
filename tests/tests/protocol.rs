//! Bad input on the socket: each gets a typed answer or a clean close, and the daemon keeps
//! serving other clients (checked after every case, in the same test).

use futures_util::{SinkExt, StreamExt};
use mythos_protocol::codec::FrameCodec;
use mythos_protocol::{
    ChatRequest, Encoding, ErrorKind, Hello, HelloReply, Request, Response, StreamEvent,
    MAX_HELLO_LEN,
};
use mythos_tests::{connect_raw, RawClient, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Framed;

async fn still_serving(env: &TestEnv) {
    let mut c = RawClient::connect(&env.socket).await;
    let s = c.status().await;
    assert!(!s.providers.is_empty());
}

/// Read one JSON hello reply from a raw stream.
async fn read_reply(stream: interprocess::local_socket::tokio::Stream) -> Option<HelloReply> {
    let mut f = Framed::new(
        stream,
        FrameCodec::<HelloReply, Hello>::new(Encoding::Json, MAX_HELLO_LEN),
    );
    match tokio::time::timeout(std::time::Duration::from_secs(10), f.next()).await {
        Ok(Some(Ok(r))) => Some(r),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_never_stops_the_daemon() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&["--simulate"]);
    still_serving(&env).await;

    // Garbage bytes (an HTTP request): the length prefix is absurd and rejected before any
    // allocation; the client is told why.
    let mut s = connect_raw(&env.socket).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    match read_reply(s).await {
        Some(HelloReply::Incompatible { reason, .. }) => {
            assert!(reason.contains("bad hello"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    still_serving(&env).await;

    // Oversized length prefix with nothing behind it.
    let mut s = connect_raw(&env.socket).await;
    s.write_all(&[0x7f, 0xff, 0xff, 0xff]).await.unwrap();
    assert!(matches!(
        read_reply(s).await,
        Some(HelloReply::Incompatible { .. })
    ));
    still_serving(&env).await;

    // Wrong magic.
    let s = connect_raw(&env.socket).await;
    let mut f = Framed::new(
        s,
        FrameCodec::<HelloReply, Hello>::new(Encoding::Json, MAX_HELLO_LEN),
    );
    let mut hello = Hello::new("x", vec![Encoding::Json]);
    hello.magic = "redis".into();
    f.send(hello).await.unwrap();
    match f.next().await {
        Some(Ok(HelloReply::Incompatible { reason, .. })) => assert!(reason.contains("magic")),
        other => panic!("{other:?}"),
    }
    still_serving(&env).await;

    // Unknown protocol version: the reply names the daemon's build so the user knows to restart.
    let s = connect_raw(&env.socket).await;
    let mut f = Framed::new(
        s,
        FrameCodec::<HelloReply, Hello>::new(Encoding::Json, MAX_HELLO_LEN),
    );
    let mut hello = Hello::new("9.9.9", vec![Encoding::Bincode]);
    hello.protocol = 99;
    f.send(hello).await.unwrap();
    match f.next().await {
        Some(Ok(HelloReply::Incompatible { build, reason, .. })) => {
            assert_eq!(build, env!("CARGO_PKG_VERSION"));
            assert!(reason.contains("99"));
        }
        other => panic!("{other:?}"),
    }
    still_serving(&env).await;

    // A valid hello, then a frame that is not a request: typed protocol error, then close.
    let mut c = RawClient::connect(&env.socket).await;
    let inner = c.framed.get_mut();
    inner
        .write_all(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd])
        .await
        .unwrap();
    match c.recv().await {
        Response::Error { kind, .. } => assert_eq!(kind, ErrorKind::Protocol),
        other => panic!("{other:?}"),
    }
    let mut rest = Vec::new();
    let _ = c.framed.get_mut().read_to_end(&mut rest).await;
    still_serving(&env).await;

    // An oversized frame after the hello.
    let mut c = RawClient::connect(&env.socket).await;
    c.framed
        .get_mut()
        .write_all(&[0xff, 0, 0, 0])
        .await
        .unwrap();
    assert!(matches!(
        c.recv().await,
        Response::Error {
            kind: ErrorKind::Protocol,
            ..
        }
    ));
    still_serving(&env).await;

    // A request the daemon can decode but not serve gets a typed per-stream error.
    let mut c = RawClient::connect(&env.socket).await;
    let mut empty = ChatRequest::user_text(5, "x");
    empty.messages.clear();
    let ev = c.chat(empty).await;
    assert!(matches!(
        ev.last(),
        Some(StreamEvent::Error {
            kind: ErrorKind::BadRequest,
            ..
        })
    ));

    // A client that vanishes mid-stream.
    let mut c = RawClient::connect(&env.socket).await;
    c.send(Request::Chat(ChatRequest::user_text(1, "vanish")))
        .await;
    drop(c);
    // A client that closes right after connecting, before any hello.
    drop(connect_raw(&env.socket).await);
    still_serving(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_frames_for_editor_clients() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&["--simulate"]);
    let mut c = RawClient::connect_with(&env.socket, Encoding::Json).await;
    let ev = c.chat(ChatRequest::user_text(1, "from an editor")).await;
    assert_eq!(
        mythos_tests::text_of(&ev),
        mythosd::sim::answer_for("from an editor")
    );

    // The JSON wire form is plain enough to write by hand.
    let s = connect_raw(&env.socket).await;
    let mut raw = s;
    let hello = br#"{"magic":"mythos","protocol":9,"build":"vim","encodings":["json"]}"#;
    raw.write_all(&(hello.len() as u32).to_be_bytes())
        .await
        .unwrap();
    raw.write_all(hello).await.unwrap();
    let mut len = [0u8; 4];
    raw.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    raw.read_exact(&mut body).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["accepted"]["encoding"], "json");
    // Unit variants are plain strings in serde's JSON.
    let req2 = br#""status""#;
    raw.write_all(&(req2.len() as u32).to_be_bytes())
        .await
        .unwrap();
    raw.write_all(req2).await.unwrap();
    raw.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    raw.read_exact(&mut body).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["status"]["providers"].is_array(), "{v}");
}
