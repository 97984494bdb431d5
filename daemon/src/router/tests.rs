//! Engine tests over scripted transports and tokio's paused clock: every cooldown, backoff and
//! watchdog below runs in microseconds of real time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use mythos_protocol::{
    BreakerState, ChatRequest, ErrorKind, FinishReason, Pin, RerouteMode, Response, StreamEvent,
    TaskKind, Usage,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::{Api, ProviderConfig, RoutingConfig, Secret};
use crate::provider::{DeltaStream, OpenFuture, ProviderError, Transport, UpstreamRequest};

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
    dropped: Arc<AtomicUsize>,
}

struct DropFlag(Arc<AtomicUsize>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn text(s: &str) -> (u64, Result<Delta, ProviderError>) {
    (10, Ok(Delta::Text(s.to_string())))
}

fn answer(words: &[&str]) -> Step {
    let mut v: Vec<_> = words.iter().map(|w| text(w)).collect();
    v.push((
        0,
        Ok(Delta::Usage(Usage {
            input_tokens: 10,
            output_tokens: words.len() as u64,
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
            _ => 500,
        }),
        retry_after: retry_after.map(Duration::from_secs),
        message: format!("scripted {}", kind.as_str()),
    }
}

fn connect_refused() -> ProviderError {
    ProviderError::new(ErrorKind::Network, "cannot connect (refused)")
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
    let names = ["alpha", "beta", "gamma"];
    let scripts: Vec<Arc<Script>> = (0..n).map(|_| Arc::new(Script::default())).collect();
    let providers = scripts
        .iter()
        .enumerate()
        .map(|(i, s)| RoutedProvider {
            cfg: ProviderConfig {
                name: names[i].to_string(),
                api: if i == 0 { Api::Anthropic } else { Api::Openai },
                base_url: "http://127.0.0.1:1".into(),
                model: format!("{}-model", names[i]),
                api_key: Some(Secret::new("k")),
                priority: i as u32,
                price_input_per_mtok: 1.0,
                price_output_per_mtok: 1.0,
                simulated: false,
            },
            transport: s.clone() as Arc<dyn Transport>,
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
        StreamEvent::Done { provider, .. } => Some(provider.as_str()),
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
async fn rate_limit_with_long_retry_after_fails_over_at_once() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Fail(err(ErrorKind::RateLimited, Some(60)))]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("hi")).await;
    // No retry burned on a provider that asked for a minute.
    assert_eq!(h.scripts[0].calls(), 1);
    assert_eq!(done_provider(&ev), Some("beta"));
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
    assert!(ev.iter().any(|e| matches!(e, StreamEvent::Rerouted { from, to, mode: RerouteMode::Continue, .. } if from == "alpha" && to == "beta")));
    // The breaker respects the longer of cooldown and Retry-After, and other requests skip it.
    let (state, left) = h.router.health().state_of(0, Instant::now());
    assert_eq!(state, BreakerState::Open);
    assert!(left.unwrap() >= Duration::from_secs(299));
    let ev = ask(&h.router, req("again")).await;
    assert_eq!(done_provider(&ev), Some("beta"));
    assert_eq!(h.scripts[0].calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn overloaded_is_retried_with_backoff_then_tripped() {
    let h = harness(2, no_jitter());
    let o = Step::Fail(err(ErrorKind::Overloaded, None));
    h.scripts[0].push([o.clone(), o.clone(), o.clone(), o]);
    let t0 = Instant::now();
    let ev = ask(&h.router, req("hi")).await;
    assert_eq!(h.scripts[0].calls(), 4, "1 try + 3 retries");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1600) && waited < Duration::from_millis(1700),
        "100 + 500 + 1000 ms of backoff, got {waited:?}"
    );
    assert_eq!(done_provider(&ev), Some("beta"));
    assert_eq!(
        h.router.health().state_of(0, Instant::now()).0,
        BreakerState::Open
    );
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
async fn half_open_allows_exactly_one_probe() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Fail(err(ErrorKind::RateLimited, Some(60)))]);
    ask(&h.router, req("trip")).await;
    tokio::time::advance(Duration::from_secs(301)).await;
    assert_eq!(
        h.router.health().state_of(0, Instant::now()).0,
        BreakerState::HalfOpen
    );

    // A slow probe holds the half-open slot; a second request meanwhile goes elsewhere.
    h.scripts[0].push([Step::Stream(vec![(
        2000,
        Ok(Delta::Text("probe ok".into())),
    )])]);
    let r1 = tokio::spawn({
        let r = h.router.clone();
        async move { ask(&r, req("probe")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ev2 = ask(&h.router, req("meanwhile")).await;
    assert_eq!(done_provider(&ev2), Some("beta"));
    let ev1 = r1.await.unwrap();
    assert_eq!(done_provider(&ev1), Some("alpha"));
    assert_eq!(h.scripts[0].calls(), 2);
    assert_eq!(
        h.router.health().state_of(0, Instant::now()).0,
        BreakerState::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn failed_probe_reopens_with_longer_cooldown() {
    let h = harness(2, no_jitter());
    h.scripts[0].push(vec![Step::Fail(err(ErrorKind::Overloaded, None)); 4]);
    ask(&h.router, req("trip")).await;
    tokio::time::advance(Duration::from_secs(301)).await;
    h.scripts[0].push([Step::Fail(err(ErrorKind::Overloaded, None))]);
    let ev = ask(&h.router, req("probe")).await;
    assert_eq!(done_provider(&ev), Some("beta"));
    // The probe is not retried: one call, then the breaker re-opens for twice as long.
    assert_eq!(h.scripts[0].calls(), 5);
    let (state, left) = h.router.health().state_of(0, Instant::now());
    assert_eq!(state, BreakerState::Open);
    assert!(left.unwrap() > Duration::from_secs(590), "{left:?}");
}

#[tokio::test(start_paused = true)]
async fn all_open_fails_fast_with_the_first_comeback() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Fail(err(ErrorKind::RateLimited, Some(600)))]);
    h.scripts[1].push([Step::Fail(err(ErrorKind::RateLimited, Some(900)))]);
    let ev = ask(&h.router, req("trip both")).await;
    assert_eq!(error_kind(&ev), Some(ErrorKind::RateLimited));
    let t0 = Instant::now();
    let ev = ask(&h.router, req("again")).await;
    assert!(t0.elapsed() < Duration::from_millis(1));
    match ev.last() {
        Some(StreamEvent::Error {
            kind: ErrorKind::AllCoolingDown,
            message,
            retry_at_unix_ms: Some(_),
        }) => assert!(message.contains("10 min"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.scripts[0].calls() + h.scripts[1].calls(), 2);
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
    for _ in 0..40 {
        items.push((
            10_000,
            Ok(Delta::ToolCallArgs {
                index: 0,
                json: "xxxx".into(),
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
        Some(StreamEvent::Done {
            finish: FinishReason::ToolUse,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn mid_stream_disconnect_continues_without_duplicates() {
    let h = harness(2, no_jitter());
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
    // The fallback continues from the prefill it was given.
    h.scripts[1].push([answer(&["ld", ", how are you?"])]);
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

#[tokio::test(start_paused = true)]
async fn trimmed_prefill_whitespace_is_not_duplicated() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Stream(vec![
        text("Hello "),
        (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
    ])]);
    // Anthropic-style continuation after the trimmed prefill "Hello" starts with the space.
    h.scripts[1].push([answer(&[" world"])]);
    let ev = ask(&h.router, req("greet")).await;
    assert_eq!(final_text(&ev), "Hello world");
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

#[tokio::test(start_paused = true)]
async fn half_streamed_tool_call_restarts_with_discard() {
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
    h.scripts[1].push([answer(&["Restarted answer."])]);
    let ev = ask(&h.router, req("tool")).await;
    assert!(ev.iter().any(|e| matches!(
        e,
        StreamEvent::Rerouted {
            mode: RerouteMode::Restart,
            ..
        }
    )));
    assert_eq!(final_text(&ev), "Restarted answer.");
    // No prefill: the fallback starts over.
    assert_eq!(h.scripts[1].prefills.lock().unwrap()[0], None);
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
    assert!(h.router.health().providers[1].no_prefill);
    assert_eq!(
        h.router.health().providers[1].failures,
        0,
        "a rejected prefill is not a failure"
    );
}

#[tokio::test(start_paused = true)]
async fn every_provider_failing_mid_stream_is_an_error_not_a_clean_end() {
    let h = harness(2, no_jitter());
    for s in &h.scripts {
        s.push([Step::Stream(vec![
            text("a"),
            (10, Err(ProviderError::new(ErrorKind::Network, "lost"))),
        ])]);
    }
    let ev = ask(&h.router, req("x")).await;
    assert!(!ev.iter().any(|e| matches!(e, StreamEvent::Done { .. })));
    match ev.last() {
        Some(StreamEvent::Error { message, .. }) => assert!(message.contains("incomplete")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn bad_request_is_surfaced_not_failed_over() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Fail(err(ErrorKind::BadRequest, None))]);
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(error_kind(&ev), Some(ErrorKind::BadRequest));
    assert_eq!(h.scripts[1].calls(), 0);
    let book = h.router.health();
    assert_eq!(book.providers[0].failures, 0);
    assert_eq!(book.state_of(0, Instant::now()).0, BreakerState::Closed);
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
}

#[tokio::test(start_paused = true)]
async fn offline_is_not_blamed_on_providers() {
    let h = harness(3, no_jitter());
    for s in &h.scripts {
        s.push([Step::Fail(connect_refused())]);
    }
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(error_kind(&ev), Some(ErrorKind::Offline));
    for i in 0..3 {
        assert_eq!(
            h.router.health().state_of(i, Instant::now()).0,
            BreakerState::Closed
        );
    }
    // Back online: the primary answers straight away.
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(done_provider(&ev), Some("alpha"));
}

#[tokio::test(start_paused = true)]
async fn one_unreachable_provider_is_blamed_when_another_answers() {
    let h = harness(2, no_jitter());
    h.scripts[0].push([Step::Fail(connect_refused())]);
    let ev = ask(&h.router, req("x")).await;
    assert_eq!(done_provider(&ev), Some("beta"));
    assert_eq!(
        h.router.health().state_of(0, Instant::now()).0,
        BreakerState::Open
    );
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
    cancel.cancel();
    task.await.unwrap();
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
        let now = Instant::now();
        let saved = h.router.health().save(now, 1_000_000);
        // "Restart" 10 s later.
        let h2 = harness(2, no_jitter());
        let later = now + Duration::from_secs(10);
        h2.router.health().restore(&saved, later, 1_010_000);
        let (state, left) = h2.router.health().state_of(0, later);
        assert_eq!(state, BreakerState::Open);
        let left = left.unwrap();
        assert!(
            left > Duration::from_secs(280) && left <= Duration::from_secs(290),
            "{left:?}"
        );
        // Averages carried over.
        assert!(h2.router.health().providers[0].success.raw().unwrap() < 1.0);
    });
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_is_not_blamed_on_the_provider() {
    let h = harness(2, no_jitter());
    let words: Vec<String> = (0..50).map(|i| format!(" w{i}")).collect();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    h.scripts[0].push([answer(&refs)]);
    // A channel of one: every event waits for the reader, who takes 20 s per event.
    let (tx, mut rx) = mpsc::channel(1);
    let task = tokio::spawn({
        let r = h.router.clone();
        async move {
            r.route(req("x"), Emitter::new(1, tx), CancellationToken::new())
                .await
        }
    });
    let mut events = Vec::new();
    while let Some(Response::Event { event, .. }) = rx.recv().await {
        tokio::time::sleep(Duration::from_secs(20)).await;
        let end = matches!(event, StreamEvent::Done { .. } | StreamEvent::Error { .. });
        events.push(event);
        if end {
            break;
        }
    }
    task.await.unwrap();
    assert_eq!(done_provider(&events), Some("alpha"), "{:?}", events.last());
    assert!(!events
        .iter()
        .any(|e| matches!(e, StreamEvent::Rerouted { .. })));
}
