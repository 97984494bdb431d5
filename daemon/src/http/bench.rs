//! The encoders' cost per relayed chunk, for a profiler: each test encodes a 60-chunk answer
//! 10,000 times in one API. Ignored by default (they measure, they assert nothing useful);
//! count instructions with
//!
//! ```text
//! cargo test -p mythosd --release --lib http::bench -- --ignored --list   # build, find the binary
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p \
//!     target/release/deps/mythosd-<hash> --ignored --exact --test-threads=1 http::bench::messages
//! ```
//!
//! and divide the total by 600,000 (the answer's opening and closing frames are included,
//! spread over its chunks). `baseline` is the workload's own part (cloning the events), to
//! subtract; `relay_paced` runs the same answers through `Routed::into_body` (Messages
//! encoder), one body chunk per event (the first with the opening frames), on a current-thread
//! runtime.

use std::time::Duration;

use bytes::BytesMut;
use mythos_protocol::{DoneInfo, FinishReason, StreamEvent, Usage};
use serde_json::Map;

use super::chat::stream::ChatEncoder;
use super::messages::stream::MessagesEncoder;
use super::relay::{Encoder, Head, Pace, KEEPALIVE};
use super::responses::stream::ResponsesEncoder;

/// Answers encoded per test.
const ANSWERS: usize = 10_000;
/// Text chunks per answer.
const CHUNKS: usize = 60;

fn head() -> Head {
    Head {
        provider: "anthropic".into(),
        model: "claude-sonnet-4-5".into(),
        record: 123_456,
        reroutes: 0,
        overhead: Duration::from_micros(300),
    }
}

/// A typical answer: short text deltas (a token or two each, some needing escapes), usage,
/// done.
fn answer() -> Vec<StreamEvent> {
    let mut events: Vec<StreamEvent> = (0..CHUNKS)
        .map(|i| StreamEvent::TextDelta {
            text: if i % 10 == 9 {
                "\n\n\"quoted\"".into()
            } else {
                format!(" word{i}").into()
            },
        })
        .collect();
    let usage = Usage {
        input_tokens: 1200,
        output_tokens: 60,
        cache_read_input_tokens: 800,
        cache_creation_input_tokens: 0,
        web_searches: 0,
    };
    events.push(StreamEvent::Usage(usage));
    events.push(StreamEvent::Done(Box::new(DoneInfo {
        finish: FinishReason::Stop,
        usage,
        cost_usd: 0.001,
        latency_ms: 900,
        provider: "anthropic".into(),
        model: "claude-sonnet-4-5".into(),
        record: 123_456,
    })));
    events
}

/// Feed `events` (cloned, as the router hands each one over) one at a time, each into its own
/// output chunk as a paced stream would.
fn run<E: Encoder>(start: impl Fn() -> (E, BytesMut)) -> usize {
    let events = answer();
    let mut bytes = 0;
    for _ in 0..ANSWERS {
        let (mut enc, first) = start();
        bytes += first.len();
        for ev in &events {
            let mut out = BytesMut::new();
            enc.event(ev.clone(), &mut out);
            bytes += out.len();
        }
    }
    bytes
}

#[test]
#[ignore = "a workload for a profiler"]
fn messages() {
    let head = head();
    let n = run(|| MessagesEncoder::start(&head, 1000, false));
    assert!(n > 0);
}

#[test]
#[ignore = "a workload for a profiler"]
fn chat() {
    let head = head();
    let n = run(|| ChatEncoder::start(&head, true));
    assert!(n > 0);
}

#[test]
#[ignore = "a workload for a profiler"]
fn responses() {
    let head = head();
    let n = run(|| ResponsesEncoder::start(&head, Map::new()));
    assert!(n > 0);
}

/// The part of each test that is not the encoder (cloning the events, the output buffers), to
/// subtract from the others.
#[test]
#[ignore = "a workload for a profiler"]
fn baseline() {
    let events = answer();
    let mut bytes = 0;
    for _ in 0..ANSWERS {
        for ev in &events {
            let out = BytesMut::new();
            let ev = std::hint::black_box(ev.clone());
            bytes += out.len() + matches!(ev, StreamEvent::Done(_)) as usize;
        }
    }
    assert!(bytes > 0);
}

/// The body chunks of `events` relayed through `Routed::into_body` with the Messages encoder.
async fn relay(events: Vec<StreamEvent>, pace: Pace) -> Vec<bytes::Bytes> {
    body_chunks(super::relay::Routed::scripted(events, pace)).await
}

/// A request served by `route`, which sends its events on the sender of `rx`.
fn routed(
    rx: tokio::sync::mpsc::Receiver<mythos_protocol::Response>,
    route: impl std::future::Future<Output = ()> + Send + 'static,
) -> super::relay::Routed {
    super::relay::Routed::new(
        rx,
        Box::pin(route),
        tokio_util::sync::CancellationToken::new(),
        tokio_util::task::TaskTracker::new(),
    )
}

/// The body chunks of `routed` through the Messages encoder.
async fn body_chunks(routed: super::relay::Routed) -> Vec<bytes::Bytes> {
    use futures_util::StreamExt;
    let (enc, first) = MessagesEncoder::start(&head(), 1000, false);
    let body = routed.into_body(first.freeze(), enc).await;
    body.into_data_stream()
        .map(|c| c.expect("a chunk"))
        .collect()
        .await
}

/// An event that arrives alone goes out alone, at once (no added latency); events that are
/// already waiting go out together, in one body chunk (one socket write), and so do events that
/// arrive one per scheduler round or one every other round, as a provider's burst reaches the
/// router.
#[tokio::test(start_paused = true)]
async fn paced_events_go_out_alone_and_bursts_together() {
    let events = answer();
    let paced = relay(events.clone(), Pace::Every(Duration::from_millis(20))).await;
    // One chunk per text delta, the first (there at once, as when it comes in the same read
    // as the provider's head) with the opening frames; usage writes nothing, so done shares
    // its chunk with nothing either.
    assert_eq!(paced.len(), CHUNKS + 1, "{paced:?}");
    let burst = relay(events.clone(), Pace::Burst).await;
    // All there at once: the head, the opening frames and the whole answer in one write.
    assert_eq!(burst.len(), 1, "{burst:?}");
    // The opening frames with the first token, then the rest in one more chunk: a burst's
    // frames fit the body buffer, and a burst reaching the router one event every other
    // round fits the rounds a chunk may wait.
    let rounds = relay(events.clone(), Pace::Rounds(1)).await;
    assert!(rounds.len() <= 2, "{} chunks", rounds.len());
    let every_other = relay(events.clone(), Pace::Rounds(2)).await;
    assert!(every_other.len() <= 2, "{} chunks", every_other.len());
    // Two rounds in a row without anything from upstream end a chunk: the route is waiting
    // on its socket, and what is gathered goes out.
    let every_third = relay(events.clone(), Pace::Rounds(3)).await;
    assert!(
        every_third.len() >= CHUNKS / 2,
        "{} chunks",
        every_third.len()
    );
    assert_eq!(every_third.concat(), burst.concat());
    // A first token a round or two behind the opening frames joins them.
    for chunks in [&rounds, &every_other] {
        assert!(String::from_utf8_lossy(&chunks[0]).contains(" word0"));
    }
    assert_eq!(every_other.concat(), burst.concat());
    assert_eq!(paced.concat(), burst.concat());
    assert_eq!(rounds.concat(), burst.concat());
}

/// The end of a burst whose last frames come after upstream chunks that write nothing (a Chat
/// stream's finish and usage chunks, [DONE], the body's end, each a round of the route with no
/// event) goes out with the burst, not in a write of its own (measured: 4.3 writes per request
/// through `/v1/chat/completions`, 3.3 with this, the bench's 59-chunk answers).
#[tokio::test(start_paused = true)]
async fn a_bursts_end_joins_it_after_upstream_chunks_that_write_nothing() {
    let mut events = answer();
    let done = events.pop().expect("done");
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let route = async move {
        for event in events {
            let _ = tx
                .send(mythos_protocol::Response::Event { id: 0, event })
                .await;
            tokio::task::yield_now().await;
        }
        // Upstream chunks the route reads and sends nothing for.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let _ = tx
            .send(mythos_protocol::Response::Event { id: 0, event: done })
            .await;
    };
    let chunks = body_chunks(routed(rx, route)).await;
    let last = String::from_utf8_lossy(chunks.last().expect("a chunk")).into_owned();
    assert!(
        last.contains("message_stop") && last.contains(&format!(" word{}", CHUNKS - 2)),
        "{chunks:?}"
    );
}

/// The head is not held for a first token that is not there yet: the body is ready at once,
/// its first chunk the opening frames alone.
#[tokio::test(start_paused = true)]
async fn a_late_first_token_does_not_hold_the_head() {
    use futures_util::StreamExt;
    let events = answer();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let route = async move {
        for event in events {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx
                .send(mythos_protocol::Response::Event { id: 0, event })
                .await;
        }
    };
    let routed = routed(rx, route);
    let (enc, first) = MessagesEncoder::start(&head(), 1000, false);
    let opening = first.clone().freeze();
    let began = tokio::time::Instant::now();
    let mut body = routed
        .into_body(first.freeze(), enc)
        .await
        .into_data_stream();
    assert_eq!(began.elapsed(), Duration::ZERO);
    assert_eq!(body.next().await.expect("a chunk").expect("data"), opening);
    assert_eq!(began.elapsed(), Duration::ZERO);
    let second = body.next().await.expect("a chunk").expect("data");
    assert!(String::from_utf8_lossy(&second).contains(" word0"));
    assert_eq!(began.elapsed(), Duration::from_millis(20));
}

/// A route that is silent after the head (`silence`), then streams a burst one event per
/// scheduler round; its body's chunks.
async fn silent_then_burst(silence: Duration) -> Vec<bytes::Bytes> {
    let events = answer();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let route = async move {
        tokio::time::sleep(silence).await;
        for event in events {
            let _ = tx
                .send(mythos_protocol::Response::Event { id: 0, event })
                .await;
            tokio::task::yield_now().await;
        }
    };
    body_chunks(routed(rx, route)).await
}

/// The first token goes out the moment it comes, alone, even when the rest of the burst is
/// right behind it; after a silence long enough for keep-alives too (a reasoning model
/// thinking), which are not the first token.
#[tokio::test(start_paused = true)]
async fn the_first_token_is_not_held_for_the_burst_behind_it() {
    for silence in [
        Duration::from_millis(20),
        KEEPALIVE + Duration::from_secs(1),
    ] {
        let chunks = silent_then_burst(silence).await;
        let text: Vec<String> = chunks
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let first = text
            .iter()
            .position(|c| c.contains(" word0"))
            .expect("the first token");
        assert!(!text[first].contains(" word1"), "{silence:?}: {text:?}");
        if silence > KEEPALIVE {
            assert!(text[..first].iter().any(|c| c.contains("ping")), "{text:?}");
        }
        // The rest of the burst is gathered.
        assert!(
            text.len() <= first + 1 + CHUNKS / 8,
            "{silence:?}: {} chunks",
            text.len()
        );
    }
}

/// The route is polled when something woke it (an upstream chunk, its timer), not again on
/// each of the body's coalescing rounds: a poll of a real route (its select over the upstream
/// body, the watchdog and the cancel token) costs hundreds of instructions.
#[tokio::test(start_paused = true)]
async fn a_route_is_polled_only_when_something_woke_it() {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    struct Counted<F>(Arc<AtomicUsize>, Pin<Box<F>>);
    impl<F: Future> Future for Counted<F> {
        type Output = F::Output;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            self.0.fetch_add(1, Ordering::Relaxed);
            self.1.as_mut().poll(cx)
        }
    }
    let events = answer();
    let sent = events.len();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let route = async move {
        for event in events {
            let _ = tx
                .send(mythos_protocol::Response::Event { id: 0, event })
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let polls = Arc::new(AtomicUsize::new(0));
    let routed = routed(rx, Counted(polls.clone(), Box::pin(route)));
    let (enc, first) = MessagesEncoder::start(&head(), 1000, false);
    let began = tokio::time::Instant::now();
    let chunks: Vec<_> = {
        use futures_util::StreamExt;
        let body = routed.into_body(first.freeze(), enc).await;
        body.into_data_stream().collect().await
    };
    assert_eq!(chunks.len(), CHUNKS + 1);
    // Each event went out when its timer woke the route, not at a keep-alive tick (which is
    // what a lost wake-up would wait for: the paused clock jumps to it).
    let took = began.elapsed();
    assert!(
        took < Duration::from_millis(20) * sent as u32 + Duration::from_millis(100),
        "{took:?}"
    );
    // The first poll, and one each time its timer wakes it.
    let polls = polls.load(Ordering::Relaxed);
    assert!(polls <= sent + 1, "{polls} polls for {sent} events");
}

/// The relay's own cost (the body stream, its buffer, the keep-alive check) on top of the
/// encoder's, for a paced answer: one body chunk per event (the first with the opening frames).
#[test]
#[ignore = "a workload for a profiler"]
fn relay_paced() {
    // A paused clock: the pace costs no wall time.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let events = answer();
    rt.block_on(async {
        let mut n = 0;
        for _ in 0..ANSWERS {
            n += relay(events.clone(), Pace::Every(Duration::from_millis(20)))
                .await
                .len();
        }
        assert_eq!(n, ANSWERS * (CHUNKS + 1));
    });
}
