//! OpenAI-compatible providers mythosd knows by name: base URL, key variable, default model,
//! prices and context window, each overridable in `[[provider]]`. A preset with a key registers
//! itself from its usual variable (`GROQ_API_KEY`...); local servers (Ollama, LM Studio) only
//! when the config names them.

/// One known provider.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// Name, as in `[[provider]] name = "groq"`.
    pub name: &'static str,
    /// OpenAI-compatible base URL, up to and including the version segment.
    pub base_url: &'static str,
    /// The environment variable its key usually lives in; `None` for local servers.
    pub key_env: Option<&'static str>,
    /// Model to ask for unless configured.
    pub model: &'static str,
    /// US dollars per million input tokens (of the default model).
    pub price_in: f64,
    /// US dollars per million output tokens.
    pub price_out: f64,
    /// Context window of the default model.
    pub context_window: u64,
}

/// The presets, in the order they register after the three built-ins.
pub const PRESETS: [Preset; 9] = [
    Preset {
        name: "openrouter",
        base_url: "https://openrouter.ai/api/v1",
        key_env: Some("OPENROUTER_API_KEY"),
        model: "openai/gpt-4o-mini",
        price_in: 0.15,
        price_out: 0.60,
        context_window: 128_000,
    },
    Preset {
        name: "groq",
        base_url: "https://api.groq.com/openai/v1",
        key_env: Some("GROQ_API_KEY"),
        model: "llama-3.3-70b-versatile",
        price_in: 0.59,
        price_out: 0.79,
        context_window: 131_072,
    },
    Preset {
        name: "mistral",
        base_url: "https://api.mistral.ai/v1",
        key_env: Some("MISTRAL_API_KEY"),
        model: "mistral-large-latest",
        price_in: 2.0,
        price_out: 6.0,
        context_window: 128_000,
    },
    Preset {
        name: "xai",
        base_url: "https://api.x.ai/v1",
        key_env: Some("XAI_API_KEY"),
        model: "grok-4",
        price_in: 3.0,
        price_out: 15.0,
        context_window: 256_000,
    },
    Preset {
        name: "together",
        base_url: "https://api.together.xyz/v1",
        key_env: Some("TOGETHER_API_KEY"),
        model: "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        price_in: 0.88,
        price_out: 0.88,
        context_window: 131_072,
    },
    Preset {
        name: "fireworks",
        base_url: "https://api.fireworks.ai/inference/v1",
        key_env: Some("FIREWORKS_API_KEY"),
        model: "accounts/fireworks/models/llama-v3p3-70b-instruct",
        price_in: 0.90,
        price_out: 0.90,
        context_window: 131_072,
    },
    Preset {
        name: "cerebras",
        base_url: "https://api.cerebras.ai/v1",
        key_env: Some("CEREBRAS_API_KEY"),
        model: "llama-3.3-70b",
        price_in: 0.85,
        price_out: 1.20,
        context_window: 65_536,
    },
    Preset {
        name: "ollama",
        base_url: "http://127.0.0.1:11434/v1",
        key_env: None,
        model: "qwen2.5-coder",
        price_in: 0.0,
        price_out: 0.0,
        context_window: 32_768,
    },
    Preset {
        name: "lmstudio",
        base_url: "http://127.0.0.1:1234/v1",
        key_env: None,
        model: "qwen2.5-coder-7b-instruct",
        price_in: 0.0,
        price_out: 0.0,
        context_window: 32_768,
    },
];

/// The preset called `name` (case-insensitive).
pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients name the daemon's key variables from the protocol crate's list (which of a
    /// user's keys the daemon lacks; what a private demo daemon must not see): it must be
    /// exactly the variables the daemon reads.
    #[test]
    fn the_protocol_names_every_key_variable_the_daemon_reads() {
        let mut ours: Vec<&str> = crate::config::KEY_ENV_VARS.to_vec();
        ours.extend(PRESETS.iter().filter_map(|p| p.key_env));
        ours.sort_unstable();
        ours.dedup();
        let mut listed = mythos_protocol::PROVIDER_KEY_VARIABLES.to_vec();
        listed.sort_unstable();
        assert_eq!(ours, listed);
    }

    #[test]
    fn presets_are_well_formed() {
        for p in PRESETS {
            let url = reqwest::Url::parse(p.base_url).unwrap();
            assert!(url.path().ends_with("/v1"), "{}", p.name);
            assert!(p.context_window >= 8_192);
            assert_eq!(
                p.key_env.is_none(),
                url.host_str() == Some("127.0.0.1"),
                "{}",
                p.name
            );
        }
        assert_eq!(find("Groq").unwrap().key_env, Some("GROQ_API_KEY"));
        assert!(find("nope").is_none());
    }
}
