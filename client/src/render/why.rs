//! `mythos why`: a routing record told as a story, then its candidates and attempts.

use mythos_protocol::RequestRecord;

use super::table::{plain, Table, Tint};
use super::{fmt_cost, fmt_count, fmt_duration_ms, kind_words, Style};

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

#[cfg(test)]
mod tests {
    use super::*;
    use mythos_protocol::{Attempt, CandidateScore, ErrorKind, TaskKind, Usage};

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
                ..Usage::default()
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
}
