//! Wake-ups that cost less.
//!
//! [`WakeFlag`]: a waker that notes it was called, for a future polled inside another one's
//! task: the outer future polls the inner one only once the flag says something woke it,
//! instead of at every turn of its own (a poll of a route, or of a cancel token's future, costs
//! hundreds of instructions even when nothing has changed).
//!
//! [`requeue`]: let the tasks already queued run before going on, without the poll of the I/O
//! driver that `tokio::task::yield_now` waits for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Set by its waker; the task registered last is woken then.
pub struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl WakeFlag {
    /// A flag and the waker that sets it. Set to begin with: a future is polled the first
    /// time without being asked, and that poll is what registers it.
    pub fn new() -> (Arc<WakeFlag>, Waker) {
        let flag = Arc::new(WakeFlag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(flag.clone());
        (flag, waker)
    }

    /// Wake `waker` when the flag is next set. Call it before [`WakeFlag::take`], so that a
    /// wake between the two is not lost.
    pub fn register(&self, waker: &Waker) {
        self.task.register(waker);
    }

    /// Set the flag without waking anyone: for the task that looks at it next (say, after
    /// resetting a timer, whose new deadline must be registered by a poll).
    pub fn mark(&self) {
        self.woken.store(true, Ordering::Release);
    }

    /// Whether the flag was set since the last call; clears it.
    pub fn take(&self) -> bool {
        // A load first: the usual answer (no) costs no read-modify-write.
        self.woken.load(Ordering::Acquire) && self.woken.swap(false, Ordering::AcqRel)
    }
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Go to the back of the worker's queue: every task already queued runs once, then the caller
/// goes on.
///
/// The task wakes itself and returns `Pending` once; a task woken while it runs is queued at the
/// back when its poll ends (tokio's rule for a self-wake). `tokio::task::yield_now` instead
/// holds the task until the worker next polls the I/O driver and the timers, which it does only
/// once its queue is empty: an `epoll_wait` and the timer wheel per yield. That is what a wait
/// for the sockets needs; a wait for work already queued (the upstream connection's task, woken
/// to hand over the next chunk of a burst) does not.
pub async fn requeue() {
    let mut queued = false;
    std::future::poll_fn(|cx| {
        if queued {
            Poll::Ready(())
        } else {
            queued = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `requeue` lets every task already queued run before the caller goes on, on the
    /// daemon's runtime layout (one worker).
    #[test]
    fn requeue_lets_the_queued_tasks_run_first() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::spawn(async {
                let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                for _ in 0..8 {
                    let ran = ran.clone();
                    tokio::spawn(async move {
                        ran.fetch_add(1, Ordering::Relaxed);
                    });
                }
                assert_eq!(ran.load(Ordering::Relaxed), 0);
                requeue().await;
                assert_eq!(ran.load(Ordering::Relaxed), 8);
            })
            .await
            .unwrap();
        });
    }

    /// What `requeue` is for: it does not wait for the worker to poll its drivers. A timer that
    /// is due fires only when they are polled, which a few `requeue`s do not bring about (a
    /// worker polls them on its own every 61 polls of a task; this test stays well under) and
    /// `yield_now` does.
    #[test]
    fn requeue_does_not_wait_for_the_drivers() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::spawn(async {
                let fired = Arc::new(AtomicBool::new(false));
                let timer = fired.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    timer.store(true, Ordering::SeqCst);
                });
                // The timer task runs once and sets its timer; then the timer comes due.
                requeue().await;
                std::thread::sleep(std::time::Duration::from_millis(5));
                for _ in 0..5 {
                    requeue().await;
                    assert!(!fired.load(Ordering::SeqCst), "requeue polled the timers");
                }
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                    if fired.load(Ordering::SeqCst) {
                        return;
                    }
                }
                panic!("yield_now never let the due timer fire");
            })
            .await
            .unwrap();
        });
    }

    /// Set to begin with; set again by its waker, which wakes the task registered last.
    #[test]
    fn set_by_its_waker_which_wakes_the_task() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let (flag, waker) = WakeFlag::new();
        assert!(flag.take());
        assert!(!flag.take());
        let count = Arc::new(Count(Default::default()));
        flag.register(&Waker::from(count.clone()));
        waker.wake_by_ref();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(flag.take());
        assert!(!flag.take());
    }
}
