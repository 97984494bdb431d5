//! Instants as Unix milliseconds and back. The router keeps time in `tokio::time::Instant` (a
//! paused clock in tests, immune to wall-clock jumps); the wire and the state database speak Unix
//! milliseconds. Both conversions go through one pair of readings taken together.

use std::time::Duration;

use tokio::time::Instant;

/// `t` as Unix milliseconds, given that `now` is `now_unix_ms` (either side of `now`).
pub fn to_unix_ms(t: Instant, now: Instant, now_unix_ms: u64) -> u64 {
    if t >= now {
        now_unix_ms.saturating_add((t - now).as_millis() as u64)
    } else {
        now_unix_ms.saturating_sub((now - t).as_millis() as u64)
    }
}

/// How far ahead a restored deadline may lie: a corrupt or hostile value must not overflow
/// `Instant` (a panic at start).
const MAX_AHEAD_MS: u64 = 100 * 365 * 86_400_000;

/// The instant of `ms` Unix milliseconds, given that `now` is `now_unix_ms`; a time before the
/// monotonic clock's start becomes `now`, one more than a century ahead a century ahead.
pub fn from_unix_ms(ms: u64, now: Instant, now_unix_ms: u64) -> Instant {
    if ms >= now_unix_ms {
        now + Duration::from_millis((ms - now_unix_ms).min(MAX_AHEAD_MS))
    } else {
        now.checked_sub(Duration::from_millis(now_unix_ms - ms))
            .unwrap_or(now)
    }
}

/// `t` moved `gap` earlier, because the machine slept for `gap` (see [`crate::suspend`]). An
/// instant that cannot be moved so far back (before the monotonic clock's start) becomes the
/// earlier of `t` and `now`: a deadline is then over, a timestamp as old as it can be.
pub fn earlier(t: Instant, gap: Duration, now: Instant) -> Instant {
    t.checked_sub(gap).unwrap_or(t.min(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn round_trips_either_side_of_now() {
        let now = Instant::now() + Duration::from_secs(60);
        let unix = 1_700_000_000_000;
        for t in [
            now,
            now + Duration::from_millis(1500),
            now - Duration::from_secs(30),
        ] {
            assert_eq!(from_unix_ms(to_unix_ms(t, now, unix), now, unix), t);
        }
        assert_eq!(to_unix_ms(now - Duration::from_secs(2), now, 1000), 0);
        // A corrupt saved deadline neither panics nor wraps.
        assert!(from_unix_ms(u64::MAX, now, unix) > now + Duration::from_secs(86_400 * 365));
        assert_eq!(
            to_unix_ms(from_unix_ms(u64::MAX, now, unix), now, u64::MAX - 5),
            u64::MAX
        );
    }
}
