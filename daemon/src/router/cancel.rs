//! The client's cancel token, watched for the length of a stream at the cost of an atomic load
//! per chunk.
//!
//! A relay loop must notice a cancel between chunks, also while the upstream is always ready.
//! Asking the token (`is_cancelled`) takes its lock, and polling its `cancelled()` future takes
//! the lock of its `Notify` to refresh the waker: together ~200 instructions per relayed chunk,
//! for an event that comes once in a stream's life if at all. Here the future is polled with a
//! [`WakeFlag`]'s waker, and polled again only once that flag says it was woken.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::wake::WakeFlag;

/// A cancel token, watched.
pub struct CancelWatch<'a> {
    wait: Pin<Box<WaitForCancellationFuture<'a>>>,
    flag: Arc<WakeFlag>,
    waker: Waker,
    fired: bool,
}

impl<'a> CancelWatch<'a> {
    /// Watch `token`.
    pub fn new(token: &'a CancellationToken) -> Self {
        let (flag, waker) = WakeFlag::new();
        CancelWatch {
            wait: Box::pin(token.cancelled()),
            flag,
            waker,
            fired: false,
        }
    }

    /// Whether the token has been cancelled (as far as its wake-up has arrived: a cancel made
    /// on another thread a moment ago may be seen at the next look).
    pub fn is_cancelled(&mut self) -> bool {
        if !self.fired && self.flag.take() {
            let mut cx = Context::from_waker(&self.waker);
            self.fired = self.wait.as_mut().poll(&mut cx).is_ready();
        }
        self.fired
    }

    /// Ready once the token is cancelled; the task is woken then.
    pub fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired {
            return Poll::Ready(());
        }
        self.flag.register(cx.waker());
        if self.is_cancelled() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cancel made before or after the watch starts is seen, and a task waiting on the watch
    /// is woken by it.
    #[tokio::test]
    async fn sees_a_cancel_and_wakes_the_task() {
        let before = CancellationToken::new();
        before.cancel();
        assert!(CancelWatch::new(&before).is_cancelled());

        let token = CancellationToken::new();
        let mut watch = CancelWatch::new(&token);
        for _ in 0..3 {
            assert!(!watch.is_cancelled());
        }
        let canceller = token.clone();
        let task = tokio::spawn(async move {
            tokio::task::yield_now().await;
            canceller.cancel();
        });
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| watch.poll_cancelled(cx)),
        )
        .await
        .expect("woken by the cancel");
        assert!(watch.is_cancelled());
        task.await.unwrap();

        // A child token, cancelled through its parent (the daemon's hard stop).
        let parent = CancellationToken::new();
        let child = parent.child_token();
        let mut watch = CancelWatch::new(&child);
        assert!(!watch.is_cancelled());
        parent.cancel();
        assert!(watch.is_cancelled());
    }
}
