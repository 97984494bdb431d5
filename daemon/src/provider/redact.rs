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

/// Redact, then cut to [`MAX_PROVIDER_TEXT`] characters.
pub fn provider_text(text: &str, key: Option<&Secret>) -> String {
    let clean = redact(text, key);
    match clean.char_indices().nth(MAX_PROVIDER_TEXT) {
        Some((at, _)) => format!("{}…", &clean[..at]),
        None => clean,
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
