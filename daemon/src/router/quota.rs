//! Pacing by the quotas providers announce.
//!
//! Each response tells how much of each quota is left and when it is whole again
//! ([`crate::provider::ratelimit`]). Between two announcements the estimate moves two ways:
//!
//! - **down** by what this daemon sent since: every attempt reserves its estimated cost (one
//!   request; prompt tokens plus `max_tokens`) when it is dispatched, and the reservation stays
//!   counted until the provider's answer to that very request is read. A figure from another
//!   response may or may not include it (a request sent first can reach the provider last, on a
//!   connection still being opened), so it is counted until then: an estimate that errs low
//!   costs a little waiting, one that errs high costs a `429`. Answers also come back in
//!   another order than the provider counted them, so of two figures for the same quota the
//!   lower one (each refilled to now) is kept;
//! - **up** as the quota refills: providers use token buckets, so by default the estimate
//!   refills steadily from the announced remainder to the limit at the announced reset. A `429`
//!   that arrives while the estimate said there was room proves the refill is not steady (a fixed
//!   window), and from then on capacity is only assumed back at the reset itself.
//!
//! A provider that has never answered yet may announce quotas we do not know: until its first
//! response, only one request at a time is sent to it, so a burst of 50 does not become 50
//! upstream `429`s. A provider whose successful answers carry no quota headers is not paced.
//!
//! Running out of quota is not a fault: it never touches the success rate or the breaker. The
//! router skips a provider whose estimate cannot take a request and comes back to it exactly when
//! the estimate says the quota has room again.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::wallclock::{earlier, from_unix_ms, to_unix_ms};
use crate::provider::ratelimit::{QuotaKind, RateLimits};

/// What one request is expected to take from each quota, indexed by [`QuotaKind::index`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cost(pub [f64; 4]);

impl Cost {
    /// One request of `input_tokens` (estimated) that may produce up to `max_tokens`. Token
    /// quotas count `max_tokens` up front, as OpenAI and Anthropic do when they admit a request.
    pub fn request(input_tokens: u64, max_tokens: u32) -> Cost {
        let (i, o) = (input_tokens as f64, f64::from(max_tokens));
        Cost([1.0, i + o, i, o])
    }

    /// This cost with at most `limit` output tokens.
    pub fn output_at_most(self, limit: f64) -> Cost {
        let [requests, _, input, output] = self.0;
        let output = output.min(limit);
        Cost([requests, input + output, input, output])
    }

    fn get(&self, kind: QuotaKind) -> f64 {
        self.0[kind.index()]
    }
}

/// One quota as last announced.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bucket {
    limit: Option<f64>,
    /// Announced remainder at `observed`.
    remaining: f64,
    observed: Instant,
    /// When the provider said the quota is whole again.
    reset_at: Option<Instant>,
}

/// Whether, and when, a provider's quotas can take a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Room {
    /// Now.
    Now,
    /// Not before this instant.
    At(Instant),
    /// When requests already sent to it are answered (its first response is awaited, or its
    /// remainder is all reserved by requests in flight).
    AfterPending,
    /// Never: the request is larger than the quota itself.
    Never,
}

/// The quota estimate of one provider.
#[derive(Debug, Clone, Default)]
pub struct Quota {
    buckets: [Option<Bucket>; 4],
    /// Reservations whose own response has not been read: (sequence number, cost).
    pending: Vec<(u64, Cost)>,
    next_seq: u64,
    /// The provider asked for a pause (a `429`, or a `503` with `Retry-After`) until then.
    blocked_until: Option<Instant>,
    /// The part of that pause a `429` asked for: its quota is spent (as opposed to a server
    /// that was overloaded), which is what the client is told.
    limited_until: Option<Instant>,
    /// `None` until a successful response shows whether the provider announces quotas.
    announces: Option<bool>,
    /// A 429 showed that capacity comes back at the reset, not steadily before it; believed
    /// until then (see [`Quota::rate_limited`]).
    fixed_until: Option<Instant>,
    /// How long the last such 429 was believed: the next one within an hour of its end is
    /// believed twice as long.
    fixed_for: Duration,
    /// Prompt tokens the provider counted per estimated one (see [`Quota::learn_input`]), at
    /// least 1; `None` until a prompt long enough to tell was counted.
    input_scale: Option<f64>,
    /// An answer told how the provider counts prompts (any answer: a short prompt's teaches
    /// no ratio, but shows the estimate was not far off).
    counted: bool,
    /// When an error response's figures (a `429`'s own headers) said the quota was spent
    /// while the estimate before them had room for every request in flight: read by
    /// [`Quota::rate_limited`], which comes after those figures replaced the estimate.
    unforeseen: Option<Instant>,
    /// A provider that does not announce its quotas answered `429`: when its pause ends, it
    /// takes one request at a time until one is answered, as before its first answer (and then
    /// what its learnt quota allows). Its
    /// whole queue, let go at once, got `429` but for the first few (91 % of its upstream
    /// requests at 64 clients in a chaos run).
    after_pause: bool,
    /// Answers since the last `429` pause of a provider that announces nothing.
    answered_since_pause: u32,
    /// Its requests quota is learnt, not announced (see [`Quota::rate_limited`]): each answer
    /// takes one from it, as no header will.
    learnt: bool,
    /// The largest request (each kind apart, as reserved) the provider answered: one whose
    /// output is no larger is never "larger than the quota", whatever the output figures
    /// announced since say (see [`Quota::room`]).
    proven: Cost,
}

/// Prompts shorter than this (estimated tokens) teach nothing about their density: the tokens a
/// provider adds around every prompt (its template, the roles) are most of a short one.
const LEARN_INPUT_MIN: u64 = 500;

/// The most a prompt's estimate is scaled by: a provider that counts more than this is
/// counting something else (a tool's definitions, a system prompt of its own).
const INPUT_SCALE_MAX: f64 = 8.0;

/// The longest a 429 that the estimate did not foresee makes refills count only at the reset.
/// Such a 429 may come from a limit the headers do not show (a daily or an organisation's
/// limit) rather than from the window's shape; believed for ever, it slowed the provider's
/// pacing for good, across restarts.
const FIXED_WINDOW_MEMORY: Duration = Duration::from_secs(3600);

/// The shortest such belief: a minute's window and the next.
const FIXED_WINDOW_FIRST: Duration = Duration::from_secs(120);

/// The longest a spent quota's announced reset is taken on trust: past this since it was
/// announced, one request at a time goes to ask again. A provider announced a reset in 10^9 s
/// once, with nothing remaining, and was held for a day (the header cap) until `mythos reset`;
/// a real daily quota that is spent costs one upstream `429` per check. The same as the
/// default longest pause (`max_cooldown_secs`).
pub const LONG_RESET_CHECK: Duration = Duration::from_secs(900);

impl Quota {
    /// The machine slept for `gap`: windows went on refilling and resets came meanwhile.
    pub fn slept(&mut self, gap: Duration, now: Instant) {
        let back = |t: Instant| earlier(t, gap, now);
        for b in self.buckets.iter_mut().flatten() {
            b.observed = back(b.observed);
            b.reset_at = b.reset_at.map(back);
        }
        self.blocked_until = self.blocked_until.map(back);
        self.limited_until = self.limited_until.map(back);
        self.fixed_until = self.fixed_until.map(back);
    }

    /// Count a request dispatched now; returns its reservation's sequence number.
    pub fn reserve(&mut self, cost: Cost) -> u64 {
        self.next_seq += 1;
        let cost = self.scaled(cost);
        self.pending.push((self.next_seq, cost));
        self.next_seq
    }

    /// A prompt estimated at `estimated` tokens was counted as `actual` by the provider (its
    /// usage, cached tokens included: the estimate is of the whole prompt).
    ///
    /// The estimate assumes ~4 bytes a token, right for English prose; code, CJK text and
    /// numbers have more tokens per byte. Reserved at the estimate, requests in flight on a
    /// token quota took about twice what was reserved for them, and a provider's 429s the
    /// headers had foreseen came anyway (43 % of upstream requests in a test of dense
    /// prompts). So the reservations of prompts are scaled by what the provider counted of
    /// the recent ones: a moving average of their ratios, never below 1 (where the estimate
    /// counts more than the provider, as for a prompt mostly read from a cache that the quota
    /// does not charge, the estimate stays as it was).
    pub fn learn_input(&mut self, estimated: u64, actual: u64) {
        self.counted = true;
        if estimated < LEARN_INPUT_MIN || actual == 0 {
            return;
        }
        let ratio = (actual as f64 / estimated as f64).clamp(1.0, INPUT_SCALE_MAX);
        self.input_scale = Some(self.input_scale.map_or(ratio, |s| 0.7 * s + 0.3 * ratio));
    }

    /// `cost` with its prompt tokens scaled by what was learnt (see [`Quota::learn_input`]).
    fn scaled(&self, cost: Cost) -> Cost {
        let [requests, _, input, output] = cost.0;
        let input = input * self.input_scale.unwrap_or(1.0);
        Cost([requests, input + output, input, output])
    }

    /// The request `seq` is over; if no response of the provider counted it, stop counting it.
    pub fn settle(&mut self, seq: u64) {
        self.pending.retain(|(s, _)| *s != seq);
    }

    /// Take in what the response to request `seq` announced at `now`. `success` tells a normal
    /// answer from an error response (whose missing headers prove nothing).
    pub fn observe(&mut self, seq: u64, limits: &RateLimits, success: bool, now: Instant) {
        // Judged before the response's figures replace the estimate: a 429 that carries them
        // says the quota is spent, which the estimate then always agrees with, and no fixed
        // window was ever recognised (one self-inflicted 429 per window, for good, from a
        // provider that announces quotas on its 429s as Anthropic and OpenAI do).
        self.unforeseen = (!success
            && self.announces == Some(true)
            && self.room_ignoring_block(Cost([0.0; 4]), now) == Room::Now)
            .then_some(now);
        if success {
            if let Some((_, c)) = self.pending.iter().find(|(s, _)| *s == seq) {
                for (p, c) in self.proven.0.iter_mut().zip(c.0) {
                    *p = p.max(c);
                }
            }
            self.after_pause = false;
            if self.announces != Some(true) && !limits.announces() {
                self.answered_since_pause = self.answered_since_pause.saturating_add(1);
                self.take_learnt(now);
            }
        }
        if limits.announces() {
            self.announces = Some(true);
        } else if success && self.announces.is_none() {
            self.announces = Some(false);
        }
        // The provider's figure includes `seq` itself.
        self.settle(seq);
        for kind in QuotaKind::ALL {
            let Some(a) = limits.get(kind) else { continue };
            let Some(remaining) = a.remaining else {
                continue;
            };
            let fresh = Bucket {
                limit: a.limit.map(|l| l as f64),
                remaining: remaining as f64,
                observed: now,
                reset_at: a.reset_in.map(|d| now + d),
            };
            // An answer read later may carry an older count: keep the lower estimate, unless
            // the limit changed or the kept figure's window is over.
            // Nor a far reset whose check is due (see `LONG_RESET_CHECK`): this answer is the
            // check's, and kept as the lower count, the far reset went on holding the provider
            // to one request at a time after its check said the quota had room.
            let keep = self.buckets[kind.index()].is_some_and(|old| {
                old.limit == fresh.limit
                    && old.reset_at.is_some_and(|t| {
                        t > now
                            && (t <= old.observed + LONG_RESET_CHECK
                                || now < old.observed + LONG_RESET_CHECK)
                    })
                    && self.level(&old, now) < fresh.remaining
            });
            if !keep {
                self.buckets[kind.index()] = Some(fresh);
            }
        }
    }

    /// The provider answered `429`: it has no room until `until`. If the estimate said it had,
    /// the estimate was too generous: assume fixed windows for a while.
    ///
    /// For how long grows with the evidence. The first such 429 is believed for two of the
    /// longest announced windows (two minutes at least): one 429 that a steady refill did not
    /// foresee held a token bucket's pacing to full resets for an hour, so requests waited a
    /// minute for room that came back within seconds. Each further one, while believed or
    /// within an hour of that, doubles it, up to an hour: a provider that really refills at
    /// the reset costs a few 429s (each one failed over, not shown) until it is believed.
    ///
    /// Not before an answer told how the provider counts prompts, where it has token quotas:
    /// until then the surprise may be the estimate's (dense prompts), not the window's, and
    /// believing it slowed the provider's pacing for minutes.
    pub fn rate_limited(&mut self, cost: Cost, until: Instant, now: Instant) {
        let tokens_quota = [QuotaKind::Tokens, QuotaKind::InputTokens]
            .iter()
            .any(|k| self.buckets[k.index()].is_some());
        // The figures this 429 carried, if any, were read just before (same attempt).
        let unforeseen = self
            .unforeseen
            .take()
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
        if (unforeseen || self.room_ignoring_block(cost, now) == Room::Now)
            && self.announces == Some(true)
            && (self.counted || !tokens_quota)
        {
            let recent = self
                .fixed_until
                .is_some_and(|t| now < t + FIXED_WINDOW_MEMORY);
            let window = self
                .buckets
                .iter()
                .flatten()
                .filter_map(|b| Some(b.reset_at?.saturating_duration_since(b.observed)))
                .max()
                .unwrap_or_default();
            let first = (window * 2).clamp(FIXED_WINDOW_FIRST, FIXED_WINDOW_MEMORY);
            self.fixed_for = if recent {
                (self.fixed_for * 2).clamp(first, FIXED_WINDOW_MEMORY)
            } else {
                first
            };
            self.fixed_until = Some(now + self.fixed_for);
        }
        self.block(until);
        self.limited_until = Some(self.limited_until.map_or(until, |t| t.max(until)));
        if self.announces != Some(true) {
            self.after_pause = true;
            // What it answered since its last pause is what its window holds: a learnt
            // quota, whole again when this pause ends. Its queue, let go at the end of each
            // pause, got 429s for all but the first few (~45 a window at 64 clients).
            let answered = f64::from(self.answered_since_pause.max(1));
            // The other 429s of the same burst come within the pause, with nothing answered
            // since the first: they keep what it learnt (taken as 1, the window let one
            // request go, and the next answer dropped the pacing: a flood at every pause).
            let slot = &mut self.buckets[QuotaKind::Requests.index()];
            let limit = match slot {
                Some(b) if self.learnt && b.reset_at.is_some_and(|t| t > now) => {
                    b.limit.unwrap_or(1.0).max(answered)
                }
                _ => answered,
            };
            *slot = Some(Bucket {
                limit: Some(limit),
                remaining: 0.0,
                observed: now,
                reset_at: Some(until.max(slot.and_then(|b| b.reset_at).unwrap_or(until))),
            });
            self.learnt = true;
            self.answered_since_pause = 0;
        }
    }

    /// An answer of a provider whose requests quota is learnt takes one from it. Once its
    /// window is over, the next one starts at this answer, with no known end: when it is
    /// spent, one request at a time goes until a `429` tells again (see the `None` case of
    /// [`Quota::room`]'s look at each bucket).
    fn take_learnt(&mut self, now: Instant) {
        if !self.learnt {
            return;
        }
        let slot = &mut self.buckets[QuotaKind::Requests.index()];
        let Some(b) = slot else { return };
        let limit = b.limit.unwrap_or(1.0);
        if b.reset_at.is_some_and(|t| now >= t) {
            *b = Bucket {
                limit: Some(limit),
                remaining: limit,
                observed: now,
                reset_at: None,
            };
        } else if b.remaining < 1.0 {
            // Answered past what was learnt: the window holds more (the 429 was not its end).
            // Paced one at a time for good, random 429s of a healthy provider slowed it.
            *slot = None;
            self.learnt = false;
            return;
        }
        b.remaining = (b.remaining - 1.0).max(0.0);
    }

    /// No request before `until` (a `Retry-After`).
    pub fn block(&mut self, until: Instant) {
        self.blocked_until = Some(self.blocked_until.map_or(until, |t| t.max(until)));
    }

    /// Whether capacity is believed to come back at the reset only.
    fn fixed(&self, now: Instant) -> bool {
        self.fixed_until.is_some_and(|t| t > now)
    }

    /// When the provider asked not to be called before.
    pub fn blocked_until(&self, now: Instant) -> Option<Instant> {
        self.blocked_until.filter(|&t| t > now)
    }

    /// Until when a `429` paused it (within [`Quota::blocked_until`]).
    pub fn limited_until(&self, now: Instant) -> Option<Instant> {
        self.limited_until.filter(|&t| t > now)
    }

    /// Whether its quota keeps a request of `cost` out now: a `429`'s pause, or a window that
    /// its headers say has no room (an overloaded server's pause is not a quota).
    pub fn out_of_quota(&self, cost: Cost, now: Instant) -> bool {
        self.limited_until(now).is_some() || self.room_ignoring_block(cost, now) != Room::Now
    }

    /// Forget a pause and what was learnt about the windows (`mythos reset`).
    ///
    /// The announced figures go too: a provider that once announced nonsense (a limit of 0, a
    /// reset in years) is asked afresh, one request at a time until its next answer says how
    /// much it takes. Kept, they refused every request across `reset` and restarts.
    pub fn clear_block(&mut self) {
        self.blocked_until = None;
        self.limited_until = None;
        self.fixed_until = None;
        self.fixed_for = Duration::ZERO;
        self.buckets = Default::default();
        self.announces = None;
        self.unforeseen = None;
        self.after_pause = false;
        self.learnt = false;
        self.answered_since_pause = 0;
    }

    /// Whether a request of `cost` fits now, and if not, when it will.
    pub fn room(&self, cost: Cost, now: Instant) -> Room {
        match self.blocked_until(now) {
            // Whatever holds the room besides, nothing goes before the pause ends.
            Some(t) => match self.room_ignoring_block(cost, t) {
                Room::Now | Room::AfterPending => Room::At(t),
                other => other,
            },
            None => self.room_ignoring_block(cost, now),
        }
    }

    /// As [`Quota::room`], pauses aside; `cost` as estimated (it is scaled here, as the
    /// reservations it is added to were).
    fn room_ignoring_block(&self, cost: Cost, now: Instant) -> Room {
        if (self.announces.is_none() || self.after_pause) && !self.pending.is_empty() {
            return Room::AfterPending;
        }
        let cost = self.scaled(cost);
        let mut at: Option<Instant> = None;
        // Anthropic announces input and output tokens apart, and its combined `tokens` figures
        // are then the most restrictive of those limits (often the output one), not a budget
        // for input plus output: read as one, a long prompt was "larger than the quota" and
        // never sent.
        let split = self.buckets[QuotaKind::InputTokens.index()].is_some()
            || self.buckets[QuotaKind::OutputTokens.index()].is_some();
        for kind in QuotaKind::ALL {
            let Some(b) = self.buckets[kind.index()] else {
                continue;
            };
            if split && kind == QuotaKind::Tokens {
                continue;
            }
            let mut cost_here = cost.get(kind);
            if kind == QuotaKind::InputTokens {
                // Prompt tokens read from Anthropic's cache do not count against its input
                // limit, and the estimate cannot tell them apart: a prompt larger than the
                // whole limit waits for a full bucket rather than never going.
                cost_here = b.limit.map_or(cost_here, |l| cost_here.min(l));
            }
            if let Some(l) = b.limit.filter(|&l| cost_here > l) {
                // Larger than the whole quota. Anthropic counts `max_tokens` against its output
                // limit as a request starts, yet answered a coding agent's 32,000 at a limit of
                // 8,000 a minute: judged "never", every later request of the session failed at
                // once (or all went elsewhere) though the provider had just served one the same
                // size. What it has served waits for a full bucket instead, as a prompt larger
                // than the input limit does.
                // Output tokens only: OpenAI refuses a prompt and `max_tokens` over its
                // tokens-per-minute figure outright, and input is capped above already.
                if kind != QuotaKind::OutputTokens || cost_here > self.proven.get(kind) {
                    return Room::Never;
                }
                cost_here = l;
            }
            let reserved: f64 = self.pending.iter().map(|(_, c)| c.get(kind)).sum();
            let need = cost_here + reserved;
            if self.level(&b, now) >= need {
                continue;
            }
            match self.time_to(&b, need, now) {
                // Too far off to take on trust (see `LONG_RESET_CHECK`): checked by one
                // request once the check is due, and only one.
                Some(t) if t > b.observed + LONG_RESET_CHECK => {
                    let check = b.observed + LONG_RESET_CHECK;
                    if check > now {
                        at = Some(at.map_or(check, |a| a.max(check)));
                    } else if !self.pending.is_empty() {
                        return Room::AfterPending;
                    }
                }
                Some(t) => at = Some(at.map_or(t, |a| a.max(t))),
                // Only requests in flight hold the room: it comes back when they are answered.
                None if !self.pending.is_empty() => return Room::AfterPending,
                // Short, with no reset announced (some servers send `remaining` alone) and
                // nothing in flight whose answer would bring a new figure: one request goes,
                // as to a provider not yet known. Waiting would wait forever.
                None => {}
            }
        }
        match at {
            None => Room::Now,
            Some(t) => Room::At(t),
        }
    }

    /// Estimated quota level at `now` (before our pending reservations).
    fn level(&self, b: &Bucket, now: Instant) -> f64 {
        match (b.reset_at, b.limit) {
            (Some(reset), limit) if now >= reset => limit.unwrap_or(f64::INFINITY),
            (Some(reset), Some(limit)) if !self.fixed(now) && reset > b.observed => {
                let done = (now - b.observed).as_secs_f64() / (reset - b.observed).as_secs_f64();
                b.remaining + (limit - b.remaining).max(0.0) * done.clamp(0.0, 1.0)
            }
            _ => b.remaining,
        }
    }

    /// When the level reaches `need`, if refills are known to get it there.
    fn time_to(&self, b: &Bucket, need: f64, now: Instant) -> Option<Instant> {
        let reset = b.reset_at?;
        if reset <= now {
            // Whole again, and still short: only our own reservations are in the way.
            return None;
        }
        match b.limit {
            Some(limit) if need > limit => None,
            Some(limit) if !self.fixed(now) && limit > b.remaining && reset > b.observed => {
                // Steady refill from `remaining` at `observed` to `limit` at `reset`.
                let span = (reset - b.observed).as_secs_f64();
                let frac = ((need - b.remaining) / (limit - b.remaining)).clamp(0.0, 1.0);
                Some((b.observed + Duration::from_secs_f64(span * frac)).max(now))
            }
            _ => Some(reset),
        }
    }

    /// Every announced quota as estimated now: (kind, remaining, limit, whole again in).
    pub fn report(&self, now: Instant) -> Vec<(QuotaKind, u64, Option<u64>, Option<Duration>)> {
        QuotaKind::ALL
            .iter()
            .filter_map(|&kind| {
                let b = self.buckets[kind.index()]?;
                let reserved: f64 = self.pending.iter().map(|(_, c)| c.get(kind)).sum();
                let level = self.level(&b, now);
                let left = if level.is_finite() {
                    (level - reserved).max(0.0) as u64
                } else {
                    b.limit.unwrap_or(0.0) as u64
                };
                let reset = b.reset_at.filter(|&t| t > now).map(|t| t - now);
                Some((kind, left, b.limit.map(|l| l as u64), reset))
            })
            .collect()
    }

    /// Snapshot for persistence, with instants as Unix milliseconds.
    pub fn save(&self, now: Instant, now_unix_ms: u64) -> SavedQuota {
        let to_unix = |t: Instant| to_unix_ms(t, now, now_unix_ms);
        SavedQuota {
            buckets: self
                .buckets
                .iter()
                .map(|b| {
                    b.map(|b| SavedBucket {
                        limit: b.limit,
                        remaining: b.remaining,
                        observed_unix_ms: to_unix(b.observed),
                        reset_unix_ms: b.reset_at.map(to_unix),
                    })
                })
                .collect(),
            blocked_until_unix_ms: self.blocked_until(now).map(to_unix),
            limited_until_unix_ms: self.limited_until(now).map(to_unix),
            announces: self.announces,
            fixed_window: self.fixed(now),
            // Kept for an hour after it ended too: the next surprise then doubles it.
            fixed_window_until_unix_ms: self
                .fixed_until
                .filter(|&t| t + FIXED_WINDOW_MEMORY > now)
                .map(to_unix),
            fixed_window_ms: (!self.fixed_for.is_zero())
                .then_some(self.fixed_for.as_millis() as u64),
            input_scale: self.input_scale,
            counted: self.counted,
        }
    }

    /// Restore what [`Quota::save`] wrote (requests in flight then are over now).
    ///
    /// Deadlines are kept within what could have been announced from now (a pause within
    /// `max_pause`, a reset within a day, an observation not in the future): saved under a
    /// clock that ran ahead and was then corrected, they would shut a provider out for as long.
    pub fn restore(
        saved: &SavedQuota,
        now: Instant,
        now_unix_ms: u64,
        max_pause: Duration,
    ) -> Quota {
        let from_unix = |ms: u64| from_unix_ms(ms, now, now_unix_ms);
        let mut q = Quota {
            announces: saved.announces,
            // Saved before it expired: an hour from now at most.
            fixed_until: match saved.fixed_window_until_unix_ms {
                Some(ms) => (ms + FIXED_WINDOW_MEMORY.as_millis() as u64 > now_unix_ms)
                    .then(|| from_unix(ms).min(now + FIXED_WINDOW_MEMORY)),
                None => saved.fixed_window.then(|| now + FIXED_WINDOW_MEMORY),
            },
            fixed_for: saved.fixed_window_ms.map_or(Duration::ZERO, |ms| {
                Duration::from_millis(ms).min(FIXED_WINDOW_MEMORY)
            }),
            blocked_until: saved
                .blocked_until_unix_ms
                .filter(|&ms| ms > now_unix_ms)
                .map(|ms| from_unix(ms).min(now + max_pause)),
            limited_until: saved
                .limited_until_unix_ms
                .filter(|&ms| ms > now_unix_ms)
                .map(|ms| from_unix(ms).min(now + max_pause)),
            // A figure from a file is kept within what could have been learnt.
            input_scale: saved
                .input_scale
                .filter(|s| s.is_finite())
                .map(|s| s.clamp(1.0, INPUT_SCALE_MAX)),
            counted: saved.counted,
            ..Quota::default()
        };
        for (slot, b) in q.buckets.iter_mut().zip(&saved.buckets) {
            *slot = b.as_ref().map(|b| Bucket {
                // Saved by a version that took a limit of 0 for one.
                limit: b.limit.filter(|&l| l > 0.0),
                remaining: b.remaining,
                observed: from_unix(b.observed_unix_ms).min(now),
                reset_at: b
                    .reset_unix_ms
                    .map(|ms| from_unix(ms).min(now + crate::provider::ratelimit::MAX_HEADER_WAIT)),
            });
        }
        q
    }
}

/// Persisted form of a [`Quota`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedQuota {
    /// Buckets by [`QuotaKind::index`].
    pub buckets: Vec<Option<SavedBucket>>,
    /// The provider asked for a pause until then.
    pub blocked_until_unix_ms: Option<u64>,
    /// The part of it a `429` asked for.
    #[serde(default)]
    pub limited_until_unix_ms: Option<u64>,
    /// Whether its answers carry quota headers, once known.
    pub announces: Option<bool>,
    /// Capacity comes back at the reset only.
    pub fixed_window: bool,
    /// Until then.
    #[serde(default)]
    pub fixed_window_until_unix_ms: Option<u64>,
    /// For how long the last 429 that showed it was believed.
    #[serde(default)]
    pub fixed_window_ms: Option<u64>,
    /// Prompt tokens it counted per estimated one, once an answer told ([`Quota::learn_input`]):
    /// a restarted daemon does not send its first burst at the bare estimate again.
    #[serde(default)]
    pub input_scale: Option<f64>,
    /// An answer told how it counts prompts.
    #[serde(default)]
    pub counted: bool,
}

/// Persisted form of one quota.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedBucket {
    /// Limit per window.
    pub limit: Option<f64>,
    /// Remainder when announced.
    pub remaining: f64,
    /// When it was announced.
    pub observed_unix_ms: u64,
    /// When it is whole again.
    pub reset_unix_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ratelimit::Announced;

    fn limits(req: (u64, u64, u64), tok: Option<(u64, u64, u64)>) -> RateLimits {
        let a = |(limit, remaining, reset_ms): (u64, u64, u64)| Announced {
            limit: Some(limit),
            remaining: Some(remaining),
            reset_in: Some(Duration::from_millis(reset_ms)),
        };
        let mut r = RateLimits::default();
        r.quotas[QuotaKind::Requests.index()] = Some(a(req));
        r.quotas[QuotaKind::Tokens.index()] = tok.map(a);
        r
    }

    const ONE: Cost = Cost([1.0, 100.0, 60.0, 40.0]);

    #[tokio::test(start_paused = true)]
    async fn unknown_provider_gets_one_request_until_it_answers() {
        let now = Instant::now();
        let mut q = Quota::default();
        assert_eq!(q.room(ONE, now), Room::Now);
        let first = q.reserve(ONE);
        assert_eq!(q.room(ONE, now), Room::AfterPending);
        // It answered without quota headers: not paced at all.
        q.observe(first, &RateLimits::default(), true, now);
        for _ in 0..100 {
            q.reserve(ONE);
        }
        assert_eq!(q.room(ONE, now), Room::Now);
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_count_until_their_own_answer_is_read() {
        let now = Instant::now();
        let mut q = Quota::default();
        let s1 = q.reserve(ONE);
        // 3 requests left of 10, whole again in 7 s (steady: one back every second).
        q.observe(s1, &limits((10, 3, 7_000), None), true, now);
        let s2 = q.reserve(ONE);
        let s3 = q.reserve(ONE);
        let s4 = q.reserve(ONE);
        // Three sent since the figure: none left now, the next one back in a second.
        assert_eq!(q.room(ONE, now), Room::At(now + Duration::from_secs(1)));
        // s3 went out first on a fresh connection; the answer to s2 may not count it: 2 left
        // by the provider's count, s3 and s4 still counted by us.
        q.observe(s2, &limits((10, 2, 8_000), None), true, now);
        assert_eq!(q.room(ONE, now), Room::At(now + Duration::from_secs(1)));
        // s3's answer: 1 left, counting s3; s4 may or may not be in it, so it still counts.
        q.observe(s3, &limits((10, 1, 9_000), None), true, now);
        assert!(matches!(q.room(ONE, now), Room::At(_)));
        // A request that never reached the provider (connect error) stops counting.
        q.settle(s4);
        assert_eq!(q.room(ONE, now), Room::Now);
    }

    /// Dense prompts (code, CJK) have more tokens per byte than the estimate assumes: what the
    /// provider counted of recent prompts scales what later ones reserve, so requests in flight
    /// no longer overrun a token quota the headers announced (43 % of upstream requests were
    /// 429s in a test of such prompts). A prompt it counts as fewer tokens (read from a cache)
    /// changes nothing, and short prompts teach nothing.
    #[tokio::test(start_paused = true)]
    async fn prompts_reserve_what_the_provider_counted_of_recent_ones() {
        let now = Instant::now();
        // 10,000 tokens left of 10,000 for 60 s; a request of 1,000 prompt tokens (estimated)
        // and no output.
        let prompt = Cost([1.0, 1_000.0, 1_000.0, 0.0]);
        let fresh = || {
            let mut q = Quota::default();
            let s = q.reserve(prompt);
            q.observe(
                s,
                &limits((100, 100, 60_000), Some((10_000, 10_000, 60_000))),
                true,
                now,
            );
            q
        };
        let in_flight = |q: &mut Quota| {
            let mut n = 0;
            while q.room(prompt, now) == Room::Now {
                q.reserve(prompt);
                n += 1;
            }
            n
        };
        assert_eq!(in_flight(&mut fresh()), 10);
        // The provider counted twice the estimate, again and again.
        let mut q = fresh();
        for _ in 0..10 {
            q.learn_input(1_000, 2_000);
        }
        assert_eq!(in_flight(&mut q), 5);
        // Counted as fewer (a cached prompt), or short prompts: the estimate as it was.
        let mut q = fresh();
        q.learn_input(1_000, 100);
        q.learn_input(100, 800);
        assert_eq!(in_flight(&mut q), 10);
        // A ratio beyond reason is taken as at most 8.
        let mut q = fresh();
        q.learn_input(1_000, 1_000_000);
        assert_eq!(in_flight(&mut q), 1);
    }

    /// A 429 on a token quota before any answer told how the provider counts prompts proves
    /// nothing about its window: the estimate of the prompts may have been short.
    #[tokio::test(start_paused = true)]
    async fn a_429_before_prompts_were_counted_is_not_taken_for_a_fixed_window() {
        let now = Instant::now();
        // Room for the request by the headers (150 tokens of 600 left): a 429 is a surprise.
        let fresh = || {
            let mut q = Quota::default();
            let s = q.reserve(ONE);
            q.observe(
                s,
                &limits((60, 59, 60_000), Some((600, 150, 60_000))),
                true,
                now,
            );
            q
        };
        let later = now + Duration::from_secs(1);
        let mut q = fresh();
        q.rate_limited(ONE, later, now);
        assert!(!q.fixed(later), "believed before any prompt was counted");
        // Once an answer was counted, the same surprise is believed.
        let mut q = fresh();
        q.learn_input(10, 12);
        q.rate_limited(ONE, later, now);
        assert!(q.fixed(later));
    }

    /// Anthropic and OpenAI send their quota headers on a `429` too, saying nothing is left:
    /// the fixed window is recognised from what the estimate said before those figures, not
    /// after (when it always agreed with the 429), or a request went into the spent window
    /// once per window, for good (found by a chaos run).
    #[tokio::test(start_paused = true)]
    async fn a_429_that_carries_its_quota_still_proves_a_fixed_window() {
        let now = Instant::now();
        let mut q = Quota::default();
        let s = q.reserve(ONE);
        // 4 a window of 10 s, none left: steady, one back every 2.5 s.
        q.observe(s, &limits((4, 0, 10_000), None), true, now);
        let later = now + Duration::from_millis(2_500);
        assert_eq!(q.room(ONE, later), Room::Now);
        let s = q.reserve(ONE);
        q.observe(s, &limits((4, 0, 7_500), None), false, later);
        q.rate_limited(ONE, later + Duration::from_secs(2), later);
        assert!(q.fixed(later), "the 429 was not foreseen");
        let reset = now + Duration::from_secs(10);
        assert_eq!(q.room(ONE, later + Duration::from_secs(3)), Room::At(reset));
        // A 429 that the estimate foresaw (its room taken by requests in flight when it was
        // sent) proves nothing.
        let mut q = Quota::default();
        let s = q.reserve(ONE);
        q.observe(s, &limits((4, 1, 10_000), None), true, now);
        let a = q.reserve(ONE);
        let b = q.reserve(ONE);
        q.observe(b, &limits((4, 0, 10_000), None), false, now);
        q.rate_limited(ONE, now + Duration::from_secs(2), now);
        assert!(!q.fixed(now));
        q.settle(a);
    }

    /// A provider that announces no quota and answered `429` gets, when its pause ends, what
    /// it answered between its pauses, one request first: its whole queue let go at once got
    /// 429s but for the first few (~45 a window at 64 clients in a chaos run). Spent, that
    /// learnt quota lets one request at a time go until the next 429 tells again.
    #[tokio::test(start_paused = true)]
    async fn a_silent_provider_is_paced_by_what_it_answered_between_pauses() {
        let now = Instant::now();
        let silent = RateLimits::default();
        let mut q = Quota::default();
        for _ in 0..5 {
            let s = q.reserve(ONE);
            q.observe(s, &silent, true, now);
        }
        q.reserve(ONE);
        assert_eq!(q.room(ONE, now), Room::Now, "not paced while it answers");
        let mut q = Quota::default();
        for _ in 0..5 {
            let s = q.reserve(ONE);
            q.observe(s, &silent, true, now);
        }
        let until = now + Duration::from_secs(10);
        q.rate_limited(ONE, until, now);
        // The rest of the burst's 429s, nothing answered between them, keep what was learnt.
        for _ in 0..20 {
            q.rate_limited(ONE, until, now + Duration::from_millis(5));
        }
        assert_eq!(q.room(ONE, now), Room::At(until));
        let first = q.reserve(ONE);
        assert_eq!(q.room(ONE, until), Room::AfterPending, "one first");
        q.observe(first, &silent, true, until);
        let mut sent = vec![];
        while q.room(ONE, until) == Room::Now && sent.len() < 10 {
            sent.push(q.reserve(ONE));
        }
        assert_eq!(sent.len(), 4, "the window's other four");
        for s in sent {
            q.observe(s, &silent, true, until);
        }
        // Spent: one request at a time until a 429 or its answer says more...
        assert_eq!(q.room(ONE, until), Room::Now);
        let probe = q.reserve(ONE);
        assert_eq!(q.room(ONE, until), Room::AfterPending);
        // ...here an answer: the window holds more than was learnt, and pacing ends.
        q.observe(probe, &silent, true, until);
        q.reserve(ONE);
        q.reserve(ONE);
        assert_eq!(q.room(ONE, until), Room::Now);
    }

    /// `mythos reset` forgets announced figures too: nonsense once announced (a reset a year
    /// away) no longer holds the provider, which is asked afresh, one request first.
    #[tokio::test(start_paused = true)]
    async fn reset_forgets_what_was_announced() {
        let now = Instant::now();
        let mut q = Quota::default();
        let s = q.reserve(ONE);
        q.observe(s, &limits((10, 0, 86_400_000), None), true, now);
        assert!(matches!(q.room(ONE, now), Room::At(_)));
        q.clear_block();
        assert_eq!(q.room(ONE, now), Room::Now);
        q.reserve(ONE);
        assert_eq!(q.room(ONE, now), Room::AfterPending);
    }

    #[tokio::test(start_paused = true)]
    async fn steady_refill_until_a_429_proves_a_fixed_window() {
        let now = Instant::now();
        let mut q = Quota::default();
        let s = q.reserve(ONE);
        q.observe(s, &limits((60, 0, 60_000), None), true, now);
        // A token bucket: one request back per second.
        assert_eq!(q.room(ONE, now), Room::At(now + Duration::from_secs(1)));
        let later = now + Duration::from_secs(1);
        assert_eq!(q.room(ONE, later), Room::Now);
        // The provider disagrees: 429 until the window ends.
        q.rate_limited(ONE, now + Duration::from_secs(60), later);
        assert_eq!(q.room(ONE, later), Room::At(now + Duration::from_secs(60)));
        // From now on, room only at a reset.
        let s = q.reserve(ONE);
        let t = now + Duration::from_secs(60);
        q.observe(s, &limits((60, 0, 60_000), None), true, t);
        assert_eq!(
            q.room(ONE, t + Duration::from_secs(1)),
            Room::At(t + Duration::from_secs(60))
        );
        // One such 429 is believed for two windows (it may have come from a limit the headers
        // do not show, and a token bucket paced by full resets waits a minute for room that
        // comes back in a second), also across a restart; then refills count as steady again.
        let saved = q.save(t, 1_000_000);
        let r = Quota::restore(&saved, t, 1_000_000, Duration::from_secs(900));
        assert_eq!(
            r.room(ONE, t + Duration::from_secs(1)),
            Room::At(t + Duration::from_secs(60))
        );
        let steady = |q: &mut Quota, at: Instant| {
            let s = q.reserve(ONE);
            q.observe(s, &limits((60, 0, 60_000), None), true, at);
            q.room(ONE, at) == Room::At(at + Duration::from_secs(1))
        };
        let mut at = later + Duration::from_secs(120);
        assert!(steady(&mut q, at), "steady again after two minutes");
        // Each further surprise soon after is believed twice as long, up to an hour.
        let mut believed = Vec::new();
        for _ in 0..7 {
            at += Duration::from_secs(1);
            q.rate_limited(ONE, at + Duration::from_secs(60), at);
            let mut span = 0;
            while !steady(&mut q, at + Duration::from_secs(span)) {
                span += 60;
            }
            believed.push(span);
            at += Duration::from_secs(span);
        }
        assert_eq!(believed, [240, 480, 960, 1920, 3600, 3600, 3600]);
        // An hour after the last belief ended, a surprise counts as the first again.
        at += Duration::from_secs(3600 + 1);
        q.rate_limited(ONE, at + Duration::from_secs(60), at);
        assert!(!steady(&mut q, at + Duration::from_secs(119)));
        assert!(steady(&mut q, at + Duration::from_secs(120)));
    }

    /// The doubling survives a restart after the belief ended: a daemon restarted within the
    /// hour believes the next surprise twice as long, not two minutes again.
    #[tokio::test(start_paused = true)]
    async fn a_repeated_surprise_doubles_across_a_restart() {
        let t = Instant::now();
        let mut q = Quota::default();
        let s = q.reserve(ONE);
        q.observe(s, &limits((60, 30, 60_000), None), true, t);
        q.rate_limited(ONE, t + Duration::from_secs(60), t);
        let later = t + Duration::from_secs(300);
        assert!(!q.fixed(later), "two minutes, over");
        let saved = q.save(later, 1_000_000);
        let mut r = Quota::restore(&saved, later, 1_000_000, Duration::from_secs(900));
        assert!(!r.fixed(later));
        let s = r.reserve(ONE);
        r.observe(s, &limits((60, 30, 60_000), None), true, later);
        r.rate_limited(ONE, later + Duration::from_secs(60), later);
        assert!(r.fixed(later + Duration::from_secs(239)));
        assert!(!r.fixed(later + Duration::from_secs(241)));
    }

    #[tokio::test(start_paused = true)]
    async fn token_quota_counts_prompt_and_max_tokens() {
        let now = Instant::now();
        let mut q = Quota::default();
        let s = q.reserve(ONE);
        q.observe(
            s,
            &limits((100, 50, 1_000), Some((10_000, 5_000, 10_000))),
            true,
            now,
        );
        let big = Cost::request(3_000, 4_096);
        // 7,096 tokens wanted, 5,000 left, refilling 500/s: about 4.2 s.
        match q.room(big, now) {
            Room::At(t) => {
                let wait = (t - now).as_millis();
                assert!((4_150..=4_250).contains(&wait), "{wait}");
            }
            other => panic!("{other:?}"),
        }
        // Larger than the whole quota: never.
        assert_eq!(q.room(Cost::request(9_000, 4_096), now), Room::Never);
    }

    /// Anthropic at a low tier: 50,000 input tokens, 8,000 output tokens a minute, and the
    /// combined figure is the most restrictive of the two (8,000). A coding agent's 40,000-token
    /// prompt with 4,096 to write goes at once; one of 60,000 (mostly read from the cache, which
    /// the limit does not count) goes when the input bucket is full, never "never".
    #[tokio::test(start_paused = true)]
    async fn anthropic_token_limits_are_read_apart() {
        let now = Instant::now();
        let mut q = Quota::default();
        let a = |limit: u64, remaining: u64| {
            Some(Announced {
                limit: Some(limit),
                remaining: Some(remaining),
                reset_in: Some(Duration::from_secs(60)),
            })
        };
        let mut r = RateLimits::default();
        r.quotas[QuotaKind::Requests.index()] = a(50, 49);
        r.quotas[QuotaKind::Tokens.index()] = a(8_000, 8_000);
        r.quotas[QuotaKind::InputTokens.index()] = a(50_000, 50_000);
        r.quotas[QuotaKind::OutputTokens.index()] = a(8_000, 8_000);
        let s = q.reserve(ONE);
        q.observe(s, &r, true, now);
        assert_eq!(q.room(Cost::request(40_000, 4_096), now), Room::Now);
        r.quotas[QuotaKind::InputTokens.index()] = a(50_000, 20_000);
        let s = q.reserve(ONE);
        q.observe(s, &r, true, now);
        assert!(matches!(
            q.room(Cost::request(60_000, 4_096), now),
            Room::At(_)
        ));
        // More output than the output limit can ever take is refused...
        assert_eq!(q.room(Cost::request(1_000, 9_000), now), Room::Never);
        // ...until the provider answers one that large (a coding agent's `max_tokens` of
        // 32,000 at a limit of 8,000 a minute): then it waits for a full bucket.
        let mut r = RateLimits::default();
        r.quotas[QuotaKind::OutputTokens.index()] = a(8_000, 8_000);
        let mut q = Quota::default();
        let s = q.reserve(Cost::request(1_000, 32_000));
        q.observe(s, &r, true, now);
        assert_eq!(q.room(Cost::request(1_000, 32_000), now), Room::Now);
        assert_eq!(q.room(Cost::request(1_000, 40_000), now), Room::Never);
        r.quotas[QuotaKind::OutputTokens.index()] = a(8_000, 2_000);
        let s = q.reserve(Cost::request(1_000, 32_000));
        q.observe(s, &r, true, now);
        assert!(matches!(
            q.room(Cost::request(1_000, 32_000), now),
            Room::At(_)
        ));
        // OpenAI's combined figure refuses a prompt and `max_tokens` over it outright: what
        // went once (before the figure was known) stays "never" there.
        let mut r = RateLimits::default();
        r.quotas[QuotaKind::Tokens.index()] = a(10_000, 10_000);
        let mut q = Quota::default();
        let s = q.reserve(Cost::request(1_000, 32_000));
        q.observe(s, &r, true, now);
        assert_eq!(q.room(Cost::request(1_000, 32_000), now), Room::Never);
    }

    /// A server that announces what is left but not when it comes back (no reset header):
    /// once it says nothing is left, one request at a time still goes, and its answer brings
    /// the next figure. It used to shut the provider out for good.
    #[tokio::test(start_paused = true)]
    async fn a_quota_without_a_reset_is_probed_one_request_at_a_time() {
        let now = Instant::now();
        let mut q = Quota::default();
        let mut r = RateLimits::default();
        r.quotas[QuotaKind::Tokens.index()] = Some(Announced {
            limit: None,
            remaining: Some(10),
            reset_in: None,
        });
        let s = q.reserve(ONE);
        q.observe(s, &r, true, now);
        assert_eq!(q.room(ONE, now), Room::Now, "nothing in flight");
        let probe = q.reserve(ONE);
        assert_eq!(q.room(ONE, now), Room::AfterPending, "one at a time");
        // Its answer says there is room again.
        r.quotas[QuotaKind::Tokens.index()]
            .as_mut()
            .unwrap()
            .remaining = Some(10_000);
        q.observe(probe, &r, true, now + Duration::from_secs(5));
        assert_eq!(q.room(ONE, now + Duration::from_secs(5)), Room::Now);
    }

    /// A spent quota announced back in a day (or in 10^9 s) is asked again, one request at a
    /// time, every `LONG_RESET_CHECK`: it held a provider for a day until `mythos reset`.
    #[tokio::test(start_paused = true)]
    async fn a_far_reset_is_checked_one_request_at_a_time() {
        let now = Instant::now();
        let mut q = Quota::default();
        let s = q.reserve(ONE);
        let spent = |reset_ms| {
            let mut r = RateLimits::default();
            r.quotas[QuotaKind::Requests.index()] = Some(Announced {
                limit: None,
                remaining: Some(0),
                reset_in: Some(Duration::from_millis(reset_ms)),
            });
            r
        };
        q.observe(s, &spent(86_400_000), true, now);
        let check = now + LONG_RESET_CHECK;
        assert_eq!(q.room(ONE, now), Room::At(check));
        assert_eq!(q.room(ONE, now + Duration::from_secs(60)), Room::At(check));
        // Due: one request asks; the others wait for its answer.
        assert_eq!(q.room(ONE, check), Room::Now);
        let probe = q.reserve(ONE);
        assert_eq!(q.room(ONE, check), Room::AfterPending);
        // Still spent: believed for another check's time.
        q.observe(probe, &spent(86_400_000), false, check);
        assert_eq!(q.room(ONE, check), Room::At(check + LONG_RESET_CHECK));
        // A reset within the check's time is taken as said.
        let s = q.reserve(ONE);
        let later = check + LONG_RESET_CHECK;
        q.observe(s, &spent(60_000), true, later);
        assert_eq!(
            q.room(ONE, later),
            Room::At(later + Duration::from_secs(60))
        );
    }

    /// The check's answer is what the quota is from then on: a figure that contradicts a far
    /// reset (the quota has room after all) replaces it. Kept as "the lower count" of two
    /// answers read out of order, the far reset stayed, its check stayed due, and the provider
    /// went on one request at a time until that reset (a day) though it said 49 were left.
    #[tokio::test(start_paused = true)]
    async fn a_far_reset_gives_way_to_the_answer_of_its_check() {
        let announced = |limit: Option<u64>, remaining, reset_ms| {
            let mut r = RateLimits::default();
            r.quotas[QuotaKind::Requests.index()] = Some(Announced {
                limit,
                remaining: Some(remaining),
                reset_in: Some(Duration::from_millis(reset_ms)),
            });
            r
        };
        for limit in [None, Some(50)] {
            let now = Instant::now();
            let mut q = Quota::default();
            let s = q.reserve(ONE);
            q.observe(s, &announced(limit, 0, 86_400_000), true, now);
            let check = now + LONG_RESET_CHECK;
            assert_eq!(q.room(ONE, check), Room::Now, "{limit:?}");
            let probe = q.reserve(ONE);
            // The check is answered: 49 left, whole again in a minute.
            q.observe(probe, &announced(limit, 49, 60_000), true, check);
            q.reserve(ONE);
            assert_eq!(
                q.room(ONE, check),
                Room::Now,
                "{limit:?}: still one at a time after the check said 49 were left"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_read_out_of_order_keep_the_lower_count() {
        let now = Instant::now();
        let mut q = Quota::default();
        let a = q.reserve(ONE);
        let b = q.reserve(ONE);
        // The provider counted a, then b (0 left); b's answer is read first, a's last.
        q.observe(b, &limits((10, 0, 10_000), None), true, now);
        q.observe(a, &limits((10, 1, 9_000), None), true, now);
        assert!(matches!(q.room(ONE, now), Room::At(_)));
        // A later window, or a new limit, is taken as it comes.
        let c = q.reserve(ONE);
        q.observe(c, &limits((20, 15, 10_000), None), true, now);
        assert_eq!(q.room(ONE, now), Room::Now);
    }

    #[tokio::test(start_paused = true)]
    async fn survives_a_restart() {
        let now = Instant::now();
        let mut q = Quota::default();
        let s = q.reserve(ONE);
        q.observe(s, &limits((10, 0, 10_000), None), true, now);
        q.block(now + Duration::from_secs(5));
        let saved = q.save(now, 1_000_000);
        let json = serde_json::to_string(&saved).unwrap();
        let back: SavedQuota = serde_json::from_str(&json).unwrap();
        // Two seconds later, in a new process.
        let now2 = now + Duration::from_secs(2);
        let r = Quota::restore(&back, now2, 1_002_000, Duration::from_secs(900));
        assert_eq!(r.blocked_until(now2), Some(now + Duration::from_secs(5)));
        assert_eq!(r.announces, Some(true));
        assert_eq!(r.room(ONE, now2), Room::At(now + Duration::from_secs(5)));
    }

    /// What a provider counted of prompts survives a restart, within reason.
    #[tokio::test(start_paused = true)]
    async fn the_prompts_scale_survives_a_restart() {
        let now = Instant::now();
        let mut q = Quota::default();
        assert_eq!(q.save(now, 1_000_000).input_scale, None);
        q.learn_input(1_000, 2_000);
        let saved = q.save(now, 1_000_000);
        assert_eq!(saved.input_scale, Some(2.0));
        let json = serde_json::to_string(&saved).unwrap();
        let back: SavedQuota = serde_json::from_str(&json).unwrap();
        let r = Quota::restore(&back, now, 1_000_000, Duration::from_secs(900));
        assert_eq!(
            r.scaled(Cost([1.0, 1_100.0, 1_000.0, 100.0])).0,
            [1.0, 2_100.0, 2_000.0, 100.0]
        );
        // A file's figure beyond reason is kept within the bounds.
        for (wild, kept) in [(1e9, INPUT_SCALE_MAX), (0.01, 1.0), (f64::NAN, 1.0)] {
            let saved = SavedQuota {
                input_scale: Some(wild),
                ..back.clone()
            };
            let r = Quota::restore(&saved, now, 1_000_000, Duration::from_secs(900));
            assert_eq!(r.scaled(Cost([1.0, 1.0, 1.0, 0.0])).0[2], kept, "{wild}");
        }
    }
}
