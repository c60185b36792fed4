//! The API's error: the only error that becomes a response, as an OCI
//! `{"errors":[{"code","message","detail"}]}` body with an explicit status.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::reference::ReferenceError;
use crate::registry::RegistryError;
use crate::upstream::ErrorKind;

/// An error answer to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// An OCI distribution error code, such as `MANIFEST_UNKNOWN`.
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Pushing and deleting, which a mirror does not do.
    pub fn read_only() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "pullthrough is a read-only mirror: push and delete are not supported",
        )
    }

    /// A path no endpoint serves.
    pub fn no_endpoint() -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "pullthrough does not serve this endpoint",
        )
    }

    /// A manifest reference that is neither a tag nor a digest: no such
    /// manifest can exist, so 404 `MANIFEST_UNKNOWN`, as distribution answers
    /// and the OCI conformance suite expects (not 400 `TAG_INVALID`).
    pub fn manifest_reference(e: ReferenceError) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", e.to_string())
    }

    /// A blob reference that is not a digest: 404 `BLOB_UNKNOWN`, likewise.
    pub fn blob_reference(e: ReferenceError) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", e.to_string())
    }
}

impl From<ReferenceError> for ApiError {
    fn from(e: ReferenceError) -> Self {
        let code = match e {
            ReferenceError::Name(_) => "NAME_INVALID",
            ReferenceError::Tag(_) => "TAG_INVALID",
            ReferenceError::Digest(_) => "DIGEST_INVALID",
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let message = e.to_string();
        let retry_after = match &e {
            RegistryError::Upstream(u) => u.retry_after,
            _ => None,
        };
        let (status, code) = match &e {
            RegistryError::ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            RegistryError::BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            RegistryError::NameUnknown(_) | RegistryError::UnknownUpstream(_) => {
                (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
            }
            RegistryError::Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            RegistryError::Upstream(u) => match u.kind {
                ErrorKind::NotFound => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
                ErrorKind::Denied => (StatusCode::FORBIDDEN, "DENIED"),
                ErrorKind::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
                ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE"),
                ErrorKind::Status(503) | ErrorKind::CircuitOpen => {
                    (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
                }
                ErrorKind::Status(_)
                | ErrorKind::Connect
                | ErrorKind::Transport
                | ErrorKind::Invalid
                | ErrorKind::TooLarge => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
            },
            RegistryError::DigestMismatch(_) | RegistryError::Abandoned => {
                (StatusCode::BAD_GATEWAY, "UNAVAILABLE")
            }
            RegistryError::Cache(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        };
        ApiError {
            retry_after,
            ..ApiError::new(status, code, message)
        }
    }
}

impl ApiError {
    /// The error response, still carrying the outcome of the request that
    /// produced it (a range outside a blob that was nonetheless fetched).
    pub fn into_response_with_outcome(self, outcome: crate::registry::Outcome) -> Response {
        let mut response = self.into_response();
        response.extensions_mut().insert(outcome);
        response
    }
}

/// The code and message of an error answer, kept on the response for the
/// access record (the body is already a stream by then).
#[derive(Clone, Debug)]
pub struct ErrorNote {
    pub code: &'static str,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let note = ErrorNote {
            code: self.code,
            message: self.message.clone(),
        };
        let body = serde_json::json!({
            "errors": [{ "code": self.code, "message": self.message, "detail": null }]
        });
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(note);
        response
    }
}
