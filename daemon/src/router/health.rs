//! Live health of every provider: averages, breaker, quotas, retry budget, streams in flight.
//!
//! [`HealthBook`] is the one owner of this state; every change goes through its methods, which
//! take the current time as an argument. That is what lets a 5-minute cooldown be tested in
//! microseconds, and what makes the state the same for every client of the daemon: when one
//! session trips a breaker or meets a `429`, the next selection by any session sees it.
//!
//! Three kinds of evidence are kept apart, because they mean different things:
//! - **success rate**, one sample per request and provider (a `500` that a retry recovered is a
//!   success), as decaying counts over a prior: it ranks providers;
//! - **breaker window**, one sample per attempt: the breaker opens only on repeated faults (at
//!   least [`BREAKER_MIN_FAULTS`] of the last [`BREAKER_WINDOW`] attempts within
//!   [`BREAKER_HORIZON`], with under [`BREAKER_MAX_SUCCESS`] of them, and of the attempts still
//!   streaming, successful);
//! - **quota**, from the provider's own headers ([`super::quota`]): running out is not a fault.

use std::collections::VecDeque;
use std::time::Duration;

use mythos_protocol::{BreakerState, ErrorKind, TaskKind};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::admission::WaitQueue;
use super::budget::RetryBudget;
use super::policy::Disable;
use super::quota::{Cost, Quota, SavedQuota};
use super::score::{score, ScoreInputs};
use super::wallclock::{earlier, from_unix_ms, to_unix_ms};
use crate::config::{ProviderConfig, RoutingConfig};

/// Weight of a new sample in a latency or cost average.
const ALPHA: f64 = 0.3;

/// Weight, in requests, of the prior belief that a provider succeeds: one failure among no other
/// evidence moves the success rate to 50/51 (2 points, half a priority step), while a sustained
/// 5 % error rate over a busy half-life moves it past one step.
pub const SUCCESS_PRIOR_WEIGHT: f64 = 50.0;

/// Attempts the breaker looks back on.
pub const BREAKER_WINDOW: usize = 20;
/// How far back the breaker looks.
pub const BREAKER_HORIZON: Duration = Duration::from_secs(60);
/// Faults needed, within the window, to open the breaker.
pub const BREAKER_MIN_FAULTS: usize = 5;
/// The breaker opens only while fewer than this share of the window's attempts succeeded: a
/// provider failing 30 % of its requests at random stays in (the score steers around it), a
/// dead one is out after five tries.
pub const BREAKER_MAX_SUCCESS: f64 = 0.2;
/// How long a billing failure (402, spent account) keeps a provider out unless reset by hand.
pub const BILLING_COOLDOWN: Duration = Duration::from_secs(3600);
/// How long a provider's refusal to continue another provider's answer is remembered.
pub const NO_PREFILL_FOR: Duration = Duration::from_secs(24 * 3600);

/// An exponential moving average that relaxes toward a neutral prior as it ages, so old
/// evidence (one slow answer an hour ago) cannot exile a provider forever.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ema {
    value: Option<f64>,
    updated: Option<Instant>,
}

impl Ema {
    /// The machine slept for `gap`: the last sample is that much older.
    fn slept(&mut self, gap: Duration, now: Instant) {
        self.updated = self.updated.map(|t| earlier(t, gap, now));
    }

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
}

/// A success rate from decaying counts of request outcomes, pulled toward 1.0 by a prior worth
/// [`SUCCESS_PRIOR_WEIGHT`] requests. Counts halve every half-life, so old failures fade.
#[derive(Debug, Clone, Copy, Default)]
pub struct SuccessRate {
    good: f64,
    total: f64,
    updated: Option<Instant>,
}

impl SuccessRate {
    /// The machine slept for `gap`: the counts are that much older.
    fn slept(&mut self, gap: Duration, now: Instant) {
        self.updated = self.updated.map(|t| earlier(t, gap, now));
    }

    fn decayed(&self, now: Instant, half_life: Duration) -> (f64, f64) {
        match self.updated {
            Some(t) => {
                let age = now.saturating_duration_since(t).as_secs_f64();
                let keep = 0.5f64.powf(age / half_life.as_secs_f64().max(1e-9));
                (self.good * keep, self.total * keep)
            }
            None => (0.0, 0.0),
        }
    }

    /// The rate as of `now`, 0..1.
    pub fn get(&self, now: Instant, half_life: Duration) -> f64 {
        let (good, total) = self.decayed(now, half_life);
        (good + SUCCESS_PRIOR_WEIGHT) / (total + SUCCESS_PRIOR_WEIGHT)
    }

    /// One request's outcome at this provider.
    pub fn observe(&mut self, ok: bool, now: Instant, half_life: Duration) {
        let (good, total) = self.decayed(now, half_life);
        self.good = good + if ok { 1.0 } else { 0.0 };
        self.total = total + 1.0;
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
    /// The provider rejected our key or account. Auth: until the key changes (a reload) or a
    /// reset. Billing: until a reset, or `until`, when one request probes it again.
    Disabled {
        /// Why.
        why: Disable,
        /// When it may be tried again on its own.
        until: Option<Instant>,
    },
}

/// Prior values the averages relax toward.
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
    /// Success rate per request.
    pub success: SuccessRate,
    /// Time to first token average, ms.
    pub ttft: Ema,
    /// Gap between content chunks average, ms.
    pub gap: Ema,
    /// Whole-request latency average, ms.
    pub latency: Ema,
    /// Breaker.
    pub breaker: Breaker,
    /// Recent attempts for the breaker: (when, was a fault).
    pub recent: VecDeque<(Instant, bool)>,
    /// Announced quotas and what was sent since.
    pub quota: Quota,
    /// Retry budget.
    pub budget: RetryBudget,
    /// Attempts streaming now.
    pub in_flight: u32,
    /// Most attempts at once.
    pub max_concurrent: u32,
    /// Context window in tokens, if known.
    pub context_window: Option<u64>,
    /// The most output its model writes (what a request's `max_tokens` is clamped to there).
    pub output_limit: u32,
    /// The model reasons silently before its first token.
    pub reasoning: bool,
    /// Attempts.
    pub requests: u64,
    /// Failed attempts (faults only).
    pub failures: u64,
    /// When it was last selected.
    pub last_selected: Option<Instant>,
    /// Last failure in words.
    pub last_error: Option<String>,
    /// The provider rejected an assistant prefill; until then, continue with a restart instead.
    pub no_prefill_until: Option<Instant>,
    /// Models of this provider seen to stream a tool call's arguments a piece at a time (see
    /// [`HealthBook::streams_calls`]); at most [`MAX_CALL_MODELS`], the latest last.
    pub calls_streamed: Vec<String>,
}

/// The most models per provider [`ProviderHealth::calls_streamed`] remembers.
pub const MAX_CALL_MODELS: usize = 16;

impl ProviderHealth {
    /// What a request estimated at `cost` takes from this provider's quotas: its output as the
    /// request sent here asks for it, clamped to the model's limit. Counted at the client's
    /// `max_tokens` (Claude Code asks for 128,000), a provider whose model writes 8,192 and
    /// whose quota is 50,000 tokens a minute was "larger than its quota" for every request;
    /// counted at the default, a request sent with the model's whole limit (a client that
    /// named none) was under-reserved (found by a review).
    pub fn quota_cost(&self, cost: Cost) -> Cost {
        cost.output_at_most(f64::from(self.output_limit))
    }

    /// Health with nothing learnt yet, for provider `p`.
    fn fresh(p: &ProviderConfig, cfg: &RoutingConfig) -> Self {
        ProviderHealth {
            name: p.name.clone(),
            priority: p.priority,
            cost_per_1k: p.cost_per_1k(),
            cost: Ema::default(),
            success: SuccessRate::default(),
            ttft: Ema::default(),
            gap: Ema::default(),
            latency: Ema::default(),
            breaker: Breaker::Closed,
            recent: VecDeque::new(),
            quota: Quota::default(),
            budget: RetryBudget::new(cfg.retry_budget_ratio, 5),
            in_flight: 0,
            max_concurrent: p.max_concurrent.max(1),
            context_window: p.context_window,
            output_limit: p.output_limit(),
            reasoning: p.reasoning,
            requests: 0,
            failures: 0,
            last_selected: None,
            last_error: None,
            no_prefill_until: None,
            calls_streamed: Vec::new(),
        }
    }
}

/// A provider ranked for one request.
#[derive(Debug, Clone)]
pub struct Ranked {
    /// Index into the book (and the router's provider list).
    pub index: usize,
    /// Score for the request's task.
    pub score: f64,
    /// Eligible as far as health goes (quotas and concurrency are checked at admission).
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
    pub(super) cfg: RoutingConfig,
    /// Requests waiting for capacity.
    pub(super) queue: WaitQueue,
    /// When the daemon last noticed that the machine had slept ([`HealthBook::slept`]).
    pub last_wake: Option<Instant>,
}

impl HealthBook {
    /// A book with fresh health for each provider.
    pub fn new<'a>(
        providers: impl IntoIterator<Item = &'a ProviderConfig>,
        cfg: RoutingConfig,
    ) -> Self {
        HealthBook {
            providers: providers
                .into_iter()
                .map(|p| ProviderHealth::fresh(p, &cfg))
                .collect(),
            cfg,
            queue: WaitQueue::default(),
            last_wake: None,
        }
    }

    /// Take new configurations for the same providers, in the same order (a reload): health,
    /// breakers, quotas and claims stay as they are.
    pub fn reconfigure<'a>(
        &mut self,
        providers: impl IntoIterator<Item = &'a ProviderConfig>,
        cfg: RoutingConfig,
    ) {
        for (h, p) in self.providers.iter_mut().zip(providers) {
            h.priority = p.priority;
            h.cost_per_1k = p.cost_per_1k();
            h.max_concurrent = p.max_concurrent.max(1);
            h.context_window = p.context_window;
            h.output_limit = p.output_limit();
            h.reasoning = p.reasoning;
        }
        self.cfg = cfg;
    }

    /// Routing configuration in force.
    pub fn config(&self) -> &RoutingConfig {
        &self.cfg
    }

    /// Index of a provider by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.name == name)
    }

    /// Advance time-driven transitions (open → half-open, billing cooldown over).
    pub(super) fn tick(&mut self, now: Instant) {
        for p in &mut self.providers {
            match p.breaker {
                Breaker::Open { until, cooldown } if now >= until => {
                    p.breaker = Breaker::HalfOpen {
                        probing: false,
                        cooldown,
                    };
                }
                Breaker::Disabled {
                    until: Some(until), ..
                } if now >= until => {
                    p.breaker = Breaker::HalfOpen {
                        probing: false,
                        cooldown: self.cfg.cooldown,
                    };
                }
                _ => {}
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
            success: p.success.get(now, hl),
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
    /// to priority. A provider whose cooldown is over, or that was not used for
    /// `probe_interval`, is moved to the front once, so that stale evidence gets refreshed
    /// instead of starving it.
    pub fn rank(&mut self, task: TaskKind, now: Instant) -> Vec<Ranked> {
        self.tick(now);
        let mut ranked: Vec<Ranked> = (0..self.providers.len())
            .map(|i| {
                let p = &self.providers[i];
                let (eligible, note, back_at) = match p.breaker {
                    Breaker::Disabled {
                        why: Disable::Auth, ..
                    } => (
                        false,
                        format!(
                            "key rejected (401/403); `mythos reset {}` once it is fixed",
                            p.name
                        ),
                        None,
                    ),
                    Breaker::Disabled {
                        why: Disable::Billing,
                        until,
                    } => (false, "account cannot pay (billing)".to_string(), until),
                    Breaker::Open { until, .. } => (
                        false,
                        format!("cooling down, {} s left", secs_left(until, now)),
                        Some(until),
                    ),
                    Breaker::HalfOpen { probing: true, .. } => {
                        (false, "being probed by another request".to_string(), None)
                    }
                    Breaker::HalfOpen { .. } => (
                        true,
                        "cooldown over: this request probes it".to_string(),
                        None,
                    ),
                    // Paused by a `429` or a `503` with `Retry-After`: still ranked (admission
                    // waits for the pause), but not called healthy where a request's record
                    // lists its candidates (`mythos why` showed a paused provider healthy).
                    Breaker::Closed => match self.state_of(i, now) {
                        (state @ (BreakerState::RateLimited | BreakerState::Overloaded), left) => {
                            let what = if state == BreakerState::RateLimited {
                                "rate limited"
                            } else {
                                "overloaded"
                            };
                            let left = left.unwrap_or_default().as_secs_f64().ceil();
                            (true, format!("{what}, {left:.0} s left"), None)
                        }
                        _ => (true, "healthy".to_string(), None),
                    },
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

    /// A whole answer took `latency`.
    pub fn record_latency(&mut self, i: usize, latency: Duration, now: Instant) {
        let hl = self.cfg.health_half_life;
        self.providers[i]
            .latency
            .observe(ms(latency), PRIOR_LATENCY_MS, now, hl);
    }

    /// One request's outcome at provider `i` (once per request and provider).
    pub fn record_outcome(&mut self, i: usize, ok: bool, now: Instant) {
        let hl = self.cfg.health_half_life;
        self.providers[i].success.observe(ok, now, hl);
    }

    /// Back in routing after its key was rejected or its account could not pay, once a
    /// request pinned to it was answered: it stayed out, "key rejected", while it answered
    /// (found by a helper).
    pub fn enable(&mut self, i: usize) {
        let p = &mut self.providers[i];
        if matches!(p.breaker, Breaker::Disabled { .. }) {
            p.breaker = Breaker::Closed;
            p.recent.clear();
        }
    }

    /// One attempt ended, as a fault or not; `probe` if it was the half-open probe. Opens the
    /// breaker on repeated faults, closes it on a successful probe. Returns the cooldown's end
    /// when this fault opened the breaker.
    pub fn record_attempt(
        &mut self,
        i: usize,
        fault: bool,
        probe: bool,
        now: Instant,
    ) -> Option<Instant> {
        let p = &mut self.providers[i];
        p.recent.push_back((now, fault));
        while p.recent.len() > BREAKER_WINDOW
            || p.recent
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > BREAKER_HORIZON)
        {
            p.recent.pop_front();
        }
        if !fault {
            if probe || matches!(p.breaker, Breaker::HalfOpen { .. }) {
                p.breaker = Breaker::Closed;
                // A fresh start for the breaker, keeping this answer: it is the evidence that
                // the provider works (`answered_since`).
                p.recent.clear();
                p.recent.push_back((now, false));
            }
            return None;
        }
        p.failures += 1;
        // Under load, failures come back in milliseconds while good answers take seconds: the
        // last attempts to end are not a fair sample. Attempts still streaming (besides this
        // one) count as not failed, so a burst of fast errors among many healthy streams does
        // not open the breaker, while a provider that fails everything soon has none left.
        let others_streaming = p.in_flight.saturating_sub(1) as usize;
        let faults = p.recent.iter().filter(|(_, f)| *f).count();
        let success_share = (p.recent.len() - faults + others_streaming) as f64
            / (p.recent.len() + others_streaming) as f64;
        let repeated = faults >= BREAKER_MIN_FAULTS && success_share < BREAKER_MAX_SUCCESS;
        let failed_probe = probe && matches!(p.breaker, Breaker::HalfOpen { .. });
        // Once open, only the probe's answer moves the breaker: a stream that started before
        // the trip and fails now, or a pinned request's fault while half-open, says nothing
        // new, and used to push the cooldown out or double it without any probe.
        let settled = matches!(p.breaker, Breaker::Open { .. } | Breaker::HalfOpen { .. });
        (failed_probe || (repeated && !settled)).then(|| self.trip(i, now))
    }

    /// The half-open probe of provider `i` streams an answer: the provider works, and its
    /// breaker closes now rather than when that answer ends. Requests that only it can take
    /// waited for the whole answer, and a long one outlasted their queue limit: they failed
    /// with "being probed by another request" while it streamed (found by a review). Returns
    /// whether the breaker closed.
    pub fn probe_answered(&mut self, i: usize, now: Instant) -> bool {
        let p = &mut self.providers[i];
        if !matches!(p.breaker, Breaker::HalfOpen { .. } | Breaker::Open { .. }) {
            return false;
        }
        p.breaker = Breaker::Closed;
        p.recent.clear();
        p.recent.push_back((now, false));
        true
    }

    /// Provider `i` answered a request (an attempt ended without a fault) after `since`: it is
    /// working, and a request's run of failures there is bad luck, not an outage.
    pub fn answered_since(&self, i: usize, since: Instant) -> bool {
        self.providers[i]
            .recent
            .iter()
            .any(|&(t, fault)| !fault && t > since)
    }

    /// Remember the last failure, in words.
    pub fn note_error(&mut self, i: usize, kind: ErrorKind, message: &str) {
        self.providers[i].last_error = Some(format!("{}: {message}", kind.as_str()));
    }

    /// The provider rejected our key or account.
    pub fn disable(&mut self, i: usize, why: Disable, now: Instant) {
        self.providers[i].breaker = Breaker::Disabled {
            why,
            until: match why {
                Disable::Auth => None,
                Disable::Billing => Some(after(now, BILLING_COOLDOWN)),
            },
        };
    }

    /// The provider refused to continue another provider's answer.
    pub fn refuse_prefill(&mut self, i: usize, now: Instant) {
        self.providers[i].no_prefill_until = Some(after(now, NO_PREFILL_FOR));
    }

    /// Whether provider `i` accepts a continuation of another provider's answer now.
    pub fn accepts_prefill(&self, i: usize, now: Instant) -> bool {
        self.providers[i].no_prefill_until.is_none_or(|t| now >= t)
    }

    /// Open the breaker for the configured cooldown, doubled per failed probe (bounded).
    pub fn trip(&mut self, i: usize, now: Instant) -> Instant {
        let base = self.cfg.cooldown;
        let max = self.cfg.max_cooldown.max(base);
        let p = &mut self.providers[i];
        let level = match p.breaker {
            Breaker::HalfOpen { cooldown, .. } => cooldown.saturating_mul(2).min(max),
            Breaker::Open { cooldown, .. } => cooldown,
            _ => base,
        };
        let until = after(now, level);
        if !matches!(p.breaker, Breaker::Disabled { .. }) {
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
        p.success = SuccessRate::default();
        p.recent.clear();
        p.no_prefill_until = None;
        p.quota.clear_block();
    }

    /// Watchdog thresholds for provider `i` and a prompt of `input_tokens`: (first token, gap
    /// between chunks). Three times the provider's own averages within the floor and ceiling
    /// (the configured defaults while there is no history); the first-token limit grows with the
    /// prompt, since a provider reads a long prompt before it answers, and a model that reasons
    /// silently gets the reasoning allowance.
    pub fn watchdog(&self, i: usize, input_tokens: u64) -> (Duration, Duration) {
        let c = &self.cfg;
        let p = &self.providers[i];
        let adapt = |ema: &Ema, default: Duration| match ema.raw() {
            Some(v) => Duration::from_secs_f64((3.0 * v / 1000.0).min(1e6))
                .clamp(c.watchdog_floor, c.watchdog_ceiling.max(c.watchdog_floor)),
            None => default,
        };
        let reading = c
            .first_token_per_1k_input
            .mul_f64((input_tokens as f64 / 1000.0).min(1e6));
        let mut first = adapt(&p.ttft, c.first_token_timeout).saturating_add(reading);
        if p.reasoning {
            first = first.max(c.reasoning_first_token_timeout);
        }
        (first, adapt(&p.gap, c.stall_timeout))
    }

    /// Whether `model` on provider `i` is known to stream a tool call's arguments as it writes
    /// them (OpenAI's and Anthropic's own servers do). Until it is seen to, a request that
    /// offers tools allows it the tool-call silence everywhere: a local server (Ollama,
    /// vLLM's parsers, LM Studio) and Gemini send a call whole once written, after a silence as
    /// long as the arguments take to write, and the gap allowed between tokens cut every
    /// file a local model wrote, on every attempt.
    pub fn streams_calls(&self, i: usize, model: &str) -> bool {
        self.providers[i].calls_streamed.iter().any(|m| m == model)
    }

    /// `model` on provider `i` streamed a tool call's arguments a piece at a time.
    pub fn learn_streams_calls(&mut self, i: usize, model: &str) {
        let seen = &mut self.providers[i].calls_streamed;
        if !seen.iter().any(|m| m == model) {
            if seen.len() >= MAX_CALL_MODELS {
                seen.remove(0);
            }
            seen.push(model.to_string());
        }
    }

    /// Public breaker state and cooldown left.
    pub fn state_of(&self, i: usize, now: Instant) -> (BreakerState, Option<Duration>) {
        let p = &self.providers[i];
        let paused = p.quota.blocked_until(now).map(|t| t - now);
        match p.breaker {
            Breaker::Closed => match paused {
                Some(d) if p.quota.limited_until(now).is_some() => {
                    (BreakerState::RateLimited, Some(d))
                }
                Some(d) => (BreakerState::Overloaded, Some(d)),
                None => (BreakerState::Closed, None),
            },
            Breaker::Open { until, .. } if until > now => (BreakerState::Open, Some(until - now)),
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => (BreakerState::HalfOpen, None),
            Breaker::Disabled { until, .. } => (
                BreakerState::Unusable,
                until.filter(|&t| t > now).map(|t| t - now),
            ),
        }
    }

    /// The machine slept for `gap` (see [`crate::suspend`]), which `Instant` did not count:
    /// every deadline and timestamp moves that much earlier, so pauses, cooldowns and quota
    /// windows that ended during the sleep are over, and averages have aged by as much.
    pub fn slept(&mut self, gap: Duration, now: Instant) {
        let back = |t: Instant| earlier(t, gap, now);
        for p in &mut self.providers {
            for ema in [&mut p.cost, &mut p.ttft, &mut p.gap, &mut p.latency] {
                ema.slept(gap, now);
            }
            p.success.slept(gap, now);
            match &mut p.breaker {
                Breaker::Open { until, .. } => *until = back(*until),
                Breaker::Disabled {
                    until: Some(until), ..
                } => *until = back(*until),
                _ => {}
            }
            for (t, _) in &mut p.recent {
                *t = back(*t);
            }
            p.quota.slept(gap, now);
            p.budget.slept(gap, now);
            p.last_selected = p.last_selected.map(back);
            p.no_prefill_until = p.no_prefill_until.map(back);
        }
        self.last_wake = Some(now);
        self.tick(now);
    }

    /// Whether the machine slept while an attempt begun at `start` was under way: its
    /// connection likely died in the sleep, and its failure is nobody's fault.
    pub fn slept_since(&self, start: Instant) -> bool {
        self.last_wake.is_some_and(|w| w > start)
    }

    /// Whether provider `i` is out only because of its rate limits: its breaker lets it be
    /// used, but it asked for a pause or its quota has no room for `cost`.
    pub fn out_for_quota(&self, i: usize, cost: Cost, now: Instant) -> bool {
        let p = &self.providers[i];
        let breaker_ok = match p.breaker {
            Breaker::Closed => true,
            Breaker::HalfOpen { probing, .. } => !probing,
            Breaker::Open { until, .. } => until <= now,
            Breaker::Disabled { .. } => false,
        };
        breaker_ok && p.quota.out_of_quota(p.quota_cost(cost), now)
    }

    /// Snapshot for persistence, with deadlines as Unix milliseconds.
    pub fn save(&self, now: Instant, now_unix_ms: u64) -> Vec<SavedHealth> {
        let to_unix = |t: Instant| to_unix_ms(t, now, now_unix_ms);
        let age_ms = |e: &Ema| {
            e.updated
                .map(|t| now.saturating_duration_since(t).as_millis() as u64)
        };
        let hl = self.cfg.health_half_life;
        self.providers
            .iter()
            .map(|p| {
                let (good, total) = p.success.decayed(now, hl);
                SavedHealth {
                    name: p.name.clone(),
                    success: Some(p.success.get(now, hl)),
                    success_age_ms: Some(0),
                    success_counts: Some((good, total)),
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
                        Breaker::Disabled {
                            why: Disable::Auth, ..
                        } => SavedBreaker::Unusable,
                        Breaker::Disabled {
                            why: Disable::Billing,
                            until,
                        } => SavedBreaker::Billing {
                            until_unix_ms: until.map(to_unix),
                        },
                    },
                    rate_limited_until_unix_ms: p.quota.blocked_until(now).map(to_unix),
                    quota: Some(p.quota.save(now, now_unix_ms)),
                    requests: p.requests,
                    failures: p.failures,
                    consecutive_failures: p.recent.iter().rev().take_while(|(_, f)| *f).count()
                        as u32,
                    last_error: p.last_error.clone(),
                    no_prefill: p.no_prefill_until.is_some_and(|t| t > now),
                    no_prefill_until_unix_ms: p.no_prefill_until.filter(|&t| t > now).map(to_unix),
                    calls_streamed: p.calls_streamed.clone(),
                    saved_unix_ms: now_unix_ms,
                }
            })
            .collect()
    }

    /// Restore what [`HealthBook::save`] wrote. Deadlines in the past are dropped; averages keep
    /// their age (time while the daemon was down counts), so they decay as if it had run.
    pub fn restore(&mut self, saved: &[SavedHealth], now: Instant, now_unix_ms: u64) {
        // Deadlines already past are over.
        let from_unix = |ms: u64| (ms > now_unix_ms).then(|| from_unix_ms(ms, now, now_unix_ms));
        let hl = self.cfg.health_half_life;
        for s in saved {
            let Some(i) = self.index_of(&s.name) else {
                continue;
            };
            let down_ms = now_unix_ms.saturating_sub(s.saved_unix_ms);
            let back = |age: u64| {
                now.checked_sub(Duration::from_millis(age.saturating_add(down_ms)))
                    .unwrap_or(now)
            };
            let ema = |v: Option<f64>, age: Option<u64>| Ema {
                value: v,
                updated: age.map(back),
            };
            let p = &mut self.providers[i];
            p.success = match (s.success_counts, s.success) {
                (Some((good, total)), _) => SuccessRate {
                    good,
                    total,
                    updated: Some(back(0)),
                },
                // Saved by a version that kept a moving average: weigh it as ten requests.
                (None, Some(v)) => SuccessRate {
                    good: v.clamp(0.0, 1.0) * 10.0,
                    total: 10.0,
                    updated: Some(back(s.success_age_ms.unwrap_or(0))),
                },
                (None, None) => SuccessRate::default(),
            };
            let _ = p.success.get(now, hl);
            p.ttft = ema(s.ttft_ms, s.ttft_age_ms);
            p.gap = ema(s.gap_ms, s.gap_age_ms);
            p.latency = ema(s.latency_ms, s.latency_age_ms);
            p.breaker = match s.breaker {
                SavedBreaker::Closed => Breaker::Closed,
                SavedBreaker::Open {
                    until_unix_ms,
                    cooldown_ms,
                } => match from_unix(until_unix_ms) {
                    // No later than a cooldown from now: a deadline saved under a clock that
                    // ran ahead (then corrected) must not keep a provider out for a day.
                    Some(until) => Breaker::Open {
                        until: until.min(
                            now + Duration::from_millis(cooldown_ms).min(self.cfg.max_cooldown),
                        ),
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
                // A rejected key or an account that could not pay is not carried over: a
                // restart is how a user says "fixed" (a new key in the environment, a top-up),
                // and a key still bad costs one immediate 401 to learn again. Kept, it said
                // "key rejected" until the config was reloaded.
                SavedBreaker::Unusable | SavedBreaker::Billing { .. } => Breaker::Closed,
            };
            p.quota = match &s.quota {
                Some(q) => Quota::restore(q, now, now_unix_ms, self.cfg.max_cooldown),
                None => Quota::default(),
            };
            if let Some(until) = s.rate_limited_until_unix_ms.and_then(from_unix) {
                // A Retry-After is capped at `max_cooldown` when it is read; so is what was
                // saved of it.
                p.quota.block(until.min(now + self.cfg.max_cooldown));
            }
            p.requests = s.requests;
            p.failures = s.failures;
            p.last_error = s.last_error.clone();
            p.no_prefill_until = match s.no_prefill_until_unix_ms {
                Some(ms) => from_unix(ms),
                // Saved before refusals expired: give it the full period from now.
                None => s.no_prefill.then(|| now + NO_PREFILL_FOR),
            };
            p.calls_streamed = s.calls_streamed.clone();
            p.calls_streamed.truncate(MAX_CALL_MODELS);
        }
    }

    /// Forget that a provider's key was rejected (its key changed on reload).
    pub fn clear_unusable(&mut self, name: &str) {
        if let Some(i) = self.index_of(name) {
            if matches!(self.providers[i].breaker, Breaker::Disabled { .. }) {
                self.providers[i].breaker = Breaker::Closed;
            }
        }
    }
}

/// Persisted form of one provider's health (JSON in the state database). Fields are only ever
/// added, with defaults, so an old database keeps loading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedHealth {
    /// Provider name.
    pub name: String,
    /// Success rate when saved (kept for older readers).
    pub success: Option<f64>,
    /// Age of the success figure at save time.
    pub success_age_ms: Option<u64>,
    /// Decayed (successes, requests) behind the success rate.
    #[serde(default)]
    pub success_counts: Option<(f64, f64)>,
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
    /// The provider's pause (Retry-After) deadline.
    pub rate_limited_until_unix_ms: Option<u64>,
    /// Quota estimate.
    #[serde(default)]
    pub quota: Option<SavedQuota>,
    /// Counters.
    pub requests: u64,
    /// Counters.
    pub failures: u64,
    /// Faults since the last success.
    pub consecutive_failures: u32,
    /// Last failure.
    pub last_error: Option<String>,
    /// Prefill rejected (kept for older readers).
    #[serde(default)]
    pub no_prefill: bool,
    /// Prefill rejected until then.
    #[serde(default)]
    pub no_prefill_until_unix_ms: Option<u64>,
    /// Models seen to stream tool-call arguments (see [`HealthBook::streams_calls`]).
    #[serde(default)]
    pub calls_streamed: Vec<String>,
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
    /// Account cannot pay.
    Billing {
        /// Until then, unless reset.
        until_unix_ms: Option<u64>,
    },
}

/// `now + d`, saturating far in the future instead of overflowing (a config value of
/// `u64::MAX` seconds must not panic the daemon).
pub fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Whole seconds from `now` to `t`, rounded up.
pub fn secs_left(t: Instant, now: Instant) -> u64 {
    t.saturating_duration_since(now).as_secs_f64().ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Api;
    use crate::router::quota::Room;

    fn book(n: usize) -> HealthBook {
        let cfgs: Vec<ProviderConfig> = (0..n)
            .map(|i| ProviderConfig {
                priority: i as u32,
                price_input_per_mtok: 10.0,
                price_output_per_mtok: 10.0,
                ..ProviderConfig::new(format!("p{i}"), Api::Openai, "http://x", "m")
            })
            .collect();
        HealthBook::new(&cfgs, RoutingConfig::default())
    }

    /// A provider paused by a `429` is not called healthy in the ranking a request's record
    /// keeps (`mythos why`).
    #[tokio::test(start_paused = true)]
    async fn a_paused_provider_is_ranked_with_its_pause() {
        let mut book = book(2);
        let now = Instant::now();
        let cost = Cost::request(100, 100);
        book.providers[0]
            .quota
            .rate_limited(cost, now + Duration::from_secs(93), now);
        let ranked = book.rank(TaskKind::Chat, now);
        let note = |i: usize| &ranked.iter().find(|r| r.index == i).unwrap().note;
        assert_eq!(note(0), "rate limited, 93 s left");
        assert_eq!(note(1), "healthy");
    }

    /// The lid closed overnight: a provider paused for an hour by a `429`, one whose breaker
    /// opened, one whose quota was spent for an hour are all usable in the morning, and one
    /// paused for a day has the night taken off its wait.
    #[tokio::test(start_paused = true)]
    async fn a_night_asleep_counts_toward_every_wait() {
        use crate::provider::ratelimit::{Announced, QuotaKind, RateLimits};
        let mut book = book(4);
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        let cost = Cost::request(100, 100);
        book.providers[0].quota.rate_limited(cost, now + hour, now);
        book.trip(1, now);
        let mut spent = RateLimits::default();
        spent.quotas[QuotaKind::Requests.index()] = Some(Announced {
            limit: Some(1),
            remaining: Some(0),
            reset_in: Some(hour),
        });
        let seq = book.providers[2].quota.reserve(cost);
        book.providers[2].quota.observe(seq, &spent, true, now);
        book.providers[3].quota.block(now + 24 * hour);
        for i in 0..2 {
            assert_ne!(book.state_of(i, now).0, BreakerState::Closed, "p{i}");
        }
        assert!(!matches!(
            book.providers[2].quota.room(cost, now),
            Room::Now
        ));
        // Eight hours of suspend: `Instant` moved a second.
        let later = now + Duration::from_secs(1);
        book.slept(8 * hour, later);
        for i in 0..2 {
            assert!(
                matches!(
                    book.state_of(i, later).0,
                    BreakerState::Closed | BreakerState::HalfOpen
                ),
                "p{i}: {:?}",
                book.state_of(i, later)
            );
        }
        assert_eq!(book.providers[2].quota.room(cost, later), Room::Now);
        let (state, left) = book.state_of(3, later);
        assert_eq!(state, BreakerState::Overloaded);
        let left = left.unwrap();
        assert!(left <= 16 * hour && left > 15 * hour, "{left:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn billed_cost_moves_the_background_ranking() {
        // Same list price, but the primary's answers turn out 10x as expensive per 1K tokens
        // (long, output-heavy answers at a steep output price).
        let mut book = book(2);
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

    #[tokio::test(start_paused = true)]
    async fn one_failure_keeps_the_route_a_sustained_five_percent_moves_it() {
        let mut book = book(2);
        let now = Instant::now();
        let first = |book: &mut HealthBook| book.rank(TaskKind::Chat, now)[0].index;
        // One request that failed outright (no retry recovered it).
        book.record_outcome(0, false, now);
        assert_eq!(first(&mut book), 0, "one failure is noise");
        // A busy afternoon at a 5 % error rate: 400 requests.
        let mut book = book_with(2, |b| {
            for n in 0..400 {
                b.record_outcome(0, n % 20 != 0, now);
                b.record_outcome(1, true, now);
            }
        });
        assert_eq!(
            first(&mut book),
            1,
            "a sustained 5 % error rate is not noise"
        );
    }

    fn book_with(n: usize, f: impl FnOnce(&mut HealthBook)) -> HealthBook {
        let mut b = book(n);
        f(&mut b);
        b
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_on_repeated_faults_only() {
        let mut book = book(1);
        let now = Instant::now();
        // 30 % faults at random stay in.
        for n in 0..100 {
            let fault = n % 10 < 3;
            assert_eq!(
                book.record_attempt(0, fault, false, now),
                None,
                "attempt {n}"
            );
        }
        // A dead provider is out after five faults in a row.
        let mut book = book_with(1, |_| {});
        for n in 0..4 {
            assert_eq!(book.record_attempt(0, true, false, now), None, "fault {n}");
        }
        let until = book.record_attempt(0, true, false, now).expect("tripped");
        assert_eq!(until, now + RoutingConfig::default().cooldown);
        // Faults spread over more than the horizon do not add up.
        let mut book = book_with(1, |_| {});
        for n in 0..10u64 {
            let t = now + BREAKER_HORIZON.mul_f64(0.3) * n as u32;
            assert_eq!(book.record_attempt(0, true, false, t), None, "fault {n}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fast_failures_among_many_healthy_streams_do_not_trip() {
        let mut book = book(1);
        let now = Instant::now();
        // 64 streams start; the first five to end are fast 502s.
        book.providers[0].in_flight = 64;
        for _ in 0..5 {
            assert_eq!(book.record_attempt(0, true, false, now), None);
            book.providers[0].in_flight -= 1;
        }
        // A provider failing everything trips once its streams are gone.
        for _ in 0..59 {
            book.providers[0].in_flight -= 1;
        }
        book.providers[0].in_flight = 1;
        assert!(book.record_attempt(0, true, false, now).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn probes_close_or_double() {
        let mut book = book(1);
        let now = Instant::now();
        let cooldown = RoutingConfig::default().cooldown;
        let t0 = book.trip(0, now);
        book.tick(t0);
        assert!(matches!(
            book.providers[0].breaker,
            Breaker::HalfOpen { .. }
        ));
        // A failed probe doubles the cooldown.
        let t1 = book.record_attempt(0, true, true, t0).expect("reopened");
        assert_eq!(t1 - t0, cooldown * 2);
        book.tick(t1);
        // A successful one closes it, and is kept as the sign that the provider answers again.
        assert_eq!(book.record_attempt(0, false, true, t1), None);
        assert_eq!(book.providers[0].breaker, Breaker::Closed);
        assert!(book.answered_since(0, t0));
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_scales_with_the_prompt_and_allows_reasoning() {
        let cfgs = [
            ProviderConfig::new("fast", Api::Openai, "http://x", "gpt-4o"),
            ProviderConfig::new("thinker", Api::Openai, "http://x", "o3"),
        ];
        let mut book = HealthBook::new(&cfgs, RoutingConfig::default());
        let now = Instant::now();
        for _ in 0..10 {
            book.record_ttft(0, Duration::from_millis(400), now);
        }
        let c = RoutingConfig::default();
        // Short chats: the floor.
        assert_eq!(
            book.watchdog(0, 100).0,
            c.watchdog_floor + c.first_token_per_1k_input / 10
        );
        // A 100k-token prompt gets 20 s more to be read.
        assert_eq!(
            book.watchdog(0, 100_000).0,
            c.watchdog_floor + Duration::from_secs(20)
        );
        // A silent reasoner gets minutes.
        assert_eq!(book.watchdog(1, 100).0, c.reasoning_first_token_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn overflowing_cooldowns_are_bounded() {
        let cfg = RoutingConfig {
            cooldown: Duration::from_secs(u64::MAX / 2),
            max_cooldown: Duration::from_secs(u64::MAX / 2),
            ..RoutingConfig::default()
        };
        let cfgs = [ProviderConfig::new("p", Api::Openai, "http://x", "m")];
        let mut book = HealthBook::new(&cfgs, cfg);
        let now = Instant::now();
        let t = book.trip(0, now);
        book.tick(t.min(now + Duration::from_secs(1)));
        let _ = book.record_attempt(0, true, true, now);
    }
}
