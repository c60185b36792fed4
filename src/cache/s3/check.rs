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
    /// `PutObject`, `GetObject`, `DeleteObject` or `presigned GET`.
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
        let probe = self.put_probe(name).await?;
        let read = self.get_probe(&probe).await;
        let deleted = self.delete_probe(&probe).await;
        read.and(deleted).map(|()| probe.key)
    }

    /// As a node would with `s3.redirect` on: writes a probe object, fetches
    /// it through a presigned URL with no credentials of its own, and
    /// deletes it; the URL's host on success.
    pub async fn probe_redirect(&self, name: &str) -> Result<String, ProbeFailure> {
        let probe = self.put_probe(name).await?;
        let fetched = self.fetch_presigned(&probe).await;
        let _ = self.delete_probe(&probe).await;
        fetched
    }

    async fn put_probe(&self, name: &str) -> Result<Probe, ProbeFailure> {
        let probe = Probe {
            key: format!("{}doctor/{name}", self.prefix),
            body: format!("pullthrough doctor probe {name}"),
        };
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&probe.key)
            .body(S3Body::from(probe.body.clone().into_bytes()))
            .send()
            .await
            .map_err(|e| probe.failed("PutObject", status(&e), DisplayErrorContext(&e)))?;
        Ok(probe)
    }

    async fn get_probe(&self, probe: &Probe) -> Result<(), ProbeFailure> {
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&probe.key)
            .send()
            .await
            .map_err(|e| probe.failed("GetObject", status(&e), DisplayErrorContext(&e)))?;
        let bytes = got
            .body
            .collect()
            .await
            .map_err(|e| probe.failed("GetObject", None, e))?
            .into_bytes();
        probe.check("GetObject", &bytes)
    }

    async fn fetch_presigned(&self, probe: &Probe) -> Result<String, ProbeFailure> {
        const CALL: &str = "presigned GET";
        let signed = match &self.redirects {
            Some(redirects) => redirects.sign(&probe.key).await,
            None => return Err(probe.failed(CALL, None, "s3.redirect is off")),
        };
        let url = signed.ok_or_else(|| {
            probe.failed(
                CALL,
                None,
                "no credentials with a minute left to sign a URL with",
            )
        })?;
        let host = reqwest::Url::parse(&url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let http = reqwest::Client::builder()
            .timeout(self.read_timeout.max(std::time::Duration::from_secs(10)))
            .build()
            .map_err(|e| probe.failed(CALL, None, e))?;
        let response = http
            .get(&url)
            .send()
            .await
            .map_err(|e| probe.failed(CALL, None, format!("{host}: {e}")))?;
        let code = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| probe.failed(CALL, Some(code), e))?;
        if code != 200 {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(probe.failed(CALL, Some(code), format!("{host}: {text}")));
        }
        probe.check(CALL, &bytes).map(|()| host)
    }

    async fn delete_probe(&self, probe: &Probe) -> Result<(), ProbeFailure> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&probe.key)
            .send()
            .await
            .map_err(|e| probe.failed("DeleteObject", status(&e), DisplayErrorContext(&e)))?;
        Ok(())
    }
}

/// The object a probe writes, reads and deletes.
struct Probe {
    key: String,
    body: String,
}

impl Probe {
    fn failed(
        &self,
        call: &'static str,
        status: Option<u16>,
        message: impl std::fmt::Display,
    ) -> ProbeFailure {
        ProbeFailure {
            call,
            key: self.key.clone(),
            status,
            message: message.to_string(),
        }
    }

    /// Whether `bytes` are what was written.
    fn check(&self, call: &'static str, bytes: &[u8]) -> Result<(), ProbeFailure> {
        match bytes == self.body.as_bytes() {
            true => Ok(()),
            false => Err(self.failed(call, None, "read back other bytes than were written")),
        }
    }
}
