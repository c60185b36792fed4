//! Reading a blob from the bucket as fast as the store allows.
//!
//! One S3 connection is slow (on the order of 100 MB/s on AWS, often far
//! less through a gateway), so a blob is read in ranged GETs of
//! `s3.read_part_size`, `s3.read_concurrency` at a time (see [`parts`]).
//! The first ranged GET answers everything else: whether the object exists,
//! its size (from `Content-Range`), and whether the store honours ranges at
//! all; its body streams to the client at once while the next parts start.
//!
//! A store that ignores `Range` (a 200 with no `Content-Range`) is read in
//! that one response's stream. An empty object, which S3 refuses any range
//! of (416), is read with a plain GET. Every byte still goes through the
//! blob flight, which verifies the whole object before it is kept locally.

use std::io;
use std::sync::Arc;

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use futures_util::StreamExt;

use super::parts::{self, OpenPart, PartBody, Plan};
use super::{Health, S3Tier, status};
use crate::cache::ObjectKey;
use crate::cache::flight::{Origin, Source, SourceError};

impl S3Tier {
    /// Streams a blob from the bucket, for a flight to verify and store
    /// locally. `None` when absent, or when S3 is down.
    pub async fn open(&self, key: &ObjectKey) -> Option<Source> {
        if !self.available() {
            return None;
        }
        self.open_even_degraded(key).await
    }

    /// As [`S3Tier::open`], even while the tier is skipped after a failure:
    /// for when nothing else can serve the blob (upstream failed too).
    pub async fn open_even_degraded(&self, key: &ObjectKey) -> Option<Source> {
        let object_key = self.object_key(key);
        let first = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .range(range_header(0, self.read_part_size))
            .send()
            .await;
        let out = match first {
            Err(e) if status(&e) == Some(416) => {
                let whole = self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(&object_key)
                    .send()
                    .await;
                return Some(self.one_stream(self.settle(whole, "read", &object_key)?));
            }
            first => self.settle(first, "read", &object_key)?,
        };
        let Some((start, end, total)) = out.content_range().and_then(parse_content_range) else {
            tracing::debug!(key = %object_key, "S3 ignored the range: reading the object in one stream");
            return Some(self.one_stream(out));
        };
        let first_len = self.read_part_size.min(total);
        let etag = out.e_tag().map(str::to_owned);
        if start != 0 || end + 1 != first_len || content_length(&out) != Some(first_len) {
            tracing::warn!(key = %object_key, content_range = ?out.content_range(), "S3 answered another range than asked");
            self.failed("read");
            return None;
        }
        self.part_reads.inc();
        let plan = Plan {
            total,
            part_size: self.read_part_size,
            concurrency: self.read_concurrency,
            timeout: self.read_timeout,
        };
        let body = parts::ordered(
            part_body(out.body),
            plan,
            self.part_opener(object_key, total),
        );
        // A part that fails or stalls fails the download (its clients'
        // connections are aborted, nothing is stored) and marks the tier
        // degraded; the next request goes upstream.
        let health = self.health.clone();
        let body = body.map(move |item| item.map_err(|message| read_failed(&health, message)));
        Some(Source {
            size: Some(total),
            body: Box::new(body),
            origin: Origin::Shared,
            etag,
        })
    }

    /// The bytes of a blob of `size` bytes from `offset` on, in one ranged
    /// GET, even while the tier is skipped after a failure: the rest of a
    /// download whose source broke off (see `registry::splice`). `None`
    /// when the bucket does not have the object, or answers another range.
    pub async fn open_rest(&self, key: &ObjectKey, offset: u64, size: u64) -> Option<Source> {
        let object_key = self.object_key(key);
        let get = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .range(range_header(offset, size - offset))
            .send()
            .await;
        let out = self.settle(get, "read", &object_key)?;
        let expected = (offset, size - 1, size);
        if out.content_range().and_then(parse_content_range) != Some(expected) {
            tracing::warn!(key = %object_key, content_range = ?out.content_range(), "S3 answered another range than asked");
            return None;
        }
        self.part_reads.inc();
        Some(self.one_stream(out))
    }

    /// Deletes an object that failed verification (or was short), only as
    /// it was read (`If-Match` its `etag`): a good copy another replica
    /// wrote meanwhile survives. Counted and logged; the next read misses
    /// and fetches a good copy.
    pub async fn discard_damaged(&self, key: &ObjectKey, etag: Option<&str>) {
        if let Some(redirects) = &self.redirects {
            redirects.forget(key).await;
        }
        self.delete_damaged(&self.object_key(key), etag).await;
    }

    /// As [`S3Tier::discard_damaged`], for the object at `object_key`.
    pub(super) async fn delete_damaged(&self, object_key: &str, etag: Option<&str>) {
        self.corrupt.inc();
        tracing::warn!(key = %object_key, "S3 holds a damaged object (it fails its digest or the store's checksum): deleting it");
        let mut delete = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(object_key);
        if let Some(etag) = etag {
            delete = delete.if_match(etag);
        }
        if let Err(e) = delete.send().await {
            tracing::warn!(key = %object_key, error = %DisplayErrorContext(&e), "could not delete a damaged object from S3");
        }
    }

    /// The ranged GET of one part after the first, which must come back
    /// as exactly that range of an object of `total` bytes.
    fn part_opener(&self, object_key: String, total: u64) -> OpenPart {
        let client = self.client.clone();
        let bucket = self.bucket.clone();
        let part_reads = self.part_reads.clone();
        let object_key = Arc::<str>::from(object_key);
        parts::opener(move |start, len| {
            let get = client
                .get_object()
                .bucket(&bucket)
                .key(&*object_key)
                .range(range_header(start, len));
            let part_reads = part_reads.clone();
            async move {
                let out = get.send().await.map_err(|e| {
                    format!(
                        "ranged GET of the part at byte {start}: {}",
                        DisplayErrorContext(&e)
                    )
                })?;
                let expected = (start, start + len - 1, total);
                if out.content_range().and_then(parse_content_range) != Some(expected)
                    || content_length(&out) != Some(len)
                {
                    return Err(format!(
                        "asked S3 for bytes {start}-{} of {total}, got Content-Range {:?}",
                        expected.1,
                        out.content_range()
                    ));
                }
                part_reads.inc();
                Ok(part_body(out.body))
            }
        })
    }

    /// A whole-object answer as one stream, for stores that ignore ranges.
    fn one_stream(&self, out: GetObjectOutput) -> Source {
        let size = content_length(&out);
        let etag = out.e_tag().map(str::to_owned);
        let (health, timeout) = (self.health.clone(), self.read_timeout);
        let body = futures_util::stream::unfold(Some(out.body), move |body| {
            let health = health.clone();
            async move {
                let mut body = body?;
                let failure = match tokio::time::timeout(timeout, body.try_next()).await {
                    Ok(Ok(Some(chunk))) => return Some((Ok(chunk), Some(body))),
                    Ok(Ok(None)) => return None,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no bytes from S3 for {timeout:?}"),
                };
                Some((Err(read_failed(&health, failure)), None))
            }
        });
        Source {
            size,
            body: Box::new(Box::pin(body)),
            origin: Origin::Shared,
            etag,
        }
    }
}

/// Whether a read broke off because the bytes fail the checksum the store
/// keeps for the object: the object is damaged (overwritten halfway, or
/// rotten), not the store down.
pub(super) fn fails_checksum(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<aws_smithy_checksums::body::validate::Error>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Marks the tier degraded and turns a read failure into a source error.
fn read_failed(health: &Health, message: String) -> SourceError {
    health.failed("read body");
    Arc::new(io::Error::other(message))
}

/// An SDK body as a part's stream of chunks.
fn part_body(body: S3Body) -> PartBody {
    futures_util::stream::unfold(Some(body), |body| async move {
        let mut body = body?;
        match body.try_next().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(body))),
            Ok(None) => None,
            Err(e) => Some((Err(e.to_string()), None)),
        }
    })
    .boxed()
}

fn content_length(out: &GetObjectOutput) -> Option<u64> {
    out.content_length().and_then(|l| u64::try_from(l).ok())
}

/// The `Range` header asking for `len` bytes at `start`.
fn range_header(start: u64, len: u64) -> String {
    format!("bytes={start}-{}", start + len.max(1) - 1)
}

/// `bytes <first>-<last>/<total>` as numbers; `None` for anything else,
/// including an unknown total (`*`).
fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, total) = (
        first.trim().parse::<u64>().ok()?,
        last.trim().parse::<u64>().ok()?,
        total.trim().parse::<u64>().ok()?,
    );
    (first <= last && last < total).then_some((first, last, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse_or_are_refused() {
        assert_eq!(
            parse_content_range("bytes 0-1048575/30000000"),
            Some((0, 1_048_575, 30_000_000))
        );
        assert_eq!(parse_content_range("bytes 5-5/6"), Some((5, 5, 6)));
        for bad in [
            "bytes 0-9/*",
            "bytes */100",
            "bytes 9-0/100",
            "bytes 0-100/100",
            "items 0-9/10",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn range_headers_are_inclusive() {
        assert_eq!(range_header(0, 8 * 1024 * 1024), "bytes=0-8388607");
        assert_eq!(range_header(100, 1), "bytes=100-100");
    }
}
