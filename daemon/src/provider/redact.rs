//! Keeping API keys out of everything a provider can put into our words.
//!
//! Providers and the proxies in front of them echo what they were sent: a 401 that quotes the
//! key (masked or not), an in-stream error that dumps the request headers, a model name field
//! that is whatever the server says. Every provider-controlled string passes through
//! [`provider_text`] once, at the transport, before anything else sees it: it is redacted first
//! and cut to a bounded length after, so a key can never straddle the cut.

use crate::config::Secret;

/// Longest provider-controlled text kept (in characters).
pub const MAX_PROVIDER_TEXT: usize = 400;

/// Prefixes of API keys in the wild (OpenAI, Anthropic, DeepSeek, Groq, xAI, Google, generic).
const KEY_PREFIXES: [&str; 7] = ["sk-", "sk_", "gsk_", "xai-", "AIza", "key-", "pk-"];

/// A key-like token is this long at least (prefix included): shorter runs are ordinary words.
const MIN_KEY_LEN: usize = 16;

/// Remove the configured key, and anything shaped like an API key, from `text`.
pub fn redact(text: &str, key: Option<&Secret>) -> String {
    let mut out = text.to_string();
    if let Some(k) = key.map(Secret::expose).filter(|k| k.len() >= 4) {
        out = out.replace(k, "***");
    }
    mask_key_shapes(&out)
}

/// Redact, replace control characters, then cut to [`MAX_PROVIDER_TEXT`] characters.
///
/// Control characters (all but newline and tab) become U+FFFD: an error message or a model
/// name is printed to terminals (`mythos ask`, `status`, `why`) and an escape sequence in it
/// (`ESC ] 52`, which writes the clipboard; `ESC [ 2J`) would act on the user's terminal.
pub fn provider_text(text: &str, key: Option<&Secret>) -> String {
    let mut clean = redact(text, key);
    if clean.chars().any(is_unprintable) {
        clean = clean
            .chars()
            .map(|c| if is_unprintable(c) { '\u{fffd}' } else { c })
            .collect();
    }
    match clean.char_indices().nth(MAX_PROVIDER_TEXT) {
        Some((at, _)) => format!("{}…", &clean[..at]),
        None => clean,
    }
}

/// A character that moves or controls a terminal rather than showing: C0 and C1 controls and
/// DEL, but for newline and tab.
pub fn is_unprintable(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

/// `text` (a tool call's id or name, which the client must get back as the provider sent it)
/// with the configured key masked, if it holds it; any other text is left as it is.
pub fn exact_key(text: String, key: Option<&Secret>) -> String {
    match key.map(Secret::expose).filter(|k| k.len() >= 4) {
        Some(k) if text.contains(k) => text.replace(k, "***"),
        _ => text,
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Replace every run of key characters that starts with a known prefix and is long enough.
fn mask_key_shapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        // The start of the next run of key characters.
        let Some(start) = rest.find(is_key_char) else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(|c: char| !is_key_char(c)).unwrap_or(rest.len());
        let run = &rest[..end];
        let looks_like_key = run.len() >= MIN_KEY_LEN
            && KEY_PREFIXES
                .iter()
                .any(|p| run.starts_with(p) || run.contains(&format!("-{p}")));
        out.push_str(if looks_like_key { "***" } else { run });
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Escape sequences a provider puts into an error message or a model name (a terminal
    /// title, a clipboard write, a screen clear) never reach a terminal whole.
    #[test]
    fn control_characters_are_replaced() {
        let text = "bad \x1b]0;PWNED\x07 \x1b]52;c;aGk=\x07 \x1b[2J \u{9b}31m\r\x7f end\n\tnext";
        let clean = provider_text(text, None);
        assert!(!clean.chars().any(is_unprintable), "{clean:?}");
        assert!(
            clean.starts_with("bad \u{fffd}]0;PWNED\u{fffd}"),
            "{clean:?}"
        );
        assert!(clean.ends_with(" end\n\tnext"), "{clean:?}");
    }

    /// A tool call's id and name keep their exact text unless they hold the key itself.
    #[test]
    fn tool_ids_lose_only_the_key() {
        let key = Secret::new("sk-ant-api03-abcdefghijklmnop");
        assert_eq!(
            exact_key("call_sk-ant-api03-abcdefghijklmnop".into(), Some(&key)),
            "call_***"
        );
        assert_eq!(exact_key("toolu_01AbC".into(), Some(&key)), "toolu_01AbC");
        assert_eq!(
            exact_key("sk-lookalike-tool-name-xyz".into(), Some(&key)),
            "sk-lookalike-tool-name-xyz"
        );
        assert_eq!(exact_key("x".into(), None), "x");
    }

    #[test]
    fn keys_are_removed_wherever_they_stand() {
        let key = Secret::new("sk-ant-api03-abcdefghijklmnop");
        for text in [
            "Incorrect API key provided: sk-ant-api03-abcdefghijklmnop.",
            r#"{"headers":{"x-api-key":"sk-ant-api03-abcdefghijklmnop"}}"#,
            "authorization=Bearer sk-ant-api03-abcdefghijklmnop;",
            "key:sk-ant-api03-abcdefghijklmnop",
        ] {
            let r = redact(text, Some(&key));
            assert!(!r.contains("abcdefghij"), "{r}");
        }
        // Keys that are not ours, in every usual shape, are masked too.
        for other in [
            "sk-proj-zzzzzzzzzzzzzzzz",
            "gsk_zzzzzzzzzzzzzzzzzzzz",
            "xai-zzzzzzzzzzzzzzzzzzzz",
            "AIzaSyzzzzzzzzzzzzzzzzzzz",
        ] {
            let r = redact(&format!("echo \"{other}\" back"), None);
            assert!(!r.contains("zzzzzzzz"), "{r}");
            assert!(r.starts_with("echo \"***\""), "{r}");
        }
        // Ordinary words and short ids stay.
        let plain = "rate_limit_error: sk-short and task-123 are fine";
        assert_eq!(redact(plain, None), plain);
    }

    #[test]
    fn a_key_straddling_the_cut_is_gone_whole() {
        let key = Secret::new("k-0123456789abcdefghijklmnopqrstuvwxy");
        // The key starts 10 characters before the cut.
        let text = format!("{}{}", "x".repeat(MAX_PROVIDER_TEXT - 10), key.expose());
        let r = provider_text(&text, Some(&key));
        assert!(!r.contains("0123456789"), "{r}");
        assert!(r.chars().count() <= MAX_PROVIDER_TEXT + 1);
        // Long text is cut at a character boundary.
        let r = provider_text(&"é".repeat(1000), None);
        assert_eq!(r.chars().count(), MAX_PROVIDER_TEXT + 1);
    }
}
