//! One attempt at one provider: open the stream, relay its deltas to the client, and watch it
//! with two timers (time to first token, silence between content chunks).

use std::future::Future;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use mythos_protocol::{ChatRequest, ErrorKind, FinishReason, StreamEvent, ToolChoice, Usage};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::admission::Lease;
use super::cancel::CancelWatch;
use super::seam::Seam;
use super::{human, Emitter, Router};
use crate::provider::{Delta, DeltaStream, PrefillBlock, ProviderError, UpstreamRequest};
use crate::wake::WakeFlag;

/// What the answer looks like so far, across providers.
#[derive(Default)]
pub(super) struct Partial {
    /// Answer text the client has received.
    pub text: String,
    /// Server tool blocks (a web search's call and results) the client has received, each
    /// where it came in `text`: a continuation at Anthropic sends them back in place.
    pub server_blocks: Vec<PrefillBlock>,
    /// A tool call (or a refusal) was started: the answer cannot be continued, only restarted.
    pub tool_started: bool,
    /// A whole tool call was shown: an answer that breaks after it ends there (see
    /// `Router::route`).
    pub call_shown: bool,
    /// Anything at all was sent to the client (text, thinking, tool call).
    pub emitted: bool,
}

/// An answer may hold this many bytes (text, reasoning, tool calls) for each token it may
/// write: far more than any tokenizer makes of a token, so only a provider that ignores
/// `max_tokens` reaches it...
const ANSWER_BYTES_PER_TOKEN: usize = 64;
/// ...and never less than this (a small `max_tokens` is still a whole answer)...
const MIN_ANSWER_CAP: usize = 1 << 20;
/// ...nor more than this: what one stream may hold in memory.
const MAX_ANSWER_CAP: usize = 16 << 20;

/// The most an answer of up to `max_tokens` tokens may hold, in bytes (see
/// [`ANSWER_BYTES_PER_TOKEN`]).
pub(super) fn answer_cap(max_tokens: u32) -> usize {
    (max_tokens as usize)
        .saturating_mul(ANSWER_BYTES_PER_TOKEN)
        .clamp(MIN_ANSWER_CAP, MAX_ANSWER_CAP)
}

/// The name of the first whole tool call in `held` whose arguments are not a JSON object
/// (none at all stand for `{}`): every API's tool input is an object.
fn broken_call(held: &[StreamEvent]) -> Option<&str> {
    let mut calls: Vec<(u32, &str, String)> = Vec::new();
    for e in held {
        match e {
            StreamEvent::ToolCallStart { index, name, .. } => {
                calls.push((*index, name, String::new()))
            }
            StreamEvent::ToolCallDelta { index, json } => {
                if let Some(c) = calls.iter_mut().rev().find(|c| c.0 == *index) {
                    c.2.push_str(json);
                }
            }
            _ => {}
        }
    }
    calls.into_iter().find_map(|(_, name, args)| {
        let args = args.trim();
        let object = args.is_empty()
            || (args.starts_with('{')
                && serde_json::from_str::<serde::de::IgnoredAny>(args).is_ok());
        (!object).then_some(name)
    })
}

/// Where an attempt's events go.
struct Sink<'a> {
    out: &'a Emitter,
    cancel: &'a CancellationToken,
}

/// How an attempt ended.
pub(super) struct AttemptEnd {
    pub usage: Usage,
    pub model: String,
    pub ttft: Option<Duration>,
    pub mean_gap: Option<Duration>,
    pub finish: Option<FinishReason>,
    /// The upstream answered with a stream (not an HTTP error, not a failed connect).
    pub opened: bool,
    /// This attempt sent content to the client.
    pub progressed: bool,
    /// Where this attempt's answer text starts in `Partial::text` (counted in characters only
    /// if it is needed: an estimate of a broken stream's cost).
    pub text_from: usize,
    /// Where this attempt's server tool blocks start in `Partial::server_blocks`.
    pub blocks_from: usize,
    pub error: Option<ProviderError>,
    /// The stream broke after its finish reason (a whole answer, see `attempt`): its usage,
    /// if it had not come yet, never will.
    pub broke_after_finish: bool,
}

impl Router {
    /// One attempt on `lease`'s provider, streaming to the client as it goes. `input_tokens`
    /// (estimated) lengthens the first-token timer: a long prompt takes longer to read. `tag`
    /// is (attempt number, record id, set-up microseconds) for the `started` event.
    ///
    /// Tool calls are held back until they are complete (the next block begins or the stream
    /// ends cleanly): a call cut in the middle is never shown, so the answer before it can be
    /// continued elsewhere and the call made again there, as if nothing had happened. A
    /// refusal likewise: cut, it is asked again elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attempt(
        &self,
        lease: &Lease,
        upstream: &UpstreamRequest<'_>,
        input_tokens: u64,
        tag: (u32, u64, u64),
        out: &Emitter,
        cancel: &CancellationToken,
        partial: &mut Partial,
    ) -> AttemptEnd {
        let i = lease.index;
        let p = &self.providers[i];
        let (ttft_limit, gap_limit, whole_calls) = {
            let book = self.health();
            let (ttft, gap) = book.watchdog(i, input_tokens);
            (
                ttft,
                gap,
                offers_tools(upstream.chat) && !book.streams_calls(i, upstream.model),
            )
        };
        let tool_limit = self.cfg.tool_stall_timeout;
        // A provider not known to stream its tool calls may be writing one, unseen, in any
        // silence (see `HealthBook::streams_calls`): it is allowed a tool call's silence.
        let (ttft_limit, quiet_limit) = if whole_calls {
            (ttft_limit.max(tool_limit), gap_limit.max(tool_limit))
        } else {
            (ttft_limit, gap_limit)
        };
        let t0 = Instant::now();
        let mut end = AttemptEnd {
            usage: Usage::default(),
            model: upstream.model.to_string(),
            ttft: None,
            mean_gap: None,
            finish: None,
            opened: false,
            progressed: false,
            text_from: partial.text.len(),
            blocks_from: partial.server_blocks.len(),
            error: None,
            broke_after_finish: false,
        };
        let cancelled = || client_gone(out);
        let stalled = |what: &str, limit: Duration| {
            ProviderError::new(
                ErrorKind::Timeout,
                format!("{}: {what} for {} (watchdog)", p.cfg.name, human(limit)),
            )
        };

        let cap = answer_cap(upstream.max_tokens);
        // The client asked for more output than this provider's model writes (an agent's
        // 32,000 at a model of 8,192): its `max_tokens` finish is the model's limit, not the
        // client's, while another provider has more room and the request may go there (else
        // this is as much as the client can get anywhere, and it gets it).
        let clamped = upstream.chat.max_tokens.is_some_and(|asked| {
            let mine = p.cfg.output_limit();
            mine < asked
                && upstream.chat.pin.is_none()
                && self.providers.iter().any(|o| o.cfg.output_limit() > mine)
        });
        // Tool calls cut by the client's own `max_tokens` are as whole as they will get: the
        // answer as asked (see the held check below).
        let calls_done = |held: &[StreamEvent], finish: &Option<FinishReason>| {
            calls_whole(held) || (*finish == Some(FinishReason::MaxTokens) && !clamped)
        };
        let mut answer_bytes = partial.text.len();
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
                if let Some(limits) = &e.limits {
                    // A 429's headers usually say exactly when the quota is back.
                    lease.observe(limits, false);
                }
                end.error = Some(e);
                return end;
            }
        };
        end.opened = true;
        // The quotas the response announced are counted before anything goes to the client,
        // whose queue may be full: a provider that has never answered takes one request at a
        // time until its first response is counted, and every other session waited 30 s behind
        // a client that had stopped reading (found by a chaos run). Transports put them first.
        use futures_util::FutureExt;
        let mut stream: DeltaStream = match stream.next().now_or_never() {
            Some(Some(Ok(Delta::RateLimits(limits)))) => {
                lease.observe(&limits, true);
                stream
            }
            Some(Some(item)) => {
                Box::pin(futures_util::stream::once(std::future::ready(item)).chain(stream))
            }
            Some(None) => Box::pin(futures_util::stream::empty()),
            None => stream,
        };
        let started = StreamEvent::Started {
            provider: p.cfg.name.clone(),
            model: upstream.model.to_string(),
            attempt: tag.0,
            record: tag.1,
            setup_us: tag.2,
        };
        let sent_at = Instant::now();
        if !out.send(started).await {
            end.error = Some(cancelled());
            return end;
        }
        // Silence is measured from here: moved on by every token and by time spent blocked on
        // a slow reader. The timer itself is re-armed only when it fires early, not on every
        // chunk (a reset takes the timer driver's lock).
        let mut watch_from = t0;
        if sent_at.elapsed() > Duration::from_millis(1) {
            // Blocked on a slow reader, as below: not the provider's time.
            watch_from = Instant::now();
            deadline.as_mut().reset(watch_from + ttft_limit);
        }

        // The Anthropic adapter trims a prefill's trailing whitespace (the API refuses it), so
        // the continuation starts by replaying it; the client has it already: skip it once.
        // OpenAI-format providers saw the text whole, and their leading whitespace is meant.
        // After a server tool's blocks, the continuation starts a text of its own: only the
        // text after the last one is its prefill's tail.
        let tail_from = upstream.prefill_blocks.last().map_or(0, |b| b.at);
        let tail = upstream.prefill.and_then(|pre| pre.get(tail_from..));
        let mut skip_ws: String = match (tail, p.cfg.api) {
            (Some(pre), crate::config::Api::Anthropic) => pre[pre.trim_end().len()..].to_string(),
            _ => String::new(),
        };
        // A continuation may start by repeating the tail it was shown.
        let mut seam = match tail {
            // A prefill's continuation goes on exactly; one asked for in words may repeat.
            Some(pre) if !pre.is_empty() => {
                Seam::new(pre, p.cfg.api != crate::config::Api::Anthropic)
            }
            _ => Seam::open(),
        };
        // The latest token: the mean gap between tokens is its distance from the first one
        // (`t0 + ttft`) over the count of gaps (their sum telescopes), so a token costs one
        // clock reading.
        let mut last_progress: Option<Instant> = None;
        let mut gaps = 0u32;
        let mut tool_pauses = Duration::ZERO;
        let mut waiting_for = "no first token";
        let mut limit = ttft_limit;
        // The limit is a tool call's (or a server tool's): its pauses are not the text's pace.
        let mut in_call = false;
        // The call the last argument fragment was for: a second fragment in a row for the
        // same call shows the provider streams them (see `HealthBook::streams_calls`).
        let mut args_of: Option<u32> = None;
        let mut learning = whole_calls;
        let mut events: Vec<StreamEvent> = Vec::with_capacity(2);
        // Tool-call and refusal events not yet shown: they are still being streamed.
        let mut held: Vec<StreamEvent> = Vec::new();
        let mut prompt_counted = false;
        let sink = Sink { out, cancel };
        // One watch for the whole attempt, asked at each chunk for an atomic load (see
        // `CancelWatch`): the upstream may always be ready, and a cancel must still stop it.
        let mut watch = CancelWatch::new(cancel);
        // The watchdog's timer likewise: polled (which takes the timer driver's lock) only
        // when it fired or was reset, not each time the upstream has nothing ready.
        let (alarm, alarm_waker) = WakeFlag::new();
        loop {
            if watch.is_cancelled() {
                end.error = Some(cancelled());
                return end;
            }
            // The stream first: when a chunk is ready, nothing else is polled. (A hand-written
            // `select!`: this runs once per chunk, and the macro's bookkeeping of which
            // branches are still enabled is not needed here.)
            let woke = std::future::poll_fn(|cx| {
                if let Poll::Ready(item) = stream.poll_next_unpin(cx) {
                    return Poll::Ready(Woke::Item(item));
                }
                if watch.poll_cancelled(cx).is_ready() {
                    return Poll::Ready(Woke::Cancelled);
                }
                alarm.register(cx.waker());
                if alarm.take()
                    && deadline
                        .as_mut()
                        .poll(&mut Context::from_waker(&alarm_waker))
                        .is_ready()
                {
                    return Poll::Ready(Woke::Alarm);
                }
                Poll::Pending
            })
            .await;
            let item = match woke {
                Woke::Item(item) => item,
                Woke::Cancelled => {
                    end.error = Some(cancelled());
                    return end;
                }
                Woke::Alarm => {
                    let due = watch_from + limit;
                    if Instant::now() < due {
                        deadline.as_mut().reset(due);
                        alarm.mark();
                        continue;
                    }
                    if end.finish.is_none() || !calls_done(&held, &end.finish) {
                        end.error = Some(stalled(waiting_for, limit));
                        return end;
                    }
                    // A silence after the finish reason (see below).
                    Some(Err(stalled(waiting_for, limit)))
                }
            };
            let delta = match item {
                None => None,
                Some(Ok(d)) => Some(d),
                // The finish reason came and the terminator did not (the connection was cut,
                // the body ended, it fell silent, a last chunk was garbled): the answer is
                // whole, and it ends here as it would have. Failing over would have another
                // provider "continue" a finished answer, which writes more text, billed again.
                Some(Err(e)) if end.finish.is_some() && calls_done(&held, &end.finish) => {
                    end.broke_after_finish = true;
                    tracing::debug!(
                        provider = %p.cfg.name,
                        error = %e.message,
                        "the stream broke after its finish reason; the answer is whole"
                    );
                    None
                }
                Some(Err(e)) => {
                    end.error = Some(e);
                    return end;
                }
            };
            if delta.as_ref().is_some_and(Delta::is_progress) {
                let now = Instant::now();
                match last_progress {
                    None => {
                        end.ttft = Some(now - t0);
                        let mut book = self.health();
                        book.record_ttft(i, now - t0, now);
                        if lease.probe && book.probe_answered(i, now) {
                            // Requests waiting for the probe's verdict have it now.
                            book.dispatch(&self.book, now);
                            drop(book);
                            self.changed.notify_one();
                        }
                    }
                    // A pause in a tool call (or before a call that came whole) is not the
                    // pace of the provider's tokens: left out of the mean gap, it would
                    // stretch the limit for the next text.
                    Some(before)
                        if (in_call && limit > gap_limit)
                            || (whole_calls
                                && matches!(delta, Some(Delta::ToolCallStart { .. }))) =>
                    {
                        tool_pauses += now - before
                    }
                    Some(_) => gaps += 1,
                }
                last_progress = Some(now);
                match delta {
                    Some(Delta::ToolCallArgs { index, .. }) if learning => {
                        let again = args_of.replace(index) == Some(index);
                        if again {
                            self.health().learn_streams_calls(i, upstream.model);
                            learning = false;
                        }
                    }
                    Some(Delta::ToolCallStart { .. }) => args_of = None,
                    _ => {}
                }
                // A tool call's arguments may pause far longer than text does (see
                // `tool_stall_timeout`); the limit is back to the gap's at the next text.
                (waiting_for, limit, in_call) = match delta {
                    Some(Delta::ToolCallStart { .. } | Delta::ToolCallArgs { .. }) => {
                        ("silent in a tool call", gap_limit.max(tool_limit), true)
                    }
                    // A server tool (a web search, a fetch, code running at Anthropic) works
                    // in silence between its call and its result, pings aside; after the
                    // result, the text's pace is expected again.
                    Some(Delta::ServerBlock(ref json)) if is_server_call(json) => (
                        "silent while a server tool ran",
                        gap_limit.max(tool_limit),
                        true,
                    ),
                    _ => ("silent", quiet_limit, false),
                };
                watch_from = now;
                // The timer fires early and is re-armed when the limit grew (above); when it
                // shrank (the first token, the end of a tool call) it must be moved sooner.
                if now + limit < deadline.deadline() {
                    deadline.as_mut().reset(now + limit);
                    alarm.mark();
                }
            }
            // Text held at the seam goes out before anything that is not more text. Reasoning
            // before any text (a reasoning model as the fallback thinks first) leaves the seam
            // armed: the text after it may still repeat the tail it was shown.
            let flush = match &delta {
                Some(
                    Delta::Text(_)
                    | Delta::RateLimits(_)
                    | Delta::Model(_)
                    | Delta::KeepAlive
                    | Delta::Usage(_),
                ) => false,
                Some(
                    Delta::Thinking(_) | Delta::ThinkingSignature(_) | Delta::RedactedThinking(_),
                ) => seam.holds(),
                _ => true,
            };
            if flush {
                let rest = seam.flush();
                if !rest.is_empty() {
                    events.push(StreamEvent::TextDelta { text: rest.into() });
                }
            }
            // More of a refusal held back is held with it.
            let more_refusal = matches!(delta, Some(Delta::Refusal(_)))
                && matches!(held.last(), Some(StreamEvent::RefusalDelta { .. }));
            if !held.is_empty()
                && !more_refusal
                && matches!(
                    delta,
                    None | Some(
                        Delta::Text(_)
                            | Delta::Thinking(_)
                            | Delta::RedactedThinking(_)
                            | Delta::Refusal(_)
                            | Delta::ServerBlock(_)
                    )
                )
            {
                // Another block began, or the answer is complete: the calls are whole. Unless
                // the provider stopped at the request's `max_tokens` inside one: that is the
                // answer as the client asked for it (a direct call gives it so, and agents ask
                // again with more room), which no other provider would answer otherwise. Taken
                // for a broken call, it was asked of every provider five times, each spending
                // the whole `max_tokens`, opened their breakers, and failed with a 502.
                let cut_at_limit = delta.is_none() && end.finish == Some(FinishReason::MaxTokens);
                if let Some(name) = broken_call(&held).filter(|_| !cut_at_limit || clamped) {
                    if cut_at_limit {
                        // Cut at the model's limit, below the client's: one with more room
                        // makes it whole; no fault of this provider's.
                        end.error = Some(ProviderError::new(
                            ErrorKind::ContextLength,
                            format!(
                                "{}: its call to `{name}` needs more output than the model's \
                                 limit of {} tokens",
                                p.cfg.name,
                                p.cfg.output_limit()
                            ),
                        ));
                        return end;
                    }
                    // Not shown yet: made again, here or elsewhere. Shown, an agent got
                    // `{}` or a string for its tool's input (weak local models write such).
                    end.error = Some(ProviderError::new(
                        ErrorKind::Malformed,
                        format!(
                            "{}: the arguments of its call to `{name}` are not a JSON object",
                            p.cfg.name
                        ),
                    ));
                    return end;
                }
                partial.tool_started = true;
                partial.call_shown |= held
                    .iter()
                    .any(|e| matches!(e, StreamEvent::ToolCallStart { .. }));
                events.append(&mut held);
            }
            let Some(delta) = delta else {
                // The stream ended cleanly.
                if !self
                    .relay(&mut events, &sink, partial, &mut end, &mut watch_from)
                    .await
                {
                    return end;
                }
                break;
            };
            answer_bytes += delta.answer_bytes();
            if answer_bytes > cap {
                // A provider that ignores `max_tokens` (a local server looping on a phrase)
                // streams for ever, each token progress for the watchdog, and the answer kept
                // for a continuation (or a tool call held until whole, or a non-streamed
                // response) grew without bound: 1.2 GB in 25 s in a chaos run.
                let calling = !held.is_empty()
                    || matches!(
                        delta,
                        Delta::ToolCallStart { .. }
                            | Delta::ToolCallArgs { .. }
                            | Delta::Refusal(_)
                    );
                let mib = cap >> 20;
                if calling {
                    // Not shown yet: made again elsewhere.
                    end.error = Some(ProviderError::new(
                        ErrorKind::Malformed,
                        format!(
                            "{}: a tool call past {mib} MiB of answer (the provider ignores \
                             max_tokens)",
                            p.cfg.name
                        ),
                    ));
                    return end;
                }
                // What was shown stays; the answer ends as a provider's does at `max_tokens`.
                tracing::warn!(
                    provider = %p.cfg.name,
                    "answer cut at {mib} MiB: the provider ignores max_tokens"
                );
                let rest = seam.flush();
                if !rest.is_empty() {
                    events.push(StreamEvent::TextDelta { text: rest.into() });
                }
                end.finish = Some(FinishReason::MaxTokens);
                if !self
                    .relay(&mut events, &sink, partial, &mut end, &mut watch_from)
                    .await
                {
                    return end;
                }
                break;
            }
            match delta {
                Delta::RateLimits(limits) => lease.observe(&limits, true),
                Delta::Model(m) => end.model = m,
                Delta::Text(mut t) => {
                    if !skip_ws.is_empty() {
                        let common = t
                            .chars()
                            .zip(skip_ws.chars())
                            .take_while(|(a, b)| a == b)
                            .map(|(a, _)| a.len_utf8())
                            .sum::<usize>();
                        t.replace_range(..common, "");
                        skip_ws.drain(..common);
                        if !t.is_empty() {
                            // The provider did not repeat the whitespace; stop looking.
                            skip_ws.clear();
                        }
                    }
                    let t = if t.is_empty() { t } else { seam.push(t) };
                    if !t.is_empty() {
                        events.push(StreamEvent::TextDelta { text: t });
                    }
                }
                Delta::Thinking(t) => events.push(StreamEvent::ThinkingDelta { text: t }),
                // Another model would not continue a refusal in its words, nor should the client
                // get an answer glued to one: a refusal cut short restarts. So it is held back
                // until it is whole, as a tool call is: shown, it could not be taken back
                // from an HTTP client, whose request then failed where another provider would
                // have answered.
                Delta::Refusal(text) => held.push(StreamEvent::RefusalDelta { text }),
                Delta::Citation(json) => events.push(StreamEvent::Citation { json }),
                // Kept in `Partial` as it is sent: Anthropic can continue an answer cut after
                // one (see `continues_server_blocks`).
                Delta::ServerBlock(json) => events.push(StreamEvent::ServerBlock { json }),
                Delta::ThinkingSignature(signature) => {
                    events.push(StreamEvent::ThinkingSignature { signature })
                }
                Delta::RedactedThinking(data) => {
                    events.push(StreamEvent::RedactedThinking { data })
                }
                Delta::ToolCallStart {
                    index,
                    mut id,
                    name,
                } => {
                    if id.is_empty() {
                        // A server that names the call but gives no id: the client must have
                        // one to send the result back (Claude Code refuses a turn without).
                        id = format!("call_mythos_{}_{index}", tag.1);
                    }
                    held.push(StreamEvent::ToolCallStart { index, id, name });
                }
                Delta::ToolCallArgs { index, json } => {
                    held.push(StreamEvent::ToolCallDelta { index, json })
                }
                Delta::Usage(u) => {
                    end.usage = u;
                    // The whole prompt as the provider counted it, for its quota's estimates,
                    // at its first report (Anthropic and Gemini count it as the answer starts,
                    // OpenAI at its end). A continuation's prompt, with the answer so far, is
                    // not the one estimated.
                    let counted =
                        u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens;
                    if !prompt_counted && counted > 0 && end.text_from == 0 {
                        prompt_counted = true;
                        lease.learn_input(input_tokens, counted);
                    }
                    events.push(StreamEvent::Usage(u));
                }
                Delta::Finish(r) => {
                    end.finish = Some(r);
                    // Only the terminator is left to come: a tool call's allowance is over.
                    let now = Instant::now();
                    (waiting_for, limit, watch_from, in_call) =
                        ("silent after its finish", gap_limit, now, false);
                    if now + limit < deadline.deadline() {
                        deadline.as_mut().reset(now + limit);
                        alarm.mark();
                    }
                }
                Delta::KeepAlive => {}
            }
            // Usually everything fits in the client's channel: no future to build and poll.
            match relay_ready(&mut events, &sink, partial, &mut end) {
                Relayed::All => {}
                Relayed::Gone => return end,
                Relayed::Full => {
                    if !self
                        .relay(&mut events, &sink, partial, &mut end, &mut watch_from)
                        .await
                    {
                        return end;
                    }
                }
            }
        }
        if let (Some(ttft), Some(last)) = (end.ttft, last_progress) {
            if gaps > 0 {
                end.mean_gap = Some((last - (t0 + ttft)).saturating_sub(tool_pauses) / gaps);
            }
        }
        end
    }

    /// Send `events` to the client (draining it), keeping the partial answer and the
    /// attempt's record in step. False when the client is gone (`end.error` says so).
    async fn relay(
        &self,
        events: &mut Vec<StreamEvent>,
        to: &Sink<'_>,
        partial: &mut Partial,
        end: &mut AttemptEnd,
        watch_from: &mut Instant,
    ) -> bool {
        for event in events.drain(..) {
            let progress = note_sent(&event, partial, end);
            // Room in the channel (the usual case): no waiting, no clock reading.
            let event = match to.out.try_send(event) {
                Ok(true) => continue,
                Ok(false) => {
                    end.error = Some(client_gone(to.out));
                    return false;
                }
                Err(event) => event,
            };
            let sent_at = Instant::now();
            // A client that stopped reading must still be able to cancel.
            let sent = tokio::select! {
                biased;
                sent = to.out.send(event) => sent,
                _ = to.cancel.cancelled() => false,
            };
            if !sent {
                end.error = Some(client_gone(to.out));
                return false;
            }
            // A client that reads slowly holds us in `send` (backpressure) while the provider
            // waits on TCP: that time is not the provider's silence.
            if progress && sent_at.elapsed() > Duration::from_millis(1) {
                *watch_from = Instant::now();
            }
        }
        true
    }
}

/// Why an attempt ends when its client cancels or goes away.
pub(super) fn cancelled_by_client() -> ProviderError {
    ProviderError::new(ErrorKind::Cancelled, "cancelled by the client")
}

/// Why an attempt ends when its client cancels or goes away: stopped reading, when its
/// transport gave up on it for that.
fn client_gone(out: &Emitter) -> ProviderError {
    if out.stuck() {
        stopped_reading()
    } else {
        cancelled_by_client()
    }
}

/// Why an attempt ends when its client stopped reading (see [`super::CLIENT_READ_TIMEOUT`]).
pub(super) fn stopped_reading() -> ProviderError {
    ProviderError::new(
        ErrorKind::Cancelled,
        format!(
            "the client read nothing for {} s: its request was given up",
            super::CLIENT_READ_TIMEOUT.as_secs()
        ),
    )
}

/// What the relay loop's wait for the next chunk ended with.
enum Woke<T> {
    /// The upstream stream's next item (`None`: it ended).
    Item(Option<T>),
    /// The client cancelled.
    Cancelled,
    /// The watchdog's timer fired (it may have been moved on since).
    Alarm,
}

/// How far [`relay_ready`] got.
enum Relayed {
    /// Every event is in the client's channel.
    All,
    /// The client is gone (`end.error` says so).
    Gone,
    /// The channel is full: the events left wait in [`Router::relay`].
    Full,
}

/// Keep the partial answer and the attempt's record in step with an event sent to the client;
/// whether the event is output.
fn note_sent(event: &StreamEvent, partial: &mut Partial, end: &mut AttemptEnd) -> bool {
    let progress = event.is_output();
    match event {
        StreamEvent::TextDelta { text } => partial.text.push_str(text),
        StreamEvent::ServerBlock { json } => partial.server_blocks.push(PrefillBlock {
            at: partial.text.len(),
            json: json.clone(),
        }),
        _ => {}
    }
    if progress {
        partial.emitted = true;
        end.progressed = true;
    }
    progress
}

/// Send `events` while the client's channel has room, without waiting: from the first event
/// that does not fit, they stay in `events` for [`Router::relay`].
fn relay_ready(
    events: &mut Vec<StreamEvent>,
    to: &Sink<'_>,
    partial: &mut Partial,
    end: &mut AttemptEnd,
) -> Relayed {
    let mut drain = events.drain(..);
    while let Some(event) = drain.next() {
        let mark = (partial.text.len(), partial.server_blocks.len());
        note_sent(&event, partial, end);
        match to.out.try_send(event) {
            Ok(true) => {}
            Ok(false) => {
                end.error = Some(client_gone(to.out));
                return Relayed::Gone;
            }
            Err(back) => {
                // `relay` sends it, and keeps the books for it then.
                partial.text.truncate(mark.0);
                partial.server_blocks.truncate(mark.1);
                let rest: Vec<StreamEvent> = std::iter::once(back).chain(drain).collect();
                *events = rest;
                return Relayed::Full;
            }
        }
    }
    Relayed::All
}

/// A server tool block's type, ids and tool name, read without the rest of it.
#[derive(serde::Deserialize)]
struct ServerKind<'a> {
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_use_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<std::borrow::Cow<'a, str>>,
}

/// The model may answer with a tool call: tools are offered and not forbidden.
fn offers_tools(chat: &ChatRequest) -> bool {
    !chat.tools.is_empty() && !matches!(chat.options.tool_choice, Some(ToolChoice::None))
}

/// Whether a server tool's block is its call (`server_tool_use`, `mcp_tool_use`), after which
/// the tool runs, rather than its result.
fn is_server_call(block: &str) -> bool {
    serde_json::from_str::<ServerKind<'_>>(block).is_ok_and(|k| k.ty.ends_with("_tool_use"))
}

/// The web searches among these blocks (`server_tool_use` calls of `web_search`): what a
/// stream cut before its usage came was billed for.
pub(super) fn web_searches_in(blocks: &[PrefillBlock]) -> u64 {
    blocks
        .iter()
        .filter_map(|b| serde_json::from_str::<ServerKind<'_>>(&b.json).ok())
        .filter(|c| c.ty == "server_tool_use" && c.name.as_deref() == Some("web_search"))
        .count() as u64
}

/// Whether an answer that holds these server tool blocks can be continued: every call has its
/// result. A call cut while its tool ran cannot be sent back alone (the API wants its result
/// beside it), and the client already has the call, so such an answer restarts.
pub(super) fn server_calls_answered(blocks: &[PrefillBlock]) -> bool {
    let kinds: Vec<Option<ServerKind<'_>>> = blocks
        .iter()
        .map(|b| serde_json::from_str(&b.json).ok())
        .collect();
    kinds.iter().enumerate().all(|(n, k)| match k {
        None => false,
        Some(k) if k.ty.ends_with("_tool_use") => kinds[n + 1..].iter().flatten().any(|r| {
            r.tool_use_id.is_some() && r.tool_use_id == k.id && !r.ty.ends_with("_tool_use")
        }),
        Some(_) => true,
    })
}

/// Whether the tool calls held back are whole: each one's arguments, put together, are JSON (or
/// none came). A stream that breaks after its finish reason is a whole answer only then; a
/// server that sent a finish too early must not have a cut-off call run.
fn calls_whole(held: &[StreamEvent]) -> bool {
    let mut args: Vec<(u32, String)> = Vec::new();
    for ev in held {
        if let StreamEvent::ToolCallDelta { index, json } = ev {
            match args.iter_mut().find(|(i, _)| i == index) {
                Some((_, s)) => s.push_str(json),
                None => args.push((*index, json.clone())),
            }
        }
    }
    args.iter().all(|(_, s)| {
        s.trim().is_empty() || serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
    })
}
