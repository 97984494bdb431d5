//! Configuration: providers from the environment, refined by an optional TOML file.
//!
//! With no file at all the daemon registers a provider for every API key it finds
//! (`ANTHROPIC_API_KEY` priority 0, `DEEPSEEK_API_KEY` 1, `OPENAI_API_KEY` 2, then the presets,
//! then `GEMINI_API_KEY` or `GOOGLE_API_KEY`). The file can reorder them, change models and prices, tune routing, and add any OpenAI-compatible endpoint.
//! Errors name the file, the line and the field, because toml's messages carry line and column.
//! A provider the file names without its key is reported in [`Config::skipped`], never dropped
//! in silence; [`Config::check_usable`] refuses a file none of whose providers has one.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// Anthropic Messages API.
    Anthropic,
    /// OpenAI Chat Completions (also DeepSeek, OpenRouter, Groq, Mistral, Ollama, vLLM...).
    Openai,
    /// Google Gemini API (`streamGenerateContent`).
    Gemini,
}

impl Api {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Anthropic => "anthropic",
            Api::Openai => "openai",
            Api::Gemini => "gemini",
        }
    }
}

/// An API key. Its `Debug` and `Display` never show the value, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a key.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The key, for building the one HTTP header that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One provider the router may use.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Unique name (`anthropic`, `deepseek`, `groq`, ...).
    pub name: String,
    /// Wire format.
    pub api: Api,
    /// Base URL: Anthropic without `/v1`; OpenAI-compatible up to and including the version
    /// segment (`https://api.openai.com/v1`), to which `/chat/completions` is appended.
    pub base_url: String,
    /// Model to request.
    pub model: String,
    /// API key, if the endpoint needs one.
    pub api_key: Option<Secret>,
    /// 0 is the primary; ties in score go to the lower number.
    pub priority: u32,
    /// US dollars per million input tokens.
    pub price_input_per_mtok: f64,
    /// US dollars per million output tokens.
    pub price_output_per_mtok: f64,
    /// US dollars per million prompt tokens read from the provider's cache, when configured;
    /// [`ProviderConfig::cache_read_price`] falls back to the provider's usual discount.
    pub price_cache_read_per_mtok: Option<f64>,
    /// US dollars per million prompt tokens written to the provider's cache, when configured
    /// (see [`ProviderConfig::cache_write_price`]).
    pub price_cache_write_per_mtok: Option<f64>,
    /// US dollars per web search a server tool makes, when configured (see
    /// [`ProviderConfig::web_search_price`]).
    pub price_per_web_search: Option<f64>,
    /// Whether this is one of the built-in simulated providers.
    pub simulated: bool,
    /// Attempts that may stream from this provider at once; more wait their turn or go
    /// elsewhere.
    pub max_concurrent: u32,
    /// The model's context window in tokens, if known: a prompt that does not fit is sent to a
    /// provider whose window does.
    pub context_window: Option<u64>,
    /// The model thinks before it answers without streaming its thoughts (OpenAI o-series and
    /// gpt-5): the first token may take minutes.
    pub reasoning: bool,
    /// The most output tokens the model may be asked for (`max_tokens`), when configured;
    /// [`ProviderConfig::output_limit`] falls back to a default by model name.
    pub max_output_tokens: Option<u32>,
}

/// Default of [`ProviderConfig::max_concurrent`]: generous, so it only stops a runaway burst.
pub const DEFAULT_MAX_CONCURRENT: u32 = 64;

/// Whether a model name belongs to a model that reasons silently before its first token.
pub fn is_silent_reasoner(model: &str) -> bool {
    let m = model.to_ascii_lowercase();
    let m = m.rsplit('/').next().unwrap_or(&m);
    ["o1", "o3", "o4", "gpt-5"].iter().any(|p| {
        m.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '.']))
    })
}

/// Output token limit of a model, by name, as the providers document it; 8192 for a model
/// not known here (every current chat model allows at least that).
pub fn default_output_limit(model: &str) -> u32 {
    let m = model.to_ascii_lowercase();
    let m = m.rsplit('/').next().unwrap_or(&m);
    let has = |p: &str| m.contains(p);
    if has("claude") {
        // Opus 4 and 4.1 stop at 32K; the other 4.x models and 3.7 Sonnet at 64K.
        if has("opus-4-1")
            || has("opus-4.1")
            || has("opus-4-0")
            || has("opus-4-2025")
            || m.ends_with("opus-4")
        {
            32_000
        } else if has("claude-3-5") || has("claude-3.5") {
            8_192
        } else if has("claude-3-haiku") || has("claude-3-opus") || has("claude-3-sonnet") {
            4_096
        } else if has("opus-4")
            || has("sonnet-4")
            || has("haiku-4")
            || has("claude-3-7")
            || has("claude-3.7")
        {
            64_000
        } else {
            8_192
        }
    } else if m.starts_with("gemini-2.5") || m.starts_with("gemini-3") {
        // Gemini 2.0 and 1.5 stop at 8,192, the default below.
        65_536
    } else if m.starts_with("deepseek-reasoner") {
        65_536
    } else if m.starts_with("deepseek") {
        8_192
    } else if m.starts_with("gpt-4o") || m.starts_with("chatgpt-4o") {
        16_384
    } else if m.starts_with("gpt-4.1") {
        32_768
    } else if m.starts_with("gpt-5") {
        128_000
    } else if m.starts_with("o1-mini") {
        65_536
    } else if is_silent_reasoner(m) {
        100_000
    } else {
        8_192
    }
}

impl ProviderConfig {
    /// A provider with defaults for everything but its identity: priority 0, no key, no
    /// price, the default concurrency limit, reasoning guessed from the model name.
    pub fn new(
        name: impl Into<String>,
        api: Api,
        base_url: impl Into<String>,
        model: impl Into<String>,
    ) -> Self {
        let model = model.into();
        ProviderConfig {
            name: name.into(),
            api,
            base_url: base_url.into(),
            reasoning: is_silent_reasoner(&model),
            model,
            api_key: None,
            priority: 0,
            price_input_per_mtok: 0.0,
            price_output_per_mtok: 0.0,
            price_cache_read_per_mtok: None,
            price_cache_write_per_mtok: None,
            price_per_web_search: None,
            simulated: false,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            context_window: None,
            max_output_tokens: None,
        }
    }

    /// The most output tokens this provider's model may be asked for: the configured
    /// `max_output_tokens`, else [`default_output_limit`] of the model. Asking for more is a
    /// `400` from every API, so the router clamps `max_tokens` to this.
    pub fn output_limit(&self) -> u32 {
        self.max_output_tokens
            .unwrap_or_else(|| default_output_limit(&self.model))
    }

    /// Blended price per 1K tokens, assuming output is a quarter of the traffic.
    pub fn cost_per_1k(&self) -> f64 {
        (0.75 * self.price_input_per_mtok + 0.25 * self.price_output_per_mtok) / 1000.0
    }

    /// US dollars per million prompt tokens read from the cache: as configured, else the
    /// input price times the provider's usual discount. Anthropic bills a cache read at a tenth
    /// of the input price, DeepSeek and OpenAI's gpt-5 models likewise, OpenAI's gpt-4.1 and
    /// o-series a quarter, Gemini a quarter, and OpenAI's older models half.
    pub fn cache_read_price(&self) -> f64 {
        if let Some(p) = self.price_cache_read_per_mtok {
            return p;
        }
        let m = self.model.to_ascii_lowercase();
        let m = m.rsplit('/').next().unwrap_or(&m);
        let share = match self.api {
            Api::Anthropic => 0.1,
            Api::Gemini => 0.25,
            Api::Openai if m.starts_with("deepseek") || m.starts_with("gpt-5") => 0.1,
            Api::Openai
                if m.starts_with("gpt-4.1")
                    || ["o1", "o3", "o4"].iter().any(|o| m.starts_with(o)) =>
            {
                0.25
            }
            Api::Openai => 0.5,
        };
        self.price_input_per_mtok * share
    }

    /// US dollars per million prompt tokens written to the cache: as configured, else the
    /// input price, with Anthropic's surcharge for a five-minute cache (a quarter more). The
    /// other APIs cache on their own and report no writes.
    pub fn cache_write_price(&self) -> f64 {
        if let Some(p) = self.price_cache_write_per_mtok {
            return p;
        }
        match self.api {
            Api::Anthropic => self.price_input_per_mtok * 1.25,
            _ => self.price_input_per_mtok,
        }
    }

    /// US dollars per web search: as configured, else Anthropic's $10 per 1,000 (the other
    /// APIs are sent no server tools).
    pub fn web_search_price(&self) -> f64 {
        self.price_per_web_search.unwrap_or(match self.api {
            Api::Anthropic => 0.01,
            _ => 0.0,
        })
    }

    /// Estimated cost in US dollars of what an attempt used, its cache reads and writes and
    /// its web searches included: a coding agent's turn is mostly prompt read from the cache (Claude Code: a
    /// few thousand new tokens beside 100,000 read), which the adapters count apart from
    /// `input_tokens`, as Anthropic does.
    pub fn cost(&self, u: &mythos_protocol::Usage) -> f64 {
        (u.input_tokens as f64 * self.price_input_per_mtok
            + u.output_tokens as f64 * self.price_output_per_mtok
            + u.cache_read_input_tokens as f64 * self.cache_read_price()
            + u.cache_creation_input_tokens as f64 * self.cache_write_price())
            / 1_000_000.0
            + u.web_searches as f64 * self.web_search_price()
    }
}

/// Tuning of retry, breaker and watchdog.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// Waits before each retry on the same provider; its length is the number of retries.
    pub retry_backoff: Vec<Duration>,
    /// Random spread applied to each wait, as a fraction (0.2 = ±20%).
    pub retry_jitter: f64,
    /// First cooldown of a tripped breaker.
    pub cooldown: Duration,
    /// Longest cooldown after repeated failed probes.
    pub max_cooldown: Duration,
    /// Watchdog: time to first token when the provider has no history.
    pub first_token_timeout: Duration,
    /// Watchdog: silence between content chunks when the provider has no history.
    pub stall_timeout: Duration,
    /// Adaptive watchdog thresholds never go below this.
    pub watchdog_floor: Duration,
    /// Adaptive watchdog thresholds never go above this.
    pub watchdog_ceiling: Duration,
    /// Averages decay halfway to neutral after this long without new samples.
    pub health_half_life: Duration,
    /// A provider not tried for this long gets one request as a probe (no starvation).
    pub probe_interval: Duration,
    /// Default `max_tokens` when the client does not set one.
    pub default_max_tokens: u32,
    /// How long in-flight streams may run on after a shutdown signal.
    pub drain_timeout: Duration,
    /// How long a request may wait in the queue for capacity (rate limits, quotas, cooldowns,
    /// busy providers) before it fails; longer waits fail at once and say when capacity returns.
    pub max_queue_wait: Duration,
    /// Retries may add at most this share to a provider's requests (plus a small floor).
    pub retry_budget_ratio: f64,
    /// Watchdog: extra time to first token per 1,000 prompt tokens (a long prompt takes
    /// longer to read).
    pub first_token_per_1k_input: Duration,
    /// Watchdog: time to first token for models that reason silently first.
    pub reasoning_first_token_timeout: Duration,
    /// Watchdog: the least silence allowed while a tool call's arguments are being written.
    /// Anthropic streams a tool's input one whole key and value at a time, so a file written
    /// as one argument arrives after tens of seconds with nothing but pings: the gap allowed
    /// between text tokens would kill that healthy call and have the next provider write it
    /// again. A request that offers tools is allowed it everywhere on a provider not yet seen
    /// to stream a call's arguments (local servers and Gemini send a call whole once written).
    pub tool_stall_timeout: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            retry_backoff: vec![
                Duration::from_millis(100),
                Duration::from_millis(500),
                Duration::from_millis(1000),
            ],
            retry_jitter: 0.2,
            cooldown: Duration::from_secs(30),
            max_cooldown: Duration::from_secs(900),
            first_token_timeout: Duration::from_secs(15),
            stall_timeout: Duration::from_secs(15),
            watchdog_floor: Duration::from_secs(5),
            watchdog_ceiling: Duration::from_secs(60),
            health_half_life: Duration::from_secs(600),
            probe_interval: Duration::from_secs(300),
            default_max_tokens: 4096,
            drain_timeout: Duration::from_secs(10),
            max_queue_wait: Duration::from_secs(30),
            retry_budget_ratio: 0.2,
            first_token_per_1k_input: Duration::from_millis(200),
            reasoning_first_token_timeout: Duration::from_secs(300),
            tool_stall_timeout: Duration::from_secs(90),
        }
    }
}

/// Limits of the local server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Client connections at once (further ones push out the longest idle, or get a small
    /// reserve that can ask for status but not chat). Lowered at start to fit the fd limit.
    pub max_connections: usize,
    /// Bytes of requests held in memory at once, over both front ends (bodies being read,
    /// requests being answered): a request beyond it waits a moment, then is refused as busy.
    pub max_request_memory: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 512,
            max_request_memory: crate::server::memory::DEFAULT_MIB << 20,
        }
    }
}

/// The daemon's whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Providers, in priority order.
    pub providers: Vec<ProviderConfig>,
    /// Routing tuning.
    pub routing: RoutingConfig,
    /// Server limits.
    pub server: ServerConfig,
    /// The HTTP front end.
    pub http: crate::http::config::HttpConfig,
    /// The file this came from, if any.
    pub file: Option<PathBuf>,
    /// Providers the file names that could not be registered for want of a key: the daemon
    /// warns about each at start and reload, and `status` lists them.
    pub skipped: Vec<Skipped>,
}

/// A provider the file names but that has no key: its key variable is unset (a typo in the
/// variable's name, a service started without the user's environment) or holds mythosd's own
/// token. Skipping it silently sent a user with a typo to the simulated providers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The provider's name.
    pub provider: String,
    /// The environment variable(s) its key is read from (never the key).
    pub variable: String,
    /// Why the variable gave no key.
    pub why: &'static str,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "provider `{}` is not used: its key variable {} {}",
            self.provider, self.variable, self.why
        )
    }
}

/// [`Skipped::why`] of a variable that is not set (or is empty).
const UNSET: &str = "is not set in mythosd's environment";
/// [`Skipped::why`] of a variable that holds mythosd's own token (`eval "$(mythos env ...)"`).
const OWN_TOKEN: &str = "holds mythosd's own local token, not a provider key";

impl Config {
    /// Refuse a configuration whose file names providers none of which can be used.
    ///
    /// Without this the daemon fell back to the simulated providers and answered every agent
    /// with "This is a simulated answer": a typo in a variable's name looked like a working
    /// setup. The simulation stays what a user without any key and without any `[[provider]]`
    /// gets (the demo mode); a file that names providers means real ones were wanted.
    pub fn check_usable(&self) -> Result<(), ConfigError> {
        if !self.providers.is_empty() || self.skipped.is_empty() {
            return Ok(());
        }
        let missing: Vec<String> = self
            .skipped
            .iter()
            .map(|s| format!("`{}` needs {}, which {}", s.provider, s.variable, s.why))
            .collect();
        Err(ConfigError::Unusable {
            path: self.file.clone().unwrap_or_default(),
            message: format!(
                "no configured provider can be used: {}. Set the variable where mythosd starts \
                 (for the service: ~/.config/mythos/env), or give the key as `api_key`",
                missing.join("; ")
            ),
        })
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid (toml's message names line, column and field).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong and where.
        message: String,
    },
    /// The file names providers, and none of them has its key (see [`Config::check_usable`]).
    #[error("{path}: {message}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// Which providers lack which variables.
        message: String,
    },
    /// An environment variable that overrides the file holds a bad value.
    #[error("environment variable {variable} {message}")]
    Env {
        /// The variable (`MYTHOS_HTTP_LISTEN`).
        variable: &'static str,
        /// What is wrong with its value.
        message: String,
    },
}

/// A built-in provider that registers itself from an environment variable.
struct Builtin {
    name: &'static str,
    api: Api,
    key_env: &'static str,
    /// A second key variable, read when the first is unset (Google's SDKs accept both).
    alt_key_env: Option<&'static str>,
    url_env: &'static str,
    model_env: &'static str,
    base_url: &'static str,
    model: &'static str,
    price_in: f64,
    price_out: f64,
    context_window: u64,
}

const BUILTINS: [Builtin; 3] = [
    Builtin {
        name: "anthropic",
        api: Api::Anthropic,
        key_env: "ANTHROPIC_API_KEY",
        alt_key_env: None,
        url_env: "ANTHROPIC_BASE_URL",
        model_env: "MYTHOS_ANTHROPIC_MODEL",
        base_url: "https://api.anthropic.com",
        model: "claude-sonnet-4-5",
        price_in: 3.0,
        price_out: 15.0,
        context_window: 200_000,
    },
    Builtin {
        name: "deepseek",
        api: Api::Openai,
        key_env: "DEEPSEEK_API_KEY",
        alt_key_env: None,
        url_env: "DEEPSEEK_BASE_URL",
        model_env: "MYTHOS_DEEPSEEK_MODEL",
        base_url: "https://api.deepseek.com",
        model: "deepseek-chat",
        price_in: 0.28,
        price_out: 0.42,
        context_window: 128_000,
    },
    Builtin {
        name: "openai",
        api: Api::Openai,
        key_env: "OPENAI_API_KEY",
        alt_key_env: None,
        url_env: "OPENAI_BASE_URL",
        model_env: "MYTHOS_OPENAI_MODEL",
        base_url: "https://api.openai.com/v1",
        model: "gpt-4o",
        price_in: 2.5,
        price_out: 10.0,
        context_window: 128_000,
    },
];

/// Google Gemini, registered like a built-in but ranked after the built-ins and the presets:
/// it joined last, and a user's existing order should not change because a Google key is set.
const GEMINI: Builtin = Builtin {
    name: "gemini",
    api: Api::Gemini,
    key_env: "GEMINI_API_KEY",
    alt_key_env: Some("GOOGLE_API_KEY"),
    url_env: "GEMINI_BASE_URL",
    model_env: "MYTHOS_GEMINI_MODEL",
    base_url: "https://generativelanguage.googleapis.com",
    model: "gemini-2.5-flash",
    price_in: 0.30,
    price_out: 2.50,
    context_window: 1_048_576,
};

/// Names of the environment variables that register providers, for help messages.
pub const KEY_ENV_VARS: [&str; 5] = [
    "ANTHROPIC_API_KEY",
    "DEEPSEEK_API_KEY",
    "OPENAI_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    routing: FileRouting,
    #[serde(default)]
    server: FileServer,
    #[serde(default)]
    http: crate::http::config::FileHttp,
    #[serde(default, rename = "provider")]
    providers: Vec<FileProvider>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    max_connections: Option<usize>,
    max_request_memory_mib: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRouting {
    retry_backoff_ms: Option<Vec<u64>>,
    retry_jitter: Option<f64>,
    cooldown_secs: Option<u64>,
    max_cooldown_secs: Option<u64>,
    first_token_timeout_ms: Option<u64>,
    stall_timeout_ms: Option<u64>,
    watchdog_floor_ms: Option<u64>,
    watchdog_ceiling_ms: Option<u64>,
    health_half_life_secs: Option<u64>,
    probe_interval_secs: Option<u64>,
    default_max_tokens: Option<u32>,
    drain_timeout_secs: Option<u64>,
    max_queue_wait_ms: Option<u64>,
    retry_budget_ratio: Option<f64>,
    first_token_ms_per_1k_input: Option<u64>,
    reasoning_first_token_timeout_ms: Option<u64>,
    tool_stall_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvider {
    name: String,
    api: Option<Api>,
    base_url: Option<String>,
    model: Option<String>,
    api_key_env: Option<String>,
    api_key: Option<String>,
    priority: Option<u32>,
    price_input_per_mtok: Option<f64>,
    price_output_per_mtok: Option<f64>,
    price_cache_read_per_mtok: Option<f64>,
    price_cache_write_per_mtok: Option<f64>,
    price_per_web_search: Option<f64>,
    max_concurrent: Option<u32>,
    context_window: Option<u64>,
    reasoning: Option<bool>,
    max_output_tokens: Option<u32>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

impl FileProvider {
    /// The optional limits a file entry may set on any provider.
    fn apply_limits(&self, p: &mut ProviderConfig) {
        if self.price_cache_read_per_mtok.is_some() {
            p.price_cache_read_per_mtok = self.price_cache_read_per_mtok;
        }
        if self.price_cache_write_per_mtok.is_some() {
            p.price_cache_write_per_mtok = self.price_cache_write_per_mtok;
        }
        if self.price_per_web_search.is_some() {
            p.price_per_web_search = self.price_per_web_search;
        }
        if let Some(n) = self.max_concurrent {
            p.max_concurrent = n.max(1);
        }
        if let Some(w) = self.context_window {
            p.context_window = Some(w);
        }
        if let Some(r) = self.reasoning {
            p.reasoning = r;
        }
        if let Some(n) = self.max_output_tokens {
            p.max_output_tokens = Some(n);
        }
    }
}

impl Config {
    /// Load from the environment and `file` (a missing file is fine; a broken one is not).
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        Self::load_with(file, &|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// [`Config::load`] with an injected environment, for tests.
    pub fn load_with(
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let (parsed, source, text) = match read_file(file)? {
            Some(bytes) => {
                let text = utf8(bytes, file)?;
                (parse(&text, file)?, Some(file.to_path_buf()), text)
            }
            None => (FileConfig::default(), None, String::new()),
        };
        let err = |message: String| ConfigError::Parse {
            path: file.to_path_buf(),
            message,
        };
        let check = Checker::new(&text, file);
        check.file(&parsed)?;

        let listen_env = env(crate::http::config::LISTEN_ENV);
        let http = parsed
            .http
            .resolve(listen_env.clone())
            .map_err(|(key, why)| match (&listen_env, key) {
                // The value came from the environment: the file is not at fault.
                (Some(_), "listen") => ConfigError::Env {
                    variable: crate::http::config::LISTEN_ENV,
                    message: why,
                },
                _ => check.fail("http", None, key, why),
            })?;
        // A shell set up for an agent (`eval "$(mythos env claude)"`, often in a shell's rc
        // file) points the provider's base-URL variable at mythosd itself: a daemon started
        // from it sent that provider's requests to its own front end, which refused them with
        // a 401 and marked the provider's key rejected (found by a helper).
        let base_url_env = |variable: &str| {
            env(variable).filter(|url| {
                let own = http.enabled && points_at(url, http.listen);
                if own {
                    tracing::warn!(
                        variable,
                        url = %url,
                        "points at mythosd's own HTTP front end, not at the provider: ignored"
                    );
                }
                !own
            })
        };
        let mut providers: Vec<ProviderConfig> = Vec::new();
        let mut skipped: Vec<Skipped> = Vec::new();
        let mut skip = |provider: &str, variable: String, why| {
            skipped.push(Skipped {
                provider: provider.to_string(),
                variable: shown_variable(variable),
                why,
            })
        };
        // By name without case, as presets are found and agents pin names: an entry `Groq` is
        // the `groq` preset, not a second provider on the same key (each pacing its own view
        // of the one quota).
        let mut from_file: HashMap<String, &FileProvider> = HashMap::new();
        for p in &parsed.providers {
            // The checker refused duplicates with their line already.
            from_file.insert(p.name.to_ascii_lowercase(), p);
        }
        let gemini_priority = (BUILTINS.len() + crate::presets::PRESETS.len()) as u32;
        let builtins = BUILTINS
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u32, b))
            .chain(std::iter::once((gemini_priority, &GEMINI)));
        for (i, b) in builtins {
            let over = from_file.remove(b.name);
            if over.is_some_and(|o| !o.enabled) {
                continue;
            }
            let named = over.and_then(|o| o.api_key_env.as_deref());
            let key_env = named.unwrap_or(b.key_env);
            let key = over
                .and_then(|o| o.api_key.clone())
                .or_else(|| env(key_env))
                .or_else(|| b.alt_key_env.filter(|_| named.is_none()).and_then(env));
            // Unset built-ins the file does not name are skipped in silence by design: they
            // are offers (`ANTHROPIC_API_KEY` if you have it), not the user's choice.
            let variable = || match (named, b.alt_key_env) {
                (None, Some(alt)) => format!("{key_env} (or {alt})"),
                _ => key_env.to_string(),
            };
            let Some(key) = key else {
                if over.is_some() {
                    skip(b.name, variable(), UNSET);
                }
                continue;
            };
            if key.starts_with(crate::http::token::TOKEN_PREFIX) {
                // A shell pointed at mythosd (`eval "$(mythos env openai)"`) holds the daemon's
                // own token here: registering it would route requests back into the daemon.
                tracing::warn!(
                    variable = key_env,
                    "holds mythosd's own local token, not a provider key: ignored"
                );
                if over.is_some() {
                    skip(b.name, variable(), OWN_TOKEN);
                }
                continue;
            }
            let mut p = ProviderConfig::new(
                b.name,
                over.and_then(|o| o.api).unwrap_or(b.api),
                over.and_then(|o| o.base_url.clone())
                    .or_else(|| base_url_env(b.url_env))
                    .unwrap_or_else(|| b.base_url.to_string()),
                over.and_then(|o| o.model.clone())
                    .or_else(|| env(b.model_env))
                    .unwrap_or_else(|| b.model.to_string()),
            );
            p.api_key = Some(Secret::new(key));
            p.priority = over.and_then(|o| o.priority).unwrap_or(i);
            p.price_input_per_mtok = over
                .and_then(|o| o.price_input_per_mtok)
                .unwrap_or(b.price_in);
            p.price_output_per_mtok = over
                .and_then(|o| o.price_output_per_mtok)
                .unwrap_or(b.price_out);
            // The built-in window belongs to the built-in model; another model's is unknown.
            let same_model = p.model == b.model;
            p.context_window = same_model.then_some(b.context_window);
            if let Some(o) = over {
                o.apply_limits(&mut p);
            }
            providers.push(p);
        }
        // Presets with a key in the environment register themselves, after the built-ins
        // (local servers only when the file names them).
        for (i, preset) in crate::presets::PRESETS.iter().enumerate() {
            if from_file.contains_key(&preset.name.to_ascii_lowercase()) {
                continue;
            }
            let Some(key) = preset.key_env.and_then(env) else {
                continue;
            };
            if key.starts_with(crate::http::token::TOKEN_PREFIX) {
                continue;
            }
            let mut c =
                ProviderConfig::new(preset.name, Api::Openai, preset.base_url, preset.model);
            c.api_key = Some(Secret::new(key));
            c.priority = BUILTINS.len() as u32 + i as u32;
            c.price_input_per_mtok = preset.price_in;
            c.price_output_per_mtok = preset.price_out;
            c.context_window = Some(preset.context_window);
            providers.push(c);
        }
        // Extra endpoints, in file order after the built-ins.
        for (index, p) in parsed.providers.iter().enumerate() {
            if !from_file.contains_key(&p.name.to_ascii_lowercase()) || !p.enabled {
                continue;
            }
            // A preset's name brings its defaults; the file's fields override them.
            let preset = crate::presets::find(&p.name);
            let need = |field: &str, v: Option<String>| {
                v.ok_or_else(|| {
                    // The field is missing, so the entry's name is where to look.
                    err(format!(
                        "{}provider `{}` needs `{field}` (built-ins and presets have defaults: \
                         anthropic, deepseek, openai, gemini, {})",
                        check.at("provider", Some(index), "name"),
                        p.name,
                        crate::presets::PRESETS
                            .iter()
                            .map(|p| p.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            };
            let base_url = need(
                "base_url",
                p.base_url
                    .clone()
                    .or_else(|| preset.map(|x| x.base_url.to_string())),
            )?;
            let model = need(
                "model",
                p.model
                    .clone()
                    .or_else(|| preset.map(|x| x.model.to_string())),
            )?;
            let key_env = p
                .api_key_env
                .as_deref()
                .or_else(|| preset.and_then(|x| x.key_env));
            let api_key = match (&p.api_key, key_env) {
                (Some(k), _) => Some(Secret::new(k.clone())),
                (None, Some(var)) => match env(var) {
                    Some(k) if k.starts_with(crate::http::token::TOKEN_PREFIX) => {
                        skip(&p.name, var.to_string(), OWN_TOKEN);
                        continue;
                    }
                    Some(k) => Some(Secret::new(k)),
                    // The file names this provider: it is wanted, so it is named in a warning
                    // (and refused at start if it was the only one), never dropped in silence.
                    None => {
                        skip(&p.name, var.to_string(), UNSET);
                        continue;
                    }
                },
                // Local servers (Ollama, vLLM) need no key.
                (None, None) => None,
            };
            let same_model = preset.is_some_and(|x| x.model == model);
            let mut c = ProviderConfig::new(&p.name, p.api.unwrap_or(Api::Openai), base_url, model);
            c.api_key = api_key;
            c.priority = p.priority.unwrap_or(10 + providers.len() as u32);
            let preset_price = |f: fn(&crate::presets::Preset) -> f64| {
                preset.filter(|_| same_model).map(f).unwrap_or(0.0)
            };
            c.price_input_per_mtok = p
                .price_input_per_mtok
                .unwrap_or_else(|| preset_price(|x| x.price_in));
            c.price_output_per_mtok = p
                .price_output_per_mtok
                .unwrap_or_else(|| preset_price(|x| x.price_out));
            // The preset's window belongs to its default model; another model's is unknown.
            c.context_window = preset.filter(|_| same_model).map(|x| x.context_window);
            p.apply_limits(&mut c);
            providers.push(c);
        }
        providers.sort_by_key(|p| p.priority);

        let r = &parsed.routing;
        let d = RoutingConfig::default();
        let ms = |v: Option<u64>, def: Duration| v.map(Duration::from_millis).unwrap_or(def);
        let secs = |v: Option<u64>, def: Duration| v.map(Duration::from_secs).unwrap_or(def);
        let routing = RoutingConfig {
            retry_backoff: r
                .retry_backoff_ms
                .as_ref()
                .map(|v| v.iter().map(|&m| Duration::from_millis(m)).collect())
                .unwrap_or(d.retry_backoff),
            retry_jitter: r.retry_jitter.unwrap_or(d.retry_jitter).clamp(0.0, 1.0),
            cooldown: secs(r.cooldown_secs, d.cooldown),
            max_cooldown: secs(r.max_cooldown_secs, d.max_cooldown),
            first_token_timeout: ms(r.first_token_timeout_ms, d.first_token_timeout),
            stall_timeout: ms(r.stall_timeout_ms, d.stall_timeout),
            watchdog_floor: ms(r.watchdog_floor_ms, d.watchdog_floor),
            watchdog_ceiling: ms(r.watchdog_ceiling_ms, d.watchdog_ceiling),
            health_half_life: secs(r.health_half_life_secs, d.health_half_life),
            probe_interval: secs(r.probe_interval_secs, d.probe_interval),
            default_max_tokens: r.default_max_tokens.unwrap_or(d.default_max_tokens),
            drain_timeout: secs(r.drain_timeout_secs, d.drain_timeout),
            max_queue_wait: ms(r.max_queue_wait_ms, d.max_queue_wait),
            retry_budget_ratio: r
                .retry_budget_ratio
                .unwrap_or(d.retry_budget_ratio)
                .clamp(0.0, 10.0),
            first_token_per_1k_input: ms(r.first_token_ms_per_1k_input, d.first_token_per_1k_input),
            reasoning_first_token_timeout: ms(
                r.reasoning_first_token_timeout_ms,
                d.reasoning_first_token_timeout,
            ),
            tool_stall_timeout: ms(r.tool_stall_timeout_ms, d.tool_stall_timeout),
        };
        if routing.watchdog_floor > routing.watchdog_ceiling {
            // Both set was refused with its line by the checker: one of them is the default.
            let (floor, ceiling) = (
                routing.watchdog_floor.as_millis(),
                routing.watchdog_ceiling.as_millis(),
            );
            return Err(if r.watchdog_floor_ms.is_some() {
                check.fail(
                    "routing",
                    None,
                    "watchdog_floor_ms",
                    format!(
                        "= {floor} is larger than watchdog_ceiling_ms ({ceiling}, the default)"
                    ),
                )
            } else {
                check.fail(
                    "routing",
                    None,
                    "watchdog_ceiling_ms",
                    format!("= {ceiling} is less than watchdog_floor_ms ({floor}, the default)"),
                )
            });
        }
        Ok(Config {
            providers,
            routing,
            http,
            server: ServerConfig {
                max_connections: parsed
                    .server
                    .max_connections
                    .unwrap_or(ServerConfig::default().max_connections),
                max_request_memory: parsed
                    .server
                    .max_request_memory_mib
                    .map_or(ServerConfig::default().max_request_memory, |mib| mib << 20),
            },
            file: source,
            skipped,
        })
    }
}

/// Value checks with the line and column of the offending value, so that a config value that
/// would make every request fail or wait forever (a zero watchdog, a cooldown of 2^63 seconds,
/// an `ftp://` base URL) is refused at start-up with its place in the file.
struct Checker<'a> {
    doc: Option<toml_edit::ImDocument<&'a str>>,
    text: &'a str,
    path: &'a Path,
}

impl<'a> Checker<'a> {
    fn new(text: &'a str, path: &'a Path) -> Self {
        Checker {
            doc: toml_edit::ImDocument::parse(text).ok(),
            text,
            path,
        }
    }

    /// "line L, column C: " of the value at `section.key` (`provider` is the index of a
    /// `[[provider]]` table).
    fn at(&self, section: &str, provider: Option<usize>, key: &str) -> String {
        let span = self.doc.as_ref().and_then(|doc| {
            let section = doc.get(section)?;
            match provider {
                Some(i) => match section.as_array_of_tables() {
                    Some(tables) => tables.get(i)?.get(key)?.span(),
                    // `provider = [{ name = "a", … }, …]`: an array of inline tables.
                    None => section
                        .as_array()?
                        .get(i)?
                        .as_inline_table()?
                        .get(key)?
                        .span(),
                },
                // `routing = { … }` as well as `[routing]`.
                None => match section.as_table_like()?.get(key)? {
                    toml_edit::Item::Value(v) => v.span(),
                    item => item.span(),
                },
            }
        });
        match span {
            Some(span) => format!("{}: ", line_col(self.text, span.start)),
            None => String::new(),
        }
    }

    /// A text field of provider `at` that is shown to the user or sent as a header: it must
    /// not be empty, and it must not hold a control character (an `ESC [ 2J` in a name cleared
    /// the terminal on `mythos status`; a newline splits a log line). `secret` keeps the value
    /// out of the message.
    fn text(
        &self,
        at: Option<usize>,
        key: &str,
        value: Option<&str>,
        secret: bool,
    ) -> Result<(), ConfigError> {
        let Some(v) = value else { return Ok(()) };
        if v.trim().is_empty() {
            return Err(self.fail("provider", at, key, "is empty".into()));
        }
        if let Some(c) = v.chars().find(|c| c.is_control()) {
            let shown = if secret {
                String::new()
            } else {
                // Debug escapes the control characters, so the message itself is safe to print.
                format!("= {v:?} ")
            };
            return Err(self.fail(
                "provider",
                at,
                key,
                format!(
                    "{shown}holds the control character U+{:04X}: names, models and keys are \
                     printed to terminals and sent in headers",
                    c as u32
                ),
            ));
        }
        Ok(())
    }

    fn fail(&self, section: &str, provider: Option<usize>, key: &str, why: String) -> ConfigError {
        let field = match provider {
            Some(_) => format!("provider.{key}"),
            None => format!("{section}.{key}"),
        };
        ConfigError::Parse {
            path: self.path.to_path_buf(),
            message: format!("{}{field} {why}", self.at(section, provider, key)),
        }
    }

    fn range<T: PartialOrd + Copy + fmt::Display>(
        &self,
        provider: Option<usize>,
        key: &str,
        value: Option<T>,
        lo: T,
        hi: T,
    ) -> Result<(), ConfigError> {
        let section = match (provider, key) {
            (Some(_), _) => "provider",
            (None, "max_connections" | "max_request_memory_mib") => "server",
            _ => "routing",
        };
        match value {
            Some(v) if !(v >= lo && v <= hi) => Err(self.fail(
                section,
                provider,
                key,
                format!("= {v} is out of range: it must be between {lo} and {hi}"),
            )),
            _ => Ok(()),
        }
    }

    fn file(&self, f: &FileConfig) -> Result<(), ConfigError> {
        const HOUR_MS: u64 = 3_600_000;
        const DAY_S: u64 = 86_400;
        let r = &f.routing;
        if let Some(steps) = &r.retry_backoff_ms {
            if steps.len() > 10 {
                return Err(self.fail(
                    "routing",
                    None,
                    "retry_backoff_ms",
                    "has more than 10 steps".into(),
                ));
            }
            if let Some(&big) = steps.iter().find(|&&m| m > 60_000) {
                return Err(self.fail(
                    "routing",
                    None,
                    "retry_backoff_ms",
                    format!("has a step of {big} ms: at most 60000"),
                ));
            }
        }
        self.range(None, "retry_jitter", r.retry_jitter, 0.0, 1.0)?;
        self.range(None, "cooldown_secs", r.cooldown_secs, 1, DAY_S)?;
        self.range(None, "max_cooldown_secs", r.max_cooldown_secs, 1, 7 * DAY_S)?;
        for (key, v) in [
            ("first_token_timeout_ms", r.first_token_timeout_ms),
            ("stall_timeout_ms", r.stall_timeout_ms),
            ("watchdog_floor_ms", r.watchdog_floor_ms),
            ("watchdog_ceiling_ms", r.watchdog_ceiling_ms),
            ("tool_stall_timeout_ms", r.tool_stall_timeout_ms),
        ] {
            self.range(None, key, v, 100, HOUR_MS)?;
        }
        self.range(
            None,
            "health_half_life_secs",
            r.health_half_life_secs,
            1,
            30 * DAY_S,
        )?;
        self.range(
            None,
            "probe_interval_secs",
            r.probe_interval_secs,
            1,
            7 * DAY_S,
        )?;
        self.range(
            None,
            "default_max_tokens",
            r.default_max_tokens,
            1,
            2_000_000,
        )?;
        self.range(None, "drain_timeout_secs", r.drain_timeout_secs, 0, 3_600)?;
        self.range(None, "max_queue_wait_ms", r.max_queue_wait_ms, 0, HOUR_MS)?;
        self.range(None, "retry_budget_ratio", r.retry_budget_ratio, 0.0, 10.0)?;
        self.range(
            None,
            "first_token_ms_per_1k_input",
            r.first_token_ms_per_1k_input,
            0,
            60_000,
        )?;
        self.range(
            None,
            "reasoning_first_token_timeout_ms",
            r.reasoning_first_token_timeout_ms,
            1_000,
            HOUR_MS,
        )?;

        if let (Some(c), Some(m)) = (r.cooldown_secs, r.max_cooldown_secs) {
            if m < c {
                return Err(self.fail(
                    "routing",
                    None,
                    "max_cooldown_secs",
                    format!("= {m} is less than cooldown_secs ({c})"),
                ));
            }
        }
        if let (Some(fl), Some(ce)) = (r.watchdog_floor_ms, r.watchdog_ceiling_ms) {
            if fl > ce {
                return Err(self.fail(
                    "routing",
                    None,
                    "watchdog_floor_ms",
                    format!("= {fl} is larger than watchdog_ceiling_ms ({ce})"),
                ));
            }
        }
        self.range(
            None,
            "max_connections",
            f.server.max_connections,
            1,
            100_000,
        )?;
        // At least a few requests of the largest size; at most what a 64-bit machine has.
        self.range(
            None,
            "max_request_memory_mib",
            f.server.max_request_memory_mib,
            16,
            1 << 20,
        )?;
        // Compared without case, as agents' `model` names are (`Groq/llama` pins `groq`): two
        // names that differ in case alone could not both be pinned.
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, p) in f.providers.iter().enumerate() {
            let at = Some(i);
            self.text(at, "name", Some(&p.name), false)?;
            if let Some(c) = p.name.chars().find(|&c| c == '/' || c.is_whitespace()) {
                // A model is pinned as `provider/model`: a name with a `/` was cut at it and
                // never matched; one with spaces cannot be typed as an agent's model.
                return Err(self.fail(
                    "provider",
                    at,
                    "name",
                    format!(
                        "= {:?} holds {c:?}: names are pinned as `name/model` in a request's \
                         model, so they cannot hold `/` or spaces",
                        p.name
                    ),
                ));
            }
            if let Some(first) = names.insert(p.name.to_ascii_lowercase(), i) {
                let first_at = self.at("provider", Some(first), "name");
                return Err(self.fail(
                    "provider",
                    at,
                    "name",
                    format!(
                        "= {:?} is defined twice (first at {})",
                        p.name,
                        first_at.trim_end_matches(": ")
                    ),
                ));
            }
            self.text(at, "model", p.model.as_deref(), false)?;
            self.text(at, "api_key", p.api_key.as_deref(), true)?;
            self.text(at, "api_key_env", p.api_key_env.as_deref(), false)?;
            if p.api_key_env
                .as_deref()
                .is_some_and(|v| !is_variable_name(v))
            {
                // Most likely the key itself, pasted where its variable's name belongs: the
                // message must not show it, nor may a later warning that names the variable.
                return Err(self.fail(
                    "provider",
                    at,
                    "api_key_env",
                    "is not a variable name (letters, digits and `_`, at most 64): it names the \
                     environment variable that holds the key; a key itself goes in `api_key`"
                        .into(),
                ));
            }
            if let Some(url) = &p.base_url {
                let ok = reqwest::Url::parse(url)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
                if ok.is_none() {
                    // Credentials in a URL (`https://user:key@host`) stay out of the message.
                    let shown = match url.rsplit_once('@') {
                        Some((before, host)) => match before.split_once("://") {
                            Some((scheme, _)) => format!("{scheme}://***@{host}"),
                            None => format!("***@{host}"),
                        },
                        None => url.clone(),
                    };
                    let shown = crate::provider::redact::redact(&shown, None);
                    return Err(self.fail(
                        "provider",
                        at,
                        "base_url",
                        format!("= {shown:?} is not an http:// or https:// URL"),
                    ));
                }
            }
            self.range(at, "priority", p.priority, 0, 1000)?;
            self.range(
                at,
                "price_input_per_mtok",
                p.price_input_per_mtok,
                0.0,
                10_000.0,
            )?;
            for (field, v) in [
                ("price_output_per_mtok", p.price_output_per_mtok),
                ("price_cache_read_per_mtok", p.price_cache_read_per_mtok),
                ("price_cache_write_per_mtok", p.price_cache_write_per_mtok),
            ] {
                self.range(at, field, v, 0.0, 10_000.0)?;
            }
            self.range(
                at,
                "price_per_web_search",
                p.price_per_web_search,
                0.0,
                100.0,
            )?;
            self.range(at, "max_concurrent", p.max_concurrent, 1, 100_000)?;
            self.range(at, "context_window", p.context_window, 1, 100_000_000)?;
            self.range(at, "max_output_tokens", p.max_output_tokens, 1, 10_000_000)?;
        }
        Ok(())
    }
}

/// Whether `name` can be an environment variable's name as shells write them, and short
/// enough not to be a key pasted into `api_key_env`.
fn is_variable_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A variable's name as a warning may show it: a key of letters and digits pasted into
/// `api_key_env` passes for a name, is not set as one, and was printed in the warning that
/// says so (in the log and in `mythos status`). A name that looks like a key is not shown.
fn shown_variable(name: String) -> String {
    if looks_like_key(&name) {
        "the variable its `api_key_env` names (not shown: that looks like a key itself; a key goes \
         in `api_key`, its variable's name in `api_key_env`)"
            .into()
    } else {
        name
    }
}

/// Whether a would-be variable name looks like a key: long, with digits and lower-case letters
/// among its characters, as keys are and names (`OPENAI_API_KEY_2`) are not.
fn looks_like_key(name: &str) -> bool {
    let count = |f: fn(&char) -> bool| name.chars().filter(f).count();
    name.len() >= 20 && count(char::is_ascii_digit) >= 4 && count(char::is_ascii_lowercase) >= 4
}

/// "line L, column C" of byte `offset` in `text` (the column counts bytes, as toml does).
fn line_col(text: &str, offset: usize) -> String {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("line {line}, column {column}")
}

/// The file as text; bytes that are not UTF-8 are refused with their place, which an editor
/// saving in Latin-1 needs to be found.
/// Whether `url` is an address of a server listening on `listen` on this machine (a loopback
/// name or address, or the listening address itself, at its port).
fn points_at(url: &str, listen: std::net::SocketAddr) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    if url.port_or_known_default() != Some(listen.port()) {
        return false;
    }
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified() || ip == listen.ip(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// The most a config file may hold: a real one is a few KiB, and a 20 MB one (five million
/// retry delays) held a reload for 8 s.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The config file's bytes; `None` when there is none. Only a regular file is read: opening a
/// FIFO waits for a writer, and a reload held the daemon (status, `/health`, every new
/// request) until one came. It is opened without waiting and checked once open, so a file
/// swapped for a FIFO after a check cannot hold it either.
fn read_file(file: &Path) -> Result<Option<Vec<u8>>, ConfigError> {
    use std::io::{Error, ErrorKind, Read};
    let failed = |source| ConfigError::Read {
        path: file.to_path_buf(),
        source,
    };
    let mut open = std::fs::OpenOptions::new();
    open.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut open, libc::O_NONBLOCK);
    let f = match open.open(file) {
        Ok(f) => f,
        // A link to nothing is a mistake to point out, not "no config file".
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return match std::fs::read_link(file) {
                Ok(to) => Err(failed(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "it is a symbolic link to {}, which does not exist",
                        to.display()
                    ),
                ))),
                Err(_) => Ok(None),
            };
        }
        Err(e) => return Err(failed(e)),
    };
    let meta = f.metadata().map_err(failed)?;
    let too_big = |len: u64| {
        failed(Error::other(format!(
            "it holds {len} bytes, and a config file may hold at most {} KiB",
            MAX_CONFIG_BYTES >> 10
        )))
    };
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a FIFO or a device?)"
        };
        return Err(failed(Error::other(format!("it is {what}"))));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(Some(bytes))
}

fn utf8(bytes: Vec<u8>, path: &Path) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let text = String::from_utf8_lossy(&bytes[..good]);
        ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!(
                "{}: byte 0x{:02x} is not UTF-8 (save the file as UTF-8)",
                line_col(&text, good),
                bytes[good]
            ),
        }
    })
}

/// The dotted name of the field whose value holds byte `offset` (`provider.priority`), so a
/// type error ("invalid value: integer `-1`, expected u32") says which field it is about.
fn field_at(text: &str, offset: usize) -> Option<String> {
    fn in_table(t: &dyn toml_edit::TableLike, offset: usize, path: &str) -> Option<String> {
        t.iter().find_map(|(key, item)| {
            let path = if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            };
            match item {
                toml_edit::Item::Table(t) => in_table(t, offset, &path),
                toml_edit::Item::ArrayOfTables(a) => {
                    a.iter().find_map(|t| in_table(t, offset, &path))
                }
                toml_edit::Item::Value(v) => {
                    let span = v.span()?;
                    if !span.contains(&offset) {
                        return None;
                    }
                    match v.as_inline_table() {
                        Some(t) => in_table(t, offset, &path).or(Some(path)),
                        None => Some(path),
                    }
                }
                toml_edit::Item::None => None,
            }
        })
    }
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    in_table(doc.as_table(), offset, "")
}

/// Where a `provider` written as one table (`[provider]`, `provider = {...}`) starts, if it is:
/// serde's "invalid type: map, expected a sequence" at line 1 did not say which key, nor how
/// to write it.
fn single_provider_table(text: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let (key, item) = doc.as_table().get_key_value("provider")?;
    if item.is_array_of_tables() || item.is_array() {
        return None;
    }
    item.is_table_like()
        .then(|| key.span().or_else(|| item.span()))
        .flatten()
        .map(|span| span.start)
}

fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        if let Some(offset) = single_provider_table(text) {
            return ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!(
                    "{}: provider: each provider is an entry of a list: write its table \
                     `[[provider]]`, with double brackets",
                    line_col(text, offset)
                ),
            };
        }
        // One line, compiler style: "line 3, column 1: unknown field `x`, expected ...". The
        // daemon reports start-up errors on a single line, and editors jump to line:column.
        let message = match e.span() {
            Some(span) => {
                let field = field_at(text, span.start)
                    .map(|f| format!("{f}: "))
                    .unwrap_or_default();
                format!(
                    "{}: {field}{}",
                    line_col(text, span.start),
                    e.message().trim()
                )
            }
            None => e.message().trim().to_string(),
        };
        let message = match did_you_mean(e.message()) {
            Some(near) => format!("{} (did you mean `{near}`?)", message.trim_end()),
            None => message,
        };
        ConfigError::Parse {
            path: path.to_path_buf(),
            message: message.replace('\n', " "),
        }
    })
}

/// For serde's "unknown field `cooldwn_secs`, expected one of `a`, `b`…", the known field
/// nearest the unknown one, when it is near enough to be a typo (found by a helper: the whole
/// list was given, the fix left to find in it).
fn did_you_mean(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let (_, expected) = rest.split_once("expected")?;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|known| (edit_distance(unknown, known), known))
        .filter(|&(d, known)| d > 0 && d <= 2.max(known.len() / 4))
        .min_by_key(|&(d, _)| d)
        .map(|(_, known)| known)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn load(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        Config::load_with(&path, env)
    }

    /// Only a regular file of a sane size is read, and the error says what is wrong: a FIFO
    /// held a reload (and the daemon with it) until something wrote to it, a 20 MB file held
    /// it for 8 s, and a link to nothing was taken for "no config file".
    #[cfg(unix)]
    #[test]
    fn only_a_regular_file_of_a_sane_size_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_of(&[]);
        let fifo = dir.path().join("fifo.toml");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        let e = Config::load_with(&fifo, &env).unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            e.contains("fifo.toml") && e.contains("not a regular file"),
            "{e}"
        );

        let e = Config::load_with(dir.path(), &env).unwrap_err().to_string();
        assert!(e.contains("it is a directory"), "{e}");

        let big = dir.path().join("big.toml");
        let mut text = "[routing]\nretry_backoff_ms = [".to_string();
        text.push_str(&"100,".repeat(300_000));
        text.push_str("100]\n");
        std::fs::write(&big, text).unwrap();
        let e = Config::load_with(&big, &env).unwrap_err().to_string();
        assert!(e.contains("at most 1024 KiB"), "{e}");

        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(dir.path().join("gone.toml"), &link).unwrap();
        let e = Config::load_with(&link, &env).unwrap_err().to_string();
        assert!(
            e.contains("symbolic link") && e.contains("gone.toml"),
            "{e}"
        );

        // A file that is not there is still fine (the environment's providers).
        let none = Config::load_with(&dir.path().join("none.toml"), &env).unwrap();
        assert!(none.file.is_none());
    }

    /// `eval "$(mythos env claude)"` in a shell (or its rc file) points `ANTHROPIC_BASE_URL` at
    /// mythosd itself; a daemon started from that shell must still send Anthropic's requests
    /// to Anthropic, not to its own front end (a 401 that marked the key rejected).
    #[test]
    fn a_base_url_pointing_at_mythosd_itself_is_ignored() {
        let anthropic_at = |url: &'static str| {
            move |k: &str| match k {
                "ANTHROPIC_API_KEY" => Some("sk-ant-a".to_string()),
                "ANTHROPIC_BASE_URL" => Some(url.to_string()),
                _ => None,
            }
        };
        for own in [
            "http://127.0.0.1:7626",
            "http://localhost:7626/",
            "http://[::1]:7626",
            "http://0.0.0.0:7626/v1",
        ] {
            let env = anthropic_at(own);
            let c = load("", &env).unwrap();
            assert_eq!(
                c.providers[0].base_url, "https://api.anthropic.com",
                "{own}"
            );
        }
        // Another port, or another machine, is a provider (a proxy, a local gateway).
        for other in ["http://127.0.0.1:7627", "https://proxy.example:7626"] {
            let env = anthropic_at(other);
            let c = load("", &env).unwrap();
            assert_eq!(c.providers[0].base_url, other);
        }
        // The daemon's own address is where it listens.
        let env = env_of(&[
            ("ANTHROPIC_API_KEY", "sk-ant-a"),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9000"),
        ]);
        let c = load("[http]\nlisten = \"127.0.0.1:9000\"\n", &env).unwrap();
        assert_eq!(c.providers[0].base_url, "https://api.anthropic.com");
    }

    #[test]
    fn no_file_registers_from_env_in_priority_order() {
        let env = env_of(&[
            ("OPENAI_API_KEY", "sk-o"),
            ("ANTHROPIC_API_KEY", "sk-a"),
            ("DEEPSEEK_BASE_URL", "http://127.0.0.1:9"),
        ]);
        let c = Config::load_with(Path::new("/nonexistent/mythos.toml"), &env).unwrap();
        let names: Vec<_> = c.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["anthropic", "openai"]);
        assert_eq!(c.providers[1].priority, 2);
        assert!(c.file.is_none());
        // The key never shows in Debug output.
        assert!(!format!("{:?}", c).contains("sk-a"));
    }

    #[test]
    fn file_reorders_and_adds_endpoints() {
        let env = env_of(&[("ANTHROPIC_API_KEY", "a"), ("GROQ_API_KEY", "g")]);
        let c = load(
            r#"
[routing]
cooldown_secs = 60
retry_backoff_ms = [10, 20]

[[provider]]
name = "anthropic"
priority = 5
model = "claude-opus-4"

[[provider]]
name = "groq"
base_url = "https://api.groq.com/openai/v1"
api_key_env = "GROQ_API_KEY"
model = "llama-3.3-70b-versatile"
priority = 1

[[provider]]
name = "ollama"
base_url = "http://127.0.0.1:11434/v1"
model = "qwen2.5-coder"
priority = 7
"#,
            &env,
        )
        .unwrap();
        let names: Vec<_> = c.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["groq", "anthropic", "ollama"]);
        assert_eq!(c.providers[1].model, "claude-opus-4");
        assert!(c.providers[2].api_key.is_none());
        assert_eq!(c.routing.cooldown, Duration::from_secs(60));
        assert_eq!(c.routing.retry_backoff.len(), 2);
    }

    #[test]
    fn gemini_registers_from_either_key_after_the_presets() {
        let env = env_of(&[("GOOGLE_API_KEY", "g"), ("GROQ_API_KEY", "q")]);
        let c = load("", &env).unwrap();
        let names: Vec<_> = c.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["groq", "gemini"]);
        let g = &c.providers[1];
        assert_eq!(g.api, Api::Gemini);
        assert_eq!(g.base_url, "https://generativelanguage.googleapis.com");
        assert_eq!(g.model, "gemini-2.5-flash");
        assert_eq!(g.api_key.as_ref().map(Secret::expose), Some("g"));
        assert_eq!(g.context_window, Some(1_048_576));
        assert_eq!(g.output_limit(), 65_536);
        assert!(g.priority > c.providers[0].priority);
        // GEMINI_API_KEY wins over GOOGLE_API_KEY; the model and URL can be overridden.
        let env = env_of(&[
            ("GOOGLE_API_KEY", "g"),
            ("GEMINI_API_KEY", "m"),
            ("MYTHOS_GEMINI_MODEL", "gemini-2.5-pro"),
            ("GEMINI_BASE_URL", "http://127.0.0.1:9"),
        ]);
        let c = load("", &env).unwrap();
        let g = &c.providers[0];
        assert_eq!(
            (
                g.api_key.as_ref().map(Secret::expose),
                g.model.as_str(),
                g.base_url.as_str()
            ),
            (Some("m"), "gemini-2.5-pro", "http://127.0.0.1:9")
        );
        assert_eq!(g.context_window, None, "another model's window is unknown");
        // `api = "gemini"` in the file.
        let c = load(
            "[[provider]]\nname = \"vertex\"\napi = \"gemini\"\nbase_url = \"http://x\"\nmodel = \"gemini-2.0-flash\"\napi_key = \"k\"\n",
            &env_of(&[]),
        )
        .unwrap();
        assert_eq!(c.providers[0].api, Api::Gemini);
    }

    #[test]
    fn presets_register_from_their_key_or_by_name() {
        let env = env_of(&[("GROQ_API_KEY", "gsk"), ("ANTHROPIC_API_KEY", "a")]);
        let c = Config::load_with(Path::new("/nonexistent/mythos.toml"), &env).unwrap();
        let names: Vec<_> = c.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["anthropic", "groq"]);
        let groq = &c.providers[1];
        assert_eq!(groq.base_url, "https://api.groq.com/openai/v1");
        assert!(groq.price_input_per_mtok > 0.0 && groq.context_window.is_some());

        // By name in the file: defaults from the preset, fields override; local servers need
        // no key and register only when named.
        let c = load(
            "[[provider]]\nname = \"ollama\"\n\n[[provider]]\nname = \"groq\"\nmodel = \"qwen-qwq-32b\"\n",
            &env,
        )
        .unwrap();
        let ollama = c.providers.iter().find(|p| p.name == "ollama").unwrap();
        assert_eq!(ollama.base_url, "http://127.0.0.1:11434/v1");
        assert!(ollama.api_key.is_none());
        let groq = c.providers.iter().find(|p| p.name == "groq").unwrap();
        assert_eq!(groq.model, "qwen-qwq-32b");
        // The preset's price and window belong to its default model.
        assert_eq!(groq.price_input_per_mtok, 0.0);
        assert_eq!(groq.context_window, None);
        assert!(!c.providers.iter().any(|p| p.name == "lmstudio"));
        // A preset named in the file without its key variable set is skipped, and named.
        let c = load("[[provider]]\nname = \"mistral\"\n", &env_of(&[])).unwrap();
        assert!(c.providers.is_empty());
        assert_eq!(c.skipped[0].variable, "MISTRAL_API_KEY");
    }

    /// A file's entry for a preset or a built-in, in other capitals, is that provider (its
    /// preset is found without case, and agents pin names without case): registered besides
    /// the one the environment brings, the same key was paced as two providers' quotas, each
    /// ignorant of the other's requests, and `groq/...` pinned either.
    #[test]
    fn a_preset_named_in_other_capitals_is_not_registered_twice() {
        let env = env_of(&[("GROQ_API_KEY", "gsk_test")]);
        let c = load("[[provider]]\nname = \"Groq\"\npriority = 1\n", &env).unwrap();
        let names: Vec<&str> = c.providers.iter().map(|p| p.name.as_str()).collect();
        let same = names
            .iter()
            .filter(|n| n.eq_ignore_ascii_case("groq"))
            .count();
        assert_eq!(same, 1, "{names:?}");
    }

    /// A key of letters and digits pasted into `api_key_env` passes for a variable name and is
    /// not set as one: the warning that says so must not print it (it went to the log and to
    /// `mythos status`). Ordinary names are still shown.
    #[test]
    fn a_key_pasted_for_its_variable_is_not_printed() {
        let none = env_of(&[]);
        let key = "Xk3f9aQ7mZ2pL8vR4tY6wB1nC5dE0gHj";
        let c = load(
            &format!(
                "[[provider]]\nname = \"mistral\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\n\
                 api_key_env = \"{key}\"\n\n[[provider]]\nname = \"other\"\n\
                 base_url = \"http://x/v1\"\nmodel = \"m\"\napi_key_env = \"OPENAI_API_KEY_2\"\n"
            ),
            &none,
        )
        .unwrap();
        let warnings: Vec<String> = c.skipped.iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("`mistral`") && warnings[0].contains("looks like a key"));
        assert!(warnings[1].contains("OPENAI_API_KEY_2"), "{warnings:?}");
        let refused = c.check_usable().unwrap_err().to_string();
        for text in warnings.iter().chain([&refused]) {
            assert!(!text.contains(&key[4..20]), "{text}");
        }
    }

    /// A provider whose `api_key_env` names an unset variable was dropped without a word; when
    /// it was the only one, the daemon ran on the simulated providers and agents got "This is
    /// a simulated answer" (found by a chaos run). Each such provider is now named with its
    /// variable (never a key), and a file none of whose providers can be used is refused.
    #[test]
    fn a_configured_provider_without_its_key_is_named_not_dropped() {
        let none = env_of(&[]);
        // One usable, one with a typo in its variable: the daemon runs on the first and says
        // which variable the second lacks.
        let c = load(
            "[[provider]]\nname = \"typo\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\n\
             api_key_env = \"OPENAI_APIKEY\"\npriority = 0\n\n\
             [[provider]]\nname = \"other\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\n\
             api_key = \"k-123456\"\npriority = 5\n",
            &none,
        )
        .unwrap();
        let names: Vec<_> = c.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["other"]);
        assert_eq!(c.skipped.len(), 1);
        let warning = c.skipped[0].to_string();
        assert!(
            warning.contains("`typo`") && warning.contains("OPENAI_APIKEY"),
            "{warning}"
        );
        assert!(!warning.contains("k-123456"), "{warning}");
        c.check_usable().unwrap();

        // Only providers without their keys: refused, naming each provider and variable.
        let c = load(
            "[[provider]]\nname = \"x\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\n\
             api_key_env = \"DOES_NOT_EXIST\"\n\n\
             [[provider]]\nname = \"anthropic\"\nmodel = \"claude-opus-4-1\"\n\n\
             [[provider]]\nname = \"gemini\"\n\n[[provider]]\nname = \"groq\"\n",
            &none,
        )
        .unwrap();
        assert!(c.providers.is_empty());
        let e = c.check_usable().unwrap_err().to_string();
        for part in [
            "config.toml: no configured provider can be used",
            "`x` needs DOES_NOT_EXIST",
            "`anthropic` needs ANTHROPIC_API_KEY",
            "`gemini` needs GEMINI_API_KEY (or GOOGLE_API_KEY)",
            "`groq` needs GROQ_API_KEY",
        ] {
            assert!(e.contains(part), "{part}: {e}");
        }
        assert!(!e.contains('\n'), "one line: {e}");

        // A variable that holds mythosd's own token is no key either (a custom provider
        // registered it before, and would have sent requests back into the daemon).
        assert_eq!(crate::http::token::TOKEN_PREFIX, "mythos-");
        let env = env_of(&[("MY_KEY", "mythos-0123456789abcdef")]);
        let c = load(
            "[[provider]]\nname = \"x\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\napi_key_env = \"MY_KEY\"\n",
            &env,
        )
        .unwrap();
        assert!(c.providers.is_empty());
        assert!(c
            .check_usable()
            .unwrap_err()
            .to_string()
            .contains("own local token"));

        // By design, unchanged: built-ins and presets the file does not name are offers, and
        // skip in silence without their keys; no provider and no key at all is the demo mode
        // (the simulated providers), with or without a file.
        for text in ["", "[routing]\ncooldown_secs = 5\n"] {
            let c = load(text, &none).unwrap();
            assert!(c.providers.is_empty() && c.skipped.is_empty());
            c.check_usable().unwrap();
        }
        let c = Config::load_with(Path::new("/nonexistent/mythos.toml"), &none).unwrap();
        c.check_usable().unwrap();
        // A provider turned off is not wanted.
        let c = load("[[provider]]\nname = \"groq\"\nenabled = false\n", &none).unwrap();
        assert!(c.skipped.is_empty());
        c.check_usable().unwrap();
    }

    /// The request memory is read in MiB; a budget too small for a few large requests is
    /// refused with its place.
    #[test]
    fn request_memory_is_configured_in_mib() {
        let env = env_of(&[("ANTHROPIC_API_KEY", "a")]);
        let c = load("", &env).unwrap();
        assert_eq!(c.server.max_request_memory, 256 << 20);
        let c = load("[server]\nmax_request_memory_mib = 64\n", &env).unwrap();
        assert_eq!(c.server.max_request_memory, 64 << 20);
        let e = load("[server]\nmax_request_memory_mib = 8\n", &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.max_request_memory_mib") && e.contains("between 16 and"),
            "{e}"
        );
    }

    #[test]
    fn the_readme_example_is_valid() {
        let readme = include_str!("../../README.md");
        // The configuration example is the block that starts with `[server]` (others show
        // agents' own config files).
        let start = readme
            .find("```toml\n[server]")
            .expect("the config example in the README")
            + 8;
        let len = readme[start..].find("```").unwrap();
        let env = env_of(&[("ANTHROPIC_API_KEY", "a"), ("GROQ_API_KEY", "g")]);
        let c = load(&readme[start..start + len], &env).unwrap();
        let names: Vec<_> = c.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["anthropic", "groq", "anthropic-opus", "ollama"]);
    }

    #[test]
    fn output_limits_by_model_and_by_config() {
        for (model, limit) in [
            ("claude-sonnet-4-5", 64_000),
            ("claude-opus-4-5-20251101", 64_000),
            ("claude-opus-4-1-20250805", 32_000),
            ("claude-opus-4-20250514", 32_000),
            ("claude-haiku-4-5", 64_000),
            ("claude-3-7-sonnet-latest", 64_000),
            ("claude-3-5-sonnet-20241022", 8_192),
            ("claude-3-5-haiku-latest", 8_192),
            ("deepseek-chat", 8_192),
            ("deepseek-reasoner", 65_536),
            ("gpt-4o-mini", 16_384),
            ("gpt-4.1", 32_768),
            ("o3", 100_000),
            ("openai/o4-mini", 100_000),
            ("gpt-5.1", 128_000),
            ("llama-3.3-70b-versatile", 8_192),
        ] {
            let p = ProviderConfig::new("p", Api::Openai, "http://x", model);
            assert_eq!(p.output_limit(), limit, "{model}");
        }
        let env = env_of(&[]);
        let c = load(
            "[[provider]]\nname = \"o\"\nbase_url = \"http://x\"\nmodel = \"gpt-4o\"\nmax_output_tokens = 4000\n",
            &env,
        )
        .unwrap();
        assert_eq!(c.providers[0].output_limit(), 4000);
    }

    /// What a coding agent's turn costs counts the prompt it read from the cache and what it
    /// wrote there: Claude Code's turn of 3 new tokens beside 100,000 read from the cache cost
    /// $0.03, not the $0.0015 of its output alone. Before, cached tokens cost nothing.
    #[test]
    fn cost_counts_cache_reads_and_writes() {
        let usage = mythos_protocol::Usage {
            input_tokens: 3,
            output_tokens: 100,
            cache_read_input_tokens: 100_000,
            cache_creation_input_tokens: 2_000,
            web_searches: 0,
        };
        let searched = mythos_protocol::Usage {
            web_searches: 2,
            ..usage
        };
        let mut claude = ProviderConfig::new("a", Api::Anthropic, "http://x", "claude-sonnet-4-5");
        claude.price_input_per_mtok = 3.0;
        claude.price_output_per_mtok = 15.0;
        let want = (3.0 * 3.0 + 100.0 * 15.0 + 100_000.0 * 0.3 + 2_000.0 * 3.75) / 1e6;
        assert!(
            (claude.cost(&usage) - want).abs() < 1e-12,
            "{}",
            claude.cost(&usage)
        );
        // Anthropic's $10 per 1,000 searches.
        assert!((claude.cost(&searched) - want - 0.02).abs() < 1e-12);
        claude.price_cache_read_per_mtok = Some(0.5);
        claude.price_cache_write_per_mtok = Some(6.0);
        let want = (3.0 * 3.0 + 100.0 * 15.0 + 100_000.0 * 0.5 + 2_000.0 * 6.0) / 1e6;
        assert!((claude.cost(&usage) - want).abs() < 1e-12);
        // OpenAI-format discounts by model.
        for (model, share) in [
            ("gpt-4o", 0.5),
            ("gpt-4.1-mini", 0.25),
            ("o3", 0.25),
            ("gpt-5", 0.1),
            ("deepseek-chat", 0.1),
            ("openai/gpt-5-mini", 0.1),
        ] {
            let mut c = ProviderConfig::new("o", Api::Openai, "http://x", model);
            c.price_input_per_mtok = 2.0;
            assert!(
                (c.cache_read_price() - 2.0 * share).abs() < 1e-12,
                "{model}"
            );
            assert_eq!(c.cache_write_price(), 2.0, "{model}");
        }
    }

    #[test]
    fn cache_prices_are_read_from_the_file() {
        let env = env_of(&[("ANTHROPIC_API_KEY", "sk-ant-x")]);
        let c = load(
            "[[provider]]\nname = \"anthropic\"\nprice_cache_read_per_mtok = 0.6\n\n\
             [[provider]]\nname = \"local\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"m\"\n\
             price_cache_write_per_mtok = 2.5\nprice_per_web_search = 0.02\n",
            &env,
        )
        .unwrap();
        let a = c.providers.iter().find(|p| p.name == "anthropic").unwrap();
        assert_eq!(a.cache_read_price(), 0.6);
        let l = c.providers.iter().find(|p| p.name == "local").unwrap();
        assert_eq!(l.cache_write_price(), 2.5);
        assert_eq!(l.web_search_price(), 0.02);
        assert_eq!(a.web_search_price(), 0.01);
        let e = load(
            "[[provider]]\nname = \"anthropic\"\n\nprice_cache_read_per_mtok = -1.0\n",
            &env,
        )
        .unwrap_err();
        assert!(e.to_string().contains("line 4"), "{e}");
        assert!(e.to_string().contains("price_cache_read_per_mtok"), "{e}");
    }

    #[test]
    fn silent_reasoners_by_name() {
        for m in [
            "o1",
            "o3-mini",
            "o4-mini-2025-04-16",
            "gpt-5",
            "gpt-5.1",
            "openai/o3",
        ] {
            assert!(is_silent_reasoner(m), "{m}");
        }
        for m in [
            "gpt-4o",
            "claude-sonnet-4-5",
            "deepseek-reasoner",
            "o1x",
            "gpt-50",
        ] {
            assert!(!is_silent_reasoner(m), "{m}");
        }
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let env = env_of(&[]);
        let e = load("[routing]\ncooldown_secs = 1\ncooldwn = 3\n", &env).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("config.toml"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("cooldwn"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        // A typo gets its fix named; a word far from every field gets none.
        let e = load("[routing]\ncooldwn_secs = 3\n", &env).unwrap_err();
        assert!(
            e.to_string().contains("did you mean `cooldown_secs`?"),
            "{e}"
        );
        let e = load("[[provider]]\nname = \"x\"\nprioritty = 3\n", &env).unwrap_err();
        assert!(e.to_string().contains("did you mean `priority`?"), "{e}");
        let e = load("[routing]\nzebra = 3\n", &env).unwrap_err();
        assert!(!e.to_string().contains("did you mean"), "{e}");

        let e = load("[[provider]]\nname = \"x\"\npriority = \"high\"\n", &env).unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");

        let e = load("[[provider]]\nname = \"x\"\nmodel = \"m\"\n", &env).unwrap_err();
        assert!(e.to_string().contains("base_url"), "{e}");
    }

    /// Three mistakes were reported without their line: an entry missing its `base_url` or
    /// `model` (the file, then the message, with nothing to find it by in a file of ten
    /// providers), a watchdog floor above the default ceiling (or a ceiling below the default
    /// floor), and `[provider]` written with single brackets ("line 1, column 1: invalid
    /// type: map, expected a sequence", naming neither the key nor the fix).
    #[test]
    fn missing_fields_defaults_and_single_brackets_are_reported_with_their_line() {
        let env = env_of(&[]);
        for (text, line, what) in [
            (
                "[[provider]]\nname = \"ollama\"\n\n[[provider]]\nname = \"x\"\nmodel = \"m\"\n",
                5,
                "provider `x` needs `base_url`",
            ),
            (
                "[[provider]]\nname = \"ollama\"\n\n[[provider]]\nname = \"x\"\nbase_url = \"http://h\"\n",
                5,
                "provider `x` needs `model`",
            ),
            (
                "[routing]\nstall_timeout_ms = 1000\nwatchdog_floor_ms = 70000\n",
                3,
                "watchdog_floor_ms = 70000 is larger than watchdog_ceiling_ms (60000, the default)",
            ),
            (
                "[routing]\nwatchdog_ceiling_ms = 1000\n",
                2,
                "watchdog_ceiling_ms = 1000 is less than watchdog_floor_ms (5000, the default)",
            ),
            (
                "[routing]\ncooldown_secs = 5\n\n[provider]\nname = \"ollama\"\n",
                4,
                "write its table `[[provider]]`",
            ),
            ("provider = { name = \"ollama\" }\n", 1, "`[[provider]]`"),
        ] {
            let e = load(text, &env).unwrap_err().to_string();
            assert!(e.contains(&format!("line {line},")), "{text}: {e}");
            assert!(e.contains(what), "{text}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        // Written right, the same entries load.
        let c = load("[[provider]]\nname = \"ollama\"\n", &env).unwrap();
        assert_eq!(c.providers.len(), 1);
    }

    /// An empty name, model or key, or a control character in one, was accepted: `ESC [ 2J`
    /// in a name cleared the terminal on `mythos status` (found by a chaos run). Each is
    /// refused with its line, and a key's value never shows in the message.
    #[test]
    fn empty_fields_and_control_characters_are_refused_with_their_line() {
        let env = env_of(&[]);
        let head = "[[provider]]\nbase_url = \"http://x\"\n";
        for (fields, line, what) in [
            ("name = \"\"\nmodel = \"m\"\n", 3, "provider.name is empty"),
            (
                "name = \"  \"\nmodel = \"m\"\n",
                3,
                "provider.name is empty",
            ),
            ("name = \"a\"\nmodel = \"\"\n", 4, "provider.model is empty"),
            (
                "name = \"a\"\nmodel = \"m\"\napi_key = \"\"\n",
                5,
                "provider.api_key is empty",
            ),
            (
                "name = \"a\"\nmodel = \"m\"\napi_key_env = \"\"\n",
                5,
                "provider.api_key_env is empty",
            ),
            ("name = \"a\\u001b[2J\"\nmodel = \"m\"\n", 3, "U+001B"),
            ("name = \"a\\nb\"\nmodel = \"m\"\n", 3, "U+000A"),
            ("name = \"a b/c\\u0000\"\nmodel = \"m\"\n", 3, "U+0000"),
            ("name = \"a\"\nmodel = \"m\\u009b\"\n", 4, "provider.model"),
            (
                "name = \"a\"\nmodel = \"m\"\napi_key = \"sk-secret\\r\"\n",
                5,
                "provider.api_key",
            ),
            (
                "name = \"a\"\nmodel = \"m\"\napi_key_env = \"sk-secret-0123456789\"\n",
                5,
                "provider.api_key_env is not a variable name",
            ),
        ] {
            let text = format!("{head}{fields}");
            let e = load(&text, &env).unwrap_err().to_string();
            assert!(e.contains(&format!("line {line},")), "{text:?}: {e}");
            assert!(e.contains(what), "{text:?}: {e}");
            assert!(!e.chars().any(|c| c.is_control()), "printable: {e:?}");
            assert!(!e.contains("sk-secret"), "{e}");
        }
    }

    /// Errors that had no place, or named the wrong place: a provider defined twice, a file
    /// that is not UTF-8, a negative priority (named only "expected u32"), and a bad
    /// `MYTHOS_HTTP_LISTEN`, which was reported as the file's `http.listen`.
    #[test]
    fn every_error_names_its_place() {
        let env = env_of(&[]);
        let e = load(
            "[[provider]]\nname = \"dup\"\nbase_url = \"http://x\"\nmodel = \"m\"\n\n\
             [[provider]]\nname = \"dup\"\nbase_url = \"http://y\"\nmodel = \"m\"\n",
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 7, column 8: provider.name"), "{e}");
        assert!(e.contains("twice (first at line 2, column 8)"), "{e}");
        // In other capitals, it is still the same name to an agent that pins it.
        let e = load(
            "[[provider]]\nname = \"Dup\"\nbase_url = \"http://x\"\nmodel = \"m\"\n\n\
             [[provider]]\nname = \"dup\"\nbase_url = \"http://y\"\nmodel = \"m\"\n",
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("twice (first at line 2, column 8)"), "{e}");
        for name in ["open/router", "my provider"] {
            let e = load(
                &format!(
                    "[[provider]]\nname = \"{name}\"\nbase_url = \"http://x\"\nmodel = \"m\"\n"
                ),
                &env,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("line 2, column 8: provider.name"), "{e}");
            assert!(e.contains("cannot hold `/` or spaces"), "{e}");
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, b"[routing]\n# caf\xe9\ncooldown_secs = 3\n").unwrap();
        let e = Config::load_with(&path, &env).unwrap_err().to_string();
        assert!(
            e.contains("config.toml: line 2, column 6: byte 0xe9 is not UTF-8"),
            "{e}"
        );

        let e = load(
            "[[provider]]\nname = \"x\"\nbase_url = \"http://x\"\nmodel = \"m\"\npriority = -1\n",
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 5, column 12: provider.priority: "), "{e}");
        // The same mistakes in the inline forms: they were reported without their line.
        let e = load(
            "provider = [\n  { name = \"x\", base_url = \"http://x\", model = \"m\" },\n  \
             { name = \"y\", base_url = \"ftp://y\", model = \"m\" },\n]\n",
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 3, column 28: provider.base_url"), "{e}");
        let e = load("routing = { drain_timeout_secs = 99999 }\n", &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1, column 34: routing.drain_timeout_secs"),
            "{e}"
        );
        let e = load("[routing]\nretry_backoff_ms = [1, -5]\n", &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2, column 24: routing.retry_backoff_ms: "),
            "{e}"
        );

        let e = load("", &env_of(&[("MYTHOS_HTTP_LISTEN", "garbage")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("environment variable MYTHOS_HTTP_LISTEN = \"garbage\""),
            "{e}"
        );
        assert!(
            !e.contains("config.toml") && !e.contains("http.listen"),
            "{e}"
        );
        // The file's own value is still reported as the file's.
        let e = load("[http]\nlisten = \"garbage\"\n", &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.toml: line 2, column 10: http.listen"),
            "{e}"
        );
    }

    #[test]
    fn values_that_would_break_every_request_are_refused_with_their_line() {
        let env = env_of(&[]);
        for (text, line, what) in [
            ("[routing]\ncooldown_secs = 9223372036854775807\n", 2, "cooldown_secs"),
            ("[routing]\nretry_backoff_ms = [9223372036854775807]\n", 2, "retry_backoff_ms"),
            ("[routing]\n\nstall_timeout_ms = 0\n", 3, "stall_timeout_ms"),
            ("[routing]\nretry_jitter = 7.5\n", 2, "retry_jitter"),
            (
                "[routing]\nwatchdog_floor_ms = 9000\nwatchdog_ceiling_ms = 1000\n",
                2,
                "watchdog_floor_ms",
            ),
            (
                "[[provider]]\nname = \"a\"\nmodel = \"m\"\nbase_url = \"http://x\"\n\n[[provider]]\nname = \"b\"\nmodel = \"m\"\nbase_url = \"ftp://x\"\n",
                9,
                "base_url",
            ),
            (
                "[[provider]]\nname = \"o\"\nbase_url = \"http://x\"\nmodel = \"m\"\nmax_concurrent = 0\n",
                5,
                "max_concurrent",
            ),
            (
                "[[provider]]\nname = \"o\"\nbase_url = \"http://x\"\nmodel = \"m\"\nprice_input_per_mtok = -1.0\n",
                5,
                "price_input_per_mtok",
            ),
            (
                "[[provider]]\nname = \"o\"\nbase_url = \"http://x\"\nmodel = \"m\"\nmax_output_tokens = 0\n",
                5,
                "max_output_tokens",
            ),
        ] {
            let e = load(text, &env).unwrap_err().to_string();
            assert!(e.contains(&format!("line {line},")), "{text}: {e}");
            assert!(e.contains(what), "{text}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
