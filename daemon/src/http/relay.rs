//! One HTTP request through the router: start it, wait for the response head (the first
//! `started`, or the error that ended the request before one), then hand the events to an
//! encoder. The router cannot tell an HTTP client from a socket client: both share health,
//! quotas, the wait queue and the records behind `mythos why`.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::BytesMut;
use futures_util::FutureExt;
use mythos_protocol::{
    ChatRequest, DoneInfo, ErrorKind, FinishReason, RerouteMode, Response, StreamEvent, Usage,
};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::errors::ApiError;
use crate::router::Emitter;
use crate::server::connection::panic_message;
use crate::server::Context;
use crate::wake::WakeFlag;

/// Events buffered between the router and the HTTP body: enough to ride out a slow reader for a
/// moment; beyond it the router waits (backpressure), as on the socket.
const EVENT_BUFFER: usize = 64;

/// The body buffer of a streaming response; frames are split off it (see `into_body`).
const BODY_BUFFER: usize = 16 * 1024;

/// Space made in the body buffer before each chunk is written: more than most frames take.
const FRAME_ROOM: usize = 1024;

/// How many scheduler rounds a body chunk may wait for more events of a burst. A round brings
/// one event at most (the route runs in this task, and the upstream connection hands over one
/// HTTP chunk per round, so a burst comes an event every other round), and a round that brings
/// one costs a task switch, not a poll of the I/O driver (see `requeue` below): 16 rounds made
/// 0.17 writes per relayed chunk, 64 made 0.085 (a 60-event answer in three writes besides its
/// first), 128 take such an answer whole (a few hundred microseconds at most). A paced stream's
/// event still goes out after two empty rounds (`EMPTY_ROUNDS`).
const COALESCE_ROUNDS: usize = 128;

/// Rounds in a row that bring nothing (the route did not run: nothing came from upstream)
/// before a body chunk goes out. One is not enough: the
/// upstream connection hands over what it has buffered one HTTP chunk per wake-up, and when
/// that runs out it needs a round (a poll of the I/O driver) to read the next part of the
/// burst from its socket, so a burst arrives "event, nothing, event, nothing" (measured: ending
/// the wait on the first empty round made 0.5 writes per event; two, 0.06). Two cost a paced
/// stream's lone event one more round: microseconds when idle.
const EMPTY_ROUNDS: usize = 2;

/// Without any event for this long, a streaming response gets a keep-alive (`ping` / an SSE
/// comment) so that proxies and clients with idle timeouts keep the connection.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// The router serving one request, driven by the HTTP response that reads its events.
type RouteFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// How a scripted route hands out its events (tests and profiles).
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pace {
    /// All at once.
    Burst,
    /// One per this many scheduler rounds, as a provider's burst reaches the router: every
    /// round while the upstream connection has the burst buffered, every other one when it
    /// must read the next part from its socket. The route is woken by another task and does
    /// not run in the rounds between.
    Rounds(usize),
    /// One per `Duration`, as a provider streams tokens.
    Every(Duration),
}

/// A request the router is serving.
///
/// The route runs inside the task that serves the HTTP connection rather than in a task of its
/// own: each event then reaches the encoder without waking a task on another worker thread
/// (measured: that hop was most of the front end's added time to the first token).
pub struct Routed {
    rx: mpsc::Receiver<Response>,
    /// The route, until it has finished.
    route: Option<RouteFuture>,
    /// Whether the route has been woken since it was last polled, and the waker it is polled
    /// with.
    wake: Arc<WakeFlag>,
    waker: std::task::Waker,
    /// The route has run since the channel was last found empty.
    maybe_queued: bool,
    /// Times the route has run: it runs when woken, so a run that sent nothing still says the
    /// upstream stream moved (a Chat finish chunk, a usage report) and more may follow.
    runs: u64,
    /// Cancels the route when the HTTP response is dropped (the client went away).
    cancel: CancellationToken,
    /// Where an unfinished route goes to end properly (its record written, its leases given
    /// back) when the response is dropped.
    streams: tokio_util::task::TaskTracker,
    /// Reroutes seen so far.
    pub reroutes: u32,
    /// The token counts of the attempt in progress, as its provider last reported them.
    attempt_usage: Option<Usage>,
    /// The request's record id once the router has numbered it (0 before).
    record: Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for Routed {
    fn drop(&mut self) {
        if let Some(route) = self.route.take() {
            self.cancel.cancel();
            self.streams.spawn(route);
        }
    }
}

/// What is known when the first provider starts streaming.
#[derive(Debug, Clone)]
pub struct Head {
    /// Provider streaming the answer.
    pub provider: String,
    /// Its model.
    pub model: String,
    /// Routing record id (`mythos why`).
    pub record: u64,
    /// Reroutes before the first token.
    pub reroutes: u32,
    /// The daemon's own time on the request before it went upstream.
    pub overhead: Duration,
}

#[cfg(test)]
impl Head {
    /// A head for encoder tests.
    pub(crate) fn for_test() -> Head {
        Head {
            provider: "p".into(),
            model: "m".into(),
            record: 1,
            reroutes: 0,
            overhead: Duration::ZERO,
        }
    }
}

/// The `x-mythos-*` headers of a whole (non-streamed) answer: the provider that finished it,
/// which may not be the one that started, and every reroute on the way.
pub fn finished_headers(headers: &mut HeaderMap, done: &DoneInfo, reroutes: u32) {
    if let Ok(v) = HeaderValue::from_str(&done.provider) {
        headers.insert(X_MYTHOS_PROVIDER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&done.model) {
        headers.insert(X_MYTHOS_MODEL, v);
    }
    headers.insert(X_MYTHOS_REROUTED, HeaderValue::from(reroutes));
}

/// The names of the `x-mythos-*` headers, made once (a name given as a string is checked and
/// hashed letter by letter on every insert).
const X_MYTHOS_PROVIDER: HeaderName = HeaderName::from_static("x-mythos-provider");
const X_MYTHOS_MODEL: HeaderName = HeaderName::from_static("x-mythos-model");
const X_MYTHOS_REQUEST: HeaderName = HeaderName::from_static("x-mythos-request");
const X_MYTHOS_REROUTED: HeaderName = HeaderName::from_static("x-mythos-rerouted");
const X_MYTHOS_OVERHEAD_MS: HeaderName = HeaderName::from_static("x-mythos-overhead-ms");
const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl Head {
    /// The `x-mythos-*` headers (and the request-id headers the SDKs read).
    pub fn headers(&self, headers: &mut HeaderMap) {
        headers.reserve(7);
        for (name, value) in [
            (X_MYTHOS_PROVIDER, &self.provider),
            (X_MYTHOS_MODEL, &self.model),
        ] {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
        headers.insert(X_MYTHOS_REQUEST, HeaderValue::from(self.record));
        headers.insert(X_MYTHOS_REROUTED, HeaderValue::from(self.reroutes));
        // Milliseconds with three decimals, from whole microseconds (rounded).
        let us = (self.overhead.as_nanos() + 500) / 1000;
        let ms = format!("{}.{:03}", us / 1000, us % 1000);
        if let Ok(v) = HeaderValue::from_str(&ms) {
            headers.insert(X_MYTHOS_OVERHEAD_MS, v);
        }
        if let Ok(id) = HeaderValue::from_str(&format!("req_mythos_{}", self.record)) {
            headers.insert(REQUEST_ID, id.clone());
            headers.insert(X_REQUEST_ID, id);
        }
    }
}

/// Start `chat` on the router in force. `stuck` is its connection's flag, set when the
/// connection gives up on a client that stopped reading (the route is cancelled then, and
/// records why).
pub fn start(
    ctx: &Arc<Context>,
    chat: ChatRequest,
    stuck: super::listener::Stuck,
) -> Result<Routed, ApiError> {
    if ctx.draining.is_cancelled() {
        return Err(ApiError::from_route(
            ErrorKind::ShuttingDown,
            "mythosd is shutting down".into(),
            None,
        ));
    }
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    let token = ctx.hard_stop.child_token();
    let router = ctx.router();
    let record = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let emitter = Emitter::new(0, tx.clone())
        .with_shutdown(ctx.hard_stop.clone())
        .with_stuck_flag(stuck.0)
        .with_record_slot(record.clone());
    let route_token = token.clone();
    let route: RouteFuture = Box::pin(async move {
        let run = AssertUnwindSafe(router.route(chat, emitter, route_token));
        if let Err(panic) = run.catch_unwind().await {
            let what = panic_message(panic.as_ref());
            tracing::error!(panic = %what, "an HTTP request panicked");
            let event = StreamEvent::Error {
                kind: ErrorKind::Internal,
                message: format!(
                    "internal error in mythosd ({what}); the daemon log has the details"
                ),
                retry_at_unix_ms: None,
            };
            let _ = tx.send(Response::Event { id: 0, event }).await;
        }
    });
    let mut routed = Routed::new(rx, route, token, ctx.streams.clone());
    routed.record = record;
    Ok(routed)
}

impl Routed {
    /// A stand-in for the router that sends `events` at the given pace.
    #[cfg(test)]
    pub(crate) fn scripted(events: Vec<StreamEvent>, pace: Pace) -> Self {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let route: RouteFuture = Box::pin(async move {
            for event in events {
                if tx.send(Response::Event { id: 0, event }).await.is_err() {
                    return;
                }
                match pace {
                    Pace::Burst => {}
                    Pace::Rounds(n) => {
                        // Woken by another task (the upstream connection), not by itself: in
                        // the rounds between, the route does not run, as when the connection
                        // waits for its socket.
                        let (wake, woken) = tokio::sync::oneshot::channel::<()>();
                        tokio::spawn(async move {
                            for _ in 1..n {
                                tokio::task::yield_now().await;
                            }
                            let _ = wake.send(());
                        });
                        let _ = woken.await;
                    }
                    Pace::Every(gap) => tokio::time::sleep(gap).await,
                }
            }
        });
        Routed::new(
            rx,
            route,
            CancellationToken::new(),
            tokio_util::task::TaskTracker::new(),
        )
    }

    /// `route` sends its events into the channel `rx` takes them from.
    pub(super) fn new(
        rx: mpsc::Receiver<Response>,
        route: RouteFuture,
        cancel: CancellationToken,
        streams: tokio_util::task::TaskTracker,
    ) -> Routed {
        let (wake, waker) = WakeFlag::new();
        Routed {
            rx,
            route: Some(route),
            waker,
            wake,
            maybe_queued: true,
            runs: 0,
            cancel,
            streams,
            reroutes: 0,
            attempt_usage: None,
            record: Arc::default(),
        }
    }

    /// A routing failure, naming the request's record if it has one.
    fn failed(&self, kind: ErrorKind, message: String, retry_at_unix_ms: Option<u64>) -> ApiError {
        let record = self.record.load(std::sync::atomic::Ordering::Relaxed);
        ApiError {
            record: (record != 0).then_some(record),
            ..ApiError::from_route(kind, message, retry_at_unix_ms)
        }
    }

    /// The next event; `None` when the router is gone without a last event (a bug).
    pub async fn next(&mut self) -> Option<StreamEvent> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Events are taken with `try_recv` only, never by registering for the channel: the route
    /// is what sends them, and it runs here, so what it sent is there once its poll returns.
    /// Registering would have each first send wake this very task, and the task then be
    /// scheduled again for nothing (measured: ~50 instructions per event; the larger saving is
    /// polling the route only when woken, below).
    fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<StreamEvent>> {
        loop {
            // Events first: whatever the route produced goes out before it is polled on.
            match self.take_queued() {
                Some(Some(event)) => return Poll::Ready(Some(event)),
                Some(None) => return Poll::Ready(None),
                None => {}
            }
            let Some(route) = &mut self.route else {
                // Only the route holds a sender, so this is not reached; if one ever outlives
                // it, wait for that one properly.
                return match self.rx.poll_recv(cx) {
                    Poll::Ready(Some(Response::Event { event, .. })) => {
                        Poll::Ready(Some(self.counted(event)))
                    }
                    Poll::Ready(Some(_)) => continue,
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                };
            };
            // A route that nothing woke has nothing new: the coalescing rounds of the body
            // ask often, and a poll of the route (its select over the upstream body, the
            // watchdog and the cancel token) costs hundreds of instructions for nothing.
            self.wake.register(cx.waker());
            if !self.wake.take() {
                return Poll::Pending;
            }
            let polled = route
                .as_mut()
                .poll(&mut std::task::Context::from_waker(&self.waker));
            self.maybe_queued = true;
            self.runs += 1;
            if polled.is_ready() {
                self.route = None;
            } else if !self.peek_queued() {
                // Nothing sent: the route waits on something that will wake this task.
                return Poll::Pending;
            }
        }
    }

    /// What the route queued: `Some(Some(event))`, `Some(None)` when the channel is closed
    /// (the route is gone), `None` when nothing is waiting. The channel is asked only after
    /// the route has run (an empty `try_recv` costs ~100 instructions, and the body asks
    /// several times per event).
    fn take_queued(&mut self) -> Option<Option<StreamEvent>> {
        use mpsc::error::TryRecvError;
        while self.maybe_queued {
            match self.rx.try_recv() {
                Ok(Response::Event { event, .. }) => return Some(Some(self.counted(event))),
                Ok(_) => continue,
                Err(TryRecvError::Disconnected) => return Some(None),
                Err(TryRecvError::Empty) => self.maybe_queued = false,
            }
        }
        None
    }

    /// Whether the route queued anything, without taking it.
    fn peek_queued(&self) -> bool {
        self.maybe_queued && !self.rx.is_empty()
    }

    /// The next event if one is already waiting (the route is not polled).
    fn try_next(&mut self) -> Option<StreamEvent> {
        self.take_queued().flatten()
    }

    /// Every event on its way out: counts reroutes, and gives the answer the usage of its last
    /// attempt. The router's total is what every attempt billed (a cut attempt's
    /// prompt included, and each continuation's prompt holds the one before): an agent that
    /// sizes the conversation from `usage` (Claude Code compacts near its context limit) read
    /// a 1,500-token conversation as 7,900 after three providers shared one answer. The last
    /// attempt's prompt is the conversation with the answer so far, and its output the rest:
    /// together, what the conversation now holds. Web searches stay summed (their blocks are
    /// in the answer), as do cost and the record.
    fn counted(&mut self, mut event: StreamEvent) -> StreamEvent {
        match &mut event {
            StreamEvent::Rerouted { .. } => self.reroutes += 1,
            // Every attempt starts so, once its provider has opened the stream (a retry
            // elsewhere after nothing was shown sends no reroute notice): a report from the
            // attempt before is not this one's.
            StreamEvent::Started { .. } => self.attempt_usage = None,
            StreamEvent::Usage(u) => self.attempt_usage = Some(*u),
            StreamEvent::Done(done) => {
                if let Some(last) = self.attempt_usage {
                    done.usage = Usage {
                        web_searches: done.usage.web_searches.max(last.web_searches),
                        ..last
                    };
                }
            }
            _ => {}
        }
        event
    }

    /// Wait for the first provider to start, or the error that ended the request first.
    pub async fn head(&mut self, translate: Duration) -> Result<Head, ApiError> {
        loop {
            match self.next().await {
                Some(StreamEvent::Started {
                    provider,
                    model,
                    record,
                    setup_us,
                    ..
                }) => {
                    return Ok(Head {
                        provider,
                        model,
                        record,
                        reroutes: self.reroutes,
                        overhead: translate + Duration::from_micros(setup_us),
                    })
                }
                Some(StreamEvent::Error {
                    kind,
                    message,
                    retry_at_unix_ms,
                }) => return Err(self.failed(kind, message, retry_at_unix_ms)),
                Some(_) => continue,
                None => return Err(vanished()),
            }
        }
    }

    /// Collect the whole answer (non-streaming requests): a failure at any point is an HTTP
    /// error, so a non-streaming client never sees half an answer.
    pub async fn collect(&mut self) -> Result<(Answer, DoneInfo), ApiError> {
        let mut answer = Answer::default();
        loop {
            match self.next().await {
                Some(StreamEvent::Done(done)) => return Ok((answer, *done)),
                Some(StreamEvent::Error {
                    kind,
                    message,
                    retry_at_unix_ms,
                }) => return Err(self.failed(kind, message, retry_at_unix_ms)),
                Some(ev) => answer.apply(&ev),
                None => return Err(vanished()),
            }
        }
    }

    /// A streaming body: `first` (the encoder's opening frames), then each event through
    /// `encoder` until it says the stream is over. Keep-alives fill long silences.
    ///
    /// It returns once the first token has joined the opening frames, or after two scheduler
    /// rounds in which nothing came from upstream: the response head is written with the body's first chunk when that
    /// is ready, so the head, the opening frames and the first token go out in one write
    /// (the upstream connection hands over one HTTP chunk per round, so the first token is
    /// usually a round or two behind the provider's head). The first token is not held back
    /// for anything else.
    pub async fn into_body<E: Encoder>(self, first: Bytes, encoder: E) -> Body {
        struct St<E> {
            routed: Routed,
            encoder: E,
            /// The opening frames, with the first token when it came in time.
            first: Option<Bytes>,
            /// The first token has gone out: it is never held back to gather more (under load
            /// a round takes long, and the first token is what a user waits for).
            started: bool,
            done: bool,
            /// Where frames are written; each body chunk is split off it, so its memory is
            /// reused (once hyper has written and dropped the earlier chunks) rather than a
            /// buffer allocated, and grown piece by piece, per chunk.
            buf: BytesMut,
            /// One timer for the whole stream, not one per event: it fires at most every
            /// `KEEPALIVE`, and a keep-alive goes out only if nothing else went out since.
            tick: std::pin::Pin<Box<tokio::time::Sleep>>,
            last_sent: tokio::time::Instant,
        }
        let now = tokio::time::Instant::now();
        let mut st = St {
            routed: self,
            encoder,
            first: None,
            started: false,
            done: false,
            buf: BytesMut::with_capacity(BODY_BUFFER),
            tick: Box::pin(tokio::time::sleep_until(now + KEEPALIVE)),
            last_sent: now,
        };
        impl<E: Encoder> St<E> {
            /// Encode every event already waiting, without polling the route.
            fn drain(&mut self) {
                while !self.done {
                    match self.routed.try_next() {
                        Some(ev) => self.done = self.encoder.event(ev, &mut self.buf),
                        None => break,
                    }
                }
            }

            /// Let the other ready tasks run and take what the route makes of it, for as long
            /// as that brings more and until `enough`: the upstream connection hands over one
            /// HTTP chunk per wake-up, so a provider's burst arrives an event every round or
            /// two (see `EMPTY_ROUNDS`). A round costs no syscall of its own, and a lone event
            /// goes out as soon as nothing else is runnable for two rounds (microseconds).
            async fn gather(&mut self, enough: impl Fn(&Self) -> bool) {
                let mut empty = 0;
                // After a round that brought an event, the upstream connection's task is
                // queued with the next chunk: going behind it is enough (`requeue`). After an
                // empty one it waits for its socket, which only a poll of the I/O driver sees.
                let mut came = true;
                for _ in 0..COALESCE_ROUNDS {
                    if self.done || self.buf.is_empty() || enough(self) {
                        break;
                    }
                    if came {
                        crate::wake::requeue().await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                    let before = self.routed.runs;
                    match self.routed.next().now_or_never() {
                        Some(Some(ev)) => self.done = self.encoder.event(ev, &mut self.buf),
                        Some(None) => {
                            self.encoder.vanished(&mut self.buf);
                            self.done = true;
                        }
                        None => {}
                    }
                    self.drain();
                    // A round in which the route ran brought something from upstream, even if
                    // it wrote nothing yet (the finish and usage chunks ahead of a Chat
                    // stream's last frame): the end of a burst is near, not over. Counting it
                    // empty sent a burst's last frame in a write of its own.
                    came = self.routed.runs > before;
                    if came {
                        empty = 0;
                    } else {
                        empty += 1;
                        if empty == EMPTY_ROUNDS {
                            break;
                        }
                    }
                }
            }
        }
        st.buf.extend_from_slice(&first);
        st.gather(|st| st.buf.len() > first.len()).await;
        st.started = st.buf.len() > first.len();
        st.first = Some(st.buf.split().freeze());
        let stream = futures_util::stream::unfold(st, |mut st| async move {
            if let Some(opening) = st.first.take() {
                return Some((Ok::<Bytes, std::io::Error>(opening), st));
            }
            // Room for a typical frame: written in small pieces, it should not have to grow.
            st.buf.reserve(FRAME_ROOM);
            while !st.done && st.buf.is_empty() {
                // A keep-alive is not the first token: it must not start the gathering.
                let mut kept_alive = 0;
                tokio::select! {
                    // Events before the keep-alive check; the order matters little, but a
                    // fixed one spares the random draw of an unbiased select per event.
                    biased;
                    ev = st.routed.next() => match ev {
                        Some(ev) => st.done = st.encoder.event(ev, &mut st.buf),
                        None => {
                            st.encoder.vanished(&mut st.buf);
                            st.done = true;
                        }
                    },
                    _ = st.tick.as_mut() => {
                        let due = st.last_sent + KEEPALIVE;
                        if tokio::time::Instant::now() >= due {
                            st.encoder.keepalive(&mut st.buf);
                            kept_alive = st.buf.len();
                            st.tick.as_mut().reset(tokio::time::Instant::now() + KEEPALIVE);
                        } else {
                            st.tick.as_mut().reset(due);
                        }
                    }
                }
                // Drain what is already waiting into the same body chunk: one socket write per
                // burst rather than per event.
                st.drain();
                // Only a chunk with something in it was the first token (usage and the like
                // write nothing); once that is out, a chunk gathers the rest of a burst.
                if !st.started {
                    st.started = st.buf.len() > kept_alive;
                } else {
                    // Until the buffer is nearly full: half of it split a typical answer's
                    // burst (13 KB through Chat) in two writes.
                    st.gather(|st| st.buf.len() >= BODY_BUFFER - FRAME_ROOM)
                        .await;
                }
            }
            st.last_sent = tokio::time::Instant::now();
            if st.buf.is_empty() {
                None
            } else {
                let chunk = st.buf.split().freeze();
                Some((Ok(chunk), st))
            }
        });
        Body::from_stream(stream)
    }
}

fn vanished() -> ApiError {
    ApiError::from_route(
        ErrorKind::Internal,
        "mythosd lost this request (a bug: the daemon log has the details)".into(),
        None,
    )
}

/// Turns stream events into one API's SSE frames.
pub trait Encoder: Send + 'static {
    /// Write the frames for `ev`; true when the stream is over (after `done` or `error`).
    fn event(&mut self, ev: StreamEvent, out: &mut BytesMut) -> bool;
    /// Nothing happened for a while.
    fn keepalive(&mut self, out: &mut BytesMut);
    /// The router is gone without a last event.
    fn vanished(&mut self, out: &mut BytesMut);
}

/// Append one SSE frame (`event:` line when named, then `data:`), serializing `data` straight
/// into `out`: the encoders hand typed structs borrowing the event's text, so a frame costs no
/// JSON tree and no intermediate string.
pub fn sse<T: Serialize + ?Sized>(out: &mut BytesMut, event: Option<&str>, data: &T) {
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"data: ");
    // Into memory, and the encoders' types have string keys only: this cannot fail.
    let _ = serde_json::to_writer(bytes::BufMut::writer(&mut *out), data);
    out.extend_from_slice(b"\n\n");
}

/// Serializes as `{}` (an empty JSON object) without building a map.
#[derive(Debug, Clone, Copy)]
pub struct EmptyObject;

impl Serialize for EmptyObject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

/// Serializes as `[]`.
pub const EMPTY_ARRAY: [(); 0] = [];

/// A block of the answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// Reasoning, with Anthropic's signature when it came from Anthropic.
    Thinking {
        /// The text.
        text: String,
        /// The signature.
        signature: Option<String>,
    },
    /// Answer text.
    Text(String),
    /// Thinking the provider redacted, to be sent back as it came.
    RedactedThinking(String),
    /// The model's refusal, in words (OpenAI's `refusal`).
    Refusal(String),
    /// A tool call.
    Tool {
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments, JSON text.
        args: String,
    },
    /// A server tool's call or result (Anthropic's), JSON text, whole.
    Server(String),
    /// A citation of the text block that follows (or the one before, at the end), JSON text.
    Citation(String),
}

/// A whole answer, built from events (Restart discards what came before).
#[derive(Debug, Default, Clone)]
pub struct Answer {
    /// The blocks in order.
    pub blocks: Vec<Block>,
    /// Router tool index → position in `blocks`.
    tools: Vec<(u32, usize)>,
}

impl Answer {
    /// Take one event into account.
    pub fn apply(&mut self, ev: &StreamEvent) {
        match ev {
            StreamEvent::TextDelta { text } => match self.blocks.last_mut() {
                Some(Block::Text(t)) => t.push_str(text),
                _ => self.blocks.push(Block::Text(text.as_str().to_owned())),
            },
            StreamEvent::ThinkingDelta { text } => match self.blocks.last_mut() {
                Some(Block::Thinking {
                    text: t,
                    signature: None,
                }) => t.push_str(text),
                _ => self.blocks.push(Block::Thinking {
                    text: text.as_str().to_owned(),
                    signature: None,
                }),
            },
            StreamEvent::ThinkingSignature { signature } => match self.blocks.last_mut() {
                Some(Block::Thinking { signature: s, .. }) => *s = Some(signature.clone()),
                _ => self.blocks.push(Block::Thinking {
                    text: String::new(),
                    signature: Some(signature.clone()),
                }),
            },
            StreamEvent::RedactedThinking { data } => {
                self.blocks.push(Block::RedactedThinking(data.clone()))
            }
            StreamEvent::ServerBlock { json } => self.blocks.push(Block::Server(json.clone())),
            StreamEvent::Citation { json } => self.blocks.push(Block::Citation(json.clone())),
            StreamEvent::RefusalDelta { text } => match self.blocks.last_mut() {
                Some(Block::Refusal(t)) => t.push_str(text),
                _ => self.blocks.push(Block::Refusal(text.as_str().to_owned())),
            },
            StreamEvent::ToolCallStart { index, id, name } => {
                self.tools.push((*index, self.blocks.len()));
                self.blocks.push(Block::Tool {
                    id: id.clone(),
                    name: name.clone(),
                    args: String::new(),
                });
            }
            StreamEvent::ToolCallDelta { index, json } => {
                if let Some(&(_, at)) = self.tools.iter().rev().find(|(i, _)| i == index) {
                    if let Some(Block::Tool { args, .. }) = self.blocks.get_mut(at) {
                        args.push_str(json);
                    }
                }
            }
            StreamEvent::Rerouted {
                mode: RerouteMode::Restart,
                ..
            } => *self = Answer::default(),
            _ => {}
        }
    }

    /// The concatenated answer text.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for b in &self.blocks {
            if let Block::Text(t) = b {
                s.push_str(t);
            }
        }
        s
    }

    /// The concatenated refusal text (empty when the model did not refuse).
    pub fn refusal(&self) -> String {
        let mut s = String::new();
        for b in &self.blocks {
            if let Block::Refusal(t) = b {
                s.push_str(t);
            }
        }
        s
    }

    /// Whether the answer calls a tool.
    pub fn has_tools(&self) -> bool {
        self.blocks.iter().any(|b| matches!(b, Block::Tool { .. }))
    }
}

/// Tool arguments as a JSON value; a model that produced invalid JSON gets an empty object
/// rather than a broken response (the raw text is logged).
pub fn args_value(args: &str) -> serde_json::Value {
    if args.trim().is_empty() {
        return serde_json::json!({});
    }
    serde_json::from_str(args).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "a tool call's arguments are not valid JSON");
        serde_json::json!({})
    })
}

/// How an answer that refused in words (OpenAI's `refusal`, which ends with a plain `stop`)
/// ended, for a dialect that says so in its stop reason (Messages: `refusal`).
pub fn refusal_finish(finish: &FinishReason, refused: bool) -> &FinishReason {
    match finish {
        FinishReason::Stop if refused => &FinishReason::Refusal,
        other => other,
    }
}

/// Anthropic's `stop_reason` for a finish (tool calls win over a plain stop, as OpenAI-format
/// providers sometimes say `stop` after calling tools).
pub fn anthropic_stop(finish: &FinishReason, tools: bool) -> &'static str {
    match finish {
        FinishReason::MaxTokens => "max_tokens",
        FinishReason::ToolUse => "tool_use",
        _ if tools => "tool_use",
        FinishReason::Refusal | FinishReason::ContentFilter => "refusal",
        FinishReason::StopSequence(_) => "stop_sequence",
        FinishReason::Other(s) if s == "stop_sequence" => "stop_sequence",
        FinishReason::Other(s) if s == "pause_turn" => "pause_turn",
        _ => "end_turn",
    }
}

/// The stop sequence that ended an answer, when the provider said which.
pub fn stop_sequence(finish: &FinishReason) -> Option<&str> {
    match finish {
        FinishReason::StopSequence(s) => Some(s),
        _ => None,
    }
}

/// Why a stream that already showed text ends in an error when the answer had to start over:
/// `from` gave up the answer for `reason` (the provider that failed, or one that then refused
/// to go on with it; `from` is `to` when one provider starts over), and `to` starts afresh,
/// which a client cannot show after what it has.
pub fn restart_message(from: &str, to: &str, reason: &str) -> String {
    // Who cut the answer is not always `from` (a provider that refused to go on with it is
    // `from` too): the reason says what happened, in its provider's name (a chaos run read
    // "a2 failed mid-answer" of a provider that had only refused the continuation).
    let why = if reason.starts_with(from) {
        reason.to_string()
    } else {
        format!("{from}: {reason}")
    };
    format!(
        "the answer was cut and could not be continued ({why}); it starts over on {to}, so it \
         must be asked again"
    )
}

/// Chat Completions' `finish_reason` for a finish.
pub fn openai_finish(finish: &FinishReason, tools: bool) -> &'static str {
    match finish {
        FinishReason::MaxTokens => "length",
        FinishReason::ToolUse => "tool_calls",
        _ if tools => "tool_calls",
        FinishReason::ContentFilter | FinishReason::Refusal => "content_filter",
        _ => "stop",
    }
}

/// Anthropic usage JSON.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AnthropicUsage {
    input_tokens: u64,
    output_tokens: u64,
    cache_read_input_tokens: u64,
    cache_creation_input_tokens: u64,
    /// Only when a server tool searched: what Claude Code adds to a session's cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_tool_use: Option<ServerToolUse>,
}

/// `{"web_search_requests": n}`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerToolUse {
    web_search_requests: u64,
}

/// Anthropic usage JSON for `u`.
pub fn anthropic_usage(u: &Usage) -> AnthropicUsage {
    AnthropicUsage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cache_read_input_tokens: u.cache_read_input_tokens,
        cache_creation_input_tokens: u.cache_creation_input_tokens,
        server_tool_use: (u.web_searches > 0).then_some(ServerToolUse {
            web_search_requests: u.web_searches,
        }),
    }
}

/// OpenAI usage JSON (`prompt_tokens` includes cached tokens there).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OpenaiUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedTokens,
}

/// `{"cached_tokens": n}`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CachedTokens {
    /// Prompt tokens read from the cache.
    pub cached_tokens: u64,
}

/// OpenAI usage JSON for `u`.
pub fn openai_usage(u: &Usage) -> OpenaiUsage {
    let prompt = u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens;
    OpenaiUsage {
        prompt_tokens: prompt,
        completion_tokens: u.output_tokens,
        total_tokens: prompt + u.output_tokens,
        prompt_tokens_details: CachedTokens {
            cached_tokens: u.cache_read_input_tokens,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restart after a provider refused to go on with a cut answer (it is both `from` and
    /// `to`) does not blame it for the cut: a chaos run read "o2 failed mid-answer and o2 could
    /// not continue it" where a2 had failed.
    #[test]
    fn a_restart_names_who_failed_only_when_it_is_known() {
        assert_eq!(
            restart_message("a2", "o2", "connection lost"),
            "the answer was cut and could not be continued (a2: connection lost); it starts \
             over on o2, so it must be asked again"
        );
        // A provider that refused the continuation is not said to have failed mid-answer.
        let m = restart_message("a2", "o2", "a2 cannot continue a partial answer");
        assert!(!m.contains("failed"), "{m}");
        assert!(m.contains("(a2 cannot continue a partial answer)"), "{m}");
    }

    #[test]
    fn head_headers_say_who_served_and_what_it_cost() {
        let head = Head {
            provider: "deepseek".into(),
            model: "deepseek-chat".into(),
            record: 42,
            reroutes: 1,
            overhead: Duration::from_nanos(1_234_567),
        };
        let mut h = HeaderMap::new();
        head.headers(&mut h);
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
        assert_eq!(get("x-mythos-provider"), Some("deepseek"));
        assert_eq!(get("x-mythos-model"), Some("deepseek-chat"));
        assert_eq!(get("x-mythos-request"), Some("42"));
        assert_eq!(get("x-mythos-rerouted"), Some("1"));
        assert_eq!(get("x-mythos-overhead-ms"), Some("1.235"));
        assert_eq!(get("request-id"), Some("req_mythos_42"));
        assert_eq!(get("x-request-id"), Some("req_mythos_42"));
        for (ns, ms) in [
            (0, "0.000"),
            (999_499, "0.999"),
            (999_500, "1.000"),
            (12_000_000, "12.000"),
        ] {
            let mut h = HeaderMap::new();
            Head {
                overhead: Duration::from_nanos(ns),
                ..Head::for_test()
            }
            .headers(&mut h);
            assert_eq!(h.get("x-mythos-overhead-ms").unwrap(), ms, "{ns} ns");
        }
    }
}
