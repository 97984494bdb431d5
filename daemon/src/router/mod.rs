//! The routing engine: pick the best provider that can take a request now, pace by the quotas
//! providers announce, wait in a fair queue when none can, retry and fail over by a written
//! policy, trip breakers on repeated faults, watch streams for stalls, and fail over mid-answer
//! without losing or duplicating text.
//!
//! The parts, each with one job:
//! - [`health`]: the one owner of provider state (averages, breaker, quotas, budgets), behind a
//!   mutex never held across an await, shared by every connection;
//! - [`quota`]: estimates of each provider's announced quotas;
//! - [`admission`]: who may use which provider now, the wait queue, and the [`admission::Lease`]
//!   that is an attempt's claim on a provider;
//! - [`policy`]: the pure decision after a failed attempt (retry, fail over, restart, surface)
//!   and what it says about the provider;
//! - [`budget`]: per-provider retry budgets;
//! - [`score`]: the ranking;
//! - [`tool_pairs`]: tool calls and results paired as every provider requires;
//! - this module: the loop that carries a request through attempts, and `attempt`, which
//!   streams one attempt under the watchdog.
//!
//! Failover keeps the answer whole. Text already streamed is kept in `Partial`; the next provider
//! is asked to continue it (Anthropic: assistant prefill; OpenAI-compatible: the partial answer
//! plus an explicit continuation turn) and the client gets a `rerouted` event followed by only
//! the new text. An answer with a server tool's blocks (a web search at Anthropic) is continued
//! at Anthropic only, with the blocks sent back in place in the prefill. When continuation is
//! impossible (a tool call was half streamed, the provider rejects prefill, a search's results
//! had not come), the client gets `rerouted` with mode `restart` and the answer starts over.

pub mod admission;
mod attempt;
pub mod budget;
mod cancel;
pub mod health;
pub mod policy;
pub mod quota;
pub mod retry;
pub mod score;
pub mod seam;
pub mod tool_pairs;
pub mod wallclock;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mythos_protocol::clock::now_unix_ms;
use mythos_protocol::{
    Attempt, CandidateScore, ChatRequest, ContentBlock, DoneInfo, ErrorKind, FinishReason,
    ImageSource, ProviderStatus, QuotaStatus, RequestRecord, RerouteMode, Response, StreamEvent,
    TaskKind, Usage,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{ProviderConfig, RoutingConfig};
use crate::provider::{ProviderError, Transport, UpstreamRequest};
use admission::{Lease, Refusal, Want};
use attempt::Partial;
use health::HealthBook;
use policy::{Facts, Next};
use quota::Cost;

/// A provider as the router holds it.
#[derive(Clone)]
pub struct RoutedProvider {
    /// Its configuration.
    pub cfg: ProviderConfig,
    /// How requests reach it.
    pub transport: Arc<dyn Transport>,
}

/// Where finished request records go (the state store).
pub trait RecordSink: Send + Sync {
    /// Keep a record. Must not block.
    fn record(&self, rec: RequestRecord);

    /// Take note of a record another sink keeps: a sink that only reads it (the metrics)
    /// spares the copy.
    fn observe(&self, rec: &RequestRecord) {
        self.record(rec.clone());
    }
}

/// Sends one request's events to its connection.
#[derive(Clone)]
pub struct Emitter {
    id: u64,
    tx: mpsc::Sender<Response>,
    ended: Option<Arc<std::sync::atomic::AtomicBool>>,
    shutdown: Option<CancellationToken>,
    /// The request's cancel: a send waiting for room in a channel that a client no longer
    /// reads gives up when it fires (the route then gives back its lease and quota at once,
    /// not when the connection finally closes).
    cancel: Option<CancellationToken>,
    /// A send gave up after [`CLIENT_READ_TIMEOUT`]: the client stopped reading.
    stuck: Arc<std::sync::atomic::AtomicBool>,
    /// Where the request's record id goes once it has one (0 until then).
    record: Option<Arc<AtomicU64>>,
}

/// The context window `cfg`'s provider has for `req`: an Anthropic provider asked for the
/// 1M-token context beta (Claude Code's `context-1m-…` in `anthropic-beta`) has a million
/// tokens, whatever its configured window says; else the configured one.
fn context_window(cfg: &ProviderConfig, req: &ChatRequest) -> Option<u64> {
    let million = cfg.api == crate::config::Api::Anthropic
        && req
            .options
            .anthropic_beta
            .iter()
            .any(|b| b.starts_with("context-1m"));
    if million {
        Some(cfg.context_window.map_or(1_000_000, |w| w.max(1_000_000)))
    } else {
        cfg.context_window
    }
}

/// Whether `cfg`'s provider reads images and PDFs: Anthropic's, Gemini's and OpenAI's own
/// APIs do (and OpenRouter's); DeepSeek does not, nor do most servers of open models.
fn reads_attachments(cfg: &ProviderConfig) -> bool {
    use crate::config::Api;
    if crate::provider::openai::is_deepseek(cfg, &cfg.model) {
        return false;
    }
    match cfg.api {
        Api::Anthropic | Api::Gemini => true,
        Api::Openai => crate::provider::openai::is_openai_or_openrouter(cfg),
    }
}

/// How long an event may wait for room in a client's channel before the request is given up:
/// a client that stopped reading (a hung editor, a paused terminal, a script that sends and
/// never reads) would otherwise keep its provider streams, concurrency seats and quota for as
/// long as its connection stays open, and every other client would queue behind it. A reader
/// that is merely slow (seconds per event) is waited for.
pub const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(60);

impl Emitter {
    /// Events for request `id` go to `tx`.
    pub fn new(id: u64, tx: mpsc::Sender<Response>) -> Self {
        Emitter {
            id,
            tx,
            ended: None,
            shutdown: None,
            cancel: None,
            stuck: Arc::default(),
            record: None,
        }
    }

    /// Store the request's record id in `slot` as soon as it is numbered: the HTTP front end
    /// names the record on an error response too, where no `started` event carried it.
    pub fn with_record_slot(mut self, slot: Arc<AtomicU64>) -> Self {
        self.record = Some(slot);
        self
    }

    /// Whether a send gave up because the client read nothing for [`CLIENT_READ_TIMEOUT`].
    pub fn stuck(&self) -> bool {
        self.stuck.load(Ordering::Relaxed)
    }

    /// A stream cut because `token` fired (the daemon's drain deadline) ends with
    /// `shutting_down`, not as if the client had cancelled it.
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = Some(token);
        self
    }

    /// Share `flag` as the stuck flag: a transport that sees for itself that the client stopped
    /// reading (the HTTP front end, whose routes cannot wait on a channel the client drains)
    /// sets it before it cancels the request, which is then recorded as given up for that.
    pub fn with_stuck_flag(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.stuck = flag;
        self
    }

    /// Set `flag` just before the stream's last event (`done` or `error`) is sent.
    pub fn with_end_flag(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.ended = Some(flag);
        self
    }

    /// Send an event; false when the client is gone.
    async fn send(&self, mut event: StreamEvent) -> bool {
        if let StreamEvent::Error { kind, message, .. } = &mut event {
            if *kind == ErrorKind::Cancelled
                && self.shutdown.as_ref().is_some_and(|t| t.is_cancelled())
            {
                *kind = ErrorKind::ShuttingDown;
                *message = "mythosd is shutting down and could not finish this answer".into();
            }
        }
        if matches!(event, StreamEvent::Done(_) | StreamEvent::Error { .. }) {
            if let Some(flag) = &self.ended {
                flag.store(true, Ordering::Release);
            }
        }
        let send = self.tx.send(Response::Event { id: self.id, event });
        let cancelled = async {
            match &self.cancel {
                Some(cancel) => cancel.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            sent = send => sent.is_ok(),
            _ = cancelled => false,
            _ = tokio::time::sleep(CLIENT_READ_TIMEOUT) => {
                self.stuck.store(true, Ordering::Relaxed);
                false
            }
        }
    }

    /// Send a content event (text, thinking, tool call, usage: never the last one) if the
    /// channel has room: `Ok(true)` sent, `Ok(false)` the client is gone, `Err` gives the event
    /// back when the channel is full and the caller has to wait.
    // The event comes back by value on the rare full channel: boxing it would cost an
    // allocation on every chunk to save a move on a few.
    #[allow(clippy::result_large_err)]
    fn try_send(&self, event: StreamEvent) -> Result<bool, StreamEvent> {
        debug_assert!(!matches!(
            event,
            StreamEvent::Done(_) | StreamEvent::Error { .. }
        ));
        match self.tx.try_send(Response::Event { id: self.id, event }) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Full(Response::Event { event, .. })) => Err(event),
            Err(mpsc::error::TrySendError::Full(_)) => unreachable!("only events are sent here"),
        }
    }
}

/// How long the last event of a cancelled request waits for room in a client's channel.
const LAST_EVENT_GRACE: Duration = Duration::from_secs(3);

/// The same when the daemon is stopping.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Record ids from this one on are never given out: see [`Router::seal_record_ids`].
const SEALED: u64 = 1 << 62;

/// The engine.
pub struct Router {
    providers: Vec<RoutedProvider>,
    book: Arc<Mutex<HealthBook>>,
    cfg: RoutingConfig,
    records: Option<Arc<dyn RecordSink>>,
    /// Shared with the routers that follow this one on a reload: one sequence of record ids.
    next_record: Arc<AtomicU64>,
    /// Shared likewise: requests of every generation.
    in_flight: Arc<AtomicU32>,
    last_record: Arc<AtomicU64>,
    /// Woken when a breaker opens or closes, a provider is paused or disabled: state worth
    /// saving at once rather than at the next periodic save.
    changed: Arc<tokio::sync::Notify>,
    /// The router in force, shared by every generation: set by [`Router::publish`].
    latest: Arc<std::sync::RwLock<std::sync::Weak<Router>>>,
    /// Cancelled when a router that succeeds this one is published: requests between attempts
    /// here (waiting for capacity, backing off) move to it with their answer as it stands.
    retired: CancellationToken,
    /// The `retired` token of the router this one succeeded.
    predecessor: Option<CancellationToken>,
}

/// One request counted in a gauge while it lives.
struct InFlight<'a>(&'a AtomicU32);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a AtomicU32) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A failure as the request's caller sees it: the error, and when capacity is expected back.
type Failure = (ProviderError, Option<u64>);

fn unix_ms_at(t: Instant) -> u64 {
    wallclock::to_unix_ms(t, Instant::now(), now_unix_ms())
}

/// `reason` without a leading "`name`: ": the reroute event names the provider already.
fn unprefixed(reason: &str, name: &str) -> String {
    reason
        .strip_prefix(name)
        .and_then(|r| r.strip_prefix(": "))
        .unwrap_or(reason)
        .to_string()
}

fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 120.0 {
        format!("{:.0} min", s / 60.0)
    } else if s >= 1.0 {
        format!("{s:.0} s")
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Estimated prompt tokens of a request: its text at ~4 bytes a token (the usual figure for
/// English and code with BPE tokenizers), plus a little per message. Used for quotas, context
/// windows and the first-token watchdog, where an estimate within tens of percent is enough.
pub fn estimate_input_tokens(req: &ChatRequest) -> u64 {
    // Providers bill an image by its pixels (~1,600 tokens for a 1 MP picture), not by the
    // length of its base64. A PDF is billed by its pages (their text and a picture of each):
    // see `pdf_bytes`. A document at a URL counts as a few pages.
    const URL_DOCUMENT_BYTES: usize = 3 * PDF_PAGE_BYTES;
    fn attachment_bytes(source: &ImageSource) -> usize {
        const IMAGE_BYTES: usize = 1600 * 4;
        match source {
            ImageSource::Base64 { data, .. } if source.is_document() => pdf_bytes(data),
            ImageSource::Url { url } if source.is_document() => {
                crate::provider::anthropic::split_data_url(url)
                    .map_or(URL_DOCUMENT_BYTES, |(_, d)| pdf_bytes(d))
            }
            _ => IMAGE_BYTES,
        }
    }
    let mut bytes = req.system.as_ref().map_or(0, String::len);
    for m in &req.messages {
        bytes += 16;
        for b in &m.content {
            bytes += match b {
                ContentBlock::Text { text } => text.len(),
                ContentBlock::ToolUse {
                    id,
                    name,
                    input_json,
                } => id.len() + name.len() + input_json.len(),
                ContentBlock::ToolResult {
                    tool_use_id,
                    content,
                    images,
                    ..
                } => {
                    tool_use_id.len()
                        + content.len()
                        + images.iter().map(attachment_bytes).sum::<usize>()
                }
                ContentBlock::Document {
                    source: ImageSource::Url { url },
                    ..
                } if !url.starts_with("data:") => URL_DOCUMENT_BYTES,
                ContentBlock::Image { source } | ContentBlock::Document { source, .. } => {
                    attachment_bytes(source)
                }
                ContentBlock::Thinking { text, .. } => text.len(),
                ContentBlock::RedactedThinking { data } => data.len() / 2,
                // Search results are mostly encrypted page text, billed as its tokens.
                ContentBlock::ServerBlock { json } => json.len(),
            };
        }
    }
    for t in &req.tools {
        bytes += t.name.len() + t.description.len() + t.input_schema_json.len();
    }
    (bytes as u64).div_ceil(4)
}

/// A PDF page as the estimate counts it: ~2,500 tokens (Anthropic: 1,500-3,000 of text, plus
/// the page's picture), at ~4 bytes a token.
const PDF_PAGE_BYTES: usize = 2_500 * 4;

/// What a base64 PDF weighs in the estimate: its pages, counted where its page objects can be
/// read (`/Type /Page`); else a hundredth of its size in tokens, at most 100,000. The bytes
/// alone say little (a scanned page is hundreds of kilobytes, a page of text a few), and an
/// estimate too high keeps the request from every provider whose window or quota it seems to
/// exceed, while one too low costs at most a failover to a larger window.
fn pdf_bytes(base64: &str) -> usize {
    use base64::Engine;
    let clean: String = base64
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let Ok(pdf) =
        base64::engine::general_purpose::STANDARD_NO_PAD.decode(clean.trim_end_matches('='))
    else {
        return PDF_PAGE_BYTES;
    };
    let mut pages = 0;
    for pattern in [&b"/Type /Page"[..], b"/Type/Page"] {
        for at in memchr::memmem::find_iter(&pdf, pattern) {
            // `/Pages` is the page tree, not a page.
            if pdf.get(at + pattern.len()) != Some(&b's') {
                pages += 1;
            }
        }
    }
    if pages > 0 {
        pages * PDF_PAGE_BYTES
    } else {
        (pdf.len() / 100).clamp(PDF_PAGE_BYTES / 4, 100_000) * 4
    }
}

/// Tokens of a text at ~4 bytes a token.
fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// A continuation is allowed at least this many output tokens, or a quarter of the limit if
/// that is less. The tokens already shown are estimated from their bytes, and indented code
/// has more bytes per token than the estimate assumes: without a floor, an answer whose first
/// part the estimate overcounts stops early at `length`. The floor is also what the whole
/// answer may run past the client's limit when the first part really did use it up, so it is
/// a quarter of a small limit rather than the whole of it (an answer capped at 100 tokens ran
/// to nearly 200).
const MIN_CONTINUATION_TOKENS: u32 = 256;

/// What a request is, decided once before its first attempt.
struct Plan {
    /// Providers it may use, best configured first.
    candidates: Vec<usize>,
    /// Those taken first whatever their rank (see [`Want::prefer`]).
    prefer: Vec<usize>,
    /// The request holds images or documents.
    attachments: bool,
    pinned: bool,
    input_tokens: u64,
    max_tokens: u32,
    cost: Cost,
}

/// What a request takes along when a reload moves it to the router in force: the answer as it
/// stands, so that the new config's providers continue it (an answer cut on a provider the
/// reload removed was retried there until its budget ran out), the notice owed for its last
/// failure, and all it learnt on the way (which providers failed this round or refused it for
/// good, its retries, its time in the queue), so that a move neither sends it back to the
/// provider it just left nor gives it a fresh queue allowance.
#[derive(Default)]
struct Moved {
    partial: Partial,
    reroute: Option<(String, String)>,
    /// The answer must restart on the next provider (one refused to continue it).
    restart: bool,
    attempt_no: u32,
    journey: Journey,
    /// The providers `journey`'s indices stand for.
    names: Vec<String>,
}

/// Everything one request learns on its way through providers.
#[derive(Default)]
struct Journey {
    /// Failed over from in the current round.
    tried_round: Vec<usize>,
    /// Out for the rest of the request (key or account rejected, window too small, ...).
    excluded: Vec<usize>,
    /// Attempted at least once (a further attempt is a retry and needs budget).
    attempted: Vec<usize>,
    /// Their success-rate sample for this request is taken.
    outcome_taken: Vec<usize>,
    /// Failed to connect; blamed only once some provider proves the network works.
    unreachable: Vec<usize>,
    /// Those of them whose attempt was their breaker's half-open probe: the blame is the
    /// probe's verdict. Blamed as any fault, which a half-open breaker ignores, a dead
    /// provider stayed half-open for good and every request tried it first.
    unreachable_probes: Vec<usize>,
    /// Refused the response format asked natively (a `400`): asked in words from then on.
    format_in_words: Vec<usize>,
    /// Asked to start over after refusing a continuation (a `400`): once each. A client's
    /// own prefill is a continuation too, and a request refused for another reason was
    /// started over until the attempts ran out (found by a review: 11 requests for one 400).
    restarted: Vec<usize>,
    /// Retries on each provider: (index, count).
    retries: Vec<(usize, u32)>,
    /// Every error, in order.
    errors: Vec<(usize, ProviderError)>,
    /// Time spent in the wait queue.
    queued: Duration,
    /// An attempt of this round ended with the provider saying when to come back (a `429`'s
    /// or an overload's pause): it is a wait away, not broken.
    told_round: bool,
    /// The request no longer keeps to the providers that can do all it needs (see
    /// [`PREFER_WAIT`]).
    prefer_over: bool,
    /// Since when it has kept to them without an answer making progress.
    prefer_since: Option<Instant>,
    /// When the last attempt that made progress ended: the rounds past the configured steps
    /// go on while the request is younger than the queue allows, counted from here, not from
    /// its start (an answer streamed for a minute and then cut had no patience left for a
    /// two-second `Retry-After`).
    progressed_at: Option<Instant>,
    /// Attempts that ended so: they do not count toward the attempts cap (the queue's time
    /// limit bounds them), or a 429 repeated for 5 s failed a request with 25 s left.
    told_attempts: usize,
    /// The daemon's own time before the first upstream request, in microseconds.
    setup_us: u64,
    /// When a provider is expected back, if the request ended for want of capacity.
    back_at: Option<Instant>,
    /// Why the providers left could not take the request, if that ended it.
    unavailable: Option<String>,
}

impl Journey {
    fn retries_at(&self, i: usize) -> u32 {
        self.retries
            .iter()
            .find(|(j, _)| *j == i)
            .map_or(0, |(_, n)| *n)
    }

    /// This journey on a router whose providers are `to`, from one whose providers were
    /// `from`: each index by provider name, those no longer configured left out. What only
    /// held for the last wait (`told_round`, `back_at`, `unavailable`) starts over.
    fn moved(self, from: &[String], to: &[RoutedProvider]) -> Journey {
        let at = |i: usize| {
            from.get(i)
                .and_then(|name| to.iter().position(|p| &p.cfg.name == name))
        };
        let list = |v: Vec<usize>| v.into_iter().filter_map(at).collect();
        let pairs = |v: Vec<(usize, u32)>| {
            v.into_iter()
                .filter_map(|(i, n)| at(i).map(|i| (i, n)))
                .collect()
        };
        Journey {
            tried_round: list(self.tried_round),
            excluded: list(self.excluded),
            attempted: list(self.attempted),
            outcome_taken: list(self.outcome_taken),
            unreachable: list(self.unreachable),
            unreachable_probes: list(self.unreachable_probes),
            format_in_words: list(self.format_in_words),
            retries: pairs(self.retries),
            errors: self
                .errors
                .into_iter()
                .filter_map(|(i, e)| at(i).map(|i| (i, e)))
                .collect(),
            told_round: false,
            back_at: None,
            unavailable: None,
            ..self
        }
    }

    fn count_retry(&mut self, i: usize) {
        match self.retries.iter_mut().find(|(j, _)| *j == i) {
            Some((_, n)) => *n += 1,
            None => self.retries.push((i, 1)),
        }
    }
}

fn push_once(v: &mut Vec<usize>, i: usize) {
    if !v.contains(&i) {
        v.push(i);
    }
}

impl Router {
    /// A router over `providers` (in priority order).
    pub fn new(
        providers: Vec<RoutedProvider>,
        cfg: RoutingConfig,
        records: Option<Arc<dyn RecordSink>>,
        first_record_id: u64,
    ) -> Self {
        let book = HealthBook::new(providers.iter().map(|p| &p.cfg), cfg.clone());
        Router {
            providers,
            book: Arc::new(Mutex::new(book)),
            cfg,
            records,
            next_record: Arc::new(AtomicU64::new(first_record_id.max(1))),
            in_flight: Arc::new(AtomicU32::new(0)),
            last_record: Arc::new(AtomicU64::new(0)),
            changed: Arc::new(tokio::sync::Notify::new()),
            latest: Arc::default(),
            retired: CancellationToken::new(),
            predecessor: None,
        }
    }

    /// Make this router the one in force (a start, a reload): the one it succeeded retires,
    /// and its requests between attempts (waiting for capacity, backing off) come here, to the
    /// providers this configuration has. Without it, a request queued behind the only
    /// provider's `Retry-After: 20` waited out the 20 s and failed, though the user had added
    /// a provider (SIGHUP) two seconds in.
    pub fn publish(self: &Arc<Self>) {
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(self);
        if let Some(old) = &self.predecessor {
            old.cancel();
        }
    }

    /// The router in force, if it is not this one.
    fn successor(&self) -> Option<Arc<Router>> {
        let latest = self
            .latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade()?;
        (!std::ptr::eq(Arc::as_ptr(&latest), self)).then_some(latest)
    }

    /// Notified when health changed in a way worth saving at once.
    pub fn health_changed(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// The router that replaces this one on a config reload. Record ids go on in one sequence.
    /// When the providers are the same ones (reordered or reconfigured), the health book itself
    /// is shared, each provider keeping its place in it: requests still streaming on this
    /// router keep updating it by the same indices, and a probe in flight stays the only
    /// probe. (Ranking goes by the configured priority, not the place.) Health carried over
    /// from a snapshot instead lost what those requests learnt: a reload that swapped two
    /// priorities while a request hit a `429` and a stall left the `429`'s provider shown
    /// healthy, and the next request was sent into its pause (found by a chaos run). When
    /// providers are added or removed, health carries over by name from a snapshot: a book
    /// longer than this router's providers would have it rank ones it cannot index.
    pub fn succeed(&self, mut providers: Vec<RoutedProvider>, cfg: RoutingConfig) -> Router {
        let place = |name: &str| self.providers.iter().position(|p| p.cfg.name == name);
        let all_stay = providers.len() == self.providers.len()
            && self
                .providers
                .iter()
                .all(|old| providers.iter().any(|p| p.cfg.name == old.cfg.name));
        let book = if all_stay {
            providers.sort_by_key(|p| place(&p.cfg.name));
            self.health()
                .reconfigure(providers.iter().map(|p| &p.cfg), cfg.clone());
            self.book.clone()
        } else {
            let now = Instant::now();
            let saved = self.health().save(now, now_unix_ms());
            let mut book = HealthBook::new(providers.iter().map(|p| &p.cfg), cfg.clone());
            book.restore(&saved, now, now_unix_ms());
            Arc::new(Mutex::new(book))
        };
        Router {
            providers,
            book,
            cfg,
            records: self.records.clone(),
            next_record: self.next_record.clone(),
            in_flight: self.in_flight.clone(),
            last_record: self.last_record.clone(),
            changed: self.changed.clone(),
            latest: self.latest.clone(),
            retired: CancellationToken::new(),
            predecessor: Some(self.retired.clone()),
        }
    }

    /// Whether every provider is a built-in simulated one.
    pub fn is_simulated(&self) -> bool {
        !self.providers.is_empty() && self.providers.iter().all(|p| p.cfg.simulated)
    }

    /// The providers, in the health book's order: configured order, except after a reload that
    /// reordered them (see [`Router::succeed`]); ranking goes by priority.
    pub fn providers(&self) -> &[RoutedProvider] {
        &self.providers
    }

    /// Lock the health book. Never held across an await.
    pub fn health(&self) -> MutexGuard<'_, HealthBook> {
        admission::lock(&self.book)
    }

    /// Requests streaming now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The id the next finished request will get.
    pub fn next_record_id(&self) -> u64 {
        self.next_record.load(Ordering::Relaxed)
    }

    /// Give out no more record ids, and return the first one not given out. A stopping daemon
    /// hands the state over to the next one, which numbers its records from there on while
    /// this one still finishes its streams: a request that had not yet got its id (accepted
    /// just before the stop, its task not yet run) would take one the next daemon uses too,
    /// and one record would replace the other. Such a request is refused instead, as one a
    /// moment later would be. One atomic swap, so no id is given out on either side of it.
    pub fn seal_record_ids(&self) -> u64 {
        self.next_record
            .fetch_max(SEALED, Ordering::SeqCst)
            .min(SEALED)
    }

    /// Id of the most recent finished record, 0 if none.
    pub fn last_record(&self) -> u64 {
        self.last_record.load(Ordering::Relaxed)
    }

    /// Every provider's status, best first for a chat task.
    pub fn status(&self) -> Vec<ProviderStatus> {
        let now = Instant::now();
        let mut book = self.health();
        let ranked = book.rank(TaskKind::Chat, now);
        let hl = self.cfg.health_half_life;
        // Availability for a typical chat request.
        let typical = Want {
            task: TaskKind::Chat,
            candidates: (0..self.providers.len()).collect(),
            retry_at: Vec::new(),
            budget_free: false,
            cost: Cost::request(1_000, self.cfg.default_max_tokens),
            pinned: false,
            prefer: Vec::new(),
        };
        ranked
            .iter()
            .map(|r| {
                let (_, why) = book.availability(r.index, &typical, now);
                let p = &book.providers[r.index];
                let cfg = &self.providers[r.index].cfg;
                let (state, left) = book.state_of(r.index, now);
                ProviderStatus {
                    name: cfg.name.clone(),
                    api: cfg.api.as_str().to_string(),
                    model: cfg.model.clone(),
                    priority: cfg.priority,
                    state,
                    cooldown_left_ms: left.map(|d| d.as_millis() as u64),
                    score: r.score,
                    success: p.success.get(now, hl),
                    ttft_ms: p.ttft.raw().map(|_| p.ttft.get(1000.0, now, hl)),
                    gap_ms: p.gap.raw().map(|_| p.gap.get(50.0, now, hl)),
                    latency_ms: p.latency.raw().map(|_| p.latency.get(5000.0, now, hl)),
                    cost_per_1k: p.cost.get(cfg.cost_per_1k(), now, hl),
                    limits: mythos_protocol::ModelLimits {
                        context_window: cfg.context_window,
                        max_output_tokens: cfg.output_limit(),
                        price_input_per_mtok: cfg.price_input_per_mtok,
                        price_output_per_mtok: cfg.price_output_per_mtok,
                    },
                    requests: p.requests,
                    failures: p.failures,
                    last_error: p.last_error.clone(),
                    note: if why.is_empty() { r.note.clone() } else { why },
                    in_flight: p.in_flight,
                    quotas: p
                        .quota
                        .report(now)
                        .into_iter()
                        .map(|(kind, remaining, limit, reset)| QuotaStatus {
                            what: kind.as_str().to_string(),
                            remaining,
                            limit,
                            reset_in_ms: reset.map(|d| d.as_millis() as u64),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Serve one chat request to the end: exactly one `done` or `error` event is sent (unless
    /// the client is gone).
    pub async fn route(&self, mut req: ChatRequest, mut out: Emitter, cancel: CancellationToken) {
        out.cancel = Some(cancel.clone());
        // A stray tool result or an unanswered call is a 400 at every provider: kept in words.
        tool_pairs::pair_tool_calls(&mut req);
        // Counted down however the request ends, a panic included.
        let _in_flight = InFlight::enter(&self.in_flight);
        let start = Instant::now();
        let mut rec = RequestRecord {
            id: 0,
            unix_ms: now_unix_ms(),
            task: req.task,
            pinned: req.pin.as_ref().map(|p| {
                format!(
                    "{}{}",
                    p.provider.as_deref().unwrap_or("*"),
                    p.model
                        .as_deref()
                        .map(|m| format!("/{m}"))
                        .unwrap_or_default()
                )
            }),
            candidates: Vec::new(),
            attempts: Vec::new(),
            provider: None,
            usage: Usage::default(),
            cost_usd: 0.0,
            latency_ms: 0,
            error: None,
            queued_ms: 0,
        };
        // Numbered at the start so that every `started` event (and the HTTP front end's
        // `x-mythos-request` header) can name the record before the answer is done.
        rec.id = self.next_record.fetch_add(1, Ordering::Relaxed);
        if rec.id >= SEALED {
            // Began after the daemon handed its state over (see `seal_record_ids`): not
            // recorded, as it never ran.
            let refused = StreamEvent::Error {
                kind: ErrorKind::ShuttingDown,
                message: mythos_protocol::REFUSED_WHILE_STOPPING.into(),
                retry_at_unix_ms: None,
            };
            let _ = tokio::time::timeout(STOP_GRACE, out.send(refused)).await;
            return;
        }
        if let Some(slot) = &out.record {
            slot.store(rec.id, Ordering::Relaxed);
        }
        let mut moved = None;
        let mut result = self
            .run(&req, &out, &cancel, &mut rec, start, &mut moved)
            .await;
        while moved.is_some() {
            // Reconfigured while it waited: the providers in force now go on from where the
            // answer stands.
            let Some(next) = self.successor() else { break };
            result = Box::pin(next.run(&req, &out, &cancel, &mut rec, start, &mut moved)).await;
        }
        rec.latency_ms = start.elapsed().as_millis() as u64;
        let event = match result {
            Ok((finish, model)) => StreamEvent::Done(Box::new(DoneInfo {
                finish,
                usage: rec.usage,
                cost_usd: rec.cost_usd,
                latency_ms: rec.latency_ms,
                provider: rec.provider.clone().unwrap_or_default(),
                model,
                record: rec.id,
            })),
            Err((e, retry_at)) => {
                rec.error = Some(e.kind);
                StreamEvent::Error {
                    kind: e.kind,
                    message: e.message,
                    retry_at_unix_ms: retry_at,
                }
            }
        };
        self.last_record.store(rec.id, Ordering::Relaxed);
        if let Some(sink) = &self.records {
            sink.record(rec);
        }
        // The last event is not dropped at a cancel: a client that cancelled reads on until it
        // gets it (the CLI for 3 s). Everything else is given back already; a client that
        // reads nothing more lets the request end after that grace.
        out.cancel = None;
        let send = out.send(event);
        tokio::pin!(send);
        tokio::select! {
            biased;
            _ = &mut send => {}
            _ = async {
                cancel.cancelled().await;
                // At the daemon's stop, a client that reads takes its last event within
                // moments; one that does not would hold the exit for the whole grace.
                let stopping = out.shutdown.as_ref().is_some_and(|t| t.is_cancelled());
                let grace = if stopping { STOP_GRACE } else { LAST_EVENT_GRACE };
                tokio::time::sleep(grace).await;
            } => {}
        }
    }

    /// Decide the candidates and the estimates of a request, and record the ranking.
    fn plan(&self, req: &ChatRequest, rec: &mut RequestRecord) -> Result<Plan, Failure> {
        let now = Instant::now();
        let input_tokens = estimate_input_tokens(req);
        let max_tokens = req.max_tokens.unwrap_or(self.cfg.default_max_tokens);
        // A client that named no limit where the API has none to name gets each model's whole
        // output limit (see `up_to_model_limit`): its quota cost is that, per provider.
        let cost_tokens = match req.max_tokens {
            None if req.options.up_to_model_limit => u32::MAX,
            _ => max_tokens,
        };
        let cost = Cost::request(input_tokens, cost_tokens);
        let mut book = self.health();
        let ranked = book.rank(req.task, now);
        rec.candidates = ranked
            .iter()
            .map(|r| CandidateScore {
                provider: self.providers[r.index].cfg.name.clone(),
                score: (r.score * 10.0).round() / 10.0,
                note: r.note.clone(),
            })
            .collect();
        drop(book);
        if self.providers.is_empty() {
            return Err((
                ProviderError::new(
                    ErrorKind::NoProviders,
                    format!(
                        "no provider is configured: set {}",
                        crate::config::KEY_ENV_VARS.join(", ")
                    ),
                ),
                None,
            ));
        }
        if let Some(pin) = &req.pin {
            let matching = ranked.iter().map(|r| r.index).find(|&i| {
                let c = &self.providers[i].cfg;
                match (&pin.provider, &pin.model) {
                    (Some(p), _) => c.name.eq_ignore_ascii_case(p),
                    (None, Some(m)) => &c.model == m,
                    (None, None) => true,
                }
            });
            let Some(i) = matching else {
                let message = match (&pin.provider, &pin.model) {
                    // A model alone (`mythos ask --model`): the models are what to choose from.
                    (None, Some(model)) => {
                        let models: Vec<_> = self
                            .providers
                            .iter()
                            .map(|p| format!("{}/{}", p.cfg.name, p.cfg.model))
                            .collect();
                        format!(
                            "no provider is configured with model `{model}`; configured: {}",
                            models.join(", ")
                        )
                    }
                    _ => {
                        let names: Vec<_> =
                            self.providers.iter().map(|p| p.cfg.name.as_str()).collect();
                        format!(
                            "no provider matches `{}`; configured: {}",
                            pin.provider.clone().unwrap_or_default(),
                            names.join(", ")
                        )
                    }
                };
                return Err((ProviderError::new(ErrorKind::NoProviders, message), None));
            };
            // Deterministic mode: exactly what was asked for, breaker or not.
            return Ok(Plan {
                candidates: vec![i],
                prefer: Vec::new(),
                attachments: false,
                pinned: true,
                input_tokens,
                max_tokens,
                cost,
            });
        }
        // A prompt that cannot fit a provider's context window is not sent there, unless it
        // fits nowhere (then the providers say so themselves).
        let all: Vec<usize> = ranked.iter().map(|r| r.index).collect();
        let fits: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| {
                context_window(&self.providers[i].cfg, req).is_none_or(|w| input_tokens <= w)
            })
            .collect();
        let candidates = if fits.is_empty() { all } else { fits };
        let attachments = req
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .any(|b| match b {
                ContentBlock::Image { .. } | ContentBlock::Document { .. } => true,
                ContentBlock::ToolResult { images, .. } => !images.is_empty(),
                _ => false,
            });
        // Providers that can do all the request needs go first, in their rank order; the
        // others still answer (without the tool, or with the file named in words) when none
        // of them can. Anthropic's server tools (Claude Code's web search) run only there; a
        // PDF or an image is read by Anthropic, OpenAI and Gemini, not by DeepSeek nor most
        // local servers: a request naming a "small" model (background work, often sent to
        // DeepSeek) answered about a PDF it was only told of.
        // An MCP server's tools and a code-execution container are Anthropic's alike.
        let server_tools = !req.options.server_tools.is_empty()
            || req
                .options
                .native
                .iter()
                .any(crate::provider::anthropic::binds);
        let prefer = if server_tools || attachments {
            candidates
                .iter()
                .copied()
                .filter(|&i| {
                    let cfg = &self.providers[i].cfg;
                    (!server_tools || cfg.api == crate::config::Api::Anthropic)
                        && (!attachments || reads_attachments(cfg))
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Plan {
            candidates,
            prefer,
            attachments,
            pinned: false,
            input_tokens,
            max_tokens,
            cost,
        })
    }

    /// Wait for a provider that can take `want`, for at most `allowed`, telling the client why
    /// it waits; in the queue the request ranks by `arrived`, when it first came. Adds the time
    /// waited to `journey.queued`.
    async fn acquire(
        &self,
        want: &Want,
        arrived: Instant,
        allowed: Duration,
        out: &Emitter,
        cancel: &CancellationToken,
        journey: &mut Journey,
    ) -> Result<Lease, Refusal> {
        let start = Instant::now();
        let deadline = start + allowed;
        let mut ticket = match admission::try_acquire(&self.book, want, arrived, deadline)? {
            Ok(lease) => return Ok(lease),
            Err(ticket) => ticket,
        };
        // A wait of a few milliseconds (another request's first answer, a slot freeing) is not
        // worth a line on the user's screen.
        let quiet_until = start + QUIET_WAIT;
        let mut told: Option<(Option<u64>, String)> = None;
        let result = loop {
            let now = Instant::now();
            let worth_telling = now >= quiet_until || ticket.eta.is_some_and(|t| t > quiet_until);
            let news = (ticket.eta.map(unix_ms_at), ticket.reason.clone());
            let changed = told.as_ref().is_none_or(|(eta, reason)| {
                gist(reason) != gist(&news.1)
                    || eta.unwrap_or(0).abs_diff(news.0.unwrap_or(0)) > 1_000
                    || eta.is_some() != news.0.is_some()
            });
            if worth_telling && changed {
                let ev = StreamEvent::Queued {
                    reason: news.1.clone(),
                    until_unix_ms: news.0,
                    deadline_unix_ms: unix_ms_at(deadline),
                };
                if !out.send(ev).await {
                    break Err(Refusal::Cancelled);
                }
                told = Some(news);
            }
            let tell_at = if told.is_none() {
                quiet_until
            } else {
                deadline
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break Err(Refusal::Cancelled),
                // Reconfigured: the caller moves the request to the router in force.
                _ = self.retired.cancelled() => break Err(Refusal::Cancelled),
                r = ticket.wait(&self.book, want, deadline) => match r {
                    Ok(Some(lease)) => break Ok(lease),
                    Ok(None) => {}
                    Err(refusal) => break Err(refusal),
                },
                _ = tokio::time::sleep_until(tell_at), if told.is_none() && now < quiet_until => {}
            }
        };
        journey.queued += start.elapsed();
        if let Err(Refusal::Cancelled) = result {
            // A grant that raced with the cancel is given back as it drops.
            drop(ticket.leave(&self.book));
        }
        result
    }

    async fn run(
        &self,
        req: &ChatRequest,
        out: &Emitter,
        cancel: &CancellationToken,
        rec: &mut RequestRecord,
        start: Instant,
        moved: &mut Option<Moved>,
    ) -> Result<(FinishReason, String), Failure> {
        let plan = self.plan(req, rec)?;
        let cancelled = attempt::cancelled_by_client;
        let carried = moved.take().unwrap_or_default();
        let mut partial = carried.partial;
        let mut j = carried.journey.moved(&carried.names, &self.providers);
        let mut attempt_no = carried.attempt_no;
        let mut round = 0usize;
        let mut same: Option<usize> = None;
        let mut restart = carried.restart;
        // The retry on `same` may wait for it in the queue (it is owed, not a gamble).
        let mut same_may_wait = false;
        let mut pending_reroute = carried.reroute;
        let max_attempts = (1 + self.cfg.retry_backoff.len()) * (plan.candidates.len() + 1);
        // The conversation without the client's own prefill, and that prefill, for providers
        // asked in words (see `client_prefill`): split once, at the first such attempt, not
        // copied again at every one.
        let mut split_prefill: Option<Option<(ChatRequest, String)>> = None;
        let steps = &self.cfg.retry_backoff;
        let jitter = self.cfg.retry_jitter;

        // A reload moves the request, between attempts, to the router in force (see
        // `Router::publish`), with the answer as it stands.
        let reconfigured = || {
            (
                ProviderError::new(ErrorKind::NoProviders, "the configuration was reloaded"),
                None,
            )
        };

        let outcome = 'request: loop {
            if cancel.is_cancelled() {
                break 'request Err((cancelled(), None));
            }
            if self.retired.is_cancelled() {
                *moved = Some(Moved {
                    partial: std::mem::take(&mut partial),
                    reroute: pending_reroute.take(),
                    restart,
                    attempt_no,
                    journey: std::mem::take(&mut j),
                    names: self.providers.iter().map(|p| p.cfg.name.clone()).collect(),
                });
                break 'request Err(reconfigured());
            }
            if (attempt_no as usize).saturating_sub(j.told_attempts) >= max_attempts {
                break 'request Ok(());
            }
            // A request that needs what only some providers do (Anthropic's server tools, a
            // reader of PDFs and images) keeps to them for a while: one paused for 2 s is worth
            // waiting for, where another would answer without the search or the file. Then,
            // or when none of them is left, any provider answers.
            // The 10 s run from when the request first needed them and did not have them (a
            // wait, a failure), anew after each attempt that made progress: an answer about a
            // PDF cut after a minute of streaming is continued by a reader too.
            // An answer that holds a server tool's blocks is bound to them for as long as the
            // queue allows: only there can it be continued (elsewhere it restarts, which a
            // Messages client gets as an error: 2-3 of 60 cut searches did, Anthropic paused
            // for a few seconds, in a chaos run).
            let bound = !partial.server_blocks.is_empty()
                && attempt::server_calls_answered(&partial.server_blocks);
            let preferring = same.is_none()
                && (bound
                    || !j.prefer_over && j.prefer_since.is_none_or(|t| t.elapsed() < PREFER_WAIT))
                && !plan.prefer.is_empty()
                && plan.prefer.iter().any(|i| !j.excluded.contains(i));
            if preferring && j.prefer_since.is_none() {
                j.prefer_since = Some(Instant::now());
            }
            let candidates: Vec<usize> = match same {
                Some(i) => vec![i],
                None => plan
                    .candidates
                    .iter()
                    .copied()
                    .filter(|i| !j.excluded.contains(i) && !j.tried_round.contains(i))
                    .filter(|i| !preferring || plan.prefer.contains(i))
                    .collect(),
            };
            if candidates.is_empty() {
                // Every candidate had its turn this round: back off, then try them again.
                if plan.candidates.iter().all(|i| j.excluded.contains(i)) {
                    break 'request Ok(());
                }
                // Past the configured rounds, the last step repeats while the request is
                // younger than the queue allows and either providers of the round said when
                // to come back (short `Retry-After`s are a second from ready, and failing then
                // broke a session the queue could have kept) or one of them answered another
                // request since this one started (it works: this request's failures there
                // were bad luck; 1 run in 60 of 200 requests under 30 % random faults lost
                // one after seven failed attempts). Providers that fail without saying so and
                // answer nobody (an outage) end it after the configured rounds; the attempt
                // limit above still bounds a request that fails everywhere by itself.
                let past_steps = round >= steps.len();
                let last = steps.len().saturating_sub(1);
                let working = || {
                    let book = self.health();
                    plan.candidates
                        .iter()
                        .any(|&i| !j.excluded.contains(&i) && book.answered_since(i, start))
                };
                let step =
                    retry::backoff(steps, jitter, round.min(last), fastrand::f64()).filter(|&w| {
                        !past_steps
                            || (j.progressed_at.unwrap_or(start).elapsed() + w
                                < self.cfg.max_queue_wait
                                && (j.told_round || working()))
                    });
                let Some(wait) = step else {
                    if preferring && !bound {
                        // The providers that could do it all are spent: the others now.
                        j.prefer_over = true;
                        j.tried_round.clear();
                        continue;
                    }
                    break 'request Ok(());
                };
                round += 1;
                j.tried_round.clear();
                j.told_round = false;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => break 'request Err((cancelled(), None)),
                    _ = self.retired.cancelled() => {}
                }
                continue;
            }
            let want = Want {
                task: req.task,
                // An answer with a server tool's blocks can be continued only where the tool
                // ran, and its search is paid for: the retry budget does not hold it back.
                // Held back, the queue limit passed and it restarted elsewhere, which a
                // Messages client gets as an error (8 of 18 cut searches, one Anthropic
                // provider, `max_queue_wait_ms = 500`: found by a review).
                retry_at: candidates
                    .iter()
                    .copied()
                    .filter(|i| j.attempted.contains(i) && !bound)
                    .collect(),
                budget_free: bound,
                candidates,
                cost: plan.cost,
                pinned: plan.pinned,
                // Once it is over, the provider that failed is not put first again.
                prefer: if preferring {
                    plan.prefer.clone()
                } else {
                    Vec::new()
                },
            };
            let left = self.cfg.max_queue_wait.saturating_sub(j.queued);
            let allowed = if same.is_some() && !plan.pinned && !same_may_wait {
                // A retry goes to the same provider only if it is free now; else elsewhere.
                Duration::ZERO
            } else if j.tried_round.iter().any(|i| !j.excluded.contains(i)) {
                // Providers that failed this round get another turn after the next round's
                // backoff: the rest of this round is waited for no longer than that. A
                // request whose first choice stalled once waited out 25 s of another's
                // Retry-After while the first was ready again at once.
                match retry::backoff(steps, 0.0, round, 0.5).or(steps.last().copied()) {
                    Some(next) => left.min(next),
                    None => left,
                }
            } else {
                left
            };
            let allowed = match j.prefer_since.filter(|_| preferring && !bound) {
                Some(since) => allowed.min(PREFER_WAIT.saturating_sub(since.elapsed())),
                None => allowed,
            };
            let lease = match self
                .acquire(&want, start, allowed, out, cancel, &mut j)
                .await
            {
                Ok(lease) => lease,
                // Reconfigured while it waited: the loop's top moves it.
                Err(Refusal::Cancelled)
                    if !cancel.is_cancelled() && self.retired.is_cancelled() =>
                {
                    continue
                }
                Err(Refusal::Cancelled) => break 'request Err((cancelled(), None)),
                Err(Refusal::NoCapacity {
                    reason,
                    back_at,
                    timed_out,
                }) => {
                    if let Some(i) = same.take() {
                        // The provider to retry cannot be had in time: go elsewhere.
                        push_once(&mut j.tried_round, i);
                        continue;
                    }
                    if preferring && !bound {
                        // Those that could do it all cannot be had in time: the others.
                        j.prefer_over = true;
                        continue;
                    }
                    if !j.tried_round.is_empty() {
                        // Those left this round cannot be had in time, but the ones that just
                        // failed may be back soon (a short Retry-After): next round. They are
                        // paused, not broken: the round had providers a wait away.
                        // Paused ones (a Retry-After, a spent quota) are a wait away; a rejected
                        // key or an open breaker is not, and does not make the round "told".
                        let now = Instant::now();
                        let book = self.health();
                        if want.candidates.iter().any(|&c| {
                            book.providers[c].quota.blocked_until(now).is_some()
                                || book.out_for_quota(c, want.cost, now)
                        }) {
                            j.told_round = true;
                        }
                        drop(book);
                        for i in want.candidates {
                            push_once(&mut j.tried_round, i);
                        }
                        continue;
                    }
                    if j.errors.is_empty() {
                        break 'request Err(self.no_capacity(
                            &want.candidates,
                            want.cost,
                            &reason,
                            back_at,
                            timed_out,
                        ));
                    }
                    // Nothing can take it within the wait left: report what went wrong.
                    j.back_at = back_at;
                    j.unavailable = Some(reason);
                    break 'request Ok(());
                }
            };
            let i = lease.index;
            let p = &self.providers[i];
            same = None;
            same_may_wait = false;
            attempt_no += 1;

            // Decide whether the answer so far can be continued here.
            let accepts_prefill = self.health().accepts_prefill(i, Instant::now());
            // Restart when a tool call was cut (it cannot be continued), when the provider will
            // not continue someone else's text, or when only thinking was shown (there is no
            // answer to continue; the client drops the thinking it got).
            //
            // An answer with a server tool's blocks (a web search's call and results) is
            // continued only at Anthropic, given the blocks back, and only with each call's
            // result in: another provider never saw the search, nor can its results be sent to
            // it, and the client cannot take the blocks back.
            let answered = !partial.text.is_empty() || !partial.server_blocks.is_empty();
            let blocks_continue = partial.server_blocks.is_empty()
                || (p.cfg.api == crate::config::Api::Anthropic
                    && attempt::server_calls_answered(&partial.server_blocks));
            let must_restart = partial.tool_started
                || !blocks_continue
                || (answered && (restart || !accepts_prefill))
                || (!answered && partial.emitted);
            restart = false;
            if must_restart {
                partial = Partial::default();
            }
            if let Some((from, reason)) = pending_reroute.take() {
                let mode = if must_restart {
                    RerouteMode::Restart
                } else {
                    RerouteMode::Continue
                };
                let ev = StreamEvent::Rerouted {
                    from,
                    to: p.cfg.name.clone(),
                    reason,
                    mode,
                };
                if !out.send(ev).await {
                    break 'request Err((cancelled(), None));
                }
            }
            // (After a restart there is nothing to continue.)
            let answered = !partial.text.is_empty() || !partial.server_blocks.is_empty();
            let prefill = answered.then(|| partial.text.clone());
            let prefill_blocks = partial.server_blocks.clone();
            let model = req
                .pin
                .as_ref()
                .and_then(|pin| pin.model.clone())
                .unwrap_or_else(|| p.cfg.model.clone());
            // An agent asking for 128,000 output tokens must still be served by a model whose
            // limit is 8,192: clamp to the serving model's limit (providers refuse more).
            let wanted = match req.max_tokens {
                None if req.options.up_to_model_limit => u32::MAX,
                _ => plan.max_tokens,
            };
            let limit = wanted.min(p.cfg.output_limit()).max(1);
            // A continuation may only produce what the first part left of the output limit.
            let max_tokens = match &prefill {
                Some(text) => limit
                    .saturating_sub(estimate_tokens(text) as u32)
                    .max((limit / 4).clamp(1, MIN_CONTINUATION_TOKENS)),
                None => limit,
            };
            // A client's own prefill (a final assistant turn of text: "answer from here", which
            // Anthropic continues) is, for a provider asked in words, the start of the answer to
            // go on from, as mythos's own continuations are: sent as it stood, a model answered
            // from the beginning and the client got the prefill twice (found by a helper
            // replaying Anthropic-format requests). What the client sees then passes the seam.
            let split = match p.cfg.api {
                crate::config::Api::Anthropic => None,
                _ => split_prefill
                    .get_or_insert_with(|| client_prefill(req))
                    .as_ref(),
            };
            let (chat, prefill) = match split {
                Some((without, pre)) => (
                    without,
                    Some(format!("{pre}{}", prefill.as_deref().unwrap_or_default())),
                ),
                None => (req, prefill),
            };
            let upstream = UpstreamRequest {
                chat,
                model: &model,
                max_tokens,
                prefill: prefill.as_deref(),
                prefill_blocks: &prefill_blocks,
                format_in_words: j.format_in_words.contains(&i),
            };
            // Whether a `400` could be this provider refusing the format asked natively.
            let native_format = p.transport.asks_format_natively(&upstream);
            let attempt_start = Instant::now();
            let asleep_before = crate::suspend::suspended_total();
            if attempt_no == 1 {
                // Everything but the wait for capacity was the daemon's own time.
                let own = (attempt_start - start).saturating_sub(j.queued);
                j.setup_us = own.as_micros().min(u64::MAX as u128) as u64;
            }
            let end = self
                .attempt(
                    &lease,
                    &upstream,
                    plan.input_tokens,
                    (attempt_no, rec.id, j.setup_us),
                    out,
                    cancel,
                    &mut partial,
                )
                .await;
            let elapsed = attempt_start.elapsed();
            // Coming back after a 429's pause is what the provider asked for, not a retry that
            // adds to its load: it takes no retry budget. (Charged, a burst of sessions all
            // told "wait 2 s" spent the budget, and the rest got the 429 instead of waiting.)
            if end
                .error
                .as_ref()
                .is_none_or(|e| e.kind != ErrorKind::RateLimited)
            {
                push_once(&mut j.attempted, i);
            }
            let mut end = end;
            if (end.error.is_some() || end.broke_after_finish)
                && end.opened
                && end.usage == Usage::default()
            {
                // OpenAI-format providers report usage only at the end: a stream that broke
                // never said what it cost, but it was billed. Estimate rather than count nothing.
                end.usage = Usage {
                    input_tokens: plan.input_tokens,
                    output_tokens: (partial
                        .text
                        .get(end.text_from..)
                        .map_or(0, |t| t.chars().count())
                        as u64)
                        .div_ceil(4),
                    ..Usage::default()
                };
            }
            if end.error.is_some() && end.usage.web_searches == 0 {
                // A stream cut before its usage came still had its searches billed.
                end.usage.web_searches = attempt::web_searches_in(
                    partial.server_blocks.get(end.blocks_from..).unwrap_or(&[]),
                );
            }
            rec.usage = rec.usage + end.usage;
            rec.cost_usd += p.cfg.cost(&end.usage);
            rec.attempts.push(Attempt {
                provider: p.cfg.name.clone(),
                model: end.model.clone(),
                started_ms: attempt_start.duration_since(start).as_millis() as u64,
                ttft_ms: end.ttft.map(|d| d.as_millis() as u64),
                elapsed_ms: elapsed.as_millis() as u64,
                error: end.error.as_ref().map(|e| e.kind),
                detail: match &end.error {
                    None => "answered".into(),
                    Some(e) => e.message.clone(),
                },
            });

            // A stream that broke after a whole tool call was shown (cut, stalled or garbled in
            // the text or thinking after it, or in a next call, never shown) ends at that call:
            // the agent runs it and the model goes on from its result. No provider can continue
            // an answer holding a call without its result, and the client has the call, so it
            // cannot start over either: the turn failed while a healthy provider was free
            // (found by a helper's agent run). The provider is still blamed for the break.
            let broke_after_call = match end.error.take() {
                Some(e) if partial.call_shown && e.kind != ErrorKind::Cancelled => {
                    end.finish = Some(FinishReason::ToolUse);
                    if let Some(a) = rec.attempts.last_mut() {
                        a.detail = format!("{}; the answer ends at its whole tool call", e.message);
                    }
                    tracing::info!(
                        provider = %p.cfg.name,
                        error = %e.message,
                        "the answer broke after a whole tool call; it ends there"
                    );
                    true
                }
                e => {
                    end.error = e;
                    false
                }
            };
            let Some(err) = end.error else {
                let probe = lease.probe;
                let take_outcome = !j.outcome_taken.contains(&i);
                let mut unreachable = std::mem::take(&mut j.unreachable);
                unreachable.retain(|&u| u != i);
                let cost = p.cfg.cost(&end.usage);
                let tokens = end.usage.input_tokens + end.usage.output_tokens;
                let pinned = plan.pinned;
                lease.finish(|book, now| {
                    book.record_attempt(i, broke_after_call, probe, now);
                    if take_outcome {
                        book.record_outcome(i, !broke_after_call, now);
                    }
                    if pinned {
                        // Sent there with its key rejected (or its account not paying): the
                        // answer shows both work again. Only a pinned request counts: one
                        // that began before the key was refused proves nothing now.
                        book.enable(i);
                    }
                    book.record_latency(i, elapsed, now);
                    if tokens > 0 {
                        book.record_cost(i, cost * 1000.0 / tokens as f64, now);
                    }
                    if let Some(g) = end.mean_gap {
                        book.record_gap(i, g, now);
                    }
                    // Whoever failed to connect while this provider answered was really down.
                    for u in unreachable {
                        book.record_attempt(u, true, j.unreachable_probes.contains(&u), now);
                        book.record_outcome(u, false, now);
                    }
                });
                if probe {
                    self.changed.notify_one();
                }
                rec.provider = Some(p.cfg.name.clone());
                rec.queued_ms = j.queued.as_millis() as u64;
                return Ok((end.finish.unwrap_or(FinishReason::Stop), end.model));
            };

            // Decide what the failure means; the lease is still held, so nothing changed yet.
            // Only a connection never made: every provider resetting the connection after
            // reading the request (a proxy or load balancer in trouble) is not this machine
            // being offline, and a pass over them in 5 ms said so, with `x-should-retry: false`
            // to the SDKs (found by a helper's chaos run).
            let connect_failure = !end.opened && err.status.is_none() && err.unreached;
            let retries_here = j.retries_at(i);
            let facts = {
                let now = Instant::now();
                let mut book = self.health();
                let others = Want {
                    candidates: plan
                        .candidates
                        .iter()
                        .copied()
                        .filter(|&c| {
                            c != i && !j.excluded.contains(&c) && !j.tried_round.contains(&c)
                        })
                        .collect(),
                    ..want.clone()
                };
                let alternative = !plan.pinned && book.any_soon(&others, now, SOON);
                let any_other = !plan.pinned && !others.candidates.is_empty();
                let ph = &mut book.providers[i];
                let healthy = !ph.recent.iter().any(|(_, fault)| *fault);
                let budget = ph.budget.allows(now);
                Facts {
                    kind: err.kind,
                    status: err.status,
                    retry_after: err.retry_after.map(|d| d.min(self.cfg.max_cooldown)),
                    prefill_rejected: crate::provider::error::is_prefill_rejection(&err.message),
                    restarted_here: j.restarted.contains(&i),
                    refused_elsewhere: j
                        .errors
                        .iter()
                        .any(|(c, e)| *c != i && e.kind == ErrorKind::BadRequest),
                    native_format,
                    attachments: plan.attachments,
                    connected: !connect_failure,
                    progressed: end.progressed,
                    continuation: prefill.is_some(),
                    probe: lease.probe,
                    pinned: plan.pinned,
                    retries_here,
                    max_retries: steps.len() as u32,
                    healthy,
                    budget,
                    alternative,
                    others: any_other,
                    backoff: retry::backoff(steps, jitter, retries_here as usize, fastrand::f64())
                        .unwrap_or_default(),
                    quick: retry::backoff(steps, jitter, 0, fastrand::f64()).unwrap_or_default(),
                }
            };
            // A failed connect is held back: if no provider can be reached, this machine is
            // offline and nobody is to blame. Not when another provider answered a moment ago:
            // the network works.
            let network_works = connect_failure && {
                let book = self.health();
                let since = Instant::now()
                    .checked_sub(NETWORK_EVIDENCE)
                    .unwrap_or(start);
                (0..self.providers.len()).any(|c| c != i && book.answered_since(c, since))
            };
            let defer = connect_failure && !plan.pinned && !network_works;
            if defer
                && plan.candidates.len() > 1
                && plan
                    .candidates
                    .iter()
                    .all(|&c| c == i || j.unreachable.contains(&c))
            {
                // Not one provider could be reached: say so now rather than retry into a dead
                // network.
                push_once(&mut j.unreachable, i);
                j.errors.push((i, err));
                drop(lease);
                break 'request Ok(());
            }
            let (next, effect) = policy::decide(&facts);
            if facts.progressed {
                j.prefer_since = None;
                j.progressed_at = Some(Instant::now());
            }
            // A provider that said when to come back: a pause of a second or more, or any
            // `429`'s (a quota's `retry-after-ms` is often a few hundred milliseconds, and says
            // as much as a whole second does; an overload's `Retry-After: 0` says nothing).
            let told = effect.pause.is_some_and(|p| {
                p >= policy::MIN_TOLD_PAUSE || (err.kind == ErrorKind::RateLimited && !p.is_zero())
            });
            if told {
                j.told_round = true;
                j.told_attempts += 1;
            }
            // An attempt that was streaming when the laptop's lid closed died with the sleep:
            // failing over is right, blaming the provider (a breaker's fault, a failed probe)
            // is not.
            let slept = self.health().slept_since(attempt_start)
                || crate::suspend::slept_between(asleep_before, crate::suspend::suspended_total());
            // A model the entry does not name (`PROVIDER/MODEL` pins any): its 404 is the
            // caller's (a typo), not the entry's; five of them opened its breaker for every
            // other request (found by a review).
            let foreign_model = req
                .pin
                .as_ref()
                .and_then(|pin| pin.model.as_deref())
                .is_some_and(|m| m != self.providers[i].cfg.model);
            let callers_typo = foreign_model && err.kind == ErrorKind::NotFound;
            let fault = effect.fault && !defer && !slept && !callers_typo;
            if defer {
                push_once(&mut j.unreachable, i);
                if lease.probe {
                    push_once(&mut j.unreachable_probes, i);
                }
            }
            // The success rate takes one sample per request and provider: the outcome when the
            // request leaves it (a fault a retry recovers is not a failure).
            let leaving = matches!(next, Next::FailOver | Next::Surface);
            let take_outcome = (fault || effect.miss) && leaving && !j.outcome_taken.contains(&i);
            if (fault || effect.miss || defer) && leaving {
                push_once(&mut j.outcome_taken, i);
            }
            let probe = lease.probe;
            let max_cooldown = self.cfg.max_cooldown;
            let cost = plan.cost;
            let kind = err.kind;
            let message = err.message.clone();
            let tripped = std::cell::Cell::new(None);
            lease.finish(|book, now| {
                if kind != ErrorKind::Cancelled {
                    book.note_error(i, kind, &message);
                }
                if fault {
                    tripped.set(book.record_attempt(i, true, probe, now));
                }
                if take_outcome {
                    book.record_outcome(i, false, now);
                }
                if let Some(pause) = effect.pause {
                    let until = health::after(now, pause.min(max_cooldown));
                    let q = &mut book.providers[i].quota;
                    if kind == ErrorKind::RateLimited {
                        q.rate_limited(cost, until, now);
                    } else {
                        q.block(until);
                    }
                }
                if let Some(why) = effect.disable {
                    book.disable(i, why, now);
                }
                if effect.no_prefill {
                    book.refuse_prefill(i, now);
                }
            });
            if tripped.get().is_some()
                || effect.pause.is_some()
                || effect.disable.is_some()
                || effect.no_prefill
            {
                self.changed.notify_one();
            }
            let reason = match tripped.get() {
                Some(until) => format!(
                    "{}; cooling down for {}",
                    err.message,
                    human(until.saturating_duration_since(Instant::now()))
                ),
                None => err.message.clone(),
            };
            j.errors.push((i, err.clone()));
            match next {
                Next::Surface => {
                    let mut err = err;
                    if err.kind == ErrorKind::BadRequest {
                        // The second opinion agreed: both providers' words, the first often
                        // in the client's own API's terms.
                        if let Some((_, first)) = j
                            .errors
                            .iter()
                            .find(|(c, e)| *c != i && e.kind == ErrorKind::BadRequest)
                        {
                            err.message = format!("{}; {}", first.message, err.message);
                        }
                    }
                    break 'request Err((err, None));
                }
                Next::Retry { after } => {
                    tracing::info!(provider = %p.cfg.name, error = %err,
                                   wait_ms = after.as_millis() as u64, "retrying");
                    if !after.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(after) => {}
                            _ = cancel.cancelled() => break 'request Err((cancelled(), None)),
                            // A reload: the loop's top moves the request.
                            _ = self.retired.cancelled() => {}
                        }
                    }
                    j.count_retry(i);
                    if partial.emitted {
                        pending_reroute =
                            Some((p.cfg.name.clone(), unprefixed(&reason, &p.cfg.name)));
                    }
                    same = Some(i);
                }
                Next::InWords => {
                    tracing::info!(provider = %p.cfg.name, error = %err,
                                   "the response format was refused; asking for it in words");
                    push_once(&mut j.format_in_words, i);
                    // Asking again in other words is not a retry of a failure: no retry budget
                    // (a client repeating a bad request would spend everyone's), and it waits
                    // for its slot if another request took it meanwhile.
                    j.attempted.retain(|&a| a != i);
                    same = Some(i);
                    same_may_wait = true;
                }
                Next::Restart => {
                    push_once(&mut j.restarted, i);
                    same = Some(i);
                    restart = true;
                    pending_reroute = Some((
                        p.cfg.name.clone(),
                        format!("{} cannot continue a partial answer", p.cfg.name),
                    ));
                }
                Next::FailOver => {
                    tracing::warn!(provider = %p.cfg.name, error = %err, "provider failed; failing over");
                    push_once(&mut j.tried_round, i);
                    match err.kind {
                        ErrorKind::ContextLength => {
                            // Nothing with a window this small or smaller will take it.
                            let window = context_window(&p.cfg, req);
                            for c in plan.candidates.iter().copied() {
                                let w = context_window(&self.providers[c].cfg, req);
                                if c == i || (window.is_some() && w.is_some() && w <= window) {
                                    push_once(&mut j.excluded, c);
                                }
                            }
                        }
                        ErrorKind::Auth
                        | ErrorKind::Billing
                        | ErrorKind::NotFound
                        | ErrorKind::BadRequest => push_once(&mut j.excluded, i),
                        _ => {}
                    }
                    pending_reroute = Some((p.cfg.name.clone(), unprefixed(&reason, &p.cfg.name)));
                }
            }
        };
        rec.queued_ms = j.queued.as_millis() as u64;
        outcome?;
        if j.back_at.is_none() {
            // The providers said when they would be back (a Retry-After, a quota, a cooldown):
            // the client is told when to ask again (an HTTP client gets `retry-after`), as after
            // a wait for capacity that ran out.
            let want = Want {
                task: req.task,
                candidates: plan
                    .candidates
                    .iter()
                    .copied()
                    .filter(|i| !j.excluded.contains(i))
                    .collect(),
                retry_at: Vec::new(),
                budget_free: false,
                cost: plan.cost,
                pinned: plan.pinned,
                prefer: Vec::new(),
            };
            if let admission::Outlook::Wait { eta: Some(t), .. } =
                self.health().outlook(&want, Instant::now())
            {
                j.back_at = Some(t);
            }
        }
        Err(self.nobody_answered(j, &partial, plan.pinned))
    }

    /// The error for a request no provider could take within the wait allowed.
    fn no_capacity(
        &self,
        candidates: &[usize],
        cost: Cost,
        reason: &str,
        back_at: Option<Instant>,
        timed_out: bool,
    ) -> Failure {
        // When every candidate is out because of its rate limit (a `429`'s pause, or a quota
        // its headers said is spent), say so: an HTTP client gets the 429 it expects (with when
        // to come back), not an overload.
        let now = Instant::now();
        let book = self.health();
        let kind = if !candidates.is_empty()
            && candidates.iter().all(|&i| book.out_for_quota(i, cost, now))
        {
            ErrorKind::RateLimited
        } else {
            ErrorKind::AllCoolingDown
        };
        drop(book);
        match back_at {
            None if timed_out => (
                ProviderError::new(
                    kind,
                    format!(
                        "waited {} and no provider could take this request ({reason})",
                        human(self.cfg.max_queue_wait)
                    ),
                ),
                None,
            ),
            Some(t) => (
                ProviderError::new(
                    kind,
                    format!(
                        "no provider can take this request within {} ({reason}); the first is back in {}",
                        human(self.cfg.max_queue_wait),
                        human(t.saturating_duration_since(Instant::now()))
                    ),
                ),
                Some(unix_ms_at(t)),
            ),
            None => (
                ProviderError::new(
                    ErrorKind::NoProviders,
                    format!("no usable provider ({reason})"),
                ),
                None,
            ),
        }
    }

    /// The error once every attempt failed: offline, or every provider's failure in one line.
    fn nobody_answered(&self, mut j: Journey, partial: &Partial, pinned: bool) -> Failure {
        let distinct: Vec<usize> = {
            let mut v = Vec::new();
            for (i, _) in &j.errors {
                push_once(&mut v, *i);
            }
            v
        };
        if !j.unreachable.is_empty() && j.unreachable.len() == distinct.len() {
            // With the last failure's words: a name that does not resolve and a refused
            // connection are not fixed alike.
            let last = j
                .errors
                .last()
                .map(|(_, e)| format!(": {}", e.message))
                .unwrap_or_default();
            return (
                ProviderError::new(
                    ErrorKind::Offline,
                    format!(
                        "cannot reach any provider: this machine looks offline (no provider \
                         was blamed){last}"
                    ),
                ),
                None,
            );
        }
        if !j.unreachable.is_empty() {
            // Some provider answered (with an error): the network works, so the unreachable
            // ones are to blame.
            let now = Instant::now();
            let mut book = self.health();
            for u in std::mem::take(&mut j.unreachable) {
                book.record_attempt(u, true, j.unreachable_probes.contains(&u), now);
                book.record_outcome(u, false, now);
            }
        }
        let Some((last_at, last)) = j.errors.pop() else {
            return (
                ProviderError::new(
                    ErrorKind::AllCoolingDown,
                    "every provider became unavailable while this request waited",
                ),
                None,
            );
        };
        let back_at = j.back_at.map(unix_ms_at);
        if pinned {
            return (last, back_at);
        }
        let mut summary: Vec<String> = Vec::new();
        for (i, e) in j
            .errors
            .iter()
            .chain(std::iter::once(&(last_at, last.clone())))
        {
            let name = self
                .providers
                .get(*i)
                .map(|p| p.cfg.name.as_str())
                .unwrap_or("");
            let line = if name.is_empty() || e.message.starts_with(name) {
                e.message.clone()
            } else {
                format!("{name}: {}", e.message)
            };
            if !summary.contains(&line) {
                summary.push(line);
            }
        }
        // A request one provider refused as bad and another then failed to answer (a 429, a
        // stall) ends with the last failure's kind: the second opinion is unknown, and a
        // client told to come back later may find it takes the request.
        let mut err = last;
        err.message = format!("every provider failed ({})", summary.join("; "));
        if let Some(why) = &j.unavailable {
            err.message.push_str(&format!(
                "; none can take it again within {} ({why})",
                human(self.cfg.max_queue_wait.saturating_sub(j.queued))
            ));
        }
        if partial.emitted {
            err.message.push_str(" — the answer is incomplete");
        }
        (err, back_at)
    }
}

/// A final assistant turn of text alone that the client sent, and the conversation without it.
/// Anthropic continues such a turn (a prefill); the other formats have no prefill and are asked
/// in words, as for the daemon's own continuations.
fn client_prefill(req: &ChatRequest) -> Option<(ChatRequest, String)> {
    let last = req.messages.last()?;
    if last.role != mythos_protocol::Role::Assistant {
        return None;
    }
    let mut text = String::new();
    for block in &last.content {
        match block {
            ContentBlock::Text { text: t } => text.push_str(t),
            _ => return None,
        }
    }
    if text.trim().is_empty() {
        return None;
    }
    let mut without = req.clone();
    without.messages.pop();
    Some((without, text))
}

/// How long a request that needs what only some providers do (Anthropic's server tools, a
/// reader of PDFs) keeps to them before any provider may answer it without.
const PREFER_WAIT: Duration = Duration::from_secs(10);

/// Waits shorter than this are not announced to the client.
const QUIET_WAIT: Duration = Duration::from_millis(250);

/// Another provider that answered within this long proves the network works: a provider that
/// cannot be connected to meanwhile is down, and blamed at once (see `defer` in `run`).
const NETWORK_EVIDENCE: Duration = Duration::from_secs(60);

/// A provider free within this long counts as an alternative worth failing over to.
const SOON: Duration = Duration::from_secs(1);

/// A reason without its figures: "cooling down, 29 s left" is no news after "30 s left".
fn gist(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| !c.is_ascii_digit() && *c != '.')
        .collect()
}

#[cfg(test)]
mod tests;
