//! Random fault mixes: each request a simulated provider serves may fail the way real ones do,
//! at given rates, from a seeded generator (a run can be repeated).

use mythos_protocol::SimFault;

/// Rates of each fault, each a probability in 0..1 (together at most 1).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SimChaos {
    /// `429` with this `retry_after_ms`.
    pub rate_limit: f64,
    /// Retry-After of those 429s.
    pub retry_after_ms: u64,
    /// `529` (Anthropic) or `503` (OpenAI format).
    pub overloaded: f64,
    /// `500` with a JSON error body.
    pub server_error: f64,
    /// A `502` with an HTML page, as a proxy in front of the provider sends.
    pub bad_gateway: f64,
    /// The connection drops after a few chunks.
    pub disconnect: f64,
    /// A chunk that is not valid JSON after a few good ones.
    pub malformed: f64,
    /// An in-stream error event after a few chunks.
    pub error_event: f64,
    /// Silence after a few chunks.
    pub stall: f64,
    /// The connection drops after the finish reason, before the terminator.
    pub cut_at_end: f64,
    /// Overloaded, with a `Retry-After` of [`SimChaos::retry_after_ms`].
    pub overloaded_for: f64,
}

impl SimChaos {
    /// The mix of the issue that opened this work: 15 % `429` (Retry-After 1 s), 10 % `503`,
    /// 5 % disconnects and 5 % malformed chunks.
    pub fn mix(total: f64) -> SimChaos {
        let k = total / 0.35;
        SimChaos {
            rate_limit: 0.15 * k,
            retry_after_ms: 1_000,
            overloaded: 0.10 * k,
            disconnect: 0.05 * k,
            malformed: 0.05 * k,
            ..SimChaos::default()
        }
    }

    /// Roll the dice for one request: `None` is a healthy answer.
    pub fn roll(&self, rng: &mut fastrand::Rng) -> Option<SimFault> {
        let tokens = rng.u32(1..12);
        let mut x = rng.f64();
        let table: [(f64, SimFault); 10] = [
            (
                self.rate_limit,
                SimFault::RateLimit {
                    retry_after_ms: self.retry_after_ms,
                },
            ),
            (self.overloaded, SimFault::Overloaded),
            (self.server_error, SimFault::Status { code: 500 }),
            (self.bad_gateway, SimFault::Status { code: 502 }),
            (self.disconnect, SimFault::DisconnectAfter { tokens }),
            (self.malformed, SimFault::MalformedAfter { tokens }),
            (self.error_event, SimFault::ErrorEventAfter { tokens }),
            (self.stall, SimFault::StallAfter { tokens }),
            (self.cut_at_end, SimFault::CutBeforeTerminator),
            (
                self.overloaded_for,
                SimFault::OverloadedFor {
                    retry_after_ms: self.retry_after_ms,
                },
            ),
        ];
        for (p, fault) in table {
            if x < p {
                return Some(fault);
            }
            x -= p;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_hold() {
        let chaos = SimChaos::mix(0.30);
        let mut rng = fastrand::Rng::with_seed(7);
        let n = 100_000;
        let faults = (0..n).filter(|_| chaos.roll(&mut rng).is_some()).count();
        let share = faults as f64 / n as f64;
        assert!((share - 0.30).abs() < 0.01, "{share}");
        assert_eq!(SimChaos::default().roll(&mut rng), None);
    }
}
