//! Errors as each API spells them, and the headers that stop an SDK from retrying what the
//! daemon has already retried.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mythos_protocol::ErrorKind;
use serde_json::json;

/// Which API's error shape to answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `{"type":"error","error":{"type","message"}}`.
    Anthropic,
    /// `{"error":{"message","type","param","code"}}` (Chat Completions and Responses).
    Openai,
}

/// An error answer before any stream started.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong.
    pub kind: ErrorKind,
    /// One line for the user.
    pub message: String,
    /// When capacity is expected back, as Unix milliseconds.
    pub retry_at_unix_ms: Option<u64>,
    /// Whether the daemon already retried (and failed over) for this request: then the SDK
    /// must not retry it again on its own.
    pub retried: bool,
    /// The request's record (`mythos why`), when an attempt of it had started.
    pub record: Option<u64>,
}

impl ApiError {
    /// A problem with the request itself (400).
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: ErrorKind::BadRequest,
            message: message.into(),
            retry_at_unix_ms: None,
            retried: false,
            record: None,
        }
    }

    /// The token is missing or wrong (401).
    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: ErrorKind::Auth,
            message: "mythosd needs its local token: send it as `x-api-key` or \
                      `Authorization: Bearer` (`mythos token` prints it; `mythos env claude` or `mythos env openai` \
                      sets an agent up)"
                .into(),
            retry_at_unix_ms: None,
            retried: false,
            record: None,
        }
    }

    /// A routing failure: the daemon tried what it could.
    pub fn from_route(kind: ErrorKind, message: String, retry_at_unix_ms: Option<u64>) -> Self {
        // Every provider cooling down is a refusal, not the end of the daemon's retries: the
        // SDK's own retry (after `retry-after`, when known) keeps an agent's session through an
        // outage of every provider, where `x-should-retry: false` ended it (found by a
        // helper's run).
        let retried = !matches!(
            kind,
            ErrorKind::ShuttingDown
                | ErrorKind::Internal
                | ErrorKind::Cancelled
                | ErrorKind::AllCoolingDown
        );
        ApiError {
            status: status_of(kind),
            kind,
            message,
            retry_at_unix_ms,
            retried,
            record: None,
        }
    }

    /// The body in `dialect`.
    pub fn body(&self, dialect: Dialect) -> serde_json::Value {
        error_body(dialect, self.kind, self.status, &self.message)
    }

    /// Status, body and headers in `dialect`.
    pub fn into_response(self, dialect: Dialect) -> Response {
        let body = self.body(dialect);
        let mut headers = HeaderMap::new();
        retry_headers(&mut headers, self.retried, self.retry_at_unix_ms);
        // As on an answer: the failure is looked into with `mythos why` (and the SDKs show
        // `request-id` in their error).
        if let Some(record) = self.record {
            headers.insert("x-mythos-request", HeaderValue::from(record));
            if let Ok(id) = HeaderValue::from_str(&format!("req_mythos_{record}")) {
                headers.insert("request-id", id.clone());
                headers.insert("x-request-id", id);
            }
        }
        (status_in(dialect, self.status), headers, axum::Json(body)).into_response()
    }
}

/// `x-should-retry: false` when the daemon already retried; `retry-after` (seconds, rounded up)
/// when it knows when capacity returns.
pub fn retry_headers(headers: &mut HeaderMap, retried: bool, retry_at_unix_ms: Option<u64>) {
    if retried {
        headers.insert("x-should-retry", HeaderValue::from_static("false"));
    }
    if let Some(at) = retry_at_unix_ms {
        let now = mythos_protocol::clock::now_unix_ms();
        let secs = at.saturating_sub(now).div_ceil(1000).max(1);
        headers.insert("retry-after", HeaderValue::from(secs));
        headers.insert(
            "retry-after-ms",
            HeaderValue::from(at.saturating_sub(now).max(1)),
        );
    }
}

/// The HTTP status for a failure. Upstream key or billing trouble is the daemon's problem, not
/// the agent's: never 401/403, which would make an agent ask its user to log in again.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Overloaded | ErrorKind::AllCoolingDown => {
            StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
        }
        ErrorKind::BadRequest | ErrorKind::ContextLength | ErrorKind::Protocol => {
            StatusCode::BAD_REQUEST
        }
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::NoProviders | ErrorKind::ShuttingDown | ErrorKind::Cancelled => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::ServerError
        | ErrorKind::Network
        | ErrorKind::Timeout
        | ErrorKind::Truncated
        | ErrorKind::Malformed
        | ErrorKind::Offline
        | ErrorKind::Auth
        | ErrorKind::Billing => StatusCode::BAD_GATEWAY,
    }
}

/// `status` as `dialect`'s clients know it: `529` is Anthropic's "overloaded"; OpenAI's API and
/// its clients say `503` (found by a chaos run: `/v1/chat/completions` answered 529).
pub fn status_in(dialect: Dialect, status: StatusCode) -> StatusCode {
    match dialect {
        Dialect::Openai if status.as_u16() == 529 => StatusCode::SERVICE_UNAVAILABLE,
        _ => status,
    }
}

/// Anthropic's `error.type` for a failure.
pub fn anthropic_type(kind: ErrorKind, status: StatusCode) -> &'static str {
    if status == StatusCode::UNAUTHORIZED {
        return "authentication_error";
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return "request_too_large";
    }
    match kind {
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::Overloaded | ErrorKind::AllCoolingDown => "overloaded_error",
        ErrorKind::BadRequest | ErrorKind::ContextLength | ErrorKind::Protocol => {
            "invalid_request_error"
        }
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::NoProviders | ErrorKind::ShuttingDown | ErrorKind::Cancelled => {
            "overloaded_error"
        }
        _ => "api_error",
    }
}

/// OpenAI's `error.type` and `error.code` for a failure.
pub fn openai_type(kind: ErrorKind, status: StatusCode) -> (&'static str, Option<&'static str>) {
    if status == StatusCode::UNAUTHORIZED {
        return ("invalid_request_error", Some("invalid_api_key"));
    }
    match kind {
        ErrorKind::RateLimited => ("requests", Some("rate_limit_exceeded")),
        ErrorKind::ContextLength => ("invalid_request_error", Some("context_length_exceeded")),
        ErrorKind::BadRequest | ErrorKind::Protocol => ("invalid_request_error", None),
        ErrorKind::NotFound => ("invalid_request_error", Some("model_not_found")),
        ErrorKind::Overloaded | ErrorKind::AllCoolingDown | ErrorKind::NoProviders => {
            ("server_error", Some("overloaded"))
        }
        _ => ("server_error", None),
    }
}

/// The words of Anthropic's context-length error.
const TOO_LONG: &str = "prompt is too long";

/// The JSON error body of `dialect`.
pub fn error_body(
    dialect: Dialect,
    kind: ErrorKind,
    status: StatusCode,
    message: &str,
) -> serde_json::Value {
    match dialect {
        // Anthropic says "prompt is too long: N tokens > M maximum", and agents look for those
        // words to compact the conversation (Claude Code does); another provider's wording
        // ("maximum context length") would leave the session stuck on the same request.
        Dialect::Anthropic if kind == ErrorKind::ContextLength && !message.contains(TOO_LONG) => {
            json!({
                "type": "error",
                "error": {"type": anthropic_type(kind, status),
                          "message": format!("{TOO_LONG}: {message}")},
            })
        }
        Dialect::Anthropic => json!({
            "type": "error",
            "error": {"type": anthropic_type(kind, status), "message": message},
        }),
        Dialect::Openai => {
            let (ty, code) = openai_type(kind, status);
            json!({"error": {"message": message, "type": ty, "param": null, "code": code}})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context-length failure from any provider reads, in the Messages dialect, as
    /// Anthropic's own: the words agents look for to compact the conversation.
    #[test]
    fn a_prompt_too_long_says_so_in_anthropics_words() {
        let msg =
            "every provider failed (deepseek: This model's maximum context length is 65536 tokens)";
        let v = error_body(
            Dialect::Anthropic,
            ErrorKind::ContextLength,
            StatusCode::BAD_REQUEST,
            msg,
        );
        let text = v["error"]["message"].as_str().unwrap();
        assert!(
            text.starts_with("prompt is too long: ") && text.ends_with(msg),
            "{text}"
        );
        let own = "prompt is too long: 210000 tokens > 200000 maximum";
        let v = error_body(
            Dialect::Anthropic,
            ErrorKind::ContextLength,
            StatusCode::BAD_REQUEST,
            own,
        );
        assert_eq!(v["error"]["message"], own);
        let v = error_body(
            Dialect::Openai,
            ErrorKind::ContextLength,
            StatusCode::BAD_REQUEST,
            msg,
        );
        assert_eq!(v["error"]["message"], msg);
        assert_eq!(v["error"]["code"], "context_length_exceeded");
    }

    /// A body over the limit is Anthropic's `request_too_large`, as its 413 says.
    #[test]
    fn too_large_in_anthropics_words() {
        let v = error_body(
            Dialect::Anthropic,
            ErrorKind::BadRequest,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too big",
        );
        assert_eq!(v["error"]["type"], "request_too_large");
    }

    #[test]
    fn upstream_key_trouble_is_never_a_401() {
        assert_eq!(status_of(ErrorKind::Auth), StatusCode::BAD_GATEWAY);
        assert_eq!(status_of(ErrorKind::Billing), StatusCode::BAD_GATEWAY);
        assert_eq!(status_of(ErrorKind::RateLimited).as_u16(), 429);
        assert_eq!(status_of(ErrorKind::Overloaded).as_u16(), 529);
    }

    /// Overloaded is 529 for Anthropic's clients, 503 for OpenAI's (Chat and Responses).
    #[test]
    fn overloaded_is_said_in_each_apis_status() {
        let e = || ApiError::from_route(ErrorKind::AllCoolingDown, "x".into(), None);
        assert_eq!(e().into_response(Dialect::Anthropic).status().as_u16(), 529);
        assert_eq!(e().into_response(Dialect::Openai).status().as_u16(), 503);
    }

    #[test]
    fn retried_errors_tell_the_sdk_not_to_retry() {
        let e = ApiError::from_route(ErrorKind::RateLimited, "x".into(), None);
        assert!(e.retried);
        let r = e.into_response(Dialect::Anthropic);
        assert_eq!(r.headers()["x-should-retry"], "false");
        for kind in [ErrorKind::ShuttingDown, ErrorKind::AllCoolingDown] {
            let e = ApiError::from_route(kind, "x".into(), None);
            assert!(!e.retried, "{kind:?}");
        }
    }
}
