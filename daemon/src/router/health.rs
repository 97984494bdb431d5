//! Live health of every provider: averages, breaker, rate-limit windows, counters.
//!
//! [`HealthBook`] is the one owner of this state; every change goes through its methods, which
//! take the current time as an argument. That is what lets a 5-minute cooldown be tested in
//! microseconds, and what makes the state the same for every client of the daemon: when one
//! session trips a breaker, the next selection by any session sees it.

use std::time::Duration;

use mythos_protocol::{BreakerState, ErrorKind, TaskKind};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::score::{score, ScoreInputs};
use crate::config::RoutingConfig;

/// Weight of a new sample in an average.
const ALPHA: f64 = 0.3;

/// An exponential moving average that relaxes toward a neutral prior as it ages, so old
/// evidence (one slow answer an hour ago) cannot exile a provider forever.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ema {
    value: Option<f64>,
    updated: Option<Instant>,
}

impl Ema {
    /// The average as of `now`: the stored value pulled toward `prior` by its age.
    pub fn get(&self, prior: f64, now: Instant, half_life: Duration) -> f64 {
        match (self.value, self.updated) {
            (Some(v), Some(t)) => {
                let age = now.saturating_duration_since(t).as_secs_f64();
                let keep = 0.5f64.powf(age / half_life.as_secs_f64().max(1e-9));
                prior + (v - prior) * keep
            }
            _ => prior,
        }
    }

    /// The stored value, if any sample was taken (no decay applied).
    pub fn raw(&self) -> Option<f64> {
        self.value
    }

    /// Fold in a sample taken at `now`. The first sample is taken as it is: for a latency it
    /// is the best estimate there is.
    pub fn observe(&mut self, x: f64, prior: f64, now: Instant, half_life: Duration) {
        let next = match self.value {
            None => x,
            Some(_) => {
                let current = self.get(prior, now, half_life);
                current + ALPHA * (x - current)
            }
        };
        self.value = Some(next);
        self.updated = Some(now);
    }

    /// Fold in a sample, starting from the prior rather than from the first sample: for the
    /// success rate, one failure is evidence, not proof that a provider is dead.
    pub fn observe_from_prior(&mut self, x: f64, prior: f64, now: Instant, half_life: Duration) {
        let current = self.get(prior, now, half_life);
        self.value = Some(current + ALPHA * (x - current));
        self.updated = Some(now);
    }
}

/// Circuit breaker of one provider.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Breaker {
    /// Eligible.
    Closed,
    /// Excluded until `until`; `cooldown` is the length that got it here.
    Open {
        /// When it becomes half-open.
        until: Instant,
        /// Current cooldown level, doubled on each failed probe.
        cooldown: Duration,
    },
    /// Cooldown over: one request may probe. `probing` is set while that request runs.
    HalfOpen {
        /// A probe is in flight.
        probing: bool,
        /// Cooldown level to double if the probe fails.
        cooldown: Duration,
    },
    /// The provider rejected our key. Only a key change (a config reload) clears this.
    Unusable,
}

/// How a selected provider may be used by one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Normal use.
    Normal,
    /// The half-open probe: its outcome closes or re-opens the breaker.
    Probe,
}

/// Prior values the averages relax toward.
const PRIOR_SUCCESS: f64 = 1.0;
const PRIOR_TTFT_MS: f64 = 1000.0;
const PRIOR_GAP_MS: f64 = 50.0;
const PRIOR_LATENCY_MS: f64 = 5000.0;

/// Everything known about one provider.
#[derive(Debug, Clone)]
pub struct ProviderHealth {
    /// Provider name.
    pub name: String,
    /// Configured priority.
    pub priority: u32,
    /// Configured blended price per 1K tokens: the prior of [`ProviderHealth::cost`].
    pub cost_per_1k: f64,
    /// Cost per 1K tokens as billed (configured prices applied to the real token mix).
    pub cost: Ema,
    /// Success average.
    pub success: Ema,
    /// Time to first token average, ms.
    pub ttft: Ema,
    /// Gap between content chunks average, ms.
    pub gap: Ema,
    /// Whole-request latency average, ms.
    pub latency: Ema,
    /// Breaker.
    pub breaker: Breaker,
    /// The provider asked us not to call before this (429 Retry-After).
    pub rate_limited_until: Option<Instant>,
    /// Attempts.
    pub requests: u64,
    /// Failed attempts.
    pub failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// When it was last selected.
    pub last_selected: Option<Instant>,
    /// Last failure in words.
    pub last_error: Option<String>,
    /// The provider rejected an assistant prefill; continue with a restart instead.
    pub no_prefill: bool,
}

/// A provider ranked for one request.
#[derive(Debug, Clone)]
pub struct Ranked {
    /// Index into the book (and the router's provider list).
    pub index: usize,
    /// Score for the request's task.
    pub score: f64,
    /// Eligible now.
    pub eligible: bool,
    /// Why (not) eligible, in words.
    pub note: String,
    /// When it becomes eligible again, if excluded for a while.
    pub back_at: Option<Instant>,
}

/// The one owner of all provider health.
#[derive(Debug)]
pub struct HealthBook {
    /// Per provider, in configured order.
    pub providers: Vec<ProviderHealth>,
    cfg: RoutingConfig,
}

impl HealthBook {
    /// A book with fresh health for each `(name, priority, cost_per_1k)`.
    pub fn new(
        providers: impl IntoIterator<Item = (String, u32, f64)>,
        cfg: RoutingConfig,
    ) -> Self {
        HealthBook {
            providers: providers
                .into_iter()
                .map(|(name, priority, cost_per_1k)| ProviderHealth {
                    name,
                    priority,
                    cost_per_1k,
                    cost: Ema::default(),
                    success: Ema::default(),
                    ttft: Ema::default(),
                    gap: Ema::default(),
                    latency: Ema::default(),
                    breaker: Breaker::Closed,
                    rate_limited_until: None,
                    requests: 0,
                    failures: 0,
                    consecutive_failures: 0,
                    last_selected: None,
                    last_error: None,
                    no_prefill: false,
                })
                .collect(),
            cfg,
        }
    }

    /// Routing configuration in force.
    pub fn config(&self) -> &RoutingConfig {
        &self.cfg
    }

    /// Index of a provider by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.name == name)
    }

    /// Advance time-driven transitions (open → half-open, expired rate-limit windows).
    fn tick(&mut self, now: Instant) {
        for p in &mut self.providers {
            if let Breaker::Open { until, cooldown } = p.breaker {
                if now >= until {
                    p.breaker = Breaker::HalfOpen {
                        probing: false,
                        cooldown,
                    };
                }
            }
            if p.rate_limited_until.is_some_and(|t| now >= t) {
                p.rate_limited_until = None;
            }
        }
    }

    /// The provider's score for `task` at `now`.
    pub fn score_of(&self, i: usize, task: TaskKind, now: Instant) -> f64 {
        let p = &self.providers[i];
        let hl = self.cfg.health_half_life;
        let cost = |p: &ProviderHealth| p.cost.get(p.cost_per_1k, now, hl);
        let max_cost = self.providers.iter().map(cost).fold(0.0, f64::max);
        score(&ScoreInputs {
            task,
            success: p.success.get(PRIOR_SUCCESS, now, hl),
            ttft_ms: p.ttft.get(PRIOR_TTFT_MS, now, hl),
            cost_share: if max_cost > 0.0 {
                cost(p) / max_cost
            } else {
                0.0
            },
            priority: p.priority,
        })
    }

    /// Rank every provider for a request of `task`: eligible ones first, best score first, ties
    /// to priority. A provider unused for `probe_interval` is moved to the front once, so that
    /// stale evidence gets refreshed instead of starving it.
    pub fn rank(&mut self, task: TaskKind, now: Instant) -> Vec<Ranked> {
        self.tick(now);
        let mut ranked: Vec<Ranked> = (0..self.providers.len())
            .map(|i| {
                let p = &self.providers[i];
                let (eligible, note, back_at) = match (p.breaker, p.rate_limited_until) {
                    (Breaker::Unusable, _) => (false, "key rejected (401/403)".to_string(), None),
                    (Breaker::Open { until, .. }, _) => (
                        false,
                        format!("cooling down, {} s left", secs_left(until, now)),
                        Some(until),
                    ),
                    (Breaker::HalfOpen { probing: true, .. }, _) => {
                        (false, "being probed by another request".to_string(), None)
                    }
                    (_, Some(t)) => (
                        false,
                        format!("rate limited, {} s left", secs_left(t, now)),
                        Some(t),
                    ),
                    (Breaker::HalfOpen { .. }, None) => (
                        true,
                        "cooldown over: this request probes it".to_string(),
                        None,
                    ),
                    (Breaker::Closed, None) => (true, "healthy".to_string(), None),
                };
                Ranked {
                    index: i,
                    score: self.score_of(i, task, now),
                    eligible,
                    note,
                    back_at,
                }
            })
            .collect();
        ranked.sort_by(|a, b| {
            b.eligible
                .cmp(&a.eligible)
                .then(b.score.total_cmp(&a.score))
                .then(
                    self.providers[a.index]
                        .priority
                        .cmp(&self.providers[b.index].priority),
                )
        });
        // A provider whose cooldown is over is probed by the next request, whatever its old
        // score: that is the only way a breaker closes again. Otherwise, the first eligible
        // provider not selected for a long time jumps to the front once (selecting it resets
        // its clock), so stale evidence is refreshed instead of starving it.
        let jump = ranked
            .iter()
            .position(|r| {
                r.eligible
                    && matches!(
                        self.providers[r.index].breaker,
                        Breaker::HalfOpen { probing: false, .. }
                    )
            })
            .or_else(|| {
                ranked.iter().position(|r| {
                    let p = &self.providers[r.index];
                    r.eligible
                        && p.breaker == Breaker::Closed
                        && p.last_selected.is_some_and(|t| {
                            now.saturating_duration_since(t) >= self.cfg.probe_interval
                        })
                })
            });
        if let Some(pos) = jump.filter(|&pos| pos > 0) {
            let mut r = ranked.remove(pos);
            if self.providers[r.index].breaker == Breaker::Closed {
                r.note = "not used for a while: probed to refresh its averages".to_string();
            }
            ranked.insert(0, r);
        }
        ranked
    }

    /// Take provider `i` for one attempt. `None` if it became ineligible since ranking (another
    /// request tripped it, or took the half-open probe).
    pub fn claim(&mut self, i: usize, now: Instant) -> Option<Claim> {
        self.tick(now);
        let p = &mut self.providers[i];
        if p.rate_limited_until.is_some() {
            return None;
        }
        let claim = match &mut p.breaker {
            Breaker::Closed => Claim::Normal,
            Breaker::HalfOpen { probing, .. } if !*probing => {
                *probing = true;
                Claim::Probe
            }
            _ => return None,
        };
        p.last_selected = Some(now);
        p.requests += 1;
        Some(claim)
    }

    /// The attempt ended without blame either way (client cancel, the caller's 400): give a
    /// probe slot back.
    pub fn release(&mut self, i: usize, claim: Claim) {
        let p = &mut self.providers[i];
        p.requests = p.requests.saturating_sub(1);
        if claim == Claim::Probe {
            if let Breaker::HalfOpen { probing, .. } = &mut p.breaker {
                *probing = false;
            }
        }
    }

    /// First token arrived after `ttft`.
    pub fn record_ttft(&mut self, i: usize, ttft: Duration, now: Instant) {
        let hl = self.cfg.health_half_life;
        self.providers[i]
            .ttft
            .observe(ms(ttft), PRIOR_TTFT_MS, now, hl);
    }

    /// Average gap between content chunks of a finished stream.
    pub fn record_gap(&mut self, i: usize, gap: Duration, now: Instant) {
        let hl = self.cfg.health_half_life;
        self.providers[i]
            .gap
            .observe(ms(gap), PRIOR_GAP_MS, now, hl);
    }

    /// What an answer cost per 1K tokens, as billed: a provider whose answers run to long,
    /// expensive outputs costs more than its list price suggests.
    pub fn record_cost(&mut self, i: usize, cost_per_1k: f64, now: Instant) {
        let hl = self.cfg.health_half_life;
        let p = &mut self.providers[i];
        let prior = p.cost_per_1k;
        p.cost.observe(cost_per_1k, prior, now, hl);
    }

    /// The attempt completed.
    pub fn record_success(&mut self, i: usize, latency: Duration, now: Instant) {
        let hl = self.cfg.health_half_life;
        let p = &mut self.providers[i];
        p.success.observe_from_prior(1.0, PRIOR_SUCCESS, now, hl);
        p.latency.observe(ms(latency), PRIOR_LATENCY_MS, now, hl);
        p.consecutive_failures = 0;
        if matches!(p.breaker, Breaker::HalfOpen { .. } | Breaker::Open { .. }) {
            p.breaker = Breaker::Closed;
        }
    }

    /// The attempt failed with `kind`. Lowers the success average; does not trip by itself.
    pub fn record_failure(&mut self, i: usize, kind: ErrorKind, message: &str, now: Instant) {
        let hl = self.cfg.health_half_life;
        let p = &mut self.providers[i];
        p.success.observe_from_prior(0.0, PRIOR_SUCCESS, now, hl);
        p.failures += 1;
        p.consecutive_failures += 1;
        p.last_error = Some(format!("{}: {message}", kind.as_str()));
        if kind == ErrorKind::Auth {
            p.breaker = Breaker::Unusable;
        }
    }

    /// The provider asked for a pause (429 Retry-After): nobody calls it until then.
    pub fn rate_limit(&mut self, i: usize, wait: Duration, now: Instant) {
        let until = now + wait;
        let p = &mut self.providers[i];
        p.rate_limited_until = Some(p.rate_limited_until.map_or(until, |t| t.max(until)));
    }

    /// Open the breaker: retries are exhausted, or the provider asked for a long pause. The
    /// cooldown is the configured one, doubled per failed probe (bounded), or `at_least`.
    pub fn trip(&mut self, i: usize, at_least: Option<Duration>, now: Instant) -> Instant {
        let base = self.cfg.cooldown;
        let max = self.cfg.max_cooldown;
        let p = &mut self.providers[i];
        let level = match p.breaker {
            Breaker::HalfOpen { cooldown, .. } => (cooldown * 2).min(max),
            Breaker::Open { cooldown, .. } => cooldown,
            _ => base,
        };
        let wait = at_least.map_or(level, |w| w.max(level));
        let until = now + wait;
        if p.breaker != Breaker::Unusable {
            p.breaker = Breaker::Open {
                until,
                cooldown: level,
            };
        }
        until
    }

    /// Close a breaker by hand (`mythos reset`), and forget the failures behind it: whoever
    /// resets a provider has reason to trust it again.
    pub fn reset(&mut self, i: usize) {
        let p = &mut self.providers[i];
        p.breaker = Breaker::Closed;
        p.success = Ema::default();
        p.no_prefill = false;
        p.rate_limited_until = None;
        p.consecutive_failures = 0;
    }

    /// Watchdog thresholds for provider `i`: (first token, gap between chunks). Three times
    /// the provider's own averages, within the floor and ceiling; the configured defaults while
    /// there is no history.
    pub fn watchdog(&self, i: usize) -> (Duration, Duration) {
        let c = &self.cfg;
        let p = &self.providers[i];
        let adapt = |ema: &Ema, default: Duration| match ema.raw() {
            Some(v) => Duration::from_secs_f64(3.0 * v / 1000.0)
                .clamp(c.watchdog_floor, c.watchdog_ceiling),
            None => default,
        };
        (
            adapt(&p.ttft, c.first_token_timeout),
            adapt(&p.gap, c.stall_timeout),
        )
    }

    /// Public breaker state and cooldown left.
    pub fn state_of(&self, i: usize, now: Instant) -> (BreakerState, Option<Duration>) {
        let p = &self.providers[i];
        let limited = p.rate_limited_until.filter(|&t| t > now).map(|t| t - now);
        match p.breaker {
            Breaker::Closed => match limited {
                Some(d) => (BreakerState::Open, Some(d)),
                None => (BreakerState::Closed, None),
            },
            Breaker::Open { until, .. } if until > now => (BreakerState::Open, Some(until - now)),
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => (BreakerState::HalfOpen, None),
            Breaker::Unusable => (BreakerState::Unusable, None),
        }
    }

    /// Snapshot for persistence, with deadlines as Unix milliseconds.
    pub fn save(&self, now: Instant, now_unix_ms: u64) -> Vec<SavedHealth> {
        let to_unix =
            |t: Instant| now_unix_ms + t.saturating_duration_since(now).as_millis() as u64;
        let age_ms = |e: &Ema| {
            e.updated
                .map(|t| now.saturating_duration_since(t).as_millis() as u64)
        };
        self.providers
            .iter()
            .map(|p| SavedHealth {
                name: p.name.clone(),
                success: p.success.value,
                success_age_ms: age_ms(&p.success),
                ttft_ms: p.ttft.value,
                ttft_age_ms: age_ms(&p.ttft),
                gap_ms: p.gap.value,
                gap_age_ms: age_ms(&p.gap),
                latency_ms: p.latency.value,
                latency_age_ms: age_ms(&p.latency),
                breaker: match p.breaker {
                    Breaker::Closed => SavedBreaker::Closed,
                    Breaker::Open { until, cooldown } => SavedBreaker::Open {
                        until_unix_ms: to_unix(until),
                        cooldown_ms: cooldown.as_millis() as u64,
                    },
                    Breaker::HalfOpen { cooldown, .. } => SavedBreaker::HalfOpen {
                        cooldown_ms: cooldown.as_millis() as u64,
                    },
                    Breaker::Unusable => SavedBreaker::Unusable,
                },
                rate_limited_until_unix_ms: p.rate_limited_until.map(to_unix),
                requests: p.requests,
                failures: p.failures,
                consecutive_failures: p.consecutive_failures,
                last_error: p.last_error.clone(),
                no_prefill: p.no_prefill,
                saved_unix_ms: now_unix_ms,
            })
            .collect()
    }

    /// Restore what [`HealthBook::save`] wrote. Deadlines in the past are dropped; averages keep
    /// their age (time while the daemon was down counts), so they decay as if it had run.
    /// `key_changed` names providers whose key differs from the one that was rejected.
    pub fn restore(&mut self, saved: &[SavedHealth], now: Instant, now_unix_ms: u64) {
        let from_unix =
            |ms: u64| (ms > now_unix_ms).then(|| now + Duration::from_millis(ms - now_unix_ms));
        for s in saved {
            let Some(i) = self.index_of(&s.name) else {
                continue;
            };
            let down_ms = now_unix_ms.saturating_sub(s.saved_unix_ms);
            let ema = |v: Option<f64>, age: Option<u64>| Ema {
                value: v,
                updated: age.map(|a| {
                    let back = Duration::from_millis(a + down_ms);
                    now.checked_sub(back).unwrap_or(now)
                }),
            };
            let p = &mut self.providers[i];
            p.success = ema(s.success, s.success_age_ms);
            p.ttft = ema(s.ttft_ms, s.ttft_age_ms);
            p.gap = ema(s.gap_ms, s.gap_age_ms);
            p.latency = ema(s.latency_ms, s.latency_age_ms);
            p.breaker = match s.breaker {
                SavedBreaker::Closed => Breaker::Closed,
                SavedBreaker::Open {
                    until_unix_ms,
                    cooldown_ms,
                } => match from_unix(until_unix_ms) {
                    Some(until) => Breaker::Open {
                        until,
                        cooldown: Duration::from_millis(cooldown_ms),
                    },
                    None => Breaker::HalfOpen {
                        probing: false,
                        cooldown: Duration::from_millis(cooldown_ms),
                    },
                },
                SavedBreaker::HalfOpen { cooldown_ms } => Breaker::HalfOpen {
                    probing: false,
                    cooldown: Duration::from_millis(cooldown_ms),
                },
                SavedBreaker::Unusable => Breaker::Unusable,
            };
            p.rate_limited_until = s.rate_limited_until_unix_ms.and_then(from_unix);
            p.requests = s.requests;
            p.failures = s.failures;
            p.consecutive_failures = s.consecutive_failures;
            p.last_error = s.last_error.clone();
            p.no_prefill = s.no_prefill;
        }
    }

    /// Forget that a provider's key was rejected (its key changed on reload).
    pub fn clear_unusable(&mut self, name: &str) {
        if let Some(i) = self.index_of(name) {
            if self.providers[i].breaker == Breaker::Unusable {
                self.providers[i].breaker = Breaker::Closed;
            }
        }
    }
}

/// Persisted form of one provider's health (JSON in the state database).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedHealth {
    /// Provider name.
    pub name: String,
    /// Success average.
    pub success: Option<f64>,
    /// Age of the success average at save time.
    pub success_age_ms: Option<u64>,
    /// TTFT average.
    pub ttft_ms: Option<f64>,
    /// Its age.
    pub ttft_age_ms: Option<u64>,
    /// Gap average.
    pub gap_ms: Option<f64>,
    /// Its age.
    pub gap_age_ms: Option<u64>,
    /// Latency average.
    pub latency_ms: Option<f64>,
    /// Its age.
    pub latency_age_ms: Option<u64>,
    /// Breaker with absolute deadline.
    pub breaker: SavedBreaker,
    /// Retry-After deadline.
    pub rate_limited_until_unix_ms: Option<u64>,
    /// Counters.
    pub requests: u64,
    /// Counters.
    pub failures: u64,
    /// Counters.
    pub consecutive_failures: u32,
    /// Last failure.
    pub last_error: Option<String>,
    /// Prefill rejected.
    #[serde(default)]
    pub no_prefill: bool,
    /// When this was written.
    pub saved_unix_ms: u64,
}

/// Persisted breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SavedBreaker {
    /// Closed.
    Closed,
    /// Open until an absolute time.
    Open {
        /// Deadline.
        until_unix_ms: u64,
        /// Level.
        cooldown_ms: u64,
    },
    /// Half-open.
    HalfOpen {
        /// Level.
        cooldown_ms: u64,
    },
    /// Key rejected.
    Unusable,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn secs_left(t: Instant, now: Instant) -> u64 {
    t.saturating_duration_since(now).as_secs_f64().ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn billed_cost_moves_the_background_ranking() {
        // Same list price, but the primary's answers turn out 10x as expensive per 1K tokens
        // (long, output-heavy answers at a steep output price).
        let mut book = HealthBook::new(
            [("a".to_string(), 0, 0.01), ("b".to_string(), 1, 0.01)],
            RoutingConfig::default(),
        );
        let now = Instant::now();
        let first = |book: &mut HealthBook| book.rank(TaskKind::Background, now)[0].index;
        assert_eq!(first(&mut book), 0);
        for _ in 0..5 {
            book.record_cost(0, 0.1, now);
            book.record_cost(1, 0.01, now);
        }
        assert_eq!(first(&mut book), 1);
        // For chat, a 10x price difference alone does not unseat the primary.
        assert_eq!(book.rank(TaskKind::Chat, now)[0].index, 0);
    }
}
