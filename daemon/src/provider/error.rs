//! Classified upstream failures.
//!
//! Every way a provider can fail ends up as one [`ProviderError`] with an [`ErrorKind`], so the
//! router decides retry / failover / surface from the kind alone. Messages never contain keys:
//! they are built from status codes and the provider's own error text, never from our headers.

use std::time::Duration;

use mythos_protocol::ErrorKind;

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
}

impl ProviderError {
    /// An error of `kind` with a message and nothing else.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ProviderError {
            kind,
            status: None,
            retry_after: None,
            message: message.into(),
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

/// Kind of failure for an HTTP status code.
pub fn kind_for_status(status: u16) -> ErrorKind {
    match status {
        429 => ErrorKind::RateLimited,
        529 | 503 => ErrorKind::Overloaded,
        401 | 403 => ErrorKind::Auth,
        404 => ErrorKind::NotFound,
        408 => ErrorKind::Timeout,
        400..=499 => ErrorKind::BadRequest,
        _ => ErrorKind::ServerError,
    }
}

/// Kind of failure for an error `type` string in a provider's JSON error body or SSE error event
/// (Anthropic: `overloaded_error`, `rate_limit_error`, ...; OpenAI: `server_error`, ...).
pub fn kind_for_error_type(ty: &str) -> ErrorKind {
    match ty {
        "overloaded_error" => ErrorKind::Overloaded,
        "rate_limit_error" | "rate_limit_exceeded" | "insufficient_quota" => ErrorKind::RateLimited,
        "authentication_error" | "permission_error" | "invalid_api_key" => ErrorKind::Auth,
        "not_found_error" => ErrorKind::NotFound,
        "invalid_request_error" | "request_too_large" | "invalid_request" => ErrorKind::BadRequest,
        "timeout_error" => ErrorKind::Timeout,
        _ => ErrorKind::ServerError,
    }
}
