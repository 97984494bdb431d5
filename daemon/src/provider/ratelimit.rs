//! What providers announce about their quotas, read from response headers.
//!
//! Every response (a 200 as much as a 429) may carry the provider's view of its rate limits:
//!
//! - OpenAI, DeepSeek, Groq and most OpenAI-compatible servers: `x-ratelimit-limit-requests`,
//!   `x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` and the same for `-tokens`,
//!   with resets as Go-style durations (`6m0s`, `1.5s`, `20ms`).
//! - Anthropic: `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,
//!   remaining,reset}`, with resets as RFC 3339 instants.
//! - OpenRouter and servers following the IETF draft: `x-ratelimit-limit` /
//!   `x-ratelimit-remaining` / `x-ratelimit-reset` (or without the `x-`), counting requests,
//!   with the reset as seconds from now or a Unix timestamp.
//! - `retry-after` (seconds or an HTTP date) and `retry-after-ms` on any response.
//!
//! Parsing is lenient: a header that does not parse is ignored, never an error, because a
//! provider's odd header must not fail a request that otherwise worked.

use std::time::Duration;

use reqwest::header::HeaderMap;

/// A kind of quota a provider may announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    /// Requests per window.
    Requests,
    /// Tokens (input and output together) per window.
    Tokens,
    /// Input tokens per window (Anthropic).
    InputTokens,
    /// Output tokens per window (Anthropic).
    OutputTokens,
}

impl QuotaKind {
    /// Every kind, in a fixed order (the index of each in arrays indexed by kind).
    pub const ALL: [QuotaKind; 4] = [
        QuotaKind::Requests,
        QuotaKind::Tokens,
        QuotaKind::InputTokens,
        QuotaKind::OutputTokens,
    ];

    /// Position in [`QuotaKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// In words, for status lines.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Requests => "requests",
            QuotaKind::Tokens => "tokens",
            QuotaKind::InputTokens => "input tokens",
            QuotaKind::OutputTokens => "output tokens",
        }
    }
}

/// One announced quota.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Announced {
    /// The limit per window.
    pub limit: Option<u64>,
    /// What is left now.
    pub remaining: Option<u64>,
    /// How long until the quota is whole again.
    pub reset_in: Option<Duration>,
}

/// Everything one response said about rate limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimits {
    /// Announced quotas, indexed by [`QuotaKind::index`].
    pub quotas: [Option<Announced>; 4],
    /// `retry-after-ms` or `retry-after`.
    pub retry_after: Option<Duration>,
    /// By [`QuotaKind::index`]: the quota's reset was an instant (Anthropic's RFC 3339 ones, in
    /// whole seconds; a Unix time), read against a clock that may be off from the server's.
    pub reset_on_clock: [bool; 4],
}

impl RateLimits {
    /// Whether the response announced any quota at all.
    pub fn announces(&self) -> bool {
        self.quotas.iter().any(Option::is_some)
    }

    /// The announced quota of `kind`.
    pub fn get(&self, kind: QuotaKind) -> Option<&Announced> {
        self.quotas[kind.index()].as_ref()
    }

    /// How long until every quota announced as spent (nothing remaining) is whole again: what
    /// a `429` without `Retry-After` says about when to come back. Paused only the default
    /// two seconds, requests went back into a quota its headers said was spent for another 15
    /// (found by a chaos run: 21 upstream 429s for 15 answers).
    pub fn spent_for(&self) -> Option<Duration> {
        self.quotas
            .iter()
            .flatten()
            .filter(|a| a.remaining == Some(0))
            .filter_map(|a| a.reset_in)
            .max()
    }

    /// How long a `429` with these headers asks to wait: `Retry-After`, or when it has none,
    /// the [`spent_for`](Self::spent_for) reset.
    ///
    /// A `Retry-After` in whole seconds is a rounded reset: with a spent quota's own reset in
    /// milliseconds within the same second, the precise one is meant. Honouring the rounded 8 s
    /// over a 7.4 s reset, each window of a provider whose window starts at its first request
    /// slipped 0.6 s, and a request that would have been served in the next one timed out 10 ms
    /// before it (found by a chaos run of a fixed-window provider at 14 clients).
    ///
    /// Only a reset given as a duration is that precise: an instant (Anthropic's, in whole
    /// seconds) is read against the local clock, which may be off from the server's by up to
    /// the skew tolerated unnoticed, and a clock 0.8 s fast made it 7.2 s against the 8 s
    /// asked (earlier retries fail, Anthropic says): the provider's queue went 0.8 s early,
    /// into 429s.
    pub fn wait_after_429(&self) -> Option<Duration> {
        let spent = self.spent_for();
        let on_clock = self
            .quotas
            .iter()
            .zip(self.reset_on_clock)
            .any(|(a, clock)| clock && a.is_some_and(|a| a.remaining == Some(0)));
        match (self.retry_after, spent) {
            (Some(told), Some(reset))
                if told.subsec_nanos() == 0
                    && !on_clock
                    && reset.abs_diff(told) < Duration::from_secs(1) =>
            {
                Some(reset)
            }
            (Some(told), _) => Some(told),
            (None, reset) => reset,
        }
    }
}

/// Longest wait any header may ask for; longer values are taken as this (a day). The router
/// caps waits further (at `max_cooldown_secs`); this bound only keeps arithmetic finite.
pub const MAX_HEADER_WAIT: Duration = Duration::from_secs(86_400);

/// Read the rate-limit headers of a response received at `now_unix_ms`.
///
/// One pass over the response's headers (a dozen or so) sorts the rate-limit ones into slots;
/// looking up each of the 26 names this reads would hash and compare every one of them, and
/// this runs on every response.
pub fn from_headers(headers: &HeaderMap, now_unix_ms: u64) -> RateLimits {
    let now_unix_ms = server_now(headers, now_unix_ms);
    let mut raw = Raw::default();
    for (name, value) in headers {
        if let Some(slot) = raw.slot(name.as_str()) {
            // The first value of a name counts, as `HeaderMap::get` would give it.
            slot.get_or_insert(value.to_str().map(str::trim).ok());
        }
    }
    let read = |fields: [Option<Option<&str>>; 3], reset: &dyn Fn(&str) -> Option<Duration>| {
        let [limit, remaining, reset_at] = fields.map(Option::flatten);
        Announced {
            // A limit of 0 is no quota a provider that answers has; taken as one, it made
            // every request "larger than the quota", for good (found by a chaos run).
            limit: limit.and_then(parse_count).filter(|&l| l > 0),
            remaining: remaining.and_then(parse_count),
            reset_in: reset_at.and_then(reset),
        }
    };
    let mut out = RateLimits {
        retry_after: retry_after(headers, now_unix_ms),
        ..RateLimits::default()
    };
    for kind in QuotaKind::ALL {
        let i = kind.index();
        let a = read(raw.anthropic[i], &|t| reset_in_rfc3339(t, now_unix_ms));
        let (o, o_reset) = match raw.openai.get(i) {
            Some(&fields) => (
                read(fields, &|t| reset_in_openai(t, now_unix_ms)),
                fields[2].flatten(),
            ),
            None => (Announced::default(), None),
        };
        let mut merged = pick(a, o);
        let mut on_clock = a.remaining.is_some() || o_reset.is_some_and(is_unix_time);
        if kind == QuotaKind::Requests && merged.is_none() {
            // The IETF draft / OpenRouter form counts requests.
            for fields in raw.draft {
                let d = read(fields, &|t| reset_in_number(t, now_unix_ms));
                if merged.is_none() && d.remaining.is_some() {
                    on_clock = fields[2].flatten().is_some_and(is_unix_time);
                }
                merged = merged.or(pick(d, Announced::default()));
            }
        }
        out.reset_on_clock[i] = merged.is_some() && on_clock;
        out.quotas[i] = merged;
    }
    out
}

/// How far the local clock may be from a server's `Date` before the server's is believed.
/// `Date` counts whole seconds, so it reads up to a second early: within this, the local clock
/// (to the millisecond) is the better one.
const SKEW_TOLERANCE_MS: u64 = 2_000;

/// What the server's clock read when it sent `headers`, to measure its absolute resets
/// against (Anthropic's RFC 3339 instants, HTTP-date `Retry-After`s, Unix-time resets): its
/// `Date` when the local clock is off from it by more than [`SKEW_TOLERANCE_MS`], else the local
/// clock. A laptop clock two minutes slow made every Anthropic reset two minutes too long, a
/// fast one made the router retry into a quota still spent.
fn server_now(headers: &HeaderMap, local_unix_ms: u64) -> u64 {
    // A cache's answer (it says `Age`) carries the `Date` of when it was first made.
    if headers.contains_key(reqwest::header::AGE) {
        return local_unix_ms;
    }
    let Some(date) = headers
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| httpdate::parse_http_date(t.trim()).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
    else {
        return local_unix_ms;
    };
    // The middle of the second `Date` names.
    let date_ms = (date.as_millis().min(u64::MAX as u128) as u64).saturating_add(500);
    if date_ms.abs_diff(local_unix_ms) > SKEW_TOLERANCE_MS {
        date_ms
    } else {
        local_unix_ms
    }
}

/// The rate-limit headers of one response, by provider form, kind and field (limit,
/// remaining, reset). `Some(None)`: the header is there but not visible ASCII.
#[derive(Default)]
struct Raw<'a> {
    /// `anthropic-ratelimit-{kind}-{field}`, by [`QuotaKind::index`].
    anthropic: [[Option<Option<&'a str>>; 3]; 4],
    /// `x-ratelimit-{field}-{requests,tokens}`.
    openai: [[Option<Option<&'a str>>; 3]; 2],
    /// `x-ratelimit-{field}`, then `ratelimit-{field}`.
    draft: [[Option<Option<&'a str>>; 3]; 2],
}

impl<'a> Raw<'a> {
    /// Where the header `name` (lower case, as `HeaderName` keeps it) goes, if it is one.
    fn slot(&mut self, name: &str) -> Option<&mut Option<Option<&'a str>>> {
        let field = |f: &str| ["limit", "remaining", "reset"].iter().position(|x| *x == f);
        if let Some(rest) = name.strip_prefix("anthropic-ratelimit-") {
            let (kind, f) = rest.rsplit_once('-')?;
            let k = ["requests", "tokens", "input-tokens", "output-tokens"]
                .iter()
                .position(|x| *x == kind)?;
            return Some(&mut self.anthropic[k][field(f)?]);
        }
        let (form, rest) = match name.strip_prefix("x-") {
            Some(rest) => (0, rest),
            None => (1, name),
        };
        let rest = rest.strip_prefix("ratelimit-")?;
        match rest.split_once('-') {
            Some((f, kind)) if form == 0 => {
                let k = ["requests", "tokens"].iter().position(|x| *x == kind)?;
                Some(&mut self.openai[k][field(f)?])
            }
            Some(_) => None,
            None => Some(&mut self.draft[form][field(rest)?]),
        }
    }
}

/// The first of two readings that says anything useful (a remaining count is the minimum).
fn pick(a: Announced, b: Announced) -> Option<Announced> {
    [a, b].into_iter().find(|x| x.remaining.is_some())
}

fn parse_count(s: &str) -> Option<u64> {
    // Some servers send counts as floats ("12.0"); negative or absurd ones are noise.
    s.parse::<u64>().ok().or_else(|| {
        s.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e15)
            .map(|v| v as u64)
    })
}

/// `retry-after-ms` (milliseconds) or `retry-after` (seconds, or an HTTP date).
pub fn retry_after(headers: &HeaderMap, now_unix_ms: u64) -> Option<Duration> {
    let text = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = text("retry-after-ms").and_then(|t| t.parse::<f64>().ok()) {
        if let Some(d) = secs(ms / 1000.0) {
            return Some(d);
        }
    }
    let ra = text("retry-after")?;
    if let Some(d) = ra.parse::<f64>().ok().and_then(secs) {
        return Some(d);
    }
    let at = httpdate::parse_http_date(ra).ok()?;
    let at_ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis()
        .min(u64::MAX as u128) as u64;
    Some(Duration::from_millis(at_ms.saturating_sub(now_unix_ms)).min(MAX_HEADER_WAIT))
}

/// A non-negative number of seconds as a bounded duration.
fn secs(v: f64) -> Option<Duration> {
    (v.is_finite() && v >= 0.0)
        .then(|| Duration::from_secs_f64(v.min(MAX_HEADER_WAIT.as_secs_f64())))
}

/// Go's `time.Duration` text as OpenAI sends it: `6m0s`, `1.5s`, `20ms`, `1h2m3.5s`. A bare
/// number is seconds.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if let Ok(v) = s.parse::<f64>() {
        return secs(v);
    }
    let mut total = 0.0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * factor;
    }
    secs(total)
}

/// An OpenAI-form reset: a Go duration ("6m0s", "20ms"), or a bare number, read as
/// [`reset_in_number`] does: seconds, or a Unix time in seconds or milliseconds when it is
/// that large (some compatible servers send one; read as seconds, it paused the provider for
/// the day the header cap allows).
fn reset_in_openai(s: &str, now_unix_ms: u64) -> Option<Duration> {
    if s.parse::<f64>().is_ok() {
        reset_in_number(s, now_unix_ms)
    } else {
        parse_go_duration(s)
    }
}

/// An RFC 3339 instant (Anthropic's resets) as time from `now_unix_ms`; an instant in the past
/// is zero.
pub fn reset_in_rfc3339(s: &str, now_unix_ms: u64) -> Option<Duration> {
    let at = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let at_ms = at.unix_timestamp_nanos() / 1_000_000;
    let delta = at_ms - now_unix_ms as i128;
    Some(Duration::from_millis(
        delta.clamp(0, MAX_HEADER_WAIT.as_millis() as i128) as u64,
    ))
}

/// Whether a reset given as a number is a Unix time (see [`reset_in_number`]), not seconds.
fn is_unix_time(s: &str) -> bool {
    s.parse::<f64>().is_ok_and(|v| v > 1e9)
}

/// A reset given as a number: seconds from now, or a Unix timestamp in seconds or milliseconds
/// (OpenRouter sends milliseconds).
fn reset_in_number(s: &str, now_unix_ms: u64) -> Option<Duration> {
    let v: f64 = s
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)?;
    let now = now_unix_ms as f64;
    let wait_ms = if v > 1e12 {
        v - now
    } else if v > 1e9 {
        v * 1000.0 - now
    } else {
        v * 1000.0
    };
    secs(wait_ms.max(0.0) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    /// Name by name, the way the headers are documented: the reference the one-pass reading
    /// must agree with.
    fn by_name(headers: &HeaderMap, now_unix_ms: u64) -> RateLimits {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let count = |name: &str| text(name).and_then(parse_count);
        let limit = |name: &str| count(name).filter(|&l| l > 0);
        let mut out = RateLimits {
            retry_after: retry_after(headers, now_unix_ms),
            ..RateLimits::default()
        };
        let kinds = ["requests", "tokens", "input-tokens", "output-tokens"];
        for (i, kind) in QuotaKind::ALL.into_iter().enumerate() {
            let k = kinds[i];
            let a = Announced {
                limit: limit(&format!("anthropic-ratelimit-{k}-limit")),
                remaining: count(&format!("anthropic-ratelimit-{k}-remaining")),
                reset_in: text(&format!("anthropic-ratelimit-{k}-reset"))
                    .and_then(|t| reset_in_rfc3339(t, now_unix_ms)),
            };
            let o = if i < 2 {
                Announced {
                    limit: limit(&format!("x-ratelimit-limit-{k}")),
                    remaining: count(&format!("x-ratelimit-remaining-{k}")),
                    reset_in: text(&format!("x-ratelimit-reset-{k}"))
                        .and_then(|t| reset_in_openai(t, now_unix_ms)),
                }
            } else {
                Announced::default()
            };
            let mut merged = pick(a, o);
            let mut on_clock = a.remaining.is_some()
                || (i < 2 && text(&format!("x-ratelimit-reset-{k}")).is_some_and(is_unix_time));
            if kind == QuotaKind::Requests && merged.is_none() {
                for prefix in ["x-ratelimit", "ratelimit"] {
                    if merged.is_none() && count(&format!("{prefix}-remaining")).is_some() {
                        on_clock = text(&format!("{prefix}-reset")).is_some_and(is_unix_time);
                    }
                    let d = Announced {
                        limit: limit(&format!("{prefix}-limit")),
                        remaining: count(&format!("{prefix}-remaining")),
                        reset_in: text(&format!("{prefix}-reset"))
                            .and_then(|t| reset_in_number(t, now_unix_ms)),
                    };
                    merged = merged.or(pick(d, Announced::default()));
                }
            }
            out.reset_on_clock[i] = merged.is_some() && on_clock;
            out.quotas[i] = merged;
        }
        out
    }

    #[test]
    fn one_pass_reads_what_name_by_name_reads() {
        let mut names: Vec<String> = Vec::new();
        for k in [
            "requests",
            "tokens",
            "input-tokens",
            "output-tokens",
            "bogus",
        ] {
            for f in ["limit", "remaining", "reset", "left"] {
                names.push(format!("anthropic-ratelimit-{k}-{f}"));
                names.push(format!("x-ratelimit-{f}-{k}"));
                names.push(format!("ratelimit-{f}-{k}"));
            }
        }
        for f in ["limit", "remaining", "reset", "policy"] {
            names.push(format!("x-ratelimit-{f}"));
            names.push(format!("ratelimit-{f}"));
        }
        names.extend(
            [
                "anthropic-ratelimit-",
                "x-ratelimit-",
                "ratelimit",
                "retry-after",
            ]
            .map(String::from),
        );
        let values: [&[u8]; 9] = [
            b"60",
            b" 59 ",
            b"12.5",
            b"-3",
            b"6m0s",
            b"2026-12-01T12:00:30Z",
            b"1780000000",
            b"soon",
            b"\xff1",
        ];
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..5_000 {
            let mut h = HeaderMap::new();
            for _ in 0..rng.usize(1..12) {
                let name = reqwest::header::HeaderName::from_bytes(
                    names[rng.usize(..names.len())].as_bytes(),
                )
                .unwrap();
                let value = HeaderValue::from_bytes(values[rng.usize(..values.len())]).unwrap();
                // Sometimes a second value under the same name: the first one counts.
                h.append(name, value);
            }
            let now = 1_780_000_000_000 + rng.u64(..100_000);
            assert_eq!(from_headers(&h, now), by_name(&h, now), "{h:?}");
        }
    }

    #[test]
    fn go_durations() {
        let ms = |s: &str| parse_go_duration(s).map(|d| d.as_millis());
        assert_eq!(ms("6m0s"), Some(360_000));
        assert_eq!(ms("1.5s"), Some(1_500));
        assert_eq!(ms("20ms"), Some(20));
        assert_eq!(ms("1h2m3.5s"), Some(3_723_500));
        assert_eq!(ms("2m59.56s"), Some(179_560));
        assert_eq!(ms("0s"), Some(0));
        assert_eq!(ms("7"), Some(7_000));
        assert_eq!(ms("500us"), Some(0));
        assert_eq!(ms(""), None);
        assert_eq!(ms("soon"), None);
        assert_eq!(ms("5x"), None);
        assert_eq!(ms("-1s"), None);
        assert_eq!(ms("1e400s"), None);
        // Absurd values are bounded, never an overflow.
        assert_eq!(parse_go_duration("99999999999h"), Some(MAX_HEADER_WAIT));
    }

    #[test]
    fn openai_headers() {
        // As api.openai.com sends them.
        let h = headers(&[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        let r = from_headers(&h, 0);
        assert!(r.announces());
        let req = r.get(QuotaKind::Requests).unwrap();
        assert_eq!(
            (req.limit, req.remaining, req.reset_in),
            (Some(60), Some(59), Some(Duration::from_secs(1)))
        );
        let tok = r.get(QuotaKind::Tokens).unwrap();
        assert_eq!(tok.remaining, Some(149_984));
        assert_eq!(tok.reset_in, Some(Duration::from_secs(360)));
        assert_eq!(r.get(QuotaKind::InputTokens), None);
        assert_eq!(r.retry_after, None);
        assert_eq!(r.spent_for(), None);
    }

    /// What compatible servers send beside OpenAI's own forms: a reset as a Unix time (read as
    /// seconds, it paused the provider for a day), a limit of 0 (taken for one, every request
    /// was "larger than the quota", for good). A 429 without `Retry-After` comes back when the
    /// quotas it says are spent are whole again.
    /// A whole-second `Retry-After` is the rounded reset of the quota it is about: the
    /// spent quota's precise reset within the same second is meant; any other is not.
    #[test]
    fn a_rounded_retry_after_gives_way_to_the_precise_reset() {
        let now = 1_780_000_000_000;
        let wait = |pairs: &[(&'static str, &'static str)]| {
            from_headers(&headers(pairs), now).wait_after_429()
        };
        let spent = [
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "7.386s"),
        ];
        let ms = Duration::from_millis;
        assert_eq!(
            wait(&[&spent[..], &[("retry-after", "8")]].concat()),
            Some(ms(7_386))
        );
        // Rounded down, as some servers do: still the precise one.
        assert_eq!(
            wait(&[&spent[..], &[("retry-after", "7")]].concat()),
            Some(ms(7_386))
        );
        // A wait about something else (seconds apart), or already precise, is the server's.
        assert_eq!(
            wait(&[&spent[..], &[("retry-after", "20")]].concat()),
            Some(ms(20_000))
        );
        assert_eq!(
            wait(&[&spent[..], &[("retry-after-ms", "7900")]].concat()),
            Some(ms(7_900))
        );
        // Quotas with room left say nothing about this 429.
        let left = [
            ("x-ratelimit-remaining-requests", "2"),
            ("x-ratelimit-reset-requests", "7.386s"),
            ("retry-after", "8"),
        ];
        assert_eq!(wait(&left), Some(ms(8_000)));
        assert_eq!(wait(&spent), Some(ms(7_386)));
    }

    /// An instant (Anthropic's RFC 3339 resets, in whole seconds) is read against the local
    /// clock, which may run up to `SKEW_TOLERANCE_MS` off the server's unnoticed: it is no more
    /// precise than a whole-second `Retry-After`, and a clock 0.8 s fast made it the "precise"
    /// 7.2 s against the 8 s Anthropic asked for (earlier retries fail, it says): the provider's
    /// whole queue was let go 0.8 s early, into its 429s.
    #[test]
    fn a_retry_after_is_not_cut_short_by_a_reset_read_on_the_local_clock() {
        let server_now = 1_780_000_000_000;
        let limits = from_headers(
            &headers(&[
                ("retry-after", "8"),
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", "2026-05-28T20:26:48Z"),
            ]),
            server_now + 800,
        );
        assert_eq!(limits.wait_after_429(), Some(Duration::from_secs(8)));
    }

    #[test]
    fn odd_openai_forms_do_not_lock_a_provider_out() {
        let now = 1_780_000_000_000;
        let h = headers(&[
            ("x-ratelimit-limit-requests", "0"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1780000012"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "1780000003500"),
        ]);
        let r = from_headers(&h, now);
        let req = r.get(QuotaKind::Requests).unwrap();
        assert_eq!(req.limit, None);
        assert_eq!(req.reset_in, Some(Duration::from_secs(12)));
        let tok = r.get(QuotaKind::Tokens).unwrap();
        assert_eq!(tok.reset_in, Some(Duration::from_millis(3_500)));
        assert_eq!(r.spent_for(), Some(Duration::from_secs(12)));
        // A plain number of seconds is still that.
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "3"),
            ("x-ratelimit-reset-requests", "20"),
        ]);
        let r = from_headers(&h, now);
        let req = r.get(QuotaKind::Requests).unwrap();
        assert_eq!(req.reset_in, Some(Duration::from_secs(20)));
        assert_eq!(r.spent_for(), None, "3 remaining is not spent");
    }

    #[test]
    fn anthropic_headers() {
        let now = 1_735_689_600_000; // 2025-01-01T00:00:00Z
        let h = headers(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "2025-01-01T00:00:01Z"),
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "39000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2025-01-01T00:00:01.500+00:00",
            ),
            ("anthropic-ratelimit-output-tokens-remaining", "7000"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2024-12-31T23:00:00Z",
            ),
            ("retry-after", "3"),
        ]);
        let r = from_headers(&h, now);
        let req = r.get(QuotaKind::Requests).unwrap();
        assert_eq!(req.remaining, Some(49));
        assert_eq!(req.reset_in, Some(Duration::from_secs(1)));
        let inp = r.get(QuotaKind::InputTokens).unwrap();
        assert_eq!(inp.reset_in, Some(Duration::from_millis(1500)));
        // A reset in the past means whole now.
        let out = r.get(QuotaKind::OutputTokens).unwrap();
        assert_eq!((out.limit, out.reset_in), (None, Some(Duration::ZERO)));
        assert_eq!(r.get(QuotaKind::Tokens), None);
        assert_eq!(r.retry_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn openrouter_and_draft_headers() {
        let now = 1_700_000_000_000;
        let h = headers(&[
            ("x-ratelimit-limit", "20"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1700000002500"),
        ]);
        let r = from_headers(&h, now);
        let req = r.get(QuotaKind::Requests).unwrap();
        assert_eq!(req.remaining, Some(0));
        assert_eq!(req.reset_in, Some(Duration::from_millis(2500)));
        let h = headers(&[("ratelimit-remaining", "4"), ("ratelimit-reset", "30")]);
        let r = from_headers(&h, now);
        assert_eq!(
            r.get(QuotaKind::Requests).unwrap().reset_in,
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn odd_values_are_ignored_not_errors() {
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "lots"),
            ("x-ratelimit-reset-requests", "tomorrow"),
            ("anthropic-ratelimit-tokens-remaining", "-5"),
            ("x-ratelimit-remaining-tokens", "12.0"),
        ]);
        let r = from_headers(&h, 0);
        assert_eq!(r.get(QuotaKind::Requests), None);
        assert_eq!(r.get(QuotaKind::Tokens).unwrap().remaining, Some(12));
    }

    /// A machine whose clock is ten minutes off still waits what the server meant: absolute
    /// resets are measured against the server's `Date`. Within two seconds of it, the local
    /// clock (finer than `Date`'s whole seconds) is used.
    #[test]
    fn absolute_resets_follow_the_servers_clock_when_ours_is_off() {
        let date = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
        let h = headers(&[
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2015-10-21T07:28:30Z"),
            ("retry-after", "Wed, 21 Oct 2015 07:28:20 GMT"),
        ]);
        let reset = |now| {
            let r = from_headers(&h, now);
            (r.get(QuotaKind::Requests).unwrap().reset_in, r.retry_after)
        };
        let ms = Duration::from_millis;
        for skew in [600_000, -600_000i64, 3_000, -3_000] {
            let now = (date as i64 + skew) as u64;
            assert_eq!(
                reset(now),
                (Some(ms(29_500)), Some(ms(19_500))),
                "clock off by {skew} ms"
            );
        }
        assert_eq!(reset(date + 1_200), (Some(ms(28_800)), Some(ms(18_800))));
        // A cached answer's `Date` is as old as the cache entry: not the server's clock now.
        let mut cached = h.clone();
        cached.insert("age", HeaderValue::from_static("600"));
        let r = from_headers(&cached, date + 600_000);
        assert_eq!(
            r.get(QuotaKind::Requests).unwrap().reset_in,
            Some(Duration::ZERO)
        );
        // Without a `Date`, or with a garbled one, the local clock is all there is.
        let mut h = h.clone();
        h.insert("date", HeaderValue::from_static("yesterday"));
        let r = from_headers(&h, date + 600_000);
        assert_eq!(
            r.get(QuotaKind::Requests).unwrap().reset_in,
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
        let ra = |pairs: &[(&'static str, &'static str)]| retry_after(&headers(pairs), now);
        assert_eq!(ra(&[]), None);
        assert_eq!(ra(&[("retry-after", "60")]), Some(Duration::from_secs(60)));
        assert_eq!(
            ra(&[("retry-after", "60"), ("retry-after-ms", "1500.5")]),
            Some(Duration::from_micros(1_500_500))
        );
        assert_eq!(
            ra(&[("retry-after", "60"), ("retry-after-ms", "soon")]),
            Some(Duration::from_secs(60))
        );
        assert_eq!(ra(&[("retry-after", "-3")]), None);
        assert_eq!(
            ra(&[("retry-after", "Wed, 21 Oct 2015 07:28:07 GMT")]),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            ra(&[("retry-after", "Wed, 21 Oct 2015 07:27:00 GMT")]),
            Some(Duration::ZERO)
        );
        assert_eq!(ra(&[("retry-after", "1e300")]), Some(MAX_HEADER_WAIT));
    }
}
