//! Everything the client shows: streamed answers, notices, the footer line, tables and the
//! `why` explanation.
//!
//! The formatting functions are pure (they return `String`s) so they can be tested from
//! hand-built reports; only [`StreamPrinter`] writes, and it writes to any `Write` pair.
//! Styling is plain ANSI SGR and is off when the stream is not a terminal or `NO_COLOR` is set
//! (<https://no-color.org>).
//!
//! - this file: styles, small formats, notices, hints, wall-clock times;
//! - [`table`]: `mythos status` and `mythos usage`;
//! - [`why`]: `mythos why`, a routing record in words;
//! - [`printer`]: streaming an answer to the terminal.

pub mod markdown;
mod printer;
mod table;
mod why;

use std::io::{self, IsTerminal};
use std::path::Path;

use mythos_protocol::{ErrorKind, RerouteMode, Usage};

pub use printer::{PrinterOptions, StreamPrinter};
pub use table::{models_text, status_text, usage_text};
pub use why::explain_why;

/// `text` made safe to write to a terminal: a model's answer may hold escape sequences
/// (prompt injection can ask for them) that set the window title, write the clipboard
/// (`ESC ] 52`) or clear the screen. Controls other than newline and tab are shown as their
/// Unicode pictures (`␛`); carriage returns, which would overwrite the line, are dropped.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .filter(|&c| c != '\r')
        .map(|c| match c {
            '\u{0}'..='\u{1f}' if unsafe_char(c) => {
                char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}')
            }
            '\u{7f}' => '\u{2421}',
            c if unsafe_char(c) => '\u{fffd}',
            c => c,
        })
        .collect::<String>()
        .into()
}

/// The API key variables the daemon reads, named in hints.
pub const KEY_VARS: &str = "ANTHROPIC_API_KEY, DEEPSEEK_API_KEY, OPENAI_API_KEY or GEMINI_API_KEY";

/// The key variables set in `env` (this client's environment): the daemon reads its own once,
/// when it starts, so a key exported after a command started it is not the daemon's. The
/// daemon's own token (`eval "$(mythos env openai)"`) is no key.
pub fn keys_in_env(env: &dyn Fn(&str) -> Option<String>) -> Vec<&'static str> {
    mythos_protocol::PROVIDER_KEY_VARIABLES
        .into_iter()
        .filter(|k| env(k).is_some_and(|v| !v.trim().is_empty() && !v.starts_with("mythos-")))
        .collect()
}

/// [`keys_in_env`] of this process's environment.
pub fn env_keys() -> Vec<&'static str> {
    keys_in_env(&|k| std::env::var(k).ok())
}

/// The line that says the daemon runs on its simulated providers, and what to do about it. A
/// user who exported a key after the first `mythos` command started the daemon was told "no
/// API keys found: set ANTHROPIC_API_KEY..." with that very variable set in the shell.
pub fn simulated_note(keys_here: &[&str], service: bool) -> String {
    if keys_here.is_empty() {
        return format!("simulated providers (no API keys found: set {KEY_VARS})");
    }
    let how = if service {
        "put it in the service's environment (~/.config/mythos/env), then run `mythos daemon \
         restart`"
    } else {
        "run `mythos daemon restart` from this shell to use it"
    };
    format!(
        "simulated providers: this shell has {}, but mythosd was started without it (it reads \
         keys when it starts): {how}",
        keys_here.join(", ")
    )
}

/// Whether (and how) to style text for one output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    color: bool,
}

impl Style {
    /// No escape codes at all (tests).
    #[cfg(test)]
    pub const PLAIN: Style = Style { color: false };

    /// Styling for stdout: on when stdout is a terminal and `NO_COLOR` is unset.
    pub fn stdout() -> Style {
        Style {
            color: color_allowed() && io::stdout().is_terminal(),
        }
    }

    /// Styling for stderr: on when stderr is a terminal and `NO_COLOR` is unset.
    pub fn stderr() -> Style {
        Style {
            color: color_allowed() && io::stderr().is_terminal(),
        }
    }

    /// Styling forced on (tests).
    #[cfg(test)]
    pub const COLOR: Style = Style { color: true };

    /// Dimmed: secondary information (footer, thinking).
    pub fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }

    /// Bold: headings.
    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }

    /// Red: failures.
    pub fn red(&self, s: &str) -> String {
        self.paint("31", s)
    }

    /// Green: healthy.
    pub fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }

    /// Yellow: reroutes and cooldowns.
    pub fn yellow(&self, s: &str) -> String {
        self.paint("33", s)
    }

    /// Cyan: probing.
    pub fn cyan(&self, s: &str) -> String {
        self.paint("36", s)
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color && !s.is_empty() {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

fn color_allowed() -> bool {
    // no-color.org: set and not empty means no color.
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && !dumb_terminal()
}

/// `TERM=dumb` (Emacs' shell buffers, some CI logs): the terminal shows text and moves to the
/// next line, nothing more; a colour or a cursor movement would appear as literal `^[[4A`.
pub fn dumb_terminal() -> bool {
    std::env::var_os("TERM").is_some_and(|t| t == "dumb")
}

/// Milliseconds since the Unix epoch, now.
pub use mythos_protocol::clock::now_unix_ms;
use mythos_protocol::clock::utc_civil;

// ---------------------------------------------------------------------------------------------
// Small formats

/// A duration for humans: `850 ms`, `1.2 s`, `2 m 5 s`.
pub fn fmt_duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        fmt_wait_ms(ms)
    }
}

/// A waiting time, rounded up to the second: `59 s`, `4 m 59 s`, `1 h 3 m`.
pub fn fmt_wait_ms(ms: u64) -> String {
    let secs = ms.div_ceil(1000);
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 if secs.is_multiple_of(60) => format!("{} m", secs / 60),
        60..3600 => format!("{} m {} s", secs / 60, secs % 60),
        _ if (secs % 3600) / 60 == 0 => format!("{} h", secs / 3600),
        _ => format!("{} h {} m", secs / 3600, (secs % 3600) / 60),
    }
}

/// An uptime: `12 s`, `3 m 12 s`, `2 h 5 m`, `3 d 4 h`.
pub fn fmt_uptime(secs: u64) -> String {
    if secs >= 86_400 {
        format!("{} d {} h", secs / 86_400, (secs % 86_400) / 3600)
    } else {
        fmt_wait_ms(secs * 1000)
    }
}

/// A cost in US dollars: `$0`, `<$0.0001`, `$0.0012`, `$3.41`.
pub fn fmt_cost(usd: f64) -> String {
    if usd.is_nan() || usd <= 0.0 {
        "$0".to_string()
    } else if usd < 0.0001 {
        "<$0.0001".to_string()
    } else if usd < 1.0 {
        format!("${usd:.4}")
    } else {
        format!("${usd:.2}")
    }
}

/// A count with thousands separators: `1,234,567`.
pub fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The line shown after each answer: `[provider · model · 1.2 s · 153 tok · $0.0012]`.
pub fn footer(provider: &str, model: &str, latency_ms: u64, usage: Usage, cost_usd: f64) -> String {
    format!(
        "[{provider} · {model} · {} · {} tok · {}]",
        fmt_duration_ms(latency_ms),
        fmt_count(usage.input_tokens + usage.output_tokens),
        fmt_cost(cost_usd)
    )
}

/// The line shown when the daemon moves a request to another provider.
///
/// `after_wait`: the request waited for capacity since `from` failed, and that wait was shown
/// first; the notice then says the failure came before it.
pub fn reroute_notice(
    from: &str,
    to: &str,
    reason: &str,
    mode: RerouteMode,
    after_wait: bool,
) -> String {
    let reason = reason.trim();
    let why = if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    };
    let (failed, next) = if after_wait {
        (" had failed", "; after the wait,")
    } else {
        (" failed", ":")
    };
    match mode {
        // A quick retry, or the only provider there is: "continuing on v" after "v failed"
        // read as if another provider had taken over.
        RerouteMode::Continue if from == to => {
            format!("↪ {from}{failed}{why}{next} trying it again")
        }
        RerouteMode::Continue => format!("↪ {from}{failed}{why}{next} continuing on {to}"),
        RerouteMode::Restart => format!("↪ {from}{failed}{why}{next} the answer restarts on {to}"),
    }
}

/// The line shown while a request waits for capacity.
pub fn queued_notice(
    reason: &str,
    until_unix_ms: Option<u64>,
    deadline_unix_ms: u64,
    now_ms: u64,
) -> String {
    let expected = match until_unix_ms {
        Some(at) => format!("expected in {}", fmt_wait_ms(at.saturating_sub(now_ms))),
        None => "expected when a provider frees up".to_string(),
    };
    format!(
        "⏳ waiting for capacity ({reason}): {expected}; gives up in {}",
        fmt_wait_ms(deadline_unix_ms.saturating_sub(now_ms))
    )
}

/// A reason without its figures, to tell news from a countdown.
fn gist(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| !c.is_ascii_digit() && *c != '.')
        .collect()
}

/// An error kind in words a user understands.
pub fn kind_words(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::RateLimited => "rate limited",
        ErrorKind::Overloaded => "overloaded",
        ErrorKind::ServerError => "server error",
        ErrorKind::Network => "network error",
        ErrorKind::Timeout => "no progress in time",
        ErrorKind::Truncated => "stream cut off",
        ErrorKind::Malformed => "malformed response",
        ErrorKind::Auth => "API key rejected",
        ErrorKind::BadRequest => "request rejected",
        ErrorKind::NotFound => "model or endpoint not found",
        ErrorKind::NoProviders => "no provider available",
        ErrorKind::AllCoolingDown => "no provider has capacity",
        ErrorKind::Offline => "offline",
        ErrorKind::Cancelled => "cancelled",
        ErrorKind::ShuttingDown => "daemon shutting down",
        ErrorKind::Protocol => "protocol error",
        ErrorKind::Internal => "internal error",
        ErrorKind::Billing => "account cannot pay",
        ErrorKind::ContextLength => "prompt too long for the model",
    }
}

/// What the user can do about a failed request, if there is something useful to say.
///
/// `config` is the config file the daemon reads; `pinned` says whether the request named a
/// provider (pinned requests surface provider errors as they are, with no fallback).
pub fn error_hint(
    kind: ErrorKind,
    retry_at_unix_ms: Option<u64>,
    now_ms: u64,
    config: &Path,
    pinned: bool,
) -> Option<String> {
    let back_in = retry_at_unix_ms.map(|at| {
        format!(
            "{} (at {})",
            fmt_wait_ms(at.saturating_sub(now_ms)),
            clock(at, now_ms)
        )
    });
    match kind {
        ErrorKind::NoProviders if pinned => Some(
            "`mythos status` (/status in chat) lists the provider names, `mythos models` their \
             models; without a pin \
             (no --provider, /auto in chat) mythos chooses"
                .to_string(),
        ),
        ErrorKind::NoProviders => Some(format!(
            "set {KEY_VARS} (then run `mythos daemon restart`), or add providers to {}",
            config.display()
        )),
        // The key may be any of the usual variables, one the config names (`api_key_env`) or
        // the config's own `api_key`: the hint named only the usual variables (found by a
        // helper whose key was in the config).
        ErrorKind::Auth => Some(format!(
            "check that provider's API key: its variable ({KEY_VARS}, or the one its \
             `api_key_env` names) or its `api_key` in {}; mythosd reads keys when it starts, so \
             run `mythos daemon restart` after changing one",
            config.display()
        )),
        ErrorKind::AllCoolingDown => Some(match back_in {
            Some(t) => format!(
                "no provider has capacity (rate limits, quotas, cooldowns); the first is back in \
                 {t}. `mythos status` shows each one and `mythos reset PROVIDER` ends a cooldown \
                 by hand"
            ),
            None => "no provider has capacity; `mythos status` shows each cooldown and \
                     `mythos reset PROVIDER` ends one by hand"
                .to_string(),
        }),
        ErrorKind::RateLimited | ErrorKind::Overloaded => match (back_in, pinned) {
            (Some(t), true) => Some(format!(
                "the provider asks to wait {t}; without a pin (no --provider, /auto in chat) \
                 mythos routes around it"
            )),
            (Some(t), false) => Some(format!(
                "every provider that could take it is rate limited or overloaded; the first is \
                 back in {t}"
            )),
            (None, true) => {
                Some("without a pin (no --provider, /auto in chat) mythos routes around it".into())
            }
            (None, false) => None,
        },
        ErrorKind::Offline => Some("every provider failed to connect: check the network".into()),
        ErrorKind::Billing => Some(
            "the provider's account has no credit left: top it up, then `mythos reset PROVIDER` \
             (mythos routes around it meanwhile)"
                .into(),
        ),
        ErrorKind::ContextLength => Some(
            "the conversation is longer than the model's context window: start a new one \
             (/clear in chat), or configure a provider with a larger `context_window`"
                .into(),
        ),
        ErrorKind::ShuttingDown => {
            Some("mythosd is shutting down; run the command again to start a new one".into())
        }
        ErrorKind::Internal => Some("this is a bug in mythosd; its log has the details".into()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Wall-clock time

/// A timestamp in local time: `14:03:12` when it is today, `2025-11-23 14:03:12` otherwise.
pub fn clock(unix_ms: u64, now_ms: u64) -> String {
    let t = civil(unix_ms);
    let now = civil(now_ms);
    let time = format!("{:02}:{:02}:{:02}", t.3, t.4, t.5);
    if (t.0, t.1, t.2) == (now.0, now.1, now.2) {
        time
    } else {
        format!("{:04}-{:02}-{:02} {time}", t.0, t.1, t.2)
    }
}

/// (year, month, day, hour, minute, second) in local time where the platform tells us the
/// zone, else UTC.
fn civil(unix_ms: u64) -> (i64, u32, u32, u32, u32, u32) {
    let secs = (unix_ms / 1000) as i64;
    #[cfg(unix)]
    if let Some(local) = local_civil(secs) {
        return local;
    }
    utc_civil(secs)
}

#[cfg(unix)]
fn local_civil(secs: i64) -> Option<(i64, u32, u32, u32, u32, u32)> {
    let t = libc::time_t::try_from(secs).ok()?;
    // SAFETY: an all-zero `tm` is a valid value of this plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r reads `t` and writes only into `tm`, both owned by this frame.
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    if r.is_null() {
        return None;
    }
    Some((
        i64::from(tm.tm_year) + 1900,
        (tm.tm_mon + 1) as u32,
        tm.tm_mday as u32,
        tm.tm_hour as u32,
        tm.tm_min as u32,
        tm.tm_sec as u32,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_on_the_same_provider_is_not_called_a_move() {
        assert_eq!(
            reroute_notice("v", "v", "cannot connect", RerouteMode::Continue, false),
            "↪ v failed (cannot connect): trying it again"
        );
        assert_eq!(
            reroute_notice("a", "b", "cut", RerouteMode::Continue, false),
            "↪ a failed (cut): continuing on b"
        );
    }

    /// A daemon a `mythos` command started before the user exported a key runs on simulated
    /// providers, and `status` said "no API keys found: set ANTHROPIC_API_KEY" with that very
    /// variable set in the shell: it now says the daemon lacks it, and how to fix that.
    #[test]
    fn the_simulated_note_names_keys_this_shell_has_and_the_daemon_lacks() {
        let env = |k: &str| match k {
            "ANTHROPIC_API_KEY" => Some("sk-ant-xyz".to_string()),
            "GROQ_API_KEY" => Some("gsk_abc".to_string()),
            // `eval "$(mythos env openai)"`: the daemon's own token, no key.
            "OPENAI_API_KEY" => Some("mythos-0123abcd".to_string()),
            "DEEPSEEK_API_KEY" => Some("  ".to_string()),
            _ => None,
        };
        let keys = keys_in_env(&env);
        assert_eq!(keys, ["ANTHROPIC_API_KEY", "GROQ_API_KEY"]);
        let note = simulated_note(&keys, false);
        assert!(
            note.contains("this shell has ANTHROPIC_API_KEY, GROQ_API_KEY")
                && note.contains("mythos daemon restart")
                && !note.contains("no API keys found"),
            "{note}"
        );
        assert!(!note.contains("sk-ant"), "never a key's value: {note}");
        let service = simulated_note(&keys, true);
        assert!(service.contains("~/.config/mythos/env"), "{service}");
        assert_eq!(
            simulated_note(&keys_in_env(&|_| None), false),
            format!("simulated providers (no API keys found: set {KEY_VARS})")
        );
    }

    #[test]
    fn small_formats() {
        assert_eq!(fmt_duration_ms(850), "850 ms");
        assert_eq!(fmt_duration_ms(1234), "1.2 s");
        assert_eq!(fmt_duration_ms(125_000), "2 m 5 s");
        assert_eq!(fmt_wait_ms(59_001), "1 m");
        assert_eq!(fmt_wait_ms(60_000), "1 m");
        assert_eq!(fmt_wait_ms(299_500), "5 m");
        assert_eq!(fmt_wait_ms(298_500), "4 m 59 s");
        assert_eq!(fmt_wait_ms(3_780_000), "1 h 3 m");
        assert_eq!(fmt_wait_ms(0), "0 s");
        assert_eq!(fmt_uptime(90_000), "1 d 1 h");
        assert_eq!(fmt_cost(0.0), "$0");
        assert_eq!(fmt_cost(0.00001), "<$0.0001");
        assert_eq!(fmt_cost(0.0012), "$0.0012");
        assert_eq!(fmt_cost(3.414), "$3.41");
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1000), "1,000");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
    }

    #[test]
    fn footer_line() {
        let usage = Usage {
            input_tokens: 120,
            output_tokens: 33,
            ..Usage::default()
        };
        assert_eq!(
            footer("sim-deepseek", "deepseek-chat", 1234, usage, 0.0012),
            "[sim-deepseek · deepseek-chat · 1.2 s · 153 tok · $0.0012]"
        );
        assert_eq!(
            footer("p", "m", 87, Usage::default(), 0.0),
            "[p · m · 87 ms · 0 tok · $0]"
        );
    }

    #[test]
    fn utc_calendar() {
        assert_eq!(utc_civil(0), (1970, 1, 1, 0, 0, 0));
        // 2024-02-29 12:34:56 UTC, a leap day.
        assert_eq!(utc_civil(1_709_210_096), (2024, 2, 29, 12, 34, 56));
        assert_eq!(utc_civil(-1), (1969, 12, 31, 23, 59, 59));
    }

    #[test]
    fn clock_shows_the_date_only_for_other_days() {
        let now = 1_709_210_096_000;
        assert_eq!(clock(now, now).len(), 8);
        assert_eq!(clock(now - 3 * 86_400_000, now).len(), 19);
    }

    #[test]
    fn hints_for_common_failures() {
        let cfg = Path::new("/home/u/.config/mythos/config.toml");
        let h = error_hint(ErrorKind::NoProviders, None, 0, cfg, false).unwrap();
        assert!(h.contains("ANTHROPIC_API_KEY"), "{h}");
        assert!(
            h.contains("DEEPSEEK_API_KEY") && h.contains("OPENAI_API_KEY"),
            "{h}"
        );
        assert!(h.contains("config.toml"), "{h}");
        let h = error_hint(ErrorKind::AllCoolingDown, Some(61_000), 1_000, cfg, false).unwrap();
        assert!(
            h.contains("no provider has capacity") && h.contains("back in 1 m"),
            "{h}"
        );
        let h = error_hint(ErrorKind::Billing, None, 0, cfg, false).unwrap();
        assert!(h.contains("mythos reset"), "{h}");
        let h = error_hint(ErrorKind::ContextLength, None, 0, cfg, false).unwrap();
        assert!(h.contains("context window"), "{h}");
        let h = error_hint(ErrorKind::Auth, None, 0, cfg, false).unwrap();
        assert!(h.contains("key"), "{h}");
        assert!(error_hint(ErrorKind::BadRequest, None, 0, cfg, false).is_none());
    }
}
