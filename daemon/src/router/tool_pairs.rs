//! Tool calls and their results, paired as every provider requires before a request goes out.
//!
//! Anthropic, OpenAI and DeepSeek refuse a conversation with a tool result that answers no call
//! in the assistant turn just before it, or a call (before the last turn) whose result is not in
//! the user turn just after it: a `400`, from every provider alike, so the request failed
//! everywhere. Such histories come from clients that trim old turns, from tools a translation
//! had to leave out (Codex's `local_shell` once did), and from agents that crashed between a call
//! and its result. Each stray piece is kept in words instead, so the model still reads it:
//! a result with no call becomes text in its turn, and a call with no result gets one saying
//! none was recorded.

use mythos_protocol::{ChatRequest, ContentBlock, Message, Role};

/// The text a call with no recorded result is answered with.
pub const NO_RESULT: &str = "No result was recorded for this tool call.";

/// Pair every tool call and result in `chat` (see the module doc); returns how many pieces were
/// changed. A well-formed conversation is not touched (no allocation beyond one id list per
/// assistant turn with calls). The client's prompt-cache breakpoints move with their blocks.
pub fn pair_tool_calls(chat: &mut ChatRequest) -> usize {
    let mut changed = 0;
    let mut k = 0;
    while k < chat.messages.len() {
        changed += match chat.messages[k].role {
            Role::User => results_to_text(chat, k),
            Role::Assistant => answer_calls(chat, k),
        };
        k += 1;
    }
    if changed > 0 {
        tracing::debug!(changed, "tool calls and results paired in words");
    }
    changed
}

/// The ids of the tool calls in `m`, borrowed (this runs for every request: nothing is copied
/// unless something must change).
fn call_ids(m: &Message) -> impl Iterator<Item = &str> {
    m.content.iter().filter_map(|b| match b {
        ContentBlock::ToolUse { id, .. } => Some(id.as_str()),
        _ => None,
    })
}

/// Give each call of assistant turn `k` (unless it is the last turn) a result in the next turn,
/// first in it (as Anthropic requires), or in a turn of its own; returns how many were missing.
fn answer_calls(chat: &mut ChatRequest, k: usize) -> usize {
    let Some(next) = chat.messages.get(k + 1) else {
        return 0;
    };
    let next_is_user = next.role == Role::User;
    let answered = |id: &str| {
        next_is_user
            && next.content.iter().any(
                |b| matches!(b, ContentBlock::ToolResult { tool_use_id, .. } if tool_use_id == id),
            )
    };
    let missing: Vec<ContentBlock> = call_ids(&chat.messages[k])
        .filter(|id| !answered(id))
        .map(|id| ContentBlock::ToolResult {
            tool_use_id: id.to_string(),
            content: NO_RESULT.into(),
            is_error: true,
            images: Vec::new(),
        })
        .collect();
    let n = missing.len();
    if n == 0 {
        return 0;
    }
    let at = (k + 1) as u32;
    if next_is_user {
        chat.messages[k + 1].content.splice(0..0, missing);
        for p in chat
            .options
            .cache_points
            .iter_mut()
            .filter(|p| p.message == at)
        {
            p.block += n as u32;
        }
    } else {
        chat.messages.insert(
            k + 1,
            Message {
                role: Role::User,
                content: missing,
            },
        );
        for p in chat
            .options
            .cache_points
            .iter_mut()
            .filter(|p| p.message >= at)
        {
            p.message += 1;
        }
    }
    n
}

/// Turn each tool result in user turn `k` that answers none of the calls of the assistant turn
/// just before it into text (its images stay, as images), after the turn's other blocks, so
/// that the results that do answer a call stay first; returns how many.
fn results_to_text(chat: &mut ChatRequest, k: usize) -> usize {
    let prev = k
        .checked_sub(1)
        .map(|j| &chat.messages[j])
        .filter(|m| m.role == Role::Assistant);
    let called = |id: &str| prev.is_some_and(|m| call_ids(m).any(|c| c == id));
    let is_stray = |b: &ContentBlock| matches!(b, ContentBlock::ToolResult { tool_use_id, .. } if !called(tool_use_id));
    if !chat.messages[k].content.iter().any(is_stray) {
        return 0;
    }
    let strays: Vec<bool> = chat.messages[k].content.iter().map(is_stray).collect();
    let stray = |n: usize| strays[n];
    let m = &mut chat.messages[k];
    let old = std::mem::take(&mut m.content);
    // Where each old block ends up: kept blocks in order, then each stray one's text.
    let kept = strays.iter().filter(|s| !**s).count();
    let mut moved = Vec::with_capacity(old.len());
    let mut out = Vec::with_capacity(old.len());
    let mut tail = Vec::new();
    for (n, b) in old.into_iter().enumerate() {
        if !stray(n) {
            moved.push(out.len());
            out.push(b);
            continue;
        }
        let ContentBlock::ToolResult {
            tool_use_id,
            content,
            is_error,
            images,
        } = b
        else {
            unreachable!("a stray block is a tool result")
        };
        moved.push(kept + tail.len());
        let what = if is_error { "error" } else { "result" };
        tail.push(ContentBlock::Text {
            text: format!("[The {what} of tool call {tool_use_id}:]\n{content}"),
        });
        tail.extend(images.into_iter().map(|source| {
            if source.is_document() {
                ContentBlock::Document {
                    source,
                    title: None,
                }
            } else {
                ContentBlock::Image { source }
            }
        }));
    }
    let n = moved.len() - kept;
    out.extend(tail);
    m.content = out;
    for p in chat.options.cache_points.iter_mut() {
        if p.message as usize == k {
            if let Some(&to) = moved.get(p.block as usize) {
                p.block = to as u32;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> ContentBlock {
        ContentBlock::ToolUse {
            id: id.into(),
            name: "shell".into(),
            input_json: "{}".into(),
        }
    }

    fn result(id: &str, text: &str) -> ContentBlock {
        ContentBlock::ToolResult {
            tool_use_id: id.into(),
            content: text.into(),
            is_error: false,
            images: Vec::new(),
        }
    }

    fn turn(role: Role, content: Vec<ContentBlock>) -> Message {
        Message { role, content }
    }

    fn text(t: &str) -> ContentBlock {
        ContentBlock::Text { text: t.into() }
    }

    /// A conversation every provider takes is left exactly as it was.
    #[test]
    fn paired_calls_are_left_alone() {
        let mut chat = ChatRequest::user_text(1, "list");
        chat.messages.push(turn(
            Role::Assistant,
            vec![text("Let me look."), call("a"), call("b")],
        ));
        chat.messages.push(turn(
            Role::User,
            vec![result("b", "2"), result("a", "1"), text("go on")],
        ));
        chat.messages.push(turn(Role::Assistant, vec![call("c")]));
        let before = chat.clone();
        assert_eq!(pair_tool_calls(&mut chat), 0);
        assert_eq!(chat, before);
    }

    /// A result whose call was trimmed away (or never offered upstream) is kept as text in its
    /// turn, and a call whose result is missing gets one saying so, first in the next turn or
    /// in a turn of its own: a `400` at every provider before.
    #[test]
    fn strays_are_kept_in_words() {
        let mut chat = ChatRequest::user_text(1, "list");
        chat.messages
            .push(turn(Role::Assistant, vec![call("a"), call("b")]));
        chat.messages.push(turn(
            Role::User,
            vec![result("a", "1"), result("zz", "old")],
        ));
        chat.messages.push(turn(Role::Assistant, vec![call("c")]));
        chat.messages
            .push(turn(Role::Assistant, vec![text("and so")]));
        chat.messages.push(turn(Role::User, vec![text("thanks")]));
        assert_eq!(pair_tool_calls(&mut chat), 3);
        assert_eq!(
            chat.messages[2].content,
            [
                ContentBlock::ToolResult {
                    tool_use_id: "b".into(),
                    content: NO_RESULT.into(),
                    is_error: true,
                    images: Vec::new(),
                },
                result("a", "1"),
                text("[The result of tool call zz:]\nold"),
            ]
        );
        assert_eq!(chat.messages[4].role, Role::User);
        assert!(matches!(&chat.messages[4].content[..],
            [ContentBlock::ToolResult { tool_use_id, .. }] if tool_use_id == "c"));
        assert_eq!(chat.messages.len(), 7);
        // Paired now: nothing more to do.
        assert_eq!(pair_tool_calls(&mut chat), 0);
    }

    /// The last turn's calls are the model's to make (a prefill, or an answer being
    /// continued): no result is made up for them.
    #[test]
    fn calls_in_the_last_turn_are_not_answered() {
        let mut chat = ChatRequest::user_text(1, "list");
        chat.messages.push(turn(Role::Assistant, vec![call("a")]));
        assert_eq!(pair_tool_calls(&mut chat), 0);
        assert_eq!(chat.messages.len(), 2);
    }

    /// A stray result before one that answers a call becomes text after it: results go first
    /// in their turn (found by a review).
    #[test]
    fn results_stay_first_after_a_stray_one() {
        let mut chat = ChatRequest::user_text(1, "list");
        chat.messages.push(turn(Role::Assistant, vec![call("a")]));
        chat.messages.push(turn(
            Role::User,
            vec![result("zz", "old"), text("see"), result("a", "1")],
        ));
        assert_eq!(pair_tool_calls(&mut chat), 1);
        assert_eq!(
            chat.messages[2].content,
            [
                text("see"),
                result("a", "1"),
                text("[The result of tool call zz:]\nold")
            ]
        );
    }

    /// The client's cache breakpoints stay on the blocks they were set on when blocks are
    /// added or moved (found by a review).
    #[test]
    fn cache_points_follow_their_blocks() {
        let point = |message: u32, block: u32| mythos_protocol::CachePoint {
            message,
            block,
            ttl: mythos_protocol::CacheTtl::Default,
        };
        let mut chat = ChatRequest::user_text(1, "list");
        chat.messages.push(turn(Role::Assistant, vec![call("a")]));
        chat.messages.push(turn(
            Role::User,
            vec![result("zz", "old"), text("one"), text("two")],
        ));
        chat.messages.push(turn(Role::Assistant, vec![call("b")]));
        chat.messages.push(turn(Role::Assistant, vec![text("so")]));
        chat.messages.push(turn(Role::User, vec![text("last")]));
        chat.options.cache_points = vec![point(2, 2), point(2, 0), point(4, 0), point(5, 0)];
        pair_tool_calls(&mut chat);
        let at = |p: &mythos_protocol::CachePoint| {
            chat.messages[p.message as usize].content[p.block as usize].clone()
        };
        let points = chat.options.cache_points.clone();
        assert_eq!(at(&points[0]), text("two"));
        assert_eq!(at(&points[1]), text("[The result of tool call zz:]\nold"));
        assert_eq!(at(&points[2]), text("so"));
        assert_eq!(at(&points[3]), text("last"));
    }
}
