//! One client connection: hello, then requests and interleaved stream events.
//!
//! A bad frame drops this client only. Each chat request runs in its own task and writes its
//! events into the connection's outgoing channel, so several streams share one connection; a
//! single writer task owns the socket's write half and batches frames before flushing.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use crate::router::CLIENT_READ_TIMEOUT;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::{FutureExt, SinkExt, StreamExt};
use interprocess::local_socket::tokio::Stream as Socket;
use mythos_protocol::codec::{CodecError, FrameCodec};
use mythos_protocol::{
    negotiate, Encoding, ErrorKind, Hello, HelloReply, Request, Response, StreamEvent,
    MAX_FRAME_LEN, MAX_HELLO_LEN,
};
use std::pin::Pin;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::{Framed, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::limits::Seat;
use super::memory::{Held, Refusal, RequestMemory};
use super::Context;
use crate::metrics::{CountedIo, Front};
use crate::router::Emitter;

/// The daemon's build, sent in the hello.
pub const BUILD: &str = env!("CARGO_PKG_VERSION");

/// How many scheduler rounds the writer may wait for more of a burst before it writes.
const WRITER_ROUNDS: usize = 4;

/// Whether `r` is a stream's `started` event or the first event after it (its first token,
/// or its end): what the user is waiting for, never held back to gather more. `fresh` keeps
/// the streams that have started and sent nothing since; usually empty, so most events cost
/// one check.
fn starts_a_stream(r: &Response, fresh: &mut Vec<u64>) -> bool {
    let Response::Event { id, event } = r else {
        return false;
    };
    if let StreamEvent::Started { .. } = event {
        if !fresh.contains(id) {
            fresh.push(*id);
        }
        return true;
    }
    // Bookkeeping events (usage, a reroute, queueing) are not what the user waits for.
    let first_output =
        event.is_output() || matches!(event, StreamEvent::Done(_) | StreamEvent::Error { .. });
    if !first_output || fresh.is_empty() {
        return false;
    }
    match fresh.iter().position(|f| f == id) {
        Some(at) => {
            fresh.swap_remove(at);
            true
        }
        None => false,
    }
}

/// How long a client may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams one connection may have running at once. A chat runs one, an editor a few; a
/// client that sent hundreds (and read none of them) held every provider stream the daemon had
/// and every other client queued behind it.
pub const MAX_STREAMS_PER_CONNECTION: usize = 32;

/// Serve one connection to the end.
pub async fn serve(stream: Socket, ctx: Arc<Context>, seat: Seat) {
    serve_seated(stream, &ctx, &seat).await;
    ctx.conns.leave(seat.id);
}

async fn serve_seated(stream: Socket, ctx: &Arc<Context>, seat: &Seat) {
    let socket = Arc::new(stream);
    let mut framed = Framed::new(
        CountedIo::new(Shared(socket.clone()), ctx.metrics.clone(), Front::Socket),
        FrameCodec::<Hello, HelloReply>::new(Encoding::Json, MAX_HELLO_LEN),
    );
    let hello = tokio::select! {
        h = tokio::time::timeout(HELLO_TIMEOUT, framed.next()) => h,
        _ = ctx.hard_stop.cancelled() => return,
        _ = seat.close.cancelled() => return,
    };
    let reply = match hello {
        Ok(Some(Ok(hello))) => negotiate(&hello, BUILD),
        Ok(Some(Err(e))) => {
            tracing::debug!(error = %e, "bad hello");
            incompatible(format!("bad hello: {e}"))
        }
        // Closed or silent before saying anything: nothing to answer.
        Ok(None) | Err(_) => return,
    };
    let encoding = match &reply {
        HelloReply::Accepted { encoding, .. } => *encoding,
        HelloReply::Incompatible { .. } => {
            let _ = framed.send(reply).await;
            return;
        }
    };
    if framed.send(reply).await.is_err() {
        return;
    }
    // From here on the reader and the writer task each hold the socket: no lock shared
    // between them per frame, as `Framed::split` would take.
    let hello_parts = framed.into_parts();
    let codec = || FrameCodec::<Request, Response>::new(encoding, MAX_FRAME_LEN);
    let sink = FramedWrite::new(hello_parts.io, codec());
    let mut frames = reader_after_hello(
        Shared(socket),
        codec(),
        hello_parts.read_buf,
        ctx.memory.clone(),
    );

    let (tx, rx) = mpsc::channel::<Response>(256);
    let writer = tokio::spawn(write_batches(rx, sink));

    let mut streams: HashMap<u64, Stream> = HashMap::new();
    let mut tasks: JoinSet<u64> = JoinSet::new();
    // The client read nothing for the read timeout: what is queued for it will not be read.
    let mut stuck = false;
    loop {
        tokio::select! {
            frame = frames.next() => match frame {
                None => break,
                Some(Ok((req, held))) => {
                    if !handle(req, held, ctx, seat, &tx, &mut streams, &mut tasks).await {
                        stuck = true;
                        break;
                    }
                    ctx.conns.touch(seat.id, streams.len(), Instant::now());
                }
                Some(Err(ReadError::Codec(e))) => {
                    // The stream is out of sync after a bad frame: say why and drop this client.
                    let kind = match e {
                        CodecError::Io(_) => None,
                        _ => Some(ErrorKind::Protocol),
                    };
                    if let Some(kind) = kind {
                        tracing::debug!(error = %e, "dropping client after a bad frame");
                        queue_reply(ctx, &tx, Response::Error { kind, message: e.to_string() }).await;
                    }
                    break;
                }
                Some(Err(ReadError::Memory(refusal, len))) => {
                    // Its frame was read and dropped; the client learns why, and its
                    // connection ends as after any refused frame.
                    let kind = match refusal {
                        Refusal::TooLarge { .. } => ErrorKind::BadRequest,
                        Refusal::Busy { .. } => ErrorKind::Overloaded,
                    };
                    let message = refusal.message(len);
                    tracing::debug!(bytes = len, "{message}");
                    queue_reply(ctx, &tx, Response::Error { kind, message }).await;
                    break;
                }
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(id) = done {
                    streams.remove(&id);
                }
                ctx.conns.touch(seat.id, streams.len(), Instant::now());
            }
            _ = ctx.hard_stop.cancelled() => break,
            // Pushed out to make room for a new client (this one was the longest idle).
            _ = seat.close.cancelled(), if streams.is_empty() => break,
        }
    }
    // The client is gone (or we are stopping): abort its upstream requests now, so no tokens
    // are billed for nobody.
    for stream in streams.values() {
        stream.cancel.cancel();
    }
    while tasks.join_next().await.is_some() {}
    drop(tx);
    // The writer sends what is left (the `ok` to a shutdown request among it), within moments
    // once the daemon is stopping: a client that reads nothing would hold its socket write,
    // and the exit, for ever.
    // A client dropped for reading nothing gets its socket closed now: its writer would
    // wait on the socket, holding the seat and the descriptor, for as long as it stays open.
    let abort = writer.abort_handle();
    if stuck {
        abort.abort();
    }
    tokio::select! {
        biased;
        _ = writer => {}
        _ = async {
            ctx.hard_stop.cancelled().await;
            tokio::time::sleep(STOP_FLUSH).await;
        } => abort.abort(),
    }
}

/// How long a connection's last replies may take to leave once the daemon is stopping.
const STOP_FLUSH: Duration = Duration::from_millis(500);

/// Queue a reply for the writer; `false` when the client has not made room for it within
/// [`CLIENT_READ_TIMEOUT`] or the daemon is stopping. The connection's loop waits here, so a
/// client that sends requests and reads nothing must not hold it (and with it the shutdown)
/// for ever: it is dropped instead.
async fn queue_reply(ctx: &Context, tx: &mpsc::Sender<Response>, response: Response) -> bool {
    tokio::select! {
        // A reply that fits goes, even when the stop came meanwhile (the `ok` to a shutdown
        // request).
        biased;
        sent = tx.send(response) => sent.is_ok(),
        _ = ctx.hard_stop.cancelled() => false,
        _ = tokio::time::sleep(CLIENT_READ_TIMEOUT) => {
            tracing::debug!("dropping a client that has read nothing for a while");
            false
        }
    }
}

/// Frames smaller than this are not held from the request memory: a `status`, a `cancel`, a
/// short chat turn. The connection cap and [`MAX_STREAMS_PER_CONNECTION`] bound what they hold
/// (512 connections of 32 such streams: 64 MiB), and a `status` is answered however full the
/// budget is.
const HOLD_FROM: usize = 4096;

/// A read buffer that grew past this for a large frame is replaced once that frame is decoded:
/// an idle connection would otherwise keep the frame's 16 MiB for as long as it stays open.
const KEEP_BUFFER_UP_TO: usize = 64 * 1024;

/// Why the connection's next request could not be read.
#[derive(Debug)]
enum ReadError {
    /// A bad frame, or the socket failed.
    Codec(CodecError),
    /// The frame's bytes could not be held (it was read and dropped without being kept).
    Memory(Refusal, usize),
}

/// The connection's requests, each with the bytes it holds from the request memory: first
/// those the client sent along with its hello (already read with it), then the socket's. A
/// frame's length is held as soon as its prefix is read, before its body is (a frame that does
/// not fit waits, or ends the connection with an `overloaded` error), and stays held for as long
/// as its request runs. Reading stops at the first error, which ends the connection.
fn reader_after_hello(
    socket: Shared,
    codec: FrameCodec<Request, Response>,
    leftover: bytes::BytesMut,
    memory: Arc<RequestMemory>,
) -> impl futures_util::Stream<Item = Result<(Request, Option<Held>), ReadError>> + Unpin {
    let reader = FrameReader {
        socket,
        codec,
        buf: leftover,
        memory,
        held: None,
        checked: false,
    };
    // `unfold` keeps a read in progress (a frame half read, a wait for memory) across the
    // connection loop's polls.
    Box::pin(futures_util::stream::unfold(
        Some(reader),
        |reader| async move {
            let mut reader = reader?;
            match reader.next().await {
                Ok(Some(item)) => Some((Ok(item), Some(reader))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        },
    ))
}

struct FrameReader {
    socket: Shared,
    codec: FrameCodec<Request, Response>,
    buf: bytes::BytesMut,
    memory: Arc<RequestMemory>,
    /// What the frame being read holds.
    held: Option<Held>,
    /// The frame being read has been looked at (and its bytes held if it needs them).
    checked: bool,
}

/// How long a refused frame may take to arrive (and be dropped) before its answer is sent.
const DISCARD_WITHIN: Duration = Duration::from_secs(30);

impl FrameReader {
    /// Read and drop the next `len` bytes, those in the buffer first.
    async fn discard(&mut self, mut len: usize) {
        use bytes::Buf as _;
        use tokio::io::AsyncReadExt as _;
        let buffered = len.min(self.buf.len());
        self.buf.advance(buffered);
        len -= buffered;
        let mut scratch = vec![0u8; len.min(64 * 1024)];
        while len > 0 {
            let want = len.min(scratch.len());
            match self.socket.read(&mut scratch[..want]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => len -= n,
            }
        }
    }

    async fn next(&mut self) -> Result<Option<(Request, Option<Held>)>, ReadError> {
        use tokio::io::AsyncReadExt as _;
        use tokio_util::codec::Decoder;
        loop {
            if !self.checked && self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                // Over the cap, the codec refuses it below.
                if (HOLD_FROM..=MAX_FRAME_LEN).contains(&len) {
                    match self.memory.hold(len).await {
                        Ok(held) => self.held = Some(held),
                        Err(refusal) => {
                            // Read (and drop) the frame first: a client still writing it
                            // would fail on a closed socket instead of reading the answer.
                            let _ =
                                tokio::time::timeout(DISCARD_WITHIN, self.discard(4 + len)).await;
                            return Err(ReadError::Memory(refusal, len));
                        }
                    }
                }
                self.checked = true;
            }
            if let Some(req) = self.codec.decode(&mut self.buf).map_err(ReadError::Codec)? {
                self.checked = false;
                if self.buf.capacity() > KEEP_BUFFER_UP_TO {
                    self.buf = bytes::BytesMut::from(&self.buf[..]);
                }
                return Ok(Some((req, self.held.take())));
            }
            self.buf.reserve(8 * 1024);
            let n = self
                .socket
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| ReadError::Codec(CodecError::Io(e)))?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Codec(CodecError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the connection closed in the middle of a frame",
                    ))))
                };
            }
        }
    }
}

/// The most events the writer takes from its channel at once.
const WRITER_BATCH: usize = 64;

/// The connection's writer: each event as it comes, and a burst gathered into one write.
pub(super) async fn write_batches<S>(mut rx: mpsc::Receiver<Response>, mut sink: S)
where
    S: futures_util::Sink<Response> + Unpin,
{
    let mut fresh = Vec::new();
    // Events are taken in batches: one channel operation (and one release of the channel's
    // permits, which takes its lock) for everything queued, rather than one per event. The
    // buffer grows with the bursts this connection sees: most connections carry one stream at
    // a time, and 64 slots up front cost every open stream ~2 KiB.
    let mut batch = Vec::with_capacity(4);
    while rx.recv_many(&mut batch, WRITER_BATCH).await > 0 {
        // Feed everything already queued, then flush once: one syscall for a burst of
        // small deltas instead of one per delta.
        let mut rounds = WRITER_ROUNDS;
        if !feed_all(&mut batch, &mut sink, &mut fresh, &mut rounds).await {
            return;
        }
        // Then let every other ready task run before writing, while that brings more: a
        // provider's burst reaches the router one HTTP chunk per wake-up, so more events
        // are usually a scheduler round or two away (the upstream connection needs a round
        // to read the next part of a burst from its socket). A yield costs no syscall of
        // its own, and an event that is alone goes out as soon as nothing else has been
        // runnable for two rounds (microseconds). A batch with a stream's start or its first
        // token waits one round only: that is what the user is waiting for.
        let mut empty = 0;
        while rounds > 0 && empty < 2 {
            tokio::task::yield_now().await;
            rounds -= 1;
            let came = std::future::poll_fn(|cx| {
                // Nothing queued (or the channel closed, which the outer loop sees next).
                Poll::Ready(match rx.poll_recv_many(cx, &mut batch, WRITER_BATCH) {
                    Poll::Ready(n) => n,
                    Poll::Pending => 0,
                })
            })
            .await;
            empty = if came > 0 { 0 } else { empty + 1 };
            if !feed_all(&mut batch, &mut sink, &mut fresh, &mut rounds).await {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// Feed `batch` (emptied) to `sink`; a stream's start or first token among it leaves one
/// round at most to wait (see `starts_a_stream`). False when the client is gone.
async fn feed_all<S>(
    batch: &mut Vec<Response>,
    sink: &mut S,
    fresh: &mut Vec<u64>,
    rounds: &mut usize,
) -> bool
where
    S: futures_util::Sink<Response> + Unpin,
{
    for event in batch.drain(..) {
        if starts_a_stream(&event, fresh) {
            *rounds = (*rounds).min(1);
        }
        if sink.feed(event).await.is_err() {
            return false;
        }
    }
    true
}

/// The client's socket, held by the connection's reader and by its writer task: `&Socket`
/// reads and writes (the two directions have readiness of their own), so each side owns an
/// `Arc` of it.
struct Shared(Arc<Socket>);

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut &*self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut &*self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut &*self.0).poll_shutdown(cx)
    }
}

fn incompatible(reason: String) -> HelloReply {
    HelloReply::Incompatible {
        protocol: mythos_protocol::PROTOCOL_VERSION,
        build: BUILD.to_string(),
        reason,
    }
}

/// Serve one request of the connection; `false` drops the client (see [`queue_reply`]).
async fn handle(
    req: Request,
    held: Option<Held>,
    ctx: &Arc<Context>,
    seat: &Seat,
    tx: &mpsc::Sender<Response>,
    streams: &mut HashMap<u64, Stream>,
    tasks: &mut JoinSet<u64>,
) -> bool {
    let reply = match req {
        Request::Chat(chat) => {
            let id = chat.id;
            let refuse = |kind, message: &str| Response::Event {
                id,
                event: StreamEvent::Error {
                    kind,
                    message: message.to_string(),
                    retry_at_unix_ms: None,
                },
            };
            if ctx.draining.is_cancelled() {
                refuse(
                    ErrorKind::ShuttingDown,
                    mythos_protocol::REFUSED_WHILE_STOPPING,
                )
            } else if seat.reserve {
                // Overloaded, not internal: it is no bug (it was shown with "this is a bug in
                // mythosd"), and the limit is often the open-file limit's (found by a helper).
                refuse(
                    ErrorKind::Overloaded,
                    &format!(
                        "mythosd is at its limit of {} connections, all of them streaming: this \
                         one may ask for status but not chat (raise [server] max_connections, \
                         or the open-file limit it is fitted under: `ulimit -n`, LimitNOFILE)",
                        ctx.conns.max()
                    ),
                )
            } else if chat.messages.is_empty() {
                refuse(ErrorKind::BadRequest, "the request has no messages")
            } else {
                // A stream that already sent its last event frees its id, even before its
                // task has been reaped: a client may reuse an id right after `done`.
                if streams
                    .get(&id)
                    .is_some_and(|s| s.ended.load(Ordering::Acquire))
                {
                    streams.remove(&id);
                }
                let running = streams
                    .values()
                    .filter(|s| !s.ended.load(Ordering::Acquire))
                    .count();
                match streams.entry(id) {
                    // Not an event of stream `id`: that stream is running and will end with
                    // its own `done` or `error`, the only last event it may have (an error
                    // event here, then the running stream's events, broke that for the client).
                    Entry::Occupied(_) => Response::Error {
                        kind: ErrorKind::Protocol,
                        message: format!(
                            "a stream with id {id} is already running on this connection: \
                             this request was not started"
                        ),
                    },
                    Entry::Vacant(_) if running >= MAX_STREAMS_PER_CONNECTION => refuse(
                        ErrorKind::BadRequest,
                        &format!(
                            "this connection already has {MAX_STREAMS_PER_CONNECTION} streams \
                             running: wait for one to end, or open another connection"
                        ),
                    ),
                    Entry::Vacant(slot) => {
                        let token = ctx.hard_stop.child_token();
                        let ended = Arc::new(AtomicBool::new(false));
                        slot.insert(Stream {
                            cancel: token.clone(),
                            ended: ended.clone(),
                        });
                        let router = ctx.router();
                        let emitter = Emitter::new(id, tx.clone())
                            .with_end_flag(ended)
                            .with_shutdown(ctx.hard_stop.clone());
                        let report = tx.clone();
                        let tracked = ctx.streams.track_future(async move {
                            // The request's bytes stay held while it runs.
                            let _held = held;
                            // A bug in one request must not hang its client or touch any other
                            // stream: end this one with an `internal` error and go on.
                            // Boxed: the route's state (~4 KB) is then made in place once,
                            // not copied again into the task as part of this future.
                            let run =
                                AssertUnwindSafe(Box::pin(router.route(chat, emitter, token)));
                            if let Err(panic) = run.catch_unwind().await {
                                let what = panic_message(panic.as_ref());
                                tracing::error!(request = id, panic = %what, "a request panicked");
                                let event = StreamEvent::Error {
                                    kind: ErrorKind::Internal,
                                    message: format!(
                                        "internal error in mythosd ({what}); other requests go on, \
                                         and the daemon log has the details"
                                    ),
                                    retry_at_unix_ms: None,
                                };
                                let _ = report.send(Response::Event { id, event }).await;
                            }
                            id
                        });
                        tasks.spawn(tracked);
                        return true;
                    }
                }
            }
        }
        Request::Cancel { id } => {
            if let Some(s) = streams.get(&id) {
                s.cancel.cancel();
            }
            return true;
        }
        Request::Status => Response::Status(Box::new(ctx.status_report())),
        Request::Shutdown => {
            tracing::info!("shutdown requested by a client");
            ctx.shutdown_requested.cancel();
            Response::Ok
        }
        Request::Reset { provider } => {
            let router = ctx.router();
            let mut book = router.health();
            match book.index_of(&provider) {
                Some(i) => {
                    book.reset(i);
                    router.health_changed().notify_one();
                    Response::Ok
                }
                None => unknown_provider(&provider),
            }
        }
        Request::Why { record } => match &ctx.state {
            Some(state) => match state.why(record).await {
                Some(rec) => Response::Why(Box::new(rec)),
                None => Response::Error {
                    kind: ErrorKind::BadRequest,
                    message: match record {
                        Some(id) => format!("no request record {id}"),
                        None => "no request has been routed yet".into(),
                    },
                },
            },
            None => no_state(),
        },
        Request::Usage { days } => match &ctx.state {
            Some(state) => Response::Usage(Box::new(state.usage(days).await)),
            None => no_state(),
        },
        Request::Reload => match ctx.reload().await {
            Ok(()) => Response::Ok,
            Err(message) => Response::Error {
                kind: ErrorKind::BadRequest,
                message: format!("the config was not reloaded (the one in force stays): {message}"),
            },
        },
        Request::Http => {
            let info = ctx.front_end.get();
            Response::Http {
                url: info.map(|(u, _)| u.clone()),
                token: info.map(|(_, t)| t.clone()),
            }
        }
        Request::SimInject { provider, faults } => match ctx.sim(&provider) {
            Some(sim) => {
                sim.inject(faults);
                Response::Ok
            }
            None => Response::Error {
                kind: ErrorKind::BadRequest,
                message: format!("`{provider}` is not a simulated provider"),
            },
        },
    };
    queue_reply(ctx, tx, reply).await
}

/// A chat stream of this connection.
struct Stream {
    cancel: CancellationToken,
    /// Its last event (`done` or `error`) has been sent.
    ended: Arc<AtomicBool>,
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

fn unknown_provider(name: &str) -> Response {
    Response::Error {
        kind: ErrorKind::BadRequest,
        message: format!("no provider named `{name}`"),
    }
}

fn no_state() -> Response {
    Response::Error {
        kind: ErrorKind::Internal,
        message: "the state database is not available (see the daemon log)".into(),
    }
}

#[cfg(test)]
mod writer_tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A sink that keeps what each flush wrote.
    #[derive(Default)]
    struct Batches {
        done: Vec<Vec<Response>>,
        open: Vec<Response>,
    }

    impl futures_util::Sink<Response> for Batches {
        type Error = ();
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(mut self: Pin<&mut Self>, item: Response) -> Result<(), ()> {
            self.open.push(item);
            Ok(())
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            if !self.open.is_empty() {
                let batch = std::mem::take(&mut self.open);
                self.done.push(batch);
            }
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
            self.poll_flush(cx)
        }
    }

    fn text(i: usize) -> Response {
        Response::Event {
            id: 1,
            event: StreamEvent::TextDelta {
                text: format!("t{i}").into(),
            },
        }
    }

    fn started() -> Response {
        Response::Event {
            id: 1,
            event: StreamEvent::Started {
                provider: "p".into(),
                model: "m".into(),
                attempt: 1,
                record: 1,
                setup_us: 0,
            },
        }
    }

    /// The batches the writer makes of `events`, sent by another task with `pace` between
    /// them (`Err(rounds)`: that many scheduler rounds; `Ok(d)`: a sleep).
    async fn batches(events: Vec<Response>, pace: Result<Duration, usize>) -> Vec<Vec<Response>> {
        let (tx, rx) = mpsc::channel(256);
        let producer = tokio::spawn(async move {
            for e in events {
                tx.send(e).await.unwrap();
                match pace {
                    Ok(d) => tokio::time::sleep(d).await,
                    Err(n) => {
                        for _ in 0..n {
                            tokio::task::yield_now().await;
                        }
                    }
                }
            }
        });
        // A task of its own, as in a connection: the main future is scheduled differently.
        let writer = tokio::spawn(async move {
            let mut sink = Batches::default();
            write_batches(rx, &mut sink).await;
            sink.done
        });
        producer.await.unwrap();
        writer.await.unwrap()
    }

    /// More events queued than the writer takes at once, and the channel closed behind them:
    /// every one goes out, in order, in a few writes.
    #[tokio::test(start_paused = true)]
    async fn a_backlog_larger_than_a_batch_goes_out_whole_and_in_order() {
        let events: Vec<Response> = (0..5 * WRITER_BATCH + 3).map(text).collect();
        let (tx, rx) = mpsc::channel(1024);
        for e in events.clone() {
            tx.send(e).await.unwrap();
        }
        drop(tx);
        let mut sink = Batches::default();
        write_batches(rx, &mut sink).await;
        assert_eq!(sink.done.concat(), events);
        assert!(sink.done.len() <= 6, "{} writes", sink.done.len());
    }

    /// A burst arriving an event every other scheduler round (as an upstream connection
    /// hands it over) goes out in few writes; paced events go out one by one, each at once.
    #[tokio::test(start_paused = true)]
    async fn bursts_are_gathered_and_paced_events_are_not_held() {
        let burst: Vec<Response> = (0..64).map(text).collect();
        let gathered = batches(burst.clone(), Err(2)).await;
        assert!(gathered.len() <= 64 / 2, "{} writes", gathered.len());
        assert_eq!(gathered.concat().len(), 64);

        let paced = batches(burst, Ok(Duration::from_millis(20))).await;
        assert_eq!(paced.len(), 64);
    }

    /// The batches the writer makes of a `started`, then each of `between`, 5 ms apart, then
    /// 8 tokens one scheduler round apart.
    async fn started_then_tokens(between: Vec<Response>) -> Vec<Vec<Response>> {
        let (tx, rx) = mpsc::channel(256);
        let writer = tokio::spawn(async move {
            let mut sink = Batches::default();
            write_batches(rx, &mut sink).await;
            sink.done
        });
        tx.send(started()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        for e in between {
            tx.send(e).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for i in 0..8 {
            tx.send(text(i)).await.unwrap();
            tokio::task::yield_now().await;
        }
        drop(tx);
        writer.await.unwrap()
    }

    /// A stream's first token is not held either when it comes after its `started` went out
    /// alone (the provider took a while to say the first word).
    #[tokio::test(start_paused = true)]
    async fn a_first_token_after_a_lone_start_is_not_held() {
        let out = started_then_tokens(Vec::new()).await;
        assert_eq!(out[0].len(), 1, "started alone");
        assert!(out[1].len() <= 2, "the first token waited for {:?}", out[1]);
        assert!(out.len() < 8, "the rest gathered: {} writes", out.len());
    }

    /// Bookkeeping between the start and the first token (a usage report) does not use up
    /// the first token's right to go out at once.
    #[tokio::test(start_paused = true)]
    async fn a_usage_report_before_the_first_token_does_not_count_as_it() {
        let usage = Response::Event {
            id: 1,
            event: StreamEvent::Usage(mythos_protocol::Usage::default()),
        };
        let out = started_then_tokens(vec![usage]).await;
        assert_eq!((out[0].len(), out[1].len()), (1, 1), "{out:?}");
        assert!(out[2].len() <= 2, "the first token waited for {:?}", out[2]);
    }

    /// The batch that starts a stream waits one round only: its first token is not held
    /// while more of the burst comes.
    #[tokio::test]
    async fn a_stream_start_waits_one_round_only() {
        let mut events = vec![started()];
        events.extend((0..8).map(text));
        let out = batches(events, Err(1)).await;
        assert!(
            out[0].len() <= 2,
            "the first write held {} events",
            out[0].len()
        );
    }
}
