//! The front end's listener and its connections' seats.
//!
//! TCP_NODELAY on every connection, and a cap on connections so that agents (or a runaway
//! script) cannot take every file descriptor from the socket clients and the upstream
//! connections. The cap is the socket server's [`ConnTable`]: at the cap, a new connection
//! displaces one doing nothing (first the one that has waited longest without sending a whole
//! request head, then the one idle longest between requests), never one with a request in
//! progress. So a client that sends its request promptly always gets in, however many
//! connections others hold open and silent: a few hundred slowloris connections (headers one
//! byte a second, the token never shown) used to fill the cap and shut everyone out.
//!
//! The stream also gives up on a client that takes no bytes for [`CLIENT_READ_TIMEOUT`] while
//! a response waits to be written (see [`CappedStream`]), as the socket server does.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::HttpBody;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::router::CLIENT_READ_TIMEOUT;
use crate::server::limits::{ConnTable, Seat};

/// A TCP listener that gives every connection a seat in a table of at most `cap`.
pub struct CappedListener {
    inner: TcpListener,
    table: Arc<ConnTable>,
    /// Refusals since the last log line (one line per burst, not one per connection).
    refused: u64,
    /// Failed accepts since the last success (logged once per run of failures).
    failed: u64,
}

impl CappedListener {
    /// At most `cap` connections at once.
    pub fn new(inner: TcpListener, cap: usize) -> Self {
        CappedListener {
            inner,
            table: Arc::new(ConnTable::without_reserve(cap)),
            refused: 0,
            failed: 0,
        }
    }
}

/// Set when a connection gives up on a client that read nothing for [`CLIENT_READ_TIMEOUT`]:
/// shared with the request's [`crate::router::Emitter`], so the route, cancelled when the
/// connection closes, records that the client stopped reading rather than that it cancelled.
#[derive(Debug, Clone, Default)]
pub struct Stuck(pub Arc<AtomicBool>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Stuck {
    type Rejection = std::convert::Infallible;

    /// The connection's flag; a fresh one for a request served without a listener (tests).
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Stuck>().cloned().unwrap_or_default())
    }
}

/// A connection's place in the table, given back when the last holder (the stream, the
/// service, the task serving it) lets go.
pub struct HttpSeat {
    table: Arc<ConnTable>,
    seat: Seat,
    /// A request is in progress: its head was read and its response is not all written.
    busy: AtomicBool,
    stuck: Stuck,
}

impl HttpSeat {
    /// Cancelled when the table displaced this connection to make room for a new one.
    pub fn displaced(&self) -> &CancellationToken {
        &self.seat.close
    }

    /// Whether a request is in progress: a connection displaced just as its request head
    /// arrived finishes that request before it closes.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// A request head has arrived: the connection may not be displaced until the guard
    /// (held by the response body) is dropped.
    fn begin_request(self: &Arc<Self>) -> InRequest {
        self.busy.store(true, Ordering::Release);
        self.table.touch(self.seat.id, 1, Instant::now());
        InRequest(self.clone())
    }
}

impl Drop for HttpSeat {
    fn drop(&mut self) {
        self.table.leave(self.seat.id);
    }
}

/// A request in progress on its connection; dropped once its response is written (or given
/// up), leaving the connection idle between requests.
struct InRequest(Arc<HttpSeat>);

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
        self.0.table.touch(self.0.seat.id, 0, Instant::now());
    }
}

/// A connection with its seat; a write the client has taken no bytes of for
/// [`CLIENT_READ_TIMEOUT`] fails, which ends the connection.
///
/// The HTTP relay runs its route inside the connection's task and hyper polls a response body
/// only while it has room to buffer it, so a client that stops reading freezes the route where
/// it is, provider seat and quota held: no timer inside the route could fire. The stall is
/// seen here instead, where the bytes wait: the failed write makes hyper drop the response,
/// whose route is then cancelled and hands back what it holds (the socket server's
/// `Emitter` gives up after the same time, on its channel).
pub struct CappedStream {
    stream: TcpStream,
    seat: Arc<HttpSeat>,
    /// Runs while a write waits; made on the first stall and reused.
    stall: Option<Pin<Box<Sleep>>>,
    /// The last write waited (the timer is running).
    waiting: bool,
}

impl CappedStream {
    /// The connection's seat.
    pub fn seat(&self) -> &Arc<HttpSeat> {
        &self.seat
    }

    /// What a write that found no room returns: still waiting, or an error once the client has
    /// taken nothing for [`CLIENT_READ_TIMEOUT`]. Only the first wait of a stall reads the
    /// clock: a streaming answer to a client that keeps up costs nothing.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        if !self.waiting {
            self.waiting = true;
            let deadline = Instant::now() + CLIENT_READ_TIMEOUT;
            match &mut self.stall {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let Some(timer) = &mut self.stall else {
            return Poll::Pending;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.seat.stuck.0.store(true, Ordering::Release);
        tracing::debug!("dropping an HTTP client that has read nothing for a while");
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the client read nothing for {} s",
                CLIENT_READ_TIMEOUT.as_secs()
            ),
        )))
    }

    fn written<T>(
        &mut self,
        r: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.waiting = false;
                ready
            }
        }
    }
}

/// Whether an accept failed for want of file descriptors: worth waiting out, not a reason to
/// stop listening.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    !matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
    )
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    if out_of_descriptors(&e) {
                        // Out of descriptors, most likely: an idle connection of ours gives
                        // way (its task closes it at once), so one waiting in the backlog can
                        // be taken; and a moment's wait rather than a spin, said once, not ten
                        // times a second. The listener itself stays open.
                        if self.failed == 0 {
                            tracing::warn!(error = %e, "HTTP accept failed; retrying every 100 ms");
                        }
                        self.failed += 1;
                        self.table.displace_one();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            };
            if self.failed > 0 {
                tracing::info!(errors = self.failed, "HTTP connections are accepted again");
                self.failed = 0;
            }
            match self.table.admit(Instant::now()) {
                Some(seat) => {
                    if self.refused > 0 {
                        tracing::warn!(
                            refused = self.refused,
                            "HTTP connections were refused at the connection cap"
                        );
                        self.refused = 0;
                    }
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    let seat = Arc::new(HttpSeat {
                        table: self.table.clone(),
                        seat,
                        busy: AtomicBool::new(false),
                        stuck: Stuck::default(),
                    });
                    return (
                        CappedStream {
                            stream,
                            seat,
                            stall: None,
                            waiting: false,
                        },
                        addr,
                    );
                }
                // At the cap with a request in progress on every connection: close at once.
                // The SDKs retry a reset connection with backoff; a connection left waiting in
                // the backlog would just hang.
                None => {
                    if self.refused == 0 {
                        // Said at once, then counted until the burst is over.
                        tracing::warn!(
                            cap = self.table.max(),
                            "HTTP connection cap reached, every connection busy: refusing new connections"
                        );
                    }
                    self.refused += 1;
                    drop(stream);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The front end's service on one connection: marks the connection busy from a request's head
/// until its response is written, and hands the request its connection's [`Stuck`] flag.
#[derive(Clone)]
pub struct Seated<S> {
    inner: S,
    seat: Arc<HttpSeat>,
}

impl<S> Seated<S> {
    /// `inner` serving the connection that holds `seat`.
    pub fn new(inner: S, seat: Arc<HttpSeat>) -> Self {
        Seated { inner, seat }
    }
}

impl<S, B> hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Seated<S>
where
    S: hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = hyper::Response<B>,
    >,
    S::Future: Send + 'static,
    B: HttpBody + Unpin,
{
    type Response = hyper::Response<SeatedBody<B>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn call(&self, mut req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let request = self.seat.begin_request();
        req.extensions_mut().insert(self.seat.stuck.clone());
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| SeatedBody {
                inner: body,
                _request: request,
            }))
        })
    }
}

/// A response body that keeps its connection busy until hyper has taken all of it.
pub struct SeatedBody<B> {
    inner: B,
    _request: InRequest,
}

impl<B: HttpBody + Unpin> HttpBody for SeatedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.written(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.written(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;
    use tokio::io::AsyncReadExt;

    /// At the cap with a request in progress on every connection, a new connection is closed
    /// at once (the SDKs retry); a seat freed by a connection that closed is taken by the next.
    #[tokio::test]
    async fn connections_over_a_busy_cap_are_closed_and_a_freed_seat_is_reused() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut l = CappedListener::new(tcp, 1);
        let c1 = TcpStream::connect(addr).await.unwrap();
        let (s1, _) = l.accept().await;
        let request = s1.seat().begin_request();
        let mut c2 = TcpStream::connect(addr).await.unwrap();
        // c2 is over the cap: accepted and closed at once (the accept below goes on waiting).
        let accepted = tokio::spawn(async move {
            let (s3, _) = l.accept().await;
            s3
        });
        let mut buf = [0u8; 1];
        assert_eq!(c2.read(&mut buf).await.unwrap_or(0), 0, "c2 was closed");
        assert!(!s1.seat().displaced().is_cancelled());
        // A freed seat is taken by the next connection.
        drop(request);
        drop(s1);
        drop(c1);
        let c3 = TcpStream::connect(addr).await.unwrap();
        let s3 = accepted.await.unwrap();
        assert_eq!(s3.stream.peer_addr().unwrap(), c3.local_addr().unwrap());
    }
}
