//! The shared tier's access check for `pullthrough doctor`: a put, a get
//! and a delete of one small probe object under the prefix, each reporting
//! its own failure, since a task role often allows some calls and not
//! others.

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream as S3Body;

use super::{S3Tier, status};

/// Which call of the probe failed, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{call} of {key} failed ({}): {message}", status.map_or("no answer".to_owned(), |s| s.to_string()))]
pub struct ProbeFailure {
    /// `PutObject`, `GetObject` or `DeleteObject`.
    pub call: &'static str,
    pub key: String,
    /// The HTTP status, when S3 answered at all.
    pub status: Option<u16>,
    pub message: String,
}

impl S3Tier {
    /// The bucket and prefix, as `bucket/prefix`.
    pub fn location(&self) -> String {
        format!("{}/{}", self.bucket, self.prefix)
    }

    /// Writes, reads back and deletes `<prefix>doctor/<name>`; the key on
    /// success.
    pub async fn probe_access(&self, name: &str) -> Result<String, ProbeFailure> {
        let key = format!("{}doctor/{name}", self.prefix);
        let body = format!("pullthrough doctor probe {name}");
        let fail = |call, status, message: String| ProbeFailure {
            call,
            key: key.clone(),
            status,
            message,
        };
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(S3Body::from(body.clone().into_bytes()))
            .send()
            .await
            .map_err(|e| fail("PutObject", status(&e), DisplayErrorContext(&e).to_string()))?;
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| fail("GetObject", status(&e), DisplayErrorContext(&e).to_string()))?;
        let bytes = got
            .body
            .collect()
            .await
            .map_err(|e| fail("GetObject", None, e.to_string()))?
            .into_bytes();
        if bytes.as_ref() != body.as_bytes() {
            return Err(fail(
                "GetObject",
                None,
                "read back other bytes than were written".into(),
            ));
        }
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| {
                fail(
                    "DeleteObject",
                    status(&e),
                    DisplayErrorContext(&e).to_string(),
                )
            })?;
        Ok(key)
    }
}
