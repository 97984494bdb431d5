//! The server in-process (mini-redis style): bind first, hand the listener to `run`, talk to it
//! with the protocol codec, and shut it down through its future.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::tokio::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName};
use mythos_protocol::codec::FrameCodec;
use mythos_protocol::{
    ChatRequest, Encoding, ErrorKind, FinishReason, Hello, HelloReply, Request, Response,
    StreamEvent, MAX_FRAME_LEN, MAX_HELLO_LEN,
};
use tokio_util::codec::Framed;

use super::*;
use crate::config::{Api, ProviderConfig, RoutingConfig};
use crate::provider::{Delta, DeltaStream, OpenFuture, Transport, UpstreamRequest};
use crate::router::{RoutedProvider, Router};

/// Answers "ok" slowly, or panics when the prompt says so.
struct Scripted;

impl Transport for Scripted {
    fn open(&self, req: &UpstreamRequest<'_>) -> OpenFuture {
        let prompt = req.chat.messages[0].joined_text();
        Box::pin(async move {
            if prompt == "panic" {
                panic!("scripted bug");
            }
            let delay = if prompt == "slow" { 300 } else { 1 };
            let items = vec![
                Ok(Delta::Text("ok".into())),
                Ok(Delta::Finish(FinishReason::Stop)),
            ];
            let s = futures_util::stream::iter(items).then(move |d| async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                d
            });
            Ok(Box::pin(s) as DeltaStream)
        })
    }
}

type Client = Framed<Stream, FrameCodec<Response, Request>>;

async fn connect(path: &std::path::Path) -> Client {
    let name = path.to_fs_name::<GenericFilePath>().unwrap();
    let stream = Stream::connect(name).await.unwrap();
    let mut hello = Framed::new(
        stream,
        FrameCodec::<HelloReply, Hello>::new(Encoding::Json, MAX_HELLO_LEN),
    );
    hello
        .send(Hello::new("test", vec![Encoding::Bincode]))
        .await
        .unwrap();
    assert!(matches!(
        hello.next().await,
        Some(Ok(HelloReply::Accepted { .. }))
    ));
    hello.map_codec(|_| FrameCodec::new(Encoding::Bincode, MAX_FRAME_LEN))
}

/// Send a chat and read its events to the end.
async fn chat(c: &mut Client, id: u64, prompt: &str) -> Vec<StreamEvent> {
    c.send(Request::Chat(ChatRequest::user_text(id, prompt)))
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.next()).await {
            Ok(Some(Ok(Response::Event { id: got, event }))) if got == id => {
                let end = matches!(event, StreamEvent::Done(_) | StreamEvent::Error { .. });
                out.push(event);
                if end {
                    return out;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no answer: {other:?}"),
        }
    }
}

struct Server {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    ctx: Arc<Context>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mythos").join("test.sock");
    let bound = socket::bind(&path).await.unwrap();
    let cfg = ProviderConfig::new("scripted", Api::Openai, "http://127.0.0.1:1", "m");
    let router = Router::new(
        vec![RoutedProvider {
            cfg,
            transport: Arc::new(Scripted),
        }],
        RoutingConfig::default(),
        None,
        1,
    );
    let http = crate::provider::http_client().unwrap();
    let ctx = Arc::new(Context::new(router, None, None, http));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(
        bound.listener,
        ctx.clone(),
        async {
            let _ = rx.await;
        },
        async {},
        Duration::from_secs(2),
    ));
    Server {
        _dir: dir,
        path,
        ctx,
        stop: Some(tx),
        task,
    }
}

/// A client may send its first request in the same write as its hello, without waiting for
/// the reply: the request is answered, not left in the daemon's buffer until more bytes come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_with_the_hello_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start().await;
    let name = server.path.clone().to_fs_name::<GenericFilePath>().unwrap();
    let (mut rd, mut wr) = tokio::io::split(Stream::connect(name).await.unwrap());
    let frame = |payload: Vec<u8>| {
        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
        f.extend(payload);
        f
    };
    let hello = mythos_protocol::codec::encode_payload(
        Encoding::Json,
        &Hello::new("test", vec![Encoding::Bincode]),
    )
    .unwrap();
    let status =
        mythos_protocol::codec::encode_payload(Encoding::Bincode, &Request::Status).unwrap();
    // The hello, a whole request and the first bytes of another, in one write.
    let mut both = frame(hello);
    both.extend(frame(status.clone()));
    let second = frame(status);
    let (head, tail) = second.split_at(3);
    both.extend_from_slice(head);
    wr.write_all(&both).await.unwrap();
    // The hello reply, then the status, with nothing more sent.
    let mut read_frame = async || {
        let mut len = [0u8; 4];
        rd.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        rd.read_exact(&mut body).await.unwrap();
        body
    };
    let reply = tokio::time::timeout(Duration::from_secs(10), read_frame())
        .await
        .expect("no hello reply");
    let reply: HelloReply = mythos_protocol::codec::decode_payload(Encoding::Json, &reply).unwrap();
    assert!(matches!(reply, HelloReply::Accepted { .. }), "{reply:?}");
    // Each request is answered with a status, in time.
    let mut status_answers = async |unanswered: &str| {
        let answer = tokio::time::timeout(Duration::from_secs(10), read_frame())
            .await
            .expect(unanswered);
        let answer: Response =
            mythos_protocol::codec::decode_payload(Encoding::Bincode, &answer).unwrap();
        assert!(matches!(answer, Response::Status(_)), "{answer:?}");
    };
    status_answers("the request sent with the hello was not answered").await;
    // The rest of the second request: it is put together from both writes.
    wr.write_all(tail).await.unwrap();
    status_answers("a request split across the hello's read and the next was not answered").await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_request_ends_with_an_internal_error_and_nothing_else_stops() {
    let s = start().await;
    let mut c = connect(&s.path).await;
    let ev = chat(&mut c, 1, "panic").await;
    match ev.last() {
        Some(StreamEvent::Error { kind, message, .. }) => {
            assert_eq!(*kind, ErrorKind::Internal);
            assert!(message.contains("scripted bug"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // The same connection, and the daemon, go on; nothing is left counted in flight.
    let ev = chat(&mut c, 2, "fine").await;
    assert!(matches!(ev.last(), Some(StreamEvent::Done(_))), "{ev:?}");
    assert_eq!(s.ctx.router().in_flight(), 0);
    // The same id may be used again right after its end.
    let ev = chat(&mut c, 2, "again").await;
    assert!(matches!(ev.last(), Some(StreamEvent::Done(_))), "{ev:?}");
}

/// A chat sent with the id of a stream still running is refused with an error of its own (not
/// an event of that stream), and the running stream goes on to its one last event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_id_is_refused_without_ending_the_running_stream() {
    let s = start().await;
    let mut c = connect(&s.path).await;
    c.send(Request::Chat(ChatRequest::user_text(1, "slow")))
        .await
        .unwrap();
    c.send(Request::Chat(ChatRequest::user_text(1, "again")))
        .await
        .unwrap();
    let mut refused = false;
    let mut last_events = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.next()).await {
            Ok(Some(Ok(Response::Error { kind, .. }))) => {
                assert_eq!(kind, ErrorKind::Protocol);
                refused = true;
            }
            Ok(Some(Ok(Response::Event { id: 1, event }))) => match event {
                StreamEvent::Done(_) => {
                    last_events += 1;
                    break;
                }
                StreamEvent::Error { .. } => last_events += 1,
                _ => {}
            },
            other => panic!("{other:?}"),
        }
    }
    assert!(refused);
    assert_eq!(last_events, 1, "one last event for stream 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_streams_and_refuses_new_ones() {
    let mut s = start().await;
    let mut c = connect(&s.path).await;
    c.send(Request::Chat(ChatRequest::user_text(1, "slow")))
        .await
        .unwrap();
    // Wait until it has started upstream.
    loop {
        if let Some(Ok(Response::Event {
            event: StreamEvent::Started { .. },
            ..
        })) = c.next().await
        {
            break;
        }
    }
    let _ = s.stop.take().unwrap().send(());
    // A new request on an open connection is refused while draining.
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(Request::Chat(ChatRequest::user_text(2, "late")))
        .await
        .unwrap();
    let mut done_first = false;
    let mut refused_second = false;
    while let Ok(Some(Ok(Response::Event { id, event }))) =
        tokio::time::timeout(Duration::from_secs(5), c.next()).await
    {
        match (id, event) {
            (1, StreamEvent::Done(_)) => done_first = true,
            (
                2,
                StreamEvent::Error {
                    kind: ErrorKind::ShuttingDown,
                    ..
                },
            ) => refused_second = true,
            _ => {}
        }
        if done_first && refused_second {
            break;
        }
    }
    assert!(done_first, "the running stream finished during the drain");
    assert!(refused_second, "the late one was refused");
    tokio::time::timeout(Duration::from_secs(10), s.task)
        .await
        .expect("run returns after the drain")
        .unwrap();
}

/// A client that sends requests and reads none of the replies is dropped after the read
/// timeout: its socket is closed and its seat given back, not held for as long as it keeps the
/// connection open (its writer waited on the full socket for ever).
#[tokio::test(start_paused = true)]
async fn a_client_that_reads_nothing_is_let_go() {
    let server = start().await;
    let mut c = connect(&server.path).await;
    // Status replies until the socket and the reply channel are full.
    for _ in 0..4_000 {
        if tokio::time::timeout(Duration::from_secs(1), c.send(Request::Status))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(server.ctx.conns.len(), 1);
    let t0 = tokio::time::Instant::now();
    while !server.ctx.conns.is_empty() {
        assert!(
            t0.elapsed() < crate::router::CLIENT_READ_TIMEOUT * 2,
            "the connection is still held"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(c);
}
