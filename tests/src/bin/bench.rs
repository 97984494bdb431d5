//! What mythosd costs on a healthy request and what it saves on a sick one, side by side.
//!
//! `cargo run --release -p mythos-tests --bin bench -- [--quick] [--full] [--json]
//! [--overhead-only] [--callgrind]`
//!
//! `bench --drive SOCKET N` only makes N requests one at a time through a running daemon's
//! socket, for a profiler attached to that daemon.
//!
//! `--callgrind` runs only the instruction count: the daemon under `valgrind --tool=callgrind`
//! (when valgrind is installed), short and long answers through the socket and through the HTTP
//! front end, and the user-space instructions per relayed chunk and per request solved from the
//! two (counts repeat run to run, unlike times). The HTTP rows have beside them, as "direct",
//! the same counts for a bare axum + reqwest relay (`FloorProcess`), also under callgrind.
//!
//! Environment: `BENCH_LEVELS=1,100` measures sections 1, 1b and 2 at those concurrencies only
//! (`BENCH_LEVELS= bench --overhead-only`: only the per-request rows, CPU per request besides its
//! chunks at concurrency 1 and 10);
//! `BENCH_DAEMON_WORKERS=N` runs the daemon with N runtime workers (0: current-thread);
//! `BENCH_MOCK=inproc` runs sections 1, 1b and 2's mock in this process instead of its own (see
//! `MockProcess` for why it has its own).
//!
//! Every figure is measured in this run against the same loopback mock provider (the daemon's
//! simulated OpenAI-format provider with zero artificial delay, so its own cost is only HTTP and
//! SSE work). "direct" is this process calling the mock with the daemon's own HTTP + SSE adapter;
//! "via mythosd" is the real daemon binary reached over its Unix socket. Each figure is the
//! median over repetitions, with the spread (min–max) beside it. Bounded in time and requests.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mythos_protocol::{ChatRequest, Request, Response, SimFault, StreamEvent};
use mythos_tests::{RawClient, TestEnv};
use mythosd::config::{Api, ProviderConfig, Secret};
use mythosd::provider::{http_client, Delta, HttpTransport, Transport, UpstreamRequest};
use mythosd::sim::{answer_for, chunk_answer, Flavor, SimChaos, SimOptions, SimProvider, SimQuota};

/// The simulated provider holds the connection this long after its last frame before it cuts
/// it (see `daemon/src/sim/wire.rs`).
const CUT_DELAY_MS: f64 = 20.0;

/// Requests per phase, and the long answers' length in canned answers, of the per-request
/// set-up rows.
const SETUP_REQUESTS: usize = 600;
const SETUP_LONG: usize = 4;

struct Opts {
    quick: bool,
    /// `--overhead-only`: sections 1, 1b and 2, then stop.
    overhead_only: bool,
    full: bool,
    json: bool,
    /// `--callgrind`: instruction counts under valgrind, nothing else.
    callgrind: bool,
}

/// One row of the report.
struct Row {
    section: &'static str,
    metric: String,
    direct: Option<Stat>,
    via: Option<Stat>,
    unit: &'static str,
    note: String,
}

/// Median of repetitions and their spread.
#[derive(Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(mut v: Vec<f64>) -> Stat {
        v.sort_by(f64::total_cmp);
        Stat {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }
    fn one(x: f64) -> Stat {
        Stat {
            median: x,
            min: x,
            max: x,
        }
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

async fn mock(name: &str, flavor: Flavor) -> SimProvider {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut o = SimOptions::new(name, flavor);
    o.first_token_delay = Duration::ZERO;
    o.token_delay = Duration::ZERO;
    SimProvider::start(l, o).await.unwrap()
}

fn provider_cfg(name: &str, sim: &impl Upstream, api: Api) -> ProviderConfig {
    ProviderConfig {
        api_key: Some(Secret::new("bench-key")),
        simulated: true,
        ..ProviderConfig::new(name, api, sim.base_url(), "bench")
    }
}

/// A mock provider the daemon and the direct client can be pointed at.
trait Upstream {
    fn base_url(&self) -> String;
}

impl Upstream for SimProvider {
    fn base_url(&self) -> String {
        SimProvider::base_url(self)
    }
}

/// The zero-delay mock in a process of its own (this binary with `--serve-mock`), for the
/// overhead and throughput sections.
///
/// In this process, the mock and the direct client share a runtime: a client's write wakes
/// the mock's connection task on the same worker, which runs it next (tokio's LIFO slot), and
/// the mock's first chunk comes back the same way. Under load that hand-off skips the queue
/// every other task waits in, which no real client and provider share, and whether it happens
/// depends on which worker holds which connection: direct time to first token at concurrency
/// 100 measured 2.0 ms in one run and 13.3 ms in the next. In a process of its own the mock
/// is reached as a provider is, by both the direct client and the daemon.
/// `BENCH_MOCK=inproc` runs it in this process instead.
struct MockProcess {
    child: std::process::Child,
    control: std::process::ChildStdin,
    acks: std::io::BufReader<std::process::ChildStdout>,
    url: String,
}

impl MockProcess {
    fn start() -> MockProcess {
        let (child, control, acks, url) = spawn_self(&[], &["--serve-mock"]);
        MockProcess {
            child,
            control,
            acks,
            url,
        }
    }

    /// [`SimProvider::set_answer_repeat`] in the mock's process, done when this returns.
    fn set_answer_repeat(&mut self, times: usize) {
        use std::io::{BufRead, Write};
        writeln!(self.control, "repeat {times}").expect("mock control");
        let mut ack = String::new();
        self.acks.read_line(&mut ack).expect("mock ack");
        assert_eq!(ack.trim(), "ok", "the mock process said {ack:?}");
    }
}

impl Upstream for MockProcess {
    fn base_url(&self) -> String {
        self.url.clone()
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This binary again with `args` (under `wrapper`, a command and its arguments, when not
/// empty), its stdin and stdout piped; the first line it prints is its address.
fn spawn_self(
    wrapper: &[String],
    args: &[&str],
) -> (
    std::process::Child,
    std::process::ChildStdin,
    std::io::BufReader<std::process::ChildStdout>,
    String,
) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().expect("bench's own path");
    let mut cmd = match wrapper.split_first() {
        Some((tool, rest)) => {
            let mut c = Command::new(tool);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a process of the bench's own");
    let control = child.stdin.take().expect("piped stdin");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut url = String::new();
    out.read_line(&mut url).expect("the process's address");
    assert!(
        url.starts_with("http://") || url.starts_with("unix:"),
        "{args:?} said {url:?}"
    );
    (child, control, out, url.trim().to_string())
}

/// A bare relay on the daemon's own crates and runtime layout (`bench --serve-floor URL`), for
/// the "direct" column of the per-request rows: an axum handler passes each request to the
/// mock with the daemon's HTTP client and streams the mock's body back untouched, on a runtime
/// of one worker as the daemon's. Its CPU per request is what any relay built this way pays on
/// this machine before it does anything of its own: the client's HTTP, the upstream HTTP, and
/// the sleeps and wake-ups between them (at concurrency 1, most of it). What mythosd adds per
/// request (routing, translation, health, records, metrics) is the difference.
struct FloorProcess {
    child: std::process::Child,
    url: String,
}

impl FloorProcess {
    fn start(upstream: &str) -> FloorProcess {
        FloorProcess::start_under(&[], upstream)
    }

    /// The relay under `wrapper` (callgrind).
    fn start_under(wrapper: &[String], upstream: &str) -> FloorProcess {
        let (child, _stdin, _out, url) = spawn_self(wrapper, &["--serve-floor", upstream]);
        FloorProcess { child, url }
    }
}

impl Drop for FloorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What both bare relays share: the mock's Chat Completions endpoint under `upstream`, and a
/// runtime of one worker, as the daemon's.
fn floor_setup(upstream: &str) -> (String, tokio::runtime::Runtime) {
    let endpoint = format!("{}/chat/completions", upstream.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    (endpoint, runtime)
}

/// `bench --serve-floor URL`: the relay of [`FloorProcess`] to the mock at `URL`.
fn serve_floor(upstream: &str) {
    use axum::body::{Body, Bytes};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    let (endpoint, runtime) = floor_setup(upstream);
    runtime.block_on(async move {
        let client = http_client().expect("http client");
        let relay = move |headers: HeaderMap, body: Bytes| {
            let (client, endpoint) = (client.clone(), endpoint.clone());
            async move {
                let mut req = client.post(endpoint).body(body);
                for name in ["authorization", "content-type"] {
                    if let Some(v) = headers.get(name) {
                        req = req.header(name, v);
                    }
                }
                match req.send().await {
                    Ok(r) => (r.status(), Body::from_stream(r.bytes_stream())).into_response(),
                    Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
                }
            }
        };
        let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(relay));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the floor relay");
        let addr = listener.local_addr().expect("its address");
        println!("http://{addr}");
        axum::serve(listener, app).await.expect("serve");
    });
}

/// The socket path's counterpart of [`FloorProcess`] (`bench --serve-socket-floor URL PATH`): a
/// bare relay that speaks the daemon's own protocol on its kind of local socket (the hello, bincode frames
/// through the protocol crate's codec), posts each chat request to the mock with the daemon's
/// HTTP client, reads the SSE body with the least parsing that yields text (each `data:` line
/// into a borrowed struct of the delta alone) and writes its text deltas back as frames, once
/// per upstream read, then `done`. No routing, health, records, metrics or translation: what
/// any relay that turns a provider's stream into this protocol's frames pays per request on
/// this machine, beside which mythosd's socket rows are read.
struct SocketFloorProcess {
    child: std::process::Child,
    socket: std::path::PathBuf,
}

impl SocketFloorProcess {
    fn start(upstream: &str, socket: &Path) -> SocketFloorProcess {
        SocketFloorProcess::start_under(&[], upstream, socket)
    }

    /// The relay under `wrapper` (callgrind).
    fn start_under(wrapper: &[String], upstream: &str, socket: &Path) -> SocketFloorProcess {
        let path = socket.to_str().expect("a socket path in UTF-8");
        let (child, _stdin, _out, _) =
            spawn_self(wrapper, &["--serve-socket-floor", upstream, path]);
        SocketFloorProcess {
            child,
            socket: socket.to_path_buf(),
        }
    }
}

impl Drop for SocketFloorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// `bench --serve-socket-floor URL PATH`: the relay of [`SocketFloorProcess`].
fn serve_socket_floor(upstream: &str, path: &str) {
    use futures_util::SinkExt;
    use mythos_protocol::codec::FrameCodec;
    use mythos_protocol::{
        ContentBlock, DoneInfo, Encoding, FinishReason, Hello, HelloReply, MAX_FRAME_LEN,
        MAX_HELLO_LEN, PROTOCOL_VERSION,
    };
    use tokio_util::codec::Framed;

    /// The least of a Chat Completions chunk that carries its text.
    #[derive(serde::Deserialize)]
    struct Chunk<'a> {
        #[serde(borrow)]
        choices: Vec<Choice<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Choice<'a> {
        #[serde(borrow, default)]
        delta: Option<DeltaText<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct DeltaText<'a> {
        #[serde(borrow, default)]
        content: Option<std::borrow::Cow<'a, str>>,
    }

    let _ = std::fs::remove_file(path);
    let (endpoint, runtime) = floor_setup(upstream);
    runtime.block_on(async move {
        let client = http_client().expect("http client");
        // The daemon's kind of listener (a named pipe on Windows), which the bench's client
        // connects to by the same name.
        use interprocess::local_socket::traits::tokio::Listener as _;
        use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
        let name = path.to_fs_name::<GenericFilePath>().expect("socket name");
        let listener = ListenerOptions::new()
            .name(name)
            .create_tokio()
            .expect("bind the socket floor");
        println!("unix:{path}");
        loop {
            let Ok(stream) = listener.accept().await else {
                continue;
            };
            let (client, endpoint) = (client.clone(), endpoint.clone());
            tokio::spawn(async move {
                let mut hello = Framed::new(
                    stream,
                    FrameCodec::<Hello, HelloReply>::new(Encoding::Json, MAX_HELLO_LEN),
                );
                let Some(Ok(_)) = hello.next().await else {
                    return;
                };
                let accepted = HelloReply::Accepted {
                    protocol: PROTOCOL_VERSION,
                    build: "floor".into(),
                    encoding: Encoding::Bincode,
                };
                if hello.send(accepted).await.is_err() {
                    return;
                }
                let mut framed = hello.map_codec(|_| {
                    FrameCodec::<Request, Response>::new(Encoding::Bincode, MAX_FRAME_LEN)
                });
                while let Some(Ok(Request::Chat(req))) = framed.next().await {
                    let prompt = match req.messages.first().and_then(|m| m.content.first()) {
                        Some(ContentBlock::Text { text }) => text.as_str(),
                        _ => "",
                    };
                    let body = serde_json::json!({
                        "model": "m",
                        "stream": true,
                        "messages": [{"role": "user", "content": prompt}],
                    });
                    let Ok(resp) = client
                        .post(&endpoint)
                        .header("authorization", "Bearer floor")
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                    else {
                        return;
                    };
                    let mut upstream = resp.bytes_stream();
                    let mut pending: Vec<u8> = Vec::new();
                    while let Some(Ok(bytes)) = upstream.next().await {
                        pending.extend_from_slice(&bytes);
                        let mut used = 0;
                        while let Some(end) = pending[used..].windows(2).position(|w| w == b"\n\n")
                        {
                            let event = &pending[used..used + end];
                            used += end + 2;
                            let Some(data) = event.strip_prefix(b"data: ") else {
                                continue;
                            };
                            let Ok(chunk) = serde_json::from_slice::<Chunk>(data) else {
                                continue;
                            };
                            let text = chunk.choices.into_iter().find_map(|c| c.delta?.content);
                            if let Some(text) = text.filter(|t| !t.is_empty()) {
                                let event = StreamEvent::TextDelta {
                                    text: (&*text).into(),
                                };
                                if framed
                                    .feed(Response::Event { id: req.id, event })
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                        }
                        pending.drain(..used);
                        if framed.flush().await.is_err() {
                            return;
                        }
                    }
                    let done = DoneInfo {
                        finish: FinishReason::Stop,
                        usage: Default::default(),
                        cost_usd: 0.0,
                        latency_ms: 0,
                        provider: "floor".into(),
                        model: "m".into(),
                        record: 0,
                    };
                    let event = StreamEvent::Done(Box::new(done));
                    if framed
                        .send(Response::Event { id: req.id, event })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
}

/// A process's CPU solved, run by run, into a part per relayed chunk and a part per request (µs).
#[derive(Default)]
struct Solved {
    per_chunk: Vec<f64>,
    per_request: Vec<f64>,
}

/// The mock of `bench --serve-mock`: its address on stdout, then `repeat N` lines from stdin
/// each answered `ok`; it ends with its stdin.
async fn serve_mock() {
    let sim = mock("mock", Flavor::OpenAi).await;
    println!("{}", sim.base_url());
    let control = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match line.strip_prefix("repeat ").and_then(|n| n.parse().ok()) {
                Some(n) => {
                    sim.set_answer_repeat(n);
                    println!("ok");
                }
                None => println!("unknown command {line:?}"),
            }
        }
    });
    let _ = control.await;
}

/// The overhead sections' mock: its own process unless `BENCH_MOCK=inproc`.
enum Mock {
    Process(MockProcess),
    InProcess(SimProvider),
}

impl Mock {
    async fn start() -> Mock {
        if std::env::var("BENCH_MOCK").is_ok_and(|v| v == "inproc") {
            Mock::InProcess(mock("mock", Flavor::OpenAi).await)
        } else {
            Mock::Process(MockProcess::start())
        }
    }

    fn set_answer_repeat(&mut self, times: usize) {
        match self {
            Mock::Process(p) => p.set_answer_repeat(times),
            Mock::InProcess(sim) => sim.set_answer_repeat(times),
        }
    }
}

impl Upstream for Mock {
    fn base_url(&self) -> String {
        match self {
            Mock::Process(p) => p.base_url(),
            Mock::InProcess(sim) => sim.base_url(),
        }
    }
}

/// (ttft, total, chunks) of one direct request.
async fn direct_once(t: &HttpTransport, prompt: &str) -> (f64, f64, u64) {
    let chat = ChatRequest::user_text(1, prompt);
    let req = UpstreamRequest {
        chat: &chat,
        model: "bench",
        max_tokens: 1024,
        prefill: None,
        prefill_blocks: &[],
        format_in_words: false,
    };
    let t0 = Instant::now();
    let mut s = t.open(&req).await.expect("direct open");
    let mut ttft = None;
    let mut chunks = 0;
    while let Some(d) = s.next().await {
        if let Ok(Delta::Text(_)) = d.as_ref() {
            chunks += 1;
            ttft.get_or_insert_with(|| t0.elapsed());
        }
        d.expect("direct stream");
    }
    (ms(ttft.unwrap_or_default()), ms(t0.elapsed()), chunks)
}

/// (ttft, total, chunks) of one request through the daemon.
async fn via_once(c: &mut RawClient, id: u64, prompt: &str) -> (f64, f64, u64) {
    let t0 = Instant::now();
    c.send(Request::Chat(ChatRequest::user_text(id, prompt)))
        .await;
    let mut ttft = None;
    let mut answer = String::new();
    loop {
        match c.recv().await {
            Response::Event {
                event: StreamEvent::TextDelta { text },
                ..
            } => {
                answer.push_str(&text);
                ttft.get_or_insert_with(|| t0.elapsed());
            }
            Response::Event {
                event: StreamEvent::Done(_),
                ..
            } => break,
            Response::Event {
                event: StreamEvent::Error { message, .. },
                ..
            } => {
                panic!("bench request failed: {message}")
            }
            _ => {}
        }
    }
    (
        ms(ttft.unwrap_or_default()),
        ms(t0.elapsed()),
        relayed(&answer),
    )
}

/// The chunks the mock streamed `answer` in, which the daemon relayed: the daemon sends the
/// client fewer events than that (a word waits for what follows it, and joins punctuation
/// that came on its own), and a figure per event would charge a relayed chunk's cost to fewer.
fn relayed(answer: &str) -> u64 {
    chunk_answer(answer).len() as u64
}

/// (ttft, total, chunks) of one streamed Chat Completions request through the daemon's HTTP
/// front end, reading the SSE body as an agent's SDK would (first content chunk, `[DONE]`).
async fn http_once(c: &reqwest::Client, base: &str, token: &str, prompt: &str) -> (f64, f64, u64) {
    let body = serde_json::json!({
        "model": "mythos",
        "stream": true,
        "messages": [{"role": "user", "content": prompt}],
    });
    let t0 = Instant::now();
    let resp = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("http request");
    assert!(
        resp.status().is_success(),
        "bench request failed: {}",
        resp.status()
    );
    let mut stream = resp.bytes_stream();
    let mut ttft = None;
    let mut answer = String::new();
    let mut tail: Vec<u8> = Vec::new();
    let mut done = false;
    while let Some(piece) = stream.next().await {
        tail.extend_from_slice(&piece.expect("http body"));
        while let Some(end) = tail.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = tail.drain(..end + 2).collect();
            let frame = String::from_utf8_lossy(&frame);
            if frame.contains("[DONE]") {
                done = true;
            } else if frame.contains("\"content\":\"") && !frame.contains("\"content\":\"\"") {
                let json = frame.trim().trim_start_matches("data:").trim();
                let v: serde_json::Value = serde_json::from_str(json).expect("an SSE chunk");
                answer.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
                ttft.get_or_insert_with(|| t0.elapsed());
            }
        }
    }
    assert!(done, "the HTTP stream ended without [DONE]");
    (
        ms(ttft.unwrap_or_default()),
        ms(t0.elapsed()),
        relayed(&answer),
    )
}

/// `per` requests through the HTTP front end on each of `conc` workers.
async fn load_http(
    base: &str,
    token: &str,
    conc: usize,
    per: usize,
    prompt: &'static str,
) -> (Vec<f64>, Vec<f64>, u64, f64) {
    // One keep-alive client per worker, as each agent process has its own.
    load(conc, |_| {
        let (base, token) = (base.to_string(), token.to_string());
        async move {
            let c = reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("http client");
            let mut v = Vec::with_capacity(per);
            for _ in 0..per {
                v.push(http_once(&c, &base, &token, prompt).await);
            }
            v
        }
    })
    .await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Run `conc` workers made by `make` (each runs its share of the requests); returns all
/// (ttft, total) samples, the chunks relayed and the wall time.
async fn load<F, Fut>(conc: usize, make: F) -> (Vec<f64>, Vec<f64>, u64, f64)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Vec<(f64, f64, u64)>> + Send + 'static,
{
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(conc);
    for w in 0..conc {
        handles.push(tokio::spawn(make(w)));
    }
    let (mut ttft, mut tot, mut chunks) = (Vec::new(), Vec::new(), 0);
    for h in handles {
        for (a, b, c) in h.await.unwrap() {
            ttft.push(a);
            tot.push(b);
            chunks += c;
        }
    }
    (ttft, tot, chunks, t0.elapsed().as_secs_f64())
}

/// `per` direct requests on each of `conc` workers.
async fn load_direct(
    t: &Arc<HttpTransport>,
    conc: usize,
    per: usize,
    prompt: &'static str,
) -> (Vec<f64>, Vec<f64>, u64, f64) {
    load(conc, |_| {
        let t = t.clone();
        async move {
            let mut v = Vec::with_capacity(per);
            for _ in 0..per {
                v.push(direct_once(&t, prompt).await);
            }
            v
        }
    })
    .await
}

/// `per` requests through the daemon on each of `conc` connections.
async fn load_via(
    socket: &Path,
    conc: usize,
    per: usize,
    prompt: &'static str,
) -> (Vec<f64>, Vec<f64>, u64, f64) {
    load(conc, |_| {
        let socket = socket.to_path_buf();
        async move {
            let mut c = RawClient::connect(&socket).await;
            let mut v = Vec::with_capacity(per);
            for i in 0..per {
                v.push(via_once(&mut c, i as u64, prompt).await);
            }
            v
        }
    })
    .await
}

/// What a batch of requests through the daemon ended with.
#[derive(Default)]
struct Batch {
    answered: usize,
    failed: usize,
    wrong_text: usize,
    /// Request to `done`, ms.
    latency: Vec<f64>,
    /// Request to the first `started`, ms: time spent waiting for capacity (and retries).
    to_start: Vec<f64>,
    wall_s: f64,
}

/// `n` requests through the daemon on `conc` connections, checking every answer's text.
async fn batch(socket: &Path, n: usize, conc: usize, max_tokens: Option<u32>) -> Batch {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..conc {
        let socket = socket.to_path_buf();
        let next = next.clone();
        handles.push(tokio::spawn(async move {
            let mut c = RawClient::connect(&socket).await;
            let mut b = Batch::default();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return b;
                }
                let prompt = format!("bench request {i}: explain quotas");
                let mut req = ChatRequest::user_text(i as u64, &prompt);
                req.max_tokens = max_tokens;
                let start = Instant::now();
                c.send(Request::Chat(req)).await;
                let mut text = String::new();
                let mut started = None;
                loop {
                    let Response::Event { event, .. } = c.recv().await else {
                        continue;
                    };
                    match event {
                        StreamEvent::Started { .. } => {
                            started.get_or_insert_with(|| start.elapsed());
                        }
                        StreamEvent::TextDelta { text: t } => text.push_str(&t),
                        StreamEvent::Rerouted {
                            mode: mythos_protocol::RerouteMode::Restart,
                            ..
                        } => text.clear(),
                        StreamEvent::Done(_) => {
                            b.answered += 1;
                            if text != answer_for(&prompt) {
                                b.wrong_text += 1;
                            }
                            break;
                        }
                        StreamEvent::Error { .. } => {
                            b.failed += 1;
                            break;
                        }
                        _ => {}
                    }
                }
                b.latency.push(ms(start.elapsed()));
                b.to_start.push(ms(started.unwrap_or_default()));
            }
        }));
    }
    let mut all = Batch::default();
    for h in handles {
        let b = h.await.unwrap();
        all.answered += b.answered;
        all.failed += b.failed;
        all.wrong_text += b.wrong_text;
        all.latency.extend(b.latency);
        all.to_start.extend(b.to_start);
    }
    all.wall_s = t0.elapsed().as_secs_f64();
    all
}

/// A mock with delays like a fast real provider: 20 ms to the first token, 1 ms per token.
async fn paced_mock(name: &str, flavor: Flavor) -> SimProvider {
    let sim = mock(name, flavor).await;
    sim.set_delays(Duration::from_millis(20), Duration::from_millis(1));
    sim
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The daemon's writes to client sockets so far, (socket, HTTP), from its `/metrics`.
async fn client_writes(base: &str, token: &str) -> (f64, f64) {
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
        .get(format!("{base}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let m = mythosd::metrics::parse_exposition(&text).expect("exposition");
    let get = |front: &str| {
        m.get(&format!("mythos_client_writes_total{{front=\"{front}\"}}"))
            .copied()
            .unwrap_or(0.0)
    };
    (get("socket"), get("http"))
}

/// `--callgrind`: user-space instructions per relayed chunk and per request, counted by
/// callgrind so the figures repeat run to run. The daemon runs under valgrind; after a warm-up,
/// each phase (short answers, then answers ten times as long, through the socket and then
/// through the HTTP front end) is dumped on its own with `callgrind_control --dump`, and the
/// two unknowns (cost per request, cost per chunk) are solved from the two answer lengths.
async fn callgrind() -> Vec<Row> {
    let have = |tool: &str| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("valgrind") || !have("callgrind_control") {
        eprintln!("bench --callgrind needs valgrind (with callgrind_control) on PATH");
        std::process::exit(2);
    }
    let sim = mock("mock", Flavor::OpenAi).await;
    let env = daemon_env(&[("mock", &sim)], "");
    mythos_tests::bin_dir();
    let dir = std::env::temp_dir().join(format!("mythos-callgrind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("callgrind dir");
    let wrapper = |out: &Path| -> Vec<String> {
        vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            format!("--callgrind-out-file={}", out.display()),
            "--dump-instr=no".into(),
            // Each dump readable on its own by callgrind_annotate.
            "--compress-strings=no".into(),
            "--quiet".into(),
        ]
    };
    eprintln!("bench: starting mythosd and the bare relay under callgrind (slow)…");
    let daemon = env.start_daemon_under(
        &wrapper(&dir.join("callgrind.out")),
        &[],
        Duration::from_secs(300),
    );
    let floor = FloorProcess::start_under(&wrapper(&dir.join("floor.out")), &sim.base_url());
    let socket_floor = SocketFloorProcess::start_under(
        &wrapper(&dir.join("socket-floor.out")),
        &sim.base_url(),
        &env.socket.with_file_name("floor.sock"),
    );
    let (base, token) = env.http();
    let prompt = "benchmark prompt";
    // Warm-up: connection pools, lazily built tables, the first state transaction.
    load_via(&env.socket, 1, 5, prompt).await;
    load_http(&base, &token, 1, 5, prompt).await;
    load_http(&floor.url, &token, 1, 5, prompt).await;
    load_via(&socket_floor.socket, 1, 5, prompt).await;
    let mut daemon_dumps = Dumps::new(daemon.child.id(), dir.join("callgrind.out"));
    let mut floor_dumps = Dumps::new(floor.child.id(), dir.join("floor.out"));
    let mut socket_floor_dumps = Dumps::new(socket_floor.child.id(), dir.join("socket-floor.out"));
    daemon_dumps.dump();
    floor_dumps.dump();
    socket_floor_dumps.dump();
    const REQUESTS: usize = 40;
    const LONG: usize = 10;
    let mut rows: Vec<Row> = Vec::new();
    // Each floor's figures go beside the rows of its front, as their "direct" column.
    for front in ["socket", "socket floor", "HTTP", "floor"] {
        let mut phase = Vec::new();
        for repeat in [1, LONG] {
            sim.set_answer_repeat(repeat);
            let (_, _, chunks, _) = match front {
                "socket" => load_via(&env.socket, 1, REQUESTS, prompt).await,
                "socket floor" => load_via(&socket_floor.socket, 1, REQUESTS, prompt).await,
                "HTTP" => load_http(&base, &token, 1, REQUESTS, prompt).await,
                _ => load_http(&floor.url, &token, 1, REQUESTS, prompt).await,
            };
            let dumps = match front {
                "floor" => &mut floor_dumps,
                "socket floor" => &mut socket_floor_dumps,
                _ => &mut daemon_dumps,
            };
            phase.push((chunks as f64, dumps.dump()));
        }
        sim.set_answer_repeat(1);
        let ((c1, i1), (c2, i2)) = (phase[0], phase[1]);
        let per_chunk = (i2 - i1) / (c2 - c1);
        let per_request = (i1 - per_chunk * c1) / REQUESTS as f64;
        if front.ends_with("floor") {
            let n = rows.len();
            rows[n - 2].direct = Some(Stat::one(per_chunk));
            rows[n - 1].direct = Some(Stat::one(per_request));
            let what = if front == "floor" {
                "; direct: a bare axum + reqwest relay (`FloorProcess`), which passes the \
                 mock's bytes through unparsed"
            } else {
                "; direct: a bare relay of the protocol's frames with reqwest and the least SSE \
                 parsing (`SocketFloorProcess`)"
            };
            for row in &mut rows[n - 2..] {
                row.note.push_str(what);
            }
            continue;
        }
        let note = format!(
            "callgrind; {REQUESTS} requests of {:.0} and of {:.0} chunks, one at a time",
            c1 / REQUESTS as f64,
            c2 / REQUESTS as f64
        );
        rows.push(Row {
            section: "2. relay throughput",
            metric: format!("user-space instructions per relayed chunk via {front}"),
            direct: None,
            via: Some(Stat::one(per_chunk)),
            unit: "instructions",
            note: note.clone(),
        });
        rows.push(Row {
            section: "2. relay throughput",
            metric: format!("user-space instructions per request via {front}, besides its chunks"),
            direct: None,
            via: Some(Stat::one(per_request)),
            unit: "instructions",
            note,
        });
    }
    drop(daemon);
    drop(floor);
    drop(socket_floor);
    eprintln!(
        "bench: the dumps are in {} (callgrind.out.N: 1 warm-up, 2-3 socket short/long, 4-5 HTTP \
         short/long; floor.out.N and socket-floor.out.N: 1 warm-up, 2-3 the bare relays \
         short/long); read one with callgrind_annotate",
        dir.display()
    );
    rows
}

/// The dumps `callgrind_control --dump` has a process under callgrind write, one after another.
struct Dumps {
    pid: u32,
    base: std::path::PathBuf,
    count: usize,
}

impl Dumps {
    fn new(pid: u32, base: std::path::PathBuf) -> Dumps {
        Dumps {
            pid,
            base,
            count: 0,
        }
    }

    /// Dump the counts so far; the instructions in this dump (since the last).
    fn dump(&mut self) -> f64 {
        let ok = std::process::Command::new("callgrind_control")
            .args(["--dump", &self.pid.to_string()])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "callgrind_control --dump failed");
        self.count += 1;
        let file = std::path::PathBuf::from(format!("{}.{}", self.base.display(), self.count));
        // The dump is written by the process once it gets the command.
        let t0 = Instant::now();
        loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if let Some(n) = text
                .lines()
                .find_map(|l| l.strip_prefix("totals:").or(l.strip_prefix("summary:")))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            {
                return n;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "no callgrind dump");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn cpu_secs(pid: u32) -> f64 {
    // The sum over the daemon's threads of the time they ran, in nanoseconds (the first field
    // of schedstat): /proc/PID/stat counts in clock ticks (10 ms), too coarse for a few
    // thousand chunks. The daemon's threads live as long as it does (the runtime's workers,
    // the state thread; blocking threads idle for 10 s before they go).
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        let ns: u64 = dir
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        if ns > 0 {
            return ns as f64 / 1e9;
        }
    }
    // utime + stime, fields 14 and 15 of /proc/PID/stat, in clock ticks.
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    #[cfg(unix)]
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    #[cfg(not(unix))]
    let hz = 100.0_f64;
    ticks / hz.max(1.0)
}

#[cfg(not(unix))]
fn raise_fd_limit() -> u64 {
    0
}

#[cfg(unix)]
fn raise_fd_limit() -> u64 {
    // SAFETY: plain getrlimit/setrlimit on our own process.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        r.rlim_cur
    }
}

/// A daemon environment over `providers`, in priority order. Their concurrency limit is lifted:
/// the memory rows hold thousands of streams open on one provider. The connection cap is raised
/// too: the concurrency-1000 rows hold 1,000 client connections, twice the default of 512,
/// and at the cap the daemon closes the longest-idle one (a client between two requests).
fn daemon_env<U: Upstream>(providers: &[(&str, &U)], config: &str) -> TestEnv {
    let mut env = TestEnv::new();
    let mut text = format!("[routing]\n{config}\n[server]\nmax_connections = 4096\n");
    for (i, (name, sim)) in providers.iter().enumerate() {
        let api = if sim.base_url().ends_with("/v1") {
            "openai"
        } else {
            "anthropic"
        };
        text.push_str(&format!(
            "[[provider]]\nname = \"{name}\"\napi = \"{api}\"\nbase_url = \"{}\"\nmodel = \"bench\"\n\
             api_key = \"bench-key\"\npriority = {i}\nmax_concurrent = 100000\n",
            sim.base_url()
        ));
    }
    env.write_config(&text);
    env.var("MYTHOS_LOG", "warn");
    // Compare runtime layouts without touching the bench's own runtime.
    if let Ok(n) = std::env::var("BENCH_DAEMON_WORKERS") {
        env.var("MYTHOS_WORKER_THREADS", &n);
    }
    env
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The floor relay builds the runtime the daemon has, not the bench's.
    if let Some(at) = args.iter().position(|a| a == "--serve-floor") {
        serve_floor(args.get(at + 1).expect("--serve-floor URL"));
        return;
    }
    if let Some(at) = args.iter().position(|a| a == "--serve-socket-floor") {
        let arg = |i: usize| args.get(at + i).expect("--serve-socket-floor URL PATH");
        serve_socket_floor(arg(1), arg(2));
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench(args));
}

async fn bench(args: Vec<String>) {
    let o = Opts {
        quick: args.iter().any(|a| a == "--quick"),
        overhead_only: args.iter().any(|a| a == "--overhead-only"),
        full: args.iter().any(|a| a == "--full"),
        json: args.iter().any(|a| a == "--json"),
        callgrind: args.iter().any(|a| a == "--callgrind"),
    };
    if args.iter().any(|a| a == "--serve-mock") {
        serve_mock().await;
        return;
    }
    // For profiling a running daemon (strace, perf): requests one at a time on one connection.
    if let Some(at) = args.iter().position(|a| a == "--drive") {
        let socket = args.get(at + 1).expect("--drive SOCKET N");
        let n = args.get(at + 2).and_then(|n| n.parse().ok()).unwrap_or(100);
        let (_, mut total, chunks, wall) =
            load_via(Path::new(socket), 1, n, "benchmark prompt").await;
        eprintln!(
            "bench --drive: {n} requests, {chunks} chunks in {wall:.2} s, total time p50 {:.3} ms",
            pct(&mut total, 0.5)
        );
        return;
    }
    if o.callgrind {
        let rows = callgrind().await;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        print_report(&rows, cores, &o);
        return;
    }
    let fd_limit = raise_fd_limit();
    let reps = if o.quick { 3 } else { 5 };
    let mut rows: Vec<Row> = Vec::new();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    eprintln!("bench: {cores} cores, fd limit {fd_limit}, {reps} repetitions");

    // --- 1 + 2: overhead and relay throughput on a healthy request ---------------------------
    let mut sim = Mock::start().await;
    let transport = Arc::new(HttpTransport::new(
        provider_cfg("mock", &sim, Api::Openai),
        http_client().expect("http client"),
    ));
    let env = daemon_env(&[("mock", &sim)], "");
    // Build (or find) the binaries before timing the start.
    mythos_tests::bin_dir();
    let t_spawn = Instant::now();
    let daemon = env.start_daemon(&[]);
    let ready_ms = ms(t_spawn.elapsed());
    let pid = daemon.child.id();
    let mut levels = vec![1usize, 10, 100];
    if o.full || !o.quick {
        levels.push(1000);
    }
    // `BENCH_LEVELS=100` (comma-separated) measures only those concurrencies.
    if let Ok(only) = std::env::var("BENCH_LEVELS") {
        levels = only
            .split(',')
            .filter_map(|l| l.trim().parse().ok())
            .collect();
    }
    let prompt = "benchmark prompt";
    for &conc in &levels {
        let total = if o.quick {
            (conc * 4).max(100)
        } else {
            (conc * 10).max(300)
        };
        let per = total.div_ceil(conc);
        let (mut d_ttft50, mut d_ttft99, mut d_tot50, mut d_tot99) =
            (vec![], vec![], vec![], vec![]);
        let (mut v_ttft50, mut v_ttft99, mut v_tot50, mut v_tot99) =
            (vec![], vec![], vec![], vec![]);
        let mut relay = vec![];
        let mut cpu_per_m = vec![];
        let (mut h_ttft50, mut h_ttft99, mut h_tot50) = (vec![], vec![], vec![]);
        let mut h_cpu_per_m = vec![];
        let (mut writes, mut h_writes) = (vec![], vec![]);
        let (base, token) = env.http();
        for _ in 0..reps {
            let (mut a, mut b, _, _) = load_direct(&transport, conc, per, prompt).await;
            d_ttft50.push(pct(&mut a, 0.5));
            d_ttft99.push(pct(&mut a, 0.99));
            d_tot50.push(pct(&mut b, 0.5));
            d_tot99.push(pct(&mut b, 0.99));

            let w0 = client_writes(&base, &token).await;
            let cpu0 = cpu_secs(pid);
            let (mut a, mut b, chunks, wall) = load_via(&env.socket, conc, per, prompt).await;
            let cpu = cpu_secs(pid) - cpu0;
            let w1 = client_writes(&base, &token).await;
            writes.push((w1.0 - w0.0) / chunks.max(1) as f64);
            v_ttft50.push(pct(&mut a, 0.5));
            v_ttft99.push(pct(&mut a, 0.99));
            v_tot50.push(pct(&mut b, 0.5));
            v_tot99.push(pct(&mut b, 0.99));
            relay.push(chunks as f64 / wall);
            cpu_per_m.push(cpu / chunks.max(1) as f64 * 1e6);

            if conc <= 100 {
                let w0 = client_writes(&base, &token).await;
                let cpu0 = cpu_secs(pid);
                let (mut a, mut b, chunks, _) = load_http(&base, &token, conc, per, prompt).await;
                let cpu = cpu_secs(pid) - cpu0;
                let w1 = client_writes(&base, &token).await;
                // Less the one write of the first scrape's own answer.
                h_writes.push((w1.1 - w0.1 - 1.0).max(0.0) / chunks.max(1) as f64);
                h_ttft50.push(pct(&mut a, 0.5));
                h_ttft99.push(pct(&mut a, 0.99));
                h_tot50.push(pct(&mut b, 0.5));
                h_cpu_per_m.push(cpu / chunks.max(1) as f64 * 1e6);
            }
        }
        if !h_ttft50.is_empty() {
            for (metric, d, v) in [
                ("time to first token p50", &d_ttft50, h_ttft50),
                ("time to first token p99", &d_ttft99, h_ttft99),
                ("total time p50", &d_tot50, h_tot50),
            ] {
                rows.push(Row {
                    section: "1b. overhead through the HTTP front end",
                    metric: format!("{metric}, concurrency {conc}"),
                    direct: Some(Stat::of(d.clone())),
                    via: Some(Stat::of(v)),
                    unit: "ms",
                    note: "POST /v1/chat/completions, streamed".into(),
                });
            }
            rows.push(Row {
                section: "2. relay throughput",
                metric: format!("daemon CPU per relayed chunk via HTTP, concurrency {conc}"),
                direct: None,
                via: Some(Stat::of(h_cpu_per_m)),
                unit: "µs",
                note: "front end + router + upstream client".into(),
            });
            rows.push(Row {
                section: "2. relay throughput",
                metric: format!(
                    "client socket writes per relayed chunk via HTTP, concurrency {conc}"
                ),
                direct: None,
                via: Some(Stat::of(h_writes)),
                unit: "writes",
                note: "mythos_client_writes_total{front=\"http\"}".into(),
            });
        }
        for (metric, d, v) in [
            ("time to first token p50", d_ttft50, v_ttft50),
            ("time to first token p99", d_ttft99, v_ttft99),
            ("total time p50", d_tot50, v_tot50),
            ("total time p99", d_tot99, v_tot99),
        ] {
            rows.push(Row {
                section: "1. overhead on a healthy request",
                metric: format!("{metric}, concurrency {conc}"),
                direct: Some(Stat::of(d)),
                via: Some(Stat::of(v)),
                unit: "ms",
                note: String::new(),
            });
        }
        rows.push(Row {
            section: "2. relay throughput",
            metric: format!("chunks per second, concurrency {conc}"),
            direct: None,
            via: Some(Stat::of(relay)),
            unit: "chunks/s",
            note: String::new(),
        });
        rows.push(Row {
            section: "2. relay throughput",
            metric: format!("daemon CPU per relayed chunk, concurrency {conc}"),
            direct: None,
            via: Some(Stat::of(cpu_per_m)),
            unit: "µs",
            note: "includes the daemon's HTTP client and SSE parsing".into(),
        });
        rows.push(Row {
            section: "2. relay throughput",
            metric: format!("client socket writes per relayed chunk, concurrency {conc}"),
            direct: None,
            via: Some(Stat::of(writes)),
            unit: "writes",
            note: "mythos_client_writes_total{front=\"socket\"}".into(),
        });
    }

    // Per-request set-up and bookkeeping in time, the way `--callgrind` counts it in
    // instructions: short and long answers one at a time, and the daemon's CPU solved into a
    // part per chunk and a part per request. The HTTP rows have the bare relay of
    // `FloorProcess` beside them, measured the same way in the same run.
    let (base_url, token) = env.http();
    let floor = FloorProcess::start(&sim.base_url());
    let socket_floor =
        SocketFloorProcess::start(&sim.base_url(), &env.socket.with_file_name("floor.sock"));
    let daemon_socket = env.socket.to_str().expect("a socket path in UTF-8");
    let floor_socket = socket_floor
        .socket
        .to_str()
        .expect("a socket path in UTF-8");
    for (front, conc) in [("socket", 1), ("socket", 10), ("HTTP", 1), ("HTTP", 10)] {
        let per = SETUP_REQUESTS / conc;
        let (mut daemon, mut bare, mut short) = (Solved::default(), Solved::default(), 0.0);
        for _ in 0..reps {
            // The address is a socket's path for the socket rows, a URL for the HTTP ones.
            let targets = if front == "HTTP" {
                vec![
                    (pid, base_url.as_str(), &mut daemon),
                    (floor.child.id(), floor.url.as_str(), &mut bare),
                ]
            } else {
                vec![
                    (pid, daemon_socket, &mut daemon),
                    (socket_floor.child.id(), floor_socket, &mut bare),
                ]
            };
            for (pid, base, out) in targets {
                let mut phase = Vec::new();
                for repeat in [1, SETUP_LONG] {
                    sim.set_answer_repeat(repeat);
                    let cpu0 = cpu_secs(pid);
                    let (_, _, chunks, _) = if front == "socket" {
                        load_via(Path::new(base), conc, per, prompt).await
                    } else {
                        load_http(base, &token, conc, per, prompt).await
                    };
                    phase.push((chunks as f64, cpu_secs(pid) - cpu0));
                }
                sim.set_answer_repeat(1);
                let ((c1, t1), (c2, t2)) = (phase[0], phase[1]);
                let per_chunk = (t2 - t1) / (c2 - c1);
                out.per_chunk.push(per_chunk * 1e6);
                out.per_request
                    .push((t1 - per_chunk * c1) / SETUP_REQUESTS as f64 * 1e6);
                short = c1 / SETUP_REQUESTS as f64;
            }
        }
        let note = format!(
            "{SETUP_REQUESTS} requests of {short:.0} and of {:.0} chunks; \
             includes its state record{}",
            short * SETUP_LONG as f64,
            if front == "HTTP" {
                "; direct: a bare axum + reqwest relay on one worker (`FloorProcess`)"
            } else {
                "; direct: a bare relay of the protocol's frames, reqwest and the least SSE \
                 parsing, on one worker (`SocketFloorProcess`)"
            }
        );
        let bare_stat = |v: Vec<f64>| (!v.is_empty()).then(|| Stat::of(v));
        rows.push(Row {
            section: "2. relay throughput",
            metric: format!(
                "daemon CPU per request via {front}, besides its chunks, concurrency {conc}"
            ),
            direct: bare_stat(bare.per_request),
            via: Some(Stat::of(daemon.per_request)),
            unit: "µs",
            note: note.clone(),
        });
        rows.push(Row {
            section: "2. relay throughput",
            metric: format!(
                "daemon CPU per relayed chunk via {front}, besides its request, concurrency {conc}"
            ),
            direct: bare_stat(bare.per_chunk),
            via: Some(Stat::of(daemon.per_chunk)),
            unit: "µs",
            note,
        });
    }
    drop(floor);
    drop(socket_floor);

    if o.overhead_only {
        // Sections 1, 1b and 2 alone: the quick loop while tuning the relay.
        drop(daemon);
        print_report(&rows, cores, &o);
        return;
    }
    // The same comparison with a provider that paces its tokens like a real one (50 ms to the
    // first token, 20 ms per token): the CPU is no longer saturated, so this shows the
    // daemon's per-request cost at high concurrency without the queueing above.
    {
        let paced = mock("paced", Flavor::OpenAi).await;
        paced.set_delays(Duration::from_millis(50), Duration::from_millis(20));
        let transport = Arc::new(HttpTransport::new(
            provider_cfg("paced", &paced, Api::Openai),
            http_client().expect("http client"),
        ));
        let env = daemon_env(&[("paced", &paced)], "");
        let _daemon = env.start_daemon(&[]);
        let mut paced_levels = vec![100usize];
        if !o.quick {
            paced_levels.push(1000);
        }
        for conc in paced_levels {
            let per = 2;
            let (mut d50, mut d99, mut v50, mut v99) = (vec![], vec![], vec![], vec![]);
            for _ in 0..reps {
                let (mut a, _, _, _) = load_direct(&transport, conc, per, prompt).await;
                d50.push(pct(&mut a, 0.5));
                d99.push(pct(&mut a, 0.99));
                let (mut a, _, _, _) = load_via(&env.socket, conc, per, prompt).await;
                v50.push(pct(&mut a, 0.5));
                v99.push(pct(&mut a, 0.99));
            }
            for (metric, d, v) in [("p50", d50, v50), ("p99", d99, v99)] {
                rows.push(Row {
                    section: "1. overhead on a healthy request",
                    metric: format!(
                        "paced provider: time to first token {metric}, concurrency {conc}"
                    ),
                    direct: Some(Stat::of(d)),
                    via: Some(Stat::of(v)),
                    unit: "ms",
                    note: "50 ms to first token, 20 ms per token".into(),
                });
            }
        }
    }

    // --- 3: memory ------------------------------------------------------------------------
    let idle = rss_kib(pid);
    rows.push(Row {
        section: "3. memory",
        metric: "daemon RSS after the load above, once idle".into(),
        direct: None,
        via: Some(Stat::one(idle as f64 / 1024.0)),
        unit: "MiB",
        note: String::new(),
    });
    drop(daemon);
    let mut stream_counts = vec![1000usize];
    if o.full {
        stream_counts.push(10_000);
    }
    for n in stream_counts {
        // Each process (this one holding the mock's side, the daemon its upstream side) needs
        // one descriptor per stream plus a few hundred for everything else.
        if (n as u64) + 1000 > fd_limit {
            rows.push(Row {
                section: "3. memory",
                metric: format!("{n} open streams"),
                direct: None,
                via: None,
                unit: "",
                note: format!("skipped: fd limit {fd_limit}"),
            });
            continue;
        }
        let sim = mock("mem", Flavor::OpenAi).await;
        let env = daemon_env(
            &[("mem", &sim)],
            "stall_timeout_ms = 600000\nfirst_token_timeout_ms = 600000",
        );
        let daemon = env.start_daemon(&[]);
        let pid = daemon.child.id();
        let base = rss_kib(pid);
        sim.inject(vec![SimFault::StallAfter { tokens: 1 }; n]);
        // A connection runs at most `MAX_STREAMS_PER_CONNECTION` streams, and the daemon takes
        // 512 connections by default: 25 a connection is 400 connections for 10,000.
        let per = 25
            .min(n)
            .min(mythosd::server::connection::MAX_STREAMS_PER_CONNECTION);
        let conns = n / per;
        let mut clients = Vec::new();
        for _ in 0..conns {
            clients.push(RawClient::connect(&env.socket).await);
        }
        for c in clients.iter_mut() {
            for i in 0..per {
                c.send(Request::Chat(ChatRequest::user_text(i as u64, "hold")))
                    .await;
            }
        }
        // Wait until every stream has produced its first token: all are open upstream.
        for c in clients.iter_mut() {
            let mut got = 0;
            while got < per {
                match c.recv().await {
                    Response::Event {
                        event: StreamEvent::TextDelta { .. },
                        ..
                    } => got += 1,
                    Response::Event {
                        event: StreamEvent::Error { message, .. },
                        ..
                    } => panic!("a stream held open for the memory row failed: {message}"),
                    _ => {}
                }
            }
        }
        let loaded = rss_kib(pid);
        let per_stream = (loaded.saturating_sub(base)) as f64 * 1024.0 / n as f64;
        rows.push(Row {
            section: "3. memory",
            metric: format!("daemon RSS idle → with {n} open streams"),
            direct: None,
            via: Some(Stat::one(loaded as f64 / 1024.0)),
            unit: "MiB",
            note: format!(
                "idle {:.1} MiB; {:.1} KiB per stream",
                base as f64 / 1024.0,
                per_stream / 1024.0
            ),
        });
        drop(clients);
        drop(daemon);
        sim.shutdown();
    }

    // --- 4: failover ----------------------------------------------------------------------
    for (label, fault) in [
        (
            "429 with Retry-After 60 s",
            SimFault::RateLimit {
                retry_after_ms: 60_000,
            },
        ),
        ("529 every time", SimFault::Overloaded),
    ] {
        let primary = mock("primary", Flavor::Anthropic).await;
        let fallback = mock("fallback", Flavor::OpenAi).await;
        let ft = HttpTransport::new(
            provider_cfg("fallback", &fallback, Api::Openai),
            http_client().expect("http client"),
        );
        let mut own = Vec::new();
        for _ in 0..20 {
            own.push(direct_once(&ft, prompt).await.0);
        }
        let env = daemon_env(&[("primary", &primary), ("fallback", &fallback)], "");
        let _daemon = env.start_daemon(&[]);
        primary.inject(vec![fault.clone(); 1000]);
        let mut c = RawClient::connect(&env.socket).await;
        let first = via_once(&mut c, 0, prompt).await.0;
        let mut next = Vec::new();
        for i in 1..=100 {
            next.push(via_once(&mut c, i, prompt).await.0);
        }
        rows.push(Row {
            section: "4. failover",
            metric: format!("{label}: first request, time to first token"),
            direct: Some(Stat::of(own.clone())),
            via: Some(Stat::one(first)),
            unit: "ms",
            note: format!("primary saw {} request(s)", primary.stats().requests),
        });
        rows.push(Row {
            section: "4. failover",
            metric: format!("{label}: next 100 requests, time to first token p50"),
            direct: Some(Stat::of(own)),
            via: Some(Stat::one(pct(&mut next, 0.5))),
            unit: "ms",
            note: format!("primary saw {} request(s) in all", primary.stats().requests),
        });
    }

    // Mid-stream disconnect: from the reroute to the fallback's first token, next to the
    // fallback's own time to first token.
    {
        let primary = mock("primary", Flavor::OpenAi).await;
        let fallback = mock("fallback", Flavor::OpenAi).await;
        let ft = HttpTransport::new(
            provider_cfg("fallback", &fallback, Api::Openai),
            http_client().expect("http client"),
        );
        let mut own = Vec::new();
        for _ in 0..20 {
            own.push(direct_once(&ft, prompt).await.0);
        }
        let mut samples = Vec::new();
        for i in 0..(reps as u64 * 3) {
            // A fresh daemon each time (6 ms): every sample starts from a healthy primary.
            let env = daemon_env(&[("primary", &primary), ("fallback", &fallback)], "");
            let _daemon = env.start_daemon(&[]);
            let mut c = RawClient::connect(&env.socket).await;
            primary.inject([SimFault::DisconnectAfter { tokens: 5 }]);
            c.send(Request::Chat(ChatRequest::user_text(300 + i, prompt)))
                .await;
            let mut last_token = Instant::now();
            let mut rerouted = false;
            loop {
                match c.recv().await {
                    Response::Event {
                        event: StreamEvent::Rerouted { .. },
                        ..
                    } => rerouted = true,
                    Response::Event {
                        event: StreamEvent::TextDelta { .. },
                        ..
                    } => {
                        if std::mem::take(&mut rerouted) {
                            samples.push(ms(last_token.elapsed()) - CUT_DELAY_MS);
                        }
                        last_token = Instant::now();
                    }
                    Response::Event {
                        event: StreamEvent::Done(_) | StreamEvent::Error { .. },
                        ..
                    } => break,
                    _ => {}
                }
            }
        }
        eprintln!("disconnect samples: {}", samples.len());
        rows.push(Row {
            section: "4. failover",
            metric: "disconnect after 5 tokens: connection lost → fallback's first new token"
                .into(),
            direct: Some(Stat::of(own)),
            via: Some(Stat::of(samples)),
            unit: "ms",
            note: format!(
                "direct = the fallback's own time to first token; the mock waits {CUT_DELAY_MS} ms \
                 after its last token before cutting, which is subtracted"
            ),
        });
    }

    // --- 5: watchdog ----------------------------------------------------------------------
    {
        let primary = mock("primary", Flavor::OpenAi).await;
        let fallback = mock("fallback", Flavor::OpenAi).await;
        let env = daemon_env(
            &[("primary", &primary), ("fallback", &fallback)],
            "stall_timeout_ms = 2000\nfirst_token_timeout_ms = 2000\nwatchdog_floor_ms = 250",
        );
        let _daemon = env.start_daemon(&[]);
        let mut c = RawClient::connect(&env.socket).await;
        // Warm the primary's averages so the adaptive threshold applies.
        for i in 0..5 {
            via_once(&mut c, i, prompt).await;
        }
        let mut samples = Vec::new();
        for i in 0..reps as u64 {
            let _ = c.chat(ChatRequest::user_text(100 + i, "reset")).await;
            c.send(Request::Reset {
                provider: "primary".into(),
            })
            .await;
            let _ = c.recv().await;
            primary.inject([SimFault::StallAfter { tokens: 5 }]);
            c.send(Request::Chat(ChatRequest::user_text(200 + i, prompt)))
                .await;
            let mut last_token = Instant::now();
            let mut rerouted = false;
            loop {
                match c.recv().await {
                    Response::Event {
                        event: StreamEvent::TextDelta { .. },
                        ..
                    } => {
                        if rerouted {
                            samples.push(ms(last_token.elapsed()));
                            rerouted = false;
                        }
                        last_token = Instant::now();
                    }
                    Response::Event {
                        event: StreamEvent::Rerouted { .. },
                        ..
                    } => rerouted = true,
                    Response::Event {
                        event: StreamEvent::Done(_) | StreamEvent::Error { .. },
                        ..
                    } => break,
                    _ => {}
                }
            }
        }
        rows.push(Row {
            section: "5. watchdog",
            metric: "stall after 5 tokens → fallback's first token".into(),
            direct: None,
            via: Some(Stat::of(samples)),
            unit: "ms",
            note: "configured 2000 ms; adaptive 3x gap average, floor 250 ms".into(),
        });
    }

    // --- 6: rate limits and faults under load ----------------------------------------------
    {
        // Three providers announcing request and token quotas in their own formats (a minute
        // scaled down to 3 s so the run takes seconds), 50 clients, 1,000 requests: 400 fit
        // the full buckets, the rest must be paced by the refill.
        let n = if o.quick { 600 } else { 1000 };
        let window = Duration::from_secs(3);
        let quotas = [
            ("primary", Flavor::Anthropic, 100, Some(40_000)),
            ("second", Flavor::OpenAi, 100, Some(40_000)),
            ("third", Flavor::DeepSeek, 200, Some(40_000)),
        ];
        let mut sims = Vec::new();
        for (name, flavor, requests, tokens) in quotas {
            let sim = paced_mock(name, flavor).await;
            sim.set_quota(Some(SimQuota {
                requests: Some(requests),
                tokens,
                input_tokens: None,
                output_tokens: None,
                window,
            }));
            sims.push((name, sim));
        }
        let named: Vec<(&str, &SimProvider)> = sims.iter().map(|(n, s)| (*n, s)).collect();
        let env = daemon_env(&named, "");
        let _daemon = env.start_daemon(&[]);
        let b = batch(&env.socket, n, 50, Some(256)).await;
        let over: u64 = sims.iter().map(|(_, s)| s.stats().over_quota).sum();
        let primary = sims[0].1.stats().admitted as f64;
        // What the primary could have served: its bucket, plus its refill over the run.
        let primary_quota = 100.0 + 100.0 / window.as_secs_f64() * b.wall_s;
        let mut to_start = b.to_start.clone();
        let section = "6. rate limits under load";
        rows.push(Row {
            section,
            metric: format!("quotas, concurrency 50, {n} requests: client-visible errors"),
            direct: None,
            via: Some(Stat::one(b.failed as f64)),
            unit: "count",
            note: format!(
                "{} answered, {} with wrong text, in {:.1} s",
                b.answered, b.wrong_text, b.wall_s
            ),
        });
        rows.push(Row {
            section,
            metric: "quotas: upstream 429s per 1,000 requests".into(),
            direct: None,
            via: Some(Stat::one(over as f64 * 1000.0 / n as f64)),
            unit: "count",
            note: format!("{over} in all"),
        });
        rows.push(Row {
            section,
            metric: "quotas: the primary's share of its quota served".into(),
            direct: None,
            via: Some(Stat::one(100.0 * primary / primary_quota)),
            unit: "%",
            note: format!("{primary:.0} of {primary_quota:.0} (100 + 33.3/s over the run)"),
        });
        rows.push(Row {
            section,
            metric: "quotas: wait before the request went out, p50".into(),
            direct: None,
            via: Some(Stat::one(pct(&mut to_start, 0.5))),
            unit: "ms",
            note: "queue waits included".into(),
        });
        rows.push(Row {
            section,
            metric: "quotas: wait before the request went out, p99".into(),
            direct: None,
            via: Some(Stat::one(pct(&mut to_start, 0.99))),
            unit: "ms",
            note: "capacity 133 requests/s in all, asked for far more".into(),
        });
    }
    for conc in [8usize, 64] {
        // The mix at 30 % on every provider: 429 with Retry-After 1 s, 503,
        // disconnects and malformed chunks.
        let n = if o.quick { 300 } else { 1000 };
        let mut sims = Vec::new();
        for (i, (name, flavor)) in [
            ("primary", Flavor::Anthropic),
            ("second", Flavor::DeepSeek),
            ("third", Flavor::OpenAi),
        ]
        .into_iter()
        .enumerate()
        {
            let sim = mock(name, flavor).await;
            sim.set_delays(Duration::from_millis(5), Duration::from_millis(1));
            sim.set_chaos(Some(SimChaos::mix(0.30)));
            sim.reseed(1000 + conc as u64 + i as u64);
            sims.push((name, sim));
        }
        let named: Vec<(&str, &SimProvider)> = sims.iter().map(|(n, s)| (*n, s)).collect();
        let env = daemon_env(&named, "");
        let _daemon = env.start_daemon(&[]);
        let b = batch(&env.socket, n, conc, Some(256)).await;
        let upstream: u64 = sims.iter().map(|(_, s)| s.stats().requests).sum();
        let mut latency = b.latency.clone();
        let section = "6. rate limits under load";
        rows.push(Row {
            section,
            metric: format!("30 % random faults, concurrency {conc}, {n} requests: answered"),
            direct: None,
            via: Some(Stat::one(100.0 * b.answered as f64 / n as f64)),
            unit: "%",
            note: format!(
                "{} failed, {} with wrong text, in {:.1} s",
                b.failed, b.wrong_text, b.wall_s
            ),
        });
        rows.push(Row {
            section,
            metric: format!("30 % random faults, concurrency {conc}: latency p99"),
            direct: None,
            via: Some(Stat::one(pct(&mut latency, 0.99))),
            unit: "ms",
            note: format!("p50 {:.1} ms", pct(&mut latency, 0.5)),
        });
        rows.push(Row {
            section,
            metric: format!("30 % random faults, concurrency {conc}: upstream requests per answer"),
            direct: None,
            via: Some(Stat::one(upstream as f64 / b.answered.max(1) as f64)),
            unit: "count",
            note: "expected 1 / (1 − 0.3) = 1.43 (faults are drawn at random)".into(),
        });
    }

    // --- 7: client start ------------------------------------------------------------------
    {
        let sim = mock("mock", Flavor::OpenAi).await;
        let t = HttpTransport::new(
            provider_cfg("mock", &sim, Api::Openai),
            http_client().expect("http client"),
        );
        let env = daemon_env(&[("mock", &sim)], "");
        let _daemon = env.start_daemon(&[]);
        let mut wall = Vec::new();
        let mut own = Vec::new();
        for _ in 0..(reps * 2) {
            own.push(direct_once(&t, prompt).await.1);
            let t0 = Instant::now();
            let out = env
                .command("mythos")
                .args(["ask", prompt])
                .output()
                .unwrap();
            assert!(out.status.success());
            wall.push(ms(t0.elapsed()));
        }
        rows.push(Row {
            section: "7. client start",
            metric: "`mythos ask` end to end, warm daemon".into(),
            direct: Some(Stat::of(own)),
            via: Some(Stat::of(wall)),
            unit: "ms",
            note: "direct = the mock's own request time".into(),
        });
        rows.push(Row {
            section: "7. client start",
            metric: "daemon start to ready".into(),
            direct: None,
            via: Some(Stat::one(ready_ms)),
            unit: "ms",
            note: "spawn → readiness line, first start in this run".into(),
        });
    }

    print_report(&rows, cores, &o);
}

fn print_report(rows: &[Row], cores: usize, o: &Opts) {
    if o.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let s = |s: &Option<Stat>| {
                    s.map(|s| serde_json::json!({"median": s.median, "min": s.min, "max": s.max}))
                };
                serde_json::json!({"section": r.section, "metric": r.metric, "unit": r.unit,
                    "direct": s(&r.direct), "via_mythosd": s(&r.via), "note": r.note})
            })
            .collect();
        println!("{}", serde_json::json!({"cores": cores, "rows": v}));
        return;
    }
    println!("mythosd benchmark: {cores} cores, medians of repetitions (min–max)\n");
    println!("| section | metric | direct | via mythosd | added | note |");
    println!("|---|---|---|---|---|---|");
    let fmt = |s: &Option<Stat>, unit: &str| match s {
        Some(s) if unit == "writes" => format!("{:.3} ({:.3}–{:.3})", s.median, s.min, s.max),
        Some(s) if s.min == s.max && unit != "ms" => format!("{:.2}", s.median),
        Some(s) if s.min == s.max => format!("{:.3}", s.median),
        Some(s) if unit == "ms" => format!("{:.3} ({:.3}–{:.3})", s.median, s.min, s.max),
        Some(s) => format!("{:.1} ({:.1}–{:.1})", s.median, s.min, s.max),
        None => "–".into(),
    };
    for r in rows {
        let added = match (&r.direct, &r.via) {
            (Some(d), Some(v)) if ["ms", "µs", "instructions"].contains(&r.unit) => {
                let ratio = if d.median > 0.0 {
                    v.median / d.median
                } else {
                    0.0
                };
                match r.unit {
                    "ms" => format!("{:+.0} µs (×{ratio:.2})", (v.median - d.median) * 1000.0),
                    "µs" => format!("{:+.0} µs (×{ratio:.2})", v.median - d.median),
                    _ => format!("{:+.0} (×{ratio:.2})", v.median - d.median),
                }
            }
            _ => "–".into(),
        };
        println!(
            "| {} | {} ({}) | {} | {} | {} | {} |",
            r.section,
            r.metric,
            r.unit,
            fmt(&r.direct, r.unit),
            fmt(&r.via, r.unit),
            added,
            r.note
        );
    }
}
