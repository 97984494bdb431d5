//! Hostile and random frames against the decoders, with a global allocator that records the
//! largest single allocation: no frame may make a decoder panic, abort or allocate more than a
//! small multiple of its own size, beyond the 1 MiB that serde's `size_hint::cautious` may
//! reserve for a sequence whose claimed length it does not yet trust.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use mythos_protocol::codec::{decode_payload, encode_payload};
use mythos_protocol::{
    ChatRequest, ContentBlock, Encoding, Message, Pin, Request, Response, Role, StreamEvent,
    TaskKind, ToolSpec,
};

struct Watch;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The largest allocation of this thread: tests run in parallel, and a test that asserts a
    /// bound far below another's cannot share the global figure.
    static LARGEST_HERE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn note(size: usize) {
    LARGEST.fetch_max(size, Ordering::Relaxed);
    // `try_with`: the thread-local may be gone while a thread exits.
    let _ = LARGEST_HERE.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Watch = Watch;

/// Decode `bytes` both ways (as a request and as a response) and return the largest single
/// allocation made meanwhile.
fn decode_all(encoding: Encoding, bytes: &[u8]) -> usize {
    LARGEST.store(0, Ordering::Relaxed);
    let _ = decode_payload::<Request>(encoding, bytes);
    let _ = decode_payload::<Response>(encoding, bytes);
    LARGEST.load(Ordering::Relaxed)
}

/// What a payload of `len` bytes may cost at most in one allocation: serde's cautious
/// reservation for a sequence (1 MiB), or a small multiple of the payload.
fn allowance(len: usize) -> usize {
    (1 << 20) + 64 * 1024 + 32 * len
}

#[test]
fn the_frame_that_aborted_the_daemon() {
    // A `reset` whose provider name claims 32 TiB, then 2^63 bytes: refused before any
    // allocation of that size (a string's bytes are checked against the limit).
    for claim in [1u64 << 45, 1u64 << 63, u64::MAX] {
        let mut frame = vec![4u8, 253];
        frame.extend_from_slice(&claim.to_le_bytes());
        let largest = decode_all(Encoding::Bincode, &frame);
        assert!(largest < 64 * 1024, "{claim}: {largest} bytes");
        assert!(decode_payload::<Request>(Encoding::Bincode, &frame).is_err());
    }
}

/// A delta's text is taken from the frame's own bytes (a borrowed string, kept inline or
/// copied once): a length claiming more than the frame holds allocates nothing of that size.
/// (With a `String`, bincode reserved the claimed length before it found the bytes missing.)
#[test]
fn a_delta_claiming_more_than_its_frame_allocates_nothing_of_that_size() {
    // Event, id 7, TextDelta, a length of 3,000 as a u16 varint, then 3 bytes.
    let mut frame = vec![0u8, 7, 1, 251];
    frame.extend_from_slice(&3000u16.to_le_bytes());
    frame.extend_from_slice(b"abc");
    LARGEST_HERE.with(|l| l.set(0));
    assert!(decode_payload::<Response>(Encoding::Bincode, &frame).is_err());
    let largest = LARGEST_HERE.with(|l| l.get());
    assert!(
        largest < 1024,
        "{largest} bytes for a {}-byte frame",
        frame.len()
    );
}

fn samples() -> Vec<Vec<u8>> {
    let mut chat = ChatRequest::user_text(7, "write a haiku about sockets");
    chat.task = TaskKind::Code;
    chat.system = Some("be brief".into());
    chat.pin = Some(Pin {
        provider: Some("anthropic".into()),
        model: None,
    });
    chat.tools.push(ToolSpec {
        name: "read".into(),
        description: "read a file".into(),
        input_schema_json: r#"{"type":"object"}"#.into(),
    });
    chat.messages.push(Message {
        role: Role::Assistant,
        content: vec![ContentBlock::ToolUse {
            id: "t1".into(),
            name: "read".into(),
            input_json: r#"{"path":"a"}"#.into(),
        }],
    });
    let requests = [
        Request::Chat(chat),
        Request::Cancel { id: 9 },
        Request::Status,
        Request::Reset {
            provider: "deepseek".into(),
        },
    ];
    let responses = [
        Response::Event {
            id: 7,
            event: StreamEvent::TextDelta {
                text: "hello".into(),
            },
        },
        Response::Event {
            id: 7,
            event: StreamEvent::Queued {
                reason: "anthropic: rate limited".into(),
                until_unix_ms: Some(1),
                deadline_unix_ms: 2,
            },
        },
    ];
    let mut out = Vec::new();
    for enc in [Encoding::Bincode, Encoding::Json] {
        for r in &requests {
            out.push(encode_payload(enc, r).unwrap());
        }
        for r in &responses {
            out.push(encode_payload(enc, r).unwrap());
        }
    }
    out
}

/// 100,000 random and 100,000 mutated frames per encoding.
#[test]
fn random_and_mutated_frames_never_panic_or_overallocate() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let valid = samples();
    for encoding in [Encoding::Bincode, Encoding::Json] {
        for n in 0..100_000 {
            let len = rng.usize(0..64);
            let frame: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let largest = decode_all(encoding, &frame);
            assert!(
                largest < allowance(len),
                "random #{n}: {largest} bytes for {frame:?}"
            );
        }
        for n in 0..100_000 {
            let mut frame = valid[rng.usize(..valid.len())].clone();
            for _ in 0..rng.usize(1..4) {
                match rng.u8(0..4) {
                    // Flip a byte.
                    0 if !frame.is_empty() => {
                        let i = rng.usize(..frame.len());
                        frame[i] = rng.u8(..);
                    }
                    // Plant a huge varint (bincode's u64 marker and eight 0xff).
                    1 => {
                        let i = rng.usize(..=frame.len());
                        let mut huge = vec![253u8];
                        huge.extend_from_slice(&rng.u64(..).to_le_bytes());
                        frame.splice(i..i, huge);
                    }
                    // Cut it short.
                    2 if !frame.is_empty() => frame.truncate(rng.usize(..frame.len())),
                    // Insert garbage.
                    _ => {
                        let i = rng.usize(..=frame.len());
                        frame.insert(i, rng.u8(..));
                    }
                }
            }
            let largest = decode_all(encoding, &frame);
            assert!(
                largest < allowance(frame.len()),
                "mutated #{n}: {largest} bytes for {frame:?}"
            );
        }
    }
}
