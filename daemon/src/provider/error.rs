//! Classified upstream failures.
//!
//! Every way a provider can fail ends up as one [`ProviderError`] with an [`ErrorKind`], so the
//! router decides retry / failover / surface from the kind alone. Messages never contain keys:
//! they are built from status codes and the provider's own error text, never from our headers.

use std::time::Duration;

use mythos_protocol::ErrorKind;

use super::ratelimit::RateLimits;

/// A failed attempt at one provider.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// HTTP status, when the failure came with one.
    pub status: Option<u16>,
    /// How long the provider asked us to wait (Retry-After / retry-after-ms).
    pub retry_after: Option<Duration>,
    /// One line for logs and users.
    pub message: String,
    /// Quotas announced in the error response's headers (a 429 usually says when it resets).
    pub limits: Option<Box<RateLimits>>,
    /// No connection was made (a name that did not resolve, a refused or unroutable connect,
    /// a failed TLS handshake): the request never reached the provider. When no provider can
    /// be reached this machine is offline; a connection reset after the request was written
    /// is not that, but the provider's (or its proxy's) fault.
    pub unreached: bool,
}

impl ProviderError {
    /// An error of `kind` with a message and nothing else.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ProviderError {
            kind,
            status: None,
            retry_after: None,
            message: message.into(),
            limits: None,
            unreached: false,
        }
    }

    /// A connection that could not be made: nothing reached the provider.
    pub fn unreached(kind: ErrorKind, message: impl Into<String>) -> Self {
        ProviderError {
            unreached: true,
            ..Self::new(kind, message)
        }
    }

    /// The stream ended before its terminator.
    pub fn truncated(what: &str) -> Self {
        Self::new(ErrorKind::Truncated, format!("stream ended without {what}"))
    }

    /// The provider sent something we could not parse.
    pub fn malformed(detail: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Malformed, format!("malformed stream: {detail}"))
    }

    /// Whether trying again (here or elsewhere) can help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::RateLimited
                | ErrorKind::Overloaded
                | ErrorKind::ServerError
                | ErrorKind::Network
                | ErrorKind::Timeout
                | ErrorKind::Truncated
                | ErrorKind::Malformed
        )
    }
}

/// Kind of failure for an HTTP status code alone.
pub fn kind_for_status(status: u16) -> ErrorKind {
    match status {
        429 => ErrorKind::RateLimited,
        529 | 503 => ErrorKind::Overloaded,
        401 | 403 => ErrorKind::Auth,
        402 => ErrorKind::Billing,
        404 => ErrorKind::NotFound,
        408 => ErrorKind::Timeout,
        // 409 is a lock or conflict on the provider's side; the official SDKs retry it.
        409 => ErrorKind::ServerError,
        // "Too Early": try again later. Taken for a refusal of the request, two of them went
        // to the client as a 400 while other providers were healthy (found by a helper).
        425 => ErrorKind::ServerError,
        413 => ErrorKind::ContextLength,
        // A redirect (not followed: it would take the key along) is the configuration's
        // fault, like a wrong path: retrying it cannot help, the next provider can.
        300..=399 => ErrorKind::NotFound,
        // A wrong method or a model taken away: this entry's configuration, like a 404.
        405 | 410 => ErrorKind::NotFound,
        // Any other 4xx (418, 421, 451, a proxy's 407 or 415) is a refusal of this request
        // there, like a 400: it gets a second opinion elsewhere (see `policy::decide`) rather
        // than going to the client while other providers are healthy (found by a chaos run),
        // and no fault: retried as a 5xx, one proxy refusing some content opened the breaker
        // for every request (found by a review).
        400..=499 => ErrorKind::BadRequest,
        _ => ErrorKind::ServerError,
    }
}

/// Kind of failure for an error `type` string in a provider's JSON error body or SSE error event
/// (Anthropic: `overloaded_error`, `rate_limit_error`, ...; OpenAI: `server_error`, ...).
pub fn kind_for_error_type(ty: &str) -> ErrorKind {
    match ty {
        "overloaded_error" => ErrorKind::Overloaded,
        "rate_limit_error" | "rate_limit_exceeded" | "tokens_exceeded" => ErrorKind::RateLimited,
        // OpenAI answers a spent account with 429 insufficient_quota: waiting does not help.
        "insufficient_quota" | "billing_error" | "billing_hard_limit_reached" => ErrorKind::Billing,
        "authentication_error" | "permission_error" | "invalid_api_key" => ErrorKind::Auth,
        "not_found_error" | "model_not_found" => ErrorKind::NotFound,
        "context_length_exceeded" | "request_too_large" | "string_above_max_length" => {
            ErrorKind::ContextLength
        }
        "invalid_request_error" | "invalid_request" => ErrorKind::BadRequest,
        "timeout_error" => ErrorKind::Timeout,
        _ => ErrorKind::ServerError,
    }
}

/// Phrases providers use for a prompt that does not fit (in 400 bodies with a generic type).
const CONTEXT_PHRASES: [&str; 8] = [
    "prompt is too long",
    // Anthropic: "input length and `max_tokens` exceed context limit: 180000 + 32000 > 200000".
    "exceed context limit",
    "context length",
    "context_length",
    "context window",
    "maximum context",
    "too many tokens",
    "reduce the length",
];

/// Phrases providers use for an account that cannot pay.
const BILLING_PHRASES: [&str; 5] = [
    "credit balance is too low",
    "insufficient balance",
    "insufficient_quota",
    "exceeded your current quota",
    "billing",
];

/// Phrases of a `403` about the request's content, not the key (OpenRouter's moderation:
/// "… was flagged …"): one flagged prompt disabled the provider for everyone until a restart.
const CONTENT_PHRASES: [&str; 2] = ["flagged", "moderation"];

/// Kind of an error response from its status, its body's error `type` and its message.
///
/// The status decides, except where providers are known to be vaguer than their words: a 400
/// or 429 whose text says the account cannot pay is [`ErrorKind::Billing`]; a 400 whose text
/// says the prompt is too long is [`ErrorKind::ContextLength`]; a generic 5xx whose type says
/// overload or rate limit is that.
pub fn classify(status: u16, ty: Option<&str>, message: Option<&str>) -> ErrorKind {
    let by_status = kind_for_status(status);
    let by_type = ty.map(kind_for_error_type);
    let text = message.unwrap_or("").to_ascii_lowercase();
    let says = |phrases: &[&str]| phrases.iter().any(|p| text.contains(p));
    match by_status {
        ErrorKind::RateLimited | ErrorKind::BadRequest | ErrorKind::Auth
            if by_type == Some(ErrorKind::Billing) || says(&BILLING_PHRASES) =>
        {
            ErrorKind::Billing
        }
        ErrorKind::Auth
            if status == 403 && by_type != Some(ErrorKind::Auth) && says(&CONTENT_PHRASES) =>
        {
            ErrorKind::BadRequest
        }
        ErrorKind::BadRequest
            if by_type == Some(ErrorKind::ContextLength) || says(&CONTEXT_PHRASES) =>
        {
            ErrorKind::ContextLength
        }
        ErrorKind::ServerError
            if matches!(
                by_type,
                Some(ErrorKind::Overloaded | ErrorKind::RateLimited)
            ) =>
        {
            by_type.unwrap_or(by_status)
        }
        k => k,
    }
}

/// Whether a rejected continuation was rejected *because* it was a continuation (the provider
/// refuses an assistant prefill), as opposed to any other 400.
pub fn is_prefill_rejection(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "prefill",
        "final assistant content",
        "assistant message",
        "last message",
    ]
    .iter()
    .any(|p| m.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a review: Anthropic's prompt-plus-`max_tokens` overflow is a context error
    /// (another provider's window may take it), and a `403` for flagged content is the
    /// request's, not a rejected key (which disables the provider for everyone).
    #[test]
    fn context_overflow_and_flagged_content_are_the_requests() {
        let k = |status, ty: Option<&str>, msg: Option<&str>| classify(status, ty, msg);
        assert_eq!(
            k(
                400,
                Some("invalid_request_error"),
                Some("input length and `max_tokens` exceed context limit: 180000 + 32000 > 200000, decrease input length or `max_tokens` and try again")
            ),
            ErrorKind::ContextLength
        );
        assert_eq!(
            k(403, None, Some("Your chosen model requires moderation and your input was flagged for \"harassment\"")),
            ErrorKind::BadRequest
        );
        assert_eq!(k(403, None, Some("Forbidden")), ErrorKind::Auth);
        assert_eq!(
            k(403, Some("permission_error"), Some("moderation settings")),
            ErrorKind::Auth
        );
    }

    #[test]
    fn classification_table() {
        let k = |status, ty: Option<&str>, msg: Option<&str>| classify(status, ty, msg);
        assert_eq!(
            k(429, Some("rate_limit_error"), None),
            ErrorKind::RateLimited
        );
        assert_eq!(
            k(
                429,
                Some("insufficient_quota"),
                Some("You exceeded your current quota")
            ),
            ErrorKind::Billing
        );
        assert_eq!(
            k(402, None, Some("Insufficient Balance")),
            ErrorKind::Billing
        );
        assert_eq!(
            k(
                400,
                Some("invalid_request_error"),
                Some("Your credit balance is too low")
            ),
            ErrorKind::Billing
        );
        assert_eq!(
            k(
                400,
                Some("invalid_request_error"),
                Some("prompt is too long: 210000 tokens > 200000 maximum")
            ),
            ErrorKind::ContextLength
        );
        assert_eq!(
            k(
                400,
                None,
                Some("This model's maximum context length is 128000 tokens")
            ),
            ErrorKind::ContextLength
        );
        assert_eq!(
            k(413, Some("request_too_large"), None),
            ErrorKind::ContextLength
        );
        assert_eq!(
            k(400, Some("invalid_request_error"), Some("bad")),
            ErrorKind::BadRequest
        );
        assert_eq!(k(422, None, Some("unprocessable")), ErrorKind::BadRequest);
        assert_eq!(k(409, None, None), ErrorKind::ServerError);
        assert_eq!(k(425, None, None), ErrorKind::ServerError);
        assert_eq!(k(418, None, Some("I'm a teapot")), ErrorKind::BadRequest);
        assert_eq!(k(451, None, None), ErrorKind::BadRequest);
        assert_eq!(k(410, None, None), ErrorKind::NotFound);
        assert_eq!(k(400, None, None), ErrorKind::BadRequest);
        assert_eq!(k(408, None, None), ErrorKind::Timeout);
        assert_eq!(
            k(500, Some("overloaded_error"), None),
            ErrorKind::Overloaded
        );
        assert_eq!(
            k(529, Some("overloaded_error"), None),
            ErrorKind::Overloaded
        );
        assert_eq!(k(520, None, Some("<html>")), ErrorKind::ServerError);
        assert_eq!(k(401, Some("authentication_error"), None), ErrorKind::Auth);
        assert_eq!(k(404, Some("not_found_error"), None), ErrorKind::NotFound);
    }

    #[test]
    fn prefill_rejections_are_told_apart() {
        assert!(is_prefill_rejection(
            "messages: final assistant content cannot end with trailing whitespace"
        ));
        assert!(is_prefill_rejection(
            "This model does not support assistant message prefill"
        ));
        assert!(!is_prefill_rejection("prompt is too long"));
        assert!(!is_prefill_rejection("max_tokens: must be at most 8192"));
    }
}
