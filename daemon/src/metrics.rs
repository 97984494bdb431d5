//! Prometheus metrics, served as text at `GET /metrics` on the HTTP front end's listener.
//!
//! Counters and histograms are fed by the request records the router writes for every request
//! (the same records `mythos why` explains), so they cost nothing on the streaming path; gauges
//! (breaker state, quotas, streams, clients) are read from the router when scraped. Names follow
//! Prometheus conventions: `mythos_` prefix, `_total` counters, base units (`_seconds`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use mythos_protocol::{BreakerState, Failover, RequestRecord, StatusReport};

use crate::router::RecordSink;

/// Upper bounds of the latency histograms, in seconds: from a local mock's milliseconds to a
/// reasoning model's minutes.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

type Labels = Vec<(&'static str, String)>;

/// The series of one metric family, by their label values.
///
/// A finished request counts into about ten series. They are found by the label values it
/// borrows, so counting into a series that exists allocates nothing (a map keyed by owned
/// labels needs the key built, a vector and a string per label, for every lookup). Families
/// hold a few dozen series (providers × tasks × outcomes), so a scan is short; they are sorted
/// only when the exposition is written.
struct Family<V>(Vec<(Labels, V)>);

impl<V> Default for Family<V> {
    fn default() -> Self {
        Family(Vec::new())
    }
}

impl<V: Default> Family<V> {
    /// The series with these label values, made on first use.
    fn at(&mut self, labels: &[(&'static str, &str)]) -> &mut V {
        let same = |k: &Labels| {
            k.len() == labels.len()
                && k.iter()
                    .zip(labels)
                    .all(|((a, x), (b, y))| a == b && x == y)
        };
        let i = match self.0.iter().position(|(k, _)| same(k)) {
            Some(i) => i,
            None => {
                let k = labels.iter().map(|(n, v)| (*n, (*v).to_string())).collect();
                self.0.push((k, V::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }
}

impl<V> Family<V> {
    /// The series in label order, as the exposition lists them.
    fn sorted(&self) -> Vec<&(Labels, V)> {
        let mut v: Vec<_> = self.0.iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[derive(Default)]
struct Inner {
    requests: Family<u64>,
    attempts: Family<u64>,
    failovers: Family<u64>,
    retries: Family<u64>,
    tokens: Family<u64>,
    cost: Family<f64>,
    ttft: Family<Histogram>,
    duration: Family<Histogram>,
    queue_wait: Histogram,
    /// The breaker state last seen per provider, and the transitions seen.
    last_state: BTreeMap<String, BreakerState>,
    transitions: Family<u64>,
    /// The last failovers, newest last (for `status --watch`).
    recent: std::collections::VecDeque<Failover>,
}

/// How many failovers `status` keeps.
const RECENT: usize = 8;

/// The daemon's metrics.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Writes to clients' sockets, by way in: how well small stream events are coalesced
    /// (the benchmark divides them by the chunks relayed). Atomics, not the lock: they move
    /// on every write.
    writes: [AtomicU64; 2],
}

/// A way into the daemon, for [`Metrics::count_write`].
#[derive(Debug, Clone, Copy)]
pub enum Front {
    /// The Unix socket / named pipe.
    Socket = 0,
    /// The HTTP front end.
    Http = 1,
}

fn state_name(s: BreakerState) -> &'static str {
    match s {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
        BreakerState::RateLimited => "rate_limited",
        BreakerState::Overloaded => "overloaded",
        BreakerState::Unusable => "unusable",
    }
}

const STATES: [BreakerState; 6] = [
    BreakerState::Closed,
    BreakerState::Open,
    BreakerState::HalfOpen,
    BreakerState::RateLimited,
    BreakerState::Overloaded,
    BreakerState::Unusable,
];

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count one write to a client's socket.
    pub fn count_write(&self, front: Front) {
        self.writes[front as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Count one finished request.
    pub fn observe(&self, rec: &RequestRecord) {
        let mut m = self.lock();
        let outcome = rec.error.map_or("ok", |k| k.as_str());
        let provider = rec.provider.as_deref().unwrap_or("none");
        *m.requests.at(&[
            ("provider", provider),
            ("task", rec.task.as_str()),
            ("outcome", outcome),
        ]) += 1;
        for (n, a) in rec.attempts.iter().enumerate() {
            let outcome = a.error.map_or("ok", |k| k.as_str());
            *m.attempts
                .at(&[("provider", &a.provider), ("outcome", outcome)]) += 1;
            if let Some(t) = a.ttft_ms {
                m.ttft
                    .at(&[("provider", &a.provider)])
                    .observe(t as f64 / 1000.0);
            }
            if let (Some(kind), Some(next)) = (a.error, rec.attempts.get(n + 1)) {
                let reason = [("provider", a.provider.as_str()), ("reason", kind.as_str())];
                let family = if next.provider == a.provider {
                    &mut m.retries
                } else {
                    if m.recent.len() == RECENT {
                        m.recent.pop_front();
                    }
                    m.recent.push_back(Failover {
                        unix_ms: rec.unix_ms + rec.latency_ms,
                        from: a.provider.clone(),
                        to: next.provider.clone(),
                        reason: kind.as_str().to_string(),
                    });
                    &mut m.failovers
                };
                *family.at(&reason) += 1;
            }
        }
        m.duration
            .at(&[("task", rec.task.as_str())])
            .observe(rec.latency_ms as f64 / 1000.0);
        m.queue_wait.observe(rec.queued_ms as f64 / 1000.0);
        if rec.provider.is_some() {
            let u = &rec.usage;
            for (kind, n) in [
                ("input", u.input_tokens),
                ("output", u.output_tokens),
                ("cache_read", u.cache_read_input_tokens),
                ("cache_write", u.cache_creation_input_tokens),
            ] {
                *m.tokens.at(&[("provider", provider), ("kind", kind)]) += n;
            }
            *m.cost.at(&[("provider", provider)]) += rec.cost_usd;
        }
    }

    /// The last failovers, oldest first.
    pub fn recent_failovers(&self) -> Vec<Failover> {
        self.lock().recent.iter().cloned().collect()
    }

    /// The exposition text: the counters, then gauges read from `status`, `open_streams`
    /// and `clients`.
    pub fn render(&self, status: &StatusReport, clients: usize) -> String {
        let mut m = self.lock();
        for p in &status.providers {
            let last = m.last_state.insert(p.name.clone(), p.state);
            if last.is_some_and(|l| l != p.state) {
                *m.transitions
                    .at(&[("provider", &p.name), ("to", state_name(p.state))]) += 1;
            }
        }
        let mut out = String::with_capacity(4096);
        counter(
            &mut out,
            "mythos_requests_total",
            "Requests finished, by the provider that answered, task and outcome.",
            &m.requests,
        );
        counter(
            &mut out,
            "mythos_attempts_total",
            "Attempts sent to providers, by outcome.",
            &m.attempts,
        );
        counter(
            &mut out,
            "mythos_failovers_total",
            "Attempts that failed and sent the request to another provider, by reason.",
            &m.failovers,
        );
        counter(
            &mut out,
            "mythos_retries_total",
            "Attempts that failed and were retried on the same provider, by reason.",
            &m.retries,
        );
        counter(
            &mut out,
            "mythos_tokens_total",
            "Tokens billed, by provider and kind.",
            &m.tokens,
        );
        header(
            &mut out,
            "mythos_cost_usd_total",
            "Estimated cost in US dollars.",
            "counter",
        );
        for (labels, v) in m.cost.sorted() {
            sample(&mut out, "mythos_cost_usd_total", labels, *v);
        }
        counter(
            &mut out,
            "mythos_breaker_transitions_total",
            "Breaker state changes seen, by the state entered.",
            &m.transitions,
        );
        histogram(
            &mut out,
            "mythos_time_to_first_token_seconds",
            "Time from an attempt's request to its first token.",
            &m.ttft,
        );
        histogram(
            &mut out,
            "mythos_request_duration_seconds",
            "Time from request to its last event, by task.",
            &m.duration,
        );
        let q = Family(vec![(Vec::new(), m.queue_wait.clone())]);
        histogram(
            &mut out,
            "mythos_queue_wait_seconds",
            "Time requests waited for capacity.",
            &q,
        );
        drop(m);

        header(
            &mut out,
            "mythos_provider_state",
            "1 for the breaker state each provider is in.",
            "gauge",
        );
        for p in &status.providers {
            for s in STATES {
                let labels = vec![
                    ("provider", p.name.clone()),
                    ("state", state_name(s).into()),
                ];
                sample(
                    &mut out,
                    "mythos_provider_state",
                    &labels,
                    f64::from(u8::from(p.state == s)),
                );
            }
        }
        header(
            &mut out,
            "mythos_provider_cooldown_seconds",
            "Seconds until a cooling or rate-limited provider is tried again.",
            "gauge",
        );
        for p in &status.providers {
            let left = p.cooldown_left_ms.unwrap_or(0) as f64 / 1000.0;
            sample(
                &mut out,
                "mythos_provider_cooldown_seconds",
                &vec![("provider", p.name.clone())],
                left,
            );
        }
        header(
            &mut out,
            "mythos_provider_in_flight",
            "Attempts streaming from each provider.",
            "gauge",
        );
        for p in &status.providers {
            sample(
                &mut out,
                "mythos_provider_in_flight",
                &vec![("provider", p.name.clone())],
                f64::from(p.in_flight),
            );
        }
        header(
            &mut out,
            "mythos_provider_score",
            "Routing score for a chat task (higher is better).",
            "gauge",
        );
        for p in &status.providers {
            sample(
                &mut out,
                "mythos_provider_score",
                &vec![("provider", p.name.clone())],
                p.score,
            );
        }
        header(
            &mut out,
            "mythos_quota_remaining",
            "What is left of each quota a provider announced, as estimated now.",
            "gauge",
        );
        for p in &status.providers {
            for q in &p.quotas {
                let labels = vec![("provider", p.name.clone()), ("quota", q.what.clone())];
                sample(
                    &mut out,
                    "mythos_quota_remaining",
                    &labels,
                    q.remaining as f64,
                );
            }
        }
        header(
            &mut out,
            "mythos_open_streams",
            "Requests being served.",
            "gauge",
        );
        sample(
            &mut out,
            "mythos_open_streams",
            &Vec::new(),
            f64::from(status.in_flight),
        );
        header(
            &mut out,
            "mythos_connected_clients",
            "Clients connected to the socket.",
            "gauge",
        );
        sample(
            &mut out,
            "mythos_connected_clients",
            &Vec::new(),
            clients as f64,
        );
        header(
            &mut out,
            "mythos_client_writes_total",
            "Writes to client sockets (stream events are coalesced into as few as possible).",
            "counter",
        );
        for (front, name) in [(Front::Socket, "socket"), (Front::Http, "http")] {
            sample(
                &mut out,
                "mythos_client_writes_total",
                &vec![("front", name.to_string())],
                self.writes[front as usize].load(Ordering::Relaxed) as f64,
            );
        }
        out
    }
}

impl RecordSink for Metrics {
    fn record(&self, rec: RequestRecord) {
        Metrics::observe(self, &rec);
    }

    fn observe(&self, rec: &RequestRecord) {
        Metrics::observe(self, rec);
    }
}

/// A gauge without labels, for figures kept outside the metrics (the request memory).
pub fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    header(out, name, help, "gauge");
    sample(out, name, &Vec::new(), v);
}

fn header(out: &mut String, name: &str, help: &str, ty: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}");
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn sample(out: &mut String, name: &str, labels: &Labels, v: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, val)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(val));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {v}");
}

fn counter(out: &mut String, name: &str, help: &str, family: &Family<u64>) {
    header(out, name, help, "counter");
    for (labels, v) in family.sorted() {
        sample(out, name, labels, *v as f64);
    }
}

fn histogram(out: &mut String, name: &str, help: &str, family: &Family<Histogram>) {
    header(out, name, help, "histogram");
    for (labels, h) in family.sorted() {
        for (i, b) in BUCKETS.iter().enumerate() {
            let mut l = labels.clone();
            l.push(("le", b.to_string()));
            sample(out, &format!("{name}_bucket"), &l, h.counts[i] as f64);
        }
        let mut l = labels.clone();
        l.push(("le", "+Inf".into()));
        sample(out, &format!("{name}_bucket"), &l, h.count as f64);
        sample(out, &format!("{name}_sum"), labels, h.sum);
        sample(out, &format!("{name}_count"), labels, h.count as f64);
    }
}

/// Sends each record to several sinks (the state store and the metrics).
pub struct Tee(pub Vec<std::sync::Arc<dyn RecordSink>>);

impl RecordSink for Tee {
    fn record(&self, rec: RequestRecord) {
        if let Some((last, first)) = self.0.split_last() {
            for s in first {
                s.observe(&rec);
            }
            last.record(rec);
        }
    }
}

/// Check `text` against the exposition format's rules that scrapers enforce: every sample
/// belongs to a family declared by `# TYPE` before it, names and labels are well formed, values
/// parse, histogram buckets are cumulative. Returns the samples by full name with labels.
pub fn parse_exposition(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    for (no, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line}", no + 1);
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').ok_or_else(|| at("bad TYPE"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                return Err(at("unknown type"));
            }
            if types.insert(name.to_string(), ty.to_string()).is_some() {
                return Err(at("family declared twice"));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let value: f64 = value.parse().map_err(|_| at("value is not a number"))?;
        let name = series.split('{').next().unwrap_or("");
        if !valid_name(name) {
            return Err(at("bad metric name"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(at("sample before its # TYPE"));
        }
        if let Some(labels) = series.strip_prefix(name) {
            let braced = labels.starts_with('{') && labels.ends_with('}');
            if !labels.is_empty() && !braced {
                return Err(at("bad labels"));
            }
        }
        samples.insert(series.to_string(), value);
    }
    Ok(samples)
}

/// A client connection's I/O that counts its writes in [`Metrics`]: one relaxed atomic add per
/// write syscall, so `mythos_client_writes_total` shows how well events are coalesced.
pub struct CountedIo<S> {
    inner: S,
    metrics: std::sync::Arc<Metrics>,
    front: Front,
}

impl<S> CountedIo<S> {
    /// Wrap `inner`, counting its writes under `front`.
    pub fn new(inner: S, metrics: std::sync::Arc<Metrics>, front: Front) -> Self {
        CountedIo {
            inner,
            metrics,
            front,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountedIo<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CountedIo<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(_)) = r {
            self.metrics.count_write(self.front);
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let std::task::Poll::Ready(Ok(_)) = r {
            self.metrics.count_write(self.front);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mythos_protocol::{Attempt, ErrorKind, TaskKind, Usage};

    fn record() -> RequestRecord {
        let attempt = |p: &str, err: Option<ErrorKind>| Attempt {
            provider: p.into(),
            model: "m".into(),
            started_ms: 0,
            ttft_ms: Some(120),
            elapsed_ms: 300,
            error: err,
            detail: String::new(),
        };
        RequestRecord {
            id: 1,
            unix_ms: 0,
            task: TaskKind::Code,
            pinned: None,
            candidates: Vec::new(),
            attempts: vec![
                attempt("a", Some(ErrorKind::Overloaded)),
                attempt("b", Some(ErrorKind::Network)),
                attempt("b", None),
            ],
            provider: Some("b".into()),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 20,
                ..Usage::default()
            },
            cost_usd: 0.5,
            latency_ms: 700,
            error: None,
            queued_ms: 0,
        }
    }

    #[test]
    fn series_are_counted_once_each_and_listed_in_label_order() {
        let m = Metrics::default();
        for provider in ["b", "a", "b", "c", "a", "b"] {
            m.observe(&RequestRecord {
                provider: Some(provider.into()),
                attempts: Vec::new(),
                ..record()
            });
        }
        let mut f = Family::<u64>::default();
        *f.at(&[("provider", "b"), ("kind", "x")]) += 1;
        *f.at(&[("provider", "b")]) += 1;
        *f.at(&[("provider", "b"), ("kind", "x")]) += 1;
        assert_eq!(f.0.len(), 2, "one series per set of label values");
        let status = StatusReport {
            build: "x".into(),
            pid: 1,
            uptime_secs: 1,
            in_flight: 0,
            simulated: false,
            providers: Vec::new(),
            notes: Vec::new(),
            recent_failovers: Vec::new(),
            restart_command: None,
        };
        let text = m.render(&status, 0);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("mythos_requests_total{"))
            .collect();
        assert_eq!(
            lines,
            [
                r#"mythos_requests_total{provider="a",task="code",outcome="ok"} 2"#,
                r#"mythos_requests_total{provider="b",task="code",outcome="ok"} 3"#,
                r#"mythos_requests_total{provider="c",task="code",outcome="ok"} 1"#,
            ]
        );
    }

    #[test]
    fn a_failover_and_a_retry_are_counted_and_the_text_parses() {
        let m = Metrics::default();
        m.observe(&record());
        m.observe(&record());
        let status = StatusReport {
            build: "x".into(),
            pid: 1,
            uptime_secs: 1,
            in_flight: 3,
            simulated: false,
            providers: Vec::new(),
            notes: Vec::new(),
            recent_failovers: Vec::new(),
            restart_command: None,
        };
        let text = m.render(&status, 2);
        let s = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            s[r#"mythos_requests_total{provider="b",task="code",outcome="ok"}"#],
            2.0
        );
        assert_eq!(
            s[r#"mythos_failovers_total{provider="a",reason="overloaded"}"#],
            2.0
        );
        assert_eq!(
            s[r#"mythos_retries_total{provider="b",reason="network"}"#],
            2.0
        );
        assert_eq!(
            s[r#"mythos_tokens_total{provider="b",kind="output"}"#],
            40.0
        );
        assert_eq!(
            s[r#"mythos_time_to_first_token_seconds_bucket{provider="a",le="0.25"}"#],
            2.0
        );
        assert_eq!(
            s[r#"mythos_time_to_first_token_seconds_bucket{provider="a",le="0.1"}"#],
            0.0
        );
        assert_eq!(s["mythos_open_streams"], 3.0);
        assert_eq!(s["mythos_connected_clients"], 2.0);
        let recent = m.recent_failovers();
        assert_eq!(
            recent.len(),
            2,
            "one failover per record (the retry is not one)"
        );
        assert_eq!((recent[0].from.as_str(), recent[0].to.as_str()), ("a", "b"));
    }

    #[test]
    fn the_checker_refuses_what_scrapers_refuse() {
        assert!(parse_exposition("x 1\n").is_err(), "no TYPE");
        assert!(parse_exposition("# TYPE x counter\nx one\n").is_err());
        assert!(parse_exposition("# TYPE 1x counter\n1x 1\n").is_err());
        assert!(parse_exposition("# TYPE x counter\nx{a=\"b\"} 1\n").is_ok());
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
