//! mythosd: the mythos routing daemon as a library, so tests and the benchmark can run the real
//! server in-process and the binary stays a thin `main`.
//!
//! - [`config`]: providers from the environment and the optional TOML file.
//! - [`provider`]: HTTP + SSE adapters for the Anthropic and OpenAI wire formats.
//! - [`router`]: selection, retry, breaker, watchdog, mid-stream failover, shared health.
//! - [`server`]: the local-socket IPC server.
//! - [`http`]: the loopback HTTP front end speaking the Anthropic and OpenAI APIs.
//! - [`state`]: SQLite persistence of health and request records.
//! - [`sim`]: built-in simulated providers (loopback HTTP, real wire formats, scripted faults),
//!   behind the `sim` feature (on by default: they are the no-key mode and the demo).
//! - [`app`]: wiring of all of the above.

pub mod app;
pub mod config;
pub mod http;
pub mod metrics;
pub mod presets;
pub mod provider;
pub mod router;
pub mod server;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(not(feature = "sim"))]
#[path = "sim_off.rs"]
pub mod sim;
pub mod state;
pub mod supervisor;
pub mod suspend;
pub mod wake;
