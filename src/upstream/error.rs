//! The upstream layer's error: what went wrong talking to a registry, sorted
//! by what the caller can do about it.

use std::fmt;
use std::time::Duration;

/// A failed exchange with one upstream registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError {
    /// The configured upstream's name.
    pub upstream: String,
    pub kind: ErrorKind,
    /// Human-readable detail, never containing credentials.
    pub detail: String,
    /// For [`ErrorKind::RateLimited`] and [`ErrorKind::CircuitOpen`]: when
    /// asking again makes sense, sent to the client as `Retry-After`.
    pub retry_after: Option<Duration>,
}

/// What kind of failure, which decides retrying, stale serving and the status
/// the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 404: the repository, manifest or blob does not exist.
    NotFound,
    /// 401 or 403 after authenticating: no access with our credentials.
    Denied,
    /// 429: upstream's pull limit is spent.
    RateLimited,
    /// Any other unexpected status, 5xx included.
    Status(u16),
    /// The connection could not be set up.
    Connect,
    /// Connect, read or whole-request deadline passed.
    Timeout,
    /// The connection broke during the exchange, such as a reset mid-body.
    Transport,
    /// Upstream answered something that breaks the protocol.
    Invalid,
    /// The answer is larger than pullthrough accepts for its kind.
    TooLarge,
    /// Not asked: the upstream's circuit is open after repeated failures
    /// (see `circuit`), so the request failed at once.
    CircuitOpen,
}

impl UpstreamError {
    /// Builds an error for `upstream`.
    pub fn new(upstream: &str, kind: ErrorKind, detail: impl Into<String>) -> Self {
        UpstreamError {
            upstream: upstream.to_owned(),
            kind,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// The same error, telling the client when to ask again.
    pub fn with_retry_after(self, wait: Duration) -> Self {
        UpstreamError {
            retry_after: Some(wait),
            ..self
        }
    }

    /// Failures that say nothing about the content itself: upstream is down,
    /// slow, overloaded or out of pulls. A cached copy is better than these.
    pub fn is_transient(&self) -> bool {
        match self.kind {
            ErrorKind::RateLimited
            | ErrorKind::Connect
            | ErrorKind::Timeout
            | ErrorKind::Transport
            | ErrorKind::CircuitOpen => true,
            ErrorKind::Status(code) => code >= 500,
            ErrorKind::NotFound | ErrorKind::Denied | ErrorKind::Invalid | ErrorKind::TooLarge => {
                false
            }
        }
    }

    /// Failures worth trying again at once: the upstream may answer the
    /// next attempt (connect errors, timeouts, a reset before the answer,
    /// 502, 503, 504). Never a 429 (the budget decides when to ask again),
    /// another 4xx, or an answer that broke the protocol.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            ErrorKind::Connect | ErrorKind::Timeout | ErrorKind::Transport => true,
            ErrorKind::Status(code) => matches!(code, 502..=504),
            _ => false,
        }
    }

    /// Failures that say the upstream itself is down, which its circuit
    /// breaker counts: connect errors, timeouts, resets and 5xx; not an
    /// answer about the content (404, 401, 429).
    pub fn is_outage(&self) -> bool {
        match self.kind {
            ErrorKind::Connect | ErrorKind::Timeout | ErrorKind::Transport => true,
            ErrorKind::Status(code) => code >= 500,
            _ => false,
        }
    }

    /// Classifies a reqwest failure.
    pub fn from_reqwest(upstream: &str, err: &reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            ErrorKind::Timeout
        } else if err.is_connect() {
            ErrorKind::Connect
        } else {
            ErrorKind::Transport
        };
        // reqwest's Display names the URL, which never carries credentials here.
        UpstreamError::new(upstream, kind, error_chain(err))
    }
}

/// An error and its sources on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream {}: {}", self.upstream, self.detail)
    }
}

impl std::error::Error for UpstreamError {}
