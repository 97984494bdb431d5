//! How many bytes of requests the daemon holds in memory at once, over both front ends.
//!
//! Each request is capped on its own (a 32 MiB HTTP body, a 16 MiB frame), but nothing bounded
//! their sum: 40 concurrent 31 MB bodies took the daemon to 2.3 GB resident. Every request now
//! holds its size from this budget from before its bytes are read (an HTTP body its declared
//! length, a frame the length in its prefix) until it is answered, through a [`Held`] that gives
//! it back when dropped. A request that does not fit waits up to [`WAIT`] for others to end, then
//! is refused as busy, a 503 the SDKs retry: the daemon's memory stays bounded instead of
//! growing into swap.
//!
//! Claiming the whole length up front, not as bytes arrive, is on purpose: forty bodies read in
//! step, each holding the part it has, would fill the budget together and all wait for one
//! another until every one failed. There is no queue: whoever fits goes, so a large request
//! waiting for room never holds up a small one behind it, and large requests may not fill the
//! last [`RESERVE_DIVISOR`]th of the budget, which is kept for requests up to [`SMALL`] (a chat
//! turn, a `status`) however many large ones there are.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The default budget, `[server] max_request_memory_mib`.
pub const DEFAULT_MIB: usize = 256;

/// How long a request waits for room before it is refused as busy.
pub const WAIT: Duration = Duration::from_secs(5);

/// When a refused client should try again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Requests up to this size may use the reserve.
pub const SMALL: usize = 1 << 20;

/// Large requests leave `1 / RESERVE_DIVISOR` of the budget to small ones.
pub const RESERVE_DIVISOR: usize = 8;

/// Why a request was not given its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Larger than a large request may ever hold: waiting cannot help (413).
    TooLarge {
        /// The most one request may hold, in bytes.
        max: usize,
    },
    /// Other requests hold the budget; it did not free within [`WAIT`] (503).
    Busy {
        /// The budget, in bytes.
        limit: usize,
    },
}

impl Refusal {
    /// One line for the user.
    pub fn message(&self, bytes: usize) -> String {
        match *self {
            Refusal::TooLarge { max } => format!(
                "the request ({} MiB) is larger than mythosd may hold for one request ({} MiB; \
                 raise [server] max_request_memory_mib)",
                bytes.div_ceil(1 << 20),
                max >> 20
            ),
            Refusal::Busy { limit } => format!(
                "mythosd is holding its limit of {} MiB of requests in memory (other large \
                 requests are being read or answered): try again in a few seconds, or raise \
                 [server] max_request_memory_mib",
                limit >> 20
            ),
        }
    }
}

/// The budget, shared by every connection of both front ends.
#[derive(Debug)]
pub struct RequestMemory {
    limit: usize,
    used: Mutex<usize>,
    freed: Notify,
}

/// Bytes held by one request, given back when dropped.
#[derive(Debug)]
#[must_use = "the bytes are given back when this is dropped"]
pub struct Held {
    memory: Arc<RequestMemory>,
    bytes: usize,
}

impl Held {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Hold `more` bytes too, waiting for room until `deadline` (a body of unknown length,
    /// as it arrives).
    pub async fn grow(&mut self, more: usize, deadline: Instant) -> Result<(), Refusal> {
        let mut extra = self.memory.hold_until(more, self.bytes, deadline).await?;
        // Its bytes are this hold's now.
        extra.bytes = 0;
        self.bytes += more;
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.memory.release(self.bytes);
        }
    }
}

/// Whether `bytes` more fit beside `used` in `limit`, for a request that will hold `total`
/// (these bytes included) in all: large requests leave the reserve to small ones.
pub fn fits(used: usize, bytes: usize, total: usize, limit: usize) -> bool {
    let room = if total <= SMALL {
        limit
    } else {
        large_limit(limit)
    };
    used.saturating_add(bytes) <= room
}

/// The most a large request may hold, and the most all of them may hold together.
pub fn large_limit(limit: usize) -> usize {
    limit - limit / RESERVE_DIVISOR
}

impl RequestMemory {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(RequestMemory {
            limit,
            used: Mutex::new(0),
            freed: Notify::new(),
        })
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hold `bytes` now, or say why not.
    pub fn try_hold(self: &Arc<Self>, bytes: usize) -> Result<Held, Refusal> {
        self.check(bytes, bytes)?;
        self.take(bytes, bytes)
            .ok_or(Refusal::Busy { limit: self.limit })
    }

    /// Hold `bytes`, waiting up to [`WAIT`] for room.
    pub async fn hold(self: &Arc<Self>, bytes: usize) -> Result<Held, Refusal> {
        self.hold_until(bytes, 0, Instant::now() + WAIT).await
    }

    /// Hold `bytes` for a request that holds `already` besides, waiting until `deadline`.
    async fn hold_until(
        self: &Arc<Self>,
        bytes: usize,
        already: usize,
        deadline: Instant,
    ) -> Result<Held, Refusal> {
        let total = already.saturating_add(bytes);
        self.check(bytes, total)?;
        loop {
            // Registered before looking, so a release between the look and the wait wakes it.
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            if let Some(held) = self.take(bytes, total) {
                return Ok(held);
            }
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Refusal::Busy { limit: self.limit });
                }
            }
        }
    }

    /// Refuse at once what could never fit.
    fn check(&self, bytes: usize, total: usize) -> Result<(), Refusal> {
        if (total > SMALL && total > large_limit(self.limit)) || bytes > self.limit {
            return Err(Refusal::TooLarge {
                max: large_limit(self.limit),
            });
        }
        Ok(())
    }

    fn take(self: &Arc<Self>, bytes: usize, total: usize) -> Option<Held> {
        let mut used = self.lock();
        if !fits(*used, bytes, total, self.limit) {
            return None;
        }
        *used += bytes;
        Some(Held {
            memory: self.clone(),
            bytes,
        })
    }

    fn release(&self, bytes: usize) {
        {
            let mut used = self.lock();
            *used = used.saturating_sub(bytes);
        }
        self.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// Large requests stop at seven eighths; the last eighth is for small ones.
    #[test]
    fn large_requests_leave_the_reserve_to_small_ones() {
        let limit = 64 * MIB;
        assert_eq!(large_limit(limit), 56 * MIB);
        for (used, bytes, total, fits_) in [
            (0, 56 * MIB, 56 * MIB, true),
            (0, 56 * MIB + 1, 56 * MIB + 1, false),
            (50 * MIB, 6 * MIB, 6 * MIB, true),
            (50 * MIB, 7 * MIB, 7 * MIB, false),
            // Small ones may use the reserve, up to the whole budget.
            (56 * MIB, MIB, MIB, true),
            (63 * MIB, MIB, MIB, true),
            (63 * MIB + 1, MIB, MIB, false),
            // A body of unknown length is small until it grows past `SMALL`.
            (56 * MIB, 1024, MIB + 1024, false),
        ] {
            assert_eq!(
                fits(used, bytes, total, limit),
                fits_,
                "{used} + {bytes} of {total}"
            );
        }
    }

    /// Held bytes count until they are dropped; a request that cannot fit is refused at once,
    /// and one that does not fit now is refused as busy after `WAIT`, not before.
    #[tokio::test(start_paused = true)]
    async fn bytes_are_held_until_dropped_and_a_request_waits_then_is_refused() {
        let m = RequestMemory::new(16 * MIB);
        let a = m.hold(7 * MIB).await.unwrap();
        let b = m.hold(7 * MIB).await.unwrap();
        assert_eq!(m.used(), 14 * MIB);
        assert_eq!(
            m.try_hold(15 * MIB).unwrap_err(),
            Refusal::TooLarge { max: 14 * MIB }
        );
        let t0 = Instant::now();
        assert_eq!(
            m.hold(7 * MIB).await.unwrap_err(),
            Refusal::Busy { limit: 16 * MIB }
        );
        assert_eq!(t0.elapsed(), WAIT);
        // A small one still gets in beside them.
        let small = m.try_hold(64 * 1024).unwrap();
        drop((a, small));
        assert_eq!(m.used(), 7 * MIB);
        drop(b);
        assert_eq!(m.used(), 0);
    }

    /// A request waiting for room goes as soon as another gives its bytes back.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_request_goes_when_room_frees() {
        let m = RequestMemory::new(16 * MIB);
        let a = m.hold(10 * MIB).await.unwrap();
        let waiting = tokio::spawn({
            let m = m.clone();
            async move {
                let t0 = Instant::now();
                let held = m.hold(10 * MIB).await;
                (held.map(|h| h.bytes()), t0.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(a);
        let (held, waited) = waiting.await.unwrap();
        assert_eq!(held, Ok(10 * MIB));
        assert_eq!(waited, Duration::from_secs(1));
        assert_eq!(m.used(), 0, "given back when the waiter's hold dropped");
    }

    /// A large request waiting for room does not hold up small ones behind it: there is no
    /// queue to wait in, and they use the reserve.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_large_request_does_not_starve_small_ones() {
        let m = RequestMemory::new(16 * MIB);
        let _a = m.hold(12 * MIB).await.unwrap();
        let large = tokio::spawn({
            let m = m.clone();
            async move { m.hold(10 * MIB).await.map(|h| h.bytes()) }
        });
        tokio::task::yield_now().await;
        let small: Vec<Held> = (0..3).map(|_| m.try_hold(MIB).unwrap()).collect();
        assert_eq!(m.used(), 15 * MIB);
        drop(small);
        assert_eq!(large.await.unwrap(), Err(Refusal::Busy { limit: 16 * MIB }));
    }

    /// A body of unknown length grows its hold as it arrives, within the same limits.
    #[tokio::test(start_paused = true)]
    async fn a_hold_grows() {
        let m = RequestMemory::new(16 * MIB);
        let mut h = m.try_hold(512 * 1024).unwrap();
        let deadline = Instant::now() + WAIT;
        h.grow(MIB, deadline).await.unwrap();
        assert_eq!((h.bytes(), m.used()), (MIB + 512 * 1024, MIB + 512 * 1024));
        assert_eq!(
            h.grow(13 * MIB, deadline).await.unwrap_err(),
            Refusal::TooLarge { max: 14 * MIB }
        );
        drop(h);
        assert_eq!(m.used(), 0);
    }
}
