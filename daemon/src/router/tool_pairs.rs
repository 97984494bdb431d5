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
/// assistant turn with calls).
pub fn pair_tool_calls(chat: &mut ChatRequest) -> usize {
    let mut changed = 0;
    let mut k = 0;
    while k < chat.messages.len() {
        // The calls of the turn before this one, if it was the assistant's.
        let calls: Vec<String> = match k.checked_sub(1).map(|j| &chat.messages[j]) {
            Some(prev) if prev.role == Role::Assistant => call_ids(prev),
            _ => Vec::new(),
        };
        let m = &mut chat.messages[k];
        match m.role {
            Role::User => changed += results_to_text(m, &calls),
            Role::Assistant => {
                let own = call_ids(m);
                let last = k + 1 == chat.messages.len();
                if !own.is_empty() && !last {
                    let next = &chat.messages[k + 1];
                    let answered: Vec<&str> = if next.role == Role::User {
                        next.content
                            .iter()
                            .filter_map(|b| match b {
                                ContentBlock::ToolResult { tool_use_id, .. } => {
                                    Some(tool_use_id.as_str())
                                }
                                _ => None,
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let missing: Vec<ContentBlock> = own
                        .iter()
                        .filter(|id| !answered.contains(&id.as_str()))
                        .map(|id| ContentBlock::ToolResult {
                            tool_use_id: id.clone(),
                            content: NO_RESULT.into(),
                            is_error: true,
                            images: Vec::new(),
                        })
                        .collect();
                    if !missing.is_empty() {
                        changed += missing.len();
                        if next.role == Role::User {
                            // Results go first in their turn, as Anthropic requires.
                            let content = &mut chat.messages[k + 1].content;
                            content.splice(0..0, missing);
                        } else {
                            chat.messages.insert(
                                k + 1,
                                Message {
                                    role: Role::User,
                                    content: missing,
                                },
                            );
                        }
                    }
                }
            }
        }
        k += 1;
    }
    if changed > 0 {
        tracing::debug!(changed, "tool calls and results paired in words");
    }
    changed
}

/// The ids of the tool calls in `m`.
fn call_ids(m: &Message) -> Vec<String> {
    m.content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::ToolUse { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// Turn each tool result in `m` that answers none of `calls` into text (its images stay, as
/// images); returns how many.
fn results_to_text(m: &mut Message, calls: &[String]) -> usize {
    let stray = |b: &ContentBlock| matches!(b, ContentBlock::ToolResult { tool_use_id, .. } if !calls.contains(tool_use_id));
    if !m.content.iter().any(stray) {
        return 0;
    }
    let mut n = 0;
    let mut out = Vec::with_capacity(m.content.len());
    for b in std::mem::take(&mut m.content) {
        match b {
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
                images,
            } if !calls.contains(&tool_use_id) => {
                n += 1;
                let what = if is_error { "error" } else { "result" };
                out.push(ContentBlock::Text {
                    text: format!("[The {what} of tool call {tool_use_id}:]\n{content}"),
                });
                out.extend(images.into_iter().map(|source| {
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
            other => out.push(other),
        }
    }
    m.content = out;
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
}
