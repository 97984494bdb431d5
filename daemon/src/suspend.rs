//! Time the machine spent suspended (a laptop's lid closed).
//!
//! The router keeps time in `Instant`, which on Linux and macOS stands still while the machine
//! sleeps. A provider paused for an hour (a `429` with a long `Retry-After`, a spent daily
//! quota) just before the lid closed overnight was still paused for most of that hour in the
//! morning, and a breaker's cooldown or a quota's refill likewise lost the night. The daemon
//! reads how long the machine slept, from a clock that counts it beside one that does not, and
//! moves the health book's instants back by as much
//! ([`HealthBook::slept`](crate::router::health::HealthBook::slept)); an attempt that was
//! streaming across the sleep and fails after it is nobody's fault.

use std::time::Duration;

/// Total time suspended since boot, as far as this platform can tell (`None`: on platforms
/// other than Linux and macOS, which this does not read).
pub fn suspended_total() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        // CLOCK_BOOTTIME counts suspended time, CLOCK_MONOTONIC (behind `Instant`) does not.
        let (with, without) = (read(libc::CLOCK_BOOTTIME)?, read(libc::CLOCK_MONOTONIC)?);
        Some(with.saturating_sub(without))
    }
    #[cfg(target_os = "macos")]
    {
        // On macOS CLOCK_MONOTONIC_RAW counts sleep; CLOCK_UPTIME_RAW (behind `Instant`) does
        // not. Both raw: CLOCK_MONOTONIC is slewed by the time service, and its difference
        // from a raw clock drifts into sleeps that never happened.
        let (with, without) = (
            read(libc::CLOCK_MONOTONIC_RAW)?,
            read(libc::CLOCK_UPTIME_RAW)?,
        );
        Some(with.saturating_sub(without))
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        None
    }
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
fn read(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0 && ts.tv_sec >= 0 && (0..1_000_000_000).contains(&ts.tv_nsec))
        .then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Whether the machine slept (noticeably) between two readings of [`suspended_total`].
pub fn slept_between(before: Option<Duration>, after: Option<Duration>) -> bool {
    matches!((before, after), (Some(b), Some(a)) if a >= b + NOTICEABLE)
}

/// Sleeps shorter than this are not worth moving the book for; they add up until they are. The
/// two clocks are read one after the other, so their difference wobbles by microseconds.
const NOTICEABLE: Duration = Duration::from_secs(1);

/// Notices the machine's sleeps, one reading at a time.
#[derive(Debug, Default)]
pub struct SleepWatch {
    /// The suspended total already accounted for.
    seen: Option<Duration>,
}

impl SleepWatch {
    /// A watch that counts sleeps from now on.
    pub fn new() -> Self {
        SleepWatch {
            seen: suspended_total(),
        }
    }

    /// How long the machine slept since the last sleep reported, if that is noticeable.
    pub fn check(&mut self) -> Option<Duration> {
        self.check_with(suspended_total())
    }

    /// [`SleepWatch::check`] with the suspended total read by the caller.
    fn check_with(&mut self, total: Option<Duration>) -> Option<Duration> {
        let total = total?;
        let Some(seen) = self.seen else {
            self.seen = Some(total);
            return None;
        };
        let slept = total.checked_sub(seen)?;
        if slept < NOTICEABLE {
            return None;
        }
        self.seen = Some(total);
        Some(slept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_noticeable_sleep_once() {
        let s = Duration::from_secs;
        let mut w = SleepWatch::default();
        assert_eq!(
            w.check_with(Some(s(100))),
            None,
            "the first reading is the start"
        );
        assert_eq!(w.check_with(Some(s(100))), None);
        assert_eq!(
            w.check_with(Some(s(100) + Duration::from_millis(400))),
            None
        );
        // Small wobbles add up until they are worth a move.
        assert_eq!(
            w.check_with(Some(s(101) + Duration::from_millis(100))),
            Some(Duration::from_millis(1100))
        );
        assert_eq!(
            w.check_with(Some(s(8 * 3600))),
            Some(s(8 * 3600) - s(101) - Duration::from_millis(100))
        );
        assert_eq!(w.check_with(Some(s(8 * 3600))), None);
        // A platform that cannot tell never reports.
        assert_eq!(w.check_with(None), None);
    }

    #[test]
    fn a_sleep_between_two_readings() {
        let s = |n| Some(Duration::from_secs(n));
        assert!(slept_between(s(10), s(20)));
        assert!(!slept_between(s(10), s(10)));
        assert!(!slept_between(None, s(20)));
        assert!(!slept_between(s(10), None));
    }

    #[cfg(any(target_os = "linux", target_os = "macos"))]
    #[test]
    fn this_platform_can_tell() {
        assert!(suspended_total().is_some());
        // Not asleep while the test runs.
        assert_eq!(SleepWatch::new().check(), None);
    }
}
