//! Answers to the non-streaming requests: status, why, usage.

use serde::{Deserialize, Serialize};

use crate::{ErrorKind, TaskKind, Usage};

/// The daemon's view of itself and of every provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon's build.
    pub build: String,
    /// The daemon's process id.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Requests streaming right now.
    pub in_flight: u32,
    /// True when the pool is the built-in simulated providers (no API keys were found).
    pub simulated: bool,
    /// Providers, best first.
    pub providers: Vec<ProviderStatus>,
    /// What the user should know about the daemon itself (its state was recovered, ...).
    #[serde(default)]
    pub notes: Vec<String>,
    /// The last few failovers, newest last.
    #[serde(default)]
    pub recent_failovers: Vec<Failover>,
    /// How to restart the daemon when a service manager runs it (`systemctl --user restart
    /// mythosd.service`, `launchctl kickstart -k ...`): `mythos daemon restart` runs it rather
    /// than stopping the service and starting an unmanaged daemon.
    #[serde(default)]
    pub restart_command: Option<Vec<String>>,
}

/// A request moved from one provider to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    /// When the request finished, Unix milliseconds.
    pub unix_ms: u64,
    /// The provider that failed.
    pub from: String,
    /// The provider that took over.
    pub to: String,
    /// Why, as an error kind name (`overloaded`, `rate_limited`, `timeout`...).
    pub reason: String,
}

/// One provider's health as the router sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderStatus {
    /// Name used in pins and reports.
    pub name: String,
    /// Wire format: `anthropic` or `openai`.
    pub api: String,
    /// Configured model.
    pub model: String,
    /// Configured priority (0 is the primary).
    pub priority: u32,
    /// Breaker state.
    pub state: BreakerState,
    /// Milliseconds until the provider is tried again, when cooling down.
    pub cooldown_left_ms: Option<u64>,
    /// Current routing score for a chat task (higher is better).
    pub score: f64,
    /// EMA of success, 0 to 1.
    pub success: f64,
    /// EMA of time to first token.
    pub ttft_ms: Option<f64>,
    /// EMA of the gap between content chunks.
    pub gap_ms: Option<f64>,
    /// EMA of total request latency.
    pub latency_ms: Option<f64>,
    /// Blended price per 1K tokens in US dollars.
    pub cost_per_1k: f64,
    /// Attempts sent to this provider.
    pub requests: u64,
    /// Attempts that failed.
    pub failures: u64,
    /// The last failure, in words (never contains a key).
    pub last_error: Option<String>,
    /// Why the provider is or is not eligible right now, in words (`healthy`, `rate limited,
    /// 3 s left`, `quota: 0 of 50 requests left, refills in 1.2 s`).
    #[serde(default)]
    pub note: String,
    /// Attempts streaming from this provider right now.
    #[serde(default)]
    pub in_flight: u32,
    /// Rate-limit quotas the provider announced in its response headers, as estimated now
    /// (the announced figures minus what was sent since); empty when it announces none.
    #[serde(default)]
    pub quotas: Vec<QuotaStatus>,
    /// The model's prompt and output sizes and prices, as configured (or known defaults).
    #[serde(default)]
    pub limits: ModelLimits,
}

/// What a provider's model can take and what it costs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelLimits {
    /// Context window in tokens, when known.
    pub context_window: Option<u64>,
    /// Most output tokens per answer (requests asking for more are clamped to it).
    pub max_output_tokens: u32,
    /// US dollars per million input tokens.
    pub price_input_per_mtok: f64,
    /// US dollars per million output tokens.
    pub price_output_per_mtok: f64,
}

/// One rate-limit quota of a provider (requests, tokens, input or output tokens per window).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaStatus {
    /// What is counted: `requests`, `tokens`, `input tokens` or `output tokens`.
    pub what: String,
    /// Estimated amount left now.
    pub remaining: u64,
    /// The announced limit per window, if the provider sends it.
    pub limit: Option<u64>,
    /// Milliseconds until the quota is whole again, if known.
    pub reset_in_ms: Option<u64>,
}

/// Circuit breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Healthy: eligible for routing.
    Closed,
    /// Cooling down: skipped until the cooldown ends.
    Open,
    /// Cooldown over: the next request probes it.
    HalfOpen,
    /// Rejected our key (401/403) or our account (402, billing): unusable until the key
    /// changes or `mythos reset`; a billing failure also ends after a long cooldown.
    Unusable,
    /// Healthy, but it asked for a pause (`429` with `Retry-After`): skipped until then.
    RateLimited,
    /// Healthy, but overloaded: it asked for a pause (`529`/`503` with `Retry-After`), skipped
    /// until then.
    Overloaded,
}

impl BreakerState {
    /// Short name for display.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "healthy",
            BreakerState::Open => "cooling down",
            BreakerState::HalfOpen => "probing",
            BreakerState::Unusable => "unusable",
            BreakerState::RateLimited => "rate limited",
            BreakerState::Overloaded => "overloaded",
        }
    }
}

/// Everything recorded about one routed request, for `mythos why`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Record id.
    pub id: u64,
    /// When the request arrived, Unix milliseconds.
    pub unix_ms: u64,
    /// Task kind.
    pub task: TaskKind,
    /// The pin, if the request was deterministic.
    pub pinned: Option<String>,
    /// Providers considered, in the order they were ranked.
    pub candidates: Vec<CandidateScore>,
    /// Each attempt, in order.
    pub attempts: Vec<Attempt>,
    /// Provider that produced the final answer.
    pub provider: Option<String>,
    /// Tokens billed.
    pub usage: Usage,
    /// Estimated cost.
    pub cost_usd: f64,
    /// Wall time.
    pub latency_ms: u64,
    /// Final error, if the request failed.
    pub error: Option<ErrorKind>,
    /// Milliseconds spent waiting in the queue for capacity (rate limits, cooldowns).
    #[serde(default)]
    pub queued_ms: u64,
}

/// A provider as ranked for one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateScore {
    /// Provider name.
    pub provider: String,
    /// Its score at the time.
    pub score: f64,
    /// Why it was or was not eligible, in words.
    pub note: String,
}

/// One try at one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Provider name.
    pub provider: String,
    /// Model.
    pub model: String,
    /// Milliseconds from the request's start to this attempt's start.
    pub started_ms: u64,
    /// Time to first token, if one came.
    pub ttft_ms: Option<u64>,
    /// How long the attempt lasted.
    pub elapsed_ms: u64,
    /// `None` on success.
    pub error: Option<ErrorKind>,
    /// What happened, in words.
    pub detail: String,
}

/// Totals for `mythos usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    /// One row per day and provider, newest day first.
    pub rows: Vec<UsageRow>,
}

/// Totals of one provider on one day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Provider name.
    pub provider: String,
    /// Attempts.
    pub requests: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Prompt tokens read from or written to the provider's cache, besides `input_tokens`:
    /// most of a coding agent's prompt.
    #[serde(default)]
    pub cached_tokens: u64,
    /// Estimated cost.
    pub cost_usd: f64,
}
