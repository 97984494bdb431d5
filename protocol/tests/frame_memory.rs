//! What decoding one frame may cost in memory, all allocations together: a frame at the cap
//! made of the smallest items the protocol has (an empty text block is two bytes of bincode,
//! and a hundred in memory) must not cost the daemon many times its size. One such 16 MiB
//! frame decoded into ~600 MiB, and every connection may send one.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use mythos_protocol::codec::{decode_payload, encode_payload};
use mythos_protocol::{ChatRequest, ContentBlock, Encoding, Message, Request, Role, MAX_FRAME_LEN};

struct Count;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: forwards to the system allocator; only counts bytes.
unsafe impl GlobalAlloc for Count {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            grew(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Count = Count;

/// The memory a decode took at its peak, beyond what was live before it.
fn peak_of(decode: impl FnOnce()) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    decode();
    PEAK.load(Ordering::Relaxed) - before
}

/// A chat request of `messages` messages of `blocks` empty text blocks each.
fn tiny_items(messages: usize, blocks: usize) -> Request {
    let mut req = ChatRequest::user_text(1, "");
    req.messages = (0..messages)
        .map(|_| Message {
            role: Role::User,
            content: vec![
                ContentBlock::Text {
                    text: String::new()
                };
                blocks
            ],
        })
        .collect();
    Request::Chat(req)
}

/// The largest request of tiny items that fits a frame, encoded: one message of empty blocks
/// (`blocks`), or messages of no block.
fn at_the_cap(encoding: Encoding, blocks: bool) -> Vec<u8> {
    let shape = |n: usize| {
        if blocks {
            tiny_items(1, n)
        } else {
            tiny_items(n, 0)
        }
    };
    let size = |n: usize| encode_payload(encoding, &shape(n)).unwrap().len();
    let (base, per_item) = (size(0), size(2) - size(1));
    let bytes = encode_payload(encoding, &shape((MAX_FRAME_LEN - base - 16) / per_item)).unwrap();
    assert!(bytes.len() <= MAX_FRAME_LEN && bytes.len() > MAX_FRAME_LEN * 9 / 10);
    bytes
}

#[test]
fn a_frame_of_tiny_items_costs_a_small_multiple_of_its_size() {
    for encoding in [Encoding::Bincode, Encoding::Json] {
        // Many blocks in a message, and many messages of no block.
        for blocks in [true, false] {
            let bytes = at_the_cap(encoding, blocks);
            let mut outcome = None;
            let peak = peak_of(|| {
                outcome = Some(decode_payload::<Request>(encoding, &bytes).map(|_| ()));
            });
            let outcome = outcome.unwrap();
            assert!(
                peak <= 4 * MAX_FRAME_LEN,
                "{encoding:?}, blocks {blocks}: a {} MiB frame took {} MiB to decode \
                 ({outcome:?})",
                bytes.len() >> 20,
                peak >> 20
            );
            // Refused with a reason a client can act on, not a parse error in the middle.
            if let Err(e) = outcome {
                assert!(e.to_string().contains("too many items"), "{e}");
            }
        }
    }
}
