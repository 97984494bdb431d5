//! Tool names the provider APIs accept, and the way back to the client's own names.
//!
//! Anthropic and OpenAI both require tool names to match `^[a-zA-Z0-9_-]{1,64}$`, while agents
//! name tools freely (`mcp__github.com__search_issues`, names longer than 64, dots, spaces). A
//! request served by either API therefore gets a per-request [`ToolNames`]: valid names pass
//! through unchanged, others get a deterministic stand-in (the first 55 valid characters, `_`,
//! and 8 hex digits of an FNV-1a hash of the original). The same map rewrites tools, the tool
//! choice and the tool calls in the history on the way out, and the names of tool calls in the
//! answer on the way back, so the client only ever sees names it defined.
//!
//! Deterministic, so the same conversation gives the same body every turn (prompt caches key on
//! the bytes) and on every provider.

use std::collections::{BTreeSet, HashMap, HashSet};

use mythos_protocol::{ChatRequest, ContentBlock, ToolChoice};

/// Longest tool name both APIs accept.
pub const MAX_LEN: usize = 64;

/// Characters of the original kept before the hash suffix: 55 + `_` + 8 hex = 64.
const KEEP: usize = MAX_LEN - 9;

/// Whether the APIs accept `name` as it is.
pub fn is_valid(name: &str) -> bool {
    (1..=MAX_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// 64-bit FNV-1a, for tool-call ids rewritten to fit an API: stable across runs and builds,
/// which a conversation's turns need (the call and its result must match).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// 32-bit FNV-1a: tiny, stable across builds and platforms (unlike `DefaultHasher`).
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The stand-in for an invalid name; `salt` > 0 only after a collision.
fn stand_in(name: &str, salt: u32) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(KEEP)
        .collect();
    let mut hashed = name.as_bytes().to_vec();
    if salt > 0 {
        hashed.extend_from_slice(format!("#{salt}").as_bytes());
    }
    out.push('_');
    out.push_str(&format!("{:08x}", fnv1a32(&hashed)));
    out
}

/// The name mapping of one request. Empty (and free) when every name is valid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolNames {
    to_wire: HashMap<String, String>,
    to_client: HashMap<String, String>,
}

impl ToolNames {
    /// The mapping for every tool name `chat` mentions: its tools, its tool choice and the
    /// tool calls in its history.
    pub fn for_request(chat: &ChatRequest) -> Self {
        let mut names: Vec<&str> = chat.tools.iter().map(|t| t.name.as_str()).collect();
        if let Some(ToolChoice::Tool { name }) = &chat.options.tool_choice {
            names.push(name);
        }
        for m in &chat.messages {
            for b in &m.content {
                if let ContentBlock::ToolUse { name, .. } = b {
                    names.push(name);
                }
            }
        }
        Self::for_names(names)
    }

    /// The mapping for these names.
    pub fn for_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        // Valid names are fixed points, so they are taken first; the rest are handled in sorted
        // order, which makes the outcome of a collision independent of where names appear.
        let all: BTreeSet<&str> = names.into_iter().collect();
        let mut taken: HashSet<String> = all
            .iter()
            .filter(|n| is_valid(n))
            .map(|n| n.to_string())
            .collect();
        let mut map = ToolNames::default();
        for name in all.into_iter().filter(|n| !is_valid(n)) {
            let mut salt = 0;
            let wire = loop {
                let w = stand_in(name, salt);
                if !taken.contains(&w) {
                    break w;
                }
                salt += 1;
            };
            tracing::debug!(tool = name, wire = %wire, "tool name renamed for the provider API");
            taken.insert(wire.clone());
            map.to_client.insert(wire.clone(), name.to_string());
            map.to_wire.insert(name.to_string(), wire);
        }
        map
    }

    /// Whether no name needed changing.
    pub fn is_empty(&self) -> bool {
        self.to_wire.is_empty()
    }

    /// The name to send for the client's `name`.
    pub fn wire<'a>(&'a self, name: &'a str) -> &'a str {
        self.to_wire.get(name).map_or(name, String::as_str)
    }

    /// The client's name for a name the provider sent (unknown names pass through: a model
    /// may call a tool it was never given, and the client should see that as it is).
    pub fn client(&self, wire: String) -> String {
        match self.to_client.get(&wire) {
            Some(n) => n.clone(),
            None => wire,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_pass_through_untouched() {
        let m = ToolNames::for_names(["read", "Bash", "mcp__git-hub__x", &"a".repeat(64)]);
        assert!(m.is_empty());
        assert_eq!(m.wire("read"), "read");
        assert_eq!(m.client("read".into()), "read");
    }

    #[test]
    fn long_and_odd_names_round_trip() {
        let long = format!("mcp__server__{}", "x".repeat(80));
        let odd = "github.com/search issues";
        let unicode = "lire_le_fichier_é";
        let m = ToolNames::for_names([long.as_str(), odd, unicode, "", "ok"]);
        for n in [long.as_str(), odd, unicode, ""] {
            let w = m.wire(n);
            assert!(is_valid(w), "{n:?} -> {w:?}");
            assert_ne!(w, n);
            assert_eq!(m.client(w.to_string()), n);
        }
        assert_eq!(m.wire("ok"), "ok");
        let w = m.wire(&long);
        assert_eq!(w.len(), 64);
        assert!(w.starts_with(&long[..55]));
        assert!(m.wire(odd).starts_with("github_com_search_issues_"));
        // Deterministic: the same names give the same map, whatever their order.
        let again = ToolNames::for_names(["ok", "", unicode, odd, long.as_str()]);
        assert_eq!(m, again);
        assert_eq!(m.client("unknown".into()), "unknown");
    }

    #[test]
    fn collisions_get_distinct_names() {
        // Two long names that agree on their first 55 characters differ in the hash.
        let a = format!("{}a", "p".repeat(70));
        let b = format!("{}b", "p".repeat(70));
        // A valid name that is exactly what `odd` would become is never taken from its owner.
        let odd = "a.b";
        let squatter = stand_in(odd, 0);
        let m = ToolNames::for_names([a.as_str(), b.as_str(), odd, squatter.as_str()]);
        let wires: HashSet<&str> = [a.as_str(), b.as_str(), odd, squatter.as_str()]
            .iter()
            .map(|n| m.wire(n))
            .collect();
        assert_eq!(wires.len(), 4);
        assert_eq!(m.wire(&squatter), squatter);
        assert_ne!(m.wire(odd), squatter);
        assert!(is_valid(m.wire(odd)));
        assert_eq!(m.client(m.wire(odd).to_string()), odd);
    }

    #[test]
    fn fnv_is_the_published_function() {
        // Test vectors of FNV-1a 64 and 32.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }
}
