//! The front end served in-process on a loopback port, driven by raw TCP clients: what the
//! connection cap and the read timeout mean for the people using it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get as get_route;
use futures_util::StreamExt as _;
use mythos_protocol::{FinishReason, RequestRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::{Api, ProviderConfig, RoutingConfig};
use crate::provider::{Delta, DeltaStream, OpenFuture, Transport, UpstreamRequest};
use crate::router::{RecordSink, RoutedProvider, Router, CLIENT_READ_TIMEOUT};

/// Serve `app` on a fresh loopback port with at most `cap` connections; cut when the returned
/// guard is dropped.
async fn serve_app(app: Routes, cap: usize) -> (SocketAddr, tokio_util::sync::DropGuard) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve(
        listener::CappedListener::new(tcp, cap),
        app,
        stop.clone(),
        stop.clone(),
        Arc::new(crate::metrics::Metrics::default()),
        tokio::sync::oneshot::channel().0,
    ));
    (addr, stop.drop_guard())
}

/// `GET path` on `c`, keeping the connection; the response, or what came before it closed.
async fn get(c: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    if c.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // The test routes answer "ok" (and nothing before it ends in it).
    while !got.ends_with(b"ok") {
        match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether the daemon closed `c` (a read ends the file or finds it reset).
async fn closed(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// `/health` answers at once; `/hold` says it has begun (`entered`), then answers when the
/// test says so (`release`).
fn app(entered: Arc<tokio::sync::Notify>, release: Arc<tokio::sync::Notify>) -> Routes {
    Routes::new()
        .route("/health", get_route(|| async { "ok" }))
        .route(
            "/hold",
            get_route(move || async move {
                entered.notify_one();
                release.notified().await;
                "ok"
            }),
        )
}

/// A client that sends its request promptly gets in while the cap is full of connections
/// trickling their headers (a slowloris, which never shows the token), and more keep coming:
/// each newcomer displaces the one that has waited longest for its head. A connection with a
/// request in progress is never displaced, however long it has been open.
#[tokio::test]
async fn a_request_gets_through_while_the_cap_is_full_of_slow_header_senders() {
    let (entered, release) = (Arc::default(), Arc::new(tokio::sync::Notify::new()));
    let (addr, _stop) = serve_app(app(Arc::clone(&entered), release.clone()), 4).await;
    // The oldest connection, busy: its answer is held back.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    entered.notified().await;
    // Twice the cap in slow senders, each a few bytes into its headers.
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nX-Slow: a")
            .await
            .unwrap();
        slow.push(c);
    }
    let mut client = TcpStream::connect(addr).await.unwrap();
    let answer = get(&mut client, "/health").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "refused: {answer:?}");
    // The first slow senders made room; the last ones are still waiting for their turn.
    assert!(
        closed(&mut slow[0]).await,
        "the longest-waiting slow sender is closed"
    );
    for c in &mut slow[5..] {
        c.write_all(b"\r\n\r\n").await.unwrap();
    }
    assert!(get(&mut slow[7], "/health")
        .await
        .starts_with("HTTP/1.1 200"));
    release.notify_one();
    let mut held = Vec::new();
    busy.read_buf(&mut held).await.unwrap();
    assert!(
        String::from_utf8_lossy(&held).starts_with("HTTP/1.1 200"),
        "the busy connection was answered"
    );
}

/// Idle keep-alive connections (a few hundred left open by agents, or by someone who means
/// harm) give way too: the longest idle goes, and the new client is answered.
#[tokio::test]
async fn a_request_gets_through_while_the_cap_is_full_of_idle_keep_alive_connections() {
    let (addr, _stop) = serve_app(app(Arc::default(), Arc::default()), 4).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut c, "/health").await.starts_with("HTTP/1.1 200"));
        idle.push(c);
    }
    let mut client = TcpStream::connect(addr).await.unwrap();
    let answer = get(&mut client, "/health").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "refused: {answer:?}");
    assert!(
        closed(&mut idle[0]).await,
        "the longest idle connection gave way"
    );
    assert!(get(&mut idle[3], "/health")
        .await
        .starts_with("HTTP/1.1 200"));
}

/// A drain closes the idle connections at once and lets a request in progress finish; the
/// front end is done when that one is.
#[tokio::test]
async fn a_drain_finishes_the_requests_in_progress_and_closes_the_rest() {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (draining, hard_stop) = (CancellationToken::new(), CancellationToken::new());
    let (entered, release) = (Arc::default(), Arc::new(tokio::sync::Notify::new()));
    let (closing, port_free) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(serve(
        listener::CappedListener::new(tcp, 4),
        app(Arc::clone(&entered), release.clone()),
        draining.clone(),
        hard_stop.clone(),
        Arc::new(crate::metrics::Metrics::default()),
        closing,
    ));
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    entered.notified().await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert!(get(&mut idle, "/health").await.starts_with("HTTP/1.1 200"));
    draining.cancel();
    assert!(closed(&mut idle).await, "the idle connection is closed");
    assert!(!server.is_finished(), "a request is still in progress");
    // The port is let go at the drain's start, not when the last answer is done: the next
    // daemon binds it while this one finishes.
    tokio::time::timeout(Duration::from_secs(10), port_free)
        .await
        .expect("the listener was not closed at the drain's start")
        .unwrap_err();
    let next = TcpListener::bind(addr)
        .await
        .expect("the port is still taken");
    drop(next);
    release.notify_one();
    let mut held = Vec::new();
    busy.read_buf(&mut held).await.unwrap();
    assert!(String::from_utf8_lossy(&held).starts_with("HTTP/1.1 200"));
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the front end is done once the request is")
        .unwrap();
    drop(hard_stop);
}

/// Streams text for as long as it is read when the prompt is "endless", else answers "ok";
/// counts its open streams (each holds the provider's only seat).
struct Provider {
    open: Arc<AtomicUsize>,
}

/// One open upstream stream, counted while it lives.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Transport for Provider {
    fn open(&self, req: &UpstreamRequest<'_>) -> OpenFuture {
        let endless = req.chat.messages[0].joined_text() == "endless";
        self.open.fetch_add(1, Ordering::SeqCst);
        let open = Open(self.open.clone());
        Box::pin(async move {
            let stream: DeltaStream = if endless {
                Box::pin(
                    futures_util::stream::repeat_with(|| Ok(Delta::Text("x".repeat(4096).into())))
                        .then(move |d| {
                            let _held = &open;
                            async move {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                                d
                            }
                        }),
                )
            } else {
                let answer = [
                    Ok(Delta::Text("ok".into())),
                    Ok(Delta::Finish(FinishReason::Stop)),
                ];
                Box::pin(futures_util::stream::iter(answer).map(move |d| {
                    let _held = &open;
                    d
                }))
            };
            Ok(stream)
        })
    }
}

/// Keeps the routing records.
#[derive(Default)]
struct Records(Mutex<Vec<RequestRecord>>);

impl RecordSink for Records {
    fn record(&self, rec: RequestRecord) {
        self.0.lock().unwrap().push(rec);
    }
}

/// A Chat Completions request for `prompt`, with the token, asking for up to a million tokens
/// (see the provider's `max_output_tokens` below).
fn chat_request(prompt: &str, stream: bool) -> String {
    let body = serde_json::json!({
        "model": "mythos", "stream": stream, "max_tokens": 1_000_000,
        "messages": [{"role": "user", "content": prompt}],
    })
    .to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer tok\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// An HTTP client that sends a streamed request and then reads nothing (a hung editor) gives
/// its provider seat back after `CLIENT_READ_TIMEOUT`, as a socket client does: the upstream
/// stream is dropped, the request recorded as given up for that, the connection closed, and
/// the next request is served by the provider it held. It used to keep the seat, and every
/// other request got "all 1 of its streams busy", for as long as it stayed connected.
#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_gives_its_provider_seat_back() {
    let open = Arc::new(AtomicUsize::new(0));
    let mut cfg = ProviderConfig::new("solo", Api::Openai, "http://127.0.0.1:1", "m");
    cfg.max_concurrent = 1;
    // Its answers may hold 16 MiB (see `answer_cap`): the endless one must outlast the
    // buffers between it and the client that reads nothing.
    cfg.max_output_tokens = Some(1_000_000);
    let records = Arc::new(Records::default());
    let router = Router::new(
        vec![RoutedProvider {
            cfg,
            transport: Arc::new(Provider { open: open.clone() }),
        }],
        RoutingConfig::default(),
        Some(records.clone()),
        1,
    );
    let ctx = Arc::new(crate::server::Context::new(
        router,
        None,
        None,
        crate::provider::http_client().unwrap(),
    ));
    let front = Arc::new(Front::new(ctx, HttpConfig::default(), "tok".into()));
    let (addr, _stop) = serve_app(routes(front), 8).await;

    let mut hung = TcpStream::connect(addr).await.unwrap();
    hung.write_all(chat_request("endless", true).as_bytes())
        .await
        .unwrap();
    let t0 = tokio::time::Instant::now();
    while open.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while open.load(Ordering::SeqCst) > 0 {
        assert!(
            t0.elapsed() < CLIENT_READ_TIMEOUT * 2,
            "the provider's seat is still held"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(t0.elapsed() >= CLIENT_READ_TIMEOUT, "given up too early");
    // The connection is closed: what it had buffered, then the end.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), hung.read_to_end(&mut rest))
        .await
        .expect("the connection is closed");
    // The record says why.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let detail = loop {
        let found = records
            .0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.attempts.iter().map(|a| a.detail.clone()))
            .next();
        if let Some(d) = found {
            break d;
        }
        assert!(tokio::time::Instant::now() < deadline, "no record");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(detail.contains("read nothing"), "{detail}");
    // The seat serves the next client.
    let mut next = TcpStream::connect(addr).await.unwrap();
    next.write_all(chat_request("hi", false).as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"ok\"") {
        let n = tokio::time::timeout(Duration::from_secs(10), next.read(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}
