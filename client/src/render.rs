//! Everything the client shows: streamed answers, notices, the footer line, tables and the
//! `why` explanation.
//!
//! The formatting functions are pure (they return `String`s) so they can be tested from
//! hand-built reports; only [`StreamPrinter`] writes, and it writes to any `Write` pair.
//! Styling is plain ANSI SGR and is off when the stream is not a terminal or `NO_COLOR` is set
//! (<https://no-color.org>).

use std::io::{self, IsTerminal, Write};
use std::path::Path;

use mythos_protocol::{
    BreakerState, ErrorKind, RequestRecord, RerouteMode, StatusReport, StreamEvent, Usage,
    UsageReport,
};

/// The API key variables the daemon reads, named in hints.
pub const KEY_VARS: &str = "ANTHROPIC_API_KEY, DEEPSEEK_API_KEY or OPENAI_API_KEY";

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
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
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
pub fn reroute_notice(from: &str, to: &str, reason: &str, mode: RerouteMode) -> String {
    let reason = reason.trim();
    let why = if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    };
    match mode {
        RerouteMode::Continue => format!("↪ {from} failed{why}: continuing on {to}"),
        RerouteMode::Restart => format!("↪ {from} failed{why}: the answer restarts on {to}"),
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
            "`mythos status` (/status in chat) lists the provider names; without a pin \
             (no --provider, /auto in chat) mythos chooses"
                .to_string(),
        ),
        ErrorKind::NoProviders => Some(format!(
            "set {KEY_VARS} (then run `mythos daemon restart`), or add providers to {}",
            config.display()
        )),
        ErrorKind::Auth => Some(format!(
            "check the provider's API key ({KEY_VARS}); mythosd reads keys when it starts, so \
             run `mythos daemon restart` after changing one"
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
            (Some(t), false) => Some(format!("the provider asks to wait {t}")),
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

// ---------------------------------------------------------------------------------------------
// Tables

/// Colour of a table cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tint {
    None,
    Dim,
    Green,
    Yellow,
    Red,
    Cyan,
}

/// A plain text table: left-aligned text columns, right-aligned number columns, two spaces
/// between columns. Widths count characters, and colour is applied after padding so escape
/// codes never skew the alignment.
struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<(String, Tint)>>,
}

impl Table {
    fn new(columns: &[(&'static str, bool)]) -> Self {
        Table {
            headers: columns.iter().map(|c| c.0).collect(),
            right: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<(String, Tint)>) {
        self.rows.push(cells);
    }

    fn render(&self, style: Style) -> String {
        self.render_with(style, true)
    }

    /// The rows only, sized to fit the rows alone (for tables under a caption).
    fn render_rows(&self, style: Style) -> String {
        self.render_with(style, false)
    }

    fn render_with(&self, style: Style, with_header: bool) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = if with_header {
            self.headers.iter().map(|h| h.chars().count()).collect()
        } else {
            vec![0; n]
        };
        for row in &self.rows {
            for (i, (text, _)) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(text.chars().count());
            }
        }
        let mut out = String::new();
        let line = |cells: Vec<(String, Tint)>, out: &mut String| {
            let mut s = String::new();
            for (i, (text, tint)) in cells.into_iter().enumerate().take(n) {
                let pad = widths[i].saturating_sub(text.chars().count());
                let last = i + 1 == n;
                let padded = if self.right[i] {
                    format!("{}{text}", " ".repeat(pad))
                } else if last {
                    text
                } else {
                    format!("{text}{}", " ".repeat(pad))
                };
                let painted = match tint {
                    Tint::None => padded,
                    Tint::Dim => style.dim(&padded),
                    Tint::Green => style.green(&padded),
                    Tint::Yellow => style.yellow(&padded),
                    Tint::Red => style.red(&padded),
                    Tint::Cyan => style.cyan(&padded),
                };
                if i > 0 {
                    s.push_str("  ");
                }
                s.push_str(&painted);
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        if with_header {
            line(
                self.headers
                    .iter()
                    .map(|h| (h.to_string(), Tint::Dim))
                    .collect(),
                &mut out,
            );
        }
        for row in &self.rows {
            line(row.clone(), &mut out);
        }
        out
    }
}

fn plain(s: impl Into<String>) -> (String, Tint) {
    (s.into(), Tint::None)
}

fn opt_ms(v: Option<f64>) -> String {
    match v {
        Some(ms) if ms.is_finite() && ms >= 0.0 => fmt_duration_ms(ms.round() as u64),
        _ => "-".to_string(),
    }
}

/// `mythos status`: a header line, the simulated-mode note, the provider table and the last
/// error of each provider that has one.
pub fn status_text(report: &StatusReport, style: Style) -> String {
    let mut out = format!(
        "mythosd {} · pid {} · up {} · {} in flight\n",
        report.build,
        report.pid,
        fmt_uptime(report.uptime_secs),
        report.in_flight
    );
    if report.simulated {
        out.push_str(&style.yellow(&format!(
            "simulated providers (no API keys found: set {KEY_VARS})"
        )));
        out.push('\n');
    }
    for note in &report.notes {
        out.push_str(&style.yellow(&format!("note: {note}")));
        out.push('\n');
    }
    out.push('\n');
    if report.providers.is_empty() {
        out.push_str("no providers configured\n");
        return out;
    }
    let mut table = Table::new(&[
        ("PROVIDER", false),
        ("STATE", false),
        ("MODEL", false),
        ("SCORE", true),
        ("SUCCESS", true),
        ("TTFT", true),
        ("LATENCY", true),
        ("REQUESTS", true),
        ("FAILURES", true),
        ("LIVE", true),
        ("QUOTA LEFT", true),
        ("WAIT", true),
    ]);
    for p in &report.providers {
        let tint = match p.state {
            BreakerState::Closed => Tint::Green,
            BreakerState::Open => Tint::Yellow,
            BreakerState::HalfOpen => Tint::Cyan,
            BreakerState::Unusable => Tint::Red,
            BreakerState::RateLimited => Tint::Yellow,
        };
        table.row(vec![
            plain(&p.name),
            (p.state.as_str().to_string(), tint),
            plain(&p.model),
            plain(format!("{:.1}", p.score)),
            plain(format!("{:.0}%", (p.success * 100.0).clamp(0.0, 100.0))),
            plain(opt_ms(p.ttft_ms)),
            plain(opt_ms(p.latency_ms)),
            plain(fmt_count(p.requests)),
            plain(fmt_count(p.failures)),
            plain(p.in_flight.to_string()),
            plain(tightest_quota(&p.quotas)),
            plain(p.cooldown_left_ms.map_or("-".to_string(), fmt_wait_ms)),
        ]);
    }
    out.push_str(&table.render(style));
    let notes: Vec<String> = report
        .providers
        .iter()
        .filter_map(|p| {
            let note = (!p.note.is_empty() && p.note != "healthy").then_some(p.note.as_str());
            let line = match (note, &p.last_error) {
                (None, None) => return None,
                (Some(n), None) => format!("{}: {n}", p.name),
                (None, Some(e)) => format!("{}: last error: {e}", p.name),
                (Some(n), Some(e)) => format!("{}: {n}; last error: {e}", p.name),
            };
            Some(line)
        })
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        for line in notes {
            out.push_str(&style.dim(&line));
            out.push('\n');
        }
    }
    out
}

/// The quota closest to running out, as `remaining/limit unit` (`-` when none is announced).
fn tightest_quota(quotas: &[mythos_protocol::QuotaStatus]) -> String {
    let share = |q: &mythos_protocol::QuotaStatus| match q.limit {
        Some(l) if l > 0 => q.remaining as f64 / l as f64,
        _ => 1.0,
    };
    let Some(q) = quotas.iter().min_by(|a, b| share(a).total_cmp(&share(b))) else {
        return "-".to_string();
    };
    let unit = match q.what.as_str() {
        "requests" => "req",
        "tokens" => "tok",
        "input tokens" => "in tok",
        "output tokens" => "out tok",
        other => other,
    };
    match q.limit {
        Some(l) => format!("{}/{} {unit}", fmt_count(q.remaining), fmt_count(l)),
        None => format!("{} {unit}", fmt_count(q.remaining)),
    }
}

/// `mythos usage`: one row per day and provider, then the totals.
pub fn usage_text(report: &UsageReport, days: u32, style: Style) -> String {
    if report.rows.is_empty() {
        let span = if days == 1 {
            "today".to_string()
        } else {
            format!("in the last {days} days")
        };
        return format!("no requests {span}\n");
    }
    let mut table = Table::new(&[
        ("DAY", false),
        ("PROVIDER", false),
        ("REQUESTS", true),
        ("INPUT TOKENS", true),
        ("OUTPUT TOKENS", true),
        ("COST", true),
    ]);
    let (mut req, mut inp, mut outp, mut cost) = (0u64, 0u64, 0u64, 0f64);
    for r in &report.rows {
        req += r.requests;
        inp += r.input_tokens;
        outp += r.output_tokens;
        cost += r.cost_usd;
        table.row(vec![
            plain(&r.day),
            plain(&r.provider),
            plain(fmt_count(r.requests)),
            plain(fmt_count(r.input_tokens)),
            plain(fmt_count(r.output_tokens)),
            plain(fmt_cost(r.cost_usd)),
        ]);
    }
    table.row(vec![
        ("total".to_string(), Tint::None),
        plain(""),
        plain(fmt_count(req)),
        plain(fmt_count(inp)),
        plain(fmt_count(outp)),
        plain(fmt_cost(cost)),
    ]);
    // Set the totals row apart from the last day with a rule as wide as the table.
    let rendered = table.render(style);
    let mut lines: Vec<&str> = rendered.lines().collect();
    let total = lines.pop().unwrap_or_default();
    let rule = style.dim(&"─".repeat(total.chars().count()));
    let mut text = String::new();
    for line in lines.into_iter().chain([rule.as_str(), total]) {
        text.push_str(line);
        text.push('\n');
    }
    text
}

// ---------------------------------------------------------------------------------------------
// `mythos why`

/// Explain a routing record in words. `when` is the request's time, already formatted (see
/// [`clock`]), so that the text does not depend on the machine's time zone.
pub fn explain_why(rec: &RequestRecord, when: &str, style: Style) -> String {
    let score_of = |name: &str| {
        rec.candidates
            .iter()
            .find(|c| c.provider == name)
            .map(|c| c.score)
    };
    let mut out = style.bold(&format!(
        "Request {} ({} task) at {when}",
        rec.id,
        rec.task.as_str()
    ));
    out.push_str("\n\n");

    // The story, in one paragraph.
    let mut story = String::new();
    if let Some(pin) = &rec.pinned {
        story.push_str(&format!(
            "It was pinned to {pin}, so no other provider was considered. "
        ));
    }
    let mut steps = Vec::new();
    for (i, a) in rec.attempts.iter().enumerate() {
        let score = score_of(&a.provider)
            .filter(|_| rec.pinned.is_none())
            .map(|s| format!(" (score {s:.1})"))
            .unwrap_or_default();
        let prev = i.checked_sub(1).and_then(|j| rec.attempts.get(j));
        let (who, joiner) = match prev {
            None => (format!("{} was tried first{score}", a.provider), " and"),
            Some(p) if p.provider == a.provider => (
                format!(
                    "mythos retried {} {} after the request began",
                    a.provider,
                    fmt_duration_ms(a.started_ms)
                ),
                ", which",
            ),
            Some(_) => (format!("mythos moved to {}{score}", a.provider), ", which"),
        };
        let outcome = match a.error {
            None => {
                let ttft = a
                    .ttft_ms
                    .map(|t| format!(" (first token after {})", fmt_duration_ms(t)))
                    .unwrap_or_default();
                format!("answered in {}{ttft}", fmt_duration_ms(a.elapsed_ms))
            }
            Some(kind) => {
                let detail = a.detail.trim();
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                };
                let streamed = if a.ttft_ms.is_some() {
                    "had started streaming, then "
                } else {
                    ""
                };
                format!(
                    "{streamed}failed after {}: {}{detail}",
                    fmt_duration_ms(a.elapsed_ms),
                    kind_words(kind)
                )
            }
        };
        steps.push(format!("{who}{joiner} {outcome}"));
    }
    if steps.is_empty() {
        story.push_str("No provider was tried.");
    } else {
        story.push_str(&steps.join("; "));
        story.push('.');
    }
    if rec.queued_ms > 0 {
        story.push_str(&format!(
            " It waited {} in the queue for a provider with capacity.",
            fmt_duration_ms(rec.queued_ms)
        ));
    }
    let tokens = format!(
        "{} input + {} output tokens, {}, {} in total",
        fmt_count(rec.usage.input_tokens),
        fmt_count(rec.usage.output_tokens),
        fmt_cost(rec.cost_usd),
        fmt_duration_ms(rec.latency_ms)
    );
    match (rec.error, &rec.provider) {
        (None, Some(p)) => story.push_str(&format!(" The answer came from {p}: {tokens}.")),
        (None, None) => story.push_str(&format!(" {tokens}.")),
        (Some(kind), _) => story.push_str(&format!(
            " The request failed: {} ({tokens}).",
            kind_words(kind)
        )),
    }
    out.push_str(&story);
    out.push('\n');

    if !rec.candidates.is_empty() {
        out.push('\n');
        out.push_str(&style.dim("Candidates, best first:"));
        out.push('\n');
        let mut table = Table::new(&[("PROVIDER", false), ("SCORE", true), ("NOTE", false)]);
        for c in &rec.candidates {
            table.row(vec![
                plain(&c.provider),
                plain(format!("{:.1}", c.score)),
                plain(&c.note),
            ]);
        }
        for line in table.render_rows(style).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    if !rec.attempts.is_empty() {
        out.push('\n');
        out.push_str(&style.dim("Attempts:"));
        out.push('\n');
        let mut table = Table::new(&[
            ("#", true),
            ("START", true),
            ("PROVIDER", false),
            ("MODEL", false),
            ("TTFT", true),
            ("TOOK", true),
            ("RESULT", false),
        ]);
        for (i, a) in rec.attempts.iter().enumerate() {
            let result = match a.error {
                None if a.detail.trim().is_empty() => ("ok".to_string(), Tint::Green),
                None => (format!("ok: {}", a.detail.trim()), Tint::Green),
                Some(kind) if a.detail.trim().is_empty() => (kind.as_str().to_string(), Tint::Red),
                Some(kind) => (format!("{}: {}", kind.as_str(), a.detail.trim()), Tint::Red),
            };
            table.row(vec![
                plain(format!("{}.", i + 1)),
                plain(format!("+{}", fmt_duration_ms(a.started_ms))),
                plain(&a.provider),
                plain(&a.model),
                plain(a.ttft_ms.map_or("-".to_string(), fmt_duration_ms)),
                plain(fmt_duration_ms(a.elapsed_ms)),
                result,
            ]);
        }
        for line in table.render_rows(style).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// How a [`StreamPrinter`] lays out an answer.
#[derive(Debug, Clone, Copy)]
pub struct PrinterOptions {
    /// Hold the answer back and write it once complete. Used when stdout is not a terminal:
    /// a file or pipe then receives exactly the final answer, even if the daemon restarts it.
    pub buffer_text: bool,
    /// Show thinking deltas (dimmed, on the side stream).
    pub show_thinking: bool,
    /// The text stream and the side stream show up on one screen (both are the same
    /// terminal), so a notice must start on a fresh line of that screen.
    pub same_screen: bool,
    /// Styling of the side stream.
    pub side_style: Style,
    /// The side stream is a terminal: a waiting request's countdown redraws in place.
    pub live: bool,
}

impl PrinterOptions {
    /// The usual layout: answer on stdout, everything else on stderr.
    pub fn for_terminal(show_thinking: bool) -> Self {
        let stdout_tty = io::stdout().is_terminal();
        let stderr_tty = io::stderr().is_terminal();
        PrinterOptions {
            buffer_text: !stdout_tty,
            show_thinking,
            same_screen: stdout_tty && stderr_tty,
            side_style: Style::stderr(),
            live: stderr_tty,
        }
    }
}

/// Prints one chat stream: answer text to `out` as it arrives (flushed per delta), notices,
/// thinking and footers to `side`.
///
/// Layout of a reroute: the notice gets a line of its own. With [`RerouteMode::Continue`] the
/// text printed so far stands and the answer goes on below the notice (on a shared screen the
/// answer is thus broken by one line there; the text kept in the conversation is unbroken).
/// With [`RerouteMode::Restart`] the notice says that the answer restarts and the new answer is
/// printed in full below it; a held-back (buffered) answer is simply discarded.
pub struct StreamPrinter<O: Write, S: Write> {
    out: O,
    side: S,
    opts: PrinterOptions,
    /// The last byte written to `out` was not a newline.
    out_mid_line: bool,
    /// Thinking text was written to `side` without a final newline.
    side_mid_line: bool,
    /// We broke the answer's line on screen for a notice; the answer has not gone on yet.
    broke_line: bool,
    buffer: String,
    /// A live "waiting for capacity" line is on the side stream, to be cleared before anything
    /// else is shown.
    status_line: bool,
    /// The gist of the last waiting reason shown (plain output shows each one once).
    last_wait: Option<String>,
}

impl<O: Write, S: Write> StreamPrinter<O, S> {
    /// A printer writing the answer to `out` and everything else to `side`.
    pub fn new(out: O, side: S, opts: PrinterOptions) -> Self {
        StreamPrinter {
            out,
            side,
            opts,
            out_mid_line: false,
            side_mid_line: false,
            broke_line: false,
            buffer: String::new(),
            status_line: false,
            last_wait: None,
        }
    }

    /// Styling of the side stream.
    pub fn side_style(&self) -> Style {
        self.opts.side_style
    }

    /// Show one event. `Done` and `Error` only end the text; the caller decides what to say.
    pub fn event(&mut self, ev: &StreamEvent) -> io::Result<()> {
        if let StreamEvent::Queued {
            reason,
            until_unix_ms,
            deadline_unix_ms,
        } = ev
        {
            let line = queued_notice(reason, *until_unix_ms, *deadline_unix_ms, now_unix_ms());
            let line = self.opts.side_style.yellow(&line);
            if self.opts.live {
                if !self.status_line {
                    self.fresh_line()?;
                }
                write!(self.side, "\r\x1b[2K{line}")?;
                self.side.flush()?;
                self.status_line = true;
            } else if self.last_wait.as_deref() != Some(gist(reason).as_str()) {
                self.last_wait = Some(gist(reason));
                self.note(&line)?;
            }
            return Ok(());
        }
        self.clear_status()?;
        match ev {
            StreamEvent::TextDelta { text } if !text.is_empty() => {
                if self.opts.buffer_text {
                    self.buffer.push_str(text);
                    return Ok(());
                }
                if self.side_mid_line && self.opts.same_screen {
                    self.side.write_all(b"\n")?;
                    self.side.flush()?;
                    self.side_mid_line = false;
                }
                // Right after a line break we inserted for a notice, the space that joined the
                // two halves of the answer would only indent the new line.
                let shown = if self.broke_line {
                    text.trim_start_matches([' ', '\t'])
                } else {
                    text
                };
                if shown.is_empty() {
                    return Ok(());
                }
                self.broke_line = false;
                self.out.write_all(shown.as_bytes())?;
                self.out.flush()?;
                self.out_mid_line = !shown.ends_with('\n');
            }
            StreamEvent::ThinkingDelta { text } if self.opts.show_thinking && !text.is_empty() => {
                if self.out_mid_line && self.opts.same_screen {
                    self.out.write_all(b"\n")?;
                    self.out.flush()?;
                    self.out_mid_line = false;
                }
                let styled = self.opts.side_style.dim(text);
                self.side.write_all(styled.as_bytes())?;
                self.side.flush()?;
                self.side_mid_line = !text.ends_with('\n');
            }
            StreamEvent::ToolCallStart { name, .. } => {
                let line = self.opts.side_style.dim(&format!("[tool call: {name}]"));
                self.note(&line)?;
            }
            StreamEvent::Rerouted {
                from,
                to,
                reason,
                mode,
            } => {
                if *mode == RerouteMode::Restart {
                    self.buffer.clear();
                }
                let line = self
                    .opts
                    .side_style
                    .yellow(&reroute_notice(from, to, reason, *mode));
                self.note(&line)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Take a live waiting line off the screen.
    fn clear_status(&mut self) -> io::Result<()> {
        if self.status_line {
            self.side.write_all(b"\r\x1b[2K")?;
            self.side.flush()?;
            self.status_line = false;
        }
        Ok(())
    }

    /// Print `line` (already styled) on a line of its own on the side stream.
    pub fn note(&mut self, line: &str) -> io::Result<()> {
        self.clear_status()?;
        self.fresh_line()?;
        writeln!(self.side, "{line}")?;
        self.side.flush()
    }

    /// The answer is complete: write a held-back answer and end the last line.
    pub fn finish(&mut self) -> io::Result<()> {
        self.clear_status()?;
        if self.opts.buffer_text && !self.buffer.is_empty() {
            let text = std::mem::take(&mut self.buffer);
            self.out.write_all(text.as_bytes())?;
            self.out_mid_line = !text.ends_with('\n');
        }
        self.end_lines()
    }

    /// The answer will not complete (error, cancel): drop a held-back answer and end the lines
    /// already started.
    pub fn abandon(&mut self) -> io::Result<()> {
        self.clear_status()?;
        self.buffer.clear();
        self.end_lines()
    }

    fn end_lines(&mut self) -> io::Result<()> {
        if self.side_mid_line {
            self.side.write_all(b"\n")?;
            self.side_mid_line = false;
        }
        if self.out_mid_line {
            self.out.write_all(b"\n")?;
            self.out_mid_line = false;
        }
        self.side.flush()?;
        self.out.flush()
    }

    /// Before a notice: make sure the screen's cursor is at the start of a line.
    fn fresh_line(&mut self) -> io::Result<()> {
        if self.side_mid_line {
            self.side.write_all(b"\n")?;
            self.side_mid_line = false;
        }
        if self.out_mid_line && self.opts.same_screen {
            self.out.write_all(b"\n")?;
            self.out.flush()?;
            self.out_mid_line = false;
            self.broke_line = true;
        }
        Ok(())
    }

    /// The two writers (tests).
    #[cfg(test)]
    pub fn into_inner(self) -> (O, S) {
        (self.out, self.side)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mythos_protocol::{Attempt, CandidateScore, ProviderStatus, TaskKind, UsageRow};

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

    fn provider(name: &str, state: BreakerState) -> ProviderStatus {
        ProviderStatus {
            name: name.into(),
            api: "anthropic".into(),
            model: format!("{name}-model"),
            priority: 0,
            state,
            cooldown_left_ms: None,
            score: 97.14,
            success: 0.991,
            ttft_ms: Some(212.4),
            gap_ms: Some(12.0),
            latency_ms: Some(1234.0),
            cost_per_1k: 0.01,
            requests: 1200,
            failures: 3,
            last_error: None,
            note: "healthy".into(),
            in_flight: 0,
            quotas: Vec::new(),
        }
    }

    #[test]
    fn status_table() {
        let mut cooling = provider("sim-anthropic", BreakerState::RateLimited);
        cooling.cooldown_left_ms = Some(58_200);
        cooling.last_error = Some("429 rate limited (retry after 60 s)".into());
        cooling.note = "rate limited, 59 s left".into();
        cooling.ttft_ms = None;
        cooling.quotas = vec![
            mythos_protocol::QuotaStatus {
                what: "requests".into(),
                remaining: 0,
                limit: Some(50),
                reset_in_ms: Some(58_200),
            },
            mythos_protocol::QuotaStatus {
                what: "input tokens".into(),
                remaining: 30_000,
                limit: Some(40_000),
                reset_in_ms: Some(1_000),
            },
        ];
        let mut busy = provider("sim-deepseek", BreakerState::Closed);
        busy.in_flight = 3;
        let report = StatusReport {
            build: "0.1.0".into(),
            pid: 4242,
            uptime_secs: 192,
            in_flight: 1,
            simulated: true,
            providers: vec![cooling, busy],
            notes: vec!["the state database was unreadable: started fresh".into()],
        };
        let text = status_text(&report, Style::PLAIN);
        let expected = "\
mythosd 0.1.0 · pid 4242 · up 3 m 12 s · 1 in flight
simulated providers (no API keys found: set ANTHROPIC_API_KEY, DEEPSEEK_API_KEY or OPENAI_API_KEY)
note: the state database was unreadable: started fresh

PROVIDER       STATE         MODEL                SCORE  SUCCESS    TTFT  LATENCY  REQUESTS  FAILURES  LIVE  QUOTA LEFT  WAIT
sim-anthropic  rate limited  sim-anthropic-model   97.1      99%       -    1.2 s     1,200         3     0    0/50 req  59 s
sim-deepseek   healthy       sim-deepseek-model    97.1      99%  212 ms    1.2 s     1,200         3     3           -     -

sim-anthropic: rate limited, 59 s left; last error: 429 rate limited (retry after 60 s)
";
        assert_eq!(text, expected);
        // Colour never changes the layout: strip the escapes and compare.
        let colored = status_text(&report, Style::COLOR);
        assert!(colored.contains("\x1b[33mrate limited"));
        assert_eq!(strip_ansi(&colored), expected);
    }

    fn strip_ansi(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn usage_table_with_totals() {
        let row = |day: &str, p: &str, n: u64, cost: f64| UsageRow {
            day: day.into(),
            provider: p.into(),
            requests: n,
            input_tokens: n * 100,
            output_tokens: n * 10,
            cost_usd: cost,
        };
        let report = UsageReport {
            rows: vec![
                row("2025-11-24", "sim-anthropic", 12, 0.25),
                row("2025-11-23", "sim-deepseek", 3, 0.0012),
            ],
        };
        let text = usage_text(&report, 7, Style::PLAIN);
        let expected = "\
DAY         PROVIDER       REQUESTS  INPUT TOKENS  OUTPUT TOKENS     COST
2025-11-24  sim-anthropic        12         1,200            120  $0.2500
2025-11-23  sim-deepseek          3           300             30  $0.0012
─────────────────────────────────────────────────────────────────────────
total                            15         1,500            150  $0.2512
";
        assert_eq!(text, expected);
        assert_eq!(
            usage_text(&UsageReport { rows: vec![] }, 7, Style::PLAIN),
            "no requests in the last 7 days\n"
        );
    }

    fn failover_record() -> RequestRecord {
        RequestRecord {
            id: 42,
            unix_ms: 0,
            task: TaskKind::Code,
            pinned: None,
            candidates: vec![
                CandidateScore {
                    provider: "sim-anthropic".into(),
                    score: 97.14,
                    note: "healthy".into(),
                },
                CandidateScore {
                    provider: "sim-deepseek".into(),
                    score: 95.0,
                    note: "healthy".into(),
                },
            ],
            attempts: vec![
                Attempt {
                    provider: "sim-anthropic".into(),
                    model: "claude-sonnet-4-5".into(),
                    started_ms: 0,
                    ttft_ms: None,
                    elapsed_ms: 3,
                    error: Some(ErrorKind::RateLimited),
                    detail: "429, retry after 60 s".into(),
                },
                Attempt {
                    provider: "sim-deepseek".into(),
                    model: "deepseek-chat".into(),
                    started_ms: 4,
                    ttft_ms: Some(212),
                    elapsed_ms: 1100,
                    error: None,
                    detail: String::new(),
                },
            ],
            provider: Some("sim-deepseek".into()),
            usage: Usage {
                input_tokens: 120,
                output_tokens: 33,
            },
            cost_usd: 0.0012,
            latency_ms: 1104,
            error: None,
            queued_ms: 0,
        }
    }

    #[test]
    fn why_explains_a_failover_in_words() {
        let text = explain_why(&failover_record(), "14:03:12", Style::PLAIN);
        let expected = "\
Request 42 (code task) at 14:03:12

sim-anthropic was tried first (score 97.1) and failed after 3 ms: rate limited (429, retry after 60 s); mythos moved to sim-deepseek (score 95.0), which answered in 1.1 s (first token after 212 ms). The answer came from sim-deepseek: 120 input + 33 output tokens, $0.0012, 1.1 s in total.

Candidates, best first:
  sim-anthropic  97.1  healthy
  sim-deepseek   95.0  healthy

Attempts:
  1.  +0 ms  sim-anthropic  claude-sonnet-4-5       -   3 ms  rate_limited: 429, retry after 60 s
  2.  +4 ms  sim-deepseek   deepseek-chat      212 ms  1.1 s  ok
";
        assert_eq!(text, expected);
    }

    #[test]
    fn why_explains_pins_retries_and_failures() {
        let mut rec = failover_record();
        rec.pinned = Some("sim-anthropic".into());
        rec.candidates.truncate(1);
        rec.attempts[1] = Attempt {
            provider: "sim-anthropic".into(),
            model: "claude-sonnet-4-5".into(),
            started_ms: 120,
            ttft_ms: Some(30),
            elapsed_ms: 400,
            error: Some(ErrorKind::Truncated),
            detail: String::new(),
        };
        rec.provider = None;
        rec.error = Some(ErrorKind::Truncated);
        let text = explain_why(&rec, "14:03:12", Style::PLAIN);
        assert!(text.contains("It was pinned to sim-anthropic, so no other provider"));
        assert!(text.contains("mythos retried sim-anthropic 120 ms after the request began, which had started streaming, then failed after 400 ms: stream cut off"), "{text}");
        assert!(
            text.contains("The request failed: stream cut off"),
            "{text}"
        );
        assert!(
            !text.contains("score 97.1"),
            "no scores under a pin: {text}"
        );

        rec.attempts.clear();
        let text = explain_why(&rec, "x", Style::PLAIN);
        assert!(text.contains("No provider was tried."), "{text}");
    }

    fn printer(buffer: bool, same_screen: bool) -> StreamPrinter<Vec<u8>, Vec<u8>> {
        StreamPrinter::new(
            Vec::new(),
            Vec::new(),
            PrinterOptions {
                buffer_text: buffer,
                show_thinking: true,
                same_screen,
                side_style: Style::PLAIN,
                live: same_screen,
            },
        )
    }

    fn text(t: &str) -> StreamEvent {
        StreamEvent::TextDelta { text: t.into() }
    }

    fn reroute(mode: RerouteMode) -> StreamEvent {
        StreamEvent::Rerouted {
            from: "sim-deepseek".into(),
            to: "sim-openai".into(),
            reason: "connection dropped".into(),
            mode,
        }
    }

    fn outputs(p: StreamPrinter<Vec<u8>, Vec<u8>>) -> (String, String) {
        let (o, s) = p.into_inner();
        (String::from_utf8(o).unwrap(), String::from_utf8(s).unwrap())
    }

    fn queued(reason: &str, wait_ms: u64) -> StreamEvent {
        let now = now_unix_ms();
        StreamEvent::Queued {
            reason: reason.into(),
            until_unix_ms: Some(now + wait_ms),
            deadline_unix_ms: now + 30_000,
        }
    }

    #[test]
    fn a_wait_is_a_countdown_line_that_goes_away() {
        let mut p = printer(false, true);
        for ev in [
            queued("anthropic: rate limited, 4.0 s left", 4_000),
            queued("anthropic: rate limited, 3.0 s left", 3_000),
            text("Hello"),
        ] {
            p.event(&ev).unwrap();
        }
        p.finish().unwrap();
        let (out, side) = outputs(p);
        assert_eq!(out, "Hello\n");
        // Drawn, redrawn in place, then erased before the answer.
        assert_eq!(side.matches("\r\x1b[2K").count(), 3, "{side:?}");
        assert!(
            side.contains(
                "waiting for capacity (anthropic: rate limited, 3.0 s left): expected in 3"
            ),
            "{side:?}"
        );
        assert!(side.ends_with("\r\x1b[2K"), "{side:?}");
    }

    #[test]
    fn a_wait_in_a_pipe_is_one_line_per_reason() {
        let mut p = printer(true, false);
        for ev in [
            queued("anthropic: rate limited, 4.0 s left", 4_000),
            queued("anthropic: rate limited, 3.0 s left", 3_000),
            queued("deepseek: cooling down, 9 s left", 9_000),
            text("Hello"),
        ] {
            p.event(&ev).unwrap();
        }
        p.finish().unwrap();
        let (out, side) = outputs(p);
        assert_eq!(out, "Hello\n");
        assert_eq!(side.lines().count(), 2, "{side}");
        assert!(!side.contains('\x1b'));
    }

    #[test]
    fn continue_on_a_shared_screen_puts_the_notice_on_its_own_line() {
        let mut p = printer(false, true);
        for ev in [
            text("Hello,"),
            reroute(RerouteMode::Continue),
            text(" "),
            text(" world"),
        ] {
            p.event(&ev).unwrap();
        }
        p.finish().unwrap();
        let (out, side) = outputs(p);
        assert_eq!(out, "Hello,\nworld\n");
        assert_eq!(
            side,
            "↪ sim-deepseek failed (connection dropped): continuing on sim-openai\n"
        );
    }

    #[test]
    fn separate_streams_keep_the_answer_unbroken() {
        let mut p = printer(false, false);
        for ev in [text("Hel"), reroute(RerouteMode::Continue), text("lo")] {
            p.event(&ev).unwrap();
        }
        p.finish().unwrap();
        assert_eq!(outputs(p).0, "Hello\n");
    }

    #[test]
    fn a_held_back_answer_forgets_what_a_restart_discards() {
        let mut p = printer(true, false);
        for ev in [
            text("Partial"),
            reroute(RerouteMode::Restart),
            text("Whole answer."),
        ] {
            p.event(&ev).unwrap();
        }
        let (out, _) = {
            p.finish().unwrap();
            outputs(p)
        };
        assert_eq!(out, "Whole answer.\n");

        let mut p = printer(true, false);
        p.event(&text("never shown")).unwrap();
        p.abandon().unwrap();
        assert_eq!(outputs(p).0, "");
    }

    #[test]
    fn thinking_goes_to_the_side_stream_on_its_own_lines() {
        let mut p = printer(false, true);
        for ev in [
            StreamEvent::ThinkingDelta { text: "hmm".into() },
            text("Answer"),
        ] {
            p.event(&ev).unwrap();
        }
        p.note("[footer]").unwrap();
        let (out, side) = outputs(p);
        assert_eq!(side, "hmm\n[footer]\n");
        assert_eq!(out, "Answer\n");
    }
}
