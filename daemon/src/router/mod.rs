//! The routing engine: pick the best healthy provider, retry transient failures with backoff,
//! trip breakers, watch streams for stalls, and fail over mid-answer without losing or
//! duplicating text.
//!
//! One [`Router`] serves every connection. Provider health lives in a [`health::HealthBook`]
//! behind a mutex that is never held across an await: selection, claims and outcomes are short
//! critical sections, so all sessions share one view of which provider is healthy.
//!
//! Failover keeps the answer whole. Text already streamed is kept in `Partial`; the next provider
//! is asked to continue it (Anthropic: assistant prefill; OpenAI-compatible: the partial answer
//! plus an explicit continuation turn) and the client gets a `rerouted` event followed by only
//! the new text. When continuation is impossible (a tool call was half streamed, or the provider
//! rejects prefill), the client gets `rerouted` with mode `restart` and the answer starts over.

pub mod health;
pub mod retry;
pub mod score;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use mythos_protocol::{
    Attempt, CandidateScore, ChatRequest, ErrorKind, FinishReason, ProviderStatus, RequestRecord,
    RerouteMode, Response, StreamEvent, Usage,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{ProviderConfig, RoutingConfig};
use crate::provider::{Delta, ProviderError, Transport, UpstreamRequest};
use health::{Claim, HealthBook};

/// A provider as the router holds it.
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
}

/// Sends one request's events to its connection.
#[derive(Clone)]
pub struct Emitter {
    id: u64,
    tx: mpsc::Sender<Response>,
}

impl Emitter {
    /// Events for request `id` go to `tx`.
    pub fn new(id: u64, tx: mpsc::Sender<Response>) -> Self {
        Emitter { id, tx }
    }

    /// Send an event; false when the client is gone.
    async fn send(&self, event: StreamEvent) -> bool {
        self.tx
            .send(Response::Event { id: self.id, event })
            .await
            .is_ok()
    }
}

/// The engine.
pub struct Router {
    providers: Vec<RoutedProvider>,
    health: Mutex<HealthBook>,
    cfg: RoutingConfig,
    records: Option<Arc<dyn RecordSink>>,
    next_record: AtomicU64,
    in_flight: AtomicU32,
    last_record: AtomicU64,
}

/// What the answer so far looks like, across providers.
#[derive(Default)]
struct Partial {
    /// Answer text the client has received.
    text: String,
    /// A tool call was started: the answer cannot be continued, only restarted.
    tool_started: bool,
    /// Anything at all was sent to the client (text, thinking, tool call).
    emitted: bool,
}

/// How an attempt ended.
struct AttemptEnd {
    usage: Usage,
    model: String,
    ttft: Option<Duration>,
    mean_gap: Option<Duration>,
    finish: Option<FinishReason>,
    /// The upstream answered with a stream (not an HTTP error, not a failed connect).
    opened: bool,
    /// This attempt sent content to the client.
    progressed: bool,
    error: Option<ProviderError>,
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn unix_ms_at(t: Instant) -> u64 {
    let now = Instant::now();
    let unix = now_unix_ms();
    if t >= now {
        unix + (t - now).as_millis() as u64
    } else {
        unix.saturating_sub((now - t).as_millis() as u64)
    }
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

impl Router {
    /// A router over `providers` (in priority order).
    pub fn new(
        providers: Vec<RoutedProvider>,
        cfg: RoutingConfig,
        records: Option<Arc<dyn RecordSink>>,
        first_record_id: u64,
    ) -> Self {
        let book = HealthBook::new(
            providers
                .iter()
                .map(|p| (p.cfg.name.clone(), p.cfg.priority, p.cfg.cost_per_1k())),
            cfg.clone(),
        );
        Router {
            providers,
            health: Mutex::new(book),
            cfg,
            records,
            next_record: AtomicU64::new(first_record_id.max(1)),
            in_flight: AtomicU32::new(0),
            last_record: AtomicU64::new(0),
        }
    }

    /// The providers, in configured order.
    pub fn providers(&self) -> &[RoutedProvider] {
        &self.providers
    }

    /// Lock the health book. Never held across an await.
    pub fn health(&self) -> MutexGuard<'_, HealthBook> {
        // A panic while holding the lock cannot leave the book half-updated in a way that
        // matters more than losing all routing; keep serving.
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests streaming now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The id the next finished request will get.
    pub fn next_record_id(&self) -> u64 {
        self.next_record.load(Ordering::Relaxed)
    }

    /// Id of the most recent finished record, 0 if none.
    pub fn last_record(&self) -> u64 {
        self.last_record.load(Ordering::Relaxed)
    }

    /// Every provider's status, best first for a chat task.
    pub fn status(&self) -> Vec<ProviderStatus> {
        let now = Instant::now();
        let mut book = self.health();
        let ranked = book.rank(mythos_protocol::TaskKind::Chat, now);
        let hl = self.cfg.health_half_life;
        ranked
            .iter()
            .map(|r| {
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
                    success: p.success.get(1.0, now, hl),
                    ttft_ms: p.ttft.raw().map(|_| p.ttft.get(1000.0, now, hl)),
                    gap_ms: p.gap.raw().map(|_| p.gap.get(50.0, now, hl)),
                    latency_ms: p.latency.raw().map(|_| p.latency.get(5000.0, now, hl)),
                    cost_per_1k: p.cost.get(cfg.cost_per_1k(), now, hl),
                    requests: p.requests,
                    failures: p.failures,
                    last_error: p.last_error.clone(),
                }
            })
            .collect()
    }

    /// Serve one chat request to the end: exactly one `done` or `error` event is sent (unless
    /// the client is gone).
    pub async fn route(&self, req: ChatRequest, out: Emitter, cancel: CancellationToken) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
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
        };
        let result = self.run(&req, &out, &cancel, &mut rec, start).await;
        rec.latency_ms = start.elapsed().as_millis() as u64;
        rec.id = self.next_record.fetch_add(1, Ordering::Relaxed);
        let event = match result {
            Ok((finish, model)) => StreamEvent::Done {
                finish,
                usage: rec.usage,
                cost_usd: rec.cost_usd,
                latency_ms: rec.latency_ms,
                provider: rec.provider.clone().unwrap_or_default(),
                model,
                record: rec.id,
            },
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
        let _ = out.send(event).await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Candidates for a request: indices in the order to try them.
    fn candidates(
        &self,
        req: &ChatRequest,
        rec: &mut RequestRecord,
    ) -> Result<(Vec<usize>, bool), (ProviderError, Option<u64>)> {
        let now = Instant::now();
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
            let matching: Vec<usize> = ranked
                .iter()
                .map(|r| r.index)
                .filter(|&i| {
                    let c = &self.providers[i].cfg;
                    match (&pin.provider, &pin.model) {
                        (Some(p), _) => &c.name == p,
                        (None, Some(m)) => &c.model == m,
                        (None, None) => true,
                    }
                })
                .collect();
            if matching.is_empty() {
                let names: Vec<_> = self.providers.iter().map(|p| p.cfg.name.as_str()).collect();
                let what = pin
                    .provider
                    .clone()
                    .or_else(|| pin.model.clone())
                    .unwrap_or_default();
                return Err((
                    ProviderError::new(
                        ErrorKind::NoProviders,
                        format!(
                            "no provider matches `{what}`; configured: {}",
                            names.join(", ")
                        ),
                    ),
                    None,
                ));
            }
            // Deterministic mode: exactly what was asked for, breaker or not.
            return Ok((matching.into_iter().take(1).collect(), true));
        }
        let eligible: Vec<usize> = ranked
            .iter()
            .filter(|r| r.eligible)
            .map(|r| r.index)
            .collect();
        if eligible.is_empty() {
            let back = ranked.iter().filter_map(|r| r.back_at).min();
            let kind = if back.is_some() {
                ErrorKind::AllCoolingDown
            } else {
                ErrorKind::NoProviders
            };
            let msg = match back {
                Some(t) => format!(
                    "every provider is cooling down; the first is back in {}",
                    human(t.saturating_duration_since(now))
                ),
                None => "no usable provider: every key was rejected".to_string(),
            };
            return Err((ProviderError::new(kind, msg), back.map(unix_ms_at)));
        }
        Ok((eligible, false))
    }

    async fn run(
        &self,
        req: &ChatRequest,
        out: &Emitter,
        cancel: &CancellationToken,
        rec: &mut RequestRecord,
        start: Instant,
    ) -> Result<(FinishReason, String), (ProviderError, Option<u64>)> {
        let (candidates, pinned) = self.candidates(req, rec)?;
        let mut partial = Partial::default();
        let mut attempt_no = 0u32;
        let mut errors: Vec<(usize, ProviderError)> = Vec::new();
        // Connect failures are blamed on the provider only once some other provider answers:
        // if none does, this machine is probably offline and no breaker should trip.
        let mut unreachable: Vec<(usize, Claim)> = Vec::new();
        let mut pending_reroute: Option<(String, String)> = None;
        let cancelled = || ProviderError::new(ErrorKind::Cancelled, "cancelled by the client");

        for &i in &candidates {
            let p = &self.providers[i];
            let mut retry = 0usize;
            loop {
                if cancel.is_cancelled() {
                    return Err((cancelled(), None));
                }
                let now = Instant::now();
                let claim = {
                    let mut book = self.health();
                    match book.claim(i, now) {
                        Some(c) => c,
                        None if pinned => Claim::Normal,
                        None => {
                            // Tripped or rate limited by another request since ranking.
                            rec.attempts.push(Attempt {
                                provider: p.cfg.name.clone(),
                                model: p.cfg.model.clone(),
                                started_ms: start.elapsed().as_millis() as u64,
                                ttft_ms: None,
                                elapsed_ms: 0,
                                error: None,
                                detail: "skipped: became unavailable while this request waited"
                                    .into(),
                            });
                            break;
                        }
                    }
                };
                attempt_no += 1;

                // Decide whether the answer so far can be continued here.
                let no_prefill = self.health().providers[i].no_prefill;
                let restart = partial.tool_started || (!partial.text.is_empty() && no_prefill);
                if restart {
                    partial = Partial::default();
                }
                if let Some((from, reason)) = pending_reroute.take() {
                    let mode = if restart {
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
                        self.health().release(i, claim);
                        return Err((cancelled(), None));
                    }
                }
                let prefill = (!partial.text.is_empty()).then(|| partial.text.clone());
                let model = req
                    .pin
                    .as_ref()
                    .and_then(|pin| pin.model.clone())
                    .unwrap_or_else(|| p.cfg.model.clone());
                let upstream = UpstreamRequest {
                    chat: req,
                    model: &model,
                    max_tokens: req.max_tokens.unwrap_or(self.cfg.default_max_tokens),
                    prefill: prefill.as_deref(),
                };
                let attempt_start = Instant::now();
                let end = self
                    .attempt(i, &upstream, attempt_no, out, cancel, &mut partial)
                    .await;
                let elapsed = attempt_start.elapsed();
                rec.usage = rec.usage + end.usage;
                rec.cost_usd += p.cfg.cost(end.usage.input_tokens, end.usage.output_tokens);
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

                let now = Instant::now();
                let Some(err) = end.error else {
                    let mut book = self.health();
                    book.record_success(i, elapsed, now);
                    let tokens = end.usage.input_tokens + end.usage.output_tokens;
                    if tokens > 0 {
                        let cost = p.cfg.cost(end.usage.input_tokens, end.usage.output_tokens);
                        book.record_cost(i, cost * 1000.0 / tokens as f64, now);
                    }
                    if let Some(g) = end.mean_gap {
                        book.record_gap(i, g, now);
                    }
                    // Whoever failed to connect while this provider answered was really down.
                    for (u, c) in unreachable.drain(..) {
                        let _ = c;
                        book.trip(u, None, now);
                    }
                    drop(book);
                    rec.provider = Some(p.cfg.name.clone());
                    return Ok((end.finish.unwrap_or(FinishReason::Stop), end.model));
                };

                match err.kind {
                    ErrorKind::Cancelled => {
                        self.health().release(i, claim);
                        return Err((err, None));
                    }
                    ErrorKind::BadRequest if prefill.is_some() && !end.progressed => {
                        // The provider refuses to continue someone else's answer: restart here.
                        let mut book = self.health();
                        book.release(i, claim);
                        book.providers[i].no_prefill = true;
                        drop(book);
                        pending_reroute = Some((
                            p.cfg.name.clone(),
                            format!("{} cannot continue a partial answer", p.cfg.name),
                        ));
                        continue;
                    }
                    ErrorKind::BadRequest => {
                        // The caller's fault: surface it, blame nobody, try nobody else.
                        self.health().release(i, claim);
                        return Err((err, None));
                    }
                    _ => {}
                }

                let connect_failure =
                    !end.opened && err.status.is_none() && err.kind == ErrorKind::Network;
                if connect_failure && !pinned {
                    unreachable.push((i, claim));
                    pending_reroute =
                        Some((p.cfg.name.clone(), unprefixed(&err.message, &p.cfg.name)));
                    errors.push((i, err));
                    break;
                }

                // Decide under the lock, wait outside it.
                let retry_wait = {
                    let mut book = self.health();
                    book.record_failure(i, err.kind, &err.message, now);
                    if err.kind == ErrorKind::RateLimited {
                        if let Some(ra) = err.retry_after {
                            book.rate_limit(i, ra, now);
                        }
                    }
                    // A stall is re-routed, not retried: the watchdog already waited long enough.
                    let can_retry = err.is_retryable()
                        && err.kind != ErrorKind::Timeout
                        && !end.progressed
                        && claim == Claim::Normal;
                    let budget = retry::remaining_budget(&self.cfg.retry_backoff, retry);
                    let asks_too_long = err.retry_after.is_some_and(|ra| ra > budget);
                    let wait = retry::backoff(
                        &self.cfg.retry_backoff,
                        self.cfg.retry_jitter,
                        retry,
                        fastrand::f64(),
                    )
                    .filter(|_| can_retry && !asks_too_long)
                    .map(|w| err.retry_after.map_or(w, |ra| w.max(ra)));
                    match wait {
                        Some(w) => Ok(w),
                        None => {
                            // Retries spent, or not worth it: cool the provider down, unless
                            // this was a mid-stream hiccup on an otherwise healthy provider.
                            let trip = !end.progressed
                                || claim == Claim::Probe
                                || book.providers[i].consecutive_failures >= 3;
                            Err(if trip && err.is_retryable() {
                                let until = book.trip(i, err.retry_after, now);
                                format!(
                                    "{}; cooling down for {}",
                                    err.message,
                                    human(until.saturating_duration_since(now))
                                )
                            } else {
                                err.message.clone()
                            })
                        }
                    }
                };
                let reason = match retry_wait {
                    Ok(w) => {
                        tracing::info!(provider = %p.cfg.name, error = %err,
                                       wait_ms = w.as_millis() as u64, "retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(w) => {}
                            _ = cancel.cancelled() => return Err((cancelled(), None)),
                        }
                        retry += 1;
                        errors.push((i, err));
                        continue;
                    }
                    Err(reason) => reason,
                };
                tracing::warn!(provider = %p.cfg.name, error = %err, "provider failed; failing over");
                pending_reroute = Some((p.cfg.name.clone(), unprefixed(&reason, &p.cfg.name)));
                errors.push((i, err));
                break;
            }
        }

        // Nobody answered.
        let attempted_unreachable = unreachable.len();
        let distinct: std::collections::HashSet<usize> = errors.iter().map(|(i, _)| *i).collect();
        if attempted_unreachable >= 2 && attempted_unreachable == distinct.len() {
            let mut book = self.health();
            for (u, c) in unreachable.drain(..) {
                book.release(u, c);
            }
            return Err((
                ProviderError::new(
                    ErrorKind::Offline,
                    "cannot reach any provider: this machine looks offline (no breaker was tripped)",
                ),
                None,
            ));
        }
        {
            let now = Instant::now();
            let mut book = self.health();
            for (u, _) in unreachable.drain(..) {
                let msg = errors
                    .iter()
                    .find(|(i, _)| *i == u)
                    .map(|(_, e)| e.message.clone())
                    .unwrap_or_default();
                book.record_failure(u, ErrorKind::Network, &msg, now);
                book.trip(u, None, now);
            }
        }
        let Some((_, last)) = errors.pop() else {
            return Err((
                ProviderError::new(
                    ErrorKind::AllCoolingDown,
                    "every provider became unavailable while this request waited",
                ),
                None,
            ));
        };
        if pinned {
            return Err((last, None));
        }
        let mut summary: Vec<String> = Vec::new();
        for (i, e) in errors
            .iter()
            .chain(std::iter::once(&(usize::MAX, last.clone())))
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
        let mut err = last;
        err.message = format!("every provider failed ({})", summary.join("; "));
        if partial.emitted {
            err.message.push_str(" — the answer is incomplete");
        }
        Err((err, None))
    }

    /// One attempt at provider `i`, streaming to the client as it goes.
    async fn attempt(
        &self,
        i: usize,
        upstream: &UpstreamRequest<'_>,
        attempt_no: u32,
        out: &Emitter,
        cancel: &CancellationToken,
        partial: &mut Partial,
    ) -> AttemptEnd {
        let p = &self.providers[i];
        let (ttft_limit, gap_limit) = self.health().watchdog(i);
        let t0 = Instant::now();
        let mut end = AttemptEnd {
            usage: Usage::default(),
            model: upstream.model.to_string(),
            ttft: None,
            mean_gap: None,
            finish: None,
            opened: false,
            progressed: false,
            error: None,
        };
        let cancelled = || ProviderError::new(ErrorKind::Cancelled, "cancelled by the client");
        let stalled = |what: &str, limit: Duration| {
            ProviderError::new(
                ErrorKind::Timeout,
                format!("{}: {what} for {} (watchdog)", p.cfg.name, human(limit)),
            )
        };

        let deadline = tokio::time::sleep_until(t0 + ttft_limit);
        tokio::pin!(deadline);
        let opened = tokio::select! {
            r = p.transport.open(upstream) => r,
            _ = cancel.cancelled() => Err(cancelled()),
            _ = &mut deadline => Err(stalled("no response", ttft_limit)),
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                end.error = Some(e);
                return end;
            }
        };
        end.opened = true;
        let started = StreamEvent::Started {
            provider: p.cfg.name.clone(),
            model: upstream.model.to_string(),
            attempt: attempt_no,
        };
        let sent_at = Instant::now();
        if !out.send(started).await {
            end.error = Some(cancelled());
            return end;
        }
        if sent_at.elapsed() > Duration::from_millis(1) {
            // Blocked on a slow reader, as below: not the provider's time.
            deadline.as_mut().reset(Instant::now() + ttft_limit);
        }

        // After a trimmed Anthropic prefill the continuation starts with the whitespace that
        // was trimmed; it was already sent, so skip it once.
        let mut skip_ws: String = upstream
            .prefill
            .map(|p| p[p.trim_end().len()..].to_string())
            .unwrap_or_default();
        let mut last_progress: Option<Instant> = None;
        let mut gap_total = Duration::ZERO;
        let mut gaps = 0u32;
        let mut waiting_for = "no first token";
        let mut limit = ttft_limit;
        loop {
            let item = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    end.error = Some(cancelled());
                    return end;
                }
                item = stream.next() => item,
                _ = &mut deadline => {
                    end.error = Some(stalled(waiting_for, limit));
                    return end;
                }
            };
            let delta = match item {
                None => break,
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    end.error = Some(e);
                    return end;
                }
            };
            if delta.is_progress() {
                let now = Instant::now();
                match last_progress {
                    None => end.ttft = Some(now - t0),
                    Some(prev) => {
                        gap_total += now - prev;
                        gaps += 1;
                    }
                }
                if last_progress.is_none() {
                    self.health().record_ttft(i, now - t0, now);
                }
                last_progress = Some(now);
                waiting_for = "silent";
                limit = gap_limit;
                deadline.as_mut().reset(now + gap_limit);
            }
            let event = match delta {
                Delta::Model(m) => {
                    end.model = m;
                    continue;
                }
                Delta::Text(mut t) => {
                    if !skip_ws.is_empty() {
                        let common = t
                            .chars()
                            .zip(skip_ws.chars())
                            .take_while(|(a, b)| a == b)
                            .map(|(a, _)| a.len_utf8())
                            .sum::<usize>();
                        t.drain(..common);
                        skip_ws.drain(..common);
                        if !t.is_empty() {
                            // The provider did not repeat the whitespace; stop looking.
                            skip_ws.clear();
                        }
                    }
                    if t.is_empty() {
                        continue;
                    }
                    partial.text.push_str(&t);
                    StreamEvent::TextDelta { text: t }
                }
                Delta::Thinking(t) => StreamEvent::ThinkingDelta { text: t },
                Delta::ToolCallStart { index, id, name } => {
                    partial.tool_started = true;
                    StreamEvent::ToolCallStart { index, id, name }
                }
                Delta::ToolCallArgs { index, json } => StreamEvent::ToolCallDelta { index, json },
                Delta::Usage(u) => {
                    end.usage = u;
                    StreamEvent::Usage(u)
                }
                Delta::Finish(r) => {
                    end.finish = Some(r);
                    continue;
                }
                Delta::KeepAlive => continue,
            };
            let progress = matches!(
                event,
                StreamEvent::TextDelta { .. }
                    | StreamEvent::ThinkingDelta { .. }
                    | StreamEvent::ToolCallStart { .. }
                    | StreamEvent::ToolCallDelta { .. }
            );
            if progress {
                partial.emitted = true;
                end.progressed = true;
            }
            let sent_at = Instant::now();
            if !out.send(event).await {
                end.error = Some(cancelled());
                return end;
            }
            // A client that reads slowly holds us in `send` (backpressure) while the provider
            // waits on TCP: that time is not the provider's silence.
            let blocked = sent_at.elapsed();
            if progress && blocked > Duration::from_millis(1) {
                deadline.as_mut().reset(Instant::now() + gap_limit);
            }
        }
        if gaps > 0 {
            end.mean_gap = Some(gap_total / gaps);
        }
        end
    }
}
#[cfg(test)]
mod tests;
