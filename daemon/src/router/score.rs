//! The routing score: one number per provider and task, higher is better.
//!
//! Every term is scaled so that it matters in realistic ranges (the reference implementation's
//! cost term was worth ~0.02 points against ~50 for latency, i.e. inert):
//! - success (0..1) × 100, × 150 for code and analysis, where a wrong answer costs most;
//! - minus points per second of time to first token: 4 for chat (a person is waiting), 2 for
//!   code, 1 for analysis and background;
//! - minus the provider's price as a share of the priciest provider (0..1) × 2, or × 30 for
//!   background work, where cost is what matters;
//! - minus 5 per priority step, so the configured order decides between equals and a primary
//!   keeps its place until it is measurably worse (≈1.2 s slower for chat, or ~5% less reliable).

use mythos_protocol::TaskKind;

/// What the score is computed from.
#[derive(Debug, Clone, Copy)]
pub struct ScoreInputs {
    /// Task kind of the request.
    pub task: TaskKind,
    /// Success average, 0..1.
    pub success: f64,
    /// Time to first token average, ms.
    pub ttft_ms: f64,
    /// Price relative to the most expensive provider in the pool, 0..1.
    pub cost_share: f64,
    /// Configured priority.
    pub priority: u32,
}

/// Points per priority step.
pub const PRIORITY_STEP: f64 = 4.0;

/// The score.
pub fn score(i: &ScoreInputs) -> f64 {
    let (w_success, w_latency_per_s, w_cost) = match i.task {
        TaskKind::Chat => (100.0, 4.0, 2.0),
        TaskKind::Code => (150.0, 2.0, 2.0),
        TaskKind::Analysis => (150.0, 1.0, 2.0),
        TaskKind::Background => (100.0, 1.0, 30.0),
    };
    w_success * i.success
        - w_latency_per_s * (i.ttft_ms / 1000.0)
        - w_cost * i.cost_share
        - PRIORITY_STEP * i.priority as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(task: TaskKind, success: f64, ttft_ms: f64, cost_share: f64, priority: u32) -> f64 {
        score(&ScoreInputs {
            task,
            success,
            ttft_ms,
            cost_share,
            priority,
        })
    }

    #[test]
    fn primary_keeps_its_place_while_healthy() {
        // Claude-like primary (1.2 s, priciest) vs DeepSeek-like fallback (0.8 s, 1/12 price).
        let primary = s(TaskKind::Chat, 1.0, 1200.0, 1.0, 0);
        let fallback = s(TaskKind::Chat, 1.0, 800.0, 0.08, 1);
        assert!(primary > fallback);
    }

    #[test]
    fn degrading_primary_loses_to_fallback() {
        let fallback = s(TaskKind::Chat, 1.0, 800.0, 0.08, 1);
        assert!(s(TaskKind::Chat, 1.0, 3000.0, 1.0, 0) < fallback, "slow");
        assert!(s(TaskKind::Chat, 0.9, 1200.0, 1.0, 0) < fallback, "flaky");
    }

    #[test]
    fn cost_matters_for_background_work() {
        // Equally healthy, 10x price difference, expensive one is even the primary.
        let pricey = s(TaskKind::Background, 1.0, 1000.0, 1.0, 0);
        let cheap = s(TaskKind::Background, 1.0, 1000.0, 0.1, 1);
        assert!(cheap > pricey + 20.0);
    }

    #[test]
    fn code_weighs_success_over_speed() {
        let reliable_slow = s(TaskKind::Code, 1.0, 4000.0, 0.5, 1);
        let flaky_fast = s(TaskKind::Code, 0.9, 500.0, 0.5, 0);
        assert!(reliable_slow > flaky_fast);
    }
}
