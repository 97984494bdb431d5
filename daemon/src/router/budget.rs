//! A retry budget per provider, after tower's and Finagle's: retries may add at most a fixed
//! share to the requests a provider receives, so a fault storm does not multiply the load on a
//! provider that is already failing.
//!
//! Every first attempt of a request at the provider deposits; every further attempt of the same
//! request at it (a retry, or a return to it in a later round) withdraws. Over a sliding window
//! of ten one-second slots, withdrawals may reach `min_per_window` plus `ratio` times the
//! deposits. The floor keeps retries available to a single quiet session.

use std::time::Duration;

use tokio::time::Instant;

const SLOTS: usize = 10;
const SLOT: Duration = Duration::from_secs(1);

/// The budget of one provider.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    min_per_window: u32,
    /// (deposits, withdrawals) per slot; `slots[head]` is the current second.
    slots: [(u32, u32); SLOTS],
    head: usize,
    head_start: Option<Instant>,
}

impl RetryBudget {
    /// Retries may be `ratio` of requests, plus `min_per_window` per ten seconds.
    pub fn new(ratio: f64, min_per_window: u32) -> Self {
        RetryBudget {
            ratio,
            min_per_window,
            slots: [(0, 0); SLOTS],
            head: 0,
            head_start: None,
        }
    }

    /// The machine slept for `gap`: the window moved on by as much.
    pub fn slept(&mut self, gap: Duration, now: Instant) {
        self.head_start = self
            .head_start
            .map(|t| super::wallclock::earlier(t, gap, now));
    }

    fn advance(&mut self, now: Instant) {
        let start = *self.head_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        let steps = (elapsed.as_nanos() / SLOT.as_nanos()) as u64;
        if steps == 0 {
            return;
        }
        for _ in 0..steps.min(SLOTS as u64) {
            self.head = (self.head + 1) % SLOTS;
            self.slots[self.head] = (0, 0);
        }
        self.head_start = Some(start + SLOT * steps.min(u32::MAX as u64) as u32);
    }

    fn totals(&self) -> (u32, u32) {
        self.slots
            .iter()
            .fold((0, 0), |(d, w), (sd, sw)| (d + sd, w + sw))
    }

    /// A request's first attempt at this provider.
    pub fn deposit(&mut self, now: Instant) {
        self.advance(now);
        self.slots[self.head].0 += 1;
    }

    /// Whether a retry would fit now.
    pub fn allows(&mut self, now: Instant) -> bool {
        self.advance(now);
        let (deposits, withdrawals) = self.totals();
        f64::from(withdrawals) < f64::from(self.min_per_window) + self.ratio * f64::from(deposits)
    }

    /// When a retry will fit again as the window slides on (its oldest seconds forgotten),
    /// with no new deposits or withdrawals: `now` if it fits now, `None` if it never will
    /// (a budget with no floor and nothing deposited).
    pub fn allows_at(&mut self, now: Instant) -> Option<Instant> {
        self.advance(now);
        let start = self.head_start.unwrap_or(now);
        let fits = |(d, w): (u32, u32)| {
            f64::from(w) < f64::from(self.min_per_window) + self.ratio * f64::from(d)
        };
        let (mut d, mut w) = self.totals();
        if fits((d, w)) {
            return Some(now);
        }
        // The k-th oldest slot leaves the window k seconds after the current slot began.
        for k in 1..=SLOTS {
            let (sd, sw) = self.slots[(self.head + k) % SLOTS];
            d -= sd;
            w -= sw;
            if fits((d, w)) {
                return Some(start + SLOT * k as u32);
            }
        }
        None
    }

    /// Take a retry from the budget; false (and nothing taken) when it is spent.
    pub fn withdraw(&mut self, now: Instant) -> bool {
        if !self.allows(now) {
            return false;
        }
        self.slots[self.head].1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spent budget says when the window will have slid far enough for a retry: when the
    /// second its retries were taken in leaves the window.
    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_says_when_it_has_room_again() {
        let mut b = RetryBudget::new(0.2, 5);
        let t0 = Instant::now();
        assert_eq!(b.allows_at(t0), Some(t0));
        for _ in 0..5 {
            assert!(b.withdraw(t0));
        }
        assert_eq!(b.allows_at(t0), Some(t0 + Duration::from_secs(10)));
        let t3 = t0 + Duration::from_millis(3_500);
        assert_eq!(b.allows_at(t3), Some(t0 + Duration::from_secs(10)));
        assert!(!b.allows(t0 + Duration::from_millis(9_999)));
        assert!(b.allows(t0 + Duration::from_secs(10)));
        // No floor and nothing deposited: never.
        let mut none = RetryBudget::new(0.2, 0);
        assert_eq!(none.allows_at(t0), None);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_share_of_requests() {
        let mut b = RetryBudget::new(0.2, 5);
        let now = Instant::now();
        // A quiet session still gets a few retries.
        for _ in 0..5 {
            assert!(b.withdraw(now));
        }
        assert!(!b.withdraw(now));
        // 100 requests in the window buy 20 more.
        for _ in 0..100 {
            b.deposit(now);
        }
        for _ in 0..20 {
            assert!(b.withdraw(now));
        }
        assert!(!b.withdraw(now));
        // Ten seconds on, the old window is forgotten.
        let later = now + Duration::from_secs(10);
        assert!(b.allows(later));
        for _ in 0..5 {
            assert!(b.withdraw(later));
        }
        assert!(!b.withdraw(later));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let mut b = RetryBudget::new(0.5, 0);
        let t0 = Instant::now();
        for _ in 0..10 {
            b.deposit(t0);
        }
        for _ in 0..5 {
            assert!(b.withdraw(t0));
        }
        assert!(!b.withdraw(t0 + Duration::from_secs(9)));
        // The deposits and withdrawals of t0 leave the window together.
        assert!(!b.withdraw(t0 + Duration::from_secs(10)));
        b.deposit(t0 + Duration::from_secs(10));
        b.deposit(t0 + Duration::from_secs(10));
        assert!(b.withdraw(t0 + Duration::from_secs(10)));
        // Long silences are fine.
        assert!(!b.withdraw(t0 + Duration::from_secs(100_000)));
    }
}
