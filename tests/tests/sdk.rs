//! The official Anthropic and OpenAI Python SDKs against the real daemon's HTTP front end.
//!
//! Each test starts its own mocks and daemon, queues the faults its scenario needs, runs one
//! scenario of `tests/sdk/sdk_checks.py` (which asserts what a user of the SDK sees), and then
//! checks on the mocks that the scenario exercised what it claims (a failover really happened,
//! a pin really had no fallback, a local answer really stayed local).
//!
//! The Python comes from `MYTHOS_SDK_PYTHON`, else `target/sdk-venv/bin/python` (made by
//! `.ci/run` from the pinned `tests/sdk/requirements.txt`). Without either, the tests fail under
//! CI (`CI` set) and are skipped, loudly, on a laptop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mythos_protocol::SimFault;
use mythos_tests::{Daemon, Mocks, TestEnv};
use mythosd::provider::continuation::CONTINUE_INSTRUCTION;
use mythosd::sim::{answer_for, SimProvider};

/// A scenario that takes longer than this has hung (each SDK call has a 30 s deadline).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace dir")
        .to_path_buf()
}

/// The venv's Python, or `None` (after a loud line) when there is none outside CI.
fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MYTHOS_SDK_PYTHON") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "MYTHOS_SDK_PYTHON={} does not exist",
            p.display()
        );
        return Some(p);
    }
    let venv = workspace().join("target/sdk-venv/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    let how = "python3 -m venv target/sdk-venv && \
               target/sdk-venv/bin/pip install -r tests/sdk/requirements.txt";
    if std::env::var_os("CI").is_some() {
        panic!("no SDK venv under CI: set MYTHOS_SDK_PYTHON or run `{how}`");
    }
    eprintln!("skipped: the official-SDK checks need a venv with the pinned SDKs ({how})");
    None
}

/// Mocks and a daemon for one scenario.
struct World {
    python: PathBuf,
    mocks: Mocks,
    env: TestEnv,
    _daemon: Daemon,
}

impl World {
    /// `None` when the SDK checks are skipped.
    async fn start() -> Option<World> {
        let python = python()?;
        let mocks = Mocks::start().await;
        let env = mocks.env();
        // Fast retries, a tight watchdog, and a queue shorter than the 1 s Retry-After of the
        // rate-limit scenario, so that the daemon answers it at once instead of waiting.
        env.write_config(
            "[routing]\nretry_backoff_ms = [10, 20, 30]\nfirst_token_timeout_ms = 1500\n\
             stall_timeout_ms = 1500\nwatchdog_floor_ms = 300\nmax_queue_wait_ms = 500\n",
        );
        let daemon = env.start_daemon(&[]);
        Some(World {
            python,
            mocks,
            env,
            _daemon: daemon,
        })
    }

    fn sims(&self) -> [(&'static str, &SimProvider); 3] {
        [
            ("anthropic", &self.mocks.anthropic),
            ("deepseek", &self.mocks.deepseek),
            ("openai", &self.mocks.openai),
        ]
    }

    /// Requests received by each mock, by name.
    fn requests(&self) -> Vec<(&'static str, u64)> {
        self.sims()
            .iter()
            .map(|(n, s)| (*n, s.stats().requests))
            .collect()
    }

    fn total_requests(&self) -> u64 {
        self.requests().iter().map(|r| r.1).sum()
    }

    fn total_completed(&self) -> u64 {
        self.sims().iter().map(|(_, s)| s.stats().completed).sum()
    }

    /// Requests that asked a mock to continue a partial answer (an explicit continue turn in
    /// the OpenAI format, an assistant prefill in Anthropic's).
    fn continuations(&self) -> usize {
        self.sims()
            .iter()
            .flat_map(|(_, s)| s.requests())
            .filter(|r| {
                let last = r.body["messages"]
                    .as_array()
                    .and_then(|m| m.last())
                    .cloned()
                    .unwrap_or_default();
                last["content"] == CONTINUE_INSTRUCTION || last["role"] == "assistant"
            })
            .count()
    }

    /// Run `scenario` with `prompt` (and the simulated answer to it) and assert it passed.
    async fn run(&self, scenario: &str, prompt: &str) {
        let (base, token) = self.env.http();
        let script = workspace().join("tests/sdk/sdk_checks.py");
        let mut cmd = tokio::process::Command::new(&self.python);
        // A clean environment: the SDKs read ANTHROPIC_* / OPENAI_* variables and config files
        // under HOME, and a developer's must not leak in.
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.env.dir.path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .env("MYTHOS_BASE_URL", &base)
            .env("MYTHOS_TOKEN", &token)
            .env("MYTHOS_PROMPT", prompt)
            .env("MYTHOS_EXPECT", answer_for(prompt))
            .arg(&script)
            .arg(scenario)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().expect("start the SDK checks");
        let started = std::time::Instant::now();
        let out = tokio::time::timeout(SCENARIO_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{scenario} did not finish in {SCENARIO_TIMEOUT:?}"))
            .expect("the SDK checks' output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{scenario} failed ({}); mock requests {:?}\n--- stdout\n{stdout}--- stderr\n{stderr}",
            out.status,
            self.requests(),
        );
        eprintln!("{scenario}: passed in {:?}", started.elapsed());
    }
}

// ----- Anthropic SDK -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_create() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("anthropic_create", "what is a router").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_stream() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("anthropic_stream", "stream me an answer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_web_search() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("anthropic_web_search", "search the web").await;
    // Both turns went to the Anthropic provider, the server tool with them.
    let sent = w.mocks.anthropic.requests();
    assert_eq!(sent.len(), 2, "{:?}", w.requests());
    for r in &sent {
        assert_eq!(
            r.body["tools"][0]["type"], "web_search_20250305",
            "{}",
            r.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_pdf() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("anthropic_pdf", "summarize the spec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_beta() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("anthropic_beta", "beta or not").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_tools_on_an_openai_format_provider() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("anthropic_tools", "call: note this down").await;
    assert_eq!(
        w.requests(),
        [("anthropic", 0), ("deepseek", 0), ("openai", 2)]
    );
    // The tool result reached the provider in its own format.
    let second = w.mocks.openai.requests().pop().expect("the second turn");
    let tool = second.body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["role"] == "tool")
        .cloned()
        .unwrap_or_else(|| panic!("no tool message in {}", second.body));
    assert_eq!(tool["content"], "noted", "{tool}");
    assert!(
        tool["tool_call_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{tool}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_count_tokens_stays_local() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("anthropic_count_tokens", "unused").await;
    assert_eq!(w.total_requests(), 0, "count_tokens reached a provider");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_models() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("anthropic_models", "unused").await;
    assert_eq!(w.total_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_auth() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("anthropic_auth", "unused").await;
    assert_eq!(
        w.total_requests(),
        0,
        "a request without the token went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_failover_mid_text() {
    let Some(w) = World::start().await else {
        return;
    };
    w.mocks
        .anthropic
        .inject([SimFault::DisconnectAfter { tokens: 7 }]);
    w.run("anthropic_failover_text", "explain failover to me")
        .await;
    assert_eq!(w.continuations(), 1, "requests {:?}", w.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_failover_mid_tool_call() {
    let Some(w) = World::start().await else {
        return;
    };
    w.mocks
        .anthropic
        .inject([SimFault::DisconnectAfter { tokens: 4 }]);
    w.run("anthropic_failover_tool", "call: record the failover")
        .await;
    // The broken call, its re-make elsewhere, and the fault-free baseline.
    assert_eq!(w.total_requests(), 3, "{:?}", w.requests());
    assert_eq!(w.total_completed(), 2, "{:?}", w.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_pinned_failure_after_start_raises() {
    let Some(w) = World::start().await else {
        return;
    };
    w.mocks
        .anthropic
        .inject(vec![SimFault::DisconnectAfter { tokens: 5 }; 20]);
    w.run("anthropic_pinned_failure", "pinned and broken").await;
    let r = w.requests();
    assert!(r[0].1 >= 1, "{r:?}");
    assert_eq!(
        (r[1].1, r[2].1),
        (0, 0),
        "a pinned request fell back: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_does_not_retry_what_the_daemon_retried() {
    let Some(w) = World::start().await else {
        return;
    };
    for (_, sim) in w.sims() {
        sim.inject(vec![
            SimFault::RateLimit {
                retry_after_ms: 1_000
            };
            10
        ]);
    }
    w.run("anthropic_no_double_retry", "unused").await;
    let r = w.requests();
    assert!(
        r.iter().all(|(_, n)| *n >= 1),
        "the daemon did not try every provider: {r:?}"
    );
}

// ----- OpenAI SDK --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_create() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("openai_create", "what is a router").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_stream() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("openai_stream", "stream me an answer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_tools_on_the_anthropic_format_provider() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("openai_tools", "call: note this down").await;
    assert_eq!(
        w.requests(),
        [("anthropic", 2), ("deepseek", 0), ("openai", 0)]
    );
    let second = w.mocks.anthropic.requests().pop().expect("the second turn");
    let messages = second.body["messages"].as_array().expect("messages");
    let result = messages
        .iter()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .find(|b| b["type"] == "tool_result")
        .unwrap_or_else(|| panic!("no tool_result block in {}", second.body));
    assert!(
        result["tool_use_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{result}"
    );
    let use_ = messages
        .iter()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .find(|b| b["type"] == "tool_use")
        .unwrap_or_else(|| panic!("no tool_use block in {}", second.body));
    assert_eq!(use_["id"], result["tool_use_id"], "{}", second.body);
    assert_eq!(
        use_["input"],
        serde_json::json!({"text": answer_for("call: note this down")})
    );
}

/// A client of the deprecated `functions` gets its call and goes on with the `function` turn
/// that answers it: Anthropic sees a paired `tool_use` and `tool_result`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_legacy_functions_round_trip() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("openai_legacy_functions", "call: note this down")
        .await;
    assert_eq!(
        w.requests(),
        [("anthropic", 2), ("deepseek", 0), ("openai", 0)]
    );
    let first = &w.mocks.anthropic.requests()[0];
    assert_eq!(first.body["tools"][0]["name"], "record", "{}", first.body);
    let second = w.mocks.anthropic.requests().pop().expect("the second turn");
    let blocks: Vec<serde_json::Value> = second.body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .collect();
    let use_ = blocks.iter().find(|b| b["type"] == "tool_use");
    let result = blocks.iter().find(|b| b["type"] == "tool_result");
    let (Some(use_), Some(result)) = (use_, result) else {
        panic!("no tool_use and tool_result in {}", second.body);
    };
    assert_eq!(use_["id"], result["tool_use_id"], "{}", second.body);
    assert_eq!(result["content"], "noted", "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_failover_mid_text() {
    let Some(w) = World::start().await else {
        return;
    };
    w.mocks
        .anthropic
        .inject([SimFault::DisconnectAfter { tokens: 7 }]);
    w.run("openai_failover_text", "explain failover to me")
        .await;
    assert_eq!(w.continuations(), 1, "requests {:?}", w.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_failover_mid_tool_call() {
    let Some(w) = World::start().await else {
        return;
    };
    w.mocks
        .anthropic
        .inject([SimFault::DisconnectAfter { tokens: 4 }]);
    w.run("openai_failover_tool", "call: record the failover")
        .await;
    assert_eq!(w.total_requests(), 3, "{:?}", w.requests());
    assert_eq!(w.total_completed(), 2, "{:?}", w.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_pinned_failure_after_start_raises() {
    let Some(w) = World::start().await else {
        return;
    };
    w.mocks
        .openai
        .inject(vec![SimFault::DisconnectAfter { tokens: 5 }; 20]);
    w.run("openai_pinned_failure", "pinned and broken").await;
    let r = w.requests();
    assert!(r[2].1 >= 1, "{r:?}");
    assert_eq!(
        (r[0].1, r[1].1),
        (0, 0),
        "a pinned request fell back: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_auth() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("openai_auth", "unused").await;
    assert_eq!(w.total_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_models() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("openai_models", "unused").await;
    assert_eq!(w.total_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_does_not_retry_what_the_daemon_retried() {
    let Some(w) = World::start().await else {
        return;
    };
    for (_, sim) in w.sims() {
        sim.inject(vec![
            SimFault::RateLimit {
                retry_after_ms: 1_000
            };
            10
        ]);
    }
    w.run("openai_no_double_retry", "unused").await;
    let r = w.requests();
    assert!(
        r.iter().all(|(_, n)| *n >= 1),
        "the daemon did not try every provider: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_create_and_stream() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("responses_create_and_stream", "what is a response")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_tools_on_the_anthropic_format_provider() {
    let Some(w) = World::start().await else {
        return;
    };
    w.run("responses_tools", "call: record this").await;
    // Both turns went to the pinned Anthropic-format provider, in its own format.
    let sent = w.mocks.anthropic.requests();
    assert_eq!(sent.len(), 2, "{:?}", w.requests());
    let turns = sent[1].body["messages"].as_array().unwrap();
    assert!(turns
        .iter()
        .any(|t| t["content"][0]["type"] == "tool_result"));
}
