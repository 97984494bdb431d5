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

/// Well-known starts of API keys, longest first: what follows is the key's own random body,
/// which a provider may echo without the prefix (`proj-…` for `sk-proj-…`).
const KNOWN_PREFIXES: [&str; 14] = [
    "sk-ant-admin01-",
    "sk-ant-api03-",
    "sk-svcacct-",
    "sk-or-v1-",
    "sk-proj-",
    "sk-ant-",
    "AIza",
    "gsk_",
    "xai-",
    "key-",
    "csk-",
    "sk-",
    "sk_",
    "pk-",
];

/// The shortest run of the configured key that is masked wherever it stands, in any case.
/// Eight characters of a random key are ~47 bits: no ordinary text holds them by chance, while
/// a key of a few characters (`test`, a local server's `none`) would otherwise blank every word
/// that contains it. Shorter keys are masked only where they stand whole, in their own case.
pub const MIN_KEY_RUN: usize = 8;

/// Remove the configured key, and anything shaped like an API key, from `text`.
///
/// The key is masked as it stands, and also in another case (`SK-PROJ-…`) or in part (`proj-…`
/// without its `sk-`, a proxy that quotes its tail): any run of [`MIN_KEY_RUN`] characters or
/// more of the key after its well-known prefix, ignoring ASCII case.
pub fn redact(text: &str, key: Option<&Secret>) -> String {
    let mut out = text.to_string();
    if let Some(k) = key.map(Secret::expose).filter(|k| k.len() >= 4) {
        out = out.replace(k, "***");
        out = mask_key_runs(&out, k);
    }
    mask_key_shapes(&out)
}

/// The key without its well-known prefix: the part that is the user's secret alone.
fn key_body(key: &str) -> &str {
    KNOWN_PREFIXES
        .iter()
        .find_map(|p| key.strip_prefix(p))
        .filter(|body| !body.is_empty())
        .unwrap_or(key)
}

/// Replace every run of [`MIN_KEY_RUN`] or more bytes of `text` that also stands in the body of
/// `key`, ignoring ASCII case, by `***`.
///
/// Each window of [`MIN_KEY_RUN`] bytes of the key's body goes into a set as one `u64`; a
/// text position whose window is in the set covers those bytes, and the union of covered
/// windows is exactly the text's runs shared with the key. One pass over the text with a
/// hash look-up per byte: this runs on error messages and model names (once per stream),
/// never per chunk of an answer, and a 64 KiB error body costs well under a millisecond.
fn mask_key_runs(text: &str, key: &str) -> String {
    let body = key_body(key).as_bytes();
    // A non-ASCII key could match inside a character; keys are ASCII in practice, and such a
    // key is still masked whole by the exact match above.
    if body.len() < MIN_KEY_RUN || !body.is_ascii() || text.len() < MIN_KEY_RUN {
        return text.to_string();
    }
    let window = |bytes: &[u8]| {
        let mut w = [0u8; MIN_KEY_RUN];
        for (slot, b) in w.iter_mut().zip(bytes) {
            *slot = b.to_ascii_lowercase();
        }
        u64::from_le_bytes(w)
    };
    let windows: std::collections::HashSet<u64> = body.windows(MIN_KEY_RUN).map(window).collect();
    let bytes = text.as_bytes();
    let mut covered = vec![false; bytes.len()];
    let mut any = false;
    for (at, w) in bytes.windows(MIN_KEY_RUN).enumerate() {
        if windows.contains(&window(w)) {
            covered[at..at + MIN_KEY_RUN].fill(true);
            any = true;
        }
    }
    if !any {
        return text.to_string();
    }
    // Covered bytes equal ASCII key bytes (lower-casing leaves every other byte as it is), so
    // each covered run starts and ends on a character boundary.
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while at < bytes.len() {
        let end = covered[at..]
            .iter()
            .position(|&c| c != covered[at])
            .map_or(bytes.len(), |n| at + n);
        if covered[at] {
            out.push_str("***");
        } else {
            out.push_str(&text[at..end]);
        }
        at = end;
    }
    out
}

/// Redact, put on one line, replace control characters, then cut to [`MAX_PROVIDER_TEXT`]
/// characters.
///
/// An error message or a model name is printed to terminals (`mythos ask`, `status`, `why`)
/// as one line: control characters become U+FFFD, since an escape sequence in it (`ESC ] 52`,
/// which writes the clipboard; `ESC [ 2J`) would act on the user's terminal, and each run of
/// whitespace one space, since a line break in it printed a line of the provider's choosing
/// ("\r\nfake: line", found by a helper; an HTML error page's indentation).
pub fn provider_text(text: &str, key: Option<&Secret>) -> String {
    let mut clean = redact(text, key);
    if clean
        .chars()
        .any(|c| is_unprintable(c) || (c.is_whitespace() && c != ' '))
        || clean.contains("  ")
    {
        let mut out = String::with_capacity(clean.len());
        let mut space = false;
        for c in clean.trim().chars() {
            if c.is_whitespace() {
                if !space {
                    out.push(' ');
                }
                space = true;
                continue;
            }
            space = false;
            out.push(if is_unprintable(c) { '\u{fffd}' } else { c });
        }
        clean = out;
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
/// with the configured key masked if it holds it whole; any other text is left as it is,
/// key-shaped or not. Runs of the key (as [`redact`] masks them) are not looked for here: an
/// id that shares eight characters with a key that is not random (a test's `mock-anthropic`)
/// came back altered, and the tool's result no longer matched its call.
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
        assert!(clean.ends_with(" end next"), "one line: {clean:?}");
        assert_eq!(
            provider_text("bad gateway\r\nfake: line\n\n  <p>\t</p>", None),
            "bad gateway fake: line <p> </p>"
        );
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

    /// A provider that echoes the key in capitals, or its body without the `sk-proj-` prefix,
    /// leaked it to the CLI, HTTP error bodies, status, `why` and the state database: only the
    /// exact key was masked (found by a chaos run against a mock that echoes all three).
    #[test]
    fn the_key_in_another_case_or_in_part_is_removed() {
        let key = Secret::new("sk-proj-SECRETSECRET123456789abcdef");
        let text = "Incorrect API key provided: sk-proj-...abcdef / \
                    proj-SECRETSECRET123456789abcdef / SK-PROJ-SECRETSECRET123456789ABCDEF / \
                    secretsecret12 / tail=23456789abcdef.";
        let r = provider_text(text, Some(&key));
        for part in ["SECRET", "secret", "23456789", "ABCDEF"] {
            assert!(!r.contains(part), "{part}: {r}");
        }
        // The provider's own masked form (six characters) and the words around stay readable.
        assert!(
            r.starts_with("Incorrect API key provided: sk-proj-...abcdef / "),
            "{r}"
        );
        assert!(r.ends_with(" / tail=***."), "{r}");
        // Keys without a known prefix: any run of eight characters, in any case.
        let key = Secret::new("localpass-SECRETPASS-xyz");
        let r = redact("got LOCALPASS-secretpass-XYZ and secretpass-x", Some(&key));
        assert_eq!(r, "got *** and ***");
        // Tool ids must round-trip: only the whole key is masked there (an id sharing eight
        // characters with a test's key came back altered and broke its tool's result).
        assert_eq!(
            exact_key("call_SECRETPASS-XYZ".into(), Some(&key)),
            "call_SECRETPASS-XYZ"
        );
    }

    /// A short key is masked only where it stands whole: a key of a few characters must not
    /// blank every word that shares them, nor a prefix every key of its kind shares.
    #[test]
    fn short_keys_and_public_prefixes_leave_text_readable() {
        let key = Secret::new("short1");
        let text = "SHORT1 is short1 in a shortlist";
        assert_eq!(redact(text, Some(&key)), "SHORT1 is *** in a shortlist");
        let key = Secret::new("sk-ant-api03-SECRETSECRET123456789");
        let text = "keys look like sk-ant-api03-… and this is an invalid_request_error";
        assert_eq!(redact(text, Some(&key)), text);
        // Multi-byte text around a run keeps its characters.
        let r = redact("é secretsecret123 ü", Some(&key));
        assert_eq!(r, "é *** ü");
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
