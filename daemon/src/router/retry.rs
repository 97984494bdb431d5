//! Backoff between retries on the same provider.

use std::time::Duration;

/// The wait before retry number `n` (0-based): the configured step with ±`jitter` spread, so
/// many sessions that failed together do not come back together. `None` when retries are spent.
pub fn backoff(steps: &[Duration], jitter: f64, n: usize, unit_random: f64) -> Option<Duration> {
    let base = *steps.get(n)?;
    let factor = 1.0 + jitter * (2.0 * unit_random.clamp(0.0, 1.0) - 1.0);
    Some(base.mul_f64(factor.max(0.0)))
}

/// Total wait still available in the retry budget after `n` retries, without jitter. A provider
/// that asks for a longer pause than this is not worth waiting for: fail over at once.
pub fn remaining_budget(steps: &[Duration], n: usize) -> Duration {
    steps.iter().skip(n).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_with_jitter_bounds() {
        let steps = [
            Duration::from_millis(100),
            Duration::from_millis(500),
            Duration::from_millis(1000),
        ];
        assert_eq!(
            backoff(&steps, 0.2, 0, 0.5),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            backoff(&steps, 0.2, 1, 0.0),
            Some(Duration::from_millis(400))
        );
        assert_eq!(
            backoff(&steps, 0.2, 2, 1.0),
            Some(Duration::from_millis(1200))
        );
        assert_eq!(backoff(&steps, 0.2, 3, 0.5), None);
        assert_eq!(remaining_budget(&steps, 0), Duration::from_millis(1600));
        assert_eq!(remaining_budget(&steps, 2), Duration::from_millis(1000));
        assert_eq!(remaining_budget(&steps, 3), Duration::ZERO);
    }
}
