//! A budget for the items one frame may decode into.
//!
//! A frame's bytes bound its strings (each length is checked against the payload before it is
//! allocated; see `codec`), but not its sequences: an empty text block is two bytes of bincode
//! and a hundred in memory, so a 16 MiB frame of them decoded into a gigabyte (growth of the
//! vectors included). While a frame is decoded, every vector of a request charges the memory
//! it reserves for its items to a budget for the frame, and the frame is refused when it runs
//! out. Outside a frame's decoding (a state file, a test) nothing is counted.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

/// The memory the items of one frame's vectors may take: 32 MiB, twice the largest frame.
/// A coding agent's longest conversation (thousands of messages, tens of thousands of blocks)
/// takes a few megabytes of it.
pub const MAX_ITEM_BYTES: usize = 32 << 20;

thread_local! {
    /// What the frame being decoded on this thread may still reserve; `None` when no frame is.
    static LEFT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Run `decode` with [`MAX_ITEM_BYTES`] for the items of what it decodes. Decoding is
/// synchronous, so the budget is the thread's for that long.
pub fn within<R>(decode: impl FnOnce() -> R) -> R {
    /// Puts back the budget of an enclosing decode, also if `decode` panics.
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            LEFT.set(self.0);
        }
    }
    let _restore = Restore(LEFT.replace(Some(MAX_ITEM_BYTES)));
    decode()
}

/// Take `bytes` from the budget of the frame being decoded.
fn charge<E: Error>(bytes: usize) -> Result<(), E> {
    let Some(left) = LEFT.get() else {
        return Ok(());
    };
    match left.checked_sub(bytes) {
        Some(rest) => {
            LEFT.set(Some(rest));
            Ok(())
        }
        None => Err(E::custom(format_args!(
            "too many items in one message (more than {} MiB of them)",
            MAX_ITEM_BYTES >> 20
        ))),
    }
}

/// `deserialize_with` for a request's `Vec` fields: the items, with their memory charged.
pub fn vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Items<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Items<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let item = std::mem::size_of::<T>().max(1);
            // A claimed length is not trusted beyond what serde's own `cautious` would
            // reserve (1 MiB), and what is reserved is charged.
            let first = seq.size_hint().unwrap_or(0).min((1 << 20) / item);
            charge(first * item)?;
            let mut out = Vec::with_capacity(first);
            while let Some(x) = seq.next_element()? {
                if out.len() == out.capacity() {
                    // Grown by doubling, as `push` would, but charged first.
                    let more = out.capacity().max(4);
                    charge(more * item)?;
                    out.reserve_exact(more);
                }
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Items(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(deserialize_with = "vec")]
        items: Vec<u64>,
    }

    fn items(n: usize) -> String {
        format!("{{\"items\":[{}]}}", vec!["1"; n].join(","))
    }

    #[test]
    fn items_are_free_outside_a_frame() {
        let doc: Doc = serde_json::from_str(&items(100)).unwrap();
        assert_eq!(doc.items.len(), 100);
    }

    #[test]
    fn a_frame_may_hold_items_up_to_the_budget_and_not_beyond() {
        // u64 items: the budget holds 4 Mi of them, growth included.
        let fits = within(|| serde_json::from_str::<Doc>(&items(1 << 20)));
        assert_eq!(fits.unwrap().items.len(), 1 << 20);
        let over = within(|| serde_json::from_str::<Doc>(&items(5 << 20)));
        let e = over.err().expect("refused").to_string();
        assert!(e.contains("too many items in one message"), "{e}");
        // The budget was the frame's: the next one starts afresh, and after the frame nothing
        // is counted.
        assert!(within(|| serde_json::from_str::<Doc>(&items(1 << 20))).is_ok());
        assert!(serde_json::from_str::<Doc>(&items(5 << 20)).is_ok());
    }
}
