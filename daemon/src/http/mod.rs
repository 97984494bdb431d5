//! The HTTP front end: the Anthropic Messages and OpenAI Chat Completions / Responses APIs on
//! loopback, so unmodified agents and editors (Claude Code, Codex CLI, aider, Continue, Zed,
//! opencode, the official SDKs) get failover, pacing and the shared health view by changing a
//! base URL.
//!
//! - [`config`]: `[http]`, where it listens and how model names hint the task;
//! - [`token`]: the local token agents present instead of a provider key;
//! - [`models`]: `PROVIDER/MODEL` pins, aliases, hints, and `GET /v1/models`;
//! - [`messages`], [`chat`], [`responses`]: each API's request translation and stream encoder;
//! - [`relay`]: one request through the router, shared by the APIs;
//! - [`errors`]: each API's error shapes and the no-double-retry headers.

#[cfg(test)]
mod bench;
pub mod chat;
pub mod config;
pub mod errors;
#[cfg(test)]
mod golden;
pub mod listener;
pub mod messages;
pub mod models;
pub mod relay;
pub mod responses;
#[cfg(test)]
mod roundtrip;
#[cfg(test)]
mod serve_tests;
pub mod template;
pub mod token;
pub mod translate;

use futures_util::future::Either;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router as Routes;
use mythos_protocol::ChatRequest;
use serde_json::json;

use crate::server::memory::{self, Held, Refusal, RequestMemory};
use crate::server::Context;
use config::HttpConfig;
use errors::{ApiError, Dialect};

/// Largest request body: a long agent conversation with screenshots inline. Bigger bodies get a
/// 413 before any of it is buffered.
pub const MAX_BODY: usize = 32 * 1024 * 1024;

/// What every handler shares.
pub struct Front {
    /// The daemon (router in force, shutdown tokens, stream tracker).
    pub ctx: Arc<Context>,
    /// `[http]`.
    pub cfg: HttpConfig,
    /// The token a request must present.
    token: String,
}

impl Front {
    /// A front end over `ctx` accepting `token`.
    pub fn new(ctx: Arc<Context>, cfg: HttpConfig, token: String) -> Self {
        Front { ctx, cfg, token }
    }

    /// Task and pin from the model name the client sent.
    pub fn route_options(&self, chat: &mut ChatRequest, model: &str) {
        let router = self.ctx.router();
        let choice = models::resolve(model, router.providers().iter().map(|p| &p.cfg), &self.cfg);
        chat.task = choice.task;
        chat.pin = choice.pin;
    }
}

/// What a request brings besides its body and headers.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When the handler got it: the daemon's time on it since counts as its overhead.
    pub received: tokio::time::Instant,
    /// Its connection's flag, set when the connection gives up on a client that stopped
    /// reading.
    pub stuck: listener::Stuck,
}

impl Arrival {
    /// A request arriving now on the connection that holds `stuck`.
    pub fn now(stuck: listener::Stuck) -> Self {
        Arrival {
            received: tokio::time::Instant::now(),
            stuck,
        }
    }
}

/// Route a translated request: task and pin from `model`, then wait for the response head.
/// The head's headers go into `headers`.
pub async fn begin(
    front: &Front,
    mut chat: ChatRequest,
    model: &str,
    arrival: Arrival,
    headers: &mut HeaderMap,
) -> Result<(relay::Routed, relay::Head), ApiError> {
    front.route_options(&mut chat, model);
    let mut routed = relay::start(&front.ctx, chat, arrival.stuck)?;
    let head = routed.head(arrival.received.elapsed()).await?;
    head.headers(headers);
    Ok((routed, head))
}

/// Bind the front end's listener as configured: `Ok(None)` when it is off, and an error
/// (logged, and a note for `status` and `/health`) when the address is taken: the socket
/// clients work either way, so a busy port never stops the daemon.
pub async fn bind(cfg: &HttpConfig) -> Result<Option<tokio::net::TcpListener>, String> {
    if !cfg.enabled {
        return Ok(None);
    }
    match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => Ok(Some(l)),
        Err(e) => {
            tracing::warn!(listen = %cfg.listen, error = %e,
                           "the HTTP front end cannot listen; agents cannot reach this daemon over HTTP");
            Err(format!(
                "the HTTP front end cannot listen on {}: {e}; agents cannot reach this daemon \
                 over HTTP (another program holds the port? set `[http] listen` or \
                 MYTHOS_HTTP_LISTEN to a free address)",
                cfg.listen
            ))
        }
    }
}

/// The front end, once it listens.
pub struct FrontEnd {
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// The address file's content as written, if it was (see [`start`]).
    pub published: Option<String>,
    /// Resolves once the listener is closed (at the drain's start): the port is then free for
    /// the next daemon.
    pub closed: tokio::sync::oneshot::Receiver<()>,
}

/// Serve on `listener` until the daemon drains. Writes the token (made on first start) and,
/// if `publish`, the bound address into `state_dir` for `mythos token` / `mythos env` (a
/// daemon sharing another's state directory does not take over its address).
pub async fn start(
    ctx: Arc<Context>,
    cfg: HttpConfig,
    listener: tokio::net::TcpListener,
    state_dir: &Path,
    publish: bool,
) -> std::io::Result<FrontEnd> {
    let token = token::load_or_create(state_dir)?;
    let addr = listener.local_addr()?;
    let mut local = addr;
    // Listening on every address (`0.0.0.0`, with `allow_remote`): this machine's clients
    // reach it on loopback. `http://0.0.0.0:…` printed by `mythos env` was not covered by its
    // `NO_PROXY`, so a configured proxy saw the token (found by a helper).
    if local.ip().is_unspecified() {
        local.set_ip(match local.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let published = format!("{local}\n");
    if publish {
        token::write_private(&state_dir.join(token::ADDRESS_FILE), published.as_bytes())?;
    }
    let _ = ctx
        .front_end
        .set((format!("http://{local}"), token.clone()));
    let front = Arc::new(Front::new(ctx.clone(), cfg, token));
    let app = routes(front);
    let draining = ctx.draining.clone();
    // Without TCP_NODELAY, the last small frame of an answer waits for the client's delayed
    // ACK: +40 ms on every response (measured by the bench). Half the connection cap: every
    // HTTP request may hold an upstream connection too.
    let cap = (ctx.conns.max() / 2).max(4);
    let listener = listener::CappedListener::new(listener, cap);
    let streams = ctx.streams.clone();
    let (closing, closed) = tokio::sync::oneshot::channel();
    // Tracked with the chat streams, so shutdown waits until the last frames of every HTTP
    // answer are written, not only until the router has produced them.
    streams.spawn(serve(
        listener,
        app,
        draining,
        ctx.hard_stop.clone(),
        ctx.metrics.clone(),
        closing,
    ));
    tracing::info!(listen = %addr, "HTTP front end ready");
    Ok(FrontEnd {
        addr,
        published: publish.then_some(published),
        closed,
    })
}

/// A connection that sends no request head for this long is closed: one that connected and
/// said nothing, or a keep-alive connection idle between requests (the SDKs reconnect).
/// It gives their descriptors back; a new client does not wait for it, since at the cap it
/// displaces such a connection (see [`listener`]).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A request body that has not arrived whole this long after its head is given up (408): a
/// client that sends its headers and then trickles the body, or none of it, would otherwise
/// hold a connection seat for as long as it likes (300 such connections held every seat for
/// good). Bodies come over loopback: megabytes take milliseconds.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Read the whole body within [`BODY_READ_TIMEOUT`] (and [`MAX_BODY`]) before the handler
/// runs; the handler then takes it from memory. The body's bytes are held from the daemon's
/// request memory first (its declared length, or as it arrives when it has none), and stay held
/// until the response has been sent: the request lives that long, translated, in the router.
async fn body_deadline(
    State(memory): State<Arc<RequestMemory>>,
    req: Request,
    next: Next,
) -> Response {
    let dialect = dialect_of(req.uri().path());
    let (parts, body) = req.into_parts();
    let error = |status: StatusCode, message: String| {
        ApiError {
            status,
            kind: mythos_protocol::ErrorKind::BadRequest,
            message,
            retry_at_unix_ms: None,
            retried: false,
            record: None,
        }
        .into_response(dialect)
    };
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {} MiB", MAX_BODY >> 20),
        )
    };
    let declared = axum::body::HttpBody::size_hint(&body).exact();
    let mut held = match declared {
        Some(len) if len > MAX_BODY as u64 => return too_large(),
        // Nothing of it is read before its bytes are held.
        Some(len) => match memory.hold(len as usize).await {
            Ok(held) => held,
            Err(refusal) => {
                // Read (and drop) the body first: a client still writing it would see its
                // connection reset instead of the answer.
                let _ = tokio::time::timeout(BODY_READ_TIMEOUT, discard(body)).await;
                return over_budget(refusal, len as usize, dialect);
            }
        },
        None => match memory.try_hold(0) {
            Ok(held) => held,
            Err(refusal) => return over_budget(refusal, 0, dialect),
        },
    };
    let read = async {
        if declared.is_some() {
            axum::body::to_bytes(body, MAX_BODY)
                .await
                .map_err(BodyError::Read)
        } else {
            read_growing(body, &mut held).await
        }
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(Ok(bytes)) => next
            .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
            .await
            .map(|body| axum::body::Body::new(HeldBody { body, _held: held })),
        Ok(Err(BodyError::Memory(refusal, len))) => over_budget(refusal, len, dialect),
        Ok(Err(BodyError::TooLarge)) => too_large(),
        Ok(Err(BodyError::Read(e))) => {
            let too_large_ = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large_ {
                too_large()
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                )
            }
        }
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// Why a body was not read whole.
enum BodyError {
    /// Over [`MAX_BODY`].
    TooLarge,
    /// Its bytes could not be held (and how many it had then).
    Memory(Refusal, usize),
    /// The connection failed or was cut.
    Read(axum::Error),
}

/// Read a body to its end, keeping none of it.
async fn discard(mut body: axum::body::Body) {
    use http_body_util::BodyExt as _;
    while let Some(Ok(_)) = body.frame().await {}
}

/// A body of unknown length (chunked), its bytes held as they arrive.
async fn read_growing(mut body: axum::body::Body, held: &mut Held) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt as _;
    let deadline = tokio::time::Instant::now() + memory::WAIT;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(BodyError::Read)?.into_data() else {
            continue;
        };
        if buf.len() + data.len() > MAX_BODY {
            return Err(BodyError::TooLarge);
        }
        if let Err(refusal) = held.grow(data.len(), deadline).await {
            let len = buf.len() + data.len();
            drop(buf);
            let _ = tokio::time::timeout(BODY_READ_TIMEOUT, discard(body)).await;
            return Err(BodyError::Memory(refusal, len));
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// The answer to a request whose bytes do not fit in the daemon's request memory: `503` with
/// `retry-after` while others hold it (the SDKs retry it, as they retry a provider's
/// overload), `413` for one that could never fit (which they do not).
fn over_budget(refusal: Refusal, len: usize, dialect: Dialect) -> Response {
    let message = refusal.message(len);
    tracing::debug!(bytes = len, "{message}");
    match refusal {
        Refusal::TooLarge { .. } => ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: mythos_protocol::ErrorKind::BadRequest,
            message,
            retry_at_unix_ms: None,
            retried: false,
            record: None,
        },
        Refusal::Busy { .. } => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: mythos_protocol::ErrorKind::Overloaded,
            message,
            retry_at_unix_ms: Some(
                mythos_protocol::clock::now_unix_ms() + memory::RETRY_AFTER.as_millis() as u64,
            ),
            retried: false,
            record: None,
        },
    }
    .into_response(dialect)
}

/// A response body that keeps its request's bytes held until it has been sent (or its client
/// has gone).
struct HeldBody {
    body: axum::body::Body,
    _held: Held,
}

impl axum::body::HttpBody for HeldBody {
    type Data = Bytes;
    type Error = axum::Error;

    #[inline]
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Accept and serve connections until `draining`; then close the listener (and say so by
/// dropping `closing`), let answers in progress finish, and cut what is left at `hard_stop`.
async fn serve(
    mut listener: listener::CappedListener,
    app: Routes,
    draining: tokio_util::sync::CancellationToken,
    hard_stop: tokio_util::sync::CancellationToken,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    closing: tokio::sync::oneshot::Sender<()>,
) {
    use axum::serve::Listener as _;
    let connections = tokio_util::task::TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    loop {
        let (io, peer) = tokio::select! {
            conn = listener.accept() => conn,
            _ = draining.cancelled() => break,
        };
        let seat = io.seat().clone();
        // Another machine (`allow_remote`): marked, so what loopback may read without the
        // token (`/metrics`, `/health`) asks it for one.
        let app = if peer.ip().is_loopback() {
            app.clone()
        } else {
            app.clone().layer(axum::Extension(RemotePeer))
        };
        let svc = listener::Seated::new(
            hyper_util::service::TowerToHyperService::new(app),
            seat.clone(),
        );
        let io = crate::metrics::CountedIo::new(io, metrics.clone(), crate::metrics::Front::Http);
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(io), svc);
        connections.spawn(connection(conn, seat, draining.clone(), hard_stop.clone()));
    }
    drop(listener);
    // The port is free: the next daemon may bind it while these answers finish.
    drop(closing);
    connections.close();
    tokio::select! {
        _ = connections.wait() => {}
        _ = async {
            hard_stop.cancelled().await;
            // Each connection writes its answer's last event within the grace (see
            // `connection`).
            tokio::time::sleep(HARD_STOP_GRACE).await;
        } => {}
    }
}

/// How long, once the drain time is over, a connection has to write the `shutting_down` error
/// that ends its answer. Within the 2 s the shutdown waits for cut streams.
const HARD_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Serve one connection until it ends. Displaced by a newcomer, it closes at once, unless a
/// request head arrived meanwhile: that request is answered first, as on a drain. At
/// `hard_stop` it is cut.
async fn connection<I, S, B>(
    conn: hyper::server::conn::http1::Connection<I, S>,
    seat: Arc<listener::HttpSeat>,
    draining: tokio_util::sync::CancellationToken,
    hard_stop: tokio_util::sync::CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: axum::body::HttpBody + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// What ends the plain serving of a connection.
    enum Signal {
        Displaced,
        Draining,
        HardStop,
    }
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    let ended = loop {
        let signals = {
            let (seat, draining, hard_stop) = (seat.clone(), draining.clone(), hard_stop.clone());
            Box::pin(async move {
                tokio::select! {
                    biased;
                    _ = hard_stop.cancelled() => Signal::HardStop,
                    _ = seat.displaced().cancelled(), if !closing => Signal::Displaced,
                    _ = draining.cancelled(), if !closing => Signal::Draining,
                }
            })
        };
        match Watched::new(conn.as_mut(), signals).await {
            Either::Left(ended) => break ended,
            Either::Right(Signal::HardStop) => {
                // The routes were cut with it and end their answers with a `shutting_down`
                // error: the connection writes it, briefly, so the client reads why rather than
                // a body cut off mid-chunk, which the SDKs report as a broken connection (found
                // by a chaos run). A client that reads nothing is not waited for past the grace.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(HARD_STOP_GRACE, conn.as_mut()).await;
                return;
            }
            Either::Right(Signal::Displaced) if !seat.busy() => return,
            Either::Right(Signal::Displaced | Signal::Draining) => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Polls `main` at every wake-up of its task and `side` only when `side`'s own waker fired.
///
/// A connection's signals (displaced, draining, stopping) raced in a `select!` beside it were
/// polled at every wake-up of the connection, once per relayed chunk: three cancellation
/// futures, each taking its notifier's lock, ~600 instructions a chunk (callgrind, 7,690 →
/// 8,302 per chunk through the front end).
struct Watched<M, S> {
    main: M,
    side: S,
    flag: Arc<SideWoken>,
}

/// The waker `side` is polled with: it marks itself fired and wakes the task.
struct SideWoken {
    fired: std::sync::atomic::AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl futures_util::task::ArcWake for SideWoken {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self
            .fired
            .store(true, std::sync::atomic::Ordering::Release);
        arc_self.task.wake();
    }
}

impl<M, S> Watched<M, S> {
    fn new(main: M, side: S) -> Self {
        Watched {
            main,
            side,
            flag: Arc::new(SideWoken {
                // Polled once at the start, to register its waker.
                fired: std::sync::atomic::AtomicBool::new(true),
                task: futures_util::task::AtomicWaker::new(),
            }),
        }
    }
}

impl<M: Future + Unpin, S: Future + Unpin> Future for Watched<M, S> {
    type Output = Either<M::Output, S::Output>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = &mut *self;
        this.flag.task.register(cx.waker());
        if this
            .flag
            .fired
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            let waker = futures_util::task::waker_ref(&this.flag);
            let mut side_cx = std::task::Context::from_waker(&waker);
            if let Poll::Ready(s) = std::pin::Pin::new(&mut this.side).poll(&mut side_cx) {
                return Poll::Ready(Either::Right(s));
            }
        }
        match std::pin::Pin::new(&mut this.main).poll(cx) {
            Poll::Ready(m) => Poll::Ready(Either::Left(m)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The routes, with the token check in front of everything but `/health`.
pub fn routes(front: Arc<Front>) -> Routes {
    let api = Routes::new()
        .route(
            "/v1/messages",
            post(
                |State(f): State<Arc<Front>>,
                 stuck: listener::Stuck,
                 headers: HeaderMap,
                 body: Body| async move {
                    match body {
                        Ok(b) => messages::create(f, headers, b, stuck).await,
                        Err(e) => rejected(e, Dialect::Anthropic),
                    }
                },
            ),
        )
        .route(
            "/v1/messages/count_tokens",
            post(|State(f): State<Arc<Front>>, body: Body| async move {
                match body {
                    Ok(b) => messages::count_tokens(f, b).await,
                    Err(e) => rejected(e, Dialect::Anthropic),
                }
            }),
        )
        .route(
            "/v1/chat/completions",
            post(
                |State(f): State<Arc<Front>>, stuck: listener::Stuck, body: Body| async move {
                    match body {
                        Ok(b) => chat::create(f, b, stuck).await,
                        Err(e) => rejected(e, Dialect::Openai),
                    }
                },
            ),
        )
        .route(
            "/v1/responses",
            post(
                |State(f): State<Arc<Front>>, stuck: listener::Stuck, body: Body| async move {
                    match body {
                        Ok(b) => responses::create(f, b, stuck).await,
                        Err(e) => rejected(e, Dialect::Openai),
                    }
                },
            ),
        )
        .route(
            "/v1/models",
            get(|State(f): State<Arc<Front>>| async move {
                let router = f.ctx.router();
                let providers: Vec<_> = router.providers().iter().map(|p| p.cfg.clone()).collect();
                axum::Json(models::list(&providers))
            }),
        )
        .route(
            // Model ids hold slashes (`mythos/code`, `anthropic/claude-sonnet-4-5`): the SDKs'
            // `models.retrieve(id)` asks for exactly one.
            "/v1/models/{*id}",
            get(
                |State(f): State<Arc<Front>>,
                 axum::extract::Path(id): axum::extract::Path<String>| async move {
                    let router = f.ctx.router();
                    let providers: Vec<_> =
                        router.providers().iter().map(|p| p.cfg.clone()).collect();
                    match models::get(&providers, &id) {
                        Some(model) => {
                            axum::response::IntoResponse::into_response(axum::Json(model))
                        }
                        None => ApiError {
                            status: StatusCode::NOT_FOUND,
                            kind: mythos_protocol::ErrorKind::NotFound,
                            message: format!(
                                "no model {id:?} here: GET /v1/models lists the router's names"
                            ),
                            retry_at_unix_ms: None,
                            retried: false,
                            record: None,
                        }
                        .into_response(Dialect::Openai),
                    }
                },
            ),
        )
        .route_layer(middleware::from_fn_with_state(
            front.ctx.memory.clone(),
            body_deadline,
        ))
        .route_layer(middleware::from_fn_with_state(front.clone(), authorize));
    Routes::new()
        .merge(api)
        // No token from this machine: scrapers are configured once and the figures hold no
        // secret (provider names, counts, timings). Another machine (`allow_remote`) must
        // show the token: they are this user's spending and set-up, not the network's.
        .merge(
            Routes::new()
                .route(
                    "/metrics",
                    get(|State(f): State<Arc<Front>>| async move {
                        let mut text = f
                            .ctx
                            .metrics
                            .render(&f.ctx.status_report(), f.ctx.conns.len());
                        crate::metrics::gauge(
                            &mut text,
                            "mythos_request_memory_bytes",
                            "Bytes of requests held in memory (bodies being read, requests being \
                     answered), over both front ends.",
                            f.ctx.memory.used() as f64,
                        );
                        crate::metrics::gauge(
                    &mut text,
                    "mythos_request_memory_limit_bytes",
                    "The most bytes of requests held at once ([server] max_request_memory_mib).",
                    f.ctx.memory.limit() as f64,
                );
                        (
                            [(
                                header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            text,
                        )
                            .into_response()
                    }),
                )
                .route(
                    "/health",
                    get(|State(f): State<Arc<Front>>| async move {
                        let router = f.ctx.router();
                        let status = router.status();
                        let usable = status
                            .iter()
                            .filter(|p| p.state == mythos_protocol::BreakerState::Closed)
                            .count();
                        axum::Json(json!({
                            "status": if f.ctx.draining.is_cancelled() { "draining" } else { "ok" },
                            "providers": status.len(),
                            "usable": usable,
                            "simulated": router.is_simulated(),
                            "version": env!("CARGO_PKG_VERSION"),
                            // A provider skipped for want of its key is why an agent's requests all
                            // go elsewhere: said here too, for set-ups that only look at /health.
                            "notes": f.ctx.notes(),
                        }))
                        .into_response()
                    }),
                )
                .route_layer(middleware::from_fn_with_state(
                    front.clone(),
                    token_from_afar,
                )),
        )
        .fallback(|req: Request| async move {
            let dialect = dialect_of(req.uri().path());
            // As each API answers a path it does not have: Anthropic's `not_found_error`;
            // OpenAI's `invalid_request_error` with no code (a `model_not_found` code here
            // sent agents looking for a model problem).
            let kind = match dialect {
                Dialect::Anthropic => mythos_protocol::ErrorKind::NotFound,
                Dialect::Openai => mythos_protocol::ErrorKind::BadRequest,
            };
            let e = ApiError {
                status: StatusCode::NOT_FOUND,
                kind,
                message: format!(
                    "mythosd does not serve {} {} (it serves /v1/messages, \
                     /v1/messages/count_tokens, /v1/chat/completions, /v1/responses, /v1/models, \
                     /health, /metrics)",
                    req.method(),
                    req.uri().path()
                ),
                retry_at_unix_ms: None,
                retried: false,
                record: None,
            };
            e.into_response(dialect)
        })
        // A path served with another method (`GET /v1/messages`): the error in the API's shape,
        // not an empty 405 (found by a helper).
        .method_not_allowed_fallback(|req: Request| async move {
            let dialect = dialect_of(req.uri().path());
            let e = ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                kind: mythos_protocol::ErrorKind::BadRequest,
                message: format!(
                    "{} {} is not served: {} takes {}",
                    req.method(),
                    req.uri().path(),
                    req.uri().path(),
                    if ["/v1/models", "/health", "/metrics"].contains(&req.uri().path()) {
                        "GET"
                    } else {
                        "POST"
                    }
                ),
                retry_at_unix_ms: None,
                retried: false,
                record: None,
            };
            e.into_response(dialect)
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            front.clone(),
            local_host_only,
        ))
        .with_state(front)
}

/// Which API's error shape a path answers in.
fn dialect_of(path: &str) -> Dialect {
    if path.starts_with("/v1/messages") {
        Dialect::Anthropic
    } else {
        Dialect::Openai
    }
}

/// The tokens presented: `x-api-key` (Claude Code's `ANTHROPIC_API_KEY`) and `Authorization:
/// Bearer` (`ANTHROPIC_AUTH_TOKEN`, the OpenAI SDKs). Either may be the right one: a client
/// with a stale key left in one of them and the token in the other is let in.
fn presented(headers: &HeaderMap) -> [Option<&str>; 2] {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| auth.split_once(' '))
        .and_then(|(scheme, rest)| scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim()));
    [key, bearer]
}

/// Whether a `Host` header names this machine's loopback. A web page the user visits can make
/// the browser send requests to 127.0.0.1 under a name it controls (DNS rebinding); those
/// carry that name as their Host, and are refused before anything else is looked at.
pub fn is_local_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        // `[::1]:7626`, `127.0.0.1:7626`, `localhost:7626`; a bare `::1` has colons too.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn local_host_only(State(front): State<Arc<Front>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    if !front.cfg.allow_remote && !is_local_host(host) {
        let e = ApiError {
            status: StatusCode::FORBIDDEN,
            kind: mythos_protocol::ErrorKind::Auth,
            message: format!(
                "mythosd answers requests for its loopback address only, not for `{host}`"
            ),
            retry_at_unix_ms: None,
            retried: false,
            record: None,
        };
        return e.into_response(dialect_of(req.uri().path()));
    }
    next.run(req).await
}

/// A connection from another machine (see `serve`).
#[derive(Debug, Clone, Copy)]
struct RemotePeer;

/// What loopback reads freely (`/metrics`, `/health`) needs the token from another machine.
async fn token_from_afar(State(front): State<Arc<Front>>, req: Request, next: Next) -> Response {
    if req.extensions().get::<RemotePeer>().is_some() {
        return authorize(State(front), req, next).await;
    }
    next.run(req).await
}

async fn authorize(State(front): State<Arc<Front>>, req: Request, next: Next) -> Response {
    let ok = presented(req.headers())
        .into_iter()
        .flatten()
        .any(|t| token::matches(t, &front.token));
    if !ok {
        return ApiError::unauthorized().into_response(dialect_of(req.uri().path()));
    }
    next.run(req).await
}

/// Requests larger than this are parsed and translated on tokio's blocking pool: the daemon
/// relays every stream on one thread, and a request of several megabytes (base64 images, a
/// long conversation) takes milliseconds to parse, a pause every other stream would feel.
const PARSE_ON_RUNTIME_UP_TO: usize = 256 * 1024;

/// Run `parse` (the body's JSON parse and translation) here for a small body of `size` bytes,
/// or on the blocking pool for a large one.
pub async fn parse_request<T: Send + 'static>(
    size: usize,
    parse: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if size <= PARSE_ON_RUNTIME_UP_TO {
        return parse();
    }
    // A parse holds several times its body in memory: a few at a time, however many large
    // requests come at once (the blocking pool would run hundreds).
    let _turn = LARGE_PARSES.acquire().await;
    match tokio::task::spawn_blocking(parse).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(ApiError::from_route(
            mythos_protocol::ErrorKind::ShuttingDown,
            "mythosd is shutting down".into(),
            None,
        )),
    }
}

/// Large requests parsed at once (see [`parse_request`]).
static LARGE_PARSES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The most JSON values (objects, arrays and their elements) a request body may hold. Parsed,
/// each costs about a hundred bytes beside its text: a 31 MB body of tiny blocks took 700 MB.
/// A long agent conversation holds some tens of thousands.
pub const MAX_JSON_VALUES: usize = 500_000;

/// Whether `body` holds more than `limit` JSON values, counted by their separators outside
/// strings: a scan at memory speed, before a parse that would allocate for each.
fn too_many_values(body: &[u8], limit: usize) -> bool {
    let (mut n, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' | b',' => {
                n += 1;
                if n > limit {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// Parse a JSON body, saying where it is broken.
pub fn json_body(body: &Bytes) -> Result<serde_json::Value, ApiError> {
    if body.len() > PARSE_ON_RUNTIME_UP_TO && too_many_values(body, MAX_JSON_VALUES) {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: mythos_protocol::ErrorKind::BadRequest,
            message: format!(
                "the request body holds more than {MAX_JSON_VALUES} JSON values (objects, \
                 arrays and their elements)"
            ),
            retry_at_unix_ms: None,
            retried: false,
            record: None,
        });
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not valid JSON (line {}, column {}): {e}",
            e.line(),
            e.column()
        ))
    })
}

/// Headers of an SSE response.
pub fn sse_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell buffering reverse proxies (nginx) to pass every frame at once.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

/// A request body, or why it could not be read (too large, cut off).
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

/// A body that could not be read, in the dialect's error shape (axum would answer in plain
/// text, which the SDKs report as an unknown error).
fn rejected(e: axum::extract::rejection::BytesRejection, dialect: Dialect) -> Response {
    let status = e.status();
    ApiError {
        status,
        kind: mythos_protocol::ErrorKind::BadRequest,
        message: if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the request body is larger than {} MiB", MAX_BODY >> 20)
        } else {
            format!("cannot read the request body: {}", e.body_text())
        },
        retry_at_unix_ms: None,
        retried: false,
        record: None,
    }
    .into_response(dialect)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of tiny blocks, each a few bytes of JSON and a hundred parsed, is refused before
    /// it is parsed (31 MB of them took 700 MB); a large body of text is parsed, however many
    /// commas and brackets its strings hold.
    #[test]
    fn a_body_of_countless_tiny_values_is_refused_before_parsing() {
        let block = r#"{"type":"text","text":"a"},"#;
        let mut tiny = String::from(r#"{"model":"m","messages":[{"role":"user","content":["#);
        for _ in 0..(MAX_JSON_VALUES / 2) {
            tiny.push_str(block);
        }
        tiny.push_str(r#"{"type":"text","text":"a"}]}]}"#);
        let e = json_body(&Bytes::from(tiny)).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.message.contains("JSON values"), "{}", e.message);

        let code = "fn f(a: [u8; 3], b: {x, y}) {}\n".repeat(200_000);
        let text = serde_json::json!({"model": "m", "messages": [
            {"role": "user", "content": code}]})
        .to_string();
        assert!(text.len() > 4_000_000);
        assert!(json_body(&Bytes::from(text)).is_ok());
    }

    /// A body that stops coming is given up after `BODY_READ_TIMEOUT` with a 408 in the
    /// dialect (its connection seat freed); a whole body reaches the handler untouched, and
    /// one over the limit is a 413.
    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_is_given_up() {
        use futures_util::StreamExt as _;
        use tower::ServiceExt;
        let app = Routes::new()
            .route("/v1/messages", post(|b: Bytes| async move { b }))
            .route_layer(middleware::from_fn_with_state(
                RequestMemory::new(64 << 20),
                body_deadline,
            ));
        let trickle = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from("{"))])
            .chain(futures_util::stream::pending());
        let req = |body| Request::post("/v1/messages").body(body).expect("request");
        let t0 = tokio::time::Instant::now();
        let resp = app
            .clone()
            .oneshot(req(axum::body::Body::from_stream(trickle)))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(t0.elapsed() >= BODY_READ_TIMEOUT);
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "error", "{v}");

        let resp = app
            .clone()
            .oneshot(req(axum::body::Body::from("{\"a\":1}")))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        assert_eq!(&body[..], b"{\"a\":1}");

        let big = vec![b' '; MAX_BODY + 1];
        let resp = app.oneshot(req(axum::body::Body::from(big))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// A body's bytes are held from the request memory before it is read and until its
    /// response has been sent. One that does not fit waits, then gets a 503 with
    /// `retry-after` in its dialect (the SDKs retry it); one that could never fit a 413; a
    /// small one gets in beside the large ones that fill the budget.
    #[tokio::test(start_paused = true)]
    async fn bodies_hold_request_memory_until_answered() {
        use tower::ServiceExt;
        let memory = RequestMemory::new(16 << 20);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let rx = std::sync::Mutex::new(Some(rx));
        let rx = Arc::new(rx);
        let app = Routes::new()
            .route(
                "/v1/messages",
                post(|b: Bytes| async move { b.len().to_string() }),
            )
            .route(
                "/v1/chat/completions",
                post(move |_: Bytes| {
                    let rx = rx.clone();
                    async move {
                        // A stream that goes on until the test ends it.
                        let rx = rx.lock().unwrap().take().unwrap();
                        axum::body::Body::from_stream(tokio_stream_of(rx))
                    }
                }),
            )
            .route_layer(middleware::from_fn_with_state(
                memory.clone(),
                body_deadline,
            ))
            .layer(DefaultBodyLimit::max(MAX_BODY));
        let req = |path: &str, len: usize| {
            Request::post(path)
                .body(axum::body::Body::from(vec![b' '; len]))
                .expect("request")
        };
        const MIB: usize = 1 << 20;

        // A streamed answer keeps its request's 10 MiB held until it is done.
        let streaming = app
            .clone()
            .oneshot(req("/v1/chat/completions", 10 * MIB))
            .await
            .unwrap();
        assert_eq!(streaming.status(), StatusCode::OK);
        assert_eq!(memory.used(), 10 * MIB);

        for (path, dialect_type) in [
            ("/v1/messages", "overloaded_error"),
            ("/v1/chat/completions", "server_error"),
        ] {
            let t0 = tokio::time::Instant::now();
            let resp = app.clone().oneshot(req(path, 5 * MIB)).await.unwrap();
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert_eq!(t0.elapsed(), memory::WAIT, "it waited for room first");
            assert_eq!(resp.headers()["retry-after"], "5");
            assert!(resp.headers().get("x-should-retry").is_none());
            let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"]["type"], dialect_type, "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("max_request_memory_mib"),
                "{v}"
            );
        }
        // A small request is answered at once beside it; one that could never fit is a 413.
        let t0 = tokio::time::Instant::now();
        let resp = app
            .clone()
            .oneshot(req("/v1/messages", 4096))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(t0.elapsed(), std::time::Duration::ZERO);
        drop(resp);
        let resp = app
            .clone()
            .oneshot(req("/v1/messages", 15 * MIB))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(memory.used(), 10 * MIB);

        // Once the stream ends and is sent, the large request fits.
        let mut body = streaming.into_body();
        tx.send(Ok(Bytes::from("data: done\n\n"))).await.unwrap();
        drop(tx);
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            frame.unwrap();
        }
        drop(body);
        assert_eq!(memory.used(), 0);
        let resp = app.oneshot(req("/v1/messages", 5 * MIB)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        assert_eq!(&body[..], (5 * MIB).to_string().as_bytes());
        assert_eq!(memory.used(), 0);
    }

    /// The receiver as a stream of body chunks.
    fn tokio_stream_of(
        rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
    }

    /// A chunked body (no length declared) holds its bytes as they arrive, and is refused
    /// once they no longer fit.
    #[tokio::test(start_paused = true)]
    async fn a_chunked_body_holds_its_bytes_as_they_arrive() {
        use tower::ServiceExt;
        let memory = RequestMemory::new(16 << 20);
        let app = Routes::new()
            .route(
                "/v1/messages",
                post(|b: Bytes| async move { b.len().to_string() }),
            )
            .route_layer(middleware::from_fn_with_state(
                memory.clone(),
                body_deadline,
            ))
            .layer(DefaultBodyLimit::max(MAX_BODY));
        let chunked = |chunks: usize| {
            let s = futures_util::stream::iter(
                (0..chunks).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 1 << 20]))),
            );
            Request::post("/v1/messages")
                .body(axum::body::Body::from_stream(s))
                .expect("request")
        };
        let resp = app.clone().oneshot(chunked(3)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(memory.used(), 3 << 20, "held until its answer is sent");
        drop(resp);
        let _other = memory.try_hold(10 << 20).unwrap();
        let resp = app.oneshot(chunked(6)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(memory.used(), 10 << 20, "what it held is given back");
    }

    #[test]
    fn the_token_comes_as_key_or_bearer() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), [None, None]);
        h.insert("authorization", HeaderValue::from_static("Bearer  tok "));
        assert_eq!(presented(&h), [None, Some("tok")]);
        h.insert("authorization", HeaderValue::from_static("Basic tok"));
        assert_eq!(presented(&h), [None, None]);
        h.insert("x-api-key", HeaderValue::from_static("key"));
        assert_eq!(presented(&h), [Some("key"), None]);
        // Both: either may be the token (a stale key beside it is not a 401).
        h.insert("authorization", HeaderValue::from_static("Bearer tok"));
        assert_eq!(presented(&h), [Some("key"), Some("tok")]);
        assert_eq!(dialect_of("/v1/messages/count_tokens"), Dialect::Anthropic);
        assert_eq!(dialect_of("/v1/chat/completions"), Dialect::Openai);
        for ok in [
            "127.0.0.1:7626",
            "localhost",
            "LOCALHOST:1",
            "[::1]:7626",
            "::1",
            "127.0.0.2",
        ] {
            assert!(is_local_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:7626",
            "evil.example",
            "10.0.0.1:7626",
            "localhost.evil.example",
        ] {
            assert!(!is_local_host(bad), "{bad}");
        }
    }
}
