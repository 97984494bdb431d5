//! Rate limits as real providers enforce and announce them: token buckets that refill
//! steadily, checked before a request is served, and announced in every response's headers in
//! the provider's own format. A request that does not fit gets a `429` with `retry-after`.

use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use super::Flavor;

/// Quotas a simulated provider enforces, per `window` (a minute for a real provider; tests and
/// the benchmark use shorter windows so a run takes seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimQuota {
    /// Requests per window.
    pub requests: Option<u64>,
    /// Input plus `max_tokens` per window (OpenAI's TPM; Anthropic's combined tokens).
    pub tokens: Option<u64>,
    /// Input tokens per window (Anthropic only).
    pub input_tokens: Option<u64>,
    /// `max_tokens` per window (Anthropic only).
    pub output_tokens: Option<u64>,
    /// The window.
    pub window: Duration,
}

impl SimQuota {
    /// `requests` per `window`, nothing else.
    pub fn requests(requests: u64, window: Duration) -> Self {
        SimQuota {
            requests: Some(requests),
            tokens: None,
            input_tokens: None,
            output_tokens: None,
            window,
        }
    }
}

/// One token bucket: holds up to `capacity`, refills at `capacity / window`.
#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    level: f64,
    per_sec: f64,
    last: Instant,
}

impl Bucket {
    fn new(capacity: u64, window: Duration, now: Instant) -> Bucket {
        Bucket {
            capacity: capacity as f64,
            level: capacity as f64,
            per_sec: capacity as f64 / window.as_secs_f64().max(1e-3),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + dt * self.per_sec).min(self.capacity);
        self.last = now;
    }

    /// How long until `n` fits (zero: it fits now).
    fn wait_for(&self, n: f64) -> Duration {
        if self.level >= n {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(((n - self.level) / self.per_sec).min(86_400.0))
        }
    }

    /// Until whole again.
    fn reset_in(&self) -> Duration {
        Duration::from_secs_f64(((self.capacity - self.level) / self.per_sec).clamp(0.0, 86_400.0))
    }
}

/// The buckets of one simulated provider: requests, tokens, input tokens, output tokens.
#[derive(Debug, Clone)]
pub struct Limiter {
    buckets: [Option<Bucket>; 4],
}

/// What a request costs: (input tokens, max tokens).
pub type Cost = (u64, u64);

fn costs((input, max): Cost) -> [f64; 4] {
    [1.0, (input + max) as f64, input as f64, max as f64]
}

impl Limiter {
    /// Full buckets for `q`.
    pub fn new(q: &SimQuota, now: Instant) -> Limiter {
        let b = |v: Option<u64>| v.map(|c| Bucket::new(c, q.window, now));
        Limiter {
            buckets: [
                b(q.requests),
                b(q.tokens),
                b(q.input_tokens),
                b(q.output_tokens),
            ],
        }
    }

    /// Charge a request, or say how long until it would fit.
    pub fn admit(&mut self, cost: Cost, now: Instant) -> Result<(), Duration> {
        let c = costs(cost);
        let mut wait = Duration::ZERO;
        for (b, n) in self.buckets.iter_mut().zip(c) {
            if let Some(b) = b {
                b.refill(now);
                wait = wait.max(b.wait_for(n));
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for (b, n) in self.buckets.iter_mut().zip(c) {
            if let Some(b) = b {
                b.level -= n;
            }
        }
        Ok(())
    }

    /// Put the quota headers of `flavor` on a response.
    pub fn announce(&self, flavor: Flavor, headers: &mut HeaderMap) {
        if flavor == Flavor::Gemini {
            // Google sends no quota headers.
            return;
        }
        let wall_now = SystemTime::now();
        let names = ["requests", "tokens", "input-tokens", "output-tokens"];
        for (b, name) in self.buckets.iter().zip(names) {
            let Some(b) = b else { continue };
            let remaining = (b.level.max(0.0).floor() as u64).to_string();
            let limit = (b.capacity as u64).to_string();
            let reset = b.reset_in();
            let (prefix_limit, prefix_remaining, reset_name, reset_value) = match flavor {
                Flavor::Anthropic => (
                    format!("anthropic-ratelimit-{name}-limit"),
                    format!("anthropic-ratelimit-{name}-remaining"),
                    format!("anthropic-ratelimit-{name}-reset"),
                    rfc3339(wall_now + reset),
                ),
                // The OpenAI format has no separate input and output quotas.
                _ if name.contains('-') => continue,
                _ => (
                    format!("x-ratelimit-limit-{name}"),
                    format!("x-ratelimit-remaining-{name}"),
                    format!("x-ratelimit-reset-{name}"),
                    go_duration(reset),
                ),
            };
            for (k, v) in [
                (prefix_limit, limit),
                (prefix_remaining, remaining),
                (reset_name, reset_value),
            ] {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                    headers.insert(k, v);
                }
            }
        }
    }
}

/// An instant as Anthropic writes it: `2025-01-01T00:00:01.500Z`.
fn rfc3339(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A duration as OpenAI writes it: `6m0s`, `1.5s`, `20ms`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    let m = (secs / 60.0).floor() as u64;
    let s = secs - (m * 60) as f64;
    let s = format!("{s:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ratelimit::{from_headers, parse_go_duration, QuotaKind};

    #[test]
    fn go_durations_round_trip_through_the_parser() {
        for ms in [
            0u64, 20, 999, 1_000, 1_500, 59_999, 60_000, 360_000, 3_723_500,
        ] {
            let text = go_duration(Duration::from_millis(ms));
            let back = parse_go_duration(&text).unwrap().as_millis() as u64;
            assert_eq!(back, ms, "{text}");
        }
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(20)), "20ms");
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_refill_steadily_and_say_so_in_each_format() {
        let now = Instant::now();
        let q = SimQuota {
            requests: Some(60),
            tokens: Some(10_000),
            input_tokens: Some(8_000),
            output_tokens: Some(2_000),
            window: Duration::from_secs(60),
        };
        let mut l = Limiter::new(&q, now);
        assert!(l.admit((500, 1_000), now).is_ok());
        for (flavor, kinds) in [
            (Flavor::Anthropic, 4),
            (Flavor::OpenAi, 2),
            (Flavor::DeepSeek, 2),
        ] {
            let mut h = HeaderMap::new();
            l.announce(flavor, &mut h);
            let wall = mythos_protocol::clock::now_unix_ms();
            let r = from_headers(&h, wall);
            let announced = QuotaKind::ALL
                .iter()
                .filter(|k| r.get(**k).is_some())
                .count();
            assert_eq!(announced, kinds, "{flavor:?}");
            let req = r.get(QuotaKind::Requests).unwrap();
            assert_eq!((req.limit, req.remaining), (Some(60), Some(59)));
            // One request used of 60 per minute: whole again in a second.
            let reset = req.reset_in.unwrap().as_millis();
            assert!((950..=1_000).contains(&reset), "{flavor:?} {reset}");
        }
        // Output tokens: 1,000 of 2,000 used; another 1,500 must wait 15 s.
        let wait = l.admit((0, 1_500), now).unwrap_err();
        assert!((wait.as_secs_f64() - 15.0).abs() < 1e-6, "{wait:?}");
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(l.admit((0, 1_500), Instant::now()), Ok(()));
    }
}
