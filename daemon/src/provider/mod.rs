//! Upstream providers: HTTP requests in each provider's real wire format, SSE decoding, and
//! classification of every failure.
//!
//! A [`Transport`] opens one streamed completion and yields provider-neutral [`Delta`]s. The HTTP
//! transport is the real one; the router only sees the trait, which is what lets its retry,
//! breaker and watchdog logic run under a paused clock with scripted streams.
//! The adapters never retry on their own: retrying is the router's job alone.

pub mod anthropic;
pub mod continuation;
pub mod decode;
pub mod delta;
pub mod error;
pub mod gemini;
#[cfg(test)]
mod golden_bodies;
pub mod openai;
pub mod ratelimit;
pub mod redact;
#[cfg(test)]
pub(crate) mod setup_bench;
#[cfg(test)]
mod soup;
pub mod sse;
pub mod toolnames;
#[cfg(test)]
mod transcripts;
mod whole;
mod wire;

/// The instructions that ask a model for JSON in words (the simulated providers read them).
pub use wire::{FORMAT_OBJECT, FORMAT_SCHEMA};

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::future::Either;
use futures_util::{Stream, StreamExt};
use mythos_protocol::{ChatRequest, ErrorKind};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};

use crate::config::{Api, ProviderConfig, Secret};
pub use delta::Delta;
pub use error::ProviderError;
pub use toolnames::ToolNames;

/// A stream of decoded deltas from one upstream response. Ends after the terminator; a failure
/// is the last item.
pub type DeltaStream = Pin<Box<dyn Stream<Item = Result<Delta, ProviderError>> + Send>>;

/// A future that opens a [`DeltaStream`].
pub type OpenFuture = Pin<Box<dyn Future<Output = Result<DeltaStream, ProviderError>> + Send>>;

/// What to ask one provider for.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamRequest<'a> {
    /// The client's request (conversation, system, tools, temperature).
    pub chat: &'a ChatRequest,
    /// Model to ask for.
    pub model: &'a str,
    /// Output token limit.
    pub max_tokens: u32,
    /// Text of an answer another provider started, to be continued rather than repeated.
    pub prefill: Option<&'a str>,
    /// Server tool blocks (a web search's call and its results) the client has among the
    /// prefill's text, in order, each where it came in the text. Only an Anthropic provider
    /// is given them: it continues such a turn as it continues one it paused (`pause_turn`),
    /// from the blocks sent back as they came.
    pub prefill_blocks: &'a [PrefillBlock],
    /// Ask for the response format in words, not with the API's own field: the provider
    /// refused it natively for this request (a schema feature it lacks, JSON mode beside tools).
    pub format_in_words: bool,
}

/// A server tool's block in the answer being continued (see
/// [`UpstreamRequest::prefill_blocks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefillBlock {
    /// Where it came in the prefill's text: the byte offset of the text after it.
    pub at: usize,
    /// The block, whole, as Anthropic streamed it.
    pub json: String,
}

/// An upstream request's body, and what is needed to read its answer. The endpoint and the
/// headers are the provider's, made once per transport (see [`HttpTransport`]).
#[derive(Debug)]
pub struct Built {
    /// The JSON body.
    pub body: Vec<u8>,
    /// Tool names changed to fit the API, to be changed back in the answer.
    pub tool_names: ToolNames,
}

/// Something that can open a streamed completion. Implemented by [`HttpTransport`] and by
/// scripted fakes in tests.
pub trait Transport: Send + Sync {
    /// Start the request. The returned future owns everything it needs.
    fn open(&self, req: &UpstreamRequest<'_>) -> OpenFuture;

    /// Whether `req`'s response format is asked with the API's own field (else in words), so
    /// that a `400` may be the provider refusing it.
    fn asks_format_natively(&self, req: &UpstreamRequest<'_>) -> bool {
        req.chat.options.response_format.is_some() && req.prefill.is_none() && !req.format_in_words
    }
}

/// The real transport: HTTPS to the provider's API.
///
/// What is the same on every request (the endpoint, parsed; the headers, with the key marked
/// sensitive) is made here once: each request then clones them, which costs a fraction of
/// formatting and parsing them again.
pub struct HttpTransport {
    cfg: ProviderConfig,
    client: reqwest::Client,
    /// The endpoint (for Gemini, the configured model's); `None` if it does not parse or holds
    /// credentials, when each request takes reqwest's builder as it always did.
    endpoint: Option<reqwest::Url>,
    /// Auth and version headers, content type and accept.
    headers: HeaderMap,
    /// Gemini's cleaned tool schemas.
    schemas: gemini::SchemaCache,
}

impl HttpTransport {
    /// A transport for `cfg`, sharing `client`'s connection pool.
    pub fn new(cfg: ProviderConfig, client: reqwest::Client) -> Self {
        let mut headers = match cfg.api {
            Api::Anthropic => anthropic::headers(&cfg),
            Api::Openai => openai::headers(&cfg),
            Api::Gemini => gemini::headers(&cfg),
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        let endpoint = reqwest::Url::parse(&endpoint(&cfg, &cfg.model))
            .ok()
            .filter(|url| url.username().is_empty() && url.password().is_none());
        HttpTransport {
            cfg,
            client,
            endpoint,
            headers,
            schemas: gemini::SchemaCache::default(),
        }
    }
}

/// The endpoint of `cfg`'s API for `model`.
fn endpoint(cfg: &ProviderConfig, model: &str) -> String {
    match cfg.api {
        Api::Anthropic => anthropic::endpoint(cfg),
        Api::Openai => openai::endpoint(cfg),
        Api::Gemini => gemini::url(&cfg.base_url, model),
    }
}

/// The HTTP client every provider shares. Fails only if TLS cannot be set up, which the daemon
/// reports at start-up rather than running on a client without its timeouts.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        // Under the watchdog's floor (5 s): a connect that hangs (Wi-Fi without internet, a
        // dead VPN) is a connect failure, which says "offline" when no provider can be
        // reached, not a silent provider blamed by the watchdog (found by a review).
        .connect_timeout(Duration::from_secs(4))
        .pool_idle_timeout(Duration::from_secs(90))
        // Enough warm connections for every session on one machine; a burst of 1,000 streams
        // would otherwise leave 1,000 idle connections and their buffers (~100 MiB) behind.
        .pool_max_idle_per_host(32)
        .tcp_nodelay(true)
        // Never followed: reqwest strips only `Authorization` when a redirect leaves the
        // origin, so a provider (or anything on the way) answering 307 to another host would
        // be handed `x-api-key` or `x-goog-api-key`. A redirect is an error that names where
        // to point `base_url` instead.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("mythosd/", env!("CARGO_PKG_VERSION")))
        .build()
}

impl HttpTransport {
    /// The request to send: the endpoint and headers made at start-up, and `body`.
    fn request(&self, model: &str, body: Vec<u8>) -> Result<reqwest::Request, reqwest::Error> {
        // Only Gemini has the model in the URL, and only a pinned other model misses it.
        let url = match &self.endpoint {
            Some(url) if self.cfg.api != Api::Gemini || model == self.cfg.model => url.clone(),
            // Another model's endpoint, or one that did not parse (reqwest's error then says
            // why, as it always did), or with credentials in it (reqwest's builder turns them
            // into basic auth): the builder's way.
            _ => {
                return self
                    .client
                    .post(endpoint(&self.cfg, model))
                    .headers(self.headers.clone())
                    .body(body)
                    .build()
            }
        };
        let mut request = reqwest::Request::new(reqwest::Method::POST, url);
        *request.headers_mut() = self.headers.clone();
        *request.body_mut() = Some(body.into());
        Ok(request)
    }
}

/// The endpoint and headers made once, as each request carries them.
#[cfg(test)]
mod request_tests {
    use super::*;
    use crate::config::Secret;

    fn transport(api: Api, base: &str, model: &str) -> HttpTransport {
        let cfg = ProviderConfig {
            api_key: Some(Secret::new("sk-secret")),
            ..ProviderConfig::new("p", api, base, model)
        };
        HttpTransport::new(cfg, http_client().unwrap())
    }

    /// A provider answering with a redirect to another host is not followed there: reqwest
    /// would strip only `Authorization`, and hand Anthropic's and Gemini's keys (`x-api-key`,
    /// `x-goog-api-key`) to whatever host the redirect names. The error says where it pointed.
    #[tokio::test]
    async fn a_redirect_is_not_followed_with_the_key() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let thief = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stolen = format!("http://{}/steal", thief.local_addr().unwrap());
        let reached = tokio::spawn(async move {
            let (mut c, _) = thief.accept().await.unwrap();
            let mut head = vec![0u8; 4096];
            let n = c.read(&mut head).await.unwrap_or(0);
            String::from_utf8_lossy(&head[..n]).into_owned()
        });
        let provider = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", provider.local_addr().unwrap());
        let to = stolen.clone();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = provider.accept().await.unwrap();
                let mut buf = vec![0u8; 65536];
                let _ = c.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nlocation: {to}\r\ncontent-length: 0\r\n\r\n"
                );
                let _ = c.write_all(reply.as_bytes()).await;
            }
        });
        for api in [Api::Anthropic, Api::Gemini, Api::Openai] {
            let base = if api == Api::Openai {
                format!("{base}/v1")
            } else {
                base.clone()
            };
            let e = open_error(&transport(api, &base, "m")).await;
            assert_eq!(e.status, Some(307), "{api:?}: {e:?}");
            // The configuration's fault: the next provider, not a retry of this one.
            assert_eq!(e.kind, ErrorKind::NotFound, "{api:?}: {e:?}");
            assert!(
                e.message.contains(&format!("redirect to {stolen}")),
                "{e:?}"
            );
            assert!(e.message.contains("base_url"), "{e:?}");
            assert!(!e.message.contains("sk-secret"), "{e:?}");
        }
        let waited = tokio::time::timeout(Duration::from_millis(300), reached).await;
        assert!(waited.is_err(), "the other host was reached: {waited:?}");
    }

    /// A provider on loopback that answers its connections, one each, with `replies` as
    /// they are (raw HTTP); its base URL.
    async fn raw_provider(replies: Vec<Vec<u8>>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let provider = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", provider.local_addr().unwrap());
        tokio::spawn(async move {
            for reply in replies {
                let (mut c, _) = provider.accept().await.unwrap();
                let mut buf = vec![0u8; 65536];
                let _ = c.read(&mut buf).await;
                let _ = c.write_all(&reply).await;
            }
        });
        base
    }

    /// The request of these tests: a one-word question to model `m`.
    fn hi(chat: &ChatRequest) -> UpstreamRequest<'_> {
        UpstreamRequest {
            chat,
            model: "m",
            max_tokens: 10,
            prefill: None,
            prefill_blocks: &[],
            format_in_words: false,
        }
    }

    /// What opening a request on `t` fails with.
    async fn open_error(t: &HttpTransport) -> ProviderError {
        let chat = ChatRequest::user_text(1, "hi");
        match t.open(&hi(&chat)).await {
            Err(e) => e,
            Ok(_) => panic!("taken for an answer"),
        }
    }

    /// A `200` that is no event stream (a captive portal's page, a JSON error or a whole
    /// answer, a compressed body) is said as what it is, and its JSON error's kind counts: it
    /// used to read as a stream that "ended without [DONE]", or "not UTF-8" (found by a chaos
    /// run).
    #[tokio::test]
    async fn a_success_that_is_no_stream_says_what_it_is() {
        let ok = |head: &str, body: &[u8]| {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\n{head}\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(body);
            r
        };
        let base = raw_provider(vec![
            ok(
                "content-type: text/html; charset=utf-8",
                b"<html><head><title>Sign in</title></head></html>",
            ),
            ok(
                "content-type: application/json",
                br#"{"error":{"type":"rate_limit_error","message":"slow down"}}"#,
            ),
            ok(
                "content-type: text/event-stream\r\ncontent-encoding: gzip",
                &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3],
            ),
        ])
        .await;
        let t = transport(Api::Openai, &base, "m");
        let e = open_error(&t).await;
        assert_eq!(e.kind, ErrorKind::Malformed, "{e:?}");
        assert!(e.message.contains("Sign in"), "{e:?}");
        assert!(
            e.message.contains("text/html where an event stream"),
            "{e:?}"
        );
        let e = open_error(&t).await;
        assert_eq!(e.kind, ErrorKind::RateLimited, "{e:?}");
        assert!(e.message.contains("slow down"), "{e:?}");
        let e = open_error(&t).await;
        assert_eq!(e.kind, ErrorKind::Malformed, "{e:?}");
        assert!(e.message.contains("a gzip-encoded body where"), "{e:?}");
    }

    /// A server that ignores `stream: true` and answers the whole `chat.completion` gives
    /// that answer, not a failure; one that labels its event stream JSON is read as the
    /// stream it is (found by a helper's chaos run: the answer in hand was failed over, and
    /// the provider cooled down).
    #[tokio::test]
    async fn a_whole_answer_or_a_mislabeled_stream_is_read_as_the_answer() {
        let ok = |body: &str| {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        let whole = r#"{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,
            "message":{"role":"assistant","content":"all of it"},"finish_reason":"stop"}]}"#;
        let base = raw_provider(vec![ok(whole), ok(TWO_EVENTS)]).await;
        let t = transport(Api::Openai, &base, "m");
        for want in ["all of it", "ab"] {
            let text = answer_text(&t).await;
            assert_eq!(text.as_deref(), Ok(want));
        }
    }

    const TWO_EVENTS: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n\
                              data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"},\"finish_reason\":\"stop\"}]}\n\n\
                              data: [DONE]\n\n";

    /// The text of the answer opened on `t`, or its error.
    async fn answer_text(t: &HttpTransport) -> Result<String, ProviderError> {
        let chat = ChatRequest::user_text(1, "hi");
        let mut s = t.open(&hi(&chat)).await?;
        let mut text = String::new();
        let mut finished = false;
        while let Some(d) = s.next().await {
            match d? {
                Delta::Text(t) => text.push_str(&t),
                Delta::Finish(_) => finished = true,
                _ => {}
            }
        }
        assert!(finished, "{text}");
        Ok(text)
    }

    /// A provider that cannot be reached is told from one that reads the request and drops
    /// the connection: only the first can mean this machine is offline (every provider of a
    /// helper's run resetting after the request was "this machine looks offline", no provider
    /// blamed, no retry).
    #[tokio::test]
    async fn a_connection_never_made_is_told_from_one_dropped_after_the_request() {
        use tokio::io::AsyncReadExt;
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refused = format!("http://{}/v1", closed.local_addr().unwrap());
        drop(closed);
        let e = open_error(&transport(Api::Openai, &refused, "m")).await;
        assert_eq!((e.kind, e.unreached), (ErrorKind::Network, true), "{e:?}");
        assert!(e.message.contains("cannot connect"), "{e:?}");

        let dropper = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", dropper.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (mut c, _) = dropper.accept().await.unwrap();
                let mut buf = vec![0u8; 65536];
                let _ = c.read(&mut buf).await;
                drop(c);
            }
        });
        let e = open_error(&transport(Api::Openai, &base, "m")).await;
        assert_eq!((e.kind, e.unreached), (ErrorKind::Network, false), "{e:?}");
    }

    /// A `429` without `Retry-After` whose headers say the requests quota is spent for 15 s
    /// asks for those 15 s (the router's default pause is 2 s, and requests went back into
    /// the spent quota until its reset: found by a chaos run).
    #[tokio::test]
    async fn a_429_without_retry_after_asks_for_its_spent_quotas_reset() {
        let body = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
        let reply = format!(
            "HTTP/1.1 429 Too Many Requests\r\nx-ratelimit-limit-requests: 3\r\n\
             x-ratelimit-remaining-requests: 0\r\nx-ratelimit-reset-requests: 15.8s\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let base = raw_provider(vec![reply.into_bytes()]).await;
        let e = open_error(&transport(Api::Openai, &base, "m")).await;
        assert_eq!(e.kind, ErrorKind::RateLimited, "{e:?}");
        assert_eq!(e.retry_after, Some(Duration::from_millis(15_800)), "{e:?}");
    }

    #[test]
    fn each_request_gets_the_endpoint_and_headers() {
        let t = transport(Api::Anthropic, "http://127.0.0.1:1/", "claude-x");
        let r = t.request("claude-x", b"{}".to_vec()).unwrap();
        assert_eq!(r.method(), reqwest::Method::POST);
        assert_eq!(r.url().as_str(), "http://127.0.0.1:1/v1/messages");
        let h = r.headers();
        assert_eq!(h["x-api-key"], "sk-secret");
        assert!(h["x-api-key"].is_sensitive());
        assert_eq!(h["anthropic-version"], anthropic::ANTHROPIC_VERSION);
        assert_eq!(h[CONTENT_TYPE], "application/json");
        assert_eq!(h[ACCEPT], "text/event-stream");
        assert_eq!(r.body().and_then(|b| b.as_bytes()), Some(&b"{}"[..]));

        let t = transport(Api::Openai, "http://127.0.0.1:1/v1", "gpt-4o");
        let r = t.request("gpt-4o", Vec::new()).unwrap();
        assert_eq!(r.url().as_str(), "http://127.0.0.1:1/v1/chat/completions");
        assert!(r.headers()["authorization"].is_sensitive());

        // Gemini's URL names the model: a pinned other model gets its own.
        let t = transport(Api::Gemini, "http://127.0.0.1:1", "gemini-2.5-flash");
        let r = t.request("gemini-2.5-flash", Vec::new()).unwrap();
        assert!(r
            .url()
            .path()
            .ends_with("/gemini-2.5-flash:streamGenerateContent"));
        let r = t.request("models/gemini-2.5-pro", Vec::new()).unwrap();
        assert!(r
            .url()
            .path()
            .ends_with("/gemini-2.5-pro:streamGenerateContent"));
        assert_eq!(r.url().query(), Some("alt=sse"));
        assert!(r.headers()["x-goog-api-key"].is_sensitive());
    }

    #[test]
    fn unusual_endpoints_take_the_builders_way() {
        // Credentials in the URL become basic auth, as reqwest's builder makes them.
        let t = transport(Api::Anthropic, "http://user:pw@127.0.0.1:1", "m");
        let r = t.request("m", Vec::new()).unwrap();
        assert_eq!(r.url().as_str(), "http://127.0.0.1:1/v1/messages");
        assert!(r.headers()["authorization"]
            .to_str()
            .is_ok_and(|v| v.starts_with("Basic ")));
        // A URL that does not parse fails the request with reqwest's error.
        let t = transport(Api::Openai, "not a url", "m");
        assert!(t.request("m", Vec::new()).is_err());
    }
}

impl Transport for HttpTransport {
    fn asks_format_natively(&self, req: &UpstreamRequest<'_>) -> bool {
        match self.cfg.api {
            Api::Anthropic => anthropic::asks_format_natively(req),
            Api::Openai => openai::asks_format_natively(&self.cfg, req),
            Api::Gemini => gemini::asks_format_natively(req),
        }
    }

    fn open(&self, req: &UpstreamRequest<'_>) -> OpenFuture {
        let name = self.cfg.name.clone();
        let key = self.cfg.api_key.clone();
        let built = match self.cfg.api {
            Api::Anthropic => anthropic::build(&self.cfg, req),
            Api::Openai => openai::build(&self.cfg, req),
            Api::Gemini => gemini::build_cached(req, &self.schemas),
        };
        let Built { body, tool_names } = match built {
            Ok(b) => b,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let send = match self.request(req.model, body) {
            Ok(mut request) => {
                let betas = &req.chat.options.anthropic_beta;
                if self.cfg.api == Api::Anthropic && !betas.is_empty() {
                    // The client's beta features go to Anthropic as it asked for them; the
                    // names were checked to be plain tokens when they came in.
                    if let Ok(v) = HeaderValue::from_str(&betas.join(",")) {
                        request.headers_mut().insert("anthropic-beta", v);
                    }
                }
                Either::Left(self.client.execute(request))
            }
            Err(e) => Either::Right(std::future::ready(Err(e))),
        };
        let api = self.cfg.api;
        Box::pin(async move {
            let opened = async {
                let resp = send.await.map_err(|e| transport_error(&name, e, false))?;
                let status = resp.status();
                let limits =
                    ratelimit::from_headers(resp.headers(), mythos_protocol::clock::now_unix_ms());
                if !status.is_success() {
                    return Err(error_from_response(&name, api, key.as_ref(), resp, limits).await);
                }
                let Some(ty) = not_a_stream(resp.headers()) else {
                    // The quotas come first, so the router counts this response before any
                    // content.
                    let first = Delta::RateLimits(Box::new(limits));
                    return Ok(decoded(api, name, resp.bytes_stream(), first));
                };
                let mut resp = resp;
                let mut body = Vec::new();
                if ty == "application/json" {
                    // Read as a stream after all when it is one (a proxy that labels every
                    // body JSON), as a stream's events when it is a whole answer.
                    // Blank lines may come first: looked past, a few at most.
                    let mut first = bytes::BytesMut::new();
                    for _ in 0..8 {
                        match resp.chunk().await {
                            Ok(Some(more)) => first.extend_from_slice(&more),
                            Ok(None) => break,
                            Err(e) => return Err(transport_error(&name, e, true)),
                        }
                        if !first.trim_ascii_start().is_empty() {
                            break;
                        }
                    }
                    let first = first.freeze();
                    if looks_like_events(&first) {
                        let first_bytes = futures_util::stream::iter([Ok(first)]);
                        let first = Delta::RateLimits(Box::new(limits));
                        return Ok(decoded(
                            api,
                            name,
                            first_bytes.chain(resp.bytes_stream()),
                            first,
                        ));
                    }
                    body.extend_from_slice(&first);
                    let read = read_capped(
                        &mut resp,
                        &mut body,
                        whole::WHOLE_ANSWER_CAP,
                        WHOLE_ANSWER_TIME,
                    )
                    .await;
                    if let Some(why) = read.incomplete() {
                        return Err(ProviderError::new(
                            ErrorKind::Malformed,
                            format!(
                                "{name} answered a whole JSON document where an event stream \
                                 was asked for, and it was {why}"
                            ),
                        ));
                    }
                    if let Some(events) = whole::as_stream(api, &body) {
                        tracing::info!(
                            provider = %name,
                            "answered whole where a stream was asked for: read as one"
                        );
                        let events = futures_util::stream::iter([Ok(bytes::Bytes::from(events))]);
                        let first = Delta::RateLimits(Box::new(limits));
                        return Ok(decoded(api, name, events, first));
                    }
                }
                // A login page, a proxy's notice or an error in JSON: said as what it is, not
                // as a stream that "ended without [DONE]".
                let mut e =
                    error_from_partly_read(&name, api, key.as_ref(), resp, body, limits).await;
                if e.kind == ErrorKind::ServerError {
                    e.kind = ErrorKind::Malformed;
                }
                e.message.push_str(&format!(
                    " ({ty} where an event stream was asked for: is base_url the API's?)"
                ));
                Err(e)
            };
            // Everything the provider can put into our words leaves here scrubbed of keys.
            let stream = opened.await.map_err(|e| scrub(e, key.as_ref()))?;
            Ok(Box::pin(stream.map(move |item| match item {
                Ok(Delta::Model(m)) => Ok(Delta::Model(redact::provider_text(&m, key.as_ref()))),
                // The client sees the tool names it defined, not the ones the API needed.
                Ok(Delta::ToolCallStart { index, id, name }) => {
                    // A server that echoes the key back would otherwise put it into the
                    // client's tool call verbatim.
                    let id = redact::exact_key(id, key.as_ref());
                    let name = redact::exact_key(name, key.as_ref());
                    let name = if tool_names.is_empty() {
                        name
                    } else {
                        tool_names.client(name)
                    };
                    Ok(Delta::ToolCallStart { index, id, name })
                }
                Err(e) => Err(scrub(e, key.as_ref())),
                other => other,
            })) as DeltaStream)
        })
    }
}

/// An error whose text came from a provider, with keys removed and its length bounded.
fn scrub(mut e: ProviderError, key: Option<&Secret>) -> ProviderError {
    e.message = redact::provider_text(&e.message, key);
    e
}

/// Attach a header that holds a secret, marked sensitive so hyper never logs it.
pub(crate) fn secret_header(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(mut v) = HeaderValue::from_str(&value) {
        v.set_sensitive(true);
        headers.insert(name, v);
    }
}

/// Authorization value for an optional key.
pub(crate) fn key_or_empty(key: Option<&Secret>) -> &str {
    key.map(Secret::expose).unwrap_or("")
}

/// The deltas of one response body, decoded as its bytes arrive.
///
/// Written by hand rather than with `stream::unfold`, which moves its whole state (the response
/// included) into a fresh future for every item. Here the state stays in place, and every event
/// of one read is decoded at once and handed out from the queue without polling the body again.
struct BodyStream<D: decode::WireDecoder, B> {
    name: String,
    /// The body's bytes; `None` once it has ended, failed or sent the terminator.
    body: Option<B>,
    decoder: decode::StreamDecoder<D>,
    queue: VecDeque<Delta>,
    scratch: Vec<Delta>,
    /// The error that ends the stream, yielded once the deltas decoded before it are out.
    failure: Option<ProviderError>,
}

// Nothing in the stream is pinned in place: the body is polled through `Unpin` alone, and the
// decoder is plain data.
impl<D: decode::WireDecoder, B: Unpin> Unpin for BodyStream<D, B> {}

/// The deltas of `body` read as `api`'s event stream, after `first`.
fn decoded<B>(api: Api, name: String, body: B, first: Delta) -> DeltaStream
where
    B: Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin + Send + 'static,
{
    use decode::StreamDecoder;
    match api {
        Api::Anthropic => Box::pin(BodyStream::new(
            name,
            body,
            StreamDecoder::new(anthropic::stream::AnthropicDecoder::default()),
            first,
        )),
        Api::Openai => Box::pin(BodyStream::new(
            name,
            body,
            StreamDecoder::new(openai::stream::OpenAiDecoder::default()),
            first,
        )),
        // The seed keeps made-up call ids apart across responses.
        Api::Gemini => Box::pin(BodyStream::new(
            name,
            body,
            StreamDecoder::new(gemini::stream::GeminiDecoder::new(fastrand::u64(..))),
            first,
        )),
    }
}

/// How long a whole answer's body may take to arrive once its headers have.
const WHOLE_ANSWER_TIME: Duration = Duration::from_secs(30);

/// Whether a body's first bytes are an event stream's (a line of `data:`, `event:`, `id:`, or
/// a `:` comment), whatever its content type says.
fn looks_like_events(first: &[u8]) -> bool {
    let start = first.trim_ascii_start();
    [&b"data:"[..], b"event:", b"id:", b":"]
        .iter()
        .any(|p| start.starts_with(p))
}

/// How [`read_capped`] ended.
enum BodyRead {
    /// The body's end.
    Whole,
    /// At the cap, with more to come.
    Capped(usize),
    /// Out of time.
    Slow(Duration),
    /// The connection broke.
    Broken,
}

impl BodyRead {
    /// Why the body is not whole, in words; `None` when it is.
    fn incomplete(&self) -> Option<String> {
        match self {
            BodyRead::Whole => None,
            BodyRead::Capped(cap) => Some(format!("larger than {} MiB", cap >> 20)),
            BodyRead::Slow(t) => Some(format!("not whole after {} s", t.as_secs())),
            BodyRead::Broken => Some("cut before its end".into()),
        }
    }
}

/// Read more of `resp` into `body`, up to `cap` bytes and for `time` at most.
async fn read_capped(
    resp: &mut reqwest::Response,
    body: &mut Vec<u8>,
    cap: usize,
    time: Duration,
) -> BodyRead {
    let read = async {
        while body.len() < cap {
            match resp.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => return BodyRead::Whole,
                Err(_) => return BodyRead::Broken,
            }
        }
        BodyRead::Capped(cap)
    };
    // A provider that sends its status and then stalls must not hold us up.
    tokio::time::timeout(time, read)
        .await
        .unwrap_or(BodyRead::Slow(time))
}

impl<D, B> BodyStream<D, B>
where
    D: decode::WireDecoder,
    B: Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
{
    fn new(name: String, body: B, decoder: decode::StreamDecoder<D>, first: Delta) -> Self {
        BodyStream {
            name,
            body: Some(body),
            decoder,
            queue: VecDeque::from([first]),
            scratch: Vec::new(),
            failure: None,
        }
    }
}

/// How long a finished answer's body may take to reach its end (see [`release`]).
const RELEASE_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// How many bytes a finished answer's body may still bring (see [`release`]).
const RELEASE_BYTES: usize = 64 << 10;

/// Read the rest of a body whose answer is complete, so that its connection goes back to the
/// pool. An HTTP/1 connection is reusable only once its body has been read to the end (the
/// chunked terminator that follows `[DONE]` or `message_stop`); a body dropped before that
/// makes hyper close the connection, and the next request to the provider pays for a new one
/// (a TCP and TLS handshake). What has arrived is read at once; the rest,
/// usually a moment away, by a task of its own, within [`RELEASE_TIME`] and
/// [`RELEASE_BYTES`] (a server that goes on sending after the end loses its connection).
fn release<B>(mut body: B)
where
    B: Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin + Send + 'static,
{
    let mut drain = Box::pin(async move {
        let mut left = RELEASE_BYTES;
        // The end (reusable), a failure or too much (not): either way, done with it.
        while let Some(Ok(more)) = body.next().await {
            if more.len() > left {
                return;
            }
            left -= more.len();
        }
    });
    if futures_util::FutureExt::now_or_never(drain.as_mut()).is_some() {
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(tokio::time::timeout(RELEASE_TIME, drain));
    }
}

impl<D, B> Stream for BodyStream<D, B>
where
    D: decode::WireDecoder,
    B: Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin + Send + 'static,
{
    type Item = Result<Delta, ProviderError>;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let st = self.get_mut();
        loop {
            if let Some(d) = st.queue.pop_front() {
                return Poll::Ready(Some(Ok(d)));
            }
            if let Some(e) = st.failure.take() {
                return Poll::Ready(Some(Err(e)));
            }
            let Some(body) = st.body.as_mut() else {
                return Poll::Ready(None);
            };
            let result = match std::task::ready!(body.poll_next_unpin(cx)) {
                Some(Ok(bytes)) => {
                    let r = st.decoder.push(&bytes, &mut st.scratch);
                    if st.decoder.is_done() {
                        // The answer is whole: the stream ends now, and the body is read to
                        // its end apart from it, so the connection can be used again.
                        if let Some(body) = st.body.take() {
                            release(body);
                        }
                    }
                    r
                }
                None => {
                    st.body = None;
                    st.decoder.finish(&mut st.scratch)
                }
                Some(Err(e)) => {
                    st.body = None;
                    Err(transport_error(&st.name, e, true))
                }
            };
            // The usual chunk: one delta, nothing queued before it.
            // (The queue is empty here: the loop takes from it first.)
            if result.is_ok() && st.scratch.len() == 1 {
                if let Some(d) = st.scratch.pop() {
                    return Poll::Ready(Some(Ok(d)));
                }
            }
            st.queue.extend(st.scratch.drain(..));
            if let Err(e) = result {
                st.body = None;
                st.failure = Some(e);
            }
        }
    }
}

#[cfg(test)]
mod body_tests {
    use futures_util::FutureExt;

    use super::*;

    /// A response whose body yields `reads` and then never another byte.
    fn response(reads: Vec<Result<&'static str, std::io::Error>>) -> reqwest::Response {
        let body = futures_util::stream::iter(reads).chain(futures_util::stream::pending());
        reqwest::Response::from(axum::http::Response::new(reqwest::Body::wrap_stream(body)))
    }

    fn openai(reads: Vec<Result<&'static str, std::io::Error>>) -> DeltaStream {
        decoded(
            Api::Openai,
            "p".into(),
            response(reads).bytes_stream(),
            Delta::KeepAlive,
        )
    }

    /// Everything the stream has ready, without waiting: `None` inside means it ended.
    fn ready(s: &mut DeltaStream) -> Vec<Option<Result<Delta, ProviderError>>> {
        let mut items = Vec::new();
        while let Some(item) = s.next().now_or_never() {
            let end = item.is_none();
            items.push(item);
            if end {
                break;
            }
        }
        items
    }

    const TWO: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n\
                       data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}]}\n\n";

    #[tokio::test]
    async fn one_read_yields_all_its_events_and_the_terminator_ends_the_stream() {
        let mut s = openai(vec![Ok(TWO), Ok(": ping\n\ndata: [DONE]\n\n")]);
        let items = ready(&mut s);
        let deltas: Vec<_> = items
            .iter()
            .flatten()
            .map(|r| r.as_ref().unwrap())
            .collect();
        assert_eq!(
            deltas,
            [
                &Delta::KeepAlive,
                &Delta::Text("a".into()),
                &Delta::Text("b".into()),
                &Delta::KeepAlive,
            ]
        );
        // The body never ends, yet the stream does: the terminator is the end.
        assert!(items.last().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_read_without_a_terminator_leaves_the_stream_waiting() {
        let mut s = openai(vec![Ok(TWO)]);
        let items = ready(&mut s);
        assert_eq!(items.len(), 3, "the first delta and both events");
        assert!(items.iter().all(|i| matches!(i, Some(Ok(_)))));
        assert!(s.next().now_or_never().is_none(), "waits for the body");
    }

    #[tokio::test]
    async fn deltas_before_a_failure_come_first_and_the_failure_ends_the_stream() {
        let broken = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let mut s = openai(vec![Ok(TWO), Err(broken)]);
        let items = ready(&mut s);
        assert_eq!(items.len(), 5, "{items:?}");
        assert!(items[..3].iter().all(|i| matches!(i, Some(Ok(_)))));
        let e = items[3].as_ref().unwrap().as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Network);
        assert!(e.message.contains("connection lost mid-stream"), "{e}");
        assert!(items[4].is_none());

        // A decoding failure too, after the deltas of the same read.
        let mut s = openai(vec![Ok(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\n\n",
        )]);
        let items = ready(&mut s);
        assert_eq!(items.len(), 4, "{items:?}");
        let e = items[2].as_ref().unwrap().as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Malformed);
        assert!(items[3].is_none());
    }
}

/// Classify a reqwest failure. `mid_stream` tells a broken body from a failed connect.
fn transport_error(name: &str, e: reqwest::Error, mid_stream: bool) -> ProviderError {
    if let Some(local) = local_exhaustion(&e) {
        // Out of file descriptors or memory here: no provider is to blame.
        return ProviderError::new(
            ErrorKind::Internal,
            format!("{name}: cannot open a connection: this machine is out of resources ({local})"),
        );
    }
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Network
    };
    let what = if mid_stream {
        "connection lost mid-stream"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // The innermost cause says what happened ("unexpected EOF during chunk size line",
    // "Connection refused"); the layers above it only repeat "error sending request". The URL
    // is left out: it is configuration, and could carry credentials in its userinfo.
    let e = e.without_url();
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    let message = format!("{name}: {what} ({detail})");
    // A certificate refused is a TLS server that answered (a proxy inspecting TLS, a wrong
    // host): not an unreachable one.
    let certificate = detail.to_ascii_lowercase().contains("certificate");
    if e.is_connect() && !mid_stream && !certificate {
        ProviderError::unreached(kind, message)
    } else {
        ProviderError::new(kind, message)
    }
}

/// A local resource shortage somewhere in `e`'s causes (too many open files, no memory for
/// buffers), in words.
fn local_exhaustion(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if let Some(code) = io.raw_os_error() {
                if is_local_exhaustion(code) {
                    return Some(io.to_string());
                }
            }
        }
        source = s.source();
    }
    None
}

/// The content type of a successful response that cannot be an event stream (an HTML page,
/// a JSON document), if it is one. Others, and none at all, are read as a stream: servers are
/// loose about it.
fn not_a_stream(headers: &HeaderMap) -> Option<String> {
    // Nothing is asked to be compressed; a body that is anyway cannot be read as text (it was
    // "an SSE line is not UTF-8").
    if let Some(enc) = headers.get(reqwest::header::CONTENT_ENCODING) {
        let enc = String::from_utf8_lossy(enc.as_bytes())
            .trim()
            .to_ascii_lowercase();
        if !enc.is_empty() && enc != "identity" {
            return Some(format!("a {enc}-encoded body"));
        }
    }
    let ty = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let essence = ty
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(essence.as_str(), "text/html" | "application/json").then_some(essence)
}

/// errno values that mean this machine ran out of something, not that a peer misbehaved.
fn is_local_exhaustion(code: i32) -> bool {
    #[cfg(unix)]
    {
        [libc::EMFILE, libc::ENFILE, libc::ENOMEM, libc::ENOBUFS].contains(&code)
    }
    #[cfg(not(unix))]
    {
        // WSAEMFILE, WSAENOBUFS
        [10024, 10055].contains(&code)
    }
}

/// Cap on an error body we read: error JSON is small; a proxy's HTML page need not be read whole.
const ERROR_BODY_CAP: usize = 64 * 1024;

async fn error_from_response(
    name: &str,
    api: Api,
    key: Option<&Secret>,
    resp: reqwest::Response,
    limits: ratelimit::RateLimits,
) -> ProviderError {
    error_from_partly_read(name, api, key, resp, Vec::new(), limits).await
}

/// [`error_from_response`] for a response whose first bytes, `body`, were read already.
async fn error_from_partly_read(
    name: &str,
    api: Api,
    key: Option<&Secret>,
    resp: reqwest::Response,
    mut body: Vec<u8>,
    limits: ratelimit::RateLimits,
) -> ProviderError {
    let status = resp.status().as_u16();
    let moved_to = resp
        .status()
        .is_redirection()
        .then(|| resp.headers().get(reqwest::header::LOCATION))
        .flatten()
        .map(|l| {
            String::from_utf8_lossy(l.as_bytes())
                .chars()
                .take(200)
                .collect::<String>()
        });
    let mut resp = resp;
    // An error is said from what came, whole or not.
    let _ = read_capped(&mut resp, &mut body, ERROR_BODY_CAP, Duration::from_secs(5)).await;
    let google = (api == Api::Gemini)
        .then(|| gemini::GoogleError::parse(&body))
        .flatten();
    let (ty, msg, kind, retry_after) = match google {
        // Google's errors name a canonical status and put the wait in the body, not a header.
        Some(g) => (
            g.status.clone(),
            g.message.clone(),
            g.kind(Some(status)),
            limits.retry_after.or_else(|| g.retry_delay()),
        ),
        None => {
            let (ty, msg) = parse_error_body(&body);
            let kind = error::classify(status, ty.as_deref(), msg.as_deref());
            let told = match kind {
                ErrorKind::RateLimited => limits.wait_after_429(),
                _ => limits.retry_after,
            };
            (ty, msg, kind, told)
        }
    };
    let mut message = format!("{name} answered HTTP {status}");
    if let Some(t) = ty {
        message.push_str(&format!(" {t}"));
    }
    if let Some(m) = msg {
        message.push_str(&format!(": {m}"));
    }
    if (300..400).contains(&status) {
        message.push_str(&format!(
            " (a redirect{}: mythosd does not follow redirects, which would hand the API key to \
             another host; set this provider's base_url to where the API is now)",
            moved_to.map(|l| format!(" to {l}")).unwrap_or_default()
        ));
    }
    // Redacted before it is cut: a key that straddles the cut would otherwise leak its start.
    let message = redact::provider_text(&message, key);
    ProviderError {
        kind,
        status: Some(status),
        retry_after,
        message,
        limits: Some(Box::new(limits)),
        unreached: false,
    }
}

/// Pull `(type, message)` out of an Anthropic or OpenAI error body.
fn parse_error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Outer {
        error: Option<Inner>,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        #[serde(rename = "type")]
        ty: Option<String>,
        code: Option<serde_json::Value>,
        message: Option<String>,
    }
    match serde_json::from_slice::<Outer>(body) {
        Ok(Outer { error: Some(i) }) => {
            let ty =
                i.ty.or_else(|| i.code.and_then(|c| c.as_str().map(str::to_string)));
            (ty, i.message)
        }
        _ => {
            let text = String::from_utf8_lossy(body).trim().to_string();
            (
                None,
                (!text.is_empty()).then(|| html_title(&text).unwrap_or(text)),
            )
        }
    }
}

/// The title of an HTML error page (a proxy's `502 Bad Gateway`), in place of its markup.
fn html_title(text: &str) -> Option<String> {
    if !text.starts_with('<') {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let start = lower.find("<title>")? + "<title>".len();
    let end = start + lower[start..].find("</title>")?;
    let title = text[start..end].trim();
    Some(if title.is_empty() {
        "an HTML error page".to_string()
    } else {
        format!("an HTML error page: {title}")
    })
}

pub use redact::redact;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_is_local() {
        #[cfg(unix)]
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            let e = std::io::Error::from_raw_os_error(code);
            assert!(local_exhaustion(&e).is_some(), "{e}");
        }
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(local_exhaustion(&refused).is_none());
    }

    #[test]
    fn an_html_error_page_is_named_by_its_title() {
        let (_, m) = parse_error_body(
            b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>",
        );
        assert_eq!(m.as_deref(), Some("an HTML error page: 502 Bad Gateway"));
    }

    #[test]
    fn error_bodies() {
        let (t, m) = parse_error_body(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(t.as_deref(), Some("overloaded_error"));
        assert_eq!(m.as_deref(), Some("Overloaded"));
        let (t, _) = parse_error_body(
            br#"{"error":{"message":"Rate limit","type":null,"code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(t.as_deref(), Some("rate_limit_exceeded"));
        let (t, m) = parse_error_body(b"<html>bad gateway</html>");
        assert_eq!(t, None);
        assert_eq!(m.as_deref(), Some("<html>bad gateway</html>"));
    }
}
