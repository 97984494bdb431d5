//! Engine tests over scripted transports and tokio's paused clock: every cooldown, backoff and
//! watchdog below runs in microseconds of real time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use mythos_protocol::{
    BreakerState, ChatRequest, ErrorKind, FinishReason, Pin, RerouteMode, Response, StreamEvent,
    TaskKind, ToolSpec, Usage,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::{Api, ProviderConfig, RoutingConfig, Secret};
use crate::provider::ratelimit::{Announced, QuotaKind, RateLimits};
use crate::provider::{Delta, DeltaStream, OpenFuture, ProviderError, Transport, UpstreamRequest};

/// One scripted answer.
#[derive(Clone)]
enum Step {
    /// The open fails (HTTP error or connect failure).
    Fail(ProviderError),
    /// A stream of (delay before, item). Ends cleanly after the last item unless it is an Err.
    Stream(Vec<(u64, Result<Delta, ProviderError>)>),
    /// Open succeeds, then nothing ever comes.
    Hang,
}

#[derive(Default)]
struct Script {
    steps: Mutex<VecDeque<Step>>,
    calls: AtomicUsize,
    prefills: Mutex<Vec<Option<String>>>,
    prefill_blocks: Mutex<Vec<Vec<crate::provider::PrefillBlock>>>,
    max_tokens: Mutex<Vec<u32>>,
    in_words: Mutex<Vec<bool>>,
    dropped: Arc<AtomicUsize>,
}

struct DropFlag(Arc<AtomicUsize>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn text(s: &str) -> (u64, Result<Delta, ProviderError>) {
    (10, Ok(Delta::Text(s.into())))
}

fn answer(words: &[&str]) -> Step {
    let mut v: Vec<_> = words.iter().map(|w| text(w)).collect();
    v.push((
        0,
        Ok(Delta::Usage(Usage {
            input_tokens: 10,
            output_tokens: words.len() as u64,
            ..Usage::default()
        })),
    ));
    v.push((0, Ok(Delta::Finish(FinishReason::Stop))));
    Step::Stream(v)
}

fn err(kind: ErrorKind, retry_after: Option<u64>) -> ProviderError {
    ProviderError {
        kind,
        status: Some(match kind {
            ErrorKind::RateLimited => 429,
            ErrorKind::Overloaded => 529,
            ErrorKind::BadRequest => 400,
            ErrorKind::Auth => 401,
            ErrorKind::Billing => 402,
            ErrorKind::NotFound => 404,
            ErrorKind::ContextLength => 413,
            _ => 500,
        }),
        retry_after: retry_after.map(Duration::from_secs),
        message: format!("scripted {}", kind.as_str()),
        limits: None,
        unreached: false,
    }
}

/// What a provider's headers say: `remaining` of `limit` requests, whole again in `reset_ms`.
fn quota(limit: u64, remaining: u64, reset_ms: u64) -> RateLimits {
    let mut r = RateLimits::default();
    r.quotas[QuotaKind::Requests.index()] = Some(Announced {
        limit: Some(limit),
        remaining: Some(remaining),
        reset_in: Some(Duration::from_millis(reset_ms)),
    });
    r
}

/// An answer whose response headers announce `limits`.
fn answer_with(limits: RateLimits, words: &[&str]) -> Step {
    let Step::Stream(mut items) = answer(words) else {
        unreachable!()
    };
    items.insert(0, (0, Ok(Delta::RateLimits(Box::new(limits)))));
    Step::Stream(items)
}

fn connect_refused() -> ProviderError {
    ProviderError::unreached(ErrorKind::Network, "cannot connect (refused)")
}

impl Script {
    fn push(&self, steps: impl IntoIterator<Item = Step>) {
        self.steps.lock().unwrap().extend(steps);
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Transport for Script {
    fn open(&self, req: &UpstreamRequest<'_>) -> OpenFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.prefills
            .lock()
            .unwrap()
            .push(req.prefill.map(str::to_string));
        self.prefill_blocks
            .lock()
            .unwrap()
            .push(req.prefill_blocks.to_vec());
        if req.prefill.is_some() {
            self.max_tokens.lock().unwrap().push(req.max_tokens);
        }
        self.in_words.lock().unwrap().push(req.format_in_words);
        let step = self
            .steps
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| answer(&["ok"]));
        let flag = DropFlag(self.dropped.clone());
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            match step {
                Step::Fail(e) => Err(e),
                Step::Hang => {
                    let s = futures_util::stream::pending::<Result<Delta, ProviderError>>().map(
                        move |x| {
                            let _ = &flag;
                            x
                        },
                    );
                    Ok(Box::pin(s) as DeltaStream)
                }
                Step::Stream(items) => {
                    let s = futures_util::stream::unfold(
                        (items.into_iter(), flag),
                        |(mut it, flag)| async move {
                            let (delay, item) = it.next()?;
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                            Some((item, (it, flag)))
                        },
                    );
                    Ok(Box::pin(s) as DeltaStream)
                }
            }
        })
    }
}

struct Harness {
    router: Arc<Router>,
    scripts: Vec<Arc<Script>>,
}

fn harness(n: usize, routing: RoutingConfig) -> Harness {
    harness_with(n, routing, |_, _| {})
}

/// A harness whose provider configs `tune` may change.
fn harness_with(
    n: usize,
    routing: RoutingConfig,
    tune: impl Fn(usize, &mut ProviderConfig),
) -> Harness {
    let names = ["alpha", "beta", "gamma"];
    let scripts: Vec<Arc<Script>> = (0..n).map(|_| Arc::new(Script::default())).collect();
    let providers = scripts
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let api = if i == 0 { Api::Anthropic } else { Api::Openai };
            let mut cfg = ProviderConfig {
                api_key: Some(Secret::new("k")),
                priority: i as u32,
                price_input_per_mtok: 1.0,
                price_output_per_mtok: 1.0,
                ..ProviderConfig::new(
                    names[i],
                    api,
                    "http://127.0.0.1:1",
                    format!("{}-model", names[i]),
                )
            };
            tune(i, &mut cfg);
            RoutedProvider {
                cfg,
                transport: s.clone() as Arc<dyn Transport>,
            }
        })
        .collect();
    Harness {
        router: Arc::new(Router::new(providers, routing, None, 1)),
        scripts,
    }
}

fn no_jitter() -> RoutingConfig {
    RoutingConfig {
        retry_jitter: 0.0,
        ..RoutingConfig::default()
    }
}

/// Run one request to the end; return its events.
async fn ask(router: &Arc<Router>, req: ChatRequest) -> Vec<StreamEvent> {
    let (tx, mut rx) = mpsc::channel(4096);
    router
        .route(req, Emitter::new(1, tx), CancellationToken::new())
        .await;
    let mut out = Vec::new();
    while let Ok(Response::Event { event, .. }) = rx.try_recv() {
        out.push(event);
    }
    out
}

fn final_text(events: &[StreamEvent]) -> String {
    let mut s = String::new();
    for e in events {
        match e {
            StreamEvent::TextDelta { text } => s.push_str(text),
            StreamEvent::Rerouted {
                mode: RerouteMode::Restart,
                ..
            } => s.clear(),
            _ => {}
        }
    }
    s
}

fn done_provider(events: &[StreamEvent]) -> Option<&str> {
    events.iter().find_map(|e| match e {
        StreamEvent::Done(d) => Some(d.provider.as_str()),
        _ => None,
    })
}

fn error_kind(events: &[StreamEvent]) -> Option<ErrorKind> {
    events.iter().find_map(|e| match e {
        StreamEvent::Error { kind, .. } => Some(*kind),
        _ => None,
    })
}

fn req(text: &str) -> ChatRequest {
    ChatRequest::user_text(1, text)
}

#[tokio::test(start_paused = true)]
async fn healthy_primary_answers() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([answer(&["Hello", " world"])]);
    let ev = ask(&h.router, req("hi")).await;
    assert_eq!(final_text(&ev), "Hello world");
    assert_eq!(done_provider(&ev), Some("alpha"));
    assert!(matches!(ev[0], StreamEvent::Started { attempt: 1, .. }));
    assert_eq!(h.scripts[1].calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn transient_blip_is_absorbed_by_one_retry() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([
        Step::Fail(err(ErrorKind::ServerError, None)),
        answer(&["fine"]),
    ]);
    let ev = ask(&h.router, req("hi")).await;
    assert_eq!(done_provider(&ev), Some("alpha"));
    assert_eq!(h.scripts[1].calls(), 0);
    assert!(!ev.iter().any(|e| matches!(e, StreamEvent::Rerouted { .. })));
    assert_eq!(
        h.router.health().state_of(0, Instant::now()).0,
        BreakerState::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn stall_before_first_token_is_caught_and_rerouted() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Hang]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("hi")).await;
    let took = t0.elapsed();
    assert_eq!(done_provider(&ev), Some("beta"));
    // The watchdog fires at the 15 s default, not later; the hung stream is dropped (aborted).
    assert!(
        took >= Duration::from_secs(15) && took < Duration::from_secs(16),
        "{took:?}"
    );
    assert!(h.scripts[0].dropped.load(Ordering::SeqCst) >= 1);
    let rerouted = ev.iter().find_map(|e| match e {
        StreamEvent::Rerouted { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(rerouted.unwrap().contains("watchdog"));
}

#[tokio::test(start_paused = true)]
async fn keep_alives_are_not_progress() {
    let h = harness(2, no_jitter());
    let pings: Vec<_> = (0..100).map(|_| (1000, Ok(Delta::KeepAlive))).collect();
    h.scripts[0].push([Step::Stream(pings)]);
    let ev = ask(&h.router, req("hi")).await;
    assert_eq!(done_provider(&ev), Some("beta"));
}

#[tokio::test(start_paused = true)]
async fn long_tool_call_argument_stream_is_not_killed() {
    let h = harness(2, no_jitter());
    let mut items = vec![(
        100,
        Ok(Delta::ToolCallStart {
            index: 0,
            id: "t1".into(),
            name: "write_file".into(),
        }),
    )];
    // 40 fragments 10 s apart: 400 s in all, each gap under the 15 s stall limit.
    for n in 0..40 {
        let json = match n {
            0 => "{\"c\":\"xxxx",
            39 => "xxxx\"}",
            _ => "xxxx",
        };
        items.push((
            10_000,
            Ok(Delta::ToolCallArgs {
                index: 0,
                json: json.into(),
            }),
        ));
    }
    items.push((0, Ok(Delta::Finish(FinishReason::ToolUse))));
    h.scripts[0].push([Step::Stream(items)]);
    let ev = ask(&h.router, req("hi")).await;
    assert_eq!(done_provider(&ev), Some("alpha"));
    let args: usize = ev
        .iter()
        .filter(|e| matches!(e, StreamEvent::ToolCallDelta { .. }))
        .count();
    assert_eq!(args, 40);
    assert!(matches!(
        ev.last(),
        Some(StreamEvent::Done(d)) if d.finish == FinishReason::ToolUse
    ));
}

/// Anthropic streams a tool's input one whole key and value at a time: a file written as one
/// argument comes after a long silence with pings only. Once the provider's history has set the
/// gap limit at its floor (5 s), that call must still finish where it started, while silence
/// in a tool call beyond `tool_stall_timeout` is still a stall, and a stall in the text after
/// a tool call is caught at the text's gap limit, not the tool call's.
#[tokio::test(start_paused = true)]
async fn a_tool_input_that_comes_after_a_long_silence_is_not_killed() {
    let h = harness(2, no_jitter());
    // History: tokens 10 ms apart, so the gap limit is the floor.
    h.scripts[0].push([answer(&["one", " two", " three", " four"])]);
    assert_eq!(
        done_provider(&ask(&h.router, req("hi")).await),
        Some("alpha")
    );
    let gap_limit = h.router.health().watchdog(0, 0).1;
    assert_eq!(gap_limit, Duration::from_secs(5));
    let start = |id: &str| {
        (
            10,
            Ok(Delta::ToolCallStart {
                index: 0,
                id: id.into(),
                name: "write_file".into(),
            }),
        )
    };
    let args = |delay: u64| {
        (
            delay,
            Ok(Delta::ToolCallArgs {
                index: 0,
                json: r#"{"path":"a.rs","content":"fn main() {}"}"#.into(),
            }),
        )
    };
    let pings = |n: usize| (0..n).map(|_| (4_000, Ok(Delta::KeepAlive)));

    // 40 s of pings between the call's start and its input.
    let mut items = vec![text("Writing it."), start("t1")];
    items.extend(pings(10));
    items.extend([args(10), (0, Ok(Delta::Finish(FinishReason::ToolUse)))]);
    h.scripts[0].push([Step::Stream(items)]);
    let ev = ask(&h.router, req("write it")).await;
    assert_eq!(done_provider(&ev), Some("alpha"));
    assert!(
        !ev.iter().any(|e| matches!(e, StreamEvent::Rerouted { .. })),
        "{ev:?}"
    );

    // Pings and nothing else in a tool call: a stall at the tool call's limit.
    let mut items = vec![text("Writing it."), start("t2")];
    items.extend(pings(1_000));
    h.scripts[0].push([Step::Stream(items)]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("write it")).await;
    let took = t0.elapsed();
    let tool_limit = RoutingConfig::default().tool_stall_timeout;
    assert!(
        took >= tool_limit && took < tool_limit + Duration::from_secs(2),
        "{took:?} {ev:?}"
    );
    assert_eq!(done_provider(&ev), Some("beta"));

    // Text after the call, then silence: caught at the text's limit.
    // (The call was shown: the answer ends at it, see
    // `an_answer_that_breaks_after_a_whole_tool_call_ends_at_it`.)
    let mut items = vec![start("t3"), args(10), text("Done.")];
    items.extend(pings(1_000));
    h.scripts[0].push([Step::Stream(items)]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("write it")).await;
    let took = t0.elapsed();
    assert!(
        took >= gap_limit && took < gap_limit + Duration::from_secs(2),
        "{took:?}"
    );
    assert!(
        matches!(ev.last(), Some(StreamEvent::Done(d)) if d.finish == FinishReason::ToolUse),
        "{ev:?}"
    );
}

/// A local server (Ollama, vLLM's tool parsers, LM Studio) or Gemini sends a tool call whole
/// once it is written: the model writes a file in silence, for as long as the file takes. Such
/// a call must finish where it started, on every provider not yet seen to stream its calls'
/// arguments (it was cut at the gap limit on every attempt, and a sole local provider could
/// never write a file); once a model has streamed a call a piece at a time, a silence after
/// its text is a stall again at the text's limit, and that is remembered across a restart.
#[tokio::test(start_paused = true)]
async fn a_tool_call_sent_whole_after_a_long_silence_is_waited_for() {
    // History: tokens 10 ms apart, so the gap limit is the floor. A harness each time: a
    // slow answer ranks the provider below the other.
    let warm = || async {
        let h = harness(2, no_jitter());
        h.scripts[0].push([answer(&["one", " two", " three", " four"])]);
        assert_eq!(
            done_provider(&ask(&h.router, req("hi")).await),
            Some("alpha")
        );
        h
    };
    let h = warm().await;
    let gap_limit = h.router.health().watchdog(0, 0).1;
    assert_eq!(gap_limit, Duration::from_secs(5));
    let tool_limit = RoutingConfig::default().tool_stall_timeout;
    let mut with_tools = req("write a.rs");
    with_tools.tools.push(ToolSpec {
        name: "write_file".into(),
        description: String::new(),
        input_schema_json: r#"{"type":"object"}"#.into(),
    });
    let start = |delay: u64, id: &str| {
        (
            delay,
            Ok(Delta::ToolCallStart {
                index: 0,
                id: id.into(),
                name: "write_file".into(),
            }),
        )
    };
    let args = |json: &str| {
        (
            0,
            Ok(Delta::ToolCallArgs {
                index: 0,
                json: json.into(),
            }),
        )
    };
    let whole = r#"{"path":"a.rs","content":"fn main() {}"}"#;
    let silence =
        |items: &mut Vec<_>| items.extend((0..1_000).map(|_| (4_000, Ok(Delta::KeepAlive))));

    // After its text, and as the whole answer: 40 s of silence, then the call, whole.
    for first in [Some("I'll write it."), None] {
        let mut items: Vec<_> = first.map(text).into_iter().collect();
        items.extend([start(40_000, "t1"), args(whole)]);
        items.push((0, Ok(Delta::Finish(FinishReason::ToolUse))));
        h.scripts[0].push([Step::Stream(items)]);
        let ev = ask(&h.router, with_tools.clone()).await;
        assert_eq!(done_provider(&ev), Some("alpha"), "{first:?}: {ev:?}");
        assert!(
            !ev.iter().any(|e| matches!(e, StreamEvent::Rerouted { .. })),
            "{first:?}: {ev:?}"
        );
    }
    // The silence was not the text's pace: the gap limit is still the floor.
    assert_eq!(h.router.health().watchdog(0, 0).1, gap_limit);
    // Silence beyond a tool call's allowance is still a stall.
    let h = warm().await;
    let mut items = vec![text("I'll write it.")];
    silence(&mut items);
    h.scripts[0].push([Step::Stream(items.clone())]);
    let t0 = Instant::now();
    let ev = ask(&h.router, with_tools.clone()).await;
    let took = t0.elapsed();
    assert!(
        took >= tool_limit && took < tool_limit + Duration::from_secs(2),
        "{took:?} {ev:?}"
    );
    assert_eq!(done_provider(&ev), Some("beta"));
    // Without tools offered, no call can be on its way: the text's limit.
    let h = warm().await;
    h.scripts[0].push([Step::Stream(items.clone())]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("hi")).await;
    let took = t0.elapsed();
    assert!(ev.iter().any(|e| matches!(e, StreamEvent::Rerouted { .. })));
    assert!(
        took >= gap_limit && took < gap_limit + Duration::from_secs(2),
        "{took:?}"
    );

    // The model streams a call's arguments a piece at a time: from then on, the text's limit.
    let h = warm().await;
    h.scripts[0].push([Step::Stream(vec![
        text("Writing."),
        start(10, "t2"),
        args(r#"{"path":"#),
        args(r#""a.rs"}"#),
        (0, Ok(Delta::Finish(FinishReason::ToolUse))),
    ])]);
    assert_eq!(
        done_provider(&ask(&h.router, with_tools.clone()).await),
        Some("alpha")
    );
    assert!(h.router.health().streams_calls(0, "alpha-model"));
    h.scripts[0].push([Step::Stream(items.clone())]);
    let t0 = Instant::now();
    let ev = ask(&h.router, with_tools.clone()).await;
    let took = t0.elapsed();
    assert!(ev.iter().any(|e| matches!(e, StreamEvent::Rerouted { .. })));
    assert!(
        took >= gap_limit && took < gap_limit + Duration::from_secs(2),
        "{took:?}"
    );

    // Remembered across a restart, for that model only.
    let saved = h.router.health().save(Instant::now(), 1_000_000);
    let h2 = harness(2, no_jitter());
    h2.router
        .health()
        .restore(&saved, Instant::now(), 1_000_000);
    assert!(h2.router.health().streams_calls(0, "alpha-model"));
    assert!(!h2.router.health().streams_calls(0, "another-model"));
    assert!(!h2.router.health().streams_calls(1, "beta-model"));
}

/// An answer that breaks after a whole tool call was shown (in the text or thinking after it,
/// or inside a later call, never shown) ends at that call, on the provider that wrote it: the
/// agent runs the call and the model goes on from its result. It cannot be continued (no
/// provider takes a call without its result) nor started over (the client has the call):
/// every such break failed the agent's turn while another provider was healthy. The provider
/// is still blamed. A break after only a refusal, or before any call, is not such an end.
#[tokio::test(start_paused = true)]
async fn an_answer_that_breaks_after_a_whole_tool_call_ends_at_it() {
    let call = |index: u32, id: &str| {
        [
            (
                10,
                Ok(Delta::ToolCallStart {
                    index,
                    id: id.into(),
                    name: "read".into(),
                }),
            ),
            (
                10,
                Ok(Delta::ToolCallArgs {
                    index,
                    json: r#"{"path":"a.rs"}"#.into(),
                }),
            ),
        ]
    };
    let cut = || {
        (
            10,
            Err(ProviderError::new(
                ErrorKind::Network,
                "connection lost mid-stream",
            )),
        )
    };
    let stall = || (1_000_000, Ok(Delta::KeepAlive));
    let garbled = || {
        (
            10,
            Err(ProviderError::malformed("expected value at line 1")),
        )
    };
    for (what, after) in [
        ("cut in the text after it", vec![text("Now the"), cut()]),
        (
            "stalled in the thinking after it",
            vec![(10, Ok(Delta::Thinking("Next I".into()))), stall()],
        ),
        ("cut inside a later call after text", {
            let [start, _] = call(1, "t2");
            vec![text("And"), start, cut()]
        }),
        ("garbled in the text after it", vec![text("So"), garbled()]),
    ] {
        let h = harness(2, no_jitter());
        let mut items = vec![text("Let me look.")];
        items.extend(call(0, "t1"));
        items.extend(after);
        h.scripts[0].push([Step::Stream(items)]);
        let ev = ask(&h.router, req("fix it")).await;
        assert_eq!(done_provider(&ev), Some("alpha"), "{what}: {ev:?}");
        assert!(
            matches!(ev.last(), Some(StreamEvent::Done(d)) if d.finish == FinishReason::ToolUse),
            "{what}: {ev:?}"
        );
        let starts: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ToolCallStart { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(starts, ["t1"], "{what}: only the whole call");
        assert!(
            !ev.iter().any(|e| matches!(e, StreamEvent::Rerouted { .. })),
            "{what}: {ev:?}"
        );
        assert_eq!(h.scripts[1].calls(), 0, "{what}");
        assert_eq!(h.router.health().providers[0].failures, 1, "{what}: blamed");
    }

    // A cut before the call was whole: made again elsewhere, as before.
    let h = harness(2, no_jitter());
    let [start, _] = call(0, "t1");
    h.scripts[0].push([Step::Stream(vec![text("Let me look."), start, cut()])]);
    h.scripts[1].push([answer(&["It is fine."])]);
    let ev = ask(&h.router, req("fix it")).await;
    assert_eq!(done_provider(&ev), Some("beta"), "{ev:?}");
}

/// The finish reason came and then the stream broke before its terminator (cut, garbled, or
/// silent): the answer is whole, so it ends on the provider that wrote it. Another provider
/// asked to "continue" a finished answer writes more text, and it is billed twice.
#[tokio::test(start_paused = true)]
async fn a_stream_that_breaks_after_its_finish_reason_is_a_whole_answer() {
    for (what, last) in [
        ("cut", (10, Err(connect_refused()))),
        (
            "garbled",
            (
                10,
                Err(ProviderError::malformed("expected value at line 1")),
            ),
        ),
        ("silent", (1_000_000, Ok(Delta::KeepAlive))),
    ] {
        let h = harness(2, no_jitter());
        let Step::Stream(mut items) = answer(&["All", " done", "."]) else {
            unreachable!()
        };
        items.push(last);
        h.scripts[0].push([Step::Stream(items)]);
        let ev = ask(&h.router, req("hi")).await;
        assert_eq!(done_provider(&ev), Some("alpha"), "{what}: {ev:?}");
        assert_eq!(final_text(&ev), "All done.", "{what}");
        assert_eq!(h.scripts[1].calls(), 0, "{what}: nobody else was asked");
        assert!(
            !ev.iter().any(|e| matches!(e, StreamEvent::Rerouted { .. })),
            "{what}: {ev:?}"
        );
    }
}

/// A server that names a tool call but gives it no id: the client still gets one, since it
/// must send the result back under it.
#[tokio::test(start_paused = true)]
async fn a_tool_call_without_an_id_gets_one() {
    let h = harness(1, no_jitter());
    h.scripts[0].push([Step::Stream(vec![
        (
            10,
            Ok(Delta::ToolCallStart {
                index: 0,
                id: String::new(),
                name: "read".into(),
            }),
        ),
        (
            10,
            Ok(Delta::ToolCallArgs {
                index: 0,
                json: "{}".into(),
            }),
        ),
        (0, Ok(Delta::Finish(FinishReason::ToolUse))),
    ])]);
    let ev = ask(&h.router, req("read it")).await;
    let ids: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallStart { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ev:?}");
    assert!(!ids[0].is_empty());
}

/// A tool call, its finish reason, then silence before the terminator: the call goes out
/// after the gap limit, not a tool call's long allowance, and the usage never reported is
/// estimated. A finish that comes while a call's arguments are cut off (a server that sends
/// one too early) is no whole answer: that call is made again elsewhere, never run cut.
#[tokio::test(start_paused = true)]
async fn a_tool_call_then_silence_after_its_finish() {
    let h = harness(2, no_jitter());
    let start = (
        10,
        Ok(Delta::ToolCallStart {
            index: 0,
            id: "t1".into(),
            name: "read".into(),
        }),
    );
    let args = |json: &str| {
        (
            10,
            Ok(Delta::ToolCallArgs {
                index: 0,
                json: json.into(),
            }),
        )
    };
    h.scripts[0].push([Step::Stream(vec![
        start.clone(),
        args(r#"{"path":"a.rs"}"#),
        (0, Ok(Delta::Finish(FinishReason::ToolUse))),
        (1_000_000, Ok(Delta::KeepAlive)),
    ])]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("read it")).await;
    let gap = RoutingConfig::default().stall_timeout;
    assert!(
        t0.elapsed() < gap + Duration::from_secs(1),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(done_provider(&ev), Some("alpha"));
    assert!(ev
        .iter()
        .any(|e| matches!(e, StreamEvent::ToolCallDelta { json, .. } if json.contains("a.rs"))));
    let Some(StreamEvent::Done(d)) = ev.last() else {
        panic!("{ev:?}")
    };
    assert!(d.usage.input_tokens > 0, "estimated: {:?}", d.usage);

    h.scripts[0].push([Step::Stream(vec![
        start,
        args(r#"{"pa"#),
        (0, Ok(Delta::Finish(FinishReason::ToolUse))),
        (10, Err(connect_refused())),
    ])]);
    let ev = ask(&h.router, req("read it")).await;
    let attempts = ev
        .iter()
        .filter(|e| matches!(e, StreamEvent::Started { .. }))
        .count();
    assert_eq!(attempts, 2, "asked again: {ev:?}");
    assert!(done_provider(&ev).is_some(), "{ev:?}");
    assert!(
        !ev.iter()
            .any(|e| matches!(e, StreamEvent::ToolCallDelta { json, .. } if json == r#"{"pa"#)),
        "the cut call was never shown: {ev:?}"
    );
}

/// The first provider says "Hello wor" and loses the connection; the second continues from
/// the prefill it is given with "ld, how are you?".
fn cut_after_hello_wor(h: &Harness) {
    h.scripts[0].push([Step::Stream(vec![
        text("Hello"),
        text(" wor"),
        (
            10,
            Err(ProviderError::new(
                ErrorKind::Network,
                "connection lost mid-stream",
            )),
        ),
    ])]);
    h.scripts[1].push([answer(&["ld", ", how are you?"])]);
}

#[tokio::test(start_paused = true)]
async fn mid_stream_disconnect_continues_without_duplicates() {
    let h = harness(2, no_jitter());
    cut_after_hello_wor(&h);
    let ev = ask(&h.router, req("greet")).await;
    assert_eq!(final_text(&ev), "Hello world, how are you?");
    assert_eq!(done_provider(&ev), Some("beta"));
    assert_eq!(
        h.scripts[1].prefills.lock().unwrap()[0].as_deref(),
        Some("Hello wor")
    );
    let modes: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Rerouted { mode, .. } => Some(*mode),
            _ => None,
        })
        .collect();
    assert_eq!(modes, [RerouteMode::Continue]);
}

/// A reasoning model as the fallback thinks before it writes, then repeats the tail it was
/// shown: the repeat is still dropped.
#[tokio::test(start_paused = true)]
async fn a_fallback_that_thinks_first_still_has_its_repeat_dropped() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Stream(vec![
        text("The quick brown fox jumps over"),
        (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
    ])]);
    h.scripts[1].push([Step::Stream(vec![
        (
            10,
            Ok(Delta::Thinking("I should continue the sentence.".into())),
        ),
        (10, Ok(Delta::ThinkingSignature("sig".into()))),
        text("fox jumps over"),
        text(" the lazy dog."),
        (0, Ok(Delta::Finish(FinishReason::Stop))),
    ])]);
    let ev = ask(&h.router, req("go")).await;
    assert_eq!(
        final_text(&ev),
        "The quick brown fox jumps over the lazy dog.",
        "{ev:?}"
    );
    assert_eq!(done_provider(&ev), Some("beta"));
}

#[tokio::test(start_paused = true)]
async fn trimmed_prefill_whitespace_is_not_duplicated() {
    // Both Anthropic: the fallback gets the prefill "Hello" (trimmed: the API refuses trailing
    // whitespace) and starts with the space it was not shown.
    let h = harness_with(2, no_jitter(), |_, c| c.api = Api::Anthropic);
    h.scripts[0].push([Step::Stream(vec![
        text("Hello "),
        (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
    ])]);
    h.scripts[1].push([answer(&[" world"])]);
    let ev = ask(&h.router, req("greet")).await;
    assert_eq!(final_text(&ev), "Hello world");
}

#[tokio::test(start_paused = true)]
async fn an_openai_continuation_keeps_its_leading_whitespace() {
    // beta speaks the OpenAI format: it saw "Hello\n" whole, so the newline it starts with is
    // meant (a blank line), not a replay.
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Stream(vec![
        text("Hello\n"),
        (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
    ])]);
    h.scripts[1].push([answer(&["\nWorld"])]);
    let ev = ask(&h.router, req("greet")).await;
    assert_eq!(final_text(&ev), "Hello\n\nWorld");
}

/// Defect 13: a continuing model that repeats the last words it saw made the user read them
/// twice ("…jumps over fox jumps over the lazy dog").
#[tokio::test(start_paused = true)]
async fn a_continuation_that_repeats_the_tail_is_shown_once() {
    for (repeat, case) in [
        (
            &[" fox", " jumps", " over", " the lazy dog."][..],
            "verbatim",
        ),
        (
            &["Fox  Jumps", " OVER", " the lazy dog."][..],
            "other case and spacing",
        ),
        (
            &["The quick brown fox jumps over the lazy dog."][..],
            "starting over",
        ),
    ] {
        let h = harness(2, no_jitter());
        h.scripts[0].push([Step::Stream(vec![
            text("The quick"),
            text(" brown fox"),
            text(" jumps over"),
            (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
        ])]);
        h.scripts[1].push([answer(repeat)]);
        let ev = ask(&h.router, req("fox")).await;
        assert_eq!(
            final_text(&ev),
            "The quick brown fox jumps over the lazy dog.",
            "{case}"
        );
    }
}

/// A provider that refuses the structured output asked with its API's field (a schema keyword
/// it lacks) is asked again at once with the schema in words, not failed: the client gets its
/// answer from the provider it would have had. A 400 for anything else gets a second opinion
/// from another provider, and goes back when that one refuses too.
#[tokio::test(start_paused = true)]
async fn a_refused_response_format_is_asked_again_in_words() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([
        Step::Fail(err(ErrorKind::BadRequest, None)),
        answer(&["{}"]),
    ]);
    let mut r = req("json");
    r.options.response_format = Some(mythos_protocol::ResponseFormat::JsonObject);
    let ev = ask(&h.router, r.clone()).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
    assert_eq!(*h.scripts[0].in_words.lock().unwrap(), [false, true]);
    assert_eq!(h.scripts[1].calls(), 0);
    // The same 400 in words, and from the second opinion: the client's error.
    // (The second opinion is asked once, as sent: a request refused in words too is not
    // asked in words again there.)
    h.scripts[0].push(vec![Step::Fail(err(ErrorKind::BadRequest, None)); 2]);
    h.scripts[1].push([Step::Fail(err(ErrorKind::BadRequest, None))]);
    let ev = ask(&h.router, r).await;
    assert_eq!(error_kind(&ev), Some(ErrorKind::BadRequest), "{ev:?}");
    assert_eq!(h.scripts[0].calls(), 4);
    assert_eq!(*h.scripts[1].in_words.lock().unwrap(), [false]);
    // Without a format, a 400 is not retried where it came from.
    h.scripts[0].push([Step::Fail(err(ErrorKind::BadRequest, None))]);
    h.scripts[1].push([Step::Fail(err(ErrorKind::BadRequest, None))]);
    let ev = ask(&h.router, req("plain")).await;
    assert_eq!(error_kind(&ev), Some(ErrorKind::BadRequest));
    assert_eq!(h.scripts[0].calls(), 5);
    assert_eq!(h.scripts[1].calls(), 2);
}

/// Asking again in words is not a retry: a client that sends the same bad structured request
/// over and over gets its 400 every time, asked twice, and spends no retry budget (spent, it
/// would deny everyone's retries after a blip).
#[tokio::test(start_paused = true)]
async fn asking_again_in_words_takes_no_retry_budget() {
    let h = harness(1, no_jitter());
    h.scripts[0].push(vec![Step::Fail(err(ErrorKind::BadRequest, None)); 40]);
    let mut r = req("json");
    r.options.response_format = Some(mythos_protocol::ResponseFormat::JsonObject);
    for n in 0..20 {
        let ev = ask(&h.router, r.clone()).await;
        assert_eq!(
            error_kind(&ev),
            Some(ErrorKind::BadRequest),
            "request {n}: {ev:?}"
        );
    }
    assert_eq!(h.scripts[0].calls(), 40);
    assert!(h.router.health().providers[0].budget.allows(Instant::now()));
}

#[tokio::test(start_paused = true)]
async fn a_continuation_asks_only_for_what_is_left_of_the_output_limit() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Stream(vec![
        text(&"word ".repeat(400)),
        (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
    ])]);
    let mut r = req("long");
    r.max_tokens = Some(1000);
    ask(&h.router, r).await;
    // 2,000 characters shown, about 500 tokens: 500 left.
    assert_eq!(*h.scripts[1].max_tokens.lock().unwrap(), [500]);
}

/// A small output limit that the first part nearly used up: the continuation gets only a little
/// room, so the whole answer stays close to what the client allowed (it got the whole limit
/// again, nearly doubling the answer).
#[tokio::test(start_paused = true)]
async fn a_continuation_of_a_short_answer_stays_near_its_limit() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Stream(vec![
        text(&"word ".repeat(76)),
        (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
    ])]);
    let mut r = req("short");
    r.max_tokens = Some(100);
    ask(&h.router, r).await;
    // 380 characters shown, about 95 tokens: 5 left, raised to a quarter of the limit.
    assert_eq!(*h.scripts[1].max_tokens.lock().unwrap(), [25]);
}

#[tokio::test(start_paused = true)]
async fn a_broken_stream_still_counts_its_tokens() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Stream(vec![
        text("twelve chars"),
        (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
    ])]);
    let ev = ask(&h.router, req("x")).await;
    match ev.last() {
        Some(StreamEvent::Done(d)) => {
            let usage = &d.usage;
            // alpha's 3 estimated output tokens plus beta's reported usage.
            assert!(usage.output_tokens > 3, "{usage:?}");
            assert!(usage.input_tokens > 10, "{usage:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_partial_answer_of_only_thinking_restarts() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Stream(vec![
        (10, Ok(Delta::Thinking("let me think".into()))),
        (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
    ])]);
    let ev = ask(&h.router, req("x")).await;
    let modes: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Rerouted { mode, .. } => Some(*mode),
            _ => None,
        })
        .collect();
    assert_eq!(modes, [RerouteMode::Restart]);
    assert_eq!(h.scripts[1].prefills.lock().unwrap()[0], None);
}

#[tokio::test(start_paused = true)]
async fn stall_after_first_token_continues_on_fallback() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Stream(vec![
        text("Hello"),
        (60_000, Ok(Delta::Text(" late".into()))),
    ])]);
    h.scripts[1].push([answer(&[" world"])]);
    let ev = ask(&h.router, req("greet")).await;
    assert_eq!(final_text(&ev), "Hello world");
    assert_eq!(h.scripts[0].dropped.load(Ordering::SeqCst), 1);
}

/// A tool call cut in the middle was never shown (the router holds a call until it is whole):
/// the text before it continues on the next provider, which makes the call again; the client
/// sees one answer with one complete call and no restart.
#[tokio::test(start_paused = true)]
async fn half_streamed_tool_call_is_never_shown_and_is_made_again() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Stream(vec![
        text("Let me look."),
        (
            10,
            Ok(Delta::ToolCallStart {
                index: 0,
                id: "a".into(),
                name: "read".into(),
            }),
        ),
        (
            10,
            Ok(Delta::ToolCallArgs {
                index: 0,
                json: "{\"pa".into(),
            }),
        ),
        (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
    ])]);
    h.scripts[1].push([Step::Stream(vec![
        (
            10,
            Ok(Delta::ToolCallStart {
                index: 0,
                id: "b".into(),
                name: "read".into(),
            }),
        ),
        (
            10,
            Ok(Delta::ToolCallArgs {
                index: 0,
                json: "{\"path\":".into(),
            }),
        ),
        (
            10,
            Ok(Delta::ToolCallArgs {
                index: 0,
                json: "\"x\"}".into(),
            }),
        ),
        (0, Ok(Delta::Finish(FinishReason::ToolUse))),
    ])]);
    let ev = ask(&h.router, req("tool")).await;
    assert!(!ev.iter().any(|e| matches!(
        e,
        StreamEvent::Rerouted {
            mode: RerouteMode::Restart,
            ..
        }
    )));
    assert_eq!(final_text(&ev), "Let me look.");
    let calls: Vec<&StreamEvent> = ev
        .iter()
        .filter(|e| matches!(e, StreamEvent::ToolCallStart { .. }))
        .collect();
    assert_eq!(calls.len(), 1, "{ev:?}");
    assert!(matches!(calls[0], StreamEvent::ToolCallStart { id, .. } if id == "b"));
    let args: String = ev
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallDelta { json, .. } => Some(json.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(args, "{\"path\":\"x\"}");
    // The fallback continued the text before the call.
    assert_eq!(
        h.scripts[1].prefills.lock().unwrap()[0].as_deref(),
        Some("Let me look.")
    );
    assert!(matches!(
        ev.last(),
        Some(StreamEvent::Done(d)) if d.finish == FinishReason::ToolUse
    ));
}

/// A refusal cut short is never shown, and is asked again elsewhere: shown, it could not be
/// taken back from an HTTP client, whose request then failed while another provider was free
/// (9 % of refusals in a chaos run). A whole one goes out, in its pieces and in order.
#[tokio::test(start_paused = true)]
async fn a_refusal_cut_short_is_never_shown_and_is_asked_again() {
    let refusal = |s: &str| (10, Ok(Delta::Refusal(s.into())));
    let h = harness(2, no_jitter());
    // Nothing was shown, so the cut is a blip the same provider is asked again for.
    h.scripts[0].push([
        Step::Stream(vec![
            refusal("I'm sorry, "),
            refusal("but I can"),
            (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
        ]),
        Step::Stream(vec![
            refusal("I can't "),
            refusal("help with that."),
            (0, Ok(Delta::Finish(FinishReason::Stop))),
        ]),
    ]);
    let ev = ask(&h.router, req("refuse")).await;
    let refused: Vec<&str> = ev
        .iter()
        .filter_map(|e| match e {
            StreamEvent::RefusalDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(refused, ["I can't ", "help with that."], "{ev:?}");
    // Nothing had been shown: no restart to announce, nothing for a client to take back.
    assert!(!ev.iter().any(|e| matches!(
        e,
        StreamEvent::Rerouted {
            mode: RerouteMode::Restart,
            ..
        }
    )));
}

/// Text before a refusal goes out as it comes; the refusal after it is held until whole, and
/// a later cut restarts (a refusal is not continued in another model's words).
#[tokio::test(start_paused = true)]
async fn a_whole_refusal_goes_out_and_makes_the_answer_restart_if_cut_later() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Stream(vec![
        text("Well. "),
        (10, Ok(Delta::Refusal("No.".into()))),
        text(" Anyway"),
        (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
    ])]);
    h.scripts[1].push([answer(&["Fine."])]);
    let ev = ask(&h.router, req("refuse")).await;
    let order: Vec<&str> = ev
        .iter()
        .filter_map(|e| match e {
            StreamEvent::TextDelta { text } | StreamEvent::RefusalDelta { text } => {
                Some(text.as_str())
            }
            StreamEvent::Rerouted { .. } => Some("|"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["Well. ", "No.", " Anyway", "|", "Fine."], "{ev:?}");
    assert!(ev.iter().any(|e| matches!(
        e,
        StreamEvent::Rerouted {
            mode: RerouteMode::Restart,
            ..
        }
    )));
}

/// A call that is whole (text follows it) is shown at once; text after it can still be cut.
#[tokio::test(start_paused = true)]
async fn a_complete_tool_call_goes_out_before_the_next_block() {
    let h = harness(1, no_jitter());
    h.scripts[0].push([Step::Stream(vec![
        (
            10,
            Ok(Delta::ToolCallStart {
                index: 0,
                id: "a".into(),
                name: "read".into(),
            }),
        ),
        (
            10,
            Ok(Delta::ToolCallArgs {
                index: 0,
                json: "{}".into(),
            }),
        ),
        text("after"),
        (0, Ok(Delta::Finish(FinishReason::ToolUse))),
    ])]);
    let ev = ask(&h.router, req("tool")).await;
    let order: Vec<&str> = ev
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallStart { .. } => Some("start"),
            StreamEvent::ToolCallDelta { .. } => Some("args"),
            StreamEvent::TextDelta { .. } => Some("text"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["start", "args", "text"]);
}

#[tokio::test(start_paused = true)]
async fn every_provider_failing_mid_stream_is_an_error_not_a_clean_end() {
    let h = harness(2, no_jitter());
    for s in &h.scripts {
        for _ in 0..10 {
            s.push([Step::Stream(vec![
                text("a"),
                (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
            ])]);
        }
    }
    let ev = ask(&h.router, req("x")).await;
    assert!(!ev.iter().any(|e| matches!(e, StreamEvent::Done(_))));
    match ev.last() {
        Some(StreamEvent::Error { message, .. }) => assert!(message.contains("incomplete")),
        other => panic!("{other:?}"),
    }
}

/// A 400 is one provider's verdict: providers refuse what others take (a schema keyword, a
/// parameter, a message shape), so another is asked before the client hears it. A request
/// two providers refuse is the client's, and goes back without trying every provider. Neither
/// provider is blamed.
#[tokio::test(start_paused = true)]
async fn bad_request_gets_a_second_opinion_then_is_surfaced() {
    let h = harness(3, no_jitter());
    h.scripts[0].push([Step::Fail(err(ErrorKind::BadRequest, None))]);
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(done_provider(&ev), Some("beta"), "{ev:?}");
    h.scripts[0].push([Step::Fail(err(ErrorKind::BadRequest, None))]);
    h.scripts[1].push([Step::Fail(err(ErrorKind::BadRequest, None))]);
    let ev = ask(&h.router, req("y")).await;
    assert_eq!(error_kind(&ev), Some(ErrorKind::BadRequest), "{ev:?}");
    // Both providers' words reach the client.
    match ev.last() {
        Some(StreamEvent::Error { message, .. }) => {
            assert_eq!(
                message.matches("scripted bad_request").count(),
                2,
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.scripts[0].calls(), 2);
    assert_eq!(h.scripts[1].calls(), 2);
    assert_eq!(h.scripts[2].calls(), 0, "a third provider is not asked");
    let book = h.router.health();
    for p in 0..2 {
        assert_eq!(book.providers[p].failures, 0);
        assert_eq!(book.state_of(p, Instant::now()).0, BreakerState::Closed);
    }
}

#[tokio::test(start_paused = true)]
async fn auth_failure_marks_unusable_and_fails_over() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Fail(err(ErrorKind::Auth, None))]);
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(done_provider(&ev), Some("beta"));
    assert_eq!(h.scripts[0].calls(), 1, "401 is not retried");
    assert_eq!(
        h.router.health().state_of(0, Instant::now()).0,
        BreakerState::Unusable
    );
    // A request pinned to it is still sent; its answer shows the key works again, and the
    // provider is back in routing (it stayed "key rejected" while it answered).
    let mut pinned = req("pinned");
    pinned.pin = Some(Pin {
        provider: Some("alpha".into()),
        model: None,
    });
    let ev = ask(&h.router, pinned).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
    assert_eq!(
        h.router.health().state_of(0, Instant::now()).0,
        BreakerState::Closed
    );
    let ev = ask(&h.router, req("after")).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
}

#[tokio::test(start_paused = true)]
async fn pinned_requests_never_fall_back() {
    let h = harness(2, no_jitter());
    h.scripts[1].push([Step::Fail(err(ErrorKind::RateLimited, Some(60)))]);
    let mut r = req("x");
    r.pin = Some(Pin {
        provider: Some("beta".into()),
        model: None,
    });
    let ev = ask(&h.router, r.clone()).await;
    assert_eq!(error_kind(&ev), Some(ErrorKind::RateLimited));
    assert_eq!(h.scripts[0].calls(), 0);
    r.pin = Some(Pin {
        provider: Some("nope".into()),
        model: None,
    });
    let ev = ask(&h.router, r).await;
    assert_eq!(error_kind(&ev), Some(ErrorKind::NoProviders));
}

/// Provider names are compared without case everywhere in the config (two names differing only
/// in case are refused), so a pin typed in other capitals (`--provider Beta`) is that provider.
#[tokio::test(start_paused = true)]
async fn a_pin_in_other_capitals_names_the_same_provider() {
    let h = harness(2, no_jitter());
    let mut r = req("x");
    r.pin = Some(Pin {
        provider: Some("BETA".into()),
        model: None,
    });
    let ev = ask(&h.router, r).await;
    assert_eq!(error_kind(&ev), None, "{ev:?}");
    assert_eq!(h.scripts[0].calls(), 0);
    assert_eq!(h.scripts[1].calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn cancel_aborts_upstream_and_blames_nobody() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Hang]);
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let r = h.router.clone();
        let c = cancel.clone();
        async move { r.route(req("x"), Emitter::new(1, tx), c).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cancelled_at = tokio::time::Instant::now();
    cancel.cancel();
    task.await.unwrap();
    // At once, not when the watchdog would have fired (the paused clock jumps to it).
    assert!(cancelled_at.elapsed() < Duration::from_millis(10));
    let mut last = None;
    while let Ok(Response::Event { event, .. }) = rx.try_recv() {
        last = Some(event);
    }
    assert!(matches!(
        last,
        Some(StreamEvent::Error {
            kind: ErrorKind::Cancelled,
            ..
        })
    ));
    assert_eq!(
        h.scripts[0].dropped.load(Ordering::SeqCst),
        1,
        "upstream dropped"
    );
    assert_eq!(h.scripts[1].calls(), 0);
    assert_eq!(h.router.health().providers[0].failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_primary_is_not_starved_forever() {
    let mut cfg = no_jitter();
    cfg.probe_interval = Duration::from_secs(300);
    let h = harness(2, cfg);
    // One very slow answer makes the primary lose on score...
    h.scripts[0].push([Step::Stream(vec![(9_000, Ok(Delta::Text("slow".into())))])]);
    ask(&h.router, req("x")).await;
    for _ in 0..3 {
        assert_eq!(done_provider(&ask(&h.router, req("x")).await), Some("beta"));
    }
    // ...but while the fallback carries the traffic, the primary is probed once it has gone
    // unused for the probe interval, and a good answer brings it back.
    let mut chosen = Vec::new();
    for _ in 0..6 {
        tokio::time::advance(Duration::from_secs(60)).await;
        chosen.push(
            done_provider(&ask(&h.router, req("x")).await)
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(chosen[..4], ["beta", "beta", "beta", "beta"]);
    assert_eq!(chosen[4], "alpha", "{chosen:?}");
    // And its old slowness decays toward neutral with time (half-life 10 min).
    let now = Instant::now();
    let s_now = h.router.health().score_of(0, TaskKind::Chat, now);
    let s_later = h
        .router
        .health()
        .score_of(0, TaskKind::Chat, now + Duration::from_secs(3600));
    assert!(s_later >= s_now);
}

#[tokio::test(start_paused = true)]
async fn two_sessions_share_one_breaker() {
    let h = harness(2, no_jitter());
    // Session A hits a 429 with a long Retry-After; session B starts right after and must not
    // touch the primary at all.
    h.scripts[0].push([Step::Fail(err(ErrorKind::RateLimited, Some(120)))]);
    h.scripts[1].push([
        Step::Stream(vec![(500, Ok(Delta::Text("a".into())))]),
        answer(&["b"]),
    ]);
    let a = tokio::spawn({
        let r = h.router.clone();
        async move { ask(&r, req("a")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b = ask(&h.router, req("b")).await;
    let a = a.await.unwrap();
    assert_eq!(done_provider(&a), Some("beta"));
    assert_eq!(done_provider(&b), Some("beta"));
    assert_eq!(h.scripts[0].calls(), 1);
}

/// Route `r` to a client whose channel holds one event and who takes `per_event` to read each;
/// its events to the end.
async fn ask_slowly(router: &Arc<Router>, r: ChatRequest, per_event: Duration) -> Vec<StreamEvent> {
    let (tx, mut rx) = mpsc::channel(1);
    let task = tokio::spawn({
        let router = router.clone();
        async move {
            router
                .route(r, Emitter::new(1, tx), CancellationToken::new())
                .await
        }
    });
    let mut events = Vec::new();
    while let Some(Response::Event { event, .. }) = rx.recv().await {
        tokio::time::sleep(per_event).await;
        let end = matches!(event, StreamEvent::Done(_) | StreamEvent::Error { .. });
        events.push(event);
        if end {
            break;
        }
    }
    task.await.unwrap();
    events
}

/// The same cut with a reader slower than the provider: every event waits for room in the
/// client's channel. The partial answer the fallback continues is still exactly what the client
/// got, once each.
#[tokio::test(start_paused = true)]
async fn a_cut_with_a_full_channel_continues_without_duplicates() {
    let h = harness(2, no_jitter());
    cut_after_hello_wor(&h);
    let ev = ask_slowly(&h.router, req("greet"), Duration::from_millis(50)).await;
    assert_eq!(final_text(&ev), "Hello world, how are you?");
    assert_eq!(
        h.scripts[1].prefills.lock().unwrap()[0].as_deref(),
        Some("Hello wor")
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_is_not_blamed_on_the_provider() {
    let h = harness(2, no_jitter());
    let words: Vec<String> = (0..50).map(|i| format!(" w{i}")).collect();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    h.scripts[0].push([answer(&refs)]);
    // Every event waits for the reader, who takes 20 s per event.
    let events = ask_slowly(&h.router, req("x"), Duration::from_secs(20)).await;
    assert_eq!(done_provider(&events), Some("alpha"), "{:?}", events.last());
    assert!(!events
        .iter()
        .any(|e| matches!(e, StreamEvent::Rerouted { .. })));
}

fn trip(h: &Harness, i: usize) -> Instant {
    h.router.health().trip(i, Instant::now())
}

/// Once open, only the probe's answer moves the breaker: faults of streams that began before
/// the trip (or of pinned requests while half-open) neither push the cooldown out nor double it.
#[tokio::test(start_paused = true)]
async fn stragglers_do_not_move_an_open_breaker() {
    let h = harness(1, no_jitter());
    let until = trip(&h, 0);
    let now = Instant::now();
    for _ in 0..10 {
        h.router
            .health()
            .record_attempt(0, true, false, now + Duration::from_secs(1));
    }
    let (state, left) = h.router.health().state_of(0, now);
    assert_eq!(state, BreakerState::Open);
    assert_eq!(now + left.unwrap(), until, "the cooldown did not move");
    // Half-open: a fault that is not the probe's leaves it half-open at the same level.
    let later = until + Duration::from_secs(1);
    tokio::time::sleep_until(later).await;
    // Half-open for real (as the router's tick makes it), not an expired open.
    h.router.health().tick(later);
    assert!(matches!(
        h.router.health().providers[0].breaker,
        super::health::Breaker::HalfOpen { .. }
    ));
    for _ in 0..10 {
        h.router.health().record_attempt(0, true, false, later);
    }
    assert_eq!(
        h.router.health().state_of(0, later).0,
        BreakerState::HalfOpen
    );
    // And the probe it waits for is still sent, and answers.
    let ev = ask(&h.router, req("probe")).await;
    assert_eq!(done_provider(&ev), Some("alpha"));
    assert_eq!(h.router.health().state_of(0, later).0, BreakerState::Closed);
}

fn was_queued(events: &[StreamEvent]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, StreamEvent::Queued { .. }))
}

fn calls(h: &Harness) -> Vec<usize> {
    h.scripts.iter().map(|s| s.calls()).collect()
}

/// Defect 1: a 429 with a 2 s Retry-After exiled the provider for 300 s.
#[tokio::test(start_paused = true)]
async fn rate_limit_fails_over_at_once_and_pauses_only_for_its_retry_after() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Fail(err(ErrorKind::RateLimited, Some(2)))]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("hi")).await;
    // No retry burned on the rate-limited provider while another one was free.
    assert_eq!(calls(&h), [1, 1]);
    assert_eq!(done_provider(&ev), Some("beta"));
    assert!(
        t0.elapsed() < Duration::from_millis(50),
        "{:?}",
        t0.elapsed()
    );
    assert!(ev.iter().any(|e| matches!(e, StreamEvent::Rerouted { from, to, mode: RerouteMode::Continue, .. } if from == "alpha" && to == "beta")));
    // Paused for what it asked, not a breaker cooldown; a rate limit is not a fault.
    let (state, left) = h.router.health().state_of(0, Instant::now());
    assert_eq!(state, BreakerState::RateLimited);
    assert!(left.unwrap() <= Duration::from_secs(2), "{left:?}");
    assert_eq!(h.router.health().providers[0].failures, 0);
    // Meanwhile other requests skip it without a call...
    assert_eq!(done_provider(&ask(&h.router, req("b")).await), Some("beta"));
    assert_eq!(h.scripts[0].calls(), 1);
    // ...and two seconds later it is the primary again.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(
        done_provider(&ask(&h.router, req("c")).await),
        Some("alpha")
    );
}

/// Defect 10: `Retry-After` was not capped.
#[tokio::test(start_paused = true)]
async fn a_huge_retry_after_is_capped_at_the_longest_cooldown() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Fail(err(ErrorKind::RateLimited, Some(1_000_000_000)))]);
    ask(&h.router, req("hi")).await;
    let (_, left) = h.router.health().state_of(0, Instant::now());
    assert!(
        left.unwrap() <= RoutingConfig::default().max_cooldown,
        "{left:?}"
    );
}

/// The bench's "529 every time": the fallback must answer at once, not after 1.6 s of retries.
#[tokio::test(start_paused = true)]
async fn overload_fails_over_at_once_when_another_provider_is_free() {
    let h = harness(2, no_jitter());
    h.scripts[0].push(vec![Step::Fail(err(ErrorKind::Overloaded, None)); 20]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("hi")).await;
    assert_eq!(done_provider(&ev), Some("beta"));
    assert_eq!(h.scripts[0].calls(), 1);
    assert!(
        t0.elapsed() < Duration::from_millis(50),
        "{:?}",
        t0.elapsed()
    );
    // It keeps failing: its traffic goes elsewhere.
    for _ in 0..6 {
        assert_eq!(done_provider(&ask(&h.router, req("x")).await), Some("beta"));
    }
    assert!(h.scripts[0].calls() <= 2, "{}", h.scripts[0].calls());
}

/// Many sessions meet a dead provider at once: it is cooled down for all of them.
#[tokio::test(start_paused = true)]
async fn a_provider_failing_every_session_is_cooled_down() {
    let h = harness(2, no_jitter());
    h.scripts[0].push(vec![Step::Fail(err(ErrorKind::Overloaded, None)); 20]);
    let mut tasks = Vec::new();
    for n in 0..10 {
        let r = h.router.clone();
        tasks.push(tokio::spawn(
            async move { ask(&r, req(&n.to_string())).await },
        ));
    }
    for t in tasks {
        let ev = t.await.unwrap();
        assert_eq!(done_provider(&ev), Some("beta"), "{ev:?}");
    }
    assert_eq!(
        h.router.health().state_of(0, Instant::now()).0,
        BreakerState::Open
    );
    let before = h.scripts[0].calls();
    ask(&h.router, req("later")).await;
    assert_eq!(
        h.scripts[0].calls(),
        before,
        "not called while cooling down"
    );
}

/// A provider overloaded for a while, saying each time when to come back (`529` with
/// `Retry-After: 2`), is waited for 2 s at a time and used as soon as it recovers: never exiled
/// for the breaker's cooldown (30 s and up), which is what counting those answers as faults did.
#[tokio::test(start_paused = true)]
async fn overload_with_retry_after_pauses_without_opening_the_breaker() {
    let h = harness(1, no_jitter());
    h.scripts[0].push(vec![Step::Fail(err(ErrorKind::Overloaded, Some(2))); 6]);
    let t0 = Instant::now();
    let mut answered = false;
    for n in 0..4 {
        let ev = ask(&h.router, req(&n.to_string())).await;
        assert_ne!(
            h.router.health().state_of(0, Instant::now()).0,
            BreakerState::Open,
            "request {n}: {ev:?}"
        );
        if done_provider(&ev) == Some("alpha") {
            answered = true;
            break;
        }
    }
    assert!(answered);
    assert_eq!(h.scripts[0].calls(), 7);
    // Six pauses of 2 s, give or take the backoff between them.
    assert!(t0.elapsed() < Duration::from_secs(16), "{:?}", t0.elapsed());
}

#[tokio::test(start_paused = true)]
async fn overload_with_nowhere_else_to_go_is_retried_with_backoff() {
    let h = harness(1, no_jitter());
    let o = Step::Fail(err(ErrorKind::Overloaded, None));
    h.scripts[0].push([o.clone(), o, answer(&["fine"])]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("hi")).await;
    assert_eq!(done_provider(&ev), Some("alpha"));
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_millis(700),
        "100 + 500 ms of backoff, got {waited:?}"
    );
}

/// Defect 3: one 500 that a retry recovered moved traffic off the primary for ~15 minutes.
#[tokio::test(start_paused = true)]
async fn a_recovered_blip_keeps_the_route() {
    let h = harness(2, no_jitter());
    // Both answer once, so their latencies are known.
    h.scripts[1].push([answer(&["b"])]);
    let mut pin = req("warm");
    pin.pin = Some(Pin {
        provider: Some("beta".into()),
        model: None,
    });
    ask(&h.router, pin).await;
    ask(&h.router, req("warm")).await;
    h.scripts[0].push([
        Step::Fail(err(ErrorKind::ServerError, None)),
        answer(&["fine"]),
    ]);
    assert_eq!(
        done_provider(&ask(&h.router, req("blip")).await),
        Some("alpha")
    );
    for _ in 0..5 {
        assert_eq!(
            done_provider(&ask(&h.router, req("x")).await),
            Some("alpha")
        );
    }
    let now = Instant::now();
    let hl = RoutingConfig::default().health_half_life;
    assert_eq!(h.router.health().providers[0].success.get(now, hl), 1.0);
}

/// Defect 2: one connection error tripped a 5-minute breaker.
#[tokio::test(start_paused = true)]
async fn one_connect_error_is_not_a_trip() {
    let h = harness(2, no_jitter());
    h.scripts[1].push([answer(&["b"])]);
    let mut pin = req("warm");
    pin.pin = Some(Pin {
        provider: Some("beta".into()),
        model: None,
    });
    ask(&h.router, pin).await;
    ask(&h.router, req("warm")).await;
    h.scripts[0].push([Step::Fail(connect_refused())]);
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(done_provider(&ev), Some("beta"));
    assert_eq!(
        h.router.health().state_of(0, Instant::now()).0,
        BreakerState::Closed
    );
    // The primary keeps its place.
    assert_eq!(
        done_provider(&ask(&h.router, req("y")).await),
        Some("alpha")
    );
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_provider_is_blamed_once_another_answers() {
    let h = harness(2, no_jitter());
    h.scripts[0].push(vec![Step::Fail(connect_refused()); 10]);
    let mut tasks = Vec::new();
    for n in 0..8 {
        let r = h.router.clone();
        tasks.push(tokio::spawn(
            async move { ask(&r, req(&n.to_string())).await },
        ));
    }
    for t in tasks {
        let ev = t.await.unwrap();
        assert_eq!(done_provider(&ev), Some("beta"), "{ev:?}");
    }
    // Eight sessions could not reach it while beta answered them: that is no blip.
    assert_eq!(
        h.router.health().state_of(0, Instant::now()).0,
        BreakerState::Open
    );
}

#[tokio::test(start_paused = true)]
async fn offline_is_not_blamed_on_providers() {
    let h = harness(3, no_jitter());
    for s in &h.scripts {
        s.push([Step::Fail(connect_refused())]);
    }
    let t0 = Instant::now();
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(error_kind(&ev), Some(ErrorKind::Offline));
    // With what went wrong: a name that does not resolve is not mended as a refusal is.
    assert!(
        format!("{ev:?}").contains("cannot connect (refused)"),
        "{ev:?}"
    );
    assert_eq!(calls(&h), [1, 1, 1], "no retries into a dead network");
    assert!(t0.elapsed() < Duration::from_millis(50));
    for i in 0..3 {
        assert_eq!(
            h.router.health().state_of(i, Instant::now()).0,
            BreakerState::Closed
        );
        assert_eq!(h.router.health().providers[i].failures, 0);
    }
    // Back online: the primary answers straight away.
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(done_provider(&ev), Some("alpha"));
}

/// Every provider reading the request and resetting the connection (a proxy or load balancer
/// in trouble) is no offline machine: the providers are retried and blamed like any failure,
/// and the error names them. It was "this machine looks offline" after one pass of 5 ms,
/// with `x-should-retry: false` to the SDKs (found by a helper's chaos run).
#[tokio::test(start_paused = true)]
async fn providers_that_drop_the_request_are_not_an_offline_machine() {
    let h = harness(3, no_jitter());
    let reset = || ProviderError::new(ErrorKind::Network, "request failed (connection reset)");
    for s in &h.scripts {
        s.push(vec![Step::Fail(reset()); 20]);
    }
    let t0 = Instant::now();
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(error_kind(&ev), Some(ErrorKind::Network), "{ev:?}");
    assert!(
        calls(&h).iter().sum::<usize>() > 3,
        "retried: {:?}",
        calls(&h)
    );
    assert!(t0.elapsed() >= Duration::from_millis(500), "with backoff");
    assert!(
        (0..3).any(|i| h.router.health().providers[i].failures > 0),
        "the providers are blamed"
    );
}

/// Defect 4: one slow first token opened the breaker; a long prompt got a short-chat timeout.
#[tokio::test(start_paused = true)]
async fn one_stall_reroutes_without_a_trip() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Hang]);
    let ev = ask(&h.router, req("hi")).await;
    assert_eq!(done_provider(&ev), Some("beta"));
    assert_eq!(
        h.router.health().state_of(0, Instant::now()).0,
        BreakerState::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_prompt_gets_more_time_to_its_first_token() {
    let h = harness(2, no_jitter());
    // 18 s to the first token: over the 15 s default, fine for a 50,000-token prompt.
    h.scripts[0].push([Step::Stream(vec![
        (18_000, Ok(Delta::Text("read it".into()))),
        (0, Ok(Delta::Finish(FinishReason::Stop))),
    ])]);
    let ev = ask(&h.router, req(&"word ".repeat(40_000))).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{:?}", ev.last());
}

/// Defect 5: a probe that ended in a non-retryable error never released its claim.
#[tokio::test(start_paused = true)]
async fn a_probe_is_released_whatever_ends_it() {
    let h = harness(2, no_jitter());
    let until = trip(&h, 0);
    tokio::time::advance(until - Instant::now()).await;
    // The probe meets a 400, no verdict on the provider (the other answers): the next request
    // probes instead.
    h.scripts[0].push([Step::Fail(err(ErrorKind::BadRequest, None))]);
    let ev = ask(&h.router, req("probe 1")).await;
    assert_eq!(done_provider(&ev), Some("beta"), "{ev:?}");
    // A 404: a fault of this entry; the breaker opens again instead of staying half-open.
    h.scripts[0].push([Step::Fail(err(ErrorKind::NotFound, None))]);
    let ev = ask(&h.router, req("probe 2")).await;
    assert_eq!(done_provider(&ev), Some("beta"));
    assert_eq!(h.scripts[0].calls(), 2, "the second request probed again");
    assert_eq!(
        h.router.health().state_of(0, Instant::now()).0,
        BreakerState::Open
    );
    // A cancelled probe gives the slot back too.
    tokio::time::advance(Duration::from_secs(3600)).await;
    h.scripts[0].push([Step::Hang]);
    let (tx, _rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let r = h.router.clone();
        let c = cancel.clone();
        async move { r.route(req("probe 3"), Emitter::new(1, tx), c).await }
    });
    // Cancel once the probe is out (hanging upstream), not after a guessed delay.
    while h.scripts[0].calls() < 3 {
        tokio::task::yield_now().await;
    }
    cancel.cancel();
    task.await.unwrap();
    h.scripts[0].push([answer(&["back"])]);
    assert_eq!(
        done_provider(&ask(&h.router, req("probe 4")).await),
        Some("alpha")
    );
    assert_eq!(
        h.router.health().state_of(0, Instant::now()).0,
        BreakerState::Closed
    );
}

/// Defect 6: 402, 413 and 422 went to the user with no failover.
#[tokio::test(start_paused = true)]
async fn an_account_that_cannot_pay_is_set_aside() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Fail(err(ErrorKind::Billing, None))]);
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(done_provider(&ev), Some("beta"));
    let (state, left) = h.router.health().state_of(0, Instant::now());
    assert_eq!(state, BreakerState::Unusable);
    assert!(left.unwrap() > Duration::from_secs(3500), "{left:?}");
    assert_eq!(done_provider(&ask(&h.router, req("y")).await), Some("beta"));
    assert_eq!(h.scripts[0].calls(), 1);
    // `mythos reset` after topping up brings it back.
    h.router.health().reset(0);
    assert_eq!(
        done_provider(&ask(&h.router, req("z")).await),
        Some("alpha")
    );
}

#[tokio::test(start_paused = true)]
async fn a_prompt_too_long_goes_to_a_larger_window() {
    let windows = [100_000, 50_000, 200_000];
    let h = harness_with(3, no_jitter(), |i, c| c.context_window = Some(windows[i]));
    h.scripts[0].push([Step::Fail(err(ErrorKind::ContextLength, None))]);
    let ev = ask(&h.router, req("a long prompt")).await;
    assert_eq!(done_provider(&ev), Some("gamma"));
    assert_eq!(calls(&h), [1, 0, 1], "beta's window is smaller still");
    assert_eq!(h.router.health().providers[0].failures, 0, "not a fault");
    // A prompt known to be too large for the small windows is not even sent there.
    let ev = ask(&h.router, req(&"word ".repeat(100_000))).await;
    assert_eq!(done_provider(&ev), Some("gamma"));
    assert_eq!(calls(&h), [1, 0, 2]);
}

#[tokio::test(start_paused = true)]
async fn unprocessable_requests_fail_over_without_blame() {
    let h = harness(2, no_jitter());
    let mut e = err(ErrorKind::BadRequest, None);
    e.status = Some(422);
    h.scripts[0].push([Step::Fail(e)]);
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(done_provider(&ev), Some("beta"));
    assert_eq!(h.router.health().providers[0].failures, 0);
}

/// Defect 7: any 400 during a continuation disabled prefill for good.
#[tokio::test(start_paused = true)]
async fn only_a_real_prefill_refusal_is_remembered_and_it_expires() {
    let cut = || {
        Step::Stream(vec![
            text("Partial"),
            (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
        ])
    };
    let h = harness(2, no_jitter());
    // A 400 that is not about the prefill: restart once, remember nothing.
    h.scripts[0].push([cut()]);
    h.scripts[1].push([
        Step::Fail(err(ErrorKind::BadRequest, None)),
        answer(&["Full answer."]),
    ]);
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(final_text(&ev), "Full answer.");
    assert!(h.router.health().accepts_prefill(1, Instant::now()));
    assert_eq!(h.router.health().providers[1].failures, 0, "not a fault");
    // The provider's own words: remembered, for a day.
    let mut refusal = err(ErrorKind::BadRequest, None);
    refusal.message =
        "messages: final assistant content cannot end with trailing whitespace".into();
    h.scripts[0].push([cut()]);
    h.scripts[1].push([Step::Fail(refusal), answer(&["Full answer."])]);
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(final_text(&ev), "Full answer.");
    let now = Instant::now();
    assert!(!h.router.health().accepts_prefill(1, now));
    assert!(h
        .router
        .health()
        .accepts_prefill(1, now + Duration::from_secs(24 * 3600)));
}

#[tokio::test(start_paused = true)]
async fn rejected_continuation_restarts_explicitly() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Stream(vec![
        text("Partial"),
        (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
    ])]);
    h.scripts[1].push([
        Step::Fail(err(ErrorKind::BadRequest, None)),
        answer(&["Full answer."]),
    ]);
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(final_text(&ev), "Full answer.");
    assert_eq!(done_provider(&ev), Some("beta"));
    let modes: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Rerouted { mode, .. } => Some(*mode),
            _ => None,
        })
        .collect();
    assert_eq!(modes, [RerouteMode::Continue, RerouteMode::Restart]);
    assert_eq!(h.scripts[1].prefills.lock().unwrap()[1], None);
}

/// Defect 9: with only a probing provider left, requests failed with "every key was rejected".
#[tokio::test(start_paused = true)]
async fn a_request_waits_for_the_probe_when_nothing_else_is_left() {
    let h = harness(1, no_jitter());
    let until = trip(&h, 0);
    tokio::time::advance(until - Instant::now()).await;
    h.scripts[0].push([
        Step::Stream(vec![
            (2000, Ok(Delta::Text("probe ok".into()))),
            (0, Ok(Delta::Finish(FinishReason::Stop))),
        ]),
        answer(&["second"]),
    ]);
    let probe = tokio::spawn({
        let r = h.router.clone();
        async move { ask(&r, req("probe")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t0 = Instant::now();
    let ev = ask(&h.router, req("meanwhile")).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{:?}", ev.last());
    assert!(was_queued(&ev));
    assert!(t0.elapsed() >= Duration::from_millis(1900));
    assert_eq!(done_provider(&probe.await.unwrap()), Some("alpha"));
}

#[tokio::test(start_paused = true)]
async fn announced_quotas_pace_requests_before_they_are_sent() {
    let h = harness(2, no_jitter());
    // The primary says: none left of 2 requests, whole again in 2 s (one back per second).
    h.scripts[0].push([answer_with(quota(2, 0, 2_000), &["a"])]);
    assert_eq!(
        done_provider(&ask(&h.router, req("1")).await),
        Some("alpha")
    );
    // No room: the next request goes to the fallback without a call (and without a 429).
    assert_eq!(done_provider(&ask(&h.router, req("2")).await), Some("beta"));
    assert_eq!(h.scripts[0].calls(), 1);
    // A second later its quota has refilled by one: it is the primary again.
    tokio::time::advance(Duration::from_secs(1)).await;
    h.scripts[0].push([answer_with(quota(2, 0, 2_000), &["a"])]);
    assert_eq!(
        done_provider(&ask(&h.router, req("3")).await),
        Some("alpha")
    );
    // Running out of quota is no fault.
    assert_eq!(h.router.health().providers[0].failures, 0);
    let status = h.router.status();
    assert_eq!(
        status
            .iter()
            .find(|s| s.name == "alpha")
            .unwrap()
            .quotas
            .len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn with_no_room_anywhere_a_request_waits_visibly_then_goes() {
    let h = harness(1, no_jitter());
    h.scripts[0].push([answer_with(quota(2, 0, 2_000), &["a"])]);
    ask(&h.router, req("1")).await;
    let t0 = Instant::now();
    let ev = ask(&h.router, req("2")).await;
    let waited = t0.elapsed();
    assert_eq!(done_provider(&ev), Some("alpha"));
    assert!(
        waited >= Duration::from_millis(990) && waited < Duration::from_millis(1100),
        "{waited:?}"
    );
    match ev.first() {
        Some(StreamEvent::Queued {
            reason,
            until_unix_ms: Some(_),
            ..
        }) => assert!(reason.contains("alpha: quota"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.scripts[0].calls(),
        2,
        "no request was sent into a spent quota"
    );
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_can_be_cancelled() {
    let h = harness(1, no_jitter());
    h.scripts[0].push([answer_with(quota(60, 0, 60_000), &["a"])]);
    ask(&h.router, req("1")).await;
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let r = h.router.clone();
        let c = cancel.clone();
        async move { r.route(req("2"), Emitter::new(1, tx), c).await }
    });
    // Cancel once the client has been told it waits.
    let mut events = Vec::new();
    while !was_queued(&events) {
        match rx.recv().await {
            Some(Response::Event { event, .. }) => events.push(event),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(h.router.health().queue.len(), 1);
    cancel.cancel();
    task.await.unwrap();
    while let Ok(Response::Event { event, .. }) = rx.try_recv() {
        events.push(event);
    }
    assert!(was_queued(&events));
    assert_eq!(error_kind(&events), Some(ErrorKind::Cancelled));
    assert_eq!(h.router.health().queue.len(), 0);
    assert_eq!(h.scripts[0].calls(), 1);
}

/// A client that stops reading and cancels: the route's sends that wait for room in its full
/// channel (`started` here) give up, and the request ends: at once with its last event when
/// the client reads on (as the CLI does after a cancel), after a short grace when it reads
/// nothing more; not when the connection finally closes.
#[tokio::test(start_paused = true)]
async fn a_cancel_frees_a_route_blocked_on_a_client_that_does_not_read() {
    let h = harness(1, no_jitter());
    let (tx, mut rx) = mpsc::channel(1);
    // The channel is full before the route starts: nothing it sends fits.
    tx.send(Response::Ok).await.unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let r = h.router.clone();
        let c = cancel.clone();
        async move { r.route(req("hi"), Emitter::new(1, tx), c).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.router.in_flight(), 1);
    assert_eq!(h.scripts[0].calls(), 1, "the provider answered");
    cancel.cancel();
    // The client reads on: its last event comes at once.
    assert!(matches!(rx.recv().await, Some(Response::Ok)));
    let last = tokio::time::timeout(Duration::from_millis(10), async {
        loop {
            match rx.recv().await {
                Some(Response::Event {
                    event: e @ (StreamEvent::Error { .. } | StreamEvent::Done(_)),
                    ..
                }) => break e,
                Some(_) => continue,
                None => panic!("no last event"),
            }
        }
    })
    .await
    .expect("the last event at once");
    assert!(
        matches!(
            last,
            StreamEvent::Error {
                kind: ErrorKind::Cancelled,
                ..
            }
        ),
        "{last:?}"
    );
    task.await.unwrap();
    assert_eq!(h.router.in_flight(), 0);

    // A client that reads nothing more: the request ends after the grace.
    let (tx, _rx) = mpsc::channel(1);
    tx.send(Response::Ok).await.unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let r = h.router.clone();
        let c = cancel.clone();
        async move { r.route(req("hi"), Emitter::new(1, tx), c).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    cancel.cancel();
    let t0 = Instant::now();
    task.await.unwrap();
    assert!(t0.elapsed() <= Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_eq!(h.router.in_flight(), 0);
}

/// Twelve sessions at once all get a 429 with a 2 s Retry-After from the only provider: every
/// one waits the pause out and is answered there. Coming back after a pause is not a retry, so
/// the retry budget (5 per 10 s) does not turn the rest of them away with the 429.
#[tokio::test(start_paused = true)]
async fn a_burst_of_sessions_told_to_wait_all_come_back() {
    let h = harness(1, no_jitter());
    // Known to the router, and without quota headers: not paced, so all twelve go at once.
    assert_eq!(
        done_provider(&ask(&h.router, req("hi")).await),
        Some("alpha")
    );
    h.scripts[0].push((0..12).map(|_| Step::Fail(err(ErrorKind::RateLimited, Some(2)))));
    let tasks: Vec<_> = (0..12)
        .map(|n| {
            let r = h.router.clone();
            tokio::spawn(async move { ask(&r, req(&format!("session {n}"))).await })
        })
        .collect();
    for t in tasks {
        let ev = t.await.unwrap();
        assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
    }
    assert_eq!(h.scripts[0].calls(), 1 + 12 + 12);
}

/// One provider paused for a minute, the others answer 429 with a 3 s Retry-After: the
/// request waits for the first of them to be back, it does not fail.
#[tokio::test(start_paused = true)]
async fn short_pauses_are_waited_for_even_when_another_is_long() {
    let h = harness(3, no_jitter());
    h.scripts[0].push([Step::Fail(err(ErrorKind::RateLimited, Some(60)))]);
    ask(&h.router, req("pause alpha for a minute")).await;
    h.scripts[1].push([Step::Fail(err(ErrorKind::RateLimited, Some(3)))]);
    h.scripts[2].push([Step::Fail(err(ErrorKind::RateLimited, Some(3)))]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("busy everywhere")).await;
    assert!(
        matches!(ev.last(), Some(StreamEvent::Done(_))),
        "{:?}",
        ev.last()
    );
    assert!(was_queued(&ev));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn waits_beyond_the_limit_fail_fast_and_say_when() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Fail(err(ErrorKind::RateLimited, Some(600)))]);
    h.scripts[1].push([Step::Fail(err(ErrorKind::RateLimited, Some(900)))]);
    let ev = ask(&h.router, req("pause both")).await;
    assert_eq!(error_kind(&ev), Some(ErrorKind::RateLimited));
    let t0 = Instant::now();
    let ev = ask(&h.router, req("again")).await;
    assert!(t0.elapsed() < Duration::from_millis(1));
    // Every provider is out for its rate limit: that is what the error says (an HTTP client
    // gets a 429 with when to come back, not an overload).
    match ev.last() {
        Some(StreamEvent::Error {
            kind: ErrorKind::RateLimited,
            message,
            retry_at_unix_ms: Some(_),
        }) => assert!(message.contains("10 min"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(calls(&h), [1, 1]);
}

/// A request that meets a Retry-After at every attempt until its queue limit passes ends by
/// saying when the provider is back (an HTTP client's `retry-after`), not with nothing.
#[tokio::test(start_paused = true)]
async fn a_request_failed_by_pauses_says_when_to_come_back() {
    let h = harness(
        1,
        RoutingConfig {
            max_queue_wait: Duration::from_secs(3),
            ..no_jitter()
        },
    );
    h.scripts[0].push(vec![Step::Fail(err(ErrorKind::RateLimited, Some(1))); 60]);
    let ev = ask(&h.router, req("storm")).await;
    match ev.last() {
        Some(StreamEvent::Error {
            kind: ErrorKind::RateLimited,
            retry_at_unix_ms: Some(_),
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

/// Every provider's headers said its quota is spent for longer than a request may wait: the
/// client is told it is rate limited (an HTTP client's 429 with when to come back), not that
/// the providers are overloaded, though none of them ever answered 429.
#[tokio::test(start_paused = true)]
async fn quotas_spent_by_their_headers_are_a_rate_limit() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([answer_with(quota(1, 0, 600_000), &["a"])]);
    h.scripts[1].push([answer_with(quota(1, 0, 900_000), &["b"])]);
    assert_eq!(
        done_provider(&ask(&h.router, req("a")).await),
        Some("alpha")
    );
    assert_eq!(done_provider(&ask(&h.router, req("b")).await), Some("beta"));
    let t0 = Instant::now();
    let ev = ask(&h.router, req("again")).await;
    assert!(
        t0.elapsed() < Duration::from_millis(1),
        "{:?} {ev:?}",
        t0.elapsed()
    );
    match ev.last() {
        Some(StreamEvent::Error {
            kind: ErrorKind::RateLimited,
            retry_at_unix_ms: Some(_),
            message,
        }) => assert!(message.contains("quota spent"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(calls(&h), [1, 1]);
}

/// Every provider paused after an overload (`529` with `Retry-After: 60`): the client is told
/// the providers are overloaded (an HTTP 529), not that it hit a rate limit, and `status` says
/// so too.
#[tokio::test(start_paused = true)]
async fn overload_pauses_are_not_rate_limits() {
    let h = harness(2, no_jitter());
    for s in &h.scripts {
        s.push(vec![Step::Fail(err(ErrorKind::Overloaded, Some(60))); 4]);
    }
    ask(&h.router, req("first")).await;
    let now = Instant::now();
    for i in 0..2 {
        assert_eq!(
            h.router.health().state_of(i, now).0,
            BreakerState::Overloaded
        );
    }
    let ev = ask(&h.router, req("again")).await;
    match ev.last() {
        Some(StreamEvent::Error {
            kind: ErrorKind::AllCoolingDown,
            message,
            retry_at_unix_ms: Some(_),
        }) => assert!(message.contains("overloaded, back in"), "{message}"),
        other => panic!("{other:?}"),
    }
}

/// The lid closed while an answer streamed: the stream is dead when the machine wakes, the
/// watchdog re-routes it, and the provider is not blamed for it (the same silence without a
/// sleep is a fault).
#[tokio::test(start_paused = true)]
async fn an_attempt_that_slept_through_a_suspend_is_nobodys_fault() {
    let h = harness(2, no_jitter());
    for slept in [true, false] {
        h.scripts[0].push([Step::Hang]);
        let r = h.router.clone();
        let t = tokio::spawn(async move { ask(&r, req("lid")).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slept {
            h.router
                .health()
                .slept(Duration::from_secs(8 * 3600), Instant::now());
        }
        let ev = t.await.unwrap();
        assert_eq!(done_provider(&ev), Some("beta"), "{ev:?}");
        let failures = h.router.health().providers[0].failures;
        assert_eq!(failures, u64::from(!slept), "slept: {slept}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_queue_is_first_come_first_served() {
    let h = harness(1, no_jitter());
    // One request a second.
    h.scripts[0].push([answer_with(quota(1, 0, 1_000), &["0"])]);
    ask(&h.router, req("0")).await;
    for n in 1..=4 {
        h.scripts[0].push([answer_with(quota(1, 0, 1_000), &[&n.to_string()])]);
    }
    let mut tasks = Vec::new();
    for n in 1..=4 {
        let r = h.router.clone();
        tasks.push(tokio::spawn(async move {
            let ev = ask(&r, req(&n.to_string())).await;
            (n, Instant::now(), final_text(&ev))
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    done.sort_by_key(|(_, at, _)| *at);
    let order: Vec<String> = done.iter().map(|(_, _, text)| text.clone()).collect();
    assert_eq!(order, ["1", "2", "3", "4"], "served in arrival order");
}

/// A request that waits for one provider does not hold another it can never use (larger than
/// that one's quota): a small request behind it is served there at once.
#[tokio::test(start_paused = true)]
async fn a_waiter_does_not_hold_what_it_cannot_use() {
    // beta takes one request at a time.
    let h = harness_with(2, no_jitter(), |i, c| {
        if i == 1 {
            c.max_concurrent = 1;
        }
    });
    // alpha announces 1,000 tokens a minute.
    let mut tokens = RateLimits::default();
    tokens.quotas[QuotaKind::Tokens.index()] = Some(Announced {
        limit: Some(1_000),
        remaining: Some(1_000),
        reset_in: Some(Duration::from_secs(60)),
    });
    let mut small = req("small");
    small.max_tokens = Some(100);
    h.scripts[0].push([answer_with(tokens.clone(), &["warm"])]);
    assert_eq!(
        done_provider(&ask(&h.router, small.clone()).await),
        Some("alpha")
    );
    // Large requests (4,096 tokens to write) can only go to beta: the first one takes it for
    // 10 s, the second waits for it.
    h.scripts[1].push([Step::Stream(vec![
        (10_000, Ok(Delta::Text("long".into()))),
        (0, Ok(Delta::Finish(FinishReason::Stop))),
    ])]);
    let spawn_large = |n: &str| {
        let r = h.router.clone();
        let q = req(n);
        tokio::spawn(async move { ask(&r, q).await })
    };
    let first = spawn_large("large 1");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = spawn_large("large 2");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        h.router.health().queue.len(),
        1,
        "the second waits for beta"
    );
    h.scripts[0].push([answer_with(tokens, &["quick"])]);
    let t0 = Instant::now();
    let ev = ask(&h.router, small).await;
    assert_eq!(done_provider(&ev), Some("alpha"));
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(done_provider(&first.await.unwrap()), Some("beta"));
    assert_eq!(done_provider(&second.await.unwrap()), Some("beta"));
}

/// alpha, announcing 10,000 tokens with 1,000 left, whole again in `reset_s`; beta taking one
/// request at a time, busy for 10 s with a large request. A second large request (4,096
/// tokens to write: alpha has room for it once its quota has refilled enough) waits; then a
/// small request comes. Returns how long the small one waited, and who answered each.
async fn small_behind_large(reset_s: u64) -> (Duration, [Option<String>; 3]) {
    let h = harness_with(2, no_jitter(), |i, c| {
        if i == 1 {
            c.max_concurrent = 1;
        }
    });
    let mut tokens = RateLimits::default();
    tokens.quotas[QuotaKind::Tokens.index()] = Some(Announced {
        limit: Some(10_000),
        remaining: Some(1_000),
        reset_in: Some(Duration::from_secs(reset_s)),
    });
    let mut small = req("small");
    small.max_tokens = Some(100);
    h.scripts[0].push([answer_with(tokens.clone(), &["warm"])]);
    assert_eq!(
        done_provider(&ask(&h.router, small.clone()).await),
        Some("alpha")
    );
    h.scripts[1].push([Step::Stream(vec![
        (10_000, Ok(Delta::Text("long".into()))),
        (0, Ok(Delta::Finish(FinishReason::Stop))),
    ])]);
    let spawn_large = |n: &str| {
        let r = h.router.clone();
        let q = req(n);
        tokio::spawn(async move { ask(&r, q).await })
    };
    let first = spawn_large("large 1");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = spawn_large("large 2");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(h.router.health().queue.len(), 1, "the second one waits");
    h.scripts[0].push([answer_with(tokens, &["quick"])]);
    let t0 = Instant::now();
    let ev = ask(&h.router, small).await;
    let waited = t0.elapsed();
    let who = |ev: &[StreamEvent]| done_provider(ev).map(str::to_string);
    let answered = [
        who(&first.await.unwrap()),
        who(&second.await.unwrap()),
        who(&ev),
    ];
    (waited, answered)
}

/// A waiting request holds, for the requests behind it, only the providers that can take it
/// before its own wait ends. alpha's quota refills for a large request in about 41 s, past
/// the 30 s the queue allows: the large one waits for beta, and a small request that alpha can
/// take now is served at once. It waited 10 s behind a request that could never have used
/// alpha (found by a review); with the quota whole again in 60 s (the large one fits alpha in
/// about 21 s) it waits its turn, as before: arrival order among requests that can be served.
#[tokio::test(start_paused = true)]
async fn a_waiter_does_not_hold_what_cannot_take_it_in_time() {
    let beta = Some("beta".to_string());
    let alpha = Some("alpha".to_string());
    let (waited, answered) = small_behind_large(120).await;
    assert!(
        waited < Duration::from_secs(1),
        "the small request waited {waited:?} behind one alpha could not take in time"
    );
    assert_eq!(answered, [beta.clone(), beta.clone(), alpha.clone()]);
    let (waited, answered) = small_behind_large(60).await;
    assert!(
        waited >= Duration::from_secs(9),
        "the small request went ahead of one alpha can take in time ({waited:?})"
    );
    assert_eq!(answered, [beta.clone(), beta, alpha]);
}

/// A queued request whose client stopped reading (its `queued` notice cannot be written, and
/// the route waits on the client for up to a minute) is out of the queue once its own wait
/// is over: capacity that comes back after that goes to the requests behind it. It was granted
/// to the stuck request, whose lease then sat unused, and the request behind ran out of time
/// with the provider free (found by a review).
#[tokio::test(start_paused = true)]
async fn a_waiter_past_its_limit_takes_nothing_from_those_behind() {
    let routing = RoutingConfig {
        max_queue_wait: Duration::from_secs(2),
        ..no_jitter()
    };
    let h = harness_with(1, routing, |_, c| c.max_concurrent = 1);
    // The one stream alpha takes ends at 2.5 s.
    h.scripts[0].push([
        Step::Stream(vec![
            (2_500, Ok(Delta::Text("long".into()))),
            (0, Ok(Delta::Finish(FinishReason::Stop))),
        ]),
        answer(&["next"]),
    ]);
    let long = {
        let r = h.router.clone();
        tokio::spawn(async move { ask(&r, req("long")).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Queued until 2.01 s, with a client that reads nothing.
    let (tx, _unread) = mpsc::channel(1);
    tx.try_send(Response::Event {
        id: 1,
        event: StreamEvent::TextDelta { text: "x".into() },
    })
    .unwrap();
    let stuck = {
        let router = h.router.clone();
        tokio::spawn(async move {
            router
                .route(req("stuck"), Emitter::new(1, tx), CancellationToken::new())
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Queued behind it until 3.01 s.
    let ev = ask(&h.router, req("next")).await;
    assert_eq!(final_text(&ev), "next", "{:?}", ev.last());
    assert_eq!(final_text(&long.await.unwrap()), "long");
    stuck.abort();
}

/// The request at the head of the queue, holding a provider for itself, gives it up the moment
/// its wait is over, and the request behind it that the provider can take goes then: not at
/// its own next look (a lost wake-up), and not never.
#[tokio::test(start_paused = true)]
async fn a_waiter_whose_limit_ends_at_the_head_lets_the_next_go_at_once() {
    let routing = RoutingConfig {
        max_queue_wait: Duration::from_secs(2),
        ..no_jitter()
    };
    let h = harness(1, routing);
    // alpha announces 10,000 tokens, all there.
    let mut tokens = RateLimits::default();
    tokens.quotas[QuotaKind::Tokens.index()] = Some(Announced {
        limit: Some(10_000),
        remaining: Some(10_000),
        reset_in: Some(Duration::from_secs(60)),
    });
    let sized = |text: &str, max_tokens: u32| {
        let mut r = req(text);
        r.max_tokens = Some(max_tokens);
        r
    };
    h.scripts[0].push([answer_with(tokens.clone(), &["warm"])]);
    ask(&h.router, sized("warm", 100)).await;
    // A large request streams for 10 s, its 8,000 tokens reserved all the while; a second one
    // waits for them (it does not fit beside them), then its 2 s are over.
    let mut long: Vec<_> = (0..10)
        .map(|_| (1_000, Ok(Delta::Text("long ".into()))))
        .collect();
    long.push((0, Ok(Delta::Finish(FinishReason::Stop))));
    h.scripts[0].push([Step::Stream(long)]);
    let spawn = |text: &str, max_tokens: u32| {
        let r = h.router.clone();
        let q = sized(text, max_tokens);
        tokio::spawn(async move { ask(&r, q).await })
    };
    let first = spawn("large 1", 8_000);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t_second = Instant::now();
    let second = spawn("large 2", 8_000);
    tokio::time::sleep(Duration::from_millis(1_250)).await;
    // A small one, which fits beside the first, comes 1.25 s later: behind the second.
    h.scripts[0].push([answer_with(tokens, &["small"])]);
    let ev = ask(&h.router, sized("small", 100)).await;
    assert_eq!(final_text(&ev), "small", "{:?}", ev.last());
    let served = Instant::now() - t_second;
    assert!(
        served < Duration::from_millis(2_100),
        "the small one went {served:?} after the second, whose wait ended at 2 s"
    );
    assert_eq!(
        error_kind(&second.await.unwrap()),
        Some(ErrorKind::RateLimited)
    );
    assert_eq!(final_text(&first.await.unwrap()), "long ".repeat(10));
}

#[tokio::test(start_paused = true)]
async fn a_busy_provider_sends_the_overflow_elsewhere() {
    let h = harness_with(2, no_jitter(), |i, c| {
        if i == 0 {
            c.max_concurrent = 1;
        }
    });
    h.scripts[0].push([Step::Stream(vec![
        (1000, Ok(Delta::Text("slow".into()))),
        (0, Ok(Delta::Finish(FinishReason::Stop))),
    ])]);
    let first = tokio::spawn({
        let r = h.router.clone();
        async move { ask(&r, req("1")).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let ev = ask(&h.router, req("2")).await;
    assert_eq!(done_provider(&ev), Some("beta"));
    assert!(!was_queued(&ev));
    assert_eq!(done_provider(&first.await.unwrap()), Some("alpha"));
    assert_eq!(h.router.health().providers[0].in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn pinned_rate_limit_waits_in_the_queue() {
    let h = harness(2, no_jitter());
    h.scripts[1].push([Step::Fail(err(ErrorKind::RateLimited, Some(2)))]);
    let mut r = req("x");
    r.pin = Some(Pin {
        provider: Some("beta".into()),
        model: None,
    });
    let t0 = Instant::now();
    let ev = ask(&h.router, r).await;
    assert_eq!(done_provider(&ev), Some("beta"));
    assert!(was_queued(&ev));
    assert!(t0.elapsed() >= Duration::from_secs(2));
    assert_eq!(calls(&h), [0, 2]);
}

/// Defect 8: every request retried on its own, multiplying load on a failing provider.
#[tokio::test(start_paused = true)]
async fn retries_are_capped_by_the_providers_budget() {
    let h = harness(1, no_jitter());
    // Every other call fails (the breaker stays closed at 50 %).
    for _ in 0..200 {
        h.scripts[0].push([
            Step::Fail(err(ErrorKind::ServerError, None)),
            answer(&["ok"]),
        ]);
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..40 {
        let r = h.router.clone();
        tasks.push(tokio::spawn(
            async move { ask(&r, req(&n.to_string())).await },
        ));
    }
    let mut answered = 0;
    for t in tasks {
        answered += usize::from(done_provider(&t.await.unwrap()).is_some());
    }
    // 40 first attempts; retries at most 5 + 20 % of them in each ten seconds (a retry the
    // budget has no room for waits, within the queue's limit, for the window to slide on).
    let windows = (t0.elapsed().as_secs_f64() / 10.0).ceil().max(1.0) as usize;
    let calls = h.scripts[0].calls();
    assert!(
        calls <= 40 + windows * (5 + 8),
        "{calls} calls in {windows} windows"
    );
    assert!(answered >= 32, "{answered} of 40 answered");
}

/// What a user saw fail: random fault mixes on every provider at once, many clients.
#[tokio::test(start_paused = true)]
async fn random_fault_mixes_at_concurrency_are_answered_whole() {
    let chaos: Vec<Arc<Chaos>> = (0..3).map(|i| Arc::new(Chaos::new(100 + i))).collect();
    let providers = chaos
        .iter()
        .enumerate()
        .map(|(i, c)| RoutedProvider {
            cfg: ProviderConfig {
                api_key: Some(Secret::new("k")),
                priority: i as u32,
                ..ProviderConfig::new(format!("p{i}"), Api::Openai, "http://x", "m")
            },
            transport: c.clone() as Arc<dyn Transport>,
        })
        .collect();
    let router = Arc::new(Router::new(providers, RoutingConfig::default(), None, 1));
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = Vec::new();
    for n in 0..200 {
        let r = router.clone();
        let permit = sem.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let ev = ask(&r, req(&format!("q{n}"))).await;
            drop(permit);
            ev
        }));
    }
    let mut answered = 0;
    for t in tasks {
        let ev = t.await.unwrap();
        if matches!(ev.last(), Some(StreamEvent::Done(_))) {
            assert_eq!(
                final_text(&ev),
                Chaos::ANSWER.concat(),
                "no lost or repeated text"
            );
            answered += 1;
        } else {
            panic!("failed: {:?}", ev.last());
        }
    }
    assert_eq!(answered, 200);
    let upstream: usize = chaos.iter().map(|c| c.calls.load(Ordering::SeqCst)).sum();
    let per_answer = upstream as f64 / 200.0;
    assert!(
        per_answer <= 1.6,
        "{per_answer:.2} upstream requests per answer"
    );
}

/// A provider that fails 30 % of its requests at random: 429 (Retry-After 1 s), 503, a
/// disconnect mid-answer, a malformed chunk. Its answers continue a prefill word for word.
struct Chaos {
    rng: Mutex<fastrand::Rng>,
    calls: AtomicUsize,
}

impl Chaos {
    const ANSWER: [&'static str; 12] = [
        "One", " two", " three", " four", " five", " six", " seven", " eight", " nine", " ten",
        " eleven", " twelve.",
    ];

    fn new(seed: u64) -> Self {
        Chaos {
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            calls: AtomicUsize::new(0),
        }
    }
}

impl Transport for Chaos {
    fn open(&self, req: &UpstreamRequest<'_>) -> OpenFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (roll, cut) = {
            let mut rng = self.rng.lock().unwrap();
            (rng.f64(), rng.usize(1..8))
        };
        let done = req.prefill.unwrap_or("").to_string();
        let rest: Vec<&'static str> = {
            let mut acc = String::new();
            Chaos::ANSWER
                .iter()
                .copied()
                .filter(|w| {
                    let skip = done.starts_with(&(acc.clone() + w)) && acc.len() < done.len();
                    acc.push_str(w);
                    !skip
                })
                .collect()
        };
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let mut items: Vec<(u64, Result<Delta, ProviderError>)> = rest
                .iter()
                .map(|w| (2, Ok(Delta::Text((*w).into()))))
                .collect();
            if roll < 0.15 {
                return Err(err(ErrorKind::RateLimited, Some(1)));
            } else if roll < 0.25 {
                return Err(err(ErrorKind::Overloaded, None));
            } else if roll < 0.30 {
                items.truncate(cut.min(items.len().saturating_sub(1)));
                items.push((2, Err(ProviderError::new(ErrorKind::Network, "cut"))));
            } else if roll < 0.35 {
                items.truncate(cut.min(items.len().saturating_sub(1)));
                items.push((2, Err(ProviderError::malformed("garbage"))));
            } else {
                items.push((0, Ok(Delta::Finish(FinishReason::Stop))));
            }
            let s = futures_util::stream::unfold(items.into_iter(), |mut it| async move {
                let (delay, item) = it.next()?;
                tokio::time::sleep(Duration::from_millis(delay)).await;
                Some((item, it))
            });
            Ok(Box::pin(s) as DeltaStream)
        })
    }
}

#[test]
fn health_survives_a_restart() {
    // Persisted deadlines are absolute: a provider cooling down stays cooling down.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let h = harness(2, no_jitter());
        h.scripts[0].push([Step::Fail(err(ErrorKind::RateLimited, Some(60)))]);
        ask(&h.router, req("x")).await;
        trip(&h, 1);
        h.router.health().record_outcome(1, false, Instant::now());
        let now = Instant::now();
        let saved = h.router.health().save(now, 1_000_000);
        // "Restart" 10 s later.
        let h2 = harness(2, no_jitter());
        let later = now + Duration::from_secs(10);
        h2.router.health().restore(&saved, later, 1_010_000);
        let book = h2.router.health();
        let (state, left) = book.state_of(0, later);
        assert_eq!(state, BreakerState::RateLimited, "still paused");
        let left = left.unwrap();
        assert!(
            left > Duration::from_secs(49) && left <= Duration::from_secs(50),
            "{left:?}"
        );
        let (state, left) = book.state_of(1, later);
        assert_eq!(state, BreakerState::Open, "still cooling down");
        assert!(left.unwrap() <= Duration::from_secs(20), "{left:?}");
        // Averages carried over.
        let hl = RoutingConfig::default().health_half_life;
        assert!(book.providers[1].success.get(later, hl) < 1.0);
    });
}

/// State saved under a clock a day ahead (then corrected) does not keep a provider out for a
/// day: a restored cooldown or pause is no longer than it could have been from now.
#[tokio::test(start_paused = true)]
async fn deadlines_saved_far_ahead_are_cut_to_what_could_have_been_asked() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Fail(err(ErrorKind::RateLimited, Some(60)))]);
    ask(&h.router, req("x")).await;
    trip(&h, 1);
    let now = Instant::now();
    let day = 86_400_000;
    let mut saved = h.router.health().save(now, 1_000_000);
    for s in &mut saved {
        if let Some(ms) = s.rate_limited_until_unix_ms.as_mut() {
            *ms += day;
        }
        if let Some(q) = s.quota.as_mut() {
            if let Some(ms) = q.blocked_until_unix_ms.as_mut() {
                *ms += day;
            }
        }
        if let super::health::SavedBreaker::Open { until_unix_ms, .. } = &mut s.breaker {
            *until_unix_ms += day;
        }
    }
    let h2 = harness(2, no_jitter());
    h2.router.health().restore(&saved, now, 1_000_000);
    let book = h2.router.health();
    let max = RoutingConfig::default().max_cooldown;
    let (state, left) = book.state_of(0, now);
    assert_eq!(state, BreakerState::RateLimited);
    assert!(left.unwrap() <= max, "paused for {left:?}");
    let (state, left) = book.state_of(1, now);
    assert_eq!(state, BreakerState::Open);
    assert!(
        left.unwrap() <= RoutingConfig::default().cooldown,
        "open for {left:?}"
    );
}

/// A key rejected before a restart is tried again after it: the user restarts the daemon
/// once the key (or the account) is fixed.
#[tokio::test(start_paused = true)]
async fn a_rejected_key_is_tried_again_after_a_restart() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Fail(err(ErrorKind::Auth, None))]);
    assert_eq!(done_provider(&ask(&h.router, req("x")).await), Some("beta"));
    h.scripts[1].push([Step::Fail(err(ErrorKind::Billing, None))]);
    h.scripts[0].push([Step::Fail(err(ErrorKind::Auth, None))]);
    ask(&h.router, req("y")).await;
    let now = Instant::now();
    assert_eq!(h.router.health().state_of(0, now).0, BreakerState::Unusable);
    assert_eq!(h.router.health().state_of(1, now).0, BreakerState::Unusable);
    let saved = h.router.health().save(now, 1_000_000);
    let h2 = harness(2, no_jitter());
    h2.router.health().restore(&saved, now, 1_000_000);
    assert_eq!(h2.router.health().state_of(0, now).0, BreakerState::Closed);
    assert_eq!(h2.router.health().state_of(1, now).0, BreakerState::Closed);
    assert_eq!(
        done_provider(&ask(&h2.router, req("z")).await),
        Some("alpha")
    );
}

/// Answers at once: what is left of a request is the router's own work.
struct Instantly;

impl Transport for Instantly {
    fn open(&self, _req: &UpstreamRequest<'_>) -> OpenFuture {
        let Step::Stream(items) = answer(&["ok"]) else {
            unreachable!()
        };
        let items: Vec<_> = items.into_iter().map(|(_, item)| item).collect();
        Box::pin(async move { Ok(Box::pin(futures_util::stream::iter(items)) as DeltaStream) })
    }
}

/// The router's per-request set-up as its `started` event reports it (`setup_us`), and the
/// whole of `route` for an answer that costs nothing, over a coding agent's conversation.
/// A measurement, not a check:
/// `cargo test -p mythosd --release --lib router::tests::router_setup_cost -- --ignored --nocapture`
#[test]
#[ignore = "a measurement, not a check: run it in release mode with --nocapture"]
fn router_setup_cost() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let providers = (0..3)
            .map(|i| RoutedProvider {
                cfg: ProviderConfig {
                    name: format!("p{i}"),
                    priority: i,
                    ..crate::provider::setup_bench::provider(Api::Anthropic)
                },
                transport: Arc::new(Instantly) as Arc<dyn Transport>,
            })
            .collect();
        let router = Arc::new(Router::new(providers, RoutingConfig::default(), None, 1));
        let chat = crate::provider::setup_bench::agent_conversation();
        let n = 1000;
        let mut setup = Vec::with_capacity(n);
        let start = std::time::Instant::now();
        for _ in 0..n {
            for e in ask(&router, chat.clone()).await {
                if let StreamEvent::Started { setup_us, .. } = e {
                    setup.push(setup_us);
                }
            }
        }
        let whole = start.elapsed().as_secs_f64() * 1e6 / n as f64;
        setup.sort_unstable();
        println!(
            "router: setup_us p50 {} p99 {}; route() with an instant answer {whole:.1} µs \
             (conversation clone included)",
            setup[n / 2],
            setup[n * 99 / 100]
        );
    });
}

/// A client that stops reading mid-answer (its channel full, nothing read for
/// `CLIENT_READ_TIMEOUT`) has its request given up: the provider's only seat is free again
/// for the next request, and the provider is not blamed for it.
#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_given_up_and_frees_its_seat() {
    let h = harness_with(1, no_jitter(), |_, cfg| cfg.max_concurrent = 1);
    let words: Vec<String> = (0..50).map(|i| format!(" w{i}")).collect();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    h.scripts[0].push([answer(&refs)]);
    h.scripts[0].push([answer(&["next"])]);
    let (tx, rx) = mpsc::channel(1);
    let t0 = tokio::time::Instant::now();
    let task = tokio::spawn({
        let r = h.router.clone();
        async move {
            r.route(req("x"), Emitter::new(1, tx), CancellationToken::new())
                .await
        }
    });
    tokio::time::timeout(CLIENT_READ_TIMEOUT * 3, task)
        .await
        .expect("a request whose client reads nothing was never given up")
        .unwrap();
    assert!(t0.elapsed() >= CLIENT_READ_TIMEOUT);
    drop(rx);
    let t1 = tokio::time::Instant::now();
    let ev = ask(&h.router, req("y")).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{:?}", ev.last());
    assert!(t1.elapsed() < Duration::from_secs(5), "{:?}", t1.elapsed());
}

/// Found by driving the daemon under random faults: a request whose first provider failed
/// (a 503, a stall) and whose others were all paused by long `Retry-After`s waited out those
/// pauses (25 s) although the provider that had just failed was ready again at once. The rest
/// of a round is waited for only as long as the next round's backoff: then every candidate is
/// tried again.
#[tokio::test(start_paused = true)]
async fn a_failed_provider_is_tried_again_rather_than_waiting_out_others_pauses() {
    let h = harness(2, no_jitter());
    // Beta (second choice) is paused for 25 s by a 429 on an earlier request.
    h.scripts[1].push([Step::Fail(err(ErrorKind::RateLimited, Some(25)))]);
    let mut pin_beta = req("prime");
    pin_beta.pin = Some(Pin {
        provider: Some("beta".into()),
        model: None,
    });
    let primed = ask(&h.router, pin_beta);
    let _ = tokio::time::timeout(Duration::from_millis(200), primed).await;
    assert_eq!(calls(&h), [0, 1]);
    // Alpha stalls (the watchdog gives up on it after the first-token timeout), then answers.
    h.scripts[0].push([Step::Hang, answer(&["second"])]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{:?}", ev.last());
    assert_eq!(calls(&h), [2, 1]);
    assert!(
        t0.elapsed() < RoutingConfig::default().first_token_timeout + Duration::from_secs(3),
        "waited {:?} for a paused provider",
        t0.elapsed()
    );
}

/// A retry that waits for its provider's retry budget (spent in a fault storm) does not keep
/// new requests off that provider: the budget limits retries, and a first attempt is free to go.
#[tokio::test(start_paused = true)]
async fn a_retry_waiting_for_its_budget_lets_first_attempts_through() {
    let h = harness(1, no_jitter());
    // Seven requests that fail once and are retried spend the budget (5 + 20 % of requests).
    for _ in 0..7 {
        h.scripts[0].push([
            Step::Fail(err(ErrorKind::ServerError, None)),
            answer(&["ok"]),
        ]);
    }
    for n in 0..7 {
        let ev = ask(&h.router, req(&format!("r{n}"))).await;
        assert_eq!(done_provider(&ev), Some("alpha"), "r{n}: {:?}", ev.last());
    }
    // The eighth fails too, and its retry has to wait for the budget's window to move on.
    h.scripts[0].push([
        Step::Fail(err(ErrorKind::ServerError, None)),
        answer(&["new"]),
        answer(&["retried"]),
    ]);
    let waiting = tokio::spawn({
        let r = h.router.clone();
        async move { ask(&r, req("r7")).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.scripts[0].calls(), 15, "the eighth request failed once");
    let t0 = Instant::now();
    let ev = ask(&h.router, req("r8")).await;
    assert_eq!(final_text(&ev), "new", "{:?}", ev.last());
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "a first attempt waited {:?} behind a retry's budget",
        t0.elapsed()
    );
    let ev = waiting.await.unwrap();
    assert_eq!(final_text(&ev), "retried", "{:?}", ev.last());
}

/// Claude Code's 1M-token context beta makes an Anthropic provider fit a prompt its
/// configured window (200k) would not: without the beta the prompt goes to a provider whose
/// window fits, with it to Anthropic, first in rank.
#[tokio::test(start_paused = true)]
async fn the_1m_context_beta_lets_anthropic_take_a_long_prompt() {
    let h = harness_with(2, no_jitter(), |i, cfg| {
        cfg.context_window = Some(if i == 0 { 200_000 } else { 2_000_000 });
    });
    for s in &h.scripts {
        s.push([answer(&["a"]), answer(&["b"])]);
    }
    let long = "word ".repeat(300_000 * 4 / 5);
    let plain = req(&long);
    assert_eq!(
        done_provider(&ask(&h.router, plain.clone()).await),
        Some("beta")
    );
    let mut with_beta = plain;
    with_beta.options.anthropic_beta = vec!["context-1m-2025-08-07".into()];
    assert_eq!(
        done_provider(&ask(&h.router, with_beta).await),
        Some("alpha")
    );
}

/// Every provider rate-limits with a short `Retry-After`, again and again, for longer than the
/// retry rounds last (about 6 s here). The request waits, since the queue allows 30 s, and is
/// answered when the first provider comes back: failing it while a provider is a second from
/// ready broke a session that the product promised to keep.
#[tokio::test(start_paused = true)]
async fn rounds_go_on_while_the_queue_limit_allows() {
    let h = harness(2, no_jitter());
    // Seven each: more attempts than the cap allows for failures (12 with two providers),
    // which waited-out pauses do not count toward.
    let limited = Step::Fail(err(ErrorKind::RateLimited, Some(1)));
    h.scripts[0].push(vec![limited.clone(); 7]);
    h.scripts[1].push(vec![limited; 7]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("hi")).await;
    assert!(done_provider(&ev).is_some(), "{ev:?}");
    assert_eq!(final_text(&ev), "ok");
    assert_eq!(h.scripts[0].calls() + h.scripts[1].calls(), 15);
    assert!(t0.elapsed() < Duration::from_secs(12), "{:?}", t0.elapsed());
}

/// Providers that fail without saying when to come back (here at once, with a timeout) do not
/// get rounds beyond the configured ones: the client hears of it after the backoff steps'
/// 1.6 s, as before, not after the queue's 30 s.
#[tokio::test(start_paused = true)]
async fn failures_that_say_nothing_end_after_the_configured_rounds() {
    let h = harness(2, no_jitter());
    let broken = Step::Fail(err(ErrorKind::Timeout, None));
    h.scripts[0].push(vec![broken.clone(); 100]);
    h.scripts[1].push(vec![broken; 100]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("hi")).await;
    assert_eq!(error_kind(&ev), Some(ErrorKind::Timeout), "{ev:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(h.scripts[0].calls() + h.scripts[1].calls() <= 8);
}

/// A reload that swaps the providers' priorities while a request streams: what that request
/// learns afterwards on the old router (beta's 429, Retry-After 20 s) reaches the new one, and
/// the next request is not sent into beta's pause though beta now ranks first (found by a
/// chaos run: a snapshot taken at the reload lost it).
#[tokio::test(start_paused = true)]
async fn a_reload_that_reorders_providers_keeps_what_streaming_requests_learn() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([
        Step::Stream(vec![
            text("Hel"),
            (300, Err(ProviderError::new(ErrorKind::Network, "cut"))),
        ]),
        answer(&["lo"]),
        answer(&["ok"]),
    ]);
    h.scripts[1].push([Step::Fail(err(ErrorKind::RateLimited, Some(20)))]);
    let old = h.router.clone();
    let first = tokio::spawn(async move { ask(&old, req("first")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut providers = h.router.providers().to_vec();
    providers.reverse();
    for (i, p) in providers.iter_mut().enumerate() {
        p.cfg.priority = i as u32;
    }
    let new = h.router.succeed(providers, no_jitter());
    let ev = first.await.unwrap();
    assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
    assert_eq!(h.scripts[1].calls(), 1);
    let ev = ask(&Arc::new(new), req("next")).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
    assert_eq!(h.scripts[1].calls(), 1, "sent into beta's pause");
}

/// A reload that adds a provider leaves the old router whole: a request that reaches it after
/// the reload (one accepted just before) is planned, answered and shown in its status over its
/// own providers (sharing a longer book, it ranked one it could not index and panicked: found
/// by a review).
#[tokio::test(start_paused = true)]
async fn the_old_router_still_serves_after_a_reload_that_adds_a_provider() {
    let h = harness(2, no_jitter());
    let mut providers = h.router.providers().to_vec();
    providers.push(RoutedProvider {
        cfg: ProviderConfig {
            api_key: Some(Secret::new("k")),
            priority: 2,
            ..ProviderConfig::new("gamma", Api::Openai, "http://127.0.0.1:1", "gamma-model")
        },
        transport: Arc::new(Script::default()) as Arc<dyn Transport>,
    });
    let new = h.router.succeed(providers, no_jitter());
    assert_eq!(new.status().len(), 3);
    let ev = ask(&h.router, req("hi")).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
    assert_eq!(h.router.status().len(), 2);
}

/// A client that stopped reading (its queue full) does not hold a fresh provider's first
/// response: its quotas are counted before the client is written to, so other sessions are
/// served at once instead of waiting out the queue limit behind it (found by a chaos run: 30 s,
/// then a `rate_limited` error with no provider rate-limited).
#[tokio::test(start_paused = true)]
async fn a_client_that_stopped_reading_does_not_hold_a_fresh_providers_quota() {
    let h = harness(1, no_jitter());
    h.scripts[0].push([
        answer_with(quota(100, 99, 60_000), &["stuck"]),
        answer_with(quota(100, 98, 60_000), &["ok"]),
    ]);
    // A queue with room for nothing, never read.
    let (tx, _unread) = mpsc::channel(1);
    tx.try_send(Response::Event {
        id: 1,
        event: StreamEvent::TextDelta { text: "x".into() },
    })
    .unwrap();
    let stuck = {
        let router = h.router.clone();
        tokio::spawn(async move {
            router
                .route(req("stuck"), Emitter::new(1, tx), CancellationToken::new())
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t0 = Instant::now();
    let ev = ask(&h.router, req("next")).await;
    assert_eq!(final_text(&ev), "ok", "{ev:?}");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    stuck.abort();
}

/// One request fails again and again (5xx, no `Retry-After`) at providers that answer every
/// other request meanwhile: they work, and its failures are bad luck, so it keeps its turn past
/// the configured rounds, up to the attempt limit (12 with two providers; it is answered at the
/// 12th, where it used to end at the 11th). 1 run in 60 of the chaos test below lost a request
/// to rounds spent that way.
#[tokio::test(start_paused = true)]
async fn an_unlucky_request_goes_on_while_its_providers_answer_others() {
    let unlucky = Arc::new(Unlucky::new(11));
    let providers = (0..2)
        .map(|i| RoutedProvider {
            cfg: ProviderConfig {
                api_key: Some(Secret::new("k")),
                priority: i as u32,
                ..ProviderConfig::new(format!("p{i}"), Api::Openai, "http://x", "m")
            },
            transport: unlucky.clone() as Arc<dyn Transport>,
        })
        .collect();
    let router = Arc::new(Router::new(providers, no_jitter(), None, 1));
    let others = {
        let router = router.clone();
        tokio::spawn(async move {
            for n in 0..40 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let ev = ask(&router, ChatRequest::user_text(100 + n, "hi")).await;
                assert_eq!(final_text(&ev), "ok", "{ev:?}");
            }
        })
    };
    let ev = ask(&router, ChatRequest::user_text(Unlucky::ID, "hi")).await;
    assert_eq!(final_text(&ev), "ok", "{ev:?}");
    assert_eq!(unlucky.failed.load(Ordering::SeqCst), 11);
    others.await.unwrap();
}

/// Fails request [`Unlucky::ID`] its first `n` times, wherever it goes; answers the rest.
struct Unlucky {
    left: AtomicUsize,
    failed: AtomicUsize,
}

impl Unlucky {
    const ID: u64 = 7;

    fn new(n: usize) -> Self {
        Unlucky {
            left: AtomicUsize::new(n),
            failed: AtomicUsize::new(0),
        }
    }
}

impl Transport for Unlucky {
    fn open(&self, req: &UpstreamRequest<'_>) -> OpenFuture {
        let fail = req.chat.id == Unlucky::ID
            && self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if fail {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if fail {
                return Err(err(ErrorKind::ServerError, None));
            }
            let items = vec![
                (2, Ok(Delta::Text("ok".into()))),
                (0, Ok(Delta::Finish(FinishReason::Stop))),
            ];
            let s = futures_util::stream::unfold(items.into_iter(), |mut it| async move {
                let (delay, item) = it.next()?;
                tokio::time::sleep(Duration::from_millis(delay)).await;
                Some((item, it))
            });
            Ok(Box::pin(s) as DeltaStream)
        })
    }
}

/// Providers that fail without saying when to come back are not retried forever: their
/// breakers open, and a request waits for their cooldown only as long as the queue allows.
#[tokio::test(start_paused = true)]
async fn failures_without_end_stop_at_the_attempts_cap() {
    let h = harness(2, no_jitter());
    let broken = Step::Fail(err(ErrorKind::ServerError, None));
    h.scripts[0].push(vec![broken.clone(); 100]);
    h.scripts[1].push(vec![broken; 100]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("hi")).await;
    assert_eq!(error_kind(&ev), Some(ErrorKind::ServerError), "{ev:?}");
    // Each provider's failure is named once, the last one's too.
    let Some(StreamEvent::Error { message, .. }) = ev.last() else {
        panic!("{ev:?}")
    };
    assert_eq!(
        message,
        "every provider failed (alpha: scripted server_error; beta: scripted server_error)"
    );
    let calls = h.scripts[0].calls() + h.scripts[1].calls();
    assert!(calls <= 12, "{calls} attempts");
    // Both breakers open after two rounds; the request waits for their first probe (30 s, the
    // queue limit), and no longer.
    assert!(t0.elapsed() < Duration::from_secs(35), "{:?}", t0.elapsed());
}

/// Claude Code's web search (an Anthropic server tool) goes to an Anthropic provider even when
/// another ranks first: elsewhere the tool cannot run and the model would answer without
/// searching. Without server tools the ranking decides.
#[tokio::test(start_paused = true)]
async fn server_tools_go_to_anthropic_first() {
    let h = harness_with(2, no_jitter(), |i, cfg| {
        if i == 0 {
            cfg.priority = 5;
        }
    });
    assert_eq!(h.router.providers[0].cfg.api, crate::config::Api::Anthropic);
    let ev = ask(&h.router, req("plain")).await;
    assert_eq!(done_provider(&ev), Some("beta"));
    let mut search = req("search");
    search.options.server_tools =
        vec![r#"{"type":"web_search_20250305","name":"web_search"}"#.into()];
    let ev = ask(&h.router, search.clone()).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
    // Paused for 2 s, Anthropic is waited for: the search is worth it.
    h.scripts[0].push([Step::Fail(err(ErrorKind::RateLimited, Some(2)))]);
    let t0 = Instant::now();
    let ev = ask(&h.router, search.clone()).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // Out for a minute, the others answer (without the tool) after `PREFER_WAIT`.
    h.scripts[0].push([Step::Fail(err(ErrorKind::RateLimited, Some(60)))]);
    let t0 = Instant::now();
    let ev = ask(&h.router, search).await;
    assert_eq!(done_provider(&ev), Some("beta"), "{ev:?}");
    assert!(
        t0.elapsed() <= PREFER_WAIT + Duration::from_secs(1),
        "{:?}",
        t0.elapsed()
    );
}

/// So does a request naming an MCP server or a code-execution container (Anthropic's
/// `mcp_servers`, `container`): elsewhere the model would have none of the server's tools and
/// nobody would say so. Anthropic's `top_k` alone binds nothing.
#[tokio::test(start_paused = true)]
async fn mcp_servers_go_to_anthropic_first() {
    let h = harness_with(2, no_jitter(), |i, cfg| {
        if i == 0 {
            cfg.priority = 5;
        }
    });
    let native =
        |name: &str, json: &str| mythos_protocol::NativeField::new("anthropic", name, json);
    let mut top_k = req("plain");
    top_k.options.native = vec![native("top_k", "5")];
    assert_eq!(done_provider(&ask(&h.router, top_k).await), Some("beta"));
    for field in [
        native(
            "mcp_servers",
            r#"[{"type":"url","url":"https://x","name":"x"}]"#,
        ),
        native("container", r#""container_1""#),
    ] {
        let mut mcp = req("use the server");
        mcp.options.native = vec![field];
        let ev = ask(&h.router, mcp).await;
        assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
    }
}

/// A web search runs at Anthropic between its call and its results, with nothing but pings for
/// longer than text may pause (20 s here, the stall limit 15 s): the answer is not cut and sent
/// elsewhere, where the client would get an error, since the search cannot be taken back.
#[tokio::test(start_paused = true)]
async fn a_server_tool_may_work_in_silence() {
    let h = harness(2, no_jitter());
    let call = r#"{"type":"server_tool_use","id":"s1","name":"web_search","input":{"query":"q"}}"#;
    let results = r#"{"type":"web_search_tool_result","tool_use_id":"s1","content":[]}"#;
    let mut items = vec![(100, Ok(Delta::ServerBlock(call.into())))];
    for _ in 0..4 {
        items.push((5_000, Ok(Delta::KeepAlive)));
    }
    items.push((0, Ok(Delta::ServerBlock(results.into()))));
    items.push(text("found"));
    items.push((0, Ok(Delta::Finish(FinishReason::Stop))));
    h.scripts[0].push([Step::Stream(items)]);
    let ev = ask(&h.router, req("search")).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
    let blocks = ev
        .iter()
        .filter(|e| matches!(e, StreamEvent::ServerBlock { .. }))
        .count();
    assert_eq!(blocks, 2);
    assert_eq!(final_text(&ev), "found");
}

const SEARCH_CALL: &str =
    r#"{"type":"server_tool_use","id":"s1","name":"web_search","input":{"query":"q"}}"#;
const SEARCH_RESULTS: &str = r#"{"type":"web_search_tool_result","tool_use_id":"s1","content":[]}"#;

/// A web search's answer cut after its results, with text before and after them.
fn search_then_cut(h: &Harness) {
    h.scripts[0].push([Step::Stream(vec![
        text("Let me look. "),
        (10, Ok(Delta::ServerBlock(SEARCH_CALL.into()))),
        (10, Ok(Delta::ServerBlock(SEARCH_RESULTS.into()))),
        text("Tokio is"),
        text(" an async"),
        (10, Err(ProviderError::new(ErrorKind::Network, "cut"))),
    ])]);
}

/// A web search's answer cut mid-text (the likeliest place: the text streams after the search)
/// is continued at another Anthropic provider, given the search's blocks back where they came,
/// as Anthropic continues a turn it paused: the client keeps its one search and reads the
/// answer whole. Before, the answer restarted, and a Messages client got an error, since the
/// blocks it had could not be taken back.
#[tokio::test(start_paused = true)]
async fn a_web_search_answer_cut_mid_text_is_continued_at_anthropic() {
    let h = harness_with(2, no_jitter(), |_, c| c.api = Api::Anthropic);
    search_then_cut(&h);
    h.scripts[1].push([answer(&[" runtime."])]);
    let ev = ask(&h.router, req("search")).await;
    assert_eq!(done_provider(&ev), Some("beta"), "{ev:?}");
    assert_eq!(final_text(&ev), "Let me look. Tokio is an async runtime.");
    let blocks = ev
        .iter()
        .filter(|e| matches!(e, StreamEvent::ServerBlock { .. }))
        .count();
    assert_eq!(blocks, 2, "{ev:?}");
    assert!(
        ev.iter().any(|e| matches!(
            e,
            StreamEvent::Rerouted {
                mode: RerouteMode::Continue,
                ..
            }
        )),
        "{ev:?}"
    );
    assert_eq!(
        h.scripts[1].prefills.lock().unwrap()[0].as_deref(),
        Some("Let me look. Tokio is an async")
    );
    // The cut attempt never said what it used, but its search was billed.
    let done = ev.iter().find_map(|e| match e {
        StreamEvent::Done(d) => Some(d),
        _ => None,
    });
    assert_eq!(done.unwrap().usage.web_searches, 1, "{ev:?}");
    let at = "Let me look. ".len();
    assert_eq!(
        h.scripts[1].prefill_blocks.lock().unwrap()[0],
        [
            crate::provider::PrefillBlock {
                at,
                json: SEARCH_CALL.into()
            },
            crate::provider::PrefillBlock {
                at,
                json: SEARCH_RESULTS.into()
            },
        ]
    );
}

/// A continuation after the search's results that starts by repeating the text it was shown
/// has the repeat cut at the seam, and only the text after the blocks counts as that tail.
#[tokio::test(start_paused = true)]
async fn a_continued_search_answer_repeats_nothing() {
    let h = harness_with(2, no_jitter(), |_, c| c.api = Api::Anthropic);
    search_then_cut(&h);
    h.scripts[1].push([answer(&["Tokio is an async", " runtime."])]);
    let ev = ask(&h.router, req("search")).await;
    assert_eq!(final_text(&ev), "Let me look. Tokio is an async runtime.");
}

/// A search's answer cut while Anthropic's retry budget is spent (a storm of cuts) is still
/// continued there, not restarted at a provider that never saw the search, even with a short
/// queue limit.
#[tokio::test(start_paused = true)]
async fn a_search_answer_is_continued_whatever_the_retry_budget() {
    let h = harness(
        2,
        RoutingConfig {
            max_queue_wait: Duration::from_millis(500),
            ..no_jitter()
        },
    );
    search_then_cut(&h);
    h.scripts[0].push([answer(&[" runtime."])]);
    let mut search = req("search");
    search.options.server_tools =
        vec![r#"{"type":"web_search_20250305","name":"web_search"}"#.into()];
    let asking = tokio::spawn({
        let r = h.router.clone();
        async move { ask(&r, search).await }
    });
    // While it streams, other requests' retries spend the budget.
    tokio::time::sleep(Duration::from_millis(20)).await;
    {
        let mut book = h.router.health();
        let now = Instant::now();
        while book.providers[0].budget.withdraw(now) {}
    }
    let ev = asking.await.unwrap();
    assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
    assert_eq!(final_text(&ev), "Let me look. Tokio is an async runtime.");
}

/// A search's answer cut, then Anthropic paused for 12 s (beyond the 10 s a request with a
/// server tool keeps to Anthropic before anything else): the answer waits for Anthropic within
/// the queue limit and is continued there, rather than restarted at a provider that never saw
/// the search (an error for a Messages client).
#[tokio::test(start_paused = true)]
async fn a_search_answer_waits_for_anthropic_within_the_queue_limit() {
    let h = harness(2, no_jitter());
    search_then_cut(&h);
    h.scripts[0].push([
        Step::Fail(err(ErrorKind::RateLimited, Some(12))),
        answer(&[" runtime."]),
    ]);
    let mut search = req("search");
    search.options.server_tools =
        vec![r#"{"type":"web_search_20250305","name":"web_search"}"#.into()];
    let t0 = Instant::now();
    let ev = ask(&h.router, search).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
    assert_eq!(final_text(&ev), "Let me look. Tokio is an async runtime.");
    assert!(t0.elapsed() < Duration::from_secs(14), "{:?}", t0.elapsed());
    assert_eq!(h.scripts[1].calls(), 0);
}

/// A search's continuation is not held back by the retry budget, and does not pay into it
/// either: paying in as a first attempt does, it refilled the budget of a provider cutting
/// every stream, letting other requests' retries through (found by a review).
#[tokio::test(start_paused = true)]
async fn a_search_continuation_does_not_refill_the_retry_budget() {
    async fn room_after(search: bool) -> u32 {
        let h = harness(
            1,
            RoutingConfig {
                retry_budget_ratio: 1.0,
                ..no_jitter()
            },
        );
        if search {
            search_then_cut(&h);
        } else {
            h.scripts[0].push([Step::Stream(vec![
                text("Let me look. "),
                text("Tokio is"),
                text(" an async"),
                (10, Err(ProviderError::new(ErrorKind::Network, "cut"))),
            ])]);
        }
        h.scripts[0].push([answer(&[" runtime."])]);
        let ev = ask(&h.router, req("search")).await;
        assert_eq!(final_text(&ev), "Let me look. Tokio is an async runtime.");
        assert_eq!(h.scripts[0].calls(), 2);
        let mut book = h.router.health();
        let now = Instant::now();
        let mut room = 0;
        while book.providers[0].budget.withdraw(now) {
            room += 1;
        }
        room
    }
    let plain = room_after(false).await;
    let search = room_after(true).await;
    assert!(
        search <= plain + 1,
        "retries left: plain {plain}, search {search}"
    );
}

/// Only Anthropic can continue an answer built on its search (another provider never saw it),
/// and not while the search ran (its call has no results to send back with it): such an
/// answer restarts.
#[tokio::test(start_paused = true)]
async fn a_search_answer_restarts_where_it_cannot_be_continued() {
    // The next provider speaks the OpenAI format.
    let h = harness(2, no_jitter());
    search_then_cut(&h);
    let ev = ask(&h.router, req("search")).await;
    assert_eq!(done_provider(&ev), Some("beta"), "{ev:?}");
    assert!(ev.iter().any(|e| matches!(
        e,
        StreamEvent::Rerouted {
            mode: RerouteMode::Restart,
            ..
        }
    )));
    assert_eq!(h.scripts[1].prefills.lock().unwrap()[0], None);
    // Cut while the search ran.
    let h = harness_with(2, no_jitter(), |_, c| c.api = Api::Anthropic);
    h.scripts[0].push([Step::Stream(vec![
        (10, Ok(Delta::ServerBlock(SEARCH_CALL.into()))),
        (10, Err(ProviderError::new(ErrorKind::Network, "cut"))),
    ])]);
    let ev = ask(&h.router, req("search")).await;
    assert!(ev.iter().any(|e| matches!(
        e,
        StreamEvent::Rerouted {
            mode: RerouteMode::Restart,
            ..
        }
    )));
    assert!(h.scripts[1].prefill_blocks.lock().unwrap()[0].is_empty());
}

/// A PDF counts by its pages where they can be read, never by the length of its base64: a
/// 4 MB scan of ten pages was "667,000 tokens", too large for every 200k window and for an
/// OpenAI per-minute quota, so it could go nowhere.
#[test]
fn a_pdf_is_estimated_by_its_pages() {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let with = |data: String| {
        let mut r = ChatRequest::user_text(1, "");
        r.messages[0].content = vec![ContentBlock::Document {
            source: mythos_protocol::ImageSource::Base64 {
                media_type: "application/pdf".into(),
                data,
            },
            title: None,
        }];
        estimate_input_tokens(&r)
    };
    let three = b"%PDF-1.7 1 0 obj <</Type /Pages /Kids [2 0 R 3 0 R 4 0 R]>> \
        2 0 obj <</Type /Page>> 3 0 obj <</Type/Page>> 4 0 obj <</Type /Page /Parent 1 0 R>>";
    let t = with(b64(three));
    assert!((7_400..7_700).contains(&t), "{t}");
    // Pages in compressed object streams cannot be counted: a share of the size, capped.
    let mut scan = b"%PDF-1.7 ".to_vec();
    scan.resize(4_000_000, b'x');
    let t = with(b64(&scan));
    assert!((39_000..41_000).contains(&t), "{t}");
    scan.resize(12_000_000, b'x');
    assert!(with(b64(&scan)) <= 100_100);
}

/// A provider that cannot read an attachment (DeepSeek and many local servers answer a PDF
/// or an image with a `400`) hands the request to one that can; the client sees the `400`
/// only when every provider refused. A `400` without attachments gets one second opinion.
#[tokio::test(start_paused = true)]
async fn an_attachment_one_provider_refuses_goes_to_another() {
    let h = harness(2, no_jitter());
    let mut with_pdf = req("read this");
    with_pdf.messages[0].content.push(ContentBlock::Document {
        source: mythos_protocol::ImageSource::Base64 {
            media_type: "application/pdf".into(),
            data: "JVBERi0=".into(),
        },
        title: None,
    });
    h.scripts[0].push([Step::Fail(err(ErrorKind::BadRequest, None))]);
    let ev = ask(&h.router, with_pdf.clone()).await;
    assert_eq!(done_provider(&ev), Some("beta"), "{ev:?}");
    h.scripts[0].push([Step::Fail(err(ErrorKind::BadRequest, None))]);
    h.scripts[1].push([Step::Fail(err(ErrorKind::BadRequest, None))]);
    let ev = ask(&h.router, with_pdf).await;
    assert_eq!(error_kind(&ev), Some(ErrorKind::BadRequest), "{ev:?}");
    h.scripts[0].push([Step::Fail(err(ErrorKind::BadRequest, None))]);
    h.scripts[1].push([Step::Fail(err(ErrorKind::BadRequest, None))]);
    let ev = ask(&h.router, req("plain")).await;
    assert_eq!(error_kind(&ev), Some(ErrorKind::BadRequest), "{ev:?}");
    assert_eq!(h.scripts[1].calls(), 3);
}

/// A PDF goes to a provider that reads it even when one that does not (DeepSeek) ranks
/// first, as it does for background work; with no reader free, DeepSeek still answers.
#[tokio::test(start_paused = true)]
async fn a_pdf_goes_to_a_provider_that_reads_it() {
    let h = harness_with(2, no_jitter(), |i, cfg| {
        if i == 0 {
            cfg.priority = 5;
        } else {
            cfg.model = "deepseek-chat".into();
        }
    });
    let ev = ask(&h.router, req("plain")).await;
    assert_eq!(done_provider(&ev), Some("beta"));
    let mut pdf = req("read this");
    pdf.messages[0].content.push(ContentBlock::Document {
        source: mythos_protocol::ImageSource::Base64 {
            media_type: "application/pdf".into(),
            data: "JVBERi0=".into(),
        },
        title: None,
    });
    let ev = ask(&h.router, pdf.clone()).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
    // A reader cut mid-answer: the answer goes on at a reader (here the same one, after its
    // backoff), not at DeepSeek, which would continue about a file it never saw.
    h.scripts[0].push([Step::Stream(vec![
        text("I"),
        text(" read"),
        (10, Err(ProviderError::new(ErrorKind::Network, "cut"))),
    ])]);
    let ev = ask(&h.router, pdf.clone()).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
    h.scripts[0].push([Step::Fail(err(ErrorKind::RateLimited, Some(60)))]);
    let ev = ask(&h.router, pdf).await;
    assert_eq!(done_provider(&ev), Some("beta"), "{ev:?}");
}

/// Once a server tool's results are in, silence is a stall again at the text's pace: a stream
/// that stalled after its search results waited 90 s (found by a chaos run).
#[tokio::test(start_paused = true)]
async fn silence_after_a_server_tools_results_is_a_stall() {
    let h = harness(2, no_jitter());
    let call = r#"{"type":"server_tool_use","id":"s1","name":"web_search","input":{"query":"q"}}"#;
    let results = r#"{"type":"web_search_tool_result","tool_use_id":"s1","content":[]}"#;
    h.scripts[0].push([Step::Stream(vec![
        (100, Ok(Delta::ServerBlock(call.into()))),
        (100, Ok(Delta::ServerBlock(results.into()))),
        (60_000, Ok(Delta::Text("late".into()))),
    ])]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("search")).await;
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert!(
        ev.iter().any(|e| matches!(e, StreamEvent::Rerouted { .. })),
        "{ev:?}"
    );
}

fn with_a_pdf(text: &str) -> ChatRequest {
    let mut pdf = req(text);
    pdf.messages[0].content.push(ContentBlock::Document {
        source: mythos_protocol::ImageSource::Base64 {
            media_type: "application/pdf".into(),
            data: "JVBERi0=".into(),
        },
        title: None,
    });
    pdf
}

fn reader_then_deepseek() -> Harness {
    harness_with(2, no_jitter(), |i, cfg| {
        if i == 0 {
            cfg.priority = 5;
        } else {
            cfg.model = "deepseek-chat".into();
        }
    })
}

/// The mid-stream PDF case (a PDF answer cut mid-stream) with an answer that streamed
/// for more than PREFER_WAIT is continued at a reader, not by DeepSeek, which never saw the file
/// (found by a review).
#[tokio::test(start_paused = true)]
async fn a_pdf_answer_cut_after_a_long_stream_stays_at_a_reader() {
    let h = reader_then_deepseek();
    let mut items: Vec<_> = (0..12)
        .map(|_| (1_000, Ok(Delta::Text(" w".into()))))
        .collect();
    items.push((10, Err(ProviderError::new(ErrorKind::Network, "cut"))));
    h.scripts[0].push([Step::Stream(items)]);
    let ev = ask(&h.router, with_a_pdf("read this")).await;
    assert_eq!(
        done_provider(&ev),
        Some("alpha"),
        "{:?}",
        ev.iter()
            .filter(|e| matches!(e, StreamEvent::Rerouted { .. }))
            .collect::<Vec<_>>()
    );
}

/// A provider that fails without saying when to come back, beside one whose key was
/// rejected earlier ends after the configured rounds: a provider that can never take it does
/// not make the round one whose providers said when to come back (found by a review).
#[tokio::test(start_paused = true)]
async fn a_hard_failure_beside_a_rejected_key_ends_after_the_rounds() {
    let h = harness(2, no_jitter());
    h.scripts[1].push([Step::Fail(err(ErrorKind::Auth, None))]);
    let mut pin_beta = req("prime");
    pin_beta.pin = Some(Pin {
        provider: Some("beta".into()),
        model: None,
    });
    let _ = ask(&h.router, pin_beta).await;
    for n in 0..15 {
        let ev = ask(&h.router, req(&format!("ok{n}"))).await;
        assert_eq!(done_provider(&ev), Some("alpha"));
    }
    h.scripts[0].push(vec![Step::Fail(err(ErrorKind::Timeout, None)); 100]);
    let c0 = h.scripts[0].calls();
    let t0 = Instant::now();
    let ev = ask(&h.router, req("hi")).await;
    let calls = h.scripts[0].calls() - c0;
    assert_eq!(error_kind(&ev), Some(ErrorKind::Timeout), "{ev:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3) && calls <= 8,
        "{:?} {calls} calls",
        t0.elapsed()
    );
}

/// The same failure with no second provider ends after the configured rounds.
#[tokio::test(start_paused = true)]
async fn a_hard_failure_alone_ends_after_the_rounds() {
    let h = harness(1, no_jitter());
    for n in 0..15 {
        ask(&h.router, req(&format!("ok{n}"))).await;
    }
    h.scripts[0].push(vec![Step::Fail(err(ErrorKind::Timeout, None)); 100]);
    let c0 = h.scripts[0].calls();
    let t0 = Instant::now();
    let ev = ask(&h.router, req("hi")).await;
    let calls = h.scripts[0].calls() - c0;
    assert_eq!(error_kind(&ev), Some(ErrorKind::Timeout), "{ev:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3) && calls <= 8,
        "{:?} {calls} calls",
        t0.elapsed()
    );
}

/// A reader failing hard: after the preferring rounds are spent, the reader is still
/// not picked first again once the others may answer.
#[tokio::test(start_paused = true)]
async fn once_preferring_is_over_the_failed_reader_is_not_tried_again() {
    let h = reader_then_deepseek();
    for n in 0..15 {
        ask(&h.router, with_a_pdf(&format!("ok{n}"))).await;
    }
    h.scripts[0].push(vec![Step::Fail(err(ErrorKind::ServerError, None)); 100]);
    let c0 = h.scripts[0].calls();
    let ev = ask(&h.router, with_a_pdf("x")).await;
    let calls = h.scripts[0].calls() - c0;
    assert_eq!(done_provider(&ev), Some("beta"));
    assert!(calls <= 5, "{calls}");
}

/// A preferred provider whose key was rejected earlier is not waited for.
#[tokio::test(start_paused = true)]
async fn a_reader_whose_key_was_rejected_is_not_waited_for() {
    let h = reader_then_deepseek();
    h.scripts[0].push([Step::Fail(err(ErrorKind::Auth, None))]);
    let mut pin = req("prime");
    pin.pin = Some(Pin {
        provider: Some("alpha".into()),
        model: None,
    });
    let _ = ask(&h.router, pin).await;
    let t0 = Instant::now();
    let ev = ask(&h.router, with_a_pdf("x")).await;
    assert_eq!(done_provider(&ev), Some("beta"));
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
}

/// As with a rejected key (a 500 is retried on the same provider too: 3.2 s in all), with beta's breaker open (an outage) instead of a rejected key.
#[tokio::test(start_paused = true)]
async fn a_hard_failure_beside_an_open_breaker_ends_after_the_rounds() {
    let h = harness(2, no_jitter());
    for n in 0..15 {
        ask(&h.router, req(&format!("ok{n}"))).await;
    }
    trip(&h, 1);
    h.scripts[0].push(vec![Step::Fail(err(ErrorKind::ServerError, None)); 100]);
    // Still down: tried once when alpha's breaker opens too (every provider cooling down).
    h.scripts[1].push(vec![Step::Fail(err(ErrorKind::ServerError, None)); 100]);
    let c0 = h.scripts[0].calls();
    let t0 = Instant::now();
    let ev = ask(&h.router, req("hi")).await;
    assert!(error_kind(&ev).is_some(), "{ev:?}");
    let calls = h.scripts[0].calls() - c0;
    assert!(
        t0.elapsed() < Duration::from_secs(4) && calls <= 8 && h.scripts[1].calls() <= 1,
        "{:?} {calls} calls, {} at beta",
        t0.elapsed(),
        h.scripts[1].calls()
    );
}

/// A request back in the queue for another attempt (its provider answered `429`) keeps its
/// place ahead of requests that came after it. Put at the back, the first requests of a burst
/// waited longest and ran out of time while later ones were answered (found by a chaos run: a
/// fixed window of 4 requests, 14 clients).
#[tokio::test(start_paused = true)]
async fn a_request_back_from_a_429_keeps_its_place_in_the_queue() {
    let h = harness(1, no_jitter());
    // One request a second, none left now.
    h.scripts[0].push([answer_with(quota(1, 0, 1_000), &["warm"])]);
    ask(&h.router, req("warm")).await;
    let mut limited = err(ErrorKind::RateLimited, Some(1));
    limited.limits = Some(Box::new(quota(1, 0, 1_000)));
    h.scripts[0].push([Step::Fail(limited)]);
    for w in ["a", "b", "c", "d"] {
        h.scripts[0].push([answer_with(quota(1, 0, 1_000), &[w])]);
    }
    let mut tasks = Vec::new();
    for n in 1..=4 {
        let r = h.router.clone();
        tasks.push(tokio::spawn(async move {
            let ev = ask(&r, req(&n.to_string())).await;
            (n, final_text(&ev))
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    assert_eq!(
        got,
        [
            (1, "a".to_string()),
            (2, "b".into()),
            (3, "c".into()),
            (4, "d".into())
        ],
        "served in arrival order, the first request's 429 notwithstanding"
    );
}

/// A half-open provider whose probe cannot even connect, while another provider answers, is
/// down: its breaker opens again. The connect failure was held back (nobody is blamed when the
/// machine is offline) and then blamed as an ordinary fault, which a half-open breaker
/// ignores: it stayed half-open for good, and every request tried the dead provider first and
/// reached its client rerouted (found by a review).
#[tokio::test(start_paused = true)]
async fn a_dead_half_open_provider_is_not_probed_by_every_request() {
    let h = harness(2, no_jitter());
    let until = trip(&h, 0);
    tokio::time::advance(until - Instant::now()).await;
    h.scripts[0].push(vec![Step::Fail(connect_refused()); 20]);
    let mut rerouted = 0;
    for n in 0..5 {
        let ev = ask(&h.router, req(&format!("r{n}"))).await;
        assert_eq!(done_provider(&ev), Some("beta"));
        if ev.iter().any(|e| matches!(e, StreamEvent::Rerouted { .. })) {
            rerouted += 1;
        }
    }
    let state = h.router.health().state_of(0, Instant::now()).0;
    assert_eq!(
        (h.scripts[0].calls(), rerouted, state),
        (1, 1, BreakerState::Open),
        "(probes sent to the dead provider, requests rerouted, its breaker)"
    );
}

/// A probe that streams has answered: requests only that provider can take go as soon as its
/// first tokens come, not when its whole answer ends (a long one outlasted their queue limit,
/// and they failed while the provider streamed: found by a review).
#[tokio::test(start_paused = true)]
async fn a_long_probe_answer_does_not_fail_the_requests_waiting_for_it() {
    let h = harness(1, no_jitter());
    let until = trip(&h, 0);
    tokio::time::advance(until - Instant::now()).await;
    let mut long: Vec<_> = (0..45)
        .map(|_| (1_000, Ok(Delta::Text("tok ".into()))))
        .collect();
    long.push((0, Ok(Delta::Finish(FinishReason::Stop))));
    long.insert(0, (0, Ok(Delta::RateLimits(Box::default()))));
    h.scripts[0].push([Step::Stream(long), answer(&["second"])]);
    let probe = tokio::spawn({
        let r = h.router.clone();
        async move { ask(&r, req("write a long file")).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t0 = Instant::now();
    let ev = ask(&h.router, req("meanwhile")).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{:?}", ev.last());
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(final_text(&probe.await.unwrap()).len(), 45 * 4);
}

/// While another provider answered a moment ago, the network works: a probe that cannot
/// connect opens its breaker again at once, not when the request it failed over ends, so the
/// requests meanwhile do not probe the dead provider one after another.
#[tokio::test(start_paused = true)]
async fn a_probe_that_cannot_connect_is_judged_at_once_while_others_answer() {
    let h = harness(2, no_jitter());
    let until = trip(&h, 0);
    h.scripts[1].push([answer(&["warm"])]);
    assert_eq!(done_provider(&ask(&h.router, req("w")).await), Some("beta"));
    tokio::time::advance(until - Instant::now()).await;
    h.scripts[0].push(vec![Step::Fail(connect_refused()); 20]);
    let slow: Vec<_> = (0..10)
        .map(|_| (1_000, Ok(Delta::Text("b ".into()))))
        .chain([(0, Ok(Delta::Finish(FinishReason::Stop)))])
        .collect();
    h.scripts[1].push([Step::Stream(slow), answer(&["second"])]);
    let first = tokio::spawn({
        let r = h.router.clone();
        async move { ask(&r, req("long")).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ev = ask(&h.router, req("meanwhile")).await;
    assert_eq!(done_provider(&ev), Some("beta"));
    assert_eq!(
        h.scripts[0].calls(),
        1,
        "the dead provider was probed again"
    );
    assert_eq!(done_provider(&first.await.unwrap()), Some("beta"));
}

/// A provider that ignores `max_tokens` and streams for ever (a local server looping on a
/// phrase: every token is progress for the watchdog) is cut at the answer's size cap: the text
/// shown stays and the answer ends as at `max_tokens`; a tool call growing past it was never
/// shown and is made again elsewhere. Before, the answer kept for a continuation grew without
/// bound (1.2 GB in 25 s in a chaos run).
#[tokio::test(start_paused = true)]
async fn an_answer_that_never_ends_is_cut_at_its_size_cap() {
    let chunk = "loop ".repeat(800);
    let endless = |first: Option<Delta>| {
        let mut items: Vec<(u64, Result<Delta, ProviderError>)> =
            first.into_iter().map(|d| (1, Ok(d))).collect();
        let more = |c: &str| match items.first() {
            Some((_, Ok(Delta::ToolCallStart { .. }))) => Delta::ToolCallArgs {
                index: 0,
                json: c.to_string(),
            },
            _ => Delta::Text(c.into()),
        };
        let d = more(&chunk);
        items.extend((0..1_000).map(|_| (1, Ok(d.clone()))));
        Step::Stream(items)
    };
    let h = harness(2, no_jitter());
    h.scripts[0].push([endless(None)]);
    let mut r = req("x");
    r.max_tokens = Some(100);
    let ev = ask(&h.router, r.clone()).await;
    let Some(StreamEvent::Done(d)) = ev.last() else {
        panic!("{:?}", ev.last())
    };
    assert_eq!(d.finish, FinishReason::MaxTokens);
    let text = final_text(&ev);
    assert!(
        (1_000_000..=1 << 20).contains(&text.len()),
        "{} bytes shown",
        text.len()
    );
    // A tool call that never ends is made again (here: alpha retried, then beta), unseen.
    let tool = endless(Some(Delta::ToolCallStart {
        index: 0,
        id: "call_1".into(),
        name: "write".into(),
    }));
    h.scripts[0].push([tool.clone(), tool]);
    h.scripts[1].push([answer(&["fine"])]);
    let ev = ask(&h.router, r).await;
    assert_eq!(done_provider(&ev), Some("beta"), "{:?}", ev.last());
    assert_eq!(final_text(&ev), "fine");
    assert!(!ev
        .iter()
        .any(|e| matches!(e, StreamEvent::ToolCallStart { .. })));
}

/// A tool call whose arguments are not a JSON object (weak local models write `{not json`,
/// arrays, strings) is never shown: the call is made again, here or elsewhere. Shown, a
/// Messages client got it as a finished `tool_use` (found by a chaos run).
#[tokio::test(start_paused = true)]
async fn a_tool_call_with_broken_arguments_is_made_again() {
    let call = |args: &str| {
        Step::Stream(vec![
            (
                10,
                Ok(Delta::ToolCallStart {
                    index: 0,
                    id: "call_1".into(),
                    name: "read".into(),
                }),
            ),
            (
                10,
                Ok(Delta::ToolCallArgs {
                    index: 0,
                    json: args.into(),
                }),
            ),
            (0, Ok(Delta::Finish(FinishReason::ToolUse))),
        ])
    };
    for broken in [
        "{not json",
        "[1,2,3]",
        "\"just a string\"",
        "null",
        "{\"a\":1",
    ] {
        let h = harness(2, no_jitter());
        h.scripts[0].push([call(broken), call(broken)]);
        h.scripts[1].push([call(r#"{"path":"a.rs"}"#)]);
        let ev = ask(&h.router, req("x")).await;
        let args: String = ev
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ToolCallDelta { json, .. } => Some(json.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(args, r#"{"path":"a.rs"}"#, "{broken}: {ev:?}");
        assert_eq!(done_provider(&ev), Some("beta"), "{broken}");
    }
    // No arguments at all stand for `{}`.
    let h = harness(1, no_jitter());
    h.scripts[0].push([Step::Stream(vec![
        (
            10,
            Ok(Delta::ToolCallStart {
                index: 0,
                id: "call_1".into(),
                name: "now".into(),
            }),
        ),
        (0, Ok(Delta::Finish(FinishReason::ToolUse))),
    ])]);
    let ev = ask(&h.router, req("x")).await;
    assert!(ev
        .iter()
        .any(|e| matches!(e, StreamEvent::ToolCallStart { .. })));
}

/// A provider that stops at the request's `max_tokens` inside a tool call (an agent writing a
/// big file) has answered as asked: the call goes out as it stands, with the `max_tokens`
/// finish a direct call gives, once, and no fault. Taken for broken arguments, it was asked of
/// every provider five times, each spending the whole `max_tokens`, opened their breakers and
/// failed (found by a chaos run).
#[tokio::test(start_paused = true)]
async fn a_tool_call_cut_at_max_tokens_is_the_answer() {
    let h = harness(2, no_jitter());
    let cut = r#"{"path":"big.rs","content":"fn main() {"#;
    h.scripts[0].push([call_step(cut, FinishReason::MaxTokens, None)]);
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(call_args(&ev), cut, "{ev:?}");
    let Some(StreamEvent::Done(d)) = ev.last() else {
        panic!("{ev:?}")
    };
    assert_eq!(d.finish, FinishReason::MaxTokens);
    assert_eq!(d.provider, "alpha");
    assert_eq!(h.router.health().providers[0].failures, 0);
    assert_eq!(h.scripts[1].calls(), 0);

    // The same cut, then the connection lost instead of the stream's end: still the answer,
    // from one request.
    let h = harness(2, no_jitter());
    let lost = ProviderError::new(ErrorKind::Network, "lost");
    h.scripts[0].push([call_step(cut, FinishReason::MaxTokens, Some(lost))]);
    let ev = ask(&h.router, req("x")).await;
    assert!(
        matches!(ev.last(), Some(StreamEvent::Done(d)) if d.finish == FinishReason::MaxTokens),
        "{ev:?}"
    );
    assert_eq!((h.scripts[0].calls(), h.scripts[1].calls()), (1, 0));

    // Cut at the model's own limit, below what the client asked for (an agent's 32,000 at a
    // model of 1,000): another provider with room makes the call whole, and the first is not
    // blamed (found by a review).
    let h = harness_with(2, no_jitter(), |i, c| {
        if i == 0 {
            c.max_output_tokens = Some(1_000);
        }
    });
    let whole = r#"{"path":"big.rs","content":"fn main() {}"}"#;
    h.scripts[0].push([call_step(cut, FinishReason::MaxTokens, None)]);
    h.scripts[1].push([call_step(whole, FinishReason::ToolUse, None)]);
    let ev = ask(&h.router, asking_for(32_000)).await;
    assert_eq!(done_provider(&ev), Some("beta"), "{ev:?}");
    assert_eq!(call_args(&ev), whole);
    assert_eq!(h.router.health().providers[0].failures, 0);

    // No provider has more room: the cut call is as much as the client can get, and it gets it.
    let h = harness_with(2, no_jitter(), |_, c| c.max_output_tokens = Some(1_000));
    h.scripts[0].push([call_step(cut, FinishReason::MaxTokens, None)]);
    let ev = ask(&h.router, asking_for(32_000)).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
    assert_eq!(call_args(&ev), cut);
    assert_eq!(h.scripts[1].calls(), 0);
}

/// A request whose client asks for `max_tokens` of output.
fn asking_for(max_tokens: u32) -> ChatRequest {
    ChatRequest {
        max_tokens: Some(max_tokens),
        ..req("x")
    }
}

/// A stream of one call to `write_file` with arguments `args`, ended by `finish` and then
/// `then`, if any.
fn call_step(args: &str, finish: FinishReason, then: Option<ProviderError>) -> Step {
    let start = Delta::ToolCallStart {
        index: 0,
        id: "call_1".into(),
        name: "write_file".into(),
    };
    let args = Delta::ToolCallArgs {
        index: 0,
        json: args.into(),
    };
    let mut items = vec![
        (10, Ok(start)),
        (10, Ok(args)),
        (0, Ok(Delta::Finish(finish))),
    ];
    items.extend(then.map(|e| (10, Err(e))));
    Step::Stream(items)
}

/// The arguments of the calls in `ev`, joined.
fn call_args(ev: &[StreamEvent]) -> String {
    ev.iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallDelta { json, .. } => Some(json.as_str()),
            _ => None,
        })
        .collect()
}

/// What a token quota counts of a request is the output asked for where it is sent: the
/// client's `max_tokens` clamped to the model's limit, or that whole limit for a client that
/// named none (see `up_to_model_limit`). Counted at 128,000 (Claude Code asks for that), a
/// provider writing at most 8,192 with 50,000 tokens a minute was "larger than its quota" for
/// every request after the first; counted at the default 4,096, four requests sent with
/// 64,000 each went into a quota of 100,000 at once (found by a review).
#[tokio::test(start_paused = true)]
async fn a_quota_counts_the_output_asked_for_where_the_request_goes() {
    let tokens = |limit: u64| {
        let mut r = RateLimits::default();
        r.quotas[QuotaKind::Tokens.index()] = Some(Announced {
            limit: Some(limit),
            remaining: Some(limit),
            reset_in: Some(Duration::from_secs(60)),
        });
        r
    };
    let h = harness_with(1, no_jitter(), |_, cfg| cfg.max_output_tokens = Some(8_192));
    h.scripts[0].push([
        answer_with(tokens(50_000), &["first"]),
        answer_with(tokens(50_000), &["second"]),
    ]);
    let mut r = req("hi");
    r.max_tokens = Some(128_000);
    let first = ask(&h.router, r.clone()).await;
    assert_eq!(done_provider(&first), Some("alpha"), "{:?}", first.last());
    let second = ask(&h.router, r).await;
    assert_eq!(done_provider(&second), Some("alpha"), "{:?}", second.last());

    let h = harness_with(1, no_jitter(), |_, cfg| {
        cfg.max_output_tokens = Some(64_000)
    });
    h.scripts[0].push([answer_with(tokens(100_000), &["warm"])]);
    let mut r = req("hi");
    r.options.up_to_model_limit = true;
    ask(&h.router, r.clone()).await;
    let long: Vec<_> = (0..50)
        .map(|_| (1_000, Ok(Delta::Text("x".into()))))
        .collect();
    for _ in 0..4 {
        h.scripts[0].push([Step::Stream(long.clone())]);
    }
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let router = h.router.clone();
        let r = r.clone();
        tasks.push(tokio::spawn(async move { ask(&router, r).await }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let in_flight = h.router.health().providers[0].in_flight;
    assert_eq!(
        in_flight, 1,
        "requests of 64,000 output tokens in a 100,000-token quota"
    );
    for t in tasks {
        t.abort();
    }
}

/// A pinned request may name any model of a provider (`alpha/some-model`): its 404 (the
/// caller's typo) goes to the caller and is no fault of the entry, whose breaker five of them
/// opened for every other request (found by a review).
#[tokio::test(start_paused = true)]
async fn a_pinned_unknown_model_does_not_cool_the_provider() {
    let h = harness(2, no_jitter());
    h.scripts[0].push(vec![Step::Fail(err(ErrorKind::NotFound, None)); 5]);
    for _ in 0..5 {
        let mut r = req("x");
        r.pin = Some(Pin {
            provider: Some("alpha".into()),
            model: Some("alpha-modle".into()),
        });
        let ev = ask(&h.router, r).await;
        assert_eq!(error_kind(&ev), Some(ErrorKind::NotFound));
    }
    let ev = ask(&h.router, req("unpinned")).await;
    assert_eq!(
        h.router.health().state_of(0, Instant::now()).0,
        BreakerState::Closed
    );
    assert_eq!(done_provider(&ev), Some("alpha"));
}

/// A provider both busy and paused is not back before its pause ends: a request that cannot
/// wait that long is told at once when it will be, rather than waiting out its whole queue
/// limit (found by a review).
#[tokio::test(start_paused = true)]
async fn a_busy_and_paused_provider_is_not_waited_for_past_its_pause() {
    let h = harness_with(1, no_jitter(), |_, c| c.max_concurrent = 1);
    let long: Vec<_> = (0..100)
        .map(|_| (1_000, Ok(Delta::Text("x".into()))))
        .collect();
    h.scripts[0].push([Step::Stream(long)]);
    let first = tokio::spawn({
        let r = h.router.clone();
        async move { ask(&r, req("long")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let now = Instant::now();
    h.router.health().providers[0]
        .quota
        .block(now + Duration::from_secs(120));
    let ev = ask(&h.router, req("next")).await;
    assert!(error_kind(&ev).is_some(), "{:?}", ev.last());
    assert!(
        now.elapsed() < Duration::from_secs(1),
        "waited {:?}",
        now.elapsed()
    );
    first.abort();
}

/// An answer that streamed for longer than the queue allows and was then cut still waits for
/// providers that said when to come back: the rounds past the configured steps went on only
/// while the request was younger than `max_queue_wait` counted from its start, streaming
/// included, so a tool call that streamed 45 s, cut, met every provider answering `429` with a
/// `Retry-After` of 1-3 s for four seconds and failed ("every provider failed"), where the same
/// answer cut after a second waited and was answered. Found by a chaos run of the release
/// binaries (helper, qage.sh; 3 of the 4 failures of two runs that were not a daemon stop or
/// kill). The age is now counted from the end of the last attempt that made progress.
#[tokio::test(start_paused = true)]
async fn a_long_answer_cut_waits_for_short_retry_afters_like_a_young_one() {
    let h = harness(2, no_jitter());
    let mut long = vec![(0, Ok(Delta::Text("Hello".into())))];
    for _ in 0..40 {
        long.push((1_000, Ok(Delta::Text(" word".into()))));
    }
    long.push((
        10,
        Err(ProviderError::new(
            ErrorKind::Network,
            "connection lost mid-stream",
        )),
    ));
    let limited = || Step::Fail(err(ErrorKind::RateLimited, Some(1)));
    h.scripts[0].push([Step::Stream(long)]);
    for i in 0..2 {
        h.scripts[i].push((0..6).map(|_| limited()).collect::<Vec<_>>());
        h.scripts[i].push([answer(&[" rest."])]);
    }
    let ev = ask(&h.router, req("q")).await;
    assert_eq!(error_kind(&ev), None, "{:?}", ev.last());
    assert!(
        final_text(&ev).ends_with("word rest."),
        "{}",
        final_text(&ev)
    );
}

/// A `429` whose `retry-after-ms` is under a second (OpenAI's form, common for token limits)
/// says when to come back as much as one of two seconds does: a request that meets every
/// provider answering such `429`s for a few seconds (a burst of sessions on one account) waits
/// for them, as it does for `Retry-After: 1`. It used to end after the configured rounds with
/// "every provider failed" (2.5 s, seven `429`s), since only pauses of a second or more counted
/// as the provider having said when. Found by a chaos run of the release binaries through the
/// official SDKs (a 3 s storm of `429`s with `retry-after-ms` 100-1500 at every provider).
#[tokio::test(start_paused = true)]
async fn short_retry_after_ms_429s_are_waited_for_like_whole_seconds() {
    let h = harness(2, no_jitter());
    let limited = || {
        Step::Fail(ProviderError {
            retry_after: Some(Duration::from_millis(300)),
            ..err(ErrorKind::RateLimited, None)
        })
    };
    for i in 0..2 {
        h.scripts[i].push((0..8).map(|_| limited()).collect::<Vec<_>>());
        h.scripts[i].push([answer(&["answered."])]);
    }
    let ev = ask(&h.router, req("q")).await;
    assert_eq!(error_kind(&ev), None, "{:?}", ev.last());
    assert_eq!(final_text(&ev), "answered.");
}

/// A request waiting for capacity, with nothing of its answer streamed, is served by a
/// provider a config reload adds meanwhile: the user who sees every session wait on the only
/// provider's `Retry-After` adds another (SIGHUP) and expects the waiting sessions to use it.
/// It used to stay with the providers it started with: waited out the 20 s, met another
/// `429` and failed, the added provider never asked. Found by a chaos run of the release
/// binaries (reload_add.sh: `429` after 20.5 s).
#[tokio::test(start_paused = true)]
async fn a_request_waiting_for_capacity_moves_to_providers_a_reload_adds() {
    let h = harness(2, no_jitter());
    let all: Vec<RoutedProvider> = h.router.providers().to_vec();
    let first = Arc::new(Router::new(vec![all[0].clone()], no_jitter(), None, 1));
    first.publish();
    let limited = || Step::Fail(err(ErrorKind::RateLimited, Some(20)));
    h.scripts[0].push([limited(), limited(), limited()]);
    h.scripts[1].push([answer(&["from beta."])]);
    let waiting = {
        let r = first.clone();
        tokio::spawn(async move { ask(&r, req("q")).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    let second = Arc::new(first.succeed(all, no_jitter()));
    second.publish();
    let ev = waiting.await.unwrap();
    assert_eq!(error_kind(&ev), None, "{:?}", ev.last());
    assert_eq!(final_text(&ev), "from beta.");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(h.scripts[1].calls.load(Ordering::SeqCst), 1);
}

/// An answer cut mid-stream on a provider that a config reload then removes is continued by
/// the providers the new config has, where the text stopped, at once. It used to stay with
/// the providers it started with, waiting for and retrying the removed one until its budget
/// ran out (5 answers in a reload chaos run ended "the answer is incomplete" after ~29 s).
#[tokio::test(start_paused = true)]
async fn an_answer_cut_on_a_provider_a_reload_removes_is_continued_by_the_new_config() {
    let h = harness(2, no_jitter());
    let all: Vec<RoutedProvider> = h.router.providers().to_vec();
    let first = Arc::new(Router::new(vec![all[0].clone()], no_jitter(), None, 1));
    first.publish();
    h.scripts[0].push([Step::Stream(vec![
        text("Hello"),
        text(" wor"),
        (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
    ])]);
    // It comes back after 20 s, which the request would wait for (a continuation there).
    let limited = || Step::Fail(err(ErrorKind::RateLimited, Some(20)));
    h.scripts[0].push([limited(), limited(), limited()]);
    h.scripts[1].push([answer(&["ld", ", how are you?"])]);
    let asking = {
        let r = first.clone();
        tokio::spawn(async move { ask(&r, req("greet")).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    let second = Arc::new(first.succeed(vec![all[1].clone()], no_jitter()));
    second.publish();
    let ev = asking.await.unwrap();
    assert_eq!(error_kind(&ev), None, "{:?}", ev.last());
    assert_eq!(final_text(&ev), "Hello world, how are you?");
    assert_eq!(done_provider(&ev), Some("beta"));
    assert_eq!(
        h.scripts[1].prefills.lock().unwrap()[0].as_deref(),
        Some("Hello wor")
    );
    let reroutes: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Rerouted { to, mode, .. } => Some((to.as_str(), *mode)),
            _ => None,
        })
        .collect();
    assert_eq!(reroutes.last(), Some(&("beta", RerouteMode::Continue)));
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
}

/// A reload that lands while an answer streams, the stream then cut: the request moves to the
/// new router knowing which provider just failed it, and goes on elsewhere, not back to that
/// one (a move started its journey afresh, and the provider it had just left ranked first
/// again; found by a review).
#[tokio::test(start_paused = true)]
async fn a_request_moved_by_a_reload_does_not_go_back_to_the_provider_that_just_failed() {
    let h = harness(2, no_jitter());
    let all: Vec<RoutedProvider> = h.router.providers().to_vec();
    let first = Arc::new(Router::new(all.clone(), no_jitter(), None, 1));
    first.publish();
    h.scripts[0].push([Step::Stream(vec![
        text("Hello"),
        text(" wor"),
        (500, Err(ProviderError::new(ErrorKind::Network, "lost"))),
    ])]);
    h.scripts[0].push([answer(&["ld, again from alpha."])]);
    h.scripts[1].push([answer(&["ld", ", how are you?"])]);
    let asking = {
        let r = first.clone();
        tokio::spawn(async move { ask(&r, req("greet")).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = Arc::new(first.succeed(all, no_jitter()));
    second.publish();
    let ev = asking.await.unwrap();
    assert_eq!(error_kind(&ev), None, "{:?}", ev.last());
    assert_eq!(final_text(&ev), "Hello world, how are you?");
    assert_eq!(done_provider(&ev), Some("beta"));
    assert_eq!(h.scripts[0].calls.load(Ordering::SeqCst), 1);
}

/// A `429` with `Retry-After: 0` says no more than one without the header: the provider is
/// paused as long as for that, not asked again at once. It was asked again at once: a provider
/// answering 70 % of its requests so hammered itself, and as each such `429` counted towards
/// the attempt cap, 6 of 80 requests failed "every provider failed" while it was answering
/// others. Found by a chaos run of the release binaries (one provider, 70 % `429`s with
/// `retry-after: 0`, 8 clients).
#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_zero_pauses_as_one_without_it() {
    let h = harness(1, no_jitter());
    let limited = || Step::Fail(err(ErrorKind::RateLimited, Some(0)));
    h.scripts[0].push((0..10).map(|_| limited()).collect::<Vec<_>>());
    h.scripts[0].push([answer(&["answered."])]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("q")).await;
    assert_eq!(error_kind(&ev), None, "{:?}", ev.last());
    assert_eq!(final_text(&ev), "answered.");
    // Ten 429s, each followed by the pause a 429 without the header gets.
    assert!(
        t0.elapsed() >= policy::DEFAULT_PAUSE * 9,
        "{:?}",
        t0.elapsed()
    );
}

/// A request whose last turn is the assistant's text `pre` (a client's prefill).
fn prefilled(question: &str, pre: &str) -> ChatRequest {
    let mut r = req(question);
    r.messages.push(mythos_protocol::Message {
        role: mythos_protocol::Role::Assistant,
        content: vec![ContentBlock::Text { text: pre.into() }],
    });
    r
}

/// A client's prefill (a final assistant turn of text, which Anthropic continues) goes to a
/// provider asked in words as the start of the answer, and what the model repeats of it is not
/// shown again: sent as a plain assistant turn, the model answered from the beginning and the
/// client got "Task 2: I willTask 2: I will gamma" (found by a helper). At Anthropic it stays
/// the client's own turn.
#[tokio::test(start_paused = true)]
async fn a_clients_prefill_is_continued_in_words_elsewhere() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Fail(err(ErrorKind::Overloaded, None))]);
    h.scripts[1].push([answer(&["Task 2:", " I will", " gamma", " delta."])]);
    let ev = ask(
        &h.router,
        prefilled("id=2 list the tasks", "Task 2: I will"),
    )
    .await;
    assert_eq!(final_text(&ev), " gamma delta.");
    assert_eq!(*h.scripts[0].prefills.lock().unwrap(), vec![None]);
    assert_eq!(
        *h.scripts[1].prefills.lock().unwrap(),
        vec![Some("Task 2: I will".to_string())]
    );
    // An exact continuation goes through whole.
    h.scripts[0].push([Step::Fail(err(ErrorKind::Overloaded, None))]);
    h.scripts[1].push([answer(&[" gamma", " delta."])]);
    let ev = ask(
        &h.router,
        prefilled("id=3 list the tasks", "Task 2: I will"),
    )
    .await;
    assert_eq!(final_text(&ev), " gamma delta.");
}

/// A 400 from the one provider free while the others wait out a rate limit gets its second
/// opinion after the wait: it went to the client at once, a 400 no client retries, where a
/// few seconds' wait had the request answered (found by a chaos run).
#[tokio::test(start_paused = true)]
async fn a_second_opinion_waits_for_a_rate_limited_provider() {
    let h = harness(2, no_jitter());
    // Alpha rate limited for 5 s (beta answers that request).
    h.scripts[0].push([Step::Fail(err(ErrorKind::RateLimited, Some(5)))]);
    let ev = ask(&h.router, req("pause alpha")).await;
    assert_eq!(done_provider(&ev), Some("beta"), "{ev:?}");
    // Beta refuses the next: alpha is asked once its pause is over.
    h.scripts[1].push([Step::Fail(err(ErrorKind::BadRequest, None))]);
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(done_provider(&ev), Some("alpha"), "{ev:?}");
    assert_eq!(h.scripts[0].calls(), 2);
}

/// A request with a client's prefill that providers refuse (a `400`) costs a request at each
/// of two providers and one start-over: it was started over at the second until the attempts
/// ran out (11 requests for one bad request; found by a review).
#[tokio::test(start_paused = true)]
async fn a_refused_request_with_a_prefill_is_not_started_over_and_over() {
    let h = harness(3, no_jitter());
    for s in &h.scripts {
        s.push(vec![Step::Fail(err(ErrorKind::BadRequest, None)); 20]);
    }
    let ev = ask(&h.router, prefilled("bad", "Sure:")).await;
    assert_eq!(error_kind(&ev), Some(ErrorKind::BadRequest), "{ev:?}");
    let calls: Vec<usize> = h.scripts.iter().map(|s| s.calls()).collect();
    assert!(calls.iter().sum::<usize>() <= 3, "{calls:?}");
    assert_eq!(calls[2], 0, "{calls:?}");
}

/// When every provider is failing often enough to open its breaker (a storm of 5xx on all of
/// them at once), requests still go out, a few at a time per provider, and those the providers
/// answer are answered. Before, every breaker open meant every request failed at once ("the
/// first is back in 46 s") for as long as the cooldowns lasted, doubling: a soak run saw two
/// minutes of instant failures where one attempt in four would have been answered.
#[tokio::test(start_paused = true)]
async fn with_every_breaker_open_requests_are_still_tried() {
    let h = harness(2, no_jitter());
    for i in 0..2 {
        // Answering some of its attempts lately: failing often, not dead.
        h.router
            .health()
            .record_attempt(i, false, false, Instant::now());
        trip(&h, i);
    }
    // Flaky, not dead: every other attempt answers.
    for s in &h.scripts {
        for n in 0..6 {
            s.push([
                Step::Fail(err(ErrorKind::ServerError, None)),
                answer(&[&format!("ok{n}")]),
            ]);
        }
    }
    let t0 = Instant::now();
    let mut answered = 0;
    for n in 0..6 {
        let ev = ask(&h.router, req(&format!("storm {n}"))).await;
        answered += usize::from(done_provider(&ev).is_some());
    }
    assert_eq!(answered, 6);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    // An answer while cooling down is as fresh a verdict as a probe's: the breaker that the
    // first request found open is closed (it stayed open for the whole cooldown, and two
    // streams at a time was all a recovered provider was given: a helper's run saw 1,120 of
    // 1,137 requests refused while two providers were healthy again).
    assert!(
        (0..2).any(|i| h.router.health().state_of(i, Instant::now()).0 == BreakerState::Closed),
        "{:?}",
        h.router.status()
    );
    // Providers that answered nothing lately are dead, not flaky: not kept busy with attempts
    // that only add load (a paired storm run: 40 times the traffic), but tried one attempt at
    // a time, once every few seconds, so that the end of an outage is found within seconds
    // and not when the cooldowns (doubled per failed probe) run out: a helper's run saw every
    // request refused for 55 s after an outage of every provider had ended.
    let h = harness(2, no_jitter());
    for s in &h.scripts {
        s.push(vec![Step::Fail(err(ErrorKind::Overloaded, None)); 100]);
    }
    for i in 0..2 {
        trip(&h, i);
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..8 {
        let r = h.router.clone();
        tasks.push(tokio::spawn(async move {
            ask(&r, req(&format!("dead {n}"))).await
        }));
    }
    for t in tasks {
        let ev = t.await.unwrap();
        assert!(error_kind(&ev).is_some(), "{ev:?}");
    }
    let calls = h.scripts[0].calls() + h.scripts[1].calls();
    let spacings = t0.elapsed().as_secs() / admission::PANIC_PROBE_EVERY.as_secs() + 1;
    assert!(
        calls as u64 <= 2 * spacings,
        "{calls} attempts in {:?}",
        t0.elapsed()
    );
    // The outage ends: the next request is answered within a spacing, and the breaker closes.
    for s in &h.scripts {
        s.steps.lock().unwrap().clear();
    }
    let t0 = Instant::now();
    let ev = ask(&h.router, req("back")).await;
    assert!(done_provider(&ev).is_some(), "{ev:?}");
    assert!(
        t0.elapsed() <= admission::PANIC_PROBE_EVERY,
        "{:?}",
        t0.elapsed()
    );
    let closed = (0..2)
        .filter(|&i| h.router.health().state_of(i, Instant::now()).0 == BreakerState::Closed)
        .count();
    assert_eq!(closed, 1);
}
