//! How many clients the daemon serves at once, and who gives way when there are too many.
//!
//! Every connection holds a file descriptor, and a leaking editor plugin or a hostile local
//! process can open thousands and go quiet. The table caps them: at the cap, a new connection
//! pushes out the connection that has been idle longest (no stream running; its client, if it
//! comes back, reconnects), so the people actually using mythos are never locked out. When every
//! connection is busy streaming, a small reserve still lets a client ask for `status`, `why` or
//! `shutdown`, but not start a chat; beyond that, a connection is closed at once.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Connections beyond the cap that may still ask for status.
pub const RESERVE: usize = 16;

struct Entry {
    last_active: Instant,
    streams: usize,
    reserve: bool,
    close: CancellationToken,
}

/// A connection's place in the table.
#[derive(Debug, Clone)]
pub struct Seat {
    /// Its id in the table.
    pub id: u64,
    /// Cancelled when the connection must close to make room.
    pub close: CancellationToken,
    /// Over the cap: may not start chats.
    pub reserve: bool,
}

/// The live connections.
pub struct ConnTable {
    max: usize,
    inner: Mutex<(u64, HashMap<u64, Entry>)>,
}

impl ConnTable {
    /// A table of at most `max` ordinary connections (plus [`RESERVE`]).
    pub fn new(max: usize) -> Self {
        ConnTable {
            max: max.max(1),
            inner: Mutex::new((0, HashMap::new())),
        }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections now.
    pub fn len(&self) -> usize {
        self.lock().1.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<u64, Entry>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A seat for a new connection, pushing out the longest-idle one at the cap; `None` when
    /// even the reserve is full.
    pub fn admit(&self, now: Instant) -> Option<Seat> {
        let mut g = self.lock();
        let (next, map) = &mut *g;
        let ordinary = map.values().filter(|e| !e.reserve).count();
        let mut reserve = false;
        if ordinary >= self.max {
            let idle = map
                .iter()
                .filter(|(_, e)| !e.reserve && e.streams == 0)
                .min_by_key(|(_, e)| e.last_active)
                .map(|(id, _)| *id);
            match idle {
                Some(id) => {
                    if let Some(e) = map.remove(&id) {
                        e.close.cancel();
                    }
                    // One line per eviction would let a client that opens connections in a
                    // loop flood the log: this is the debug log's business.
                    tracing::debug!(
                        max = self.max,
                        "connection limit: closed the longest-idle one"
                    );
                }
                None if map.len() < self.max + RESERVE => reserve = true,
                None => return None,
            }
        }
        *next += 1;
        let close = CancellationToken::new();
        map.insert(
            *next,
            Entry {
                last_active: now,
                streams: 0,
                reserve,
                close: close.clone(),
            },
        );
        Some(Seat {
            id: *next,
            close,
            reserve,
        })
    }

    /// The connection did something; `streams` are running on it now.
    pub fn touch(&self, id: u64, streams: usize, now: Instant) {
        if let Some(e) = self.lock().1.get_mut(&id) {
            e.last_active = now;
            e.streams = streams;
        }
    }

    /// The connection is gone.
    pub fn leave(&self, id: u64) {
        self.lock().1.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_longest_idle_gives_way_then_the_reserve_then_none() {
        let t = ConnTable::new(3);
        let t0 = Instant::now();
        let seats: Vec<Seat> = (0..3)
            .map(|i| t.admit(t0 + Duration::from_secs(i)).unwrap())
            .collect();
        // The second one is busy; the first is the longest idle.
        t.touch(seats[1].id, 1, t0 + Duration::from_secs(1));
        let s = t.admit(t0 + Duration::from_secs(10)).unwrap();
        assert!(!s.reserve);
        assert!(seats[0].close.is_cancelled());
        assert!(!seats[1].close.is_cancelled());
        // All busy now: the reserve, then nothing.
        for seat in [&seats[2], &s] {
            t.touch(seat.id, 1, t0 + Duration::from_secs(11));
        }
        for _ in 0..RESERVE {
            assert!(t.admit(t0 + Duration::from_secs(12)).unwrap().reserve);
        }
        assert!(t.admit(t0 + Duration::from_secs(12)).is_none());
        t.leave(s.id);
        assert!(!t.admit(t0 + Duration::from_secs(13)).unwrap().reserve);
    }
}
