//! `mythos status` and `mythos usage`: aligned tables, coloured by state.

use mythos_protocol::{BreakerState, StatusReport, UsageReport};

use super::{fmt_cost, fmt_count, fmt_duration_ms, fmt_uptime, fmt_wait_ms, Style};

/// Colour of a table cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tint {
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
pub(super) struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<(String, Tint)>>,
    /// Columns left out to fit the terminal.
    hidden: Vec<bool>,
}

impl Table {
    pub(super) fn new(columns: &[(&'static str, bool)]) -> Self {
        Table {
            headers: columns.iter().map(|c| c.0).collect(),
            right: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
            hidden: vec![false; columns.len()],
        }
    }

    /// Leave out columns, in `drop_order` (the least useful first), until a row fits in
    /// `max` columns: a table wider than the terminal wraps every row.
    pub(super) fn fit(&mut self, max: usize, drop_order: &[&str]) {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|(t, _)| t.chars().count())
                    .chain([self.headers[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let total = |hidden: &[bool]| {
            let shown: Vec<usize> = (0..widths.len()).filter(|&i| !hidden[i]).collect();
            shown.iter().map(|&i| widths[i]).sum::<usize>() + 2 * shown.len().saturating_sub(1)
        };
        for name in drop_order {
            if total(&self.hidden) <= max {
                break;
            }
            if let Some(i) = self.headers.iter().position(|h| h == name) {
                self.hidden[i] = true;
            }
        }
    }

    pub(super) fn row(&mut self, cells: Vec<(String, Tint)>) {
        self.rows.push(cells);
    }

    fn render(&self, style: Style) -> String {
        self.render_with(style, true)
    }

    /// The rows only, sized to fit the rows alone (for tables under a caption).
    pub(super) fn render_rows(&self, style: Style) -> String {
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
        let last_shown = (0..n).rev().find(|&i| !self.hidden[i]).unwrap_or(0);
        let line = |cells: Vec<(String, Tint)>, out: &mut String| {
            let mut s = String::new();
            let mut first = true;
            for (i, (text, tint)) in cells.into_iter().enumerate().take(n) {
                if self.hidden[i] {
                    continue;
                }
                let pad = widths[i].saturating_sub(text.chars().count());
                let last = i == last_shown;
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
                if !first {
                    s.push_str("  ");
                }
                first = false;
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

pub(super) fn plain(s: impl Into<String>) -> (String, Tint) {
    (s.into(), Tint::None)
}

fn opt_ms(v: Option<f64>) -> String {
    match v {
        Some(ms) if ms.is_finite() && ms >= 0.0 => fmt_duration_ms(ms.round() as u64),
        _ => "-".to_string(),
    }
}

/// `mythos status`: a header line, the simulated-mode note, the provider table and the last
/// error of each provider that has one. On a terminal, the table leaves out what does not fit.
/// `keys_here` are the key variables set in this client's environment (see
/// [`super::keys_in_env`]; none for a private daemon, which never sees them).
pub fn status_text(report: &StatusReport, style: Style, keys_here: &[&str]) -> String {
    let width =
        std::io::IsTerminal::is_terminal(&std::io::stdout()).then(super::markdown::terminal_width);
    status_text_in(report, style, width, keys_here)
}

/// [`status_text`] for a terminal `width` columns wide (`None`: every column).
pub fn status_text_in(
    report: &StatusReport,
    style: Style,
    width: Option<usize>,
    keys_here: &[&str],
) -> String {
    let mut out = format!(
        "mythosd {} · pid {} · up {} · {} in flight\n",
        report.build,
        report.pid,
        fmt_uptime(report.uptime_secs),
        report.in_flight
    );
    if report.simulated {
        let note = super::simulated_note(keys_here, report.restart_command.is_some());
        out.push_str(&style.yellow(&note));
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
            BreakerState::RateLimited | BreakerState::Overloaded => Tint::Yellow,
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
    if let Some(width) = width {
        // The least useful first; LIVE (streams in flight) is what `--watch` is for.
        table.fit(
            width,
            &[
                "FAILURES",
                "REQUESTS",
                "LATENCY",
                "MODEL",
                "SUCCESS",
                "TTFT",
                "QUOTA LEFT",
                "LIVE",
            ],
        );
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
/// `mythos models`: every provider's model, usable as `PROVIDER/MODEL` through the HTTP
/// front end or with `--provider`, with its context window, output limit and prices.
pub fn models_text(report: &StatusReport, style: Style) -> String {
    let mut table = Table::new(&[
        ("MODEL", false),
        ("API", false),
        ("CONTEXT", true),
        ("MAX OUTPUT", true),
        ("$/M IN", true),
        ("$/M OUT", true),
    ]);
    let mut providers: Vec<_> = report.providers.iter().collect();
    providers.sort_by_key(|p| p.priority);
    for p in providers {
        let l = &p.limits;
        let price = |v: f64| {
            if v == 0.0 {
                "-".to_string()
            } else {
                format!("{v:.2}")
            }
        };
        table.row(vec![
            plain(format!("{}/{}", p.name, p.model)),
            (p.api.clone(), Tint::Dim),
            plain(l.context_window.map_or("-".into(), fmt_count)),
            plain(fmt_count(l.max_output_tokens as u64)),
            plain(price(l.price_input_per_mtok)),
            plain(price(l.price_output_per_mtok)),
        ]);
    }
    let mut text = table.render(style);
    text.push_str(
        &style
            .dim("aliases: mythos, mythos/chat, mythos/code, mythos/analysis, mythos/background\n"),
    );
    text
}

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
        // Token counts, in headers short enough that a day's row fits 80 columns with room
        // for long provider names (the longer headers made 87 and wrapped every row).
        ("INPUT", true),
        ("CACHED", true),
        ("OUTPUT", true),
        ("COST", true),
    ]);
    let (mut req, mut inp, mut cached, mut outp, mut cost) = (0u64, 0u64, 0u64, 0u64, 0f64);
    for r in &report.rows {
        req += r.requests;
        inp += r.input_tokens;
        cached += r.cached_tokens;
        outp += r.output_tokens;
        cost += r.cost_usd;
        // Requests no provider answered come as `(cancelled)` and `(failed)`: said as what
        // they are, set apart from the providers' names.
        let who = match r.provider.as_str() {
            "(cancelled)" => ("none: cancelled".to_string(), Tint::Dim),
            "(failed)" => ("none: failed".to_string(), Tint::Dim),
            name => plain(name),
        };
        table.row(vec![
            plain(&r.day),
            who,
            plain(fmt_count(r.requests)),
            plain(fmt_count(r.input_tokens)),
            plain(fmt_count(r.cached_tokens)),
            plain(fmt_count(r.output_tokens)),
            plain(fmt_cost(r.cost_usd)),
        ]);
    }
    table.row(vec![
        ("total".to_string(), Tint::None),
        plain(""),
        plain(fmt_count(req)),
        plain(fmt_count(inp)),
        plain(fmt_count(cached)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use mythos_protocol::{ProviderStatus, UsageRow};

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
            limits: mythos_protocol::ModelLimits {
                context_window: Some(200_000),
                max_output_tokens: 64_000,
                price_input_per_mtok: 3.0,
                price_output_per_mtok: 15.0,
            },
        }
    }

    /// A table wider than the terminal leaves out its least useful columns until it fits.
    #[test]
    fn a_table_fits_the_terminal_by_leaving_columns_out() {
        let mut t = Table::new(&[
            ("NAME", false),
            ("A", true),
            ("LONG COLUMN", true),
            ("B", true),
        ]);
        t.row(vec![
            plain("alpha"),
            plain("1"),
            plain("123456789012"),
            plain("2"),
        ]);
        let full = t.render(Style::PLAIN);
        assert!(full.lines().all(|l| l.chars().count() > 20), "{full}");
        t.fit(20, &["LONG COLUMN", "A"]);
        let fitted = t.render(Style::PLAIN);
        assert!(fitted.lines().all(|l| l.chars().count() <= 20), "{fitted}");
        assert_eq!(fitted, "NAME   A  B\nalpha  1  2\n");
    }

    #[test]
    fn models_table() {
        let report = StatusReport {
            build: "0.1.0".into(),
            pid: 1,
            uptime_secs: 1,
            in_flight: 0,
            simulated: false,
            providers: vec![provider("anthropic", BreakerState::Closed)],
            notes: Vec::new(),
            recent_failovers: Vec::new(),
            restart_command: None,
        };
        let text = models_text(&report, Style::PLAIN);
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("anthropic/anthropic-model"), "{text}");
        assert!(row.contains("200,000") && row.contains("64,000"), "{text}");
        assert!(row.contains("3.00") && row.contains("15.00"), "{text}");
        assert!(text.contains("mythos/code"));
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
            recent_failovers: Vec::new(),
            restart_command: None,
        };
        let text = status_text_in(&report, Style::PLAIN, None, &[]);
        let expected = "\
mythosd 0.1.0 · pid 4242 · up 3 m 12 s · 1 in flight
simulated providers (no API keys found: set ANTHROPIC_API_KEY, DEEPSEEK_API_KEY, OPENAI_API_KEY or GEMINI_API_KEY)
note: the state database was unreadable: started fresh

PROVIDER       STATE         MODEL                SCORE  SUCCESS    TTFT  LATENCY  REQUESTS  FAILURES  LIVE  QUOTA LEFT  WAIT
sim-anthropic  rate limited  sim-anthropic-model   97.1      99%       -    1.2 s     1,200         3     0    0/50 req  59 s
sim-deepseek   healthy       sim-deepseek-model    97.1      99%  212 ms    1.2 s     1,200         3     3           -     -

sim-anthropic: rate limited, 59 s left; last error: 429 rate limited (retry after 60 s)
";
        assert_eq!(text, expected);
        // Colour never changes the layout: strip the escapes and compare.
        let colored = status_text_in(&report, Style::COLOR, None, &[]);
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
            cached_tokens: n * 1000,
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
DAY         PROVIDER       REQUESTS  INPUT  CACHED  OUTPUT     COST
2025-11-24  sim-anthropic        12  1,200  12,000     120  $0.2500
2025-11-23  sim-deepseek          3    300   3,000      30  $0.0012
───────────────────────────────────────────────────────────────────
total                            15  1,500  15,000     150  $0.2512
";
        assert_eq!(text, expected);
        // Requests no provider answered are not a provider's row.
        let report = UsageReport {
            rows: vec![row("2025-11-24", "(cancelled)", 2, 0.0)],
        };
        let text = usage_text(&report, 7, Style::PLAIN);
        assert!(text.contains("2025-11-24  none: cancelled"), "{text}");
        assert_eq!(
            usage_text(&UsageReport { rows: vec![] }, 7, Style::PLAIN),
            "no requests in the last 7 days\n"
        );
    }
}
