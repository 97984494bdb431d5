//! Built-in simulated providers: real HTTP servers on 127.0.0.1 speaking the Anthropic Messages,
//! OpenAI Chat Completions and Gemini `streamGenerateContent` streaming formats, with faults
//! injected on cue.
//!
//! They let a newcomer with no API keys watch routing and failover, and they are the mock
//! providers of the end-to-end tests and the benchmark. Answers are deterministic and depend only
//! on the prompt ([`answer_for`]), never on which simulated provider answers, so a continuation
//! on another provider yields exactly the text a single provider would have: that is what makes
//! "no lost and no duplicated text" testable to the byte.
//!
//! Requests are checked against the rules the real APIs enforce for extended thinking,
//! DeepSeek's reasoning mode and images (`checks.rs`), so an adapter that would be refused in
//! production is refused here. Thinking is streamed, and signed, when asked for; images are
//! counted and acknowledged at the start of the answer ("I see 2 image(s).").
//!
//! Each request pops one [`SimFault`] from a FIFO queue (none: a healthy answer). The response
//! is a plan of steps (send an SSE frame, sleep, stall, cut the connection) played by the body
//! stream with tokio timers, so a paused clock drives it too.

mod answer;
mod builtin;
mod chaos;
mod checks;
mod quota;
mod wire;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use mythos_protocol::SimFault;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use answer::{answer_for, chunk_answer, json_answer_for};
pub use builtin::{start_builtin, Sims};
pub use chaos::SimChaos;
pub use checks::{redacted_data as sim_redacted_thinking, signature as sim_thinking_signature};
pub use quota::SimQuota;
pub use wire::REFUSAL as SIM_REFUSAL;
use wire::{Plan, Step};

/// Which wire format a simulated provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Anthropic Messages API.
    Anthropic,
    /// OpenAI Chat Completions.
    OpenAi,
    /// OpenAI format plus DeepSeek's `reasoning_content` and `: keep-alive` comments. Fresh
    /// plain answers always reason first; in reasoning mode (a model named `*reasoner*`, or
    /// `"thinking": {"type": "enabled"}`) tool calls do too, and tool-call turns in the history
    /// must carry `reasoning_content`.
    DeepSeek,
    /// Google Gemini: `x-goog-api-key`, `streamGenerateContent?alt=sse`, whole function calls,
    /// no terminator event, Google's error objects. Requests are translated to the chat shape
    /// the other flavours read ([`checks::gemini_as_chat`]) after Gemini's own checks (its
    /// schema subset: `additionalProperties` and friends are refused with a 400).
    Gemini,
}

impl Flavor {
    /// The API a provider of this flavour is configured with.
    pub fn api(self) -> crate::config::Api {
        match self {
            Flavor::Anthropic => crate::config::Api::Anthropic,
            Flavor::OpenAi | Flavor::DeepSeek => crate::config::Api::Openai,
            Flavor::Gemini => crate::config::Api::Gemini,
        }
    }
}

/// How a simulated provider behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Name, used in ids and logs.
    pub name: String,
    /// Wire format.
    pub flavor: Flavor,
    /// Model name reported in the stream.
    pub model: String,
    /// Wait before the first token.
    pub first_token_delay: Duration,
    /// Wait between tokens.
    pub token_delay: Duration,
    /// Keep-alive comment period (DeepSeek flavour, and the keep-alive-only fault).
    pub keep_alive_every: Duration,
    /// When set, requests must carry exactly this key.
    pub expect_key: Option<String>,
    /// Quotas enforced and announced in the response headers.
    pub quota: Option<SimQuota>,
    /// Random faults for requests with no fault queued.
    pub chaos: Option<SimChaos>,
    /// Seed of the chaos generator.
    pub seed: u64,
    /// How it continues another provider's partial answer.
    pub continuation: SimContinuation,
    /// The canned answer said this many times over (at least once): the benchmark's long
    /// answers, to tell per-request costs from per-chunk ones.
    pub answer_repeat: usize,
    /// A wait between a stream's last event (`[DONE]`, `message_stop`) and the end of its body:
    /// a server that writes the chunked terminator apart from the last event, so that a client
    /// that stops reading at the last event leaves the connection mid-body.
    pub end_linger: Duration,
}

/// How a simulated provider continues a partial answer: exactly, as the instructions say, or
/// the way real chat models often do, by first repeating the last words it was shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimContinuation {
    /// Repeat this many of the partial answer's last words before going on.
    pub repeat_words: usize,
    /// Repeat them with other capitals and spacing ("Jumps  over").
    pub vary: bool,
}

impl SimOptions {
    /// Defaults that look like streaming to a person: 150 ms to the first token, 25 ms per token.
    pub fn new(name: impl Into<String>, flavor: Flavor) -> Self {
        SimOptions {
            name: name.into(),
            flavor,
            model: match flavor {
                Flavor::Anthropic => "claude-sim-1",
                Flavor::OpenAi => "gpt-sim-1",
                Flavor::DeepSeek => "deepseek-sim-chat",
                Flavor::Gemini => "gemini-sim-flash",
            }
            .to_string(),
            first_token_delay: Duration::from_millis(150),
            token_delay: Duration::from_millis(25),
            keep_alive_every: Duration::from_millis(50),
            expect_key: None,
            quota: None,
            chaos: None,
            seed: 1,
            continuation: SimContinuation::default(),
            answer_repeat: 1,
            end_linger: Duration::ZERO,
        }
    }
}

/// Counters of a simulated provider.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Requests received.
    pub requests: u64,
    /// Requests refused with a `429` because a quota was spent (not counting injected ones).
    pub over_quota: u64,
    /// Requests served within the quota (refusals for other reasons included).
    pub admitted: u64,
    /// Streams that sent their terminator.
    pub completed: u64,
    /// Streams the client left before the script was over.
    pub aborted: u64,
    /// Streams open now.
    pub active: u64,
    /// TCP connections accepted: fewer than requests when clients keep them alive.
    pub connections: u64,
}

/// How many recent requests a simulated provider keeps for inspection.
pub const KEEP_REQUESTS: usize = 64;

/// A request as the simulated provider saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// URL path.
    pub path: String,
    /// The JSON body (`Null` if it was not JSON).
    pub body: serde_json::Value,
    /// Whether an auth header was present (its value is never kept).
    pub auth_present: bool,
    /// The `anthropic-beta` header, if any.
    pub anthropic_beta: Option<String>,
}

struct Inner {
    opts: Mutex<SimOptions>,
    faults: Mutex<VecDeque<SimFault>>,
    limiter: Mutex<Option<quota::Limiter>>,
    rng: Mutex<fastrand::Rng>,
    stats: Mutex<SimStats>,
    aborted: watch::Sender<u64>,
    /// The last [`KEEP_REQUESTS`] requests (the simulators serve the no-key default mode, so
    /// their memory must not grow with use).
    requests: Mutex<VecDeque<RecordedRequest>>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running simulated provider. Cheap to clone.
#[derive(Clone)]
pub struct SimProvider {
    inner: Arc<Inner>,
    addr: SocketAddr,
    flavor: Flavor,
}

impl SimProvider {
    /// Serve on `listener` (bound by the caller, so there is no start-up race).
    pub async fn start(
        listener: tokio::net::TcpListener,
        opts: SimOptions,
    ) -> std::io::Result<SimProvider> {
        let addr = listener.local_addr()?;
        let flavor = opts.flavor;
        let limiter = opts
            .quota
            .map(|q| quota::Limiter::new(&q, tokio::time::Instant::now()));
        let inner = Arc::new(Inner {
            rng: Mutex::new(fastrand::Rng::with_seed(opts.seed)),
            opts: Mutex::new(opts),
            faults: Mutex::new(VecDeque::new()),
            limiter: Mutex::new(limiter),
            stats: Mutex::new(SimStats::default()),
            aborted: watch::channel(0).0,
            requests: Mutex::new(VecDeque::new()),
            server: Mutex::new(None),
        });
        let app = axum::Router::new()
            .route("/v1/messages", post(handle))
            .route("/v1/chat/completions", post(handle))
            .route("/chat/completions", post(handle))
            .route("/v1beta/models/{*method}", post(handle))
            .with_state(inner.clone());
        // Small SSE frames must leave at once, as from a real provider; with Nagle on, each
        // would wait for the previous one's delayed ACK (40 ms on Linux).
        let counted = inner.clone();
        let listener = listener.tap_io(move |tcp| {
            let _ = tcp.set_nodelay(true);
            Inner::lock(&counted.stats).connections += 1;
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *Inner::lock(&inner.server) = Some(task);
        Ok(SimProvider {
            inner,
            addr,
            flavor,
        })
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL as a client configures it: without `/v1` for Anthropic, with it for OpenAI.
    pub fn base_url(&self) -> String {
        match self.flavor {
            Flavor::Anthropic | Flavor::Gemini => format!("http://{}", self.addr),
            Flavor::OpenAi | Flavor::DeepSeek => format!("http://{}/v1", self.addr),
        }
    }

    /// Drop the faults still queued.
    pub fn clear_faults(&self) {
        Inner::lock(&self.inner.faults).clear();
    }

    /// Queue faults; each request takes the next one.
    pub fn inject(&self, faults: impl IntoIterator<Item = SimFault>) {
        Inner::lock(&self.inner.faults).extend(faults);
    }

    /// Enforce and announce `quota` from now on (full buckets), or stop (`None`).
    pub fn set_quota(&self, quota: Option<SimQuota>) {
        *Inner::lock(&self.inner.limiter) =
            quota.map(|q| quota::Limiter::new(&q, tokio::time::Instant::now()));
        Inner::lock(&self.inner.opts).quota = quota;
    }

    /// Fail later requests at random with `chaos` (`None`: stop).
    pub fn set_chaos(&self, chaos: Option<SimChaos>) {
        Inner::lock(&self.inner.opts).chaos = chaos;
    }

    /// Continue partial answers this way from now on.
    pub fn set_continuation(&self, c: SimContinuation) {
        Inner::lock(&self.inner.opts).continuation = c;
    }

    /// Restart the chaos generator from `seed`.
    pub fn reseed(&self, seed: u64) {
        *Inner::lock(&self.inner.rng) = fastrand::Rng::with_seed(seed);
    }

    /// Change the delays of later requests.
    pub fn set_delays(&self, first_token: Duration, per_token: Duration) {
        let mut o = Inner::lock(&self.inner.opts);
        o.first_token_delay = first_token;
        o.token_delay = per_token;
    }

    /// Say the canned answer `times` times over in later requests.
    pub fn set_answer_repeat(&self, times: usize) {
        Inner::lock(&self.inner.opts).answer_repeat = times.max(1);
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        Inner::lock(&self.inner.stats).clone()
    }

    /// The last requests received (at most [`KEEP_REQUESTS`]), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        Inner::lock(&self.inner.requests).iter().cloned().collect()
    }

    /// Resolves once `n` streams have been aborted by their clients.
    pub async fn wait_for_aborted(&self, n: u64) {
        let mut rx = self.inner.aborted.subscribe();
        let _ = rx.wait_for(|&v| v >= n).await;
    }

    /// Stop accepting connections.
    pub fn shutdown(&self) {
        if let Some(task) = Inner::lock(&self.inner.server).take() {
            task.abort();
        }
    }
}

/// Counts a stream as completed or aborted when the body is dropped.
struct StreamGuard {
    inner: Arc<Inner>,
    /// The script ran to its end (terminator or scripted failure).
    finished: bool,
    /// The terminator was sent.
    completed: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut s = Inner::lock(&self.inner.stats);
        s.active -= 1;
        if self.completed {
            s.completed += 1;
        } else if !self.finished {
            s.aborted += 1;
            let n = s.aborted;
            drop(s);
            self.inner.aborted.send_replace(n);
        }
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let opts = Inner::lock(&inner.opts).clone();
    let anthropic = opts.flavor == Flavor::Anthropic;
    let gemini = opts.flavor == Flavor::Gemini;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let key = if anthropic || gemini {
        headers
            .get(if gemini {
                "x-goog-api-key"
            } else {
                "x-api-key"
            })
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    } else {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string)
    };
    Inner::lock(&inner.stats).requests += 1;
    {
        let mut kept = Inner::lock(&inner.requests);
        if kept.len() >= KEEP_REQUESTS {
            kept.pop_front();
        }
        kept.push_back(RecordedRequest {
            path: uri.path().to_string(),
            body: json.clone(),
            auth_present: key.is_some(),
            anthropic_beta: headers
                .get("anthropic-beta")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        });
    }

    let path = uri.path();
    let wrong_api = match opts.flavor {
        Flavor::Anthropic => path != "/v1/messages",
        Flavor::Gemini => {
            !(path.starts_with("/v1beta/models/") && path.ends_with(":streamGenerateContent"))
        }
        Flavor::OpenAi | Flavor::DeepSeek => path == "/v1/messages" || path.starts_with("/v1beta/"),
    };
    if wrong_api {
        return wire::error(
            opts.flavor,
            404,
            "not_found_error",
            "no such endpoint",
            None,
        );
    }
    match (&key, &opts.expect_key) {
        (None, _) => {
            return wire::error(
                opts.flavor,
                401,
                "authentication_error",
                "missing API key",
                None,
            )
        }
        (Some(k), Some(want)) if k != want || k.is_empty() => {
            return wire::error(
                opts.flavor,
                401,
                "authentication_error",
                "invalid x-api-key",
                None,
            )
        }
        _ => {}
    }
    if anthropic && headers.get("anthropic-version").is_none() {
        return wire::error(
            opts.flavor,
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
            None,
        );
    }
    // Gemini streams by URL, not by a body field; the rest of the simulator reads the chat
    // shape, so the request is checked as Gemini would and then translated.
    let json = if gemini {
        let query = uri.query().unwrap_or("");
        if query.split('&').any(|kv| kv.starts_with("key=")) {
            // The real API takes it, but a key in the URL ends up in logs: the adapter must
            // never send one, and this catches it if it does.
            return wire::error(opts.flavor, 400, "", "API key in the URL", None);
        }
        if !query.split('&').any(|kv| kv == "alt=sse") {
            return wire::error(
                opts.flavor,
                400,
                "",
                "this simulator only serves alt=sse streams",
                None,
            );
        }
        let model = path
            .trim_start_matches("/v1beta/models/")
            .trim_end_matches(":streamGenerateContent");
        match checks::gemini_as_chat(&json, model) {
            Ok(v) => v,
            Err(msg) => return wire::error(opts.flavor, 400, "", &msg, None),
        }
    } else {
        json
    };
    if json.is_null() || json["stream"] != serde_json::Value::Bool(true) {
        return wire::error(
            opts.flavor,
            400,
            "invalid_request_error",
            "this simulator only serves streaming requests with a JSON body",
            None,
        );
    }

    // Quotas first, as a real provider checks them before it does any work.
    let mut quota_headers = HeaderMap::new();
    {
        let mut limiter = Inner::lock(&inner.limiter);
        if let Some(limiter) = limiter.as_mut() {
            let cost = wire::cost(&json);
            let admitted = limiter.admit(cost, tokio::time::Instant::now());
            limiter.announce(opts.flavor, &mut quota_headers);
            if let Err(wait) = admitted {
                Inner::lock(&inner.stats).over_quota += 1;
                let mut resp = wire::rate_limited(opts.flavor, wait);
                resp.headers_mut().extend(quota_headers);
                return resp;
            }
            Inner::lock(&inner.stats).admitted += 1;
        }
    }
    let fault = Inner::lock(&inner.faults).pop_front().or_else(|| {
        opts.chaos
            .and_then(|c| c.roll(&mut Inner::lock(&inner.rng)))
    });
    let plan = match wire::plan(&opts, &json, fault, key.as_deref().unwrap_or("")) {
        Plan::Respond(mut r) => {
            // Real providers announce their quotas on error responses too.
            r.headers_mut().extend(quota_headers);
            return r;
        }
        Plan::Stream(steps) => steps,
    };
    Inner::lock(&inner.stats).active += 1;
    let guard = StreamGuard {
        inner: inner.clone(),
        finished: false,
        completed: false,
    };
    let keep_alive = opts.keep_alive_every;
    let stream = futures_util::stream::unfold(
        (VecDeque::from(plan), guard),
        move |(mut steps, mut guard)| async move {
            loop {
                match steps.pop_front()? {
                    // A zero sleep would still wait for the next timer tick (1 ms): skip it, so a
                    // zero-delay mock streams as fast as the socket allows.
                    Step::Sleep(d) if d.is_zero() => {}
                    Step::Sleep(d) => tokio::time::sleep(d).await,
                    Step::Send(bytes) => return Some((Ok(bytes), (steps, guard))),
                    Step::Complete => guard.completed = true,
                    Step::Finished => guard.finished = true,
                    Step::Stall => std::future::pending::<()>().await,
                    Step::KeepAliveForever => {
                        tokio::time::sleep(keep_alive).await;
                        steps.push_front(Step::KeepAliveForever);
                        return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), (steps, guard)));
                    }
                    Step::Cut => {
                        // An error from the body makes hyper drop the connection without the
                        // final chunk: the client sees a broken stream, not a clean end.
                        guard.finished = true;
                        let e = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut");
                        return Some((Err(e), (steps, guard)));
                    }
                }
            }
        },
    );
    let mut resp = (
        StatusCode::OK,
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response();
    resp.headers_mut().extend(quota_headers);
    resp
}
#[cfg(test)]
mod tests;
