//! One client connection: hello, then requests and interleaved stream events.
//!
//! A bad frame drops this client only. Each chat request runs in its own task and writes its
//! events into the connection's outgoing channel, so several streams share one connection; a
//! single writer task owns the socket's write half and batches frames before flushing.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
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
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::limits::Seat;
use super::Context;
use crate::metrics::{CountedIo, Front};
use crate::router::Emitter;

/// The daemon's build, sent in the hello.
pub const BUILD: &str = env!("CARGO_PKG_VERSION");

/// How long a client may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve one connection to the end.
pub async fn serve(stream: Socket, ctx: Arc<Context>, seat: Seat) {
    serve_seated(stream, &ctx, &seat).await;
    ctx.conns.leave(seat.id);
}

async fn serve_seated(stream: Socket, ctx: &Arc<Context>, seat: &Seat) {
    let stream = CountedIo::new(stream, ctx.metrics.clone(), Front::Socket);
    let mut framed = Framed::new(
        stream,
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
    let framed =
        framed.map_codec(|_| FrameCodec::<Request, Response>::new(encoding, MAX_FRAME_LEN));
    let (mut sink, mut frames) = framed.split();

    let (tx, mut rx) = mpsc::channel::<Response>(256);
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // Feed everything already queued, then flush once: one syscall for a burst of
            // small deltas instead of one per delta.
            if sink.feed(first).await.is_err() {
                return;
            }
            // Then let every other ready task run once before writing: a provider's burst
            // reaches the router one HTTP chunk per wake-up, so more events are usually a
            // scheduler round away. The yield costs no syscall of its own, and an event that is
            // alone goes out as soon as nothing else is runnable (microseconds).
            let mut yielded = false;
            loop {
                while let Ok(more) = rx.try_recv() {
                    if sink.feed(more).await.is_err() {
                        return;
                    }
                }
                if yielded {
                    break;
                }
                tokio::task::yield_now().await;
                yielded = true;
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });

    let mut streams: HashMap<u64, Stream> = HashMap::new();
    let mut tasks: JoinSet<u64> = JoinSet::new();
    loop {
        tokio::select! {
            frame = frames.next() => match frame {
                None => break,
                Some(Ok(req)) => {
                    handle(req, ctx, seat, &tx, &mut streams, &mut tasks).await;
                    ctx.conns.touch(seat.id, streams.len(), Instant::now());
                }
                Some(Err(e)) => {
                    // The stream is out of sync after a bad frame: say why and drop this client.
                    let kind = match e {
                        CodecError::Io(_) => None,
                        _ => Some(ErrorKind::Protocol),
                    };
                    if let Some(kind) = kind {
                        tracing::debug!(error = %e, "dropping client after a bad frame");
                        let _ = tx.send(Response::Error { kind, message: e.to_string() }).await;
                    }
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
    let _ = writer.await;
}

fn incompatible(reason: String) -> HelloReply {
    HelloReply::Incompatible {
        protocol: mythos_protocol::PROTOCOL_VERSION,
        build: BUILD.to_string(),
        reason,
    }
}

async fn handle(
    req: Request,
    ctx: &Arc<Context>,
    seat: &Seat,
    tx: &mpsc::Sender<Response>,
    streams: &mut HashMap<u64, Stream>,
    tasks: &mut JoinSet<u64>,
) {
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
                refuse(ErrorKind::ShuttingDown, "mythosd is shutting down")
            } else if seat.reserve {
                refuse(
                    ErrorKind::Internal,
                    &format!(
                        "mythosd is at its limit of {} connections, all of them streaming: this \
                         one may ask for status but not chat (raise [server] max_connections)",
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
                match streams.entry(id) {
                    Entry::Occupied(_) => refuse(
                        ErrorKind::Protocol,
                        "a stream with this id is already running",
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
                            // A bug in one request must not hang its client or touch any other
                            // stream: end this one with an `internal` error and go on.
                            let run = AssertUnwindSafe(router.route(chat, emitter, token));
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
                        return;
                    }
                }
            }
        }
        Request::Cancel { id } => {
            if let Some(s) = streams.get(&id) {
                s.cancel.cancel();
            }
            return;
        }
        Request::Status => Response::Status(ctx.status_report()),
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
                Some(rec) => Response::Why(rec),
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
            Some(state) => Response::Usage(state.usage(days).await),
            None => no_state(),
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
    let _ = tx.send(reply).await;
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
