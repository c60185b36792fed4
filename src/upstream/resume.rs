//! Blob bodies that survive a broken connection: when the transport fails
//! mid-body, the rest is asked for again with `Range: bytes=<received>-`
//! through the same exchange (so the registry's redirect to its CDN and the
//! token flow work as for the first request), and the body stream simply
//! continues. Its reader, the flight writer, sees one unbroken stream and
//! still verifies the digest over the whole blob.
//!
//! A resumed answer is taken only when it continues exactly where the body
//! broke off: a 206 whose `Content-Range` starts at the offset and whose
//! total is the announced size, or a 200 of the whole size, whose prefix
//! already received is skipped. Anything else fails the download, as does
//! a body without a known size, or more than `max_resumes` interruptions.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use http::{Method, StatusCode, header};
use prometheus::IntCounter;

use super::error::{ErrorKind, UpstreamError};
use super::exchange::Ask;
use super::retry::Slot;
use super::{BlobDownload, Upstream, content_length};
use crate::reference::RepoName;

/// A blob body being read, and what is needed to ask for the rest.
struct Resuming {
    upstream: Arc<Upstream>,
    repo: RepoName,
    path: String,
    size: Option<u64>,
    /// Bytes handed on so far.
    received: u64,
    resumes: u32,
    /// Bytes still to drop from a 200 that answered a resume from the start.
    skip: u64,
    chunks: BoxStream<'static, reqwest::Result<Bytes>>,
    /// `pullthrough_upstream_blob_bytes_total`: every byte that came, skipped ones too.
    bytes: IntCounter,
    /// The upstream fetch slot, held until the body ends.
    _slot: Slot,
}

/// Where a blob download starts: at byte 0 of a body whose size the
/// answer tells, or at `offset` of a blob of `size` bytes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Start {
    Whole,
    At { offset: u64, size: u64 },
}

impl Upstream {
    /// GETs a blob from `start`, following redirects to signed storage
    /// (which gets no `Authorization` header of ours); an interrupted body
    /// resumes. From an offset, the answer is taken only when it continues
    /// exactly there.
    pub(super) async fn blob_from(
        self: &Arc<Self>,
        repo: &RepoName,
        digest: &crate::digest::Digest,
        start: Start,
    ) -> Result<BlobDownload, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let (kind, range_from) = match start {
            Start::Whole => ("blob_get", None),
            Start::At { offset, .. } => ("blob_resume", Some(offset)),
        };
        let ask = Ask {
            method: Method::GET,
            path: &path,
            repo,
            accept: "",
            kind,
            bounded: false,
            range_from,
        };
        let (response, slot) = self.fetch(ask).await?;
        let (size, received, skip) = match start {
            Start::Whole => (response.content_length(), 0, 0),
            Start::At { offset, size } => {
                let headers = response.headers();
                let content_range = headers
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok());
                let length = content_length(headers);
                let skip = resumed_at(response.status(), content_range, length, offset, size)
                    .map_err(|why| {
                        let detail = format!("the answer to a blob asked from byte {offset} {why}");
                        self.error(ErrorKind::Invalid, detail)
                    })?;
                (Some(size), offset, skip)
            }
        };
        let body = Resuming {
            upstream: self.clone(),
            repo: repo.clone(),
            path,
            size,
            received,
            resumes: 0,
            skip,
            chunks: response.bytes_stream().boxed(),
            bytes: self.metrics.upstream_bytes.with_label_values(&[&self.name]),
            _slot: slot,
        };
        Ok(BlobDownload {
            size: size.map(|size| size - received),
            body: Box::new(Box::pin(body.into_stream())),
        })
    }

    /// Bytes `offset..size` of a blob of `size` bytes that another source
    /// (the replica that owns it) broke off, asked with `Range` like a
    /// resume.
    pub async fn get_blob_from(
        self: &Arc<Self>,
        repo: &RepoName,
        digest: &crate::digest::Digest,
        offset: u64,
        size: u64,
    ) -> Result<BlobDownload, UpstreamError> {
        self.blob_from(repo, digest, Start::At { offset, size })
            .await
    }
}

impl Resuming {
    fn into_stream(self) -> impl Stream<Item = Result<Bytes, UpstreamError>> + Send {
        futures_util::stream::unfold(Some(self), |state| async move {
            let mut this = state?;
            match this.next().await {
                Some(Ok(chunk)) => Some((Ok(chunk), Some(this))),
                Some(Err(e)) => Some((Err(e), None)),
                None => None,
            }
        })
    }

    /// The next piece of the body, resuming after an interruption.
    async fn next(&mut self) -> Option<Result<Bytes, UpstreamError>> {
        loop {
            match self.chunks.next().await? {
                Ok(mut chunk) => {
                    self.bytes.inc_by(chunk.len() as u64);
                    if self.skip > 0 {
                        let dropped = self.skip.min(chunk.len() as u64);
                        self.skip -= dropped;
                        chunk = chunk.slice(dropped as usize..);
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    self.received += chunk.len() as u64;
                    return Some(Ok(chunk));
                }
                Err(e) => {
                    let error = UpstreamError::from_reqwest(&self.upstream.name, &e);
                    if let Err(e) = self.resume(error).await {
                        return Some(Err(e));
                    }
                }
            }
        }
    }

    /// Asks for the rest of the body after `error` broke it off, or says
    /// why it cannot be.
    async fn resume(&mut self, error: UpstreamError) -> Result<(), UpstreamError> {
        let upstream = &self.upstream;
        let Some(size) = self.size else {
            return Err(error);
        };
        let interrupted = matches!(error.kind, ErrorKind::Transport | ErrorKind::Timeout);
        if !interrupted || self.resumes >= upstream.resilience.max_resumes || self.received >= size
        {
            return Err(error);
        }
        self.resumes += 1;
        let offset = self.received;
        tracing::info!(
            upstream = %upstream.name, path = %self.path, offset, size, resume = self.resumes, error = %error,
            "blob download interrupted; resuming with Range"
        );
        upstream
            .metrics
            .upstream_resumes
            .with_label_values(&[&upstream.name])
            .inc();
        let ask = Ask {
            method: Method::GET,
            path: &self.path,
            repo: &self.repo,
            accept: "",
            kind: "blob_resume",
            bounded: false,
            range_from: Some(offset),
        };
        let deadline = tokio::time::Instant::now() + upstream.request_timeout;
        let response = upstream.send_retrying(&ask, deadline).await.map_err(|e| {
            upstream.error(
                e.kind,
                format!("{error}; resuming at byte {offset} failed: {}", e.detail),
            )
        })?;
        let headers = response.headers();
        let content_range = headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok());
        self.skip = resumed_at(
            response.status(),
            content_range,
            content_length(headers),
            offset,
            size,
        )
        .map_err(|why| {
            upstream.error(
                ErrorKind::Invalid,
                format!("{error}; the answer to resuming at byte {offset} {why}"),
            )
        })?;
        self.chunks = response.bytes_stream().boxed();
        Ok(())
    }
}

/// How many leading bytes of a resumed answer to skip, if it continues a
/// body of `size` bytes at `offset`: none for a 206 of exactly the rest,
/// `offset` for a 200 of the whole. Otherwise why it does not fit.
pub fn resumed_at(
    status: StatusCode,
    content_range: Option<&str>,
    content_length: Option<u64>,
    offset: u64,
    size: u64,
) -> Result<u64, String> {
    match status {
        StatusCode::PARTIAL_CONTENT => {
            let range = content_range.ok_or("is a 206 without Content-Range")?;
            let parsed = range
                .strip_prefix("bytes ")
                .and_then(|r| r.split_once('/'))
                .and_then(|(span, total)| {
                    let (first, last) = span.split_once('-')?;
                    Some((first.parse::<u64>().ok()?, last.parse::<u64>().ok()?, total))
                });
            match parsed {
                Some((first, last, total))
                    if first == offset
                        && last.checked_add(1) == Some(size)
                        && total == size.to_string() =>
                {
                    Ok(0)
                }
                _ => Err(format!(
                    "has Content-Range {range:?}, not bytes {offset}-{}/{size}",
                    size.saturating_sub(1)
                )),
            }
        }
        StatusCode::OK if content_length.is_none_or(|len| len == size) => Ok(offset),
        StatusCode::OK => Err(format!(
            "is a 200 of {} bytes, not the whole {size}",
            content_length.unwrap_or_default()
        )),
        other => Err(format!("is {other}, not 206 Partial Content")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_answer_that_continues_the_body_is_taken() {
        let ok = StatusCode::OK;
        let partial = StatusCode::PARTIAL_CONTENT;
        assert_eq!(
            resumed_at(partial, Some("bytes 600-999/1000"), Some(400), 600, 1000),
            Ok(0)
        );
        assert_eq!(resumed_at(ok, None, Some(1000), 600, 1000), Ok(600));
        assert_eq!(resumed_at(ok, None, None, 600, 1000), Ok(600));
        for (status, range, len) in [
            (partial, Some("bytes 500-999/1000"), Some(500)),
            (partial, Some("bytes 600-998/1000"), Some(399)),
            (partial, Some("bytes 600-999/2000"), Some(400)),
            (partial, Some("bytes 600-999/*"), Some(400)),
            (partial, Some("items 600-999/1000"), Some(400)),
            (partial, None, Some(400)),
            (ok, None, Some(400)),
            (StatusCode::RANGE_NOT_SATISFIABLE, None, None),
        ] {
            let answer = resumed_at(status, range, len, 600, 1000);
            assert!(answer.is_err(), "{status} {range:?}: {answer:?}");
        }
    }
}
