//! The front end's listener: TCP_NODELAY on every connection, and a cap on connections so that
//! agents (or a runaway script) cannot take every file descriptor from the socket clients and
//! the upstream connections.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A TCP listener that holds one permit per open connection.
pub struct CappedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    cap: usize,
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
            permits: Arc::new(Semaphore::new(cap.max(1))),
            cap: cap.max(1),
            refused: 0,
            failed: 0,
        }
    }
}

/// A connection and its permit, given back when the connection closes.
pub struct CappedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionRefused
                    ) {
                        // Out of descriptors, most likely: give the open connections a moment
                        // to finish rather than spin; said once, not ten times a second.
                        if self.failed == 0 {
                            tracing::warn!(error = %e, "HTTP accept failed; retrying every 100 ms");
                        }
                        self.failed += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            };
            if self.failed > 0 {
                tracing::info!(errors = self.failed, "HTTP connections are accepted again");
                self.failed = 0;
            }
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
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
                    return (
                        CappedStream {
                            stream,
                            _permit: permit,
                        },
                        addr,
                    );
                }
                // At the cap: close at once. The SDKs retry a reset connection with backoff;
                // a connection left waiting in the backlog would just hang.
                Err(_) => {
                    if self.refused == 0 {
                        // Said at once, then counted until the burst is over.
                        tracing::warn!(
                            cap = self.cap,
                            "HTTP connection cap reached: refusing new connections"
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
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
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

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_and_a_freed_seat_is_reused() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut l = CappedListener::new(tcp, 1);
        let c1 = TcpStream::connect(addr).await.unwrap();
        let (s1, _) = l.accept().await;
        let mut c2 = TcpStream::connect(addr).await.unwrap();
        // c2 is over the cap: accepted and closed at once (the accept below goes on waiting).
        let accepted = tokio::spawn(async move {
            let (s3, _) = l.accept().await;
            s3
        });
        let mut buf = [0u8; 1];
        assert_eq!(c2.read(&mut buf).await.unwrap_or(0), 0, "c2 was closed");
        // A freed seat is taken by the next connection.
        drop(s1);
        drop(c1);
        let c3 = TcpStream::connect(addr).await.unwrap();
        let s3 = accepted.await.unwrap();
        assert_eq!(s3.stream.peer_addr().unwrap(), c3.local_addr().unwrap());
    }
}
