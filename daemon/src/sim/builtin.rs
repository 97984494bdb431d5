//! The built-in simulated providers the daemon runs on when no API key is set.

use std::collections::HashMap;
use std::time::Duration;

use super::{Flavor, SimOptions, SimProvider, SimQuota};
use crate::config::{ProviderConfig, Secret};

/// The simulated providers: their configs, and the servers by name (for fault injection).
pub type Sims = (Vec<ProviderConfig>, HashMap<String, SimProvider>);

/// Built-in simulated providers: (name, flavor, priority, $/Mtok in, $/Mtok out).
const BUILTIN: [(&str, Flavor, u32, f64, f64); 4] = [
    ("sim-anthropic", Flavor::Anthropic, 0, 3.0, 15.0),
    ("sim-deepseek", Flavor::DeepSeek, 1, 0.28, 0.42),
    ("sim-openai", Flavor::OpenAi, 2, 2.5, 10.0),
    ("sim-gemini", Flavor::Gemini, 3, 0.30, 2.50),
];

/// Per-minute quotas the built-in simulated providers announce, like the real ones at an
/// entry tier (DeepSeek announces none: it keeps slow connections open instead).
fn sim_quota(flavor: Flavor) -> Option<SimQuota> {
    let minute = Duration::from_secs(60);
    match flavor {
        Flavor::Anthropic => Some(SimQuota {
            requests: Some(50),
            tokens: None,
            input_tokens: Some(200_000),
            output_tokens: Some(80_000),
            window: minute,
        }),
        Flavor::OpenAi => Some(SimQuota {
            requests: Some(500),
            tokens: Some(200_000),
            input_tokens: None,
            output_tokens: None,
            window: minute,
        }),
        // Gemini announces no quotas in headers; its 429s say when in `retryDelay`.
        Flavor::DeepSeek | Flavor::Gemini => None,
    }
}

/// Start the simulated providers on loopback and describe them as provider configs.
pub async fn start_builtin() -> std::io::Result<Sims> {
    let mut configs = Vec::new();
    let mut sims = HashMap::new();
    for (name, flavor, priority, p_in, p_out) in BUILTIN {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut opts = SimOptions::new(name, flavor);
        opts.quota = sim_quota(flavor);
        let model = opts.model.clone();
        let sim = SimProvider::start(listener, opts).await?;
        let api = flavor.api();
        configs.push(ProviderConfig {
            api_key: Some(Secret::new("sim-key")),
            priority,
            price_input_per_mtok: p_in,
            price_output_per_mtok: p_out,
            simulated: true,
            context_window: Some(128_000),
            ..ProviderConfig::new(name, api, sim.base_url(), model)
        });
        sims.insert(name.to_string(), sim);
    }
    Ok((configs, sims))
}
