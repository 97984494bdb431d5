//! How many clients the daemon serves at once, and who gives way when there are too many.
//!
//! Every connection holds a file descriptor, and a leaking editor plugin or a hostile local
//! process can open thousands and go quiet. The table caps them: at the cap, a new connection
//! pushes out one that is doing nothing (no stream or request running; its client, if it comes
//! back, reconnects), so the people actually using mythos are never locked out. The first to go
//! is the one that has waited longest without making any request (a client that connects and
//! trickles its hello or its HTTP headers, as a slowloris does, has had its chance), then the one
//! idle longest since its last request. When every connection is busy, a small reserve still
//! lets a socket client ask for `status`, `why` or `shutdown`, but not start a chat; beyond
//! that, a connection is closed at once.
//!
//! The socket server and the HTTP front end each keep a table (the front end's has no reserve:
//! its `/health` needs no seat of its own, an idle connection gives way for it).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Connections beyond the cap that may still ask for status.
pub const RESERVE: usize = 16;

struct Entry {
    last_active: Instant,
    /// It has made a request: until then it gives way before any that has.
    served: bool,
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
    /// Seats beyond `max` for connections that may not start chats.
    reserve: usize,
    inner: Mutex<(u64, HashMap<u64, Entry>)>,
}

impl ConnTable {
    /// A table of at most `max` ordinary connections (plus [`RESERVE`]).
    pub fn new(max: usize) -> Self {
        ConnTable {
            max: max.max(1),
            reserve: RESERVE,
            inner: Mutex::new((0, HashMap::new())),
        }
    }

    /// A table of at most `max` connections and no reserve: at the cap with every connection
    /// busy, a new one is refused.
    pub fn without_reserve(max: usize) -> Self {
        ConnTable {
            reserve: 0,
            ..ConnTable::new(max)
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

    /// A seat for a new connection, pushing out an idle one at the cap (one that never made a
    /// request first, the longest waiting; else the longest idle); `None` when every connection
    /// is busy and the reserve is full.
    pub fn admit(&self, now: Instant) -> Option<Seat> {
        let mut g = self.lock();
        let (next, map) = &mut *g;
        let ordinary = map.values().filter(|e| !e.reserve).count();
        let mut reserve = false;
        if ordinary >= self.max && !Self::displace(map) {
            if map.len() < self.max + self.reserve {
                reserve = true;
            } else {
                return None;
            }
        }
        *next += 1;
        let close = CancellationToken::new();
        map.insert(
            *next,
            Entry {
                last_active: now,
                served: false,
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

    /// Close the connection that [`ConnTable::admit`] would push out at the cap, if there is
    /// one: when the process is out of file descriptors, a connection waiting to be accepted
    /// gets in only if one that is doing nothing gives way first.
    pub fn displace_one(&self) -> bool {
        Self::displace(&mut self.lock().1)
    }

    /// Push out the idle connection that goes first; false when none is idle.
    fn displace(map: &mut HashMap<u64, Entry>) -> bool {
        let idle = map
            .iter()
            .filter(|(_, e)| !e.reserve && e.streams == 0)
            .min_by_key(|(_, e)| (e.served, e.last_active))
            .map(|(id, _)| *id);
        let Some(e) = idle.and_then(|id| map.remove(&id)) else {
            return false;
        };
        e.close.cancel();
        // One line per eviction would let a client that opens connections in a loop flood the
        // log: this is the debug log's business.
        tracing::debug!("connection limit: closed an idle connection to make room");
        true
    }

    /// The connection made a request (or one ended); `streams` are running on it now.
    pub fn touch(&self, id: u64, streams: usize, now: Instant) {
        if let Some(e) = self.lock().1.get_mut(&id) {
            e.last_active = now;
            e.served = true;
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

    /// A connection that has never made a request (a slowloris trickling its headers) gives way
    /// before one that has and is idle between requests, however long that one has been idle;
    /// and without a reserve, a table whose connections are all busy refuses a new one.
    #[tokio::test(start_paused = true)]
    async fn one_that_never_asked_gives_way_first() {
        let t = ConnTable::without_reserve(2);
        let t0 = Instant::now();
        let served = t.admit(t0).unwrap();
        t.touch(served.id, 0, t0 + Duration::from_secs(1));
        let silent = t.admit(t0 + Duration::from_secs(5)).unwrap();
        let new = t.admit(t0 + Duration::from_secs(10)).unwrap();
        assert!(silent.close.is_cancelled());
        assert!(!served.close.is_cancelled());
        // With the newcomer busy, the served one, the only idle one, goes; then nothing can.
        t.touch(new.id, 1, t0 + Duration::from_secs(10));
        let newer = t.admit(t0 + Duration::from_secs(11)).unwrap();
        assert!(served.close.is_cancelled());
        assert!(!new.close.is_cancelled());
        t.touch(newer.id, 1, t0 + Duration::from_secs(12));
        assert!(t.admit(t0 + Duration::from_secs(13)).is_none());
        assert!(!t.displace_one(), "a busy connection never gives way");
        t.touch(newer.id, 0, t0 + Duration::from_secs(14));
        assert!(t.displace_one());
        assert!(newer.close.is_cancelled());
    }
}
